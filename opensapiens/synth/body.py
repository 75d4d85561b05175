"""The procedural body: a union of round cones and ellipsoids placed on the posed skeleton, with garments.

Each primitive carries one body-part class and one material, so the part label of a pixel is the class of the
primitive it sees. Garments are geometry, not paint: a sleeve is the part of the arm's round cones that ends at
the sleeve length, grown by the garment's looseness and labelled ``Upper_Clothing``; the skin below it is a second
round cone. The same holds for trousers, socks, shoes, hair and hats. Disabled pieces (a sleeve of zero
length, no hat) are dropped before rendering.

All tensors carry a leading person dimension P; geometry is built in whatever frame the joints are given in.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import torch
from torch import Tensor

from ..metadata import seg_classes
from .people import BOTTOM, HAIR, HAT, SHOE, SKIN, SOCK, TOP
from .raycast import Primitives
from .skeleton import (
    FINGERS,
    apply3,
    body_dims,
    forward_kinematics,
    local_rotations,
    matmul3,
    rest_offsets,
    rot_x,
    skeleton,
)


@cache
def class_id(name: str) -> int:
    """Goliath body-part class id by name (``seg_classes("goliath")``)."""
    return seg_classes("goliath").names.index(name)


SIDES = (("l", "Left", 1.0), ("r", "Right", -1.0))
# finger radii at joints 1..4, in hand lengths
FINGER_RADII = {"thumb": (0.075, 0.068, 0.06, 0.052), "index": (0.056, 0.05, 0.045, 0.038),
                "middle": (0.058, 0.052, 0.046, 0.039), "ring": (0.054, 0.048, 0.043, 0.037),
                "pinky": (0.048, 0.043, 0.039, 0.034)}


@dataclass
class Bodies:
    """Posed skeletons: joint positions (P, J, 3), frames (P, J, 3, 3) and segment lengths (dict of (P,))."""

    pos: Tensor
    rot: Tensor
    dims: dict[str, Tensor]

    def moved(self, R: Tensor, t: Tensor) -> Bodies:
        """The same bodies under the rigid transforms x -> R x + t, R (P, 3, 3), t (P, 3)."""
        return Bodies(apply3(R[:, None], self.pos) + t[:, None], matmul3(R[:, None], self.rot), self.dims)


def radii(people: dict[str, Tensor], dims: dict[str, Tensor]) -> dict[str, Tensor]:
    """Limb radii (P,) in metres at the named joints."""
    h, g = dims["height"], people["girth"]
    return {"neck": 0.029 * h * g ** 0.5, "shoulder": 0.027 * h * g, "elbow": 0.02 * h * g,
            "wrist": 0.0145 * h * g ** 0.5, "hip": 0.05 * h * g, "knee": 0.031 * h * g, "ankle": 0.02 * h * g ** 0.5}


def foot_ellipsoid(bodies: Bodies, side: str, infl: Tensor | float = 0.0) -> tuple[Tensor, Tensor, Tensor]:
    """Centre (P, 3), axes (P, 3, 3) and half-lengths (P, 3) of a foot (or shoe, grown by ``infl``)."""
    j = skeleton().index(f"{side}_ankle")
    foot, ankle = bodies.dims["foot"], bodies.dims["ankle"]
    local = torch.stack([torch.zeros_like(foot), -0.5 * ankle, 0.25 * foot + 0.5 * infl], -1)
    half = torch.stack([0.2 * foot, 0.5 * ankle, 0.5 * foot], -1) + torch.as_tensor(infl, device=foot.device)[..., None]
    return bodies.pos[:, j] + apply3(bodies.rot[:, j], local), bodies.rot[:, j], half


def footwear_growth(people: dict[str, Tensor], dims: dict[str, Tensor]) -> Tensor:
    """(P,) how much a foot grows (metres): shoes 12 mm, socks 2 mm (for a 1.7 m person), bare feet 0."""
    scale = dims["height"] / 1.7
    return torch.where(people["footwear"] == 2, 0.012 * scale, torch.where(people["footwear"] == 1, 0.002 * scale,
                                                                           0.0))


def pose_bodies(people: dict[str, Tensor]) -> Bodies:
    """Forward kinematics in the body frame, shifted so that the lowest point of the feet (or shoes) is at y = 0."""
    dims = body_dims(people)
    P = dims["height"].shape[0]
    eye = torch.eye(3, device=dims["height"].device).expand(P, 3, 3)
    pos, rot = forward_kinematics(rest_offsets(dims), local_rotations(people["pose"]), eye, torch.zeros_like(eye[:, 0]))
    bodies = Bodies(pos, rot, dims)
    lows = []
    for side, _, _ in SIDES:
        c, r, half = foot_ellipsoid(bodies, side, footwear_growth(people, dims))
        lows.append(c[:, 1] - ((r[:, 1, :] * half) ** 2).sum(-1).sqrt())  # lowest point of the ellipsoid
    ground = torch.minimum(*lows)
    return Bodies(pos - torch.stack([torch.zeros_like(ground), ground, torch.zeros_like(ground)], -1)[:, None],
                  rot, dims)


Value = Tensor | float | int | bool  # a per-person (P,) tensor or one value for everybody


class _Builder:
    """Collects per-person primitive slots, each a batch of P primitives."""

    def __init__(self, P: int, device: torch.device) -> None:
        self.P, self.device = P, device
        self.cones: list[tuple] = []
        self.ells: list[tuple] = []

    def _attrs(self, label: Value, material: Value, valid: Value, face: Value) -> tuple[Tensor, ...]:
        full = lambda v, dt: torch.as_tensor(v, device=self.device).to(dt).expand(self.P)  # noqa: E731
        return full(label, torch.long), full(material, torch.long), full(valid, torch.bool), full(face, torch.bool)

    def cone(self, a: Tensor, b: Tensor, ra: Value, rb: Value, label: Value, material: Value, valid: Value = True,
             face: Value = False) -> None:
        ra, rb = (torch.as_tensor(r, device=self.device).expand(self.P) for r in (ra, rb))
        self.cones.append((a, b, ra, rb, *self._attrs(label, material, valid, face)))

    def ellipsoid(self, c: Tensor, rot: Tensor, half: Tensor, label: Value, material: Value, valid: Value = True,
                  face: Value = False) -> None:
        self.ells.append((c, rot, half, *self._attrs(label, material, valid, face)))

    def piece(self, a: Tensor, b: Tensor, ra: Tensor, rb: Tensor, f0: Tensor, f1: Tensor, infl: Value, label: Value,
              material: Value) -> None:
        """The part [f0, f1] (fractions along a->b) of a round cone, grown by ``infl``."""
        lerp = lambda x, y, f: x + (y - x) * (f[..., None] if x.dim() > 1 else f)  # noqa: E731
        self.cone(lerp(a, b, f0), lerp(a, b, f1), lerp(ra, rb, f0) + infl, lerp(ra, rb, f1) + infl, label,
                  material, valid=f1 > f0 + 1e-4)

    def build(self, image: Tensor) -> Primitives:
        """Flatten (person-major) and drop disabled slots; image (P,) is each person's image."""
        cones = [torch.stack(v, 1).flatten(0, 1) for v in zip(*self.cones)]  # (P * slots, ...)
        ells = [torch.stack(v, 1).flatten(0, 1) for v in zip(*self.ells)]
        person = torch.arange(self.P, device=self.device)
        pc, pe = person.repeat_interleave(len(self.cones)), person.repeat_interleave(len(self.ells))
        kc, ke = cones[6], ells[5]  # valid flags
        pc, pe = pc[kc], pe[ke]
        return Primitives(
            cone_a=cones[0][kc], cone_b=cones[1][kc], cone_ra=cones[2][kc], cone_rb=cones[3][kc],
            ell_c=ells[0][ke], ell_rot=ells[1][ke], ell_r=ells[2][ke], person=torch.cat([pc, pe]),
            image=torch.cat([image[pc], image[pe]]), label=torch.cat([cones[4][kc], ells[3][ke]]),
            material=torch.cat([cones[5][kc], ells[4][ke]]), face=torch.cat([cones[7][kc], ells[6][ke]]),
        )


