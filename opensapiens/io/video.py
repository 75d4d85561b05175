"""Video frames in and out through PyAV (``pip install av``), as RGB uint8 arrays.

Frames are returned upright: a rotation stored in the stream's display matrix (phone videos) is applied, as players
do. ``VideoWriter`` writes H.264 (MPEG-4 part 2 if no H.264 encoder is built in; VP9 for ``.webm``) to a temporary
file that replaces the destination only when the writer closes without error.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import ModuleType, TracebackType

import cv2
import numpy as np

from .images import ImageReadError
from .writers import temp_sibling


def _import_av() -> ModuleType:
    try:
        import av
    except ImportError as e:
        raise ImportError("video input/output needs PyAV: pip install av  (or pip install 'opensapiens[video]')") from e
    return av


def _upright(frame, array: np.ndarray) -> np.ndarray:
    """Apply the display-matrix rotation (degrees counter-clockwise; PyAV >= 14 exposes it as ``frame.rotation``)."""
    turns = round(getattr(frame, "rotation", 0) / 90) % 4
    return np.ascontiguousarray(np.rot90(array, turns)) if turns else array


@dataclass(frozen=True)
class VideoInfo:
    fps: float
    num_frames: int | None  # from the container header; None when it does not say
    size: tuple[int, int]  # (H, W) of the upright frames
    duration: float | None  # seconds


def video_info(path: str | Path) -> VideoInfo:
    """Frame rate, frame count (if the container stores it) and upright frame size; decodes only the first frame."""
    av = _import_av()
    try:
        with av.open(str(path)) as container:
            stream = _video_stream(container, path)
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            duration = float(stream.duration * stream.time_base) if stream.duration and stream.time_base else None
            if duration is None and container.duration:
                duration = container.duration / 1e6  # container duration is in AV_TIME_BASE (microseconds)
            first = next(_decoded(av, container, stream, path), None)
            if first is None:
                raise ImageReadError(path, "video stream has no decodable frames")
            turns = round(getattr(first, "rotation", 0) / 90) % 2
            size = (first.width, first.height) if turns else (first.height, first.width)
            return VideoInfo(float(rate) if rate else 0.0, stream.frames or None, size, duration)
    except av.FFmpegError as e:
        raise ImageReadError(path, f"cannot open video ({e})") from e


def iter_video_frames(path: str | Path, step: int = 1, times: bool = False) -> Iterator[tuple]:
    """Yield ``(index, frame)`` for every ``step``-th decoded frame: index counts decoded frames from 0, frame is an
    upright (H, W, 3) uint8 RGB array. With ``times``, ``(index, frame, seconds)``: the frame's presentation time
    from the start of the video, as players count it (the container's start time subtracted: MPEG-TS streams and
    cut files start at seconds > 0), None where the container gives none; it still places a frame after damaged
    frames were dropped."""
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    av = _import_av()
    index = -1
    try:
        with av.open(str(path)) as container:
            stream = _video_stream(container, path)
            stream.thread_type, stream.thread_count = "AUTO", DECODE_THREADS
            start = (container.start_time or 0) / 1e6  # in AV_TIME_BASE (microseconds)
            for index, frame in enumerate(_decoded(av, container, stream, path)):
                if index % step == 0:
                    image = _upright(frame, frame.to_ndarray(format="rgb24"))
                    if not times:
                        yield index, image
                    else:
                        yield index, image, None if frame.time is None else frame.time - start
    except av.FFmpegError as e:
        where = "cannot open video" if index < 0 else f"decoding failed after frame {index}"
        raise ImageReadError(path, f"{where} ({e}; a truncated or damaged file?)") from e


MAX_DAMAGED_IN_A_ROW = 25  # packets the decoder rejects in a row before the rest of a video counts as lost
DECODE_THREADS = 0  # FFmpeg's choice: about one per core


def _video_stream(container, path: str | Path):
    """The main video stream: FFmpeg's best, which passes over cover art stored as a one-frame video stream."""
    stream = container.streams.best("video")
    if stream is None:
        media = any(s.type in ("video", "audio") for s in container.streams)
        raise ImageReadError(path, "contains no video stream" + ("" if media else
                                                                 " (nor audio: a truncated or unfinished file?)"))
    return stream


