"""Exact ray casting against round cones and ellipsoids, over all pixels of a batch at once.

The body is a union of two primitive kinds, both with closed-form ray intersections, so depth and normals are
exact to float precision (no marching):

* round cone: the convex hull of two spheres (a, ra) and (b, rb): limbs, fingers, neck (a capsule if ra == rb);
* ellipsoid: centre, orthonormal axes, half-lengths: head, torso, palms, feet, hair.

Rays leave the camera centre (the origin) with direction ``d = ((x - cx) / fx, -(y - cy) / fy, -1)`` for pixel
(x, y), so the ray parameter ``t`` *is* the metric depth (camera z, X right / Y up / Z toward the camera).
Before solving, each ray origin is moved to its closest approach to the primitive, which keeps the quadratics
well conditioned in float32 when the camera is metres away.

:func:`cast_pixels` bins primitives into 8x8 pixel tiles by their projected bounding spheres, tests each
(primitive, tile) pair on the tile's 64 rays, and keeps per pixel the smallest ``(depth bits << 32) | id`` with one
``scatter_reduce(amin)``: depth and winning primitive in a single order-independent (deterministic) pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

TILE = 8
T_MIN = 1e-3  # metres; nothing closer to the camera than this is hit


@dataclass
class Primitives:
    """Round cones and ellipsoids in camera coordinates, flattened over all people of a batch (cones first)."""

    cone_a: Tensor  # (Nc, 3)
    cone_b: Tensor  # (Nc, 3)
    cone_ra: Tensor  # (Nc,)
    cone_rb: Tensor  # (Nc,)
    ell_c: Tensor  # (Ne, 3)
    ell_rot: Tensor  # (Ne, 3, 3): columns are the ellipsoid's axes
    ell_r: Tensor  # (Ne, 3) half-lengths
    person: Tensor  # (N,) long: global person index
    image: Tensor  # (N,) long: image of the batch
    label: Tensor  # (N,) long: body-part class
    material: Tensor  # (N,) long: material slot of the person's colour table
    face: Tensor  # (N,) bool: part of the face (gets eyes, brows and lips)

    @property
    def num_cones(self) -> int:
        return self.cone_a.shape[0]

    def __len__(self) -> int:
        return self.person.shape[0]

    def boxes(self) -> tuple[Tensor, Tensor]:
        """Exact axis-aligned bounds: min (N, 3) and max (N, 3) corners."""
        ra, rb = self.cone_ra[:, None], self.cone_rb[:, None]
        ext = ((self.ell_rot * self.ell_r[:, None, :]) ** 2).sum(-1).sqrt()  # half-extent along each axis
        lo = torch.cat([torch.minimum(self.cone_a - ra, self.cone_b - rb), self.ell_c - ext])
        hi = torch.cat([torch.maximum(self.cone_a + ra, self.cone_b + rb), self.ell_c + ext])
        return lo, hi

    def bounding_spheres(self) -> tuple[Tensor, Tensor]:
        """Centres (N, 3) and radii (N,)."""
        half = 0.5 * (self.cone_b - self.cone_a).norm(dim=-1)
        c = torch.cat([0.5 * (self.cone_a + self.cone_b), self.ell_c])
        r = torch.cat([half + torch.maximum(self.cone_ra, self.cone_rb), self.ell_r.amax(-1)])
        return c, r


def dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).sum(-1)


def _sphere_entry(oc: Tensor, d: Tensor, dd: Tensor, r: Tensor) -> Tensor:
    """Entry parameter of rays ``oc + t d`` (origin relative to the centre) into spheres of radius r; inf if missed."""
    t_mid = -dot(oc, d) / dd
    perp = oc + t_mid[..., None] * d
    h = r * r - dot(perp, perp)
    t = t_mid - (h.clamp_min(0) / dd).sqrt()
    return torch.where(h >= 0, t, torch.inf)


def _shift(center: Tensor, d: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Move the origin of rays from 0 along d to their closest approach to ``center``: (t0, new origin, |d|^2)."""
    dd = dot(d, d)
    t0 = dot(center, d) / dd
    return t0, t0[..., None] * d, dd


