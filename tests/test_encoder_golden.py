"""The encoders' exact results, pinned: a SHA-256 of every array each encoder returns, for inputs
that reach each of their code paths (small groups sorted, large ones histogrammed or binned, one
big group in parallel chunks, Lloyd passes, importance, per-channel scales, sparse input, ties,
vectors, calibration sweeps, and the k-means DP itself).

The digests were recorded with the original numba kernels, before the encoders' hot loops moved
to C (csrc/encode_*.c): an implementation may change, its bytes may not. Inputs come from
``numpy.random.default_rng`` (the same numbers on every platform). If a change of results is
intended, print the new table with ``python tests/test_encoder_golden.py`` and say why in the commit.
"""
from __future__ import annotations

import hashlib
import sys

import numpy as np
import pytest

import weightpack as wp
from weightpack.bits import NBitArray
from weightpack.formats import CompressedTensor


def digest(result) -> str:
    """SHA-256 over every array (dtype, shape, bytes) and attribute of ``result``, in order."""
    h = hashlib.sha256()

    def feed(x):
        if x is None:
            h.update(b"none")
        elif isinstance(x, NBitArray):
            h.update(f"nbits {x.nbits} {x.signed} {x.shape}".encode())
            h.update(np.ascontiguousarray(x.packed).tobytes())
        elif isinstance(x, np.ndarray):
            h.update(f"array {x.dtype.str} {x.shape}".encode())
            h.update(np.ascontiguousarray(x).tobytes())
        elif isinstance(x, CompressedTensor):
            h.update(f"{type(x).__name__} {x._attrs()}".encode())
            for key, value in x.arrays().items():
                h.update(key.encode())
                feed(value)
        elif isinstance(x, (tuple, list)):
            for item in x:
                feed(item)
        elif isinstance(x, (int, float, np.integer, np.floating)):
            h.update(repr(float(x)).encode())
        else:  # NamedTuples (RDCurve, KMeans1D) and slotted wrappers (ScaledPalettizedTensor)
            names = getattr(x, "_fields", None) or x.__slots__
            h.update(f"{type(x).__name__} {names}".encode())
            feed(tuple(getattr(x, name) for name in names))

    feed(result)
    return h.hexdigest()[:20]


def weights(shape, dtype=np.float16, seed=0, style="normal"):
    rng = np.random.default_rng(seed)
    if style == "normal":
        w = rng.standard_normal(shape)
    elif style == "heavy":  # Student-t: long tails, like trained weights
        w = rng.standard_t(3, shape) * 0.02
    elif style == "ties":  # few distinct magnitudes: ties everywhere
        w = rng.integers(-6, 7, shape) * 0.25
    elif style == "few":  # a handful of values: every float32 bin is pure
        w = rng.choice(np.array([-1.5, -0.25, 0.0, 0.5, 3.0]), shape)
    return w.astype(dtype)


def importance(shape, seed=1):
    return np.random.default_rng(seed).random(shape).astype(np.float32)


def gram(n, seed=2):
    x = np.random.default_rng(seed).standard_normal((4 * n, n)) @ np.random.default_rng(seed + 1).standard_normal((n, n))
    return x.T @ x / (4 * n)


def kmeans_points(m, seed=3):
    rng = np.random.default_rng(seed)
    x = np.unique(rng.standard_t(4, m))
    return x, rng.integers(1, 9, x.size).astype(np.float64)


def _kmeans():
    from weightpack.compress import kmeans

    return kmeans


