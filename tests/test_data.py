"""Datasets, augmentations and samplers: geometry checked against what the picture shows, not against our code."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from test_data_toy import write_toy_dataset

from opensapiens.data import (
    DataError,
    DenseAugment,
    DenseDataset,
    EvalSampler,
    KeypointDataset,
    PoseAugment,
    SampleKey,
    TrainSampler,
    build_dataset,
    load_classes,
    load_keypoint_layout,
)
from opensapiens.data.transforms import photometric_distortion

SIZE = (128, 96)
GREEN = np.array([60, 190, 70])  # arms
SKIN = np.array([230, 190, 150])  # head


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return write_toy_dataset(tmp_path_factory.mktemp("toy"), 12, SIZE, seed=3)


def _colour_near(image: np.ndarray, where: np.ndarray, colour: np.ndarray) -> float:
    """Fraction of the pixels in ``where`` whose colour is within 45 of ``colour`` (the toy noise is 10)."""
    return float((np.abs(image[where].astype(int) - colour).max(1) < 45).mean())


def test_seg_augmentation_keeps_image_and_labels_aligned_and_swaps_sides(toy):
    aug = DenseAugment(ratio_range=(0.7, 1.3), cat_max_ratio=0.75, rotate_degree=30, photometric=False)
    ds = DenseDataset(toy, "seg", SIZE, aug, load_classes(toy / "classes.json"))
    flips = 0
    for i in range(24):
        s = ds[SampleKey(i % len(ds), seed=i)]
        img, lab = s["image"], s["labels"]
        assert img.shape == (*SIZE, 3) and img.dtype == np.uint8 and lab.shape == SIZE
        core = lab.copy()
        for c in (2, 3):  # interior pixels only: bilinear image edges blend with neighbours
            m = lab == c
            inner = m & np.roll(m, 1, 0) & np.roll(m, -1, 0) & np.roll(m, 1, 1) & np.roll(m, -1, 1)
            core[m & ~inner] = 0
        left, right = np.nonzero(core == 2), np.nonzero(core == 3)
        if len(left[0]) > 20 and len(right[0]) > 20:
            assert _colour_near(img, core == 2, GREEN) > 0.9
            assert _colour_near(img, core == 3, GREEN) > 0.9
            # the person's left arm is on the image's right, flipped or not (rotation <= 30 degrees)
            assert left[1].mean() > right[1].mean()
        flips += int(np.abs(img.astype(int) - ds[SampleKey(i % len(ds), seed=i)]["image"]).max() == 0)
    assert flips == 24  # the same key gives the same sample


def test_normals_turn_with_the_flip(toy):
    ds = DenseDataset(toy, "normal", SIZE, DenseAugment(ratio_range=(0.8, 1.2), rotate_degree=0, photometric=False))
    for i in range(16):
        s = ds[SampleKey(i % len(ds), seed=100 + i)]
        n, m = s["normals"], s["mask"] > 0
        xs = np.nonzero(m)[1]
        pos, neg = m & (n[..., 0] > 0.3), m & (n[..., 0] < -0.3)
        assert xs.size > 0 and np.allclose(np.linalg.norm(n[m], axis=1), 1, atol=1e-5)
        # arms tilt outward (+X on the image right): a mirrored sample must negate X, not just move pixels
        if pos.sum() > 10 and neg.sum() > 10:
            assert np.nonzero(pos)[1].mean() > np.nonzero(neg)[1].mean()


def test_pose_crop_puts_keypoints_on_the_body_and_swaps_hands(toy):
    layout = load_keypoint_layout(toy / "keypoints.json")
    aug = PoseAugment(photometric=False, blur_prob=0, median_blur_prob=0, dropout_prob=0)
    ds = KeypointDataset(toy / "annotations.json", layout, input_size=SIZE, augment=aug)
    val = KeypointDataset(toy / "annotations.json", layout, input_size=SIZE)
    for i in range(24):
        s = ds[SampleKey(i % len(ds), seed=7 * i)]
        kp, img = s["keypoints"], s["image"]
        x, y = np.round(kp[0]).astype(int)
        if 2 <= x < SIZE[1] - 2 and 2 <= y < SIZE[0] - 2:  # head keypoint sits on skin
            assert _colour_near(img, np.s_[y - 1:y + 2, x - 1:x + 2], SKIN) > 0.5
        assert kp[1, 0] > kp[2, 0]  # left hand on the image right (rotations stay below 90 degrees)
        # the stored matrix maps the image's keypoints to the crop's
        raw = np.asarray(ds.instances[i % len(ds)][1])[:, :2]
        mapped = raw @ s["affine"][:, :2].T + s["affine"][:, 2]
        assert np.allclose(np.sort(mapped, axis=0), np.sort(kp, axis=0), atol=1e-3)
    v = val[0]
    assert np.allclose(v["image"], val[0]["image"]) and v["visible"].sum() == 5


def test_samplers_shard_one_global_stream_and_resume():
    one = TrainSampler(10, seed=5, start=0)
    stream = [k for _, k in zip(range(30), one)]
    assert sorted(k.index for k in stream[:10]) == list(range(10))  # an epoch visits every sample once
    assert [k.index for k in stream[:10]] != [k.index for k in stream[10:20]]  # and reshuffles
    ranks = [[k for _, k in zip(range(15), TrainSampler(10, seed=5, rank=r, world_size=2))] for r in (0, 1)]
    assert [k for pair in zip(*ranks) for k in pair] == stream  # interleaved ranks = the one-process stream
    resumed = [k for _, k in zip(range(12), TrainSampler(10, seed=5, start=18))]
    assert resumed == stream[18:30]
    shards = [list(EvalSampler(5, r, 2)) for r in (0, 1)]
    assert [len(s) for s in shards] == [3, 3]
    assert sorted(k.index for s in shards for k in s if k.valid) == list(range(5))


def test_photometric_distortion_is_seeded_and_bounded():
    img = np.random.default_rng(0).integers(0, 256, (16, 12, 3), dtype=np.uint8)
    a = photometric_distortion(img, np.random.default_rng(1))
    b = photometric_distortion(img, np.random.default_rng(1))
    assert a.dtype == np.uint8 and np.array_equal(a, b)
    changed = [not np.array_equal(photometric_distortion(img, np.random.default_rng(s)), img) for s in range(8)]
    assert sum(changed) >= 6


def test_bad_inputs_get_clear_errors_and_bad_files_are_skipped(toy, tmp_path):
    bad = tmp_path / "kp.json"
    bad.write_text(json.dumps({"names": ["a", "b"], "flip_pairs": [[0, 5]]}))
    with pytest.raises(DataError, match="flip pair"):
        load_keypoint_layout(bad)
    with pytest.raises(DataError, match="expected images/"):
        DenseDataset(tmp_path, "depth")
    for task in ("pose", "seg"):  # a mistyped --data names itself, whichever the task
        with pytest.raises(DataError, match=f"{tmp_path / 'missing'} does not exist"):
            build_dataset(task, tmp_path / "missing", train=True)
    # a label map with ids beyond the class list is reported and replaced by the next sample
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(toy, root)
    import cv2

    cv2.imwrite(str(root / "seg" / "00000.png"), np.full(SIZE, 9, np.uint8))
    ds = DenseDataset(root, "seg", SIZE, None, load_classes(root / "classes.json"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s = ds[0]
    assert s["labels"].max() < 5 and any("outside [0, 5)" in str(w.message) for w in caught)


def test_palette_seg_labels_give_their_indices(tmp_path):
    """A palette PNG stores class ids as indices into a colour table; the ids are the indices, as Pillow reads them."""
    from PIL import Image

    ids = np.tile(np.arange(6, dtype=np.uint8).repeat(4), (16, 1))  # (16, 24): six 4-px stripes
    im = Image.fromarray(ids, mode="P")
    im.putpalette([50, 50, 50, 255, 218, 0, 128, 200, 255, 200, 0, 0, 0, 200, 0, 0, 0, 200] + [0] * (250 * 3))
    (tmp_path / "images").mkdir()
    (tmp_path / "seg").mkdir()
    im.save(tmp_path / "seg" / "a.png")
    Image.fromarray(np.zeros((16, 24, 3), np.uint8)).save(tmp_path / "images" / "a.png")
    assert (np.asarray(Image.open(tmp_path / "seg" / "a.png")) == ids).all()  # what the file holds
    sample = DenseDataset(tmp_path, "seg", (16, 24))[0]
    np.testing.assert_array_equal(sample["labels"], ids)


def test_goliath_coco_files_read_their_308_keypoints(tmp_path):
    """The official Goliath files keep 17 body keypoints in ``keypoints`` (COCO-WholeBody style) and all 308 in
    ``goliath_wholebody_kpts``; training reads the 308 as evaluation does."""
    rng = np.random.default_rng(0)
    kp = np.c_[rng.uniform(50, 250, (308, 2)), rng.integers(0, 3, 308)].astype(np.float32)
    ann = {"id": 1, "image_id": 1, "bbox": [40, 40, 220, 300], "area": 66000, "iscrowd": 0, "category_id": 1,
           "keypoints": kp[:17].ravel().tolist(), "foot_kpts": [0.0] * 18, "face_kpts": [0.0] * 204,
           "lefthand_kpts": [0.0] * 63, "righthand_kpts": [0.0] * 63, "goliath_wholebody_kpts": kp.ravel().tolist()}
    (tmp_path / "annotations.json").write_text(json.dumps(
        {"images": [{"id": 1, "file_name": "a.jpg", "width": 300, "height": 400}], "annotations": [ann]}))
    ds = build_dataset("pose", tmp_path, train=False, keypoints="goliath")
    np.testing.assert_array_equal(ds.instances[0][1], kp)


def test_half_body_box_is_the_official_rule():
    """mmpose RandomHalfBody._get_half_body_bbox: centre = mean of the chosen keypoints, scale = their box x 1.5
    (aspect then fixed by widening the short side, as TopdownAffine does); a box flat in one direction is kept."""
    from opensapiens.data.transforms import half_body_box

    aug, upper, no_lower = PoseAugment(), np.arange(4), np.array([], int)
    kp = np.array([[0, 0], [0, 10], [0, 20], [100, 100]], float)
    c, s = half_body_box(kp, np.ones(4), upper, no_lower, aug, 0.75, np.random.default_rng(0))
    np.testing.assert_allclose(c, [25.0, 32.5])  # (0 + 0 + 0 + 100) / 4, (0 + 10 + 20 + 100) / 4
    np.testing.assert_allclose(s, [100 * 1.5, 100 * 1.5])  # their 100 x 100 box (pose_crop widens it last)
    kp = np.array([[5, 0], [5, 10], [5, 30], [0, 0]], float)  # the three labelled ones on a vertical line
    c, s = half_body_box(kp, np.array([1, 1, 1, 0]), upper, no_lower, aug, 0.75, np.random.default_rng(0))
    np.testing.assert_allclose(c, [5.0, 40 / 3])
    np.testing.assert_allclose(s, [0, 30 * 1.5])


def test_half_body_fires_for_a_custom_set_smaller_than_the_official_minimum_and_ids_are_range_checked(tmp_path):
    """The official RandomHalfBody needs 9 labelled keypoints; a 5-keypoint custom set with half-body ids declared
    needs all 5 (with 9 its half-body could never fire)."""
    from opensapiens.data.transforms import pose_crop

    spec = {"names": ["head", "l_hand", "r_hand", "l_foot", "r_foot"], "upper_body": [0, 1, 2], "lower_body": [3, 4]}
    (tmp_path / "five.json").write_text(json.dumps(spec))
    layout = load_keypoint_layout(str(tmp_path / "five.json"))
    assert (layout.upper_body, layout.lower_body) == ((0, 1, 2), (3, 4))
    kp = np.array([[10, 10], [30, 40], [50, 10], [20, 200], [40, 200]], float)
    aug = PoseAugment(flip_prob=0, half_body_prob=1, shift_prob=0, scale_range=(1, 1), rotate_prob=0)
    halves = (np.array(layout.upper_body), np.array(layout.lower_body))
    A, crop_kp, _ = pose_crop((300, 200), kp, np.ones(5), np.array([30.0, 100.0]), np.array([100.0, 250.0]),
                              (64, 48), np.random.default_rng(0), aug, half_body=halves)
    # the upper body (2 lower keypoints are below the official 3): centred on its keypoints' mean, (30, 20)
    np.testing.assert_allclose(crop_kp[:3].mean(0), [(48 - 1) / 2, (64 - 1) / 2], atol=1e-4)
    spec["lower_body"] = [3, 7]
    (tmp_path / "bad.json").write_text(json.dumps(spec))
    with pytest.raises(DataError, match=r"lower_body ids \[7\] outside \[0, 5\)"):
        load_keypoint_layout(str(tmp_path / "bad.json"))


def test_half_body_needs_each_shared_keypoint_once():
    """Halves that share a keypoint (a custom set: the hips in both) have 5 distinct half-body ids, not 6: all 5
    labelled is enough. The official sets (their halves disjoint, at least 9 ids) keep the threshold of 9."""
    from opensapiens.data.transforms import pose_crop

    kp = np.array([[10, 10], [30, 40], [50, 10], [20, 200], [40, 200]], float)
    aug = PoseAugment(flip_prob=0, half_body_prob=1, shift_prob=0, scale_range=(1, 1), rotate_prob=0)
    halves = (np.array([0, 1, 2]), np.array([2, 3, 4]))
    crop = [pose_crop((300, 200), kp, np.ones(5), np.array([30.0, 100.0]), np.array([100.0, 250.0]), (64, 48),
                      np.random.default_rng(0), aug, half_body=h)[0] for h in (halves, None)]
    assert not np.allclose(crop[0], crop[1])  # the half-body box was taken
    for name in ("coco", "wholebody", "goliath"):
        layout = load_keypoint_layout(name)
        assert len(np.union1d(layout.upper_body, layout.lower_body)) >= 9
        assert not set(layout.upper_body) & set(layout.lower_body)


def test_the_box_shift_is_a_fraction_of_the_box_before_its_aspect_is_fixed():
    """Official RandomBBoxTransform shifts by shift_factor x the padded box, whose aspect TopdownAffine fixes later:
    a 100 x 400 box (padded 125 x 500) moves at most 0.16 x 125 = 20 px sideways, not 0.16 x its widened 375."""
    from opensapiens.data.transforms import bbox_center_scale, pose_crop

    aug = PoseAugment(flip_prob=0, half_body_prob=0, shift_prob=1, scale_range=(1, 1), rotate_prob=0)
    center, box_scale = bbox_center_scale(np.array([200.0, 100.0, 100.0, 400.0]), None)
    rng = np.random.default_rng(0)
    shifts = []
    for _ in range(400):
        A, _, _ = pose_crop((800, 600), np.zeros((1, 2)), np.ones(1), center, box_scale, (256, 192), rng, aug)
        M = np.vstack([A, [0, 0, 1]])
        crop_centre = np.linalg.solve(M, [(192 - 1) / 2, (256 - 1) / 2, 1])[:2]  # UDP: centre at (size - 1) / 2
        shifts.append(crop_centre - center)
    dx, dy = np.abs(np.array(shifts)).max(0)
    assert 15 < dx <= 0.16 * 125 + 1e-6 and 60 < dy <= 0.16 * 500 + 1e-6
    A, _, _ = pose_crop((800, 600), np.zeros((1, 2)), np.ones(1), center, box_scale, (256, 192), None, None)
    widened = bbox_center_scale(np.array([200.0, 100.0, 100.0, 400.0]), 0.75)[1]  # the validation crop is unchanged
    A2, _, _ = pose_crop((800, 600), np.zeros((1, 2)), np.ones(1), center, widened, (256, 192), None, None)
    np.testing.assert_allclose(A, A2)


def test_coco_boxes_are_cut_to_their_image_before_they_become_crops():
    from opensapiens.data.datasets import _clipped_box

    # a 640 x 480 image: a box running past the right and bottom edges, and one starting left of the image
    np.testing.assert_allclose(_clipped_box([500, 400, 300, 200], 640, 480), [500, 400, 139, 79])
    np.testing.assert_allclose(_clipped_box([-20, 10, 100, 50], 640, 480), [0, 10, 80, 50])
    np.testing.assert_allclose(_clipped_box([5, 6, 7, 8], None, None), [5, 6, 7, 8])  # no size: as given


@pytest.mark.parametrize("task", ["depth", "normal"])
def test_targets_without_masks_count_their_finite_nonzero_pixels(tmp_path, task):
    """No masks/: the foreground is where the target is finite and nonzero (depth: positive); non-finite values are
    zeroed, so no NaN reaches a loss."""
    from opensapiens.io import save_npy, save_png

    H, W = 16, 12
    rng = np.random.default_rng(0)
    target = rng.uniform(0.5, 2.0, (H, W, 3) if task == "normal" else (H, W)).astype(np.float32)
    bad = np.zeros((H, W), bool)
    bad[2, 3] = bad[5, 7] = bad[9, 1] = True
    zero = np.zeros((H, W), bool)
    zero[0, :4] = True
    if task == "normal":
        target[2, 3, 1], target[5, 7, 0], target[9, 1, 2] = np.nan, np.inf, -np.inf
        target[zero] = 0
    else:
        target[2, 3], target[5, 7], target[9, 1] = np.nan, np.inf, -np.inf
        target[zero] = 0
        target[15, 11] = -1.0  # a negative depth: not foreground
        zero[15, 11] = True
    save_png(tmp_path / "images" / "a.png", rng.integers(0, 255, (H, W, 3), dtype=np.uint8))
    save_npy(tmp_path / ("normals" if task == "normal" else "depths") / "a.npy", target)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (no masks/ folder: said once)
        s = DenseDataset(tmp_path, task, (H, W), None)[0]
    values = s["normals"] if task == "normal" else s["depth"]
    assert np.isfinite(values).all()
    np.testing.assert_array_equal(s["mask"].astype(bool), ~bad & ~zero)
    assert np.all(values[bad] == 0)
