"""People: body shape, pose, outfit and colours of one procedural person, and how they are sampled.

Everything here is plain numbers (numpy, floats); :func:`stack_people` turns a list of people into the batched
tensors that :mod:`~opensapiens.synth.body` builds geometry from.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import Tensor

from .poses import sample_pose
from .skeleton import mirror_pose, skeleton

# Material slots of a person's colour table; the face decals (eyes, brows, lips) use the last three.
SKIN, TOP, BOTTOM, SOCK, SHOE, HAIR, HAT, IRIS, LIPS = range(9)
NUM_MATERIALS = 9
# Procedural patterns of a material (see shading.py).
SOLID, STRIPES, CHECKS, DOTS, NOISE = range(5)

SHAPE_KEYS = ("height", "head", "neck", "leg", "arm", "shoulder", "hip", "hand", "foot", "girth", "belly", "chest",
              "pelvis_w")
OUTFIT_KEYS = ("shirt", "sleeve", "top_loose", "pants", "bottom_loose", "footwear", "sock", "hair",
               "hair_len", "hair_volume", "hat")

SKIN_TONES = np.array([[255, 226, 204], [241, 198, 170], [226, 176, 140], [199, 140, 102], [164, 108, 72],
                       [121, 78, 52], [86, 56, 38], [62, 42, 30]]) / 255.0
HAIR_COLORS = np.array([[20, 16, 14], [45, 32, 24], [80, 55, 35], [125, 90, 55], [190, 150, 95], [150, 70, 35],
                        [160, 160, 160], [230, 225, 215]]) / 255.0
HAIR_PROBS = np.array([0.3, 0.22, 0.15, 0.08, 0.1, 0.05, 0.06, 0.04])
IRIS_COLORS = np.array([[60, 38, 20], [95, 62, 35], [60, 95, 140], [70, 110, 70], [40, 30, 25]]) / 255.0


@dataclass
class Person:
    """One person: ``shape`` and ``outfit`` hold the keys of SHAPE_KEYS and OUTFIT_KEYS."""

    shape: dict[str, float]
    pose: np.ndarray  # (J, 3) anatomical angles, radians
    outfit: dict[str, float]
    colors: np.ndarray  # (NUM_MATERIALS, 3) main colour of each material, RGB in [0, 1]
    colors2: np.ndarray  # (NUM_MATERIALS, 3) second colour of the material's pattern
    patterns: np.ndarray  # (NUM_MATERIALS, 3): pattern kind, frequency (1/m), angle (rad)
    x: float = 0.0  # ground position in the world (metres); the feet are put on the floor y = 0
    z: float = -3.0
    yaw: float = 0.0  # heading about the vertical; 0 faces +z (toward a camera at the origin)
    pose_kind: str = "standing"
    meta: dict = field(default_factory=dict)

    def mirrored(self) -> Person:
        """The mirror image through the world plane x = 0 (left and right swap)."""
        return replace(self, pose=mirror_pose(self.pose), x=-self.x, yaw=-self.yaw)


def _lerp(a: float, b: float, t: float) -> float:
    return a + (b - a) * t


def sample_shape(rng: np.random.Generator) -> dict[str, float]:
    """Body proportions as fractions of the height; children get bigger heads and shorter legs."""
    if rng.random() < 0.78:
        height, age = float(np.clip(rng.normal(1.70, 0.09), 1.48, 1.98)), 1.0
    else:
        height = float(rng.uniform(0.95, 1.5))
        age = (height - 0.95) / 0.6
    u = lambda lo, hi: float(rng.uniform(lo, hi))  # noqa: E731
    return {
        "height": height,
        "head": _lerp(0.185, 0.13, age) * u(0.96, 1.05),
        "neck": _lerp(0.032, 0.04, age) * u(0.9, 1.12),
        "leg": _lerp(0.45, 0.515, age) * u(0.97, 1.03),
        "arm": _lerp(0.305, 0.32, age) * u(0.97, 1.03),
        "shoulder": _lerp(0.098, u(0.1, 0.118), age),
        "hip": _lerp(0.05, u(0.048, 0.058), age),
        "hand": _lerp(0.112, 0.106, age) * u(0.95, 1.05),
        "foot": _lerp(0.155, 0.15, age) * u(0.95, 1.05),
        "girth": u(0.95, 1.2) if age < 1 else u(0.85, 1.3),
        "belly": u(0.8, 1.15),
        "chest": u(0.9, 1.25),
        "pelvis_w": u(0.9, 1.2),
    }


def sample_outfit(rng: np.random.Generator) -> dict[str, float]:
    """Garment coverage as fractions of the arm/leg, looseness in metres, footwear and hair style ids."""
    shirt = float(rng.choice([0, 1, 2], p=[0.07, 0.08, 0.85]))  # none, crop top, full
    sleeve = 0.0 if shirt == 0 else float(rng.choice([0.0, 0.12, rng.uniform(0.25, 0.5), rng.uniform(0.6, 0.85),
                                                      1.0], p=[0.12, 0.08, 0.35, 0.1, 0.35]))
    pants = float(rng.choice([0.12, rng.uniform(0.25, 0.45), rng.uniform(0.5, 0.8), 1.0], p=[0.05, 0.3, 0.15, 0.5]))
    footwear = float(rng.choice([0, 1, 2], p=[0.1, 0.1, 0.8]))  # barefoot, socks, shoes
    hair = float(rng.choice([0, 1, 2, 3, 4, 5], p=[0.06, 0.14, 0.3, 0.2, 0.2, 0.1]))
    return {
        "shirt": shirt, "sleeve": sleeve, "top_loose": float(rng.uniform(0.004, 0.02)),
        "pants": pants, "bottom_loose": float(rng.uniform(0.004, 0.02)),
        "footwear": footwear, "sock": 0.0 if footwear == 0 else float(rng.choice([0.05, 0.15, 0.35])),
        "hair": hair, "hair_len": float(rng.uniform(0.3, 1.0)), "hair_volume": float(rng.uniform(0.0, 1.0)),
        "hat": float(rng.random() < 0.1),
    }


def _cloth_color(rng: np.random.Generator) -> np.ndarray:
    h, s, v = rng.random(), rng.uniform(0.0, 0.85) ** 1.3, rng.uniform(0.12, 0.95)
    return np.array(colorsys.hsv_to_rgb(h, s, v))


def sample_colors(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(colors, colors2, patterns) tables of the materials."""
    t = rng.uniform(0, len(SKIN_TONES) - 1)
    i = int(t)
    skin = SKIN_TONES[i] + (SKIN_TONES[min(i + 1, len(SKIN_TONES) - 1)] - SKIN_TONES[i]) * (t - i)
    skin = np.clip(skin * rng.uniform(0.95, 1.05, 3), 0, 1)
    hair = np.clip(HAIR_COLORS[rng.choice(len(HAIR_COLORS), p=HAIR_PROBS)] * rng.uniform(0.85, 1.15), 0, 1)
    if rng.random() < 0.03:
        hair = _cloth_color(rng)
    colors = np.stack([skin, *[_cloth_color(rng) for _ in range(5)], _cloth_color(rng),
                       IRIS_COLORS[rng.integers(len(IRIS_COLORS))], skin * np.array([0.85, 0.55, 0.55])])
    colors[HAIR] = hair
    colors2 = np.stack([_cloth_color(rng) for _ in range(NUM_MATERIALS)])
    colors2[SKIN] = skin * 0.93
    colors2[HAIR] = hair * 0.8
    patterns = np.zeros((NUM_MATERIALS, 3))
    for m in (TOP, BOTTOM, SOCK, SHOE, HAT):
        kind = rng.choice([SOLID, STRIPES, CHECKS, DOTS, NOISE], p=[0.4, 0.2, 0.13, 0.12, 0.15])
        patterns[m] = (kind, rng.uniform(6, 30), rng.choice([0.0, np.pi / 2, rng.uniform(0, np.pi)]))
    patterns[HAIR] = (NOISE, rng.uniform(40, 90), 0.0)
    return colors, colors2, patterns


