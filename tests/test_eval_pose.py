"""OKS AP/AR: equality with pycocotools' own COCOeval, sigma wiring and group splits on cases with a known AP."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval, Params

from opensapiens.evaluation import evaluate_keypoints
from opensapiens.metadata import keypoint_set

STATS = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")
THRESHOLDS = np.linspace(0.5, 0.95, 10)


def pycocotools_stats(gt: dict, results: list[dict], sigmas=None) -> np.ndarray:
    """The reference: pycocotools used directly, as its README shows (-1 mapped to NaN)."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(gt)
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(copy.deepcopy(results)), "keypoints")
        if sigmas is not None:
            ev.params.kpt_oks_sigmas = np.asarray(sigmas)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.where(ev.stats == -1, np.nan, ev.stats)


def person(rng, k: int, box=(100.0, 80.0, 200.0, 300.0), p_unlabelled=0.0):
    """(K, 3) keypoints inside ``box`` with visibility 1/2 (0 with probability p_unlabelled)."""
    x, y, w, h = box
    xy = rng.uniform([x, y], [x + w, y + h], size=(k, 2))
    v = rng.choice([1, 2], size=k).astype(float)
    v[rng.random(k) < p_unlabelled] = 0
    xy[v == 0] = 0
    return np.concatenate([xy, v[:, None]], 1)


def gt_dict(people: list[list[np.ndarray]], boxes=None, crowd=()) -> dict:
    """COCO GT from per-image lists of (K, 3) keypoints; area = 0.6 * box area as in real COCO files."""
    images, anns = [], []
    for i, ppl in enumerate(people):
        images.append({"id": i + 1, "width": 640, "height": 480, "file_name": f"{i}.png"})
        for j, kp in enumerate(ppl):
            box = list(boxes[i][j]) if boxes else [100.0, 80.0, 200.0, 300.0]
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": 1, "bbox": box,
                         "area": 0.6 * box[2] * box[3], "iscrowd": int((i, j) in crowd),
                         "num_keypoints": int((kp[:, 2] > 0).sum()), "keypoints": kp.ravel().tolist()})
    return {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "person"}]}


def result(image_id: int, xy: np.ndarray, score: float) -> dict:
    kp = np.concatenate([xy, np.full((len(xy), 1), 0.9)], 1)
    return {"image_id": image_id, "category_id": 1, "keypoints": kp.ravel().tolist(), "score": score}


def shift_for_oks(sigmas: np.ndarray, area: float, oks: float) -> np.ndarray:
    """Per-keypoint displacement d with exp(-d^2 / (2 * area * (2 sigma)^2)) = oks (COCO's OKS definition)."""
    return np.sqrt(-np.log(oks) * 2.0 * area * (2.0 * sigmas) ** 2)


def test_equals_pycocotools_on_random_coco17_data():
    rng = np.random.default_rng(0)
    people, boxes, results = [], [], []
    for i in range(6):
        ppl, bxs = [], []
        for _ in range(rng.integers(1, 4)):
            x, y = rng.uniform(0, 300, 2)
            w, h = rng.uniform(20, 200, 2)  # small and large people: exercises the medium/large ranges
            ppl.append(person(rng, 17, (x, y, w, h), p_unlabelled=0.3))
            bxs.append((x, y, w, h))
        ppl[0][:, 2] = 0 if i == 2 else ppl[0][:, 2]  # a person with no labelled keypoint (ignored)
        people.append(ppl)
        boxes.append(bxs)
        for kp, (_, _, w, h) in zip(ppl, bxs):
            if rng.random() < 0.85:  # some people are missed
                noise = rng.normal(0, 0.04 * math.sqrt(w * h), (17, 2))
                results.append(result(i + 1, kp[:, :2] + noise, float(rng.random())))
        results.append(result(i + 1, rng.uniform(0, 400, (17, 2)), float(rng.random()) * 0.5))  # false positive
    gt = gt_dict(people, boxes, crowd={(4, 0)})
    ours = evaluate_keypoints(gt, results, "coco")
    ref = pycocotools_stats(gt, results)  # pycocotools' default sigmas are the COCO-17 ones
    np.testing.assert_allclose([ours[s] for s in STATS], ref, rtol=0, atol=1e-12, equal_nan=True)
    assert 0.2 < ours["AP"] < 0.95  # not a degenerate case
    assert ours["nonfinite_pred"] == 0 and ours["num_predictions"] == len(results)


