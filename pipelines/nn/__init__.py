"""Shared model parts used by more than one domain."""

from pipelines.nn.transformer import (
    Attention,
    RMSNorm,
    SwiGLU,
    TransformerBlock,
    TransformerConfig,
    apply_rope,
    rope_cos_sin,
)
from pipelines.nn.vision import VisionEncoder

__all__ = [
    "Attention",
    "RMSNorm",
    "SwiGLU",
    "TransformerBlock",
    "TransformerConfig",
    "VisionEncoder",
    "apply_rope",
    "rope_cos_sin",
]
