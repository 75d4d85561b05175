"""Streaming image data for pretraining: WebDataset-style tar shards or image folders, read sequentially, sharded
across ranks and loader workers without overlap, resumable exactly.

Format: a shard is a plain tar whose members are ``NAME.jpg`` (or .jpeg/.png/.webp/...) with an optional
``NAME.json`` next to it; ``shard_writer.ShardWriter`` writes them atomically.

Streams. With R ranks of W workers there are S = R*W *slots*; slot s = rank*W + worker. Epoch e visits the units
(tar shards, or files of a folder) in a permutation seeded by (seed, e), identical on every slot:
    - at least S units: slot s reads units perm[s::S] and every member of them (each shard read by one slot);
    - fewer units than slots: every slot reads all units but keeps only members j with j % S == s.
Either way every sample is yielded exactly once per epoch by exactly one slot. A slot's samples go through a
shuffle buffer (seeded by (seed, e, s), drained at the end of each epoch) and each sample's crop and flip come from
its own seed (seed, e, s, i), i = its index in the slot's epoch. A slot's position is therefore two numbers
(epoch, i): ``LoaderState`` keeps them, and a resumed stream replays the raw bytes of the current epoch up to i
(no decoding) and continues with identical batches.

Decoding. Workers read bytes and draw crop parameters from the header (no pixel decode). JPEGs are then decoded
on the GPU by ``decode_batch`` with ``torchvision.io.decode_jpeg(device="cuda")`` when ``gpu_jpeg`` is set; anything
else is decoded, cropped and resized on the worker's CPU with Pillow (bicubic, as the official pipeline).
Unreadable samples are skipped (the batch is filled from the next ones) and counted in ``Batch.skipped``; a slot
whose samples of a whole epoch are all unreadable raises a RuntimeError instead of spinning over them forever.
"""

from __future__ import annotations

import glob
import io
import math
import os
import tarfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from ..io.images import IMAGE_EXTENSIONS, decode_high_bit_depth, decode_jpegs, high_bit_depth, list_inputs, upright
from .labels import DataError

MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)
JPEG_EXTENSIONS = frozenset({".jpg", ".jpeg"})


# ------------------------------------------------------------------------------------------------------ sources


@dataclass(frozen=True)
class Source:
    """What to stream: ``tar`` shards or single image ``files``."""

    kind: str  # "tar" | "files"
    units: tuple[Path, ...]

    def __len__(self) -> int:
        return len(self.units)


def find_source(spec: str | os.PathLike | Sequence[str | os.PathLike]) -> Source:
    """A folder of ``*.tar`` shards, a folder (searched recursively) of images, a glob, a ``.tar`` file, a ``.txt``
    list, or a list of these. Tar shards win when a folder holds both."""
    specs = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    tars: list[Path] = []
    rest: list[str] = []
    for s in specs:
        p = Path(s)
        if p.is_dir() and (found := sorted(p.glob("*.tar"))):
            tars += found
        elif p.suffix == ".tar" and p.is_file():
            tars.append(p)
        elif "*" in str(s) and str(s).endswith(".tar"):
            if not (found := sorted(Path(x) for x in glob.glob(str(s)))):
                raise FileNotFoundError(f"no tar shards match {str(s)!r}")
            tars += found
        else:
            rest.append(str(s))
    if tars and rest:
        raise ValueError(f"mix of tar shards and image inputs is not supported: {rest[:3]}")
    if tars:  # a shard given twice is read once (its samples would be seen twice an epoch)
        unique: dict[Path, Path] = {}
        for t in tars:
            unique.setdefault(t.resolve(), t)
        return Source("tar", tuple(unique.values()))
    files = [f for f in list_inputs(rest, recursive=True) if f.suffix.lower() in IMAGE_EXTENSIONS]
    if not files:
        raise FileNotFoundError(f"no images or tar shards found in {specs}")
    return Source("files", tuple(files))


