"""OpenPose's layouts from Sapiens keypoints (``metadata.openpose``), their JSON, their ControlNet-style picture and
``predict --openpose``. The expected layouts are written out here by name, from OpenPose's documentation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from opensapiens.cli.main import main
from opensapiens.metadata import keypoint_set
from opensapiens.metadata.openpose import to_openpose
from opensapiens.visualize import OPENPOSE_COLORS, draw_openpose

from conftest import make_official_state

# OpenPose's BODY_25 (output order), each point as the source names whose mean it is
BODY_25 = [("nose",), ("left_shoulder", "right_shoulder"), ("right_shoulder",), ("right_elbow",), ("right_wrist",),
           ("left_shoulder",), ("left_elbow",), ("left_wrist",), ("left_hip", "right_hip"), ("right_hip",),
           ("right_knee",), ("right_ankle",), ("left_hip",), ("left_knee",), ("left_ankle",), ("right_eye",),
           ("left_eye",), ("right_ear",), ("left_ear",), ("left_big_toe",), ("left_small_toe",), ("left_heel",),
           ("right_big_toe",), ("right_small_toe",), ("right_heel",)]
BODY_18 = [BODY_25[i] for i in (0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18)]
FINGERS = ["thumb", "forefinger", "middle_finger", "ring_finger", "pinky_finger"]


def _hand(side: str, source: str) -> list[tuple[str, ...] | None]:
    """OpenPose's 21 hand points: wrist, then each finger base to tip, as names of ``source``."""
    if source == "coco":
        return [None] * 21
    base = "_third_joint" if source == "goliath" else "1"
    wrist = f"{side}_wrist" if source == "goliath" else f"{side}_hand_root"
    joints = [f"{side}_{f}{base}" if j == 1 else f"{side}_{f}{j}" for f in FINGERS for j in (1, 2, 3, 4)]
    return [(wrist,)] + [(n,) for n in joints]


def _expected(keypoints: np.ndarray, scores: np.ndarray, names: tuple[str, ...], points: list) -> np.ndarray:
    """(N, P, 3) in float64: the mean of the named points, the least of their scores; zeros where a name is missing."""
    out = np.zeros((keypoints.shape[0], len(points), 3))
    for j, src in enumerate(points):
        if src is None or any(n not in names for n in src):
            continue
        ids = [names.index(n) for n in src]
        out[:, j, :2] = keypoints[:, ids].astype(np.float64).mean(1)
        out[:, j, 2] = scores[:, ids].min(1)
    return out


@pytest.mark.parametrize("source", ["goliath", "wholebody", "coco"])
@pytest.mark.parametrize("body", ["body18", "body25"])
def test_openpose_layouts_take_each_point_from_its_named_source(source, body):
    kps = keypoint_set(source)
    rng = np.random.default_rng(1)
    keypoints = rng.uniform(0, 500, (3, kps.num_keypoints, 2)).astype(np.float32)
    scores = rng.uniform(0, 1, (3, kps.num_keypoints)).astype(np.float32)
    people = to_openpose(keypoints, scores, source, body=body)
    body_points = BODY_18 if body == "body18" else BODY_25
    if source == "coco":  # no feet
        body_points = [p if all(n in kps.names for n in p) else None for p in body_points]
    np.testing.assert_allclose(people.body, _expected(keypoints, scores, kps.names, body_points), rtol=1e-6)
    for side, hand in (("left", people.left_hand), ("right", people.right_hand)):
        np.testing.assert_allclose(hand, _expected(keypoints, scores, kps.names, _hand(side, source)), rtol=1e-6)
    face = [(f"face-{i}",) for i in range(68)] + [None, None] if source == "wholebody" else [None] * 70
    np.testing.assert_allclose(people.face, _expected(keypoints, scores, kps.names, face), rtol=1e-6)


