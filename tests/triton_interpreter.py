"""Run a kernel check under Triton's interpreter on the CPU, in a fresh process (``TRITON_INTERPRET`` is read when a
kernel is decorated). Triton 3.6's interpreter (the GPU image's) cannot run a loop whose bound is a kernel argument,
as our kernels' are: the check is skipped there and runs with later Tritons (CI's)."""

import os
import subprocess
import sys

import pytest

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