def intersect_round_cones(a: Tensor, b: Tensor, ra: Tensor, rb: Tensor, d: Tensor) -> Tensor:
    """Entry t of rays from the origin along d into round cones; shapes broadcast; inf where missed."""
    t0, o, dd = _shift(0.5 * (a + b), d)
    ba = b - a
    axis = ba.norm(dim=-1)
    length = axis.clamp_min(1e-9)
    u = ba / length[..., None]
    s = ((ra - rb) / length).clamp(-0.999, 0.999)  # lateral surface in the (axial h, radial q) plane:
    c = (1 - s * s).sqrt()  # s h + c q = ra, between the tangent points h = ra s and h = length + rb s
    w0 = o - a
    h0, hd = dot(w0, u), dot(d, u)
    k0, k1 = ra - s * h0, -s * hd
    A = c * c * dot(torch.linalg.cross(d, u), torch.linalg.cross(d, u)) - k1 * k1
    B = c * c * (dot(w0, d) - h0 * hd) - k0 * k1
    C = c * c * dot(torch.linalg.cross(w0, u), torch.linalg.cross(w0, u)) - k0 * k0
    disc = B * B - A * C
    q = -(B + torch.where(B >= 0, 1.0, -1.0) * disc.clamp_min(0).sqrt())
    best = torch.minimum(_sphere_entry(w0, d, dd, ra), _sphere_entry(o - b, d, dd, rb))
    for t in (q / A, C / q):  # the two roots of A t^2 + 2 B t + C = 0, in a cancellation-free form
        h = h0 + t * hd
        # (a == b has no lateral surface, only its end spheres: its degenerate quadratic has spurious roots)
        ok = (disc >= 0) & (h >= ra * s) & (h <= length + rb * s) & (k0 + k1 * t >= 0) & t.isfinite() & (axis > 1e-9)
        best = torch.minimum(best, torch.where(ok, t, torch.inf))
    t = t0 + best
    return torch.where(t > T_MIN, t, torch.inf)


def _to_local(rot: Tensor, v: Tensor) -> Tensor:
    """rot^T v for (..., 3, 3) and (..., 3)."""
    return (rot * v[..., :, None]).sum(-2)


def intersect_ellipsoids(c: Tensor, rot: Tensor, r: Tensor, d: Tensor) -> Tensor:
    """Entry t of rays from the origin along d into ellipsoids; shapes broadcast; inf where missed."""
    t0, o, _ = _shift(c, d)
    ol = _to_local(rot, o - c) / r  # unit-sphere space
    dl = _to_local(rot, d) / r
    t = t0 + _sphere_entry(ol, dl, dot(dl, dl), torch.ones_like(t0))
    return torch.where(t > T_MIN, t, torch.inf)


def round_cone_normals(p: Tensor, a: Tensor, b: Tensor, ra: Tensor, rb: Tensor) -> Tensor:
    """Outward unit normals at surface points p of round cones (the gradient of the round-cone distance)."""
    ba = b - a
    length = ba.norm(dim=-1).clamp_min(1e-9)
    u = ba / length[..., None]
    s = ((ra - rb) / length).clamp(-0.999, 0.999)
    w = p - a
    h = dot(w, u)
    radial = w - h[..., None] * u
    radial = radial / radial.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    lateral = s[..., None] * u + (1 - s * s).sqrt()[..., None] * radial
    n = torch.where((h < ra * s)[..., None], w, torch.where((h > length + rb * s)[..., None], p - b, lateral))
    return n / n.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def ellipsoid_normals(p: Tensor, c: Tensor, rot: Tensor, r: Tensor) -> Tensor:
    """Outward unit normals at surface points p of ellipsoids (gradient of |local / r|^2)."""
    g = _to_local(rot, p - c) / (r * r)
    n = (rot * g[..., None, :]).sum(-1)
    return n / n.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def intersect(prims: Primitives, idx: Tensor, d: Tensor) -> Tensor:
    """Entry t of rays d (M, R, 3) into primitives idx (M,) (a mix of cones and ellipsoids): (M, R)."""
    nc = prims.num_cones
    t = torch.full(d.shape[:-1], torch.inf, device=d.device)
    cone = idx < nc
    if cone.any():
        i = idx[cone, None]
        t[cone] = intersect_round_cones(prims.cone_a[i], prims.cone_b[i], prims.cone_ra[i], prims.cone_rb[i], d[cone])
    if not cone.all():
        i = idx[~cone, None] - nc
        t[~cone] = intersect_ellipsoids(prims.ell_c[i], prims.ell_rot[i], prims.ell_r[i], d[~cone])
    return t


def normals_at(prims: Primitives, idx: Tensor, p: Tensor) -> Tensor:
    """Unit normals (K, 3) at hit points p (K, 3) of primitives idx (K,)."""
    nc = prims.num_cones
    n = torch.zeros_like(p)
    cone = idx < nc
    i = idx[cone]
    n[cone] = round_cone_normals(p[cone], prims.cone_a[i], prims.cone_b[i], prims.cone_ra[i], prims.cone_rb[i])
    i = idx[~cone] - nc
    n[~cone] = ellipsoid_normals(p[~cone], prims.ell_c[i], prims.ell_rot[i], prims.ell_r[i])
    return n


