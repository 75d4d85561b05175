"""Fused inference blocks (biases folded out of the residual stream, in-place GEMM accumulation) against the plain
model: exact in float64 on the CPU; on a GPU, bf16 within the plain bf16 path's own distance from float32."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from opensapiens.inference.fused import FusedBlock, ShiftedLayerNorm, fuse_blocks
from opensapiens.inference.optimize import pad_attention_heads, pad_attention_weights
from opensapiens.models import build_model
from opensapiens.models.vit import ViTArch


def perturbed_model(task: str, arch, dtype=torch.float64, seed: int = 0):
    """A small model whose every parameter, biases included, is far from its zero/one initialisation."""
    torch.manual_seed(seed)
    model = build_model(task, arch, pos_grid=(4, 3)).to(dtype).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.mark.parametrize("task", ["pose", "seg", "features"])
def test_fused_model_equals_plain_model_in_float64(task):
    model = perturbed_model(task, "nano")
    fused = copy.deepcopy(model)
    fuse_blocks(fused.backbone)
    assert all(isinstance(b, FusedBlock) for b in fused.backbone.blocks)
    assert isinstance(fused.backbone.norm, ShiftedLayerNorm)
    x = torch.randn(2, 3, 64, 48, dtype=torch.float64)
    with torch.inference_mode():
        ref, out = model(x), fused(x)
    assert (out - ref).abs().max() <= 1e-10 * ref.abs().max()


@pytest.mark.parametrize("pad", [pad_attention_heads, pad_attention_weights])
def test_fused_blocks_with_padded_head_dim_and_cls_token(pad):
    # head dim 60 zero-padded to 64 (as the 2B model on CUDA) and a cls token carried in the stream
    arch = ViTArch("hd60", 120, 3, 2)
    model = perturbed_model("features", arch)
    model.backbone = type(model.backbone)(arch, pos_grid=(4, 3), with_cls_token=True).double().eval()
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    assert pad(model, 64) == 64
    fused = copy.deepcopy(model)
    fuse_blocks(fused.backbone)
    x = torch.randn(2, 3, 64, 48, dtype=torch.float64)
    with torch.inference_mode():
        ref, out = model(x), fused(x)
    assert (out - ref).abs().max() <= 1e-10 * ref.abs().max()


def test_shifts_are_the_running_sums_of_the_folded_biases():
    model = perturbed_model("features", "nano")
    blocks = list(model.backbone.blocks)
    fused = copy.deepcopy(model)
    fuse_blocks(fused.backbone)
    total = torch.zeros(128, dtype=torch.float64)
    for plain, fb in zip(blocks, fused.backbone.blocks, strict=True):
        assert torch.allclose(fb.norm1.shift, total)
        total = total + plain.attn.proj.bias
        assert torch.allclose(fb.norm2.shift, total)
        total = total + plain.mlp.fc2.bias
    assert torch.allclose(fused.backbone.norm.shift, total)


def test_caller_input_is_untouched_and_repeated_calls_agree():
    fused = perturbed_model("pose", "nano")
    fuse_blocks(fused.backbone)
    x = torch.randn(1, 3, 64, 48, dtype=torch.float64)
    keep = x.clone()
    with torch.inference_mode():
        first, second = fused(x), fused(x)
    assert torch.equal(x, keep) and torch.equal(first, second)


def test_fused_blocks_refuse_to_run_under_autograd():
    fused = perturbed_model("pose", "nano")
    fuse_blocks(fused.backbone)
    with pytest.raises(RuntimeError, match="inference-only"):
        fused(torch.randn(1, 3, 64, 48, dtype=torch.float64))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="cuBLASLt GELU epilogue and the compiled norm need CUDA")
def test_fused_bf16_on_cuda_is_as_close_to_float32_as_the_plain_bf16_path():
    model = perturbed_model("pose", "small", dtype=torch.float32).cuda()
    plain, fused = copy.deepcopy(model).bfloat16(), copy.deepcopy(model).bfloat16()
    fuse_blocks(fused.backbone)
    x = torch.randn(2, 3, 64, 48, device="cuda")
    with torch.inference_mode():
        ref = model(x).double()
        err_plain = (plain(x.bfloat16()).double() - ref).norm() / ref.norm()
        err_fused = (fused(x.bfloat16()).double() - ref).norm() / ref.norm()
    assert err_fused <= 1.5 * err_plain + 1e-3, (err_fused, err_plain)
    gelu_gap = (F.gelu(torch.linspace(-8, 8, 10001)) - F.gelu(torch.linspace(-8, 8, 10001), approximate="tanh"))
    assert gelu_gap.abs().max() < 5e-4  # the epilogue's tanh GELU, the only approximation of the fused path


KERNEL_CHECK = """
import torch
from opensapiens.inference.kernels import shifted_layer_norm
torch.manual_seed(0)
for C, dtype in ((1536, torch.bfloat16), (120, torch.float32), (1920, torch.float16)):
    x = torch.randn(3, 5, C, dtype=dtype) * 3
    shift, w, b = torch.randn(C), torch.randn(C, dtype=dtype), torch.randn(C, dtype=dtype)
    y = shifted_layer_norm(x, shift, w, b, 1e-6)
    ref = torch.nn.functional.layer_norm(x.double() + shift.double(), (C,), w.double(), b.double(), 1e-6)
    # one unit in the last place of the output dtype, or float32 arithmetic's own error inside the kernel
    ulp = max(torch.finfo(dtype).eps, 2**-18) * ref.abs().clamp_min(1.0)
    assert y.dtype == dtype and y.shape == x.shape
    assert ((y.double() - ref).abs() <= ulp).all(), (C, dtype, (y.double() - ref).abs().max())
print("ok")
"""


def test_triton_shifted_layer_norm_kernel_against_float64(tmp_path):
    """The CUDA kernel's code, run by Triton's interpreter on the CPU, against float64: within one output ulp."""
    import os
    import subprocess
    import sys

    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}  # read when the kernel is decorated: a fresh process
    done = subprocess.run([sys.executable, "-c", KERNEL_CHECK], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
