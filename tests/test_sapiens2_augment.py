"""Sapiens2's training pipelines (seg, normal, pointmap, pose), each step checked against what the picture shows,
a closed form or a float64 statement in the test, not against our code's own arithmetic."""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import replace

import cv2
import numpy as np
import pytest
import torch
from test_data_toy import CLASSES, write_toy_dataset

from opensapiens.data import AUGMENT, AUGMENT2, DataError, DenseDataset, SampleKey, build_dataset, load_classes
from opensapiens.data.datasets import MAX_REJECTED
from opensapiens.data.sapiens2_transforms import (
    NORMAL2,
    Fit2Augment,
    Seg2Augment,
    continuous_crop,
    down_up_sample,
    fit_background,
    gaussian_blur,
    gaussian_noise,
    reinhard_transfer,
    solarize,
)
from opensapiens.io import save_npy, save_png
from opensapiens.tasks import build_criterion

SIZE = (128, 96)
QUIET = dict(blur_prob=0.0, noise_prob=0.0, photometric=False)  # geometry alone


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return write_toy_dataset(tmp_path_factory.mktemp("toy2"), 8, SIZE, seed=5)


def _write_seg(root, labels: list[np.ndarray], colours: dict[int, tuple[int, int, int]]):
    for i, lab in enumerate(labels):
        img = np.zeros((*lab.shape, 3), np.uint8)
        for c, col in colours.items():
            img[lab == c] = col
        save_png(root / "images" / f"s{i}.png", img)
        save_png(root / "seg" / f"s{i}.png", lab)
    return root


def _halves(hw=(60, 50), boundary=20) -> np.ndarray:
    lab = np.ones(hw, np.uint8)
    lab[:, boundary:] = 2
    return lab


# ---------------------------------------------------------------------------------------------------------- seg


@pytest.mark.parametrize("r", [0.5, 1.7])
def test_seg_without_a_crop_stretches_the_whole_image_to_the_input(tmp_path, r):
    """Not cropped (p 0.7 officially), a sample is the whole picture at any r, stretched: a class boundary at 20 of 50
    columns lands at 20/50 of the input's width, and every row and column of the picture is in it."""
    root = _write_seg(tmp_path, [_halves()], {1: (250, 0, 0), 2: (0, 0, 250)})
    aug = Seg2Augment(ratio_range=(r, r), crop_prob=0.0, rotate_prob=0.0, flip_prob=0.0, **QUIET)
    ds = DenseDataset(root, "seg", SIZE, aug, load_classes("goliath"))
    s = ds.load(0, np.random.default_rng(0))
    lab, img = s["labels"], s["image"]
    assert lab.shape == SIZE and img.shape == (*SIZE, 3)
    assert set(np.unique(lab)) == {1, 2}  # no padding, no background: the picture fills the input
    edge = np.argmax(lab == 2, axis=1)  # first column of class 2, per row
    assert np.all(np.abs(edge - 20 / 50 * SIZE[1]) <= 2.0)  # (cv2's nearest rounds down, twice)
    inner = (lab == 1) & (np.abs(np.arange(SIZE[1]) - edge[:, None]) > 3)
    assert np.all(img[inner][:, 0] > 200) and np.all(img[(lab == 2) & (np.arange(SIZE[1]) > edge[:, None] + 3)][:, 2]
                                                       > 200)  # the pixels follow their labels


