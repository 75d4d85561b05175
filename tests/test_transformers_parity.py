"""Our Sapiens2 against Hugging Face transformers' independent implementation: the files transformers' save_pretrained
writes (tests/data/transformers_sapiens2, by tools/make_transformers_fixtures.py: tiny models of each task with
Sapiens2's block layout, random weights, and transformers 5.25's outputs for one input) load here and give its
outputs; transformers keeps the official key layout in them, so a Hub repo's model.safetensors loads as the official
file does."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from opensapiens.checkpoints import export_official, load_model
from opensapiens.checkpoints.hub import resolve_checkpoint
from opensapiens.checkpoints.official import is_official_layout
from opensapiens.checkpoints.reader import CheckpointError, read_state_dict
from opensapiens.codecs.heatmap import decode_udp_heatmaps
from opensapiens.inference.topdown import boxes_to_center_scale, crop_to_image
from opensapiens.models.sapiens2 import RotaryEmbedding2d

DATA = Path(__file__).parent / "data" / "transformers_sapiens2"
OUTPUTS = {"pose": ("heatmaps",), "seg": ("logits",), "normal": ("normals",), "pointmap": ("pointmaps", "scales")}


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    return dict(np.load(DATA / "outputs.npz"))


def _every_4th(x: torch.Tensor) -> np.ndarray:
    return (x[..., ::4, ::4] if x.shape[-1] > 48 else x).numpy()  # (as the fixture stores full-resolution maps)


def _run(model, image: np.ndarray) -> tuple[torch.Tensor, ...]:
    """The model in float64 (as the fixture's outputs were computed), with exact rotary periods and angles: the
    official files and our default round both to bf16, transformers does not."""
    model = model.double()
    rope = model.backbone.rope
    rope.dtype = torch.float64
    rope.periods = RotaryEmbedding2d(4 * len(rope.periods), dtype=torch.float64).periods
    with torch.no_grad():
        out = model(torch.tensor(image).double())
    return out if isinstance(out, tuple) else (out,)


@pytest.mark.parametrize("task", list(OUTPUTS))
def test_each_task_model_computes_what_transformers_computes(task, reference):
    model = load_model(DATA / task / "model.safetensors")
    assert model.config.task == task and model.config.generation == 2
    assert model.config.arch.dense_blocks == 1 and model.config.arch.kv_heads(1) == 2  # grouped-query middle blocks
    for name, got in zip(OUTPUTS[task], _run(model, reference["image"])):
        want = reference[f"{task}.{name}"]
        assert _every_4th(got).shape == want.shape, name
        np.testing.assert_allclose(_every_4th(got), want, rtol=0, atol=3e-7 * np.abs(want).max(),
                                   err_msg=f"{task} {name}")


def test_a_backbone_file_gives_the_tokens_transformers_gives(reference):
    model = load_model(DATA / "features" / "model.safetensors")
    assert model.config.task == "features"
    (features,) = _run(model, reference["image"])  # (1, C, 16, 12) patch tokens after the final norm
    tokens = reference["features.last_hidden_state"]  # (1, 9 + 192, C): cls, 8 storage tokens, patches
    want = tokens[:, 9:].reshape(1, 16, 12, -1).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(features.numpy(), want, rtol=0, atol=3e-7 * np.abs(want).max())


def test_pose_decoding_and_box_mapping_give_transformers_image_keypoints():
    """DARK-UDP refinement of the heatmaps' peaks (blur 11) and the way back through each person's padded box, as
    ``Sapiens2ImageProcessor.post_process_pose_estimation`` computes them."""
    ref = np.load(DATA / "pose_decoding.npz")
    kp, scores = decode_udp_heatmaps(torch.tensor(ref["heatmaps"]).float(), (1024, 768))
    xywh = torch.tensor(ref["boxes_xywh"])
    center, scale = boxes_to_center_scale(torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1))
    image_kp = crop_to_image(kp, center, scale, (1024, 768))
    assert (image_kp - torch.tensor(ref["keypoints"])).norm(dim=-1).max() < 1e-3  # pixels
    assert torch.equal(scores, torch.tensor(ref["scores"]))


def test_transformers_writes_the_official_keys_and_the_task_is_read_from_the_head():
    for task in OUTPUTS:
        sd, _ = read_state_dict(DATA / task / "model.safetensors")
        assert is_official_layout(sd) and "backbone.blocks.0.ffn.w12.weight" in sd
        assert f"decode_head.conv_{task}.weight" in sd  # the head named as the official files name it
    features, _ = read_state_dict(DATA / "features" / "model.safetensors")
    assert "blocks.0.attn.wq.weight" in features  # a backbone flat, as the official pretrain files


def test_a_sapiens2_name_falls_back_to_the_repos_transformers_weights(tmp_path, offline_hub):
    repo = tmp_path / "hf" / "models--facebook--sapiens2-seg-0.4b"
    snap = repo / "snapshots" / ("c" * 40)
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("c" * 40)
    for name in ("model.safetensors", "config.json"):
        shutil.copy(DATA / "seg" / name, snap / name)
    assert resolve_checkpoint("sapiens2-seg-0.4b") == snap / "model.safetensors"
    assert load_model("sapiens2-seg-0.4b").config.task == "seg"
    (snap / "model.safetensors").unlink()
    for file in (DATA / "seg_sharded").iterdir():  # transformers' shards in the cache: found and loaded whole
        shutil.copy(file, snap / file.name)
    assert resolve_checkpoint("sapiens2-seg-0.4b") == snap / "model.safetensors.index.json"
    assert load_model("sapiens2-seg-0.4b").config.task == "seg"
    next(snap.glob("model-00003-*")).unlink()  # an interrupted download: not a model without its shard
    with pytest.raises(FileNotFoundError, match=r"index.json was found but its shard model-00003-of-00005"):
        resolve_checkpoint("sapiens2-seg-0.4b")
    (snap / "model.safetensors.index.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"sapiens2_0.4b_seg.safetensors \(nor transformers' model"):
        resolve_checkpoint("sapiens2-seg-0.4b")


def test_a_sharded_repo_is_downloaded_index_and_every_shard(tmp_path, offline_hub, monkeypatch):
    """A cold cache: the official name and transformers' one-file name are not in the repo, its index is; the
    index and each of the five shards it lists are downloaded, and the model loads from them."""
    import huggingface_hub

    served, asked = DATA / "seg_sharded", []
    downloads = tmp_path / "downloads"
    downloads.mkdir()

    def download(repo_id, filename, subfolder=None, local_files_only=False, **_):
        asked.append((filename, local_files_only))
        if local_files_only or subfolder or not (served / filename).is_file():
            raise FileNotFoundError(f"{repo_id}: no {filename}")
        return str(shutil.copy(served / filename, downloads / filename))

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    assert resolve_checkpoint("sapiens2-seg-0.4b") == downloads / "model.safetensors.index.json"
    fetched = {name for name, cached in asked if not cached and (served / name).is_file()}
    assert fetched == {p.name for p in served.glob("*.safetensors*")}  # the index and all five shards
    assert load_model("sapiens2-seg-0.4b").config.task == "seg"


def test_a_sharded_save_and_a_save_pretrained_folder_load_as_the_single_file(reference, tmp_path):
    """transformers' sharded save of the seg model (its index and five shards, tools/make_transformers_fixtures.py
    --sharded): the same tensors as its one-file save, and transformers' outputs; a folder loads as its files."""
    whole, _ = read_state_dict(DATA / "seg" / "model.safetensors")
    index = DATA / "seg_sharded" / "model.safetensors.index.json"
    assert len(list(index.parent.glob("model-*-of-*.safetensors"))) == 5
    for path in (index, DATA / "seg_sharded"):
        sharded, _ = read_state_dict(path)
        assert sharded.keys() == whole.keys() and all(torch.equal(sharded[k], whole[k]) for k in whole)
    assert read_state_dict(DATA / "seg")[0].keys() == whole.keys()  # a one-file folder
    (got,) = _run(load_model(DATA / "seg_sharded"), reference["image"])
    want = reference["seg.logits"]
    np.testing.assert_allclose(_every_4th(got), want, rtol=0, atol=3e-7 * np.abs(want).max())
    broken = tmp_path / "broken"
    shutil.copytree(DATA / "seg_sharded", broken)
    next(broken.glob("model-00002-*")).unlink()
    with pytest.raises(CheckpointError, match=r"its shard model-00002-of-00005\.safetensors is missing"):
        load_model(broken)
    (broken / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"decode_head.extra.weight": "model-00001-of-00005.safetensors"}}))
    with pytest.raises(CheckpointError, match=r"1 tensor\(s\) it lists are not in their shards"):
        read_state_dict(broken)
    (broken / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"decode_head.conv_seg.weight": "../seg/model.safetensors"}}))
    with pytest.raises(CheckpointError, match="is not a file beside the index"):
        read_state_dict(broken)
    (broken / "model.safetensors.index.json").write_text('{"weights": {}}')
    with pytest.raises(CheckpointError, match="not a shard index"):
        read_state_dict(broken)
    with pytest.raises(CheckpointError, match="folder without model.safetensors"):
        read_state_dict(tmp_path)
    from opensapiens.checkpoints.hub import BUNDLED
    from opensapiens.models.multitask import SapiensMultiTask

    (tmp_path / "multi").mkdir()
    shutil.copy(BUNDLED, tmp_path / "multi" / "model.safetensors")  # our multi-task file, saved as a folder
    assert isinstance(load_model(tmp_path / "multi"), SapiensMultiTask)


