"""Image reading of odd files, input listing, atomic writers and video round trips.

Expected pixels come from the file-format definitions (EXIF orientation meanings, 16-bit scaling by 255/65535,
CMYK -> RGB), never from the reader itself.
"""

from __future__ import annotations

import fractions
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from opensapiens.io import (
    ImageReadError,
    VideoWriter,
    atomic_write_bytes,
    iter_video_frames,
    list_inputs,
    read_image,
    read_mask,
    save_jpg,
    save_json,
    save_npy,
    save_png,
    video_info,
)
from opensapiens.io import video as video_module

RNG = np.random.default_rng(0)
RAW = RNG.integers(0, 256, (6, 10, 3), dtype=np.uint8)  # non-square so that rotations change the shape


def _with_orientation(path: Path, array: np.ndarray, orientation: int) -> Path:
    im = Image.fromarray(array)
    exif = im.getexif()
    exif[0x0112] = orientation
    im.save(path, exif=exif.tobytes())
    return path


# ----------------------------------------------------------------------------------------------------------- reading

def test_rgb_png_is_returned_unchanged(tmp_path):
    Image.fromarray(RAW).save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.shape == (6, 10, 3) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, RAW)


def test_exif_orientation_6_is_rotated_clockwise(tmp_path):
    # EXIF 6 = "the 0th row is the visual right-hand side": the viewer rotates the stored pixels 90 degrees clockwise.
    out = read_image(_with_orientation(tmp_path / "o6.png", RAW, 6))
    np.testing.assert_array_equal(out, np.rot90(RAW, k=-1))
    assert out[0, -1].tolist() == RAW[0, 0].tolist()  # stored top-left ends at the top-right


def test_exif_orientation_6_jpeg(tmp_path):
    smooth = np.zeros((32, 48, 3), np.uint8)
    smooth[:16, :24] = (250, 20, 20)  # a red quadrant at the stored top-left
    path = tmp_path / "o6.jpg"
    im = Image.fromarray(smooth)
    exif = im.getexif()
    exif[0x0112] = 6
    im.save(path, exif=exif.tobytes(), quality=95)
    out = read_image(path)
    assert out.shape == (48, 32, 3)
    assert out[4, -4].tolist() == pytest.approx([250, 20, 20], abs=12)  # now at the top-right
    assert out[-4, 4].max() < 12


@pytest.mark.parametrize("orientation, expected", [
    (1, lambda a: a), (2, lambda a: a[:, ::-1]), (3, lambda a: a[::-1, ::-1]), (4, lambda a: a[::-1]),
    (5, lambda a: np.transpose(a, (1, 0, 2))), (7, lambda a: np.rot90(a, 2).transpose(1, 0, 2)),
    (8, lambda a: np.rot90(a, k=1)),
])
def test_all_exif_orientations(tmp_path, orientation, expected):
    path = _with_orientation(tmp_path / f"o{orientation}.png", RAW, orientation)
    out = read_image(path)
    np.testing.assert_array_equal(out, expected(RAW))
    np.testing.assert_array_equal(out, np.asarray(ImageOps.exif_transpose(Image.open(path))))


def test_16bit_gray_png_is_scaled_with_rounding(tmp_path):
    values = np.array([[0, 257, 32768, 65300, 65535]], np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    out = read_image(tmp_path / "g16.png")
    # round(v * 255 / 65535): 257 -> 1, 32768 -> 127.502 -> 128, 65300 -> 254.09 -> 254 (truncating v >> 8 gives 255)
    assert out[0, :, 0].tolist() == [0, 1, 128, 254, 255]
    assert (out == out[..., :1]).all()


def test_16bit_rgb_png_is_scaled_with_rounding(tmp_path):
    import cv2

    rgb = np.array([[[65535, 0, 32768], [65300, 257, 0]]], np.uint16)
    cv2.imwrite(str(tmp_path / "c16.png"), rgb[..., ::-1])  # OpenCV writes BGR; Pillow cannot write 48-bit PNG
    out = read_image(tmp_path / "c16.png")
    assert out.tolist() == [[[255, 0, 128], [254, 1, 0]]]


def test_16bit_tiff(tmp_path):
    values = np.array([[0, 32768, 65535]], np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.tif")
    assert read_image(tmp_path / "g16.tif")[0, :, 1].tolist() == [0, 128, 255]


def test_float_tiff(tmp_path):
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32)).save(tmp_path / "f.tif")
    assert read_image(tmp_path / "f.tif")[0, :, 0].tolist() == [0, 128, 255]
    Image.fromarray(np.array([[-2.0, 0.0, 2.0]], np.float32)).save(tmp_path / "g.tif")  # out of [0, 1]: min-max
    assert read_image(tmp_path / "g.tif")[0, :, 0].tolist() == [0, 128, 255]


