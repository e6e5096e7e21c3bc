"""Convolutional-network ops: ``conv`` / ``conv_transpose`` (1-3 spatial dimensions, groups,
dilations, padding modes), normalizations, pools, resizing, ``pad``, ``crop`` and the
depth / space rearrangements (coremltools' iOS15-iOS17 definitions).

Convolutions are im2col products: the input's windows become a matrix that one BLAS call per
group multiplies by the weight (a depthwise convolution accumulates its taps instead).
"""
from __future__ import annotations

import itertools
import math
import time

import numpy as np

from ...errors import WeightpackError
from .registry import op
from .shapes import normalize_axes, same_dim

FLOATS = ("fp16", "fp32")
PAD_TYPES = ("valid", "same", "custom", "same_lower")


# --------------------------------------------------------------------------------- padding


def conv_pads(pad_type, sizes, kernel, strides, dilations, custom):
    """[(before, after)] per spatial dimension (sizes may hold None only for valid / custom)."""
    pads = []
    for i, (n, k, s, d) in enumerate(zip(sizes, kernel, strides, dilations)):
        dk = (k - 1) * d + 1
        if pad_type == "valid":
            pads.append((0, 0))
        elif pad_type == "custom":
            pads.append((custom[2 * i], custom[2 * i + 1]))
        elif n is None:
            return None
        else:
            total = max(0, (math.ceil(n / s) - 1) * s + dk - n)
            small = total // 2
            pads.append((small, total - small) if pad_type == "same" else (total - small, small))
    return pads


def _spatial_params(b, x, kernel):
    """(strides, dilations, pad_type, custom pad) of a conv / pool, checked."""
    rank = len(kernel)
    strides = b.ints("strides", (1,) * rank)
    dilations = b.ints("dilations", (1,) * rank) if b.type in ("conv", "conv_transpose") else (1,) * rank
    pad_type = b.str_("pad_type", "valid" if b.type in ("conv", "conv_transpose") else None, allowed=PAD_TYPES)
    custom = b.ints("pad", (0,) * (2 * rank))
    if len(strides) != rank or len(dilations) != rank or len(custom) != 2 * rank:
        b.fail(f"strides {list(strides)}, dilations {list(dilations)} and pad {list(custom)} must have {rank}, {rank} and {2 * rank} entries")
    if min(strides) < 1 or min(dilations) < 1 or min(custom, default=0) < 0:
        b.fail(f"strides {list(strides)} and dilations {list(dilations)} must be positive, pad {list(custom)} non-negative")
    if x.rank is not None and x.rank != rank + 2:
        b.fail(f"x {x.type} must have rank {rank + 2} (batch, channels and {rank} spatial dimensions)")
    return strides, dilations, pad_type, custom


