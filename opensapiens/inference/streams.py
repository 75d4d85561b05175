"""Keeping the GPU busy across batches: uploads and post-processing on side CUDA streams, results read back late.

A predictor's ``submit`` queues a batch's upload and model on the device and returns a ``Pending`` at once; its
``result()`` post-processes on a side stream that waits only for that batch's model, then reads the results back.
A job that submits batch i + 1 before asking for batch i's results keeps the model's stream fed while the host
converts, reads back and writes batch i: ``submit_ahead``, under ``run_batch``, ``run_video`` and the evaluation
runner. On the CPU the same calls run in order.
"""

from __future__ import annotations

import functools
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from .transforms import check_image


@functools.cache
def side_stream(device: torch.device, role: str) -> torch.cuda.Stream:
    """One stream per (CUDA device, role): "upload" for host-to-device copies, "post" for post-processing."""
    return torch.cuda.Stream(device)


def cuda_device(device: torch.device) -> torch.device:
    """``device`` with its index ("cuda" -> "cuda:N", the current one), so per-device streams key on one name."""
    return torch.device("cuda", device.index if device.index is not None else torch.cuda.current_device())


def as_tensor(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    """A tensor as it is; an array as a tensor over its memory, copied only when read-only or not C-contiguous (torch
    warns on the first)."""
    if isinstance(image, torch.Tensor):
        return image
    return torch.from_numpy(image if image.flags.writeable and image.flags.c_contiguous else np.array(image, order="C"))


def pin(image: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """A host (H, W, 3) uint8 image -> its copy in page-locked memory, which ``upload_images`` sends to the GPU as it
    is. Called on a reader thread, it takes the staging copy off the thread that feeds the GPU (call 89: 35-45 % of
    that thread's time in ``predict`` with pictures). Anything else (a tensor, another dtype) comes back as it is."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        return image
    buffer = torch.empty(image.shape, dtype=torch.uint8, pin_memory=True)
    buffer.numpy()[...] = image  # any strides, read-only too (torch.from_numpy warns on those)
    return buffer


def upload_images(images: Sequence[np.ndarray | torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """(H, W, 3) uint8 images (arrays, or tensors on any device) -> the same on ``device``.

    On CUDA host images go through pinned memory on the upload stream: the call returns without waiting (a copy from
    pageable memory blocks the host) and the copy overlaps the model work queued before it; the current stream waits
    for it. The pinned buffers are not reused before their copies end (PyTorch's host allocator records the stream).
    Images already on the device (``read_image_on_device``) are used as they are; images already pinned (``pin``)
    are copied from where they are.
    """
    for i, im in enumerate(images):
        check_image(i, im)  # before the pinned staging below would cast, say, a float image to uint8 unasked
    if device.type != "cuda":
        return [as_tensor(im).to(device) for im in images]
    device = cuda_device(device)
    current = torch.cuda.current_stream(device)
    out: list[torch.Tensor | None] = [None] * len(images)
    staged = []
    for i, im in enumerate(images):
        if isinstance(im, torch.Tensor) and im.device == device:
            im.record_stream(current)  # made on another stream (a decoder's), read on this one
            out[i] = im
            continue
        if isinstance(im, torch.Tensor) and im.device.type == "cpu" and im.is_pinned() and im.is_contiguous():
            staged.append((i, im))
            continue
        host = im.cpu().numpy() if isinstance(im, torch.Tensor) else im  # e.g. a PNG the device decoder left
        staged.append((i, pin(host)))  # uint8 arrays (check_image): always a pinned copy
    if staged:
        stream = side_stream(device, "upload")
        with torch.cuda.stream(stream):
            for i, buffer in staged:
                out[i] = buffer.to(device, non_blocking=True)
            copied = torch.cuda.Event()
            copied.record(stream)
        current.wait_event(copied)
        for i, _ in staged:
            out[i].record_stream(current)  # made on the upload stream, read on this one
    return out


class Pending:
    """A submitted batch: its model work is queued; ``result()`` finishes it and returns the results.

    ``finish`` runs on ``device``'s post stream after the work queued before this object was made (an event
    recorded now, not at ``result()``: by then the next batch's model is queued too, and must not be waited for).
    The tensors it reads stay referenced until the post stream has finished with them.
    """

    def __init__(self, device: torch.device | None, finish: Callable[[], list]):
        self._finish: Callable[[], list] | None = finish
        self._results: list | None = None
        self._stream = self._ready = None
        if device is not None and device.type == "cuda":
            device = cuda_device(device)
            self._stream = side_stream(device, "post")
            self._ready = torch.cuda.Event()
            self._ready.record(torch.cuda.current_stream(device))

    @torch.inference_mode()
    def result(self) -> list:
        if self._finish is not None:
            if self._stream is None:
                self._results = self._finish()
            else:
                with torch.cuda.stream(self._stream):
                    self._stream.wait_event(self._ready)
                    try:
                        self._results = self._finish()
                    finally:  # before the tensors made on other streams are let go, even after an error
                        self._stream.synchronize()
            self._finish = None
        return self._results


def read_ahead(items: Iterable, depth: int = 2, name: str = "opensapiens-read-ahead") -> Iterator:
    """``items``, produced on a thread of their own up to ``depth`` ahead of the consumer (a video's decode and RGB
    conversion off the thread that feeds the GPU). An error of ``items`` is raised here, after the items before
    it; when the consumer stops early the producer stops at its next item and ``items`` is closed."""
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def put(entry) -> bool:
        while not stop.is_set():
            try:
                ready.put(entry, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        source = iter(items)
        try:
            for item in source:
                if not put((item, None)):
                    return
            put((end, None))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            put((end, e))
        finally:
            getattr(source, "close", lambda: None)()

    thread = threading.Thread(target=produce, name=name, daemon=True)
    thread.start()
    try:
        while True:
            item, error = ready.get()
            if error is not None:
                raise error
            if item is end:
                return
            yield item
    finally:
        stop.set()
        thread.join()


def submit_ahead(predictor, batches: Iterable[tuple[Any, list[np.ndarray], dict]]
                 ) -> Iterator[tuple[Any, list | None, Exception | None]]:
    """``(context, images, kwargs)`` batches -> ``(context, results, error)``, each batch submitted before the one
    before it is read back, so the device has the next batch while the caller handles this one's results (and the
    generator reads the next batch). An exception from submitting or finishing a batch comes back as its ``error``
    (results None): one bad batch must not end a job. A predictor with only ``predict_batch`` runs in order."""

    def submit(images: list[np.ndarray], kwargs: dict) -> Pending:
        if hasattr(predictor, "submit"):
            return predictor.submit(images, **kwargs)
        results = predictor.predict_batch(images, **kwargs)
        return Pending(None, lambda: results)

    def finish(context: Any, pending: Pending | None, error: Exception | None):
        if error is None:
            try:
                return context, pending.result(), None
            except Exception as e:  # noqa: BLE001 - handed to the caller
                error = e
        return context, None, error

    previous = None
    for context, images, kwargs in batches:
        try:
            current = context, submit(images, kwargs), None
        except Exception as e:  # noqa: BLE001
            current = context, None, e
        if previous is not None:
            yield finish(*previous)
        previous = current
    if previous is not None:
        yield finish(*previous)
