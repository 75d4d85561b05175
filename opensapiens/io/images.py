"""Image files in: reading any image a user has as RGB uint8, foreground masks as stored, listing inputs.

``read_image`` conventions (the model contract is an (H, W, 3) uint8 RGB array):
- EXIF orientation is applied, as a photo viewer (and ``cv2.imread``) would show the image.
- Alpha is dropped, not composited: the colour channels are kept as stored. This is what ``cv2.imread`` gives the
  official pipeline, and compositing on an arbitrary background would invent pixels.
- Grayscale and bilevel images are replicated to three channels; palette, CMYK, YCbCr and LAB images are converted by
  Pillow.
- 16-bit samples (PNG/TIFF, gray or colour) are scaled with rounding, round(v * 255 / 65535), not truncated.
- 32-bit integer images in [0, 65535] are treated as 16-bit; other integer ranges are min-max scaled.
- Float images with all finite values in [0, 1] are scaled by 255, others are min-max scaled; NaN becomes 0.
- Multi-frame files (TIFF pages, animated WebP) give their first frame.
- Complete RGB and gray JPEGs are decoded by OpenCV (same libjpeg-turbo pixels as Pillow, without holding the GIL:
  loader threads scale); everything else, and any JPEG OpenCV refuses or that ends early, by Pillow.
Anything that cannot be decoded raises ``ImageReadError`` naming the file and the reason.

``list_inputs`` turns what a user types (files, folders, glob patterns, ``.txt`` lists) into an ordered, duplicate-free
list of paths. Outputs are written by ``writers``.
"""

from __future__ import annotations

import functools
import glob
import io
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

if TYPE_CHECKING:
    import torch

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm",
                              ".pbm", ".pnm"})
