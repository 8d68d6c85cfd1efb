"""Lightning Attention-2 vs PyTorch SDPA (causal softmax) on CPU: time per token and peak memory vs n.

    python benchmarks/lightning_attention.py [--max-n 32768] [--sdpa-max-n 16384]

b=1, h=8, d=e=64, fp32, forward+backward. Each (method, n) runs in a fresh subprocess so that its
peak resident memory is its own. SDPA stops at --sdpa-max-n: its cost grows as n² (≈4 TFLOP at
32K, minutes on 2 cores) and the target compares at 16K.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, write_results  # noqa: E402

HEADS, DIM = 8, 64


def measure(method: str, n: int, repeats: int) -> dict:
    """Run in the child: seconds per forward+backward (best of `repeats`) and peak RSS."""
    import torch
    import torch.nn.functional as F

    from pipelines.nn.lightning_attention import alibi_log_decay, lightning_attention

    torch.manual_seed(0)
    q, k, v = (torch.randn(1, HEADS, n, DIM, requires_grad=True) for _ in range(3))
    decay = alibi_log_decay(HEADS)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def step():
        if method == "lightning":
            out = lightning_attention(q / 8, k / 8, v, decay, block_size=64)
        else:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        out.sum().backward()

    step()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seconds": best, "us_per_token": 1e6 * best / n, "peak_mib": peak / 1024,
            "peak_over_start_mib": (peak - base_rss) / 1024}


def run_child(method: str, n: int, repeats: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", method, str(n), str(repeats)], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-n", type=int, default=32768)
    parser.add_argument("--sdpa-max-n", type=int, default=16384)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        method, n, repeats = args.child
        print(json.dumps(measure(method, int(n), int(repeats))))
        return
    ns = [n for n in (1024, 2048, 4096, 8192, 16384, 32768) if n <= args.max_n]
    rows = {"lightning": {}, "sdpa": {}}
    for n in ns:
        for method in rows:
            if method == "sdpa" and n > args.sdpa_max_n:
                continue
            repeats = 3 if n <= 8192 else 1
            rows[method][n] = run_child(method, n, repeats)
            r = rows[method][n]
            print(f"{method:9s} n={n:6d}: {r['us_per_token']:8.1f} µs/token, peak {r['peak_mib']:.0f} MiB", flush=True)

    lines = ["| n | lightning µs/token | SDPA µs/token | SDPA / lightning | lightning peak MiB | SDPA peak MiB |",
             "|---|---|---|---|---|---|"]
    for n in ns:
        la, sd = rows["lightning"][n], rows["sdpa"].get(n)
        lines.append(f"| {n} | {la['us_per_token']:.1f} | {sd['us_per_token']:.1f} | "
                     f"{sd['seconds'] / la['seconds']:.2f}× | {la['peak_mib']:.0f} | {sd['peak_mib']:.0f} |"
                     if sd else f"| {n} | {la['us_per_token']:.1f} | – | – | {la['peak_mib']:.0f} | – |")
    la = rows["lightning"]
    flat = la[ns[-1]]["us_per_token"] / la[ns[0]]["us_per_token"]
    targets = [{"name": f"lightning time per token at {ns[-1]} / at {ns[0]}", "value": round(flat, 3),
                "target": "<= 1.3", "met": flat <= 1.3}]
    if 16384 in rows["sdpa"]:
        speedup = rows["sdpa"][16384]["seconds"] / la[16384]["seconds"]
        targets.append({"name": "lightning vs SDPA speed-up at 16K (forward+backward)", "value": round(speedup, 2),
                        "target": ">= 5", "met": speedup >= 5})
    per_token_memory = [(la[n]["peak_over_start_mib"]) / n for n in ns]
    growth = per_token_memory[-1] / per_token_memory[0]
    targets.append({"name": "lightning peak memory per token, largest n / smallest n (flat = linear total)",
                    "value": round(growth, 3), "target": "<= 1.3", "met": growth <= 1.3})
    table = "\n".join(lines)
    write_results("lightning_attention", {"heads": HEADS, "dim": DIM, "rows": rows}, targets, table)
    plot(rows, RESULTS / "lightning_attention.png")
    print(table)


def plot(rows: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(10, 3.6))
    for method, label in (("lightning", "Lightning Attention-2"), ("sdpa", "SDPA causal softmax")):
        ns = sorted(rows[method])
        ax_t.plot(ns, [rows[method][n]["us_per_token"] for n in ns], "o-", label=label)
        ax_m.plot(ns, [rows[method][n]["peak_mib"] for n in ns], "o-", label=label)
    for ax, ylabel in ((ax_t, "µs per token (forward+backward)"), (ax_m, "peak RSS (MiB)")):
        ax.set(xscale="log", yscale="log", xlabel="sequence length n", ylabel=ylabel)
        ax.legend()
    fig.suptitle("b=1, h=8, d=e=64, fp32, CPU")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
