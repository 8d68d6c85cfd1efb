"""Whole checkpoints through the lossless codec, one tensor at a time (bounded memory).

File layout (`.enec`):  b"ENECKPT1" | records | index JSON | u64 index offset
A record is one `lossless.encode` stream; the index maps tensor names to (offset, length), so a
reader can load any tensor alone. Sources: safetensors (read lazily) and Lightning/PyTorch `.ckpt`
files (memory-mapped; their `state_dict` is what is kept).
"""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from pipelines.compress.lossless import CodecError, decode, encode, stream_info
from pipelines.data.errors import require_file

MAGIC = b"ENECKPT1"
_SAFETENSORS_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.float64: "F64",
                       torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
                       torch.uint8: "U8", torch.bool: "BOOL"}


def _source_tensors(src: Path) -> Iterator[tuple[str, torch.Tensor]]:
    if src.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(src), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open has no __iter__)
                yield name, f.get_tensor(name)
        return
    try:
        ckpt = torch.load(src, map_location="cpu", mmap=True, weights_only=True)
    except Exception as err:  # a pickle that is not a checkpoint, or a truncated zip
        raise CodecError(f"cannot read checkpoint {src}: {err}") from err
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CodecError(f"{src} holds no state_dict of tensors")
    yield from state.items()


def compress_checkpoint(src: str | Path, dst: str | Path, overwrite: bool = False) -> dict:
    src, dst = require_file(src, "checkpoint"), Path(dst)
    if dst.exists() and not overwrite:
        raise FileExistsError(f"{dst} exists; pass --overwrite or choose another --out")
    dst.parent.mkdir(parents=True, exist_ok=True)
    index, raw_bytes, start = {}, 0, time.perf_counter()
    tmp = dst.with_suffix(dst.suffix + ".partial")  # a crash never leaves a half-written dst
    try:
        with open(tmp, "wb") as out:
            out.write(MAGIC)
            for name, tensor in _source_tensors(src):
                blob = encode(tensor)
                index[name] = [out.tell(), len(blob)]
                out.write(blob)
                raw_bytes += tensor.numel() * tensor.element_size()
            index_at = out.tell()
            out.write(json.dumps({"tensors": index, "source": src.name}).encode())
            out.write(struct.pack("<Q", index_at))
        tmp.replace(dst)
    finally:
        tmp.unlink(missing_ok=True)
    return {"tensors": len(index), "raw_bytes": raw_bytes, "compressed_bytes": dst.stat().st_size,
            "ratio": raw_bytes / max(dst.stat().st_size, 1), "seconds": time.perf_counter() - start}


def _read_index(f, path: Path) -> dict[str, list[int]]:
    f.seek(0, 2)
    size = f.tell()
    f.seek(0)
    if size < len(MAGIC) + 8 or f.read(len(MAGIC)) != MAGIC:
        raise CodecError(f"{path} is not a compressed checkpoint (bad magic or too short)")
    f.seek(size - 8)
    (index_at,) = struct.unpack("<Q", f.read(8))
    if not len(MAGIC) <= index_at < size - 8:
        raise CodecError(f"{path}: index offset out of range (truncated file?)")
    f.seek(index_at)
    try:
        return json.loads(f.read(size - 8 - index_at))["tensors"]
    except (json.JSONDecodeError, KeyError, UnicodeDecodeError) as err:
        raise CodecError(f"{path}: corrupt index ({err})") from None


def iter_compressed(path: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Tensors of a `.enec` checkpoint, decoded one at a time."""
    path = require_file(path, "compressed checkpoint")
    with open(path, "rb") as f:
        for name, (offset, length) in _read_index(f, path).items():
            f.seek(offset)
            try:
                yield name, decode(f.read(length))
            except CodecError as err:
                raise CodecError(f"{path}: tensor {name!r}: {err}") from None


def load_compressed(path: str | Path) -> dict[str, torch.Tensor]:
    """A state_dict from a `.enec` checkpoint, for `model.load_state_dict(...)`."""
    return dict(iter_compressed(path))


def decompress_checkpoint(src: str | Path, dst: str | Path, overwrite: bool = False) -> dict:
    """`.enec` → `.safetensors`, streaming: the header is built from the streams' own headers first."""
    src, dst = require_file(src, "compressed checkpoint"), Path(dst)
    if dst.exists() and not overwrite:
        raise FileExistsError(f"{dst} exists; pass --overwrite or choose another --out")
    start = time.perf_counter()
    with open(src, "rb") as f:
        index = _read_index(f, src)
        header, offset = {}, 0
        for name, (at, length) in index.items():
            f.seek(at)
            dtype, shape = stream_info(f.read(min(length, 4096)))
            nbytes = int(torch.Size(shape).numel()) * torch.empty(0, dtype=dtype).element_size()
            header[name] = {"dtype": _SAFETENSORS_DTYPES[dtype], "shape": list(shape),
                            "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    tmp = dst.with_suffix(dst.suffix + ".partial")
    try:
        with open(tmp, "wb") as out:
            out.write(struct.pack("<Q", len(head)) + head)
            for _, tensor in iter_compressed(src):
                out.write(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        tmp.replace(dst)
    finally:
        tmp.unlink(missing_ok=True)
    return {"tensors": len(index), "bytes": offset, "seconds": time.perf_counter() - start}
