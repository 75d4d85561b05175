"""Seeds and deterministic kernels: what a bit-identical resume needs.

On a CPU a resumed run continues to the bit-identical next step. On CUDA it continues from the exact saved state,
but cuDNN's autotuning and kernels that accumulate with atomics (convolution weight gradients, some index and
interpolation backwards) may add in another order in another process, so the resumed run drifts at the rounding
level (a relative 1e-7 in the loss after a few steps on an H200, `docs/training.md`). ``deterministic_kernels``
trades some speed for bit-identity there: cuDNN without autotuning and with deterministic algorithms only, PyTorch's
deterministic implementations (an op that has none raises, naming itself), and a fixed cuBLAS workspace.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def deterministic_kernels(enabled: bool = True) -> Iterator[None]:
    """Deterministic kernels inside the block (a no-op when not ``enabled``); the previous settings after it.

    cuBLAS reads ``CUBLAS_WORKSPACE_CONFIG`` when a process first uses it: set here before a run's first GEMM (as the
    CLI does), or export it when other CUDA work ran earlier in the process.
    """
    if not enabled:
        yield
        return
    cudnn = torch.backends.cudnn
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             cudnn.deterministic, cudnn.benchmark)
    workspace = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    if workspace is None:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
    torch.use_deterministic_algorithms(True)
    cudnn.deterministic, cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        cudnn.deterministic, cudnn.benchmark = saved[2], saved[3]
        if workspace is None:
            del os.environ["CUBLAS_WORKSPACE_CONFIG"]


@contextlib.contextmanager
def float32_math(precision: str) -> Iterator[None]:
    """How float32 matmuls and convolutions run inside the block: "tf32" on TensorFloat-32 tensor cores (what the
    official Sapiens2 train.py sets for every run, its fp32 pointmap runs included), "fp32" in full float32 (PyTorch
    otherwise runs convolutions in TF32), "bf16" as PyTorch's defaults (autocast does the rest); then as before."""
    cudnn = torch.backends.cudnn
    saved = torch.get_float32_matmul_precision(), cudnn.allow_tf32
    if precision in ("fp32", "tf32"):
        torch.set_float32_matmul_precision("high" if precision == "tf32" else "highest")
        cudnn.allow_tf32 = precision == "tf32"
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(saved[0])
        cudnn.allow_tf32 = saved[1]
