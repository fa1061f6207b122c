"""Samplers of one trained generative checkpoint (a DiffusionModule's DDPM-1000, DDIM, DPM-Solver++, or a
FlowMatchingModule's Euler and Heun), each at its number of network calls: wall time and FID/KID.

    python benchmarks/sampling.py --ckpt runs/ddpm_budget/budget.ckpt [--classifier vit_mnist.ckpt]
    python benchmarks/sampling.py --ckpt ... --samplers ddpm1000 ddim100_eta0 ddim100_eta1 ddim50_eta0 \
        ddim50_eta1 ddim20_eta0 ddim20_eta1 ddim10_eta0 ddim10_eta1 dpm_solver20 dpm_solver10
    python benchmarks/sampling.py --ckpt <flow_mnist ckpt> --samplers euler10 euler20 euler50 heun5 heun10 heun25

(``benchmarks/ddpm_mnist_budget.py`` trains a checkpoint and then calls ``evaluate``; ``benchmarks/results.py`` draws
the RESULTS.md sampler tables with it.) A sampler is the model's ``sample`` with settings named by ``sampler_arguments``.
All samplers use the EMA weights, the same initial noise, and bf16 autocast where it is native (CUDA, or a CPU with
AVX-512 BF16 / AMX;
fp32 elsewhere, where bf16 is emulated and ~20x slower). They draw in batches of 64 on a CPU and of 1000 on a GPU
(``BATCH``: 64 images leave a GPU idle between kernel launches); the time per 64 images is each batch's time scaled to
64 images, median over the batches. The first 64 images of each sampler are saved as a grid.
FID/KID (``SampleQuality``, classifier features; KID on 100 seeded subsets, ``kid_subset_size``) compare
``--num-fid`` samples of each sampler with as many MNIST test images; the same metrics between two disjoint sets of
real images give the floor at that sample count. The samples are saved batch by batch under
``<out>/batches/<sampler>/`` (see ``draw``): the same command run again, e.g. once a classifier exists, reuses them
(and their times), and lists those samplers under ``reused``.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compat import cpu_has_native_bf16  # noqa: E402
from datamodules import MNISTDataModule  # noqa: E402
from lightning_modules.base import GenerativeModule  # noqa: E402
from lightning_modules.images import image_grid, save_png  # noqa: E402
from lightning_modules.metrics import RULERS, SampleQuality, kid_subset_size  # noqa: E402
from lightning_modules.registry import project_class  # noqa: E402
from training.allocator import keep_freed_memory  # noqa: E402

SAMPLERS = {"ddim50": dict(sampler="ddim", num_steps=50, eta=0.0), "ddpm1000": dict(sampler="ddpm", num_steps=None)}
BATCH = {"cpu": 64, "cuda": 1000}  # images drawn at once, per device type


def sampler_arguments(name: str) -> dict:
    """A sampler's name -> the model's ``sample`` arguments: DDPM's ``ddim50``, ``ddpm1000``,
    ``ddim<steps>_eta<eta>``, ``dpm_solver<steps>``; rectified flow's ``euler<steps>`` and ``heun<steps>``."""
    if name in SAMPLERS:
        return SAMPLERS[name]
    if match := re.fullmatch(r"ddim(\d+)_eta([0-9.]+)", name):
        return dict(sampler="ddim", num_steps=int(match[1]), eta=float(match[2]))
    if match := re.fullmatch(r"dpm_solver(\d+)", name):
        return dict(sampler="dpm_solver", num_steps=int(match[1]))
    if match := re.fullmatch(r"(euler|heun)(\d+)", name):
        return dict(solver=match[1], steps=int(match[2]))
    raise ValueError(f"--samplers {name!r}: use ddim50, ddpm1000, ddim<steps>_eta<eta>, dpm_solver<steps>, "
                     f"euler<steps> or heun<steps>.")


