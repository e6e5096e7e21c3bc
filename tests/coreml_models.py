"""Small Core ML models and corrupted packages, shared by the Core ML package, drop-in and CLI tests."""
from __future__ import annotations

import os
import shutil
import struct

import coremltools as ct
import coremltools.optimize.coreml as cto
import numpy as np
from coremltools.converters.mil import Builder as mb

from strategies import assert_same_bits
from weightpack.coreml.blob import BlobReader
from weightpack.coreml.values import dense

THRESHOLD = 100  # weight_threshold for the tests' models: their weights have 8,192 elements, biases 64-128


def linear_model(target="iOS18", dtype=np.float16, seed=0, levels=None):
    """An ML program of three linear layers (64x128, 128x64, 64x128) with a relu, converted by
    coremltools; ``levels``: round every weight to that many steps per unit (few distinct values)."""
    rng = np.random.default_rng(seed)
    weights = [
        (rng.standard_t(4, (64, 128)) * 0.05).astype(np.float32),
        (rng.standard_t(4, (128, 64)) * 0.05).astype(np.float32),
        (rng.standard_normal((64, 128)) * np.exp(rng.normal(0, 0.3, (64, 1)))).astype(np.float32),
    ]
    if levels is not None:
        weights = [np.round(w * levels) / levels for w in weights]
    opset = getattr(ct.target, target)

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 128))], opset_version=opset)
    def prog(x):
        x = mb.linear(x=x, weight=weights[0], name="l0")
        x = mb.relu(x=x)
        x = mb.linear(x=x, weight=weights[1], name="l1")
        return mb.linear(x=x, weight=weights[2], name="l2")

    precision = ct.precision.FLOAT16 if dtype == np.float16 else ct.precision.FLOAT32
    return ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=opset, skip_model_load=True, compute_precision=precision)


def dense_weights(mlmodel) -> dict:
    """{const name: value} of every const of at least 10 elements (coremltools' view of the model)."""
    return {name: meta.val for name, meta in cto.get_weights_metadata(mlmodel, weight_threshold=0).items()}


def coremltools_decompressed(mlmodel) -> dict:
    """{var name: value} of every const after coremltools' own decompression of ``mlmodel``.

    This is ``cto.decompress_weights`` (its ``WeightDecompressor`` pass: every constexpr op
    replaced by a const of its ``materialized_val_inference()``, named as the var it replaces)
    stopped before the program is converted back to a model. That conversion runs coremltools'
    default pass pipeline, whose ``const_deduplication`` merges consts of 100+ elements with equal
    values into the first one: a weight equal to another weight, or a 1-D sparse-palettized weight
    with an all-ones mask (equal to the decompressed ``nonzero_data`` output of its
    ``constexpr_lut_to_sparse``), then has no const of its own name. The values are the same either
    way; the names are kept here.
    """
    from coremltools.models.utils import _apply_graph_pass
    from coremltools.optimize.coreml._quantization_passes import WeightDecompressor

    prog = _apply_graph_pass(mlmodel, WeightDecompressor(op_selector=lambda op: True), return_pymil_prog=True)
    found = {}

    def walk(block):
        for op in block.operations:
            assert not op.op_type.startswith("constexpr_"), f"{op.name}: {op.op_type} left undecompressed"
            if op.op_type == "const":
                found[op.outputs[0].name] = op.outputs[0].val
            for nested in op.blocks:
                walk(nested)

    for function in prog.functions.values():
        walk(function)
    return found


def assert_decompresses_like_coremltools(mlmodel, weights: dict) -> None:
    """Each of ``weights`` ({name: weightpack tensor or array}) decompresses to exactly the const
    coremltools' decompression gives for that name (:func:`coremltools_decompressed`)."""
    reference = coremltools_decompressed(mlmodel)
    assert set(weights) <= set(reference), set(weights) - set(reference)
    for name, value in weights.items():
        assert_same_bits(dense(value), reference[name])


def constexpr_ops(mlmodel) -> list:
    """The constexpr op types of the main function, in program order."""
    function = mlmodel.get_spec().mlProgram.functions["main"]
    block = function.block_specializations[function.opset]
    return [op.type for op in block.operations if op.type.startswith("constexpr_")]


def weight_bin(package) -> str:
    return os.path.join(package, "Data", "com.apple.CoreML", "weights", "weight.bin")


def _records(path):
    with BlobReader(path) as reader:
        return list(reader)


def _patch(path, offset, fmt, value):
    with open(path, "r+b") as file:
        file.seek(offset)
        file.write(struct.pack(fmt, value))


def _truncate(path, length):
    with open(path, "r+b") as file:
        file.truncate(length)


def corrupt(package, kind: str) -> None:
    """Damage the weight.bin of ``package`` in place, as CORRUPTIONS names."""
    path = weight_bin(package)
    records = _records(path)
    first = records[0]
    subbyte = next(r for r in records if r.dtype in ("uint1", "uint2", "uint3", "uint4", "uint6", "int4"))
    size = os.path.getsize(path)
    actions = {
        "empty file": lambda: _truncate(path, 0),
        "truncated header": lambda: _truncate(path, 40),
        "truncated metadata": lambda: _truncate(path, records[1].offset + 20),
        "truncated payload": lambda: _truncate(path, records[-1].data_offset + records[-1].nbytes - 1),
        "bad version": lambda: _patch(path, 4, "<I", 3),
        "bad sentinel": lambda: _patch(path, first.offset, "<I", 0xDEADBEEE),
        "unknown dtype code": lambda: _patch(path, first.offset + 4, "<I", 99),
        "wrong dtype code": lambda: _patch(path, first.offset + 4, "<I", 2 if first.dtype != "fp32" else 1),
        "size overflow": lambda: _patch(path, first.offset + 8, "<Q", 2**64 - 1),
        "offset past the end": lambda: _patch(path, first.offset + 16, "<Q", size),
        "padding of 8 bits": lambda: _patch(path, subbyte.offset + 24, "<Q", 8),
        "missing weight.bin": lambda: os.remove(path),
    }
    actions[kind]()


CORRUPTIONS = [
    "empty file", "truncated header", "truncated metadata", "truncated payload", "bad version", "bad sentinel",
    "unknown dtype code", "wrong dtype code", "size overflow", "offset past the end", "padding of 8 bits",
    "missing weight.bin",
]  # fmt: skip


def copy_package(source, destination) -> str:
    shutil.copytree(source, destination)
    return str(destination)
