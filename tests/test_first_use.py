"""First use is as fast as the next: the encoders' loops are C compiled at install, so a fresh
process with an empty numba cache compresses without compiling anything (numba is not even
imported). Times are printed (``pytest -s``), never asserted."""
import os
import subprocess
import sys

FIRST_USE = """
import sys, time
import numpy as np
import weightpack as wp

rng = np.random.default_rng(0)
w16 = rng.standard_normal((256, 256)).astype(np.float16)
big = rng.standard_normal((512, 512)).astype(np.float32)
h = np.cov(rng.standard_normal((512, 64)), rowvar=False)
calls = [
    ("palettize 256x256 fp16, the first call", lambda: wp.palettize(w16, nbits=4)),
    ("palettize 512x512 fp32", lambda: wp.palettize(big, nbits=4)),
    ("palettize grouped, importance", lambda: wp.palettize(w16, nbits=3, group_size=16, importance=np.abs(w16) + 1)),
    ("palettize vectors", lambda: wp.palettize(w16, nbits=4, cluster_dim=2)),
    ("palettize_rd_curve", lambda: wp.palettize_rd_curve(big, max_nbits=4)),
    ("prune 512x512", lambda: wp.prune(big, 0.5)),
    ("prune per channel", lambda: wp.prune(big, 0.5, granularity="per_channel")),
    ("prune n:m", lambda: wp.prune(big, n_m_ratio=(2, 4))),
    ("quantize int4 with search", lambda: wp.quantize(big, "int4", granularity="per_block", block_size=32,
                                                      clip_search=True, refit=True)),
    ("compress_all", lambda: wp.compress_all({"a": w16, "b": big}, {"prune": {"sparsity": 0.5},
                                                                    "palettize": {"nbits": 4}}, progress=False)),
    ("gptq_palettize", lambda: wp.calibration.gptq_palettize(big[:, :64], h, nbits=4)),
]
for name, call in calls:
    start = time.perf_counter()
    call()
    print(f"{time.perf_counter() - start:8.3f} s  {name}")
assert "numba" not in sys.modules, "an encoder imported numba (it would compile on first use)"
"""


def test_every_encoder_runs_first_time_without_compiling(tmp_path):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba-cache"))  # as in a fresh environment
    done = subprocess.run([sys.executable, "-c", FIRST_USE], env=env, capture_output=True, text=True, timeout=600)
    print(done.stdout)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count(" s  ") == FIRST_USE.count('", lambda')
