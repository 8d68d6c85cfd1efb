"""A tokenizer adapter over Hugging Face `tokenizers`: one interface for trained and loaded BPEs."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from pipelines.data.errors import DataError, require_file


class TextTokenizer:
    """Encode/decode text and pad batches; knows its special tokens by name.

    Byte-level BPE is the default because it round-trips any UTF-8 text exactly.
    """

    def __init__(self, tokenizer: Tokenizer, bos_token: str | None = None, eos_token: str | None = None,
                 pad_token: str | None = None, chat_template: str | None = None) -> None:
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.bos_token, self.eos_token, self.pad_token = bos_token, eos_token, pad_token
        self.bos_id = self._id_of(bos_token)
        self.eos_id = self._id_of(eos_token)
        self.pad_id = self._id_of(pad_token)

    def _id_of(self, token: str | None) -> int | None:
        if token is None:
            return None
        token_id = self.tokenizer.token_to_id(token)
        if token_id is None:
            raise DataError(f"special token {token!r} is not in the tokenizer's vocabulary")
        return token_id

    @classmethod
    def train_bpe(cls, texts: Iterable[str], vocab_size: int = 512,
                  special_tokens: Sequence[str] = ("<pad>", "<bos>", "<eos>")) -> TextTokenizer:
        """Train a byte-level BPE on `texts`; the first three special tokens are pad, bos, eos."""
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(special_tokens),
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        tok.train_from_iterator(texts, trainer=trainer)
        pad, bos, eos = (list(special_tokens) + [None, None, None])[:3]
        return cls(tok, bos_token=bos, eos_token=eos, pad_token=pad)

    @classmethod
    def from_file(cls, path: str | Path, **special: str | None) -> TextTokenizer:
        path = require_file(path, "tokenizer")
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as err:  # tokenizers raises a bare Exception on malformed JSON
            raise DataError(f"cannot load tokenizer {path}: {err}") from err
        return cls(tok, **special)

    def save_pretrained(self, folder: str | Path) -> Path:
        """tokenizer.json plus tokenizer_config.json (special tokens, chat template) in `folder`."""
        folder = Path(folder)
        self.save(folder / "tokenizer.json")
        config = {"bos_token": self.bos_token, "eos_token": self.eos_token, "pad_token": self.pad_token,
                  "chat_template": self.chat_template}
        (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> TextTokenizer:
        folder = Path(folder)
        config_path = require_file(folder / "tokenizer_config.json", "tokenizer config")
        try:
            config = json.loads(config_path.read_text())
        except json.JSONDecodeError as err:
            raise DataError(f"{config_path} is not valid JSON: {err}") from err
        return cls.from_file(folder / "tokenizer.json", **config)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save(str(path))
        return path

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        if add_bos:
            ids = [self._require(self.bos_id, "bos")] + ids
        if add_eos:
            ids = ids + [self._require(self.eos_id, "eos")]
        return ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def pad(self, batch: Sequence[Sequence[int]], side: str = "right",
            max_length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Pad id lists to one tensor; returns (ids [B, T], attention_mask [B, T] bool).

        Left padding is what batched generation needs (every row's last token is real).
        """
        if side not in ("left", "right"):
            raise ValueError(f"side must be 'left' or 'right', got {side!r}")
        pad_id = self._require(self.pad_id, "pad")
        length = max_length or max((len(x) for x in batch), default=0)
        ids = torch.full((len(batch), length), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), length), dtype=torch.bool)
        for row, seq in enumerate(batch):
            seq = list(seq)[:length]
            span = slice(length - len(seq), length) if side == "left" else slice(0, len(seq))
            ids[row, span] = torch.tensor(seq, dtype=torch.long)
            mask[row, span] = True
        return ids, mask

    def apply_chat_template(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """Render a conversation with the model's own Jinja chat template, as Hugging Face does."""
        if not self.chat_template:
            raise DataError("this tokenizer has no chat template")
        from jinja2.exceptions import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message: str) -> None:
            raise TemplateError(message)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        return env.from_string(self.chat_template).render(
            messages=messages, add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token or "", eos_token=self.eos_token or "")

    @staticmethod
    def _require(token_id: int | None, name: str) -> int:
        if token_id is None:
            raise DataError(f"this tokenizer has no {name} token")
        return token_id


def reference_manual_text(split: str) -> str:
    """Real English text that needs no download: CPython's bundled language-reference topics
    (`pydoc_data.topics`); split "heldout" is every fifth topic, anything else the rest."""
    from pydoc_data.topics import topics

    names = sorted(topics)
    chosen = [n for i, n in enumerate(names) if (i % 5 == 0) == (split == "heldout")]
    return "\n\n".join(topics[n] for n in chosen)
