"""The 308 Goliath keypoints of a procedural person, in model channel order, as 3-D points.

Placement (Goliath annotates surface-ish landmarks on real scans; we place each point where the procedural body
gives it a clear meaning):

* body joints (shoulders, elbows, wrists, hips, knees, ankles, neck) and finger joints 1-3 (``*_third_joint``,
  ``*2``, ``*3``) are skeletal joint centres *inside* the body; finger tips (``*4``) are the ends of the fingertip;
* toes and heel are points on the foot (or shoe) surface; olecranon, cubital fossa and acromion are points on the
  surface of the elbow (back and front) and the top of the shoulder;
* nose, eyes and ears are copies of the face points ``tip_of_nose``, ``*_center_of_iris`` and
  ``*_deepest_point_of_concha``;
* the 238 face points follow a fixed layout in face coordinates (:func:`face_layout`): (u, v) on the front of the
  face, stamped onto the head along its forward axis, or (s, t) on the ear, stamped along the head's side axis.
  Left points (``l_``, ``left``) are on the person's left; the right ones are their mirror images, following the
  Goliath flip map, so a horizontal flip with ``flip_indices`` is exact. Iris and pupil clock positions are as the
  viewer sees them (3 o'clock toward the image right of a frontal face).

Each point also gets a depth tolerance for visibility: the body radius there (joint centres) or 0 (surface).
"""

from __future__ import annotations

import re
from functools import cache

import numpy as np
import torch
from torch import Tensor

from ..metadata import keypoint_set
from .body import SIDES, Bodies, face_ellipsoids, foot_ellipsoid, footwear_growth
from .raycast import intersect_ellipsoids
from .skeleton import apply3, skeleton

# ---------------------------------------------------------------------------------------------------------------
# Face layout in face coordinates (u toward the person's left, v up; units of the cranium half-lengths)

EYE = (0.415, 0.0)  # centre of the left eye
EYE_CORNERS = (0.22, 0.61)  # |u| of the inner and outer corners
IRIS = (0.079, 0.052)  # iris radii along u and v (a circle of 0.026 head heights)
MOUTH = (0.33, -0.64)  # half-width and height of the mouth
EAR_UV = (0.12, -0.15)  # (s, t) of the ear canal on the ear


def eye_lines(t: Tensor | np.ndarray, kind: str):
    """(|u|, v) of the left eye's curves at t in [0, 1] (inner to outer corner).

    kind: upper_lash, upper_eyelid, upper_crease, lower_lash, lower_eyelid."""
    lib = torch if isinstance(t, Tensor) else np
    u = EYE_CORNERS[0] + (EYE_CORNERS[1] - EYE_CORNERS[0]) * t
    bump = lib.sin(np.pi * t) ** 0.8
    base = EYE[1] + 0.02 * t - 0.01
    lift = {"upper_lash": 0.06, "upper_eyelid": 0.08, "upper_crease": 0.12, "lower_lash": -0.04,
            "lower_eyelid": -0.055}[kind]
    return u, base + lift * bump


def brow_lines(t, kind: str):
    """(|u|, v) of the left brow's upper or lower edge at t in [0, 1] (inner start to outer end)."""
    lib = torch if isinstance(t, Tensor) else np
    u = 0.16 + 0.5 * t
    centre = 0.12 + 0.05 * lib.sin(np.pi * t ** 0.8) - 0.05 * t
    half = 0.025 * (1 - 0.7 * t)
    return u, centre + (half if kind == "upper" else -half)


def lip_lines(au, kind: str):
    """v of the lip contours at |u| (outer_upper, inner, outer_lower); zero width beyond the mouth corners."""
    lib = torch if isinstance(au, Tensor) else np
    x = (au / MOUTH[0]).clip(0, 1) if lib is np else (au / MOUTH[0]).clamp(0, 1)
    m = MOUTH[1]
    if kind == "outer_upper":
        return m + 0.075 * (1 - x * x) ** 0.6 - 0.02 * lib.exp(-((x / 0.12) ** 2)) + 0.005
    if kind == "inner":
        return m + 0.005 * (1 - x * x)
    return m - 0.085 * (1 - x * x) ** 0.7


