"""What machine a benchmark ran on: CPU model, the instruction-set flags that matter here, the
last-level cache as the CPU reports it, load, and weightpack's build (SIMD level, threads).

Every benchmark prints :func:`describe` first and stores :func:`info` in its JSON, so no figure
is ever separated from the CPU that produced it.

>>> sorted(info())[:3]
['cpu', 'cpus', 'flags']
"""
from __future__ import annotations

import os
import platform
import re
import subprocess
from pathlib import Path

FLAGS_OF_INTEREST = ("avx2", "fma", "f16c", "bmi2", "avx512f", "avx512bw", "avx512vl", "avx512vbmi", "avx512_vbmi2",
                     "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16",
                     "asimd", "asimddp", "asimdhp", "sve")


def cpu_model() -> str:
    if platform.system() == "Darwin":
        return _sysctl("machdep.cpu.brand_string") or platform.processor()
    text = _read("/proc/cpuinfo")
    for key in ("model name", "Model", "CPU part"):
        match = re.search(rf"^{key}\s*:\s*(.+)$", text, re.M)
        if match:
            return match.group(1).strip()
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    text = _read("/proc/cpuinfo")
    match = re.search(r"^(flags|Features)\s*:\s*(.+)$", text, re.M)
    have = set(match.group(2).split()) if match else set()
    if platform.system() == "Darwin" and platform.machine() == "arm64":
        have |= {"asimd"} | ({"asimddp"} if _sysctl("hw.optional.arm.FEAT_DotProd") == "1" else set())
    return [f for f in FLAGS_OF_INTEREST if f in have]


def llc_bytes() -> int:
    """The largest cache the CPU reports (Linux sysfs, macOS sysctl); 32 MiB if none is found."""
    sizes = []
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        text = _read(index / "size").strip()
        match = re.fullmatch(r"(\d+)([KMG]?)", text)
        if match:
            sizes.append(int(match.group(1)) * {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}[match.group(2)])
    if platform.system() == "Darwin":
        for key in ("hw.l3cachesize", "hw.l2cachesize"):
            value = _sysctl(key)
            if value and value.isdigit():
                sizes.append(int(value))
    return max(sizes) if sizes else 32 * 2**20


def info() -> dict:
    from weightpack.kernels import backend_c

    return dict(
        cpu=cpu_model(), machine=platform.machine(), flags=cpu_flags(), llc_bytes=llc_bytes(),
        cpus=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        load_average=os.getloadavg()[0], simd=backend_c.SIMD_LEVELS[backend_c.lib.wp_simd_level()],  # the level in force
        simd_levels=list(backend_c.simd_levels()),
        threads=backend_c.threads(), threading=backend_c.THREADING,
        spin_us=os.environ.get("WEIGHTPACK_SPIN_US", "default"),
        openblas_thread_timeout=os.environ.get("OPENBLAS_THREAD_TIMEOUT", "default"),
    )


def describe(meta: dict | None = None) -> str:
    meta = meta or info()
    return (f"CPU: {meta['cpu']} ({meta['machine']}, {meta['cpus']} CPUs, LLC {meta['llc_bytes'] / 2**20:.0f} MiB; "
            f"load {meta['load_average']:.2f})\nflags: {' '.join(meta['flags'])}\n"
            f"weightpack C backend: SIMD {meta['simd']} (levels {', '.join(meta['simd_levels'])}), "
            f"{meta['threads']} threads ({meta['threading']}; WEIGHTPACK_SPIN_US {meta.get('spin_us', 'default')}); "
            f"OPENBLAS_THREAD_TIMEOUT {meta.get('openblas_thread_timeout', 'default')}")


class OtherLoad:
    """The share of the machine's CPUs that *other* processes used while a block ran (Linux
    /proc/stat minus this process's own CPU time; 0.0 = nobody else ran, 1.0 = every CPU busy
    with others; None where /proc is missing). Two-thread timings mean something only when it is
    near 0: benchmarks print it beside each figure, and :func:`wait_until_quiet` waits for it.

    >>> with OtherLoad() as load:
    ...     pass
    >>> load.share is None or 0.0 <= load.share <= 1.0
    True
    """

    def __enter__(self):
        self.start = _cpu_ticks()
        return self

    def __exit__(self, *exc):
        end = _cpu_ticks()
        self.share = None
        if self.start and end:
            (busy0, own0, wall0), (busy1, own1, wall1) = self.start, end
            elapsed = max((wall1 - wall0) * os.sysconf("SC_CLK_TCK") * (os.cpu_count() or 1), 1)
            self.share = min(1.0, max(0.0, ((busy1 - busy0) - (own1 - own0)) / elapsed))


def wait_until_quiet(threshold: float = 0.05, window: float = 1.0, patience: float = 600.0) -> float | None:
    """Wait (at most ``patience`` seconds) for a ``window`` in which other processes use less than
    ``threshold`` of the CPUs; returns the last share seen (None where it cannot be measured)."""
    import time

    deadline = time.monotonic() + patience
    while True:
        with OtherLoad() as load:
            time.sleep(window)
        if load.share is None or load.share < threshold or time.monotonic() > deadline:
            return load.share


def _cpu_ticks():
    """(busy ticks of all CPUs, this process's ticks, wall seconds) or None."""
    import time

    try:
        fields = _read("/proc/stat").splitlines()[0].split()[1:]
        own = _read("/proc/self/stat").rsplit(")", 1)[1].split()
    except (IndexError, ValueError):
        return None
    if len(fields) < 5 or len(own) < 13:
        return None
    ticks = [int(v) for v in fields]
    busy = sum(ticks) - ticks[3] - ticks[4]  # all but idle and iowait
    return busy, int(own[11]) + int(own[12]), time.monotonic()  # utime + stime of every thread


def _read(path) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _sysctl(key: str) -> str:
    try:
        return subprocess.run(["sysctl", "-n", key], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
