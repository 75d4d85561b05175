"""Person boxes for top-down pose: a torchvision COCO detector, or precomputed COCO-style detections.

The official Sapiens demos use an mmdet RTMDet/Faster R-CNN; any good COCO person detector serves, and torchvision's
ship with the dependencies we already have. Boxes are x1, y1, x2, y2 in image pixels.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch
import torchvision
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torchvision.ops import nms
from torchvision.ops.misc import FrozenBatchNorm2d

from .streams import as_tensor
from .transforms import check_image


def _categories(arch: str) -> list[str]:
    """Class names of torchvision's COCO weights for ``arch`` (metadata ships with torchvision, no download)."""
    try:
        weights = torchvision.models.get_model_weights(arch).DEFAULT
    except (ValueError, KeyError) as e:
        detection = torchvision.models.list_models(module=torchvision.models.detection)
        raise ValueError(f"unknown detector arch {arch!r}; torchvision detection models: {detection}") from e
    return list(weights.meta["categories"])


def _read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """State dict from a local .safetensors or torch.save file (tensors only; no pickled code is run)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"detector weights {path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict"):  # training checkpoints nest the weights
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"detector weights {path}: expected a state dict, got {type(state).__name__}")
    return state


def _download_weights(arch: str) -> dict[str, torch.Tensor]:
    """torchvision's COCO weights for ``arch``, from its download cache or the internet."""
    url = torchvision.models.get_model_weights(arch).DEFAULT.url
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name
    try:
        return torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=True, check_hash=True,
                                                  weights_only=True)
    except OSError as e:  # URLError, socket errors, read-only cache...
        raise ConnectionError(
            f"could not download the COCO weights of the {arch} person detector ({e}). Offline: download {url} "
            f"elsewhere and either place it at {cached} or pass its path with --detector-weights "
            "(Python: PersonDetector(weights=...))") from e


def fold_batch_norms(model: nn.Module) -> nn.Module:
    """Each inference-mode BatchNorm folded into the convolution it follows, in place: one kernel instead of two (a
    sixth of the default detector's GPU time went to BatchNorm), the same function up to rounding.

    Torchvision's detectors register each such pair as consecutive children (``Conv2dNormActivation``, ResNet's
    ``convN``/``bnN`` and ``downsample``), in the order they run; a BatchNorm after anything else stays.
    """
    for parent in list(model.modules()):
        children = list(parent.named_children())
        for (conv_name, conv), (bn_name, bn) in zip(children, children[1:]):
            norm = isinstance(bn, nn.BatchNorm2d | FrozenBatchNorm2d)
            if type(conv) is nn.Conv2d and norm and bn.running_mean is not None and not bn.training:
                setattr(parent, conv_name, fuse_conv_bn_eval(conv, bn))
                setattr(parent, bn_name, nn.Identity())
    return model


