"""Rate-distortion curves of palettization: the least error for every LUT size, from one DP run.

The exact DP of :mod:`.kmeans` solves k clusters by solving 1, 2, ..., k clusters on the way, so one
run gives the optimal error of every smaller LUT. :func:`palettize_rd_curve` returns it per group;
a caller choosing bits per layer (a knapsack over layers) reads ``curve.sse_at(nbits)``.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..bits import SUPPORTED_NBITS, check_nbits
from .palettization import Job


class RDCurve(NamedTuple):
    """``sse[g, c - 1]``: the least ``sum importance * (w - w_hat)**2`` of group g with c LUT entries
    (in the weights' own units, after the per-channel scale if one is used); ``energy[g]``: the
    group's ``sum importance * w**2``."""

    sse: np.ndarray  # float64 [G, 2**max_nbits]
    energy: np.ndarray  # float64 [G]

    def sse_at(self, nbits: int) -> float:
        """Total least error with ``2**nbits`` entries per LUT."""
        return float(self.sse[:, (1 << check_nbits(nbits)) - 1].sum())

    def snr_db(self, nbits: int) -> float:
        """``10 log10(energy / error)`` of the whole tensor with ``2**nbits`` entries per LUT."""
        err = self.sse_at(nbits)
        total = float(self.energy.sum())
        return float("inf") if err == 0 else 10.0 * float(np.log10(total / err))

    def table(self) -> dict[int, float]:
        """{nbits: SNR in dB} for every supported width up to the curve's length."""
        return {n: self.snr_db(n) for n in SUPPORTED_NBITS if 1 << n <= self.sse.shape[1]}


def palettize_rd_curve(w, max_nbits=8, *, group_size=None, axis=0, importance=None, per_channel_scale=False,
                       scale_axis=None) -> RDCurve:
    """The least k-means error of ``w`` for every LUT size 1 .. 2**max_nbits, as :func:`palettize`
    would fit it with the same options (float16: exact; float32: see :mod:`.lut1d`, the error of the
    optimal partition of binary16-precision bins, an upper bound within about 1e-6 of the optimum).

    >>> import numpy as np
    >>> w = np.array([0.0, 1.0, 10.0, 11.0], np.float32)
    >>> c = palettize_rd_curve(w, max_nbits=2)
    >>> c.sse[0].tolist(), c.sse_at(1), c.table()[2]
    ([101.0, 1.0, 0.5, 0.0], 1.0, inf)
    """
    from . import lut1d

    k = 1 << check_nbits(max_nbits, name="max_nbits")
    job = Job.create(w, group_size=group_size, axis=axis, importance=importance, per_channel_scale=per_channel_scale,
                     scale_axis=scale_axis)
    x3, imp3, sw, inner = job.layout()
    sse = lut1d.kmeans(x3, imp3, sw, inner, k, skip_zero=job.sparse, curve=True)[1]
    return RDCurve(sse, _energy(job))


def _energy(job: Job) -> np.ndarray:
    """sum importance * w**2 per group (w: the weights before the per-channel scale), in float64,
    about a million elements at a time."""
    axis, shape = job.axis, job.dense.shape
    span = shape[axis] // job.groups
    step = max(1, min(span, (1 << 20) * shape[axis] // job.dense.size))
    energy = np.zeros(job.groups)
    for g in range(job.groups):
        for lo in range(g * span, (g + 1) * span, step):
            rows = np.arange(lo, min(lo + step, (g + 1) * span))
            values = np.take(job.dense, rows, axis=axis).astype(np.float64)
            if job.scale is not None and not job.scale_in_importance:  # else importance holds its square
                values *= job.scale
            power = np.square(values)
            if job.importance is not None:
                power *= np.take(job.importance, rows, axis=axis)
            energy[g] += power.sum()
    return energy
