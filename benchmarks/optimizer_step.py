"""Optimizer step time per family on this CPU: torch's default Adam / AdamW (per-tensor ops), ``foreach=True``
(multi-tensor ops) and ``fused=True`` (one kernel per tensor; what the models use unless a run clips gradients:
``training/optim.py``).

    python benchmarks/optimizer_step.py [--rounds 7] [--steps 10]

Each config's module is built through the real CLI and trained one step, which gives the optimizers its
``configure_optimizers`` builds (AdamW with weight decay on matrices only for the ViT and the U-Net, Adam for the VAE,
Adam for both DCGAN networks); each implementation gets copies of their parameter groups and random gradients. The three implementations step in turn, round by round, in one process; the table shows the median
ms per optimizer step over the rounds, and the largest parameter difference between the default and the fused
implementation after all the steps (the same update up to rounding).

A second table times whole training steps (a real Trainer on real data, fp32, ``train_step_seconds``) of each config
whose module takes the fused step, against the same module made to take torch's default one, interleaved round by
round: median over rounds of the median step after the first. ``ddpm_mnist`` clips its gradients, so its optimizer is
unfused either way and it is not in that table.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path
from unittest import mock

import lightning as L
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.compile_speedup import build  # noqa: E402
from benchmarks.machine import machine_line, use_project_defaults  # noqa: E402
from benchmarks.harness import train_step_seconds  # noqa: E402

CONFIGS = {
    "vit_mnist": ["configs/vit_mnist.yaml"],
    "vit_cifar10": ["configs/vit_cifar10.yaml", "--data.init_args.verify_integrity=false"],
    "vae_mnist": ["configs/vae_mnist.yaml"],
    "dcgan_mnist": ["configs/dcgan_mnist.yaml"],
    "ddpm_mnist": ["configs/ddpm_mnist.yaml"],
}
IMPLEMENTATIONS = {"default": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}


class _Optimizers(L.Callback):
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.optimizers = list(trainer.optimizers)


def module_optimizers(cli) -> list[torch.optim.Optimizer]:
    """The optimizers the config's module builds in a real fit (one step of a copy of the model)."""
    capture = _Optimizers()
    trainer = L.Trainer(accelerator="cpu", max_steps=1, limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[capture])
    trainer.fit(copy.deepcopy(cli.model), cli.datamodule)
    return capture.optimizers


def copy_groups(optimizer: torch.optim.Optimizer) -> list[dict]:
    """The optimizer's parameter groups (their hyper-parameters) with fresh copies of the parameters, the base lr
    (``initial_lr``: the schedule of a one-step fit ends at 0, where no update would move a parameter) and without the
    implementation flags, which each copy sets itself."""
    return [{**{k: v for k, v in group.items() if k not in ("fused", "foreach")},
             "lr": group.get("initial_lr", group["lr"]),
             "params": [p.detach().clone().requires_grad_() for p in group["params"]]}
            for group in optimizer.param_groups]


def parameters(optimizer) -> list[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def measure(module_opts: list[torch.optim.Optimizer], rounds: int, steps: int) -> dict:
    optimizers = {impl: [type(opt)(copy_groups(opt), **kw) for opt in module_opts]
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


def train_steps(cli, rounds: int, steps: int) -> dict[str, float]:
    """Median ms per training step with the module's fused Adam and with torch's default one."""
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
    clis = {name: build(CONFIGS[name][0], CONFIGS[name][1:], False, "32-true") for name in args.configs}
    fused = {}
    for name, cli in clis.items():
        module_opts = module_optimizers(cli)
        fused[name] = all(group["fused"] for opt in module_opts for group in opt.param_groups)
        r = measure(module_opts, args.rounds, args.steps)
        ms = r["ms"]
        print(f"| {name} | {r['tensors']} | {r['params'] / 1e6:.2f}M | {ms['default']:.2f} | {ms['foreach']:.2f} "
              f"| {ms['fused']:.2f} | {ms['default'] / ms['fused']:.1f}x | {r['max_diff']:.1e} |", flush=True)
    if not args.train_rounds:
        return
    print("\n| config | train step, default Adam ms | train step, fused ms | speed-up | load avg |")
    print("|---|---|---|---|---|")
    for name in [name for name in clis if fused[name]]:
        ms = train_steps(clis[name], args.train_rounds, args.train_steps)
        print(f"| {name} | {ms['default']:.1f} | {ms['fused']:.1f} | {ms['default'] / ms['fused']:.2f}x "
              f"| {os.getloadavg()[0]:.1f} |", flush=True)


if __name__ == "__main__":
    main()
