"""Decoder checkpoints of our own: safetensors weights + config.json (+ tokenizer files) in a folder,
so an adapted model reloads without the GGUF it started from."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from pipelines.data.errors import DataError, require_file
from pipelines.data.text import TextTokenizer
from pipelines.nn.decoder import Decoder, DecoderConfig

WEIGHTS, CONFIG = "model.safetensors", "config.json"
COMPRESSED_WEIGHTS = "model.enec"  # the same weights through the lossless codec


def save_decoder(folder: str | Path, model: Decoder, tokenizer: TextTokenizer | None = None,
                 overwrite: bool = False) -> Path:
    folder = Path(folder)
    if (folder / WEIGHTS).exists() and not overwrite:
        raise FileExistsError(f"{folder / WEIGHTS} exists; pass overwrite=True or choose another folder")
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()
             if not (model.cfg.tie_embeddings and k == "lm_head.weight")}  # tied: stored once, as embed
    save_file(state, str(folder / WEIGHTS), metadata={"format": "pt"})
    (folder / CONFIG).write_text(json.dumps(model.cfg.to_dict(), indent=2))
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return folder


def load_decoder(folder: str | Path, dtype: torch.dtype = torch.float32) -> Decoder:
    folder = Path(folder)
    config_path = require_file(folder / CONFIG, "decoder config")
    try:
        config = DecoderConfig(**json.loads(config_path.read_text()))
    except (json.JSONDecodeError, TypeError) as err:
        raise DataError(f"{config_path} is not a decoder config: {err}") from err
    compressed = folder / COMPRESSED_WEIGHTS
    if compressed.is_file() and not (folder / WEIGHTS).is_file():  # `pipelines compress lossless` output
        from pipelines.compress.lossless_checkpoint import load_compressed

        weights, state = compressed, load_compressed(compressed)
    else:
        weights = require_file(folder / WEIGHTS, "decoder weights")
        try:
            state = load_file(str(weights))
        except Exception as err:  # safetensors raises SafetensorError on a truncated or foreign file
            raise DataError(f"cannot read {weights}: {err}") from err
    model = Decoder(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (config.tie_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise DataError(f"{weights} does not match {config_path}: missing {missing}, unexpected {unexpected}")
    return model.to(dtype).eval()


def load_language_model(source: str | Path | None = None, dtype: torch.dtype = torch.float32
                        ) -> tuple[Decoder, TextTokenizer]:
    """A decoder and its tokenizer from a GGUF file, a folder we saved, or (None) the bundled SmolLM2."""
    from pipelines.nn.gguf import load_gguf

    if source is None or Path(source).suffix == ".gguf":
        loaded = load_gguf(source)
        return loaded.build(dtype), loaded.tokenizer
    return load_decoder(source, dtype), TextTokenizer.from_pretrained(source)
