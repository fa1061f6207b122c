"""Variational autoencoders (Kingma & Welling, "Auto-Encoding Variational Bayes", ICLR 2014): an encoder maps an image
to a Gaussian q(z|x) over latents, a sample of it (drawn with the reparameterisation trick, so gradients reach the
encoder) is decoded back to pixels, and training maximises the evidence lower bound (ELBO) on log p(x).

The MLP ``Encoder`` (784-400-20), ``reparameterize``, ``Decoder`` and ``VAE`` of docs/guide.md, Part 2 (Steps 2-5)
keep their layers and defaults,
except that the decoder returns **logits**: the sigmoid is applied only when images are produced, so the loss can use
``binary_cross_entropy_with_logits`` (safe under autocast, stable for saturated pixels). ``ConvVAE`` is the
convolutional variant for 32x32 (CIFAR-10, padded MNIST) and 64x64 (CelebA) images.

Every VAE here exposes the same interface: ``encode(x) -> (mu, logvar)``, ``decode(z) -> decoder output`` shaped like
the images it was built for, ``forward(x) -> (output, mu, logvar)`` and ``sample(n)``. What the decoder output means
(Bernoulli logits or Gaussian means) is decided by the objective in ``lightning_modules/vae.py``.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


def reparameterize(mu: Tensor, logvar: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """z = mu + sigma * eps with eps ~ N(0, I): a sample of q(z|x) that is differentiable w.r.t. mu and logvar."""
    std = torch.exp(0.5 * logvar)
    eps = torch.randn(std.shape, generator=generator, device=std.device, dtype=std.dtype)
    return mu + eps * std


class Encoder(nn.Module):
    """The guide's MLP encoder (docs/guide.md, Part 2, Step 2): x (B, input_dim) -> hidden ReLU layer(s) -> mu, logvar
    (B, latent_dim) of q(z|x).

    ``num_hidden_layers=1`` (the default) is the guide's single 400-unit layer.
    """

    def __init__(self, input_dim: int = 784, hidden_dim: int = 400, latent_dim: int = 20, num_hidden_layers: int = 1):
        super().__init__()
        if num_hidden_layers < 1:
            raise ValueError(f"num_hidden_layers={num_hidden_layers}: the MLP needs at least one hidden layer.")
        self.fc1 = nn.Linear(input_dim, hidden_dim)
        self.hidden = nn.ModuleList([nn.Linear(hidden_dim, hidden_dim) for _ in range(num_hidden_layers - 1)])
        self.fc_mu = nn.Linear(hidden_dim, latent_dim)
        self.fc_logvar = nn.Linear(hidden_dim, latent_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = F.relu(self.fc1(x.flatten(1)))  # (B, hidden_dim); images (B, C, H, W) are flattened
        for layer in self.hidden:
            h = F.relu(layer(h))
        return self.fc_mu(h), self.fc_logvar(h)  # (B, latent_dim) each


class Decoder(nn.Module):
    """The guide's MLP decoder (docs/guide.md, Part 2, Step 4): z (B, latent_dim) -> hidden ReLU layer(s) -> logits
    (B, output_dim) (no sigmoid: the loss takes logits)."""

    def __init__(self, latent_dim: int = 20, hidden_dim: int = 400, output_dim: int = 784, num_hidden_layers: int = 1):
        super().__init__()
        self.fc1 = nn.Linear(latent_dim, hidden_dim)
        self.hidden = nn.ModuleList([nn.Linear(hidden_dim, hidden_dim) for _ in range(num_hidden_layers - 1)])
        self.fc2 = nn.Linear(hidden_dim, output_dim)

    def forward(self, z: Tensor) -> Tensor:
        h = F.relu(self.fc1(z))
        for layer in self.hidden:
            h = F.relu(layer(h))
        return self.fc2(h)  # (B, output_dim) logits


class GaussianLatentAutoencoder(nn.Module):
    """What every VAE shares: an encoder to (mu, logvar) of a diagonal Gaussian q(z|x), a decoder, a N(0, I) prior."""

    encoder: nn.Module
    decoder: nn.Module

    def __init__(self, latent_dim: int, output_shape: tuple[int, ...]):
        super().__init__()
        self.latent_dim = latent_dim
        self.output_shape = tuple(output_shape)  # what decode() returns per sample

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.encoder(x)  # mu, logvar: (B, latent_dim) each

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(z).view(z.shape[0], *self.output_shape)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(decoder output for one z ~ q(z|x), mu, logvar)."""
        mu, logvar = self.encode(x)
        return self.decode(reparameterize(mu, logvar)), mu, logvar

    def prior_sample(self, num_samples: int, generator: torch.Generator | None = None) -> Tensor:
        """z ~ N(0, I) on the module's own device: (num_samples, latent_dim)."""
        device = next(self.parameters()).device
        return torch.randn(num_samples, self.latent_dim, generator=generator, device=device)

    @torch.no_grad()
    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> Tensor:
        """Bernoulli means sigmoid(decode(z)), z ~ p(z), in [0, 1] (the guide's ``sample``, on the module's device).

        For a Gaussian decoder use ``VAEModule.generate``, which maps decoder means to images.
        """
        return torch.sigmoid(self.decode(self.prior_sample(num_samples, generator)))


