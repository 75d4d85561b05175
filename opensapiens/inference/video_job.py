"""A video's frames through a predictor (``run_video``): each frame's outputs written as an image's
(``batch.write_result``, under ``out_dir/STEM/``), the pictures encoded into ``STEM_<task>.mp4`` in frame order, and
a manifest written last that marks the video finished (``video_finished``, for ``resume``)."""

from __future__ import annotations

import collections
import contextlib
import json
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from ..io.writers import save_json
from ..metadata import SEG_CLASSES_FILE, record_seg_classes
from ..visualize import side_by_side, visualize_result
from .batch import RAW_FLAG, default_writers, expected_outputs, model_input, write_result
from .predictors import Predictor
from .streams import read_ahead, submit_ahead
from .tracking import PoseTracker


def video_manifest(out_dir: Path, stem: str, task: str) -> Path:
    """Where ``run_video`` records a finished video: ``out_dir/STEM/video_<task>.json``."""
    return out_dir / stem / f"video_{task}.json"


def picture_video(out_dir: Path, stem: str, task: str) -> Path:
    """Where ``run_video`` writes a video's pictures: ``out_dir/STEM_<task>.mp4``."""
    return out_dir / f"{stem}_{task}.mp4"


def video_finished(task: str, out_dir: Path, stem: str, vis: bool = True, raw: bool = False, step: int = 1,
                   track: bool = True, openpose: bool = False, ply: bool = False) -> bool:
    """Whether ``run_video`` finished the video named ``stem`` for ``task`` (``resume``): its manifest, written last,
    says so for the same ``step`` (and, for pose, tracking), with the raw (OpenPose) outputs when ``raw``
    (``openpose``) asks for them, and,
    with ``vis``, its picture video exists."""
    try:
        manifest = json.loads(video_manifest(out_dir, stem, task).read_text())
    except (OSError, ValueError):
        return False
    if manifest.get("task") != task or (raw and not manifest.get("raw")) or manifest.get("step") != step:
        return False
    if task == "pose" and (manifest.get("track") != track or (openpose and not manifest.get("openpose"))):
        return False
    if task == "pointmap" and ply and not manifest.get("ply"):
        return False
    pictures = vis and task != "features"  # a --no-vis run's manifest: the .mp4 there is an older run's
    return not pictures or (bool(manifest.get("vis")) and picture_video(out_dir, stem, task).is_file())


