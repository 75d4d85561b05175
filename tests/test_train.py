"""Fine-tuning machinery on CPU with a nano model: LR-decay groups, schedule, non-finite skip, learning, resume."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal

import numpy as np
import pytest
import torch
from test_data_toy import write_toy_dataset
from torch.utils._python_dispatch import TorchDispatchMode

from opensapiens.data import DataError
from opensapiens.models import build_model
from opensapiens.training import Schedule, TrainConfig, param_groups, train, train_step
from opensapiens.training import finetune as finetune_module
from opensapiens.training.config import resolve
from opensapiens.training.logger import RunLogger, StepWindow
from opensapiens.training.reproducibility import deterministic_kernels

SIZE = (128, 96)


@pytest.fixture(autouse=True)
def one_thread():
    """Two cores shared with other jobs: one intra-op thread is both faster and deterministic."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    return write_toy_dataset(root / "train", 24, SIZE, seed=0), write_toy_dataset(root / "val", 8, SIZE, seed=1)


def config(toy, out, task="seg", **kw) -> TrainConfig:
    train_dir, val_dir = toy
    base = dict(task=task, data=str(train_dir), out=str(out), arch="nano", head_channels=32, input_size=SIZE,
                steps=6, batch_size=4, workers=0, precision="fp32", lr=2e-3, tensorboard=False,
                classes=str(train_dir / "classes.json"), keypoints=str(train_dir / "keypoints.json"), log_interval=1)
    base.update(kw)
    return TrainConfig(**base)


def events(run, kind="train") -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["event"] == kind]


# ------------------------------------------------------------------------------------------------ optimizer pieces


def test_layer_decay_groups_match_hand_computed_table():
    model = build_model("seg", "nano", out_channels=5, head_channels=32, pos_grid=(8, 6))  # L = 6 blocks
    groups = param_groups(model.named_parameters(), weight_decay=0.1, layer_decay=0.85, num_layers=6)
    by_name = {n: (g["lr_scale"], g["weight_decay"]) for g in groups for n in g["names"]}
    table = {  # name: (0.85 ** (L + 1 - layer id), weight decay)
        "backbone.patch_embed.proj.weight": (0.85 ** 7, 0.1),
        "backbone.patch_embed.proj.bias": (0.85 ** 7, 0.0),
        "backbone.pos_embed": (0.85 ** 7, 0.0),
        "backbone.blocks.0.attn.qkv.weight": (0.85 ** 6, 0.1),
        "backbone.blocks.0.norm1.weight": (0.85 ** 6, 0.0),
        "backbone.blocks.3.mlp.fc2.bias": (0.85 ** 3, 0.0),
        "backbone.blocks.5.mlp.fc1.weight": (0.85 ** 1, 0.1),
        "backbone.norm.weight": (1.0, 0.0),
        "head.deconv_layers.0.weight": (1.0, 0.1),
        "head.conv_layers.0.bias": (1.0, 0.0),
        "head.final.weight": (1.0, 0.1),
    }
    for name, (scale, wd) in table.items():
        assert by_name[name][0] == pytest.approx(scale, rel=1e-12), name
        assert by_name[name][1] == wd, name
    assert len(by_name) == sum(1 for _ in model.parameters())  # every parameter in exactly one group
    flat = param_groups(model.named_parameters(), weight_decay=0.05)  # no layer decay: decay / no-decay only
    assert sorted((g["lr_scale"], g["weight_decay"]) for g in flat) == [(1.0, 0.0), (1.0, 0.05)]


def test_schedule_values():
    poly = Schedule(100, warmup_steps=10, warmup_start=1e-3, kind="poly")
    assert poly.factor(0) == pytest.approx(1e-3)  # warm-up start x poly(0) = 1
    assert poly.factor(5) == pytest.approx((1e-3 + (1 - 1e-3) * 0.5) * 0.95)
    assert poly.factor(50) == pytest.approx(0.5)
    step = Schedule(210, kind="step")  # official: x0.1 at epochs 170 and 200 of 210
    assert [step.factor(s) for s in (169, 170, 199, 200)] == pytest.approx([1, 0.1, 0.1, 0.01])
    cos = Schedule(10, kind="cosine", min_factor=0.1)
    assert cos.factor(5) == pytest.approx(0.1 + 0.9 * 0.5)


@pytest.mark.parametrize("fused", [False, True])  # fused: the skip is decided on the device (found_inf)
def test_non_finite_loss_skips_the_step(fused):
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, fused=fused)
    before = [p.detach().clone() for p in model.parameters()]
    r = train_step(model, opt, [torch.ones(2, 3)], lambda x: model(x).sum() * float("nan"))
    assert r.skipped and all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    r = train_step(model, opt, [torch.ones(2, 3)], lambda x: model(x).sum())
    assert not r.skipped and not torch.equal(before[0], model.weight)
    # after a real step: a skipped one leaves the parameters and every optimizer state (step count, moments) as is
    before = [p.detach().clone() for p in model.parameters()]
    state = {k: {n: v.clone() for n, v in s.items()} for k, s in opt.state_dict()["state"].items()}
    r = train_step(model, opt, [torch.ones(2, 3)], lambda x: model(x).sum() * float("inf"))
    assert r.skipped and all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    after = opt.state_dict()["state"]
    assert all(torch.equal(state[k][n], after[k][n]) for k in state for n in state[k]) and after[0]["step"] == 1
    assert not hasattr(opt, "found_inf")
    r = train_step(model, opt, [torch.ones(2, 3)], lambda x: model(x).sum())
    assert not r.skipped and opt.state_dict()["state"][0]["step"] == 2 and not torch.equal(before[0], model.weight)


def test_non_finite_step_in_a_run_is_counted_and_logged(toy, tmp_path, monkeypatch):
    real = finetune_module.build_criterion
    calls = {"n": 0}

    def flaky(*args, **kw):
        criterion = real(*args, **kw)

        def loss(output, batch):
            calls["n"] += 1
            value = criterion(output, batch)
            return value * float("inf") if calls["n"] == 3 else value

        return loss

    monkeypatch.setattr(finetune_module, "build_criterion", flaky)
    summary = train(config(toy, tmp_path / "run", task="depth", steps=4))
    assert summary["skipped_steps"] == 1
    skips = events(tmp_path / "run", "skip")
    assert [e["step"] for e in skips] == [3]


