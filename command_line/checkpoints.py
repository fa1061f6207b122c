"""A checkpoint given with ``--ckpt_path``: read safely, found by name (``best``, ``last``, ``pretrained``, a requeued
SLURM job's), and merged into the config so that what the user typed wins or is refused, never silently replaced.

- ``read_checkpoint`` (``command_line/checkpoint_file.py``): the file, read safely.
- ``CheckpointConfig`` (a part of ``Module14CLI``): the checkpoint's hyperparameters become the defaults of what the
  user did not type; each model's inference settings (``inference_args``) take what was typed; any other typed value
  that differs from the checkpoint's is refused, naming both.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import lightning as L
import yaml
from jsonargparse import Namespace

from command_line.checkpoint_file import CheckpointError, batches_into_epoch, read_checkpoint, refuse_remote
from command_line.parser import import_class, init_parameters, say
from lightning_modules.registry import project_class, project_class_names
from training.precision import PRECISION_KEY
from training.pretrained import is_shipped, pretrained_checkpoint, verified
from training.runs import WANDB_RUN_KEY, experiment_identity, requeued_checkpoint, requeued_job, run_checkpoint


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


def refuse_unknown_hyperparameters(ckpt_path: str, hparams: dict, model_class: type) -> None:
    """A checkpoint whose hyperparameters the model no longer takes was written by another version of module14: say
    which, and what replaced them, instead of Lightning's ``unexpected keyword argument`` while instantiating."""
    unknown = sorted(hparams.keys() - init_parameters(model_class))
    if unknown:
        replaced = "; ".join(f"{key} is now {RENAMED_HYPERPARAMETERS[key]}" for key in unknown
                             if key in RENAMED_HYPERPARAMETERS)
        raise CheckpointError(
            f"checkpoint '{ckpt_path}' was written by another version of module14: {model_class.__name__} takes no "
            f"hyperparameter(s) {', '.join(unknown)}{f' ({replaced})' if replaced else ''}. Train a new run, or use "
            f"the module14 version that wrote it (its config.yaml sits beside the checkpoint)."
        )


def model_section_keys(section: Any) -> set[str]:
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
            typed |= model_section_keys(section)
    typed.discard("help")
    return typed


def plain(value: Any) -> Any:
    """``value`` with tuples as lists and namespaces as dicts, to compare a typed value with a checkpoint's."""
    if isinstance(value, Namespace):
        value = value.as_dict()
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value




