"""NBDiff adaptation of SmolLM2-135M-Instruct vs its AR source and vs a naive transplant.

    python benchmarks/nbdiff_adapt.py [--until data|nbdiff|naive|eval] [--threshold 0.9]

Stages, each cached under runs/bench/nbdiff/ so a rerun resumes where the last one stopped:
1. data: the AR source answers generated prompts (self-distillation) + CPython's reference manual;
2. NBDiff: `pipelines fit --config configs/vlm/nbdiff_smollm2.yaml` (B = 1 → 2 → 4 → 8 → 16);
3. naive transplant: the same data and total steps, `recipe: naive` (bidirectional attention over the
   context, no L_AR, no curriculum: B = 16 from the start);
4. evaluation on held-out prompts (unseen combinations), batch 1, the same KV-cached decoder for all:
   task accuracy against the truth, tokens per denoising forward, tokens per forward of any kind,
   wall-clock tokens/s; and the clean stream's NLL on held-out real text.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, write_results  # noqa: E402

from pipelines.cli import lightning_cli  # noqa: E402
from pipelines.nn.decoder import mean_nll_per_token  # noqa: E402
from pipelines.nn.generate import generate  # noqa: E402
from vlm.decode import block_diffusion_generate  # noqa: E402
from vlm.instruct import chat_prompt, grade, make_tasks, write_selfdistill_data  # noqa: E402
from vlm.model import load_block_diffusion, load_source  # noqa: E402

ROOT = Path("runs/bench/nbdiff")
CONFIG = "configs/vlm/nbdiff_smollm2.yaml"
CURRICULUM = [(1, 10), (2, 20), (4, 50), (8, 50), (16, 50)]
NAIVE_BLOCK = 16
MAX_NEW = 96
SIZES = (4, 8, 16)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def stage_data(n_train: int, n_heldout: int) -> Path:
    data = ROOT / "data"
    if (data / "meta.json").exists():
        return data
    log(f"stage 1/4: the AR source answers {n_train} + {n_heldout} prompts")
    return write_selfdistill_data(data, n_train=n_train, n_heldout=n_heldout, max_new_tokens=MAX_NEW)


def stage_fit(name: str, data: Path, overrides: list[str], final_block: int) -> Path:
    run = ROOT / name
    done = run / "stages" / f"B{final_block}"
    if (done / "diffusion.json").exists():
        return run
    args = ["fit", "--config", CONFIG, "--data.init_args.root", str(data), "--runs_dir", str(ROOT), "--name", name,
            *overrides]
    last = run / "checkpoints" / "last.ckpt"
    if last.exists():
        log(f"{name}: resuming from {last}")
        args += ["--ckpt_path", str(last)]
    lightning_cli(args)
    return run


def curriculum_yaml(stages) -> str:
    return "[" + ", ".join(f"{{block_size: {b}, steps: {s}}}" for b, s in stages) + "]"


def cached(path: Path, compute):
    if path.exists():
        return json.loads(path.read_text())
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))
    return value


def eval_ar(tasks, n_text: int) -> dict:
    model, tok = load_source("smollm2")
    torch.set_grad_enabled(False)
    prompts = [chat_prompt(tok, t.prompt) for t in tasks]
    answers, tokens, seconds = [], 0, 0.0
    for i, prompt in enumerate(prompts):
        gen = generate(model, [prompt], max_new_tokens=MAX_NEW, pad_id=tok.eos_id, stop_ids=[tok.eos_id])
        answers.append(tok.decode(gen.tokens[0]))
        tokens += gen.new_tokens
        seconds += gen.seconds
        if i % 15 == 0:
            log(f"  AR source {i + 1}/{len(prompts)}")
    return {"accuracy": grade(tasks, answers), "tokens": tokens, "seconds": seconds, "tokens_per_second": tokens / seconds,
            "tokens_per_forward": 1.0,  # one prefill + one pass per further token
            "tokens_per_denoise_forward": None, "text_nll": text_nll(model, tok, n_text), "answers": answers}


def text_nll(model, tok, n_chunks: int, size: int = 128) -> float:
    text = (ROOT / "data" / "text_heldout.txt").read_text()
    ids = tok.encode(text)
    doc = tok.tokenizer.token_to_id("<|endoftext|>")
    chunks = [[doc] + ids[i:i + size] for i in range(0, n_chunks * size, size)]
    return mean_nll_per_token(model, chunks)


def eval_diffusion(folder: Path, tasks, block: int, threshold: float, n_text: int) -> dict:
    model, tok, info = load_block_diffusion(folder)
    prompts = [chat_prompt(tok, t.prompt) for t in tasks]
    out = block_diffusion_generate(model, prompts, block, info["mask_token_id"], [tok.eos_id], MAX_NEW, threshold)
    answers = [tok.decode(t) for t in out.tokens]
    return {"accuracy": grade(tasks, answers), "tokens": out.new_tokens, "seconds": out.seconds,
            "tokens_per_second": out.tokens_per_second, "tokens_per_forward": out.tokens_per_forward,
            "tokens_per_denoise_forward": out.tokens_per_denoise_forward,
            "forwards": {"prefill": out.prefill_forwards, "denoise": out.denoise_forwards,
                         "commit": out.commit_forwards},
            "text_nll": text_nll(model, tok, n_text), "answers": answers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=640, help="training prompts answered by the AR source")
    parser.add_argument("--heldout", type=int, default=90, help="held-out prompts (accuracy, speed)")
    parser.add_argument("--threshold", type=float, default=0.9, help="confidence τ for parallel commits")
    parser.add_argument("--extra-thresholds", type=float, nargs="*", default=[0.5],
                        help="more τ for the accuracy/speed curve (NBDiff at B=4 and 8 only)")
    parser.add_argument("--text-chunks", type=int, default=16, help="held-out real-text chunks of 128 tokens")
    parser.add_argument("--until", choices=("data", "nbdiff", "naive", "eval"), default="eval",
                        help="stop after this stage (each invocation then stays well under an hour)")
    args = parser.parse_args()
    torch.manual_seed(0)

    data = stage_data(args.train, args.heldout)
    if args.until == "data":
        return
    total = sum(s for _, s in CURRICULUM)
    log(f"stage 2/4: NBDiff curriculum {CURRICULUM} ({total} steps)")
    nbdiff = stage_fit("nbdiff", data, ["--model.init_args.curriculum", curriculum_yaml(CURRICULUM),
                                        "--trainer.max_steps", str(total)], CURRICULUM[-1][0])
    if args.until == "nbdiff":
        return
    log(f"stage 3/4: naive transplant, B={NAIVE_BLOCK}, {total} steps")
    naive = stage_fit("naive", data, ["--model.init_args.recipe", "naive", "--model.init_args.curriculum",
                                      curriculum_yaml([(NAIVE_BLOCK, total)]), "--trainer.max_steps", str(total)],
                      NAIVE_BLOCK)
    if args.until == "naive":
        return

    tasks = make_tasks(args.heldout, "heldout")
    evals = ROOT / "eval"
    log("stage 4/4: evaluation on held-out prompts")
    rows = {"AR source": cached(evals / "ar.json", lambda: eval_ar(tasks, args.text_chunks))}
    log(f"  AR source: accuracy {rows['AR source']['accuracy']:.3f}")
    runs = [("NBDiff", nbdiff, b, args.threshold, b) for b in SIZES]
    runs += [("naive transplant", naive, b, args.threshold, NAIVE_BLOCK) for b in SIZES]
    runs += [("NBDiff", nbdiff, b, tau, b) for tau in args.extra_thresholds for b in SIZES[:2]]
    for label, run, block, tau, trained in runs:
        key = f"{label} B={block} τ={tau}"
        folder = run / "stages" / f"B{trained}"
        rows[key] = cached(evals / f"{run.name}_B{block}_tau{tau}.json",
                           lambda f=folder, b=block, t=tau: eval_diffusion(f, tasks, b, t, args.text_chunks))
        r = rows[key]
        log(f"  {key}: accuracy {r['accuracy']:.3f}, {r['tokens_per_forward']:.2f} tokens/forward, "
            f"{r['tokens_per_second']:.1f} tokens/s")
    report(rows, args)


def report(rows: dict, args) -> None:
    ar = rows["AR source"]
    tau = args.threshold
    lines = ["| model | B | τ | accuracy | tokens / denoising forward | tokens / forward (all) | tokens/s | "
             "speed vs AR | real-text NLL (clean stream) |", "|---|---|---|---|---|---|---|---|---|"]
    for key, r in rows.items():
        label, block, t = (key, 1, "–") if key == "AR source" else (key.split(" B=")[0], int(key.split("B=")[1].split()[0]),
                                                                    key.split("τ=")[1])
        tpd = "–" if r["tokens_per_denoise_forward"] is None else f"{r['tokens_per_denoise_forward']:.2f}"
        lines.append(f"| {label} | {block} | {t} | {r['accuracy']:.3f} | {tpd} | {r['tokens_per_forward']:.2f} | "
                     f"{r['tokens_per_second']:.1f} | {r['tokens_per_second'] / ar['tokens_per_second']:.2f}× | "
                     f"{r['text_nll']:.3f} |")
    table = "\n".join(lines)
    nb = {b: rows[f"NBDiff B={b} τ={tau}"] for b in SIZES}
    nv = {b: rows[f"naive transplant B={b} τ={tau}"] for b in SIZES}
    gap4 = 100 * (nb[4]["accuracy"] - ar["accuracy"])
    speed8 = nb[8]["tokens_per_second"] / ar["tokens_per_second"]
    margin = min(100 * (nb[b]["accuracy"] - nv[b]["accuracy"]) for b in SIZES)
    targets = [
        {"name": "B=4 accuracy − AR source accuracy (points)", "value": round(gap4, 2), "target": ">= -2",
         "met": gap4 >= -2},
        {"name": "B=4 tokens per denoising forward", "value": round(nb[4]["tokens_per_denoise_forward"], 3),
         "target": ">= 2", "met": nb[4]["tokens_per_denoise_forward"] >= 2},
        {"name": "B=8 wall-clock tokens/s, NBDiff / AR source (same KV-cached decoder)", "value": round(speed8, 3),
         "target": ">= 1.5", "met": speed8 >= 1.5},
        {"name": "NBDiff − naive transplant accuracy, worst of B=4,8,16 (points)", "value": round(margin, 2),
         "target": "> 0", "met": margin > 0},
    ]
    results = {k: {f: v for f, v in r.items() if f != "answers"} for k, r in rows.items()}
    results["settings"] = {"curriculum": CURRICULUM, "naive_block": NAIVE_BLOCK, "threshold": tau,
                           "heldout_prompts": args.heldout, "max_new_tokens": MAX_NEW, "batch": 1}
    write_results("nbdiff_adapt", results, targets, table)
    plot(rows, RESULTS / "nbdiff_adapt.png")
    print(table)
    for t in targets:
        print(f"{t['name']}: {t['value']} (goal {t['target']}) {'met' if t['met'] else 'MISSED'}")


def plot(rows: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ar = rows["AR source"]
    ax.scatter([ar["tokens_per_forward"]], [ar["accuracy"]], marker="*", s=160, color="black", label="AR source")
    groups: dict[str, list] = {}
    for key, r in rows.items():
        if key == "AR source":
            continue
        label = key.split(" B=")[0] + " τ=" + key.split("τ=")[1]
        groups.setdefault(label, []).append((int(key.split("B=")[1].split()[0]), r))
    for label, points in groups.items():
        points.sort(key=lambda p: p[0])
        xs, ys = [r["tokens_per_forward"] for _, r in points], [r["accuracy"] for _, r in points]
        ax.plot(xs, ys, marker="o", label=label, linestyle="--" if "naive" in label else "-")
        for (b, _), x, y in zip(points, xs, ys, strict=True):
            ax.annotate(f"B={b}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel("tokens per forward pass (prefill and commit passes included)")
    ax.set_ylabel("held-out task accuracy")
    ax.set_title("SmolLM2-135M: AR source vs block diffusion")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
