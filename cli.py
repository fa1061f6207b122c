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
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import yaml
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI, SaveConfigCallback, _InstantiatorFn
from lightning.pytorch.plugins import TorchCheckpointIO

import lightning_modules  # noqa: F401  (registers the model classes for --model ShortName)
from lightning_modules.callbacks import RNGStateCheckpoint, StopOnNonFiniteLoss
from lightning_modules.checkpointing import SafeCheckpointIO, SaveOnSignal
from datamodules import ImageDataModule


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


def read_checkpoint_hparams(path: str) -> dict:
    """The model hyperparameters of a checkpoint, loaded without running pickled code (``weights_only``)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(
            f"cannot read checkpoint '{path}': the file is truncated, corrupted or not a PyTorch checkpoint "
            f"({type(err).__name__}: {str(err).splitlines()[0]}). Use another checkpoint of the run (last.ckpt or the "
            f"best one beside it). Checkpoints written by module14 load with weights_only=True; a file that needs "
            f"pickled code is refused on purpose."
        ) from err
    if "state_dict" not in checkpoint:
        raise CheckpointError(f"'{path}' holds no 'state_dict': it is not a Lightning checkpoint.")
    return checkpoint.get("hyper_parameters", {})


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
        """Refuse unreadable checkpoints and checkpoints of another model class with a clear message.

        (Lightning's own version would show a zip-reader traceback, or silently switch the model to the checkpoint's
        class.) Then let Lightning merge the checkpoint's hyperparameters into the config as usual.
        """
        self._checkpoint_hparams: dict = {}
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path and Path(ckpt_path).is_file():
            self._checkpoint_hparams = read_checkpoint_hparams(ckpt_path)
            saved = self._checkpoint_hparams.get("_class_path")
            wanted = self.config[subcommand].model.class_path
            if saved and wanted and saved.rsplit(".", 1)[-1] != wanted.rsplit(".", 1)[-1]:
                raise CheckpointError(
                    f"checkpoint '{ckpt_path}' holds a {saved.rsplit('.', 1)[-1]} but the config builds a "
                    f"{wanted.rsplit('.', 1)[-1]}. Use the config the checkpoint was trained with (saved as "
                    f"config.yaml beside it) or a checkpoint of this model."
                )
        super()._parse_ckpt_path()

    def after_instantiate_classes(self) -> None:
        """A checkpoint trained on other image shapes/classes than the datamodule provides is a clear error."""
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

    def _add_instantiators(self) -> None:
        for key, base, subclasses in (
            ("model", self._model_class, self.subclass_mode_model),
            ("data", self._datamodule_class, self.subclass_mode_data),
        ):
            self.parser.add_instantiator(_OwnParametersInstantiator(cli=self, key=key), base, subclasses=subclasses)


def main(args: ArgsType = None, run: bool = True) -> Module14CLI:
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


if __name__ == "__main__":
    main()
