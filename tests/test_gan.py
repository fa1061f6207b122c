"""GAN / DCGAN: networks, the two-optimizer step, mixed precision, DDP, resume, EMA, predict and the configs."""

from __future__ import annotations

import copy
import functools
import math
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.plugins import MixedPrecision
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset
from conftest import (PER_RANK_BUFFERS, ROOT, cpu_trainer, launch_ddp, opt_in, predict_folder, rank_state,
                      record_rank_state)

from compat import ddp_kwargs
from lightning_modules.gan import GANModule
from lightning_modules.metrics import SampleQualityMonitor
from networks.gan import DCGANDiscriminator, DCGANGenerator, Discriminator, Generator
from networks.vit import VisionTransformer


def images_loader(n: int = 16, shape=(1, 16, 16), batch_size: int = 8) -> DataLoader:
    """Random 'real' images in [-1, 1] (the step mechanics do not need real data)."""
    x = torch.rand(n, *shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    return DataLoader(TensorDataset(x, torch.zeros(n, dtype=torch.long)), batch_size=batch_size)


def small_gan(cls: type[GANModule] = GANModule, **kwargs) -> GANModule:
    args = dict(image_shape=(1, 16, 16), architecture="mlp", latent_dim=8, hidden_dim=16)
    return cls(**{**args, **kwargs})


trainer = functools.partial(cpu_trainer, limit_val_batches=0)  # GAN steps, without validation unless asked


def snapshot(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b))


# ---------------------------------------------------------------------------------------------------- networks
def test_mlp_networks_shapes_and_logits():
    G, D = Generator(latent_dim=100, hidden_dim=256, output_dim=784), Discriminator(input_dim=784, hidden_dim=256)
    fake = G(torch.randn(4, 100))
    assert fake.shape == (4, 784) and fake.abs().max() <= 1
    # the layer widths of docs/guide.md (Part 3, Steps 1-2): 100 -> 256 -> 512 -> 1024 -> 784 and
    # 784 -> 1024 -> 512 -> 256 -> 1
    assert [m.out_features for m in G.model if isinstance(m, torch.nn.Linear)] == [256, 512, 1024, 784]
    assert [m.out_features for m in D.model if isinstance(m, torch.nn.Linear)] == [1024, 512, 256, 1]
    D.model[-1].bias.data.fill_(5.0)  # a logit, not a probability: no Sigmoid squashes it into [0, 1]
    assert (D(torch.randn(4, 1, 28, 28)) > 1).all()


@pytest.mark.parametrize("size, channels", [(32, 1), (32, 3), (64, 3)])
def test_dcgan_shapes_and_paper_init(size, channels):
    G, D = DCGANGenerator(100, 16, channels, size), DCGANDiscriminator(channels, 16, size)
    fake = G(torch.randn(3, 100))
    assert fake.shape == (3, channels, size, size) and fake.abs().max() <= 1
    assert D(fake).shape == (3, 1)
    weights = torch.cat([m.weight.flatten() for m in G.modules() if isinstance(m, torch.nn.ConvTranspose2d)])
    assert weights.mean().abs() < 2e-3 and abs(weights.std().item() - 0.02) < 1e-3


