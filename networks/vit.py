"""Vision Transformer (Dosovitskiy et al., "An Image is Worth 16x16 Words: Transformers for Image Recognition at
Scale", ICLR 2021): an image is cut into patches, each patch becomes a token, a class token is prepended, and a stack
of pre-norm transformer blocks reads them; the class token's final state is classified.

The layers and defaults are those of docs/guide.md, Part 1 (Steps 1-5): ``VisionTransformer()`` is ViT-B/16 (86.6M
parameters). Attention is ``networks.attention.attention``: softmax(q k^T / sqrt(d)) v through the faster kernel for the
device and dtype -- ``F.scaled_dot_product_attention``'s fused kernels on a GPU and in fp32, the explicit formula in
bf16 on a CPU (why, and what it measured: docs/design_data_networks.md, "ViT").
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from networks.attention import attention
from networks.dropout import Dropout


def trunc_normal_(tensor: Tensor, std: float = 0.02) -> Tensor:
    """N(0, std) truncated at two standard deviations.

    ``nn.init.trunc_normal_(t, std=0.02)`` alone truncates at +-2 in absolute value, i.e. not at all for std=0.02.
    """
    return nn.init.trunc_normal_(tensor, std=std, a=-2 * std, b=2 * std)


class PatchEmbedding(nn.Module):
    """Split an image into non-overlapping patches and embed each one: (B, C, H, W) -> (B, N, D)."""

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_channels: int = 3, embed_dim: int = 768):
        super().__init__()
        if img_size % patch_size:
            raise ValueError(
                f"image size {img_size} is not divisible by patch size {patch_size}: pick a patch size that divides "
                f"it (e.g. 4 or 8 for 32px, 7 or 4 for 28px) or change data.image_size."
            )
        self.img_size = img_size
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.n_patches = (img_size // patch_size) ** 2
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1:] != (self.in_channels, self.img_size, self.img_size):
            raise ValueError(
                f"ViT built for images of shape (B, {self.in_channels}, {self.img_size}, {self.img_size}) got "
                f"{tuple(x.shape)}; build the model from the datamodule's dims or resize the data."
            )
        x = self.proj(x)  # (B, D, H/P, W/P)
        return x.flatten(2).transpose(1, 2)  # (B, N, D)


class PositionEmbedding(nn.Module):
    """Learned position embedding for the class token and N patches, followed by dropout."""

    def __init__(self, n_patches: int, embed_dim: int, dropout: float = 0.1):
        super().__init__()
        self.pos_embed = nn.Parameter(torch.zeros(1, n_patches + 1, embed_dim))
        self.dropout = Dropout(dropout)
        trunc_normal_(self.pos_embed)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(x + self.pos_embed)  # (B, N+1, D)


class MultiHeadSelfAttention(nn.Module):
    """Multi-head self-attention; dropout on the attention weights (training only) and on the output.

    ``attn_dropout`` (default: ``dropout``, as in the guide) is the dropout on the attention weights. On CPU in fp32
    the fused SDPA kernel has no attention dropout, so any value > 0 sends training through PyTorch's slower unfused
    path; the ViT paper uses 0 here, and so do our configs.
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.1, attn_dropout: float | None = None):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim={embed_dim} must be divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.attn_dropout = dropout if attn_dropout is None else attn_dropout
        self.qkv = nn.Linear(embed_dim, embed_dim * 3)
        self.proj = nn.Linear(embed_dim, embed_dim)
        self.proj_dropout = Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, N, head_dim)
        x = attention(q, k, v, dropout_p=self.attn_dropout if self.training else 0.0)  # (B, heads, N, head_dim)
        x = x.transpose(1, 2).reshape(B, N, C)
        return self.proj_dropout(self.proj(x))


class TransformerBlock(nn.Module):
    """Pre-norm transformer encoder block: x + MSA(LN(x)), then x + MLP(LN(x))."""

    def __init__(
        self, embed_dim: int, num_heads: int, mlp_ratio: float = 4.0, dropout: float = 0.1,
        attn_dropout: float | None = None,
    ):
        super().__init__()
        hidden = int(embed_dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(embed_dim)
        self.attn = MultiHeadSelfAttention(embed_dim, num_heads, dropout, attn_dropout)
        self.norm2 = nn.LayerNorm(embed_dim)
        self.mlp = nn.Sequential(
            nn.Linear(embed_dim, hidden),
            nn.GELU(),
            Dropout(dropout),
            nn.Linear(hidden, embed_dim),
            Dropout(dropout),
        )

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """ViT classifier: patch embedding, class token, position embedding, ``depth`` blocks, LayerNorm, linear head.

    Defaults are ViT-B/16 at 224px with 1000 classes. For 32px data use e.g. ``patch_size=4``.

    Args:
        img_size, in_channels, num_classes: the images' side and channels, and the number of classes.
        patch_size: side of the square patches; must divide ``img_size``.
        embed_dim, depth, num_heads: token width, number of blocks, attention heads (must divide ``embed_dim``).
        mlp_ratio: the blocks' MLP width as a multiple of ``embed_dim``.
        dropout: dropout on the position-embedded tokens, attention output and MLP.
        attn_dropout: dropout on the attention weights; ``None`` = ``dropout`` (the guide's). Configs set 0, as the
            ViT paper does: see ``MultiHeadSelfAttention``.
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_channels: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        dropout: float = 0.1,
        attn_dropout: float | None = None,
    ):
        super().__init__()
        self.patch_embed = PatchEmbedding(img_size, patch_size, in_channels, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = PositionEmbedding(self.patch_embed.n_patches, embed_dim, dropout)
        self.blocks = nn.ModuleList(
            [TransformerBlock(embed_dim, num_heads, mlp_ratio, dropout, attn_dropout) for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)
        self.apply(_init_weights)
        trunc_normal_(self.cls_token)

    def forward_features(self, x: Tensor) -> Tensor:
        """The final class-token representation: (B, C, H, W) -> (B, D)."""
        x = self.patch_embed(x)  # (B, N, D)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # (B, N+1, D)
        x = self.pos_embed(x)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)[:, 0]

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.forward_features(x))  # (B, num_classes)


def _init_weights(module: nn.Module) -> None:
    """Truncated-normal(0.02) linear weights with zero biases, unit LayerNorms (as in the ViT paper code)."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