def test_step_results_are_read_two_steps_late_or_when_the_loop_logs(toy, tmp_path, step_reads):
    # reading a step's loss waits for the GPU; between logs the host must have queued later steps first
    queued, reads = step_reads(finetune_module)
    summary = train(config(toy, tmp_path / "run", steps=7, log_interval=3, ckpt_interval=100))
    logs = {3, 6, 7}  # logs at 3 and 6; the final log and save at 7
    assert all(at >= step + 2 or at in logs for step, at in reads), reads
    assert {step for step, _ in reads} == set(range(1, 8))  # every step counted
    logged = events(tmp_path / "run")
    assert [e["step"] for e in logged] == [3, 6, 7]
    means = [sum(r.loss for r in queued[a:b]) / (b - a) for a, b in ((0, 3), (3, 6), (6, 7))]
    assert [e["loss"] for e in logged] == pytest.approx(means, rel=1e-6)
    assert summary["skipped_steps"] == 0 and summary["loss"] == pytest.approx(queued[-1].loss)


def test_step_window_reads_late_and_logs_each_skip_at_its_step():
    class Result:  # a step's values, as train_step's StepResult presents them
        def __init__(self, loss, grad_norm=1.0):
            self.loss, self.grad_norm = loss, grad_norm
            self.skipped = not (math.isfinite(loss) and math.isfinite(grad_norm))

    class Logger:
        def __init__(self):
            self.records = []

        def log(self, event, step, **values):
            self.records.append((event, step, values))

    logger = Logger()
    window = StepWindow(logger, skipped_steps=2, lag=2)  # two skips before a resume
    for step, loss in enumerate([0.5, float("nan"), 0.25, 0.75], start=11):
        window.add(step, Result(loss, grad_norm=float("inf") if step == 14 else 1.0))
    # steps 11 and 12 read once two later ones were queued; 13 and 14 not yet
    assert [(e, s, v["skipped_steps"]) for e, s, v in logger.records] == [("skip", 12, 3)]
    assert window.skipped_steps == 3
    rec = window.record(global_batch=8, device=torch.device("cpu"))
    assert [(e, s, v["skipped_steps"]) for e, s, v in logger.records] == [("skip", 12, 3), ("skip", 14, 4)]
    assert rec["loss"] == pytest.approx((0.5 + 0.25) / 2) and rec["skipped"] == 2 and window.skipped_steps == 4
    assert window.record(8, torch.device("cpu"))["loss"] is None  # a new, empty window


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA")
def test_step_result_on_cuda_arrives_behind_its_step():
    model = torch.nn.Linear(64, 1).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, fused=True)
    x = torch.randn(128, 64, device="cuda")
    expected = (model(x) ** 2).mean().double().item()
    r = train_step(model, opt, [x], lambda b: (model(b) ** 2).mean())
    norm = torch.cat([p.grad.flatten() for p in model.parameters()]).double().norm().item()
    assert r.loss == pytest.approx(expected, rel=1e-5) and r.grad_norm == pytest.approx(norm, rel=1e-5)
    assert not r.skipped


def test_activation_checkpointing_keeps_results_and_never_reruns_head_convolutions():
    import copy

    from torch.utils.flop_counter import FlopCounterMode

    from opensapiens.training.speed import checkpoint_blocks, checkpoint_head

    torch.manual_seed(0)
    plain = build_model("normal", "nano", head_channels=16, pos_grid=(4, 3))
    plain.head.dropout = torch.nn.Identity()
    ckpt = copy.deepcopy(plain)
    checkpoint_blocks(ckpt.backbone.blocks, num_blocks=4)
    checkpoint_head(ckpt.head)
    x = torch.randn(2, 3, 64, 48)
    results = []
    for model in (plain, ckpt):
        out = model(x)
        with FlopCounterMode(display=False) as counter:  # what the backward pass runs
            out.square().mean().backward()
        ops = {str(k) for k in counter.get_flop_counts()["Global"]}
        results.append((out.detach(), [p.grad for p in model.parameters()], ops))
    (o1, g1, ops1), (o2, g2, ops2) = results
    assert torch.equal(o1, o2)
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(g1, g2))
    assert "aten.convolution" not in ops1 and "aten.convolution" not in ops2  # head convolutions: saved, not rerun
    assert "aten.addmm" in ops2 and "aten.addmm" not in ops1  # checkpointed blocks are recomputed


class OpCalls(TorchDispatchMode):
    """``counts[kind]``: the aten ops of each kind run inside ``with OpCalls(kind=ops, ...)``; a kind's ops are op
    overloads or packet names (``rsqrt``)."""

    def __init__(self, **kinds: set):
        super().__init__()
        self.kinds, self.counts = kinds, dict.fromkeys(kinds, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        for kind, ops in self.kinds.items():
            self.counts[kind] += func in ops or func.overloadpacket.__name__ in ops
        return func(*args, **(kwargs or {}))


def test_saved_attention_is_not_recomputed_and_gradients_are_exact():
    """checkpoint_blocks(save_attention=True): backward reruns each block's GEMMs but not its fused attention."""
    import copy

    from opensapiens.training.speed import _ATTENTION, checkpoint_blocks

    torch.manual_seed(0)
    plain = build_model("normal", "nano", head_channels=16, pos_grid=(4, 3))
    plain.head.dropout = torch.nn.Identity()
    x = torch.randn(2, 3, 64, 48)
    grads, backward_calls = [], []
    for save in (None, False, True):
        model = copy.deepcopy(plain)
        if save is not None:
            checkpoint_blocks(model.backbone.blocks, save_attention=save)
        out = model(x)
        with OpCalls(attention=_ATTENTION) as calls:
            out.square().mean().backward()
        grads.append([p.grad for p in model.parameters()])
        backward_calls.append(calls.counts["attention"])
    depth = len(plain.backbone.blocks)
    assert backward_calls == [0, depth, 0]  # plain: none; recomputed blocks: one per block; saved: none
    for g in grads[1:]:
        assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(grads[0], g))


@pytest.mark.parametrize("arch", ["nano", "sapiens2_nano"])
def test_saved_matmuls_rerun_only_the_memory_bound_ops_keep_less_and_give_the_same_gradients(arch):
    """checkpoint_blocks(save_matmuls=True): backward redoes no GEMM or attention of the forward (it runs as many as
    the plain model's backward), but reruns the norms; the blocks keep less than plain blocks, more than blocks that
    keep only their input."""
    import copy

    from opensapiens.benchmark import held_bytes
    from opensapiens.training.speed import _ATTENTION, _MATMUL, checkpoint_blocks

    norms = {"native_layer_norm", "_fused_rms_norm", "rsqrt"}  # (rms_norm is composite on the CPU: its rsqrt)
    torch.manual_seed(0)
    plain = build_model("seg", arch).train()
    x = torch.randn(2, 3, 64, 48)
    grads, calls, held = {}, {}, {}
    for mode in ("plain", "blocks", "matmuls"):
        model = copy.deepcopy(plain)
        if mode != "plain":
            checkpoint_blocks(model.backbone.blocks, save_matmuls=mode == "matmuls")
        out, held[mode] = held_bytes(lambda: model.backbone(x))  # noqa: B023 (called at once)
        with OpCalls(gemm=_MATMUL, attention=_ATTENTION, norm=norms) as calls[mode]:
            out.square().mean().backward()
        grads[mode] = [p.grad for p in model.backbone.parameters()]
    counts = {mode: c.counts for mode, c in calls.items()}
    assert counts["matmuls"]["gemm"] == counts["plain"]["gemm"] and counts["matmuls"]["attention"] == 0  # none redone
    assert counts["blocks"]["gemm"] > counts["plain"]["gemm"] and counts["blocks"]["attention"] > 0  # (sees reruns)
    assert counts["matmuls"]["norm"] > counts["plain"]["norm"]  # the norms are recomputed
    assert held["blocks"] < held["matmuls"] < held["plain"], held
    for mode in ("blocks", "matmuls"):
        assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(grads["plain"], grads[mode]))


