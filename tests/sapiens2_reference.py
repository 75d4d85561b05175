"""An independent float64 re-statement of the official Sapiens2 forward pass, written from the published spec.

It reads the OFFICIAL key layout directly (``blocks.{i}.attn.wq.weight``, ``ffn.w12.weight``, ``rope_embed.periods``
... for the backbone with no prefix; the head keys without their ``decode_head.`` prefix) and uses only explicit
tensor arithmetic (no nn.Module, no SDPA, no nn.RMSNorm / nn.InstanceNorm2d / nn.PixelShuffle), so it checks our
architecture and key mapping at once. Convolutions go through ``F.conv2d`` / ``F.conv_transpose2d`` in float64.

Everything is computed in float64, except that ``rope_angles`` can compute the RoPE coordinates, angles and sin/cos
in another dtype (the official default is bfloat16) before they are widened back to float64. The rotation itself
is always done in float64 here; the official code also rounds q and k to the RoPE dtype around the rotation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

EPS_RMS = 1e-6  # every RMSNorm of the backbone (ln1, ln2, q_norm, k_norm, final ln1)
EPS_IN = 1e-5  # every InstanceNorm2d of the heads (no affine parameters)


def _f64(sd: dict) -> dict:
    return {k: v.double() for k, v in sd.items()}


def _rms_norm(x, w, eps=EPS_RMS):
    """x / sqrt(mean(x^2) + eps) * w, over the last dimension."""
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w


def _instance_norm(x, eps=EPS_IN):
    """Per sample and channel over (H, W): (x - mean) / sqrt(biased var + eps), no affine parameters."""
    mu = x.mean((-2, -1), keepdim=True)
    var = ((x - mu) ** 2).mean((-2, -1), keepdim=True)
    return (x - mu) / torch.sqrt(var + eps)


def _silu(x):
    return x / (1.0 + torch.exp(-x))


def _softmax(x):
    e = torch.exp(x - x.max(-1, keepdim=True).values)
    return e / e.sum(-1, keepdim=True)


def _linear(x, g, name):
    """x @ W^T + b with W = g[name.weight], b = g[name.bias]."""
    return x @ g[name + ".weight"].T + g[name + ".bias"]


def _pixel_shuffle(x, r=2):
    """(B, C*r*r, H, W) -> (B, C, H*r, W*r); input channel c*r*r + i*r + j goes to out[c, y*r + i, x*r + j]."""
    B, Crr, H, W = x.shape
    C = Crr // (r * r)
    x = x.reshape(B, C, r, r, H, W)  # (B, C, i, j, y, x)
    x = x.permute(0, 1, 4, 2, 5, 3)  # (B, C, y, i, x, j)
    return x.reshape(B, C, H * r, W * r)


def _rotate_half(x):
    """[a, b] -> [-b, a] over the two halves of the last dimension."""
    half = x.shape[-1] // 2
    a, b = x[..., :half], x[..., half:]
    return torch.cat([-b, a], dim=-1)


def rope_angles(h: int, w: int, periods: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin), each (h*w, head_dim) in float64, for the h x w patch grid in row-major order.

    coords: patch centres arange(0.5, n) / n per axis, mapped to [-1, 1] ("separate" normalization);
    angle[t, a, i] = 2*pi * coord[t, a] / periods[i] with a = 0 for the row (h) and 1 for the column (w) coordinate,
    flattened to [HW, 2 * D/4] = [HW, D/2] (all h-angles, then all w-angles), then tiled twice to [HW, D].
    All of it is computed in ``dtype``.
    """
    periods = periods.to(dtype)
    coords_h = torch.arange(0.5, h, dtype=dtype) / h  # (h,)
    coords_w = torch.arange(0.5, w, dtype=dtype) / w  # (w,)
    grid_h, grid_w = torch.meshgrid(coords_h, coords_w, indexing="ij")  # (h, w) each
    coords = torch.stack([grid_h, grid_w], dim=-1).reshape(h * w, 2)  # token t = row * w + col
    coords = 2.0 * coords - 1.0  # [0, 1] -> [-1, 1]
    angles = 2 * math.pi * coords[:, :, None] / periods[None, None, :]  # (HW, 2, D/4)
    angles = angles.reshape(h * w, -1)  # (HW, D/2)
    angles = torch.cat([angles, angles], dim=-1)  # (HW, D)
    return torch.cos(angles).double(), torch.sin(angles).double()


def _apply_rope(x, cos, sin):
    """x: (B, heads, N, D); rotate the trailing cos.shape[0] tokens, leave the prefix tokens untouched."""
    n_patch = cos.shape[0]
    prefix, patches = x[:, :, :-n_patch], x[:, :, -n_patch:]
    patches = patches * cos + _rotate_half(patches) * sin
    return torch.cat([prefix, patches], dim=2)