def test_grayscale_is_replicated(tmp_path):
    gray = RAW[..., 0]
    Image.fromarray(gray).save(tmp_path / "g.png")
    out = read_image(tmp_path / "g.png")
    np.testing.assert_array_equal(out, np.repeat(gray[..., None], 3, axis=2))


def test_palette_image(tmp_path):
    im = Image.new("P", (4, 2))
    im.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    im.putpixel((1, 0), 1)
    im.save(tmp_path / "p.png")
    out = read_image(tmp_path / "p.png")
    assert out[0, 0].tolist() == [10, 20, 30] and out[0, 1].tolist() == [200, 100, 50]


def test_alpha_is_dropped_not_composited(tmp_path):
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., :3] = (200, 150, 100)
    rgba[0, 0, 3] = 0  # fully transparent: colour kept as stored
    rgba[1, 1, 3] = 255
    Image.fromarray(rgba).save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    assert (out == (200, 150, 100)).all()
    la = np.stack([np.full((2, 2), 77, np.uint8), np.zeros((2, 2), np.uint8)], axis=-1)
    Image.fromarray(la).save(tmp_path / "la.png")
    assert (read_image(tmp_path / "la.png") == 77).all()


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_jpegs_decoded_by_opencv_match_pillow_with_exif_orientation(tmp_path, mode):
    """RGB and gray JPEGs take the OpenCV decoder; the pixels must be Pillow's, turned by Pillow's own
    ``exif_transpose`` (an independent statement of the orientation table)."""
    from PIL import ImageOps

    small = Image.fromarray(RNG.integers(0, 256, (10, 13, 3), dtype=np.uint8)).resize((130, 100), Image.BICUBIC)
    small = small.convert(mode)
    for orientation in (1, 3, 6, 8):
        exif = small.getexif()
        exif[0x0112] = orientation
        path = tmp_path / f"{mode}{orientation}.jpg"
        small.save(path, exif=exif, quality=90)
        with Image.open(path) as im:
            expect = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
        got = read_image(path)
        assert got.shape == expect.shape and np.array_equal(got, expect), (mode, orientation)


def test_jpeg_fast_path_decodes_the_file_bytes_to_pillows_pixels(tmp_path, monkeypatch):
    """The OpenCV path is really taken, on the very bytes of the file, and gives Pillow's upright pixels (odd size,
    4:2:0 chroma, transposing orientations)."""
    import cv2

    from opensapiens.io import images

    calls: list[bytes] = []
    imdecode = cv2.imdecode

    def spy(buf, flags):
        calls.append(bytes(buf))
        return imdecode(buf, flags)

    monkeypatch.setattr(images.cv2, "imdecode", spy)
    image = Image.fromarray(RNG.integers(0, 256, (9, 11, 3), dtype=np.uint8)).resize((101, 67), Image.BICUBIC)
    for orientation in (5, 6):
        path = tmp_path / f"o{orientation}.jpg"
        exif = image.getexif()
        exif[0x0112] = orientation
        image.save(path, exif=exif, quality=85, subsampling=2)
        with Image.open(path) as im:
            expect = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
        calls.clear()
        got = read_image(path)
        assert calls == [path.read_bytes()]
        assert got.shape == expect.shape == (101, 67, 3) and np.array_equal(got, expect), orientation


