"""What ``gptq_palettize`` does beyond the plain sweep: the per-row scale search and the least-squares
refits on H.

The layer's output error of a decoded weight ``W_hat`` is ``f = tr((W - W_hat) Hd (W - W_hat)^T)``
with ``Hd = H + lambda I`` (the sweep's damped H); :class:`OutputError` evaluates it.

Per-row scale search (before the sweep). A row's scale ``s_r`` is the largest magnitude of the row
times a fraction in [0.3, 1], rounded to the weights' dtype. Starting from 1, ``SCALE_ROUNDS``
times (or until no scale changes): fit the LUTs to the scaled rows (importance-weighted k-means,
:mod:`.lut`), then give each row the candidate of least proxy error
``sum_j (H_jj + lambda) (w_rj - s lut[n(w_rj)])**2`` (n: the nearest entry of ``s lut``, the lower
on a midpoint; computed from the row sorted once and prefix sums); the candidates are the fractions
``SCALE_COARSE`` (1.0, 0.9, ..., 0.3) and then ``SCALE_FINE`` (+-0.025, 0.05, 0.075) around the
best of those; equal errors go to the larger scale. The LUTs are fitted once more to the final
scales. A scale below
the row's largest weight lets the LUT spend its entries where most weights are instead of on one
outlier (measured on transformer-like layers: 0.2-0.8 dB of held-out output SNR after the sweep
over the largest magnitude alone).

Refits (after the sweep). With the indices fixed, ``f`` is quadratic in the LUT entries and, with a
per-row scale, in each row's scale:

- scales: ``s_r = <q_r Hd, w_r> / <q_r Hd, q_r>`` for the row's unscaled looked-up values q_r
  (kept when not positive);
- LUT entries of group g: ``A_g c = b_g`` with ``A_g = sum_r s_r^2 M_r^T Hd M_r`` and
  ``b_g = sum_r s_r M_r^T Hd w_r`` (M_r the one-hot matrix of row r's indices): a K x K system per
  LUT. Entries no index uses keep their value.

Both are rounded to the weights' dtype; the entries are then sorted (the indices renumbered) so
the next sweep finds nearest entries. Rounds of (scales, entries, sweep) run while a round lowers
``f`` by at least ``REFIT_TOLERANCE`` of it, at most ``REFIT_ROUNDS`` times; the state of least
``f`` seen (after a refit or after a sweep) is the result. ``f`` is tracked without forming
``W - W_hat``: a sweep gives it as ``sum_r s_r^2 sum_j E_rj^2`` (:mod:`.sweep`), a refit as the
previous value plus the exact change of the quadratic (so no cancellation against ``tr(W Hd W^T)``),
both for the products ``s_r lut[index]`` before their rounding to the stored dtype.
"""
from __future__ import annotations

import numpy as np

from ..compress import _threads
from ..compress._common import fp16_values
from .lut import fit_lut, nearest_tables

SCALE_COARSE = np.linspace(1.0, 0.3, 8)  # fractions of a row's largest magnitude tried first
SCALE_FINE = np.array([-0.075, -0.05, -0.025, 0.025, 0.05, 0.075])  # then around the best of them
SCALE_ROUNDS = 3
REFIT_ROUNDS = 4
REFIT_TOLERANCE = 1e-4
GRAM_TILE = 32  # rows per tile of the normal-matrix kernel
GRAM_SPANS = 4  # fixed split of the rows for threads (the sums never depend on the thread count)
GRAM_BUFFER = 1 << 19  # bytes of the kernel's accumulators


