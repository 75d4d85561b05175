"""Reading inputs (images, videos, input lists) and writing outputs atomically."""

from .images import (
    IMAGE_EXTENSIONS,
    VIDEO_EXTENSIONS,
    ImageReadError,
    is_image,
    is_video,
    list_inputs,
    read_image,
    read_mask,
)
from .video import VideoInfo, VideoWriter, iter_video_frames, video_info
from .writers import atomic_path, atomic_write_bytes, save_jpg, save_json, save_npy, save_png, to_jsonable

__all__ = [
    "IMAGE_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "ImageReadError",
    "VideoInfo",
    "VideoWriter",
    "atomic_path",
    "atomic_write_bytes",
    "is_image",
    "is_video",
    "iter_video_frames",
    "list_inputs",
    "read_image",
    "read_mask",
    "save_jpg",
    "save_json",
    "save_npy",
    "save_png",
    "to_jsonable",
    "video_info",
]
