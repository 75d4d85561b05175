"""Articulated skeleton of the procedural human: joint tree, body proportions and forward kinematics.

Body frame (rest pose): x = the person's left, y = up, z = forward (the way the person faces). The rest pose
stands straight with the arms hanging and the palms facing the thighs. Every joint rotates about three fixed
axes of its parent frame, in the order ``R = R(axis0, flex) @ R(axis1, abduct) @ R(axis2, twist)``. The axes
of a right-side joint are the mirror images of the left-side ones (``(x, -y, -z)``), so the same anatomical
angles give mirror-image poses; mirroring a pose is swapping its left and right rows and negating the lateral
and twist angles of the midline joints (:func:`mirror_pose`).

Fingers have four joints each, ``1`` (knuckle: Goliath ``*_third_joint``) to ``4`` (tip).
All geometry is vectorized over people: tensors carry a leading person dimension ``P``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
import torch
from torch import Tensor

FINGERS = ("thumb", "index", "middle", "ring", "pinky")
MIDLINE = ("pelvis", "spine", "chest", "neck", "head")
_SIDE_JOINTS = (
    ("clavicle", "chest"), ("shoulder", "clavicle"), ("elbow", "shoulder"), ("wrist", "elbow"),
    *((f"{f}{k}", "wrist" if k == 1 else f"{f}{k - 1}") for f in FINGERS for k in range(1, 5)),
    ("hip", "pelvis"), ("knee", "hip"), ("ankle", "knee"),
)
X, Y, Z = np.eye(3)


def _thumb_dir() -> np.ndarray:
    """Rest direction of the left thumb in the hand frame: mostly down, somewhat forward and toward the palm."""
    d = np.array([-0.3, -0.85, 0.45])
    return d / np.linalg.norm(d)


def _left_axes(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(flex, abduct, twist) axes of a left-side joint in its parent frame; positive angles are anatomical."""
    if name == "clavicle":  # elevation, protraction
        return Z, -Y, X
    if name in ("shoulder", "hip"):  # flexion (forward), abduction (outward), external rotation
        return -X, Z, Y
    if name == "elbow":  # flexion (forward), forearm twist
        return -X, Y, Z
    if name == "knee":  # flexion (backward)
        return X, Y, Z
    if name == "ankle":  # plantar flexion, inversion
        return X, Z, Y
    if name == "wrist":  # flexion toward the palm (palm faces -x), radial deviation (toward the thumb)
        return -Z, -X, Y
    if name.startswith("thumb"):
        flex = np.cross(_thumb_dir(), -X)
        return flex / np.linalg.norm(flex), -X, _thumb_dir()
    # fingers: curl toward the palm; spread away from the middle finger
    spread = -X if name[:-1] in ("index", "middle") else X
    return -Z, spread, Y


@dataclass(frozen=True)
class Skeleton:
    """The fixed joint tree shared by every person."""

    names: tuple[str, ...]
    parents: tuple[int, ...]  # -1 for the root
    axes: np.ndarray  # (J, 3, 3): axes[j, k] = k-th rotation axis of joint j, in the parent frame
    mirror: tuple[int, ...]  # mirror[j] = the joint on the other side (self for midline joints)
    levels: tuple[tuple[int, ...], ...]  # joints grouped by depth in the tree, root first

    @property
    def num_joints(self) -> int:
        return len(self.names)

    def index(self, name: str) -> int:
        return self.names.index(name)


