"""Sapiens2's fused inference blocks (biases and LayerScale folded, stacked q/k/v, q/k norm + RoPE and SwiGLU as
single passes) against the plain model: exact in float64 on the CPU; their Triton kernels under Triton's interpreter
against float64; on a GPU, bf16 and FP8 within the plain paths' own distance from float32."""

from __future__ import annotations

import copy

import pytest
import torch
from test_sapiens2 import SIZE, _model

from opensapiens.inference.fp8 import Fp8Linear, convert_to_fp8
from opensapiens.inference.fused import ShiftedNorm
from opensapiens.inference.fused2 import FusedBlock2, RestoreBiases, fuse_blocks2
from opensapiens.inference.optimize import optimize_for_inference

from conftest import TESTS, assert_fp8_fused_tracks_fp8_linears, bf16_distances, subprocess_env


def _float64(task: str, arch: str = "sapiens2_nano", rope_dtype: torch.dtype = torch.float64):
    model = _model(task, arch=arch).double().eval()
    model.backbone.rope.dtype = rope_dtype
    return model


@pytest.mark.parametrize("task,arch", [("pose", "sapiens2_nano"), ("seg", "sapiens2_nano"),
                                       ("pointmap", "sapiens2_nano"), ("features", "sapiens2_nano_4k")])
def test_fused_model_equals_plain_model_in_float64(task, arch):
    model = _float64(task, arch)
    fused = copy.deepcopy(model)
    fuse_blocks2(fused.backbone)
    assert all(isinstance(b, FusedBlock2) for b in fused.backbone.blocks)
    assert isinstance(fused.backbone.norm, ShiftedNorm) and fused.backbone.norm.rms
    assert {b.heads[1] for b in fused.backbone.blocks} == {4, 2}  # grouped-query blocks among them
    if arch.endswith("4k"):
        assert isinstance(fused.backbone.tokenizer.blocks[-1], RestoreBiases)
    x = torch.randn(2, 3, *(SIZE.get(task) or ((128, 128) if arch.endswith("4k") else (64, 48))),
                    dtype=torch.float64)
    with torch.inference_mode():
        ref, out = model(x), fused(x)
    for r, o in zip(ref if isinstance(ref, tuple) else (ref,), out if isinstance(out, tuple) else (out,), strict=True):
        assert (o - r).abs().max() <= 1e-12 * r.abs().max()


def test_bf16_rope_angles_are_kept_as_the_official_code_has_them():
    # the default model rounds q and k to bf16 around the rotation (the official arithmetic); the fused blocks
    # call the same rotation, so even in float64 the two agree to float64's precision, not bf16's
    model = _float64("pose", rope_dtype=torch.bfloat16)
    fused = copy.deepcopy(model)
    fuse_blocks2(fused.backbone)
    x = torch.randn(1, 3, 64, 48, dtype=torch.float64)
    with torch.inference_mode():
        ref, out = model(x), fused(x)
        model.backbone.rope.dtype = torch.float64
        exact_rope = model(x)
    assert (out - ref).abs().max() <= 1e-12 * ref.abs().max()
    assert (exact_rope - ref).abs().max() > 1e-6 * ref.abs().max()  # the bf16 rotation is visible


def test_shifts_are_the_running_sums_of_the_folded_biases_and_layer_scale_is_in_proj():
    model = _float64("features")
    blocks = list(model.backbone.blocks)
    fused = copy.deepcopy(model)
    fuse_blocks2(fused.backbone)
    total = torch.zeros(model.backbone.embed_dim, dtype=torch.float64)
    for plain, fb in zip(blocks, fused.backbone.blocks, strict=True):
        gamma = plain.attn.gamma.weight
        assert torch.allclose(fb.norm1.shift, total)
        assert torch.allclose(fb.proj.weight, gamma[:, None] * plain.attn.proj.weight) and fb.proj.bias is None
        total = total + gamma * plain.attn.proj.bias
        assert torch.allclose(fb.norm2.shift, total)
        total = total + plain.mlp.w3.bias
        assert torch.equal(fb.qkv.weight, torch.cat([plain.attn.wq.weight, plain.attn.wk.weight,
                                                      plain.attn.wv.weight]))
    assert torch.allclose(fused.backbone.norm.shift, total)


def test_fused_blocks_refuse_to_run_under_autograd_and_to_be_optimized_twice():
    fused = _float64("pose")
    fuse_blocks2(fused.backbone)
    with pytest.raises(RuntimeError, match="inference-only"):
        fused(torch.randn(1, 3, 64, 48, dtype=torch.float64))
    with pytest.raises(ValueError, match="optimized already"):
        optimize_for_inference(fused)


