"""RESULTS.md: one row per config, every figure measured by this script from a run whose command is in the table.

    python benchmarks/results.py --row vae_mnist               # train + test through the CLI, rewrite that row
    python benchmarks/results.py --row vae_mnist --seeds 0     # fewer seeds than the row's default
    python benchmarks/results.py --row gan_mnist --check       # train + test again here; compare with the table
    python benchmarks/results.py --render                      # only re-render RESULTS.md from the results file
    python benchmarks/results.py --sampler-table 10000 --samplers ddpm1000   # add samplers to the 10,000 table

``--row NAME`` trains the row's config with ``module14 fit`` (in-process, ``cli.build_cli``), tests the final weights
with ``module14 test``, adds the row's own evaluation (a sample grid, FID's real-vs-real floor, the DDPM sampler
table), and stores the measured figures in ``docs/results/results.json``; RESULTS.md is rendered from that file, so
rows update independently. ``--check`` trains and tests the row again the same way (under ``runs/check/``, nothing
in the table changes) and reports each metric against the table's: inside mean ± max(3 std over its seeds,
``Row.check_tolerance`` x |mean|), or the exit status is 1. On a machine without a GPU a row runs its CPU-sized
budget (``Row.cpu_budget``), and a row whose config needs a GPU says so. A row that ships weights
(``Row.ships_weights``) writes its first seed's as ``weights/<row>.ckpt`` (``--ckpt_path pretrained``). The MNIST generative rows compute FID on the shipped MNIST ruler
(``features: mnist_vit``, ``weights/mnist_vit.pt``, pinned by sha256); retraining the vit_mnist row does not change
it: ``--export-ruler`` makes a new one, deliberately.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.harness import MNIST_CLASSIFIER, RUNS  # noqa: E402
from lightning_modules.base import GenerativeModule  # noqa: E402

RESULTS_DIR = ROOT / "docs/results"
RESULTS_JSON = RESULTS_DIR / "results.json"
RESULTS_MD = ROOT / "RESULTS.md"
FID_SAMPLES = 10_000  # MNIST: the whole test split
SAMPLERS = ("ddpm1000", "ddim100_eta0", "ddim100_eta1", "ddim50_eta0", "ddim50_eta1", "ddim20_eta0", "ddim20_eta1",
            "ddim10_eta0", "ddim10_eta1", "dpm_solver20", "dpm_solver10")  # the ddpm_mnist row's table
FLOW_SAMPLERS = ("euler10", "euler20", "euler50", "heun5", "heun10", "heun25")  # flow_mnist's: 10, 20, 50 U-Net calls
CPU_SAMPLER_IMAGES = 512  # samples per sampler on a CPU: 10k DDPM-1000 samples take 3-4 hours on 2 cores


RULER = "mnist_vit"  # every MNIST FID/KID: the shipped ruler (lightning_modules/metrics.py RULERS)


def _mnist_fid(num_samples: int = FID_SAMPLES) -> tuple[str, ...]:
    """The FID/KID callback on the MNIST ruler's features (its flags follow ``+=``: they set the appended callback)."""
    return ("--trainer.callbacks+=SampleQualityMonitor", f"--trainer.callbacks.features={RULER}",
            f"--trainer.callbacks.num_samples={num_samples}", "--trainer.callbacks.kid_subset_size=1000")


def quality_monitor(cli):
    """The run's ``SampleQualityMonitor`` (FID/KID), or None."""
    from lightning_modules.metrics import SampleQualityMonitor

    return next((c for c in cli.trainer.callbacks if isinstance(c, SampleQualityMonitor)), None)


@dataclass(frozen=True)
class Row:
    """How one config's row is measured (the defaults, unless ``PROTOCOL`` says otherwise for that config).

    config: the name in configs/. grid: the ``sample_images`` panel saved as the row's PNG (a classifier's grid is its
    misclassified test images). overrides: CLI arguments always added (e.g. FID settings). cpu_budget: CLI arguments
    that size the run for a CPU. needs_gpu: the config's own budget needs a GPU; the CPU run is a CPU-sized variant.
    seeds: the default seeds (mean ± std over them when several). needs_classifier: FID/KID on the MNIST ruler.
    samplers: the sampler table drawn from the row's checkpoint (``benchmarks/sampling.py``).
    ships_weights: the row's trained weights (its first seed's) ship as ``weights/<row>.ckpt``, pinned, for
    ``--ckpt_path pretrained``; written when the row is measured (``--export-weights`` for a record measured before).
    check_tolerance: ``--check``'s band around the table's mean, relative to it, where 3 std over the row's seeds is
    narrower (a one-seed row has no spread: this is its whole band).
    test_precision: the precision the final weights are tested in (``None``: the precision rule's, as for fit).
    ``32-true`` gives a figure every CPU reproduces to the last image from the shipped weights, whatever precision
    the machine's rule trains in.
    The metrics a row reports, and their labels, are the model's ``reported_metrics()`` and its FID callback's.
    """

    config: str
    grid: str = "samples"
    overrides: tuple[str, ...] = ()
    cpu_budget: tuple[str, ...] = ()
    needs_gpu: bool = False
    seeds: tuple[int, ...] = (42,)
    needs_classifier: bool = False
    samplers: tuple[str, ...] = ()
    ships_weights: bool = False
    check_tolerance: float = 0.05
    test_precision: str | None = None


# CIFAR-10 / CelebA on a CPU: the shared partial copies (torchvision's md5 check refuses them), 6 minutes each unless
# a row says otherwise
_SUBSET = ("--data.init_args.verify_integrity=false",)
_CIFAR_CPU = ("--trainer.max_time=00:00:06:00",)
_CPU = dict(overrides=_SUBSET, cpu_budget=_CIFAR_CPU, needs_gpu=True)
# 30 minutes (the "30-60 minutes" budget) for the DCGAN and DDPM rows, whose samples were still forming after 6
_CPU_30_MIN = ("--trainer.max_time=00:00:30:00",)
_GAN_CPU = dict(_CPU, cpu_budget=_CPU_30_MIN)  # dcgan_cifar10 may end sooner, at its config's 100 epochs
# The CIFAR ViT's warm-up and cosine schedule span its epochs: stopped by time at 6 minutes it was still warming up
# (4 of 100 epochs). Its CPU variant trains 20 epochs of the partial copy (~30 minutes), the schedule run to its end;
# 45 minutes at most.
_VIT_CPU = dict(_CPU, cpu_budget=("--trainer.max_epochs=20", "--trainer.max_time=00:00:45:00"))
# The VAE configs' validation splits (5000 / 2000 images) are sized for the full datasets and would take most of a
# partial copy: 10% here. Training stops at the 6 minutes or the config's epochs (its cosine schedule spans them).
_VAE_CPU = dict(_CPU, cpu_budget=_CIFAR_CPU + ("--data.init_args.val_size=0.1",))
# The DDPM configs' 35M-parameter U-Nets take seconds per step on a CPU: the CPU-sized variant trains ddpm_mnist's
# U-Net (32 channels, one residual block per level, no attention or dropout) with its short warm-up and EMA, for 30
# minutes, validating and sampling every 5th epoch (CelebA's drew noise after 6 minutes: its 64 px validation and
# sample grid every epoch of the partial copy took much of its 122 steps).
_DDPM_NET = tuple(f"--model.init_args.{k}" for k in (
    "model_channels=32", "num_res_blocks=1", "attention_levels=[]", "dropout=0.0", "norm_groups=8", "lr=1e-3",
    "warmup_steps=100", "ema_decay=0.995"))
