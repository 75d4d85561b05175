"""Does splitting a batch across CUDA streams hide the fused path's memory-bound passes behind the other half's GEMMs?

    python bench/two_streams.py --task pose --arch 1b --batch 8 [--fp8] [--splits 1 2 4] [--rounds 2]
    python bench/two_streams.py --task pose --arch nano --batch 4 --input-size 64x48   # CPU smoke run (no streams)

The fused path runs each block as GEMMs and attention (compute-bound) with LayerNorm, residual and quantization
passes between them (memory-bound, ~10 % of the time) and the launch gaps of one Python thread. With the batch split
into S chunks, each on its own stream, the GPU may run one chunk's memory-bound pass (or fill one kernel's last
partial wave) beside another chunk's GEMM. Each split is timed in rounds (A B A B) on the same input, against the
batch on one stream; prints ms per image, MFU against the matmul peak measured in the same run, and the largest
difference of the outputs from the one-stream run's (the same math on smaller batches: cuBLAS may pick other kernels).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from opensapiens.benchmark import (
    cap_memory,
    count_flops,
    device_name,
    matmul_peak_tflops,
    random_model,
    software_versions,
    time_ms,
    write_json,
)
from opensapiens.cli.predict import parse_size
from opensapiens.inference.optimize import optimize_for_inference


def split_forward(model, x: torch.Tensor, streams: list[torch.cuda.Stream]) -> torch.Tensor:
    """``model(x)`` with x's batch split into len(streams) chunks, chunk i queued on streams[i] after the current
    stream's work; the current stream waits for all of them."""
    if len(streams) == 1:
        return model(x)
    current = torch.cuda.current_stream()
    outs = []
    for chunk, stream in zip(x.chunk(len(streams)), streams, strict=True):
        stream.wait_stream(current)
        with torch.cuda.stream(stream):
            outs.append(model(chunk))
    for stream, out in zip(streams, outs, strict=True):
        current.wait_stream(stream)
        out.record_stream(current)
    return torch.cat(outs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="pose", choices=["pose", "seg", "depth", "normal"])
    p.add_argument("--arch", default="1b")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--input-size", type=parse_size, default=(1024, 768))
    p.add_argument("--fp8", action="store_true", help="the fused FP8 blocks instead of bf16")
    p.add_argument("--splits", type=int, nargs="+", default=[1, 2])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--memory-limit-gib", type=float, default=None, help="cap the CUDA allocator (an H100's 79.65)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    H, W = args.input_size
    torch.manual_seed(0)
    model = random_model(args.task, args.arch, (H, W), device)
    x = torch.randn(args.batch, 3, H, W, device=device)
    with torch.inference_mode():
        flops = count_flops(lambda: model(x[:1]))
    if device.type != "cuda":
        with torch.inference_mode():
            print(f"CPU: no streams to split across; one forward gives {tuple(model(x).shape)}")
        return
    cap_memory(device, args.memory_limit_gib)
    peak = matmul_peak_tflops(device)
    model = optimize_for_inference(model.to(torch.bfloat16), fp8=args.fp8)
    xb = x.to(torch.bfloat16)
    for s in args.splits:
        if args.batch % s:
            raise SystemExit(f"--splits {s} does not divide --batch {args.batch}")
    streams = {s: [torch.cuda.current_stream()] if s == 1 else [torch.cuda.Stream() for _ in range(s)]
               for s in args.splits}
    with torch.inference_mode():
        for s in sorted(set(args.splits) | {1}):  # every chunk size's head compiled (dynamic batch >= 2: once)
            model.warmup(xb[: args.batch // s])
        reference = model(xb).float()
        result = {"task": args.task, "arch": args.arch, "batch": args.batch, "fp8": args.fp8, "input_size": [H, W],
                  "device": device_name(device), "software": software_versions(), "matmul_peak_tflops": round(peak, 1),
                  "flops_per_image": flops, "rows": []}
        for r in range(args.rounds):
            for s in args.splits:
                ms = time_ms(lambda s=s: split_forward(model, xb, streams[s]), device, iters=args.iters)
                out = split_forward(model, xb, streams[s]).float()
                row = {"round": r, "splits": s, "ms_per_batch": round(ms, 3),
                       "ms_per_image": round(ms / args.batch, 3),
                       "mfu": round(flops * args.batch / (ms * 1e-3) / 1e12 / peak, 3),
                       "max_abs_diff_vs_one_stream": round((out - reference).abs().max().item(), 5),
                       "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}
                result["rows"].append(row)
                print(f"{args.task} {args.arch} b{args.batch}{' fp8' if args.fp8 else ''} round {r} "
                      f"splits {s}: {row['ms_per_image']:.3f} ms/img MFU {row['mfu']:.3f} "
                      f"(peak {peak:.0f}) diff {row['max_abs_diff_vs_one_stream']}", flush=True)
    write_json(args.out, result)


if __name__ == "__main__":
    main()