class VAE(GaussianLatentAutoencoder):
    """The guide's MLP VAE on flattened images (docs/guide.md, Part 2, Step 5): ``VAE()`` is 784-400-20 with a
    20-400-784 decoder."""

    def __init__(self, input_dim: int = 784, hidden_dim: int = 400, latent_dim: int = 20, num_hidden_layers: int = 1,
                 output_shape: tuple[int, ...] | None = None):
        super().__init__(latent_dim, output_shape or (input_dim,))
        if math.prod(self.output_shape) != input_dim:
            raise ValueError(f"output_shape {self.output_shape} does not hold input_dim={input_dim} values.")
        self.encoder = Encoder(input_dim, hidden_dim, latent_dim, num_hidden_layers)
        self.decoder = Decoder(latent_dim, hidden_dim, input_dim, num_hidden_layers)


def _num_stages(image_shape: tuple[int, int, int]) -> int:
    """Stride-2 stages from the image side down to 4x4; the side must be a power of two >= 8."""
    _, height, width = image_shape
    if height != width or height < 8 or height & (height - 1):
        raise ValueError(
            f"the convolutional VAE needs square images with a power-of-two side >= 8 (e.g. 32 or 64), got "
            f"{height}x{width}: set data.init_args.image_size (MNIST: 32 pads to 32x32), or use architecture: mlp."
        )
    return int(math.log2(height)) - 2


class ConvEncoder(nn.Module):
    """(B, C, S, S) -> [Conv 4x4 stride 2 + SiLU] per stage, channels base, 2*base, ... -> 4x4 -> mu, logvar."""

    def __init__(self, image_shape: tuple[int, int, int] = (3, 32, 32), latent_dim: int = 128, base_channels: int = 64):
        super().__init__()
        layers: list[nn.Module] = []
        channels = image_shape[0]
        for stage in range(_num_stages(image_shape)):
            out = base_channels * 2**stage
            layers += [nn.Conv2d(channels, out, kernel_size=4, stride=2, padding=1), nn.SiLU()]
            channels = out
        self.features = nn.Sequential(*layers)  # (B, channels, 4, 4)
        self.fc_mu = nn.Linear(channels * 16, latent_dim)
        self.fc_logvar = nn.Linear(channels * 16, latent_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.features(x).flatten(1)  # (B, channels * 16)
        return self.fc_mu(h), self.fc_logvar(h)


class ConvDecoder(nn.Module):
    """z (B, latent_dim) -> Linear -> (B, top, 4, 4) -> [ConvTranspose 4x4 stride 2] per stage -> (B, C, S, S).

    The mirror of ``ConvEncoder``; the last layer has no activation (logits or Gaussian means).
    """

    def __init__(self, image_shape: tuple[int, int, int] = (3, 32, 32), latent_dim: int = 128, base_channels: int = 64):
        super().__init__()
        stages = _num_stages(image_shape)
        channels = base_channels * 2 ** (stages - 1)
        self.fc = nn.Linear(latent_dim, channels * 16)
        layers: list[nn.Module] = [nn.Unflatten(1, (channels, 4, 4)), nn.SiLU()]
        for stage in reversed(range(stages - 1)):
            out = base_channels * 2**stage
            layers += [nn.ConvTranspose2d(channels, out, kernel_size=4, stride=2, padding=1), nn.SiLU()]
            channels = out
        layers.append(nn.ConvTranspose2d(channels, image_shape[0], kernel_size=4, stride=2, padding=1))
        self.layers = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.layers(self.fc(z))  # (B, C, S, S)


class ConvVAE(GaussianLatentAutoencoder):
    """Convolutional VAE for square power-of-two images (32x32 CIFAR-10, 64x64 CelebA), sized from ``image_shape``."""

    def __init__(self, image_shape: tuple[int, int, int] = (3, 32, 32), latent_dim: int = 128, base_channels: int = 64):
        super().__init__(latent_dim, image_shape)
        self.encoder = ConvEncoder(image_shape, latent_dim, base_channels)
        self.decoder = ConvDecoder(image_shape, latent_dim, base_channels)
