"""Submitting batches ahead of their results (``Predictor.submit``, ``run_batch``): same results, right order, right
files blamed, and on CUDA no read of an output before the model that writes it has finished."""

from __future__ import annotations

import json
import threading
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from test_predictors import INPUT, Stand_in, _dot_heatmaps, _image_with_dots, _red_logits

from opensapiens.inference import batch, video_job
from opensapiens.inference.predictors import DepthPredictor, NormalPredictor, PosePredictor, SegPredictor
from opensapiens.inference.results import SegResult
from opensapiens.inference.streams import Pending

from conftest import make_official_state


@pytest.mark.parametrize("chunk", [1, 2, 3])
def test_pose_people_in_several_chunks_come_back_in_order(chunk):
    """Three people over two images in chunks of 1, 2 and 3 crops (each chunk decoded while the next runs, the last
    one in ``result()``): every person's keypoints at its own dot, heatmaps in the same order."""
    predictor = PosePredictor(Stand_in("pose", 17, _dot_heatmaps), input_size=INPUT, batch_size=chunk)
    dots_a, dots_b = [(60.3, 70.7), (200.5, 40.2)], [(33.0, 150.4)]
    img_a, img_b = _image_with_dots(180, 260, dots_a), _image_with_dots(220, 90, dots_b)
    boxes = [np.array([[30, 30, 95, 120], [170, 5, 235, 80]], np.float32), np.array([[5, 100, 70, 210]], np.float32)]
    res_a, res_b = predictor.submit([img_a, img_b], boxes=boxes, return_heatmaps=True).result()
    for res, dots in ((res_a, dots_a), (res_b, dots_b)):
        assert res.heatmaps.shape == (len(dots), 17, INPUT[0] // 4, INPUT[1] // 4)
        for person, (x, y) in enumerate(dots):
            assert np.abs(res.keypoints[person] - np.array([x, y])).max() < 0.6, (chunk, person)
            peak = np.unravel_index(res.heatmaps[person, 0].argmax(), res.heatmaps.shape[-2:])
            assert res.scores[person, 0] == pytest.approx(res.heatmaps[person, 0][peak], abs=1e-6)


def test_depth_and_normals_masked_by_the_seg_predictors_submitted_batch():
    """Without given masks the seg predictor's batch is submitted beside the model's and its foreground, read in
    ``result()``, masks the normals: the same mask as the seg predictor's own result."""
    img = np.full((90, 70, 3), 10, np.uint8)
    img[20:60, 15:50, 0] = 250
    seg = SegPredictor(Stand_in("seg", 2, _red_logits), input_size=INPUT)
    fixed = Stand_in("normal", 3, lambda x: torch.tensor([0.0, 3.0, 4.0]).view(1, 3, 1, 1).expand(
        x.shape[0], 3, x.shape[2], x.shape[3]).clone())
    normals = NormalPredictor(fixed, seg=seg, input_size=INPUT).submit([img, img[::-1].copy()]).result()
    for res, image in zip(normals, (img, img[::-1])):
        fg = seg(np.ascontiguousarray(image)).foreground
        assert fg.sum() > 500 and (res.mask == fg).all()
        assert np.allclose(res.normals[fg], [0.0, 0.6, 0.8], atol=1e-5) and (res.normals[~fg] == 0).all()
    depth = DepthPredictor(Stand_in("depth", 1, lambda x: x[:, :1] * 0 + 1), seg=seg, input_size=INPUT)(img)
    assert (depth.mask == seg(img).foreground).all()


def test_depth_uploads_the_images_once_for_itself_and_its_seg_predictor(monkeypatch):
    """The seg predictor that masks depth gets the images already on the device (each upload stages a 1080p image in
    pinned memory on the host: twice per image before)."""
    from opensapiens.inference import predictors, streams

    staged = []
    real = streams.upload_images
    monkeypatch.setattr(predictors, "upload_images", lambda images, device: staged.append(
        [isinstance(im, np.ndarray) for im in images]) or real(images, device))
    img = np.full((90, 70, 3), 10, np.uint8)
    img[20:60, 15:50, 0] = 250
    seg = SegPredictor(Stand_in("seg", 2, _red_logits), input_size=INPUT)
    depth = DepthPredictor(Stand_in("depth", 1, lambda x: x[:, :1] * 0 + 1), seg=seg, input_size=INPUT)
    result = depth.predict_batch([img, img])
    assert [sum(s) for s in staged] == [2, 0, 0]  # host arrays once; the seg and depth models get tensors
    assert (result[0].mask == seg(img).foreground).all() and result[0].mask.sum() > 500


def test_images_that_are_not_rgb_uint8_are_refused_before_they_are_staged():
    from opensapiens.inference.streams import upload_images

    for bad, what in ((np.zeros((8, 6, 3), np.float32), "float32"), (np.zeros((8, 6), np.uint8), r"\(8, 6\)")):
        with pytest.raises(ValueError, match=f"image 1: expected an RGB uint8 array.*{what}"):
            upload_images([np.zeros((8, 6, 3), np.uint8), bad], torch.device("cpu"))


def _pngs(folder, n):
    paths = []
    for i in range(n):
        paths.append(folder / f"{i:02d}.png")
        Image.fromarray(np.full((8, 6, 3), i, np.uint8)).save(paths[-1])
    return paths


def test_run_batch_submits_the_next_batch_before_reading_results_and_blames_the_right_files(tmp_path):
    """Each batch is submitted before the one before it is read back; a batch whose submit raises and one whose
    result raises are reported as failed, file by file, and every other image is written."""
    paths = _pngs(tmp_path, 10)
    events = []

    class Seg:
        task = "seg"

        def submit(self, images):
            k = int(images[0][0, 0, 0]) // 2  # batch number: pixel value = image index, batches of 2
            events.append(f"submit {k}")
            if k == 1:
                raise RuntimeError("out of memory")

            def finish():
                events.append(f"result {k}")
                if k == 3:
                    raise RuntimeError("device lost")
                return [SegResult(np.full(im.shape[:2], k, np.uint8), ("a",) * 5) for im in images]

            return Pending(None, finish)

    out = tmp_path / "out"
    report = batch.run_batch(Seg(), paths, out, batch_size=2, workers=0, progress=False)
    assert events == ["submit 0", "submit 1", "result 0", "submit 2", "submit 3", "result 2", "submit 4",
                      "result 3", "result 4"]
    assert sorted(p.name for p, _ in report.failed) == ["02.png", "03.png", "06.png", "07.png"]
    assert all("out of memory" in e for p, e in report.failed if p.name in ("02.png", "03.png"))
    assert all("device lost" in e for p, e in report.failed if p.name in ("06.png", "07.png"))
    assert sorted(p.name for p in report.done) == ["00.png", "01.png", "04.png", "05.png", "08.png", "09.png"]
    for name, k in (("00", 0), ("05", 2), ("08", 4)):
        assert (np.array(Image.open(out / f"{name}_seg.png")) == k).all()


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="the side streams are CUDA's"))])
def test_results_of_batches_submitted_ahead_match_one_at_a_time(device):
    """On CUDA the stand-in models write their outputs only after a long GPU sleep: results read on the post stream
    must wait for them (a missed event reads zeros), batches submitted three ahead must match one-at-a-time results,
    and uploads on the side stream must land before the model reads them. (On the CPU: the same checks, in order.)"""
    def slow(fn):
        def forward(x):  # the stand-ins compute on the host; the output is written after ~10 ms of GPU time
            result = fn(x.cpu()).to(x.device)
            out = torch.zeros_like(result)
            if x.is_cuda:
                torch.cuda._sleep(20_000_000)
            return out.copy_(result)
        return forward

    rng = np.random.default_rng(0)
    rects, dots, boxes = [], [], []
    for k in range(6):
        im = np.full((400 + 10 * k, 300, 3), 10, np.uint8)
        im[..., 1] = rng.integers(0, 40, im.shape[:2])
        rect = im.copy()
        rect[40 + 30 * k : 220 + 20 * k, 30 + 10 * k : 200, 0] = 250
        rects.append(rect)
        dot = (60.0 + 20 * k, 100.0 + 15 * k)
        dots.append(dot)
        boxes.append(np.array([[dot[0] - 40, dot[1] - 55, dot[0] + 35, dot[1] + 50]], np.float32))
    with_dots = [_image_with_dots(im.shape[0], im.shape[1], [d]) for im, d in zip(rects, dots)]
    seg = SegPredictor(Stand_in("seg", 2, slow(_red_logits)).to(device), input_size=INPUT, batch_size=2)
    pose = PosePredictor(Stand_in("pose", 17, slow(_dot_heatmaps)).to(device), input_size=INPUT, batch_size=1)
    runs = {"seg": (seg, rects, [{}] * 3),
            "pose": (pose, with_dots, [{"boxes": boxes[k : k + 2]} for k in range(0, 6, 2)])}
    for task, (predictor, images, kwargs) in runs.items():
        batches = [images[k : k + 2] for k in range(0, 6, 2)]
        alone = [predictor.predict_batch(b, **kw) for b, kw in zip(batches, kwargs)]
        submitted = [predictor.submit(b, **kw) for b, kw in zip(batches, kwargs)]
        ahead = [p.result() for p in submitted]
        for k, (x, y) in enumerate(zip(sum(alone, []), sum(ahead, []))):
            if task == "seg":
                assert (x.labels == (rects[k][..., 0] > 128)).mean() > 0.97, k  # the rectangle, not zeros
                assert (x.labels == y.labels).all(), k
            else:
                assert np.abs(x.keypoints[0] - np.array(dots[k])).max() < 0.6, k  # the dot, not zeros
                assert np.allclose(x.keypoints, y.keypoints, atol=1e-4) and np.allclose(x.scores, y.scores), k