@pytest.mark.parametrize("name", ["wholebody", "goliath"])
def test_whole_body_equals_pycocotools_with_all_sigmas(name):
    ks = keypoint_set(name)
    k = ks.num_keypoints
    rng = np.random.default_rng(1)
    people = [[person(rng, k, p_unlabelled=0.2) for _ in range(2)] for _ in range(3)]
    results = [result(i + 1, kp[:, :2] + rng.normal(0, 3.0, (k, 2)), float(rng.random()))
               for i, ppl in enumerate(people) for kp in ppl]
    gt = gt_dict(people)
    ours = evaluate_keypoints(gt, results, name)
    ref = pycocotools_stats(gt, results, sigmas=ks.sigmas)
    np.testing.assert_allclose([ours[s] for s in STATS], ref, atol=1e-12, equal_nan=True)


def cut(gt: dict, results: list[dict], idx) -> tuple[dict, list[dict]]:
    """GT and results reduced to the keypoints ``idx`` (in that order), num_keypoints recounted."""
    gt = copy.deepcopy(gt)
    for a in gt["annotations"]:
        kp = np.asarray(a["keypoints"]).reshape(-1, 3)[idx]
        a["keypoints"], a["num_keypoints"] = kp.ravel().tolist(), int((kp[:, 2] > 0).sum())
    results = [{**r, "keypoints": np.asarray(r["keypoints"]).reshape(-1, 3)[idx].ravel().tolist()} for r in results]
    return gt, results


@pytest.mark.parametrize("name", ["wholebody", "goliath"])
def test_groups_equal_pycocotools_on_cut_data(name):
    ks = keypoint_set(name)
    k = ks.num_keypoints
    rng = np.random.default_rng(6)
    people = [[person(rng, k, p_unlabelled=0.3) for _ in range(3)] for _ in range(4)]
    gt = gt_dict(people)
    # noise of ~0.5 OKS standard deviations per keypoint: every group lands at an intermediate, sigma-sensitive AP
    std = 0.5 * 2 * np.asarray(ks.sigmas)[:, None] * math.sqrt(gt["annotations"][0]["area"])
    results = [result(i + 1, kp[:, :2] + rng.normal(0, 1, (k, 2)) * std, float(rng.random()))
               for i, ppl in enumerate(people) for kp in ppl]
    ours = evaluate_keypoints(gt, results, name)
    aps = []
    for g in ("body", "foot", "face", "left_hand", "right_hand"):
        idx = list(ks.groups[g])
        ref = pycocotools_stats(*cut(gt, results, idx), sigmas=np.asarray(ks.sigmas)[idx])
        np.testing.assert_allclose([ours[f"{g}_{s}"] for s in STATS], ref, atol=1e-12, equal_nan=True, err_msg=g)
        aps.append(ours[f"{g}_AP"])
    assert len(set(aps)) == 5 and all(0.05 < a < 0.99 for a in aps)  # sensitive: the groups score differently


def test_sigma_anchors():
    """The body sigmas of every layout are pycocotools' own COCO-17 defaults; Goliath's face sigmas are 0.010."""
    coco_default = Params(iouType="keypoints").kpt_oks_sigmas
    goliath = keypoint_set("goliath")
    for ks, body in ((keypoint_set("coco"), range(17)), (keypoint_set("wholebody"), range(17)),
                     (goliath, goliath.groups["body"])):
        np.testing.assert_allclose(np.asarray(ks.sigmas)[list(body)], coco_default, atol=1e-12)
    np.testing.assert_allclose(np.asarray(goliath.sigmas)[list(goliath.groups["face"])], 0.010)
    assert {g: len(v) for g, v in goliath.groups.items() if g != "extra"} == {
        "body": 17, "foot": 6, "face": 238, "left_hand": 20, "right_hand": 20}


@pytest.mark.parametrize("name", ["coco", "wholebody", "goliath"])
def test_perfect_predictions_score_one(name):
    k = keypoint_set(name).num_keypoints
    rng = np.random.default_rng(2)
    people = [[person(rng, k), person(rng, k, (300, 50, 150, 250))] for _ in range(2)]
    results = [result(i + 1, kp[:, :2], 0.9) for i, ppl in enumerate(people) for kp in ppl]
    out = evaluate_keypoints(gt_dict(people), results, name)
    aps = {key: v for key, v in out.items() if key.endswith("_AP") or key == "AP"}
    assert len(aps) == (1 if name == "coco" else 6)
    assert all(v == pytest.approx(1.0) for v in aps.values()), aps


@pytest.mark.parametrize("name, shifted, other", [("coco", None, None), ("wholebody", "face", "foot"),
                                                  ("goliath", "body", "face")])