def _ear_st(name: str) -> tuple[float, float]:
    """(s, t): forward and up on the ear, in half-lengths of the ear ellipsoid."""
    fixed = {"top_end_of_inferior_crus": (0.1, 0.35), "top_end_of_superior_crus": (-0.05, 0.6),
             "start_of_antihelix": (-0.2, 0.45), "end_of_antihelix": (-0.2, -0.5),
             "midpoint_1_of_antihelix": (-0.35, 0.22), "midpoint_1_of_inferior_crus": (0.05, 0.22),
             "midpoint_2_of_antihelix": (-0.4, -0.05), "midpoint_3_of_antihelix": (-0.33, -0.3),
             "highest_point_of_antitragus": (-0.05, -0.45), "bottom_point_of_tragus": (0.42, -0.32),
             "protruding_point_of_tragus": (0.52, -0.18), "top_point_of_tragus": (0.42, -0.02),
             "start_point_of_crus_of_helix": (0.3, 0.15), "deepest_point_of_concha": EAR_UV,
             "tip_of_ear_lobe": (0.05, -0.92), "midpoint_between_22_15": (-0.3, -0.7),
             "bottom_connecting_point_of_ear_lobe": (0.35, -0.75), "top_connecting_point_of_helix": (0.42, 0.6)}
    if name in fixed:
        return fixed[name]
    k = int(re.fullmatch(r"point_(\d)_of_inner_helix", name).group(1))  # along the rim, front-top to back-bottom
    a = np.radians(70 + (k - 1) * 170 / 7)
    return float(0.82 * np.cos(a)), float(0.82 * np.sin(a))


_CLOCK = {"3": 0, "midpoint_1": 45, "12": 90, "midpoint_4": 135, "9": 180, "midpoint_3": 225, "6": 270,
          "midpoint_2": 315}


def _line_t(part: str) -> float:
    """Position along an eye curve: inner end 0, outer end 1, centre 0.5, midpoints 1-3 / 4-6 on either side."""
    if part in ("inner_end", "outer_end", "centerpoint"):
        return {"inner_end": 0.0, "outer_end": 1.0, "centerpoint": 0.5}[part]
    k = int(part.split("_")[1])
    return k / 8 if k <= 3 else (k + 1) / 8


def _lip_u(k: int) -> float:
    """Signed u (in mouth half-widths) of lip midpoint k: 3, 1, 4 on the right half; 5, 2, 6 on the left."""
    return {3: -0.75, 1: -0.5, 4: -0.25, 5: 0.25, 2: 0.5, 6: 0.75}[k]


def _left_or_centre(name: str) -> tuple[int, float, float] | None:
    """(region, a, b) of a centre or left face point; None for a right one. region 0: (u, v); 1: left ear (s, t)."""
    if name.startswith("r_") or "_of_r_" in name or "_r_nostril" in name:
        return None
    if name.startswith("l_") and ("helix" in name or "crus" in name or "tragus" in name or "lobe" in name
                                  or "concha" in name or "antihelix" in name or "between_22_15" in name):
        return (1, *_ear_st(name[2:]))
    fixed = {"center_of_glabella": (0.0, 0.12), "center_of_nose_root": (0.0, 0.02),
             "tip_of_nose_bridge": (0.0, -0.26), "center_of_labiomental_groove": (0.0, -0.8),
             "tip_of_chin": (0.0, -0.97), "tip_of_nose": (0.0, -0.32), "bottom_center_of_nose": (0.0, -0.42),
             "l_outer_corner_of_nose": (0.16, -0.37), "inner_corner_of_l_nostril": (0.04, -0.41),
             "outer_corner_of_l_nostril": (0.13, -0.4), "upper_corner_of_l_nostril": (0.09, -0.38),
             "l_outer_corner_of_mouth": (MOUTH[0], MOUTH[1]), "center_of_cupid_bow": (0.0, 0.0),
             "center_of_lower_outer_lip": (0.0, 0.0), "center_of_upper_inner_lip": (0.0, 0.0),
             "center_of_lower_inner_lip": (0.0, 0.0), "l_inner_corner_of_mouth": (0.85 * MOUTH[0], 0.0)}
    if name in fixed:
        u, v = fixed[name]
        if "mouth" in name or "lip" in name or "cupid" in name:
            kind = {"center_of_cupid_bow": "outer_upper", "center_of_lower_outer_lip": "outer_lower"}.get(name, "inner")
            v = float(lip_lines(np.float64(abs(u)), kind)) + {"center_of_upper_inner_lip": 0.004,
                                                              "center_of_lower_inner_lip": -0.004}.get(name, 0.0)
        return 0, u, v
    if m := re.fullmatch(r"midpoint_(\d)_of_nose_bridge", name):
        return 0, 0.0, 0.02 - 0.07 * int(m.group(1))
    if m := re.fullmatch(r"midpoint_(\d)_of_(upper|lower)_(outer|inner)_lip", name):
        u = _lip_u(int(m.group(1))) * (MOUTH[0] if m.group(3) == "outer" else 0.85 * MOUTH[0])
        kind = "inner" if m.group(3) == "inner" else f"outer_{m.group(2)}"
        offset = {"upper": 0.004, "lower": -0.004}[m.group(2)] if kind == "inner" else 0.0
        return 0, u, float(lip_lines(np.float64(abs(u)), kind)) + offset
    if m := re.fullmatch(r"(upper_startpoint|lower_startpoint|end|upper_midpoint_\d|lower_midpoint_\d)_of_l_eyebrow",
                         name):
        part = m.group(1)
        t = 1.0 if part == "end" else 0.0 if "startpoint" in part else int(part[-1]) / 4
        u, v = brow_lines(np.float64(t), "upper" if part.startswith("upper") or part == "end" else "lower")
        if part == "end":
            v = float(np.mean([brow_lines(np.float64(1.0), k)[1] for k in ("upper", "lower")]))
        return 0, float(u), float(v)
    if m := re.fullmatch(r"l_(inner_end|outer_end|centerpoint|midpoint_\d)_of_(upper|lower)_(lash|eyelid|crease)_line",
                         name):
        u, v = eye_lines(np.float64(_line_t(m.group(1))), f"{m.group(2)}_{m.group(3)}")
        return 0, float(u), float(v)
    if m := re.fullmatch(r"l_(center|border)_of_(iris|pupil)(?:_(.+))?", name):
        scale = 1.0 if m.group(2) == "iris" else 0.45
        if m.group(1) == "center":
            return 0, EYE[0], EYE[1]
        a = np.radians(_CLOCK[m.group(3)])
        return 0, EYE[0] + scale * IRIS[0] * float(np.cos(a)), EYE[1] + scale * IRIS[1] * float(np.sin(a))
    raise ValueError(f"no face layout for keypoint {name!r}")


