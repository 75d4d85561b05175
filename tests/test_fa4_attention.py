"""The FlashAttention-4 adapter (``models/fa4_attention.py``).

On the CPU, FA4 itself cannot run: a stand-in for its two entry points (``_flash_attn_fwd``, ``_flash_attn_bwd``)
computes attention and its gradients in float64 with FA4's conventions (q, k, v as (B, N, H, D), log-sum-exp
(B, H, N) in natural log, gradients written into the dq/dk/dv it is given). That tests what is ours: which qkv slot
feeds which argument, how the gradient is assembled in the (B, N, 3, H, D) layout, the scale, the autograd and fake
registrations; the reference is autograd through plain float64 attention. On a GPU with flash-attn-4 installed the
real kernels are compared with float32 math.
"""

from __future__ import annotations

import importlib.machinery
import sys
import types

import pytest
import torch
import torch.nn.functional as F

from opensapiens.models import fa4_attention as fa4
from opensapiens.models.mae import MAE, MAEConfig
from opensapiens.models.vit import Attention, get_arch
from opensapiens.training.speed import use_flash_attention


def _stand_in_forward(q, k, v, softmax_scale=None, return_lse=False, **_):
    s = torch.einsum("bnhd,bmhd->bhnm", q.double(), k.double()) * softmax_scale
    lse = torch.logsumexp(s, dim=-1)  # B H N
    out = torch.einsum("bhnm,bmhd->bnhd", torch.exp(s - lse[..., None]), v.double())
    return out.to(q.dtype).contiguous(), lse.float(), None, None, None  # FA4 allocates both contiguous


def _stand_in_backward(q, k, v, out, dout, lse, softmax_scale, *_, deterministic=False, dq=None, dk=None, dv=None,
                       **__):
    q64, k64, v64, o64, do64 = (t.double() for t in (q, k, v, out, dout))
    s = torch.einsum("bnhd,bmhd->bhnm", q64, k64) * softmax_scale
    p = torch.exp(s - lse.double()[..., None])
    dp = torch.einsum("bnhd,bmhd->bhnm", do64, v64)
    delta = (do64 * o64).sum(-1).transpose(1, 2)  # B H N
    ds = p * (dp - delta[..., None])
    dq.copy_(torch.einsum("bhnm,bmhd->bnhd", ds, k64) * softmax_scale)
    dk.copy_(torch.einsum("bhnm,bnhd->bmhd", ds, q64) * softmax_scale)
    dv.copy_(torch.einsum("bhnm,bnhd->bmhd", p, do64))
    return dq, dk, dv


@pytest.fixture
def stand_in(monkeypatch):
    interface = types.SimpleNamespace(_flash_attn_fwd=_stand_in_forward, _flash_attn_bwd=_stand_in_backward)
    cute = types.ModuleType("flash_attn.cute")
    cute.__spec__ = importlib.machinery.ModuleSpec("flash_attn.cute", None)  # found by importlib.util.find_spec
    cute.interface = interface
    monkeypatch.setitem(sys.modules, "flash_attn", types.ModuleType("flash_attn"))
    monkeypatch.setitem(sys.modules, "flash_attn.cute", cute)
    monkeypatch.setitem(sys.modules, "flash_attn.cute.interface", interface)


def _reference(qkv: torch.Tensor, scale: float) -> torch.Tensor:
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # B H N D
    p = torch.softmax(q @ k.transpose(-1, -2) * scale, dim=-1)
    return (p @ v).transpose(1, 2)  # B N H D


def test_output_and_qkv_gradient_match_float64_attention(stand_in):
    torch.manual_seed(0)
    B, N, H, D, scale = 2, 11, 3, 8, 0.3
    qkv = torch.randn(B, N, 3 * H * D, dtype=torch.float64).view(B, N, 3, H, D)
    grad = torch.randn(B, N, H, D, dtype=torch.float64)
    x = qkv.clone().requires_grad_()
    out = fa4.fa4_attention(x, scale)
    out.backward(grad)
    y = qkv.clone().requires_grad_()
    ref = _reference(y, scale)
    ref.backward(grad)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    # the stand-in keeps the log-sum-exp in float32, as FA4 does: ~1e-7 of P; a gradient in the wrong slot is O(1)
    torch.testing.assert_close(x.grad, y.grad, rtol=1e-5, atol=1e-6)


def test_registrations_pass_opcheck(stand_in):
    torch.manual_seed(0)
    qkv = torch.randn(1, 5, 3, 2, 8, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(torch.ops.opensapiens.fa4_attention_forward.default, (qkv, 0.35))
    out, lse = torch.ops.opensapiens.fa4_attention_forward(qkv.detach(), 0.35)
    args = (torch.randn_like(out), qkv.detach(), out, lse, 0.35, False)
    torch.library.opcheck(torch.ops.opensapiens.fa4_attention_backward.default, args)


def test_attention_module_on_fa4_matches_sdpa(stand_in, monkeypatch):
    """The module's fa4 path (qkv reshaped to the (B, N, 3, H, D) view) equals its SDPA path."""
    torch.manual_seed(0)
    attn = Attention(32, 4).double()
    x = torch.randn(2, 9, 32, dtype=torch.float64)
    expected = attn(x)
    attn.kernel = "fa4"
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))  # the CUDA gate, on the CPU
    torch.testing.assert_close(attn(x), expected, rtol=1e-12, atol=1e-12)