class OutputError:
    """``f(D) = tr(D Hd D^T)`` and products with ``Hd`` for a layer's H (float64, or float32 above
    ``float32_above`` columns, as the sweep)."""

    def __init__(self, gram: np.ndarray, lam: float, float32_above: int):
        n = gram.shape[0]
        dtype = np.float32 if n > float32_above else np.float64
        self.hd = np.array(gram, dtype)
        self.hd[np.diag_indices(n)] += dtype(lam)

    def apply(self, a: np.ndarray) -> np.ndarray:
        """``a @ Hd`` in float64, a band of rows at a time."""
        out = np.empty(a.shape)
        for r in range(0, a.shape[0], 256):
            out[r : r + 256] = a[r : r + 256].astype(self.hd.dtype) @ self.hd
        return out

    def __call__(self, d: np.ndarray) -> float:
        total = 0.0
        for r in range(0, d.shape[0], 256):
            band = d[r : r + 256]
            total += float(np.einsum("ij,ij->", band.astype(self.hd.dtype) @ self.hd, band, dtype=np.float64))
        return total


def decode(luts: np.ndarray, codes: np.ndarray, lut_of_row: np.ndarray, scale) -> np.ndarray:
    """The stored values (float64): ``lut[index]``, times the row's scale rounded once to the LUT
    dtype as Core ML's shift-scale op does."""
    values = luts[lut_of_row[:, None], codes]
    if scale is not None:
        values = values * scale[:, None]  # float16 x float16: exact in float32, then one rounding
    return values.astype(np.float64)


def search_row_scales(original, importance, lut_of_row, groups, nbits, dtype):
    """(per-row scale of ``dtype``, LUTs [groups, 2**nbits]) by the search of the module docstring."""
    rows = original.shape[0]
    top = np.abs(original).max(axis=1).astype(np.float64)
    top = np.where(top > 0, top, 1.0)
    scale = top.astype(dtype)
    bits, table = (original.view(np.uint16), fp16_values()) if original.dtype == np.float16 else (original, np.empty(0))
    sorting = np.argsort(original, axis=1, kind="stable").astype(np.int16 if original.shape[1] < 1 << 15 else np.int32)
    for _ in range(SCALE_ROUNDS):
        luts = fit_group_luts(original, importance, scale, groups, nbits, dtype)
        tables = nearest_tables(luts)
        coarse = _candidates(np.broadcast_to(SCALE_COARSE, (rows, SCALE_COARSE.size)), top, dtype)
        errors = _scale_errors(bits, table, sorting, importance, coarse, tables, lut_of_row)
        best = SCALE_COARSE[np.argmin(errors, axis=1)]
        fine = np.clip(best[:, None] + SCALE_FINE, SCALE_COARSE[-1], SCALE_COARSE[0])
        near = _candidates(fine, top, dtype)
        candidates = np.concatenate((coarse, near), axis=1)
        errors = np.concatenate((errors, _scale_errors(bits, table, sorting, importance, near, tables, lut_of_row)), axis=1)
        fractions = np.concatenate((np.broadcast_to(SCALE_COARSE, coarse.shape), fine), axis=1)
        largest_first = np.argsort(-fractions, axis=1, kind="stable")  # equal errors: the largest scale
        best_index = np.argmin(np.take_along_axis(errors, largest_first, axis=1), axis=1)
        pick = np.take_along_axis(largest_first, best_index[:, None], axis=1)[:, 0]
        chosen = candidates[np.arange(rows), pick].astype(dtype)
        if np.array_equal(chosen, scale):
            break
        scale = chosen
    return scale, fit_group_luts(original, importance, scale, groups, nbits, dtype)


def _candidates(fractions, top, dtype) -> np.ndarray:
    """Scales ``fraction * top`` rounded to ``dtype`` (float64 values; never 0: then ``top`` itself)."""
    scales = (fractions * top[:, None]).astype(dtype)
    return np.where(scales > 0, scales, top[:, None].astype(dtype)).astype(np.float64)


def _scale_errors(bits, table, order, importance, scales, tables, lut_of_row) -> np.ndarray:
    """The proxy error of every row with every candidate scale (:func:`._kernels.scale_errors`), on
    threads over fixed spans of rows."""
    from . import _kernels

    mids, _, entries = tables
    errors = np.empty(scales.shape)
    scales = np.ascontiguousarray(scales)

    def part(span):
        r0, r1 = span
        _kernels.scale_errors(bits[r0:r1], table, order[r0:r1], importance, scales[r0:r1], mids, entries, lut_of_row[r0:r1],
                              errors[r0:r1])

    _threads.run(part, [(a, b) for a, b in _threads.spans(bits.shape[0], 16)])
    return errors


