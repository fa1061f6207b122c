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

    def run(*args: str):
        from cli import main

        resolved = [str(ROOT / a) if a.startswith("configs/") else a for a in args]
        return main(args=resolved)

    return run


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA_DIR / "MNIST" / "raw").is_dir():
        pytest.fail(f"MNIST not found under {DATA_DIR}; set MODULE14_DATA_DIR to a folder holding it (see README).")
    return DATA_DIR
