"""Our Triton bias + GELU op (forward, dh and the fused bias gradient) against float64 autograd; its switch."""

import math

import pytest
import torch
from kernel_checks import assert_mae_step_matches, run_under_interpreter

from opensapiens.models.mae import MAE, MAEConfig
from opensapiens.models.vit import Mlp, get_arch
from opensapiens.training.speed import use_fused_gelu

KERNEL_CHECK = """
import math

import torch
import torch.nn.functional as F

from opensapiens.models.gelu import GeluConfig, bias_gelu

torch.manual_seed(0)
# |ours - float64| <= EPS |float64| + 2e-6: the output's rounding (fp16: half an ulp; bf16: a whole ulp, as the
# interpreter truncates float32 -> bf16 where the GPU rounds to nearest) plus the float32 math's error
EPS = {torch.float32: 2**-22, torch.float16: 2**-11, torch.bfloat16: 2**-7}


def close(ours, ref, dtype, what):
    assert ours.dtype == dtype and ours.shape == ref.shape, (what, ours.dtype, ours.shape)
    err = (ours.double() - ref).abs()
    assert (err <= EPS[dtype] * ref.abs() + 2e-6).all(), (what, dtype, float(err.max()))


def base(shape, pad, dtype):
    # a view of a wider (padded) tensor: strides are honoured, or a copy made where they cannot be
    wide = torch.randn(*[s + p for s, p in zip(shape, pad)], dtype=torch.float64) * 3
    return wide.to(dtype), tuple(slice(0, s) for s in shape)


# (shape, padding of the underlying tensor, h dtype, bias dtype, config): odd row counts, columns not a multiple of
# the column block (masks), several row blocks per backward program; a 3-D view whose rows share one stride
# (no copy), one whose rows do not (copied), a bf16 bias (FSDP's bf16 parameters), the default config
cases = [((37, 70), (0, 0), torch.float32, torch.float32, GeluConfig((8, 32, 4), (4, 32, 4, 1))),
         ((3, 13, 100), (0, 0, 8), torch.float16, torch.float32, GeluConfig((16, 64, 4), (8, 64, 4, 2))),
         ((3, 13, 64), (0, 3, 8), torch.bfloat16, torch.float32, GeluConfig((16, 32, 4), (4, 16, 4, 1))),
         ((45, 24), (0, 0), torch.bfloat16, torch.bfloat16, GeluConfig((8, 16, 4), (8, 8, 4, 3))),
         ((50, 300), (0, 0), torch.float16, torch.float32, None),
         ((0, 40), (0, 0), torch.float16, torch.float32, None)]
for shape, pad, dtype, bias_dtype, config in cases:
    wide, idx = base(shape, pad, dtype)
    wide.requires_grad_()
    h = wide[idx]
    bias = (torch.randn(shape[-1]) * 2).to(bias_dtype).requires_grad_()
    grad = torch.randn(shape, dtype=torch.float64).to(dtype)
    y = bias_gelu(h, bias, config)
    y.backward(grad)
    h64, b64 = h.detach().double().requires_grad_(), bias.detach().double().requires_grad_()
    ref = F.gelu(h64 + b64)  # exact erf GELU
    ref.backward(grad.double())
    close(y.detach(), ref.detach(), dtype, "y")
    close(wide.grad[idx], h64.grad, dtype, "dh")
    outside = wide.grad.clone()
    outside[idx] = 0
    assert (outside == 0).all()  # nothing written outside the view
    err = (bias.grad.double() - b64.grad).abs()  # summed in float32 from float32 dh: ~ rows x float32 eps
    assert bias.grad.dtype == bias_dtype
    assert (err <= EPS[bias_dtype] * b64.grad.abs() + 1e-5 * (1 + math.prod(shape[:-1]))).all(), (shape, err.max())

# inside torch.compile (the pretraining path compiles every block): one opaque op, same values and gradients
lin = torch.nn.Linear(48, 96)
x = torch.randn(2, 21, 48)


def f(x):
    return bias_gelu(F.linear(x, lin.weight), lin.bias).square().sum()


compiled = torch.compile(f, fullgraph=True)(x)
compiled.backward()
grads = [lin.weight.grad, lin.bias.grad]
lin.zero_grad(set_to_none=True)
eager = f(x)
eager.backward()
assert torch.allclose(compiled, eager)
assert torch.allclose(grads[0], lin.weight.grad) and torch.allclose(grads[1], lin.bias.grad)
print("ok")
"""


def test_bias_gelu_kernels_against_float64():
    """Forward, dh and the bias gradient run by Triton's interpreter on the CPU against float64 autograd of
    ``F.gelu(h + b)``, for float32/fp16/bf16, masked edges and strided or copied 3-D input; and under torch.compile."""
    run_under_interpreter(KERNEL_CHECK)


def test_erf_approximation_against_float64():
    """The kernels' normal CDF (Abramowitz & Stegun 7.1.26, constants as the kernels use them) in float64: erf
    within 2e-7 of torch's over [-10, 10], so GELU(x) = x Phi(x) and GELU' = Phi + x phi within 1e-7 (|x| <= 1)."""
    pytest.importorskip("triton")
    from opensapiens.models import gelu

    x = torch.linspace(-10, 10, 400_001, dtype=torch.float64)
    t = 1 / (1 + gelu.P.value * x.abs())
    a1, a2, a3, a4, a5 = (a.value for a in (gelu.A1, gelu.A2, gelu.A3, gelu.A4, gelu.A5))
    e = torch.exp2(x * x * gelu.NEG_HALF_LOG2E.value)
    q = 0.5 * e * (t * (a1 + t * (a2 + t * (a3 + t * (a4 + t * a5)))))
    cdf = torch.where(x >= 0, 1 - q, q)
    assert (2 * cdf - 1 - torch.special.erf(x / math.sqrt(2))).abs().max() < 2e-7
    exact = 0.5 * (1 + torch.special.erf(x / math.sqrt(2)))
    density = torch.exp(-x * x / 2) / math.sqrt(2 * math.pi)
    assert (e * gelu.INV_SQRT_2PI.value - density).abs().max() < 1e-15
    assert ((cdf + x * e * gelu.INV_SQRT_2PI.value) - (exact + x * density)).abs().max() < 1e-7


def test_use_fused_gelu_switches_every_mlp():
    pytest.importorskip("triton")
    model = MAE(MAEConfig(get_arch("nano"), (64, 48)))
    mlps = [m for m in model.modules() if isinstance(m, Mlp)]
    assert len(mlps) == len(model.backbone.blocks) + len(model.decoder.blocks)
    keys = set(model.state_dict())
    x = torch.randn(2, 5, mlps[0].fc1.in_features)
    before = mlps[0](x)
    assert use_fused_gelu(model) == len(mlps)
    assert all(m.fused_gelu for m in mlps) and set(model.state_dict()) == keys
    assert torch.equal(mlps[0](x), before)  # on the CPU the plain path stays


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA")
def test_mae_step_with_fused_gelu_matches_on_cuda():
    """The MAE loss and every parameter gradient with the MLPs on our bias + GELU op, against the plain MLP, bf16
    autocast."""
    assert assert_mae_step_matches(use_fused_gelu) > 0
