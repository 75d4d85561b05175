"""Our model against an independent float64 re-statement of the official forward, through official-layout files."""

from __future__ import annotations

import pytest
import torch

from opensapiens.checkpoints import load_model, ours_to_official
from opensapiens.models import ARCHS, build_model

import reference_impl as ref
from conftest import TINY, make_official_state, save_mmengine_checkpoint

OFFICIAL_PADDING = {"pose": 2, "seg": 0, "depth": 0, "normal": 2}
EXPECTED_STRIDE = {"pose": 4, "seg": 2, "depth": 1, "normal": 2}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("task,out", [("pose", 17), ("seg", 28), ("depth", None), ("normal", None)])
def test_task_model_matches_reference(tmp_path, task, out, mmengine_like_meta):
    _, official = make_official_state(task, out)
    path = tmp_path / f"{task}.pth"
    save_mmengine_checkpoint(path, official, mmengine_like_meta)
    model = load_model(path, num_heads=TINY.num_heads)
    assert model.task == task and model.config.patch_padding == OFFICIAL_PADDING[task]
    x = torch.randn(2, 3, 128, 96)  # the stored 8x6 grid: no pos-embed resize
    with torch.no_grad():
        y = model(x)
    expect = ref.forward(official, task, x, TINY.num_heads, OFFICIAL_PADDING[task])
    s = EXPECTED_STRIDE[task]
    assert y.shape == expect.shape == (2, out or {"depth": 1, "normal": 3}[task], 128 // s, 96 // s)
    assert rel_err(y, expect) < 1e-4  # the fp32 tolerance


@pytest.mark.parametrize("padding", [0, 2])
@pytest.mark.parametrize("hw", [(128, 96), (160, 128), (96, 64)])
def test_backbone_both_paddings_and_pos_resize(tmp_path, padding, hw):
    _, official = make_official_state("seg", 5)
    path = tmp_path / "seg.pth"
    torch.save({"state_dict": official}, path)
    model = load_model(path, task="features", patch_padding=padding, num_heads=TINY.num_heads)
    x = torch.randn(1, 3, *hw)
    with torch.no_grad():
        y = model(x)
    expect = ref.backbone(official, x, TINY.num_heads, padding)
    assert y.shape == (1, TINY.embed_dim, hw[0] // 16, hw[1] // 16)
    assert rel_err(y, expect) < 1e-4  # the fp32 tolerance
    # The comparison is sensitive to what it checks: the other padding, or a wrong head count, is far off.
    other = ref.backbone(official, x, TINY.num_heads, 2 - padding)
    assert rel_err(y, other) > 1e-2
    wrong_heads = load_model(path, task="features", patch_padding=padding, num_heads=1)
    with torch.no_grad():
        assert rel_err(wrong_heads(x), expect) > 1e-2


def test_pretrain_clean_checkpoint_features_use_cls_token(tmp_path):
    """A flat ``_clean.pth`` with cls token + (1, 1+h*w, C) table: features run with the cls token, as MAEViT does."""
    torch.manual_seed(1)
    m = build_model("features", TINY, pos_grid=(8, 8))
    official = ours_to_official(m.state_dict(), "features")
    official["cls_token"] = torch.randn(1, 1, TINY.embed_dim)
    official["pos_embed"] = torch.cat([torch.zeros(1, 1, TINY.embed_dim), torch.randn(1, 64, TINY.embed_dim)], 1)
    path = tmp_path / "sapiens_tiny_epoch_1_clean.pth"
    torch.save(official, path)
    model = load_model(path, num_heads=TINY.num_heads)
    assert model.task == "features" and model.config.with_cls_token and model.config.pos_grid == (8, 8)
    x = torch.randn(1, 3, 128, 96)  # 8x6 grid: the 8x8 table is resized, the cls slot kept
    with torch.no_grad():
        y = model(x)
    expect = ref.backbone(official, x, TINY.num_heads, 0, prefix="", with_cls=True)
    assert rel_err(y, expect) < 1e-4  # the fp32 tolerance


def test_official_arch_table_and_param_counts():
    # Per block 12C^2 + 13C, patch embed 768C + C, final LN 2C, pos (3072 tokens) — the reference's own counts.
    expected_millions = {"0.3b": 306.2, "0.6b": 634.6, "1b": 1139.2, "2b": 2131.9}
    for name, millions in expected_millions.items():
        a = ARCHS[name]
        C, L = a.embed_dim, a.depth
        count = L * (12 * C * C + 13 * C) + 768 * C + C + 2 * C + 3072 * C
        assert abs(count / 1e6 - millions) < 0.15
    assert ARCHS["2b"].head_dim == 60 and ARCHS["1b"].num_heads == 24
    with torch.device("meta"):
        m = build_model("features", "0.3b")
    assert abs(sum(p.numel() for p in m.parameters()) / 1e6 - 306.2) < 0.15


def test_gradients_reach_every_parameter_and_checkpointing_is_exact():
    torch.manual_seed(0)
    model = build_model("seg", TINY, out_channels=4, head_channels=8, pos_grid=(4, 4))
    model.head.dropout = torch.nn.Identity()
    x = torch.randn(2, 3, 64, 64)
    model.train()
    y0 = model(x)
    y0.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    g0 = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.backbone.set_grad_checkpointing(True)
    y1 = model(x)
    y1.square().mean().backward()
    assert torch.allclose(y0, y1)
    assert all(torch.allclose(a, p.grad, atol=1e-6) for a, p in zip(g0, model.parameters()))


def test_head_dim_padding_is_exact():
    """The fast path zero-pads head dims (2B: 60 -> 64); outputs must not change."""
    from opensapiens.inference.optimize import pad_attention_heads
    from opensapiens.models import ViTArch

    torch.manual_seed(0)
    arch = ViTArch("hd12", 48, 2, 4)  # head dim 12, padded to 16
    model = build_model("features", arch, pos_grid=(4, 4)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
        assert pad_attention_heads(model) == 16
        assert all(b.attn.padded_head_dim == 16 for b in model.backbone.blocks)
        after = model(x)
    assert torch.allclose(before, after, atol=1e-6)


def test_head_dim_padding_in_the_weights_is_exact():
    """Inference pads head dims in the qkv/proj weights instead: q, k, v come out of the GEMM already padded."""
    from opensapiens.inference.optimize import pad_attention_weights
    from opensapiens.models import ViTArch

    torch.manual_seed(0)
    arch = ViTArch("hd12", 48, 2, 4)  # head dim 12, padded to 16
    model = build_model("features", arch, pos_grid=(4, 4)).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # biases too
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        before = model(x)
        assert pad_attention_weights(model) == 16
        attn = model.backbone.blocks[0].attn
        assert attn.qkv.weight.shape == (3 * 4 * 16, 48) and attn.proj.weight.shape == (48, 4 * 16)
        after = model(x)
    assert (before - after).abs().max() <= 1e-12 * before.abs().max()


@pytest.mark.parametrize("padding", [0, 2])
@pytest.mark.parametrize("hw", [(64, 48), (70, 53), (33, 17)])
def test_patch_embed_gemm_equals_the_strided_conv(padding, hw):
    """The patch embedding runs as one GEMM; it must be the official conv (corner or symmetric padding, sizes that
    are not multiples of 16), values and gradients, against F.conv2d in float64."""
    import torch.nn.functional as F

    from opensapiens.models.vit import PatchEmbed

    torch.manual_seed(0)
    embed = PatchEmbed(8, 16, padding).double()
    x = torch.randn(2, 3, *hw, dtype=torch.float64)
    tokens, grid = embed(x)
    H, W = hw
    padded = x if padding else F.pad(x, (0, -W % 16, 0, -H % 16))
    ref = F.conv2d(padded, embed.proj.weight, embed.proj.bias, stride=16, padding=padding)  # (2, 8, h, w)
    assert grid == tuple(ref.shape[-2:])
    torch.testing.assert_close(tokens, ref.flatten(2).transpose(1, 2), rtol=1e-12, atol=1e-12)
    g = torch.randn_like(tokens)
    w_grad, = torch.autograd.grad((tokens * g).sum(), embed.proj.weight)
    w_ref, = torch.autograd.grad((ref.flatten(2).transpose(1, 2) * g).sum(), embed.proj.weight)
    torch.testing.assert_close(w_grad, w_ref, rtol=1e-12, atol=1e-12)
