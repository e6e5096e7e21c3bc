"""Calibration from a Core ML program: collect, sequential statistics, compress with calibration, bit plans."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import weightpack as wp
from program_oracle import package_path
from weightpack.calibration import ActivationStats, collect, gptq_palettize
from weightpack.calibration.collect import ProgramStats, _rows, as_program, calibrated_weights
from weightpack.calibration.plan import plan_program
from weightpack.calibration.sequential import SequentialStats, upstream_weights
from weightpack.errors import WeightpackError
from weightpack.runtime import Conv2d, Linear, Model

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
BERT = package_path("bert-iOS16-fp32")


def bert_inputs(batches: int, seed: int) -> dict:
    """Stacked BERT fixture inputs: ``batches`` batches of the program's (2, 16)."""
    rng = np.random.default_rng(seed)
    shape = (batches * 2, 16)
    return {"input_ids": rng.integers(0, 64, shape).astype(np.int32), "attention_mask": np.ones(shape, np.int32),
            "token_type_ids": rng.integers(0, 2, shape).astype(np.int32)}  # fmt: skip


def two_linears(seed=0):
    rng = np.random.default_rng(seed)
    w1, w2 = (rng.standard_normal((8, 8)).astype(np.float32) for _ in range(2))
    return w1, w2, Model([Linear(w1, activation="relu"), Linear(w2)], policy="load").program


# ------------------------------------------------------------------------------------- collect


def test_collect_equals_the_gram_of_each_layers_inputs():
    w1, w2, prog = two_linears()
    x = np.random.default_rng(1).standard_normal((20, 8)).astype(np.float32)
    stats = collect(prog, {"x": x})
    first, second = [op.weight_name for op in prog.weight_ops()]
    hidden = np.maximum(x @ w1.T, 0).astype(np.float64)
    assert stats[first].count == stats[second].count == 20
    np.testing.assert_allclose(stats[first].gram, x.astype(np.float64).T @ x / 20, rtol=1e-12)
    np.testing.assert_allclose(stats[second].gram, hidden.T @ hidden / 20, rtol=1e-5, atol=1e-9)


def test_collect_streams_batches_merges_and_round_trips(tmp_path):
    inputs = bert_inputs(6, 0)
    whole = collect(BERT, inputs)
    halves = [collect(BERT, {k: v[i * 6 : (i + 1) * 6] for k, v in inputs.items()}) for i in (0, 1)]
    merged = halves[0].merge(halves[1])
    assert list(merged) == list(whole) and merged.batches == whole.batches == 6
    for name in whole:
        assert merged[name].count == whole[name].count
        np.testing.assert_allclose(merged[name].gram, whole[name].gram, rtol=1e-12, atol=1e-12)
    whole.save(tmp_path / "stats.npz")
    back = ProgramStats.load(tmp_path / "stats.npz")
    assert list(back) == list(whole) and all(np.array_equal(back[n].gram, whole[n].gram) for n in whole)
    # the same samples with a leading sample axis, and as an iterable of dicts
    stacked = collect(BERT, {k: v.reshape(6, 2, 16) for k, v in inputs.items()})
    listed = collect(BERT, [{k: v[2 * i : 2 * i + 2] for k, v in inputs.items()} for i in range(6)])
    for name in whole:
        assert np.array_equal(stacked[name].gram, whole[name].gram) and np.array_equal(listed[name].gram, whole[name].gram)


def test_calibrated_weights_of_the_fixtures():
    bert = calibrated_weights(as_program(BERT))
    assert len(bert) == 13 and bert["layers_0_up_weight"] == 64 and bert["layers_0_down_weight"] == 128
    cnn = calibrated_weights(as_program(package_path("cnn-iOS16-fp32")))
    assert cnn["stem_weight"] == 27 and cnn["depthwise_weight"] == 9 and "up_weight" not in cnn  # conv_transpose: data-free


