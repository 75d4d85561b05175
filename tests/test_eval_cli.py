"""``opensapiens eval``: both modes end to end on tiny files, with answers known in closed form.

Mode 2 (checkpoint on a dataset folder) runs through ``evaluate_model`` with fake predictors that return the real
result dataclasses of ``opensapiens.inference.predictors``; the CLI's model loader is replaced by monkeypatching.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from opensapiens.cli import eval as eval_cli
from opensapiens.cli.main import main
from opensapiens.evaluation.runner import evaluate_model, evaluate_saved
from opensapiens.inference.results import DepthResult, NormalResult, PoseResult, SegResult
from opensapiens.metadata import keypoint_set

H, W, N = 32, 24, 3
GOLIATH = keypoint_set("goliath")


def strict_json(path):
    return json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))


def write_dataset(root, rng):
    """The synthetic-data layout with N images; image i carries its index in pixel (0, 0) for the fakes."""
    for d in ("images", "seg", "masks", "depths", "normals"):
        (root / d).mkdir(parents=True)
    images, anns, truth = [], [], []
    for i in range(N):
        name = f"s{i:03d}"
        img = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
        img[0, 0] = i
        mask = np.zeros((H, W), np.uint8)
        mask[4:28, 5:20] = 1
        seg = (rng.integers(1, 28, (H, W)) * mask).astype(np.uint8)
        depth = (rng.uniform(2.0, 3.0, (H, W)) * mask).astype(np.float32)
        normals = rng.normal(size=(H, W, 3))
        normals = (normals / np.linalg.norm(normals, axis=-1, keepdims=True) * mask[..., None]).astype(np.float32)
        Image.fromarray(img).save(root / "images" / f"{name}.png")
        Image.fromarray(seg).save(root / "seg" / f"{name}.png")
        Image.fromarray(mask * 7).save(root / "masks" / f"{name}.png")
        np.save(root / "depths" / f"{name}.npy", depth)
        np.save(root / "normals" / f"{name}.npy", normals)
        images.append({"id": i + 1, "file_name": f"{name}.png", "width": W, "height": H})
        people = []
        for j in range(2):
            xy = rng.uniform([2 + 10 * j, 2], [12 + 10 * j, 30], (308, 2))
            kp = np.concatenate([xy, np.full((308, 1), 2.0)], 1)
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 0, "num_keypoints": 308,
                         "bbox": [2.0 + 10 * j, 2.0, 10.0, 28.0], "area": 280.0, "keypoints": kp.ravel().tolist()})
            people.append(xy)
        truth.append({"seg": seg, "depth": depth, "normals": normals, "people": people})
    (root / "annotations.json").write_text(json.dumps({"images": images, "annotations": anns,
                                                       "categories": [{"id": 1, "name": "person"}]}))
    return truth


class FakePredictor:
    """Answers from the ground truth (found through the index in pixel (0, 0)), with a documented distortion."""

    def __init__(self, task, truth):
        self.task, self.truth = task, truth
        self.class_names = None

    def predict_batch(self, images, boxes=None):
        out = []
        for b, im in enumerate(images):
            t = self.truth[int(im[0, 0, 0])]
            if self.task == "pose":  # GT keypoints, left hand moved 50 px away
                kp = np.stack(t["people"]).astype(np.float32)
                kp[:, list(GOLIATH.groups["left_hand"])] += 50.0
                n = len(boxes[b])
                out.append(PoseResult(kp[:n], np.full((n, 308), 0.9, np.float32), boxes[b], np.ones(n), "goliath"))
            elif self.task == "seg":
                out.append(SegResult(t["seg"]))
            elif self.task == "depth":  # relative depth with another scale and shift
                out.append(DepthResult((0.5 * t["depth"] + 3.0).astype(np.float32)))
            else:
                out.append(NormalResult(t["normals"]))
        return out


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return root, write_dataset(root, np.random.default_rng(0))


def test_model_mode_pose_with_gt_boxes(dataset, tmp_path, monkeypatch):
    root, truth = dataset
    monkeypatch.setattr(eval_cli, "_load_predictor", lambda *a, **k: FakePredictor("pose", truth))
    out = tmp_path / "pose.json"
    assert main(["eval", "--task", "pose", "--checkpoint", "fake", "--data", str(root), "--out", str(out),
                 "--quiet"]) == 0
    r = strict_json(out)
    # one group moved out of reach: its AP is 0, the others perfect; whole-body OKS = 288/308 = 0.935 -> AP 0.9
    assert r["left_hand_AP"] == 0.0
    assert all(r[f"{g}_AP"] == pytest.approx(1.0) for g in ("body", "foot", "face", "right_hand"))
    assert r["AP"] == pytest.approx(0.9) and r["keypoint_set"] == "goliath" and r["num_gt"] == 2 * N
    assert r["protocol"]["boxes"].startswith("ground truth") and r["protocol"]["flip_test"] is True

    # scored in the 133 layout: GT and predictions converted by name; the 68 COCO-WB face points have no Goliath
    # counterpart, so no GT person has a labelled face point and face AP is undefined (null)
    r = evaluate_model("pose", FakePredictor("pose", truth), root, keypoints="wholebody")
    assert r["left_hand_AP"] == 0.0 and r["body_AP"] == pytest.approx(1.0) and np.isnan(r["face_AP"])


def test_a_person_category_other_than_1_is_matched(dataset, tmp_path):
    """Predictions carry the ground truth's person category (they had carried COCO's 1: AP 0 on a file whose person
    category is 2)."""
    import shutil

    root, truth = dataset
    moved = tmp_path / "data"
    shutil.copytree(root, moved)
    gt = json.loads((moved / "annotations.json").read_text())
    gt["categories"] = [{"id": 2, "name": "person"}]
    for a in gt["annotations"]:
        a["category_id"] = 2
    (moved / "annotations.json").write_text(json.dumps(gt))
    r = evaluate_model("pose", FakePredictor("pose", truth), moved)
    assert r["AP"] == pytest.approx(0.9) and r["body_AP"] == pytest.approx(1.0)


def test_the_training_evaluator_labels_its_results_with_the_ground_truths_person_category():
    import torch

    from opensapiens.tasks.pose import PoseEvaluator

    gt = {"images": [{"id": 1}], "categories": [{"id": 4, "name": "person"}], "annotations": []}
    evaluator = PoseEvaluator(gt, "coco", (64, 48))
    batch = {"image_id": torch.tensor([1]), "center": torch.tensor([[24.0, 32.0]]),
             "scale": torch.tensor([[48.0, 64.0]])}
    evaluator.update(torch.rand(1, 17, 16, 12), batch)
    assert [r["category_id"] for r in evaluator.state()] == [4]


def test_the_person_category_is_the_only_one_the_one_named_person_or_the_one_used():
    from opensapiens.evaluation.pose import person_category

    assert person_category({"categories": [{"id": 7, "name": "human"}], "annotations": []}) == 7
    assert person_category({"categories": [{"id": 1, "name": "car"}, {"id": 5, "name": "Person"}]}) == 5
    assert person_category({"annotations": [{"category_id": 3}, {"category_id": 3}]}) == 3
    assert person_category({"annotations": []}) == 1


@pytest.mark.parametrize("task", ["seg", "depth", "normal"])
def test_model_mode_dense(dataset, task):
    root, truth = dataset
    r = evaluate_model(task, FakePredictor(task, truth), root, batch_images=2)
    assert r["skipped"] == [] and r["num_images"] == N
    if task == "seg":
        assert r["mIoU"] == 1.0 and r["num_classes_present"] == 28
    elif task == "depth":  # an exact affine copy: least squares recovers it
        assert r["rmse"] == pytest.approx(0.0, abs=1e-5) and r["delta1"] == 1.0
    else:
        assert r["mean"] == pytest.approx(0.0, abs=1e-3) and r["within_11.25"] == 1.0
        assert r["num_pixels"] == N * 24 * 15


def test_model_mode_seg_refuses_a_class_list_the_model_does_not_predict(dataset):
    root, truth = dataset
    predictor = FakePredictor("seg", truth)
    predictor.class_names = tuple(f"part_{i}" for i in range(28))
    assert evaluate_model("seg", predictor, root, classes="28")["mIoU"] == 1.0
    with pytest.raises(ValueError, match="--classes lists 19 classes; this model predicts 28"):
        evaluate_model("seg", predictor, root, classes="face")


def test_saved_mode_all_tasks(dataset, tmp_path, capsys):
    root, truth = dataset
    # seg: one prediction missing (reported as skipped), one pixel block wrong
    (tmp_path / "seg").mkdir()
    for i, t in enumerate(truth[:2]):
        pred = t["seg"].copy()
        if i == 1:
            pred[0:4, :] = 5  # background pixels called class 5
        Image.fromarray(pred).save(tmp_path / "seg" / f"s{i:03d}.png")
    out = tmp_path / "seg.json"
    assert main(["eval", "--task", "seg", "--pred", str(tmp_path / "seg"), "--gt", str(root / "seg"),
                 "--out", str(out), "--quiet"]) == 0
    r = strict_json(out)
    gt_bg = sum(int((t["seg"] == 0).sum()) for t in truth[:2])
    assert r["IoU"]["Background"] == pytest.approx((gt_bg - 4 * W) / gt_bg)
    assert r["num_images"] == 2 and [s["name"] for s in r["skipped"]] == ["s002"]
    assert "mIoU" in capsys.readouterr().out

    # depth with explicit masks; normals with the GT's zero pixels as background
    for task, key in (("depth", "depth"), ("normal", "normals")):
        (tmp_path / task).mkdir()
        for i, t in enumerate(truth):
            np.save(tmp_path / task / f"s{i:03d}.npy", 2.0 * t[key] + 1.0 if task == "depth" else t[key])
    out = tmp_path / "depth.json"
    assert main(["eval", "--task", "depth", "--pred", str(tmp_path / "depth"), "--gt", str(root / "depths"),
                 "--masks", str(root / "masks"), "--align", "minmax", "--out", str(out), "--quiet"]) == 0
    r = strict_json(out)
    assert r["rmse"] == pytest.approx(0.0, abs=1e-5) and r["delta1"] == 1.0 and r["protocol"]["align"] == "minmax"
    out = tmp_path / "normal.json"
    assert main(["eval", "--task", "normal", "--pred", str(tmp_path / "normal"), "--gt", str(root / "normals"),
                 "--out", str(out), "--quiet"]) == 0
    assert strict_json(out)["mean"] == pytest.approx(0.0, abs=1e-3)

    # pose: results JSON of perfect predictions
    gt = json.loads((root / "annotations.json").read_text())
    res = [{"image_id": a["image_id"], "category_id": 1, "keypoints": a["keypoints"], "score": 1.0}
           for a in gt["annotations"]]
    (tmp_path / "res.json").write_text(json.dumps(res))
    out = tmp_path / "pose.json"
    assert main(["eval", "--task", "pose", "--pred", str(tmp_path / "res.json"), "--gt",
                 str(root / "annotations.json"), "--out", str(out)]) == 0
    r = strict_json(out)
    assert r["AP"] == pytest.approx(1.0) and r["face_AP"] == pytest.approx(1.0) and r["keypoint_set"] == "goliath"


def test_bad_invocations(tmp_path, capsys, monkeypatch):
    assert main(["eval", "--task", "seg", "--pred", str(tmp_path)]) == 2
    assert "either --pred and --gt" in capsys.readouterr().err
    assert main(["eval", "--task", "depth", "--pred", str(tmp_path), "--gt", str(tmp_path / "nope")]) == 2
    assert "not found" in capsys.readouterr().err
    video, folder = tmp_path / "clip.mp4", tmp_path / "labels"
    video.write_bytes(b"\x00\x00\x00\x18ftypmp42\xb5\xff\xfe")
    folder.mkdir()
    for args, told in ((["pose", "--pred", video, "--gt", video], f"ground truth file {video} is not a JSON file"),
                       (["pose", "--pred", folder, "--gt", folder], f"ground truth {folder} is a folder; pose takes"),
                       (["seg", "--pred", video, "--gt", folder], f"prediction {video} is a file; seg takes a folder")):
        assert main(["eval", "--task", *map(str, args)]) == 2
        assert told in capsys.readouterr().err

    def no_model(*a, **k):
        raise AssertionError("the model (maybe a download) was loaded for a dataset that is not there")

    monkeypatch.setattr(eval_cli, "_load_predictor", no_model)
    (tmp_path / "data" / "images").mkdir(parents=True)
    for task, missing in (("pose", "no images/"), ("depth", "no depths/")):
        data = tmp_path / ("data" if task == "depth" else "nope")
        assert main(["eval", "--task", task, "--checkpoint", "sapiens-pose-308-0.3b", "--data", str(data)]) == 2
        assert missing in capsys.readouterr().err


def test_saved_pose_limit_scores_the_first_images_only(dataset, tmp_path):
    """--limit N: the first N GT images, their people and the results for them. Image 1 is predicted exactly, the
    others far off: limited to image 1, AP is 1 over its 2 people; all images give less."""
    root, truth = dataset
    gt = json.loads((root / "annotations.json").read_text())
    res = []
    for a in gt["annotations"]:
        kp = np.asarray(a["keypoints"]).reshape(308, 3)
        kp[:, :2] += 0.0 if a["image_id"] == 1 else 500.0
        res.append({"image_id": a["image_id"], "category_id": 1, "keypoints": kp.ravel().tolist(), "score": 1.0})
    (tmp_path / "res.json").write_text(json.dumps(res))
    r = evaluate_saved("pose", tmp_path / "res.json", root / "annotations.json", limit=1)
    assert r["AP"] == pytest.approx(1.0) and r["num_gt"] == 2 and r["num_predictions"] == 2
    r = evaluate_saved("pose", tmp_path / "res.json", root / "annotations.json")
    assert r["AP"] < 0.5 and r["num_gt"] == 2 * N and r["num_predictions"] == 2 * N


class TaggedJpegPredictor(FakePredictor):
    """FakePredictor for JPEG images: the index is the 8 x 8 corner block's level / 40 (JPEG keeps a flat block)."""

    def predict_batch(self, images, boxes=None):
        tagged = []
        for im in images:
            im = im.copy()
            im[0, 0, 0] = round(float(im[:8, :8, 0].mean()) / 40)
            tagged.append(im)
        return super().predict_batch(tagged, boxes)


