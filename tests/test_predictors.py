"""Predictors end to end with stand-in models whose outputs are known functions of the input image."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from opensapiens.inference.predictors import (
    DepthPredictor,
    NormalPredictor,
    PosePredictor,
    SegPredictor,
)
from opensapiens.inference.results import metric_depth
from opensapiens.inference.transforms import MEAN, STD

INPUT = (128, 96)  # model input H, W


class Stand_in(nn.Module):  # noqa: N801 - reads as a noun in the tests
    def __init__(self, task: str, out_channels: int, fn):
        super().__init__()
        self.task = task
        self.config = SimpleNamespace(out_channels=out_channels)
        self.anchor = nn.Parameter(torch.zeros(1))
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def _unnormalize(x):
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return x * std + mean


def _dot_heatmaps(x, K=17):
    """Heatmap whose every channel peaks (UDP-consistent, sub-pixel) at the brightest red pixel of the crop."""
    img = _unnormalize(x)[:, 0]  # (N, H, W) red channel
    N, H, W = img.shape
    h, w = H // 4, W // 4
    flat = img.flatten(1).argmax(1)
    ys, xs = (flat // W).float(), (flat % W).float()
    # centre of mass around the peak, for sub-pixel accuracy of the blurred dot
    yy, xx = torch.meshgrid(torch.arange(H).float(), torch.arange(W).float(), indexing="ij")
    out = []
    for n in range(N):
        win = ((yy - ys[n]).abs() <= 3) & ((xx - xs[n]).abs() <= 3)
        wgt = img[n] * win
        cy, cx = (wgt * yy).sum() / wgt.sum(), (wgt * xx).sum() / wgt.sum()
        hy, hx = cy * (h - 1) / (H - 1), cx * (w - 1) / (W - 1)  # UDP: input pixel -> heatmap pixel
        gy, gx = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
        g = torch.exp(-((gx - hx) ** 2 + (gy - hy) ** 2) / (2 * 1.5**2))
        out.append(g.expand(K, h, w))
    return torch.stack(out)


def _image_with_dots(h, w, dots):
    img = np.full((h, w, 3), 20, np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    for (x, y) in dots:
        img[..., 0] = np.maximum(img[..., 0], (235 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 2.0**2))).astype(
            np.uint8))
    return img


def test_pose_keypoints_land_in_image_coordinates_across_images_and_people():
    predictor = PosePredictor(Stand_in("pose", 17, _dot_heatmaps), input_size=INPUT, batch_size=3)
    # two images, three people (boxes), each box around one bright dot at a known sub-pixel location
    dots_a = [(60.3, 70.7), (200.5, 40.2)]
    dots_b = [(33.0, 150.4)]
    img_a, img_b = _image_with_dots(180, 260, dots_a), _image_with_dots(220, 90, dots_b)
    boxes_a = np.array([[30, 30, 95, 120], [170, 5, 235, 80]], np.float32)
    boxes_b = np.array([[5, 100, 70, 210, 0.9]], np.float32)  # with a score column
    res_a, res_b = predictor.predict_batch([img_a, img_b], boxes=[boxes_a, boxes_b])
    assert res_a.keypoints.shape == (2, 17, 2) and res_b.keypoints.shape == (1, 17, 2)
    for res, dots in ((res_a, dots_a), (res_b, dots_b)):
        for person, (x, y) in enumerate(dots):
            err = np.abs(res.keypoints[person] - np.array([x, y])).max()
            assert err < 0.6, (person, res.keypoints[person, 0], (x, y))
    assert res_b.box_scores[0] == pytest.approx(0.9)
    coco = res_b.to_coco(image_id=7)
    assert coco[0]["image_id"] == 7 and len(coco[0]["keypoints"]) == 17 * 3


def test_pose_flip_test_unflips_heatmaps_and_swaps_channels():
    from opensapiens.metadata import keypoint_set

    flip = keypoint_set("coco").flip_indices

    def graded(x):
        """Every channel peaks at the red dot; channel k has peak height (k + 1) / 17."""
        return _dot_heatmaps(x) * (torch.arange(17).float() + 1).view(1, 17, 1, 1) / 17

    img = _image_with_dots(160, 120, [(40.0, 80.0)])
    plain = PosePredictor(Stand_in("pose", 17, graded), input_size=INPUT)(img)
    flipped = PosePredictor(Stand_in("pose", 17, graded), input_size=INPUT, flip=True)(img)
    # un-flipped correctly, the mirrored pass peaks at the same place (no UDP shift needed)
    assert np.abs(plain.keypoints - flipped.keypoints).max() < 0.05
    # channels swapped: keypoint k averages its own score with that of its mirror partner
    expect = (plain.scores[0] + plain.scores[0][list(flip)]) / 2
    assert np.allclose(flipped.scores[0], expect, atol=1e-4)
    assert not np.allclose(flipped.scores[0], plain.scores[0], atol=1e-3)


def test_pose_whole_image_when_no_boxes_and_empty_when_no_people():
    predictor = PosePredictor(Stand_in("pose", 17, _dot_heatmaps), input_size=INPUT)
    img = _image_with_dots(128, 96, [(50.0, 64.0)])
    res = predictor(img)
    assert res.boxes.tolist() == [[0, 0, 96, 128]]
    assert np.abs(res.keypoints[0, 0] - [50.0, 64.0]).max() < 0.6
    empty = predictor(img, boxes=np.zeros((0, 4)))
    assert empty.keypoints.shape == (0, 17, 2)


def test_pose_with_no_people_returns_empty_heatmaps_when_asked_for_them():
    """``--raw`` writes the heatmaps of every image; an image without people must get an empty (0, K, h, w) array,
    as an image with people gets (N, K, h, w), or its outputs never all exist and ``--resume`` never skips it."""
    predictor = PosePredictor(Stand_in("pose", 17, _dot_heatmaps), input_size=INPUT)
    img = _image_with_dots(128, 96, [(50.0, 64.0)])
    empty = predictor.predict_batch([img, img], boxes=[np.zeros((0, 4)), np.zeros((0, 5))], return_heatmaps=True)
    for res in empty:
        assert res.heatmaps is not None and res.heatmaps.shape == (0, 17, INPUT[0] // 4, INPUT[1] // 4)
        assert res.heatmaps.dtype == np.float32
    assert predictor(img, boxes=np.zeros((0, 4))).heatmaps is None  # not asked for


def test_pose_drops_boxes_that_describe_no_region_with_one_warning():
    """A zero-size or inverted (x2 < x1, y2 < y1) box has nothing to crop: it is dropped, with a warning naming how
    many, and the other people of the batch come back as without it (the whole batch failed before)."""
    predictor = PosePredictor(Stand_in("pose", 17, _dot_heatmaps), input_size=INPUT)
    dots = [(60.3, 70.7)]
    img_a, img_b = _image_with_dots(180, 260, dots), _image_with_dots(60, 50, [])
    good = np.array([[30, 30, 95, 120, 0.7]], np.float32)
    bad = np.array([[5, 5, 5, 5, 0.9], [10, 10, 5, 5, 0.9], [5, 5, 5, 20, 0.9]], np.float32)
    with pytest.warns(UserWarning, match="dropped 4 person box") as record:
        res_a, res_b = predictor.predict_batch([img_a, img_b], boxes=[np.concatenate([bad[:1], good]), bad])
    assert len(record) == 1
    assert res_a.boxes.tolist() == [[30, 30, 95, 120]] and res_a.box_scores.tolist() == pytest.approx([0.7])
    assert np.abs(res_a.keypoints[0] - np.array(dots[0])).max() < 0.6
    assert res_b.keypoints.shape == (0, 17, 2) and res_b.boxes.shape == (0, 4) and res_b.box_scores.shape == (0,)


def test_masks_of_another_size_than_their_image_are_a_clear_error():
    depth = DepthPredictor(Stand_in("depth", 1, lambda x: x[:, :1] * 0 + 1), input_size=INPUT)
    img = np.zeros((40, 30, 3), np.uint8)
    with pytest.raises(ValueError, match=r"mask 1 has shape \(10, 10\), its image \(H, W\) \(40, 30\)"):
        depth.predict_batch([img, img], masks=[np.ones((40, 30), bool), np.ones((10, 10), bool)])
    with pytest.raises(ValueError, match=r"one \(H, W\) mask for 2 images"):  # was "got 40 masks"
        depth.predict_batch([img, img], masks=np.ones((40, 30), bool))
    with pytest.raises(ValueError, match=r"a batch of 2 images stacked"):
        depth(np.stack([img, img]))


def test_images_without_a_given_mask_take_the_seg_predictors_foreground():
    """Masks where given, the seg model's foreground for the images without one (None), and only those are
    segmented."""
    seg = SegPredictor(Stand_in("seg", 2, _red_logits), input_size=INPUT)
    segmented = []
    submit = seg.submit
    seg.submit = lambda images, **kw: segmented.append(len(images)) or submit(images, **kw)
    normal = NormalPredictor(Stand_in("normal", 3, lambda x: x[:, :3, ::2, ::2] * 0 + 1), input_size=INPUT, seg=seg)
    img = np.full((60, 40, 3), 10, np.uint8)
    img[10:50, 10:30, 0] = 250  # the seg stand-in's foreground: the red rectangle
    given = np.zeros((60, 40), bool)
    given[:5, :5] = True
    with_mask, without = normal.predict_batch([img, img], masks=[given, None])
    assert segmented == [1]
    assert (with_mask.mask == given).all()
    red = img[..., 0] > 128
    assert without.mask is not None and (without.mask == red).mean() > 0.97
    assert (without.normals[~without.mask] == 0).all()


def test_pose_boxes_from_a_detector_batched_or_per_image():
    """A detector with ``detect_batch`` (ours) gets the whole batch in one call; a plain callable one image at a
    time; either way each person is cropped from its box and lands at its dot."""
    dots = [[(60.3, 70.7), (200.5, 40.2)], [(33.0, 150.4)]]
    images = [_image_with_dots(180, 260, dots[0]), _image_with_dots(220, 90, dots[1])]
    boxes = [np.array([[30, 30, 95, 120], [170, 5, 235, 80]], np.float32), np.array([[5, 100, 70, 210]], np.float32)]
    calls = []

    class Detector:
        def __call__(self, image):
            calls.append("one")
            k = next(i for i, im in enumerate(images) if im is image)
            return boxes[k], np.ones(len(boxes[k]), np.float32)

        def detect_batch(self, batch):
            calls.append(f"batch of {len(batch)}")
            return [(b, np.full(len(b), 0.9, np.float32)) for b in boxes]

    for detector, expected_calls, score in ((Detector(), ["batch of 2"], 0.9), (Detector().__call__, ["one"] * 2, 1)):
        calls.clear()
        predictor = PosePredictor(Stand_in("pose", 17, _dot_heatmaps), input_size=INPUT, detector=detector)
        results = predictor.predict_batch(images)
        assert calls == expected_calls
        for res, image_dots in zip(results, dots):
            assert res.box_scores.tolist() == pytest.approx([score] * len(image_dots))
            for person, (x, y) in enumerate(image_dots):
                assert np.abs(res.keypoints[person] - np.array([x, y])).max() < 0.6


def _red_logits(x):
    """Two-class logits at stride 2: class 1 where the red channel is bright."""
    red = _unnormalize(x)[:, :1]
    red = F.avg_pool2d(red, 2)
    return torch.cat([torch.zeros_like(red), (red - 128) / 10], dim=1)


@pytest.mark.parametrize("resize", ["stretch", "pad"])
def test_seg_labels_at_original_resolution(resize):
    h, w = 200, 90
    img = np.full((h, w, 3), 10, np.uint8)
    img[40:120, 20:70, 0] = 250  # a red rectangle
    res = SegPredictor(Stand_in("seg", 2, _red_logits), input_size=INPUT, resize=resize)(img)
    assert res.labels.shape == (h, w) and res.labels.dtype == np.uint8
    expect = img[..., 0] > 128
    inner = np.zeros_like(expect)
    inner[44:116, 24:66] = True
    outer = np.ones_like(expect)
    outer[34:126, 14:76] = False
    assert (res.labels[inner] == 1).all() and (res.labels[outer] == 0).all()
    assert res.foreground.sum() == pytest.approx(expect.sum(), rel=0.1)


def test_normals_are_unit_and_masked():
    def fixed(x):
        n = torch.tensor([3.0, 0.0, 4.0]).view(1, 3, 1, 1)
        return n.expand(x.shape[0], 3, x.shape[2] // 2, x.shape[3] // 2).clone()

    img = np.zeros((50, 40, 3), np.uint8)
    mask = np.zeros((50, 40), bool)
    mask[10:30, 5:20] = True
    res = NormalPredictor(Stand_in("normal", 3, fixed), input_size=INPUT)(img, masks=mask)
    assert np.allclose(res.normals[mask], [0.6, 0.0, 0.8], atol=1e-5)
    assert (res.normals[~mask] == 0).all()


def test_depth_restored_and_aligned_to_metres():
    def ramp(x):  # depth = column index / width at full input resolution
        B, _, H, W = x.shape
        return torch.linspace(0, 1, W).view(1, 1, 1, W).expand(B, 1, H, W).clone()

    img = np.zeros((64, 300, 3), np.uint8)
    res = DepthPredictor(Stand_in("depth", 1, ramp), input_size=INPUT)(img)
    assert res.depth.shape == (64, 300)
    assert np.all(np.diff(res.depth[10]) >= -1e-6)  # monotone left to right
    metric = 2.5 * res.depth + 1.2  # the true map, known up to scale and shift
    pts = np.array([[x, 20, metric[20, x]] for x in (10, 100, 250)])
    assert np.allclose(metric_depth(res.depth, pts), metric, atol=1e-4)
    inv = metric_depth(res.depth, 1.0 / (0.3 * res.depth + 0.5), inverse=True)
    assert np.allclose(inv, 1.0 / (0.3 * res.depth + 0.5), rtol=1e-4)
    with pytest.raises(ValueError, match="at least 2"):
        metric_depth(res.depth, pts[:1])


def test_wrong_model_for_predictor_is_a_clear_error():
    with pytest.raises(ValueError, match="needs a seg model"):
        SegPredictor(Stand_in("pose", 17, _dot_heatmaps), input_size=INPUT)
    with pytest.raises(ValueError, match="divisible by 16"):
        SegPredictor(Stand_in("seg", 2, _red_logits), input_size=(100, 96))
    assert math.isfinite(1.0)


def _red_logits_recording(sizes: list[int]):
    def fn(x):
        sizes.append(x.shape[0])
        return _red_logits(x)

    return fn


def test_optimized_model_pads_short_batches_only_where_a_size_would_compile_again():
    """The fused path compiles batch 1 on its own: a caller sending single images runs them alone (not padded to
    batch_size, 4x the work), and once larger batches have run a short chunk is padded to reuse their compiled code.
    The whole-model compile is static: always padded. Results equal the unoptimized model's either way."""
    from opensapiens.inference.optimize import FastModel

    img = np.full((200, 90, 3), 10, np.uint8)
    img[40:120, 20:70, 0] = 250
    plain = SegPredictor(Stand_in("seg", 2, _red_logits), input_size=INPUT)(img).labels
    sizes: list[int] = []
    fused = SegPredictor(FastModel(Stand_in("seg", 2, _red_logits_recording(sizes))), input_size=INPUT, batch_size=4)
    for _ in range(2):
        assert np.array_equal(fused(img).labels, plain)
    assert sizes == [1, 1]
    out = fused.predict_batch([img] * 5)  # a chunk of 4, then a lone image: padded to the compiled batch
    assert sizes == [1, 1, 4, 4] and all(np.array_equal(r.labels, plain) for r in out)
    assert np.array_equal(fused(img).labels, plain) and sizes[-1] == 4

    sizes.clear()
    stand_in = Stand_in("seg", 2, _red_logits_recording(sizes))
    static = SegPredictor(FastModel(stand_in, compiled=stand_in), input_size=INPUT, batch_size=4)
    assert np.array_equal(static(img).labels, plain) and sizes == [4]