def iter_tar(path: Path) -> Iterator[tuple[str, bytes, str]]:
    """("SHARD/KEY", image bytes, extension) of each image member, in stream order (``r|`` mode: no seeking).

    As in WebDataset, a member's key is its path up to the first dot of its file name."""
    with tarfile.open(path, mode="r|*") as tf:
        for m in tf:
            if not m.isfile():
                continue
            folder, _, name = m.name.rpartition("/")
            key, dot, ext = name.partition(".")
            ext = "." + ext.lower() if dot else ""
            if ext not in IMAGE_EXTENSIONS:
                continue  # NAME.json and other side files
            f = tf.extractfile(m)
            yield f"{path.stem}/{folder + '/' if folder else ''}{key}", f.read() if f else b"", ext


def _unit_members(source: Source, unit: int) -> Iterator[tuple[str, bytes | None, str]]:
    path = source.units[unit]
    if source.kind == "files":
        yield str(path), None, path.suffix.lower()  # bytes read only when the sample is used
        return
    try:
        yield from iter_tar(path)
    except (tarfile.TarError, OSError, EOFError) as e:
        warnings.warn(f"shard {path}: stopped reading ({e}); its remaining samples are skipped", stacklevel=2)
        yield f"{path.stem}/(unreadable rest)", b"", ""  # no image: the batch skips it, counted as one sample


def slot_stream(source: Source, slot: int, num_slots: int, epoch: int, seed: int
                ) -> Iterator[tuple[str, bytes | None, str]]:
    """The raw samples of one slot for one epoch, before the shuffle buffer (see the module docstring)."""
    perm = np.random.default_rng([seed, epoch]).permutation(len(source))
    if len(source) >= num_slots:
        for u in perm[slot::num_slots]:
            yield from _unit_members(source, int(u))
        return
    j = 0
    for u in perm:
        for sample in _unit_members(source, int(u)):
            if j % num_slots == slot:
                yield sample
            j += 1


def shuffled(samples: Iterator, size: int, rng: np.random.Generator) -> Iterator:
    """A shuffle buffer of ``size`` items, drained in random order at the end; ``size`` <= 1 keeps the order."""
    if size <= 1:
        yield from samples
        return
    buf: list = []
    for s in samples:
        if len(buf) < size:
            buf.append(s)
            continue
        j = int(rng.integers(size))
        buf[j], s = s, buf[j]
        yield s
    while buf:
        yield buf.pop(int(rng.integers(len(buf))))


# ------------------------------------------------------------------------------------------------------ crops


@dataclass(frozen=True)
class CropParams:
    top: int
    left: int
    height: int
    width: int
    flip: bool
    orientation: int = 1  # EXIF orientation to apply before cropping (GPU path)


