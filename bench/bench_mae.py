"""MAE pretraining throughput: plain eager bf16 against the optimized path, and the data loader against in-memory input.

    python bench/bench_mae.py --arch 0.3b --batch 32 --input-size 1024x1024              # H100 target: >= 0.55 MFU
    python bench/bench_mae.py --arch 0.3b --batch 32 --input-size 1024x1024 --in-memory  # skip the loader check
    python bench/bench_mae.py --arch nano --batch 2 --input-size 64x64 --steps 2         # CPU smoke run

Every variant runs the real training step (``opensapiens.training.step.train_step``: autocast forward, backward,
gradient clipping, AdamW) on the official MAE (75% masking, 512 x 8 decoder). Reported per variant: images/s,
peak memory, and MFU = (FLOPs of one step, counted by ``torch.utils.flop_counter`` on the eager model: matmuls,
convolutions and attention, forward + backward) x steps/s / (the bf16 matmul peak measured in this process).

    eager      plain eager bf16 autocast, foreach AdamW, default SDPA backend choice
    optimized  + fused AdamW, cuDNN > flash attention priority, torch.compile of every transformer block
               (--compile model: the whole forward + loss), head dims padded to a multiple of 16 (2B), the
               decoder's head dim 32 on our Triton FlashAttention kernels (``models/flash_attention.py``), fc1's
               bias + GELU on our Triton op (``models/gelu.py``)
    loader     the optimized step fed by the real streaming loader (tar shards, nvJPEG decode on the GPU,
               random-resized-crop + flip) instead of a resident batch; plus the loader alone

Diagnostics: --variants optimized-sdpa (the decoder's attention on SDPA: cuDNN), optimized-flash64 (the encoder's
attention on our kernels too), optimized-inductor-gelu (the MLPs' bias + GELU compiled by Inductor instead of our
op), optimized-pad64 (every head dim zero-padded to 64, SDPA), optimized-model (whole-model compile), optimized-fa4
(the decoder's attention on FlashAttention-4, the optional flash-attn-4 package), optimized-fa4-all (the encoder's
too), optimized-fa4-untuned (all on FA4 with its own tiles instead of ours), optimized-fa4-model (all on FA4,
whole-model compile), optimized-fa4-graphs (all on FA4, each compiled block replayed as CUDA graphs) and
optimized-fa4-model-graphs (the whole model's forward and backward as CUDA graphs; CUDA-graph variants keep their
memory pools: run them last), optimized-fa4-model-read (optimized-fa4-model reading each step's loss back at once,
as the loop did before 1 December 2026; eager does too, as a plain loop that logs every loss);
--flash-config (our kernels' launch configs from ``bench/flash_attention_train.py``'s JSON); --fa4-config (FA4 tiles
per head dim from ``bench/fa4_attention.py --tiles``'s JSON); --attention (each SDPA backend and FlexAttention on the
encoder and decoder attention shapes); --profile (top kernels of the optimized step, else of the last variant).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
import torch

from opensapiens.benchmark import (
    H100_80GB_GIB,
    GpuClocks,
    cap_memory,
    count_flops,
    matmul_peak_tflops,
    sync,
    time_by_kind,
    top_kernels,
    write_json,
)
from opensapiens.cli.predict import parse_size
from opensapiens.data.shard_writer import ShardWriter
from opensapiens.data.shards import StreamingImages, find_source
from opensapiens.inference.optimize import fast_attention, pad_attention_heads
from opensapiens.models import fa4_attention, flash_attention
from opensapiens.models.mae import MAE, MAEConfig, mae_flops_per_image
from opensapiens.models.vit import get_arch
from opensapiens.pretrain.loop import masked_loss
from opensapiens.pretrain.prefetch import DevicePrefetcher
from opensapiens.training.optim import build_optimizer
from opensapiens.training.speed import checkpoint_blocks, compile_blocks, use_flash_attention, use_fused_gelu
from opensapiens.training.step import train_step


def model_config(args) -> MAEConfig:
    return MAEConfig(get_arch(args.arch), tuple(args.input_size), args.decoder_dim, args.decoder_depth,
                     args.decoder_heads)


def build(args, device: torch.device, optimized: bool, compile_mode: str | None = None, head_multiple: int = 16,
          flash: tuple[int, ...] = (), gelu: bool = False, kernel: str = "triton", fa4_tiles: bool = True,
          read_loss: bool = False):
    compile_mode = args.compile if compile_mode is None else compile_mode
    torch.manual_seed(0)
    model = MAE(model_config(args)).to(device)
    if args.checkpointing:
        for blocks in (model.backbone.blocks, model.decoder.blocks):
            checkpoint_blocks(blocks)
    step_model = model
    if optimized:
        pad_attention_heads(model, head_multiple)
        if flash:
            use_flash_attention(model, head_dims=flash, kernel=kernel)
        if kernel == "fa4":  # the tables are read at each call: they hold for this variant's steps
            for table, tuned in zip((fa4_attention.FORWARD_TILES, fa4_attention.BACKWARD_TILES), FA4_TILES):
                table.clear()
                table.update(tuned if fa4_tiles else {})
        if gelu:
            use_fused_gelu(model)
        if compile_mode in ("blocks", "blocks-graphs"):
            for blocks in (model.backbone.blocks, model.decoder.blocks):
                compile_blocks(blocks, mode="reduce-overhead" if compile_mode == "blocks-graphs" else None)
        elif compile_mode in ("model", "model-graphs"):  # model-graphs: forward and backward replayed as CUDA graphs
            step_model = torch.compile(model, mode="reduce-overhead" if compile_mode == "model-graphs" else None)
    on_cuda = device.type == "cuda"
    opt = build_optimizer(model, 1e-4, 0.05, betas=(0.9, 0.95), fused=optimized and on_cuda)
    attention = fast_attention if (optimized and on_cuda) else contextlib.nullcontext

    def step(images: torch.Tensor):  # the loss as ``opensapiens pretrain`` computes it (noise drawn eagerly)
        with attention():
            result = train_step(model, opt, [images], lambda x: masked_loss(step_model, x, 0.75, model.config.grid),
                                clip_grad=1.0, autocast_dtype=torch.bfloat16, device_type=device.type)
        if read_loss:  # the host waits for every step, as a loop that logs each loss does
            _ = result.loss
        return result

    return model, step


def step_flops(args, device: torch.device, images: torch.Tensor) -> float:
    """FLOPs of one training step (forward + backward), counted on the eager model without activation checkpointing:
    the forward a checkpointed backward runs again is not work the step needs (it counted, until 3 December 2026:
    MAE-1B's MFU with --checkpointing was 1.23x too high)."""
    model, _ = build(argparse.Namespace(**{**vars(args), "checkpointing": False}), device, optimized=False)

    def forward_backward() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            model(images, 0.75)[0].backward()

    return float(count_flops(forward_backward))  # the model is let go on return


def timed(step, batches, steps: int, warmup: int, device: torch.device,
          clocks: GpuClocks | None = None) -> tuple[float, float]:
    """(seconds per step, peak GiB) over ``steps`` after ``warmup`` steps; ``batches()`` gives each step's input.
    ``clocks`` samples the timed steps only (not the warm-up's compile, when the card idles at its boost clock)."""
    for _ in range(warmup):
        step(batches())
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    with clocks or contextlib.nullcontext():
        for _ in range(steps):
            step(batches())
        sync(device)
    sec = (time.perf_counter() - t0) / steps
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return sec, peak


FA4_TILES = (dict(fa4_attention.FORWARD_TILES), dict(fa4_attention.BACKWARD_TILES))  # + --fa4-config


class Variant(NamedTuple):
    optimized: bool
    compile_mode: str | None = None  # None: --compile
    head_multiple: int = 16  # head dims padded to a multiple of this
    flash: tuple[int, ...] = (32,)  # head dims on ``kernel`` (32: the decoder, 64: the 0.3B-1B encoders)
    gelu: bool = True  # our Triton bias + GELU op in the MLPs
    kernel: str = "triton"  # our Triton FlashAttention, or "fa4" (FlashAttention-4, the flash-attn-4 package)
    fa4_tiles: bool = True  # FA4 with our Hopper tile tables (models/fa4_attention.py, --fa4-config); else its own
    read_loss: bool = False  # read each step's loss back at once (the host waits); pretrain reads 2 steps late


VARIANTS = {"eager": Variant(False, "none", flash=(), gelu=False, read_loss=True),
            "optimized": Variant(True),
            "optimized-sdpa": Variant(True, flash=()),
            "optimized-flash64": Variant(True, flash=(32, 64)),
            "optimized-fa4": Variant(True, kernel="fa4"),
            "optimized-fa4-all": Variant(True, flash=(32, 64), kernel="fa4"),
            "optimized-fa4-untuned": Variant(True, flash=(32, 64), kernel="fa4", fa4_tiles=False),
            "optimized-fa4-model": Variant(True, "model", flash=(32, 64), kernel="fa4"),
            "optimized-fa4-model-read": Variant(True, "model", flash=(32, 64), kernel="fa4", read_loss=True),
            "optimized-fa4-graphs": Variant(True, "blocks-graphs", flash=(32, 64), kernel="fa4"),
            "optimized-fa4-model-graphs": Variant(True, "model-graphs", flash=(32, 64), kernel="fa4"),
            "optimized-inductor-gelu": Variant(True, gelu=False),
            "optimized-model": Variant(True, "model"),
            "optimized-pad64": Variant(True, head_multiple=64, flash=())}


def attention_backends_table(args, device: torch.device) -> dict:
    """Forward + backward TFLOP/s of each SDPA backend on the encoder (visible tokens) and decoder (all tokens)
    attention shapes: where the decoder's head dim 32 costs its efficiency."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    cfg = model_config(args)
    N = cfg.grid[0] * cfg.grid[1]
    shapes = {"encoder": (int(N * 0.25) + 1, cfg.arch.num_heads, cfg.arch.head_dim),
              "decoder": (N + 1, cfg.decoder_heads, cfg.decoder_dim // cfg.decoder_heads)}
    from torch.nn.attention.flex_attention import flex_attention

    flex = torch.compile(flex_attention)
    out: dict = {}
    for name, (tokens, heads, hd) in shapes.items():
        q, k, v = (torch.randn(args.batch, heads, tokens, hd, device=device, dtype=torch.bfloat16,
                               requires_grad=True) for _ in range(3))
        flops = 3.5 * 4 * args.batch * heads * tokens * tokens * hd  # forward 2 matmuls, backward 2.5x
        padded = [hd] + ([64] if hd < 64 else [])  # zero-padding a small head dim: twice the work, faster kernels?
        for width in padded:
            pad = (0, width - hd)

            def attend(qkv, pad=pad, hd=hd):
                q, k, v = (F.pad(t, pad) for t in qkv)
                return F.scaled_dot_product_attention(q, k, v, scale=hd**-0.5)[..., :hd].sum().backward()

            for backend in (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION):
                key = f"{name}/{backend.name}" + (f"/padded{width}" if width != hd else "")
                try:
                    with sdpa_kernel([backend]):
                        sec, _ = timed(attend, lambda q=q, k=k, v=v: (q, k, v), 5, 2, device)
                    out[key] = flops / sec / 1e12  # the unpadded FLOPs: what the model needs
                except RuntimeError as e:
                    out[key] = f"unsupported: {str(e).splitlines()[0][:80]}"
                value = out[key]
                shown = f"{value:6.0f} TFLOP/s" if isinstance(value, float) else value
                print(f"  attention {name} (B={args.batch}, {heads} heads, {tokens} tokens, hd {hd}"
                      f"{f' padded to {width}' if width != hd else ''}) {backend.name:<20} {shown}")
        # FlexAttention: Triton kernels generated for this head dim (no mask, no score modification)
        try:
            sec, _ = timed(lambda qkv: flex(*qkv).sum().backward(), lambda q=q, k=k, v=v: (q, k, v), 5, 2, device)
            out[f"{name}/FLEX_ATTENTION"] = flops / sec / 1e12
            print(f"  attention {name} (B={args.batch}, {heads} heads, {tokens} tokens, hd {hd}) FLEX_ATTENTION"
                  f"       {out[f'{name}/FLEX_ATTENTION']:6.0f} TFLOP/s")
        except Exception as e:  # noqa: BLE001 - a diagnostic row; compile failures are reported, not fatal
            out[f"{name}/FLEX_ATTENTION"] = f"failed: {str(e).splitlines()[0][:80]}"
            print(f"  attention {name} FLEX_ATTENTION failed: {out[f'{name}/FLEX_ATTENTION']}")
    return out


def profile(step, images: torch.Tensor, device: torch.device, out: Path | None) -> None:
    """Top kernels by device time over 2 steps (after the variant's warm-up), then the step by kernel kind."""
    trace = str(out.with_suffix(".trace.json")) if out is not None else None
    print(top_kernels(lambda: step(images), device, calls=2, trace=trace))
    print("  ms per step by kernel kind:", time_by_kind(lambda: step(images), device, calls=2))


def make_shards(out: Path, n: int, size: tuple[int, int]) -> Path:
    """``n`` photo-like JPEGs (q95) in 16-image tar shards, if ``out`` has none yet."""
    if list(out.glob("*.tar")):
        return out
    rng = np.random.default_rng(0)
    h, w = size
    with ShardWriter(out, max_count=16) as writer:
        for i in range(n):
            img = cv2.resize(rng.integers(0, 255, (h // 32, w // 32, 3), dtype=np.uint8), (w, h),
                             interpolation=cv2.INTER_CUBIC)
            img = cv2.add(img, rng.integers(0, 24, (h, w, 3), dtype=np.uint8))
            writer.write(f"img{i:06d}", cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes(),
                         ".jpg")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="0.3b")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--input-size", type=parse_size, default=(1024, 1024), help="HxW")
    ap.add_argument("--decoder-dim", type=int, default=512)
    ap.add_argument("--decoder-depth", type=int, default=8)
    ap.add_argument("--decoder-heads", type=int, default=16)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per variant")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation happens here)")
    ap.add_argument("--compile", choices=["blocks", "model", "none"], default="blocks")
    ap.add_argument("--checkpointing", action="store_true", help="activation checkpointing in every variant")
    ap.add_argument("--variants", default="eager,optimized",
                    help="comma-separated: eager, optimized (compiled as --compile says), optimized-model "
                         "(whole-model compile), optimized-pad64 (every head dim zero-padded to 64, e.g. the "
                         "decoder's 32; SDPA), optimized-sdpa (SDPA at head dim 32 instead of our kernels), "
                         "optimized-inductor-gelu (Inductor's GELU instead of our bias + GELU op), "
                         "optimized-flash64 (the encoder's head dim 64 on our attention kernels too), "
                         "optimized-fa4 / optimized-fa4-all (the decoder's / all attention on FlashAttention-4)")
    ap.add_argument("--flash-config", type=Path, nargs="*", default=[],
                    help="our attention kernels' launch configs: JSON files of bench/flash_attention_train.py")
    ap.add_argument("--fa4-config", type=Path, default=None,
                    help="FlashAttention-4 tiles per head dim: the JSON of bench/fa4_attention.py --tiles (its 'best')")
    ap.add_argument("--profile", action="store_true",
                    help="profile 2 steps of `optimized` (else the last variant): top CUDA kernels "
                         "(+ trace.json beside --out)")
    ap.add_argument("--profile-variant", default=None, help="the variant --profile profiles (default: as it says)")
    ap.add_argument("--attention", action="store_true",
                    help="time fused attention backends on the encoder and decoder shapes (forward + backward)")
    ap.add_argument("--in-memory", action="store_true", help="skip the real-loader check")
    ap.add_argument("--data", type=Path, help="tar shards for the loader check (default: generated JPEGs)")
    ap.add_argument("--images", type=int, default=128, help="generated images for the loader check")
    ap.add_argument("--image-size", type=parse_size, default=(1280, 1024), help="generated JPEG size HxW")
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--memory-limit-gib", type=float, default=None,
                    help=f"cap the CUDA allocator (an 80 GB H100 offers {H100_80GB_GIB:.2f}) to test what fits there")
    ap.add_argument("--out", type=Path, help="also write the results as JSON")
    args = ap.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    for path in args.flash_config:  # the swept launch configs of our attention kernels, per head dim
        for shape in json.loads(path.read_text())["shapes"].values():
            if "best_config" in shape:  # (absent when a sweep was cut short: the defaults then)
                best = shape["best_config"]
                flash_attention.CONFIGS[shape["head_dim"]] = flash_attention.FlashConfig(
                    tuple(best["forward"]), tuple(best["dkdv"]), tuple(best["dq"]))
    print(f"flash attention configs: {flash_attention.CONFIGS}")
    if args.fa4_config:
        for shape in json.loads(args.fa4_config.read_text())["shapes"].values():
            best = shape.get("best", {})
            if best.get("forward"):
                FA4_TILES[0][shape["head_dim"]] = tuple(best["forward"])
            if best.get("backward"):
                FA4_TILES[1][shape["head_dim"]] = best["backward"]
    print(f"FlashAttention-4 tiles (forward, backward): {FA4_TILES}")
    cap_memory(device, args.memory_limit_gib)
    H, W = args.input_size
    images = torch.randn(args.batch, 3, H, W, device=device)  # a resident, already normalized batch
    result: dict = {"arch": args.arch, "batch": args.batch, "input_size": [H, W], "device":
                    torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                    "torch": torch.__version__, "memory_limit_gib": args.memory_limit_gib,
                    "compile": args.compile, "checkpointing": args.checkpointing}
    result["peak_matmul_tflops"] = matmul_peak_tflops(device)
    with GpuClocks(device) as clocks:  # the clock under load: below the burst's where the card hits its power cap
        sustained = matmul_peak_tflops(device, sustain_s=3.0) if device.type == "cuda" else None
    result["peak_matmul_sustained_tflops"], result["matmul_sustained_clocks"] = sustained, clocks.summary()
    result["step_tflop"] = step_flops(args, device, images) / 1e12
    analytic = 3 * args.batch * mae_flops_per_image(model_config(args)) / 1e12  # forward + 2x for backward
    print(f"{result['device']}: measured bf16 matmul peak {result['peak_matmul_tflops']:.3g} TFLOP/s "
          f"({sustained or float('nan'):.0f} sustained, {result['matmul_sustained_clocks']}); "
          f"one step = {result['step_tflop']:.3g} TFLOP counted ({analytic:.3g} analytic, matmuls only), "
          f"{result['step_tflop'] / args.batch * 1e3:.0f} GFLOP/image")

    def report(name: str, sec: float, peak: float, clocks: GpuClocks) -> dict:
        r = {"images_per_s": args.batch / sec, "step_ms": sec * 1e3, "peak_memory_gib": peak,
             "mfu": result["step_tflop"] * 1e12 / sec / (result["peak_matmul_tflops"] * 1e12),
             "mfu_vs_sustained_peak": sustained and result["step_tflop"] / sec / sustained,
             "clocks": clocks.summary()}
        r["joules_per_image"] = r["clocks"] and r["clocks"]["mean_watts"] * sec / args.batch
        extra = f" ({r['mfu_vs_sustained_peak']:.3f} sustained)" if sustained else ""
        extra += f"  {r['clocks']['sm_mhz']:.0f} MHz {r['joules_per_image']:.2f} J/img" if r["clocks"] else ""
        print(f"  {name:<22} {r['images_per_s']:8.1f} img/s  {r['step_ms']:8.1f} ms/step  "
              f"{r['peak_memory_gib']:6.1f} GiB  MFU {r['mfu']:.3f}{extra}", flush=True)
        return r

    if args.attention and device.type == "cuda":
        result["attention"] = attention_backends_table(args, device)
    step = None
    variants = args.variants.split(",")
    profiled = args.profile_variant or ("optimized" if "optimized" in variants else variants[-1])
    for i, variant in enumerate(variants):  # a variant named twice (A,B,A: order effects) reports as NAME-2
        if variant not in VARIANTS:
            raise SystemExit(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
        repeat = variants[:i].count(variant)
        key = f"{variant}-{repeat + 1}" if repeat else variant
        t0 = time.perf_counter()
        try:
            model, step = build(args, device, *VARIANTS[variant])
            clocks = GpuClocks(device)
            sec, peak = timed(step, lambda: images, args.steps, args.warmup, device, clocks)
        except (RuntimeError, ImportError, torch.OutOfMemoryError) as e:  # one failing variant must not lose the others
            result[key] = {"error": str(e).splitlines()[0][:200]}
            print(f"  {key:<22} failed: {result[key]['error']}", flush=True)
            continue
        result[key] = report(key, sec, peak, clocks)
        result[key]["warmup_s"] = time.perf_counter() - t0 - sec * args.steps
        if args.profile and key == profiled:
            profile(step, images, device, args.out)
        if i < len(variants) - 1:
            del model, step
            if device.type == "cuda":
                torch.cuda.empty_cache()

    if not args.in_memory and step is not None:
        data = args.data or make_shards(Path(tempfile.gettempdir()) / "opensapiens_bench_mae", args.images,
                                        args.image_size)
        ds = StreamingImages(find_source(data), (H, W), args.batch, num_workers=args.workers,
                             gpu_jpeg=device.type == "cuda")
        loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=args.workers,
                                             pin_memory=device.type == "cuda",
                                             prefetch_factor=4 if args.workers else None,
                                             multiprocessing_context="forkserver" if args.workers else None)
        feed = DevicePrefetcher(iter(loader), device, (H, W))
        try:
            clocks = GpuClocks(device)
            sec, peak = timed(step, lambda: next(feed).images, args.steps, args.warmup, device, clocks)
            result["loader"] = report(f"{key} + loader", sec, peak, clocks)  # the last variant's step
            sec, _ = timed(lambda b: None, lambda: next(feed).images, args.steps, 2, device)
            result["loader_only_images_per_s"] = args.batch / sec
            print(f"  {'loader alone':<22} {args.batch / sec:8.1f} img/s  ({args.workers} workers, "
                  f"{'nvJPEG' if device.type == 'cuda' else 'CPU'} decode)")
        finally:
            feed.close()
    write_json(args.out, result)


if __name__ == "__main__":
    main()
