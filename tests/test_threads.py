"""The kernels' threads (csrc/parallel.c, or OpenMP in an OpenMP build): results do not depend on
the thread count, calls from many Python threads at once are safe, and a forked child (a process
pool) runs threaded kernels after its parent did, without hanging."""
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import weightpack as wp
from weightpack.kernels import backend_c


def weights(rng):
    w = rng.standard_normal((300, 512)).astype(np.float16)
    return [wp.palettize(w, nbits=4, mode="uniform"), wp.quantize(w, "int8"), wp.prune(w, 0.5),
            wp.palettize(wp.prune(w, 0.5), nbits=3, mode="uniform")]


@pytest.fixture(autouse=True)
def restore_threads():
    yield
    backend_c.set_threads()


def test_results_do_not_depend_on_the_thread_count():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 512)).astype(np.float32)
    for weight in weights(rng):
        results = []
        for threads in (1, 2, 3, 7):
            backend_c.set_threads(threads)
            results.append((wp.matmul(weight, x), wp.matmul(weight, x, mode="fast"), weight.decompress(np.float32)))
        for other in results[1:]:
            for a, b in zip(results[0], other):
                np.testing.assert_array_equal(a, b)


def test_calls_from_many_python_threads_at_once_agree():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 512)).astype(np.float32)
    backend_c.set_threads(2)
    for weight in weights(rng):
        expected = wp.matmul(weight, x)
        with ThreadPoolExecutor(6) as pool:
            for y in pool.map(lambda _: wp.matmul(weight, x), range(60)):
                np.testing.assert_array_equal(y, expected)


@pytest.mark.parametrize("threads", [1, 2])
def test_a_forked_child_runs_threaded_kernels(threads):
    """The parent ran threaded kernels (the pool's workers exist); the child has none of them and
    must build its own, at every thread count; a hang fails the test through the timeout."""
    script = textwrap.dedent(f"""
        import os, numpy as np, weightpack as wp
        from weightpack.kernels import backend_c
        backend_c.set_threads(2)
        w = wp.quantize(np.random.default_rng(0).standard_normal((1024, 1024)).astype(np.float16), "int8")
        x = np.ones(1024, np.float32)
        expected = wp.matvec(w, x)
        w.decompress()
        pid = os.fork()
        if pid == 0:
            backend_c.set_threads({threads})
            ok = np.array_equal(wp.matvec(w, x), expected) and w.decompress().shape == (1024, 1024)
            os._exit(0 if ok else 3)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, status
        assert np.array_equal(wp.matvec(w, x), expected)  # the parent's pool still works
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
