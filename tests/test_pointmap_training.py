"""Fine-tuning and evaluating Sapiens2 pointmaps: targets, the seven loss terms and the metrics against the float64
statement of their specification (``pointmap_reference``, written from the spec alone), the camera that follows
the augmentation's warp, the on-the-fly synthetic targets, and a short run from data to ``eval``."""

from __future__ import annotations

import json
import math

import numpy as np
import pointmap_reference as R
import pytest
import torch

from opensapiens.cli.main import main
from opensapiens.data import DataError, DenseDataset, Fit2Augment
from opensapiens.data.datasets import read_intrinsics
from opensapiens.data.sapiens2_transforms import fit_plan
from opensapiens.data.synth_stream import SynthStream
from opensapiens.evaluation.pointmap import PointmapAccumulator
from opensapiens.evaluation.runner import evaluate_saved
from opensapiens.models import Head2Spec, build_model
from opensapiens.tasks import PointmapEvaluator, build_criterion
from opensapiens.tasks.pointmap import WEIGHTS, pointmap_loss_terms, unproject
from opensapiens.training.config import TrainConfig, lower_is_better, resolve
from opensapiens.training.speed import checkpoint_head

SMALL = Head2Spec((16, 16, 8, 8), (8,), 3, scale_conv=(32, 16, 8), scale_hidden=(16,))


def _scene(rng: np.random.Generator, B: int = 3, H: int = 16, W: int = 12):
    """Smooth positive depths, general cameras (one with skew and unequal focals), and masks: one too small to
    count (the official loader would drop it)."""
    K = np.array([[[500, 0, 5.5], [0, 480, 7.5], [0, 0, 1]], [[300, 10, 6], [5, 310, 8], [0, 0, 1]],
                  [[420, 0, 6.2], [0, 420, 7.1], [0, 0, 1]]], float)[:B]
    v, u = np.mgrid[:H, :W]
    depth = np.stack([2 + 0.5 * np.sin(u / 3 + b) + 0.3 * np.cos(v / 4) for b in range(B)])
    mask = np.zeros((B, H, W), bool)
    mask[:, 3:13, 2:10] = True
    mask[1, 5, 5] = False
    if B > 2:
        mask[2] = False
        mask[2, 4:7, 4:8] = True  # 12 pixels: below the 16 that count
    points = np.stack([R.unproject(depth[b], K[b]) for b in range(B)])
    return points, mask, K


def test_each_loss_term_and_the_total_match_the_float64_statement():
    rng = np.random.default_rng(0)
    points, mask, K = _scene(rng)
    B, H, W = mask.shape
    canonical = points * np.array([R.canonical_scale(k) for k in K])[:, None, None, None]
    pred = canonical.transpose(0, 3, 1, 2) * rng.uniform(0.7, 1.3, (B, 3, H, W)) + rng.normal(0, 0.2, (B, 3, H, W))
    pred[0, :, 4:6, 3:5] += 60.0  # far off (pooled, the clamped terms stay under 4 here; the next test binds them)
    scale = rng.uniform(1, 2, B)
    want = R.loss_terms(pred, scale, points, mask, K)
    pred_t = torch.tensor(pred, dtype=torch.float32, requires_grad=True)
    got = pointmap_loss_terms(pred_t, torch.tensor(scale)[:, None], torch.tensor(points), torch.tensor(mask),
                              torch.tensor(K))
    for name, value in got.items():
        assert float(value) == pytest.approx(want[name], rel=2e-5, abs=1e-6), name
    total = build_criterion("pointmap")((pred_t, torch.tensor(scale)[:, None].float()),
                                        {"points": torch.tensor(points), "mask": torch.tensor(mask),
                                         "intrinsics": torch.tensor(K)})
    assert float(total) == pytest.approx(want["total"], rel=2e-5)
    assert sum(WEIGHTS.values()) == 12.0  # 2 + 1 + 1 + 1 + 1 + 2 + 4, as official
    total.backward()
    assert torch.isfinite(pred_t.grad).all() and pred_t.grad[2].abs().sum() == 0  # the sample that does not count


