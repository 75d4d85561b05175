"""Synthetic datasets on disk: formats readable by standard tools, byte-reproducible, resumable; the training source."""

from __future__ import annotations

import hashlib
import json
import os

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from opensapiens.cli.main import main
from opensapiens.synth import SYNTH_VAL, SyntheticHumans, write_dataset


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _digests(root) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_files_follow_the_documented_formats(tmp_path):
    out = tmp_path / "ds"
    ann = write_dataset(out, 4, 96, 72, seed=5, batch_size=3, progress=False)
    coco = COCO(str(ann))  # pycocotools reads it
    assert len(coco.getImgIds()) == 4 and coco.getAnnIds()
    for img in coco.dataset["images"]:
        name = img["file_name"][:-4]
        rgb = np.asarray(Image.open(out / "images" / img["file_name"]))
        seg = np.asarray(Image.open(out / "seg" / f"{name}.png"))
        inst = np.asarray(Image.open(out / "masks" / f"{name}.png"))
        depth = np.load(out / "depths" / f"{name}.npy")
        normal = np.load(out / "normals" / f"{name}.npy")
        assert rgb.shape == (96, 72, 3) and rgb.dtype == np.uint8
        assert seg.shape == inst.shape == depth.shape == (96, 72) and seg.dtype == inst.dtype == np.uint8
        assert depth.dtype == normal.dtype == np.float32 and normal.shape == (96, 72, 3)
        assert seg.max() < 28 and ((seg > 0) == (inst > 0)).all() and ((depth > 0) == (inst > 0)).all()
        assert {"fx", "fy", "cx", "cy"} <= set(img)
        for a in coco.loadAnns(coco.getAnnIds(imgIds=img["id"])):
            m = inst == a["instance_id"]
            assert (mask_utils.decode(a["segmentation"]) == m).all()
            assert a["area"] == m.sum() > 0 and a["category_id"] == 1 and a["iscrowd"] == 0
            x, y, w, h = a["bbox"]
            ys, xs = np.nonzero(m)
            assert (x, y, w, h) == (xs.min() - 0.5, ys.min() - 0.5, xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
            kp = np.asarray(a["keypoints"]).reshape(308, 3)
            assert set(np.unique(kp[:, 2])) <= {0, 1, 2} and a["num_keypoints"] == (kp[:, 2] > 0).sum()
            assert len(a["keypoints_3d"]) == 308 * 3
    assert len(coco.dataset["categories"][0]["keypoints"]) == 308
    # OpenCV reads the label maps as single-channel images
    assert cv2.imread(str(out / "seg" / "000000.png"), cv2.IMREAD_UNCHANGED).ndim == 2


def test_same_seed_same_bytes_and_resume(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    write_dataset(a, 5, 64, 48, seed=9, batch_size=5, progress=False)
    write_dataset(b, 5, 64, 48, seed=9, batch_size=2, workers=1, progress=False)
    assert _digests(a) == _digests(b)
    write_dataset(c, 5, 64, 48, seed=10, progress=False)
    assert _digests(c)["images/000001.png"] != _digests(a)["images/000001.png"]

    # resume: a lost image is re-rendered identically, finished ones are not touched
    before = _digests(a)
    (a / "depths" / "000003.npy").unlink()
    (a / "annotations.json").unlink()
    stamp = os.stat(a / "images" / "000000.png").st_mtime_ns
    write_dataset(a, 5, 64, 48, seed=9, progress=False)
    assert _digests(a) == before
    assert os.stat(a / "images" / "000000.png").st_mtime_ns == stamp
    assert not list(a.rglob("*.tmp*"))
    with pytest.raises(ValueError, match="other settings"):
        write_dataset(a, 5, 64, 48, seed=11, progress=False)


def test_cli(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["synth", "--n", "2", "--size", "64x48", "--seed", "1", "--out", str(out)]) == 0
    assert json.loads((out / "annotations.json").read_text())["info"]["seed"] == 1
    with pytest.raises(SystemExit):
        main(["synth", "--preset", "synth-val", "--n", "5", "--out", str(out)])
    with pytest.raises(SystemExit):
        main(["synth", "--size", "64by48", "--out", str(out)])
    capsys.readouterr()
    for bad in ("0", "-2"):
        with pytest.raises(SystemExit):
            main(["synth", "--batch-size", bad, "--out", str(out)])
        assert "--batch-size" in capsys.readouterr().err
    for args, named in ((["--n", "0"], "need n >= 1"), (["--size", "8x8"], "at least 16x16"),
                        (["--backgrounds", str(tmp_path / "none")], "does not exist")):  # error lines, no traceback
        assert main(["synth", *args, "--out", str(tmp_path / "bad")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and named in err, err


def test_training_source_batches():
    source = SyntheticHumans(64, 48, batch_size=2, seed=4)
    first = source.batch(0)
    assert first.image.shape == (2, 3, 64, 48) and first.image.dtype == torch.uint8
    assert first.keypoints.shape == (2, 4, 308, 3) and first.normal.shape == (2, 3, 64, 48)
    assert torch.equal(next(iter(source)).depth, first.depth)
    assert not torch.equal(source.batch(1).image, first.image)
    with pytest.raises(ValueError, match="synth-val"):
        SyntheticHumans(64, 48, seed=SYNTH_VAL.seed)


def test_background_folder_skips_bad_files(tmp_path):
    folder = tmp_path / "bg"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(folder / "a.png")
    Image.fromarray(np.full((30, 30, 3), 200, np.uint8)).save(folder / "b.jpg")
    (folder / "broken.jpg").write_bytes(b"not an image")
    with pytest.warns(UserWarning, match="broken.jpg"):
        write_dataset(tmp_path / "ds", 6, 64, 48, seed=2, backgrounds=folder, progress=False)
    settings = json.loads((tmp_path / "ds" / "synth.json").read_text())
    assert [p.rsplit("/", 1)[-1] for p in settings["backgrounds"]] == ["a.png", "b.jpg"]
    # the uniform photo shows up unchanged (up to edge softening and sensor noise) around the people of some image
    found = False
    for name in sorted((tmp_path / "ds" / "images").iterdir()):
        rgb = np.asarray(Image.open(name)).astype(int)
        fg = np.pad(np.asarray(Image.open(tmp_path / "ds" / "masks" / name.name)) > 0, 2)
        near = np.zeros_like(fg)  # the people and 2 pixels around them (soft edges)
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                near |= np.roll(fg, (dy, dx), (0, 1))
        found |= bool(np.abs(rgb[~near[2:-2, 2:-2]] - 200).max() <= 4)
    assert found
    (folder / "a.png").unlink()
    (folder / "b.jpg").unlink()
    with pytest.raises(ValueError, match="no readable images"), pytest.warns(UserWarning, match="broken.jpg"):
        write_dataset(tmp_path / "ds2", 1, 64, 48, seed=2, backgrounds=folder, progress=False)


def test_truncated_background_photo_is_skipped(tmp_path):
    """A JPEG cut in half passes PIL's verify() but cannot be decoded: it is reported and left out, up front."""
    folder = tmp_path / "bg"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(folder / "a.jpg", quality=95)
    data = (folder / "a.jpg").read_bytes()
    (folder / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.warns(UserWarning, match="cut.jpg"):
        write_dataset(tmp_path / "ds", 4, 64, 48, seed=2, backgrounds=folder, progress=False)
    settings = json.loads((tmp_path / "ds" / "synth.json").read_text())
    assert [p.rsplit("/", 1)[-1] for p in settings["backgrounds"]] == ["a.jpg"]


def test_on_the_fly_pose_crops_for_sapiens2_are_bicubic_where_they_magnify():
    """``--data synth`` for a Sapiens2 pose model crops as its loader does (cv2.warpAffine INTER_CUBIC where the crop
    magnifies); the keypoints are the same either way."""
    from opensapiens.data.synth_stream import SynthStream
    from opensapiens.inference.topdown import magnifies, udp_affine

    cubic = SynthStream("pose", (256, 192), 2, seed=5, cubic_enlarging=True)
    plain = SynthStream("pose", (256, 192), 2, seed=5)
    a, b = next(iter(cubic)), next(iter(plain))
    torch.testing.assert_close(a["keypoints"], b["keypoints"])
    A = udp_affine(a["center"].double(), a["scale"].double(), (256, 192))
    assert magnifies(A).all()  # people in 256 x 192 scenes are smaller than the crop
    image = cubic.source.batch(0).image  # (B, 3, H, W) float 0-255, what both cropped
    for i in range(2):
        src = image[i].permute(1, 2, 0).numpy().astype(np.float32)
        ref = cv2.warpAffine(src, A[i].numpy(), (192, 256), flags=cv2.INTER_CUBIC, borderValue=0).clip(0, 255)
        got = a["image"][i].numpy().astype(np.float64)
        assert np.abs(got - ref).max() <= 1.0 and not torch.equal(a["image"][i], b["image"][i])
