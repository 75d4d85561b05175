"""Sapiens2's transformer blocks rewritten for inference, as ``fused.py`` rewrites v1's.

Run eagerly, a Sapiens2 block's RMSNorms (q and k per head too), rotary embedding and SwiGLU cost more GPU time than
its GEMMs (pose-0.4B on an H200: 121 ms of elementwise work against 53 ms of GEMMs per batch of 16; call 126), and
compiling the whole model takes a minute. The same exact rewrites as v1's, plus three of Sapiens2's own:

* the stream is carried without the proj and w3 biases (x = x~ + s, s a (C,) sum fixed at load time); each RMSNorm
  reads x~ + s in one Triton pass, and proj and w3 accumulate straight into x~ (cuBLAS with beta = 1, in place);
* LayerScale is folded into the rows of proj's weight and bias (gamma * (a W^T + b) = a (gamma W)^T + gamma b);
* wq, wk and wv run as one GEMM (their weights stacked, bias in cuBLASLt's epilogue); one Triton pass then
  RMS-normalizes every query and key head and rotates the patch tokens' in place in that output, and attention
  (SDPA, cuDNN first, grouped heads as they are) reads q, k, v as views of it;
* silu(gate) * value is one Triton pass over the w12 GEMM's output.

So a block is two norm passes, one q/k pass, one SwiGLU pass, the GEMMs and attention. ``fp8``: the four GEMMs in
e4m3 with each input quantized by the pass that makes it (norm, SwiGLU, a row quantization of attention's output),
as v1's FP8 blocks. Inference only: the stream is updated in place.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..models.sapiens2 import Block2, LayerScale, RMSNorm, Sapiens2ViT, normed_rotated
from .fp8 import fp8_block_linears, quantize_rows
from .fused import ShiftedNorm, _bias, fuse_run


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    """An ``nn.Linear`` holding ``weight`` (out, in) and ``bias`` as they are (no initialization, no copy)."""
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    linear.weight = nn.Parameter(weight, requires_grad=False)
    if bias is not None:
        linear.bias = nn.Parameter(bias, requires_grad=False)
    return linear


def normed_rotated_qkv(qkv: torch.Tensor, batch: int, heads: tuple[int, int], q_norm: nn.Module, k_norm: nn.Module,
                       rope: tuple[torch.Tensor, torch.Tensor] | None, prefix: int):
    """q, k, v (B, heads, N, hd) from the stacked GEMM's (B*N, (heads + 2 kv heads) * hd) output (``heads``: query
    and key/value heads): q and k normed per head and rotated after the ``prefix`` tokens, as
    ``sapiens2.normed_rotated``. On CUDA one Triton pass in place (``kernels.qk_norm_rope``: float32 inside, rounded
    to the angles' dtype before and after the rotation, where the official bf16 code rounds each product too) and
    views of ``qkv``; elsewhere the model's own ops."""
    (nh, nkv), (M, width) = heads, qkv.shape
    N = M // batch
    q, k, v = qkv.view(batch, N, -1, width // (nh + 2 * nkv)).split([nh, nkv, nkv], dim=2)  # B N h hd
    normed = isinstance(q_norm, RMSNorm)  # (the 4K tokenizer's blocks have no q/k norms and no rotation)
    if qkv.is_cuda and (normed or rope is not None):
        try:
            from .kernels import qk_norm_rope
        except ImportError:
            pass
        else:
            qk_norm_rope(qkv, nh, nkv, q_norm.weight if normed else None, k_norm.weight if normed else None,
                         q_norm.eps if normed else 0.0, rope, N, prefix)
            return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    return *normed_rotated(q, k, q_norm, k_norm, rope, prefix), v.transpose(1, 2)


def swiglu(gated: torch.Tensor, fp8: bool = False):
    """silu(gate) * value of a (M, 2H) [gate | value] output, float32 inside: (M, H) in its dtype, or with ``fp8``
    e4m3 rows and float32 row scales (``quantize_rows``). On CUDA one Triton pass (``kernels.swiglu``)."""
    if gated.is_cuda:
        try:
            from .kernels import swiglu as triton_swiglu
        except ImportError:
            pass
        else:
            return triton_swiglu(gated, fp8)
    gate, value = gated.to(torch.promote_types(gated.dtype, torch.float32)).chunk(2, dim=-1)
    y = F.silu(gate) * value
    return quantize_rows(y) if fp8 else y.to(gated.dtype)


class FusedBlock2(nn.Module):
    """A ``Block2`` on the bias-folded stream: x~ (B, N, C) in, the same tensor updated in place out.

    ``shift`` is the sum of the biases folded before this block; ``shift_out`` the sum after it. The block's
    weights are shared with ``block`` except the stacked q/k/v and the LayerScale-folded proj (new tensors).
    """

    def __init__(self, block: Block2, shift: torch.Tensor, fp8: bool = False):
        super().__init__()
        attn, mlp = block.attn, block.mlp
        self.heads = (attn.num_heads, attn.num_kv_heads)  # query, key/value
        self.q_norm, self.k_norm, self.fp8 = attn.q_norm, attn.k_norm, fp8
        with torch.no_grad():
            self.qkv = _linear(torch.cat([attn.wq.weight, attn.wk.weight, attn.wv.weight]),
                               torch.cat([_bias(attn.wq), _bias(attn.wk), _bias(attn.wv)]))
            weight, proj_bias = attn.proj.weight, _bias(attn.proj).to(shift.dtype)
            if isinstance(attn.gamma, LayerScale):  # in float32 at least, rounded once to the weight's dtype
                gamma = attn.gamma.weight.to(shift.dtype)
                self.proj = _linear((weight.to(shift.dtype) * gamma[:, None]).to(weight.dtype), None)
                proj_bias = proj_bias * gamma
            else:
                self.proj = _linear(weight, None)
        self.w12, self.w3 = mlp.w12, mlp.w3
        after_attn = shift + proj_bias
        self.norm1 = ShiftedNorm(block.norm1, shift)
        self.norm2 = ShiftedNorm(block.norm2, after_attn)
        self.register_buffer("shift_out", after_attn + _bias(mlp.w3).to(shift.dtype))
        if fp8:  # the proj and w3 biases live in the shifts
            self.qkv, self.proj, self.w12, self.w3 = fp8_block_linears(self.qkv, self.proj, self.w12, self.w3)

    def _attend(self, qkv: torch.Tensor, batch: int, rope: tuple[torch.Tensor, torch.Tensor] | None,
                prefix: int) -> torch.Tensor:
        """(B*N, stacked q/k/v) -> the heads' outputs (B*N, C) before proj."""
        q, k, v = normed_rotated_qkv(qkv, batch, self.heads, self.q_norm, self.k_norm, rope, prefix)
        out = F.scaled_dot_product_attention(q, k, v, enable_gqa=q.shape[1] != k.shape[1])  # B nh N hd
        return out.transpose(1, 2).reshape(qkv.shape[0], -1)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                prefix: int = 0) -> torch.Tensor:
        if torch.is_grad_enabled():
            raise RuntimeError("FusedBlock2 updates its input in place and is inference-only: call the model under "
                               "torch.inference_mode() or torch.no_grad()")
        B, N, C = x.shape
        stream = x.view(-1, C)  # (B*N, C), shares x's memory
        if self.fp8:
            attended = self._attend(self.qkv.matmul(*self.norm1(x, fp8=True)), B, rope, prefix)
            delta = self.proj.matmul(*quantize_rows(attended))  # bias folded into the shift
            gated = self.w12.matmul(*self.norm2(x, delta=delta.view(x.shape), fp8=True))  # x~ += delta, then norm
            stream.add_(self.w3.matmul(*swiglu(gated, fp8=True)))  # bias folded into shift_out
            return x
        qkv = torch.addmm(self.qkv.bias, self.norm1(x).view(-1, C), self.qkv.weight.t())
        stream.addmm_(self._attend(qkv, B, rope, prefix), self.proj.weight.t())  # x~ += gamma * proj, bias folded
        gated = torch.addmm(_bias(self.w12), self.norm2(x).view(-1, C), self.w12.weight.t())  # (B*N, 2 hidden)
        stream.addmm_(swiglu(gated), self.w3.weight.t())  # x~ += mlp, bias folded into shift_out
        return x


class RestoreBiases(nn.Module):
    """The last step of a run of fused blocks whose output is read without a norm (the 4K tokenizer's window
    tokens): x~ + s, in place."""

    def __init__(self, shift: torch.Tensor):
        super().__init__()
        self.register_buffer("shift", shift.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.add_(self.shift.to(x.dtype))


def fuse_blocks2(backbone: Sapiens2ViT, fp8: bool = False) -> Sapiens2ViT:
    """Swap a Sapiens2 backbone's blocks (the 4K tokenizer's too) for ``FusedBlock2``s and its final norm for the
    matching ``ShiftedNorm``. In place; the backbone's ``forward`` is unchanged: its token tensor (a fresh tensor
    every call) becomes the stream the blocks update."""
    dtype = torch.promote_types(backbone.storage_tokens.dtype, torch.float32)  # biases summed in float32 at least
    zero = torch.zeros(backbone.embed_dim, device=backbone.storage_tokens.device, dtype=dtype)
    def fuse(block: Block2, shift: torch.Tensor) -> FusedBlock2:
        return FusedBlock2(block, shift, fp8)

    if backbone.tokenizer is not None:  # its window tokens are read after its last block, without a norm
        fused, shift = fuse_run(backbone.tokenizer.blocks, zero, fuse)
        backbone.tokenizer.blocks = nn.ModuleList([*fused, RestoreBiases(shift)])
    fused, shift = fuse_run(backbone.blocks, zero, fuse)
    backbone.blocks = nn.ModuleList(fused)
    backbone.norm = ShiftedNorm(backbone.norm, shift)
    return backbone
