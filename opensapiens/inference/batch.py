"""Batch jobs over files, folders and globs: background loading, batched inference, asynchronous atomic writes.

A file that cannot be read is reported and skipped; the others finish; the caller gets the list of failures and
exits non-zero. Every output is written to a temporary name and renamed, so an interrupted job never leaves a
half-written file, and ``resume=True`` skips inputs whose outputs all exist.

Files written per input stem (``--raw`` adds the raw head output):

| task     | files                                                                 | raw                     |
|----------|-----------------------------------------------------------------------|-------------------------|
| pose     | STEM.json (COCO-results style), STEM_pose.jpg                         | STEM_heatmaps.npy       |
| seg      | STEM_seg.png (uint8 class ids), STEM_seg.jpg (overlay)                | STEM_seg_logits.npy     |
| depth    | STEM_depth.npy (float32 HxW), STEM_depth.jpg                          | STEM_depth_raw.npy      |
| normal   | STEM_normal.npy (float32 HxWx3), STEM_normal.jpg                      | STEM_normal_raw.npy     |
| pointmap | STEM_pointmap.npy (float32 HxWx3 metres), STEM_pointmap.json (focal,  | STEM_pointmap_raw.npy   |
|          | intrinsics, scale), STEM_pointmap.jpg (its depth)                     |                         |
| features | STEM_features.npy (float32 C x H/16 x W/16)                           | -                       |

Seg jobs also write ``seg_classes.json`` (the model's class names, which its ids index; per video in its frames'
folder), so that ``eval`` reads the ids as what they are; a folder of another model's label maps is refused. Pose
with ``openpose`` (``--openpose``) also writes STEM_openpose.json (OpenPose's JSON) and STEM_openpose.png (the
skeletons on black as ControlNet's OpenPose conditioning draws them): ``metadata.openpose``.
Pointmaps with ``ply`` (``--ply``) also write STEM_pointmap.ply, the valid points coloured by the image
(``PointmapResult.save_ply``).
"""

from __future__ import annotations

import collections
import functools
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..io.images import ImageReadError, read_image
from ..io.writers import save_jpg, save_json, save_npy, save_png
from ..metadata import record_seg_classes
from ..visualize import draw_openpose, side_by_side, visualize_result
from .predictors import Predictor
from .results import DepthResult, FeatureResult, NormalResult, PointmapResult, PoseResult, SegResult
from .streams import pin, submit_ahead

OUTPUTS = {
    "pose": (".json", "_pose.jpg"),
    "seg": ("_seg.png", "_seg.jpg"),
    "depth": ("_depth.npy", "_depth.jpg"),
    "normal": ("_normal.npy", "_normal.jpg"),
    "pointmap": ("_pointmap.npy", "_pointmap.json", "_pointmap.jpg"),
    "features": ("_features.npy",),
}
RAW_SUFFIX = {"pose": "_heatmaps.npy", "seg": "_seg_logits.npy", "depth": "_depth_raw.npy",
              "normal": "_normal_raw.npy", "pointmap": "_pointmap_raw.npy"}
RAW_FLAG = {"pose": "return_heatmaps", "seg": "return_logits", "depth": "return_raw", "normal": "return_raw",
            "pointmap": "return_raw"}
OPENPOSE_OUTPUTS = ("_openpose.json", "_openpose.png")  # pose with ``openpose``
PLY_OUTPUT = "_pointmap.ply"  # pointmap with ``ply``


# run_batch's image-reading threads: decoding a 1080p JPEG takes one thread ~22 ms (H200 host: 365 img/s on 8 threads,
# bench/host_decode.py), so 4 threads held predict's loop near 152-154 img/s with pose-0.3B's model alone at 156-163
# (calls 69 and 72); 8 decode faster than pose-0.3B runs. Never more than the cores.
READER_THREADS = min(8, os.cpu_count() or 2)


def default_writers(task: str, vis: bool) -> int:
    """Writer threads for a job, at most one per core.

    Up to 16 where the writing is big encodes that release the GIL: the dense tasks' pictures (seg pictures on a
    16-core H200 host: 11.5 img/s with 1 thread, 67 with 8, 104 with 16, ``bench/writer_scaling.py``; predict with
    pictures 0.62-0.64 of model-only with 16, 0.44-0.47 with 8). Up to 8 otherwise: a pose picture is hundreds of small
    drawing calls, each taking the GIL from the thread that feeds the GPU (pose-0.3B with pictures, side by side:
    0.755-0.776 of model-only with 8 writers, 0.710-0.737 with 16). Each pending write holds an image and its
    result: run_batch's bound on them grows with the writers.
    """
    return min(16 if vis and task in ("seg", "depth", "normal", "pointmap") else 8, os.cpu_count() or 2)


