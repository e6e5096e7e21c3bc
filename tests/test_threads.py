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


def _openblas_pthreads():
    from threadpoolctl import threadpool_info

    np.ones((64, 64)) @ np.ones(64)
    return [i for i in threadpool_info() if i["internal_api"] == "openblas" and i["threading_layer"] == "pthreads"]


@pytest.mark.skipif(not sys.platform.startswith("linux") or (os.cpu_count() or 1) < 2 or not _openblas_pthreads(),
                    reason="needs /proc, 2 CPUs and numpy on a pthreads OpenBLAS (numpy's Linux wheels)")  # fmt: skip
def test_blas_sleep_when_idle_stops_openblas_spinning_between_calls():
    """OpenBLAS's idle workers burn CPU for ~0.1 s after each call by default and none after
    blas_sleep_when_idle() (CPU ticks of the process's other threads over 0.3 s of sleep)."""
    script = textwrap.dedent("""
        import os, time, numpy as np, threadpoolctl, weightpack as wp
        def busy_ticks():
            a = np.random.default_rng(0).standard_normal((2048, 2048)).astype(np.float32)
            x = np.ones(2048, np.float32)
            for _ in range(5):
                y = a @ x
            ticks = lambda: sum(sum(map(int, open(f"/proc/self/task/{t}/stat").read().rsplit(")", 1)[1].split()[11:13]))
                                for t in os.listdir("/proc/self/task") if int(t) != os.getpid())
            before = ticks()
            time.sleep(0.3)
            assert np.allclose(y, a.astype(np.float64) @ x, rtol=1e-4, atol=1e-3)
            return ticks() - before
        with threadpoolctl.threadpool_limits(2, user_api="blas"):
            default = busy_ticks()
            changed = wp.blas_sleep_when_idle()
            calm = min(busy_ticks() for _ in range(3))
        print(default, calm, len(changed))
    """)
    env = dict(os.environ, WEIGHTPACK_SPIN_US="0")
    env.pop("OPENBLAS_THREAD_TIMEOUT", None)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    default, calm, changed = map(int, out.stdout.split())
    assert changed >= 1 and default >= 3 and calm <= 1, (default, calm)


@pytest.mark.parametrize("bad", [3, 31, 4.0, True, "4"])
def test_blas_sleep_when_idle_refuses_bad_values(bad):
    with pytest.raises(wp.WeightpackError, match="log2_cycles"):
        wp.blas_sleep_when_idle(bad)
