"""The bundled multi-task model: it ships, loads, gives the documented outputs, and the demo runs."""

from __future__ import annotations

import json

import numpy as np
import torch

import opensapiens
from opensapiens.checkpoints import load_model
from opensapiens.checkpoints.hub import BUNDLED
from opensapiens.cli.main import main
from opensapiens.models.multitask import SapiensMultiTask


def test_bundled_file_is_small_and_loads():
    assert BUNDLED.is_file() and BUNDLED.stat().st_size <= 25 * 2**20
    model = load_model("sapiens-nano")
    assert isinstance(model, SapiensMultiTask) and set(model.tasks) == {"pose", "seg", "depth", "normal"}
    H, W = model.config.input_size
    with torch.no_grad():
        out = model(torch.randn(1, 3, H, W))
    assert out["pose"].shape == (1, 308, H // 4, W // 4)
    assert out["seg"].shape == (1, 28, H // 2, W // 2)
    assert out["depth"].shape == (1, 1, H, W)
    assert out["normal"].shape == (1, 3, H // 2, W // 2)
    # one task of it loads as an ordinary single-task model sharing the same weights
    seg = load_model("sapiens-nano", task="seg")
    with torch.no_grad():
        assert torch.allclose(seg(torch.ones(1, 3, H, W)), model(torch.ones(1, 3, H, W))["seg"], atol=1e-5)


def test_bundled_predictor_results_have_image_shapes():
    predictor = opensapiens.load("sapiens-nano", device="cpu")
    image = np.random.default_rng(0).integers(0, 255, (150, 100, 3), dtype=np.uint8)
    res = predictor(image, boxes=np.array([[10, 10, 90, 140]], np.float32))
    assert res["pose"].keypoints.shape == (1, 308, 2) and res["pose"].scores.shape == (1, 308)
    assert res["seg"].labels.shape == (150, 100) and res["seg"].labels.dtype == np.uint8
    assert res["depth"].depth.shape == (150, 100)
    n = res["normal"].normals
    assert n.shape == (150, 100, 3)
    fg = res["normal"].mask
    if fg.any():
        assert np.allclose(np.linalg.norm(n[fg], axis=-1), 1.0, atol=1e-4)


def test_bundled_predictor_batches_submitted_ahead_match_single_images():
    """``submit`` on the multi-task predictor (one backbone pass, then pose crops): two batches queued before either
    is read back give each image's results as a call on that image alone (the seg and depth maps from the shared
    pass, the pose from the crops; the images differ in size)."""
    predictor = opensapiens.load("sapiens-nano", device="cpu", batch_size=2)
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 255, (120 + 20 * k, 90 + 10 * k, 3), dtype=np.uint8) for k in range(3)]
    first, second = predictor.submit(images[:2]), predictor.submit(images[2:])
    ahead = first.result() + second.result()
    for image, res in zip(images, ahead):
        alone = predictor(image)
        assert (res["seg"].labels == alone["seg"].labels).mean() > 0.999  # (batched GEMMs may round differently)
        assert np.allclose(res["depth"].depth, alone["depth"].depth, atol=1e-5)
        assert np.allclose(res["normal"].normals, alone["normal"].normals, atol=1e-5)
        assert np.allclose(res["pose"].keypoints, alone["pose"].keypoints, atol=1e-3)


def test_demo_command_writes_pictures_and_metrics(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--n", "1", "--size", "128x96"]) == 0
    out = capsys.readouterr().out
    assert "seg mIoU" in out and "normal mean error" in out and "pose AP (body 17, OKS)" in out
    assert (tmp_path / "synthetic_00_demo.jpg").is_file()
    doc = json.loads((tmp_path / "synthetic_00.json").read_text())
    assert doc["keypoint_set"] == "goliath" and len(doc["people"][0]["keypoints"]) == 308 * 3
    assert np.load(tmp_path / "synthetic_00_normal.npy").shape == (128, 96, 3)


def test_demo_names_a_video_as_one_rather_than_as_an_unreadable_picture(tmp_path, capsys):
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"\x00\x00\x00\x18ftypmp42")
    assert main(["demo", str(video), "--out", str(tmp_path / "out")]) == 1
    assert f"{video} is a video; the demo takes images (opensapiens predict runs videos)" in capsys.readouterr().err


def test_bundled_predictor_uploads_each_image_once_unless_a_detector_must_see_it(monkeypatch):
    """The pose crops come from the dense pass's upload (each upload stages the whole image in pinned memory on CUDA);
    a detector still gets the caller's arrays, the type a user's own detector was written for."""
    from opensapiens.inference import multitask_predictor, predictors, streams

    host_arrays = []
    real = streams.upload_images
    for module in (multitask_predictor, predictors):  # the dense pass's upload, the pose predictor's
        monkeypatch.setattr(module, "upload_images", lambda images, device: host_arrays.append(
            sum(isinstance(im, np.ndarray) for im in images)) or real(images, device))
    image = np.random.default_rng(0).integers(0, 255, (150, 100, 3), dtype=np.uint8)
    predictor = opensapiens.load("sapiens-nano", device="cpu")
    res = predictor(image)
    assert host_arrays == [1, 0] and res["pose"].keypoints.shape == (1, 308, 2)
    seen = []
    predictor.pose.detector = lambda im: seen.append(type(im)) or (np.array([[10, 10, 90, 140]], np.float32),
                                                                   np.ones(1, np.float32))
    host_arrays.clear()
    res = predictor(image)
    assert seen == [np.ndarray] and host_arrays == [1, 1] and res["pose"].boxes.tolist() == [[10, 10, 90, 140]]
