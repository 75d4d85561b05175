"""Predictors: a model plus its transforms, from RGB images to results in image coordinates.

    predictor = opensapiens.load("sapiens-seg-1b")          # or load_predictor("seg", path)
    result = predictor(image)                                # image: (H, W, 3) uint8 RGB
    results = predictor.predict_batch([img1, img2])         # batched; each result at its own image's size
    pending = predictor.submit(images)                       # the model queued on the device, results later:
    results = pending.result()                               #   submit the next batch first to keep the GPU busy
    raw = predictor.predict_torch(batch)                     # normalized (B, 3, H, W) -> raw head output

Dense tasks resize the whole image to the model input (``resize="stretch"``, the official protocol, ``"pad"``,
aspect-preserving letterbox, or ``"center"``, Sapiens2's for normals and pointmaps) and map outputs back to the
original size with bilinear interpolation. Pose is top-down: person boxes (given, detected or the whole image) are
cropped with the UDP affine at 1024x768 (box padding 1.25, aspect 0.75), all crops of all images go through the
model in batches, heatmaps are decoded on the device (UDP + DARK) and keypoints mapped back to image coordinates.
"""

from __future__ import annotations

import functools
import os
import re
import warnings
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..checkpoints import as_dtype, load_model
from ..checkpoints.loading import native_input_size
from ..codecs.heatmap import decode_udp_heatmaps
from ..metadata import KeypointSet, built_in_keypoint_set, keypoint_set, seg_classes
from ..models import SapiensModel
from ..models.heads import HEAD_SPECS
from ..models.multitask import SapiensMultiTask
from .optimize import FastModel, optimize_for_inference, require_fp8_device
from .results import DepthResult, FeatureResult, NormalResult, PointmapResult, PoseResult, SegResult
from .streams import Pending, upload_images
from .topdown import boxes_to_center_scale, crop_to_image, flip_test, person_inputs
from .transforms import Preprocessor, ResizeMeta, check_image

if TYPE_CHECKING:
    from .multitask_predictor import MultiTaskPredictor

# -------------------------------------------------------------------------------------------------------- predictors


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _chunks(n: int, size: int):
    for i in range(0, n, size):
        yield slice(i, min(i + size, n))


def _one_image(image):
    """The one image a predictor's call takes; a batch stacked into one array is pointed to ``predict_batch``."""
    if np.ndim(image) == 4:
        raise ValueError(f"got a batch of {len(image)} images stacked in one {tuple(image.shape)} array: call "
                         "predict_batch(images) for several, the predictor itself for one (H, W, 3) image")
    return image


class Predictor:
    """Holds a model, its input size and normalization; subclasses turn raw outputs into results."""

    task = ""

    def __init__(self, model: SapiensModel | FastModel, input_size: tuple[int, int] = (1024, 768), batch_size: int = 4,
                 resize: str = "stretch", interpolation: str | None = None):
        if model.task != self.task:
            raise ValueError(f"{type(self).__name__} needs a {self.task} model, got a {model.task} model")
        self.model = model.eval()
        self.input_size = tuple(input_size)
        stride = getattr(getattr(model.config, "arch", None), "stride", 16)  # pixels per token: 16, the 4K model's 64
        if self.input_size[0] % stride or self.input_size[1] % stride:
            raise ValueError(f"input size {self.input_size} must be divisible by {stride}")
        self.batch_size = batch_size
        if interpolation is None:  # Sapiens2's seg models were trained and are run on area / bicubic resizes
            sapiens2_seg = self.task == "seg" and getattr(model.config, "generation", 1) == 2
            interpolation = "area-cubic" if sapiens2_seg and resize == "stretch" else "bilinear"
        self.preprocess = Preprocessor(self.input_size, resize=resize, interpolation=interpolation)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @torch.inference_mode()
    def predict_torch(self, batch: torch.Tensor) -> torch.Tensor:
        """Normalized (B, 3, H, W) -> raw head output in float32, run in chunks of ``batch_size``."""
        return torch.cat([self._forward(batch[sl]) for sl in _chunks(batch.shape[0], self.batch_size)])

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """One chunk through the model. An optimized model sees short chunks zero-padded to ``batch_size`` where a
        new batch size would compile again (``FastModel.run_size``)."""
        n = x.shape[0]
        x = x.to(self.device, self.dtype, non_blocking=True)
        if isinstance(self.model, FastModel) and (size := self.model.run_size(n, self.batch_size)) > n:
            x = torch.cat([x, x.new_zeros(size - n, *x.shape[1:])])
        return self._as_map(self.model(x))[:n].float()

    def _as_map(self, output) -> torch.Tensor:
        """The head's output as one (B, C, h, w) tensor (batched, restored and kept as one map)."""
        return output

    def __call__(self, image: np.ndarray, **kwargs):
        return self.predict_batch([_one_image(image)], **kwargs)[0]

    def predict_batch(self, images: list[np.ndarray], **kwargs) -> list:
        """One result per (H, W, 3) uint8 RGB image; keyword arguments as ``submit``'s."""
        return self.submit(images, **kwargs).result() if len(images) else []

    def submit(self, images: list[np.ndarray], **kwargs) -> Pending:
        """Queue the images' upload and model on the device and return at once (on CUDA); ``.result()`` of the
        returned ``Pending`` post-processes and gives what ``predict_batch`` returns. A job that submits the next
        batch before asking for this one's results keeps the GPU busy while the host reads results back."""
        raise NotImplementedError

    def _dense(self, images: list[np.ndarray]) -> tuple[torch.Tensor, list]:
        """Queue the model on whole images: raw float32 outputs (B, C, h, w) and how each image was resized."""
        batch, metas = self.preprocess(upload_images(images, self.device), device=self.device)
        return self.predict_torch(batch), metas

    def _restored(self, raw: torch.Tensor, metas: list, i: int) -> torch.Tensor:
        """Image ``i``'s output at its original size (one image at a time: 28 channels at 4K are 0.9 GiB)."""
        return self.preprocess.restore(raw[i : i + 1], metas[i : i + 1])[0]