def test_known_oks_per_group(name, shifted, other):
    """One person, one prediction: AP at each threshold is 1 iff OKS >= threshold, so AP = #{t <= OKS} / 10.

    The shifted group gets OKS 0.72 (AP 0.5) only if that group's own sigmas are used, in its own order."""
    ks = keypoint_set(name)
    k = ks.num_keypoints
    rng = np.random.default_rng(3)
    kp = person(rng, k)
    kp[:, 2] = 2
    gt = gt_dict([[kp]])
    area = gt["annotations"][0]["area"]
    idx = np.asarray(ks.groups[shifted] if shifted else np.arange(k))
    xy = kp[:, :2].copy()
    d = shift_for_oks(np.asarray(ks.sigmas)[idx], area, 0.72)
    angle = rng.uniform(0, 2 * np.pi, len(idx))
    xy[idx] += d[:, None] * np.stack([np.cos(angle), np.sin(angle)], 1)
    out = evaluate_keypoints(gt, [result(1, xy, 0.8)], name)
    whole_oks = (0.72 * len(idx) + (k - len(idx))) / k
    assert out["AP"] == pytest.approx(np.mean(whole_oks + 1e-12 >= THRESHOLDS))
    if shifted:
        assert out[f"{shifted}_AP"] == pytest.approx(0.5)
        assert out[f"{other}_AP"] == pytest.approx(1.0)
    else:
        assert out["AP"] == pytest.approx(0.5)

    if name == "goliath":  # also move the left hand far away: it drops to 0, the face stays perfect
        xy[list(ks.groups["left_hand"])] += 500.0
        out = evaluate_keypoints(gt, [result(1, xy, 0.8)], name)
        assert out["left_hand_AP"] == 0.0 and out["body_AP"] == pytest.approx(0.5)
        assert out["face_AP"] == pytest.approx(1.0)
        whole_oks = (0.72 * 17 + 0.0 * 20 + (308 - 37)) / 308
        assert out["AP"] == pytest.approx(np.mean(whole_oks >= THRESHOLDS))  # 0.9196 -> 9 of 10 thresholds


def test_nonfinite_keypoints_are_reported_and_score_zero():
    rng = np.random.default_rng(4)
    kp = person(rng, 17)
    kp[:, 2] = 2
    gt = gt_dict([[kp]])
    xy = kp[:, :2].copy()
    xy[3, 0] = np.nan
    res = [result(1, xy, 0.8)]
    out = evaluate_keypoints(gt, res, "coco")
    assert out["nonfinite_pred"] == 1
    assert out["AP"] == pytest.approx(np.mean(THRESHOLDS <= 16 / 17))  # the NaN keypoint's OKS term is 0
    # Raw pycocotools would let the NaN OKS match at every threshold (AP 1.0): the reason we intervene.
    assert pycocotools_stats(gt, res)[0] == pytest.approx(1.0)

    all_nan = [result(1, np.full((17, 2), np.inf), 0.8)]
    out = evaluate_keypoints(gt, all_nan, "coco")
    assert out["nonfinite_pred"] == 17 and out["AP"] == 0.0 and out["AR"] == 0.0

    # A NaN instance score ranks last: the good prediction (score 0.1) keeps AP 1, the NaN-scored one is a miss.
    bad = result(1, kp[:, :2] + 300, 0.0)
    bad["score"] = float("nan")
    out = evaluate_keypoints(gt, [result(1, kp[:, :2], 0.1), bad], "coco")
    assert out["nonfinite_scores"] == 1 and out["AP"] == pytest.approx(1.0)


def test_wholebody_split_format_and_errors():
    ks = keypoint_set("wholebody")
    rng = np.random.default_rng(5)
    people = [[person(rng, 133, p_unlabelled=0.2)]]
    gt = gt_dict(people)
    res = [result(1, people[0][0][:, :2] + rng.normal(0, 2.0, (133, 2)), 0.7)]
    split = copy.deepcopy(gt)
    for a in split["annotations"]:  # the COCO-WholeBody file layout: five fields of [x, y, v]
        kp = np.asarray(a.pop("keypoints"))
        cuts = np.cumsum([len(ks.groups[g]) * 3 for g in ("body", "foot", "face", "left_hand")])
        body, foot, face, lh, rh = np.split(kp, cuts)
        a.update(keypoints=body.tolist(), foot_kpts=foot.tolist(), face_kpts=face.tolist(),
                 lefthand_kpts=lh.tolist(), righthand_kpts=rh.tolist())
    a, b = evaluate_keypoints(split, res, "wholebody"), evaluate_keypoints(gt, res, "wholebody")
    assert a.keys() == b.keys()
    assert all(a[key] == b[key] or (a[key] != a[key] and b[key] != b[key]) for key in a)  # NaN == NaN here

    empty = evaluate_keypoints(gt, [], "wholebody")
    assert empty["AP"] == 0.0 and empty["AR"] == 0.0
    with pytest.raises(ValueError, match="expected 51"):
        evaluate_keypoints(gt, res, "coco")
    with pytest.raises(ValueError, match="image_id"):
        evaluate_keypoints(gt, [{**res[0], "image_id": 99}], "wholebody")
    no_area = copy.deepcopy(gt)
    del no_area["annotations"][0]["area"]
    with pytest.raises(ValueError, match="area"):
        evaluate_keypoints(no_area, res, "wholebody")