def expected_outputs(task: str, out_dir: Path, stem: str, vis: bool = True, raw: bool = False,
                     openpose: bool = False, ply: bool = False) -> list[Path]:
    suffixes = [s for s in OUTPUTS[task] if vis or not s.endswith(".jpg")]
    if raw and task in RAW_SUFFIX:
        suffixes.append(RAW_SUFFIX[task])
    if openpose and task == "pose":
        suffixes += OPENPOSE_OUTPUTS
    if ply and task == "pointmap":
        suffixes.append(PLY_OUTPUT)
    return [out_dir / f"{stem}{s}" for s in suffixes]


def _coco_image_id(stem: str) -> int | str:
    """A person's ``image_id`` in predict's JSON: a numeric stem as the number COCO gives its image
    (``000000000139.jpg`` -> 139), so the entries serve pycocotools as they are; any other stem as it is."""
    return int(stem) if stem.isascii() and stem.isdigit() else stem


def write_result(task: str, out_dir: Path, stem: str, image: np.ndarray, result, vis: bool = True,
                 raw: bool = False, image_id: int | str | None = None, openpose: bool = False,
                 ply: bool = False) -> list[Path]:
    """Write the documented files for one input; returns their paths. ``image``: the input, (H, W, 3) uint8 (a
    tensor where it was decoded on the device). ``openpose``: pose also in OpenPose's JSON and picture; ``ply``:
    a pointmap also as a coloured point cloud."""
    if (vis or ply) and not isinstance(image, np.ndarray):  # pictures and colours come from host pixels
        image = image.cpu().numpy()
    p = {s: out_dir / f"{stem}{s}" for s in (*OUTPUTS[task], RAW_SUFFIX.get(task, ""), *OPENPOSE_OUTPUTS)}
    written: list[Path] = []
    if isinstance(result, PoseResult):
        doc = {"image": {"file_name": stem, "height": image.shape[0], "width": image.shape[1]},
               "keypoint_set": result.keypoint_set_name,
               "people": result.to_coco(image_id if image_id is not None else _coco_image_id(stem))}
        written.append(save_json(p[".json"], doc))
        if vis:
            written.append(save_jpg(p["_pose.jpg"], visualize_result(image, result)))
        if raw and result.heatmaps is not None:
            written.append(save_npy(p["_heatmaps.npy"], result.heatmaps.astype(np.float16)))
        if openpose:
            height, width = image.shape[:2]
            people = result.to_openpose()
            written.append(save_json(p["_openpose.json"], people.to_json(width, height)))
            written.append(save_png(p["_openpose.png"], draw_openpose(people, height, width), row_filters=False))
    elif isinstance(result, SegResult):
        written.append(save_png(p["_seg.png"], result.labels))
        if vis:
            written.append(save_jpg(p["_seg.jpg"], side_by_side([image, visualize_result(image, result)])))
        if raw and result.logits is not None:
            written.append(save_npy(p["_seg_logits.npy"], result.logits))
    elif isinstance(result, DepthResult):
        written.append(save_npy(p["_depth.npy"], result.depth.astype(np.float32)))
        if vis:
            written.append(save_jpg(p["_depth.jpg"], side_by_side([image, visualize_result(image, result)])))
        if raw and result.raw is not None:
            written.append(save_npy(p["_depth_raw.npy"], result.raw))
    elif isinstance(result, NormalResult):
        written.append(save_npy(p["_normal.npy"], result.normals.astype(np.float32)))
        if vis:
            written.append(save_jpg(p["_normal.jpg"], side_by_side([image, visualize_result(image, result)])))
        if raw and result.raw is not None:
            written.append(save_npy(p["_normal_raw.npy"], result.raw))
    elif isinstance(result, PointmapResult):
        written.append(save_npy(p["_pointmap.npy"], result.points.astype(np.float32)))
        written.append(save_json(p["_pointmap.json"], {"focal": list(result.focal), "scale": result.scale,
                                                        "intrinsics": result.intrinsics().tolist()}))
        if vis:
            written.append(save_jpg(p["_pointmap.jpg"], side_by_side([image, visualize_result(image, result)])))
        if raw and result.raw is not None:
            written.append(save_npy(p["_pointmap_raw.npy"], result.raw))
        if ply:
            written.append(result.save_ply(out_dir / f"{stem}{PLY_OUTPUT}", image))
    elif isinstance(result, FeatureResult):
        written.append(save_npy(p["_features.npy"], result.features.astype(np.float32)))
    else:
        raise TypeError(f"unknown result type {type(result).__name__}")
    return written


@dataclass
class BatchReport:
    done: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)  # already finished (resume)
    failed: list[tuple[Path, str]] = field(default_factory=list)


