"""Block-diffusion decoding with a KV cache (NBDiff's loop, Fast-dLLM's commit rule).

Prefill the prompt causally. Then per block of B positions:
1. the block's first token comes from the previous causal pass (the AR step);
2. the other B−1 positions start as [MASK] and are denoised against the committed cache, the block
   attending to itself bidirectionally; each step commits every masked position whose confidence is
   ≥ τ, and at least the most confident one; committed tokens are never revised;
3. one causal commit pass over the finished block writes its KV, and its last logit AR-decodes the
   next block's first token.
With B = 1 step 2 is empty and this is greedy AR decoding. Both counts are reported: tokens per
*denoising* forward (the number diffusion papers quote) and tokens per forward of any kind
(prefill and commit passes included), which is what bounds the speed-up.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from pipelines.errors import PipelinesError
from pipelines.nn.decoder import Decoder


class DecodeSettingError(PipelinesError, ValueError):
    """A decoding setting outside its valid range (printed as one line by the CLI)."""


@dataclass
class BlockDecodeResult:
    tokens: list[list[int]]  # per prompt, up to and including EOS
    prefill_forwards: int = 0
    denoise_forwards: int = 0
    commit_forwards: int = 0
    seconds: float = 0.0

    @property
    def new_tokens(self) -> int:
        return sum(len(t) for t in self.tokens)

    @property
    def forwards(self) -> int:
        return self.prefill_forwards + self.denoise_forwards + self.commit_forwards

    @property
    def tokens_per_denoise_forward(self) -> float:
        return self.new_tokens / self.denoise_forwards if self.denoise_forwards else float("nan")

    @property
    def tokens_per_forward(self) -> float:
        return self.new_tokens / self.forwards if self.forwards else float("nan")

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else float("inf")


def check_threshold(threshold: float) -> None:
    if not 0.0 < threshold <= 1.0:
        raise DecodeSettingError(f"confidence threshold τ must be in (0, 1], got {threshold}")


@torch.inference_mode()
def block_diffusion_generate(model: Decoder, prompts: Sequence[Sequence[int]], block_size: int, mask_id: int,
                             stop_ids: Sequence[int], max_new_tokens: int = 128, threshold: float = 0.9
                             ) -> BlockDecodeResult:
    """Decode each prompt (batch 1, one after another, as the throughput comparisons in the papers do)."""
    check_threshold(threshold)
    if block_size < 1:
        raise DecodeSettingError(f"block_size must be >= 1, got {block_size}")
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    result = BlockDecodeResult(tokens=[])
    start = time.perf_counter()
    for prompt in prompts:
        result.tokens.append(_decode_one(model, list(prompt), block_size, mask_id, set(stop_ids), max_new_tokens,
                                         threshold, result))
    result.seconds = time.perf_counter() - start
    return result


def _decode_one(model: Decoder, prompt: list[int], block_size: int, mask_id: int, stop: set[int],
                max_new_tokens: int, threshold: float, stats: BlockDecodeResult) -> list[int]:
    device = model.embed.weight.device
    if len(prompt) + max_new_tokens > model.cfg.max_seq_len:
        raise ValueError(f"prompt of {len(prompt)} tokens + {max_new_tokens} new tokens exceeds the model's "
                         f"context of {model.cfg.max_seq_len}")
    cache = model.new_cache(1, len(prompt) + max_new_tokens + block_size)
    logits = model(torch.tensor([prompt], device=device), kv_cache=cache, last_logits_only=True)
    stats.prefill_forwards += 1
    first = _argmax_except(logits[0, -1], mask_id)
    out: list[int] = []
    while len(out) < max_new_tokens:
        size = min(block_size, max_new_tokens - len(out))
        block = torch.full((1, size), mask_id, dtype=torch.long, device=device)
        block[0, 0] = first
        positions = torch.arange(cache.length, cache.length + size, device=device)[None]
        see_all = torch.ones(1, 1, size, cache.length + size, dtype=torch.bool, device=device)
        while not _block_done(block[0], mask_id, stop):
            # Written to the cache but not committed: the next call overwrites these entries.
            logits = model(block, position_ids=positions, mask=see_all, kv_cache=cache, commit=False)
            stats.denoise_forwards += 1
            scores = logits[0, :-1].float()  # shift: output j-1 predicts token j
            scores[:, mask_id] = float("-inf")  # [MASK] is an input, never an answer
            probs = torch.softmax(scores, dim=-1)
            confidence, guess = probs.max(-1)
            masked = block[0, 1:] == mask_id
            confidence = confidence.masked_fill(~masked, -1.0)
            accept = masked & (confidence >= threshold)
            accept[confidence.argmax()] = True
            block[0, 1:] = torch.where(accept, guess, block[0, 1:])
        tokens = block[0].tolist()
        ends = [i for i, tok in enumerate(tokens) if tok in stop]
        if ends:
            return out + tokens[: ends[0] + 1]
        out += tokens
        if len(out) >= max_new_tokens:
            break
        logits = model(block, position_ids=positions, kv_cache=cache, last_logits_only=True)  # causal commit
        stats.commit_forwards += 1
        first = _argmax_except(logits[0, -1], mask_id)
    return out


def _argmax_except(logits: torch.Tensor, mask_id: int) -> int:
    """Greedy AR token; [MASK] is excluded (a block that starts with it could never finish)."""
    logits = logits.clone()
    logits[mask_id] = float("-inf")
    return int(logits.argmax())


def _block_done(block: torch.Tensor, mask_id: int, stop: set[int]) -> bool:
    """No mask left before the block's first stop token (what follows EOS is never emitted)."""
    for tok in block.tolist():
        if tok in stop:
            return True
        if tok == mask_id:
            return False
    return True
