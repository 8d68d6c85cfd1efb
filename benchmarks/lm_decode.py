"""Greedy decoding speed of our Decoder vs Hugging Face `generate`, same GGUF, prompt and CPU.

    python benchmarks/lm_decode.py [--new-tokens 64] [--repeats 3]

Both run fp32 with a KV cache on the dequantized SmolLM2-135M-Instruct weights, in this process,
alternating so that neither gets a warmer machine. Peak memory is the resident-set high-water mark
above the level before each call, sampled every 2 ms.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, write_results  # noqa: E402

from pipelines.nn.generate import generate  # noqa: E402
from pipelines.nn.gguf import load_gguf, smollm2_gguf_path  # noqa: E402

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def peak_rss_during(fn):
    """Run fn(); return (its result, peak RSS above the starting RSS in bytes)."""
    start, peak, done = rss_bytes(), [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_bytes())
            time.sleep(0.002)

    thread = threading.Thread(target=sample)
    thread.start()
    try:
        result = fn()
    finally:
        done.set()
        thread.join()
    return result, max(peak[0], rss_bytes()) - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)

    from transformers import AutoModelForCausalLM

    loaded = load_gguf()
    ours = loaded.build()
    tokenizer = loaded.tokenizer
    path = smollm2_gguf_path()
    theirs = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    ids = tokenizer.encode(tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}]))
    n = args.new_tokens
    x = torch.tensor([ids])

    def run_ours():
        start = time.perf_counter()
        out = generate(ours, [ids], max_new_tokens=n).tokens[0]
        return out, time.perf_counter() - start

    def run_theirs():
        start = time.perf_counter()
        with torch.inference_mode():
            # min_new_tokens keeps HF from stopping at EOS, so both produce exactly n tokens.
            out = theirs.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, min_new_tokens=n,
                                  do_sample=False, pad_token_id=tokenizer.eos_id)
        return out[0, len(ids):].tolist(), time.perf_counter() - start

    # The first (cold) call of each allocates its caches and buffers: that is the memory it needs.
    (ours_tokens, _), ours_mem = peak_rss_during(run_ours)
    (theirs_tokens, _), theirs_mem = peak_rss_during(run_theirs)
    ours_s, theirs_s = [], []
    for r in range(args.repeats):
        ours_s.append(run_ours()[1])
        theirs_s.append(run_theirs()[1])
        print(f"repeat {r + 1}/{args.repeats}: ours {n / ours_s[-1]:.1f} tok/s, transformers {n / theirs_s[-1]:.1f} tok/s",
              flush=True)
    ours_tps, theirs_tps = n / statistics.median(ours_s), n / statistics.median(theirs_s)
    ratio = ours_tps / theirs_tps
    weights_mb = sum(p.numel() * p.element_size() for p in ours.parameters()) / 2**20
    results = {
        "model": "SmolLM2-135M-Instruct (Q4_1 GGUF dequantized to fp32)", "prompt_tokens": len(ids),
        "new_tokens": n, "repeats": args.repeats, "threads": torch.get_num_threads(),
        "ours_tokens_per_s": round(ours_tps, 2), "transformers_tokens_per_s": round(theirs_tps, 2),
        "ratio": round(ratio, 3), "ours_peak_extra_mb": round(ours_mem / 2**20, 1),
        "transformers_peak_extra_mb": round(theirs_mem / 2**20, 1), "weights_mb": round(weights_mb, 1),
        "same_tokens": ours_tokens == theirs_tokens, "ours_seconds": ours_s, "transformers_seconds": theirs_s,
    }
    table = "\n".join([
        "| decoder | tokens/s | peak extra RSS in the first generate call (MB) |", "|---|---|---|",
        f"| ours (`pipelines.nn.generate`) | {ours_tps:.1f} | {results['ours_peak_extra_mb']} |",
        f"| transformers 4.57.6 `generate` | {theirs_tps:.1f} | {results['transformers_peak_extra_mb']} |",
        f"| **ratio ours / transformers** | **{ratio:.2f}×** | |",
    ])
    print(table)
    write_results("lm_decode", results,
                  [{"name": "greedy tokens/s, ours / transformers", "value": round(ratio, 3), "target": ">= 1.0",
                    "met": ratio >= 1.0}], table + f"\n\nfp32 weights: {weights_mb:.0f} MB; "
                  f"{len(ids)}-token chat prompt, {n} new tokens, median of {args.repeats}.")
    _plot(ours_s, theirs_s, n)


def _plot(ours_s, theirs_s, n):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    ax.bar(["ours", "transformers"], [n / statistics.median(ours_s), n / statistics.median(theirs_s)],
           color=["tab:blue", "tab:gray"])
    ax.set(ylabel="tokens/s (greedy, fp32, CPU)", title="SmolLM2-135M decoding")
    fig.tight_layout()
    fig.savefig(RESULTS / "lm_decode.png", dpi=100)


if __name__ == "__main__":
    main()
