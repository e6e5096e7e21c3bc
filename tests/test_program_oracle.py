"""The ML-program runtime against torch (issue 12): every fixture, every policy.

- fp32 and fp16 programs converted from torch models (BERT encoder, LLaMA decoder with and
  without sdpa, CNN, op models): ``Program.load(package, policy).predict(inputs)`` is within the
  bounds of :mod:`program_oracle` of torch's float64 outputs;
- compressed variants (coremltools' and weightpack's compressors): every policy agrees with the
  ``load`` run of the same program after coremltools' ``decompress_weights``, within fp32
  summation bounds, and that run stays within a compression-dependent SNR of torch;
- the fixtures themselves: the manifest matches the packages, torch's float32 run meets the fp32
  bound, OPS.md is what the packages contain, compressed packages hold the constexpr ops of their
  compression, and the whole fixture tree stays small.

Regenerate the fixtures with ``python tests/fixtures/make_programs.py``.
"""
from __future__ import annotations

import re
import sys
from functools import lru_cache

import coremltools as ct
import coremltools.optimize.coreml as cto
import numpy as np
import pytest

import program_oracle as oracle
import weightpack as wp
import weightpack.coreml as wpc

sys.path.insert(0, str(oracle.FIXTURES.parent))
import make_programs  # noqa: E402  (tests/fixtures)

FIXTURE_BUDGET = 5_000_000  # bytes of packages and npz files: "a few MB"


@lru_cache(maxsize=None)
def decompressed_outputs(name: str) -> dict:
    """The ``load`` run of package ``name`` after coremltools' decompress_weights."""
    entry = oracle.manifest()[name]
    dense = cto.decompress_weights(ct.models.MLModel(oracle.package_path(name), skip_model_load=True))
    program = wpc.Program.load(dense, policy="load")
    return program.predict(oracle.program_inputs(program, oracle.reference(entry["reference"])["inputs"]))


def run(name: str, policy: str):
    entry = oracle.manifest()[name]
    program = wpc.Program.load(oracle.package_path(name), policy=policy)
    ref = oracle.reference(entry["reference"])
    assert list(program.outputs) == list(ref["outputs"]), f"{name}: outputs {program.outputs}"
    return entry, ref, program.predict(oracle.program_inputs(program, ref["inputs"]))


@pytest.mark.parametrize("policy", oracle.POLICIES)
@pytest.mark.parametrize("name", oracle.packages(compressed=False))
def test_program_matches_torch(name, policy):
    entry, ref, outputs = run(name, policy)
    for output, (f64, _, depth) in ref["outputs"].items():
        bound = oracle.torch_bound(f64, depth, entry["precision"])
        oracle.check_output(f"{name} [{policy}] {output}", outputs[output], f64, bound, oracle.output_dtype(entry, f64))


@pytest.mark.parametrize("policy", oracle.POLICIES)
@pytest.mark.parametrize("name", oracle.packages(compressed=True))
def test_compressed_program_matches_its_decompressed_form(name, policy):
    entry, ref, outputs = run(name, policy)
    expected = decompressed_outputs(name)
    for output, (f64, _, depth) in ref["outputs"].items():
        dtype = oracle.output_dtype(entry, f64)
        dense = np.asarray(expected[output])
        assert dense.dtype == np.dtype(dtype), f"{name} decompressed: {output} dtype {dense.dtype}"
        bound = oracle.summation_bound(dense, depth, float16_output=np.dtype(dtype) == np.float16)
        oracle.check_output(f"{name} [{policy}] {output}", outputs[output], dense, bound, dtype)


# Lossy compression has no error bound; a floor on the SNR of the decompressed program's outputs
# against torch's float64 ones catches a broken fixture (or decoding both runs share). Measured
# minima on these random-weight models: int8 42 dB, 4-bit LUT / int4 17 dB, 50% sparse 6 dB.
SNR_FLOOR_DB = {"int8_channel": 30, "int4_block32": 12, "lut4_tensor": 12, "lut4_group16": 12,
                "sparse50": 3, "sparse50_lut4": 3, "sparse50_int8": 3}


@pytest.mark.parametrize("name", oracle.packages(compressed=True))
def test_decompressed_program_stays_near_torch(name):
    entry = oracle.manifest()[name]
    for output, (f64, _, _) in oracle.reference(entry["reference"])["outputs"].items():
        snr = wp.snr_db(f64, decompressed_outputs(name)[output])
        assert snr >= SNR_FLOOR_DB[entry["compression"]], f"{name} {output}: {snr:.1f} dB"


# --------------------------------------------------------------------------- the fixtures


