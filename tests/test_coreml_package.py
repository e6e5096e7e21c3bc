""".mlpackage export and import (weightpack.coreml.package), with coremltools as the oracle.

Export: random tensors of every type are saved for iOS18 (and the subset iOS16 can express for
iOS16), the package loads in coremltools, coremltools' decompression (decompress_weights' pass;
see coreml_models.coremltools_decompressed) gives exactly weightpack's decompress(), and reading
the package back gives exactly the arrays that were saved.
Import: coremltools compresses a small model every way it can (iOS16 and iOS18, joint
compression), weightpack reads the weights without decompressing, and decompress() equals
coremltools' decompress_weights bit for bit.
"""
import os
import struct

import coremltools as ct
import coremltools.optimize.coreml as cto
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import weightpack as wp
from coreml_models import (
    CORRUPTIONS,
    THRESHOLD,
    assert_decompresses_like_coremltools,
    copy_package,
    corrupt,
    dense_weights,
    linear_model,
    weight_bin,
)
from strategies import (
    CASES,
    IOS16_NBITS,
    assert_same_bits,
    int_range,
    palettized_cases,
    quantized_cases,
    sparse_cases,
    type_bits,
)
from weightpack import FormatError, WeightpackError
from weightpack.coreml import load, read_weights, replace_weights, save_model, save_weights
from weightpack.coreml.inspection import describe
from weightpack.coreml.targets import minimum_target
from weightpack.coreml.values import dense

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore:overflow encountered:RuntimeWarning")
few = settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
C = cto.OptimizationConfig


def float_cases(strategy):
    """Cases whose tensor decodes to fp16/fp32 (what Core ML layers consume)."""
    return strategy.map(lambda case: case.build()).filter(lambda t: t.dtype in (np.float16, np.float32))


def assert_round_trip(tmp_path, tensors: dict, target: str, same_arrays: bool = True):
    path = str(tmp_path / "w.mlpackage")
    names = save_weights(path, tensors, target=target)
    model = ct.models.MLModel(path, skip_model_load=True)
    loaded = load(path)
    assert list(loaded) == [names[n] for n in tensors]
    assert_decompresses_like_coremltools(model, loaded)
    for name, tensor in tensors.items():
        assert_same_bits(dense(loaded[names[name]]), dense(tensor))
        if same_arrays and not isinstance(tensor, np.ndarray):
            assert loaded[names[name]] == tensor  # weight.bin holds exactly weightpack's arrays
    return loaded


# --------------------------------------------------------------------------------------- export


@few
@given(st.lists(st.one_of([float_cases(s()) for s in CASES.values()]), min_size=1, max_size=5))
def test_ios18_export_of_every_type(tmp_path_factory, tensors):
    assert_round_trip(tmp_path_factory.mktemp("ios18"), {f"w{i}": t for i, t in enumerate(tensors)}, "iOS18")


def _sparse_palettized(mask, lut_shape=(1, 2, 8), dtype=np.float16, vector_axis=0, seed=0):
    """A SparsePalettizedTensor over ``mask`` (index shape) with a random LUT of ``lut_shape``."""
    rng = np.random.default_rng(seed)
    mask = np.asarray(mask, bool)
    nbits = int(lut_shape[-2]).bit_length() - 1
    lut = rng.standard_normal(lut_shape).astype(dtype)
    return wp.SparsePalettizedTensor(mask, rng.integers(0, 1 << nbits, int(mask.sum())), lut, vector_axis=vector_axis)


def _sparse_quantized(mask, data_type="int8", seed=0):
    rng = np.random.default_rng(seed)
    mask = np.asarray(mask, bool)
    values = rng.integers(*int_range(data_type), int(mask.sum()), endpoint=True)
    data = wp.NBitArray.from_values(values, type_bits(data_type), signed=data_type.startswith("int"))
    return wp.SparseQuantizedTensor(mask, data, np.full((1,) * mask.ndim, 0.5, np.float16))


def _sparse(mask, dtype=np.float16, seed=0):
    mask = np.asarray(mask, bool)
    return wp.SparseTensor(mask, np.random.default_rng(seed).standard_normal(int(mask.sum())).astype(dtype))


