"""Procedural humans: the labels must obey the physics of the rendered scene, checked against float64 references.

Small images (<= 192x144) keep the whole file to a few tens of seconds on a CPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from opensapiens.metadata import keypoint_set, seg_classes
from opensapiens.synth import Camera, Scene, render_scenes, sample_person, sample_scenes
from opensapiens.synth.background import sample_background
from opensapiens.synth.body import build_primitives, pose_bodies
from opensapiens.synth.landmarks import keypoints_3d
from opensapiens.synth.people import stack_people
from opensapiens.synth.raycast import Primitives, bin_tiles, cast_pixels, cast_rays, intersect, pixel_rays
from opensapiens.synth.shading import sample_light
from opensapiens.synth.skeleton import apply3, matmul3, rot_y

KS = keypoint_set("goliath")
CLASSES = seg_classes("goliath")
NEVER = ("Lower_Teeth", "Upper_Teeth", "Tongue")  # documented in docs/synthetic.md
# keypoints placed on the surface (the others are joint centres inside the body)
SURFACE = sorted(set(KS.groups["face"]) | {KS.index(n) for n in KS.names if n.endswith(("4", "toe", "heel"))
                                             or n.split("_", 1)[-1] in ("olecranon", "cubital_fossa", "acromion",
                                                                        "eye", "ear") or n == "nose"})


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # faster than oversubscribing a small CI box
    yield
    torch.set_num_threads(n)


def _scene(people, height: int, width: int, seed: int = 0, fov_deg: float = 40.0, cam_h: float = 1.0) -> Scene:
    rng = np.random.default_rng(seed)
    f = 0.5 * height / np.tan(np.radians(fov_deg) / 2)
    return Scene(Camera(f, f, (width - 1) / 2, (height - 1) / 2, cam_h, 0.0), people, sample_background(rng),
                 sample_light(rng), seed)


def _person(seed: int, kind: str | None = None, x: float = 0.0, z: float = -3.0, yaw: float = 0.0):
    p = sample_person(np.random.default_rng(seed), kind)
    p.x, p.z, p.yaw = x, z, yaw
    return p


def _np(batch, i):
    return {k: getattr(batch, k)[i].numpy() for k in ("image", "seg", "instance", "depth", "normal", "keypoints",
                                                        "keypoints_3d", "boxes", "areas", "person_valid")}


@pytest.fixture(scope="module")
def batch():
    """Six random scenes at 128x96 plus their scene descriptions."""
    scenes = sample_scenes([[11, i] for i in range(6)], 128, 96)
    return scenes, render_scenes(scenes, 128, 96)


# ------------------------------------------------------------------------------------------------ ray casting


def _swept_sphere_entry(d: np.ndarray, a, b, ra, rb, n: int = 4001) -> np.ndarray:
    """Entry depth (float64) of rays d (R, 3) from the origin into the union of spheres swept from (a, ra) to
    (b, rb), which is the round cone by definition: the minimum of the closed-form entries into n sampled spheres."""
    s = np.linspace(0, 1, n)
    c = a[None] + s[:, None] * (b - a)[None]  # (n, 3)
    r = ra + s * (rb - ra)
    dd = (d * d).sum(1)[:, None]
    bc = d @ c.T  # (R, n)
    disc = bc * bc - dd * ((c * c).sum(1) - r * r)[None]
    t = np.where(disc >= 0, (bc - np.sqrt(np.maximum(disc, 0))) / dd, np.inf)
    return t.min(1)


def test_ray_casting_is_exact_against_float64_geometry():
    """Depth of every pixel equals the first intersection of its ray with float64 reference geometry."""
    H, W = 48, 64
    K = torch.tensor([[120.0, 120.0, 31.5, 23.5]])
    rot, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))
    cone = (np.array([-0.45, -0.1, -2.6]), np.array([0.3, 0.25, -3.1]), 0.22, 0.08)
    ell = (np.array([0.3, -0.2, -2.4]), rot, np.array([0.3, 0.18, 0.1]))
    f32 = lambda v: torch.tensor(np.asarray(v), dtype=torch.float32)  # noqa: E731
    zeros = torch.zeros(2, dtype=torch.long)
    prims = Primitives(f32([cone[0]]), f32([cone[1]]), f32([cone[2]]), f32([cone[3]]), f32([ell[0]]), f32([rot]),
                       f32([ell[2]]), zeros, zeros, zeros, zeros, torch.zeros(2, dtype=torch.bool))
    depth, ids = cast_pixels(prims, bin_tiles(prims, K, H, W), K, H, W)
    depth, ids = depth[0].double().numpy(), ids[0].numpy()

    ys, xs = np.mgrid[0:H, 0:W]
    d = np.stack([(xs - 31.5) / 120.0, -(ys - 23.5) / 120.0, -np.ones_like(xs, float)], -1).reshape(-1, 3)
    ol = (-ell[0]) @ rot / ell[2]  # ellipsoid: closed form in its unit-sphere frame
    dl = d @ rot / ell[2]
    a2, b2, c2 = (dl * dl).sum(1), (ol * dl).sum(1), ol @ ol - 1
    disc = b2 * b2 - a2 * c2
    t_ell = np.where(disc >= 0, (-b2 - np.sqrt(np.maximum(disc, 0))) / a2, np.inf)
    ref = np.minimum(_swept_sphere_entry(d, *cone), t_ell).reshape(H, W)
    hit = np.isfinite(ref)
    assert (np.isfinite(depth) != hit).mean() < 0.003  # silhouettes differ only where rays graze a surface
    both = np.isfinite(depth) & hit
    assert both.sum() > 500
    np.testing.assert_allclose(depth[both], ref[both], atol=2e-4)
    assert set(np.unique(ids[both])) == {0, 1}


def _capsule_and_spheres() -> tuple[Primitives, list]:
    """A 4 m capsule from behind the camera (z = +0.5) to 3.5 m in front of it, a sphere beside the camera that
    reaches behind its plane and a small far sphere: float32 primitives, and (a, b, ra, rb) of each in float64 (a
    sphere is a round cone of zero length)."""
    shapes = [(np.array([0.25, -0.1, 0.5]), np.array([0.25, -0.1, -3.5]), 0.05, 0.05),
              *((np.array(c), np.array(c), r, r) for c, r in (([-0.3, 0.15, -0.1], 0.25), ([0.0, 0.0, -3.0], 0.1)))]
    f32 = lambda v: torch.tensor(np.asarray(v), dtype=torch.float32)  # noqa: E731
    zeros = torch.zeros(3, dtype=torch.long)
    cone, spheres = shapes[0], shapes[1:]
    prims = Primitives(f32([cone[0]]), f32([cone[1]]), f32([cone[2]]), f32([cone[3]]),
                       f32([c for c, _, r, _ in spheres]), torch.eye(3).expand(2, 3, 3),
                       f32([[r] * 3 for _, _, r, _ in spheres]), torch.arange(3), zeros, zeros, zeros,
                       torch.zeros(3, dtype=torch.bool))
    return prims, shapes


def test_primitives_reaching_behind_the_camera_are_rendered():
    """Primitives whose bounding spheres cross the camera plane are still drawn where they are in front of it."""
    H, W = 48, 64
    K = torch.tensor([[60.0, 60.0, (W - 1) / 2, (H - 1) / 2]])
    prims, shapes = _capsule_and_spheres()
    depth, ids = cast_pixels(prims, bin_tiles(prims, K, H, W), K, H, W)
    depth, ids = depth[0].double().numpy(), ids[0].numpy()
    ys, xs = np.mgrid[0:H, 0:W]
    d = np.stack([(xs - (W - 1) / 2) / 60.0, -(ys - (H - 1) / 2) / 60.0, -np.ones_like(xs, float)], -1).reshape(-1, 3)
    ts = np.stack([_swept_sphere_entry(d, *c) for c in shapes])  # float64, every pixel against every primitive
    ts = np.where(ts > 1e-3, ts, np.inf)  # entries behind the camera are not seen
    ref, ref_id = ts.min(0).reshape(H, W), ts.argmin(0).reshape(H, W)
    hit = np.isfinite(ref)
    assert (hit & (ref_id == 0)).sum() > 150 and (hit & (ref_id == 1)).sum() > 50  # both near ones in view
    assert (np.isfinite(depth) != hit).mean() < 0.003
    both = np.isfinite(depth) & hit
    np.testing.assert_allclose(depth[both], ref[both], atol=2e-4)
    assert (ids[both] == ref_id[both]).mean() > 0.997


def test_cast_rays_is_the_first_hit_of_every_ray_or_none():
    """Sub-pixel rays, including ones that miss everything binned to their tile, against a brute-force cast."""
    H, W = 48, 64
    K = torch.tensor([[60.0, 60.0, (W - 1) / 2, (H - 1) / 2]])
    prims, _ = _capsule_and_spheres()
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(2, 500, generator=g) * torch.tensor([[W - 1.0], [H - 1.0]])
    x[:250], y[:250] = 28 + 8 * x[:250] / W, 20 + 8 * y[:250] / H  # around the far sphere, ~2 pixels in radius
    t, hit = cast_rays(prims, bin_tiles(prims, K, H, W), K, x, y, torch.zeros(500, dtype=torch.long))
    d = pixel_rays(x, y, K[0])  # (R, 3) against every primitive
    t_all = intersect(prims, torch.arange(len(prims)), d[None].expand(len(prims), -1, -1).contiguous())
    t_ref, id_ref = t_all.min(0)
    id_ref = torch.where(t_ref.isfinite(), id_ref, -1)
    assert (id_ref == -1).sum() > 100 and (id_ref == 2).sum() > 50 and (id_ref == 0).sum() > 10
    assert torch.equal(hit, id_ref)
    assert torch.equal(t.isfinite(), t_ref.isfinite()) and torch.allclose(t[hit >= 0], t_ref[hit >= 0])


def test_scenes_without_people_render_empty_labels():
    H, W = 32, 24
    b = render_scenes([_scene([], H, W), _scene([], H, W, seed=1)], H, W)
    assert b.image.shape == (2, 3, H, W) and b.keypoints.shape == (2, 4, 308, 3)
    for name in ("seg", "instance", "depth", "normal", "keypoints", "boxes", "areas", "person_valid"):
        assert not getattr(b, name).any(), name
    with pytest.raises(ValueError, match="scenes"):
        render_scenes([], H, W)


# ------------------------------------------------------------------------------------------------ dense labels


def _normals_from_depth(depth: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Unit normals (H-2, W-2, 3) from a depth map by central differences of the back-projected points."""
    fx, fy, cx, cy = K
    H, W = depth.shape
    ys, xs = np.mgrid[0:H, 0:W]
    P = np.stack([(xs - cx) / fx * depth, -(ys - cy) / fy * depth, -depth], -1)
    n = np.cross(P[1:-1, 2:] - P[1:-1, :-2], P[:-2, 1:-1] - P[2:, 1:-1])
    return n / np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-30)


