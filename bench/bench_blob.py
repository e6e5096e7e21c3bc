"""weight.bin throughput: weightpack's BlobWriter/BlobReader against coremltools' libmilstoragepython, same run.

The blob set is what a compressed 100M-parameter model stores: six 4096x4096 weights (100.7 M
parameters) as a 4-bit LUT, a 3-bit LUT per 16 rows, a 6-bit LUT, 50% sparse fp16 (uint1 mask +
values), int8 per channel and int4 per block of 32 (data + fp16 scales): 15 blobs, about 75 MB.
Values are random; only the layout matters here.

Each side starts from its own in-memory form, as in a real pipeline: weightpack holds packed
NBitArrays (what its compressed tensors are made of), coremltools one uint8/int8 value per
sub-byte element (what its MIL consts hold), so coremltools' writer packs and its reader
unpacks. Rows:

- write: the whole file. weightpack's writer is atomic and durable (temporary file, fsync,
  rename); the coremltools row adds an fsync of the finished file so both guarantee the same.
- write from values: weightpack given the same unpacked values as coremltools (it packs too).
- read: every blob. weightpack returns zero-copy views of the memory-mapped file (packed).
- read + unpack: weightpack also unpacks sub-byte blobs to uint8/int8 values, as coremltools does.
- read + touch: as "read", then sums every payload byte, so the data really comes off the mapping.

Medians over ``--repeats`` runs, the two sides alternating; the file stays in the page cache, so
these are CPU and memory-bandwidth figures, not disk ones. Prints a table and writes JSON to
bench/results/ (``--json PATH`` to choose).

    python bench/bench_blob.py                    # 100.7 M parameters, 5 repetitions
    python bench/bench_blob.py --size 1024 --repeats 3
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from weightpack import NBitArray
from weightpack.coreml.blob import BlobReader, BlobWriter

RESULTS = Path(__file__).resolve().parent / "results"
SUBBYTE = {"uint1": 1, "uint3": 3, "uint4": 4, "uint6": 6, "int4": 4}


def blob_set(size: int, seed: int = 0) -> list:
    """[(blob dtype, values as coremltools takes them)] for six size x size compressed weights."""
    rng = np.random.default_rng(seed)
    n = size * size
    mask = rng.random(n) < 0.5
    return [
        ("uint4", rng.integers(0, 16, n, dtype=np.uint8)),  # 4-bit LUT: indices, then the LUT
        ("fp16", rng.standard_normal(16).astype(np.float16)),
        ("uint3", rng.integers(0, 8, n, dtype=np.uint8)),  # 3-bit LUT per 16 rows
        ("fp16", rng.standard_normal(size // 16 * 8).astype(np.float16)),
        ("uint6", rng.integers(0, 64, n, dtype=np.uint8)),  # 6-bit LUT
        ("fp16", rng.standard_normal(64).astype(np.float16)),
        ("uint1", mask.astype(np.uint8)),  # 50% sparse: mask, then the nonzero values
        ("fp16", rng.standard_normal(int(mask.sum())).astype(np.float16)),
        ("int8", rng.integers(-127, 128, n, dtype=np.int8)),  # int8 per channel: data, scale
        ("fp16", rng.random(size).astype(np.float16)),
        ("int4", rng.integers(-8, 8, n, dtype=np.int8)),  # int4 per block of 32: data, scales
        ("fp16", rng.random(n // 32).astype(np.float16)),
    ]


def packed(blobs: list) -> list:
    """weightpack's in-memory form: sub-byte values as NBitArrays (packed once, not timed)."""
    out = []
    for dtype, values in blobs:
        if dtype in SUBBYTE:
            values = NBitArray.from_values(values, SUBBYTE[dtype], signed=dtype == "int4")
        out.append((dtype, values))
    return out


# ------------------------------------------------------------------------------------ the two sides


def weightpack_write(path, blobs) -> list:
    with BlobWriter(path) as writer:
        return [writer.write(values, dtype if dtype in SUBBYTE else None) for dtype, values in blobs]


def weightpack_read(path, offsets, blobs, unpack=False, touch=False) -> int:
    total = 0
    with BlobReader(path) as reader:
        for offset, (dtype, _) in zip(offsets, blobs):
            data = reader.read(offset, dtype, unpack=unpack)
            if touch:
                total += int((data.packed if isinstance(data, NBitArray) else data.view(np.uint8)).sum(dtype=np.uint64))
    return total