def contains(prims: Primitives, idx: Tensor, p: Tensor) -> Tensor:
    """Whether points p (K, 3) lie inside (or on) primitives idx (K,) (-1: no primitive, False)."""
    nc = prims.num_cones
    inside = torch.zeros(p.shape[0], dtype=torch.bool, device=p.device)
    cone, ell = (idx >= 0) & (idx < nc), idx >= nc
    i = idx[cone]
    a, b, ra, rb = prims.cone_a[i], prims.cone_b[i], prims.cone_ra[i], prims.cone_rb[i]
    length = (b - a).norm(dim=-1).clamp_min(1e-9)
    u = (b - a) / length[..., None]
    s = ((ra - rb) / length).clamp(-0.999, 0.999)
    w = p[cone] - a
    h = dot(w, u)
    q = (w - h[..., None] * u).norm(dim=-1)  # the hull of the end spheres: both spheres and the frustum between
    frustum = (h >= ra * s) & (h <= length + rb * s) & (s * h + (1 - s * s).sqrt() * q <= ra)  # their tangent circles
    inside[cone] = (w.norm(dim=-1) <= ra) | ((p[cone] - b).norm(dim=-1) <= rb) | frustum
    i = idx[ell] - nc
    local = _to_local(prims.ell_rot[i], p[ell] - prims.ell_c[i]) / prims.ell_r[i]
    inside[ell] = dot(local, local) <= 1
    return inside


def pixel_rays(x: Tensor, y: Tensor, K: Tensor) -> Tensor:
    """Ray directions (..., 3) with unit depth for pixel coordinates x, y (...) and intrinsics K (..., 4)."""
    fx, fy, cx, cy = K.unbind(-1)
    return torch.stack([(x - cx) / fx, -(y - cy) / fy, -torch.ones_like(x)], -1)


@dataclass
class TileBins:
    """(primitive, tile) pairs sorted by tile key ``(image * tiles_y + tile_y) * tiles_x + tile_x``."""

    prim: Tensor  # (M,)
    key: Tensor  # (M,)
    tiles_y: int
    tiles_x: int


def bin_tiles(prims: Primitives, K: Tensor, height: int, width: int) -> TileBins:
    """Pairs of every primitive with the tiles its projected bounding sphere (plus one pixel) overlaps.

    A sphere that reaches beside or behind the camera projects to an unbounded region; it goes to every tile on
    that side (conservative: a primitive is never dropped while part of it is in front of the camera)."""
    c, r = prims.bounding_spheres()
    k = K[prims.image]
    depth = -c[:, 2]
    ok = depth + r > T_MIN  # partly in front of the camera

    def extent(coord: Tensor, f: Tensor, centre: Tensor, sign: float) -> tuple[Tensor, Tensor, Tensor]:
        """Pixel range along one image axis, from the sphere's tangents in the plane of that axis and the optical
        axis (exact), and whether any of it is in front of the camera."""
        dist = torch.sqrt(coord * coord + depth * depth)
        theta, alpha = torch.atan2(coord, depth), torch.asin((r / dist.clamp_min(1e-9)).clamp(max=1.0))
        around = dist <= r  # the camera is inside the circle: every direction of the plane
        a0, a1 = (theta - alpha).clamp_min(-torch.pi / 2), (theta + alpha).clamp_max(torch.pi / 2)
        p0 = torch.where(around | (a0 <= -torch.pi / 2), -torch.inf, f * torch.tan(a0))
        p1 = torch.where(around | (a1 >= torch.pi / 2), torch.inf, f * torch.tan(a1))
        lo, hi = centre + sign * p0, centre + sign * p1
        return torch.minimum(lo, hi) - 1, torch.maximum(lo, hi) + 1, around | (a0 < a1)

    x0, x1, front_x = extent(c[:, 0], k[:, 0], k[:, 2], 1.0)
    y0, y1, front_y = extent(c[:, 1], k[:, 1], k[:, 3], -1.0)
    ok &= front_x & front_y
    ntx, nty = (width + TILE - 1) // TILE, (height + TILE - 1) // TILE
    tx0 = (x0.clamp(0, width - 1) / TILE).floor().long()
    tx1 = (x1.clamp(0, width - 1) / TILE).floor().long()
    ty0 = (y0.clamp(0, height - 1) / TILE).floor().long()
    ty1 = (y1.clamp(0, height - 1) / TILE).floor().long()
    ok &= (x1 >= 0) & (x0 <= width - 1) & (y1 >= 0) & (y0 <= height - 1)
    nx, ny = tx1 - tx0 + 1, ty1 - ty0 + 1
    counts = torch.where(ok, nx * ny, 0)
    prim = torch.repeat_interleave(torch.arange(len(counts), device=K.device), counts)
    local = torch.arange(prim.shape[0], device=K.device) - (torch.cumsum(counts, 0) - counts)[prim]
    ty, tx = ty0[prim] + local // nx[prim], tx0[prim] + local % nx[prim]
    key = (prims.image[prim] * nty + ty) * ntx + tx
    key, order = torch.sort(key, stable=True)
    return TileBins(prim[order], key, nty, ntx)