def random_resized_crop(rng: np.random.Generator, size: tuple[int, int], out: tuple[int, int],
                        scale: tuple[float, float] = (0.2, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3),
                        flip_prob: float = 0.5) -> CropParams:
    """RandomResizedCrop box (torchvision / mmpretrain rule: 10 tries, then a centre crop) and a flip.

    ``ratio`` is the crop's width/height relative to the output's, so a square output sees the official range.
    """
    H, W = size
    area = H * W
    aspect = out[1] / out[0]
    lo, hi = math.log(ratio[0] * aspect), math.log(ratio[1] * aspect)
    for _ in range(10):
        target = area * rng.uniform(*scale)
        r = math.exp(rng.uniform(lo, hi))
        w, h = round(math.sqrt(target * r)), round(math.sqrt(target / r))
        if 0 < w <= W and 0 < h <= H:
            top, left = int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1))
            return CropParams(top, left, h, w, bool(rng.random() < flip_prob))
    r = W / H
    if r < math.exp(lo):
        w, h = W, round(W / math.exp(lo))
    elif r > math.exp(hi):
        h, w = H, round(H * math.exp(hi))
    else:
        w, h = W, H
    return CropParams((H - h) // 2, (W - w) // 2, h, w, bool(rng.random() < flip_prob))


def _header(data: bytes) -> tuple[tuple[int, int], int, str]:
    """((H, W) as displayed, EXIF orientation, PIL format) without decoding the pixels."""
    with Image.open(io.BytesIO(data)) as im:
        W, H = im.size
        try:
            orient = int(im.getexif().get(0x0112, 1))
        except Exception:
            orient = 1
        orient = orient if 1 <= orient <= 8 else 1
        return ((W, H) if orient >= 5 else (H, W)), orient, im.format or ""


def _jpeg_complete(data: bytes) -> bool:
    """Whether a JPEG has its end-of-image marker after its first scan: a partial download does not.

    Bytes after the marker (motion-photo videos, vendor trailers, padding) are fine, as for Pillow. The search starts
    at the first scan, found by walking the header segments, so that the end marker of an EXIF thumbnail does not
    count; scan data cannot hold FF D9 (a 0xFF byte there is followed by 00 or a restart marker).
    """
    if data[:2] != b"\xff\xd8":
        return False
    pos = 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
        elif marker == 0xD9:  # the end before any scan: no pixels
            return False
        elif marker == 0xDA:  # start of scan
            break
        elif 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
            pos += 2
        else:
            pos += 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
    return data.find(b"\xff\xd9", pos) != -1


def decode_crop_cpu(data: bytes, crop: CropParams, out: tuple[int, int]) -> torch.Tensor:
    """Decode, apply EXIF orientation, crop and resize (Pillow bicubic) and flip: (3, H, W) uint8."""
    with Image.open(io.BytesIO(data)) as im:
        if high_bit_depth(im):  # 16-bit, 32-bit, float: scaled as read_image scales them, not clipped
            im = Image.fromarray(decode_high_bit_depth(im, data, "a sample"))
        else:
            im = ImageOps.exif_transpose(im).convert("RGB")
        box = (crop.left, crop.top, crop.left + crop.width, crop.top + crop.height)
        im = im.resize((out[1], out[0]), Image.Resampling.BICUBIC, box=box)
        if crop.flip:
            im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1)


# ------------------------------------------------------------------------------------------------------ batches


@dataclass
class Batch:
    """One batch as a worker hands it over: CPU-decoded pixels and/or JPEG bytes left for the GPU."""

    pixels: torch.Tensor  # (n_cpu, 3, H, W) uint8
    pixel_slots: list[int]  # batch positions of ``pixels``
    jpegs: list[tuple[int, bytes, CropParams]]  # (batch position, bytes, crop) for GPU decoding
    keys: list[str]
    epochs: list[int]
    slot: int
    cursor: tuple[int, int]  # the slot's (epoch, index) after this batch
    skipped: int = 0  # unreadable samples passed over while filling this batch
    skipped_keys: list[str] = field(default_factory=list)

    def pin_memory(self) -> Batch:
        """Called by ``DataLoader(pin_memory=True)``: page-locked pixels copy to the GPU asynchronously."""
        self.pixels = self.pixels.pin_memory()
        return self