def test_padded_heads_run_on_fa4_and_match_unpadded_sdpa(stand_in, monkeypatch):
    """A head dim FA4 does not take (here 12; the 2B model's 60) runs on it zero-padded (16; 64) when training pads
    heads at run time; output and every parameter gradient equal plain SDPA's at the true head dim."""
    torch.manual_seed(0)
    attn = Attention(24, 2).double()  # head dim 12
    x = torch.randn(2, 9, 24, dtype=torch.float64)
    grad = torch.randn(2, 9, 24, dtype=torch.float64)
    attn(x).backward(grad)
    expected = {n: p.grad.clone() for n, p in attn.named_parameters()}
    out_sdpa = attn(x).detach()
    attn.zero_grad()
    calls = []
    real = fa4.fa4_attention
    monkeypatch.setattr(fa4, "fa4_attention", lambda qkv, scale: calls.append(qkv.shape) or real(qkv, scale))
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))  # the CUDA gate, on the CPU
    attn.kernel = "fa4"
    assert torch.equal(attn(x).detach(), out_sdpa) and calls == []  # head dim 12 unpadded: SDPA, no error
    attn.padded_head_dim = 16  # what pad_attention_heads sets
    out = attn(x)
    out.backward(grad)
    assert calls[-1] == (2, 9, 3, 2, 16)  # FA4 saw the padded heads
    torch.testing.assert_close(out, out_sdpa, rtol=1e-12, atol=1e-12)
    for n, p in attn.named_parameters():
        torch.testing.assert_close(p.grad, expected[n], rtol=1e-5, atol=1e-6)  # float32 log-sum-exp, as FA4


def test_use_flash_attention_switches_the_chosen_head_dims(stand_in):
    model = MAE(MAEConfig(get_arch("nano"), (32, 32), decoder_dim=64, decoder_depth=2, decoder_heads=2))
    # nano: 2 heads of 64 in the encoder; the decoder here: 2 heads of 32
    assert use_flash_attention(model, head_dims=(32,), kernel="fa4") == 2
    kernels = {(m.head_dim, m.kernel) for m in model.modules() if isinstance(m, Attention)}
    assert kernels == {(64, "sdpa"), (32, "fa4")}


def test_missing_package_and_bad_inputs_are_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "flash_attn", None)  # import fails, as without the package
    monkeypatch.setitem(sys.modules, "flash_attn.cute", None)
    assert not fa4.available()
    model = MAE(MAEConfig(get_arch("nano"), (32, 32), decoder_dim=64, decoder_depth=2, decoder_heads=2))
    with pytest.raises(ImportError, match="pip install flash-attn-4"):
        use_flash_attention(model, kernel="fa4")
    with pytest.raises(ValueError, match="'triton' or 'fa4'"):
        use_flash_attention(model, kernel="cudnn")
    with pytest.raises(ValueError, match="head dim must be a multiple of 8"):
        fa4.fa4_attention(torch.randn(1, 4, 3, 2, 60), 0.1)
    with pytest.raises(ValueError, match=r"\(B, N, 3, H, D\)"):
        fa4.fa4_attention(torch.randn(1, 4, 2, 2, 64), 0.1)


@pytest.mark.skipif(not (torch.cuda.is_available() and fa4.available()), reason="needs CUDA and flash-attn-4")
@pytest.mark.parametrize("head_dim", [32, 64])
def test_fa4_kernels_match_float32_math_on_gpu(head_dim):
    torch.manual_seed(0)
    B, N, H = 2, 1025, 4
    qkv = torch.randn(B, N, 3, H, head_dim, device="cuda", dtype=torch.bfloat16)
    grad = torch.randn(B, N, H, head_dim, device="cuda", dtype=torch.bfloat16)
    x = qkv.clone().requires_grad_()
    out = fa4.fa4_attention(x, head_dim**-0.5)
    out.backward(grad)
    y = qkv.float().requires_grad_()
    q, k, v = y.permute(2, 0, 3, 1, 4).unbind(0)
    ref = F.scaled_dot_product_attention(q, k, v).transpose(1, 2)
    ref.backward(grad.float())
    assert (out.float() - ref).norm() / ref.norm() < 1e-2  # bf16 inputs and output
    assert (x.grad.float() - y.grad).norm() / y.grad.norm() < 2e-2


