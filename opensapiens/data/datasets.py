"""Training and validation datasets for the four tasks, on the layouts users have.

    pose    COCO keypoint JSON (17 / COCO-WholeBody 133 / Goliath 308 / your own keypoint set) + an image folder
    seg     images/NAME.{png,jpg} + seg/NAME.png (or labels/NAME.png) class-id maps; or flat NAME.png + NAME_seg.png
    depth   images/ + masks/NAME.png (foreground > 0) + depths/NAME.npy (metres, 0 = none)
    normal  images/ + masks/ + normals/NAME.npy (H, W, 3 camera-space unit vectors)
    pointmap images/ + masks/ + depths/NAME.npy (Z, metres) + the camera: camera_intrinsics/NAME.txt (3 x 3, the
            official layout) or meta/NAME.json (``opensapiens synth``'s fx, fy, cx, cy)
The synthetic-data layout (``opensapiens synth``) is all of these at once: one folder trains every task.

Items are ``SampleKey``s from ``opensapiens.data.sampler``; a sample is a dict of numpy arrays at the network input
size: ``image`` (H, W, 3) uint8 RGB plus the task's targets. Unreadable files are reported once and replaced by the
next sample, so one broken file does not end a long run.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from ..evaluation.pose import annotation_keypoints
from ..evaluation.utils import read_label_png
from ..inference.topdown import magnifies
from ..inference.transforms import cv2_area_cubic
from ..io.images import ImageReadError, read_image, read_mask
from ..metadata import SegClasses
from .labels import DataError, PoseLayout
from .sampler import SampleKey
from .sapiens2_transforms import (
    Fit2Augment,
    SampleRejected,
    Seg2Augment,
    check_foreground,
    check_mask,
    check_pointmap,
    fit2_image,
    fit_plan,
    paste_background,
    seg2_sample,
)
from .transforms import (
    DenseAugment,
    PoseAugment,
    bbox_center_scale,
    coarse_dropout,
    dense_affine,
    photometric_distortion,
    pose_crop,
    random_blur,
    replace_background,
    transform_normals,
    warp,
    warp_camera,
    warp_depth,
    warp_image,
)

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
MAX_REJECTED = 100  # draws in a row that Sapiens2's sample rules may drop before the data is called unusable


def _key(item: SampleKey | int) -> SampleKey:
    return item if isinstance(item, SampleKey) else SampleKey(int(item))


class _Base(Dataset):
    """Shared: bad-file replacement (training goes on with the next readable sample; ``stand_in`` marks it, so an
    evaluation does not count that sample twice), augmentation RNG, background pictures, photometric steps."""

    def __init__(self, input_size: tuple[int, int], backgrounds: list[Path] | None):
        self.input_size = tuple(input_size)
        self.backgrounds = backgrounds or []
        self._reported: set[str] = set()

    def load(self, index: int, rng: np.random.Generator | None) -> dict:
        raise NotImplementedError

    def __getitem__(self, item: SampleKey | int) -> dict:
        key = _key(item)
        rng = np.random.default_rng(key.seed) if key.seed is not None else None
        index, unreadable, rejected = key.index, set(), 0
        while True:
            try:
                sample = self.load(index, rng)
                break
            except SampleRejected as e:  # training only: another sample at random, as Sapiens2's loader
                rejected += 1
                if rejected >= MAX_REJECTED:
                    raise DataError(f"{MAX_REJECTED} samples in a row were dropped by Sapiens2's rule, the last "
                                    f"({self.describe(index)}) for its {e}; see docs/training.md") from None
                index = int(rng.integers(len(self)))
            except (ImageReadError, OSError, DataError) as e:
                if str(e) not in self._reported:
                    self._reported.add(str(e))
                    warnings.warn(f"skipping sample {index}: {e}", stacklevel=2)
                unreadable.add(index)
                if len(unreadable) >= len(self):
                    raise DataError("no readable sample in the dataset") from None
                index = (index + 1) % len(self)
        sample["valid"] = np.bool_(key.valid)
        sample["stand_in"] = np.bool_(index != key.index)  # another sample's data: evaluation leaves it out
        return sample

    def describe(self, index: int) -> str:
        return f"sample {index}"

    def photometric(self, image: np.ndarray, rng: np.random.Generator | None, enabled: bool) -> np.ndarray:
        return photometric_distortion(image, rng) if (rng is not None and enabled) else image

    def background(self, rng: np.random.Generator | None, prob: float) -> np.ndarray | None:
        if rng is None or not self.backgrounds or rng.random() >= prob:
            return None
        return read_image(self.backgrounds[int(rng.integers(len(self.backgrounds)))])


def list_backgrounds(folder: str | Path | None) -> list[Path]:
    """Images of a background folder (searched recursively); [] for None."""
    if folder is None:
        return []
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"background folder {folder} does not exist")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise DataError(f"background folder {folder} holds no images ({', '.join(IMAGE_EXTS)})")
    return files


# ------------------------------------------------------------------------------------------------------------- pose


def _clipped_box(bbox_xywh, width: int | None, height: int | None) -> np.ndarray:
    """A COCO (x, y, w, h) box cut to the image, [0, W - 1] x [0, H - 1], as mmpose's COCO loading does before
    the box becomes a crop (a box past the border would centre the crop outside the person)."""
    x, y, w, h = (float(v) for v in bbox_xywh)
    x1, y1, x2, y2 = x, y, x + w, y + h
    if width:
        x1, x2 = np.clip([x1, x2], 0, width - 1)
    if height:
        y1, y2 = np.clip([y1, y2], 0, height - 1)
    return np.array([x1, y1, x2 - x1, y2 - y1], np.float32)


def _instance_keypoints(ann: dict, K: int) -> np.ndarray:
    """(K, 3) x, y, v of one COCO annotation, read as evaluation reads it: flat ``keypoints``, the COCO-WholeBody part
    arrays (K = 133) or the official Goliath ``goliath_wholebody_kpts`` (K = 308)."""
    try:
        return annotation_keypoints(ann, K, f"annotation {ann.get('id')}").astype(np.float32)
    except ValueError as e:
        raise DataError(f"{e}; --keypoints names the data's keypoint set (default goliath, 308)") from None


class KeypointDataset(_Base):
    """Top-down person crops from a COCO-style keypoint file: one sample per annotated person.

    Args:
        ann_file: COCO JSON (``images`` with id/file_name, ``annotations`` with keypoints and bbox).
        image_root: folder of the images (default: ``images/`` beside the JSON, else the JSON's folder).
        layout: keypoint set and half-body ids (``load_keypoint_layout``).
        input_size: (H, W) crop, 1024x768 officially.
        augment: ``PoseAugment`` for training, None for validation crops.
        cubic_enlarging: crops that magnify are bicubic (Sapiens2's), else bilinear, as ``crop_people``.
    """

    def __init__(self, ann_file: str | Path, layout: PoseLayout, image_root: str | Path | None = None,
                 input_size: tuple[int, int] = (1024, 768), augment: PoseAugment | None = None,
                 padding: float = 1.25, backgrounds: list[Path] | None = None, cubic_enlarging: bool = False):
        super().__init__(input_size, backgrounds)
        self.cubic_enlarging = cubic_enlarging  # Sapiens2: a crop that magnifies is bicubic (its PoseTopdownAffine)
        self.ann_file = Path(ann_file)
        try:
            self.coco = json.loads(self.ann_file.read_text())
        except (OSError, ValueError) as e:
            raise DataError(f"cannot read keypoint annotations {self.ann_file}: {e}") from e
        if image_root is None:
            image_root = self.ann_file.parent / "images"
            if not image_root.is_dir():
                image_root = self.ann_file.parent
        self.image_root = Path(image_root)
        self.layout, self.augment, self.padding = layout, augment, padding
        K = layout.keypoints.num_keypoints
        images = {im["id"]: im for im in self.coco.get("images", [])}
        self.instances: list[tuple[dict, np.ndarray, np.ndarray]] = []
        for ann in self.coco.get("annotations", []):
            if ann.get("iscrowd", 0) or ann["image_id"] not in images:
                continue
            kp = _instance_keypoints(ann, K)
            info = images[ann["image_id"]]
            bbox = _clipped_box(ann["bbox"], info.get("width"), info.get("height"))
            if (kp[:, 2] > 0).sum() == 0 or bbox[2] <= 1 or bbox[3] <= 1:
                continue
            self.instances.append((info, kp, bbox))
        if not self.instances:
            raise DataError(f"{self.ann_file}: no usable person annotation (need labelled keypoints and a box)")
        self.flip_indices = np.asarray(layout.keypoints.flip_indices)
        self.half_body = (np.asarray(layout.upper_body, int), np.asarray(layout.lower_body, int)) \
            if layout.upper_body and layout.lower_body else None

    def __len__(self) -> int:
        return len(self.instances)

    def load(self, index: int, rng: np.random.Generator | None) -> dict:
        info, kp, bbox = self.instances[index]
        image = read_image(self.image_root / info["file_name"])
        aug = self.augment if rng is not None else None
        center, scale = bbox_center_scale(bbox, self.input_size[1] / self.input_size[0], self.padding)  # the val crop's
        box_scale = bbox_center_scale(bbox, None, self.padding)[1]  # not widened: the augmentation shifts by it
        A, keypoints, visible = pose_crop(image.shape[:2], kp[:, :2], (kp[:, 2] > 0).astype(np.float32), center,
                                          box_scale, self.input_size, rng, aug, self.flip_indices, self.half_body)
        if self.cubic_enlarging and bool(magnifies(torch.from_numpy(A))):
            crop = cv2.warpAffine(image, A, self.input_size[::-1], flags=cv2.INTER_CUBIC)  # Sapiens2's magnified crops
        else:
            crop = warp(image, A, self.input_size, nearest=False)
        if aug is not None:
            photometric = aug.photometric and (aug.photometric_prob >= 1 or rng.random() < aug.photometric_prob)
            crop = self.photometric(crop, rng, photometric)
            crop = random_blur(crop, rng, aug.blur_prob, aug.median_blur_prob)
            if rng.random() < aug.dropout_prob:
                crop = coarse_dropout(crop, rng, aug.dropout_range)
        return {"image": crop, "keypoints": keypoints, "visible": visible, "affine": A.astype(np.float32),
                "center": center.astype(np.float32), "scale": scale.astype(np.float32),
                "image_id": np.int64(info["id"]), "bbox": bbox}


# ------------------------------------------------------------------------------------------------------------ dense


def _stems(folder: Path, exts: tuple[str, ...]) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in exts} if folder.is_dir() else {}


def _read_label_png(path: Path) -> np.ndarray:
    """(H, W) uint8 class ids (palette PNGs give their indices; see ``read_label_png``)."""
    try:
        a = read_label_png(path)
    except ValueError as e:
        raise DataError(str(e)) from None
    if a.dtype != np.uint8:
        if a.max() > 255:
            raise DataError(f"{path}: label values above 255")
        a = a.astype(np.uint8)
    return a


def _load_npy(path: Path, channels: int | None) -> np.ndarray:
    try:
        a = np.load(path, allow_pickle=False).astype(np.float32)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable .npy array ({e})") from e
    want = 2 if channels is None else 3
    if a.ndim != want or (channels is not None and a.shape[-1] != channels):
        raise DataError(f"{path}: expected shape {'(H, W)' if channels is None else '(H, W, 3)'}, got {a.shape}")
    return a


def read_intrinsics(root: Path, name: str) -> np.ndarray:
    """(3, 3) float64 camera matrix of image ``name`` of a dataset folder (pixel centres at integers), from
    ``camera_intrinsics/NAME.txt`` (3 x 3, the official layout), else ``meta/NAME.json`` (``opensapiens synth``)."""
    root = Path(root)
    if (root / "camera_intrinsics" / f"{name}.txt").is_file() or not (root / "meta" / f"{name}.json").is_file():
        path = root / "camera_intrinsics" / f"{name}.txt"
        try:
            K = np.loadtxt(path, dtype=np.float64, ndmin=2)
        except (OSError, ValueError) as e:
            raise DataError(f"{path}: not a readable 3 x 3 camera matrix ({e})") from None
        if K.shape != (3, 3) or not np.isfinite(K).all() or not np.allclose(K[2], (0, 0, 1)):
            raise DataError(f"{path}: expected a 3 x 3 camera matrix with last row 0 0 1, got {K.tolist()}")
    else:
        path = root / "meta" / f"{name}.json"
        try:
            image = json.loads(path.read_text())["image"]
            fx, fy, cx, cy = (float(image[k]) for k in ("fx", "fy", "cx", "cy"))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DataError(f"{path}: no camera (image fx, fy, cx, cy) to read ({e!r})") from None
        K = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
    if abs(np.linalg.det(K[:2, :2])) < 1e-9:
        raise DataError(f"{path}: the camera matrix is singular")
    return K


class DenseDataset(_Base):
    """Seg, depth, normal or pointmap samples from a folder (see module docstring), resized / augmented to
    ``input_size``. Pointmap samples hold metric ``points`` (H, W, 3; OpenCV axes) and the input's ``intrinsics``.

    Args:
        root: the dataset folder.
        task: "seg", "depth", "normal" or "pointmap".
        classes: seg vocabulary (flip swap pairs; label values must be < num_classes or 255).
        augment: for training, ``DenseAugment`` (Sapiens's pipelines), ``Seg2Augment`` or ``Fit2Augment``
            (Sapiens2's: seg; normal and pointmap); None for validation.
        backgrounds: pictures pasted behind the foreground (label > 0 or mask > 0) with ``augment.background_prob``.
        resize: validation's resize, "stretch" (Sapiens's, Sapiens2's seg) or "center" (the centred aspect-keeping
            fit of Sapiens2's normals and pointmaps; pointmaps always).
        interpolation: validation's stretch of the image, "bilinear" (Sapiens's) or "area-cubic" (Sapiens2's seg:
            ``cv2_area_cubic``, what its predictor does); default: the latter with ``Seg2Augment``.
    """

    TARGET_DIRS = {"seg": ("seg", "labels"), "depth": ("depths",), "normal": ("normals",),
                   "pointmap": ("depths", "depth")}

    def __init__(self, root: str | Path, task: str, input_size: tuple[int, int] = (1024, 768),
                 augment: DenseAugment | Seg2Augment | Fit2Augment | None = None, classes: SegClasses | None = None,
                 backgrounds: list[Path] | None = None, resize: str = "stretch", interpolation: str | None = None):
        super().__init__(input_size, backgrounds)
        if task not in self.TARGET_DIRS:
            raise ValueError(f"DenseDataset handles seg/depth/normal/pointmap, not {task!r}")
        if resize not in ("stretch", "center"):
            raise ValueError(f"resize must be 'stretch' or 'center', got {resize!r}")
        if interpolation not in (None, "bilinear", "area-cubic"):
            raise ValueError(f"interpolation must be 'bilinear' or 'area-cubic', got {interpolation!r}")
        wants = {"seg": (DenseAugment, Seg2Augment), "depth": (DenseAugment,), "normal": (DenseAugment, Fit2Augment),
                 "pointmap": (Fit2Augment,)}[task]
        if augment is not None and not isinstance(augment, wants):
            raise ValueError(f"{task} augmentation is a {' or '.join(w.__name__ for w in wants)}, not "
                             f"{type(augment).__name__}")
        self.root, self.task, self.augment, self.classes = Path(root), task, augment, classes
        self.centred = resize == "center" or task == "pointmap" or isinstance(augment, Fit2Augment)  # validation's
        self.area_cubic = interpolation == "area-cubic" or (interpolation is None and isinstance(augment, Seg2Augment))
        if not self.root.is_dir():
            raise DataError(f"dataset folder {self.root} does not exist")
        self.flip_lut = classes.flip_lut() if classes is not None else np.arange(256, dtype=np.uint8)
        self.samples = self._pair_files()
        if task == "pointmap" and not ((self.root / "camera_intrinsics").is_dir() or (self.root / "meta").is_dir()):
            raise DataError(f"{self.root}: pointmaps need each image's camera: camera_intrinsics/NAME.txt (3 x 3) "
                            "or meta/NAME.json (fx, fy, cx, cy, as opensapiens synth writes)")

    def _pair_files(self) -> list[tuple[Path, Path, Path | None]]:
        images = _stems(self.root / "images", IMAGE_EXTS)
        target_dir = next((self.root / d for d in self.TARGET_DIRS[self.task] if (self.root / d).is_dir()), None)
        masks = _stems(self.root / "masks", (".png",))
        if self.task == "seg" and not images:  # flat FaceSynthetics style: NAME.png + NAME_seg.png
            flat = _stems(self.root, IMAGE_EXTS)
            pairs = [(p, flat[s + "_seg"], None) for s, p in flat.items() if not s.endswith("_seg") and
                     s + "_seg" in flat]
            if pairs:
                return pairs
        want = " or ".join(f"{d}/" for d in self.TARGET_DIRS[self.task])
        if not images and (self.root / "images").is_dir():
            raise DataError(f"{self.root / 'images'} holds no images ({', '.join(IMAGE_EXTS)})")
        if images and target_dir is None:
            raise DataError(f"{self.root}: images/ has {len(images)} images but there is no {want} folder beside it")
        if not images or target_dir is None:
            raise DataError(f"{self.root}: expected images/ and {want} folders (see docs/training.md)")
        targets = _stems(target_dir, (".png",) if self.task == "seg" else (".npy",))
        names = sorted(set(images) & set(targets))
        if self.task != "seg" and not masks and names:
            warnings.warn(f"{self.root}: no masks/ folder; the foreground is where the target is nonzero",
                          stacklevel=2)
        missing = len(images) - len(names)
        if missing:
            warnings.warn(f"{self.root}: {missing} image(s) without a {target_dir.name}/ file are left out",
                          stacklevel=2)
        if not names:
            raise DataError(f"{self.root}: no image has a matching file in {target_dir.name}/")
        return [(images[n], targets[n], masks.get(n)) for n in names]

    def __len__(self) -> int:
        return len(self.samples)

    def describe(self, index: int) -> str:
        return str(self.samples[index][0])

    def load(self, index: int, rng: np.random.Generator | None) -> dict:
        image_path, target_path, mask_path = self.samples[index]
        image = read_image(image_path)
        H, W = image.shape[:2]
        out: dict[str, np.ndarray] = {}
        if self.task == "seg":
            target = _read_label_png(target_path)
            fg = target > 0
            n = self.classes.num_classes if self.classes is not None else 256
            bad = (target >= n) & (target != 255)
            if bad.any():
                raise DataError(f"{target_path}: label(s) {np.unique(target[bad])[:5].tolist()} outside [0, {n}) "
                                "and not 255 (ignore); pass the matching --classes")
        else:
            target = _load_npy(target_path, 3 if self.task == "normal" else None)
            # per channel: numpy's reductions over a last axis of 3 are ~10x slower
            channels = [target[..., c] for c in range(target.shape[-1])] if target.ndim == 3 else [target]
            valid = np.logical_and.reduce([np.isfinite(c) for c in channels])
            if mask_path is not None:
                fg = read_mask(mask_path)
            else:
                fg = np.logical_or.reduce([c != 0 for c in channels]) if target.ndim == 3 else target > 0
            fg &= valid
            if not valid.all():
                target = np.where(valid[..., None] if target.ndim == 3 else valid, target, 0).astype(np.float32)
        if target.shape[:2] != (H, W):
            raise DataError(f"{target_path}: size {target.shape[:2]} differs from its image's {(H, W)}")

        aug = self.augment if rng is not None else None
        if isinstance(aug, Fit2Augment) or (aug is None and self.centred):
            K = read_intrinsics(self.root, image_path.stem) if self.task == "pointmap" else None
            return self._fit2(image, target, fg, K, rng, aug)
        if isinstance(aug, Seg2Augment):
            return self._seg2(image, target, rng, aug)
        if aug is not None:
            bg = self.background(rng, aug.background_prob)
            if bg is not None:
                image = replace_background(image, fg, bg)
        M, angle, flip = dense_affine((H, W), self.input_size, rng, aug, target if self.task == "seg" else None)
        if aug is None and self.area_cubic:  # (validation's stretch; M is the same resize, for the labels)
            out["image"] = cv2_area_cubic(image, self.input_size)
        else:  # edges continued, not blended with the black beyond them, as cv2.resize and predict's resize
            out["image"] = warp_image(image, M, self.input_size)
        if aug is not None:
            out["image"] = self.photometric(out["image"], rng, aug.photometric)
        if self.task == "seg":
            labels = warp(target, M, self.input_size, nearest=True)  # outside the image: 0 = background
            out["labels"] = self.flip_lut[labels] if flip else labels
        else:
            mask = warp(fg.astype(np.uint8), M, self.input_size, nearest=True)
            out["mask"] = mask
            if self.task == "depth":
                out["depth"] = warp(target, M, self.input_size, nearest=True)
            else:
                normals = warp(target, M, self.input_size, nearest=True)
                out["normals"] = transform_normals(normals, angle, flip) if (angle or flip) else normals
        return out

    def _seg2(self, image: np.ndarray, labels: np.ndarray, rng: np.random.Generator, aug: Seg2Augment) -> dict:
        bg = self.background(rng, aug.background_prob)
        if bg is not None:
            image = paste_background(image, labels > 0, bg)
        image, labels = seg2_sample(image, labels, self.input_size, rng, aug, self.flip_lut)
        check_foreground(labels, aug.min_foreground)
        return {"image": image, "labels": labels}

    def _fit2(self, image: np.ndarray, target: np.ndarray, fg: np.ndarray, K: np.ndarray | None,
              rng: np.random.Generator | None, aug: Fit2Augment | None) -> dict:
        """A normal or pointmap sample through ``fit_plan``: the targets warped from the source once; a pointmap's
        camera follows the warp and its mirror (G), and its points are the warped depth seen through that camera."""
        from ..tasks.pointmap import unproject

        plan = fit_plan(image.shape[:2], self.input_size, rng, aug)
        M = plan.M[:2]
        out = {"image": fit2_image(image, plan, self.input_size, rng, aug)}
        if self.task == "pointmap":
            depth, mask = warp_depth(target, fg & (target > 0), M, self.input_size)
            K_in = warp_camera(K, M, np.diag([-1.0, 1.0, 1.0]) if plan.flip else np.eye(3))
            if aug is not None:
                check_pointmap(depth, mask, K_in)
            points = unproject(torch.from_numpy(depth)[None], torch.from_numpy(K_in)[None])[0].numpy()  # (H, W, 3)
            out.update(mask=mask.astype(np.uint8), points=np.where(mask[..., None], points, 0).astype(np.float32),
                       intrinsics=K_in.astype(np.float32))
            return out
        out["mask"] = warp(fg.astype(np.uint8), M, self.input_size, nearest=True)
        normals = warp(target, M, self.input_size, nearest=True)
        out["normals"] = transform_normals(normals, 0.0, True) if plan.flip else normals
        if aug is not None and aug.mask_rule:
            check_mask(out["mask"])
        return out
