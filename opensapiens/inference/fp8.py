"""FP8 (e4m3) inference: row-scaled activations and channel-scaled weights for ``torch._scaled_mm``.

``Fp8Linear`` holds a Linear's weight in e4m3, each output channel scaled to the e4m3 range (amax / 448). Its
``forward`` quantizes the activation rows itself (the whole-model compile path, ``convert_to_fp8``); the fused
blocks (``fused.py``) hand ``matmul`` activations that the LayerNorm or GELU kernel already quantized on its way out.
``quantize_rows`` is that quantization: on CUDA one Triton pass (``kernels.rows_to_e4m3``), elsewhere PyTorch ops.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

E4M3_MAX = 448.0


def _quantize_rows(x: torch.Tensor, gelu: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.float()
    if gelu:
        x = F.gelu(x, approximate="tanh" if gelu == "tanh" else "none")
    scale = x.abs().amax(dim=-1, keepdim=True).clamp_min(1e-30) / E4M3_MAX  # (M, 1)
    return (x / scale).to(torch.float8_e4m3fn), scale


def quantize_rows(x: torch.Tensor, gelu: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, C) -> e4m3 values (M, C) and float32 row scales (M, 1) with x ~= values * scales; ``gelu``: of GELU(x),
    its "erf" (exact) or "tanh" form."""
    if x.is_cuda:
        try:
            from .kernels import rows_to_e4m3
        except ImportError:
            pass
        else:
            return rows_to_e4m3(x.contiguous(), gelu)
    return _quantize_rows(x, gelu)


def takes_fp8(linear: nn.Linear) -> bool:
    """Whether FP8 tensor cores take this Linear's GEMM (both sizes multiples of 16)."""
    return linear.in_features % 16 == 0 and linear.out_features % 16 == 0


class Fp8Linear(nn.Module):
    """y = x W^T + b with x and W in float8 e4m3: rows of x and rows of W scaled to the e4m3 range."""

    def __init__(self, linear: nn.Linear, bias: bool = True):
        super().__init__()
        w = linear.weight.detach().float()  # (out, in)
        scale = w.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / E4M3_MAX  # (out, 1)
        self.register_buffer("weight_fp8", (w / scale).to(torch.float8_e4m3fn))  # (out, in) row-major
        self.register_buffer("weight_scale", scale.t().contiguous())  # (1, out) float32
        keep = bias and linear.bias is not None
        self.register_buffer("bias", linear.bias.detach().to(torch.bfloat16) if keep else None)
        self.out_features = linear.out_features

    def matmul(self, xq: torch.Tensor, x_scale: torch.Tensor) -> torch.Tensor:
        """(M, in) e4m3 rows with their (M, 1) float32 scales -> (M, out) bf16."""
        if not xq.is_cuda:  # the same arithmetic in float32 (CPU _scaled_mm takes no row scales before torch 2.14)
            y = (xq.float() * x_scale) @ (self.weight_fp8.float() * self.weight_scale.t()).t()
            return (y if self.bias is None else y + self.bias.float()).bfloat16()
        return torch._scaled_mm(xq, self.weight_fp8.t(), scale_a=x_scale, scale_b=self.weight_scale,
                                bias=self.bias, out_dtype=torch.bfloat16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        xq, x_scale = _quantize_rows(x.reshape(-1, shape[-1]))
        return self.matmul(xq, x_scale).reshape(*shape[:-1], self.out_features)


def fp8_block_linears(qkv: nn.Linear, proj: nn.Linear, up: nn.Linear, down: nn.Linear) -> tuple[Fp8Linear, ...]:
    """A fused block's four GEMMs in e4m3; proj's and down's biases are left out (the fused blocks carry them in the
    stream's shifts). Raises ``ValueError`` for sizes FP8 tensor cores do not take."""
    refused = [(m.in_features, m.out_features) for m in (qkv, proj, up, down) if not takes_fp8(m)]
    if refused:
        raise ValueError(f"FP8 blocks need GEMM sizes that are multiples of 16 (FP8 tensor cores); this block has "
                         f"Linears of (in, out) {refused}")
    return Fp8Linear(qkv), Fp8Linear(proj, bias=False), Fp8Linear(up), Fp8Linear(down, bias=False)


def convert_to_fp8(model: nn.Module) -> nn.Module:
    """Replace the Linear layers inside the backbone's transformer blocks (v1: qkv, proj, fc1, fc2; Sapiens2: wq, wk,
    wv, proj, w12, w3; not the 4K tokenizer's, which the fused FP8 path converts) by ``Fp8Linear``, in place."""
    blocks = model.backbone.blocks if hasattr(model, "backbone") else model.blocks
    for block in blocks:
        for _name, child in list(block.named_modules()):
            for attr, sub in list(child.named_children()):
                if isinstance(sub, nn.Linear) and takes_fp8(sub):
                    setattr(child, attr, Fp8Linear(sub))
    return model
