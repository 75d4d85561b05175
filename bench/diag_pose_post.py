"""Diagnostic (call 51): GPU time of the pose pipeline's work outside the model, per batch of 16 1080p images: the
heatmap decode on random (16, 308, 256, 192) bf16 maps, and the whole-image top-down crops. Profiles two calls each.

    python bench/diag_pose_post.py
"""
import torch

from opensapiens.benchmark import top_kernels
from opensapiens.codecs.heatmap import decode_udp_heatmaps
from opensapiens.inference.topdown import boxes_to_center_scale, crop_to_image, person_inputs

dev = torch.device("cuda")
heat = torch.randn(16, 308, 256, 192, device=dev, dtype=torch.bfloat16)
boxes = torch.tensor([[0, 0, 1920, 1080]] * 16, dtype=torch.float32)
center, scale = boxes_to_center_scale(boxes, padding=1.25, aspect=768 / 1024)
images = [torch.randint(0, 255, (3, 1080, 1920), device=dev, dtype=torch.uint8) for _ in range(16)]


def post():  # what PosePredictor does with a chunk's heatmaps on the device
    kp, sc = decode_udp_heatmaps(heat, (1024, 768))
    return crop_to_image(kp, center, scale, (1024, 768)), sc


def crops():
    return person_inputs(images, torch.arange(16), center, scale, (1024, 768), torch.bfloat16)


with torch.inference_mode():
    for _ in range(3):
        post()
        crops()
    print("POST")
    print(top_kernels(post, dev, calls=2, rows=12))
    print("CROPS")
    print(top_kernels(crops, dev, calls=2, rows=8))
