"""``opensapiens bench``: inference speed of the plain eager path and the optimized path, side by side.

    opensapiens bench --task pose --arch 1b --batch 8 [--fp8] [--compile | --no-compile] [--e2e DIR [--e2e-decode ...]]
        [--cuda-graphs] [--fused-graphs] [--compiled] [--compile-mode MODE] [--profile] [--out result.json]

Reports per variant: ms per batch (median of CUDA-event timings), images/s, ms/image, model FLOPs per image
(torch.utils.flop_counter, attention included), achieved TFLOP/s and MFU against a bf16 matmul peak measured in the
same run, peak memory, compile time; accuracy against the eager fp32 model on the same input; the share of time
spent in the task head. On CUDA also the matmul peak after 3 s of load (a card at its power cap lowers its clock
within a second; the burst peak runs at the boost clock, the models mostly do not), MFU against that, the SM clock
and board power (nvidia-smi) while each variant was timed, and the energy per image they give.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import sys
from pathlib import Path

from .main import device_spec, out_file
from .predict import parse_size, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmark inference: eager vs optimized (vs FP8), MFU, memory")
    p.add_argument("--task", required=True, choices=["pose", "seg", "depth", "normal", "pointmap", "features"],
                   help="pointmap: Sapiens2 archs only")
    p.add_argument("--arch", default="0.3b", type=_arch, help="0.3b, 0.6b, 1b, 2b, or a small size")
    p.add_argument("--checkpoint", default=None, help="benchmark these weights instead of random ones")
    p.add_argument("--batch", type=positive_int, default=8)
    p.add_argument("--input-size", type=parse_size, default=(1024, 768))
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    p.add_argument("--fp8", action="store_true", help="also measure the FP8 mode (e4m3 GEMMs)")
    p.add_argument("--fa4", action="store_true", help="also measure the optimized path (and FP8 with --fp8) with "
                   "attention on FlashAttention-4's kernels (needs the flash-attn-4 package)")
    p.add_argument("--no-compile", action="store_true", help="optimized path without torch.compile")
    p.add_argument("--compile", dest="no_compile", action="store_false",
                   help="optimized path with torch.compile where it compiles: the default")
    p.add_argument("--channels-last", action="store_true", help="also measure the optimized path with NHWC heads")
    p.add_argument("--iters", type=positive_int, default=10)
    p.add_argument("--e2e", type=_image_folder, default=None,
                   help="folder of images: also measure predict's file -> outputs loop over it (run_batch, outputs "
                   "written, no pictures) against the model alone")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="also measure the whole-model compile replayed as CUDA graphs (compile mode reduce-overhead)")
    p.add_argument("--fused-graphs", action="store_true",
                   help="also measure the default fused path replayed as CUDA graphs instead of launched from Python "
                   "(also end to end with --e2e): what launching costs")
    p.add_argument("--compiled", action="store_true",
                   help="also measure the whole model through torch.compile (the path CUDA graphs take) beside the "
                   "default fused-block path; with --fp8 also FP8 GEMMs on that path")
    p.add_argument("--compile-mode", default=None,
                   help="also measure the optimized path compiled in this torch.compile mode, e.g. "
                   "max-autotune-no-cudagraphs (Triton GEMMs with fused epilogues, minutes of autotuning)")
    p.add_argument("--profile", action="store_true",
                   help="also profile each variant: time per batch by kernel kind (GEMM, attention, convolution, "
                   "fused elementwise, other)")
    p.add_argument("--e2e-decode", default="host", type=_decode_modes,
                   help="where --e2e decodes JPEGs: host (threads, as predict does by default), device (nvJPEG, "
                   "predict --decode device), or host,device (both, in turn); cpu and gpu are accepted for them")
    p.add_argument("--e2e-trace", type=Path, default=None,
                   help="also run each --e2e pass once more under the profiler and write its Chrome trace here "
                        "(DECODE is put before the suffix; summarize with bench/trace_summary.py)")
    p.add_argument("--device", type=device_spec, default=None)
    p.add_argument("--out", type=out_file, default=None, help="write the results as JSON")
    p.set_defaults(func=run)


def _arch(text: str) -> str:
    from ..models.vit import get_arch

    try:
        get_arch(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _image_folder(text: str) -> Path:
    """--e2e's folder, checked before minutes of measuring: it exists and holds images."""
    from ..io.images import IMAGE_EXTENSIONS

    folder = Path(text)
    if not folder.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is not a folder of images")
    if not any(f.suffix.lower() in IMAGE_EXTENSIONS for f in folder.iterdir()):
        raise argparse.ArgumentTypeError(f"{text!r} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    return folder


def _decode_modes(text: str) -> list[str]:
    """'host,device' -> run_batch's decode modes; 'cpu' and 'gpu' (this flag's older names) mean host and device."""
    modes = [{"cpu": "host", "gpu": "device"}.get(m, m) for m in text.split(",")]
    bad = [m for m in modes if m not in ("host", "device")]
    if bad:
        raise argparse.ArgumentTypeError(f"{', '.join(map(repr, bad))} is not host or device")
    return modes


def run(args: argparse.Namespace) -> int:
    import gc

    import torch

    from ..benchmark import (
        GpuClocks,
        count_flops,
        device_name,
        matmul_peak_tflops,
        random_model,
        software_versions,
        sync,
        time_by_kind,
        time_ms,
    )
    from ..checkpoints import as_dtype, load_model
    from ..inference.optimize import optimize_for_inference

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = as_dtype(args.dtype)
    H, W = args.input_size
    torch.manual_seed(0)
    if args.checkpoint:
        base = load_model(args.checkpoint, device=device, task=args.task)
    else:
        base = random_model(args.task, args.arch, (H, W), device)
    base.eval()
    if device.type != "cuda":
        options = (("--fp8", args.fp8), ("--fa4", args.fa4), ("--cuda-graphs", args.cuda_graphs),
                   ("--fused-graphs", args.fused_graphs), ("--compiled", args.compiled),
                   ("--compile-mode", args.compile_mode), ("--channels-last", args.channels_last))
        cuda_only = [flag for flag, on in options if on]
        if cuda_only:
            print(f"error: {', '.join(cuda_only)}: variants of the optimized path, which runs on CUDA only "
                  f"(device {device})", file=sys.stderr)
            return 2
    elif args.no_compile:
        skipped = [flag for flag, on in (("--cuda-graphs", args.cuda_graphs), ("--compiled", args.compiled),
                                         ("--compile-mode", args.compile_mode)) if on]
        if skipped:
            print(f"warning: {', '.join(skipped)} need torch.compile: not measured with --no-compile", file=sys.stderr)
    # MFU's denominator: bf16 on CUDA (the convention, whatever --dtype), the benchmarked dtype on a CPU
    peak_dtype = torch.bfloat16 if device.type == "cuda" else dtype
    peak = matmul_peak_tflops(device, dtype=peak_dtype)
    with GpuClocks(device) as clocks:  # the clock the card holds under load (below its burst's, at a power cap)
        sustained = matmul_peak_tflops(device, sustain_s=3.0) if device.type == "cuda" else None
    x = torch.randn(args.batch, 3, H, W, device=device)
    with torch.inference_mode():
        flops = count_flops(lambda: base(x[:1]))
    result = {"task": args.task, "arch": base.config.arch.name, "batch": args.batch, "input_size": [H, W],
              "dtype": args.dtype, "device": device_name(device), "software": software_versions(),
              "matmul_peak_tflops": _sig(peak), "matmul_peak_dtype": str(peak_dtype).removeprefix("torch."),
              "matmul_peak_sustained_tflops": _sig(sustained),
              "matmul_sustained_clocks": clocks.summary(), "power_reading": clocks.power_field,
              "flops_per_image": flops, "variants": {}}
    if sustained:
        at = f" at {result['matmul_sustained_clocks']['sm_mhz']:.0f} MHz" if result["matmul_sustained_clocks"] else ""
        print(f"bf16 matmul peak: {peak:.0f} TFLOP/s (burst), {sustained:.0f} sustained{at}")

    # Reference for accuracy: the eager model in fp32 on a small batch.
    x_acc = x[: min(2, args.batch)]
    with torch.inference_mode():
        ref_out = _comparable(base(x_acc.float()))  # base stays fp32; every variant below is a converted copy

    def allocated() -> int:
        """Bytes allocated on the device now, garbage of earlier variants collected first (a variant's peak is
        counted above this, taken before its model is built: the models and tensors other variants hold are not its)."""
        if device.type != "cuda":
            return 0
        gc.collect()
        torch.cuda.empty_cache()
        return torch.cuda.memory_allocated(device)

    def measure(name: str, model, before: int, cast=dtype, compile_model=None):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        xb = x.to(cast)
        xa = x_acc.to(cast)  # made here, not under inference mode: an inference tensor is another input kind for a
        # background compile, which the accuracy call would then run eagerly (it did: calls 126-127)
        compile_s = None
        if compile_model is not None:
            compile_s = compile_model.warmup(xb)
        with torch.inference_mode():
            for _ in range(3):  # warm-up, before the power readings begin: they cover the timed calls only
                model(xb)
            sync(device)
            with GpuClocks(device) as clocks:
                ms = time_ms(lambda: model(xb), device, warmup=0, iters=args.iters)
            out = _comparable(model(xa)).float().cpu()
        peak_gib = (torch.cuda.max_memory_allocated(device) - before) / 2**30 if device.type == "cuda" else None
        tflops = flops * args.batch / (ms * 1e-3) / 1e12
        row = {"ms_per_batch": round(ms, 3), "ms_per_image": round(ms / args.batch, 3),
               "images_per_s": _sig(args.batch / (ms * 1e-3)), "tflops": _sig(tflops),
               "mfu": _sig(tflops / peak), "mfu_vs_sustained_peak": _sig(sustained and tflops / sustained),
               "clocks": clocks.summary(), "peak_memory_gib": _r(peak_gib),
               "joules_per_image": None,
               "compile_s": _r(compile_s), "rel_error_vs_fp32": _r(_rel(out, ref_out), 6)}
        if row["clocks"] and row["clocks"]["samples"] >= 3:  # the board's mean power over the timed calls, per image
            row["joules_per_image"] = round(row["clocks"]["mean_watts"] * ms / args.batch / 1e3, 3)
        row.update(_task_agreement(args.task, out, ref_out, (H, W)))
        result["variants"][name] = row
        sustained_mfu = f" ({row['mfu_vs_sustained_peak']:.3f} sustained)" if sustained else ""
        energy = f" {row['joules_per_image']:.2f} J/img" if row["joules_per_image"] is not None else ""
        clock = f"  {row['clocks']['sm_mhz']:.0f} MHz{energy}" if row["clocks"] else ""
        print(f"{name:>10}: {row['ms_per_image']:8.2f} ms/img  {row['images_per_s']:8.1f} img/s  "
              f"MFU {row['mfu']:.3f}{sustained_mfu}{clock}  mem {row['peak_memory_gib']} GiB  "
              f"rel.err {row['rel_error_vs_fp32']}", flush=True)
        if args.profile:  # a graphed model's kernels launched one by one: the profiler sees each of them
            graphs = getattr(model, "graphs", None)
            with torch.inference_mode():
                row["ms_per_batch_by_kind"] = time_by_kind(lambda m=graphs.fn if graphs else model: m(xb), device)
            print("            " + ", ".join(f"{k} {v:.2f} ms" for k, v in row["ms_per_batch_by_kind"].items()))
        return out

    def optimized(name: str, cast=dtype, **options):
        """Measure ``optimize_for_inference(..., **options)`` of a fresh copy of the model; returns it."""
        before = allocated()
        model = optimize_for_inference(copy.deepcopy(base).to(device=device, dtype=cast), compile=not args.no_compile,
                                       **options)
        measure(name, model, before, cast=cast, compile_model=None if args.no_compile else model)
        return model

    base.to("cpu")  # the fp32 reference: its copies are made from the host, it holds no device memory while timed
    ref_out = ref_out.cpu()
    before = allocated()
    eager = copy.deepcopy(base).to(device=device, dtype=dtype)
    measure("eager", eager, before)
    if device.type == "cuda":
        fast = optimized("optimized")
        if args.channels_last and args.task != "features":
            optimized("nhwc-head", channels_last=True)
        e2e_models = {"": fast}  # the default path, and with --fused-graphs the fused path replayed as graphs
        if args.fused_graphs:
            e2e_models["_fused_graphs"] = optimized("fused-graphs", fused=True, cuda_graphs=True)
        if args.cuda_graphs and not args.no_compile:  # the whole model compiled, replayed as graphs
            try:
                optimized("cuda-graphs", cuda_graphs=True)
            except RuntimeError as e:  # a variant that cannot run is reported, not fatal
                result["variants"]["cuda-graphs"] = {"error": str(e).splitlines()[0][:200]}
                print(f"cuda-graphs: failed: {result['variants']['cuda-graphs']['error']}")
        if args.compiled and not args.no_compile:
            optimized("compiled", fused=False)
        if args.compile_mode and not args.no_compile:
            optimized(args.compile_mode.removesuffix("-no-cudagraphs"), compile_mode=args.compile_mode)
        if args.task != "features":
            result["head_share"] = _head_share(eager, fast, x.to(dtype), device, args.iters)
        if args.fp8:
            optimized("fp8", cast=torch.bfloat16, fp8=True)
            if args.compiled and not args.no_compile:  # FP8 GEMMs only, the rest compiled (the earlier FP8 path)
                optimized("fp8-compiled", cast=torch.bfloat16, fp8=True, fused=False)
        if args.fa4:
            optimized("fa4", attention="fa4")
            if args.fp8:
                optimized("fa4-fp8", cast=torch.bfloat16, fp8=True, attention="fa4")
        base_ips = result["variants"]["eager"]["images_per_s"]
        for _name, row in result["variants"].items():
            if "images_per_s" in row:
                row["speedup_vs_eager"] = round(row["images_per_s"] / base_ips, 3)
        default_path = "optimized"
    else:
        print("CUDA not available: only the eager path is measured (the optimized path is CUDA-only).")
        e2e_models, default_path = {"": eager}, "eager"  # predict's own loop on the eager model
    if args.e2e is not None:
        from ..benchmark import end_to_end
        from ..inference.predictors import PREDICTORS

        model_ips = result["variants"][default_path]["images_per_s"]  # the default path's, for every row
        for (suffix, e2e_model), decode in itertools.product(e2e_models.items(), args.e2e_decode):
            predictor = PREDICTORS[args.task](e2e_model, input_size=(H, W), batch_size=args.batch)
            e2e = end_to_end(predictor, args.e2e, decode=decode)
            e2e["fraction_of_model_only"] = round(e2e["images_per_s"] / model_ips, 3)
            # the default path's first decode mode under the historic key, every run under its own
            if not suffix:
                result.setdefault("end_to_end", e2e)
            result[f"end_to_end_{decode}_decode{suffix}"] = e2e
            print(f"end-to-end ({decode} decode{suffix.replace('_', ' ')}): {e2e}")
            if args.e2e_trace is not None and not suffix:  # a separate pass: the profiler slows what it watches
                trace = args.e2e_trace.with_name(f"{args.e2e_trace.stem}_{decode}{args.e2e_trace.suffix}")
                end_to_end(predictor, args.e2e, decode=decode, trace=trace)
                print(f"end-to-end ({decode} decode) trace: {trace}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
    json.dump(result, sys.stdout, indent=None)
    print()
    return 0


def _r(v, nd: int = 2):
    return None if v is None else round(float(v), nd)


def _sig(v, digits: int = 4):
    """``v`` to ``digits`` significant digits: a CPU's 0.05 TFLOP/s survives, where round(v, 1) made it 0."""
    return None if v is None else float(f"{float(v):.{digits}g}")


def _comparable(out):
    """The output a task's accuracy is judged on: pointmap's (points, scale) as metric points (points / scale)."""
    if isinstance(out, tuple):
        points, scale = out
        return points.float() / scale.float()[:, :, None, None]
    return out


def _rel(a, b) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-12))


