"""Runs you can find and continue: ``--ckpt_path best|last`` in a new process, one W&B run per experiment, and the
summary ``fit`` prints at its end.

- ``run_checkpoint``: ``last`` / ``best`` resolved from the newest run of an experiment on disk.
- ``RunRecord``: stores the W&B run id and group (``checkpoint["wandb_run"]``) and the SLURM job id
  (``checkpoint["slurm_job"]``) in every checkpoint.
- ``requeued_checkpoint``: where a requeued SLURM job resumes.
- ``join_wandb_run``: before the W&B run starts, continues the recorded run (``fit --ckpt_path``) or, for
  ``validate`` / ``test`` / ``predict`` of a checkpoint, starts a run in the training run's group with its job type.
- ``run_summary``: where a finished ``fit`` left its run folder, checkpoints and W&B run.
"""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
import string
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import Logger, WandbLogger

from compat import set_wandb_run_id, wandb_init_kwargs, wandb_run_started

WANDB_RUN_KEY = "wandb_run"
SLURM_JOB_KEY = "slurm_job"


class RunNotFoundError(FileNotFoundError):
    """``--ckpt_path best|last`` found no run of this experiment to take the checkpoint from."""


def _same_experiment(config_file: Path, model_class: str, logger_name: str | None) -> bool:
    """Whether a run's saved ``config.yaml`` is of the same model class and logger name."""
    try:
        saved = yaml.safe_load(config_file.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return False
    saved_model = (saved.get("model") or {}).get("class_path", "")
    loggers = (saved.get("trainer") or {}).get("logger")
    first = (loggers[0] if isinstance(loggers, list) and loggers else loggers) or {}
    saved_name = (first.get("init_args") or {}).get("name") if isinstance(first, dict) else None
    same_class = saved_model.rsplit(".", 1)[-1] == model_class.rsplit(".", 1)[-1]
    return same_class and saved_name == logger_name


def run_checkpoint(which: str, search_root: str | Path, model_class: str, logger_name: str | None) -> str:
    """The checkpoint ``--ckpt_path last`` or ``best`` means in a new process: from the newest run of this experiment.

    A run is a checkpoint folder under ``search_root`` (the logger's ``save_dir``) holding ``last.ckpt`` and the
    ``config.yaml`` module14 saves beside it, with the same model class and logger name. The newest is the one whose
    ``last.ckpt`` was written last; ``best`` is the best checkpoint that run's checkpoint callback recorded.
    """
    root = Path(search_root)
    runs = [
        last for last in root.glob("**/last.ckpt")
        if _same_experiment(last.with_name("config.yaml"), model_class, logger_name)
    ]
    experiment = f"model {model_class.rsplit('.', 1)[-1]}, logger name {logger_name!r}"
    if not runs:
        raise RunNotFoundError(
            f"--ckpt_path {which}: no run of this experiment ({experiment}) under '{root.resolve()}' has a last.ckpt "
            f"beside its config.yaml. Train one with `module14 fit` and this config, or pass a checkpoint file."
        )
    last = max(runs, key=lambda p: p.stat().st_mtime)
    if which == "last":
        return str(last)
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    for state in (checkpoint.get("callbacks") or {}).values():
        best = state.get("best_model_path") if isinstance(state, dict) else None
        if best and (last.parent / Path(best).name).is_file():
            return str(last.parent / Path(best).name)
    step = checkpoint.get("global_step", "?")
    raise RunNotFoundError(
        f"--ckpt_path best: the newest run of this experiment stopped at step {step}, before its first validation, so "
        f"it has no best checkpoint yet; use --ckpt_path last (that run's {last})."
    )


class RunRecord(Callback):
    """Stores in every checkpoint the W&B run id and group, so a resumed ``fit`` continues that run and ``test`` /
    ``predict`` of the checkpoint join its group, and the SLURM job that wrote it, so the job's requeued copy finds it
    (``requeued_checkpoint``). The CLI adds this callback to every run."""

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        job = slurm_job_id()
        if job:
            checkpoint[SLURM_JOB_KEY] = job
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger) and logger.version:
                checkpoint[WANDB_RUN_KEY] = {"id": logger.version, "group": wandb_init_kwargs(logger).get("group")}
                return


def slurm_job_id() -> str | None:
    """This SLURM job's id as ``scontrol`` names it (``<array job>_<task>`` for an array task), or None outside SLURM."""
    array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array_job}_{task}" if array_job and task else os.environ.get("SLURM_JOB_ID")


def requeued_job() -> str | None:
    """The SLURM job id when this process is a requeued job's (``SLURM_RESTART_COUNT`` >= 1), else None."""
    restarts = os.environ.get("SLURM_RESTART_COUNT", "0")
    return slurm_job_id() if restarts.isdigit() and int(restarts) > 0 else None