def _out_size(n, pads, k, s, d, ceil_mode=False):
    if n is None:
        return None
    dk = (k - 1) * d + 1
    span = n + pads[0] + pads[1] - dk
    if span < 0:
        return 0
    if not ceil_mode:
        return span // s + 1
    out = -(-span // s) + 1
    if (out - 1) * s >= n + pads[0] and pads[0] + pads[1] > 0:
        out -= 1
    return out


def windows(x, kernel, strides, dilations):
    """A strided view (N, C, *out, *kernel) of the (already padded) input's windows."""
    rank = len(kernel)
    spans = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    view = np.lib.stride_tricks.sliding_window_view(x, spans, axis=tuple(range(2, 2 + rank)))
    index = (slice(None), slice(None)) + tuple(slice(None, None, s) for s in strides) + tuple(slice(None, None, d) for d in dilations)
    return view[index]


def _pad_spatial(x, pads, value=0.0):
    if not any(p for pair in pads for p in pair):
        return x
    return np.pad(x, [(0, 0), (0, 0)] + [tuple(p) for p in pads], constant_values=value)


# --------------------------------------------------------------------------------- conv


def _conv_params(b, layout: str):
    """(x, weight type, kernel, strides, dilations, pad_type, custom pad, groups) of a conv op."""
    x = b.operand("x")
    b.expect(x, FLOATS, "x")
    w_type = b.type_of("weight")
    if w_type.rank is None or not 3 <= w_type.rank <= 5:
        b.fail(f"weight must have rank 3 to 5 ({layout}, *kernel), got {w_type}")
    kernel = tuple(w_type.shape[2:])
    return (x, w_type, kernel, *_spatial_params(b, x, kernel), b.int_("groups", 1))


@op("conv")
def conv(b):
    x, w_type, kernel, strides, dilations, pad_type, custom, groups = _conv_params(b, "C_out, C_in / groups")
    c_out, c_in_g = w_type.shape[:2]
    if groups < 1 or c_out % groups or (x.shape is not None and not same_dim(x.shape[1], c_in_g * groups)):
        b.fail(f"x {x.type} with groups={groups} does not fit the weight {w_type} (C_in must be {c_in_g} x groups, C_out divisible by groups)")
    args = [x]
    if b.has("bias"):
        bias = b.operand("bias")
        if bias.shape is not None and tuple(bias.shape) != (c_out,):
            b.fail(f"bias {bias.type} must have shape ({c_out},)")
        args.append(bias)
    out = None
    if x.shape is not None:
        pads = conv_pads(pad_type, x.shape[2:], kernel, strides, dilations, custom)
        sizes = [None] * len(kernel) if pads is None else [_out_size(n, p, k, s, d) for n, p, k, s, d in zip(x.shape[2:], pads, kernel, strides, dilations)]
        out = (x.shape[0], c_out, *sizes)
    use = b.weight("weight", "conv")
    if use is None:
        args.insert(1, b.operand("weight"))
    clock = b.clock

    def run(v, *rest):
        weight = use.dense() if use is not None else rest[0]
        bias = rest[-1] if len(rest) > (0 if use is not None else 1) else None
        pads = conv_pads(pad_type, v.shape[2:], kernel, strides, dilations, custom)
        return conv_nd(v, weight, bias, strides, dilations, pads, groups, clock)

    return b.emit(run, args, [(out, x.type.dtype)])


def conv_nd(x, w, bias, strides, dilations, pads, groups, clock):
    """The convolution of x (N, C, *D) by w (O, C / groups, *K); float32 (N, O, *D_out)."""
    n, c = x.shape[:2]
    o, cg = w.shape[:2]
    kernel = w.shape[2:]
    taps = int(np.prod(kernel))
    og = o // groups
    simple = taps == 1 and all(s == 1 for s in strides) and not any(p for pair in pads for p in pair)
    if simple and groups == 1:
        t0 = time.perf_counter()
        y = np.matmul(w.reshape(o, c), x.reshape(n, c, -1))
        clock.seconds += time.perf_counter() - t0
        y = y.reshape((n, o) + x.shape[2:])
    else:
        view = windows(_pad_spatial(x, pads), kernel, strides, dilations)  # (N, C, *out, *K)
        out_dims = view.shape[2 : 2 + len(kernel)]
        rank = len(kernel)
        if cg == 1 and og == 1:  # depthwise: one filter per channel, taps accumulated
            flat_w = w.reshape(o, taps)
            y = np.zeros((n, o) + out_dims, np.float32)
            t0 = time.perf_counter()
            for t, offset in enumerate(itertools.product(*[range(k) for k in kernel])):
                tap = view[(slice(None), slice(None)) + (slice(None),) * rank + offset]
                y += flat_w[:, t].reshape((1, o) + (1,) * rank) * tap
            clock.seconds += time.perf_counter() - t0
        else:
            order = (0, 1) + tuple(range(2 + rank, 2 + 2 * rank)) + tuple(range(2, 2 + rank))
            patches = np.ascontiguousarray(view.transpose(order)).reshape(n, groups, cg * taps, -1)
            t0 = time.perf_counter()
            y = np.matmul(w.reshape(groups, og, cg * taps), patches)
            clock.seconds += time.perf_counter() - t0
            y = y.reshape((n, o) + out_dims)
    if bias is not None:
        y += bias.reshape((1, o) + (1,) * len(kernel))
    return y


@op("conv_transpose")
def conv_transpose(b):
    x, w_type, kernel, strides, dilations, pad_type, custom, groups = _conv_params(b, "C_in, C_out / groups")
    if pad_type == "same_lower":
        b.fail("pad_type 'same_lower' is not defined for conv_transpose; allowed: valid, same, custom")
    c_in, c_out_g = w_type.shape[:2]
    if groups < 1 or c_in % groups or (x.shape is not None and not same_dim(x.shape[1], c_in)):
        b.fail(f"x {x.type} with groups={groups} does not fit the weight {w_type}")
    c_out = c_out_g * groups
    target = b.ints("output_shape", None)
    if target is not None and len(target) not in (len(kernel), len(kernel) + 2):
        b.fail(f"output_shape {list(target)} must have {len(kernel) + 2} entries")
    if target is not None:
        target = tuple(target[-len(kernel):])
    args = [x]
    if b.has("bias"):
        args.append(b.operand("bias"))
    out = None
    if x.shape is not None:
        sizes = target or tuple(_transposed_size(n, k, s, d, pad_type, custom[2 * i : 2 * i + 2]) for i, (n, k, s, d) in enumerate(zip(x.shape[2:], kernel, strides, dilations)))
        out = (x.shape[0], c_out, *sizes)
    use = b.weight("weight", "conv_transpose")
    if use is None:
        args.insert(1, b.operand("weight"))
    clock = b.clock

    def run(v, *rest):
        weight = use.dense() if use is not None else rest[0]
        bias = rest[-1] if len(rest) > (0 if use is not None else 1) else None
        return conv_transpose_nd(v, weight, bias, strides, dilations, pad_type, custom, groups, target, clock)

    return b.emit(run, args, [(out, x.type.dtype)])


def _transposed_size(n, k, s, d, pad_type, pad):
    if n is None:
        return None
    if pad_type == "same":
        return n * s
    full = (n - 1) * s + (k - 1) * d + 1
    return full - (pad[0] + pad[1] if pad_type == "custom" else 0)


def conv_transpose_nd(x, w, bias, strides, dilations, pad_type, custom, groups, target, clock):
    """Transposed convolution of x (N, C_in, *D) by w (C_in, C_out / groups, *K)."""
    n, c_in = x.shape[:2]
    cog = w.shape[1]
    kernel = w.shape[2:]
    rank = len(kernel)
    dims = x.shape[2:]
    cig = c_in // groups
    taps = int(np.prod(kernel))
    wg = w.reshape(groups, cig, cog * taps).transpose(0, 2, 1)  # (G, C_out_g * taps, C_in_g)
    t0 = time.perf_counter()
    cols = np.matmul(wg, x.reshape(n, groups, cig, -1))  # (N, G, C_out_g * taps, P)
    clock.seconds += time.perf_counter() - t0
    cols = cols.reshape((n, groups * cog) + tuple(kernel) + tuple(dims))
    full = tuple((m - 1) * s + (k - 1) * d + 1 for m, k, s, d in zip(dims, kernel, strides, dilations))
    y = np.zeros((n, groups * cog) + full, np.float32)
    for offset in itertools.product(*[range(k) for k in kernel]):
        place = tuple(slice(o * d, o * d + (m - 1) * s + 1, s) for o, d, m, s in zip(offset, dilations, dims, strides))
        y[(slice(None), slice(None)) + place] += cols[(slice(None), slice(None)) + offset]
    sizes = target or tuple(_transposed_size(m, k, s, d, pad_type, custom[2 * i : 2 * i + 2]) for i, (m, k, s, d) in enumerate(zip(dims, kernel, strides, dilations)))
    crops = []
    for i, (size, f) in enumerate(zip(sizes, full)):
        if pad_type == "custom":
            before = custom[2 * i]
        elif pad_type == "same":
            before = max(0, f - size) // 2
        else:
            before = 0
        crops.append((before, size))
    index = (slice(None), slice(None)) + tuple(slice(bf, bf + sz) for bf, sz in crops)
    cropped = y[index]
    if cropped.shape[2:] != tuple(sizes):  # the target reaches past the full output: zeros there
        padded = np.zeros(cropped.shape[:2] + tuple(sizes), np.float32)
        padded[(slice(None), slice(None)) + tuple(slice(0, m) for m in cropped.shape[2:])] = cropped
        cropped = padded
    if bias is not None:
        cropped = cropped + bias.reshape((1, -1) + (1,) * rank)
    return cropped


# --------------------------------------------------------------------------------- norms


def _channel_param(b, name, x, default=None):
    """A per-channel operand (axis 1), or None."""
    if not b.has(name):
        return default
    operand = b.operand(name)
    if operand.shape is not None and x.shape is not None and (len(operand.shape) != 1 or not same_dim(operand.shape[0], x.shape[1])):
        b.fail(f"{name} {operand.type} must have one value per channel of x {x.type}")
    return operand


@op("batch_norm", "instance_norm")
def channel_norm(b):
    x = b.operand("x")
    b.expect(x, FLOATS, "x")
    if x.rank is None or not 3 <= x.rank <= 5:
        b.fail(f"x must have rank 3 to 5 (batch, channels, ...), got {x.type}")
    eps = b.scalar("epsilon", x, 1e-5)
    shape = (1, -1) + (1,) * (x.rank - 2)
    names = ("mean", "variance", "gamma", "beta") if b.type == "batch_norm" else ("gamma", "beta")
    params = [_channel_param(b, name, x) for name in names]
    present = [p for p in params if p is not None]
    spatial = tuple(range(2, x.rank))
    kind = b.type

    def run(v, *given):
        values = iter(given)
        got = [None if p is None else next(values).reshape(shape) for p in params]
        if kind == "batch_norm":
            mean, var, gamma, beta = got
        else:
            gamma, beta = got
            mean = np.mean(v, axis=spatial, keepdims=True)
            var = np.mean(np.square(v - mean), axis=spatial, keepdims=True)
        y = (v - mean) / np.sqrt(var + eps)
        if gamma is not None:
            y = y * gamma
        if beta is not None:
            y = y + beta
        return y

    return b.emit(run, [x, *present], [(x.shape, x.type.dtype)])


@op("layer_norm")
def layer_norm(b):
    x = b.operand("x")
    b.expect(x, FLOATS, "x")
    if x.rank is None:
        b.fail("x must have a known rank")
    given = b.ints("axes", None)
    axes = tuple(range(x.rank)) if given is None else b.infer(lambda: tuple(sorted(normalize_axes(given, x.rank))))
    eps = b.scalar("epsilon", x, 1e-5)
    norm_shape = tuple(x.shape[a] for a in axes)
    full = tuple(x.shape[i] if i in axes else 1 for i in range(x.rank))
    extras = []
    for name in ("gamma", "beta"):
        if b.has(name):
            operand = b.operand(name)
            if operand.shape is not None and (len(operand.shape) != len(norm_shape) or not all(same_dim(p, q) for p, q in zip(operand.shape, norm_shape))):
                b.fail(f"{name} {operand.type} must have the shape {norm_shape} of x along axes {list(axes)}")
            extras.append((name, operand))
    trailing = axes == tuple(range(x.rank - len(axes), x.rank))

    def run(v, *params):
        mean = np.mean(v, axis=axes, keepdims=True)
        centered = v - mean
        y = centered / np.sqrt(np.mean(np.square(centered), axis=axes, keepdims=True) + eps)
        for (name, _), p in zip(extras, params):
            p = p if trailing else p.reshape(tuple(v.shape[i] if i in axes else 1 for i in range(v.ndim)))
            y = y * p if name == "gamma" else y + p
        return y

    del full
    return b.emit(run, [x, *[o for _, o in extras]], [(x.shape, x.type.dtype)])


@op("l2_norm")
def l2_norm(b):
    x = b.operand("x")
    b.expect(x, FLOATS, "x")
    if x.rank is None or x.rank < 3:
        b.fail(f"x must have rank 3 or more, got {x.type}")
    eps = b.scalar("epsilon", x, 1e-6)
    axes = tuple(range(x.rank - 3, x.rank))
    return b.emit(lambda v: v / np.sqrt(np.sum(v * v, axis=axes, keepdims=True) + eps), [x], [(x.shape, x.type.dtype)])


@op("local_response_norm")
def local_response_norm(b):
    x = b.operand("x")
    b.expect(x, FLOATS, "x")
    if x.rank is None or not 3 <= x.rank <= 4:
        b.fail(f"x must have rank 3 or 4, got {x.type}")
    size = b.int_("size")
    if size < 1:
        b.fail(f"size {size} must be positive")
    alpha, beta, k = b.scalar("alpha", x, 1e-4), b.scalar("beta", x, 0.75), b.scalar("k", x, 1.0)

    def run(v):
        sq = np.square(v)
        padded = np.pad(sq, [(0, 0), (size // 2, (size - 1) // 2)] + [(0, 0)] * (v.ndim - 2))
        total = np.lib.stride_tricks.sliding_window_view(padded, size, axis=1).sum(axis=-1)
        return v / np.power(k + alpha / size * total, beta)

    return b.emit(run, [x], [(x.shape, x.type.dtype)])


# --------------------------------------------------------------------------------- pools


@op("avg_pool", "max_pool", "l2_pool")
def pool(b):
    x = b.operand("x")
    b.expect(x, FLOATS, "x")
    kernel = b.ints("kernel_sizes")
    if not 1 <= len(kernel) <= 3 or min(kernel) < 1:
        b.fail(f"kernel_sizes {list(kernel)} must hold 1 to 3 positive sizes")
    strides, _, pad_type, custom = _spatial_params(b, x, kernel)
    ceil_mode = b.bool_("ceil_mode", False) if b.type != "l2_pool" else False
    exclude = b.bool_("exclude_padding_from_average", False) if b.type == "avg_pool" else False
    if ceil_mode and pad_type not in ("valid", "custom"):
        b.fail(f"ceil_mode needs pad_type valid or custom, got {pad_type!r}")
    ones = (1,) * len(kernel)
    out = None
    if x.shape is not None:
        pads = conv_pads(pad_type, x.shape[2:], kernel, strides, ones, custom)
        sizes = [None] * len(kernel) if pads is None else [_out_size(n, p, k, s, 1, ceil_mode) for n, p, k, s in zip(x.shape[2:], pads, kernel, strides)]
        out = (*x.shape[:2], *sizes)
    kind = b.type

    def run(v):
        pads = conv_pads(pad_type, v.shape[2:], kernel, strides, ones, custom)
        sizes = [_out_size(n, p, k, s, 1, ceil_mode) for n, p, k, s in zip(v.shape[2:], pads, kernel, strides)]
        extra = [max(0, (m - 1) * s + k - (n + p[0] + p[1])) for m, s, k, n, p in zip(sizes, strides, kernel, v.shape[2:], pads)]
        full = [(p[0], p[1] + e) for p, e in zip(pads, extra)]
        axes = tuple(range(-len(kernel), 0))
        if kind == "max_pool":
            return windows(_pad_spatial(v, full, -np.inf), kernel, strides, ones).max(axis=axes)
        if kind == "l2_pool":
            return np.sqrt(np.square(windows(_pad_spatial(v, full), kernel, strides, ones)).sum(axis=axes))
        total = windows(_pad_spatial(v, full), kernel, strides, ones).sum(axis=axes)
        region = np.zeros((1, 1) + tuple(n + p[0] + p[1] for n, p in zip(v.shape[2:], full)), np.float32)
        if exclude:
            region[(0, 0) + tuple(slice(p[0], p[0] + n) for p, n in zip(full, v.shape[2:]))] = 1
        else:
            region[(0, 0) + tuple(slice(0, n + p[0] + p[1]) for p, n in zip(pads, v.shape[2:]))] = 1
        count = windows(region, kernel, strides, ones).sum(axis=axes)
        return total / np.maximum(count, 1)

    return b.emit(run, [x], [(out, x.type.dtype)])


# --------------------------------------------------------------------------------- resizing


def _grid(n_in: int, n_out: int, mode: str) -> np.ndarray:
    """Source coordinates of ``n_out`` samples over ``n_in`` pixels (coremltools' sampling modes)."""
    i = np.arange(n_out, dtype=np.float64)
    if mode in ("STRICT_ALIGN_CORNERS", "ALIGN_CORNERS"):
        if n_out == 1:
            g = np.array([0.0 if mode == "STRICT_ALIGN_CORNERS" else (n_in - 1) / 2])
        else:
            g = i * (n_in - 1) / (n_out - 1)
    elif mode == "DEFAULT":
        g = i * ((n_in - n_in / n_out) / (n_out - 1)) if n_out > 1 else np.zeros(1)
    elif mode == "OFFSET_CORNERS":
        delta = max(1, n_in - 1) / n_out
        g = 0.5 * delta + i * delta
    elif mode == "UNALIGN_CORNERS":
        g = i * (n_in / n_out) + 0.5 * (n_in / n_out) - 0.5
    else:  # "LEGACY": tf's align_corners=False, half_pixel_centers=False
        g = i * (n_in / n_out)
    return np.clip(g, 0, n_in - 1)


def _interpolate(v, axis, grid):
    low = np.floor(grid).astype(np.int64)
    high = np.minimum(low + 1, v.shape[axis] - 1)
    shape = [1] * v.ndim
    shape[axis] = -1
    frac = (grid - low).astype(np.float32).reshape(shape)
    a, c = np.take(v, low, axis=axis), np.take(v, high, axis=axis)
    return a + (c - a) * frac


def _resize(b, x, size_of, bilinear_mode=None):
    """Emit a resize of the last two dimensions: ``size_of(h, w)`` -> (H, W); nearest or bilinear."""
    if x.rank is None or x.rank < 3:
        b.fail(f"x must have rank 3 or more, got {x.type}")
    out = None
    if x.shape is not None:
        h, w = x.shape[-2:]
        hw = size_of(h, w) if h is not None and w is not None else (None, None)
        out = tuple(x.shape[:-2]) + tuple(hw)

    def run(v):
        h, w = v.shape[-2:]
        oh, ow = size_of(h, w)
        if bilinear_mode is None:
            rows = np.minimum((np.arange(oh) * (h / oh)).astype(np.int64), h - 1)
            cols = np.minimum((np.arange(ow) * (w / ow)).astype(np.int64), w - 1)
            return v[..., rows, :][..., cols]
        return _interpolate(_interpolate(v, v.ndim - 2, _grid(h, oh, bilinear_mode)), v.ndim - 1, _grid(w, ow, bilinear_mode))

    return b.emit(run, [x], [(out, x.type.dtype)])


@op("upsample_nearest_neighbor", "upsample_bilinear")
def upsample(b):
    x = b.operand("x")
    b.expect(x, FLOATS, "x")
    sh, sw = b.float_("scale_factor_height", 1), b.float_("scale_factor_width", 1)
    if sh <= 0 or sw <= 0:
        b.fail(f"scale factors {sh}, {sw} must be positive")
    mode = None
    if b.type == "upsample_bilinear":
        align = b.bool_("align_corners", True)
        half = b.bool_("half_pixel_centers", not align) if b.opset >= 16 else not align
        if align and half:
            b.fail("align_corners and half_pixel_centers cannot both be true")
        mode = "STRICT_ALIGN_CORNERS" if align else "UNALIGN_CORNERS" if half else "LEGACY"
    return _resize(b, x, lambda h, w: (int(math.floor(h * sh)), int(math.floor(w * sw))), mode)


@op("resize_nearest_neighbor", "resize_bilinear")
def resize(b):
    x = b.operand("x")
    b.expect(x, FLOATS, "x")
    default = 1 if b.type == "resize_bilinear" else None
    th = b.int_("target_size_height", default) if default is not None else b.int_("target_size_height")
    tw = b.int_("target_size_width", default) if default is not None else b.int_("target_size_width")
    if th < 1 or tw < 1:
        b.fail(f"target sizes {th}, {tw} must be positive")
    mode = None
    if b.type == "resize_bilinear":
        mode = b.str_("sampling_mode", "DEFAULT", allowed=("STRICT_ALIGN_CORNERS", "ALIGN_CORNERS", "DEFAULT", "OFFSET_CORNERS", "UNALIGN_CORNERS"))
    return _resize(b, x, lambda h, w: (th, tw), mode)


@op("crop")
def crop(b):
    x = b.operand("x")
    b.expect(x, FLOATS, "x")
    ch, cw = b.ints("crop_height"), b.ints("crop_width")
    if len(ch) != 2 or len(cw) != 2 or min(ch + cw) < 0:
        b.fail(f"crop_height {list(ch)} and crop_width {list(cw)} must be two non-negative sizes each")
    if x.rank is None or x.rank < 3:
        b.fail(f"x must have rank 3 or more, got {x.type}")
    h, w = x.shape[-2:]
    out = tuple(x.shape[:-2]) + (None if h is None else h - ch[0] - ch[1], None if w is None else w - cw[0] - cw[1])
    return b.emit(lambda v: v[..., ch[0] : v.shape[-2] - ch[1], cw[0] : v.shape[-1] - cw[1]], [x], [(out, x.type.dtype)])


@op("pad")
def pad(b):
    x = b.operand("x")
    if x.rank is None:
        b.fail("x must have a known rank")
    mode = b.str_("mode", "constant", allowed=("constant", "reflect", "replicate"))
    constant = b.scalar("constant_val", x, 0.0) if mode == "constant" else None
    rank = x.rank

    def widths(p):
        p = [int(v) for v in np.asarray(p).reshape(-1)]
        if len(p) % 2 or len(p) > 2 * rank:
            raise WeightpackError(f"{b.where}: pad {p} must hold 2 sizes per padded dimension (at most {rank})")
        if min(p, default=0) < 0:
            raise WeightpackError(f"{b.where}: pad {p} holds a negative size")
        pairs = [(0, 0)] * (rank - len(p) // 2) + [(p[2 * i], p[2 * i + 1]) for i in range(len(p) // 2)]
        return pairs

    def run_with(v, pairs):
        if mode == "constant":
            return np.pad(v, pairs, constant_values=constant)
        for axis, (before, after) in enumerate(pairs):
            limit = v.shape[axis] - 1 if mode == "reflect" else v.shape[axis]
            if before > limit or after > limit:
                raise WeightpackError(f"{b.where}: {mode} padding of {max(before, after)} exceeds {limit} on axis {axis} of {v.shape}")
        return np.pad(v, pairs, mode="reflect" if mode == "reflect" else "edge")

    if b.is_const("pad"):
        try:
            pairs = widths(b.ints("pad"))
        except WeightpackError as err:
            b.fail(str(err).split(": ", 1)[-1])
        out = None if x.shape is None else tuple(None if d is None else d + p + q for d, (p, q) in zip(x.shape, pairs))
        return b.emit(lambda v: run_with(v, pairs), [x], [(out, x.type.dtype)])
    return b.emit(lambda v, p: run_with(v, widths(p)), [x, b.operand("pad")], [((None,) * rank, x.type.dtype)])


# --------------------------------------------------------------------------------- rearrangements


def _rank4(b):
    x = b.operand("x")
    if x.rank != 4:
        b.fail(f"x must have rank 4 (N, C, H, W), got {x.type}")
    return x


@op("pixel_shuffle", "depth_to_space")
def depth_to_space(b):
    x = _rank4(b)
    f = b.int_("upscale_factor" if b.type == "pixel_shuffle" else "block_size")
    n, c, h, w = x.shape
    if f < 1 or (c is not None and c % (f * f)):
        b.fail(f"the channels {c} of x do not divide by the factor {f} squared")
    out = (n, None if c is None else c // (f * f), None if h is None else h * f, None if w is None else w * f)
    crd = b.type == "pixel_shuffle"  # torch's order (C, f, f); depth_to_space is tf's (f, f, C)

    def run(v):
        n, c, h, w = v.shape
        co = c // (f * f)
        if crd:
            return v.reshape(n, co, f, f, h, w).transpose(0, 1, 4, 2, 5, 3).reshape(n, co, h * f, w * f)
        return v.reshape(n, f, f, co, h, w).transpose(0, 3, 4, 1, 5, 2).reshape(n, co, h * f, w * f)

    return b.emit(run, [x], [(out, x.type.dtype)])


@op("pixel_unshuffle", "space_to_depth")
def space_to_depth(b):
    x = _rank4(b)
    f = b.int_("downscale_factor" if b.type == "pixel_unshuffle" else "block_size")
    n, c, h, w = x.shape
    if f < 1 or any(d is not None and d % f for d in (h, w)):
        b.fail(f"the spatial size {h}x{w} of x does not divide by the factor {f}")
    out = (n, None if c is None else c * f * f, None if h is None else h // f, None if w is None else w // f)
    crd = b.type == "pixel_unshuffle"

    def run(v):
        n, c, h, w = v.shape
        blocks = v.reshape(n, c, h // f, f, w // f, f)
        if crd:
            return blocks.transpose(0, 1, 3, 5, 2, 4).reshape(n, c * f * f, h // f, w // f)
        return blocks.transpose(0, 3, 5, 1, 2, 4).reshape(n, c * f * f, h // f, w // f)

    return b.emit(run, [x], [(out, x.type.dtype)])


@op("space_to_batch", "batch_to_space")
def space_batch(b):
    x = _rank4(b)
    block = b.ints("block_shape")
    edges = np.asarray(b.const("paddings" if b.type == "space_to_batch" else "crops")).reshape(-1).tolist()
    if len(block) != 2 or min(block) < 1 or len(edges) != 4 or min(edges) < 0:
        b.fail(f"block_shape {list(block)} must hold 2 positive sizes and the paddings / crops [[t, b], [l, r]]")
    (b0, b1), (t, bo, le, r) = block, edges
    n, c, h, w = x.shape
    if b.type == "space_to_batch":
        if any(d is not None and (d + p) % s for d, p, s in ((h, t + bo, b0), (w, le + r, b1))):
            b.fail(f"the padded spatial size of x {x.type} does not divide by the block {list(block)}")
        out = (None if n is None else n * b0 * b1, c, None if h is None else (h + t + bo) // b0, None if w is None else (w + le + r) // b1)

        def run(v):
            n, c, h, w = v.shape
            p = np.pad(v, [(0, 0), (0, 0), (t, bo), (le, r)])
            hh, ww = p.shape[2] // b0, p.shape[3] // b1
            return p.reshape(n, c, hh, b0, ww, b1).transpose(3, 5, 0, 1, 2, 4).reshape(b0 * b1 * n, c, hh, ww)
    else:
        if n is not None and n % (b0 * b1):
            b.fail(f"the batch {n} of x does not divide by the block {list(block)}")
        out = (None if n is None else n // (b0 * b1), c, None if h is None else h * b0 - t - bo, None if w is None else w * b1 - le - r)

        def run(v):
            n, c, h, w = v.shape
            m = n // (b0 * b1)
            full = v.reshape(b0, b1, m, c, h, w).transpose(2, 3, 4, 0, 5, 1).reshape(m, c, h * b0, w * b1)
            return full[:, :, t : h * b0 - bo, le : w * b1 - r]

    return b.emit(run, [x], [(out, x.type.dtype)])