def _window_same(a: np.ndarray, r: int) -> np.ndarray:
    w = np.lib.stride_tricks.sliding_window_view(np.pad(a, r, mode="edge"), (2 * r + 1, 2 * r + 1))
    return (w.min((-1, -2)) == w.max((-1, -2))) & (a > 0)


def test_normals_agree_with_finite_differences_of_depth():
    H, W = 192, 144
    scenes = [_scene([_person(s, kind, z=-2.6, yaw=y)], H, W, seed=s)
              for s, kind, y in ((1, "standing", 0.3), (2, "arms_raised", -0.6), (3, "sitting", 2.5))]
    b = render_scenes(scenes, H, W)
    angles = []
    for i in range(len(scenes)):
        depth, normal = b.depth[i].double().numpy(), b.normal[i].permute(1, 2, 0).double().numpy()
        fd = _normals_from_depth(depth, b.intrinsics[i].double().numpy())
        foot = depth[1:-1, 1:-1] / float(b.intrinsics[i, 0])  # pixel size at that depth
        d2x = np.abs(depth[1:-1, 2:] - 2 * depth[1:-1, 1:-1] + depth[1:-1, :-2])
        d2y = np.abs(depth[2:, 1:-1] - 2 * depth[1:-1, 1:-1] + depth[:-2, 1:-1])
        smooth = _window_same(b.instance[i].numpy(), 2)[1:-1, 1:-1] & (d2x < 0.5 * foot) & (d2y < 0.5 * foot)
        cos = (fd * normal[1:-1, 1:-1]).sum(-1)[smooth]
        angles.append(np.degrees(np.arccos(np.clip(cos, -1, 1))))
    angles = np.concatenate(angles)
    assert len(angles) > 2000
    assert np.median(angles) < 1.0 and np.percentile(angles, 90) < 5.0


