"""An independent float64 re-statement of the official Sapiens v1 forward pass, written from the published spec.

It reads the OFFICIAL key layout directly (``backbone.layers.{i}.ffn.layers.0.0.weight`` ...) and uses only explicit
tensor arithmetic (no nn.Module, no SDPA, no nn.LayerNorm), so it checks our architecture and key mapping at once.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _ln(x, w, b, eps=1e-6):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def _gelu(x):
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def _instance_norm(x, eps=1e-5):
    mu = x.mean((-2, -1), keepdim=True)
    var = ((x - mu) ** 2).mean((-2, -1), keepdim=True)
    return (x - mu) / torch.sqrt(var + eps)


def backbone(sd: dict, x: torch.Tensor, num_heads: int, padding: int, prefix: str = "backbone.",
             with_cls: bool = False) -> torch.Tensor:
    g = {k[len(prefix):]: v.double() for k, v in sd.items() if k.startswith(prefix)}
    x = x.double()
    if padding == 0:  # mmcv "corner" adaptive padding
        ph, pw = (-x.shape[-2]) % 16, (-x.shape[-1]) % 16
        x = F.pad(x, (0, pw, 0, ph))
    t = F.conv2d(x, g["patch_embed.projection.weight"], g["patch_embed.projection.bias"], stride=16, padding=padding)
    B, C, h, w = t.shape
    t = t.flatten(2).transpose(1, 2)
    pos = g["pos_embed"]
    extra = 1 if with_cls else 0
    grid = pos[:, extra:]
    n = grid.shape[1]
    side = int(round(math.sqrt(n)))
    if side * side == n:  # square pretrain grid
        src = (side, side)
    else:  # the 4:3 fine-tune grid
        rows = int(round(math.sqrt(n * 4 / 3)))
        src = (rows, n // rows)
    if src != (h, w):
        grid = grid.float().reshape(1, src[0], src[1], C).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False).double()
        grid = grid.flatten(2).transpose(1, 2)
    if with_cls:
        t = torch.cat([g["cls_token"].expand(B, -1, -1), t], 1)
        t = t + torch.cat([pos[:, :1], grid], 1)
    else:
        t = t + grid
    L = len({k.split(".")[1] for k in g if k.startswith("layers.")})
    hd = C // num_heads
    for i in range(L):
        p = f"layers.{i}."
        y = _ln(t, g[p + "ln1.weight"], g[p + "ln1.bias"])
        qkv = y @ g[p + "attn.qkv.weight"].T + g[p + "attn.qkv.bias"]
        q, k, v = qkv.reshape(B, -1, 3, num_heads, hd).permute(2, 0, 3, 1, 4)
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), dim=-1) @ v
        a = a.transpose(1, 2).reshape(B, -1, C)
        t = t + a @ g[p + "attn.proj.weight"].T + g[p + "attn.proj.bias"]
        y = _ln(t, g[p + "ln2.weight"], g[p + "ln2.bias"])
        y = _gelu(y @ g[p + "ffn.layers.0.0.weight"].T + g[p + "ffn.layers.0.0.bias"])
        t = t + y @ g[p + "ffn.layers.1.weight"].T + g[p + "ffn.layers.1.bias"]
    t = _ln(t, g["ln1.weight"], g["ln1.bias"])[:, extra:]
    return t.transpose(1, 2).reshape(B, C, h, w)


def head(sd: dict, f: torch.Tensor, prefix: str, final: str) -> torch.Tensor:
    g = {k[len(prefix):]: v.double() for k, v in sd.items() if k.startswith(prefix)}
    i = 0
    while f"deconv_layers.{i}.weight" in g:
        f = F.silu(_instance_norm(F.conv_transpose2d(f, g[f"deconv_layers.{i}.weight"], stride=2, padding=1)))
        i += 3
    i = 0
    while f"conv_layers.{i}.weight" in g:
        f = F.silu(_instance_norm(F.conv2d(f, g[f"conv_layers.{i}.weight"], g[f"conv_layers.{i}.bias"])))
        i += 3
    return F.conv2d(f, g[f"{final}.weight"], g[f"{final}.bias"])


def forward(sd: dict, task: str, x: torch.Tensor, num_heads: int, padding: int) -> torch.Tensor:
    f = backbone(sd, x, num_heads, padding)
    if task == "pose":
        return head(sd, f, "head.", "final_layer")
    return head(sd, f, "decode_head.", "conv_seg")
