"""What the CPU benchmarks set and print first: the project's offline defaults, and the machine they measured."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def use_project_defaults() -> None:
    """W&B offline, and the data root beside the repository unless ``$MODULE14_DATA_DIR`` says otherwise."""
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("MODULE14_DATA_DIR", str(ROOT.parent / "shared" / "data"))


def cpu_flags() -> str:
    flags = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
    return " ".join(f for f in wanted if f" {f} " in f" {flags.replace(chr(10), ' ')} ") or "unknown"


def machine_line() -> str:
    """CPU flags, the instruction set torch's kernels use (lower than the flags when ``ATEN_CPU_CAPABILITY`` /
    ``ONEDNN_MAX_CPU_ISA`` cap it, e.g. to time an AVX2-only CPU on an AVX-512 one), torch version, threads and the load
    average now (a shared machine inflates absolute times)."""
    import torch

    onednn = os.environ.get("ONEDNN_MAX_CPU_ISA")
    isa = torch.backends.cpu.get_cpu_capability() + (f", oneDNN capped at {onednn}" if onednn else "")
    return (f"CPU flags: {cpu_flags()} (kernels: {isa}); torch {torch.__version__}, {torch.get_num_threads()} threads; "
            f"load average {os.getloadavg()[0]:.1f}")
