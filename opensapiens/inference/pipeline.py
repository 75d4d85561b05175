"""End-to-end GPU pipeline: files -> GPU decode -> GPU resize/normalize -> batched model -> GPU post-processing ->
asynchronous writing, with file reading and decoding of the next batch overlapped with the model on another stream.

``decode="cpu"`` decodes on host threads instead (``read_image``, the predictors' pixels) and uploads them from
pinned memory: nvJPEG's decode kernels share the SMs with the model (about 1 ms of GPU time per 1080p JPEG, a
seventh of pose-0.3B's model time), while a machine with a few free cores decodes the same stream without
touching the GPU.

Used by ``opensapiens bench --e2e DIR`` to measure how close the whole pipeline comes to model-only throughput.
Outputs per image: seg label maps at full resolution (argmax on the GPU) or pose keypoints (heatmap decode on the
GPU, one whole-image person box per image unless boxes are given).
"""

from __future__ import annotations

import contextlib
import functools
import queue
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torchvision.io import decode_image, decode_jpeg

from .transforms import Preprocessor, restore

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


def _read(path: Path) -> torch.Tensor:
    return torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)


def decode_on_device(data: list[torch.Tensor], paths: list[Path], device: torch.device) -> list[torch.Tensor]:
    """Encoded bytes -> list of (3, H, W) uint8 RGB on ``device``; JPEGs through nvJPEG on CUDA, batched."""
    jpeg = [i for i, p in enumerate(paths) if p.suffix.lower() in (".jpg", ".jpeg")]
    out: list[torch.Tensor | None] = [None] * len(data)
    if jpeg:
        dev = device if device.type == "cuda" else "cpu"
        decoded = decode_jpeg([data[i] for i in jpeg], device=dev, mode=_rgb())
        for i, im in zip(jpeg, decoded):
            out[i] = im
    for i in range(len(data)):
        if out[i] is None:
            out[i] = decode_image(data[i], mode=_rgb()).to(device, non_blocking=True)
    return out


def _rgb():
    from torchvision.io import ImageReadMode

    return ImageReadMode.RGB


def decode_on_host(path: Path, pin: bool) -> torch.Tensor:
    """Host decode (``read_image``: upright RGB; JPEGs through OpenCV without the GIL) into a (H, W, 3) uint8
    tensor, in pinned memory when it will be copied to a GPU."""
    from ..io.images import read_image

    rgb = read_image(path)
    pixels = torch.empty(rgb.shape, dtype=torch.uint8, pin_memory=pin)
    pixels.numpy()[...] = rgb
    return pixels


class Prefetcher:
    """Reads and decodes batches in a background thread, on a side CUDA stream, two batches ahead.

    ``decode``: "gpu" (nvJPEG for JPEGs) or "cpu" (host threads, then one asynchronous upload per image).
    """

    def __init__(self, paths: list[Path], batch_size: int, device: torch.device, input_size: tuple[int, int],
                 io_threads: int = 8, resize: bool = True, decode: str = "gpu"):
        if decode not in ("gpu", "cpu"):
            raise ValueError(f"decode must be 'gpu' or 'cpu', got {decode!r}")
        self.paths, self.batch_size, self.device, self.decode = paths, batch_size, device, decode
        # the predictors' own stretch resize + normalization; top-down pose crops the decoded images instead
        self.preprocess = Preprocessor(input_size) if resize else None
        self.queue: queue.Queue = queue.Queue(maxsize=2)
        self.pool = ThreadPoolExecutor(io_threads)
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.thread = threading.Thread(target=self._work, daemon=True)
        self.thread.start()

    def _work(self) -> None:
        try:
            for i in range(0, len(self.paths), self.batch_size):
                paths = self.paths[i: i + self.batch_size]
                if self.decode == "cpu":
                    data = list(self.pool.map(functools.partial(decode_on_host, pin=self.stream is not None), paths))
                else:
                    data = list(self.pool.map(_read, paths))
                ctx = torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext()
                with ctx:
                    if self.decode == "cpu":
                        images = [hwc.to(self.device, non_blocking=True).permute(2, 0, 1) for hwc in data]
                    else:
                        images = decode_on_device(data, paths, self.device)
                    batch, metas = (self.preprocess([im.permute(1, 2, 0) for im in images], self.device)
                                    if self.preprocess is not None else (None, None))
                    event = None
                    if self.stream is not None:
                        event = torch.cuda.Event()
                        event.record(self.stream)
                self.queue.put((paths, images, batch, metas, event))
        except Exception as e:  # noqa: BLE001 - surfaced in the consumer
            self.queue.put(e)
        self.queue.put(None)

    def __iter__(self) -> Iterator[tuple]:
        while (item := self.queue.get()) is not None:
            if isinstance(item, Exception):
                raise item
            paths, images, batch, metas, event = item
            if event is not None:
                torch.cuda.current_stream(self.device).wait_event(event)
                for t in (*images, *([batch] if batch is not None else [])):
                    t.record_stream(torch.cuda.current_stream(self.device))
            yield paths, images, batch, metas


def _seg_post(logits: torch.Tensor, metas) -> list[torch.Tensor]:
    """Per image: logits (N, h, w) -> bilinear to the image size -> argmax -> uint8 (H, W), on the GPU."""
    return [full.argmax(0).to(torch.uint8) for full in restore(logits.float(), metas)]