def test_conv_patches_reproduce_every_conv_of_the_cnn_fixture():
    """im2col rows times w.reshape(C_out, -1) equal the executor's own convolution (groups, depthwise, strides)."""
    from weightpack.calibration.collect import _const, _ints, _node
    from weightpack.coreml.runtime.ops_nn import conv_nd, conv_pads
    from weightpack.coreml.runtime.report import KernelClock

    prog = as_program(package_path("cnn-iOS16-fp32"))
    rng = np.random.default_rng(0)
    for op in [op for op in prog.weight_ops() if op.role == "conv"]:
        w = np.asarray(op.weight, np.float32)
        node = _node(prog, op.name)
        groups = int(_const(prog, node, "groups", 1))
        x = rng.standard_normal((2, w.shape[1] * groups, 9, 9)).astype(np.float32)
        rank = w.ndim - 2
        strides, dilations = _ints(prog, node, "strides", (1,) * rank), _ints(prog, node, "dilations", (1,) * rank)
        pads = conv_pads(str(_const(prog, node, "pad_type", "valid")), x.shape[2:], w.shape[2:], strides, dilations,
                         _ints(prog, node, "pad", (0,) * 2 * rank))  # fmt: skip
        y = conv_nd(x, w, None, strides, dilations, pads, groups, KernelClock())
        rows = np.concatenate(list(_rows(prog, op, {"x": x})))
        og = w.shape[0] // groups
        per_group = rows.reshape(2, groups, -1, rows.shape[1])  # (N, G, positions, C_in/G * taps)
        for g in range(groups):
            got = per_group[:, g] @ w[g * og : (g + 1) * og].reshape(og, -1).T  # (N, positions, og)
            want = y[:, g * og : (g + 1) * og].reshape(2, og, -1).transpose(0, 2, 1)
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@settings(max_examples=15, deadline=None)
@given(stride=st.integers(1, 3), padding=st.integers(0, 2), kernel=st.integers(1, 3), size=st.integers(3, 7))
def test_conv_statistics_match_the_unfolded_input(stride, padding, kernel, size):
    rng = np.random.default_rng(stride * 100 + padding * 10 + kernel)
    w = rng.standard_normal((4, 3, kernel, kernel)).astype(np.float32)
    prog = Model([Conv2d(w, stride=stride, padding=padding)], policy="load").program
    x = rng.standard_normal((2, 3, size + kernel, size + kernel)).astype(np.float32)
    stats = collect(prog, [{"x": x}])[prog.weight_ops()[0].weight_name]
    # reference im2col written out with loops
    xp = np.pad(x, [(0, 0), (0, 0), (padding, padding), (padding, padding)]).astype(np.float64)
    out = (xp.shape[2] - kernel) // stride + 1
    patches = [xp[n, :, i * stride : i * stride + kernel, j * stride : j * stride + kernel].reshape(-1)
               for n in range(2) for i in range(out) for j in range(out)]  # fmt: skip
    p = np.array(patches)
    assert stats.count == len(patches)
    np.testing.assert_allclose(stats.gram, p.T @ p / len(p), rtol=1e-10, atol=1e-12)


def test_bad_calibration_inputs_raise(tmp_path):
    prog = as_program(BERT)
    good = bert_inputs(2, 0)
    with pytest.raises(WeightpackError, match="lack 'token_type_ids'"):
        collect(prog, {k: v for k, v in good.items() if k != "token_type_ids"})
    with pytest.raises(WeightpackError, match="not a multiple of the program's batch of 2"):
        collect(prog, {k: v[:3] for k, v in good.items()})
    with pytest.raises(WeightpackError, match="the program takes input_ids"):
        collect(prog, {k: v.reshape(-1) for k, v in good.items()})
    with pytest.raises(WeightpackError, match="different numbers of batches"):
        collect(prog, {**good, "input_ids": good["input_ids"][:2]})
    (tmp_path / "bad.npz").write_text("not a zip")
    with pytest.raises(WeightpackError, match="not an .npz archive"):
        collect(prog, str(tmp_path / "bad.npz"))
    with pytest.raises(WeightpackError, match="has no calibrated layout"):
        collect(prog, good, weights=["tokens_weight"])


# ------------------------------------------------------------------------------------- sequential


