"""Summarize a profiler trace (``*.trace.json`` from ``bench_mae.py --profile`` and others): GPU busy and idle time
per step, the longest idle gaps and the kernels that follow them, and the kernels by total time.

    python bench/trace_summary.py bench/results/mae_0.3b_pipeline.trace.json --steps 2

Idle time is what the kernels' sum leaves of the span from the first kernel's start to the last one's end: host work
the GPU waits for (a synchronization, Python between launches), not visible in per-kernel tables.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path


def summarize(trace: dict, steps: int, top: int = 30, gaps: int = 10) -> dict:
    events = sorted((e for e in trace["traceEvents"] if e.get("ph") == "X" and e.get("cat") in
                     ("kernel", "gpu_memcpy", "gpu_memset")), key=lambda e: e["ts"])
    if not events:
        raise SystemExit("no GPU kernels in this trace")
    start, end = events[0]["ts"], max(e["ts"] + e["dur"] for e in events)
    idle, reach = [], start
    for e in events:  # gaps between the union of kernel intervals (kernels on several streams may overlap)
        if e["ts"] > reach:
            idle.append((e["ts"] - reach, e["name"][:80]))
        reach = max(reach, e["ts"] + e["dur"])
    by_name: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for e in events:
        by_name[e["name"][:100]][0] += e["dur"]
        by_name[e["name"][:100]][1] += 1
    ms = 1e-3 / steps
    return {"span_ms_per_step": (end - start) * ms, "busy_ms_per_step": sum(e["dur"] for e in events) * ms,
            "idle_ms_per_step": sum(g for g, _ in idle) * ms, "idle_gaps_per_step": len(idle) / steps,
            "longest_gaps": [{"ms": round(g * 1e-3, 3), "before": name} for g, name in sorted(idle)[::-1][:gaps]],
            "kernels": [{"ms_per_step": round(t * ms, 3), "calls_per_step": n / steps, "name": name}
                        for name, (t, n) in sorted(by_name.items(), key=lambda kv: -kv[1][0])[:top]]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("trace", type=Path)
    ap.add_argument("--steps", type=int, default=2, help="steps the trace covers (bench_mae.py profiles 2)")
    ap.add_argument("--top", type=int, default=30)
    args = ap.parse_args()
    s = summarize(json.loads(args.trace.read_text()), args.steps, args.top)
    print(f"per step: span {s['span_ms_per_step']:.1f} ms, kernels {s['busy_ms_per_step']:.1f} ms, GPU idle "
          f"{s['idle_ms_per_step']:.1f} ms in {s['idle_gaps_per_step']:.0f} gaps")
    for g in s["longest_gaps"]:
        print(f"  gap {g['ms']:7.3f} ms before {g['before']}")
    for k in s["kernels"]:
        print(f"  {k['ms_per_step']:8.2f} ms/step {k['calls_per_step']:6.0f}/step  {k['name']}")


if __name__ == "__main__":
    main()
