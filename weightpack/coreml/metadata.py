"""``get_weights_metadata``: what coremltools' function of that name reports, for compressed weights too.

coremltools lists ``const`` ops, so in a compressed model it reports a LUT and an index array
where the model has one palettized weight. This lists the weights the model's ops consume
(:func:`~weightpack.coreml.package.read_weights`): each with its weightpack tensor, and the
dense values, sparsity and unique-value count computed on first access only.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import WeightpackError, describe
from .package import read_weights
from .values import dense


@dataclass(frozen=True)
class ChildOp:
    """An op a weight feeds: ``params_name_mapping`` maps its parameters to the listed weights they read."""

    op_type: str
    name: str
    params_name_mapping: dict

    def __str__(self):
        params = ", ".join(f"{k}={v}" for k, v in self.params_name_mapping.items())
        return f"{self.op_type}(name={self.name}{', ' if params else ''}{params})"


@dataclass
class WeightMetadata:
    """One weight: ``tensor`` as stored (a weightpack tensor or numpy array) and the ops it feeds.

    ``val`` (dense values), ``sparsity`` (fraction of |w| <= 1e-12, coremltools' definition) and
    ``unique_values`` are computed when first read.
    """

    name: str
    tensor: object
    child_ops: list
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def val(self) -> np.ndarray:
        if "val" not in self._cache:
            self._cache["val"] = dense(self.tensor)
        return self._cache["val"]

    @property
    def sparsity(self) -> float:
        if "sparsity" not in self._cache:
            self._cache["sparsity"] = float(np.count_nonzero(np.abs(self.val) <= 1e-12) / max(self.val.size, 1))
        return self._cache["sparsity"]

    @property
    def unique_values(self) -> int:
        if "unique" not in self._cache:
            val = self.val
            if val.dtype == np.float16:  # numpy 2.4's np.unique miscounts float16 values
                val = val.astype(np.float32)
            self._cache["unique"] = int(np.unique(val).size)
        return self._cache["unique"]

    def __str__(self):
        children = "\n".join(f"    {c}" for c in self.child_ops)
        return (
            f"{self.name}\n[\n  tensor: {self.tensor!r}\n  sparsity: {self.sparsity}\n"
            f"  unique_values: {self.unique_values}\n  child_ops: [\n{children}\n  ]\n]"
        )


def get_weights_metadata(mlmodel, weight_threshold: int = 2048) -> dict:
    """{weight name: WeightMetadata} for every weight of at least ``weight_threshold`` elements.

    Like coremltools' ``get_weights_metadata`` (same threshold rule, ``>=``), but one entry per
    weight a model op reads, compressed or not, rather than one per ``const`` op.
    """
    if isinstance(weight_threshold, bool) or not isinstance(weight_threshold, (int, np.integer)) or weight_threshold < 0:
        raise WeightpackError(f"weight_threshold={describe(weight_threshold)} must be a non-negative integer")
    weights = read_weights(mlmodel)
    listed = {name: w for name, w in weights.items() if int(np.prod(w.value.shape)) >= weight_threshold}
    params = {}  # consumer op name -> {param: weight name}
    for name, weight in listed.items():
        for consumer in weight.consumers:
            params.setdefault(consumer.name, {})[consumer.param] = name
    result = {}
    for name, weight in listed.items():
        children, seen = [], set()
        for consumer in weight.consumers:
            if consumer.name not in seen:
                seen.add(consumer.name)
                children.append(ChildOp(consumer.op_type, consumer.name, params.get(consumer.name, {})))
        result[name] = WeightMetadata(name, weight.value, children)
    return result