_DDPM_CPU = dict(_CPU, cpu_budget=(*_CPU_30_MIN, "--trainer.check_val_every_n_epoch=5", *_DDPM_NET))
# The two MNIST U-Net rows (DDPM and rectified flow: the same network, data and optimiser) train the same number of
# steps, what ddpm_mnist's 30 CPU minutes gave (7,510 batches of 64), whatever else the machine runs meanwhile.
_MNIST_UNET = dict(cpu_budget=("--trainer.max_steps=7500",), needs_classifier=True, ships_weights=True)
# How each config's row is measured where it differs from ``Row``'s defaults; a config that is not here gets a row
# with the defaults. The order is the table's (configs not listed follow, by name).
PROTOCOL: dict[str, dict] = {
    # Trained in the machine's precision, tested in exact fp32: the shipped weights give its figure on every CPU.
    "vit_mnist": dict(check_tolerance=0.003, ships_weights=True, seeds=(42, 0, 1), test_precision="32-true"),
    "vit_cifar10": _VIT_CPU,
    "vae_mnist": dict(grid="prior_samples", seeds=(0, 1, 2), ships_weights=True, check_tolerance=0.01),  # ~1 nat
    "betavae_mnist": dict(grid="traversals", ships_weights=True),
    "vae_cifar10": dict(grid="prior_samples", **_VAE_CPU),
    "betavae_celeba": dict(grid="traversals", **_VAE_CPU),
    "gan_mnist": dict(grid="generator", overrides=_mnist_fid(), cpu_budget=("--trainer.max_epochs=10",),
                      needs_classifier=True, ships_weights=True),
    "dcgan_mnist": dict(grid="generator_ema", overrides=_mnist_fid(), cpu_budget=("--trainer.max_epochs=8",),
                        seeds=(0, 1, 2), needs_classifier=True, ships_weights=True),
    "dcgan_cifar10": dict(grid="generator_ema", **_GAN_CPU),
    "dcgan_celeba": dict(grid="generator_ema", **_GAN_CPU),
    "ddpm_mnist": dict(samplers=SAMPLERS, **_MNIST_UNET),
    "ddpm_cifar10": _DDPM_CPU,
    "ddpm_celeba": _DDPM_CPU,
    "flow_mnist": dict(samplers=FLOW_SAMPLERS, **_MNIST_UNET),
}


def experiment_configs() -> list[str]:
    """Every config in configs/ but base.yaml, in the table's order."""
    names = sorted(path.stem for path in (ROOT / "configs").glob("*.yaml") if path.stem != "base")
    return [name for name in PROTOCOL if name in names] + [name for name in names if name not in PROTOCOL]


ROWS: dict[str, Row] = {name: Row(name, **PROTOCOL.get(name, {})) for name in experiment_configs()}


# ------------------------------------------------------------------------------------------------ measuring
def hardware() -> str:
    """The GPU's name, or the CPU model, core count and the flags that decide CPU speed (lscpu)."""
    if torch.cuda.is_available():
        return f"GPU: {torch.cuda.get_device_name(0)}"
    from benchmarks.machine import cpu_flags

    lscpu = dict(line.split(":", 1) for line in subprocess.run(
        ["lscpu"], capture_output=True, text=True, check=False).stdout.splitlines() if ":" in line)
    model = lscpu.get("Model name", platform.processor()).strip()
    return f"CPU: {model}, {os.cpu_count()} cores, flags {cpu_flags()}"


def cli_args(row: Row, seed: int, out: Path, extra: tuple[str, ...] = ()) -> list[str]:
    """The row's ``module14`` arguments for one seed (``extra``: ``--extra-args``, e.g. a test's tiny budget)."""
    budget = () if torch.cuda.is_available() else row.cpu_budget
    return ["--config", f"configs/{row.config}.yaml", f"--seed_everything={seed}", *row.overrides, *budget, *extra,
            "--trainer.logger=CSVLogger", f"--trainer.logger.init_args.save_dir={out.relative_to(ROOT)}"]


def recorded_cli(row: Row, seed: int, extra: tuple[str, ...] = ()) -> str:
    """The fit command a record states (its first seed's, writing under ``runs/results``)."""
    return "module14 fit " + shlex.join(cli_args(row, seed, RUNS / row.config / f"seed{seed}", extra))


def run_seed(row: Row, seed: int, runs: Path = RUNS, extra: tuple[str, ...] = ()) -> tuple[dict, object]:
    """fit + test one seed through the CLI, under ``runs``; returns the measured figures and the test CLI (model,
    datamodule)."""
    from cli import build_cli

    out = runs / row.config / f"seed{seed}"
    args = cli_args(row, seed, out, extra)
    load = os.getloadavg()[0]
    start = time.perf_counter()
    fit = build_cli(args=["fit", *args])
    wall = time.perf_counter() - start
    ckpt = out / "final.ckpt"
    fit.trainer.save_checkpoint(ckpt)
    tested_in = [f"--trainer.precision={row.test_precision}"] if row.test_precision else []
    test = build_cli(args=["test", *args, *tested_in, f"--ckpt_path={ckpt.relative_to(ROOT)}"])
    logged = test.trainer.callback_metrics
    metrics = {k: float(logged[k]) for k in reported_metrics(test) if k in logged}
    batches = fit.trainer.fit_loop.epoch_loop.batch_progress.total.completed
    figures = {"seed": seed, "wall_s": round(wall, 1), "batches": batches, "batch_size": fit.datamodule.batch_size,
               "epochs": round(batches / fit.trainer.num_training_batches, 2), "precision": str(fit.trainer.precision),
               "test_precision": str(test.trainer.precision), "load_avg_at_start": round(load, 2),
               "checkpoint": str(ckpt.relative_to(ROOT)), "metrics": metrics}
    return figures, test


