"""ViT train-step throughput: our attention (F.scaled_dot_product_attention) vs the explicit formulation of
docs/guide.md (Part 1, Step 3; "spec" in the output),
and bf16 autocast vs fp32, on the same network config. Steps of the variants are interleaved so that load from
other processes hits them alike; the median step time of each is reported.

    python benchmarks/vit_throughput.py                      # CIFAR-sized ViT (configs/vit_cifar10.yaml), batch 128
    python benchmarks/vit_throughput.py --attn-dropout 0.1   # the guide's dropout on attention weights too
    python benchmarks/vit_throughput.py --img 224 --patch 16 --dim 768 --depth 12 --heads 12 --batch 8   # ViT-B/16

Targets (issue 2, CPU): SDPA >= 1.8x the explicit formulation in fp32; bf16-mixed >= 2x fp32.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from networks.vit import MultiHeadSelfAttention, VisionTransformer  # noqa: E402


class SpecAttention(nn.Module):
    """The guide's MultiHeadSelfAttention.forward (docs/guide.md, Part 1, Step 3), verbatim in its math, sharing our
    layer's weights."""

    def __init__(self, ours: MultiHeadSelfAttention):
        super().__init__()
        self.num_heads, self.head_dim = ours.num_heads, ours.head_dim
        self.scale = self.head_dim**-0.5
        self.qkv, self.proj = ours.qkv, ours.proj
        self.attn_drop = nn.Dropout(ours.attn_dropout)  # the guide uses one dropout for both; same rates here
        self.proj_drop = ours.proj_dropout

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = F.softmax((q @ k.transpose(-2, -1)) * self.scale, dim=-1)
        attn = self.attn_drop(attn)
        x = (attn @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(x))


def build(args, explicit: bool) -> nn.Module:
    torch.manual_seed(0)
    model = VisionTransformer(img_size=args.img, patch_size=args.patch, in_channels=3, num_classes=10,
                              embed_dim=args.dim, depth=args.depth, num_heads=args.heads, mlp_ratio=args.mlp_ratio,
                              dropout=args.dropout, attn_dropout=args.attn_dropout)
    if explicit:
        for block in model.blocks:
            block.attn = SpecAttention(block.attn)
    return model.train()


def make_step(model: nn.Module, bf16: bool, x: torch.Tensor, y: torch.Tensor):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> float:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--img", type=int, default=32)
    parser.add_argument("--patch", type=int, default=4)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--mlp-ratio", type=float, default=2.0)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--attn-dropout", type=float, default=0.0,
                        help="dropout on attention weights (configs: 0, as in the ViT paper; the guide: = dropout)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant (after 2 warm-up steps)")
    args = parser.parse_args()

    x = torch.randn(args.batch, 3, args.img, args.img)
    y = torch.randint(0, 10, (args.batch,))
    variants = {
        "sdpa fp32": make_step(build(args, explicit=False), False, x, y),
        "explicit fp32": make_step(build(args, explicit=True), False, x, y),
        "sdpa bf16-mixed": make_step(build(args, explicit=False), True, x, y),
        "explicit bf16-mixed": make_step(build(args, explicit=True), True, x, y),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for round_ in range(args.steps + 2):
        for name, step in variants.items():
            elapsed = step()
            if round_ >= 2:
                times[name].append(elapsed)
    median = {name: statistics.median(t) for name, t in times.items()}

    tokens = (args.img // args.patch) ** 2 + 1
    print(f"ViT img {args.img} patch {args.patch} ({tokens} tokens) dim {args.dim} depth {args.depth} heads "
          f"{args.heads} dropout {args.dropout} attn_dropout {args.attn_dropout}, batch {args.batch}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    for name, seconds in median.items():
        print(f"  {name:22s} {seconds * 1000:8.1f} ms/step  {args.batch / seconds:8.1f} img/s")
    print(f"SDPA vs explicit attention, fp32:       {median['explicit fp32'] / median['sdpa fp32']:.2f}x")
    print(f"SDPA vs explicit attention, bf16-mixed: {median['explicit bf16-mixed'] / median['sdpa bf16-mixed']:.2f}x")
    print(f"bf16-mixed vs fp32 (SDPA):              {median['sdpa fp32'] / median['sdpa bf16-mixed']:.2f}x")
    print(f"ours (SDPA, bf16-mixed) vs spec (explicit, fp32): "
          f"{median['explicit fp32'] / median['sdpa bf16-mixed']:.2f}x")


if __name__ == "__main__":
    main()