_NONE = torch.iinfo(torch.int64).max  # the key of "no hit"


def _pack(t: Tensor, idx: Tensor) -> Tensor:
    """Order-preserving int64 key of (t >= 0 or inf, idx): the minimum key is the nearest hit."""
    return (t.contiguous().view(torch.int32).long() << 32) | idx


def _unpack(key: Tensor) -> tuple[Tensor, Tensor]:
    hit = key != _NONE
    t = torch.where(hit, (key >> 32).int().view(torch.float32), torch.inf)
    return t, torch.where(hit, key & 0xFFFFFFFF, -1)


def cast_pixels(prims: Primitives, bins: TileBins, K: Tensor, height: int, width: int,
                chunk: int | None = None) -> tuple[Tensor, Tensor]:
    """Depth (B, H, W) (inf = background) and winning primitive (B, H, W) (-1 = background) of every pixel.

    K: (B, 4) intrinsics fx, fy, cx, cy of each image; chunk: (primitive, tile) pairs solved at once.
    """
    B, device = K.shape[0], K.device
    chunk = chunk or (1 << 16 if device.type == "cuda" else 1 << 14)
    best = torch.full((B * height * width + 1,), _NONE, dtype=torch.int64, device=device)
    oy, ox = torch.meshgrid(torch.arange(TILE, device=device), torch.arange(TILE, device=device), indexing="ij")
    oy, ox = oy.reshape(-1), ox.reshape(-1)
    for start in range(0, bins.prim.shape[0], chunk):
        p, key = bins.prim[start:start + chunk], bins.key[start:start + chunk]
        img = key // (bins.tiles_y * bins.tiles_x)
        py = ((key // bins.tiles_x) % bins.tiles_y)[:, None] * TILE + oy  # (M, 64)
        px = (key % bins.tiles_x)[:, None] * TILE + ox
        t = intersect(prims, p, pixel_rays(px.float(), py.float(), K[img][:, None, :]))
        inside = (px < width) & (py < height) & t.isfinite()
        pix = torch.where(inside, img[:, None] * (height * width) + py * width + px, B * height * width)
        best.scatter_reduce_(0, pix.reshape(-1), _pack(t, p[:, None]).reshape(-1), reduce="amin")
    return tuple(v.view(B, height, width) for v in _unpack(best[:-1]))


def cast_rays(prims: Primitives, bins: TileBins, K: Tensor, x: Tensor, y: Tensor,
              image: Tensor) -> tuple[Tensor, Tensor]:
    """First hit (depth, primitive) of rays through sub-pixel points (x, y) (R,) of images (R,) (inside the image).

    Each ray is tested against the primitives binned to the tile that contains it.
    """
    tile = ((image * bins.tiles_y + (y.round().long() // TILE)) * bins.tiles_x + x.round().long() // TILE)
    lo = torch.searchsorted(bins.key, tile, right=False)
    counts = torch.searchsorted(bins.key, tile, right=True) - lo
    ray = torch.repeat_interleave(torch.arange(x.shape[0], device=x.device), counts)
    pair = lo[ray] + torch.arange(ray.shape[0], device=x.device) - (torch.cumsum(counts, 0) - counts)[ray]
    p = bins.prim[pair]
    t = intersect(prims, p, pixel_rays(x[ray], y[ray], K[image[ray]])[:, None, :])[:, 0]
    best = torch.full((x.shape[0],), _NONE, dtype=torch.int64, device=x.device)
    best.scatter_reduce_(0, ray, torch.where(t.isfinite(), _pack(t, p), _NONE), reduce="amin")  # a miss: no hit
    return _unpack(best)