def test_seg_crop_pads_small_images_with_ignore_labels_and_black(tmp_path):
    """r = 0.5 and a crop: the resized picture is half the input, placed top-left; the rest is padding, labelled
    ignore (255) and black, its size what the keep-ratio resize into half the input leaves."""
    root = _write_seg(tmp_path, [_halves((64, 48))], {1: (250, 0, 0), 2: (0, 0, 250)})
    aug = Seg2Augment(ratio_range=(0.5, 0.5), crop_prob=1.0, rotate_prob=0.0, flip_prob=0.0, **QUIET)
    s = DenseDataset(root, "seg", SIZE, aug, load_classes("goliath")).load(0, np.random.default_rng(1))
    lab, img = s["labels"], s["image"]
    content = lab != 255
    rows, cols = np.nonzero(content)
    assert rows.min() == 0 and cols.min() == 0  # top-left, padding below and right
    assert (rows.max() + 1, cols.max() + 1) == (64, 48)  # 64 x 48 fits 64 x 48 (half of 128 x 96) exactly
    assert np.all(img[~content] == 0) and np.all(lab[~content] == 255)


def test_seg_rotation_fills_the_corners_with_background_not_ignore(tmp_path):
    lab = np.full(SIZE, 5, np.uint8)
    root = _write_seg(tmp_path, [lab], {5: (90, 160, 30)})
    aug = Seg2Augment(ratio_range=(1.0, 1.0), crop_prob=0.0, rotate_prob=1.0, flip_prob=0.0, **QUIET)
    ds = DenseDataset(root, "seg", SIZE, aug, load_classes("goliath"))
    corners_background = 0
    for seed in range(12):
        out = ds.load(0, np.random.default_rng(seed))["labels"]
        assert set(np.unique(out)) <= {0, 5}
        corners_background += all(out[y, x] == 0 for y in (0, -1) for x in (0, -1))
    assert corners_background >= 10  # every turn but one of under ~2 degrees uncovers the four corners


def test_seg_flip_swaps_sides_and_keeps_pixels_on_their_labels(toy):
    aug = Seg2Augment(rotate_degree=25.0, **QUIET)
    ds = DenseDataset(toy, "seg", SIZE, aug, load_classes(toy / "classes.json"))
    seen = 0
    for i in range(24):
        s = ds[SampleKey(i % len(ds), seed=i)]
        img, lab = s["image"], s["labels"]
        core = lab.copy()
        for c in (2, 3):  # interior pixels only: resampled edges blend with neighbours
            m = lab == c
            core[m & ~(np.roll(m, 2, 0) & np.roll(m, -2, 0) & np.roll(m, 2, 1) & np.roll(m, -2, 1))] = 0
        left, right = np.nonzero(core == 2), np.nonzero(core == 3)
        if len(left[0]) > 20 and len(right[0]) > 20:
            seen += 1
            for c in (2, 3):
                assert (np.abs(img[core == c].astype(int) - (60, 190, 70)).max(1) < 60).mean() > 0.85
            assert left[1].mean() > right[1].mean()  # the person's left arm on the image's right, flipped or not
    assert seen >= 8


def test_seg_samples_with_under_one_percent_foreground_are_replaced(tmp_path):
    """Sapiens2 drops a sample with < 1 % foreground (not 0, not ignore) and takes another at random; a dataset
    where every sample breaks the rule stops with an error naming it."""
    tiny = np.zeros(SIZE, np.uint8)
    tiny[:5, :10] = 1  # 0.4 % of the picture
    good = np.zeros(SIZE, np.uint8)
    good[30:90, 20:70] = 1
    root = _write_seg(tmp_path / "mixed", [tiny, good], {1: (200, 0, 0)})
    aug = Seg2Augment(ratio_range=(1.0, 1.0), crop_prob=0.0, rotate_prob=0.0, flip_prob=0.0, **QUIET)
    ds = DenseDataset(root, "seg", SIZE, aug, load_classes("goliath"))
    for seed in range(6):
        s = ds[SampleKey(0, seed=seed)]
        assert bool(s["stand_in"]) and ((s["labels"] > 0) & (s["labels"] != 255)).mean() >= 0.01
    assert not ds[SampleKey(1, seed=0)]["stand_in"]
    assert ds[SampleKey(0)]["labels"].sum() > 0  # validation keeps every sample
    empty = DenseDataset(_write_seg(tmp_path / "empty", [tiny, tiny], {1: (200, 0, 0)}), "seg", SIZE, aug,
                         load_classes("goliath"))
    with pytest.raises(DataError, match=rf"{MAX_REJECTED} samples in a row .*foreground 0\.\d+% of the input"):
        empty[SampleKey(0, seed=0)]


