"""The drop-in for coremltools' post-training compressors (weightpack.coreml.dropin).

For each config: the model has the constexpr op types coremltools' own function produces, in the
same order; coremltools' decompress_weights decodes it exactly as weightpack does; and the
arrays are exactly what weightpack's encoders make of the original weights. coremltools' gating
(weight_threshold, op name/type configs, skips) is followed; what cannot be done raises.
"""
import coremltools.optimize.coreml as cto
import numpy as np
import pytest

import weightpack as wp
from coreml_models import THRESHOLD, assert_decompresses_like_coremltools, constexpr_ops, dense_weights, linear_model
from strategies import assert_same_bits
from weightpack import WeightpackError
from weightpack.coreml import (
    decompress_weights,
    get_weights_metadata,
    linear_quantize_weights,
    load,
    palettize_weights,
    prune_weights,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
C = cto.OptimizationConfig
WEIGHTS = ["l0_weight_0_to_fp16", "l1_weight_0_to_fp16", "l2_weight_0_to_fp16"]


@pytest.fixture(scope="module")
def models():
    return {target: linear_model(target) for target in ("iOS16", "iOS18")}


def originals(model) -> dict:
    return {name: value for name, value in load(model).items() if name in WEIGHTS}


def compressed(model) -> dict:
    """{original const name: weightpack tensor} of the three layer weights of a compressed model."""
    found = {}
    for name, value in load(model).items():
        base = next((w for w in WEIGHTS if name.startswith(w)), None)
        if base is not None:
            found[base] = value
    assert len(found) == 3, list(load(model))
    return found


def check_against_coremltools(function, model, config, expected, joint=False, exact_arrays=True):
    """Same op types as coremltools, decoded identically by coremltools, arrays from weightpack's encoders."""
    mine = getattr(wp.coreml, function)(model, config, joint_compression=joint)
    theirs = getattr(cto, function)(model, config, joint_compression=joint)
    assert constexpr_ops(mine) == constexpr_ops(theirs)
    assert_decompresses_like_coremltools(mine, load(mine))
    for name, tensor in compressed(mine).items():
        if exact_arrays:
            assert tensor == expected[name], name
        else:
            assert_same_bits(tensor.decompress(), expected[name].decompress())
    return mine


PAL, PRUNE, QUANT = "palettize_weights", "prune_weights", "linear_quantize_weights"
SINGLE = {
    "palettize kmeans 4": (PAL, cto.OpPalettizerConfig(nbits=4, weight_threshold=THRESHOLD), lambda w: wp.palettize(w, 4)),
    "palettize uniform 2": (PAL, cto.OpPalettizerConfig(nbits=2, mode="uniform", num_kmeans_workers=2, weight_threshold=THRESHOLD),
                            lambda w: wp.palettize(w, 2, mode="uniform")),
    "prune 60%": (PRUNE, cto.OpMagnitudePrunerConfig(target_sparsity=0.6, weight_threshold=THRESHOLD), lambda w: wp.prune(w, 0.6)),
    "int8 per channel": (QUANT, cto.OpLinearQuantizerConfig(weight_threshold=THRESHOLD), lambda w: wp.quantize(w, "int8")),
    "uint8 linear per tensor": (QUANT, cto.OpLinearQuantizerConfig(dtype="uint8", mode="linear", granularity="per_tensor", weight_threshold=THRESHOLD),
                                lambda w: wp.quantize(w, "uint8", mode="asymmetric", granularity="per_tensor")),
}  # fmt: skip
IOS18_ONLY = {
    "palettize 3-bit per 16 channels": (PAL, cto.OpPalettizerConfig(nbits=3, granularity="per_grouped_channel", group_size=16, weight_threshold=THRESHOLD),
                                        lambda w: wp.palettize(w, 3, group_size=16)),
    "palettize per 8 input channels": (PAL, cto.OpPalettizerConfig(nbits=2, granularity="per_grouped_channel", group_size=8, channel_axis=1, weight_threshold=THRESHOLD),
                                       lambda w: wp.palettize(w, 2, group_size=8, axis=1)),
    "int4 per block of 32": (QUANT, cto.OpLinearQuantizerConfig(dtype="int4", granularity="per_block", block_size=32, weight_threshold=THRESHOLD),
                             lambda w: wp.quantize(w, "int4", granularity="per_block", block_size=32)),
    "uint4 linear per block (2, 16)": (QUANT, cto.OpLinearQuantizerConfig(dtype="uint4", mode="linear", granularity="per_block", block_size=(2, 16), weight_threshold=THRESHOLD),
                                       lambda w: wp.quantize(w, "uint4", mode="asymmetric", granularity="per_block", block_size=(2, 16))),
}  # fmt: skip
CASES = [(t, n) for t in ("iOS16", "iOS18") for n in SINGLE] + [("iOS18", n) for n in IOS18_ONLY]


@pytest.mark.parametrize("target, case", CASES, ids=[f"{t} {n}" for t, n in CASES])
def test_matches_coremltools_structure_with_weightpack_numbers(models, target, case):
    function, op_config, encode = {**SINGLE, **IOS18_ONLY}[case]
    model = models[target]
    expected = {name: encode(w) for name, w in originals(model).items()}
    # iOS16 stores quantized tensors with an explicit zero point: the same values, other arrays
    exact = not (target == "iOS16" and function == QUANT)
    check_against_coremltools(function, model, C(global_config=op_config), expected, exact_arrays=exact)


JOINT = {
    "prune + palettize": (PRUNE, PAL, cto.OpPalettizerConfig(nbits=4, weight_threshold=THRESHOLD), lambda w: wp.palettize(wp.prune(w, 0.6), 4)),
    "prune + quantize": (PRUNE, QUANT, cto.OpLinearQuantizerConfig(weight_threshold=THRESHOLD), lambda w: wp.quantize(wp.prune(w, 0.6), "int8")),
}  # fmt: skip


@pytest.mark.parametrize("case", list(JOINT))
def test_joint_compression_of_pruned_weights(models, case):
    first, second, op_config, encode = JOINT[case]
    model = models["iOS18"]
    expected = {name: encode(w) for name, w in originals(model).items()}
    pruned = prune_weights(model, C(global_config=SINGLE["prune 60%"][1]))
    check_against_coremltools(second, pruned, C(global_config=op_config), expected, joint=True)


def test_joint_quantization_of_luts(models):
    model = models["iOS18"]
    palettized = palettize_weights(model, C(global_config=SINGLE["palettize kmeans 4"][1]))
    config = C(global_config=cto.OpLinearQuantizerConfig(granularity="per_tensor", weight_threshold=THRESHOLD))
    mine = linear_quantize_weights(palettized, config, joint_compression=True)
    assert constexpr_ops(mine) == constexpr_ops(cto.linear_quantize_weights(palettized, config, joint_compression=True))
    assert constexpr_ops(mine)[:2] == ["constexpr_blockwise_shift_scale", "constexpr_lut_to_dense"]
    assert_decompresses_like_coremltools(mine, load(mine))
    for name, tensor in compressed(mine).items():
        assert isinstance(tensor, wp.ScaledLUTTensor) and tensor.palettized.lut.dtype == np.int8  # stored as int8 + scale
        quantized = wp.quantize(wp.palettize(originals(model)[name], 4).lut, "int8", granularity="per_tensor")
        assert_same_bits(tensor.palettized.lut, quantized.data.values())
        assert_same_bits(tensor.lut_scale, quantized.scale)


@pytest.mark.parametrize("first", [QUANT, PAL])
def test_joint_pruning_of_compressed_weights(models, first):
    model = models["iOS18"]
    step = {QUANT: SINGLE["int8 per channel"], PAL: SINGLE["palettize kmeans 4"]}[first]
    base = getattr(wp.coreml, first)(model, C(global_config=step[1]))
    config = C(global_config=cto.OpMagnitudePrunerConfig(target_sparsity=0.5, weight_threshold=THRESHOLD))
    mine = prune_weights(base, config, joint_compression=True)
    assert constexpr_ops(mine) == constexpr_ops(cto.prune_weights(base, config, joint_compression=True))
    assert_decompresses_like_coremltools(mine, load(mine))
    for name, tensor in compressed(mine).items():
        dense = step[2](originals(model)[name]).decompress()
        assert tensor.mask == wp.prune(dense, 0.5).mask  # pruned by weightpack on the decoded values
        assert_same_bits(tensor.decompress(), np.where(tensor.mask.values().astype(bool), dense, 0).astype(dense.dtype))


def test_config_selection_follows_coremltools(models):
    model = models["iOS18"]
    config = C(
        global_config=cto.OpPalettizerConfig(nbits=4, weight_threshold=THRESHOLD),
        op_type_configs={"linear": cto.OpPalettizerConfig(nbits=2, weight_threshold=THRESHOLD)},
        op_name_configs={"l1_weight_0_to_fp16": None, "l2_weight_0_to_fp16": cto.OpPalettizerConfig(nbits=6, weight_threshold=THRESHOLD)},
    )
    mine = palettize_weights(model, config)
    assert constexpr_ops(mine) == constexpr_ops(cto.palettize_weights(model, config))
    weights = load(mine)
    assert weights["l0_weight_0_to_fp16_palettized"].nbits == 2
    assert weights["l2_weight_0_to_fp16_palettized"].nbits == 6
    assert isinstance(weights["l1_weight_0_to_fp16"], np.ndarray)


def test_weight_threshold_is_strict_and_rank_one_is_skipped(models):
    model = models["iOS18"]
    untouched = palettize_weights(model, C(global_config=cto.OpPalettizerConfig(nbits=4, weight_threshold=8192)))
    assert constexpr_ops(untouched) == []
    everything = palettize_weights(model, C(global_config=cto.OpPalettizerConfig(nbits=4, weight_threshold=0)))
    assert constexpr_ops(everything) == ["constexpr_lut_to_dense"] * 3  # the biases (rank 1) stay dense


def uniform2(values):
    """A custom LUT function: 4 evenly spaced values (coremltools calls it once per group)."""
    lut = np.linspace(values.min(), values.max(), 4).astype(values.dtype)
    return lut, np.abs(values.reshape(-1, 1) - lut).argmin(axis=1).astype(np.uint8).reshape(values.shape)


STRUCTURED = {
    "threshold": (PRUNE, cto.OpThresholdPrunerConfig(threshold=0.02, minimum_sparsity_percentile=0.2, weight_threshold=THRESHOLD),
                  lambda w: wp.prune(w, threshold=0.02)),
    "2:4 along the input channels": (PRUNE, cto.OpMagnitudePrunerConfig(n_m_ratio=(2, 4), weight_threshold=THRESHOLD),
                                     lambda w: wp.prune(w, n_m_ratio=(2, 4), dim=1)),
    "blocks of 4 output channels": (PRUNE, cto.OpMagnitudePrunerConfig(target_sparsity=0.5, block_size=4, weight_threshold=THRESHOLD),
                                    lambda w: wp.prune(w, 0.5, block_size=4, dim=0)),
    "vectors of 2": (PAL, cto.OpPalettizerConfig(nbits=2, cluster_dim=2, weight_threshold=THRESHOLD),
                     lambda w: wp.palettize(w, 2, cluster_dim=2, axis=0)),
    "custom LUT per 16 channels": (PAL, cto.OpPalettizerConfig(mode="custom", lut_function=uniform2, granularity="per_grouped_channel",
                                                               group_size=16, weight_threshold=THRESHOLD),
                                   lambda w: wp.palettize(w, mode="custom", lut_function=uniform2, group_size=16)),
}  # fmt: skip


@pytest.mark.parametrize("case", list(STRUCTURED))
def test_structured_options(models, case):
    function, op_config, encode = STRUCTURED[case]
    model = models["iOS18"]
    expected = {name: encode(w) for name, w in originals(model).items()}
    skipped = isinstance(op_config, cto.OpThresholdPrunerConfig)  # l2's weights are too large to reach 20%
    if skipped:
        expected = {k: v for k, v in expected.items() if v.sparsity >= 0.2}
        assert len(expected) == 2
    mine = getattr(wp.coreml, function)(model, C(global_config=op_config))
    assert constexpr_ops(mine) == constexpr_ops(getattr(cto, function)(model, C(global_config=op_config)))
    assert_decompresses_like_coremltools(mine, load(mine))
    found = {k: v for k, v in load(mine).items() if not isinstance(v, np.ndarray)}
    assert {next(w for w in WEIGHTS if k.startswith(w)): v for k, v in found.items()} == expected


def test_unique_mode(models):
    model = linear_model("iOS18", levels=20)
    config = C(global_config=cto.OpPalettizerConfig(mode="unique", weight_threshold=THRESHOLD))
    expected = {name: wp.palettize(w, mode="unique") for name, w in originals(model).items()}
    check_against_coremltools(PAL, model, config, expected)
    with pytest.raises(WeightpackError, match="more than 256 distinct values"):
        palettize_weights(models["iOS18"], config)  # coremltools would leave these weights dense


def test_per_channel_scale(models):
    model = models["iOS18"]
    config = C(global_config=cto.OpPalettizerConfig(nbits=4, enable_per_channel_scale=True, weight_threshold=THRESHOLD))
    mine = palettize_weights(model, config)
    # coremltools' default passes fold the scale into one LUT per input channel, as its own API does
    assert constexpr_ops(mine) == constexpr_ops(cto.palettize_weights(model, config))
    assert_decompresses_like_coremltools(mine, load(mine))
    for name, tensor in compressed(mine).items():
        expected = wp.palettize(originals(model)[name], 4, per_channel_scale=True)
        assert expected.scale.shape == (1, expected.shape[1])  # per input channel, as coremltools
        assert_same_bits(tensor.decompress(), expected.decompress())


@pytest.mark.parametrize(
    "function, op_config, joint, message",
    [
        (PAL, cto.OpPalettizerConfig(nbits=4, granularity="per_grouped_channel", group_size=16, weight_threshold=THRESHOLD), False,
         "per_grouped_channel palettization needs target iOS18"),
        (PAL, cto.OpPalettizerConfig(nbits=3, weight_threshold=THRESHOLD), False, "3-bit palettization needs target iOS18"),
        (QUANT, cto.OpLinearQuantizerConfig(dtype="int4", weight_threshold=THRESHOLD), False, "4-bit quantization needs target iOS18"),
        (QUANT, cto.OpLinearQuantizerConfig(granularity="per_block", weight_threshold=THRESHOLD), False, "per_block quantization needs target iOS18"),
        (QUANT, cto.OpLinearQuantizerConfig(weight_threshold=THRESHOLD), True, "joint_compression needs target iOS18"),
        (PAL, cto.OpPalettizerConfig(nbits=2, cluster_dim=2, weight_threshold=THRESHOLD), False, "vector palettization needs target iOS18"),
        (PAL, cto.OpPalettizerConfig(nbits=2, enable_per_channel_scale=True, weight_threshold=THRESHOLD), False,
         "palettization with a per-channel scale needs target iOS18"),
    ],
)  # fmt: skip
def test_what_ios16_cannot_express_names_ios18(models, function, op_config, joint, message):
    with pytest.raises(WeightpackError, match=message):
        getattr(wp.coreml, function)(models["iOS16"], C(global_config=op_config), joint_compression=joint)


def test_a_newer_target_builds_its_ops(models):
    config = C(global_config=cto.OpPalettizerConfig(nbits=3, granularity="per_grouped_channel", group_size=16, weight_threshold=THRESHOLD))
    upgraded = palettize_weights(models["iOS16"], config, target="iOS18")
    assert upgraded.get_spec().specificationVersion == 9
    assert_decompresses_like_coremltools(upgraded, load(upgraded))
    with pytest.raises(WeightpackError, match="older than the model's own target iOS18"):
        palettize_weights(models["iOS18"], config, target="iOS17")


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m: palettize_weights(m, C(global_config=cto.OpLinearQuantizerConfig())), "global_config is a OpLinearQuantizerConfig; palettize takes OpPalettizerConfig"),
        (lambda m: prune_weights(m, {"global_config": None}), "must be a coremltools OptimizationConfig"),
        (lambda m: prune_weights(m, C(), joint_compression="yes"), "joint_compression='yes'"),
        (lambda m: prune_weights("model.mlpackage", C()), "must be a coremltools MLModel"),
    ],
)  # fmt: skip
def test_bad_arguments(models, call, message):
    with pytest.raises(WeightpackError, match=message):
        call(models["iOS18"])


