"""The Triton attention kernel (``kernels.attention``) and its FP8 quantization, against float64.

On the CPU the kernels run in Triton's interpreter (a fresh process with TRITON_INTERPRET=1). Two of the
interpreter's emulations are wrong, not our kernels: its bf16 ``dot`` multiplies the raw bit patterns (so the
16-bit path is checked in fp16), and its float32 -> e4m3 cast mis-rounds (``interpreter_casts.py`` swaps in
PyTorch's). On a GPU the same checks run in bf16 against SDPA.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

REFERENCES = '''
import math
import torch

E4M3 = torch.float8_e4m3fn


def e4m3(x):
    """Round to the nearest e4m3 value (ties to even), returned in x's dtype."""
    return x.to(torch.float32).to(E4M3).to(x.dtype)


def exact_attention(qkv, scale):
    """(B, N, 3, H, D) -> (B, N, H, D) in float64."""
    q, k, v = qkv.double().unbind(2)
    p = torch.softmax(torch.einsum("bnhd,bmhd->bhnm", q, k) * scale, dim=-1)
    return torch.einsum("bhnm,bmhd->bnhd", p, v)


def tile_quantize(x, tile=64):
    """(B, N, H, D) -> the e4m3 values (B, H, N, D) as float64 and the scales (B, H, tiles): amax / 448 per
    64-token tile of each head."""
    x = x.double().permute(0, 2, 1, 3)
    B, H, N, D = x.shape
    tiles = -(-N // tile)
    padded = torch.nn.functional.pad(x, (0, 0, 0, tiles * tile - N)).reshape(B, H, tiles, tile, D)
    scale = padded.abs().amax(dim=(3, 4)).clamp_min(1e-30) / 448
    values = e4m3((padded / scale[..., None, None]).float()).double()
    return values.reshape(B, H, tiles * tile, D)[:, :, :N], scale


def fp8_attention(qkv, scale, block_n=64):
    """The FP8 kernel's algorithm in float64: q, k, v quantized per 64-token tile; online softmax over key blocks
    of 64, each block's probabilities (times 256, relative to the running row maximum) rounded to e4m3."""
    (q, sq), (k, sk), (v, sv) = (tile_quantize(t) for t in qkv.unbind(2))
    B, H, N, D = q.shape
    row_scale = sq.repeat_interleave(64, dim=2)[:, :, :N] * scale / math.log(2)  # log2 units
    m = torch.full((B, H, N), -math.inf, dtype=torch.float64)
    l = torch.zeros(B, H, N, dtype=torch.float64)
    acc = torch.zeros(B, H, N, D, dtype=torch.float64)
    for j, start in enumerate(range(0, N, block_n)):
        kj, vj = k[:, :, start:start + block_n], v[:, :, start:start + block_n]
        s = q @ kj.transpose(-1, -2) * (row_scale * sk[:, :, j, None])[..., None]
        m_new = torch.maximum(m, s.amax(-1))
        alpha = torch.exp2(m - m_new)
        p = torch.exp2(s - (m_new[..., None] - 8))
        acc = acc * alpha[..., None] + e4m3(p) @ vj * sv[:, :, j, None, None]
        l = l * alpha + p.sum(-1)
        m = m_new
    return (acc / l[..., None]).permute(0, 2, 1, 3)
'''

INTERPRETER_CHECK = REFERENCES + '''
import interpreter_casts  # noqa: F401 - see its docstring
from opensapiens.inference.kernels import attention, quantize_heads

torch.manual_seed(0)
# quantization: values and scales exactly as tile_quantize states them (both layouts, a partial last tile)
x = torch.randn(2, 130, 3, 32, dtype=torch.float16) * 3
values, scales = tile_quantize(x)
for transpose in (False, True):
    y, s = quantize_heads(x, transpose=transpose)
    y = (y.transpose(1, 2) if transpose else y).double().reshape(2, 3, -1, 32)
    assert torch.allclose(s.double().reshape(scales.shape), scales, rtol=1e-6)
    assert torch.equal(y[:, :, :130], values) and not y[:, :, 130:].any()  # padded rows are zeros
# attention, 16-bit: partial key blocks, head dims 64 and 32, two block shapes
for (B, N, H, D), config in (((2, 130, 3, 64), (64, 64, 4, 2)), ((1, 200, 2, 32), (32, 128, 4, 2))):
    qkv = torch.randn(B, N, 3, H, D, dtype=torch.float16) * 1.5
    out, ref = attention(qkv, D**-0.5, config=config), exact_attention(qkv, D**-0.5)
    assert out.shape == (B, N, H, D) and out.dtype == torch.float16
    assert (out.double() - ref).abs().max() < 2e-3, (out.double() - ref).abs().max()
    # FP8: the algorithm in float64, and the distance that quantization itself puts between it and exact attention
    out = attention(qkv, D**-0.5, fp8=True, config=(128, 64, 4, 2)).double()
    emulated = fp8_attention(qkv, D**-0.5)
    assert (out - emulated).abs().max() < 2e-3 * ref.abs().max(), (out - emulated).abs().max()
    assert (out - ref).abs().mean() < 0.1 * ref.abs().mean()
print("ok")
'''


def interpreter_env() -> dict:
    """TRITON_INTERPRET is read when a kernel is decorated (so: a fresh process); tests/ on the path for the shim."""
    tests = os.path.dirname(os.path.abspath(__file__))
    path = os.pathsep.join(p for p in (tests, os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": path}


def test_attention_kernels_in_the_interpreter_against_float64():
    pytest.importorskip("triton")
    done = subprocess.run([sys.executable, "-c", INTERPRETER_CHECK], env=interpreter_env(), capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_attention_kernel_on_gpu_against_sdpa_and_float64():
    from opensapiens.inference.kernels import attention

    namespace: dict = {}
    exec(REFERENCES, namespace)  # noqa: S102 - the float64 references above, shared with the interpreter check
    torch.manual_seed(0)
    for B, N, H, D in ((2, 3072, 4, 64), (1, 4097, 3, 32), (2, 200, 2, 64)):
        qkv = torch.randn(B, N, 3, H, D, device="cuda", dtype=torch.bfloat16) * 1.5
        ref = namespace["exact_attention"](qkv.cpu(), D**-0.5)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        sdpa = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).double().cpu()
        out = attention(qkv, D**-0.5).double().cpu()
        assert (out - ref).abs().max() <= 1.5 * (sdpa - ref).abs().max() + 1e-3
        if torch.cuda.get_device_capability() >= (8, 9):
            fp8 = attention(qkv, D**-0.5, fp8=True).double().cpu()
            emulated = namespace["fp8_attention"](qkv.cpu(), D**-0.5)
            assert (fp8 - emulated).abs().max() < 1e-2 * ref.abs().max()
            assert (fp8 - ref).abs().mean() < 0.1 * ref.abs().mean()
