"""Sapiens2's own fine-tuning losses (pose MSE x 10, seg cross-entropy + Dice, normals 10 cosine + L1 + 10 gradient)
against ``sapiens2_loss_reference`` (float64, written from the specification alone), the recipe values that go with
them (gradient clipping, the 29 class weights, TF32 float32 math) and the engine choosing them by generation."""

from __future__ import annotations

import numpy as np
import pytest
import sapiens2_loss_reference as R
import torch

from opensapiens.metadata import seg_classes
from opensapiens.tasks import build_criterion, dice_loss
from opensapiens.tasks.normal import normal_loss_terms
from opensapiens.training.config import TrainConfig, resolve
from opensapiens.training.optim import build_optimizer
from opensapiens.training.reproducibility import float32_math

rng = np.random.default_rng(7)


def test_sapiens2_pose_is_the_heatmap_mse_times_ten():
    B, K, H, W = 3, 17, 64, 48
    keypoints = torch.tensor(rng.uniform(0, 47, (B, K, 2)), dtype=torch.float32)
    visible = torch.tensor(rng.random((B, K)) > 0.3, dtype=torch.float32)
    batch = {"image": torch.zeros(B, 3, H, W), "keypoints": keypoints, "visible": visible}
    pred = torch.tensor(rng.normal(0, 0.3, (B, K, 16, 12)), dtype=torch.float32)
    criterion = build_criterion("pose", generation=2, sigma=1.5)
    target, weights = criterion.targets(batch, (16, 12))
    want = R.pose_loss(pred.double().numpy(), target.double().numpy(), weights.double().numpy())
    assert float(criterion(pred, batch)) == pytest.approx(want, rel=1e-5)
    assert float(build_criterion("pose", generation=1, sigma=1.5)(pred, batch)) == pytest.approx(want / 10, rel=1e-5)


