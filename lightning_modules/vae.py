"""VAE (Kingma & Welling 2014) and beta-VAE (Higgins et al. 2017): the negative ELBO with a Bernoulli or a discretised
Gaussian likelihood, the importance-weighted bound of Burda et al. (2016), bits/dim and active latent units.

The objective, the likelihoods and the evaluation are explained in ``docs/design.md``, "VAE and β-VAE"."""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric

from datamodules import VALUE_RANGES
from lightning_modules.base import GenerativeModule
from lightning_modules.images import require_value_range, to_unit_range
from networks.vae import ConvVAE, GaussianLatentAutoencoder, VAE
from training.optim import total_training_steps, warmup_cosine
from training.rng import seeded_generator
from training.step_logging import RunningMeans, logger_writes_this_step

TRAIN_TERMS = ("loss", "recon", "kl", "nelbo")
LOG_2PI = math.log(2 * math.pi)


# --------------------------------------------------------------------------------------------------- the terms
def gaussian_kl_per_unit(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu_u, sigma_u^2) || N(0, 1)) = 0.5 * (mu^2 + sigma^2 - log sigma^2 - 1) of every latent unit: (B, L)."""
    mu, logvar = mu.float(), logvar.float()
    return 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1)


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(q(z|x) || N(0, I)) of a diagonal Gaussian, summed over the latents: (B, L) -> (B,)."""
    return gaussian_kl_per_unit(mu, logvar).sum(dim=-1)


def bernoulli_log_likelihood(logits: Tensor, x: Tensor) -> Tensor:
    """sum over pixels of log Bernoulli(x | sigmoid(logits)) = -BCE-with-logits: (B, ...) -> (B,)."""
    bce = F.binary_cross_entropy_with_logits(logits.float(), x.float(), reduction="none")
    return -bce.flatten(1).sum(dim=1)


def _log_normal_mass(upper: Tensor, lower: Tensor) -> Tensor:
    """log(Phi(upper) - Phi(lower)) for upper > lower, computed in the tail where it is accurate."""
    flip = (upper + lower) > 0  # both bounds right of the mean: use Phi(-lower) - Phi(-upper) instead
    a = torch.special.log_ndtr(torch.where(flip, -lower, upper))
    b = torch.special.log_ndtr(torch.where(flip, -upper, lower))
    return a + torch.log(-torch.expm1(b - a))


def discretized_gaussian_log_likelihood(
    mean: Tensor, log_scale: Tensor, x: Tensor, value_range: tuple[float, float], levels: int = 256
) -> Tensor:
    """sum over pixels of log P(x | mean, scale) for a Gaussian discretised to ``levels`` pixel levels: (B, ...) -> (B,).

    x lies in ``value_range`` with level k at low + k * step (step = (high - low) / (levels - 1)); the bin of level k is
    x_k +- step / 2, and the two edge bins extend to -inf / +inf, so the masses of all levels sum to one.
    """
    low, high = value_range
    step = (high - low) / (levels - 1)
    mean, x = mean.float(), x.float()
    level = ((x - low) / step).round().clamp(0, levels - 1)
    centre = low + level * step
    inv_scale = torch.exp(-log_scale.float())
    upper = (centre + step / 2 - mean) * inv_scale
    lower = (centre - step / 2 - mean) * inv_scale
    interior = _log_normal_mass(upper, lower)
    log_p = torch.where(
        level == 0, torch.special.log_ndtr(upper), torch.where(level == levels - 1, torch.special.log_ndtr(-lower), interior)
    )
    return log_p.flatten(1).sum(dim=1)


def linear_warmup(step: int, warmup_steps: int) -> float:
    """1 after ``warmup_steps``; rises linearly from 1/warmup_steps at step 0 before (1 throughout if warmup_steps=0)."""
    return 1.0 if warmup_steps <= 0 else min(1.0, (step + 1) / warmup_steps)


