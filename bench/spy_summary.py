"""Where the threads of a process spent their samples, from ``py-spy record --threads --idle [--native] -f raw``.

Raw lines are ``thread (ID): NAME;frame;frame;... COUNT`` (outermost frame first). For the samples of the threads
whose name starts with ``--thread`` and whose stack passes through a frame containing ``--within``, prints the share
of the innermost frames (the native one where ``--native`` recorded it), of the innermost frames with a symbol (an
unnamed libc address is often a wait: this names who waits, ``take_gil`` for the GIL) and of the innermost Python
frames. Then every thread group's samples. RAW may be gzipped (``.gz``).
Usage: python bench/spy_summary.py RAW [--thread MainThread] [--within Timed.submit] [--top 20]
"""
import argparse
import collections
import gzip
import re
from pathlib import Path

LINE = re.compile(r"^thread \((?P<id>[^)]*)\): (?P<stack>.*) (?P<count>\d+)$")
UNNAMED = re.compile(r"^0x[0-9a-f]+ \(")  # a native frame without a symbol: "0x7f62... (libc.so.6)"


def python_frame(frame: str) -> bool:
    return ".py:" in frame or "(<frozen" in frame


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("raw")
    p.add_argument("--thread", default="MainThread")
    p.add_argument("--within", default="Timed.submit")
    p.add_argument("--top", type=int, default=20)
    args = p.parse_args()
    leaf, leaf_named, leaf_python, groups = (collections.Counter() for _ in range(4))
    total = 0
    raw = Path(args.raw)
    text = gzip.decompress(raw.read_bytes()).decode() if raw.suffix == ".gz" else raw.read_text()
    for line in text.splitlines():
        m = LINE.match(line)
        if m is None:
            continue
        name, *frames = m["stack"].split(";")
        count = int(m["count"])
        groups[re.sub(r"_\d+$", "", name)] += count  # pool threads: one group per prefix
        if not name.startswith(args.thread) or not any(args.within in f for f in frames):
            continue
        total += count
        leaf[re.sub(r" \(0x[0-9a-f]+\)| 0x[0-9a-f]+", "", frames[-1])] += count
        named = [f for f in frames if not UNNAMED.match(f)]
        leaf_named[named[-1] if named else "(no named frame)"] += count
        python = [f for f in frames if python_frame(f)]
        leaf_python[python[-1] if python else "(no Python frame)"] += count
    print(f"{total} samples of {args.thread} within {args.within!r}")
    for title, counter in (("innermost frame", leaf), ("innermost named frame", leaf_named),
                           ("innermost Python frame", leaf_python)):
        print(f"\n{title}:")
        for frame, n in counter.most_common(args.top):
            print(f"  {100 * n / max(total, 1):5.1f} %  {frame[:150]}")
    print("\nsamples per thread group:")
    for name, n in groups.most_common():
        print(f"  {n:8d}  {name}")


if __name__ == "__main__":
    main()
