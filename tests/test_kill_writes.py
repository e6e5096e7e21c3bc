"""Every atomic writer killed (SIGKILL) at random moments and at each of its renames: the
destination always holds the complete old or the complete new version, and the next writer or
loader leaves nothing behind. The writers run in a helper process (kill_writer.py) that forks them."""
import json
import os
import subprocess
import sys

import pytest

HELPER = os.path.join(os.path.dirname(__file__), "kill_writer.py")
TIMEOUT = 600
SINGLE_THREADED = {"OMP_NUM_THREADS": "1", "WEIGHTPACK_THREADS": "1"}  # the helper forks its writers


def kill_trials(kind: str, folder, trials: int, *extra) -> list:
    env = {**os.environ, **SINGLE_THREADED}
    done = subprocess.run([sys.executable, HELPER, kind, str(folder), "10", str(trials), *extra],
                          env=env, capture_output=True, text=True, timeout=TIMEOUT)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(rows) == trials, done.stdout
    return rows


def check(rows, *, always_present=True):
    for row in rows:
        assert row["killed"], row  # the writer died by SIGKILL, not on its own
        if always_present:
            assert row["missing_instants"] == 0, row  # at every instant polled: the whole old or new version
        assert len(row["held"]) == 1, row  # A or B, complete (packages: as the next loader sees them)
        assert row["after_next_call"] == [], row  # the next writer / loader removed every leftover
        assert row["held_after"] == ["A"] or row["held_after"] == row["held"], row


@pytest.mark.parametrize("kind", ["blob", "stats"])
def test_killed_file_writer_leaves_old_or_new(tmp_path, kind):
    rows = kill_trials(kind, tmp_path, 16)
    check(rows)
    assert any(row["leftovers"] for row in rows)  # some kills did leave a temporary file to clean


def test_killed_package_writer_leaves_old_or_new(tmp_path):
    """save_weights and save_model(replace_weights(...)) in turn; the swap is one exchange."""
    rows = kill_trials("package", tmp_path, 12)
    check(rows)
    assert any(row["leftovers"] for row in rows)


def test_killed_package_writer_without_exchange_is_recovered(tmp_path):
    """A file system without RENAME_EXCHANGE: the journal's two renames; a kill between them is
    rolled forward by the next loader."""
    rows = kill_trials("package", tmp_path, 8, "fallback")
    check(rows, always_present=False)
    assert any(row["missing_instants"] for row in rows)  # the kill between the renames was hit, and recovered


def test_killed_cli_compress_leaves_old_or_new_output(tmp_path):
    """``weightpack compress IN OUT`` killed at seeded random moments over its run: OUT holds the
    previous package or the new one, and the next command that reads it leaves nothing beside it."""
    import random
    import signal
    import time

    from coreml_models import linear_model
    from weightpack.coreml import load

    source, out = tmp_path / "in.mlpackage", tmp_path / "out.mlpackage"
    linear_model("iOS18").save(str(source))
    linear_model("iOS18", seed=1).save(str(out))  # the previous output
    old = load(out)
    command = [sys.executable, "-m", "weightpack", "compress", str(source), str(out), "--quantize", "int8"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, capture_output=True, timeout=TIMEOUT)
    duration = time.perf_counter() - start
    new = load(out)
    delays = random.Random(10)
    for _ in range(4):
        linear_model("iOS18", seed=1).save(str(out))
        writer = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delays.uniform(0.5, 1.1) * duration)
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=TIMEOUT)
        held = load(out)  # a loader: recovers what the kill left
        assert any(held.keys() == version.keys() and all(same(held[k], version[k]) for k in held) for version in (old, new))
        assert sorted(os.listdir(tmp_path)) == ["in.mlpackage", "out.mlpackage"]


def same(a, b) -> bool:
    import numpy as np

    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and np.array_equal(a, b)
    return a == b
