"""torch.compile off the user's path: run eagerly while a background thread compiles, then switch.

Compiling a Sapiens head takes 8-10 s on an H200 the first time (less once Inductor's on-disk cache is warm), which
used to come before the first result: a user with a few images waited longer for the compile than for the model.
``BackgroundCompile`` answers every call eagerly until a worker thread has compiled the function for the call's
input kind, then calls the compiled code. Input kinds are batch size 1 (compiled for that size) and batch size 2 or
more (compiled once with a dynamic batch dimension, so a smaller last batch or a varying number of person crops does
not recompile; a guard on a range of batch sizes, as the CPU convolution's choice of backend at 16 makes, can still
cost one compile in the caller's thread); another resolution, dtype, device or layout is another kind. The outputs
are the same function either way.

The worker compiles on a copy of (at most two images of) the first input of each kind, under the caller's grad and
inference modes, so the compiled code's guards match the calls that follow. If compiling fails the function stays
eager, with a warning.

A compile that outlives the main thread runs during the interpreter's shutdown, when a module that registers a
threading exit hook can no longer be imported: Inductor imports ``concurrent.futures.process`` (such a module) on its
first compile, so the compile failed whenever the caller ended first, as a one-image ``predict`` does. Both of the
standard library's such modules are imported here, with this module (~1 ms).

While it traces, torch.fx patches ``nn.Module.__call__`` for every thread (PyTorch issue #126024), and Inductor traces
with it on its first lowering in a process: a module the caller ran in that window raised NameError (call 64).
``isolate_fx_tracing`` keeps those patches to the tracing thread; the worker installs it before it compiles. Older
PyTorch (2.11 among them) also keeps "an FX trace is running" in one process-wide flag that dynamo checks before it
runs compiled code, so a compiled call in one thread while another traced raised "Detected that you are using FX to
symbolically trace a dynamo-optimized function" and the compile stayed eager (call 115); that check is answered per
thread there too.
"""

from __future__ import annotations

import collections
import concurrent.futures.process  # noqa: F401 (see the module docstring)
import concurrent.futures.thread  # noqa: F401
import functools
import threading
import time
import warnings
from collections.abc import Callable, Hashable

import torch

_fx_tracing = threading.local()  # .depth: torch.fx traces running in this thread
_fx_isolated = threading.Lock()  # held while installing


def isolate_fx_tracing() -> None:
    """Make torch.fx's tracing patches act only in the thread that traces (once per process; idempotent).

    ``Tracer.trace`` replaces ``nn.Module.__call__`` and ``__getattr__`` process-wide, so a module another thread
    runs meanwhile enters the tracer, whose ``call_module`` raises NameError for a module outside its root, or records
    it. With this, ``Tracer.trace`` counts its thread's traces, and ``call_module`` / ``getattr`` reached from a
    thread that is not tracing run the module / return the attribute as if there were no tracer.
    """
    from torch.fx import Tracer

    with _fx_isolated:
        if getattr(Tracer, "_isolated_to_its_thread", False):
            return
        trace, call_module, getattr_ = Tracer.trace, Tracer.call_module, Tracer.getattr

        @functools.wraps(trace)
        def counted_trace(self, *args, **kwargs):
            _fx_tracing.depth = getattr(_fx_tracing, "depth", 0) + 1
            try:
                return trace(self, *args, **kwargs)
            finally:
                _fx_tracing.depth -= 1

        @functools.wraps(call_module)
        def call_module_if_tracing(self, m, forward, args, kwargs):
            if not getattr(_fx_tracing, "depth", 0):
                return forward(*args, **kwargs)  # another thread's module: plain Module.__call__
            return call_module(self, m, forward, args, kwargs)

        @functools.wraps(getattr_)
        def getattr_if_tracing(self, attr, attr_val, parameter_proxy_cache):
            if not getattr(_fx_tracing, "depth", 0):
                return attr_val
            return getattr_(self, attr, attr_val, parameter_proxy_cache)

        Tracer.trace, Tracer.call_module, Tracer.getattr = counted_trace, call_module_if_tracing, getattr_if_tracing
        Tracer._isolated_to_its_thread = True
        _per_thread_fx_tracing_check()


