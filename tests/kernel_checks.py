"""Checks shared by the tests of our Triton kernels (attention, bias + GELU).

``run_under_interpreter``: a kernel check under Triton's interpreter on the CPU, in a fresh process
(``TRITON_INTERPRET`` is read when a kernel is decorated). Triton 3.6's interpreter (the GPU image's) cannot run a loop
whose bound is a kernel argument, as our kernels' are: the check is skipped there and runs with later Tritons (CI's).
``assert_mae_step_matches``: on CUDA, an MAE step with a kernel switched on against the same model without it.
"""

import os
import subprocess
import sys
from collections.abc import Callable

import pytest
import torch
from torch import nn

from opensapiens.models.mae import MAE, MAEConfig
from opensapiens.models.vit import get_arch

PROBE = """
import sys

import torch
import triton
import triton.language as tl


@triton.jit
def _loop(x_ptr, n):
    for i in range(0, n, 1):
        tl.store(x_ptr + i, i)


try:
    _loop[(1,)](torch.zeros(2), 2)
except Exception as e:  # Triton 3.6: int() of a 1-element array
    print(f"skip: this Triton's interpreter cannot run a loop with a runtime bound ({e})")
    sys.exit(0)
"""


def run_under_interpreter(script: str) -> None:
    """Run ``script`` (which prints "ok" last) after the probe; skip where the interpreter cannot run our loops."""
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", PROBE + script], env=env, capture_output=True, text=True, timeout=600)
    if done.stdout.startswith("skip:"):
        pytest.skip(done.stdout.strip())
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


def assert_mae_step_matches(switch: Callable[[nn.Module], int]) -> int:
    """The MAE loss and every parameter gradient (nano, bf16 autocast, CUDA) with ``switch`` applied to a copy of the
    model, against the model without it; returns what ``switch`` returned."""
    torch.manual_seed(0)
    ref = MAE(MAEConfig(get_arch("nano"), (128, 96))).cuda()
    switched = MAE(MAEConfig(get_arch("nano"), (128, 96))).cuda()
    switched.load_state_dict(ref.state_dict())
    result = switch(switched)
    images = torch.randn(4, 3, 128, 96, device="cuda")
    losses = []
    for model in (ref, switched):
        torch.manual_seed(1)  # the same random mask
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(images, 0.75)[0]
        loss.backward()
        losses.append(loss.float())
    assert torch.allclose(losses[0], losses[1], rtol=2e-3)
    for (name, a), b in zip(ref.named_parameters(), switched.parameters(), strict=True):
        if a.grad is not None:
            assert (a.grad - b.grad).norm() <= 0.03 * a.grad.norm() + 1e-6, name
    return result