@cache
def face_layout() -> tuple[np.ndarray, np.ndarray]:
    """(region (308,), coords (308, 2)) for the face channels; region -1 for non-face channels.

    region 0: front of the face at (u, v); 1 / 2: left / right ear at (s, t)."""
    ks = keypoint_set("goliath")
    region = np.full(308, -1)
    coords = np.zeros((308, 2))
    face = ks.groups["face"]
    for i in face:
        got = _left_or_centre(ks.names[i])
        if got is not None:
            region[i], coords[i] = got[0], got[1:]
    for i in face:
        if region[i] < 0:
            j = ks.flip_indices[i]
            region[i] = {0: 0, 1: 2}[region[j]]
            coords[i] = (-coords[j, 0], coords[j, 1]) if region[j] == 0 else coords[j]
    assert (region[list(face)] >= 0).all()
    return region, coords


# ---------------------------------------------------------------------------------------------------------------

def _stamp(origin: Tensor, direction: Tensor, ellipsoids: list[tuple[Tensor, Tensor, Tensor]]) -> Tensor:
    """Nearest surface points along rays (P, K, 3) onto a union of per-person ellipsoids."""
    best = torch.full(origin.shape[:-1], torch.inf, device=origin.device)
    for c, r, half in ellipsoids:
        t = intersect_ellipsoids(c[:, None] - origin, r[:, None], half[:, None], direction)
        best = torch.minimum(best, t)
    best = torch.where(best.isfinite(), best, 0.0)
    return origin + best[..., None] * direction


@cache
def _body_channels() -> dict[str, list[tuple[int, str]]]:
    """Goliath channel -> skeleton joint, for joint-centre keypoints and finger tips."""
    ks = keypoint_set("goliath")
    finger = {"thumb": "thumb", "forefinger": "index", "middle_finger": "middle", "ring_finger": "ring",
              "pinky_finger": "pinky"}
    joints, tips = [], []
    for i, n in enumerate(ks.names):
        side = {"left": "l", "right": "r"}.get(n.split("_")[0])
        rest = n.split("_", 1)[1] if side else n
        if n == "neck" or (side and rest in ("shoulder", "elbow", "wrist", "hip", "knee", "ankle")):
            joints.append((i, f"{side}_{rest}" if side else n))
        elif side and (m := re.fullmatch(r"(thumb|forefinger|middle_finger|ring_finger|pinky_finger)"
                                         r"(4|3|2|_third_joint)", rest)):
            k = {"_third_joint": 1}.get(m.group(2)) or int(m.group(2))
            (tips if k == 4 else joints).append((i, f"{side}_{finger[m.group(1)]}{k}"))
    return {"joints": joints, "tips": tips}


