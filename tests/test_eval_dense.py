"""Segmentation, depth and normal metrics against float64 numpy references written here, independently."""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest
import torch

from opensapiens.evaluation import (
    DepthAccumulator,
    NormalAccumulator,
    SegConfusion,
    align_depth,
    depth_metrics,
    fit_scale_shift,
    normal_metrics,
)

# ----------------------------------------------------------------------------------------------------- segmentation


def seg_reference(pairs, k: int, ignore: int = 255):
    """Per-class IoU / Acc from explicit boolean masks (no confusion matrix)."""
    inter, union, gt_n = np.zeros(k), np.zeros(k), np.zeros(k)
    correct = total = 0
    for pred, gt in pairs:
        valid = gt != ignore
        for c in range(k):
            p, g = (pred == c) & valid, (gt == c) & valid
            inter[c] += np.sum(p & g)
            union[c] += np.sum(p | g)
            gt_n[c] += np.sum(g)
        correct += np.sum((pred == gt) & valid)
        total += np.sum(valid)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou, acc = inter / union, inter / gt_n  # 0/0 -> NaN
    return iou, acc, correct / total


def test_seg_matches_reference_with_empty_ignored_and_invalid_labels():
    rng = np.random.default_rng(0)
    k = 6
    pairs = []
    for _ in range(5):
        gt = rng.integers(0, 4, (20, 24)).astype(np.uint8)  # classes 4, 5 never in the GT
        pred = np.where(rng.random(gt.shape) < 0.7, gt, rng.integers(0, 5, gt.shape)).astype(np.uint8)  # 4 in pred
        gt[rng.random(gt.shape) < 0.1] = 255  # ignored pixels
        pred[:2, :3] = 255  # predicted "ignore" is an invalid prediction
        pred[5, 5:9] = 9  # out of range
        pairs.append((pred, gt))
    conf = SegConfusion(k)
    for pred, gt in pairs:
        conf.update(pred, gt)
    out = conf.compute()
    iou, acc, aacc = seg_reference(pairs, k)
    names = [f"class_{i}" for i in range(k)]
    np.testing.assert_allclose([out["IoU"][n] for n in names], iou, rtol=1e-12, equal_nan=True)
    np.testing.assert_allclose([out["Acc"][n] for n in names], acc, rtol=1e-12, equal_nan=True)
    assert np.isnan(out["IoU"]["class_5"]) and out["IoU"]["class_4"] == 0.0 and np.isnan(out["Acc"]["class_4"])
    assert out["mIoU"] == pytest.approx(np.nanmean(iou), rel=1e-12)  # class 5 left out of the mean
    assert out["mAcc"] == pytest.approx(np.nanmean(acc), rel=1e-12)
    assert out["aAcc"] == pytest.approx(aacc, rel=1e-12)
    valid_invalid = sum(int(np.sum(((p == 255) | (p == 9)) & (g != 255))) for p, g in pairs)
    assert out["invalid_pred"] == valid_invalid > 0
    assert out["num_pixels"] == sum(int(np.sum(g != 255)) for _, g in pairs)


def test_seg_all_background_and_torch_inputs():
    conf = SegConfusion(28)
    gt = np.zeros((8, 8), np.uint8)
    conf.update(torch.zeros(8, 8, dtype=torch.uint8), torch.from_numpy(gt))
    out = conf.compute()
    assert out["mIoU"] == 1.0 and out["IoU"]["class_0"] == 1.0 and out["num_classes_present"] == 1
    pred = gt.copy()
    pred[:2] = 3  # 16 of 64 pixels wrongly called class 3
    conf.update(pred, gt)
    out = conf.compute()
    assert out["IoU"]["class_0"] == pytest.approx(112 / 128) and out["IoU"]["class_3"] == 0.0
    assert out["mIoU"] == pytest.approx((112 / 128 + 0.0) / 2)
    with pytest.raises(ValueError, match="outside"):
        conf.update(pred, np.full((8, 8), 40, np.uint8))
    with pytest.raises(ValueError, match="shape"):
        conf.update(pred, gt[:4])
    with pytest.raises(TypeError, match="integer"):
        conf.update(pred.astype(np.float32), gt)


