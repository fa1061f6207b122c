"""networks/attention.py: the kernel table's choice, and the same math as F.scaled_dot_product_attention whichever
kernel runs (fp32 reference, bf16 within bf16's error), for the ViT's and the U-Net's attention."""

import torch
import torch.nn.functional as F

import networks.attention as attention_module
from networks.attention import EXPLICIT_UP_TO, attention, uses_explicit
from networks.unet import AttentionBlock
from networks.vit import VisionTransformer


def qkv(n: int, dtype=torch.float32, requires_grad=False):
    """q, k, v of shape (2 batch, 3 heads, n tokens, 16), standard normal."""
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(2, 3, n, 16, generator=generator).to(dtype).requires_grad_(requires_grad) for _ in range(3)]


def test_the_table_takes_explicit_up_to_its_length_with_and_without_gradients():
    for (device, dtype, grad), longest in EXPLICIT_UP_TO.items():
        with torch.set_grad_enabled(grad):
            assert uses_explicit(torch.empty(1, 1, longest, 8, dtype=dtype, device=device))
            assert not uses_explicit(torch.empty(1, 1, longest + 1, 8, dtype=dtype, device=device))
    assert not uses_explicit(torch.empty(1, 1, 8, 8))  # fp32: SDPA's fused kernel
    assert not uses_explicit(torch.empty(1, 1, 8, 8, dtype=torch.float16))  # not measured faster: SDPA


def test_fp32_is_exactly_sdpa():
    q, k, v = qkv(17)
    assert torch.equal(attention(q, k, v), F.scaled_dot_product_attention(q, k, v))


def test_bf16_explicit_is_sdpa_within_bf16_error_forward_and_backward():
    """In bf16 on the CPU the explicit formula runs. Its scores are rounded to bf16 (SDPA's bf16 kernel keeps them in
    fp32), so its output and gradients are 2-3x further from the fp32 result than SDPA's: bounded here at 4x, and
    within bf16's tolerance."""
    q32, k32, v32 = qkv(65, requires_grad=True)
    reference = F.scaled_dot_product_attention(q32, k32, v32)
    reference.square().sum().backward()
    errors = {}
    for path in ("explicit", "sdpa"):
        q, k, v = (t.detach().bfloat16().requires_grad_() for t in (q32, k32, v32))
        assert uses_explicit(q)
        out = attention(q, k, v) if path == "explicit" else F.scaled_dot_product_attention(q, k, v)
        out.float().square().sum().backward()
        torch.testing.assert_close(out.float(), reference, rtol=0.016, atol=0.016)  # 2**-6
        errors[path] = [(a.float() - b).abs().max().item()
                        for a, b in [(out, reference), (q.grad, q32.grad), (k.grad, k32.grad), (v.grad, v32.grad)]]
    for explicit_error, sdpa_error in zip(errors["explicit"], errors["sdpa"]):
        assert explicit_error <= 4 * sdpa_error


def test_attention_dropout_keeps_the_expectation_on_the_explicit_path():
    q, k, v = qkv(9, dtype=torch.bfloat16)
    torch.manual_seed(0)
    with torch.enable_grad():
        assert uses_explicit(q.requires_grad_())
        draws = torch.stack([attention(q, k, v, dropout_p=0.5).float() for _ in range(2000)])
    assert not torch.equal(draws[0], draws[1])
    torch.testing.assert_close(draws.mean(0), attention(q, k, v).float(), rtol=0.05, atol=0.05)


def bf16_outputs(module, x, monkeypatch) -> dict[str, torch.Tensor]:
    """module(x) under bf16 autocast with every attention call through SDPA, then through the explicit formula."""
    outputs = {}
    for path in ("sdpa", "explicit"):
        monkeypatch.setattr(attention_module, "uses_explicit", lambda q: path == "explicit")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outputs[path] = module(x).float()
    return outputs


def test_vit_in_bf16_autocast_is_the_same_with_either_kernel(monkeypatch):
    torch.manual_seed(0)
    model = VisionTransformer(img_size=16, patch_size=4, in_channels=3, num_classes=10, embed_dim=48, depth=2,
                              num_heads=3, dropout=0.0, attn_dropout=0.0)
    for block in model.blocks:  # at init (std 0.02) the scores are near 0 and any softmax looks right
        torch.nn.init.normal_(block.attn.qkv.weight, std=0.3)
    x = torch.randn(4, 3, 16, 16)
    logits = bf16_outputs(model, x, monkeypatch)
    torch.testing.assert_close(logits["explicit"], logits["sdpa"], rtol=0.05, atol=0.05)
    torch.testing.assert_close(logits["explicit"], model(x), rtol=0.05, atol=0.05)


def test_unet_attention_block_in_bf16_autocast_is_the_same_with_either_kernel(monkeypatch):
    torch.manual_seed(0)
    block = AttentionBlock(32, num_heads=2, norm_groups=8)
    torch.nn.init.normal_(block.proj.weight, std=0.1)  # zero-initialised: would hide the attention
    x = torch.randn(2, 32, 8, 8)
    out = bf16_outputs(block, x, monkeypatch)
    torch.testing.assert_close(out["explicit"], out["sdpa"], rtol=0.03, atol=0.03)
    torch.testing.assert_close(out["explicit"], block(x), rtol=0.03, atol=0.03)
    assert not torch.allclose(out["explicit"], x, atol=0.03)  # the attention changed x: the comparison means something
