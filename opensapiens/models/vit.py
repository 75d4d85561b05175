"""The Sapiens v1 backbone: a plain pre-norm ViT at patch 16.

    x (B, 3, H, W) -> patch conv -> (+cls) + pos_embed -> L x Block -> LayerNorm -> (B, C, H/16, W/16)

Matches the official mmpretrain ``VisionTransformer`` as configured by Sapiens: LayerNorm eps 1e-6, fused qkv with
bias, exact (erf) GELU, no layer scale, final norm after the last block, learned position embedding resized bicubic
(align_corners=False, in fp32) when the token grid differs from the one it was trained at.

References:
    Khirodkar et al., "Sapiens: Foundation for Human Vision Models", ECCV 2024.
    Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


@dataclass(frozen=True)
class ViTArch:
    """Every structural choice of one backbone size."""

    name: str
    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float = 4.0
    patch_size: int = 16
    generation: ClassVar[int] = 1  # (Sapiens2Arch's is 2; not a field, so configs are written as before)

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def stride(self) -> int:
        """Input pixels per output token along each axis."""
        return self.patch_size


ARCHS: dict[str, ViTArch] = {
    a.name: a
    for a in (
        ViTArch("0.3b", 1024, 24, 16),  # ViT-L width/depth
        ViTArch("0.6b", 1280, 32, 16),  # ViT-H
        ViTArch("1b", 1536, 40, 24),  # ViT-g
        ViTArch("2b", 1920, 48, 32),  # head dim 60
        ViTArch("small", 384, 12, 6),  # ~21M, for single-GPU experiments
        ViTArch("tiny", 192, 12, 3),  # ~5.5M, trains on a CPU
        ViTArch("nano", 128, 6, 2),  # ~1.2M, unit tests
    )
}


def get_arch(name: str | ViTArch):
    """Look up an architecture by name ("0.3b", "sapiens_1b", "2B", "tiny", ...; "sapiens2_1b" ... for Sapiens2)."""
    if not isinstance(name, str):  # an arch already (ViTArch, Sapiens2Arch)
        return name
    if name.lower().startswith("sapiens2"):
        from .sapiens2 import get_arch2  # (sapiens2 imports this module)

        return get_arch2(name)
    key = name.lower().removeprefix("sapiens_").removeprefix("sapiens-")
    if key not in ARCHS:
        raise ValueError(f"unknown architecture {name!r}; known: {', '.join(ARCHS)}")
    return ARCHS[key]


def arch_from_width(embed_dim: int, depth: int, num_heads: int | None = None) -> ViTArch:
    """Recover the architecture of a checkpoint from its width and depth (official sizes first)."""
    for a in ARCHS.values():
        if a.embed_dim == embed_dim and a.depth == depth and num_heads in (None, a.num_heads):
            return a
    same_width = next((a for a in ARCHS.values() if a.embed_dim == embed_dim), None)
    if same_width is not None and same_width.name[0].isdigit():  # an official width with another depth: the blocks
        # are counted from the keys, so a file cut short would otherwise load as a shallower model without a word
        warnings.warn(f"width {embed_dim} is Sapiens-{same_width.name}'s, but the checkpoint has {depth} blocks, not "
                      f"{same_width.depth}: loaded as a {depth}-block model (a truncated or modified file?)",
                      stacklevel=2)
    if num_heads is not None:
        return ViTArch(f"custom-{embed_dim}x{depth}", embed_dim, depth, num_heads)
    heads = same_width.num_heads if same_width is not None else None
    if heads is None:
        heads = max(embed_dim // 64, 1)
        warnings.warn(f"width {embed_dim} is not an official Sapiens size: assuming {heads} attention heads "
                      "(head dim 64); pass num_heads= / --num-heads if the checkpoint used another count",
                      stacklevel=2)
    return ViTArch(f"custom-{embed_dim}x{depth}", embed_dim, depth, heads)


class PatchEmbed(nn.Module):
    """(B, 3, H, W) -> (B, h*w, C): the 16x16/16 conv, computed as one GEMM over the patches.

    ``padding=0`` pads the bottom/right corner with zeros up to a multiple of the patch (mmcv "corner" padding);
    ``padding=p > 0`` is a symmetric conv padding (Sapiens pose/normal checkpoints use 2: the grid shifts by 2 px).

    A stride-16 conv with a 16x16 kernel is a matmul of the (B*h*w, 3*16*16) patch matrix with the (C, 3*16*16)
    weight. cuDNN runs this conv with a generic implicit-GEMM kernel at ~30 TFLOP/s on an H100 (3 % of an MAE step,
    2-3 % of 0.3B inference); the explicit GEMM runs at matmul speed. The weight stays a ``Conv2d``'s, so checkpoints
    keep their layout.
    """

    def __init__(self, embed_dim: int, patch_size: int = 16, padding: int = 0):
        super().__init__()
        self.patch_size = patch_size
        self.padding = padding
        self.proj = nn.Conv2d(3, embed_dim, patch_size, stride=patch_size, padding=padding)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        p, pad = self.patch_size, self.padding
        H, W = x.shape[-2:]
        if pad == 0:  # corner padding up to a multiple of the patch
            h, w = -(-H // p), -(-W // p)
            x = F.pad(x, (0, w * p - W, 0, h * p - H))
        else:  # the conv's symmetric padding; its last partial patch row/column is dropped, as the conv does
            h, w = (H + 2 * pad - p) // p + 1, (W + 2 * pad - p) // p + 1
            x = F.pad(x, (pad, w * p - W - pad, pad, h * p - H - pad))  # negative = crop
        B, C = x.shape[:2]
        patches = x.reshape(B, C, h, p, w, p).permute(0, 2, 4, 1, 3, 5).reshape(B, h * w, C * p * p)
        weight = self.proj.weight.reshape(self.proj.out_channels, -1)  # (E, C*p*p), ordered (C, row, col)
        return F.linear(patches, weight, self.proj.bias), (h, w)  # B N E


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv projection; (B, N, C) -> (B, N, C).

    Two exact ways to give fused attention kernels a head dim they take (the 2B model's 60 -> 64), both keeping the
    softmax scale at 1/sqrt(60) and the padded output columns at zero:
    ``padded_head_dim`` zero-pads q, k, v at run time (training: parameters keep their shapes);
    ``pad_head_weights`` (inference) zero-pads the qkv weight rows and proj weight columns once, so the padded q, k, v
    come straight out of the qkv GEMM and the attention output goes straight into proj, without copies.

    ``kernel = "triton"`` runs our FlashAttention kernels (``flash_attention.py``) instead of SDPA on CUDA in bf16 or
    fp16: faster than every SDPA backend at head dim 32 (the MAE decoder), forward and backward. (In float32 SDPA
    keeps it: Triton's float32 products would round to TF32.) ``kernel = "fa4"`` runs FlashAttention-4's kernels
    (``fa4_attention.py``, the optional ``flash-attn-4`` package) the same way. Both take head dims that are
    multiples of 8, after ``padded_head_dim``'s padding (else SDPA runs).
    """

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.padded_head_dim: int | None = None
        self.scale: float | None = None  # softmax scale; None = 1/sqrt(the qkv layout's head dim)
        self.kernel = "sdpa"  # or "triton" / "fa4" (CUDA, bf16/fp16)

    @property
    def head_dim(self) -> int:
        """The head dim of the qkv layout (the padded one after ``pad_head_weights``)."""
        return self.qkv.out_features // (3 * self.num_heads)

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        """The heads' outputs before the output projection: (B, N, C) -> (B, N, heads * head dim)."""
        return self.attend_qkv(self.qkv(x))

    def attend_qkv(self, qkv: torch.Tensor) -> torch.Tensor:
        """``attend`` from the qkv projection's output: (B, N, 3 * heads * head dim) -> (B, N, heads * head dim)."""
        B, N, _ = qkv.shape
        hd = qkv.shape[-1] // (3 * self.num_heads)
        kernel_hd = max(self.padded_head_dim or hd, hd)
        if self.kernel != "sdpa" and qkv.is_cuda and qkv.dtype != torch.float32 and kernel_hd % 8 == 0:
            if self.kernel == "fa4":
                from .fa4_attention import fa4_attention as attention
            else:
                from .flash_attention import flash_attention as attention  # imports Triton: only where it runs
            qkv = qkv.view(B, N, 3, self.num_heads, hd)
            if kernel_hd > hd:  # one copy of q, k, v together (the SDPA path below pads them one by one)
                qkv = F.pad(qkv, (0, kernel_hd - hd))
            x = attention(qkv, self.scale or hd**-0.5)  # B N nh kernel_hd
            return x[..., :hd].reshape(B, N, self.num_heads * hd)
        q, k, v = qkv.reshape(B, N, 3, self.num_heads, hd).permute(2, 0, 3, 1, 4).unbind(0)  # B nh N hd
        if self.padded_head_dim and self.padded_head_dim > hd:
            pad = (0, self.padded_head_dim - hd)
            x = F.scaled_dot_product_attention(F.pad(q, pad), F.pad(k, pad), F.pad(v, pad), scale=hd**-0.5)[..., :hd]
        else:
            x = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        return x.transpose(1, 2).reshape(B, N, self.num_heads * hd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.attend(x))


