"""Corrupted packages: a damaged model.mlmodel or weight.bin gives a FormatError naming the op (or
the offset), or a valid read; never a raw exception. The cases issue 10 found, then a fuzzer.

The fuzzer mutates both files of two packages (iOS18 forms of every tensor type; iOS16 forms),
structurally (data types, dimensions, parameters, bindings, offsets, op types of model.mlmodel)
and byte by byte (both files). Hypothesis: derandomized in CI (the "ci" profile), about a minute.
"""
import os
import shutil

import numpy as np
import pytest
from coremltools.proto import MIL_pb2, Model_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import weightpack as wp
from weightpack import cli
from weightpack.coreml import load
from weightpack.coreml.inspection import rows

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def tensors18():
    w = np.random.default_rng(0).standard_normal((32, 64)).astype(np.float16)
    return {
        "sq": wp.quantize(wp.prune(w, 0.5), "int8"),
        "pal": wp.palettize(w, nbits=4, group_size=8),
        "q4": wp.quantize(w, "int4", mode="asymmetric", granularity="per_block", block_size=16),
        "sp": wp.palettize(wp.prune(w, 0.5), nbits=2),
        "slut": wp.palettize(w, nbits=4, lut_dtype="int8", per_channel_scale=True),
        "s": wp.prune(w, 0.75),
    }


def tensors16():
    w = np.random.default_rng(1).standard_normal((32, 64)).astype(np.float16)
    return {"pal": wp.palettize(w, nbits=4), "s": wp.prune(w, 0.75), "q": wp.quantize(w, "int8"),
            "qa": wp.quantize(w, "uint8", mode="asymmetric")}  # fmt: skip


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    from weightpack.coreml import save_weights

    folder = tmp_path_factory.mktemp("good")
    made = {}
    for target, tensors in (("iOS18", tensors18()), ("iOS16", tensors16())):
        made[target] = str(folder / f"{target}.mlpackage")
        save_weights(made[target], tensors, target=target)
    return made


def model_file(package) -> str:
    return os.path.join(package, "Data", "com.apple.CoreML", "model.mlmodel")


def weight_file(package) -> str:
    return os.path.join(package, "Data", "com.apple.CoreML", "weights", "weight.bin")


def read_spec(package):
    spec = Model_pb2.Model()
    with open(model_file(package), "rb") as file:
        spec.ParseFromString(file.read())
    return spec


def write_spec(package, spec) -> None:
    with open(model_file(package), "wb") as file:
        file.write(spec.SerializeToString())


def operations(spec):
    function = spec.mlProgram.functions["main"]
    return function.block_specializations[function.opset].operations


def find_op(spec, op_type, output=None):
    return next(op for op in operations(spec) if op.type == op_type and (output is None or op.outputs[0].name == output))


def value_of(op, param):
    """The proto Value of parameter ``param`` (an iOS16 attribute or an iOS18 input)."""
    if param in op.attributes:
        return op.attributes[param]
    return op.inputs[param].arguments[0].value


def set_dimensions(tensor_type, sizes) -> None:
    del tensor_type.dimensions[:]
    for size in sizes:
        tensor_type.dimensions.add().constant.size = size
    tensor_type.rank = len(sizes)


def assert_format_error_naming(package, op_name):
    with pytest.raises(wp.FormatError, match=f"op '{op_name}'"):
        load(package)


def assert_cli_exits_2(capsys, package):
    for command in ("inspect", "compress"):
        argv = [command, package] + ([os.path.join(os.path.dirname(package), "out.mlpackage"), "--quantize", "int8"]
                                     if command == "compress" else [])  # fmt: skip
        status = cli.main(argv)
        err = capsys.readouterr().err
        assert status == 2 and err.count("\n") == 1 and "Traceback" not in err, err


@pytest.fixture
def copy(tmp_path, packages):
    def make(target):
        return shutil.copytree(packages[target], tmp_path / f"{target}.mlpackage")

    return make


# --------------------------------------------------------------------------- the cases


def test_data_type_outside_mils_enum(copy, capsys):
    package = copy("iOS18")
    spec = read_spec(package)
    op = find_op(spec, "constexpr_lut_to_dense", "pal")
    value_of(op, "lut").type.tensorType.dataType = 6  # no MIL DataType has this number
    write_spec(package, spec)
    assert_format_error_naming(package, "pal")
    assert_cli_exits_2(capsys, str(package))


def test_affine_dequantize_without_axis(copy, capsys):
    package = copy("iOS16")
    spec = read_spec(package)
    del find_op(spec, "constexpr_affine_dequantize", "q").attributes["axis"]
    write_spec(package, spec)
    assert_format_error_naming(package, "q")
    assert_cli_exits_2(capsys, str(package))


def test_mask_output_read_as_a_weight(copy, capsys):
    """A matmul reading output 0 (the mask) of constexpr_sparse_blockwise_shift_scale."""
    package = copy("iOS18")
    spec = read_spec(package)
    find_op(spec, "matmul", "sq_y").inputs["y"].arguments[0].name = "sq_sparse_shift_scale_0"
    write_spec(package, spec)
    assert_format_error_naming(package, "sq_sparse_shift_scale")
    assert_cli_exits_2(capsys, str(package))


@pytest.mark.parametrize("output", ["q4", "slut"])
def test_shift_scale_whose_scale_rank_differs_from_the_data(copy, capsys, output):
    """Integer data (q4) and a LUT op's float output (slut): the scale's rank must be the data's."""
    package = copy("iOS18")
    spec = read_spec(package)
    dims = value_of(find_op(spec, "constexpr_blockwise_shift_scale", output), "scale").type.tensorType
    set_dimensions(dims, [int(np.prod([d.constant.size for d in dims.dimensions]))])  # same element count, rank 1
    write_spec(package, spec)
    assert_format_error_naming(package, output)
    assert_cli_exits_2(capsys, str(package))


