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


def test_captured_shapes_fall_back_to_eager_when_a_capture_fails(monkeypatch):
    from opensapiens.inference.graphs import CapturedShapes

    calls = []
    graphed = CapturedShapes(lambda x: calls.append(x.shape) or x * 2)
    x = torch.ones(2, 3)
    assert torch.equal(graphed(x), x * 2) and not graphed.graphs  # a CPU input: no graph, fn itself

    def cannot_capture(x):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(graphed, "_capture", cannot_capture)
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))  # the CUDA gate, on the CPU
    with pytest.warns(UserWarning, match="capture failed; running without graphs"):
        assert torch.equal(graphed(x), x * 2)
    assert torch.equal(graphed(x), x * 2) and len(calls) == 3  # no second attempt: eager from then on


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs")
def test_fused_path_replayed_as_cuda_graphs_matches_it_and_keeps_earlier_results():
    import copy

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
        got4 = graphed(x4)  # captured (after the head's background compile), then replayed
        got2 = graphed(x2)  # another shape, another graph
        again = graphed(x4)  # replayed; got4 must survive it
    assert len(graphed.graphs.graphs) == 2 and graphed.graphs.error is None
    for got, expect in ((got4, expect4), (got2, expect2), (again, expect4)):
        assert (got.float() - expect.float()).norm() / expect.float().norm() < 1e-2
    assert torch.equal(got4, again)
