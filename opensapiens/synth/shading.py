"""Colour: procedural materials, face decals (eyes, brows, lips) and lighting.

Randomness here is an integer hash of lattice coordinates and a per-image seed, so textures are identical on
every device and for every batch composition.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .landmarks import EYE, EYE_CORNERS, IRIS, MOUTH, brow_lines, eye_lines, lip_lines
from .people import CHECKS, DOTS, HAIR, LIPS, NOISE, SHOE, SKIN, STRIPES
from .people import IRIS as IRIS_MAT

_PRIMES = (1, 7919, 104729, 1299709, 15485863)  # < 2**24: the weighted sum of int32 coordinates cannot overflow


def hash01(*coords: Tensor) -> Tensor:
    """Uniform [0, 1) pseudo-random values from up to five integer tensors (broadcast); identical on every device."""
    coords = torch.broadcast_tensors(*coords)
    h = sum(c.long() * k for c, k in zip(coords, _PRIMES)) & 0xFFFFFFFF
    for _ in range(2):  # integer finaliser (xor-shift-multiply), all products below 2**59
        h = ((h ^ (h >> 16)) * 0x45D9F3B) & 0xFFFFFFFF
    h = h ^ (h >> 16)
    return (h & 0xFFFFFF).float() / float(1 << 24)


def value_noise3(q: Tensor, seed: Tensor) -> Tensor:
    """Smooth value noise in [0, 1) at points q (..., 3) (lattice spacing 1); seed (...) integer."""
    base = q.floor()
    f = q - base
    f = f * f * (3 - 2 * f)
    i = base.long()
    out = torch.zeros_like(f[..., 0])
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                w = ((f[..., 0] if dx else 1 - f[..., 0]) * (f[..., 1] if dy else 1 - f[..., 1])
                     * (f[..., 2] if dz else 1 - f[..., 2]))
                out = out + w * hash01(i[..., 0] + dx, i[..., 1] + dy, i[..., 2] + dz, seed)
    return out


def pattern(kind: Tensor, freq: Tensor, angle: Tensor, q: Tensor, seed: Tensor) -> Tensor:
    """Mix weight in [0, 1] between a material's two colours at person-frame points q (K, 3) (metres)."""
    c, s = angle.cos(), angle.sin()
    a = freq * (q[:, 1] * c + q[:, 0] * s)
    b = freq * (q[:, 0] * c - q[:, 1] * s)
    cell = torch.stack([a, b, freq * q[:, 2]], -1)
    out = torch.zeros_like(a)
    out = torch.where(kind == STRIPES, (torch.sin(2 * torch.pi * a) * 4).clamp(-1, 1) * 0.5 + 0.5, out)
    out = torch.where(kind == CHECKS, (cell.floor().sum(-1) % 2).float(), out)
    out = torch.where(kind == DOTS, ((cell - cell.floor() - 0.5).norm(dim=-1) < 0.3).float(), out)
    noisy = kind == NOISE
    out[noisy] = ((value_noise3(cell[noisy], seed[noisy]) - 0.5) * 3 + 0.5).clamp(0, 1)
    return out


def face_decals(u: Tensor, v: Tensor) -> dict[str, Tensor]:
    """Boolean masks of the face decals at face coordinates (u, v) (see landmarks.face_layout)."""
    au = u.abs()
    t = (au - EYE_CORNERS[0]) / (EYE_CORNERS[1] - EYE_CORNERS[0])
    in_eye_u = (t > 0) & (t < 1)
    tc = t.clamp(0, 1)
    upper, lower = eye_lines(tc, "upper_lash")[1], eye_lines(tc, "lower_lash")[1]
    eye = in_eye_u & (v < upper) & (v > lower)
    r = ((au - EYE[0]) / IRIS[0]) ** 2 + ((v - EYE[1]) / IRIS[1]) ** 2
    lash = in_eye_u & ((v - upper).abs() < 0.012 + 0.01 * tc)
    crease = in_eye_u & ((v - eye_lines(tc, "upper_crease")[1]).abs() < 0.008)
    tb = ((au - 0.16) / 0.5)
    tbc = tb.clamp(0, 1)
    brow = (tb > 0) & (tb < 1) & (v < brow_lines(tbc, "upper")[1]) & (v > brow_lines(tbc, "lower")[1])
    lip_top, lip_in, lip_bot = lip_lines(au, "outer_upper"), lip_lines(au, "inner"), lip_lines(au, "outer_lower")
    in_mouth = au < MOUTH[0]
    return {"sclera": eye, "iris": eye & (r < 1), "pupil": eye & (r < 0.2), "lash": lash, "crease": crease,
            "brow": brow, "upper_lip": in_mouth & (v < lip_top) & (v >= lip_in),
            "lower_lip": in_mouth & (v < lip_in) & (v > lip_bot), "lip_line": in_mouth & ((v - lip_in).abs() < 0.008)}


