"""The kernel threads a program runs with (weightpack/coreml/runtime/threads.py): chosen at load by
timing the whole program, or given; set for predict only; results independent of the count."""
from __future__ import annotations

import numpy as np
import pytest

import weightpack as wp
from weightpack._c import lib
from weightpack.coreml.runtime import Program
from weightpack.coreml.runtime.threads import cpu_count, probe_inputs
from weightpack.errors import WeightpackError
from weightpack.runtime import Linear, Model

from program_builders import op_graph


def graph(seed=0):
    """One linear op with a palettized weight, on an input of declared shape (2, 256)."""
    w = wp.palettize(np.random.default_rng(seed).standard_normal((256, 256)).astype(np.float32), nbits=4)
    return op_graph("linear", {"x": np.zeros((2, 256), np.float32)}, weights={"weight": w}, outputs=[np.zeros((2, 256), np.float32)])


def test_jit_program_measures_one_thread_and_every_cpu_and_keeps_the_fastest():
    prog = Program(graph(), "jit")
    report = prog.report
    if cpu_count() == 1:
        assert report.thread_seconds == {}
        return
    assert sorted(report.thread_seconds) == [1, cpu_count()]
    assert report.threads == min(report.thread_seconds, key=report.thread_seconds.get)
    assert all(seconds > 0 for seconds in report.thread_seconds.values())
    assert report.latency_seconds == 0 and report.op_seconds == {}  # the timing runs are not "the last call"


def test_a_program_whose_inputs_cannot_be_guessed_keeps_the_process_count():
    layers = [Linear(wp.palettize(np.ones((8, 8), np.float32), nbits=1))]  # the layer model's x has no declared rank
    prog = Model(layers, policy="jit").program
    assert prog.report.thread_seconds == {} and prog.report.threads == lib.wp_threads()


def test_load_policy_and_given_threads_measure_nothing():
    assert Program(graph(), "load").report.thread_seconds == {}
    prog = Program(graph(), "jit", threads=1)
    assert prog.report.thread_seconds == {} and prog.report.threads == 1


def test_predict_runs_at_the_programs_count_and_restores_the_process_count():
    before = lib.wp_threads()
    other = 1 if before > 1 else 2
    prog = Program(graph(), "jit", threads=other)
    seen = []
    prog.predict({"x": np.ones((2, 256), np.float32)}, observe=lambda op, arrays: seen.append(lib.wp_threads()))
    assert seen and set(seen) == {other}
    assert lib.wp_threads() == before


@pytest.mark.parametrize("threads", [0, -1, 1.5, True, "2"])
def test_bad_thread_counts_are_refused(threads):
    with pytest.raises(WeightpackError, match="threads"):
        Program(graph(), "jit", threads=threads)


def test_results_are_the_same_bits_at_every_count():
    x = np.random.default_rng(1).standard_normal((2, 256)).astype(np.float32)
    outs = [Program(graph(), "jit", threads=n).predict({"x": x})["out0"] for n in (1, 2, 3)]
    assert all(out.tobytes() == outs[0].tobytes() for out in outs)


def test_probe_inputs_are_zeros_of_the_declared_shapes_smallest_where_open():
    g = graph()
    prog = Program(g, "jit", threads=1)
    feeds = probe_inputs(prog)
    assert list(feeds) == ["x"] and feeds["x"].dtype == np.float32 and not feeds["x"].any()
    assert feeds["x"].shape == (2, 256)