def test_fp8_fused_blocks_against_fp8_linears_on_the_plain_model():
    """FP8 fused blocks against plain blocks whose Linears are ``Fp8Linear``s. Stacking q/k/v changes no scale (rows
    of W are scaled one by one, activation rows are the same); LayerScale folded into proj's rows changes only float
    rounding. The two round at slightly different points (bf16 GEMM outputs before SwiGLU there, float32 here), so
    they agree to a fraction of the quantization error; a lost bias, scale or gate would be many times that."""
    model = _model("pose").float().eval()
    reference, fused = convert_to_fp8(copy.deepcopy(model)), copy.deepcopy(model)
    fuse_blocks2(fused.backbone, fp8=True)
    assert all(isinstance(m, Fp8Linear) for b in fused.backbone.blocks for m in (b.qkv, b.proj, b.w12, b.w3))
    grid, prefix = (4, 3), model.backbone.num_extra_tokens
    rope = model.backbone.rope(*grid)
    x = torch.randn(2, prefix + 12, model.backbone.embed_dim)
    assert_fp8_fused_tracks_fp8_linears(model, reference, fused, x, rope, prefix)


KERNEL_CHECK = """
import interpreter_casts  # noqa: F401 - exact e4m3 and bf16 casts in the interpreter
import torch
import torch.nn.functional as F
from opensapiens.inference.kernels import qk_norm_rope, shifted_layer_norm, swiglu
from opensapiens.models.sapiens2 import RotaryEmbedding2d

torch.manual_seed(0)


def rounded(t, dtype):
    return t.to(dtype).double()


def e4m3_of(y):  # rows scaled to amax 448 and rounded, in float64
    scale = y.abs().amax(-1, keepdim=True) / 448
    return (y / scale).float().to(torch.float8_e4m3fn).double(), scale


def qk_reference(qkv, nq, nk, qw, kw, eps, cos, sin, N, prefix):
    # per head RMSNorm, rounded to the stream's dtype as the norm's output; through the angles' dtype; rotate
    # rotate_half's pairs (d, d + hd/2) of tokens from `prefix` on; v untouched
    M, W = qkv.shape
    hd = W // (nq + 2 * nk)
    x = qkv.double().view(M, nq + 2 * nk, hd)
    qk = x[:, :nq + nk]
    w = torch.cat([qw.double().expand(nq, hd), kw.double().expand(nk, hd)])
    y = rounded(rounded(qk / torch.sqrt(qk.pow(2).mean(-1, keepdim=True) + eps) * w, qkv.dtype), cos.dtype)
    pos = torch.arange(M) % N - prefix
    c, s = cos.double()[pos.clamp_min(0)][:, None], sin.double()[pos.clamp_min(0)][:, None]
    a, b = y.chunk(2, -1)
    turned = torch.where((pos >= 0)[:, None, None], y * c + torch.cat([-b, a], -1) * s, y)
    out = x.clone()
    out[:, :nq + nk] = rounded(rounded(turned, cos.dtype), qkv.dtype)
    return out.view(M, W)


CASES = ((torch.bfloat16, torch.bfloat16, 64, 4, 2), (torch.float32, torch.bfloat16, 12, 3, 3),
         (torch.float16, torch.float32, 76, 2, 1))  # stream dtype, angles' dtype, head dim, q heads, k/v heads
for dtype, rope_dtype, hd, nq, nk in CASES:
    B, h, w, prefix = 2, 3, 4, 3
    N = prefix + h * w
    qkv = torch.randn(B * N, (nq + 2 * nk) * hd) * 2
    qkv[::5, hd:2 * hd] *= 1e-4  # heads whose mean square is below the norm's eps: it must count
    qkv = qkv.to(dtype)
    qw, kw = (1 + 0.3 * torch.randn(hd)).to(dtype), (1 + 0.3 * torch.randn(hd)).to(dtype)
    cos, sin = RotaryEmbedding2d(hd, dtype=rope_dtype)(h, w)
    ref = qk_reference(qkv, nq, nk, qw, kw, 1e-6, cos, sin, N, prefix)
    got = qkv.clone()
    qk_norm_rope(got, nq, nk, qw, kw, 1e-6, (cos, sin), N, prefix)
    # float32 inside against float64: equal, or one step of the output dtype apart where a rounding ties
    diff = (got.double() - ref).abs()
    assert (diff <= torch.finfo(dtype).eps * ref.abs().clamp_min(1)).all(), (dtype, diff.max())
    assert (diff == 0).float().mean() > 0.995, (dtype, (diff == 0).float().mean())

for C, dtype in ((1536, torch.bfloat16), (120, torch.float32)):
    x, shift, w = torch.randn(3, 5, C, dtype=dtype) * 3, torch.randn(C), torch.randn(C, dtype=dtype)
    y = shifted_layer_norm(x, shift, w, None, 1e-6, rms=True)
    ref = F.rms_norm(x.double() + shift.double(), (C,), w.double(), 1e-6)
    assert ((y.double() - ref).abs() <= max(torch.finfo(dtype).eps, 2**-18) * ref.abs().clamp_min(1.0)).all()
    delta = torch.randn(3, 5, C, dtype=dtype)
    stream = (x.double() + delta.double()).to(dtype)
    values, scale = shifted_layer_norm(x, shift, w, None, 1e-6, delta=delta, fp8=True, rms=True)
    assert torch.equal(x, stream)
    ref_values, ref_scale = e4m3_of(F.rms_norm(stream.double() + shift.double(), (C,), w.double(), 1e-6).view(15, C))
    assert torch.allclose(scale.double(), ref_scale, rtol=2**-18)
    assert (values.double() == ref_values).float().mean() > 0.99

x, shift, w = torch.randn(4, 96), torch.randn(96), torch.randn(96)  # a LayerNorm without a bias adds none
ref = F.layer_norm(x.double() + shift.double(), (96,), w.double(), None, 1e-6)
assert ((shifted_layer_norm(x, shift, w, None, 1e-6).double() - ref).abs() <= 2**-18 * ref.abs().clamp_min(1)).all()

for H, dtype in ((6144, torch.bfloat16), (100, torch.float32), (9728, torch.float16)):
    gated = torch.randn(7, 2 * H, dtype=dtype) * 3
    gate, value = gated.double().chunk(2, -1)
    ref = gate * torch.sigmoid(gate) * value
    y = swiglu(gated)
    assert y.dtype == dtype and y.shape == (7, H)
    assert ((y.double() - ref).abs() <= max(torch.finfo(dtype).eps, 2**-20) * ref.abs().clamp_min(1e-3)).all()
    values, scale = swiglu(gated, fp8=True)
    ref_values, ref_scale = e4m3_of(ref)
    assert torch.allclose(scale.double(), ref_scale, rtol=2**-18) and scale.shape == (7, 1)
    assert ((values.double() - ref_values).abs() <= 2**-3 * ref_values.abs().clamp_min(2**-6)).all()
    assert (values.double() == ref_values).float().mean() > 0.99
print("ok")
"""


