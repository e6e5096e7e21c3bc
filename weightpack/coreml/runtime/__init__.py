"""The executor of Core ML ML programs (opsets iOS15-iOS18) on Linux: numpy plus weightpack's kernels.

Usage, for any ML program (an .mlpackage / .mlmodel converted by coremltools, or an MLModel)::

    import weightpack.coreml as wpc
    m = wpc.Program.load("model.mlpackage", policy="jit")
    outputs = m.predict({"input_ids": ids})

(:class:`weightpack.runtime.Model` builds small programs in memory; its doctest runs one.)

One module per concern: :mod:`.graph` (the program: typed variables and ops), :mod:`.parse`
(protobuf -> graph; the only module that imports coremltools), :mod:`.registry` (op registry and
the per-op builder), the op families (:mod:`.ops_elementwise`, :mod:`.ops_tensor`,
:mod:`.ops_linear`, :mod:`.ops_nn`, :mod:`.ops_reduce`, :mod:`.ops_attention`, :mod:`.ops_state`),
:mod:`.states` (the states of stateful programs: ``make_state`` / ``predict(state=...)``), :mod:`.weights`
(policies ``load`` / ``jit`` / ``auto``), :mod:`.fusion` (chains of ops run as one step, same
bits), :mod:`.threads` (the kernel threads that run the whole program fastest), :mod:`.report`
and :mod:`.executor` (:class:`Program`).

**Precision.** Programs stored in fp16 compute in float32 by default: every fp16 value (weights,
activations, constants) is held as the float32 of the same number, and ops compute in float32.
The result is closer to the exact function than Core ML's fp16 execution, whose every op rounds
its output to binary16 (relative error up to 2**-11 per op); the difference against a device
run is therefore about that of fp16 arithmetic itself. ``compute_precision="fp16"`` rounds every
fp16-typed value to binary16 after each op (Core ML's storage of activations), with float32
arithmetic inside each op (numpy has no fp16 BLAS): it models activation rounding, not fp16
accumulation.
"""
from .executor import Program, WeightOp
from .registry import covered_ops
from .report import Report
from .states import ProgramState

__all__ = ["Program", "ProgramState", "WeightOp", "Report", "covered_ops"]
