"""DCGAN training-step throughput (one discriminator + one generator step per batch): the spec's code vs GANModule.

    python benchmarks/gan_step.py [--batch-size 64] [--feature-maps 64] [--rounds 3] [--steps 3] [--threads 2]

* ``spec``: the guide's ``DCGANGenerator``/``DCGANDiscriminator`` (Sigmoid outputs) and the body of its ``train_gan``
  loop (``BCELoss``, a second generator forward for the generator step), fp32 -- the spec has no mixed precision.
* ``ours``: ``GANModule(arch="dcgan")`` inside a Lightning ``Trainer`` (hooks, logging and all) at the spec's size (64x64x3), in
  ``32-true`` and ``bf16-mixed``.

Random images stand in for data (the step cost does not depend on the pixels). The variants run interleaved, round
after round, in one process; each figure is the median seconds per batch over all rounds (first batch of each round
excluded as warm-up).
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


# ------------------------------------------------------------------------------- the spec's code (Part 3, Step 4)
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
    """The body of the spec's ``train_gan`` loop, for one batch."""
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
class BatchTimer(L.Callback):
    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.times.append(time.perf_counter() - self._start)


def time_ours(model: GANModule, loader: DataLoader, steps: int, precision: str) -> list[float]:
    timer = BatchTimer()
    trainer = L.Trainer(
        accelerator="cpu", devices=1, precision=precision, max_steps=2 * (steps + 1), limit_val_batches=0,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[timer],
    )
    trainer.fit(model, loader)
    return timer.times[1:]


def time_spec(nets, optimizers, loader: DataLoader, steps: int) -> list[float]:
    times = []
    for i, (real, _) in enumerate(loader):
        if i > steps:
            break
        start = time.perf_counter()
        spec_step(*nets, *optimizers, real)
        times.append(time.perf_counter() - start)
    return times[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--feature-maps", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="timed batches per variant per round")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    n = args.batch_size * (args.steps + 1)
    loader = DataLoader(TensorDataset(torch.rand(n, 3, 64, 64) * 2 - 1, torch.zeros(n)), batch_size=args.batch_size)

    nets = (SpecDCGANGenerator(feature_maps=args.feature_maps), SpecDCGANDiscriminator(feature_maps=args.feature_maps))
    adam = dict(lr=2e-4, betas=(0.5, 0.999))
    optimizers = (torch.optim.Adam(nets[0].parameters(), **adam), torch.optim.Adam(nets[1].parameters(), **adam))
    ours = GANModule(image_shape=(3, 64, 64), arch="dcgan", feature_maps=args.feature_maps)
    params = sum(p.numel() for p in ours.parameters())
    assert params == sum(p.numel() for net in nets for p in net.parameters()), "not the same networks"

    results: dict[str, list[float]] = {"spec fp32": [], "ours 32-true": [], "ours bf16-mixed": []}
    for r in range(args.rounds):
        results["spec fp32"] += time_spec(nets, optimizers, loader, args.steps)
        results["ours 32-true"] += time_ours(ours, loader, args.steps, "32-true")
        results["ours bf16-mixed"] += time_ours(ours, loader, args.steps, "bf16-mixed")
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in results.items()))

    print(f"\nDCGAN 64x64x3, feature_maps {args.feature_maps} ({params / 1e6:.2f}M parameters), batch {args.batch_size}, "
          f"{args.threads} threads, {args.rounds} rounds x {args.steps} batches")
    base = statistics.median(results["spec fp32"])
    for name, times in results.items():
        med = statistics.median(times)
        print(f"{name:16s} {med:6.3f} s/batch  {args.batch_size / med:7.1f} img/s  speed-up vs spec {base / med:4.2f}x")


if __name__ == "__main__":
    main()
