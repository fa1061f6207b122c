"""A cost model of the ViT, U-Net and DCGAN train steps on this machine: FLOPs per step, measured step time, and the
fraction of this machine's fp32 matmul peak the step achieves; and how the step time grows with batch and image size.

    python benchmarks/cost_model.py [--steps 3] [--families vit unet dcgan]

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` over one real training step (a Trainer on the real
data, forward and backward of every network the step runs: the DCGAN step's D and G passes included). It counts
matmuls, convolutions and attention (2 FLOPs per multiply-add); the elementwise work (norms, activations, the
optimizer) is not counted, which is what makes a small model's achieved fraction low. The peak is the best of a large
``torch.mm`` loop, measured again just before each row, so a row's fraction is taken against the machine as loaded at
that moment; step times are the best of ``--steps`` after a warm-up step (``train_step_seconds``, eager fp32), the
statistic the peak uses. Each family runs at its config size, at twice the batch, and at twice the image side.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import machine_line, use_project_defaults  # noqa: E402

FAMILIES = {  # name: (config, config batch, config image side)
    "vit": ("configs/vit_mnist.yaml", 128, 28),
    "unet": ("configs/ddpm_mnist.yaml", 64, 32),
    "dcgan": ("configs/dcgan_mnist.yaml", 128, 32),
}


def matmul_peak_gflops(n: int = 2048, reps: int = 8) -> float:
    """This machine's fp32 matmul rate now: the best of ``reps`` n x n x n ``torch.mm``, in GFLOP/s."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def build(config: str, batch: int, image: int):
    from cli import build_cli

    return build_cli(["--config", str(ROOT / config), "--trainer.logger=false", "--data.num_workers=0",
                      "--trainer.precision=32-true", f"--data.batch_size={batch}", f"--data.image_size={image}"],
                     run=False)


def step_gflop(cli) -> float:
    """Matmul/conv/attention GFLOP of one training step (forward and backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    from benchmarks.harness import train_step_seconds

    with FlopCounterMode(display=False) as counter:
        train_step_seconds(cli.model, cli.datamodule, "32-true", 1)
    return counter.get_total_flops() / 1e9


def measure(config: str, batch: int, image: int, steps: int) -> dict[str, float]:
    from benchmarks.harness import time_train_steps

    cli = build(config, batch, image)
    gflop = step_gflop(cli)
    peak = matmul_peak_gflops()
    seconds = time_train_steps(cli.model, cli.datamodule, "32-true", steps)
    return {"gflop": gflop, "ms": seconds * 1e3, "gflops": gflop / seconds, "peak": peak,
            "load": os.getloadavg()[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3, help="timed train steps per row (after a warm-up step)")
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    args = parser.parse_args()
    use_project_defaults()
    print(f"{machine_line()}; eager fp32\n")
    print("| family | batch | image | GFLOP/step | ms/step | GFLOP/s | fp32 mm peak GFLOP/s | fraction of peak "
          "| time vs config | FLOPs vs config | load avg |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for family in args.families:
        config, batch, image = FAMILIES[family]
        base = None
        for b, s in ((batch, image), (batch * 2, image), (batch, image * 2)):
            row = measure(config, b, s, args.steps)
            base = base or row
            print(f"| {family} | {b} | {s} | {row['gflop']:.2f} | {row['ms']:.0f} | {row['gflops']:.1f} "
                  f"| {row['peak']:.0f} | {row['gflops'] / row['peak']:.1%} | {row['ms'] / base['ms']:.2f}x "
                  f"| {row['gflop'] / base['gflop']:.2f}x | {row['load']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
