"""``opensapiens curate``: Humans-300M-style filtering of an image collection into tar shards for pretraining.

    opensapiens curate photos/ --out shards/                     # person score > 0.9, box side > 300 px, dedup
    opensapiens curate photos/ --out shards/ --min-box-side 200 --phash-radius 4 --device cuda
    opensapiens pretrain --data shards/ ...

Running it again on the same --out resumes from its manifest.jsonl.
"""

from __future__ import annotations

import argparse
import json
import sys

from .main import device_spec, out_folder


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("curate", help="keep images with a large, confident person; drop duplicates; write shards",
                       description="Run a person detector over images, keep those with a person of score > "
                                   "--min-score and box side > --min-box-side, drop exact and near duplicates, "
                                   "and write tar shards plus manifest.jsonl (resumable).")
    p.add_argument("src", nargs="+", help="image folders (searched recursively), files, globs or .txt lists")
    p.add_argument("--out", required=True, type=out_folder,
                   help="output folder for shard-*.tar, manifest.jsonl, summary.json")
    p.add_argument("--min-score", type=float, default=0.9, help="person detection score threshold (default 0.9)")
    p.add_argument("--min-box-side", type=float, default=300.0, help="box side threshold in pixels (default 300)")
    p.add_argument("--box-side", choices=["long", "short"], default="long",
                   help="which box side must exceed --min-box-side (default: the longer one)")
    p.add_argument("--phash-radius", type=int, default=6,
                   help="near duplicate when the 64-bit pHash differs in at most this many bits (-1: off)")
    p.add_argument("--shard-size", type=int, default=1000, help="images per shard")
    p.add_argument("--detector-arch", dest="detector_arch", default="fasterrcnn_resnet50_fpn_v2",
                   help="torchvision detection model, as predict's --detector-arch")
    p.add_argument("--detector-weights", "--detector", dest="detector_weights",
                   help="local detector weights, or 'torchvision' (the default: torchvision's COCO weights, downloaded "
                        "once); --detector is the same option, as in predict")
    p.add_argument("--device", type=device_spec, help="detector device (default: cuda if available)")
    p.add_argument("--batch-size", type=int, default=8, help="images per detector call")
    p.add_argument("--workers", type=int, default=4, help="image reading processes")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..curation import CurationConfig, curate_images, image_files
    from ..inference.detector import PersonDetector

    def say(message: str) -> None:
        print(message, file=sys.stderr)

    try:
        sources = image_files(args.src, say)  # a mistyped SRC, or one without images, fails here: before the detector
        cfg = CurationConfig(min_score=args.min_score, min_box_side=args.min_box_side, box_side=args.box_side,
                             phash_radius=args.phash_radius, shard_max_count=args.shard_size,
                             batch_size=args.batch_size, workers=args.workers)
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        # The detector's own threshold only trims what is recorded; the keep rule uses --min-score.
        weights = None if args.detector_weights in (None, "torchvision") else args.detector_weights
        detector = PersonDetector(weights, arch=args.detector_arch, device=device,
                                  score_threshold=min(0.3, args.min_score))
        report = curate_images(sources, args.out, detector, cfg, log=say)
    except (ValueError, OSError, RuntimeError) as e:  # OSError: a detector download that failed (offline)
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(report.to_dict()))
    if report.stopped:
        print(f"stopped: {report.processed} images decided in this call; run the same command to go on",
              file=sys.stderr)
    return 0
