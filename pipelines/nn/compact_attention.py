"""CompactAttention: chunked prefill that attends only to selected pages of the KV cache.

For each prefill chunk (C queries at positions past … past+C−1):
1. a pluggable selector scores key blocks (pages of 64 tokens) per query block and head and
   returns a 2D block mask; the default is FlashPrefill's training-free rule (mean-pooled keys,
   causal block mass, keep ≥ α·max, sink blocks, a local window);
2. the mask is unioned over the chunk's query blocks and over the query heads of each GQA group
   (optionally sub-groups), the last few blocks are forced on, and the current chunk is always open;
3. the union becomes a CSR block table per (batch, KV group[, sub-group]): `indptr`, and `indices`
   = global page ids into the head-major cache [B, Hkv, L, D] viewed as pages [B·Hkv·L/64, 64, D];
4. attention runs over maximal runs of consecutive selected pages, each a zero-copy slice of the
   cache, and merges the partial results by log-sum-exp.

The current chunk's own keys form the last run and are attended causally (a C×C causal tile), so
the result equals dense attention under the token-expanded block mask.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

PAGE = 64


def _flash(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float):
    """(output, logsumexp) of softmax attention; PyTorch's CPU flash kernel returns both."""
    if q.device.type == "cpu":
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, causal, scale=scale)
        return out, lse
    scores = (q @ k.transpose(-1, -2)).float() * scale  # other devices: the same maths, unfused
    if causal:
        scores = scores.masked_fill(~torch.ones(scores.shape[-2:], dtype=torch.bool, device=q.device).tril(),
                                    float("-inf"))
    lse = scores.logsumexp(-1)
    return ((scores - lse[..., None]).exp().to(v.dtype) @ v), lse


