"""Sapiens2: the backbone and heads against an independent float64 re-statement of the published spec, the released
sizes' parameter counts, the official key layout in and out, names, predictors and the command line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from opensapiens.checkpoints import load_model
from opensapiens.checkpoints.hub import parse_name, resolve_checkpoint
from opensapiens.checkpoints.loading import export_official, save_model
from opensapiens.checkpoints.official import ours_to_official
from opensapiens.checkpoints.reader import CheckpointError
from opensapiens.cli.main import main
from opensapiens.inference.predictors import PointmapPredictor, load_predictor
from opensapiens.inference.results import PointmapResult
from opensapiens.metadata import seg28_to_29, seg29_to_28, seg_classes
from opensapiens.models import ARCHS2, Head2Spec, Sapiens2ViT, build_model

import sapiens2_reference as ref

# Small heads of each kind (the official widths make a nano model's head 20-70M parameters).
SMALL = {
    "pose": Head2Spec((24, 16), (16, 8), 1),
    "seg": Head2Spec((16, 16, 8, 8), (8,), 1),
    "normal": Head2Spec((16, 16, 8, 8), (8, 8), 3),
    "pointmap": Head2Spec((16, 16, 8, 8), (8,), 3, scale_conv=(16, 8, 8), scale_hidden=(8, 8), scale_grid=(2, 2)),
}
SIZE = {"pointmap": (256, 192)}  # the scale branch flattens a fixed grid: 2x2 after three halvings of 16x12


def _model(task: str, seed: int = 0, arch: str = "sapiens2_nano"):
    """A nano Sapiens2 model with random weights that make every part matter (norm weights away from 1, a layer
    scale of order 1, biases)."""
    torch.manual_seed(seed)
    model = build_model(task, arch, head_spec=SMALL.get(task))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.3 * torch.randn_like(p))
            elif name.endswith("gamma.weight"):
                p.copy_(0.5 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.05 * torch.randn_like(p))
    return model.eval()


def _official_parts(model, task: str) -> tuple[dict, dict]:
    """(backbone, head) state dicts in the official layout, without their prefixes, in float64."""
    sd = ours_to_official(model.state_dict(), task)
    if task == "features":
        return {k: v.double() for k, v in sd.items()}, {}
    backbone = {k.removeprefix("backbone."): v.double() for k, v in sd.items() if k.startswith("backbone.")}
    head = {k.removeprefix("decode_head."): v.double() for k, v in sd.items() if k.startswith("decode_head.")}
    assert len(backbone) + len(head) == len(sd)
    return backbone, head


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b).abs().max() / b.abs().max())


# ---------------------------------------------------------------------------------------------------- architecture


@pytest.mark.parametrize("name, params", [  # the official class instantiated (reference/sapiens2.md, 1.1)
    ("sapiens2_0.1b", 113_993_472), ("sapiens2_0.4b", 395_450_368), ("sapiens2_0.8b", 814_283_520),
    ("sapiens2_1b", 1_455_474_176), ("sapiens2_5b", 5_066_902_976), ("sapiens2_1b_4k", 1_606_588_928)])
def test_each_released_size_has_the_official_parameter_count(name, params):
    with torch.device("meta"):
        backbone = Sapiens2ViT(name)
    assert sum(p.numel() for p in backbone.parameters()) == params
    official = ours_to_official({"backbone." + k: v for k, v in backbone.state_dict().items()}, "features")
    # 17 tensors per block; tokens, patch conv, periods, norm; the 4K model's 58 tokenizer.* keys
    assert len(official) == ARCHS2[name].depth * 17 + 6 + (58 if name.endswith("4k") else 0)
    assert sum(k.startswith("tokenizer.") for k in official) == (58 if name.endswith("4k") else 0)


@pytest.mark.parametrize("task, millions", [("pose", 64.31), ("seg", 15.35), ("normal", 83.86),
                                            ("pointmap", 174.12)])
def test_the_1b_heads_have_the_official_parameter_counts(task, millions):
    with torch.device("meta"):
        model = build_model(task, "sapiens2_1b")
    assert round(sum(p.numel() for p in model.head.parameters()) / 1e6, 2) == millions


def test_grouped_query_blocks_are_the_middle_ones():
    arch = ARCHS2["sapiens2_1b"]
    kv = [arch.kv_heads(i) for i in range(arch.depth)]
    assert kv == [24] * 8 + [12] * 24 + [24] * 8
    assert [ARCHS2["sapiens2_0.1b"].kv_heads(i) for i in range(12)] == [12] * 12


@pytest.mark.parametrize("task", ["features", "pose", "seg", "normal", "pointmap"])
def test_backbone_and_heads_match_the_float64_reference(task):
    """float32 model with float32 rotary angles against the float64 reference with float64 angles."""
    model = _model(task)
    model.backbone.rope.dtype = torch.float32
    backbone_sd, head_sd = _official_parts(model, task)
    h, w = SIZE.get(task, (64, 48))
    x = torch.randn(2, 3, h, w)
    with torch.no_grad():
        feats = model.backbone(x)
        out = model(x)
    feats_ref = ref.backbone(backbone_sd, x.double(), num_heads=4)
    assert _rel(feats, feats_ref) < 1e-5
    if task == "features":
        return
    head_ref = {"pose": ref.pose_head, "seg": ref.seg_head, "normal": ref.normal_head,
                "pointmap": ref.pointmap_head}[task](head_sd, feats_ref)
    for got, want in zip(out if task == "pointmap" else (out,), head_ref if task == "pointmap" else (head_ref,)):
        assert got.shape == want.shape
        assert _rel(got, want) < 1e-4


def test_bfloat16_rotary_angles_are_the_default_and_stay_close_to_the_reference_with_them():
    """The official code computes the angles in bfloat16 even in a float32 model; so do we unless told otherwise,
    and the result moves toward the reference computed with bfloat16 angles."""
    model = _model("features")
    assert model.backbone.rope.dtype == torch.bfloat16
    backbone_sd, _ = _official_parts(model, "features")
    x = torch.randn(1, 3, 64, 48)
    with torch.no_grad():
        bf16 = model.backbone(x)
    exact = ref.backbone(backbone_sd, x.double(), num_heads=4)
    with_bf16 = ref.backbone(backbone_sd, x.double(), num_heads=4, rope_dtype=torch.bfloat16)
    assert _rel(bf16, with_bf16) < 2e-2 and _rel(bf16, exact) < 2e-2  # (q and k also round to bf16, as official)
    rope = model.backbone.rope
    for h, w in ((4, 3), (64, 48), (17, 13)):  # the angles themselves, bit for bit
        cos, sin = rope(h, w)
        cos_ref, sin_ref = ref.rope_angles(h, w, rope.periods, torch.bfloat16)
        assert cos.dtype == torch.bfloat16
        assert torch.equal(cos.double(), cos_ref) and torch.equal(sin.double(), sin_ref)
        assert not torch.equal(cos.double(), ref.rope_angles(h, w, rope.periods, torch.float64)[0])


def test_rotary_periods_and_the_identity_at_the_centre():
    rope = Sapiens2ViT("sapiens2_nano").rope
    hd = ARCHS2["sapiens2_nano"].head_dim
    expected = 100.0 ** (2 * np.arange(hd // 4) / (hd // 2))
    np.testing.assert_allclose(rope.periods.float().numpy(), expected, rtol=1e-2)  # stored in bfloat16
    rope.dtype = torch.float32
    cos, sin = rope(1, 1)  # one patch: its centre is (0, 0), no rotation
    assert torch.equal(cos, torch.ones(1, hd)) and torch.equal(sin, torch.zeros(1, hd))


# ---------------------------------------------------------------------------------------------- checkpoint layout


@pytest.mark.parametrize("task", ["features", "pose", "seg", "normal", "pointmap"])
def test_an_official_layout_file_loads_as_its_task_with_its_head_widths(tmp_path, task):
    model = _model(task)
    path = export_official(model, tmp_path / f"sapiens2_{task}.safetensors")
    with safe_open(path, "pt") as f:
        keys = set(f.keys())
    assert "rope_embed.periods" in keys if task == "features" else "backbone.rope_embed.periods" in keys
    if task != "features":
        final = {"pose": "conv_pose", "seg": "conv_seg", "normal": "conv_normal", "pointmap": "conv_pointmap"}[task]
        assert f"decode_head.{final}.weight" in keys and "backbone.blocks.0.ln1.weight" in keys
        assert "backbone.blocks.8.ffn.w12.weight" in keys and "backbone.ln1.weight" in keys
    loaded = load_model(path)
    assert loaded.config.task == task and loaded.config.arch == ARCHS2["sapiens2_nano"]
    assert loaded.config.head_spec == SMALL.get(task)
    x = torch.randn(1, 3, *SIZE.get(task, (64, 48)))
    with torch.no_grad():
        for a, b in zip(*(y if isinstance(y, tuple) else (y,) for y in (model(x), loaded(x)))):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_a_task_files_backbone_loads_as_features_and_other_tasks_are_refused(tmp_path):
    model = _model("pose")
    path = export_official(model, tmp_path / "pose.safetensors")
    features = load_model(path, task="features")
    x = torch.randn(1, 3, 64, 48)
    with torch.no_grad():
        torch.testing.assert_close(features(x), model.backbone(x), rtol=0, atol=0)
    with pytest.raises(CheckpointError, match="holds a Sapiens2 pose model, not seg"):
        load_model(path, task="seg")
    with pytest.raises(CheckpointError, match="Sapiens2 has no depth head"):
        load_model(path, task="depth")


def test_the_4k_backbone_pools_windows_as_the_float64_reference_and_loads_from_the_official_layout(tmp_path):
    """The 4K model (window tokenizer: each 4 x 4 patch window through plain blocks behind a shared token) against
    the float64 statement, window by window; its official file (``tokenizer.local_pos_embed``, ``w_cls``,
    ``tokenizer.blocks.N.ln1`` ...) loads as that size, and an input off the 64-pixel grid is refused."""
    model = _model("features", arch="sapiens2_nano_4k")
    model.backbone.rope.dtype = torch.float32
    with torch.no_grad():
        model.backbone.tokenizer.local_pos_embed.normal_(0, 0.5)  # positions that matter
    sd = ours_to_official(model.state_dict(), "features")
    assert {"tokenizer.local_pos_embed", "tokenizer.w_cls", "tokenizer.blocks.1.ln1.weight",
            "tokenizer.blocks.1.ffn.w12.weight"} <= sd.keys()
    assert not any(k.startswith("tokenizer.") and ("q_norm" in k or "gamma" in k) for k in sd)
    x = torch.randn(2, 3, 256, 192)
    with torch.no_grad():
        feats = model(x)
    assert feats.shape == (2, 64, 4, 3)  # a 16 x 12 patch grid pooled to 4 x 3
    assert _rel(feats, ref.backbone({k: v.double() for k, v in sd.items()}, x.double(), num_heads=4)) < 1e-5
    save_file(sd, tmp_path / "4k.safetensors")
    loaded = load_model(tmp_path / "4k.safetensors")
    assert loaded.config.arch.name == "sapiens2_nano_4k" and loaded.config.arch.stride == 64
    loaded.backbone.rope.dtype = torch.float32
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), feats)
        with pytest.raises(ValueError, match="multiples of 64, got a 16 x 13 patch grid"):
            loaded(torch.randn(1, 3, 256, 208))


def test_the_4k_backbone_fine_tunes_on_its_64_pixel_grid_and_is_not_exported_to_transformers(tmp_path, capsys):
    from opensapiens.checkpoints.transformers_export import transformers_config

    base = ["train", "--task", "seg", "--arch", "sapiens2_nano_4k", "--data", "synth", "--steps", "2",
            "--batch-size", "2", "--workers", "0", "--log-interval", "1"]
    assert main([*base, "--input-size", "128x96", "--out", str(tmp_path / "odd")]) == 2
    assert "must be a multiple of 64 on both sides" in capsys.readouterr().err
    assert main([*base, "--input-size", "128x128", "--out", str(tmp_path / "run")]) == 0
    model = load_model(tmp_path / "run" / "final.safetensors")
    assert model.config.arch.name == "sapiens2_nano_4k" and model(torch.randn(1, 3, 128, 128)).shape[-2:] == (32, 32)
    with pytest.raises(CheckpointError, match="no window tokenizer"):
        transformers_config(model)


def test_the_4k_tokenizer_trains_as_the_official_recipe_and_checkpoints_its_windows():
    """Its parameters get layer id 0 (the embedding's rate, not the head's), its position table no weight decay; the
    4K 1b takes the 1b's recipe; its pose heatmaps (1/16 of the input) get sigma 6 per 256 heatmap rows; its
    blocks recompute in training (as the official code always does), with the same gradients."""
    from opensapiens.training.config import TrainConfig, resolve
    from opensapiens.training.optim import layer_id, uses_weight_decay

    model = _model("features", arch="sapiens2_nano_4k").train()
    for name in ("backbone.tokenizer.blocks.1.attn.wq.weight", "backbone.tokenizer.local_pos_embed",
                 "backbone.tokenizer.w_cls"):
        assert layer_id(name, 18) == 0
    params = dict(model.named_parameters())
    assert not uses_weight_decay("backbone.tokenizer.local_pos_embed", params["backbone.tokenizer.local_pos_embed"],
                                 decay_tokens=True)
    assert uses_weight_decay("backbone.tokenizer.w_cls", params["backbone.tokenizer.w_cls"], decay_tokens=True)
    cfg = resolve(TrainConfig(task="pose", data="x", out="y", arch="sapiens2_1b_4k"))
    assert (cfg.layer_decay, cfg.clip_grad, cfg.lr) == (0.9, 4.0, 5e-4)
    assert cfg.sigma == pytest.approx(1.5)  # a 1024-row input: 64 heatmap rows behind the 4K tokenizer
    x = torch.randn(1, 3, 128, 128)
    runs = []
    for recompute in (True, False):
        model.zero_grad()
        model.backbone.tokenizer.grad_checkpointing = recompute
        saved: list[int] = []

        def pack(t: torch.Tensor, saved=saved) -> torch.Tensor:
            saved.append(t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = model(x).square().mean()
        loss.backward()
        runs.append((sum(saved), {n: p.grad.clone() for n, p in model.named_parameters() if "tokenizer" in n}))
    assert runs[0][0] < runs[1][0]  # fewer activations kept
    for name, g in runs[0][1].items():
        torch.testing.assert_close(g, runs[1][1][name], rtol=1e-5, atol=1e-7)


def test_a_4k_backbone_does_not_start_a_1k_model_and_1k_configs_read_as_before(tmp_path):
    from opensapiens.training.init import load_initial_weights

    save_model(_model("features", arch="sapiens2_nano_4k"), tmp_path / "4k.safetensors")
    with pytest.raises(ValueError, match=r"not in the model \['tokenizer\."):
        load_initial_weights(build_model("seg", "sapiens2_nano", head_spec=SMALL["seg"]),
                             str(tmp_path / "4k.safetensors"))
    assert "tokenizer_layers" not in build_model("seg", "sapiens2_nano").config.to_dict()["arch"]  # older readers
    assert load_model(tmp_path / "4k.safetensors").config.arch.tokenizer_layers == 2


def test_sapiens2_seg_predictors_resize_as_its_official_code_and_the_others_bilinear(tmp_path):
    for name, model in (("s2seg", _model("seg")), ("s2normal", _model("normal")),
                        ("v1seg", build_model("seg", "nano", out_channels=28))):
        save_model(model, tmp_path / f"{name}.safetensors")
    interpolation = {name: load_predictor(None, tmp_path / f"{name}.safetensors", device="cpu").preprocess.interpolation
                     for name in ("s2seg", "s2normal", "v1seg")}
    assert interpolation == {"s2seg": "area-cubic", "s2normal": "bilinear", "v1seg": "bilinear"}
    save_model(_model("pose"), tmp_path / "s2pose.safetensors")  # and its pose crops bicubic where they magnify
    save_model(build_model("pose", "nano", out_channels=17), tmp_path / "v1pose.safetensors")
    assert load_predictor(None, tmp_path / "s2pose.safetensors", device="cpu").cubic_enlarging
    assert not load_predictor(None, tmp_path / "v1pose.safetensors", device="cpu").cubic_enlarging


def test_4k_predictors_and_exports_size_their_inputs_by_64(tmp_path):
    from opensapiens.checkpoints.onnx_export import default_input_size

    save_model(_model("features", arch="sapiens2_nano_4k"), tmp_path / "4k.safetensors")
    assert load_predictor(None, tmp_path / "4k.safetensors", device="cpu").input_size == (4096, 3072)
    with pytest.raises(ValueError, match="must be divisible by 64"):
        load_predictor(None, tmp_path / "4k.safetensors", device="cpu", input_size=(144, 128))
    assert default_input_size(load_model(tmp_path / "4k.safetensors")) == (4096, 3072)


def test_a_broken_grouped_query_layout_is_a_clear_error(tmp_path):
    sd = ours_to_official(_model("features").state_dict(), "features")
    wrong = dict(sd)
    wrong["blocks.3.attn.wk.weight"] = wrong["blocks.3.attn.wk.weight"][:32]  # a grouped block among dense ones
    wrong["blocks.3.attn.wk.bias"] = wrong["blocks.3.attn.wk.bias"][:32]
    save_file(wrong, tmp_path / "odd.safetensors")
    with pytest.raises(CheckpointError, match="do not follow Sapiens2's layout"):
        load_model(tmp_path / "odd.safetensors")


def test_official_names_and_local_files_by_those_names(tmp_path, monkeypatch):
    hub = parse_name("sapiens2-pose-1b")
    assert (hub.repo_id, hub.filename) == ("facebook/sapiens2-pose-1b", "sapiens2_1b_pose.safetensors")
    assert parse_name("Sapiens2_pretrain_0.1b").filename == "sapiens2_0.1b_pretrain.safetensors"
    with pytest.raises(FileNotFoundError, match="no official Sapiens2 seg checkpoint exists for size 0.1b"):
        parse_name("sapiens2-seg-0.1b")
    monkeypatch.setenv("OPENSAPIENS_CHECKPOINTS", str(tmp_path))
    monkeypatch.chdir(tmp_path / "..")
    path = export_official(_model("seg"), tmp_path / "sapiens2_0.4b_seg.safetensors")
    assert resolve_checkpoint("sapiens2-seg-0.4b") == path  # found where we keep files, without the network
    assert resolve_checkpoint("sapiens2_0.4b_seg.safetensors") == path  # and by the official file's own name
    with pytest.raises(FileNotFoundError, match="did you mean sapiens2-pointmap-1b"):
        resolve_checkpoint("sapiens2-pointmp-1b")


# ------------------------------------------------------------------------------------------------------- predictors


def test_the_29_classes_and_the_maps_between_generations():
    v1, v2 = seg_classes("goliath"), seg_classes("sapiens2")
    assert v2.num_classes == 29 and v2.names[2] == "Eyeglass" and len(set(v2.palette)) == 29
    assert v2.palette[2] == (14, 204, 182)  # the official 29-class colours: v1's, and teal for Eyeglass
    up, down = seg28_to_29(), seg29_to_28()
    for i, name in enumerate(v1.names):
        assert v2.names[up[i]] == name and down[up[i]] == i
    assert down[2] == v1.names.index("Face_Neck") and seg29_to_28(255)[2] == 255
    assert {(v2.names[a], v2.names[b]) for a, b in v2.flip_pairs} == {(v1.names[a], v1.names[b])
                                                                     for a, b in v1.flip_pairs}


def test_seg_predictor_names_the_29_classes_and_normals_default_to_the_padded_resize(tmp_path):
    seg = load_predictor(None, export_official(_model("seg"), tmp_path / "seg.safetensors"), device="cpu",
                         input_size=(64, 48))
    result = seg(np.random.default_rng(0).integers(0, 255, (50, 40, 3), dtype=np.uint8))
    assert seg.class_names == seg_classes("sapiens2").names and result.labels.shape == (50, 40)
    normal = load_predictor(None, export_official(_model("normal"), tmp_path / "n.safetensors"), device="cpu",
                            input_size=(64, 48))
    assert normal.preprocess.resize == "center"
    assert load_predictor(None, tmp_path / "n.safetensors", device="cpu", input_size=(64, 48),
                          resize="stretch").preprocess.resize == "stretch"


class _PinholeHead(torch.nn.Module):
    """A stand-in pointmap model: the canonical points of a plane 2 m away seen by a camera of focal 768 (in
    model-input pixels, principal point at the input's centre), and a fixed scale."""

    task = "pointmap"

    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # (device and dtype for the predictor)
        self.config = type("Config", (), {"generation": 2})()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, _, H, W = x.shape
        v, u = torch.meshgrid(torch.arange(H, dtype=x.dtype), torch.arange(W, dtype=x.dtype), indexing="ij")
        Z = torch.full_like(u, 2.0)
        points = torch.stack([(u - (W - 1) / 2) * Z / 768.0, (v - (H - 1) / 2) * Z / 768.0, Z])  # canonical
        return points.expand(B, -1, -1, -1) + self.anchor, torch.full((B, 1), self.scale)


def test_pointmap_predictor_divides_by_the_scale_and_maps_the_focal_length_to_the_image():
    """Metric points = canonical / scale; the focal is 768 / scale input pixels, i.e. that over the resize factor
    in the image's pixels; the principal point is where the points place it."""
    scale = 0.5  # the real camera's focal is 768 / 0.5 = 1536 input pixels
    predictor = PointmapPredictor(_PinholeHead(scale), input_size=(256, 192), resize="stretch")
    image = np.zeros((128, 192, 3), np.uint8)  # stretch: rows x2, columns x1
    result = predictor(image)
    assert isinstance(result, PointmapResult) and result.points.shape == (128, 192, 3)
    np.testing.assert_allclose(result.depth, 2.0 / scale, rtol=1e-6)
    assert result.focal == pytest.approx((1536.0 / 1.0, 1536.0 / 2.0))
    K = result.intrinsics()
    # the canonical camera's principal point, (95.5, 127.5) input pixels, in the image: x the same, y halved
    assert K[0, 2] == pytest.approx(95.5, abs=0.6) and K[1, 2] == pytest.approx((127.5 + 0.5) / 2 - 0.5, abs=0.6)
    padded = PointmapPredictor(_PinholeHead(scale), input_size=(256, 192), resize="pad")(image)
    assert padded.focal == pytest.approx((1536.0, 1536.0))  # one factor, 1: the image fits as it is


def test_intrinsics_recover_a_pinhole_camera_from_its_points():
    h, w, fx, fy, cx, cy = 60, 80, 500.0, 520.0, 37.0, 31.0
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    Z = 1.5 + 0.01 * u
    points = np.stack([(u - cx) * Z / fx, (v - cy) * Z / fy, Z], axis=-1).astype(np.float32)
    K = PointmapResult(points, (fx, fy), 1.0).intrinsics()
    np.testing.assert_allclose(K, [[fx, 0, cx], [0, fy, cy], [0, 0, 1]], atol=1e-3)



def test_predict_pointmap_writes_metric_points_focal_and_a_picture_then_resumes(tmp_path, capsys):
    from PIL import Image

    ckpt = export_official(_model("pointmap"), tmp_path / "pm.safetensors")
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (90, 60, 3), dtype=np.uint8)).save(photos / "a.png")
    argv = ["predict", "--task", "pointmap", "--checkpoint", str(ckpt), "--input-size", "256x192", "--device", "cpu",
            "--workers", "0", str(photos), "--out", str(tmp_path / "out")]
    assert main(argv) == 0
    out = tmp_path / "out"
    points = np.load(out / "a_pointmap.npy")
    meta = json.loads((out / "a_pointmap.json").read_text())
    image = np.asarray(Image.open(photos / "a.png"))
    predicted = load_predictor(None, ckpt, device="cpu", input_size=(256, 192))(image)
    np.testing.assert_allclose(points, predicted.points, rtol=1e-5, atol=1e-6)
    assert meta["focal"] == pytest.approx(list(predicted.focal)) and np.shape(meta["intrinsics"]) == (3, 3)
    assert (out / "a_pointmap.jpg").is_file()
    capsys.readouterr()
    assert main(argv + ["--resume"]) == 0 and "0 done, 1 skipped" in capsys.readouterr().out
    assert main(argv + ["--resume", "--ply"]) == 0 and "1 done, 0 skipped" in capsys.readouterr().out  # one more
    header, body = (out / "a_pointmap.ply").read_bytes().split(b"end_header\n", 1)
    finite = np.isfinite(points).all(-1)
    assert f"element vertex {finite.sum()}" in header.decode()
    rows = np.frombuffer(body, dtype=[("xyz", "<f4", 3), ("rgb", "u1", 3)])
    np.testing.assert_array_equal(rows["xyz"], points[finite])
    np.testing.assert_array_equal(rows["rgb"], image[finite])
    assert main(argv + ["--resume", "--ply"]) == 0 and "0 done, 1 skipped" in capsys.readouterr().out


