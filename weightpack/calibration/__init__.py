"""Calibration-aware compression: activation statistics in, lower layer-output error out.

- :class:`ActivationStats`: the Gram matrix ``H = X^T X / n``, second moments and row count of a
  layer's inputs, gathered batch by batch, mergeable, saved as .npz.
"""
from .stats import ActivationStats

__all__ = ["ActivationStats"]