def merge_partials(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Combine attention over disjoint key sets: weights exp(lse_r − lse_total)."""
    outs = torch.stack([p[0] for p in parts])
    lses = torch.stack([p[1] for p in parts])  # [R, ..., Lq]
    weights = torch.softmax(lses, dim=0)
    return (weights[..., None].to(outs.dtype) * outs).sum(0)


# ------------------------------------------------------------------------------ selection


def flashprefill_block_mask(q: torch.Tensor, k: torch.Tensor, past: int, alpha: float = 0.05, sink_blocks: int = 2,
                            window_blocks: int = 4, block: int = PAGE) -> torch.Tensor:
    """FlashPrefill-style training-free selector.

    q [B, H, C, D] (chunk queries), k [B, Hkv, past+C, D] (all keys so far). Returns a bool mask
    [B, H, nQB, nKB]: query block i of the chunk may use key block j.
    """
    b, h, c, d = q.shape
    hkv, s = k.shape[1], k.shape[2]
    n_kb, n_qb = -(-s // block), -(-c // block)
    pad_k = n_kb * block - s
    kp = torch.nn.functional.pad(k, (0, 0, 0, pad_k)).view(b, hkv, n_kb, block, d).float()
    dev = q.device
    counts = torch.full((n_kb,), float(block), device=dev)
    counts[-1] = block - pad_k
    k_pooled = kp.sum(3) / counts[:, None]  # mean over each block's real tokens
    qp = torch.nn.functional.pad(q, (0, 0, 0, n_qb * block - c)).view(b, h, n_qb, block, d).float()
    q_counts = torch.full((n_qb,), float(block), device=dev)
    q_counts[-1] = c - (n_qb - 1) * block
    q_pooled = qp.sum(3) / q_counts[:, None]
    k_pooled = k_pooled.repeat_interleave(h // hkv, dim=1)
    scores = q_pooled @ k_pooled.transpose(-1, -2) / math.sqrt(d)  # [B, H, nQB, nKB]
    # A query block's last token sits at absolute position past + (i+1)·block − 1 (clipped to the chunk).
    q_last = torch.clamp(past + (torch.arange(n_qb, device=dev) + 1) * block - 1, max=past + c - 1)
    q_block = q_last // block
    key_block = torch.arange(n_kb, device=dev)
    causal = key_block[None, :] <= q_block[:, None]  # [nQB, nKB]
    mass = torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)
    keep = mass >= alpha * mass.amax(-1, keepdim=True)
    keep |= key_block[None, :] < sink_blocks
    keep |= (key_block[None, :] > q_block[:, None] - window_blocks)
    return keep & causal


@dataclass
class BlockTable:
    """CSR over rows b·Hkv·S + g·S + s (S sub-groups per KV group): pages each row attends to."""

    indptr: torch.Tensor  # [rows + 1]
    indices: torch.Tensor  # global page ids, ascending within a row
    rows_shape: tuple[int, int, int]  # (B, Hkv, sub-groups)
    pages_per_row: int  # L / PAGE of the cache arena
    density_before_union: float = 0.0
    density_after_union: float = 0.0

    def row_pages(self, row: int) -> torch.Tensor:
        """Local page numbers (within the row's head) of one row."""
        return self.indices[self.indptr[row]:self.indptr[row + 1]] - row // self.rows_shape[2] * self.pages_per_row


def block_union(mask: torch.Tensor, n_kv_heads: int, past: int, chunk: int, pages_per_row: int,
                keep_recent: int = 2, subgroups: int = 1, block: int = PAGE) -> BlockTable:
    """Union a [B, H, nQB, nKB] block mask into a CSR block table over the paged cache."""
    mask = mask.cpu()  # the table is small and is walked from Python
    b, h, _, n_kb = mask.shape
    group = h // n_kv_heads
    if group % subgroups:
        raise ValueError(f"{group} query heads per KV group do not split into {subgroups} sub-groups")
    causal_blocks = -(-(past + chunk) // block)  # blocks holding any key up to the chunk's end
    union = mask.any(dim=2)  # OR over the chunk's query blocks → [B, H, nKB]
    first_chunk_block = past // block
    union[..., max(causal_blocks - keep_recent, 0):causal_blocks] = True  # keep recent
    union[..., first_chunk_block:causal_blocks] = True  # the current chunk is always open
    union = union.view(b, n_kv_heads, subgroups, group // subgroups, n_kb).any(dim=3)  # OR over the group's heads
    valid = union[..., :causal_blocks]
    counts = valid.sum(-1).reshape(-1)
    indptr = torch.zeros(counts.numel() + 1, dtype=torch.long)
    indptr[1:] = counts.cumsum(0)
    head_row = torch.arange(b * n_kv_heads).view(b, n_kv_heads, 1).expand(b, n_kv_heads, subgroups)
    page_ids = head_row[..., None] * pages_per_row + torch.arange(causal_blocks)
    indices = page_ids[valid]  # row-major: ascending within each row
    mask_causal = mask[..., :causal_blocks]
    return BlockTable(indptr, indices, (b, n_kv_heads, subgroups), pages_per_row,
                      density_before_union=float(mask_causal.float().mean()),
                      density_after_union=float(valid.float().mean()))


def page_runs(pages: torch.Tensor) -> list[tuple[int, int]]:
    """Maximal runs [first, last] of consecutive page numbers."""
    pages = pages.tolist()
    runs, start = [], None
    for i, p in enumerate(pages):
        if start is None:
            start = p
        if i + 1 == len(pages) or pages[i + 1] != p + 1:
            runs.append((start, p))
            start = None
    return runs


# ------------------------------------------------------------------------------ attention


def paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, past: int,
                    table: BlockTable, block: int = PAGE, execution: str = "runs") -> torch.Tensor:
    """Chunk queries q [B, H, C, D] over the pages in `table` of the head-major cache
    k/v_cache [B, Hkv, ≥past+C, D] (the chunk's keys already written). Returns [B, H, C, D].

    execution="runs": one kernel call per run of consecutive pages, each a zero-copy slice of the
    cache (the paper's zero-copy idea; without a paged kernel on CPU, each call re-reads the
    queries, so scattered pages cost extra). execution="gather": copy the selected pages into one
    contiguous buffer and make a single call — a deviation from zero-copy, measured in the benchmark.
    """
    if execution not in ("runs", "gather"):
        raise ValueError(f"execution must be 'runs' or 'gather', got {execution!r}")
    b, h, c, d = q.shape
    hkv = k_cache.shape[1]
    _, _, subgroups = table.rows_shape
    per_sub = h // hkv // subgroups
    scale = 1.0 / math.sqrt(d)
    out = torch.empty_like(q)
    for row in range(b * hkv * subgroups):
        bi, rest = divmod(row, hkv * subgroups)
        g, s = divmod(rest, subgroups)
        heads = slice(g * h // hkv + s * per_sub, g * h // hkv + (s + 1) * per_sub)
        q_rows = q[bi:bi + 1, heads]  # [1, Gs, C, D]
        q_flat = q_rows.reshape(1, 1, per_sub * c, d)  # every query of the sub-group shares these keys
        parts = []
        if execution == "gather":
            pages = table.row_pages(row)
            tokens = (pages[:, None] * block + torch.arange(block)).reshape(-1)
            tokens = tokens[tokens < past].to(k_cache.device)
            if tokens.numel():
                k_sel = k_cache[bi, g].index_select(0, tokens)[None, None]
                v_sel = v_cache[bi, g].index_select(0, tokens)[None, None]
                o, lse = _flash(q_flat, k_sel, v_sel, False, scale)
                parts.append((o.view(1, per_sub, c, d), lse.view(1, per_sub, c)))
        for first, last in page_runs(table.row_pages(row)) if execution == "runs" else ():
            start, end = first * block, min((last + 1) * block, past)
            if start >= end:  # this run lies entirely in the current chunk: handled below
                continue
            k_run = k_cache[bi:bi + 1, g:g + 1, start:end]  # a zero-copy slice of the cache
            v_run = v_cache[bi:bi + 1, g:g + 1, start:end]
            o, lse = _flash(q_flat, k_run, v_run, False, scale)
            parts.append((o.view(1, per_sub, c, d), lse.view(1, per_sub, c)))
        # The chunk's own keys: a causal C×C tile (always selected).
        k_chunk = k_cache[bi:bi + 1, g:g + 1, past:past + c].expand(1, per_sub, c, d)
        v_chunk = v_cache[bi:bi + 1, g:g + 1, past:past + c].expand(1, per_sub, c, d)
        parts.append(_flash(q_rows, k_chunk, v_chunk, True, scale))
        out[bi:bi + 1, heads] = merge_partials(parts) if len(parts) > 1 else parts[0][0]
    return out


Selector = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


@dataclass
class CompactAttention:
    """Attention backend for the decoder's chunked prefill (see `Decoder.forward(attention=...)`).

    With `sparse=False` it is the dense chunked-prefill path over the same kernel (every page).
    """

    alpha: float = 0.05
    sink_blocks: int = 2
    window_blocks: int = 4
    keep_recent: int = 2
    subgroups: int = 1
    sparse: bool = True
    execution: str = "runs"  # or "gather" (see paged_attention)
    selector: Selector | None = None
    densities: list[tuple[float, float]] = field(default_factory=list)  # (before, after) union, per call

    def __call__(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, past: int) -> torch.Tensor:
        c = q.shape[2]
        hkv, capacity = k_cache.shape[1], k_cache.shape[2]
        if capacity % PAGE:
            raise ValueError(f"the KV cache length ({capacity}) must be a multiple of the page size {PAGE}")
        k_seen = k_cache[:, :, : past + c]
        if self.sparse:
            select = self.selector or (lambda qq, kk, pp: flashprefill_block_mask(
                qq, kk, pp, self.alpha, self.sink_blocks, self.window_blocks))
            mask = select(q, k_seen, past)
        else:
            n_kb = -(-(past + c) // PAGE)
            mask = torch.ones(q.shape[0], q.shape[1], -(-c // PAGE), n_kb, dtype=torch.bool)
        table = block_union(mask, hkv, past, c, capacity // PAGE, self.keep_recent, self.subgroups)
        self.densities.append((table.density_before_union, table.density_after_union))
        return paged_attention(q, k_cache, v_cache, past, table, execution=self.execution)
