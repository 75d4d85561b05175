"""CUDA graphs for the fused (eager) inference path: each input shape captured once, then replayed.

The fused blocks launch a few hundred kernels per forward from Python. Replaying them as one CUDA graph takes that
host work, and any wait for the GIL behind other threads (file reading, decoding, writing), off the GPU's path.
Unlike ``torch.compile(mode="reduce-overhead")`` this keeps the fused blocks' kernels as they are.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Hashable

import torch


class CapturedShapes:
    """``fn`` replayed from a CUDA graph per input shape (captured at its first call; CPU inputs run ``fn``).

    ``before_capture`` runs between the two warm-up calls before a capture (e.g. waiting for the background compile
    the first one started, so that the graph holds the compiled code). All graphs share one memory pool; each call
    copies its input into the graph's static input and returns a copy of the static output, so results survive later
    calls. If a capture fails (an operation that cannot be captured) the calls stay eager, with a warning.
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor],
                 before_capture: Callable[[], object] | None = None) -> None:
        self.fn, self.before_capture = fn, before_capture
        self.graphs: dict[Hashable, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}
        self.pool = None
        self.error: BaseException | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_cuda or self.error is not None:
            return self.fn(x)
        key = (tuple(x.shape), x.stride(), x.dtype, x.device)
        if key not in self.graphs:
            try:
                self.graphs[key] = self._capture(x)
            except RuntimeError as e:
                warnings.warn(f"CUDA graph capture failed; running without graphs: {e}", stacklevel=2)
                self.error = e
                return self.fn(x)
        graph, static_in, static_out = self.graphs[key]
        static_in.copy_(x)
        graph.replay()
        return static_out.clone()

    def _capture(self, x: torch.Tensor) -> tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]:
        static_in = x.clone()
        current = torch.cuda.current_stream(x.device)
        side = torch.cuda.Stream(x.device)
        side.wait_stream(current)
        with torch.cuda.stream(side):  # first runs: lazy initialisation and cuDNN's algorithm search, not capturable
            self.fn(static_in)  # (this one may start a background compile...)
            if self.before_capture is not None:
                self.before_capture()  # (...which this waits for, so that the graph holds the compiled code)
            self.fn(static_in)
        current.wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: a background compile in another thread may touch CUDA meanwhile without breaking the capture
        with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
            static_out = self.fn(static_in)
        self.pool = graph.pool()
        return graph, static_in, static_out
