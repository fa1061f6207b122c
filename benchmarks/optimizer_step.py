"""Optimizer step time per family on this CPU: torch's default Adam / AdamW (per-tensor ops), ``foreach=True``
(multi-tensor ops) and ``fused=True`` (one kernel per tensor; what the models use unless a run clips gradients:
``lightning_modules/optim.py``).

    python benchmarks/optimizer_step.py [--rounds 7] [--steps 10]

Each config's network is built through the real CLI, with the parameter groups its module gives the optimizer (AdamW
with weight decay on matrices only for the ViT and the U-Net, Adam for the VAE, Adam for both DCGAN networks) and
random gradients. The three implementations step in turn, round by round, in one process; the table shows the median
ms per optimizer step over the rounds, and the largest parameter difference between the default and the fused
implementation after all the steps (the same update up to rounding).

A second table times whole training steps (a real Trainer on real data, fp32, ``train_step_seconds``) of each config
whose module takes the fused step, against the same module made to take torch's default one, interleaved round by
round: median over rounds of the median step after the first. ``ddpm_mnist`` clips its gradients, so it is unfused
either way and not in that table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from unittest import mock

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.compile_speedup import build  # noqa: E402
from benchmarks.machine import machine_line, use_project_defaults  # noqa: E402
from lightning_modules.optim import decay_groups  # noqa: E402

CONFIGS = {
    "vit_mnist": ["configs/vit_mnist.yaml"],
    "vit_cifar10": ["configs/vit_cifar10.yaml", "--data.init_args.verify_integrity=false"],
    "vae_mnist": ["configs/vae_mnist.yaml"],
    "dcgan_mnist": ["configs/dcgan_mnist.yaml"],
    "ddpm_mnist": ["configs/ddpm_mnist.yaml"],
}
IMPLEMENTATIONS = {"default": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def param_groups(name: str, model) -> list[tuple[type, list, dict]]:
    """(optimizer class, parameter groups, hyper-parameters) of each optimizer the module's configure_optimizers
    builds, but with fresh copies of the parameters (so every implementation starts from the same weights)."""
    hp = model.hparams
    if name.startswith(("vit", "ddpm")):
        return [(torch.optim.AdamW, decay_groups(model.net, hp.weight_decay), {"lr": hp.lr})]
    if name.startswith("dcgan"):
        adam = {"lr": hp.lr, "betas": tuple(hp.betas)}
        return [(torch.optim.Adam, list(net.parameters()), adam) for net in (model.discriminator, model.generator)]
    return [(torch.optim.Adam, list(model.parameters()), {"lr": hp.lr})]


def copy_groups(groups) -> list:
    if groups and isinstance(groups[0], dict):
        return [{**g, "params": [p.detach().clone().requires_grad_() for p in g["params"]]} for g in groups]
    return [p.detach().clone().requires_grad_() for p in groups]


def parameters(optimizer) -> list[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def measure(name: str, rounds: int, steps: int) -> dict:
    model = build(CONFIGS[name][0], CONFIGS[name][1:], False, "32-true").model
    specs = param_groups(name, model)
    optimizers = {impl: [cls(copy_groups(groups), **hp, **kw) for cls, groups, hp in specs]
                  for impl, kw in IMPLEMENTATIONS.items()}
    torch.manual_seed(0)
    grads = [torch.randn_like(p) for opt in optimizers["default"] for p in parameters(opt)]
    for opts in optimizers.values():
        for p, g in zip((p for opt in opts for p in parameters(opt)), grads):
            p.grad = g.clone()
    times = {impl: [] for impl in optimizers}
    for _ in range(rounds):
        for impl, opts in optimizers.items():
            start = time.perf_counter()
            for _ in range(steps):
                for opt in opts:
                    opt.step()
            times[impl].append((time.perf_counter() - start) / steps * 1e3)
    flat = {impl: [p for opt in opts for p in parameters(opt)] for impl, opts in optimizers.items()}
    return {
        "tensors": len(grads), "params": sum(g.numel() for g in grads),
        "ms": {impl: statistics.median(t) for impl, t in times.items()},
        "max_diff": max((a - b).abs().max().item() for a, b in zip(flat["default"], flat["fused"])),
    }


def train_steps(name: str, rounds: int, steps: int) -> dict[str, float] | None:
    """Median ms per training step with the module's fused Adam and with torch's default one; None if unfused."""
    from lightning_modules.precision import train_step_seconds

    cli = build(CONFIGS[name][0], CONFIGS[name][1:], False, "32-true")
    if cli.model.hparams.get("grad_clip_norm"):
        return None
    family = sys.modules[type(cli.model).__module__]
    times = {"fused": [], "default": []}
    for _ in range(rounds):
        for impl in times:
            with mock.patch.object(family, "fused_adam", return_value=impl == "fused"):
                seconds = train_step_seconds(cli.model, cli.datamodule, "32-true", steps + 1)
            times[impl].append(statistics.median(seconds[1:]) * 1e3)
    return {impl: statistics.median(t) for impl, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps per implementation per round")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--train-rounds", type=int, default=5, help="rounds of the training-step table (0: skip it)")
    parser.add_argument("--train-steps", type=int, default=6, help="timed training steps per variant per round")
    args = parser.parse_args()
    use_project_defaults()
    print(f"{machine_line()}; fp32 parameters\n")
    print("| config | tensors | parameters | default ms | foreach ms | fused ms | fused speed-up | max |default - fused| |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.configs:
        r = measure(name, args.rounds, args.steps)
        ms = r["ms"]
        print(f"| {name} | {r['tensors']} | {r['params'] / 1e6:.2f}M | {ms['default']:.2f} | {ms['foreach']:.2f} "
              f"| {ms['fused']:.2f} | {ms['default'] / ms['fused']:.1f}x | {r['max_diff']:.1e} |", flush=True)
    if not args.train_rounds:
        return
    print("\n| config | train step, default Adam ms | train step, fused ms | speed-up | load avg |")
    print("|---|---|---|---|---|")
    for name in args.configs:
        if (ms := train_steps(name, args.train_rounds, args.train_steps)) is not None:
            print(f"| {name} | {ms['default']:.1f} | {ms['fused']:.1f} | {ms['default'] / ms['fused']:.2f}x "
                  f"| {os.getloadavg()[0]:.1f} |", flush=True)


if __name__ == "__main__":
    main()
