"""The end-to-end file pipeline (GPU and host decode paths, run here on the CPU) agrees with the predictors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from opensapiens.inference.pipeline import run_pipeline
from opensapiens.inference.predictors import PosePredictor, SegPredictor
from opensapiens.io import read_image

from conftest import make_official_state


def _photos(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w) in enumerate(((70, 50), (64, 96), (33, 40))):
        small = rng.integers(0, 255, (h // 4 + 1, w // 4 + 1, 3), dtype=np.uint8)
        img = np.array(Image.fromarray(small).resize((w, h), Image.BICUBIC))
        path = tmp_path / f"p{i}.png"  # lossless, so the pipeline's decoder and read_image see the same pixels
        Image.fromarray(img).save(path)
        paths.append(path)
    return paths


@pytest.mark.parametrize("decode", ["gpu", "cpu"])
def test_seg_pipeline_writes_the_predictor_labels(tmp_path, decode):
    model, _ = make_official_state("seg", 5)
    paths = _photos(tmp_path)
    out = tmp_path / "out"
    assert run_pipeline(model, "seg", paths, batch_size=2, input_size=(64, 48), out_dir=out, decode=decode) == 3
    predictor = SegPredictor(model, input_size=(64, 48))
    for path in paths:
        expect = predictor(read_image(path)).labels
        got = np.array(Image.open(out / f"{path.stem}_seg.png"))
        assert got.shape == expect.shape and (got == expect).mean() > 0.999


@pytest.mark.parametrize("decode", ["gpu", "cpu"])
def test_pose_pipeline_matches_whole_image_top_down(tmp_path, decode):
    model, _ = make_official_state("pose", 17)
    paths = _photos(tmp_path)
    out = tmp_path / "out"
    assert run_pipeline(model, "pose", paths, batch_size=2, input_size=(64, 48), out_dir=out, decode=decode) == 3
    predictor = PosePredictor(model, input_size=(64, 48))
    for path in paths:
        res = predictor(read_image(path))
        got = np.load(out / f"{path.stem}_keypoints.npy")  # (K, 3): x, y, score
        # batch composition changes float rounding; a flat random heatmap may then pick a neighbouring maximum
        close = np.linalg.norm(got[:, :2] - res.keypoints[0], axis=1) < 1e-2
        assert close.mean() > 0.9
        assert np.allclose(got[:, 2], res.scores[0], atol=1e-4)


def test_unknown_decode_mode_is_refused(tmp_path):
    model, _ = make_official_state("seg", 5)
    with pytest.raises(ValueError, match="decode must be 'gpu' or 'cpu'"):
        run_pipeline(model, "seg", _photos(tmp_path), batch_size=2, input_size=(64, 48), decode="tpu")



def test_end_to_end_benchmark_can_write_a_profile_of_its_timed_pass(tmp_path):
    import json

    from opensapiens.inference.pipeline import benchmark_end_to_end

    model, _ = make_official_state("seg", 5)
    folder = tmp_path / "photos"
    folder.mkdir()
    _photos(folder)
    trace = tmp_path / "traces" / "e2e.json"
    result = benchmark_end_to_end(model, "seg", folder, batch_size=2, input_size=(64, 48), decode="cpu", trace=trace)
    assert result["images"] == 3 and result["profiled"]
    names = {e.get("name") for e in json.loads(trace.read_text())["traceEvents"]}
    assert "aten::argmax" in names and "aten::convolution" in names  # the seg post-processing and the model ran
