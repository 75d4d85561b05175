"""ONNX export: a loaded model as an ONNX graph for onnxruntime, TensorRT and the other runtimes.

The graph is the model's ``forward``: a normalized (B, 3, H, W) float batch (``inference.transforms``: RGB, the
official mean and std) to the raw head output, as ``load_model`` returns it; B is dynamic, H and W fixed at export
(the position embedding is resized for them once, at export). A multi-task model has one output per task. Exported
with ``torch.onnx.export(dynamo=True)``, which needs the ``onnx`` and ``onnxscript`` packages (``pip install
opensapiens[onnx]``). Weights go into ``NAME.onnx.data`` beside the graph when they pass protobuf's 2 GB (1B and 2B
models in fp32); both files appear under their final names only once complete.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import io
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..models.sapiens2 import RotaryEmbedding2d
from .loading import as_dtype

PROTOBUF_LIMIT = 2 << 30  # bytes a single .onnx file can hold


def _output_names(model: nn.Module) -> list[str]:
    tasks = getattr(model, "tasks", None)
    if tasks is not None:
        return list(tasks)
    return ["pointmap", "scale"] if model.config.task == "pointmap" else [model.config.task]


class _Outputs(nn.Module):
    """A multi-task model's dict as a tuple (ONNX outputs are positional; their names say which is which)."""

    def __init__(self, model: nn.Module, names: list[str]):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(x)
        if isinstance(out, dict):
            return tuple(out[n] for n in self.names)
        return out if isinstance(out, tuple) else (out,)


def default_input_size(model: nn.Module) -> tuple[int, int]:
    """The size the model's position embedding was made for: its training resolution (1024x768 for the official
    pose/seg/depth/normal models, 1024x1024 for pretrain ones; Sapiens2, which has none, 1024x768 throughout, its 4K
    backbone 4096x3072)."""
    if getattr(model.config, "generation", 1) == 2:
        return model.config.task_input_size
    grid = model.config.pos_grid
    return grid[0] * 16, grid[1] * 16


def export_onnx(model: nn.Module, path: str | os.PathLike, input_size: tuple[int, int] | None = None,
                dtype: str | torch.dtype | None = "fp32", opset: int | None = None) -> Path:
    """Write ``model`` as ONNX to ``path``; returns it. ``input_size`` (H, W): default ``default_input_size``;
    ``dtype``: the graph's weights and input ("fp32" or "fp16", for GPU runtimes)."""
    for package in ("onnx", "onnxscript"):
        if importlib.util.find_spec(package) is None:
            raise ImportError(f"ONNX export needs the {package} package: pip install 'opensapiens[onnx]'")
    path = Path(path)
    if path.suffix.lower() != ".onnx":
        raise ValueError(f"{path}: an ONNX file's name ends in .onnx")
    h, w = input_size or default_input_size(model)
    stride = model.config.arch.stride  # input pixels per token: 16, the 4K backbone's 64
    if h % stride or w % stride or h <= 0 or w <= 0:
        raise ValueError(f"input_size {h}x{w} must be positive and divisible by {stride}")
    dtype = as_dtype(dtype)
    if dtype not in (torch.float32, torch.float16):
        raise ValueError(f"ONNX export takes fp32 or fp16 weights, not {dtype}")
    param = next(model.parameters())
    rotary = [m for m in model.modules() if isinstance(m, RotaryEmbedding2d)]
    if (param.device.type, param.dtype) != ("cpu", dtype) or rotary:  # a copy: the caller's model stays as it is
        model = copy.deepcopy(model).to(device="cpu", dtype=dtype)
    for m in model.modules():  # Sapiens2's angles in the graph's dtype: runtimes have no bfloat16 arithmetic on CPUs
        if isinstance(m, RotaryEmbedding2d):
            m.dtype = dtype
    was_training = model.training
    names = _output_names(model)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    example = torch.zeros(2, 3, h, w, dtype=dtype)
    batch = torch.export.Dim("batch", min=1, max=4096)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{path.name}.", dir=path.parent) as tmp:
        tmp_file = Path(tmp) / path.name
        try:
            with torch.inference_mode(False), torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):  # progress
                torch.onnx.export(_Outputs(model, names).eval(), (example,), tmp_file, input_names=["image"],
                                  output_names=names, dynamic_shapes=({0: batch},), opset_version=opset,
                                  dynamo=True, external_data=weight_bytes > PROTOBUF_LIMIT * 0.9, verbose=False)
        finally:
            model.train(was_training)  # exported in eval mode; a model mid-training goes on training
        data = [f for f in Path(tmp).iterdir() if f != tmp_file]
        for f in data:  # the data file first: the graph's name appears last, with what it refers to in place
            os.replace(f, path.parent / f.name)
        if not data:  # an earlier export's weights beside the same name would be left unreferenced
            (path.parent / f"{path.name}.data").unlink(missing_ok=True)
        os.replace(tmp_file, path)
    return path


def check_onnx(model: nn.Module, path: str | os.PathLike, batch: int = 2, seed: int = 0) -> dict[str, float]:
    """Run the exported graph with onnxruntime (CPU) on a random normalized batch and compare with ``model``: the
    largest difference per output relative to that output's largest magnitude."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise ImportError("checking an ONNX export needs onnxruntime: pip install onnxruntime") from e
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (image,) = session.get_inputs()
    h, w = image.shape[2], image.shape[3]
    dtype = torch.float16 if image.type == "tensor(float16)" else torch.float32
    x = torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(seed))
    names = [o.name for o in session.get_outputs()]
    ours = session.run(names, {image.name: x.to(dtype).numpy()})
    with torch.no_grad():
        param = next(model.parameters())
        ref = _Outputs(model, names)(x.to(param.device, param.dtype))
    return {n: float(np.abs(o.astype(np.float64) - r.double().cpu().numpy()).max()
                     / max(float(r.double().abs().max()), 1e-12)) for n, o, r in zip(names, ours, ref)}

