"""Pose sampling: anatomical joint angles for a few kinds of everyday poses, always within joint limits.

A pose is a (J, 3) array of (flex, abduct, twist) angles in radians, one row per joint of
:func:`~opensapiens.synth.skeleton.skeleton` (see its docstring for the sign conventions). Kinds:
standing, walking, reaching, sitting, crouching, arms_raised and free (anything within 45 % of the limits).
Which way the person faces (including turned away) is the scene's choice, not the pose's.
"""

from __future__ import annotations

import numpy as np

from .skeleton import FINGERS, skeleton

POSE_KINDS = ("standing", "walking", "reaching", "sitting", "crouching", "arms_raised", "free")
POSE_PROBS = (0.18, 0.2, 0.14, 0.12, 0.1, 0.12, 0.14)

# (flex, abduct, twist) limits in degrees, by joint name without its side prefix
LIMITS = {
    "pelvis": ((-15, 30), (-10, 10), (-20, 20)),
    "spine": ((-15, 35), (-15, 15), (-20, 20)),
    "chest": ((-10, 30), (-12, 12), (-20, 20)),
    "neck": ((-30, 35), (-20, 20), (-40, 40)),
    "head": ((-25, 25), (-15, 15), (-30, 30)),
    "clavicle": ((-10, 30), (-15, 20), (0, 0)),
    "shoulder": ((-50, 180), (-15, 180), (-70, 80)),
    "elbow": ((0, 145), (-60, 80), (0, 0)),
    "wrist": ((-60, 70), (-25, 25), (0, 0)),
    "thumb1": ((-10, 50), (-10, 40), (-20, 20)),
    "thumb2": ((-10, 60), (0, 0), (0, 0)),
    "thumb3": ((-15, 80), (0, 0), (0, 0)),
    "finger1": ((-15, 90), (-15, 20), (0, 0)),
    "finger2": ((0, 110), (0, 0), (0, 0)),
    "finger3": ((0, 80), (0, 0), (0, 0)),
    "hip": ((-25, 130), (-20, 50), (-35, 45)),
    "knee": ((0, 150), (0, 0), (0, 0)),
    "ankle": ((-30, 45), (-15, 20), (0, 0)),
}


def _limit_key(name: str) -> str | None:
    base = name[2:] if name[:2] in ("l_", "r_") else name
    if base[-1] == "4":  # finger tips do not rotate
        return None
    if base[:-1] in FINGERS[1:]:
        return f"finger{base[-1]}"
    return base


def limits_array() -> np.ndarray:
    """(J, 3, 2) lower/upper limits in radians (zeros for joints that never rotate)."""
    out = np.zeros((skeleton().num_joints, 3, 2))
    for j, name in enumerate(skeleton().names):
        key = _limit_key(name)
        if key is not None:
            out[j] = np.radians(np.array(LIMITS[key], dtype=float))
    return out


class _Pose:
    """Degrees, by joint name; ``side`` in "l", "r"."""

    def __init__(self) -> None:
        self.deg = np.zeros((skeleton().num_joints, 3))

    def set(self, name: str, flex: float = 0.0, abd: float = 0.0, twist: float = 0.0, add: bool = False) -> None:
        j = skeleton().index(name)
        v = np.array([flex, abd, twist])
        self.deg[j] = self.deg[j] + v if add else v


def _hand(rng: np.random.Generator, pose: _Pose, side: str) -> None:
    gesture = rng.choice(["relaxed", "fist", "open", "point", "random"], p=[0.45, 0.15, 0.2, 0.08, 0.12])
    for f in FINGERS:
        if gesture == "fist" or (gesture == "point" and f not in ("index", "thumb")):
            curl = rng.uniform(0.8, 1.0)
        elif gesture == "open" or (gesture == "point" and f == "index"):
            curl = rng.uniform(0.0, 0.1)
        elif gesture == "relaxed":
            curl = rng.uniform(0.15, 0.4)
        else:
            curl = rng.uniform(0.0, 1.0)
        if f == "thumb":
            pose.set(f"{side}_thumb1", 40 * curl + rng.normal(0, 5), rng.uniform(0, 30))
            pose.set(f"{side}_thumb2", 45 * curl)
            pose.set(f"{side}_thumb3", 60 * curl + rng.normal(0, 5))
        else:
            spread = {"index": 1.0, "middle": 0.0, "ring": 0.6, "pinky": 1.2}[f]
            spread *= rng.uniform(8, 18) if gesture == "open" else rng.uniform(0, 6)
            pose.set(f"{side}_{f}1", 85 * curl + rng.normal(0, 5), spread)
            pose.set(f"{side}_{f}2", 100 * curl + rng.normal(0, 5))
            pose.set(f"{side}_{f}3", 65 * curl + rng.normal(0, 4))


def _relaxed_arm(rng: np.random.Generator, pose: _Pose, side: str) -> None:
    pose.set(f"{side}_shoulder", rng.uniform(-12, 20), rng.uniform(3, 18), rng.uniform(-15, 25))
    pose.set(f"{side}_elbow", rng.uniform(5, 35), rng.uniform(-20, 40))
    pose.set(f"{side}_wrist", rng.uniform(-10, 20), rng.uniform(-10, 10))