def test_sequential_statistics_see_the_compressed_earlier_layer():
    w1, w2, prog = two_linears()
    x = np.random.default_rng(2).standard_normal((32, 8)).astype(np.float32)
    first, second = [op.weight_name for op in prog.weight_ops()]
    assert upstream_weights(prog)[second] == {first}
    small = wp.palettize(w1, nbits=1)
    seq = SequentialStats(prog, {"x": x})
    seq.finish(first, small)
    hidden = np.maximum(x @ small.decompress(np.float32).T, 0).astype(np.float64)
    np.testing.assert_allclose(seq.stats(second).gram, hidden.T @ hidden / 32, rtol=1e-5, atol=1e-9)
    _, _, prog2 = two_linears()
    plain = SequentialStats(prog2, {"x": x}, sequential=False)
    plain.finish(first, small)
    original = np.maximum(x @ w1.T, 0).astype(np.float64)
    np.testing.assert_allclose(plain.stats(second).gram, original.T @ original / 32, rtol=1e-5, atol=1e-9)


def test_sequential_passes_share_parallel_layers():
    seq = SequentialStats(BERT, bert_inputs(2, 0))
    seq.finish("tokens_weight", None)  # the embedding table comes first in program order
    for name in ("layers_0_q_weight", "layers_0_k_weight", "layers_0_v_weight"):
        seq.stats(name)
        seq.finish(name, None)
    assert seq.passes == 1  # q, k and v read the same activations: one pass


# ------------------------------------------------------------------------------------- compress


@pytest.fixture(scope="module")
def compressed(tmp_path_factory):
    """(data-free, calibrated non-sequential, calibrated sequential) 4-bit BERT packages."""
    import coremltools.optimize.coreml as cto

    import weightpack.coreml as wpc

    folder = tmp_path_factory.mktemp("calibrated")
    config = cto.OptimizationConfig(cto.OpPalettizerConfig(nbits=4))
    calibration = bert_inputs(16, 1)
    paths = [wpc.compress(BERT, config, output=str(folder / "free.mlpackage")),
             wpc.compress(BERT, config, calibration=calibration, sequential=False, output=str(folder / "cal.mlpackage")),
             wpc.compress(BERT, config, calibration=calibration, output=str(folder / "seq.mlpackage"))]  # fmt: skip
    return paths, calibration, config


def test_compress_without_calibration_is_the_data_free_result(compressed):
    import coremltools as ct

    import weightpack.coreml as wpc

    (free, _, _), _, config = compressed
    dropin = wpc.palettize_weights(ct.models.MLModel(BERT, skip_model_load=True), config)
    expected, got = wpc.load(dropin), wpc.load(free)
    assert list(expected) == list(got) and all(np.array_equal(wp_dense(expected[n]), wp_dense(got[n])) for n in got)


def wp_dense(value):
    from weightpack.coreml.values import dense

    return dense(value)


def test_calibrated_weights_decode_to_the_encoders_result(compressed):
    import coremltools as ct

    import weightpack.coreml as wpc

    (_, cal, _), calibration, _ = compressed
    ct.models.MLModel(cal, skip_model_load=True)  # loads in coremltools
    stats = collect(BERT, calibration)
    weights = wpc.load(cal)
    w = wpc.load(BERT)["layers_1_up_weight"]
    want = gptq_palettize(w, stats["layers_1_up_weight"], 4)
    assert weights["layers_1_up_weight_palettized"] == want


def test_calibration_beats_data_free_on_held_out_inputs(compressed):
    paths, _, _ = compressed
    held_out = bert_inputs(8, 7)
    snrs = held_out_snrs(BERT, paths, held_out)
    free, cal, seq = snrs
    assert cal > free + 0.3 and seq > free + 0.3, snrs


def held_out_snrs(model, paths, held_out) -> list:
    """Output SNR (dB) of each compressed package against ``model`` on ``held_out`` inputs."""
    from weightpack.calibration.plan import OutputError

    reference = as_program(model)
    error = OutputError(reference, held_out)
    snrs = []
    for path in paths:
        for name, value in wp_load_dense(path).items():
            reference.set_weight(name, value)
        snrs.append(-10 * np.log10(error()))
    return snrs