def test_seg_steps_resample_rotate_both_ways_flip_and_redraw_crops_as_the_official_pipeline(tmp_path):
    """The resizes' interpolation (area when shrinking, bicubic when enlarging), turns of both signs, a flip that
    moves and swaps the sides' classes, and the crop redrawn while one class fills it (and a sample whose only
    foreground is ignore labels dropped)."""
    from opensapiens.data.sapiens2_transforms import SampleRejected, check_foreground
    from opensapiens.inference.transforms import cv2_area_cubic as resize_image

    img = np.random.default_rng(0).integers(0, 255, (40, 30, 3), dtype=np.uint8)
    assert np.array_equal(resize_image(img, (20, 15)), cv2.resize(img, (15, 20), interpolation=cv2.INTER_AREA))
    assert np.array_equal(resize_image(img, (80, 60)), cv2.resize(img, (60, 80), interpolation=cv2.INTER_CUBIC))
    lab = np.zeros((64, 48), np.uint8)
    lab[:, :6] = 255
    lab[30:31, 20:21] = 1  # 1 px of foreground: 255 is not foreground
    with pytest.raises(SampleRejected):
        check_foreground(lab, 0.01)

    stripes = np.zeros(SIZE, np.uint8)
    stripes[:, :20] = 2  # the person's left arm class on the image's left
    stripes[60:, 40:] = 1
    root = _write_seg(tmp_path / "s", [stripes], {1: (200, 0, 0), 2: (0, 200, 0)})
    (tmp_path / "classes.json").write_text(json.dumps(CLASSES))  # arms 2 and 3 swap sides
    classes = load_classes(tmp_path / "classes.json")
    flip = Seg2Augment(ratio_range=(1.0, 1.0), crop_prob=0.0, rotate_prob=0.0, flip_prob=1.0, **QUIET)
    out = DenseDataset(root, "seg", SIZE, flip, classes).load(0, np.random.default_rng(0))["labels"]
    assert np.all(out[:, -20:] == 3) and not np.any(out == 2)  # mirrored to the right, and renamed

    turn = Seg2Augment(ratio_range=(1.0, 1.0), crop_prob=0.0, rotate_prob=1.0, flip_prob=0.0, **QUIET)
    ds = DenseDataset(root, "seg", SIZE, turn, classes)
    # a turn's sign: the left stripe's top edge moves right (clockwise) or left (counter-clockwise) of its bottom
    signs = set()
    for seed in range(12):
        m = ds.load(0, np.random.default_rng(seed))["labels"] == 2
        rows = np.nonzero(m.any(1))[0]
        top, bottom = np.nonzero(m[rows[5]])[0].mean(), np.nonzero(m[rows[-6]])[0].mean()
        signs.add(np.sign(top - bottom))
    assert signs >= {-1.0, 1.0}

    quarter = np.ones((256, 192), np.uint8)
    quarter[:128, :96] = 4  # a quarter of the picture: one window in four is class 4 alone, one class 1 alone
    root1 = _write_seg(tmp_path / "quarter", [quarter], {1: (200, 0, 0), 4: (0, 0, 200)})
    crop = dict(ratio_range=(2.0, 2.0), crop_prob=1.0, rotate_prob=0.0, flip_prob=0.0, **QUIET)

    def mixed(cat_max_ratio: float) -> int:  # windows with no class over 75 %, of 20
        ds = DenseDataset(root1, "seg", (64, 48), Seg2Augment(**crop, cat_max_ratio=cat_max_ratio), classes)
        shares = [np.bincount(ds.load(0, np.random.default_rng(s))["labels"].ravel()).max() / (64 * 48)
                  for s in range(20)]
        return sum(share < 0.75 for share in shares)

    assert mixed(0.75) >= 18 and mixed(1.0) <= 12  # redrawn until mixed (at most 11 draws), or the first draw


