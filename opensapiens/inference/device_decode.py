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

from ..io.images import decode_jpegs, read_image
from .streams import as_tensor, cuda_device, side_stream


def read_image_on_device(path: str | Path, device: torch.device) -> torch.Tensor:
    """An image file as an upright (H, W, 3) uint8 RGB tensor: ``read_image`` with JPEGs decoded on ``device``
    (other files, and JPEGs the decoder refuses, decoded on the host: a host tensor, uploaded with the batch).
    Raises ``ImageReadError`` like ``read_image``.

    Meant for loader threads: on CUDA the decode runs on a side stream and the calling thread waits for it, so the
    tensor is ready when returned (its consumer's stream must still ``record_stream`` it, as ``upload_images`` does).
    """
    def decode(data: bytes) -> torch.Tensor | None:
        (chw,) = decode_jpegs([data], device)
        return None if chw is None else chw.permute(1, 2, 0)

    cuda = device.type == "cuda"
    stream = side_stream(cuda_device(device), "decode") if cuda else None
    with torch.cuda.stream(stream) if cuda else contextlib.nullcontext():
        pixels = read_image(path, jpeg_decoder=decode)  # the EXIF turn applied on the device too
        if cuda:
            stream.synchronize()  # this thread waits for its image, the model's stream does not
    return as_tensor(pixels)
