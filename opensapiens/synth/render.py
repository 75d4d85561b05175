"""Render scenes into images with exact labels: part classes, instances, depth, normals and 308 keypoints.

Pipeline (all vectorized over the batch, on any device): skeletons -> primitives in camera coordinates ->
tile-binned exact ray casting (depth + winning primitive per pixel) -> normals, part labels and colours from the
winning primitive -> keypoint visibility by casting a ray through each keypoint.

Keypoint visibility: v = 0 outside the image; v = 2 when the first surface on the ray through the keypoint
belongs to the same person and lies no more than the keypoint's tolerance in front of it (0 for surface points,
the body radius for joint centres; ``OWN_FLESH`` times that when the surface is a piece of the body containing the
joint centre: its own limb, seen obliquely), and the keypoint's pixel shows that person; v = 1 otherwise (hidden
by another person or by the person's own body).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .background import View, image_background, procedural_backgrounds
from .body import Bodies, build_primitives, class_id, head_frame, pose_bodies
from .landmarks import keypoints_3d
from .people import stack_people
from .raycast import Primitives, TileBins, bin_tiles, cast_pixels, cast_rays, contains, normals_at, pixel_rays
from .scene import Scene
from .shading import Light, albedo, hash01, shade
from .skeleton import apply3, matmul3, rot_y

SURFACE_EPS = 2e-3  # metres: slack of the keypoint depth test
OWN_FLESH = 2.0  # a joint centre is seen through up to this many body radii of its own limb (one 30 deg off the ray)
BACKGROUND_KEYS = ("seed", "kind", "angle", "color0", "color1", "noise", "pattern", "freq", "pattern_amp", "wall",
                   "floor_color", "floor_color2", "floor_kind", "floor_scale", "floor_angle")


@dataclass
class SynthBatch:
    """A rendered batch; people are padded to ``max_people`` per image (``person_valid``)."""

    image: Tensor  # (B, 3, H, W) uint8 RGB
    seg: Tensor  # (B, H, W) uint8 Goliath body-part class, 0 = background
    instance: Tensor  # (B, H, W) uint8 person id 1.., 0 = background
    depth: Tensor  # (B, H, W) float32 camera z in metres, 0 = background
    normal: Tensor  # (B, 3, H, W) float32 unit normals (X right, Y up, Z toward the camera), 0 = background
    keypoints: Tensor  # (B, N, 308, 3) float32 x, y (pixels), v (0 outside, 1 hidden, 2 visible)
    keypoints_3d: Tensor  # (B, N, 308, 3) float32 camera coordinates, metres
    boxes: Tensor  # (B, N, 4) float32 x, y, w, h of the visible pixels (pixel (0, 0) covers [-0.5, 0.5]^2)
    areas: Tensor  # (B, N) float32 visible pixels
    person_valid: Tensor  # (B, N) bool
    intrinsics: Tensor  # (B, 4) float32 fx, fy, cx, cy

    def to(self, device: torch.device | str) -> SynthBatch:
        return SynthBatch(**{k: v.to(device) for k, v in self.__dict__.items()})


def _stack(values: list, device: torch.device | str) -> Tensor:
    return torch.tensor(np.asarray(values, dtype=np.float32), device=device)


def render_scenes(scenes: list[Scene], height: int, width: int, device: torch.device | str = "cpu",
                  max_people: int = 4, background_files: list[Path] | None = None) -> SynthBatch:
    """Render a batch of scenes (all H x W) on ``device``; scenes may have no people."""
    if not scenes:
        raise ValueError("scenes is empty: nothing to render")
    if any(len(s.people) > max_people for s in scenes):
        raise ValueError(f"a scene has more than max_people={max_people} people")
    B = len(scenes)
    image_of = torch.tensor([i for i, s in enumerate(scenes) for _ in s.people], dtype=torch.long, device=device)
    slot_of = torch.tensor([k for s in scenes for k in range(len(s.people))], dtype=torch.long, device=device)
    K = _stack([s.camera.intrinsics for s in scenes], device)  # (B, 4)
    world_to_cam = [s.camera.world_to_camera() for s in scenes]
    seeds = torch.tensor([s.seed for s in scenes], device=device)
    light = Light(*(_stack([s.light[k] for s in scenes], device) for k in ("direction", "color", "ambient", "diffuse")))
    light.direction = F.normalize(light.direction, dim=-1)

    # geometry in camera coordinates: world placement (yaw about the vertical, feet on the floor), then the camera
    people = stack_people([p for s in scenes for p in s.people], device)
    Rw = _stack([r for r, _ in world_to_cam], device)[image_of]
    tw = _stack([t for _, t in world_to_cam], device)[image_of]
    ground = torch.stack([people["x"], torch.zeros_like(people["x"]), people["z"]], -1)
    bodies = pose_bodies(people).moved(matmul3(Rw, rot_y(people["yaw"])), apply3(Rw, ground) + tw)
    prims, joint_radius = build_primitives(people, bodies, image_of)
    kp3d, tol = keypoints_3d(bodies, people, joint_radius)

    # exact ray casting: depth and winning primitive of every pixel, then the surface seen by each foreground pixel
    bins = bin_tiles(prims, K, height, width)
    depth, prim_id = cast_pixels(prims, bins, K, height, width)
    fg = prim_id >= 0
    b_idx, ys, xs = torch.nonzero(fg, as_tuple=True)
    pid = prim_id[fg]
    point = depth[fg][:, None] * pixel_rays(xs.float(), ys.float(), K[b_idx])
    normal = normals_at(prims, pid, point)
    person = prims.person[pid]
    col, label = _surface_colour(prims, pid, point, normal, person, bodies, people, seeds[b_idx] * 8 + slot_of[person],
                                 light, b_idx)
    instance = torch.zeros(B, height, width, dtype=torch.long, device=device)
    instance[fg] = slot_of[person] + 1

    # picture: background, people, soft silhouettes, sensor noise
    view = View(K, _stack([r for r, _ in world_to_cam], device), _stack([s.camera.height for s in scenes], device))
    casters = torch.zeros(B, max_people, 3, device=device)
    casters[image_of, slot_of] = torch.stack([people["x"], people["z"], 0.2 + 0.12 * people["height"]], -1)
    params = {k: _stack([s.background[k] for s in scenes], device) for k in BACKGROUND_KEYS}
    rgb = procedural_backgrounds(params, view, light, casters, height, width)
    for i, s in enumerate(scenes):
        if "image" in s.background:
            if not background_files:
                raise ValueError("a scene uses a background image but no background_files were given")
            rgb[i] = image_background(background_files[s.background["image"]], s.background["crop"], height,
                                      width).to(device)
    rgb = rgb.permute(0, 2, 3, 1).contiguous()  # (B, H, W, 3)
    rgb[fg] = col
    rgb = _smooth_edges(rgb, instance)
    noise_amp = 0.01 + 0.02 * hash01(seeds, seeds + 11)  # 1-3 % of the range
    yy, xx = torch.meshgrid(torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij")
    sensor = hash01(xx[None], yy[None], seeds[:, None, None]) - 0.5  # (B, H, W)
    rgb = (rgb + (noise_amp[:, None, None] * sensor)[..., None]).clamp(0, 1)

    seg = torch.zeros(B, height, width, dtype=torch.uint8, device=device)
    seg[fg] = label.to(torch.uint8)
    normals = torch.zeros(B, height, width, 3, device=device)
    normals[fg] = normal
    kps = _keypoints(kp3d, tol, prims, bins, K, depth, instance, image_of, slot_of)
    boxes, area = _boxes(person, xs, ys, kp3d.shape[0])

    def pad(v: Tensor) -> Tensor:  # (P, ...) -> (B, max_people, ...)
        out = torch.zeros(B, max_people, *v.shape[1:], dtype=v.dtype, device=device)
        out[image_of, slot_of] = v
        return out

    return SynthBatch(
        image=(rgb * 255 + 0.5).to(torch.uint8).permute(0, 3, 1, 2).contiguous(), seg=seg,
        instance=instance.to(torch.uint8), depth=torch.where(fg, depth, 0.0),
        normal=normals.permute(0, 3, 1, 2).contiguous(), keypoints=pad(kps), keypoints_3d=pad(kp3d),
        boxes=pad(boxes), areas=pad(area), person_valid=pad(torch.ones_like(slot_of, dtype=torch.bool)),
        intrinsics=K,
    )


def _surface_colour(prims: Primitives, pid: Tensor, point: Tensor, normal: Tensor, person: Tensor, bodies: Bodies,
                    people: dict[str, Tensor], seed: Tensor, light: Light, image: Tensor) -> tuple[Tensor, Tensor]:
    """Lit colour (K, 3) and part class (K,) of surface points (K, 3) seen on primitives pid (K,).

    The class is the primitive's, except on the lips (a face decal); textures live in the person's pelvis frame,
    face decals in the face coordinates of the head (body.head_frame).
    """
    material = prims.material[pid]
    q = ((point - bodies.pos[person, 0])[..., :, None] * bodies.rot[person, 0]).sum(-2)
    hc, hr, hh = (v[person] for v in head_frame(bodies))
    local = ((point - hc)[..., :, None] * hr).sum(-2) / hh
    face_uv = (local[:, 0], local[:, 1], prims.face[pid] & (local[:, 2] > 0))
    col, upper_lip, lower_lip = albedo(material, people["colors"][person], people["colors2"][person],
                                       people["patterns"][person], q, seed, face_uv)
    label = torch.where(upper_lip, class_id("Upper_Lip"), torch.where(lower_lip, class_id("Lower_Lip"),
                                                                       prims.label[pid]))
    return shade(col, normal, point, material, light, image), label


def _keypoints(kp3d: Tensor, tol: Tensor, prims: Primitives, bins: TileBins, K: Tensor, depth: Tensor,
               instance: Tensor, image_of: Tensor, slot_of: Tensor) -> Tensor:
    """(P, 308, 3) pixel x, y and visibility v (module docstring) of 3-D keypoints (P, 308, 3)."""
    H, W = depth.shape[1:]
    z = -kp3d[..., 2]  # (P, 308)
    k = K[image_of][:, None]  # (P, 1, 4)
    x = k[..., 2] + k[..., 0] * kp3d[..., 0] / z
    y = k[..., 3] - k[..., 1] * kp3d[..., 1] / z
    inside = (z > 0) & (x > -0.5) & (x < W - 0.5) & (y > -0.5) & (y < H - 0.5)
    pi, ki = torch.nonzero(inside, as_tuple=True)
    img, zk, tk = image_of[pi], z[pi, ki], tol[pi, ki]
    t_hit, hit = cast_rays(prims, bins, K, x[pi, ki], y[pi, ki], img)
    # a joint centre seen through its own flesh only (the first surface is a piece that contains it): the surface of
    # a limb oblique to the ray or tapered is more than its radius in front of the centre, up to r / sin(angle)
    tk = torch.where(contains(prims, hit, kp3d[pi, ki]), OWN_FLESH * tk, tk)
    seen = (hit >= 0) & (prims.person[hit.clamp_min(0)] == pi) & (t_hit >= zk - tk - SURFACE_EPS)
    # ...and the keypoint's pixel agrees: it shows this person, no further in front of the keypoint than the
    # tolerance plus two pixel footprints (the surface's slope across the pixel)
    px, py = x[pi, ki].round().long().clamp(0, W - 1), y[pi, ki].round().long().clamp(0, H - 1)
    slack = SURFACE_EPS + 0.02 + 2 * zk / K[img, 0]
    seen &= (instance[img, py, px] == slot_of[pi] + 1) & (depth[img, py, px] >= zk - tk - slack)
    vis = torch.zeros_like(z)
    vis[pi, ki] = torch.where(seen, 2.0, 1.0)
    return torch.stack([torch.where(inside, x, 0.0), torch.where(inside, y, 0.0), vis], -1)


def _boxes(person: Tensor, xs: Tensor, ys: Tensor, P: int) -> tuple[Tensor, Tensor]:
    """Boxes (P, 4) x, y, w, h and areas (P,) of each person's visible pixels (person (K,) at xs, ys (K,))."""
    area = torch.zeros(P, device=person.device).index_add_(0, person, torch.ones_like(xs, dtype=torch.float32))
    lo = [torch.full((P,), torch.inf, device=person.device).scatter_reduce(0, person, v.float(), "amin")
          for v in (xs, ys)]
    hi = [torch.full((P,), -torch.inf, device=person.device).scatter_reduce(0, person, v.float(), "amax")
          for v in (xs, ys)]
    boxes = torch.stack([lo[0] - 0.5, lo[1] - 0.5, hi[0] - lo[0] + 1, hi[1] - lo[1] + 1], -1)
    return torch.where((area > 0)[:, None], boxes, 0.0), area


def _smooth_edges(rgb: Tensor, instance: Tensor) -> Tensor:
    """Soften silhouettes (colour only; labels stay exact): blend pixels on an instance edge with their 3x3 mean."""
    inst = instance[:, None].float()
    edge = (F.max_pool2d(inst, 3, 1, 1) != -F.max_pool2d(-inst, 3, 1, 1))[:, 0]
    blur = F.avg_pool2d(rgb.permute(0, 3, 1, 2), 3, 1, 1, count_include_pad=False).permute(0, 2, 3, 1)
    return torch.where(edge[..., None], 0.5 * rgb + 0.5 * blur, rgb)