def test_onnx_export_of_a_pointmap_model_gives_both_outputs_with_float_angles(tmp_path):
    """The graph computes the rotary angles in its own dtype (runtimes have no bfloat16 arithmetic on CPUs); against
    the model with float32 angles it agrees to float32 rounding. The caller's model keeps its bfloat16 angles."""
    pytest.importorskip("onnxruntime")
    from opensapiens.checkpoints import check_onnx, export_onnx

    model = _model("pointmap")
    path = export_onnx(model, tmp_path / "pm.onnx", input_size=(256, 192))
    assert model.backbone.rope.dtype == torch.bfloat16
    model.backbone.rope.dtype = torch.float32
    errors = check_onnx(model, path)
    assert set(errors) == {"pointmap", "scale"} and max(errors.values()) < 1e-4


def test_center_resize_centres_the_image_on_black_and_maps_outputs_back():
    """Sapiens2's normal/pointmap protocol: aspect kept, centred, black around (pixel 0, normalized)."""
    from opensapiens.inference.transforms import MEAN, STD, Preprocessor

    pre = Preprocessor((64, 48), resize="center")
    image = np.full((20, 40, 3), 200, np.uint8)  # 2:1 landscape into 4:3 portrait: 24 x 48 content, rows 20..43
    batch, (meta,) = pre([image])
    assert meta.pad == (20, 0, 20, 0) and meta.content_size == (24, 48)
    black = -np.array(MEAN) / np.array(STD)
    np.testing.assert_allclose(batch[0, :, :20].mean((1, 2)), black, rtol=1e-6)
    np.testing.assert_allclose(batch[0, :, 44:].mean((1, 2)), black, rtol=1e-6)
    np.testing.assert_allclose(batch[0, :, 20:44].mean((1, 2)), (200 - np.array(MEAN)) / np.array(STD), rtol=1e-5)
    rows = torch.arange(64, dtype=torch.float32).view(1, 1, 64, 1).expand(1, 1, 64, 48)  # an output = its row
    (back,) = pre.restore(rows, [meta])
    # image row i (of 20) sits at input row 20 + (i + 0.5) * 24 / 20 - 0.5
    expected = 20 + (np.arange(20) + 0.5) * 24 / 20 - 0.5
    np.testing.assert_allclose(back[0, :, 0].numpy(), expected, atol=1e-5)


