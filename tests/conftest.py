"""Shared fixtures: tiny models and checkpoints written in the official Sapiens key layouts."""

from __future__ import annotations

import os
import signal
import sys
import types
from pathlib import Path

import pytest
import torch

from opensapiens.checkpoints import ours_to_official
from opensapiens.models import ViTArch, build_model

# A tiny non-official architecture: 2 blocks, width 64, 4 heads (head dim 16).
TINY = ViTArch("test-tiny", 64, 2, 4)
TINY_HEAD = 32  # head width instead of the official 768/384
TESTS = Path(__file__).resolve().parent


def subprocess_env(*paths: str | Path, **variables: str) -> dict[str, str]:
    """``os.environ`` for a fresh Python process: ``paths`` first on its PYTHONPATH, ``variables`` set."""
    path = os.pathsep.join(str(p) for p in (*paths, os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, **variables, "PYTHONPATH": path}


def bf16_distances(reference: torch.nn.Module, models: list[torch.nn.Module], x: torch.Tensor) -> list[float]:
    """How far each (bf16) model's output on ``x`` lies from the float32 ``reference``'s: relative L2 distances."""
    with torch.inference_mode():
        ref = reference(x).double()
        return [float((m(x.bfloat16()).double() - ref).norm() / ref.norm()) for m in models]


def assert_fp8_fused_tracks_fp8_linears(model, reference, fused, x: torch.Tensor, *block_args) -> None:
    """Each FP8 fused block's update of the stream (it carries x - shift) against the same block with its Linears
    as ``Fp8Linear`` (``reference``) and the exact one (``model``): e4m3 visible and bounded, the fused block within
    half the quantization error of the reference; then the whole models (head included) on a 64 x 48 image."""
    with torch.inference_mode():
        for plain, ref, fb in zip(model.backbone.blocks, reference.backbone.blocks, fused.backbone.blocks,
                                  strict=True):
            exact = plain(x.clone(), *block_args) - x
            quantized = ref(x.clone(), *block_args) - x
            out = fb(x.clone() - fb.norm1.shift, *block_args) + fb.shift_out - x
            quantization = (quantized - exact).norm() / exact.norm()
            assert 1e-3 < quantization < 0.2  # e4m3 is visible, and bounded
            assert (out - quantized).norm() / exact.norm() < 0.5 * quantization
            assert (out - exact).norm() / exact.norm() < 1.3 * quantization
        images = torch.randn(2, 3, 64, 48)
        exact, quantized, out = (m(images).double() for m in (model, reference, fused))
    assert (out - exact).norm() <= 1.3 * (quantized - exact).norm()


def make_official_state(task: str, out_channels: int | None = None, seed: int = 0, pos_grid=(8, 6)):
    """(model, official-layout state dict) with random weights, as an official task checkpoint would hold."""
    torch.manual_seed(seed)
    model = build_model(task, TINY, out_channels=out_channels, head_channels=TINY_HEAD, pos_grid=pos_grid)
    for name, p in model.named_parameters():  # random weights with peaked attention so that every path matters
        torch.nn.init.normal_(p, std=0.15 if "qkv" in name else 0.05)
        if "norm" in name and name.endswith("weight"):
            p.data += 1.0
    return model.eval(), ours_to_official(model.state_dict(), task)


class _MissingModuleClass:
    """Pickled under a module name that will not exist when the file is read back."""

    def __init__(self, payload):
        self.payload = payload


@pytest.fixture
def mmengine_like_meta():
    """An object whose class lives in a module that is importable only while this fixture sets it up."""
    mod = types.ModuleType("mmengine_fake_for_tests")
    _MissingModuleClass.__module__ = mod.__name__
    _MissingModuleClass.__qualname__ = "ConfigDict"
    mod.ConfigDict = _MissingModuleClass
    sys.modules[mod.__name__] = mod
    obj = _MissingModuleClass({"model": {"type": "TopdownPoseEstimator"}, "lr": 5e-4})
    yield obj
    sys.modules.pop(mod.__name__, None)


def save_mmengine_checkpoint(path, state_dict, meta_obj) -> None:
    """torch.save a {state_dict, meta} container like mmengine's, then make the meta class unimportable."""
    torch.save({"state_dict": state_dict, "meta": {"cfg": meta_obj, "epoch": 3}, "message_hub": meta_obj}, path)
    sys.modules.pop(type(meta_obj).__module__, None)


@pytest.fixture
def step_reads(monkeypatch):
    """``watch(module)`` wraps ``module.train_step`` so that each step's result notes when the loop reads it.

    Returns (queued, reads): the real ``StepResult``s in order, and (step read, steps queued by then) per read.
    """
    queued, reads = [], []

    class Watched:
        def __init__(self, result, step):
            self.result, self.step = result, step

        def __getattr__(self, name):
            reads.append((self.step, len(queued)))
            return getattr(self.result, name)

    def watch(module):
        real = module.train_step

        def watched_step(*args, **kw):
            queued.append(real(*args, **kw))
            return Watched(queued[-1], len(queued))

        monkeypatch.setattr(module, "train_step", watched_step)
        return queued, reads

    return watch


@pytest.fixture
def sigterm_during_step(monkeypatch):
    """``install(module, n)``: ``module.train_step`` sends this process SIGTERM during its n-th call, as a
    scheduler's pre-emption arriving mid-step (the loop's handler sees it after the step)."""

    def install(module, n: int) -> None:
        real, calls = module.train_step, []

        def signalled_step(*args, **kw):
            calls.append(1)
            if len(calls) == n:
                os.kill(os.getpid(), signal.SIGTERM)
            return real(*args, **kw)

        monkeypatch.setattr(module, "train_step", signalled_step)

    return install


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An offline Hugging Face cache under tmp_path/hf and our checkpoint folder under tmp_path/local; huggingface_hub
    reads its settings from the environment once, at its import, so its constants are set as well."""
    from huggingface_hub import constants

    for var, value in (("HF_HUB_OFFLINE", "1"), ("HF_HUB_CACHE", str(tmp_path / "hf")),
                       ("OPENSAPIENS_CHECKPOINTS", str(tmp_path / "local"))):
        monkeypatch.setenv(var, value)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
