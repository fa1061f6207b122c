"""Callbacks shared by every model: image grids during validation, and writers for ``predict``.

``ImageSampler`` works with any LightningModule that implements

    def sample_images(self, images: Tensor, generator: torch.Generator) -> dict[str, Tensor]

taking a fixed batch of validation images (in the data's range) and a seeded generator (so prior samples use the same
noise every epoch), and returning named image sets in [0, 1], each (N, C, H, W) or (rows, cols, C, H, W).
"""

from __future__ import annotations

import csv
import os
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter, Callback
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from training.checkpointing import atomic_file
from lightning_modules.images import image_grid, log_image, save_png
from training.distributed import gather_objects


def _writable_dir(path: str | Path) -> Path:
    """Create ``path`` and check it can be written, with a message that says what to change."""
    folder = Path(path).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write_test_{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as err:
        raise PermissionError(
            f"cannot write predictions to '{folder}' ({err.strerror}). Point the writer's output_dir "
            f"(--trainer.callbacks ... output_dir=...) at a folder you can write."
        ) from err
    return folder


class ImageSampler(Callback):
    """Logs the module's ``sample_images`` grids every ``every_n_epochs`` validation epochs, on rank 0.

    A ``fast_dev_run`` draws at most ``FAST_DEV_RUN_IMAGES`` (and says so): it checks that sampling runs, and 64
    DDIM-50 samples of a 35M-parameter U-Net take minutes on a CPU.

    Args:
        num_images: images taken from the first validation batch (and prior samples drawn) per grid.
        seed: seed of the generator handed to the module: the same noise every epoch.
        every_n_epochs: log every n-th validation epoch.
    """

    FAST_DEV_RUN_IMAGES = 8

    def __init__(self, num_images: int = 64, seed: int = 0, every_n_epochs: int = 1) -> None:
        super().__init__()
        if num_images < 1 or every_n_epochs < 1:
            raise ValueError(
                f"ImageSampler(num_images={num_images}, every_n_epochs={every_n_epochs}): both must be >= 1. To log "
                f"no sample grids, remove ImageSampler from trainer.callbacks."
            )
        self.num_images = num_images
        self.seed = seed
        self.every_n_epochs = every_n_epochs
        self.images: Tensor | None = None
        self.logged: dict[str, list[str]] = {}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not callable(getattr(pl_module, "sample_images", None)):
            raise TypeError(
                f"ImageSampler needs a model with a sample_images(images, generator) method; "
                f"{type(pl_module).__name__} has none. Remove ImageSampler from trainer.callbacks for this model."
            )

    def on_validation_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self.images is None and batch_idx == 0 and dataloader_idx == 0:
            images = batch[0] if isinstance(batch, (list, tuple)) else batch
            count = min(self.num_images, len(images))
            if trainer.fast_dev_run and count > self.FAST_DEV_RUN_IMAGES:
                count = self.FAST_DEV_RUN_IMAGES
                rank_zero_info(f"ImageSampler: fast_dev_run draws {count} of its num_images={self.num_images} images")
            self.images = images[:count].detach().clone()

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or self.images is None:
            return
        if (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        generator = torch.Generator(device=pl_module.device).manual_seed(self.seed)
        was_training = pl_module.training
        pl_module.eval()
        with torch.no_grad():
            panels = pl_module.sample_images(self.images.to(pl_module.device), generator)
        pl_module.train(was_training)
        for name, images in panels.items():
            self.logged[name] = log_image(trainer, f"samples/{name}", image_grid(images))


def _fresh_folder(parent: Path) -> Path:
    """A new folder ``parent/<YYYYmmdd-HHMMSS>`` (``-2``, ``-3``, ... appended when that name exists), created here."""
    parent = _writable_dir(parent)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for attempt in range(1, 1000):
        folder = parent / (stamp if attempt == 1 else f"{stamp}-{attempt}")
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue
    raise FileExistsError(f"no free folder name for predictions under '{parent}'")


class ImageWriter(BasePredictionWriter):
    """Writes what ``predict_step`` returns, images (N, C, H, W) in [0, 1], as numbered PNGs plus a grid.

    Each ``predict`` writes into a fresh folder ``output_dir/<YYYYmmdd-HHMMSS>/`` (chosen by rank 0), so files of an
    earlier predict never mix in, and rank 0 prints where it wrote. Every rank writes its own images (file names are
    dataset indices, so none is written twice); rank 0 writes ``grid.png`` of the first ``grid_size`` images it produced.
    """

    def __init__(self, output_dir: str = "outputs/samples", grid_size: int = 64) -> None:
        super().__init__(write_interval="batch")
        if grid_size < 1:
            raise ValueError(f"ImageWriter(grid_size={grid_size}) would write no grid.png: give the number of images "
                             f"it shows (at least 1; 64 by default).")
        self.output_dir = Path(output_dir)
        self.grid_size = grid_size
        self.run_dir: Path | None = None  # this predict's folder
        self._grid: list[Tensor] = []

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "predict":
            folder = str(_fresh_folder(self.output_dir)) if trainer.is_global_zero else None
            self.run_dir = Path(trainer.strategy.broadcast(folder))

    def write_on_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, prediction: Tensor, batch_indices: Any,
        batch: Any, batch_idx: int, dataloader_idx: int,
    ) -> None:
        for index, image in zip(batch_indices, prediction):
            save_png(image, self.run_dir / f"{index:06d}.png")
        if sum(len(g) for g in self._grid) < self.grid_size:
            self._grid.append(prediction.detach().cpu())

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and self._grid:
            save_png(image_grid(torch.cat(self._grid)[: self.grid_size]), self.run_dir / "grid.png")
        self._grid = []

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.strategy.barrier()  # every rank's images are on disk
        if trainer.is_global_zero:
            count = sum(1 for p in self.run_dir.glob("*.png") if p.name != "grid.png")
            print(f"module14: predict wrote {count} images and grid.png to {self.run_dir.resolve()}", file=sys.stderr)


class ClassificationWriter(BasePredictionWriter):
    """Writes ``predict`` results of a classifier to one CSV: index, label, predicted class, class probabilities.

    ``predict_step`` returns ``{"pred": (B,), "probs": (B, K), "label": (B,)}``. Rows from all ranks are gathered and
    rank 0 writes them sorted by dataset index: one row per image, replacing the whole file (nothing stale stays), and
    prints where.
    """

    def __init__(self, output_file: str = "outputs/predictions.csv") -> None:
        super().__init__(write_interval="epoch")
        self.output_file = Path(output_file)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "predict":
            return
        if self.output_file.is_dir():
            raise IsADirectoryError(
                f"ClassificationWriter output_file '{self.output_file}' is a folder; it must name the CSV file to "
                f"write, e.g. --trainer.callbacks.output_file={self.output_file / 'predictions.csv'}"
            )
        _writable_dir(self.output_file.parent)

    def write_on_epoch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, predictions: list[dict[str, Tensor]],
        batch_indices: list[list[int]],
    ) -> None:
        (batch_indices,) = batch_indices  # Lightning nests them per dataloader; predict has one
        rows = []
        for output, indices in zip(predictions, batch_indices):
            for i, index in enumerate(indices):
                probs = output["probs"][i].tolist()
                rows.append([index, int(output["label"][i]), int(output["pred"][i])] + [f"{p:.6f}" for p in probs])
        rows = gather_objects(rows)
        if not trainer.is_global_zero:
            return
        rows.sort(key=lambda row: row[0])
        num_classes = len(rows[0]) - 3 if rows else 0
        with atomic_file(self.output_file) as temporary, open(temporary, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["index", "label", "prediction"] + [f"prob_{k}" for k in range(num_classes)])
            writer.writerows(rows)
        print(f"module14: predict wrote {len(rows)} rows to {self.output_file.resolve()}", file=sys.stderr)