def _bytes_read() -> int:
    """Bytes this process has received from read() system calls (Linux; page-cache hits count too)."""
    with open("/proc/self/io") as f:
        return int(next(line for line in f.read().splitlines() if line.startswith("rchar:")).split()[1])


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="needs Linux /proc/self/io")
@pytest.mark.parametrize("name", ["noise.jpg", "c16.png"])
def test_read_image_reads_the_file_once(tmp_path, name):
    """JPEGs and 16-bit colour PNGs (both decoded by OpenCV after Pillow read the header) cost one read of the file:
    a second open for the header or for OpenCV would read at least a few more KB (Pillow buffers 8 KB)."""
    import cv2

    path = tmp_path / name
    noise = RNG.integers(0, 256, (240, 320, 3), dtype=np.uint8)  # incompressible: ~100+ KB either way
    if name.endswith(".jpg"):
        Image.fromarray(noise).save(path, quality=90)
    else:
        cv2.imwrite(str(path), noise.astype(np.uint16) * 257)
    size = path.stat().st_size
    expect = read_image(path)  # warm up any lazy imports
    deltas = []
    for _ in range(3):  # the least of three: another thread's reads can only add
        before = _bytes_read()
        out = read_image(path)
        deltas.append(_bytes_read() - before)
        np.testing.assert_array_equal(out, expect)
    assert size <= min(deltas) < size + 1024, (size, deltas)


def test_cmyk_jpeg(tmp_path):
    # CMYK (0, 255, 255, 0) is red: R = 255 - C, G = 255 - M, B = 255 - Y at K = 0.
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=95)
    out = read_image(tmp_path / "cmyk.jpg")
    assert out.shape == (16, 16, 3)
    np.testing.assert_allclose(out.reshape(-1, 3).mean(0), [255, 0, 0], atol=4)