@torch.no_grad()
def pad_head_weights(attn: Attention, head_dim: int) -> None:
    """Zero-pad every head of ``attn`` to ``head_dim`` in its weights (inference; see ``Attention``). In place."""
    nh, hd = attn.num_heads, attn.head_dim
    if head_dim <= hd:
        return
    pad = head_dim - hd
    qkv, proj = attn.qkv, attn.proj
    like = {"device": qkv.weight.device, "dtype": qkv.weight.dtype}
    new_qkv = nn.Linear(qkv.in_features, 3 * nh * head_dim, bias=qkv.bias is not None, **like)
    new_qkv.weight.copy_(F.pad(qkv.weight.view(3, nh, hd, -1), (0, 0, 0, pad)).reshape(3 * nh * head_dim, -1))
    if qkv.bias is not None:
        new_qkv.bias.copy_(F.pad(qkv.bias.view(3, nh, hd), (0, pad)).reshape(-1))
    new_proj = nn.Linear(nh * head_dim, proj.out_features, bias=proj.bias is not None, **like)
    new_proj.weight.copy_(F.pad(proj.weight.view(-1, nh, hd), (0, pad)).reshape(proj.out_features, -1))
    if proj.bias is not None:
        new_proj.bias.copy_(proj.bias)
    attn.qkv, attn.proj, attn.scale = new_qkv, new_proj, (attn.scale or hd**-0.5)


