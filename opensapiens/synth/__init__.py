"""Procedural humans with exact labels for pose (308 keypoints), body-part segmentation, depth and normals.

A person is a union of round cones and ellipsoids on an articulated skeleton (with jointed fingers), dressed
with garments made of the same primitives. Scenes of 1-4 people are ray cast exactly (closed-form
intersections), so depth, normals, part labels, instance masks and keypoint visibility are exact and consistent.

Entry points:
    write_dataset(out, n, height, width, seed)   files + COCO annotations (also ``opensapiens synth``)
    SyntheticHumans(height, width, batch_size, device=...)   endless batches on the GPU for training
    sample_scenes / render_scenes                scene-level control (tests, custom scenes)
    SYNTH_VAL                                    the fixed validation split used by the benchmarks
See docs/synthetic.md for conventions.
"""

from .dataset import PRESETS, SYNTH_VAL, Preset, SyntheticHumans, render_indices, write_dataset
from .people import Person, sample_person
from .render import SynthBatch, render_scenes
from .scene import Camera, Scene, sample_scenes

__all__ = ["PRESETS", "SYNTH_VAL", "Camera", "Person", "Preset", "Scene", "SynthBatch", "SyntheticHumans",
           "render_indices", "render_scenes", "sample_person", "sample_scenes", "write_dataset"]