def test_bad_files_raise_image_read_error(tmp_path):
    Image.fromarray(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("this is not an image\n")
    cases = {"truncated.jpg": "damaged", "empty.jpg": "empty", "text.jpg": "not an image", "missing.png": "no such"}
    for name, reason in cases.items():
        with pytest.raises(ImageReadError) as info:
            read_image(tmp_path / name)
        assert isinstance(info.value, ValueError)
        assert name in str(info.value) and reason in str(info.value)
    with pytest.raises(ImageReadError, match="folder"):
        read_image(tmp_path)


# ----------------------------------------------------------------------------------------------------------- listing

def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_list_folder_natural_order_and_filters(tmp_path):
    for name in ["frame_10.jpg", "frame_2.PNG", "frame_1.jpg", "clip.mp4", "notes.txt", ".hidden.jpg", "a.json"]:
        _touch(tmp_path / name)
    _touch(tmp_path / "sub" / "deep.png")
    _touch(tmp_path / ".cache" / "skipped.png")
    got = [p.name for p in list_inputs([tmp_path])]
    assert got == ["clip.mp4", "frame_1.jpg", "frame_2.PNG", "frame_10.jpg"]
    got = [p.relative_to(tmp_path).as_posix() for p in list_inputs([tmp_path], recursive=True)]
    assert got == ["clip.mp4", "frame_1.jpg", "frame_2.PNG", "frame_10.jpg", "sub/deep.png"]


def test_list_globs_lists_files_and_duplicates(tmp_path):
    a, b, c = (_touch(tmp_path / n) for n in ("a.jpg", "b.jpg", "c.png"))
    _touch(tmp_path / "sub" / "d.jpg")
    (tmp_path / "sub" / "list.txt").write_text(f"# comment\n\n../c.png\n{a}\nd.jpg\n")
    got = list_inputs([str(tmp_path / "*.jpg"), tmp_path / "sub" / "list.txt", b, str(tmp_path / "**" / "d.jpg")])
    assert [p.resolve() for p in got] == [a.resolve(), b.resolve(), c.resolve(), (tmp_path / "sub/d.jpg").resolve()]
    # an explicitly named file is kept whatever its extension
    odd = _touch(tmp_path / "scan.dat")
    assert list_inputs(odd) == [odd]


def test_list_specs_matching_nothing_raise(tmp_path):
    _touch(tmp_path / "notes.md")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_inputs([tmp_path / "nope.jpg"])
    with pytest.raises(FileNotFoundError, match="no image or video"):
        list_inputs([tmp_path])
    with pytest.raises(FileNotFoundError, match="matches no"):
        list_inputs([str(tmp_path / "*.png")])
    (tmp_path / "l.txt").write_text("missing.jpg\n")
    with pytest.raises(FileNotFoundError, match=r"l\.txt:1"):
        list_inputs([tmp_path / "l.txt"])
    (tmp_path / "self.txt").write_text("self.txt\n")
    with pytest.raises(ValueError, match="includes itself"):
        list_inputs([tmp_path / "self.txt"])
    with pytest.raises(ValueError, match="no inputs"):
        list_inputs([])


def test_list_of_no_entries_raises_naming_the_list(tmp_path):
    """An empty or comments-only list matches nothing: it must say so, as any other spec that matches nothing."""
    for name, text in (("empty.txt", ""), ("comments.txt", "# nothing yet\n\n   \n# still nothing\n")):
        (tmp_path / name).write_text(text)
        with pytest.raises(FileNotFoundError, match=rf"{name}.*no inputs"):
            list_inputs([tmp_path / name])


def test_a_folder_of_sub_folders_says_how_to_search_them_and_that_works(tmp_path):
    for rel in ("2023/a.jpg", "2024/b.png", "2024/deep/c.jpg"):
        _touch(tmp_path / "photos" / rel)
    with pytest.raises(FileNotFoundError) as info:
        list_inputs([tmp_path / "photos"])
    message = str(info.value)
    assert "recursive=True" not in message and "sub-folders are not searched" in message
    pattern = message.split("pass '")[1].split("'")[0]  # the spec the message suggests, as a user would copy it
    got = sorted(p.relative_to(tmp_path / "photos").as_posix() for p in list_inputs([pattern]))
    assert got == ["2023/a.jpg", "2024/b.png", "2024/deep/c.jpg"]
    _touch(tmp_path / "flat" / "notes.md")  # no sub-folder: nothing to suggest
    with pytest.raises(FileNotFoundError, match=r"contains no image or video files$"):
        list_inputs([tmp_path / "flat"])


# ----------------------------------------------------------------------------------------------------------- masks

def _mask_png(path: Path, values: np.ndarray) -> Path:
    """PNG of ``values`` exactly as stored: 16-bit gray/colour through OpenCV (BGR order), else through Pillow."""
    import cv2

    if values.dtype == np.uint16:
        assert cv2.imwrite(str(path), values[..., ::-1] if values.ndim == 3 else values)
    else:
        Image.fromarray(values).save(path)
    return path


def test_read_mask_takes_stored_values_of_any_channel_and_ignores_alpha(tmp_path):
    person = np.zeros((12, 9), bool)
    person[3:9, 2:6] = True
    label16 = _mask_png(tmp_path / "label16.png", person.astype(np.uint16))  # value 1: 0 once scaled to 8 bits
    rgb16 = np.zeros((12, 9, 3), np.uint16)
    rgb16[person, 1] = 1  # green 1 of 65535
    palette = Image.fromarray(person.astype(np.uint8), mode="P")
    palette.putpalette([0, 0, 0, 0, 128, 0] + [0] * 762)  # index 1 drawn green: no red at all
    palette.save(tmp_path / "palette.png")
    green = np.zeros((12, 9, 3), np.uint8)
    green[person] = (0, 255, 0)
    rgba = np.zeros((12, 9, 4), np.uint8)
    rgba[..., 3] = 255  # opaque everywhere: alpha is not the mask
    rgba[person, 2] = 7
    la = np.zeros((12, 9, 2), np.uint8)
    la[..., 1] = 255
    la[person, 0] = 1
    files = [label16, _mask_png(tmp_path / "rgb16.png", rgb16), tmp_path / "palette.png",
             _mask_png(tmp_path / "green.png", green), _mask_png(tmp_path / "rgba.png", rgba)]
    Image.fromarray(la, mode="LA").save(tmp_path / "la.png")
    for path in [*files, tmp_path / "la.png"]:
        got = read_mask(path)
        assert got.dtype == bool and np.array_equal(got, person), path.name
    rotated = _with_orientation(tmp_path / "rot.png", (person * 255).astype(np.uint8), 6)
    assert np.array_equal(read_mask(rotated), np.rot90(person, -1))  # shown rotated 90 clockwise, as images
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ImageReadError, match="bad.png"):
        read_mask(tmp_path / "bad.png")