def _equal_palettized_pair():
    p = wp.PalettizedTensor(np.arange(28).reshape(7, 2, 2) % 4, np.full((1, 1, 1, 4, 4), 0.25, np.float16), vector_axis=1)
    return [p, wp.PalettizedTensor(p.indices, p.lut.copy(), vector_axis=1)]


# Edge cases of the iOS18 export: both found by hypothesis beyond CI's derandomized examples come
# first, then their neighbours (every index/element kept in 1-D tensors of 100+ elements, no
# nonzeros at all, shape (1,), vector LUTs over 1-D masks).
EDGE_CASES = {
    "found: empty sparse (1,) + 1-D vector-palettized, every index kept": [_sparse(np.zeros(1)), _sparse_palettized(np.ones(13))],
    "found: two equal palettized tensors": _equal_palettized_pair(),
    "1-D scalar-palettized, every index kept": [_sparse_palettized(np.ones(128), (1, 16, 1), vector_axis=None)],
    "1-D vector-palettized fp32 V=3, every index kept": [_sparse_palettized(np.ones(40), (1, 4, 3), np.float32)],
    "1-D vector-palettized, half the indices kept": [_sparse_palettized(np.arange(13) % 2)],
    "1-D sparse fp16, every element kept": [_sparse(np.ones(104))],
    "1-D sparse fp32, every element kept": [_sparse(np.ones(100), np.float32)],
    "1-D sparse int8, every element kept": [_sparse_quantized(np.ones(104))],
    "1-D sparse uint4, every element kept": [_sparse_quantized(np.ones(128), "uint4")],
    "no nonzeros: sparse fp16 (1,), fp32 (5, 3)": [_sparse(np.zeros(1)), _sparse(np.zeros((5, 3)), np.float32)],
    "no nonzeros: sparse-palettized vector (1,) and (3, 4)": [
        _sparse_palettized(np.zeros(1)),
        _sparse_palettized(np.zeros((3, 4)), (1, 1, 4, 2), vector_axis=-1),
    ],
    "no nonzeros: sparse int4 (1,), uint8 (2, 3)": [_sparse_quantized(np.zeros(1), "int4"), _sparse_quantized(np.zeros((2, 3)), "uint8")],
    "shape (1,) of every type": [
        _sparse(np.ones(1)),
        wp.PalettizedTensor(np.array([1]), np.array([[1.5, -2.0]], np.float16).reshape(1, 2, 1)),
        wp.QuantizedTensor(np.array([3], np.int8), np.array([0.5], np.float32)),
        _sparse_palettized(np.ones(1), (1, 4, 1), vector_axis=None),
        _sparse_quantized(np.ones(1), "int4"),
    ],
}


@pytest.mark.parametrize("tensors", EDGE_CASES.values(), ids=EDGE_CASES)
def test_ios18_export_edge_cases(tmp_path, tensors):
    assert_round_trip(tmp_path, {f"w{i}": t for i, t in enumerate(tensors)}, "iOS18")


@pytest.mark.parametrize(
    "tensors, merged_into",
    [(EDGE_CASES["found: empty sparse (1,) + 1-D vector-palettized, every index kept"], "w1_lut_to_sparse_1"),
     (EDGE_CASES["found: two equal palettized tensors"], "w0")],
    ids=["all-ones mask", "equal tensors"],
)  # fmt: skip
def test_coremltools_decompress_weights_merges_equal_consts(tmp_path, tensors, merged_into):
    """Why the tests' oracle (coreml_models.coremltools_decompressed) stops before coremltools'
    default pass pipeline: after ``decompress_weights`` has replaced the constexpr ops by consts,
    ``const_deduplication`` merges consts of 100+ equal elements, so 'w1' keeps its value but
    loses its name (to the first equal const: here the nonzero_data output of w1's own
    constexpr_lut_to_sparse, or the equal weight w0). The package weightpack wrote is right; if
    this test fails, coremltools changed and the oracle may use ``decompress_weights`` again."""
    path = str(tmp_path / "w.mlpackage")
    save_weights(path, {f"w{i}": t for i, t in enumerate(tensors)}, target="iOS18")
    merged = dense_weights(cto.decompress_weights(ct.models.MLModel(path, skip_model_load=True)))
    assert "w1" not in merged
    assert_same_bits(merged[merged_into], dense(tensors[1]))