def sample_pose(rng: np.random.Generator, kind: str | None = None) -> tuple[str, np.ndarray]:
    """Return (kind, anatomical angles (J, 3) in radians)."""
    if kind is None:
        kind = str(rng.choice(POSE_KINDS, p=POSE_PROBS))
    if kind not in POSE_KINDS:
        raise ValueError(f"unknown pose kind {kind!r}; expected one of {POSE_KINDS}")
    p = _Pose()
    sides = ("l", "r")
    for s in sides:
        _relaxed_arm(rng, p, s)
        p.set(f"{s}_hip", rng.uniform(-5, 5), rng.uniform(0, 8), rng.uniform(-5, 15))
        p.set(f"{s}_knee", rng.uniform(0, 8))
        _hand(rng, p, s)
    p.set("spine", rng.normal(0, 4), rng.normal(0, 3), rng.normal(0, 6))
    p.set("chest", rng.normal(0, 3), rng.normal(0, 3), rng.normal(0, 6))
    p.set("neck", rng.normal(0, 8), rng.normal(0, 5), rng.normal(0, 18))
    p.set("head", rng.normal(0, 8), rng.normal(0, 5), rng.normal(0, 8))

    if kind == "walking":
        phase, amp = rng.uniform(0, 2 * np.pi), rng.uniform(15, 32)
        for s, sign in (("l", 1.0), ("r", -1.0)):
            swing = sign * np.sin(phase)
            p.set(f"{s}_hip", amp * swing, rng.uniform(0, 6), rng.uniform(-5, 10))
            p.set(f"{s}_knee", 5 + 55 * max(0.0, sign * np.cos(phase)) ** 1.5 + max(0.0, swing) * 15)
            p.set(f"{s}_ankle", -0.4 * amp * swing)
            p.set(f"{s}_shoulder", -0.7 * amp * swing + rng.normal(0, 4), rng.uniform(4, 12), rng.uniform(-10, 20))
            p.set(f"{s}_elbow", rng.uniform(10, 40))
    elif kind == "reaching":
        both = rng.random() < 0.35
        for s in sides if both else (str(rng.choice(sides)),):
            p.set(f"{s}_shoulder", rng.uniform(45, 120), rng.uniform(-10, 40), rng.uniform(-30, 30))
            p.set(f"{s}_elbow", rng.uniform(0, 40), rng.uniform(-40, 60))
            p.set(f"{s}_wrist", rng.uniform(-40, 10), rng.uniform(-10, 20))
        p.set("spine", rng.uniform(0, 20), rng.normal(0, 6), rng.normal(0, 12))
        step = str(rng.choice(sides))
        p.set(f"{step}_hip", rng.uniform(0, 25), rng.uniform(0, 10))
        p.set(f"{step}_knee", rng.uniform(5, 30))
    elif kind == "sitting":
        for s in sides:
            p.set(f"{s}_hip", rng.uniform(75, 100), rng.uniform(0, 18), rng.uniform(-10, 20))
            p.set(f"{s}_knee", rng.uniform(70, 105))
            p.set(f"{s}_ankle", rng.uniform(-10, 15))
            p.set(f"{s}_shoulder", rng.uniform(10, 45), rng.uniform(0, 20), rng.uniform(-20, 20))
            p.set(f"{s}_elbow", rng.uniform(30, 95), rng.uniform(-20, 60))
        p.set("spine", rng.uniform(-5, 15), rng.normal(0, 4), rng.normal(0, 8))
    elif kind == "crouching":
        for s in sides:
            p.set(f"{s}_hip", rng.uniform(95, 125), rng.uniform(5, 30), rng.uniform(0, 25))
            p.set(f"{s}_knee", rng.uniform(110, 145))
            p.set(f"{s}_ankle", rng.uniform(-28, -10))
            p.set(f"{s}_shoulder", rng.uniform(15, 75), rng.uniform(0, 25), rng.uniform(-20, 20))
            p.set(f"{s}_elbow", rng.uniform(20, 100))
        p.set("pelvis", rng.uniform(5, 20))
        p.set("spine", rng.uniform(10, 30), rng.normal(0, 4), rng.normal(0, 8))
        p.set("neck", rng.uniform(-25, -5), rng.normal(0, 5), rng.normal(0, 15))
    elif kind == "arms_raised":
        which = rng.choice(["both", "l", "r"], p=[0.6, 0.2, 0.2])
        for s in sides if which == "both" else (str(which),):
            if rng.random() < 0.5:
                p.set(f"{s}_shoulder", rng.uniform(-10, 30), rng.uniform(130, 175), rng.uniform(-20, 40))
            else:
                p.set(f"{s}_shoulder", rng.uniform(140, 178), rng.uniform(0, 30), rng.uniform(-20, 40))
            p.set(f"{s}_elbow", rng.uniform(0, 50), rng.uniform(-30, 60))
            p.set(f"{s}_clavicle", rng.uniform(5, 25))
    elif kind == "free":
        lim = limits_array()
        mid, half = lim.mean(-1), 0.5 * (lim[..., 1] - lim[..., 0])
        free = np.degrees(mid + 0.45 * half * rng.uniform(-1, 1, size=mid.shape))
        keep = [j for j, n in enumerate(skeleton().names) if not any(f in n for f in FINGERS)]
        p.deg[keep] = free[keep]
        p.set("pelvis", 0, 0, 0)
        for s in sides:  # keep the legs able to stand
            j = skeleton().index(f"{s}_knee")
            p.deg[j, 0] = min(p.deg[j, 0], 60)
    lim = limits_array()
    return kind, np.clip(np.radians(p.deg), lim[..., 0], lim[..., 1])
