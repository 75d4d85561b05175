"""Inference: person detection, top-down crops and the task predictors."""

from .detector import PersonDetector, load_detections
from .topdown import boxes_to_center_scale, crop_people, crop_to_image, flip_test, image_to_crop, udp_affine

__all__ = ["PersonDetector", "boxes_to_center_scale", "crop_people", "crop_to_image", "flip_test", "image_to_crop",
           "load_detections", "udp_affine"]
