import math

import pytest
import torch

from pipelines.nn import (
    Attention,
    RMSNorm,
    TransformerBlock,
    TransformerConfig,
    VisionEncoder,
    apply_rope,
    rope_cos_sin,
)


def naive_attention(attn: Attention, x, mask, positions, base=10000.0):
    """Loop-over-heads reference: explicit K/V head sharing, RoPE by complex rotation, masked softmax."""
    b, t, _ = x.shape
    h, kvh, d = attn.n_heads, attn.n_kv_heads, attn.head_dim
    q = attn.q_proj(x).view(b, t, h, d)
    k = attn.k_proj(x).view(b, t, kvh, d)
    v = attn.v_proj(x).view(b, t, kvh, d)
    freqs = 1.0 / base ** (torch.arange(0, d, 2).float() / d)
    angle = positions.float()[..., None] * freqs  # [b, t, d/2]
    rot = torch.polar(torch.ones_like(angle), angle)

    def rotate(z):  # pairs (i, i + d/2) form one complex number in the half-split layout
        zc = torch.complex(z[..., : d // 2], z[..., d // 2:]) * rot[:, :, None]
        return torch.cat([zc.real, zc.imag], dim=-1)

    q, k = rotate(q), rotate(k)
    out = torch.zeros(b, t, h, d)
    for head in range(h):
        kv = head // (h // kvh)
        scores = torch.einsum("bqd,bkd->bqk", q[:, :, head], k[:, :, kv]) / math.sqrt(d)
        scores = scores.masked_fill(~mask, float("-inf"))
        out[:, :, head] = torch.einsum("bqk,bkd->bqd", scores.softmax(-1), v[:, :, kv])
    return attn.o_proj(out.reshape(b, t, h * d))


def test_attention_matches_naive_reference_with_gqa_mask_and_positions():
    torch.manual_seed(0)
    attn = Attention(dim=32, n_heads=4, n_kv_heads=2)
    x = torch.randn(2, 6, 32)
    # An arbitrary mask (every row keeps itself) and repeated positions, as block-diffusion layouts use.
    mask = torch.rand(2, 6, 6) > 0.4
    mask |= torch.eye(6, dtype=torch.bool)
    positions = torch.tensor([[0, 1, 2, 0, 1, 2], [5, 6, 7, 8, 9, 10]])
    rope = rope_cos_sin(positions, attn.head_dim)
    ours = attn(x, mask=mask[:, None], rope=rope)
    torch.testing.assert_close(ours, naive_attention(attn, x, mask, positions), atol=1e-5, rtol=1e-5)


def test_is_causal_equals_lower_triangular_mask():
    torch.manual_seed(1)
    attn = Attention(dim=16, n_heads=2)
    x = torch.randn(1, 5, 16)
    tril = torch.ones(5, 5, dtype=torch.bool).tril()
    torch.testing.assert_close(attn(x, is_causal=True), attn(x, mask=tril))
    with pytest.raises(ValueError, match="not both"):
        attn(x, mask=tril, is_causal=True)


def test_rope_scores_depend_only_on_relative_position():
    torch.manual_seed(2)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def score(pq, pk):
        cq, sq = rope_cos_sin(torch.tensor([pq]), 8)
        ck, sk = rope_cos_sin(torch.tensor([pk]), 8)
        return (apply_rope(q, cq, sq) * apply_rope(k, ck, sk)).sum()

    torch.testing.assert_close(score(3, 1), score(10, 8))
    assert not torch.allclose(score(3, 1), score(3, 2))


def test_rope_base_is_configurable():
    c1, _ = rope_cos_sin(torch.tensor([5]), 8, base=10000.0)
    c2, _ = rope_cos_sin(torch.tensor([5]), 8, base=100.0)
    assert not torch.allclose(c1, c2)


def test_rmsnorm_formula():
    norm = RMSNorm(4, eps=1e-6)
    norm.weight.data = torch.tensor([1.0, 2.0, 3.0, 4.0])
    x = torch.tensor([[1.0, -2.0, 3.0, -4.0]])
    expected = x / torch.sqrt((x**2).mean() + 1e-6) * norm.weight
    torch.testing.assert_close(norm(x), expected)


def test_block_residual_and_config_validation():
    cfg = TransformerConfig(dim=32, n_heads=4, n_kv_heads=2, hidden_dim=64)
    block = TransformerBlock(cfg)
    for p in [block.attn.o_proj.weight, block.mlp.down_proj.weight]:
        torch.nn.init.zeros_(p)
    x = torch.randn(2, 3, 32)
    torch.testing.assert_close(block(x, is_causal=True), x)  # zero output projections leave the stream alone
    with pytest.raises(ValueError, match="n_kv_heads"):
        TransformerConfig(dim=32, n_heads=4, n_kv_heads=3)


def test_vision_encoder_shapes_and_size_check():
    enc = VisionEncoder(image_size=32, patch_size=8, dim=48, n_layers=1, n_heads=4)
    tokens = enc(torch.randn(2, 3, 32, 32))
    assert tokens.shape == (2, 16, 48) and enc.pool(torch.randn(2, 3, 32, 32)).shape == (2, 48)
    with pytest.raises(ValueError, match="32x32"):
        enc(torch.randn(1, 3, 64, 64))