def test_colour_transfer_gives_the_foreground_the_backgrounds_lab_statistics():
    rng = np.random.default_rng(0)
    img = np.empty((80, 60, 3), np.uint8)
    fg = np.zeros((80, 60), bool)
    fg[20:60, 15:45] = True
    img[fg] = np.clip(rng.normal((170, 90, 60), (12, 8, 6), (fg.sum(), 3)), 0, 255)
    img[~fg] = np.clip(rng.normal((70, 110, 160), (20, 15, 10), ((~fg).sum(), 3)), 0, 255)
    out = reinhard_transfer(img, fg)
    assert np.array_equal(out[~fg], img[~fg])
    lab = cv2.cvtColor(out, cv2.COLOR_RGB2Lab).astype(np.float64)
    want = cv2.cvtColor(img, cv2.COLOR_RGB2Lab).astype(np.float64)[~fg]
    np.testing.assert_allclose(lab[fg].mean(0), want.mean(0), atol=1.5)  # (8-bit Lab and RGB round trips)
    np.testing.assert_allclose(lab[fg].std(0), want.std(0), rtol=0.15, atol=1.0)
    assert np.array_equal(reinhard_transfer(img, np.ones_like(fg)), img)  # no background to match: unchanged


def test_seg_backgrounds_fill_the_unlabelled_pixels_and_recolour_the_person(tmp_path):
    lab = np.zeros(SIZE, np.uint8)
    lab[30:100, 30:70] = 1
    root = _write_seg(tmp_path / "data", [lab], {1: (200, 40, 40)})  # a red person on black
    save_png(tmp_path / "bg" / "b.png", np.full((50, 80, 3), (40, 90, 220), np.uint8))  # a blue picture
    aug = Seg2Augment(background_prob=1.0, ratio_range=(1.0, 1.0), crop_prob=0.0, rotate_prob=0.0, flip_prob=0.0,
                      **QUIET)
    ds = DenseDataset(root, "seg", SIZE, aug, load_classes("goliath"), backgrounds=[tmp_path / "bg" / "b.png"])
    s = ds.load(0, np.random.default_rng(0))
    inner = np.zeros(SIZE, bool)
    inner[33:97, 33:67] = True
    assert np.abs(s["image"][s["labels"] == 0].astype(int) - (40, 90, 220)).max() <= 2
    person = cv2.cvtColor(s["image"], cv2.COLOR_RGB2Lab)[inner].astype(float).mean(0)
    blue = cv2.cvtColor(np.full((1, 1, 3), (40, 90, 220), np.uint8), cv2.COLOR_RGB2Lab)[0, 0].astype(float)
    np.testing.assert_allclose(person, blue, atol=3)  # one colour each side: the person takes the background's


def test_the_background_keeps_its_aspect_and_gives_its_middle():
    bg = np.zeros((100, 400, 3), np.uint8)
    bg[..., 0] = np.linspace(0, 255, 400)[None]  # red encodes the column
    out = fit_background(bg, (50, 60))
    assert out.shape == (50, 60, 3)
    # at height 50 the picture is 200 wide; its middle 60 columns are 70..129, i.e. source columns 140..259
    np.testing.assert_allclose(out[25, :, 0], np.linspace(0, 255, 400)[141:261:2], atol=2.0)


# --------------------------------------------------------------------------------------------------- pixel steps


def test_gaussian_noise_has_a_variance_in_range_and_the_official_truncation():
    img = np.full((200, 200, 3), 128, np.uint8)
    for seed in range(4):
        diff = gaussian_noise(img, np.random.default_rng(seed), 1.0, (5.0, 20.0)).astype(np.float64) - 128
        assert 5.0 * 0.95 < diff.var() < 20.0 * 1.05
        assert diff.mean() == pytest.approx(-0.5, abs=0.08)  # float -> uint8 rounds down: half a level
    assert gaussian_noise(img, np.random.default_rng(0), 0.0, (5.0, 20.0)) is img


