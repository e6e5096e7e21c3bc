"""Every ``example`` block of SPEC.md, decoded by weightpack, gives the bytes SPEC.md states."""
import re
from pathlib import Path

import numpy as np
import pytest

import weightpack as wp
from weightpack.bits import NBitArray
from weightpack.formats.base import parse_int_type

SPEC = Path(__file__).resolve().parent.parent / "SPEC.md"
_FLOATS = {"fp16": np.float16, "fp32": np.float32}


def spec_examples() -> list[dict]:
    blocks = re.findall(r"```example\n(.*?)```", SPEC.read_text(), re.S)
    examples = []
    for block in blocks:
        fields = {}
        for line in block.strip().splitlines():
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
        examples.append(fields)
    return examples


def parse_array(text: str):
    """'fp16 shape=2,4 hex=...' -> numpy array; 'uint2 shape=... hex=...' -> NBitArray."""
    type_name, *attrs = text.split()
    attrs = dict(a.split("=", 1) for a in attrs)
    shape = tuple(int(d) for d in attrs["shape"].split(","))
    raw = bytes.fromhex(attrs["hex"])
    if type_name in _FLOATS:
        return np.frombuffer(raw, _FLOATS[type_name]).reshape(shape)
    nbits, signed = parse_int_type(type_name)
    return NBitArray(np.frombuffer(raw, np.uint8), nbits, shape, signed=signed)


EXAMPLES = spec_examples()
TENSOR_EXAMPLES = [e for e in EXAMPLES if "type" in e]
BIT_EXAMPLES = [e for e in EXAMPLES if "bits" in e]


def test_spec_has_examples_for_every_type():
    documented = {e["type"] for e in TENSOR_EXAMPLES}
    assert documented == {
        "SparseTensor", "PalettizedTensor", "QuantizedTensor", "SparsePalettizedTensor", "SparseQuantizedTensor"
    }
    assert len(BIT_EXAMPLES) >= 4


@pytest.mark.parametrize("example", BIT_EXAMPLES, ids=lambda e: e["bits"].split()[0])
def test_bit_stream_example(example, backend):
    type_name, values = example["bits"].split()
    nbits, signed = parse_int_type(type_name)
    values = np.array([int(v) for v in values.removeprefix("values=").split(",")])
    packed = wp.pack_bits(values, nbits, signed=signed, backend=backend)
    assert packed.tobytes().hex() == example["packed"]
    unpacked = wp.unpack_bits(packed, nbits, values.size, signed=signed, backend=backend)
    assert unpacked.tolist() == values.tolist()


@pytest.mark.parametrize("example", TENSOR_EXAMPLES, ids=lambda e: e["type"])
def test_tensor_example(example):
    cls = getattr(wp, example["type"])
    arrays = {k: parse_array(v) for k, v in example.items() if k not in ("type", "output", "vector_axis")}
    vector_axis = int(example["vector_axis"]) if "vector_axis" in example else None
    if "vector_axis" in example:
        arrays["vector_axis"] = vector_axis
    tensor = cls(**arrays)
    expected = parse_array(example["output"])
    result = tensor.decompress(backend="numpy")
    assert result.dtype == expected.dtype and result.shape == expected.shape
    assert result.tobytes().hex() == expected.tobytes().hex()
