import struct

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.compress.lossless import CodecError, decode, encode, pack_codes, unpack_codes

FLOATS = [torch.float32, torch.bfloat16, torch.float16]
INT_OF = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype in INT_OF:
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.view(INT_OF[a.dtype]), b.view(INT_OF[b.dtype]))
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


@st.composite
def float_tensors(draw):
    dtype = draw(st.sampled_from(FLOATS))
    n = draw(st.integers(0, 3000))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    kind = draw(st.sampled_from(["weights", "bits", "mixed"]))
    int_dtype = {torch.float32: np.int32, torch.bfloat16: np.int16, torch.float16: np.int16}[dtype]
    if kind == "bits":  # any bit pattern at all: NaN payloads, subnormals, infinities
        info = np.iinfo(int_dtype)
        bits = rng.integers(info.min, info.max, n, dtype=int_dtype, endpoint=True)
        return torch.from_numpy(bits).view(dtype)
    values = torch.from_numpy(rng.normal(0, draw(st.sampled_from([1e-3, 0.02, 1.0, 1e4])), n)).to(dtype)
    if kind == "mixed" and n:
        specials = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan"), 1e-40, -5e-45]).to(dtype)
        idx = torch.from_numpy(rng.integers(0, n, min(n, 20)))
        values[idx] = specials[torch.from_numpy(rng.integers(0, len(specials), len(idx)))]
    return values


@settings(max_examples=150, deadline=None)
@given(float_tensors())
def test_round_trip_is_bit_exact(tensor):
    assert same_bits(decode(encode(tensor)), tensor)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("shape", [(0,), (), (1,), (1, 1, 1), (3, 0, 2), (513,), (64, 129)])
def test_shapes_and_single_threaded_decode(dtype, shape):
    tensor = (torch.randn(shape) * 0.05).to(dtype)
    data = encode(tensor)
    assert same_bits(decode(data), tensor) and same_bits(decode(data, threads=1), tensor)


@pytest.mark.parametrize("dtype", FLOATS)
def test_every_special_value_and_nan_payload(dtype):
    int_dtype = INT_OF[dtype]
    bits = {torch.int32: [0, -2**31, 0x7F800000, -0x800000, 0x7FC00001, 0x7F800001, -1, 1, 0x007FFFFF],
            torch.int16: [0, -2**15, 0x7F80, 0x7C00, 0x7FC1, 0x7E01, -1, 1, 0x03FF, 0x007F]}[int_dtype]
    tensor = torch.tensor(bits, dtype=int_dtype).view(dtype)
    assert same_bits(decode(encode(tensor)), tensor)


@pytest.mark.parametrize("tensor", [torch.arange(10), torch.tensor([True, False]), torch.randn(5, dtype=torch.float64),
                                    torch.tensor(3, dtype=torch.int8), torch.zeros(0, dtype=torch.int64)])
def test_other_dtypes_are_stored_raw(tensor):
    out = decode(encode(tensor))
    assert out.dtype == tensor.dtype and torch.equal(out, tensor)


def test_weights_compress_to_the_exponent_entropy():
    weights = (torch.randn(256, 1024) * 0.02).to(torch.bfloat16)
    ratio = weights.numel() * 2 / len(encode(weights))
    assert 1.3 <= ratio <= 1.6  # sign+mantissa stay raw; the ceiling is about 16/(8+2.6)


@pytest.mark.parametrize("width", range(1, 9))
def test_hierarchical_packing_layout(width):
    codes = np.random.default_rng(width).integers(0, 1 << width, (3, 64)).astype(np.uint8)
    packed = pack_codes(codes, width)
    assert packed.shape == (3, 8 * width)  # 8 codes → exactly `width` bytes
    # Lane layout: code i of a group of 8 sits at bits [i·w, (i+1)·w) of its little-endian lane.
    lane = int.from_bytes(packed[0, :width].tobytes(), "little")
    assert [(lane >> (i * width)) & ((1 << width) - 1) for i in range(8)] == codes[0, :8].tolist()
    np.testing.assert_array_equal(unpack_codes(packed, width, 64), codes)


def test_corruption_is_detected_never_decoded_wrong():
    data = bytearray(encode((torch.randn(4000) * 0.02).to(torch.bfloat16)))
    rng = np.random.default_rng(0)
    for _ in range(40):
        broken = bytearray(data)
        broken[int(rng.integers(0, len(data)))] ^= 1 << int(rng.integers(0, 8))
        with pytest.raises(CodecError):
            decode(bytes(broken))


def test_truncated_stream_and_wrong_version_are_refused():
    data = encode(torch.randn(1000))
    for cut in (0, 3, 20, len(data) // 2, len(data) - 1):
        with pytest.raises(CodecError, match="short|truncated"):
            decode(data[:cut])
    with pytest.raises(CodecError, match="truncated"):
        decode(data + b"\x00")
    future = bytearray(data)
    struct.pack_into("<B", future, 4, 99)
    with pytest.raises(CodecError, match="version 99"):
        decode(bytes(future))
    with pytest.raises(CodecError, match="not an ENEC stream"):
        decode(b"ZSTD" + data[4:])