class CheckpointConfig:
    """The part of ``Module14CLI`` that lays a ``--ckpt_path`` checkpoint's hyperparameters over the config."""

    config: Namespace
    parser: Any
    _typed_model_args: set[str]
    _typed_values: dict[str, Any]

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
        self._checkpoint_batches_into_epoch = 0
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not ckpt_path and subcommand == "fit" and requeued_job():
            ckpt_path = self.config.fit.ckpt_path = self._requeued_checkpoint(requeued_job())
        if not ckpt_path:
            if subcommand == "predict":
                say("predict without --ckpt_path: the model's weights are random (pass --ckpt_path "
                     "<run folder>/last.ckpt to predict with a trained model)")
            return
        refuse_remote(str(ckpt_path))
        if ckpt_path in ("best", "last"):
            ckpt_path = self.config[subcommand].ckpt_path = self._run_checkpoint(ckpt_path)
        if ckpt_path == "pretrained" or Path(ckpt_path).is_file() and is_shipped(ckpt_path):
            ckpt_path = self.config[subcommand].ckpt_path = self._shipped_checkpoint(subcommand, ckpt_path)
        if Path(ckpt_path).is_dir():
            found = sorted(p.name for p in Path(ckpt_path).glob("*.ckpt"))[:5]
            raise CheckpointError(
                f"--ckpt_path '{ckpt_path}' is a folder: pass a checkpoint file"
                + (f" in it ({', '.join(found)})" if found else ", e.g. <run folder>/checkpoints/last.ckpt") + ".")
        if not Path(ckpt_path).is_file():
            return  # "hpc" or a missing file: Lightning's own handling and message
        checkpoint = read_checkpoint(ckpt_path)
        self._checkpoint_hparams = checkpoint.get("hyper_parameters", {})
        self._checkpoint_data_hparams = checkpoint.get("datamodule_hyper_parameters", {})
        self._wandb_run = checkpoint.get(WANDB_RUN_KEY)
        self._checkpoint_precision = checkpoint.get(PRECISION_KEY)
        self._checkpoint_batches_into_epoch = batches_into_epoch(checkpoint)
        del checkpoint  # the weights: Lightning loads them again when it restores
        hparams = {k: v for k, v in self._checkpoint_hparams.items() if k not in NOT_FROM_CHECKPOINT}
        wanted = self.config[subcommand].model.class_path
        saved = self._checkpoint_hparams.get("_class_path")
        if saved:
            wanted = self._checked_model_class(ckpt_path, saved, wanted)
        hparams = self._checkpoint_defaults(ckpt_path, hparams, import_class(wanted))
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
        """``--ckpt_path best|last``: the checkpoint of the newest run of this experiment (``runs.run_checkpoint``):
        a run whose model and data settings are this command's (``runs.experiment_identity``)."""
        config = self.config[self.config.subcommand]
        model, data = plain(config.model), plain(config.data)
        inference = getattr(import_class(model["class_path"]), "inference_args", frozenset())
        identity = experiment_identity(model, data, inference)
        path = run_checkpoint(which, self._runs_root()[0], identity, inference)
        say(f"--ckpt_path {which} is {path}")
        return path

    def _shipped_checkpoint(self, subcommand: str, ckpt_path: str) -> str:
        """Shipped weights (``training.pretrained``), verified: ``pretrained``, those of the ``--config`` experiment,
        or a file in ``weights/``. Not for ``fit``: they hold no optimizer or loop state to resume."""
        configs = [str(path) for path in self.config[subcommand].get("config") or []]
        if subcommand == "fit":
            raise CheckpointError(
                f"--ckpt_path {ckpt_path} is for validate, test and predict: the shipped weights hold no optimizer or "
                "loop state, so fit cannot resume from them. Test them with `module14 test --config "
                f"{configs[-1] if configs else 'configs/<name>.yaml'} --ckpt_path pretrained`, or train a new run.")
        if ckpt_path != "pretrained":
            return str(verified(Path(ckpt_path).name))
        path = pretrained_checkpoint(configs)
        say(f"--ckpt_path pretrained is {path} (its sha256 matches weights/SHA256SUMS)")
        return path

    def _requeued_checkpoint(self, job: str) -> str | None:
        """A requeued SLURM job's fit continues from the newest checkpoint this job wrote, into the same run folder and
        W&B run (``runs.requeued_checkpoint``): under the runs' root and, for Lightning's hpc checkpoints, the
        trainer's ``default_root_dir``."""
        roots = [self._runs_root()[0], self.config.fit.trainer.get("default_root_dir") or "."]
        found = requeued_checkpoint(job, roots)
        if found is None:
            say(f"SLURM job {job} was requeued, but no checkpoint of it is under {', '.join(map(str, roots))}: "
                 f"training starts from the beginning")
            return None
        say(f"SLURM job {job} was requeued: resuming from {found[0]} (global step {found[1]})")
        return found[0]

    def _checkpoint_defaults(self, ckpt_path: str, hparams: dict, model_class: type) -> dict:
        """The checkpoint hyperparameters to lay over the config: all but the inference settings the user typed.

        A typed value of any other argument (the architecture, the objective, the training settings) that differs
        from the checkpoint's is refused: the checkpoint was trained with its value, and silently replacing what the
        user typed is worse than saying so.
        """
        refuse_unknown_hyperparameters(ckpt_path, hparams, model_class)
        inference = getattr(model_class, "inference_args", frozenset())
        for key in sorted(self._typed_model_args & hparams.keys() - inference):
            typed, saved = self._typed_values.get(key), hparams[key]
            if plain(typed) != plain(saved):
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

