"""The one place for image utilities: value ranges, grids, PNG files and logging grids to whatever logger is attached."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from PIL import Image
from torch import Tensor
from torchvision.utils import make_grid, save_image

from datamodules import VALUE_RANGES
from training.checkpointing import atomic_file


def to_unit_range(x: Tensor, value_range: tuple[float, float]) -> Tensor:
    """Map images from ``value_range`` (e.g. (-1, 1)) to [0, 1], clamped."""
    low, high = value_range
    return ((x.float() - low) / (high - low)).clamp(0.0, 1.0)


def require_value_range(
    model: str, value_range: tuple[float, float] | None, normalization: str, why: str
) -> tuple[float, float]:
    """``value_range`` (linked from the data) when it is the range of ``normalization`` data, else an error saying
    which data flag to set."""
    wanted = VALUE_RANGES[normalization]
    if value_range is None or tuple(value_range) != wanted:
        raise ValueError(
            f"{model} needs data in [{wanted[0]:g}, {wanted[1]:g}] ({why}), but the data's value range is "
            f"{'standardised (mean_std)' if value_range is None else list(value_range)}. Set "
            f"data.init_args.normalization: {normalization}."
        )
    return wanted


def image_grid(images: Tensor, padding: int = 2) -> Tensor:
    """A (C, H', W') grid in [0, 1] from (N, C, H, W) images (near-square) or (rows, cols, C, H, W) panels."""
    if images.dim() == 5:
        rows, cols = images.shape[:2]
        return make_grid(images.flatten(0, 1).float().cpu(), nrow=cols, padding=padding, pad_value=1.0)
    if images.dim() != 4:
        raise ValueError(f"expected (N, C, H, W) or (rows, cols, C, H, W) images, got shape {tuple(images.shape)}")
    nrow = math.ceil(math.sqrt(images.shape[0]))
    return make_grid(images.float().cpu(), nrow=nrow, padding=padding, pad_value=1.0)


def save_png(image: Tensor, path: str | Path) -> None:
    """Save one (C, H, W) image in [0, 1] as an 8-bit PNG: grayscale for one channel, RGB for three (atomically)."""
    with atomic_file(path) as temporary:
        if image.dim() == 3 and image.shape[0] == 1:  # save_image would expand it to three channels
            pixels = (image[0].float().clamp(0, 1) * 255).round().byte().cpu().numpy()
            Image.fromarray(pixels).save(temporary, format="PNG")  # uint8 (H, W): mode "L"
        else:
            save_image(image.float().cpu(), str(temporary), format="PNG")


def run_images_folder(trainer: L.Trainer) -> Path:
    """Where a run's image grids are saved as PNGs: ``images/`` beside its checkpoint folder (``<run>/images``), else
    under the logger's ``log_dir`` or the trainer's ``default_root_dir``.

    Makes no collective calls (not ``trainer.log_dir``, which broadcasts), so it may run on rank 0 alone.
    """
    dirpath = getattr(trainer.checkpoint_callback, "dirpath", None)
    if dirpath:
        return Path(dirpath).parent / "images"
    log_dir = getattr(trainer.logger, "log_dir", None) if trainer.logger is not None else None
    return Path(log_dir or trainer.default_root_dir) / "images"


def log_image(trainer: L.Trainer, key: str, image: Tensor) -> list[str]:
    """Log one (C, H, W) image in [0, 1] to every logger that takes images, and save it as a named PNG in the run's
    images folder (``epoch003_samples.png`` for key ``samples/samples`` at epoch 3), where a user can find it.

    Makes no collective calls, so it may run on rank 0 alone.

    Returns where it went (logger names and the PNG path), for messages and tests.
    """
    step = trainer.global_step
    sent: list[str] = []
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            array = (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
            logger.log_image(key=key, images=[array], step=step)
            sent.append("wandb")
        elif isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(key, image.cpu(), global_step=step)
            sent.append("tensorboard")
    path = run_images_folder(trainer) / f"epoch{trainer.current_epoch:03d}_{key.rsplit('/', 1)[-1]}.png"
    save_png(image, path)
    sent.append(str(path))
    return sent
