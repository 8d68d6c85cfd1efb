"""Autoregressive generation with a KV cache: greedy or temperature/top-p sampling, stop tokens,
batches of prompts with left padding."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from pipelines.nn.decoder import Decoder


@dataclass
class Generation:
    tokens: list[list[int]]  # new tokens per prompt, up to and including a stop token
    prompt_tokens: int
    seconds: float

    @property
    def new_tokens(self) -> int:
        return sum(len(t) for t in self.tokens)

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else float("inf")


def sample_next(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> torch.Tensor:
    """Next token per row from logits [B, V]: argmax at temperature 0, else nucleus sampling."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (the top token always stays).
        outside = sorted_probs.cumsum(-1) - sorted_probs >= top_p
        sorted_probs = sorted_probs.masked_fill(outside, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.inference_mode()
def generate(
    model: Decoder,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int = 64,
    pad_id: int = 0,
    stop_ids: Sequence[int] = (),
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
    prefill_chunk: int | None = None,
    prefill_attention=None,
) -> Generation:
    """Generate up to `max_new_tokens` per prompt.

    prefill_chunk: feed the prompt in chunks of this many tokens (chunked prefill); with
    `prefill_attention` (e.g. `CompactAttention()`) the chunks attend to selected cache pages only.
    Chunked prefill needs a single prompt or prompts of equal length (no padding).
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    longest = max(len(p) for p in prompts)
    if longest + max_new_tokens > model.cfg.max_seq_len:
        raise ValueError(f"prompt of {longest} tokens + {max_new_tokens} new tokens exceeds the model's context of "
                         f"{model.cfg.max_seq_len}; shorten the prompt or lower max_new_tokens")
    device = model.embed.weight.device
    batch = len(prompts)
    ids = torch.full((batch, longest), pad_id, dtype=torch.long, device=device)
    attention = torch.zeros((batch, longest + max_new_tokens), dtype=torch.bool, device=device)
    for row, prompt in enumerate(prompts):  # left padding: every row's last prompt token is real
        ids[row, longest - len(prompt):] = torch.tensor(list(prompt), device=device)
        attention[row, longest - len(prompt):longest] = True
    padded = bool((~attention[:, :longest]).any())
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    stop = torch.tensor(list(stop_ids) or [-1], device=device)
    page = 64  # a paged-attention backend views the cache as 64-token pages
    cache = model.new_cache(batch, -(-(longest + max_new_tokens) // page) * page)
    out = torch.full((batch, max_new_tokens), pad_id, dtype=torch.long, device=device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    lengths = torch.full((batch,), max_new_tokens, dtype=torch.long, device=device)

    start = time.perf_counter()
    if prefill_chunk or prefill_attention is not None:
        if padded:
            raise ValueError("chunked prefill needs prompts of equal length (no padding)")
        chunk = prefill_chunk or longest
        for offset in range(0, longest, chunk):
            logits = model(ids[:, offset:offset + chunk], kv_cache=cache, last_logits_only=True,
                           attention=prefill_attention)[:, -1]
    else:
        logits = model(ids, attention_mask=attention[:, :longest] if padded else None, kv_cache=cache,
                       last_logits_only=True)[:, -1]
    for step in range(max_new_tokens):
        token = sample_next(logits, temperature, top_p, generator)
        token = torch.where(finished, torch.full_like(token, pad_id), token)
        out[:, step] = token
        just_stopped = ~finished & torch.isin(token, stop)
        lengths = torch.where(just_stopped, torch.full_like(lengths, step + 1), lengths)
        finished |= just_stopped
        if bool(finished.all()) or step == max_new_tokens - 1:
            break
        attention[:, longest + step] = True
        logits = model(token[:, None], attention_mask=attention[:, :longest + step + 1] if padded else None,
                       kv_cache=cache, last_logits_only=True)[:, -1]
    seconds = time.perf_counter() - start
    tokens = [out[row, : int(lengths[row])].tolist() for row in range(batch)]
    return Generation(tokens, sum(len(p) for p in prompts), seconds)