def wp_load_dense(path):
    """{original weight name: decompressed value} of a compressed package."""
    import weightpack.coreml as wpc

    out = {}
    for name, value in wpc.load(path).items():
        for suffix in ("_palettized", "_quantized", "_sparsified"):
            if name.endswith(suffix):
                out[name[: -len(suffix)]] = wp_dense(value)
    return out


def test_compress_rejects_bad_configs_and_inputs(tmp_path):
    import weightpack.coreml as wpc

    with pytest.raises(WeightpackError, match="OptimizationConfig"):
        wpc.compress(BERT, {"nbits": 4})
    import coremltools.optimize.coreml as cto

    config = cto.OptimizationConfig(cto.OpLinearQuantizerConfig())
    with pytest.raises(WeightpackError, match="lack 'attention_mask'"):
        wpc.compress(BERT, config, calibration={"input_ids": np.zeros((2, 16), np.int32)}, output=str(tmp_path / "o.mlpackage"))
    assert not (tmp_path / "o.mlpackage").exists()


# ------------------------------------------------------------------------------------- plans


def test_measured_plan_keeps_its_budget_and_never_loses_to_uniform():
    inputs = bert_inputs(4, 3)
    prog = as_program(BERT)
    stats = collect(prog, inputs)
    plan = plan_program(prog, stats, inputs, bits_per_weight=3.0, nbits=(2, 4), sensitivity=True)
    assert plan.nbytes <= plan.budget_nbytes
    chosen = plan.measured_errors["uniform" if plan.fallback else "mixed"]
    assert chosen <= min(plan.measured_errors.values())
    with pytest.raises(WeightpackError, match="below the minimum reachable"):
        plan_program(prog, stats, inputs, bits_per_weight=1.0, nbits=(2, 4), sensitivity=True)
    proxy = plan_program(prog, stats, bits_per_weight=3.0, nbits=(2, 4))
    assert proxy.nbytes <= proxy.budget_nbytes and len(proxy.layers) == 14  # 13 linears + the token embedding table


def test_conv_model_calibrated_n_m_along_input_channels(tmp_path):
    """2:4 on conv weights runs along C_in (coremltools' axis 1) and beats magnitude 2:4 on held-out images."""
    import coremltools.optimize.coreml as cto

    import weightpack.coreml as wpc

    cnn = package_path("cnn-iOS18-fp16")
    rng = np.random.default_rng(0)
    calibration = {"image": rng.standard_normal((32, 3, 16, 16)).astype(np.float32)}
    config = cto.OptimizationConfig(cto.OpMagnitudePrunerConfig(n_m_ratio=(2, 4)))
    paths = [wpc.compress(cnn, config, output=str(tmp_path / "free.mlpackage")),
             wpc.compress(cnn, config, calibration=calibration, output=str(tmp_path / "cal.mlpackage"))]  # fmt: skip
    sparse = {n: v for n, v in wpc.load(paths[1]).items() if n.endswith("_sparsified")}
    assert {"input_5_weight_0_to_fp16_sparsified", "down_weight_to_fp16_sparsified"} <= set(sparse)
    for value in sparse.values():
        kept = np.moveaxis(value.mask.values().astype(bool).reshape(value.shape), 1, -1).reshape(-1, 4)
        assert kept.sum(axis=1).max() <= 2 and value.sparsity >= 0.5
    snrs = held_out_snrs(cnn, paths, {"image": rng.standard_normal((8, 3, 16, 16)).astype(np.float32)})
    assert snrs[1] > snrs[0] + 2, snrs


def test_too_few_rows_warn_naming_both_counts(tmp_path, caplog):
    import coremltools.optimize.coreml as cto

    import weightpack.coreml as wpc

    config = cto.OptimizationConfig(cto.OpLinearQuantizerConfig(dtype="int8"))
    with caplog.at_level("WARNING", logger="weightpack"):
        wpc.compress(BERT, config, calibration=bert_inputs(1, 0), output=str(tmp_path / "o.mlpackage"))
    assert "weight pooler_weight: 2 calibration rows for 64 input features" in caplog.text
    assert "layers_0_q_weight: 32 calibration rows for 64 input features" in caplog.text


