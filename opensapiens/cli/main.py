"""``opensapiens`` command line: one sub-command per module in this package."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

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


def device_spec(text: str) -> str:
    """``--device``'s type: a device this machine has, checked as the options are read (not a traceback from the
    first CUDA call, after the weights have loaded)."""
    import torch

    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a device: cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise argparse.ArgumentTypeError(f"{text}: this machine has no CUDA device that PyTorch "
                                             f"{torch.__version__} can use; use --device cpu")
        if device.index is not None and device.index >= count:
            raise argparse.ArgumentTypeError(f"{text}: this machine has {count} CUDA device(s), cuda:0 to "
                                             f"cuda:{count - 1}")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError(f"{text}: MPS is not available on this machine; use --device cpu")
    return text


def out_folder(text: str) -> str:
    """``--out`` that names a folder (made if missing): refused as the options are read when a file is in the way,
    not as a traceback once the work is done."""
    blocker = _file_in_the_way(Path(text))
    if blocker == Path(text):
        raise argparse.ArgumentTypeError(f"{text} is a file; --out names a folder (made if missing)")
    if blocker is not None:
        raise argparse.ArgumentTypeError(f"{text}: {blocker} is a file, not a folder")
    return text


def out_file(text: str) -> Path:
    """``--out`` that names a file: refused as the options are read when it is a folder or a file is in its way."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder; --out names a file, e.g. {path / 'results.json'}")
    blocker = _file_in_the_way(path.parent)
    if blocker is not None:
        raise argparse.ArgumentTypeError(f"{text}: {blocker} is a file, not a folder")
    return path


def _file_in_the_way(folder: Path) -> Path | None:
    """The nearest existing one of ``folder`` and its parents when that one is not a folder."""
    for p in (folder, *folder.parents):
        if p.exists():
            return None if p.is_dir() else p
    return None


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
