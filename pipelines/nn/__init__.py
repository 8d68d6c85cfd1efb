"""Shared model parts used by more than one domain."""

# The stable name `pipelines.nn.lightning_attention(q, k, v, ...)` is the function (design.md); its
# module stays importable as `from pipelines.nn.lightning_attention import ...`.
from pipelines.nn.lightning_attention import (
    alibi_log_decay,
    lightning_attention,
    lightning_attention_step,
    tnl_paper_log_decay,
)
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
    "alibi_log_decay",
    "apply_rope",
    "lightning_attention",
    "lightning_attention_step",
    "rope_cos_sin",
    "tnl_paper_log_decay",
]