def test_solarize_inverts_values_above_the_threshold():
    v = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, -1)
    out = solarize(v, np.random.default_rng(0), 1.0, 128)
    want = np.where(np.arange(256) > 128, 255 - np.arange(256), np.arange(256)).reshape(16, 16, 1)
    assert np.array_equal(out, np.broadcast_to(want, out.shape))


def test_gaussian_blur_is_a_3x3_gaussian_with_sigma_in_range():
    img = np.zeros((9, 9, 3), np.uint8)
    img[4, 4] = 250
    for seed in range(6):
        out = gaussian_blur(img, np.random.default_rng(seed), 1.0, (0.1, 2.0)).astype(np.float64)[..., 0]
        assert np.count_nonzero(out[np.abs(np.arange(9) - 4)[:, None].repeat(9, 1) > 1]) == 0
        k = out[3:6, 3:6] / out[3:6, 3:6].sum()
        a = (k[1, 0] + k[1, 2] + k[0, 1] + k[2, 1]) / 4 / k[1, 1]  # side / centre = exp(-1 / (2 sigma^2))
        sigma = math.sqrt(-1 / (2 * math.log(a))) if a > 0 else 0.0
        assert 0.1 - 0.05 <= sigma <= 2.0 + 0.15  # (uint8 rounding of the taps)
        np.testing.assert_allclose(k, k.T, atol=0.01)


def test_down_up_keeps_size_and_constants_and_degrades_texture():
    flat = np.full((40, 30, 3), 77, np.uint8)
    assert np.array_equal(down_up_sample(flat, np.random.default_rng(0), 1.0, (0.1, 0.7)), flat)
    checker = ((np.indices((40, 30)).sum(0) % 2) * 255).astype(np.uint8)[..., None].repeat(3, -1)
    changed = sum(not np.array_equal(down_up_sample(checker, np.random.default_rng(s), 1.0, (0.1, 0.7)), checker)
                  for s in range(10))
    assert changed == 10


def test_continuous_crops_have_the_drawn_aspect_and_area_inside_the_image():
    rng = np.random.default_rng(0)
    boxes = [continuous_crop((300, 200), rng, NORMAL2) for _ in range(400)]
    # one draw fits with probability p (here by Monte Carlo in float64); none of 8 with (1 - p)^8
    a, area = np.random.default_rng(1).uniform(0.5, 2.0, 10**6), np.random.default_rng(2).uniform(0.4, 1.0, 10**6)
    fits = (np.sqrt(area * 6e4 * a) <= 200) & (np.sqrt(area * 6e4 / a) <= 300)
    want = 400 * (1 - fits.mean()) ** 8
    assert abs(sum(b is None for b in boxes) - want) < 4 * math.sqrt(want) + 1
    for y0, x0, h, w in filter(None, boxes):
        assert y0 >= 0 and y0 + h <= 300 and x0 >= 0 and x0 + w <= 200
        assert 0.5 - 0.02 <= w / h <= 2.0 + 0.02 and 0.4 - 0.01 <= h * w / 60000 <= 1.0
    assert continuous_crop((10, 1000), rng, NORMAL2) is None  # 40 % of it at aspect <= 2 never fits


# ------------------------------------------------------------------------------------------------ normal, pose


def _write_normals(root, share: float, n: int = 2):
    H, W = SIZE
    for i in range(n):
        normals = np.zeros((H, W, 3), np.float32)
        normals[..., 0] = 0.6  # a surface turned to the image's right: a mirror turns it left
        normals[..., 2] = -0.8
        mask = np.zeros((H, W), np.uint8)
        mask[: int(round(H * share))] = 1
        img = np.full((H, W, 3), 100, np.uint8)
        save_png(root / "images" / f"n{i}.png", img)
        save_png(root / "masks" / f"n{i}.png", mask)
        save_npy(root / "normals" / f"n{i}.npy", normals)
    return root