def _where(cond: Tensor, a: int, b: int) -> Tensor:
    return torch.where(cond, a, b)


def head_frame(bodies: Bodies) -> tuple[Tensor, Tensor, Tensor]:
    """Face frame: centre (P, 3), axes (P, 3, 3) and half-lengths (P, 3) of the cranium ellipsoid.

    The cranium is an egg from the chin to the crown. Face coordinates (u, v) of a point are its offsets from
    the centre along the first two axes divided by the half-lengths: u toward the person's left, v up; the eyes
    are at v = 0. Eyes, brows, lips and the 238 face keypoints are laid out there (landmarks.face_layout).
    """
    j = skeleton().index("head")
    hh = bodies.dims["head"]
    local = torch.stack([torch.zeros_like(hh), 0.38 * hh, 0.05 * hh], -1)
    half = torch.stack([0.33 * hh, 0.5 * hh, 0.42 * hh], -1)
    return bodies.pos[:, j] + apply3(bodies.rot[:, j], local), bodies.rot[:, j], half


def face_ellipsoids(bodies: Bodies) -> list[tuple[Tensor, Tensor, Tensor]]:
    """Cranium, jaw, nose, left ear, right ear: (centre, axes, half-lengths) each."""
    j = skeleton().index("head")
    hh, pos, rot = bodies.dims["head"], bodies.pos[:, j], bodies.rot[:, j]
    zero = torch.zeros_like(hh)

    def ell(x, y, z, hx, hy, hz, tilt: float = 0.0):
        c = pos + apply3(rot, torch.stack([x + zero, y * hh, z * hh], -1))
        r = rot if tilt == 0.0 else matmul3(rot, rot_x(torch.full_like(hh, tilt)))
        return c, r, torch.stack([hx * hh, hy * hh, hz * hh], -1)

    return [
        head_frame(bodies),
        ell(zero, 0.03, 0.12, 0.17, 0.15, 0.27),  # jaw: a chin below the egg-shaped cranium
        ell(zero, 0.27, 0.43, 0.06, 0.13, 0.085, tilt=-0.35),  # nose, tip forward
        ell(0.31 * hh, 0.33, 0.0, 0.05, 0.13, 0.085),  # left ear
        ell(-0.31 * hh, 0.33, 0.0, 0.05, 0.13, 0.085),  # right ear
    ]


