"""A small ViT image encoder, trained from scratch here (no pretrained vision weights offline)."""

from __future__ import annotations

import torch
from torch import nn

from pipelines.nn.transformer import RMSNorm, TransformerBlock, TransformerConfig


class VisionEncoder(nn.Module):
    """Patchify → learned positions → bidirectional transformer blocks → patch tokens.

    Returns [B, num_patches, dim] tokens; `pool` averages them into one vector per image.
    """

    def __init__(
        self,
        image_size: int = 32,
        patch_size: int = 8,
        in_channels: int = 3,
        dim: int = 64,
        n_layers: int = 2,
        n_heads: int = 4,
        mlp_ratio: float = 2.75,
    ) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size={image_size} is not a multiple of patch_size={patch_size}")
        self.image_size = image_size
        self.num_patches = (image_size // patch_size) ** 2
        self.patch_embed = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)
        self.pos_embed = nn.Parameter(torch.randn(1, self.num_patches, dim) * 0.02)
        cfg = TransformerConfig(dim=dim, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_heads,
                                hidden_dim=int(dim * mlp_ratio))
        self.blocks = nn.ModuleList(TransformerBlock(cfg) for _ in range(n_layers))
        self.norm = RMSNorm(dim)
        self.dim = dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, C, H, W] float, already normalised."""
        if images.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"expected {self.image_size}x{self.image_size} images, got {tuple(images.shape[-2:])}")
        x = self.patch_embed(images).flatten(2).transpose(1, 2) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def pool(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward(images).mean(dim=1)