IOS16_STRATEGIES = [
    sparse_cases(value_types=("fp16", "fp32")),
    palettized_cases(nbits_choices=IOS16_NBITS, vector_sizes=(1,), grouped=False, lut_dtypes=(np.float16, np.float32)),
    quantized_cases(data_types=("int8", "uint8"), kinds=("per_tensor", "per_channel"), offsets=("none", "int")),
]


@few
@given(st.lists(st.one_of([float_cases(s) for s in IOS16_STRATEGIES]), min_size=1, max_size=4), st.sampled_from(["iOS16", "iOS17"]))
def test_ios16_export_of_what_it_can_express(tmp_path_factory, tensors, target):
    assume(all(minimum_target(t)[0] == "iOS16" for t in tensors))
    # iOS16 stores quantized tensors with an explicit zero point: same decoding, not the same arrays
    exact = not any(isinstance(t, wp.QuantizedTensor) for t in tensors)
    assert_round_trip(tmp_path_factory.mktemp("ios16"), {f"w{i}": t for i, t in enumerate(tensors)}, target, exact)


def test_ios16_export_uses_packed_bytes_and_shapes(tmp_path):
    rng = np.random.default_rng(1)
    w = rng.standard_normal((16, 24)).astype(np.float16)
    tensors = {"p": wp.palettize(w, nbits=2), "s": wp.prune(w, 0.5), "q": wp.quantize(w, "int8")}
    path = str(tmp_path / "w16.mlpackage")
    save_weights(path, tensors, target="iOS16")
    spec = ct.models.MLModel(path, skip_model_load=True).get_spec()
    assert spec.specificationVersion == 7
    block = spec.mlProgram.functions["main"].block_specializations["CoreML6"]
    ops = {op.outputs[0].name: op for op in block.operations if op.type.startswith("constexpr")}
    assert ops["p"].type == "constexpr_lut_to_dense" and set(ops["p"].attributes) >= {"indices", "lut", "shape"}
    assert ops["s"].type == "constexpr_sparse_to_dense" and set(ops["s"].attributes) >= {"mask", "shape"}
    assert ops["q"].type == "constexpr_affine_dequantize"
    loaded = load(path)
    assert loaded["p"].indices.packed.tobytes() == tensors["p"].indices.packed.tobytes()
    assert loaded["s"].mask.packed.tobytes() == tensors["s"].mask.packed.tobytes()


def test_scaled_lut_tensors_round_trip(tmp_path):
    rng = np.random.default_rng(5)
    w = rng.standard_normal((24, 40)).astype(np.float16)
    tensors = {
        "int8_lut_scaled": wp.palettize(w, nbits=4, lut_dtype="int8", per_channel_scale=True),  # scale [1, 40]
        "uint8_luts": wp.palettize(wp.prune(w, 0.5), nbits=2, group_size=8, lut_dtype="uint8"),
        "per_row": wp.palettize(w, nbits=3, group_size=8, per_channel_scale=True, scale_axis=0),
    }
    loaded = assert_round_trip(tmp_path, tensors, "iOS18", same_arrays=False)
    assert all(loaded[name] == tensor for name, tensor in tensors.items())
    assert describe(loaded["per_row"]) == "palettized 3-bit, fp16 LUTs: 3 along axis 0 (blocks of 8), fp16 scale per channel (axis 0)"
    assert describe(loaded["int8_lut_scaled"]) == "palettized 4-bit, int8 (quantized) LUT, fp16 scale per channel (axis 1)"
    for tensor in tensors.values():
        with pytest.raises(WeightpackError, match="needs target iOS18"):
            save_weights(tmp_path / "old.mlpackage", {"w": tensor}, target="iOS17")