def test_dcgan_64_is_the_spec_stack():
    G, D = DCGANGenerator(), DCGANDiscriminator()
    g_convs = [(m.in_channels, m.out_channels) for m in G.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    d_convs = [(m.in_channels, m.out_channels) for m in D.modules() if isinstance(m, torch.nn.Conv2d)]
    assert g_convs == [(100, 512), (512, 256), (256, 128), (128, 64), (64, 3)]
    assert d_convs == [(3, 64), (64, 128), (128, 256), (256, 512), (512, 1)]


def test_dcgan_rejects_unsupported_size():
    with pytest.raises(ValueError, match="image_size"):
        DCGANGenerator(image_size=28)


def test_gan_needs_minus_one_one_data():
    with pytest.raises(ValueError, match="minus_one_one"):
        small_gan(value_range=(0.0, 1.0))


# ------------------------------------------------------------------------------------------------ training step
class StepProbe(GANModule):
    """Records, at each optimizer step (gradients final, weights not yet updated), what each network looks like."""

    def on_fit_start(self) -> None:
        self.g_init, self.d_init = snapshot(self.generator), snapshot(self.discriminator)
        self.events = []

    def on_before_optimizer_step(self, optimizer) -> None:
        super().on_before_optimizer_step(optimizer)
        opt_d = self.optimizers()[0].optimizer
        self.events.append({
            "net": "D" if optimizer is opt_d else "G",
            "g_grads_none": all(p.grad is None for p in self.generator.parameters()),
            "g_unchanged": same(snapshot(self.generator), self.g_init),
            "d_changed": not same(snapshot(self.discriminator), self.d_init),
            "grad_norm": torch.norm(torch.stack([p.grad.norm() for group in optimizer.param_groups
                                                 for p in group["params"] if p.grad is not None])).item(),
        })


def test_one_step_updates_both_and_d_step_leaves_generator_untouched():
    model = small_gan(StepProbe, ema_decay=0.5)
    ema_init = snapshot(model.ema)
    trainer(max_steps=2).fit(model, images_loader(n=8))  # one batch: a D step then a G step
    d_event, g_event = model.events
    assert d_event["net"] == "D" and g_event["net"] == "G"
    assert d_event["g_grads_none"] and d_event["g_unchanged"]  # the D step neither touches nor computes G's grads
    assert g_event["g_unchanged"] and g_event["d_changed"]  # the G step runs against the updated discriminator
    assert not same(snapshot(model.generator), model.g_init)
    assert not same(snapshot(model.discriminator), model.d_init)
    # EMA after the first generator step: the warm-up decay min(0.5, (1 + 0) / (10 + 0)) = 0.1
    for ema, start, now in zip(model.ema.parameters(), ema_init, model.generator.parameters()):
        torch.testing.assert_close(ema, 0.1 * start + 0.9 * now.detach())
    assert model.ema.num_updates == 1


def test_d_steps_per_g_step_and_label_smoothing():
    model = small_gan(StepProbe, d_steps_per_g_step=2, label_smoothing=0.1)
    trainer(max_epochs=1).fit(model, images_loader(n=32))  # 4 batches
    assert [e["net"] for e in model.events] == ["D", "D", "G", "D", "D", "G"]


def test_bf16_mixed_losses_are_finite():
    model = small_gan(architecture="dcgan", image_shape=(3, 32, 32), feature_maps=8)
    t = trainer(max_steps=6, precision="bf16-mixed")
    t.fit(model, images_loader(n=24, shape=(3, 32, 32)))
    for name in ("train/d_loss", "train/g_loss", "train/d_real", "train/d_fake"):
        assert torch.isfinite(t.callback_metrics[name]), name


def test_gradient_clipping_acts_on_unscaled_16_mixed_gradients():
    """With a grad scaler (scale 65536), clipping before unscaling would leave norms ~1e-8 instead of the limit."""
    clip = 1e-3
    model = small_gan(StepProbe, grad_clip_norm=clip)
    plugin = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))
    trainer(max_steps=2, plugins=[plugin]).fit(model, images_loader(n=8))
    for event in model.events:
        assert event["grad_norm"] == pytest.approx(clip, rel=1e-2)


def test_stock_ddp_strategy_finds_unused_parameters():
    """Each backward reaches one network: under any DDP strategy the reducer must look for unused parameters."""
    model = small_gan()
    model.trainer = trainer(devices=2, strategy="ddp")  # built, never launched: setup() runs before DDP wraps the model
    assert not ddp_kwargs(model.trainer.strategy).get("find_unused_parameters", False)
    model.setup("fit")
    assert ddp_kwargs(model.trainer.strategy)["find_unused_parameters"] is True


