"""networks/dropout.py: the CPU mask drops p of the elements, keeps the expectation, and follows the seed."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from networks.dropout import Dropout
from networks.gan import Discriminator
from networks.unet import SimpleUNet
from networks.vit import VisionTransformer


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5, 0.9])
def test_drops_p_of_the_elements_and_scales_the_rest_to_keep_the_mean(p):
    torch.manual_seed(0)
    n = 1_000_001  # not a multiple of the four elements one 64-bit draw decides
    y = Dropout(p)(torch.ones(n))
    dropped = (y == 0).double().mean().item()
    assert abs(dropped - p) < 5 * math.sqrt(p * (1 - p) / n)  # binomial: five standard deviations
    kept = y[y != 0]
    scale = 2**16 / (2**16 - round(p * 2**16))
    assert torch.all(kept == torch.tensor(scale, dtype=torch.float32))
    assert abs(scale * (1 - p) - 1) < 1e-4  # p is rounded to a multiple of 2**-16


def test_gradient_is_the_mask_times_the_scale():
    torch.manual_seed(0)
    x = torch.randn(64, 33, requires_grad=True)
    y = Dropout(0.2)(x)
    y.backward(torch.ones_like(y))
    scale = torch.tensor(2**16 / (2**16 - round(0.2 * 2**16)))
    assert torch.equal(x.grad, torch.where(y != 0, scale, 0.0))  # d(x * mask)/dx = mask: scale where kept


def test_same_seed_same_mask_and_consecutive_masks_differ():
    x = torch.ones(4096)
    torch.manual_seed(7)
    a, b = Dropout(0.5)(x), Dropout(0.5)(x)
    torch.manual_seed(7)
    assert torch.equal(Dropout(0.5)(x), a)
    assert not torch.equal(a, b)
    assert a.dtype == x.dtype and a.shape == x.shape


def test_bits_are_uniform_in_each_of_the_four_positions_of_a_draw():
    # p = 0.5 keeps exactly the 16-bit values whose sign bit is 0: a bias in any position of the 64-bit words
    # (e.g. the top bit that random_() without a range leaves at 0) would show as a drop rate far from 0.5.
    torch.manual_seed(0)
    y = Dropout(0.5)(torch.ones(400_000)).view(-1, 4)
    rates = (y == 0).double().mean(0)
    assert torch.all((rates - 0.5).abs() < 5 * math.sqrt(0.25 / 100_000)), rates


def test_eval_mode_p_zero_and_p_one_behave_like_nn_dropout():
    x = torch.randn(8, 5)
    assert torch.equal(Dropout(0.5).eval()(x), x)
    assert torch.equal(Dropout(0.0)(x), x)
    assert torch.equal(Dropout(1.0)(x), torch.zeros_like(x))


def test_inplace_writes_the_input_and_bf16_stays_bf16():
    torch.manual_seed(0)
    x = torch.ones(1000)
    y = Dropout(0.5, inplace=True)(x)
    assert y.data_ptr() == x.data_ptr() and (x == 0).any()
    assert Dropout(0.5)(torch.ones(10, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_every_network_uses_it():
    networks = [VisionTransformer(img_size=28, patch_size=7, in_channels=1, num_classes=10, embed_dim=32, depth=1,
                                  num_heads=2), SimpleUNet(in_channels=1, model_channels=16, dropout=0.1), Discriminator()]
    for net in networks:
        dropouts = [m for m in net.modules() if isinstance(m, nn.Dropout)]
        assert dropouts and all(isinstance(m, Dropout) for m in dropouts), type(net).__name__
