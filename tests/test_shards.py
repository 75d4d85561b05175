"""Streaming pretraining data: every sample once per epoch across ranks x workers, sequential shard reads, corrupt
samples skipped and counted, exact resume, and the device-side (nvJPEG path) decode against Pillow."""

from __future__ import annotations

import io
import math
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from opensapiens.data import shards as S
from opensapiens.data.labels import DataError
from opensapiens.data.shard_writer import ShardWriter
from opensapiens.data.shards import (
    LoaderState,
    StreamingImages,
    decode_batch,
    find_source,
    random_resized_crop,
)


def encode(a: np.ndarray, fmt: str = "JPEG", exif_orientation: int | None = None) -> bytes:
    buf = io.BytesIO()
    kw = {}
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        kw["exif"] = exif
    Image.fromarray(a).save(buf, fmt, quality=95, **kw) if fmt == "JPEG" else Image.fromarray(a).save(buf, fmt)
    return buf.getvalue()


def write_shards(out, sizes: list[int], rng=None) -> list[str]:
    """Shards holding sizes[i] images each; returns the expected sample keys."""
    rng = rng or np.random.default_rng(0)
    keys = []
    for s, n in enumerate(sizes):
        with ShardWriter(out, max_count=n, start_index=s) as w:
            for j in range(n):
                key = f"s{s}i{j}"
                w.write(key, encode(rng.integers(0, 255, (24, 20, 3), dtype=np.uint8)), ".jpg", {"n": j})
                keys.append(f"shard-{s:06d}/{key}")
    return keys


def epoch_keys(source, rank: int, world: int, workers: int, epochs: int = 2) -> list[tuple[str, int]]:
    """(key, epoch) of every sample one rank's DataLoader delivers until all its workers have passed ``epochs``."""
    ds = StreamingImages(source, (16, 16), 3, seed=7, rank=rank, world_size=world, num_workers=workers,
                         shuffle_buffer=3)
    out, done = [], set()
    for batch in torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers,
                                             multiprocessing_context="forkserver"):
        out += [(k, e) for k, e in zip(batch.keys, batch.epochs) if e < epochs]
        if min(batch.epochs) >= epochs:
            done.add(batch.slot)
        if len(done) == max(workers, 1):
            return out
    raise AssertionError("unreachable")


@pytest.mark.parametrize("layout", ["many_shards", "few_shards", "folder"])
def test_each_sample_once_per_epoch_over_2_ranks_x_2_workers(tmp_path, layout):
    if layout == "folder":
        rng = np.random.default_rng(1)
        expected = []
        for i in range(11):
            (tmp_path / f"im{i}.png").write_bytes(encode(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8), "PNG"))
            expected.append(str(tmp_path / f"im{i}.png"))
    else:
        # 7 shards >= 4 slots: whole shards per slot; 2 shards < 4 slots: members striped over the slots.
        expected = write_shards(tmp_path, [3, 1, 4, 2, 3, 2, 2] if layout == "many_shards" else [6, 5])
    source = find_source(tmp_path)
    seen = epoch_keys(source, 0, 2, 2) + epoch_keys(source, 1, 2, 2)
    for epoch in (0, 1):
        counts = Counter(k for k, e in seen if e == epoch)
        assert set(counts) == set(expected), "a gap"  # every sample ...
        assert max(counts.values()) == 1, "a duplicate"  # ... exactly once


def test_whole_shards_are_read_once_per_epoch_sequentially(tmp_path, monkeypatch):
    write_shards(tmp_path, [2, 2, 2, 2, 2, 2])
    source = find_source(tmp_path)
    opened: list[str] = []
    real_open = S.tarfile.open

    def recording_open(path, mode="r", *a, **kw):
        opened.append((str(path), mode))
        return real_open(path, mode, *a, **kw)

    monkeypatch.setattr(S.tarfile, "open", recording_open)
    for slot in range(4):
        list(S.slot_stream(source, slot, 4, epoch=0, seed=3))
    assert sorted(p for p, _ in opened) == sorted(str(u) for u in source.units)  # each shard once
    assert {m for _, m in opened} == {"r|*"}  # stream mode: no seeking


