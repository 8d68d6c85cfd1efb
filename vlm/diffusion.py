"""Block diffusion on an AR decoder, NBDiff's recipe: the `[noisy x_t ; clean x_0]` layout, its mask,
per-block noise and the L_MDM + λ·L_AR objective.

AR decoding is block diffusion with block size 1. For B > 1 the sequence is cut into blocks of B;
a noisy block is denoised bidirectionally while it reads the *clean* stream of earlier blocks, and
the clean stream stays strictly causal, so it is the AR model itself (and the KV cache the decoder
commits at inference). Shift convention: the output at position i−1 predicts token i, so the first
token of a block is never masked: it is AR-decoded from the clean stream, exactly as at inference.

Two departures from a literal 2L copy, both loss-identical (tested):
- the response starts a fresh block, as the decoder starts one after the prompt (BARD's rule);
- the noisy copy of the prompt is dropped: prompt tokens are never noised, nothing may attend to a
  noisy prompt token (noisy queries see only their own block's noisy keys, clean queries none), and
  it carries no loss, so it is dead computation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

IGNORE = -100


def layout_mask(noisy_blocks: torch.Tensor, clean_blocks: torch.Tensor) -> torch.Tensor:
    """Mask [n+N, n+N] (True = may attend) for the layout `[noisy ; clean]`, given each token's block id.

    noisy → noisy: same block (bidirectional); noisy → clean: strictly earlier blocks;
    clean → clean: causal by index (the AR model); clean → noisy: never.
    """
    n, total = len(noisy_blocks), len(noisy_blocks) + len(clean_blocks)
    mask = torch.zeros(total, total, dtype=torch.bool)
    mask[:n, :n] = noisy_blocks[:, None] == noisy_blocks[None, :]
    mask[:n, n:] = clean_blocks[None, :] < noisy_blocks[:, None]
    mask[n:, n:] = torch.ones(len(clean_blocks), len(clean_blocks), dtype=torch.bool).tril()
    return mask


def block_diffusion_mask(length: int, block_size: int) -> torch.Tensor:
    """Mask [2L, 2L] of NBDiff's training layout `[noisy x_t ; clean x_0]`, blocks of `block_size`
    counted from position 0 (a partial last block is allowed). True = may attend."""
    if length < 1 or block_size < 1:
        raise ValueError(f"length and block_size must be >= 1, got {length} and {block_size}")
    blocks = torch.arange(length) // block_size
    return layout_mask(blocks, blocks)


def padded_length(n: int, block_size: int) -> int:
    """The smallest multiple of the block size that holds n tokens (padding, never truncation)."""
    return -(-n // block_size) * block_size


def stratified_block_times(n_blocks: int, generator: torch.Generator | None = None,
                           min_rate: float = 1e-3) -> torch.Tensor:
    """One mask ratio per block, t_k = (u_k + k)/N permuted: the N ratios cover (0, 1) evenly, so a
    sample always mixes lightly and heavily masked blocks (BARD's `_sample_block_times`)."""
    u = torch.rand(n_blocks, generator=generator).clamp(min=min_rate)
    t = (u + torch.arange(n_blocks)) / n_blocks
    return t[torch.randperm(n_blocks, generator=generator)].clamp(min_rate, 1.0)


def _padded_response(response: torch.Tensor, block_size: int, eos_id: int, generator: torch.Generator | None,
                     min_mask_rate: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(response padded with EOS to a multiple of B, each token's block index, each token's mask ratio)."""
    r0 = len(response)
    r = padded_length(r0, block_size)
    padded = torch.cat([response, torch.full((r - r0,), eos_id)])
    local = torch.arange(r) // block_size
    return padded, local, stratified_block_times(r // block_size, generator, min_mask_rate)[local]


@dataclass
class DiffusionBatch:
    """One padded training batch; targets are placed at the position whose output predicts them."""

    input_ids: torch.Tensor  # [S, T]
    position_ids: torch.Tensor  # [S, T]
    mask: torch.Tensor  # [S, 1, T, T] bool
    mdm_targets: torch.Tensor  # [S, T], IGNORE where no masked token is predicted
    mdm_weights: torch.Tensor  # [S, T]: 1/(t·R_s)
    ar_targets: torch.Tensor  # [S, T]
    ar_weights: torch.Tensor  # [S, T]: 1/(#AR targets of the sample)

    def to(self, device: torch.device | str) -> DiffusionBatch:
        return DiffusionBatch(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))


def _stack(rows: list[dict], pad_id: int) -> DiffusionBatch:
    width = max(len(r["ids"]) for r in rows)
    s = len(rows)
    ids = torch.full((s, width), pad_id, dtype=torch.long)
    pos = torch.zeros((s, width), dtype=torch.long)
    # Padding queries see only themselves (no empty softmax row); no real query sees padding.
    mask = torch.eye(width, dtype=torch.bool).repeat(s, 1, 1)
    fields = {k: torch.full((s, width), IGNORE, dtype=torch.long) for k in ("mdm_targets", "ar_targets")}
    weights = {k: torch.zeros((s, width)) for k in ("mdm_weights", "ar_weights")}
    for i, r in enumerate(rows):
        n = len(r["ids"])
        ids[i, :n], pos[i, :n], mask[i, :n, :n] = r["ids"], r["pos"], r["mask"]
        for k in fields:
            fields[k][i, :n] = r[k]
        for k in weights:
            weights[k][i, :n] = r[k]
    return DiffusionBatch(ids, pos, mask[:, None], fields["mdm_targets"], weights["mdm_weights"],
                          fields["ar_targets"], weights["ar_weights"])


def nbdiff_batch(samples: Sequence[tuple[Sequence[int], Sequence[int]]], block_size: int, mask_id: int, eos_id: int,
                 generator: torch.Generator | None = None, min_mask_rate: float = 1e-3,
                 padding_weight: float = 1.0, pad_id: int | None = None) -> DiffusionBatch:
    """Noise and lay out (prompt, response) pairs as `[noisy response ; clean prompt+response]`.

    The response is padded with EOS to a multiple of the block size and the padding is supervised
    (times `padding_weight`; BARD halves it), so the model learns to stop inside a block.
    """
    rows = []
    for prompt, response in samples:
        prompt, response = torch.as_tensor(list(prompt)), torch.as_tensor(list(response))
        if len(prompt) == 0 or len(response) == 0:
            raise ValueError("every sample needs a prompt (or a document-start token) and a response")
        resp, local, t = _padded_response(response, block_size, eos_id, generator, min_mask_rate)
        p, r = len(prompt), len(resp)
        pad_w = torch.ones(r)
        pad_w[len(response):] = padding_weight
        first = torch.arange(r) % block_size == 0
        masked = (torch.rand(r, generator=generator) <= t) & ~first
        noisy = torch.where(masked, torch.full_like(resp, mask_id), resp)

        clean_blocks = torch.cat([torch.zeros(p, dtype=torch.long), 1 + local])
        ids = torch.cat([noisy, prompt, resp])
        pos = torch.cat([p + torch.arange(r), torch.arange(p + r)])
        mdm_t = torch.full((r + p + r,), IGNORE, dtype=torch.long)
        mdm_w = torch.zeros(r + p + r)
        # Shift: masked token j (never block-first) is predicted by noisy position j-1, same block.
        hit = masked.nonzero().squeeze(-1)
        mdm_t[hit - 1] = resp[hit]
        mdm_w[hit - 1] = pad_w[hit] / (t[hit] * r)
        ar_t = torch.full_like(mdm_t, IGNORE)
        ar_w = torch.zeros_like(mdm_w)
        # Clean stream, next-token: response token j is predicted by clean position p+j-1.
        ar_t[r + p - 1: r + p + r - 1] = resp
        ar_w[r + p - 1: r + p + r - 1] = pad_w / pad_w.sum()
        rows.append(dict(ids=ids, pos=pos, mask=layout_mask(1 + local, clean_blocks), mdm_targets=mdm_t,
                         mdm_weights=mdm_w, ar_targets=ar_t, ar_weights=ar_w))
    return _stack(rows, eos_id if pad_id is None else pad_id)


def naive_transplant_batch(samples: Sequence[tuple[Sequence[int], Sequence[int]]], block_size: int, mask_id: int,
                           eos_id: int, generator: torch.Generator | None = None, min_mask_rate: float = 1e-3,
                           pad_id: int | None = None) -> DiffusionBatch:
    """The baseline NBDiff is measured against: `[prompt ; noisy response]` with full bidirectional
    attention over the whole context, every response token maskable, shifted MDM loss only (no clean
    stream, no L_AR, one fixed block size for the noise)."""
    rows = []
    for prompt, response in samples:
        prompt, response = torch.as_tensor(list(prompt)), torch.as_tensor(list(response))
        resp, _, t = _padded_response(response, block_size, eos_id, generator, min_mask_rate)
        p, r = len(prompt), len(resp)
        masked = torch.rand(r, generator=generator) <= t
        ids = torch.cat([prompt, torch.where(masked, torch.full_like(resp, mask_id), resp)])
        mdm_t = torch.full((p + r,), IGNORE, dtype=torch.long)
        mdm_w = torch.zeros(p + r)
        hit = masked.nonzero().squeeze(-1)
        mdm_t[p + hit - 1] = resp[hit]
        mdm_w[p + hit - 1] = 1.0 / (t[hit] * r)
        rows.append(dict(ids=ids, pos=torch.arange(p + r), mask=torch.ones(p + r, p + r, dtype=torch.bool),
                         mdm_targets=mdm_t, mdm_weights=mdm_w, ar_targets=torch.full_like(mdm_t, IGNORE),
                         ar_weights=torch.zeros(p + r)))
    return _stack(rows, eos_id if pad_id is None else pad_id)


def weighted_token_loss(hidden: torch.Tensor, lm_head: torch.nn.Module, targets: torch.Tensor,
                        weights: torch.Tensor) -> torch.Tensor:
    """Σ weight·CE over supervised positions, divided by the number of samples.

    Only supervised positions go through the LM head: on a 49k vocabulary it is the largest matmul.
    """
    keep = targets != IGNORE
    if not bool(keep.any()):
        return hidden.sum() * 0.0
    logits = lm_head(hidden[keep]).float()
    ce = F.cross_entropy(logits, targets[keep], reduction="none")
    return (ce * weights[keep]).sum() / targets.shape[0]


def diffusion_loss(model: torch.nn.Module, batch: DiffusionBatch, ar_weight: float
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L = L_MDM + λ·L_AR for one `DiffusionBatch` through a `pipelines.nn.Decoder`."""
    _, hidden = model(batch.input_ids, position_ids=batch.position_ids, mask=batch.mask, return_hidden=True,
                      last_logits_only=True)
    mdm = weighted_token_loss(hidden, model.lm_head, batch.mdm_targets, batch.mdm_weights)
    ar = weighted_token_loss(hidden, model.lm_head, batch.ar_targets, batch.ar_weights)
    total = mdm + ar_weight * ar if ar_weight else mdm
    return total, {"mdm": mdm.detach(), "ar": ar.detach()}
