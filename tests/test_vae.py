"""VAE / beta-VAE: the ELBO's terms against closed forms, the IWAE bound, training on real MNIST, precision, CLI."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import CSVLogger
import pytest
import torch
from torch.distributions import Normal, kl_divergence
from torch.utils.data import DataLoader, TensorDataset
from conftest import cpu_trainer, opt_in, predict_folder

from datamodules import MNISTDataModule
from lightning_modules.vae import (
    ActiveUnits,
    BetaVAEModule,
    VAEModule,
    discretized_gaussian_log_likelihood,
    gaussian_kl,
)
from networks.vae import VAE, ConvVAE, reparameterize

# Every config's fast_dev_run is in test_cli.py; these two cover both networks, likelihoods and module classes.
PANEL_CONFIGS = ["vae_mnist", "betavae_celeba"]


def _level_images(n: int, shape: tuple[int, int, int], low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    """Random 8-bit images in [low, high]."""
    return torch.randint(0, 256, (n, *shape)) / 255.0 * (high - low) + low


# ---------------------------------------------------------------------------------------------- networks
def test_spec_networks_keep_layers_and_return_logits():
    vae = VAE()
    assert [vae.encoder.fc1.in_features, vae.encoder.fc1.out_features, vae.encoder.fc_mu.out_features] == [784, 400, 20]
    assert sum(p.numel() for p in vae.parameters()) == 652_824  # docs/guide.md's 784-400-20-400-784 (Part 2)
    logits, mu, logvar = vae(torch.rand(5, 784))
    assert logits.shape == (5, 784) and mu.shape == logvar.shape == (5, 20)
    assert logits.min() < 0 or logits.max() > 1  # logits, not probabilities
    samples = vae.sample(7)
    assert samples.shape == (7, 784) and samples.min() >= 0 and samples.max() <= 1


@pytest.mark.parametrize("shape", [(3, 32, 32), (3, 64, 64), (1, 32, 32)])
def test_conv_vae_is_sized_from_the_image_shape(shape):
    vae = ConvVAE(shape, latent_dim=8, base_channels=8)
    output, mu, _ = vae(torch.rand(2, *shape))
    assert output.shape == (2, *shape) and mu.shape == (2, 8)


def test_conv_vae_rejects_sizes_it_cannot_build():
    with pytest.raises(ValueError, match="image_size"):
        ConvVAE((1, 28, 28))


def test_reparameterize_is_differentiable_wrt_mu_and_logvar():
    mu = torch.randn(4, 3, requires_grad=True)
    logvar = torch.randn(4, 3, requires_grad=True)
    z = reparameterize(mu, logvar, generator=torch.Generator().manual_seed(1))
    eps = torch.randn(4, 3, generator=torch.Generator().manual_seed(1))
    z.sum().backward()
    torch.testing.assert_close(mu.grad, torch.ones(4, 3))  # dz/dmu = 1
    torch.testing.assert_close(logvar.grad, 0.5 * eps * torch.exp(0.5 * logvar.detach()))  # dz/dlogvar = eps*sigma/2


# ------------------------------------------------------------------------------------------------ the terms
def test_kl_term_equals_torch_distributions():
    mu, logvar = torch.randn(6, 5), torch.randn(6, 5)
    expected = kl_divergence(Normal(mu, torch.exp(0.5 * logvar)), Normal(0.0, 1.0)).sum(dim=-1)
    torch.testing.assert_close(gaussian_kl(mu, logvar), expected)


@pytest.mark.parametrize("log_scale", [-9.0, -3.0, 0.0, 2.0])
def test_discretized_gaussian_is_normalised_over_pixel_levels(log_scale):
    levels = torch.linspace(-1, 1, 256).view(256, 1)  # every value one pixel can take, in [-1, 1]
    for mean in (-1.3, -0.2, 0.37, 1.0):
        log_p = discretized_gaussian_log_likelihood(torch.full((256, 1), mean), torch.tensor(log_scale), levels, (-1, 1))
        assert log_p.max() <= 0
        torch.testing.assert_close(log_p.exp().sum(), torch.tensor(1.0), atol=1e-5, rtol=0)


def test_discretized_gaussian_matches_density_times_bin_width_for_wide_scales():
    x = torch.randint(26, 230, (3, 1, 4, 4)) / 255.0  # interior pixel levels
    mean, scale = torch.full_like(x, 0.5), 0.2
    expected = (Normal(0.5, scale).log_prob(x) + math.log(1 / 255)).flatten(1).sum(1)
    got = discretized_gaussian_log_likelihood(mean, torch.tensor(math.log(scale)), x, (0, 1))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-3)


def test_active_units_counts_units_whose_posterior_mean_varies():
    metric = ActiveUnits(latent_dim=3, threshold=0.01)
    for _ in range(4):  # unit 0 varies (var 1), unit 1 barely (var 0.0025), unit 2 is constant
        metric.update(torch.stack([torch.randn(500), 0.05 * torch.randn(500), torch.full((500,), 3.0)], dim=1))
    assert metric.compute().item() == 1
    torch.testing.assert_close(metric.variances()[2].float(), torch.tensor(0.0))


# ------------------------------------------------------------------------------------------------- IWAE
@pytest.fixture(scope="module")
def small_vae() -> tuple[VAEModule, torch.Tensor]:
    torch.manual_seed(0)
    return VAEModule(hidden_dim=64, latent_dim=4).eval(), torch.bernoulli(torch.rand(8, 1, 28, 28))


def test_iwae_with_one_sample_has_the_elbo_expectation(small_vae):
    model, x = small_vae
    repeats = x.repeat(500, 1, 1, 1)  # 500 independent estimates per image in one pass
    torch.manual_seed(1)
    with torch.no_grad():
        iwae1 = model.iwae_log_likelihood(repeats, 1).view(500, 8).mean(1)
        recon, kl, _ = model._elbo_terms(repeats)
        elbo = (-recon - kl).view(500, 8).mean(1)
    se = math.sqrt(iwae1.var() / 500 + elbo.var() / 500)
    assert abs(iwae1.mean() - elbo.mean()) < 4 * se


def test_iwae_bound_tightens_with_more_samples(small_vae):
    model, x = small_vae
    torch.manual_seed(2)
    bounds = {k: torch.stack([model.iwae_log_likelihood(x, k).mean() for _ in range(20)]).mean() for k in (1, 10, 100)}
    assert bounds[1] <= bounds[10] + 0.05 and bounds[10] <= bounds[100] + 0.05
    assert bounds[100] - bounds[1] > 1.0  # strictly tighter on this model, by several nats


def test_iwae_chunks_do_not_change_the_bound(small_vae):
    model, x = small_vae
    torch.manual_seed(3)
    whole = model.iwae_log_likelihood(x, 12)
    model.hparams.iwae_chunk = 8 * 5  # 5 samples per decoder call: chunks of 5, 5, 2
    torch.manual_seed(3)
    chunked = model.iwae_log_likelihood(x, 12)
    model.hparams.iwae_chunk = 4096
    torch.testing.assert_close(whole, chunked)


# -------------------------------------------------------------------------------------- training on MNIST
class _Recorder(L.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


def test_training_terms_are_logged_on_the_loggers_steps_and_averaged_over_the_epoch(tmp_path):
    """Step values only where the logger writes (every log_every_n_steps); the epoch mean covers every batch."""
    model = VAEModule(image_shape=(1, 28, 28), hidden_dim=16, latent_dim=4, traversal_dims=0)
    loader = DataLoader(TensorDataset(_level_images(40, (1, 28, 28)), torch.zeros(40)), batch_size=8)  # 5 batches
    recorder = _Recorder()
    logger = CSVLogger(tmp_path)
    trainer = cpu_trainer(max_epochs=1, limit_val_batches=0, log_every_n_steps=2, logger=logger, callbacks=[recorder])
    trainer.fit(model, train_dataloaders=loader)
    rows = list(csv.DictReader(open(Path(logger.log_dir) / "metrics.csv")))
    assert [int(row["step"]) for row in rows if row.get("train/loss_step")] == [1, 3]
    (epoch_row,) = [row for row in rows if row.get("train/loss_epoch")]
    assert float(epoch_row["train/loss_epoch"]) == pytest.approx(sum(recorder.losses) / 5, rel=1e-5)
    assert float(epoch_row["train/nelbo_epoch"]) == pytest.approx(sum(recorder.losses) / 5, rel=1e-5)  # beta = 1
    assert float(trainer.callback_metrics["train/active_units"]) >= 0


@pytest.fixture
def one_thread():
    """Small MLPs train faster on one thread, and far faster than on two when the cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_loss_decreases_on_mnist_and_beta_4_has_lower_kl(data_dir, one_thread):
    data = MNISTDataModule(data_dir=str(data_dir), normalization="zero_one", val_size=1000, batch_size=64,
                           num_workers=0)
    data.setup("fit")
    probe = next(iter(data.val_dataloader()))[0]
    kls, losses = {}, {}
    for beta in (1.0, 4.0):
        L.seed_everything(0)
        model = VAEModule(hidden_dim=200, latent_dim=10, beta=beta)
        recorder = _Recorder()
        cpu_trainer(max_steps=200, limit_val_batches=0, callbacks=[recorder]).fit(model, train_dataloaders=data)
        with torch.no_grad():
            kls[beta] = gaussian_kl(*model.net.encode(probe)).mean().item()
        losses[beta] = recorder.losses
    first, last = sum(losses[1.0][:10]) / 10, sum(losses[1.0][-10:]) / 10
    assert len(losses[1.0]) == 200 and last < 0.6 * first  # ~540 nats at init, well under 300 after 200 steps
    assert kls[4.0] < 0.8 * kls[1.0]


