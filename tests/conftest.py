"""Shared test setup: real data from ../shared/data (or $MODULE14_DATA_DIR), W&B offline, CLI runs in a temp dir."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
os.environ.setdefault("MODULE14_DATA_DIR", str(ROOT.parent / "shared" / "data"))
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
DATA_DIR = Path(os.environ["MODULE14_DATA_DIR"])


def experiment_configs() -> list[Path]:
    """Every experiment config (not the trainer presets)."""
    return sorted(CONFIGS.glob("*.yaml"))


@pytest.fixture
def run_cli(tmp_path, monkeypatch):
    """Run the real CLI in-process, inside a fresh working directory, so runs/ and outputs/ land in tmp_path.

    ``run_cli("fit", "--config", "configs/vit_mnist.yaml", "--trainer.fast_dev_run=true")`` returns the LightningCLI.
    Relative ``configs/...`` paths are resolved against the repository.
    """
    monkeypatch.chdir(tmp_path)

    def run(*args: str, run: bool = True):
        """``run=False`` instantiates without running (then args omit the subcommand)."""
        from cli import main

        resolved = [str(ROOT / a) if a.startswith("configs/") else a for a in args]
        if not run:
            resolved = resolved[1:] if resolved and resolved[0] in ("fit", "validate", "test", "predict") else resolved
        return main(args=resolved, run=run)

    return run


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA_DIR / "MNIST" / "raw").is_dir():
        pytest.fail(f"MNIST not found under {DATA_DIR}; set MODULE14_DATA_DIR to a folder holding it (see README).")
    return DATA_DIR


TINY_VIT = ["--model.embed_dim=32", "--model.depth=1", "--model.num_heads=2"]


@pytest.fixture(scope="session")
def vit_checkpoint(tmp_path_factory) -> Path:
    """A tiny ViTClassifier trained for a few steps on MNIST through the CLI (CSV logger); returns last.ckpt."""
    import os as _os

    from cli import main

    folder = tmp_path_factory.mktemp("vit_ckpt")
    cwd = _os.getcwd()
    _os.chdir(folder)
    try:
        main(args=["fit", "--config", str(CONFIGS / "vit_mnist.yaml"), *TINY_VIT, "--trainer.max_steps=4",
                   "--trainer.limit_val_batches=2", "--trainer.logger=CSVLogger",
                   "--trainer.logger.init_args.save_dir=runs", "--trainer.enable_model_summary=false"])
    finally:
        _os.chdir(cwd)
    (checkpoint,) = folder.glob("runs/**/last.ckpt")
    return checkpoint
