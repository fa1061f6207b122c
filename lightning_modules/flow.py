"""Rectified flow / flow matching (Liu et al. 2022; Lipman et al. 2022): a U-Net learns the velocity of the straight
path from an image to Gaussian noise, and an ODE solver follows it back from noise to an image.

    x_t = (1 - t) x_0 + t ε,   t ~ U(0, 1),   loss = || v_θ(x_t, t) - (ε - x_0) ||²
    sampling: x_1 ~ N(0, I), dx/dt = v_θ(x, t) integrated from t = 1 to t = 0 (Euler, or Heun's second order)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar, Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

from datamodules import VALUE_RANGES
from lightning_modules.base import GenerativeModule
from lightning_modules.ema import EMA
from lightning_modules.images import require_value_range, to_unit_range
from networks.unet import SimpleUNet
from training.optim import warmup_constant

Solver = Literal["euler", "heun"]
TIME_SCALE = 1000.0  # t in [0, 1] enters the U-Net's sinusoidal embedding as t * 1000, the scale of DDPM's timesteps


def straight_path(x0: Tensor, noise: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """The point x_t of the path from ``x0`` (t = 0) to ``noise`` (t = 1) at times ``t`` (B,), and its velocity."""
    t = t.view(-1, *[1] * (x0.dim() - 1))
    return (1 - t) * x0 + t * noise, noise - x0


def integrate(velocity: Callable[[Tensor, Tensor], Tensor], x1: Tensor, steps: int, solver: Solver) -> Tensor:
    """Follow dx/dt = velocity(x, t) from t = 1 (``x1``) to t = 0 in ``steps`` equal steps: Euler (one velocity per
    step) or Heun (the Euler step corrected by the velocity at its end: two per step)."""
    times = torch.linspace(1.0, 0.0, steps + 1, device=x1.device)
    x = x1
    for t, t_next in zip(times[:-1], times[1:]):
        v = velocity(x, t.expand(len(x)))
        x_next = x + (t_next - t) * v
        if solver == "heun":
            x_next = x + (t_next - t) * 0.5 * (v + velocity(x_next, t_next.expand(len(x))))
        x = x_next
    return x


class FlowMatchingModule(GenerativeModule):
    """Rectified flow on the straight path, with the DDPM family's U-Net and an EMA copy that samples.

    Args:
        image_shape, value_range: from the datamodule; the data must be in [-1, 1] (the noise is unit Gaussian).
        lr, weight_decay, warmup_steps: AdamW with linear warm-up, then held. grad_clip_norm: clip the gradient norm.
        ema_decay: decay of the weights' EMA (warmed up), which validation, grids and ``predict`` use.
        solver: "euler" or "heun"; sampling_steps: ODE steps (network calls: Euler one per step, Heun two).
        noise_seed, compile, channels_last: as every family's (``lightning_modules/base.py``).
        **unet: ``SimpleUNet``'s arguments (``model_channels``, ``num_res_blocks``, ``channel_mult``, ...).
    """

    inference_args: ClassVar[frozenset[str]] = frozenset({"solver", "sampling_steps", "noise_seed"})
    precision_on_bf16_cpu: ClassVar[str] = "bf16-mixed"  # the U-Net's: 1.64x faster (benchmarks/precision.py)

    def __init__(
        self,
        image_shape: tuple[int, int, int] = (1, 32, 32),
        value_range: tuple[float, float] | None = VALUE_RANGES["minus_one_one"],
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        warmup_steps: int = 100,
        grad_clip_norm: float | None = 1.0,
        ema_decay: float = 0.995,
        solver: Solver = "euler",
        sampling_steps: int = 20,
        noise_seed: int = 0,
        compile: bool = False,
        channels_last: bool = False,
        **unet,
    ) -> None:
        super().__init__()
        self.value_range = require_value_range("FlowMatchingModule", value_range, "minus_one_one",
                                               "the path ends in unit Gaussian noise")
        if solver not in get_args(Solver) or sampling_steps < 1:
            raise ValueError(f"model.solver={solver!r}, model.sampling_steps={sampling_steps}: use euler or heun, "
                             f"and at least one step.")
        self.save_hyperparameters()
        self.net = SimpleUNet(in_channels=image_shape[0], **unet)
        self.ema = EMA(self.net, decay=ema_decay)

    def loss(self, net: torch.nn.Module, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """Mean squared error of ``net``'s velocity at x_t against the path's, ε - x0."""
        x_t, velocity = straight_path(x0, noise, t)
        return F.mse_loss(net(x_t, t * TIME_SCALE).float(), velocity.float())

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x0 = batch[0]  # (B, C, H, W) in [-1, 1]
        loss = self.loss(self.net, x0, torch.rand(len(x0), device=x0.device), torch.randn_like(x0))
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True)
        return loss

    def _evaluate(self, stage: str, x0: Tensor, batch_idx: int) -> None:
        """The EMA network's loss at times and noise drawn from the batch index: comparable across epochs."""
        generator = self.noise(batch_idx)
        t = torch.rand(len(x0), device=x0.device, generator=generator)
        noise = torch.randn(x0.shape, device=x0.device, generator=generator)
        self.log(f"{stage}/loss", self.loss(self.ema.module, x0, t, noise), prog_bar=True, sync_dist=True)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate("val", batch[0], batch_idx)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate("test", batch[0], batch_idx)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, solver: Solver | None = None,
               steps: int | None = None, noise: Tensor | None = None) -> Tensor:
        """``n`` images in [0, 1]: the EMA network's flow from ``noise`` (else drawn with ``generator``), with the
        configured solver and steps or others."""
        x1 = torch.randn(n, *self.hparams.image_shape, device=self.device, generator=generator) if noise is None else noise
        x0 = integrate(lambda x, t: self.ema.module(x, t * TIME_SCALE), x1, steps or self.hparams.sampling_steps,
                       solver or self.hparams.solver)
        return to_unit_range(x0, self.value_range)

    def reported_metrics(self) -> dict[str, tuple[str, str]]:
        return {"test/loss": ("test velocity MSE", "{:.4f}")}

    def configure_optimizers(self):
        optimizer = self.adam(self.net, self.hparams.lr, weight_decay=self.hparams.weight_decay)
        scheduler = warmup_constant(optimizer, self.hparams.warmup_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
