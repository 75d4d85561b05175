"""Measuring speed honestly: model FLOPs, a matmul peak measured in the same run, CUDA-event timing, MFU.

Every benchmark in this project reports a ratio measured side by side in one process: the optimized path against
the plain eager bf16 path, and achieved FLOP/s against the bf16 matmul peak of the card it runs on.
"""

from __future__ import annotations

import contextlib
import functools
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count


def _cpu_attention_flops(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_attention_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


# torch's counter knows SDPA's CUDA kernels (flash, memory-efficient, cuDNN) but not its CPU kernel, which it counts
# as 0 FLOPs: a CPU run's MFU would leave attention out
CPU_ATTENTION_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_attention_backward_flops,
}


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of ``fn`` (matmuls, convolutions and attention, forward or backward, on any device; 2 FLOPs
    per multiply-add)."""
    counter = FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS)
    with counter:
        fn()
    return int(counter.get_total_flops())


def held_bytes(fn: Callable[[], object]) -> tuple[object, int]:
    """``fn()``'s result and the bytes of the tensor storages made during ``fn`` that are still alive after it: for a
    training forward, what autograd keeps for backward (checkpointing's saved outputs included) plus the result.
    Counts storages (a view, or an op writing into its input, makes none), tracked by weak references, so a storage
    freed during ``fn`` is not confused with a later one at the same address."""
    import weakref

    from torch.utils._python_dispatch import TorchDispatchMode

    made: dict[int, weakref.ref] = {}  # id of a live storage made during fn -> weak reference to it

    def storages(tree) -> list:
        return [t.untyped_storage() for t in torch.utils._pytree.tree_leaves(tree) if isinstance(t, torch.Tensor)]

    class Made(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            if not func.is_view:
                given = {id(s) for s in storages((args, kwargs))}
                for s in storages(out):
                    key = id(s)
                    if key not in given and key not in made:  # (an entry leaves with its storage: ids are reused)
                        made[key] = weakref.ref(s, lambda _, key=key: made.pop(key, None))
            return out

    with Made():
        result = fn()
    return result, sum(s.nbytes() for r in list(made.values()) if (s := r()) is not None)


def cuda_time_ms(fn: Callable[[], object], warmup: int = 3, iters: int = 10) -> float:
    """Median milliseconds per call, timed with CUDA events around each call (after ``warmup`` calls)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def cpu_time_ms(fn: Callable[[], object], warmup: int = 1, iters: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def time_ms(fn: Callable[[], object], device: torch.device, warmup: int = 3, iters: int = 10) -> float:
    return cuda_time_ms(fn, warmup, iters) if device.type == "cuda" else cpu_time_ms(fn, min(warmup, 1), iters)


def time_ms_or_error(fn: Callable[[], object], device: torch.device, iters: int = 10) -> dict:
    """{"ms": ...}, or {"error": ...} where ``fn`` fails (a launch config that does not compile or fit): a sweep
    records it and goes on."""
    try:
        fn()
        return {"ms": round(time_ms(fn, device, iters=iters), 4)}
    except Exception as e:  # noqa: BLE001 - any failure of one candidate is a result, not the end of the sweep
        return {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"}


def random_model(task: str, arch: str, input_size: tuple[int, int], device: torch.device) -> torch.nn.Module:
    """``task``'s model at ``arch`` in the official shapes with random weights, its position grid fitted to
    ``input_size``, in eval mode: what the benchmarks time. Made on ``device`` (a 2B model's init on the host takes
    minutes)."""
    from .models import build_model, get_arch

    (H, W), stride = input_size, get_arch(arch).stride
    with torch.device(device):
        return build_model(task, arch, pos_grid=(H // stride, W // stride)).eval()


def keep_busy(fn: Callable[[], object], device: torch.device, seconds: float) -> int:
    """Call ``fn`` back to back for ``seconds`` of wall time (waiting for the device every 16 calls, so the queue
    stays short); returns the number of calls."""
    calls, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(16):
            fn()
        calls += 16
        sync(device)
    return calls


def matmul_peak_tflops(device: torch.device, n: int = 8192, dtype: torch.dtype = torch.bfloat16,
                       sustain_s: float = 0.0) -> float:
    """Achieved TFLOP/s of an n^3 matmul on random data (rotating 3 input pairs so L2 does not flatter it).

    By default a burst: 25 matmuls, ~35 ms on an H100, at the clock the card had when they started (the boost clock
    after idle). ``sustain_s``: timed after that many seconds of the same matmuls back to back, at the clock the
    card holds under load. A card at its power cap lowers its SM clock within a fraction of a second (an H200 at
    700 W runs its models at ~1650 MHz of its 1980; call 92), so a model timed for seconds runs slower than the
    burst's clock: the sustained peak is the like-for-like denominator, the burst one the conventional one.
    """
    if device.type != "cuda":  # a CPU's peak in the dtype it will run (bf16 matmuls run ~2.5x fp32 on AVX-512 CPUs);
        n = 2048  # 1024^3 runs at ~3/4 of the rate of 2048^3 on a 2-core AVX-512 host: oneDNN's convolutions beat it
    pairs = [(torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype))
             for _ in range(3)]
    state = {"i": 0}

    def run():
        a, b = pairs[state["i"] % 3]
        state["i"] += 1
        return a @ b

    if sustain_s > 0:
        keep_busy(run, device, sustain_s)
    ms = time_ms(run, device, warmup=5, iters=20)
    return 2 * n**3 / (ms * 1e-3) / 1e12


@functools.cache
def power_field() -> str:
    """nvidia-smi's instantaneous board power where the driver has it (``power.draw.instant``, drivers of 2023 on),
    else ``power.draw``, which on recent drivers is a one-second average that lags the load."""
    import subprocess

    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=power.draw.instant", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10)
        float(out.stdout.split()[0])
        return "power.draw.instant"
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return "power.draw"


class GpuClocks:
    """The SM clock and board power while a block runs, sampled by ``nvidia-smi -lms`` every ``interval_ms``.

    ``with GpuClocks(device) as clocks: ...`` then ``clocks.summary()`` (``clock_summary``), or None where nvidia-smi
    is missing or saw nothing (a CPU run, a block shorter than a sample).
    """

    def __init__(self, device: torch.device, interval_ms: int = 100):
        self.device, self.interval_ms = device, interval_ms
        self.lines: list[str] = []
        self.power_field: str | None = None  # the nvidia-smi field read for the board's power
        self._process = self._reader = None

    def __enter__(self) -> GpuClocks:
        import subprocess
        import threading

        if self.device.type != "cuda":
            return self
        index = self.device.index if self.device.index is not None else torch.cuda.current_device()
        self.power_field = power_field()
        try:
            self._process = subprocess.Popen(
                ["nvidia-smi", "-i", str(index), f"--query-gpu=clocks.sm,{self.power_field}",
                 "--format=csv,noheader,nounits", "-lms", str(self.interval_ms)],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        except OSError:  # no nvidia-smi on this host
            return self
        self._reader = threading.Thread(target=lambda: self.lines.extend(self._process.stdout), daemon=True)
        self._reader.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait()
            self._reader.join(timeout=5)

    def summary(self) -> dict | None:
        return clock_summary(self.lines)


def clock_summary(lines: list[str]) -> dict | None:
    """nvidia-smi's "clocks.sm, power" csv lines ("1650, 690.12") -> {"sm_mhz": median, "watts": median,
    "mean_watts": mean, "samples": n}; None without a sample. The mean (times seconds = joules, from instantaneous
    readings) leaves out the first and last samples where there are more than two: taken as the load began or ended."""
    samples = []
    for line in lines:
        with contextlib.suppress(ValueError):
            mhz, watts = (float(v) for v in line.split(","))
            samples.append((mhz, watts))
    if not samples:
        return None
    mhz, watts = zip(*samples, strict=True)
    return {"sm_mhz": statistics.median(mhz), "watts": round(statistics.median(watts), 1),
            "mean_watts": round(statistics.fmean(watts[1:-1] if len(watts) > 2 else watts), 1), "samples": len(samples)}


# What an "80 GB" H100 offers to CUDA allocations (81,559 MiB): a larger card is capped to this to test what fits.
H100_80GB_GIB = 81559 / 1024


def cap_memory(device: torch.device, gib: float | None) -> None:
    """Limit this process's CUDA caching allocator to ``gib`` (e.g. an 80 GB card's capacity on a 141 GB H200).

    A card with no more than ``gib`` is left as it is: an 80 GB H100 offers CUDA 79.2 GiB of its 79.65."""
    if gib is None or device.type != "cuda":
        return
    if gib <= 0:
        raise ValueError(f"--memory-limit-gib {gib}: must be positive")
    index = device.index if device.index is not None else torch.cuda.current_device()
    total = torch.cuda.get_device_properties(index).total_memory / 2**30
    if gib < total:
        torch.cuda.set_per_process_memory_fraction(gib / total, index)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def software_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": None}
    if torch.cuda.is_available():
        info["cudnn"] = torch.backends.cudnn.version()
    for package in ("triton", "flash-attn-4", "nvidia-cutlass-dsl"):
        with contextlib.suppress(PackageNotFoundError):
            info[package] = version(package)
    return info


def write_json(path: Path | None, result: dict) -> None:
    """A benchmark's results as indented JSON at ``path`` (its folder made), or nothing when ``path`` is None."""
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2))


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU): before reading a host clock."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _profiled(fn: Callable[[], object], device: torch.device, calls: int):
    """The torch profiler's record of ``calls`` calls of ``fn`` (CPU operators, and CUDA kernels on a GPU)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        for _ in range(calls):
            fn()
        sync(device)
    return prof


def top_kernels(fn: Callable[[], object], device: torch.device, calls: int = 2, rows: int = 25,
                trace: str | None = None) -> str:
    """A table of the operators and kernels of ``calls`` calls of ``fn``, by self device time (CPU time on CPU)."""
    prof = _profiled(fn, device, calls)
    if trace is not None:
        prof.export_chrome_trace(trace)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows, max_name_column_width=70)


# name fragments of each kind, checked in this order (cuDNN attention kernels contain "gemm" too, so attention first)
_FUSED = "fused elementwise/norm (Triton)"
_KINDS = (
    ("attention", ("attention", "sdpa", "fmha", "flash")),
    # Inductor's pointwise / reduction / persistent kernels (named after the ops they fuse: a compiled head's
    # "triton_red_fused_..._convolution_silu" is a norm, not a convolution), its CPU kernels, ours
    (_FUSED, ("triton_poi", "triton_red", "triton_per", "cpp_fused", "_shifted_layer_norm", "_rows_to_e4m3",
              "_bias_gelu", "_qk_norm_rope", "_swiglu")),
    ("convolution", ("conv", "implicit_gemm", "dgrad", "wgrad", "nchwtonhwc", "nhwctonchw")),
    ("GEMM", ("gemm", "nvjet", "cutlass", "xmma", "aten::mm", "aten::addmm", "aten::bmm", "_scaled_mm")),
    (_FUSED, ("triton",)),  # any other Triton kernel
)


def kernel_kind(name: str) -> str:
    """Coarse kind of a CUDA kernel or (on CPU) an aten operator, from its name."""
    low = name.lower()
    for kind, parts in _KINDS:
        if any(p in low for p in parts):
            return kind
    return "other (eager elementwise, copies, reductions, optimizer)"


def time_by_kind(fn: Callable[[], object], device: torch.device, calls: int = 2) -> dict[str, float]:
    """Milliseconds per call of ``fn`` by kernel kind (see ``kernel_kind``), largest first, plus "total".

    On CUDA only kernels count (an operator's time is the time of its kernels, so summing both would count twice);
    on CPU the operators' self times.
    """
    from torch.autograd import DeviceType

    cuda = device.type == "cuda"
    totals: dict[str, float] = {}
    for evt in _profiled(fn, device, calls).key_averages():
        if cuda and evt.device_type != DeviceType.CUDA:
            continue
        us = evt.self_device_time_total if cuda else evt.self_cpu_time_total
        kind = kernel_kind(evt.key)
        totals[kind] = totals.get(kind, 0.0) + us / 1e3 / calls
    out = dict(sorted(totals.items(), key=lambda kv: -kv[1]))
    out["total"] = sum(totals.values())
    return {k: round(v, 3) for k, v in out.items()}


def end_to_end(predictor, folder: Path, decode: str = "host", trace: Path | None = None) -> dict:
    """Images/s of ``run_batch`` over every image in ``folder``: what ``opensapiens predict --no-vis`` does (read,
    decode, batched model, post-processing, every documented output written, to a temporary folder).

    One warm-up pass over the first two batches, then the timed pass. ``trace``: profile the timed pass (host and GPU
    activity) into this Chrome trace, for ``bench/trace_summary.py``: where the GPU idles between the model's
    batches. The profiler's own overhead lowers that pass's throughput.
    """
    import tempfile

    from .inference.batch import run_batch
    from .io.images import list_inputs, read_image

    paths = list_inputs(folder)
    if not paths:
        raise FileNotFoundError(f"{folder}: no images")
    device, size = predictor.device, predictor.batch_size
    profiler = contextlib.nullcontext()
    if trace is not None:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        profiler = profile(activities=activities)

    def run(paths: list[Path], out: Path):
        report = run_batch(predictor, paths, out, batch_size=size, vis=False, progress=False, decode=decode)
        sync(device)
        if report.failed:
            raise RuntimeError(f"end-to-end pass failed on {len(report.failed)} files: {report.failed[0][1]}")
        return len(report.done)

    with tempfile.TemporaryDirectory() as tmp:
        run(paths[: 2 * size], Path(tmp) / "warm-up")
        t0 = time.perf_counter()
        with profiler:
            n = run(paths, Path(tmp) / "timed")
        seconds = time.perf_counter() - t0
    if trace is not None:
        trace.parent.mkdir(parents=True, exist_ok=True)
        profiler.export_chrome_trace(str(trace))
    return {"images": n, "seconds": round(seconds, 3), "images_per_s": round(n / seconds, 2),
            "image_size": list(read_image(paths[0]).shape[:2]), "decode": decode, "profiled": trace is not None,
            "path": "run_batch (opensapiens predict --no-vis)"}
