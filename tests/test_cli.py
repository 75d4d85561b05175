"""The command line end to end, as a user runs it: folders with a corrupt file, resume, conversions."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from opensapiens.checkpoints import load_model, save_model
from opensapiens.cli.main import main

from conftest import TINY, make_official_state


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, size in (("a", (90, 60)), ("b", (40, 130))):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(folder / f"{name}.png")
    Image.fromarray(rng.integers(0, 255, (50, 50), dtype=np.uint8)).save(folder / "gray.jpg")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return folder


def _checkpoint(tmp_path, task, out=None):
    model, _ = make_official_state(task, out)
    return save_model(model, tmp_path / f"{task}.safetensors")


def _person_detector(path) -> str:
    """A small torchvision detector with random weights biased toward people (so that there are boxes to check),
    saved to ``path``; returns its architecture."""
    import torch
    import torchvision

    arch = "fasterrcnn_mobilenet_v3_large_320_fpn"
    torch.manual_seed(0)
    detector = torchvision.models.get_model(arch, weights=None, weights_backbone=None, num_classes=91)
    with torch.no_grad():
        detector.roi_heads.box_predictor.cls_score.bias[1] += 5.0
    torch.save(detector.state_dict(), path)
    return arch


def test_predict_seg_folder_with_corrupt_file_then_resume(tmp_path, photos, capsys):
    ckpt = _checkpoint(tmp_path, "seg", 28)
    out = tmp_path / "out"
    argv = ["predict", "--task", "seg", "--checkpoint", str(ckpt), "--input-size", "64x48", "--workers", "0",
            str(photos), "--out", str(out), "--raw"]
    assert main(argv) == 1  # the broken file fails the job at the end, after the others finished
    captured = capsys.readouterr()
    assert "broken.jpg" in captured.err and "3 done" in captured.out and "1 failed" in captured.out
    for stem, shape in (("a", (90, 60)), ("b", (40, 130)), ("gray", (50, 50))):
        labels = np.array(Image.open(out / f"{stem}_seg.png"))
        assert labels.shape == shape and labels.dtype == np.uint8 and labels.max() < 28
        assert (out / f"{stem}_seg.jpg").is_file()
        assert np.load(out / f"{stem}_seg_logits.npy").shape == (28, 32, 24)
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*"))
    mtime = (out / "a_seg.png").stat().st_mtime_ns
    assert main(argv + ["--resume"]) == 1
    assert "0 done, 3 skipped" in capsys.readouterr().out
    assert (out / "a_seg.png").stat().st_mtime_ns == mtime


@pytest.mark.parametrize("workers", [0, 4])
def test_batches_are_read_in_order_with_bad_files_reported(tmp_path, workers):
    """``run_batch``'s reader (threads since call 64): every file once, in input order, in batches of the asked size,
    each image as ``read_image`` reads it and each bad file as its message; a job that stops early leaves no reader."""
    import threading

    from opensapiens.inference.batch import _load
    from opensapiens.io.images import ImageReadError, read_image

    rng = np.random.default_rng(3)
    paths = []
    for i in range(11):
        path = tmp_path / f"{i:02d}.png"
        if i in (4, 9):
            path.write_bytes(b"not an image")
        else:
            Image.fromarray(rng.integers(0, 255, (20 + i, 30, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    batches = list(_load(paths, 3, workers))
    assert [[i for i, _, _ in b] for b in batches] == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10]]
    for i, image, error in (item for b in batches for item in b):
        if i in (4, 9):
            assert image is None and error == str(pytest.raises(ImageReadError, read_image, paths[i]).value)
        else:
            assert error is None and np.array_equal(image, read_image(paths[i]))
    reader = _load(paths, 2, workers)
    next(reader)
    reader.close()  # the job stopped after its first batch
    assert not [t for t in threading.enumerate() if t.name.startswith("opensapiens-read")]


def test_a_job_whose_writing_falls_behind_waits_instead_of_queueing_every_image(tmp_path, monkeypatch):
    """Each pending write holds its image and result; with writing stalled, ``run_batch`` must stop predicting once
    2 x batch_size + writers are pending (it queued every image before: a 10k-image job held them all in memory)."""
    import threading
    import time

    from opensapiens.inference import batch
    from opensapiens.inference.results import SegResult
    from opensapiens.inference.streams import Pending

    paths = []
    for i in range(60):
        paths.append(tmp_path / f"{i:02d}.png")
        Image.fromarray(np.full((8, 6, 3), i, np.uint8)).save(paths[-1])
    predicted, stalled = [], threading.Event()

    class Seg:
        task = "seg"

        def submit(self, images):
            predicted.extend(images)
            results = [SegResult(np.zeros(im.shape[:2], np.uint8), ("background",), None) for im in images]
            return Pending(None, lambda: results)

    monkeypatch.setattr(batch, "write_result", lambda *args, **kwargs: stalled.wait(60) and [])
    reports = []
    job = threading.Thread(target=lambda: reports.append(
        batch.run_batch(Seg(), paths, tmp_path / "out", batch_size=2, workers=0, progress=False, writers=3)))
    job.start()
    seen = -1
    while seen != len(predicted):  # until predicting stops (it stops only when it waits for the writers)
        seen = len(predicted)
        time.sleep(0.5)
    try:
        # the pending bound + the batch handed to the writers since + the batch submitted before that hand-over
        bound = 2 * 2 + 3 + 2 + 2
        assert len(predicted) <= bound, len(predicted)
    finally:
        stalled.set()
        job.join(60)
    assert len(reports[0].done) == 60 and not reports[0].failed


def test_predict_pose_with_detections_and_depth_with_masks(tmp_path, photos):
    ckpt = _checkpoint(tmp_path, "pose", 17)
    dets = [{"image_id": 1, "file_name": "a.png", "category_id": 1, "bbox": [5, 10, 30, 60], "score": 0.95},
            {"image_id": 1, "file_name": "a.png", "category_id": 1, "bbox": [20, 5, 30, 40], "score": 0.8}]
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    out = tmp_path / "pose"
    assert main(["predict", "--task", "pose", "--checkpoint", str(ckpt), "--input-size", "64x48", "--workers", "0",
                 "--detections", str(tmp_path / "dets.json"), "--flip", str(photos / "a.png"), "--out",
                 str(out)]) == 0
    doc = json.loads((out / "a.json").read_text())
    assert doc["keypoint_set"] == "coco" and len(doc["people"]) == 2
    assert doc["people"][0]["bbox"] == pytest.approx([5, 10, 30, 60])
    kp = np.array(doc["people"][0]["keypoints"]).reshape(17, 3)
    assert np.isfinite(kp).all()
    assert (out / "a_pose.jpg").is_file()

    depth_ckpt = _checkpoint(tmp_path, "depth")
    masks = tmp_path / "masks"
    masks.mkdir()
    m = np.zeros((90, 60), np.uint8)
    m[20:70, 10:50] = 255
    Image.fromarray(m).save(masks / "a.png")
    out = tmp_path / "depth"
    assert main(["predict", "--task", "depth", "--checkpoint", str(depth_ckpt), "--input-size", "64x48",
                 "--workers", "0", "--masks", str(masks), str(photos / "a.png"), "--out", str(out)]) == 0
    assert np.load(out / "a_depth.npy").shape == (90, 60)


def test_convert_official_to_safetensors_and_back(tmp_path):
    import torch

    model, official = make_official_state("normal")
    torch.save({"state_dict": official, "meta": {"epoch": 1}}, tmp_path / "n.pth")
    st = tmp_path / "n.safetensors"
    assert main(["convert", str(tmp_path / "n.pth"), str(st), "--num-heads", str(TINY.num_heads)]) == 0
    converted = load_model(st)  # no hints needed: the config travels in the file
    assert converted.config.arch.num_heads == TINY.num_heads and converted.config.patch_padding == 2
    x = torch.randn(1, 3, 64, 48)
    with torch.no_grad():
        assert torch.allclose(converted(x), model(x), atol=1e-5)
    back = tmp_path / "back.pth"
    assert main(["convert", str(st), str(back), "--official"]) == 0
    sd = torch.load(back, weights_only=True)["state_dict"]
    assert sd.keys() == official.keys() and all(torch.equal(sd[k], official[k]) for k in sd)


def test_models_lists_official_names(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "sapiens-pose-308-1b" in out and "facebook/sapiens-seg-2b" in out
    assert any(line.startswith("sapiens-nano ") and "bundled" in line for line in out.splitlines())


def test_predict_reports_missing_inputs(tmp_path, capsys):
    ckpt = _checkpoint(tmp_path, "seg", 28)
    assert main(["predict", "--task", "seg", "--checkpoint", str(ckpt), str(tmp_path / "nothing_here"),
                 "--out", str(tmp_path / "o")]) == 2
    assert "nothing_here" in capsys.readouterr().err


def test_predict_on_a_video_writes_frames_and_a_picture_video(tmp_path, capsys):
    pytest.importorskip("av")  # the optional video extra (installed with [test]; absent on the GPU image)
    from opensapiens.io import iter_video_frames, video_info

    video = _video(tmp_path / "clip.mp4", n=5)
    ckpt = _checkpoint(tmp_path, "seg", 28)
    out = tmp_path / "out"
    assert main(["predict", "--task", "seg", "--checkpoint", str(ckpt), "--input-size", "64x48", "--batch-size", "2",
                 str(video), "--out", str(out)]) == 0
    assert "clip.mp4: 5 frames" in capsys.readouterr().out
    frames = sorted((out / "clip").glob("frame_*_seg.png"))
    assert [f.name for f in frames] == [f"frame_{i:06d}_seg.png" for i in range(5)]
    assert np.array(Image.open(frames[0])).shape == (64, 48)
    pictures = list(iter_video_frames(out / "clip_seg.mp4"))
    assert len(pictures) == 5 and pictures[0][1].shape[0] == 64
    manifest = json.loads((out / "clip" / "video_seg.json").read_text())
    fps = video_info(video).fps
    assert manifest["frames"] == 5 and manifest["frame_times"] == [[i, pytest.approx(i / fps)] for i in range(5)]
    raw_out = tmp_path / "raw"  # --raw: each frame's logits beside its labels, at the model's output size
    assert main(["predict", "--task", "seg", "--checkpoint", str(ckpt), "--input-size", "64x48", "--batch-size", "2",
                 str(video), "--out", str(raw_out), "--raw", "--no-vis"]) == 0
    logits = sorted((raw_out / "clip").glob("frame_*_seg_logits.npy"))
    assert len(logits) == 5 and np.load(logits[0]).shape == (28, 32, 24)


def test_predict_pose_on_a_video_writes_track_ids_unless_told_not_to(tmp_path, capsys):
    pytest.importorskip("av")
    video = _video(tmp_path / "walk.mp4")
    ckpt = _checkpoint(tmp_path, "pose", 17)
    for flags, tracked in (([], True), (["--no-track"], False)):
        out = tmp_path / f"out{tracked}"
        assert main(["predict", "--task", "pose", "--checkpoint", str(ckpt), "--input-size", "64x48", str(video),
                     "--out", str(out), "--no-vis", *flags]) == 0
        people = [json.loads((out / "walk" / f"frame_{i:06d}.json").read_text())["people"] for i in range(3)]
        assert all(len(p) == 1 for p in people)  # the whole frame, one box
        assert all(("track_id" in p[0]) == tracked for p in people)


def test_predict_step_takes_every_nth_frame_and_resume_redoes_a_video_run_with_another_step(tmp_path, capsys):
    pytest.importorskip("av")
    from opensapiens.io import iter_video_frames, video_info

    video = _video(tmp_path / "clip.mp4", n=7)
    out = tmp_path / "out"
    argv = _seg_argv(tmp_path, video) + ["--resume"]
    assert main(argv + ["--step", "3"]) == 0
    assert sorted(p.name for p in (out / "clip").glob("frame_*_seg.png")) == [
        f"frame_{i:06d}_seg.png" for i in (0, 3, 6)]
    assert len(list(iter_video_frames(out / "clip_seg.mp4"))) == 3
    assert video_info(out / "clip_seg.mp4").fps == pytest.approx(10 / 3, rel=1e-3)
    capsys.readouterr()
    assert main(argv + ["--step", "3"]) == 0 and "0 done, 1 skipped" in capsys.readouterr().out
    assert main(argv) == 0 and "1 done, 0 skipped" in capsys.readouterr().out  # every frame now: not that run
    assert len(list((out / "clip").glob("frame_*_seg.png"))) == 7


def test_predict_says_detections_do_not_apply_to_videos(tmp_path, capsys):
    pytest.importorskip("av")
    video = _video(tmp_path / "walk.mp4", n=2)
    (tmp_path / "dets.json").write_text(json.dumps([{"image_id": 1, "file_name": "walk.png", "category_id": 1,
                                                       "bbox": [0, 0, 10, 10], "score": 0.9}]))
    assert main(["predict", "--task", "pose", "--checkpoint", str(_checkpoint(tmp_path, "pose", 17)), "--input-size",
                 "64x48", "--device", "cpu", "--no-vis", "--detections", str(tmp_path / "dets.json"), str(video),
                 "--out", str(tmp_path / "out")]) == 0
    assert "warning: --detections apply to images only: the 1 video(s) run on whole frames" in \
        capsys.readouterr().err


@pytest.mark.parametrize("task, extra, message", [
    ("seg", ["--flip"], "--flip is for --task pose, not seg"),
    ("depth", ["--detections", "d.json", "--no-track"], "--detections is for --task pose; --no-track is for --task "
     "pose, not depth"),
    ("seg", ["--det-threshold", "0.7"], "--det-threshold is for --task pose, not seg"),
    ("normal", ["--ply"], "--ply is for --task pointmap, not normal"),
    ("pose", ["--masks", "m"], "--masks is for --task depth / normal / pointmap, not pose"),
    ("seg", ["--seg-checkpoint", "s.pth"], "--seg-checkpoint is for --task depth / normal / pointmap, not seg"),
    ("pose", ["--resize", "pad"], "--resize is for --task depth / features / normal / pointmap / seg, not pose"),
    ("pose", ["--detector-arch", "fasterrcnn_mobilenet_v3_large_fpn"], "--detector-arch picks the --detector's model"),
])
def test_predict_refuses_options_its_task_would_ignore(tmp_path, photos, capsys, task, extra, message):
    """An option the task does not read would change nothing, silently: the run stops before loading anything."""
    assert main(["predict", "--task", task, "--checkpoint", str(tmp_path / "no.pth"), str(photos), "--out",
                 str(tmp_path / "out"), *extra]) == 2
    assert f"error: {message}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_predict_pose_with_detections_and_a_detector_runs_the_detector_on_the_videos(tmp_path, photos, capsys):
    """The detections file covers the images; the videos, which it cannot, get the detector's boxes."""
    pytest.importorskip("av")

    from opensapiens.inference.detector import PersonDetector
    from opensapiens.io.video import iter_video_frames

    arch = _person_detector(tmp_path / "det.pth")
    video = _video(tmp_path / "walk.mp4", n=2)
    (tmp_path / "dets.json").write_text(json.dumps([{"image_id": 1, "file_name": "a.png", "category_id": 1,
                                                       "bbox": [5, 6, 20, 30], "score": 0.9}]))
    assert main(["predict", "--task", "pose", "--checkpoint", str(_checkpoint(tmp_path, "pose", 17)),
                 "--input-size", "64x48", "--device", "cpu", "--no-vis", "--workers", "0", "--detections",
                 str(tmp_path / "dets.json"), "--detector", str(tmp_path / "det.pth"), "--detector-arch", arch,
                 "--det-threshold", "0.3", str(photos / "a.png"), str(video), "--out", str(tmp_path / "out")]) == 0
    assert "the 1 video(s) run on the --detector's boxes" in capsys.readouterr().err
    (person,) = json.loads((tmp_path / "out" / "a.json").read_text())["people"]
    assert person["bbox"] == pytest.approx([5, 6, 20, 30])
    _, frame = next(iter_video_frames(video))
    boxes, _ = PersonDetector(tmp_path / "det.pth", arch=arch, score_threshold=0.3)(frame)
    people = json.loads((tmp_path / "out" / "walk" / "frame_000000.json").read_text())["people"]
    assert len(people) == len(boxes) > 0
    for person, box in zip(people, boxes):
        assert person["bbox"] == pytest.approx([box[0], box[1], box[2] - box[0], box[3] - box[1]], abs=1e-3)


