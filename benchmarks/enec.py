"""Lossless weight coding: our ENEC-style codec vs zstd (levels 3, 19) vs rANS-coded exponents.

    python benchmarks/enec.py

Weights: SmolLM2-135M-Instruct in bf16 and fp32 (its GGUF is 4-bit, so these are dequantized
Q4_1/Q8_0 values: at most 16 distinct values per 32 weights, which is atypical and favours any
entropy coder), and a ViT trained here by `pipelines fit` (fp32 and bf16). Every codec sees the
same tensors one at a time; throughput is total raw bytes / total time on this machine's cores.
Our codec and the rANS baseline are checked bit-exact on every tensor.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, write_results  # noqa: E402

from pipelines.compress.lossless import FORMATS, decode, encode  # noqa: E402

CACHE = Path("runs/bench_enec")


def smollm2_tensors(dtype: torch.dtype) -> list[torch.Tensor]:
    from pipelines.nn.gguf import load_gguf

    return [t.to(dtype).contiguous() for t in load_gguf().state_dict.values()]


def trained_vit_tensors(dtype: torch.dtype) -> list[torch.Tensor]:
    """The core demo's ViT, trained here once and cached under runs/bench_enec/."""
    ckpt = CACHE / "vit" / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():
        from pipelines.cli import lightning_cli
        from pipelines.data.synth_shapes import write_shapes_dataset

        data = CACHE / "shapes"
        if not (data / "val").is_dir():
            write_shapes_dataset(data)
        lightning_cli(["fit", "--config", "configs/core/shapes_tiny.yaml", "--data.init_args.root", str(data),
                       "--runs_dir", str(CACHE), "--name", "vit", "--trainer.enable_progress_bar", "false"])
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    return [t.to(dtype).contiguous() for t in state.values() if t.is_floating_point()]


def raw_bytes(t: torch.Tensor) -> bytes:
    return t.reshape(-1).view(torch.uint8).numpy().tobytes()


class RansExponents:
    """Entropy-coded baseline: exponents through rANS (constriction) with a per-tensor histogram,
    sign+mantissa stored raw, as DietGPU-Float/ZipNN-style coders do."""

    name = "rANS exponents"

    def __init__(self) -> None:
        import constriction

        self.constriction = constriction

    def split(self, t: torch.Tensor):
        fmt = FORMATS[t.dtype]
        bits = t.reshape(-1).view(torch.int32 if fmt.int_dtype.itemsize == 4 else torch.int16).numpy().view(fmt.int_dtype)
        exp = ((bits >> fmt.mant_bits) & ((1 << fmt.exp_bits) - 1)).astype(np.int32)
        rest = bits & ~np.array(((1 << fmt.exp_bits) - 1) << fmt.mant_bits, fmt.int_dtype)
        return fmt, exp, rest

    def encode(self, t: torch.Tensor):
        fmt, exp, rest = self.split(t)
        hist = np.bincount(exp, minlength=1 << fmt.exp_bits).astype(np.float64)
        model = self.constriction.stream.model.Categorical(hist / hist.sum(), perfect=False)
        coder = self.constriction.stream.stack.AnsCoder()
        coder.encode_reverse(exp, model)
        words = coder.get_compressed()
        # Stored: the coded exponents, a 16-bit frequency table, and sign+mantissa bits raw.
        size = words.nbytes + 2 * hist.size + exp.size * (1 + fmt.mant_bits) / 8
        return (words, hist, rest, fmt), size

    def decode(self, payload) -> np.ndarray:
        words, hist, rest, fmt = payload
        model = self.constriction.stream.model.Categorical(hist / hist.sum(), perfect=False)
        exp = self.constriction.stream.stack.AnsCoder(words).decode(model, rest.size)
        return rest | (exp.astype(fmt.int_dtype) << fmt.mant_bits)


