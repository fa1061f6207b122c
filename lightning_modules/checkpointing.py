"""Checkpoints that survive: atomic writes, weights-only loads, a last.ckpt that is really the last, saves on signals.

- ``atomic_file``: write a file under a temporary name in its destination folder and rename it into place, so a kill
  or a full disk never leaves a truncated file under its final name.
- ``SafeCheckpointIO``: the trainer's checkpoint IO (the CLI plugs it in): atomic writes with a clear error on a full
  disk, and ``weights_only=True`` loads (a checkpoint never runs pickled code).
- ``RunCheckpoint``: Lightning's ``ModelCheckpoint`` whose ``last.ckpt`` always holds the latest state.
- ``SaveOnSignal``: SIGTERM / SIGINT during ``fit`` save a resumable checkpoint and exit with 128 + the signal number.
"""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import shutil
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any, Callable

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from fsspec.utils import get_protocol
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from compat import LastCheckpointHooks


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds it is renamed onto ``path`` (``os.replace``).

    The temporary file lives in the destination folder, so the rename never crosses filesystems and is atomic; on any
    failure (an exception, Ctrl+C) it is removed and ``path`` keeps its previous content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")  # created by the writer: default mode
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def is_local_path(path: Any) -> bool:
    """Whether ``path`` is a local file path (no ``s3://``-style protocol)."""
    return get_protocol(str(path)) == "file"


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (full disk, no permission, ...); earlier checkpoints are untouched."""


def _free_space(folder: Path) -> str:
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return "unknown"
    return f"{free / 2**30:.2f} GiB" if free >= 2**30 else f"{free / 2**20:.1f} MiB"


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO, except that local writes are atomic and every load is ``weights_only``.

    Lightning's own atomic save stages the file in ``$TMPDIR`` and moves it, which is a copy (not atomic) when the
    checkpoint folder is on another filesystem: a kill mid-save left a 0-byte ``last.ckpt``. Here the bytes go to a
    temporary file in the checkpoint folder, are flushed to disk, then renamed. Remote paths keep Lightning's save.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if storage_options is not None or not is_local_path(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        path = Path(path)
        try:
            with atomic_file(path) as temporary, open(temporary, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
        except OSError as err:
            raise CheckpointWriteError(
                f"cannot write checkpoint '{path}': {err.strerror or err} ({_free_space(path.parent)} free in "
                f"'{path.parent}'). Nothing was written under that name and earlier checkpoints are untouched. Free "
                f"some space (or point the checkpoint callback's dirpath elsewhere) and resume from the run's last.ckpt."
            ) from err

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        return super().load_checkpoint(path, map_location=map_location, weights_only=True)


class RunCheckpoint(LastCheckpointHooks):
    """Lightning's ``ModelCheckpoint`` (top-k as configured), except that ``last.ckpt`` always holds the latest state.

    Lightning 2.6 rewrites ``last.ckpt`` only in a step where it writes a top-k checkpoint (and at the end of training
    only if it never wrote one), so after an epoch that does not improve the monitored metric ``last.ckpt`` still holds
    an earlier epoch, and resuming from it silently rewinds training. Here it is also rewritten after every validation
    and training epoch of ``fit``, at the end of training and on a signal (``SaveOnSignal``), whenever it is older than
    the current step. All experiment configs use it; ``save_last`` must be ``true`` for ``last.ckpt`` to be written.
    """

    _last_step: int | None = None  # the global step last.ckpt holds, once written by this run

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.save_last == "link":
            raise ValueError(
                "RunCheckpoint(save_last='link') is not supported: a link points at a top-k checkpoint, which may be "
                "older than the latest state. Use save_last: true."
            )
        super().setup(trainer, pl_module, stage)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        self.save_latest(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        # Only where Lightning saves at validation end: a save here marks the step as saved, so it would otherwise
        # pre-empt the top-k save Lightning makes at the train epoch end that follows.
        if not self.saves_on_train_epoch_end(trainer):
            self.save_latest(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.save_latest(trainer)  # replaces Lightning's "only if no last.ckpt was written before"

    def on_last_saved(self, trainer: L.Trainer) -> None:
        if self.save_last:
            self._last_step = trainer.global_step

    def save_latest(self, trainer: L.Trainer) -> str:
        """Write ``last.ckpt`` now unless it already holds this step (or fit is not training); returns its path."""
        stale = self._last_step != trainer.global_step
        training = trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking and not trainer.fast_dev_run
        if self.save_last and stale and training:
            self.write_last(trainer)
        return self.last_model_path


class SaveOnSignal(Callback):
    """SIGTERM or SIGINT during ``fit``: finish the current batch, save a resumable checkpoint, exit with 128 + signal.

    Lightning 2.6 stops at the next batch boundary on SIGTERM (all DDP ranks together) but saves nothing and exits 0;
    Ctrl+C raises KeyboardInterrupt wherever the code happens to be and exits 1. Here both signals take Lightning's
    SIGTERM path, then the checkpoint (mid-epoch position and RNG states included) is written as the run's
    ``last.ckpt`` (``interrupted.ckpt`` in the checkpoint folder without a ``RunCheckpoint``), its path and the resume
    command are printed, and the ``SystemExit`` Lightning raises carries exit code 130 (SIGINT) or 143 (SIGTERM). A
    second Ctrl+C aborts at once without saving. SLURM's SIGUSR1 requeue is Lightning's and untouched.
    The CLI adds this callback to every run.
    """

    def __init__(self) -> None:
        super().__init__()
        self.received: signal.Signals | None = None
        self._training = False

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.received, self._training = None, True
        lightning_handler = signal.getsignal(signal.SIGTERM)  # installed by Lightning for fit, restored after it
        if callable(lightning_handler) and threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                signal.signal(signum, functools.partial(self._stop_after_this_batch, lightning_handler))

    def _stop_after_this_batch(self, lightning_handler: Callable, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl+C aborts at once
        if self.received is None:
            again = " (Ctrl+C again aborts without saving)" if signum == signal.SIGINT else ""
            os.write(2, f"\n{signal.Signals(signum).name} received: saving a checkpoint after this batch{again} ...\n"
                     .encode())
        self.received = signal.Signals(signum)
        lightning_handler(signum, frame)  # sets trainer.received_sigterm; the loops stop at the batch boundary

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException):
            return
        signum = self.received or signal.SIGTERM
        exception.code = 128 + signum
        if not (self._training and trainer.state.fn == TrainerFn.FITTING):
            return
        path = self._save(trainer)
        if trainer.is_global_zero:
            path = os.path.abspath(path) if is_local_path(path) else path
            config = Path(path).parent / "config.yaml"
            arguments = f"--config {config}" if config.is_file() else "<the same arguments>"
            print(
                f"\nStopped by {signum.name} at epoch {trainer.current_epoch}, global step {trainer.global_step}. "
                f"Saved a resumable checkpoint (mid-epoch position included): {path}\n"
                f"Resume with: module14 fit {arguments} --ckpt_path {path}",
                file=sys.stderr, flush=True,
            )

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._training = False

    @staticmethod
    def _save(trainer: L.Trainer) -> str:
        callbacks = trainer.checkpoint_callbacks
        for callback in callbacks:
            if isinstance(callback, RunCheckpoint) and callback.save_last:
                return callback.save_latest(trainer)
        folder = getattr(callbacks[0], "dirpath", None) if callbacks else None
        path = str(Path(folder or trainer.default_root_dir) / "interrupted.ckpt")
        trainer.save_checkpoint(path)
        return path