# ------------------------------------------------------------------------------------------------------ resume
class OptimizerStateProbe(L.Callback):
    def on_train_start(self, trainer, pl_module) -> None:
        self.states = [copy.deepcopy(opt.state_dict()) for opt in trainer.optimizers]  # before training moves them
        self.ema = snapshot(pl_module.ema)


def test_resume_restores_both_optimizers_and_ema(tmp_path):
    first = small_gan(ema_decay=0.9)
    t = trainer(max_steps=4)
    t.fit(first, images_loader())
    t.save_checkpoint(tmp_path / "mid.ckpt")
    saved = torch.load(tmp_path / "mid.ckpt", weights_only=False)

    probe = OptimizerStateProbe()
    second = small_gan(ema_decay=0.9)
    resumed = trainer(max_steps=8, callbacks=[probe])
    resumed.fit(second, images_loader(), ckpt_path=tmp_path / "mid.ckpt")
    assert len(probe.states) == 2
    for restored, original in zip(probe.states, saved["optimizer_states"]):
        assert restored["state"].keys() == original["state"].keys() and restored["state"]
        for key, state in original["state"].items():
            assert torch.equal(restored["state"][key]["exp_avg"], state["exp_avg"])
            assert torch.equal(restored["state"][key]["exp_avg_sq"], state["exp_avg_sq"])
            assert int(restored["state"][key]["step"]) == int(state["step"]) == 2
    assert same(probe.ema, snapshot(first.ema))
    assert resumed.global_step == 8


# ---------------------------------------------------------------------------------------------------- FID / KID
def tiny_vit_checkpoint(path: Path, channels: int = 1, size: int = 28) -> Path:
    """A checkpoint in the layout the CLI writes for a ViTClassifier (untrained: the plumbing is what is tested)."""
    patch = 7 if size % 7 == 0 else 4
    hp = dict(image_shape=(channels, size, size), num_classes=10, patch_size=patch, embed_dim=16, depth=1,
              num_heads=2, mlp_ratio=2.0, normalization_mean_std=((0.5,) * channels, (0.25,) * channels))
    net = VisionTransformer(img_size=size, patch_size=patch, in_channels=channels, num_classes=10, embed_dim=16,
                            depth=1, num_heads=2, mlp_ratio=2.0)
    torch.save({
        "hyper_parameters": hp,
        "datamodule_hyper_parameters": {"_class_path": "datamodules.MNISTDataModule", "normalization": "mean_std"},
        "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
    }, path)
    return path


def test_fid_kid_logged_at_validation_end_and_kept_out_of_checkpoints(tmp_path):
    ckpt = tiny_vit_checkpoint(tmp_path / "vit.ckpt", size=16)
    model = small_gan()
    monitor = SampleQualityMonitor(num_samples=12, classifier_checkpoint=str(ckpt), kid_subset_size=6)
    t = trainer(max_epochs=1, limit_val_batches=3, num_sanity_val_steps=0, callbacks=[monitor])
    t.fit(model, images_loader(n=16), images_loader(n=24))  # 3 val batches of 8: only 12 images may be used
    for name in ("val/fid_vit", "val/kid_vit"):
        assert torch.isfinite(t.callback_metrics[name]), name
    assert monitor.seen == 12
    t.save_checkpoint(tmp_path / "gan.ckpt")
    saved = torch.load(tmp_path / "gan.ckpt", weights_only=False)
    assert set(saved["state_dict"]) == set(model.state_dict())  # the feature network is the callback's
    assert not any("extractor" in str(state) for state in saved["callbacks"].values())
    plain = GANModule.load_from_checkpoint(tmp_path / "gan.ckpt")  # loads without the callback
    assert torch.equal(plain.generator.model[0].weight, model.generator.model[0].weight)


