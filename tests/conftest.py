"""Shared test setup: real data from ../shared/data (or $MODULE14_DATA_DIR), W&B offline, CLI runs in a temp dir."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
os.environ.setdefault("MODULE14_DATA_DIR", str(ROOT.parent / "shared" / "data"))
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
DATA_DIR = Path(os.environ["MODULE14_DATA_DIR"])


# --- a suite that Ctrl-C and SIGTERM stop ---------------------------------------------------------------------------
# In-process Trainers catch KeyboardInterrupt (and turn SIGTERM into a SystemExit), which pytest would count as one
# failed test before going on. Our handler remembers the signal, and the suite stops after the test it arrived in.
_STOP_SIGNALS: list[int] = []


def _stop(signum: int, frame) -> None:
    _STOP_SIGNALS.append(signum)
    raise KeyboardInterrupt


def pytest_sessionstart(session) -> None:
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _stop)


@pytest.fixture(autouse=True)
def _stop_suite_on_signal():
    yield
    from training import stopping  # inside a trainer stage, module14's handlers note the signal (training/stopping.py)

    stops = _STOP_SIGNALS + stopping.received
    if stops:
        pytest.exit(f"stopped by {signal.Signals(stops[0]).name}", returncode=128 + stops[0])
    for signum in (signal.SIGINT, signal.SIGTERM):  # Lightning leaves SIGINT ignored after it caught a Ctrl-C
        signal.signal(signum, _stop)


@pytest.fixture
def user_signal_handlers():
    """For a test that signals its own process: SIGINT/SIGTERM reach the code under test as they would a user's run
    (Python's and module14's handlers, not the suite's stop). The suite's handlers come back after the test, and the
    signals the test sent do not stop the suite."""
    from training import stopping

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    yield
    stopping.received.clear()


def module14(*args: str, cwd: Path, timeout: float = 300, env: dict | None = None):
    """Run the installed ``module14`` console script, as a user types it; returns the CompletedProcess."""
    script = Path(sys.executable).with_name("module14")
    if not script.exists():
        pytest.fail(f"console script not found at {script}: install the project first (pip install -e '.[dev]')")
    resolved = [str(ROOT / a) if a.startswith("configs/") else a for a in args]
    # Not the W&B service an in-process test may have started (its address is in WANDB_SERVICE): a user's own.
    clean = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    return subprocess.run([str(script), *resolved], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**clean, **(env or {})})


# --- memory layouts at the optimizer step ------------------------------------------------------------------------
def memory_order(t: torch.Tensor) -> list[int]:
    """The dimensions of size > 1, outermost in memory first (NCHW and channels_last differ; size-1 dims do not count)."""
    return sorted((d for d in range(t.dim()) if t.shape[d] > 1), key=lambda d: -t.stride(d))


class LayoutWatch(L.Callback):
    """At each optimizer step, the parameters whose gradient or Adam moments are laid out otherwise in memory. torch's
    fused CPU Adam reads all of them as flat arrays: a channels_last parameter with NCHW moments took a step up to 0.16
    away from torch's default Adam's in a check at lr 0.1 (torch 2.14; CUDA's fused Adam raises instead)."""

    def __init__(self) -> None:
        self.steps, self.mismatched = 0, []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.steps += 1
        state = getattr(optimizer, "optimizer", optimizer).state
        for group in optimizer.param_groups:
            for p in group["params"]:
                others = [p.grad] + [state.get(p, {}).get(k) for k in ("exp_avg", "exp_avg_sq")]
                if any(t is not None and memory_order(t) != memory_order(p) for t in others):
                    self.mismatched.append(tuple(p.shape))


# The shared CIFAR-10 and CelebA copies are real subsets whose md5 differ from torchvision's: tests opt in to them.
SUBSET_OPT_IN = "--data.init_args.verify_integrity=false"


def opt_in(config: str | Path) -> list[str]:
    """``[SUBSET_OPT_IN]`` for a CIFAR-10 or CelebA config (the shared copies are subsets), ``[]`` for MNIST."""
    return [SUBSET_OPT_IN] if any(name in Path(config).stem for name in ("cifar10", "celeba")) else []


def predict_folder(parent: Path) -> Path:
    """The folder the one ``predict`` run wrote its images into under ``parent`` (``ImageWriter`` makes one per run)."""
    (folder,) = [p for p in Path(parent).iterdir() if p.is_dir()]
    return folder


def experiment_configs() -> list[Path]:
    """Every experiment config (not base.yaml, which each of them extends, nor the trainer presets)."""
    return sorted(path for path in CONFIGS.glob("*.yaml") if path.name != "base.yaml")


@pytest.fixture
def run_cli(tmp_path, monkeypatch):
    """Run the real CLI in-process, inside a fresh working directory, so runs/ and outputs/ land in tmp_path.

    ``run_cli("fit", "--config", "configs/vit_mnist.yaml", "--trainer.fast_dev_run=true")`` returns the LightningCLI.
    Relative ``configs/...`` paths are resolved against the repository. Runs are fp32 unless the test passes
    ``--trainer.precision`` (``=null`` for the resolver).
    """
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["module14"])  # what the args stand for (not pytest's own arguments)

    def run(*args: str, run: bool = True):
        """``run=False`` instantiates without running (then args omit the subcommand)."""
        from cli import build_cli

        resolved = [str(ROOT / a) if a.startswith("configs/") else a for a in args]
        if not any(a.startswith("--trainer.precision") for a in resolved):
            resolved.append("--trainer.precision=32-true")  # fast and exact on every CPU; the resolver has its tests
        if not run:
            resolved = resolved[1:] if resolved and resolved[0] in ("fit", "validate", "test", "predict") else resolved
        return build_cli(args=resolved, run=run)

    return run


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA_DIR / "MNIST" / "raw").is_dir():
        pytest.fail(f"MNIST not found under {DATA_DIR}; set MODULE14_DATA_DIR to a folder holding it (see README).")
    return DATA_DIR