def model_input(predictor: Predictor) -> Callable:
    """What a reader thread makes of a host image for the model: on CUDA a pinned copy (its staging off the main
    thread; the writers keep the array), elsewhere the image itself."""
    return pin if str(getattr(predictor, "device", "cpu")).startswith("cuda") else (lambda image: image)


def _read_for_model(path: Path, read: Callable, prepare: Callable) -> tuple[np.ndarray, np.ndarray | torch.Tensor]:
    """(the image, what the model is given of it: ``prepare(image)``), both made on a reader thread."""
    image = read(path)
    return image, prepare(image)


def _read(path: Path, reader: Callable = read_image) -> tuple[np.ndarray | None, str | None]:
    """(image, None), or (None, the error message) for a file that cannot be read: it must not stop the job."""
    try:
        return reader(path), None
    except ImageReadError as e:
        return None, str(e)
    except Exception as e:  # noqa: BLE001 - any failure on one file
        return None, f"{path}: {type(e).__name__}: {e}"


def _load(paths: Sequence[Path], batch_size: int, workers: int, reader: Callable = read_image
          ) -> Iterator[list[tuple[int, np.ndarray | None, str]]]:
    """Batches of (index, what ``reader`` returned or None, error), in order; ``workers`` threads read up to two
    batches ahead.

    Threads, not processes: the decoders (OpenCV, Pillow) release the GIL, and a loader process starts by importing
    torch, seconds on the path to a job's first batch for what takes milliseconds per image (a one-image predict on
    two CPU cores: 32.8 s with two loader processes, 22.2 s reading in-process). ``workers`` 0: in the caller's thread.
    """
    batches = [range(start, min(start + batch_size, len(paths))) for start in range(0, len(paths), batch_size)]
    if workers <= 0:
        for batch in batches:
            yield [(i, *_read(paths[i], reader)) for i in batch]
        return
    pool = ThreadPoolExecutor(workers, thread_name_prefix="opensapiens-read")
    try:
        queued = collections.deque()
        for batch in batches:
            queued.append([(i, pool.submit(_read, paths[i], reader)) for i in batch])
            if len(queued) == 3:  # the batch the caller gets now and two read ahead
                yield [(i, *f.result()) for i, f in queued.popleft()]
        while queued:
            yield [(i, *f.result()) for i, f in queued.popleft()]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def unique_stems(paths: Sequence[Path]) -> list[str]:
    """Output names: the file stem; parent_stem where two inputs share a stem; stem_ext where those still clash
    (photo.jpg and photo.png in one folder: photo_jpg, photo_png). A ``ValueError`` names what still clashes."""
    def spread(names: list[str], fallback) -> list[str]:
        counts = collections.Counter(names)
        return [fallback(p) if counts[n] > 1 else n for p, n in zip(paths, names)]

    out = spread([p.stem for p in paths], lambda p: f"{p.parent.name}_{p.stem}")
    out = spread(out, lambda p: f"{p.stem}_{p.suffix.lstrip('.').lower()}")
    if len(set(out)) != len(out):
        clash = sorted({s for s in out if out.count(s) > 1})
        raise ValueError(f"several inputs would write the same output names: {', '.join(clash[:5])}")
    return out