def test_seg_streams_10000_maps_in_constant_memory():
    k = 4
    rng = np.random.default_rng(1)

    def maps():
        for _ in range(10_000):
            gt = rng.integers(0, k, (16, 16), dtype=np.uint8)
            yield np.where(rng.random((16, 16)) < 0.8, gt, (gt + 1) % k).astype(np.uint8), gt

    conf = SegConfusion(k)
    inter, union = np.zeros(k), np.zeros(k)
    tracemalloc.start()
    for pred, gt in maps():
        conf.update(pred, gt)
        for c in range(k):  # the reference's own running counts
            inter[c] += np.count_nonzero((pred == c) & (gt == c))
            union[c] += np.count_nonzero((pred == c) | (gt == c))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 256 * 1024  # 10,000 maps are 2.5 MB: they were not kept
    out = conf.compute()
    assert out["num_pixels"] == 10_000 * 256 and out["num_images"] == 10_000
    assert out["mIoU"] == pytest.approx(np.mean(inter / union), rel=1e-12)


# ------------------------------------------------------------------------------------------------------------ depth


def depth_reference(pred, gt, mask, align):
    """Float64 reference of the documented protocol for one image."""
    pred, gt = pred.astype(np.float64), gt.astype(np.float64)
    valid = mask & np.isfinite(gt) & (gt > 0)
    p, g = pred[valid], gt[valid]
    finite = np.isfinite(p)
    if align == "lstsq":
        A = np.stack([p[finite], np.ones(finite.sum())], 1)
        (s, t), *_ = np.linalg.lstsq(A, g[finite], rcond=None)
        a = s * p + t
    elif align == "minmax":
        pn = (p - p[finite].min()) / (p[finite].max() - p[finite].min())
        a = pn * (g.max() - g.min()) + g.min()
    else:
        a = p.copy()
    a[~finite] = 0.0
    ratio = np.full(a.shape, np.inf)
    pos = a > 0
    ratio[pos] = np.maximum(a[pos] / g[pos], g[pos] / a[pos])
    rmse = np.sqrt(np.mean((a - g) ** 2))
    return {"rmse": rmse, "absrel": np.mean(np.abs(a - g) / g), "delta1": np.mean(ratio < 1.25),
            "delta2": np.mean(ratio < 1.5625), "delta3": np.mean(ratio < 1.953125),
            "rmse_norm": rmse / (g.max() - g.min())}


