"""Contact sheets of rendered samples and their labels (the README's docs/images/synth_grid.png).

    python -m opensapiens.synth.preview docs/images/synth_grid.png
"""

from __future__ import annotations

import sys

import cv2
import numpy as np

from ..metadata import seg_classes
from ..visualize import colorize_depth, colorize_normals, colorize_seg, draw_pose, side_by_side
from .render import SynthBatch


def label_panels(batch: SynthBatch, i: int) -> list[np.ndarray]:
    """Image with keypoints (visible ones), part labels, depth, normals and instances of sample ``i`` (RGB uint8)."""
    image = batch.image[i].permute(1, 2, 0).cpu().numpy()
    fg = batch.instance[i].cpu().numpy() > 0
    kp = batch.keypoints[i].cpu().numpy()[batch.person_valid[i].cpu().numpy()]
    pose = draw_pose(image, kp[..., :2], (kp[..., 2] == 2).astype(np.float32), "goliath", threshold=0.5)
    instances = colorize_seg(batch.instance[i].cpu().numpy(), [(40, 40, 40), (230, 80, 60), (70, 170, 230),
                                                              (240, 200, 60), (120, 220, 120)])
    return [pose, colorize_seg(batch.seg[i].cpu().numpy(), seg_classes("goliath")),
            colorize_depth(batch.depth[i].cpu().numpy(), fg), colorize_normals(
                batch.normal[i].permute(1, 2, 0).cpu().numpy(), fg), instances]


def contact_sheet(batch: SynthBatch, columns: int = 5, labelled: int = 1, scale: float = 0.75) -> np.ndarray:
    """Rows of images, then one row of label panels for each of the first ``labelled`` samples."""
    images = [batch.image[i].permute(1, 2, 0).cpu().numpy() for i in range(labelled, batch.image.shape[0])]
    rows = [side_by_side(images[r:r + columns]) for r in range(0, len(images) - columns + 1, columns)]
    rows += [side_by_side(label_panels(batch, i)) for i in range(labelled)]
    width = min(r.shape[1] for r in rows)
    sheet = np.concatenate([r[:, :width] for r in rows], 0)
    return cv2.resize(sheet, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)


def main(path: str) -> None:
    from ..io import save_png
    from .dataset import render_indices

    batch = render_indices(list(range(11)), seed=2024, height=512, width=384)
    save_png(path, contact_sheet(batch), compression=9)
    print(f"wrote {path}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs/images/synth_grid.png")