@pytest.mark.parametrize("task", ["normal", "pointmap"])
def test_the_image_stays_on_its_targets_through_scale_crop_and_mirror(tmp_path, task):
    """A picture that is its mask (white on black): after Sapiens2's random scale (a resampling of the image alone),
    crop, mirror and fit, the white pixels are the mask's."""
    H, W = 90, 70
    yy, xx = np.mgrid[:H, :W]
    mask = ((yy - 40) ** 2 / 900 + (xx - 25) ** 2 / 300 <= 1).astype(np.uint8)  # off-centre: a mirror shows
    save_png(tmp_path / "images" / "a.png", np.repeat(mask[..., None] * 255, 3, -1).astype(np.uint8))
    save_png(tmp_path / "masks" / "a.png", mask)
    if task == "normal":
        save_npy(tmp_path / "normals" / "a.npy", np.dstack([np.zeros((H, W, 2)), -np.ones((H, W))]).astype(np.float32))
    else:
        save_npy(tmp_path / "depths" / "a.npy", (2.0 * mask).astype(np.float32))
        (tmp_path / "camera_intrinsics").mkdir()
        np.savetxt(tmp_path / "camera_intrinsics" / "a.txt", [[80.0, 0, 34.5], [0, 80.0, 44.5], [0, 0, 1]])
    aug = Fit2Augment(scale_prob=1.0, scale_range=(0.5, 2.0), crop_prob=1.0, flip_prob=0.5, photometric=False)
    ds = DenseDataset(tmp_path, task, (64, 48), aug)
    for seed in range(12):
        s = ds.load(0, np.random.default_rng(seed))
        white, m = s["image"][..., 0] > 127, s["mask"] > 0
        assert m.sum() > 30 and (white & m).sum() / (white | m).sum() > 0.85


def test_normal_flips_negate_x_and_masks_outside_16_px_to_96_percent_are_replaced(tmp_path):
    root = _write_normals(tmp_path / "ok", 0.5)
    aug = Fit2Augment(flip_prob=1.0, scale_prob=0.0, crop_prob=0.0, photometric=False, mask_rule=True)
    for flip, sign in ((1.0, -1), (0.0, 1)):
        s = DenseDataset(root, "normal", (64, 48), replace(aug, flip_prob=flip)).load(0, np.random.default_rng(0))
        n, m = s["normals"], s["mask"] > 0
        assert m.sum() > 500 and np.all(np.sign(n[m][:, 0]) == sign) and np.all(n[m][:, 2] == np.float32(-0.8))
    full = DenseDataset(_write_normals(tmp_path / "full", 1.0), "normal", (64, 48), aug)
    with pytest.raises(DataError, match=r"mask of 3072 pixels \(100\.0% of the input\), outside Sapiens2's 16"):
        full[SampleKey(0, seed=0)]