def depth_case(rng, h=24, w=20, nan_pixels=0):
    gt = rng.uniform(2.0, 3.5, (h, w))
    mask = np.zeros((h, w), bool)
    mask[3:20, 4:16] = True
    gt[~mask] = 0.0
    rel = (gt - 2.0) / 1.5  # relative depth, then a wrong scale/shift and noise
    pred = (0.3 * rel + 7.0 + rng.normal(0, 0.02, gt.shape)).astype(np.float32)
    ys, xs = np.nonzero(mask)
    pick = rng.choice(len(ys), nan_pixels, replace=False)
    pred[ys[pick[: nan_pixels // 2]], xs[pick[: nan_pixels // 2]]] = np.nan
    pred[ys[pick[nan_pixels // 2:]], xs[pick[nan_pixels // 2:]]] = np.inf
    return pred, gt.astype(np.float32), mask


@pytest.mark.parametrize("align", ["lstsq", "minmax", "none"])
@pytest.mark.parametrize("nan_pixels", [0, 6])
def test_depth_matches_reference(align, nan_pixels):
    rng = np.random.default_rng(2)
    pred, gt, mask = depth_case(rng, nan_pixels=nan_pixels)
    out = depth_metrics(pred, gt, mask, align=align)
    ref = depth_reference(pred, gt, mask, align)
    for key, v in ref.items():
        assert out[key] == pytest.approx(v, rel=1e-9, abs=1e-12), key
    assert out["nonfinite_pred"] == nan_pixels and out["num_pixels"] == mask.sum()
    if align != "none":
        assert 0.9 < out["delta1"] <= 1.0 - nan_pixels / mask.sum() + 1e-12  # NaN pixels fail every threshold
    # without a mask, the GT's zero pixels are the background: same numbers
    assert depth_metrics(pred, gt, None, align=align)["rmse"] == pytest.approx(out["rmse"], rel=1e-12)


def test_fit_scale_shift_and_align():
    rng = np.random.default_rng(3)
    pred = rng.normal(size=(10, 12))
    gt = 2.5 * pred - 1.0
    s, t = fit_scale_shift(pred, gt)
    assert (s, t) == (pytest.approx(2.5), pytest.approx(-1.0))
    np.testing.assert_allclose(align_depth(pred, gt, None, "lstsq"), gt, atol=1e-12)
    # min-max: both normalized over the mask, prediction mapped onto the GT range
    mask = np.ones_like(gt, bool)
    a = align_depth(pred, gt, mask, "minmax")
    np.testing.assert_allclose((a - gt.min()) / np.ptp(gt), (pred - pred.min()) / np.ptp(pred), atol=1e-12)
    assert fit_scale_shift(np.ones((3, 3)), np.arange(9.0).reshape(3, 3)) == (0.0, 4.0)  # constant prediction
    with pytest.raises(ValueError, match="alignment"):
        align_depth(pred, gt, mask, "median")


def test_depth_accumulator_averages_per_image_and_skips_empty_images():
    rng = np.random.default_rng(4)
    acc, other = DepthAccumulator("lstsq"), DepthAccumulator("lstsq")
    refs = []
    for i, (h, w) in enumerate([(24, 20), (30, 26), (16, 40)]):
        pred, gt, mask = depth_case(rng, h, w, nan_pixels=2 * i)
        (acc if i < 2 else other).update(pred, gt, mask)
        refs.append(depth_reference(pred, gt, mask, "lstsq"))
    other.update(np.ones((8, 8)), np.zeros((8, 8)))  # an all-background image
    out = acc.merge(other).compute()
    for key in refs[0]:
        assert out[key] == pytest.approx(np.mean([r[key] for r in refs]), rel=1e-9), key
    assert out["num_images"] == 4 and out["empty_images"] == 1 and out["nonfinite_pred"] == 6


# ---------------------------------------------------------------------------------------------------------- normals


def angle_reference(pred, gt):
    """arccos of the normalized dot product, float64; 180 deg for unusable predictions."""
    with np.errstate(invalid="ignore", divide="ignore"):
        pn = pred / np.linalg.norm(pred, axis=-1, keepdims=True)
    gn = gt / np.linalg.norm(gt, axis=-1, keepdims=True)
    ang = np.degrees(np.arccos(np.clip(np.sum(pn * gn, -1), -1.0, 1.0)))
    return np.where(np.isfinite(pred).all(-1) & (np.linalg.norm(np.nan_to_num(pred), axis=-1) > 0), ang, 180.0)


def normal_case(rng, h, w, spread=0.3):
    gt = rng.normal(size=(h, w, 3))
    gt /= np.linalg.norm(gt, axis=-1, keepdims=True)
    pred = (gt + rng.normal(0, spread, gt.shape)) * rng.uniform(0.5, 2.0, (h, w, 1))  # not unit length
    mask = rng.random((h, w)) < 0.7
    gt[~mask] = 0.0
    return pred.astype(np.float32), gt.astype(np.float32), mask


def test_normals_match_reference_pooled_over_images():
    rng = np.random.default_rng(5)
    parts = [NormalAccumulator(), NormalAccumulator()]  # two workers, merged below
    errors = []
    for i, (h, w) in enumerate([(21, 17), (33, 9), (15, 15)]):
        pred, gt, mask = normal_case(rng, h, w)
        if i == 1:
            pred[0, 0] = np.nan  # kept and scored 180
            pred[1, 1] = 0.0
            mask[:2, :2] = True
            gt[:2, :2] = (0.0, 0.0, 1.0)
        parts[i % 2].update(pred, gt, mask)
        errors.append(angle_reference(pred[mask].astype(np.float64), gt[mask].astype(np.float64)))
    err = np.concatenate(errors)
    out = parts[0].merge(parts[1]).compute()
    assert out["num_pixels"] == err.size and out["nonfinite_pred"] == 1 and out["zero_pred"] == 1
    assert out["mean"] == pytest.approx(err.mean(), rel=1e-6)  # float32 inputs; arccos vs atan2
    for t in (11.25, 22.5, 30.0):
        assert out[f"within_{t:g}"] == pytest.approx(np.mean(err < t), abs=1.5 / err.size)
    lower_median = np.sort(err)[(err.size + 1) // 2 - 1]
    assert abs(out["median"] - lower_median) <= 0.01 + 1e-9
    assert out["median"] == pytest.approx(np.median(err), abs=0.5)


def test_normal_metrics_single_image_known_angles():
    # every pixel rotated by exactly 10 degrees about x: mean = median = 10, all within 11.25
    h, w = 6, 5
    gt = np.zeros((h, w, 3))
    gt[..., 2] = 1.0
    pred = np.zeros((h, w, 3))
    pred[..., 1], pred[..., 2] = np.sin(np.radians(10)), np.cos(np.radians(10))
    out = normal_metrics(pred, gt)
    assert out["mean"] == pytest.approx(10.0, abs=1e-9) and abs(out["median"] - 10.0) <= 0.01
    assert out["within_11.25"] == 1.0
    # background (all-zero GT) is excluded by default; NaN predictions are counted, not dropped
    gt[0] = 0.0
    pred[1, 0] = np.nan
    out = normal_metrics(pred, gt)
    assert out["num_pixels"] == (h - 1) * w and out["nonfinite_pred"] == 1
    assert out["mean"] == pytest.approx((10.0 * ((h - 1) * w - 1) + 180.0) / ((h - 1) * w))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        normal_metrics(pred[..., :2], gt[..., :2])


@pytest.mark.parametrize("c", [0.1, 0.7])
def test_a_constant_prediction_fits_no_scale(c):
    """0.1 and 0.7 are not exact binary fractions: the mean of [c, c, c] differs from c by rounding, which must not be
    read as a spread. The best constant is then mean(gt) = 7/3, and the RMSE is the GT's standard deviation."""
    gt = np.array([[1.0, 2.0, 4.0]])
    assert fit_scale_shift(np.full((1, 3), c), gt) == (0.0, pytest.approx(7 / 3, abs=1e-15))
    rmse = depth_metrics(np.full((1, 3), c), gt)["rmse"]
    assert rmse == pytest.approx(math.sqrt(((4 / 3) ** 2 + (1 / 3) ** 2 + (5 / 3) ** 2) / 3), rel=1e-12)


def test_label_pngs_are_read_as_class_ids(tmp_path):
    """Palette PNGs give their indices (not the colours), grey pixels saved as RGB their value, colours an error."""
    from PIL import Image

    from opensapiens.evaluation.utils import read_label_png

    ids = np.array([[0, 1, 2], [3, 4, 27]], np.uint8)
    im = Image.fromarray(ids, mode="P")
    im.putpalette([(7 * i + 50) % 256 for i in range(768)])
    im.save(tmp_path / "p.png")
    Image.fromarray(np.repeat(ids[..., None], 3, -1)).save(tmp_path / "grey.png")
    colour = np.repeat(ids[..., None], 3, -1)
    colour[0, 1] = (255, 218, 0)
    Image.fromarray(colour).save(tmp_path / "colour.png")
    np.testing.assert_array_equal(read_label_png(tmp_path / "p.png"), ids)
    np.testing.assert_array_equal(read_label_png(tmp_path / "grey.png"), ids)
    with pytest.raises(ValueError, match="colour.png: a colour label PNG"):
        read_label_png(tmp_path / "colour.png")


def test_a_class_list_json_gives_its_names_as_training_reads_them(tmp_path):
    from opensapiens.data.labels import load_classes
    from opensapiens.evaluation.runner import resolve_classes

    spec = tmp_path / "classes.json"
    spec.write_text('{"names": ["background", "person", "dog"], "class_weight": [0.5, 1, 1]}')
    assert resolve_classes(str(spec)) == ("background", "person", "dog") == load_classes(str(spec)).names
    listing = tmp_path / "classes.txt"
    listing.write_text("a\nb\n\n")
    assert resolve_classes(str(listing)) == ("a", "b")