def network_calls(name: str) -> int:
    """The network evaluations per image of a sampler: its steps, two per step for Heun, T = 1000 for DDPM."""
    settings = sampler_arguments(name)
    if settings.get("sampler") == "ddpm":
        return 1000
    steps = settings.get("num_steps") or settings["steps"]
    return 2 * steps if settings.get("solver") == "heun" else steps


def load_generative(ckpt: Path, device: str) -> GenerativeModule:
    """The generative model a module14 checkpoint holds (its class looked up among the project's, never imported)."""
    saved = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)["hyper_parameters"]["_class_path"]
    return project_class(saved, GenerativeModule).load_from_checkpoint(ckpt, map_location=device)


def real_images(n: int, train: bool) -> torch.Tensor:
    """The first n MNIST images (32 px, in [0, 1]) of the test split, or of the (seeded) training split: the same
    images in every run, so the real-vs-real floor is reproducible (the shuffled training loader would differ)."""
    data = MNISTDataModule(image_size=32, normalization="zero_one", val_size=5000, batch_size=n, num_workers=0)
    data.setup("fit" if train else "test")
    return next(iter(DataLoader(data.train_set if train else data.test_set, batch_size=n)))[0][:n]


def quality(classifier: str, n: int, real: torch.Tensor, fake: torch.Tensor, device: str) -> dict[str, float]:
    """FID/KID of ``fake`` against ``real`` on a shipped ruler (``classifier`` names one: mnist_vit) or on a
    ViTClassifier checkpoint (``classifier`` is its path)."""
    metric = SampleQuality.on(classifier, kid_subset_size=kid_subset_size(n)).to(device)
    for i in range(0, n, 256):
        metric.update(real[i:i + 256].to(device), real=True)
        metric.update(fake[i:i + 256].to(device), real=False)
    return {k: round(float(v), 5) for k, v in metric.compute().items()}


def checkpoint_identity(ckpt: Path) -> str:
    """The checkpoint file a batch was drawn from (its resolved path, size and modification time)."""
    stat = ckpt.resolve().stat()
    return f"{ckpt.resolve()} ({stat.st_size} bytes, mtime {stat.st_mtime_ns})"


def draw(module, name: str, noise: torch.Tensor, folder: Path, source: str, bf16: bool, batch: int = 64):
    """Every sample of ``noise`` with sampler ``name``, ``batch`` at a time -> (images in [0, 1], seconds per 64
    images of each batch, the number of batches this call drew).

    Each batch is saved as it is drawn (``folder/<first index>.pt``, with its seconds and the checkpoint it came from)
    and a rerun loads the saved batches instead of drawing them again, so a long sampler (10,000 DDPM-1000 samples
    take 3-4 hours on a 2-core CPU) can be drawn over several runs. A batch depends only on the checkpoint and its
    index (its initial noise is ``noise``'s slice, its generator is seeded from the index), so a resumed run draws the
    same images an uninterrupted one would.
    """
    device = noise.device.type
    folder.mkdir(parents=True, exist_ok=True)
    chunks, seconds, drawn = [], [], 0
    for start in range(0, len(noise), batch):
        path = folder / f"{start:05d}.pt"
        if path.is_file():
            saved = torch.load(path)
            if saved["checkpoint"] != source:
                raise SystemExit(f"{path} was drawn from {saved['checkpoint']}, not from {source}: delete {folder} "
                                 "to draw this sampler again from the current checkpoint.")
            if saved.get("batch", 64) != batch:
                raise SystemExit(f"{path} was drawn in batches of {saved.get('batch', 64)}, not {batch}: delete "
                                 f"{folder} to draw this sampler again.")
        else:
            g = torch.Generator(device).manual_seed(1000 + start)
            begin = time.perf_counter()
            chunk = noise[start:start + batch]
            with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
                x = module.sample(len(chunk), g, noise=chunk, **sampler_arguments(name))
            saved = {"images": x.float().cpu(), "seconds": time.perf_counter() - begin, "checkpoint": source,
                     "batch": batch}
            torch.save(saved, path.with_suffix(".tmp"))
            path.with_suffix(".tmp").replace(path)  # a run stopped mid-save leaves no half-written batch
            print(f"{name}: images {start}-{start + len(x)} in {saved['seconds']:.1f}s", flush=True)
            drawn += 1
        chunks.append(saved["images"])
        seconds.append(saved["seconds"] * 64 / len(saved["images"]))
    return torch.cat(chunks), seconds, drawn


