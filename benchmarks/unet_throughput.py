"""Train-step throughput of our SimpleUNet vs the guide's (docs/guide.md, Part 4, Step 2; it ignores t), fp32 and
bf16 autocast, on CPU ("spec" in the output is the guide's network).

    python benchmarks/unet_throughput.py [--batch-size 16] [--steps 3] [--rounds 2] [--threads 1]

A train step is forward + MSE loss + backward + AdamW step on random 3x32x32 images and timesteps. Compared:
the guide's ``SimpleUNet()`` (its defaults, 1.3M parameters: one conv per level, no time conditioning), ours with the
same arguments (14.4M: two time-conditioned residual blocks per level as num_res_blocks=2 asks, bottleneck attention),
and ours at the guide's size (model_channels=24, num_res_blocks=1, 1.4M). Configurations are timed interleaved in
rounds (the machine may be shared); the best round of each is reported.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from networks.spec_simple_unet import SpecSimpleUNet  # noqa: E402
from networks.unet import SimpleUNet  # noqa: E402

MODELS = {
    "spec SimpleUNet() (t ignored)": lambda: SpecSimpleUNet(),
    "ours SimpleUNet() same args": lambda: SimpleUNet(),
    "ours at spec size (24 ch, 1 block)": lambda: SimpleUNet(model_channels=24, num_res_blocks=1),
}


def time_steps(model, optimizer, x, t, bf16: bool, steps: int) -> float:
    """Seconds per train step, averaged over ``steps`` after one warm-up step."""
    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.mse_loss(model(x, t).float(), x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()
    begin = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - begin) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(args.batch_size, 3, 32, 32)
    t = torch.randint(0, 1000, (args.batch_size,))
    setups = {}
    for name, build in MODELS.items():
        model = build()
        setups[name] = (model, torch.optim.AdamW(model.parameters(), lr=1e-4))
    best: dict[tuple[str, str], float] = {}
    for _ in range(args.rounds):
        for name, (model, optimizer) in setups.items():
            for precision in ("fp32", "bf16-mixed"):
                seconds = time_steps(model, optimizer, x, t, precision != "fp32", args.steps)
                key = (name, precision)
                best[key] = min(best.get(key, float("inf")), seconds)
    print(f"batch {args.batch_size} x 3x32x32, {args.threads} thread(s), best of {args.rounds} rounds")
    print(f"{'model':38s} {'params':>8s} {'precision':>11s} {'s/step':>8s} {'img/s':>8s} {'vs spec':>8s}")
    for (name, precision), seconds in best.items():
        params = sum(p.numel() for p in setups[name][0].parameters()) / 1e6
        spec = best[(next(iter(MODELS)), precision)]
        print(f"{name:38s} {params:7.2f}M {precision:>11s} {seconds:8.3f} {args.batch_size / seconds:8.1f} "
              f"{spec / seconds:7.2f}x")


if __name__ == "__main__":
    main()
