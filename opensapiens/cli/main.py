"""``opensapiens`` command line: one sub-command per module in this package."""

from __future__ import annotations

import argparse
import importlib
import sys

# Each module defines ``register(subparsers)``, which adds its parser with ``set_defaults(func=run)``.
COMMANDS = ("predict", "convert", "models", "synth", "eval", "train", "pretrain", "curate", "bench", "demo")


def error_text(e: BaseException) -> str:
    """What a user is told of an error: its message; one re-raised from a DataLoader worker carries the worker's
    traceback in its message, whose last line is the error's own."""
    text = str(e)
    return text.strip().splitlines()[-1].split(": ", 1)[-1] if "Original Traceback" in text else text


def add_threads_option(p: argparse.ArgumentParser) -> None:
    """``--threads N``: CPU threads for PyTorch. On a laptop whose cores are busy, fewer threads than cores avoids
    threads spinning while they wait for each other (seen: 10-40x slower with 2 threads on 2 busy cores)."""
    p.add_argument("--threads", type=int, default=None, help="CPU threads for PyTorch (default: all cores)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="opensapiens", description="Sapiens human vision models in pure PyTorch.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"opensapiens.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"opensapiens.cli.{name}":  # command not part of this build
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "threads", None) is not None:
        import torch

        if args.threads < 1:
            raise SystemExit(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