@pytest.mark.parametrize(
    "make, needs",
    [
        (lambda w: wp.palettize(w, nbits=3), "3-bit indices"),
        (lambda w: wp.palettize(w, nbits=4, group_size=4), "4 LUTs"),
        (lambda w: wp.PalettizedTensor(np.zeros((16, 12), np.uint8), np.zeros((1, 1, 2, 2), np.float16), vector_axis=1), "vector"),
        (lambda w: wp.quantize(w, "int4"), "int4 data"),
        (lambda w: wp.quantize(w, "int8", granularity="per_block", block_size=8), "block shape"),
        (lambda w: wp.palettize(wp.prune(w, 0.5), nbits=2), "constexpr_lut_to_sparse"),
        (lambda w: wp.quantize(wp.prune(w, 0.5), "int8"), "constexpr_sparse_blockwise_shift_scale"),
    ],
)
def test_formats_ios16_cannot_express_name_ios18(tmp_path, make, needs):
    w = np.random.default_rng(2).standard_normal((16, 24)).astype(np.float16)
    path = tmp_path / "x.mlpackage"
    with pytest.raises(WeightpackError, match=f"{needs}.* needs target iOS18 or later; the target is iOS16"):
        save_weights(path, {"w": make(w)}, target="iOS16")
    assert not os.listdir(tmp_path)


def test_save_weights_names_and_consumers(tmp_path):
    rng = np.random.default_rng(3)
    tensors = {
        "fc.weight": wp.quantize(rng.standard_normal((8, 16)).astype(np.float32), "int8"),
        "conv.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float16),
        "fc.bias": rng.standard_normal(16).astype(np.float32),
    }
    path = tmp_path / "m.mlpackage"
    assert save_weights(path, tensors) == {"fc.weight": "fc_weight", "conv.weight": "conv_weight", "fc.bias": "fc_bias"}
    spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    assert [i.name for i in spec.description.input] == ["fc_weight_x", "conv_weight_x", "fc_bias_x"]
    assert [o.name for o in spec.description.output] == ["fc_weight_y", "conv_weight_y", "fc_bias_y"]
    consumers = {name: [c.op_type for c in w.consumers] for name, w in read_weights(path).items()}
    assert consumers == {"fc_weight": ["matmul"], "conv_weight": ["conv"], "fc_bias": ["mul"]}


@pytest.mark.parametrize(
    "weights, message",
    [
        ({}, "non-empty dict"),
        ({"w": [1.0, 2.0]}, "must be a weightpack tensor or a numpy array"),
        ({"w": np.zeros(4, np.int32)}, "decodes to int32"),
        ({"w": wp.PalettizedTensor(np.zeros((2, 2), np.uint8), np.zeros((1, 1, 2, 1), np.int8))}, "decodes to int8"),
        ({"w": np.ones((), np.float16)}, "scalar"),
        ({"a": np.ones(3, np.float16), "a_x": np.ones(3, np.float16)}, "clashes"),
    ],
)
def test_save_weights_refuses_bad_input(tmp_path, weights, message):
    with pytest.raises(WeightpackError, match=message):
        save_weights(tmp_path / "x.mlpackage", weights)
    assert not os.listdir(tmp_path)


# --------------------------------------------------------------------------------------- import


def _compressed(target, steps):
    model = linear_model(target)
    for function, op_config, joint in steps:
        model = getattr(cto, function)(model, C(global_config=op_config), joint_compression=joint)
    return model


