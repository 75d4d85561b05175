"""Decoding on the model's device (``predict --decode device``) gives the pixels and outputs of the host path, and
``bench --e2e`` measures that same ``run_batch`` loop. Here the device is the CPU (torchvision's host decoder); the
nvJPEG path runs under CUDA."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from opensapiens.benchmark import end_to_end
from opensapiens.checkpoints import save_model
from opensapiens.cli.bench import _decode_modes
from opensapiens.cli.main import main
from opensapiens.inference.batch import run_batch
from opensapiens.inference.device_decode import read_image_on_device
from opensapiens.inference.predictors import PosePredictor, SegPredictor
from opensapiens.io import read_image
from opensapiens.io.images import ImageReadError, decode_jpegs, upright

from conftest import make_official_state

CPU = torch.device("cpu")
# what a viewer shows for each EXIF orientation, written with numpy's own rotations (the file-format definitions)
DISPLAYED = {1: lambda a: a, 2: lambda a: a[:, ::-1], 3: lambda a: np.rot90(a, 2), 4: lambda a: a[::-1],
             5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, -1),
             7: lambda a: np.rot90(a, 2).transpose(1, 0, 2), 8: lambda a: np.rot90(a, 1)}


def _smooth(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A photo-like image (smooth, so JPEG keeps it recognisable)."""
    small = np.random.default_rng(seed).integers(0, 255, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    return np.array(Image.fromarray(small).resize((w, h), Image.BICUBIC))


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def _jpeg(path, pixels: np.ndarray, orientation: int = 1):
    Image.fromarray(pixels).save(path, quality=92, exif=_exif(orientation))
    return path


@pytest.mark.parametrize("orientation", range(1, 9))
def test_upright_turns_arrays_and_tensors_as_a_viewer_shows_them(orientation):
    a = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    expected = DISPLAYED[orientation](a)
    np.testing.assert_array_equal(upright(a, orientation), expected)
    np.testing.assert_array_equal(upright(torch.from_numpy(a), orientation).numpy(), expected)


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_a_jpeg_decoded_on_the_device_is_the_host_reader_s_image(tmp_path, orientation):
    path = _jpeg(tmp_path / "a.jpg", _smooth(40, 56), orientation)
    got = read_image_on_device(path, CPU)
    expected = read_image(path)  # OpenCV's decode, turned upright (tests/test_io.py checks that against numpy)
    assert got.dtype == torch.uint8 and tuple(got.shape) == expected.shape
    assert np.abs(got.numpy().astype(int) - expected).max() <= 1  # the same libjpeg-turbo decode


def test_gray_jpegs_png_and_damaged_files_take_the_host_reader(tmp_path):
    gray = _smooth(24, 32)[..., 0]
    Image.fromarray(gray).save(tmp_path / "gray.jpg", quality=92)
    got = read_image_on_device(tmp_path / "gray.jpg", CPU)
    assert np.abs(got.numpy().astype(int) - read_image(tmp_path / "gray.jpg")).max() <= 1
    png = _smooth(20, 30)
    Image.fromarray(png).save(tmp_path / "p.png")
    np.testing.assert_array_equal(read_image_on_device(tmp_path / "p.png", CPU).numpy(), png)
    whole = (tmp_path / "gray.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ImageReadError, match="cut.jpg"):
        read_image_on_device(tmp_path / "cut.jpg", CPU)


def _folder(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, (h, w) in enumerate(((70, 50), (64, 96), (33, 40))):
        _jpeg(folder / f"p{i}.jpg", _smooth(h, w, seed=i), orientation=(1, 6, 3)[i])
    Image.fromarray(_smooth(30, 44, seed=7)).save(folder / "q.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return folder


@pytest.mark.parametrize("task", ["seg", "pose"])
def test_run_batch_decoding_on_the_device_writes_the_host_path_s_outputs(tmp_path, task):
    model, _ = make_official_state(task, 5 if task == "seg" else 17)
    predictor = (SegPredictor if task == "seg" else PosePredictor)(model, input_size=(64, 48), batch_size=2)
    paths = sorted(_folder(tmp_path).iterdir())
    reports = {d: run_batch(predictor, paths, tmp_path / d, batch_size=2, workers=2, decode=d, progress=False)
               for d in ("host", "device")}
    for report in reports.values():
        assert len(report.done) == 4 and [p.name for p, _ in report.failed] == ["broken.jpg"]
    for path in paths[1:]:
        stem = path.stem
        if task == "seg":
            host, dev = (np.array(Image.open(tmp_path / d / f"{stem}_seg.png")) for d in ("host", "device"))
            assert host.shape == dev.shape == read_image(path).shape[:2]  # upright, as the host reads it
            assert (host == dev).mean() > 0.99
        else:
            host, dev = (json.loads((tmp_path / d / f"{stem}.json").read_text()) for d in ("host", "device"))
            assert host["image"] == dev["image"]
            kp_host, kp_dev = (np.array(r["people"][0]["keypoints"]).reshape(-1, 3) for r in (host, dev))
            # a pixel level apart at most may move a flat random heatmap's maximum to a neighbour
            assert (np.linalg.norm(kp_host[:, :2] - kp_dev[:, :2], axis=1) < 1e-2).mean() > 0.8
        picture = np.array(Image.open(tmp_path / "device" / f"{stem}{'_seg' if task == 'seg' else '_pose'}.jpg"))
        assert picture.ndim == 3  # drawn from the device image, brought back to the host by the writer


def test_unknown_decode_is_refused_and_bench_takes_the_flag_s_old_names(tmp_path):
    model, _ = make_official_state("seg", 5)
    with pytest.raises(ValueError, match="decode must be 'host' or 'device'"):
        run_batch(SegPredictor(model, input_size=(64, 48)), [], tmp_path, decode="gpu")
    assert _decode_modes("cpu,gpu") == ["host", "device"] and _decode_modes("device") == ["device"]
    with pytest.raises(Exception, match="'tpu' is not host or device"):
        _decode_modes("host,tpu")


def test_predict_decode_device_writes_what_host_decode_writes(tmp_path):
    model, _ = make_official_state("seg", 28)
    ckpt = save_model(model, tmp_path / "seg.safetensors")
    folder = _folder(tmp_path)
    for d in ("host", "device"):
        argv = ["predict", "--task", "seg", "--checkpoint", str(ckpt), "--input-size", "64x48", str(folder),
                "--out", str(tmp_path / d), "--no-vis", "--decode", d, "--device", "cpu"]  # one decoder, both ways
        assert main(argv) == 1  # broken.jpg fails the job at the end
    for stem in ("p0", "p1", "p2", "q"):
        host, dev = (np.array(Image.open(tmp_path / d / f"{stem}_seg.png")) for d in ("host", "device"))
        assert host.shape == dev.shape and (host == dev).mean() > 0.99


def test_end_to_end_measures_run_batch_and_can_profile_its_timed_pass(tmp_path):
    model, _ = make_official_state("seg", 5)
    folder = _folder(tmp_path)
    (folder / "broken.jpg").unlink()
    trace = tmp_path / "traces" / "e2e.json"
    result = end_to_end(SegPredictor(model, input_size=(64, 48), batch_size=2), folder, decode="device", trace=trace)
    assert result["images"] == 4 and result["profiled"] and result["decode"] == "device"
    assert result["seconds"] > 0 and result["image_size"] == [70, 50]
    names = {e.get("name") for e in json.loads(trace.read_text())["traceEvents"]}
    assert "aten::argmax" in names and "aten::convolution" in names  # the seg post-processing and the model ran


def test_end_to_end_reports_a_file_it_could_not_process(tmp_path):
    model, _ = make_official_state("seg", 5)
    with pytest.raises(RuntimeError, match="broken.jpg"):
        end_to_end(SegPredictor(model, input_size=(64, 48), batch_size=2), _folder(tmp_path))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="nvJPEG needs CUDA")
def test_nvjpeg_does_not_write_memory_the_current_stream_still_reads(tmp_path):
    """torchvision's decoder writes from its own stream into memory taken on the current one: a block freed while a
    queued copy still reads it must not receive the decoded pixels before that copy runs (call 78's failure)."""
    cuda = torch.device("cuda")
    h, w = 96, 128
    data = _jpeg(tmp_path / "a.jpg", _smooth(h, w)).read_bytes()
    for _ in range(3):
        freed = torch.full((3, h, w), 7, dtype=torch.uint8, device=cuda)  # the decoded image's size: its block
        torch.cuda._sleep(200_000_000)  # ~0.1 s of GPU time queued before the read below
        copy = freed.clone()  # queued on the current stream, behind the sleep
        del freed  # free for the allocator, still to be read by the clone
        (decoded,) = decode_jpegs([data], cuda)
        torch.cuda.synchronize()
        assert (copy == 7).all(), "the decode overwrote memory a queued copy was still to read"
        np.testing.assert_array_equal(decoded.permute(1, 2, 0).cpu().numpy(),
                                      read_image_on_device(tmp_path / "a.jpg", cuda).cpu().numpy())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="nvJPEG needs CUDA")
@pytest.mark.parametrize("subsampling, bound", [(0, 2.0), (2, 8.0)])
def test_nvjpeg_decode_is_close_to_the_host_decode_and_feeds_the_predictor(tmp_path, subsampling, bound):
    """nvJPEG's IDCT and chroma upsampling are its own: a mean difference of a few levels where chroma is subsampled
    (4:2:0; call 73: 6.0 on a busier image than this one), far below what a channel swap, a wrong turn or a shifted
    image gives on it (tens of levels)."""
    cuda = torch.device("cuda")
    pixels = _smooth(96, 128, seed=3)
    Image.fromarray(pixels).save(tmp_path / "a.jpg", quality=92, subsampling=subsampling,
                                 exif=_exif(orientation=6))
    got = read_image_on_device(tmp_path / "a.jpg", cuda)
    expected = read_image(tmp_path / "a.jpg")
    assert got.device.type == "cuda" and tuple(got.shape) == expected.shape
    diff = np.abs(got.cpu().numpy().astype(int) - expected)
    wrong = np.abs(np.rot90(got.cpu().numpy(), 2).astype(int) - expected)  # what a wrong turn would give
    print(f"nvJPEG vs host decode, subsampling {subsampling}: mean |diff| {diff.mean():.3f}, max {diff.max()}; "
          f"turned wrong: {wrong.mean():.1f}")
    assert diff.mean() < bound < wrong.mean()
    model, _ = make_official_state("seg", 5)
    predictor = SegPredictor(model.to(cuda), input_size=(64, 48))
    on_device, on_host = predictor(got), predictor(got.cpu().numpy())  # the same pixels, given either way
    assert (on_device.labels == on_host.labels).mean() > 0.999


@pytest.mark.skipif(not torch.cuda.is_available(), reason="nvJPEG needs CUDA")
def test_run_batch_with_nvjpeg_writes_what_host_decode_writes_for_those_pixels(tmp_path):
    """The same job twice: JPEGs decoded by nvJPEG, and PNGs holding nvJPEG's pixels read on the host (same names,
    so the same batches): the streams, the device tensors and the writers' copies must give the same outputs."""
    cuda = torch.device("cuda")
    model, _ = make_official_state("pose", 17)
    predictor = PosePredictor(model.to(cuda), input_size=(64, 48), batch_size=2)
    paths = sorted(_folder(tmp_path).iterdir())
    same = tmp_path / "same_pixels"
    same.mkdir()
    (same / "broken.jpg").write_bytes(paths[0].read_bytes())
    for path in paths[1:]:
        Image.fromarray(read_image_on_device(path, cuda).cpu().numpy()).save(same / f"{path.stem}.png")
    reports = [run_batch(predictor, sorted(folder.iterdir()), tmp_path / d, batch_size=2, workers=3, decode=d,
                         progress=False) for folder, d in ((tmp_path / "photos", "device"), (same, "host"))]
    for report in reports:
        assert len(report.done) == 4 and [p.name for p, _ in report.failed] == ["broken.jpg"]
    for path in paths[1:]:
        device, host = (json.loads((tmp_path / d / f"{path.stem}.json").read_text()) for d in ("device", "host"))
        assert device["image"]["height"] == host["image"]["height"]
        kp_device, kp_host = (np.array(r["people"][0]["keypoints"]).reshape(-1, 3) for r in (device, host))
        # the same pixels through the same model, up to the GPU's run-to-run rounding (cuDNN's algorithm choice: up
        # to 0.016 px seen in call 80, 0.07 px in call 121 on a point 400 px outside the 64 x 48 crop's image, where
        # random weights put it; relative to the point's distance); a wrong or torn image moves them by pixels
        np.testing.assert_allclose(kp_device[:, :2], kp_host[:, :2], atol=0.05, rtol=5e-4)
        np.testing.assert_allclose(kp_device[:, 2], kp_host[:, 2], atol=2e-3)