def test_the_clamps_bind_on_the_pooled_terms_and_the_4cm_rule_reads_the_canonical_depth():
    rng = np.random.default_rng(3)
    points, mask, K = _scene(rng, B=2)
    s = np.array([R.canonical_scale(k) for k in K])
    pred = (points * s[:, None, None, None]).transpose(0, 3, 1, 2) * 3 + 50  # far off everywhere, and scattered
    pred += rng.normal(0, 40, pred.shape)  # (a shift alone the shift-invariant term forgives)
    args = (torch.tensor(s)[:, None], torch.tensor(points), torch.tensor(mask), torch.tensor(K))
    got = pointmap_loss_terms(torch.tensor(pred), *args)
    want = R.loss_terms(pred, s, points, mask, K)
    for name in ("l1", "multiscale_l1", "shift_invariant"):
        assert float(got[name]) == want[name] == 4.0, name
    assert float(got["intrinsics"]) == pytest.approx(want["intrinsics"], rel=1e-5) and want["intrinsics"] > 4
    # a sample 5 cm away through a camera of focal 1000 is 3.84 canonical cm away: the official rule drops it
    near = points.copy()
    near[1] *= 0.05 / points[1][mask[1]][:, 2].min()
    K_near = K.copy()
    K_near[1] = [[1000, 0, 5.5], [0, 1000, 7.5], [0, 0, 1]]
    near[1] = R.unproject(near[1][..., 2], K_near[1])
    assert (near[1][mask[1]][:, 2].min() >= 0.04) and not R.sample_counts(mask[1], near[1][..., 2] * 0.768)
    s_near = np.array([R.canonical_scale(k) for k in K_near])
    both = pointmap_loss_terms(torch.tensor(pred), torch.tensor(s_near)[:, None], torch.tensor(near),
                               torch.tensor(mask), torch.tensor(K_near))
    first = pointmap_loss_terms(torch.tensor(pred[:1]), torch.tensor(s_near[:1])[:, None], torch.tensor(near[:1]),
                                torch.tensor(mask[:1]), torch.tensor(K_near[:1]))
    assert all(float(both[k]) == pytest.approx(float(first[k]), rel=1e-6) for k in both)


def test_the_loss_is_float32_under_bf16_autocast():
    """Autocast would run the pixel rays' matmul in bf16, which cannot hold pixel coordinates above 256 exactly."""
    H, W = 8, 300
    K = torch.tensor([[[1100.0, 0, 150], [0, 1100, 4], [0, 0, 1]]], dtype=torch.float64)
    v, u = np.mgrid[:H, :W]
    points = torch.tensor(R.unproject(2 + 0.1 * np.sin(u / 30), K[0].numpy()))[None]
    mask = torch.zeros(1, H, W, dtype=torch.bool)
    mask[:, 2:6, 10:290] = True
    s = torch.tensor([R.canonical_scale(K[0].numpy())])
    perfect = (points * s * mask[..., None]).permute(0, 3, 1, 2).float()
    plain = pointmap_loss_terms(perfect, s[:, None], points, mask, K)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = pointmap_loss_terms(perfect, s[:, None], points, mask, K)
    assert float(autocast["intrinsics"]) < 1e-6 and float(plain["intrinsics"]) < 1e-6
    assert all(float(autocast[k]) == pytest.approx(float(plain[k]), abs=1e-6) for k in plain)


def test_a_perfect_prediction_costs_nothing_and_no_counting_sample_gives_a_zero_with_a_graph():
    rng = np.random.default_rng(1)
    points, mask, K = _scene(rng, B=2)
    s = torch.tensor([R.canonical_scale(k) for k in K])
    true = (torch.tensor(points) * s[:, None, None, None]).permute(0, 3, 1, 2)
    perfect = true * torch.tensor(mask)[:, None]  # as the GT: 0 off the mask
    terms = pointmap_loss_terms(perfect, s[:, None], torch.tensor(points), torch.tensor(mask), torch.tensor(K))
    assert all(float(v) < 2e-6 for v in terms.values()), terms
    # the true points off the mask too: the 2x bilinear map and the border normals see the GT's zeros there, as
    # in the official statement
    terms = pointmap_loss_terms(true, s[:, None], torch.tensor(points), torch.tensor(mask), torch.tensor(K))
    want = R.loss_terms(true.numpy(), s.numpy(), points, mask, K)
    assert float(terms["multiscale_l1"]) > 0.01 and float(terms["normal"]) > 0.01
    for name in ("multiscale_l1", "normal"):
        assert float(terms[name]) == pytest.approx(want[name], rel=1e-5), name
    pred = perfect.float().requires_grad_()
    none = pointmap_loss_terms(pred, s[:, None].float(), torch.tensor(points), torch.zeros(mask.shape, dtype=bool),
                               torch.tensor(K))
    loss = sum(none.values())
    loss.backward()
    assert float(loss) == 0 and pred.grad is not None


