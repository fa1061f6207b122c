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

import hashlib
import json
import os
import re
import secrets
import shlex
import shutil
import string
import sys
from collections.abc import Iterator
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


# What does not make another experiment: how the data are loaded and where from, and the settings chosen at predict.
NOT_THE_EXPERIMENT = {"data": {"data_dir", "download", "verify_integrity", "batch_size", "num_workers", "pin_memory",
                               "persistent_workers", "predict_size"},
                      # sizes the datamodule links into the model (config.yaml leaves them out: the data decide them)
                      "model": {"image_shape", "num_classes", "value_range", "normalization_mean_std"}}
SEARCH_DEPTH = 5  # folders below the runs' root where a run's config.yaml may lie (W&B: <project>/<id>/checkpoints)


def experiment_identity(model: dict, data: dict, inference_args: frozenset[str] = frozenset()) -> str:
    """The identity of an experiment: a hash of its resolved model and data settings (class and arguments), less
    those that do not change what is trained (``NOT_THE_EXPERIMENT``, the model's inference arguments). Two runs of
    one config with the same settings share it, whatever their budget or logger; a changed learning rate, another
    architecture or data split does not."""
    def section(part: dict, leave_out: set[str]) -> dict:
        init = {k: v for k, v in (part.get("init_args") or {}).items() if k not in leave_out}
        return {"class": str(part.get("class_path", "")).rsplit(".", 1)[-1], "init_args": init}

    canonical = {"model": section(model, NOT_THE_EXPERIMENT["model"] | set(inference_args)),
                 "data": section(data, NOT_THE_EXPERIMENT["data"])}
    text = json.dumps(canonical, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _run_records(root: Path) -> Iterator[Path]:
    """Every ``config.yaml`` beside a ``last*.ckpt`` within ``SEARCH_DEPTH`` folders below ``root``."""
    for depth in range(SEARCH_DEPTH + 1):
        for config in root.glob("/".join(["*"] * depth + ["config.yaml"])):
            if any(config.parent.glob("last*.ckpt")):
                yield config


def run_checkpoint(which: str, search_root: str | Path, identity: str, inference_args: frozenset[str] = frozenset()) -> str:
    """The checkpoint ``--ckpt_path last`` or ``best`` means in a new process: from the newest run of this experiment.

    A run is a checkpoint folder under ``search_root`` (the logger's ``save_dir``) with the ``config.yaml`` module14
    saves beside its ``last.ckpt`` (or ``last-v1.ckpt``, ... when two fits resumed into one folder); it is of this
    experiment when its settings have ``identity`` (``experiment_identity``). The newest is the one whose last
    checkpoint was written last; ``best`` is the best checkpoint that run's checkpoint callback recorded. A run record
    that cannot be read, or two runs written at the same moment, are refused with the candidates named.
    """
    root = Path(search_root).resolve()
    if root == Path(root.anchor) or root == Path.home():
        raise RunNotFoundError(f"--ckpt_path {which}: the runs' root is '{root}', which would search the whole "
                               f"{'filesystem' if root == Path(root.anchor) else 'home folder'}: give the logger a "
                               f"save_dir (the configs use runs/), or pass a checkpoint file.")
    matching, unreadable = [], []
    for config in _run_records(root):
        try:
            saved = yaml.safe_load(config.read_text())
            model, data = saved["model"], saved["data"]
        except (OSError, yaml.YAMLError, TypeError, KeyError) as err:
            unreadable.append(f"{config} ({type(err).__name__})")
            continue
        if experiment_identity(model, data, inference_args) == identity:
            matching.extend(config.parent.glob("last*.ckpt"))
    if unreadable:
        raise RunNotFoundError(
            f"--ckpt_path {which}: the record of {len(unreadable)} run(s) under '{root}' cannot be read, so which run "
            f"is the newest of this experiment is unknown: {'; '.join(unreadable[:5])}. Repair or remove them, or pass "
            f"a checkpoint file.")
    if not matching:
        raise RunNotFoundError(
            f"--ckpt_path {which}: no run of this experiment (these model and data settings) under '{root}' has a "
            f"last.ckpt beside its config.yaml. Train one with `module14 fit` and this config, or pass a checkpoint "
            f"file.")
    newest = sorted(matching, key=lambda p: p.stat().st_mtime, reverse=True)
    if len(newest) > 1 and newest[0].parent != newest[1].parent and \
            abs(newest[0].stat().st_mtime - newest[1].stat().st_mtime) < 1:
        raise RunNotFoundError(f"--ckpt_path {which}: two runs of this experiment were written at the same moment "
                               f"({newest[0]}, {newest[1]}): pass the checkpoint file you mean.")
    last = newest[0]
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


def checked_run_id(run_id: Any) -> str | None:
    """A W&B run id read from a checkpoint, if it is one W&B makes: it names the run's folder, so anything else (a
    path, ``..``) is refused."""
    if run_id is None:
        return None
    if not isinstance(run_id, str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", run_id):
        raise ValueError(f"the checkpoint records the W&B run id {run_id!r}, which is not a run id (letters, digits, - "
                         f"and _): it would name the run's folder. Resume from a checkpoint module14 wrote.")
    return run_id


def new_run_id() -> str:
    """A fresh W&B-style run id: 8 characters of [a-z0-9]."""
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


def join_wandb_run(loggers: list[Logger], recorded: dict | None, job_type: str) -> None:
    """Sets up the W&B loggers' runs before they start (``wandb.init`` runs lazily, on first use).

    ``fit`` of a checkpoint continues the run it records (same id, so also the same checkpoint folder
    ``<save_dir>/<project>/<id>/checkpoints``); a new ``fit`` takes the id a W&B sweep agent gives its trial
    (``WANDB_RUN_ID``), else a fresh one, which is also its group. ``validate``, ``test`` and ``predict`` of a
    checkpoint start a new run in the training run's group; every run records its ``job_type`` (the subcommand).
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
            run_id = (checked_run_id((recorded or {}).get("id")) or init.get("id")
                      or checked_run_id(os.environ.get("WANDB_RUN_ID")) or new_run_id())
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