def test_train_hands_its_block_checkpointing_choices_to_the_blocks(toy, tmp_path, monkeypatch):
    from opensapiens.training.speed import checkpoint_blocks

    seen = []

    def recording(blocks, num_blocks=None, save_attention=False, save_matmuls=False):
        seen.append((num_blocks, save_attention, save_matmuls))
        return checkpoint_blocks(blocks, num_blocks, save_attention, save_matmuls)

    monkeypatch.setattr(finetune_module, "checkpoint_blocks", recording)
    summary = train(config(toy, tmp_path / "run", steps=1, checkpointing="blocks", checkpoint_blocks=3,
                           save_matmuls=True))
    assert seen == [(3, False, True)] and math.isfinite(summary["loss"])


def test_save_attention_needs_block_checkpointing():
    from opensapiens.training.config import TrainConfig, resolve

    with pytest.raises(ValueError, match="save_attention keeps the attention output of checkpointed blocks"):
        resolve(TrainConfig(task="seg", data="synth", out="x", checkpointing="head", save_attention=True))
    with pytest.raises(ValueError, match="save_matmuls keeps the GEMM outputs of checkpointed blocks: it needs"):
        resolve(TrainConfig(task="seg", data="synth", out="x", save_matmuls=True))
    assert resolve(TrainConfig(task="seg", data="synth", out="x", checkpointing="blocks+head",
                               save_attention=True)).save_attention


def test_head_checkpointed_by_batch_slices_is_exact_and_keeps_only_slice_inputs():
    import copy

    from opensapiens.training.speed import checkpoint_head

    torch.manual_seed(0)
    plain = build_model("normal", "nano", head_channels=16, pos_grid=(4, 3)).double()
    plain.head.dropout = torch.nn.Identity()
    sliced = copy.deepcopy(plain)
    checkpoint_head(sliced.head, batch_chunk=2)
    feats = torch.randn(5, plain.config.arch.embed_dim, 4, 3, dtype=torch.float64)  # 5 = slices of 2, 2, 1
    results = []
    for model in (plain, sliced):
        x = feats.clone().requires_grad_(True)
        saved = []

        def pack(t: torch.Tensor, saved=saved) -> torch.Tensor:
            saved.append(t.numel() * t.element_size())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = model.head(x)
        out.square().sum().backward()
        results.append((out.detach(), x.grad, [p.grad for p in model.head.parameters()], sum(saved)))
    (o1, gx1, g1, saved_plain), (o2, gx2, g2, saved_sliced) = results
    torch.testing.assert_close(o2, o1, rtol=1e-12, atol=1e-12)  # InstanceNorm is per image: slicing is exact
    torch.testing.assert_close(gx2, gx1, rtol=1e-10, atol=1e-12)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)
    assert saved_sliced <= feats.numel() * 8 * 1.01  # the slice inputs, nothing of the high-resolution maps
    assert saved_sliced < saved_plain / 20

    # backward recomputes and differentiates one slice at a time, the last slice first
    events = []

    def first_stage(module, args, out):
        events.append(("forward", out.shape[0]))
        if out.requires_grad:
            out.register_hook(lambda g: events.append(("backward", g.shape[0])))

    sliced.head.deconv_layers[0].register_forward_hook(first_stage)
    sliced.head(feats.clone().requires_grad_(True)).square().sum().backward()
    assert events == [("forward", 2), ("forward", 2), ("forward", 1),
                      ("forward", 1), ("backward", 1), ("forward", 2), ("backward", 2), ("forward", 2), ("backward", 2)]


def test_head_chunk_needs_head_checkpointing():
    from opensapiens.training.config import TrainConfig, resolve

    with pytest.raises(ValueError, match="head_chunk=4 slices the checkpointed head"):
        resolve(TrainConfig(task="seg", data="synth", out="x", checkpointing="blocks", head_chunk=4))
    assert resolve(TrainConfig(task="seg", data="synth", out="x", checkpointing="head", head_chunk=4)).head_chunk == 4


def test_channels_last_head_keeps_results_and_runs_every_convolution_on_nhwc_maps():
    import copy

    from opensapiens.inference.optimize import channels_last_head
    from opensapiens.training.speed import checkpoint_head

    torch.manual_seed(0)
    plain = build_model("seg", "nano", out_channels=5, head_channels=16, pos_grid=(4, 3))
    plain.head.dropout = torch.nn.Identity()
    nhwc = copy.deepcopy(plain)
    channels_last_head(nhwc.head)
    checkpoint_head(nhwc.head)  # the hooks survive the checkpointed forward
    layouts = []
    for m in nhwc.head.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            m.register_forward_hook(lambda m, a, out: layouts.append(
                a[0].is_contiguous(memory_format=torch.channels_last)))
    x = torch.randn(2, 3, 64, 48, dtype=torch.float64)
    plain, nhwc = plain.double(), nhwc.double()
    out_plain, out_nhwc = plain(x), nhwc(x)
    torch.testing.assert_close(out_nhwc, out_plain, rtol=1e-10, atol=1e-12)
    out_plain.square().sum().backward()
    out_nhwc.square().sum().backward()
    for (name, a), b in zip(plain.named_parameters(), nhwc.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-9, atol=1e-12, msg=name)
    assert layouts and all(layouts)


