"""GPU check: one unattended command that measures every family on one GPU and writes a table.

    python benchmarks/gpu_check.py --pack .gpu_data              # on the dev machine: a small real CIFAR-10 subset
    python benchmarks/gpu_check.py --data .gpu_data --out DIR    # on the GPU machine (offline, < 8 min on one H200)
    python benchmarks/gpu_check.py --cpu-smoke --out DIR         # the same logic at tiny sizes on CPU (the test)

Sections, in the order they run (each setting is guarded: an error is recorded in the table and the script goes on;
a global budget, ``--budget-s``, makes later settings "skipped: budget" rather than overrun):

1. **throughput** of a training step (images/s) and peak GPU memory, for ``vit_cifar10``, ``vae_cifar10``,
   ``dcgan_celeba`` and ``ddpm_cifar10``, in ``32-true``, ``bf16-mixed`` and ``16-mixed``: the real LightningModule
   built from the config by the CLI, trained by a real ``lightning.Trainer`` on synthetic tensors of the config's
   shape and batch size. Timed batches follow warm-up batches, between ``torch.cuda.synchronize()`` calls. Eager
   settings run first; the ``torch.compile`` settings (the module's networks compiled in place) run last, because
   compiling costs the most time;
2. **amp checks**: a few ``16-mixed`` steps of the GAN with gradient clipping on (clipping after the grad scaler's
   unscale, manual optimisation) and of DDPM (``grad_clip_norm``, automatic optimisation): every loss and weight finite;
3. **sampling** time of 256 images with ``ddpm_cifar10``'s network (randomly initialised, bf16 autocast): DDIM-50,
   DPM-Solver (only if ``GaussianDiffusion`` has it) and ancestral DDPM over all T steps;
4. **real fit**: ``module14 fit`` (or ``python cli.py fit`` when the console script is not installed) of
   ``vit_cifar10`` for a few hundred steps on the packed subset held on the GPU (``data.on_device``), in a subprocess;
   exit code 0, and the checkpoint loads back on CPU.

Writes ``results.md`` and ``results.json`` into ``--out`` after every section (a partial run leaves partial results)
and prints the tables at the end. Exit code 1 if anything failed (errors, non-finite values), else 0.
"""

from __future__ import annotations

import argparse
import copy
import gc
import inspect
import json
import logging
import os
import pickle
import platform
import shutil
import subprocess
import sys
import time
import warnings
from datetime import datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

try:
    import lightning as L
    import torch
    from torch.utils.data import DataLoader
except ImportError as missing:  # the GPU machine brings its own packages: say what is missing, not a traceback
    sys.exit(f"gpu_check: {missing}. Install the project's dependencies first (pip install -e . from {ROOT}).")

FAMILIES = {
    "vit": "configs/vit_cifar10.yaml",
    "vae": "configs/vae_cifar10.yaml",
    "gan": "configs/dcgan_celeba.yaml",
    "ddpm": "configs/ddpm_cifar10.yaml",
}
# --cpu-smoke: the same configs, shrunk through the CLI's own overrides.
SMOKE_OVERRIDES = {
    "vit": ["--model.embed_dim=32", "--model.depth=1", "--model.num_heads=2", "--data.batch_size=4"],
    "vae": ["--model.feature_maps=8", "--model.latent_dim=8", "--data.batch_size=4"],
    "gan": ["--model.feature_maps=8", "--data.batch_size=4"],
    "ddpm": ["--model.init_args.model_channels=8", "--model.init_args.num_res_blocks=1",
             "--model.init_args.channel_mult=[1,2]", "--model.init_args.norm_groups=4",
             "--model.init_args.num_timesteps=20", "--data.batch_size=4"],
}
# The trained networks of each LightningModule: what --compile compiles (in place, so parameter names do not change).
COMPILE_TARGETS = {"vit": ["net"], "vae": ["net"], "gan": ["generator", "discriminator"], "ddpm": ["net"]}
PRECISIONS = ["32-true", "bf16-mixed", "16-mixed"]
COMPILED_ORDER = ["bf16-mixed", "16-mixed", "32-true"]  # most useful first: the budget may cut the last ones
SMOKE_COMPILED = ["32-true"]  # --cpu-smoke compiles in one precision only (the code path is the same in all)
REAL_FIT_CONFIG = "configs/vit_cifar10.yaml"
CIFAR_FOLDER = "cifar-10-batches-py"