def test_v2_defaults_for_each_task_and_clear_errors_for_v1_files_asked_as_pointmap(tmp_path):
    normal = load_predictor(None, export_official(_model("normal"), tmp_path / "n.safetensors"), device="cpu",
                            input_size=(64, 48))
    assert normal.preprocess.resize == "center"
    features = load_predictor("features", tmp_path / "n.safetensors", device="cpu")
    assert features.input_size == (1024, 768)  # Sapiens2 was trained at 1024x768 throughout (v1 pretrain: 1024^2)
    from conftest import make_official_state

    v1, _ = make_official_state("normal")
    path = export_official(v1, tmp_path / "v1.pth")
    with pytest.raises(CheckpointError, match="a Sapiens v1 file; pointmap is a Sapiens2 task"):
        load_model(path, task="pointmap")


def test_v1_configs_are_written_as_before_and_exported_periods_stay_bfloat16(tmp_path):
    from opensapiens.checkpoints.loading import CONFIG_KEY, save_model
    from opensapiens.checkpoints.reader import safetensors_metadata

    from conftest import make_official_state

    v1, _ = make_official_state("seg")
    meta = json.loads(safetensors_metadata(save_model(v1, tmp_path / "v1.safetensors"))[CONFIG_KEY])
    assert "head_spec" not in meta  # a reader from before Sapiens2 takes the file
    model = _model("features").float()
    path = export_official(model, tmp_path / "pre.safetensors")
    with safe_open(path, "pt") as f:
        assert f.get_tensor("rope_embed.periods").dtype == torch.bfloat16
    sd = ours_to_official(model.state_dict(), "features")
    del sd["rope_embed.periods"]  # a buffer the official loader does not need: rebuilt by its formula
    save_file(sd, tmp_path / "no_periods.safetensors")
    rebuilt = load_model(tmp_path / "no_periods.safetensors")
    torch.testing.assert_close(rebuilt.backbone.rope.periods.float(), model.backbone.rope.periods.float())


