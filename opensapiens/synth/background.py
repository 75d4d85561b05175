"""Backgrounds: a room (lit floor plane with contact shadows, textured back wall), a flat procedural picture, or a
crop of a user photo. Backgrounds are never labelled: depth, normals, parts and instances stay 0 there.

The room is real geometry seen by the scene's camera (the floor is the world plane y = 0 the people stand on, the
wall a plane z = const behind them), so perspective, horizon and shadows agree with the people.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from .shading import Light, hash01

FLAT, ROOM = 0, 1
PLAIN, CHECKS, PLANKS, TILES = range(4)


def sample_background(rng: np.random.Generator) -> dict:
    """Parameters of one procedural background (numbers only; see :func:`procedural_backgrounds`)."""
    def color() -> np.ndarray:
        return np.clip(rng.uniform(0.05, 0.95) * (1 + rng.uniform(-0.35, 0.35, 3)), 0, 1)

    c2 = color()
    return {
        "seed": int(rng.integers(0, 2 ** 30)), "kind": int(rng.random() < 0.65), "angle": float(rng.uniform(-0.6, 0.6)),
        "color0": color(), "color1": color(), "noise": float(rng.uniform(0.0, 0.6)),
        "pattern": int(rng.choice(4, p=[0.55, 0.15, 0.15, 0.15])), "freq": float(rng.uniform(2, 12)),
        "pattern_amp": float(rng.uniform(0.05, 0.3)), "wall": float(rng.uniform(2.0, 9.0)),
        "floor_color": c2, "floor_color2": np.clip(c2 * rng.uniform(0.6, 1.0) + rng.uniform(-0.1, 0.1, 3), 0, 1),
        "floor_kind": int(rng.choice(4, p=[0.25, 0.25, 0.3, 0.2])), "floor_scale": float(rng.uniform(0.25, 1.0)),
        "floor_angle": float(rng.uniform(0, np.pi)),
    }


@dataclass
class View:
    """Per-image camera: intrinsics (B, 4), world-to-camera rotation (B, 3, 3), centre height (B,)."""

    K: Tensor
    R: Tensor
    height: Tensor


def _lattice_noise(seed: Tensor, cells: tuple[int, int], height: int, width: int, channels: int) -> Tensor:
    """(B, C, H, W) smooth noise in [0, 1): hashed values on a coarse lattice, bicubically upsampled."""
    gy, gx = cells
    iy = torch.arange(gy + 1, device=seed.device)[:, None, None]
    ix = torch.arange(gx + 1, device=seed.device)[None, :, None]
    ic = torch.arange(channels, device=seed.device)[None, None, :]
    grid = hash01(iy, ix, ic, seed[:, None, None, None]).permute(0, 3, 1, 2)  # (B, C, gy+1, gx+1)
    return F.interpolate(grid, size=(height, width), mode="bicubic", align_corners=True).clamp(0, 1)


def _pattern(kind: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Stripes, checks or tile grout (1) at texture coordinates a, b (cycles)."""
    stripes = (torch.sin(2 * torch.pi * a) > 0).float()
    checks = ((a.floor() + b.floor()) % 2).float()
    tiles = (((a - a.floor()) < 0.05) | ((b - b.floor()) < 0.05)).float()
    return torch.where(kind == 1, stripes, torch.where(kind == 2, checks, torch.where(kind == 3, tiles, 0.0)))