def _recorded(model: SapiensModel) -> dict:
    """What a model's file recorded beyond its shapes (a fine-tune's labels and input size); {} where nothing."""
    return getattr(model.config, "extra", None) or {}


class SegPredictor(Predictor):
    task = "seg"

    def __init__(self, model: SapiensModel, class_names: tuple[str, ...] | None = None, **kwargs):
        super().__init__(model, **kwargs)
        n = model.config.out_channels
        v2 = getattr(model.config, "generation", 1) == 2
        known = {29: "sapiens2"} if v2 else {28: "goliath", 19: "face"}  # the official vocabularies of these sizes
        trained = _recorded(model).get("class_names")  # a fine-tune's (train --classes)
        self.class_names = class_names or (tuple(trained) if trained and len(trained) == n else None) or (
            seg_classes(known[n]).names if n in known else tuple(f"class_{i}" for i in range(n)))

    @torch.inference_mode()
    def submit(self, images: list[np.ndarray], return_logits: bool = False) -> Pending:
        raw, metas = self._dense(images)

        def finish() -> list[SegResult]:
            return [SegResult(self._restored(raw, metas, i).argmax(0).to(torch.uint8).cpu().numpy(), self.class_names,
                              raw[i].cpu().numpy() if return_logits else None) for i in range(len(metas))]

        return Pending(self.device, finish)


class _MaskedDense(Predictor):
    """Depth and normals optionally take a foreground mask: given per image, or from a segmentation predictor."""

    def __init__(self, model: SapiensModel, seg: SegPredictor | None = None, **kwargs):
        super().__init__(model, **kwargs)
        self.seg = seg

    @torch.inference_mode()
    def submit(self, images: list[np.ndarray], masks=None, return_raw: bool = False) -> Pending:
        """``masks``: per image an (H, W) foreground or None (or None for all): where None, the seg predictor's
        foreground, if there is one, else no mask."""
        images = upload_images(images, self.device)  # once: the seg predictor takes them as they are
        given, segmented, seg_pending = self._masks(images, masks)
        raw, metas = self._dense(images)

        def finish() -> list:
            foreground = given
            if seg_pending is not None:
                foreground = list(given)
                for i, r in zip(segmented, seg_pending.result()):
                    foreground[i] = r.foreground
            return [self._result(self._restored(raw, metas, i), None if foreground is None else foreground[i],
                                 raw[i].cpu().numpy() if return_raw else None, metas[i]) for i in range(len(metas))]

        return Pending(self.device, finish)

    def _masks(self, images: list[np.ndarray], masks
               ) -> tuple[list[np.ndarray | None] | None, list[int], Pending | None]:
        """(the given masks checked, the images the seg predictor masks instead, its submitted batch): it takes
        every image without a given mask."""
        if masks is None:
            given = None if self.seg is None else [None] * len(images)
        else:
            one = isinstance(masks, (np.ndarray, torch.Tensor)) and masks.ndim == 2
            if one and len(images) > 1:
                raise ValueError(f"one (H, W) mask for {len(images)} images: give a list, a mask (or None) per image")
            masks = [masks] if one else masks
            if len(masks) != len(images):
                raise ValueError(f"got {len(masks)} masks for {len(images)} images")
            given = [None if m is None else (m.cpu().numpy() if isinstance(m, torch.Tensor) else np.asarray(m)
                                             ).astype(bool) for m in masks]
            for i, (m, image) in enumerate(zip(given, images)):
                if m is not None and m.shape != tuple(image.shape[:2]):
                    raise ValueError(f"mask {i} has shape {m.shape}, its image (H, W) {tuple(image.shape[:2])}")
        segmented = [i for i, m in enumerate(given or []) if m is None] if self.seg is not None else []
        pending = self.seg.submit([images[i] for i in segmented]) if segmented else None
        return given, segmented, pending

    def _result(self, output: torch.Tensor, mask: np.ndarray | None, raw: np.ndarray | None, meta: ResizeMeta):
        raise NotImplementedError