START = time.monotonic()


def log(message: str) -> None:
    print(f"[{datetime.now():%H:%M:%S} +{time.monotonic() - START:6.1f}s] {message}", flush=True)


def short_error(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return f"error: {type(err).__name__}: {lines[0][:200] if lines else ''}"


class Budget:
    """Seconds left of the global budget; a section asks before each setting whether it still fits."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def allows(self, needed_s: float) -> bool:
        return self.left() >= needed_s


# ----------------------------------------------------------------------------------------------------- settings
def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="folder for results.md, results.json and the real fit's files")
    parser.add_argument("--data", type=Path, help="data root holding the packed cifar-10-batches-py (see --pack)")
    parser.add_argument("--pack", type=Path, help="only pack a CIFAR-10 subset from $MODULE14_DATA_DIR into this folder")
    parser.add_argument("--pack-train", type=int, default=4000, help="training images to pack (default 4000)")
    parser.add_argument("--pack-test", type=int, default=1000, help="test images to pack (default 1000)")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on CPU: checks the script's logic")
    parser.add_argument("--budget-s", type=float, default=420.0, help="global time budget in seconds (default 420)")
    parser.add_argument("--warmup", type=int, help="untimed batches per setting (default 10; smoke 1)")
    parser.add_argument("--timed", type=int, help="timed batches per setting (default 30; smoke 2)")
    parser.add_argument("--fit-steps", type=int, help="steps of the real fit (default 300; smoke 4)")
    parser.add_argument("--sample-images", type=int, help="images per sampling run (default 256; smoke 2)")
    parser.add_argument("--compile-backend", help="torch.compile backend (default inductor; smoke aot_eager)")
    args = parser.parse_args()
    if args.pack is None and args.out is None:
        parser.error("give --out DIR (or --pack DIR to only pack the data subset)")
    smoke = args.cpu_smoke
    defaults = {"warmup": (10, 1), "timed": (30, 2), "fit_steps": (300, 4), "sample_images": (256, 2),
                "compile_backend": ("inductor", "aot_eager")}
    for name, (gpu_value, smoke_value) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, smoke_value if smoke else gpu_value)
    return args


# ----------------------------------------------------------------------------------------------- packing data
def read_cifar_batch(path: Path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")  # as torchvision reads it


def write_cifar_batch(path: Path, label: str, data: np.ndarray, labels: list[int]) -> None:
    batch = {"batch_label": label, "labels": labels, "data": data,
             "filenames": [f"packed_{i:05d}.png" for i in range(len(labels))]}
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=4)  # raw bytes (protocol 2 stores them ~1.5x larger)


def pack_cifar10(source_root: Path, dest_root: Path, n_train: int, n_test: int) -> Path:
    """The first ``n_train`` training and ``n_test`` test images of CIFAR-10 in torchvision's layout (5 train batches)."""
    source, dest = source_root / CIFAR_FOLDER, dest_root / CIFAR_FOLDER
    dest.mkdir(parents=True, exist_ok=True)
    train = [read_cifar_batch(source / f"data_batch_{i}") for i in range(1, 6)]
    data = np.concatenate([b["data"] for b in train])[:n_train]
    labels = [label for b in train for label in b["labels"]][:n_train]
    if len(labels) < n_train:
        raise ValueError(f"{source} holds only {len(labels)} training images; asked for {n_train}")
    for i, part in enumerate(np.array_split(np.arange(n_train), 5), start=1):
        write_cifar_batch(dest / f"data_batch_{i}", f"packed training batch {i} of 5", data[part],
                          [labels[j] for j in part])
    test = read_cifar_batch(source / "test_batch")
    write_cifar_batch(dest / "test_batch", "packed testing batch", test["data"][:n_test], test["labels"][:n_test])
    shutil.copyfile(source / "batches.meta", dest / "batches.meta")
    size_mb = sum(p.stat().st_size for p in dest.iterdir()) / 1e6
    log(f"packed {n_train} train + {n_test} test CIFAR-10 images into {dest} ({size_mb:.1f} MB)")
    return dest_root


# ------------------------------------------------------------------------------------------- building models
def build_from_config(family: str, smoke: bool):
    """The LightningModule and datamodule exactly as ``module14 fit --config <config>`` builds them (not run)."""
    from cli import build_cli

    args = ["--config", str(ROOT / FAMILIES[family]), "--trainer.precision=32-true", "--trainer.logger=false",
            "--trainer.accelerator=cpu", "--trainer.devices=1"]
    cli = build_cli(args=args + (SMOKE_OVERRIDES[family] if smoke else []), run=False)
    return cli.model, cli.datamodule


def synthetic_loader(shape: tuple[int, ...], batch_size: int, num_classes: int | None, n_batches: int) -> DataLoader:
    """``n_batches`` ready-made (images in [-1, 1], integer labels) batches, alternating between two random ones."""
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, batch_size, *shape, generator=g) * 2 - 1
    labels = torch.randint(0, num_classes or 1, (2, batch_size), generator=g)
    batches = [(images[i % 2], labels[i % 2]) for i in range(n_batches)]
    return DataLoader(batches, batch_size=None)  # each item already is a batch


