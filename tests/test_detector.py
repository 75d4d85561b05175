"""Person detector wiring (random-weight torchvision model, no download) and COCO detections files."""

from __future__ import annotations

import json
import urllib.error

import numpy as np
import pytest
import torch
import torchvision
from safetensors.torch import save_file

from opensapiens.inference.detector import PersonDetector, fold_batch_norms, load_detections

ARCH = "fasterrcnn_mobilenet_v3_large_320_fpn"  # the smallest torchvision COCO detector


def ref_person_filter(boxes, scores, labels, thr, iou, top):
    """Class filter, score filter and greedy NMS in float64 numpy."""
    keep = (labels == 1) & (scores >= thr)
    boxes, scores = boxes[keep].astype(np.float64), scores[keep].astype(np.float64)
    order = np.argsort(-scores, kind="stable")
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    chosen = []
    for i in order:
        ok = True
        for j in chosen:
            iw = max(0.0, min(boxes[i, 2], boxes[j, 2]) - max(boxes[i, 0], boxes[j, 0]))
            ih = max(0.0, min(boxes[i, 3], boxes[j, 3]) - max(boxes[i, 1], boxes[j, 1]))
            inter = iw * ih
            if inter / (area[i] + area[j] - inter) > iou:
                ok = False
                break
        if ok:
            chosen.append(i)
    chosen = chosen[:top]
    return boxes[chosen], scores[chosen]


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory):
    torch.manual_seed(0)
    model = torchvision.models.get_model(ARCH, weights=None, weights_backbone=None, num_classes=91)
    with torch.no_grad():  # favour "person" (label 1) so that random weights give person boxes of varied scores
        model.roi_heads.box_predictor.cls_score.bias[1] += 5.0
    d = tmp_path_factory.mktemp("det")
    state = model.state_dict()
    torch.save({"model": state}, d / "det.pth")  # nested, as training checkpoints are
    save_file({k: v.contiguous() for k, v in state.items()}, str(d / "det.safetensors"))
    return state, d


@pytest.mark.parametrize("name", ["det.pth", "det.safetensors"])
def test_detector_loads_local_weights_and_filters_people(random_weights, name):
    state, d = random_weights
    det = PersonDetector(d / name, arch=ARCH, score_threshold=0.0, nms_iou=0.3, max_people=7)
    stock = torchvision.models.get_model(ARCH, weights=None, weights_backbone=None, num_classes=91).eval()
    stock.load_state_dict(state)
    loaded = det.model.state_dict()  # the weights, with its BatchNorms folded into their convolutions
    for k, v in fold_batch_norms(stock).state_dict().items():
        assert torch.equal(v, loaded[k]), k

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (120, 160, 3), dtype=np.uint8), rng.integers(0, 256, (90, 70, 3), dtype=np.uint8)]
    results = det.detect_batch(images)
    with torch.inference_mode():  # each image alone: two sizes are never padded to a common one
        raw = [det.model([torch.from_numpy(im).permute(2, 0, 1).float() / 255])[0] for im in images]
    for (boxes, scores), out in zip(results, raw):
        assert boxes.dtype == np.float32 and scores.dtype == np.float32 and boxes.shape == (len(scores), 4)
        ref_b, ref_s = ref_person_filter(out["boxes"].numpy(), out["scores"].numpy(), out["labels"].numpy(),
                                         0.0, 0.3, 7)
        assert len(ref_s) > 0
        np.testing.assert_allclose(boxes, ref_b, atol=1e-4)
        np.testing.assert_allclose(scores, ref_s, atol=1e-6)
    # images decoded on the device (predict --decode device) come as tensors: the same boxes
    for (boxes, scores), (ref_b, ref_s) in zip(det.detect_batch([torch.from_numpy(im) for im in images]), results):
        np.testing.assert_array_equal(boxes, ref_b)
        np.testing.assert_array_equal(scores, ref_s)


