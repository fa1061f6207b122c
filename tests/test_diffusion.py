"""DDPM: schedule math against closed forms, the U-Net's use of t, DDIM vs DDPM steps, EMA, training, CLI."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
import torch.nn as nn
from conftest import TINY_DDPM, cpu_trainer, predict_folder

from datamodules import MNISTDataModule
from lightning_modules.diffusion import DiffusionModule
from lightning_modules.ema import EMA
from networks.diffusion import GaussianDiffusion
from networks.spec_simple_unet import SpecSimpleUNet
from networks.unet import SimpleUNet

TINY = dict(model_channels=16, num_res_blocks=1, channel_mult=(1, 2), norm_groups=8)


def randomised(net: nn.Module) -> nn.Module:
    """Undo the zero initialisation of the output layers, so an untrained network's output depends on its inputs."""
    torch.manual_seed(0)
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.reset_parameters()
    return net.eval()


# ------------------------------------------------------------------------------------------------- schedule
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_schedule_matches_closed_forms(schedule):
    d = GaussianDiffusion(1000, schedule)
    betas = d.betas.double()
    if schedule == "linear":
        assert torch.allclose(betas, torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), atol=1e-9)
    else:  # ᾱ_t = f(t+1)/f(0) with f(t) = cos²((t/T + s)/(1 + s) π/2)
        f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
        for t in (0, 10, 500, 900):
            assert d.alphas_cumprod[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-4)
    alpha_bar = 1.0
    for t in range(1000):  # ᾱ_t as the running product, independently of torch.cumprod
        alpha_bar *= 1 - betas[t].item()
        if t in (0, 1, 10, 500, 999):
            assert d.alphas_cumprod[t].item() == pytest.approx(alpha_bar, rel=1e-5, abs=1e-12)

    # Posterior q(x_{t-1} | x_t, x_0) by completing the square of q(x_t | x_{t-1}) q(x_{t-1} | x_0).
    torch.manual_seed(0)
    x0, x_t = torch.randn(5, 1, 4, 4), torch.randn(5, 1, 4, 4)
    t = torch.tensor([1, 2, 50, 500, 999])
    mean, var = d.q_posterior(x0, x_t, t)
    x0, x_t = x0.double(), x_t.double()
    alpha_bars = torch.cumprod(1 - betas, dim=0)
    b, ab = betas[t][:, None, None, None], alpha_bars[t][:, None, None, None]
    ab_prev = alpha_bars[t - 1][:, None, None, None]
    precision = (1 - b) / b + 1 / (1 - ab_prev)
    expected_mean = ((1 - b).sqrt() / b * x_t + ab_prev.sqrt() / (1 - ab_prev) * x0) / precision
    assert torch.allclose(var.double(), (1 / precision).expand_as(var), rtol=1e-4)
    assert torch.allclose(mean.double(), expected_mean, atol=1e-5)
    # ... and the ε-form of the same mean (docs/guide.md, Part 4, Step 4): (x_t - β/sqrt(1-ᾱ) ε) / sqrt(α), with ε
    # the noise in x_t.
    eps = (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()
    spec_mean = (x_t - b / (1 - ab).sqrt() * eps) / (1 - b).sqrt()
    assert torch.allclose(mean.double(), spec_mean, atol=1e-5)


def test_q_sample_at_large_t_is_standard_normal():
    d = GaussianDiffusion(1000, "linear")
    x0 = torch.ones(4096, 1, 8, 8)  # far from N(0, I)
    torch.manual_seed(0)
    x_T = d.q_sample(x0, torch.full((4096,), 999), torch.randn_like(x0))
    assert abs(x_T.mean().item()) < 0.02
    assert x_T.var().item() == pytest.approx(1.0, abs=0.02)
    x_early = d.q_sample(x0, torch.full((4096,), 0), torch.randn_like(x0))
    assert x_early.mean().item() == pytest.approx(1.0, abs=0.02)  # t = 0 barely moves the data


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_prediction_targets_invert(prediction):
    """A network that outputs the exact target recovers x_0 and ε, for every parameterisation."""
    d = GaussianDiffusion(100, "cosine", prediction=prediction, clip_range=None)
    torch.manual_seed(0)
    x0, noise, t = torch.rand(6, 1, 4, 4) * 2 - 1, torch.randn(6, 1, 4, 4), torch.randint(0, 100, (6,))
    x_t = d.q_sample(x0, t, noise)
    oracle = lambda x, tt: d.target(x0, t, noise)  # noqa: E731
    x0_hat, eps_hat = d.predict_x0_eps(oracle, x_t, t)
    assert torch.allclose(x0_hat, x0, atol=1e-4) and torch.allclose(eps_hat, noise, atol=1e-3)
    assert d.loss(oracle, x0, t, noise).item() < 1e-10


# -------------------------------------------------------------------------------------------------- network
def test_unet_output_depends_on_t():
    net = randomised(SimpleUNet(in_channels=1, **TINY))
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        out_a, out_b = net(x, torch.tensor([10, 10])), net(x, torch.tensor([900, 900]))
    assert out_a.shape == x.shape
    assert (out_a - out_b).abs().max() > 1e-3
    # The guide's SimpleUNet (docs/guide.md, Part 4, Step 2) fails this: its time embedding is computed and never used.
    spec = randomised(SpecSimpleUNet(in_channels=1, model_channels=64))
    with torch.no_grad():
        assert torch.equal(spec(x, torch.tensor([10, 10])), spec(x, torch.tensor([900, 900])))


def test_unet_arguments_do_what_they_say():
    def params(**kw):
        return sum(p.numel() for p in SimpleUNet(in_channels=1, **{**TINY, **kw}).parameters())

    assert params(num_res_blocks=2) > params(num_res_blocks=1)
    assert SimpleUNet(model_channels=32).time_embed[0].in_features == 32  # embedding width follows model_channels
    net = SimpleUNet(in_channels=1, **{**TINY, "attention_levels": (0,)})
    assert sum("AttentionBlock" == type(m).__name__ for m in net.down[0].modules()) == 1
    assert sum("AttentionBlock" == type(m).__name__ for m in net.down[1].modules()) == 0
    with torch.no_grad():
        assert net(torch.randn(1, 1, 8, 8), torch.tensor([3])).shape == (1, 1, 8, 8)
    with pytest.raises(ValueError, match="divisible"):
        net(torch.randn(1, 1, 7, 7), torch.tensor([3]))


def test_ddpm_paper_cifar10_configuration_has_35_7m_parameters():
    net = SimpleUNet(model_channels=128, channel_mult=(1, 2, 2, 2), attention_levels=(1,), dropout=0.1,
                     norm_groups=32)
    assert sum(p.numel() for p in net.parameters()) == pytest.approx(35.7e6, rel=0.005)


# ------------------------------------------------------------------------------------------------- samplers
def test_ddim_eta1_all_steps_equals_ancestral_ddpm_step():
    d = GaussianDiffusion(200, "linear")
    net = randomised(SimpleUNet(in_channels=1, **TINY))
    assert d.ddim_timesteps(200) == list(range(199, -1, -1))
    torch.manual_seed(0)
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        for step in (199, 120, 30, 1, 0):
            t = torch.full((4,), step)
            ddpm_mean, ddpm_var, _ = d.ddpm_mean_variance(net, x, t, "posterior")
            ddim_mean, ddim_var, _ = d.ddim_mean_variance(net, x, t, t - 1, eta=1.0)
            assert torch.allclose(ddim_mean, ddpm_mean, atol=1e-5), step
            assert torch.allclose(ddim_var, ddpm_var, rtol=1e-4, atol=1e-10), step
            _, ddim0_var, _ = d.ddim_mean_variance(net, x, t, t - 1, eta=0.0)
            assert ddim0_var.abs().max() == 0


def test_ddim_eta0_is_deterministic_and_samplers_clamp_and_restore_mode():
    d = GaussianDiffusion(100, "linear")
    net = randomised(SimpleUNet(in_channels=1, **TINY)).train()
    noise = torch.randn(3, 1, 8, 8)
    runs = [d.sample(net, noise.shape, "ddim", 10, eta=0.0, noise=noise,
                     generator=torch.Generator().manual_seed(seed)) for seed in (1, 2)]
    assert torch.equal(runs[0], runs[1])
    noisy = [d.sample(net, noise.shape, "ddim", 10, eta=1.0, noise=noise,
                      generator=torch.Generator().manual_seed(seed)) for seed in (1, 2)]
    assert not torch.equal(noisy[0], noisy[1])  # η = 1 does inject the generator's noise
    out, path = d.sample(net, noise.shape, "ddpm", None, generator=torch.Generator().manual_seed(0), trajectory=True)
    assert len(path) == 100 and out.min() >= -1 and out.max() <= 1
    assert net.training  # put back in train mode
    with pytest.raises(ValueError, match="ddim"):
        d.sample(net, noise.shape, "ddpm", 10)


class GaussianDataDenoiser(nn.Module):
    """The exact denoiser for data x_0 ~ N(mu, s²) per pixel, E[x_0 | x_t] = mu + α s² (x_t - α mu) / (α² s² + σ²)
    with α² = ᾱ_t, σ² = 1 - ᾱ_t (so ε* = σ (x_t - α mu) / (α² s² + σ²)), output as the diffusion's target."""

    def __init__(self, diffusion: GaussianDiffusion, mu: float, s: float):
        super().__init__()
        self.diffusion, self.mu, self.s = [diffusion], mu, s  # a list: not a submodule

    def forward(self, x_t, t):
        d = self.diffusion[0]
        alpha_bar = d.alphas_cumprod[t].float()[:, None, None, None]
        alpha, sigma = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
        x0 = self.mu + alpha * self.s**2 * (x_t - alpha * self.mu) / (alpha_bar * self.s**2 + sigma**2)
        return d.target(x0, t, (x_t - alpha * x0) / sigma)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_dpm_solver_follows_the_gaussian_probability_flow_closed_form(prediction):
    # For Gaussian data the probability-flow ODE keeps z = (x_t - α mu) / sqrt(α² s² + σ²) constant, so it maps x_T
    # to x_0 = mu + s z. The samplers meet that map only through their discretisation (clamping is off).
    mu, s = 0.3, 0.5
    d = GaussianDiffusion(1000, "linear", prediction=prediction, clip_range=None)
    model = GaussianDataDenoiser(d, mu, s)
    x_T = torch.randn(512, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    alpha_bar_T = d.alphas_cumprod[-1].float()
    exact = mu + s * (x_T - alpha_bar_T.sqrt() * mu) / (alpha_bar_T * s**2 + 1 - alpha_bar_T).sqrt()
    error = {(sampler, n): (d.sample(model, x_T.shape, sampler, n, noise=x_T) - exact).abs().max().item()
             for sampler in ("ddim", "dpm_solver") for n in (10, 20, 50)}
    # Measured (max over 8192 values): DDIM 0.53 / 0.28 / 0.117 and DPM-Solver++ 0.39 / 0.089 / 0.0022 at 10 / 20 /
    # 50 steps. Both end with the same first-order jump from t = T/n - 1 to the data, which dominates at 10 steps.
    assert error["dpm_solver", 10] < error["ddim", 10]
    assert error["dpm_solver", 20] < error["ddim", 20] / 2.5 and error["dpm_solver", 20] < 0.12, error
    assert error["dpm_solver", 50] < error["ddim", 50] / 20 and error["dpm_solver", 50] < 1e-2, error
    samples = d.sample(model, x_T.shape, "dpm_solver", 50, noise=x_T)
    assert samples.mean().item() == pytest.approx(exact.mean().item(), abs=2e-3)
    assert samples.std().item() == pytest.approx(exact.std().item(), rel=1e-2)
    assert exact.mean().item() == pytest.approx(mu, abs=0.02) and exact.std().item() == pytest.approx(s, rel=0.03)


def test_dpm_solver_first_order_step_is_ddim_eta0_and_sampler_contract():
    d = GaussianDiffusion(100, "linear")
    net = randomised(SimpleUNet(in_channels=1, **TINY)).train()
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for step, prev in ((99, 80), (50, 49), (9, -1)):
            t, t_prev = torch.full((3,), step), torch.full((3,), prev)
            ddim_mean, _, ddim_x0 = d.ddim_mean_variance(net, x, t, t_prev, eta=0.0)
            dpm_x, dpm_x0 = d.dpm_solver_step(net, x, t, t_prev)
            assert torch.allclose(dpm_x, ddim_mean, atol=1e-5) and torch.equal(dpm_x0, ddim_x0), step
    # With 2 steps both DPM-Solver++ steps are first order (the first has no history, the last goes to the data).
    for n, same in ((1, True), (2, True), (5, False)):
        dpm, path = d.sample(net, x.shape, "dpm_solver", n, noise=x, trajectory=True)
        assert torch.allclose(dpm, d.sample(net, x.shape, "ddim", n, noise=x), atol=1e-5) == same, n
        assert len(path) == n and dpm.min() >= -1 and dpm.max() <= 1
    assert torch.equal(dpm, d.sample(net, x.shape, "dpm_solver", 5, noise=x))  # deterministic
    assert net.training  # put back in train mode
    for bad in (0, 101):
        with pytest.raises(ValueError, match=rf"num_steps={bad} must be in \[1, T=100\]"):
            d.sample(net, x.shape, "dpm_solver", bad)
    with pytest.raises(ValueError, match="'ddpm', 'ddim' or 'dpm_solver'"):
        d.sample(net, x.shape, "dpm")


# ------------------------------------------------------------------------------------- module, EMA, training
def tiny_module(**kw) -> DiffusionModule:
    args = dict(image_shape=(1, 32, 32), num_timesteps=100, lr=2e-3, warmup_steps=10, ema_decay=0.9,
                sampling_steps=5, **TINY)
    return DiffusionModule(**{**args, **kw})


class LossLog(L.Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


def fit(module, data_dir, steps, batch_size=32):
    data = MNISTDataModule(data_dir=str(data_dir), image_size=32, normalization="minus_one_one", val_size=500,
                           batch_size=batch_size, num_workers=0)
    log = LossLog()
    trainer = cpu_trainer(max_steps=steps, limit_val_batches=0, callbacks=[log])
    trainer.fit(module, datamodule=data)
    return trainer, log.losses


def test_loss_decreases_on_mnist_and_ema_is_used_and_checkpointed(data_dir, tmp_path):
    torch.manual_seed(0)
    module = tiny_module()
    trainer, losses = fit(module, data_dir, steps=100, batch_size=16)  # the loss falls to ~0.18 of its start
    first, last = sum(losses[:30]) / 30, sum(losses[-30:]) / 30
    assert last < 0.6 * first, (first, last)

    live, ema = dict(module.net.named_parameters()), dict(module.ema.module.named_parameters())
    assert max((live[k] - ema[k]).abs().max().item() for k in live) > 1e-4
    assert int(module.ema.num_updates) == 100

    # Sampling uses the EMA network: same noise, same result as sampling the EMA copy directly.
    generated = module.generate(2, torch.Generator().manual_seed(0))
    by_hand = module.diffusion.sample(module.ema.module, (2, 1, 32, 32), "ddim", 5,
                                      generator=torch.Generator().manual_seed(0))
    with_live = module.diffusion.sample(module.net, (2, 1, 32, 32), "ddim", 5,
                                        generator=torch.Generator().manual_seed(0))
    assert torch.allclose(generated, (by_hand + 1) / 2, atol=1e-6)
    assert not torch.allclose(generated, (with_live + 1) / 2, atol=1e-3)

    trainer.save_checkpoint(tmp_path / "ddpm.ckpt")
    restored = DiffusionModule.load_from_checkpoint(tmp_path / "ddpm.ckpt")
    for name, param in restored.ema.module.named_parameters():
        assert torch.equal(param, ema[name]), name
    assert int(restored.ema.num_updates) == 100


def test_ema_update_math():
    net = nn.Linear(2, 2)
    ema = EMA(net, decay=0.5, warmup=False)
    before = net.weight.detach().clone()
    with torch.no_grad():
        net.weight.add_(1.0)
    ema.update(net)
    assert torch.allclose(ema.module.weight, before + 0.5)
    assert not ema.module.weight.requires_grad
    with pytest.raises(ValueError):
        EMA(net, decay=1.0)


def test_data_outside_minus_one_one_is_rejected_naming_the_data_flag():
    for value_range in ((0.0, 1.0), None):
        with pytest.raises(ValueError, match="Set data.init_args.normalization: minus_one_one"):
            tiny_module(value_range=value_range)


def test_sampler_settings_default_and_are_validated():
    assert tiny_module(sampler="dpm_solver", sampling_steps=None).sampling_steps == 20
    assert tiny_module(sampler="ddim", sampling_steps=None).sampling_steps == 50
    assert tiny_module(sampler="dpm_solver", sampling_steps=None, num_timesteps=10).sampling_steps == 10
    for steps in (0, -3, 101):
        with pytest.raises(ValueError, match=rf"model.sampling_steps={steps} must be in \[1, T=100\]"):
            tiny_module(sampler="dpm_solver", sampling_steps=steps)
    with pytest.raises(ValueError, match="model.sampler='dpm'.*ddpm, ddim, dpm_solver"):
        tiny_module(sampler="dpm")


# ----------------------------------------------------------------------------------------------------- CLI
# CPU-sized overrides: the CIFAR-10/CelebA configs are the paper-sized GPU models.
FAST = [*TINY_DDPM, "--data.init_args.batch_size=4"]


@pytest.mark.parametrize("config", ["ddpm_mnist"])  # every config's fast_dev_run is in test_cli
def test_config_fast_dev_run(run_cli, config):
    cli = run_cli("fit", "--config", f"configs/{config}.yaml", "--trainer.fast_dev_run=true", *FAST)
    assert cli.trainer.state.finished
    sampler = next(c for c in cli.trainer.callbacks if type(c).__name__ == "ImageSampler")
    assert set(sampler.logged) == {"samples", "trajectory"}
    assert sampler.num_images == 16 and len(sampler.images) == 4  # the batch of 4 bounds it


def test_fast_dev_run_draws_a_small_grid_and_says_so(run_cli, monkeypatch):
    # the GPU configs' 64 DDIM-50 samples of a 35M U-Net took minutes of a CPU smoke run
    from lightning_modules import callbacks

    said = []  # the message itself (Lightning's notice filter shows a notice once per process)
    monkeypatch.setattr(callbacks, "rank_zero_info", said.append)
    cli = run_cli("fit", "--config", "configs/ddpm_mnist.yaml", "--trainer.fast_dev_run=true", *TINY_DDPM,
                  "--data.init_args.batch_size=32")
    sampler = next(c for c in cli.trainer.callbacks if type(c).__name__ == "ImageSampler")
    assert sampler.num_images == 16 and len(sampler.images) == 8
    assert said == ["ImageSampler: fast_dev_run draws 8 of its num_images=16 images"]


@pytest.mark.parametrize("sampler, steps", [("ddim", "3"), ("ddpm", "null"), ("dpm_solver", "4")])
def test_predict_writes_pngs(run_cli, tmp_path, sampler, steps):
    run_cli("predict", "--config", "configs/ddpm_mnist.yaml", *FAST, "--data.init_args.predict_size=6",
            "--model.init_args.num_timesteps=20", f"--model.init_args.sampler={sampler}",
            f"--model.init_args.sampling_steps={steps}")
    out = predict_folder(tmp_path / "outputs" / "ddpm_mnist")
    assert sorted(p.name for p in out.glob("*.png")) == [f"{i:06d}.png" for i in range(6)] + ["grid.png"]


def test_fid_kid_logged_at_validation_end_with_classifier_features(run_cli, vit_checkpoint):
    cli = run_cli("fit", "--config", "configs/ddpm_mnist.yaml", *FAST, "--trainer.max_epochs=1",
                  "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=2",
                  "--trainer.callbacks+=SampleQualityMonitor", "--trainer.callbacks.num_samples=6",
                  f"--trainer.callbacks.classifier_checkpoint={vit_checkpoint}")
    metrics = cli.trainer.callback_metrics
    assert torch.isfinite(metrics["val/fid_vit"]) and torch.isfinite(metrics["val/kid_vit"])
    assert metrics["val/fid_vit"] > 0
    saved = torch.load(cli.trainer.checkpoint_callback.last_model_path, weights_only=False)["state_dict"]
    assert set(saved) == set(cli.model.state_dict())  # the feature network is the callback's, not saved


# --------------------------------------------------------------------------------- options the configs leave default
def test_schedule_endpoints_ancestral_variance_and_ema_warmup_reach_the_parts():
    """beta_start/beta_end set DDPM's linear schedule; ddpm_variance picks σ² = β_t ("beta") or β̃_t ("posterior") for
    the ancestral sampler; ema_warmup=False decays at the fixed rate from the first update."""
    module = tiny_module(beta_start=2e-4, beta_end=0.05, ddpm_variance="beta", ema_warmup=False, ema_decay=0.9)
    torch.testing.assert_close(module.diffusion.betas, torch.linspace(2e-4, 0.05, 100, dtype=torch.float64))
    assert module.ema.current_decay() == 0.9  # with warm-up the first decay would be min(0.9, 1/10) = 0.1
    assert tiny_module().ema.current_decay() == pytest.approx(0.1)

    calls = []
    sample = module.diffusion.sample
    module.diffusion.sample = lambda *a, **kw: calls.append(kw["variance"]) or sample(*a, **kw)
    module.sample(2, torch.Generator().manual_seed(0), sampler="ddpm", num_steps=None)
    assert calls == ["beta"]
    x_t, t = torch.randn(2, 1, 32, 32), torch.tensor([50, 3])
    _, var, _ = module.diffusion.ddpm_mean_variance(module.ema.module, x_t, t, "beta")
    torch.testing.assert_close(var[:, 0, 0, 0], module.diffusion.betas[t].float())


def test_trajectory_grid_off_logs_only_the_samples():
    panels = tiny_module(trajectory_grid=False).sample_images(torch.zeros(4, 1, 32, 32), torch.Generator())
    assert list(panels) == ["samples"] and panels["samples"].shape == (4, 1, 32, 32)