def procedural_backgrounds(p: dict[str, Tensor], view: View, light: Light, casters: Tensor, height: int,
                           width: int) -> Tensor:
    """(B, 3, H, W) backgrounds in [0, 1].

    p: (B, ...) parameter tensors (``sample_background``); casters: (B, N, 3) ground x, z and radius (0 = none)
    of the people, for contact shadows.
    """
    seed, device = p["seed"], p["seed"].device
    ys = torch.arange(height, device=device, dtype=torch.float32)[None, :, None]
    xs = torch.arange(width, device=device, dtype=torch.float32)[None, None, :]
    fx, fy, cx, cy = (view.K[:, i, None, None] for i in range(4))
    d = torch.stack(torch.broadcast_tensors((xs - cx) / fx, -(ys - cy) / fy, -torch.ones_like(fx)), -1)
    dw = (view.R[:, None, None] * d[..., :, None]).sum(-2)  # (B, H, W, 3) ray directions in the world

    # flat picture: gradient, smooth noise, an image-space pattern
    u, v = xs / max(height, width), ys / max(height, width)
    ang = p["angle"][:, None, None]
    g = ((u - 0.5 * width / max(height, width)) * ang.sin() + (v - 0.5 * height / max(height, width)) * ang.cos()
         + 0.5).clamp(0, 1)
    c0, c1 = p["color0"][:, :, None, None], p["color1"][:, :, None, None]
    flat = c0 + (c1 - c0) * g[:, None]
    noise = (_lattice_noise(seed, (4, 3), height, width, 1) - 0.5) + 0.3 * (
        _lattice_noise(seed + 1, (4, 3), height, width, 3) - 0.5) + 0.4 * (
        _lattice_noise(seed + 2, (24, 18), height, width, 1) - 0.5)
    amp = p["pattern_amp"][:, None, None, None]
    freq = p["freq"][:, None, None] * 3
    flat = flat * (1 - amp * _pattern(p["pattern"][:, None, None], freq * (u + 0.3 * v), freq * (v - 0.3 * u))[:, None])

    # room: the back wall z = -wall with the pattern in metres, the floor y = 0 (camera centre at (0, h, 0))
    t_wall = p["wall"][:, None, None] / (-dw[..., 2]).clamp_min(1e-6)
    t_floor = view.height[:, None, None] / (-dw[..., 1]).clamp_min(1e-6)
    on_floor = (dw[..., 1] < 0) & ((t_floor < t_wall) | (dw[..., 2] >= 0))
    wx, wy = t_wall * dw[..., 0], view.height[:, None, None] + t_wall * dw[..., 1]
    wall = c0 + (c1 - c0) * (wy / 3.0).clamp(0, 1)[:, None]
    wall = wall * (1 - amp * _pattern(p["pattern"][:, None, None], p["freq"][:, None, None] * 0.5 * wx,
                                      p["freq"][:, None, None] * 0.5 * wy)[:, None])
    fxw, fzw = t_floor * dw[..., 0], t_floor * dw[..., 2]
    ca, sa = p["floor_angle"].cos()[:, None, None], p["floor_angle"].sin()[:, None, None]
    scale = p["floor_scale"][:, None, None]
    a, b = (fxw * ca + fzw * sa) / scale, (fzw * ca - fxw * sa) / scale
    kind = p["floor_kind"][:, None, None]
    row = b.floor()  # planks: boards 4 units long, offset every other row, each with its own tone
    run = a * 0.25 + 0.5 * (row % 2)
    seam = ((b - row) < 0.05) | ((run - run.floor()) < 0.012)
    planks = torch.where(seam, 1.0, 0.7 * hash01(row.long(), run.floor().long(), seed[:, None, None]))
    grid = _pattern(torch.where(kind == CHECKS, 2, torch.where(kind == TILES, 3, 0)), a, b)
    mix = torch.where(kind == PLANKS, planks, grid)
    dist = t_floor * dw.norm(dim=-1)
    mix = mix * torch.exp(-dist / 12.0)  # fade fine texture with distance instead of aliasing
    f0, f1 = p["floor_color"][:, :, None, None], p["floor_color2"][:, :, None, None]
    floor = f0 + (f1 - f0) * mix[:, None]
    up = view.R[:, :, 1]  # floor normal in camera coordinates
    lit = light.ambient + light.diffuse * (up * light.direction).sum(-1).clamp_min(0)
    floor = floor * lit[:, None, None, None] * 0.9
    shade = torch.ones_like(dist)
    for k in range(casters.shape[1]):  # soft contact shadows under each person
        x0, z0, r = (casters[:, k, i, None, None] for i in range(3))
        d2 = (fxw - x0) ** 2 + (fzw - z0) ** 2
        shade = shade * (1 - 0.55 * torch.exp(-d2 / (2 * (r * r).clamp_min(1e-6))) * (r > 0))
    floor = floor * shade[:, None]
    room = torch.where(on_floor[:, None], floor, wall)
    out = torch.where((p["kind"] == ROOM)[:, None, None, None], room, flat)
    return (out * (1 + p["noise"][:, None, None, None] * noise)).clamp(0, 1)


@lru_cache(maxsize=64)
def _load(path: str) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def image_background(path: Path, crop: list[float], height: int, width: int) -> Tensor:
    """A random crop (of the output's aspect ratio) of a background photo, resized: (3, H, W) in [0, 1]."""
    img = _load(str(path))
    h, w = img.shape[:2]
    scale = min(h / height, w / width) * (0.6 + 0.4 * crop[2])
    ch, cw = max(int(height * scale), 1), max(int(width * scale), 1)
    y0, x0 = int((h - ch) * crop[0]), int((w - cw) * crop[1])
    t = torch.from_numpy(np.ascontiguousarray(img[y0:y0 + ch, x0:x0 + cw])).permute(2, 0, 1)[None].float() / 255
    return F.interpolate(t, size=(height, width), mode="bilinear", align_corners=False, antialias=True)[0]
