"""DCGAN training-step throughput (one discriminator + one generator step per batch): the code of docs/guide.md
(Part 3, Steps 3-4; ``spec`` below) vs GANModule.

    python benchmarks/gan_step.py [--batch-size 32] [--feature-maps 64] [--steps 6] [--threads 2]

* ``spec``: the guide's ``DCGANGenerator``/``DCGANDiscriminator`` (Sigmoid outputs) and the body of its ``train_gan``
  loop (``BCELoss``, a second generator forward for the generator step), fp32 -- the guide has no mixed precision.
* ``ours``: ``GANModule(architecture="dcgan")`` inside a Lightning ``Trainer`` (hooks, logging and all) at the guide's
  size (64x64x3), in ``32-true`` and ``bf16-mixed``.

Random images stand in for data (the step cost does not depend on the pixels). The machine may be shared, so the two run
interleaved in one process, batch by batch: a spec step right after each of ours, on the same batch. The speed-up is
the median of these paired ratios (first pair excluded as warm-up).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lightning_modules.gan import GANModule  # noqa: E402


# -------------------------------------------------------------- the guide's code (docs/guide.md, Part 3, Step 4)
class SpecDCGANGenerator(nn.Module):
    def __init__(self, latent_dim=100, feature_maps=64, channels=3):
        super().__init__()
        fm = feature_maps
        self.model = nn.Sequential(
            nn.ConvTranspose2d(latent_dim, fm * 8, 4, 1, 0, bias=False), nn.BatchNorm2d(fm * 8), nn.ReLU(True),
            nn.ConvTranspose2d(fm * 8, fm * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(fm * 4), nn.ReLU(True),
            nn.ConvTranspose2d(fm * 4, fm * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(fm * 2), nn.ReLU(True),
            nn.ConvTranspose2d(fm * 2, fm, 4, 2, 1, bias=False), nn.BatchNorm2d(fm), nn.ReLU(True),
            nn.ConvTranspose2d(fm, channels, 4, 2, 1, bias=False), nn.Tanh(),
        )

    def forward(self, z):
        return self.model(z.view(z.size(0), z.size(1), 1, 1))


class SpecDCGANDiscriminator(nn.Module):
    def __init__(self, channels=3, feature_maps=64):
        super().__init__()
        fm = feature_maps
        self.model = nn.Sequential(
            nn.Conv2d(channels, fm, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(fm, fm * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(fm * 2), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(fm * 2, fm * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(fm * 4), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(fm * 4, fm * 8, 4, 2, 1, bias=False), nn.BatchNorm2d(fm * 8), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(fm * 8, 1, 4, 1, 0, bias=False), nn.Sigmoid(),
        )

    def forward(self, x):
        return self.model(x).view(-1, 1)


def spec_step(generator, discriminator, g_optimizer, d_optimizer, real_data, latent_dim=100):
    """The body of the guide's ``train_gan`` loop, for one batch."""
    criterion = nn.BCELoss()
    batch_size = real_data.size(0)
    real_labels, fake_labels = torch.ones(batch_size, 1), torch.zeros(batch_size, 1)
    d_optimizer.zero_grad()
    d_loss_real = criterion(discriminator(real_data), real_labels)
    fake_data = generator(torch.randn(batch_size, latent_dim)).detach()
    d_loss = d_loss_real + criterion(discriminator(fake_data), fake_labels)
    d_loss.backward()
    d_optimizer.step()
    g_optimizer.zero_grad()
    g_loss = criterion(discriminator(generator(torch.randn(batch_size, latent_dim))), real_labels)
    g_loss.backward()
    g_optimizer.step()


# --------------------------------------------------------------------------------------------------- timing
class PairedTimer(L.Callback):
    """Times each of our batches and, right after it, one spec step on the same batch: paired samples under drifting load."""

    def __init__(self, spec_nets, spec_optimizers) -> None:
        self.spec = (spec_nets, spec_optimizers)
        self.ours: list[float] = []
        self.theirs: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.ours.append(time.perf_counter() - self._start)
        start = time.perf_counter()
        spec_step(*self.spec[0], *self.spec[1], batch[0])
        self.theirs.append(time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--feature-maps", type=int, default=64)
    parser.add_argument("--steps", type=int, default=6, help="timed batch pairs per precision (+1 warm-up)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    n = args.batch_size * (args.steps + 1)
    loader = DataLoader(TensorDataset(torch.rand(n, 3, 64, 64) * 2 - 1, torch.zeros(n)), batch_size=args.batch_size)

    nets = (SpecDCGANGenerator(feature_maps=args.feature_maps), SpecDCGANDiscriminator(feature_maps=args.feature_maps))
    adam = dict(lr=2e-4, betas=(0.5, 0.999))
    optimizers = (torch.optim.Adam(nets[0].parameters(), **adam), torch.optim.Adam(nets[1].parameters(), **adam))
    ours = GANModule(image_shape=(3, 64, 64), architecture="dcgan", feature_maps=args.feature_maps)
    params = sum(p.numel() for p in ours.parameters())
    assert params == sum(p.numel() for net in nets for p in net.parameters()), "not the same networks"

    print(f"\nDCGAN 64x64x3, feature_maps {args.feature_maps} ({params / 1e6:.2f}M parameters), batch {args.batch_size}, "
          f"{args.threads} threads, {args.steps} timed pairs per precision (spec step right after each of ours)")
    for precision in ("32-true", "bf16-mixed"):
        timer = PairedTimer(nets, optimizers)
        L.Trainer(
            accelerator="cpu", devices=1, precision=precision, max_steps=2 * (args.steps + 1), limit_val_batches=0,
            logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            callbacks=[timer],
        ).fit(ours, loader)
        ours_t, spec_t = timer.ours[1:], timer.theirs[1:]
        ratio = statistics.median(s / o for s, o in zip(spec_t, ours_t))
        for name, times in ((f"spec fp32 (paired with ours {precision})", spec_t), (f"ours {precision}", ours_t)):
            med = statistics.median(times)
            print(f"{name:40s} median {med:6.3f} s/batch ({args.batch_size / med:6.1f} img/s), best {min(times):6.3f} s")
        print(f"{'':40s} speed-up of ours {precision} over the guide: median of paired ratios {ratio:.2f}x")


if __name__ == "__main__":
    main()