@pytest.mark.parametrize("flag", ["--detector", "--detector-weights"])
def test_predict_pose_with_a_detector_of_the_architecture_asked_for(tmp_path, photos, capsys, flag):
    """``--detector W --detector-arch A`` runs torchvision's A with local weights W: the people written are the
    boxes that detector finds (COCO xywh); the same weights under the default architecture are a clear error.
    ``--detector-weights W`` is the same option under curate's name for it."""

    from opensapiens.inference.detector import PersonDetector
    from opensapiens.io.images import read_image

    arch = _person_detector(tmp_path / "det.pth")
    ckpt = _checkpoint(tmp_path, "pose", 17)
    argv = ["predict", "--task", "pose", "--checkpoint", str(ckpt), "--input-size", "64x48", "--workers", "0",
            "--device", "cpu", flag, str(tmp_path / "det.pth"), "--det-threshold", "0.3", "--no-vis",
            str(photos / "a.png"), "--out", str(tmp_path / "out")]
    assert main([*argv, "--detector-arch", arch]) == 0
    boxes, _ = PersonDetector(tmp_path / "det.pth", arch=arch, score_threshold=0.3)(read_image(photos / "a.png"))
    people = json.loads((tmp_path / "out" / "a.json").read_text())["people"]
    assert len(people) == len(boxes) > 0
    for person, box in zip(people, boxes):
        assert person["bbox"] == pytest.approx([box[0], box[1], box[2] - box[0], box[3] - box[1]], abs=1e-3)
    capsys.readouterr()
    assert main(argv) == 2
    assert "do not fit torchvision's fasterrcnn_resnet50_fpn_v2" in capsys.readouterr().err