def _at(bodies: Bodies, j: int, x: Tensor, y: Tensor, z: Tensor) -> Tensor:
    """The point with coordinates (x, y, z) (each (P,) or scalar) in the frame of joint j: (P, 3)."""
    return bodies.pos[:, j] + apply3(bodies.rot[:, j], torch.stack(torch.broadcast_tensors(x, y, z), -1))


def build_primitives(people: dict[str, Tensor], bodies: Bodies, image: Tensor) -> tuple[Primitives, Tensor]:
    """Primitives of all people (``image`` (P,) is each person's image in the batch), and each joint's outer radius
    (P, J): the body's radius there plus clothing, the depth tolerance of joint-centre keypoints."""
    out = _Builder(bodies.pos.shape[0], bodies.pos.device)
    joint_r = torch.zeros(bodies.pos.shape[:2], device=bodies.pos.device)
    rad = radii(people, bodies.dims)
    _torso(out, people, bodies, rad, joint_r)
    _arms(out, people, bodies, rad, joint_r)
    _legs(out, people, bodies, rad, joint_r)
    _head(out, people, bodies)
    return out.build(image), joint_r


def _torso(out: _Builder, people: dict[str, Tensor], bodies: Bodies, rad: dict[str, Tensor], joint_r: Tensor) -> None:
    """Pelvis (always under a lower garment), abdomen and chest (skin unless a shirt covers them), neck, and the
    shoulder line from the base of the neck to each shoulder joint."""
    J, rot, h, g = skeleton().index, bodies.rot, bodies.dims["height"], people["girth"]
    zero, shirt, top_d = torch.zeros_like(h), people["shirt"], people["top_loose"]
    pelvis_w = 0.094 * h * g ** 0.5 * people["pelvis_w"] ** 0.5
    out.ellipsoid(_at(bodies, J("pelvis"), zero, 0.012 * h, -0.006 * h), rot[:, J("pelvis")],
                  torch.stack([pelvis_w, 0.064 * h, 0.058 * h * g], -1) + people["bottom_loose"][:, None],
                  class_id("Lower_Clothing"), BOTTOM)
    for joint, centre, half, covered in (
            ("spine", (0.012, -0.008), (0.078 * g, 0.085, 0.043 * g * people["belly"]), shirt >= 2),
            ("chest", (0.045, 0.003), (0.78 * bodies.dims["shoulder"] / h * g ** 0.5, 0.095,
                                       0.056 * g * people["chest"] ** 0.5), shirt >= 1)):
        out.ellipsoid(_at(bodies, J(joint), zero, centre[0] * h, centre[1] * h), rot[:, J(joint)],
                      torch.stack([v * h for v in half], -1) + (top_d * covered)[:, None],
                      _where(covered, class_id("Upper_Clothing"), class_id("Torso")), _where(covered, TOP, SKIN))
    out.cone(_at(bodies, J("neck"), zero, -0.02 * h, -0.004 * h), bodies.pos[:, J("head")], rad["neck"],
             rad["neck"] * 0.95, class_id("Face_Neck"), SKIN)
    joint_r[:, J("neck")] = 0.06 * h
    covered = shirt >= 1
    yoke_d = top_d * covered
    for side, _, _ in SIDES:
        out.cone(_at(bodies, J("neck"), zero, -0.015 * h, -0.008 * h), bodies.pos[:, J(f"{side}_shoulder")],
                 rad["neck"] * 1.05 + yoke_d, rad["shoulder"] + yoke_d,
                 _where(covered, class_id("Upper_Clothing"), class_id("Torso")), _where(covered, TOP, SKIN))


