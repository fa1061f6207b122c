"""What the benchmarks share: where their runs live, the MNIST FID ruler, and training steps of a model timed by a
real Trainer on its real data.

- ``RUNS`` / ``MNIST_CLASSIFIER``: the results' runs folder and the vit_mnist row's weights, whose features every
  MNIST FID/KID uses.
- ``train_step_seconds``: the seconds of each of a few training steps of a copy of a model (a warm-up step first).
- ``time_train_steps``: the best of them after the warm-up.
The copy leaves the model, its optimizer state and every random stream as they were, so the steps of several
settings can be timed interleaved in one process.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import lightning as L

from training.rng import global_rng_states, set_global_rng_states

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "runs/results"
MNIST_CLASSIFIER = RUNS / "vit_mnist/seed42/final.ckpt"  # the vit_mnist row's weights: the MNIST FID's features


class _StepTimer(L.Callback):
    def __init__(self) -> None:
        self.seconds: list[float] = []

    def on_train_batch_start(self, *args) -> None:
        self.start = time.perf_counter()

    def on_train_batch_end(self, *args) -> None:
        self.seconds.append(time.perf_counter() - self.start)


def train_step_seconds(model: L.LightningModule, datamodule: L.LightningDataModule, precision: str,
                       steps: int) -> list[float]:
    """Seconds of each of ``steps`` training steps of a copy of ``model`` on CPU, the first (warm-up, or compiling
    when the model has ``compile: true``) included.

    The copy leaves the model, its optimizer state and every random stream as they were.
    """
    timer = _StepTimer()
    trainer = L.Trainer(accelerator="cpu", devices=1, precision=precision, limit_train_batches=steps, max_epochs=1,
                        limit_val_batches=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[timer])
    states = global_rng_states()
    try:
        with _quiet():
            trainer.fit(copy.deepcopy(model), datamodule)
    finally:
        set_global_rng_states(states)
    return timer.seconds


def time_train_steps(model: L.LightningModule, datamodule: L.LightningDataModule, precision: str,
                     steps: int = 3) -> float:
    """Seconds per training step of a copy of ``model`` on CPU (the best of ``steps`` after a warm-up step)."""
    return min(train_step_seconds(model, datamodule, precision, steps + 1)[1:])


class _quiet:
    """Silences Lightning's per-Trainer info lines (GPU available, ...) while timing."""

    def __enter__(self) -> None:
        import logging

        self.loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric")]
        self.levels = [lg.level for lg in self.loggers]
        for lg in self.loggers:
            lg.setLevel(logging.WARNING)

    def __exit__(self, *exc) -> None:
        for lg, level in zip(self.loggers, self.levels):
            lg.setLevel(level)
