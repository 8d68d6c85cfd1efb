"""`make demo`: every installed pipeline at tiny scale, end to end, summarised in REPORT.md.

The core contributes the first stage; each domain adds one through the `pipelines.demo` entry-point
group: a function `stage(out: Path) -> DemoSection` that trains/evaluates at tiny scale on local
defaults and returns its part of the report (a table and links to plots it wrote under `out`).
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib.metadata import entry_points
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class DemoSection:
    title: str
    body: str  # markdown: tables and image links relative to the report
    metrics: dict[str, float] = field(default_factory=dict)  # headline numbers, also saved as JSON


def shipped_config(relative: str) -> Path:
    """A YAML under the repository's configs/ folder; the demo runs what users would run."""
    path = REPO_ROOT / "configs" / relative
    if not path.is_file():
        raise FileNotFoundError(f"config {path} not found; run the demo from a clone of the repository")
    return path


def read_metrics(csv_path: Path) -> list[dict[str, str]]:
    with open(csv_path, newline="") as f:
        return list(csv.DictReader(f))


def metric_series(rows: list[dict[str, str]], key: str, by: str = "step") -> tuple[list[float], list[float]]:
    pairs = [(float(r[by]), float(r[key])) for r in rows if r.get(key) not in (None, "")]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def core_stage(out: Path) -> DemoSection:
    """Synthetic shapes → `pipelines fit` → `pipelines validate` from the last checkpoint."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipelines.cli import lightning_cli
    from pipelines.data.synth_shapes import write_shapes_dataset

    data = out / "data" / "shapes"
    if not (data / "val").is_dir():
        write_shapes_dataset(data, seed=0)
    config = str(shipped_config("core/shapes_tiny.yaml"))
    common = ["--config", config, "--data.init_args.root", str(data), "--runs_dir", str(out)]
    start = time.perf_counter()
    fit = lightning_cli(["fit", *common, "--name", "shapes"])
    fit_seconds = time.perf_counter() - start
    run_dir = fit.run_dir
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    val = lightning_cli(["validate", *common, "--ckpt_path", str(ckpt)])
    val_metrics = {k: float(v) for k, v in val.trainer.callback_metrics.items()}

    rows = read_metrics(run_dir / "metrics.csv")
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.2))
    ax_loss.plot(*metric_series(rows, "train/loss_step"), label="train (step)")
    ax_loss.plot(*metric_series(rows, "val/loss"), "o-", label="val (epoch)")
    ax_loss.set(xlabel="step", ylabel="cross-entropy", title="loss")
    ax_loss.legend()
    ax_acc.plot(*metric_series(rows, "val/acc", by="epoch"), "o-")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", ylim=(0, 1), title="validation accuracy (4 classes)")
    fig.tight_layout()
    plot = out / "core_shapes.png"
    fig.savefig(plot, dpi=100)
    plt.close(fig)

    n_params = sum(p.numel() for p in fit.model.parameters())
    table = markdown_table(
        ["job", "params", "train time (s)", "steps", "val acc", "val loss"],
        [["ImageClassifier (ViT) on synthetic shapes", n_params, fit_seconds, fit.trainer.global_step,
          val_metrics["val/acc"], val_metrics["val/loss"]]],
    )
    body = (f"`pipelines fit --config configs/core/shapes_tiny.yaml` → run folder `{run_dir}`, then "
            f"`pipelines validate` on `{ckpt.name}`. Chance is 0.25.\n\n{table}\n\n![curves]({plot.name})\n")
    return DemoSection("Core: image classifier on synthetic shapes", body,
                       {"val_acc": val_metrics["val/acc"], "val_loss": val_metrics["val/loss"],
                        "train_seconds": fit_seconds})


LM_PROMPTS = ["What is the capital of France?", "Name three primary colours.", "What is 7 times 8?"]


def lm_stage(out: Path) -> DemoSection:
    """The pretrained SmolLM2-135M-Instruct from its GGUF: greedy chat answers with the KV-cached decoder."""
    from pipelines.nn.generate import generate
    from pipelines.nn.gguf import load_gguf

    loaded = load_gguf()
    model, tokenizer = loaded.build(), loaded.tokenizer
    stop = [tokenizer.eos_id, tokenizer.tokenizer.token_to_id("<|im_end|>")]
    rows, new_tokens, seconds = [], 0, 0.0
    for prompt in LM_PROMPTS:
        ids = tokenizer.encode(tokenizer.apply_chat_template([{"role": "user", "content": prompt}]))
        result = generate(model, [ids], max_new_tokens=48, stop_ids=stop)
        answer = tokenizer.decode(result.tokens[0]).strip().replace("\n", " ").replace("|", "/")
        rows.append([prompt, answer, len(result.tokens[0]), result.tokens_per_second])
        new_tokens, seconds = new_tokens + result.new_tokens, seconds + result.seconds
    table = markdown_table(["prompt", "answer (greedy)", "tokens", "tokens/s"], rows)
    body = (f"`pipelines lm generate --prompt ...` on the bundled GGUF ({model.num_parameters / 1e6:.0f}M parameters, "
            f"fp32, KV cache).\n\n{table}\n")
    return DemoSection("Language model: SmolLM2-135M-Instruct", body, {"tokens_per_s": new_tokens / seconds})


def compress_stage(out: Path) -> DemoSection:
    """The decoder saved as safetensors in bf16, compressed losslessly, reloaded bit-exact."""
    import torch

    from pipelines.compress.lossless_checkpoint import compress_checkpoint, load_compressed
    from pipelines.nn.checkpoint import save_decoder
    from pipelines.nn.gguf import load_gguf

    folder = out / "smollm2_bf16"
    model = load_gguf().build(torch.bfloat16)
    save_decoder(folder, model, overwrite=True)
    stats = compress_checkpoint(folder / "model.safetensors", folder / "model.enec", overwrite=True)
    start = time.perf_counter()
    restored = load_compressed(folder / "model.enec")
    load_s = time.perf_counter() - start
    exact = all(torch.equal(restored[k].view(torch.int16), v.view(torch.int16))
                for k, v in model.state_dict().items() if k in restored)
    table = markdown_table(
        ["checkpoint", "safetensors MiB", ".enec MiB", "ratio", "compress s", "decompress s", "bit-exact"],
        [["SmolLM2-135M bf16", (folder / "model.safetensors").stat().st_size / 2**20,
          stats["compressed_bytes"] / 2**20, stats["ratio"], stats["seconds"], load_s, "yes" if exact else "NO"]])
    body = (f"`pipelines compress lossless --ckpt {folder / 'model.safetensors'} --out {folder / 'model.enec'}` "
            f"(ENEC-style exponent coding).\n\n{table}\n")
    if not exact:
        raise RuntimeError("lossless round trip was not bit-exact")
    return DemoSection("Lossless weight compression", body, {"ratio": stats["ratio"]})


def demo_stages() -> dict[str, Callable[[Path], DemoSection]]:
    stages: dict[str, Callable[[Path], DemoSection]] = {"core": core_stage, "lm": lm_stage, "compress": compress_stage}
    for ep in sorted(entry_points(group="pipelines.demo"), key=lambda e: e.name):
        stages[ep.name] = ep.load()
    return stages


def run_demo(out: Path, only: list[str] | None = None) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stages = demo_stages()
    unknown = sorted(set(only or []) - set(stages))
    if unknown:
        raise SystemExit(f"error: unknown demo stage(s) {unknown}; installed: {sorted(stages)}")
    chosen = [name for name in stages if not only or name in only]
    sections, timings = [], []
    for i, name in enumerate(chosen, 1):
        print(f"\n=== demo stage {i}/{len(chosen)}: {name} ===", flush=True)
        start = time.perf_counter()
        sections.append(stages[name](out))
        timings.append([name, round(time.perf_counter() - start, 1)])
    report = out / "REPORT.md"
    parts = ["# Demo report", "", "Made by `make demo` (`pipelines demo`) on local defaults: CPU, files under "
             f"`{out}`.", "", markdown_table(["stage", "seconds"], timings), ""]
    for section in sections:
        parts += [f"## {section.title}", "", section.body, ""]
    report.write_text("\n".join(parts))
    summary = {name: {**asdict(sec), "seconds": t[1]} for name, sec, t in zip(chosen, sections, timings, strict=True)}
    (out / "demo_metrics.json").write_text(json.dumps(summary, indent=2))
    print(f"\nwrote {report}")
    return report
