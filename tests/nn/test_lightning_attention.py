"""Lightning Attention-2 against the quadratic oracle [(QKᵀ)⊙M]V, its recurrent form and itself."""

import math

import pytest
import torch

from pipelines.nn.lightning_attention import (
    alibi_log_decay,
    lightning_attention,
    lightning_attention_step,
    tnl_paper_log_decay,
)

B, H, D, E = 2, 3, 8, 6


def oracle(q, k, v, s=None, initial=None):
    """Output and final state by the definition, in fp64: o_t = Σ_{u≤t} λ^{t−u}(q_t·k_u)v_u + λ^{t+1} q_t·S_0."""
    q, k, v = q.double(), k.double(), v.double()
    n = q.shape[-2]
    i = torch.arange(n, dtype=torch.float64)
    lam_log = torch.zeros(q.shape[1], dtype=torch.float64) if s is None else s.double()
    dist = i[:, None] - i[None, :]
    mask = torch.exp(-lam_log.view(-1, 1, 1) * dist.clamp(min=0)) * (dist >= 0)
    out = ((q @ k.transpose(-1, -2)) * mask) @ v
    k_weight = torch.exp(-lam_log.view(-1, 1) * (n - 1 - i))[None, :, :, None]
    state = (k * k_weight).transpose(-1, -2) @ v
    if initial is not None:
        out = out + (q * torch.exp(-lam_log.view(-1, 1) * (i + 1))[None, :, :, None]) @ initial.double()
        state = state + torch.exp(-lam_log * n).view(1, -1, 1, 1) * initial.double()
    return out, state


def inputs(n, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(B, H, n, D, generator=g, dtype=dtype) / 2 for _ in range(2))
    v = torch.randn(B, H, n, E, generator=g, dtype=dtype)
    initial = torch.randn(B, H, D, E, generator=g, dtype=dtype)
    return q, k, v, initial


DECAYS = {"none": None, "alibi": alibi_log_decay(H), "paper": tnl_paper_log_decay(H, 1, 4)}


@pytest.mark.parametrize("n", [64, 100, 7])  # a multiple of the block, a partial last block, shorter than one
@pytest.mark.parametrize("decay", list(DECAYS))
@pytest.mark.parametrize("with_state", [False, True])
def test_fp64_outputs_gradients_and_state_match_the_oracle(n, decay, with_state):
    q, k, v, initial = inputs(n)
    initial = initial if with_state else None
    leaves = [x.requires_grad_() for x in (q, k, v) + ((initial,) if with_state else ())]
    s = DECAYS[decay]
    out, state = lightning_attention(q, k, v, s, block_size=32, initial_state=initial, return_state=True)
    ref_out, ref_state = oracle(q, k, v, s, initial)
    assert (out - ref_out).abs().max() <= 1e-10
    assert (state - ref_state).abs().max() <= 1e-10
    g_out, g_state = torch.randn_like(out), torch.randn_like(state)
    ours = torch.autograd.grad((out * g_out).sum() + (state * g_state).sum(), leaves)
    ref = torch.autograd.grad((ref_out * g_out).sum() + (ref_state * g_state).sum(), leaves)
    for a, b in zip(ours, ref, strict=True):
        assert (a - b).abs().max() <= 1e-10


def rel_rms(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt())


@pytest.mark.parametrize("n", [128, 200])
def test_fp32_relative_rms(n):
    q, k, v, initial = inputs(n, torch.float32)
    s = DECAYS["alibi"]
    leaves = [x.requires_grad_() for x in (q, k, v)]
    out = lightning_attention(q, k, v, s, block_size=64, initial_state=initial)
    assert out.dtype == torch.float32
    g = torch.randn_like(out)
    grads = torch.autograd.grad((out * g).sum(), leaves)
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    ref, _ = oracle(q64, k64, v64, s, initial)
    ref_grads = torch.autograd.grad((ref * g.double()).sum(), (q64, k64, v64))
    assert rel_rms(out, ref) <= 1e-5
    for a, b in zip(grads, ref_grads, strict=True):
        assert rel_rms(a, b) <= 1e-5


