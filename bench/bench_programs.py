"""Running converted Core ML programs: weightpack's executor against torch eager, in one run.

Two models, defined here in torch with random weights and converted by coremltools
(``ct.convert``, mlprogram, iOS18, fp16 precision); packages are cached in
``~/.cache/weightpack-bench`` (``--cache``):

- a LLaMA-style decoder (hidden 2048, MLP 5632, 8 layers, 32 heads / 4 KV heads, vocabulary
  32000: TinyLlama's shape), its weights palettized to 4-bit LUTs per 16 output channels by
  ``weightpack.coreml.palettize_weights``; per-token latency of a one-token input at batch 1
  under the ``jit`` and ``load`` policies and torch fp32 eager on the same (decompressed)
  weights and threads; resident weight bytes; interpretation overhead (latency minus the time
  inside compiled kernels: BLAS, fused products, decompression, weightpack's C kernels of the
  fused chains and of small attention), and the stricter share outside the weight products and
  BLAS alone (every fused chain counted as overhead);
- the thread count weightpack's kernels run with (chosen at load by timing the whole program at
  1 thread and at every CPU, see ``weightpack.coreml.runtime.threads``) and the fused chains;
- a BERT encoder at MiniLM size (6 layers, hidden 384, 12 heads, MLP 1536, sequence 128),
  uncompressed: latency against torch fp32 eager.

Calls of every contender alternate, round after round; figures are medians. The jit program is
then also timed alone, call after call (the overhead without the other contenders' BLAS / OpenMP
threads spinning on the cores between its calls). Prints the CPU and a table, writes JSON
(``--json``).

    python bench/bench_programs.py                       # full sizes (~10 min the first time: conversion)
    python bench/bench_programs.py --layers 2 --vocab 4000 --rounds 5   # quicker
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "asimd", "asimddp")


def cpu_description() -> dict:
    """The CPU model and the SIMD flags that matter to the kernels (Linux /proc/cpuinfo)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model") and model in ("", platform.machine(), platform.processor()):
                model = value.strip()
            elif key.strip() in ("flags", "Features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return {"model": model, "flags": [f for f in FLAGS if f in flags], "cpus": len(os.sched_getaffinity(0))}


# ------------------------------------------------------------------------------------ models


def llama_module(layers, hidden, mlp, heads, kv_heads, vocab, seed):
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    torch.manual_seed(seed)

    class RMSNorm(nn.Module):
        def __init__(self, n):
            super().__init__()
            self.weight = nn.Parameter(1 + 0.1 * torch.randn(n))

        def forward(self, x):
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * self.weight

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            d = hidden // heads
            self.input_norm, self.post_norm = RMSNorm(hidden), RMSNorm(hidden)
            self.q, self.o = nn.Linear(hidden, hidden, bias=False), nn.Linear(hidden, hidden, bias=False)
            self.k, self.v = nn.Linear(hidden, kv_heads * d, bias=False), nn.Linear(hidden, kv_heads * d, bias=False)
            self.gate, self.up = nn.Linear(hidden, mlp, bias=False), nn.Linear(hidden, mlp, bias=False)
            self.down = nn.Linear(mlp, hidden, bias=False)

        def forward(self, x, cos, sin, mask):
            b, t, d = 1, 1, hidden // heads  # static sizes: coremltools cannot trace torch's int() of a size
            h = self.input_norm(x)
            q = self.q(h).view(b, t, heads, d).transpose(1, 2)
            k = self.k(h).view(b, t, kv_heads, d).transpose(1, 2)
            v = self.v(h).view(b, t, kv_heads, d).transpose(1, 2)
            q, k = q * cos + rotate(q) * sin, k * cos + rotate(k) * sin
            k, v = k.repeat_interleave(heads // kv_heads, 1), v.repeat_interleave(heads // kv_heads, 1)
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            x = x + self.o(a.transpose(1, 2).reshape(b, t, hidden))
            h = self.post_norm(x)
            return x + self.down(F.silu(self.gate(h)) * self.up(h))

    def rotate(x):
        half = hidden // heads // 2
        return torch.cat([-x[..., half:], x[..., :half]], -1)

    class Llama(nn.Module):
        def __init__(self):
            super().__init__()
            d = hidden // heads
            self.embed = nn.Embedding(vocab, hidden)
            self.layers = nn.ModuleList(Block() for _ in range(layers))
            self.norm = RMSNorm(hidden)
            self.lm_head = nn.Linear(hidden, vocab, bias=False)
            inv = 1.0 / (10000 ** (torch.arange(0, d, 2).float() / d))
            angles = torch.outer(torch.arange(2048).float(), inv)
            self.register_buffer("cos", torch.cat([angles, angles], -1).cos())
            self.register_buffer("sin", torch.cat([angles, angles], -1).sin())

        def forward(self, ids):
            t = 1  # one-token input (the traced shape)
            x = self.embed(ids)
            cos, sin = self.cos[:t], self.sin[:t]
            mask = torch.triu(torch.full((t, t), float("-inf")), 1)
            for layer in self.layers:
                x = layer(x, cos, sin, mask)
            return self.lm_head(self.norm(x))

    with torch.no_grad():
        model = Llama().eval()
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.02)
    return model


def bert_module(layers, hidden, heads, mlp, vocab, seq, seed):
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    torch.manual_seed(seed)

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(3))
            self.out, self.norm1 = nn.Linear(hidden, hidden), nn.LayerNorm(hidden, eps=1e-12)
            self.fc1, self.fc2, self.norm2 = nn.Linear(hidden, mlp), nn.Linear(mlp, hidden), nn.LayerNorm(hidden, eps=1e-12)

        def forward(self, x, bias):
            d = hidden // heads
            q, k, v = (lin(x).view(1, seq, heads, d).transpose(1, 2) for lin in self.qkv)
            a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d) + bias, -1) @ v
            x = self.norm1(x + self.out(a.transpose(1, 2).reshape(1, seq, hidden)))
            return self.norm2(x + self.fc2(F.gelu(self.fc1(x))))

    class Bert(nn.Module):
        def __init__(self):
            super().__init__()
            self.words, self.positions, self.types = nn.Embedding(vocab, hidden), nn.Embedding(512, hidden), nn.Embedding(2, hidden)
            self.norm = nn.LayerNorm(hidden, eps=1e-12)
            self.layers = nn.ModuleList(Layer() for _ in range(layers))

        def forward(self, ids, mask):
            positions = torch.arange(seq).unsqueeze(0)
            x = self.norm(self.words(ids) + self.positions(positions) + self.types(torch.zeros_like(ids)))
            bias = (1.0 - mask[:, None, None, :].float()) * -10000.0
            for layer in self.layers:
                x = layer(x, bias)
            return x

    with torch.no_grad():
        model = Bert().eval()
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.05)
    return model


