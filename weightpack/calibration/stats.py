"""Calibration statistics of one layer's input activations, gathered batch by batch.

:class:`ActivationStats` keeps, in float64, the sum of ``x x^T`` over every activation row ``x``
(the Gram matrix, ``in_features`` squared), the sum of ``x**2`` per input channel and the row
count. ``gram`` is ``H = X^T X / n`` and ``second_moments`` is ``E[x_j^2]`` (the diagonal of H).
Accumulators of the same layer merge (statistics gathered in parallel or on several machines add
up) and round-trip through ``.npz`` files.

Activations are rows of ``in_features`` values: a batch of shape ``(..., in_features)`` counts
``prod(shape[:-1])`` rows. For a convolution, feed the unfolded (im2col) patches whose columns
are ordered like ``w.reshape(out_channels, -1)``.
"""
from __future__ import annotations

import os

import numpy as np

from ..atomic import save_npz
from ..errors import FormatError, WeightpackError, check_allocation, describe

FORMAT_NAME = "weightpack.ActivationStats"
FORMAT_VERSION = 1
CHUNK_BYTES = 1 << 26  # float64 rows converted at a time by update()


class ActivationStats:
    """Running Gram matrix, per-channel second moments and row count of a layer's inputs.

    ``gram=False`` keeps only the second moments (enough for Wanda and importance weights; no
    ``in_features**2`` memory).

    >>> import numpy as np
    >>> s = ActivationStats(3).update(np.array([[1.0, 0.0, 2.0], [3.0, 1.0, 0.0]], np.float32))
    >>> s.count, s.second_moments.tolist()
    (2, [5.0, 0.5, 2.0])
    >>> s.gram[0].tolist()
    [5.0, 1.5, 1.0]
    >>> t = ActivationStats(3).update(np.ones((2, 3)))
    >>> s.merge(t).count
    4
    """

    __slots__ = ("in_features", "count", "_gram_sum", "_square_sum")

    def __init__(self, in_features: int, *, gram: bool = True):
        if isinstance(in_features, (bool, np.bool_)) or not isinstance(in_features, (int, np.integer)) or in_features < 1:
            raise WeightpackError(f"in_features={describe(in_features)} must be a positive integer")
        self.in_features = int(in_features)
        check_allocation(8 * self.in_features * (self.in_features if gram else 1), f"statistics of in_features={in_features}")
        self.count = 0
        self._square_sum = np.zeros(self.in_features)
        self._gram_sum = np.zeros((self.in_features, self.in_features)) if gram else None

    @property
    def has_gram(self) -> bool:
        """Whether the full Gram matrix is kept (``gram=True``)."""
        return self._gram_sum is not None

    def update(self, x) -> "ActivationStats":
        """Add a batch of activations of shape ``(..., in_features)`` (any float dtype); returns self.

        The caller's array is not modified. A batch containing NaN or infinity is refused whole.
        """
        arr = np.asarray(x)
        if arr.dtype.kind != "f":
            raise WeightpackError(f"activations have dtype {arr.dtype}; allowed: a float dtype (float16, float32, float64)")
        if arr.ndim < 1 or arr.shape[-1] != self.in_features:
            raise WeightpackError(
                f"activations have shape {arr.shape}; the last axis must be in_features={self.in_features}"
            )
        check_allocation(arr.size * arr.itemsize, f"activations of shape {arr.shape} as rows")
        rows = arr.reshape(-1, self.in_features)
        finite = np.isfinite(rows)
        if not finite.all():
            r, c = np.argwhere(~finite)[0]
            raise WeightpackError(
                f"activations contain NaN or infinity ({rows.size - np.count_nonzero(finite)} values; first at "
                f"row {r}, channel {c}: {rows[r, c]}); only finite activations can be accumulated"
            )
        square_sum, gram_sum = np.zeros_like(self._square_sum), None if self._gram_sum is None else np.zeros_like(self._gram_sum)
        step = max(1, CHUNK_BYTES // (8 * self.in_features))
        with np.errstate(over="ignore", invalid="ignore"):
            for start in range(0, rows.shape[0], step):
                chunk = rows[start : start + step].astype(np.float64)
                square_sum += np.einsum("ij,ij->j", chunk, chunk)
                if gram_sum is not None:
                    gram_sum += chunk.T @ chunk
            square_sum += self._square_sum
            if gram_sum is not None:
                gram_sum += self._gram_sum
        _check_sums(square_sum, gram_sum, float(np.abs(rows).max()) if rows.size else 0.0)
        self._square_sum, self._gram_sum = square_sum, gram_sum
        self.count += rows.shape[0]
        return self

    def merge(self, other: "ActivationStats") -> "ActivationStats":
        """A new accumulator holding both: as if every batch of ``other`` had been fed to this one."""
        if not isinstance(other, ActivationStats):
            raise WeightpackError(f"can only merge another ActivationStats, got {type(other).__name__}")
        if other.in_features != self.in_features:
            raise WeightpackError(
                f"cannot merge statistics of in_features={other.in_features} into in_features={self.in_features}"
            )
        if self.has_gram != other.has_gram:
            raise WeightpackError(
                "cannot merge statistics with a Gram matrix and statistics without one (gram=True vs gram=False)"
            )
        out = ActivationStats(self.in_features, gram=self.has_gram)
        out.count = self.count + other.count
        with np.errstate(over="ignore", invalid="ignore"):
            out._square_sum = self._square_sum + other._square_sum
            if self.has_gram:
                out._gram_sum = self._gram_sum + other._gram_sum
        _check_sums(out._square_sum, out._gram_sum, None)
        return out

    @property
    def second_moments(self) -> np.ndarray:
        """``E[x_j^2]`` per input channel (float64 [in_features]); zeros before any data."""
        return self._square_sum / max(self.count, 1)

    @property
    def gram(self) -> np.ndarray:
        """``H = X^T X / n`` (float64 [in_features, in_features], symmetric); zeros before any data."""
        if self._gram_sum is None:
            raise WeightpackError("these statistics were gathered with gram=False; there is no Gram matrix")
        gram = self._gram_sum / max(self.count, 1)
        return (gram + gram.T) * 0.5

    def arrays(self) -> dict:
        """The file's arrays (see :meth:`save`): {"format", "version", "count", "square_sum"[, "gram_sum"]}."""
        arrays = {
            "format": np.array(FORMAT_NAME),
            "version": np.array(FORMAT_VERSION),
            "count": np.array(self.count, np.int64),
            "square_sum": self._square_sum,
        }
        if self._gram_sum is not None:
            arrays["gram_sum"] = self._gram_sum
        return arrays

    def save(self, path) -> None:
        """Write to ``path`` (an .npz file), atomically: a failed write leaves any old file intact."""
        save_npz(path, self.arrays())

    @classmethod
    def load(cls, path) -> "ActivationStats":
        """Read statistics written by :meth:`save`; a file that is not one raises FormatError."""
        return cls.from_arrays(read_npz(path), repr(path))

    @classmethod
    def from_arrays(cls, arrays: dict, source: str = "the arrays") -> "ActivationStats":
        """Statistics from the arrays :meth:`arrays` returns, every one validated (FormatError
        naming ``source`` otherwise)."""
        path = source
        if str(arrays.get("format", "")) != FORMAT_NAME:
            raise FormatError(f"{path} does not hold weightpack activation statistics (no format={FORMAT_NAME!r})")
        if int(arrays.get("version", -1)) != FORMAT_VERSION:
            raise FormatError(f"{path} has version {arrays.get('version')}; this weightpack reads version {FORMAT_VERSION}")
        count = arrays.get("count")
        square = arrays.get("square_sum")
        if count is None or count.shape != () or count.dtype.kind not in "iu" or int(count) < 0:
            raise FormatError(f"{path}: count must be a non-negative integer, got {describe(count)}")
        if square is None or square.ndim != 1 or square.size == 0 or square.dtype != np.float64:
            raise FormatError(f"{path}: square_sum must be a non-empty 1-D float64 array")
        gram = arrays.get("gram_sum")
        n = square.size
        if gram is not None and (gram.shape != (n, n) or gram.dtype != np.float64):
            raise FormatError(f"{path}: gram_sum has shape {gram.shape}, dtype {gram.dtype}; expected ({n}, {n}) float64")
        for name, arr in (("square_sum", square), ("gram_sum", gram)):
            if arr is not None and not (np.isfinite(arr).all() and (np.diagonal(arr) if arr.ndim == 2 else arr).min() >= 0):
                raise FormatError(f"{path}: {name} holds NaN, infinity or negative squares")
        out = cls(n, gram=gram is not None)
        out.count = int(count)
        out._square_sum = square.copy()
        if gram is not None:
            out._gram_sum = gram.copy()
        return out

    def __repr__(self):
        kind = "gram + second moments" if self.has_gram else "second moments only"
        return f"ActivationStats(in_features={self.in_features}, count={self.count}, {kind})"


def _check_sums(square_sum: np.ndarray, gram_sum, largest) -> None:
    """Refuse sums that overflowed float64: the statistics would be infinite (and poison every
    encoder that reads them). Nothing is changed when this raises."""
    if np.isfinite(square_sum).all() and (gram_sum is None or np.isfinite(gram_sum).all()):
        return
    where = f" (largest |x| in this batch: {largest:.4g})" if largest is not None else ""
    raise WeightpackError(
        f"the sums of squares overflow float64{where}: activations must stay well below 1e154 in magnitude "
        "(squares and their sums up to 1.8e308); scale them down, e.g. by a power of two, which scales the "
        "Gram matrix by its square and leaves every calibrated encoder's result unchanged. The statistics are unchanged"
    )


def read_npz(path) -> dict:
    """Every array of the .npz file at ``path`` (no pickles); FormatError when it is not one."""
    try:
        with np.load(os.fspath(path), allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except (OSError, ValueError, EOFError) as exc:
        raise FormatError(f"{path!r} is not a readable .npz file: {exc}") from None
