"""module14's command line: one LightningCLI for every model and dataset.

    module14 fit --config configs/vit_mnist.yaml
    python cli.py fit --model ViTClassifier --data MNISTDataModule --trainer.max_epochs 1
    module14 predict --config configs/vit_mnist.yaml --ckpt_path runs/.../last.ckpt

Sizes that depend on the data (image shape, number of classes) are linked from the datamodule to the model, so they
are never typed twice. W&B runs offline unless ``WANDB_MODE=online`` (or the logger's ``mode: online``) says otherwise.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import yaml
from jsonargparse import ArgumentParser, Namespace
from lightning.pytorch.callbacks import DeviceStatsMonitor, LearningRateMonitor, ProgressBar
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, SaveConfigCallback
from lightning.pytorch.plugins import TorchCheckpointIO
from lightning.pytorch.plugins.precision import MixedPrecision
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException

import lightning_modules  # noqa: F401  (registers the model classes for --model ShortName)
from compat import CLIHooks, ParserBeforeValidation
from training.allocator import keep_freed_memory
from training.checkpointing import SafeCheckpointIO
from training.optim import WarnOnScheduleChange
from training.rng import RNGStateCheckpoint
from training.stopping import NonFiniteLossError, SaveOnSignal, StopOnNonFiniteLoss, exit_on_signals, exit_status
from training.precision import (
    PRECISION_KEY,
    PrecisionRecord,
    check_precision,
    probe_cpu_precision,
    resolve_precision,
)
from training.quiet import filter_known_noise
from lightning_modules.registry import project_class, project_class_names
from training.runs import (WANDB_RUN_KEY, RunRecord, join_wandb_run, requeued_checkpoint, requeued_job,
                           run_checkpoint, run_summary)
from datamodules import DatasetIntegrityError, ImageDataModule, default_data_dir


class RunConfigSaver(SaveConfigCallback):
    """Saves the run's full config as ``config.yaml`` beside its checkpoints and into the logger's run config.

    Lightning's default writes ``config.yaml`` into ``trainer.log_dir``; with W&B that is the same folder for every
    run, so the second run aborts ("config.yaml exists"). Here each run's file lands in its own checkpoint folder.
    """

    def __init__(self, parser: LightningArgumentParser, config, **kwargs) -> None:
        super().__init__(parser, config, save_to_log_dir=False, **kwargs)

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # parser.dump leaves out link targets (image_shape, ...): their values are in the model's own hparams.
        config = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
        for logger in trainer.loggers:
            logger.log_hyperparams({"config": config})

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        checkpoint = trainer.checkpoint_callback
        if trainer.is_global_zero and checkpoint is not None and getattr(checkpoint, "dirpath", None):
            folder = Path(checkpoint.dirpath)
            folder.mkdir(parents=True, exist_ok=True)
            self.parser.save(self.config, str(folder / self.config_filename), skip_none=False, overwrite=True)


def _init_parameters(class_type: type) -> set[str]:
    """Names ``class_type(...)`` accepts, with the ``**kwargs`` it forwards resolved as the CLI resolves them: to a
    parent's ``__init__`` (``BetaVAEModule`` takes every ``VAEModule`` argument) or to the network it builds
    (``ViTClassifier`` takes ``VisionTransformer``'s)."""
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(class_type, fail_untyped=False)
    return {key.split(".", 1)[0] for key in parser.get_defaults().keys()}


class CheckpointError(ValueError):
    """A checkpoint that cannot be used with this run's config."""


def _first_line(err: BaseException) -> str:
    """``Type: first line of the message`` (just the type when the message is empty), without terminal colours."""
    lines = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip().splitlines()
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


def read_checkpoint(path: str) -> dict:
    """A checkpoint (weights, model hyperparameters, run record), loaded without running pickled code
    (``weights_only``), whose weights are all finite.

    Anything but a readable Lightning checkpoint (an empty or truncated file, a bare tensor, a list, a dict without a
    ``state_dict``, NaN/inf weights) is one ``CheckpointError`` saying what the file holds.
    """
    use_another = "Use another checkpoint of the run (last.ckpt or the best one beside it)."
    if Path(path).stat().st_size == 0:
        raise CheckpointError(f"checkpoint '{path}' is empty (0 bytes): its write never finished. {use_another}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(
            f"cannot read checkpoint '{path}': the file is truncated, corrupted or not a PyTorch checkpoint "
            f"({_first_line(err)}). {use_another} Checkpoints written by module14 load with weights_only=True; a "
            f"file that needs pickled code is refused on purpose."
        ) from err
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        holds = "a dict without a 'state_dict'" if isinstance(checkpoint, dict) else f"a {type(checkpoint).__name__}"
        raise CheckpointError(
            f"'{path}' holds {holds}, not a Lightning checkpoint (a dict with a 'state_dict' of weights). {use_another}"
        )
    for key in ("hyper_parameters", "datamodule_hyper_parameters"):
        if not isinstance(checkpoint.get(key, {}), dict):
            raise CheckpointError(f"'{path}' has {key} of type {type(checkpoint[key]).__name__}, not a dict. {use_another}")
    non_finite = [name for name, value in checkpoint["state_dict"].items()
                  if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all()]
    if non_finite:
        more = f" and {len(non_finite) - 3} more" if len(non_finite) > 3 else ""
        raise CheckpointError(
            f"checkpoint '{path}' holds NaN or infinite weights ({', '.join(non_finite[:3])}{more}): it was saved "
            f"after training diverged, and every result computed with it would be NaN. {use_another}"
        )
    return checkpoint


# Checkpoint hyperparameters that are not merged into the run's config: Lightning's bookkeeping, and ``compile`` and
# ``channels_last``, settings of how this run executes (a compiled or NHWC run's checkpoint evaluates eagerly, in NCHW,
# unless this run asks otherwise).
NOT_FROM_CHECKPOINT = ("_class_path", "_instantiator", "compile", "channels_last")


RENAMED_HYPERPARAMETERS = {  # old name -> what replaced it (issue 12's one vocabulary)
    "arch": "architecture", "gradient_clip_val": "grad_clip_norm", "generator_ema": "ema", "sample_seed": "noise_seed",
    "normalization": "value_range (linked from data.normalization)",
    "quality_num_samples": "the SampleQualityMonitor callback",
    "fid_every_n_epochs": "the SampleQualityMonitor callback",
}


def _refuse_unknown_hyperparameters(ckpt_path: str, hparams: dict, model_class: type) -> None:
    """A checkpoint whose hyperparameters the model no longer takes was written by another version of module14: say
    which, and what replaced them, instead of Lightning's ``unexpected keyword argument`` while instantiating."""
    unknown = sorted(hparams.keys() - _init_parameters(model_class))
    if unknown:
        replaced = "; ".join(f"{key} is now {RENAMED_HYPERPARAMETERS[key]}" for key in unknown
                             if key in RENAMED_HYPERPARAMETERS)
        raise CheckpointError(
            f"checkpoint '{ckpt_path}' was written by another version of module14: {model_class.__name__} takes no "
            f"hyperparameter(s) {', '.join(unknown)}{f' ({replaced})' if replaced else ''}. Train a new run, or use "
            f"the module14 version that wrote it (its config.yaml sits beside the checkpoint)."
        )


def refuse_remote(ckpt_path: str) -> None:
    """A checkpoint given as a URL (``http://``, ``s3://``, any ``://``) is refused before anything loads it."""
    if "://" in ckpt_path:
        raise CheckpointError(
            f"--ckpt_path '{ckpt_path}' is a URL; module14 loads checkpoints only from local file paths (a file "
            f"fetched from elsewhere can carry code that loading it would run). Download it yourself, check where it comes "
            f"from, then pass the local path: --ckpt_path path/to/file.ckpt"
        )


# The sizes a datamodule gives the model: data.<source> -> model.init_args.<target>, linked at instantiation.
DATA_LINKS = {"dims": "image_shape", "num_classes": "num_classes", "value_range": "value_range",
              "normalization_mean_std": "normalization_mean_std"}


def _model_section_keys(section: Any) -> set[str]:
    """The model init args a ``model:`` config section sets (``init_args`` and keys given directly)."""
    if not isinstance(section, dict):
        return set()
    direct = set(section) - {"class_path", "init_args", "dict_kwargs"}
    return direct | set(section.get("init_args") or {})


def typed_model_args(argv: list[str]) -> set[str]:
    """Model init args the user typed: ``--model.init_args.X`` / ``--model.X`` flags, a ``--model`` YAML or file with
    init args, and the ``model:`` section of every ``--config`` after the first.

    The first ``--config`` is the experiment's defaults; with ``--ckpt_path`` the checkpoint's values replace them,
    and what was typed wins over both (see ``Module14CLI._checkpoint_defaults``).
    """
    typed: set[str] = set()
    configs = 0
    tokens = iter(argv)
    for token in tokens:
        name, has_value, value = token.partition("=")
        if name.startswith("--model."):
            typed.add(name.removeprefix("--model.").removeprefix("init_args.").split(".")[0])
        elif name in ("--config", "-c", "--model"):
            value = value if has_value else next(tokens, "")
            configs += name != "--model"
            if name != "--model" and configs == 1:
                continue
            try:
                loaded = yaml.safe_load(Path(value).read_text() if Path(value).is_file() else value)
            except (OSError, yaml.YAMLError):
                continue
            section = loaded.get("model") if name != "--model" and isinstance(loaded, dict) else loaded
            typed |= _model_section_keys(section)
    typed.discard("help")
    return typed


def _plain(value: Any) -> Any:
    """``value`` with tuples as lists and namespaces as dicts, to compare a typed value with a checkpoint's."""
    if isinstance(value, Namespace):
        value = value.as_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _import_class(class_path: str) -> type:
    """The class a config names (already imported by jsonargparse while parsing it; never a checkpoint's)."""
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _say(line: str) -> None:
    """One ``module14: ...`` line on stderr, from rank 0 only."""
    if rank_zero_only.rank == 0:
        print(f"module14: {line}", file=sys.stderr)


def _record_data_dir(config: Namespace) -> None:
    """A ``data.data_dir`` left null becomes the data root actually used (``$MODULE14_DATA_DIR`` or ``./data``,
    resolved); the datamodule's own default stays None."""
    data = config.get("data")
    if isinstance(data, Namespace) and isinstance(data.get("init_args"), Namespace):
        if data.init_args.get("data_dir") is None:
            data.init_args.data_dir = str(Path(default_data_dir()).expanduser().resolve())


# Where every shipped config's logger writes (``save_dir: runs``).
RUNS_DIR = "runs"


def _requires(class_path: str, name: str) -> bool:
    """Whether ``class_path``'s constructor has a parameter ``name`` without a default."""
    parameter = inspect.signature(_import_class(class_path)).parameters.get(name)
    return parameter is not None and parameter.default is inspect.Parameter.empty


def _configured_loggers(config: Namespace) -> Iterator[tuple[Namespace, Namespace]]:
    """(logger, its init_args) for each ``class_path`` logger in ``config.trainer.logger`` (one or a list)."""
    trainer = config.get("trainer")
    loggers = trainer.get("logger") if isinstance(trainer, Namespace) else None
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        init_args = logger.get("init_args") if isinstance(logger, Namespace) else None
        if isinstance(init_args, Namespace):
            yield logger, init_args


def _default_logger_save_dir(config: Namespace) -> None:
    """A logger chosen on the command line whose class requires a ``save_dir`` (``--trainer.logger CSVLogger``,
    ``TensorBoardLogger``) writes under ``runs/`` as the configs' loggers do, unless one is typed."""
    for logger, init_args in _configured_loggers(config):
        if "save_dir" in init_args and init_args.save_dir is None:
            if _requires(logger.class_path, "save_dir"):
                init_args.save_dir = RUNS_DIR
                _say(f"{logger.class_path.rsplit('.', 1)[-1]} writes under {RUNS_DIR}/ "
                     f"(--trainer.logger.init_args.save_dir chooses)")


SUBCOMMANDS = ("fit", "validate", "test", "predict")
# Read before the config a user passes: the logger and callbacks every experiment shares.
BASE_CONFIG = Path(__file__).resolve().parent / "configs" / "base.yaml"


def _default_logger_name(config: Namespace) -> None:
    """A W&B logger left without a ``name`` is named after the experiment: the first ``--config`` file's name."""
    configs = [Path(str(path)) for path in config.get("config") or []]
    for logger, init_args in _configured_loggers(config):
        if configs and "name" in init_args and init_args.name is None:
            if logger.class_path.rsplit(".", 1)[-1] == "WandbLogger":
                init_args.name = configs[0].stem


class Module14Parser(ParserBeforeValidation):
    """The CLI's parser: a ``data.data_dir`` left null is the data root actually used (``$MODULE14_DATA_DIR`` or
    ``./data``, resolved), so ``--print_config`` and the saved ``config.yaml`` record where the data came from; a
    logger typed without the ``save_dir`` it requires writes under ``runs/``; a W&B logger without a name takes the
    experiment's (the first ``--config`` file's name)."""

    def before_validation(self, cfg: Namespace) -> None:
        for config in [cfg, *(cfg.get(name) for name in SUBCOMMANDS)]:
            if isinstance(config, Namespace):
                _record_data_dir(config)
                _default_logger_save_dir(config)
                _default_logger_name(config)


# Callbacks that Lightning refuses in a trainer without a logger: what they measure goes to the logger.
NEEDS_LOGGER = (LearningRateMonitor, DeviceStatsMonitor)


def _without(callbacks: list, kinds: tuple[type, ...], flag: str, why: str) -> list:
    """``callbacks`` less those of ``kinds``, saying which were dropped because of ``flag``."""
    dropped = [type(c).__name__ for c in callbacks if isinstance(c, kinds)]
    if dropped:
        _say(f"{flag}: dropped the config's {', '.join(dropped)} callback ({why})")
    return [c for c in callbacks if not isinstance(c, kinds)]


def callbacks_the_flags_allow(trainer: Namespace) -> list:
    """The configured callbacks less those the trainer's own flags rule out, which Lightning would refuse with a
    traceback: progress bars with ``enable_progress_bar=false``, and callbacks that log with ``logger=false``."""
    callbacks = trainer.get("callbacks") or []
    callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
    if trainer.get("enable_progress_bar") is False:
        callbacks = _without(callbacks, (ProgressBar,), "trainer.enable_progress_bar=false", "the flag wins")
    if trainer.get("logger") in (False, []):
        callbacks = _without(callbacks, NEEDS_LOGGER, "trainer.logger=false", "it needs a logger")
    return callbacks


class Module14CLI(CLIHooks):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # A link whose target the chosen model lacks is skipped, so every family shares these.
        for source, target in DATA_LINKS.items():
            parser.link_arguments(f"data.{source}", f"model.init_args.{target}", apply_on="instantiate")
        # Always on: per-rank random streams and exact resumption; no training on NaNs.
        parser.add_lightning_class_args(RNGStateCheckpoint, "rng_state")
        parser.add_lightning_class_args(StopOnNonFiniteLoss, "stop_on_non_finite_loss")
        parser.add_lightning_class_args(WarnOnScheduleChange, "warn_on_schedule_change")
        # Always on: a signal stops after the batch in flight; fit saves a resumable checkpoint (training/stopping.py).
        parser.add_lightning_class_args(SaveOnSignal, "save_on_signal")
        # Always on: the W&B run and SLURM job in every checkpoint, so resuming continues that run and a requeued job
        # finds its checkpoint (training/runs.py).
        parser.add_lightning_class_args(RunRecord, "run_record")
        # Always on: the precision in every checkpoint, so resuming with precision: null keeps it.
        parser.add_lightning_class_args(PrecisionRecord, "precision_record")

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        """Parses, and records which model init args the user typed (and their values) for ``--ckpt_path``."""
        super().parse_arguments(parser, args)
        argv = sys.argv[1:] if args is None else args
        self._typed_model_args = typed_model_args(argv) if isinstance(argv, list) else set()
        subcommand = self.config.get("subcommand")
        init_args = (self.config[subcommand] if subcommand else self.config).model.get("init_args") or Namespace()
        self._typed_values = {key: init_args.get(key) for key in self._typed_model_args}

    def merge_checkpoint_config(self) -> None:
        """Refuse remote, unreadable and other-model checkpoints with a clear message, then take its hyperparameters as
        the defaults of what the user did not type.

        Replaces Lightning's version, which shows a zip-reader traceback for a bad file, silently switches the model
        to the checkpoint's class, imports whatever module path the file records as ``_class_path``, and lays every
        hyperparameter over what the user typed. Here the recorded class must be the config's or one of module14's
        own (looked up by name, never imported); ``best`` / ``last`` are found in the newest run of the experiment.
        """
        self._checkpoint_hparams: dict = {}
        self._checkpoint_data_hparams: dict = {}
        self._wandb_run: dict | None = None
        self._checkpoint_precision: str | None = None
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not ckpt_path and subcommand == "fit" and requeued_job():
            ckpt_path = self.config.fit.ckpt_path = self._requeued_checkpoint(requeued_job())
        if not ckpt_path:
            if subcommand == "predict":
                _say("predict without --ckpt_path: the model's weights are random (pass --ckpt_path "
                     "<run folder>/last.ckpt to predict with a trained model)")
            return
        refuse_remote(str(ckpt_path))
        if ckpt_path in ("best", "last"):
            ckpt_path = self.config[subcommand].ckpt_path = self._run_checkpoint(ckpt_path)
        if not Path(ckpt_path).is_file():
            return  # "hpc" or a missing file: Lightning's own handling and message
        checkpoint = read_checkpoint(ckpt_path)
        self._checkpoint_hparams = checkpoint.get("hyper_parameters", {})
        self._checkpoint_data_hparams = checkpoint.get("datamodule_hyper_parameters", {})
        self._wandb_run = checkpoint.get(WANDB_RUN_KEY)
        self._checkpoint_precision = checkpoint.get(PRECISION_KEY)
        del checkpoint  # the weights: Lightning loads them again when it restores
        hparams = {k: v for k, v in self._checkpoint_hparams.items() if k not in NOT_FROM_CHECKPOINT}
        wanted = self.config[subcommand].model.class_path
        saved = self._checkpoint_hparams.get("_class_path")
        if saved:
            wanted = self._checked_model_class(ckpt_path, saved, wanted)
        hparams = self._checkpoint_defaults(ckpt_path, hparams, _import_class(wanted))
        if hparams:
            try:
                model = {"class_path": wanted, "dict_kwargs": hparams} if saved else hparams
                self.config = self.parser.parse_object({subcommand: {"model": model}}, self.config)
            except SystemExit:
                sys.stderr.write("Parsing of ckpt_path hyperparameters failed!\n")
                raise

    def _runs_root(self) -> tuple[str, str | None]:
        """Where this experiment's runs are saved (the first logger's ``save_dir``, else the trainer's
        ``default_root_dir``), and the logger's name."""
        config = self.config[self.config.subcommand]
        loggers = config.trainer.get("logger")
        first = (loggers[0] if isinstance(loggers, list) and loggers else loggers)
        init_args = first.get("init_args") if isinstance(first, Namespace) else None
        save_dir = (init_args.get("save_dir") if init_args else None) or config.trainer.get("default_root_dir") or "."
        return save_dir, init_args.get("name") if init_args else None

    def _run_checkpoint(self, which: str) -> str:
        """``--ckpt_path best|last``: the checkpoint of the newest run of this experiment (``runs.run_checkpoint``)."""
        save_dir, name = self._runs_root()
        path = run_checkpoint(which, save_dir, self.config[self.config.subcommand].model.class_path, name)
        _say(f"--ckpt_path {which} is {path}")
        return path

    def _requeued_checkpoint(self, job: str) -> str | None:
        """A requeued SLURM job's fit continues from the newest checkpoint this job wrote, into the same run folder and
        W&B run (``runs.requeued_checkpoint``): under the runs' root and, for Lightning's hpc checkpoints, the
        trainer's ``default_root_dir``."""
        roots = [self._runs_root()[0], self.config.fit.trainer.get("default_root_dir") or "."]
        found = requeued_checkpoint(job, roots)
        if found is None:
            _say(f"SLURM job {job} was requeued, but no checkpoint of it is under {', '.join(map(str, roots))}: "
                 f"training starts from the beginning")
            return None
        _say(f"SLURM job {job} was requeued: resuming from {found[0]} (global step {found[1]})")
        return found[0]

    def _checkpoint_defaults(self, ckpt_path: str, hparams: dict, model_class: type) -> dict:
        """The checkpoint hyperparameters to lay over the config: all but the inference settings the user typed.

        A typed value of any other argument (the architecture, the objective, the training settings) that differs
        from the checkpoint's is refused: the checkpoint was trained with its value, and silently replacing what the
        user typed is worse than saying so.
        """
        _refuse_unknown_hyperparameters(ckpt_path, hparams, model_class)
        inference = getattr(model_class, "inference_args", frozenset())
        for key in sorted(self._typed_model_args & hparams.keys() - inference):
            typed, saved = self._typed_values.get(key), hparams[key]
            if _plain(typed) != _plain(saved):
                choosable = ", ".join(sorted(inference)) or f"none for {model_class.__name__}"
                raise CheckpointError(
                    f"--model.init_args.{key}={typed!r} differs from checkpoint '{ckpt_path}', which was trained with "
                    f"{key}={saved!r}. A checkpoint's architecture and training settings are fixed; only its inference "
                    f"settings can be chosen ({choosable}). Drop the flag, or train a new run with it."
                )
        return {k: v for k, v in hparams.items() if not (k in inference and k in self._typed_model_args)}

    @staticmethod
    def _checked_model_class(ckpt_path: str, saved: str, wanted: str) -> str:
        """The config's model class path, if the checkpoint's recorded class is the same class; else a CheckpointError."""
        saved_class = project_class(saved, L.LightningModule)
        if saved == wanted or (saved_class is not None and saved_class is project_class(wanted, L.LightningModule)):
            return wanted
        if saved_class is None:
            raise CheckpointError(
                f"checkpoint '{ckpt_path}' names the model class '{saved}', which is neither the config's ({wanted}) "
                f"nor one of module14's ({', '.join(project_class_names(L.LightningModule))}). A checkpoint does not "
                f"choose code to import: use a checkpoint written by module14 with this config."
            )
        raise CheckpointError(
            f"checkpoint '{ckpt_path}' holds a {saved_class.__name__} but the config builds a "
            f"{wanted.rsplit('.', 1)[-1]}. Use the config the checkpoint was trained with (saved as config.yaml beside "
            f"it) or a checkpoint of this model."
        )

    def before_instantiate_classes(self) -> None:
        """``trainer.precision: null`` (what the configs say) means: the fastest precision on this machine."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        check_precision(config.trainer.get("precision"))
        self._probe_precision, self._precision_reason = False, None
        if config.trainer.get("precision") is None:
            precision, self._precision_reason = resolve_precision(str(config.trainer.get("accelerator") or "auto"))
            resumed = self._checkpoint_precision if self.subcommand in ("fit", None) else None
            if precision is None and resumed in ("32-true", "bf16-mixed"):  # keep it: close timings can fall either way
                precision = resumed
                self._precision_reason = "CPU with native bf16: the precision of the run this checkpoint continues"
            if precision is None:  # a native-bf16 CPU: time the model, in a single-process fit
                self._probe_precision = self.subcommand in ("fit", None) and config.trainer.get("devices") in ("auto", 1)
                if not self._probe_precision:
                    self._precision_reason = "CPU with native bf16, but timing both precisions is for 1-process fit"
                elif config.model.get("init_args", {}).get("compile"):  # each timed copy would compile itself
                    self._probe_precision = False
                    self._precision_reason = "CPU with native bf16, not timed with compile: true (two more compiles)"
                elif config.trainer.get("fast_dev_run"):  # 8 timed steps would outlast the run (3 min for ddpm_cifar10)
                    self._probe_precision = False
                    self._precision_reason = ("CPU with native bf16, not timed in a fast_dev_run; a fit without it "
                                              "times both")
            config.trainer.precision = precision or "32-true"

    def _choose_precision(self) -> None:
        """Time the model in both precisions where the hardware cannot tell (see ``training.precision``)."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        if self._probe_precision:
            precision, self._precision_reason = probe_cpu_precision(self.model, self.datamodule)
            if precision != config.trainer.precision:
                self.trainer.strategy.precision_plugin = MixedPrecision(precision, "cpu")
                config.trainer.precision = precision  # config.yaml records what ran
        if self._precision_reason:
            _say(f"precision {self.trainer.precision} ({self._precision_reason}); --trainer.precision chooses")

    def after_instantiate_classes(self) -> None:
        """Settings that only make sense together are checked before any work: the validation split against the
        subcommand and monitored metrics, and the checkpoint against the datamodule (shapes, classes, data split)."""
        self._check_validation_split()
        if self.subcommand == "fit":
            self._check_resumed_split()
        self._check_checkpoint_shapes()
        self._choose_precision()  # may time training steps: after every check

    def _check_checkpoint_shapes(self) -> None:
        """A checkpoint trained on other image shapes/classes than the datamodule provides is a ``CheckpointError``."""
        model_hparams = getattr(self.model, "hparams", {})
        for source, target in DATA_LINKS.items():
            typed, linked = self._typed_values.get(target), model_hparams.get(target)
            if target in self._typed_model_args and linked is not None and _plain(typed) != _plain(linked):
                raise ValueError(
                    f"--model.init_args.{target}={typed!r} but the datamodule provides {target}={linked!r} (linked "
                    f"from data.{source}). Sizes that depend on the data come from the datamodule: drop the flag and "
                    f"choose the data instead (the dataset class, data.image_size, data.normalization)."
                )
        for key in ("image_shape", "num_classes"):
            saved, now = self._checkpoint_hparams.get(key), model_hparams.get(key)
            if saved is not None and now is not None and tuple(np.atleast_1d(saved)) != tuple(np.atleast_1d(now)):
                raise CheckpointError(
                    f"the checkpoint was trained with {key}={saved} but the datamodule provides {key}={now}. Use the "
                    f"data settings it was trained with (data.image_size, the dataset class; see the config.yaml "
                    f"beside the checkpoint)."
                )

    def _check_validation_split(self) -> None:
        """``data.val_size: 0`` leaves nothing to validate on: refused for ``validate``, and for ``fit`` when a
        callback monitors a metric (the best checkpoint would never be chosen)."""
        if self.subcommand not in ("fit", "validate") or getattr(self.datamodule, "val_size", None) != 0:
            return
        fix = "Set --data.init_args.val_size to a count of images or a fraction (e.g. 0.1)"
        if self.subcommand == "validate":
            raise ValueError(f"data.val_size=0: validate has no validation images to measure. {fix}, as in training.")
        monitors = sorted({cb.monitor for cb in self.trainer.callbacks if getattr(cb, "monitor", None)})
        if monitors:
            raise ValueError(
                f"data.val_size=0 holds out no validation images, but trainer.callbacks monitor {', '.join(monitors)}: "
                f"no metric to monitor means no best checkpoint (and no early stopping). {fix}, or remove the "
                f"monitor from those callbacks."
            )

    def _check_resumed_split(self) -> None:
        """Resuming ``fit`` with another train/val split (``data.seed``, ``data.val_size``) would validate on images
        the checkpoint was trained on; refused, naming what changed."""
        saved, now = self._checkpoint_data_hparams, getattr(self.datamodule, "hparams", {})
        changed = [f"data.{key}={saved[key]!r} -> {now[key]!r}" for key in ("seed", "val_size")
                   if key in saved and key in now and saved[key] != now[key]]
        if changed:
            raise CheckpointError(
                f"resuming from '{self.config.fit.ckpt_path}' with another train/val split ({', '.join(changed)}): "
                f"the new validation images include ones the checkpoint was trained on, so its metrics and best "
                f"checkpoint would be meaningless. Resume with the checkpoint's data settings (the config.yaml beside "
                f"it), or start a new run without --ckpt_path."
            )

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        """The trainer, with ``SafeCheckpointIO`` (atomic writes, weights-only loads) unless a CheckpointIO plugin was
        given (set on the strategy, so every rank of a DDP run uses it), its W&B run joined to the checkpoint's, and
        without the callbacks its own flags rule out (``callbacks_the_flags_allow``)."""
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        trainer = super().instantiate_trainer(**{"callbacks": callbacks_the_flags_allow(config.trainer), **kwargs})
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = SafeCheckpointIO()
        join_wandb_run(trainer.loggers, self._wandb_run, self.subcommand or "fit")
        return trainer

    def after_fit(self) -> None:
        """Say where the run's files are: run folder, best and last checkpoints, W&B run folder (rank 0, stderr)."""
        if self.trainer.is_global_zero:
            print(run_summary(self.trainer), file=sys.stderr)

    def subcommand_error(self, subcommand: str, err: Exception) -> Exception | None:
        """A checkpoint whose weights do not fit the model (a missing key, a wrong shape) is a ``CheckpointError``."""
        if not (isinstance(err, RuntimeError) and str(err).startswith("Error(s) in loading state_dict")):
            return None
        problems = [line.strip() for line in str(err).splitlines()[1:] if line.strip()]
        details = problems[0][:300] + (f"; and {len(problems) - 1} more" if len(problems) > 1 else "")
        return CheckpointError(
            f"the weights in checkpoint '{self.config[subcommand].get('ckpt_path')}' do not fit the model the config "
            f"builds ({details}). Use the config the checkpoint was trained with (saved as config.yaml beside it)."
        )

    def instantiation_links(self, class_type: type, links: dict) -> dict:
        """Only the links ``class_type`` accepts are recorded in its hyperparameters.

        jsonargparse skips a link whose target the chosen class lacks (``num_classes`` for a VAE), but Lightning still
        records it in the checkpoint's hyperparameters, and ``test --ckpt_path`` / ``load_from_checkpoint`` then fail
        with "unexpected keyword argument". Filtering here keeps checkpoints loadable.
        """
        accepted = _init_parameters(class_type)
        return {k: v for k, v in links.items() if k.rsplit(".", 1)[-1] in accepted}


# Errors whose message says what is wrong and how to fix it: the console script prints the message, not a traceback.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError,
               DatasetIntegrityError, NonFiniteLossError)