def compile_networks(model: L.LightningModule, family: str, backend: str) -> None:
    for name in COMPILE_TARGETS[family]:
        getattr(model, name).compile(backend=backend)


def losses_and_weights_finite(trainer: L.Trainer, model: L.LightningModule) -> str:
    losses = {k: v for k, v in trainer.callback_metrics.items() if "loss" in k}
    bad_losses = [k for k, v in losses.items() if not torch.isfinite(v).all()]
    bad_weights = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
    if bad_losses or bad_weights:
        return f"NO: {', '.join(bad_losses + bad_weights[:3])}"
    return "yes" if losses else "yes (weights; no loss logged)"


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def make_trainer(accelerator: str, precision: str, callbacks: list, out: Path) -> L.Trainer:
    return L.Trainer(
        accelerator=accelerator, devices=1, precision=precision, max_epochs=1, limit_val_batches=0,
        num_sanity_val_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=callbacks, default_root_dir=str(out / "trainer"),
    )


# ------------------------------------------------------------------------------------------------ throughput
class BatchTimer(L.Callback):
    """Wall time from the start of batch ``warmup`` to the end of the last batch, with CUDA synchronised at both ends."""

    def __init__(self, warmup: int, last: int) -> None:
        self.warmup, self.last = warmup, last
        self.start = self.end = None

    def _now(self) -> float:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            self.start = self._now()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx == self.last:
            self.end = self._now()


def throughput_row(family: str, precision: str, compiled: bool) -> dict:
    return {"family": family, "config": FAMILIES[family], "precision": precision,
            "compile": compiled, "batch": None, "images_per_s": None, "peak_gib": None, "finite": None, "status": ""}