CASES = {
    # palettization: float16 (bit-pattern histogram) and float32 (bins + Lloyd), every size class
    "pal fp16 histogram": lambda: wp.palettize(weights((96, 100)), nbits=4),
    "pal fp16 chunked": lambda: wp.palettize(weights((256, 160), style="heavy"), nbits=3),
    "pal fp16 8-bit": lambda: wp.palettize(weights((300, 200)), nbits=8),
    "pal fp16 1-bit": lambda: wp.palettize(weights((40, 30)), nbits=1),
    "pal fp32 small": lambda: wp.palettize(weights((60, 50), np.float32), nbits=6),
    "pal fp32 binned": lambda: wp.palettize(weights((96, 100), np.float32, style="heavy"), nbits=2),
    "pal fp32 chunked": lambda: wp.palettize(weights((256, 160), np.float32), nbits=4),
    "pal fp32 pure bins": lambda: wp.palettize(weights((256, 160), np.float32, style="few"), nbits=2),
    "pal fp16 groups small": lambda: wp.palettize(weights((64, 48)), nbits=4, group_size=16),
    "pal fp16 groups big": lambda: wp.palettize(weights((256, 96), style="heavy"), nbits=4, group_size=128),
    "pal fp32 groups big": lambda: wp.palettize(weights((256, 96), np.float32), nbits=3, group_size=128),
    "pal fp32 groups axis 1": lambda: wp.palettize(weights((48, 64), np.float32), nbits=2, group_size=8, axis=1),
    "pal conv groups": lambda: wp.palettize(weights((16, 8, 3, 3)), nbits=4, group_size=4),
    "pal fp16 importance": lambda: wp.palettize(weights((96, 100)), nbits=4, importance=importance((96, 100))),
    "pal fp16 importance chunked": lambda: wp.palettize(weights((256, 160)), nbits=2, importance=importance((256, 1))),
    "pal fp32 importance": lambda: wp.palettize(weights((96, 100), np.float32), nbits=3,
                                                importance=importance((96, 100))),
    "pal fp16 channel scale": lambda: wp.palettize(weights((64, 80), style="heavy"), nbits=4, per_channel_scale=True),
    "pal fp32 channel scale groups": lambda: wp.palettize(weights((128, 96), np.float32), nbits=4, group_size=32,
                                                          per_channel_scale=True),
    "pal int8 lut": lambda: wp.palettize(weights((96, 100)), nbits=4, lut_dtype="int8"),
    "pal uniform fp16": lambda: wp.palettize(weights((96, 100)), nbits=3, mode="uniform"),
    "pal uniform fp32 groups": lambda: wp.palettize(weights((64, 48), np.float32), nbits=4, mode="uniform",
                                                    group_size=16),
    "pal unique": lambda: wp.palettize(weights((96, 100), np.float32, style="few"), mode="unique"),
    "pal sparse fp16": lambda: wp.palettize(wp.prune(weights((300, 300)), 0.5), nbits=4),
    "pal sparse fp32 groups": lambda: wp.palettize(wp.prune(weights((64, 48), np.float32), 0.6), nbits=2,
                                                   group_size=16),
    "pal vectors fp16": lambda: wp.palettize(weights((64, 32)), nbits=4, cluster_dim=2),
    "pal vectors fp32 importance": lambda: wp.palettize(weights((32, 48), np.float32), nbits=3, cluster_dim=4,
                                                        importance=importance((32, 48))),
    "rd curve fp16": lambda: wp.palettize_rd_curve(weights((96, 100)), max_nbits=4),
    "rd curve fp32 chunked": lambda: wp.palettize_rd_curve(weights((256, 160), np.float32), max_nbits=3),
    "rd curve groups": lambda: wp.palettize_rd_curve(weights((64, 48)), max_nbits=3, group_size=16),
    # pruning: radix selection over large tensors (small ones run the numpy reference)
    "prune fp16": lambda: wp.prune(weights((300, 300)), 0.5),
    "prune fp16 ties": lambda: wp.prune(weights((300, 300), style="ties"), 0.37),
    "prune fp32 importance": lambda: wp.prune(weights((300, 300), np.float32), 0.7, importance=importance((1, 300))),
    "prune fp32 ties at zero": lambda: wp.prune(weights((300, 300), np.float32, style="few"), 0.1),
    "prune per channel": lambda: wp.prune(weights((300, 300), np.float32), 0.5, granularity="per_channel"),
    "prune per channel small": lambda: wp.prune(weights((64, 100), style="ties"), 0.3, granularity="per_channel"),
    "prune n:m": lambda: wp.prune(weights((300, 300)), n_m_ratio=(2, 4)),
    "prune n:m ties": lambda: wp.prune(weights((64, 30), np.float32, style="ties"), n_m_ratio=(3, 8)),
    "prune blocks": lambda: wp.prune(weights((300, 300), np.float32), 0.5, block_size=4),
    "prune threshold": lambda: wp.prune(weights((300, 300)), threshold=0.3),
    "prune all": lambda: wp.prune(weights((300, 300)), 1.0),
    # quantization (large tensors: small ones run the numpy reference)
    "quant int8 channel": lambda: wp.quantize(weights((300, 300)), "int8"),
    "quant int4 blocks": lambda: wp.quantize(weights((300, 320), np.float32), "int4", granularity="per_block",
                                             block_size=32),
    "quant uint8 tensor asym": lambda: wp.quantize(weights((300, 300), style="heavy"), "uint8", mode="asymmetric",
                                                   granularity="per_tensor"),
    "quant uint4 search": lambda: wp.quantize(weights((300, 320)), "uint4", mode="asymmetric", granularity="per_block",
                                              block_size=64, clip_search=True, refit=True),
    "quant int8 search importance": lambda: wp.quantize(weights((300, 300), np.float32, style="heavy"), "int8",
                                                        clip_search=True, refit=True, importance=importance((300, 300))),
    "quant sparse": lambda: wp.quantize(wp.prune(weights((300, 300)), 0.5), "int8", clip_search=True),
    "quant lut": lambda: wp.quantize(wp.palettize(weights((96, 100), np.float32), nbits=4), "int8"),
    # calibration-aware encoders (column sweeps)
    "gptq palettize": lambda: wp.calibration.gptq_palettize(weights((64, 96), np.float32), gram(96), nbits=3),
    "gptq palettize groups scale": lambda: wp.calibration.gptq_palettize(weights((64, 96), np.float32), gram(96),
                                                                         nbits=4, group_size=16, per_row_scale=True),
    "gptq quantize": lambda: wp.calibration.gptq_quantize(weights((64, 96), np.float32), gram(96), "int4",
                                                          granularity="per_block", block_size=32),
    "sparsegpt": lambda: wp.calibration.sparsegpt_prune(weights((64, 96), np.float32), gram(96), 0.5),
    "sparsegpt n:m": lambda: wp.calibration.sparsegpt_prune(weights((64, 96), np.float32), gram(96), n_m=(2, 4)),
    "wanda": lambda: wp.calibration.wanda_prune(weights((64, 96), np.float32), np.diagonal(gram(96)), 0.5),
    # the 1-D k-means DP
    "kmeans solve": lambda: _kmeans().solve(*kmeans_points(3000), 16),
    "kmeans solve_k": lambda: _kmeans().solve_k(*kmeans_points(20000, seed=4), 64),
    "kmeans curve": lambda: _kmeans().optimal_kmeans_1d(*kmeans_points(500, seed=5), 8),
}

