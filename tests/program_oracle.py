"""The torch oracle of the ML-program runtime: fixtures, references and error bounds.

The fixtures (tests/fixtures/programs, made by tests/fixtures/make_programs.py) are small torch
models converted by coremltools; ``manifest.json`` lists each package with its model, target,
precision and, for compressed variants, the base program, the tool and the compression. Each
model's ``.npz`` holds the inputs (``input.<name>``) and torch's outputs computed in float64
(``f64.<output>``, the oracle) and float32 (``f32.<output>``).

Error bounds
------------
**Programs against torch.** An output ``y`` of a program run in floating point differs from the
float64 value ``y64`` of the same model (its float32 weights widened exactly) by rounding errors
only. A dot product of length n computed in precision u is within ``gamma_n |w|.|x|`` of the
exact value, ``gamma_n = n u / (1 - n u)``; that worst case grows like n, but rounding errors
behave like independent, zero-mean variables, and the probabilistic analysis of Higham and Mary
("A new approach to probabilistic rounding error analysis", SIAM J. Sci. Comput. 41(5), 2019)
replaces ``n u`` by ``lambda sqrt(n) u``, failing with probability at most
``2 n exp(-lambda^2 (1 - u)^2 / 2)``. A network chains such computations: its rounding depth
``N`` (``depth.<output>`` in the npz, derived from the model's sizes by ``rounding_depth()`` in
tests/fixtures/torch_models.py) adds the lengths of every reduction along the longest chain from
an input to the output: 1,481 for the BERT, 1,219 for the LLaMA decoder, 675 for its one-layer
sdpa variant, 922 for the CNN, 2 to 16 for the op models. The magnitudes ``|w|.|x|`` become the
output's largest magnitude (a normwise bound: layer norms, softmax and residual adds keep these
models' activations at their outputs' scale). The test is

    max |y - y64|  <=  C sqrt(N) u max |y64|,    C = lambda = 6,

with ``u = 2**-24`` for fp32 programs and ``u = 2**-11`` for fp16 programs (their weights are
binary16, and a runtime may round every intermediate to binary16 too; weightpack computes them
in float32). With lambda = 6 the failure probability of the model above is below 5e-5 for
N <= 1,500. Calibration, measured when the fixtures were made: torch's own float32 run stays
within 0.25 of ``sqrt(N) u max|y64|`` (4% of the bound), torch's float16 run within 0.36 of it
with u = 2**-11 (6% of the fp16 bound), and rounding only the weights to binary16 within 0.03.
Errors of the kind the test is there for are larger: swapping the two GELU approximations of the
BERT moves its outputs by 3.8 (hidden) and 6.2 (pooled) times the fp32 bound.

Integer outputs (argmax, topk indices, comparison flags) must be equal. The op models' inputs are
multiples of 1/8 in [-4, 4], exact in binary16, and distinct along the argmax / topk axis, so
no rounding can change them; their exact float outputs (slices, gathers, selects) then get a
bound of a few units in the last place.

**Compressed programs against their decompressed form.** The oracle is the runtime's ``load``
run of the same package after coremltools' ``decompress_weights`` (every constexpr replaced by
its dense const). The weights are then the same numbers, so the policies may differ only by the
summation order of their kernels (a fused just-in-time matvec against BLAS on the decompressed
matrix): the fp32 bound above, ``C sqrt(N) 2**-24 max|y_ref|``, whatever the program's
precision (weightpack computes fp16 programs in float32), plus one binary16 rounding,
``2**-11 max|y_ref|``, where the output itself is float16 (two float32 results a few units
apart can round to neighbouring halves).
"""
from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path

import numpy as np

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "programs"
C = 6.0
UNIT_ROUNDOFF = {"fp32": 2.0**-24, "fp16": 2.0**-11}
POLICIES = ("load", "jit", "auto")


@lru_cache(maxsize=None)
def manifest() -> dict:
    """{package name: entry} of every fixture package (see make_programs.py)."""
    return json.loads((FIXTURES / "manifest.json").read_text())