def test_the_prefix_tokens_pass_through_the_rotary_dtype_as_official():
    from opensapiens.models.sapiens2 import apply_rope

    x = torch.randn(1, 2, 9 + 12, 16)
    cos, sin = Sapiens2ViT("sapiens2_nano").rope(4, 3)  # bfloat16
    out = apply_rope(x, cos, sin, prefix=9)
    torch.testing.assert_close(out[:, :, :9], x[:, :, :9].to(torch.bfloat16).float(), rtol=0, atol=0)
    assert not torch.equal(out[:, :, :9], x[:, :, :9])


def test_a_pointmaps_tuple_survives_the_copy_of_a_replayed_output():
    from opensapiens.inference.optimize import FastModel

    model = _model("pointmap")
    fast = FastModel(model, compiled=model, clone_outputs=True)
    with torch.no_grad():
        points, scale = fast(torch.randn(1, 3, 256, 192))
    assert points.shape == (1, 3, 256, 192) and scale.shape == (1, 1)


def test_a_pointmap_saves_as_a_coloured_ply_of_its_valid_points(tmp_path):
    rng = np.random.default_rng(0)
    points = rng.normal(size=(4, 5, 3)).astype(np.float32)
    points[0, 0] = np.nan
    mask = np.ones((4, 5), bool)
    mask[3, 4] = False
    image = rng.integers(0, 255, (4, 5, 3), dtype=np.uint8)
    path = PointmapResult(points, (500.0, 500.0), 1.0, mask).save_ply(tmp_path / "cloud.ply", image)
    data = path.read_bytes()
    header, body = data.split(b"end_header\n", 1)
    lines = header.decode("ascii").splitlines()
    assert lines[:3] == ["ply", "format binary_little_endian 1.0", "element vertex 18"]
    assert lines[3:] == [f"property float {a}" for a in "xyz"] + [f"property uchar {c}" for c in ("red", "green",
                                                                                                  "blue")]
    rows = np.frombuffer(body, dtype=[("xyz", "<f4", 3), ("rgb", "u1", 3)])
    keep = np.isfinite(points).all(-1) & mask
    np.testing.assert_array_equal(rows["xyz"], points[keep])
    np.testing.assert_array_equal(rows["rgb"], image[keep])


