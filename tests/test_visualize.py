"""Drawing: colours land where they should, nothing else changes, and dense maps follow their colour conventions."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

from opensapiens.metadata import KeypointSet, keypoint_set, seg_classes
from opensapiens.visualize import (
    CENTER,
    FACE,
    FINGERS,
    LEFT,
    RIGHT,
    colorize_depth,
    colorize_normals,
    colorize_seg,
    draw_pose,
    seg_overlay,
    side_by_side,
)

GREY = 40


def _canvas(h: int = 200, w: int = 300) -> np.ndarray:
    return np.full((h, w, 3), GREY, np.uint8)


def _coco_person(points: dict[str, tuple[float, float]], score: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
    ks = keypoint_set("coco")
    kp = np.zeros((1, 17, 2))
    sc = np.zeros((1, 17))
    for name, xy in points.items():
        kp[0, ks.index(name)] = xy
        sc[0, ks.index(name)] = score
    return kp, sc


# ----------------------------------------------------------------------------------------------------------- pose

def test_points_and_links_have_their_colours():
    img = _canvas()
    kp, sc = _coco_person({"left_shoulder": (200, 50), "left_elbow": (200, 150), "right_shoulder": (60, 50)})
    out = draw_pose(img, kp, sc, "coco", radius=5, thickness=3)
    assert out.shape == img.shape and out.dtype == np.uint8
    assert (img == GREY).all()  # input untouched
    assert out[50, 200].tolist() == list(LEFT)  # keypoint centres
    assert out[50, 60].tolist() == list(RIGHT)
    assert out[100, 200].tolist() == list(LEFT)  # middle of the left upper-arm link
    assert out[50, 130].tolist() == list(CENTER)  # shoulder-to-shoulder link is central
    assert (out[150:, :30] == GREY).all() and (out[100, 10:40] == GREY).all()  # far away: untouched


def test_below_threshold_keypoints_and_their_links_are_not_drawn():
    kp, sc = _coco_person({"left_shoulder": (200, 50), "left_elbow": (200, 150)})
    sc[0, keypoint_set("coco").index("left_elbow")] = 0.3  # at the threshold: hidden
    out = draw_pose(_canvas(), kp, sc, "coco", threshold=0.3, radius=5, thickness=3)
    assert out[50, 200].tolist() == list(LEFT)
    assert (out[100:, :] == GREY).all()  # no elbow, no link
    kp[0, 0] = (np.nan, 10)  # non-finite coordinates are skipped even with a high score
    sc[0, 0] = 1.0
    draw_pose(_canvas(), kp, sc, "coco")


def test_default_radius_scales_with_image_size():
    kp, sc = _coco_person({"nose": (1000, 1000)})
    small = draw_pose(_canvas(200, 200), kp * 0.1, sc, "coco")
    large = draw_pose(_canvas(2000, 2000), kp, sc, "coco")
    area = lambda im: int((im != GREY).any(-1).sum())  # noqa: E731
    assert area(large) > 4 * area(small) > 0


def test_goliath_hands_and_face():
    ks = keypoint_set("goliath")
    kp = np.zeros((1, ks.num_keypoints, 2))
    sc = np.zeros((1, ks.num_keypoints))
    face = ks.groups["face"][0]
    thumb = ks.index("left_thumb4")
    kp[0, face], sc[0, face] = (40, 40), 1.0
    kp[0, thumb], sc[0, thumb] = (150, 100), 1.0
    out = draw_pose(_canvas(), kp, sc, ks, radius=6)
    assert out[40, 40].tolist() == list(FACE) and out[100, 150].tolist() == list(FINGERS["thumb"])
    assert (out[40, 46] == GREY).all()  # face points are drawn smaller than the radius
    assert (out[100, 154] != GREY).any()


def test_boxes_and_bad_shapes():
    kp, sc = _coco_person({"nose": (150, 100)})
    out = draw_pose(_canvas(), kp, sc, 17, boxes=np.array([[20, 20, 280, 180]]), thickness=2)
    assert (out[20, 100] != GREY).any() and (out[100, 100] == GREY).all()
    with pytest.raises(ValueError, match="coco"):
        draw_pose(_canvas(), np.zeros((1, 133, 2)), np.zeros((1, 133)), "coco")
    empty = draw_pose(_canvas(), np.zeros((0, 17, 2)), np.zeros((0, 17)), "coco")
    assert (empty == GREY).all()
    with pytest.raises(ValueError, match="at least 1 pixel"):
        draw_pose(_canvas(), kp, sc, "coco", radius=0)


def test_a_given_keypoint_set_draws_its_own_skeleton():
    """The style comes from the set's contents, not its name: a COCO copy without links draws only points, and a
    custom set (not a built-in name) draws its links, both as the one-by-one reference."""
    kp = np.stack(np.meshgrid(np.arange(5) * 40.0 + 20.3, np.arange(4) * 40.0 + 20.6), -1).reshape(-1, 2)[:17]
    sc = np.ones(17)  # points 40 pixels apart: none overlaps another
    coco = keypoint_set("coco")
    no_links = dataclasses.replace(coco, skeleton=())
    expected = _drawn_one_by_one(_canvas(), kp, sc, no_links, _colors_of(coco), 3, 2)
    np.testing.assert_array_equal(draw_pose(_canvas(), kp, sc, no_links, radius=3, thickness=2), expected)
    custom = KeypointSet("hand5", tuple(f"p{i}" for i in range(5)), tuple(range(5)), (0.1,) * 5, ((0, 1), (1, 4)), {})
    center = {"link": {(0, 1): CENTER, (1, 4): CENTER}, "point": dict.fromkeys(range(5), CENTER)}  # no sides
    expected = _drawn_one_by_one(_canvas(), kp[:5], sc[:5], custom, center, 3, 2)
    np.testing.assert_array_equal(draw_pose(_canvas(), kp[:5], sc[:5], custom, radius=3, thickness=2), expected)
    with pytest.raises(ValueError, match="skeleton"):
        draw_pose(_canvas(), kp[:5], sc[:5], dataclasses.replace(custom, skeleton=((0, 5),)))


# ----------------------------------------------------------------------------------------------------------- seg

def _drawn_one_by_one(image, kp, sc, ks, colors, radius, thickness, threshold=0.3):
    """The reference: cv2.line per link, then cv2.circle per point (face points at half radius), one person."""
    out = image.copy()
    shown = sc > threshold
    fixed = [(int(round(x * 16)), int(round(y * 16))) for x, y in kp]
    for a, b in ks.skeleton:
        if shown[a] and shown[b]:
            cv2.line(out, fixed[a], fixed[b], colors["link"][(a, b)], thickness, cv2.LINE_AA, 4)
    face = set(ks.groups.get("face", ()))
    for k in range(ks.num_keypoints):
        if shown[k]:
            r = max(1, radius // 2) if k in face else radius
            cv2.circle(out, fixed[k], r << 4, colors["point"][k], -1, cv2.LINE_AA, 4)
    return out


def _colors_of(ks) -> dict:
    """Each link's and point's colour as draw_pose shows it: drawn alone on black."""
    colors = {"link": {}, "point": {}}
    for k in range(ks.num_keypoints):
        kp, sc = np.zeros((ks.num_keypoints, 2)), np.zeros(ks.num_keypoints)
        kp[k], sc[k] = (10, 10), 1
        colors["point"][k] = tuple(int(v) for v in draw_pose(np.zeros((20, 20, 3), np.uint8), kp, sc, ks,
                                                             radius=4)[10, 10])
    for a, b in ks.skeleton:
        kp, sc = np.zeros((ks.num_keypoints, 2)), np.zeros(ks.num_keypoints)
        kp[a], kp[b], sc[a], sc[b] = (10, 10), (50, 10), 1, 1
        colors["link"][(a, b)] = tuple(int(v) for v in draw_pose(np.zeros((20, 60, 3), np.uint8), kp, sc, ks,
                                                                 radius=1, thickness=5)[10, 30])
    return colors


@pytest.mark.parametrize("name", ["coco", "goliath"])
def test_skeletons_are_the_pixels_of_drawing_each_link_and_point_alone(name):
    """draw_pose draws all links or points of one colour in one OpenCV call; where elements of different colours do
    not overlap, the pixels must be those of one cv2.line / cv2.circle per element."""
    ks = keypoint_set(name)
    rng = np.random.default_rng(3)
    img = rng.integers(0, 255, (600, 900, 3), dtype=np.uint8)
    if name == "coco":  # a standing person: links meet only under the points drawn over them
        kp, sc = _coco_person({"nose": (450, 60), "left_eye": (465, 45), "right_eye": (435, 45), "left_ear": (480, 55),
                               "right_ear": (420, 55), "left_shoulder": (520, 150), "right_shoulder": (380, 150),
                               "left_elbow": (560, 250), "right_elbow": (340, 250), "left_wrist": (580, 340),
                               "right_wrist": (320, 340), "left_hip": (500, 330), "right_hip": (400, 330),
                               "left_knee": (505, 450), "right_knee": (395, 450), "left_ankle": (510, 560),
                               "right_ankle": (390, 560)})
        kp, sc = kp[0] + rng.uniform(-0.5, 0.5, (17, 2)), sc[0]
    else:  # every point on its own cell of a grid, apart; links hidden by scores below the threshold on one end
        cells = rng.permutation(20 * 16)[: ks.num_keypoints]
        kp = np.stack([40 + 40 * (cells % 20), 30 + 35 * (cells // 20)], 1) + rng.uniform(-3, 3, (ks.num_keypoints, 2))
        sc = np.ones(ks.num_keypoints)
        for a, b in ks.skeleton:
            if sc[a] > 0.3 and sc[b] > 0.3:
                sc[b] = 0.1
    out = draw_pose(img, kp, sc, ks, radius=6, thickness=2)
    expected = _drawn_one_by_one(img, kp, sc, ks, _colors_of(ks), radius=6, thickness=2)
    assert (sc > 0.3).sum() > 10
    np.testing.assert_array_equal(out, expected)


def test_colorize_seg_uses_the_palette():
    labels = np.array([[0, 1, 2], [255, 1, 0]], np.uint8)
    palette = [(10, 20, 30), (200, 0, 0), (0, 0, 200)]
    out = colorize_seg(labels, palette)
    assert out.tolist() == [[[10, 20, 30], [200, 0, 0], [0, 0, 200]], [[0, 0, 0], [200, 0, 0], [10, 20, 30]]]
    wide = colorize_seg(np.array([[-1, 2, 7]], np.int64), palette)  # out-of-palette ids are black
    assert wide.tolist() == [[[0, 0, 0], [0, 0, 200], [0, 0, 0]]]
    goliath = seg_classes("goliath").palette
    assert colorize_seg(np.array([[5]], np.uint8))[0, 0].tolist() == list(goliath[5])  # default palette
    for dtype in (np.uint8, np.int32):  # 255 = ignore is black with the default palette too, next to a coloured id
        out = colorize_seg(np.array([[255, 254, 5]], dtype))
        assert out[0, 0].tolist() == [0, 0, 0] and out[0, 1].any() and out[0, 2].tolist() == list(goliath[5])


def test_empty_images_give_empty_pictures():
    for h, w in ((0, 0), (0, 4), (3, 0)):
        assert colorize_seg(np.zeros((h, w), np.uint8)).shape == (h, w, 3)
        assert colorize_normals(np.zeros((h, w, 3), np.float32)).shape == (h, w, 3)
        out = seg_overlay(np.zeros((h, w, 3), np.uint8), np.zeros((h, w), np.uint8))
        assert out.shape == (h, w, 3) and out.dtype == np.uint8
        assert seg_overlay(np.zeros((h, w, 3), np.uint8), np.zeros((h, w), np.uint8), alpha=0.3).shape == (h, w, 3)


def test_seg_overlay_blends_foreground_only():
    img = np.full((2, 2, 3), 100, np.uint8)
    labels = np.array([[0, 1], [1, 0]], np.uint8)
    out = seg_overlay(img, labels, [(0, 0, 0), (255, 0, 51)], alpha=0.5)
    assert out[0, 0].tolist() == [100, 100, 100] and out[1, 1].tolist() == [100, 100, 100]
    assert out[0, 1].tolist() == [178, 50, 76]  # round(0.5 * 100 + 0.5 * c): 177.5 -> 178, 50, 75.5 -> 76
    with pytest.raises(ValueError, match="size"):
        seg_overlay(img, np.zeros((3, 2), np.uint8))


@pytest.mark.parametrize("alpha", [0.5, 0.3, 0.77, 0.0, 1.0])
@pytest.mark.parametrize("background", [0, None, 3])
def test_seg_overlay_equals_the_float64_blend_of_every_pixel(alpha, background):
    """The overlay blends through a table of all (image, colour) value pairs and OpenCV lookups (6x faster at 1080p);
    it must equal round(v (1 - alpha) + c alpha) in float64 per pixel, ids outside the palette black, for uint8,
    int32 and non-contiguous label maps."""
    rng = np.random.default_rng(7)
    img = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    labels = rng.integers(0, 31, (37, 106), dtype=np.uint8)[:, ::2]  # a strided view; 28-30 outside the palette
    labels[0, :4] = 255
    palette = seg_classes("goliath").palette
    table = np.zeros((256, 3), np.float64)
    table[: len(palette)] = palette
    expected = np.floor(img * (1.0 - alpha) + table[labels] * alpha + 0.5).astype(np.uint8)
    if background is not None:
        expected[labels == background] = img[labels == background]
    for lab in (labels, labels.astype(np.int32)):
        assert np.array_equal(seg_overlay(img, lab, palette, alpha=alpha, background=background), expected)


@pytest.mark.parametrize("alpha", [0.5, 0.3])
def test_seg_overlay_blends_every_pair_of_values_as_the_float64_formula(alpha):
    """All 65536 (image value, colour value) pairs: pixel (v, c) has value v in every channel and a class coloured
    (c, c, c); alpha 0.5 takes an integer shortcut, the others the table."""
    v = np.arange(256)
    img = np.repeat(np.repeat(v[:, None, None], 256, axis=1), 3, axis=2).astype(np.uint8)
    labels = np.repeat(v[None, :], 256, axis=0).astype(np.uint8)
    palette = [(c, c, c) for c in range(256)]
    expected = np.floor(v[:, None] * (1.0 - alpha) + v[None, :] * alpha + 0.5).astype(np.uint8)
    out = seg_overlay(img, labels, palette, alpha=alpha, background=None)
    assert np.array_equal(out, np.repeat(expected[..., None], 3, axis=2))


# ----------------------------------------------------------------------------------------------------------- depth

def _inferno(v: int) -> list[int]:
    return cv2.applyColorMap(np.array([[v]], np.uint8), cv2.COLORMAP_INFERNO)[0, 0, ::-1].tolist()


def test_depth_near_is_bright():
    depth = np.array([[1.0, 2.0, 3.0, 5.0]])
    out = colorize_depth(depth)
    assert out[0, 0].tolist() == _inferno(255) and out[0, 3].tolist() == _inferno(0)
    assert out[0, 1].tolist() == _inferno(191)  # (5 - 2) / 4 * 255 = 191.25
    luma = out.astype(float) @ [0.299, 0.587, 0.114]
    assert (np.diff(luma[0]) < 0).all()  # farther is darker


def test_depth_background_nan_and_mask():
    depth = np.array([[1.0, np.nan, 3.0], [2.0, np.inf, 100.0]])
    mask = np.array([[1, 1, 1], [1, 1, 0]], bool)
    out = colorize_depth(depth, mask)
    grey = [100, 100, 100]
    assert out[0, 1].tolist() == grey and out[1, 1].tolist() == grey and out[1, 2].tolist() == grey
    assert out[0, 0].tolist() == _inferno(255) and out[0, 2].tolist() == _inferno(0)  # range from valid pixels only
    assert (colorize_depth(np.full((2, 2), np.nan)) == 100).all()
    assert colorize_depth(np.array([[1.0, 9.0]]), vmin=0.0, vmax=4.0)[0].tolist() == [_inferno(191), _inferno(0)]


# ----------------------------------------------------------------------------------------------------------- normals

def test_normal_colours():
    n = np.array([[[0, 0, 1], [1, 0, 0], [-1, 0, 0]], [[0, 1, 0], [0, -1, 0], [np.nan, 0, 1]]], np.float64)
    out = colorize_normals(n)
    assert out.tolist() == [[[128, 128, 255], [255, 128, 128], [0, 128, 128]],
                            [[128, 255, 128], [128, 0, 128], [0, 0, 0]]]
    masked = colorize_normals(n, mask=np.array([[0, 1, 1], [1, 1, 1]]), background=(100, 100, 100))
    assert masked[0, 0].tolist() == [100, 100, 100] and masked[1, 2].tolist() == [100, 100, 100]


def test_colorize_depth_equals_the_float64_formula_of_every_pixel():
    """The whole-map colouring against the formula on the valid pixels alone: NaN / inf pixels, a mask, a fixed
    range, a constant map."""
    rng = np.random.default_rng(6)
    depth = (rng.random((23, 41)) * 5 + 1).astype(np.float32)
    depth.reshape(-1)[rng.choice(depth.size, 12)] = [np.nan, np.inf, -np.inf] * 4
    mask = rng.random(depth.shape) < 0.6
    cases = [(depth, None, None, None), (depth, mask, None, None), (depth, mask, 2.0, 4.5),
             (np.full((5, 6), 3.0, np.float32), None, None, None)]
    for d, m, vmin, vmax in cases:
        x = np.asarray(d, np.float64)
        valid = np.isfinite(x) & (True if m is None else m)
        lo = x[valid].min() if vmin is None else vmin
        hi = x[valid].max() if vmax is None else vmax
        near = (hi - x[valid]) / (hi - lo) if hi > lo else np.full(int(valid.sum()), 0.5)
        u8 = np.floor(np.clip(near, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        expected = np.empty(x.shape + (3,), np.uint8)
        expected[:] = (7, 8, 9)
        expected[valid] = cv2.applyColorMap(u8[:, None], cv2.COLORMAP_INFERNO)[:, 0, ::-1]
        assert np.array_equal(colorize_depth(d, m, vmin, vmax, background=(7, 8, 9)), expected)


def test_colorize_normals_equals_the_float64_formula_of_every_pixel():
    """The block-wise colouring (cache-sized float64 blocks) against the formula on the whole map at once: random
    normals with NaN, inf and out-of-range components, a mask, widths that leave a short last block."""
    rng = np.random.default_rng(5)
    for shape in ((31, 4096, 3), (7, 5, 3)):
        n = rng.normal(scale=0.7, size=shape).astype(np.float32)
        n.reshape(-1)[rng.choice(n.size, 40)] = [np.nan, np.inf, -np.inf, 3.0, -2.0] * 8
        mask = rng.random(shape[:2]) < 0.7
        for m, bg in ((None, (0, 0, 0)), (mask, (10, 20, 30))):
            x = np.asarray(n, np.float64)
            expected = np.floor((np.clip(np.nan_to_num(x), -1.0, 1.0) + 1.0) * 127.5 + 0.5).astype(np.uint8)
            invalid = ~np.isfinite(x).all(-1) | (False if m is None else ~m)
            expected[invalid] = bg
            assert np.array_equal(colorize_normals(n, mask=m, background=bg), expected)


# ----------------------------------------------------------------------------------------------------------- panels

def test_side_by_side():
    a = np.zeros((10, 20, 3), np.uint8)
    b = np.full((20, 10), 200, np.uint8)
    out = side_by_side([a, b])
    assert out.shape == (20, 50, 3) and (out[:, 40:] == 200).all()
    assert side_by_side([a, b], height=5).shape == (5, 10 + 3, 3)
    titled = side_by_side([a, b], titles=["left", "right"], height=200)
    assert titled.shape[0] > 200 and titled.shape[1] == 500
    bar = titled[: titled.shape[0] - 200]
    assert (bar[:, :400] > 128).any() and (bar[:, 400:] > 128).any()  # text drawn in each title bar
    with pytest.raises(ValueError, match="titles"):
        side_by_side([a], titles=["x", "y"])
