"""Exponential moving average of a network's weights (Polyak averaging), as used by DDPM for sampling.

    ema = EMA(net, decay=0.9999)   # a submodule of the LightningModule: its weights are saved in checkpoints
    ema.update(net)                # after every optimizer step
    ema.module(x)                  # the averaged copy, for sampling / validation / predict

The averaged copy never receives gradients; keep it out of the optimizer (build it from ``net.parameters()``).
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
from torch.optim.swa_utils import get_ema_multi_avg_fn


class EMA(nn.Module):
    """Shadow copy ``module`` of a network, updated as θ_ema <- d θ_ema + (1 - d) θ after each ``update``.

    Args:
        module: the live network (copied at construction).
        decay: d, the EMA decay.
        warmup: use d_n = min(decay, (1 + n) / (10 + n)) at update n (as TensorFlow's ExponentialMovingAverage with
            num_updates), so early averages are not dominated by the random initialisation.
    """

    def __init__(self, module: nn.Module, decay: float = 0.9999, warmup: bool = True):
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay={decay} must be in [0, 1).")
        self.decay = decay
        self.warmup = warmup
        self.module = copy.deepcopy(module).requires_grad_(False)
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    def current_decay(self) -> float:
        n = int(self.num_updates)
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        """Move the averaged parameters towards ``module``'s; copy its buffers (e.g. norm statistics)."""
        decay = self.current_decay()
        ema_params, live_params = list(self.module.parameters()), list(module.parameters())
        if [p.shape for p in ema_params] != [p.shape for p in live_params]:
            raise ValueError("EMA.update got a module with a different structure from the one it was built from.")
        live_params = [p.detach().to(e.dtype) for p, e in zip(live_params, ema_params)]
        if ema_params:  # torch's EMA step: one fused lerp over all parameters
            get_ema_multi_avg_fn(decay)(ema_params, live_params, None)
        for ema_buffer, buffer in zip(self.module.buffers(), module.buffers()):
            ema_buffer.copy_(buffer)
        self.num_updates += 1

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)