@settings(max_examples=20, deadline=None)
@given(samples=st.integers(1, 5), length=st.integers(1, 12), seed=st.integers(0, 2**16))
def test_stacked_forms_of_a_free_length_input_agree(samples, length, seed):
    """The decoder takes input_ids (1, ?): (samples, length) rows and (samples, 1, length) give the same batches."""
    prog = llama_program()
    ids = np.random.default_rng(seed).integers(0, 64, (samples, length)).astype(np.int32)
    flat = collect(prog, {"input_ids": ids}, weights=["layers_0_q_weight"])["layers_0_q_weight"]
    nested = collect(prog, {"input_ids": ids[:, None, :]}, weights=["layers_0_q_weight"])["layers_0_q_weight"]
    assert flat.count == nested.count == samples * length
    assert np.array_equal(flat.gram, nested.gram)


_LLAMA = []


def llama_program():
    if not _LLAMA:
        _LLAMA.append(as_program(package_path("llama-iOS16-fp32")))
    return _LLAMA[0]


# ------------------------------------------------------------------------------------- input-error correction


def test_corrected_target_compensates_the_compressed_inputs():
    w1, w2, prog = two_linears(3)
    x = np.random.default_rng(4).standard_normal((64, 8)).astype(np.float32)
    first, second = [op.weight_name for op in prog.weight_ops()]
    seq = SequentialStats(prog, {"x": x}, correct_inputs=True)
    stats = seq.stats(first)
    assert seq.target(first, w1, stats) is w1  # inputs unchanged: the layer's own weights
    small = wp.palettize(w1, nbits=2)
    seq.finish(first, small)
    stats = seq.stats(second)
    target = seq.target(second, w2, stats)
    original = np.maximum(x @ w1.T, 0).astype(np.float64)
    compressed = np.maximum(x @ small.decompress(np.float32).T, 0).astype(np.float64)
    want = original @ w2.T.astype(np.float64)
    plain = np.sum((want - compressed @ w2.T.astype(np.float64)) ** 2)
    corrected = np.sum((want - compressed @ target.T.astype(np.float64)) ** 2)
    assert corrected < 0.5 * plain, (corrected, plain)
    best = np.linalg.lstsq(compressed, want, rcond=None)[0].T  # the undamped optimum
    assert corrected < 1.05 * np.sum((want - compressed @ best.T) ** 2) + 1e-3 * plain
    with pytest.raises(WeightpackError, match="needs sequential=True"):
        SequentialStats(prog, {"x": x}, sequential=False, correct_inputs=True)


def test_corrected_inputs_gain_on_the_decoder(tmp_path):
    import coremltools.optimize.coreml as cto

    import weightpack.coreml as wpc

    llama = package_path("llama-iOS16-fp32")
    rng = np.random.default_rng(5)
    calibration = {"input_ids": rng.integers(0, 64, (24, 1, 32)).astype(np.int32)}
    config = cto.OptimizationConfig(cto.OpPalettizerConfig(nbits=4))
    paths = [wpc.compress(llama, config, calibration=calibration, correct_inputs=False, output=str(tmp_path / "seq.mlpackage")),
             wpc.compress(llama, config, calibration=calibration, output=str(tmp_path / "fix.mlpackage"))]  # default: corrected
    snrs = held_out_snrs(llama, paths, {"input_ids": rng.integers(0, 64, (8, 1, 32)).astype(np.int32)})
    assert snrs[1] > snrs[0] + 2, snrs


def test_refit_palettizes_with_refitted_luts(tmp_path):
    """compress(refit=True): each calibrated palettization is gptq_palettize(..., refit=True) of the
    same statistics, which differs from the plain sweep's LUTs."""
    import coremltools.optimize.coreml as cto

    import weightpack.coreml as wpc

    config = cto.OptimizationConfig(cto.OpPalettizerConfig(nbits=4))
    calibration = bert_inputs(16, 1)
    path = wpc.compress(BERT, config, calibration=calibration, sequential=False, refit=True,
                        output=str(tmp_path / "refit.mlpackage"))  # fmt: skip
    stats = collect(BERT, calibration)["layers_1_up_weight"]
    w = wpc.load(BERT)["layers_1_up_weight"]
    got = wpc.load(path)["layers_1_up_weight_palettized"]
    assert got == gptq_palettize(w, stats, 4, refit=True)
    assert got != gptq_palettize(w, stats, 4)


