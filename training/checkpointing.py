"""Checkpoints that survive: atomic writes, weights-only loads, a last.ckpt that is really the last (written on a
signal by ``training.stopping``).

- ``atomic_file``: write a file under a temporary name in its destination folder and rename it into place, so a kill
  or a full disk never leaves a truncated file under its final name.
- ``SafeCheckpointIO``: the trainer's checkpoint IO (the CLI plugs it in): atomic writes with a clear error on a full
  disk, and ``weights_only=True`` loads (a checkpoint never runs pickled code).
- ``RunCheckpoint``: Lightning's ``ModelCheckpoint`` whose ``last.ckpt`` always holds the latest state.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from fsspec.utils import get_protocol
from lightning.pytorch.trainer.states import TrainerFn

from compat import LastCheckpointHooks


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds it is renamed onto ``path`` (``os.replace``).

    The temporary file lives in the destination folder, so the rename never crosses filesystems and is atomic; on any
    failure (an exception, Ctrl+C) it is removed and ``path`` keeps its previous content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # created by the writer (default mode); its name says which process writes it (see remove_interrupted_writes)
    temporary = path.with_name(f".{path.name}.{os.getpid()}@{socket.gethostname()}.{secrets.token_hex(4)}.tmp")
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


# A temporary file of atomic_file: .<name>.<pid>@<host>.<8 hex>.tmp (before 2026-12: .<name>.<8 hex>.tmp).
_TEMPORARY = re.compile(r"^\.(?P<name>.+?)(\.(?P<pid>\d+)@(?P<host>.+))?\.[0-9a-f]{8}\.tmp$")
STALE_AFTER_S = 3600  # no write takes an hour: a temporary file this old is left over whoever wrote it


def remove_interrupted_writes(folder: str | Path) -> list[str]:
    """Delete what a killed write left in ``folder`` (SIGKILL, a power cut: ``atomic_file`` never got to clean up);
    returns the names removed.

    A temporary file is left over when the process that wrote it, on this host, is gone, or (another host's, or an
    older module14's) when it is over an hour old. A write in progress elsewhere is never touched, and nothing but
    ``atomic_file``'s own temporary names is: ``--ckpt_path last`` and resuming never read them anyway.
    """
    removed = []
    for path in Path(folder).glob(".*.tmp"):
        match = _TEMPORARY.match(path.name)
        if match is None:
            continue
        try:
            if match["pid"] and match["host"] == socket.gethostname():
                stale = not _process_exists(int(match["pid"]))
            else:
                stale = time.time() - path.stat().st_mtime > STALE_AFTER_S
            if stale:
                path.unlink()
                removed.append(path.name)
        except OSError:  # gone meanwhile, or not ours to delete
            continue
    return removed


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


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
        except (OSError, RuntimeError) as err:
            # torch's zip writer reports a failed write (a full disk) as RuntimeError("... file write failed")
            if isinstance(err, RuntimeError) and "write failed" not in str(err) and "PytorchStreamWriter" not in str(err):
                raise
            why = err.strerror if isinstance(err, OSError) and err.strerror else str(err).strip().splitlines()[-1]
            raise CheckpointWriteError(
                f"cannot write checkpoint '{path}': {why} ({_free_space(path.parent)} free in '{path.parent}'). "
                f"Nothing was written under that name and earlier checkpoints are untouched. Free some space (or "
                f"point the checkpoint callback's dirpath elsewhere) and resume from the run's last.ckpt."
            ) from err

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        return super().load_checkpoint(path, map_location=map_location, weights_only=True)


class RunCheckpoint(LastCheckpointHooks):
    """Lightning's ``ModelCheckpoint`` (top-k as configured), except that ``last.ckpt`` always holds the latest state.

    Lightning 2.6 rewrites ``last.ckpt`` only in a step where it writes a top-k checkpoint (and at the end of training
    only if it never wrote one), so after an epoch that does not improve the monitored metric ``last.ckpt`` still holds
    an earlier epoch, and resuming from it silently rewinds training. Here it is also rewritten after every validation
    and training epoch of ``fit``, at the end of training and on a signal (``training.stopping.SaveOnSignal``), whenever it is
    older than the current step. Leftovers of a killed write in its folder are removed when a fit starts. All experiment configs use it; ``save_last`` must be ``true`` for ``last.ckpt`` to be written.
    """

    _last_step: int | None = None  # the global step last.ckpt holds, once written by this run

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.save_last == "link":
            raise ValueError(
                "RunCheckpoint(save_last='link') is not supported: a link points at a top-k checkpoint, which may be "
                "older than the latest state. Use save_last: true."
            )
        super().setup(trainer, pl_module, stage)
        if stage == "fit" and trainer.is_global_zero and self.dirpath and is_local_path(self.dirpath):
            removed = remove_interrupted_writes(self.dirpath)
            if removed:
                print(f"module14: removed {len(removed)} file(s) an interrupted checkpoint write left in "
                      f"{Path(self.dirpath).resolve()}: {', '.join(removed)}", file=sys.stderr)

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
