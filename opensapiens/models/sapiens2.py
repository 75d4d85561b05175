"""The Sapiens2 backbone: a pre-norm ViT at patch 16 with RMSNorm, SwiGLU, grouped-query attention and 2-D RoPE.

    x (B, 3, H, W) -> patch conv -> [cls, 8 storage tokens, patches] -> L x Block2 -> RMSNorm -> (B, C, H/16, W/16)
    (the 4K model: patch conv -> WindowTokenizer, one token per 4 x 4 patches -> the same, (B, C, H/64, W/64))

    Block2:  x = x + gamma * proj(attention(RMSNorm(x)))      q, k RMS-normed per head, then RoPE on patch tokens
             x = x + w3(silu(a) * b),  [a, b] = w12(RMSNorm(x))

What differs from v1 (``vit.py``), as the official ``Sapiens2`` is configured for its task models: RMSNorm (eps 1e-6,
weight only) for every norm; separate q/k/v projections, with half as many key/value heads in every block but the
first and last eight; per-head RMSNorm of q and k; no position table but 2-D axial rotary embeddings (base 100,
patch centres normalized to [-1, 1] per axis, so any input size needs no interpolation) on the patch tokens only;
a learned scale (LayerScale) on the attention branch only; a SwiGLU MLP of hidden width 4C; one cls token and eight
storage (register) tokens before the patches. The official code computes the rotary angles, and rotates q and k, in
bfloat16 even in a float32 model; ``rope_dtype`` keeps that (the default, for agreement with the released weights)
or computes them in float32.

References:
    Khirodkar et al., "Sapiens2", ICLR 2026 (arXiv 2604.21681).
    Su et al., "RoFormer: Enhanced Transformer with Rotary Position Embedding", 2021.
    Shazeer, "GLU Variants Improve Transformer", 2020.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .vit import PatchEmbed


@dataclass(frozen=True)
class Sapiens2Arch:
    """Every structural choice of one Sapiens2 backbone size."""

    name: str
    embed_dim: int
    depth: int
    num_heads: int
    dense_blocks: int = 8  # all heads attend with their own k/v in this many blocks at each end; half between
    storage_tokens: int = 8
    patch_size: int = 16
    tokenizer_layers: int = 0  # the 4K model: blocks that pool each 4 x 4 window of patches into one token
    window: int = 4
    generation: int = 2  # (read by ModelConfig.from_dict to tell the two families apart)

    @property
    def stride(self) -> int:
        """Input pixels per output token along each axis: 16, or 64 behind the 4K model's window tokenizer."""
        return self.patch_size * (self.window if self.tokenizer_layers else 1)

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def mlp_hidden(self) -> int:
        return 4 * self.embed_dim

    def kv_heads(self, block: int) -> int:
        """Key/value heads of block ``block``: all heads at both ends, half of them between (grouped queries)."""
        dense = block < self.dense_blocks or block >= self.depth - self.dense_blocks
        return self.num_heads if dense else self.num_heads // 2


ARCHS2: dict[str, Sapiens2Arch] = {
    a.name: a
    for a in (
        Sapiens2Arch("sapiens2_0.1b", 768, 12, 12),
        Sapiens2Arch("sapiens2_0.4b", 1024, 24, 16),
        Sapiens2Arch("sapiens2_0.8b", 1280, 32, 16),  # head dim 80
        Sapiens2Arch("sapiens2_1b", 1536, 40, 24),
        Sapiens2Arch("sapiens2_1b_4k", 1536, 40, 24, tokenizer_layers=4),  # 4096 x 3072 inputs, a 64 x 48 grid
        Sapiens2Arch("sapiens2_5b", 2432, 56, 32),  # head dim 76
        Sapiens2Arch("sapiens2_nano", 64, 18, 4),  # ~1M, unit tests: grouped-query blocks 8 and 9
        Sapiens2Arch("sapiens2_nano_4k", 64, 18, 4, tokenizer_layers=2),  # unit tests of the window tokenizer
    )
}


def get_arch2(name: str | Sapiens2Arch) -> Sapiens2Arch:
    """A Sapiens2 size by name: "sapiens2_1b", "sapiens2-0.4b", "Sapiens2_5B", ..."""
    if isinstance(name, Sapiens2Arch):
        return name
    key = name.lower().replace("-", "_")
    if key not in ARCHS2:
        raise ValueError(f"unknown Sapiens2 architecture {name!r}; known: {', '.join(ARCHS2)}")
    return ARCHS2[key]