@dataclass
class LoaderState:
    """Where every slot of a run stands; saved with the training checkpoint for an exact resume."""

    num_slots: int
    batches: int = 0  # batches consumed per rank
    cursors: dict[int, tuple[int, int]] = field(default_factory=dict)

    def update(self, batch: Batch) -> None:
        """Record a consumed batch (call once per batch, in the order the loader delivers them)."""
        self.cursors[batch.slot] = batch.cursor
        self.batches += 1

    def to_dict(self) -> dict:
        return {"num_slots": self.num_slots, "batches": self.batches,
                "cursors": {str(k): list(v) for k, v in self.cursors.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> LoaderState:
        return cls(int(d["num_slots"]), int(d["batches"]), {int(k): tuple(v) for k, v in d["cursors"].items()})

    def merge(self, other: LoaderState) -> LoaderState:
        return LoaderState(self.num_slots, self.batches, {**self.cursors, **other.cursors})


@dataclass
class _FailedRun:
    """The current run of consecutive undecodable samples of a slot, to tell when a whole epoch of it failed."""

    epoch: int = -1  # epoch of the run's latest samples
    count: int = 0  # samples of that epoch in the run
    from_start: bool = False  # the run holds that epoch's first sample
    key: str = ""

    def add(self, epoch: int, i: int, key: str) -> None:
        if self.count and epoch == self.epoch:
            self.count += 1
        else:
            self.epoch, self.count, self.from_start, self.key = epoch, 1, i == 0, key

    def clear(self) -> None:
        self.count = 0

    def whole_epoch(self, next_epoch: int) -> bool:
        """Did the run cover a whole epoch, now that a sample of ``next_epoch`` comes?"""
        return self.count > 0 and self.from_start and next_epoch != self.epoch


class StreamingImages(torch.utils.data.IterableDataset):
    """Endless stream of ``Batch`` for one rank (use ``DataLoader(ds, batch_size=None, num_workers=W)``).

    Args:
        source: ``find_source(...)`` result.
        input_size: (H, W) of the crops.
        batch_size: per-rank batch.
        num_workers: the loader's worker count (needed to number the slots; 0 means one slot per rank).
        state: a ``LoaderState`` to resume from (same rank/worker layout).
        gpu_jpeg: leave JPEG decoding to ``decode_batch`` (CUDA); otherwise workers decode everything.
    """

    def __init__(self, source: Source, input_size: tuple[int, int], batch_size: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1, num_workers: int = 0, scale: tuple[float, float] = (0.2, 1.0),
                 flip_prob: float = 0.5, shuffle_buffer: int = 256, gpu_jpeg: bool = False,
                 state: LoaderState | None = None):
        super().__init__()
        self.source, self.input_size, self.batch_size = source, tuple(input_size), batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.workers = max(num_workers, 1)
        self.num_slots = world_size * self.workers
        self.scale, self.flip_prob, self.shuffle_buffer, self.gpu_jpeg = scale, flip_prob, shuffle_buffer, gpu_jpeg
        if state is not None and state.num_slots != self.num_slots:
            raise ValueError(f"cannot resume the data stream exactly: it was saved with {state.num_slots} slots "
                             f"(ranks x workers), this run has {self.num_slots}")
        self.state = state or LoaderState(self.num_slots)

    def slot_of_worker(self, worker: int) -> int:
        # The loader asks workers in turn starting from worker 0; after k batches the next one was due from
        # worker k % W, so the worker order is rotated to keep the batch sequence of an uninterrupted run.
        return self.rank * self.workers + (worker + self.state.batches) % self.workers

    def __iter__(self) -> Iterator[Batch]:
        info = torch.utils.data.get_worker_info()
        slot = self.slot_of_worker(info.id if info else 0)
        epoch, start = self.state.cursors.get(slot, (0, 0))
        samples = self._samples(slot, epoch, start)
        failing = _FailedRun()
        while True:
            yield self._make_batch(slot, samples, failing)

    def _samples(self, slot: int, epoch: int, start: int) -> Iterator[tuple[int, int, str, bytes | None, str]]:
        while True:
            rng = np.random.default_rng([self.seed, epoch, slot, 1])
            raw = shuffled(slot_stream(self.source, slot, self.num_slots, epoch, self.seed), self.shuffle_buffer, rng)
            n = 0
            for i, (key, data, ext) in enumerate(raw):
                n += 1
                if i >= start:
                    yield epoch, i, key, data, ext
            if n == 0:
                raise DataError(
                    f"data slot {slot} of {self.num_slots} (ranks x loader workers) got no samples in epoch {epoch}: "
                    f"the {len(self.source)} {self.source.kind} units hold fewer samples than there are slots, or "
                    "this slot's units are empty or unreadable; use fewer loader workers (or ranks), or more data")
            epoch, start = epoch + 1, 0

    def _make_batch(self, slot: int, samples: Iterator, failing: _FailedRun) -> Batch:
        pixels, pixel_slots, jpegs, keys, epochs = [], [], [], [], []
        skipped, skipped_keys = 0, []
        cursor = (0, 0)
        while len(keys) < self.batch_size:
            epoch, i, key, data, ext = next(samples)
            if failing.whole_epoch(epoch):  # else the loop would spin over unreadable samples forever
                raise DataError(f"data slot {slot} of {self.num_slots}: all {failing.count} samples of its epoch "
                                f"{failing.epoch} are undecodable and were skipped (the first: {failing.key}); "
                                "it can never fill a batch")
            cursor = (epoch, i + 1)
            try:
                if data is None:
                    data = Path(key).read_bytes()
                size, orient, fmt = _header(data)
                rng = np.random.default_rng([self.seed, epoch, slot, i, 2])
                crop = random_resized_crop(rng, size, self.input_size, self.scale, flip_prob=self.flip_prob)
                if self.gpu_jpeg and fmt == "JPEG":
                    if not _jpeg_complete(data):
                        raise OSError("truncated JPEG (no end-of-image marker)")
                    jpegs.append((len(keys), data, CropParams(**{**crop.__dict__, "orientation": orient})))
                else:
                    pixels.append(decode_crop_cpu(data, crop, self.input_size))
                    pixel_slots.append(len(keys))
            except Exception:  # any undecodable sample: skip, count, go on
                skipped += 1
                skipped_keys.append(key)
                failing.add(epoch, i, key)
                continue
            failing.clear()
            keys.append(key)
            epochs.append(epoch)
        H, W = self.input_size
        stacked = torch.stack(pixels) if pixels else torch.empty(0, 3, H, W, dtype=torch.uint8)
        return Batch(stacked, pixel_slots, jpegs, keys, epochs, slot, cursor, skipped, skipped_keys)


def normalize(x: torch.Tensor) -> torch.Tensor:
    """uint8 or float RGB (B, 3, H, W) -> float32 normalized with the Sapiens mean/std."""
    mean = torch.tensor(MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=x.device).view(1, 3, 1, 1)
    return (x.float() - mean) / std


def decode_batch(batch: Batch, device: torch.device | str, input_size: tuple[int, int]) -> tuple[torch.Tensor, int]:
    """Assemble a normalized float32 (B, 3, H, W) batch on ``device``, decoding JPEG bytes there.

    Returns (images, failed): a JPEG that neither the GPU nor Pillow can decode is dropped from the batch and
    counted in ``failed``.
    """
    device = torch.device(device)
    H, W = input_size
    n = len(batch.keys)
    out = torch.empty(n, 3, H, W, device=device)
    if len(batch.pixel_slots):
        idx = torch.tensor(batch.pixel_slots, device=device)
        out[idx] = normalize(batch.pixels.to(device, non_blocking=True))
    failed: list[int] = []
    if batch.jpegs:
        decoded = decode_jpegs([d for _, d, _ in batch.jpegs], device)
        for (pos, data, crop), img in zip(batch.jpegs, decoded):
            if img is None:
                try:
                    out[pos] = normalize(decode_crop_cpu(data, crop, input_size).to(device)[None])[0]
                except Exception:
                    failed.append(pos)
                continue
            img = upright(img.permute(1, 2, 0), crop.orientation).permute(2, 0, 1)  # (3, H, W) as displayed
            img = img[:, crop.top:crop.top + crop.height, crop.left:crop.left + crop.width]
            img = F.interpolate(img[None].float(), size=(H, W), mode="bicubic", antialias=True, align_corners=False)
            img = img.clamp_(0, 255)
            out[pos] = normalize(img.flip(-1) if crop.flip else img)[0]
    if failed:
        keep = torch.tensor(sorted(set(range(n)) - set(failed)), device=device)
        out = out[keep]
    return out, len(failed)
