"""Quality measures for lossy compression."""
from __future__ import annotations

import numpy as np

from .errors import WeightpackError


def snr_db(reference, approximation) -> float:
    """Signal-to-noise ratio in dB: ``10 log10(sum w**2 / sum (w - w_hat)**2)``, in float64.

    Returns ``inf`` when the two are equal and ``-inf`` when the reference is all zeros but the
    approximation is not.

    >>> import numpy as np
    >>> round(snr_db(np.array([1.0, 2.0]), np.array([1.0, 2.1])), 2)
    26.99
    """
    w = np.asarray(reference, np.float64)
    w_hat = np.asarray(approximation, np.float64)
    if w.shape != w_hat.shape:
        raise WeightpackError(f"approximation has shape {w_hat.shape}; it must match the reference's {w.shape}")
    noise = float(np.sum((w - w_hat) ** 2))
    signal = float(np.sum(w**2))
    if noise == 0.0:
        return float("inf")
    if signal == 0.0:
        return float("-inf")
    return float(10.0 * np.log10(signal / noise))