class ActiveUnits(Metric):
    """Latent units whose posterior mean varies across the data: Var_x(E_q[z_u | x]) > threshold (Burda et al. 2016).

    Accumulates sums (summed across DDP ranks) so the variance is over the whole epoch, not averaged per batch.
    """

    full_state_update = False

    def __init__(self, latent_dim: int, threshold: float = 0.01) -> None:
        super().__init__()
        self.threshold = threshold
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros(latent_dim, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total_sq", torch.zeros(latent_dim, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, mu: Tensor) -> None:
        mu = mu.detach().double()
        self.count += mu.shape[0]
        self.total += mu.sum(dim=0)
        self.total_sq += mu.pow(2).sum(dim=0)

    def variances(self) -> Tensor:
        mean = self.total / self.count
        return (self.total_sq / self.count - mean.pow(2)).clamp_min(0)

    def compute(self) -> Tensor:
        return (self.variances() > self.threshold).sum().float()


# ------------------------------------------------------------------------------------------------------ module
class VAEModule(GenerativeModule):
    """VAE / beta-VAE trained on the negative ELBO, evaluated with ELBO, IWAE bound and bits/dim.

    ``image_shape`` and ``value_range`` come from the datamodule when run through the CLI.

    Logged (nats per image; ``train/*_step`` on the steps the logger writes and ``train/*_epoch`` over every batch,
    ``val/*`` and ``test/*`` per epoch, synced across ranks):
    ``loss`` (the beta-weighted objective), ``recon`` (-log p(x|z)), ``kl``, ``nelbo`` (recon + kl: the negative
    ELBO), ``active_units``; ``train/beta`` (with a KL warm-up) and ``train/gaussian_scale`` (when learned); in
    validation/test ``iwae_nll`` (when k > 0) and, where the likelihood is normalised, ``bpd`` and ``iwae_bpd``.

    Args:
        image_shape: (channels, height, width) of the images.
        value_range: the data's value range: (0, 1) or (-1, 1) (Bernoulli needs (0, 1)).
        architecture: ``mlp`` (the guide's VAE, ``docs/guide.md``, on flattened pixels) or ``conv`` (``ConvVAE``, 32x32 or 64x64 images).
        latent_dim: size of z.
        hidden_dim: mlp only: width of the hidden layers (guide: 400).
        feature_maps: conv only: channels of the first stage, doubled per stage (as the DCGAN's feature maps).
        num_hidden_layers: mlp only: hidden layers in encoder and decoder each (guide: 1).
        likelihood: ``bernoulli`` (logits, BCE) or ``gaussian`` (means, discretised Gaussian; see the module docs).
        gaussian_scale: fixed standard deviation of the Gaussian in the data's units; ``null`` learns it.
        binarize: bernoulli only: model dynamically binarised pixels instead of grey levels as targets.
        beta: weight of the KL term (1: VAE; 4: the guide's ``BetaVAE``).
        kl_warmup_steps: the KL weight rises linearly from ~0 to ``beta`` over this many steps (0: off).
        lr: Adam learning rate (guide: 1e-3). lr_schedule: ``constant`` (guide) or ``cosine`` decay to 0.
        val_iwae_samples / test_iwae_samples: k of the IWAE bound in validation / test (0: skip it).
        iwae_chunk: decoder evaluations per forward pass while computing the IWAE bound (bounds memory).
        active_unit_threshold: posterior-mean variance above which a latent unit counts as active.
        traversal_dims: latent dimensions shown in the traversal panel (the most used ones; 0: no panel).
        noise_seed: seed of the noise ``predict`` draws (combined with the rank and batch index).
        compile: run the network through ``torch.compile`` (see ``training/compiling.py``).
        channels_last: keep the convolutions' weights and activations in NHWC memory layout (see
            ``training/memory_format.py``; off in the VAE configs: 1.00-1.09x).
    """

    inference_args: ClassVar[frozenset[str]] = frozenset({
        "val_iwae_samples", "test_iwae_samples", "iwae_chunk", "active_unit_threshold", "traversal_dims", "noise_seed",
    })
    # On a CPU with native bf16 (benchmarks/precision.py): bf16-mixed 1.17-1.51x faster (vae_mnist ... betavae_celeba).
    precision_on_bf16_cpu: ClassVar[str] = "bf16-mixed"

    def __init__(
        self,
        image_shape: tuple[int, int, int] = (1, 28, 28),
        value_range: tuple[float, float] | None = VALUE_RANGES["zero_one"],
        architecture: Literal["mlp", "conv"] = "mlp",
        latent_dim: int = 20,
        hidden_dim: int = 400,
        feature_maps: int = 32,
        num_hidden_layers: int = 1,
        likelihood: Literal["bernoulli", "gaussian"] = "bernoulli",
        gaussian_scale: float | None = None,
        binarize: bool = False,
        beta: float = 1.0,
        kl_warmup_steps: int = 0,
        lr: float = 1e-3,
        lr_schedule: Literal["constant", "cosine"] = "constant",
        val_iwae_samples: int = 0,
        test_iwae_samples: int = 100,
        iwae_chunk: int = 4096,
        active_unit_threshold: float = 0.01,
        traversal_dims: int = 10,
        noise_seed: int = 0,
        compile: bool = False,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self._check_config(architecture, num_hidden_layers, likelihood, gaussian_scale, binarize, beta)
        self.save_hyperparameters()
        self.image_shape = tuple(image_shape)
        self.value_range = self._checked_range(value_range, likelihood)
        self.net: GaussianLatentAutoencoder
        if architecture == "mlp":
            self.net = VAE(math.prod(image_shape), hidden_dim, latent_dim, num_hidden_layers, output_shape=image_shape)
        else:
            self.net = ConvVAE(self.image_shape, latent_dim, feature_maps)
        # log of the Gaussian's standard deviation: learned (starting at 0.1) or a fixed buffer; None for Bernoulli
        if likelihood == "gaussian" and gaussian_scale is None:
            self.log_scale = torch.nn.Parameter(torch.tensor(math.log(0.1)))
        elif likelihood == "gaussian":
            self.register_buffer("log_scale", torch.tensor(math.log(gaussian_scale)))
        else:
            self.log_scale = None
        self.train_means = RunningMeans(TRAIN_TERMS)
        self.train_active = ActiveUnits(latent_dim, active_unit_threshold)
        self.val_active = ActiveUnits(latent_dim, active_unit_threshold)
        self.test_active = ActiveUnits(latent_dim, active_unit_threshold)
        self.example_input_array = torch.zeros(2, *image_shape)
        self.refuse_channels_last_without_convolutions()

    @staticmethod
    def _checked_range(value_range: tuple[float, float] | None, likelihood: str) -> tuple[float, float]:
        if likelihood == "bernoulli":
            return require_value_range(
                "a Bernoulli decoder", value_range, "zero_one", "it models pixels as probabilities; or set "
                "model.init_args.likelihood: gaussian"
            )
        if value_range is None:
            raise ValueError(
                "a Gaussian VAE needs pixels in a known range, but the data are standardised (mean_std): set "
                "data.init_args.normalization to zero_one or minus_one_one."
            )
        return tuple(value_range)

    @staticmethod
    def _check_config(architecture, num_hidden_layers, likelihood, gaussian_scale, binarize, beta) -> None:
        if binarize and likelihood != "bernoulli":
            raise ValueError("binarize=true only applies to the Bernoulli likelihood: set model.init_args.binarize: false.")
        if gaussian_scale is not None and (likelihood != "gaussian" or gaussian_scale <= 0):
            raise ValueError(
                f"gaussian_scale={gaussian_scale} needs likelihood: gaussian and a positive value (null learns it); "
                f"check model.init_args.gaussian_scale."
            )
        if architecture == "conv" and num_hidden_layers != 1:
            raise ValueError("num_hidden_layers sets the MLP's depth; the conv VAE's depth follows the image size. "
                             "Leave model.init_args.num_hidden_layers at 1 with architecture: conv.")
        if beta <= 0:
            raise ValueError(f"beta={beta} must be positive (1: VAE, >1: beta-VAE); check model.init_args.beta.")

    # -------------------------------------------------------------------------------------------- the model
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.net(x)  # decoder output (B, C, H, W), mu, logvar (B, L)

    def log_likelihood(self, output: Tensor, x: Tensor) -> Tensor:
        """log p(x | z) per image (B,) from the decoder output for z."""
        if self.hparams.likelihood == "bernoulli":
            return bernoulli_log_likelihood(output, x)
        return discretized_gaussian_log_likelihood(output, self.log_scale, x, self.value_range)

    def to_images(self, output: Tensor) -> Tensor:
        """Decoder output -> images in [0, 1]: Bernoulli means sigmoid(logits), or Gaussian means rescaled."""
        if self.hparams.likelihood == "bernoulli":
            return torch.sigmoid(output.float())
        return to_unit_range(output, self.value_range)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` images (n, C, H, W) in [0, 1]: the decoder's means for z ~ N(0, I) drawn with ``generator``."""
        return self.to_images(self.net.decode(self.net.prior_sample(n, generator)))

    def targets(self, x: Tensor, batch_idx: int | None = None) -> Tensor:
        """What the likelihood models: the pixels, or with ``binarize`` binary pixels drawn from the grey levels.

        Training draws fresh ones each step (``batch_idx=None``); evaluation draws them from the batch index, so
        every epoch scores the same binarised images.
        """
        if not self.hparams.binarize:
            return x
        generator = None
        if batch_idx is not None:
            generator = seeded_generator(x.device, self.global_rank, batch_idx)
        return torch.bernoulli(x.float(), generator=generator)

    @property
    def reports_bits_per_dim(self) -> bool:
        """Bits/dim only where the likelihood is normalised over the pixel values (not BCE on grey levels)."""
        return self.hparams.likelihood == "gaussian" or self.hparams.binarize

    def beta_now(self) -> float:
        return self.hparams.beta * linear_warmup(self.global_step, self.hparams.kl_warmup_steps)

    # ----------------------------------------------------------------------------------------- IWAE bound
    @torch.no_grad()
    def iwae_log_likelihood(self, x: Tensor, num_samples: int) -> Tensor:
        """The importance-weighted lower bound on log p(x) with ``num_samples`` samples of q(z|x): (B,) nats.

        log (1/k) sum_i p(x|z_i) p(z_i) / q(z_i|x), z_i ~ q(z|x), evaluated ``iwae_chunk`` decoder calls at a time.
        """
        mu, logvar = (t.float() for t in self.net.encode(x))
        std = torch.exp(0.5 * logvar)
        batch = x.shape[0]
        per_chunk = max(1, self.hparams.iwae_chunk // batch)
        log_weights = []
        for start in range(0, num_samples, per_chunk):
            n = min(per_chunk, num_samples - start)
            eps = torch.randn(n, *mu.shape, device=mu.device)  # (n, B, L)
            z = mu + std * eps
            output = self.net.decode(z.flatten(0, 1))  # (n * B, C, H, W)
            log_px = self.log_likelihood(output, x.repeat(n, *([1] * (x.dim() - 1)))).view(n, batch)
            log_pz = -0.5 * (z.pow(2) + LOG_2PI).sum(dim=-1)
            log_qz = -0.5 * (eps.pow(2) + logvar + LOG_2PI).sum(dim=-1)
            log_weights.append(log_px + log_pz - log_qz)
        return torch.logsumexp(torch.cat(log_weights), dim=0) - math.log(num_samples)

    # -------------------------------------------------------------------------------------------- steps
    def _elbo_terms(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Per-image reconstruction -log p(x|z) (one z ~ q), KL, and the posterior means."""
        output, mu, logvar = self(x)
        return -self.log_likelihood(output, x), gaussian_kl(mu, logvar), mu

    def training_loss(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The beta-weighted objective of a batch of targets and its terms (``_batch_terms``); updates the epoch means
        and active units. What a training step computes, Lightning's loop and logging aside."""
        recon, kl, mu = self._elbo_terms(x)
        loss = (recon + self.beta_now() * kl).mean()
        terms = self._batch_terms(recon, kl, loss)
        self.train_means.update(terms, x.shape[0])
        self.train_active.update(mu)
        return loss, terms

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x = self.targets(batch[0])
        loss, terms = self.training_loss(x)
        if logger_writes_this_step(self):  # logging every step would cost ~1/4 of an MLP VAE's step on a CPU
            values = {f"train/{name}_step": value for name, value in terms.items()}
            if self.hparams.kl_warmup_steps:  # else beta is the constant hyperparameter
                values["train/beta"] = self.beta_now()
            if self.log_scale is not None:
                values["train/gaussian_scale"] = self.log_scale.exp()
            self.log_dict(values, on_step=True, on_epoch=False, batch_size=x.shape[0])
        return loss

    def on_train_epoch_end(self) -> None:
        """Epoch means of the training terms (batch-weighted, summed over DDP ranks) and the epoch's active units."""
        means = self.train_means.compute()
        self.train_means.reset()
        self.log_dict({f"train/{name}_epoch": value for name, value in means.items()}, on_epoch=True)
        self.log("train/active_units", self.train_active, on_epoch=True)

    @staticmethod
    def _batch_terms(recon: Tensor, kl: Tensor, loss: Tensor) -> dict[str, Tensor]:
        """The batch means logged in every stage (``TRAIN_TERMS``): the objective, its two terms and the -ELBO."""
        return {"loss": loss, "recon": recon.mean(), "kl": kl.mean(), "nelbo": (recon + kl).mean()}

    def _log_terms(self, stage: str, recon: Tensor, kl: Tensor, mu: Tensor, loss: Tensor) -> None:
        """Validation/test: per-image terms -> epoch means (synced across ranks) and active units."""
        values = self._batch_terms(recon, kl, loss)
        if self.reports_bits_per_dim:
            values["bpd"] = values["nelbo"] / (math.prod(self.image_shape) * math.log(2))
        self.log_dict(
            {f"{stage}/{name}": value for name, value in values.items()},
            on_step=False, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=recon.shape[0],
        )
        active = getattr(self, f"{stage}_active")
        active.update(mu)
        self.log(f"{stage}/active_units", active, on_step=False, on_epoch=True)

    def _evaluate(self, batch: tuple[Tensor, Tensor], batch_idx: int, stage: str, k: int) -> None:
        x = self.targets(batch[0], batch_idx)
        recon, kl, mu = self._elbo_terms(x)
        self._log_terms(stage, recon, kl, mu, (recon + self.hparams.beta * kl).mean())
        if k > 0:
            nll = -self.iwae_log_likelihood(x, k)
            metrics = {f"{stage}/iwae_nll": nll.mean()}
            if self.reports_bits_per_dim:
                metrics[f"{stage}/iwae_bpd"] = nll.mean() / (math.prod(self.image_shape) * math.log(2))
            self.log_dict(metrics, on_step=False, on_epoch=True, sync_dist=True, batch_size=x.shape[0])

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "val", self.hparams.val_iwae_samples)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "test", self.hparams.test_iwae_samples)

    # ------------------------------------------------------------------------------------------- images
    @torch.no_grad()
    def sample_images(self, images: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        """Panels for ``ImageSampler``: reconstructions, prior samples, interpolations and latent traversals.

        * ``reconstructions``: rows of inputs, each followed by a row of their reconstructions (posterior means).
        * ``prior_samples``: decoded z ~ N(0, I) from ``generator`` (the same noise every epoch).
        * ``interpolations``: per row, image a, decodings of (1 - t) mu_a + t mu_b for 8 values of t, image b.
        * ``traversals``: one row per latent unit (the ``traversal_dims`` with the largest mean KL over the batch),
          the first image's posterior mean with that unit set to -3 ... 3.
        """
        inputs = to_unit_range(images, self.value_range)
        mu, logvar = self.net.encode(images)
        n = images.shape[0]
        cols = min(8, n)
        rows = n // cols
        recon = self.to_images(self.net.decode(mu))
        pairs = torch.stack([inputs[: rows * cols], recon[: rows * cols]]).view(2, rows, cols, *self.image_shape)
        panels = {
            "reconstructions": pairs.transpose(0, 1).flatten(0, 1),  # (2 * rows, cols, C, H, W)
            "prior_samples": self.generate(n, generator),
        }
        if n >= 2:
            p = min(8, n // 2)
            t = torch.linspace(0, 1, 8, device=mu.device).view(1, 8, 1)
            z = (1 - t) * mu[:p, None] + t * mu[p : 2 * p, None]  # (p, 8, L)
            middle = self.to_images(self.net.decode(z.flatten(0, 1))).view(p, 8, *self.image_shape)
            panels["interpolations"] = torch.cat([inputs[:p, None], middle, inputs[p : 2 * p, None]], dim=1)
        dims = min(self.hparams.traversal_dims, self.hparams.latent_dim)
        if dims > 0:
            units = gaussian_kl_per_unit(mu, logvar).mean(dim=0).topk(dims).indices  # the units the encoder uses most
            values = torch.linspace(-3, 3, 9, device=mu.device)
            z = mu[:1].float().repeat(dims, 9, 1)  # (dims, 9, L)
            for row, unit in enumerate(units.tolist()):
                z[row, :, unit] = values
            panels["traversals"] = self.to_images(self.net.decode(z.flatten(0, 1))).view(dims, 9, *self.image_shape)
        return panels

    def reported_metrics(self) -> dict[str, tuple[str, str]]:
        k = self.hparams.test_iwae_samples
        if self.reports_bits_per_dim:
            return {"test/bpd": ("-ELBO (bits/dim)", "{:.3f}"), "test/iwae_bpd": (f"IWAE-{k} (bits/dim)", "{:.3f}")}
        return {"test/nelbo": ("-ELBO (nats)", "{:.2f}"), "test/iwae_nll": (f"IWAE-{k} NLL (nats)", "{:.2f}"),
                "test/kl": ("KL (nats)", "{:.2f}"), "test/active_units": ("active units", "{:.1f}")}

    # ------------------------------------------------------------------------------------------ optimiser
    def configure_optimizers(self):
        optimizer = self.adam(self, self.hparams.lr)
        if self.hparams.lr_schedule == "constant":
            return optimizer
        scheduler = warmup_cosine(optimizer, 0, total_training_steps(self.trainer))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class BetaVAEModule(VAEModule):
    """beta-VAE (Higgins et al. 2017): ``VAEModule`` with the guide's ``BetaVAE`` default beta = 4."""

    def __init__(self, *args, beta: float = 4.0, **kwargs) -> None:
        super().__init__(*args, beta=beta, **kwargs)