def _decoded(av: ModuleType, container, stream, path: str | Path) -> Iterator:
    """The stream's frames, packet by packet: a damaged packet (one the decoder rejects) is skipped with a warning,
    as players do, instead of ending the video there; ``MAX_DAMAGED_IN_A_ROW`` in a row raise.

    Decoding on many threads (one per core) reports a rejected packet some packets late, and one among the last
    packets not at all: the decoder's final drain stops there and the frames its threads held are gone without an
    error (12 of 40 on 16 threads, call 115). Counting packets against frames tells of those.
    """
    damaged = in_a_row = sent = received = 0
    for packet in container.demux(stream):
        sent += bool(packet.size) and not packet.is_discard  # (an edit list's discarded packets give no frame)
        try:
            frames = packet.decode()
        except av.InvalidDataError:
            damaged, in_a_row = damaged + 1, in_a_row + 1
            if in_a_row >= MAX_DAMAGED_IN_A_ROW:
                raise
            continue
        in_a_row = 0
        received += len(frames)
        yield from frames
    lost = sent - damaged - received
    if damaged:
        warnings.warn(f"{path}: skipped {damaged} damaged packet(s) the decoder rejected", stacklevel=2)
    if lost > 0:
        warnings.warn(f"{path}: {lost} packet(s) near the end decoded to no frame (the decoder drops damaged data "
                      f"there without an error when it decodes on several threads)", stacklevel=2)


