"""W&B sweeps (configs/sweeps/): the command a ``wandb agent`` runs for a trial, expanded with W&B's own argument
rules, goes through module14's CLI with exact flags; a trial trains as one W&B run in one run folder (no network)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

pytestmark = pytest.mark.slow

SWEEPS = sorted((ROOT / "configs" / "sweeps").glob("*.yaml"))
BIN = Path(sys.executable).parent


def trial(sweep: dict, pick: int = 1) -> dict:
    """One value per parameter, as the sweep's search could draw it: the pick-th of its values, or its bounds."""
    chosen = {}
    for name, spec in sweep["parameters"].items():
        chosen[name] = spec["values"][pick % len(spec["values"])] if "values" in spec else \
            (spec["min"], spec["max"])[pick % 2]
    return chosen


def agent_command(sweep: dict, values: dict) -> list[str]:
    """The command ``wandb agent`` runs for a trial with ``values``: its ``command`` with W&B's macros filled in
    (``${args}`` as W&B builds it: --key=value per parameter)."""
    flags = create_sweep_command_args({"args": {k: {"value": v} for k, v in values.items()}})["args"]
    macros = {"${env}": ["/usr/bin/env"], "${args}": flags, "${program}": [sweep["program"]]}
    return [part for chunk in sweep["command"] for part in macros.get(str(chunk), [str(chunk)])]


def run(command: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **env}
    environment.pop("WANDB_SERVICE", None)
    return subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_every_sweep_optimises_what_its_config_monitors_and_its_trials_parse(path):
    sweep = yaml.safe_load(path.read_text())
    command = agent_command(sweep, trial(sweep))
    config = ROOT / command[command.index("--config") + 1]
    monitored = {cb["init_args"].get("monitor") for cb in yaml.safe_load(config.read_text())["trainer"]["callbacks+"]}
    assert sweep["metric"]["name"] in monitored
    done = run([*command, "--print_config"], cwd=ROOT)  # the agent runs from the repository root
    assert done.returncode == 0, done.stderr[-2000:]
    printed = yaml.safe_load(done.stdout)
    for key, value in trial(sweep).items():
        section, _, name = key.split(".")
        assert printed[section]["init_args"][name] == value, key


def test_a_trial_trains_as_one_w_and_b_run_in_one_run_folder(tmp_path):
    """The agent gives each trial its run id (WANDB_RUN_ID): the run, its W&B folder and its checkpoints take it."""
    sweep = yaml.safe_load((ROOT / "configs/sweeps/vit_mnist.yaml").read_text())
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    command = [*agent_command(sweep, trial(sweep, pick=0)), "--trainer.max_steps=2", "--trainer.limit_val_batches=1",
               "--trainer.limit_train_batches=2", "--trainer.max_epochs=1", "--data.init_args.num_workers=0",
               "--trainer.enable_model_summary=false"]
    done = run(command, cwd=tmp_path, WANDB_RUN_ID="trial0001", WANDB_SWEEP_ID="sweep001", WANDB_MODE="offline")
    assert done.returncode == 0, done.stderr[-2000:]
    assert [p.relative_to(tmp_path).as_posix() for p in tmp_path.glob("runs/module14/*/checkpoints/last.ckpt")] == \
        ["runs/module14/trial0001/checkpoints/last.ckpt"]
    assert len(list(tmp_path.glob("runs/wandb/offline-run-*-trial0001"))) == 1
