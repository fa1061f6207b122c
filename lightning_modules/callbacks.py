"""Callbacks shared by every model: image grids during validation, and writers for ``predict``.

``ImageSampler`` works with any LightningModule that implements

    def sample_images(self, images: Tensor, generator: torch.Generator) -> dict[str, Tensor]

taking a fixed batch of validation images (in the data's range) and a seeded generator (so prior samples use the same
noise every epoch), and returning named image sets in [0, 1], each (N, C, H, W) or (rows, cols, C, H, W).
"""

from __future__ import annotations

import csv
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import BasePredictionWriter, Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor
from torch.optim.lr_scheduler import LambdaLR

from lightning_modules.checkpointing import atomic_file
from lightning_modules.images import image_grid, log_image, save_png
from lightning_modules.rng import global_rng_states, set_global_rng_states


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


def _rng_states() -> dict[str, Any]:
    """Global RNG states in types ``torch.load(weights_only=True)`` accepts (numpy's key array as a list)."""
    states = global_rng_states()
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    states["numpy"] = (kind, keys.tolist(), pos, has_gauss, gauss)
    return states


def _set_rng(states: dict[str, Any]) -> None:
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    set_global_rng_states({**states, "numpy": (kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss)})


def _gather(rows: list[Any]) -> list[Any]:
    """All ranks' rows on every rank (a no-op in one process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return rows
    gathered: list[list[Any]] = [[] for _ in range(dist.get_world_size())]
    dist.all_gather_object(gathered, rows)
    return [row for part in gathered for row in part]


class RNGStateCheckpoint(Callback):
    """Per-rank random streams under DDP, and exact resumption of the global RNGs (torch, numpy, python, CUDA).

    ``seed_everything`` seeds every DDP rank alike, so each rank would draw the same GAN noise, diffusion timesteps
    and dropout masks; here rank r re-seeds with ``seed + r`` at setup (model weights are already built, and DDP
    broadcasts rank 0's). Checkpoints store every rank's RNG state; a resumed run restores them just before its first
    step, so with ``num_workers: 0`` and no random augmentation it retraces the uninterrupted run exactly.
    The CLI adds this callback to every run.
    """

    def __init__(self) -> None:
        super().__init__()
        self._to_restore: list[dict] | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        seed = os.environ.get("PL_GLOBAL_SEED")
        if seed is not None and trainer.world_size > 1:
            L.seed_everything(int(seed) + trainer.global_rank, workers=True, verbose=False)

    def state_dict(self) -> dict[str, Any]:
        return {"rng_states": _gather([_rng_states()])}  # one entry per rank

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._to_restore = state_dict["rng_states"]

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        if self._to_restore is not None:
            if len(self._to_restore) == trainer.world_size:
                _set_rng(self._to_restore[trainer.global_rank])
            self._to_restore = None


def _learning_rate_jumps(trainer: L.Trainer) -> list[tuple[float, float]]:
    """(restored, new) learning rates of the first parameter group of each ``LambdaLR`` whose schedule, as this run
    lays it out, gives another value at the restored step than the checkpoint's schedule did."""
    jumps = []
    for config in trainer.lr_scheduler_configs:
        scheduler = config.scheduler
        if isinstance(scheduler, LambdaLR):
            restored = scheduler.get_last_lr()[0]
            new = scheduler.base_lrs[0] * scheduler.lr_lambdas[0](scheduler.last_epoch)
            if not math.isclose(restored, new, rel_tol=1e-6, abs_tol=1e-12):
                jumps.append((restored, new))
    return jumps


class WarnOnScheduleChange(Callback):
    """Resuming ``fit`` with another run length warns when it moves the learning rate, naming what changed.

    Warm-up + cosine schedules are laid out over the run's total steps, so resuming with another ``trainer.max_epochs``
    / ``max_steps`` (or another number of batches per epoch) re-stretches the schedule and the learning rate jumps at
    the first step. Checkpoints record the run length; a resumed run compares it with its own before its first step.
    The CLI adds this callback to every run.
    """

    def __init__(self) -> None:
        super().__init__()
        self._length: dict[str, int] = {}
        self._saved: dict[str, int] = {}

    def state_dict(self) -> dict[str, int]:
        return dict(self._length)

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self._saved = dict(state_dict)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        total = trainer.estimated_stepping_batches
        self._length = {"max_epochs": trainer.max_epochs, "max_steps": trainer.max_steps,
                        "total_steps": int(total) if math.isfinite(total) else -1}
        saved, self._saved = self._saved, {}
        if not saved or saved.get("total_steps") == self._length["total_steps"]:
            return
        jumps = _learning_rate_jumps(trainer)
        if jumps:
            rank_zero_warn(self._message(saved, trainer.global_step, jumps[0]))

    def _message(self, saved: dict[str, int], step: int, jump: tuple[float, float]) -> str:
        changed = [f"trainer.{key} {saved[key]} -> {self._length[key]}" for key in ("max_epochs", "max_steps")
                   if key in saved and saved[key] != self._length[key]]
        what = ", ".join(changed) or "the number of training batches per epoch (data.batch_size, data.val_size, " \
                                      "trainer.limit_train_batches or accumulate_grad_batches)"
        return (
            f"resuming with another run length ({what}): the learning-rate schedule now spans "
            f"{self._length['total_steps']} steps instead of the checkpoint's {saved['total_steps']}, so at step {step} "
            f"the learning rate jumps from {jump[0]:.3g} to {jump[1]:.3g}. To continue the checkpoint's schedule, "
            f"resume with its settings (the config.yaml beside it)."
        )


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss."""


class StopOnNonFiniteLoss(Callback):
    """Stops training at the first step whose loss is NaN or infinite, naming the step and the last good checkpoint.

    Checks the loss ``training_step`` returns and every value logged with "loss" in its name (the GAN, with manual
    optimisation, logs ``train/d_loss`` and ``train/g_loss``). It raises before any checkpoint of the broken weights
    is written, so the last checkpoint on disk stays a good one. The CLI adds this callback to every run.
    """

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        values = {name: value for name, value in trainer.callback_metrics.items() if "loss" in name}
        returned = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(returned, Tensor):
            values["training_step loss"] = returned.detach()
        bad = sorted(name for name, value in values.items() if not torch.isfinite(value).all())
        if not bad:
            return
        raise NonFiniteLossError(
            f"non-finite loss ({', '.join(bad)}) at epoch {trainer.current_epoch}, batch {batch_idx} (global step "
            f"{trainer.global_step}); training stopped. Last good checkpoint: {_newest_checkpoint(trainer) or 'none'}. "
            f"Lower the learning rate, clip gradients, or use bf16-mixed instead of 16-mixed, then resume from it "
            f"with --ckpt_path."
        )


def _newest_checkpoint(trainer: L.Trainer) -> str:
    """The most recently written checkpoint of any ModelCheckpoint callback ('' if none)."""
    paths = set()
    for callback in trainer.checkpoint_callbacks:
        paths |= {callback.last_model_path, callback.best_model_path, getattr(callback, "_last_checkpoint_saved", "")}
    existing = [Path(p) for p in paths if p and Path(p).is_file()]
    return str(max(existing, key=lambda p: p.stat().st_mtime)) if existing else ""


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
        rows = _gather(rows)
        if not trainer.is_global_zero:
            return
        rows.sort(key=lambda row: row[0])
        num_classes = len(rows[0]) - 3 if rows else 0
        with atomic_file(self.output_file) as temporary, open(temporary, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["index", "label", "prediction"] + [f"prob_{k}" for k in range(num_classes)])
            writer.writerows(rows)
        print(f"module14: predict wrote {len(rows)} rows to {self.output_file.resolve()}", file=sys.stderr)