def rgb_to_yuv420p(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB with even H and W -> (3H/2, W) uint8 yuv420p planes (Y, then U, then V, each plane's rows
    packed as FFmpeg lays them out): BT.601 video range, as swscale converts them, each chroma sample the mean of its
    2x2 block. In OpenCV this costs 3.5 ms for a 1080x3840 picture on 2 cores; swscale (PyAV's ``from_ndarray`` in
    rgb24) spent ~30 ms on one, on the encoder thread that every picture of a video goes through in turn."""
    h, w = rgb.shape[:2]
    planes = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420)  # its Y is the one wanted; its U, V sample one pixel per block
    blocks = cv2.resize(rgb, (w // 2, h // 2), interpolation=cv2.INTER_AREA)  # (H/2, W/2, 3): 2x2 block means
    ycrcb = cv2.cvtColor(blocks, cv2.COLOR_RGB2YCrCb)  # full-range chroma, 128 +- 127.5
    video = cv2.convertScaleAbs(ycrcb, alpha=224 / 255, beta=128 * (1 - 224 / 255))  # video range: 128 +- 112
    flat, quarter = planes.reshape(-1), h * w // 4  # the chroma planes are H/2 rows of W/2: not whole rows of W
    flat[h * w:h * w + quarter] = video[..., 2].ravel()  # Cb
    flat[h * w + quarter:] = video[..., 1].ravel()  # Cr
    return planes


_ENCODERS = {".webm": ("libvpx-vp9", "libvpx")}
_DEFAULT_ENCODERS = ("libx264", "h264", "mpeg4")


class VideoWriter:
    """Write RGB uint8 frames to a video file; use as a context manager.

    ``size`` is (H, W); if omitted, the first frame sets it. Frames of another size raise ``ValueError``. H.264 with
    yuv420p needs even sides, so odd-sized frames are padded by one replicated row/column at the bottom/right.
    If the ``with`` block raises, ``abort()`` is called, or nothing was written, no file is left at ``path``.
    """

    def __init__(self, path: str | Path, fps: float = 30.0, size: tuple[int, int] | None = None, crf: int = 18,
                 preset: str | None = None):
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.path = Path(path)
        self.fps = fps
        self.size = None if size is None else (int(size[0]), int(size[1]))
        self.crf = crf
        self.preset = preset  # x264's speed/size trade-off (None: its default, "medium"); other encoders ignore it
        self.frames_written = 0
        self._av = _import_av()
        self._tmp: Path | None = temp_sibling(self.path)
        self._container = None
        self._stream = None

    def _open(self, height: int, width: int) -> None:
        av = self._av
        self._container = av.open(str(self._tmp), mode="w")
        rate = Fraction(self.fps).limit_denominator(1001)
        errors = []
        for codec in _ENCODERS.get(self.path.suffix.lower(), _DEFAULT_ENCODERS):
            try:
                stream = self._container.add_stream(codec, rate=rate)
            except (av.FFmpegError, ValueError) as e:  # encoder not built into this FFmpeg
                errors.append(f"{codec}: {e}")
                continue
            stream.width, stream.height = width + width % 2, height + height % 2
            stream.pix_fmt = "yuv420p"
            # tagged as rgb_to_yuv420p converts (BT.601 matrix, video range): untagged HD is taken for BT.709
            stream.codec_context.colorspace, stream.codec_context.color_range = 6, 1  # SMPTE 170M, MPEG range
            if codec in ("libx264", "libvpx-vp9"):
                stream.options = {"crf": str(self.crf)}
                if codec == "libx264" and self.preset:
                    stream.options = {**stream.options, "preset": self.preset}
                if codec == "libx264":  # x264's frame threads: PyAV's default (slice) asks for its sliced threads,
                    stream.codec_context.thread_type = "FRAME"  # made for latency, slower in throughput
            else:  # bitrate-driven encoders: ~0.2 bit per pixel keeps people's edges sharp
                stream.bit_rate = max(int(stream.width * stream.height * float(rate) * 0.2), 1_000_000)
            self._stream = stream
            return
        raise RuntimeError(f"no usable video encoder for {str(self.path)!r}: {'; '.join(errors)}")

    def write(self, frame: np.ndarray) -> None:
        """Append one (H, W, 3) uint8 RGB frame."""
        if self._tmp is None:
            raise ValueError(f"VideoWriter for {str(self.path)!r} is closed")
        a = np.asarray(frame)
        if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
            raise ValueError(f"video frames must be (H, W, 3) uint8 RGB, got shape {a.shape} dtype {a.dtype}")
        if self.size is None:
            self.size = a.shape[:2]
        if a.shape[:2] != self.size:
            raise ValueError(f"frame {self.frames_written} of {str(self.path)!r} has size {a.shape[:2]}, "
                             f"expected {self.size} (H, W)")
        if self._stream is None:
            self._open(*self.size)
        h, w = self.size
        if h % 2 or w % 2:
            a = np.pad(a, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        video_frame = self._av.VideoFrame.from_ndarray(rgb_to_yuv420p(np.ascontiguousarray(a)), format="yuv420p")
        self._container.mux(self._stream.encode(video_frame))
        self.frames_written += 1

    def close(self) -> None:
        """Flush the encoder and move the finished file to ``path``."""
        self._finish(commit=True)

    def abort(self) -> None:
        """Discard what was written: nothing is left at ``path`` (a file already there stays as it was)."""
        self._finish(commit=False)

    def _finish(self, commit: bool) -> None:
        if self._tmp is None:
            return
        tmp, self._tmp = self._tmp, None
        try:
            if self._container is not None:
                try:
                    if commit:
                        self._container.mux(self._stream.encode())  # flush the encoder's delayed frames
                finally:
                    self._container.close()
            if commit and self.frames_written == 0:
                raise ValueError(f"no frames were written to {str(self.path)!r}")
            if commit:
                os.replace(tmp, self.path)
        finally:
            if tmp.exists():
                tmp.unlink()

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._finish(commit=exc_type is None)

    def __del__(self) -> None:  # dropped without close(): leave no temporary file behind
        with contextlib.suppress(Exception):
            self._finish(commit=False)
