"""Stateful programs (iOS18 ``state`` inputs: KV caches, accumulators): ``make_state`` and
``predict(inputs, state=...)`` against a numpy re-implementation of a MIL program, against a torch
module with a registered KV cache converted by coremltools, fused chains beside state ops, and
the errors."""
import coremltools as ct
import numpy as np
import pytest
import torch
import torch.nn as nn
from coremltools.converters.mil import Builder as mb
from coremltools.converters.mil.mil import types

from program_oracle import check_output, torch_bound
from weightpack.coreml import Program
from weightpack.coreml.runtime.graph import Const, Graph, OpNode, Ref, TensorType, Var
from weightpack.coreml.runtime import ProgramState
from weightpack.errors import FormatError, WeightpackError

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::RuntimeWarning:coremltools", "ignore::UserWarning")
F16, F32 = np.float16, np.float32


# ------------------------------------------------------------------ a MIL program, against numpy


def _converted(prog, precision=ct.precision.FLOAT16):
    return ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS18, compute_precision=precision,
                      pass_pipeline=ct.PassPipeline.EMPTY, skip_model_load=True)  # fmt: skip


@pytest.fixture(scope="module")
def accumulator():
    """Two fp16 states: ``acc`` decays and accumulates x; ``last`` holds the previous call's column sums."""

    @mb.program(
        input_specs=[mb.StateTensorSpec((2, 3), dtype=types.fp16), mb.StateTensorSpec((3,), dtype=types.fp16), mb.TensorSpec((2, 3), dtype=types.fp16)],
        opset_version=ct.target.iOS18,
    )
    def prog(acc, last, x):
        old = mb.read_state(input=acc, name="old")
        prev = mb.read_state(input=last, name="prev")
        new = mb.add(x=mb.mul(x=old, y=np.float16(0.5), name="half"), y=x, name="new")
        updated = mb.coreml_update_state(state=acc, value=new, name="update_acc")
        mb.coreml_update_state(state=last, value=mb.reduce_sum(x=x, axes=[0], name="sums"), name="update_last")  # output unused
        return mb.mul(x=updated, y=np.float16(2.0), name="y"), mb.identity(x=prev, name="previous")

    return _converted(prog)


def _accumulator_reference(xs, precision):
    """The program's outputs and final states, op by op in numpy: float32 arithmetic, every fp16
    value rounded to binary16 after each op under ``fp16`` precision; the states store binary16."""
    rnd = (lambda v: v.astype(F16).astype(F32)) if precision == "fp16" else (lambda v: v)
    acc, last = np.zeros((2, 3), F16), np.zeros(3, F16)
    outputs = []
    for x in xs:
        old, prev = acc.astype(F32), last.astype(F32)
        acc = rnd(rnd(old * F32(0.5)) + x.astype(F32)).astype(F16)
        last = rnd(x.astype(F32).sum(axis=0)).astype(F16)
        outputs.append(((acc.astype(F32) * F32(2.0)).astype(F16), prev.astype(F16)))
    return outputs, {"acc": acc, "last": last}


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_states_persist_across_calls_as_numpy_computes_them(accumulator, precision):
    prog = Program.load(accumulator, compute_precision=precision)
    assert prog.inputs == {"x": ((2, 3), np.dtype(F16))}
    (acc_name, acc_spec), (last_name, last_spec) = prog.states.items()  # coremltools may rename states
    assert acc_spec == ((2, 3), np.dtype(F16)) and last_spec == ((3,), np.dtype(F16))
    rng = np.random.default_rng(3)
    xs = [(rng.standard_normal((2, 3)) * 4).astype(F16) for _ in range(5)]
    expected, final = _accumulator_reference(xs, precision)
    state = prog.make_state()
    assert state.names == (acc_name, last_name)
    assert not state.read_state(acc_name).any() and not state.read_state(last_name).any()  # zeros, as Core ML's makeState
    for k, (x, (y, previous)) in enumerate(zip(xs, expected)):
        kept = x.copy()
        out = prog.predict({"x": x}, state=state)
        np.testing.assert_array_equal(x, kept)  # the caller's array is never modified
        assert out["y"].dtype == F16 and out["previous"].dtype == F16
        np.testing.assert_array_equal(out["y"], y, err_msg=f"call {k}")
        np.testing.assert_array_equal(out["previous"], previous, err_msg=f"call {k}")
    for name, value in zip((acc_name, last_name), final.values()):
        read = state.read_state(name)
        assert read.dtype == F16
        np.testing.assert_array_equal(read, value)