def reported_metrics(cli) -> dict[str, tuple[str, str]]:
    """The test metrics a row reports, with their labels and formats: the model's own (``reported_metrics``) and, when
    the run computed FID/KID, the FID callback's."""
    metrics = dict(cli.model.reported_metrics())
    if (monitor := quality_monitor(cli)) is not None:
        features = "MNIST ViT features" if monitor.metric.name == "vit" else "Inception features"
        metrics |= {f"test/fid_{monitor.metric.name}": (f"FID ({features})", "{:.2f}"),
                    f"test/kid_{monitor.metric.name}": (f"KID ({features})", "{:.4f}")}
    return metrics


def summarise(runs: list[dict]) -> dict[str, dict]:
    """Per metric: every seed's value, their mean and (with several seeds) the standard deviation."""
    summary = {}
    for name in runs[0]["metrics"]:
        values = [run["metrics"][name] for run in runs]
        summary[name] = {"values": values, "mean": statistics.fmean(values),
                         "std": statistics.stdev(values) if len(values) > 1 else None}
    return summary


def test_images(test_cli, n: int = 64) -> torch.Tensor:
    batch = next(iter(test_cli.datamodule.test_dataloader()))
    return batch[0][:n]


GRID_MAX_BYTES = 100_000  # the committed grids are previews: a few tens of KB each