def _arms(out: _Builder, people: dict[str, Tensor], bodies: Bodies, rad: dict[str, Tensor], joint_r: Tensor) -> None:
    """Sleeve and skin pieces of the upper arms and forearms; palms and three phalanges per finger."""
    J, pos, dims = skeleton().index, bodies.pos, bodies.dims
    top_d, g, hand = people["top_loose"], people["girth"], dims["hand"]
    reach = people["sleeve"] * (dims["upper_arm"] + dims["forearm"])
    f_up = (reach / dims["upper_arm"]).clamp(0, 1)
    f_fore = ((reach - dims["upper_arm"]) / dims["forearm"]).clamp(0, 1)
    zero, one = torch.zeros_like(f_up), torch.ones_like(f_up)
    for side, Side, sign in SIDES:
        s, e, w = pos[:, J(f"{side}_shoulder")], pos[:, J(f"{side}_elbow")], pos[:, J(f"{side}_wrist")]
        for a, b, ra, rb, f, part in ((s, e, rad["shoulder"], rad["elbow"], f_up, "Upper_Arm"),
                                      (e, w, rad["elbow"], rad["wrist"], f_fore, "Lower_Arm")):
            out.piece(a, b, ra, rb, zero, f, top_d, class_id("Upper_Clothing"), TOP)
            out.piece(a, b, ra, rb, f, one, zero, class_id(f"{Side}_{part}"), SKIN)
        joint_r[:, J(f"{side}_shoulder")] = rad["shoulder"] + top_d * ((people["shirt"] >= 1) | (f_up > 0))
        joint_r[:, J(f"{side}_elbow")] = rad["elbow"] + top_d * (f_fore > 0)
        joint_r[:, J(f"{side}_wrist")] = rad["wrist"] + top_d * (f_fore >= 1)
        out.ellipsoid(_at(bodies, J(f"{side}_wrist"), -sign * 0.01 * hand, -0.27 * hand, zero),
                      bodies.rot[:, J(f"{side}_wrist")], torch.stack([0.1 * hand, 0.27 * hand, 0.21 * hand], -1),
                      class_id(f"{Side}_Hand"), SKIN)
        for f in FINGERS:
            r = [v * hand * g ** 0.3 for v in FINGER_RADII[f]]
            for k in range(1, 4):
                out.cone(pos[:, J(f"{side}_{f}{k}")], pos[:, J(f"{side}_{f}{k + 1}")], r[k - 1], r[k],
                         class_id(f"{Side}_Hand"), SKIN)
            for k in range(1, 5):
                joint_r[:, J(f"{side}_{f}{k}")] = r[k - 1]


