"""Scenes: a perspective camera, 1-4 people standing on the floor, a background and a light.

World frame: y up, the floor is y = 0, the camera centre is at (0, height, 0) looking along -z, pitched about
the x axis (no roll). Camera frame: X right, Y up, Z toward the viewer (the camera looks down -Z).

Sampling is per image from its own seed, so an image does not depend on the batch it is rendered in; the
first person ("subject") is framed to fill 45-95 % of the image height, the others stand around at random
distances and may hide parts of each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch

from .background import sample_background
from .body import build_primitives, pose_bodies
from .people import Person, sample_person, stack_people
from .shading import sample_light


@dataclass
class Camera:
    """Pinhole camera: intrinsics in pixels (pixel centres at integers), centre height (m), pitch (rad, + = up)."""

    fx: float
    fy: float
    cx: float
    cy: float
    height: float = 1.5
    pitch: float = 0.0

    def world_to_camera(self) -> tuple[np.ndarray, np.ndarray]:
        """(R, t) with p_cam = R @ p_world + t."""
        c, s = np.cos(self.pitch), np.sin(self.pitch)
        R = np.array([[1.0, 0.0, 0.0], [0.0, c, s], [0.0, -s, c]])  # rotation about x by -pitch
        return R, -R @ np.array([0.0, self.height, 0.0])

    @property
    def intrinsics(self) -> tuple[float, float, float, float]:
        return self.fx, self.fy, self.cx, self.cy


@dataclass
class Scene:
    """Everything one image shows; render with ``render.render_scenes``."""

    camera: Camera
    people: list[Person]
    background: dict = field(default_factory=dict)  # background.sample_background(); + image/crop for photos
    light: dict = field(default_factory=dict)  # shading.sample_light()
    seed: int = 0  # texture and noise seed

    def mirrored(self, width: int) -> Scene:
        """The mirror image (left-right) of the scene, as seen in an image ``width`` pixels wide."""
        cam = replace(self.camera, cx=width - 1 - self.camera.cx)
        light = dict(self.light)
        if "direction" in light:
            light["direction"] = np.asarray(light["direction"]) * np.array([-1.0, 1.0, 1.0])
        return replace(self, camera=cam, people=[p.mirrored() for p in self.people], light=light)


def _facing_yaw(rng: np.random.Generator) -> float:
    """Heading relative to facing the camera: mostly frontal, sometimes sideways or turned away."""
    r = rng.random()
    if r < 0.5:
        return float(rng.uniform(-0.8, 0.8))
    if r < 0.78:
        return float(rng.choice([-1, 1]) * rng.uniform(0.8, 2.3))
    return float(np.pi + rng.uniform(-0.8, 0.8))


def person_extents(people: list[Person]) -> np.ndarray:
    """(P, 2, 3) min/max corners of each person's posed body in its own ground frame (feet on y = 0)."""
    tensors = stack_people(people, "cpu")
    bodies = pose_bodies(tensors)
    prims, _ = build_primitives(tensors, bodies, torch.zeros(len(people), dtype=torch.long))
    lo, hi = prims.boxes()
    index = prims.person[:, None].expand(-1, 3)
    lo = torch.full((len(people), 3), torch.inf).scatter_reduce(0, index, lo, "amin")
    hi = torch.full((len(people), 3), -torch.inf).scatter_reduce(0, index, hi, "amax")
    return torch.stack([lo, hi], 1).numpy()


def _yawed_box(ext: np.ndarray, yaw: float) -> np.ndarray:
    corners = np.array([[x, y, z] for x in ext[:, 0] for y in ext[:, 1] for z in ext[:, 2]])
    c, s = np.cos(yaw), np.sin(yaw)
    rot = corners @ np.array([[c, 0, -s], [0, 1, 0], [s, 0, c]])
    return np.stack([rot.min(0), rot.max(0)])


def sample_scenes(seeds: list, height: int, width: int, max_people: int = 4,
                  num_background_images: int = 0) -> list[Scene]:
    """One scene per seed (anything ``np.random.default_rng`` accepts).

    With ``num_background_images`` > 0, 80 % of the scenes use one of those images (by index) as background.
    """
    rngs = [np.random.default_rng(s) for s in seeds]
    crowds = []
    for rng in rngs:
        n = int(rng.choice([1, 2, 3, 4], p=[0.45, 0.3, 0.15, 0.1]))
        crowds.append([sample_person(rng) for _ in range(min(n, max_people))])
    extents = person_extents([p for crowd in crowds for p in crowd])
    scenes, k = [], 0
    for rng, crowd in zip(rngs, crowds):
        ext = extents[k:k + len(crowd)]
        k += len(crowd)
        scenes.append(_place(rng, crowd, ext, height, width, num_background_images))
    return scenes


def _place(rng: np.random.Generator, crowd: list[Person], ext: np.ndarray, height: int, width: int,
           num_background_images: int) -> Scene:
    vfov = np.radians(rng.uniform(30, 70))
    f = 0.5 * height / np.tan(0.5 * vfov)
    half_h = np.arctan(0.5 * width / f)  # horizontal half field of view
    subject = crowd[0]
    rel_yaw = _facing_yaw(rng)
    box = _yawed_box(ext[0], rel_yaw)
    fill = rng.uniform(0.45, 0.95)
    size_y = box[1, 1] - box[0, 1]
    size_x = box[1, 0] - box[0, 0]
    dist = max(f * size_y / (fill * height), f * size_x / (0.95 * width), 0.6) + 0.5 * (box[1, 2] - box[0, 2])
    centre_y = 0.5 * (box[0, 1] + box[1, 1])
    cam_h = float(np.clip(centre_y + rng.uniform(-0.5, 0.7) * size_y, 0.2, 3.0))
    pitch = float(np.arctan2(centre_y - cam_h, dist) + np.radians(rng.uniform(-4, 4)))
    lateral = np.tan(rng.uniform(-0.25, 0.25) * half_h) * dist
    # the pose's box centre is not the root: shift so that the box centre lands on the chosen spot
    bx = 0.5 * (box[0, 0] + box[1, 0])
    subject.x, subject.z = float(lateral - bx), float(-dist)
    subject.yaw = float(np.arctan2(-subject.x, -subject.z) + rel_yaw)
    placed = [subject]
    for other, e in zip(crowd[1:], ext[1:]):
        for _ in range(10):
            d = float(max(dist + rng.uniform(-1.2, 3.5), 0.75 * dist, 1.5))
            x = float(np.tan(rng.uniform(-0.9, 0.9) * half_h) * d)
            radius = 0.5 * max(e[1, 0] - e[0, 0], e[1, 2] - e[0, 2])
            if all(np.hypot(x - p.x, -d - p.z) > 0.35 + radius for p in placed):
                other.x, other.z = x, -d
                other.yaw = float(np.arctan2(-x, d) + _facing_yaw(rng))
                placed.append(other)
                break
    background = sample_background(rng)
    if num_background_images and rng.random() < 0.8:
        background.update(image=int(rng.integers(num_background_images)), crop=rng.uniform(0, 1, 3).tolist())
    return Scene(Camera(f, f, (width - 1) / 2, (height - 1) / 2, cam_h, pitch), placed, background,
                 sample_light(rng), int(rng.integers(0, 2 ** 30)))
