"""``weightpack demo``: compress a built-in ResNet50-shaped weight set every way and print a table.

The weight set has the shapes of ResNet50's 54 weight tensors (53 convolutions and the final
fully connected layer, 25.5 M parameters). Values are seeded random numbers, nothing is
downloaded: Student-t (4 degrees of freedom, heavy tails like trained weights) scaled to each
layer's He-initialisation standard deviation ``sqrt(2 / fan_in)``, with a log-normal spread of
magnitude across output channels, stored as float16.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass

import numpy as np

from .errors import WeightpackError

_STAGES = ((64, 3), (128, 4), (256, 6), (512, 3))  # (bottleneck width, blocks) of ResNet50
_EXPANSION = 4


def resnet50_shapes() -> dict[str, tuple[int, ...]]:
    """Names and shapes (out, in, kh, kw) of ResNet50's 54 weight tensors, in network order.

    >>> shapes = resnet50_shapes()
    >>> len(shapes), sum(int(np.prod(s)) for s in shapes.values())
    (54, 25502912)
    """
    shapes = {"conv1.weight": (64, 3, 7, 7)}
    in_ch = 64
    for stage, (width, blocks) in enumerate(_STAGES, start=1):
        for block in range(blocks):
            prefix = f"layer{stage}.{block}"
            out_ch = width * _EXPANSION
            shapes[f"{prefix}.conv1.weight"] = (width, in_ch, 1, 1)
            shapes[f"{prefix}.conv2.weight"] = (width, width, 3, 3)
            shapes[f"{prefix}.conv3.weight"] = (out_ch, width, 1, 1)
            if block == 0:
                shapes[f"{prefix}.downsample.weight"] = (out_ch, in_ch, 1, 1)
            in_ch = out_ch
    shapes["fc.weight"] = (1000, in_ch)
    return shapes


def resnet50_weights(seed: int = 0) -> dict[str, np.ndarray]:
    """The demo's deterministic float16 weight set (about 51 MB), keyed by tensor name.

    >>> w = resnet50_weights()
    >>> w["fc.weight"].shape, w["fc.weight"].dtype
    ((1000, 2048), dtype('float16'))
    """
    rng = np.random.default_rng(seed)
    weights = {}
    for name, shape in resnet50_shapes().items():
        fan_in = int(np.prod(shape[1:]))
        channel_scale = np.exp(rng.normal(0.0, 0.35, (shape[0],) + (1,) * (len(shape) - 1)))
        values = rng.standard_t(4, shape) / np.sqrt(2.0)  # Student-t(4) has variance 2
        weights[name] = (values * channel_scale * np.sqrt(2.0 / fan_in)).astype(np.float16)
    return weights


def _configurations():
    import weightpack as wp

    return {
        "fp16 (baseline)": None,
        "prune 50%": lambda w: wp.prune(w, sparsity=0.5),
        "prune 75%": lambda w: wp.prune(w, sparsity=0.75),
        "int8 per channel": lambda w: wp.quantize(w, "int8", granularity="per_channel"),
        "palettize 8-bit": lambda w: wp.palettize(w, nbits=8),
        "palettize 6-bit": lambda w: wp.palettize(w, nbits=6),
        "palettize 4-bit": lambda w: wp.palettize(w, nbits=4),
        "palettize 2-bit": lambda w: wp.palettize(w, nbits=2),
    }


CONFIGURATIONS = tuple(
    ["fp16 (baseline)", "prune 50%", "prune 75%", "int8 per channel"]
    + [f"palettize {n}-bit" for n in (8, 6, 4, 2)]
)


@dataclass
class DemoRow:
    configuration: str
    megabytes: float  # 1 MB = 10**6 bytes, of the compressed arrays as Core ML stores them
    ratio_to_fp16: float
    snr_db: float
    seconds: float


def run(seed: int = 0, configurations=CONFIGURATIONS) -> list[DemoRow]:
    """Compress the demo weight set under each configuration and measure it.

    Size counts the compressed arrays' bytes (``nbytes``); SNR compares every decompressed weight
    with the float16 original, pooled over all 54 tensors; seconds is the compression wall time
    (nothing is compiled on the way: the encoders' loops are C, built at install).
    """
    from .metrics import snr_db

    known = _configurations()
    unknown = [c for c in configurations if c not in known]
    if unknown:
        raise WeightpackError(f"configurations {unknown} are unknown; allowed: {list(known)}")
    weights = resnet50_weights(seed)
    original = np.concatenate([w.reshape(-1) for w in weights.values()])
    baseline_bytes = original.nbytes
    rows = []
    for label in configurations:
        compress = known[label]
        start = time.perf_counter()
        if compress is None:
            compressed = weights
            nbytes = baseline_bytes
        else:
            compressed = {name: compress(w) for name, w in weights.items()}
            nbytes = sum(t.nbytes for t in compressed.values())
        seconds = time.perf_counter() - start
        if compress is None:
            snr = float("inf")
        else:
            restored = np.concatenate([t.decompress().reshape(-1) for t in compressed.values()])
            snr = snr_db(original, restored)
        rows.append(DemoRow(label, nbytes / 1e6, baseline_bytes / nbytes, snr, seconds))
    return rows


def format_table(rows: list[DemoRow]) -> str:
    """The demo's result as an aligned text table."""
    header = f"{'configuration':<18} {'size MB':>8} {'x fp16':>7} {'SNR dB':>7} {'seconds':>8}"
    lines = [header, "-" * len(header)]
    for r in rows:
        snr = "exact" if np.isinf(r.snr_db) else f"{r.snr_db:.2f}"
        lines.append(
            f"{r.configuration:<18} {r.megabytes:>8.2f} {r.ratio_to_fp16:>7.2f} {snr:>7} {r.seconds:>8.2f}"
        )
    return "\n".join(lines)


def main(as_json: bool = False, seed: int = 0) -> None:
    total = time.perf_counter()
    rows = run(seed)
    if as_json:
        print(json.dumps([asdict(r) for r in rows], indent=2, allow_nan=True))
    else:
        shapes = resnet50_shapes()
        params = sum(int(np.prod(s)) for s in shapes.values())
        print(f"ResNet50-shaped weight set: {len(shapes)} tensors, {params / 1e6:.2f} M parameters, seed {seed}")
        print(format_table(rows))
        print(f"total {time.perf_counter() - total:.1f} s; seconds = compression wall time, no compilation in it "
              "(the encoders are C, built at install)")
