"""What a newcomer types: the README's commands, run as typed (shrunk to a few batches), in order, through the
installed console script on PATH, in a fresh directory; the top-level help and a mistyped command answer without
importing Lightning; exact flags."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
# Appended to every README command: a few batches, one epoch, few predictions (each flag valid for every command).
SHRINK = ["--trainer.max_steps=2", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1",
          "--trainer.limit_test_batches=1", "--trainer.max_epochs=1", "--data.init_args.num_workers=0",
          "--data.init_args.predict_size=4", "--trainer.enable_model_summary=false"]


def readme_commands() -> list[str]:
    """Every ``module14 ...`` line of the README's bash blocks, comments dropped."""
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.DOTALL)
    lines = [line.split("  #")[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line.startswith("module14 ")]


def shell(command: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """``command`` in a new bash, with module14's environment activated (as the README's install leaves it)."""
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_the_readme_commands_run_as_typed_in_order(tmp_path):
    """fit, then test/predict of its ``best`` / ``last``, as a newcomer goes through the tour."""
    (tmp_path / "configs").symlink_to(ROOT / "configs")  # the README's commands run from a clone's root
    commands = readme_commands()
    assert len(commands) >= 5 and any(" fit " in c for c in commands) and any("--ckpt_path best" in c for c in commands)
    for command in commands:
        done = shell(f"{command} {shlex.join(SHRINK)}", tmp_path)
        assert done.returncode == 0, f"{command}\n{done.stderr[-3000:]}"
        assert "Traceback" not in done.stderr, command
    assert not list(ROOT.glob("configs/**/data")) and not (ROOT / "configs" / "runs").exists()  # nothing in configs/


def test_help_and_a_mistyped_command_answer_without_importing_lightning(tmp_path):
    for args, status, says in ((["--help"], 0, "commands:"), ([], 2, "usage: module14 COMMAND"),
                               (["fitt"], 2, "unknown command 'fitt' (did you mean fit?)")):
        start = time.perf_counter()
        done = subprocess.run([str(BIN / "module14"), *args], cwd=tmp_path, capture_output=True, text=True,
                              env={**os.environ, "PYTHONPROFILEIMPORTTIME": "1"})
        seconds = time.perf_counter() - start
        assert done.returncode == status and says in done.stdout + done.stderr
        assert "lightning" not in done.stderr.replace("module14", "")  # -X importtime lists every module imported
        print(f"module14 {' '.join(args)}: {seconds:.2f} s")


def test_flags_are_exact_and_a_usage_error_is_one_line_naming_the_nearest_option(tmp_path):
    config = str(ROOT / "configs/vit_mnist.yaml")
    for typed, says in (("--trainer.max_epoch=3", "unknown option --trainer.max_epoch (did you mean --trainer.max_epochs?)"),
                        ("--model.embed_dimm=64", "--model.embed_dimm (did you mean --model.embed_dim?): ViTClassifier takes "
                                                  "no such argument"),
                        ("--trainer.max_epochs=abc", "--trainer.max_epochs=abc: expected int"),
                        ("--data.init_args.augment=wild", "--data.augment=wild: expected one of 'none', 'basic', 'strong'")):
        done = shell(f"module14 fit --config {config} {typed}", tmp_path)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1, done.stderr
        assert lines[0] == f"module14 fit: error: {says}. `module14 fit --help` lists every option."


def test_the_data_root_is_relative_to_where_the_command_runs(tmp_path):
    env_free = "env -u MODULE14_DATA_DIR "
    done = shell(f"{env_free}module14 fit --config {ROOT / 'configs/vit_mnist.yaml'} --print_config", tmp_path)
    assert done.returncode == 0
    assert f"data_dir: {tmp_path.resolve() / 'data'}" in done.stdout


def test_best_after_a_run_that_never_validated_names_its_last_checkpoint(tmp_path):
    config = f"--config {ROOT / 'configs/vit_mnist.yaml'} --data.init_args.num_workers=0"
    fit = shell(f"module14 fit {config} --trainer.max_steps=2", tmp_path)
    assert fit.returncode == 0 and "best checkpoint: none yet: val/acc is measured at validation" in fit.stderr
    assert "could not find the monitored key" not in fit.stderr  # Lightning's warning, with a site-packages path
    test = shell(f"module14 test {config} --ckpt_path best", tmp_path)
    (last,) = tmp_path.glob("runs/module14/*/checkpoints/last.ckpt")
    assert test.returncode == 1
    assert (f"--ckpt_path best: the newest run of this experiment stopped at step 2, before its first validation, so it "
            f"has no best checkpoint yet; use --ckpt_path last (that run's {last.resolve()})") in test.stderr