def test_prune_refit_switch_gives_plain_sparsegpt(tmp_path):
    """compress(prune_refit=False): calibrated pruning is sparsegpt_prune without the refit of the
    kept weights (the default refits them)."""
    import coremltools.optimize.coreml as cto

    import weightpack.coreml as wpc
    from weightpack.calibration import sparsegpt_prune

    config = cto.OptimizationConfig(cto.OpMagnitudePrunerConfig(target_sparsity=0.5))
    calibration = bert_inputs(16, 1)
    stats = collect(BERT, calibration)["layers_1_up_weight"]
    w = wpc.load(BERT)["layers_1_up_weight"]
    got = {}
    for refit in (True, False):
        path = wpc.compress(BERT, config, calibration=calibration, sequential=False, prune_refit=refit,
                            output=str(tmp_path / f"p{refit}.mlpackage"))  # fmt: skip
        got[refit] = wpc.load(path)["layers_1_up_weight_sparsified"]
        assert got[refit] == sparsegpt_prune(w, stats, 0.5, refit=refit)
    assert got[True] != got[False]
    with pytest.raises(WeightpackError, match="prune_refit=1"):
        wpc.compress(BERT, config, calibration=calibration, prune_refit=1, output=str(tmp_path / "bad.mlpackage"))


def test_refit_needs_calibration_and_a_bool(tmp_path):
    import coremltools.optimize.coreml as cto

    import weightpack.coreml as wpc

    config = cto.OptimizationConfig(cto.OpPalettizerConfig(nbits=4))
    with pytest.raises(WeightpackError, match="needs calibration"):
        wpc.compress(BERT, config, refit=True, output=str(tmp_path / "a.mlpackage"))
    with pytest.raises(WeightpackError, match="refit='yes'"):
        wpc.compress(BERT, config, calibration=bert_inputs(2, 1), refit="yes", output=str(tmp_path / "b.mlpackage"))
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------------------------- residual streams


def residual_block(seed=0, broadcast=False):
    """``a = x @ W1.T; y = a + relu(a) @ W2.T``: W2's output is added to the residual stream ``a``
    (``broadcast``: to ``mean(a, axis=0)``, one row for all)."""
    from weightpack.coreml.runtime import Program
    from weightpack.coreml.runtime.graph import Const, Graph, OpNode, Ref, TensorType, Var

    rng = np.random.default_rng(seed)
    w1, w2 = (rng.standard_normal((8, 8)).astype(np.float32) for _ in range(2))
    t = TensorType((None, 8), "fp32")
    graph = Graph(inputs=[Var("x", t)], outputs=["y"], source="residual block")
    for name, value in (("w1", w1), ("w2", w2)):
        graph.constants[name] = value
        graph.weights.add(name)
        graph.const_types[name] = TensorType((8, 8), "fp32")
    graph.ops += [OpNode("linear", "first", {"x": Ref("x"), "weight": Ref("w1")}, [Var("a", t)]),
                  OpNode("relu", "act", {"x": Ref("a")}, [Var("h", t)]),
                  OpNode("linear", "second", {"x": Ref("h"), "weight": Ref("w2")}, [Var("b", t)]),
                  OpNode("add", "sum", {"x": Ref("m" if broadcast else "a"), "y": Ref("b")}, [Var("y", t)])]  # fmt: skip
    if broadcast:
        mean = OpNode("reduce_mean", "mean", {"x": Ref("a"), "axes": Const(np.array([0], np.int32)), "keep_dims": Const(np.bool_(True))},
                      [Var("m", TensorType((1, 8), "fp32"))])  # fmt: skip
        graph.ops.insert(3, mean)
    return w1, w2, Program(graph, "load")


def test_residual_streams_of_the_fixtures():
    from weightpack.calibration.sequential import residual_streams

    assert residual_streams(as_program(BERT)) == {"layers_0_o_weight": "input_5", "layers_0_down_weight": "input_11",
                                                  "layers_1_o_weight": "input_19", "layers_1_down_weight": "input_25"}  # fmt: skip
    assert residual_streams(llama_program()) == {"layers_0_o_weight": "x_1", "layers_0_down_weight": "x_3",
                                                 "layers_1_o_weight": "x_5", "layers_1_down_weight": "x_7"}  # fmt: skip
    assert residual_streams(residual_block()[2]) == {"w2": "a"}  # w1's output is read twice: no stream


