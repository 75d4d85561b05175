"""Humans-300M-style curation: an image collection -> tar shards of images with a large, confident person.

The Sapiens paper (§3.1) keeps an image when "a person detection has score > 0.9 and box size > 300 px". "Box size"
is not defined further; we read it as the box's LONGER side (``box_side="long"``: a person at least 300 px tall or
wide), with the shorter side as the stricter option. Both thresholds are strict (>) and configurable.

Each image, in input order, is dropped for the first reason that applies:
    unreadable       the file cannot be decoded
    exact_duplicate  same SHA-256 of the file bytes as an image seen before
    too_small        the image itself is too small to hold a qualifying box (no detector run)
    near_duplicate   pHash within ``phash_radius`` bits of an image already kept
    no_person        no person detection with score > ``min_score``
    person_too_small confident people, but none with a box side > ``min_box_side``
and is otherwise kept: its original bytes go into a shard as ``KEY.EXT`` plus ``KEY.json`` (source, size, boxes).

Resumable: ``manifest.jsonl`` gets one JSON line per image (matched on resume by its resolved path). Lines of kept
images are written (and flushed) just before their shard is renamed into place, so after a crash every recorded kept
image is in a finished shard; images of the unfinished shard are simply processed again. SIGTERM or Ctrl-C stops
after the current batch of images and finishes the open shard. Workers read, hash and downscale images in parallel;
the detector runs in the main process (on the GPU if it lives there).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from ..data.shard_writer import ShardWriter
from ..data.workers import WorkerInit, loader_context
from ..io.images import IMAGE_EXTENSIONS, list_inputs, read_image
from ..io.writers import save_json
from ..training.config import check_counts
from ..training.signals import StopRequest
from .phash import PHashIndex, phash

Detector = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]  # RGB uint8 -> (boxes xyxy (N, 4), scores (N,))
REASONS = ("unreadable", "exact_duplicate", "too_small", "near_duplicate", "no_person", "person_too_small")


@dataclass(frozen=True)
class CurationConfig:
    min_score: float = 0.9  # a detection counts as a person when its score is above this
    min_box_side: float = 300.0  # ... and its box side (see box_side) is above this, in original pixels
    box_side: str = "long"  # "long": max(w, h) of the box; "short": min(w, h)
    phash_radius: int = 6  # near duplicate: Hamming distance <= this (of 64 bits); -1 disables
    detect_max_side: int = 1333  # images are downscaled to this longer side for the detector; boxes scaled back
    shard_max_count: int = 1000
    shard_max_bytes: int = 1 << 30
    batch_size: int = 8  # images per detector call
    workers: int = 4

    def __post_init__(self) -> None:
        if self.box_side not in ("long", "short"):
            raise ValueError(f"box_side must be 'long' or 'short', got {self.box_side!r}")
        check_counts(self, positive=("detect_max_side", "shard_max_count", "shard_max_bytes", "batch_size"),
                     non_negative=("workers",), flags=False)  # (fields, not all named as curate's options)


@dataclass
class CurationReport:
    seen: int = 0  # images in the collection
    processed: int = 0  # processed in this call (the rest were in the manifest already)
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    shards: list[str] = field(default_factory=list)  # every finished shard, earlier calls' included
    seconds: float = 0.0  # of this call
    stopped: bool = False  # by SIGTERM / Ctrl-C: what was decided is recorded; run again to go on

    def to_dict(self) -> dict:
        d = asdict(self)
        d["dropped"] = {r: self.dropped.get(r, 0) for r in REASONS}
        return d


# ------------------------------------------------------------------------------------------------- worker side


class _Reader(torch.utils.data.Dataset):
    """Per image: bytes, SHA-256, decoded size, pHash and a detector-sized copy (read in loader workers)."""

    def __init__(self, paths: Sequence[Path], max_side: int):
        self.paths, self.max_side = list(paths), max_side

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        path = self.paths[i]
        item: dict = {"i": i, "path": str(path)}
        try:
            data = path.read_bytes()
            item.update(bytes=data, sha256=hashlib.sha256(data).hexdigest())
            image = read_image(path)
            H, W = image.shape[:2]
            if max(H, W) > self.max_side:  # each side at least 1 px: a 3000 x 1 strip must not become 0 px wide
                scale = self.max_side / max(H, W)
                image = cv2.resize(image, (max(1, round(W * scale)), max(1, round(H * scale))),
                                   interpolation=cv2.INTER_AREA)
            item.update(height=H, width=W, phash=phash(image), image=image,
                        scale=(image.shape[1] / W, image.shape[0] / H))
        except Exception as e:  # unusable for any reason (reading, resizing, hashing): recorded, not fatal
            item["error"] = f"{type(e).__name__}: {e}"
        return item


def _identity(x):
    return x


# --------------------------------------------------------------------------------------------------- manifest


def _load_manifest(out: Path) -> tuple[list[dict], list[str]]:
    """Records whose outcome is final, and the names of the finished shards.

    Final: kept into a finished shard, or dropped, except duplicates of an image whose own record is not final
    (e.g. a copy of an image that was kept into the shard a crash cut short): those are decided again."""
    path = out / "manifest.jsonl"
    records: list[dict] = []
    cut = 0
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                cut += 1  # a line cut by a crash: that image is processed again
    shards = {p.name for p in out.glob("shard-*.tar")}
    final = [r for r in records if not r["kept"] or r.get("shard") in shards]
    while True:
        paths = {r["path"] for r in final}
        kept = [r for r in final if "duplicate_of" not in r or r["duplicate_of"] in paths]
        if len(kept) == len(final):
            break
        final = kept
    if cut or len(final) != len(records):  # compact away the records that will be redone (and a cut line, which
        # the next record appended would otherwise join: that record, unreadable, would count as not done)
        tmp = path.with_name(".manifest.jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in final))
        os.replace(tmp, path)
    return final, sorted(shards)


def image_files(src: str | os.PathLike | Sequence[str | os.PathLike],
                log: Callable[[str], None] | None = None) -> list[Path]:
    """The image files of ``src`` (files, folders and their sub-folders, globs, .txt lists); videos and other files
    are passed over, told through ``log``; none at all is an error naming ``src``."""
    listed = list_inputs(src, recursive=True)
    images = [p for p in listed if p.suffix.lower() in IMAGE_EXTENSIONS]
    others = [p for p in listed if p.suffix.lower() not in IMAGE_EXTENSIONS]
    if not images:
        specs = [src] if isinstance(src, (str, os.PathLike)) else list(src)
        where = ", ".join(map(str, specs[:3])) + (" ..." if len(specs) > 3 else "")
        raise ValueError(f"{where}: no images to curate ({', '.join(sorted(IMAGE_EXTENSIONS))})"
                         + (f"; {len(others)} other files, such as {others[0]}" if others else ""))
    if others and log:
        log(f"passing over {len(others)} file(s) that are not images (videos, ...), such as {others[0]}")
    return images


def _box_sides(boxes: np.ndarray, mode: str) -> np.ndarray:
    wh = np.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], axis=1) if len(boxes) else np.zeros((0, 2))
    return wh.max(1) if mode == "long" else wh.min(1)


def _detect(detector: Detector, images: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    batch = getattr(detector, "detect_batch", None)
    return batch(images) if batch is not None else [detector(im) for im in images]


# ------------------------------------------------------------------------------------------------------- main


def curate(src: str | os.PathLike | Sequence[str | os.PathLike], out: str | os.PathLike, detector: Detector,
           config: CurationConfig | None = None, log: Callable[[str], None] | None = None) -> CurationReport:
    """Filter and deduplicate the images of ``src`` into ``out/shard-NNNNNN.tar`` + ``out/manifest.jsonl``.

    ``detector(image)`` takes an RGB uint8 array and returns person boxes (N, 4) xyxy and scores (N,) in that image's
    pixels; an object with ``detect_batch(images)`` is called on batches. Running again on the same ``out`` resumes.
    """
    return curate_images(image_files(src, log), out, detector, config, log)


def curate_images(paths: Sequence[Path], out: str | os.PathLike, detector: Detector,
                  config: CurationConfig | None = None, log: Callable[[str], None] | None = None) -> CurationReport:
    """``curate`` of image files already listed (``image_files``)."""
    cfg = config or CurationConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    done, shards = _load_manifest(out)
    report = CurationReport(seen=len(paths), shards=shards)
    seen_sha: dict[str, str] = {}
    index = PHashIndex(max(cfg.phash_radius, 0))
    for r in done:
        if r.get("sha256") and r["reason"] != "exact_duplicate":
            seen_sha[r["sha256"]] = r["path"]
        if r["kept"]:
            report.kept += 1
            index.add(int(r["phash"], 16), r["path"])
        else:
            report.dropped[r["reason"]] += 1
    finished = {Path(r["path"]).resolve() for r in done}  # "photos/a.jpg" then "/data/photos/a.jpg" is one image
    # recorded as absolute paths: a resume from another working directory finds them
    todo = [p.absolute() for p in paths if p.resolve() not in finished]
    if log and done:
        log(f"resuming: {len(done)} images already in the manifest, {len(todo)} to go")

    # Workers: data.workers (from a fork server, one thread each, ended with this process).
    loader = torch.utils.data.DataLoader(_Reader(todo, cfg.detect_max_side), batch_size=None, shuffle=False,
                                         num_workers=cfg.workers, collate_fn=_identity, worker_init_fn=WorkerInit(),
                                         multiprocessing_context=loader_context(cfg.workers))
    next_shard = max((int(n[len("shard-"):-len(".tar")]) for n in shards), default=-1) + 1
    writer = ShardWriter(out, "shard", cfg.shard_max_count, cfg.shard_max_bytes, start_index=next_shard)
    pending: list[dict] = []  # records of images in the open shard
    stop = StopRequest()  # SIGTERM / Ctrl-C: finish the chunk and the open shard, then return
    with contextlib.ExitStack() as exits:
        exits.callback(stop.close)
        manifest = exits.enter_context(open(out / "manifest.jsonl", "a"))

        def emit(records: list[dict]) -> None:
            manifest.write("".join(json.dumps(r) + "\n" for r in records))
            manifest.flush()
            os.fsync(manifest.fileno())

        def finish_shard() -> None:
            if writer.count:
                emit(pending)  # manifest first: a crash before the rename only costs re-processing
                report.shards.append(writer.close())
                pending.clear()

        chunk: list[dict] = []
        for n, item in enumerate(loader, start=1):
            chunk.append(item)
            if len(chunk) == cfg.batch_size or n == len(todo):
                dropped = _decide(chunk, cfg, detector, seen_sha, index, report)
                emit(dropped)
                for item in chunk:
                    rec = item.get("record")
                    if rec is not None and rec["kept"]:
                        if writer.is_full(len(item["bytes"])):
                            finish_shard()
                        rec["key"] = rec["sha256"][:24]
                        rec["shard"] = writer.write(rec["key"], item["bytes"], Path(item["path"]).suffix.lower(),
                                                    {k: rec[k] for k in ("path", "width", "height", "detections")})
                        pending.append(rec)
                report.processed += len(chunk)
                chunk = []
                if log and (n // cfg.batch_size) % 50 == 0:
                    log(f"{report.processed}/{len(todo)} processed, {report.kept} kept in total")
                if stop.requested:
                    report.stopped = n < len(todo)  # a signal during the last batch stopped nothing
                    break
        finish_shard()
    report.seconds = time.time() - t0
    save_json(out / "summary.json", report.to_dict(), indent=2)
    return report


def _decide(chunk: list[dict], cfg: CurationConfig, detector: Detector, seen_sha: dict[str, str],
            index: PHashIndex, report: CurationReport) -> list[dict]:
    """Set ``item["record"]`` for each image of the chunk, in order; returns the records of dropped images."""
    for item in chunk:  # the cheap checks, which do not depend on what gets kept
        rec = {"path": item["path"], "bytes": len(item.get("bytes", b"")), "sha256": item.get("sha256"),
               "kept": False}
        item["record"] = rec
        if "error" in item:
            rec.update(reason="unreadable", error=item["error"])
            continue
        rec.update(width=item["width"], height=item["height"], phash=f"{item['phash']:016x}")
        if item["sha256"] in seen_sha:
            rec.update(reason="exact_duplicate", duplicate_of=seen_sha[item["sha256"]])
            continue
        seen_sha[item["sha256"]] = item["path"]
        largest = max(item["width"], item["height"]) if cfg.box_side == "long" else min(item["width"], item["height"])
        if largest <= cfg.min_box_side:
            rec["reason"] = "too_small"
    todo = [it for it in chunk if "reason" not in it["record"]]
    for it, (boxes, scores) in zip(todo, _detect(detector, [it["image"] for it in todo])):
        sx, sy = it["scale"]
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) / [sx, sy, sx, sy]  # back to original pixels
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        it["record"]["detections"] = [[round(float(v), 1) for v in b] + [round(float(s), 4)]
                                      for b, s in zip(boxes, scores)]
        confident = scores > cfg.min_score
        it["confident"] = bool(confident.any())
        it["qualifies"] = bool((confident & (_box_sides(boxes, cfg.box_side) > cfg.min_box_side)).any())
    dropped = []
    for item in chunk:  # near duplicates and the decision, in input order (depends on what was kept before)
        rec = item["record"]
        if "reason" not in rec:
            near = index.query(item["phash"]) if cfg.phash_radius >= 0 else None
            if near is not None:
                rec.update(reason="near_duplicate", duplicate_of=near[0], distance=near[1])
            elif not item["confident"]:
                rec["reason"] = "no_person"
            elif not item["qualifies"]:
                rec["reason"] = "person_too_small"
            else:
                rec.update(kept=True, reason="kept")
                index.add(item["phash"], item["path"])
                report.kept += 1
        if not rec["kept"]:
            report.dropped[rec["reason"]] += 1
            dropped.append(rec)
        item.pop("image", None)
    return dropped
