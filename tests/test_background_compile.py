"""``BackgroundCompile``: calls are answered eagerly until a worker thread has compiled their input kind, then by the
compiled code, without recompiling in the caller's thread. A counting backend stands in for Inductor (what is ours is
the switching, not the compiler); it records each graph it is given and each call of a compiled graph."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest
import torch
from torch import nn

from opensapiens.inference.background_compile import BackgroundCompile, isolate_fx_tracing
from opensapiens.inference.optimize import FastModel

from conftest import TESTS, subprocess_env


class Head(nn.Module):  # the shape of a Sapiens head stage: conv, InstanceNorm, SiLU
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 6, 3, padding=1)
        self.norm = nn.InstanceNorm2d(6, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.silu(self.norm(self.conv(x)))


class Model(nn.Module):  # a model whose head compiles in the background
    def __init__(self):
        super().__init__()
        self.head = Head()

    def forward(self, x):
        return self.head(x)


class CountingBackend:
    def __init__(self, fail: bool = False):
        self.graphs, self.calls, self.fail = 0, 0, fail
        self.gate = threading.Event()  # cleared: compiling blocks until the test sets it
        self.gate.set()

    def __call__(self, gm: torch.fx.GraphModule, example_inputs):
        if self.fail:
            raise RuntimeError("no compiler here")
        assert self.gate.wait(timeout=120)
        self.graphs += 1

        def run(*args):
            self.calls += 1
            return gm.forward(*args)

        return run


def _in_a_fresh_process(script: str, **variables: str) -> subprocess.CompletedProcess:
    """``script`` run by a new interpreter, as a user's process (the package under test on its path)."""
    return subprocess.run([sys.executable, "-c", script], env=subprocess_env(TESTS, **variables), capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_eager_until_compiled_then_compiled_for_every_batch_size_of_the_kind():
    torch.manual_seed(0)
    head, backend = Head(), CountingBackend()
    eager = Head()
    eager.load_state_dict(head.state_dict())
    background = head.forward = BackgroundCompile(head.forward, backend=backend)  # as optimize_for_inference does
    x3, x5, x1 = torch.randn(3, 4, 8, 6), torch.randn(5, 4, 8, 6), torch.randn(1, 4, 8, 6)
    with torch.inference_mode():
        first = head(x3)  # answered eagerly; the compile starts behind it
        assert torch.equal(first, eager(x3))
        assert background.wait(timeout=120) and backend.graphs == 1
        calls = backend.calls
        torch.testing.assert_close(head(x3), eager(x3))
        torch.testing.assert_close(head(x5), eager(x5))  # another batch size: the same (dynamic) graph
        assert backend.calls == calls + 2 and backend.graphs == 1
        backend.gate.clear()  # hold the next compile
        assert torch.equal(head(x1), eager(x1))  # batch 1 is its own kind: eager while it compiles
        assert backend.calls == calls + 2 and not background.wait(timeout=0.2)
        backend.gate.set()
        assert background.wait(timeout=120) and backend.graphs == 2
        calls = backend.calls
        torch.testing.assert_close(head(x1), eager(x1))
        assert backend.calls == calls + 1 and backend.graphs == 2  # compiled, no recompile in this thread
    assert set(background.compile_seconds) == background.ready and len(background.ready) == 2


def test_a_failed_compile_warns_and_stays_eager():
    head = Head()
    reference = head.forward
    background = head.forward = BackgroundCompile(head.forward, backend=CountingBackend(fail=True))
    x = torch.randn(2, 4, 8, 6)
    with torch.inference_mode(), pytest.warns(UserWarning, match="staying eager"):
        head(x)
        assert background.wait(timeout=120)
    assert background.error is not None and not background.ready
    with torch.inference_mode():
        torch.testing.assert_close(head(x), reference(x))  # no new attempt, same function
    assert background.wait(timeout=0)


def test_warmup_returns_once_the_batch_runs_compiled():
    model, backend = Model(), CountingBackend()
    background = model.head.forward = BackgroundCompile(model.head.forward, backend=backend)
    fast = FastModel(model, background=background)
    seconds = fast.warmup(torch.randn(4, 4, 8, 6))
    assert seconds > 0 and backend.graphs == 1 and backend.calls == 2  # the compile's own run, then the warm-up's
    assert fast.compile_seconds == seconds


IDLE_WORKER = """
import gc
import threading
import weakref

import torch
from test_background_compile import CountingBackend, Head

from opensapiens.inference.background_compile import BackgroundCompile

head = Head()
background = head.forward = BackgroundCompile(head.forward, backend=CountingBackend())
with torch.inference_mode():
    head(torch.randn(2, 4, 8, 6))
# the compile takes longer than this line: the worker is alive here. Join the thread itself, not the _worker field: it
# clears the field just before its frame (holding the module) ends, so a loaded machine could see None too early
workers = [t for t in threading.enumerate() if t.name == "opensapiens-compile"]
assert len(workers) == 1, workers
assert background.wait(timeout=120)
workers[0].join(timeout=120)
assert not workers[0].is_alive() and background._worker is None, "a thread waits on an empty queue holding the module"
alive = weakref.ref(head)
del head, background
torch._dynamo.reset()
gc.collect()
assert alive() is None, "the module outlived its idle worker"
print("ok")
"""


def test_an_idle_worker_ends_and_lets_the_model_go():
    """In a fresh process, as a user's: under pytest, PyTorch 2.11 (the GPU image) kept a module compiled alone in the
    session alive, with this code and with the code before it; the same steps in a plain process freed it there."""
    done = _in_a_fresh_process(IDLE_WORKER)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_a_module_run_while_another_thread_fx_traces_runs_as_plain_eager():
    """torch.fx patches nn.Module.__call__ for every thread while it traces (Inductor does, in the worker); a module
    the caller runs in that window raised NameError (call 64). The trace is held open here; the caller's module
    must give its eager result, and tracing in the tracing thread must still record modules."""
    isolate_fx_tracing()
    inside, release, traced = threading.Event(), threading.Event(), []

    def held_open(x):
        inside.set()
        assert release.wait(60)
        return x + 1

    tracer = threading.Thread(target=lambda: traced.append(torch.fx.symbolic_trace(held_open)))
    tracer.start()
    assert inside.wait(60)
    linear, x = nn.Linear(3, 2), torch.randn(4, 3)
    try:
        y = linear(x)  # inside the other thread's trace window
    finally:
        release.set()
        tracer.join()
    assert torch.allclose(y, x @ linear.weight.detach().T + linear.bias.detach())
    assert traced[0](torch.ones(2)).tolist() == [2.0, 2.0]
    model = nn.Sequential(nn.Linear(3, 5), nn.ReLU())
    graph = torch.fx.symbolic_trace(model).graph
    assert [n.target for n in graph.nodes if n.op == "call_module"] == ["0", "1"]  # this thread's trace records them


def test_a_compiled_call_runs_while_another_thread_fx_traces():
    """PyTorch 2.11 keeps "FX is tracing" in one process-wide flag that dynamo checks before running compiled code: the
    worker's compiled call raised "Detected that you are using FX to symbolically trace a dynamo-optimized function"
    while another thread traced, and the compile stayed eager (call 115, on CUDA). Newer PyTorch keeps the flag per
    thread; isolate_fx_tracing makes an older one answer per thread too. A trace in this thread still sees it."""
    isolate_fx_tracing()
    compiled = torch.compile(lambda x: x * 2, backend="eager")
    inside, release = threading.Event(), threading.Event()

    def held_open(x):
        inside.set()
        assert release.wait(60)
        return x + 1

    tracer = threading.Thread(target=lambda: torch.fx.symbolic_trace(held_open))
    tracer.start()
    assert inside.wait(60)
    try:
        y = compiled(torch.ones(3))  # inside the other thread's trace window
    finally:
        release.set()
        tracer.join()
    assert y.tolist() == [2.0, 2.0, 2.0]
    with pytest.raises(RuntimeError, match="symbolically trace a dynamo-optimized function"):
        torch.fx.symbolic_trace(lambda x: compiled(x))  # nested in this thread's own trace: dynamo still refuses


EXIT_DURING_COMPILE = """
import atexit
import time
import torch
from opensapiens.inference.background_compile import BackgroundCompile
f = BackgroundCompile(lambda x: torch.nn.functional.silu(2 * x + 1), options={"compile_threads": 1})
atexit.register(lambda: print("compiled" if f.ready and f.error is None else f"not compiled: {f.error}"))
f(torch.randn(2, 3))
while f._jobs:  # until the worker has taken the job: a compile not yet started when the process ends is dropped
    time.sleep(0.01)
# the main thread ends here, seconds before Inductor's compile does
"""


def test_a_process_that_ends_during_the_compile_waits_for_it_to_finish(tmp_path):
    """As a one-image ``predict``: the caller is done before the worker. The compile runs on during the interpreter's
    shutdown and finishes (Inductor, with an empty cache of its own; atexit handlers run after the worker is joined)."""
    done = _in_a_fresh_process(EXIT_DURING_COMPILE, TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "inductor"))
    assert done.returncode == 0 and done.stdout.strip() == "compiled", (done.stdout, done.stderr[-2000:])
    assert "failed" not in done.stderr, done.stderr[-2000:]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the optimized path is CUDA's")