def coremltools_write(path, blobs) -> list:
    from coremltools.libmilstoragepython import _BlobStorageWriter

    writer = _BlobStorageWriter(str(path))
    offsets = []
    for dtype, values in blobs:
        if dtype == "fp16":
            offsets.append(writer.write_fp16_data(values.view(np.uint16)))
        else:
            offsets.append(getattr(writer, f"write_{dtype}_data")(values))
    del writer  # closes the file
    fd = os.open(path, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    return offsets


def coremltools_read(path, offsets, blobs, touch=False) -> int:
    from coremltools.libmilstoragepython import _BlobStorageReader

    reader = _BlobStorageReader(str(path))
    total = 0
    for offset, (dtype, _) in zip(offsets, blobs):
        data = getattr(reader, f"read_{dtype}_data")(offset)
        if touch:
            total += int(np.asarray(data).view(np.uint8).sum(dtype=np.uint64))
    return total


# ------------------------------------------------------------------------------------ measuring


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(size: int, repeats: int, folder: str) -> dict:
    values = blob_set(size)
    nbits = packed(values)
    params = 6 * size * size
    wp_path, ct_path = os.path.join(folder, "wp.bin"), os.path.join(folder, "ct.bin")
    wp_offsets = weightpack_write(wp_path, nbits)
    ct_offsets = coremltools_write(ct_path, values)
    if wp_offsets != ct_offsets or Path(wp_path).read_bytes() != Path(ct_path).read_bytes():
        raise SystemExit("the two files differ: weightpack's writer is not byte-identical to coremltools'")
    nbytes = os.path.getsize(wp_path)
    pairs = {
        "write": (lambda: weightpack_write(wp_path, nbits), lambda: coremltools_write(ct_path, values)),
        "write from values": (lambda: weightpack_write(wp_path, values), lambda: coremltools_write(ct_path, values)),
        "read": (lambda: weightpack_read(wp_path, wp_offsets, values), lambda: coremltools_read(ct_path, ct_offsets, values)),
        "read + unpack": (lambda: weightpack_read(wp_path, wp_offsets, values, unpack=True),
                          lambda: coremltools_read(ct_path, ct_offsets, values)),
        "read + touch": (lambda: weightpack_read(wp_path, wp_offsets, values, touch=True),
                         lambda: coremltools_read(ct_path, ct_offsets, values, touch=True)),
    }  # fmt: skip
    rows = []
    for name, (mine, theirs) in pairs.items():
        times = {"weightpack": [], "coremltools": []}
        for _ in range(repeats):  # alternate, so both see the same machine load
            times["weightpack"].append(timed(mine))
            times["coremltools"].append(timed(theirs))
        wp_s, ct_s = statistics.median(times["weightpack"]), statistics.median(times["coremltools"])
        rows.append({"operation": name, "weightpack_s": wp_s, "coremltools_s": ct_s, "ratio": ct_s / wp_s,
                     "weightpack_mb_s": nbytes / wp_s / 1e6, "coremltools_mb_s": nbytes / ct_s / 1e6,
                     "weightpack_all_s": times["weightpack"], "coremltools_all_s": times["coremltools"]})  # fmt: skip
    return {"parameters": params, "blobs": len(values), "file_bytes": nbytes, "repeats": repeats, "rows": rows}


def table(result: dict) -> str:
    lines = [
        f"{result['blobs']} blobs, {result['parameters'] / 1e6:.1f} M parameters, weight.bin {result['file_bytes'] / 1e6:.1f} MB; "
        f"medians of {result['repeats']} (the files are byte-identical)",
        f"{'operation':<18} {'weightpack':>12} {'coremltools':>12} {'wp MB/s':>9} {'ct MB/s':>9} {'ct/wp':>7}",
    ]
    for r in result["rows"]:
        lines.append(
            f"{r['operation']:<18} {r['weightpack_s'] * 1e3:>10.1f}ms {r['coremltools_s'] * 1e3:>10.1f}ms "
            f"{r['weightpack_mb_s']:>9.0f} {r['coremltools_mb_s']:>9.0f} {r['ratio']:>6.1f}x"
        )
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=4096, help="each of the six weights is SIZE x SIZE (default 4096)")
    parser.add_argument("--repeats", type=int, default=5, help="repetitions per measurement (default 5)")
    parser.add_argument("--dir", default=None, help="where the files go (default: a temporary folder)")
    parser.add_argument("--json", default=None, help="JSON output path (default: bench/results/blob-<time>.json)")
    args = parser.parse_args(argv)
    if args.size % 32 or args.size < 32 or args.repeats < 1:
        parser.error("--size must be a positive multiple of 32, --repeats at least 1")
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        result = measure(args.size, args.repeats, folder)
    result.update(machine=platform.machine(), python=sys.version.split()[0], numpy=np.__version__,
                  command="python bench/bench_blob.py " + " ".join(argv if argv is not None else sys.argv[1:]))  # fmt: skip
    print(table(result))
    path = Path(args.json) if args.json else RESULTS / f"blob-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