def measure_throughput(row: dict, template: L.LightningModule, datamodule, args, accelerator: str) -> None:
    """Fills ``row`` with images/s, peak memory and the finite check of one setting (a fresh copy of the model)."""
    model = copy.deepcopy(template)
    if row["compile"]:
        compile_networks(model, row["family"], args.compile_backend)
    n_batches = args.warmup + args.timed
    loader = synthetic_loader(datamodule.dims, datamodule.batch_size, datamodule.num_classes, n_batches)
    timer = BatchTimer(args.warmup, n_batches - 1)
    trainer = make_trainer(accelerator, row["precision"], [timer], args.out)
    if accelerator == "gpu":
        torch.cuda.reset_peak_memory_stats()
    trainer.fit(model, train_dataloaders=loader)
    row["batch"] = datamodule.batch_size
    row["images_per_s"] = round(args.timed * datamodule.batch_size / (timer.end - timer.start), 1)
    if accelerator == "gpu":
        row["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    row["finite"] = losses_and_weights_finite(trainer, model)
    row["status"] = "ok" if row["finite"].startswith("yes") else "failed: non-finite"


def run_throughput_pass(results: dict, order: list[tuple[str, str]], compiled: bool, templates: dict,
                        datamodules: dict, args, accelerator: str, budget: Budget) -> None:
    """One throughput row per (family, precision) of ``order``; results are saved after each."""
    for family, precision in order:
        row = throughput_row(family, precision, compiled)
        run_throughput_setting(row, templates[family], datamodules[family], args, accelerator, budget)
        results["throughput"].append(row)
        save(results, args.out)


def run_throughput_setting(row: dict, template, datamodule, args, accelerator: str, budget: Budget) -> None:
    label = f"{row['family']} {row['precision']} {'compiled' if row['compile'] else 'eager'}"
    needed_s = (90 if row["compile"] else 15) if accelerator == "gpu" else 3  # a big compile can take ~1-2 min
    if accelerator == "cpu" and row["precision"] == "16-mixed":
        row["status"] = "skipped: no CUDA"
    elif template is None:
        row["status"] = "skipped: model not built"
    elif accelerator == "cpu" and row["compile"] and row["precision"] not in SMOKE_COMPILED:
        row["status"] = f"skipped: smoke compiles only in {', '.join(SMOKE_COMPILED)}"
    elif not budget.allows(needed_s):
        row["status"] = f"skipped: budget ({budget.left():.0f} s left)"
    else:
        log(f"throughput {label} ...")
        try:
            measure_throughput(row, template, datamodule, args, accelerator)
        except Exception as err:  # one failing setting must not stop the others
            row["status"] = short_error(err)
        finally:
            if row["compile"]:
                torch.compiler.reset()
            free_memory()
    log(f"throughput {label}: {row['images_per_s']} img/s, peak {row['peak_gib']} GiB, {row['status']}")


# ------------------------------------------------------------------------------------------------ amp checks
class LossWatcher(L.Callback):
    """Counts the batches after which a logged loss is not finite."""

    def __init__(self) -> None:
        self.batches = self.bad_batches = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.batches += 1
        losses = [v for k, v in trainer.callback_metrics.items() if "loss" in k]
        self.bad_batches += int(not all(torch.isfinite(v).all() for v in losses))


def amp_check(name: str, family: str, template, datamodule, args, accelerator: str, precision: str) -> dict:
    """A few steps of ``family`` under ``precision`` with gradient clipping on: losses and weights stay finite."""
    row = {"check": name, "precision": precision, "steps": 0, "non_finite_steps": None, "weights_changed": None,
           "grad_scale": None, "finite": None, "status": ""}
    model = copy.deepcopy(template)
    if family == "gan":
        model.hparams.grad_clip_norm = 1.0  # clipping in on_before_optimizer_step, after the scaler's unscale
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    watcher = LossWatcher()
    n_batches = args.warmup + args.timed
    loader = synthetic_loader(datamodule.dims, datamodule.batch_size, datamodule.num_classes, n_batches)
    trainer = make_trainer(accelerator, precision, [watcher], args.out)
    trainer.fit(model, train_dataloaders=loader)
    row["steps"] = watcher.batches
    row["non_finite_steps"] = watcher.bad_batches
    row["weights_changed"] = any(not torch.equal(before[n].to(p.device), p) for n, p in model.named_parameters())
    scaler = getattr(trainer.precision_plugin, "scaler", None)  # 16-mixed's GradScaler (none in bf16)
    row["grad_scale"] = scaler.get_scale() if scaler is not None else None
    row["finite"] = losses_and_weights_finite(trainer, model)
    ok = watcher.bad_batches == 0 and row["finite"].startswith("yes") and row["weights_changed"]
    row["status"] = "ok" if ok else "failed"
    return row


def run_amp_checks(templates: dict, datamodules: dict, args, accelerator: str, budget: Budget) -> list[dict]:
    # On CPU, 16-mixed has no grad scaler (Lightning would use bf16): run the same code path in bf16-mixed.
    precision = "16-mixed" if accelerator == "gpu" else "bf16-mixed"
    rows = []
    checks = [("GAN step + grad clipping (manual optimisation)", "gan"),
              ("DDPM step + grad_clip_norm (automatic optimisation)", "ddpm")]
    for name, family in checks:
        if templates.get(family) is None:
            row = {"check": name, "precision": precision, "status": "skipped: model not built"}
        elif not budget.allows(15 if accelerator == "gpu" else 3):
            row = {"check": name, "precision": precision, "status": f"skipped: budget ({budget.left():.0f} s left)"}
        else:
            log(f"amp check: {name}, {precision} ...")
            try:
                row = amp_check(name, family, templates[family], datamodules[family], args, accelerator, precision)
            except Exception as err:
                row = {"check": name, "precision": precision, "status": short_error(err)}
            free_memory()
        log(f"amp check: {name}: {row['status']}")
        rows.append(row)
    return rows


# -------------------------------------------------------------------------------------------------- sampling
def dpm_solver_available() -> bool:
    """Another branch adds ``sampler="dpm_solver"``; detect it in the sampler's code rather than assume it."""
    from networks.diffusion import GaussianDiffusion

    return "dpm_solver" in inspect.getsource(GaussianDiffusion)


def time_sampling(model, n_images: int, sampler: str, num_steps: int | None, device: str) -> float:
    generator = torch.Generator(device).manual_seed(0)
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
        images = model.sample(n_images, generator, sampler=sampler, num_steps=num_steps)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    if not torch.isfinite(images).all():
        raise FloatingPointError(f"{sampler} produced non-finite images")
    return seconds


def run_sampling(template, args, device: str, budget: Budget) -> list[dict]:
    if template is None:
        return [{"sampler": "all", "steps": None, "seconds": None, "status": "skipped: model not built"}]
    model = copy.deepcopy(template).to(device)
    T = model.diffusion.num_timesteps
    plan = [("ddim", min(50, T)), ("dpm_solver", min(20, T)), ("ddpm", T)]  # smoke: T=20
    rows = []
    try:
        time_sampling(model, 2, "ddim", 2, device)  # warm-up: kernels and lazy initialisation out of the timings
    except Exception as err:
        return [{"sampler": "warm-up", "steps": 2, "seconds": None, "status": short_error(err)}]
    ddim_seconds = None
    for sampler, steps in plan:
        row = {"sampler": sampler, "steps": steps, "images": args.sample_images, "seconds": None,
               "images_per_s": None, "status": ""}
        # DDPM takes T/50 times DDIM-50's time: skip it when that estimate does not fit.
        estimate = ddim_seconds * steps / 50 * 1.2 if ddim_seconds else 10.0
        if sampler == "dpm_solver" and not dpm_solver_available():
            row["status"] = "n/a (no dpm_solver sampler in GaussianDiffusion)"
        elif not budget.allows(estimate + 5):
            row["status"] = f"skipped: budget ({budget.left():.0f} s left, needs ~{estimate:.0f} s)"
        else:
            log(f"sampling {args.sample_images} images: {sampler}, {steps} steps ...")
            try:
                row["seconds"] = round(time_sampling(model, args.sample_images, sampler, steps, device), 2)
                row["images_per_s"] = round(args.sample_images / row["seconds"], 1)
                row["status"] = "ok"
                ddim_seconds = row["seconds"] if sampler == "ddim" else ddim_seconds
            except Exception as err:
                row["status"] = short_error(err)
        log(f"sampling {sampler}: {row['seconds']} s, {row['status']}")
        rows.append(row)
    del model
    free_memory()
    return rows


# -------------------------------------------------------------------------------------------------- real fit
def console_command() -> tuple[list[str], str]:
    """``module14`` of this Python's environment, else ``python cli.py`` from the repository."""
    script = Path(sys.executable).parent / "module14"
    if script.is_file():
        return [str(script)], f"console script {script}"
    found = shutil.which("module14")
    if found:
        return [found], f"console script {found}"
    return [sys.executable, str(ROOT / "cli.py")], "python cli.py (module14 console script not installed)"


def last_logged(metrics_csv: Path, key: str) -> float | None:
    """The last non-empty value of ``key`` in a CSVLogger metrics.csv."""
    import csv

    value = None
    with open(metrics_csv) as f:
        for line in csv.DictReader(f):
            if line.get(key):
                value = float(line[key])
    return value


def real_fit_args(data_root: Path, args, accelerator: str) -> list[str]:
    fit = ["fit", "--config", str(ROOT / REAL_FIT_CONFIG), f"--trainer.accelerator={accelerator}", "--trainer.devices=1",
           f"--trainer.max_steps={args.fit_steps}", "--trainer.logger=CSVLogger",
           "--trainer.logger.init_args.save_dir=runs", f"--data.data_dir={data_root}",
           "--data.verify_integrity=false", "--data.download=false", "--data.on_device=true"]
    if args.cpu_smoke:
        return fit + ["--trainer.precision=32-true", *SMOKE_OVERRIDES["vit"], "--data.batch_size=8", "--data.val_size=8",
                      "--trainer.limit_val_batches=1", "--data.num_workers=0"]
    return fit + ["--trainer.precision=bf16-mixed", "--data.val_size=500"]


def check_checkpoint_on_cpu(checkpoint: Path) -> dict:
    """The checkpoint loads with ``weights_only=True`` and back into a ViTClassifier on CPU, which gives finite logits."""
    from lightning_modules.classifier import ViTClassifier

    raw = torch.load(checkpoint, map_location="cpu", weights_only=True)
    model = ViTClassifier.load_from_checkpoint(checkpoint, map_location="cpu")
    model.eval()
    with torch.no_grad():
        logits = model(torch.randn(2, *model.hparams.image_shape))
    if not torch.isfinite(logits).all():
        raise FloatingPointError("the reloaded model gives non-finite logits")
    return {"global_step": raw.get("global_step"), "reloaded_on_cpu": True}


def run_real_fit(data_root: Path | None, args, accelerator: str, budget: Budget) -> dict:
    result = {"config": REAL_FIT_CONFIG, "steps": args.fit_steps, "command": None, "exit_code": None,
              "seconds": None, "checkpoint": None, "val_acc": None, "status": ""}
    needed_s = 90 if accelerator == "gpu" else 20
    if data_root is None:
        result["status"] = "skipped: no --data (pack it first with --pack)"
        return result
    if not budget.allows(needed_s):
        result["status"] = f"skipped: budget ({budget.left():.0f} s left)"
        return result
    command, how = console_command()
    result["command"] = how
    folder = args.out / "real_fit"
    folder.mkdir(parents=True, exist_ok=True)
    log(f"real fit: {how}, {REAL_FIT_CONFIG}, {args.fit_steps} steps; log in {folder / 'fit.log'} ...")
    start = time.monotonic()
    try:
        with open(folder / "fit.log", "w") as log_file:
            done = subprocess.run(command + real_fit_args(data_root, args, accelerator), cwd=folder, stdout=log_file,
                                  stderr=subprocess.STDOUT, timeout=max(10.0, budget.left()),
                                  env={**os.environ, "PYTHONUNBUFFERED": "1"})
        result["exit_code"] = done.returncode
        result["seconds"] = round(time.monotonic() - start, 1)
        if done.returncode != 0:
            tail = (folder / "fit.log").read_text().strip().splitlines()[-1:]
            result["status"] = f"failed: exit code {done.returncode}: {tail[0][:200] if tail else ''}"
            return result
        checkpoints = sorted(folder.glob("runs/**/last.ckpt"))
        if not checkpoints:
            result["status"] = "failed: no last.ckpt written"
            return result
        result["checkpoint"] = str(checkpoints[0].relative_to(args.out))
        result.update(check_checkpoint_on_cpu(checkpoints[0]))
        metrics = sorted(folder.glob("runs/**/metrics.csv"))
        val_acc = last_logged(metrics[0], "val/acc") if metrics else None
        result["val_acc"] = round(val_acc, 4) if val_acc is not None else None
        result["status"] = "ok"
    except Exception as err:
        result["status"] = short_error(err)
    log(f"real fit: exit code {result['exit_code']}, {result['seconds']} s, {result['status']}")
    return result


# ---------------------------------------------------------------------------------------------------- results
def package_version(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "missing"


def environment(args, accelerator: str) -> dict:
    info = {"date": datetime.now().isoformat(timespec="seconds"), "host": platform.node(),
            "python": platform.python_version(), "torch": torch.__version__, "lightning": package_version("lightning"),
            "packages": {name: package_version(name) for name in (
                "torchvision", "torchmetrics", "torchdata", "jsonargparse", "triton", "wandb")},
            "cuda": torch.version.cuda, "accelerator": accelerator, "cpu_smoke": args.cpu_smoke,
            "budget_s": args.budget_s, "warmup_batches": args.warmup, "timed_batches": args.timed,
            "compile_backend": args.compile_backend,
            "float32_matmul_precision": torch.get_float32_matmul_precision()}
    if accelerator == "gpu":
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    def cell(value) -> str:
        return "" if value is None else str(value).replace("|", "/")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(results: dict) -> str:
    env = results["environment"]
    where = env.get("gpu", "CPU (smoke run, tiny sizes)")
    parts = [f"# GPU check, {env['date']}, {where}",
             f"torch {env['torch']}, lightning {env['lightning']}, CUDA {env['cuda']}, Python {env['python']} "
             f"({', '.join(f'{k} {v}' for k, v in env['packages'].items())}); "
             f"{env['warmup_batches']} warm-up + {env['timed_batches']} timed batches per setting; synthetic data; "
             f"compile backend {env['compile_backend']}; float32 matmul precision {env['float32_matmul_precision']}",
             "## Training-step throughput", markdown_table(
                 sorted(results["throughput"], key=lambda r: (list(FAMILIES).index(r["family"]),
                                                              PRECISIONS.index(r["precision"]), r["compile"])),
                 ["family", "config", "batch", "precision", "compile", "images_per_s", "peak_gib", "finite", "status"]),
             "## AMP checks", markdown_table(results["amp_checks"], [
                 "check", "precision", "steps", "non_finite_steps", "weights_changed", "grad_scale", "finite", "status"]),
             "## Sampling (ddpm_cifar10 network, random weights, bf16 autocast on GPU)", markdown_table(
                 results["sampling"], ["sampler", "steps", "images", "seconds", "images_per_s", "status"]),
             "## Real fit", markdown_table([results["real_fit"]], [
                 "config", "command", "steps", "exit_code", "seconds", "checkpoint", "global_step", "val_acc",
                 "status"]),
             f"Total {results['total_s']} s; failures: {len(results['failures'])}"]
    parts += [f"- FAILED {failure}" for failure in results["failures"]]
    return "\n\n".join(parts) + "\n"


def failures(results: dict) -> list[str]:
    rows = ([(f"throughput {r['family']} {r['precision']} compile={r['compile']}", r) for r in results["throughput"]]
            + [(f"amp check {r['check']}", r) for r in results["amp_checks"]]
            + [(f"sampling {r['sampler']}", r) for r in results["sampling"]]
            + [("real fit", results["real_fit"])])
    failed = [f"{name}: {row['status']}" for name, row in rows
              if not (row.get("status") == "ok" or row.get("status", "").startswith(("skipped", "n/a")))]
    return [f"building {family}: {error}" for family, error in results["build_errors"].items()] + failed


def save(results: dict, out: Path) -> None:
    results["total_s"] = round(time.monotonic() - START, 1)
    results["failures"] = failures(results)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(render_markdown(results))


# ------------------------------------------------------------------------------------------------------ main
def quiet_lightning() -> None:
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for message in (".*does not have many workers.*", ".*smaller than the logging interval.*",
                    ".*CIFAR-10.*", ".*Precision.*is not supported by the model summary.*"):
        warnings.filterwarnings("ignore", message=message)


def main() -> int:
    args = parse_args()
    if args.pack is not None:
        source = Path(os.environ.get("MODULE14_DATA_DIR", ROOT / "data"))
        pack_cifar10(source, args.pack, args.pack_train, args.pack_test)
        return 0
    quiet_lightning()
    args.out.mkdir(parents=True, exist_ok=True)
    args.out = args.out.resolve()
    budget = Budget(args.budget_s)
    has_cuda = torch.cuda.is_available()
    if not has_cuda and not args.cpu_smoke:
        log("no CUDA device: run with --cpu-smoke on a machine without a GPU")
        return 2
    accelerator, device = ("gpu", "cuda") if has_cuda and not args.cpu_smoke else ("cpu", "cpu")
    results = {"environment": environment(args, accelerator), "build_errors": {}, "throughput": [], "amp_checks": [],
               "sampling": [], "real_fit": {"status": "not run"}}
    log(f"gpu_check: {results['environment']}")

    data_root = args.data.resolve() if args.data else None
    if data_root is None and args.cpu_smoke:  # the smoke run packs its own tiny subset
        data_root = pack_cifar10(Path(os.environ.get("MODULE14_DATA_DIR", ROOT / "data")), args.out / "packed", 40, 10)

    templates, datamodules = {}, {}
    for family in FAMILIES:
        try:
            templates[family], datamodules[family] = build_from_config(family, args.cpu_smoke)
        except Exception as err:  # its rows then say "skipped: model not built"; the error counts as a failure
            templates[family], datamodules[family] = None, None
            results["build_errors"][family] = short_error(err)
            log(f"building {family} from {FAMILIES[family]} failed: {short_error(err)}")

    # Eager first, then compiled (the costliest) in COMPILED_ORDER. On CPU the 16-mixed rows say "skipped: no CUDA".
    eager_order = [(family, precision) for family in FAMILIES for precision in PRECISIONS]
    run_throughput_pass(results, eager_order, False, templates, datamodules, args, accelerator, budget)

    results["amp_checks"] = run_amp_checks(templates, datamodules, args, accelerator, budget)
    save(results, args.out)
    results["sampling"] = run_sampling(templates["ddpm"], args, device, budget)
    save(results, args.out)
    results["real_fit"] = run_real_fit(data_root, args, accelerator, budget)
    save(results, args.out)

    compiled_order = [(family, precision) for precision in COMPILED_ORDER for family in FAMILIES]
    run_throughput_pass(results, compiled_order, True, templates, datamodules, args, accelerator, budget)

    save(results, args.out)
    print("\n" + render_markdown(results), flush=True)
    for failure in results["failures"]:
        log(f"FAILED {failure}")
    log(f"done in {results['total_s']} s; results in {args.out}")
    return 1 if results["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
