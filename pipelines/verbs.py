"""Domain verbs beside fit/validate/test/predict, e.g. `pipelines data synth shapes --out DIR`.

A verb is a plain typed function; jsonargparse turns its signature into the parser, so no domain
writes argument parsing. Domains publish `{"asd demo": fn, ...}` through the `pipelines.verbs`
entry-point group, which keeps `pipelines` free of domain imports.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib.metadata import entry_points
from pathlib import Path

from jsonargparse import CLI

ENTRY_POINT_GROUP = "pipelines.verbs"


@dataclass(frozen=True)
class Verb:
    words: tuple[str, ...]
    func: Callable

    @property
    def summary(self) -> str:
        return (self.func.__doc__ or "").strip().splitlines()[0] if self.func.__doc__ else ""


def synth_shapes(out: Path = Path("runs/data/shapes"), n_train: int = 400, n_val: int = 100, image_size: int = 32, seed: int = 0,
                 overwrite: bool = False) -> None:
    """Write a synthetic shapes dataset in the image-folder layout (train/ and val/ per class).

    Args:
        out: Destination folder; refused if it already holds files, unless --overwrite.
        n_train: Training images (spread evenly over the classes).
        n_val: Validation images.
        image_size: Side length in pixels.
        seed: Random seed; the same seed writes identical files.
        overwrite: Allow writing into a folder that already has files.
    """
    from pipelines.data.synth_shapes import write_shapes_dataset

    refuse_nonempty(out, overwrite)
    write_shapes_dataset(out, n_train=n_train, n_val=n_val, image_size=image_size, seed=seed)
    print(f"wrote {n_train} train and {n_val} val images to {out}")


def data_text(out: Path = Path("runs/data/text"), vocab_size: int = 4096, train_file: Path | None = None,
              val_file: Path | None = None, overwrite: bool = False) -> dict:
    """Write a text corpus for training a language model from scratch (text + a BPE trained on it).

    Args:
        out: Destination folder (train.txt, val.txt, tokenizer.json, tokenizer_config.json).
        vocab_size: Size of the byte-level BPE vocabulary trained on the train text.
        train_file: Your own training text (UTF-8); default: real English bundled with Python and
            the installed packages (reference-manual topics, docstrings of the standard library,
            numpy, torch, matplotlib, pandas, sympy; about 16 MB).
        val_file: Your own validation text; required with --train_file.
        overwrite: Allow writing into a folder that already has files.
    """
    from pipelines.data.text_corpus import write_text_corpus

    refuse_nonempty(out, overwrite)
    sizes = write_text_corpus(out, vocab_size=vocab_size, train_file=train_file, val_file=val_file)
    print(f"wrote {out}: {sizes['train_tokens']:,} train / {sizes['val_tokens']:,} val tokens "
          f"(BPE vocabulary {sizes['vocab_size']})")
    return sizes


def demo(out: Path = Path("runs/demo"), stages: list[str] | None = None) -> None:
    """Run every pipeline end to end at tiny scale and write <out>/REPORT.md.

    Args:
        out: Folder for the demo's data, runs and report.
        stages: Only these stages (default: all installed ones, core first).
    """
    from pipelines.demo import run_demo

    run_demo(out, stages)


def lm_generate(*, prompt: str, model: Path | None = None, max_new_tokens: int = 128, temperature: float = 0.0,
                top_p: float = 1.0, seed: int = 0, system: str | None = None, raw: bool = False,
                prefill_chunk: int | None = None, prefill: str = "dense", alpha: float = 0.02) -> str:
    """Answer a prompt with a language model (default: the bundled SmolLM2-135M-Instruct), greedy by default.

    Args:
        prompt: The user's message (or the whole text with --raw).
        model: A .gguf file or a folder saved by `save_decoder` (default: the bundled SmolLM2 GGUF).
        max_new_tokens: Upper bound on generated tokens.
        temperature: 0 for greedy decoding; above 0 samples.
        top_p: Nucleus mass kept when sampling.
        seed: Sampling seed.
        system: Optional system message for the chat template.
        raw: Feed the prompt as is, without the chat template.
        prefill_chunk: Feed the prompt in chunks of this many tokens (chunked prefill).
        prefill: 'dense' or 'compact' (CompactAttention: each chunk attends to selected cache pages).
        alpha: CompactAttention's selector threshold (keep blocks with mass ≥ alpha·max).
    """
    from pipelines.nn.checkpoint import load_language_model
    from pipelines.nn.generate import generate

    if prefill not in ("dense", "compact"):
        raise SystemExit(f"error: --prefill must be 'dense' or 'compact', not {prefill!r}")
    backend = None
    if prefill == "compact":
        from pipelines.nn.compact_attention import CompactAttention

        backend = CompactAttention(alpha=alpha)
    decoder, tokenizer = load_language_model(model)
    if raw:
        text = prompt
    else:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    stop = [i for i in (tokenizer.eos_id, tokenizer.tokenizer.token_to_id("<|im_end|>")) if i is not None]
    result = generate(decoder, [tokenizer.encode(text)], max_new_tokens=max_new_tokens,
                      pad_id=tokenizer.pad_id or 0, stop_ids=stop, temperature=temperature, top_p=top_p, seed=seed,
                      prefill_chunk=prefill_chunk, prefill_attention=backend)
    answer = tokenizer.decode(result.tokens[0])
    print(answer)
    print(f"[{result.new_tokens} tokens in {result.seconds:.2f} s = {result.tokens_per_second:.1f} tokens/s]",
          file=sys.stderr)
    return answer


def ray_fit(argv: list[str]) -> None:
    """Train a `pipelines fit` YAML with Ray Train, locally or on a cluster (--num-workers N, --address ADDR)."""
    from pipelines.distributed.ray_fit import ray_fit_verb

    ray_fit_verb(argv)


ray_fit.takes_argv = True  # its options pass through to LightningCLI, so it parses its own argv


def compress_lossless(*, ckpt: Path, out: Path, overwrite: bool = False) -> None:
    """Losslessly compress a checkpoint (.safetensors/.ckpt → .enec), or restore one (.enec → .safetensors).

    Args:
        ckpt: Input checkpoint; a .enec input is decompressed, anything else compressed.
        out: Output file (.enec when compressing, .safetensors when decompressing).
        overwrite: Replace `out` if it exists.
    """
    from pipelines.compress.lossless_checkpoint import compress_checkpoint, decompress_checkpoint

    if Path(ckpt).suffix == ".enec":
        stats = decompress_checkpoint(ckpt, out, overwrite)
        print(f"restored {stats['tensors']} tensors ({stats['bytes'] / 2**20:.1f} MiB) to {out} "
              f"in {stats['seconds']:.1f} s")
    else:
        stats = compress_checkpoint(ckpt, out, overwrite)
        print(f"{stats['tensors']} tensors: {stats['raw_bytes'] / 2**20:.1f} MiB → "
              f"{stats['compressed_bytes'] / 2**20:.1f} MiB (ratio {stats['ratio']:.3f}) in {stats['seconds']:.1f} s")


def lm_compress(*, out: Path, method: str = "masa", ratio: float = 0.2, ckpt: Path | None = None, groups: int = 5,
                refine_share: float = 0.1, calibration_sequences: int = 32, sequence_tokens: int = 256,
                overwrite: bool = False) -> dict:
    """Compress a decoder's attention without training (MASA matrix PCA, or the per-layer SVD baseline).

    Args:
        out: Folder for the compressed decoder (loads with `pipelines lm generate --model OUT`).
        method: 'masa' (shared atoms per layer group + whitened low-rank refinement) or 'svd'.
        ratio: Fraction of the attention parameters to remove, in (0, 1).
        ckpt: A .gguf file or a saved decoder folder (default: the bundled SmolLM2-135M-Instruct).
        groups: MASA layer groups (cut where the logit-lens drift between neighbours is largest).
        refine_share: Share of each group's budget spent on the low-rank refinement.
        calibration_sequences: Calibration chunks of real text (CPython's reference manual).
        sequence_tokens: Tokens per calibration chunk.
        overwrite: Replace an existing compressed model in `out`.
    """
    from pipelines.data.text import reference_manual_text
    from pipelines.nn.checkpoint import load_language_model, save_decoder
    from pipelines.nn.masa_compress import compress_attention_masa, compress_attention_svd

    if method not in ("masa", "svd"):
        raise SystemExit(f"error: --method must be 'masa' or 'svd', not {method!r}")
    if not 0.0 < ratio < 1.0:
        raise SystemExit(f"error: --ratio must be in (0, 1), got {ratio}")
    if (Path(out) / "model.safetensors").exists() and not overwrite:
        raise SystemExit(f"error: {out} already holds a model; pass --overwrite or choose another --out")
    model, tokenizer = load_language_model(ckpt)
    ids = tokenizer.encode(reference_manual_text("train"))
    calibration = [ids[i:i + sequence_tokens] for i in range(0, calibration_sequences * sequence_tokens, sequence_tokens)]
    if method == "masa":
        stats = compress_attention_masa(model, calibration, ratio, n_groups=groups, refine_share=refine_share)
    else:
        stats = compress_attention_svd(model, ratio)
    save_decoder(out, model, tokenizer, overwrite=overwrite)
    print(f"{method}: attention parameters {stats['attention_parameters_before'] / 1e6:.2f}M → "
          f"{stats['attention_parameters_after'] / 1e6:.2f}M (−{100 * stats['reduction']:.1f}%), saved to {out}")
    return stats


def refuse_nonempty(folder: Path, overwrite: bool) -> None:
    """Stop before a generator writes into a folder that already holds the user's files."""
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()) and not overwrite:
        raise SystemExit(f"error: {folder} already exists and is not empty; pass --overwrite or choose another --out")


