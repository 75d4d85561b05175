"""FlashAttention-4's kernels (the optional ``flash-attn-4`` package) behind the qkv contract of our Triton kernels.

FlashAttention-4 is written in CuTe DSL for Hopper and Blackwell: warp-specialized producer and consumer warps,
asynchronous tensor-core products overlapped with the softmax exponentials (FlashAttention-3's schedule on
Hopper). That overlap is what our Triton kernels could not get from Triton 3.6 (``docs/performance.md``), and the
MAE decoder's head dim 32 is where it matters most. The package is optional: ``pip install flash-attn-4``.

q, k and v go in as the three (B, N, H, D) views of the qkv projection's (B, N, 3, H, D) output (FA4 takes strided
tensors), and the backward writes dq, dk, dv into views of one gradient in that layout, so neither direction
copies. FA4's own autograd function is not traceable by ``torch.compile``; here its forward and backward are
``torch.library`` custom ops with an autograd formula, so compiled blocks keep each as one opaque call, as they do
our Triton op (``flash_attention.py``). Built on FA4's ``_flash_attn_fwd`` / ``_flash_attn_bwd`` (checked with
flash-attn-4 4.0.0b36), whose log-sum-exp (B, H, N) is passed from one to the other untouched.

References: Shah et al., "FlashAttention-3: Fast and Accurate Attention with Asynchrony and Low-precision", 2024;
Dao et al., FlashAttention-4 (github.com/Dao-AILab/flash-attention, ``flash_attn/cute``).
"""

from __future__ import annotations

import importlib.util

import torch


def available() -> bool:
    """True if the ``flash-attn-4`` package (``flash_attn.cute``) can be imported."""
    try:
        return importlib.util.find_spec("flash_attn.cute") is not None
    except ModuleNotFoundError:  # no ``flash_attn`` at all
        return False


# Hopper tile choices per head dim where ours beat FA4's own (swept on an H200 by ``bench/fa4_attention.py --tiles``;
# other head dims and GPUs keep FA4's). Forward: (tile_m, tile_n, P V from registers, intra-warpgroup overlap);
# backward: the fields of FA4's ``BwdConfig``. Empty: the sweep found FA4's own as fast as any (docs/performance.md).
FORWARD_TILES: dict[int, tuple[int, int, bool, bool]] = {}
BACKWARD_TILES: dict[int, dict] = {}


def _interface():
    try:
        from flash_attn.cute import interface
    except ImportError as e:
        raise ImportError("attention kernel 'fa4' needs FlashAttention-4: pip install flash-attn-4 "
                          f"(CUDA, Hopper or Blackwell GPU); importing flash_attn.cute failed: {e}") from e
    missing = [name for name in ("_flash_attn_fwd", "_flash_attn_bwd") if not hasattr(interface, name)]
    if missing:
        raise ImportError(f"this flash-attn-4 has no {', '.join(missing)} (opensapiens was checked with 4.0.0b36): "
                          "install that version or choose another attention kernel (--attention sdpa)")
    original = getattr(interface, "_tile_size_bwd_sm90", None)
    if original is not None and not getattr(original, "from_opensapiens", False):
        def backward_tiles(head_dim, head_dim_v, causal, local, *args, **kwargs):
            fields = BACKWARD_TILES.get(head_dim)
            if fields is None or head_dim_v != head_dim or causal or local or args or kwargs.get(
                    "sparse_block_size_q") is not None:
                return original(head_dim, head_dim_v, causal, local, *args, **kwargs)
            return interface.BwdConfig(**fields)

        backward_tiles.from_opensapiens = True
        interface._tile_size_bwd_sm90 = backward_tiles  # FA4 picks backward tiles only through this function
    return interface


def _forward_tiles(qkv: torch.Tensor) -> dict:
    tiles = FORWARD_TILES.get(qkv.shape[-1])
    if tiles is None or not qkv.is_cuda or torch.cuda.get_device_capability(qkv.device)[0] != 9:
        return {}
    return {"tile_mn": tiles[:2], "mma_pv_is_rs": tiles[2], "intra_wg_overlap": tiles[3]}


def _check(qkv: torch.Tensor) -> None:
    if qkv.ndim != 5 or qkv.shape[2] != 3 or qkv.stride(-1) != 1:
        raise ValueError(f"fa4_attention: needs a (B, N, 3, H, D) qkv view with D contiguous, got shape "
                         f"{tuple(qkv.shape)} strides {qkv.stride()}")
    D = qkv.shape[-1]
    if D % 8 or not 8 <= D <= 256:
        raise ValueError(f"fa4_attention: head dim must be a multiple of 8 in 8..256, got {D}")


@torch.library.custom_op("opensapiens::fa4_attention_forward", mutates_args=())
def fa4_attention_forward(qkv: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, N, 3, H, D) -> output (B, N, H, D) in qkv's dtype and FA4's log-sum-exp (B, H, N) for the backward."""
    _check(qkv)
    q, k, v = qkv.unbind(2)  # B N H D views, no copies
    out, lse = _interface()._flash_attn_fwd(q, k, v, softmax_scale=scale, return_lse=True, **_forward_tiles(qkv))[:2]
    return out, lse


@fa4_attention_forward.register_fake
def _(qkv, scale):
    B, N, _, H, D = qkv.shape
    return qkv.new_empty(B, N, H, D), qkv.new_empty(B, H, N, dtype=torch.float32)


@torch.library.custom_op("opensapiens::fa4_attention_backward", mutates_args=())
def fa4_attention_backward(grad_out: torch.Tensor, qkv: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
                           scale: float, deterministic: bool) -> torch.Tensor:
    """The gradient of ``fa4_attention_forward``'s output with respect to qkv, in qkv's (B, N, 3, H, D) layout."""
    dqkv = torch.empty_like(qkv, memory_format=torch.contiguous_format)
    grads = dqkv.unbind(2)
    q, k, v = qkv.unbind(2)
    dq, dk, dv = grads
    returned = _interface()._flash_attn_bwd(q, k, v, out, grad_out, lse, scale, deterministic=deterministic,
                                            dq=dq, dk=dk, dv=dv)[:3]
    for dst, src in zip(grads, returned, strict=True):
        if src.data_ptr() != dst.data_ptr():  # a version that ignores the given buffers
            dst.copy_(src)
    return dqkv


@fa4_attention_backward.register_fake
def _(grad_out, qkv, out, lse, scale, deterministic):
    return torch.empty_like(qkv, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output) -> None:
    qkv, scale = inputs
    out, lse = output
    ctx.save_for_backward(qkv, out, lse)
    ctx.mark_non_differentiable(lse)
    ctx.scale = scale
    ctx.deterministic = torch.are_deterministic_algorithms_enabled()  # FA4's dQ accumulation is atomic otherwise


def _backward(ctx, grad_out: torch.Tensor, grad_lse: torch.Tensor | None):
    qkv, out, lse = ctx.saved_tensors
    return fa4_attention_backward(grad_out, qkv, out, lse, ctx.scale, ctx.deterministic), None


fa4_attention_forward.register_autograd(_backward, setup_context=_setup_context)


def fa4_attention(qkv: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(q k^T * scale) v per head of a qkv projection output viewed as (B, N, 3, H, D) -> (B, N, H, D).

    Differentiable; bf16 or fp16 CUDA tensors on a GPU that FlashAttention-4 supports.
    """
    return fa4_attention_forward(qkv, scale)[0]
