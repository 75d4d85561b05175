"""Our Triton FlashAttention (forward + backward) against float64 attention; its switch in the MAE model."""

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
# with a row stride wider than its data (strides are honoured)
cases = [(2, 70, 2, 32, torch.float32, FlashConfig((32, 32, 4, 1), (32, 32, 4, 1), (32, 32, 4, 1))),
         (1, 64, 3, 16, torch.float32, FlashConfig((32, 16, 4, 1), (16, 32, 4, 1), (32, 16, 4, 1))),
         (2, 45, 1, 64, torch.float16, FlashConfig((16, 32, 4, 1), (32, 16, 4, 1), (16, 16, 4, 1))),
         (1, 20, 2, 16, torch.float16, FlashConfig((16, 32, 4, 1), (32, 16, 4, 1), (16, 32, 4, 1)))]  # N < BLOCK_N
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
    """Forward and backward (dq, dk, dv written into the qkv layout) run by Triton's interpreter on the CPU, against
    float64 autograd; and the custom op under torch.compile."""
    run_under_interpreter(KERNEL_CHECK)


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
