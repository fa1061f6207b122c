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

import lightning as L
import yaml
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI, SaveConfigCallback, _InstantiatorFn

import lightning_modules  # noqa: F401  (registers the model classes for --model ShortName)
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


class _OwnParametersInstantiator(_InstantiatorFn):
    """Records only the links the instantiated class accepts in its hyperparameters.

    jsonargparse skips a link whose target the chosen class lacks (``num_classes`` for a VAE), but Lightning still
    records it in the checkpoint's hyperparameters, and ``test --ckpt_path`` / ``load_from_checkpoint`` then fail
    with "unexpected keyword argument". Filtering here keeps checkpoints loadable.
    """

    def __call__(self, class_type: type, *args, applied_instantiation_links: dict, **kwargs):
        accepted = inspect.signature(class_type.__init__).parameters
        links = {k: v for k, v in applied_instantiation_links.items() if k.rsplit(".", 1)[-1] in accepted}
        return super().__call__(class_type, *args, applied_instantiation_links=links, **kwargs)


class Module14CLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # A link whose target the chosen model lacks is skipped, so every family shares these.
        parser.link_arguments("data.dims", "model.init_args.image_shape", apply_on="instantiate")
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.link_arguments("data.normalization", "model.init_args.normalization", apply_on="instantiate")

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