def test_each_state_object_is_its_own_and_read_returns_a_copy(accumulator):
    prog = Program.load(accumulator)
    acc = next(iter(prog.states))
    x = np.full((2, 3), 2.0, F16)
    first, second = prog.make_state(), prog.make_state()
    prog.predict({"x": x}, state=first)
    again = prog.predict({"x": x}, state=first)["y"]
    assert prog.predict({"x": x}, state=second)["y"].tolist() == [[4.0] * 3] * 2  # 2 * (0 * 0.5 + 2)
    assert again.tolist() == [[6.0] * 3] * 2  # 2 * (2 * 0.5 + 2)
    copy = first.read_state(acc)
    copy[...] = 100
    assert first.read_state(acc).tolist() == [[3.0] * 3] * 2


def test_write_sets_the_state_the_next_call_reads(accumulator):
    prog = Program.load(accumulator)
    acc = next(iter(prog.states))
    state = prog.make_state()
    start = np.arange(6, dtype=F32).reshape(2, 3)  # a float32 array: converted to the state's float16
    state.write_state(acc, start)
    assert state.read_state(acc).dtype == F16
    out = prog.predict({"x": np.zeros((2, 3), F16)}, state=state)
    np.testing.assert_array_equal(out["y"], (start * 0.5 * 2).astype(F16))
    np.testing.assert_array_equal(start, np.arange(6, dtype=F32).reshape(2, 3))


def _graph(states, inputs, ops, outputs):
    g = Graph(inputs=[Var(n, t) for n, t in inputs.items()], outputs=outputs, states=[Var(n, t) for n, t in states.items()], source="state test")
    g.ops += ops
    return g


def test_fp32_and_int32_states_keep_their_dtype():
    """coremltools 9 converts fp16 states only; Core ML's coreml_update_state also takes fp32 and integers."""
    f, i = TensorType((3,), "fp32"), TensorType((), "int32")
    g = _graph(
        {"total": f, "count": i},
        {"x": f},
        [
            OpNode("read_state", "rt", {"input": Ref("total")}, [Var("t0", f)]),
            OpNode("add", "at", {"x": Ref("t0"), "y": Ref("x")}, [Var("t1", f)]),
            OpNode("coreml_update_state", "ut", {"state": Ref("total"), "value": Ref("t1")}, [Var("t", f)]),
            OpNode("read_state", "rc", {"input": Ref("count")}, [Var("c0", i)]),
            OpNode("add", "ac", {"x": Ref("c0"), "y": Const(np.int32(1))}, [Var("c1", i)]),
            OpNode("write_state", "wc", {"input": Ref("count"), "data": Ref("c1")}, []),
        ],
        ["t", "c1"],
    )
    prog = Program(g)
    assert prog.states == {"total": ((3,), np.dtype(F32)), "count": ((), np.dtype(np.int32))}
    state = prog.make_state()
    x = np.array([0.1, 1e-8, -3.0], F32)
    for _ in range(3):
        out = prog.predict({"x": x}, state=state)
    assert out["c1"] == 3 and state.read_state("count").dtype == np.int32 and state.read_state("count") == 3
    np.testing.assert_array_equal(out["t"], x + x + x)  # float32 state: no binary16 rounding
    assert state.read_state("total").dtype == F32


# ------------------------------------------------------------------ a torch KV cache, token by token


