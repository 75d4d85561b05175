"""CUDA graphs for the fused (eager) inference path: each input shape captured once, then replayed.

The fused blocks launch a few hundred kernels per forward from Python. Replaying them as one CUDA graph takes that
host work, and any wait for the GIL behind other threads (file reading, decoding, drawing, writing), off the GPU's
path. Unlike ``torch.compile(mode="reduce-overhead")`` this keeps the fused blocks' kernels as they are. Opt-in
(``optimize_for_inference(model, fused=True, cuda_graphs=True)``): measured 2 % slower than launching on pose-1B,
and its gain in ``predict`` with pictures did not hold from one run to the next (docs/performance.md, calls 79-80).
"""

from __future__ import annotations

import collections
import threading
import warnings
from collections.abc import Callable, Hashable

import torch

Captured = tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor, torch.cuda.Stream]


def cloned(out: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """A copy of a model's output: one tensor, or a tuple of them (Sapiens2's pointmap: points and scale)."""
    return tuple(t.clone() for t in out) if isinstance(out, tuple) else out.clone()


class CapturedShapes:
    """``fn`` replayed from a CUDA graph per input shape; CPU inputs run ``fn``.

    A shape is captured at its ``capture_after``-th call, and only once ``ready()`` holds (say, the head's background
    compile has finished, so that the graph holds the compiled code); until then calls run ``fn``. So a one-off call
    (one image) pays no capture and the first results do not wait for a compile. All graphs share one memory pool.

    Calls are serialized and replay on the graph's own stream, after the caller's stream's work and before its later
    work: each copies its input into the graph's static input and returns a copy of the static output, so results
    survive later calls and threads may share one model. If a capture fails the calls stay eager, with a warning.
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], ready: Callable[[], bool] | None = None,
                 capture_after: int = 2) -> None:
        self.fn, self.ready, self.capture_after = fn, ready or (lambda: True), capture_after
        self.graphs: dict[Hashable, Captured] = {}
        self.calls: collections.Counter = collections.Counter()  # calls per shape not yet captured
        self.pool = None
        self.error: BaseException | None = None
        self._lock = threading.Lock()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_cuda or self.error is not None:
            return self.fn(x)
        key = (tuple(x.shape), x.stride(), x.dtype, x.device)
        with self._lock:
            if key not in self.graphs:
                self.calls[key] += 1
                if self.calls[key] < self.capture_after or not self.ready():
                    return self.fn(x)
                try:
                    self.graphs[key] = self._capture(x)
                except RuntimeError as e:
                    warnings.warn(f"CUDA graph capture failed; running without graphs: {e}", stacklevel=2)
                    self.error = e
                    return self.fn(x)
            return self._replay(self.graphs[key], x)

    @staticmethod
    def _replay(captured: Captured, x: torch.Tensor) -> torch.Tensor:
        graph, static_in, static_out, stream = captured
        current = torch.cuda.current_stream(x.device)
        stream.wait_stream(current)  # x is written
        with torch.cuda.stream(stream):  # one stream: replays run in the order their calls took the lock
            static_in.copy_(x)
            graph.replay()
            out = cloned(static_out)
        current.wait_stream(stream)
        for t in out if isinstance(out, tuple) else (out,):
            t.record_stream(current)  # made on the graph's stream, read on the caller's
        return out

    def _capture(self, x: torch.Tensor) -> Captured:
        static_in = x.clone()
        stream = torch.cuda.Stream(x.device)
        stream.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(stream):  # a warm-up: lazy initialisation and cuDNN's algorithm search, not capturable
            self.fn(static_in)
        graph = torch.cuda.CUDAGraph()
        # thread_local: loader and writer threads may touch CUDA meanwhile without breaking the capture
        with torch.cuda.graph(graph, pool=self.pool, stream=stream, capture_error_mode="thread_local"):
            static_out = self.fn(static_in)
        self.pool = graph.pool()
        return graph, static_in, static_out, stream
