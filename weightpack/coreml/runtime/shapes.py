"""Shape arithmetic of the load-time checks, with unknown dimensions (None) and unknown ranks (None).

>>> broadcast((2, 1, 4), (3, 1)), broadcast((None, 4), (1, 4)), normalize_axis(-1, 3)
((2, 3, 4), (None, 4), 2)
"""
from __future__ import annotations


class ShapeError(ValueError):
    """Shapes that no input of the declared types can satisfy (caught and reported with the op)."""


def broadcast(*shapes):
    """NumPy broadcasting of shapes whose dimensions may be None (unknown)."""
    if any(s is None for s in shapes):
        return None
    rank = max((len(s) for s in shapes), default=0)
    out = []
    for i in range(rank):
        dims = [s[len(s) - rank + i] for s in shapes if len(s) - rank + i >= 0]
        known = {d for d in dims if d is not None and d != 1}
        if len(known) > 1:
            raise ShapeError(f"shapes {', '.join(map(str, shapes))} do not broadcast")
        if known:
            out.append(known.pop())
        elif any(d is None for d in dims):
            out.append(None)
        else:
            out.append(1)
    return tuple(out)


def normalize_axis(axis, rank, what: str = "axis") -> int:
    """``axis`` in [-rank, rank) as a non-negative index."""
    axis = int(axis)
    if not -rank <= axis < rank:
        raise ShapeError(f"{what} {axis} is outside [{-rank}, {rank}) for a rank-{rank} tensor")
    return axis % rank


def normalize_axes(axes, rank, what: str = "axes") -> tuple:
    out = tuple(normalize_axis(a, rank, what) for a in axes)
    if len(set(out)) != len(out):
        raise ShapeError(f"{what} {list(axes)} repeat an axis")
    return out


def same_dim(a, b) -> bool:
    """Whether two dimensions can be equal (None matches anything)."""
    return a is None or b is None or a == b


def product(dims):
    """The product of dimensions, None if one is unknown."""
    out = 1
    for d in dims:
        if d is None:
            return None
        out *= d
    return out