# ------------------------------------------------------------------------------------ precision and stages
def test_bf16_mixed_trains_validates_tests_and_round_trips_a_checkpoint(tmp_path):
    model = BetaVAEModule(image_shape=(3, 32, 32), value_range=(-1.0, 1.0), architecture="conv", feature_maps=8,
                          latent_dim=6, likelihood="gaussian", val_iwae_samples=3, test_iwae_samples=5,
                          kl_warmup_steps=10)
    images = TensorDataset(_level_images(16, (3, 32, 32), -1, 1), torch.zeros(16))
    loader = DataLoader(images, batch_size=8)
    trainer = cpu_trainer(precision="bf16-mixed", max_steps=3, limit_val_batches=1, num_sanity_val_steps=0,
                          log_every_n_steps=1)
    trainer.fit(model, loader, loader)
    metrics = {k: v for k, v in trainer.callback_metrics.items()}
    for name in ("train/loss_step", "train/active_units", "val/nelbo", "val/iwae_nll", "val/bpd", "val/active_units"):
        assert torch.isfinite(metrics[name]), name
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert model.beta_now() == pytest.approx(4.0 * 4 / 10)  # linear warm-up: step 3 of 10
    (results,) = trainer.test(model, loader, verbose=False)
    assert {"test/nelbo", "test/iwae_nll", "test/bpd", "test/iwae_bpd", "test/active_units"} <= results.keys()
    assert results["test/bpd"] == pytest.approx(results["test/nelbo"] / (3 * 32 * 32 * math.log(2)), rel=1e-4)

    trainer.save_checkpoint(tmp_path / "vae.ckpt")
    restored = BetaVAEModule.load_from_checkpoint(tmp_path / "vae.ckpt")
    assert restored.hparams.beta == 4.0 and restored.log_scale.requires_grad
    torch.testing.assert_close(restored.log_scale, model.log_scale)
    x = images.tensors[0][:2]
    torch.testing.assert_close(restored.net.encode(x)[0], model.net.encode(x)[0])