def user_message(err: BaseException) -> str:
    """The error's message, without what hides it:

    - one raised in a DataLoader worker arrives with the worker's traceback prepended ("Caught X in DataLoader worker
      process 0. Original Traceback ..."): only the original message is kept;
    - one raised by a model or datamodule's ``__init__`` arrives inside jsonargparse's "Does not validate against any
      of the Union subtypes" report, with the whole config namespace: only the constructor's own messages are kept
      (not the "Expected a <class 'NoneType'>" of the ``None`` alternative).
    """
    message = str(err)
    if message.startswith("Caught ") and "\nOriginal Traceback" in message:
        return message.rsplit(f"{type(err).__name__}: ", 1)[-1].strip()
    if message.startswith("Does not validate against any of the Union subtypes"):
        reasons = [line.strip()[2:] for line in message.splitlines() if line.lstrip().startswith("- ")]
        reasons = [reason for reason in reasons if not reason.startswith("Expected a <class")]
        if reasons:
            return "\n".join(reasons)
    return message


def build_cli(args: ArgsType = None, run: bool = True) -> Module14CLI:
    """The CLI object, for scripts and tests: ``build_cli(["fit", "--config", ...])`` runs and returns it."""
    os.environ.setdefault("WANDB_MODE", "offline")  # no account or network needed; WANDB_MODE=online to sync
    filter_known_noise()
    keep_freed_memory()  # before the precision timing: CPU steps run as the whole run will
    return Module14CLI(
        model_class=L.LightningModule,
        datamodule_class=ImageDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_callback=RunConfigSaver,
        parser_class=Module14Parser,
        parser_kwargs={command: {"default_config_files": [str(BASE_CONFIG)]} for command in SUBCOMMANDS},
        seed_everything_default=42,
        args=args,
        run=run,
    )