def test_metrics_match_the_float64_statement_in_both_spaces():
    rng = np.random.default_rng(2)
    H, W = 32, 24
    K = np.array([[400, 0, 11.5], [0, 400, 15.5], [0, 0, 1]])
    v, u = np.mgrid[:H, :W]
    gts, preds, masks, scales = [], [], [], []
    for i in range(2):
        depth = 2 + 0.3 * np.sin(v / 5 + i) + 0.2 * np.cos(u / 4)
        gts.append(R.unproject(depth, K))
        preds.append(gts[-1] * (1 + 0.1 * i) + rng.normal(0, 0.04, (H, W, 3)))
        m = np.zeros((H, W), bool)
        m[4:28, 3 + i:20] = True
        masks.append(m)
        scales.append(R.canonical_scale(K) * (1.1 + 0.1 * i))
    acc = PointmapAccumulator()
    for p, g, m in zip(preds, gts, masks):
        acc.update(p, g, m)
    got, want = acc.compute(), R.metrics(preds, gts, masks)
    for k in ("l2_mean", "rmse", "x_mae", "y_mae", "z_mae", "within_5cm", "within_10cm", "within_20cm",
              "normal_mean", "normal_within_11.25", "normal_within_22.5", "normal_within_30"):
        assert got[k] == pytest.approx(want[k], rel=1e-9, abs=1e-12), k
    errors = np.concatenate([[R._angle_deg(a, b) for a, b in zip(R.pointmap_normals(p, m)[0][valid],
                                                                  R.pointmap_normals(g, m)[0][valid])]
                             for p, g, m in zip(preds, gts, masks) for valid in [R.pointmap_normals(g, m)[1]]])
    assert abs(got["normal_median"] - np.sort(errors)[(len(errors) + 1) // 2 - 1]) <= 0.01  # histogram median
    assert got["nonfinite_pred"] == 0
    error_keys = [k for k in got if not k.startswith(("within", "normal_within", "num_", "nonfinite"))]
    assert error_keys and all(lower_is_better(k) for k in error_keys)  # --best-metric's direction
    assert not any(lower_is_better(k) for k in got if "within" in k)

    # a prediction cut by a segmentation (NaN) is counted, never within, left out of the means; without a mask the
    # background's zero points are not scored
    holed = [p.copy() for p in preds]
    holed[0][10, 10] = np.nan
    acc = PointmapAccumulator()
    for p, g, m in zip(holed, gts, masks):
        acc.update(p, np.where(m[..., None], g, 0.0))  # no mask: the GT's zeros are the background
    cut = [m.copy() for m in masks]
    cut[0][10, 10] = False
    holed_got, without = acc.compute(), R.metrics(preds, gts, cut)
    n = sum(m.sum() for m in masks)
    assert holed_got["nonfinite_pred"] == 1 and holed_got["num_pixels"] == n
    assert holed_got["l2_mean"] == pytest.approx(without["l2_mean"], rel=1e-9)
    assert holed_got["within_10cm"] == pytest.approx(without["within_10cm"] * (n - 1) / n, rel=1e-9)

    # the training evaluator: canonical (as regressed) and metric (/ predicted scale) spaces, the focal's error
    evaluator = PointmapEvaluator()
    s_true = R.canonical_scale(K)
    canonical_pred = torch.tensor(np.stack([p * s for p, s in zip(preds, scales)])).permute(0, 3, 1, 2)
    evaluator.update((canonical_pred, torch.tensor(scales)[:, None]),
                     {"points": torch.tensor(np.stack(gts)), "mask": torch.tensor(np.stack(masks)),
                      "intrinsics": torch.tensor(np.stack([K, K]))})
    out = evaluator.compute()
    canonical = R.metrics([p * s for p, s in zip(preds, scales)], [g * s_true for g in gts], masks)
    assert out["l2_mean"] == pytest.approx(canonical["l2_mean"], rel=1e-5)
    assert out["metric_l2_mean"] == pytest.approx(want["l2_mean"], rel=1e-5)
    assert out["metric_within_10cm"] == pytest.approx(want["within_10cm"], abs=1e-3)
    focal_err = np.mean([abs(768 / s - 768 / s_true) / (768 / s_true) for s in scales])
    assert out["focal_abs_rel"] == pytest.approx(focal_err, rel=1e-5)


def _plane(i: int, H: int, W: int) -> np.ndarray:
    v, u = np.mgrid[:H, :W]
    return 2 + 0.01 * (i + 1) * u + 0.02 * v  # a plane seen at an angle: bilinear resampling keeps it exact


def _write_dataset(root, rng, n=2, H=40, W=30, official=True):
    from opensapiens.io import save_npy, save_png

    for i in range(n):
        name = f"s{i}"
        depth = _plane(i, H, W).astype(np.float32)
        mask = np.zeros((H, W), np.uint8)
        mask[5:35, 4:26] = 1
        depth[~mask.astype(bool)] = 0
        save_png(root / "images" / f"{name}.png", rng.integers(0, 255, (H, W, 3), dtype=np.uint8))
        save_png(root / "masks" / f"{name}.png", mask)
        save_npy(root / "depths" / f"{name}.npy", depth)
        K = np.array([[55.0 + i, 0, 14.2], [0, 55.0 + i, 19.6], [0, 0, 1]])
        if official:
            (root / "camera_intrinsics").mkdir(exist_ok=True)
            np.savetxt(root / "camera_intrinsics" / f"{name}.txt", K)
        else:
            (root / "meta").mkdir(exist_ok=True)
            (root / "meta" / f"{name}.json").write_text(json.dumps(
                {"image": {"fx": K[0, 0], "fy": K[1, 1], "cx": K[0, 2], "cy": K[1, 2]}}))


@pytest.mark.parametrize("official", [True, False])
def test_augmented_samples_see_the_source_surface_through_the_warped_camera(tmp_path, official):
    """After Sapiens2's random scale, crop, mirror and centred fit, a foreground pixel away from the silhouette holds
    the source surface's point at the pixel's back-warped position, mirrored by G: G Z(x, y) K^-1 (x, y, 1) (a
    planar depth, so the bilinear resampling is exact); the camera is the float64 statement's K' = [M; 0 0 1] K G^-1,
    its focal the warp's magnification times the source's; magnified surfaces are smooth (no steps of repeated
    points, whose forward-difference normals a perfect prediction would be charged for)."""
    _write_dataset(tmp_path, np.random.default_rng(0), official=official)
    aug = Fit2Augment(scale_prob=1.0, scale_range=(1.5, 2.5), crop_prob=1.0, crop_area=(0.3, 0.6), flip_prob=1.0,
                      photometric=False)
    ds = DenseDataset(tmp_path, "pointmap", (64, 48), aug)
    K0 = read_intrinsics(tmp_path, "s1")
    for seed in range(3):
        sample = ds.load(1, np.random.default_rng(seed))
        plan = fit_plan((40, 30), (64, 48), np.random.default_rng(seed), aug)
        M, G = plan.M[:2], np.diag([-1.0, 1.0, 1.0])
        assert plan.flip and plan.scaled_hw is not None
        assert M[0, 1] == M[1, 0] == 0 and M[0, 0] < 0 < M[1, 1]  # axis-aligned and mirrored: no turn, no shear
        k = math.sqrt(abs(np.linalg.det(M[:, :2])))
        assert k > 1.6  # a crop of at most 60 % of the image, fitted to a larger input: magnified
        np.testing.assert_allclose(sample["intrinsics"], R.warp_intrinsics(K0, M, G), rtol=1e-6, atol=1e-4)
        assert R.focal(sample["intrinsics"]) == pytest.approx(k * 56.0, rel=1e-6)
        np.testing.assert_allclose(sample["intrinsics"][0, 1], 0, atol=1e-9)
        fg = sample["mask"].astype(bool)
        v, u = np.nonzero(fg)
        back = np.linalg.inv(np.vstack([M, [0, 0, 1]])) @ np.stack([u, v, np.ones_like(u)]).astype(float)
        x, y = back[0], back[1]
        inner = (np.floor(x) >= 4) & (np.floor(x) + 1 <= 25) & (np.floor(y) >= 5) & (np.floor(y) + 1 <= 34)
        assert inner.sum() > 200
        Z = 2 + 0.02 * x + 0.02 * y  # image s1's plane at the back-warped positions
        want = (G @ (Z * (np.linalg.inv(K0) @ np.stack([x, y, np.ones_like(x)]))))[:, inner].T
        np.testing.assert_allclose(sample["points"][v[inner], u[inner]], want, atol=2e-3)  # (cv2's 1/32 px grid)
        terms = pointmap_loss_terms(torch.tensor(sample["points"] * R.canonical_scale(sample["intrinsics"]))
                                    .permute(2, 0, 1)[None], torch.tensor([[R.canonical_scale(sample["intrinsics"])]]),
                                    torch.tensor(sample["points"])[None], torch.tensor(fg)[None],
                                    torch.tensor(sample["intrinsics"])[None])
        assert float(terms["normal"]) < 1e-3 and float(terms["intrinsics"]) < 1e-5  # the GT costs nothing

    val = DenseDataset(tmp_path, "pointmap", (64, 48), None)[0]  # the centred fit of predict's resize="center"
    K = read_intrinsics(tmp_path, "s0")
    sx, sy = 48 / 30, 64 / 40
    np.testing.assert_allclose(val["intrinsics"], [[K[0, 0] * sx, 0, (K[0, 2] + 0.5) * sx - 0.5],
                                                   [0, K[1, 1] * sy, (K[1, 2] + 0.5) * sy - 0.5], [0, 0, 1]],
                               rtol=1e-6)
    from opensapiens.inference.transforms import MEAN, STD, Preprocessor
    from opensapiens.io import read_image

    x, _ = Preprocessor((64, 48), resize="center")([read_image(tmp_path / "images" / "s0.png")])
    mean, std = torch.tensor(MEAN), torch.tensor(STD)
    seen = (x[0].permute(1, 2, 0) * std + mean).numpy()
    assert np.abs(seen - val["image"]).max() <= 1.01  # predict's input, to uint8 rounding: its edges too


def test_cameras_that_cannot_be_read_are_named(tmp_path):
    _write_dataset(tmp_path, np.random.default_rng(0))
    (tmp_path / "camera_intrinsics" / "s1.txt").write_text("1 2 3\n4 5 6\n")
    ds = DenseDataset(tmp_path, "pointmap", (64, 48), None)
    with pytest.raises(DataError, match=r"s1\.txt: expected a 3 x 3 camera matrix"):
        ds.load(1, None)
    empty = tmp_path / "bare"
    for d in ("images", "depths"):
        (empty / d).mkdir(parents=True)
    (tmp_path / "images" / "s0.png").rename(empty / "images" / "s0.png")
    (tmp_path / "depths" / "s0.npy").rename(empty / "depths" / "s0.npy")
    with pytest.raises(DataError, match="pointmaps need each image's camera"):
        DenseDataset(empty, "pointmap", (64, 48), None)
    (empty / "meta").mkdir()  # a camera_intrinsics/ folder without the image's file: its meta/ JSON, if any
    (empty / "camera_intrinsics").mkdir()
    (empty / "meta" / "s0.json").write_text(json.dumps({"image": {"fx": 9.0, "fy": 9.0, "cx": 1.0, "cy": 2.0}}))
    np.testing.assert_array_equal(read_intrinsics(empty, "s0"), [[9, 0, 1], [0, 9, 2], [0, 0, 1]])


def test_on_the_fly_synthetic_points_are_the_depth_seen_through_the_camera():
    batch = next(iter(SynthStream("pointmap", (64, 48), 2, seed=5)))
    K = batch["intrinsics"].double().numpy()
    assert np.allclose(K[:, 2], [0, 0, 1]) and np.allclose(K[:, 0, 1], 0)
    for b in range(2):
        fg = batch["mask"][b].bool().numpy()
        assert fg.any()
        P = batch["points"][b].double().numpy()
        v, u = np.nonzero(fg)
        Z = P[fg, 2]
        np.testing.assert_allclose(P[fg, 0], (u - K[b, 0, 2]) * Z / K[b, 0, 0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(P[fg, 1], (v - K[b, 1, 2]) * Z / K[b, 1, 1], rtol=1e-5, atol=1e-6)
        assert (Z > 0).all()


def test_checkpointed_pointmap_heads_give_the_plain_heads_points_scale_and_gradients():
    feats = torch.randn(4, 64, 16, 12)
    results = []
    for mode in (None, "staged", "sliced"):
        torch.manual_seed(0)
        model = build_model("pointmap", "sapiens2_nano", head_spec=SMALL.for_input((256, 192))).train()
        if mode is not None:
            checkpoint_head(model.head, 2 if mode == "sliced" else None)
        points, scale = model.head(feats)
        loss = points.square().mean() + scale.square().mean()
        loss.backward()
        results.append((points.detach(), scale.detach(), {n: p.grad for n, p in model.head.named_parameters()}))
    for points, scale, grads in results[1:]:
        torch.testing.assert_close(points, results[0][0], rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(scale, results[0][1], rtol=1e-6, atol=1e-7)
        for name, g in grads.items():
            torch.testing.assert_close(g, results[0][2][name], rtol=1e-4, atol=1e-6)  # slices sum in another order


@pytest.mark.parametrize("size", [(1024, 768), (256, 192), (144, 128), (512, 384)])
def test_the_scale_branch_flattens_the_grid_its_input_gives(size):
    spec = SMALL.for_input(size)
    head = build_model("pointmap", "sapiens2_nano", head_spec=spec).head
    grid = head.scale_conv_layers(torch.randn(1, 64, size[0] // 16, size[1] // 16)).shape[-2:]
    assert tuple(grid) == spec.scale_grid


def test_pointmaps_are_refused_for_v1_and_for_inputs_the_scale_branch_cannot_normalize(tmp_path):
    with pytest.raises(ValueError, match="pointmaps are a Sapiens2 task; --arch 0.3b"):
        resolve(TrainConfig(task="pointmap", data="d", out=str(tmp_path), arch="0.3b"))
    with pytest.raises(ValueError, match=r"'pointmap' is not a Sapiens v1 task .* \(pointmaps are Sapiens2 models"):
        build_model("pointmap", "nano")  # (the benchmarks build models directly)
    with pytest.raises(ValueError, match="to a single value"):
        resolve(TrainConfig(task="pointmap", data="d", out=str(tmp_path), arch="sapiens2_nano",
                            input_size=(128, 96)))
    cfg = resolve(TrainConfig(task="pointmap", data="d", out=str(tmp_path), arch="sapiens2_1b", steps=1000))
    assert (cfg.best_metric, cfg.best_mode, cfg.lr, cfg.layer_decay) == ("metric_l2_mean", "min", 5e-4, 0.9)
    assert cfg.precision == "tf32" and resolve(TrainConfig(task="normal", data="d", out=str(tmp_path),
                                                           arch="sapiens2_1b")).precision == "bf16"


def test_a_short_pointmap_fine_tune_predicts_and_scores_as_its_own_evaluation_does(tmp_path, capsys):
    """Folder data with cameras in, a model out; ``predict`` loads it and ``eval`` scores it on the same folder:
    images at the input size (so no resize either way) and float32 on both sides (the pointmap recipe's precision)
    give the run's own evaluation's metric error. (The centred fit itself is compared with predict's input in the
    augmentation test.)"""
    from opensapiens.synth.dataset import write_dataset

    data = tmp_path / "data"
    write_dataset(data, 3, 256, 192, seed=11)
    run = tmp_path / "run"
    cfg = dict(task="pointmap", data=str(data), val_data=str(data), out=str(run), arch="sapiens2_nano", steps=2,
               batch_size=2, input_size=(256, 192), workers=0, head_spec=SMALL.to_dict(), device="cpu",
               tensorboard=False)
    from opensapiens.training.finetune import train

    summary = train(TrainConfig(**cfg))
    metrics = summary["metrics"]
    assert summary["step"] == 2 and math.isfinite(summary["loss"]) and metrics["num_images"] == 3
    assert (run / "best.safetensors").is_file()
    capsys.readouterr()
    assert main(["eval", "--task", "pointmap", "--checkpoint", str(run / "final.safetensors"), "--data", str(data),
                 "--device", "cpu", "--quiet", "--out", str(tmp_path / "eval.json")]) == 0
    scored = json.loads((tmp_path / "eval.json").read_text())
    assert scored["l2_mean"] == pytest.approx(metrics["metric_l2_mean"], rel=1e-4)
    assert scored["focal_abs_rel"] == pytest.approx(metrics["focal_abs_rel"], rel=1e-3)
    assert "l2_mean" in capsys.readouterr().out

    pred = tmp_path / "pred"
    assert main(["predict", "--task", "pointmap", "--checkpoint", str(run / "final.safetensors"), "--device", "cpu",
                 "--out", str(pred), *map(str, sorted((data / "images").iterdir()))]) == 0
    gt = tmp_path / "gt"
    gt.mkdir()
    from opensapiens.evaluation.runner import _pointmap_gt

    for name in ("000000", "000001", "000002"):
        (points, _), _ = _pointmap_gt(data, name, np.load(data / "depths" / f"{name}.npy"), None)
        np.save(gt / f"{name}.npy", points)
    saved = evaluate_saved("pointmap", pred, gt, masks=data / "masks")
    assert saved["l2_mean"] == pytest.approx(scored["l2_mean"], rel=1e-6)

    synth = dict(cfg, data="synth", val_data=None, out=str(tmp_path / "synth_run"), steps=1)
    assert train(TrainConfig(**synth))["step"] == 1
    records = [json.loads(line) for line in (tmp_path / "synth_run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["samples_left_out"] for r in records if r["event"] == "train"] == [0]

    # people a few millimetres from the camera break the official rule (nearest point 4 cm or more, canonically):
    # the run says so, not just a loss of 0
    for depth in (data / "depths").iterdir():
        np.save(depth, np.load(depth) * 1e-3)
    capsys.readouterr()
    full = dict(cfg, val_data=None, out=str(tmp_path / "full_run"), steps=1, augment=False)
    assert train(TrainConfig(**full))["loss"] == 0
    records = [json.loads(line) for line in (tmp_path / "full_run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["samples_left_out"] for r in records if r["event"] == "train"] == [2]
    out = capsys.readouterr()
    assert "all 2 samples since the last record were left out" in out.out + out.err


def test_unproject_is_the_pinhole_inverse():
    rng = np.random.default_rng(3)
    depth = rng.uniform(1, 3, (2, 5, 4))
    K = np.stack([[[100.0, 3.0, 2.0], [0.0, 90.0, 2.5], [0, 0, 1]]] * 2)
    got = unproject(torch.tensor(depth), torch.tensor(K)).numpy()
    np.testing.assert_allclose(got, np.stack([R.unproject(d, k) for d, k in zip(depth, K)]), rtol=1e-12)


def test_an_init_pointmap_head_from_another_input_size_loads_all_but_its_scale_linear(tmp_path):
    """The scale branch flattens a grid that follows the input size: only its first Linear changes shape, so a
    released 1024x768 head starts a 256x192 fine-tune with every other tensor (as the official loader skips only
    mismatched shapes)."""
    from opensapiens.checkpoints.loading import export_official
    from opensapiens.training.init import load_initial_weights

    torch.manual_seed(0)
    source = build_model("pointmap", "sapiens2_nano", head_spec=SMALL)  # (8, 6): 1024 x 768
    path = export_official(source, tmp_path / "pm.safetensors")
    model = build_model("pointmap", "sapiens2_nano", head_spec=SMALL.for_input((256, 192)))
    report = load_initial_weights(model, str(path))
    n = len(model.head.state_dict())
    assert report["head"] == n - 1 and report["skipped_head"].endswith("scale_final_layer.1.weight")
    for name, tensor in model.head.state_dict().items():
        if name != "scale_final_layer.1.weight":
            torch.testing.assert_close(tensor, source.head.state_dict()[name], rtol=0, atol=0)