class BlankSeg:
    """A seg predictor stand-in: every pixel background, at once."""

    task = "seg"
    class_names = ("background",)

    def submit(self, images):
        results = [SegResult(np.zeros(im.shape[:2], np.uint8), ("background",)) for im in images]
        return Pending(None, lambda: results)


def test_video_frames_written_on_threads_are_encoded_in_frame_order(tmp_path, monkeypatch):
    """``run_video`` writes frames' outputs and draws their pictures on writer threads; the early frames finish last
    here, and the video must still get its pictures in frame order, every frame once."""
    import time

    frames = [np.full((8, 6, 3), k, np.uint8) for k in range(12)]
    made = _fake_video(monkeypatch, frames)

    def slow_for_early_frames(task, folder, stem, image, result, **kwargs):
        time.sleep(0.01 * (len(frames) - int(image[0, 0, 0])))
        return []

    monkeypatch.setattr(video_job, "write_result", slow_for_early_frames)

    done = video_job.run_video(BlankSeg(), tmp_path / "v.mp4", tmp_path / "out", batch_size=4, progress=False,
                               writers=4)
    encoded = [int(p[0, 0, 0]) for p in made[0].pictures]  # the left panel is the frame itself
    assert done == len(frames) and encoded == list(range(len(frames)))


def test_a_pose_videos_pictures_are_the_drawn_frames_a_dense_ones_side_by_side(tmp_path, monkeypatch):
    """As the images' pictures: pose drawn on the frame (the frame's size), seg beside the frame (twice as wide);
    encoded on one thread in frame order, with x264's veryfast preset."""
    from opensapiens.inference.results import PoseResult
    from opensapiens.metadata import keypoint_set

    frames = [np.full((8, 6, 3), k, np.uint8) for k in range(5)]
    made = _fake_video(monkeypatch, frames)
    coco = keypoint_set("coco")

    class Pose:
        task, keypoint_set = "pose", coco

        def submit(self, images):
            results = [PoseResult(np.zeros((0, 17, 2)), np.zeros((0, 17)), np.zeros((0, 4)), np.zeros(0), "coco")
                       for _ in images]
            return Pending(None, lambda: results)

    for predictor, width in ((Pose(), 6), (BlankSeg(), 12)):
        video_job.run_video(predictor, tmp_path / "v.mp4", tmp_path / predictor.task, batch_size=2, progress=False)
        writer = made[-1]
        assert writer.options == {"preset": "veryfast"} and writer.threads == {"opensapiens-encode_0"}
        assert [(p.shape, int(p[-1, 0, 0])) for p in writer.pictures] == [((8, width, 3), k) for k in range(5)]


