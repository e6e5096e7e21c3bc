"""Can an embedding table (a weight only ``gather`` reads) gain from calibration itself?

On the BERT fixture (tests/fixtures/programs/bert-iOS16-fp32) the token table's rows enter
``layer_norm(tokens[ids] + positions + types)`` and then q/k/v and the residual stream. A row
error e at a position p reaches the first linears' inputs as J_p e (J_p: the Jacobian of the
position-wise ops between the gather and those linears, measured here by central differences
through weightpack's executor: one table column moved at a time, every position at once). The
metric of row t is M_t = sum over the positions holding token t of J_p^T J_p; M = their mean.

Printed per token distribution:
- the spectrum of M (over its mean eigenvalue) and the share of the data-free table's error that
  this metric keeps, against an isotropic metric of the same trace (1.0: nothing to exploit);
- the held-out output SNR of the whole model compressed (4 or 3 bits per tensor) data-free and
  calibrated as ``compress`` does by default (the table data-free in both), then of the model
  calibrated with the table left dense, its table then encoded: dense; data-free
  (``weightpack.palettize``); ``gptq_palettize(table, M)``; a per-row column sweep in each row's
  own M_t with the data-free LUT; a LUT fitted by k-means weighted by token counts.

Token distributions: uniform over the 64 ids (the calibration benchmark's inputs,
bench_calibrate_program.py), and, as a labelled extra, Zipf (p_k ~ 1/k over a fixed permutation of
the ids): the fixtures carry no text.

Usage: python bench/bench_embedding_table.py   (prints the CPU and a table; JSON to bench/results/)
"""
from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from bench_calibrate_program import MODELS, inputs  # noqa: E402
from machine import describe, info  # noqa: E402
from program_oracle import package_path  # noqa: E402

TABLE, CONSUMER = "tokens_weight", "layers_0_q_weight"


