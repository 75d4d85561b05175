"""Curation on hand-built cases with a fake detector: person rule, exact and near duplicates, unreadable files,
shards + manifest, resume after a crash; pHash against a float64 DCT written here."""

from __future__ import annotations

import json
import os
import signal
import tarfile

import cv2
import numpy as np
import pytest

from opensapiens.cli.main import main
from opensapiens.curation import CurationConfig, PHashIndex, curate, hamming, phash

# Case -> what the fake detector "sees" as (box as fractions of the image it is given, score).
CASES = {
    "a_person": ((0.1, 0.05, 0.5, 0.95), 0.97),  # 400 px tall image: box 360 px tall -> kept
    "d_low_score": ((0.1, 0.05, 0.5, 0.95), 0.85),  # confident enough? no -> no_person
    "f_small_box": ((0.1, 0.1, 0.3, 0.6), 0.99),  # 200 px tall -> person_too_small
    "h_wide_person": ((0.0, 0.0, 0.7, 0.1), 0.95),  # 350 x 40 px: long side passes, short side fails
}


def picture(seed: int, h: int = 400, w: int = 500, code: int = 0) -> np.ndarray:
    """Smooth random colours, with a solid tag block (top-left) that tells the fake detector which case it is."""
    rng = np.random.default_rng(seed)
    img = cv2.resize(rng.integers(0, 255, (6, 6, 3), dtype=np.uint8), (w, h), interpolation=cv2.INTER_CUBIC)
    img[:48, :48] = (code * 40, 0, 255 - code * 40)
    return img


class FakeDetector:
    """Boxes from the tag block's red value; counts calls and can fail after ``fail_after`` calls (a crash)."""

    codes = {i + 1: name for i, name in enumerate(CASES)}

    def __init__(self, fail_after: int | None = None):
        self.calls, self.fail_after = 0, fail_after

    def __call__(self, image: np.ndarray):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("simulated crash")
        code = int(round(image[:16, :16, 0].mean() / 40))
        if code not in self.codes:
            return np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
        (x1, y1, x2, y2), score = CASES[self.codes[code]]
        H, W = image.shape[:2]
        return np.array([[x1 * W, y1 * H, x2 * W, y2 * H]], np.float32), np.array([score], np.float32)


def save_jpg(path, img, quality=95):
    cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])