def _attention(g, p, x, num_heads, cos=None, sin=None):
    """Multi-head attention with GQA, QK-RMSNorm and RoPE of block prefix ``p``; x is the ln1-normalized input.
    The 4K tokenizer's blocks have no q/k norm weights and no angles: plain attention."""
    B, N, C = x.shape
    hd = C // num_heads
    kv_heads = g[p + "attn.wk.weight"].shape[0] // hd
    q = _linear(x, g, p + "attn.wq").reshape(B, N, num_heads, hd).transpose(1, 2)  # (B, heads, N, hd)
    k = _linear(x, g, p + "attn.wk").reshape(B, N, kv_heads, hd).transpose(1, 2)  # (B, kv_heads, N, hd)
    v = _linear(x, g, p + "attn.wv").reshape(B, N, kv_heads, hd).transpose(1, 2)
    if p + "attn.q_norm.weight" in g:
        q = _rms_norm(q, g[p + "attn.q_norm.weight"])  # per head, before the kv repeat and RoPE
        k = _rms_norm(k, g[p + "attn.k_norm.weight"])
    k = k.repeat_interleave(num_heads // kv_heads, dim=1)  # query head j uses kv head j // (heads / kv_heads)
    v = v.repeat_interleave(num_heads // kv_heads, dim=1)
    if cos is not None:
        q = _apply_rope(q, cos, sin)
        k = _apply_rope(k, cos, sin)
    a = _softmax(q @ k.transpose(-1, -2) / math.sqrt(hd)) @ v  # (B, heads, N, hd)
    a = a.transpose(1, 2).reshape(B, N, C)
    return _linear(a, g, p + "attn.proj")


def backbone(sd: dict, x: torch.Tensor, num_heads: int, rope_dtype: torch.dtype = torch.float64,
             n_storage: int = 8) -> torch.Tensor:
    """Sapiens2 encoder on an already-normalized (B, 3, H, W) image -> feature map (B, C, H/16, W/16), float64."""
    g = _f64(sd)
    x = x.double()
    assert x.shape[-2] % 16 == 0 and x.shape[-1] % 16 == 0, "H and W must be multiples of 16"
    t = F.conv2d(x, g["patch_embed.projection.weight"], g["patch_embed.projection.bias"], stride=16, padding=0)
    B, C, h, w = t.shape
    t = t.flatten(2).transpose(1, 2)  # (B, h*w, C), row-major over the grid
    if "tokenizer.w_cls" in g:  # the 4K model: one token per 4 x 4 window of patches
        t, h, w = _window_tokens(g, t, h, w, num_heads)
    prefix = []
    if "cls_token" in g:
        prefix.append(g["cls_token"].expand(B, -1, -1))
    if n_storage:
        assert g["storage_tokens"].shape[1] == n_storage
        prefix.append(g["storage_tokens"].expand(B, -1, -1))
    t = torch.cat([*prefix, t], dim=1)  # [cls, storage x n_storage, patches]; no position embedding
    n_prefix = t.shape[1] - h * w
    cos, sin = rope_angles(h, w, sd["rope_embed.periods"], rope_dtype)
    depth = len({k.split(".")[1] for k in g if k.startswith("blocks.")})
    for i in range(depth):
        t = _block(g, f"blocks.{i}.", t, num_heads, cos, sin)
    t = _rms_norm(t, g["ln1.weight"])[:, n_prefix:]
    return t.transpose(1, 2).reshape(B, C, h, w)


def _block(g, p, t, num_heads, cos=None, sin=None):
    a = _attention(g, p, _rms_norm(t, g[p + "ln1.weight"]), num_heads, cos, sin)
    if p + "attn.gamma.weight" in g:
        a = a * g[p + "attn.gamma.weight"]
    t = t + a
    y = _linear(_rms_norm(t, g[p + "ln2.weight"]), g, p + "ffn.w12")
    hidden = y.shape[-1] // 2
    gate, value = y[..., :hidden], y[..., hidden:]
    return t + _linear(_silu(gate) * value, g, p + "ffn.w3")


def _window_tokens(g, t, h, w, num_heads, ws=4):
    """The 4K tokenizer, window by window: the 16 patch tokens of window (r, c) (rows 4r..4r+3, columns 4c..4c+3,
    row-major), after the shared w_cls token, plus local_pos_embed, through every tokenizer block; w_cls's output
    is that window's token. Windows come out row-major over the (h/4, w/4) grid."""
    B, _, C = t.shape
    grid = t.reshape(B, h, w, C)
    n_blocks = len({k.split(".")[2] for k in g if k.startswith("tokenizer.blocks.")})
    out = torch.empty(B, (h // ws) * (w // ws), C, dtype=t.dtype)
    for r in range(h // ws):
        for c in range(w // ws):
            patches = grid[:, ws * r:ws * r + ws, ws * c:ws * c + ws].reshape(B, ws * ws, C)
            x = torch.cat([g["tokenizer.w_cls"].expand(B, -1, -1), patches], dim=1) + g["tokenizer.local_pos_embed"]
            for i in range(n_blocks):
                x = _block(g, f"tokenizer.blocks.{i}.", x, num_heads)
            out[:, r * (w // ws) + c] = x[:, 0]
    return out, h // ws, w // ws


def _conv(g, name, x, stride=1):
    """Conv2d with the kernel size read from the weight, padding (k - 1) // 2, bias if present."""
    wgt = g[name + ".weight"]
    return F.conv2d(x, wgt, g.get(name + ".bias"), stride=stride, padding=(wgt.shape[-1] - 1) // 2)


def _deconv_conv_head(g, f, final):
    """deconv_layers.{0,3,..}: ConvTranspose2d(k4, s2, p1) + IN + SiLU; conv_layers.{0,3,..}: Conv + IN + SiLU;
    then the 1x1 ``final`` conv."""
    i = 0
    while f"deconv_layers.{i}.weight" in g:
        wgt = g[f"deconv_layers.{i}.weight"]
        assert wgt.shape[-2:] == (4, 4)
        f = F.conv_transpose2d(f, wgt, g.get(f"deconv_layers.{i}.bias"), stride=2, padding=1)
        f = _silu(_instance_norm(f))
        i += 3
    return _conv(g, final, _conv_layers(g, f))


def _conv_layers(g: dict, f: torch.Tensor) -> torch.Tensor:
    """conv_layers.{0,3,6,..}: each conv + InstanceNorm + SiLU."""
    i = 0
    while f"conv_layers.{i}.weight" in g:
        f = _silu(_instance_norm(_conv(g, f"conv_layers.{i}", f)))
        i += 3
    return f


def pose_head(sd: dict, feats: torch.Tensor) -> torch.Tensor:
    """PoseHeatmapHead: (B, C, h, w) -> heatmaps (B, K, h * 2^n_deconv, w * 2^n_deconv)."""
    return _deconv_conv_head(_f64(sd), feats.double(), "conv_pose")


def seg_head(sd: dict, feats: torch.Tensor) -> torch.Tensor:
    """SegHead: (B, C, h, w) -> logits (B, classes, h * 2^n_deconv, w * 2^n_deconv)."""
    return _deconv_conv_head(_f64(sd), feats.double(), "conv_seg")


def normal_head(sd: dict, feats: torch.Tensor, final: str = "conv_normal") -> torch.Tensor:
    """NormalHead: input_conv.0 (3x3) + IN + SiLU; upsample_blocks.{i}.0 (3x3 to 4*out) -> PixelShuffle(2) -> IN
    -> SiLU; conv_layers.{0,3,..} (3x3) + IN + SiLU; then the 1x1 ``final`` conv. Not normalized to unit length."""
    g = _f64(sd)
    f = _silu(_instance_norm(_conv(g, "input_conv.0", feats.double())))
    i = 0
    while f"upsample_blocks.{i}.0.weight" in g:
        f = _silu(_instance_norm(_pixel_shuffle(_conv(g, f"upsample_blocks.{i}.0", f), 2)))
        i += 1
    return _conv(g, final, _conv_layers(g, f))


def pointmap_head(sd: dict, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """PointmapHead: (canonical pointmap (B, 3, H, W), scale (B, 1)); the metric pointmap is pointmap / scale.

    The dense branch is ``normal_head`` with ``conv_pointmap``; the scale branch runs on the backbone feature map:
    scale_conv_layers.{0,3,..}: Conv2d 1x1 stride 2 + IN + SiLU, then flatten(1) (channel-major) and
    scale_final_layer.{1,3,5}: Linear -> SiLU -> Linear -> SiLU -> Linear.
    """
    g = _f64(sd)
    feats = feats.double()
    pointmap = normal_head(sd, feats, final="conv_pointmap")
    s = feats
    i = 0
    while f"scale_conv_layers.{i}.weight" in g:
        wgt = g[f"scale_conv_layers.{i}.weight"]
        assert wgt.shape[-2:] == (1, 1)
        s = _silu(_instance_norm(F.conv2d(s, wgt, g.get(f"scale_conv_layers.{i}.bias"), stride=2, padding=0)))
        i += 3
    s = s.flatten(1)  # (B, C * h * w), index c * h * w + y * w + x
    s = _silu(_linear(s, g, "scale_final_layer.1"))
    s = _silu(_linear(s, g, "scale_final_layer.3"))
    scale = _linear(s, g, "scale_final_layer.5")
    return pointmap, scale