def test_a_19_class_seg_model_is_named_with_the_face_vocabulary():
    from opensapiens.metadata import seg_classes

    seg = SegPredictor(Stand_in("seg", 19, lambda x: x[:, :1, ::2, ::2].repeat(1, 19, 1, 1)), input_size=INPUT)
    assert seg.class_names == seg_classes("face").names and seg.class_names[1] == "Skin"


def test_one_images_boxes_as_a_list_an_array_or_one_box_give_the_same_people():
    from opensapiens.models import build_model

    torch.manual_seed(0)
    pose = PosePredictor(build_model("pose", "nano", out_channels=17), input_size=(64, 48))
    img = np.random.default_rng(0).integers(0, 255, (90, 70, 3), dtype=np.uint8)
    two = [[0, 0, 60, 80], [10, 10, 70, 90]]
    want = pose.predict_batch([img], boxes=[np.array(two, np.float32)])[0].keypoints
    np.testing.assert_array_equal(pose(img, boxes=two).keypoints, want)
    np.testing.assert_array_equal(pose(img, boxes=np.array(two)).keypoints, want)
    # a batch of one crop: on CUDA other kernels than for two crops (1.5e-3 px apart on the H100, call 108)
    np.testing.assert_allclose(pose(img, boxes=two[0]).keypoints, want[:1], atol=1e-2)
    assert pose(img, boxes=[]).keypoints.shape == (0, 17, 2)
    with pytest.raises(ValueError, match="boxes of image 1 is None"):
        pose.predict_batch([img, img], boxes=[np.array(two), None])
    with pytest.raises(ValueError, match="image 0: expected an RGB uint8 array"):
        pose(img[..., 0])  # checked before its whole-image box reads the shape
    with pytest.raises(ValueError, match="image 0: expected an RGB uint8 array"):
        pose(img[..., 0], boxes=np.zeros((0, 4)))  # no people to pose: still a wrong image
    # predict_batch of one image with one flat box, as the call takes it; misshapen boxes named as such
    np.testing.assert_allclose(pose.predict_batch([img], boxes=two[0])[0].keypoints, want[:1], atol=1e-2)
    with pytest.raises(ValueError, match=r"one box \[0, 0, 60, 80\] for 2 images"):
        pose.predict_batch([img, img], boxes=two[0])
    with pytest.raises(ValueError, match=r"boxes of image 0 must be \(N, 4\) .* got shape \(1, 6\)"):
        pose(img, boxes=[[0, 0, 60, 80, 0.7, 3]])
    with pytest.raises(ValueError, match=r"a batch of 2 images stacked .* call predict_batch"):
        pose(np.stack([img, img]))


