"""The AR source of a block-diffusion model, its `[MASK]` token, and the exported model folder.

An exported folder is a plain decoder checkpoint (`pipelines.nn.checkpoint`) plus `diffusion.json`
({block_size, mask_token_id, recipe}), so `pipelines lm generate` still reads it as an AR model.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import AddedToken

from pipelines.data.errors import DataError, require_file
from pipelines.data.text import TextTokenizer
from pipelines.nn.checkpoint import load_language_model, save_decoder
from pipelines.nn.decoder import Decoder, DecoderConfig

MASK_TOKEN = "[MASK]"
DIFFUSION_INFO = "diffusion.json"
SMOLLM2 = "smollm2"  # the bundled SmolLM2-135M-Instruct GGUF


def load_tokenizer(source: str) -> TextTokenizer:
    """The tokenizer of a source, without building its weights (data modules need only this)."""
    if source in (SMOLLM2, "tiny") or Path(source).suffix == ".gguf":
        import gguf

        from pipelines.nn.gguf import smollm2_gguf_path, tokenizer_from_gguf

        path = smollm2_gguf_path() if source in (SMOLLM2, "tiny") else require_file(source, "GGUF model")
        return tokenizer_from_gguf(gguf.GGUFReader(path), Path(path))
    return TextTokenizer.from_pretrained(source)


def load_source(source: str, tiny_seed: int = 0) -> tuple[Decoder, TextTokenizer]:
    """The AR model to adapt: "smollm2", a .gguf file, a saved decoder folder, or "tiny" (a random
    2-layer decoder over SmolLM2's tokenizer, for tests and smoke runs)."""
    if source == "tiny":
        tokenizer = load_tokenizer(source)
        torch.manual_seed(tiny_seed)
        return Decoder(DecoderConfig.tiny(vocab_size=tokenizer.vocab_size)), tokenizer
    return load_language_model(None if source == SMOLLM2 else source)


def add_mask_token(model: Decoder, tokenizer: TextTokenizer) -> int:
    """Append `[MASK]` to the vocabulary and the (tied) embeddings; returns its id.

    The new row starts at the mean embedding, so the untrained mask token is a neutral input and an
    unremarkable output. A model that already has the token is left alone.
    """
    existing = tokenizer.tokenizer.token_to_id(MASK_TOKEN)
    if existing is not None and existing < model.cfg.vocab_size:
        return existing
    tokenizer.tokenizer.add_special_tokens([AddedToken(MASK_TOKEN, special=True, normalized=False)])
    mask_id = tokenizer.tokenizer.token_to_id(MASK_TOKEN)
    new_vocab = max(mask_id + 1, model.cfg.vocab_size)
    old = model.embed.weight.data
    embed = torch.nn.Embedding(new_vocab, old.shape[1], dtype=old.dtype, device=old.device)
    embed.weight.data[: old.shape[0]] = old
    embed.weight.data[old.shape[0]:] = old.mean(0)
    model.embed = embed
    if model.cfg.tie_embeddings:
        model.lm_head = torch.nn.Linear(old.shape[1], new_vocab, bias=False, dtype=old.dtype, device=old.device)
        model.lm_head.weight = model.embed.weight
    else:
        head = model.lm_head.weight.data
        model.lm_head = torch.nn.Linear(old.shape[1], new_vocab, bias=False, dtype=old.dtype, device=old.device)
        model.lm_head.weight.data[: head.shape[0]] = head
        model.lm_head.weight.data[head.shape[0]:] = head.mean(0)
    model.cfg.vocab_size = new_vocab
    return mask_id


def save_block_diffusion(folder: str | Path, model: Decoder, tokenizer: TextTokenizer, block_size: int,
                         mask_token_id: int, recipe: str, overwrite: bool = False) -> Path:
    folder = save_decoder(folder, model, tokenizer, overwrite=overwrite)
    info = {"block_size": block_size, "mask_token_id": mask_token_id, "recipe": recipe}
    (folder / DIFFUSION_INFO).write_text(json.dumps(info, indent=2))
    return folder


def load_block_diffusion(folder: str | Path) -> tuple[Decoder, TextTokenizer, dict]:
    """Model, tokenizer and {block_size, mask_token_id, recipe} of an exported block-diffusion model."""
    folder = Path(folder)
    info_path = require_file(folder / DIFFUSION_INFO, "block-diffusion info")
    try:
        info = json.loads(info_path.read_text())
        int(info["block_size"]), int(info["mask_token_id"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise DataError(f"{info_path} is not a block-diffusion info file: {err}") from err
    model, tokenizer = load_language_model(folder)
    return model, tokenizer, info