def compact_png(path: Path) -> None:
    """Re-save a grid PNG with a 256-colour palette, at half size while it is over ``GRID_MAX_BYTES``."""
    from PIL import Image

    image = Image.open(path).convert("RGB")
    while True:
        image.quantize(256).save(path, optimize=True)
        if path.stat().st_size <= GRID_MAX_BYTES or min(image.size) < 128:
            return
        image = image.resize((image.width // 2, image.height // 2), Image.Resampling.LANCZOS)


def save_grid(name: str, images: torch.Tensor) -> str:
    from lightning_modules.images import image_grid, save_png

    path = RESULTS_DIR / f"{name}.png"
    save_png(image_grid(images), path)
    compact_png(path)
    return str(path.relative_to(ROOT))


@torch.no_grad()
def classifier_grid(name: str, test_cli) -> tuple[str, str]:
    """Up to 64 misclassified test images (what the classifier gets wrong is what is worth seeing)."""
    model, data = test_cli.model.eval(), test_cli.datamodule
    wrong = []
    for x, y in data.test_dataloader():
        wrong.append(x[model(x.to(model.device)).argmax(-1).cpu() != y])
    images = torch.cat(wrong)[:64]
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in (data.mean, data.std))
    return save_grid(name, (images * std + mean).clamp(0, 1)), "misclassified test images"


@torch.no_grad()
def panel_grid(name: str, row: Row, test_cli) -> tuple[str, str]:
    model = test_cli.model.eval()
    generator = torch.Generator(device=model.device).manual_seed(0)
    panels = model.sample_images(test_images(test_cli).to(model.device), generator)
    return save_grid(name, panels[row.grid]), row.grid.replace("_", " ")


def real_vs_real_floor(test_cli, num_samples: int) -> dict[str, float]:
    """FID/KID between training images and the test images on the same features: the floor at this sample count."""
    from lightning_modules.images import to_unit_range
    from lightning_modules.metrics import SampleQuality, kid_subset_size

    data = test_cli.datamodule
    data.setup("fit")
    quality = SampleQuality(features=RULER,
                            kid_subset_size=kid_subset_size(num_samples))
    seen = 0
    for (real, _), (train, _) in zip(data.test_dataloader(), data.train_dataloader()):
        take = min(len(real), len(train), num_samples - seen)
        quality.update(to_unit_range(real[:take], data.value_range), real=True)
        quality.update(to_unit_range(train[:take], data.value_range), real=False)
        seen += take
        if seen >= num_samples:
            break
    return {f"floor/{k}": float(v) for k, v in quality.compute().items() if not k.startswith("kid_std")}


def sampler_table(name: str, checkpoint: str, num_samples: int, samplers: list[str], command: str) -> dict:
    """FID and wall time per sampler (``benchmarks/sampling.py``) from row ``name``'s checkpoint. The samples are kept
    in ``runs/results/<name>/samplers_<N>/batches``: a stopped run resumes where it stopped."""
    from benchmarks.sampling import evaluate

    run = {"command": command, "commit": _commit(), "date": time.strftime("%Y-%m-%d"), "samplers": samplers}
    out = RUNS / name / f"samplers_{num_samples}"
    args = SimpleNamespace(out=str(out), num_fid=num_samples, samplers=samplers, classifier=RULER)
    measured = evaluate(ROOT / checkpoint, args)
    run["reused"] = measured.pop("reused")  # samplers whose samples (and times) an earlier run drew
    return {**measured, "checkpoint": checkpoint, "features": feature_network(), "hardware": hardware(),
            "runs": [run]}  # the checkpoint's path as in the row


def sampler_tables(record: dict) -> list[dict]:
    """A row's sampler tables; those from before the tables recorded where they were drawn get the row's hardware and
    batches of 64 (where and how they were drawn)."""
    return [{"hardware": record["hardware"], "batch": 64, **table} for table in record.get("samplers", [])]


def merge_sampler_table(tables: list[dict], table: dict, samplers: tuple[str, ...] = SAMPLERS) -> list[dict]:
    """A row's tables with a newly measured one: it joins the table with the same number of samples on the same
    features and hardware (its samplers' figures replace theirs, the speed-ups are recomputed, both commands are
    kept, and the KID subset size is stated only if every KID used it), or else replaces it. ``samplers``: the
    row's."""
    from benchmarks.sampling import speedups

    old = next((t for t in tables if t["num_fid"] == table["num_fid"]), None)
    same = ("features", "hardware", "batch")
    if old is not None and all(old.get(key) == table.get(key) for key in same):
        kept = [name for name in samplers if name in old and name not in table]  # figures the new run leaves as is
        joined = {**old, **table, "runs": old["runs"] + table["runs"]}
        if kept and old.get("kid_subset_size") != table.get("kid_subset_size"):
            joined.pop("kid_subset_size", None)  # KIDs on different subset sizes: the table states none
        table = {**joined, **speedups(joined)}
    return [t for t in tables if t is not old] + [table]


def extra_sampler_table(name: str, num_samples: int, samplers: list[str]) -> dict:
    """``--sampler-table N``: a table on row ``name``'s checkpoint (kept beside the tables with other N)."""
    record = load_results().get(name)
    if record is None:
        raise SystemExit(f"--sampler-table evaluates the {name} row's checkpoint: run `python benchmarks/results.py "
                         f"--row {name}` first.")
    if num_samples < 64:
        raise SystemExit(f"--sampler-table {num_samples}: use at least 64 samples (each sampler is timed per batch "
                         "of 64).")
    return sampler_table(name, record["runs"][0]["checkpoint"], num_samples, samplers,
                         sampler_table_command(name, num_samples, samplers))


def earlier_sampler_tables(record: dict) -> dict:
    """What a retrained row keeps of the record it replaces: its sampler tables (and those it kept), which belong to
    the old checkpoint and the ViT of their day, shown apart from the new row's under the old row's commit."""
    kept = list(record.get("earlier_samplers", []))
    if record.get("samplers"):
        kept.append({"commit": record["commit"], "date": record["date"], "tables": sampler_tables(record)})
    return {"earlier_samplers": kept} if kept else {}


def sampler_table_command(name: str, num_samples: int, samplers: list[str]) -> str:
    """The command that measures ``samplers`` into row ``name``'s ``num_samples`` table (all when none is named)."""
    return (f"python benchmarks/results.py --sampler-table {num_samples}"
            + (f" --sampler-row {name}" if name != "ddpm_mnist" else "")
            + (f" --samplers {' '.join(samplers)}" if samplers != list(ROWS[name].samplers) else ""))


def feature_network() -> str:
    """Which network the MNIST FID features come from: FIDs are comparable only between runs on the same one."""
    from lightning_modules.metrics import RULERS

    from training.pretrained import pins

    ruler = RULERS[RULER]
    return f"the MNIST ruler `{RULER}` (`weights/{ruler.file}`, sha256 {pins()[ruler.file][:12]}; {ruler.what})"


def protocol(row: Row, test_cli, seeds: int) -> str:
    """What the metrics measure, read from the run: split and size, weights, network, features, sampler."""
    data, model = test_cli.datamodule, test_cli.model
    hp = model.hparams
    copy = "" if data.verify_integrity else ", of the partial copy in shared/data"
    parts = [f"{type(data).__name__.removesuffix('DataModule')} test split ({len(data.test_set):,} images{copy})",
             f"final weights tested in {test_cli.trainer.precision}", f"{seeds} seed(s)"]
    if "ema_decay" in hp:
        parts.append("samples from the " + ("EMA weights" if hp["ema_decay"] else "trained weights (no EMA)"))
    if (monitor := quality_monitor(test_cli)) is not None:
        parts.append(f"FID/KID: {min(monitor.num_samples, len(data.test_set)):,} samples vs as many test images, "
                     f"features of {feature_network()}")
    if "model_channels" in hp:  # the U-Net families
        params = sum(p.numel() for p in model.net.parameters()) / 1e6
        parts.append(f"U-Net {hp['model_channels']} channels, {params:.1f}M parameters")
    settings = {k: hp[k] for k in sorted(model.inference_args) if k in hp and k != "noise_seed"}
    if isinstance(model, GenerativeModule) and settings:
        parts.append("grid and predict with " + ", ".join(f"{k} {v}" for k, v in settings.items()))
    return "; ".join(parts)


def measure(name: str, seeds: list[int], extra: tuple[str, ...] = ()) -> dict:
    row = ROWS[name]
    runs, test_cli = [], None
    for seed in seeds:
        figures, cli = run_seed(row, seed, extra=extra)
        runs.append(figures)
        test_cli = test_cli or cli  # the grid and the protocol come from the first seed
    generative = isinstance(test_cli.model, GenerativeModule)
    grid, grid_caption = panel_grid(name, row, test_cli) if generative else classifier_grid(name, test_cli)
    record = {
        "command": f"python benchmarks/results.py --row {name} --seeds {' '.join(map(str, seeds))}"
                   + (f" --extra-args={shlex.quote(shlex.join(extra))}" if extra else ""),
        "cli": recorded_cli(row, seeds[0], extra),
        "hardware": hardware(), "gpu_run": torch.cuda.is_available(), "torch_threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d"), "commit": _commit(), "runs": runs, "metrics": summarise(runs),
        "metric_labels": [[key, label, fmt] for key, (label, fmt) in reported_metrics(test_cli).items()],
        "generative": generative,
        "protocol": protocol(row, test_cli, len(seeds)), "grid": grid, "grid_caption": grid_caption,
    }
    if (monitor := quality_monitor(test_cli)) is not None:
        record["floor"] = real_vs_real_floor(test_cli, monitor.num_samples)
        record["metric_labels"] += [[key, "real-vs-real FID floor", "{:.2f}"] for key in record["floor"]
                                    if key.startswith("floor/fid")]
    if row.samplers and row.needs_classifier:
        num = FID_SAMPLES if torch.cuda.is_available() else CPU_SAMPLER_IMAGES
        for old in (RUNS / name).glob("samplers_*"):
            shutil.rmtree(old)  # samples of the checkpoint this run replaced
        record["samplers"] = [sampler_table(name, runs[0]["checkpoint"], num, list(row.samplers), record["command"])]
    return record


# ------------------------------------------------------------------------------------------------ checking
CHECKS = ROOT / "runs/check"  # --check's runs and reports: the table's own runs stay as they are


def check_band(table: dict, tolerance: float) -> tuple[float, float]:
    """Where a new figure must fall: the table's mean ± max(3 std over its seeds, tolerance x |mean|)."""
    half = max(3 * (table.get("std") or 0.0), tolerance * abs(table["mean"]))
    return table["mean"] - half, table["mean"] + half


