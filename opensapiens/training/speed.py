"""Activation checkpointing and torch.compile, applied in place (parameter names and state dicts are unchanged).

Blocks: each checkpointed block keeps only its input (B, N, C) and recomputes the rest in backward; ``save_attention``
keeps the attention output too (selective checkpointing), so flash attention is not run twice; ``save_matmuls`` keeps
every GEMM's output as well, so only the memory-bound ops between them are recomputed.

Head: at 1024x768 the 768-channel head's activations dominate memory (each (B, 768, 512, 384) map is 300 MB per
image in bf16, and every stage stores conv output, InstanceNorm output and SiLU output). ``checkpoint_head`` splits
the head into regions [norm, act, next conv] and keeps only the convolution outputs: InstanceNorm and SiLU (cheap,
memory-bound) are recomputed in backward, the convolutions are not. One map per stage instead of three.

``checkpoint_head(head, batch_chunk=n)`` goes further where the batch is what runs out of memory: the head runs on
slices of n images, each slice checkpointed whole, so only the slice inputs (the small backbone feature maps) are
kept, and backward recomputes and differentiates one slice at a time. The head's activation memory is then that of
n images whatever the batch, for one extra head forward (4 % of a 2B normal step's FLOPs, 14 % of a 0.3B seg step's).
Exact, because the head treats every image alone (InstanceNorm normalizes per image and channel).

All wrap ``module.forward`` so they compose with FSDP2 (whose hooks wrap ``__call__``) and with DDP.
"""

from __future__ import annotations

import functools
import importlib.util
import warnings
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from ..models import fa4_attention
from ..models.heads import DeconvHead
from ..models.vit import Attention, Mlp

_CONV = {torch.ops.aten.convolution.default}
_ATTENTION = {getattr(torch.ops.aten, name).default
              for name in ("_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
                           "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_flash_attention_for_cpu")
              if hasattr(torch.ops.aten, name)} | {torch.ops.opensapiens.fa4_attention_forward.default}
_MATMUL = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default}  # nn.Linear's
ATTENTION_CHOICES = ("auto", "sdpa", "triton", "fa4")


def check_attention_choice(choice: str) -> str:
    """``choice`` if it is one of ``ATTENTION_CHOICES``, else a ``ValueError`` naming them."""
    if choice not in ATTENTION_CHOICES:
        raise ValueError(f"attention must be one of {', '.join(ATTENTION_CHOICES)}, got {choice!r}")
    return choice


def _saving(ops: set) -> Callable:
    """A ``context_fn`` for selective checkpointing that stores the outputs of ``ops`` and recomputes the rest."""

    def policy(ctx, op, *args, **kwargs):
        return CheckpointPolicy.MUST_SAVE if op in ops else CheckpointPolicy.PREFER_RECOMPUTE

    return functools.partial(create_selective_checkpoint_contexts, policy)


def _checkpointed(module: nn.Module, fn: Callable, context_fn: Callable | None = None) -> Callable:
    def forward(*args, **kwargs):
        if not (module.training and torch.is_grad_enabled()):
            return fn(*args, **kwargs)
        kw = {"context_fn": context_fn} if context_fn is not None else {}
        return checkpoint(fn, *args, use_reentrant=False, **kw, **kwargs)

    return forward


def check_saved_outputs(checkpointing: str, save_attention: bool, save_matmuls: bool) -> None:
    """``save_attention`` / ``save_matmuls`` keep outputs of checkpointed blocks: a ``ValueError`` without them."""
    for option, on, kept in (("save_attention", save_attention, "the attention output"),
                             ("save_matmuls", save_matmuls, "the GEMM outputs")):
        if on and "blocks" not in checkpointing:
            raise ValueError(f"{option} keeps {kept} of checkpointed blocks: it needs checkpointing blocks or "
                             f"blocks+head, got {checkpointing!r}")