class DepthPredictor(_MaskedDense):
    task = "depth"

    def _result(self, output: torch.Tensor, mask: np.ndarray | None, raw: np.ndarray | None,
                meta: ResizeMeta) -> DepthResult:
        return DepthResult(output[0].cpu().numpy(), mask, raw)


class NormalPredictor(_MaskedDense):
    task = "normal"

    def _result(self, output: torch.Tensor, mask: np.ndarray | None, raw: np.ndarray | None,
                meta: ResizeMeta) -> NormalResult:
        return NormalResult(_unit_normals(output, mask), mask, raw)


class PointmapPredictor(_MaskedDense):
    """Sapiens2 pointmaps: per pixel a 3-D point in metres in the camera frame, and the camera's focal length.

    The model predicts points in a canonical camera of focal length 768 (input pixels) and the scale 768 / f of the
    real one; metric points = canonical points / scale, and f = 768 / scale input pixels, which the image's resize
    turns into its own pixels. The scale travels as a fourth, constant channel of the map so that batching and the
    resize back treat the two outputs as one.
    """

    task = "pointmap"
    CANONICAL_FOCAL = 768.0

    def _as_map(self, output: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        points, scale = output  # (B, 3, h, w), (B, 1)
        return torch.cat([points, scale[:, :, None, None].expand(-1, 1, *points.shape[-2:])], dim=1)

    def _result(self, output: torch.Tensor, mask: np.ndarray | None, raw: np.ndarray | None,
                meta: ResizeMeta) -> PointmapResult:
        scale = float(output[3].mean())
        points = (output[:3] / scale).permute(1, 2, 0).cpu().numpy()  # (H, W, 3) metres
        if mask is not None:
            points[~mask] = np.nan
        sy, sx = meta.scale  # resized / original
        focal = self.CANONICAL_FOCAL / scale
        return PointmapResult(points, (focal / sx, focal / sy), scale, mask, raw)


def _unit_normals(output: torch.Tensor, mask: np.ndarray | None) -> np.ndarray:
    """(3, H, W) raw normals -> (H, W, 3) unit vectors (per-pixel L2 normalization, eps as official), 0 off ``mask``."""
    n = output / output.norm(dim=0, keepdim=True).clamp_min(1e-5)
    normals = n.permute(1, 2, 0).cpu().numpy()
    if mask is not None:
        normals[~mask] = 0.0
    return normals


class FeaturePredictor(Predictor):
    task = "features"

    @torch.inference_mode()
    def submit(self, images: list[np.ndarray]) -> Pending:
        features, _ = self._dense(images)
        return Pending(self.device, lambda: [FeatureResult(f) for f in features.cpu().numpy()])


def _trained_keypoint_set(extra: dict) -> KeypointSet | None:
    """The keypoint set a fine-tune defined in its own file (``train --keypoints FILE``), as its checkpoint keeps it
    (None for a built-in set: the same names in the same order). Checkpoints from before the mirror pairs, sigmas and
    skeleton were kept get the pairs their names give (left_X with right_X), sigma 0.05 and no lines drawn."""
    names = tuple(extra.get("keypoint_names") or ())
    if not names or built_in_keypoint_set(names) is not None:
        return None
    flip = extra.get("flip_indices")
    if flip is None:
        index = {n: i for i, n in enumerate(names)}
        flip = [index.get(re.sub(r"left|right", lambda m: {"left": "right", "right": "left"}[m.group()], n), i)
                for i, n in enumerate(names)]
    return KeypointSet(str(extra.get("keypoint_set", "custom")), names, tuple(flip),
                       tuple(extra.get("sigmas", [0.05] * len(names))),
                       tuple(tuple(pair) for pair in extra.get("skeleton", ())), {"all": tuple(range(len(names)))})


class PosePredictor(Predictor):
    """Top-down pose. Boxes per image: given (xyxy), from ``detector``, or the whole image."""

    task = "pose"

    def __init__(self, model: SapiensModel, detector=None, flip: bool = False, keypoints: str | None = None,
                 **kwargs):
        super().__init__(model, **kwargs)
        self.detector = detector
        self.flip = flip
        self.cubic_enlarging = getattr(model.config, "generation", 1) == 2  # Sapiens2's: bicubic where crops magnify
        k = model.config.out_channels
        own = _trained_keypoint_set(_recorded(model)) if keypoints is None else None
        self.keypoint_set: KeypointSet = own or keypoint_set(keypoints or (k if k in (17, 133, 308) else "goliath"))
        # results name a built-in set, or carry a fine-tune's own
        self.result_layout = self.keypoint_set if own is not None else self.keypoint_set.name
        if self.keypoint_set.num_keypoints != k:
            raise ValueError(f"keypoint set {self.keypoint_set.name} has {self.keypoint_set.num_keypoints} points, "
                             f"the model predicts {k}")

    def detector_takes_upload(self, boxes) -> bool:
        """Whether the detector is to run on the device copy the crops are cut from (one upload per image): ours
        (``PersonDetector``), on this device. A user's callable gets the caller's images, as it was written for."""
        takes = getattr(self.detector, "takes_device_images", False)
        device = getattr(self.detector, "device", None) if takes else None
        return (boxes is None and device is not None and device.type == self.device.type
                and (device.index or 0) == (self.device.index or 0))

    def detector_sees_caller_images(self, boxes) -> bool:
        return boxes is None and self.detector is not None and not self.detector_takes_upload(boxes)

    def __call__(self, image: np.ndarray, boxes=None, **kwargs) -> PoseResult:
        """One image; ``boxes`` its people's boxes (an (N, 4) or (N, 5) array or list, one [x1, y1, x2, y2] box)."""
        return self.predict_batch([_one_image(image)], boxes=None if boxes is None else [boxes], **kwargs)[0]

    def _boxes(self, images: list[np.ndarray], boxes) -> tuple[list[np.ndarray], list[np.ndarray]]:
        if boxes is not None:
            flat = isinstance(boxes, (list, tuple)) and len(boxes) > 0 and all(map(np.isscalar, boxes))  # one box
            boxes = [boxes] if len(images) == 1 and (flat or not isinstance(boxes, (list, tuple))) else boxes
            if flat and len(images) > 1:
                raise ValueError(f"boxes is one box {list(boxes)} for {len(images)} images: give each image its "
                                 "(N, 4) boxes, a list per image")
            if len(boxes) != len(images):
                raise ValueError(f"got box lists for {len(boxes)} images, expected {len(images)} (a list of (N, 4) "
                                 "boxes per image)")
            out_b, out_s = [], []
            for i, b in enumerate(boxes):
                if b is None:
                    raise ValueError(f"boxes of image {i} is None: give each image's boxes (an empty (0, 4) array "
                                     "for none), or boxes=None for the detector or whole images on all of them")
                b = np.asarray(b, dtype=np.float32)
                if b.size and (b.ndim > 2 or b.shape[-1] not in (4, 5)):
                    raise ValueError(f"boxes of image {i} must be (N, 4) xyxy or (N, 5) xyxy + score, got shape "
                                     f"{b.shape}")
                b = b.reshape(-1, 5 if b.shape[-1:] == (5,) else 4)
                out_b.append(b[:, :4])
                out_s.append(b[:, 4] if b.shape[1] == 5 else np.ones(len(b), np.float32))
            return out_b, out_s
        if self.detector is not None:  # ours detects in batches; any callable image -> (boxes, scores) serves
            detect_batch = getattr(self.detector, "detect_batch", None)
            dets = detect_batch(images) if detect_batch is not None else [self.detector(im) for im in images]
            return ([np.asarray(d[0], np.float32).reshape(-1, 4) for d in dets],
                    [np.asarray(d[1], np.float32).reshape(-1) for d in dets])
        whole = [np.array([[0, 0, im.shape[1], im.shape[0]]], np.float32) for im in images]
        return whole, [np.ones(1, np.float32) for _ in images]

    @staticmethod
    def _drop_empty_boxes(box_list: list[np.ndarray], score_list: list[np.ndarray]
                          ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Boxes without a positive width and height (x2 <= x1 or y2 <= y1, NaN) describe no region: dropped, with
        one warning saying how many, instead of failing the whole batch at the crop."""
        keep = [(b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1]) for b in (np.asarray(b) for b in box_list)]
        dropped = sum(int((~k).sum()) for k in keep)
        if dropped:
            warnings.warn(f"dropped {dropped} person box(es) without a positive width and height (x2 <= x1 or "
                          "y2 <= y1): they describe no region to crop", stacklevel=4)
            box_list = [np.asarray(b)[k] for b, k in zip(box_list, keep)]
            score_list = [np.asarray(s)[k] for s, k in zip(score_list, keep)]
        return box_list, score_list

    @torch.inference_mode()
    def submit(self, images: list[np.ndarray], boxes=None, return_heatmaps: bool = False) -> Pending:
        """``boxes``: per image an (N, 4) xyxy array (or (N, 5) with scores); None = detector or whole image. Boxes
        without a positive width and height are dropped with a warning.

        All crops of all images go through the model in chunks of ``batch_size``; each chunk's heatmaps are decoded
        while the next chunk runs, so at most two chunks of heatmaps are held; the last is decoded in ``result()``.
        """
        for i, image in enumerate(images):  # before the whole-image boxes read their shapes
            check_image(i, image)
        uploaded = upload_images(images, self.device) if self.detector_takes_upload(boxes) else None
        box_list, score_list = self._drop_empty_boxes(*self._boxes(images if uploaded is None else uploaded, boxes))
        counts = [len(b) for b in box_list]
        if sum(counts) == 0:
            K = self.keypoint_set.num_keypoints
            stride = HEAD_SPECS["pose"].stride()
            heat_shape = (0, K, self.input_size[0] // stride, self.input_size[1] // stride)  # as the model's, empty
            empty = [PoseResult(np.zeros((0, K, 2), np.float32), np.zeros((0, K), np.float32),
                                np.zeros((0, 4), np.float32), np.zeros(0, np.float32), self.result_layout,
                                np.zeros(heat_shape, np.float32) if return_heatmaps else None)
                     for _ in images]
            return Pending(None, lambda: empty)
        if uploaded is None:
            uploaded = upload_images(images, self.device)
        tensors = [t.permute(2, 0, 1) for t in uploaded]  # (3, H, W) uint8 each
        # boxes, crop geometry and image ids stay on the host: the device gets them with the crops, asynchronously
        all_boxes = torch.from_numpy(np.concatenate(box_list))
        image_index = torch.repeat_interleave(torch.arange(len(images)), torch.tensor(counts))
        center, scale = boxes_to_center_scale(all_boxes, padding=1.25, aspect=self.input_size[1] / self.input_size[0])
        chunks: list[Pending] = []
        for sl in _chunks(len(all_boxes), self.batch_size):
            crops = person_inputs(tensors, image_index[sl], center[sl], scale[sl], self.input_size, self.dtype,
                                  self.cubic_enlarging)
            if self.flip:
                heat = flip_test(self._forward, crops, self.keypoint_set.flip_indices)
            else:
                heat = self._forward(crops)
            chunks.append(Pending(self.device, functools.partial(self._decode, heat, center[sl], scale[sl],
                                                                 return_heatmaps)))
            if len(chunks) > 1:
                chunks[-2].result()  # the previous chunk decoded while this one runs

        def finish() -> list[PoseResult]:
            decoded = [c.result() for c in chunks]  # (keypoints, scores, heatmaps or None) per chunk
            kp_all, sc_all = (np.concatenate([d[k] for d in decoded]) for k in (0, 1))
            hm_all = np.concatenate([d[2] for d in decoded]) if return_heatmaps else None
            out, start = [], 0
            for b, s, n in zip(box_list, score_list, counts):
                sl = slice(start, start + n)
                out.append(PoseResult(kp_all[sl], sc_all[sl], b, s, self.result_layout,
                                      None if hm_all is None else hm_all[sl]))
                start += n
            return out

        return Pending(self.device, finish)

    def _decode(self, heat: torch.Tensor, center: torch.Tensor, scale: torch.Tensor, return_heatmaps: bool
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """One chunk's heatmaps (n, K, h, w) -> keypoints (n, K, 2) in image pixels, scores (n, K), the heatmaps."""
        kp, sc = decode_udp_heatmaps(heat, self.input_size)
        kp = crop_to_image(kp, center, scale, self.input_size)
        return (kp.cpu().numpy().astype(np.float32), sc.cpu().numpy().astype(np.float32),
                heat.cpu().numpy() if return_heatmaps else None)


PREDICTORS: dict[str, type[Predictor]] = {
    "pose": PosePredictor, "seg": SegPredictor, "depth": DepthPredictor, "normal": NormalPredictor,
    "features": FeaturePredictor, "pointmap": PointmapPredictor,
}


def load_predictor(task: str | None, checkpoint: str | os.PathLike, device: str | torch.device | None = None,
                   dtype: str | torch.dtype | None = None, input_size: tuple[int, int] | None = None,
                   optimize: bool | None = None, fp8: bool = False, compile: bool = True,
                   **kwargs) -> Predictor | MultiTaskPredictor:
    """Load ``checkpoint`` (path or official name) and wrap it in the predictor of its task.

    ``device`` defaults to CUDA when available; ``dtype`` to bf16 on CUDA and fp32 on CPU. ``task=None`` takes the
    task the checkpoint was trained for ("features" forces a bare backbone). ``input_size`` defaults to the size it
    was trained at where the file records it (fine-tunes, multi-task files), else 1024x768 (1024x1024 for features).
    ``optimize`` (default: on CUDA) runs the fast path of ``optimize_for_inference``; ``fp8`` its FP8 mode (e4m3
    GEMMs in the transformer blocks; needs FP8 tensor cores); ``compile=False`` leaves torch.compile out of it (a
    short job's exit then need not wait for a background compile). Extra keyword arguments go to the predictor
    (``batch_size``, ``resize``, ``flip``, ``detector``, ``seg``...); ``resize`` defaults to the official protocol
    ("stretch"; "center" for Sapiens2 normals and pointmaps).
    """
    device = torch.device(device) if device is not None else default_device()
    resize = kwargs.pop("resize", None)  # None: the task's official protocol
    if fp8:
        require_fp8_device(device)  # before loading (perhaps downloading) the weights
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = load_model(checkpoint, device=device, dtype=as_dtype(dtype), task=task)
    if isinstance(model, SapiensMultiTask):
        if fp8:
            raise ValueError(f"{checkpoint}: fp8 runs the single-task models' fused blocks; this multi-task model "
                             "runs unoptimized (load one of its tasks with task=... for FP8)")
        if optimize:
            raise ValueError(f"{checkpoint}: this multi-task model runs unoptimized (load one of its tasks with "
                             "task=... for the optimized path)")
        if unknown := sorted(set(kwargs) - {"batch_size", "flip", "detector", "resize"}):
            raise ValueError(f"{checkpoint}: a multi-task model's predictor takes batch_size, flip, detector, resize "
                             f"and input_size, not {', '.join(unknown)}")
        from .multitask_predictor import MultiTaskPredictor  # (it is made of this module's predictors)

        return MultiTaskPredictor(model, input_size=input_size, **kwargs, **({"resize": resize} if resize else {}))
    if input_size is None:  # the size it was trained at: a multi-task file's, a fine-tune's (train --input-size)
        trained = _recorded(model).get("input_size")
        input_size = native_input_size(checkpoint) or (tuple(trained) if trained else None) or (
            (1024, 1024) if model.task == "features" and model.config.generation == 1 else model.config.task_input_size)
    if optimize is None:
        optimize = device.type == "cuda"
    if model.config.generation == 2 and model.task in ("normal", "pointmap") and resize is None:
        resize = "center"  # Sapiens2's protocol for its 3-D tasks: aspect kept, centred, black around
    if resize is not None:
        kwargs["resize"] = resize
    if optimize or fp8:
        model = optimize_for_inference(model, fp8=fp8, compile=compile)
    return PREDICTORS[model.task](model, input_size=tuple(input_size), **kwargs)


def load(name_or_path: str | os.PathLike, **kwargs) -> Predictor | MultiTaskPredictor:
    """One line from a name to results: ``opensapiens.load("sapiens-pose-1b")(image)``."""
    return load_predictor(kwargs.pop("task", None), name_or_path, **kwargs)
