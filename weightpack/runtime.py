"""Run a model of layers with compressed weights the way Core ML's runtimes do.

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

import time
from dataclasses import dataclass, field

import numpy as np

from .errors import WeightpackError, describe
from .formats.base import CompressedTensor
from .ops import matmul

POLICIES = ("load", "jit", "auto")
ACTIVATIONS = {
    None: lambda y: y,
    "relu": lambda y: np.maximum(y, 0, out=y),
    "gelu": lambda y: 0.5 * y * (1.0 + np.tanh(0.7978845608028654 * (y + 0.044715 * y**3))),
}


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

    def patches(self, x: np.ndarray) -> np.ndarray:
        """im2col: (batch * H' * W', C * kh * kw) patches of x."""
        _, channels, kh, kw = self.weight.shape
        if self.padding:
            p = self.padding
            x = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
        windows = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))[:, :, :: self.stride, :: self.stride]
        batch, _, h, w = windows.shape[:4]
        return np.ascontiguousarray(windows.transpose(0, 2, 3, 1, 4, 5)).reshape(batch * h * w, channels * kh * kw)


def _check_common(layer) -> None:
    if layer.activation not in ACTIVATIONS:
        raise WeightpackError(f"activation={describe(layer.activation)} is unknown; allowed: {list(ACTIVATIONS)}")
    if layer.bias is not None:
        layer.bias = np.asarray(layer.bias, np.float32)
        if layer.bias.shape != (layer.weight.shape[0],):
            raise WeightpackError(f"bias has shape {layer.bias.shape}; expected ({layer.weight.shape[0]},)")


@dataclass
class Report:
    """What a model costs: load time, the bytes weights keep resident, the shared scratch buffer,
    and the latency of the last inference."""

    policy: str
    load_seconds: float = 0.0
    resident_weight_bytes: int = 0
    scratch_bytes: int = 0
    last_latency_seconds: float = 0.0
    layer_modes: list = field(default_factory=list)


def _layout(weight: CompressedTensor) -> tuple:
    """What the kernels' speed depends on: the type, the shape and each array's type and shape."""
    arrays = tuple(
        (name, getattr(a, "dtype_name", None) or str(a.dtype), a.shape) for name, a in weight.arrays().items() if a is not None
    )
    return (type(weight).__name__, weight.shape, arrays)


def _weight_bytes(weight) -> int:
    if isinstance(weight, CompressedTensor):
        return weight.nbytes + weight.derived_nbytes
    return int(weight.nbytes)


class Model:
    """A sequence of Linear / Conv2d layers run under a decompression policy.

    ``batch_size`` is the batch the ``"auto"`` policy optimises for; ``backend`` picks the kernel
    backend of the fused products and of decompression.
    """

    def __init__(self, layers, policy: str = "jit", *, batch_size: int = 1, backend=None):
        if policy not in POLICIES:
            raise WeightpackError(f"policy={describe(policy)} is unknown; allowed: {POLICIES}")
        if not layers or not all(isinstance(layer, (Linear, Conv2d)) for layer in layers):
            raise WeightpackError("layers must be a non-empty sequence of Linear and Conv2d layers")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise WeightpackError(f"batch_size={describe(batch_size)} must be a positive integer")
        self.layers, self.policy, self.backend = list(layers), policy, backend
        self.report = Report(policy)
        self._decisions = {}  # layout signature -> measured choice, so equal layers are timed once
        start = time.perf_counter()
        self._weights, self._modes = [], []
        for layer in self.layers:
            mode = self._choose_mode(layer, batch_size)
            weight = layer.weight
            if mode == "dense" and isinstance(weight, CompressedTensor):
                weight = weight.decompress(np.float32, backend=backend)
            elif mode == "dense":
                weight = np.ascontiguousarray(weight, np.float32)
            self._weights.append(weight)
            self._modes.append(mode)
        scratch = [int(np.prod(l.weight.shape)) * 4 for l, m in zip(self.layers, self._modes) if m == "scratch"]
        self._scratch = np.empty(max(scratch, default=0) // 4, np.float32)
        self.report.load_seconds = time.perf_counter() - start
        self.report.resident_weight_bytes = sum(_weight_bytes(w) for w in self._weights)
        self.report.scratch_bytes = int(self._scratch.nbytes)
        self.report.layer_modes = list(self._modes)

    def _choose_mode(self, layer, batch_size: int) -> str:
        """'dense' (decompressed at load), 'fused' (linear, compressed) or 'scratch' (conv, compressed)."""
        if not isinstance(layer.weight, CompressedTensor) or self.policy == "load":
            return "dense"
        jit_mode = "fused" if isinstance(layer, Linear) else "scratch"
        if self.policy == "jit":
            return jit_mode
        key = (type(layer).__name__, _layout(layer.weight), batch_size)
        if key not in self._decisions:
            self._decisions[key] = self._measured_jit_faster(layer, batch_size)
        return jit_mode if self._decisions[key] else "dense"

    def _measured_jit_faster(self, layer, batch_size: int, repeats: int = 9) -> bool:
        """The cost model: time both ways on this layer's weight at this batch (medians of a
        warmed-up run of each; the fused kernel first, before BLAS's worker threads are awake)."""
        rows, cols = layer.weight.shape[0], int(np.prod(layer.weight.shape[1:]))
        if isinstance(layer, Conv2d):
            return False  # a convolution's batch is batch * H' * W': dense BLAS wins
        x = np.random.default_rng(0).standard_normal((batch_size, cols)).astype(np.float32)
        dense = layer.weight.decompress(np.float32, backend=self.backend).reshape(rows, cols)

        def median(fn):
            fn()
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            return float(np.median(times))

        jit = median(lambda: matmul(layer.weight, x, backend=self.backend))
        return jit < median(lambda: x @ dense.T)

    def __call__(self, x) -> np.ndarray:
        """Run every layer on ``x`` (batch, features) or (batch, C, H, W); float32 out."""
        x = np.asarray(x, np.float32)
        start = time.perf_counter()
        for layer, weight, mode in zip(self.layers, self._weights, self._modes):
            layer.output_shape(x.shape)
            if isinstance(layer, Conv2d):
                batch = x.shape[0]
                _, _, h, w = layer.output_shape(x.shape)
                y = self._product(weight, mode, layer.patches(x)).reshape(batch, h, w, -1).transpose(0, 3, 1, 2)
            else:
                y = self._product(weight, mode, x.reshape(-1, x.shape[-1])).reshape(x.shape[:-1] + (-1,))
            if layer.bias is not None:
                y = y + (layer.bias.reshape(-1, 1, 1) if isinstance(layer, Conv2d) else layer.bias)
            x = np.ascontiguousarray(ACTIVATIONS[layer.activation](y), np.float32)
        self.report.last_latency_seconds = time.perf_counter() - start
        return x

    def _product(self, weight, mode: str, x: np.ndarray) -> np.ndarray:
        if mode == "fused":
            return matmul(weight, x, backend=self.backend)
        if mode == "scratch":
            dense = self._scratch[: weight.size].reshape(weight.shape)
            weight.decompress(np.float32, backend=self.backend, out=dense)
            weight = dense
        return x @ weight.reshape(weight.shape[0], -1).T