def test_gradcheck_small():
    q, k, v, initial = (x[:1, :2] for x in inputs(5))
    s = DECAYS["alibi"][:2]

    def f(q, k, v, initial):
        return lightning_attention(q, k, v, s, block_size=2, initial_state=initial, return_state=True)

    assert torch.autograd.gradcheck(f, tuple(x.requires_grad_() for x in (q, k, v, initial)))


def test_chunked_calls_carrying_the_state_equal_one_call():
    q, k, v, _ = inputs(150)
    s = DECAYS["alibi"]
    whole, whole_state = lightning_attention(q, k, v, s, block_size=32, return_state=True)
    state, parts = None, []
    for start, stop in ((0, 40), (40, 41), (41, 150)):
        out, state = lightning_attention(q[:, :, start:stop], k[:, :, start:stop], v[:, :, start:stop], s,
                                         block_size=32, initial_state=state, return_state=True)
        parts.append(out)
    assert (torch.cat(parts, dim=2) - whole).abs().max() <= 1e-10
    assert (state - whole_state).abs().max() <= 1e-10


def test_decode_steps_equal_the_parallel_form():
    q, k, v, initial = inputs(20)
    s = DECAYS["paper"]
    parallel, final = lightning_attention(q, k, v, s, initial_state=initial, return_state=True)
    state, steps = initial, []
    for t in range(20):
        out, state = lightning_attention_step(q[:, :, t], k[:, :, t], v[:, :, t], state, s)
        steps.append(out)
    assert (torch.stack(steps, dim=2) - parallel).abs().max() <= 1e-10
    assert (state - final).abs().max() <= 1e-10


def test_bf16_inputs_accumulate_in_fp32():
    q, k, v, _ = inputs(96, torch.float32)
    out, state = lightning_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), DECAYS["alibi"], return_state=True)
    assert out.dtype == torch.bfloat16 and state.dtype == torch.float32
    ref, _ = oracle(q.bfloat16(), k.bfloat16(), v.bfloat16(), DECAYS["alibi"])
    assert rel_rms(out, ref) < 1e-2  # only the final cast to bf16 is lossy


def test_decay_conventions_match_the_published_slopes():
    alibi = torch.exp(-alibi_log_decay(8, layer=0, n_layers=24))
    assert [round(float(x), 2) for x in alibi[:3]] == [0.61, 0.78, 0.88] and round(float(alibi[-1]), 3) == 0.996
    paper = torch.exp(-tnl_paper_log_decay(8, layer=0, n_layers=24))
    assert float(paper[0]) == 1.0 and round(float(paper[1]), 2) == 0.37 and float(paper[-1]) == pytest.approx(
        math.exp(-7), rel=1e-9)
    assert (alibi_log_decay(8, 23, 24) < alibi_log_decay(8, 0, 24)).all()  # deeper layers decay less


def test_bad_arguments_are_named():
    q, k, v, _ = inputs(8)
    with pytest.raises(ValueError, match="log_decay must be >= 0"):
        lightning_attention(q, k, v, -torch.ones(H))
    with pytest.raises(ValueError, match="one value per head"):
        lightning_attention(q, k, v, torch.ones(H + 1))
    with pytest.raises(ValueError, match="initial_state"):
        lightning_attention(q, k, v, initial_state=torch.zeros(B, H, D, E + 1, dtype=q.dtype))
    with pytest.raises(ValueError, match="expected q, k"):
        lightning_attention(q, k[..., :4], v)


def test_stable_name_is_the_function():
    import pipelines.nn

    q, k, v, _ = inputs(10)
    assert torch.equal(pipelines.nn.lightning_attention(q, k, v, block_size=4), lightning_attention(q, k, v, block_size=4))
