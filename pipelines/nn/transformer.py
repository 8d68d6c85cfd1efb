"""Llama-family transformer parts: RMSNorm, RoPE, grouped-query attention, SwiGLU, pre-norm block.

Attention takes an arbitrary boolean mask and explicit position ids, because the block-diffusion
layouts (vlm/) put a noisy and a clean copy of one sequence side by side with shared positions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


class KVCache:
    """Keys/values of every layer for the tokens seen so far, preallocated to `max_len`.

    A forward pass appends a block of T tokens to every layer (`update`), then the caller commits
    them with `advance(T)`. `truncate(n)` rolls uncommitted or rejected entries back, which
    speculative and block-diffusion decoding need when a drafted block is revised.
    """

    def __init__(self, n_layers: int, batch: int, n_kv_heads: int, head_dim: int, max_len: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> None:
        shape = (n_layers, batch, n_kv_heads, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.max_len = max_len
        self.length = 0  # committed tokens

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k/v [B, kvh, T, d] after the committed tokens; return all keys/values incl. them."""
        end = self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: {end} tokens > max_len={self.max_len}")
        self.k[layer, :, :, self.length:end] = k
        self.v[layer, :, :, self.length:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def pages(self, layer: int, page_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
        """This layer's keys/values viewed as pages [B·Hkv·max_len/page, page, head_dim] (no copy).

        Page id (b·Hkv + g)·(max_len/page) + j holds tokens [j·page, (j+1)·page) of KV head g of
        row b: the ids CompactAttention's block tables index.
        """
        if self.max_len % page_size:
            raise ValueError(f"max_len={self.max_len} is not a multiple of the page size {page_size}")
        d = self.k.shape[-1]
        return self.k[layer].view(-1, page_size, d), self.v[layer].view(-1, page_size, d)

    def advance(self, n: int) -> None:
        self.length += n

    def truncate(self, length: int) -> None:
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot truncate a cache of {self.length} tokens to {length}")
        self.length = length


@dataclass
class TransformerConfig:
    dim: int = 64
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int = 2
    hidden_dim: int = 176
    norm_eps: float = 1e-5
    rope_base: float = 10000.0

    def __post_init__(self) -> None:
        if self.dim % self.n_heads:
            raise ValueError(f"dim={self.dim} is not divisible by n_heads={self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={self.n_heads} is not divisible by n_kv_heads={self.n_kv_heads}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 as the reference Llama code does, then cast back.
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (x32 * self.weight.float()).to(x.dtype)


def rope_cos_sin(
    position_ids: torch.Tensor, head_dim: int, base: float = 10000.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables of shape [batch, seq, head_dim] for explicit (possibly repeated) positions."""
    if position_ids.dim() == 1:
        position_ids = position_ids[None]
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=position_ids.device).float() / head_dim))
    angles = position_ids.float()[..., None] * inv_freq  # [B, T, D/2]
    angles = torch.cat([angles, angles], dim=-1)  # half-split layout, as in HF Llama
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, H, T, D] by the angles in cos/sin [B, T, D] (rotate-half convention)."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    cos, sin = cos[:, None].to(x.dtype), sin[:, None].to(x.dtype)
    return x * cos + rotated * sin


class Attention(nn.Module):
    """Multi-head attention with grouped K/V heads, computed by `scaled_dot_product_attention`."""

    def __init__(self, dim: int, n_heads: int, n_kv_heads: int | None = None, bias: bool = False) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.n_kv_heads = n_kv_heads or n_heads
        self.head_dim = dim // n_heads
        self.q_proj = nn.Linear(dim, n_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(dim, self.n_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(dim, self.n_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(n_heads * self.head_dim, dim, bias=bias)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        is_causal: bool = False,
        kv_cache: KVCache | None = None,
        layer: int = 0,
        backend: Callable | None = None,
    ) -> torch.Tensor:
        """x [B, T, dim]; mask broadcastable to [B, H, T, S], True = may attend; rope = (cos, sin).

        With a cache, the new keys/values are appended after the cached ones and S = cached + T.
        `backend(q, k_cache, v_cache, past)` replaces the dense kernel (e.g. CompactAttention's
        page-sparse prefill); it sees the whole head-major cache arena of this layer.
        """
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if kv_cache is not None:
            past = kv_cache.length
            k, v = kv_cache.update(layer, k, v)
            if backend is not None:
                out = backend(q, kv_cache.k[layer], kv_cache.v[layer], past)
                return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))
        if mask is not None and is_causal:
            raise ValueError("pass either an explicit mask or is_causal=True, not both")
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=is_causal, enable_gqa=self.n_kv_heads != self.n_heads
        )
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden_dim: int, bias: bool = False) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden_dim, bias=bias)
        self.up_proj = nn.Linear(dim, hidden_dim, bias=bias)
        self.down_proj = nn.Linear(hidden_dim, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class TransformerBlock(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attn = Attention(cfg.dim, cfg.n_heads, cfg.n_kv_heads)
        self.mlp_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlp = SwiGLU(cfg.dim, cfg.hidden_dim)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        is_causal: bool = False,
        kv_cache: KVCache | None = None,
        layer: int = 0,
        backend: Callable | None = None,
    ) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), mask=mask, rope=rope, is_causal=is_causal, kv_cache=kv_cache, layer=layer,
                          backend=backend)
        return x + self.mlp(self.mlp_norm(x))
