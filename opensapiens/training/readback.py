"""Reading a few device values back without making the host wait for work queued after them."""

from __future__ import annotations

import torch


class Readback:
    """``values`` (a small tensor) copied to pinned host memory behind the kernels that make it.

    ``tolist()`` waits for those kernels only, not for work queued later: a loop can read step k while the GPU runs
    step k + 1. On the CPU the values are simply kept.
    """

    def __init__(self, values: torch.Tensor) -> None:
        self._ready = None
        if values.is_cuda:
            stream = torch.cuda.current_stream(values.device)
            host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
            values = host.copy_(values, non_blocking=True)
            self._ready = torch.cuda.Event()
            self._ready.record(stream)
        self._values = values

    def tolist(self) -> list:
        if self._ready is not None:
            self._ready.synchronize()
        return self._values.tolist()