def test_threads_option_sets_torch_threads_and_rejects_zero(tmp_path):
    import torch

    before = torch.get_num_threads()
    try:
        assert main(["synth", "--n", "1", "--size", "64x48", "--seed", "3", "--out", str(tmp_path / "s"),
                     "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1
        with pytest.raises(SystemExit, match="--threads must be >= 1"):
            main(["synth", "--n", "1", "--out", str(tmp_path / "t"), "--threads", "0"])
    finally:
        torch.set_num_threads(before)


def test_predict_with_an_unknown_model_or_a_missing_file_is_a_clear_error(tmp_path, photos, capsys, monkeypatch):
    import torch

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    ckpt = _checkpoint(tmp_path, "pose", 17)
    cases = [  # (options, what the message must name)
        (["--task", "pose", "--checkpoint", str(ckpt), "--detector", "torchvision"], "could not download the COCO"),
        (["--task", "seg", "--checkpoint", "sapiens-seg-1bb"], "sapiens-seg-1bb: no such file"),
        (["--task", "depth", "--checkpoint", str(ckpt), "--seg-checkpoint", str(tmp_path / "nope.pth")], "nope.pth"),
        (["--task", "pose", "--checkpoint", str(ckpt), "--detections", str(tmp_path / "dets.json")], "dets.json"),
    ]
    for options, named in cases:
        assert main(["predict", *options, str(photos / "a.png"), "--device", "cpu", "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and named in err and "Traceback" not in err, err


@pytest.mark.parametrize("compiling", [True, False])
def test_predict_says_when_it_ends_only_after_the_models_compile(tmp_path, photos, capsys, monkeypatch, compiling):
    """On CUDA the head compiles in the background and a process waits for that compile at exit (it caches it): the
    CLI says so once every output is written, and its summary is out before the wait."""
    from types import SimpleNamespace

    from opensapiens.cli import predict
    from opensapiens.inference.predictors import load_predictor

    seg = load_predictor("seg", _checkpoint(tmp_path, "seg", 28), device="cpu", input_size=(64, 48))
    seg.model.background = SimpleNamespace(wait=lambda timeout=None: not compiling)  # as BackgroundCompile.wait
    monkeypatch.setattr(predict, "_load", lambda args: seg)
    assert main(["predict", "--task", "seg", "--checkpoint", "unused", str(photos / "a.png"), "--out",
                 str(tmp_path / "o")]) == 0
    captured = capsys.readouterr()
    assert "1 done" in captured.out and (tmp_path / "o" / "a_seg.png").is_file()
    assert ("the model's compile is still running" in captured.err) == compiling


def test_predict_fp8_without_fp8_hardware_is_a_clear_error(tmp_path, photos, capsys):
    ckpt = _checkpoint(tmp_path, "seg", 28)
    assert main(["predict", "--task", "seg", "--checkpoint", str(ckpt), str(photos / "a.png"), "--device", "cpu",
                 "--fp8", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "fp8" in err and "FP8 tensor cores" in err and "cpu" in err


@pytest.mark.parametrize("task, vis, expected", [("seg", True, 16), ("seg", False, 8), ("pose", True, 8),
                                                 ("depth", True, 16)])
def test_jobs_write_dense_pictures_on_up_to_16_threads_and_the_rest_on_up_to_8(tmp_path, monkeypatch, task, vis,
                                                                                expected):
    """Measured on a 16-core H200 host (``default_writers``): dense pictures are big GIL-free encodes that scale to
    16 threads; pose pictures are many small drawing calls that slow the thread feeding the GPU beyond 8."""
    from concurrent.futures import ThreadPoolExecutor

    from opensapiens.inference import batch
    from opensapiens.inference.predictors import DepthPredictor, PosePredictor, SegPredictor

    sizes = []

    class Recording(ThreadPoolExecutor):
        def __init__(self, max_workers=None, thread_name_prefix=""):
            if thread_name_prefix == "opensapiens-write":
                sizes.append(max_workers)
            super().__init__(max_workers, thread_name_prefix=thread_name_prefix)

    monkeypatch.setattr(batch, "ThreadPoolExecutor", Recording)
    monkeypatch.setattr(batch.os, "cpu_count", lambda: 32)
    Image.fromarray(np.zeros((20, 16, 3), np.uint8)).save(tmp_path / "a.png")
    kind = {"seg": (SegPredictor, 5), "depth": (DepthPredictor, 1), "pose": (PosePredictor, 17)}[task]
    model, _ = make_official_state(task, kind[1])
    batch.run_batch(kind[0](model, input_size=(64, 48)), [tmp_path / "a.png"], tmp_path / "out", vis=vis,
                    progress=False)
    monkeypatch.setattr(batch.os, "cpu_count", lambda: 4)
    batch.run_batch(kind[0](model, input_size=(64, 48)), [tmp_path / "a.png"], tmp_path / "out2", vis=vis,
                    progress=False)
    assert sizes == [expected, 4]  # never more than the cores


def _seg_argv(tmp_path, *inputs, out="out"):
    ckpt = tmp_path / "seg.safetensors"
    if not ckpt.is_file():
        _checkpoint(tmp_path, "seg", 28)
    return ["predict", "--task", "seg", "--checkpoint", str(ckpt), "--input-size", "64x48", "--workers", "0",
            "--device", "cpu", *map(str, inputs), "--out", str(tmp_path / out)]


def _video(path, n=3, size=(64, 48)):
    from opensapiens.io import VideoWriter

    rng = np.random.default_rng(5)
    with VideoWriter(path, fps=10) as writer:
        for _ in range(n):
            writer.write(rng.integers(0, 255, (*size, 3), dtype=np.uint8))
    return path


@pytest.mark.parametrize("size", ["0", "-1"])
def test_predict_refuses_a_batch_size_below_one(tmp_path, photos, capsys, size):
    with pytest.raises(SystemExit) as info:
        main(_seg_argv(tmp_path, photos / "a.png") + ["--batch-size", size])
    assert info.value.code == 2 and f"--batch-size: {size} must be at least 1" in capsys.readouterr().err


def test_predict_names_images_sharing_a_stem_by_their_extension_or_says_what_clashes(tmp_path, capsys):
    folder = tmp_path / "dup"
    folder.mkdir()
    Image.fromarray(np.zeros((20, 16, 3), np.uint8)).save(folder / "photo.jpg")
    Image.fromarray(np.zeros((24, 16, 3), np.uint8)).save(folder / "photo.png")
    assert main(_seg_argv(tmp_path, folder) + ["--no-vis"]) == 0
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["photo_jpg_seg.png", "photo_png_seg.png", "seg_classes.json"]
    assert np.array(Image.open(tmp_path / "out" / "photo_png_seg.png")).shape == (24, 16)  # each its own image
    for name in ("x", "y"):
        (tmp_path / name / "a").mkdir(parents=True)
        Image.fromarray(np.zeros((20, 16, 3), np.uint8)).save(tmp_path / name / "a" / "photo.jpg")
    capsys.readouterr()
    assert main(_seg_argv(tmp_path, tmp_path / "x/a/photo.jpg", tmp_path / "y/a/photo.jpg", out="o2")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: several inputs would write the same output names: photo_jpg") and "Traceback" \
        not in err


def test_predict_gives_videos_sharing_a_stem_with_each_other_or_an_image_their_own_outputs(tmp_path, capsys):
    pytest.importorskip("av")
    for folder, n in (("vids", 2), ("vids2", 3)):
        (tmp_path / folder).mkdir()
        _video(tmp_path / folder / "clip.mp4", n)
    Image.fromarray(np.zeros((20, 16, 3), np.uint8)).save(tmp_path / "vids" / "clip.png")
    assert main(_seg_argv(tmp_path, tmp_path / "vids", tmp_path / "vids2" / "clip.mp4")) == 0
    out = tmp_path / "out"
    assert len(list((out / "clip_mp4").glob("frame_*_seg.png"))) == 2  # vids/clip.mp4 and vids/clip.png
    assert len(list((out / "vids2_clip").glob("frame_*_seg.png"))) == 3
    assert (out / "clip_png_seg.png").is_file() and (out / "clip_mp4_seg.mp4").is_file()
    assert (out / "vids2_clip_seg.mp4").is_file()


def test_predict_resume_skips_a_finished_video(tmp_path, capsys):
    pytest.importorskip("av")
    video = _video(tmp_path / "walk.mp4")
    argv = _seg_argv(tmp_path, video) + ["--resume"]
    assert main(argv) == 0
    out = tmp_path / "out"
    assert json.loads((out / "walk" / "video_seg.json").read_text())["frames"] == 3
    mtime = (out / "walk_seg.mp4").stat().st_mtime_ns
    capsys.readouterr()
    assert main(argv) == 0
    assert "0 done, 1 skipped" in capsys.readouterr().out and (out / "walk_seg.mp4").stat().st_mtime_ns == mtime
    (out / "walk_seg.mp4").unlink()  # its picture video lost: not finished
    assert main(argv) == 0
    assert "1 done, 0 skipped" in capsys.readouterr().out and (out / "walk_seg.mp4").is_file()


def test_predict_pose_person_scores_include_their_detection_scores(tmp_path, photos):
    from opensapiens.inference.predictors import load_predictor
    from opensapiens.io import read_image

    ckpt = _checkpoint(tmp_path, "pose", 17)
    dets = [{"image_id": 1, "file_name": "a.png", "category_id": 1, "bbox": [5, 10, 30, 60], "score": 0.5}]
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    assert main(["predict", "--task", "pose", "--checkpoint", str(ckpt), "--input-size", "64x48", "--workers", "0",
                 "--device", "cpu", "--detections", str(tmp_path / "dets.json"), "--no-vis", str(photos / "a.png"),
                 "--out", str(tmp_path / "out")]) == 0
    person, = json.loads((tmp_path / "out" / "a.json").read_text())["people"]
    pose = load_predictor("pose", ckpt, device="cpu", input_size=(64, 48))
    alone = pose(read_image(photos / "a.png"), boxes=np.array([[5, 10, 35, 70]], np.float32))  # box score 1
    assert person["score"] == pytest.approx(0.5 * alone.to_coco(1)[0]["score"], rel=1e-5)


def test_predict_pose_finds_coco_detections_by_numeric_image_id_and_warns_when_none_match(tmp_path, photos, capsys):
    """COCO_val2017_detections_AP_H_70_person.json has integer image ids and no file names: 000000000139.jpg is
    image 139."""
    ckpt = _checkpoint(tmp_path, "pose", 17)
    coco = tmp_path / "coco"
    coco.mkdir()
    Image.open(photos / "a.png").save(coco / "000000000139.png")
    for ids, people in (((139, 7), 1), ((7,), 0)):
        dets = [{"image_id": i, "category_id": 1, "bbox": [5, 10, 30, 60], "score": 0.9} for i in ids]
        (tmp_path / "dets.json").write_text(json.dumps(dets))
        out = tmp_path / f"out{people}"
        assert main(["predict", "--task", "pose", "--checkpoint", str(ckpt), "--input-size", "64x48", "--workers",
                     "0", "--device", "cpu", "--detections", str(tmp_path / "dets.json"), "--no-vis", str(coco),
                     "--out", str(out)]) == 0
        found = json.loads((out / "000000000139.json").read_text())["people"]
        assert len(found) == people and all(p["bbox"] == pytest.approx([5, 10, 30, 60]) for p in found)
        assert all(p["image_id"] == 139 for p in found)  # COCO's number for its file, as pycocotools wants it
        assert ("warning: no input image matches an entry of" in capsys.readouterr().err) == (people == 0)


def test_predict_pose_raw_resume_skips_an_image_without_people(tmp_path, photos, capsys):
    ckpt = _checkpoint(tmp_path, "pose", 17)
    (tmp_path / "dets.json").write_text(json.dumps([{"image_id": 1, "file_name": "other.png", "category_id": 1,
                                                     "bbox": [5, 10, 30, 60], "score": 0.9}]))
    argv = ["predict", "--task", "pose", "--checkpoint", str(ckpt), "--input-size", "64x48", "--workers", "0",
            "--device", "cpu", "--detections", str(tmp_path / "dets.json"), "--raw", "--resume", "--no-vis",
            str(photos / "a.png"), "--out", str(tmp_path / "out")]
    assert main(argv) == 0
    assert np.load(tmp_path / "out" / "a_heatmaps.npy").shape == (0, 17, 16, 12)
    capsys.readouterr()
    assert main(argv) == 0
    assert "0 done, 1 skipped" in capsys.readouterr().out


def _normal_argv(tmp_path, masks, *inputs):
    ckpt = tmp_path / "normal.safetensors"
    if not ckpt.is_file():
        _checkpoint(tmp_path, "normal")
    return ["predict", "--task", "normal", "--checkpoint", str(ckpt), "--input-size", "64x48", "--workers", "0",
            "--device", "cpu", "--no-vis", "--masks", str(masks), *map(str, inputs), "--out", str(tmp_path / "out")]


def test_predict_with_an_unreadable_mask_fails_only_its_image(tmp_path, photos, capsys):
    masks = tmp_path / "masks"
    masks.mkdir()
    (masks / "a.png").write_bytes(b"not a png")
    assert main(_normal_argv(tmp_path, masks, photos / "a.png", photos / "b.png", photos / "gray.jpg")) == 1
    captured = capsys.readouterr()
    assert "2 done, 0 skipped (already finished), 1 failed" in captured.out
    assert f"failed: {photos / 'a.png'}: " in captured.err and "masks/a.png" in captured.err
    assert (tmp_path / "out" / "b_normal.npy").is_file() and not (tmp_path / "out" / "a_normal.npy").exists()


def test_predict_masks_count_any_non_zero_stored_value(tmp_path, photos):
    """A 16-bit label mask (person = 1) and a palette mask whose person index is drawn green: 8-bit RGB reading
    made both empty (normals zeroed everywhere)."""
    import cv2

    masks = tmp_path / "masks"
    masks.mkdir()
    person_a, person_b = np.zeros((90, 60), bool), np.zeros((40, 130), bool)
    person_a[20:70, 10:50], person_b[5:30, 40:100] = True, True
    cv2.imwrite(str(masks / "a.png"), person_a.astype(np.uint16))
    palette = Image.fromarray(person_b.astype(np.uint8), mode="P")
    palette.putpalette([0, 0, 0, 0, 200, 0] + [0] * 762)
    palette.save(masks / "b.png")
    assert main(_normal_argv(tmp_path, masks, photos / "a.png", photos / "b.png")) == 0
    for stem, person in (("a", person_a), ("b", person_b)):
        normals = np.load(tmp_path / "out" / f"{stem}_normal.npy")
        assert (normals[~person] == 0).all()
        assert np.allclose(np.linalg.norm(normals[person], axis=-1), 1, atol=1e-4), stem


def test_predict_with_a_mask_of_another_size_fails_only_its_image_naming_both_sizes(tmp_path, photos, capsys):
    masks = tmp_path / "masks"
    masks.mkdir()
    Image.fromarray(np.full((10, 10), 255, np.uint8)).save(masks / "a.png")
    Image.fromarray(np.full((40, 130), 255, np.uint8)).save(masks / "b.png")
    assert main(_normal_argv(tmp_path, masks, photos / "a.png", photos / "b.png")) == 1
    captured = capsys.readouterr()
    assert "1 done, 0 skipped (already finished), 1 failed" in captured.out
    assert f"mask {masks / 'a.png'} is 10x10 (HxW) but its image is 90x60" in captured.err
    assert (tmp_path / "out" / "b_normal.npy").is_file()


def test_predict_with_a_masks_folder_that_does_not_exist_is_a_clear_error(tmp_path, photos, capsys):
    assert main(_normal_argv(tmp_path, tmp_path / "no_masks", photos / "a.png")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no_masks" in err and not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["train", "pretrain"])
def test_resume_of_a_run_that_is_not_there_says_so(tmp_path, capsys, command):
    assert main([command, "--out", str(tmp_path / "typo"), "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --resume: no run to resume in {tmp_path / 'typo'}") and "Traceback" not in err


def test_pretraining_on_images_none_of_which_decode_is_one_line_of_error_from_its_loader_workers(tmp_path, capsys):
    (tmp_path / "bad").mkdir()
    for name in ("a.jpg", "b.png"):
        (tmp_path / "bad" / name).write_bytes(b"not an image")
    assert main(["pretrain", "--data", str(tmp_path / "bad"), "--arch", "nano", "--input-size", "64x48", "--steps",
                 "1", "--batch-size", "2", "--workers", "2", "--device", "cpu", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    err = err[err.index("error: "):]  # after the progress bar
    assert err.startswith("error: data slot 0 of 2: all 1 samples of its epoch 0 are undecodable")
    assert "Traceback" not in err and err.count("\n") == 1


@pytest.mark.parametrize("command", ["predict", "eval", "demo", "synth", "train", "pretrain", "curate", "bench"])
def test_a_device_this_machine_lacks_is_refused_as_the_options_are_read(command, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    for device, told in (("cuda", "cuda: this machine has no CUDA device"), ("cdua", "'cdua' is not a device")):
        with pytest.raises(SystemExit) as exit_:
            main([command, "--device", device])
        assert exit_.value.code == 2 and f"argument --device: {told}" in capsys.readouterr().err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(SystemExit):
        main([command, "--device", "cuda:2"])
    assert "cuda:2: this machine has 2 CUDA device(s), cuda:0 to cuda:1" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["predict", "train", "pretrain", "synth", "curate", "demo", "eval", "bench"])
def test_an_out_of_the_wrong_kind_is_refused_as_the_options_are_read(command, tmp_path, capsys):
    """A file where a folder goes (or the reverse for eval's and bench's JSON) used to surface as a traceback, for
    eval after every metric was computed."""
    file, folder = tmp_path / "taken.png", tmp_path / "folder"
    file.write_bytes(b"x")
    folder.mkdir()
    wants_file = command in ("eval", "bench")
    inside = file / "m.json"
    cases = [(folder, f"{folder} is a folder; --out names a file") if wants_file else
             (file, f"{file} is a file; --out names a folder"), (inside, f"{inside}: {file} is a file, not a folder")]
    extra = ["--task", "seg"] if command == "eval" else []
    for out, told in cases:
        with pytest.raises(SystemExit) as exit_:
            main([command, *extra, "--out", str(out)])
        assert exit_.value.code == 2 and f"argument --out: {told}" in capsys.readouterr().err


def test_predict_no_compile_leaves_torch_compile_out_of_the_fast_path(tmp_path, photos, monkeypatch):
    """``--no-compile`` reaches ``optimize_for_inference``: a short job on CUDA then has no background compile to
    wait for at its exit (on this CPU host the fast path is asked for explicitly to see what it is given)."""
    from opensapiens.inference import predictors

    given = []
    load = predictors.load_predictor

    def spy(*args, **kwargs):
        return load(*args, **{**kwargs, "optimize": True})

    def optimize(model, **kwargs):
        given.append(kwargs)
        return model

    monkeypatch.setattr(predictors, "load_predictor", spy)
    monkeypatch.setattr(predictors, "optimize_for_inference", optimize)
    ckpt = _checkpoint(tmp_path, "seg", 28)
    for extra in ([], ["--no-compile"]):
        assert main(["predict", "--task", "seg", "--checkpoint", str(ckpt), "--device", "cpu", "--no-vis",
                     str(photos / "a.png"), "--out", str(tmp_path / f"out{len(extra)}"), *extra]) == 0
    assert [g["compile"] for g in given] == [True, False]
    given.clear()  # the foreground model of --seg-checkpoint too
    assert main(["predict", "--task", "normal", "--checkpoint", str(_checkpoint(tmp_path, "normal")), "--device",
                 "cpu", "--no-vis", "--seg-checkpoint", str(ckpt), str(photos / "a.png"), "--out",
                 str(tmp_path / "normals"), "--no-compile"]) == 0
    assert [g["compile"] for g in given] == [False, False]