class KVCacheAttention(nn.Module):
    """RMSNorm, one attention head over a KV cache kept in registered buffers (coremltools'
    stateful-model pattern: the cache slice of the new token is assigned in place), an output
    projection and the residual add."""

    def __init__(self, dim=16, max_len=8):
        super().__init__()
        torch.manual_seed(5)
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim, bias=False) for _ in range(4))
        self.norm = nn.Parameter(1 + 0.1 * torch.randn(dim))
        self.register_buffer("k_cache", torch.zeros(1, max_len, dim))
        self.register_buffer("v_cache", torch.zeros(1, max_len, dim))

    def forward(self, x, mask):
        h = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * self.norm
        q, k, v = self.q(h), self.k(h), self.v(h)
        end = mask.shape[-1]
        start = end - x.shape[1]
        self.k_cache[:, start:end, :] = k
        self.v_cache[:, start:end, :] = v
        keys, values = self.k_cache[:, :end, :], self.v_cache[:, :end, :]
        scores = q @ keys.transpose(-1, -2) / 4.0 + mask
        return x + self.o(torch.softmax(scores, -1) @ values)


DIM, MAX_LEN = 16, 8
# rounding depth (tests/program_oracle.py): norm (16) + k (16) + scores (16) + softmax (8) + values (8) + o (16)
DEPTH = 4 * DIM + 2 * MAX_LEN


def _converted_with_caches(module, cache_shape):
    """``module(x, mask)`` traced and converted with its ``k_cache`` / ``v_cache`` buffers as fp16
    states (``ct.StateType``), the mask's last dimension (the filled length) flexible."""
    traced = torch.jit.trace(module, (torch.rand(1, 1, DIM), torch.zeros(1, 1, 3)))
    cache = ct.TensorType(shape=cache_shape, dtype=np.float16)
    return ct.convert(
        traced,
        inputs=[ct.TensorType(shape=(1, 1, DIM), dtype=np.float16, name="x"),
                ct.TensorType(shape=(1, 1, ct.RangeDim(1, MAX_LEN, default=1)), dtype=np.float16, name="mask")],
        outputs=[ct.TensorType(dtype=np.float16, name="y")],
        states=[ct.StateType(wrapped_type=cache, name="k_cache"), ct.StateType(wrapped_type=cache, name="v_cache")],
        minimum_deployment_target=ct.target.iOS18, convert_to="mlprogram", skip_model_load=True,
    )  # fmt: skip


@pytest.fixture(scope="module")
def kv_model():
    module = KVCacheAttention(DIM, MAX_LEN).eval()
    return _converted_with_caches(module, (1, MAX_LEN, DIM)), module


def _empty_caches(module):
    """Zero the caches tracing wrote into: a program's states start at zeros (the buffers' values
    at conversion are not kept)."""
    module.k_cache.zero_()
    module.v_cache.zero_()


def _tokens(count):
    rng = np.random.default_rng(11)
    return [(rng.standard_normal((1, 1, DIM)) * 2).astype(F16) for _ in range(count)]