class PersonDetector:
    """COCO person detector on a torchvision detection model: score filter, then NMS, then the top ``max_people``.

    Args:
        weights: local .pth/.safetensors state dict for ``arch``; None downloads torchvision's COCO weights
            (cached under ``torch.hub.get_dir()``).
        arch: any torchvision detection model name trained on COCO, e.g. "fasterrcnn_resnet50_fpn_v2"
            (default, 46.7 box AP) or "fasterrcnn_mobilenet_v3_large_fpn" (32.8 AP, ~1.8x faster on an H200).
        device: where the detector runs.
        score_threshold: minimum person score.
        nms_iou: IoU above which the lower-scoring of two person boxes is dropped.
        max_people: at most this many boxes per image, highest scores first.
    """

    MAX_BATCH = 16  # images per model call unless asked otherwise
    takes_device_images = True  # images may be tensors on ``device``: a pose predictor there passes its own upload

    def __init__(self, weights: str | os.PathLike | None = None, arch: str = "fasterrcnn_resnet50_fpn_v2",
                 device: str | torch.device = "cpu", score_threshold: float = 0.5, nms_iou: float = 0.5,
                 max_people: int = 100) -> None:
        if not 0.0 <= score_threshold <= 1.0 or not 0.0 < nms_iou <= 1.0 or max_people < 1:
            raise ValueError(f"detector settings out of range: score_threshold {score_threshold} (0 to 1), nms_iou "
                             f"{nms_iou} (above 0, up to 1), max_people {max_people} (at least 1)")
        categories = _categories(arch)
        if "person" not in categories:
            raise ValueError(f"detector arch {arch!r} has no 'person' class")
        self.person_label = categories.index("person")
        self.score_threshold, self.nms_iou, self.max_people = float(score_threshold), float(nms_iou), int(max_people)
        self.device = torch.device(device)

        model = torchvision.models.get_model(arch, weights=None, weights_backbone=None, num_classes=len(categories))
        state = _read_weights(weights) if weights is not None else _download_weights(arch)
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise ValueError(f"detector weights {weights or arch} do not fit torchvision's {arch}: {e}") from e
        # The model's own filter keeps exactly the scores ours does (it keeps > its threshold, we >= ours): a box it
        # kept below ours went through its class-wise NMS (a loop over classes past 20000 boxes) only to be dropped.
        # Keep room for people among the classes in its top detections_per_img.
        heads = getattr(model, "roi_heads", model)
        heads.score_thresh = math.nextafter(self.score_threshold, -math.inf)
        heads.nms_thresh = max(heads.nms_thresh, self.nms_iou)
        heads.detections_per_img = max(heads.detections_per_img, 3 * self.max_people)
        self.model = fold_batch_norms(model.eval()).to(self.device)

    def __call__(self, image: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Person boxes of one RGB uint8 (H, W, 3) image: (boxes_xyxy (N, 4) float32, scores (N,) float32)."""
        return self.detect_batch([image])[0]

    @torch.inference_mode()
    def detect_batch(self, images: Sequence[np.ndarray | torch.Tensor], batch_size: int | None = None
                     ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Person boxes of each image, as ``__call__``. Images of one size run together, ``batch_size`` at a time
        (by default the caller's batch, pose's or curate's ``--batch-size``, up to ``MAX_BATCH``): torchvision pads
        the images of one call to a common size, which would give an image among larger ones other boxes than it
        gets alone, and spend the GPU on padding. On the H200 the default detector ran 16 1080p images at once at
        98 images/s, 4 at a time at 89 (call 84)."""
        sizes = [check_image(i, image) for i, image in enumerate(images)]  # (H, W) each
        batch_size = min(max(len(images), 1), self.MAX_BATCH) if batch_size is None else batch_size
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, size in enumerate(sizes):
            by_size.setdefault(size, []).append(i)
        results: list = [None] * len(images)
        for indices in by_size.values():
            for start in range(0, len(indices), batch_size):
                chunk = indices[start : start + batch_size]
                inputs = [as_tensor(images[i]).to(self.device).permute(2, 0, 1).float() / 255 for i in chunk]
                for i, out in zip(chunk, self.model(inputs)):
                    results[i] = self.select(out["boxes"], out["scores"], out["labels"])
        return results

    def select(self, boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Raw detections (M, 4), (M,), (M,) -> person boxes: class filter, score filter, NMS, top ``max_people``."""
        keep = (labels == self.person_label) & (scores >= self.score_threshold)
        boxes, scores = boxes[keep].float(), scores[keep].float()
        keep = nms(boxes, scores, self.nms_iou)[: self.max_people]  # sorted by decreasing score
        return boxes[keep].cpu().numpy(), scores[keep].cpu().numpy()


def load_detections(path: str | os.PathLike, score_threshold: float = 0.0,
                    category_id: int | None = None) -> dict[int | str, dict[str, np.ndarray]]:
    """Read COCO-style person boxes into ``{key: {"boxes": (N, 4) float32 xyxy, "scores": (N,) float32}}``.

    Accepts a detections list ``[{image_id, bbox: [x, y, w, h], score, category_id, file_name?}, ...]`` (as
    ``COCO_val2017_detections_AP_H_70_person.json``) or a COCO annotation file (``{"images", "annotations"}``; boxes
    get score 1, crowd regions are skipped). ``category_id``: the person category; by default an annotation file's
    own (its only category, else the one named "person", ...: ``evaluation.pose.person_category``) and COCO's 1 in a
    detections list (or the one category a list holds, if it has no 1). Each image's boxes are keyed by its integer
    ``image_id`` and, when a file name is known, by the file name, its base name and its stem. Boxes keep the file's
    order; images without boxes are absent.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except UnicodeDecodeError:
        raise ValueError(f"detections file {path}: not a JSON file (not even text)") from None
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"detections file {path}: cannot read JSON ({e})") from e
    if category_id is None and isinstance(data, (dict, list)):  # the file's own, as evaluation finds it
        from ..evaluation.pose import person_category

        category_id = person_category(data if isinstance(data, dict) else
                                      {"annotations": [det for det in data if isinstance(det, dict)]})
    names: dict[int, str] = {}
    if isinstance(data, dict):
        names = {im["id"]: im["file_name"] for im in data.get("images", []) if "file_name" in im}
        data = [a for a in data.get("annotations", []) if not a.get("iscrowd", 0)]
    if not isinstance(data, list):
        raise ValueError(f"detections file {path}: expected a list of detections or a COCO annotation dict")

    grouped: dict[int | str, list[tuple[list[float], float]]] = {}
    for i, det in enumerate(data):
        try:
            image_id, (x, y, w, h) = det["image_id"], det["bbox"]
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"detections file {path}: entry {i} lacks image_id or a 4-number bbox ({det!r})") from e
        score = float(det.get("score", 1.0))
        if det.get("category_id", category_id) != category_id or score < score_threshold:
            continue
        grouped.setdefault(image_id, []).append(([x, y, x + w, y + h], score))
        if "file_name" in det:
            names.setdefault(image_id, det["file_name"])

    out: dict[int | str, dict[str, np.ndarray]] = {}
    for image_id, dets in grouped.items():
        value = {"boxes": np.asarray([b for b, _ in dets], dtype=np.float32).reshape(-1, 4),
                 "scores": np.asarray([s for _, s in dets], dtype=np.float32)}
        out[image_id] = value
        if image_id in names:
            name = names[image_id]
            for key in (name, os.path.basename(name), Path(name).stem):
                out[key] = value
    return out
