"""Attention kernels per device and precision (``networks/attention.py``), and what they make of a ViT train step and
of the U-Net's attention level: ours through each kernel vs the seed's ViT (the guide's plain-softmax attention) and
timm's, fp32 and bf16 autocast, steps of all variants interleaved round by round (load hits them alike), medians.

    python benchmarks/attention.py                       # all three sections, on the CPU
    python benchmarks/attention.py --sections vit        # the ViT only (the issue's config: 32px, patch 4, width 192,
                                                         # depth 6, 3 heads, batch 128, dropout 0)
    python benchmarks/attention.py --dim 256 --heads 8 --mlp-ratio 2 --dropout 0.1     # configs/vit_cifar10.yaml
    python benchmarks/attention.py --device cuda         # a GPU: SDPA's fused kernels vs its math kernel vs explicit

Sections:
1. ``kernels``: one attention call, forward + backward and forward alone, at our networks' shapes (ViT MNIST and
   CIFAR, ViT-B/16, the U-Net's 16x16 level) and longer sequences: ``F.scaled_dot_product_attention`` (default
   kernel, and its math kernel) vs the explicit formula, and which one ``networks.attention`` takes. The table
   ``EXPLICIT_UP_TO`` in ``networks/attention.py`` is read off this section.
2. ``vit``: one train step (cross-entropy + AdamW) of ``VisionTransformer`` with the table's kernel ("ours"), with
   each kernel forced, the seed's ViT and timm's (when timm is installed) at the same config and initial weights.
3. ``unet``: one train step of the U-Net's attention block at ddpm_cifar10's attention level (16x16, 256 channels,
   one head) with each kernel.

Target (issue 38): in bf16 on a CPU with native bf16, ours at least as fast as the seed's and timm's; fp32 unchanged.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import networks.attention as attention_module  # noqa: E402
from benchmarks.machine import machine_line  # noqa: E402
from networks.unet import AttentionBlock  # noqa: E402
from networks.vit import MultiHeadSelfAttention, VisionTransformer  # noqa: E402


KERNELS = ("SDPA", "SDPA math", "explicit")


@contextlib.contextmanager
def kernel(name: str):
    """Run ``networks.attention.attention`` through one kernel: "table" (what it chooses), "explicit", "SDPA" (its
    default kernel for the device) or "SDPA math"."""
    chooser = attention_module.uses_explicit
    if name != "table":
        attention_module.uses_explicit = lambda q: name == "explicit"
    try:
        with sdpa_kernel([SDPBackend.MATH]) if name == "SDPA math" else contextlib.nullcontext():
            yield
    finally:
        attention_module.uses_explicit = chooser


def interleaved(variants: dict[str, Callable[[], None]], rounds: int, device: torch.device) -> dict[str, float]:
    """Median seconds per call of each variant; one warm-up round, then ``rounds`` rounds calling each in turn."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for round_ in range(rounds + 1):
        for name, call in variants.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            call()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if round_:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


# ---------------------------------------------------------------------------------------------------- 1. kernels

SHAPES = {  # name: (batch, heads, tokens, channels per head)
    "vit_mnist (7x7 patches)": (128, 4, 17, 24),
    "vit_cifar10": (128, 8, 65, 32),
    "ViT 192 wide, 3 heads": (128, 3, 65, 64),
    "ViT-B/16 at 224px": (8, 12, 197, 64),
    "U-Net 16x16, 256 ch": (32, 1, 256, 256),
    "512 tokens": (16, 4, 512, 64),
    "512 tokens, 8 heads": (16, 8, 512, 32),
    "1024 tokens": (8, 4, 1024, 64),
    "4096 tokens": (1, 4, 4096, 64),
}


def kernels_section(device: torch.device, dtypes: list[torch.dtype], rounds: int) -> None:
    print("\n## 1. One attention call (ms): F.scaled_dot_product_attention vs the explicit formula\n")
    names = KERNELS
    print("| shape (B, heads, N, d) | dtype | pass | " + " | ".join(names) + " | table takes | explicit vs SDPA |")
    print("|---|---|---|" + "---|" * len(names) + "---|---|")
    for label, (B, H, N, D) in SHAPES.items():
        for dtype in dtypes:
            for grad in (True, False):
                qkv = torch.randn(B, N, 3, H, D, device=device, dtype=dtype, requires_grad=grad)

                def call(name: str) -> Callable[[], None]:
                    def run() -> None:
                        with torch.set_grad_enabled(grad), kernel(name):
                            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # the ViT's layout: strided views
                            out = attention_module.attention(q, k, v)
                            if grad:
                                out.sum().backward()
                    return run

                median = interleaved({name: call(name) for name in names}, rounds, device)
                with torch.set_grad_enabled(grad):
                    takes = "explicit" if attention_module.uses_explicit(qkv[:, :, 0].transpose(1, 2)) else "SDPA"
                cells = " | ".join(f"{median[n] * 1e3:.2f}" for n in names)
                print(f"| {label} ({B}, {H}, {N}, {D}) | {str(dtype)[6:]} | {'fwd+bwd' if grad else 'fwd'} | "
                      f"{cells} | {takes} | {median['SDPA'] / median['explicit']:.2f}x |", flush=True)


# ---------------------------------------------------------------------------------------------------- 2. ViT