def test_triton_kernels_of_the_sapiens2_blocks_against_float64():
    """The CUDA kernels' code (q/k norm + RoPE in place, grouped heads, odd head dims, bf16 or float32 angles; the
    shifted RMSNorm with a pending delta and e4m3 output; SwiGLU to the stream's dtype and to e4m3 rows), run by
    Triton's interpreter on the CPU, against float64 (``interpreter_casts`` swaps in exact casts, as in
    test_fused.py)."""
    import subprocess
    import sys

    pytest.importorskip("triton")
    # TRITON_INTERPRET is read when a kernel is decorated (so: a fresh process); tests/ on the path for the shim
    env = subprocess_env(TESTS, TRITON_INTERPRET="1")
    done = subprocess.run([sys.executable, "-c", KERNEL_CHECK], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the Triton kernels and cuBLAS epilogues need CUDA")
@pytest.mark.parametrize("task", ["pose", "seg"])
def test_fused_bf16_on_cuda_is_as_close_to_float32_as_the_plain_bf16_path(task):
    model = _model(task).float().cuda().eval()
    plain, fused = copy.deepcopy(model).bfloat16(), copy.deepcopy(model).bfloat16()
    fuse_blocks2(fused.backbone)
    err_plain, err_fused = bf16_distances(model, [plain, fused], torch.randn(2, 3, 128, 96, device="cuda"))
    assert err_fused <= 1.5 * err_plain + 1e-3, (err_fused, err_plain)


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9),
                    reason="FP8 GEMMs need Hopper or newer")