def check(name: str, record: dict | None, seeds: list[int] | None, extra: tuple[str, ...] = ()) -> dict:
    """``--check``: row ``name`` trained and tested again here the way its record was, each metric against the
    record's band (``check_band``); the report is also written to ``runs/check/<name>/check.json``."""
    row = ROWS[name]
    if record is None:
        raise SystemExit(f"--check compares with the table's {name} row, which has no record: measure it first with "
                         f"`python benchmarks/results.py --row {name}`.")
    recorded_seeds = [run["seed"] for run in record["runs"]]
    expected = recorded_cli(row, recorded_seeds[0], extra)
    if record["cli"] != expected:
        gpu = ("It was measured on a GPU and this machine runs the CPU budget, or the other way round. "
               if record["gpu_run"] != torch.cuda.is_available() else "")
        raise SystemExit(f"--check {name}: the row was measured with\n  {record['cli']}\nbut runs here as\n  {expected}\n"
                         f"{gpu}The figures would not compare: measure the row again (--row {name}) or check it where "
                         "it was measured.")
    runs = [run_seed(row, seed, CHECKS, extra)[0] for seed in seeds or recorded_seeds]
    here = summarise(runs)
    table_by_seed = {run["seed"]: run["metrics"] for run in record["runs"]}
    metrics = {}
    for key, table in record["metrics"].items():
        low, high = check_band(table, row.check_tolerance)
        now = here.get(key)
        metrics[key] = {
            "table": table, "here": now, "band": [low, high],
            "inside": now is not None and low <= now["mean"] <= high,
            "same_seed": {str(run["seed"]): [table_by_seed[run["seed"]].get(key), run["metrics"].get(key)]
                          for run in runs if run["seed"] in table_by_seed},
        }
    command = (f"python benchmarks/results.py --row {name} --check" + (f" --seeds {' '.join(map(str, seeds))}" if seeds else "")
               + (f" --extra-args={shlex.quote(shlex.join(extra))}" if extra else ""))
    report = {"row": name, "command": command, "tolerance": row.check_tolerance, "metrics": metrics,
              "table": {k: record[k] for k in ("commit", "date", "hardware")},
              "here": {"commit": _commit(), "date": time.strftime("%Y-%m-%d"), "hardware": hardware()},
              "wall_s": {"table": [run["wall_s"] for run in record["runs"]], "here": [run["wall_s"] for run in runs]}}
    path = CHECKS / name / "check.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1) + "\n")
    return report


def check_text(report: dict, labels: dict[str, tuple[str, str]]) -> str:
    """The check's verdict per metric, with the figures it compared."""
    table, here = report["table"], report["here"]
    lines = [f"{report['row']}: measured again here ({here['hardware']}, commit {here['commit']}) against the table "
             f"({table['hardware']}, commit {table['commit']}, {table['date']}); band: the table's mean ± max(3 std "
             f"over its seeds, {report['tolerance']:g} x |mean|). Fit minutes: table "
             + "/".join(f"{s / 60:.1f}" for s in report["wall_s"]["table"]) + ", here "
             + "/".join(f"{s / 60:.1f}" for s in report["wall_s"]["here"]) + "."]
    for key, m in report["metrics"].items():
        label, fmt = labels.get(key, (key, "{:.4f}"))
        now = "missing" if m["here"] is None else _value(m["here"], fmt)
        low, high = (fmt.format(v) for v in m["band"])
        lines.append(f"  {'inside ' if m['inside'] else 'OUTSIDE'}  {label}: here {now}, table "
                     f"{_value(m['table'], fmt)} (band {low} to {high})")
        lines += [f"           seed {seed}: table {fmt.format(old)}, here " + ("missing" if new is None else fmt.format(new))
                  for seed, (old, new) in m["same_seed"].items() if old is not None]
    failed = [key for key, m in report["metrics"].items() if not m["inside"]]
    lines.append(f"{report['row']}: " + (f"{len(failed)} metric(s) outside the band: {', '.join(failed)}" if failed
                                         else "every metric inside the band")
                 + f" (report: {(CHECKS / report['row'] / 'check.json').relative_to(ROOT)})")
    return "\n".join(lines)


def _commit() -> str:
    """HEAD's short hash; in a copy of the tree without its .git (a lent GPU machine), ``$MODULE14_COMMIT``."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                          check=False).stdout.strip()
    return head or os.environ.get("MODULE14_COMMIT", "unknown")


# ------------------------------------------------------------------------------------------------ rendering
def _value(summary: dict, fmt: str) -> str:
    text = fmt.format(summary["mean"])
    return text + (f" ± {fmt.format(summary['std'])}" if summary.get("std") is not None else "")


def metrics_cell(record: dict) -> str:
    """The row's metrics with the labels its model gave them (``metric_labels``, in its order), the floor, and the
    protocol."""
    shown = [f"{label} {_value(record['metrics'][key], fmt)}" for key, label, fmt in record.get("metric_labels", [])
             if key in record["metrics"]]
    shown += [f"{label} {fmt.format(record['floor'][key])}" for key, label, fmt in record.get("metric_labels", [])
              if key in record.get("floor", {})]
    if "samplers" in record:
        shown.append("sampler table below")
    if record.get("generative") and not shown:
        shown.append("FID/KID not measured: no feature network for this data offline (Inception FID needs its "
                     "weights: docs/models.md, \"Images and metrics\")")
    return "<br>".join(shown) + f"<br>*{record['protocol']}*"


def budget_cell(row: Row, record: dict) -> str:
    runs = record["runs"]
    variant = "CPU-sized: " if row.cpu_budget and not record["gpu_run"] else ""
    batches = "/".join(str(r["batches"]) for r in runs)
    wall = "/".join(f"{r['wall_s'] / 60:.1f}" for r in runs)
    load = "/".join(f"{r['load_avg_at_start']:.1f}" for r in runs)
    precisions = [r["precision"] for r in runs]  # precision: null is timed per run, so seeds may differ
    precision = precisions[0] if len(set(precisions)) == 1 else "/".join(precisions)
    return (f"{variant}{batches} batches of {runs[0]['batch_size']} ({runs[0]['epochs']} epochs), fit {wall} min, "
            f"{precision}"
            f"<br>load average at start {load}")


def pretrained_command(name: str, record: dict) -> str:
    """The command that tests the row's shipped weights the way the row was tested (its first seed). A row tested in
    exact fp32 names it, so that a CPU where the precision rule picks bf16 gives the row's figure too; a bf16 row's
    figure depends on the machine's bf16 kernels either way, and forcing bf16 where it is emulated costs ~20x."""
    row = ROWS[name]
    first = record["runs"][0]
    exact = ["--trainer.precision=32-true"] if first.get("test_precision", first["precision"]) == "32-true" else []
    args = ["--config", f"configs/{row.config}.yaml", f"--seed_everything={record['weights']['seed']}", *row.overrides,
            *exact, "--ckpt_path=pretrained"]
    return "module14 test " + shlex.join(args)


def weights_note(name: str, record: dict) -> str:
    """Where a row's shipped weights are and how to test them (nothing for a row that ships none)."""
    weights = record.get("weights")
    if not weights:
        return ""
    return (f"<br>weights: `{weights['file']}` (seed {weights['seed']}, {weights['megabytes']:.1f} MB, sha256 "
            f"{weights['sha256'][:12]}): `{pretrained_command(name, record)}`")