def run_batch(predictor: Predictor, paths: Sequence[Path], out_dir: Path, batch_size: int = 4,
              workers: int = READER_THREADS,
              vis: bool = True, raw: bool = False, resume: bool = False, predict_kwargs: Callable | None = None,
              progress: bool = True, writers: int | None = None, decode: str = "host",
              stems: Sequence[str] | None = None, openpose: bool = False, ply: bool = False) -> BatchReport:
    """Run ``predictor`` over image files, writing the documented outputs under ``out_dir``.

    ``predict_kwargs(paths, images) -> dict`` supplies per-batch keyword arguments (boxes, masks, ...); where it
    raises, each image of the batch is tried alone, those that still raise are reported as failed and the others go
    on together. ``stems``: the output names (default ``unique_stems(paths)``; a caller that also writes videos names
    both together). ``openpose``: pose also writes OpenPose's JSON and picture, ``ply`` pointmaps their point
    clouds (``write_result``).
    ``workers`` threads read the images, ``writers`` threads (default ``default_writers``) write the outputs.
    ``decode="device"`` decodes JPEGs on the predictor's device (nvJPEG on CUDA: ``device_decode``) instead of on the
    reading threads.
    Each batch is submitted before the previous one's results are read back, so the model's stream always has
    a batch queued while the host converts and hands results to the writers (``Predictor.submit``).
    """
    from tqdm import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    stems = unique_stems(paths) if stems is None else list(stems)
    if len(stems) != len(paths):
        raise ValueError(f"got {len(stems)} output names for {len(paths)} inputs")
    out_dir.mkdir(parents=True, exist_ok=True)
    task = predictor.task
    if task == "seg" and getattr(predictor, "class_names", None):
        record_seg_classes(out_dir, predictor.class_names)
    report = BatchReport()
    todo = []
    for p, s in zip(paths, stems):
        if resume and all(f.is_file() for f in expected_outputs(task, out_dir, s, vis, raw, openpose, ply)):
            report.skipped.append(p)
        else:
            todo.append((p, s))
    todo_paths = [p for p, _ in todo]
    flag = RAW_FLAG.get(task)
    writers = default_writers(task, vis) if writers is None else writers
    if writers < 1:
        raise ValueError(f"writers must be at least 1, got {writers}")
    if decode not in ("host", "device"):
        raise ValueError(f"decode must be 'host' or 'device', got {decode!r}")
    read, prepare = read_image, model_input(predictor)
    if decode == "device":
        from .device_decode import read_image_on_device

        read, prepare = functools.partial(read_image_on_device, device=predictor.device), (lambda image: image)
    reader = functools.partial(_read_for_model, read=read, prepare=prepare)
    bar = tqdm(total=len(todo), unit="img", desc=f"{task}", disable=not progress)

    def fail(i: int, err: str) -> None:
        report.failed.append((todo_paths[i], err))
        bar.write(f"skipped: {err}")

    def with_kwargs(good: list[tuple[int, tuple]]) -> tuple[list[tuple[int, tuple]], dict]:
        """(the items that ``predict_kwargs`` serves, its keyword arguments for them); a bad mask file fails its
        image, not the batch."""
        if predict_kwargs is None or not good:
            return good, {}
        try:
            return good, predict_kwargs([todo_paths[i] for i, _ in good], [p[0] for _, p in good])
        except Exception as e:  # noqa: BLE001 - which image? each alone
            batch_error = e
        kept = []
        for i, pair in good:
            try:
                predict_kwargs([todo_paths[i]], [pair[0]])
                kept.append((i, pair))
            except Exception as e:  # noqa: BLE001 - reported as this image's failure
                fail(i, f"{todo_paths[i]}: {type(e).__name__}: {e}")
        if len(kept) == len(good):  # no image fails alone: the batch does
            for i, _ in good:
                fail(i, f"{todo_paths[i]}: {type(batch_error).__name__}: {batch_error}")
            return [], {}
        return with_kwargs(kept) if kept else ([], {})

    def batches() -> Iterator[tuple[tuple[list[int], list[np.ndarray]], list[np.ndarray], dict]]:
        """((input indices, images), images, predict keyword arguments) per batch read; unreadable files reported."""
        for items in _load(todo_paths, batch_size, workers, reader):
            for i, _, err in items:
                if err is not None:
                    fail(i, err)
            bar.update(len(items))
            good, kwargs = with_kwargs([(i, pair) for i, pair, err in items if err is None])  # pair: (image, input)
            if good:
                ids, images, inputs = [i for i, _ in good], [p[0] for _, p in good], [p[1] for _, p in good]
                if raw and flag:
                    kwargs[flag] = True
                yield (ids, images), inputs, kwargs

    writes: list[tuple[Path, Future]] = []
    with ThreadPoolExecutor(max_workers=writers, thread_name_prefix="opensapiens-write") as writer:
        for (ids, images), results, error in submit_ahead(predictor, batches()):
            if error is not None:  # report the batch, keep going
                report.failed += [(todo_paths[i], f"{todo_paths[i]}: inference failed: {error}") for i in ids]
            else:
                for i, image, res in zip(ids, images, results):
                    future = writer.submit(write_result, task, out_dir, todo[i][1], image, res, vis, raw,
                                           openpose=openpose, ply=ply)
                    writes.append((todo_paths[i], future))
            _collect(writes, report, keep=2 * batch_size + writers)
        _collect(writes, report)
    bar.close()
    return report


def _collect(pending: list[tuple[Path, Future]], report: BatchReport, keep: int = 0) -> None:
    """Record the finished writes, then wait for the oldest until at most ``keep`` are pending (``pending`` is
    updated in place): each pending write holds its image and result, so a job whose writing is slower than its
    inference must wait, not queue them all."""
    def record(path: Path, fut: Future) -> None:
        try:
            fut.result()
            report.done.append(path)
        except Exception as e:  # noqa: BLE001 - a failed write is reported like a failed read
            report.failed.append((path, f"{path}: writing outputs failed: {e}"))

    left = []
    for path, fut in pending:
        if fut.done():
            record(path, fut)
        else:
            left.append((path, fut))
    while len(left) > keep:
        record(*left.pop(0))
    pending[:] = left