def test_progress_and_the_input_model_is_untouched(models):
    model = models["iOS18"]
    before = {k: np.array(v) for k, v in originals(model).items()}
    calls = []
    prune_weights(model, C(global_config=SINGLE["prune 60%"][1]), progress=lambda *args: calls.append(args))
    assert [c[:2] for c in calls] == [(i, 6) for i in range(1, 7)]  # 3 weights and 3 biases are candidates
    assert all(np.array_equal(before[k], v) for k, v in originals(model).items())


def test_decompress_weights_matches_coremltools(models):
    model = linear_quantize_weights(models["iOS18"], C(global_config=IOS18_ONLY["int4 per block of 32"][1]))
    mine, theirs = decompress_weights(model), cto.decompress_weights(model)
    assert constexpr_ops(mine) == [] == constexpr_ops(theirs)
    mine_values, their_values = dense_weights(mine), dense_weights(theirs)
    assert set(mine_values) == set(their_values)
    for name, value in their_values.items():
        assert_same_bits(mine_values[name], value)


def test_get_weights_metadata(models):
    model = prune_weights(models["iOS18"], C(global_config=SINGLE["prune 60%"][1]))
    metadata = get_weights_metadata(model, weight_threshold=2048)
    assert list(metadata) == [f"{w}_sparsified" for w in WEIGHTS]
    entry = metadata["l0_weight_0_to_fp16_sparsified"]
    assert isinstance(entry.tensor, wp.SparseTensor)
    assert entry.sparsity == pytest.approx(0.6, abs=1e-3)
    assert entry.unique_values == np.unique(entry.val.astype(np.float32)).size
    assert [(c.op_type, c.params_name_mapping) for c in entry.child_ops] == [("linear", {"weight": "l0_weight_0_to_fp16_sparsified"})]
    assert len(get_weights_metadata(model, weight_threshold=0)) == 6
    with pytest.raises(WeightpackError, match="weight_threshold=-1"):
        get_weights_metadata(model, weight_threshold=-1)
