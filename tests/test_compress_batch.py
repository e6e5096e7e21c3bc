"""compress_all: configs, executors (threads, processes), results equal the direct calls, progress, errors."""
import pickle
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import weightpack as wp
from compress_oracle import student_rows
from weightpack.compress.batch import CompressionConfig

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


def test_default_process_pool():
    ws = weights()
    out = wp.compress_all(ws, CONFIGS, progress=False)
    for name, w in ws.items():
        assert out[name] == CONFIGS[name].apply(w), name


@pytest.mark.parametrize("protocol", range(2, pickle.HIGHEST_PROTOCOL + 1))
def test_every_tensor_type_pickles_and_comes_back_immutable(protocol):
    for name, w in weights().items():
        t = CONFIGS[name].apply(w)
        back = pickle.loads(pickle.dumps(t, protocol=protocol))
        assert type(back) is type(t) and back == t, name
        arrays = [a.packed if isinstance(a, wp.NBitArray) else a for a in back.arrays().values() if a is not None]
        assert arrays and not any(a.flags.writeable for a in arrays), name
        with pytest.raises(AttributeError, match="immutable"):
            back.lut = None
    bits = wp.NBitArray.from_values(np.arange(7) % 8, 3)
    assert pickle.loads(pickle.dumps(bits, protocol=protocol)) == bits


def test_protocol_5_sends_arrays_out_of_band_without_copies():
    """The large arrays travel as buffers the receiver hands back; the rebuilt tensor uses them
    where they lie (no copy) and is still immutable."""
    t = wp.quantize(wp.prune(student_rows((256, 512), 3), 0.5), "int8")  # SparseQuantizedTensor
    buffers = []
    data = pickle.dumps(t, protocol=5, buffer_callback=buffers.append)
    assert len(data) < 2000 and sum(memoryview(b).nbytes for b in buffers) >= t.nbytes  # the bytes are not in the pickle
    received = [bytearray(b.raw()) for b in buffers]  # e.g. what a network receive filled
    back = pickle.loads(data, buffers=received)
    assert back == t
    for array in (back.nonzero_data.packed, back.data_mask.packed, back.scale):
        assert not array.flags.writeable
        assert any(np.shares_memory(array, np.frombuffer(r, np.uint8)) for r in received)  # no copy


def test_scaled_palettized_tensor_pickles():
    from weightpack.calibration import ScaledPalettizedTensor

    w = student_rows((16, 32), 4)
    t = wp.gptq_palettize(w, np.eye(32), nbits=2, per_row_scale=True)
    assert isinstance(t, ScaledPalettizedTensor) and pickle.loads(pickle.dumps(t, protocol=5)) == t


def test_dask_cluster_of_two_worker_processes_gives_the_serial_bytes():
    """compress_all on a dask.distributed LocalCluster (2 worker processes): byte-identical results."""
    import distributed  # the test extra installs dask[distributed]
    ws = weights()
    serial = {name: CONFIGS[name].apply(w) for name, w in ws.items()}
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:  # fmt: skip
        out = wp.compress_all(ws, CONFIGS, executor=client, progress=False)
    assert list(out) == list(ws)
    for name in ws:
        assert type(out[name]) is type(serial[name]) and pickle.dumps(out[name], 5) == pickle.dumps(serial[name], 5), name


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