@pytest.mark.parametrize("task", [*OUTPUTS, "features"])
def test_an_export_for_transformers_is_what_transformers_itself_writes(task, tmp_path, capsys):
    """``convert --transformers`` of the model transformers saved gives back its weights (same keys, same values)
    and a config.json with its shape; what is ours: the labels' names and, for pointmaps, the scale branch's input
    size written out (transformers derives it from image_size), and the image processor's settings."""
    from opensapiens.cli.main import main

    out = tmp_path / "hf"
    assert main(["convert", str(DATA / task / "model.safetensors"), str(out), "--transformers",
                 "--input-size", "256x192"]) == 0
    theirs, _ = read_state_dict(DATA / task / "model.safetensors")
    ours, _ = read_state_dict(out / "model.safetensors")
    assert set(ours) == set(theirs) and all(torch.equal(ours[k], theirs[k].float()) for k in theirs)
    want = json.loads((DATA / task / "config.json").read_text())
    got = json.loads((out / "config.json").read_text())
    for key in ("architectures", "model_type", "patch_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads", "num_key_value_heads_per_layer", "num_register_tokens", "image_size",
                "rms_norm_eps", "rope_theta", "use_gated_mlp", "use_qk_norm"):
        assert got[key] == want[key], key
    if task == "features":
        assert not (out / "preprocessor_config.json").exists()
        return
    defaults = {"model_type", "conv_kernel_size", "upsample_kernel_size", "scale_conv_kernel_size"}  # transformers'
    for key, value in want["head_config"].items():
        if key not in defaults:
            assert got["head_config"].get(key) == value, key
    assert len(got["id2label"]) == len(want["id2label"])
    processor = json.loads((out / "preprocessor_config.json").read_text())
    assert processor["size"] == {"height": 256, "width": 192}
    assert processor["do_pad"] == (task in ("normal", "pointmap"))  # Sapiens2's padded resize for its 3-D tasks
    capsys.readouterr()
    assert main(["convert", str(DATA / task / "model.safetensors"), str(out), "--transformers"]) == 2
    assert "exists and is not an empty folder" in capsys.readouterr().err  # nothing is overwritten
    assert main(["convert", "sapiens-nano", str(tmp_path / "v1"), "--transformers"]) == 2
    assert "Sapiens v1 multi-task model" in capsys.readouterr().err


def test_an_exported_pose_model_names_its_keypoints_and_their_mirror_pairs_and_odd_heads_are_refused(tmp_path):
    from opensapiens.checkpoints import CheckpointError, export_transformers
    from opensapiens.cli.main import main
    from opensapiens.metadata import keypoint_set
    from opensapiens.models import Head2Spec, build_model

    export_official(build_model("pose", "sapiens2_nano"), tmp_path / "pose.safetensors")
    assert main(["convert", str(tmp_path / "pose.safetensors"), str(tmp_path / "hf"), "--transformers"]) == 0
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    goliath = keypoint_set("goliath")
    assert [config["id2label"][str(i)] for i in range(308)] == list(goliath.names)
    assert {(a, b) for a, b in config["flip_pairs"]} == {(i, j) for i, j in enumerate(goliath.flip_indices) if i < j}
    odd = build_model("seg", "sapiens2_nano", head_spec=Head2Spec((16, 8), (8,), 3))  # 3x3 convolutions
    with pytest.raises(CheckpointError, match="take 1x1 ones only"):
        export_transformers(odd, tmp_path / "odd")