def test_manifest_lists_every_package():
    on_disk = {p.name[: -len(".mlpackage")] for p in oracle.FIXTURES.glob("*.mlpackage")}
    assert on_disk == set(oracle.manifest())
    for name, entry in oracle.manifest().items():
        assert name.startswith(f"{entry['model']}-{entry['target']}-{entry['precision']}")
        assert (oracle.FIXTURES / entry["reference"]).exists()
        if "compression" in entry:
            assert entry["base"] in oracle.manifest() and entry["tool"] in make_programs.COMPRESSORS
            assert name == f"{entry['base']}-{entry['tool']}-{entry['compression']}"


def test_every_family_has_fp32_fp16_ios16_ios18_programs_and_compressed_variants():
    entries = oracle.manifest().values()
    for model in ("bert", "llama", "llama_sdpa", "cnn", "tensor_ops", "logic_ops", "reduce_ops", "dynamic_ops"):
        mine = [e for e in entries if e["model"] == model and "compression" not in e]
        assert {e["precision"] for e in mine} == {"fp32", "fp16"}, model
        assert {e["target"] for e in mine} == ({"iOS18"} if model == "llama_sdpa" else {"iOS16", "iOS18"}), model
    compressed = [e for e in entries if "compression" in e]
    for compression in make_programs.COMPRESSIONS:
        assert {e["tool"] for e in compressed if e["compression"] == compression} == {"ct", "wp"}, compression
    for model in ("bert", "llama", "cnn"):
        assert {e["compression"] for e in compressed if e["model"] == model} >= {"lut4_tensor", "int4_block32", "lut4_group16", "sparse50_lut4"}


@pytest.mark.parametrize("npz", sorted({e["reference"] for e in oracle.manifest().values()}))
def test_torch_float32_meets_the_fp32_bound(npz):
    """The bound holds for torch's own float32 run of each model (the references are coherent)."""
    for output, (f64, f32, depth) in oracle.reference(npz)["outputs"].items():
        assert f64.dtype in (np.float64, np.int32), output
        oracle.check_output(f"torch float32 {npz} {output}", f32, f64, oracle.torch_bound(f64, depth, "fp32"), f64.dtype)


def test_the_bound_can_fail():
    """One unit of the float32 bound added to the worst output of the BERT fails the check."""
    f64, _, depth = oracle.reference("bert.npz")["outputs"]["pooled"]
    bound = oracle.torch_bound(f64, depth, "fp32")
    wrong = f64.astype(np.float32)
    wrong.reshape(-1)[3] += 2 * bound
    with pytest.raises(AssertionError, match="max error"):
        oracle.check_output("pooled", wrong, f64, bound, np.float32)


def test_ops_md_is_what_the_packages_contain():
    text = (oracle.FIXTURES / "OPS.md").read_text()
    listed = dict(re.findall(r"^- `([^`]+)`: (.*)$", text, flags=re.M))
    assert set(listed) == set(oracle.manifest())
    for name in oracle.manifest():
        assert listed[name].split(", ") == sorted(make_programs.mil_ops(oracle.package_path(name))), name


EXPECTED_CONSTEXPR = {  # compression -> (op types at iOS16, op types at iOS18)
    "int8_channel": ({"constexpr_affine_dequantize"}, {"constexpr_blockwise_shift_scale"}),
    "lut4_tensor": ({"constexpr_lut_to_dense"}, {"constexpr_lut_to_dense"}),
    "sparse50": ({"constexpr_sparse_to_dense"}, {"constexpr_sparse_to_dense"}),
    "int4_block32": (None, {"constexpr_blockwise_shift_scale"}),
    "lut4_group16": (None, {"constexpr_lut_to_dense"}),
    "sparse50_lut4": (None, {"constexpr_lut_to_sparse", "constexpr_sparse_to_dense"}),
    "sparse50_int8": (None, {"constexpr_sparse_blockwise_shift_scale", "constexpr_sparse_to_dense"}),
}


@pytest.mark.parametrize("name", oracle.packages(compressed=True))
def test_compressed_fixture_holds_its_compression(name):
    entry = oracle.manifest()[name]
    expected = EXPECTED_CONSTEXPR[entry["compression"]][entry["target"] == "iOS18"]
    found = {op for op in make_programs.mil_ops(oracle.package_path(name)) if op.startswith("constexpr_")}
    assert found == expected, name


def test_fixtures_stay_small():
    files = [f for f in oracle.FIXTURES.rglob("*") if f.is_file() and f.suffix != ".md" and f.name != "manifest.json"]
    assert sum(f.stat().st_size for f in files) <= FIXTURE_BUDGET
