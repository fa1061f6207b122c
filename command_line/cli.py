"""``Module14CLI``: Lightning's CLI with the project's always-on callbacks, data-to-model links, checkpoint handling
(``command_line.checkpoints``), cross-checks (``command_line.checks``) and the precision rule
(``training.precision``); ``build_cli`` makes one."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import lightning as L
import yaml
from jsonargparse import Namespace
from lightning.pytorch.callbacks import DeviceStatsMonitor, LearningRateMonitor, ProgressBar
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, SaveConfigCallback
from lightning.pytorch.plugins import TorchCheckpointIO

import lightning_modules  # noqa: F401  (registers the model classes for --model ShortName)
from command_line.checkpoints import CheckpointConfig, typed_model_args
from command_line.checks import SettingChecks
from command_line.parser import (DATA_LINKS, SUBCOMMANDS, Module14Parser, init_parameters,
                                 refuse_what_argv_would_import_or_expand, say)
from compat import CLIHooks
from datamodules import ImageDataModule
from training.allocator import keep_freed_memory
from training.checkpointing import SafeCheckpointIO
from training.optim import WarnOnScheduleChange
from training.precision import PrecisionRecord, check_precision, resolve_precision
from training.quiet import filter_known_noise
from training.rng import RNGStateCheckpoint
from training.runs import RunRecord, join_wandb_run, run_summary
from training.stopping import SaveOnSignal, StopOnNonFiniteLoss

# Read before the config a user passes: the logger and callbacks every experiment shares.
BASE_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "base.yaml"
# Callbacks that Lightning refuses in a trainer without a logger: what they measure goes to the logger.
NEEDS_LOGGER = (LearningRateMonitor, DeviceStatsMonitor)


class RunConfigSaver(SaveConfigCallback):
    """Saves the run's full config as ``config.yaml`` beside its checkpoints and into the logger's run config.

    Lightning's default writes ``config.yaml`` into ``trainer.log_dir``; with W&B that is the same folder for every
    run, so the second run aborts ("config.yaml exists"). Here each run's file lands in its own checkpoint folder.
    """

    def __init__(self, parser: LightningArgumentParser, config, **kwargs) -> None:
        super().__init__(parser, config, save_to_log_dir=False, **kwargs)

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # parser.dump leaves out link targets (image_shape, ...): their values are in the model's own hparams.
        config = yaml.safe_load(self.parser.dump(self.config, skip_unset=False))
        for logger in trainer.loggers:
            logger.log_hyperparams({"config": config})

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        checkpoint = trainer.checkpoint_callback
        if trainer.is_global_zero and checkpoint is not None and getattr(checkpoint, "dirpath", None):
            folder = Path(checkpoint.dirpath)
            folder.mkdir(parents=True, exist_ok=True)
            self.parser.save(self.config, str(folder / self.config_filename), skip_unset=False, overwrite=True)


def _without(callbacks: list, kinds: tuple[type, ...], flag: str, why: str) -> list:
    """``callbacks`` less those of ``kinds``, saying which were dropped because of ``flag``."""
    dropped = [type(c).__name__ for c in callbacks if isinstance(c, kinds)]
    if dropped:
        say(f"{flag}: dropped the config's {', '.join(dropped)} callback ({why})")
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


class Module14CLI(CheckpointConfig, SettingChecks, CLIHooks):
    """Lightning's CLI for every model and dataset of module14 (see ``cli.py`` for the command line)."""

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
        # Always on: the precision in every checkpoint, to say so when a resumed run trains in another one.
        parser.add_lightning_class_args(PrecisionRecord, "precision_record")

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        """Parses, and records which model init args the user typed (and their values) for ``--ckpt_path``; what
        would import a foreign module or expand without bound is refused before parsing reads it."""
        argv = sys.argv[1:] if args is None else args
        if isinstance(argv, list) and (problem := refuse_what_argv_would_import_or_expand(argv)):
            parser.error(problem)
        super().parse_arguments(parser, args)
        self._typed_model_args = typed_model_args(argv) if isinstance(argv, list) else set()
        subcommand = self.config.get("subcommand")
        init_args = (self.config[subcommand] if subcommand else self.config).model.get("init_args") or Namespace()
        self._typed_values = {key: init_args.get(key) for key in self._typed_model_args}

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        check_precision(config.trainer.get("precision"))

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        """The trainer, in the precision the rule gives this machine and model when the config leaves it null, with
        ``SafeCheckpointIO`` (atomic writes, weights-only loads) unless a CheckpointIO plugin was given (set on the
        strategy, so every rank of a DDP run uses it), its W&B run joined to the checkpoint's, and without the
        callbacks its own flags rule out (``callbacks_the_flags_allow``)."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        if config.trainer.get("precision") is None:
            precision, reason = resolve_precision(str(config.trainer.get("accelerator") or "auto"), self.model)
            if self._checkpoint_precision not in (None, precision):
                reason += f"; the checkpoint was trained in {self._checkpoint_precision}"
            say(f"precision {precision}: {reason}; --trainer.precision chooses")
            config.trainer.precision = kwargs["precision"] = precision  # config.yaml records what ran
        trainer_config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        trainer = super().instantiate_trainer(**{"callbacks": callbacks_the_flags_allow(trainer_config.trainer),
                                                 **kwargs})
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = SafeCheckpointIO()
        join_wandb_run(trainer.loggers, self._wandb_run, self.subcommand or "fit")
        return trainer

    def after_fit(self) -> None:
        """Say where the run's files are and how to use them (rank 0, stderr)."""
        if self.trainer.is_global_zero:
            print(run_summary(self.trainer), file=sys.stderr)

    def instantiation_links(self, class_type: type, links: dict) -> dict:
        """Only the links ``class_type`` accepts are recorded in its hyperparameters.

        jsonargparse skips a link whose target the chosen class lacks (``num_classes`` for a VAE), but Lightning still
        records it in the checkpoint's hyperparameters, and ``test --ckpt_path`` / ``load_from_checkpoint`` then fail
        with "unexpected keyword argument". Filtering here keeps checkpoints loadable.
        """
        accepted = init_parameters(class_type)
        return {k: v for k, v in links.items() if k.rsplit(".", 1)[-1] in accepted}


def build_cli(args: ArgsType = None, run: bool = True) -> Module14CLI:
    """The CLI object, for scripts and tests: ``build_cli(["fit", "--config", ...])`` runs and returns it."""
    os.environ.setdefault("WANDB_MODE", "offline")  # no account or network needed; WANDB_MODE=online to sync
    if os.environ["WANDB_MODE"] == "offline":  # fit's summary says where the run is and how to sync it
        os.environ.setdefault("WANDB_SILENT", "true")
    else:  # an unreachable server fails after 30 s, not W&B's default 90 and more
        os.environ.setdefault("WANDB_INIT_TIMEOUT", "30")
    filter_known_noise()
    keep_freed_memory()
    exact = {"allow_abbrev": False}
    return Module14CLI(
        model_class=L.LightningModule,
        datamodule_class=ImageDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_callback=RunConfigSaver,
        parser_class=Module14Parser,
        parser_kwargs={**exact, **{command: {**exact, "default_config_files": [str(BASE_CONFIG)]}
                                   for command in SUBCOMMANDS}},
        seed_everything_default=42,
        args=args,
        run=run,
    )
