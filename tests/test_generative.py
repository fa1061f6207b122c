"""What the generative models share: the GAN's EMA sampling, the FID/KID callback's seeding, the datamodule's value
range (every family's ``generate`` and FID/KID: tests/test_families.py)."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from conftest import unit_loader
from test_gan import tiny_vit_checkpoint

from lightning_modules.gan import GANModule
from lightning_modules.metrics import SampleQualityMonitor


def dcgan_with_ema() -> GANModule:
    return GANModule(image_shape=(3, 32, 32), architecture="dcgan", latent_dim=8, feature_maps=4, ema_decay=0.9)


def test_gan_generates_from_the_ema_generator():
    model = dcgan_with_ema().eval()
    with torch.no_grad():
        for p in model.generator.parameters():
            p.add_(0.1)  # the trained generator moves away from its EMA copy
    z = model.latent(3, torch.Generator().manual_seed(0))
    ema = model.generate(3, torch.Generator().manual_seed(0))
    assert torch.allclose(ema, (model.from_noise(z, model.ema.module) + 1) / 2)
    assert not torch.allclose(ema, (model.from_noise(z, model.generator) + 1) / 2)


# ---------------------------------------------------------------------------------------------------- FID / KID
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
        trainer.fit(model, unit_loader(dcgan_with_ema()))


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


# ---------------------------------------------------------------------------------------------------- the shipped ruler
def test_the_shipped_mnist_ruler_is_the_trained_vit_and_classifies_mnist(data_dir):
    """RESULTS.md's MNIST FIDs are measured on weights/mnist_vit.pt: its pinned hash matches the file, and it is a
    trained classifier (a random or wrong network fails the accuracy check, so its features are not a ruler)."""
    from torchvision.datasets import MNIST

    from lightning_modules.metrics import RULERS, ClassifierFeatures
    from training.pretrained import verified

    ruler = ClassifierFeatures(str(verified(RULERS["mnist_vit"].file)))
    test = MNIST(str(data_dir), train=False)
    images = test.data[:500].unsqueeze(1).float() / 255  # (500, 1, 28, 28) in [0, 1]
    with torch.no_grad():
        features = ruler(images)
        predicted = ruler.net.head(features).argmax(1)  # the class-token features are what the head reads
    assert features.shape == (500, 96) and torch.isfinite(features).all()
    assert (predicted == test.targets[:500]).float().mean() > 0.97


def test_a_ruler_whose_bytes_differ_from_the_pinned_hash_is_refused(tmp_path, monkeypatch):
    from lightning_modules.metrics import SampleQuality
    from training import pretrained

    shipped = pretrained.verified("mnist_vit.pt").read_bytes()
    (tmp_path / "SHA256SUMS").write_text((pretrained.WEIGHTS / "SHA256SUMS").read_text())
    monkeypatch.setattr(pretrained, "WEIGHTS", tmp_path)
    with pytest.raises(FileNotFoundError, match="git checkout weights/mnist_vit.pt"):
        SampleQuality(features="mnist_vit")
    (tmp_path / "mnist_vit.pt").write_bytes(shipped[:-1] + bytes([shipped[-1] ^ 1]))  # one bit flipped
    with pytest.raises(ValueError, match="not the pinned"):
        SampleQuality(features="mnist_vit")
    (tmp_path / "mnist_vit.pt").write_bytes(shipped)
    assert SampleQuality(features="mnist_vit").extractor.net.head.in_features == 96  # the same bytes load