# --------------------------------------------------------------------------------------------------------- DDP
def test_two_process_ddp_run_ends_with_identical_weights_and_metrics(tmp_path, data_dir):
    """gan_mnist on 2 gloo processes for 4 batches, then one validation with FID/KID synchronised across ranks."""
    vit = tiny_vit_checkpoint(tmp_path / "vit.ckpt")
    launch_ddp(
        tmp_path, "fit", "--config", str(ROOT / "configs" / "gan_mnist.yaml"), "--trainer.accelerator=cpu",
        "--trainer.devices=2", "--trainer.strategy=ddp", "--trainer.precision=32-true", "--trainer.max_steps=8",
        "--trainer.val_check_interval=4", "--trainer.limit_val_batches=2", "--trainer.logger=false",
        "--trainer.enable_checkpointing=false", "--trainer.callbacks=[]", "--trainer.enable_progress_bar=false",
        "--data.batch_size=16", "--data.num_workers=0", "--model.hidden_dim=32", "--trainer.callbacks+=SampleQualityMonitor",
        "--trainer.callbacks.num_samples=32", f"--trainer.callbacks.classifier_checkpoint={vit}",
        "--trainer.callbacks.kid_subset_size=8", *record_rank_state(tmp_path),
        timeout=240,
    )
    rank0, rank1 = (rank_state(tmp_path, "fit", r) for r in (0, 1))
    assert rank0["state"].keys() == rank1["state"].keys()
    for name in (name for name in rank0["state"] if not name.endswith(PER_RANK_BUFFERS)):
        assert torch.equal(rank0["state"][name], rank1["state"][name]), name  # weights (and EMA), not BatchNorm stats
    assert rank0["metrics"]["val/fid_vit"] == rank1["metrics"]["val/fid_vit"]  # the FID both ranks computed together
    assert math.isfinite(rank0["metrics"]["val/fid_vit"])
    init = GANModule(image_shape=(1, 28, 28), hidden_dim=32)  # trained weights differ from any fresh init
    assert not torch.equal(rank0["state"]["generator.model.0.weight"], init.generator.model[0].weight)


# ------------------------------------------------------------------------------------------ CLI: configs, predict
@pytest.mark.parametrize("name", ["gan_mnist", "dcgan_cifar10"])  # every config's fast_dev_run: tests/test_cli.py
def test_config_fit_logs_fixed_noise_sample_grids(run_cli, name, data_dir):
    cli = run_cli("fit", "--config", f"configs/{name}.yaml", "--trainer.fast_dev_run=true", "--data.batch_size=8",
                  "--data.num_workers=0", *opt_in(name))
    assert cli.trainer.state.finished
    sampler = next(cb for cb in cli.trainer.callbacks if type(cb).__name__ == "ImageSampler")
    expected = {"generator", "generator_ema"} if cli.model.ema is not None else {"generator"}
    assert set(sampler.logged) == expected
    # fixed noise: the same seeded generator gives the same samples every time the sampler asks
    first, second = (cli.model.sample_images(sampler.images, torch.Generator().manual_seed(0)) for _ in range(2))
    assert all(torch.equal(first[k], second[k]) for k in expected)
    assert first["generator"].shape == (len(sampler.images), *cli.datamodule.dims)


@pytest.mark.parametrize("name, mode", [("dcgan_mnist", "L"), ("dcgan_cifar10", "RGB")])
def test_predict_writes_requested_pngs(run_cli, tmp_path, name, mode, data_dir):
    run_cli("predict", "--config", f"configs/{name}.yaml", "--data.predict_size=10", "--data.batch_size=4",
            "--data.num_workers=0", *opt_in(name))
    out = predict_folder(tmp_path / "outputs" / name)
    files = sorted(p.name for p in out.glob("0*.png"))
    assert files == [f"{i:06d}.png" for i in range(10)]
    assert (out / "grid.png").is_file()
    first = Image.open(out / "000000.png")
    size = 32
    assert first.mode == mode and first.size == (size, size)
    pixels = np.stack([np.asarray(Image.open(out / f)) for f in files])
    assert pixels.dtype == np.uint8 and pixels.std() > 0  # [0, 255] and not a constant image
    assert not np.array_equal(pixels[0], pixels[1])  # one independent sample per item