@pytest.mark.parametrize("policy,precision", [("jit", "fp32"), ("load", "fp32"), ("jit", "fp16")])
def test_a_kv_cache_decodes_token_by_token_as_torch_does(kv_model, policy, precision):
    mlmodel, module = kv_model
    prog = Program.load(mlmodel, policy=policy, compute_precision=precision)
    assert prog.states == {"k_cache": ((1, MAX_LEN, DIM), np.dtype(F16)), "v_cache": ((1, MAX_LEN, DIM), np.dtype(F16))}
    oracle = KVCacheAttention(DIM, MAX_LEN).double().eval()  # the same weights (same seed), float64, its own cache
    oracle.load_state_dict(module.state_dict())
    _empty_caches(oracle)
    state = prog.make_state()
    for t, x in enumerate(_tokens(MAX_LEN)):
        mask = np.zeros((1, 1, t + 1), F16)
        out = prog.predict({"x": x, "mask": mask}, state=state)["y"]
        with torch.no_grad():
            expected = oracle(torch.from_numpy(x.astype(np.float64)), torch.from_numpy(mask.astype(np.float64))).numpy()
        check_output(f"token {t}", out, expected, torch_bound(expected, DEPTH, "fp16"), F16)
        for name in ("k_cache", "v_cache"):  # the caches evolve as torch's buffers
            cache, reference = state.read_state(name), getattr(oracle, name).numpy()
            check_output(f"token {t}, {name}", cache[:, : t + 1], reference[:, : t + 1], torch_bound(reference, 2 * DIM, "fp16"), F16)
            assert not cache[:, t + 1 :].any(), f"token {t}: {name} written past position {t}"


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_kv_cache_updates_run_in_place_with_the_same_bits_as_the_ops(kv_model, precision):
    """The saved program reads each cache, slice-updates it and writes it back, then reads it
    again and slices the filled positions: fused, the new position is written into the state in
    place and only the filled positions are read; op by op (observe) the whole caches move.
    Under fp16 precision only these chains are fused (they move binary16 values unchanged)."""
    prog = Program.load(kv_model[0], policy="jit", compute_precision=precision)
    chains = prog.report.fused_chains
    state_chains = ["state_update", "state_update", "state_slice", "state_slice"]
    assert [kind for kind, _ in chains] == (["rmsnorm"] if precision == "fp32" else []) + state_chains
    types = {step.node.name: step.node.type for step in prog._steps}
    assert [[types[name] for name in ops] for kind, ops in chains[-4:]] == [["read_state", "slice_update", "write_state"]] * 2 + [["read_state", "slice_by_index"]] * 2
    fused_state, observed_state = prog.make_state(), prog.make_state()
    for t, x in enumerate(_tokens(MAX_LEN)):
        feeds = {"x": x, "mask": np.zeros((1, 1, t + 1), F16)}
        fused = prog.predict(feeds, state=fused_state)["y"]
        op_by_op = prog.predict(feeds, state=observed_state, observe=lambda op, arrays: None)["y"]
        assert fused.tobytes() == op_by_op.tobytes()
    for name in prog.states:
        assert fused_state.read_state(name).tobytes() == observed_state.read_state(name).tobytes()


class StackedCaches(nn.Module):
    """Two attention layers sharing stacked caches (one state per cache, a layer index first, as
    Apple's stateful LLM examples keep them): a read of the cache feeds one layer's slice and the
    next layer's update."""

    def __init__(self, dim=16, max_len=8, layers=2):
        super().__init__()
        torch.manual_seed(9)
        self.dim = dim
        self.qkv = nn.ModuleList(nn.Linear(dim, 3 * dim, bias=False) for _ in range(layers))
        self.register_buffer("k_cache", torch.zeros(layers, 1, max_len, dim))
        self.register_buffer("v_cache", torch.zeros(layers, 1, max_len, dim))

    def forward(self, x, mask):
        end = mask.shape[-1]
        start = end - x.shape[1]
        for i, qkv in enumerate(self.qkv):
            q, k, v = qkv(x).split(self.dim, -1)
            self.k_cache[i, :, start:end, :] = k
            self.v_cache[i, :, start:end, :] = v
            keys, values = self.k_cache[i, :, :end, :], self.v_cache[i, :, :end, :]
            x = x + torch.softmax(q @ keys.transpose(-1, -2) / 4.0 + mask, -1) @ values
        return x


