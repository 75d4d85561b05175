"""The fast CUDA inference path: attention backend per shape, head-dim padding, compiled fusions, optional FP8.

``optimize_for_inference(model)`` returns a module with the same ``forward`` contract. What it does on CUDA:

* attention: cuDNN first, then flash, then memory-efficient (SDPA priority order); head dims that no fused kernel
  takes (the 2B model's 60) are zero-padded to the next multiple of 16 in the qkv/proj weights, which is exact;
* ``torch.compile`` (default mode: seconds, not minutes of autotuning) fuses the heads' InstanceNorm + SiLU (and,
  on the whole-model path, LayerNorm, bias, GELU and residual adds around the cuBLAS GEMMs); Inductor's on-disk
  cache makes later processes start fast;
* cuDNN autotuning (``cudnn.benchmark``) for the heads' high-resolution transposed convolutions; with
  ``channels_last=True`` the heads run on NHWC maps (``channels_last_head``);
* by default the transformer blocks run eager but rewritten (``fused.py``): biases folded out of the residual
  stream, proj/fc2 GEMMs accumulating into it in place, fc1 with cuBLASLt's bias + GELU epilogue, one Triton
  kernel per LayerNorm; only the head goes through ``torch.compile``, in a background thread while the first
  batches run it eagerly (``background_compile.py``; ``fused=False``: the whole model is compiled, up front);
* ``fused=True, cuda_graphs=True`` replays the fused path as one CUDA graph per batch shape (``graphs.py``): one
  launch per batch instead of hundreds from Python. Not the default: 2 % slower on pose-1B (calls 42 and 80) and no
  steady gain end to end (docs/performance.md);
* ``fp8=True`` swaps every Linear of the transformer blocks for an e4m3 GEMM with per-row activation scales and
  per-output-channel weight scales (``torch._scaled_mm``, Hopper and newer); on the fused path their inputs are
  quantized by the norm and GELU kernels; attention and the heads stay in bf16;
* Sapiens2 models take the same two paths: ``fused2.py``'s blocks (RMSNorms, q/k norms with the rotary embedding,
  SwiGLU as Triton passes around the GEMMs) with the head compiled, or the whole model compiled; FP8 on either.

On CPU it returns the model unchanged.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import torch
from torch import nn

from ..models.heads import DeconvHead
from ..models.multitask import SapiensMultiTask
from ..models.sapiens2 import Sapiens2ViT
from ..models.vit import Attention, pad_head_weights
from .background_compile import BackgroundCompile
from .fp8 import convert_to_fp8
from .fused import FusedBlock, fuse_blocks
from .fused2 import FusedBlock2, fuse_blocks2
from .graphs import CapturedShapes, cloned


def _heads_to_pad(model: nn.Module, multiple: int) -> Iterator[tuple[Attention, int]]:
    """Each attention layer whose head dim (in its qkv layout) is not a multiple of ``multiple``, with the padded
    head dim."""
    for m in model.modules():
        if isinstance(m, Attention):
            hd = m.head_dim
            if hd % multiple:
                yield m, (hd + multiple - 1) // multiple * multiple


def pad_attention_heads(model: nn.Module, multiple: int = 16) -> int:
    """Training: zero-pad head dims that are not a multiple of ``multiple`` at run time (parameters unchanged);
    returns the padded size (0 if none needed)."""
    padded = 0
    for m, padded in _heads_to_pad(model, multiple):
        m.padded_head_dim = padded
    return padded


def pad_attention_weights(model: nn.Module, multiple: int = 16) -> int:
    """Inference: zero-pad head dims in the qkv/proj weights (``vit.pad_head_weights``); returns the padded size."""
    padded = 0
    for m, padded in _heads_to_pad(model, multiple):
        pad_head_weights(m, padded)
    return padded


def channels_last_head(head: nn.Module) -> None:
    """Run the head's convolutions on NHWC maps, cuDNN's native layout on tensor cores.

    Each convolution's input is made channels-last by a pre-hook (a no-op for the backbone's feature map, which is
    an NHWC view of the token sequence); cuDNN then keeps its output NHWC too and stops transposing every
    high-resolution map. Hooks rather than ``head.to(memory_format=...)``, so the layout survives FSDP, whose
    gathered parameters are plain contiguous tensors.
    """
    def to_nhwc(module: nn.Module, args: tuple) -> tuple:
        return (args[0].contiguous(memory_format=torch.channels_last), *args[1:])

    for m in head.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            m.register_forward_pre_hook(to_nhwc)


def channels_last_pays(head: nn.Module) -> bool:
    """Whether ``channels_last_head`` speeds ``head``'s training step, as measured: yes for v1's wide deconvolution
    heads (0.3B seg step 1.13x, 4.4 GiB less), no for Sapiens2's heads (0.4B step times NHWC: pointmap +15 %, seg
    +17 %, normal +11 %; H200, calls 129 and 131; pose not measured, kept NCHW with them)."""
    return isinstance(head, DeconvHead)


def attention_backends():
    from torch.nn.attention import SDPBackend

    return [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
            SDPBackend.MATH]


@contextlib.contextmanager
def fast_attention():
    """Prefer cuDNN > flash > memory-efficient > math attention inside this context (CUDA only)."""
    from torch.nn.attention import sdpa_kernel

    try:
        ctx = sdpa_kernel(attention_backends(), set_priority=True)
    except TypeError:  # torch without priority support: allow all, torch picks
        ctx = sdpa_kernel(attention_backends())
    with ctx:
        yield


class FastModel(nn.Module):
    """Wraps a (possibly compiled) model so every call runs with the preferred attention backends.

    ``clone_outputs``: with CUDA graphs the compiled call returns tensors in the graph's static memory, which the
    next call overwrites; the wrapper hands out copies, so a caller may keep results across calls (the pipeline
    post-processes batch i after queueing batch i+1).
    """

    def __init__(self, model: nn.Module, compiled: nn.Module | None = None, clone_outputs: bool = False,
                 background: BackgroundCompile | None = None, graphs: bool = False):
        super().__init__()
        self.model = model
        self._compiled = compiled
        self._clone_outputs = clone_outputs
        self.background = background  # a part compiled in the background (the fused path's head)
        # graphs: each input shape captured as a CUDA graph (once the background compile is done) and replayed
        ready = (lambda: background.wait(timeout=0)) if background else None
        self.graphs = CapturedShapes(self._run, ready) if graphs else None
        self.compile_seconds: float | None = None
        self._largest_batch = 0

    @property
    def config(self):
        return self.model.config

    @property
    def task(self) -> str:
        return self.model.task

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        fn = self._compiled if self._compiled is not None else self.model
        with fast_attention():
            return fn(x)

    def run_size(self, n: int, size: int) -> int:
        """The batch size to run ``n`` images at when callers batch by ``size``: short batches are zero-padded to
        ``size`` so that they do not compile (or capture) again. The whole-model compile is static in shape: always
        padded. The fused path compiles its head for batch 1 apart from batches >= 2, so a lone image runs alone (a
        quarter of the work at size 4) unless larger batches have run, whose compiled code (and captured graph) a
        job's short last chunk then reuses."""
        if n >= size or (n == 1 and self._compiled is None and self._largest_batch <= 1):
            return n
        return size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._largest_batch = max(self._largest_batch, x.shape[0])
        if self.graphs is not None:
            return self.graphs(x)  # a copy of the graph's static output
        out = self._run(x)
        return cloned(out) if self._clone_outputs else out

    def warmup(self, batch: torch.Tensor) -> float:
        """Run until ``batch``'s shape runs compiled (a background compile included) and, on the graphed path,
        replayed from its captured graph; returns the seconds it took."""
        sync = torch.cuda.synchronize if batch.is_cuda else (lambda: None)
        sync()
        t0 = time.perf_counter()
        with torch.inference_mode():
            self(batch)
            if self.background is not None:
                self.background.wait()
                self(batch)
            elif self.graphs is not None:  # no compile to wait for: this second call captures the shape
                self(batch)
        sync()
        self.compile_seconds = time.perf_counter() - t0
        return self.compile_seconds


