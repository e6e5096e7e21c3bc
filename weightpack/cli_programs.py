"""``weightpack run`` and ``weightpack diff``: Core ML programs run on Linux from the command line.

Inputs come from an .npz file holding one array per input of the program (names as the program
declares them, see ``Program.inputs``). Every problem with them (not an .npz, a missing or
unknown input, a wrong shape or dtype) is a :class:`~weightpack.errors.WeightpackError`, which
the command line prints as one line before exiting with status 2.
"""
from __future__ import annotations

import json
import os
import zipfile

import numpy as np

from . import atomic
from .errors import WeightpackError


def load_inputs(path: str) -> dict:
    """{name: array} of an .npz file (no pickled objects)."""
    if not os.path.isfile(path):
        raise WeightpackError(f"{path}: no such file")
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise WeightpackError(f"{path}: an .npy array, not an .npz archive of named arrays (np.savez writes one)")
        with archive:
            return {name: archive[name] for name in archive.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        if isinstance(err, WeightpackError):
            raise
        raise WeightpackError(f"{path}: not an .npz archive of named arrays (np.savez writes one)") from None


def _program(model: str, policy: str, function: str = "main"):
    from .cli import _existing, _quiet_coremltools

    _quiet_coremltools()
    from .coreml import Program

    return Program.load(_existing(model), policy=policy, function=function)


def _predict(program, inputs: dict, source: str) -> dict:
    try:
        return program.predict(inputs)
    except WeightpackError as err:
        raise WeightpackError(f"{source}: {err}") from None


def run(args) -> None:
    program = _program(args.model, args.policy, args.function)
    inputs = load_inputs(args.inputs)
    outputs = _predict(program, inputs, args.inputs)
    if args.out:
        save_npz(args.out, outputs)
    report = program.report
    print(f"{args.model}: policy {args.policy}, latency {report.latency_seconds * 1e3:.2f} ms, load {report.load_seconds:.2f} s, "
          f"resident weights {report.resident_weight_bytes / 1e6:.2f} MB")  # fmt: skip
    print(f"{'output':<32} {'shape':<20} {'dtype':<8} {'min':>12} {'max':>12} {'mean':>12}")
    for name, value in outputs.items():
        stats = [float(np.min(value)), float(np.max(value)), float(np.mean(value))] if value.size else [float("nan")] * 3
        print(f"{name:<32} {str(value.shape):<20} {str(value.dtype):<8} " + " ".join(f"{v:>12.5g}" for v in stats))
    if args.out:
        print(f"wrote {args.out}")


def save_npz(path: str, arrays: dict) -> None:
    """``np.savez`` written atomically (:func:`weightpack.atomic.save_npz`); a missing folder is
    named, not created."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise WeightpackError(f"{folder}: no such directory")
    atomic.save_npz(path, arrays)


def compare(reference: np.ndarray, candidate: np.ndarray) -> dict:
    """SNR (dB; None when identical), cosine similarity, max abs error and, for outputs whose last
    axis holds several scores (logits, embeddings), the share of positions with the same top-1."""
    from .metrics import snr_db

    ref, cand = np.asarray(reference, np.float64), np.asarray(candidate, np.float64)
    snr = snr_db(ref, cand) if ref.size else float("inf")
    norms = float(np.linalg.norm(ref)) * float(np.linalg.norm(cand))
    top1 = None
    if ref.ndim >= 1 and ref.shape[-1] > 1 and np.asarray(reference).dtype.kind == "f":
        top1 = float(np.mean(np.argmax(ref, axis=-1) == np.argmax(cand, axis=-1)))
    return {
        "snr_db": None if np.isinf(snr) and snr > 0 else snr,
        "cosine": float(np.sum(ref * cand) / norms) if norms > 0 else None,
        "max_abs_error": float(np.max(np.abs(ref - cand))) if ref.size else 0.0,
        "top1_agreement": top1,
    }


def diff(args) -> None:
    inputs = load_inputs(args.inputs)
    results = {}
    for role, path in (("reference", args.reference), ("candidate", args.candidate)):
        results[role] = _predict(_program(path, args.policy), inputs, path)
    rows = []
    for name, ref in results["reference"].items():
        if name not in results["candidate"]:
            raise WeightpackError(f"{args.candidate} has no output {name!r}; its outputs: {', '.join(results['candidate'])}")
        cand = results["candidate"][name]
        if cand.shape != ref.shape:
            raise WeightpackError(f"output {name!r} has shape {ref.shape} in {args.reference} and {cand.shape} in {args.candidate}")
        rows.append({"output": name, "shape": list(ref.shape), **compare(ref, cand)})
    if args.json:
        print(json.dumps({"reference": args.reference, "candidate": args.candidate, "policy": args.policy, "outputs": rows}, indent=2))
        return
    print(f"{'output':<32} {'shape':<18} {'SNR dB':>8} {'cosine':>10} {'max abs err':>12} {'top-1':>7}")
    for r in rows:
        snr = "inf" if r["snr_db"] is None else f"{r['snr_db']:.2f}"
        cosine = "-" if r["cosine"] is None else f"{r['cosine']:.6f}"
        top1 = "-" if r["top1_agreement"] is None else f"{r['top1_agreement']:.1%}"
        print(f"{r['output']:<32} {str(tuple(r['shape'])):<18} {snr:>8} {cosine:>10} {r['max_abs_error']:>12.4g} {top1:>7}")
