"""Gaussian diffusion (Ho, Jain & Abbeel, "Denoising Diffusion Probabilistic Models", NeurIPS 2020): images are
destroyed by T steps of small Gaussian noise, and a network learns to undo one step at a time; sampling starts from
pure noise. Here: noise schedules, the forward process q, the training loss, and DDPM / DDIM / DPM-Solver++ samplers
(docs/guide.md, Part 4, Steps 1, 3 and 4).

Notation (Ho et al. 2020; Song et al., "Denoising Diffusion Implicit Models", ICLR 2021). Timesteps are indices
t = 0 .. T-1 (the guide's), t = -1 stands for the data (ᾱ_{-1} = 1), and with ᾱ_t = prod_{s <= t} (1 - β_s):

    q(x_t | x_0)          = N(sqrt(ᾱ_t) x_0, (1 - ᾱ_t) I)
    q(x_{t-1} | x_t, x_0) = N(c1_t x_0 + c2_t x_t, β̃_t I),  β̃_t = β_t (1 - ᾱ_{t-1}) / (1 - ᾱ_t)
    c1_t = β_t sqrt(ᾱ_{t-1}) / (1 - ᾱ_t),  c2_t = (1 - ᾱ_{t-1}) sqrt(α_t) / (1 - ᾱ_t)

The schedule tensors are buffers, so they follow the module to its device (the guide's indexed CPU tensors with CUDA
indices). They are kept in float64 (1 - ᾱ_t near t = 0 needs it) and cast to float32 where they meet images, so
the arithmetic is float32 even under autocast.
"""

from __future__ import annotations

import math
import sys
from typing import Callable, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

Schedule = Literal["linear", "cosine"]
Prediction = Literal["eps", "x0", "v"]
DDPMVariance = Literal["posterior", "beta"]
Sampler = Literal["ddpm", "ddim", "dpm_solver"]
Denoiser = Callable[[Tensor, Tensor], Tensor]


def linear_betas(num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """The DDPM (and guide's) schedule: β linear from ``beta_start`` to ``beta_end``."""
    return torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)


def cosine_betas(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """Nichol & Dhariwal (2021): ᾱ(t) = cos²((t/T + s) / (1 + s) · π/2), β_t = 1 - ᾱ(t+1)/ᾱ(t), clipped at 0.999."""
    steps = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
    alpha_bar = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=max_beta)


def log_snr(alpha_bar: Tensor) -> Tensor:
    """λ = log(α / σ) = ½ log(ᾱ / (1 - ᾱ)), the half log-SNR that DPM-Solver steps in; ∞ at ᾱ = 1."""
    return 0.5 * torch.log(alpha_bar / (1 - alpha_bar))


def _at(values: Tensor, t: Tensor) -> Tensor:
    """values[t] shaped (B, 1, 1, 1) to broadcast over images."""
    return values[t].float()[:, None, None, None]


def _per_image(*coefs: Tensor) -> tuple[Tensor, ...]:
    """(B,) float64 coefficients as float32 (B, 1, 1, 1), to broadcast over images."""
    return tuple(c.float()[:, None, None, None] for c in coefs)