def measure(tensors: list[torch.Tensor]) -> dict[str, dict]:
    total = sum(t.numel() * t.element_size() for t in tensors)
    out = {}

    def record(name, enc_s, dec_s, size):
        out[name] = {"ratio": total / size, "encode_MBps": total / enc_s / 1e6, "decode_MBps": total / dec_s / 1e6}
        print(f"  {name:<16} ratio {total / size:.3f}  encode {total / enc_s / 1e6:8.1f} MB/s  "
              f"decode {total / dec_s / 1e6:8.1f} MB/s", flush=True)

    enc_s = dec_s = size = 0.0
    for t in tensors:
        start = time.perf_counter()
        blob = encode(t)
        enc_s += time.perf_counter() - start
        start = time.perf_counter()
        back = decode(blob)
        dec_s += time.perf_counter() - start
        assert torch.equal(back.reshape(-1).view(torch.uint8), t.reshape(-1).view(torch.uint8))
        size += len(blob)
    record("ours (ENEC-style)", enc_s, dec_s, size)

    for level in (3, 19):
        compressor = zstandard.ZstdCompressor(level=level, threads=2)
        decompressor = zstandard.ZstdDecompressor()
        enc_s = dec_s = size = 0.0
        for t in tensors:
            data = raw_bytes(t)
            start = time.perf_counter()
            blob = compressor.compress(data)
            enc_s += time.perf_counter() - start
            start = time.perf_counter()
            decompressor.decompress(blob)
            dec_s += time.perf_counter() - start
            size += len(blob)
        record(f"zstd-{level}", enc_s, dec_s, size)

    rans = RansExponents()
    enc_s = dec_s = size = 0.0
    for t in tensors:
        start = time.perf_counter()
        payload, nbytes = rans.encode(t)
        enc_s += time.perf_counter() - start
        start = time.perf_counter()
        bits = rans.decode(payload)
        dec_s += time.perf_counter() - start
        assert np.array_equal(
            bits, t.reshape(-1).view(torch.int32 if t.element_size() == 4 else torch.int16).numpy().view(bits.dtype))
        size += nbytes
    record(rans.name, enc_s, dec_s, size)
    return {"raw_MB": total / 1e6, "tensors": len(tensors), "codecs": out}


def main() -> None:
    torch.set_num_threads(2)
    sets = {
        "SmolLM2-135M bf16 (dequantized 4-bit)": lambda: smollm2_tensors(torch.bfloat16),
        "SmolLM2-135M fp32 (dequantized 4-bit)": lambda: smollm2_tensors(torch.float32),
        "ViT trained here, fp32": lambda: trained_vit_tensors(torch.float32),
        "ViT trained here, bf16": lambda: trained_vit_tensors(torch.bfloat16),
    }
    results = {}
    for name, load in sets.items():
        print(f"{name}:", flush=True)
        results[name] = measure(load())

    lines = ["| weights | codec | ratio | encode MB/s | decode MB/s |", "|---|---|---|---|---|"]
    for name, res in results.items():
        for codec, r in res["codecs"].items():
            lines.append(f"| {name} ({res['raw_MB']:.1f} MB) | {codec} | {r['ratio']:.3f} | "
                         f"{r['encode_MBps']:.1f} | {r['decode_MBps']:.1f} |")
    table = "\n".join(lines)
    targets = []
    for name in ("SmolLM2-135M bf16 (dequantized 4-bit)", "ViT trained here, bf16"):
        codecs = results[name]["codecs"]
        ours, z3, z19 = codecs["ours (ENEC-style)"], codecs["zstd-3"], codecs["zstd-19"]
        targets += [
            {"name": f"{name}: compression ratio", "value": round(ours["ratio"], 3), "target": ">= 1.3",
             "met": ours["ratio"] >= 1.3},
            {"name": f"{name}: ratio above zstd-19's", "value": f"{ours['ratio']:.3f} vs {z19['ratio']:.3f}",
             "target": "ours > zstd-19", "met": ours["ratio"] > z19["ratio"]},
            {"name": f"{name}: decode MB/s above zstd-19's", "target": "ours > zstd-19",
             "value": f"{ours['decode_MBps']:.0f} vs {z19['decode_MBps']:.0f}",
             "met": ours["decode_MBps"] > z19["decode_MBps"]},
            {"name": f"{name}: decode MB/s above zstd-3's", "target": "ours > zstd-3",
             "value": f"{ours['decode_MBps']:.0f} vs {z3['decode_MBps']:.0f}", "met": ours["decode_MBps"] > z3["decode_MBps"]},
        ]
    main_set = results["SmolLM2-135M bf16 (dequantized 4-bit)"]["codecs"]
    print(table)
    write_results("enec", results, targets, table + "\n\nSmolLM2's weights come from a 4-bit GGUF (Q4_1/Q8_0), "
                  "dequantized: few distinct values per block, unlike weights trained in floating point.")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for codec, r in main_set.items():
        ax.scatter(r["decode_MBps"], r["ratio"], s=60)
        ax.annotate(codec, (r["decode_MBps"], r["ratio"]), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set(xlabel="decode MB/s (2 cores)", ylabel="compression ratio", xscale="log",
           title="SmolLM2-135M bf16: ratio vs decode speed")
    fig.tight_layout()
    fig.savefig(RESULTS / "enec.png", dpi=100)


if __name__ == "__main__":
    main()
