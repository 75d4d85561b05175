"""Fine-tuning throughput: the plain eager bf16 step against the optimized one, side by side in one process.

    python bench/bench_train.py --task normal --arch 2b --batch 16 --fsdp --compile --checkpointing --steps 10
    python bench/bench_train.py --task seg --arch 0.3b --batch 16 --fsdp --compile --checkpointing head \\
        --seg-loss-resolution logits --steps 10
    torchrun --nproc_per_node 8 bench/bench_train.py --task normal --arch 2b --batch 16 --fsdp --compile ...
    python bench/bench_train.py --task seg --arch nano --batch 2 --input-size 128x96 --steps 2     # CPU smoke run

Both variants run the real training step (``opensapiens.training.step.train_step``: forward, the task's official
loss, backward, gradient clipping, AdamW with layer-wise LR decay) on a resident synthetic batch at the input size.

    baseline   eager, bf16 autocast over fp32 weights, foreach AdamW, default attention backend, official loss;
               activation checkpointing per --baseline-checkpointing (default: blocks for 1b/2b, none otherwise).
               On one GPU an out-of-memory batch is halved until it fits (all tried batches are reported).
    optimized  fused AdamW, cuDNN > flash attention priority, 2B head dim padded 60 -> 64, cuDNN autotuning, plus
               the flags: --fsdp (FSDP2 bf16 parameters and activations, fp32 master weights and reductions; on
               one GPU too), --compile (each block and the head), --checkpointing none|blocks|head|blocks+head
               (blocks keep their input; the head keeps one conv output per stage and recomputes norm + SiLU),
               --checkpoint-blocks N (only the first N blocks), --save-attention, --save-matmuls, --seg-loss-resolution
               logits.

Reported per variant: images/s (all GPUs), step time, peak memory, and MFU = model FLOPs per step per GPU (counted
with ``torch.utils.flop_counter`` on one forward + backward of the eager model on the meta device: recomputation
is not counted) x steps/s / the bf16 matmul peak measured in this process. Results go to --out (JSON).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from opensapiens.benchmark import (
    H100_80GB_GIB,
    cap_memory,
    count_flops,
    device_name,
    matmul_peak_tflops,
    software_versions,
    sync,
    time_by_kind,
    top_kernels,
)
from opensapiens.cli.predict import parse_size
from opensapiens.data import to_device
from opensapiens.inference.optimize import channels_last_head, fast_attention, pad_attention_heads
from opensapiens.metadata import seg_classes
from opensapiens.models import build_model
from opensapiens.tasks import build_criterion
from opensapiens.training import distributed as D
from opensapiens.training.config import PRECISIONS
from opensapiens.training.optim import build_optimizer
from opensapiens.training.reproducibility import float32_math
from opensapiens.training.speed import (
    check_saved_outputs,
    checkpoint_blocks,
    checkpoint_head,
    compile_blocks,
    use_fast_attention,
)
from opensapiens.training.step import train_step

OUT_CHANNELS = {"pose": 308, "seg": 28, "depth": 1, "normal": 3, "pointmap": 3}  # pointmap: Sapiens2 archs


@dataclass
class Variant:
    name: str
    batch: int
    optimized: bool = False
    fsdp: bool = False
    compile: bool = False
    checkpointing: str = "none"
    checkpoint_blocks: int | None = None
    head_chunk: int | None = None
    save_attention: bool = False
    save_matmuls: bool = False
    seg_loss_resolution: str = "labels"
    channels_last: bool = False
    precision: str = "bf16"  # bf16 autocast | tf32 / fp32 / pytorch: a float32 step without autocast (float32_math)
    attention: str = "sdpa"  # training.speed.use_fast_attention's choice (optimized variants on CUDA)
    shrink_on_oom: bool = False



def synthetic_batch(task: str, batch: int, size: tuple[int, int], device: torch.device) -> dict:
    """A resident batch in the loader's format (uint8 images, task targets) so only the step is timed."""
    g = torch.Generator(device="cpu").manual_seed(0)
    H, W = size
    out = {"image": torch.randint(0, 256, (batch, H, W, 3), generator=g, dtype=torch.uint8),
           "valid": torch.ones(batch, dtype=torch.bool)}
    if task == "pose":
        out["keypoints"] = torch.rand(batch, 308, 2, generator=g) * torch.tensor([W - 1, H - 1])
        out["visible"] = (torch.rand(batch, 308, generator=g) > 0.2).float()
    elif task == "seg":
        out["labels"] = torch.randint(0, 28, (batch, H, W), generator=g, dtype=torch.uint8)
    else:
        out["mask"] = (torch.rand(batch, H, W, generator=g) > 0.3).to(torch.uint8)
        if task == "depth":
            out["depth"] = 1 + 2 * torch.rand(batch, H, W, generator=g)
        elif task == "pointmap":
            from opensapiens.tasks.pointmap import camera_matrix, unproject

            out["intrinsics"] = camera_matrix(torch.tensor([[768.0, 768.0, (W - 1) / 2, (H - 1) / 2]] * batch))
            out["points"] = unproject(1 + 2 * torch.rand(batch, H, W, generator=g), out["intrinsics"])
        else:
            out["normals"] = torch.nn.functional.normalize(torch.randn(batch, H, W, 3, generator=g), dim=-1)
    return {k: v.to(device) for k, v in out.items()}


