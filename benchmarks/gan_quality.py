"""Sample quality of a trained MNIST GAN checkpoint: FID/KID on the shipped MNIST ruler's features, plus a grid.

    python benchmarks/gan_quality.py --ckpt runs/.../last.ckpt [--classifier mnist_vit] [--num-samples 2000]
        [--grid outputs/gan_quality_grid.png]

Prints FID/KID (``lightning_modules.metrics.SampleQuality``, features of ``weights/mnist_vit.pt``, the ruler of
RESULTS.md, or of a ViTClassifier checkpoint given as ``--classifier``) between ``num_samples`` MNIST test
images and as many samples of the trained generator (EMA and raw when the run kept an EMA), with two references on the
same features: real vs real (MNIST validation images against the test images: the floor) and an untrained generator
(the ceiling). Images of 32 px (MNIST zero-padded) are center-cropped back to 28 px, the classifier's input.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from datamodules import MNISTDataModule  # noqa: E402
from lightning_modules.gan import GANModule  # noqa: E402
from lightning_modules.images import image_grid, save_png, to_unit_range  # noqa: E402
from lightning_modules.metrics import SampleQuality  # noqa: E402


def crop28(images: torch.Tensor) -> torch.Tensor:
    pad = (images.shape[-1] - 28) // 2
    return images[..., pad : pad + 28, pad : pad + 28] if pad > 0 else images


def real_images(datamodule: MNISTDataModule, split: str, n: int) -> torch.Tensor:
    dataset = datamodule.test_set if split == "test" else datamodule.val_set
    return torch.stack([dataset[i][0] for i in range(n)])  # (n, 1, H, W) in [-1, 1]


@torch.no_grad()
def generated(model: GANModule, network: torch.nn.Module, n: int, batch: int = 250) -> torch.Tensor:
    rng = torch.Generator().manual_seed(1234)
    return torch.cat([model.from_noise(model.latent(min(batch, n - i), rng), network) for i in range(0, n, batch)])


@torch.no_grad()
def score(quality: SampleQuality, real: torch.Tensor, fake: torch.Tensor, value_range) -> dict[str, float]:
    quality.reset()
    for i in range(0, len(real), 500):
        quality.update(crop28(to_unit_range(real[i : i + 500], value_range)), real=True)
        quality.update(crop28(to_unit_range(fake[i : i + 500], value_range)), real=False)
    return {k: float(v) for k, v in quality.compute().items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="GANModule checkpoint trained on MNIST")
    parser.add_argument("--classifier", default="mnist_vit",
                        help="the features: a shipped ruler (mnist_vit, the default) or a ViTClassifier checkpoint")
    parser.add_argument("--num-samples", type=int, default=2000)
    parser.add_argument("--grid", default="outputs/gan_quality_grid.png", help="where to save 64 samples")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    model = GANModule.load_from_checkpoint(args.ckpt, map_location="cpu").eval()
    channels, size, _ = model.image_shape
    datamodule = MNISTDataModule(
        data_dir=os.environ.get("MODULE14_DATA_DIR"), image_size=size, normalization="minus_one_one",
        val_size=5000, download=False,
    )
    datamodule.setup("fit")
    datamodule.setup("test")
    n = args.num_samples
    quality = SampleQuality.on(args.classifier, kid_subset_size=min(1000, n))
    test = real_images(datamodule, "test", n)

    rows = {"real (val) vs real (test): floor": score(quality, test, real_images(datamodule, "val", n), model.value_range)}
    networks = {"generator": model.generator}
    if model.ema is not None:
        networks["generator EMA"] = model.ema
    for name, network in networks.items():
        rows[f"trained {name}"] = score(quality, test, generated(model, network, n), model.value_range)
    untrained = GANModule(**model.hparams).eval()
    rows["untrained generator: ceiling"] = score(quality, test, generated(untrained, untrained.generator, n), model.value_range)

    print(f"\n{args.ckpt}: {model.hparams.architecture}, {n} samples vs {n} MNIST test images, features: {quality.name}")
    for name, values in rows.items():
        print(f"{name:36s} " + "  ".join(f"{k} {v:9.4f}" for k, v in values.items()))
    save_png(image_grid(model.generate(64, torch.Generator().manual_seed(1234))), args.grid)
    print(f"grid of 64 samples ({'EMA' if model.ema is not None else 'raw'} generator): {args.grid}")


if __name__ == "__main__":
    main()