# A CSV logger under runs/ instead of the configs' W&B: faster, and its files are easy to find in a test.
CSV_LOGGER = ["--trainer.logger=CSVLogger", "--trainer.logger.init_args.save_dir=runs"]

TINY_VIT = ["--model.embed_dim=32", "--model.depth=1", "--model.num_heads=2"]
# A CPU-sized DCGAN run on MNIST: 8 feature maps, batches of 8, no validation (two GAN steps per batch).
TINY_GAN = ["--config", "configs/dcgan_mnist.yaml", "--model.feature_maps=8", "--data.batch_size=8",
            "--data.num_workers=0", "--trainer.limit_val_batches=0", "--trainer.enable_model_summary=false",
            *CSV_LOGGER]
# A CPU-sized DDPM U-Net (width 16, 8 norm groups): the DDPM configs' networks are GPU-sized or slow on a CPU.
TINY_UNET = ["--model.init_args.model_channels=16", "--model.init_args.norm_groups=8"]
# ... sampling in 2 steps, so validation grids and predict take seconds.
TINY_DDPM = [*TINY_UNET, "--model.init_args.sampling_steps=2"]


# GPU-sized configs (the DDPM paper's 35.7M U-Net) keep their wiring but get a CPU-sized width and batch in tests.
CPU_SIZED = {
    "ddpm_cifar10": [*TINY_DDPM, "--data.init_args.batch_size=4"],
    "ddpm_celeba": [*TINY_DDPM, "--data.init_args.batch_size=4"],
}


def config_model(config: Path):
    """The model a config builds through the CLI (CPU-sized where the config is GPU-sized), not attached to a trainer."""
    from cli import build_cli

    args = ["--config", str(config), *CPU_SIZED.get(config.stem, []), *opt_in(config), "--trainer.logger=false",
            "--trainer.precision=32-true"]
    cwd = os.getcwd()
    try:
        return build_cli(args, run=False).model
    finally:
        os.chdir(cwd)


def unit_loader(module, n: int = 16, batch_size: int = 8):
    """Random images in ``module``'s value range, for tests of the metrics' plumbing (not of the data)."""
    from torch.utils.data import DataLoader, TensorDataset

    low, high = module.value_range
    x = torch.rand(n, *module.hparams.image_shape, generator=torch.Generator().manual_seed(0)) * (high - low) + low
    return DataLoader(TensorDataset(x, torch.zeros(n, dtype=torch.long)), batch_size=batch_size)


def on_trainer(data: L.LightningDataModule, training: bool = True, rank: int = 0, device: str = "cpu"):
    """``data`` as a trainer holds it, without one: what its hooks read (``training``, ``global_rank``, the
    strategy's ``root_device``, set before ``setup``)."""
    from types import SimpleNamespace

    data.trainer = SimpleNamespace(training=training, global_rank=rank,
                                   strategy=SimpleNamespace(root_device=torch.device(device)))
    return data


def cpu_trainer(**kwargs) -> L.Trainer:
    """A quiet one-process CPU ``Trainer`` (no logger, checkpoints, progress bar or model summary); ``kwargs`` win."""
    defaults = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False)
    return L.Trainer(**(defaults | kwargs))


# --- DDP on CPU: 2 gloo processes through the real CLI --------------------------------------------------------------
RANK_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "LOCAL_RANK", "NODE_RANK", "RANK")


def launch_ddp(cwd: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``cli.py args`` in a fresh process and check that it exits 0. With ``--trainer.devices=2`` it launches the
    DDP ranks itself (Lightning starts rank 1 by running the same command again); ``tests/`` is importable there, for
    ``rank_state``'s callbacks, and rank variables of this process's environment are left out."""
    env = {k: v for k, v in os.environ.items() if k not in RANK_VARIABLES}
    env.update(PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'tests'}", OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def record_rank_state(folder: Path) -> list[str]:
    """CLI flags adding ``rank_state.RecordRankState``: each rank writes its weights and metrics into ``folder``."""
    return ["--trainer.callbacks+=rank_state.RecordRankState", f"--trainer.callbacks.init_args.folder={folder}"]


# BatchNorm running statistics: per-rank buffers (synchronised only with trainer.sync_batchnorm on GPUs).
PER_RANK_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def rank_state(folder: Path, stage: str, rank: int) -> dict:
    """What ``RecordRankState`` wrote for ``rank`` at the end of ``stage``: {"state": state_dict, "metrics": {...}}."""
    return torch.load(folder / f"{stage}_rank{rank}.pt", weights_only=True)


@pytest.fixture(scope="session")
def vit_checkpoint(tmp_path_factory) -> Path:
    """A tiny ViTClassifier trained for a few steps on MNIST through the CLI (CSV logger); returns last.ckpt."""
    from cli import build_cli

    folder = tmp_path_factory.mktemp("vit_ckpt")
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        build_cli(args=["fit", "--config", str(CONFIGS / "vit_mnist.yaml"), *TINY_VIT, "--trainer.max_steps=4",
                   "--trainer.limit_val_batches=2", *CSV_LOGGER, "--trainer.enable_model_summary=false"])
    finally:
        os.chdir(cwd)
    (checkpoint,) = folder.glob("runs/**/last.ckpt")
    return checkpoint