class SeedAttention(nn.Module):
    """The seed's attention (docs/guide.md, Part 1, Step 3): softmax(q k^T * d^-1/2) v written out, on our layer's
    weights."""

    def __init__(self, ours: MultiHeadSelfAttention):
        super().__init__()
        self.heads, self.scale = ours.num_heads, ours.head_dim**-0.5
        self.qkv, self.proj, self.attn_drop, self.proj_drop = ours.qkv, ours.proj, nn.Dropout(ours.attn_dropout), \
            ours.proj_dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        scores = (qkv[0] @ qkv[1].transpose(-2, -1)) * self.scale
        x = (self.attn_drop(F.softmax(scores, dim=-1)) @ qkv[2]).transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(x))


def vit(args, which: str) -> nn.Module:
    """Ours, the seed's (ours with its attention) or timm's ViT at the same config, seeded alike."""
    torch.manual_seed(0)
    config = dict(img_size=args.img, patch_size=args.patch, num_classes=10, embed_dim=args.dim, depth=args.depth,
                  num_heads=args.heads, mlp_ratio=args.mlp_ratio)
    if which == "timm":
        import timm.models.vision_transformer as timm_vit

        return timm_vit.VisionTransformer(**config, in_chans=3, drop_rate=args.dropout, proj_drop_rate=args.dropout,
                                          pos_drop_rate=args.dropout, attn_drop_rate=args.attn_dropout)
    model = VisionTransformer(**config, in_channels=3, dropout=args.dropout, attn_dropout=args.attn_dropout)
    if which == "seed":
        for block in model.blocks:
            block.attn = SeedAttention(block.attn)
    return model


def train_step(model: nn.Module, x: torch.Tensor, loss_fn: Callable, bf16: bool, path: str) -> Callable[[], None]:
    model = model.to(x.device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        with kernel(path), torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(model, x)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def compare(title: str, builders: dict[str, Callable[[], tuple[nn.Module, str]]], x: torch.Tensor, loss_fn: Callable,
            rounds: int, batch: int) -> None:
    print(f"\n## {title}\n")
    print("| model | fp32 ms/step | bf16 ms/step | bf16 img/s | bf16 vs fp32 |")
    print("|---|---|---|---|---|")
    variants = {}
    for name, build in builders.items():
        for bf16 in (False, True):
            model, path = build()
            variants[(name, bf16)] = train_step(model, x, loss_fn, bf16, path)
    median = interleaved(variants, rounds, x.device)
    for name in builders:
        fp32, bf16 = median[(name, False)], median[(name, True)]
        print(f"| {name} | {fp32 * 1e3:.0f} | {bf16 * 1e3:.0f} | {batch / bf16:.0f} | {fp32 / bf16:.2f}x |")
    first = next(iter(builders))
    for name in builders:
        if name != first:
            print(f"{first} vs {name}: fp32 {median[(name, False)] / median[(first, False)]:.2f}x, "
                  f"bf16 {median[(name, True)] / median[(first, True)]:.2f}x (above 1: {first} is faster)")


def vit_section(args, device: torch.device) -> None:
    builders = {"ours": lambda: (vit(args, "ours"), "table")}
    builders.update({f"ours, {path}": (lambda path=path: (vit(args, "ours"), path)) for path in KERNELS})
    builders["seed"] = lambda: (vit(args, "seed"), "table")
    try:
        import timm  # noqa: F401

        builders["timm"] = lambda: (vit(args, "timm"), "table")
    except ImportError:
        print("(timm is not installed: pip install timm to compare with it)")
    x = torch.randn(args.batch, 3, args.img, args.img, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    tokens = (args.img // args.patch) ** 2 + 1
    compare(f"2. ViT train step: {args.img}px, patch {args.patch} ({tokens} tokens), width {args.dim}, depth "
            f"{args.depth}, {args.heads} heads, mlp {args.mlp_ratio}, dropout {args.dropout} / attention "
            f"{args.attn_dropout}, batch {args.batch}", builders, x, lambda model, x: F.cross_entropy(model(x), y),
            args.rounds, args.batch)


# ---------------------------------------------------------------------------------------------------- 3. U-Net

def unet_section(args, device: torch.device) -> None:
    def block() -> nn.Module:  # configs/ddpm_cifar10.yaml's attention level: 16x16, 256 channels, one head
        torch.manual_seed(0)
        return AttentionBlock(256, num_heads=1, norm_groups=32)

    x = torch.randn(args.unet_batch, 256, 16, 16, device=device)
    builders = {"ours": lambda: (block(), "table")}
    builders.update({f"ours, {path}": (lambda path=path: (block(), path)) for path in KERNELS})
    compare(f"3. U-Net attention block train step (ddpm_cifar10's 16x16 level: GroupNorm, 1x1 qkv, attention over "
            f"256 positions, 1x1 projection, residual), batch {args.unet_batch}", builders, x,
            lambda model, x: model(x).square().mean(), args.rounds, args.unet_batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", nargs="+", default=["kernels", "vit", "unet"], choices=["kernels", "vit", "unet"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--img", type=int, default=32)
    parser.add_argument("--patch", type=int, default=4)
    parser.add_argument("--dim", type=int, default=192)
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--heads", type=int, default=3)
    parser.add_argument("--mlp-ratio", type=float, default=4.0)
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--attn-dropout", type=float, default=0.0)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--unet-batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=10, help="timed rounds after one warm-up round")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        print(f"GPU: {torch.cuda.get_device_name()}; torch {torch.__version__}")
    else:
        print(machine_line())
    dtypes = [torch.float32, torch.bfloat16]
    if "kernels" in args.sections:
        kernels_section(device, dtypes, args.rounds)
    if "vit" in args.sections:
        vit_section(args, device)
    if "unet" in args.sections:
        unet_section(args, device)


if __name__ == "__main__":
    main()
