"""GAN / DCGAN: the alternating two-optimizer game of Goodfellow et al. (2014), written for Lightning's manual optimisation.

Per training batch (spec, Part 3):

1. discriminator step: ``BCE(D(x), 1) + BCE(D(G(z).detach()), 0)`` -- real targets ``1 - label_smoothing`` (one-sided);
2. generator step (every ``d_steps_per_g_step`` batches): the non-saturating loss ``BCE(D(G(z)), 1)``, through the
   just-updated discriminator.

Both losses are ``binary_cross_entropy_with_logits`` on the discriminator's logits, so they run under ``16-mixed`` and
``bf16-mixed`` autocast (the spec's ``Sigmoid`` + ``BCELoss`` is refused by CUDA autocast). ``G(z)`` is computed once
per batch and reused by both steps, as in PyTorch's DCGAN example: the spec draws a second ``z`` for the generator step,
which costs a second generator forward and changes nothing in expectation.

Design notes for Lightning's features:

* **DDP.** Lightning wraps the whole LightningModule in one ``DistributedDataParallel``. The discriminator backward
  reaches only D's parameters and the generator backward only G's, so with DDP's default ``find_unused_parameters=False``
  the reducer waits for gradients that never come and the next step fails -- how Lightning's own GAN example breaks
  under DDP. ``setup`` therefore turns ``find_unused_parameters`` on for any DDP strategy (the stock ``ddp`` preset
  included): DDP then walks each loss's graph and all-reduces exactly the network being stepped. This keeps the
  alternating game exact at no compute cost, unlike back-propagating D's loss through G or one combined backward.
* **Noise.** Every draw of ``z`` uses a ``torch.Generator`` seeded from ``(noise_seed, rank, stream, epoch, batch)``: ranks draw
  different noise although ``seed_everything`` gives them the same global seed, and a resumed run draws the noise the
  uninterrupted run would have drawn.
* **Gradient clipping** (``gradient_clip_val``) happens in ``on_before_optimizer_step``, which Lightning calls inside
  ``optimizer.step()`` *after* the ``16-mixed`` grad scaler has unscaled the gradients; clipping in ``training_step``
  before ``opt.step()`` would clip the scaled gradients. (``Trainer(gradient_clip_val=...)`` is refused by Lightning under
  manual optimisation.)
* **Checkpoints** hold both networks, both Adam states and the EMA generator, so resuming continues the same run.
* ``trainer.global_step`` counts optimizer steps: two per batch (D and G) with ``d_steps_per_g_step=1``.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import lightning as L
import torch
import torch.nn as nn
import torch.nn.functional as F
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from compat import ddp_kwargs
from lightning_modules.compiling import compile_networks
from lightning_modules.ema import EMA
from lightning_modules.images import to_unit_range
from lightning_modules.metrics import SampleQuality
from lightning_modules.rng import seeded_generator
from networks.gan import DCGANDiscriminator, DCGANGenerator, Discriminator, Generator

# Noise streams (part of the seed of each torch.Generator).
_FIT, _VAL, _PREDICT, _TEST = 0, 1, 2, 3


class GANModule(L.LightningModule):
    """MLP GAN or DCGAN trained with two Adam optimisers and manual optimisation.

    ``image_shape`` and ``normalization`` come from the datamodule when run through the CLI; the data must be in
    [-1, 1] (``data.normalization: minus_one_one``), the range of the generator's ``Tanh``.

    Args:
        image_shape: (channels, height, width) of the images.
        normalization: the datamodule's normalisation; must be ``minus_one_one``.
        arch: ``mlp`` (the spec's ``Generator``/``Discriminator`` on flattened images) or ``dcgan`` (32 or 64 px).
        latent_dim: size of z.
        hidden_dim: width of the MLP networks (``arch: mlp``).
        feature_maps: base channel count of the DCGAN networks (``arch: dcgan``).
        lr, betas: Adam settings of both optimisers (the DCGAN paper's 2e-4, (0.5, 0.999)).
        label_smoothing: one-sided label smoothing: the discriminator's target for real images is ``1 - label_smoothing``.
        d_steps_per_g_step: discriminator steps (one per batch) per generator step.
        gradient_clip_val: clip each network's gradient norm to this value before its step (``None``: no clipping).
        ema_decay: keep an exponential moving average of the generator's weights with this decay (e.g. 0.999) and
            use it for samples, ``predict`` and FID/KID. The decay warms up as ``min(ema_decay, (1 + n) / (10 + n))``
            after ``n`` generator steps. ``None``: no EMA.
        noise_seed: seed of the noise streams (training, validation, predict).
        quality_num_samples: generated (and real) validation images for FID/KID at each validation end, over all
            ranks. 0 turns the metrics off.
        quality_features, inception_weights, classifier_checkpoint, kid_subset_size: the ``SampleQuality`` settings
            (``lightning_modules.metrics``): which feature extractor FID/KID use; the metric names say which
            (``val/fid_inception`` or ``val/fid_vit``, likewise ``kid_`` and ``kid_std_``).
        compile: run the generator and discriminator through ``torch.compile`` (see
            ``lightning_modules/compiling.py``).
    """

    # Chosen at inference time: with --ckpt_path a typed value wins over the checkpoint's (see cli.py).
    inference_args: ClassVar[frozenset[str]] = frozenset({
        "noise_seed", "quality_num_samples", "quality_features", "inception_weights", "classifier_checkpoint",
        "kid_subset_size",
    })

    def __init__(
        self,
        image_shape: tuple[int, int, int] = (1, 28, 28),
        normalization: str = "minus_one_one",
        arch: Literal["mlp", "dcgan"] = "mlp",
        latent_dim: int = 100,
        hidden_dim: int = 256,
        feature_maps: int = 64,
        lr: float = 2e-4,
        betas: tuple[float, float] = (0.5, 0.999),
        label_smoothing: float = 0.0,
        d_steps_per_g_step: int = 1,
        gradient_clip_val: float | None = None,
        ema_decay: float | None = None,
        noise_seed: int = 0,
        quality_num_samples: int = 0,
        quality_features: Literal["auto", "inception", "classifier"] = "auto",
        inception_weights: str | None = None,
        classifier_checkpoint: str | None = None,
        kid_subset_size: int = 100,
        compile: bool = False,
    ) -> None:
        super().__init__()
        if normalization != "minus_one_one":
            raise ValueError(
                f"GANModule needs data in [-1, 1] (the range of the generator's Tanh), but data.normalization is "
                f"'{normalization}'. Set data.init_args.normalization: minus_one_one."
            )
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"model.label_smoothing={label_smoothing} must be in [0, 1).")
        if d_steps_per_g_step < 1:
            raise ValueError(f"model.d_steps_per_g_step={d_steps_per_g_step} must be >= 1.")
        if gradient_clip_val is not None and gradient_clip_val <= 0:
            raise ValueError(f"model.gradient_clip_val={gradient_clip_val} must be positive (or null for no clipping).")
        if ema_decay is not None and not 0.0 < ema_decay < 1.0:
            raise ValueError(f"model.ema_decay={ema_decay} must be in (0, 1) (or null for no EMA).")
        if quality_num_samples < 0:
            raise ValueError(f"model.quality_num_samples={quality_num_samples} must be >= 0 (0 turns FID/KID off).")
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.image_shape = tuple(image_shape)
        channels, height, width = self.image_shape

        if arch == "mlp":
            self.generator = Generator(latent_dim, hidden_dim, output_dim=channels * height * width)
            self.discriminator = Discriminator(input_dim=channels * height * width, hidden_dim=hidden_dim)
        elif arch == "dcgan":
            if height != width:
                raise ValueError(f"DCGAN builds square images, got {height}x{width}; set data.image_size.")
            self.generator = DCGANGenerator(latent_dim, feature_maps, channels, image_size=height)
            self.discriminator = DCGANDiscriminator(channels, feature_maps, image_size=height)
        else:
            raise ValueError(f"model.arch='{arch}': choose 'mlp' or 'dcgan'.")

        # The EMA copy is never trained: no gradients, not in any optimizer (so DDP ignores it); saved in checkpoints.
        self.generator_ema = EMA(self.generator, ema_decay) if ema_decay is not None else None

        self.quality = None
        if quality_num_samples > 0:
            self.quality = SampleQuality(
                features=quality_features, inception_weights=inception_weights,
                classifier_checkpoint=classifier_checkpoint, num_samples=quality_num_samples,
                kid_subset_size=kid_subset_size,
            )
        self._quality_seen = 0  # real images this rank has fed to the metrics in this validation epoch

    # ------------------------------------------------------------------------------------------------ sampling
    def _rng(self, stream: int, *key: int) -> torch.Generator:
        """A generator seeded from (noise_seed, rank, stream, *key): reproducible, and different on every rank."""
        return seeded_generator(self.device, self.hparams.noise_seed, self.global_rank, stream, *key)

    def noise(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return torch.randn(n, self.hparams.latent_dim, device=self.device, generator=generator)  # (n, latent_dim)

    def generate(self, z: Tensor, network: nn.Module | None = None) -> Tensor:
        """Images (n, C, H, W) in [-1, 1] from noise z (n, latent_dim); by default from the network used for sampling."""
        network = network if network is not None else self.sampling_generator
        return network(z).view(z.size(0), *self.image_shape)

    @property
    def sampling_generator(self) -> nn.Module:
        """The EMA generator when ``ema_decay`` is set, else the trained one."""
        return self.generator_ema.module if self.generator_ema is not None else self.generator

    def sample_images(self, images: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        """Fixed-noise samples for ``ImageSampler`` (one per given image), in [0, 1]."""
        z = self.noise(images.size(0), generator)
        panels = {"generator": to_unit_range(self.generate(z, self.generator), (-1, 1))}
        if self.generator_ema is not None:
            panels["generator_ema"] = to_unit_range(self.generate(z, self.generator_ema), (-1, 1))
        return panels

    # ------------------------------------------------------------------------------------------------ training
    def configure_model(self) -> None:
        if self.hparams.compile:
            compile_networks(self.generator, self.discriminator)

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
        z = self.noise(real.size(0), self._rng(_FIT, self.current_epoch, batch_idx))
        fake = self.generate(z, self.generator)  # graph into G kept for the generator step

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
            if self.generator_ema is not None:
                self.generator_ema.update(self.generator)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Called inside optimizer.step(), after the 16-mixed grad scaler unscaled the gradients.
        if self.hparams.gradient_clip_val is not None:
            self.clip_gradients(optimizer, gradient_clip_val=self.hparams.gradient_clip_val, gradient_clip_algorithm="norm")

    def configure_optimizers(self):
        adam = dict(lr=self.hparams.lr, betas=tuple(self.hparams.betas))
        opt_d = torch.optim.Adam(self.discriminator.parameters(), **adam)
        opt_g = torch.optim.Adam(self.generator.parameters(), **adam)
        return [opt_d, opt_g]

    # ----------------------------------------------------------------------------------------- validation, test
    def on_validation_epoch_start(self) -> None:
        self._quality_seen = 0

    on_test_epoch_start = on_validation_epoch_start

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch[0], batch_idx, "val", _VAL)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch[0], batch_idx, "test", _TEST)

    def _evaluate(self, real: Tensor, batch_idx: int, stage: str, stream: int) -> None:
        """Both losses on held-out real images against fixed noise, and FID/KID when configured."""
        z = self.noise(real.size(0), self._rng(stream, batch_idx))
        fake = self.generate(z, self.generator)
        d_loss, d_real, d_fake = self._d_loss(real, fake)
        metrics = {"d_loss": d_loss, "g_loss": self._g_loss(fake), "d_real": d_real, "d_fake": d_fake}
        self.log_dict({f"{stage}/{name}": value for name, value in metrics.items()}, sync_dist=True)
        if self.quality is not None:
            self._update_quality(real, z)

    def _update_quality(self, real: Tensor, z: Tensor) -> None:
        """Feed up to quality_num_samples / world_size real and generated images per rank to FID/KID."""
        per_rank = math.ceil(self.hparams.quality_num_samples / self.trainer.world_size)
        take = min(real.size(0), per_rank - self._quality_seen)
        if take <= 0:
            return
        self._quality_seen += take
        fake = self.generate(z[:take])  # the sampling generator: EMA when on
        self.quality.update(to_unit_range(real[:take], (-1, 1)), real=True)
        self.quality.update(to_unit_range(fake, (-1, 1)), real=False)

    def on_validation_epoch_end(self) -> None:
        self._log_quality("val")

    def on_test_epoch_end(self) -> None:
        self._log_quality("test")

    def _log_quality(self, stage: str) -> None:
        if self.quality is None:
            return
        if not self.trainer.sanity_checking:
            values = self.quality.compute()  # synchronised across ranks by torchmetrics
            self.log_dict({f"{stage}/{name}": value for name, value in values.items()})
        self.quality.reset()

    # ----------------------------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # The FID/KID feature network is loaded from its own file: keep it out of GAN checkpoints, so they stay small
        # and load whether or not the metrics are on.
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("quality.")}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("quality.")}
        if self.quality is not None:
            state.update({f"quality.{k}": v for k, v in self.quality.state_dict().items()})
        checkpoint["state_dict"] = state

    # ------------------------------------------------------------------------------------------------- predict
    def predict_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        """One generated image in [0, 1] per item of the batch (the pixels are ignored)."""
        z = self.noise(batch[0].size(0), self._rng(_PREDICT, batch_idx))
        return to_unit_range(self.generate(z), (-1, 1))