def zipf_inputs(samples: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    shape = (samples * 2, 16)
    p = 1.0 / np.arange(1, 65)
    ids = np.random.default_rng(0).permutation(64)[rng.choice(64, size=shape, p=p / p.sum())]
    return {"input_ids": ids.astype(np.int32), "attention_mask": np.ones(shape, np.int32),
            "token_type_ids": rng.integers(0, 2, shape).astype(np.int32)}  # fmt: skip


def row_metrics(program, table, calibration):
    """(M_t per token [V, d, d], token counts) by central differences (see the module docstring)."""
    from weightpack.calibration.collect import batches, observe_batch, watched_ops

    vocab, d = table.shape
    metrics, counts = np.zeros((vocab, d, d)), np.zeros(vocab)
    step = 1e-2 * float(np.std(table))
    watched = watched_ops(program, {CONSUMER})

    def rows(values, batch):
        program.set_weight(TABLE, values)
        got = []
        observe_batch(program, batch, {CONSUMER}, watched, lambda name, r: got.append(r))
        return got[0].reshape(-1, got[0].shape[-1]).astype(np.float64)

    for batch in batches(calibration, program):
        ids = np.asarray(batch["input_ids"]).reshape(-1)
        jac = None
        for k in range(d):
            plus, minus = table.copy(), table.copy()
            plus[:, k] += step
            minus[:, k] -= step
            column = (rows(plus, batch) - rows(minus, batch)) / (2 * step)
            jac = np.empty((ids.size, column.shape[1], d)) if jac is None else jac
            jac[:, :, k] = column
        np.add.at(metrics, ids, np.einsum("pik,pil->pkl", jac, jac))
        np.add.at(counts, ids, 1)
    program.set_weight(TABLE, table)
    return metrics, counts


def per_row_sweep(table, metrics, lut):
    """Every row swept column by column with the LUT ``lut``, its error flowing in its own M_t."""
    from weightpack.calibration import hessian

    w = table.astype(np.float64)
    vocab, d = w.shape
    factors = np.empty((vocab, d, d))
    for t in range(vocab):
        gram = metrics[t] if np.trace(metrics[t]) > 0 else np.eye(d)
        factors[t] = hessian.inverse_cholesky(hessian.rescaled(gram), hessian.DEFAULT_DAMP, np.float64)[0]
    out = np.empty_like(w)
    for j in range(d):
        out[:, j] = lut[np.abs(w[:, j : j + 1] - lut[None, :]).argmin(1)]
        err = (w[:, j] - out[:, j]) / factors[:, j, j]
        w[:, j + 1 :] -= err[:, None] * factors[:, j, j + 1 :]
    return out.astype(table.dtype)


def weighted_lut(table, row_weights, lut, rounds=100):
    """Lloyd's k-means from ``lut`` with each row's values weighted by ``row_weights``."""
    x, weight = table.reshape(-1).astype(np.float64), np.repeat(row_weights, table.shape[1])
    lut = lut.astype(np.float64).copy()
    for _ in range(rounds):
        code = np.abs(x[:, None] - lut[None, :]).argmin(1)
        sums, mass = np.bincount(code, weight * x, len(lut)), np.bincount(code, weight, len(lut))
        lut = np.where(mass > 0, sums / np.where(mass > 0, mass, 1), lut)
    return lut[np.abs(x[:, None] - lut[None, :]).argmin(1)].reshape(table.shape).astype(table.dtype)


def measure(label, calibration, held_out, scratch):
    import coremltools.optimize.coreml as cto

    import weightpack as wp
    import weightpack.coreml as wpc
    from weightpack.calibration import gptq_palettize
    from weightpack.calibration.collect import as_program, batches

    source = package_path(MODELS["bert"])
    original = as_program(source)
    table = {op.weight_name: op.weight for op in original.weight_ops()}[TABLE].astype(np.float32)
    metrics, counts = row_metrics(as_program(source), table, calibration)
    mean = metrics.sum(0) / counts.sum()
    eig = np.linalg.eigvalsh(mean) / np.trace(mean) * len(mean)
    held = list(batches(held_out, original))
    reference = [original.predict(b) for b in held]
    result = {"tokens": label, "eigenvalues_over_mean": [float(eig[0]), float(eig[1]), float(eig[-1])]}

    def held_out_snr(model):
        signal = noise = 0.0
        for batch, ref in zip(held, reference):
            out = model.predict(batch)
            for name, y in ref.items():
                signal += float(np.sum(y.astype(np.float64) ** 2))
                noise += float(np.sum((y.astype(np.float64) - out[name]) ** 2))
        return 10 * np.log10(signal / noise)

    print(f"\n{label} tokens: M's eigenvalues / their mean: smallest {eig[0]:.3f}, next {eig[1]:.3f}, largest {eig[-1]:.3f}")
    for nbits in (4, 3):
        free = wp.palettize(table, nbits)
        error = (table - free.decompress()).astype(np.float64)
        kept = sum(e @ m @ e for e, m in zip(error, metrics)) / sum(np.trace(m) / len(m) * (e @ e) for e, m in zip(error, metrics))
        path = str(scratch / f"{label}-{nbits}.mlpackage")
        config = cto.OptimizationConfig(cto.OpPalettizerConfig(nbits=nbits), op_name_configs={TABLE: None})
        program = as_program(wpc.compress(source, config, calibration=calibration, output=path, target="iOS18"))

        def snr(values):
            program.set_weight(TABLE, values)
            return held_out_snr(program)

        lut = free.lut.reshape(-1).astype(np.float64)
        whole = cto.OptimizationConfig(cto.OpPalettizerConfig(nbits=nbits))
        free_path, calibrated_path = (str(scratch / f"{label}-{nbits}-{k}.mlpackage") for k in ("free", "calibrated"))
        model = {"model_data_free": held_out_snr(as_program(wpc.compress(source, whole, output=free_path, target="iOS18"))),
                 "model_calibrated": held_out_snr(as_program(wpc.compress(source, whole, calibration=calibration, output=calibrated_path,
                                                                          target="iOS18")))}  # fmt: skip
        row = {"nbits": nbits, "error_share_kept": float(kept), **model, "dense": snr(table), "data_free": snr(free),
               "gptq_mean_metric": snr(gptq_palettize(table, mean, nbits)), "per_row_sweep": snr(per_row_sweep(table, metrics, lut)),
               "count_weighted_lut": snr(weighted_lut(table, counts, lut))}  # fmt: skip
        result[f"{nbits}-bit"] = row
        print(f"  {nbits}-bit: the metric keeps {kept:.4f} of the data-free table's error; held-out SNR (dB): "
              + ", ".join(f"{k} {v:.2f}" for k, v in row.items() if k not in ("nbits", "error_share_kept")))  # fmt: skip
    return result


def main() -> None:
    logging.getLogger("coremltools").setLevel(logging.ERROR)
    os.environ.setdefault("TQDM_DISABLE", "1")
    from weightpack.cli import _silence_tqdm

    _silence_tqdm()
    meta = info()
    print(describe(meta))
    print("command: python bench/bench_embedding_table.py")
    results = {"machine": meta, "runs": []}
    with tempfile.TemporaryDirectory() as scratch:
        for label, make in (("uniform", lambda n, s: inputs("bert", n, s)), ("Zipf", zipf_inputs)):
            results["runs"].append(measure(label, make(128, 1), make(64, 2), Path(scratch)))
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "embedding_table.json").write_text(json.dumps(results, indent=2))
    print(f"\nwrote {out / 'embedding_table.json'}")


if __name__ == "__main__":
    main()
