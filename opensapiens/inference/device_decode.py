"""Reading images straight onto the model's device: ``run_batch(decode="device")``, ``predict --decode device``.

JPEGs are decoded by nvJPEG on CUDA (torchvision's decoder; on another device by its host decoder) and come back as
upright (H, W, 3) uint8 tensors on the device, which the predictors take like host arrays. Anything else (PNG, CMYK
JPEGs, damaged files) is read on the host by ``read_image``, with its conversions and its errors.

Host decoding is the default: nvJPEG's kernels share the SMs with the model (about 1 ms of GPU time per 1080p JPEG,
a seventh of pose-0.3B's model time), while a machine with a few free cores decodes the same stream on its loader
threads without touching the GPU (docs/performance.md). Decoding on the device pays on a machine with few cores per
GPU.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from ..io.images import decode_jpegs, read_image, read_jpeg_bytes, upright
from .streams import _cuda_device, _writable, side_stream


def read_image_on_device(path: str | Path, device: torch.device) -> torch.Tensor:
    """An image file as an upright (H, W, 3) uint8 RGB tensor: JPEGs decoded on ``device``; other files read on the
    host (a host tensor, uploaded with the batch). Raises ``ImageReadError`` like ``read_image``.

    Meant for loader threads: on CUDA the decode runs on a side stream and the calling thread waits for it, so the
    tensor is ready when returned (its consumer's stream must still ``record_stream`` it, as ``upload_images`` does).
    """
    jpeg = read_jpeg_bytes(path)
    if jpeg is None:
        return torch.from_numpy(_writable(read_image(path)))
    data, orientation = jpeg
    cuda = device.type == "cuda"
    stream = side_stream(_cuda_device(device), "decode") if cuda else None
    with torch.cuda.stream(stream) if cuda else contextlib.nullcontext():
        (chw,) = decode_jpegs([data], device)
        if chw is None:  # data the decoder refuses: the host reader decodes it or names the damage
            return torch.from_numpy(_writable(read_image(path)))
        pixels = upright(chw.permute(1, 2, 0), orientation).contiguous()  # (H, W, 3) on the device
        if cuda:
            stream.synchronize()  # this thread waits for its image, the model's stream does not
    return pixels