def core_verbs() -> dict[str, Callable]:
    return {"data synth shapes": synth_shapes, "data text": data_text, "demo": demo, "lm generate": lm_generate, "ray fit": ray_fit,
            "compress lossless": compress_lossless, "lm compress": lm_compress}


@cache
def all_verbs() -> tuple[Verb, ...]:
    table: dict[str, Callable] = dict(core_verbs())
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            table.update(ep.load()())
        except Exception as err:  # one broken domain must not take the whole command down
            print(f"warning: verbs of {ep.name!r} ({ep.value}) failed to load: {err}", file=sys.stderr)
    return tuple(Verb(tuple(key.split()), func) for key, func in sorted(table.items()))


def find_verb(argv: list[str]) -> Verb | None:
    """The verb whose words are the longest prefix of argv."""
    matches = [v for v in all_verbs() if tuple(argv[: len(v.words)]) == v.words]
    return max(matches, key=lambda v: len(v.words), default=None)


def dispatch_verb(verb: Verb, argv: list[str]) -> object:
    if getattr(verb.func, "takes_argv", False):
        return verb.func(argv[len(verb.words):])
    return CLI(verb.func, args=argv[len(verb.words):], prog="pipelines " + " ".join(verb.words),
               as_positional=True)


def verb_help() -> str:
    lines = ["Verbs (each takes --help):"]
    width = max((len(" ".join(v.words)) for v in all_verbs()), default=0)
    lines += [f"  {' '.join(v.words):<{width}}  {v.summary}" for v in all_verbs()]
    return "\n".join(lines)
