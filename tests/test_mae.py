"""MAE model against an independent float64 re-statement of the official recipe, written from the spec
(reference/sapiens_v1_backbone_pretrain_lite.md §1.4, §2, §3.1) and reading the OFFICIAL raw key layout."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from opensapiens.models import ViTArch
from opensapiens.models.mae import MAE, MAEConfig, random_masking
from opensapiens.pretrain import lr_factor
from opensapiens.training.optim import build_optimizer

ARCH = ViTArch("mae-test", 32, 2, 4)  # width 32, 2 blocks, 4 heads


def make_mae(input_size=(64, 48), seed=0, decoder_depth=2) -> MAE:
    torch.manual_seed(seed)
    model = MAE(MAEConfig(ARCH, input_size, decoder_dim=16, decoder_depth=decoder_depth, decoder_heads=2))
    with torch.no_grad():  # random weights everywhere (the init leaves LayerNorms at identity and biases at 0)
        for name, p in model.named_parameters():
            if p.requires_grad:  # not the fixed sin-cos tables
                p.add_(torch.randn_like(p) * (0.2 if "qkv" in name else 0.05))
    return model


# ------------------------------------------------------------------------------------------------ float64 reference


def _ln(x, w, b, eps=1e-6):
    mu = x.mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(((x - mu) ** 2).mean(-1, keepdim=True) + eps) * w + b


def _layers(t, g, prefix, heads):
    i = 0
    while f"{prefix}{i}.ln1.weight" in g:
        p = f"{prefix}{i}."
        B, N, C = t.shape
        y = _ln(t, g[p + "ln1.weight"], g[p + "ln1.bias"])
        q, k, v = (y @ g[p + "attn.qkv.weight"].T + g[p + "attn.qkv.bias"]).reshape(B, N, 3, heads, -1).permute(
            2, 0, 3, 1, 4)
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(C // heads), -1) @ v
        t = t + a.transpose(1, 2).reshape(B, N, C) @ g[p + "attn.proj.weight"].T + g[p + "attn.proj.bias"]
        y = _ln(t, g[p + "ln2.weight"], g[p + "ln2.bias"]) @ g[p + "ffn.layers.0.0.weight"].T
        y = y + g[p + "ffn.layers.0.0.bias"]
        y = 0.5 * y * (1 + torch.erf(y / math.sqrt(2)))
        t = t + y @ g[p + "ffn.layers.1.weight"].T + g[p + "ffn.layers.1.bias"]
        i += 1
    return t


def reference_mae(sd, imgs, noise, heads, dec_heads, mask_ratio=0.75):
    """(loss, pred (B, N, 768), mask) in float64 from an official raw state dict (``backbone.*`` + ``neck.*``)."""
    g = {k: v.double() for k, v in sd.items()}
    imgs = imgs.double()
    B, _, H, W = imgs.shape
    h, w = H // 16, W // 16
    N = h * w
    x = F.conv2d(imgs, g["backbone.patch_embed.projection.weight"], g["backbone.patch_embed.projection.bias"],
                 stride=16).flatten(2).transpose(1, 2) + g["backbone.pos_embed"][:, 1:]
    K = int(N * (1 - mask_ratio))
    order = np.argsort(noise.numpy(), axis=1, kind="stable")  # smallest noise kept
    keep = [order[b, :K] for b in range(B)]
    t = torch.stack([x[b, keep[b]] for b in range(B)])
    cls = g["backbone.cls_token"] + g["backbone.pos_embed"][:, :1]
    t = torch.cat([cls.expand(B, -1, -1), t], 1)
    t = _ln(_layers(t, g, "backbone.layers.", heads), g["backbone.ln1.weight"], g["backbone.ln1.bias"])
    y = t @ g["neck.decoder_embed.weight"].T + g["neck.decoder_embed.bias"]
    D = y.shape[-1]
    full = g["neck.mask_token"].expand(B, N, D).clone()
    for b in range(B):
        full[b, keep[b]] = y[b, 1:]
    z = torch.cat([y[:, :1], full], 1) + g["neck.decoder_pos_embed"]
    z = _ln(_layers(z, g, "neck.decoder_blocks.", dec_heads), g["neck.ln1.weight"], g["neck.ln1.bias"])
    pred = (z @ g["neck.decoder_pred.weight"].T + g["neck.decoder_pred.bias"])[:, 1:]
    target = torch.empty(B, N, 16 * 16 * 3, dtype=torch.float64)
    for i in range(h):
        for j in range(w):  # each patch ordered (row in patch, column in patch, channel)
            patch = imgs[:, :, i * 16:(i + 1) * 16, j * 16:(j + 1) * 16]
            target[:, i * w + j] = patch.permute(0, 2, 3, 1).reshape(B, -1)
    mean = target.mean(-1, keepdim=True)
    var = ((target - mean) ** 2).sum(-1, keepdim=True) / (target.shape[-1] - 1)  # unbiased
    target = (target - mean) / torch.sqrt(var + 1e-6)
    mask = torch.ones(B, N, dtype=torch.float64)
    for b in range(B):
        mask[b, keep[b]] = 0
    per_patch = ((pred - target) ** 2).mean(-1)
    return (per_patch * mask).sum() / mask.sum(), pred, mask


def reference_sincos(h, w, dim):
    """Spec §1.4: token k -> [sin(r w_d), cos(r w_d), sin(c w_d), cos(c w_d)], r = k // w, c = k % w; cls row 0."""
    out = np.zeros((1 + h * w, dim))
    q = dim // 4
    for k in range(h * w):
        r, c = divmod(k, w)
        for d in range(q):
            om = 1.0 / 10000 ** (d / q)
            out[1 + k, [d, q + d, 2 * q + d, 3 * q + d]] = [math.sin(r * om), math.cos(r * om), math.sin(c * om),
                                                           math.cos(c * om)]
    return torch.from_numpy(out)[None]