def test_dense_maps_are_consistent(batch):
    scenes, b = batch
    expressible = set(range(CLASSES.num_classes)) - {CLASSES.names.index(n) for n in NEVER}
    seen = set()
    for i in range(len(scenes)):
        s = _np(b, i)
        fg = s["instance"] > 0
        assert ((s["seg"] > 0) == fg).all() and ((s["depth"] > 0) == fg).all()
        n = s["normal"].transpose(1, 2, 0)
        assert (n[~fg] == 0).all()
        np.testing.assert_allclose(np.linalg.norm(n[fg], axis=-1), 1.0, atol=1e-4)
        # normals face the camera: n . (camera - point) > 0
        fx, fy, cx, cy = b.intrinsics[i].numpy()
        ys, xs = np.nonzero(fg)
        to_cam = -np.stack([(xs - cx) / fx, -(ys - cy) / fy, -np.ones_like(xs, float)], -1)
        assert ((n[fg] * to_cam).sum(-1) > -1e-3).all()
        seen |= set(np.unique(s["seg"][fg]).tolist())
        # boxes and areas match the instance map
        for k in np.flatnonzero(s["person_valid"]):
            m = s["instance"] == k + 1
            assert s["areas"][k] == m.sum()
            if m.any():
                yy, xx = np.nonzero(m)
                np.testing.assert_allclose(s["boxes"][k], [xx.min() - 0.5, yy.min() - 0.5, xx.max() - xx.min() + 1,
                                                           yy.max() - yy.min() + 1])
    assert seen <= expressible
    assert len(seen) >= 12