def albedo(material: Tensor, colors: Tensor, colors2: Tensor, patterns: Tensor, q: Tensor, seed: Tensor,
           face_uv: tuple[Tensor, Tensor, Tensor] | None) -> tuple[Tensor, Tensor, Tensor]:
    """Base colour (K, 3), and upper/lower lip masks (K,), of surface points.

    material (K,), colors/colors2/patterns (K, M, 3) of each point's person, q (K, 3) person-frame points,
    face_uv: (u, v, on_face) face coordinates of every point and whether a face decal applies there.
    """
    k = torch.arange(material.shape[0], device=material.device)
    c1, c2, pat = colors[k, material], colors2[k, material], patterns[k, material]
    mix = pattern(pat[:, 0].round().long(), pat[:, 1], pat[:, 2], q, seed)
    col = c1 + (c2 - c1) * mix[:, None]
    fine = hash01(*(q * 600.0).floor().long().unbind(-1), seed)  # fabric / skin grain
    col = col * (0.94 + 0.12 * fine)[:, None]
    none = torch.zeros_like(material, dtype=torch.bool)
    if face_uv is None:
        return col.clamp(0, 1), none, none
    u, v, on = face_uv
    upper, lower = none.clone(), none.clone()
    if on.any():
        i = on.nonzero()[:, 0]
        d = face_decals(u[i], v[i])
        ki = k[i]
        skin, c = colors[ki, SKIN], col[i]
        c = torch.where(d["brow"][:, None], colors[ki, HAIR] * 0.8 + skin * 0.2, c)
        c = torch.where(d["crease"][:, None], skin * 0.8, c)
        c = torch.where(d["sclera"][:, None], torch.tensor([0.93, 0.92, 0.9], device=c.device), c)
        c = torch.where(d["iris"][:, None], colors[ki, IRIS_MAT], c)
        c = torch.where(d["pupil"][:, None], torch.full_like(c, 0.04), c)
        c = torch.where(d["lash"][:, None], torch.full_like(c, 0.08), c)
        c = torch.where((d["upper_lip"] | d["lower_lip"])[:, None], colors[ki, LIPS], c)
        col[i] = torch.where(d["lip_line"][:, None], colors[ki, LIPS] * 0.55, c)
        upper[i], lower[i] = d["upper_lip"], d["lower_lip"]
    return col.clamp(0, 1), upper, lower


@dataclass
class Light:
    """Per-image lighting (B, ...) in camera coordinates."""

    direction: Tensor  # (B, 3) unit, from the surface toward the light
    color: Tensor  # (B, 3)
    ambient: Tensor  # (B,)
    diffuse: Tensor  # (B,)


def shade(col: Tensor, normal: Tensor, point: Tensor, material: Tensor, light: Light, image: Tensor) -> Tensor:
    """Lambert + ambient (brighter from above) + a little Blinn-Phong specular; col (K, 3) -> (K, 3)."""
    ldir, lcol = light.direction[image], light.color[image]
    ndl = (normal * ldir).sum(-1).clamp_min(0)
    view = -point / point.norm(dim=-1, keepdim=True)
    half = F.normalize(ldir + view, dim=-1)
    shine = torch.where(material == SHOE, 40.0, torch.where(material == HAIR, 12.0, 20.0))
    ks = torch.where(material == SHOE, 0.35, torch.where(material == HAIR, 0.12, torch.where(material == SKIN,
                                                                                            0.08, 0.03)))
    spec = ks * (normal * half).sum(-1).clamp_min(0) ** shine
    amb = light.ambient[image] * (0.8 + 0.2 * normal[:, 1])
    return (col * (amb[:, None] + light.diffuse[image, None] * ndl[:, None] * lcol) + spec[:, None] * lcol).clamp(0, 1)


def sample_light(rng: np.random.Generator) -> dict[str, np.ndarray | float]:
    az, el = rng.uniform(-1.2, 1.2), rng.uniform(0.1, 1.1)
    direction = np.array([np.sin(az) * np.cos(el), np.sin(el), np.cos(az) * np.cos(el)])
    tint = 1 + rng.uniform(-0.12, 0.12, 3)
    return {"direction": direction, "color": tint / tint.max(), "ambient": float(rng.uniform(0.3, 0.6)),
            "diffuse": float(rng.uniform(0.4, 0.85))}