# ----------------------------------------------------------------------------------------------------------- writing

def test_writers_round_trip_and_leave_no_temporaries(tmp_path):
    rgb = RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    deep = tmp_path / "x" / "y"
    assert save_png(deep / "rgb.png", rgb) == deep / "rgb.png"
    np.testing.assert_array_equal(np.asarray(Image.open(deep / "rgb.png")), rgb)  # RGB order kept on disk
    labels = RNG.integers(0, 28, (5, 7), dtype=np.uint8)
    save_png(deep / "labels.png", labels)
    np.testing.assert_array_equal(np.asarray(Image.open(deep / "labels.png")), labels)
    depth16 = np.array([[0, 1000, 65535]], np.uint16)
    save_png(deep / "d16.png", depth16)
    np.testing.assert_array_equal(np.asarray(Image.open(deep / "d16.png")), depth16)
    save_jpg(deep / "rgb.jpg", np.full((8, 8, 3), (200, 30, 60), np.uint8))
    np.testing.assert_allclose(np.asarray(Image.open(deep / "rgb.jpg")).mean((0, 1)), (200, 30, 60), atol=3)
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    save_npy(deep / "a.npy", arr)
    np.testing.assert_array_equal(np.load(deep / "a.npy"), arr)
    atomic_write_bytes(deep / "b.bin", b"abc")
    assert (deep / "b.bin").read_bytes() == b"abc"
    assert sorted(os.listdir(deep)) == ["a.npy", "b.bin", "d16.png", "labels.png", "rgb.jpg", "rgb.png"]
    plain = tmp_path / "plain.bin"
    plain.write_bytes(b"x")  # what open() gives under this umask; the atomic writers must match it, not mkstemp's 0600
    for name in os.listdir(deep):
        assert (deep / name).stat().st_mode & 0o777 == plain.stat().st_mode & 0o777, name


def test_save_json_converts_numpy_and_non_finite(tmp_path):
    obj = {"a": np.float32(1.5), "b": np.arange(3), "c": np.array([1.0, np.nan, np.inf]), 3: np.bool_(True),
           "p": Path("x/y"), "n": [np.int64(7), None]}
    save_json(tmp_path / "o.json", obj)
    assert json.loads((tmp_path / "o.json").read_text()) == {
        "a": 1.5, "b": [0, 1, 2], "c": [1.0, None, None], "3": True, "p": "x/y", "n": [7, None]}


def test_save_json_writes_bf16_and_fp16_tensors(tmp_path):
    import torch

    values = [1.5, -2.25, 0.0078125]  # exact in bf16 and fp16
    save_json(tmp_path / "t.json", {"bf16": torch.tensor(values, dtype=torch.bfloat16),
                                    "fp16": torch.tensor(values, dtype=torch.float16),
                                    "fp64": torch.tensor([0.1], dtype=torch.float64)})
    assert json.loads((tmp_path / "t.json").read_text()) == {"bf16": values, "fp16": values, "fp64": [0.1]}


def test_failed_write_keeps_old_file_and_no_temporary(tmp_path):
    save_png(tmp_path / "o.png", np.zeros((2, 2), np.uint8))
    with pytest.raises(ValueError, match="o.png"):
        save_png(tmp_path / "o.png", np.zeros((2, 2), np.float32))
    with pytest.raises(TypeError):
        save_json(tmp_path / "o.json", {"x": object()})
    assert os.listdir(tmp_path) == ["o.png"]
    assert np.asarray(Image.open(tmp_path / "o.png")).shape == (2, 2)


# ----------------------------------------------------------------------------------------------------------- video

