"""The bundled model's training recipe: the scene pool and continuing from a multi-task checkpoint."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from opensapiens.checkpoints import load_multitask
from opensapiens.checkpoints.hub import BUNDLED
from opensapiens.training.multitask import ScenePool, main


def fake_source(batch: int = 4):
    """Endless batches whose every field holds the global scene index, so pooled rows can be traced."""
    k = 0
    while True:
        ids = torch.arange(k * batch, (k + 1) * batch, dtype=torch.float32)
        yield SimpleNamespace(
            image=ids.view(-1, 1, 1, 1).expand(batch, 3, 2, 2).to(torch.uint8),
            seg=ids.view(-1, 1, 1).expand(batch, 2, 2).to(torch.uint8),
            depth=ids.view(-1, 1, 1).expand(batch, 2, 2).clone(),
            normal=ids.view(-1, 1, 1, 1).expand(batch, 3, 2, 2).clone(),
            keypoints=ids.view(-1, 1, 1, 1).expand(batch, 2, 308, 3).clone(),
            boxes=ids.view(-1, 1, 1).expand(batch, 2, 4).clone(),
            person_valid=torch.ones(batch, 2, dtype=torch.bool),
        )
        k += 1


def scene_ids(pool: ScenePool) -> list[int]:
    return pool.data["depth"][:, 0, 0].long().tolist()


def test_pool_refresh_replaces_the_oldest_batch_in_turn():
    pool = ScenePool(fake_source(4), batches=3)
    assert len(pool) == 12 and scene_ids(pool) == list(range(12))
    pool.refresh()  # scenes 12..15 replace the oldest slot, 0..3
    assert scene_ids(pool) == [12, 13, 14, 15, *range(4, 12)]
    pool.refresh()
    pool.refresh()
    pool.refresh()  # wrapped around: slot 0 again
    assert scene_ids(pool) == [24, 25, 26, 27, *range(16, 24)]


def test_pool_sample_keeps_every_field_of_a_scene_together():
    pool = ScenePool(fake_source(4), batches=2)
    g = torch.Generator().manual_seed(0)
    drawn = pool.sample(200, g)
    ids = drawn.depth[:, 0, 0]
    for field in ("image", "seg", "normal", "keypoints", "boxes"):
        values = getattr(drawn, field).float().flatten(1)
        assert torch.equal(values, ids[:, None].expand_as(values)), field
    assert set(ids.long().tolist()) == set(range(8))  # 200 draws from 8 scenes reach them all


def test_continue_from_the_bundled_model_trains_and_saves(tmp_path):
    out = tmp_path / "run"
    rc = main(["--continue-from", str(BUNDLED), "--input-size", "256x192", "--render-size", "128x96",
               "--batch-size", "2", "--views", "1", "--pool", "2", "--render-every", "1", "--steps", "2",
               "--warmup", "1", "--device", "cpu", "--out", str(out)])
    assert rc == 0
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert all(torch.isfinite(torch.tensor(record[k])) for k in ("loss", "pose", "seg", "depth", "normal"))
    before, after = load_multitask(BUNDLED), load_multitask(out / "last.safetensors")
    assert before.config == after.config
    moved = [k for k, v in before.state_dict().items() if not torch.equal(v, after.state_dict()[k])]
    assert moved, "two optimizer steps changed no weight"


def test_continuing_at_another_input_size_is_a_usage_error_not_a_traceback(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--continue-from", str(BUNDLED), "--input-size", "128x96", "--device", "cpu", "--out", str(tmp_path)])
    assert exit_.value.code == 2 and "trained at (256, 192), not --input-size 128x96" in capsys.readouterr().err


def test_a_non_finite_step_is_skipped_reported_and_counted(tmp_path, monkeypatch, capsys):
    from opensapiens.training import multitask

    real, calls = multitask.multitask_loss, {"n": 0}

    def flaky(*args, **kw):
        calls["n"] += 1
        loss, parts = real(*args, **kw)
        return (loss * float("nan"), parts) if calls["n"] == 2 else (loss, parts)

    monkeypatch.setattr(multitask, "multitask_loss", flaky)
    rc = main(["--continue-from", str(BUNDLED), "--input-size", "256x192", "--render-size", "128x96",
               "--batch-size", "2", "--views", "1", "--steps", "3", "--warmup", "1", "--device", "cpu",
               "--out", str(tmp_path / "run")])
    out = capsys.readouterr().out
    assert rc == 0 and "step 1: non-finite loss or gradient" in out and "3 steps (1 skipped)" in out


def test_init_from_an_mae_backbone_drops_cls_and_resizes_positions(tmp_path):
    import torch.nn.functional as F

    from opensapiens.checkpoints import save_model
    from opensapiens.models.mae import build_mae

    torch.manual_seed(0)
    mae = build_mae("nano", (64, 64), decoder_dim=32, decoder_depth=1, decoder_heads=2)  # cls token, 1 + 4x4 table
    save_model(mae.backbone_model(), tmp_path / "backbone.safetensors")
    rc = main(["--arch", "nano", "--input-size", "64x48", "--render-size", "96x64", "--batch-size", "2", "--views", "1",
               "--head-channels", "16", "--steps", "1", "--lr", "0", "--init", str(tmp_path / "backbone.safetensors"),
               "--device", "cpu", "--out", str(tmp_path / "run")])
    assert rc == 0
    got, src = load_multitask(tmp_path / "run" / "last.safetensors").backbone, mae.backbone
    assert torch.equal(got.blocks[3].mlp.fc1.weight, src.blocks[3].mlp.fc1.weight)
    grid = src.pos_embed[:, 1:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2)  # cls row dropped, 4x4 -> 4x3
    expected = F.interpolate(grid, size=(4, 3), mode="bicubic", align_corners=False).flatten(2).transpose(1, 2)
    assert torch.allclose(got.pos_embed, expected, atol=1e-6)
