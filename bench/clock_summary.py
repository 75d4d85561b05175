"""Summarize an ``nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu,
clocks_throttle_reasons.active --format=csv -lms N`` log: does the card hold its SM clock while it computes?

    python bench/clock_summary.py bench/results/two_streams_clocks.csv [--busy-watts 300]

Prints, over the samples drawing more than ``--busy-watts`` (the card at work, not idle between runs), the SM clock's
and power's minimum / median / maximum and the share of those samples with each throttle reason active.
"""

from __future__ import annotations

import argparse
import csv
import statistics
from pathlib import Path

# nvidia-smi's clocks_throttle_reasons bits (nvml's nvmlClocksEventReasons)
REASONS = {0x1: "gpu idle", 0x2: "applications clocks setting", 0x4: "sw power cap", 0x8: "hw slowdown",
           0x10: "sync boost", 0x20: "sw thermal slowdown", 0x40: "hw thermal slowdown",
           0x80: "hw power brake slowdown", 0x100: "display clock setting"}


def number(text: str) -> float | None:
    """'1980 MHz' -> 1980.0; '[N/A]' -> None."""
    try:
        return float(text.strip().split()[0])
    except (ValueError, IndexError):
        return None


def summarize(path: Path, busy_watts: float) -> dict:
    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f) if len(r) == 6 and not r[0].startswith("timestamp")]
    busy = [r for r in rows if (number(r[3]) or 0) > busy_watts]
    out = {"samples": len(rows), "busy_samples": len(busy)}
    if not busy:
        return out
    for key, column in (("sm_mhz", 1), ("mem_mhz", 2), ("watts", 3), ("celsius", 4)):
        values = [v for r in busy if (v := number(r[column])) is not None]
        if values:
            out[key] = (min(values), statistics.median(values), max(values))
    masks = [int(r[5].strip(), 16) for r in busy if r[5].strip().startswith("0x")]
    out["reasons"] = {name: round(sum(bool(m & bit) for m in masks) / len(masks), 3)
                      for bit, name in REASONS.items() if masks and any(m & bit for m in masks)}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("log", type=Path)
    p.add_argument("--busy-watts", type=float, default=300.0)
    args = p.parse_args()
    s = summarize(args.log, args.busy_watts)
    print(f"{args.log.name}: {s['busy_samples']} of {s['samples']} samples above {args.busy_watts:.0f} W")
    for key in ("sm_mhz", "mem_mhz", "watts", "celsius"):
        if key in s:
            print(f"  {key}: min {s[key][0]:.0f}, median {s[key][1]:.0f}, max {s[key][2]:.0f}")
    for name, share in s.get("reasons", {}).items():
        print(f"  throttle reason '{name}': {share:.0%} of busy samples")


if __name__ == "__main__":
    main()