PAL, PRUNE, QUANT = "palettize_weights", "prune_weights", "linear_quantize_weights"
ROUND_TRIPS = {
    "palettize kmeans 4": [(PAL, cto.OpPalettizerConfig(nbits=4, weight_threshold=THRESHOLD), False)],
    "palettize uniform 2": [(PAL, cto.OpPalettizerConfig(nbits=2, mode="uniform", weight_threshold=THRESHOLD), False)],
    "prune 60%": [(PRUNE, cto.OpMagnitudePrunerConfig(target_sparsity=0.6, weight_threshold=THRESHOLD), False)],
    "prune 2:4": [(PRUNE, cto.OpMagnitudePrunerConfig(n_m_ratio=(2, 4), weight_threshold=THRESHOLD), False)],
    "threshold prune": [(PRUNE, cto.OpThresholdPrunerConfig(threshold=0.1, minimum_sparsity_percentile=0.05, weight_threshold=THRESHOLD), False)],
    "int8 per channel": [(QUANT, cto.OpLinearQuantizerConfig(weight_threshold=THRESHOLD), False)],
    "uint8 linear per tensor": [(QUANT, cto.OpLinearQuantizerConfig(dtype="uint8", mode="linear", granularity="per_tensor", weight_threshold=THRESHOLD), False)],
}
IOS18_ROUND_TRIPS = {
    "palettize 3-bit grouped": [(PAL, cto.OpPalettizerConfig(nbits=3, granularity="per_grouped_channel", group_size=16, weight_threshold=THRESHOLD), False)],
    "palettize vector": [(PAL, cto.OpPalettizerConfig(nbits=2, cluster_dim=4, weight_threshold=THRESHOLD), False)],
    "palettize per-channel scale": [(PAL, cto.OpPalettizerConfig(nbits=4, enable_per_channel_scale=True, weight_threshold=THRESHOLD), False)],
    "int4 per block": [(QUANT, cto.OpLinearQuantizerConfig(dtype="int4", granularity="per_block", block_size=32, weight_threshold=THRESHOLD), False)],
    "uint4 linear per block": [(QUANT, cto.OpLinearQuantizerConfig(dtype="uint4", mode="linear", granularity="per_block", block_size=16, weight_threshold=THRESHOLD), False)],
    "prune + palettize": ROUND_TRIPS["prune 60%"] + [(PAL, cto.OpPalettizerConfig(nbits=4, weight_threshold=THRESHOLD), True)],
    "prune + quantize": ROUND_TRIPS["prune 60%"] + [(QUANT, cto.OpLinearQuantizerConfig(weight_threshold=THRESHOLD), True)],
    "palettize + quantize LUT": ROUND_TRIPS["palettize kmeans 4"] + [(QUANT, cto.OpLinearQuantizerConfig(granularity="per_tensor", weight_threshold=THRESHOLD), True)],
    "quantize + palettize": ROUND_TRIPS["int8 per channel"] + [(PAL, cto.OpPalettizerConfig(nbits=4, weight_threshold=THRESHOLD), True)],
    "quantize + prune": ROUND_TRIPS["int8 per channel"] + [(PRUNE, cto.OpMagnitudePrunerConfig(target_sparsity=0.5, weight_threshold=THRESHOLD), True)],
    "palettize + prune": ROUND_TRIPS["palettize kmeans 4"] + [(PRUNE, cto.OpMagnitudePrunerConfig(target_sparsity=0.5, weight_threshold=THRESHOLD), True)],
    "prune + palettize + quantize LUT": ROUND_TRIPS["prune 60%"]
    + [(PAL, cto.OpPalettizerConfig(nbits=4, weight_threshold=THRESHOLD), True),
       (QUANT, cto.OpLinearQuantizerConfig(granularity="per_tensor", weight_threshold=THRESHOLD), True)],
}  # fmt: skip
EXPECTED_TYPE = {
    "palettize": wp.PalettizedTensor, "prune": wp.SparseTensor, "threshold": wp.SparseTensor, "int": wp.QuantizedTensor,
    "uint": wp.QuantizedTensor, "prune + palettize": wp.SparsePalettizedTensor,
    "prune + quantize": wp.SparseQuantizedTensor, "quantize + prune": wp.SparseQuantizedTensor,
    "palettize + prune": wp.SparsePalettizedTensor, "palettize + quantize": wp.ScaledLUTTensor,
    "quantize + palettize": wp.ScaledLUTTensor, "prune + palettize + quantize": wp.ScaledLUTTensor,
}  # fmt: skip

CASES_ROUND_TRIP = [(t, name) for t in ("iOS16", "iOS18") for name in ROUND_TRIPS] + [("iOS18", n) for n in IOS18_ROUND_TRIPS]