GOLDEN = {
    'pal fp16 histogram': 'e78de7fde395c0a2cefc',
    'pal fp16 chunked': '71f3dbdc33138e352142',
    'pal fp16 8-bit': 'a3489a03f9054d1984af',
    'pal fp16 1-bit': '2df20d5ad30496fe719d',
    'pal fp32 small': 'e04785668549abfac8c9',
    'pal fp32 binned': 'bf127050383f8c8bd8c3',
    'pal fp32 chunked': 'd84f5b16c77ea6d73c93',
    'pal fp32 pure bins': '3afd14014f8437fe6139',
    'pal fp16 groups small': '4205eda73db2257702f9',
    'pal fp16 groups big': '4bdc9cf4efac4f876a83',
    'pal fp32 groups big': '3b72910ccfa45f6cec4e',
    'pal fp32 groups axis 1': '4c79d72622cb649033d9',
    'pal conv groups': 'e7b16d44e72e3e3ba0bc',
    'pal fp16 importance': '986a04805c5ebfac9661',
    'pal fp16 importance chunked': '110917a5cbd62255e848',
    'pal fp32 importance': '44e552d8f2457e064dc8',
    'pal fp16 channel scale': '772e39ca9fb47e02d4f0',
    'pal fp32 channel scale groups': '76238be3a64bfdae42fc',
    'pal int8 lut': '00720bad3168425313a7',
    'pal uniform fp16': '4ffe4122fd4790a1adb8',
    'pal uniform fp32 groups': 'e6114bca7eb2561c56e6',
    'pal unique': 'ed926481102eab6bd031',
    'pal sparse fp16': '7c91a368831544146809',
    'pal sparse fp32 groups': 'd097b2e4697fbd1370cf',
    'pal vectors fp16': '13a79bb553b42177fc61',
    'pal vectors fp32 importance': '1bdefd224953e3e30145',
    'rd curve fp16': '2e0476eb9e0d181c0234',
    'rd curve fp32 chunked': '6353e80851260961668c',
    'rd curve groups': '1d14209904b00b454bc7',
    'prune fp16': '8839b1994006a5c933cc',
    'prune fp16 ties': '0eddf64c164e019523c0',
    'prune fp32 importance': '429f71c7978c14f04154',
    'prune fp32 ties at zero': '6c4d6b4e6d05c46083e6',
    'prune per channel': '383899ecefd688991b0f',
    'prune per channel small': 'cd75c7a7868d043a434e',
    'prune n:m': 'a37bd8453f096d16cfe4',
    'prune n:m ties': '42ac25a9d521f67702cb',
    'prune blocks': 'd00f711cd14ff7e5b8a1',
    'prune threshold': '92182bd1313984613e16',
    'prune all': '74bd255fbf0b87600372',
    'quant int8 channel': 'c0e831ebcb53d1b0d72f',
    'quant int4 blocks': '01c97d482c69f52d6ff7',
    'quant uint8 tensor asym': '5ab0c6a26295827cf008',
    'quant uint4 search': 'dff8a1b600ff5ab39ce2',
    'quant int8 search importance': 'ec131403289844a25806',
    'quant sparse': '4d8ae8316ab4bc58b665',
    'quant lut': '7d9298a7c95c0e86d1b5',
    'gptq palettize': 'e83e53f1d47dfb2910f7',
    'gptq palettize groups scale': '93fc9c12d14e46c12685',
    'gptq quantize': 'd42534b787fb9124b78f',
    'sparsegpt': 'f7bf507b6a336e97b426',
    'sparsegpt n:m': 'ee947ebb492e526a2f4b',
    'wanda': 'b36ff442d24b63b73e43',
    'kmeans solve': '19d6fc0f4bb2d66b3855',
    'kmeans solve_k': 'ac854d56d7c24b635167',
    'kmeans curve': 'c0afeee06d33bf5980cf',
}


@pytest.mark.parametrize("name", list(CASES))
def test_encoder_results_are_unchanged(name):
    assert digest(CASES[name]()) == GOLDEN[name]


def test_digest_sees_every_byte():
    w = weights((8, 8), np.float32)
    a = wp.palettize(w, nbits=2)
    b = wp.PalettizedTensor(a.indices, a.lut.copy())
    assert digest(a) == digest(b)
    lut = a.lut.copy()
    lut.reshape(-1).view(np.uint32)[0] ^= 1  # one bit of one LUT entry
    assert digest(wp.PalettizedTensor(a.indices, lut)) != digest(a)


if __name__ == "__main__":
    for name, make in CASES.items():
        print(f"    {name!r}: {digest(make())!r},", flush=True)
    sys.exit(0)