def test_fp8_fused_on_cuda_is_as_close_to_float32_as_fp8_linears():
    model = _model("pose").float().cuda().eval()
    linears, fused = convert_to_fp8(copy.deepcopy(model).bfloat16()), copy.deepcopy(model).bfloat16()
    fuse_blocks2(fused.backbone, fp8=True)
    err_linears, err_fused = bf16_distances(model, [linears, fused], torch.randn(2, 3, 128, 96, device="cuda"))
    assert err_fused <= 1.5 * err_linears + 1e-3, (err_fused, err_linears)


@pytest.mark.parametrize("x_dtype,weight_dtype", [(torch.bfloat16, torch.bfloat16), (torch.bfloat16, torch.float32),
                                                  (torch.float64, torch.float32), (torch.float32, torch.float32)])
def test_a_shifted_rms_norm_without_eps_adds_the_epsilon_torch_adds(x_dtype, weight_dtype):
    """nn.RMSNorm(eps=None) adds the epsilon of the type it computes in (float32 for a bf16 input, float64 for a
    float64 one), neither the weight's nor the input's own; on activations this small that epsilon moves the
    output by far more than bf16's rounding."""
    torch.manual_seed(0)
    norm = torch.nn.RMSNorm(64, eps=None).to(weight_dtype)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = (3e-4 * torch.randn(4, 64)).to(x_dtype)
    with torch.no_grad():
        want = norm(x)  # torch's own (the shift is zero, so x + shift is x exactly)
        got = ShiftedNorm(norm, torch.zeros(64, dtype=weight_dtype))(x)
    assert got.dtype == x_dtype and torch.allclose(got.double(), want.double(), rtol=2e-2, atol=1e-2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the optimized path is CUDA-only")
def test_optimize_for_inference_runs_sapiens2_on_the_fused_blocks_by_default():
    model = _model("pose").cuda().bfloat16().eval()
    fast = optimize_for_inference(model, compile=False)
    assert all(isinstance(b, FusedBlock2) for b in fast.model.backbone.blocks)
    with torch.inference_mode():
        assert fast(torch.randn(1, 3, 128, 96, device="cuda", dtype=torch.bfloat16)).isfinite().all()


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9),
                    reason="FP8 GEMMs need Hopper or newer")
def test_fp8_on_sapiens2_runs_on_fp8_fused_blocks():
    model = _model("pose").cuda().bfloat16().eval()
    fast = optimize_for_inference(model, fp8=True, compile=False)
    assert all(isinstance(b, FusedBlock2) and b.fp8 for b in fast.model.backbone.blocks)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the Triton q/k pass runs on CUDA")
@pytest.mark.parametrize("rope_dtype", [torch.bfloat16, torch.float32])
def test_the_cuda_qk_pass_equals_the_models_own_ops(rope_dtype):
    """The CUDA branch of ``normed_rotated_qkv`` (the Triton pass with the block's own weights, eps and angles)
    against its CPU branch (the model's ops) on the same float32 GEMM output: each query and key head with its own
    norm weight, grouped heads, the prefix unrotated."""
    from opensapiens.inference.fused2 import normed_rotated_qkv

    model = _model("pose").float().eval()
    block = copy.deepcopy(model.backbone.blocks[8]).cuda()  # a grouped-query block
    attn = block.attn
    assert attn.num_kv_heads < attn.num_heads
    with torch.no_grad():
        attn.k_norm.weight.copy_(1 + torch.randn_like(attn.k_norm.weight))  # q and k weights far apart
    model.backbone.rope.dtype = rope_dtype
    grid, prefix = (4, 3), model.backbone.num_extra_tokens
    cos, sin = model.backbone.rope(*grid)
    qkv = torch.randn(2 * (prefix + 12), (attn.num_heads + 2 * attn.num_kv_heads) * 16) * 3
    heads = (attn.num_heads, attn.num_kv_heads)
    with torch.inference_mode():
        ref = normed_rotated_qkv(qkv.clone(), 2, heads, attn.q_norm.cpu(), attn.k_norm.cpu(), (cos, sin), prefix)
        attn.cuda()
        got = normed_rotated_qkv(qkv.cuda(), 2, heads, attn.q_norm, attn.k_norm, (cos.cuda(), sin.cuda()), prefix)
    for r, g in zip(ref, got, strict=True):
        tol = 1e-5 if rope_dtype == torch.float32 else 2**-7  # bf16 angles: one rounding apart at most
        assert (g.cpu() - r).abs().max() <= tol * r.abs().max(), (g.cpu() - r).abs().max()