class _VariedScores(torch.nn.Module):
    """Class logits that differ from proposal to proposal (random weights give every proposal the same scores)."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        self.linear = linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        row, label = torch.arange(len(x), dtype=x.dtype)[:, None], torch.arange(self.linear.out_features, dtype=x.dtype)
        return self.linear(x) + 3 * torch.sin(1.7 * row + 0.3 * label)


def test_the_models_own_score_filter_drops_only_what_ours_would(random_weights):
    """The detector's model keeps only scores at or above our threshold (fewer boxes through its class-wise NMS): the
    people found equal our filter applied to the stock model, which keeps every score above 0.05."""
    state, d = random_weights
    det = PersonDetector(d / "det.safetensors", arch=ARCH, score_threshold=0.2, nms_iou=0.4, max_people=50)
    stock = torchvision.models.get_model(ARCH, weights=None, weights_backbone=None, num_classes=91).eval()
    stock.load_state_dict(state)
    stock.roi_heads.detections_per_img = 100_000  # nothing cut by its top-k
    for model in (det.model, stock):
        model.roi_heads.box_predictor.cls_score = _VariedScores(model.roi_heads.box_predictor.cls_score)
    assert stock.roi_heads.score_thresh == 0.05 and 0.2 - 1e-6 < det.model.roi_heads.score_thresh < 0.2
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 256, (150, 130, 3), dtype=np.uint8) for _ in range(3)]
    with torch.inference_mode():
        raw = stock([torch.from_numpy(im).permute(2, 0, 1).float() / 255 for im in images])
    found = 0
    for (boxes, scores), out in zip(det.detect_batch(images), raw):
        labels = out["labels"].numpy()
        assert ((out["scores"].numpy() < 0.2) & (labels == 1)).any()  # the stock model kept people ours drops
        ref_b, ref_s = ref_person_filter(out["boxes"].numpy(), out["scores"].numpy(), labels, 0.2, 0.4, 50)
        np.testing.assert_allclose(boxes, ref_b, atol=1e-4)
        np.testing.assert_allclose(scores, ref_s, atol=1e-6)
        found += len(ref_s)
    assert found > 0


@pytest.mark.parametrize("arch", ["fasterrcnn_resnet50_fpn_v2", ARCH])
def test_folding_batch_norms_keeps_every_stage_of_the_detector(arch):
    """BatchNorm folded into the convolutions (the detector does it at load) leaves the backbone's features, the
    proposal head's and the box head's outputs as they were, in float64, with BatchNorms that change their input."""
    import copy

    torch.manual_seed(0)
    model = torchvision.models.get_model(arch, weights=None, weights_backbone=None, num_classes=91).double().eval()
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms
    with torch.no_grad():
        for m in norms:  # fresh ones are identities
            m.running_mean.normal_(0, 0.1), m.running_var.uniform_(0.5, 2.0)
            m.weight.uniform_(0.5, 1.5), m.bias.normal_(0, 0.1)
    folded = fold_batch_norms(copy.deepcopy(model))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.rand(1, 3, 128, 160, dtype=torch.float64)
    rois = torch.rand(12, 256, 7, 7, dtype=torch.float64)
    with torch.no_grad():
        f_ref, f_got = model.backbone(x), folded.backbone(x)
        outs = [(f_ref[k], f_got[k]) for k in f_ref]
        levels = list(f_ref.values())
        (logits_ref, deltas_ref), (logits_got, deltas_got) = model.rpn.head(levels), folded.rpn.head(levels)
        outs += list(zip(logits_ref + deltas_ref, logits_got + deltas_got))
        box_in = rois if arch.endswith("_v2") else rois.flatten(1)[:, : model.roi_heads.box_head.fc6.in_features]
        outs.append((model.roi_heads.box_head(box_in), folded.roi_heads.box_head(box_in)))
    for a, b in outs:
        assert a.abs().max() > 0
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-9 * a.abs().max().item())


def test_detect_batch_runs_images_of_one_size_together_and_each_as_alone(random_weights, monkeypatch):
    """One model call per image size (up to MAX_BATCH images, or ``batch_size``), so no image is padded to another's
    size: every image gets exactly the boxes it gets alone, whatever the rest of the batch."""
    _, d = random_weights
    det = PersonDetector(d / "det.safetensors", arch=ARCH, score_threshold=0.0, max_people=5)
    calls = []
    forward = det.model.forward
    monkeypatch.setattr(det.model, "forward", lambda images: calls.append([tuple(im.shape) for im in images])
                        or forward(images))
    rng = np.random.default_rng(3)
    sizes = [(100, 140), (150, 90), (100, 140), (150, 90), (100, 140)]
    images = [rng.integers(0, 256, (*hw, 3), dtype=np.uint8) for hw in sizes]
    together = det.detect_batch(images)
    assert calls == [[(3, 100, 140)] * 3, [(3, 150, 90)] * 2]
    calls.clear()
    alone = [det(im) for im in images]
    for k, ((b1, s1), (b2, s2)) in enumerate(zip(together, alone)):
        assert len(b1) > 0
        np.testing.assert_array_equal(b1, b2, err_msg=str(k))
        np.testing.assert_array_equal(s1, s2, err_msg=str(k))
    calls.clear()
    det.detect_batch(images, batch_size=2)
    assert [len(c) for c in calls] == [2, 1, 2]
    calls.clear()
    det.MAX_BATCH = 2  # a long list is still split, at MAX_BATCH
    det.detect_batch(images)
    assert [len(c) for c in calls] == [2, 1, 2]
    assert det.detect_batch([]) == []
    with pytest.raises(ValueError, match="batch_size"):
        det.detect_batch(images, batch_size=0)


def test_select_applies_class_score_and_nms(random_weights):
    _, d = random_weights
    det = PersonDetector(d / "det.pth", arch=ARCH, score_threshold=0.5, nms_iou=0.5, max_people=3)
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 200, (60, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(20, 80, (60, 2))], axis=1).astype(np.float32)
    scores = rng.uniform(0, 1, 60).astype(np.float32)
    labels = rng.choice([1, 1, 1, 3, 18], 60)
    got_b, got_s = det.select(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(labels))
    ref_b, ref_s = ref_person_filter(boxes, scores, labels, 0.5, 0.5, 3)
    assert len(got_s) == 3
    np.testing.assert_allclose(got_b, ref_b)
    np.testing.assert_allclose(got_s, ref_s)
    empty_b, empty_s = det.select(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long))
    assert empty_b.shape == (0, 4) and empty_s.shape == (0,)


def test_detector_errors(random_weights, tmp_path, monkeypatch):
    _, d = random_weights
    det = PersonDetector(d / "det.pth", arch=ARCH)
    with pytest.raises(ValueError, match="RGB uint8"):
        det(np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match="RGB uint8"):
        det(np.zeros((10, 10, 3), np.float32))
    with pytest.raises(ValueError, match="RGB uint8"):
        det(torch.zeros(10, 10, 3))
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        PersonDetector(tmp_path / "missing.pth", arch=ARCH)
    with pytest.raises(ValueError, match="unknown detector arch"):
        PersonDetector(d / "det.pth", arch="resnet_not_a_detector")
    with pytest.raises(ValueError, match="do not fit"):
        PersonDetector(d / "det.pth", arch="ssdlite320_mobilenet_v3_large")
    for bad in ({"score_threshold": 1.5}, {"score_threshold": -0.1}, {"nms_iou": 0.0}, {"max_people": 0}):
        with pytest.raises(ValueError, match=f"out of range: .*{next(iter(bad))} {next(iter(bad.values()))}"):
            PersonDetector(d / "det.pth", arch=ARCH, **bad)

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    url = torchvision.models.get_model_weights(ARCH).DEFAULT.url
    with pytest.raises(ConnectionError, match="download") as info:
        PersonDetector(None, arch=ARCH)
    assert url in str(info.value) and "checkpoints" in str(info.value)


def test_pose_predictor_detects_on_the_upload_its_crops_use(random_weights, monkeypatch):
    """Our detector runs on the device copy the pose crops are cut from (one upload, one pinned staging per image on
    CUDA, and no blocking pageable copy); a user's detector callable gets the caller's array, as written for."""
    from opensapiens.inference import predictors, streams
    from opensapiens.inference.predictors import PosePredictor

    from conftest import make_official_state

    _, d = random_weights
    det = PersonDetector(d / "det.safetensors", arch=ARCH, score_threshold=0.0, max_people=2)
    seen, uploads = [], []
    real_detect, real_upload = det.detect_batch, streams.upload_images
    monkeypatch.setattr(det, "detect_batch", lambda images, **kw: seen.extend(type(im) for im in images)
                        or real_detect(images, **kw))
    monkeypatch.setattr(predictors, "upload_images", lambda images, device: uploads.append(
        [type(im) for im in images]) or real_upload(images, device))
    model, _ = make_official_state("pose", 17)
    predictor = PosePredictor(model, input_size=(64, 48), detector=det)
    image = np.random.default_rng(0).integers(0, 255, (120, 90, 3), dtype=np.uint8)
    res = predictor(image)
    assert seen == [torch.Tensor] and uploads == [[np.ndarray]]
    boxes, scores = real_detect([image])[0]  # the boxes it finds on the array itself
    assert len(boxes) > 0
    np.testing.assert_allclose(res.boxes, boxes, atol=1e-4)
    np.testing.assert_allclose(res.box_scores, scores, atol=1e-6)
    det.device = torch.device("cuda")  # a detector on another device than the pose model's: the caller's images
    assert not predictor.detector_takes_upload(None) and predictor.detector_sees_caller_images(None)
    det.device = torch.device("cpu")

    seen.clear(), uploads.clear()
    predictor.detector = lambda im: seen.append(type(im)) or (np.array([[5, 5, 80, 110]], np.float32),
                                                              np.ones(1, np.float32))
    assert predictor(image).boxes.tolist() == [[5, 5, 80, 110]]
    assert seen == [np.ndarray] and uploads == [[np.ndarray]]


def test_load_detections_list(tmp_path):
    dets = [
        {"image_id": 7, "bbox": [10, 20, 30, 40], "score": 0.9, "category_id": 1, "file_name": "val/000007.jpg"},
        {"image_id": 7, "bbox": [0.5, 1.5, 2, 3], "score": 0.3, "category_id": 1},
        {"image_id": 7, "bbox": [5, 5, 5, 5], "score": 0.99, "category_id": 2},  # not a person
        {"image_id": 8, "bbox": [1, 2, 3, 4], "score": 0.6, "category_id": 1},
        {"image_id": 9, "bbox": [1, 2, 3, 4], "score": 0.1, "category_id": 1},
    ]
    path = tmp_path / "dets.json"
    path.write_text(json.dumps(dets))
    out = load_detections(path, score_threshold=0.2)
    np.testing.assert_allclose(out[7]["boxes"], [[10, 20, 40, 60], [0.5, 1.5, 2.5, 4.5]])
    np.testing.assert_allclose(out[7]["scores"], [0.9, 0.3], rtol=1e-6)
    assert out[7]["boxes"].dtype == np.float32
    for key in ("val/000007.jpg", "000007.jpg", "000007"):
        assert out[key] is out[7]
    np.testing.assert_allclose(out[8]["boxes"], [[1, 2, 4, 6]])
    assert 9 not in out
    assert 9 in load_detections(path)


def test_load_detections_coco_annotations_and_errors(tmp_path):
    coco = {
        "images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}],
        "annotations": [
            {"image_id": 1, "bbox": [1, 1, 10, 20], "category_id": 1, "iscrowd": 0},
            {"image_id": 1, "bbox": [0, 0, 50, 50], "category_id": 1, "iscrowd": 1},
            {"image_id": 2, "bbox": [3, 4, 5, 6], "category_id": 1},
        ],
    }
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(coco))
    out = load_detections(path)
    np.testing.assert_allclose(out["a"]["boxes"], [[1, 1, 11, 21]])
    np.testing.assert_allclose(out["a.png"]["scores"], [1.0])
    np.testing.assert_allclose(out[2]["boxes"], [[3, 4, 8, 10]])

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"image_id": 1, "bbox": [1, 2]}]))
    with pytest.raises(ValueError, match="entry 0"):
        load_detections(bad)
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        load_detections(bad)
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42\xb5\xff\xfe")  # a video given as the detections
    with pytest.raises(ValueError, match="detections file .*bad.json: not a JSON file"):
        load_detections(bad)


def test_load_detections_takes_the_files_person_category(tmp_path):
    """An annotation file's person category is its own (here 2, named "person"); a detections list holding one
    category other than COCO's 1 is taken as that one; a list of several keeps COCO's 1."""
    coco = {"images": [{"id": 1, "file_name": "a.png"}],
            "categories": [{"id": 1, "name": "car"}, {"id": 2, "name": "person"}],
            "annotations": [{"image_id": 1, "bbox": [1, 1, 10, 20], "category_id": 2},
                            {"image_id": 1, "bbox": [5, 5, 5, 5], "category_id": 1}]}
    (tmp_path / "gt.json").write_text(json.dumps(coco))
    np.testing.assert_allclose(load_detections(tmp_path / "gt.json")["a"]["boxes"], [[1, 1, 11, 21]])
    np.testing.assert_allclose(load_detections(tmp_path / "gt.json", category_id=1)["a"]["boxes"], [[5, 5, 10, 10]])
    only = [{"image_id": 3, "bbox": [0, 0, 4, 4], "score": 0.5, "category_id": 7}]
    (tmp_path / "only.json").write_text(json.dumps(only))
    assert 3 in load_detections(tmp_path / "only.json")
    mixed = only + [{"image_id": 4, "bbox": [0, 0, 4, 4], "score": 0.5, "category_id": 1}]
    (tmp_path / "mixed.json").write_text(json.dumps(mixed))
    assert sorted(k for k in load_detections(tmp_path / "mixed.json") if isinstance(k, int)) == [4]
