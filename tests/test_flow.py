"""Rectified flow: the training target, one exact Euler and Heun step, and the samplers against the closed-form flow of
Gaussian data (where the ideal velocity field, and the image of every noise, are known)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from lightning_modules.flow import TIME_SCALE, FlowMatchingModule, integrate, straight_path


def tiny_module(**kwargs) -> FlowMatchingModule:
    return FlowMatchingModule(image_shape=(1, 8, 8), model_channels=8, channel_mult=(1,), num_res_blocks=1,
                              norm_groups=4, attention_levels=(), **kwargs)


def test_the_path_and_its_velocity_and_the_loss_the_network_is_trained_on():
    g = torch.Generator().manual_seed(0)
    x0, noise, t = torch.randn(4, 1, 8, 8, generator=g), torch.randn(4, 1, 8, 8, generator=g), torch.rand(4, generator=g)
    x_t, velocity = straight_path(x0, noise, t)
    for i in range(4):
        torch.testing.assert_close(x_t[i], (1 - t[i]) * x0[i] + t[i] * noise[i])
    torch.testing.assert_close(velocity, noise - x0)
    torch.testing.assert_close(straight_path(x0, noise, torch.zeros(4))[0], x0)  # t = 0: the data
    torch.testing.assert_close(straight_path(x0, noise, torch.ones(4))[0], noise)  # t = 1: the noise

    seen = {}

    class Oracle(nn.Module):  # returns the path's velocity, and records the time it was given
        def forward(self, x, time):
            seen["time"] = time
            return noise - x0

    module = tiny_module()
    assert module.loss(Oracle(), x0, t, noise).item() == 0.0
    torch.testing.assert_close(seen["time"], t * TIME_SCALE)  # t enters the U-Net on DDPM's timestep scale
    zero = lambda x, time: torch.zeros_like(x)  # noqa: E731
    torch.testing.assert_close(module.loss(zero, x0, t, noise), (noise - x0).pow(2).mean())


def test_one_euler_and_one_heun_step_are_exact():
    x1 = torch.randn(3, 2, generator=torch.Generator().manual_seed(1))

    def velocity(x, t):  # a field that depends on both x and t
        return 2 * x + t[:, None]

    euler = integrate(velocity, x1, steps=1, solver="euler")
    torch.testing.assert_close(euler, x1 - (2 * x1 + 1))  # x(0) = x(1) + (0 - 1) v(x(1), 1)
    heun = integrate(velocity, x1, steps=1, solver="heun")
    torch.testing.assert_close(heun, x1 - 0.5 * ((2 * x1 + 1) + 2 * euler))  # the end point's velocity at t = 0


MU, SCALE = 0.7, 0.3  # Gaussian data: x0 ~ N(MU, SCALE^2) per pixel


def ideal_velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """E[ε - x0 | x_t = x] for the Gaussian data: x_t ~ N((1 - t) MU, (1 - t)^2 SCALE^2 + t^2)."""
    t = t.view(-1, *[1] * (x.dim() - 1)).double()
    mean, var = (1 - t) * MU, (1 - t) ** 2 * SCALE**2 + t**2
    return ((t - (1 - t) * SCALE**2) / var * (x - mean) - MU).to(x.dtype)


def test_the_solvers_follow_the_closed_form_flow_of_gaussian_data():
    """The flow maps noise z to MU + SCALE z exactly; Euler converges at first order, Heun at second, so at the same
    number of network calls Heun is far closer."""
    z = torch.randn(512, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    exact = MU + SCALE * z
    error = {(solver, steps): (integrate(ideal_velocity, z, steps, solver) - exact).abs().max().item()
             for solver in ("euler", "heun") for steps in (5, 10, 20, 40)}
    assert error[("euler", 20)] < 0.6 * error[("euler", 10)] < 0.36 * error[("euler", 5)]  # ~halves per doubling
    assert error[("heun", 20)] < 0.3 * error[("heun", 10)]  # ~quarters per doubling
    assert error[("heun", 10)] < 0.2 * error[("euler", 20)]  # 20 network calls each
    assert error[("heun", 40)] < 1e-3


def test_the_module_samples_its_ema_network_with_the_configured_or_typed_solver():
    module = tiny_module(solver="heun", sampling_steps=10).eval()

    class Ideal(nn.Module):  # the U-Net's interface: (x, t * TIME_SCALE)
        def forward(self, x, time):
            return ideal_velocity(x, time / TIME_SCALE)

    module.ema.module = Ideal()
    generator = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    z = torch.randn(6, 1, 8, 8, generator=generator())
    images = module.generate(6, generator())
    expected = (((MU + SCALE * z) + 1) / 2).clamp(0, 1)  # [-1, 1] -> [0, 1], as images
    assert (images - expected).abs().max() < 1e-2
    euler = module.sample(6, generator(), solver="euler", steps=2)  # another solver and steps, typed at predict
    assert (euler - expected).abs().max() > 10 * (images - expected).abs().max()


@pytest.mark.parametrize("bad", [dict(solver="rk4"), dict(sampling_steps=0)])
def test_a_solver_or_step_count_it_cannot_use_is_refused(bad):
    with pytest.raises(ValueError, match="use euler or heun, and at least one step"):
        tiny_module(**bad)