VIDEO_EXTENSIONS = frozenset({".mp4", ".mov", ".m4v", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv"})
MEDIA_EXTENSIONS = IMAGE_EXTENSIONS | VIDEO_EXTENSIONS


def is_image(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def is_video(path: str | Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


# ----------------------------------------------------------------------------------------------------------------
# Listing inputs
# ----------------------------------------------------------------------------------------------------------------

def _natural_key(path: Path) -> list[str | int]:
    """Sort key that orders ``frame_2`` before ``frame_10`` (text and number runs alternate, so keys compare)."""
    parts = re.split(r"(\d+)", str(path))
    return [int(p) if i % 2 else p for i, p in enumerate(parts)]


def _media_files(paths: Iterable[Path], root: Path | None = None) -> list[Path]:
    """Image/video files among ``paths``, natural order; hidden files (and, below ``root``, hidden folders) skipped."""
    def hidden(p: Path) -> bool:
        return any(part.startswith(".") for part in (p.relative_to(root).parts if root else (p.name,)))

    files = [p for p in paths if p.suffix.lower() in MEDIA_EXTENSIONS and not hidden(p) and p.is_file()]
    return sorted(files, key=_natural_key)


def _expand(spec: str, recursive: bool, base: Path | None, open_lists: tuple[Path, ...]) -> list[Path]:
    path = Path(spec).expanduser()
    if base is not None and not path.is_absolute():
        path = base / path
    if path.is_file():
        if path.suffix.lower() == ".txt":
            return _read_list(path, recursive, open_lists)
        return [path]  # named explicitly: kept whatever its extension; reading it reports a non-image clearly
    if path.is_dir():
        found = _media_files(path.rglob("*") if recursive else path.iterdir(), root=path)
        if not found:
            deeper = not recursive and any(p.is_dir() and not p.name.startswith(".") for p in path.iterdir())
            hint = f"; sub-folders are not searched (pass '{path / '**' / '*'}', quoted, for them)" if deeper else ""
            raise FileNotFoundError(f"folder {str(path)!r} contains no image or video files{' directly' * deeper}"
                                    f"{hint}")
        return found
    if any(c in spec for c in "*?["):
        found = _media_files(Path(p) for p in glob.glob(str(path), recursive=True))
        if not found:
            raise FileNotFoundError(f"pattern {spec!r} matches no image or video files")
        return found
    raise FileNotFoundError(f"input {str(path)!r} does not exist")


def _read_list(list_file: Path, recursive: bool, open_lists: tuple[Path, ...]) -> list[Path]:
    """One input spec per line; blank lines and ``#`` comments are skipped; relative entries are relative to the
    list file's folder."""
    key = list_file.resolve()
    if key in open_lists:
        raise ValueError(f"input list {str(list_file)!r} includes itself")
    try:
        lines = list_file.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read input list {str(list_file)!r}: {e}") from e
    out: list[Path] = []
    for lineno, line in enumerate(lines, start=1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        try:
            out += _expand(entry, recursive, list_file.parent, open_lists + (key,))
        except FileNotFoundError as e:
            raise FileNotFoundError(f"{list_file}:{lineno}: {e}") from e
    if not out:  # every entry raises when it matches nothing: only a list without entries gets here
        raise FileNotFoundError(f"input list {str(list_file)!r} names no inputs (it is empty or only comments)")
    return out


def list_inputs(specs: str | Path | Iterable[str | Path], recursive: bool = False) -> list[Path]:
    """Expand input specs into media files, in order, without duplicates.

    Each spec is a file (kept whatever its extension), a folder (its image and video files, natural sort order,
    hidden files skipped; sub-folders only with ``recursive``), a glob pattern (``**`` allowed), or a ``.txt`` file
    listing one spec per line. A spec that matches nothing raises ``FileNotFoundError`` naming it.
    """
    if isinstance(specs, (str, Path)):
        specs = [specs]
    specs = [str(s) for s in specs]
    if not specs:
        raise ValueError("no inputs given")
    unique: dict[Path, Path] = {}
    for spec in specs:
        for path in _expand(spec, recursive, None, ()):
            unique.setdefault(path.resolve(), path)
    return list(unique.values())


# ----------------------------------------------------------------------------------------------------------------
# Reading images
# ----------------------------------------------------------------------------------------------------------------

class ImageReadError(ValueError):
    """An image or video file could not be decoded; ``path`` and ``reason`` say which and why."""

    def __init__(self, path: str | Path, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"cannot read {str(path)!r}: {reason}")


# EXIF orientation tag (0x0112) -> (axes flipped, then whether H and W are swapped) that display the stored pixels
# upright.
_ORIENTATIONS: dict[int, tuple[tuple[int, ...], bool]] = {
    1: ((), False),
    2: ((1,), False),  # mirrored horizontally
    3: ((0, 1), False),  # rotated 180
    4: ((0,), False),  # mirrored vertically
    5: ((), True),  # transposed (mirror + rotate 270 clockwise)
    6: ((0,), True),  # rotate 90 clockwise to display
    7: ((0, 1), True),  # transversed (mirror + rotate 90 clockwise)
    8: ((1,), True),  # rotate 90 counter-clockwise to display
}


def upright(pixels, orientation: int):
    """Stored (H, W, ...) pixels as displayed under EXIF ``orientation``: a numpy view, or a torch tensor (on any
    device)."""
    flip, transpose = _ORIENTATIONS[orientation]
    if flip:
        pixels = np.flip(pixels, flip) if isinstance(pixels, np.ndarray) else pixels.flip(flip)
    return pixels.swapaxes(0, 1) if transpose else pixels


def _exif_orientation(im: Image.Image) -> int:
    try:
        value = int(im.getexif().get(0x0112, 1))
    except Exception:  # a broken EXIF block must not make a readable image unreadable
        return 1
    return value if value in _ORIENTATIONS else 1


def _from_uint16(a: np.ndarray) -> np.ndarray:
    """round(v * 255 / 65535) in exact integer arithmetic (no ties can occur)."""
    return ((a.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def _minmax(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    finite = np.isfinite(a)
    if not finite.any():
        return np.zeros(a.shape, np.uint8)
    lo, hi = a[finite].min(), a[finite].max()
    scaled = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
    return np.where(finite, np.floor(scaled + 0.5), 0).astype(np.uint8)


def _gray_to_uint8(im: Image.Image) -> np.ndarray:
    """(H, W) uint8 from a 16-bit, 32-bit integer or float single-channel image (see module docstring)."""
    a = np.asarray(im)
    if im.mode.startswith("I;16"):
        return _from_uint16(a)
    if im.mode == "I":
        return _from_uint16(a) if a.size and a.min() >= 0 and a.max() <= 65535 else _minmax(a)
    finite = np.isfinite(a)
    if a.size and finite.all() and a.min() >= 0.0 and a.max() <= 1.0:
        return np.floor(a.astype(np.float64) * 255.0 + 0.5).astype(np.uint8)
    return _minmax(a)


def _has_16bit_samples(im: Image.Image) -> bool:
    """Pillow decodes 16-bit colour PNG/TIFF as 8-bit RGB by keeping the high byte; its raw mode says so."""
    return any(";16" in str(tile.args) for tile in getattr(im, "tile", ()))


def _decode_16bit_color(data: bytes, path: Path) -> np.ndarray:
    a = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)  # keeps 16 bits; ignores EXIF rotation
    if a is None or a.ndim != 3 or a.shape[2] not in (3, 4):
        raise ImageReadError(path, "cannot decode 16-bit colour samples")
    rgb = a[..., 2::-1]  # BGR(A) -> RGB, alpha dropped
    return _from_uint16(rgb) if rgb.dtype == np.uint16 else np.ascontiguousarray(rgb)


def _decode_jpeg(data: bytes) -> np.ndarray | None:
    """A complete RGB or gray JPEG through OpenCV; None when OpenCV cannot decode it.

    The same libjpeg-turbo decode as Pillow's (integer IDCT, fancy up-sampling: identical pixels), but OpenCV
    releases the GIL for the whole decode and skips Pillow's chunked copy out of its image buffer: about 2.5x the
    images/s on 8 loader threads (365 vs 148 img/s for 1080p JPEGs, ``bench/host_decode.py``). Orientation is left
    to the caller, as for every other format.
    """
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    return None if bgr is None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _complete_jpeg(data: bytes) -> bool:
    return b"\xff\xd9" in data[-4096:]  # without an end-of-image marker the file was cut short


JpegDecoder = Callable[[bytes], "np.ndarray | torch.Tensor | None"]


def decode_jpegs(datas: list[bytes], device: torch.device) -> list[torch.Tensor | None]:
    """JPEG bytes -> (3, H, W) uint8 RGB tensors decoded on ``device`` (nvJPEG on CUDA, in one batch), as stored
    (``upright`` applies the EXIF orientation); None for data the decoder refuses, so one bad file costs only itself.
    On CUDA the tensors are ready for the current stream's later work, like any tensor made on it.

    torchvision's decoders (deprecated since its 0.29 for TorchCodec's); ``read_image`` uses them only when told to.
    """
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    def decode() -> list[torch.Tensor | None]:
        tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
        try:
            return list(decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device))
        except RuntimeError:  # which one? each alone
            out: list[torch.Tensor | None] = []
            for t in tensors:
                try:
                    out.append(decode_jpeg(t, mode=ImageReadMode.RGB, device=device))
                except RuntimeError:
                    out.append(None)
            return out

    device = torch.device(device)
    if device.type != "cuda":
        return decode()
    # torchvision allocates the outputs on the current stream but writes them from its own stream without waiting
    # for the current one: a block freed with reads still queued on the current stream (the previous image's resize,
    # the last training step) would be overwritten under them. So the outputs come from a stream that queues nothing
    # but these decodes, and the current stream is told it uses them.
    current = torch.cuda.current_stream(device)
    nvjpeg = _nvjpeg_stream(current.device)
    with torch.cuda.stream(nvjpeg):
        out = decode()
    current.wait_stream(nvjpeg)
    for t in out:
        if t is not None:
            t.record_stream(current)  # not reused by the next decode before the current stream is done with it
    return out


@functools.cache
def _nvjpeg_stream(device: torch.device) -> torch.cuda.Stream:
    import torch

    return torch.cuda.Stream(device)


def _decode(im: Image.Image, data: bytes, path: Path, jpeg_decoder: JpegDecoder) -> np.ndarray | torch.Tensor:
    """``im`` is Pillow opened on ``data``, the file's bytes: OpenCV decodes the same bytes, never the file again."""
    # CMYK, YCCK, ...: Pillow's conversions, as documented; a file that ends early: Pillow reports the damage
    if im.format == "JPEG" and im.mode in ("RGB", "L") and _complete_jpeg(data):
        rgb = jpeg_decoder(data)
        if rgb is not None:
            return rgb
    if im.mode in ("RGB", "RGBA") and _has_16bit_samples(im):
        return _decode_16bit_color(data, path)
    if im.mode.startswith("I") or im.mode == "F":
        gray = _gray_to_uint8(im)
        return np.repeat(gray[..., None], 3, axis=2)
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")  # Pillow's documented route for palettes with a transparent entry
    return np.asarray(im.convert("RGB"))


def high_bit_depth(im: Image.Image) -> bool:
    """Whether Pillow's own RGB conversion of ``im`` would clip or truncate it: 16-bit, 32-bit or float samples."""
    return im.mode.startswith("I") or im.mode == "F" or (im.mode in ("RGB", "RGBA") and _has_16bit_samples(im))


def decode_high_bit_depth(im: Image.Image, data: bytes, name: str) -> np.ndarray:
    """Upright (H, W, 3) uint8 RGB of a ``high_bit_depth`` image Pillow opened on ``data``, scaled as ``read_image``
    scales it (a 16-bit gray PNG through Pillow's ``convert("RGB")`` comes out almost all white)."""
    return np.ascontiguousarray(upright(_decode(im, data, Path(name), _decode_jpeg), _exif_orientation(im)))


def read_image(path: str | Path, jpeg_decoder: JpegDecoder = _decode_jpeg) -> np.ndarray | torch.Tensor:
    """Read an image file as an upright (H, W, 3) uint8 RGB array; raises ``ImageReadError`` if it can't.

    The file is read once, whole, into memory: Pillow parses the header and EXIF from those bytes and OpenCV (for
    JPEGs) decodes the same bytes, instead of opening and reading the file a second time. ``jpeg_decoder`` replaces
    OpenCV for complete RGB and gray JPEGs: bytes -> (H, W, 3) uint8 pixels (an array, or a tensor, which is then
    what comes back: ``read_image_on_device``), or None to leave the file to Pillow.
    """
    path = Path(path)
    if not path.exists():
        raise ImageReadError(path, "no such file")
    if path.is_dir():
        raise ImageReadError(path, "is a folder, not an image file")
    if path.stat().st_size == 0:
        raise ImageReadError(path, "empty file (0 bytes)")
    try:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as im:
            rgb = _decode(im, data, path, jpeg_decoder)
            orientation = _exif_orientation(im)  # after decoding: reading a PNG's EXIF may load the pixels
    except ImageReadError:
        raise
    except UnidentifiedImageError as e:
        raise ImageReadError(path, "not an image in a format Pillow can read") from e
    except Exception as e:  # decoders raise many types on damaged data (OSError, SyntaxError, struct.error, ...)
        raise ImageReadError(path, f"damaged or unsupported image data ({type(e).__name__}: {e})") from e
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ImageReadError(path, f"decoded to an unusable array of shape {rgb.shape}")
    rgb = upright(rgb, orientation)
    return np.ascontiguousarray(rgb) if isinstance(rgb, np.ndarray) else rgb.contiguous()


def read_mask(path: str | Path) -> np.ndarray:
    """Read a foreground mask as an upright (H, W) bool array: True where any channel's stored value is non-zero.

    Stored values, not ``read_image``'s 8-bit RGB: a 16-bit label 1 would round to 0 and a palette's index 1 may be
    drawn in a colour without red. Palette images give their indices, 16-bit images their raw values; alpha is
    ignored; EXIF orientation is applied as for images. Raises ``ImageReadError`` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(path, "no such file" if not path.exists() else "is not a file")
    try:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as im:
            if not im.mode.startswith("I") and _has_16bit_samples(im):  # Pillow would keep only the high byte
                values = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)  # as stored, no rotation
                if values is None:
                    raise ImageReadError(path, "cannot decode 16-bit samples")
                if values.ndim == 3 and values.shape[2] in (2, 4):  # gray + alpha, BGR + alpha: alpha ignored
                    values = values[..., : values.shape[2] - 1]
            else:
                values = np.asarray(im)
                values = values[..., :-1] if im.mode in ("LA", "La", "PA", "RGBA", "RGBa") else values
            orientation = _exif_orientation(im)
    except ImageReadError:
        raise
    except UnidentifiedImageError as e:
        raise ImageReadError(path, "not an image in a format Pillow can read") from e
    except Exception as e:  # damaged data raises many types, as in read_image
        raise ImageReadError(path, f"damaged or unsupported image data ({type(e).__name__}: {e})") from e
    foreground = np.nan_to_num(values) != 0 if values.dtype.kind == "f" else values != 0
    if foreground.ndim == 3:
        foreground = foreground.any(axis=2)
    if foreground.ndim != 2 or 0 in foreground.shape:
        raise ImageReadError(path, f"decoded to an unusable mask of shape {values.shape}")
    return np.ascontiguousarray(upright(foreground, orientation))