def test_model_mode_dense_reads_jpg_images_and_refuses_to_score_nothing(dataset, tmp_path, monkeypatch, capsys):
    import shutil

    root, truth = dataset
    data = tmp_path / "jpg"
    shutil.copytree(root, data)
    for i, f in enumerate(sorted((data / "images").glob("*.png"))):
        img = np.asarray(Image.open(f)).copy()
        img[:8, :8] = 40 * i
        Image.fromarray(img).save(f.with_suffix(".jpg"), quality=95)
        f.unlink()
    r = evaluate_model("seg", TaggedJpegPredictor("seg", truth), data)
    assert r["mIoU"] == 1.0 and r["num_images"] == N and r["skipped"] == []

    for f in (data / "images").iterdir():  # no images at all: an error before the model loads
        f.unlink()
    with pytest.raises(FileNotFoundError, match="no images"):
        evaluate_model("seg", TaggedJpegPredictor("seg", truth), data)
    monkeypatch.setattr(eval_cli, "_load_predictor", lambda *a, **k: pytest.fail("model loaded for no images"))
    assert main(["eval", "--task", "depth", "--checkpoint", "fake", "--data", str(data), "--quiet"]) == 2
    assert "no images" in capsys.readouterr().err

    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(data / "images" / "unlabelled.png")  # no GT for any image
    with pytest.raises(ValueError, match="no sample could be scored .1 skipped; first: unlabelled: no ground truth"):
        evaluate_model("seg", TaggedJpegPredictor("seg", truth), data)


