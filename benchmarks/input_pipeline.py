"""The input pipeline against what each model consumes (issue 34).

    python benchmarks/input_pipeline.py [--seconds 5] [--configs vit_mnist dcgan_celeba ...] [--utilisation 0.4]

Two tables, with the CPU flags (``--device cuda``: each batch goes to the GPU and is augmented there, as in a GPU
run; ``--configs`` with no name: the first table only, as the GPU session runs it beside gpu_check.py's steps):

1. **Loader**, per dataset and augmentation level: training images/s the loader delivers with 0 and 2 workers, and
   with the split held on ``--device`` (``data.on_device``; on a CPU, the 0-worker loader again), iterated for
   ``--seconds`` after its first batch. ``basic`` is timed with its batched augmentation applied to each batch as a
   run applies it after the transfer (on this CPU here); ``basic, per image`` is the same shift and flip through
   torchvision one image at a time in the workers, as every run did before.
2. **Consumption**, per config: the training step's images/s on this CPU (eager, the config's precision rule), the
   loader's images/s at the config's workers over it (at least 10 leaves the model the machine), and the images/s
   an H100 would consume: the step's matmul/conv/attention FLOPs per image (``FlopCounterMode``, as
   ``benchmarks/cost_model.py``) at ``--utilisation`` of its dense bf16 peak, 989 TFLOP/s. A loader below that
   figure would leave the H100 waiting for images.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import machine_line, use_project_defaults  # noqa: E402

H100_BF16_FLOPS = 989e12  # dense bf16 tensor-core peak of an H100 SXM
DATASETS = {"MNIST": "vit_mnist", "CIFAR10": "vit_cifar10", "CelebA": "dcgan_celeba"}  # a config of each
LEVELS = (("none", "none", False), ("basic", "basic", False), ("basic, per image", "basic", True),
          ("strong", "strong", False))  # (label, augment, per image)
CONFIGS = ("vit_mnist", "vit_cifar10", "vae_mnist", "dcgan_mnist", "dcgan_celeba", "ddpm_mnist", "ddpm_cifar10")


def build(config: str, *args: str):
    from cli import build_cli

    return build_cli(["--config", str(ROOT / "configs" / f"{config}.yaml"), "--trainer.logger=false",
                      "--data.init_args.verify_integrity=false", *args], run=False)


def loader_images_per_second(data, seconds: float, per_image: bool = False, device: str = "cpu") -> float:
    """Training images/s of ``data``'s loader, each batch moved to ``device`` and its batched ``basic`` augmentation
    applied there, as a run does after the transfer (or, with ``per_image``, the same augmentation per image in the
    workers instead)."""
    import torch
    from torchvision.transforms import v2

    data.trainer = SimpleNamespace(training=True, global_rank=0,
                                   strategy=SimpleNamespace(root_device=torch.device(device)))
    data.setup("fit")
    if per_image:  # the pipeline before issue 34: the shift and flip through torchvision, per image
        train = data.make_dataset(train=True, transform=v2.Compose(
            data.geometry_transforms() + data.basic_augmentation().per_image(data.image_size) + data._to_range()))
        data.train_set.dataset, data.augment = train, "none"
    batches = iter(data.train_dataloader())
    next(batches)  # workers started
    images, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        try:
            batch = next(batches)
        except StopIteration:
            batches = iter(data.train_dataloader())
            continue
        images += len(data.on_after_batch_transfer([t.to(device, non_blocking=True) for t in batch], 0)[0])
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return images / (time.perf_counter() - start)


def step_images_per_second(config: str) -> tuple[float, float]:
    """The config's training step on this CPU in images/s, and its GFLOP per image."""
    from torch.utils.flop_counter import FlopCounterMode

    from benchmarks.harness import time_train_steps, train_step_seconds
    from training.precision import resolve_precision

    cli = build(config, "--data.init_args.num_workers=0")
    precision, _ = resolve_precision("cpu", cli.model)
    with FlopCounterMode(display=False) as counter:
        train_step_seconds(cli.model, cli.datamodule, "32-true", 1)
    batch = cli.datamodule.batch_size
    return batch / time_train_steps(cli.model, cli.datamodule, precision, 3), counter.get_total_flops() / batch / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="how long each loader is iterated")
    parser.add_argument("--configs", nargs="*", default=list(CONFIGS), help="none: the loader table only")
    parser.add_argument("--device", default="cpu", help="where each batch goes and is augmented (cuda on a GPU)")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--utilisation", type=float, default=0.4, help="of the H100's bf16 peak, for its consumption")
    args = parser.parse_args()
    use_project_defaults()
    print(f"{machine_line()}\n")
    settings = ["--data.init_args.num_workers=0", "--data.init_args.num_workers=2", "--data.init_args.on_device=true"]
    print(f"| dataset | augmentation | images/s, 0 workers | images/s, 2 workers | images/s, held on the {args.device} "
          f"|\n|---|---|---|---|---|")
    for dataset in args.datasets:
        for label, augment, per_image in LEVELS:
            cells = []
            for setting in settings:
                if "on_device" in setting and (per_image or augment == "strong"):  # read an image at a time
                    cells.append("–")
                    continue
                data = build(DATASETS[dataset], f"--data.init_args.augment={augment}", setting).datamodule
                cells.append(f"{loader_images_per_second(data, args.seconds, per_image, args.device):,.0f}")
            print(f"| {dataset} | {label} | {' | '.join(cells)} |", flush=True)
    if not args.configs:
        return
    print(f"\n| config | augmentation | loader images/s | step images/s (this CPU) | loader / step | GFLOP per image "
          f"| H100 images/s at {args.utilisation:.0%} of bf16 peak | loader / H100 |\n|---|---|---|---|---|---|---|---|")
    for config in args.configs:
        data = build(config).datamodule
        loader = loader_images_per_second(data, args.seconds)
        step, gflop = step_images_per_second(config)
        h100 = H100_BF16_FLOPS * args.utilisation / (gflop * 1e9)
        print(f"| {config} | {data.augment} | {loader:,.0f} | {step:,.0f} | {loader / step:.1f} | {gflop:.3f} "
              f"| {h100:,.0f} | {loader / h100:.2f} |", flush=True)


if __name__ == "__main__":
    main()
