"""Settings that only make sense together, checked after the model, datamodule and trainer are built and before any
work: the validation split against the subcommand and the monitored metrics, and a checkpoint against the datamodule
(image shapes, classes, the train/val split it was trained on)."""

from __future__ import annotations

from typing import Any

import numpy as np

from command_line.checkpoint_file import CheckpointError
from command_line.checkpoints import plain
from command_line.parser import DATA_LINKS, say


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
    _checkpoint_batches_into_epoch: int

    def after_instantiate_classes(self) -> None:
        """Settings that only make sense together are checked before any work: the validation split against the
        subcommand and monitored metrics, and the checkpoint against the datamodule (shapes, classes, data split)."""
        self._check_validation_split()
        if self.subcommand in ("fit", "validate"):
            self._check_resumed_split()
        if self.subcommand == "fit":
            self._say_what_a_mid_epoch_resume_loses()
        self._check_checkpoint_shapes()
        self._check_typed_settings_act()

    def _say_what_a_mid_epoch_resume_loses(self) -> None:
        """Resuming mid-epoch with another batch size or worker count: the loader continues at the same batch number,
        so the rest of that epoch is not the images the checkpoint had left; said in one line, not refused."""
        saved, now = self._checkpoint_data_hparams, getattr(self.datamodule, "hparams", {})
        into = self._checkpoint_batches_into_epoch
        changed = [f"data.{key} {saved[key]} -> {now[key]}" for key in ("batch_size", "num_workers")
                   if into and key in saved and key in now and saved[key] != now[key]]
        if changed:
            say(f"resuming {into} batches into an epoch with {', '.join(changed)}: the rest of this epoch is not the "
                f"images the checkpoint had left (its position counts the old batches); from the next epoch on, "
                f"training is as usual. Resume with the checkpoint's data settings to continue exactly.")

    def _check_typed_settings_act(self) -> None:
        """A model argument typed on the command line that the model's other settings make a no-op is refused."""
        ignored = getattr(self.model, "ignored_settings", dict)()
        for key in sorted(self._typed_model_args & ignored.keys()):
            raise ValueError(
                f"--model.init_args.{key}={self._typed_values.get(key)!r} does nothing here: {ignored[key]}. Drop the "
                f"flag, or choose the setting it belongs to."
            )

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
        """Resuming ``fit``, or validating a checkpoint, with another train/val split (``data.seed``,
        ``data.val_size``) would validate on images the checkpoint was trained on; refused, naming what changed. The
        test split is the dataset's own and never overlaps the training one."""
        saved, now = self._checkpoint_data_hparams, getattr(self.datamodule, "hparams", {})
        changed = [f"data.{key}={saved[key]!r} -> {now[key]!r}" for key in ("seed", "val_size")
                   if key in saved and key in now and saved[key] != now[key]]
        if changed:
            doing = "resuming from" if self.subcommand == "fit" else "validating"
            raise CheckpointError(
                f"{doing} '{self.config[self.subcommand].ckpt_path}' with another train/val split "
                f"({', '.join(changed)}): the new validation images include ones the checkpoint was trained on, so its "
                f"metrics (and best checkpoint) would be meaningless. Use the checkpoint's data settings (the "
                f"config.yaml beside it){', or start a new run without --ckpt_path' if self.subcommand == 'fit' else ''}."
            )