def test_sample_images_panels_are_images_with_fixed_noise():
    model = BetaVAEModule(latent_dim=5, hidden_dim=32, traversal_dims=3).eval()
    x = _level_images(16, (1, 28, 28))
    panels = model.sample_images(x, torch.Generator().manual_seed(0))
    assert panels["reconstructions"].shape == (4, 8, 1, 28, 28)
    torch.testing.assert_close(panels["reconstructions"][0], x[:8])  # inputs row above their reconstructions
    assert panels["interpolations"].shape == (8, 10, 1, 28, 28)
    assert panels["traversals"].shape == (3, 9, 1, 28, 28)
    for images in panels.values():
        assert images.min() >= 0 and images.max() <= 1
    again = model.sample_images(x, torch.Generator().manual_seed(0))
    torch.testing.assert_close(again["prior_samples"], panels["prior_samples"])


def test_binarize_draws_binary_targets_fixed_per_evaluation_batch():
    model = VAEModule(hidden_dim=16, latent_dim=2, binarize=True)
    x = torch.rand(4, 1, 28, 28)
    train_a, train_b = model.targets(x), model.targets(x)
    assert set(train_a.unique().tolist()) <= {0.0, 1.0} and not torch.equal(train_a, train_b)  # fresh each step
    torch.testing.assert_close(model.targets(x, batch_idx=3), model.targets(x, batch_idx=3))  # same every epoch
    assert model.reports_bits_per_dim and not VAEModule(hidden_dim=16, latent_dim=2).reports_bits_per_dim


