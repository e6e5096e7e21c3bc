"""Run a model of layers with compressed weights the way Core ML's runtimes do: a thin builder of
programs for :class:`weightpack.coreml.Program`, the one runtime (its module documents the
policies).

- ``"load"`` (iOS 16): every weight is decompressed once, when the model loads, to dense float32;
  inference then uses dense BLAS products. Memory and speed are those of the float model.
- ``"jit"`` (iOS 17): weights stay compressed (zero-copy when they came memory-mapped from a
  weight.bin). Linear layers run the fused kernels, which decode each row in registers; other
  layers (convolutions) decompress their weight into one scratch buffer, shared by all layers,
  right before they run.
- ``"auto"``: per layer, whichever of the two is faster at the model's batch size, decided at
  load by timing both on the layer itself (the measured cost model; its time counts as load time).

>>> import numpy as np, weightpack as wp
>>> from weightpack.runtime import Linear, Model
>>> rng = np.random.default_rng(0)
>>> layers = [Linear(wp.quantize(rng.standard_normal((8, 16)).astype(np.float32), "int8"), activation="relu"),
...           Linear(wp.palettize(rng.standard_normal((4, 8)).astype(np.float32), nbits=4))]
>>> jit, load = Model(layers, policy="jit"), Model(layers, policy="load")
>>> x = rng.standard_normal((2, 16)).astype(np.float32)
>>> bool(np.allclose(jit(x), load(x), rtol=1e-5, atol=1e-5)), jit.report.resident_weight_bytes < load.report.resident_weight_bytes
(True, True)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .coreml.runtime.report import Report
from .coreml.runtime.weights import POLICIES
from .errors import WeightpackError, describe
from .formats.base import CompressedTensor

ACTIVATIONS = (None, "relu", "gelu")  # gelu: the tanh approximation


def _check_weight(weight, name: str, rank) -> None:
    if isinstance(weight, CompressedTensor):
        shape = weight.shape
    elif isinstance(weight, np.ndarray) and weight.dtype.kind == "f":
        shape = weight.shape
    else:
        raise WeightpackError(f"{name} must be a compressed tensor or a float array, got {describe(weight)}")
    if len(shape) not in rank:
        raise WeightpackError(f"{name} has shape {shape}; expected rank {' or '.join(map(str, rank))}")


@dataclass
class Linear:
    """``y = act(x @ W.T + bias)`` with W of shape (out, in)."""

    weight: object
    bias: np.ndarray | None = None
    activation: str | None = None

    def __post_init__(self):
        _check_weight(self.weight, "Linear weight", (2,))
        _check_common(self)

    def output_shape(self, input_shape):
        if input_shape[-1] != self.weight.shape[1]:
            raise WeightpackError(f"Linear layer expects {self.weight.shape[1]} input features, got shape {input_shape}")
        return input_shape[:-1] + (self.weight.shape[0],)


@dataclass
class Conv2d:
    """2-D convolution of (batch, C, H, W) inputs by W of shape (out, C, kh, kw), via im2col."""

    weight: object
    bias: np.ndarray | None = None
    activation: str | None = None
    stride: int = 1
    padding: int = 0

    def __post_init__(self):
        _check_weight(self.weight, "Conv2d weight", (4,))
        _check_common(self)
        if not (isinstance(self.stride, int) and self.stride >= 1 and isinstance(self.padding, int) and self.padding >= 0):
            raise WeightpackError(f"stride={describe(self.stride)} must be >= 1 and padding={describe(self.padding)} >= 0")

    def output_shape(self, input_shape):
        out, channels, kh, kw = self.weight.shape
        if len(input_shape) != 4 or input_shape[1] != channels:
            raise WeightpackError(f"Conv2d layer expects (batch, {channels}, H, W) inputs, got shape {input_shape}")
        h = (input_shape[2] + 2 * self.padding - kh) // self.stride + 1
        w = (input_shape[3] + 2 * self.padding - kw) // self.stride + 1
        if h < 1 or w < 1:
            raise WeightpackError(f"input shape {input_shape} is smaller than the {kh}x{kw} kernel")
        return (input_shape[0], out, h, w)


def _check_common(layer) -> None:
    if layer.activation not in ACTIVATIONS:
        raise WeightpackError(f"activation={describe(layer.activation)} is unknown; allowed: {list(ACTIVATIONS)}")
    if layer.bias is not None:
        layer.bias = np.asarray(layer.bias, np.float32)
        if layer.bias.shape != (layer.weight.shape[0],):
            raise WeightpackError(f"bias has shape {layer.bias.shape}; expected ({layer.weight.shape[0]},)")


class Model:
    """A sequence of Linear / Conv2d layers run under a decompression policy: a program of
    ``linear`` / ``conv`` ops and activations, run by :class:`weightpack.coreml.Program`.

    ``batch_size`` is the batch the ``"auto"`` policy optimises for; ``backend`` picks the kernel
    backend of the fused products and of decompression. ``report`` is the program's
    :class:`~weightpack.coreml.runtime.Report` (``layer_modes``: one mode per layer).
    """

    def __init__(self, layers, policy: str = "jit", *, batch_size: int = 1, backend=None):
        if policy not in POLICIES:
            raise WeightpackError(f"policy={describe(policy)} is unknown; allowed: {POLICIES}")
        if not layers or not all(isinstance(layer, (Linear, Conv2d)) for layer in layers):
            raise WeightpackError("layers must be a non-empty sequence of Linear and Conv2d layers")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise WeightpackError(f"batch_size={describe(batch_size)} must be a positive integer")
        from .coreml.runtime import Program

        self.layers, self.policy, self.backend = list(layers), policy, backend
        self.program = Program(_graph(self.layers), policy, backend=backend, batch_size=batch_size)

    @property
    def report(self) -> Report:
        return self.program.report

    def __call__(self, x) -> np.ndarray:
        """Run every layer on ``x`` (batch, features) or (batch, C, H, W); float32 out."""
        x = np.asarray(x, np.float32)
        shape = x.shape
        for layer in self.layers:  # the layers' own checks: clear messages before anything runs
            shape = layer.output_shape(shape)
        return self.program.predict({"x": x})["y"]


def _graph(layers):
    """The program of a layer stack: input ``x``, one ``linear`` / ``conv`` op (+ activation) per
    layer, output ``y``; weights are the layers' tensors, biases immediate constants."""
    from .coreml.runtime.graph import Const, Graph, OpNode, Ref, TensorType, Var

    graph = Graph(inputs=[Var("x", TensorType(None, "fp32"))], outputs=[], source="layer model")
    current = "x"
    for i, layer in enumerate(layers):
        weight = f"layer{i}_weight"
        graph.constants[weight] = layer.weight
        graph.weights.add(weight)
        graph.const_types[weight] = TensorType(tuple(layer.weight.shape), "fp32")
        inputs = {"x": Ref(current), "weight": Ref(weight)}
        if layer.bias is not None:
            inputs["bias"] = Const(layer.bias)
        if isinstance(layer, Conv2d):
            inputs.update(strides=Const(np.array([layer.stride] * 2, np.int32)), pad_type=Const("custom"),
                          pad=Const(np.array([layer.padding] * 4, np.int32)))  # fmt: skip
        out = f"layer{i}_out"
        kind = "conv" if isinstance(layer, Conv2d) else "linear"
        graph.ops.append(OpNode(kind, f"layer{i}", inputs, [Var(out, TensorType(None, "fp32"))]))
        if layer.activation is not None:
            act = {"x": Ref(out)}
            if layer.activation == "gelu":
                act["mode"] = Const("TANH_APPROXIMATION")
            graph.ops.append(OpNode(layer.activation, f"layer{i}_{layer.activation}", act, [Var(f"{out}_act", TensorType(None, "fp32"))]))
            out = f"{out}_act"
        current = out
    graph.ops[-1].outputs[0] = Var("y", graph.ops[-1].outputs[0].type)
    graph.outputs = ["y"]
    return graph