def test_init_from_an_official_pretrain_file_drops_cls_and_resizes_positions(tmp_path):
    import torch.nn.functional as F

    from opensapiens.checkpoints import ours_to_official
    from opensapiens.models import SapiensViT
    from opensapiens.training.init import load_initial_weights

    torch.manual_seed(1)
    pretrain = SapiensViT("nano", pos_grid=(8, 8), with_cls_token=True)  # 1 cls slot + 8x8 grid, as *_clean.pth
    sd = ours_to_official({f"backbone.{k}": v for k, v in pretrain.state_dict().items()}, "features")
    torch.save(sd, tmp_path / "sapiens_nano_clean.pth")
    model = build_model("seg", "nano", out_channels=5, head_channels=32, pos_grid=(8, 6))
    head_before = {k: v.clone() for k, v in model.head.state_dict().items()}
    report = load_initial_weights(model, str(tmp_path / "sapiens_nano_clean.pth"))
    assert report["head"] == 0 and report["skipped_head"]
    assert torch.equal(model.backbone.blocks[3].mlp.fc1.weight, pretrain.blocks[3].mlp.fc1.weight)
    grid = pretrain.pos_embed[:, 1:].reshape(1, 8, 8, -1).permute(0, 3, 1, 2)  # cls row dropped
    expected = F.interpolate(grid, size=(8, 6), mode="bicubic", align_corners=False).flatten(2).transpose(1, 2)
    assert torch.allclose(model.backbone.pos_embed, expected, atol=1e-6)
    assert all(torch.equal(v, head_before[k]) for k, v in model.head.state_dict().items())


def test_architecture_defaults_to_the_init_checkpoints_and_the_recipe_follows(toy, tmp_path):
    from opensapiens.checkpoints import load_state, ours_to_official, save_model
    from opensapiens.models import SapiensViT

    torch.manual_seed(0)
    save_model(build_model("features", "tiny", pos_grid=(8, 8)), tmp_path / "tiny.safetensors")  # carries its config
    pretrain = SapiensViT("nano", pos_grid=(8, 8), with_cls_token=True)  # an official _clean.pth: width and depth only
    torch.save(ours_to_official({f"backbone.{k}": v for k, v in pretrain.state_dict().items()}, "features"),
               tmp_path / "nano_clean.pth")
    pose = dict(task="pose", data="synth", out="x", keypoints="goliath")
    assert resolve(TrainConfig(**pose)).arch == "0.3b" and resolve(TrainConfig(**pose)).ohkm_topk == 128
    tiny = resolve(TrainConfig(**pose, init=str(tmp_path / "tiny.safetensors")))
    assert tiny.arch == "tiny" and tiny.ohkm_topk == 0  # Goliath OHKM is the 0.3b / 1b recipe
    assert resolve(TrainConfig(**pose, init=str(tmp_path / "nano_clean.pth"))).arch == "nano"
    assert resolve(TrainConfig(**pose, arch="1b", init=str(tmp_path / "tiny.safetensors"))).arch == "1b"  # as given
    # the head width follows a checkpoint with this task's head (the bundled seg head is narrower than the recipe's
    # 768: it used to be dropped for its shape), and the recipe's where the checkpoint has none
    bundled_seg = load_state("sapiens-nano", task="seg")[0].head_channels
    seg = dict(task="seg", data="synth", out="x", init="sapiens-nano")
    assert bundled_seg != 768 and resolve(TrainConfig(**seg)).head_channels == bundled_seg
    assert resolve(TrainConfig(**seg, head_channels=32)).head_channels == 32  # as given
    assert resolve(TrainConfig(**pose, init=str(tmp_path / "nano_clean.pth"))).head_channels is None
    run = tmp_path / "run"
    assert train(config(toy, run, arch=None, init=str(tmp_path / "nano_clean.pth"), steps=1))["step"] == 1
    assert events(run, "init")[0]["backbone"] > 0


# ------------------------------------------------------------------------------------------------------- learning


