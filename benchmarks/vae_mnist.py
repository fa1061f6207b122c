"""VAE on MNIST: test negative ELBO and IWAE bound after N epochs, and seconds per epoch, ours vs the guide's code
(docs/guide.md, Part 2, Step 5; the run named ``spec``).

    python benchmarks/vae_mnist.py                          # the guide's code, then ours at its settings
    python benchmarks/vae_mnist.py --runs interleaved --epochs 4  # timing: our epoch over the guide loop's, per round
    python benchmarks/vae_mnist.py --runs ours --hidden-dim 512 --num-hidden-layers 2 --latent-dim 32 \
        --lr 2e-3 --lr-schedule cosine                       # an improved recipe

Both train on all 60,000 training images (no validation split, as in the guide's loop) with batch 128, and are scored
on the 10,000 test images: the guide's model with its own ``vae_loss`` (one z per image, BCE summed, in nats), ours with
``trainer.test`` (``test/nelbo``, same definition, and ``test/iwae_nll``, the IWAE-k bound). Targets are the
continuous grey levels in [0, 1], as in the guide. Each side loads data its own way, in the main process
(num_workers=0): the guide's loop through torchvision's MNIST with ``ToTensor``, ours through ``MNISTDataModule``'s
training loader, as ``module14 fit`` does. Epoch time is the wall time of the training epoch alone (data loading
included, evaluation excluded). ``--runs interleaved`` prints the median ratio of our epoch to the guide's, and to our
module's step run in the same plain loop (what is left between those two is Lightning's loop), and to our epoch with
torch's default Adam step instead of the fused one.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path
from unittest import mock

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("WANDB_MODE", "offline")

import lightning as L  # noqa: E402

from datamodules import MNISTDataModule  # noqa: E402
from datamodules.base import default_data_dir  # noqa: E402
from lightning_modules.vae import VAEModule  # noqa: E402


# ------------------------------------------------------------ the guide's code (docs/guide.md, Part 2), verbatim
class SpecEncoder(nn.Module):
    def __init__(self, input_dim=784, hidden_dim=400, latent_dim=20):
        super().__init__()
        self.fc1 = nn.Linear(input_dim, hidden_dim)
        self.fc_mu = nn.Linear(hidden_dim, latent_dim)
        self.fc_logvar = nn.Linear(hidden_dim, latent_dim)

    def forward(self, x):
        h = F.relu(self.fc1(x))
        return self.fc_mu(h), self.fc_logvar(h)


def spec_reparameterize(mu, logvar):
    std = torch.exp(0.5 * logvar)
    eps = torch.randn_like(std)
    return mu + eps * std


class SpecDecoder(nn.Module):
    def __init__(self, latent_dim=20, hidden_dim=400, output_dim=784):
        super().__init__()
        self.fc1 = nn.Linear(latent_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, output_dim)

    def forward(self, z):
        h = F.relu(self.fc1(z))
        return torch.sigmoid(self.fc2(h))


class SpecVAE(nn.Module):
    def __init__(self, input_dim=784, hidden_dim=400, latent_dim=20):
        super().__init__()
        self.encoder = SpecEncoder(input_dim, hidden_dim, latent_dim)
        self.decoder = SpecDecoder(latent_dim, hidden_dim, input_dim)

    def forward(self, x):
        mu, logvar = self.encoder(x)
        z = spec_reparameterize(mu, logvar)
        return self.decoder(z), mu, logvar


def spec_vae_loss(x_recon, x, mu, logvar, beta=1.0):
    recon_loss = F.binary_cross_entropy(x_recon, x, reduction="sum")
    kl_loss = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return recon_loss + beta * kl_loss, recon_loss, kl_loss


def spec_train_vae(model, train_loader, optimizer):
    model.train()
    for data, _ in train_loader:
        data = data.view(-1, 784)
        optimizer.zero_grad()
        x_recon, mu, logvar = model(data)
        loss, _, _ = spec_vae_loss(x_recon, data, mu, logvar)
        loss.backward()
        optimizer.step()


def spec_train_loader() -> DataLoader:
    train_dataset = datasets.MNIST(default_data_dir(), train=True, download=False, transform=transforms.ToTensor())
    return DataLoader(train_dataset, batch_size=128, shuffle=True)


def run_spec(args: argparse.Namespace, data: MNISTDataModule) -> dict[str, float]:
    torch.manual_seed(args.seed)
    model = SpecVAE()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    train = spec_train_loader()
    times = []
    for _ in range(args.epochs):
        start = time.perf_counter()
        spec_train_vae(model, train, optimizer)
        times.append(time.perf_counter() - start)
    model.eval()
    total = 0.0
    with torch.no_grad():
        for x, _ in DataLoader(data.test_set, batch_size=1000):
            x = x.view(-1, 784)
            x_recon, mu, logvar = model(x)
            total += spec_vae_loss(x_recon, x, mu, logvar)[0].item()
    return {"test_nelbo": total / len(data.test_set), "s_per_epoch": sum(times) / len(times)}


# ------------------------------------------------------------------------------------------------------ ours
class EpochTimer(L.Callback):
    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.times.append(time.perf_counter() - self.start)


def make_ours(args: argparse.Namespace, data: MNISTDataModule) -> VAEModule:
    return VAEModule(
        image_shape=data.dims, value_range=data.value_range, latent_dim=args.latent_dim, hidden_dim=args.hidden_dim,
        num_hidden_layers=args.num_hidden_layers, lr=args.lr, lr_schedule=args.lr_schedule,
        kl_warmup_steps=args.kl_warmup_steps, test_iwae_samples=args.iwae_samples, traversal_dims=0,
    )


def fit_ours(args: argparse.Namespace, model: VAEModule, data: MNISTDataModule, epochs: int) -> tuple[L.Trainer, list]:
    """Train ``epochs`` epochs; returns the trainer and the seconds of each training epoch."""
    timer = EpochTimer()
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=epochs, precision=args.precision, limit_val_batches=0, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[timer],
    )
    trainer.fit(model, datamodule=data)
    return trainer, timer.times


def run_ours(args: argparse.Namespace, data: MNISTDataModule) -> dict[str, float]:
    L.seed_everything(args.seed, verbose=False)
    model = make_ours(args, data)
    trainer, times = fit_ours(args, model, data, args.epochs)
    start = time.perf_counter()
    (results,) = trainer.test(model, DataLoader(data.test_set, batch_size=500), verbose=False)
    return {
        "test_nelbo": results["test/nelbo"],
        f"test_iwae{args.iwae_samples}_nll": results["test/iwae_nll"],
        "test_kl": results["test/kl"],
        "active_units": results["test/active_units"],
        "s_per_epoch": sum(times) / len(times),
        "s_test": time.perf_counter() - start,
    }


def plain_loop_epoch(module: VAEModule, loader: DataLoader, optimizer: torch.optim.Optimizer) -> None:
    """One epoch of our module's training-step work (``VAEModule.training_loss``: its ELBO terms and the epoch-mean
    metrics it updates every step, and the fused Adam step ``VAEModule`` takes) in the guide's plain loop, without
    Lightning: what ``training_step`` does on a step the logger does not write."""
    module.train()
    for x, _ in loader:
        optimizer.zero_grad()
        loss, _ = module.training_loss(module.targets(x))
        loss.backward()
        optimizer.step()


def run_interleaved(args: argparse.Namespace, data: MNISTDataModule) -> dict[str, float]:
    """Timing only: per round, one spec epoch on the guide's loader, one spec epoch on our datamodule's loader, one
    epoch of our module's step in the same plain loop (``plain_loop_epoch``), one epoch of ours and one of ours with
    torch's default (unfused) Adam step, ``--epochs`` rounds, so all five see the same load. Our epoch over the first
    is what a user sees; over the second, the framework's own overhead (the same batches, Lightning and our module
    around the same model); over the third, Lightning's loop alone; over the fifth, what the fused Adam step saves."""
    torch.manual_seed(args.seed)
    spec = SpecVAE()
    optimizer = torch.optim.Adam(spec.parameters(), lr=1e-3)
    loaders = {"spec_loader": spec_train_loader(), "our_loader": data.train_dataloader()}
    ours, our_step, ours_unfused = make_ours(args, data), make_ours(args, data), make_ours(args, data)
    our_step_optimizer = torch.optim.Adam(our_step.parameters(), lr=args.lr, fused=True)  # as ours: fused_adam
    times: dict[str, list[float]] = {"spec_loader": [], "our_loader": [], "our_step_plain_loop": [], "ours": [],
                                     "ours_unfused_adam": []}
    for _ in range(args.epochs):
        for name, loader in loaders.items():
            start = time.perf_counter()
            spec_train_vae(spec, loader, optimizer)
            times[name].append(time.perf_counter() - start)
        start = time.perf_counter()
        plain_loop_epoch(our_step, loaders["our_loader"], our_step_optimizer)
        times["our_step_plain_loop"].append(time.perf_counter() - start)
        times["ours"] += fit_ours(args, ours, data, 1)[1]
        with mock.patch("lightning_modules.vae.fused_adam", return_value=False):
            times["ours_unfused_adam"] += fit_ours(args, ours_unfused, data, 1)[1]
        print("round", "  ".join(f"{name}={t[-1]:.1f}s" for name, t in times.items()),
              f"load={os.getloadavg()[0]:.1f}", flush=True)  # a partial run still says something
    result = {f"s_per_epoch_spec_on_{name}": statistics.median(times[name]) for name in loaders}
    result["s_per_epoch_our_step_plain_loop"] = statistics.median(times["our_step_plain_loop"])
    result["s_per_epoch_ours"] = statistics.median(times["ours"])
    result["s_per_epoch_ours_unfused_adam"] = statistics.median(times["ours_unfused_adam"])
    ratios = {"ours_over_spec_on_spec_loader": ("ours", "spec_loader"),
              "ours_over_spec_on_our_loader": ("ours", "our_loader"),
              "our_step_plain_loop_over_spec_on_our_loader": ("our_step_plain_loop", "our_loader"),
              "ours_over_our_step_plain_loop": ("ours", "our_step_plain_loop"),
              "ours_over_ours_unfused_adam": ("ours", "ours_unfused_adam")}
    for name, (top, bottom) in ratios.items():  # per round, then the median over rounds
        result[f"median_ratio_{name}"] = statistics.median(a / b for a, b in zip(times[top], times[bottom]))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", default=["spec", "ours"], choices=["spec", "ours", "interleaved"],
                        help="interleaved: timing only, alternating spec and our epochs")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hidden-dim", type=int, default=400)
    parser.add_argument("--num-hidden-layers", type=int, default=1)
    parser.add_argument("--latent-dim", type=int, default=20)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=128, help="ours only; the guide's run uses 128")
    parser.add_argument("--lr-schedule", default="constant", choices=["constant", "cosine"])
    parser.add_argument("--kl-warmup-steps", type=int, default=0)
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--iwae-samples", type=int, default=100)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = MNISTDataModule(data_dir=default_data_dir(), normalization="zero_one", val_size=0, num_workers=0,
                           batch_size=args.batch_size)
    data.setup("fit")
    data.setup("test")
    print(f"# {vars(args)}  load average at start: {os.getloadavg()[0]:.1f} (shared 2-core machine)")
    for run in args.runs:
        result = {"spec": run_spec, "ours": run_ours, "interleaved": run_interleaved}[run](args, data)
        print(run, "  ".join(f"{k}={v:.3f}" if not math.isnan(v) else f"{k}=nan" for k, v in result.items()), flush=True)


if __name__ == "__main__":
    main()