def _legs(out: _Builder, people: dict[str, Tensor], bodies: Bodies, rad: dict[str, Tensor], joint_r: Tensor) -> None:
    """Trouser, skin and sock pieces of the thighs and shins; feet are skin, socks or shoes."""
    J, pos, dims, h = skeleton().index, bodies.pos, bodies.dims, bodies.dims["height"]
    bot_d, footwear = people["bottom_loose"], people["footwear"]
    reach = people["pants"] * (dims["thigh"] + dims["shin"])
    f_thigh = (reach / dims["thigh"]).clamp(0, 1)
    f_shin = ((reach - dims["thigh"]) / dims["shin"]).clamp(0, 1)
    sock_from = torch.where(footwear > 0, 1 - people["sock"], torch.ones_like(h)).maximum(f_shin)
    zero, one, infl = torch.zeros_like(h), torch.ones_like(h), footwear_growth(people, dims)
    for side, Side, _ in SIDES:
        hp, kn, an = pos[:, J(f"{side}_hip")], pos[:, J(f"{side}_knee")], pos[:, J(f"{side}_ankle")]
        out.piece(hp, kn, rad["hip"], rad["knee"], zero, f_thigh, bot_d, class_id("Lower_Clothing"), BOTTOM)
        out.piece(hp, kn, rad["hip"], rad["knee"], f_thigh, one, zero, class_id(f"{Side}_Upper_Leg"), SKIN)
        out.piece(kn, an, rad["knee"], rad["ankle"], zero, f_shin, bot_d, class_id("Lower_Clothing"), BOTTOM)
        out.piece(kn, an, rad["knee"], rad["ankle"], f_shin, sock_from, zero, class_id(f"{Side}_Lower_Leg"), SKIN)
        out.piece(kn, an, rad["knee"], rad["ankle"], sock_from, one, 0.002 * h / 1.7, class_id(f"{Side}_Sock"), SOCK)
        label = torch.where(footwear == 2, class_id(f"{Side}_Shoe"),
                            torch.where(footwear == 1, class_id(f"{Side}_Sock"), class_id(f"{Side}_Foot")))
        out.ellipsoid(*foot_ellipsoid(bodies, side, infl), label,
                      torch.where(footwear == 2, SHOE, torch.where(footwear == 1, SOCK, SKIN)))
        joint_r[:, J(f"{side}_hip")] = torch.maximum(rad["hip"], 0.064 * h) + bot_d
        joint_r[:, J(f"{side}_knee")] = rad["knee"] + bot_d * (f_shin > 0)
        joint_r[:, J(f"{side}_ankle")] = rad["ankle"] + torch.maximum(bot_d * (f_shin >= 1), infl)


def _head(out: _Builder, people: dict[str, Tensor], bodies: Bodies) -> None:
    """Cranium, jaw, nose and ears (skin; the first three carry the face decals), hair and hat.

    The hair cap is the cranium scaled by k and moved up and back so that its front passes behind the face below
    the hairline (about 0.8 head heights above the chin); long hair hangs behind, a bun sits on the back.
    """
    hj, hh, rot = skeleton().index("head"), bodies.dims["head"], bodies.rot[:, skeleton().index("head")]
    zero = torch.zeros_like(hh)
    for k, (c, r, half) in enumerate(face_ellipsoids(bodies)):
        out.ellipsoid(c, r, half, class_id("Face_Neck"), SKIN, face=k < 3)
    style, vol, length = people["hair"], people["hair_volume"], people["hair_len"]
    k = torch.where(style <= 1, 1.015, 1.04 + 0.08 * vol * (style >= 3))
    back = 0.42 * hh * (k - 0.92 + 0.01 * (style <= 1))
    out.ellipsoid(_at(bodies, hj, zero, 0.44 * hh, 0.05 * hh - back), rot, head_frame(bodies)[2] * k[:, None],
                  class_id("Hair"), HAIR, valid=style >= 1)
    out.cone(_at(bodies, hj, zero, 0.42 * hh, -0.12 * hh), _at(bodies, hj, zero, (0.4 - 0.9 * length) * hh, -0.22 * hh),
             0.29 * hh * k, 0.24 * hh * k, class_id("Hair"), HAIR, valid=style == 4)
    out.ellipsoid(_at(bodies, hj, zero, 0.72 * hh, -0.38 * hh), rot, (0.14 * hh)[:, None].expand(-1, 3),
                  class_id("Hair"), HAIR, valid=style == 5)
    hat = people["hat"] > 0
    out.ellipsoid(_at(bodies, hj, zero, 0.7 * hh, 0.02 * hh), rot, torch.stack([0.37 * hh, 0.3 * hh, 0.47 * hh], -1),
                  class_id("Apparel"), HAT, valid=hat)
    out.ellipsoid(_at(bodies, hj, zero, 0.6 * hh, 0.3 * hh), rot, torch.stack([0.33 * hh, 0.025 * hh, 0.32 * hh], -1),
                  class_id("Apparel"), HAT, valid=hat)
