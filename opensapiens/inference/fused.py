"""Transformer blocks rewritten for inference so that the residual stream needs no elementwise pass of its own.

On an H100/H200 the GEMMs of a Sapiens block run at ~95 % of the matmul peak and attention is cuDNN's; what else
costs time is memory passes: residual add + LayerNorm twice per block, GELU over the 4C-wide hidden, the biases (13 %
of the compiled pose-1B forward, `bench/results/profile_pose_1b.json`). Three exact rewrites remove most of them:

* Biases are per-channel constants, so the stream can be carried without the proj and fc2 biases: x = x~ + s, where
  s, a (C,) vector fixed at load time, is the sum of those biases so far. Each LayerNorm reads x~ + s (the add is
  free inside the norm's kernel, a hand-written Triton one on CUDA), the final norm too.
* The proj and fc2 GEMMs then accumulate straight into the stream, x~ += a W^T (cuBLAS with beta = 1, in place):
  the residual add becomes the GEMM epilogue's read of x~.
* fc1 runs with cuBLASLt's fused bias + GELU epilogue. It computes GELU's tanh form, which is within 5e-4 of the
  exact erf form everywhere (at |x| ~ 2.7, where bf16's spacing is 0.016).

A block is then two norm passes (read x~, write its normalized copy), the GEMMs and attention. Inference only: the
stream is updated in place, so these blocks refuse to run while autograd records.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..models.vit import Block, SapiensViT
from .fp8 import fp8_block_linears, quantize_rows


def _shifted_layer_norm(x: torch.Tensor, shift: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                        eps: float, delta: torch.Tensor | None = None, fp8: bool = False, rms: bool = False):
    """LayerNorm(x + shift) over the last dim (``rms``: RMSNorm(x + shift), no bias), computed in float32 (or x's
    wider dtype), returned in x's dtype.

    ``delta``: x += delta first, in place. ``fp8``: e4m3 values and float32 row scales instead (``quantize_rows``).
    """
    if delta is not None:
        x.add_(delta)
    dtype = torch.promote_types(x.dtype, torch.float32)
    if rms:
        y = F.rms_norm(x.to(dtype) + shift, x.shape[-1:], weight.to(dtype), eps)
    else:
        y = F.layer_norm(x.to(dtype) + shift, x.shape[-1:], weight.to(dtype),
                         None if bias is None else bias.to(dtype), eps)
    if fp8:
        return quantize_rows(y.reshape(-1, y.shape[-1]))
    return y.to(x.dtype)


def shifted_layer_norm(x: torch.Tensor, shift: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                       eps: float, delta: torch.Tensor | None = None, fp8: bool = False, rms: bool = False):
    """``_shifted_layer_norm`` as one Triton kernel on CUDA (``kernels.py``: one read and one write per row);
    where Triton is missing (PyTorch builds without it), the plain PyTorch ops."""
    if x.is_cuda:
        try:
            from .kernels import shifted_layer_norm as triton_shifted_layer_norm
        except ImportError:
            pass
        else:
            return triton_shifted_layer_norm(x, shift, weight, bias, eps, delta, fp8, rms)
    return _shifted_layer_norm(x, shift, weight, bias, eps, delta, fp8, rms)


class ShiftedNorm(nn.Module):
    """LayerNorm or RMSNorm of (x~ + shift), for a stream carried without its folded biases; shares the wrapped
    norm's parameters."""

    def __init__(self, norm: nn.LayerNorm | nn.RMSNorm, shift: torch.Tensor):
        super().__init__()
        self.norm, self.rms = norm, isinstance(norm, nn.RMSNorm)
        self.register_buffer("shift", shift.detach().clone())

    def forward(self, x: torch.Tensor, delta: torch.Tensor | None = None, fp8: bool = False):
        # RMSNorm(eps=None), as torch: the epsilon of the type it computes in (float32 for bf16/fp16 inputs)
        eps = self.norm.eps
        if eps is None:
            eps = torch.finfo(torch.promote_types(x.dtype, torch.float32)).eps
        return shifted_layer_norm(x, self.shift, self.norm.weight, getattr(self.norm, "bias", None), eps, delta, fp8,
                                  self.rms)


# GELU's form in the FP8 blocks' quantization pass: the tanh form is within 5e-4 of erf (the bf16 blocks' cuBLASLt
# epilogue uses it too), far inside e4m3's 6 % steps, and costs one exp2 where erf costs a polynomial per element.
FP8_GELU = "tanh"


def _bias(linear: nn.Linear) -> torch.Tensor:
    if linear.bias is not None:
        return linear.bias
    return linear.weight.new_zeros(linear.out_features)