@cache
def skeleton() -> Skeleton:
    names, parents, axes = [], [], []
    for name in MIDLINE:
        names.append(name)
        parents.append(names.index(MIDLINE[MIDLINE.index(name) - 1]) if name != "pelvis" else -1)
        axes.append(np.stack([X, -Z, Y]))  # flexion (forward), lateral bend (to the left), twist (to the left)
    for side, sign in (("l", 1.0), ("r", -1.0)):
        mirror = np.array([1.0, sign, sign])
        for name, parent in _SIDE_JOINTS:
            names.append(f"{side}_{name}")
            parents.append(names.index(parent if parent in MIDLINE else f"{side}_{parent}"))
            axes.append(np.stack(_left_axes(name)) * mirror)
    mirror_idx = tuple(names.index({"l_": "r_", "r_": "l_"}.get(n[:2], "") + n[2:]) if n[:2] in ("l_", "r_")
                       else i for i, n in enumerate(names))
    depth = [0] * len(names)
    for j, p in enumerate(parents):
        depth[j] = depth[p] + 1 if p >= 0 else 0
    levels = tuple(tuple(j for j in range(len(names)) if depth[j] == d) for d in range(max(depth) + 1))
    return Skeleton(tuple(names), tuple(parents), np.stack(axes).astype(np.float32), mirror_idx, levels)


def mirror_pose(pose: np.ndarray) -> np.ndarray:
    """Anatomical angles (J, 3) of the mirror-image pose (see the module docstring)."""
    sk = skeleton()
    out = pose[list(sk.mirror)].copy()
    mid = [sk.index(n) for n in MIDLINE]
    out[mid, 1:] *= -1
    return out


# ----------------------------------------------------------------------------------------------------------------
# Small rotation helpers (explicit sums instead of matmul: bitwise identical whatever the batch size)

def matmul3(a: Tensor, b: Tensor) -> Tensor:
    """(..., 3, 3) @ (..., 3, 3)."""
    return (a[..., :, :, None] * b[..., None, :, :]).sum(-2)


def apply3(r: Tensor, v: Tensor) -> Tensor:
    """(..., 3, 3) @ (..., 3) -> (..., 3)."""
    return (r * v[..., None, :]).sum(-1)


def axis_angle(axis: Tensor, angle: Tensor) -> Tensor:
    """Rodrigues rotation matrices for unit axes (..., 3) and angles (...) -> (..., 3, 3)."""
    x, y, z = axis.unbind(-1)
    zero = torch.zeros_like(x)
    k = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).unflatten(-1, (3, 3))
    s, c = angle.sin()[..., None, None], angle.cos()[..., None, None]
    eye = torch.eye(3, dtype=axis.dtype, device=axis.device)
    return eye + s * k + (1 - c) * matmul3(k, k)


def rot_x(a: Tensor) -> Tensor:
    return axis_angle(torch.tensor([1.0, 0.0, 0.0], device=a.device).expand(*a.shape, 3), a)


def rot_y(a: Tensor) -> Tensor:
    return axis_angle(torch.tensor([0.0, 1.0, 0.0], device=a.device).expand(*a.shape, 3), a)


# ----------------------------------------------------------------------------------------------------------------
# Proportions

def body_dims(shape: dict[str, Tensor]) -> dict[str, Tensor]:
    """Segment lengths in metres (each (P,)) from the shape parameters (see ``people.BodyShape``)."""
    h = shape["height"]
    head = shape["head"] * h  # chin to crown
    neck = shape["neck"] * h
    leg = shape["leg"] * h  # sole to hip joint
    ankle = 0.042 * h
    head_joint = h - 0.88 * head  # skull base, 0.12 head heights above the chin
    neck_base = head_joint - neck
    arm = shape["arm"] * h
    return {
        "height": h, "head": head, "neck": neck, "ankle": ankle,
        "thigh": 0.5 * (leg - ankle), "shin": 0.5 * (leg - ankle), "pelvis": leg,
        "torso": neck_base - leg,  # hip joints to the base of the neck
        "shoulder": shape["shoulder"] * h, "hip": shape["hip"] * h,
        "upper_arm": 0.54 * arm, "forearm": 0.46 * arm,
        "hand": shape["hand"] * h, "foot": shape["foot"] * h,
    }


# finger knuckle positions (x, y, z) in hand lengths, hand frame of the left hand; phalanx lengths in hand lengths
_KNUCKLE = {"thumb": (-0.04, -0.1, 0.12), "index": (0.0, -0.49, 0.16), "middle": (0.0, -0.5, 0.05),
            "ring": (0.0, -0.48, -0.06), "pinky": (0.0, -0.44, -0.16)}
