"""CompactAttention vs dense chunked prefill: attention time per chunk, density, and SmolLM2 accuracy.

    python benchmarks/compact_attention.py [--contexts 8192 16384 32768 65536] [--skip-model]

Part 1 times one prefill chunk at the end of a long context on random tensors with SmolLM2's
head shapes (9 query heads, 3 KV heads, d = 64). The keys carry block "topics" so that attention
mass concentrates as it does in real models (on i.i.d. noise every block looks alike and a
mass-based selector keeps everything); the chunk's query blocks share two topics and each adds
one of four more, as neighbouring text shares its subject. Dense = the same kernel over every page; SDPA with an
explicit mask is reported as a second dense reference.
Part 2 runs the real SmolLM2-135M on ~8K tokens of real text (CPython's own documentation
strings) with a planted fact, and compares dense and sparse prefill: time, retrieval, and the
NLL of the answer.
"""

from __future__ import annotations

import argparse
import inspect
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, write_results  # noqa: E402

from pipelines.nn.compact_attention import PAGE, CompactAttention  # noqa: E402

H, HKV, D = 9, 3, 64


def topical_tensors(context: int, chunk: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    n_topics = 32
    topics = torch.nn.functional.normalize(torch.randn(n_topics, D, generator=g), dim=-1) * 6.0
    block_topic = torch.randint(0, n_topics, (context // PAGE,), generator=g)
    k = topics[block_topic].repeat_interleave(PAGE, 0)[None, None].expand(1, HKV, context, D).clone()
    k += torch.randn(1, HKV, context, D, generator=g)
    v = torch.randn(1, HKV, context, D, generator=g)
    # Neighbouring text shares its subject: the chunk seeks 2 topics, each query block one more of 4.
    shared = torch.randint(0, n_topics, (2,), generator=g)
    extra = torch.randint(0, n_topics, (4,), generator=g)[torch.randint(0, 4, (chunk // PAGE,), generator=g)]
    wanted = torch.cat([shared.expand(chunk // PAGE, 2), extra[:, None]], dim=1)
    q = topics[wanted].sum(1).repeat_interleave(PAGE, 0)[None, None].expand(1, H, chunk, D).clone()
    q += torch.randn(1, H, chunk, D, generator=g)
    return q, k, v


def time_call(fn, repeats: int = 3) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def sdpa_dense(q, k, v, past):
    c, s = q.shape[2], past + q.shape[2]
    mask = torch.arange(s)[None, :] <= (past + torch.arange(c))[:, None]
    return torch.nn.functional.scaled_dot_product_attention(
        q, k[:, :, :s].repeat_interleave(H // HKV, 1), v[:, :, :s].repeat_interleave(H // HKV, 1), attn_mask=mask)


def kernel_part(contexts: list[int], chunks: list[int], alpha: float) -> list[dict]:
    rows = []
    for chunk in chunks:
        for context in contexts:
            q, k, v = topical_tensors(context, chunk)
            past = context - chunk
            dense = CompactAttention(sparse=False)
            sparse = CompactAttention(alpha=alpha)
            gather = CompactAttention(alpha=alpha, execution="gather")
            t_dense = time_call(lambda: dense(q, k, v, past))  # noqa: B023
            t_sparse = time_call(lambda: sparse(q, k, v, past))  # noqa: B023
            t_gather = time_call(lambda: gather(q, k, v, past))  # noqa: B023
            t_sdpa = time_call(lambda: sdpa_dense(q, k, v, past), repeats=1)  # noqa: B023
            before, after = sparse.densities[-1]
            err = (sparse(q, k, v, past) - dense(q, k, v, past)).abs().max().item()
            rows.append({"chunk": chunk, "context": context, "dense_ms": t_dense * 1e3, "sdpa_mask_ms": t_sdpa * 1e3,
                         "compact_ms": t_sparse * 1e3, "speedup": t_dense / t_sparse,
                         "compact_gather_ms": t_gather * 1e3, "speedup_gather": t_dense / t_gather,
                         "density_before_union": before, "density_after_union": after, "max_abs_diff": err})
            print(f"chunk {chunk:5d} context {context:6d}: dense {t_dense * 1e3:8.1f} ms  SDPA+mask "
                  f"{t_sdpa * 1e3:8.1f} ms  compact runs {t_sparse * 1e3:7.1f} ms ({t_dense / t_sparse:4.1f}×)  "
                  f"gather {t_gather * 1e3:7.1f} ms ({t_dense / t_gather:4.1f}×)  "
                  f"density {before:.2f} → {after:.2f} after union", flush=True)
    return rows


def real_text(n_chars: int) -> str:
    """English prose from the standard library's docstrings: real text that ships with Python."""
    import importlib

    parts = []
    for name in ("argparse", "collections", "csv", "json", "logging", "pathlib", "re", "subprocess", "threading",
                 "unittest"):
        module = importlib.import_module(name)
        for _, obj in inspect.getmembers(module):
            doc = inspect.getdoc(obj)
            if doc and len(doc) > 200 and doc not in parts:
                parts.append(doc)
    text = "\n\n".join(parts)
    return text[:n_chars]


def model_part(alphas: list[float], target_tokens: int = 8000, chunk: int = 1024) -> list[dict]:
    from pipelines.nn.gguf import load_gguf

    loaded = load_gguf()
    model, tok = loaded.build(), loaded.tokenizer
    fact = "The secret passphrase for the archive is violet-otter-5821."
    question = "\n\nQuestion: What is the secret passphrase for the archive?\nAnswer: The secret passphrase for the archive is"
    answer = " violet-otter-5821."
    text = real_text(60000)
    rows = []
    for depth in (0.2, 0.5, 0.8):
        body_ids = tok.encode(text)[: target_tokens - 60]
        cut = int(len(body_ids) * depth)
        prompt = (tok.decode(body_ids[:cut]) + "\n\n" + fact + "\n\n" + tok.decode(body_ids[cut:]) + question)
        ids = tok.encode(prompt)[-(target_tokens - 16):]
        answer_ids = tok.encode(answer)
        for name, backend in [("dense", CompactAttention(sparse=False))] + [
                (f"compact α={a}", CompactAttention(alpha=a)) for a in alphas]:
            cache = model.new_cache(1, -(-(len(ids) + len(answer_ids) + 16) // PAGE) * PAGE)
            start = time.perf_counter()
            with torch.inference_mode():
                for s in range(0, len(ids), chunk):
                    logits = model(torch.tensor([ids[s:s + chunk]]), kv_cache=cache, attention=backend,
                                   last_logits_only=True)[:, -1]
                prefill_s = time.perf_counter() - start
                # Greedy answer (decode steps are dense over the cache) ...
                generated, step_logits = [], logits
                for _ in range(10):
                    generated.append(int(step_logits.argmax(-1)))
                    step_logits = model(torch.tensor([[generated[-1]]]), kv_cache=cache, last_logits_only=True)[:, -1]
                # ... then roll the cache back to the prompt and score the true answer, teacher-forced.
                cache.truncate(len(ids))
                nll, step_logits = 0.0, logits
                for t in answer_ids:
                    nll -= torch.log_softmax(step_logits[0], -1)[t].item()
                    step_logits = model(torch.tensor([[t]]), kv_cache=cache, last_logits_only=True)[:, -1]
            text_out = tok.decode(generated)
            density = statistics.mean(a for _, a in backend.densities) if backend.densities else 1.0
            rows.append({"depth": depth, "setting": name, "prompt_tokens": len(ids), "prefill_s": prefill_s,
                         "answer_nll_per_token": nll / len(answer_ids), "retrieved": "5821" in text_out,
                         "output": text_out.strip(), "mean_density_after_union": density})
            print(f"depth {depth}: {name:<16} prefill {prefill_s:6.1f} s  answer NLL/token "
                  f"{nll / len(answer_ids):.3f}  retrieved {'5821' in text_out}  → {text_out.strip()!r}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--contexts", type=int, nargs="+", default=[8192, 16384, 32768, 65536])
    parser.add_argument("--chunks", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--model-alphas", type=float, nargs="+", default=[0.02, 0.1])
    parser.add_argument("--skip-model", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(2)
    kernel = kernel_part(args.contexts, args.chunks, args.alpha)
    model = [] if args.skip_model else model_part(args.model_alphas)

    lines = ["| chunk | context | dense (all pages) ms | SDPA+mask ms | compact, zero-copy runs ms | speedup | "
             "compact, gathered pages ms | speedup | density before → after union |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['chunk']} | {r['context']} | {r['dense_ms']:.1f} | {r['sdpa_mask_ms']:.1f} | {r['compact_ms']:.1f} | "
              f"{r['speedup']:.2f}× | {r['compact_gather_ms']:.1f} | {r['speedup_gather']:.2f}× | "
              f"{r['density_before_union']:.2f} → {r['density_after_union']:.2f} |" for r in kernel]
    if model:
        lines += ["", "| depth | prefill | time (s) | answer NLL/token | retrieved | density after union |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['depth']} | {r['setting']} | {r['prefill_s']:.1f} | {r['answer_nll_per_token']:.3f} | "
                  f"{'yes' if r['retrieved'] else 'no'} | {r['mean_density_after_union']:.2f} |" for r in model]
    table = "\n".join(lines)
    at_32k = [r for r in kernel if r["context"] == 32768]
    best = max((r["speedup"] for r in at_32k), default=float("nan"))
    best_gather = max((r["speedup_gather"] for r in at_32k), default=float("nan"))
    targets = [{"name": "attention speedup at 32K, zero-copy page runs (best chunk size)", "value": round(best, 2),
                "target": ">= 2.0", "met": best >= 2.0},
               {"name": "attention speedup at 32K, gathered pages (deviation: copies; best chunk size)",
                "value": round(best_gather, 2), "target": ">= 2.0", "met": best_gather >= 2.0}]
    write_results("compact_attention", {"kernel": kernel, "model": model, "alpha": args.alpha}, targets, table)
    print(table)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for chunk in args.chunks:
        rs = [r for r in kernel if r["chunk"] == chunk]
        ax.plot([r["context"] for r in rs], [r["dense_ms"] for r in rs], "o--", label=f"dense, chunk {chunk}")
        ax.plot([r["context"] for r in rs], [r["compact_ms"] for r in rs], "o-", label=f"compact, chunk {chunk}")
    ax.set(xscale="log", yscale="log", xlabel="context tokens", ylabel="attention ms per chunk",
           title="Chunked prefill attention (SmolLM2 head shapes, CPU)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / "compact_attention.png", dpi=100)


if __name__ == "__main__":
    main()