# ------------------------------------------------------------------------------------------------ keypoints


def _bilinear(depth: np.ndarray, x: float, y: float) -> float:
    x0, y0 = int(np.floor(x)), int(np.floor(y))
    patch = depth[y0:y0 + 2, x0:x0 + 2]
    if patch.shape != (2, 2) or (patch == 0).any():
        return np.nan
    fx, fy = x - x0, y - y0
    return float(patch[0, 0] * (1 - fx) * (1 - fy) + patch[0, 1] * fx * (1 - fy) + patch[1, 0] * (1 - fx) * fy
                 + patch[1, 1] * fx * fy)


def test_visible_keypoints_lie_on_their_person_at_the_right_depth():
    H, W = 192, 144
    scenes = sample_scenes([[21, i] for i in range(4)], H, W) + [
        _scene([_person(5, "standing", z=-1.6, yaw=0.2)], H, W, cam_h=1.4)]  # a close-up with a large face
    b = render_scenes(scenes, H, W)
    surface_err, inner, pixel = [], [], []
    for i in range(len(scenes)):
        s = _np(b, i)
        fx, fy, cx, cy = b.intrinsics[i].numpy()
        for k in np.flatnonzero(s["person_valid"]):
            kp, p3 = s["keypoints"][k], s["keypoints_3d"][k]
            z = -p3[:, 2]
            # the stored pixel coordinates are the projection of the stored 3-D points
            inside = kp[:, 2] > 0
            np.testing.assert_allclose(kp[inside, 0], cx + fx * p3[inside, 0] / z[inside], atol=1e-2)
            np.testing.assert_allclose(kp[inside, 1], cy - fy * p3[inside, 1] / z[inside], atol=1e-2)
            for j in np.flatnonzero(kp[:, 2] == 2):
                px, py = int(round(kp[j, 0])), int(round(kp[j, 1]))
                assert s["instance"][py, px] == k + 1, f"visible keypoint {KS.names[j]} outside its person's mask"
                if j in SURFACE:
                    surface_err.append(abs(_bilinear(s["depth"], kp[j, 0], kp[j, 1]) - z[j]))
                else:
                    inner.append(z[j] - s["depth"][py, px])
                    pixel.append(z[j] / fx)  # metres per pixel there
    surface_err, inner, pixel = np.array(surface_err), np.array(inner), np.array(pixel)
    surface_err = surface_err[np.isfinite(surface_err)]
    assert len(surface_err) > 300 and len(inner) > 50
    assert np.median(surface_err) < 0.004 and np.percentile(surface_err, 90) < 0.02  # metres
    # joint centres are behind the visible surface (to within two pixels of slope), by less than twice a body
    # radius (their own limb, seen obliquely; hips ~0.11 m)
    assert (inner > -0.01 - 2 * pixel).all() and (inner < 0.25).all() and np.median(inner) > 0.01