def keypoints_3d(bodies: Bodies, people: dict[str, Tensor], joint_radius: Tensor) -> tuple[Tensor, Tensor]:
    """Points (P, 308, 3) in the bodies' frame and depth tolerances (P, 308) in metres."""
    ks, sk = keypoint_set("goliath"), skeleton()
    P, device = bodies.pos.shape[0], bodies.pos.device
    pts = torch.zeros(P, 308, 3, device=device)
    tol = torch.zeros(P, 308, device=device)
    chans = _body_channels()
    idx = torch.tensor([i for i, _ in chans["joints"]], device=device)
    jnt = torch.tensor([sk.index(j) for _, j in chans["joints"]], device=device)
    pts[:, idx] = bodies.pos[:, jnt]
    tol[:, idx] = joint_radius[:, jnt]
    for i, j in chans["tips"]:
        tip, prev = bodies.pos[:, sk.index(j)], bodies.pos[:, sk.index(j[:-1] + "3")]
        axis = (tip - prev) / (tip - prev).norm(dim=-1, keepdim=True).clamp_min(1e-9)
        pts[:, i] = tip + joint_radius[:, sk.index(j), None] * axis
    infl = footwear_growth(people, bodies.dims)
    for side, _, sign in SIDES:
        long = "left" if side == "l" else "right"
        c, r, half = foot_ellipsoid(bodies, side, infl)
        for kp, d in (("big_toe", (-0.45 * sign, -0.3, 0.84)), ("small_toe", (0.6 * sign, -0.3, 0.74)),
                      ("heel", (0.0, -0.45, -0.89))):
            u = torch.tensor(d, device=device)
            pts[:, ks.index(f"{long}_{kp}")] = c + apply3(r, half * (u / u.norm()))
        shoulder, elbow = sk.index(f"{side}_shoulder"), sk.index(f"{side}_elbow")
        for kp, j, frame, d in (("olecranon", elbow, shoulder, (0, 0, -1.0)),
                                ("cubital_fossa", elbow, shoulder, (0, 0, 1.0)),
                                ("acromion", shoulder, sk.index(f"{side}_clavicle"), (0, 1.0, 0))):
            u = torch.tensor(d, device=device)
            offset = joint_radius[:, j, None] * apply3(bodies.rot[:, frame], u)
            pts[:, ks.index(f"{long}_{kp}")] = bodies.pos[:, j] + offset
    # face: stamp the layout onto the head along its forward axis (front) or its side axis (ears)
    region, coords = face_layout()
    ells = face_ellipsoids(bodies)
    centre, rot, half = ells[0]
    hh = bodies.dims["head"][:, None, None]
    front = torch.tensor(np.where(region == 0)[0], device=device)
    uv = torch.tensor(coords[region == 0], dtype=torch.float32, device=device)
    local = torch.cat([uv * half[:, None, :2], 2 * hh.expand(P, len(front), 1)], -1)  # (P, K, 3)
    origin = centre[:, None] + apply3(rot[:, None], local)
    pts[:, front] = _stamp(origin, -rot[:, None, :, 2].expand_as(origin), ells)
    for reg, (ec, er, eh), sign in ((1, ells[3], 1.0), (2, ells[4], -1.0)):
        sel = torch.tensor(np.where(region == reg)[0], device=device)
        st = torch.tensor(coords[region == reg], dtype=torch.float32, device=device)
        local = torch.stack([sign * 2 * hh[:, :, 0].expand(P, len(sel)), st[:, 1] * eh[:, None, 1],
                             st[:, 0] * eh[:, None, 2]], -1)
        origin = ec[:, None] + apply3(er[:, None], local)
        pts[:, sel] = _stamp(origin, (-sign * er[:, None, :, 0]).expand_as(origin), ells)
    for body_kp, face_kp in (("nose", "tip_of_nose"), ("left_eye", "l_center_of_iris"),
                             ("right_eye", "r_center_of_iris"), ("left_ear", "l_deepest_point_of_concha"),
                             ("right_ear", "r_deepest_point_of_concha")):
        pts[:, ks.index(body_kp)] = pts[:, ks.index(face_kp)]
    return pts, tol
