"""Settings that only make sense together, checked after the model, datamodule and trainer are built and before any
work: the validation split against the subcommand and the monitored metrics, and a checkpoint against the datamodule
(image shapes, classes, the train/val split it was trained on)."""

from __future__ import annotations

from typing import Any

import numpy as np

from command_line.checkpoints import CheckpointError, plain
from command_line.parser import DATA_LINKS


class SettingChecks:
    """The part of ``Module14CLI`` that checks settings against each other before any work."""

    subcommand: str | None
    model: Any
    datamodule: Any
    trainer: Any
    config: Any
    _typed_model_args: set[str]
    _typed_values: dict[str, Any]
    _checkpoint_hparams: dict
    _checkpoint_data_hparams: dict

    def after_instantiate_classes(self) -> None:
        """Settings that only make sense together are checked before any work: the validation split against the
        subcommand and monitored metrics, and the checkpoint against the datamodule (shapes, classes, data split)."""
        self._check_validation_split()
        if self.subcommand == "fit":
            self._check_resumed_split()
        self._check_checkpoint_shapes()

    def _check_checkpoint_shapes(self) -> None:
        """A checkpoint trained on other image shapes/classes than the datamodule provides is a ``CheckpointError``."""
        model_hparams = getattr(self.model, "hparams", {})
        for source, target in DATA_LINKS.items():
            typed, linked = self._typed_values.get(target), model_hparams.get(target)
            if target in self._typed_model_args and linked is not None and plain(typed) != plain(linked):
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
