"""The optimized-inference wrapper's contract, checked on the CPU with stand-ins for the compiled call."""

from __future__ import annotations

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
    import pytest

    from opensapiens.inference.optimize import optimize_for_inference
    from opensapiens.models import build_model

    model = build_model("pose", "nano", out_channels=17, pos_grid=(4, 3))
    for kw in ({"cuda_graphs": True}, {"compile_mode": "max-autotune"}):
        with pytest.raises(ValueError, match="whole-model compile"):
            optimize_for_inference(model, fused=True, **kw)
    assert optimize_for_inference(model) is model  # on the CPU: the model itself, unchanged
    with pytest.raises(ValueError, match="FP8 tensor cores"):  # not a silent no-op
        optimize_for_inference(model, fp8=True)
