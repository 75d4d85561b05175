"""``opensapiens`` command line: one sub-command per module in this package."""

from __future__ import annotations

import argparse
import importlib
import sys

# Each module defines ``register(subparsers)``, which adds its parser with ``set_defaults(func=run)``.
COMMANDS = ("predict", "convert", "models", "synth", "eval", "train", "pretrain", "curate", "bench", "demo")


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
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