# ------------------------------------------------------------------------------------------------------------ tests


def test_masking_keeps_a_quarter_and_unshuffle_restores_order():
    torch.manual_seed(0)
    B, N, C = 3, 48, 5
    x = torch.randn(B, N, C)
    noise = torch.rand(B, N)
    kept, mask, ids_restore = random_masking(x, 0.75, noise)
    assert kept.shape == (B, 12, C)  # exactly 25% of 48 patches
    assert torch.equal(mask.sum(1), torch.full((B,), 36.0))
    order = np.argsort(noise.numpy(), axis=1)
    for b in range(B):
        assert torch.equal(kept[b], x[b, order[b, :12]])  # the 12 lowest-noise tokens, in noise order
        assert set(np.flatnonzero(mask[b].numpy() == 0)) == set(order[b, :12])
        removed = x[b, order[b, 12:]]
        restored = torch.cat([kept[b], removed]).gather(0, ids_restore[b, :, None].expand(N, C))
        assert torch.equal(restored, x[b])
    # Without explicit noise: still exactly a quarter kept, and different samples get different masks.
    _, mask, _ = random_masking(torch.randn(4, 4096, 2), 0.75)
    assert torch.equal(mask.sum(1), torch.full((4,), 3072.0)) and not torch.equal(mask[0], mask[1])


@pytest.mark.parametrize("grid", [(4, 4), (4, 3)])
def test_sincos_tables_follow_the_spec(grid):
    model = make_mae(input_size=(grid[0] * 16, grid[1] * 16))
    sd = model.official_state_dict()
    assert torch.allclose(sd["backbone.pos_embed"].double(), reference_sincos(*grid, ARCH.embed_dim), atol=1e-6)
    assert torch.allclose(sd["neck.decoder_pos_embed"].double(), reference_sincos(*grid, 16), atol=1e-6)
    assert not model.backbone.pos_embed.requires_grad and not model.decoder.pos_embed.requires_grad


def test_loss_and_prediction_match_float64_reference():
    model = make_mae()
    imgs = torch.randn(2, 3, 64, 48)
    noise = torch.rand(2, 12)
    loss, pred, mask = model(imgs, 0.75, noise)
    ref_loss, ref_pred, ref_mask = reference_mae(model.official_state_dict(), imgs, noise, 4, 2)
    assert torch.equal(mask.double(), ref_mask)
    assert abs(loss.item() - ref_loss.item()) < 1e-5 * ref_loss.item()
    assert ((pred.double() - ref_pred).norm() / ref_pred.norm()).item() < 1e-5
    # Sensitive to what it checks: another mask gives another loss.
    assert abs(model(imgs, 0.75, torch.rand(2, 12))[0].item() - ref_loss.item()) > 1e-4


def test_official_layout_round_trip_and_backbone_export():
    model = make_mae(seed=1)
    other = make_mae(seed=2)
    other.load_pretrained(model.official_state_dict())
    for (k, a), b in zip(model.state_dict().items(), other.state_dict().values()):
        assert torch.equal(a, b), k
    x = torch.randn(1, 3, 64, 48)
    with torch.no_grad():
        feats = model.backbone_model().eval()(x)
        direct = model.backbone(x)
    assert feats.shape == (1, 32, 4, 3) and torch.allclose(feats, direct)


def test_a_decoder_of_another_depth_is_refused_not_half_loaded():
    deeper = make_mae(seed=1, decoder_depth=3)
    model = make_mae(seed=2)  # decoder depth 2: block 2 of the file has no place; fewer blocks would leave holes
    with pytest.raises(ValueError, match="do not fit"):
        model.load_pretrained(deeper.official_state_dict())
    shallower = make_mae(seed=3, decoder_depth=1)
    with pytest.raises(ValueError, match=r"decoder that lacks \d+ of this MAE's decoder tensors"):
        model.load_pretrained(shallower.official_state_dict())
    encoder_only = {k: v for k, v in shallower.official_state_dict().items() if not k.startswith("neck.")}
    loaded = model.load_pretrained(encoder_only)  # no decoder at all: the encoder alone, as documented
    assert loaded and not any(k.startswith("decoder.") for k in loaded)


def test_no_weight_decay_set_lr_scaling_and_schedule():
    model = make_mae()
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.05, betas=(0.9, 0.95))
    no_decay = {n for g in opt.param_groups if g["weight_decay"] == 0 for n in g["names"]}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    # Official rule: names containing ln (our "norm"), bias, pos_embed, mask_token, cls_token.
    expected = {n for n in trainable if any(s in n for s in ("norm", "bias", "pos_embed", "mask_token", "cls_token"))}
    assert no_decay == expected and "backbone.pos_embed" not in trainable
    assert all(g["betas"] == (0.9, 0.95) for g in opt.param_groups)
    from opensapiens.pretrain import PretrainConfig

    cfg = PretrainConfig(data="x", out="y", batch_size=64, grad_accum=2)
    assert cfg.global_lr(world_size=8) == pytest.approx(1.5e-4 * 64 * 2 * 8 / 256)
    total, warm = 1000, 25
    assert lr_factor(0, total, warm) == pytest.approx(1e-4)
    assert lr_factor(warm, total, warm) == pytest.approx(1.0)
    mid = warm + (total - warm) // 2
    assert lr_factor(mid, total, warm) == pytest.approx(0.5 * (1 + math.cos(math.pi * (mid - warm) / (total - warm))))
    assert lr_factor(total - 1, total, warm) < 1e-4