def test_openpose_json_writes_each_part_flat_and_low_scores_as_not_detected():
    kps = keypoint_set("wholebody")
    keypoints = np.full((1, 133, 2), 7.0, np.float32)
    scores = np.full((1, 133), 0.9, np.float32)
    scores[0, kps.index("nose")] = 0.1
    doc = to_openpose(keypoints, scores, "wholebody").to_json(640, 480, threshold=0.3)
    assert (doc["canvas_width"], doc["canvas_height"]) == (640, 480)
    (person,) = doc["people"]
    lengths = {k: len(v) for k, v in person.items() if k.endswith("_2d")}
    assert lengths == {"pose_keypoints_2d": 54, "face_keypoints_2d": 210, "hand_left_keypoints_2d": 63,
                       "hand_right_keypoints_2d": 63}
    assert person["pose_keypoints_2d"][:6] == [0, 0, 0, 7.0, 7.0, pytest.approx(0.9)]  # nose below 0.3; the neck
    assert person["face_keypoints_2d"][-6:] == [0] * 6  # the pupils: no source
    assert person["person_id"] == [-1]  # untracked


def test_openpose_refuses_keypoints_of_another_set():
    with pytest.raises(ValueError, match="308 keypoints"):
        to_openpose(np.zeros((1, 17, 2)), np.zeros((1, 17)), "goliath")
    with pytest.raises(ValueError, match="body must be"):
        to_openpose(np.zeros((1, 17, 2)), np.zeros((1, 17)), "coco", body="body_25")


def test_the_openpose_picture_draws_visible_limbs_in_openposes_colours_and_nothing_else():
    kps = keypoint_set("coco")
    keypoints = np.zeros((1, 17, 2), np.float32)
    scores = np.zeros((1, 17), np.float32)
    for name, xy in (("left_shoulder", (60, 50)), ("right_shoulder", (20, 50)), ("left_elbow", (90, 90))):
        keypoints[0, kps.index(name)] = xy
        scores[0, kps.index(name)] = 0.9
    keypoints[0, kps.index("left_wrist")] = (90, 30)  # under the threshold: neither it nor its limb is drawn
    scores[0, kps.index("left_wrist")] = 0.2
    picture = draw_openpose(to_openpose(keypoints, scores, "coco"), 120, 160, stick_width=3)
    neck, right_shoulder, left_shoulder = (40, 50), (20, 50), (60, 50)  # BODY_18 points 1, 2, 5
    np.testing.assert_array_equal(picture[neck[1], neck[0]], OPENPOSE_COLORS[1])  # joints on top, full colour
    np.testing.assert_array_equal(picture[right_shoulder[1], right_shoulder[0]], OPENPOSE_COLORS[2])
    np.testing.assert_array_equal(picture[left_shoulder[1], left_shoulder[0]], OPENPOSE_COLORS[5])
    # limbs at 0.6 over black, halfway along them: neck-right shoulder is limb 0, left shoulder-left elbow limb 4
    np.testing.assert_array_equal(picture[50, 30], np.round(0.6 * np.array(OPENPOSE_COLORS[0])))
    np.testing.assert_array_equal(picture[70, 75], np.round(0.6 * np.array(OPENPOSE_COLORS[4])))
    assert not picture[25:35, 85:95].any()  # the wrist under the threshold
    drawn = picture.any(-1)
    ys, xs = np.nonzero(drawn)
    assert xs.min() >= 20 - 3 and xs.max() <= 90 + 3 and ys.min() >= 50 - 3 and ys.max() <= 90 + 3