def test_a_detectors_lists_become_float32_arrays_and_empty_batches_give_no_results():
    from opensapiens.models import build_model

    pose = PosePredictor(build_model("pose", "nano", out_channels=17), input_size=(64, 48),
                         detector=lambda image: ([[10, 20, 40, 60]], [0.9]))
    r = pose(np.zeros((80, 60, 3), np.uint8))
    assert r.boxes.dtype == np.float32 and r.box_scores.dtype == np.float32 and r.boxes.shape == (1, 4)
    np.testing.assert_array_equal(r.box_scores, [np.float32(0.9)])
    assert pose.predict_batch([]) == []
    assert SegPredictor(build_model("seg", "nano", out_channels=28), input_size=(64, 48)).predict_batch([]) == []


def test_a_torch_mask_masks_depth_like_its_numpy_twin():
    from opensapiens.models import build_model

    depth = DepthPredictor(build_model("depth", "nano", out_channels=1), input_size=(64, 48))
    img = np.random.default_rng(1).integers(0, 255, (50, 40, 3), dtype=np.uint8)
    mask = np.zeros((50, 40), bool)
    mask[10:40, 5:30] = True
    a, b = depth(img, masks=mask), depth(img, masks=torch.from_numpy(mask))
    np.testing.assert_array_equal(a.mask, mask)
    np.testing.assert_array_equal(b.mask, mask)
    np.testing.assert_array_equal(a.depth, b.depth)


