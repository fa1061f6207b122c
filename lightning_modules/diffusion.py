"""DDPM (Ho et al. 2020): a time-conditioned U-Net trained to predict the noise, and an EMA copy of it that samples
with the ancestral DDPM, DDIM (Song et al. 2021) or DPM-Solver++ (Lu et al. 2022) sampler (``docs/design.md``)."""

from __future__ import annotations

from typing import ClassVar, get_args

import torch
from torch import Tensor

from datamodules import VALUE_RANGES
from lightning_modules.base import GenerativeModule
from lightning_modules.ema import EMA
from lightning_modules.images import require_value_range, to_unit_range
from networks.diffusion import DDPMVariance, GaussianDiffusion, Prediction, Sampler, Schedule
from networks.unet import SimpleUNet
from training.optim import warmup_constant

DEFAULT_STEPS = {"ddim": 50, "dpm_solver": 20}  # when sampling_steps is null (capped at T); DDPM takes all T


class DiffusionModule(GenerativeModule):
    """Denoising diffusion (Ho et al., 2020): random t per image, MSE on the network's prediction, EMA for sampling.

    The EMA copy (``self.ema.module``) is what validation, ``sample_images`` grids and ``predict`` use; it is saved in
    checkpoints with the live network.

    Args:
        image_shape: (channels, height, width), from the datamodule.
        value_range: the data's value range, from the datamodule; must be (-1, 1), which the noise schedule assumes.
        num_timesteps, schedule, beta_start, beta_end, prediction: the ``GaussianDiffusion`` arguments (T, "linear"
            or "cosine" β schedule, and whether the network predicts "eps", "x0" or "v").
        lr: AdamW learning rate, reached after ``warmup_steps`` of linear warm-up and then held (as in DDPM).
        weight_decay: AdamW decay on weight matrices (DDPM: 0).
        grad_clip_norm: clip the gradients' global norm to this (DDPM: 1); ``None`` for no clipping.
        ema_decay: decay of the weights' EMA; ``ema_warmup`` ramps it up over the first updates.
        sampler: "ddim", "ddpm" (ancestral) or "dpm_solver" (DPM-Solver++(2M)) for sample grids and ``predict``.
        sampling_steps: DDIM (default 50) or DPM-Solver++ (default 20) steps, in [1, T]; the DDPM sampler always takes
            all T steps (leave null or set T).
        ddim_eta: DDIM's η (0: deterministic, 1: DDPM-like noise).
        ddpm_variance: σ² of the ancestral sampler: "posterior" (β̃_t) or "beta" (β_t).
        noise_seed: seed of the ``predict`` noise (combined with the rank and batch index).
        trajectory_grid: also log a grid of x̂_0 along the sampling trajectory with the sample grids.
        compile: run the trained U-Net through ``torch.compile`` (see ``training/compiling.py``); the EMA
            copy, which samples, stays eager.
        channels_last: keep the convolutions' weights and activations in NHWC memory layout (see
            ``training/memory_format.py``; off in the DDPM configs: 0.89x in bf16 on CPU).
        **unet: ``SimpleUNet``'s arguments, stated there (``model_channels``, ``num_res_blocks``, ``channel_mult``,
            ``attention_levels``, ``num_heads``, ``dropout``, ``norm_groups``); the CLI offers them as
            ``--model.init_args.*``.
    """

    inference_args: ClassVar[frozenset[str]] = frozenset({
        "sampler", "sampling_steps", "ddim_eta", "ddpm_variance", "noise_seed", "trajectory_grid",
    })
    # On a CPU with native bf16 (benchmarks/precision.py): bf16-mixed faster for the U-Net (ddpm_mnist).
    precision_on_bf16_cpu: ClassVar[str] = "bf16-mixed"

    def __init__(
        self,
        image_shape: tuple[int, int, int] = (1, 32, 32),
        value_range: tuple[float, float] | None = VALUE_RANGES["minus_one_one"],
        num_timesteps: int = 1000,
        schedule: Schedule = "linear",
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        prediction: Prediction = "eps",
        lr: float = 2e-4,
        weight_decay: float = 0.0,
        warmup_steps: int = 5000,
        grad_clip_norm: float | None = 1.0,
        ema_decay: float = 0.9999,
        ema_warmup: bool = True,
        sampler: Sampler = "ddim",
        sampling_steps: int | None = None,
        ddim_eta: float = 0.0,
        ddpm_variance: DDPMVariance = "posterior",
        noise_seed: int = 0,
        trajectory_grid: bool = True,
        compile: bool = False,
        channels_last: bool = False,
        **unet,
    ) -> None:
        super().__init__()
        self.value_range = require_value_range(
            "DiffusionModule", value_range, "minus_one_one", "the noise schedule assumes unit-scale data"
        )
        if num_timesteps < 1:
            raise ValueError(
                f"model.num_timesteps={num_timesteps}: the diffusion needs T >= 1 noise levels; DDPM uses 1000."
            )
        if not 0.0 <= ddim_eta <= 1.0:
            raise ValueError(
                f"model.ddim_eta={ddim_eta} must be in [0, 1]: 0 samples deterministically (DDIM), 1 adds DDPM-like noise."
            )
        if sampler not in get_args(Sampler):
            raise ValueError(f"model.sampler={sampler!r}: use one of {', '.join(get_args(Sampler))}.")
        if sampling_steps is not None and not 1 <= sampling_steps <= num_timesteps:
            raise ValueError(f"model.sampling_steps={sampling_steps} must be in [1, T={num_timesteps}] (or null).")
        if sampler == "ddpm" and sampling_steps not in (None, num_timesteps):
            raise ValueError(
                f"model.sampling_steps={sampling_steps}: the ancestral DDPM sampler takes all T={num_timesteps} "
                f"steps; leave sampling_steps null or use sampler: ddim."
            )
        self.save_hyperparameters()
        self.net = SimpleUNet(in_channels=image_shape[0], **unet)
        self.ema = EMA(self.net, decay=ema_decay, warmup=ema_warmup)
        self.diffusion = GaussianDiffusion(
            num_timesteps, schedule, beta_start, beta_end, prediction=prediction, clip_range=self.value_range
        )
        self.sampling_steps = sampling_steps or self._default_steps(sampler)

    def _default_steps(self, sampler: str) -> int:
        T = self.hparams.num_timesteps
        return T if sampler == "ddpm" else min(DEFAULT_STEPS[sampler], T)

    def forward(self, x_t: Tensor, t: Tensor) -> Tensor:
        return self.net(x_t, t)

    # --------------------------------------------------------------------------------------------- training
    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x0 = batch[0]
        t = torch.randint(0, self.diffusion.num_timesteps, (x0.shape[0],), device=x0.device)
        loss = self.diffusion.loss(self.net, x0, t, torch.randn_like(x0))
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True)
        return loss

    def ignored_settings(self) -> dict[str, str]:
        sampler = self.hparams.sampler
        ignored = {}
        if sampler != "ddim":
            ignored["ddim_eta"] = f"DDIM's η applies to sampler ddim, and {sampler} takes none"
        if sampler != "ddpm":
            ignored["ddpm_variance"] = f"the ancestral sampler's σ² applies to sampler ddpm, not {sampler}"
        return ignored

    def reported_metrics(self) -> dict[str, tuple[str, str]]:
        target = {"eps": "ε", "x0": "x0", "v": "v"}[self.hparams.prediction]
        return {"test/loss": (f"test {target}-MSE", "{:.4f}")}

    def configure_optimizers(self):
        optimizer = self.adam(self.net, self.hparams.lr, weight_decay=self.hparams.weight_decay)
        scheduler = warmup_constant(optimizer, self.hparams.warmup_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------------------------------- validation
    def _eval_loss(self, x0: Tensor, batch_idx: int) -> Tensor:
        """EMA network's loss with t and noise drawn from a per-batch seed: comparable across epochs."""
        g = self.noise(batch_idx)
        t = torch.randint(0, self.diffusion.num_timesteps, (x0.shape[0],), device=x0.device, generator=g)
        noise = torch.randn(x0.shape, device=x0.device, generator=g)
        return self.diffusion.loss(self.ema.module, x0, t, noise)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.log("val/loss", self._eval_loss(batch[0], batch_idx), on_epoch=True, prog_bar=True, sync_dist=True)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.log("test/loss", self._eval_loss(batch[0], batch_idx), on_epoch=True, sync_dist=True)

    # --------------------------------------------------------------------------------------------- sampling
    @torch.no_grad()
    def sample(
        self, n: int, generator: torch.Generator | None = None, sampler: Sampler | None = None,
        num_steps: int | None = None, eta: float | None = None, noise: Tensor | None = None,
    ) -> Tensor:
        """``n`` images in [0, 1] from the EMA network with the configured sampler, steps and η, or others; from
        ``noise`` (n, C, H, W) when given, else from noise drawn with ``generator``."""
        return self._sample(n, generator, sampler, num_steps, eta, noise=noise)

    @torch.no_grad()
    def sample_trajectory(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, list[Tensor]]:
        """``generate``'s images and the predictions x̂_0 at every sampling step, all in [0, 1]."""
        return self._sample(n, generator, trajectory=True)

    def _sample(
        self, n: int, generator: torch.Generator | None, sampler: Sampler | None = None, num_steps: int | None = None,
        eta: float | None = None, trajectory: bool = False, noise: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, list[Tensor]]:
        """What ``sample`` and ``sample_trajectory`` share: unset settings are the module's, images mapped to [0, 1]."""
        sampler = sampler or self.hparams.sampler
        if sampler != "ddpm" and num_steps is None:  # the configured steps, or the sampler's default
            num_steps = self.sampling_steps if sampler == self.hparams.sampler else self._default_steps(sampler)
        with self.sampling_precision():
            out = self.diffusion.sample(
                self.ema.module, (n, *self.hparams.image_shape), sampler=sampler, num_steps=num_steps,
                eta=self.hparams.ddim_eta if eta is None else eta, variance=self.hparams.ddpm_variance,
                generator=generator, device=self.device, trajectory=trajectory, noise=noise,
            )
        if trajectory:
            images, path = out
            return to_unit_range(images, self.value_range), [to_unit_range(x0, self.value_range) for x0 in path]
        return to_unit_range(out, self.value_range)

    def sample_images(self, images: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        """Grids for ``ImageSampler``: samples from fixed noise, and optionally x̂_0 along the trajectory."""
        if not self.hparams.trajectory_grid:
            return super().sample_images(images, generator)
        samples, path = self.sample_trajectory(len(images), generator)
        columns = torch.linspace(0, len(path) - 1, min(10, len(path))).round().long().tolist()
        rows = min(8, len(images))
        trajectory = torch.stack([path[i][:rows] for i in columns], dim=1)  # (rows, cols, C, H, W)
        return {"samples": samples, "trajectory": trajectory}