def convert(model, example: dict, path: Path):
    """Trace and convert ``model`` (fp16 iOS18 ML program), saved at ``path`` (cached)."""
    import coremltools as ct
    import torch

    import weightpack as wp

    if path.exists():
        return ct.models.MLModel(str(path), skip_model_load=True)
    traced = torch.jit.trace(model, tuple(torch.from_numpy(v) for v in example.values()))
    inputs = [ct.TensorType(name=name, shape=v.shape, dtype=v.dtype) for name, v in example.items()]
    mlmodel = ct.convert(traced, inputs=inputs, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS18,
                         compute_precision=ct.precision.FLOAT16, skip_model_load=True)  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    wp.coreml.save_model(mlmodel, str(path))
    return mlmodel


def palettized(mlmodel, path: Path):
    """4-bit LUTs per 16 output channels by weightpack's drop-in palettizer (cached)."""
    import coremltools as ct
    import coremltools.optimize.coreml as cto

    import weightpack as wp

    if path.exists():
        return ct.models.MLModel(str(path), skip_model_load=True)
    config = cto.OptimizationConfig(global_config=cto.OpPalettizerConfig(nbits=4, granularity="per_grouped_channel", group_size=16))
    compressed = wp.coreml.palettize_weights(mlmodel, config)
    wp.coreml.save_model(compressed, str(path))
    return compressed


def load_weights_into(torch_model, program) -> int:
    """Set ``torch_model``'s parameters to the program's weights, decompressed (names matched as
    coremltools derives them: 'layers.0.q.weight' -> 'layers_0_q_weight...'); returns how many."""
    import torch

    from weightpack.coreml.values import dense

    keys = {k.replace(".", "_"): k for k in torch_model.state_dict()}
    state, assigned = torch_model.state_dict(), 0
    for op in program.weight_ops():
        match = max((k for k in keys if op.weight_name.startswith(k)), key=len, default=None)
        if match is None:
            continue
        target = state[keys[match]]
        value = np.asarray(dense(op.weight), np.float32)
        if tuple(value.shape) == tuple(target.shape):
            target.copy_(torch.from_numpy(value))
            assigned += 1
    return assigned


# ------------------------------------------------------------------------------------ timing


