"""Training batches rendered on the fly by ``opensapiens.synth`` (``--data synth``), in the loader's format.

Each rank renders its own micro-batches: micro-batch j of rank r is generator batch j * world_size + r, and the
generator renders image i from its own stream (seed, i); so the stream is reproducible, disjoint across ranks and
resumes at any position without state. Batches come out on the rendering device (the GPU when training on one).

    seg / depth / normal   whole scenes (1-4 people) at the input size: labels, foreground mask, depth, normals
    pointmap               the same scenes: metric points from the depth and the camera, and the camera matrix
    pose                   one person per scene (the largest visible one), cropped top-down with the UDP affine at
                           the input size (box padding 1.25, as the official validation crop; for a Sapiens2 model
                           bicubic where the crop magnifies, ``cubic_enlarging``); 308 keypoints
The generator already varies people, poses, clothes, cameras, lighting and backgrounds, so no further
augmentation is applied.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from ..inference.topdown import boxes_to_center_scale, crop_people, image_to_crop
from ..tasks.pointmap import camera_matrix, unproject


class SynthStream:
    def __init__(self, task: str, input_size: tuple[int, int], batch_size: int, seed: int = 0,
                 device: torch.device | str = "cpu", backgrounds: str | None = None, rank: int = 0,
                 world_size: int = 1, start: int = 0, cubic_enlarging: bool = False):
        from ..synth import SyntheticHumans

        self.task, self.input_size, self.cubic_enlarging = task, tuple(input_size), cubic_enlarging
        self.rank, self.world, self.start = rank, world_size, start
        self.source = SyntheticHumans(*self.input_size, batch_size=batch_size, seed=seed, device=device,
                                      backgrounds=backgrounds)

    def __iter__(self) -> Iterator[dict]:
        j = self.start
        while True:
            yield self.convert(self.source.batch(j * self.world + self.rank))
            j += 1

    def convert(self, b) -> dict:
        valid = torch.ones(b.image.shape[0], dtype=torch.bool, device=b.image.device)
        if self.task != "pose":
            out = {"image": b.image.permute(0, 2, 3, 1), "valid": valid}  # (B, H, W, 3) like the loader
            if self.task == "seg":
                out["labels"] = b.seg
            else:
                out["mask"] = (b.instance > 0).to(torch.uint8)
                if self.task == "depth":
                    out["depth"] = b.depth
                elif self.task == "pointmap":
                    out["intrinsics"] = camera_matrix(b.intrinsics)
                    out["points"] = unproject(b.depth, out["intrinsics"])
                    out["mask"] &= (b.depth > 0).to(torch.uint8)
                else:
                    out["normals"] = b.normal.permute(0, 2, 3, 1)
            return out
        areas = torch.where(b.person_valid, b.areas, torch.full_like(b.areas, -1.0))
        slot = areas.argmax(dim=1)  # (B,) largest visible person of each scene
        idx = torch.arange(len(slot), device=slot.device)
        x, y, w, h = b.boxes[idx, slot].unbind(-1)
        H, W = self.input_size
        center, scale = boxes_to_center_scale(torch.stack([x, y, x + w, y + h], -1), 1.25, W / H)
        crops = crop_people(list(b.image), idx, center, scale, self.input_size,  # (B, 3, H, W) float 0-255
                            cubic_enlarging=self.cubic_enlarging)
        kp = b.keypoints[idx, slot]  # (B, 308, 3)
        return {"image": crops.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1), "valid": valid,
                "keypoints": image_to_crop(kp[..., :2], center, scale, self.input_size),
                "visible": (kp[..., 2] > 0).float(), "center": center, "scale": scale}