def test_residual_target_absorbs_the_residual_streams_error():
    """W2's target minimises ||(A + H W2^T) - (A~ + H~ W_t^T)||^2 (damped towards W2): the error the
    compressed W1 leaves in the residual stream A is absorbed as far as H~ predicts it."""
    from weightpack.calibration.hessian import initial_damping

    w1, w2, prog = residual_block(6)
    x = np.random.default_rng(7).standard_normal((256, 8)).astype(np.float32)
    seq = SequentialStats(prog, {"x": x}, correct_inputs=True)
    small = wp.palettize(w1, nbits=1)
    seq.finish("w1", small)
    stats = seq.stats("w2")
    target = seq.target("w2", w2, stats).astype(np.float64)
    a = (x @ w1.T).astype(np.float64)
    a_small = (x @ small.decompress(np.float32).T).astype(np.float64)
    h, h_small = np.maximum(a, 0), np.maximum(a_small, 0)
    gram = h_small.T @ h_small / 256
    lam = initial_damping(gram, 0.01)
    w = w2.astype(np.float64)
    rhs = w @ (h.T @ h_small / 256) + ((a - a_small).T @ h_small) / 256 + lam * w
    np.testing.assert_allclose(target, np.linalg.solve(gram + lam * np.eye(8), rhs.T).T, rtol=2e-4, atol=2e-5)
    want = a + h @ w.T
    without = np.sum((want - a_small - h_small @ seq_target_without_residual(w, h, h_small, lam).T) ** 2)
    assert np.sum((want - a_small - h_small @ target.T) ** 2) < 0.9 * without  # 0.80 here


def test_a_broadcast_residual_stream_adds_no_term():
    """The stream (1 row per batch of 8) does not align with the layer's rows: the plain input correction."""
    from weightpack.calibration.hessian import initial_damping
    from weightpack.calibration.sequential import residual_streams

    w1, w2, prog = residual_block(6, broadcast=True)
    assert residual_streams(prog) == {"w2": "m"}
    x = np.random.default_rng(7).standard_normal((256, 8)).astype(np.float32)
    seq = SequentialStats(prog, {"x": x.reshape(32, 8, 8)}, correct_inputs=True)  # batches of 8 rows
    small = wp.palettize(w1, nbits=1)
    seq.finish("w1", small)
    target = seq.target("w2", w2, seq.stats("w2")).astype(np.float64)
    h = np.maximum((x @ w1.T).astype(np.float64), 0)
    h_small = np.maximum((x @ small.decompress(np.float32).T).astype(np.float64), 0)
    lam = initial_damping(h_small.T @ h_small / 256, 0.01)
    np.testing.assert_allclose(target, seq_target_without_residual(w2.astype(np.float64), h, h_small, lam), rtol=2e-4, atol=2e-5)


def seq_target_without_residual(w, h, h_small, lam):
    gram = h_small.T @ h_small / len(h)
    return w + np.linalg.solve(gram + lam * np.eye(len(gram)), (w @ (h.T @ h_small / len(h) - gram)).T).T


def test_residual_correction_gains_on_the_encoder(tmp_path):
    """The BERT fixture at 4 bits per tensor: the data-free token-embedding table dominates the
    error; the layers writing into the residual stream absorb part of it (without the residual
    targets the default gained 1.3 dB here)."""
    import coremltools.optimize.coreml as cto

    import weightpack.coreml as wpc

    config = cto.OptimizationConfig(cto.OpPalettizerConfig(nbits=4))
    paths = [wpc.compress(BERT, config, output=str(tmp_path / "free.mlpackage")),
             wpc.compress(BERT, config, calibration=bert_inputs(24, 8), output=str(tmp_path / "fix.mlpackage"))]  # fmt: skip
    snrs = held_out_snrs(BERT, paths, bert_inputs(8, 9))
    assert snrs[1] > snrs[0] + 3, snrs