# ------------------------------------------------------------------------ `opensapiens predict`'s outputs, as they are


def predict(root, task, out, *extra):
    """The real ``opensapiens predict`` (bundled sapiens-nano, small input) over the dataset's images."""
    assert main(["predict", str(root / "images"), "--task", task, "--checkpoint", "sapiens-nano", "--out", str(out),
                 "--input-size", "64x48", "--device", "cpu", "--no-vis", "--batch-size", "4", *extra]) == 0


def eval_json(tmp_path, *args):
    out = tmp_path / "metrics.json"
    assert main(["eval", *args, "--out", str(out), "--quiet"]) == 0
    r = strict_json(out)
    r.pop("protocol")  # names the sources, which differ
    return r


@pytest.mark.parametrize("task", ["seg", "depth", "normal"])
def test_saved_mode_reads_predict_dense_outputs(dataset, tmp_path, task):
    """predict writes STEM_seg.png / STEM_depth.npy / STEM_normal.npy; eval pairs them with GT STEM.png / STEM.npy
    and scores them as the same maps saved under the GT's names."""
    import shutil

    root, _ = dataset
    out = tmp_path / "P"
    predict(root, task, out)
    gt = root / {"seg": "seg", "depth": "depths", "normal": "normals"}[task]
    r = eval_json(tmp_path, "--task", task, "--pred", str(out), "--gt", str(gt))
    assert r["skipped"] == [] and r["num_images"] == N

    suffix = {"seg": "_seg.png", "depth": "_depth.npy", "normal": "_normal.npy"}[task]
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    for f in out.glob(f"*{suffix}"):
        shutil.copy(f, renamed / (f.name[: -len(suffix)] + suffix[-4:]))
    assert len(list(renamed.iterdir())) == N
    assert eval_json(tmp_path, "--task", task, "--pred", str(renamed), "--gt", str(gt)) == r


