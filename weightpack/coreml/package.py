"""Core ML model packages (.mlpackage): save weightpack tensors into one, read them back zero-copy.

- :func:`save_weights` writes a set of named weights as a model whose ops consume them;
- :func:`replace_weights` puts weightpack tensors in place of weights of an existing model;
- :func:`load` reads every weight of a package (or MLModel) as weightpack tensors, without
  decompressing: zero-copy views of the memory-mapped weight.bin;
- :func:`save_model` saves an MLModel atomically.

Exports build iOS16/iOS17 forms (``constexpr_lut_to_dense`` with uint8-packed indices,
``constexpr_sparse_to_dense`` with a packed mask, ``constexpr_affine_dequantize``) or iOS18
forms (every type); a tensor the target cannot express raises :class:`WeightpackError` naming
the minimum target (:mod:`.targets`). coremltools (the ``coreml`` extra) builds the program and
is imported on first use, never by ``import weightpack``.

>>> import os, tempfile, numpy as np, weightpack as wp
>>> tmp = tempfile.TemporaryDirectory(); path = os.path.join(tmp.name, "w.mlpackage")
>>> w = np.random.default_rng(0).standard_normal((32, 64)).astype(np.float16)
>>> save_weights(path, {"fc.weight": wp.palettize(w, nbits=4)}, target="iOS18")
{'fc.weight': 'fc_weight'}
>>> weights = load(path); weights["fc_weight"]
PalettizedTensor(shape=(32, 64), dtype=fp16, indices=uint4[32, 64], lut=fp16[1, 1, 16, 1], nbytes=1056)
>>> weights["fc_weight"] == wp.palettize(w, nbits=4), weights["fc_weight"].indices.packed.flags.writeable
(True, False)
>>> del weights; tmp.cleanup()
"""
from __future__ import annotations

import contextlib
import json
import os

import numpy as np

from ..errors import FormatError, WeightpackError, describe
from ..formats.base import FLOAT_DTYPES, dtype_name
from ..atomic import recover_folder, replace_folder
from .targets import SPEC_VERSIONS, parse_target, target_for_spec
from .values import is_weight

PACKAGE_SUFFIX = ".mlpackage"


# ------------------------------------------------------------------------------------- reading


def load(model, *, function: str = "main", mmap: bool = True) -> dict:
    """{weight name: weightpack tensor or numpy array} for every weight of ``model``, in program order.

    ``model`` is the path of an .mlpackage or a coremltools MLModel. Weight names are the names
    of the vars the model's ops consume (what ``decompress_weights`` names the decompressed
    consts). Compressed weights come back as weightpack tensors whose arrays are read-only views
    of the memory-mapped weight.bin; dense weights (``const`` ops stored in weight.bin) as numpy
    views. How each constexpr chain maps to a type: :mod:`.mil_import`.

    ``mmap=False`` reads weight.bin into memory (one copy of the file) and returns views of that
    copy: the tensors stay valid whatever happens to the file afterwards. With the default
    mapping, a program that rewrites or truncates weight.bin *in place* while the tensors are in
    use changes them under you, or kills this process with SIGBUS when it touches a page the file
    no longer has (replacing the file by a rename, as weightpack and coremltools save, is safe).
    """
    return {name: weight.value for name, weight in read_weights(model, function=function, mmap=mmap).items()}


def read_weights(model, *, function: str = "main", mmap: bool = True) -> dict:
    """{name: :class:`~weightpack.coreml.mil_import.Weight`}: each weight with its consumers and op chain."""
    from .mil_import import ProgramReader

    spec, weights_dir, source = _open(model)
    reader = ProgramReader(spec, weights_dir, function, source, mmap=mmap)
    try:
        return reader.weights()
    finally:
        reader.close()