@pytest.mark.parametrize(
    "kwargs, key",
    [
        (dict(value_range=(-1.0, 1.0)), "Set data.init_args.normalization: zero_one"),
        (dict(value_range=None, likelihood="gaussian"), "normalization to zero_one or minus_one_one"),
        (dict(likelihood="gaussian", binarize=True), "binarize"),
        (dict(gaussian_scale=0.1), "gaussian_scale"),
        (dict(beta=0.0), "beta"),
        (dict(image_shape=(1, 28, 28), architecture="conv"), "image_size"),
    ],
)
def test_bad_configurations_say_which_key_to_change(kwargs, key):
    with pytest.raises(ValueError, match=key):
        VAEModule(**kwargs)


# ---------------------------------------------------------------------------------------------------- CLI
@pytest.mark.parametrize("name", PANEL_CONFIGS)
def test_config_fast_dev_run_logs_panels_and_linked_sizes(run_cli, name):
    cli = run_cli("fit", "--config", f"configs/{name}.yaml", "--trainer.fast_dev_run=true", *opt_in(name))
    sampler = next(c for c in cli.trainer.callbacks if type(c).__name__ == "ImageSampler")
    assert {"reconstructions", "prior_samples", "interpolations", "traversals"} <= sampler.logged.keys()
    assert torch.isfinite(cli.trainer.callback_metrics["val/nelbo"])
    # the linked sizes are in the hyperparameters, so checkpoints rebuild the same model (also for BetaVAEModule)
    assert tuple(cli.model.hparams.image_shape) == tuple(cli.datamodule.dims)
    assert tuple(cli.model.hparams.value_range) == cli.datamodule.value_range


def test_predict_writes_the_requested_number_of_pngs(run_cli, tmp_path):
    run_cli("predict", "--config", "configs/vae_mnist.yaml", "--data.init_args.predict_size=10",
            "--trainer.logger=false")
    written = sorted(predict_folder(tmp_path / "outputs" / "vae_mnist").glob("*.png"))
    assert [p.name for p in written] == [f"{i:06d}.png" for i in range(10)] + ["grid.png"]


def test_resumes_exactly_mid_epoch_with_kl_warmup(run_cli, tmp_path):
    from test_resume import resume_matches_uninterrupted

    resume_matches_uninterrupted(run_cli, tmp_path, ["--config", "configs/betavae_mnist.yaml", "--model.hidden_dim=32",
                                                     "--model.kl_warmup_steps=10", "--data.batch_size=16"],
                                 total_steps=6)


def test_active_unit_threshold_reaches_the_metrics():
    model = VAEModule(hidden_dim=16, latent_dim=4, active_unit_threshold=0.5)
    assert {m.threshold for m in (model.train_active, model.val_active, model.test_active)} == {0.5}