def test_center_offsets_are_even_so_half_resolution_outputs_map_back():
    """v1 seg and normal heads output at half resolution: an odd offset would start the image inside an output
    pixel. The offsets are rounded down to even pixels; every image of a mixed batch maps back."""
    from opensapiens.inference.transforms import Preprocessor

    pre = Preprocessor((64, 48), resize="center")
    images = [np.zeros((30, 48, 3), np.uint8), np.zeros((64, 48, 3), np.uint8), np.zeros((50, 13, 3), np.uint8)]
    _, metas = pre(images)
    assert [m.pad[:2] for m in metas] == [(16, 0), (0, 0), (0, 14)]  # 34 // 2 = 17 -> 16; 31 // 2 = 15 -> 14
    half = torch.arange(32, dtype=torch.float32).view(1, 1, 32, 1).expand(3, 1, 32, 24)  # an output = its row
    back = pre.restore(half, metas)
    # image 0's row i sits at input row 16 + i, output row (16 + i + 0.5) / 2 - 0.5, read within the output rows
    # whose centres lie in the image (8..22: the fill never leaks in)
    expected = np.clip((16 + np.arange(30) + 0.5) / 2 - 0.5, 8, 22)
    np.testing.assert_allclose(back[0][0, :, 0].numpy(), expected, atol=1e-5)
    assert [tuple(b.shape[-2:]) for b in back] == [(30, 48), (64, 48), (50, 13)]