@pytest.mark.parametrize("field,value", [("area", float("nan")), ("area", float("inf")), ("area", -1.0),
                                         ("area", None), ("area", "20000"), ("bbox", [0, 0, float("nan"), 5]),
                                         ("bbox", [0, 0, 5])])
def test_a_ground_truth_area_or_box_that_is_not_finite_numbers_is_refused(field, value):
    """OKS divides by the GT area: a NaN, infinite or negative one makes every prediction a match (OKS NaN or >= 1),
    so AP 1 for anything. Such a file is an error naming the annotation, not a score."""
    rng = np.random.default_rng(2)
    gt = gt_dict([[person(rng, 17)]])
    far = [result(1, np.full((17, 2), 900.0), 0.9)]  # nowhere near the person
    assert evaluate_keypoints(gt, far, "coco")["AP"] == 0.0
    gt["annotations"][0][field] = value
    with pytest.raises(ValueError, match=rf"annotation #0 .*'{field}' must be"):
        evaluate_keypoints(gt, far, "coco")


def test_a_null_score_is_a_non_finite_one_and_a_text_score_is_refused():
    """save_json writes NaN as null: such a result is counted and ranked last, as a NaN score is."""
    rng = np.random.default_rng(3)
    people = [[person(rng, 17), person(rng, 17, box=(400.0, 80.0, 200.0, 300.0))]]
    gt = gt_dict(people, boxes=[[(100.0, 80.0, 200.0, 300.0), (400.0, 80.0, 200.0, 300.0)]])
    res = [result(1, people[0][0][:, :2], 0.5), result(1, people[0][1][:, :2], 0.6)]
    nan_score = evaluate_keypoints(gt, [res[0], {**res[1], "score": float("nan")}], "coco")
    null_score = evaluate_keypoints(gt, [res[0], {**res[1], "score": None}], "coco")
    assert null_score["nonfinite_scores"] == nan_score["nonfinite_scores"] == 1
    assert json.dumps(null_score, sort_keys=True) == json.dumps(nan_score, sort_keys=True)
    with pytest.raises(ValueError, match=r"prediction #1 \(image 1\): 'score' must be a number, got 'high'"):
        evaluate_keypoints(gt, [res[0], {**res[1], "score": "high"}], "coco")


def test_a_crowd_region_without_keypoints_is_an_ignore_region_as_pycocotools_reads_one_with_zeros():
    rng = np.random.default_rng(4)
    people = [[person(rng, 17), person(rng, 17, box=(400.0, 80.0, 200.0, 300.0))]]
    boxes = [[(100.0, 80.0, 200.0, 300.0), (400.0, 80.0, 200.0, 300.0)]]
    gt = gt_dict(people, boxes=boxes, crowd={(0, 1)})
    gt["annotations"][1]["keypoints"] = [0.0] * 51
    res = [result(1, people[0][0][:, :2] + 3.0, 0.8), result(1, people[0][1][:, :2], 0.7)]
    expected = pycocotools_stats(gt, res)
    del gt["annotations"][1]["keypoints"]
    ours = evaluate_keypoints(gt, res, "coco")
    np.testing.assert_allclose([ours[n] for n in ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm",
                                                  "ARl")], expected, rtol=1e-12)


def test_an_image_id_of_another_type_than_the_ground_truths_is_named_as_such():
    rng = np.random.default_rng(6)
    gt = gt_dict([[person(rng, 17)]])
    with pytest.raises(ValueError, match=r"image '1'\): .* ids are ints, this one is a str"):
        evaluate_keypoints(gt, [{**result(1, np.zeros((17, 2)), 0.5), "image_id": "1"}], "coco")