def test_corrupt_samples_are_skipped_and_counted(tmp_path):
    rng = np.random.default_rng(2)
    good = encode(rng.integers(0, 255, (30, 30, 3), dtype=np.uint8))
    with ShardWriter(tmp_path, max_count=100) as w:
        w.write("ok1", good, ".jpg")
        w.write("truncated", good[: len(good) // 2], ".jpg")
        w.write("garbage", b"\xff\xd8 definitely not a jpeg \xff\xd9", ".jpg")
        w.write("ok2", encode(rng.integers(0, 255, (30, 30, 3), dtype=np.uint8), "PNG"), ".png")
        w.write("ok3", good, ".jpg")
    source = find_source(tmp_path)
    for gpu_jpeg in (False, True):  # the nvJPEG path runs on the CPU device here
        ds = StreamingImages(source, (16, 16), 3, shuffle_buffer=1, gpu_jpeg=gpu_jpeg)
        batch = next(iter(ds))
        images, failed = decode_batch(batch, "cpu", (16, 16))
        assert sorted(k.split("/")[1] for k in batch.keys) == ["ok1", "ok2", "ok3"]
        assert batch.skipped + failed == 2 and images.shape == (3, 3, 16, 16)
        assert sorted(k.split("/")[1] for k in batch.skipped_keys) == ["garbage", "truncated"]


def test_resumed_stream_continues_exactly(tmp_path):
    write_shards(tmp_path, [3, 2, 4, 3, 2])
    source = find_source(tmp_path)

    def run(state, n):
        ds = StreamingImages(source, (16, 16), 2, seed=5, num_workers=2, shuffle_buffer=3, state=state)
        out = []
        for batch in torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2,
                                                 multiprocessing_context="forkserver"):
            out.append(batch)
            if len(out) == n:
                return out

    full = run(None, 12)  # 14 samples in 7-sample epochs per worker: crosses epochs
    state = LoaderState(2)
    for b in full[:5]:  # an odd count: the resumed loader must start with the other worker
        state.update(b)
    state = LoaderState.from_dict(state.to_dict())  # through the checkpoint format
    resumed = run(state, 7)
    for a, b in zip(full[5:], resumed):
        assert a.keys == b.keys and torch.equal(a.pixels, b.pixels)


@pytest.mark.parametrize("orientation", [1, 6, 8])
def test_device_decode_matches_pillow(orientation):
    """The nvJPEG path (EXIF orientation, crop, bicubic resize, flip in torch) against Pillow's on the same crop."""
    y, x = np.mgrid[0:60, 0:90]
    a = np.stack([x * 2.5, y * 4.0, (x + y) * 1.5], -1).clip(0, 255).astype(np.uint8)
    data = encode(a, exif_orientation=orientation)
    size, orient, fmt = S._header(data)
    assert fmt == "JPEG" and orient == orientation and size == ((90, 60) if orientation >= 5 else (60, 90))
    rng = np.random.default_rng(0)
    for _ in range(4):
        crop = random_resized_crop(rng, size, (32, 32), flip_prob=0.5)
        cpu = S.decode_crop_cpu(data, crop, (32, 32)).float()  # Pillow
        batch = S.Batch(torch.empty(0, 3, 32, 32, dtype=torch.uint8), [], [(0, data, S.CropParams(
            crop.top, crop.left, crop.height, crop.width, crop.flip, orient))], ["k"], [0], 0, (0, 1))
        dev, failed = decode_batch(batch, "cpu", (32, 32))
        dev = dev[0] * torch.tensor(S.STD).view(3, 1, 1) + torch.tensor(S.MEAN).view(3, 1, 1)
        assert failed == 0 and (dev - cpu).abs().mean() < 3.0  # resampling filters differ slightly


def test_a_16_bit_gray_png_is_scaled_as_read_image_scales_it_not_clipped_white():
    """Pillow's convert("RGB") clips 16-bit gray to 255 almost everywhere; a sample is scaled round(v * 255 / 65535)."""
    ramp = np.tile(np.linspace(0, 65535, 48).round().astype(np.uint16), (40, 1))  # (40, 48)
    buf = io.BytesIO()
    Image.fromarray(ramp).save(buf, format="PNG")
    assert Image.open(io.BytesIO(buf.getvalue())).mode.startswith("I")
    crop = S.CropParams(0, 0, 40, 48, False, 1)
    got = S.decode_crop_cpu(buf.getvalue(), crop, (40, 48))  # the whole image at its own size: no resampling
    want = np.floor(ramp.astype(np.float64) * 255 / 65535 + 0.5).astype(np.uint8)
    assert got.shape == (3, 40, 48) and all(np.abs(got[c].numpy().astype(int) - want).max() <= 1 for c in range(3))


def test_random_resized_crop_stays_in_range():
    rng = np.random.default_rng(0)
    for size in [(100, 100), (60, 200), (300, 40)]:
        for _ in range(200):
            c = random_resized_crop(rng, size, (64, 64))
            assert c.top >= 0 and c.top + c.height <= size[0] and c.left >= 0 and c.left + c.width <= size[1]
            area = c.height * c.width / (size[0] * size[1])
            ratio = c.width / c.height
            fallback = c.height in (size[0],) or c.width in (size[1],)
            assert fallback or (0.2 - 0.02 <= area <= 1.0 and math.log(3 / 4) - 0.05 <= math.log(ratio)
                                <= math.log(4 / 3) + 0.05)


def test_a_slot_whose_samples_are_all_undecodable_raises_instead_of_spinning(tmp_path, monkeypatch):
    for i in range(3):
        (tmp_path / f"bad{i}.jpg").write_bytes(b"\xff\xd8 not a jpeg \xff\xd9")
    ds = StreamingImages(find_source(tmp_path), (16, 16), 2)
    real, draws = ds._samples, []

    def bounded(*args):  # a stream that spins would draw forever: stop it after 5 epochs' worth
        for sample in real(*args):
            draws.append(sample)
            assert len(draws) <= 15, "the stream spins over undecodable samples"
            yield sample

    monkeypatch.setattr(ds, "_samples", bounded)
    with pytest.raises(DataError, match=r"slot 0 of 1: all 3 samples of its epoch 0 are undecodable"):
        next(iter(ds))  # a ValueError: the CLI reports it as an error, no traceback
    # One decodable sample per epoch is enough to go on.
    (tmp_path / "good.png").write_bytes(encode(np.zeros((20, 20, 3), np.uint8), "PNG"))
    batch = next(iter(StreamingImages(find_source(tmp_path), (16, 16), 2)))
    assert [k.rsplit("/", 1)[1] for k in batch.keys] == ["good.png", "good.png"] and batch.skipped >= 3


def test_jpegs_with_bytes_after_the_end_marker_are_kept_and_truncated_ones_still_skipped(tmp_path):
    rng = np.random.default_rng(4)
    photo = encode(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8))
    thumb = encode(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8))
    motion = photo + b"\x00\x00\x00\x18ftypmp42" + bytes(range(256))  # a motion photo's video after the JPEG
    app15 = b"\xff\xef" + (len(thumb) + 2).to_bytes(2, "big") + thumb  # a header segment holding a whole JPEG
    cut = (photo[:2] + app15 + photo[2:])[: len(app15) + len(photo) // 2]  # its own end marker is the thumbnail's
    Image.open(io.BytesIO(motion)).load()  # Pillow reads the first as a whole image ...
    with pytest.raises(OSError):
        Image.open(io.BytesIO(cut)).load()  # ... and not the second
    assert S._jpeg_complete(motion) and S._jpeg_complete(photo + b"\x00" * 7)
    assert not S._jpeg_complete(cut) and not S._jpeg_complete(photo[:-2]) and not S._jpeg_complete(photo[:20])
    for key, data in (("motion", motion), ("cut", cut), ("plain", photo)):
        (tmp_path / f"{key}.jpg").write_bytes(data)
    batch = next(iter(StreamingImages(find_source(tmp_path), (16, 16), 2, shuffle_buffer=1, gpu_jpeg=True)))
    assert sorted(k.rsplit("/", 1)[1] for k in batch.keys) == ["motion.jpg", "plain.jpg"]
    assert [k.rsplit("/", 1)[1] for k in batch.skipped_keys] == ["cut.jpg"]
    images, failed = decode_batch(batch, "cpu", (16, 16))
    assert failed == 0 and images.shape == (2, 3, 16, 16)


@pytest.mark.parametrize("size", [-1, 0, 1])
def test_a_shuffle_buffer_of_at_most_one_keeps_the_order(size):
    assert list(S.shuffled(iter(range(7)), size, np.random.default_rng(0))) == list(range(7))


def test_fewer_samples_than_slots_says_to_use_fewer_workers(tmp_path):
    for i in range(3):
        (tmp_path / f"im{i}.png").write_bytes(encode(np.zeros((20, 20, 3), np.uint8), "PNG"))
    ds = StreamingImages(find_source(tmp_path), (16, 16), 2, num_workers=4)
    assert [len(list(S.slot_stream(ds.source, s, 4, 0, 0))) for s in range(4)] == [1, 1, 1, 0]
    with pytest.raises(DataError, match=r"slot 3 of 4 .*fewer samples than there are slots.*fewer loader workers"):
        next(ds._samples(3, 0, 0))


def test_a_shard_cut_short_counts_its_unreadable_rest_as_a_skipped_sample(tmp_path):
    rng = np.random.default_rng(4)
    with ShardWriter(tmp_path, max_count=100) as w:
        for i in range(4):
            w.write(f"im{i}", encode(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)), ".jpg")
    (shard,) = tmp_path.glob("*.tar")
    data = shard.read_bytes()
    cut = data.index(b"im2.jpg") + 512 + 100  # inside the third image's data
    shard.write_bytes(data[:cut])
    ds = StreamingImages(find_source(shard), (16, 16), 2, shuffle_buffer=1)
    with pytest.warns(UserWarning, match="stopped reading"):
        batches = iter(ds)
        first, second = next(batches), next(batches)  # the second batch wraps into the next epoch
    assert [k.split("/")[1] for k in first.keys] == ["im0", "im1"]
    assert second.skipped == 1 and second.skipped_keys == [f"{shard.stem}/(unreadable rest)"]


def test_a_tar_glob_that_matches_nothing_is_named_and_a_shard_given_twice_is_read_once(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no tar shards match .*nowhere/\*\.tar"):
        find_source(str(tmp_path / "nowhere" / "*.tar"))
    write_shards(tmp_path, [2, 3])
    a, b = sorted(tmp_path.glob("*.tar"))
    assert find_source([a, b, str(a), tmp_path / ".." / tmp_path.name / a.name]).units == (a, b)
