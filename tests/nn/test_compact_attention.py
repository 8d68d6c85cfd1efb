import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.nn.compact_attention import (
    PAGE,
    CompactAttention,
    block_union,
    flashprefill_block_mask,
    paged_attention,
)
from pipelines.nn.decoder import Decoder, DecoderConfig
from pipelines.nn.generate import generate


@st.composite
def union_cases(draw):
    b, hkv = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    group = draw(st.sampled_from([1, 2, 4]))
    sub = draw(st.sampled_from([s for s in (1, 2, 4) if group % s == 0]))
    past_blocks, chunk_blocks = draw(st.integers(0, 6)), draw(st.integers(1, 3))
    n_kb = past_blocks + chunk_blocks
    seed = draw(st.integers(0, 10**6))
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(b, hkv * group, chunk_blocks, n_kb + draw(st.integers(0, 2)), generator=g) < 0.3
    return mask, hkv, past_blocks * PAGE, chunk_blocks * PAGE, sub, draw(st.integers(0, 3))


@settings(max_examples=200, deadline=None)
@given(union_cases())
def test_block_table_is_minimal_and_covers_the_mask(case):
    mask, hkv, past, chunk, sub, recent = case
    b, h, _, _ = mask.shape
    pages_per_row = 16
    table = block_union(mask, hkv, past, chunk, pages_per_row, keep_recent=recent, subgroups=sub)
    n_causal = (past + chunk) // PAGE
    group = h // hkv
    for bi in range(b):
        for g in range(hkv):
            for s in range(sub):
                row = (bi * hkv + g) * sub + s
                heads = range(g * group + s * group // sub, g * group + (s + 1) * group // sub)
                expected = {j for j in range(n_causal) if any(bool(mask[bi, hh, :, j].any()) for hh in heads)}
                expected |= set(range(max(n_causal - recent, 0), n_causal)) | set(range(past // PAGE, n_causal))
                got = table.row_pages(row).tolist()
                assert got == sorted(expected)  # covering, and nothing more: minimal, no duplicates
                assert all(p // pages_per_row == bi * hkv + g
                           for p in table.indices[table.indptr[row]:table.indptr[row + 1]].tolist())


def dense_reference(q, k, v, past, allowed_pages):
    """SDPA under the token-expanded block mask (per query head) and causality."""
    b, h, c, d = q.shape
    hkv, s = k.shape[1], past + c
    keys = k[:, :, :s].repeat_interleave(h // hkv, 1)
    values = v[:, :, :s].repeat_interleave(h // hkv, 1)
    token_mask = allowed_pages.repeat_interleave(PAGE, -1)[..., :s][:, :, None, :].expand(b, h, c, s).clone()
    token_mask &= (torch.arange(s)[None, :] <= (past + torch.arange(c))[:, None])
    return torch.nn.functional.scaled_dot_product_attention(q, keys, values, attn_mask=token_mask)


@pytest.mark.parametrize("execution", ["runs", "gather"])
@pytest.mark.parametrize("past", [0, 128, 320, 200])
def test_sparse_path_equals_dense_attention_under_the_mask(past, execution):
    torch.manual_seed(past)
    b, h, hkv, c, d = 1, 6, 2, 128, 16
    capacity = -(-(past + c) // PAGE) * PAGE + PAGE
    q, k, v = torch.randn(b, h, c, d), torch.randn(b, hkv, capacity, d), torch.randn(b, hkv, capacity, d)
    n_kb = -(-(past + c) // PAGE)
    mask = torch.rand(b, h, c // PAGE, n_kb) < 0.4
    table = block_union(mask, hkv, past, c, capacity // PAGE, keep_recent=1, subgroups=1)
    allowed = torch.zeros(b, h, n_kb, dtype=torch.bool)
    for row in range(b * hkv):
        allowed[0, row * (h // hkv):(row + 1) * (h // hkv), table.row_pages(row)] = True
    torch.testing.assert_close(paged_attention(q, k, v, past, table, execution=execution),
                               dense_reference(q, k, v, past, allowed),
                               atol=1e-5, rtol=1e-5)


def test_current_chunk_stays_causal():
    torch.manual_seed(1)
    q, k, v = torch.randn(1, 4, 128, 16), torch.randn(1, 2, 256, 16), torch.randn(1, 2, 256, 16)
    backend = CompactAttention(alpha=0.5)
    before = backend(q, k, v, 64)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 64 + 100:], v2[:, :, 64 + 100:] = 5.0, 5.0  # change keys after query 100 of the chunk
    after = backend(q, k2, v2, 64)
    torch.testing.assert_close(after[:, :, :100], before[:, :, :100])


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = DecoderConfig(vocab_size=128, dim=96, n_layers=2, n_heads=6, n_kv_heads=2, hidden_dim=128, max_seq_len=1024)
    return Decoder(cfg).eval()


def test_dense_and_all_pages_chunked_prefill_equal_one_shot(model):
    ids = torch.randint(0, 128, (1, 448))
    with torch.inference_mode():
        one_shot = model(ids)[:, -1]
        for attention in (None, CompactAttention(sparse=False), CompactAttention(alpha=0.0)):
            cache = model.new_cache(1, 512)
            for start in range(0, 448, 128):
                last = model(ids[:, start:start + 128], kv_cache=cache, attention=attention)[:, -1]
            torch.testing.assert_close(last, one_shot, atol=1e-5, rtol=1e-5)


def test_generation_after_compact_prefill(model):
    prompt = torch.randint(0, 128, (300,)).tolist()
    dense = generate(model, [prompt], max_new_tokens=6).tokens[0]
    chunked = generate(model, [prompt], max_new_tokens=6, prefill_chunk=128,
                       prefill_attention=CompactAttention(sparse=False))
    assert chunked.tokens[0] == dense
    assert 0 < chunked.seconds < 60  # timed from the start of the prefill
    backend = CompactAttention(alpha=0.3)
    generate(model, [prompt], max_new_tokens=6, prefill_chunk=128, prefill_attention=backend)
    before, after = zip(*backend.densities, strict=True)
    assert all(a >= b_ for a, b_ in zip(after, before, strict=True))  # a union only adds pages


def test_selector_keeps_sinks_window_and_high_mass_blocks():
    torch.manual_seed(2)
    d, past, c = 16, 640, 64
    k = torch.randn(1, 1, past + c, d) * 0.01
    direction = torch.randn(d)
    q = direction + 0.1 * torch.randn(1, 1, c, d)
    hot = 5  # plant a block whose keys align with the queries
    k[0, 0, hot * PAGE:(hot + 1) * PAGE] = direction
    mask = flashprefill_block_mask(q, k, past, alpha=0.5, sink_blocks=2, window_blocks=2)[0, 0, 0]
    assert mask[:2].all() and mask[hot] and mask[9:11].all()  # sinks, the planted block, the local window
    assert mask.sum() == 5
    with pytest.raises(ValueError, match="multiple of the page size"):
        CompactAttention()(q, torch.zeros(1, 1, 100, d), torch.zeros(1, 1, 100, d), 0)
    assert math.isclose(PAGE, 64)


def test_block_table_ids_address_the_paged_cache(model):
    cache = model.new_cache(1, 512)
    with torch.inference_mode():
        model(torch.randint(0, 128, (1, 256)), kv_cache=cache)
    k_pages, _ = cache.pages(layer=1)
    mask = torch.zeros(1, 6, 1, 4, dtype=torch.bool)
    mask[0, 3, 0, 1] = True  # head 3 belongs to KV group 1 (3 query heads per group)
    table = block_union(mask, 2, past=192, chunk=64, pages_per_row=512 // PAGE, keep_recent=0)
    page_id = int(table.indices[table.indptr[1]])  # group 1's first selected page: local page 1
    torch.testing.assert_close(k_pages[page_id], cache.k[1, 0, 1, PAGE:2 * PAGE])