class GaussianDiffusion(nn.Module):
    """The diffusion process for a denoiser that predicts ``prediction`` ("eps", "x0" or "v") from (x_t, t).

    Args:
        num_timesteps: T.
        schedule: "linear" (β from ``beta_start`` to ``beta_end``, the guide's) or "cosine".
        prediction: what the network outputs: the noise ε (DDPM, the guide's), x_0, or v = sqrt(ᾱ) ε - sqrt(1-ᾱ) x_0
            (Salimans & Ho, 2022).
        clip_range: the data range; the predicted x_0 is clamped to it while sampling (``None``: no clamping).
    """

    def __init__(
        self,
        num_timesteps: int = 1000,
        schedule: Schedule = "linear",
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        prediction: Prediction = "eps",
        clip_range: tuple[float, float] | None = (-1.0, 1.0),
    ):
        super().__init__()
        if schedule == "linear":
            betas = linear_betas(num_timesteps, beta_start, beta_end)
        elif schedule == "cosine":
            betas = cosine_betas(num_timesteps)
        else:
            raise ValueError(f"schedule={schedule!r}: use 'linear' or 'cosine'.")
        if prediction not in ("eps", "x0", "v"):
            raise ValueError(f"prediction={prediction!r}: use 'eps', 'x0' or 'v'.")
        if not (0 < betas.min() and betas.max() < 1):
            raise ValueError(f"betas must lie in (0, 1); got [{betas.min():.3g}, {betas.max():.3g}].")
        self.num_timesteps = num_timesteps
        self.prediction = prediction
        self.clip_range = clip_range

        alphas_cumprod = torch.cumprod(1 - betas, dim=0)
        alphas_cumprod_prev = F.pad(alphas_cumprod[:-1], (1, 0), value=1.0)
        posterior_variance = betas * (1 - alphas_cumprod_prev) / (1 - alphas_cumprod)
        buffers = {
            "betas": betas,
            "alphas_cumprod": alphas_cumprod,
            "alphas_cumprod_prev": alphas_cumprod_prev,
            "sqrt_alphas_cumprod": alphas_cumprod.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1 - alphas_cumprod).sqrt(),
            "posterior_variance": posterior_variance,
            "posterior_mean_coef1": betas * alphas_cumprod_prev.sqrt() / (1 - alphas_cumprod),
            "posterior_mean_coef2": (1 - alphas_cumprod_prev) * (1 - betas).sqrt() / (1 - alphas_cumprod),
        }
        for name, value in buffers.items():  # derived from the arguments, so not part of checkpoints
            self.register_buffer(name, value, persistent=False)

    # ------------------------------------------------------------------------------------------ forward process
    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t = sqrt(ᾱ_t) x_0 + sqrt(1 - ᾱ_t) ε."""
        return _at(self.sqrt_alphas_cumprod, t) * x0 + _at(self.sqrt_one_minus_alphas_cumprod, t) * noise

    def q_posterior(self, x0: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and variance of q(x_{t-1} | x_t, x_0)."""
        mean = _at(self.posterior_mean_coef1, t) * x0 + _at(self.posterior_mean_coef2, t) * x_t
        return mean, _at(self.posterior_variance, t).expand_as(mean)

    def target(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """What the network should output for (x_t, t): ε, x_0 or v."""
        if self.prediction == "eps":
            return noise
        if self.prediction == "x0":
            return x0
        return _at(self.sqrt_alphas_cumprod, t) * noise - _at(self.sqrt_one_minus_alphas_cumprod, t) * x0

    def loss(self, model: Denoiser, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """The simple DDPM objective: MSE between the network output on x_t and its target (docs/guide.md, Part 4,
        Step 3: ||ε - ε_θ||²)."""
        output = model(self.q_sample(x0, t, noise), t)
        return F.mse_loss(output.float(), self.target(x0, t, noise))

    # ----------------------------------------------------------------------------------------- reverse process
    def alpha_bar(self, t: Tensor) -> Tensor:
        """ᾱ_t (float64), with ᾱ_{-1} = 1 for the data."""
        return torch.where(t >= 0, self.alphas_cumprod[t.clamp(min=0)], 1.0)

    def predict_x0_eps(self, model: Denoiser, x_t: Tensor, t: Tensor, clip: bool = True) -> tuple[Tensor, Tensor]:
        """The network's x_0 (clamped to the data range if ``clip``) and the ε consistent with it and x_t."""
        output = model(x_t, t).float()
        a, s = _at(self.sqrt_alphas_cumprod, t), _at(self.sqrt_one_minus_alphas_cumprod, t)
        if self.prediction == "eps":
            x0 = (x_t - s * output) / a
        elif self.prediction == "x0":
            x0 = output
        else:
            x0 = a * x_t - s * output
        if clip and self.clip_range is not None:
            x0 = x0.clamp(*self.clip_range)
        eps = (x_t - a * x0) / s
        return x0, eps

    def ddpm_mean_variance(
        self, model: Denoiser, x_t: Tensor, t: Tensor, variance: DDPMVariance = "posterior", clip: bool = True
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Mean, variance and x_0 of the ancestral step p(x_{t-1} | x_t) = q(x_{t-1} | x_t, x̂_0), σ² = β̃_t or β_t."""
        x0, _ = self.predict_x0_eps(model, x_t, t, clip)
        mean, posterior_var = self.q_posterior(x0, x_t, t)
        if variance == "posterior":
            var = posterior_var
        elif variance == "beta":
            var = _at(self.betas, t).expand_as(mean)
        else:
            raise ValueError(f"variance={variance!r}: use 'posterior' (β̃) or 'beta' (β).")
        return mean, var, x0

    def ddim_mean_variance(
        self, model: Denoiser, x_t: Tensor, t: Tensor, t_prev: Tensor, eta: float = 0.0, clip: bool = True
    ) -> tuple[Tensor, Tensor, Tensor]:
        """DDIM step t -> t_prev (t_prev = -1: to x_0): mean sqrt(ᾱ') x̂_0 + sqrt(1 - ᾱ' - σ²) ε̂ and variance σ²,

        σ² = η² (1 - ᾱ') / (1 - ᾱ) · (1 - ᾱ / ᾱ'). η = 1 over all T steps is the ancestral DDPM step with β̃.
        """
        x0, _ = self.predict_x0_eps(model, x_t, t, clip)
        a_t, a_prev = self.alpha_bar(t), self.alpha_bar(t_prev)  # float64 coefficients, cast once at the end
        var = eta**2 * (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
        eps_coef = (1 - a_prev - var).clamp(min=0).sqrt() / (1 - a_t).sqrt()  # ε̂ = (x_t - sqrt(ᾱ) x̂_0) / sqrt(1 - ᾱ)
        coef_x0 = a_prev.sqrt() - eps_coef * a_t.sqrt()
        coef_x0, coef_xt, var = _per_image(coef_x0, eps_coef, var)
        mean = coef_x0 * x0 + coef_xt * x_t
        return mean, var.expand_as(mean), x0

    def dpm_solver_step(
        self, model: Denoiser, x_t: Tensor, t: Tensor, t_prev: Tensor,
        last: tuple[Tensor, Tensor] | None = None, clip: bool = True,
    ) -> tuple[Tensor, Tensor]:
        """DPM-Solver++(2M) step t -> t_prev (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of
        Diffusion Probabilistic Models", Algorithm 2), in data-prediction form with α = sqrt(ᾱ), σ = sqrt(1 - ᾱ),
        λ = log(α / σ) and h = λ' - λ:

            x' = (σ' / σ) x_t + α' (1 - e^{-h}) D,   D = x̂_0 + (x̂_0 - x̂_0^last) / (2r),  r = h_last / h

        ``last`` = (t_last, x̂_0 at t_last) of the previous step; without it D = x̂_0, the first-order step, which is
        DDIM's with η = 0. The step to the data (t_prev = -1, λ' = ∞) must be first order. Returns x' and x̂_0.
        """
        x0, _ = self.predict_x0_eps(model, x_t, t, clip)
        a_t, a_prev = self.alpha_bar(t), self.alpha_bar(t_prev)  # (B,) float64
        h = log_snr(a_prev) - log_snr(a_t)  # ∞ at t_prev = -1
        d = x0
        if last is not None:
            t_last, x0_last = last
            (half_inv_r,) = _per_image(h / (log_snr(a_t) - log_snr(self.alpha_bar(t_last))) / 2)
            d = x0 + half_inv_r * (x0 - x0_last)
        coef_xt, coef_d = _per_image(((1 - a_prev) / (1 - a_t)).sqrt(), -a_prev.sqrt() * torch.expm1(-h))
        return coef_xt * x_t + coef_d * d, x0

    # -------------------------------------------------------------------------------------------------- samplers
    def ddim_timesteps(self, num_steps: int) -> list[int]:
        """``num_steps`` timesteps from T-1 down, evenly spaced ("trailing", so sampling starts at pure noise): DDIM's,
        and DPM-Solver++'s (uniform in t, the reference's "time_uniform"; both then step to the data, t = -1)."""
        if not 1 <= num_steps <= self.num_timesteps:
            raise ValueError(f"num_steps={num_steps} must be in [1, T={self.num_timesteps}].")
        steps = torch.arange(self.num_timesteps, 0, -self.num_timesteps / num_steps, dtype=torch.float64)
        return [int(s) for s in steps.round() - 1]

    @torch.no_grad()
    def sample(
        self,
        model: nn.Module,
        shape: tuple[int, ...],
        sampler: Sampler = "ddim",
        num_steps: int | None = 50,
        eta: float = 0.0,
        variance: DDPMVariance = "posterior",
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        noise: Tensor | None = None,
        trajectory: bool = False,
        progress: bool | None = None,
    ) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Generate ``shape`` images with ancestral DDPM (all T steps, σ² = ``variance``), DDIM (``num_steps``,
        ``eta``) or DPM-Solver++(2M) ("dpm_solver", ``num_steps``), from ``noise`` or noise drawn with ``generator``.
        The result is clamped to the data range.

        Returns the images, and with ``trajectory=True`` also the predicted x_0 after every step. The model runs in
        eval mode and is put back in the mode it was in. ``progress`` (default: for runs over 100 steps, in a
        terminal) shows a bar.
        """
        device = device if device is not None else self.betas.device
        x = noise if noise is not None else torch.randn(shape, generator=generator, device=device)
        if sampler == "ddpm":
            if num_steps not in (None, self.num_timesteps):
                raise ValueError(
                    f"the ancestral DDPM sampler takes all T={self.num_timesteps} steps (got num_steps={num_steps}); "
                    f"use sampler 'ddim' for fewer steps."
                )
            steps = list(range(self.num_timesteps - 1, -1, -1))
        elif sampler in ("ddim", "dpm_solver"):
            steps = self.ddim_timesteps(self.num_timesteps if num_steps is None else num_steps)
        else:
            raise ValueError(f"sampler={sampler!r}: use 'ddpm', 'ddim' or 'dpm_solver'.")
        progress = len(steps) > 100 and sys.stderr.isatty() if progress is None else progress  # no bar in a log file

        was_training = model.training
        model.eval()
        path, last = [], None  # last: DPM-Solver++'s (t, x̂_0) of the previous step
        try:
            for i, step in enumerate(tqdm(steps, desc=f"{sampler} sampling", disable=not progress, leave=False)):
                final = i + 1 == len(steps)
                t = torch.full((x.shape[0],), step, device=x.device, dtype=torch.long)
                t_prev = torch.full_like(t, -1 if final else steps[i + 1])
                if sampler == "ddpm":
                    mean, var, x0 = self.ddpm_mean_variance(model, x, t, variance)
                elif sampler == "ddim":
                    mean, var, x0 = self.ddim_mean_variance(model, x, t, t_prev, eta)
                else:  # the final step, to λ = ∞, is first order (the reference's "lower_order_final")
                    mean, x0 = self.dpm_solver_step(model, x, t, t_prev, None if final else last)
                    last = (t, x0)
                deterministic = final or sampler == "dpm_solver" or (sampler == "ddim" and eta == 0)
                noise = None if deterministic else torch.randn(x.shape, generator=generator, device=x.device)
                x = mean if noise is None else mean + var.sqrt() * noise
                if trajectory:
                    path.append(x0)
        finally:
            model.train(was_training)
        if self.clip_range is not None:
            x = x.clamp(*self.clip_range)
        return (x, path) if trajectory else x
