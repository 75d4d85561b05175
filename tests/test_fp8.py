"""The FP8 linear mode against a float64 statement of its arithmetic (e4m3 rounding written out in numpy)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from opensapiens.inference.fp8 import E4M3_MAX, Fp8Linear, convert_to_fp8
from opensapiens.models import build_model


def round_e4m3(v: np.ndarray) -> np.ndarray:
    """Round float64 values (|v| <= 448) to the nearest float8 e4m3fn value, ties to even."""
    a = np.abs(v)
    exponent = np.floor(np.log2(np.maximum(a, 2.0**-6)))  # subnormals share the smallest normal exponent
    step = 2.0 ** (exponent - 3)  # 3 mantissa bits
    return np.sign(v) * np.round(a / step) * step  # np.round rounds half to even


def fp8_linear_reference(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-scaled activations, channel-scaled weights, both rounded to e4m3, product and bias in float64."""
    x_scale = np.maximum(np.abs(x).max(axis=1, keepdims=True), 1e-12) / E4M3_MAX
    w_scale = np.maximum(np.abs(w).max(axis=1, keepdims=True), 1e-12) / E4M3_MAX
    xq = round_e4m3(x / x_scale) * x_scale
    wq = round_e4m3(w / w_scale) * w_scale
    return xq @ wq.T + b


def test_e4m3_rounding_reference_agrees_with_torch_cast():
    v = np.random.default_rng(0).uniform(-448, 448, 10000) * np.random.default_rng(1).choice([1, 1e-2, 1e-3], 10000)
    ours = round_e4m3(v)
    torch_cast = torch.from_numpy(v).to(torch.float8_e4m3fn).double().numpy()
    np.testing.assert_array_equal(ours, torch_cast)


def test_fp8_linear_matches_float64_reference():
    torch.manual_seed(0)
    lin = nn.Linear(96, 48)
    x = torch.randn(37, 96) * torch.logspace(-2, 1, 37)[:, None]  # rows of very different scale
    x = x.bfloat16()
    y = Fp8Linear(lin)(x).double().numpy()
    ref = fp8_linear_reference(x.double().numpy(), lin.weight.detach().double().numpy(),
                               lin.bias.detach().bfloat16().double().numpy())
    rel = np.linalg.norm(y - ref) / np.linalg.norm(ref)
    assert rel < 8e-3, rel  # only the bf16 output rounding separates them
    exact = x.double().numpy() @ lin.weight.detach().double().numpy().T + lin.bias.detach().double().numpy()
    err = np.linalg.norm(y - exact, axis=1) / np.linalg.norm(exact, axis=1)
    assert err.max() < 0.08, err.max()  # e4m3 keeps every row within a few percent, whatever its scale


def test_convert_to_fp8_swaps_block_linears_only_and_stays_close():
    torch.manual_seed(0)
    model = build_model("pose", "nano", out_channels=17, head_channels=32, pos_grid=(8, 6)).eval()
    x = torch.randn(2, 3, 128, 96)
    with torch.inference_mode():
        ref = model(x).double()
    convert_to_fp8(model)
    block_linears = [m for b in model.backbone.blocks for m in b.modules() if isinstance(m, nn.Linear)]
    assert not block_linears and any(isinstance(m, Fp8Linear) for m in model.modules())
    assert not any(isinstance(m, Fp8Linear) for m in model.head.modules())
    with torch.inference_mode():
        out = model(x).double()
    assert ((out - ref).norm() / ref.norm()) < 0.1