def test_video_round_trip(tmp_path):
    pytest.importorskip("av")
    frames = [np.full((24, 32, 3), (10 * i, 200 - 10 * i, 128), np.uint8) for i in range(8)]
    with VideoWriter(tmp_path / "v.mp4", fps=12) as writer:
        for f in frames:
            writer.write(f)
    assert os.listdir(tmp_path) == ["v.mp4"]
    info = video_info(tmp_path / "v.mp4")
    assert info.fps == pytest.approx(12) and info.size == (24, 32) and info.num_frames in (8, None)
    got = list(iter_video_frames(tmp_path / "v.mp4"))
    assert [i for i, _ in got] == list(range(8))
    for (_, g), f in zip(got, frames):
        assert g.shape == (24, 32, 3) and g.dtype == np.uint8
        np.testing.assert_allclose(g.reshape(-1, 3).mean(0), f[0, 0], atol=4)
    assert [i for i, _ in iter_video_frames(tmp_path / "v.mp4", step=3)] == [0, 3, 6]
    timed = [(i, t) for i, _, t in iter_video_frames(tmp_path / "v.mp4", step=3, times=True)]
    assert [i for i, _ in timed] == [0, 3, 6] and [t for _, t in timed] == pytest.approx([0, 3 / 12, 6 / 12])


@pytest.mark.parametrize("ext", ["ts", "mp4"])
def test_frame_times_count_from_the_start_of_the_video_as_players_do(tmp_path, ext):
    """A stream whose first frame is stamped 2.0 s (MPEG-TS, a cut file): its frames are at 0, 0.1, ... s."""
    av = pytest.importorskip("av")
    path = tmp_path / f"late.{ext}"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.time_base = fractions.Fraction(1, 10)
        for i in range(5):
            frame = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")
            frame.pts, frame.time_base = 20 + i, stream.time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    with av.open(str(path)) as container:
        assert [f.time for f in container.decode(video=0)] == pytest.approx([2.0, 2.1, 2.2, 2.3, 2.4])
    timed = [(i, t) for i, _, t in iter_video_frames(path, times=True)]
    assert [i for i, _ in timed] == list(range(5)) and [t for _, t in timed] == pytest.approx([0, .1, .2, .3, .4])


def _video_damaged_at(tmp_path, frames: int, damaged: int):
    """A video of ``frames`` noise frames whose packet ``damaged`` has its NAL header overwritten."""
    av = pytest.importorskip("av")
    rng = np.random.default_rng(0)
    with VideoWriter(tmp_path / "v.mp4", fps=10) as writer:
        for _ in range(frames):
            writer.write(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8))
    with av.open(str(tmp_path / "v.mp4")) as c:
        packets = [(p.pos, p.size) for p in c.demux(video=0) if p.size]
    data = bytearray((tmp_path / "v.mp4").read_bytes())
    data[packets[damaged][0]:packets[damaged][0] + 8] = b"\xff" * 8
    (tmp_path / "d.mp4").write_bytes(bytes(data))
    return tmp_path / "d.mp4"


@pytest.mark.parametrize("threads", [1, 16])  # 16 (as on a 16-core host) reports the damage 16 packets late
def test_a_damaged_packet_midway_is_skipped_with_a_warning_not_the_rest_of_the_video(tmp_path, monkeypatch, threads):
    monkeypatch.setattr(video_module, "DECODE_THREADS", threads)
    damaged = _video_damaged_at(tmp_path, 80, 30)
    with pytest.warns(UserWarning, match="d.mp4: skipped 1 damaged packet") as caught:
        frames = list(iter_video_frames(damaged))
    assert len(frames) == 79  # every frame but the damaged one's
    assert not any("no frame" in str(w.message) for w in caught)


def test_after_a_damaged_packet_the_frame_times_still_place_each_frame(tmp_path, monkeypatch):
    """Frame numbers count decoded frames, so the damaged frame 30 shifts the later numbers by one; their
    presentation times do not shift."""
    monkeypatch.setattr(video_module, "DECODE_THREADS", 1)
    damaged = _video_damaged_at(tmp_path, 40, 30)
    with pytest.warns(UserWarning, match="skipped 1 damaged packet"):
        timed = [(i, t) for i, _, t in iter_video_frames(damaged, times=True)]
    assert [i for i, _ in timed] == list(range(39))
    times = [round(t * 10) for _, t in timed]  # 10 fps
    assert len(set(times)) == 39 and set(range(40)) - set(times) == {30}  # ... the frame at 3.0 s is the one lost