PHALANX = {"thumb": (0.24, 0.17, 0.13), "index": (0.22, 0.13, 0.1), "middle": (0.25, 0.15, 0.11),
           "ring": (0.23, 0.14, 0.1), "pinky": (0.18, 0.1, 0.09)}


def rest_offsets(dims: dict[str, Tensor]) -> Tensor:
    """(P, J, 3) offset of every joint from its parent, in the parent frame, for the rest pose."""
    sk = skeleton()
    P = dims["height"].shape[0]
    out = torch.zeros(P, sk.num_joints, 3, device=dims["height"].device)
    t, h = dims["torso"], dims["height"]

    def put(name: str, x, y, z) -> None:
        for side, sign in (("", 1.0),) if name in MIDLINE else (("l", 1.0), ("r", -1.0)):
            j = sk.index(f"{side}_{name}" if side else name)
            out[:, j] = torch.stack(torch.broadcast_tensors(sign * x, y, z), -1)

    zero = torch.zeros_like(h)
    put("spine", zero, 0.3 * t, -0.01 * h)
    put("chest", zero, 0.3 * t, 0.0 * h)
    put("neck", zero, 0.4 * t, -0.005 * h)
    put("head", zero, dims["neck"], 0.008 * h)
    put("clavicle", 0.012 * h, 0.4 * t - 0.03 * h, 0.012 * h)
    put("shoulder", dims["shoulder"] - 0.012 * h, zero, -0.018 * h)
    put("elbow", zero, -dims["upper_arm"], zero)
    put("wrist", zero, -dims["forearm"], zero)
    hand = dims["hand"]
    thumb = torch.tensor(_thumb_dir(), dtype=h.dtype, device=h.device)
    for f in FINGERS:
        kx, ky, kz = _KNUCKLE[f]
        put(f"{f}1", kx * hand, ky * hand, kz * hand)
        for k, length in enumerate(PHALANX[f], start=2):
            if f == "thumb":
                put(f"{f}{k}", thumb[0] * length * hand, thumb[1] * length * hand, thumb[2] * length * hand)
            else:
                put(f"{f}{k}", zero, -length * hand, zero)
    put("hip", dims["hip"], zero, zero)
    put("knee", zero, -dims["thigh"], zero)
    put("ankle", zero, -dims["shin"], zero)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Forward kinematics

def local_rotations(pose: Tensor) -> Tensor:
    """Anatomical angles (P, J, 3) in radians -> local joint rotations (P, J, 3, 3)."""
    axes = torch.as_tensor(skeleton().axes, device=pose.device)  # (J, 3, 3)
    r = axis_angle(axes.expand(pose.shape[0], -1, -1, -1), pose)  # (P, J, 3, 3, 3): one rotation per axis
    return matmul3(matmul3(r[:, :, 0], r[:, :, 1]), r[:, :, 2])


def forward_kinematics(offsets: Tensor, local: Tensor, root_rot: Tensor, root_pos: Tensor) -> tuple[Tensor, Tensor]:
    """Joint positions (P, J, 3) and frames (P, J, 3, 3) from offsets (P, J, 3), local rotations (P, J, 3, 3)
    and the root transform (P, 3, 3), (P, 3). Joints of one tree level are computed together."""
    sk = skeleton()
    pos = torch.empty_like(offsets)
    rot = torch.empty_like(local)
    pos[:, 0] = root_pos
    rot[:, 0] = matmul3(root_rot, local[:, 0])
    parents = torch.tensor(sk.parents, device=offsets.device)
    for level in sk.levels[1:]:
        j = torch.tensor(level, device=offsets.device)
        p = parents[j]
        rot[:, j] = matmul3(rot[:, p], local[:, j])
        pos[:, j] = pos[:, p] + apply3(rot[:, p], offsets[:, j])
    return pos, rot
