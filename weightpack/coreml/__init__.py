"""Core ML storage.

- :mod:`.blob`: weight.bin, written and read without coremltools;
- :func:`load`, :func:`save_weights`, :func:`replace_weights`, :func:`save_model` (:mod:`.package`):
  .mlpackage files, built and parsed with coremltools;
- :func:`prune_weights`, :func:`palettize_weights`, :func:`linear_quantize_weights`,
  :func:`decompress_weights`, :func:`get_weights_metadata` (:mod:`.dropin`): coremltools'
  post-training API, computed by weightpack;
- :func:`compress` (:mod:`.calibrated`): the same, calibrated on real inputs when given them;
- :class:`Program` (:mod:`.runtime`): run an ML program on Linux, like ``MLModel.predict``.

Everything but :mod:`.blob` and :mod:`.runtime` imports coremltools, on first use of a name here
(:meth:`Program.load` reads the protobuf with it).
"""
from importlib import import_module

_LAZY = {
    "load": ".package",
    "read_weights": ".package",
    "save_weights": ".package",
    "replace_weights": ".package",
    "save_model": ".package",
    "prune_weights": ".dropin",
    "palettize_weights": ".dropin",
    "linear_quantize_weights": ".dropin",
    "decompress_weights": ".dropin",
    "get_weights_metadata": ".metadata",
    "compress": ".calibrated",
    "Program": ".runtime",
    "WeightOp": ".runtime",
    "covered_ops": ".runtime",
}


def __getattr__(name):
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'weightpack.coreml' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = list(_LAZY)