class FusedBlock(nn.Module):
    """A ``Block`` on the bias-folded stream: x~ (B, N, C) in, the same tensor updated in place out.

    ``shift`` is the sum of the biases folded before this block; ``shift_out`` the sum after it.

    ``fp8``: the four GEMMs in e4m3 (``Fp8Linear``, swapped into the block's modules in place); attention stays
    bf16 (cuDNN's). Each GEMM's input is quantized by the pass that makes it: the LayerNorm kernel (which also adds
    the pending proj output into the stream), a row quantization of the attention output, and a GELU +
    quantization pass over the fc1 output; the fc2 output is added into the stream.
    """

    def __init__(self, block: Block, shift: torch.Tensor, fp8: bool = False):
        super().__init__()
        self.attn, self.mlp, self.fp8 = block.attn, block.mlp, fp8
        after_attn = shift + _bias(block.attn.proj).to(shift.dtype)
        self.norm1 = ShiftedNorm(block.norm1, shift)
        self.norm2 = ShiftedNorm(block.norm2, after_attn)
        self.register_buffer("shift_out", after_attn + _bias(block.mlp.fc2).to(shift.dtype))
        if fp8:  # the proj and fc2 biases live in the shifts
            attn, mlp = self.attn, self.mlp
            attn.qkv, attn.proj, mlp.fc1, mlp.fc2 = fp8_block_linears(attn.qkv, attn.proj, mlp.fc1, mlp.fc2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            raise RuntimeError("FusedBlock updates its input in place and is inference-only: call the model under "
                               "torch.inference_mode() or torch.no_grad()")
        if self.fp8:
            return self._forward_fp8(x)
        C = x.shape[-1]
        stream = x.view(-1, C)  # (B*N, C), shares x's memory
        attended = self.attn.attend(self.norm1(x))
        attended = attended.reshape(-1, attended.shape[-1])  # (B*N, heads * head dim), head dim maybe padded
        stream.addmm_(attended, self.attn.proj.weight.t())  # x~ += attn proj, bias folded into the shift
        fc1, fc2 = self.mlp.fc1, self.mlp.fc2
        hidden = torch._addmm_activation(_bias(fc1), self.norm2(x).reshape(-1, C), fc1.weight.t(), use_gelu=True)
        stream.addmm_(hidden, fc2.weight.t())  # x~ += mlp, bias folded into shift_out
        return x

    def _forward_fp8(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        attn, mlp = self.attn, self.mlp
        qkv = attn.qkv.matmul(*self.norm1(x, fp8=True))  # (B*N, 3 * heads * head dim) bf16
        attended = attn.attend_qkv(qkv.view(B, N, -1)).reshape(B * N, -1)
        delta = attn.proj.matmul(*quantize_rows(attended))  # bias folded into the shift
        hidden = mlp.fc1.matmul(*self.norm2(x, delta=delta.view(x.shape), fp8=True))  # x~ += delta, then norm
        x.view(-1, C).add_(mlp.fc2.matmul(*quantize_rows(hidden, gelu=FP8_GELU)))  # x~ += mlp, bias in shift_out
        return x


def fuse_run(blocks: nn.ModuleList, shift: torch.Tensor, fuse: Callable[[nn.Module, torch.Tensor], nn.Module]
             ) -> tuple[list[nn.Module], torch.Tensor]:
    """``fuse(block, shift)`` of each block in turn, each given the sum of the biases folded before it (``shift``
    at the first); the fused blocks and the sum after the last (their ``shift_out``)."""
    fused = []
    for block in blocks:
        fused.append(fuse(block, shift))
        shift = fused[-1].shift_out
    return fused, shift


def fuse_blocks(backbone: SapiensViT, fp8: bool = False) -> SapiensViT:
    """Swap the backbone's blocks for ``FusedBlock``s and its final norm for the matching ``ShiftedNorm``.

    In place; parameters are shared, not copied (``fp8``: the blocks' Linears become e4m3 copies). The backbone's
    ``forward`` is unchanged: its token tensor (patch embedding + position, a fresh tensor every call) becomes the
    stream the blocks update.
    """
    dtype = torch.promote_types(backbone.pos_embed.dtype, torch.float32)  # biases summed in float32 at least
    shift = torch.zeros(backbone.embed_dim, device=backbone.pos_embed.device, dtype=dtype)
    fused, shift = fuse_run(backbone.blocks, shift, lambda block, shift: FusedBlock(block, shift, fp8))
    backbone.blocks = nn.ModuleList(fused)
    backbone.norm = ShiftedNorm(backbone.norm, shift)
    return backbone