def _per_thread_fx_tracing_check() -> None:
    """Where PyTorch's "FX is tracing" flag is process-wide (before it became thread-local), answer its checks from
    this thread's own traces: each check function is replaced where dynamo reads it."""
    import torch._dynamo.eval_frame as eval_frame
    import torch.fx._symbolic_trace as symbolic_trace

    if hasattr(symbolic_trace, "_is_fx_tracing_tls"):  # thread-local already
        return

    def in_this_thread(check: Callable[[], bool]) -> Callable[[], bool]:
        @functools.wraps(check)
        def checked() -> bool:
            return bool(getattr(_fx_tracing, "depth", 0)) and check()
        return checked

    for module in (symbolic_trace, eval_frame):
        for name in ("is_fx_tracing", "is_fx_symbolic_tracing"):
            if callable(getattr(module, name, None)):
                setattr(module, name, in_this_thread(getattr(module, name)))


class BackgroundCompile:
    """``fn`` (a module's forward) compiled by ``torch.compile(fn, **compile_kwargs)`` in a background thread.

    The worker thread lives while it has compiles to do, so an idle one does not keep the module (and its GPU
    memory) alive. A process that ends while a compile runs waits for that one compile (which also fills Inductor's
    on-disk cache for the next run) and drops the queued ones.
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], **compile_kwargs) -> None:
        self.fn = fn
        self.compile_kwargs = compile_kwargs
        self.compiled: Callable[[torch.Tensor], torch.Tensor] | None = None  # made by the worker (torch.compile's
        # import of its machinery, ~5 s on the GPU host in call 54, is off the caller's path too)
        self.ready: set[Hashable] = set()  # input kinds the compiled code serves
        self.compile_seconds: dict[Hashable, float] = {}
        self.error: BaseException | None = None
        self._requested: set[Hashable] = set()
        self._jobs: collections.deque = collections.deque()
        self._lock = threading.Condition()  # guards the fields above; notified when a compile ends
        self._worker: threading.Thread | None = None

    @staticmethod
    def kind(x: torch.Tensor) -> Hashable:
        """What the compiled code's guards check beyond a dynamic batch size."""
        return (x.shape[0] == 1, tuple(x.shape[1:]), x.dtype, x.device, x.is_contiguous(), x.is_inference(),
                x.requires_grad)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        key = self.kind(x)
        if key in self.ready:
            return self.compiled(x)
        if key not in self._requested and self.error is None:
            self._request(key, x)
        return self.fn(x)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every requested compile has finished (or one failed); False on timeout."""
        with self._lock:
            return self._lock.wait_for(lambda: self._requested <= self.ready or self.error is not None, timeout)

    def _request(self, key: Hashable, x: torch.Tensor) -> None:
        with torch.inference_mode(x.is_inference()):  # an inference tensor or not, as x (a guard checks it)
            example = x[:2].detach().clone().requires_grad_(x.requires_grad)  # batch 1, or 2 marked dynamic
        with self._lock:
            self._requested.add(key)
            self._jobs.append((key, example, torch.is_grad_enabled(), torch.is_inference_mode_enabled()))
            if self._worker is None:
                # not a daemon: the interpreter must not exit under a compile running C++ code (it aborts)
                self._worker = threading.Thread(target=self._work, name="opensapiens-compile")
                self._worker.start()

    def _work(self) -> None:
        while True:
            with self._lock:
                if not self._jobs or self.error is not None or not threading.main_thread().is_alive():
                    self._worker = None  # (at exit: the compile under way finishes, queued ones are dropped)
                    return
                key, example, grad, inference = self._jobs.popleft()
            t0 = time.perf_counter()
            try:
                isolate_fx_tracing()
                if self.compiled is None:
                    self.compiled = torch.compile(self.fn, **self.compile_kwargs)
                if example.shape[0] > 1:
                    torch._dynamo.mark_dynamic(example, 0)
                with torch.inference_mode(inference), torch.set_grad_enabled(grad):
                    if example.is_cuda:
                        with torch.cuda.device(example.device):
                            self.compiled(example)
                            torch.cuda.synchronize(example.device)
                    else:
                        self.compiled(example)
            except Exception as e:  # noqa: BLE001 — any failure leaves the eager function in place
                warnings.warn(f"torch.compile failed in the background; staying eager: {e}", stacklevel=1)
                with self._lock:
                    self.error = e
                    self._lock.notify_all()
                continue
            with self._lock:
                self.compile_seconds[key] = time.perf_counter() - t0
                self.ready.add(key)
                self._lock.notify_all()