def test_keypoints_hidden_by_another_person_are_invisible():
    H, W = 160, 120
    back = _person(31, "standing", x=0.0, z=-5.0, yaw=0.0)
    front = _person(32, "standing", x=0.3, z=-3.2, yaw=0.4)
    b = render_scenes([_scene([back, front], H, W, fov_deg=45, cam_h=1.2)], H, W)
    s = _np(b, 0)
    kp = s["keypoints"][0]
    inst = s["instance"]
    covered = [j for j in range(308) if kp[j, 2] > 0 and inst[int(round(kp[j, 1])), int(round(kp[j, 0]))] == 2]
    assert len(covered) > 20  # the test scene really hides part of the back person
    z_back = -s["keypoints_3d"][0][covered, 2]
    px = np.round(kp[covered, :2]).astype(int)
    assert (s["depth"][px[:, 1], px[:, 0]] < z_back).all()  # the front person is nearer there...
    assert (kp[covered, 2] == 1).all()  # ...so those keypoints are marked hidden
    assert (kp[:, 2] == 2).sum() > 10  # while others stay visible


def _geometry(scenes: list[Scene]) -> tuple[Primitives, torch.Tensor, torch.Tensor]:
    """The primitives, 3-D keypoints (P, 308, 3) and image of each person (P,) of scenes, built as render_scenes
    builds them."""
    image_of = torch.tensor([i for i, s in enumerate(scenes) for _ in s.people])
    f32 = lambda v: torch.tensor(np.asarray(v, np.float32))  # noqa: E731
    Rw = f32([s.camera.world_to_camera()[0] for s in scenes])[image_of]
    tw = f32([s.camera.world_to_camera()[1] for s in scenes])[image_of]
    people = stack_people([p for s in scenes for p in s.people], "cpu")
    ground = torch.stack([people["x"], torch.zeros_like(people["x"]), people["z"]], -1)
    bodies = pose_bodies(people).moved(matmul3(Rw, rot_y(people["yaw"])), apply3(Rw, ground) + tw)
    prims, joint_r = build_primitives(people, bodies, image_of)
    return prims, keypoints_3d(bodies, people, joint_r)[0], image_of


def _inside(prims: Primitives, i: int, p: np.ndarray) -> bool:
    """Whether point p is inside primitive i, in float64: within a sphere swept along the cone, or the ellipsoid's
    quadratic form."""
    nc = prims.num_cones
    if i < nc:
        a, b, ra, rb = (v[i].double().numpy() for v in (prims.cone_a, prims.cone_b, prims.cone_ra, prims.cone_rb))
        s = np.linspace(0, 1, 4001)[:, None]
        return bool((np.linalg.norm(p - (a + s * (b - a)), axis=1) - (ra + s[:, 0] * (rb - ra))).min() <= 0)
    c, rot, r = (v[i - nc].double().numpy() for v in (prims.ell_c, prims.ell_rot, prims.ell_r))
    return bool(((((p - c) @ rot) / r) ** 2).sum() <= 1)