def table_row(name: str, record: dict | None) -> str:
    row = ROWS[name]
    command = f"`python benchmarks/results.py --row {name}`"
    if record is None:
        status = "not yet run on a GPU" if row.needs_gpu else "not yet run"
        if row.needs_gpu:
            status += " (CPU-sized variant: not yet run either)"
        return f"| `{name}` | – | – | {status} | – | {command} |"
    hw = f"{record['hardware']}, {record['torch_threads']} torch threads"
    if row.needs_gpu and not record["gpu_run"]:
        hw += "<br>**not yet run on a GPU**"
    grid = f"[{record['grid_caption']}]({record['grid']})"
    return (f"| `{name}` | {hw} | {budget_cell(row, record)} | {metrics_cell(record)} | {grid} | "
            f"`{record['command']}`<br>({record['date']}, commit {record['commit']}){weights_note(name, record)} |")


def sampler_section(table: dict, name: str = "ddpm_mnist", earlier: dict | None = None) -> list[str]:
    """Row ``name``'s sampler table: FID, KID and time per sampler, speed-ups where DDPM-1000 or DDIM-50 was drawn.
    ``earlier``: the table belongs to the row's checkpoint before it was retrained (``earlier_sampler_tables``)."""
    kid = f"; KID on 100 subsets of {table['kid_subset_size']:,} samples" if "kid_subset_size" in table else ""
    samplers = ROWS[name].samplers
    references = [ref for ref in ("ddpm1000", "ddim50_eta0") if ref in samplers]
    headers = {"ddpm1000": "speed-up vs DDPM-1000", "ddim50_eta0": "speed-up vs DDIM-50 (η = 0)"}
    title = f"### `{name}` samplers ({table['num_fid']:,} samples each, EMA weights, same initial noise)"
    if earlier:
        title = (f"### `{name}` samplers of the earlier checkpoint (the row of commit {earlier['commit']}, "
                 f"{earlier['date']}; {table['num_fid']:,} samples each)")
    lines = [title, "",
             "; ".join(f"`{run['command']}` ({run['date']}, commit {run['commit']}{_reused(run)})"
                       for run in table["runs"])
             + (f", on the {name} row's checkpoint of that commit, which the row no longer holds (nor, where the "
                "features are another ViT's, that ViT): compare these figures only with each other. " if earlier
                else f", on the {name} row's checkpoint. ")
             + f"FID and KID on the features of {table['features']}{kid}. " + _ruler_checked(table)
             + f"Sampled on {table['hardware']}, {table['batch']} images at a time; "
             "s / 64 images is a batch's time scaled to 64 images, median over the batches.", "",
             "| sampler | FID (MNIST ViT) | KID | s / 64 images |" + "".join(f" {headers[r]} |" for r in references),
             "|---|---|---|---|" + "---|" * len(references)]
    for sampler in samplers:
        if sampler not in table:
            continue
        speed = "".join(f" {table.get(f'speedup_{sampler}_vs_{ref}', '–')} |" for ref in references)
        lines.append(f"| {sampler} | {table[sampler]['fid_vit']:.2f} | {table[sampler]['kid_vit']:.4f} | "
                     f"{table[f'{sampler}_seconds_64']:g} |{speed}")
    floor = table["real_train_vs_test"]
    lines += [f"| real train vs test (floor) | {floor['fid_vit']:.2f} | {floor['kid_vit']:.4f} | – |"
              + " – |" * len(references), ""]
    missing = [sampler for sampler in samplers if sampler not in table]
    if missing and not earlier:
        lines += [f"Not yet drawn at {table['num_fid']:,} samples: {', '.join(missing)} "
                  f"(`{sampler_table_command(name, table['num_fid'], missing)}` draws them, resuming from the batches "
                  "a stopped run saved)." + (" Until DDPM-1000 is in, the speed-ups against it are blank."
                                             if "ddpm1000" in missing else ""), ""]
    lines += _solver_target(table)
    if table["num_fid"] < FID_SAMPLES and not earlier:
        hours = (f": at the DDPM-1000 time above, its {FID_SAMPLES:,} samples ({FID_SAMPLES * 1000:,} U-Net "
                 f"evaluations of one image) take {table['ddpm1000_seconds_64'] * FID_SAMPLES / 64 / 3600:.1f} hours "
                 "on this hardware" if "ddpm1000" in table else "")
        lines += [f"{table['num_fid']} samples per sampler, not the issue's {FID_SAMPLES:,}; the {FID_SAMPLES:,}-sample "
                  f"table is drawn separately, with `--sampler-table {FID_SAMPLES}`, over several sittings{hours}. "
                  "FID from so few samples is biased upwards and noisy; compare samplers only with each other and "
                  "with the floor at the same count.", ""]
    return lines


def by_network_calls(results: dict[str, dict]) -> list[str]:
    """Every row's samplers side by side at each number of network calls, from tables with the same sample count,
    features and hardware (the MNIST U-Net rows: DDPM and rectified flow on the same network and budget)."""
    from benchmarks.sampling import network_calls

    groups: dict[tuple, list[tuple[str, dict]]] = {}
    for name, record in results.items():
        for table in sampler_tables(record):
            groups.setdefault((table["num_fid"], table["features"], table["hardware"]), []).append((name, table))
    lines = []
    for (num, features, hardware), tables in sorted(groups.items(), key=lambda item: -item[0][0]):
        if len({name for name, _ in tables}) < 2:
            continue
        entries = sorted((network_calls(sampler), name, sampler, table) for name, table in tables
                         for sampler in ROWS[name].samplers if sampler in table)
        lines += [f"### Samplers by network calls ({num:,} samples each: {', '.join(name for name, _ in tables)})",
                  "", f"The tables above at equal sample counts, on the features of {features}, sampled on {hardware}: "
                  "each row's checkpoint, the same initial noise. One network call is one U-Net evaluation per image.",
                  "", "| network calls | row | sampler | FID (MNIST ViT) | KID | s / 64 images |", "|---|---|---|---|---|---|"]
        lines += [f"| {calls} | {name} | {sampler} | {table[sampler]['fid_vit']:.2f} | {table[sampler]['kid_vit']:.4f} | "
                  f"{table[f'{sampler}_seconds_64']:g} |" for calls, name, sampler, table in entries]
        lines += ["", _same_day_times(results, tables), ""]
    return lines