def test_pin_leaves_what_it_cannot_pin_as_it_is():
    from opensapiens.inference.streams import pin

    floats, tensor = np.zeros((4, 4, 3), np.float32), torch.zeros(4, 4, 3, dtype=torch.uint8)
    assert pin(floats) is floats and pin(tensor) is tensor


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="page-locked memory is CUDA's")


@CUDA
def test_pinned_images_are_uploaded_from_where_they_are(monkeypatch):
    from opensapiens.inference.streams import pin, upload_images

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (5, 7, 3), dtype=np.uint8),
              np.ascontiguousarray(rng.integers(0, 256, (4, 6, 3), dtype=np.uint8))[:, ::-1]]  # a strided view
    images[0].setflags(write=False)  # as np.frombuffer gives: pinned without torch's non-writable warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pinned = [pin(im) for im in images]
    assert all(p.is_pinned() for p in pinned)
    assert all(np.array_equal(p.numpy(), im) for p, im in zip(pinned, images))
    empty = torch.empty

    def no_staging(*args, **kwargs):
        assert not kwargs.get("pin_memory"), "a pinned image was staged again"
        return empty(*args, **kwargs)

    monkeypatch.setattr(torch, "empty", no_staging)
    uploaded = upload_images(pinned, torch.device("cuda"))
    torch.cuda.current_stream().synchronize()
    assert all(u.is_cuda and np.array_equal(u.cpu().numpy(), im) for u, im in zip(uploaded, images))