@pytest.mark.parametrize("target, name", CASES_ROUND_TRIP, ids=[f"{t} {n}" for t, n in CASES_ROUND_TRIP])
def test_import_of_coremltools_compression(tmp_path, target, name):
    steps = {**ROUND_TRIPS, **IOS18_ROUND_TRIPS}[name]
    model = _compressed(target, steps)
    path = str(tmp_path / "c.mlpackage")
    model.save(path)
    loaded = load(path)
    weights = {k: v for k, v in loaded.items() if "weight" in k}
    assert len(weights) == 3, list(loaded)
    expected = max((k for k in EXPECTED_TYPE if name.startswith(k)), key=len)
    assert all(type(v) is EXPECTED_TYPE[expected] for v in weights.values()), weights
    assert_decompresses_like_coremltools(model, loaded)


def test_import_is_zero_copy_and_read_only(tmp_path):
    path = str(tmp_path / "c.mlpackage")
    _compressed("iOS18", IOS18_ROUND_TRIPS["prune + quantize"]).save(path)
    tensor = next(v for v in load(path).values() if isinstance(v, wp.SparseQuantizedTensor))
    for array in (tensor.data_mask.packed, tensor.nonzero_data.packed, tensor.scale):
        base = array
        while isinstance(base, np.ndarray):
            base = base.base
        assert isinstance(base, memoryview) and base.readonly  # a view of the mapped weight.bin, not a copy
        assert not array.flags.writeable


def test_load_takes_an_mlmodel_too(tmp_path):
    model = _compressed("iOS18", ROUND_TRIPS["palettize kmeans 4"])
    from_model = load(model)
    model.save(str(tmp_path / "m.mlpackage"))
    from_path = load(str(tmp_path / "m.mlpackage"))
    assert list(from_model) == list(from_path)
    for name, value in from_path.items():
        assert_same_bits(dense(from_model[name]), dense(value))


def test_stored_bytes_of_a_quantized_lut(tmp_path):
    model = _compressed("iOS18", IOS18_ROUND_TRIPS["palettize + quantize LUT"])
    weights = read_weights(model)
    name = next(k for k in weights if "weight" in k)
    assert weights[name].chain == ("constexpr_blockwise_shift_scale", "constexpr_lut_to_dense")
    stored = {(e[2], e[3]) for e in weights[name].stored}
    assert ("data", "int8") in stored and ("indices", "uint4") in stored
    value = weights[name].value
    assert isinstance(value, wp.ScaledLUTTensor) and value.palettized.lut.dtype == np.int8  # as stored: int8 + scale
    assert weights[name].nbytes == value.nbytes


# --------------------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def good_package(tmp_path_factory):
    rng = np.random.default_rng(4)
    w = rng.standard_normal((32, 48)).astype(np.float16)
    path = str(tmp_path_factory.mktemp("good") / "good.mlpackage")
    save_weights(path, {"p": wp.palettize(w, nbits=4), "s": wp.prune(w, 0.5), "q": wp.quantize(w, "int8")})
    return path


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_corrupted_weight_bin_raises_format_error(tmp_path, good_package, kind):
    path = copy_package(good_package, tmp_path / "bad.mlpackage")
    corrupt(path, kind)
    with pytest.raises(FormatError, match=r"weight|offset|missing"):
        load(path)


def test_not_a_package(tmp_path):
    with pytest.raises(WeightpackError, match="no such file"):
        load(tmp_path / "missing.mlpackage")
    (tmp_path / "empty.mlpackage").mkdir()
    with pytest.raises(FormatError, match="not an .mlpackage"):
        load(tmp_path / "empty.mlpackage")
    with pytest.raises(WeightpackError, match="must be an .mlpackage path or a coremltools MLModel"):
        load(42)


def test_garbled_model_spec(tmp_path, good_package):
    path = copy_package(good_package, tmp_path / "bad.mlpackage")
    with open(os.path.join(path, "Data", "com.apple.CoreML", "model.mlmodel"), "wb") as file:
        file.write(b"\xff" * 100)
    with pytest.raises(FormatError, match="not a Core ML model specification"):
        load(path)