def checkpoint_blocks(blocks: nn.ModuleList, num_blocks: int | None = None, save_attention: bool = False,
                      save_matmuls: bool = False) -> int:
    """Checkpoint the first ``num_blocks`` blocks (all if None); returns how many were wrapped. ``save_matmuls``:
    keep every GEMM's and the attention's output, so backward recomputes only the memory-bound ops between them
    (norms, rotary embedding, activations, LayerScale): no GEMM or attention redone, and the outputs of those ops,
    which a plain block also keeps (a Sapiens2 block's in float32), are not stored."""
    n = len(blocks) if num_blocks is None else max(0, min(num_blocks, len(blocks)))
    kept = (_ATTENTION if save_attention or save_matmuls else set()) | (_MATMUL if save_matmuls else set())
    ctx = _saving(kept) if kept else None
    for block in list(blocks)[:n]:
        block.forward = _checkpointed(block, block.forward, ctx)
    return n


def checkpoint_head(head: DeconvHead, batch_chunk: int | None = None) -> None:
    """Keep one activation per head stage (the convolution output), or with ``batch_chunk`` only the inputs of
    slices of that many images (see the module docstring)."""
    plain_forward = head.forward
    if batch_chunk is not None:
        if batch_chunk < 1:
            raise ValueError(f"batch_chunk must be >= 1, got {batch_chunk}")

        def sliced(x: torch.Tensor) -> torch.Tensor:
            if not (head.training and torch.is_grad_enabled()):
                return plain_forward(x)
            # autograd runs the later slice's graph to the end before the earlier one (higher sequence numbers
            # first), so one slice's recomputed maps and their gradients are alive at a time
            outs = [checkpoint(plain_forward, part, use_reentrant=False) for part in x.split(batch_chunk)]
            if isinstance(outs[0], tuple):  # pointmap: (points, scale)
                return tuple(torch.cat(parts) for parts in zip(*outs))
            return torch.cat(outs)

        head.forward = sliced
        return
    if hasattr(head, "upsample_blocks"):  # Sapiens2's normal / pointmap head: each stage (conv, pixel shuffle, norm,
        stages = [head.input_conv, *head.upsample_blocks, head.conv_layers]  # SiLU) is one; the small scale branch
        # of pointmap's runs as it is

        def staged(features: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
            if not (head.training and torch.is_grad_enabled()):
                return plain_forward(features)
            x = features
            for stage in stages:
                x = checkpoint(stage, x, use_reentrant=False)
            y = head.final(x)
            return y if head.scale_conv_layers is None else (y, head.scale(features))

        head.forward = staged
        return
    dropout = getattr(head, "dropout", nn.Identity())  # (Sapiens2's pose and seg heads have none)
    layers = [*head.deconv_layers, *head.conv_layers]
    convs, norms, acts = layers[0::3], layers[1::3], layers[2::3]  # Sequential of (conv, InstanceNorm, SiLU) stages
    save_convs = _saving(_CONV)

    def region(i: int) -> Callable[[torch.Tensor], torch.Tensor]:
        def run(x: torch.Tensor) -> torch.Tensor:
            x = acts[i](norms[i](x))
            return convs[i + 1](x) if i + 1 < len(convs) else head.final(dropout(x))

        return run

    regions = [region(i) for i in range(len(convs))]

    def forward(x: torch.Tensor) -> torch.Tensor:
        if not (head.training and torch.is_grad_enabled()):
            return plain_forward(x)
        x = convs[0](x)
        for run in regions:
            x = checkpoint(run, x, use_reentrant=False, context_fn=save_convs)
        return x

    head.forward = forward


def compile_blocks(blocks: nn.ModuleList, head: nn.Module | None = None, mode: str | None = None) -> None:
    """torch.compile each block's forward (and the head's): fuses LayerNorm, GELU, residual adds, norm + SiLU.
    ``mode`` goes to the blocks' ``torch.compile`` (e.g. "reduce-overhead": each block replayed as CUDA graphs)."""
    for block in blocks:
        block.forward = torch.compile(block.forward, mode=mode)
    if head is not None:
        head.forward = torch.compile(head.forward)


def use_flash_attention(model: nn.Module, head_dims: tuple[int, ...] = (32,), kernel: str = "triton") -> int:
    """Run attention layers of these head dims on our Triton FlashAttention kernels (CUDA; ``models.flash_attention``)
    instead of SDPA; returns how many layers switched. Head dim 32 by default: the MAE decoder's (4097 tokens), where
    they beat every SDPA backend, forward + backward; at head dim 64 cuDNN's kernels are faster inside the MAE step
    and on fine-tuning's shape (`docs/performance.md`). ``kernel="fa4"``: FlashAttention-4's kernels instead
    (``models.fa4_attention``; the optional ``flash-attn-4`` package, which must be installed)."""
    if kernel == "fa4":
        if not fa4_attention.available():
            fa4_attention._interface()  # raises the error that says what to install
    elif kernel != "triton":
        raise ValueError(f"attention kernel must be 'triton' or 'fa4', got {kernel!r}")
    elif importlib.util.find_spec("triton") is None:  # e.g. a CUDA build without Triton: SDPA stays
        return 0
    switched = 0
    for m in model.modules():
        if isinstance(m, Attention) and m.head_dim in head_dims:
            m.kernel = kernel
            switched += 1
    return switched


def use_fast_attention(model: nn.Module, device: torch.device, choice: str = "auto") -> str:
    """Put the model's attention layers on the kernels that train fastest on ``device``; returns what was chosen
    ("sdpa", "triton" or "fa4").

    ``auto``: on a Hopper or Blackwell GPU with FlashAttention-4 installed (``pip install flash-attn-4``), FA4 for every
    layer (a head dim it does not take, the 2B model's 60, once ``pad_attention_heads`` pads it to 64). On an H200:
    the MAE-0.3B step 337 -> 297-301 ms, fine-tuning 0.3B's attention forward + backward 3.12 -> 2.43 ms a layer
    (`docs/performance.md`). Else our Triton kernels at head dim 32 (the MAE decoder) and SDPA elsewhere (also, with a
    warning, where an installed FA4 does not import or lacks the entry points we use); SDPA on a CPU. ``fa4`` insists
    on FA4 (an error says what to install), ``triton`` is the head-dim-32 choice without FA4, ``sdpa`` leaves every
    layer on SDPA.
    """
    check_attention_choice(choice)
    if device.type != "cuda" or choice == "sdpa" or not any(isinstance(m, Attention) for m in model.modules()):
        return "sdpa"  # (Sapiens2's grouped-query attention runs on SDPA's cuDNN kernel, which takes it as it is)
    if choice == "auto":
        choice = "triton"
        if torch.cuda.get_device_capability(device)[0] in (9, 10) and fa4_attention.available():
            try:
                fa4_attention._interface()  # imports it now: a broken install falls back instead of failing later
                choice = "fa4"
            except ImportError as e:
                warnings.warn(f"FlashAttention-4 is installed but unusable, attention stays on our kernels and "
                              f"SDPA: {e}", stacklevel=2)
    if choice == "fa4":  # every layer: head dims FA4 does not take (2B: 60) run on it once padded (64)
        head_dims = {m.head_dim for m in model.modules() if isinstance(m, Attention)}
        use_flash_attention(model, tuple(head_dims), kernel="fa4")
        return "fa4"
    return "triton" if use_flash_attention(model) else "sdpa"


def use_fused_gelu(model: nn.Module) -> int:
    """Run every MLP's fc1 bias + GELU as our Triton op (CUDA, bf16/fp16; ``models.gelu``): one memory-bound kernel
    each way, the bias gradient fused into the backward; returns how many MLPs switched (0 without Triton)."""
    if importlib.util.find_spec("triton") is None:
        return 0
    switched = 0
    for m in model.modules():
        if isinstance(m, Mlp):
            m.fused_gelu = True
            switched += 1
    return switched
