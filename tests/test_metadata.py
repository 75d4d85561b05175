"""Keypoint/class metadata and the documented 308 -> 133 / 17 conversions, against facts from the official configs."""

from __future__ import annotations

import numpy as np

from opensapiens.metadata import convert_keypoints, goliath_half_body, keypoint_set, seg_classes


def test_layouts_and_flip_maps():
    g, wb, coco = keypoint_set(308), keypoint_set("wholebody"), keypoint_set("coco")
    assert (g.num_keypoints, wb.num_keypoints, coco.num_keypoints) == (308, 133, 17)
    assert g.names[41] == "right_wrist" and g.names[62] == "left_wrist" and g.names[69] == "neck"
    assert g.names[70] == "center_of_glabella" and g.names[307] == "r_border_of_pupil_midpoint_2"
    for ks in (g, wb, coco):
        flip = np.array(ks.flip_indices)
        assert (flip[flip] == np.arange(len(flip))).all()  # an involution
        for i, j in enumerate(flip):  # body/hand/foot names mirror left <-> right (face names use other rules)
            a, b = ks.names[i], ks.names[j]
            if a.startswith("left_"):
                assert b == "right_" + a[len("left_"):]
    assert sorted(len(v) for v in g.groups.values()) == [6, 7, 17, 20, 20, 238]
    assert g.sigmas[70:] == (0.01,) * 238 and g.sigmas[69] == 0.079  # face default sigma, neck
    upper, lower = goliath_half_body()
    assert len(upper) == 51 and lower == tuple(range(9, 21))
    assert len(g.skeleton) == 65 and len(coco.skeleton) == 19


def test_308_to_17_and_133_by_name():
    rng = np.random.default_rng(0)
    kp = rng.uniform(0, 100, (2, 308, 2)).astype(np.float32)
    sc = rng.uniform(0.1, 1, (2, 308)).astype(np.float32)
    g, wb, coco = keypoint_set(308), keypoint_set(133), keypoint_set(17)

    k17, s17 = convert_keypoints(kp, sc, 308, 17)
    for j, name in enumerate(coco.names):
        assert np.array_equal(k17[:, j], kp[:, g.index(name)]) and np.array_equal(s17[:, j], sc[:, g.index(name)])
    assert np.array_equal(k17[:, 9], kp[:, 62])  # COCO left_wrist <- Goliath 62

    k133, s133 = convert_keypoints(kp, sc, "goliath", "wholebody")
    mapped = [j for j, n in enumerate(wb.names) if n in g.names]
    assert len(mapped) == 53  # body 17, feet 6, finger joints 2-4 of each finger
    for j in mapped:
        assert np.array_equal(k133[:, j], kp[:, g.index(wb.names[j])])
    unmapped = sorted(set(range(133)) - set(mapped))
    assert (s133[:, unmapped] == 0).all() and (k133[:, unmapped] == 0).all()
    assert "face-0" in [wb.names[j] for j in unmapped] and "left_hand_root" in [wb.names[j] for j in unmapped]

    # 133 -> 17 agrees with 308 -> 17 through 133
    k17b, s17b = convert_keypoints(k133, s133, 133, 17)
    assert np.array_equal(k17b, k17) and np.array_equal(s17b, s17)


def test_seg_classes_and_flip_lut():
    c = seg_classes("goliath")
    assert c.num_classes == 28 and c.names[0] == "Background" and c.names[21] == "Torso"
    assert c.class_weight[0] == 0.1 and c.palette[0] == (50, 50, 50)
    lut = c.flip_lut()
    for a, b in c.flip_pairs:
        assert c.names[a].replace("Left", "Right") == c.names[b]
        assert lut[a] == b and lut[b] == a
    assert lut[0] == 0 and lut[21] == 21 and lut[255] == 255