def _task_agreement(task: str, out, ref, input_size) -> dict:
    """Task-level agreement with the fp32 reference: keypoint displacement (pose) or label agreement (seg)."""
    if task == "pose":
        from ..codecs.heatmap import decode_udp_heatmaps

        kp, _ = decode_udp_heatmaps(out, input_size)
        kp_ref, _ = decode_udp_heatmaps(ref, input_size)
        d = (kp - kp_ref).norm(dim=-1)
        return {"median_keypoint_px_vs_fp32": round(float(d.median()), 3)}
    if task == "seg":
        return {"label_agreement_vs_fp32": round(float((out.argmax(1) == ref.argmax(1)).float().mean()), 5)}
    return {}


def _head_share(eager, fast, x, device, iters: int) -> dict:
    """Fraction of the full model's time spent after the backbone, eager and optimized."""

    import torch

    from ..benchmark import time_ms
    from ..inference.optimize import fast_attention

    out = {}
    cudnn = torch.backends.cudnn
    for name, model in (("eager", eager), ("optimized", getattr(fast, "model", fast))):
        # the eager model as its row ran it: without the cuDNN autotuning the optimized path turns on process-wide
        plain = cudnn.flags(enabled=cudnn.enabled, benchmark=False, deterministic=cudnn.deterministic,
                            allow_tf32=cudnn.allow_tf32)
        with torch.inference_mode(), (fast_attention() if name == "optimized" else plain):
            full = time_ms(lambda m=model: m(x), device, iters=iters)
            bb = time_ms(lambda m=model: m.backbone(x), device, iters=iters)
        out[name] = round(1 - bb / full, 3)
    out["note"] = "optimized: the default path's model (fused blocks, compiled head)"
    return out