def speedups(results: dict) -> dict[str, float]:
    """Each sampler's speed-up vs DDPM-1000 and vs DDIM-50 (η = 0): ratios of the ``<name>_seconds_64`` medians."""
    seconds = {key.removesuffix("_seconds_64"): value for key, value in results.items() if key.endswith("_seconds_64")}
    return {f"speedup_{name}_vs_{reference}": round(seconds[reference] / value, 2)
            for reference in ("ddpm1000", "ddim50_eta0") if reference in seconds
            for name, value in seconds.items() if name != reference}


def evaluate(ckpt: Path, args) -> dict:
    keep_freed_memory()  # sample as `module14 predict` does (its CLI sets this)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    module = load_generative(ckpt, device).eval()
    bf16 = torch.cuda.is_bf16_supported() if device == "cuda" else cpu_has_native_bf16()
    shape = tuple(module.hparams.image_shape)
    noise = torch.randn((args.num_fid, *shape), generator=torch.Generator().manual_seed(0)).to(device)
    results: dict = {"checkpoint": str(ckpt), "num_fid": args.num_fid, "threads": torch.get_num_threads(),
                     "device": device, "autocast_bf16": bf16, "batch": BATCH[device]}
    source = checkpoint_identity(ckpt)
    results["reused"] = []  # samplers whose every batch an earlier run saved: only their FID/KID are new
    samples = {}
    for name in args.samplers:
        samples[name], seconds, drawn = draw(module, name, noise, out / "batches" / name, source, bf16, BATCH[device])
        if not drawn:
            results["reused"].append(name)
        results[f"{name}_seconds_64"] = float(f"{statistics.median(seconds):.4g}")  # per 64 images, median of batches
        results[f"{name}_network_calls"] = network_calls(name)
        save_png(image_grid(samples[name][:64]), out / f"grid_{name}.png")
    results.update(speedups(results))
    add_quality(results, samples, args)
    return results


def add_quality(results: dict, samples: dict[str, torch.Tensor], args) -> None:
    out = Path(args.out)
    if args.classifier in RULERS or args.classifier and Path(args.classifier).is_file():
        test = real_images(args.num_fid, train=False)
        for name, fake in samples.items():
            results[name] = quality(args.classifier, args.num_fid, test, fake, results["device"])
        results["kid_subset_size"] = kid_subset_size(args.num_fid)
        results["real_train_vs_test"] = quality(args.classifier, args.num_fid, test, real_images(args.num_fid, True),
                                                results["device"])
    else:
        print(f"no classifier checkpoint at '{args.classifier}': FID/KID skipped. Run the same command with "
              "--classifier <ViTClassifier checkpoint>: it reuses the saved samples.", flush=True)
    (out / "eval.json").write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--out", default=None, help="default: the checkpoint's folder")
    parser.add_argument("--classifier", default="mnist_vit",
                        help="the features: a shipped ruler (mnist_vit, the default) or a ViTClassifier checkpoint; "
                             "'' to skip FID/KID")
    parser.add_argument("--num-fid", type=int, default=128, help="samples per sampler (a multiple of 64)")
    parser.add_argument("--samplers", nargs="+", default=list(SAMPLERS),
                        help="ddim50, ddpm1000, ddim<steps>_eta<eta> (e.g. ddim100_eta0.5), dpm_solver<steps> for a "
                             "DDPM; euler<steps>, heun<steps> for rectified flow")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    for name in args.samplers:
        sampler_arguments(name)  # a bad name fails now, not after the first samplers ran
    args.out = args.out or str(Path(args.ckpt).parent)
    torch.set_num_threads(args.threads)
    evaluate(Path(args.ckpt), args)


if __name__ == "__main__":
    main()