@pytest.mark.parametrize("task,steps", [("pose", 120), ("depth", 30), ("normal", 30)])
def test_each_task_loss_decreases(toy, tmp_path, task, steps):
    train(config(toy, tmp_path / task, task=task, steps=steps, batch_size=8, log_interval=steps // 6))
    losses = [e["loss"] for e in events(tmp_path / task)]
    assert losses[-1] < 0.7 * losses[0], losses


def _miou(pred: np.ndarray, gt: np.ndarray, n: int) -> float:
    ious = [((pred == c) & (gt == c)).sum() / ((pred == c) | (gt == c)).sum() for c in range(n)
            if ((pred == c) | (gt == c)).any()]
    return float(np.mean(ious))


def test_trained_seg_model_beats_its_untrained_self(toy, tmp_path):
    import cv2

    from opensapiens.checkpoints import save_model
    from opensapiens.inference.predictors import load_predictor

    run = tmp_path / "seg"
    summary = train(config(toy, run, steps=300, batch_size=8, lr=8e-3, log_interval=50))
    assert summary["step"] == 300
    torch.manual_seed(0)
    untrained = build_model("seg", "nano", out_channels=5, head_channels=32, pos_grid=(8, 6))
    save_model(untrained, tmp_path / "untrained.safetensors")
    val = toy[1]
    names = sorted(p.stem for p in (val / "images").iterdir())
    gts = [cv2.imread(str(val / "seg" / f"{n}.png"), cv2.IMREAD_UNCHANGED) for n in names]
    images = [cv2.imread(str(val / "images" / f"{n}.png"))[..., ::-1].copy() for n in names]
    scores = {}
    for tag, path in (("trained", run / "final.safetensors"), ("untrained", tmp_path / "untrained.safetensors")):
        predictor = load_predictor("seg", path, device="cpu", input_size=SIZE)
        preds = [predictor(im).labels for im in images]
        scores[tag] = _miou(np.stack(preds), np.stack(gts), 5)
    print(scores)
    assert scores["trained"] > scores["untrained"] + 0.35 and scores["trained"] > 0.55, scores


# --------------------------------------------------------------------------------------------------------- resume


def test_sigterm_then_resume_is_bit_identical(toy, tmp_path, monkeypatch):
    # deterministic kernels: the claim holds on GPUs too (without them cuDNN's autotuning and atomics drift by 1e-7)
    full = tmp_path / "full"
    train(config(toy, full, steps=6, workers=2, deterministic=True))
    reference = {e["step"]: e["loss"] for e in events(full)}

    part = tmp_path / "part"
    real = finetune_module.train_step
    count = {"n": 0}

    def signalled_step(*args, **kw):  # SIGTERM arrives during step 3
        count["n"] += 1
        if count["n"] == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kw)

    monkeypatch.setattr(finetune_module, "train_step", signalled_step)
    stopped = train(config(toy, part, steps=6, workers=2, deterministic=True))
    monkeypatch.setattr(finetune_module, "train_step", real)
    assert stopped["stopped"] and stopped["step"] == 3
    resumed = train(config(toy, part, steps=6, workers=2, deterministic=True, resume=True))
    assert resumed["step"] == 6
    got = {e["step"]: e["loss"] for e in events(part)}
    assert got == reference  # every step's loss, before and after the interruption, to the last bit
    a = torch.load(full / "checkpoints" / "step_00000006.pt", weights_only=True)["model"]
    b = torch.load(part / "checkpoints" / "step_00000006.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_stop_request_during_the_last_step_finishes_the_run_with_its_final_weights(toy, tmp_path,
                                                                                   sigterm_during_step):
    sigterm_during_step(finetune_module, 3)  # the last of 3 steps
    summary = train(config(toy, tmp_path / "run", steps=3))
    assert not summary["stopped"] and summary["step"] == 3
    assert (tmp_path / "run" / "final.safetensors").is_file()


def test_a_time_limit_ends_the_run_with_its_final_weights_and_a_resume_continues_as_if_uninterrupted(toy, tmp_path):
    from opensapiens.checkpoints import read_state_dict

    # evaluated at the end only; records of 3 steps, so the cut (at step 1) falls inside the first record's window
    common = dict(steps=4, deterministic=True, val_data=str(toy[1]), eval_interval=0, log_interval=3)
    full = tmp_path / "full"
    train(config(toy, full, **common))
    part = tmp_path / "part"
    ended = train(config(toy, part, time_limit=0, **common))  # out of time as soon as the first step is done
    assert ended["out_of_time"] and not ended["stopped"] and ended["step"] == 1
    assert [(e["step"], e["reason"]) for e in events(part, "checkpoint")] == [(1, "time limit")]
    assert [e["step"] for e in events(part, "eval")] == [1]  # the run's last step: evaluated, the best kept
    assert (part / "best.safetensors").is_file()
    weights, meta = read_state_dict(part / "final.safetensors")
    saved = torch.load(part / "checkpoints" / "step_00000001.pt", weights_only=True)["model"]
    assert json.loads(meta["step"]) == 1 and all(torch.equal(weights[k], saved[k]) for k in weights)

    resumed = train(config(toy, part, resume=True, **common))  # no time limit now: on to step 4
    assert resumed["step"] == 4 and not resumed["out_of_time"]
    records = [(e["step"], e["loss"]) for e in events(full)]
    assert [e["step"] for e in events(full)] == [3, 4]
    assert [(e["step"], e["loss"]) for e in events(part)] == records  # each record averages the same steps
    a, _ = read_state_dict(full / "final.safetensors")
    b, _ = read_state_dict(part / "final.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_negative_time_limit_is_refused_before_the_run_folder_is_written(toy, tmp_path):
    with pytest.raises(ValueError, match=r"time_limit \(--time-limit\) must be a number of seconds >= 0, got -1"):
        train(config(toy, tmp_path / "run", time_limit=-1))
    assert not (tmp_path / "run").exists()


def test_a_training_checkpoint_loads_and_converts_as_the_model_it_holds(toy, tmp_path):
    """A run stopped before its end leaves checkpoints, not final.safetensors: each one carries the model config
    (the keypoint set of the data's JSON, the input size), so load_model / predict / convert take it as it is."""
    from opensapiens.checkpoints import load_model, read_state_dict
    from opensapiens.cli.main import main

    run = tmp_path / "run"
    train(config(toy, run, task="pose", steps=2, ckpt_interval=1))
    step1 = run / "checkpoints" / "step_00000001.pt"
    want = load_model(run / "final.safetensors").config.to_dict()  # the same model, exported at the end
    assert want["extra"]["keypoint_names"] and load_model(step1).config.to_dict() == want
    assert main(["convert", str(step1), str(tmp_path / "step1.safetensors")]) == 0
    weights, _ = read_state_dict(tmp_path / "step1.safetensors")
    saved = torch.load(step1, weights_only=True)["model"]
    assert load_model(tmp_path / "step1.safetensors").config.to_dict() == want
    assert weights.keys() == saved.keys() and all(torch.equal(weights[k], saved[k]) for k in saved)


def test_an_unreadable_validation_image_is_left_out_and_counted_not_replaced_by_its_neighbour(toy, tmp_path):
    """The dataset stands the next readable sample in for an unreadable one (training goes on); an evaluation
    counting that stand-in would score the neighbour twice."""
    broken, without = tmp_path / "broken", tmp_path / "without"
    shutil.copytree(toy[1], broken)
    shutil.copytree(toy[1], without)
    (broken / "images" / "00003.png").write_bytes(b"not a png")
    for folder in ("images", "seg"):
        (without / folder / "00003.png").unlink()
    kw = dict(steps=1, eval_interval=1, deterministic=True)
    with pytest.warns(UserWarning, match="skipping sample 3"):
        got = train(config(toy, tmp_path / "a", val_data=str(broken), **kw))["metrics"]
    want = train(config(toy, tmp_path / "b", val_data=str(without), **kw))["metrics"]
    assert got["unreadable_samples"] == 1 and want["unreadable_samples"] == 0
    assert got["mIoU"] == want["mIoU"] and got["aAcc"] == want["aAcc"]


def test_bad_data_folders_are_named_by_option_and_leave_no_run_folder(toy, tmp_path):
    with pytest.raises(DataError, match=r"^--val-data: dataset folder .*missing does not exist"):
        train(config(toy, tmp_path / "a", val_data=str(tmp_path / "missing")))
    (tmp_path / "empty" / "images").mkdir(parents=True)
    with pytest.raises(DataError, match=r"^--data: .*empty/images holds no images"):
        train(config(toy, tmp_path / "b", data=str(tmp_path / "empty")))
    shutil.copytree(toy[0] / "images", tmp_path / "no_targets" / "images")
    with pytest.raises(DataError, match=r"images/ has 24 images but there is no seg/ or labels/ folder beside it"):
        train(config(toy, tmp_path / "c", data=str(tmp_path / "no_targets")))
    with pytest.raises(DataError, match=r"^--keypoints: keypoint set file .*nope.json"):
        train(config(toy, tmp_path / "d", task="pose", keypoints=str(tmp_path / "nope.json")))
    with pytest.raises(DataError, match=r"^--classes: class list file .*nope.json"):
        train(config(toy, tmp_path / "e", classes=str(tmp_path / "nope.json")))
    assert not any((tmp_path / run).exists() for run in "abcde")  # no config.json of a run that never started


def test_a_resume_inside_a_record_window_logs_the_records_of_an_uninterrupted_run(toy, tmp_path):
    # deterministic kernels: on a GPU cuDNN's atomics would make the two runs differ in the last bits
    kw = dict(steps=6, log_interval=4, ckpt_interval=3, keep_last=0, deterministic=True)
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    train(config(toy, straight, **kw))
    shutil.copytree(straight, crashed)  # as if killed after the step-3 checkpoint, a step into the record of 4
    for p in (crashed / "checkpoints").iterdir():
        if p.name != "step_00000003.pt":
            p.unlink()
    train(config(toy, crashed, resume=True, **kw))
    fields = [[(e["step"], e["loss"], e["skipped"]) for e in events(run)] for run in (straight, crashed)]
    assert [step for step, _, _ in fields[0]] == [4, 6] and fields[1] == fields[0]


def test_the_last_evaluation_reaches_the_final_checkpoint_and_runs_once(toy, tmp_path, monkeypatch):
    from safetensors import safe_open

    scripted = iter([0.1, 0.9, 0.5])  # mIoU at steps 1, 2 (the end of the run) and 3 (the end of its extension)
    monkeypatch.setattr(finetune_module, "evaluate", lambda *a, **k: {"mIoU": next(scripted)})
    run = tmp_path / "run"
    kw = dict(val_data=str(toy[1]), eval_interval=1)
    train(config(toy, run, steps=2, **kw))
    assert torch.load(run / "checkpoints" / "step_00000002.pt", weights_only=True)["best"] == {"value": 0.9, "step": 2}
    assert train(config(toy, run, steps=3, resume=True, **kw))["best"] == {"value": 0.9, "step": 2}
    with safe_open(str(run / "best.safetensors"), "pt") as f:
        assert f.metadata()["step"] == "2"  # not replaced by step 3's worse model
    train(config(toy, run, steps=3, resume=True, **kw))  # a finished run: nothing to train or to evaluate again
    assert [(e["step"], e["mIoU"]) for e in events(run, "eval")] == [(1, 0.1), (2, 0.9), (3, 0.5)]


def test_an_error_mid_run_closes_the_logger_before_it_propagates(toy, tmp_path, monkeypatch):
    """The progress bar ends (and tensorboard flushes) before the traceback, as on a normal or a signalled exit."""
    closed = []
    monkeypatch.setattr(RunLogger, "close", lambda self: closed.append(self))

    def failing_step(*args, **kw):
        raise RuntimeError("boom at step 1")

    monkeypatch.setattr(finetune_module, "train_step", failing_step)
    with pytest.raises(RuntimeError, match="boom at step 1"):
        train(config(toy, tmp_path / "run", steps=3))
    assert len(closed) == 1 and isinstance(closed[0], RunLogger)


def test_a_fresh_run_refuses_an_earlier_runs_checkpoints_unless_told_to_overwrite(toy, tmp_path):
    run = tmp_path / "run"
    train(config(toy, run, steps=4, ckpt_interval=2, keep_last=0))
    with pytest.raises(ValueError, match="--resume"):
        train(config(toy, run, steps=2, ckpt_interval=1, keep_last=0))
    with pytest.raises(DataError, match="--val-data"):  # bad data is found before --overwrite deletes anything
        train(config(toy, run, steps=2, overwrite=True, val_data=str(tmp_path / "no-such-data")))
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000002.pt", "step_00000004.pt"]
    train(config(toy, run, steps=2, ckpt_interval=1, keep_last=0, overwrite=True))
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000001.pt", "step_00000002.pt"]
    assert [e["step"] for e in events(run, "checkpoint")] == [1, 2]
    assert train(config(toy, run, steps=2, resume=True))["step"] == 2  # this run's last checkpoint, not step 4


def test_a_pose_validation_file_without_what_oks_needs_is_refused_before_training(toy, tmp_path):
    """A GT annotation without its area used to fail the first evaluation, at the end of a run, losing its weights."""
    val = tmp_path / "val"
    shutil.copytree(toy[1], val)
    coco = json.loads((val / "annotations.json").read_text())
    del coco["annotations"][1]["area"]
    (val / "annotations.json").write_text(json.dumps(coco))
    with pytest.raises(ValueError, match=r"--val-data .*val: ground truth annotation #1 .*missing 'area'"):
        train(config(toy, tmp_path / "run", task="pose", steps=2, val_data=str(val)))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_the_best_checkpoints_direction_follows_its_metric():
    """Errors are kept at their lowest, scores at their highest, whatever the task's default metric (depth with
    --best-metric delta1 had kept the worst delta1)."""
    def mode(task, **kw):
        return resolve(TrainConfig(task=task, data="synth", out="x", **kw)).best_mode

    assert mode("depth") == "min" and mode("depth", best_metric="delta1") == "max"
    assert mode("normal") == "min" and mode("normal", best_metric="within_11.25") == "max"
    assert mode("seg") == "max" and mode("pose", best_metric="body_AP") == "max"
    assert mode("depth", best_metric="delta1", best_mode="min") == "min"  # as given


def test_zero_log_and_checkpoint_intervals_mean_at_the_end_only(toy, tmp_path):
    train(config(toy, tmp_path / "per_step", steps=3, deterministic=True))  # two runs that agree on a GPU too
    losses = [e["loss"] for e in events(tmp_path / "per_step")]
    run = tmp_path / "run"
    train(config(toy, run, steps=3, log_interval=0, ckpt_interval=0, keep_last=0, deterministic=True))
    assert [(e["step"], e["loss"]) for e in events(run)] == [(3, pytest.approx(sum(losses) / 3, rel=1e-12))]
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_00000003.pt"]
    with pytest.raises(ValueError, match=r"ckpt_interval \(--ckpt-interval\) must be at least 0"):
        resolve(TrainConfig(task="seg", data="synth", out="x", ckpt_interval=-1))


@pytest.mark.parametrize("field", ["grad_accum", "batch_size"])
def test_a_step_needs_at_least_one_micro_batch_of_one_image(field):
    with pytest.raises(ValueError, match=rf"{field} \(--{field.replace('_', '-')}\) must be at least 1, got 0"):
        resolve(TrainConfig(task="seg", data="synth", out="x", **{field: 0}))


def test_ranks_agree_to_stop_at_the_step_after_any_rank_is_signalled(monkeypatch):
    from opensapiens.training import distributed as D

    # votes (signal, out of time): this rank out of time at step 2 only, the other rank signalled at step 3 only
    other_rank = iter(torch.tensor(v) for v in [(0.0, 0.0), (0.0, 0.0), (1.0, 0.0), (0.0, 0.0), (0.0, 0.0)])
    monkeypatch.setattr(D, "all_reduce_sum", lambda t: t + next(other_rank))
    vote = D.StopVote(D.DistInfo(rank=0, world_size=2), torch.device("cpu"))
    own = [(False, False), (False, True), (False, False), (False, False), (False, False)]
    # each call answers with the sums of the step before: both ranks' votes, each reason in its place
    assert [vote(*v) for v in own] == [(False, False), (False, False), (False, True), (True, False), (False, False)]
    one = D.StopVote(D.DistInfo(), torch.device("cpu"))  # one process: at once
    assert [one(*v) for v in ((False, False), (True, False), (False, True))] == [(False, False), (True, False),
                                                                                (False, True)]


def test_deterministic_kernels_are_set_inside_and_restored_after():
    cudnn = torch.backends.cudnn
    before = (torch.are_deterministic_algorithms_enabled(), cudnn.deterministic, cudnn.benchmark,
              os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    with deterministic_kernels(False):
        assert (torch.are_deterministic_algorithms_enabled(), cudnn.deterministic, cudnn.benchmark,
                os.environ.get("CUBLAS_WORKSPACE_CONFIG")) == before
    with deterministic_kernels():
        assert torch.are_deterministic_algorithms_enabled() and cudnn.deterministic and not cudnn.benchmark
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] in (":4096:8", before[3])
    assert (torch.are_deterministic_algorithms_enabled(), cudnn.deterministic, cudnn.benchmark,
            os.environ.get("CUBLAS_WORKSPACE_CONFIG")) == before


def test_crash_after_a_checkpoint_resumes_from_it_via_the_cli(toy, tmp_path):
    from opensapiens.cli.main import main

    full = tmp_path / "full"
    args = ["train", "--task", "normal", "--data", str(toy[0]), "--out", str(full), "--arch", "nano",
            "--head-channels", "32", "--input-size", "128x96", "--steps", "5", "--batch-size", "4", "--workers", "0",
            "--precision", "fp32", "--ckpt-interval", "2", "--keep-last", "0", "--log-interval", "1",
            "--no-tensorboard", "--deterministic"]
    assert main(args) == 0
    crashed = tmp_path / "crashed"  # as if killed right after the step-2 checkpoint: later files never written
    (crashed / "checkpoints").mkdir(parents=True)
    shutil.copy(full / "config.json", crashed / "config.json")
    shutil.copy(full / "checkpoints" / "step_00000002.pt", crashed / "checkpoints")
    lines = (full / "metrics.jsonl").read_text().splitlines()
    (crashed / "metrics.jsonl").write_text("\n".join(lines[:4]) + "\n" + '{"event": "train", "step": 3, "loss": 1')
    assert main(["train", "--out", str(crashed), "--resume"]) == 0
    assert [(e["step"], e["loss"]) for e in events(crashed)] == [(e["step"], e["loss"]) for e in events(full)]
    a = torch.load(full / "checkpoints" / "step_00000005.pt", weights_only=True)["model"]
    b = torch.load(crashed / "checkpoints" / "step_00000005.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_on_the_fly_synthetic_data_trains_pose_and_resumes(tmp_path):
    cfg = TrainConfig(task="pose", data="synth", out=str(tmp_path / "synth"), arch="nano", head_channels=32,
                      input_size=SIZE, steps=2, batch_size=2, workers=0, precision="fp32", lr=1e-3, tensorboard=False,
                      log_interval=1, ckpt_interval=1)
    first = train(cfg)
    cfg.resume, cfg.steps = True, 3
    second = train(cfg)
    assert first["step"] == 2 and second["step"] == 3 and np.isfinite(second["loss"])
    assert [e["step"] for e in events(tmp_path / "synth")] == [1, 2, 3]


def test_ranks_beyond_the_saved_ones_get_streams_of_their_own():
    """Resumed on 4 ranks from a 2-rank checkpoint: ranks 0 and 1 continue their saved streams exactly; ranks 2 and
    3 start from ranks 0 and 1's states reseeded by their rank, so no two ranks draw the same dropout masks, and a
    second resume draws the same again."""
    import random

    from opensapiens.training.state import restore_rng, rng_state

    def draws() -> tuple:
        return torch.rand(4).tolist(), float(np.random.rand()), random.random()

    rngs, expected = [], []
    for seed in (11, 12):  # the two saved ranks
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)
        rngs.append(rng_state())
        expected.append(draws())
    got = []
    for rank in range(4):
        restore_rng(rngs, rank)
        got.append(draws())
    assert got[:2] == expected
    assert len({str(g) for g in got}) == 4
    restore_rng(rngs, 3)
    assert draws() == got[3]


def test_metrics_jsonl_is_strict_json_with_null_for_what_is_not_finite(tmp_path):
    from opensapiens.training.logger import RunLogger

    logger = RunLogger(tmp_path, total_steps=2, tensorboard=False, progress=False)
    logger.log("eval", 1, AP=0.5, APl=float("nan"), loss=torch.tensor(float("inf")))
    logger.close()

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    record = json.loads((tmp_path / "metrics.jsonl").read_text(), parse_constant=refuse)
    assert record["AP"] == 0.5 and record["APl"] is None and record["loss"] is None


def test_the_synth_val_seed_is_refused_before_a_run_starts(tmp_path):
    from opensapiens.synth.dataset import SYNTH_VAL
    from opensapiens.training.config import TrainConfig, resolve

    with pytest.raises(ValueError, match="synth-val seed"):
        resolve(TrainConfig(task="seg", data="synth", out=str(tmp_path / "run"), seed=SYNTH_VAL.seed))
    assert not (tmp_path / "run").exists()


def test_a_fine_tune_with_its_own_keypoints_and_classes_predicts_with_them(toy, tmp_path):
    """``train --keypoints FILE`` / ``--classes FILE``: the final model loads for prediction with the file's names,
    mirror pairs and sigmas (a 5-keypoint model had been refused: "keypoint set goliath has 308 points")."""
    from test_data_toy import CLASSES, KEYPOINTS

    import opensapiens
    from opensapiens.inference.batch import write_result

    image = np.random.default_rng(0).integers(0, 255, (70, 50, 3), dtype=np.uint8)
    train(config(toy, tmp_path / "pose", task="pose", steps=1))
    pose = opensapiens.load(str(tmp_path / "pose" / "final.safetensors"), device="cpu")
    assert pose.input_size == SIZE  # the size it was trained at (it had run at 1024x768)
    layout = pose.keypoint_set
    assert layout.names == tuple(KEYPOINTS["names"]) and layout.sigmas == tuple(KEYPOINTS["sigmas"])
    assert layout.flip_indices == (0, 2, 1, 4, 3)
    result = pose(image)
    assert result.keypoints.shape == (1, 5, 2) and result.keypoint_set_name == "keypoints"
    write_result("pose", tmp_path / "out", "x", image, result)  # its JSON and its picture
    assert json.loads((tmp_path / "out" / "x.json").read_text())["keypoint_set"] == "keypoints"
    assert opensapiens.PoseTracker(layout).update(result).tolist() == [0]
    _scores_in_its_own_keypoints_as_pycocotools_with_their_sigmas(pose, toy[1])
    train(config(toy, tmp_path / "seg", steps=1))
    seg = opensapiens.load(str(tmp_path / "seg" / "final.safetensors"), device="cpu")
    assert seg(image).class_names == tuple(CLASSES["names"])


def test_init_from_the_bundled_multitask_model_takes_its_backbone_and_this_tasks_head(toy, tmp_path):
    from opensapiens.checkpoints import load_state
    from opensapiens.training.init import load_initial_weights

    cfg, want = load_state("sapiens-nano", task="seg")
    model = build_model("seg", "tiny", out_channels=28, head_channels=cfg.head_channels, pos_grid=(16, 12))
    loaded = load_initial_weights(model, "sapiens-nano")
    got = model.state_dict()
    blocks = [k for k in want if k.startswith("backbone.blocks.")]
    assert loaded["backbone"] > len(blocks) > 0 and all(torch.equal(got[k], want[k]) for k in blocks)
    assert loaded["skipped_head"] == "" and all(torch.equal(got[k], want[k]) for k in want if k.startswith("head."))


def _scores_in_its_own_keypoints_as_pycocotools_with_their_sigmas(pose, val_dir) -> None:
    """``evaluate_model`` of a model with its own keypoint set runs in that set; with a stand-in whose people are the
    GT's moved by a few pixels (AP strictly between 0 and 1), its AP equals pycocotools' given that set's sigmas."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    from test_data_toy import KEYPOINTS

    from opensapiens.evaluation.runner import evaluate_model
    from opensapiens.inference.results import PoseResult

    assert evaluate_model("pose", pose, val_dir)["protocol"]["keypoints"] == "keypoints"
    gt = json.loads((val_dir / "annotations.json").read_text())
    rng = np.random.default_rng(0)
    moved = [np.asarray(a["keypoints"], np.float32).reshape(-1, 3)[:, :2] + rng.normal(0, 1.5, (5, 2))
             for a in gt["annotations"]]
    xyxy = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in gt["annotations"])])

    class Moved:
        result_layout = pose.keypoint_set

        def predict_batch(self, images, boxes):
            out = []
            for b in boxes:
                kp = np.stack([moved[np.abs(xyxy - box).sum(1).argmin()] for box in b]).astype(np.float32)
                out.append(PoseResult(kp, np.full(kp.shape[:2], 0.9, np.float32), b, np.ones(len(b), np.float32),
                                      pose.keypoint_set))
            return out

    got = evaluate_model("pose", Moved(), val_dir)
    results = [{"image_id": a["image_id"], "category_id": 1, "score": 0.9,
                "keypoints": np.concatenate([kp.astype(np.float32), np.full((5, 1), 0.9)], 1).ravel().tolist()}
               for a, kp in zip(gt["annotations"], moved)]
    coco_gt = COCO()
    coco_gt.dataset = {**gt, "categories": [{"id": 1, "name": "person"}]}
    coco_gt.createIndex()
    ev = COCOeval(coco_gt, coco_gt.loadRes(results), "keypoints")
    ev.params.kpt_oks_sigmas = np.asarray(KEYPOINTS["sigmas"])
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    assert 0 < ev.stats[0] < 1 and got["AP"] == pytest.approx(ev.stats[0], abs=1e-9)


def test_a_resume_needs_neither_the_init_file_nor_its_old_global_batch(toy, tmp_path, capsys):
    """A resume takes the shape its run resolved at the start (the --init file may be gone by then: it is never
    loaded again), and says so when another batch size makes its steps take another number of images; --batch-size
    and --grad-accum may be given with --resume to keep that number."""
    from opensapiens.checkpoints import save_model
    from opensapiens.cli.main import main

    torch.manual_seed(0)
    init = save_model(build_model("seg", "nano", out_channels=3, head_channels=48, pos_grid=(8, 6)),
                      tmp_path / "init.safetensors")  # its seg head 48 wide: the run's, not the recipe's 768
    run = tmp_path / "run"
    args = ["train", "--task", "seg", "--data", str(toy[0]), "--classes", str(toy[0] / "classes.json"), "--out",
            str(run), "--input-size", "128x96", "--steps", "2", "--batch-size", "2", "--workers", "0", "--precision",
            "fp32", "--no-tensorboard", "--init", str(init)]
    assert main(args) == 0
    assert json.loads((run / "config.json").read_text())["head_channels"] == 48
    init.unlink()
    capsys.readouterr()
    assert main(["train", "--out", str(run), "--resume", "--steps", "3", "--batch-size", "1"]) == 0
    out = capsys.readouterr()
    assert "this run's steps took 2 images" in out.out + out.err and "they take 1" in out.out + out.err
    assert main(["train", "--out", str(run), "--resume", "--steps", "4", "--batch-size", "1", "--grad-accum",
                 "1"]) == 0  # the run's now: no note
    out = capsys.readouterr()
    assert "images" not in (out.out + out.err).split("resumed from")[-1].split("\n")[0]
    assert "global batch" not in out.out + out.err
    assert json.loads((run / "config.json").read_text())["batch_size"] == 1
    assert main(["train", "--out", str(run), "--resume", "--steps", "5", "--precision", "tf32", "--clip-grad",
                 "2"]) == 0  # the float32 math and clipping may change too
    saved = json.loads((run / "config.json").read_text())
    assert (saved["precision"], saved["clip_grad"]) == ("tf32", 2.0) and "ignoring" not in capsys.readouterr().err


def test_resumed_batch_note_compares_images_per_step():
    from opensapiens.training.state import resumed_batch_note

    meta = {"config": {"batch_size": 4, "grad_accum": 2}, "world_size": 8}  # 64 images a step
    assert resumed_batch_note(meta, 4, 2, 8) is None
    assert resumed_batch_note(meta, 8, 8, 1) is None  # one process, the same 64
    note = resumed_batch_note(meta, 4, 2, 4)
    assert "took 64 images (8 processes x batch 4 x accumulation 2)" in note and "they take 32" in note


@pytest.mark.parametrize("kw,message", [(dict(arch="huge"), "unknown architecture 'huge'"),
                                        (dict(head_channels=0), r"head_channels \(--head-channels\) must be at least"),
                                        (dict(layer_decay=-0.5), r"layer_decay \(--layer-decay\) must be in \[0, 1\]"),
                                        (dict(layer_decay=1.5), r"layer_decay \(--layer-decay\) must be in \[0, 1\]")])
def test_settings_that_cannot_train_are_refused_before_a_run_folder_is_written(toy, tmp_path, kw, message):
    """A negative layer decay gave every other block a negative learning rate (gradient ascent); a zero-wide head
    and an unknown architecture failed after config.json was written."""
    run = tmp_path / "run"
    with pytest.raises(ValueError, match=message):
        train(config(toy, run, **kw))
    assert not run.exists()


def test_a_resume_with_fewer_steps_than_its_checkpoint_is_refused_and_leaves_the_run_as_it_was(toy, tmp_path):
    run = tmp_path / "run"
    train(config(toy, run, steps=3, ckpt_interval=3))
    saved = (run / "config.json").read_text()
    with pytest.raises(ValueError, match="--steps 2 is below step 3"):
        train(config(toy, run, steps=2, resume=True))
    assert (run / "config.json").read_text() == saved
