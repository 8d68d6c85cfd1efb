import pytest
import torch

from pipelines.nn.decoder import Decoder, DecoderConfig
from pipelines.nn.generate import generate, sample_next


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Decoder(DecoderConfig.tiny(vocab_size=97)).eval()


def test_cached_decoding_equals_full_recomputation(model):
    ids = torch.randint(0, 97, (2, 12))
    full = model(ids)
    cache = model.new_cache(2, 16)
    step_logits = [model(ids[:, :5], kv_cache=cache)]
    for i in range(5, 12):
        step_logits.append(model(ids[:, i:i + 1], kv_cache=cache))
    torch.testing.assert_close(torch.cat(step_logits, dim=1), full, atol=1e-5, rtol=1e-5)
    assert cache.length == 12


def test_block_append_equals_one_by_one(model):
    ids = torch.randint(0, 97, (1, 10))
    by_block, by_token = model.new_cache(1, 16), model.new_cache(1, 16)
    model(ids[:, :6], kv_cache=by_block)
    model(ids[:, :6], kv_cache=by_token)
    block = model(ids[:, 6:10], kv_cache=by_block)
    tokens = torch.cat([model(ids[:, i:i + 1], kv_cache=by_token) for i in range(6, 10)], dim=1)
    torch.testing.assert_close(block, tokens, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(by_block.k[:, :, :, :10], by_token.k[:, :, :, :10], atol=1e-6, rtol=1e-6)


def test_uncommitted_block_is_overwritten_and_truncate_rolls_back(model):
    ids = torch.randint(0, 97, (1, 8))
    reference = model(ids)
    cache = model.new_cache(1, 16)
    model(ids[:, :4], kv_cache=cache)
    model(torch.randint(0, 97, (1, 4)), kv_cache=cache, commit=False)  # a rejected draft
    assert cache.length == 4
    torch.testing.assert_close(model(ids[:, 4:], kv_cache=cache), reference[:, 4:], atol=1e-5, rtol=1e-5)
    cache.truncate(6)  # roll back two committed tokens and redo them
    torch.testing.assert_close(model(ids[:, 6:], kv_cache=cache), reference[:, 6:], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="truncate"):
        cache.truncate(99)


def test_explicit_mask_and_positions_equal_the_causal_default(model):
    ids = torch.randint(0, 97, (2, 7))
    mask = torch.ones(7, 7, dtype=torch.bool).tril()[None, None]
    torch.testing.assert_close(model(ids, mask=mask, position_ids=torch.arange(7)[None]), model(ids))


def test_left_padded_batch_equals_each_prompt_alone(model):
    prompts = [[5, 6, 7, 8, 9, 10], [11, 12], [13, 14, 15]]
    batch = generate(model, prompts, max_new_tokens=6, pad_id=0)
    for prompt, tokens in zip(prompts, batch.tokens, strict=True):
        assert generate(model, [prompt], max_new_tokens=6, pad_id=0).tokens[0] == tokens


def test_stop_tokens_end_a_row(model):
    first = generate(model, [[1, 2, 3]], max_new_tokens=8).tokens[0]
    stopped = generate(model, [[1, 2, 3]], max_new_tokens=8, stop_ids=[first[2]]).tokens[0]
    assert stopped == first[: first.index(first[2]) + 1]


def test_sampling_is_seeded_and_top_p_keeps_the_nucleus():
    logits = torch.tensor([[3.0, 2.9, -5.0, -5.0]])
    draws = {int(sample_next(logits, 1.0, 0.5, torch.Generator().manual_seed(s))) for s in range(50)}
    assert draws == {0}  # token 0 alone holds >= 50% of the mass
    draws = {int(sample_next(logits, 1.0, 0.95, torch.Generator().manual_seed(s))) for s in range(50)}
    assert draws == {0, 1}
    assert int(sample_next(logits, 0.0, 1.0, None)) == 0
    a = [int(sample_next(logits, 5.0, 1.0, torch.Generator().manual_seed(3))) for _ in range(3)]
    b = [int(sample_next(logits, 5.0, 1.0, torch.Generator().manual_seed(3))) for _ in range(3)]
    assert a == b


def test_prompt_longer_than_context_is_refused(model):
    with pytest.raises(ValueError, match="exceeds the model's context of 256"):
        generate(model, [[1] * 250], max_new_tokens=10)
    with pytest.raises(ValueError, match="context"):
        model(torch.zeros(1, 300, dtype=torch.long))


def test_mean_nll_per_token_pools_tokens_over_sequences():
    import torch.nn.functional as F

    from pipelines.nn.decoder import mean_nll_per_token

    torch.manual_seed(0)
    model = Decoder(DecoderConfig.tiny(vocab_size=32)).eval()
    seqs = [[1, 5, 9, 3], [2, 7]]
    with torch.no_grad():
        losses = [F.cross_entropy(model(torch.tensor([s[:-1]]))[0], torch.tensor(s[1:]), reduction="sum") for s in seqs]
    assert mean_nll_per_token(model, seqs) == pytest.approx(float(sum(losses)) / 4, rel=1e-6)