def test_saved_mode_reads_predict_pose_outputs(dataset, tmp_path, capsys):
    """predict writes one STEM.json per image (people with image_id = the stem); eval maps each stem to the GT image
    of that file name and scores them as the same people in a COCO results list with the GT ids."""
    root, _ = dataset
    out = tmp_path / "P"
    predict(root, "pose", out, "--detections", str(root / "annotations.json"))
    docs = {f.stem: json.loads(f.read_text()) for f in sorted(out.glob("*.json"))}
    assert sorted(docs) == [f"s{i:03d}" for i in range(N)]

    # the synthetic GT (ids 1..N): the folder, and the same people as a COCO results list with the GT ids
    gt_file = root / "annotations.json"
    r = eval_json(tmp_path, "--task", "pose", "--pred", str(out), "--gt", str(gt_file))
    assert r["num_predictions"] == 2 * N and r["num_gt"] == 2 * N
    (out / "seg_classes.json").write_text('{"class_names": ["a", "b"]}')  # a seg job's record in the same folder
    assert eval_json(tmp_path, "--task", "pose", "--pred", str(out), "--gt", str(gt_file)) == r
    (out / "seg_classes.json").unlink()
    ids = {Path(im["file_name"]).stem: im["id"] for im in json.loads(gt_file.read_text())["images"]}
    res = [{**p, "image_id": ids[stem]} for stem, d in docs.items() for p in d["people"]]
    (tmp_path / "res.json").write_text(json.dumps(res))
    assert eval_json(tmp_path, "--task", "pose", "--pred", str(tmp_path / "res.json"), "--gt", str(gt_file)) == r

    # a GT made of the predicted people, with ids in another order and file names in a folder: only the right
    # pairing scores AP 1
    gt = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "person"}]}
    for i, (stem, d) in enumerate(docs.items()):
        gid = 10 * (N - i)
        gt["images"].append({"id": gid, "file_name": f"images/{stem}.png", "width": W, "height": H})
        for p in d["people"]:
            kp = np.asarray(p["keypoints"]).reshape(-1, 3)
            kp[:, 2] = 2
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": gid, "category_id": 1,
                                      "iscrowd": 0, "bbox": p["bbox"], "area": p["bbox"][2] * p["bbox"][3],
                                      "keypoints": kp.ravel().tolist(), "num_keypoints": len(kp)})
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    r = eval_json(tmp_path, "--task", "pose", "--pred", str(out), "--gt", str(tmp_path / "gt.json"))
    assert r["AP"] == pytest.approx(1.0) and r["num_predictions"] == 2 * N
    one = evaluate_saved("pose", out / "s001.json", tmp_path / "gt.json")  # a single predict file
    assert one["num_predictions"] == 2 and one["AP"] < 1.0

    # the same people as a COCO-17 GT, each keypoint taken by name from the 308: predict's files are converted to it
    from opensapiens.metadata import keypoint_set

    goliath, coco = keypoint_set("goliath"), keypoint_set("coco")
    by_name = [goliath.names.index(n) for n in coco.names]
    gt17 = {**gt, "annotations": []}
    for ann in gt["annotations"]:
        kp = np.asarray(ann["keypoints"]).reshape(-1, 3)[by_name]
        gt17["annotations"].append({**ann, "keypoints": kp.ravel().tolist(), "num_keypoints": len(kp)})
    (tmp_path / "gt17.json").write_text(json.dumps(gt17))
    r17 = evaluate_saved("pose", out, tmp_path / "gt17.json")
    assert r17["AP"] == pytest.approx(1.0) and r17["protocol"]["keypoints"] == "coco"
    # ... and the 308 GT scored as COCO-17 (--keypoints coco): converted by name too, the same scores
    as_17 = evaluate_saved("pose", out, tmp_path / "gt.json", keypoints="coco")
    assert json.dumps(as_17, sort_keys=True) == json.dumps(r17, sort_keys=True)  # (NaN != NaN in a dict compare)

    # a predict file of another picture size than its GT image: an error naming it
    resized = {**gt, "images": [{**im, "width": W + 1} for im in gt["images"]]}
    (tmp_path / "gt_resized.json").write_text(json.dumps(resized))
    with pytest.raises(ValueError, match=r"s00\d.json: predicted on a .* not the same picture"):
        evaluate_saved("pose", out, tmp_path / "gt_resized.json")

    # a predict file for an image the GT does not have: an error naming it
    (out / "stranger.json").write_text(json.dumps({**docs["s000"], "image": {"file_name": "stranger"}}))
    assert main(["eval", "--task", "pose", "--pred", str(out), "--gt", str(tmp_path / "gt.json"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "stranger.json" in err and "no ground truth image" in err


def test_the_gt_layout_is_read_from_an_annotation_with_keypoints_not_a_crowd_region_without():
    from opensapiens.evaluation.runner import infer_keypoint_set

    gt = {"images": [], "categories": [], "annotations": [
        {"id": 1, "iscrowd": 1, "bbox": [0, 0, 5, 5]}, {"id": 2, "keypoints": [0] * 51, "bbox": [0, 0, 5, 5]}]}
    assert infer_keypoint_set(gt) == "coco"
    with pytest.raises(ValueError, match="no annotation with keypoints"):
        infer_keypoint_set({**gt, "annotations": gt["annotations"][:1]})


def test_a_built_in_layout_model_on_data_in_a_set_of_its_own_says_which_is_which(tmp_path):
    """The hint for saved predictions (run the fine-tune with --checkpoint) told a user who had just done that."""
    from test_data_toy import write_toy_dataset

    from opensapiens.evaluation.runner import evaluate_model
    from opensapiens.inference.predictors import PosePredictor

    from conftest import make_official_state

    data = write_toy_dataset(tmp_path / "val", 2, (128, 96))  # 5 keypoints of its own
    model, _ = make_official_state("pose", 17)
    with pytest.raises(ValueError, match="have 5 points; expected 17, 133 or 308 .this model predicts the 17 coco"):
        evaluate_model("pose", PosePredictor(model, input_size=(64, 48)), data, progress=False)


def test_predict_then_eval_on_ground_truth_whose_person_category_is_not_1(dataset, tmp_path):
    """The documented flow (predict --detections GT, then eval --pred OUT --gt GT) on a file whose person category
    is 2: the boxes are read (they were all dropped as "not a person") and predict's people, which carry COCO's 1,
    are scored as the GT's persons (AP was 0). predict --openpose's files in the folder are not predictions."""
    root, _ = dataset
    gt = json.loads((root / "annotations.json").read_text())
    gt2 = {**gt, "categories": [{"id": 2, "name": "person"}],
           "annotations": [{**a, "category_id": 2} for a in gt["annotations"]]}
    (tmp_path / "gt2.json").write_text(json.dumps(gt2))
    out = tmp_path / "P"
    predict(root, "pose", out, "--detections", str(tmp_path / "gt2.json"), "--openpose")
    assert len(list(out.glob("*_openpose.json"))) == N
    # a category-2 GT made of the predicted people: scored right, AP 1
    ids = {Path(im["file_name"]).stem: im["id"] for im in gt["images"]}
    truth = {**gt2, "annotations": []}
    for f in sorted(out.glob("s???.json")):
        for person in json.loads(f.read_text())["people"]:
            kp = np.asarray(person["keypoints"]).reshape(-1, 3)
            kp[:, 2] = 2
            truth["annotations"].append({"id": len(truth["annotations"]) + 1, "image_id": ids[f.stem],
                                         "category_id": 2, "iscrowd": 0, "bbox": person["bbox"],
                                         "area": person["bbox"][2] * person["bbox"][3],
                                         "keypoints": kp.ravel().tolist()})
    assert len(truth["annotations"]) == 2 * N  # every GT box was read as a person
    (tmp_path / "truth.json").write_text(json.dumps(truth))
    r = eval_json(tmp_path, "--task", "pose", "--pred", str(out), "--gt", str(tmp_path / "truth.json"))
    assert r["AP"] == pytest.approx(1.0) and r["num_predictions"] == 2 * N


def test_eval_refuses_to_score_no_person_and_a_limit_below_one(dataset, tmp_path, capsys):
    root, _ = dataset
    gt = json.loads((root / "annotations.json").read_text())
    unlabelled = {**gt, "annotations": [{**a, "keypoints": [0.0] * 3 * 308} for a in gt["annotations"]]}
    (tmp_path / "gt.json").write_text(json.dumps(unlabelled))
    (tmp_path / "res.json").write_text("[]")
    assert main(["eval", "--task", "pose", "--pred", str(tmp_path / "res.json"), "--gt", str(tmp_path / "gt.json"),
                 "--quiet"]) == 2
    assert "no ground truth person with a labelled keypoint" in capsys.readouterr().err
    for limit in ("0", "-1"):
        with pytest.raises(SystemExit) as info:
            main(["eval", "--task", "pose", "--pred", str(tmp_path / "res.json"), "--gt",
                  str(root / "annotations.json"), "--limit", limit])
        assert info.value.code == 2 and "--limit" in capsys.readouterr().err