@pytest.mark.parametrize("sizes", [[2**62 + 16, 4], [2**32, 2**32], [2**64 - 1, 1]])
def test_declared_shape_whose_element_count_overflows(copy, sizes):
    """[2**62 + 16, 4] wraps to 64 elements in int64 arithmetic: it must not match a 64-element blob."""
    package = copy("iOS18")
    spec = read_spec(package)
    set_dimensions(value_of(find_op(spec, "constexpr_sparse_to_dense", "s"), "mask").type.tensorType, sizes)
    write_spec(package, spec)
    with pytest.raises(wp.FormatError, match="more than 2\\*\\*63 - 1"):
        load(package)


# ----------------------------------------------------------------------------------- the fuzzer

MUTATIONS = ("data type", "dimension", "rank", "drop parameter", "rebind", "offset", "op type", "model bytes", "weight bytes")
SIZES = st.one_of(st.integers(0, 300), st.sampled_from([2**31, 2**32 + 1, 2**62 + 16, 2**63, 2**64 - 1]))


def tensor_types(op):
    """Every tensor type an op declares: its parameters' values and its outputs."""
    found = [op.attributes[k].type.tensorType for k in op.attributes if op.attributes[k].type.HasField("tensorType")]
    for argument in op.inputs.values():
        found += [b.value.type.tensorType for b in argument.arguments if b.WhichOneof("binding") == "value"]
    return found + [output.type.tensorType for output in op.outputs if output.type.HasField("tensorType")]


def mutate_spec(spec, kind, data) -> None:
    ops = list(operations(spec))
    op = data.draw(st.sampled_from(ops))
    if kind in ("data type", "dimension", "rank"):
        types = tensor_types(op)
        if not types:
            return
        tensor = data.draw(st.sampled_from(types))
        if kind == "data type":
            tensor.dataType = data.draw(st.integers(0, 40))
        elif kind == "dimension" and tensor.dimensions:
            tensor.dimensions[data.draw(st.integers(0, len(tensor.dimensions) - 1))].constant.size = data.draw(SIZES)
        elif kind == "rank":
            if data.draw(st.booleans()) and tensor.dimensions:
                del tensor.dimensions[-1]
            else:
                tensor.dimensions.add().constant.size = data.draw(SIZES)
            tensor.rank = data.draw(st.sampled_from([len(tensor.dimensions), tensor.rank]))
    elif kind == "drop parameter":
        params = [k for k in op.attributes if k != "name"] + list(op.inputs)
        if params:
            key = data.draw(st.sampled_from(params))
            (op.attributes if key in op.attributes else op.inputs).pop(key)
    elif kind == "rebind":
        names = [output.name for other in ops for output in other.outputs]
        bound = [a for argument in op.inputs.values() for a in argument.arguments if a.WhichOneof("binding") == "name"]
        if bound:
            data.draw(st.sampled_from(bound)).name = data.draw(st.sampled_from(names))
    elif kind == "offset":
        blobs = [v for v in [*op.attributes.values(), *(b.value for a in op.inputs.values() for b in a.arguments)]
                 if v.HasField("blobFileValue")]  # fmt: skip
        if blobs:
            data.draw(st.sampled_from(blobs)).blobFileValue.offset = data.draw(st.one_of(st.integers(0, 4096), SIZES))
    elif kind == "op type":
        op.type = data.draw(st.sampled_from([
            "constexpr_lut_to_dense", "constexpr_sparse_to_dense", "constexpr_blockwise_shift_scale",
            "constexpr_affine_dequantize", "constexpr_lut_to_sparse", "constexpr_sparse_blockwise_shift_scale",
            "constexpr_cast", "const", "constexpr_made_up"]))  # fmt: skip


def mutate_bytes(path, data) -> None:
    with open(path, "r+b") as file:
        raw = bytearray(file.read())
        for _ in range(data.draw(st.integers(1, 4))):
            if raw and data.draw(st.booleans()):
                position = data.draw(st.integers(0, len(raw) - 1))
                raw[position] = data.draw(st.integers(0, 255))
            else:
                del raw[data.draw(st.integers(0, len(raw))):]  # truncate
        file.seek(0)
        file.truncate()
        file.write(raw)


def check_read(package) -> None:
    """A FormatError, or a valid read: every weight is a tensor or an array, its row prints, it decodes."""
    try:
        weights = load(package)
        table = rows(package)
    except wp.FormatError:
        return
    assert len(table) == len(weights)
    for value in weights.values():
        assert isinstance(value, (wp.CompressedTensor, np.ndarray)), type(value)
        if isinstance(value, wp.CompressedTensor) and value.size <= 1 << 22:
            value.decompress()


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data(), target=st.sampled_from(["iOS18", "iOS16"]), kinds=st.lists(st.sampled_from(MUTATIONS), min_size=1, max_size=3))
def test_fuzzed_packages_give_format_error_or_a_valid_read(tmp_path_factory, packages, data, target, kinds):
    package = shutil.copytree(packages[target], tmp_path_factory.mktemp("fuzz") / "model.mlpackage")
    spec = read_spec(package)
    for kind in kinds:
        if kind not in ("model bytes", "weight bytes"):
            mutate_spec(spec, kind, data)
    write_spec(package, spec)
    for kind in kinds:
        if kind == "model bytes":
            mutate_bytes(model_file(package), data)
        elif kind == "weight bytes":
            mutate_bytes(weight_file(package), data)
    check_read(package)
    shutil.rmtree(package)
