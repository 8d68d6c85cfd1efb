"""`pipelines vlm …` verbs, published through the `pipelines.verbs` entry-point group."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path


def data(*, out: Path, source: str = "smollm2", n_train: int = 600, n_heldout: int = 60,
         max_new_tokens: int = 96, seed: int = 0, overwrite: bool = False) -> None:
    """Write self-distilled instruction data (the AR source's answers to checkable prompts) plus real text.

    Args:
        out: Destination folder; refused if it already holds files, unless --overwrite.
        source: The AR model that answers: "smollm2", a .gguf file or a saved decoder folder.
        n_train: Training prompts (answers that never stop are dropped).
        n_heldout: Held-out prompts (unseen combinations), graded against the truth.
        max_new_tokens: Longest answer generated.
        seed: The same seed writes the same prompts.
        overwrite: Allow writing into a folder that already has files.
    """
    from pipelines.verbs import refuse_nonempty
    from vlm.instruct import write_selfdistill_data

    refuse_nonempty(out, overwrite)
    write_selfdistill_data(out, source, n_train, n_heldout, max_new_tokens, seed=seed)
    print(f"wrote {out}/train.json, heldout.json, text_train.txt, text_heldout.txt")


def generate(*, model: Path, prompt: str, block_size: int | None = None, threshold: float = 0.9,
             max_new_tokens: int = 128) -> str:
    """Answer a prompt with a block-diffusion model exported by `pipelines fit` (<run>/stages/B<size>/).

    Args:
        model: The exported folder (holds diffusion.json).
        prompt: The user's message.
        block_size: Decode with this block size (default: the one the model was trained at).
        threshold: Confidence τ in (0, 1]: commit every masked token at least this sure, and the top one.
        max_new_tokens: Upper bound on generated tokens.
    """
    from vlm.decode import block_diffusion_generate, check_threshold
    from vlm.instruct import chat_prompt
    from vlm.model import load_block_diffusion

    check_threshold(threshold)
    decoder, tokenizer, info = load_block_diffusion(model)
    size = block_size or int(info["block_size"])
    result = block_diffusion_generate(decoder, [chat_prompt(tokenizer, prompt)], size, int(info["mask_token_id"]),
                                      [tokenizer.eos_id], max_new_tokens=max_new_tokens, threshold=threshold)
    answer = tokenizer.decode(result.tokens[0])
    print(answer)
    print(f"[B={size}, τ={threshold}: {result.new_tokens} tokens, {result.tokens_per_denoise_forward:.2f} per "
          f"denoising forward, {result.tokens_per_forward:.2f} per forward of any kind, "
          f"{result.tokens_per_second:.1f} tokens/s]", file=sys.stderr)
    return answer


def vlm_verbs() -> dict[str, Callable]:
    return {"vlm data": data, "vlm generate": generate}