def test_a_sapiens2_seg_model_scores_on_goliath_classes_through_the_class_names(tmp_path):
    """``--classes goliath`` for a 29-class Sapiens2 model: its labels are mapped to the 28 by name (Eyeglass as
    Face_Neck) before scoring; the IoUs equal a count over the predictor's own labels mapped by name here."""
    from PIL import Image

    from opensapiens.evaluation.runner import evaluate_model, evaluate_saved
    from opensapiens.io import read_image

    assert main(["synth", "--n", "2", "--size", "64x48", "--seed", "5", "--out", str(tmp_path / "data")]) == 0
    predictor = load_predictor(None, export_official(_model("seg"), tmp_path / "seg.safetensors"), device="cpu",
                               input_size=(64, 48))
    result = evaluate_model("seg", predictor, tmp_path / "data", classes="goliath")
    assert result["protocol"]["predictions"].startswith("Sapiens2's 29 classes mapped")
    v1, v2 = seg_classes("goliath"), seg_classes("sapiens2")
    by_name = {i: v1.names.index("Face_Neck" if n == "Eyeglass" else n) for i, n in enumerate(v2.names)}
    tp, pred_n, gt_n = np.zeros(28), np.zeros(28), np.zeros(28)
    for image in sorted((tmp_path / "data" / "images").iterdir()):
        labels = predictor(read_image(image)).labels
        mapped = np.vectorize(by_name.get)(labels)
        gt = np.array(Image.open(tmp_path / "data" / "seg" / f"{image.stem}.png"))
        valid = gt != 255
        for c in range(28):
            tp[c] += ((mapped == c) & (gt == c) & valid).sum()
            pred_n[c] += ((mapped == c) & valid).sum()
            gt_n[c] += ((gt == c) & valid).sum()
    union = pred_n + gt_n - tp
    for c, name in enumerate(v1.names):
        if union[c] > 0:
            assert result["IoU"][name] == pytest.approx(tp[c] / union[c])
        else:
            assert np.isnan(result["IoU"][name])
    with pytest.raises(ValueError, match="--classes lists 19 classes; this model predicts 29"):
        evaluate_model("seg", predictor, tmp_path / "data", classes="face")
    np.testing.assert_equal(evaluate_model("seg", predictor, tmp_path / "data")["IoU"], result["IoU"])  # (our data:
    # Goliath's 28; assert_equal: NaN for the classes nobody has equals NaN)

    # predict's label maps, scored as saved predictions: its seg_classes.json says what the ids are
    out = tmp_path / "pred"
    assert main(["predict", "--task", "seg", "--checkpoint", str(tmp_path / "seg.safetensors"), "--device", "cpu",
                 "--input-size", "64x48", "--no-vis", "--out", str(out), str(tmp_path / "data" / "images")]) == 0
    assert json.loads((out / "seg_classes.json").read_text())["class_names"] == list(v2.names)
    saved = evaluate_saved("seg", out, tmp_path / "data" / "seg")
    np.testing.assert_equal(saved["IoU"], result["IoU"])
    assert saved["protocol"]["predictions"] == result["protocol"]["predictions"]
    with pytest.raises(ValueError, match=r"--classes lists 19 classes; the predictions \(.*seg_classes.json\) have 29"):
        evaluate_saved("seg", out, tmp_path / "data" / "seg", classes="face")
    own = evaluate_saved("seg", out, out, classes="sapiens2")  # its own maps as a 29-class ground truth: all right
    assert own["mIoU"] == 1.0 and "predictions" not in own["protocol"]

    # a folder of this model's maps takes no other model's
    v1_seg = save_model(build_model("seg", "nano", head_channels=8, pos_grid=(4, 3)), tmp_path / "v1.safetensors")
    assert main(["predict", "--task", "seg", "--checkpoint", str(v1_seg), "--device", "cpu", "--input-size", "64x48",
                 "--no-vis", "--out", str(out), str(tmp_path / "data" / "images")]) == 2
    assert json.loads((out / "seg_classes.json").read_text())["class_names"] == list(v2.names)

    (out / "seg_classes.json").write_text('{"class_names": "Background"}')  # not a record: refused, or with
    with pytest.raises(ValueError, match="not predict's record of its classes"):  # --classes, ignored
        evaluate_saved("seg", out, tmp_path / "data" / "seg")
    with pytest.warns(UserWarning, match="ignored, the ids are scored as --classes"):
        unmapped = evaluate_saved("seg", out, tmp_path / "data" / "seg", classes="goliath")
    assert "predictions" not in unmapped["protocol"] and unmapped["mIoU"] != result["mIoU"]