def _same_day_times(results: dict[str, dict], tables: list[tuple[str, dict]]) -> str:
    """Whether the rows' sampling times compare: the same CPU model is not the same speed on another day (another
    machine of the pool), which each row's fit rate shows."""
    names = [name for name, _ in tables]
    rates = {name: results[name]["runs"][0]["batches"] / results[name]["runs"][0]["wall_s"] * 60 for name in names}
    days = {name: table["runs"][-1]["date"] for name, table in tables}
    if len(set(days.values())) == 1:
        return f"Every row's samples were drawn on {days[names[0]]}: the times compare."
    return ("The rows were sampled on different days: " + ", ".join(f"{name} {days[name]}" for name in names)
            + ". The same CPU model ran their fits at " + ", ".join(f"{rates[name]:.0f}" for name in names)
            + " training steps per minute (the same network and batch), so compare the times within a row, and the "
            "FIDs across rows.")


def _ruler_checked(table: dict) -> str:
    """How a table measured before the ruler shipped was found to be on it (``--ruler-floor``), or not."""
    check = table.get("ruler_check")
    if not check:
        return ""
    floor = check["floor"]
    figures = f"FID {floor['fid_vit']}, KID {floor['kid_vit']} ± {floor['kid_std_vit']}"
    if check["same"]:
        return (f"It was measured on {check['features_before']}; the shipped ruler gives this table's real-vs-real "
                f"floor to every stored digit ({figures}; {check['date']}, commit {check['commit']}), so its features "
                "are that ViT's and these FIDs are on the ruler. ")
    return (f"Measured on {check['features_before']}, not on the shipped ruler: the ruler's floor is {figures}, not "
            f"this table's ({check['date']}, commit {check['commit']}); compare these figures only with each other. ")


def _reused(run: dict) -> str:
    """What a sampler-table run took from the saved samples of the runs before it (their images and times)."""
    reused = run.get("reused", [])
    if not reused:
        return ""
    which = "every sampler's" if reused == run["samplers"] else ", ".join(reused) + "'s"
    return f"; FID/KID of {which} samples saved by the runs before, with their times"


def _solver_target(table: dict) -> list[str]:
    """Issue 13's goal for DPM-Solver++ at 10-20 steps, read off the table: FID within 10% of DDIM-50's (η = 0),
    and at least 2.5x faster than it."""
    reference = table.get("ddim50_eta0")
    if reference is None:
        return []
    checks = []
    for name in ("dpm_solver20", "dpm_solver10"):
        if name in table:
            ratio = table[name]["fid_vit"] / reference["fid_vit"]
            speed = table.get(f"speedup_{name}_vs_ddim50_eta0", 0.0)
            met = "met" if ratio <= 1.1 and speed >= 2.5 else "not met"
            checks.append(f"{name}: FID {ratio:.2f}x DDIM-50's, {speed}x as fast ({met})")
    return ["Goal (DPM-Solver++ at 10-20 steps: FID within 10% of DDIM-50 η = 0, at least 2.5x faster): "
            + "; ".join(checks) + ".", ""]


HEADER = """# Results

Every figure below was measured by `benchmarks/results.py` and is rendered from `docs/results/results.json`;
nothing is typed in by hand. `python benchmarks/results.py --row NAME` retrains and re-evaluates one row (its exact
arguments to `module14 fit` are in the results file, under `cli`) and rewrites only that row. Budgets: a row run on a
CPU uses the row's CPU-sized budget (`Row.cpu_budget` in the script), which is far below the config's own; the budget
column states the batches, epochs and fit wall time spent, and the load average when each run started (the CPU is
shared with other work, so wall times on it are not speed figures).
FID/KID on MNIST use the class-token features of an MNIST ViT (`fid_vit`): since 2026-12-07 the ruler that ships with
module14, `weights/mnist_vit.pt` (`features: mnist_vit`, pinned by its sha256), so anyone's FIDs on it compare with
these; before, the vit_mnist row's checkpoint of the day. Each FID names its network, and is comparable only with
FIDs on the same one, never with published (Inception) FIDs. Issue targets are not claimed unless the figure shows
them.
"""


def render(results: dict[str, dict]) -> str:
    lines = [HEADER, "| row | hardware | budget | metrics (protocol) | grid | command |", "|---|---|---|---|---|---|"]
    lines += [table_row(name, results.get(name)) for name in ROWS]
    lines.append("")
    for name in ROWS:
        for table in sorted(sampler_tables(results.get(name, {})), key=lambda t: -t["num_fid"]):
            lines += sampler_section(table, name)
        for earlier in results.get(name, {}).get("earlier_samplers", []):
            for table in sorted(earlier["tables"], key=lambda t: -t["num_fid"]):
                lines += sampler_section(table, name, earlier)
    lines += by_network_calls({name: record for name, record in results.items() if name in ROWS})
    grids = [(name, r) for name, r in results.items() if name in ROWS]
    if grids:
        lines += ["## Grids", ""]
        lines += [f"**{name}** ({r['grid_caption']}): ![{name}]({r['grid']})\n" for name, r in grids]
    return "\n".join(lines)


def export_ruler() -> str:
    """``--export-ruler``: the vit_mnist row's network, weights only, as ``weights/mnist_vit.pt`` (what
    ``features: mnist_vit`` loads), pinned in ``weights/SHA256SUMS``; returns its sha256."""
    from lightning_modules.metrics import RULERS
    from training.pretrained import ship

    checkpoint = torch.load(MNIST_CLASSIFIER, map_location="cpu", weights_only=True)
    keep = ("image_shape", "num_classes", "normalization_mean_std", "patch_size", "embed_dim", "depth", "num_heads",
            "mlp_ratio")
    ruler = {"hyper_parameters": {k: checkpoint["hyper_parameters"][k] for k in keep},
             "state_dict": {k: v.clone() for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}}
    return ship(ruler, RULERS["mnist_vit"].file)


def ruler_floor_check(table: dict) -> dict:
    """``--ruler-floor``: were a sampler table's FIDs, measured before the ruler shipped, on its features? The ruler's
    real-vs-real floor on the table's images (the first ``num_fid`` of each split) against the table's own floor:
    equal to every stored digit (FID, KID and KID's spread) only if the features are; then the table names the ruler,
    and keeps the check."""
    from benchmarks.sampling import quality, real_images

    n = table["num_fid"]
    floor = quality(RULER, n, real_images(n, train=False), real_images(n, train=True), "cpu")
    check = {"floor": floor, "same": floor == table["real_train_vs_test"], "features_before": table["features"],
             "commit": _commit(), "date": time.strftime("%Y-%m-%d")}
    return {**table, "ruler_check": check, "features": feature_network() if check["same"] else table["features"]}


