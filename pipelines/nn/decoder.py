"""A Llama-family decoder: token embedding → pre-norm blocks → RMSNorm → (tied) LM head.

It is the AR source model that vlm/ converts to block diffusion and the language half of the VLM
and VLA, so `forward` takes explicit position ids and an arbitrary boolean mask besides the plain
causal default, and a KV cache that appends whole blocks and can roll back uncommitted entries.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from pipelines.nn.attention_sharing import AttentionSharing, apply_attention_sharing
from pipelines.nn.transformer import KVCache, RMSNorm, TransformerBlock, TransformerConfig, rope_cos_sin


@dataclass
class DecoderConfig(TransformerConfig):
    vocab_size: int = 256
    max_seq_len: int = 2048
    tie_embeddings: bool = True
    # How the attention projections are parametrised (MASA or a baseline); None = one per layer.
    attention_sharing: AttentionSharing | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.attention_sharing, dict):  # from config.json / YAML
            self.attention_sharing = AttentionSharing(**self.attention_sharing)

    @classmethod
    def tiny(cls, vocab_size: int = 256) -> DecoderConfig:
        """Random-init size for tests: runs a forward pass in milliseconds."""
        return cls(vocab_size=vocab_size, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=128,
                   max_seq_len=256, rope_base=10000.0)

    def to_dict(self) -> dict:
        return asdict(self)


class Decoder(nn.Module):
    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.blocks = nn.ModuleList(TransformerBlock(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        if cfg.attention_sharing is not None:
            apply_attention_sharing(self, list(self.blocks), cfg.attention_sharing)

    def new_cache(self, batch: int, max_len: int | None = None) -> KVCache:
        param = self.embed.weight
        return KVCache(self.cfg.n_layers, batch, self.cfg.n_kv_heads, self.cfg.head_dim,
                       max_len or self.cfg.max_seq_len, dtype=param.dtype, device=param.device)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        *,
        inputs_embeds: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
        commit: bool = True,
        last_logits_only: bool = False,
        return_hidden: bool = False,
        attention: Callable | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits [B, T, vocab] for T new tokens (ids or embeddings, e.g. with image tokens spliced in).

        mask: bool [B or 1, 1, T, past+T], True = may attend; overrides the causal default.
        attention_mask: bool [B, past+T], False marks (left) padding; used for the default mask
            and for default positions (a row's first real token gets position 0).
        kv_cache: append this block's keys/values; with commit=False they are written but not
            committed, so the next call overwrites them (a drafted block that gets revised).
        last_logits_only: project only the last position (generation needs no more; the LM head
            is the single largest matmul of a small model).
        attention: a causal prefill backend over the cache, e.g. `CompactAttention` (needs kv_cache).
        """
        x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds
        b, t = x.shape[:2]
        past = kv_cache.length if kv_cache is not None else 0
        if past + t > self.cfg.max_seq_len:
            raise ValueError(f"sequence of {past + t} tokens exceeds the model's context of {self.cfg.max_seq_len}")
        if position_ids is None:
            position_ids = self._default_positions(b, t, past, attention_mask, x.device)
        if attention is not None and (kv_cache is None or mask is not None or attention_mask is not None):
            raise ValueError("an attention backend needs a kv_cache and no explicit or padding mask")
        is_causal = False
        if mask is None and attention is None:
            if attention_mask is None and past == 0:
                is_causal = t > 1  # SDPA's own causal path: no mask tensor at all
            elif attention_mask is not None or t > 1:
                mask = self._causal_mask(t, past, attention_mask, x.device)
        rope = rope_cos_sin(position_ids, self.cfg.head_dim, self.cfg.rope_base)
        for layer, block in enumerate(self.blocks):
            x = block(x, mask=mask, rope=rope, is_causal=is_causal, kv_cache=kv_cache, layer=layer, backend=attention)
        if kv_cache is not None and commit:
            kv_cache.advance(t)
        hidden = self.norm(x)
        logits = self.lm_head(hidden[:, -1:] if last_logits_only else hidden)
        return (logits, hidden) if return_hidden else logits

    @staticmethod
    def _default_positions(b: int, t: int, past: int, attention_mask: torch.Tensor | None,
                           device: torch.device) -> torch.Tensor:
        if attention_mask is None:
            return torch.arange(past, past + t, device=device).expand(b, t)
        positions = attention_mask.long().cumsum(-1) - 1
        return positions.clamp(min=0)[:, past:past + t]

    @staticmethod
    def _causal_mask(t: int, past: int, attention_mask: torch.Tensor | None, device: torch.device) -> torch.Tensor:
        query_pos = torch.arange(past, past + t, device=device)[:, None]
        key_pos = torch.arange(past + t, device=device)[None, :]
        mask = (key_pos <= query_pos)[None, None]  # [1, 1, T, S]
        if attention_mask is not None:
            # Padding keys are hidden; each query still sees itself so no softmax row is empty.
            mask = (mask & attention_mask[:, None, None, : past + t]) | (key_pos == query_pos)[None, None]
        return mask

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def mean_nll_per_token(model: Decoder, sequences: Sequence[Sequence[int]]) -> float:
    """Causal next-token NLL (nats/token) of plain token sequences, e.g. held-out real text."""
    total, count = 0.0, 0
    with torch.no_grad():
        for seq in sequences:
            ids = torch.as_tensor(list(seq))[None].to(model.embed.weight.device)
            logits = model(ids[:, :-1]).float()
            total += float(torch.nn.functional.cross_entropy(logits[0], ids[0, 1:], reduction="sum"))
            count += ids.shape[1] - 1
    return total / max(count, 1) if count else math.nan
