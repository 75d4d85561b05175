"""Turn the loader's host batches into normalized device batches one step ahead of the training loop.

On CUDA a background thread decodes (nvJPEG) and resizes the next batch on a side stream while the current step
runs; the consumer's stream waits on an event, so nothing is synchronised by hand. On CPU it simply runs inline.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ..data.shards import Batch, decode_batch


@dataclass
class DeviceBatch:
    images: torch.Tensor  # (B, 3, H, W) float32, normalized
    slot: int
    cursor: tuple[int, int]
    skipped: int  # unreadable samples passed over (worker side + device side)


class DevicePrefetcher:
    def __init__(self, batches: Iterator[Batch], device: torch.device, input_size: tuple[int, int], depth: int = 2):
        self.batches, self.device, self.input_size = batches, torch.device(device), tuple(input_size)
        self._thread: threading.Thread | None = None
        if self.device.type == "cuda":
            self._queue: queue.Queue = queue.Queue(maxsize=depth)
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._work, name="device-prefetch", daemon=True)
            self._thread.start()

    def _assemble(self, batch: Batch) -> DeviceBatch:
        images, failed = decode_batch(batch, self.device, self.input_size)
        return DeviceBatch(images, batch.slot, batch.cursor, batch.skipped + failed)

    def _work(self) -> None:
        stream = torch.cuda.Stream(self.device)
        with torch.cuda.device(self.device), torch.cuda.stream(stream):
            try:
                for batch in self.batches:
                    item = self._assemble(batch)
                    event = torch.cuda.Event()
                    event.record(stream)
                    while not self._stop.is_set():
                        try:
                            self._queue.put((item, event), timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if self._stop.is_set():
                        return
            except BaseException as e:  # handed to the consumer, raised there
                self._queue.put((e, None))

    def __iter__(self) -> DevicePrefetcher:
        return self

    def __next__(self) -> DeviceBatch:
        if self._thread is None:
            return self._assemble(next(self.batches))
        item, event = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        torch.cuda.current_stream(self.device).wait_event(event)
        item.images.record_stream(torch.cuda.current_stream(self.device))  # allocator: used on this stream too
        return item

    def close(self) -> None:
        if self._thread is not None:
            self._stop.set()
            while self._thread.is_alive():  # unblock a pending put; the thread exits after its current batch
                with contextlib.suppress(queue.Empty):
                    self._queue.get(timeout=0.1)
            self._thread = None
