"""End to end on CPU: ``opensapiens pretrain`` learns, resumes bit-exactly (weights and data stream), and writes a
backbone that the fine-tuning engine and ``load_model`` take."""

from __future__ import annotations

import io
import json
import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from opensapiens.checkpoints import load_model, read_state_dict
from opensapiens.cli.main import main
from opensapiens.data.shard_writer import ShardWriter
from opensapiens.models import build_model
from opensapiens.pretrain import loop as pretrain_loop
from opensapiens.pretrain.config import PretrainConfig
from opensapiens.training.init import load_initial_weights
from opensapiens.training.logger import RunLogger

SMALL = ["--arch", "nano", "--input-size", "64x64", "--decoder-dim", "32", "--decoder-depth", "1",
         "--decoder-heads", "2", "--no-tensorboard", "--log-interval", "1"]


def smooth_image(rng: np.random.Generator, h: int = 96, w: int = 80) -> np.ndarray:
    """Low-frequency colour blobs: learnable structure for a tiny MAE."""
    coarse = torch.from_numpy(rng.uniform(0, 255, (1, 3, 4, 4))).float()
    return torch.nn.functional.interpolate(coarse, (h, w), mode="bicubic").clamp(0, 255)[0].permute(
        1, 2, 0).round().byte().numpy()


def jpeg(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", quality=95)
    return buf.getvalue()


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    rng = np.random.default_rng(0)
    with ShardWriter(out, max_count=5) as w:
        for i in range(24):
            w.write(f"img{i:03d}", jpeg(smooth_image(rng)), ".jpg", {"i": i})
    return out


def records(run, event: str = "train") -> list[dict]:
    lines = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in lines if r["event"] == event]


def losses(run) -> list[float]:
    return [r["loss"] for r in records(run)]


def test_loss_falls_and_backbone_feeds_finetuning(tmp_path):
    # One picture, seen whole (crop scale 1) and flipped at random: a tiny MAE learns it within a few dozen steps.
    data = tmp_path / "data"
    picture = smooth_image(np.random.default_rng(0), 64, 64)
    with ShardWriter(data, max_count=4) as w:
        for i in range(8):
            w.write(f"img{i}", jpeg(picture), ".jpg")
        w.write("truncated", jpeg(picture)[:300], ".jpg")  # skipped and counted, every epoch
    run = tmp_path / "run"
    rc = main(["pretrain", "--data", str(data), "--out", str(run), "--steps", "60", "--batch-size", "8",
               "--lr", "2e-3", "--warmup-steps", "3", "--crop-scale", "1,1", "--workers", "0", "--export-official",
               *SMALL])
    assert rc == 0
    curve = losses(run)
    assert len(curve) == 60 and np.mean(curve[-5:]) < 0.85 * np.mean(curve[:5])
    last = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines() if '"train"' in s][-1]
    assert last["skipped_samples"] >= 50  # 60 steps x 8 images = 60 epochs of 8 good images + 1 bad one
    assert (run / "vis" / "step_00000060.png").is_file()
    shards = data

    # Our safetensors backbone: a "features" model with the cls token and the (1, 1 + 16, C) sin-cos table.
    feats = load_model(run / "backbone.safetensors")
    assert feats.task == "features" and feats.config.with_cls_token and feats.backbone.pos_embed.shape == (1, 17, 128)
    # The official _clean.pth layout: flat keys, cls_token and a (1, 1 + N, C) pos_embed, no decoder.
    clean, _ = read_state_dict(run / "backbone_clean.pth")
    assert "cls_token" in clean and clean["pos_embed"].shape == (1, 17, 128) and "layers.5.attn.qkv.weight" in clean
    assert not any(k.startswith(("neck.", "backbone.")) for k in clean)
    # Both start a fine-tune (--init): the table loses its cls row and is resized to the 4x3 grid of 64x48.
    for path in (run / "backbone.safetensors", run / "backbone_clean.pth"):
        pose = build_model("pose", "nano", out_channels=17, pos_grid=(4, 3), head_channels=32)
        report = load_initial_weights(pose, str(path))
        assert report["backbone"] > 0
        assert torch.equal(pose.backbone.blocks[5].attn.qkv.weight, feats.backbone.blocks[5].attn.qkv.weight)
    # The full MAE (encoder + decoder) restarts a later pretraining with --init.
    run2 = tmp_path / "run2"
    assert main(["pretrain", "--data", str(shards), "--out", str(run2), "--steps", "1", "--batch-size", "4",
                 "--workers", "0", "--init", str(run / "mae.safetensors"), *SMALL]) == 0
    init = [json.loads(s) for s in (run2 / "metrics.jsonl").read_text().splitlines()][0]
    assert init["event"] == "init" and init["decoder"] is True