def alternate(contenders: dict, rounds: int) -> dict:
    """{name: [seconds per call]}: one call of each contender per round, in turn."""
    for fn in contenders.values():
        fn()  # warm-up
    times = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def bench_llama(args, cache: Path) -> dict:
    import torch

    import weightpack.coreml as wpc

    shape = dict(layers=args.layers, hidden=args.hidden, mlp=args.mlp, heads=args.heads, kv_heads=args.kv_heads, vocab=args.vocab)
    tag = "llama-" + "-".join(f"{k}{v}" for k, v in shape.items())
    model = llama_module(**shape, seed=0)
    ids = np.array([[7]], np.int32)
    t0 = time.perf_counter()
    fp16 = convert(model, {"ids": ids}, cache / f"{tag}.mlpackage")
    compressed = palettized(fp16, cache / f"{tag}-lut4g16.mlpackage")
    prepare = time.perf_counter() - t0
    programs = {policy: wpc.Program.load(compressed, policy=policy) for policy in ("jit", "load")}
    assigned = load_weights_into(model, programs["jit"])
    inputs = {"ids": ids}
    torch_ids = torch.from_numpy(ids.astype(np.int64))
    with torch.no_grad():
        reference = model(torch_ids).numpy()
    outputs = {p: prog.predict(inputs)[prog.outputs[0]] for p, prog in programs.items()}
    kernel_share = {p: [] for p in programs}  # inside compiled kernels: products, BLAS, weightpack's C chains
    product_share = {p: [] for p in programs}  # inside the weight products and BLAS only
    dispatch_share = {p: [] for p in programs}  # latency outside every op: input checks, the loop
    op_type_ms = {}

    def run(policy):
        prog = programs[policy]

        def call():
            prog.predict(inputs)
            r = prog.report
            kernel_share[policy].append((r.kernel_seconds + r.elementwise_seconds) / r.latency_seconds)
            product_share[policy].append(r.kernel_seconds / r.latency_seconds)
            dispatch_share[policy].append(1 - sum(prog.report.op_seconds.values()) / prog.report.latency_seconds)
            if policy == "jit":  # a fused chain's time is on its last op: counted under the chain's kind
                chains = {ops[-1]: f"{kind} (fused)" for kind, ops in prog.report.fused_chains}
                for (op_type, name), seconds in prog.report.op_seconds.items():
                    op_type_ms.setdefault(chains.get(name, op_type), []).append(seconds * 1e3)

        return call

    def torch_call():
        with torch.no_grad():
            model(torch_ids)

    times = alternate({"jit": run("jit"), "load": run("load"), "torch": torch_call}, args.rounds)
    med = {name: statistics.median(t) for name, t in times.items()}
    alone = []  # the jit program called back to back, as an app decoding tokens calls it
    for _ in range(args.rounds):
        programs["jit"].predict(inputs)
        report = programs["jit"].report
        alone.append((report.latency_seconds, report.kernel_seconds + report.elementwise_seconds, report.kernel_seconds))
    calls = len(times["jit"]) + 1
    by_type = {op_type: sum(ms) / calls for op_type, ms in op_type_ms.items()}  # mean ms per call
    result = {
        "model": tag, "prepare_seconds": prepare, "torch_params_assigned": assigned,
        "latency_ms": {k: v * 1e3 for k, v in med.items()},
        "jit_vs_load": med["jit"] / med["load"], "jit_vs_torch": med["jit"] / med["torch"],
        "load_seconds": {p: programs[p].report.load_seconds for p in programs},
        "resident_bytes": {p: programs[p].report.resident_weight_bytes for p in programs},
        "resident_jit_vs_load": programs["jit"].report.resident_weight_bytes / programs["load"].report.resident_weight_bytes,
        "overhead_share": {p: 1 - statistics.median(s) for p, s in kernel_share.items()},
        "outside_products_share": {p: 1 - statistics.median(s) for p, s in product_share.items()},
        "jit_alone": {"latency_ms": statistics.median(lat for lat, _, _ in alone) * 1e3,
                      "overhead_ms": statistics.median(lat - k for lat, k, _ in alone) * 1e3,
                      "overhead_share": statistics.median((lat - k) / lat for lat, k, _ in alone),
                      "outside_products_share": statistics.median((lat - k) / lat for lat, _, k in alone)},
        "dispatch_share": {p: statistics.median(s) for p, s in dispatch_share.items()},
        "max_rel_error_vs_torch": {p: float(np.max(np.abs(o - reference)) / np.max(np.abs(reference))) for p, o in outputs.items()},
        "jit_ms_by_op_type": dict(sorted(by_type.items(), key=lambda kv: -kv[1])),
        "threads": {p: programs[p].report.threads for p in programs},
        "thread_ms_at_load": {p: {n: s * 1e3 for n, s in programs[p].report.thread_seconds.items()} for p in programs},
        "fused_chains": {p: len(programs[p].report.fused_chains) for p in programs},
    }  # fmt: skip
    return result


