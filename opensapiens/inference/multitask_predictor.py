"""The bundled multi-task model's predictor: one backbone pass over the whole image for seg, depth and normals, pose
top-down on person crops from the same upload (``opensapiens.load("sapiens-nano")``)."""

from __future__ import annotations

import numpy as np
import torch

from ..models.multitask import SapiensMultiTask
from .predictors import PosePredictor, SegPredictor, _chunks, _one_image, _unit_normals
from .results import DepthResult, NormalResult, SegResult
from .streams import Pending, upload_images


class MultiTaskPredictor:
    """All four tasks of a multi-task model (the bundled ``sapiens-nano``): one backbone pass over the whole image
    serves segmentation, depth and normals; pose runs top-down on person crops with the same weights."""

    DENSE = ("seg", "depth", "normal")

    def __init__(self, model: SapiensMultiTask, batch_size: int = 4, flip: bool = False, detector=None,
                 resize: str = "stretch", input_size: tuple[int, int] | None = None):
        self.model = model.eval()
        size = tuple(input_size or model.config.input_size)  # (H, W): the whole images' and the person crops'
        self.input_size = size
        self.pose = PosePredictor(model.task_model("pose"), input_size=size, batch_size=batch_size, flip=flip,
                                  detector=detector) if "pose" in model.tasks else None
        self.seg = SegPredictor(model.task_model("seg"), input_size=size, batch_size=batch_size, resize=resize)
        self.preprocess = self.seg.preprocess

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def __call__(self, image: np.ndarray, boxes=None) -> dict:
        return self.predict_batch([_one_image(image)], boxes=None if boxes is None else [boxes])[0]

    def predict_batch(self, images: list[np.ndarray], boxes=None) -> list[dict]:
        """Per image {"pose": PoseResult, "seg": SegResult, "depth": DepthResult, "normal": NormalResult}."""
        return self.submit(images, boxes=boxes).result() if len(images) else []

    @torch.inference_mode()
    def submit(self, images: list[np.ndarray], boxes=None) -> Pending:
        """As ``Predictor.submit``: the backbone with the dense heads, then the pose crops, queued; results later."""
        uploaded = upload_images(images, self.device)
        batch, metas = self.preprocess(uploaded, device=self.device)
        dtype = next(self.model.parameters()).dtype
        tasks = tuple(t for t in self.DENSE if t in self.model.tasks)
        chunks = [self.model(batch[sl].to(dtype), tasks=tasks) for sl in _chunks(len(batch), self.seg.batch_size)]
        outs = {t: torch.cat([c[t] for c in chunks]) for t in tasks}
        poses = None
        if self.pose is not None:  # crops from the same upload, unless a user's detector is to see the caller's images
            poses = self.pose.submit(images if self.pose.detector_sees_caller_images(boxes) else uploaded, boxes=boxes)

        def finish() -> list[dict]:
            pose_results = poses.result() if poses is not None else [None] * len(metas)
            results = []
            for i, meta in enumerate(metas):  # one image at a time at full resolution
                restored = {t: self.preprocess.restore(outs[t][i : i + 1].float(), [meta])[0] for t in tasks}
                labels = restored["seg"].argmax(0).to(torch.uint8).cpu().numpy()
                fg = labels > 0
                results.append({
                    "pose": pose_results[i],
                    "seg": SegResult(labels, self.seg.class_names),
                    "depth": DepthResult(restored["depth"][0].cpu().numpy(), fg),
                    "normal": NormalResult(_unit_normals(restored["normal"], fg), fg),
                })
            return results

        return Pending(self.device, finish)