@pytest.fixture
def one_thread():
    """Loader workers and a multi-threaded main process oversubscribe a 2-core test machine (OpenMP spin-waits)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_resume_is_exact_with_two_workers(shards, tmp_path, one_thread):
    common = ["--data", str(shards), "--steps", "10", "--batch-size", "4", "--workers", "2", "--shuffle-buffer", "4",
              "--warmup-steps", "2", "--ckpt-interval", "4", "--keep-last", "0", "--deterministic", *SMALL]
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    assert main(["pretrain", "--out", str(straight), *common]) == 0
    # A run that "crashed" after step 4: only its step-4 checkpoint survives (24 images, 4 per batch, 2 workers:
    # the stream crosses epochs and the worker order must be rotated on resume).
    assert main(["pretrain", "--out", str(crashed), *common]) == 0
    for p in [*crashed.glob("checkpoints/step_0000000[!4].pt"), *crashed.glob("checkpoints/step_00000010.pt"),
              crashed / "mae.safetensors"]:
        p.unlink()
    assert [p.name for p in (crashed / "checkpoints").iterdir()] == ["step_00000004.pt"]
    assert main(["pretrain", "--out", str(crashed), "--resume", *common]) == 0
    assert losses(crashed) == losses(straight)
    a, _ = read_state_dict(straight / "mae.safetensors")
    b, _ = read_state_dict(crashed / "mae.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_step_results_are_read_two_steps_late_or_when_the_loop_logs(shards, tmp_path, step_reads):
    from opensapiens.pretrain import loop

    queued, reads = step_reads(loop)
    assert main(["pretrain", "--data", str(shards), "--out", str(tmp_path / "run"), "--steps", "5", "--batch-size",
                 "4", "--workers", "0", *SMALL, "--log-interval", "2", "--ckpt-interval", "100"]) == 0
    assert all(at >= step + 2 or at in (2, 4, 5) for step, at in reads), reads  # logs at 2 and 4, the end at 5
    assert {step for step, _ in reads} == set(range(1, 6))
    logged = [e for e in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
              if e["event"] == "train"]
    assert [e["step"] for e in logged] == [2, 4, 5]
    means = [sum(r.loss for r in queued[a:b]) / (b - a) for a, b in ((0, 2), (2, 4), (4, 5))]
    assert [e["loss"] for e in logged] == pytest.approx(means, rel=1e-6)


def test_whole_model_compile_matches_eager_and_resumes_exactly(shards, tmp_path):
    """--compile model: the forward and the loss compiled as one graph train the same steps as eager (the loop draws
    the masking noise outside the graph, so both mask the same patches), and a compiled run resumed from its step-2
    checkpoint repeats the uninterrupted compiled run to the bit."""
    common = ["--data", str(shards), "--steps", "4", "--batch-size", "4", "--workers", "0", "--precision", "fp32",
              "--ckpt-interval", "2", "--keep-last", "0", *SMALL]
    compiled, crashed = tmp_path / "compiled", tmp_path / "crashed"
    assert main(["pretrain", "--out", str(tmp_path / "eager"), *common]) == 0
    assert main(["pretrain", "--out", str(compiled), "--compile", "model", *common]) == 0
    assert np.allclose(losses(compiled), losses(tmp_path / "eager"), rtol=1e-4)
    shutil.copytree(compiled, crashed)
    for p in [crashed / "checkpoints" / "step_00000004.pt", crashed / "mae.safetensors"]:
        p.unlink()
    assert main(["pretrain", "--out", str(crashed), "--resume", *common]) == 0  # --compile model from config.json
    assert losses(crashed) == losses(compiled)


def test_compile_choices():
    assert PretrainConfig(data="x", out="y", compile=True).compile_scope == "model"  # configs of older runs
    assert PretrainConfig(data="x", out="y", compile=False).compile_scope == "none"
    assert PretrainConfig(data="x", out="y", compile="auto", fsdp=True).compile_scope == "blocks"
    assert PretrainConfig(data="x", out="y", compile="auto", checkpointing="blocks").compile_scope == "blocks"
    with pytest.raises(ValueError, match="not combined with FSDP"):
        PretrainConfig(data="x", out="y", compile="model", fsdp=True)
    with pytest.raises(ValueError, match="compile must be"):
        PretrainConfig(data="x", out="y", compile="graphs")


def test_a_resume_inside_a_record_window_logs_the_records_of_an_uninterrupted_run(shards, tmp_path, one_thread):
    common = ["--data", str(shards), "--steps", "6", "--batch-size", "2", "--workers", "0", "--warmup-steps", "2",
              "--ckpt-interval", "3", "--keep-last", "0", *SMALL, "--log-interval", "4"]
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    assert main(["pretrain", "--out", str(straight), *common]) == 0
    shutil.copytree(straight, crashed)  # as if killed after the step-3 checkpoint, a step into the record of 4
    (crashed / "checkpoints" / "step_00000006.pt").unlink()
    assert main(["pretrain", "--out", str(crashed), "--resume", *common]) == 0
    fields = [[(r["step"], r["loss"], r["skipped"]) for r in records(run)] for run in (straight, crashed)]
    assert [step for step, _, _ in fields[0]] == [4, 6] and fields[1] == fields[0]


def test_the_default_warmup_is_fixed_at_the_start_and_a_longer_resume_extends_the_cosine(shards, tmp_path,
                                                                                          one_thread):
    run = tmp_path / "run"
    common = ["--data", str(shards), "--batch-size", "2", "--workers", "0", "--lr", "1e-3", *SMALL]
    assert main(["pretrain", "--out", str(run), "--steps", "2", *common]) == 0
    assert json.loads((run / "config.json").read_text())["warmup_steps"] == 0  # 40/1600 of 2 steps
    assert main(["pretrain", "--out", str(run), "--resume", "--steps", "30", *common]) == 0
    # still no warm-up (40/1600 of 30 steps would be 1): the steps after the resume follow a 30-step cosine to 0
    lrs = [r["lr"] for r in records(run)][2:]
    assert lrs == pytest.approx([1e-3 * 0.5 * (1 + math.cos(math.pi * i / 30)) for i in range(2, 30)], rel=1e-9)


def test_a_fresh_run_refuses_an_earlier_runs_checkpoints_unless_told_to_overwrite(shards, tmp_path, capsys,
                                                                                   one_thread):
    run = tmp_path / "run"
    args = ["pretrain", "--data", str(shards), "--out", str(run), "--batch-size", "2", "--workers", "0", *SMALL]
    assert main([*args, "--steps", "3"]) == 0
    assert main([*args, "--steps", "2"]) == 2 and "--resume" in capsys.readouterr().err
    missing = [a if a != str(shards) else str(tmp_path / "no-such-data") for a in args]
    assert main([*missing, "--steps", "2", "--overwrite"]) == 2 and "no-such-data" in capsys.readouterr().err
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_00000003.pt"]  # bad data deleted nothing
    assert main([*args, "--steps", "2", "--overwrite"]) == 0
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_00000002.pt"]
    assert [r["step"] for r in records(run)] == [1, 2]
    saved = (run / "config.json").read_text()
    assert main(["pretrain", "--out", str(run), "--resume", "--steps", "1"]) == 2  # fewer than it holds
    assert "--steps 1 is below step 2" in capsys.readouterr().err and (run / "config.json").read_text() == saved


def test_an_error_mid_run_closes_the_logger_before_it_propagates(shards, tmp_path, monkeypatch, one_thread):
    closed = []
    monkeypatch.setattr(RunLogger, "close", lambda self: closed.append(self))

    def failing_step(*args, **kw):
        raise RuntimeError("boom at step 1")

    monkeypatch.setattr(pretrain_loop, "train_step", failing_step)
    args = ["pretrain", "--data", str(shards), "--out", str(tmp_path / "run"), "--batch-size", "2", "--workers", "0"]
    with pytest.raises(RuntimeError, match="boom at step 1"):
        main([*args, *SMALL, "--steps", "2"])
    assert len(closed) == 1 and isinstance(closed[0], RunLogger)


@pytest.mark.parametrize("ratio", [0.0, 0.95, 1.0])  # a 64x64 input has 16 patches: 0.95 keeps int(0.8) = none
def test_masking_must_remove_a_patch_and_keep_one(ratio):
    with pytest.raises(ValueError, match="must mask at least one of the 16 patches"):
        PretrainConfig(data="x", out="y", input_size=(64, 64), mask_ratio=ratio)
    assert PretrainConfig(data="x", out="y", input_size=(64, 64), mask_ratio=0.01).mask_ratio == 0.01  # keeps 15


@pytest.mark.parametrize("field", ["grad_accum", "batch_size"])
def test_a_step_needs_at_least_one_micro_batch_of_one_image(field):
    with pytest.raises(ValueError, match=rf"{field} \(--{field.replace('_', '-')}\) must be at least 1, got 0"):
        PretrainConfig(data="x", out="y", **{field: 0})


@pytest.mark.parametrize("kw, message", [
    (dict(steps=0), r"steps \(--steps\) must be at least 1, got 0"),
    (dict(warmup_steps=-1), "warmup_steps must be at least 0, got -1"),
    (dict(crop_scale=(1.0, 0.2)), r"crop_scale 1.0,0.2 must be two area fractions with 0 < low <= high <= 1"),
    (dict(crop_scale=(0.0, 1.0)), "crop_scale 0.0,1.0 must be"),
    (dict(decoder_heads=7), "decoder_dim 512 must be a multiple of decoder_heads 7"),
    (dict(decoder_depth=0), r"decoder_depth \(--decoder-depth\) must be at least 1, got 0"),
    (dict(export_official=True, input_size=(256, 320)), "cannot recover 16x20 .input 256x320."),
])
def test_settings_that_cannot_run_or_export_are_refused_before_the_run(kw, message):
    with pytest.raises(ValueError, match=message):
        PretrainConfig(data="x", out="y", **kw)
    assert PretrainConfig(data="x", out="y", export_official=True, input_size=(256, 192)).export_official  # 4:3


def test_a_stop_request_during_the_last_step_finishes_the_run_with_its_export(shards, tmp_path, sigterm_during_step,
                                                                              one_thread):
    sigterm_during_step(pretrain_loop, 3)  # the last of 3 steps
    run = tmp_path / "run"
    assert main(["pretrain", "--data", str(shards), "--out", str(run), "--steps", "3", "--batch-size", "2",
                 "--workers", "0", *SMALL]) == 0
    assert (run / "backbone.safetensors").is_file() and (run / "mae.safetensors").is_file()
    assert [r["reason"] for r in records(run, "checkpoint")] == ["final"]


def test_a_time_limit_ends_pretraining_with_its_export_and_a_resume_continues(shards, tmp_path, one_thread):
    run = tmp_path / "run"
    args = ["pretrain", "--data", str(shards), "--out", str(run), "--steps", "3", "--batch-size", "2", "--workers",
            "0", *SMALL]
    assert main([*args, "--time-limit", "0"]) == 0  # out of time as soon as the first step is done
    assert [(r["step"], r["reason"]) for r in records(run, "checkpoint")] == [(1, "time limit")]
    _, meta = read_state_dict(run / "backbone.safetensors")
    assert json.loads(meta["step"]) == 1 and (run / "mae.safetensors").is_file()
    assert main([*args, "--resume"]) == 0  # the limit was that invocation's: this one has none
    assert [r["step"] for r in records(run, "checkpoint")] == [1, 3]
    _, meta = read_state_dict(run / "backbone.safetensors")
    assert json.loads(meta["step"]) == 3


def test_mae_weights_and_pretrain_checkpoints_load_as_the_encoder_they_hold(shards, tmp_path, one_thread):
    """mae.safetensors and a pretraining checkpoint (the run's config in it) load, predict features and convert
    as backbone.safetensors does: the encoder, the decoder left out; asked for a task model, they say what they hold."""
    from opensapiens.checkpoints import CheckpointError

    run = tmp_path / "run"
    assert main(["pretrain", "--data", str(shards), "--out", str(run), "--steps", "2", "--batch-size", "2",
                 "--workers", "0", "--ckpt-interval", "1", *SMALL]) == 0
    want = load_model(run / "backbone.safetensors")
    step2 = run / "checkpoints" / "step_00000002.pt"
    assert main(["convert", str(step2), str(tmp_path / "converted.safetensors")]) == 0
    for source in (run / "mae.safetensors", step2, tmp_path / "converted.safetensors"):
        for task in (None, "features"):
            got = load_model(source, task=task)
            assert got.config.to_dict() == want.config.to_dict(), source
            a, b = want.state_dict(), got.state_dict()
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k].to(a[k].dtype)) for k in a), source
    assert load_model(step2, patch_padding=2).config.patch_padding == 2  # as for backbone.safetensors
    with pytest.raises(CheckpointError, match="holds an MAE-pretrained backbone \\(features\\), not a seg model"):
        load_model(run / "mae.safetensors", task="seg")


def test_fewer_images_than_loader_slots_is_an_error_naming_the_counts(tmp_path, capsys):
    rng = np.random.default_rng(1)
    for i in range(2):
        Image.fromarray(smooth_image(rng)).save(tmp_path / f"im{i}.png")
    assert main(["pretrain", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--steps", "1",
                 "--batch-size", "1", "--workers", "4", *SMALL]) == 2
    assert "2 images for 4 data slots (1 ranks x 4 loader workers)" in capsys.readouterr().err


def test_a_resume_names_the_options_it_ignores_as_they_are_typed(shards, tmp_path, capsys, one_thread):
    run = tmp_path / "run"
    args = ["pretrain", "--data", str(shards), "--out", str(run), "--workers", "0", *SMALL]
    assert main([*args, "--steps", "1", "--batch-size", "2"]) == 0
    assert main([*args, "--steps", "2", "--batch-size", "3", "--cpu-jpeg", "--no-norm-pix", "--resume"]) == 0
    assert "ignoring --batch-size, --cpu-jpeg, --no-norm-pix" in capsys.readouterr().err  # as typed, not gpu_jpeg


def test_zero_log_and_checkpoint_intervals_mean_at_the_end_only(shards, tmp_path, one_thread):
    run = tmp_path / "run"
    assert main(["pretrain", "--data", str(shards), "--out", str(run), "--steps", "3", "--batch-size", "2",
                 "--workers", "0", *SMALL, "--log-interval", "0", "--ckpt-interval", "0"]) == 0
    assert [r["step"] for r in records(run)] == [3]
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_00000003.pt"]
    with pytest.raises(ValueError, match=r"log_interval \(--log-interval\) must be at least 0"):
        PretrainConfig(data="x", out="y", log_interval=-1)