@pytest.fixture
def collection(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for code, name in enumerate(CASES, start=1):
        save_jpg(src / f"{name}.jpg", picture(code, code=code))
    (src / "b_exact_copy.jpg").write_bytes((src / "a_person.jpg").read_bytes())
    near = cv2.resize(picture(1, code=1), (450, 360), interpolation=cv2.INTER_AREA)  # resized + recompressed
    save_jpg(src / "c_near_copy.jpg", near, quality=70)
    save_jpg(src / "e_tiny.jpg", picture(5, 200, 250, code=1))  # would be a person, but the image is 250 px wide
    (src / "g_broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    save_jpg(src / "i_no_detection.jpg", picture(9, code=0))
    return src


EXPECTED = {"a_person": "kept", "b_exact_copy": "exact_duplicate", "c_near_copy": "near_duplicate",
            "d_low_score": "no_person", "e_tiny": "too_small", "f_small_box": "person_too_small",
            "g_broken": "unreadable", "h_wide_person": "kept", "i_no_detection": "no_person"}


def manifest(out) -> dict[str, dict]:
    recs = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    by_name = {r["path"].rsplit("/", 1)[-1].split(".")[0]: r for r in recs}
    assert len(by_name) == len(recs), "an image recorded twice"
    return by_name


def shard_members(out) -> list[str]:
    names = []
    for p in sorted(out.glob("shard-*.tar")):
        with tarfile.open(p) as tf:
            names += tf.getnames()
    return names


def test_keeps_and_drops_hand_built_cases(collection, tmp_path):
    out = tmp_path / "out"
    report = curate(collection, out, FakeDetector(), CurationConfig(workers=0, batch_size=3, shard_max_count=1))
    recs = manifest(out)
    assert {k: r["reason"] for k, r in recs.items()} == EXPECTED
    assert recs["b_exact_copy"]["duplicate_of"].endswith("a_person.jpg")
    assert recs["c_near_copy"]["duplicate_of"].endswith("a_person.jpg") and recs["c_near_copy"]["distance"] <= 6
    assert report.kept == 2 and sum(report.dropped.values()) == 7 and report.dropped["no_person"] == 2
    # Per-image stats, and boxes in ORIGINAL pixels.
    a = recs["a_person"]
    assert (a["width"], a["height"]) == (500, 400) and len(a["phash"]) == 16 and len(a["sha256"]) == 64
    assert a["detections"][0][:4] == pytest.approx([50, 20, 250, 380], abs=0.1)
    # Shards hold exactly the kept images (original bytes) with their json.
    members = shard_members(out)
    assert sorted(members) == sorted(f"{recs[k]['key']}{ext}" for k in ("a_person", "h_wide_person")
                                     for ext in (".jpg", ".json"))
    with tarfile.open(out / recs["a_person"]["shard"]) as tf:
        data = tf.extractfile(recs["a_person"]["key"] + ".jpg").read()
    assert data == (collection / "a_person.jpg").read_bytes()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["kept"] == 2 and summary["dropped"]["near_duplicate"] == 1


def test_box_side_reading_and_detector_downscale(collection, tmp_path):
    # The shorter box side must exceed 300 px: the 350 x 40 px "person" no longer qualifies.
    out = tmp_path / "short"
    curate(collection, out, FakeDetector(), CurationConfig(workers=0, box_side="short"))
    assert manifest(out)["h_wide_person"]["reason"] == "person_too_small"
    # The detector sees images at most 250 px on the long side; boxes are scaled back before the 300 px rule.
    out = tmp_path / "small"
    detector = FakeDetector()
    curate(collection, out, detector, CurationConfig(workers=0, detect_max_side=250))
    recs = manifest(out)
    assert recs["a_person"]["reason"] == "kept"
    assert recs["a_person"]["detections"][0][3] == pytest.approx(380, abs=1.5)


def test_resume_after_a_crash(collection, tmp_path):
    clean, crashed = tmp_path / "clean", tmp_path / "crashed"
    cfg = CurationConfig(workers=0, batch_size=2, shard_max_count=1)
    curate(collection, clean, FakeDetector(), cfg)
    with pytest.raises(RuntimeError, match="simulated crash"):
        curate(collection, crashed, FakeDetector(fail_after=3), cfg)
    done_before = manifest(crashed)
    # The crash cut a_person's shard short, but its copies were already recorded as its duplicates: those
    # decisions must be redone (else a_person would now be dropped as a copy of its own copy).
    assert "a_person" not in done_before and 0 < len(done_before) < len(EXPECTED)
    redo = [k for k, r in done_before.items() if r.get("duplicate_of", "").endswith("a_person.jpg")]
    assert redo
    report = curate(collection, crashed, FakeDetector(), cfg)
    recs = manifest(crashed)
    assert {k: r["reason"] for k, r in recs.items()} == EXPECTED
    assert report.processed == len(EXPECTED) - len(done_before) + len(redo)  # the others are not redone
    assert sorted(shard_members(crashed)) == sorted(shard_members(clean))  # each kept image exactly once
    assert not list(crashed.glob(".*tmp"))


def test_a_manifest_line_cut_by_a_crash_is_redone_once_not_joined_to_the_next(collection, tmp_path):
    """The cut last line had stayed in place; the resumed run's first record joined it, unreadable, so a third run
    kept that image into a second shard."""
    clean, out = tmp_path / "clean", tmp_path / "cut"
    cfg = CurationConfig(workers=0, batch_size=2, shard_max_count=1)
    curate(collection, clean, FakeDetector(), cfg)
    curate(collection, out, FakeDetector(), cfg)
    lines = (out / "manifest.jsonl").read_text().splitlines()
    last = json.loads(lines[-1])
    (out / "manifest.jsonl").write_text("".join(line + "\n" for line in lines[:-1]) + lines[-1][: len(lines[-1]) // 2])
    for shard in {last.get("shard")} - {None}:  # its image was kept into a shard the crash left unfinished
        (out / shard).unlink()
    curate(collection, out, FakeDetector(), cfg)
    assert curate(collection, out, FakeDetector(), cfg).processed == 0  # everything done, nothing redone
    assert sorted(shard_members(out)) == sorted(shard_members(clean))  # each kept image exactly once
    assert {k: r["reason"] for k, r in manifest(out).items()} == EXPECTED


def test_a_resume_naming_the_source_another_way_redoes_nothing_and_the_summary_lists_every_shard(
        collection, tmp_path, monkeypatch):
    monkeypatch.chdir(collection.parent)
    out = tmp_path / "out"
    cfg = CurationConfig(workers=0, batch_size=2, shard_max_count=1)
    with pytest.raises(RuntimeError, match="simulated crash"):
        curate("src", out, FakeDetector(fail_after=3), cfg)  # relative paths in the manifest
    report = curate(collection.resolve(), out, FakeDetector(), cfg)  # the same images, absolute
    assert report.processed < len(EXPECTED)
    assert curate(collection.resolve(), out, FakeDetector(), cfg).processed == 0
    assert {k: r["reason"] for k, r in manifest(out).items()} == EXPECTED  # each image recorded once
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(summary["shards"]) == sorted(p.name for p in out.glob("shard-*.tar")) and len(summary["shards"]) == 2


def test_sigterm_finishes_the_batch_and_the_open_shard_and_a_rerun_completes(collection, tmp_path):
    clean, out = tmp_path / "clean", tmp_path / "out"
    cfg = CurationConfig(workers=0, batch_size=2, shard_max_count=2)
    curate(collection, clean, FakeDetector(), cfg)

    class Signalling(FakeDetector):
        def __call__(self, image):
            if self.calls == 0:  # during the first batch's detections
                os.kill(os.getpid(), signal.SIGTERM)
            return super().__call__(image)

    report = curate(collection, out, Signalling(), cfg)
    assert report.stopped and report.processed == 2 and report.shards == ["shard-000000.tar"]
    assert sorted(manifest(out)) == ["a_person", "b_exact_copy"]  # the batch's records, its kept image's shard
    assert not list(out.glob(".*tmp"))
    rest = curate(collection, out, FakeDetector(), cfg)
    assert not rest.stopped and rest.processed == len(EXPECTED) - 2
    assert {k: r["reason"] for k, r in manifest(out).items()} == EXPECTED
    assert sorted(shard_members(out)) == sorted(shard_members(clean))


def test_a_signal_during_the_last_batch_stopped_nothing(collection, tmp_path):
    class Signalling(FakeDetector):
        def __call__(self, image):
            if self.calls == 0:
                os.kill(os.getpid(), signal.SIGTERM)
            return super().__call__(image)

    report = curate(collection, tmp_path / "out", Signalling(), CurationConfig(workers=0, batch_size=len(EXPECTED)))
    assert not report.stopped and report.processed == len(EXPECTED)


def test_a_resume_from_another_directory_with_a_relative_source_redoes_nothing(collection, tmp_path, monkeypatch):
    cfg = CurationConfig(workers=0, batch_size=2, shard_max_count=2)
    monkeypatch.chdir(tmp_path)
    first = curate("src", "out", FakeDetector(), cfg)
    assert first.processed == len(EXPECTED)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    again = curate("../src", "../out", FakeDetector(), cfg)
    assert again.processed == 0 and again.kept == first.kept
    assert {k: r["reason"] for k, r in manifest(tmp_path / "out").items()} == EXPECTED


@pytest.mark.parametrize("option, field", [("--batch-size", "batch_size"), ("--shard-size", "shard_max_count"),
                                           ("--workers", "workers")])
def test_cli_refuses_counts_below_their_least_value(collection, tmp_path, monkeypatch, capsys, option, field):
    import opensapiens.inference.detector as det

    monkeypatch.setattr(det, "PersonDetector", lambda *a, **k: FakeDetector())
    bad = "-1" if option == "--workers" else "0"
    assert main(["curate", str(collection), "--out", str(tmp_path / "o"), option, bad, "--device", "cpu"]) == 2
    assert f"{field} must be at least" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_cli_with_two_workers(collection, tmp_path, monkeypatch, capsys):
    import opensapiens.inference.detector as det

    monkeypatch.setattr(det, "PersonDetector", lambda *a, **k: FakeDetector())
    out = tmp_path / "cli"
    assert main(["curate", str(collection), "--out", str(out), "--workers", "2", "--device", "cpu"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["kept"] == 2 and report["dropped"]["exact_duplicate"] == 1
    assert {k: r["reason"] for k, r in manifest(out).items()} == EXPECTED


@pytest.mark.parametrize("flag", ["--detector-weights", "--detector"])
def test_cli_passes_the_detector_weights_under_both_names_as_predict_does(collection, tmp_path, monkeypatch, capsys,
                                                                         flag):
    import opensapiens.inference.detector as det

    built = []
    monkeypatch.setattr(det, "PersonDetector", lambda *a, **k: built.append((a, k)) or FakeDetector())
    args = ["curate", str(collection), "--out", str(tmp_path / "o"), "--workers", "0", "--device", "cpu"]
    assert main([*args, "--detector-arch", "fasterrcnn_mobilenet_v3_large_fpn", flag, "w.pth"]) == 0
    assert main([*args, flag, "torchvision", "--out", str(tmp_path / "o2")]) == 0
    ((weights,), kwargs), ((default,), _) = built
    assert weights == "w.pth" and kwargs["arch"] == "fasterrcnn_mobilenet_v3_large_fpn" and default is None


def test_cli_reports_a_failed_detector_download_in_one_line(collection, tmp_path, monkeypatch, capsys):
    import opensapiens.inference.detector as det

    def offline(*a, **k):
        raise ConnectionError("could not download the COCO weights ... pass its path with --detector-weights")

    monkeypatch.setattr(det, "PersonDetector", offline)
    assert main(["curate", str(collection), "--out", str(tmp_path / "o"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: could not download") and "Traceback" not in err


def test_cli_names_a_missing_source_before_loading_the_detector(tmp_path, monkeypatch, capsys):
    import opensapiens.inference.detector as det

    def no_detector(*a, **k):
        raise AssertionError("the detector (a download on first use) was built for a source that does not exist")

    monkeypatch.setattr(det, "PersonDetector", no_detector)
    assert main(["curate", str(tmp_path / "missing"), "--out", str(tmp_path / "out"), "--device", "cpu"]) == 2
    assert f"{tmp_path / 'missing'}' does not exist" in capsys.readouterr().err
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"\x00\x00\x00\x18ftypmp42")
    assert main(["curate", str(video), "--out", str(tmp_path / "out"), "--device", "cpu"]) == 2
    assert f"{video}: no images to curate (" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_files_that_are_not_images_are_passed_over_and_told(collection, tmp_path, monkeypatch, capsys):
    import opensapiens.inference.detector as det

    monkeypatch.setattr(det, "PersonDetector", lambda *a, **k: FakeDetector())
    (collection / "clip.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42")
    out = tmp_path / "out"
    assert main(["curate", str(collection), "--out", str(out), "--workers", "0", "--device", "cpu"]) == 0
    assert "passing over 1 file(s) that are not images (videos, ...), such as" in capsys.readouterr().err
    assert {k: r["reason"] for k, r in manifest(out).items()} == EXPECTED


def test_a_strip_too_thin_to_downscale_is_curated_and_a_failing_image_is_recorded(tmp_path, monkeypatch, capsys):
    """A 3000 x 1 px strip, downscaled for the detector, keeps a 1 px side (it used to round to 0 and end the run);
    an image whose hashing fails is recorded as unreadable, by the library and the CLI alike, and the run goes on."""
    import importlib

    import opensapiens.inference.detector as det

    C = importlib.import_module("opensapiens.curation.curate")  # the module, not the function of the same name

    src = tmp_path / "src"
    src.mkdir()
    save_jpg(src / "a_person.jpg", picture(1, code=1))
    cv2.imwrite(str(src / "strip.png"), np.zeros((3000, 1, 3), np.uint8))  # tag code 0: no detection
    seen, detector = [], FakeDetector()
    curate(src, tmp_path / "out", lambda im: seen.append(im.shape) or detector(im), CurationConfig(workers=0))
    recs = manifest(tmp_path / "out")
    assert recs["strip"]["reason"] == "no_person" and (recs["strip"]["width"], recs["strip"]["height"]) == (1, 3000)
    assert recs["a_person"]["reason"] == "kept" and (1333, 1, 3) in seen

    real_phash = C.phash
    monkeypatch.setattr(C, "phash", lambda im: real_phash(im) if im.shape[1] > 1 else 1 // 0)
    report = curate(src, tmp_path / "out2", FakeDetector(), CurationConfig(workers=0))
    recs = manifest(tmp_path / "out2")
    assert recs["strip"]["reason"] == "unreadable" and "ZeroDivisionError" in recs["strip"]["error"]
    assert report.kept == 1 and report.dropped["unreadable"] == 1

    monkeypatch.setattr(det, "PersonDetector", lambda *a, **k: FakeDetector())
    assert main(["curate", str(src), "--out", str(tmp_path / "cli"), "--workers", "0", "--device", "cpu"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out.strip().splitlines()[-1])["dropped"]["unreadable"] == 1 and "Traceback" not in err


# --------------------------------------------------------------------------------------------------------- pHash


def reference_phash(img: np.ndarray) -> int:
    """Spec: luma (ITU-R 601) -> 32x32 area resample -> 2-D DCT-II (explicit float64 sums) -> 8x8 low -> > median."""
    gray = img.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    gray = cv2.resize(gray.round().astype(np.float32), (32, 32), interpolation=cv2.INTER_AREA).astype(np.float64)
    n = np.arange(32)
    dct = np.array([[np.sum(gray * np.outer(np.cos(np.pi * (2 * n + 1) * u / 64), np.cos(np.pi * (2 * n + 1) * v / 64)))
                     for v in range(8)] for u in range(8)])
    bits = (dct > np.median(dct)).ravel()
    return int("".join("1" if b else "0" for b in bits), 2)


def test_phash_matches_reference_and_separates_near_from_different():
    a, b = picture(1), picture(2)
    for img in (a, b):
        assert hamming(phash(img), reference_phash(img)) <= 1  # a coefficient at the median may flip
    re = cv2.imdecode(cv2.imencode(".jpg", cv2.resize(a, (300, 240)), [cv2.IMWRITE_JPEG_QUALITY, 60])[1], 1)
    assert hamming(phash(a), phash(re)) <= 4
    assert hamming(phash(a), phash(b)) > 16


def test_phash_index_equals_brute_force():
    rng = np.random.default_rng(0)
    stored = [int(x) for x in rng.integers(0, 2**63, 2000, dtype=np.int64)]
    index = PHashIndex(radius=6)
    for i, h in enumerate(stored):
        index.add(h, i)
    queries = [stored[i] ^ int(sum(1 << int(b) for b in rng.choice(64, k, replace=False)))
               for i, k in zip(rng.integers(0, 2000, 300), rng.integers(0, 10, 300))]
    for q in queries:
        dists = [hamming(q, h) for h in stored]
        best = min(range(len(stored)), key=lambda i: (dists[i], i))
        got = index.query(q)
        assert got == ((best, dists[best]) if dists[best] <= 6 else None)