def test_joint_centres_seen_through_their_own_limb_are_visible():
    """A joint centre whose ray first meets a piece of the same body that contains it (brute force over all
    primitives, containment in float64) is visible, as knees and elbows of people facing an eye-level camera are;
    one whose ray first meets another person (here: a torso in front of the hips and shoulders) is hidden."""
    H, W = 160, 120
    f = 0.5 * H / np.tan(np.radians(22))
    cam = Camera(f, f, (W - 1) / 2, (H - 1) / 2, 1.6, np.arctan2(1.0 - 1.6, 3.2))  # eye level, looking at the hips
    scenes = [Scene(cam, [_person(60 + i, "standing", z=-3.2)], sample_background(np.random.default_rng(i)),
                    sample_light(np.random.default_rng(i)), i) for i in range(6)]
    scenes.append(Scene(cam, [_person(70, "standing", z=-5.0), _person(71, "standing", z=-3.2)],
                        sample_background(np.random.default_rng(9)), sample_light(np.random.default_rng(9)), 9))
    b = render_scenes(scenes, H, W)
    prims, kp3d, image_of = _geometry(scenes)
    kps = b.keypoints[b.person_valid]
    slot_of = torch.tensor([k for s in scenes for k in range(len(s.people))])
    joints = [KS.index(f"{side}_{j}") for side in ("left", "right")
              for j in ("shoulder", "elbow", "wrist", "hip", "knee", "ankle")] + [KS.index("neck")]
    own, other = [], []
    for p in range(len(kp3d)):
        cand = torch.nonzero(prims.image == image_of[p])[:, 0]
        for j in joints:
            if kps[p, j, 2] == 0:
                continue
            d = pixel_rays(kps[p, j, :1], kps[p, j, 1:2], b.intrinsics[image_of[p]])  # (1, 3)
            t = intersect(prims, cand, d.expand(len(cand), 3)[:, None].contiguous())[:, 0]
            first = int(cand[t.argmin()])
            if prims.person[first] != p:
                other.append((p, j))
                continue
            px, py = kps[p, j, :2].round().long().tolist()
            shows = b.instance[image_of[p], py, px] == slot_of[p] + 1  # the rounded pixel is not another person's
            if shows and _inside(prims, first, kp3d[p, j].double().numpy()):
                own.append((p, j))
    knees_elbows = [(p, j) for p, j in own if p < 6 and KS.names[j].endswith(("knee", "elbow"))]
    assert len(knees_elbows) >= 22  # of the 24 of the six people facing the camera
    assert all(kps[p, j, 2] == 2 for p, j in own), [(p, KS.names[j]) for p, j in own if kps[p, j, 2] != 2]
    behind = [j for p, j in other if p == 6]  # the back person of the last scene
    assert len(behind) >= 3 and KS.index("left_hip") in behind
    assert all(kps[p, j, 2] == 1 for p, j in other)


def test_left_right_follow_the_person_not_the_image():
    """Facing the camera, the person's left is on the image's right; turned away, on its left."""
    H, W = 160, 120
    left = [n for n in CLASSES.names if n.startswith("Left")]
    right = [n for n in CLASSES.names if n.startswith("Right")]
    for yaw, sign in ((0.0, 1), (np.pi, -1)):
        b = render_scenes([_scene([_person(41, "standing", z=-3.0, yaw=yaw)], H, W)], H, W)
        s = _np(b, 0)
        kp = s["keypoints"][0]
        for a, c in (("left_shoulder", "right_shoulder"), ("left_hip", "right_hip"), ("left_wrist", "right_wrist")):
            assert sign * (kp[KS.index(a), 0] - kp[KS.index(c), 0]) > 0
        xs = np.arange(W)[None].repeat(H, 0)
        mean_x = [xs[np.isin(s["seg"], [CLASSES.names.index(n) for n in names])].mean() for names in (left, right)]
        assert sign * (mean_x[0] - mean_x[1]) > 0
        nose = KS.index("nose")
        assert kp[nose, 2] == (2 if sign > 0 else 1)  # the face is seen only from the front