def test_blob_shape_mismatch(tmp_path, good_package):
    path = copy_package(good_package, tmp_path / "bad.mlpackage")
    # shorten the first blob (the uint4 indices of "p") by a whole byte: a valid blob of the wrong element count
    with open(weight_bin(path), "r+b") as file:
        file.seek(64 + 8)
        size = struct.unpack("<Q", file.read(8))[0]
        file.seek(64 + 8)
        file.write(struct.pack("<Q", size - 1))
    with pytest.raises(FormatError, match=r"holds \d+ elements, the model's shape \[32, 48\] needs 1536"):
        load(path)


def test_a_chain_that_feeds_itself(tmp_path, good_package):
    path = copy_package(good_package, tmp_path / "bad.mlpackage")
    model_file = os.path.join(path, "Data", "com.apple.CoreML", "model.mlmodel")
    spec = ct.models.MLModel(path, skip_model_load=True).get_spec()
    block = spec.mlProgram.functions["main"].block_specializations["CoreML8"]
    sparse = next(op for op in block.operations if op.type == "constexpr_sparse_to_dense")
    binding = sparse.inputs["nonzero_data"].arguments[0]
    binding.Clear()
    binding.name = sparse.outputs[0].name
    with open(model_file, "wb") as file:
        file.write(spec.SerializeToString())
    with pytest.raises(FormatError, match="the ops producing 's' form a cycle"):
        load(path)


# --------------------------------------------------------------------------------------- replace, save


def test_replace_weights(tmp_path):
    model = linear_model("iOS18")
    names = [k for k in load(model) if "weight" in k]
    original = load(model)[names[0]]
    tensor = wp.palettize(original, nbits=3, group_size=8)
    replaced = replace_weights(model, {names[0]: tensor})
    loaded = load(replaced)
    assert loaded[names[0]] == tensor and list(loaded) == list(load(model))
    assert_decompresses_like_coremltools(replaced, {names[0]: tensor})
    path = str(tmp_path / "r.mlpackage")
    save_model(replaced, path)
    assert load(path)[names[0]] == tensor


def test_replace_weights_checks(tmp_path):
    model = linear_model("iOS16")
    name = next(k for k in load(model) if "weight" in k)
    w = load(model)[name]
    with pytest.raises(WeightpackError, match="no weight named 'nope'"):
        replace_weights(model, {"nope": w})
    with pytest.raises(WeightpackError, match=r"has shape \(128, 64\) and dtype fp16; the weight it replaces has shape \(64, 128\)"):
        replace_weights(model, {name: np.ascontiguousarray(w.T)})
    with pytest.raises(WeightpackError, match="3-bit indices needs target iOS18"):
        replace_weights(model, {name: wp.palettize(w, nbits=3)})
    with pytest.raises(WeightpackError, match="older than the model's own target iOS18"):
        replace_weights(linear_model("iOS18"), {}, target="iOS16")
    upgraded = replace_weights(model, {name: wp.palettize(w, nbits=3)}, target="iOS18")
    assert upgraded.get_spec().specificationVersion == 9


def test_save_model_is_atomic(tmp_path, good_package):
    target = str(tmp_path / "out.mlpackage")
    model = ct.models.MLModel(good_package, skip_model_load=True)
    save_model(model, target)
    before = load(target)

    class Exploding:
        def save(self, path):
            os.makedirs(path)
            open(os.path.join(path, "half"), "w").close()
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_model(Exploding(), target)
    assert sorted(os.listdir(tmp_path)) == ["out.mlpackage"]  # no temporary folder left behind
    assert list(load(target)) == list(before)
    save_model(model, target)  # replaces an existing package
    assert sorted(os.listdir(tmp_path)) == ["out.mlpackage"]


def test_save_model_refuses_to_clobber(tmp_path, good_package):
    model = ct.models.MLModel(good_package, skip_model_load=True)
    (tmp_path / "precious.mlpackage").mkdir()
    (tmp_path / "precious.mlpackage" / "thesis.tex").write_text("years of work")
    with pytest.raises(WeightpackError, match="not an .mlpackage; refusing to replace it"):
        save_model(model, tmp_path / "precious.mlpackage")
    with pytest.raises(WeightpackError, match="must end with .mlpackage"):
        save_model(model, tmp_path / "model.bin")
    assert (tmp_path / "precious.mlpackage" / "thesis.tex").read_text() == "years of work"