@CUDA
def test_run_batch_on_cuda_pins_on_the_readers_and_writes_what_staging_in_submit_writes(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    paths = []
    for i, (h, w) in enumerate(((70, 50), (64, 96), (33, 40))):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(paths[-1])
    model, _ = make_official_state("seg", 5)
    seen_by_model, seen_by_writers = [], []

    class Recording(SegPredictor):
        def submit(self, images, **kwargs):
            seen_by_model.extend(images)
            return super().submit(images, **kwargs)

    write_result = batch.write_result

    def recording_writer(task, out_dir, stem, image, *args, **kwargs):
        seen_by_writers.append(image)
        return write_result(task, out_dir, stem, image, *args, **kwargs)

    monkeypatch.setattr(batch, "write_result", recording_writer)
    predictor = Recording(model.cuda(), input_size=(64, 48), batch_size=2)
    batch.run_batch(predictor, paths, tmp_path / "pinned", batch_size=2, workers=2, progress=False)
    assert len(seen_by_model) == 3 and all(isinstance(im, torch.Tensor) and im.is_pinned() for im in seen_by_model)
    assert len(seen_by_writers) == 3 and all(isinstance(im, np.ndarray) for im in seen_by_writers)
    monkeypatch.setattr(batch, "pin", lambda image: image)  # staged in submit, as before the readers pinned
    batch.run_batch(predictor, paths, tmp_path / "staged", batch_size=2, workers=2, progress=False)
    assert all(isinstance(im, np.ndarray) for im in seen_by_model[3:])
    for p in paths:
        pinned, staged = (np.array(Image.open(tmp_path / d / f"{p.stem}_seg.png")) for d in ("pinned", "staged"))
        assert pinned.shape == staged.shape == np.array(Image.open(p)).shape[:2]
        assert np.array_equal(pinned, staged)


class _Tagged:
    """Seg stand-in whose labels are the ``tags`` it is given, one per image."""

    task = "seg"

    def __init__(self):
        self.batches = []

    def submit(self, images, tags):
        self.batches.append([int(im[0, 0, 0]) for im in images])
        results = [SegResult(np.full(im.shape[:2], t, np.uint8), ("a",) * 5) for im, t in zip(images, tags)]
        return Pending(None, lambda: results)


def test_run_batch_fails_only_the_images_whose_keyword_arguments_fail(tmp_path):
    """A ``predict_kwargs`` that raises for one image (an unreadable mask file) fails that image, reported; the others
    of its batch are predicted with their own arguments. One that raises only for the batch fails the batch."""
    paths = _pngs(tmp_path, 6)  # pixel value = index

    def tags(batch_paths, images):
        for path in batch_paths:
            if path.name in ("01.png", "04.png"):
                raise ValueError(f"mask of {path.name} is unreadable")
        return {"tags": [10 * int(im[0, 0, 0]) for im in images]}

    seg, out = _Tagged(), tmp_path / "out"
    report = batch.run_batch(seg, paths, out, batch_size=3, workers=0, progress=False, predict_kwargs=tags)
    assert seg.batches == [[0, 2], [3, 5]]
    assert [(p.name, e) for p, e in report.failed] == [
        ("01.png", f"{paths[1]}: ValueError: mask of 01.png is unreadable"),
        ("04.png", f"{paths[4]}: ValueError: mask of 04.png is unreadable")]
    assert sorted(p.name for p in report.done) == ["00.png", "02.png", "03.png", "05.png"]
    for k in (0, 2, 3, 5):
        assert (np.array(Image.open(out / f"{k:02d}_seg.png")) == 10 * k).all()

    def batch_only(batch_paths, images):
        if len(batch_paths) > 1:
            raise RuntimeError("too many at once")
        return {"tags": [1] * len(images)}

    report = batch.run_batch(_Tagged(), paths[:4], tmp_path / "out2", batch_size=2, workers=0, progress=False,
                             predict_kwargs=batch_only)
    assert not report.done and [p.name for p, _ in report.failed] == ["00.png", "01.png", "02.png", "03.png"]
    assert all(e.endswith("RuntimeError: too many at once") for _, e in report.failed)


def test_batch_sizes_below_one_are_refused(tmp_path):
    paths = _pngs(tmp_path, 2)
    for size in (0, -1):
        with pytest.raises(ValueError, match=f"batch_size must be at least 1, got {size}"):
            batch.run_batch(_Tagged(), paths, tmp_path / "out", batch_size=size, workers=0, progress=False)
        with pytest.raises(ValueError, match=f"batch_size must be at least 1, got {size}"):
            video_job.run_video(_Tagged(), tmp_path / "v.mp4", tmp_path / "out", batch_size=size, progress=False)


def test_unique_stems_fall_back_to_the_parent_then_the_extension():
    from pathlib import Path

    paths = [Path("dup/photo.jpg"), Path("dup/photo.png"), Path("other/photo.jpg"), Path("a/x.png"),
             Path("b/x.png"), Path("solo.mp4")]
    assert batch.unique_stems(paths) == ["photo_jpg", "photo_png", "other_photo", "a_x", "b_x", "solo"]
    with pytest.raises(ValueError, match="same output names: photo_jpg"):
        batch.unique_stems([Path("x/a/photo.jpg"), Path("y/a/photo.jpg")])


class _Seg0:
    """Seg stand-in: background everywhere."""

    task = "seg"
    class_names = ("background",)

    def submit(self, images):
        results = [SegResult(np.zeros(im.shape[:2], np.uint8), ("background",)) for im in images]
        return Pending(None, lambda: results)


def _fake_video(monkeypatch, frames, fps=10.0):
    """``run_video``'s reads of a video served from ``frames``; returns the VideoWriters it makes (recorded)."""
    from types import SimpleNamespace

    import opensapiens.io as io

    monkeypatch.setattr(io, "video_info", lambda path: SimpleNamespace(num_frames=len(frames), fps=fps))
    monkeypatch.setattr(io, "iter_video_frames", lambda path, step=1, times=False: (
        (k, frame, k / (fps or 30)) if times else (k, frame) for k, frame in enumerate(frames)))
    made = []

    class Writer:
        def __init__(self, path, fps, **options):
            made.append(self)
            self.path, self.fps, self.options, self.frames, self.state = path, fps, options, 0, "open"
            self.pictures, self.threads, self.size = [], set(), None

        def write(self, picture):
            self.size = self.size or picture.shape[:2]  # as VideoWriter: the first frame sets it
            self.frames += 1
            self.pictures.append(picture.copy())
            self.threads.add(threading.current_thread().name)

        def close(self):
            self.state = "closed"

        def abort(self):
            self.state = "aborted"

    monkeypatch.setattr(io, "VideoWriter", Writer)
    return made


def test_a_features_video_writes_its_frames_and_no_picture_video(tmp_path, monkeypatch):
    """Features have no picture: a video writer opened for them got no frame and failed every features video."""
    from opensapiens.inference.results import FeatureResult

    made = _fake_video(monkeypatch, [np.full((8, 6, 3), k, np.uint8) for k in range(5)])

    class Features:
        task = "features"

        def submit(self, images):
            results = [FeatureResult(np.full((4, 1, 1), im[0, 0, 0], np.float32)) for im in images]
            return Pending(None, lambda: results)

    assert video_job.run_video(Features(), tmp_path / "v.mp4", tmp_path / "out", batch_size=2, progress=False) == 5
    assert made == []
    assert [float(np.load(tmp_path / "out" / "v" / f"frame_{k:06d}_features.npy")[0, 0, 0]) for k in range(5)] == [
        0, 1, 2, 3, 4]


def test_a_stream_whose_frame_size_changes_midway_keeps_its_first_picture_size(tmp_path, monkeypatch):
    frames = [np.full((8, 6, 3), 10, np.uint8)] * 3 + [np.full((10, 16, 3), 200, np.uint8)] * 2
    made = _fake_video(monkeypatch, frames)
    assert video_job.run_video(_Seg0(), tmp_path / "v.mp4", tmp_path / "out", batch_size=2, progress=False) == 5
    assert json.loads((tmp_path / "out" / "v" / "seg_classes.json").read_text()) == {"class_names": ["background"]}
    writer, = made
    assert writer.state == "closed" and [p.shape for p in writer.pictures] == [(8, 12, 3)] * 5  # side by side
    assert writer.pictures[-1][0, 0].tolist() == [200, 200, 200]  # the later frames, scaled


def test_a_new_run_of_a_video_drops_the_earlier_runs_record_and_extra_frames(tmp_path, monkeypatch):
    """A run that stops midway must not pass for the finished run before it (``--resume`` would keep a mix of two
    runs' frames), and a shorter video's run must not leave the longer one's last frames beside its own."""
    out = tmp_path / "out"
    (out / "v").mkdir(parents=True)
    (out / "v" / "frame_000000.json").write_text("{}")  # another task's output in the same folder: kept
    _fake_video(monkeypatch, [np.zeros((8, 6, 3), np.uint8)] * 5)
    assert video_job.run_video(_Seg0(), tmp_path / "v.mp4", out, batch_size=2, progress=False) == 5
    assert video_job.video_finished("seg", out, "v", vis=False)  # (the stand-in writer writes no file)
    _fake_video(monkeypatch, [np.zeros((8, 6, 3), np.uint8)] * 2)
    assert video_job.run_video(_Seg0(), tmp_path / "v.mp4", out, batch_size=2, progress=False) == 2
    assert sorted(p.name for p in (out / "v").glob("frame_*")) == [
        "frame_000000.json", "frame_000000_seg.png", "frame_000001_seg.png"]

    class Failing(_Seg0):
        def submit(self, images):
            raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        video_job.run_video(Failing(), tmp_path / "v.mp4", out, batch_size=2, progress=False)
    assert not video_job.video_finished("seg", out, "v", vis=False)


def test_a_no_vis_run_does_not_pass_for_one_with_pictures_when_an_older_picture_video_is_there(tmp_path,
                                                                                                monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "v_seg.mp4").write_bytes(b"an older run's picture video")
    _fake_video(monkeypatch, [np.zeros((8, 6, 3), np.uint8)] * 3)
    assert video_job.run_video(_Seg0(), tmp_path / "v.mp4", out, vis=False, progress=False) == 3
    assert video_job.video_finished("seg", out, "v", vis=False)
    assert not video_job.video_finished("seg", out, "v", vis=True)
    assert not (out / "v_seg.mp4").exists()  # it showed the outputs this run replaced


def test_a_video_without_a_frame_rate_gets_a_30_fps_picture_video(tmp_path, monkeypatch):
    made = _fake_video(monkeypatch, [np.zeros((8, 6, 3), np.uint8)] * 3, fps=0.0)
    assert video_job.run_video(_Seg0(), tmp_path / "v.mp4", tmp_path / "out", progress=False) == 3
    assert [(w.fps, w.frames, w.state) for w in made] == [(30.0, 3, "closed")]


@pytest.mark.parametrize("fail_at", [1, 2])
def test_a_video_whose_inference_fails_raises_that_error_and_keeps_the_finished_video(tmp_path, fail_at):
    """A failed batch (the first, or a later one) must end the video with its own error, not "no frames were
    written", and the picture video written so far must not replace the one a finished run left."""
    pytest.importorskip("av")
    from opensapiens.io import VideoWriter, iter_video_frames

    video = tmp_path / "v.mp4"
    with VideoWriter(video, fps=10) as writer:
        for k in range(6):
            writer.write(np.full((8, 6, 3), 40 * k, np.uint8))
    out = tmp_path / "out"
    out.mkdir()
    (out / "v_seg.mp4").write_bytes(b"a finished run's video")

    class Flaky(_Seg0):
        calls = 0

        def submit(self, images):
            self.calls += 1
            if self.calls == fail_at:
                raise RuntimeError("CUDA out of memory (simulated)")
            return super().submit(images)

    with pytest.raises(RuntimeError, match="out of memory"):
        video_job.run_video(Flaky(), video, out, batch_size=2, progress=False)
    assert (out / "v_seg.mp4").read_bytes() == b"a finished run's video"
    assert sorted(p.name for p in out.iterdir()) == ["v", "v_seg.mp4"]  # no temporary left either
    assert not list((out / "v").glob("video_*.json"))  # not recorded as finished
    video_job.run_video(_Seg0(), video, out, batch_size=2, progress=False)  # and a run that finishes replaces it
    assert len(list(iter_video_frames(out / "v_seg.mp4"))) == 6


def test_read_ahead_yields_in_order_raises_after_the_items_before_and_stops_its_thread():
    from opensapiens.inference.streams import read_ahead

    threads, closed = [], []

    def source(n, fail_at=None):
        try:
            for k in range(n):
                threads.append(threading.current_thread().name)
                if k == fail_at:
                    raise OSError(f"bad frame {k}")
                yield k
        finally:
            closed.append(n)

    assert list(read_ahead(source(7), depth=2, name="reader")) == list(range(7))
    assert set(threads) == {"reader"} and closed == [7]
    got = []
    with pytest.raises(OSError, match="bad frame 3"):
        for k in read_ahead(source(9, fail_at=3)):
            got.append(k)
    assert got == [0, 1, 2]
    closed.clear()
    threads.clear()
    early = read_ahead(source(1000), depth=2)
    assert next(early) == 0
    early.close()  # the consumer stops: the producer stops at its next item and its source is closed
    assert closed == [1000] and len(threads) <= 4  # the one taken, two queued, one waiting to be
    assert not any(t.name == "opensapiens-read-ahead" for t in threading.enumerate())


def test_run_video_decodes_frames_on_a_reader_thread(tmp_path, monkeypatch):
    import opensapiens.io as io

    frames = [np.full((8, 6, 3), k, np.uint8) for k in range(6)]
    _fake_video(monkeypatch, frames)
    decoders = set()

    def frames_on_a_thread(path, step=1, times=False):
        for k, frame in enumerate(frames):
            decoders.add(threading.current_thread().name)
            yield (k, frame, k / 10) if times else (k, frame)

    monkeypatch.setattr(io, "iter_video_frames", frames_on_a_thread)

    assert video_job.run_video(BlankSeg(), tmp_path / "v.mp4", tmp_path / "out", batch_size=4, progress=False) == 6
    assert decoders == {"opensapiens-video-read"}