def run_video(predictor: Predictor, path: Path, out_dir: Path, batch_size: int = 4, vis: bool = True,
              raw: bool = False, step: int = 1, progress: bool = True, writers: int | None = None,
              track: bool = True, stem: str | None = None, openpose: bool = False, ply: bool = False) -> int:
    """Run ``predictor`` over the frames of a video: per-frame outputs under ``out_dir/STEM/`` (named
    ``frame_000000...`` like images) and, with ``vis`` (not for features), ``out_dir/STEM_<task>.mp4``: the pose
    drawn on the frames, the dense maps side by side with them (as the images' pictures). ``stem`` defaults to the
    file's. Returns the number of frames done. With ``track``, pose gives
    each person a ``track_id`` that follows them from frame to frame (``PoseTracker``), in the JSON and on the
    pictures; with ``openpose`` each frame also gets OpenPose's JSON and picture (``write_result``).

    A reader thread decodes the frames (``read_ahead``); ``writers`` threads (default ``default_writers``) write each
    frame's outputs and draw its picture; one encoder
    thread puts the pictures into the video in frame order (x264's ``veryfast`` preset: the default ``medium`` held a
    1080p pose video to ~14 frames/s on a 16-core host, call 100), so the main thread only feeds the GPU. The
    picture video replaces ``STEM_<task>.mp4`` only when every frame is done (a finished run without pictures
    removes an older one); on an error it is discarded and the error raised. Last, ``video_manifest`` records the
    finished video (``video_finished``) and each frame's presentation time (``frame_times``: the frame numbers count
    decoded frames, so after a damaged stretch the time is what places a frame in the video).
    """
    from tqdm import tqdm

    from ..io import VideoWriter, iter_video_frames, video_info

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    stem = path.stem if stem is None else stem
    info = video_info(path)
    fps = info.fps or 30.0  # a header without a frame rate: the picture video plays at 30 fps, a common camera rate
    frames_dir = out_dir / stem
    writers = default_writers(predictor.task, vis) if writers is None else writers
    frames_dir.mkdir(parents=True, exist_ok=True)
    # an earlier run's record and frames go first: an interrupted run must not pass for it, nor keep its extra frames
    video_manifest(out_dir, stem, predictor.task).unlink(missing_ok=True)
    for pattern in expected_outputs(predictor.task, frames_dir, "frame_*", vis=True, raw=True, openpose=True,
                                    ply=True):
        for stale in frames_dir.glob(pattern.name):
            stale.unlink()
    if predictor.task == "seg" and getattr(predictor, "class_names", None):  # (the earlier label maps are gone)
        (frames_dir / SEG_CLASSES_FILE).unlink(missing_ok=True)
        record_seg_classes(frames_dir, predictor.class_names)
    total = -(-info.num_frames // step) if info.num_frames else None  # frames 0, step, 2 step, ...
    bar = tqdm(total=total, unit="frame", desc=f"{predictor.task} {path.name}", disable=not progress)
    pictures = vis and predictor.task != "features"  # features have no picture
    video = picture_video(out_dir, stem, predictor.task)
    writer = VideoWriter(video, fps=fps / step, preset="veryfast") if pictures else None
    done = 0
    tracker = PoseTracker(predictor.keypoint_set) if track and predictor.task == "pose" else None
    frame_times: list[list] = []  # [frame index, presentation time in seconds] of each frame processed

    prepare = model_input(predictor)

    def chunks() -> Iterator[tuple[tuple[list[int], list[np.ndarray]], list, dict]]:
        """((frame indices, frames), the model's inputs, keyword arguments) per chunk of ``batch_size`` frames,
        decoded on a reader thread (on CUDA the inputs pinned there too, as ``run_batch``'s readers do)."""
        kwargs = {RAW_FLAG[predictor.task]: True} if raw and predictor.task in RAW_FLAG else {}
        indices, frames = [], []
        for index, frame, seconds in iter_video_frames(path, step=step, times=True):
            indices.append(index)
            frames.append(frame)
            frame_times.append([index, None if seconds is None else round(seconds, 6)])
            if len(frames) == batch_size:
                yield (indices, frames), [prepare(f) for f in frames], dict(kwargs)
                indices, frames = [], []
        if frames:
            yield (indices, frames), [prepare(f) for f in frames], dict(kwargs)

    def frame_outputs(index: int, image: np.ndarray, result) -> np.ndarray | None:
        """Writer thread: the frame's files, and its picture for the video (None without one)."""
        write_result(predictor.task, frames_dir, f"frame_{index:06d}", image, result, vis=False, raw=raw,
                     openpose=openpose, ply=ply)
        if writer is None:
            return None
        picture = visualize_result(image, result)
        return picture if predictor.task == "pose" else side_by_side([image, picture])

    def encode(picture: Future) -> None:
        """Encoder thread: the next frame's picture into the video (one thread, frames submitted in order); a
        stream whose frame size changes midway has its later pictures scaled to the first one's size."""
        if (p := picture.result()) is not None:
            if writer.size is not None and p.shape[:2] != writer.size:
                p = cv2.resize(p, writer.size[::-1], interpolation=cv2.INTER_AREA)
            writer.write(p)

    def settle(queued: collections.deque, keep: int) -> None:
        """Count the frames done (outputs written, picture encoded), in order; wait for the oldest while more than
        ``keep`` are queued (each holds its frame and picture)."""
        nonlocal done
        while queued and (len(queued) > keep or queued[0].done()):
            queued.popleft().result()
            done += 1
            bar.update(1)

    queued: collections.deque[Future] = collections.deque()
    try:
        with ThreadPoolExecutor(max_workers=writers, thread_name_prefix="opensapiens-write") as pool, \
                ThreadPoolExecutor(max_workers=1, thread_name_prefix="opensapiens-encode") as encoder, \
                contextlib.closing(read_ahead(chunks(), name="opensapiens-video-read")) as decoded:
            for (indices, frames), results, error in submit_ahead(predictor, decoded):
                if error is not None:
                    raise error
                if tracker is not None:  # results arrive in frame order
                    for result in results:
                        tracker.update(result)
                queued.extend(encoder.submit(encode, pool.submit(frame_outputs, *item))
                              for item in zip(indices, frames, results))
                settle(queued, keep=2 * batch_size + writers)
            settle(queued, keep=0)
        if writer is not None:
            writer.close()
        else:  # an older run's picture video shows outputs this run has replaced
            video.unlink(missing_ok=True)
    except BaseException:
        if writer is not None:
            writer.abort()  # a truncated video must not take the finished one's name; the error is what is reported
        raise
    finally:
        bar.close()
    save_json(video_manifest(out_dir, stem, predictor.task), {
        "source": str(path), "task": predictor.task, "frames": done, "step": step, "fps": fps / step, "raw": raw,
        "track": tracker is not None, "vis": pictures, "openpose": openpose and predictor.task == "pose",
        "ply": ply and predictor.task == "pointmap",
        "frame_times": frame_times})
    return done
