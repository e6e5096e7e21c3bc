"""What running a program costs: load time, resident weight bytes, scratch, latency, per-op time."""
from __future__ import annotations

from dataclasses import dataclass, field


class KernelClock:
    """Seconds spent inside compiled kernels during one call; ops add to it around each call:
    ``seconds`` in the weight products (BLAS, weightpack's fused products, decompression),
    ``elementwise`` in weightpack's C kernels of the fused chains and of small attention."""

    __slots__ = ("seconds", "elementwise")

    def __init__(self):
        self.seconds = 0.0
        self.elementwise = 0.0


@dataclass
class Report:
    """Costs of a loaded program (``Program.report``).

    - ``load_seconds``: parsing excluded, from the first weight prepared to the program ready
      (decompression of the ``load`` policy, the ``auto`` policy's timing runs, kernel set-up);
    - ``resident_weight_bytes``: bytes the weights keep in memory to run: dense float32 arrays,
      compressed arrays (with the derived data kernels keep beside them);
    - ``scratch_bytes``: the one buffer ops decompress into right before they run (jit / auto);
    - ``latency_seconds``: wall time of the last ``predict`` (input checks included);
    - ``op_seconds``: {(op type, op name): seconds} of the last call, in program order; the ops of
      a fused chain (see ``fused_chains``) run as one step, whose time is on the chain's last op (the
      others show 0) unless the call observed every op (``predict(observe=...)``);
    - ``kernel_seconds``: the part of the last call spent inside the weight products (BLAS, fused
      products, decompression); ``elementwise_seconds``: the part inside weightpack's C kernels of
      the fused chains (see ``fused_chains``) and of small attention; ``overhead_seconds``, the rest,
      is the interpretation overhead plus the elementwise work numpy does;
    - ``fused_chains``: the chains of ops ``predict`` runs as one step (:mod:`.fusion`): a list of
      (chain kind, op names);
    - ``threads``: weightpack's kernel threads during ``predict`` (chosen at load, see
      :mod:`.threads`, or given); ``thread_seconds``: {threads: median seconds of a call} as
      measured at load to choose (empty when not measured); ``blas_threads``: the threads of
      numpy's BLAS (threadpoolctl's report; None without threadpoolctl);
    - ``layer_modes``: how each weight op runs, in program order: ``"dense"`` (decompressed at
      load, BLAS), ``"fused"`` (compressed, weightpack's fused product), ``"scratch"``
      (decompressed into the scratch buffer before the op), ``"rows"`` (an embedding lookup
      decoding only the rows it gathers).
    """

    policy: str
    load_seconds: float = 0.0
    resident_weight_bytes: int = 0
    scratch_bytes: int = 0
    latency_seconds: float = 0.0
    op_seconds: dict = field(default_factory=dict)
    kernel_seconds: float = 0.0
    elementwise_seconds: float = 0.0
    layer_modes: list = field(default_factory=list)
    fused_chains: list = field(default_factory=list)
    threads: int | None = None
    thread_seconds: dict = field(default_factory=dict)
    blas_threads: int | None = None

    @property
    def last_latency_seconds(self) -> float:
        """The latency of the last call (the name :class:`weightpack.runtime.Model` used)."""
        return self.latency_seconds

    @property
    def overhead_seconds(self) -> float:
        """``latency_seconds - kernel_seconds - elementwise_seconds`` of the last call."""
        return self.latency_seconds - self.kernel_seconds - self.elementwise_seconds
