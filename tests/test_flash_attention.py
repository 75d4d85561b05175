"""Our Triton FlashAttention (forward + backward) against float64 attention; its exp2 on the FMA units against
float64; its switch in the MAE model."""

import pytest
import torch
from kernel_checks import assert_mae_step_matches, run_under_interpreter

from opensapiens.models.mae import MAE, MAEConfig
from opensapiens.models.vit import get_arch
from opensapiens.training.speed import use_flash_attention

KERNEL_CHECK = """
import torch

from opensapiens.models.flash_attention import FlashConfig, flash_attention

torch.manual_seed(0)


def reference(qkv, grad, scale):
    x = qkv.detach().clone().double().requires_grad_()
    q, k, v = x.permute(2, 0, 3, 1, 4).unbind(0)  # B H N D
    out = (torch.softmax(q @ k.transpose(-1, -2) * scale, -1) @ v).transpose(1, 2)  # B N H D
    out.backward(grad.double())
    return out.detach(), x.grad


# (B, N, H, D, dtype, config): token counts that are and are not multiples of the blocks, small blocks; a qkv view
# with a row stride wider than its data (strides are honoured). Then the one-pass backward (dq=(): dQ by atomic adds)
# and 1-4 quarters of the exponentials on the FMA units (fifth config element), both polynomials (fp32: degree 5,
# fp16: degree 3), N < BLOCK_N included
cases = [(2, 70, 2, 32, torch.float32, FlashConfig((32, 32, 4, 1), (32, 32, 4, 1), (32, 32, 4, 1))),
         (1, 64, 3, 16, torch.float32, FlashConfig((32, 16, 4, 1), (16, 32, 4, 1), (32, 16, 4, 1))),
         (2, 45, 1, 64, torch.float16, FlashConfig((16, 32, 4, 1), (32, 16, 4, 1), (16, 16, 4, 1))),
         (1, 20, 2, 16, torch.float16, FlashConfig((16, 32, 4, 1), (32, 16, 4, 1), (16, 32, 4, 1))),  # N < BLOCK_N
         (2, 70, 2, 32, torch.float32, FlashConfig((32, 32, 4, 1), (32, 32, 4, 1), ())),
         (2, 70, 2, 32, torch.float32, FlashConfig((32, 32, 4, 1, 1), (32, 32, 4, 1, 2), ())),
         (1, 64, 3, 16, torch.float32, FlashConfig((32, 16, 4, 1, 4), (16, 32, 4, 1, 3), (32, 16, 4, 1, 2))),
         (2, 45, 1, 64, torch.float16, FlashConfig((16, 32, 4, 1, 2), (32, 16, 4, 1, 1), ())),
         (1, 20, 2, 16, torch.float16, FlashConfig((16, 32, 4, 1, 3), (16, 32, 4, 1, 2), ()))]  # N < BLOCK_N
for B, N, H, D, dtype, config in cases:
    wide = torch.randn(B, N, 3 * H * D + 8, dtype=torch.float64) * 2  # larger scores: a peaked softmax
    qkv = wide[..., : 3 * H * D].view(B, N, 3, H, D)
    grad = torch.randn(B, N, H, D, dtype=torch.float64)
    ref_out, ref_grad = reference(qkv, grad, D**-0.5)
    base = wide.to(dtype).requires_grad_()
    x = base[..., : 3 * H * D].view(B, N, 3, H, D)  # row stride 3 * H * D + 8
    out = flash_attention(x, D**-0.5, config)
    out.backward(grad.to(dtype))
    assert base.grad[..., 3 * H * D:].abs().max() == 0
    tol = 2e-5 if dtype == torch.float32 else 4e-3  # fp16 rounds P and dS to 11 bits before their GEMMs
    assert out.dtype == dtype and out.shape == (B, N, H, D)
    assert ((out.double() - ref_out).abs().max() / ref_out.abs().max()) < tol, (B, N, H, D)
    grad_qkv = base.grad[..., : 3 * H * D].view(B, N, 3, H, D)
    for i, name in enumerate("qkv"):  # each of dq, dk, dv in its slot of the qkv layout
        g, r = grad_qkv[:, :, i].double(), ref_grad[:, :, i]
        assert ((g - r).abs().max() / r.abs().max()) < 4 * tol, (name, (B, N, H, D))

# under torch.use_deterministic_algorithms the one-pass config runs the two-kernel backward (atomic adds sum in a
# varying order): the same gradient bit for bit as that backward with the default dQ config
x = torch.randn(1, 40, 3, 2, 32).requires_grad_()
grads = []
for config in (FlashConfig((32, 32, 4, 1), (32, 32, 4, 1), ()), FlashConfig((32, 32, 4, 1), (32, 32, 4, 1))):
    torch.use_deterministic_algorithms(True)
    flash_attention(x, 32**-0.5, config).square().sum().backward()
    torch.use_deterministic_algorithms(False)
    grads.append(x.grad)
    x.grad = None
assert torch.equal(*grads)

# inside torch.compile (the pretraining path compiles every block): one opaque op, same values and gradients
lin = torch.nn.Linear(64, 3 * 64)
x = torch.randn(2, 40, 64)


def f(x):
    qkv = lin(x)
    return flash_attention(qkv.view(2, 40, 3, 2, 32), 32**-0.5).square().sum()


compiled = torch.compile(f)(x)
compiled.backward()
grad_compiled, lin.weight.grad = lin.weight.grad, None
eager = f(x)
eager.backward()
assert torch.allclose(compiled, eager) and torch.allclose(grad_compiled, lin.weight.grad)
print("ok")
"""


