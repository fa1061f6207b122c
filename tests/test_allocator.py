"""The CLI keeps freed CPU memory in the process (training/allocator.py), unless the user configured malloc."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from training import allocator

ROOT = Path(__file__).resolve().parents[1]
glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting is glibc's")

# A few conv layers on 64 MNIST-sized images, as a U-Net sampling step runs them: activations of 3-13 MB, freed at once.
FORWARD_PASSES = """
import resource, torch
torch.set_num_threads(1)
net = torch.nn.Sequential(torch.nn.Conv2d(1, 32, 3, padding=1), torch.nn.SiLU(), torch.nn.Conv2d(32, 64, 3, padding=1),
                          torch.nn.SiLU(), torch.nn.Conv2d(64, 1, 3, padding=1))
x = torch.randn(64, 1, 28, 28)
with torch.no_grad():
    net(x)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        x = net(x)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults(setup: str, env: dict[str, str] | None = None) -> int:
    """Minor page faults of ten forward passes in a new Python process, after ``setup``."""
    done = subprocess.run([sys.executable, "-c", setup + FORWARD_PASSES], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}, timeout=300)
    assert done.returncode == 0, done.stderr
    return int(done.stdout.split()[-1])


RUN_THE_CLI = ("import cli, contextlib, io\n"
               "with contextlib.redirect_stdout(io.StringIO()):\n"
               "    assert cli.main(['fit', '--help']) == 0\n")


@glibc_only
def test_the_cli_keeps_the_memory_a_forward_pass_frees():
    without = page_faults("")
    assert without > 10_000  # glibc hands the activations back and faults them in again, zeroed
    assert page_faults(RUN_THE_CLI) < without / 20


@glibc_only
def test_the_cli_leaves_the_users_own_malloc_settings_as_they_are():
    # a fixed 128 KiB mmap threshold: every activation is mapped and unmapped, as the user asked
    assert page_faults(RUN_THE_CLI, env={"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=131072"}) > 10_000


@pytest.mark.parametrize("name, value", [("MALLOC_ARENA_MAX", "2"), ("MALLOC_MMAP_THRESHOLD_", "1048576"),
                                         ("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=0"),
                                         ("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")])
def test_an_allocator_setting_in_the_environment_is_named_and_respected(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    assert name in allocator.user_allocator_settings()
    assert allocator.keep_freed_memory() is False


def test_other_c_libraries_are_left_alone(monkeypatch):
    monkeypatch.setattr(platform, "libc_ver", lambda: ("", ""))
    assert allocator.keep_freed_memory() is False