def test_horizontal_flip_swaps_labels_and_keypoints():
    """Rendering the mirrored scene equals flipping the rendering (with the left/right swaps of the metadata)."""
    H, W = 128, 96
    people = [_person(51, "reaching", x=-0.3, z=-3.5, yaw=0.5), _person(52, "walking", x=0.6, z=-5.0, yaw=-2.0)]
    scene = _scene(people, H, W, seed=3)
    b = render_scenes([scene, scene.mirrored(W)], H, W)
    s, m = _np(b, 0), _np(b, 1)
    lut = CLASSES.flip_lut()
    agree = (m["seg"] == lut[s["seg"][:, ::-1]]).mean()
    assert agree > 0.998
    both = (m["instance"] > 0) & (s["instance"][:, ::-1] > 0)
    np.testing.assert_allclose(m["depth"][both], s["depth"][:, ::-1][both], atol=1e-4)
    flipped_n = s["normal"][:, :, ::-1] * np.array([-1.0, 1.0, 1.0])[:, None, None]
    assert np.percentile(np.abs(m["normal"] - flipped_n)[:, both], 99) < 1e-3
    flip = np.array(KS.flip_indices)
    for k in range(2):
        a, mk = s["keypoints"][k], m["keypoints"][k][flip]
        shown = (a[:, 2] > 0) & (mk[:, 2] > 0)
        np.testing.assert_allclose(mk[shown, 0], W - 1 - a[shown, 0], atol=1e-2)
        np.testing.assert_allclose(mk[shown, 1], a[shown, 1], atol=1e-2)
        assert (a[:, 2] == mk[:, 2]).mean() > 0.97


def test_same_seed_same_pixels_any_batch():
    scenes = sample_scenes([[7, i] for i in range(3)], 64, 48)
    together = render_scenes(scenes, 64, 48)
    alone = render_scenes(sample_scenes([[7, 2]], 64, 48), 64, 48)
    for name in ("image", "seg", "instance", "depth", "normal", "keypoints"):
        assert torch.equal(getattr(together, name)[2], getattr(alone, name)[0]), name
    other = render_scenes(sample_scenes([[8, 2]], 64, 48), 64, 48)
    assert not torch.equal(other.image[0], alone.image[0])


def test_a_round_cone_of_zero_length_is_its_larger_end_sphere():
    """a == b: no lateral surface; rays hit the sphere of the larger radius or nothing (its degenerate quadratic gave
    hits at arbitrary depths)."""
    from opensapiens.synth.raycast import intersect_round_cones

    g = torch.Generator().manual_seed(0)
    d = torch.randn(2000, 3, dtype=torch.float64, generator=g)
    d[:, 2] = d[:, 2].abs() * 0.2 + 1
    d = torch.nn.functional.normalize(d, dim=-1)
    a = torch.tensor([0.3, -0.2, 3.0], dtype=torch.float64).expand(2000, 3)
    for ra, rb in ((0.1, 0.1), (0.1, 0.05), (0.05, 0.1)):
        t = intersect_round_cones(a, a.clone(), torch.full((2000,), ra, dtype=torch.float64),
                                  torch.full((2000,), rb, dtype=torch.float64), d)
        b = (d * a).sum(-1)
        disc = b * b - ((a * a).sum(-1) - max(ra, rb) ** 2)
        expected = torch.where(disc >= 0, b - disc.clamp_min(0).sqrt(), torch.inf)
        assert torch.equal(t.isinf(), expected.isinf())
        assert torch.allclose(t[t.isfinite()], expected[expected.isfinite()], atol=1e-9)