class Mlp(nn.Module):
    """fc1 -> exact GELU -> fc2; (B, N, C) -> (B, N, C).

    ``fused_gelu = True`` runs fc1's GEMM without its bias and the bias add + GELU as one Triton op (``gelu.py``:
    forward and backward, the bias gradient fused into the backward) where fc1's output is bf16 or fp16 on CUDA.
    """

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()  # exact erf GELU, as the official FFN
        self.fc2 = nn.Linear(hidden, dim)
        self.fused_gelu = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused_gelu and x.is_cuda:
            h = F.linear(x, self.fc1.weight)  # (B, N, hidden), bias added by the GELU op
            if h.dtype in (torch.bfloat16, torch.float16):
                from .gelu import bias_gelu  # imports Triton: only where it runs

                return self.fc2(bias_gelu(h, self.fc1.bias))
            return self.fc2(self.act(h + self.fc1.bias))  # float32: Inductor's GELU
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        x = x + self.mlp(self.norm2(x))
        return x


def resize_pos_embed(pos: torch.Tensor, src: tuple[int, int], dst: tuple[int, int], extra: int = 0) -> torch.Tensor:
    """Resize a (1, extra + h*w, C) table from grid ``src`` to ``dst``: bicubic, align_corners=False, in fp32."""
    if src == dst:
        return pos
    head, grid = pos[:, :extra], pos[:, extra:]
    C = grid.shape[-1]
    grid = grid.float().reshape(1, src[0], src[1], C).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=dst, mode="bicubic", align_corners=False)
    grid = grid.flatten(2).transpose(1, 2).to(pos.dtype)
    return torch.cat([head, grid], dim=1)


def infer_grid(num_tokens: int) -> tuple[int, int]:
    """Token grid of a stored position table: square if possible, else the 4:3 (H:W) fine-tune layout."""
    side = math.isqrt(num_tokens)
    if side * side == num_tokens:
        return side, side
    h = math.isqrt(num_tokens * 4 // 3)
    for hh in (h - 1, h, h + 1):
        if hh > 0 and num_tokens % hh == 0 and abs(hh / (num_tokens // hh) - 4 / 3) < 0.05:
            return hh, num_tokens // hh
    raise ValueError(f"cannot infer the token grid of a position table with {num_tokens} tokens")


def grid_inferable(grid: tuple[int, int]) -> bool:
    """Would ``infer_grid`` recover ``grid`` (h, w) from its token count? (The official key layout stores none.)"""
    try:
        return infer_grid(grid[0] * grid[1]) == tuple(grid)
    except ValueError:
        return False


class SapiensViT(nn.Module):
    """Sapiens v1 backbone. ``forward`` returns the final feature map (B, C, H/16, W/16).

    Args:
        arch: size (see ``ARCHS``).
        pos_grid: token grid (h, w) of the learned position table, e.g. (64, 48) for 1024x768 fine-tunes.
        patch_padding: 0 (seg, depth, pretrain) or 2 (pose, normal) for official checkpoints.
        with_cls_token: pretrain checkpoints carry a cls token that takes part in attention.
    """

    def __init__(self, arch: str | ViTArch, pos_grid: tuple[int, int] = (64, 48), patch_padding: int = 0,
                 with_cls_token: bool = False):
        super().__init__()
        self.arch = get_arch(arch)
        C = self.arch.embed_dim
        self.embed_dim = C
        self.pos_grid = tuple(pos_grid)
        self.num_extra_tokens = int(with_cls_token)
        self.patch_embed = PatchEmbed(C, self.arch.patch_size, patch_padding)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, C)) if with_cls_token else None
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_extra_tokens + pos_grid[0] * pos_grid[1], C))
        self.blocks = nn.ModuleList(Block(C, self.arch.num_heads, self.arch.mlp_ratio) for _ in range(self.arch.depth))
        self.norm = nn.LayerNorm(C, eps=1e-6)
        self.grad_checkpointing = False
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=0.02)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"}

    def tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Patch tokens with position embedding (and cls token) added: (B, extra + h*w, C), grid (h, w)."""
        x, grid = self.patch_embed(x)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return x + resize_pos_embed(self.pos_embed, self.pos_grid, grid, self.num_extra_tokens), grid

    def run_blocks(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        return self.norm(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, (h, w) = self.tokens(x)
        x = self.run_blocks(x)[:, self.num_extra_tokens:]  # B N C
        return x.transpose(1, 2).reshape(x.shape[0], self.embed_dim, h, w)  # B C h w