def _model(args):
    H, W = args.input_size
    return build_model(args.task, args.arch, OUT_CHANNELS[args.task], head_channels=args.head_channels,
                       pos_grid=(H // 16, W // 16))


def model_flops_per_image(args) -> float:
    """Forward + backward FLOPs of one image through the eager model (meta device: no memory, no recompute)."""
    H, W = args.input_size
    with torch.device("meta"):
        model = _model(args)
        x = torch.empty(1, 3, H, W)

    def step():
        out = model(x)
        sum(o.float().square().mean() for o in (out if isinstance(out, tuple) else (out,))).backward()

    return float(count_flops(step))


def build_step(args, variant: Variant, info: D.DistInfo):
    """The model, optimizer and a zero-argument training step for ``variant``."""
    device = info.device
    H, W = args.input_size
    torch.manual_seed(0)
    model = _model(args).to(device)
    if variant.checkpointing in ("blocks", "blocks+head"):
        checkpoint_blocks(model.backbone.blocks, variant.checkpoint_blocks, variant.save_attention,
                          variant.save_matmuls)
    if variant.checkpointing in ("head", "blocks+head"):
        checkpoint_head(model.head, variant.head_chunk)
    on_cuda = device.type == "cuda"
    if variant.optimized and on_cuda:
        use_fast_attention(model, device, variant.attention)
        pad_attention_heads(model)
        torch.backends.cudnn.benchmark = True
    if variant.channels_last:
        channels_last_head(model.head)
    if variant.compile:
        compile_blocks(model.backbone.blocks, model.head)
    depth, generation = model.config.arch.depth, model.config.arch.generation
    model = D.shard_fsdp(model, model.backbone.blocks, info, bf16=True) if variant.fsdp else D.wrap_ddp(model, info)
    optimizer = build_optimizer(model, 5e-4, 0.1, 0.85, num_layers=depth, fused=variant.optimized and on_cuda,
                                decay_tokens=generation == 2)
    criterion = build_criterion(args.task, generation=generation, sigma=6.0 * H / 1024,
                                class_weight=seg_classes("goliath").class_weight if args.task == "seg" else None,
                                seg_loss_resolution=variant.seg_loss_resolution)
    attention = fast_attention if (variant.optimized and on_cuda) else contextlib.nullcontext
    host = synthetic_batch(args.task, variant.batch, args.input_size, device)
    autocast = None if (variant.fsdp or variant.precision != "bf16") else torch.bfloat16

    def compute_loss(b: dict) -> torch.Tensor:
        batch = to_device(b, device)
        with attention():
            out = model(batch["image"])
        return criterion(out, batch)

    def step():
        return train_step(model, optimizer, [host], compute_loss, 1.0, autocast, device.type)

    return model, optimizer, step



def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def measure(args, variant: Variant, info: D.DistInfo, flops_per_image: float, peak_tflops: float,
            profile: bool = False) -> dict:
    """Time ``variant`` (halving its batch on OOM when allowed); returns its row of the report."""
    device = info.device
    tried = []
    with float32_math(variant.precision):  # the matmul and convolution precision of its float32 math
        while True:
            free(device)
            model = optimizer = step = None
            try:
                model, optimizer, step = build_step(args, variant, info)
                t_compile = time.perf_counter()
                for _ in range(args.warmup):
                    step()
                sync(device)
                warmup_s = time.perf_counter() - t_compile
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                losses = []
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    losses.append(step().loss)
                sync(device)
                dt = (time.perf_counter() - t0) / args.steps
                break
            except torch.OutOfMemoryError:
                tried.append({"batch": variant.batch, "oom": True})
                del model, optimizer, step
                if not (variant.shrink_on_oom and variant.batch > 1 and not info.distributed):
                    return {**asdict(variant), "oom": True, "tried": tried}
                variant = Variant(**{**asdict(variant), "batch": variant.batch // 2})
        peak_mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
        kernels = top_kernels(step, device, calls=1) if profile else None
        by_kind = time_by_kind(step, device, calls=1) if profile else None
        achieved = flops_per_image * variant.batch / dt  # per GPU
        row = {**asdict(variant), "oom": False, "tried": tried, "step_ms": dt * 1e3,
               "images_per_s": variant.batch * info.world_size / dt, "peak_memory_gib": peak_mem,
               "tflops_per_gpu": achieved / 1e12, "mfu": achieved / (peak_tflops * 1e12), "warmup_s": warmup_s,
               "loss_finite": all(math.isfinite(v) for v in losses), "profile": kernels, "ms_per_step_by_kind": by_kind}
    del model, optimizer, step
    free(device)
    return row


def _precisions(text: str) -> list[str]:
    chosen = text.split(",")
    if bad := [c for c in chosen if c not in (*PRECISIONS, "pytorch")]:
        raise argparse.ArgumentTypeError(f"unknown precision {', '.join(bad)}; choose from "
                                         f"{', '.join((*PRECISIONS, 'pytorch'))}")
    return chosen


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", required=True, choices=list(OUT_CHANNELS))
    p.add_argument("--arch", default="0.3b")
    p.add_argument("--batch", type=int, required=True, help="images per GPU")
    p.add_argument("--input-size", type=parse_size, default=(1024, 768))
    p.add_argument("--head-channels", type=int, default=None)
    p.add_argument("--steps", type=int, default=10, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation, autotuning)")
    p.add_argument("--fsdp", action="store_true")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--checkpointing", nargs="?", const="blocks+head", default="none",
                   choices=["none", "blocks", "head", "blocks+head"])
    p.add_argument("--checkpoint-blocks", type=int, default=None)
    p.add_argument("--head-chunk", type=int, default=None, help="head checkpointing by slices of N images")
    p.add_argument("--save-attention", action="store_true", help="selective checkpointing keeps attention outputs")
    p.add_argument("--save-matmuls", action="store_true",
                   help="selective checkpointing keeps GEMM and attention outputs")
    p.add_argument("--seg-loss-resolution", choices=["labels", "logits"], default="labels")
    p.add_argument("--channels-last", action="store_true", help="the head's convolutions in NHWC")
    p.add_argument("--precision", type=_precisions, default=["bf16"],
                   help="the optimized variant's precision: bf16 (autocast), tf32 (float32 with TF32 matmuls and "
                   "convolutions, the pointmap recipe's), fp32 (full float32) or pytorch (float32 under PyTorch's "
                   "defaults: TF32 convolutions, float32 matmuls; what calls 128-129 measured as fp32); a "
                   "comma-separated list times the optimized variant once per choice, e.g. bf16,tf32,fp32")
    p.add_argument("--attention", type=lambda t: t.split(","), default=["sdpa"],
                   help="the optimized variant's attention kernels (auto, sdpa, triton, fa4, as `opensapiens train "
                   "--attention`); a comma-separated list times the optimized variant once per choice, e.g. "
                   "fa4,sdpa,fa4")
    p.add_argument("--baseline-batch", type=int, default=None, help="default: --batch (halved until it fits)")
    p.add_argument("--baseline-checkpointing", choices=["none", "blocks"], default=None)
    p.add_argument("--skip-baseline", action="store_true")
    p.add_argument("--profile", action="store_true", help="print the top kernels of one optimized step")
    p.add_argument("--memory-limit-gib", type=float, default=None,
                   help=f"cap the CUDA allocator (an 80 GB H100 offers {H100_80GB_GIB:.2f}) to test what fits there")
    p.add_argument("--out", type=Path, default=None, help="JSON report (default bench/results/train_T_A.json)")
    args = p.parse_args()
    try:
        check_saved_outputs(args.checkpointing, args.save_attention, args.save_matmuls)
    except ValueError as e:
        p.error(str(e))

    info = D.setup()
    device = info.device
    cap_memory(device, args.memory_limit_gib)
    peak = matmul_peak_tflops(device)
    flops = model_flops_per_image(args)
    big = args.arch.lower().removeprefix("sapiens_") in ("1b", "2b")
    variants = []
    if not args.skip_baseline:
        variants.append(Variant("baseline", args.baseline_batch or args.batch,
                                checkpointing=args.baseline_checkpointing or ("blocks" if big else "none"),
                                shrink_on_oom=True))
    variants.append(Variant("optimized", args.batch, optimized=True, fsdp=args.fsdp, compile=args.compile,
                            checkpointing=args.checkpointing, checkpoint_blocks=args.checkpoint_blocks,
                            head_chunk=args.head_chunk,
                            save_attention=args.save_attention, save_matmuls=args.save_matmuls,
                            seg_loss_resolution=args.seg_loss_resolution,
                            channels_last=args.channels_last, precision=args.precision[0],
                            attention=args.attention[0]))
    first = asdict(variants[-1])
    for name, kernel in zip(("optimized-2", "optimized-3"), args.attention[1:]):  # A/B in one process
        variants.append(Variant(**{**first, "name": f"{name}-{kernel}", "attention": kernel}))
    for precision in args.precision[1:]:
        variants.append(Variant(**{**first, "name": f"optimized-{precision}", "precision": precision}))
    rows = [measure(args, v, info, flops, peak, profile=args.profile and v.optimized) for v in variants]
    report = {"device": device_name(device), "memory_limit_gib": args.memory_limit_gib,
              "world_size": info.world_size, "software": software_versions(),
              "task": args.task, "arch": args.arch, "input_size": list(args.input_size),
              "matmul_peak_tflops": peak, "model_tflops_per_image": flops / 1e12, "variants": rows}
    if info.is_main:
        for r in rows:
            if r.get("profile"):
                print(f"{r['name']} step, top kernels:\n{r['profile']}")
                print(f"{r['name']} step by kernel kind (ms): {r['ms_per_step_by_kind']}")
            if r["oom"]:
                print(f"{r['name']:>10}: out of memory at batch {r['batch']}")
                continue
            mem = f"{r['peak_memory_gib']:.1f} GiB" if r["peak_memory_gib"] is not None else "n/a"
            print(f"{r['name']:>10}: batch {r['batch']:>3}  {r['images_per_s']:8.2f} img/s  {r['step_ms']:8.1f} ms/step"
                  f"  peak {mem}  MFU {r['mfu']:.3f}  (tried {[t['batch'] for t in r['tried']]})")
        out = args.out or Path(__file__).parent / "results" / f"train_{args.task}_{args.arch}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2))
        print(f"wrote {out}")
    D.cleanup()


if __name__ == "__main__":
    main()
