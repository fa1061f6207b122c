"""``augment: basic`` on whole batches, on the device the batch was moved to: a random shift (torchvision's
``RandomCrop(size, padding)``: the image padded by ``padding`` pixels on each side, then cropped back at an offset
drawn uniformly in [0, 2 padding] per axis) and, where mirroring keeps the label, a horizontal flip with probability
1/2. Every image draws its own shift and flip, the batch in a few tensor ops instead of a PIL pipeline per image in
the loader's workers, which compete with the model for the same cores (issue 34: 1.43x the time of no augmentation
for vit_mnist on a 2-core CPU)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.transforms import v2


@dataclass(frozen=True)
class ShiftFlip:
    padding: int  # pixels added on each side before the crop: shifts of -padding..padding pixels per axis
    flip: bool  # a horizontal flip with probability 1/2 (not for digits: a mirrored digit is another symbol)

    def per_image(self, size: int) -> list[v2.Transform]:
        """The same augmentation one image at a time (torchvision), where a pipeline stays per image (``strong``)."""
        crop = [v2.RandomCrop(size, padding=self.padding)] if self.padding else []
        return crop + ([v2.RandomHorizontalFlip()] if self.flip else [])

    def __call__(self, images: Tensor, fill: Tensor, generator: torch.Generator) -> Tensor:
        """(B, C, H, W) -> (B, C, H, W), each image shifted (and flipped) by its own draw from ``generator``; the
        uncovered border takes ``fill`` (C,), the value a black pixel is served as (RandomCrop pads with black)."""
        b, c, h, w = images.shape
        p, device = self.padding, images.device
        if p:
            padded = fill.to(images).view(1, c, 1, 1).repeat(b, 1, h + 2 * p, w + 2 * p)  # (B, C, H + 2p, W + 2p)
            padded[:, :, p:p + h, p:p + w] = images
            top, left = torch.randint(0, 2 * p + 1, (2, b, 1), device=device, generator=generator)  # (B, 1) each
            rows = top + torch.arange(h, device=device)  # (B, H): the rows each image keeps
            cols = left + torch.arange(w, device=device)  # (B, W)
            index = torch.arange(b, device=device).view(b, 1, 1)
            images = padded.permute(0, 2, 3, 1)[index, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
            images = images.permute(0, 3, 1, 2).contiguous()
        if self.flip:
            mirrored = torch.rand(b, device=device, generator=generator) < 0.5
            images = torch.where(mirrored.view(b, 1, 1, 1), images.flip(-1), images)
        return images
