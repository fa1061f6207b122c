"""What a scheduler or a terminal does to a job, through the console script and the shipped launchers, in subprocesses.

A signal sent to every process of the job (DataLoader workers included, as SLURM, ``timeout`` and a terminal send it)
stops it like a signal to the trainer alone; SLURM's requeue signal requeues the job once and the requeued job resumes
exactly; DDP ranks stop at one step; two torchrun "nodes" on one machine train one run.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import CONFIGS, CSV_LOGGER, ROOT, TINY_DDPM, TINY_VIT, module14, predict_folder, record_rank_state

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent  # the environment module14 is installed in: on PATH, as after activating it
TINY_FIT = ["--config", str(CONFIGS / "vit_mnist.yaml"), *TINY_VIT, "--trainer.precision=32-true",
            "--data.batch_size=16", "--trainer.enable_model_summary=false"]
NO_PID = 4_194_305  # above Linux's largest pid: no process has it


def progress(folder: Path, delay: float) -> list[str]:
    """Flags adding ``rank_state.Progress``: each rank reports its step / batches to files in ``folder``."""
    return ["--trainer.callbacks+=rank_state.Progress", f"--trainer.callbacks.init_args.folder={folder}",
            f"--trainer.callbacks.init_args.delay={delay}"]


def user_env(**extra: str) -> dict[str, str]:
    """The environment of a user who activated module14's environment; ``tests/`` importable for ``rank_state``."""
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE" and not k.startswith("SLURM_")}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", PYTHONPATH=str(ROOT / "tests"), OMP_NUM_THREADS="1")
    return {**env, **extra}


class Job:
    """A command in a session of its own, as a scheduler starts a job: ``signal`` reaches every process of it."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str], log: str = "job.log") -> None:
        self.log = cwd / log
        with open(self.log, "w") as out:
            self.process = subprocess.Popen(args, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True)

    def signal(self, signum: int, group: int | None = None) -> None:
        os.killpg(group or self.process.pid, signum)

    def wait(self, timeout: float = 300) -> int:
        return self.process.wait(timeout=timeout)

    def output(self) -> str:
        return self.log.read_text()


def reported(folder: Path, what: str, rank: int = 0) -> int | None:
    path = folder / f"{what}_rank{rank}"
    return int(path.read_text()) if path.is_file() else None


def wait_until(job: Job, folder: Path, what: str, at_least: int, timeout: float = 240) -> int:
    """Wait until the run reports ``what`` >= ``at_least``; returns the value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = reported(folder, what)
        if value is not None and value >= at_least:
            return value
        assert job.process.poll() is None, f"the run ended early:\n{job.output()[-3000:]}"
        time.sleep(0.05)
    raise AssertionError(f"no {what} >= {at_least} after {timeout} s:\n{job.output()[-3000:]}")


def step_of(path: Path) -> int:
    return torch.load(path, weights_only=True, map_location="cpu")["global_step"]


def assert_clean(output: str) -> None:
    assert "Traceback" not in output and "DataLoader worker" not in output, output[-3000:]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda s: s.name)
