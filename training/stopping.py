"""How a run stops: on a signal, after the batch in flight, with a resumable checkpoint; on SLURM's requeue signal,
with a checkpoint and one requeue request; on a non-finite loss, before anything broken is saved
(``StopOnNonFiniteLoss``).

A scheduler signals every process of a job, not only the trainer: SLURM (time limit, ``scancel``, preemption, and
``--signal=SIGUSR1@90`` without ``B:``), ``timeout``, most container stops, and a terminal (Ctrl-C is SIGINT to the
foreground group; a closed terminal or SSH session is SIGHUP). module14 makes such a group signal act exactly like a
signal to the trainer alone:

- ``exit_on_signals`` (the console script, first thing): every process module14 forks (DataLoader workers) blocks
  the job's signals, so the trainer alone decides, and the workers it still needs keep serving batches. Until a
  trainer stage runs, SIGINT / SIGTERM / SIGHUP exit at once with 128 + the signal (nothing is saved yet); once a stop
  is under way, further signals are noted and ignored, except a second Ctrl-C, which aborts.
- ``SaveOnSignal`` (every run; the CLI adds it): during ``fit``, ``validate``, ``test`` and ``predict`` a signal is
  only noted. After the batch in flight every rank agrees to stop (one collective, so a signal that reached one rank
  stops them all at the same step). ``fit`` then writes ``last.ckpt`` (mid-epoch position and RNG states included;
  a validation that was already due runs to its end first), prints the resume command and exits with 128 + the
  signal; ``validate`` / ``test`` / ``predict`` stop before their next batch (every file already written is complete)
  and say so in one line.
- SLURM's requeue signal (``SLURMEnvironment``'s ``requeue_signal``, SIGUSR1, when auto-requeue is on) during ``fit``:
  the same checkpoint, then rank 0 alone runs ``scontrol requeue <job>`` once, and the run stops; the requeued job,
  started with the same command line, resumes from the newest checkpoint of this job (``training.runs``). Lightning's
  own handler, which saves ``hpc_ckpt_<n>.ckpt`` inside the signal handler in every process that receives it, DataLoader
  workers included, is replaced.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import Tensor

from compat import requeue_signal, set_stop_after_this_batch
from training.checkpointing import RunCheckpoint, is_local_path
from training.runs import module14_command, slurm_job_id

# What stops a run: Ctrl-C, a scheduler's or `kill`'s SIGTERM, a closed terminal.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# What a job's processes may receive from its scheduler (SLURM's --signal chooses among the user signals).
JOB_SIGNALS = (*STOP_SIGNALS, signal.SIGUSR1, signal.SIGUSR2)

received: list[signal.Signals] = []  # the signals this process was stopped by, first first


def exit_status() -> int | None:
    """128 + the first signal that stopped this process, or None when none did. From then on the job's other stop
    signals are ignored, so one arriving while the process shuts down (W&B finishing its run, or after Python has
    dropped its handlers) cannot kill it halfway; Ctrl-C still can."""
    if not received:
        return None
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
            signal.signal(signum, signal.SIG_IGN)
    return 128 + received[0]


def block_job_signals() -> None:
    """Leave the job's signals to the trainer, in a forked child (a DataLoader worker): they stay blocked there, so no
    handler the child installs later runs on them (torch's DataLoader workers install one for SIGTERM that kills
    the worker unless the signal came from their parent). The child still ends when its parent shuts it down."""
    signal.pthread_sigmask(signal.SIG_BLOCK, JOB_SIGNALS)


def _exit_now(signum: int, frame: Any) -> None:
    """Outside a trainer stage: exit with 128 + signum, unless a stop is already under way (then only a second
    Ctrl-C aborts)."""
    stopping = bool(received)
    received.append(signal.Signals(signum))
    if not stopping:
        raise SIGTERMException(128 + signum)
    if signum == signal.SIGINT and received.count(signal.SIGINT) > 1:
        raise KeyboardInterrupt


_forks_ignore_signals = False


def exit_on_signals() -> None:
    """The console script's signal handling, before anything else runs (see the module's docstring)."""
    global _forks_ignore_signals
    if threading.current_thread() is not threading.main_thread():
        return
    received.clear()
    for signum in STOP_SIGNALS:
        signal.signal(signum, _exit_now)
    if not _forks_ignore_signals:  # a process registers it once; it runs in every os.fork() child
        os.register_at_fork(after_in_child=block_job_signals)
        _forks_ignore_signals = True


class SaveOnSignal(Callback):
    """A signal during a trainer stage stops it after the batch in flight, on every rank at the same step; ``fit``
    saves a resumable ``last.ckpt`` (``interrupted.ckpt`` without a ``RunCheckpoint``) and, on SLURM's requeue
    signal, requeues the job once. See the module's docstring. The CLI adds this callback to every run."""

    def __init__(self) -> None:
        super().__init__()
        self.signum: signal.Signals | None = None  # the first signal of this stage
        self.requeue = False  # the signal was SLURM's requeue signal (during fit)
        self._agreed = False  # every rank agreed to stop
        self._batches = 0

    # --- listening ----------------------------------------------------------------------------------------------
    def _listen(self, trainer: L.Trainer) -> None:
        """Replace the handlers Lightning registered for this stage (restored by Lightning when the stage ends)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._note)
        requeue = requeue_signal(trainer)
        if requeue is not None:
            fitting = trainer.state.fn == TrainerFn.FITTING
            signal.signal(requeue, self._note_requeue if fitting else self._note)

    def _note(self, signum: int, frame: Any, what: str = "stopping after this batch") -> None:
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: abort without saving
        received.append(signal.Signals(signum))
        if self.signum is None:
            self.signum = signal.Signals(signum)
            again = " (Ctrl-C again aborts without saving)" if signum == signal.SIGINT else ""
            os.write(2, f"\nmodule14: {self.signum.name} received: {what}{again}\n".encode())

    def _note_requeue(self, signum: int, frame: Any) -> None:
        self.requeue = self.requeue or self.signum is None
        self._note(signum, frame, "SLURM's requeue signal: saving a checkpoint after this batch, then requeueing")

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.signum, self.requeue, self._agreed, self._batches = None, False, False, 0

    def on_sanity_check_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._listen(trainer)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._listen(trainer)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn != TrainerFn.FITTING:
            self._listen(trainer)
        elif self._agreed:  # a validation already due when fit agreed to stop runs to its end; then fit stops
            set_stop_after_this_batch(trainer, False)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._listen(trainer)

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._listen(trainer)

    # --- agreeing, after each batch -------------------------------------------------------------------------------
    def _every_rank_agrees(self, trainer: L.Trainer) -> bool:
        """Whether any rank received a signal; one collective under DDP, so all ranks stop at the same batch."""
        self._agreed = self._agreed or trainer.strategy.reduce_boolean_decision(self.signum is not None, all=False)
        return self._agreed

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self._every_rank_agrees(trainer):
            self.requeue = trainer.strategy.reduce_boolean_decision(self.requeue, all=False)
            set_stop_after_this_batch(trainer, True)  # Lightning stops when this batch's bookkeeping is done

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING and self._agreed:
            set_stop_after_this_batch(trainer, True)

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self._batches += 1
        if trainer.state.fn != TrainerFn.FITTING and self._every_rank_agrees(trainer):
            set_stop_after_this_batch(trainer, True)  # Lightning's evaluation loop stops after this batch

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self._batches += 1
        if self._every_rank_agrees(trainer):
            set_stop_after_this_batch(trainer, True)

    def on_predict_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        # Lightning's predict loop never stops on a signal: stop here, before the next batch, once every writer has
        # finished the last one.
        if self._every_rank_agrees(trainer):
            raise SIGTERMException(128 + (self.signum or signal.SIGTERM))

    def on_predict_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self._batches += 1

    # --- stopping -------------------------------------------------------------------------------------------------
    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or not self._agreed:
            return
        exception.code = 128 + (self.signum or signal.SIGTERM)
        name = (self.signum or signal.SIGTERM).name
        if trainer.state.fn != TrainerFn.FITTING:
            if trainer.is_global_zero:
                what = "no metrics were reported" if trainer.state.fn != TrainerFn.PREDICTING else \
                    "every file it wrote is complete"
                print(f"module14: {trainer.state.fn.value} stopped by {name} after {self._batches} batches; {what}",
                      file=sys.stderr, flush=True)
            return
        path = self._save(trainer)
        if not trainer.is_global_zero:
            return
        path = os.path.abspath(path) if is_local_path(path) else path
        config = Path(path).parent / "config.yaml"
        arguments = f"--config {shlex.quote(str(config))}" if config.is_file() else "<the same arguments>"
        print(
            f"\nmodule14: stopped by {name} at epoch {trainer.current_epoch}, global step {trainer.global_step}. "
            f"Saved a resumable checkpoint (mid-epoch position included): {path}",
            file=sys.stderr, flush=True,
        )
        if self.requeue:
            print(f"module14: {requeue_slurm_job()}", file=sys.stderr, flush=True)
        else:
            print(f"Resume with: {module14_command()} fit {arguments} --ckpt_path {shlex.quote(path)}", file=sys.stderr,
                  flush=True)

    @staticmethod
    def _save(trainer: L.Trainer) -> str:
        """Write the latest state as the run's ``last.ckpt`` (every rank takes part); returns its path."""
        callbacks = trainer.checkpoint_callbacks
        for callback in callbacks:
            if isinstance(callback, RunCheckpoint) and callback.save_last:
                return callback.save_latest(trainer)
        folder = getattr(callbacks[0], "dirpath", None) if callbacks else None
        path = str(Path(folder or trainer.default_root_dir) / "interrupted.ckpt")
        trainer.save_checkpoint(path)
        return path


def requeue_slurm_job() -> str:
    """Ask SLURM to requeue this job (``scontrol requeue <job id>``); returns what happened, in one line."""
    job = slurm_job_id()
    if not job:
        return "SLURM's requeue signal arrived, but SLURM_JOB_ID is not set: nothing was requeued"
    try:
        done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"could not requeue SLURM job {job} ({err}); resubmit it, it resumes from the checkpoint above"
    if done.returncode != 0:
        return (f"`scontrol requeue {job}` failed ({done.stderr.strip() or f'exit {done.returncode}'}); resubmit the "
                f"job, it resumes from the checkpoint above")
    return f"requeued SLURM job {job}: started again with the same command, it resumes from the checkpoint above"


# --- a non-finite loss ------------------------------------------------------------------------------------------------
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