def test_the_openpose_picture_draws_hands_and_the_face():
    kps = keypoint_set("wholebody")
    keypoints = np.zeros((1, 133, 2), np.float32)
    scores = np.zeros((1, 133), np.float32)
    keypoints[0, kps.index("left_hand_root")], scores[0, kps.index("left_hand_root")] = (20, 20), 1
    keypoints[0, kps.index("left_thumb1")], scores[0, kps.index("left_thumb1")] = (60, 20), 1
    keypoints[0, kps.index("face-30")], scores[0, kps.index("face-30")] = (100, 60), 1
    picture = draw_openpose(to_openpose(keypoints, scores, "wholebody"), 100, 140, stick_width=4)
    np.testing.assert_array_equal(picture[20, 20], (0, 0, 255))  # hand joints blue
    np.testing.assert_array_equal(picture[20, 60], (0, 0, 255))
    np.testing.assert_array_equal(picture[20, 40], (255, 0, 0))  # its first bone: hue 0, red
    np.testing.assert_array_equal(picture[60, 100], (255, 255, 255))  # face points white
    image = np.full((100, 140, 3), 50, np.uint8)  # on a picture instead of black
    on_image = draw_openpose(to_openpose(keypoints, scores, "wholebody"), 100, 140, image=image, stick_width=4)
    np.testing.assert_array_equal(on_image[90, 5], (50, 50, 50))
    np.testing.assert_array_equal(on_image[60, 100], (255, 255, 255))


def test_predict_openpose_writes_the_json_and_picture_of_the_people_in_stem_json(tmp_path, capsys):
    from PIL import Image

    from opensapiens.checkpoints import save_model

    model, _ = make_official_state("pose", 17)
    ckpt = save_model(model, tmp_path / "pose.safetensors")
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 60, 3), dtype=np.uint8)).save(photos / "a.png")
    out = tmp_path / "out"
    argv = ["predict", "--task", "pose", "--checkpoint", str(ckpt), "--input-size", "64x48", "--workers", "0",
            str(photos), "--out", str(out), "--resume"]
    assert main(argv) == 0 and not (out / "a_openpose.json").exists()
    capsys.readouterr()
    assert main(argv + ["--openpose"]) == 0  # resume: the OpenPose files are missing, so it runs again
    assert "1 done, 0 skipped" in capsys.readouterr().out
    coco = json.loads((out / "a.json").read_text())["people"][0]["keypoints"]
    flat = np.array(coco).reshape(17, 3)
    kps = keypoint_set("coco")
    doc = json.loads((out / "a_openpose.json").read_text())
    assert (doc["canvas_width"], doc["canvas_height"]) == (60, 90)
    body = np.array(doc["people"][0]["pose_keypoints_2d"]).reshape(18, 3)
    expected = _expected(flat[None, :, :2], flat[None, :, 2], kps.names, BODY_18)[0]
    shown = expected[:, 2] >= 0.3  # predict writes points under 0.3 as not detected
    assert 0 < shown.sum() < 18  # (this model's scores put points on both sides)
    np.testing.assert_allclose(body, np.where(shown[:, None], expected, 0), atol=2e-3)
    assert np.array(Image.open(out / "a_openpose.png")).shape == (90, 60, 3)
    capsys.readouterr()
    assert main(argv + ["--openpose"]) == 0 and "0 done, 1 skipped" in capsys.readouterr().out
    assert main(["predict", "--task", "seg", "--checkpoint", str(ckpt), str(photos), "--out", str(out),
                 "--openpose"]) == 2
    assert "--openpose is for --task pose" in capsys.readouterr().err


