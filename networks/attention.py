"""Scaled dot-product attention, softmax(q k^T / sqrt(d)) v (Vaswani et al. 2017), through the faster of two kernels
for the device, dtype and sequence length: PyTorch's ``F.scaled_dot_product_attention`` or the explicit formula.

On a GPU and in fp32 ``F.scaled_dot_product_attention`` is the fastest correct kernel (flash / memory-efficient
attention on CUDA, the fused flash kernel on CPU). In bf16 on a CPU it is not: PyTorch's CPU flash kernel is slow in
reduced precision (its backward most of all), and its math fallback computes in fp32, casting q, k and v up and
back. There the explicit formula -- two bf16 matrix products and a softmax -- is 1.8-5.6x faster for a forward and
backward pass at the sequence lengths of our networks (17-256 tokens), 1.1-1.6x for a forward pass alone
(``benchmarks/attention.py``). It materialises the (N, N) weights, which is what bounds it to the table's lengths,
and rounds the scores to bf16 (SDPA's bf16 kernel keeps them in fp32), so its error against fp32 is 2-3x SDPA's:
bf16-sized either way (``tests/test_attention.py``), and the same as the seed's and timm's unfused attention.

The choice is a table measured once and shipped here, never a timing at start-up; a pair that is not in it (CUDA,
fp32, fp16 on a CPU) takes ``F.scaled_dot_product_attention``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# Longest sequence (tokens) up to which the explicit formula is the faster kernel, by (device type, dtype, whether
# gradients are recorded). Measured idle on a 2-core AMD EPYC with AVX-512 BF16, torch 2.14.1 (benchmarks/attention.py,
# 2026-12-07), explicit vs SDPA for one call: with gradients 1.8-5.6x faster at 17-256 tokens, 1.39x at 512 tokens
# (64 channels per head; 0.94x with 32), 0.95-0.98x at 1024 and 4096; forward alone 1.14-1.61x at 17-256 tokens,
# 0.57-1.17x at 512, 0.74-0.77x from 1024 on.
EXPLICIT_UP_TO: dict[tuple[str, torch.dtype, bool], int] = {
    ("cpu", torch.bfloat16, True): 512,
    ("cpu", torch.bfloat16, False): 256,
}


def uses_explicit(q: Tensor) -> bool:
    """Whether ``attention`` computes the explicit formula for queries like ``q`` (B, heads, N, d)."""
    return q.shape[-2] <= EXPLICIT_UP_TO.get((q.device.type, q.dtype, torch.is_grad_enabled()), 0)


def attention(q: Tensor, k: Tensor, v: Tensor, dropout_p: float = 0.0) -> Tensor:
    """softmax(q k^T / sqrt(d)) v with dropout ``dropout_p`` on the weights: (B, heads, N, d) each -> (B, heads, N, d).

    The same math as ``F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)``, through the faster kernel.
    """
    if not uses_explicit(q):
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
    weights = torch.softmax((q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1), dim=-1)  # (B, heads, N, N)
    if dropout_p:
        weights = F.dropout(weights, dropout_p)
    return weights @ v
