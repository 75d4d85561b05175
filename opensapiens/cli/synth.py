"""``opensapiens synth``: write a dataset of procedural humans with exact pose, part, depth and normal labels."""

from __future__ import annotations

import argparse
import sys

from .main import add_threads_option, device_spec, out_folder
from .predict import positive_int


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size must look like 1024x768 (HxW), got {text!r}") from None
    return h, w


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "synth", help="render synthetic humans with exact labels",
        description="Render procedural humans with 308 keypoints, 28-class part labels, metric depth, normals and "
                    "instance masks. Resumable: finished images are skipped. Example: opensapiens synth --n 1000 "
                    "--size 1024x768 --seed 1 --out data/synth; opensapiens synth --preset synth-val --out "
                    "data/synth-val")
    p.add_argument("--out", required=True, type=out_folder, help="output folder")
    p.add_argument("--preset", choices=["synth-val"], help="a fixed split (sets --n, --size and --seed)")
    p.add_argument("--n", type=int, help="number of images (default 100)")
    p.add_argument("--size", type=_size, help="image size HxW (default 1024x768)")
    p.add_argument("--seed", type=int, help="dataset seed (default 0)")
    p.add_argument("--device", type=device_spec, default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--backgrounds", help="folder of background photos (used for 80%% of the images)")
    p.add_argument("--batch-size", type=positive_int, default=8, help="images rendered together (default 8)")
    p.add_argument("--workers", type=int, default=4, help="file-writing threads (default 4)")
    add_threads_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..synth.dataset import preset_settings, write_dataset

    n, size, seed = args.n, args.size, args.seed
    if args.preset:
        preset = preset_settings(args.preset)
        fixed = {"--n": (n, preset.n), "--size": (size, (preset.height, preset.width)), "--seed": (seed, preset.seed)}
        clash = [k for k, (given, want) in fixed.items() if given is not None and given != want]
        if clash:
            raise SystemExit(f"--preset {args.preset} fixes {', '.join(clash)}; leave them out")
        n, size, seed = preset.n, (preset.height, preset.width), preset.seed
    n = 100 if n is None else n
    size = (1024, 768) if size is None else size
    seed = 0 if seed is None else seed
    try:
        path = write_dataset(args.out, n, size[0], size[1], seed, device=args.device, backgrounds=args.backgrounds,
                             batch_size=args.batch_size, workers=args.workers)
    except (ValueError, FileNotFoundError) as e:  # bad sizes or counts, a backgrounds folder that is not there
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {n} images and {path}")
    return 0
