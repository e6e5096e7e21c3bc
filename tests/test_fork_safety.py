"""Process pools and forks: compress_all's default pool never inherits a forked kernel runtime.

Each case runs in a fresh interpreter under a timeout, so a regression (a worker blocked forever
in a parallel kernel whose threads were lost by fork) fails the test instead of hanging CI.
"""
import os
import subprocess
import sys
import textwrap

import pytest

TIMEOUT = 300  # seconds; a healthy run takes a few
THREADED = {"OMP_NUM_THREADS": "2", "WEIGHTPACK_THREADS": "2"}  # the kernels run multi-threaded

SETUP = """
import numpy as np, weightpack as wp
from weightpack.compress.batch import CompressionConfig
w = np.random.default_rng(0).standard_normal((1024, 1024)).astype(np.float16)
config = {"prune": {"sparsity": 0.5}, "palettize": {"nbits": 4}}
serial = CompressionConfig.from_dict(config).apply
def pool_matches_serial():
    out = wp.compress_all({"a": w, "b": w}, config, progress=False)
    assert out["a"] == out["b"] == serial(w)
"""


def run_python(code: str, *, script=None, timeout=TIMEOUT) -> subprocess.CompletedProcess:
    env = {**os.environ, **THREADED}
    argv = [sys.executable, script] if script else [sys.executable, "-c", textwrap.dedent(code)]
    try:
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"hung: no exit within {timeout} s (a pool worker blocked in a kernel after fork?)")


def test_pool_after_a_threaded_kernel_ran_in_the_caller():
    """The issue's reproducer: a multi-threaded C kernel ran in this process, then the default pool."""
    done = run_python(SETUP + """
wp.prune(w, 0.5).decompress(backend="c")
pool_matches_serial()
print("ok")
""")
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_threaded_kernels_in_workers_then_in_the_caller_then_workers_again():
    """The other order: workers run multi-threaded kernels first, then the caller, then a new pool."""
    done = run_python(SETUP + """
pool_matches_serial()
wp.prune(w, 0.5).decompress(backend="c")
wp.palettize(w, nbits=4).decompress(backend="c")
pool_matches_serial()
print("ok")
""")
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_default_pool_never_forks_the_caller():
    from weightpack.compress import batch

    pool = batch.default_pool(2)
    try:
        assert pool._mp_context.get_start_method() in ("forkserver", "spawn")
    finally:
        pool.shutdown()


def test_unguarded_script_gets_a_clear_error_not_a_hang(tmp_path):
    """Fresh workers import the main script again: an unguarded script is told what to do."""
    script = tmp_path / "unguarded.py"
    script.write_text(textwrap.dedent(SETUP) + "\npool_matches_serial()\n")
    done = run_python("", script=str(script))
    assert done.returncode == 1
    assert 'put the calling code under `if __name__ == "__main__":`' in done.stderr