def requeued_checkpoint(job: str, roots: list[str | Path]) -> tuple[str, int] | None:
    """The checkpoint a requeued SLURM job resumes from: of the checkpoints under ``roots`` that this job wrote
    (``last.ckpt`` of its run, or Lightning's ``hpc_ckpt_<n>.ckpt``), the one holding the most training steps, and
    that step count; None when the job wrote none. Only each file's small records are read (memory-mapped)."""
    found = []
    for root in dict.fromkeys(Path(r) for r in roots):
        for path in [*root.glob("**/last*.ckpt"), *root.glob("hpc_ckpt_*.ckpt")]:
            try:
                checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except Exception:  # a foreign or damaged file is not this job's checkpoint
                continue
            if isinstance(checkpoint, dict) and checkpoint.get(SLURM_JOB_KEY) == job:
                found.append((int(checkpoint.get("global_step", 0)), path.stat().st_mtime, str(path)))
    if not found:
        return None
    step, _, path = max(found)
    return path, step


def new_run_id() -> str:
    """A fresh W&B-style run id: 8 characters of [a-z0-9]."""
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


def join_wandb_run(loggers: list[Logger], recorded: dict | None, job_type: str) -> None:
    """Sets up the W&B loggers' runs before they start (``wandb.init`` runs lazily, on first use).

    ``fit`` of a checkpoint continues the run it records (same id, so also the same checkpoint folder
    ``<save_dir>/<project>/<id>/checkpoints``); a new ``fit`` gets a fresh id that is also its group. ``validate``,
    ``test`` and ``predict`` of a checkpoint start a new run in the training run's group; every run records its
    ``job_type`` (the subcommand).
    """
    for logger in loggers:
        if not isinstance(logger, WandbLogger) or wandb_run_started(logger):
            continue
        init = wandb_init_kwargs(logger)
        if init.get("anonymous") is None:
            init.pop("anonymous", None)  # Lightning passes None, which W&B warns "has no effect" about
        if init.get("dir"):
            Path(init["dir"]).mkdir(parents=True, exist_ok=True)  # else W&B warns "git root <dir> does not exist"
        if job_type == "fit":
            run_id = (recorded or {}).get("id") or init.get("id") or new_run_id()
            init.update(id=run_id, resume="allow", group=(recorded or {}).get("group") or init.get("group") or run_id)
            set_wandb_run_id(logger, run_id)
        elif recorded:
            init["group"] = recorded.get("group") or recorded.get("id")
        init["job_type"] = job_type


def module14_command() -> str:
    """How to call module14 from a new shell: ``module14`` when that name on ``PATH`` is this installation's console
    script, else the console script's absolute path (its environment is not activated), else ``python cli.py``."""
    script = Path(sys.argv[0]) if Path(sys.argv[0]).name == "module14" else Path(sys.executable).with_name("module14")
    if script.is_file():
        on_path = shutil.which("module14")
        return "module14" if on_path and Path(on_path).resolve() == script.resolve() else shlex.quote(str(script.resolve()))
    return f"{shlex.quote(sys.executable)} {shlex.quote(str(Path(__file__).resolve().parents[1] / 'cli.py'))}"


def run_summary(trainer: L.Trainer) -> str:
    """Where a finished ``fit`` left its files (run folder, best and last checkpoints, W&B run) and the commands that
    use them, one per line."""
    if trainer.fast_dev_run:
        return "module14: fast_dev_run: no checkpoints or logs were written"
    lines = []
    checkpoint = trainer.checkpoint_callback
    if isinstance(checkpoint, ModelCheckpoint) and checkpoint.dirpath:
        lines.append(f"run folder:      {Path(checkpoint.dirpath).parent.resolve()}")
        best = _resolved(checkpoint.best_model_path)
        if not best and checkpoint.monitor:
            best = (f"none yet: {checkpoint.monitor} is measured at validation, which this run did not reach (it "
                    f"stopped at step {trainer.global_step}); use the last checkpoint")
        lines.append(f"best checkpoint: {best or 'none written'}")
        lines.append(f"last checkpoint: {_resolved(checkpoint.last_model_path) or 'none written'}")
    else:
        lines.append("checkpoints:     none (no checkpoint callback)")
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and wandb_run_started(logger) and getattr(logger.experiment, "dir", None):
            folder = Path(logger.experiment.dir).parent.resolve()
            if folder.name.startswith("offline-"):
                lines.append(f"W&B run (offline): {folder}; upload it with: wandb sync {shlex.quote(str(folder))}")
            else:
                lines.append(f"W&B run:         {logger.experiment.url or folder}")
    use = _resolved(checkpoint.best_model_path) or _resolved(checkpoint.last_model_path) \
        if isinstance(checkpoint, ModelCheckpoint) else ""
    config = Path(use).parent / "config.yaml" if use else None
    if config is not None and config.is_file():
        command = f"{module14_command()} {{}} --config {shlex.quote(str(config))} --ckpt_path {shlex.quote(use)}"
        lines.append(f"test it:         {command.format('test')}")
        lines.append(f"predict with it: {command.format('predict')}")
    return "\n".join(f"module14: {line}" for line in lines)


def _resolved(path: str) -> str:
    return str(Path(path).resolve()) if path else ""