def ship_row_weights(name: str, record: dict) -> dict:
    """``weights/<row>.ckpt``: the row's trained weights (its first seed's), pinned, for ``--ckpt_path pretrained``;
    returns what the record says of them."""
    from training.pretrained import WEIGHTS, ship

    run = record["runs"][0]
    checkpoint = torch.load(ROOT / run["checkpoint"], map_location="cpu", weights_only=True)
    digest = ship(checkpoint, f"{name}.ckpt")
    file = WEIGHTS / f"{name}.ckpt"
    return {"file": str(file.relative_to(ROOT)), "sha256": digest, "seed": run["seed"],
            "megabytes": round(file.stat().st_size / 1e6, 2)}


def load_results(path: Path = RESULTS_JSON) -> dict[str, dict]:
    return json.loads(path.read_text()) if path.is_file() else {}


def write(results: dict[str, dict], json_path: Path = RESULTS_JSON, md_path: Path = RESULTS_MD) -> None:
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    md_path.write_text(render(results))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--row", help=f"one of: {', '.join(ROWS)}")
    action.add_argument("--render", action="store_true", help="only re-render RESULTS.md from the results file")
    action.add_argument("--compact-grids", action="store_true", help="re-save the committed grids as small PNGs")
    action.add_argument("--export-ruler", action="store_true",
                        help="write weights/mnist_vit.pt (the MNIST FID ruler) from the vit_mnist row's checkpoint and "
                             "pin its sha256 in weights/SHA256SUMS: a new ruler, a deliberate change")
    action.add_argument("--export-weights", nargs="+", metavar="ROW",
                        help="ship the rows' trained weights as weights/<row>.ckpt, pinned in weights/SHA256SUMS, from "
                             "their records' checkpoints (--row does it for the rows that ship weights)")
    action.add_argument("--ruler-floor", metavar="ROW",
                        help="a row's sampler tables measured before the ruler shipped: recompute their real-vs-real "
                             "floor on it, and name the ruler where the floor is the table's to every digit")
    action.add_argument("--sampler-table", type=int, metavar="N",
                        help="measure a row's sampler table (--sampler-row, default ddpm_mnist) with N samples per "
                             "sampler, from the row's checkpoint, on the current MNIST ViT; kept beside the tables "
                             "with other N, and joined with an earlier N-sample table on the same ViT (rerun the same "
                             "command to resume a stopped run: the drawn batches are kept)")
    parser.add_argument("--seeds", type=int, nargs="+", help="default: the row's seeds")
    parser.add_argument("--check", action="store_true",
                        help="with --row: train and test the row again here and compare each metric with the table's "
                             "(exit status 1 when one falls outside its band); the table is not changed")
    parser.add_argument("--table", type=Path, default=RESULTS_JSON, help="with --check: the results file to compare "
                        "with (default: %(default)s)")
    parser.add_argument("--extra-args", default="", metavar="ARGS",
                        help="more module14 arguments for every run of --row, as one string (e.g. a smaller budget: "
                             "'--trainer.max_steps=100'); the row's command records them")
    with_tables = [name for name, row in ROWS.items() if row.samplers]
    parser.add_argument("--sampler-row", default="ddpm_mnist", choices=with_tables,
                        help="with --sampler-table: whose checkpoint")
    parser.add_argument("--samplers", nargs="+", choices=[s for name in with_tables for s in ROWS[name].samplers],
                        help="with --sampler-table: which of the row's samplers (default: all)")
    args = parser.parse_args(argv)
    if args.row and args.row not in ROWS:
        parser.error(f"unknown row {args.row!r}; choose one of: {', '.join(ROWS)}")
    samplers = args.samplers or list(ROWS[args.sampler_row].samplers)
    if not set(samplers) <= set(ROWS[args.sampler_row].samplers):
        parser.error(f"--samplers: the {args.sampler_row} row's samplers are {', '.join(ROWS[args.sampler_row].samplers)}")
    if args.check and not args.row:
        parser.error("--check checks a row: --row NAME --check")
    extra = tuple(shlex.split(args.extra_args))
    os.environ.setdefault("WANDB_MODE", "offline")
    if args.compact_grids:
        for path in sorted(RESULTS_DIR.glob("*.png")):
            compact_png(path)
        return
    if args.export_ruler:
        print(f"weights/mnist_vit.pt: sha256 {export_ruler()}, pinned in weights/SHA256SUMS: measure every MNIST FID "
              "again")
        return
    record = table = None
    os.chdir(ROOT)  # the CLI arguments are relative to the repository root
    if args.check:
        record = load_results(args.table).get(args.row)
        report = check(args.row, record, args.seeds, extra)
        print(check_text(report, {key: (label, fmt) for key, label, fmt in record.get("metric_labels", [])}))
        raise SystemExit(0 if all(m["inside"] for m in report["metrics"].values()) else 1)
    if args.row:
        record = measure(args.row, args.seeds or list(ROWS[args.row].seeds), extra)
    if args.sampler_table is not None:
        table = extra_sampler_table(args.sampler_row, args.sampler_table, samplers)
    results = load_results()  # read after measuring: rows measured at the same time keep each other's records
    if record is not None:
        results[args.row] = {**record, **earlier_sampler_tables(results.get(args.row, {}))}
        if ROWS[args.row].ships_weights:
            results[args.row]["weights"] = ship_row_weights(args.row, record)
    for name in args.export_weights or []:
        if name not in results or not ROWS[name].ships_weights:
            parser.error(f"--export-weights {name}: the rows that ship weights are "
                         f"{', '.join(n for n, row in ROWS.items() if row.ships_weights)}, and they need a record")
        results[name]["weights"] = ship_row_weights(name, results[name])
    if args.ruler_floor:
        results[args.ruler_floor]["samplers"] = [
            table if table["features"] == feature_network() else ruler_floor_check(table)
            for table in results[args.ruler_floor].get("samplers", [])]
    if table is not None:
        owner = results[args.sampler_row]
        owner["samplers"] = merge_sampler_table(sampler_tables(owner), table, ROWS[args.sampler_row].samplers)
    write(results)
    what = (f" (row {args.row})" if args.row else
            f" ({args.sampler_row} sampler table, {args.sampler_table} samples)" if table else "")
    print(f"wrote {RESULTS_MD.relative_to(ROOT)}{what}")


if __name__ == "__main__":
    main()
