"""Test helpers importable by CLI runs: a callback recording every rank's weights and metrics, a model that goes NaN,
a callback that sends the process a signal, one that reports a run's progress to files, one that makes
``compile: true`` use the fast ``aot_eager`` backend."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from compat import is_compiled
from training import compiling


class RecordRankState(Callback):
    """Writes ``{stage}_rank{r}.pt`` = {"state": model state_dict, "metrics": callback_metrics, "compiled": names of
    the compiled child networks} into ``folder``."""

    def __init__(self, folder: str) -> None:
        super().__init__()
        self.folder = Path(folder)

    def _save(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        torch.save(
            {
                "state": {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()},
                "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
                "compiled": [name for name, child in pl_module.named_children() if is_compiled(child)],
            },
            self.folder / f"{stage}_rank{trainer.global_rank}.pt",
        )

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save(trainer, pl_module, "fit")

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking and trainer.state.fn == "validate":
            self._save(trainer, pl_module, "validate")


class SignalAtStep(Callback):
    """Sends this process ``signum`` (e.g. 15 for SIGTERM) once, when training step ``step`` starts."""

    def __init__(self, signum: int, step: int) -> None:
        super().__init__()
        self.signum, self.step = signum, step

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.Signals(self.signum))


class Progress(Callback):
    """Writes ``<folder>/step_rank<r>`` (the global step) as each training step starts, ``<folder>/batches_rank<r>`` (the
    batches done) after each validate/test/predict batch, and ``<folder>/stopped_rank<r>`` (the global step) when a
    signal stops the run; sleeps ``delay`` seconds per batch, so that a test can signal a run while it works."""

    def __init__(self, folder: str, delay: float = 0.0) -> None:
        super().__init__()
        self.folder, self.delay, self.batches = Path(folder), delay, 0

    def _write(self, trainer: L.Trainer, what: str, value: int) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{what}_rank{trainer.global_rank}"
        path.with_suffix(".tmp").write_text(str(value))
        path.with_suffix(".tmp").replace(path)

    def on_train_batch_start(self, trainer: L.Trainer, *args) -> None:
        self._write(trainer, "step", trainer.global_step)
        time.sleep(self.delay)

    def _batch_end(self, trainer: L.Trainer, *args) -> None:
        self.batches += 1
        self._write(trainer, "batches", self.batches)
        time.sleep(self.delay)

    on_validation_batch_end = on_test_batch_end = on_predict_batch_end = _batch_end

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._write(trainer, "stopped", trainer.global_step)


from lightning_modules.classifier import ViTClassifier  # noqa: E402


class NaNAfterStep(ViTClassifier):
    """A ViTClassifier whose loss turns NaN from training step ``nan_step`` on (for the non-finite-loss test)."""

    def __init__(self, nan_step: int = 3, **kwargs) -> None:
        super().__init__(**kwargs)

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        return loss * float("nan") if self.global_step >= self.hparams.nan_step else loss


class CompileWithAotEager(Callback):
    """``compile: true`` with the ``aot_eager`` backend (Dynamo capture and AOT autograd, no inductor code generation)
    in this process: set when the CLI builds the callbacks, before ``configure_model`` compiles."""

    def __init__(self) -> None:
        super().__init__()
        compiling.BACKEND = "aot_eager"