def _pose_forward(model, images: list[torch.Tensor], input_size: tuple[int, int]
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Whole-image top-down crops of every image in one batch -> heatmaps; boxes stay on the host."""
    from .topdown import boxes_to_center_scale, person_inputs

    boxes = torch.tensor([[0, 0, im.shape[-1], im.shape[-2]] for im in images], dtype=torch.float32)
    center, scale = boxes_to_center_scale(boxes, padding=1.25, aspect=input_size[1] / input_size[0])
    crops = person_inputs(images, torch.arange(len(images)), center, scale, input_size,
                          next(model.parameters()).dtype)
    return model(crops), center, scale


def _pose_post(heat: torch.Tensor, center: torch.Tensor, scale: torch.Tensor, input_size: tuple[int, int]
               ) -> list[torch.Tensor]:
    """Heatmaps -> keypoints with scores (K, 3) per image, in image pixels."""
    from ..codecs.heatmap import decode_udp_heatmaps
    from .topdown import crop_to_image

    kp, sc = decode_udp_heatmaps(heat, input_size)  # bf16 maps read in place
    kp = crop_to_image(kp, center, scale, input_size)
    return list(torch.cat([kp, sc[..., None]], dim=-1))


def _write(out_dir: Path | None, task: str, path: Path, result: torch.Tensor, ready: torch.cuda.Event | None
           ) -> None:
    """Writer thread: wait for this batch's device-to-host copy (not for the GPU's later work), then save."""
    if ready is not None:
        ready.synchronize()
    if out_dir is None:
        return
    from ..io.images import save_npy, save_png

    array = result.numpy()
    if task == "seg":
        save_png(out_dir / f"{path.stem}_seg.png", array)
    else:
        save_npy(out_dir / f"{path.stem}_keypoints.npy", array)


def run_pipeline(model, task: str, paths: list[Path], batch_size: int, input_size: tuple[int, int],
                 out_dir: Path | None = None, writer_threads: int = 8, decode: str = "gpu") -> int:
    """Process ``paths`` end to end; returns the number of images done.

    Batch i's model is queued before batch i-1 is post-processed, and post-processing runs on its own CUDA stream:
    a host wait inside it (the heatmap decode's data-dependent refinement reads a count) then waits for batch
    i-1 alone, while batch i keeps the GPU busy.
    """
    if task not in ("seg", "pose"):
        raise ValueError(f"the end-to-end pipeline covers seg and pose, not {task}")
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    cuda = device.type == "cuda"
    post_stream = torch.cuda.Stream(device) if cuda else None
    done = 0
    with ThreadPoolExecutor(writer_threads) as writer, torch.inference_mode():
        futures = []

        def finish(item: tuple) -> None:
            batch_paths, out, extra, model_done = item
            ctx = torch.cuda.stream(post_stream) if cuda else contextlib.nullcontext()
            with ctx:
                if cuda:
                    post_stream.wait_event(model_done)
                    out.record_stream(post_stream)  # made on the main stream, read here
                results = _seg_post(out, extra) if task == "seg" else _pose_post(out, *extra, input_size)
                ready = None
                if cuda:  # asynchronous copies into pinned memory; the writers wait for them, not the host
                    host = [torch.empty(r.shape, dtype=r.dtype, pin_memory=True) for r in results]
                    for h, r in zip(host, results):
                        h.copy_(r, non_blocking=True)
                    ready = torch.cuda.Event()
                    ready.record(post_stream)
                else:
                    host = [r.cpu() for r in results]
            futures.extend(writer.submit(_write, out_dir, task, p, h, ready) for p, h in zip(batch_paths, host))

        pending = None
        prefetch = Prefetcher(paths, batch_size, device, input_size, resize=task == "seg", decode=decode)
        for batch_paths, images, batch, metas in prefetch:
            if task == "seg":
                out, extra = model(batch.to(dtype)), metas
            else:
                heat, center, scale = _pose_forward(model, images, input_size)
                out, extra = heat, (center, scale)
            model_done = None
            if cuda:
                model_done = torch.cuda.Event()
                model_done.record()
            if pending is not None:
                finish(pending)
            pending = (batch_paths, out, extra, model_done)
            done += len(batch_paths)
        if pending is not None:
            finish(pending)
        for f in futures:
            f.result()
    return done


def benchmark_end_to_end(model, task: str, folder: Path, batch_size: int, input_size: tuple[int, int],
                         out_dir: Path | None = None, decode: str = "gpu", trace: Path | None = None) -> dict:
    """Images/s of the whole pipeline over a folder (one warm-up pass over the first batches, then a timed pass).

    ``trace``: profile the timed pass (host and GPU activity) into this Chrome trace, for ``bench/trace_summary.py``:
    where the GPU idles between the model's batches. The profiler's own overhead lowers the throughput of that pass.
    """
    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise FileNotFoundError(f"{folder}: no JPEG/PNG images")
    run_pipeline(model, task, paths[: batch_size * 2], batch_size, input_size, decode=decode)
    device = next(model.parameters()).device
    if device.type == "cuda":
        torch.cuda.synchronize()
    profiler = contextlib.nullcontext()
    if trace is not None:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        profiler = profile(activities=activities)
    t0 = time.perf_counter()
    with profiler:
        n = run_pipeline(model, task, paths, batch_size, input_size, out_dir=out_dir, decode=decode)
        if device.type == "cuda":
            torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    if trace is not None:
        Path(trace).parent.mkdir(parents=True, exist_ok=True)
        profiler.export_chrome_trace(str(trace))
    first = decode_image(_read(paths[0]))
    return {"images": n, "seconds": round(seconds, 3), "images_per_s": round(n / seconds, 2),
            "image_size": list(first.shape[-2:]), "writes_outputs": out_dir is not None, "decode": decode,
            "profiled": trace is not None}
