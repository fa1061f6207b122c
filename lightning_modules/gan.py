"""GAN / DCGAN (Goodfellow et al. 2014; Radford et al. 2016) with Lightning's manual optimisation: per batch a
discriminator step on real and detached fake images, then a non-saturating generator step, each with its own Adam.

Why it is written this way (logit losses for autocast, DDP, noise streams, clipping after AMP unscaling):
``docs/design.md``, "GAN training"."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from compat import ddp_kwargs
from datamodules import VALUE_RANGES
from lightning_modules.base import PREDICT, GenerativeModule
from lightning_modules.ema import EMA
from lightning_modules.images import require_value_range, to_unit_range
from networks.gan import DCGANDiscriminator, DCGANGenerator, Discriminator, Generator

# Noise streams (part of the seed of each torch.Generator; predict's is the base class's).
_FIT, _VAL, _TEST = 0, 1, 3


class GANModule(GenerativeModule):
    """MLP GAN or DCGAN trained with two Adam optimisers and manual optimisation.

    ``image_shape`` and ``value_range`` come from the datamodule when run through the CLI; the data must be in
    [-1, 1] (``data.normalization: minus_one_one``), the range of the generator's ``Tanh``.

    Args:
        image_shape: (channels, height, width) of the images.
        value_range: the data's value range; must be (-1, 1).
        architecture: ``mlp`` (the guide's ``Generator``/``Discriminator``, ``docs/guide.md``, on flattened images) or
            ``dcgan`` (32 or 64 px).
        latent_dim: size of z.
        hidden_dim: width of the MLP networks (``architecture: mlp``).
        feature_maps: base channel count of the DCGAN networks (``architecture: dcgan``).
        lr, betas: Adam settings of both optimisers (the DCGAN paper's 2e-4, (0.5, 0.999)).
        label_smoothing: one-sided label smoothing: the discriminator's target for real images is ``1 - label_smoothing``.
        d_steps_per_g_step: discriminator steps (one per batch) per generator step.
        grad_clip_norm: clip each network's gradient norm to this value before its step (``None``: no clipping).
        ema_decay: keep an exponential moving average of the generator's weights with this decay (e.g. 0.999) and
            use it for samples, ``predict`` and FID/KID. The decay warms up as ``min(ema_decay, (1 + n) / (10 + n))``
            after ``n`` generator steps. ``None``: no EMA.
        noise_seed: seed of the noise streams (training, validation, predict).
        compile: run the generator and discriminator through ``torch.compile`` (see
            ``training/compiling.py``).
        channels_last: keep the convolutions' weights and activations in NHWC memory layout (see
            ``training/memory_format.py``; on in the DCGAN configs).
    """

    # On a CPU with native bf16 (benchmarks/precision.py): bf16-mixed 1.38-1.70x faster (gan_mnist, the DCGANs).
    precision_on_bf16_cpu: ClassVar[str] = "bf16-mixed"

    def __init__(
        self,
        image_shape: tuple[int, int, int] = (1, 28, 28),
        value_range: tuple[float, float] | None = VALUE_RANGES["minus_one_one"],
        architecture: Literal["mlp", "dcgan"] = "mlp",
        latent_dim: int = 100,
        hidden_dim: int = 256,
        feature_maps: int = 64,
        lr: float = 2e-4,
        betas: tuple[float, float] = (0.5, 0.999),
        label_smoothing: float = 0.0,
        d_steps_per_g_step: int = 1,
        grad_clip_norm: float | None = None,
        ema_decay: float | None = None,
        noise_seed: int = 0,
        compile: bool = False,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.value_range = require_value_range("GANModule", value_range, "minus_one_one", "the generator's Tanh")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"model.label_smoothing={label_smoothing} must be in [0, 1).")
        if d_steps_per_g_step < 1:
            raise ValueError(f"model.d_steps_per_g_step={d_steps_per_g_step} must be >= 1.")
        if grad_clip_norm is not None and grad_clip_norm <= 0:
            raise ValueError(f"model.grad_clip_norm={grad_clip_norm} must be positive (or null for no clipping).")
        if ema_decay is not None and not 0.0 < ema_decay < 1.0:
            raise ValueError(f"model.ema_decay={ema_decay} must be in (0, 1) (or null for no EMA).")
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.image_shape = tuple(image_shape)
        channels, height, width = self.image_shape

        if architecture == "mlp":
            self.generator = Generator(latent_dim, hidden_dim, output_dim=channels * height * width)
            self.discriminator = Discriminator(input_dim=channels * height * width, hidden_dim=hidden_dim)
        elif architecture == "dcgan":
            if height != width:
                raise ValueError(f"DCGAN builds square images, got {height}x{width}; set data.image_size.")
            self.generator = DCGANGenerator(latent_dim, feature_maps, channels, image_size=height)
            self.discriminator = DCGANDiscriminator(channels, feature_maps, image_size=height)
        else:
            raise ValueError(f"model.architecture='{architecture}': choose 'mlp' or 'dcgan'.")

        # The EMA copy is never trained: no gradients, not in any optimizer (so DDP ignores it); saved in checkpoints.
        self.ema = EMA(self.generator, ema_decay) if ema_decay is not None else None
        self.refuse_channels_last_without_convolutions()

    def trained_networks(self) -> list[nn.Module]:
        return [self.generator, self.discriminator]

    def ema_source(self) -> nn.Module:
        return self.generator

    # ------------------------------------------------------------------------------------------------ sampling
    def _rng(self, stream: int, *key: int) -> torch.Generator:
        """A generator seeded from (noise_seed, rank, stream, *key): reproducible, and different on every rank."""
        return self.noise(self.global_rank, stream, *key)

    def latent(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return torch.randn(n, self.hparams.latent_dim, device=self.device, generator=generator)  # (n, latent_dim)

    def from_noise(self, z: Tensor, network: nn.Module) -> Tensor:
        """G(z): images (n, C, H, W) in the data's range from noise z (n, latent_dim) through ``network``."""
        return network(z).view(z.size(0), *self.image_shape)

    @property
    def sampling_generator(self) -> nn.Module:
        """The EMA generator when ``ema_decay`` is set, else the trained one."""
        return self.ema.module if self.ema is not None else self.generator

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` images (n, C, H, W) in [0, 1] from the sampling generator (EMA when on), noise from ``generator``."""
        return to_unit_range(self.from_noise(self.latent(n, generator), self.sampling_generator), self.value_range)

    def sample_images(self, images: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        """Fixed-noise samples for ``ImageSampler`` (one per given image), in [0, 1]."""
        z = self.latent(images.size(0), generator)
        panels = {"generator": to_unit_range(self.from_noise(z, self.generator), self.value_range)}
        if self.ema is not None:
            panels["generator_ema"] = to_unit_range(self.from_noise(z, self.ema), self.value_range)
        return panels

    # ------------------------------------------------------------------------------------------------ training
    def setup(self, stage: str) -> None:
        strategy = self.trainer.strategy
        if isinstance(strategy, DDPStrategy) and not ddp_kwargs(strategy).get("find_unused_parameters", False):
            ddp_kwargs(strategy)["find_unused_parameters"] = True  # read when the model is wrapped, after setup
            rank_zero_info("GANModule: DDP with find_unused_parameters=True (the D and G steps each reach one network)")

    def _bce(self, logits: Tensor, target: float) -> Tensor:
        return F.binary_cross_entropy_with_logits(logits.float(), torch.full_like(logits.float(), target))

    def _d_loss(self, real: Tensor, fake: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Discriminator loss on real images and (detached) fakes; also mean D(x) and mean D(G(z))."""
        real_logits = self.discriminator(real)
        fake_logits = self.discriminator(fake.detach())
        loss = self._bce(real_logits, 1.0 - self.hparams.label_smoothing) + self._bce(fake_logits, 0.0)
        return loss, torch.sigmoid(real_logits.float()).mean(), torch.sigmoid(fake_logits.float()).mean()

    def _g_loss(self, fake: Tensor) -> Tensor:
        """Non-saturating generator loss: -log D(G(z))."""
        return self._bce(self.discriminator(fake), 1.0)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        real = batch[0]
        opt_d, opt_g = self.optimizers()
        z = self.latent(real.size(0), self._rng(_FIT, self.current_epoch, batch_idx))
        fake = self.from_noise(z, self.generator)  # graph into G kept for the generator step

        with self.toggled_optimizer(opt_d):
            d_loss, d_real, d_fake = self._d_loss(real, fake)
            opt_d.zero_grad(set_to_none=True)
            self.manual_backward(d_loss)
            opt_d.step()
        self.log_dict({"train/d_loss": d_loss, "train/d_real": d_real, "train/d_fake": d_fake}, prog_bar=True)

        if (batch_idx + 1) % self.hparams.d_steps_per_g_step == 0:
            with self.toggled_optimizer(opt_g):
                g_loss = self._g_loss(fake)
                opt_g.zero_grad(set_to_none=True)
                self.manual_backward(g_loss)
                opt_g.step()
            self.log("train/g_loss", g_loss, prog_bar=True)
            self.update_ema()  # manual optimisation: after the generator's step

    def configure_optimizers(self):
        return [self.adam(self.discriminator, self.hparams.lr, self.hparams.betas),
                self.adam(self.generator, self.hparams.lr, self.hparams.betas)]

    # ----------------------------------------------------------------------------------------- validation, test
    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch[0], batch_idx, "val", _VAL)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch[0], batch_idx, "test", _TEST)

    def _evaluate(self, real: Tensor, batch_idx: int, stage: str, stream: int) -> None:
        """Both losses on held-out real images against fixed noise."""
        z = self.latent(real.size(0), self._rng(stream, batch_idx))
        fake = self.from_noise(z, self.generator)
        d_loss, d_real, d_fake = self._d_loss(real, fake)
        metrics = {"d_loss": d_loss, "g_loss": self._g_loss(fake), "d_real": d_real, "d_fake": d_fake}
        self.log_dict({f"{stage}/{name}": value for name, value in metrics.items()}, sync_dist=True)