def main(args: ArgsType = None) -> int:
    """The ``module14`` console script: runs the CLI and returns the process exit status.

    0: the command finished. 2: the command line or config cannot be parsed (jsonargparse's usage error). 1: it was
    refused after parsing (a value a constructor refuses, settings that do not go together, a checkpoint that does not
    fit) or failed (an error message, or a traceback for an unexpected error). 128 + the signal when a signal stopped
    it (``training.stopping``): 130 SIGINT (Ctrl-C), 143 SIGTERM, 129 SIGHUP, 138 SLURM's SIGUSR1 (requeued).
    """
    exit_on_signals()  # DataLoader workers leave signals to the trainer; before a stage starts, a signal exits
    try:
        build_cli(args)
        status = 0
    except (SIGTERMException, KeyboardInterrupt):  # stopped by a signal: saved where a fit had something to save
        status = 128 + signal.SIGTERM
    except SystemExit as stop:  # --help / --print_config (0), a usage error (2), Lightning's Ctrl-C shutdown (1)
        if stop.code is None or isinstance(stop.code, int):
            status = stop.code or 0
        else:
            print(stop.code, file=sys.stderr)
            status = 1
    except USER_ERRORS as err:
        if os.environ.get("MODULE14_TRACEBACK"):
            raise
        print(f"error: {user_message(err)}\n(MODULE14_TRACEBACK=1 shows where it was raised)", file=sys.stderr)
        status = 1
    stopped = exit_status()  # 128 + the signal that stopped the command, unless it finished anyway
    return stopped if stopped is not None and status != 0 else status


if __name__ == "__main__":
    sys.exit(main())
