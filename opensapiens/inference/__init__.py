"""Inference: person detection, top-down crops and the task predictors."""

from .topdown import boxes_to_center_scale, crop_people, crop_to_image, flip_test, image_to_crop, udp_affine

__all__ = ["PersonDetector", "boxes_to_center_scale", "crop_people", "crop_to_image", "flip_test", "image_to_crop",
           "load_detections", "udp_affine"]


def __getattr__(name: str):
    """The detector on first use: torchvision's import pulls in torch.compile's machinery (~5 s on the GPU host,
    call 54), which a predictor without a detector should not wait for."""
    if name in ("PersonDetector", "load_detections"):
        from . import detector

        return getattr(detector, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