def test_optimized_seg_model_answers_before_and_after_its_head_compiles():
    from torch._inductor import async_compile

    from opensapiens.inference.optimize import optimize_for_inference
    from opensapiens.models import build_model

    async_compile.shutdown_compile_workers()  # (a pool an earlier test's compile started)
    torch.manual_seed(0)
    model = build_model("seg", "nano", out_channels=5, head_channels=32, pos_grid=(8, 6)).cuda().bfloat16()
    fast = optimize_for_inference(model)  # fused blocks; the head compiles in the background (Inductor)
    assert isinstance(fast.background, BackgroundCompile)
    x = torch.randn(3, 3, 128, 96, device="cuda", dtype=torch.bfloat16)
    with torch.inference_mode():
        first = fast(x).float()  # the head eager
        assert fast.background.wait(timeout=300) and fast.background.error is None and fast.background.ready
        later = fast(x).float()  # the head compiled
        also = fast(x[:2]).float()  # another batch size, the same compiled graph
    assert (later - first).norm() / first.norm() < 2e-2  # the same function in bf16 (Inductor fuses norm + SiLU)
    assert (also - later[:2]).norm() / later[:2].norm() < 2e-2
    assert not async_compile._pool_set  # compiled in-process: no worker pool for the process to wait for at exit


