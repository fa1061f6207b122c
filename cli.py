"""module14's command line: one LightningCLI for every model and dataset.

    module14 fit --config configs/vit_mnist.yaml
    python cli.py fit --model ViTClassifier --data MNISTDataModule --trainer.max_epochs 1
    module14 predict --config configs/vit_mnist.yaml --ckpt_path runs/.../last.ckpt

Sizes that depend on the data (image shape, number of classes) are linked from the datamodule to the model, so they
are never typed twice. W&B runs offline unless ``WANDB_MODE=online`` (or the logger's ``mode: online``) says otherwise.
"""

from __future__ import annotations

import inspect
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import yaml
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI, SaveConfigCallback, _InstantiatorFn
from lightning.pytorch.plugins import TorchCheckpointIO
from lightning.pytorch.plugins.precision import MixedPrecision
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException

import lightning_modules  # noqa: F401  (registers the model classes for --model ShortName)
from lightning_modules.callbacks import NonFiniteLossError, RNGStateCheckpoint, StopOnNonFiniteLoss
from lightning_modules.checkpointing import SafeCheckpointIO, SaveOnSignal
from lightning_modules.precision import probe_cpu_precision, resolve_precision
from lightning_modules.registry import project_class, project_class_names
from datamodules import DatasetIntegrityError, ImageDataModule


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
    """Names ``class_type(...)`` accepts, following ``**kwargs`` up to the parents' ``__init__`` (as jsonargparse does).

    E.g. ``BetaVAEModule(*args, beta=4.0, **kwargs)`` accepts every ``VAEModule`` argument.
    """
    names: set[str] = set()
    for cls in class_type.__mro__:
        if "__init__" not in vars(cls):
            continue
        parameters = inspect.signature(vars(cls)["__init__"]).parameters.values()
        names |= {p.name for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            break
    return names


class _OwnParametersInstantiator(_InstantiatorFn):
    """Records only the links the instantiated class accepts in its hyperparameters.

    jsonargparse skips a link whose target the chosen class lacks (``num_classes`` for a VAE), but Lightning still
    records it in the checkpoint's hyperparameters, and ``test --ckpt_path`` / ``load_from_checkpoint`` then fail
    with "unexpected keyword argument". Filtering here keeps checkpoints loadable.
    """

    def __call__(self, class_type: type, *args, applied_instantiation_links: dict, **kwargs):
        accepted = _init_parameters(class_type)
        links = {k: v for k, v in applied_instantiation_links.items() if k.rsplit(".", 1)[-1] in accepted}
        return super().__call__(class_type, *args, applied_instantiation_links=links, **kwargs)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used with this run's config."""


def _first_line(err: BaseException) -> str:
    """``Type: first line of the message`` (just the type when the message is empty), without terminal colours."""
    lines = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip().splitlines()
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


def read_checkpoint_hparams(path: str) -> dict:
    """The model hyperparameters of a checkpoint, loaded without running pickled code (``weights_only``).

    Anything but a readable Lightning checkpoint (an empty or truncated file, a bare tensor, a list, a dict without a
    ``state_dict``) is one ``CheckpointError`` saying what the file holds.
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
    hparams = checkpoint.get("hyper_parameters", {})
    if not isinstance(hparams, dict):
        raise CheckpointError(f"'{path}' has hyper_parameters of type {type(hparams).__name__}, not a dict. {use_another}")
    return hparams


# Checkpoint hyperparameters that are not merged into the run's config: Lightning's bookkeeping, and ``compile``, a
# setting of how this run executes (a compiled run's checkpoint evaluates eagerly unless this run asks to compile).
NOT_FROM_CHECKPOINT = ("_class_path", "_instantiator", "compile")


def refuse_remote(ckpt_path: str) -> None:
    """A checkpoint given as a URL (``http://``, ``s3://``, any ``://``) is refused before anything loads it."""
    if "://" in ckpt_path:
        raise CheckpointError(
            f"--ckpt_path '{ckpt_path}' is a URL; module14 loads checkpoints only from local file paths (a file "
            f"fetched from elsewhere can carry code that loading it would run). Download it yourself, check where it comes "
            f"from, then pass the local path: --ckpt_path path/to/file.ckpt"
        )


class Module14CLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # A link whose target the chosen model lacks is skipped, so every family shares these.
        parser.link_arguments("data.dims", "model.init_args.image_shape", apply_on="instantiate")
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.link_arguments("data.normalization", "model.init_args.normalization", apply_on="instantiate")
        # Always on: per-rank random streams and exact resumption; no training on NaNs.
        parser.add_lightning_class_args(RNGStateCheckpoint, "rng_state")
        parser.add_lightning_class_args(StopOnNonFiniteLoss, "stop_on_non_finite_loss")
        # Always on: SIGTERM / SIGINT during fit save a resumable checkpoint and exit with 128 + the signal.
        parser.add_lightning_class_args(SaveOnSignal, "save_on_signal")

    def _parse_ckpt_path(self) -> None:
        """Refuse remote, unreadable and other-model checkpoints with a clear message, then merge its hyperparameters.

        Replaces Lightning's version, which shows a zip-reader traceback for a bad file, silently switches the model
        to the checkpoint's class, and imports whatever module path the file records as ``_class_path``. Here the
        recorded class must be the config's or one of module14's own (looked up by name, never imported).
        """
        self._checkpoint_hparams: dict = {}
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not ckpt_path:
            return
        refuse_remote(str(ckpt_path))
        if not Path(ckpt_path).is_file():
            return  # "best", "last", "hpc" or a missing file: Lightning's own handling and message
        self._checkpoint_hparams = read_checkpoint_hparams(ckpt_path)
        hparams = {k: v for k, v in self._checkpoint_hparams.items() if k not in NOT_FROM_CHECKPOINT}
        saved = self._checkpoint_hparams.get("_class_path")
        if saved:
            wanted = self._checked_model_class(ckpt_path, saved, self.config[subcommand].model.class_path)
            hparams = {"class_path": wanted, "dict_kwargs": hparams}
        if hparams:
            try:
                self.config = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)
            except SystemExit:
                sys.stderr.write("Parsing of ckpt_path hyperparameters failed!\n")
                raise

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
        self._probe_precision, self._precision_reason = False, None
        if config.trainer.get("precision") is None:
            precision, self._precision_reason = resolve_precision(str(config.trainer.get("accelerator") or "auto"))
            if precision is None:  # a native-bf16 CPU: time the model, in a single-process fit
                self._probe_precision = self.subcommand in ("fit", None) and config.trainer.get("devices") in ("auto", 1)
                if not self._probe_precision:
                    self._precision_reason = "CPU with native bf16, but timing both precisions is for 1-process fit"
                elif config.model.get("init_args", {}).get("compile"):  # each timed copy would compile itself
                    self._probe_precision = False
                    self._precision_reason = "CPU with native bf16, not timed with compile: true (two more compiles)"
            config.trainer.precision = precision or "32-true"

    def _choose_precision(self) -> None:
        """Time the model in both precisions where the hardware cannot tell (see ``lightning_modules.precision``)."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        if self._probe_precision:
            precision, self._precision_reason = probe_cpu_precision(self.model, self.datamodule)
            if precision != config.trainer.precision:
                self.trainer.strategy.precision_plugin = MixedPrecision(precision, "cpu")
                config.trainer.precision = precision  # config.yaml records what ran
        if self._precision_reason and rank_zero_only.rank == 0:
            print(f"module14: precision {self.trainer.precision} ({self._precision_reason}); "
                  f"--trainer.precision chooses", file=sys.stderr)

    def after_instantiate_classes(self) -> None:
        """A checkpoint trained on other image shapes/classes than the datamodule provides is a clear error."""
        self._choose_precision()
        model_hparams = getattr(self.model, "hparams", {})
        for key in ("image_shape", "num_classes"):
            saved, now = self._checkpoint_hparams.get(key), model_hparams.get(key)
            if saved is not None and now is not None and tuple(np.atleast_1d(saved)) != tuple(np.atleast_1d(now)):
                raise CheckpointError(
                    f"the checkpoint was trained with {key}={saved} but the datamodule provides {key}={now}. Use the "
                    f"data settings it was trained with (data.image_size, the dataset class; see the config.yaml "
                    f"beside the checkpoint)."
                )

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        """The trainer, with ``SafeCheckpointIO`` (atomic writes, weights-only loads) unless a CheckpointIO plugin was
        given. Set on the strategy, so every rank of a DDP run uses it."""
        trainer = super().instantiate_trainer(**kwargs)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = SafeCheckpointIO()
        return trainer

    def _run_subcommand(self, subcommand: str) -> None:
        """A checkpoint whose weights do not fit the model (a missing key, a wrong shape) is a ``CheckpointError``."""
        try:
            super()._run_subcommand(subcommand)
        except RuntimeError as err:
            if not str(err).startswith("Error(s) in loading state_dict"):
                raise
            problems = [line.strip() for line in str(err).splitlines()[1:] if line.strip()]
            details = problems[0][:300] + (f"; and {len(problems) - 1} more" if len(problems) > 1 else "")
            raise CheckpointError(
                f"the weights in checkpoint '{self.config[subcommand].get('ckpt_path')}' do not fit the model the config "
                f"builds ({details}). Use the config the checkpoint was trained with (saved as config.yaml beside it)."
            ) from err

    def _add_instantiators(self) -> None:
        for key, base, subclasses in (
            ("model", self._model_class, self.subclass_mode_model),
            ("data", self._datamodule_class, self.subclass_mode_data),
        ):
            self.parser.add_instantiator(_OwnParametersInstantiator(cli=self, key=key), base, subclasses=subclasses)


# Errors whose message says what is wrong and how to fix it: the console script prints the message, not a traceback.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, PermissionError, DatasetIntegrityError,
               NonFiniteLossError)
_received_sigint: list[int] = []


def _record_sigint(signum: int, frame) -> None:
    _received_sigint.append(signum)
    raise KeyboardInterrupt


def build_cli(args: ArgsType = None, run: bool = True) -> Module14CLI:
    """The CLI object, for scripts and tests: ``build_cli(["fit", "--config", ...])`` runs and returns it."""
    os.environ.setdefault("WANDB_MODE", "offline")  # no account or network needed; WANDB_MODE=online to sync
    return Module14CLI(
        model_class=L.LightningModule,
        datamodule_class=ImageDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_callback=RunConfigSaver,
        seed_everything_default=42,
        args=args,
        run=run,
    )


def main(args: ArgsType = None) -> int:
    """The ``module14`` console script: runs the CLI and returns the process exit status.

    0: the command finished. 1: it failed (an error message, or a traceback for an unexpected error). 2: the command
    line or config is invalid (jsonargparse's usage error). 130 / 143: stopped by SIGINT (Ctrl-C) / SIGTERM.
    """
    signal.signal(signal.SIGINT, _record_sigint)  # Lightning turns Ctrl-C into exit(1); remember it was a signal
    cli = None
    try:
        cli = build_cli(args)
        status = 0
    except SIGTERMException as stop:  # SaveOnSignal sets its code: 130 (SIGINT) or 143 (SIGTERM)
        status = stop.code if isinstance(stop.code, int) and stop.code else 128 + signal.SIGTERM
    except KeyboardInterrupt:
        status = 128 + signal.SIGINT
    except SystemExit as stop:  # --help / --print_config (0), a usage error (2), Lightning's Ctrl-C shutdown (1)
        if stop.code is None or isinstance(stop.code, int):
            status = stop.code or 0
        else:
            print(stop.code, file=sys.stderr)
            status = 1
    except USER_ERRORS as err:
        if os.environ.get("MODULE14_TRACEBACK"):
            raise
        print(f"error: {err}\n(MODULE14_TRACEBACK=1 shows where it was raised)", file=sys.stderr)
        status = 1
    if _received_sigint:
        return 128 + signal.SIGINT
    if cli is not None and getattr(cli, "trainer", None) is not None and cli.trainer.received_sigterm:
        return 128 + signal.SIGTERM  # Lightning finishes predict/test before honouring SIGTERM
    return status


if __name__ == "__main__":
    sys.exit(main())