def test_a_pose_video_with_openpose_writes_each_frames_files_and_resume_asks_for_them(tmp_path, capsys):
    pytest.importorskip("av")
    from opensapiens.checkpoints import save_model
    from opensapiens.io import VideoWriter

    video = tmp_path / "walk.mp4"
    with VideoWriter(video, fps=10) as writer:
        for i in range(3):
            writer.write(np.full((64, 48, 3), 40 * i, np.uint8))
    model, _ = make_official_state("pose", 17)
    ckpt = save_model(model, tmp_path / "pose.safetensors")
    out = tmp_path / "out"
    argv = ["predict", "--task", "pose", "--checkpoint", str(ckpt), "--input-size", "64x48", str(video), "--out",
            str(out), "--no-vis", "--resume"]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(argv + ["--openpose"]) == 0 and "1 done, 0 skipped" in capsys.readouterr().out
    for i in range(3):
        doc = json.loads((out / "walk" / f"frame_{i:06d}_openpose.json").read_text())
        (coco,) = json.loads((out / "walk" / f"frame_{i:06d}.json").read_text())["people"]
        assert [p["person_id"] for p in doc["people"]] == [[coco["track_id"]]]  # the track, as OpenPose's person id
        assert (out / "walk" / f"frame_{i:06d}_openpose.png").is_file()
    assert json.loads((out / "walk" / "video_pose.json").read_text())["openpose"] is True
    assert main(argv + ["--openpose"]) == 0 and "0 done, 1 skipped" in capsys.readouterr().out


def test_openpose_json_writes_non_finite_points_as_not_detected_like_the_picture():
    kps = keypoint_set("coco")
    keypoints = np.full((1, 17, 2), 5.0, np.float32)
    scores = np.full((1, 17), 0.9, np.float32)
    scores[0, kps.index("nose")] = np.nan
    keypoints[0, kps.index("right_eye")] = (np.inf, 5.0)
    keypoints[0, kps.index("left_eye")] = np.nan
    keypoints[0, kps.index("left_ear")] = (-3.0, -4.0)  # left of the image, and hidden by its score
    scores[0, kps.index("left_ear")] = 0.1
    body = to_openpose(keypoints, scores, "coco").to_json(10, 10)["people"][0]["pose_keypoints_2d"]
    for point in (0, 14, 15, 17):  # nose, right eye, left eye, left ear in BODY_18
        assert body[3 * point:3 * point + 3] == [0, 0, 0]
        assert all(math.copysign(1, v) == 1 for v in body[3 * point:3 * point + 3])  # no -0.0
    assert json.dumps(body).count("NaN") == 0 and "Infinity" not in json.dumps(body)


def test_the_openpose_picture_dims_all_limbs_once_then_puts_every_joint_on_top():
    """The annotator's passes: limbs opaque in limb order (a later limb over an earlier one, whoever's), the whole
    layer at 0.6; then joints at full colour, so one person's limb never dims another's joint."""
    kps = keypoint_set("coco")

    def person(points):
        kp, sc = np.zeros((17, 2), np.float32), np.zeros(17, np.float32)
        for name, xy in points.items():
            kp[kps.index(name)], sc[kps.index(name)] = xy, 0.9
        return kp, sc

    first = person({"left_shoulder": (60, 40), "right_shoulder": (20, 40), "left_elbow": (60, 80)})  # limbs 0, 1, 4
    second = person({"left_shoulder": (110, 60), "right_shoulder": (80, 60), "right_elbow": (30, 60)})  # 0, 1, 2
    third = person({"left_shoulder": (110, 80), "right_shoulder": (90, 80), "right_elbow": (30, 80)})  # its upper
    # arm passes over the first's left elbow (60, 80)
    people = [first, second, third]
    keypoints, scores = np.stack([p[0] for p in people]), np.stack([p[1] for p in people])
    picture = draw_openpose(to_openpose(keypoints, scores, "coco"), 100, 120, stick_width=3)
    # the first's left elbow under the third's upper arm: the joint on top, at full colour
    np.testing.assert_array_equal(picture[80, 60], OPENPOSE_COLORS[6])
    # the first's left upper arm (limb 4, vertical at x = 60) crosses the second's right upper arm (limb 2,
    # horizontal at y = 60): limb 4 is filled later and shows, at 0.6 of its colour
    np.testing.assert_array_equal(picture[60, 60], np.round(0.6 * np.array(OPENPOSE_COLORS[4])))
    np.testing.assert_array_equal(picture[60, 45], np.round(0.6 * np.array(OPENPOSE_COLORS[2])))  # limb 2 alone