def bench_bert(args, cache: Path) -> dict:
    import torch

    import weightpack.coreml as wpc

    shape = dict(layers=6, hidden=384, heads=12, mlp=1536, vocab=30522, seq=args.seq)
    tag = "bert-" + "-".join(f"{k}{v}" for k, v in shape.items())
    model = bert_module(**shape, seed=0)
    rng = np.random.default_rng(0)
    example = {"ids": rng.integers(0, shape["vocab"], (1, args.seq)).astype(np.int32), "mask": np.ones((1, args.seq), np.int32)}
    mlmodel = convert(model, example, cache / f"{tag}.mlpackage")
    program = wpc.Program.load(mlmodel, policy="jit")
    load_weights_into(model, program)
    tids, tmask = torch.from_numpy(example["ids"].astype(np.int64)), torch.from_numpy(example["mask"])
    with torch.no_grad():
        reference = model(tids, tmask).numpy()
    out = program.predict(example)[program.outputs[0]]

    def torch_call():
        with torch.no_grad():
            model(tids, tmask)

    times = alternate({"weightpack": lambda: program.predict(example), "torch": torch_call}, args.rounds)
    med = {name: statistics.median(t) for name, t in times.items()}
    return {
        "model": tag, "latency_ms": {k: v * 1e3 for k, v in med.items()}, "vs_torch": med["weightpack"] / med["torch"],
        "max_rel_error_vs_torch": float(np.max(np.abs(out - reference)) / np.max(np.abs(reference))),
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["llama", "bert"], action="append")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--mlp", type=int, default=5632)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--seq", type=int, default=128, help="BERT sequence length")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch threads (weightpack's and BLAS's are the machine's)")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "weightpack-bench")
    parser.add_argument("--json", type=Path, default=RESULTS / "programs.json")
    args = parser.parse_args(argv)
    import logging
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    logging.getLogger("coremltools").setLevel(logging.ERROR)
    os.environ.setdefault("TQDM_DISABLE", "1")
    torch.set_num_threads(args.threads)
    cpu = cpu_description()
    print(f"CPU: {cpu['model']} ({cpu['cpus']} CPUs; {' '.join(cpu['flags'])}); torch {torch.__version__} with {args.threads} threads; "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)  # fmt: skip
    result = {"cpu": cpu, "argv": sys.argv[1:] if argv is None else argv, "load_average": os.getloadavg()[0]}
    sections = args.only or ["llama", "bert"]
    if "llama" in sections:
        r = result["llama"] = bench_llama(args, args.cache)
        lat = r["latency_ms"]
        print(f"{r['model']}: per-token latency jit {lat['jit']:.1f} ms, load {lat['load']:.1f} ms, torch fp32 {lat['torch']:.1f} ms; "
              f"jit/load x{r['jit_vs_load']:.3f}, jit/torch x{r['jit_vs_torch']:.3f}")  # fmt: skip
        print(f"  resident weights jit {r['resident_bytes']['jit'] / 1e6:.1f} MB, load {r['resident_bytes']['load'] / 1e6:.1f} MB "
              f"(x{r['resident_jit_vs_load']:.3f}); load time jit {r['load_seconds']['jit']:.2f} s, load {r['load_seconds']['load']:.2f} s")  # fmt: skip
        print(f"  overhead (latency - compiled kernels) jit {r['overhead_share']['jit']:.1%}, load {r['overhead_share']['load']:.1%} "
              f"(of which outside any op: {r['dispatch_share']['jit']:.1%}, {r['dispatch_share']['load']:.1%}); "
              f"outside the weight products and BLAS (C chains counted as overhead) jit {r['outside_products_share']['jit']:.1%}, "
              f"load {r['outside_products_share']['load']:.1%}; "
              f"max error vs torch jit {r['max_rel_error_vs_torch']['jit']:.1e}, load {r['max_rel_error_vs_torch']['load']:.1e} "
              f"({r['torch_params_assigned']} torch weights from the program)")  # fmt: skip
        a = r["jit_alone"]
        print(f"  jit alone (calls back to back, no other contender between them): latency {a['latency_ms']:.1f} ms, "
              f"overhead {a['overhead_ms']:.2f} ms = {a['overhead_share']:.1%}; outside the products {a['outside_products_share']:.1%}")  # fmt: skip
        chosen = ", ".join(f"{n}: {ms:.1f} ms" for n, ms in r["thread_ms_at_load"]["jit"].items())
        print(f"  weightpack kernel threads: jit {r['threads']['jit']} (per call at load: {chosen or 'not measured'}), "
              f"load {r['threads']['load']}; fused chains {r['fused_chains']['jit']}")  # fmt: skip
        top = list(r["jit_ms_by_op_type"].items())[:8]
        print("  jit ms by op type: " + ", ".join(f"{k} {v:.2f}" for k, v in top), flush=True)
    if "bert" in sections:
        r = result["bert"] = bench_bert(args, args.cache)
        print(f"{r['model']}: latency weightpack {r['latency_ms']['weightpack']:.1f} ms, torch fp32 {r['latency_ms']['torch']:.1f} ms "
              f"(x{r['vs_torch']:.3f}); max error vs torch {r['max_rel_error_vs_torch']:.1e}", flush=True)  # fmt: skip
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
