"""The ViT network: shapes, parameter count, attention math, input validation."""

import pytest
import torch
import torch.nn.functional as F

from networks.vit import MultiHeadSelfAttention, PatchEmbedding, VisionTransformer


def explicit_attention(attn: MultiHeadSelfAttention, x: torch.Tensor) -> torch.Tensor:
    """The formulation of docs/guide.md (Part 1, Step 3): softmax(q k^T * d^-1/2) v, written out."""
    B, N, C = x.shape
    qkv = attn.qkv(x).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    weights = F.softmax((q @ k.transpose(-2, -1)) * attn.head_dim**-0.5, dim=-1)
    return attn.proj((weights @ v).transpose(1, 2).reshape(B, N, C))


def test_defaults_are_vit_b16():
    model = VisionTransformer()
    assert sum(p.numel() for p in model.parameters()) == 86_567_656  # ViT-B/16, 1000 classes
    assert model.patch_embed.n_patches == 196


@pytest.mark.parametrize("img_size,patch,channels", [(32, 4, 3), (28, 7, 1), (64, 8, 3)])
def test_output_shapes(img_size, patch, channels):
    model = VisionTransformer(img_size=img_size, patch_size=patch, in_channels=channels, num_classes=7,
                              embed_dim=48, depth=2, num_heads=3)
    x = torch.randn(5, channels, img_size, img_size)
    assert model.patch_embed(x).shape == (5, (img_size // patch) ** 2, 48)
    assert model.forward_features(x).shape == (5, 48)
    assert model(x).shape == (5, 7)


def test_sdpa_attention_equals_explicit_softmax_in_eval():
    torch.manual_seed(0)
    attn = MultiHeadSelfAttention(embed_dim=64, num_heads=4, dropout=0.5).eval()
    x = torch.randn(3, 17, 64)
    torch.testing.assert_close(attn(x), explicit_attention(attn, x), rtol=1e-5, atol=1e-5)


def test_dropout_only_in_training():
    torch.manual_seed(0)
    model = VisionTransformer(img_size=16, patch_size=4, in_channels=1, num_classes=3, embed_dim=32, depth=1,
                              num_heads=2, dropout=0.5)
    x = torch.randn(2, 1, 16, 16)
    model.train()
    assert not torch.allclose(model(x), model(x))
    model.eval()
    torch.testing.assert_close(model(x), model(x))


def test_truncated_normal_init():
    model = VisionTransformer(img_size=16, patch_size=4, num_classes=10, embed_dim=64, depth=2, num_heads=4)
    weight = model.blocks[0].mlp[0].weight
    assert weight.abs().max() <= 2 * 0.02 + 1e-6  # truncated at 2 std
    assert 0.012 < weight.std() < 0.02
    assert torch.all(model.blocks[0].mlp[0].bias == 0)


def test_image_size_not_divisible_by_patch_is_a_clear_error():
    with pytest.raises(ValueError, match="not divisible by patch size 5"):
        PatchEmbedding(img_size=32, patch_size=5)


def test_wrong_input_shape_is_a_clear_error():
    model = VisionTransformer(img_size=32, patch_size=4, in_channels=3, num_classes=10, embed_dim=32, depth=1, num_heads=2)
    with pytest.raises(ValueError, match=r"built for images of shape \(B, 3, 32, 32\) got \(2, 1, 28, 28\)"):
        model(torch.randn(2, 1, 28, 28))


def test_classifier_accuracy_is_over_images_and_top5_is_its_own_metric():
    from lightning_modules.classifier import ViTClassifier

    model = ViTClassifier(image_shape=(1, 28, 28), num_classes=10, patch_size=7, embed_dim=16, depth=1, num_heads=2)
    metrics = model.test_metrics
    y = torch.tensor([0, 0, 0, 1])
    metrics.update(F.one_hot(y, 10).float(), y)  # first batch all right: top-1 and top-5 states are equal here
    logits = F.one_hot(y, 10).float()
    logits[3, 9] = 2.0  # the class-1 image: top-1 wrong (class 9), top-5 right
    metrics.update(logits, y)
    values = {k: v.item() for k, v in metrics.compute().items()}
    assert values == {"test/acc": 0.875, "test/acc_top5": 1.0}  # 7 of 8 images (per-class mean: (1 + 0.5) / 2)
