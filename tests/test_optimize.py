"""The optimized-inference wrapper's contract, checked on the CPU with stand-ins for the compiled call."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from opensapiens.inference.optimize import FastModel


class StaticOutput(nn.Module):
    """Like a CUDA-graph replay: every call writes its result into the same buffer and returns that buffer."""

    def __init__(self):
        super().__init__()
        self.register_buffer("out", torch.zeros(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.out.copy_(x * 2)
        return self.out


def test_cuda_graph_outputs_are_copied_so_earlier_results_survive_later_calls():
    graph = StaticOutput()
    x1, x2 = torch.ones(2, 3), torch.full((2, 3), 5.0)

    kept = FastModel(graph, compiled=graph, clone_outputs=True)
    first = kept(x1)
    second = kept(x2)
    assert torch.equal(first, x1 * 2) and torch.equal(second, x2 * 2)  # the first result was not overwritten

    shared = FastModel(graph, compiled=graph, clone_outputs=False)
    first = shared(x1)
    shared(x2)
    assert torch.equal(first, x2 * 2)  # without the copy the replay overwrites it: why the copy is needed


def test_fused_blocks_and_whole_model_compile_are_exclusive():
    from opensapiens.inference.optimize import optimize_for_inference
    from opensapiens.models import build_model

    model = build_model("pose", "nano", out_channels=17, pos_grid=(4, 3))
    with pytest.raises(ValueError, match="whole-model compile"):
        optimize_for_inference(model, fused=True, compile_mode="max-autotune")
    assert optimize_for_inference(model) is model  # on the CPU: the model itself, unchanged
    with pytest.raises(ValueError, match="FP8 tensor cores"):  # not a silent no-op
        optimize_for_inference(model, fp8=True)


def _pretend_cuda(monkeypatch, graphed, captures: list):
    """CapturedShapes' policy on the CPU: the CUDA gate passed, a "capture" that records its shape and a "replay"
    that runs fn."""
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    monkeypatch.setattr(graphed, "_capture", lambda x: captures.append(tuple(x.shape)) or ("graph", x.shape))
    monkeypatch.setattr(graphed, "_replay", lambda captured, x: graphed.fn(x) + 100)  # tells replays apart


def test_captured_shapes_fall_back_to_eager_when_a_capture_fails(monkeypatch):
    from opensapiens.inference.graphs import CapturedShapes

    calls = []
    graphed = CapturedShapes(lambda x: calls.append(x.shape) or x * 2, capture_after=1)
    x = torch.ones(2, 3)
    assert torch.equal(graphed(x), x * 2) and not graphed.graphs  # a CPU input: no graph, fn itself

    def cannot_capture(x):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(graphed, "_capture", cannot_capture)
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))  # the CUDA gate, on the CPU
    with pytest.warns(UserWarning, match="capture failed; running without graphs"):
        assert torch.equal(graphed(x), x * 2)
    assert torch.equal(graphed(x), x * 2) and len(calls) == 3  # no second attempt: eager from then on


def test_a_shape_is_captured_at_its_second_call_once_ready(monkeypatch):
    """A one-off call runs eagerly (no capture to pay for one image); nothing is captured while the head's compile
    is pending (the graph would hold the eager head, and the first results would wait); then each shape once."""
    from opensapiens.inference.graphs import CapturedShapes

    ready, captures = [False], []
    graphed = CapturedShapes(lambda x: x * 2, ready=lambda: ready[0])
    _pretend_cuda(monkeypatch, graphed, captures)
    a, b = torch.ones(4, 3), torch.ones(2, 3)
    assert [graphed(a)[0, 0].item() for _ in range(3)] == [2, 2, 2] and not captures  # compile pending: fn
    ready[0] = True
    assert graphed(a)[0, 0].item() == 102 and captures == [(4, 3)]  # seen before: captured, then replayed
    assert graphed(b)[0, 0].item() == 2 and captures == [(4, 3)]  # a new shape's first call: fn
    assert [graphed(b)[0, 0].item() for _ in range(2)] == [102, 102] and captures == [(4, 3), (2, 3)]
    assert graphed(a)[0, 0].item() == 102 and len(captures) == 2  # each shape captured once


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs")
def test_fused_path_replayed_as_cuda_graphs_matches_it_and_keeps_earlier_results():
    import copy
    import threading

    from opensapiens.inference.optimize import optimize_for_inference
    from opensapiens.models import build_model

    torch.manual_seed(0)
    model = build_model("pose", "nano", out_channels=17, head_channels=32, pos_grid=(8, 6)).cuda().bfloat16()
    plain = optimize_for_inference(copy.deepcopy(model))
    graphed = optimize_for_inference(model, fused=True, cuda_graphs=True)
    x4, x2 = (torch.randn(n, 3, 128, 96, device="cuda", dtype=torch.bfloat16) for n in (4, 2))
    with torch.inference_mode():
        plain.warmup(x4)
        expect4, expect2 = plain(x4), plain(x2)
        graphed.warmup(x4)  # eager, the head's compile waited for, then captured
        assert len(graphed.graphs.graphs) == 1
        got4 = graphed(x4)  # replayed
        first2 = graphed(x2)  # another shape's first call: eager
        got2 = graphed(x2)  # captured, replayed
        again = graphed(x4)  # replayed; got4 must survive it
    assert len(graphed.graphs.graphs) == 2 and graphed.graphs.error is None
    for got, expect in ((got4, expect4), (first2, expect2), (got2, expect2), (again, expect4)):
        assert (got.float() - expect.float()).norm() / expect.float().norm() < 1e-2
    assert torch.equal(got4, again)

    # threads sharing the model, one on its own stream: every result is its own input's replay
    results: dict[str, list] = {"a": [], "b": []}
    with torch.inference_mode():
        expect_b = graphed(x4.flip(0))

    def work(name: str, x: torch.Tensor, stream: torch.cuda.Stream | None) -> None:
        with torch.inference_mode(), torch.cuda.stream(stream):
            for _ in range(20):
                results[name].append(graphed(x))
            torch.cuda.current_stream().synchronize()

    threads = [threading.Thread(target=work, args=("a", x4, None)),
               threading.Thread(target=work, args=("b", x4.flip(0), torch.cuda.Stream()))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(torch.equal(r, got4) for r in results["a"])
    assert all(torch.equal(r, expect_b) for r in results["b"])


def test_optimize_for_inference_refuses_what_it_cannot_optimize():
    """A multi-task model (its predictor runs it as it is), graphs with nothing to capture, and a model whose blocks
    were fused already (optimizing works in place): each a clear error, on any device."""
    from opensapiens.checkpoints import load_model
    from opensapiens.checkpoints.hub import BUNDLED
    from opensapiens.inference.fused import fuse_blocks
    from opensapiens.inference.optimize import optimize_for_inference
    from opensapiens.models import build_model

    with pytest.raises(TypeError, match="single-task"):
        optimize_for_inference(load_model(BUNDLED))
    model = build_model("pose", "nano", out_channels=17, pos_grid=(4, 3)).eval()
    with pytest.raises(ValueError, match="nothing to capture"):
        optimize_for_inference(model, compile=False, cuda_graphs=True)
    fuse_blocks(model.backbone)
    with pytest.raises(ValueError, match="optimized already"):
        optimize_for_inference(model)
