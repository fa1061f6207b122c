"""DDPM on MNIST under a CPU time budget, then DDIM-50 vs ancestral DDPM-1000: wall time and sample quality.

    python benchmarks/ddpm_mnist_budget.py --minutes 30 --out runs/ddpm_budget          # train, then evaluate
    python benchmarks/ddpm_mnist_budget.py --ckpt runs/ddpm_budget/budget.ckpt --out ... # evaluate only

Training: ``configs/ddpm_mnist.yaml``'s module with a CPU-sized U-Net (overridable), bf16-mixed, stopped by
``trainer.max_time``; the checkpoint (with the EMA weights) is saved as ``<out>/budget.ckpt``.
Evaluation (EMA weights): wall time of 64 images with DDIM-50 (η=0) and with 1000-step DDPM (σ² = β̃), each from the
same noise; FID/KID of ``--num-fid`` samples of each against as many MNIST test images, with the features of the
MNIST ViT classifier (``--classifier``); sample grids written to ``<out>/``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lightning as L  # noqa: E402

from benchmarks.harness import MNIST_CLASSIFIER  # noqa: E402
from datamodules import MNISTDataModule  # noqa: E402
from lightning_modules.diffusion import DiffusionModule  # noqa: E402


class LossLog(L.Callback):
    """Keeps (step, loss) every 50 steps and the wall time, to report throughput."""

    def __init__(self) -> None:
        self.losses: list[tuple[int, float]] = []
        self.start = 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % 50 == 0:
            self.losses.append((trainer.global_step, float(outputs["loss"])))
            print(f"step {trainer.global_step:6d}  loss {float(outputs['loss']):.4f}  "
                  f"{time.perf_counter() - self.start:7.1f}s", flush=True)


def train(args) -> Path:
    data = MNISTDataModule(image_size=32, normalization="minus_one_one", val_size=5000, batch_size=args.batch_size,
                           num_workers=1, predict_size=64)
    model = DiffusionModule(
        image_shape=data.dims, model_channels=args.channels, num_res_blocks=1, channel_mult=(1, 2, 2),
        lr=args.lr, warmup_steps=100, ema_decay=args.ema_decay, sampling_steps=50,
    )
    log = LossLog()
    trainer = L.Trainer(
        accelerator="cpu", devices=1, precision="bf16-mixed", max_time={"minutes": args.minutes}, max_epochs=-1,
        limit_val_batches=0, logger=False, enable_checkpointing=False, enable_progress_bar=False, callbacks=[log],
    )
    trainer.fit(model, datamodule=data)
    wall = time.perf_counter() - log.start
    ckpt = Path(args.out) / "budget.ckpt"
    trainer.save_checkpoint(ckpt)
    stats = {"steps": trainer.global_step, "wall_s": round(wall, 1), "batch_size": args.batch_size,
             "images_per_s": round(trainer.global_step * args.batch_size / wall, 1),
             "params": sum(p.numel() for p in model.net.parameters()), "losses": log.losses}
    (Path(args.out) / "train_stats.json").write_text(json.dumps(stats, indent=1))
    print(f"trained {stats['steps']} steps of {args.batch_size} in {wall:.0f}s ({stats['images_per_s']} img/s), "
          f"{stats['params'] / 1e6:.2f}M params; checkpoint {ckpt}", flush=True)
    return ckpt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/ddpm_budget")
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--ckpt", default=None, help="skip training and evaluate this checkpoint")
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--ema-decay", type=float, default=0.995)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core box)")
    parser.add_argument("--train-only", action="store_true")
    parser.add_argument("--classifier", default=str(MNIST_CLASSIFIER),
                        help="ViTClassifier checkpoint for the FID features (default: the vit_mnist row's)")
    parser.add_argument("--num-fid", type=int, default=128, help="samples per sampler for FID/KID")
    parser.add_argument("--samplers", nargs="+", default=["ddim50", "ddpm1000"],
                        help="ddim50, ddpm1000, ddim<steps>_eta<eta> or dpm_solver<steps> (see sampling.py)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("MODULE14_DATA_DIR", str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    L.seed_everything(0)
    ckpt = Path(args.ckpt) if args.ckpt else train(args)
    if not args.train_only:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from benchmarks.sampling import evaluate

        evaluate(ckpt, args)


if __name__ == "__main__":
    main()
