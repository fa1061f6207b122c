"""What every generative model shares: ``generate(n, generator)`` and the FID/KID callback."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from test_gan import tiny_vit_checkpoint
from torch.utils.data import DataLoader, TensorDataset

from lightning_modules.diffusion import DiffusionModule
from lightning_modules.gan import GANModule
from lightning_modules.metrics import SampleQualityMonitor
from lightning_modules.vae import VAEModule

FAMILIES = {
    "vae": lambda: VAEModule(image_shape=(1, 28, 28), hidden_dim=16, latent_dim=4),
    "conv_vae": lambda: VAEModule(image_shape=(3, 32, 32), value_range=(-1.0, 1.0), architecture="conv",
                                  feature_maps=4, latent_dim=4, likelihood="gaussian"),
    "gan": lambda: GANModule(image_shape=(1, 16, 16), latent_dim=8, hidden_dim=16),
    "dcgan_ema": lambda: GANModule(image_shape=(3, 32, 32), architecture="dcgan", latent_dim=8, feature_maps=4, ema_decay=0.9),
    "ddpm": lambda: DiffusionModule(image_shape=(1, 8, 8), model_channels=8, channel_mult=(1,), num_res_blocks=1,
                                    norm_groups=4, num_timesteps=10, sampling_steps=3),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_generate_gives_n_images_in_unit_range_reproducibly(family):
    model = FAMILIES[family]().eval()
    shape = tuple(model.hparams.image_shape)
    images = model.generate(5, torch.Generator().manual_seed(3))
    assert images.shape == (5, *shape) and images.device == model.device
    assert images.min() >= 0 and images.max() <= 1 and images.std() > 0
    again = model.generate(5, torch.Generator().manual_seed(3))
    other = model.generate(5, torch.Generator().manual_seed(4))
    assert torch.equal(images, again) and not torch.equal(images, other)


def test_gan_generates_from_the_ema_generator():
    model = FAMILIES["dcgan_ema"]().eval()
    with torch.no_grad():
        for p in model.generator.parameters():
            p.add_(0.1)  # the trained generator moves away from its EMA copy
    z = model.latent(3, torch.Generator().manual_seed(0))
    ema = model.generate(3, torch.Generator().manual_seed(0))
    assert torch.allclose(ema, (model.from_noise(z, model.ema.module) + 1) / 2)
    assert not torch.allclose(ema, (model.from_noise(z, model.generator) + 1) / 2)


# ---------------------------------------------------------------------------------------------------- FID / KID
def unit_loader(model, n: int = 16, batch_size: int = 8) -> DataLoader:
    """Random images in the model's value range (the metric's plumbing, not the data, is under test)."""
    low, high = model.value_range
    x = torch.rand(n, *model.hparams.image_shape, generator=torch.Generator().manual_seed(0)) * (high - low) + low
    return DataLoader(TensorDataset(x, torch.zeros(n, dtype=torch.long)), batch_size=batch_size)


@pytest.mark.parametrize("family", ["vae", "gan", "ddpm"])
def test_fid_kid_callback_logs_for_every_family_and_stays_out_of_checkpoints(tmp_path, family):
    model = FAMILIES[family]()
    vit = tiny_vit_checkpoint(tmp_path / "vit.ckpt", channels=model.hparams.image_shape[0], size=16)
    monitor = SampleQualityMonitor(num_samples=10, classifier_checkpoint=str(vit), kid_subset_size=4)
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, limit_val_batches=2, num_sanity_val_steps=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[monitor])
    trainer.fit(model, unit_loader(model), unit_loader(model, n=24))
    assert monitor.seen == 10  # two validation batches of 8, capped at num_samples
    for name in ("val/fid_vit", "val/kid_vit", "val/kid_std_vit"):
        assert torch.isfinite(trainer.callback_metrics[name]), name
    trainer.test(model, unit_loader(model))
    assert torch.isfinite(trainer.callback_metrics["test/fid_vit"])
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    saved = torch.load(tmp_path / "model.ckpt", weights_only=True)
    assert set(saved["state_dict"]) == set(model.state_dict())
    assert not any(key.startswith("SampleQualityMonitor") for key in saved.get("callbacks", {}))


def test_kid_subsets_are_seeded_so_the_same_images_give_the_same_kid_and_the_global_rng_is_untouched(tmp_path):
    from lightning_modules.metrics import SampleQuality

    vit = tiny_vit_checkpoint(tmp_path / "vit.ckpt", channels=1, size=16)
    real, fake = torch.rand(2, 40, 1, 16, 16, generator=torch.Generator().manual_seed(0))

    def kid(seed: int, global_seed: int) -> tuple[float, float]:
        quality = SampleQuality(classifier_checkpoint=str(vit), kid_subset_size=10, seed=seed)
        quality.update(real, real=True)
        quality.update(fake, real=False)
        torch.manual_seed(global_seed)
        values = quality.compute()
        after = torch.rand(3)
        torch.manual_seed(global_seed)
        assert torch.equal(after, torch.rand(3))  # compute() left the global RNG where it was
        return float(values["kid_vit"]), float(values["kid_std_vit"])

    assert kid(seed=0, global_seed=1) == kid(seed=0, global_seed=2)  # unseeded subsets follow the global RNG
    assert kid(seed=0, global_seed=1) != kid(seed=1, global_seed=1)


def test_fid_kid_callback_needs_a_generative_model():
    from lightning_modules.classifier import ViTClassifier

    model = ViTClassifier(image_shape=(1, 16, 16), num_classes=10, patch_size=8, embed_dim=16, depth=1, num_heads=2)
    trainer = L.Trainer(accelerator="cpu", max_steps=1, logger=False, callbacks=[SampleQualityMonitor(num_samples=4)])
    with pytest.raises(TypeError, match="generate"):
        trainer.fit(model, unit_loader(FAMILIES["vae"]()))


# ----------------------------------------------------------------------------------------------- the data's range
@pytest.mark.parametrize("normalization", ["zero_one", "minus_one_one", "mean_std"])
def test_the_datamodule_states_its_value_range_and_mean_std(data_dir, normalization):
    from datamodules import MNISTDataModule

    data = MNISTDataModule(data_dir=str(data_dir), normalization=normalization, val_size=100, batch_size=100,
                           num_workers=0)
    data.setup("fit")
    x = next(iter(data.val_dataloader()))[0]
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in data.normalization_mean_std)
    pixels = x * std + mean  # back to [0, 1], and on the 8-bit grid
    torch.testing.assert_close(pixels, (pixels * 255).round() / 255, atol=1e-5, rtol=0)
    assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6
    if normalization == "mean_std":
        assert data.value_range is None
    else:
        low, high = data.value_range
        assert x.min() == low and x.max() == high