def test_frames_lost_to_damage_near_the_end_on_many_threads_are_told(tmp_path, monkeypatch):
    """On 16 threads the final drain loses the frames the threads held after a packet damaged among the last (FFmpeg
    8.1.2 without reporting the damaged packet, 8.1.1 reporting it too): every frame missing is told, one way or
    the other."""
    damaged = _video_damaged_at(tmp_path, 40, 30)
    monkeypatch.setattr(video_module, "DECODE_THREADS", 16)
    with pytest.warns(UserWarning) as caught:
        frames = list(iter_video_frames(damaged))
    told = " ".join(str(w.message) for w in caught)
    rejected = re.search(r"skipped (\d+) damaged packet", told)
    dropped = re.search(r"d.mp4: (\d+) packet\(s\) near the end decoded to no frame", told)
    assert rejected or dropped
    assert len(frames) + sum(int(m.group(1)) for m in (rejected, dropped) if m) == 40
    monkeypatch.setattr(video_module, "DECODE_THREADS", 1)
    with pytest.warns(UserWarning, match="skipped 1 damaged packet"):
        assert len(list(iter_video_frames(damaged))) == 39


def test_a_video_cut_before_its_index_is_called_truncated_not_streamless(tmp_path):
    pytest.importorskip("av")
    with VideoWriter(tmp_path / "v.mp4", fps=10) as writer:
        for k in range(10):
            writer.write(np.full((32, 32, 3), 20 * k, np.uint8))
    data = (tmp_path / "v.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) * 2 // 3])  # mp4's index (moov) comes last
    with pytest.raises(ImageReadError, match="cut.mp4.*no video stream .nor audio: a truncated or unfinished file"):
        list(iter_video_frames(tmp_path / "cut.mp4"))


def test_written_videos_are_tagged_with_the_matrix_and_range_they_were_converted_with(tmp_path):
    av = pytest.importorskip("av")
    with VideoWriter(tmp_path / "v.mp4", fps=10) as writer:
        writer.write(np.zeros((16, 16, 3), np.uint8))
    with av.open(str(tmp_path / "v.mp4")) as c:
        frame = next(c.decode(video=0))
    assert (frame.colorspace, frame.color_range) == (6, 1)  # SMPTE 170M (BT.601), MPEG (video) range


def test_video_display_rotation_is_applied(tmp_path):
    av = pytest.importorskip("av")
    frame = np.zeros((16, 32, 3), np.uint8)
    frame[:8, :8] = 255  # white block at the stored top-left
    with av.open(str(tmp_path / "r.mp4"), "w") as c:
        s = c.add_stream("mpeg4", rate=5)
        s.width, s.height, s.pix_fmt = 32, 16, "yuv420p"
        s.set_display_rotation(90)  # display = stored frame turned 90 degrees counter-clockwise
        for _ in range(2):
            c.mux(s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        c.mux(s.encode())
    _, out = next(iter(iter_video_frames(tmp_path / "r.mp4")))
    assert out.shape == (32, 16, 3) and video_info(tmp_path / "r.mp4").size == (32, 16)
    assert out[-4, 4].min() > 200 and out[4, 4].max() < 60  # the block moved to the bottom-left


def test_video_writer_failures_leave_nothing(tmp_path):
    pytest.importorskip("av")
    with pytest.raises(KeyError), VideoWriter(tmp_path / "a.mp4") as w:
        w.write(np.zeros((8, 8, 3), np.uint8))
        raise KeyError("stop")
    with pytest.raises(ValueError, match="size"), VideoWriter(tmp_path / "b.mp4") as w:
        w.write(np.zeros((8, 8, 3), np.uint8))
        w.write(np.zeros((8, 10, 3), np.uint8))
    with pytest.raises(ValueError, match="no frames"), VideoWriter(tmp_path / "c.mp4"):
        pass
    assert os.listdir(tmp_path) == []
    (tmp_path / "bad.mp4").write_text("not a video")
    with pytest.raises(ImageReadError, match="bad.mp4"):
        list(iter_video_frames(tmp_path / "bad.mp4"))


@pytest.mark.parametrize("h", [48, 66])  # 66: H/2 chroma rows that do not pack into whole rows of W
def test_pictures_go_to_yuv420p_in_bt601_video_range_with_block_mean_chroma(h):
    """The writer's own RGB -> yuv420p against the standard's float64 formulas (Kr 0.299, Kb 0.114; Y in 16..235,
    chroma 128 +- 112, one sample per 2x2 block): a one-pixel coloured line keeps its share of its blocks' colour."""
    from opensapiens.io.video import rgb_to_yuv420p

    w = 80
    rgb = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    rgb[10, :] = (255, 0, 0)  # a red line on one (even) row: a top-left sample alone would see half of it or all
    r, g, b = (rgb[..., i].astype(np.float64) / 255 for i in range(3))
    luma = 0.299 * r + 0.587 * g + 0.114 * b
    y = 16 + 219 * luma
    cb = 128 + 224 * (b - luma) / (2 * (1 - 0.114))
    cr = 128 + 224 * (r - luma) / (2 * (1 - 0.299))

    def block_mean(c: np.ndarray) -> np.ndarray:
        return c.reshape(h // 2, 2, w // 2, 2).mean((1, 3))

    planes = rgb_to_yuv420p(rgb).astype(np.float64)
    assert planes.shape == (h * 3 // 2, w)
    chroma = planes.ravel()[h * w:]  # FFmpeg's layout: the U plane's (H/2, W/2) samples, then V's
    got_u, got_v = chroma[:h * w // 4].reshape(h // 2, w // 2), chroma[h * w // 4:].reshape(h // 2, w // 2)
    assert np.abs(planes[:h] - y).max() <= 1
    for got, want in ((got_u, block_mean(cb)), (got_v, block_mean(cr))):
        assert np.abs(got - want).max() <= 1.5 and np.abs(got - want).mean() < 0.5


def test_video_writer_passes_the_x264_preset(tmp_path):
    """x264 writes its settings into the stream: veryfast's subpixel refinement is 2, the default (medium) 7."""
    pytest.importorskip("av")
    from opensapiens.io import VideoWriter

    frames = np.random.default_rng(0).integers(0, 255, (3, 32, 48, 3), dtype=np.uint8)
    sizes = {}
    for preset in ("veryfast", None):
        path = tmp_path / f"{preset}.mp4"
        with VideoWriter(path, fps=10, preset=preset) as writer:
            for f in frames:
                writer.write(f)
        sizes[preset] = path.read_bytes()
    assert b"subme=2" in sizes["veryfast"] and b"subme=7" in sizes[None]

    # frame threads (the throughput kind), not the sliced threads PyAV's default slice threading asks x264 for (on
    # frames big enough for x264 to thread at all)
    path = tmp_path / "vga.mp4"
    with VideoWriter(path, fps=10, preset="veryfast") as writer:
        writer.write(np.zeros((480, 640, 3), np.uint8))
    assert re.search(rb"threads=\d+ lookahead_threads=\d+ sliced_threads=0", path.read_bytes())


def _png_row_filters(path) -> set[int]:
    """The filter type byte of every row of an 8-bit RGB PNG (zlib over the concatenated IDAT chunks)."""
    import struct
    import zlib

    data, pos, idat = path.read_bytes(), 8, b""
    width = height = 0
    while pos < len(data):
        (length,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = 1 + 3 * width
    return {raw[r * stride] for r in range(height)}


def test_png_row_filters_are_skipped_where_asked_and_the_pixels_kept(tmp_path):
    """Flat colours on black (an OpenPose picture) encode ~4x faster without PNG's row filters."""
    picture = np.zeros((64, 80, 3), np.uint8)
    picture[10:30, 5:60] = (255, 85, 0)
    picture[40:, 30:] = RNG.integers(0, 256, (24, 50, 3), dtype=np.uint8)  # rows a filter would pay off on
    save_png(tmp_path / "plain.png", picture, row_filters=False)
    save_png(tmp_path / "filtered.png", picture)
    for name in ("plain.png", "filtered.png"):
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / name)), picture)
    assert _png_row_filters(tmp_path / "plain.png") == {0}
    assert _png_row_filters(tmp_path / "filtered.png") != {0}