class RMSNorm(nn.RMSNorm):
    """``nn.RMSNorm`` (eps 1e-6, weight only) that, handed a lower-precision input than its weight (under autocast,
    which leaves rms_norm alone), normalizes in float32 as autocast does LayerNorm: the mixed-dtype call has no fused
    kernel."""

    def __init__(self, dim: int):
        super().__init__(dim, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != self.weight.dtype:
            return F.rms_norm(x.float(), self.normalized_shape, self.weight.float(), self.eps).to(x.dtype)
        return super().forward(x)


class RotaryEmbedding2d(nn.Module):
    """cos and sin of the 2-D axial rotary angles of an h x w patch grid, each (h*w, head_dim).

    ``periods`` (head_dim/4,) = base^(2i / (head_dim/2)); a patch centre's coordinates, in [-1, 1] along each axis,
    turn through 2 pi coord / period: the first head_dim/4 angles follow the row, the next the column, and the
    angle vector is repeated once to cover both halves that ``rotate_half`` pairs up.
    """

    def __init__(self, head_dim: int, base: float = 100.0, dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        if head_dim % 4:
            raise ValueError(f"2-D rotary embeddings need a head dim divisible by 4, got {head_dim}")
        self.dtype = dtype  # the angles' arithmetic; a module attribute, so model.to(float32) keeps it
        i = torch.arange(head_dim // 4, dtype=dtype)
        self.register_buffer("periods", base ** (2 * i / (head_dim // 2)), persistent=True)

    def forward(self, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        like = {"device": self.periods.device, "dtype": self.dtype}
        rows = torch.arange(0.5, h, **like) / h * 2 - 1
        cols = torch.arange(0.5, w, **like) / w * 2 - 1
        coords = torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1).reshape(h * w, 2)  # (h*w, 2)
        angles = 2 * math.pi * coords[:, :, None] / self.periods.to(self.dtype)  # (h*w, 2, head_dim/4)
        angles = angles.reshape(h * w, -1).repeat(1, 2)  # (h*w, head_dim)
        return angles.cos(), angles.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat([-b, a], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, prefix: int) -> torch.Tensor:
    """Rotate (B, heads, N, hd) queries or keys after the ``prefix`` tokens in cos's dtype. As the official code, all
    of ``x`` passes through that dtype (the prefix tokens too, unrotated)."""
    x_rope = x.to(cos.dtype)
    head, patches = x_rope[:, :, :prefix], x_rope[:, :, prefix:]
    rotated = patches * cos + rotate_half(patches) * sin
    return (torch.cat([head, rotated], dim=2) if prefix else rotated).to(x.dtype)


def normed_rotated(q: torch.Tensor, k: torch.Tensor, q_norm: nn.Module, k_norm: nn.Module,
                   rope: tuple[torch.Tensor, torch.Tensor] | None, prefix: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, N, heads, hd) queries and keys -> (B, heads, N, hd): normed per head (``q_norm``, ``k_norm``), then
    rotated after the ``prefix`` tokens where ``rope`` is given."""
    q, k = q_norm(q).transpose(1, 2), k_norm(k).transpose(1, 2)
    if rope is not None:
        q, k = apply_rope(q, *rope, prefix), apply_rope(k, *rope, prefix)
    return q, k


class LayerScale(nn.Module):
    """Multiply by a learned per-channel scale (``weight``, as the official key names it)."""

    def __init__(self, dim: int, init: float = 1e-4):
        super().__init__()
        self.weight = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight


class GQAttention(nn.Module):
    """Self-attention with ``num_kv_heads`` key/value heads shared by groups of query heads; (B, N, C) -> (B, N, C).

    q and k are RMS-normed per head, then rotated (``apply_rope``) where ``rope`` is given; the output projection is
    scaled by ``gamma`` (LayerScale). The 4K tokenizer's blocks have neither the norms nor the scale (``plain``).
    """

    def __init__(self, dim: int, num_heads: int, num_kv_heads: int, plain: bool = False):
        super().__init__()
        if num_heads % num_kv_heads:
            raise ValueError(f"{num_heads} query heads do not split into groups over {num_kv_heads} key/value heads")
        self.num_heads, self.num_kv_heads = num_heads, num_kv_heads
        hd = dim // num_heads
        self.wq = nn.Linear(dim, dim)
        self.wk = nn.Linear(dim, num_kv_heads * hd)
        self.wv = nn.Linear(dim, num_kv_heads * hd)
        self.q_norm = nn.Identity() if plain else RMSNorm(hd)
        self.k_norm = nn.Identity() if plain else RMSNorm(hd)
        self.proj = nn.Linear(dim, dim)
        self.gamma = nn.Identity() if plain else LayerScale(dim)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                prefix: int = 0) -> torch.Tensor:
        B, N, C = x.shape
        nh, nkv = self.num_heads, self.num_kv_heads
        q, k = normed_rotated(self.wq(x).view(B, N, nh, -1), self.wk(x).view(B, N, nkv, -1), self.q_norm,
                              self.k_norm, rope, prefix)
        v = self.wv(x).view(B, N, nkv, -1).transpose(1, 2)
        x = F.scaled_dot_product_attention(q, k, v, enable_gqa=nkv != nh)  # query head i reads k/v head i // (nh/nkv)
        return self.gamma(self.proj(x.transpose(1, 2).reshape(B, N, C)))


class SwiGLU(nn.Module):
    """w12 (the gate's rows, then the value's) -> silu(gate) * value -> w3; (B, N, C) -> (B, N, C)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(gate) * value)


class Block2(nn.Module):
    def __init__(self, dim: int, num_heads: int, num_kv_heads: int, hidden: int, plain: bool = False):
        super().__init__()
        self.norm1 = RMSNorm(dim)
        self.attn = GQAttention(dim, num_heads, num_kv_heads, plain)
        self.norm2 = RMSNorm(dim)
        self.mlp = SwiGLU(dim, hidden)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                prefix: int = 0) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), rope, prefix)
        x = x + self.mlp(self.norm2(x))
        return x


class WindowTokenizer(nn.Module):
    """The 4K model's front: each ``window`` x ``window`` group of patch tokens (row-major windows, row-major within
    one) runs behind a shared query token, with a learned position per slot, through ``layers`` plain blocks (full
    attention inside the window, no q/k norms, no RoPE, no LayerScale); the query token's output is the window's
    token. (B, h*w, C) on the (h, w) grid -> (B, h/window * w/window, C): a 4096 x 3072 input gives the 64 x 48
    grid of a 1K one."""

    def __init__(self, dim: int, num_heads: int, hidden: int, layers: int, window: int = 4):
        super().__init__()
        self.window = window
        self.local_pos_embed = nn.Parameter(torch.zeros(1, 1 + window * window, dim))  # (official names)
        self.w_cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.ModuleList(Block2(dim, num_heads, num_heads, hidden, plain=True) for _ in range(layers))
        self.grad_checkpointing = True  # in training, as the official code always does: 16x the encoder's tokens

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int]]:
        (h, w), s = grid, self.window
        if h % s or w % s:
            raise ValueError(f"a Sapiens2 4K backbone pools {s} x {s} windows of 16-pixel patches: the input's sides "
                             f"must be multiples of {16 * s}, got a {h} x {w} patch grid")
        B, _, C = x.shape
        x = x.view(B, h // s, s, w // s, s, C).transpose(2, 3).reshape(-1, s * s, C)  # (B * windows, s*s, C)
        x = torch.cat([self.w_cls.expand(len(x), -1, -1), x], dim=1) + self.local_pos_embed
        for blk in self.blocks:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        return x[:, 0].reshape(B, (h // s) * (w // s), C), (h // s, w // s)


class Sapiens2ViT(nn.Module):
    """Sapiens2 backbone. ``forward`` returns the final feature map (B, C, H/16, W/16).

    Args:
        arch: size (see ``ARCHS2``).
        with_cls_token: the official task models and pretrain files have one; storage tokens follow it.
        rope_dtype: the rotary angles' arithmetic: bfloat16 as the official code (default), or float32.
    """

    def __init__(self, arch: str | Sapiens2Arch, with_cls_token: bool = True,
                 rope_dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        self.arch = a = get_arch2(arch)
        C = self.embed_dim = a.embed_dim
        self.num_extra_tokens = int(with_cls_token) + a.storage_tokens
        self.patch_embed = PatchEmbed(C, a.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, C)) if with_cls_token else None
        self.storage_tokens = nn.Parameter(torch.zeros(1, a.storage_tokens, C))
        self.rope = RotaryEmbedding2d(a.head_dim, dtype=rope_dtype)
        self.tokenizer = WindowTokenizer(C, a.num_heads, a.mlp_hidden, a.tokenizer_layers, a.window) \
            if a.tokenizer_layers else None
        self.blocks = nn.ModuleList(Block2(C, a.num_heads, a.kv_heads(i), a.mlp_hidden) for i in range(a.depth))
        self.norm = RMSNorm(C)
        self.grad_checkpointing = False
        self._init_weights()

    def _init_weights(self) -> None:
        """Official initialization: trunc-normal(0.02) tokens and weights, zero biases (norms and scales as built)."""
        if self.storage_tokens.is_meta:  # built to take a checkpoint's weights
            return
        tokenizer = (self.tokenizer.local_pos_embed, self.tokenizer.w_cls) if self.tokenizer is not None else ()
        for p in (self.cls_token, self.storage_tokens, *tokenizer):
            if p is not None:
                nn.init.trunc_normal_(p, std=0.02)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable  # (the blocks; the 4K tokenizer checkpoints its own in training)

    def no_weight_decay(self) -> set[str]:
        return set()  # the official recipe decays the cls and storage tokens (only 1-D tensors and biases are spared)

    def tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Patch tokens (the 4K model's: window tokens) after the cls and storage tokens: (B, extra + h*w, C), grid
        (h, w)."""
        x, grid = self.patch_embed(x)
        if self.tokenizer is not None:
            x, grid = self.tokenizer(x, grid)
        prefix = [self.storage_tokens.expand(x.shape[0], -1, -1)]
        if self.cls_token is not None:
            prefix.insert(0, self.cls_token.expand(x.shape[0], -1, -1))
        return torch.cat([*prefix, x], dim=1), grid

    def run_blocks(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        rope = self.rope(*grid)
        for blk in self.blocks:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(blk, x, rope, self.num_extra_tokens, use_reentrant=False)
            else:
                x = blk(x, rope, self.num_extra_tokens)
        return self.norm(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, (h, w) = self.tokens(x)
        x = self.run_blocks(x, (h, w))[:, self.num_extra_tokens:]  # B N C
        return x.transpose(1, 2).reshape(x.shape[0], self.embed_dim, h, w)  # B C h w
