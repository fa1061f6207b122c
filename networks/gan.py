"""GAN networks: a generator maps noise z to an image, a discriminator scores images as real or generated, and the two
are trained against each other (Goodfellow et al., "Generative Adversarial Nets", NeurIPS 2014). Here the MLP pair of
docs/guide.md, Part 3 (Steps 1-2), and DCGAN (Radford, Metz & Chintala, "Unsupervised Representation Learning with
Deep Convolutional Generative Adversarial Networks", ICLR 2016; the guide's Part 3, Step 4).

The layers and defaults are the guide's. Two deliberate differences, both from its defects (docs/guide_notes.md):

* the discriminators return a **logit** (no final ``Sigmoid``): the loss is ``binary_cross_entropy_with_logits``, which is
  numerically stable and allowed under autocast (``BCELoss`` after a ``Sigmoid`` is refused by CUDA autocast);
* the DCGAN pair follows the data's resolution: 64x64 is exactly the guide's stack, 32x32 (MNIST padded to 32, CIFAR-10)
  drops one up/down-sampling stage, and both start from the DCGAN paper's N(0, 0.02) initialisation.
"""

from __future__ import annotations

import math

import torch.nn as nn
from torch import Tensor

from networks.dropout import Dropout


class Generator(nn.Module):
    """MLP generator: z (B, latent_dim) -> flat sample (B, output_dim) in [-1, 1]."""

    def __init__(self, latent_dim: int = 100, hidden_dim: int = 256, output_dim: int = 784):
        super().__init__()
        self.model = nn.Sequential(
            nn.Linear(latent_dim, hidden_dim),
            nn.LeakyReLU(0.2),
            nn.BatchNorm1d(hidden_dim),
            nn.Linear(hidden_dim, hidden_dim * 2),
            nn.LeakyReLU(0.2),
            nn.BatchNorm1d(hidden_dim * 2),
            nn.Linear(hidden_dim * 2, hidden_dim * 4),
            nn.LeakyReLU(0.2),
            nn.BatchNorm1d(hidden_dim * 4),
            nn.Linear(hidden_dim * 4, output_dim),
            nn.Tanh(),
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.model(z)  # (B, output_dim)


class Discriminator(nn.Module):
    """MLP discriminator: sample (B, input_dim) -- or images (B, C, H, W), flattened -- -> real/fake logit (B, 1)."""

    def __init__(self, input_dim: int = 784, hidden_dim: int = 256):
        super().__init__()
        self.model = nn.Sequential(
            nn.Linear(input_dim, hidden_dim * 4),
            nn.LeakyReLU(0.2),
            Dropout(0.3),
            nn.Linear(hidden_dim * 4, hidden_dim * 2),
            nn.LeakyReLU(0.2),
            Dropout(0.3),
            nn.Linear(hidden_dim * 2, hidden_dim),
            nn.LeakyReLU(0.2),
            Dropout(0.3),
            nn.Linear(hidden_dim, 1),  # logit; the guide's Sigmoid lives in the loss
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x.flatten(1))  # (B, 1)


def _num_stages(image_size: int) -> int:
    """Stride-2 stages between 4x4 and ``image_size``: 3 for 32px, 4 for 64px."""
    stages = round(math.log2(image_size)) - 2
    if image_size < 16 or 2 ** (stages + 2) != image_size:
        raise ValueError(
            f"DCGAN builds square images whose side is a power of two >= 16 (32 and 64 are the tested sizes), got "
            f"{image_size}. Set data.image_size to 32 or 64 (MNIST 32 zero-pads the 28px digits)."
        )
    return stages


def dcgan_init(module: nn.Module) -> None:
    """The DCGAN paper's initialisation: conv weights ~ N(0, 0.02); BatchNorm scale ~ N(1, 0.02), shift 0."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class DCGANGenerator(nn.Module):
    """DCGAN generator: z (B, latent_dim) -> image (B, channels, image_size, image_size) in [-1, 1].

    A 4x4 projection with ``feature_maps * 2**(stages-1)`` channels, then stride-2 transposed convolutions halving the
    channels and doubling the side. With ``image_size=64`` (the default) this is the guide's network layer for layer:
    (B, 512, 4, 4) -> (B, 256, 8, 8) -> (B, 128, 16, 16) -> (B, 64, 32, 32) -> (B, C, 64, 64).
    """

    def __init__(self, latent_dim: int = 100, feature_maps: int = 64, channels: int = 3, image_size: int = 64):
        super().__init__()
        stages = _num_stages(image_size)
        width = feature_maps * 2 ** (stages - 1)
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(latent_dim, width, 4, 1, 0, bias=False),  # (B, width, 4, 4)
            nn.BatchNorm2d(width),
            nn.ReLU(True),
        ]
        for _ in range(stages - 1):  # each: (B, w, s, s) -> (B, w/2, 2s, 2s)
            layers += [
                nn.ConvTranspose2d(width, width // 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(width // 2),
                nn.ReLU(True),
            ]
            width //= 2
        layers += [nn.ConvTranspose2d(width, channels, 4, 2, 1, bias=False), nn.Tanh()]  # (B, C, size, size)
        self.model = nn.Sequential(*layers)
        self.apply(dcgan_init)

    def forward(self, z: Tensor) -> Tensor:
        return self.model(z.view(z.size(0), z.size(1), 1, 1))


class DCGANDiscriminator(nn.Module):
    """DCGAN discriminator: image (B, channels, image_size, image_size) -> real/fake logit (B, 1).

    Stride-2 convolutions doubling the channels down to 4x4, then a 4x4 convolution to one logit. With
    ``image_size=64`` this is the guide's network: (B, 64, 32, 32) -> (B, 128, 16, 16) -> (B, 256, 8, 8) ->
    (B, 512, 4, 4) -> (B, 1, 1, 1); no BatchNorm on the first layer, as in the paper.
    """

    def __init__(self, channels: int = 3, feature_maps: int = 64, image_size: int = 64):
        super().__init__()
        stages = _num_stages(image_size)
        width = feature_maps
        layers: list[nn.Module] = [
            nn.Conv2d(channels, width, 4, 2, 1, bias=False),  # (B, fm, size/2, size/2)
            nn.LeakyReLU(0.2, inplace=True),
        ]
        for _ in range(stages - 1):  # each: (B, w, s, s) -> (B, 2w, s/2, s/2)
            layers += [
                nn.Conv2d(width, width * 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(width * 2),
                nn.LeakyReLU(0.2, inplace=True),
            ]
            width *= 2
        layers.append(nn.Conv2d(width, 1, 4, 1, 0, bias=False))  # (B, 1, 1, 1) logit
        self.model = nn.Sequential(*layers)
        self.apply(dcgan_init)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x).view(-1, 1)
