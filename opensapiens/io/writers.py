"""Writing outputs atomically: each file is written under a temporary name in its folder and renamed, so an
interrupted job never leaves a half-written output (and ``--resume`` can trust what exists).

Images go through OpenCV's encoders (RGB in, as everywhere in the package), arrays as ``.npy`` without pickling,
JSON with numpy/torch values and NaN (as ``null``) handled. Each writer returns the path it wrote.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import cv2
import numpy as np


def _read_umask() -> int:
    mask = os.umask(0)  # the only portable way to read it; done once, at import, before any writer thread exists
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def temp_sibling(path: str | Path) -> Path:
    """Create an empty hidden temporary file in ``path``'s folder (made if missing) and return its path.

    The name keeps the suffix, so writers that pick a format from the extension work unchanged; the caller
    ``os.replace``-s it onto ``path`` when done, or unlinks it on failure.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
    os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs get the permissions a plain open() would give
    os.close(fd)
    return Path(tmp)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path``, on error it is removed. The file
    gets the permissions a plain ``open()`` would give even if the writer made it anew (safetensors' does, 0600)."""
    tmp = temp_sibling(path)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _atomic_open(path: str | Path) -> Iterator[IO[bytes]]:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        yield f


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    with _atomic_open(path) as f:
        f.write(data)
    return Path(path)


def save_npy(path: str | Path, array: Any) -> Path:
    """Save an array as ``.npy`` (never pickled, so it reloads with ``np.load(path)`` safely)."""
    with _atomic_open(path) as f:
        np.save(f, np.asarray(array), allow_pickle=False)
    return Path(path)


def to_jsonable(obj: Any) -> Any:
    """Convert numpy/torch values, paths and dataclasses to plain JSON types; NaN and inf become ``None``."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj))
    if hasattr(obj, "detach") and hasattr(obj, "cpu"):  # torch.Tensor, without importing torch
        obj = obj.detach().cpu()
        if obj.is_floating_point() and obj.element_size() < 4:  # bf16, fp8: no numpy dtype; fp32 holds them exactly
            obj = obj.float()
        obj = obj.numpy()
    if isinstance(obj, (np.ndarray, np.generic)):
        if obj.dtype.kind == "f" and not np.isfinite(obj).all():
            return to_jsonable(obj.tolist())
        return obj.tolist()
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def save_json(path: str | Path, obj: Any, indent: int | None = None) -> Path:
    """Write JSON atomically; numpy scalars/arrays and tensors become numbers/lists, NaN/inf become ``null``."""
    text = json.dumps(to_jsonable(obj), indent=indent, allow_nan=False)
    return atomic_write_bytes(path, text.encode())


def _encode(path: str | Path, array: np.ndarray, ext: str, dtypes: tuple[type, ...], params: list[int]) -> bytes:
    a = np.asarray(array)
    if a.dtype not in dtypes or not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (1, 3, 4))):
        allowed = "/".join(np.dtype(d).name for d in dtypes)
        raise ValueError(f"cannot save {str(path)!r} as {ext}: expected a {allowed} array of shape (H, W), "
                         f"(H, W, 3) RGB or (H, W, 4) RGBA, got shape {a.shape} dtype {a.dtype}")
    if a.ndim == 3 and a.shape[2] == 3:
        a = a[..., ::-1]  # RGB -> BGR for OpenCV
    elif a.ndim == 3 and a.shape[2] == 4:
        a = a[..., [2, 1, 0, 3]]
    ok, buf = cv2.imencode(ext, np.ascontiguousarray(a), params)
    if not ok:
        raise ValueError(f"OpenCV could not encode {str(path)!r} as {ext}")
    return buf.tobytes()


def save_png(path: str | Path, array: np.ndarray, compression: int = 1, row_filters: bool | None = None) -> Path:
    """Save uint8 or uint16, (H, W) gray or (H, W, 3) RGB (or RGBA), as PNG, atomically.

    PNG's row filters are made for photos. ``row_filters=None`` skips them for (H, W) uint8 arrays (label maps,
    masks): a 1080p label map encodes in 3.4 ms instead of 11.5 (OpenCV 5.0, this package's development machine),
    into ~33 kB instead of ~16. ``False`` skips them for any picture of flat colours (an OpenPose drawing on black,
    1080p: 12 ms instead of 51, 53 kB instead of 41)."""
    params = [cv2.IMWRITE_PNG_COMPRESSION, compression]
    if row_filters is None:
        row_filters = not (np.ndim(array) == 2 and np.asarray(array).dtype == np.uint8)
    if not row_filters and hasattr(cv2, "IMWRITE_PNG_FILTER"):
        params += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE]  # (OpenCV >= 4.10 has the option)
    return atomic_write_bytes(path, _encode(path, array, ".png", (np.uint8, np.uint16), params))


def save_jpg(path: str | Path, array: np.ndarray, quality: int = 95) -> Path:
    """Save uint8 (H, W) gray or (H, W, 3) RGB as JPEG, atomically."""
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[2] == 4:
        raise ValueError(f"cannot save {str(path)!r} as JPEG: it has no alpha channel; drop it first")
    return atomic_write_bytes(path, _encode(path, a, ".jpg", (np.uint8,), [cv2.IMWRITE_JPEG_QUALITY, quality]))


def save_ply(path: str | Path, points: np.ndarray, colors: np.ndarray | None = None,
             mask: np.ndarray | None = None) -> Path:
    """A point cloud as binary little-endian PLY (x, y, z float32; red, green, blue uint8 with ``colors``), atomically.

    ``points`` (H, W, 3) or (N, 3); ``colors`` the same shape in uint8 (an image for a pointmap); only finite points
    (and those inside ``mask``) are written, in row-major order. Meshlab, Open3D, CloudCompare and Blender read it.
    """
    points = np.asarray(points, dtype=np.float32).reshape(-1, 3)
    keep = np.isfinite(points).all(1)
    if mask is not None:
        keep &= np.asarray(mask, dtype=bool).reshape(-1)
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if colors is not None:
        colors = np.asarray(colors).reshape(-1, 3)
        if colors.shape != points.shape or colors.dtype != np.uint8:
            raise ValueError(f"colors must be uint8 of the points' shape {points.shape}, got {colors.shape} "
                             f"{colors.dtype}")
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    rows = np.empty(int(keep.sum()), dtype=fields)
    for i, axis in enumerate("xyz"):
        rows[axis] = points[keep, i]
    if colors is not None:
        for i, channel in enumerate(("red", "green", "blue")):
            rows[channel] = colors[keep, i]
    kinds = {"<f4": "float", "u1": "uchar"}
    header = "ply\nformat binary_little_endian 1.0\n" + f"element vertex {len(rows)}\n" + "".join(
        f"property {kinds[t]} {name}\n" for name, t in fields) + "end_header\n"
    return atomic_write_bytes(path, header.encode("ascii") + rows.tobytes())