def test_backward_tile_table_overrides_fa4s_choice_only_where_set(monkeypatch):
    """Our BACKWARD_TILES answer FA4's Hopper tile question for the head dims they list; FA4 answers the rest."""
    from dataclasses import dataclass

    @dataclass
    class BwdConfig:
        m_block_size: int
        n_block_size: int

    def fa4_choice(head_dim, head_dim_v, causal, local, sparse_block_size_q=None):
        return BwdConfig(128, 128)

    interface = types.SimpleNamespace(BwdConfig=BwdConfig, _tile_size_bwd_sm90=fa4_choice,
                                      _flash_attn_fwd=_stand_in_forward, _flash_attn_bwd=_stand_in_backward)
    cute = types.ModuleType("flash_attn.cute")
    cute.interface = interface
    monkeypatch.setitem(sys.modules, "flash_attn", types.ModuleType("flash_attn"))
    monkeypatch.setitem(sys.modules, "flash_attn.cute", cute)
    monkeypatch.setitem(sys.modules, "flash_attn.cute.interface", interface)
    monkeypatch.setattr(fa4, "BACKWARD_TILES", {32: {"m_block_size": 64, "n_block_size": 256}})
    fa4._interface()
    fa4._interface()  # installed once, not wrapped twice
    choose = interface._tile_size_bwd_sm90
    assert choose(32, 32, False, False) == BwdConfig(64, 256)
    assert choose(64, 64, False, False) == BwdConfig(128, 128)  # not in the table
    assert choose(32, 32, True, False) == BwdConfig(128, 128)  # causal: FA4's
    assert choose(32, 32, False, False, sparse_block_size_q=128) == BwdConfig(128, 128)


@pytest.mark.parametrize("capability, installed, expected", [((9, 0), True, "fa4"), ((10, 0), True, "fa4"),
                                                             ((8, 0), True, "triton"), ((9, 0), False, "triton")])
def test_auto_attention_takes_fa4_on_hopper_and_blackwell_where_installed(stand_in, monkeypatch, capability,
                                                                           installed, expected):
    from opensapiens.training.speed import use_fast_attention

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(fa4, "available", lambda: installed)
    model = MAE(MAEConfig(get_arch("nano"), (32, 32), decoder_dim=64, decoder_depth=2, decoder_heads=2))
    assert use_fast_attention(model, torch.device("cuda"), "auto") == expected
    kernels = {(m.head_dim, m.kernel) for m in model.modules() if isinstance(m, Attention)}
    if expected == "fa4":  # every head dim FA4 takes
        assert kernels == {(64, "fa4"), (32, "fa4")}
    else:  # our Triton kernels at head dim 32 only
        assert kernels == {(64, "sdpa"), (32, "triton")}


def test_attention_choice_is_validated_and_cpu_keeps_sdpa():
    from opensapiens.pretrain.config import PretrainConfig
    from opensapiens.training.config import TrainConfig, resolve
    from opensapiens.training.speed import use_fast_attention

    model = MAE(MAEConfig(get_arch("nano"), (32, 32), decoder_dim=64, decoder_depth=2, decoder_heads=2))
    assert use_fast_attention(model, torch.device("cpu"), "fa4") == "sdpa"
    assert {m.kernel for m in model.modules() if isinstance(m, Attention)} == {"sdpa"}
    with pytest.raises(ValueError, match="attention must be one of auto, sdpa, triton, fa4"):
        use_fast_attention(model, torch.device("cpu"), "xformers")
    import argparse

    from opensapiens.cli.train import add_attention_option
    from opensapiens.training.speed import ATTENTION_CHOICES

    parser = argparse.ArgumentParser()
    add_attention_option(parser.add_argument_group())
    assert tuple(parser._option_string_actions["--attention"].choices) == ATTENTION_CHOICES  # the CLIs' spelling
    with pytest.raises(ValueError, match="attention must be one of"):
        PretrainConfig(data="x", out="y", attention="xformers")
    with pytest.raises(ValueError, match="attention must be one of"):
        resolve(TrainConfig(task="seg", data="synth", out="y", attention="xformers"))


def test_inference_attention_choice_is_validated():
    from opensapiens.inference.optimize import optimize_for_inference
    from opensapiens.models import build_model

    model = build_model("features", "nano")
    with pytest.raises(ValueError, match="attention must be 'sdpa' or 'fa4'"):
        optimize_for_inference(model, attention="xformers")


def test_auto_attention_falls_back_when_fa4_does_not_import_or_lacks_its_entry_points(monkeypatch):
    from opensapiens.training.speed import use_fast_attention

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(fa4, "available", lambda: True)
    model = MAE(MAEConfig(get_arch("nano"), (32, 32), decoder_dim=64, decoder_depth=2, decoder_heads=2))
    monkeypatch.setitem(sys.modules, "flash_attn", None)  # found by pip, broken at import
    with pytest.warns(UserWarning, match="installed but unusable"):
        assert use_fast_attention(model, torch.device("cuda"), "auto") == "triton"
    cute = types.ModuleType("flash_attn.cute")
    cute.interface = types.SimpleNamespace(_flash_attn_fwd=_stand_in_forward)  # a version without the backward
    monkeypatch.setitem(sys.modules, "flash_attn", types.ModuleType("flash_attn"))
    monkeypatch.setitem(sys.modules, "flash_attn.cute", cute)
    monkeypatch.setitem(sys.modules, "flash_attn.cute.interface", cute.interface)
    with pytest.raises(ImportError, match="no _flash_attn_bwd .*4.0.0b36"):
        fa4._interface()
    with pytest.warns(UserWarning, match="no _flash_attn_bwd"):
        assert use_fast_attention(model, torch.device("cuda"), "auto") == "triton"
