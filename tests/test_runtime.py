"""The runtime model: every policy computes the same function; reports say what each costs."""
import itertools

import numpy as np
import pytest

import weightpack as wp
from weightpack.errors import WeightpackError
from weightpack.runtime import Conv2d, Linear, Model


@pytest.fixture(scope="module")
def mlp():
    rng = np.random.default_rng(0)
    w1 = wp.palettize(rng.standard_normal((64, 128)).astype(np.float32), nbits=4)
    w2 = wp.quantize(rng.standard_normal((32, 64)).astype(np.float32), "int8")
    w3 = wp.prune(rng.standard_normal((16, 32)).astype(np.float16), sparsity=0.5)
    return [Linear(w1, rng.standard_normal(64), activation="gelu"), Linear(w2, activation="relu"), Linear(w3)]


def reference(layers, x):
    for layer in layers:
        w = layer.weight.decompress(np.float32).astype(np.float64)
        x = x @ w.T + (0 if layer.bias is None else layer.bias)
        if layer.activation == "relu":
            x = np.maximum(x, 0)
        elif layer.activation == "gelu":
            x = 0.5 * x * (1 + np.tanh(0.7978845608028654 * (x + 0.044715 * x**3)))
    return x


@pytest.mark.parametrize("policy", ["load", "jit", "auto"])
def test_every_policy_computes_the_model(mlp, policy, backend):
    x = np.random.default_rng(1).standard_normal((3, 128)).astype(np.float32)
    model = Model(mlp, policy=policy, batch_size=3, backend=backend)
    np.testing.assert_allclose(model(x), reference(mlp, x), rtol=1e-4, atol=1e-4)
    assert model.report.last_latency_seconds > 0 and model.report.load_seconds > 0


def test_jit_keeps_weights_compressed_and_load_decompresses(mlp):
    jit, load = Model(mlp, policy="jit"), Model(mlp, policy="load")
    compressed = sum(layer.weight.nbytes for layer in mlp)
    dense = sum(layer.weight.size * 4 for layer in mlp)
    assert load.report.resident_weight_bytes == dense
    assert compressed <= jit.report.resident_weight_bytes < dense
    assert jit.report.layer_modes == ["fused"] * 3 and load.report.layer_modes == ["dense"] * 3
    assert jit.report.scratch_bytes == 0  # linear layers never materialise their weight


def test_auto_measures_each_layer(mlp):
    model = Model(mlp, policy="auto", batch_size=1)
    assert set(model.report.layer_modes) <= {"fused", "dense"} and len(model.report.layer_modes) == 3


def test_convolution_matches_a_direct_sum():
    rng = np.random.default_rng(2)
    weight = wp.palettize(rng.standard_normal((6, 3, 3, 3)).astype(np.float32), nbits=4)
    x = rng.standard_normal((2, 3, 9, 8)).astype(np.float32)
    w = weight.decompress(np.float32).astype(np.float64)
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    expected = np.zeros((2, 6, 5, 4))
    for i, j in itertools.product(range(5), range(4)):
        expected[:, :, i, j] = np.einsum("bchw,ochw->bo", padded[:, :, 2 * i:2 * i + 3, 2 * j:2 * j + 3], w)
    for policy in ("load", "jit", "auto"):
        model = Model([Conv2d(weight, stride=2, padding=1)], policy=policy)
        np.testing.assert_allclose(model(x), expected, rtol=1e-5, atol=1e-5)
    jit = Model([Conv2d(weight, stride=2, padding=1)], policy="jit")
    assert jit.report.layer_modes == ["scratch"] and jit.report.scratch_bytes == weight.size * 4


def test_scratch_buffer_is_shared_by_layers():
    rng = np.random.default_rng(3)
    small = wp.quantize(rng.standard_normal((4, 4, 3, 3)).astype(np.float32), "int8")
    large = wp.quantize(rng.standard_normal((8, 4, 3, 3)).astype(np.float32), "int8")
    model = Model([Conv2d(small, padding=1), Conv2d(large, padding=1)], policy="jit")
    assert model.report.scratch_bytes == large.size * 4


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda w: Model([Linear(w)], policy="eager"), "policy"),
        (lambda w: Model([], policy="jit"), "non-empty"),
        (lambda w: Model([Linear(w)], batch_size=0), "batch_size"),
        (lambda w: Linear(w, activation="swish"), "activation"),
        (lambda w: Linear(w, bias=np.ones(3)), "bias"),
        (lambda w: Conv2d(w), "rank 4"),
        (lambda w: Linear("weights"), "compressed tensor or a float array"),
    ],
)
def test_bad_configuration_is_a_clear_error(build, message):
    weight = wp.quantize(np.ones((4, 8), np.float32), "int8")
    with pytest.raises(WeightpackError, match=message):
        build(weight)


def test_input_of_the_wrong_width_is_a_clear_error():
    model = Model([Linear(wp.quantize(np.ones((4, 8), np.float32), "int8"))])
    with pytest.raises(WeightpackError, match="8 input features"):
        model(np.ones((1, 5), np.float32))


def test_jit_runs_weights_memory_mapped_from_a_package(tmp_path):
    import mmap

    rng = np.random.default_rng(4)
    w1 = wp.palettize(rng.standard_normal((64, 128)).astype(np.float16), nbits=4)
    w2 = wp.quantize(rng.standard_normal((32, 64)).astype(np.float16), "int8")
    names = wp.coreml.save_weights(str(tmp_path / "m.mlpackage"), {"w1": w1, "w2": w2})
    loaded = wp.coreml.load(str(tmp_path / "m.mlpackage"))
    l1, l2 = loaded[names["w1"]], loaded[names["w2"]]

    def mapped(array):
        """Whether the array's memory belongs to a memory map (through views and memoryviews)."""
        owner = array
        while owner is not None and not isinstance(owner, mmap.mmap):
            owner = owner.obj if isinstance(owner, memoryview) else getattr(owner, "base", None)
        return owner is not None

    assert mapped(l1.indices.packed) and mapped(l2.data.packed)
    model = Model([Linear(l1, activation="relu"), Linear(l2)], policy="jit")
    reference_model = Model([Linear(w1, activation="relu"), Linear(w2)], policy="load")
    x = rng.standard_normal((2, 128)).astype(np.float32)
    np.testing.assert_allclose(model(x), reference_model(x), rtol=1e-5, atol=1e-5)
    assert model.report.resident_weight_bytes < reference_model.report.resident_weight_bytes / 3