def test_stacked_caches_of_several_layers_decode_in_place_as_torch_does():
    module = StackedCaches(DIM, MAX_LEN).eval()
    mlmodel = _converted_with_caches(module, (2, 1, MAX_LEN, DIM))
    prog = Program.load(mlmodel, policy="jit")
    fused_ops = {name for _, ops in prog.report.fused_chains for name in ops}
    state_ops = [step.node.name for step in prog._steps if step.node.type in ("read_state", "write_state")]
    assert len(state_ops) == 10 and set(state_ops) <= fused_ops  # every cache read and write runs in place
    oracle = StackedCaches(DIM, MAX_LEN).double().eval()
    oracle.load_state_dict(module.state_dict())
    _empty_caches(oracle)
    fused, op_by_op = prog.make_state(), prog.make_state()
    depth = 2 * (2 * DIM + 2 * MAX_LEN)  # per layer: qkv (16), scores (16), softmax (8), values (8)
    for t, x in enumerate(_tokens(MAX_LEN)):
        mask = np.zeros((1, 1, t + 1), F16)
        out = prog.predict({"x": x, "mask": mask}, state=fused)["y"]
        assert out.tobytes() == prog.predict({"x": x, "mask": mask}, state=op_by_op, observe=lambda op, arrays: None)["y"].tobytes()
        with torch.no_grad():
            expected = oracle(torch.from_numpy(x.astype(np.float64)), torch.from_numpy(mask.astype(np.float64))).numpy()
        check_output(f"token {t}", out, expected, torch_bound(expected, depth, "fp16"), F16)
    for name in prog.states:
        assert fused.read_state(name).tobytes() == op_by_op.read_state(name).tobytes()
        reference = getattr(oracle, name).numpy()
        check_output(name, fused.read_state(name), reference, torch_bound(reference, depth, "fp16"), F16)


# ------------------------------------------------------------------ errors


def test_predict_needs_the_programs_own_state(accumulator, kv_model):
    prog = Program.load(accumulator)
    x = {"x": np.zeros((2, 3), F16)}
    with pytest.raises(WeightpackError, match=r"the program is stateful \(.*: fp16\[2, 3\].*\): pass state=program.make_state\(\)"):
        prog.predict(x)
    with pytest.raises(WeightpackError, match="made by another program"):
        prog.predict(x, state=Program.load(accumulator).make_state())
    with pytest.raises(WeightpackError, match="made by another program"):
        prog.predict(x, state=Program.load(kv_model[0]).make_state())
    with pytest.raises(WeightpackError, match="state must be a ProgramState made by this program's make_state\\(\\), got \\{\\}"):
        prog.predict(x, state={})
    stateless = Program(Graph(inputs=[Var("x", TensorType((2,), "fp32"))], outputs=["x"]))
    with pytest.raises(WeightpackError, match="the program has no states; call predict without state="):
        stateless.make_state()
    with pytest.raises(WeightpackError, match="was given, but the program has no states"):
        stateless.predict({"x": np.zeros(2, F32)}, state=prog.make_state())
    assert stateless.states == {}


def test_write_checks_the_name_shape_and_dtype(accumulator):
    prog = Program.load(accumulator)
    state = prog.make_state()
    acc = state.names[0]
    with pytest.raises(WeightpackError, match=f"value for state '{acc}' has shape \\(3,\\); the state holds fp16\\[2, 3\\]"):
        state.write_state(acc, np.zeros(3, F16))
    with pytest.raises(WeightpackError, match=f"value for state '{acc}' has dtype int32; the state holds fp16\\[2, 3\\]"):
        state.write_state(acc, np.zeros((2, 3), np.int32))
    with pytest.raises(WeightpackError, match="value for state .* must be a numpy array, got"):
        state.write_state(acc, "zeros")
    with pytest.raises(WeightpackError, match="the program has no state named 'cache'; its states: "):
        state.read_state("cache")
    assert not state.read_state(acc).any()  # refused writes changed nothing
    assert repr(state).startswith("ProgramState(") and isinstance(state, ProgramState)


