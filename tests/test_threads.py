"""The kernels' threads (csrc/parallel.c, or OpenMP in an OpenMP build): results do not depend on
the thread count, calls from many Python threads at once are safe, and a forked child (a process
pool) runs threaded kernels after its parent did, without hanging."""
import os
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


def test_threads_context_sets_and_restores_both_counts():
    from threadpoolctl import threadpool_info

    def blas_threads():
        return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]

    backend_c.set_threads(3)
    blas_before = blas_threads()
    assert blas_before, "numpy's BLAS is not visible to threadpoolctl"
    with wp.threads(1, blas=1):
        assert backend_c.threads() == 1
        assert blas_threads() == [1] * len(blas_before)
    assert backend_c.threads() == 3 and blas_threads() == blas_before
    with pytest.raises(ZeroDivisionError), wp.threads(2):
        assert backend_c.threads() == 2
        1 / 0
    assert backend_c.threads() == 3


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_threads_context_refuses_bad_counts(bad):
    backend_c.set_threads(2)
    with pytest.raises(wp.WeightpackError, match="positive integer"):
        with wp.threads(bad):
            pass
    with pytest.raises(wp.WeightpackError, match="blas="):
        with wp.threads(1, blas=bad):
            pass
    assert backend_c.threads() == 2


def test_spin_setting_from_the_environment_keeps_results():
    """WEIGHTPACK_SPIN_US (how long idle workers stay awake) changes timing only: 0 (sleep at
    once) and a long spin give the same products as the default."""
    code = textwrap.dedent("""
        import numpy as np, weightpack as wp
        from weightpack.kernels import backend_c
        backend_c.set_threads(2)
        w = wp.palettize(np.random.default_rng(0).standard_normal((512, 512)).astype(np.float16), nbits=4)
        x = np.random.default_rng(1).standard_normal(512).astype(np.float32)
        ys = [wp.matvec(w, x) for _ in range(50)]
        assert all(np.array_equal(ys[0], y) for y in ys)
        print(ys[0].tobytes().hex()[:64])
    """)
    def run(spin):
        return subprocess.run([sys.executable, "-c", code], env={**os.environ, "WEIGHTPACK_SPIN_US": spin},
                              capture_output=True, text=True, timeout=120)

    outputs = set()
    for spin in ("0", "2000", ""):
        done = run(spin)
        assert done.returncode == 0, done.stderr
        outputs.add(done.stdout)
    assert len(outputs) == 1
    refused = run("fifty")
    assert refused.returncode != 0 and "WEIGHTPACK_SPIN_US='fifty'" in refused.stderr
