"""compress_all: configs, executors (threads, processes), results equal the direct calls, progress, errors."""
import pickle
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import weightpack as wp
from compress_oracle import student_rows
from weightpack.compress.batch import CompressionConfig, _from_plain, _to_plain

CONFIGS = {
    "prune": CompressionConfig(prune={"sparsity": 0.5}),
    "lut": CompressionConfig(palettize={"nbits": 4, "group_size": 8}),
    "pcs": CompressionConfig(palettize={"nbits": 2, "per_channel_scale": True, "lut_dtype": "int8"}),
    "joint": CompressionConfig(prune={"n_m_ratio": (2, 4)}, palettize={"nbits": 3}),
    "q4": CompressionConfig(quantize={"dtype": "int4", "granularity": "per_block", "block_size": 16}),
    "sparse_q": CompressionConfig(prune={"sparsity": 0.75}, quantize={"dtype": "int8"}),
    "lut_int8": CompressionConfig(palettize={"nbits": 4, "cluster_dim": 2}, quantize={"dtype": "int8", "granularity": "per_tensor"}),
}


def weights():
    return {name: student_rows((32, 64), seed=i) for i, name in enumerate(CONFIGS)}


def test_thread_pool_results_equal_direct_calls():
    ws = weights()
    with ThreadPoolExecutor(2) as pool:
        out = wp.compress_all(ws, CONFIGS, executor=pool, progress=False)
    assert list(out) == list(ws)
    for name, w in ws.items():
        assert out[name] == CONFIGS[name].apply(w)


def test_default_process_pool_and_plain_transport():
    ws = weights()
    out = wp.compress_all(ws, CONFIGS, progress=False)
    for name, w in ws.items():
        assert out[name] == CONFIGS[name].apply(w), name


def test_transport_survives_pickling():
    for name, w in weights().items():
        t = CONFIGS[name].apply(w)
        assert _from_plain(pickle.loads(pickle.dumps(_to_plain(t)))) == t


def test_one_config_for_all_min_size_and_skipped_names():
    ws = {"big": student_rows((64, 64), 1), "small": np.ones(10, np.float16)}
    with ThreadPoolExecutor(2) as pool:
        out = wp.compress_all(ws, {"quantize": {"dtype": "int8"}, "min_size": 100}, executor=pool, progress=False)
        assert isinstance(out["big"], wp.QuantizedTensor) and out["small"] is ws["small"]
        out = wp.compress_all(ws, {"big": None, "small": {"prune": {"sparsity": 0.5}}}, executor=pool, progress=False)
        assert out["big"] is ws["big"] and isinstance(out["small"], wp.SparseTensor)
        out = wp.compress_all(ws, {"small": CompressionConfig(prune={})}, executor=pool, progress=False)
        assert out["big"] is ws["big"]


def test_progress_bar(capsys):
    with ThreadPoolExecutor(1) as pool:
        wp.compress_all({"a": np.ones((8, 8), np.float32)}, {"prune": {}}, executor=pool, progress=True)
        err = capsys.readouterr().err
        assert "compressing [" in err and "1/1 tensors" in err and err.endswith("\n")
        wp.compress_all({"a": np.ones((8, 8), np.float32)}, {"prune": {}}, executor=pool)
        assert capsys.readouterr().err == ""  # not a terminal


@pytest.mark.parametrize("config, message", [
    ({"prune": {"sparsity": 2.0}}, r"w: sparsity=2.0 is outside \[0, 1\]"),
    ({"palettize": {"group_size": 3}}, "w: group_size=3 does not divide"),
    ({"prunes": {}}, "config names 'prunes', which is not among the weights"),
    ({"w": {"shrink": {}}}, r"unknown config keys \['shrink'\]"),
    ({"w": 3}, r"config\['w'\]=3 must be a CompressionConfig, a dict or None"),
    (CompressionConfig.__new__(CompressionConfig), "needs at least one of"),
    ("int8", "config='int8' must be a CompressionConfig"),
])
def test_errors_name_the_tensor_or_option(config, message):
    if isinstance(config, CompressionConfig):
        with pytest.raises(wp.WeightpackError, match=message):
            CompressionConfig()
        return
    with ThreadPoolExecutor(1) as pool, pytest.raises(wp.WeightpackError, match=message):
        wp.compress_all({"w": np.ones((8, 8), np.float32)}, config, executor=pool, progress=False)


def test_config_validation():
    with pytest.raises(wp.WeightpackError, match="palettize=4 must be a dict"):
        CompressionConfig(palettize=4)
    with pytest.raises(wp.WeightpackError, match="min_size=-1 must be a non-negative integer"):
        CompressionConfig(prune={}, min_size=-1)
    with pytest.raises(wp.WeightpackError, match="weights must be a mapping"):
        wp.compress_all([np.ones(4)], {"prune": {}})