def _seg_case(C: int = 6, B: int = 4, H: int = 24, W: int = 18):
    labels = rng.integers(0, C, (B, H, W))
    labels[0, :5] = 255  # ignored rows
    labels[1] = 0  # background only: its Dice does not count (but the sample stays in the mean)
    labels[2, :, :9] = 255
    labels[3][labels[3] == 2] = 0  # a class absent from one sample
    logits = rng.normal(0, 2, (B, C, H // 2, W // 2))  # half resolution: up-sampled to the labels first
    return logits, labels


def test_sapiens2_seg_is_weighted_cross_entropy_plus_dice():
    logits, labels = _seg_case()
    weight = tuple(rng.uniform(0.1, 10, logits.shape[1]))
    x = torch.tensor(logits, dtype=torch.float32, requires_grad=True)
    y = torch.tensor(labels)
    assert float(dice_loss(x, y)) == pytest.approx(R.seg_dice(logits, labels), rel=1e-5)
    total = build_criterion("seg", generation=2, class_weight=weight)(x, {"labels": y})
    assert float(total) == pytest.approx(R.seg_loss(logits, labels, weight), rel=1e-5)
    v1 = build_criterion("seg", generation=1, class_weight=weight)(x, {"labels": y})
    assert float(v1) == pytest.approx(R.seg_ce(logits, labels, weight), rel=1e-5)  # v1: no Dice
    total.backward()
    assert torch.isfinite(x.grad).all()


def test_a_confident_right_segmentation_has_no_dice_loss_and_a_wrong_one_nearly_one():
    _, labels = _seg_case(C=5)
    right = 40.0 * np.moveaxis(np.eye(5)[np.where(labels == 255, 0, labels)], -1, 1)
    assert float(dice_loss(torch.tensor(right), torch.tensor(labels))) < 1e-3
    wrong = np.roll(right, 1, axis=1)  # every pixel sure of the next class
    counted = 3  # of 4 samples: the background-only one adds 0
    assert float(dice_loss(torch.tensor(wrong), torch.tensor(labels))) == pytest.approx(counted / 4, abs=2e-3)


def test_the_29_class_weights_are_the_sapiens2_configs():
    assert seg_classes("sapiens2").class_weight == pytest.approx(R.SAPIENS2_CLASS_WEIGHT)
    v1 = seg_classes("goliath")
    assert seg_classes("sapiens2").class_weight[2] == 10 and v1.class_weight == pytest.approx(
        [w for i, w in enumerate(R.SAPIENS2_CLASS_WEIGHT) if i != 2])  # Eyeglass inserted, the rest v1's


def test_sapiens2_normals_add_a_gradient_term_and_reweight():
    B, H, W = 2, 20, 16
    gt = rng.normal(size=(B, 3, H, W))
    gt /= np.linalg.norm(gt, axis=1, keepdims=True)
    mask = rng.random((B, H, W)) > 0.25
    gt[:, :, ~mask[0]] = np.nan  # off-mask GT need not be finite
    gt[1, 2, 3, 4] = np.inf  # a bad GT pixel inside the mask leaves it
    pred = rng.normal(size=(B, 3, H // 2, W // 2))
    want = R.normal_terms(pred, gt, mask)
    got = normal_loss_terms(torch.tensor(pred), torch.tensor(gt), torch.tensor(mask))
    for name in ("cosine", "l1", "grad"):
        assert float(got[name]) == pytest.approx(want[name], rel=1e-6), name
    batch = {"normals": torch.tensor(gt), "mask": torch.tensor(mask)}
    assert float(build_criterion("normal", generation=2)(torch.tensor(pred), batch)) == pytest.approx(
        want["total"], rel=1e-6)
    assert float(build_criterion("normal", generation=1)(torch.tensor(pred), batch)) == pytest.approx(
        want["cosine"] + want["l1"], rel=1e-6)  # v1: cosine + L1, no gradient term


@pytest.mark.parametrize("task, arch, clip", [("seg", "sapiens2_0.4b", 2.0), ("pose", "sapiens2_1b", 4.0),
                                              ("pointmap", "sapiens2_0.8b", 2.0), ("normal", "sapiens2_0.8b", 4.0),
                                              ("seg", "0.3b", 1.0)])
def test_gradient_clipping_follows_each_generations_configs(tmp_path, task, arch, clip):
    assert resolve(TrainConfig(task=task, data="d", out=str(tmp_path), arch=arch)).clip_grad == clip
    assert resolve(TrainConfig(task=task, data="d", out=str(tmp_path), arch=arch, clip_grad=0.5)).clip_grad == 0.5


def test_float32_math_sets_tf32_or_full_float32_and_restores_the_settings():
    before = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    with float32_math("tf32"):
        assert (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32) == ("high", True)
    with float32_math("fp32"):
        assert (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32) == ("highest", False)
    with float32_math("bf16"):
        assert (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32) == before
    assert (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32) == before


def test_the_engine_picks_the_loss_weight_decay_and_float32_math_of_the_run(tmp_path, monkeypatch):
    from opensapiens.training import finetune

    built, token_decay = [], []

    def spy_criterion(task, **kw):  # (built inside the run's float32_math)
        built.append((task, build_criterion(task, **kw), torch.get_float32_matmul_precision()))
        return built[-1][1]

    def spy_optimizer(*args, **kw):
        token_decay.append(kw.get("decay_tokens", False))
        return build_optimizer(*args, **kw)

    monkeypatch.setattr(finetune, "build_criterion", spy_criterion)
    monkeypatch.setattr(finetune, "build_optimizer", spy_optimizer)
    before = torch.get_float32_matmul_precision()
    runs = [("seg", "sapiens2_nano", "tf32"), ("seg", "nano", None), ("pose", "sapiens2_nano", None),
            ("normal", "sapiens2_nano", "fp32")]
    for task, arch, precision in runs:
        finetune.train(TrainConfig(task=task, data="synth", arch=arch, steps=1, batch_size=1, input_size=(64, 48),
                                   device="cpu", workers=0, out=str(tmp_path / f"{task}-{arch}"), tensorboard=False,
                                   precision=precision))
    (_, seg2, math2), (_, seg1, math1), (_, pose2, _), (_, normal2, math_fp32) = built
    assert (seg2.dice, seg1.dice, pose2.loss_weight, normal2.generation) == (True, False, 10.0, 2)
    assert token_decay == [True, False, True, True]
    assert (math2, math1, math_fp32) == ("high", before, "highest")
    assert torch.get_float32_matmul_precision() == before  # restored after each run
    assert seg2.class_weight.tolist() == pytest.approx(seg_classes("goliath").class_weight)  # the data's set


def test_losses_that_differ_by_generation_are_not_guessed():
    for task in ("pose", "seg", "normal"):
        with pytest.raises(ValueError, match="pass generation=1 .Sapiens. or 2"):
            build_criterion(task)
    assert build_criterion("pointmap") is not None and build_criterion("depth") is not None