def test_the_multitask_model_takes_resize_and_input_size_and_refuses_what_it_cannot_use():
    import opensapiens

    img = np.random.default_rng(0).integers(0, 255, (60, 200, 3), dtype=np.uint8)  # wide: pad and stretch differ
    mt = opensapiens.load("sapiens-nano", resize="pad", input_size=(128, 96), device="cpu")
    seg = opensapiens.load("sapiens-nano", task="seg", resize="pad", input_size=(128, 96), device="cpu")
    assert mt.input_size == (128, 96) and mt.preprocess.resize == "pad"
    np.testing.assert_array_equal(mt(img)["seg"].labels, seg(img).labels)
    with pytest.raises(ValueError, match="not seg"):
        opensapiens.load("sapiens-nano", seg=seg, device="cpu")
    with pytest.raises(ValueError, match="unoptimized"):
        opensapiens.load("sapiens-nano", optimize=True, device="cpu")


def test_a_fine_tunes_own_keypoints_are_told_from_the_built_in_sets_by_their_names_and_mirror_by_name_when_old():
    from opensapiens.inference.predictors import _trained_keypoint_set
    from opensapiens.metadata import keypoint_set

    names = ["nose", "left_eye", "right_eye", "left_ear_tip", "right_ear_tip"]
    old = _trained_keypoint_set({"keypoint_set": "face5", "keypoint_names": names})  # saved before the pairs were
    assert old.names == tuple(names) and old.flip_indices == (0, 2, 1, 4, 3) and old.sigmas == (0.05,) * 5
    own_coco = _trained_keypoint_set({"keypoint_set": "coco", "keypoint_names": names,  # a file named coco.json
                                      "flip_indices": [0, 2, 1, 4, 3], "sigmas": [0.1] * 5, "skeleton": [[0, 1]]})
    assert own_coco.names == tuple(names) and own_coco.sigmas == (0.1,) * 5 and own_coco.skeleton == ((0, 1),)
    coco = keypoint_set("coco")
    assert _trained_keypoint_set({"keypoint_set": "coco", "keypoint_names": list(coco.names)}) is None  # built in
    assert _trained_keypoint_set({}) is None