def test_pointmap_samples_the_official_loader_drops_are_replaced(tmp_path):
    """Sapiens2's pointmap rule in the loader: a mask of 16 pixels to 96 % and the nearest canonical depth
    (768 / f x Z) at least 4 cm; the others are replaced, and all-failing data stops with the rule named."""
    H, W = 40, 30
    for name, share, z in (("full", 1.0, 2.0), ("near", 0.5, 0.002), ("ok", 0.5, 2.0)):
        mask = np.zeros((H, W), np.uint8)
        mask[: int(H * share)] = 1
        save_png(tmp_path / name / "images" / "a.png", np.full((H, W, 3), 90, np.uint8))
        save_png(tmp_path / name / "masks" / "a.png", mask)
        save_npy(tmp_path / name / "depths" / "a.npy", np.where(mask, z, 0).astype(np.float32))
        (tmp_path / name / "camera_intrinsics").mkdir()
        np.savetxt(tmp_path / name / "camera_intrinsics" / "a.txt", [[60.0, 0, 14.5], [0, 60.0, 19.5], [0, 0, 1]])
    quiet = Fit2Augment(scale_prob=0.0, crop_prob=0.0, photometric=False)
    ok = DenseDataset(tmp_path / "ok", "pointmap", (40, 30), quiet)[SampleKey(0, seed=0)]
    assert ok["mask"].mean() == pytest.approx(0.5)
    with pytest.raises(DataError, match=r"mask of 1200 pixels \(100\.0% of the input\)"):
        DenseDataset(tmp_path / "full", "pointmap", (40, 30), quiet)[SampleKey(0, seed=0)]
    with pytest.raises(DataError, match=r"nearest canonical depth 0\.026, outside"):  # 768 / 60 x 0.002
        DenseDataset(tmp_path / "near", "pointmap", (40, 30), quiet)[SampleKey(0, seed=0)]
    assert DenseDataset(tmp_path / "full", "pointmap", (40, 30), None)[0]["mask"].all()  # validation keeps it


def test_sapiens2_normal_validation_is_the_centred_fit_predict_uses(tmp_path):
    from opensapiens.inference.transforms import MEAN, STD, Preprocessor
    from opensapiens.io import read_image

    root = _write_normals(tmp_path, 0.5, n=1)
    rng = np.random.default_rng(0)
    save_png(root / "images" / "n0.png", rng.integers(0, 255, (*SIZE, 3), dtype=np.uint8))
    val = build_dataset("normal", root, train=False, input_size=(64, 64), generation=2)[0]
    x, metas = Preprocessor((64, 64), resize="center")([read_image(root / "images" / "n0.png")])
    seen = (x[0].permute(1, 2, 0) * torch.tensor(STD) + torch.tensor(MEAN)).numpy()
    assert np.abs(seen - val["image"]).max() <= 1.01
    top, left, bottom, right = metas[0].pad
    assert left + right == 16 and not val["mask"][:, :left].any() and not val["mask"][:, 64 - right:].any()
    v1 = build_dataset("normal", root, train=False, input_size=(64, 64))[0]
    assert v1["mask"][:, :left].any()  # Sapiens's validation stretches


@pytest.mark.parametrize("generation", [1, 2])
def test_seg_validation_is_the_resize_its_predictor_does(tmp_path, generation):
    """Sapiens2: OpenCV's area / bicubic resize (its seg predictor's, as its official code); Sapiens: bilinear."""
    from opensapiens.inference.transforms import MEAN, STD, Preprocessor

    rng = np.random.default_rng(1)
    for i, shape in enumerate([(300, 200), (50, 60)]):  # one shrunk, one enlarged
        save_png(tmp_path / "images" / f"v{i}.png", rng.integers(0, 255, (*shape, 3), dtype=np.uint8))
        save_png(tmp_path / "seg" / f"v{i}.png", np.ones(shape, np.uint8))
    ds = build_dataset("seg", tmp_path, train=False, input_size=(128, 96), generation=generation)
    pre = Preprocessor((128, 96), interpolation="area-cubic" if generation == 2 else "bilinear")
    for i in range(2):
        from opensapiens.io import read_image

        x, _ = pre([read_image(ds.samples[i][0])])
        seen = (x[0].permute(1, 2, 0) * torch.tensor(STD) + torch.tensor(MEAN)).numpy()
        assert np.abs(seen - ds[i]["image"]).max() <= 1.01


