"""Test helpers importable by CLI runs: a callback recording every rank's weights and metrics, a model that goes NaN,
a callback that sends the process a signal, one that makes ``compile: true`` use the fast ``aot_eager`` backend."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from compat import is_compiled
from lightning_modules import compiling


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
