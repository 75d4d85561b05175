"""The picture video's encoder-thread costs on this host, side by side: RGB -> yuv420p through swscale (PyAV's
``from_ndarray`` in rgb24, what ``VideoWriter`` did before) and through ``io.video.rgb_to_yuv420p`` (OpenCV), and
x264's speed and bytes per frame at a few presets (crf 18), on sliced and on frame threads, on 1080x3840
side-by-side pictures of a ``bench/make_video.py`` clip (seg's picture size; pose's is half as wide).

Usage: python bench/video_encode.py [--frames 40] [--out bench/results/video_encode_cpu.json]
"""
import argparse
import io
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np

from opensapiens.io import iter_video_frames
from opensapiens.io.video import rgb_to_yuv420p


def per_call_ms(fn, items) -> float:
    fn(items[0])  # warm-up
    t0 = time.perf_counter()
    for item in items:
        fn(item)
    return (time.perf_counter() - t0) / len(items) * 1e3


def encode(planes: list[np.ndarray], preset: str, threads: str = "FRAME") -> tuple[float, float]:
    """(ms per frame, kB per frame) of x264 at ``preset`` on yuv420p frames, threaded by ``threads``: "FRAME"
    (x264's frame threads, what ``VideoWriter`` asks for) or "SLICE" (PyAV's default: x264's sliced threads)."""
    h, w = planes[0].shape[0] * 2 // 3, planes[0].shape[1]
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": "18", "preset": preset}
        stream.codec_context.thread_type = threads
        t0 = time.perf_counter()
        for p in planes:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(p, format="yuv420p")))
        container.mux(stream.encode())
        ms = (time.perf_counter() - t0) / len(planes) * 1e3
    return ms, len(buf.getvalue()) / len(planes) / 1e3


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--frames", type=int, default=40)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "clip.mp4"
        subprocess.run([sys.executable, str(Path(__file__).with_name("make_video.py")), "--frames", str(args.frames),
                        "--size", "1080x1920", "--out", str(clip)], check=True, stdout=subprocess.DEVNULL)
        frames = [f for _, f in iter_video_frames(clip)]
    pictures = [np.ascontiguousarray(np.concatenate([f, f[:, ::-1] // 2 + 60], 1)) for f in frames]  # 1080x3840
    result = {
        "picture_hw": list(pictures[0].shape[:2]),
        "swscale_rgb_to_yuv420p_ms": per_call_ms(
            lambda a: av.VideoFrame.from_ndarray(a, format="rgb24").reformat(format="yuv420p"), pictures),
        "opencv_rgb_to_yuv420p_ms": per_call_ms(rgb_to_yuv420p, pictures),
    }
    planes = [rgb_to_yuv420p(a) for a in pictures]
    for preset in ("veryfast", "superfast", "ultrafast"):
        for threads in ("SLICE", "FRAME"):
            ms, kb = encode(planes, preset, threads)
            result[f"x264_{preset}_{threads.lower()}_threads"] = {"ms_per_frame": round(ms, 1),
                                                                   "kB_per_frame": round(kb)}
    result["swscale_over_opencv"] = round(result["swscale_rgb_to_yuv420p_ms"] / result["opencv_rgb_to_yuv420p_ms"], 1)
    for k in ("swscale_rgb_to_yuv420p_ms", "opencv_rgb_to_yuv420p_ms"):
        result[k] = round(result[k], 2)
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
