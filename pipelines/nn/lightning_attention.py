"""Lightning Attention-2: causal linear attention with per-head decay, tiled into blocks.

Per head, o_t = Σ_{s≤t} λ^{t−s} (q_t·k_s) v_s with λ = exp(−s_h) ≤ 1, i.e. O = [(QKᵀ)⊙M]V with
M_ij = λ^{i−j} for i ≥ j (no softmax, no normaliser, no 1/√d, as in the OpenNLPLab code). The
sequence is cut into blocks of B tokens:
- intra-block: the masked, decayed quadratic form, for all blocks at once (one batched matmul);
- inter-block: a running state KV ∈ R^{d×e}; a token at offset j of a block reads λ^{j+1}·q·KV, and
  a block of m tokens updates KV ← λ^m·KV + Σ_j λ^{m−1−j} k_jᵀ v_j. Only these updates loop.
A partial last block (m < B) uses λ^m, so the returned state is exact (zero-padding would over-decay
it by λ^pad). Decay powers are always λ^(non-negative), never Λ⁻¹, which overflows.

The backward is the paper's Algorithm 2 as a custom autograd.Function: a forward sweep that rebuilds
the states for dQ and a reverse sweep carrying dKV for dK, dV (and the initial state's gradient),
not autograd through the loop. Everything accumulates in fp32 (fp64 stays fp64); the output has
the inputs' dtype, the state is fp32/fp64. The decay is a constant (a learnable λ gave NaNs in the
TransNormerLLM ablations), so it gets no gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor


def alibi_log_decay(n_heads: int, layer: int = 0, n_layers: int = 1) -> Tensor:
    """s_h of the released TransNormerLLM checkpoints (OpenNLPLab `_build_slope_tensor`): ALiBi slopes
    2^(−8(h+1)/H), scaled by (1 − l/(L−1) + 1e-5) so that deeper layers decay less."""
    slopes = torch.tensor([2.0 ** (-8.0 * (h + 1) / n_heads) for h in range(n_heads)], dtype=torch.float64)
    depth = layer / (n_layers - 1) if n_layers > 1 else 0.0
    return slopes * (1.0 - depth + 1e-5)


def tnl_paper_log_decay(n_heads: int, layer: int = 0, n_layers: int = 1) -> Tensor:
    """s_h of the TransNormerLLM paper (eq. 2) and FLA: (8h/H)(1 − l/L), h = 0…H−1 (head 0: no decay)."""
    return torch.tensor([8.0 * h / n_heads * (1.0 - layer / n_layers) for h in range(n_heads)], dtype=torch.float64)


def _decay_powers(s: Tensor | None, n_heads: int, length: int, dtype, device) -> Tensor:
    """λ^j for j = 0…length as [h, length+1] (all ones without decay)."""
    j = torch.arange(length + 1, dtype=dtype, device=device)
    if s is None:
        return torch.ones(n_heads, length + 1, dtype=dtype, device=device)
    return torch.exp(-s.to(dtype=dtype, device=device)[:, None] * j)


def _intra_mask(powers: Tensor, size: int) -> Tensor:
    """M [h, size, size]: λ^{i−j} on and below the diagonal, 0 above."""
    i = torch.arange(size, device=powers.device)
    dist = (i[:, None] - i[None, :]).clamp(min=0)
    return powers[:, dist] * (i[:, None] >= i[None, :])


def _blocks(n: int, block_size: int) -> list[tuple[int, int]]:
    return [(start, min(start + block_size, n)) for start in range(0, n, block_size)]


def _split(x: Tensor, block_size: int) -> tuple[Tensor | None, Tensor | None]:
    """The full blocks as [b, h, T, B, ·] and the partial tail [b, h, m, ·] (either may be None)."""
    n = x.shape[2]
    full = n // block_size * block_size
    body = x[:, :, :full].unflatten(2, (full // block_size, block_size)) if full else None
    tail = x[:, :, full:] if full < n else None
    return body, tail


def _states(k: Tensor, v: Tensor, powers: Tensor, block_size: int, initial: Tensor) -> list[Tensor]:
    """KV before every block and after the last: [KV_0 = initial, KV_1, …, KV_T]."""
    states = [initial]
    kv = initial
    for start, stop in _blocks(k.shape[2], block_size):
        m = stop - start
        k_decay = powers[:, :m].flip(-1)  # λ^{m−1−j}, j = 0…m−1
        update = (k[:, :, start:stop] * k_decay[None, :, :, None]).transpose(-1, -2) @ v[:, :, start:stop]
        kv = powers[None, :, m, None, None] * kv + update
        states.append(kv)
    return states


def _forward(q: Tensor, k: Tensor, v: Tensor, s: Tensor | None, block_size: int, initial: Tensor
             ) -> tuple[Tensor, Tensor]:
    b, h, n, _ = q.shape
    powers = _decay_powers(s, h, block_size, q.dtype, q.device)
    out = torch.empty(b, h, n, v.shape[-1], dtype=q.dtype, device=q.device)
    # Intra-block, all full blocks in one batched product, then the partial tail.
    mask = _intra_mask(powers, block_size)
    (qb, qt), (kb, kt), (vb, vt) = (_split(x, block_size) for x in (q, k, v))
    full = n // block_size * block_size
    if qb is not None:
        scores = (qb @ kb.transpose(-1, -2)) * mask[None, :, None]
        out[:, :, :full] = (scores @ vb).flatten(2, 3)
    if qt is not None:
        m = n - full
        out[:, :, full:] = ((qt @ kt.transpose(-1, -2)) * mask[None, :, :m, :m]) @ vt
    # Inter-block: the states loop; each block then reads its incoming state in one product.
    states = _states(k, v, powers, block_size, initial)
    q_decay = powers[:, 1:]  # λ^{j+1}
    if qb is not None:
        incoming = torch.stack(states[: full // block_size], dim=2)  # [b, h, T, d, e]
        out[:, :, :full] += ((qb * q_decay[None, :, None, :, None]) @ incoming).flatten(2, 3)
    if qt is not None:
        m = n - full
        out[:, :, full:] += (qt * q_decay[None, :, :m, None]) @ states[-2]
    return out, states[-1]


def _backward(q: Tensor, k: Tensor, v: Tensor, s: Tensor | None, block_size: int, initial: Tensor,
              d_out: Tensor, d_state: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    h = q.shape[1]
    powers = _decay_powers(s, h, block_size, q.dtype, q.device)
    mask = _intra_mask(powers, block_size)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    blocks = _blocks(q.shape[2], block_size)
    states = _states(k, v, powers, block_size, initial)  # forward sweep (recomputed, as in Alg. 2)
    for i, (start, stop) in enumerate(blocks):
        m = stop - start
        qi, ki, vi, doi = (x[:, :, start:stop] for x in (q, k, v, d_out))
        mi = mask[None, :, :m, :m]
        d_scores = (doi @ vi.transpose(-1, -2)) * mi
        dq[:, :, start:stop] = d_scores @ ki + (doi @ states[i].transpose(-1, -2)) * powers[None, :, 1:m + 1, None]
        dk[:, :, start:stop] = d_scores.transpose(-1, -2) @ qi
        dv[:, :, start:stop] = ((qi @ ki.transpose(-1, -2)) * mi).transpose(-1, -2) @ doi
    d_kv = d_state  # dL/dKV after the current block, carried backwards
    for start, stop in reversed(blocks):
        m = stop - start
        qi, ki, vi, doi = (x[:, :, start:stop] for x in (q, k, v, d_out))
        k_decay = powers[None, :, :m, None].flip(-2)  # λ^{m−1−j}
        dk[:, :, start:stop] += k_decay * (vi @ d_kv.transpose(-1, -2))
        dv[:, :, start:stop] += k_decay * (ki @ d_kv)
        d_kv = powers[None, :, m, None, None] * d_kv + (qi * powers[None, :, 1:m + 1, None]).transpose(-1, -2) @ doi
    return dq, dk, dv, d_kv


class _LightningAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, s, initial, block_size):
        out, state = _forward(q, k, v, s, block_size, initial)
        ctx.save_for_backward(q, k, v, s if s is not None else torch.empty(0), initial)
        ctx.has_decay, ctx.block_size = s is not None, block_size
        return out, state

    @staticmethod
    def backward(ctx, d_out, d_state):
        q, k, v, s, initial = ctx.saved_tensors
        d_out = torch.zeros_like(q[..., :1].expand(*q.shape[:-1], v.shape[-1])) if d_out is None else d_out
        d_state = torch.zeros_like(initial) if d_state is None else d_state
        dq, dk, dv, d_initial = _backward(q, k, v, s if ctx.has_decay else None, ctx.block_size, initial,
                                          d_out.to(q.dtype), d_state.to(q.dtype))
        return dq, dk, dv, None, d_initial, None


def lightning_attention(q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor | None = None, block_size: int = 64,
                        initial_state: Tensor | None = None, return_state: bool = False
                        ) -> Tensor | tuple[Tensor, Tensor]:
    """Causal linear attention with decay λ_h = exp(−log_decay[h]), tiled in blocks of `block_size`.

    q, k: [b, h, n, d]; v: [b, h, n, e]; log_decay: [h] (s ≥ 0; None = no decay); initial_state:
    [b, h, d, e], the state carried from earlier tokens. Returns o [b, h, n, e] in the inputs' dtype
    and, with `return_state`, the state after the last token (fp32, or fp64 for fp64 inputs), which
    continues the sequence in a later call or in `lightning_attention_step`.
    """
    if q.dim() != 4 or k.shape != q.shape or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"expected q, k [b, h, n, d] and v [b, h, n, e]; got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    b, h, _, d = q.shape
    e = v.shape[-1]
    if log_decay is not None:
        log_decay = torch.as_tensor(log_decay).to(device=q.device, dtype=compute).reshape(-1)
        if log_decay.numel() != h:
            raise ValueError(f"log_decay needs one value per head ({h}), got {log_decay.numel()}")
        if bool((log_decay < 0).any()):
            raise ValueError("log_decay must be >= 0 (λ = exp(−s) ≤ 1); a growing decay diverges")
    if initial_state is None:
        initial_state = torch.zeros(b, h, d, e, dtype=compute, device=q.device)
    elif initial_state.shape != (b, h, d, e):
        raise ValueError(f"initial_state must be [b, h, d, e] = {(b, h, d, e)}, got {tuple(initial_state.shape)}")
    out, state = _LightningAttention.apply(q.to(compute), k.to(compute), v.to(compute), log_decay,
                                           initial_state.to(compute), block_size)
    out = out.to(q.dtype)
    return (out, state) if return_state else out


def lightning_attention_step(q: Tensor, k: Tensor, v: Tensor, state: Tensor, log_decay: Tensor | None = None
                             ) -> tuple[Tensor, Tensor]:
    """One decoding step with the recurrent form: KV ← λ·KV + kᵀv, o = q·KV.

    q, k: [b, h, d]; v: [b, h, e]; state: [b, h, d, e]. Returns (o [b, h, e], the new state);
    memory per token is constant.
    """
    compute = state.dtype
    kv = state
    if log_decay is not None:
        kv = kv * torch.exp(-torch.as_tensor(log_decay, dtype=compute, device=state.device)).view(1, -1, 1, 1)
    kv = kv + k.to(compute)[..., :, None] * v.to(compute)[..., None, :]
    out = (q.to(compute)[..., None, :] @ kv).squeeze(-2)
    return out.to(q.dtype), kv