def fit_group_luts(original, importance, scale, groups, nbits, dtype) -> np.ndarray:
    """The importance-weighted optimal LUT of each group of rows (the rows divided by ``scale``)."""
    per = original.shape[0] // groups
    luts = np.empty((groups, 1 << nbits), dtype)
    for g in range(groups):
        part = slice(g * per, (g + 1) * per)
        luts[g] = fit_lut(original[part], importance, None if scale is None else scale[part], nbits, dtype)
    return luts


def refit_scales(w64, luts, codes, lut_of_row, scale, metric: OutputError):
    """(each row's least-squares scale on H for its indices, rounded to the scale's dtype (the old
    scale where the new one is not a positive finite number); the change of ``f`` this makes)."""
    q = decode(luts, codes, lut_of_row, None)
    qh = metric.apply(q)
    num = np.einsum("ij,ij->i", qh, w64)
    den = np.einsum("ij,ij->i", qh, q)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        new = (num / den).astype(scale.dtype)
    new = np.where((den > 0) & np.isfinite(new) & (new > 0), new, scale)
    old64, new64 = scale.astype(np.float64), new.astype(np.float64)
    return new, float(np.sum((new64 - old64) * ((new64 + old64) * den - 2 * num)))


def refit_luts(wh, luts, codes, lut_of_row, scale, metric: OutputError):
    """(LUTs of least output error for these indices, rounded and sorted; the indices renumbered;
    the change of ``f`` this makes). ``wh`` is ``W Hd``."""
    from . import _kernels

    groups, k = luts.shape
    rows = codes.shape[0]
    s = np.ones(rows) if scale is None else scale.astype(np.float64)
    band = max(8, min(codes.shape[1], GRAM_BUFFER // (GRAM_TILE * k * metric.hd.itemsize)))
    spans = _threads.spans(-(-rows // GRAM_TILE), GRAM_SPANS)

    def part(span):
        r0, r1 = span[0] * GRAM_TILE, min(span[1] * GRAM_TILE, rows)
        g0, g1 = lut_of_row[r0], lut_of_row[r1 - 1] + 1
        out = np.zeros((g1 - g0, k, k))
        _kernels.lut_gram(codes[r0:r1], metric.hd, s[r0:r1] ** 2, lut_of_row[r0:r1] - g0, out, GRAM_TILE, band)
        return g0, out

    normal = np.zeros((groups, k, k))
    for g0, out in _threads.run(part, spans):
        normal[g0 : g0 + out.shape[0]] += out
    keys = (lut_of_row[:, None] * k + codes).reshape(-1)
    rhs = np.bincount(keys, weights=(wh * s[:, None]).reshape(-1), minlength=groups * k).reshape(groups, k)
    old = luts.astype(np.float64)
    solved = old.copy()
    for g in range(groups):
        used = np.diagonal(normal[g]) > 0
        if not used.any():
            continue
        a, b = normal[g][np.ix_(used, used)], rhs[g, used]
        try:
            solved[g, used] = np.linalg.solve(a, b)
        except np.linalg.LinAlgError:
            solved[g, used] = np.linalg.lstsq(a, b, rcond=None)[0]
    stored = solved.astype(luts.dtype)
    stored = np.where(np.isfinite(stored), stored, luts)
    step = stored.astype(np.float64) - old
    change = float(np.einsum("gk,gkl,gl->", step, normal, stored.astype(np.float64) + old) - 2 * np.sum(step * rhs))
    order = np.argsort(stored, axis=1, kind="stable")
    renumber = np.argsort(order, axis=1).astype(np.uint8)
    return np.take_along_axis(stored, order, axis=1), renumber[lut_of_row[:, None], codes], change
