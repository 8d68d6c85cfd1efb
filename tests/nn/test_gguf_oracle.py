"""Our SmolLM2 (GGUF → Decoder, tokenizer, chat template) against Hugging Face transformers loading
the same file. Both dequantize the same Q4_1/Q8_0 blocks, so fp32 logits must agree closely."""

import numpy as np
import pytest
import torch

from pipelines.data.errors import DataError
from pipelines.nn.checkpoint import load_language_model, save_decoder
from pipelines.nn.generate import generate
from pipelines.nn.gguf import load_gguf, smollm2_gguf_path

STRINGS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "naïve café — 東京 🚀 Zürich ξ≈π",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    "spaces    and\t\ttabs\n\n\n   trailing   ",
    "year 2024, pi = 3.14159, id #00042",
    "<|im_start|>user\nHi<|im_end|>",
]


@pytest.fixture(scope="module")
def ours():
    torch.manual_seed(0)
    loaded = load_gguf()
    return loaded.build(), loaded.tokenizer


@pytest.fixture(scope="module")
def theirs():
    transformers = pytest.importorskip("transformers")
    path = smollm2_gguf_path()
    model = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                              dtype=torch.float32).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return model, tokenizer


def test_config_from_metadata(ours):
    cfg = ours[0].cfg
    assert (cfg.dim, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.hidden_dim) == (576, 30, 9, 3, 1536)
    assert cfg.rope_base == 100000.0 and cfg.vocab_size == 49152 and cfg.tie_embeddings


@pytest.mark.parametrize("text", STRINGS)
def test_tokenizer_matches_transformers(ours, theirs, text):
    ids = ours[1].encode(text)
    assert ids == theirs[1](text, add_special_tokens=False)["input_ids"]
    assert ours[1].decode(ids, skip_special_tokens=False) == text


def test_chat_template_matches_transformers(ours, theirs):
    messages = [{"role": "user", "content": "What is 2+2?"}]
    assert ours[1].apply_chat_template(messages) == theirs[1].apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True)


QUESTION = ("Explain in detail why the sky is blue during the day and red at sunset. Mention Rayleigh scattering, "
            "the wavelengths of visible light, and why clouds look white.")


def prompt_ids(tokenizer, n=None):
    ids = tokenizer.encode(tokenizer.apply_chat_template([{"role": "user", "content": QUESTION}]))
    assert n is None or len(ids) >= n
    return ids if n is None else ids[-n:]


def test_logits_match_transformers_on_a_64_token_prompt(ours, theirs):
    ids = torch.tensor([prompt_ids(ours[1], 64)])
    with torch.inference_mode():
        diff = (ours[0](ids) - theirs[0](ids).logits).abs().max().item()
    assert diff <= 1e-3, f"max |Δlogit| = {diff}"


def test_greedy_generation_matches_transformers(ours, theirs):
    ids = prompt_ids(ours[1])
    eos = ours[1].eos_id
    ours_tokens = generate(ours[0], [ids], max_new_tokens=32, stop_ids=[eos]).tokens[0]
    with torch.inference_mode():
        out = theirs[0].generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 max_new_tokens=32, do_sample=False, eos_token_id=eos, pad_token_id=eos)
    assert len(ours_tokens) == 32  # a long answer: all 32 steps are compared
    assert ours_tokens == out[0, len(ids):].tolist()


def test_safetensors_checkpoint_reloads_without_the_gguf(ours, tmp_path):
    model, tokenizer = ours
    save_decoder(tmp_path / "lm", model, tokenizer)
    reloaded, retok = load_language_model(tmp_path / "lm")
    ids = torch.tensor([prompt_ids(tokenizer, 16)])  # the last 16 tokens suffice for a bit-exact check
    with torch.inference_mode():
        torch.testing.assert_close(reloaded(ids), model(ids), atol=0, rtol=0)
    assert retok.encode(STRINGS[3]) == tokenizer.encode(STRINGS[3]) and retok.chat_template == tokenizer.chat_template
    with pytest.raises(FileExistsError):
        save_decoder(tmp_path / "lm", model)


def test_prompt_longer_than_the_context_is_refused(ours):
    with pytest.raises(ValueError, match="exceeds the model's context of 8192"):
        generate(ours[0], [[1] * 8190], max_new_tokens=8)


def write_gguf(path, arch, tensor_type=None):
    import gguf

    writer = gguf.GGUFWriter(str(path), arch)
    for key, value in {"block_count": 1, "embedding_length": 32, "feed_forward_length": 64, "context_length": 64,
                       "attention.head_count": 4, "attention.head_count_kv": 4}.items():
        writer.add_uint32(f"{arch}.{key}", value)
    writer.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)
    if tensor_type is None:
        writer.add_tensor("token_embd.weight", np.zeros((16, 32), np.float32))
    else:
        block, size = gguf.GGML_QUANT_SIZES[tensor_type]
        raw = np.zeros((16, 32 // block * size), np.uint8)
        writer.add_tensor("token_embd.weight", raw, raw_dtype=tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_bad_gguf_files(tmp_path):
    import gguf

    with pytest.raises(DataError, match="unsupported GGUF architecture 'gpt2'"):
        load_gguf(write_gguf(tmp_path / "gpt2.gguf", "gpt2"))
    with pytest.raises(DataError, match="Q8_1"):
        load_gguf(write_gguf(tmp_path / "q81.gguf", "llama", gguf.GGMLQuantizationType.Q8_1))
    with pytest.raises(FileNotFoundError, match="missing.gguf"):
        load_gguf(tmp_path / "missing.gguf")
    (tmp_path / "junk.gguf").write_bytes(b"GGUF" + bytes(100))
    with pytest.raises(DataError, match="junk.gguf"):
        load_gguf(tmp_path / "junk.gguf")


def test_lm_generate_command_answers_with_the_bundled_model(capsys, monkeypatch):
    from pipelines.cli import main

    monkeypatch.setattr("sys.argv", ["pipelines"])
    main(["lm", "generate", "--prompt", "What is the capital of France?", "--max_new_tokens", "12",
          "--prefill_chunk", "16", "--prefill", "compact"])
    captured = capsys.readouterr()
    assert "Paris" in captured.out and "tokens/s" in captured.err