def require_fp8_device(device: torch.device) -> None:
    """Raise ``ValueError`` unless ``device`` has FP8 tensor cores (CUDA compute capability 8.9 or newer)."""
    if device.type != "cuda" or torch.cuda.get_device_capability(device) < (8, 9):
        raise ValueError(f"fp8=True needs a CUDA GPU with FP8 tensor cores (compute capability 8.9 or newer: Ada, "
                         f"Hopper, Blackwell); device {device} has none")


def optimize_for_inference(model: nn.Module, compile: bool = True, fp8: bool = False,
                           cuda_graphs: bool = False, channels_last: bool = False,
                           compile_mode: str | None = None, fused: bool | None = None,
                           attention: str = "sdpa") -> nn.Module:
    """The optimized inference module for ``model`` (see the module docstring); identity on CPU (``fp8`` there, or on
    a GPU without FP8 tensor cores, raises ``ValueError``).

    The transformer blocks take one of two paths: ``fused`` (eager ``FusedBlock``s, only the head compiled; the
    default) or the whole model through ``torch.compile``, which ``compile_mode`` needs and ``fused=None`` picks
    for it and for ``cuda_graphs`` (``torch.compile``'s "reduce-overhead"); ``fused=True, cuda_graphs=True``
    captures the fused path itself as one CUDA graph per input shape (``graphs.py``). FP8 takes either.
    ``compile_mode`` is handed to ``torch.compile`` (e.g. "max-autotune-no-cudagraphs": Triton GEMM templates timed
    against cuBLAS, with elementwise epilogues fused into them; minutes of autotuning). ``attention="fa4"`` runs
    attention on FlashAttention-4's kernels (``models.fa4_attention``, the optional ``flash-attn-4`` package)
    instead of SDPA's.

    On CUDA it works in place: ``model``'s blocks become inference-only ``FusedBlock``s (or its GEMMs FP8), its head
    compiles, and cuDNN's autotuning is switched on; use the returned module, and optimize a model once.
    """
    if isinstance(model, SapiensMultiTask):
        raise TypeError("optimize_for_inference takes a single-task model (SapiensModel); a multi-task model runs as "
                        "it is (MultiTaskPredictor), or load one task of it with task=...")
    if attention not in ("sdpa", "fa4"):
        raise ValueError(f"attention must be 'sdpa' or 'fa4', got {attention!r}")
    if fused and compile_mode is not None:
        raise ValueError("fused=True keeps the blocks out of torch.compile; compile_mode needs the whole-model "
                         "compile (fused=False)")
    fused = not (cuda_graphs or compile_mode is not None) if fused is None else fused
    if cuda_graphs and not (fused or compile):
        raise ValueError("cuda_graphs=True replays the whole-model compile (compile=True) or the fused blocks "
                         "(fused=True); with neither there is nothing to capture")
    if any(isinstance(m, (FusedBlock, FusedBlock2)) for m in model.modules()):
        raise ValueError("this model was optimized already (its blocks are FusedBlocks): use the module that "
                         "optimize_for_inference returned")
    device = next(model.parameters()).device
    if fp8:
        require_fp8_device(device)
    if device.type != "cuda":
        return model
    model.eval()
    torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN time its deconvolution algorithms once
    pad_attention_weights(model)
    from ..training.speed import use_fast_attention  # (training imports this module)

    use_fast_attention(model, device, attention)  # "fa4": every head dim, all padded to multiples of 16 by now
    if channels_last and hasattr(model, "head"):
        channels_last_head(model.head)
    if fused:
        backbone = model.backbone if hasattr(model, "backbone") else model
        (fuse_blocks2 if isinstance(backbone, Sapiens2ViT) else fuse_blocks)(backbone, fp8=fp8)
        background = None
        if compile and getattr(model, "head", None) is not None:  # the head's norms and activations
            # eager until compiled. compile_threads=1: Inductor's parallel compile starts a sidecar process (which
            # imports torch) that a head's few kernels do not need, and that the process waits for at exit: 7.0 s
            # of a one-image predict's 29.8 s on the H200 (call 54)
            background = model.head.forward = BackgroundCompile(model.head.forward, options={"compile_threads": 1})
        return FastModel(model, background=background, graphs=cuda_graphs)
    if fp8:
        convert_to_fp8(model)
    compiled = None
    if compile:  # CUDA graphs ("reduce-overhead") replay the whole forward with one launch per fixed batch shape
        mode = "reduce-overhead" if cuda_graphs else compile_mode
        compiled = torch.compile(model, mode=mode, dynamic=False)
    return FastModel(model, compiled, clone_outputs=compile and cuda_graphs)
