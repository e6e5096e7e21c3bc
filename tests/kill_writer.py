"""Kill a weightpack writer at chosen moments and report what it left: run by test_kill_writes.py.

``python kill_writer.py KIND FOLDER SEED TRIALS [fallback]`` prepares two versions A and B of a
file or package, saves A at the destination, then per trial forks a child that writes B and A in
turn without end, lets it run for a random delay (or until its k-th rename, for the precise kill
points), and kills it with SIGKILL. Meanwhile it polls the destination: it must exist at every
instant. After each kill it records which version the destination holds, how many leftovers lie
beside it, and the same after the next writer or loader ran. One JSON line per trial on stdout.

This process runs no parallel kernel before it forks (its children would inherit a broken
thread runtime); it only reads files.
"""
import json
import os
import random
import signal
import sys
import time

import numpy as np



def blob_writer():
    from weightpack.coreml.blob import BlobWriter

    path = os.path.join(FOLDER, "weight.bin")
    arrays = {v: rng.standard_normal(1 << 20).astype(np.float32) for v in "AB"}  # 4 MB each

    def write(version):
        with BlobWriter(path) as writer:
            writer.write(arrays[version])

    def state():
        with open(path, "rb") as f:
            data = f.read()
        return data

    return path, write, state, lambda: write("A")


def stats_writer():
    from weightpack.calibration import ActivationStats

    path = os.path.join(FOLDER, "stats.npz")
    stats = {v: ActivationStats(256).update(rng.standard_normal((64, 256))) for v in "AB"}

    def state():
        return ActivationStats.load(path)._gram_sum.tobytes()

    return path, lambda v: stats[v].save(path), state, lambda: stats["A"].save(path)


def package_writer():
    import coremltools as ct

    import weightpack as wp
    from weightpack.coreml import load, replace_weights, save_model, save_weights

    path = os.path.join(FOLDER, "model.mlpackage")
    w = rng.standard_normal((64, 128)).astype(np.float16)
    w_a = wp.QuantizedTensor(np.arange(64 * 128).reshape(64, 128).astype(np.int8), np.ones((64, 1), np.float16))
    save_weights(path, {"fc": w_a}, target="iOS18")
    model_b = replace_weights(ct.models.MLModel(path, skip_model_load=True), {"fc": w})

    def write(version):
        if version == "A":
            save_weights(path, {"fc": w_a}, target="iOS18")
        else:
            save_model(model_b, path)

    def state():
        return load(path)["fc"]

    return path, write, state, lambda: load(path)


def complete(path):
    """Whether the destination exists whole (a package: its manifest, model and weights)."""
    if KIND != "package":
        return os.path.isfile(path)
    data = os.path.join(path, "Data", "com.apple.CoreML")
    return all(os.path.isfile(p) for p in (os.path.join(path, "Manifest.json"), os.path.join(data, "model.mlmodel"),
                                             os.path.join(data, "weights", "weight.bin")))  # fmt: skip


def leftovers():
    return sorted(name for name in os.listdir(FOLDER) if name.startswith("."))


def die_at_rename(k):
    """In the child: SIGKILL itself at its k-th rename (os.rename, os.replace or an exchange)."""
    from weightpack import atomic

    count = [0]

    def counted(fn):
        def wrapper(*args, **kwargs):
            count[0] += 1
            if count[0] == k:
                os.kill(os.getpid(), signal.SIGKILL)
            return fn(*args, **kwargs)

        return wrapper

    os.rename, os.replace = counted(os.rename), counted(os.replace)
    atomic.exchange = (lambda a, b: False) if FALLBACK else counted(atomic.exchange)


def main():
    path, write, state, next_call = {"blob": blob_writer, "stats": stats_writer, "package": package_writer}[KIND]()
    versions = {}
    for v in "BA":  # A last: the destination starts as A
        write(v)
        versions[v] = state()
    if FALLBACK:
        from weightpack import atomic

        atomic.exchange = lambda a, b: False
    timing = time.perf_counter()
    write("B"), write("A")
    period = (time.perf_counter() - timing) / 2  # one write
    delays = random.Random(SEED)
    for trial in range(TRIALS):
        rename_kill = trial % 2 == 0  # even trials: at the k-th rename; odd ones: after a random delay
        k = 1 + trial // 2
        delay = delays.uniform(0, 3 * period)
        pid = os.fork()
        if pid == 0:  # the writer: B, A, B, ... until killed
            try:
                if rename_kill:
                    die_at_rename(k)
                for i in range(10**9):
                    write("AB"[(i + 1) % 2])
            finally:
                os._exit(3)
        missing = 0
        end = time.perf_counter() + delay
        while not rename_kill and time.perf_counter() < end:
            missing += not complete(path)
        if not rename_kill:
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        missing += not complete(path)
        before = leftovers()
        current = state() if complete(path) or KIND == "package" else None  # a package loader recovers first
        held = [v for v, value in versions.items() if _same(value, current)]
        next_call()
        after = leftovers()
        current = state()
        final = [v for v, value in versions.items() if _same(value, current)]
        print(json.dumps({"trial": trial, "kill": f"rename {k}" if rename_kill else f"{delay:.4f} s", "killed": killed,
                          "missing_instants": missing, "held": held, "leftovers": before, "after_next_call": after,
                          "held_after": final}), flush=True)  # fmt: skip
        write("A")


def _same(a, b) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and np.array_equal(a, b)
    return bool(a == b)


if __name__ == "__main__":  # (the test collector imports this file for its doctests: no argv then)
    KIND, FOLDER, SEED, TRIALS = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    FALLBACK = "fallback" in sys.argv[5:]  # simulate a file system without an atomic exchange
    rng = np.random.default_rng(SEED)
    main()