def packages(compressed: bool) -> list[str]:
    return [name for name, entry in manifest().items() if ("compression" in entry) == compressed]


def package_path(name: str) -> str:
    return str(FIXTURES / f"{name}.mlpackage")


@lru_cache(maxsize=None)
def reference(npz: str) -> dict:
    """{"inputs": {name: array}, "outputs": {name: (f64, f32, depth)}} of a model's npz."""
    with np.load(FIXTURES / npz) as data:
        arrays = {key: data[key] for key in data.files}
    inputs = {key.split(".", 1)[1]: value for key, value in arrays.items() if key.startswith("input.")}
    outputs = {key.split(".", 1)[1]: (value, arrays["f32." + key[4:]], int(arrays["depth." + key[4:]]))
               for key, value in arrays.items() if key.startswith("f64.")}
    return {"inputs": inputs, "outputs": outputs}


def torch_bound(expected: np.ndarray, depth: int, precision: str) -> float:
    """``C sqrt(N) u max|y64|``: the largest error allowed against torch's float64 output."""
    return C * math.sqrt(depth) * UNIT_ROUNDOFF[precision] * float(np.max(np.abs(expected), initial=0.0))


def summation_bound(expected: np.ndarray, depth: int, float16_output: bool) -> float:
    """fp32 summation-order bound between two runs with the same weights (+ one binary16 rounding
    where the output is float16)."""
    scale = float(np.max(np.abs(np.asarray(expected, np.float64)), initial=0.0))
    return (C * math.sqrt(depth) * UNIT_ROUNDOFF["fp32"] + (UNIT_ROUNDOFF["fp16"] if float16_output else 0.0)) * scale


def program_inputs(program, inputs: dict) -> dict:
    """``inputs`` in the dtypes the program declares (float16 for fp16-I/O programs)."""
    return {name: np.asarray(value).astype(program.inputs[name][1]) for name, value in inputs.items()}


def check_output(where: str, actual, expected: np.ndarray, bound: float, dtype) -> None:
    """``actual`` has ``expected``'s shape, the dtype the program declares, equal values if they
    are integers, else a largest error within ``bound``."""
    actual = np.asarray(actual)
    assert actual.shape == expected.shape, f"{where}: shape {actual.shape}, expected {expected.shape}"
    assert actual.dtype == np.dtype(dtype), f"{where}: dtype {actual.dtype}, the program declares {np.dtype(dtype)}"
    if expected.dtype.kind in "iub":
        wrong = np.flatnonzero(actual.reshape(-1) != expected.reshape(-1))
        assert wrong.size == 0, (f"{where}: {wrong.size} of {expected.size} integers differ, first at flat index "
                                 f"{wrong[0]}: {actual.reshape(-1)[wrong[0]]} instead of {expected.reshape(-1)[wrong[0]]}")
        return
    error = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
    worst = int(np.argmax(error))
    assert np.all(np.isfinite(actual)), f"{where}: non-finite values"
    assert error.reshape(-1)[worst] <= bound, (
        f"{where}: max error {error.reshape(-1)[worst]:.3e} > bound {bound:.3e} at flat index {worst} "
        f"(got {actual.reshape(-1)[worst]!r}, expected {expected.reshape(-1)[worst]!r})")


def declared_output_dtypes(mlmodel) -> dict:
    """{output name: numpy dtype} as the model's description declares them."""
    from coremltools.proto import FeatureTypes_pb2

    codes = FeatureTypes_pb2.ArrayFeatureType
    dtypes = {codes.FLOAT16: np.float16, codes.FLOAT32: np.float32, codes.DOUBLE: np.float64, codes.INT32: np.int32}
    return {o.name: np.dtype(dtypes[o.type.multiArrayType.dataType]) for o in mlmodel.get_spec().description.output}


def output_dtype(entry: dict, expected: np.ndarray):
    """The dtype a fixture program declares for an output like ``expected``."""
    if expected.dtype.kind in "iub":
        return np.int32
    return np.float16 if entry["fp16_io"] else np.float32