def _open(model):
    """(model spec, weights folder, description) of a package path or an MLModel."""
    if hasattr(model, "get_spec") and hasattr(model, "weights_dir"):
        return model.get_spec(), model.weights_dir, "the MLModel"
    if not isinstance(model, (str, os.PathLike)):
        raise WeightpackError(f"model={describe(model)} must be an .mlpackage path or a coremltools MLModel")
    path = os.fspath(model)
    with contextlib.suppress(OSError):  # e.g. a read-only folder: read what is there
        recover_folder(path)  # a save killed mid-swap: finish it before reading
    if not os.path.exists(path):
        raise WeightpackError(f"{path}: no such file or directory")
    model_file, weights_dir = package_items(path)
    from coremltools.proto import Model_pb2

    with open(model_file, "rb") as file:
        data = file.read()
    spec = Model_pb2.Model()
    try:
        spec.ParseFromString(data)
    except Exception as err:  # protobuf raises its own DecodeError
        raise FormatError(f"{model_file}: not a Core ML model specification ({err})") from None
    return spec, weights_dir, path


def package_items(path: str) -> tuple[str, str]:
    """(model.mlmodel path, weights folder path) of an .mlpackage, from its Manifest.json."""
    manifest_path = os.path.join(path, "Manifest.json")
    if not os.path.isdir(path) or not os.path.isfile(manifest_path):
        raise FormatError(f"{path}: not an .mlpackage (no Manifest.json)")
    try:
        with open(manifest_path, encoding="utf-8") as file:
            manifest = json.load(file)
        entries = manifest["itemInfoEntries"]
        root = entries[manifest["rootModelIdentifier"]]["path"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise FormatError(f"{manifest_path}: not a valid package manifest ({describe(err)})") from None
    data = os.path.join(path, "Data")
    model_file = os.path.join(data, root)
    if not os.path.isfile(model_file):
        raise FormatError(f"{path}: the manifest names {root}, which is missing")
    weights = [e.get("path") for e in entries.values() if isinstance(e, dict) and e.get("name") == "weights"]
    weights_dir = os.path.join(data, weights[0]) if weights else os.path.join(os.path.dirname(model_file), "weights")
    return model_file, weights_dir


# ------------------------------------------------------------------------------------- writing


def save_weights(path, weights, target="iOS18") -> dict:
    """Write ``weights`` ({name: weightpack tensor or float numpy array}) as an .mlpackage at ``path``.

    The model has, per weight ``w`` of shape S, one input ``<name>_x`` and one output ``<name>_y``:
    ``matmul(x[1, S1], w, transpose_y=True)`` for a 2-D weight (a linear layer without bias),
    ``conv(x[1, S1, S2, S3], w)`` for a 4-D one, ``mul(x[S], w)`` otherwise; inputs and outputs
    have the weight's dtype (fp16 or fp32). Names are made valid Core ML identifiers the way
    coremltools does ('fc.weight' -> 'fc_weight'); the mapping is returned. The package appears
    atomically (written beside ``path``, then renamed); an existing package at ``path`` is
    replaced.
    """
    target = parse_target(target)
    if not isinstance(weights, dict) or not weights:
        raise WeightpackError(f"weights must be a non-empty dict of name -> tensor, got {describe(weights)}")
    import coremltools as ct

    from .weights_program import weights_program

    prog, names = weights_program(weights, target)
    model = ct.convert(
        prog,
        convert_to="mlprogram",
        minimum_deployment_target=getattr(ct.target, target),
        pass_pipeline=ct.PassPipeline.EMPTY,  # only the backend passes: the arrays stay exactly weightpack's
        skip_model_load=True,
    )
    save_model(model, path)
    return names


def replace_weights(mlmodel, weights, target=None):
    """A new MLModel: ``mlmodel`` with each weight named in ``weights`` ({name: tensor}) replaced.

    Names are those :func:`load` returns. Each replacement must have the shape and dtype of the
    weight it replaces; the ops that produced the old weight are removed when nothing else reads
    them. ``target`` (default: the model's own) may be newer than the model's, never older.
    Only coremltools' backend passes run, so the new arrays reach weight.bin unchanged.
    """
    from .program import named_vars, replace_weight, to_model, to_program

    own = target_for_spec(mlmodel.get_spec().specificationVersion)
    target = own if target is None else parse_target(target)
    if SPEC_VERSIONS[target] < SPEC_VERSIONS[own]:
        raise WeightpackError(f"target={target} is older than the model's own target {own}")
    spec_version = max(SPEC_VERSIONS[target], mlmodel.get_spec().specificationVersion)
    prog = to_program(mlmodel, spec_version)
    found = named_vars(prog)
    for name, value in weights.items():
        if name not in found:
            raise WeightpackError(f"the model has no weight named {name!r}")
        check_replacement(name, found[name], value)
    for name, value in weights.items():
        replace_weight(found[name], value, target)
    return to_model(prog, mlmodel, spec_version, pipeline="minimal")


def check_replacement(name: str, var, value) -> None:
    """``value`` must be a weightpack tensor or numpy array of ``var``'s shape and dtype."""
    from coremltools.converters.mil.mil import types

    if not is_weight(value):
        raise WeightpackError(f"weights[{name!r}] must be a weightpack tensor or a numpy array, got {describe(value)}")
    want_shape = tuple(var.shape) if var.shape is not None else None
    want_dtype = np.dtype(types.nptype_from_builtin(var.dtype))
    if tuple(value.shape) != want_shape or np.dtype(value.dtype) != want_dtype:
        raise WeightpackError(
            f"weights[{name!r}] has shape {tuple(value.shape)} and dtype {dtype_name(value.dtype)}; the weight it "
            f"replaces has shape {want_shape} and dtype {dtype_name(want_dtype)}"
        )


def float_dtype(name: str, value) -> np.dtype:
    """The natural dtype of a weight, which must be fp16 or fp32."""
    if not is_weight(value):
        raise WeightpackError(f"weights[{name!r}] must be a weightpack tensor or a numpy array, got {describe(value)}")
    dtype = np.dtype(value.dtype)
    if dtype not in FLOAT_DTYPES:
        raise WeightpackError(f"weights[{name!r}] decodes to {dtype_name(dtype)}; Core ML layers take fp16 or fp32 weights")
    if value.ndim == 0:
        raise WeightpackError(f"weights[{name!r}] is a scalar; weights have at least one dimension")
    if 0 in tuple(value.shape):
        raise WeightpackError(
            f"weights[{name!r}] has shape {tuple(value.shape)}, no elements; Core ML cannot store an empty weight"
        )
    return dtype


def save_model(mlmodel, path) -> None:
    """Save an ML program MLModel as ``path`` (an .mlpackage) atomically.

    At every instant ``path`` holds the complete previous package or the complete new one, even if
    the process is killed: the package is written complete into a private folder beside ``path``,
    fsynced, then swapped with the previous one in one step (:mod:`weightpack.atomic`); what a
    killed save left is recovered or removed by the next save or load of ``path``. ``path`` must
    end with .mlpackage; an existing ``path`` that is not a package is never overwritten. Missing
    parent folders are created, as coremltools' ``save`` does.
    """
    path = check_output(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    replace_folder(path, mlmodel.save)


def check_output(path) -> str:
    """``path`` as an absolute path where :func:`save_model` can write a package, or raise saying why
    not: it must end with .mlpackage, not be something else than a package, and its nearest existing
    parent folder must be a writable folder (missing folders below it are created on saving).
    A save a kill interrupted there is recovered first.
    """
    path = os.path.abspath(os.fspath(path))
    if not path.endswith(PACKAGE_SUFFIX):
        raise WeightpackError(f"{path}: the output path must end with {PACKAGE_SUFFIX}")
    folder = os.path.dirname(path)
    if os.path.isdir(folder):
        recover_folder(path)  # a killed save may have left the previous package aside
    if os.path.lexists(path) and not os.path.isfile(os.path.join(path, "Manifest.json")):
        raise WeightpackError(f"{path} exists and is not an .mlpackage; refusing to replace it")
    existing = folder
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise WeightpackError(f"{folder}: cannot create the output folder: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise WeightpackError(f"{existing}: no permission to write the output there")
    return path