def sample_person(rng: np.random.Generator, pose_kind: str | None = None) -> Person:
    kind, pose = sample_pose(rng, pose_kind)
    colors, colors2, patterns = sample_colors(rng)
    return Person(shape=sample_shape(rng), pose=pose, outfit=sample_outfit(rng), colors=colors,
                  colors2=colors2, patterns=patterns, pose_kind=kind)


def stack_people(people: list[Person], device: torch.device | str) -> dict[str, Tensor]:
    """Batched float32 tensors: one (P,) tensor per shape/outfit key, plus pose (P, J, 3), colors, colors2,
    patterns (P, NUM_MATERIALS, 3) and placement x, z, yaw (P,)."""
    f = lambda v: torch.tensor(np.asarray(v, dtype=np.float32), device=device)  # noqa: E731
    out = {k: f([p.shape[k] for p in people]) for k in SHAPE_KEYS}
    out.update({k: f([p.outfit[k] for p in people]) for k in OUTFIT_KEYS})
    tables = {k: f([getattr(p, k) for p in people]).reshape(-1, NUM_MATERIALS, 3)  # (0, ...) if nobody
              for k in ("colors", "colors2", "patterns")}
    out.update(pose=f([p.pose for p in people]).reshape(-1, skeleton().num_joints, 3), **tables,
               x=f([p.x for p in people]), z=f([p.z for p in people]), yaw=f([p.yaw for p in people]))
    return out
