"""The `make demo` stage of vlm/: a short NBDiff adaptation of the real SmolLM2, then block decoding.

A few optimizer steps cannot teach a 135M model to denoise (benchmarks/nbdiff_adapt.py does the real
run); the stage shows the whole path a user takes: data → `pipelines fit` with a block-size
curriculum → exported stages → `pipelines vlm generate`-style decoding with honest forward counts.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipelines.data.text import reference_manual_text
from pipelines.demo import DemoSection, markdown_table, shipped_config
from vlm.instruct import conversation, make_tasks

CONFIG = "vlm/nbdiff_smollm2.yaml"


def write_truth_data(root: Path, n_train: int = 48, n_heldout: int = 4) -> Path:
    """Conversations with the true answers (no AR generation, so the demo stays fast) + real text."""
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("heldout", n_heldout)):
        items = [conversation(t.key, t.prompt, t.truth) for t in make_tasks(n, split)]
        (root / f"{split}.json").write_text(json.dumps(items, indent=1))
        (root / f"text_{split}.txt").write_text(reference_manual_text(split))
    return root


def nbdiff_stage(out: Path) -> DemoSection:
    from pipelines.cli import lightning_cli
    from vlm.decode import block_diffusion_generate
    from vlm.instruct import chat_prompt
    from vlm.model import load_block_diffusion

    data = write_truth_data(out / "data" / "nbdiff")
    config = str(shipped_config(CONFIG))
    fit = lightning_cli(["fit", "--config", config, "--data.init_args.root", str(data), "--runs_dir", str(out),
                         "--name", "nbdiff", "--trainer.max_steps", "8", "--trainer.limit_val_batches", "0",
                         "--model.init_args.curriculum", "[{block_size: 1, steps: 2}, {block_size: 4, steps: 6}]",
                         "--data.init_args.batch_size", "4", "--data.init_args.text_chunks", "8"])
    run = fit.run_dir
    model, tok, info = load_block_diffusion(run / "stages" / "B4")
    rows, tasks = [], make_tasks(4, "heldout")[:3]
    totals = {"tokens": 0, "denoise": 0, "all": 0}
    for task in tasks:
        result = block_diffusion_generate(model, [chat_prompt(tok, task.prompt)], 4, info["mask_token_id"],
                                          [tok.eos_id], max_new_tokens=32, threshold=0.9)
        answer = tok.decode(result.tokens[0]).strip().replace("\n", " ").replace("|", "/")
        rows.append([task.prompt, answer, result.new_tokens, result.tokens_per_denoise_forward,
                     result.tokens_per_forward])
        totals["tokens"] += result.new_tokens
        totals["denoise"] += result.denoise_forwards
        totals["all"] += result.forwards
    table = markdown_table(["held-out prompt", "answer (B=4, τ=0.9)", "tokens", "tokens / denoising forward",
                            "tokens / forward (all)"], rows)
    body = (f"`pipelines fit --config configs/{CONFIG}` for 8 steps (B = 1 → 4) on {data}, then block decoding of "
            f"{run}/stages/B4. Eight steps only show the path; `python benchmarks/nbdiff_adapt.py` adapts for real.\n\n"
            f"{table}\n")
    return DemoSection("Block diffusion: NBDiff on SmolLM2", body,
                       {"tokens_per_forward": totals["tokens"] / max(totals["all"], 1),
                        "tokens_per_denoise_forward": totals["tokens"] / max(totals["denoise"], 1)})