def test_a_signal_to_every_process_of_the_job_saves_once_and_the_printed_command_resumes(tmp_path, signum):
    """SIGTERM (a scheduler), SIGINT (Ctrl-C) and SIGHUP (a closed terminal) to the whole process group, two
    DataLoader workers included: the batch in flight finishes, last.ckpt holds that step, exit 128 + signal."""
    job = Job([str(BIN / "module14"), "fit", *TINY_FIT, "--data.num_workers=2", "--trainer.limit_val_batches=0",
               "--trainer.max_steps=3000", *progress(tmp_path / "p", 0.02)], tmp_path, user_env())
    at_signal = wait_until(job, tmp_path / "p", "step", 3)
    job.signal(signum)
    assert job.wait() == 128 + signum, job.output()[-3000:]
    output = job.output()
    assert_clean(output)
    (last,) = tmp_path.glob("runs/**/checkpoints/last.ckpt")
    saved = step_of(last)
    print(f"{signum.name}: signal at step {at_signal}, checkpoint at step {saved}")
    assert at_signal <= saved <= at_signal + 2  # the batch in flight (and at most the one just starting) finished
    assert reported(tmp_path / "p", "stopped") == saved
    assert f"stopped by {signum.name} at epoch 0, global step {saved}" in output
    assert not list(tmp_path.glob("runs/**/.*.tmp"))
    if signum != signal.SIGHUP:
        return
    # A write that SIGKILL cut short left a temporary file; the printed command, run as typed in a new shell,
    # removes it and continues from the saved step, in the same run folder (the W&B run it records).
    leftover = last.parent / f".last.ckpt.{NO_PID}@{socket.gethostname()}.0123abcd.tmp"
    leftover.write_bytes(b"half a checkpoint")
    (command,) = re.findall(r"^Resume with: (module14 fit .*)$", output, flags=re.MULTILINE)
    resumed = subprocess.run(["bash", "-c", f"{command} --trainer.max_steps={saved + 2}"], cwd=tmp_path,
                             env=user_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"removed 1 file(s) an interrupted checkpoint write left in {last.parent}" in resumed.stderr
    assert not leftover.exists()
    assert list(tmp_path.glob("runs/**/checkpoints/last.ckpt")) == [last] and step_of(last) == saved + 2


def test_test_and_predict_stop_within_one_batch_and_leave_only_whole_files(tmp_path):
    """Lightning would finish every remaining predict batch before honouring SIGTERM (minutes for a DDPM)."""
    run = ["--config", str(CONFIGS / "ddpm_mnist.yaml"), *TINY_DDPM, *CSV_LOGGER, "--trainer.precision=32-true",
           "--data.batch_size=8", "--data.num_workers=2", "--trainer.enable_model_summary=false"]
    fit = module14("fit", *run, "--trainer.max_steps=1", "--trainer.limit_val_batches=0", cwd=tmp_path,
                   env=user_env())
    assert fit.returncode == 0, fit.stderr[-3000:]
    (checkpoint,) = tmp_path.glob("runs/**/last.ckpt")
    for stage, extra in (("test", ["--trainer.limit_test_batches=500"]), ("predict", ["--data.predict_size=4000"])):
        folder = tmp_path / stage
        job = Job([str(BIN / "module14"), stage, *run, *extra, f"--ckpt_path={checkpoint}", *progress(folder, 0.2)],
                  tmp_path, user_env(), log=f"{stage}.log")
        at_signal = wait_until(job, folder, "batches", 2)
        job.signal(signal.SIGTERM)
        assert job.wait(timeout=60) == 143, job.output()[-3000:]
        done = reported(folder, "batches")
        print(f"{stage}: SIGTERM after batch {at_signal}, stopped after batch {done}")
        assert at_signal <= done <= at_signal + 1
        output = job.output()
        assert_clean(output)
        assert f"module14: {stage} stopped by SIGTERM after {done} batches" in output
    assert "test/loss" not in (tmp_path / "test.log").read_text()  # no results of a partial test are reported
    images = predict_folder(tmp_path / "outputs" / "ddpm_mnist")
    assert sorted(p.name for p in images.iterdir()) == [f"{i:06d}.png" for i in range(8 * done)]  # whole batches


def test_slurm_requeue_through_the_sbatch_script_resumes_to_the_uninterrupted_weights(tmp_path):
    """``scripts/slurm_ddp.sbatch`` on a CPU node, under a fake ``srun`` (the job step is a session of its own, as
    slurmstepd runs it) and a fake ``scontrol``: SIGUSR1 then SIGTERM to every process of the step, as SLURM sends
    them at the time limit. One requeue request and one checkpoint, written by the trainer; the same script run again
    as the requeued job resumes from it, into the same run folder and W&B run, and ends with the weights of a run
    that was never stopped."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "scontrol").write_text(f'#!/bin/sh\necho "$*" >> {tmp_path}/scontrol.log\n')
    (fake / "srun").write_text(f'#!/bin/sh\necho $$ > {tmp_path}/step.pid\nexec setsid "$@"\n')
    for tool in fake.iterdir():
        tool.chmod(0o755)
    slurm = {"SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1", "SLURM_JOB_NUM_NODES": "1", "SLURM_PROCID": "0",
             "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NODELIST": "localhost", "SLURM_JOB_NAME": "module14",
             "SLURM_CPUS_PER_TASK": "2", "CONFIG": str(CONFIGS / "vit_mnist.yaml")}
    deterministic = [*TINY_VIT, "--trainer.precision=32-true", "--data.batch_size=16", "--data.augment=none",
                     "--trainer.deterministic=true", "--trainer.limit_val_batches=0", "--trainer.max_steps=40",
                     "--trainer.enable_model_summary=false"]

    def sbatch(job: str, cwd: Path, log: str, **extra: str) -> Job:
        cwd.mkdir(exist_ok=True)
        env = user_env(**slurm, SLURM_JOB_ID=job, **extra)
        env["PATH"] = f"{fake}{os.pathsep}{env['PATH']}"
        return Job(["bash", str(ROOT / "scripts/slurm_ddp.sbatch"), *deterministic, *progress(cwd / log, 0.05)], cwd,
                   env, log=f"{log}.log")

    uninterrupted = sbatch("4241", tmp_path / "once", "once")
    assert uninterrupted.wait() == 0, uninterrupted.output()[-3000:]

    stopped = sbatch("4242", tmp_path / "job", "stopped")
    at_signal = wait_until(stopped, tmp_path / "job/stopped", "step", 5)
    step = int((tmp_path / "step.pid").read_text())
    stopped.signal(signal.SIGUSR1, group=step)
    time.sleep(0.3)
    stopped.signal(signal.SIGTERM, group=step)  # slurmstepd's, after the requeue
    assert stopped.wait() == 128 + signal.SIGUSR1, stopped.output()[-3000:]
    assert_clean(stopped.output())
    assert (tmp_path / "scontrol.log").read_text().splitlines() == ["requeue 4242"]  # rank 0 alone, once
    (last,) = (tmp_path / "job").glob("runs/module14/*/checkpoints/*.ckpt")  # one checkpoint, no hpc_ckpt_*
    assert last.name == "last.ckpt" and not list((tmp_path / "job").glob("**/hpc_ckpt_*"))
    saved = step_of(last)
    print(f"SLURM requeue: signal at step {at_signal}, checkpoint at step {saved}")
    assert at_signal <= saved <= at_signal + 2 and reported(tmp_path / "job/stopped", "stopped") == saved

    requeued = sbatch("4242", tmp_path / "job", "requeued", SLURM_RESTART_COUNT="1")
    assert requeued.wait() == 0, requeued.output()[-3000:]
    assert f"SLURM job 4242 was requeued: resuming from {last.relative_to(tmp_path / 'job')} (global step {saved})" \
        in requeued.output()
    assert list((tmp_path / "job").glob("runs/module14/*/checkpoints/last.ckpt")) == [last]  # same run folder
    assert step_of(last) == 40
    (once,) = (tmp_path / "once").glob("runs/module14/*/checkpoints/last.ckpt")
    expected, actual = (torch.load(p, weights_only=True)["state_dict"] for p in (once, last))
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=0, msg=f"{key} differs after the requeue")


DDP = ["--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp"]


@pytest.mark.parametrize("to", ["the process group", "rank 0 alone"])
def test_ddp_ranks_stop_at_one_step_and_resume(tmp_path, to):
    """A group SIGTERM reaches both ranks; `kill <pid>` only rank 0. Either way every rank stops after the same batch
    and takes part in one checkpoint, which resumes."""
    run = [*TINY_FIT, *CSV_LOGGER, *DDP, "--data.num_workers=0", "--trainer.limit_val_batches=0"]
    job = Job([str(BIN / "module14"), "fit", *run, "--trainer.max_steps=3000", *progress(tmp_path / "p", 0.05)],
              tmp_path, user_env())
    wait_until(job, tmp_path / "p", "step", 3)
    if to == "rank 0 alone":
        os.kill(job.process.pid, signal.SIGTERM)
    else:
        job.signal(signal.SIGTERM)
    assert job.wait() == 143, job.output()[-3000:]
    assert_clean(job.output())
    (last,) = tmp_path.glob("runs/**/checkpoints/last.ckpt")
    checkpoint = torch.load(last, weights_only=True)
    assert reported(tmp_path / "p", "stopped", 0) == reported(tmp_path / "p", "stopped", 1) == checkpoint["global_step"]
    assert len(checkpoint["callbacks"]["RNGStateCheckpoint"]["rng_states"]) == 2  # both ranks' streams
    if to == "rank 0 alone":
        return
    resumed = module14("fit", *run, f"--trainer.max_steps={checkpoint['global_step'] + 2}", f"--ckpt_path={last}",
                       cwd=tmp_path, env=user_env())
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    (after,) = (p for p in tmp_path.glob("runs/**/checkpoints/last.ckpt") if p != last)
    assert step_of(after) == checkpoint["global_step"] + 2


def test_two_nodes_through_torchrun_ddp_sh_train_one_run(tmp_path):
    """``scripts/torchrun_ddp.sh`` on two CPU "nodes" of one machine (node ranks 0 and 1, one process each, gloo):
    both exit 0, one run folder with one last.ckpt, and validation metrics reduced over both nodes."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    args = [str(CONFIGS / "vit_mnist.yaml"), *TINY_VIT, *CSV_LOGGER, "--trainer.precision=32-true",
            "--data.num_workers=0", "--data.batch_size=32", "--data.val_size=256", "--trainer.limit_train_batches=4",
            "--trainer.max_epochs=1", "--trainer.enable_model_summary=false", *record_rank_state(tmp_path / "ranks")]
    nodes = [Job(["bash", str(ROOT / "scripts/torchrun_ddp.sh"), *args], tmp_path,
                 user_env(NNODES="2", NODE_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=port),
                 log=f"node{rank}.log") for rank in (0, 1)]
    for node in nodes:
        assert node.wait() == 0, node.output()[-3000:]
    assert [p.relative_to(tmp_path).as_posix() for p in tmp_path.glob("runs/**/last.ckpt")] == \
        ["runs/lightning_logs/version_0/checkpoints/last.ckpt"]
    metrics = [torch.load(tmp_path / "ranks" / f"fit_rank{r}.pt", weights_only=True)["metrics"] for r in (0, 1)]
    assert metrics[0]["val/loss"] == metrics[1]["val/loss"]  # reduced over both nodes, not each node's own