def test_a_value_of_the_wrong_shape_is_refused_naming_the_op():
    s, x = TensorType((2,), "fp32"), TensorType((None,), "fp32")
    g = _graph({"acc": s}, {"x": x}, [OpNode("coreml_update_state", "u", {"state": Ref("acc"), "value": Ref("x")}, [Var("y", x)])], ["y"])
    prog = Program(g)
    state = prog.make_state()
    prog.predict({"x": np.ones(2, F32)}, state=state)
    with pytest.raises(WeightpackError, match=r"op 'u' \(coreml_update_state\): parameter 'value' has shape \(3,\); state 'acc' holds shape \(2,\)"):
        prog.predict({"x": np.ones(3, F32)}, state=state)
    assert state.read_state("acc").tolist() == [1.0, 1.0]


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda s: [OpNode("add", "a", {"x": Ref("acc"), "y": Ref("x")}, [Var("y", s)])], r"op 'a' \(add\): parameter 'x' reads the state 'acc'; only read_state"),
        (lambda s: [OpNode("read_state", "r", {"input": Ref("x")}, [Var("y", s)])], r"op 'r' \(read_state\): parameter 'input' must be a state input of the function, got 'x'"),
        (lambda s: [OpNode("coreml_update_state", "u", {"state": Ref("acc"), "value": Const(np.zeros(2, F32))}, [Var("y", s)])],
         r"op 'u' \(coreml_update_state\): parameter 'value' has type fp32\[2\]; state 'acc' holds fp16\[2\]"),
        (lambda s: [OpNode("write_state", "w", {"input": Ref("acc"), "data": Ref("x")}, []), OpNode("read_state", "r", {"input": Ref("acc")}, [Var("acc", s)])],
         r"op 'r' \(read_state\): output 'acc' redefines an existing variable"),
    ],
)
def test_malformed_state_ops_are_refused_at_load(make, message):
    s = TensorType((2,), "fp16")
    g = _graph({"acc": s}, {"x": s}, make(s), ["y"])
    with pytest.raises(FormatError, match=message):
        Program(g)


def test_a_state_without_a_fixed_shape_is_refused():
    g = _graph({"acc": TensorType((None, 2), "fp16")}, {}, [], [])
    with pytest.raises(WeightpackError, match=r"state 'acc' has type fp16\[\?, 2\]; a state needs a fixed shape"):
        Program(g)


def test_a_compressed_kv_cache_runs_just_in_time_as_its_decompressed_form(kv_model):
    """Weights palettized to 4 bits, run compressed (jit; the thread count measured at load on a
    state of the program's own) against coremltools' decompressed program (load)."""
    import coremltools.optimize.coreml as cto

    import weightpack as wp
    from program_oracle import summation_bound
    from weightpack.coreml.runtime.threads import cpu_count

    small = wp.coreml.palettize_weights(kv_model[0], cto.OptimizationConfig(global_config=cto.OpPalettizerConfig(nbits=4, weight_threshold=200)))
    jit, reference = Program.load(small, policy="jit"), Program.load(cto.decompress_weights(small), policy="load")
    assert [op.mode for op in jit.weight_ops() if op.role == "linear"] == ["fused"] * 4
    assert jit.report.thread_seconds or cpu_count() == 1  # the load-time probe ran on a state of its own
    jit_state, reference_state = jit.make_state(), reference.make_state()
    for t, x in enumerate(_tokens(MAX_LEN)):
        feeds = {"x": x, "mask": np.zeros((1, 1, t + 1), F16)}
        expected = reference.predict(feeds, state=reference_state)["y"]
        check_output(f"token {t}", jit.predict(feeds, state=jit_state)["y"], expected, summation_bound(expected, DEPTH, True), F16)