def test_sapiens2_pose_weights_only_keypoints_inside_the_crop():
    kp = torch.tensor([[[10.0, 10.0], [-0.5, 10.0], [47.9, 63.9], [48.0, 5.0], [5.0, 64.0]]])  # (1, 5, 2) in 64 x 48
    batch = {"image": torch.zeros(1, 3, 64, 48), "keypoints": kp, "visible": torch.ones(1, 5)}
    _, w2 = build_criterion("pose", generation=2, sigma=2.0).targets(batch, (16, 12))
    _, w1 = build_criterion("pose", generation=1, sigma=2.0).targets(batch, (16, 12))
    assert w2.tolist() == [[1.0, 0.0, 1.0, 0.0, 0.0]]
    assert w1.tolist() == [[1.0] * 5]  # v1: until the Gaussian leaves the heatmap


def test_pose_photometric_distortion_runs_with_its_probability(toy):
    from opensapiens.data import KeypointDataset, PoseAugment, load_keypoint_layout

    layout = load_keypoint_layout(toy / "keypoints.json")
    quiet = PoseAugment(blur_prob=0, median_blur_prob=0, dropout_prob=0)

    def distorted(aug: PoseAugment, seeds=range(40)) -> int:
        ds = KeypointDataset(toy / "annotations.json", layout, input_size=SIZE, augment=aug)
        bare = KeypointDataset(toy / "annotations.json", layout, input_size=SIZE, augment=replace(aug, photometric=0))
        return sum(not np.array_equal(ds.load(0, np.random.default_rng(s))["image"],
                                      bare.load(0, np.random.default_rng(s))["image"]) for s in seeds)

    assert distorted(replace(quiet, photometric_prob=0.0)) == 0
    always = distorted(quiet)
    assert always >= 34  # each of its steps runs at p 0.5: a sample escapes all four at 1/16
    assert 0.25 * always < distorted(replace(quiet, photometric_prob=0.5)) < 0.75 * always  # ~half, binomially


def test_a_skipped_file_and_dropped_samples_are_told_apart(tmp_path):
    """A refetch that lands on an unreadable file again does not make "no readable sample" of readable ones."""
    tiny = np.zeros(SIZE, np.uint8)
    tiny[:2, :2] = 1
    root = _write_seg(tmp_path, [tiny, tiny, tiny], {1: (200, 0, 0)})
    (root / "images" / "s2.png").write_bytes(b"not a png")
    aug = Seg2Augment(ratio_range=(1.0, 1.0), crop_prob=0.0, rotate_prob=0.0, flip_prob=0.0, **QUIET)
    ds = DenseDataset(root, "seg", SIZE, aug, load_classes("goliath"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DataError, match="samples in a row were dropped"):
            ds[SampleKey(0, seed=3)]


def test_the_recipes_by_generation(toy, tmp_path):
    seg2 = build_dataset("seg", toy, train=True, input_size=SIZE, classes=str(toy / "classes.json"), generation=2)
    assert seg2.augment == Seg2Augment() and seg2.augment == AUGMENT2["seg"]
    assert build_dataset("normal", toy, train=True, input_size=SIZE, generation=2).augment == NORMAL2
    assert build_dataset("normal", toy, train=True, input_size=SIZE).augment == AUGMENT["normal"]
    assert AUGMENT2["pose"].photometric_prob == 0.8 and AUGMENT["pose"].photometric_prob == 1.0
    with pytest.raises(ValueError, match="Sapiens2 normal recipe pastes no backgrounds"):
        build_dataset("normal", toy, train=True, input_size=SIZE, generation=2, backgrounds=str(tmp_path))
    with pytest.raises(ValueError, match="no Sapiens2 depth recipe"):
        build_dataset("depth", toy, train=False, input_size=SIZE, generation=2)
    assert DenseDataset(toy, "normal", SIZE, NORMAL2).centred  # its validation: the fit it trains with
    for generation in (1, 2):  # Sapiens2's pose crops: bicubic where they magnify (crop_people's test)
        pose = build_dataset("pose", toy / "annotations.json", train=False, input_size=SIZE,
                             keypoints=str(toy / "keypoints.json"), generation=generation)
        assert pose.cubic_enlarging == (generation == 2)