def test_the_predict_path_imports_no_compiler_until_the_worker_compiles():
    """torch.compile's machinery (torch._dynamo, ~5 s to import on the GPU host) and torchvision (which imports it) are
    off the caller's path: importing the predictors and the CLI and making a ``BackgroundCompile`` import neither; its
    worker does. Nor does the training loop's checkpointing come with the attention-backend choice. A fresh process,
    as a user's."""
    script = """
import sys
import torch
import opensapiens.cli.main, opensapiens.cli.predict
from opensapiens.inference import crop_people
from opensapiens.inference.background_compile import BackgroundCompile
from opensapiens.inference.predictors import load_predictor
from opensapiens.training.speed import use_fast_attention  # (what optimize_for_inference imports on CUDA)
f = BackgroundCompile(torch.nn.functional.silu, backend=lambda gm, example_inputs: gm.forward)
assert "torch._dynamo" not in sys.modules and "torchvision" not in sys.modules, "imported on the predict path"
assert "torch.distributed.checkpoint" not in sys.modules, "the training loop imported on the predict path"
f(torch.randn(2, 3))
assert f.wait(timeout=120) and f.error is None and "torch._dynamo" in sys.modules  # imported by the worker
from opensapiens.inference import PersonDetector  # the detector on first use
print("ok")
"""
    done = _in_a_fresh_process(script)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