def _cache_graph(interleaved_write=False, shared_read=False, late_slice=False):
    """cache[begin:end] = x in place, then y = cache[:end] (a KV cache step; positions as inputs).
    ``interleaved_write``: the state is overwritten by ``x2`` between its read and the slice
    update (the update then applies to the old value); ``shared_read``: the value read is also
    an output; ``late_slice``: the value read is also sliced after the write (output ``z``: the
    old positions)."""
    c, row, pos = TensorType((4, 2), "fp16"), TensorType((1, 2), "fp16"), TensorType((2,), "int32")
    ops = [OpNode("read_state", "r", {"input": Ref("cache")}, [Var("old", c)])]
    if interleaved_write:
        ops.append(OpNode("write_state", "w0", {"input": Ref("cache"), "data": Ref("x2")}, []))
    ops += [
        OpNode("slice_update", "su", {"x": Ref("old"), "update": Ref("x"), "begin": Ref("begin"), "end": Ref("end")}, [Var("new", c)]),
        OpNode("write_state", "w", {"input": Ref("cache"), "data": Ref("new")}, []),
        OpNode("read_state", "r2", {"input": Ref("cache")}, [Var("now", c)]),
        OpNode("slice_by_index", "sl", {"x": Ref("now"), "begin": Const(np.zeros(2, np.int32)), "end": Ref("end")}, [Var("y", TensorType((None, 2), "fp16"))]),
    ]
    if late_slice:
        ops.append(OpNode("slice_by_index", "late", {"x": Ref("old"), "begin": Const(np.zeros(2, np.int32)), "end": Ref("end")}, [Var("z", TensorType((None, 2), "fp16"))]))
    inputs = {"x": row, "begin": pos, "end": pos} | ({"x2": c} if interleaved_write else {})
    return _graph({"cache": c}, inputs, ops, ["y"] + (["old"] if shared_read else []) + (["z"] if late_slice else []))


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("variant", [{}, {"interleaved_write": True}, {"shared_read": True}, {"late_slice": True}])
def test_in_place_cache_steps_compute_what_the_ops_compute(variant, precision):
    prog = Program(_cache_graph(**variant), compute_precision=precision)
    fused_kinds = [kind for kind, _ in prog.report.fused_chains]
    assert fused_kinds == (["state_slice"] if variant else ["state_update", "state_slice"])  # the update stays ops when unsafe
    fused, op_by_op, expected = prog.make_state(), prog.make_state(), np.zeros((4, 2), F16)
    rng = np.random.default_rng(2)
    for t in range(4):
        x = rng.standard_normal((1, 2)).astype(F16)
        feeds = {"x": x, "begin": np.array([t, 0], np.int32), "end": np.array([t + 1, 2], np.int32)}
        if variant.get("interleaved_write"):
            feeds["x2"] = rng.standard_normal((4, 2)).astype(F16)
        expected[t] = x
        before = fused.read_state("cache")
        out, unfused = prog.predict(feeds, state=fused), prog.predict(feeds, state=op_by_op, observe=lambda op, arrays: None)
        y = out["y"]
        assert all(out[name].tobytes() == unfused[name].tobytes() for name in out)
        assert fused.read_state("cache").tobytes() == op_by_op.read_state("cache").tobytes()
        if variant.get("late_slice"):
            np.testing.assert_array_equal(out["z"], before[: t + 1])  # sliced from the value read before the write
        if not variant.get("interleaved_write"):  # the write of x2 is lost: the update applies to the value read before it
            np.testing.assert_array_equal(y, expected[: t + 1])
            np.testing.assert_array_equal(fused.read_state("cache"), expected)


def test_an_update_that_does_not_fit_its_slice_is_refused_in_place_leaving_the_state():
    prog = Program(_cache_graph())
    assert [kind for kind, _ in prog.report.fused_chains] == ["state_update", "state_slice"]
    state = prog.make_state()
    feeds = {"x": np.ones((1, 2), F16), "begin": np.array([0, 0], np.int32), "end": np.array([2, 2], np.int32)}
    for observe in (None, lambda op, arrays: None):  # fused in place, and op by op
        with pytest.raises(WeightpackError, match=r"^state test: op 'su' \(slice_update\): update of shape \(1, 2\) does not fit the slice of shape \(2, 2\)$"):
            prog.predict(feeds, state=state, observe=observe)
    assert not state.read_state("cache").any()
