"""Live torch -> coremltools -> weightpack runs (issue 12): models defined and converted here.

The stored fixtures (test_program_oracle.py) pin what coremltools emitted once; these tests run
``ct.convert`` with the installed torch and coremltools, so CI sees what today's converters emit.
Each program is held to torch's float64 output with the bounds of :mod:`program_oracle`, and a
palettized copy to its own decompressed form.
"""
from __future__ import annotations

import math

import coremltools as ct
import coremltools.optimize.coreml as cto
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import program_oracle as oracle
import weightpack.coreml as wpc

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning", "ignore::FutureWarning")


class TinyEncoder(nn.Module):
    """Pre-norm attention block with a GELU MLP and a mean-pooled linear head, on (1, 8, 32)."""

    hidden, heads, seq, mlp = 32, 2, 8, 64

    def __init__(self):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(self.hidden), nn.LayerNorm(self.hidden)
        self.qkv, self.out = nn.Linear(self.hidden, 3 * self.hidden), nn.Linear(self.hidden, self.hidden)
        self.up, self.down = nn.Linear(self.hidden, self.mlp), nn.Linear(self.mlp, self.hidden)
        self.head = nn.Linear(self.hidden, 5)

    def forward(self, x):
        d = self.hidden // self.heads
        qkv = self.qkv(self.norm1(x)).view(1, self.seq, 3, self.heads, d).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attention = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)
        x = x + self.out((attention @ v).transpose(1, 2).reshape(1, self.seq, self.hidden))
        x = x + self.down(F.gelu(self.up(self.norm2(x))))
        return self.head(x.mean(1)), x

    def rounding_depth(self) -> int:
        h, d = self.hidden, self.hidden // self.heads
        return 2 * h + h + d + 2 * self.seq + h + 1 + 2 * h + h + 8 + self.mlp + 1 + self.seq + h


class TinyConvNet(nn.Module):
    """conv -> batch_norm -> relu -> max pool -> depthwise conv -> hardswish -> global pool -> linear, on (2, 3, 12, 12)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.depthwise = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.head = nn.Linear(16, 4)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.3, 0.3)
            self.bn.running_var.uniform_(0.5, 1.5)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn(self.conv(x))), 2)
        x = F.hardswish(self.depthwise(x))
        return (self.head(x.mean((2, 3))),)

    def rounding_depth(self) -> int:
        return 27 + 2 + 9 + 4 + 36 + 16


MODELS = {  # name -> (model, input shape, output names)
    "encoder": (TinyEncoder, (1, 8, 32), ["logits", "states"]),
    "convnet": (TinyConvNet, (2, 3, 12, 12), ["logits"]),
}
VARIANTS = [("iOS16", "fp32"), ("iOS18", "fp16"), ("iOS18", "fp32")]
_converted: dict = {}


def converted(model_name: str, target: str, precision: str):
    """(mlmodel, torch model, input) converted once per session: seeded weights and input."""
    key = (model_name, target, precision)
    if key not in _converted:
        cls, shape, output_names = MODELS[model_name]
        torch.manual_seed(7)
        model = cls().eval()
        x = np.random.default_rng(7).standard_normal(shape).astype(np.float32)
        with torch.no_grad():
            traced = torch.jit.trace(model, (torch.from_numpy(x),))
        mlmodel = ct.convert(traced, inputs=[ct.TensorType(name="x", shape=shape)],
                             outputs=[ct.TensorType(name=n) for n in output_names], convert_to="mlprogram",
                             minimum_deployment_target=getattr(ct.target, target),
                             compute_precision=ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32,
                             skip_model_load=True)
        _converted[key] = (mlmodel, model, x)
    return _converted[key]


def torch_outputs(model, x, dtype) -> list:
    with torch.no_grad():
        outputs = model.to(dtype)(torch.from_numpy(x).to(dtype))
    model.to(torch.float32)
    return [o.numpy().astype(np.float64) for o in outputs]


@pytest.mark.parametrize("policy", oracle.POLICIES)
@pytest.mark.parametrize("target, precision", VARIANTS)
@pytest.mark.parametrize("model_name", MODELS)
def test_fresh_conversion_matches_torch(model_name, target, precision, policy):
    mlmodel, model, x = converted(model_name, target, precision)
    program = wpc.Program.load(mlmodel, policy=policy)
    assert set(program.inputs) == {"x"}
    outputs = program.predict(oracle.program_inputs(program, {"x": x}))  # fp16 programs from iOS16 on take float16
    expected = torch_outputs(model, x, torch.float64)
    assert list(program.outputs) == MODELS[model_name][2]
    dtypes = oracle.declared_output_dtypes(mlmodel)
    for name, f64, f32 in zip(program.outputs, expected, torch_outputs(model, x, torch.float32)):
        depth = model.rounding_depth()
        oracle.check_output(f"torch float32 {name}", f32, f64, oracle.torch_bound(f64, depth, "fp32"), np.float64)
        bound = oracle.torch_bound(f64, depth, precision)
        oracle.check_output(f"{model_name}-{target}-{precision} [{policy}] {name}", outputs[name], f64, bound, dtypes[name])


@pytest.mark.parametrize("policy", ["jit", "load"])
@pytest.mark.parametrize("model_name", MODELS)
def test_fresh_palettized_conversion_matches_its_decompressed_form(model_name, policy):
    mlmodel, model, x = converted(model_name, "iOS18", "fp16")
    config = cto.OptimizationConfig(cto.OpPalettizerConfig(nbits=4, mode="kmeans", granularity="per_grouped_channel",
                                                           group_size=16, weight_threshold=256))
    compressed = wpc.palettize_weights(mlmodel, config)
    dense_program = wpc.Program.load(cto.decompress_weights(compressed), policy="load")
    reference = dense_program.predict(oracle.program_inputs(dense_program, {"x": x}))
    program = wpc.Program.load(compressed, policy=policy)
    outputs = program.predict(oracle.program_inputs(program, {"x": x}))
    for name, dtype in oracle.declared_output_dtypes(compressed).items():
        dense = np.asarray(reference[name])
        assert dense.dtype == dtype, name
        bound = oracle.summation_bound(dense, model.rounding_depth(), float16_output=dtype == np.float16)
        oracle.check_output(f"{model_name} palettized [{policy}] {name}", outputs[name], dense, bound, dtype)