def test_flash_attention_kernels_against_float64():
    """Forward and backward (dq, dk, dv written into the qkv layout; two-kernel and one-pass, exp2 on MUFU and partly
    on the FMA units) run by Triton's interpreter on the CPU, against float64 autograd; the one-pass config under
    deterministic algorithms; and the custom op under torch.compile."""
    run_under_interpreter(KERNEL_CHECK)


EXP2_CHECK = """
import torch
import triton
import triton.language as tl

from opensapiens.models.flash_attention import _exp2_fma, _exp2_tile


@triton.jit
def _exp2(x_ptr, y_ptr, DEGREE: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(y_ptr + offs, _exp2_fma(tl.load(x_ptr + offs), DEGREE))


@triton.jit
def _tile(x_ptr, y_ptr, FMA_QUARTERS: tl.constexpr, R: tl.constexpr, C: tl.constexpr):
    offs = tl.arange(0, R)[:, None] * C + tl.arange(0, C)[None, :]
    tl.store(y_ptr + offs, _exp2_tile(tl.load(x_ptr + offs), FMA_QUARTERS, 3))


torch.manual_seed(0)
# -inf; the integers and half-integers of [-130, 0] and their fp32 neighbours (where rounding to the nearest integer
# flips); a grid and random points
grid = (torch.arange(-130, 1)[:, None] + torch.tensor([-0.5, 0.0, 0.5])).flatten().float()
x = torch.cat([torch.tensor([float("-inf")]), grid, grid.nextafter(grid + 1), grid.nextafter(grid - 1),
               torch.linspace(-130, 0, 2**15), -130 * torch.rand(2**13)])
x = torch.cat([x, x.new_zeros(-x.numel() % 1024)])
ref = torch.exp2(x.double())
normal = x >= -120
for degree, bound in ((3, 7.6e-5), (5, 2.5e-7)):  # 16-bit inputs / fp32 inputs (_exp2_fma's docstring)
    y = torch.empty_like(x)
    _exp2[(x.numel() // 1024,)](x, y, DEGREE=degree, BLOCK=1024)
    rel = ((y.double() - ref) / ref)[normal].abs().max()
    assert rel < bound, (degree, float(rel))
    assert 0 < y[~normal].max() <= 2**-119 and y[0] <= 2**-124  # below -120 and at -inf: ~0

# a tile split by columns: q quarters on the FMA units, its last ones; MUFU's columns are fp32 exp2 (the polynomial's
# error exceeds 1e-6 somewhere in each of its columns)
x = -20 * torch.rand(16, 64)
for q in range(5):
    y = torch.empty_like(x)
    _tile[(1,)](x, y, FMA_QUARTERS=q, R=16, C=64)
    rel = (y.double() / torch.exp2(x.double()) - 1).abs()
    assert rel.max() < 7.6e-5 and torch.equal(rel.amax(0) > 1e-6, torch.arange(64) >= 64 - 16 * q), q
print("ok")
"""


def test_exp2_on_the_fma_units_against_float64():
    """The polynomial exp2 (degree 3 and 5) within its stated relative error over [-120, 0], ~0 below and at -inf;
    the tile split puts it on the quarters of columns its config names."""
    run_under_interpreter(EXP2_CHECK)


def test_use_flash_attention_switches_the_given_head_dims():
    model = MAE(MAEConfig(get_arch("nano"), (64, 48)))  # encoder head dim 64, decoder 512 / 16 = 32
    assert use_flash_attention(model) == len(model.decoder.blocks)
    assert all(b.attn.kernel == "triton" for b in model.decoder.blocks)
    assert all(b.attn.kernel == "sdpa" for b in model.backbone.blocks)
    assert use_flash_attention(model, head_dims=(32, 64)) == len(model.decoder.blocks) + len(model.backbone.blocks)
    assert all(b.attn.kernel == "triton" for b in model.backbone.blocks)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA")
def test_mae_step_with_flash_attention_matches_sdpa_on_cuda():
    """The MAE loss and every parameter gradient with the decoder on our kernels, against SDPA, bf16 autocast."""
    assert_mae_step_matches(use_flash_attention)
