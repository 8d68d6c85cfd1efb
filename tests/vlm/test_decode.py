"""Block-diffusion decoding: B=1 is greedy AR, the counts add up, inference matches training's mask."""

import pytest
import torch

from pipelines.nn.decoder import Decoder, DecoderConfig
from pipelines.nn.generate import generate
from vlm.decode import block_diffusion_generate
from vlm.diffusion import block_diffusion_mask

VOCAB, MASK = 64, 63


def tiny_model(seed: int = 0) -> Decoder:
    torch.manual_seed(seed)
    return Decoder(DecoderConfig.tiny(vocab_size=VOCAB)).eval()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_block_size_one_emits_exactly_the_greedy_ar_tokens(seed):
    model = tiny_model(seed)
    prompts = [[5, 9, 13, 2, 40], [7, 7, 30]]
    stop = [3]
    ar = generate(model, [prompts[0]], max_new_tokens=40, stop_ids=stop)
    ar2 = generate(model, [prompts[1]], max_new_tokens=40, stop_ids=stop)
    # [MASK] is never emitted; pick an id the AR model does not produce, so the comparison is exact.
    mask = next(i for i in range(VOCAB - 1, 0, -1) if i not in ar.tokens[0] + ar2.tokens[0])
    out = block_diffusion_generate(model, prompts, block_size=1, mask_id=mask, stop_ids=stop, max_new_tokens=40)
    assert out.tokens == [ar.tokens[0], ar2.tokens[0]]
    assert out.denoise_forwards == 0
    # One prefill per prompt, then one commit pass per token but the last: AR's forward count.
    assert out.forwards == sum(len(t) for t in out.tokens)


def test_counts_when_every_block_finishes_in_one_denoising_step():
    model = tiny_model()
    # τ tiny: every masked position is committed in the first denoising step of its block.
    out = block_diffusion_generate(model, [[5, 6, 7]], block_size=4, mask_id=MASK, stop_ids=[], max_new_tokens=16,
                                   threshold=1e-9)
    assert len(out.tokens[0]) == 16
    assert (out.prefill_forwards, out.denoise_forwards, out.commit_forwards) == (1, 4, 3)
    assert out.tokens_per_denoise_forward == 4.0 and out.tokens_per_forward == 2.0
    assert MASK not in out.tokens[0]


def test_mask_token_is_never_emitted_even_when_the_ar_pass_prefers_it():
    model = tiny_model()
    head = torch.nn.Linear(model.cfg.dim, VOCAB)
    head.weight = model.lm_head.weight
    with torch.no_grad():
        head.bias.zero_()
        head.bias[MASK] = 1e4  # the AR pass now always prefers [MASK]
    model.lm_head = head
    out = block_diffusion_generate(model, [[5, 6, 7]], block_size=4, mask_id=MASK, stop_ids=[], max_new_tokens=12)
    assert len(out.tokens[0]) == 12 and MASK not in out.tokens[0]


def test_threshold_one_commits_one_token_per_step():
    model = tiny_model()
    out = block_diffusion_generate(model, [[5, 6, 7]], block_size=4, mask_id=MASK, stop_ids=[], max_new_tokens=8,
                                   threshold=1.0)
    assert out.denoise_forwards == 2 * 3  # B−1 steps per block: no parallelism at τ = 1


@pytest.mark.parametrize("threshold", [0.0, -0.1, 1.5])
def test_threshold_outside_the_unit_interval_is_refused(threshold):
    with pytest.raises(ValueError, match="threshold"):
        block_diffusion_generate(tiny_model(), [[1, 2]], 4, MASK, [], threshold=threshold)


def test_stops_at_eos_inside_a_block():
    model = tiny_model(3)
    free = block_diffusion_generate(model, [[5, 6, 7]], 4, MASK, stop_ids=[], max_new_tokens=24, threshold=0.5)
    stop = free.tokens[0][5]  # a token the model emits at position 5: make it the stop token
    out = block_diffusion_generate(model, [[5, 6, 7]], 4, MASK, stop_ids=[stop], max_new_tokens=24, threshold=0.5)
    first = free.tokens[0].index(stop)
    assert out.tokens[0] == free.tokens[0][: first + 1]


def test_a_denoising_step_computes_what_training_computes():
    """The cached decoder's noisy block = the noisy stream of the [noisy ; clean] training forward."""
    model = tiny_model(4)
    length, block = 12, 4
    clean = torch.randint(3, 60, (1, length))
    noisy = clean.clone()
    noisy[:, 9:] = MASK  # block 2: first token known, the rest masked
    with torch.no_grad():
        train = model(torch.cat([noisy, clean], 1), position_ids=torch.arange(length).repeat(2)[None],
                      mask=block_diffusion_mask(length, block)[None, None])
        cache = model.new_cache(1, 32)
        model(clean[:, :8], kv_cache=cache)  # prefill + committed blocks, causal
        step = model(noisy[:, 8:12], position_ids=torch.arange(8, 12)[None], kv_cache=cache, commit=False,
                     mask=torch.ones(1, 1, 4, 12, dtype=torch.bool))
    torch.testing.assert_close(step, train[:, 8:12], atol=1e-5, rtol=1e-5)
