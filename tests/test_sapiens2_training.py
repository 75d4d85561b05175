"""Fine-tuning Sapiens2: the recipe's defaults, starting from an official-layout file, activation checkpointing of its
blocks and heads against the plain graph, its norms under autocast, and a short run end to end."""

from __future__ import annotations

import json

import pytest
import torch

from opensapiens.checkpoints import load_model
from opensapiens.checkpoints.loading import export_official, save_model
from opensapiens.cli.main import main
from opensapiens.inference.predictors import load_predictor
from opensapiens.models import Head2Spec, build_model
from opensapiens.models.sapiens2 import RMSNorm
from opensapiens.training.config import TrainConfig, resolve
from opensapiens.training.init import load_initial_weights
from opensapiens.training.optim import param_groups
from opensapiens.training.speed import checkpoint_blocks, checkpoint_head

SMALL = {"pose": Head2Spec((16, 8), (8,), 1), "seg": Head2Spec((16, 16, 8, 8), (8,), 1),
         "normal": Head2Spec((16, 16, 8, 8), (8, 8), 3)}


def _model(task: str, seed: int = 0, out_channels: int | None = None):
    torch.manual_seed(seed)
    model = build_model(task, "sapiens2_nano", head_spec=SMALL[task], out_channels=out_channels)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma.weight"):
                p.fill_(0.3)  # attention that matters (the init's 1e-4 layer scale hides it)
    return model


@pytest.mark.parametrize("arch, lr, decay", [("sapiens2_0.4b", 5e-4, 0.8), ("sapiens2_1b", 5e-4, 0.9),
                                             ("sapiens2_5b", 1e-4, 0.94)])
def test_the_sapiens2_recipe_fills_what_is_not_given(tmp_path, arch, lr, decay):
    cfg = resolve(TrainConfig(task="seg", data="d", out=str(tmp_path), arch=arch, steps=10000))
    assert (cfg.lr, cfg.layer_decay, cfg.schedule, cfg.warmup_steps) == (lr, decay, "poly", 500)
    pose = resolve(TrainConfig(task="pose", data="d", out=str(tmp_path), arch=arch, steps=10000))
    assert pose.ohkm_topk == 0 and pose.sigma == 6.0
    with pytest.raises(ValueError, match="Sapiens2 has no depth model"):
        resolve(TrainConfig(task="depth", data="d", out=str(tmp_path), arch=arch))


def test_an_official_sapiens2_file_starts_a_fine_tune_and_a_v1_one_cannot(tmp_path):
    source = _model("seg", seed=1, out_channels=29)
    path = export_official(source, tmp_path / "sapiens2_seg.safetensors")
    model = _model("seg", seed=2, out_channels=29)
    report = load_initial_weights(model, str(path))
    assert report["skipped_head"] == "" and report["head"] > 0
    for name, tensor in source.state_dict().items():  # every tensor, the cls and storage tokens included
        torch.testing.assert_close(model.state_dict()[name], tensor, rtol=0, atol=0)
    other = _model("seg", seed=3, out_channels=5)  # other classes: all but the classifier load, as official
    report = load_initial_weights(other, str(path))
    n = len(other.head.state_dict())
    want = f"2 of its {n} tensors have other shapes in the checkpoint: final.weight, final.bias"
    assert report["skipped_head"] == want
    for name, tensor in other.head.state_dict().items():
        if not name.startswith("final."):
            torch.testing.assert_close(tensor, source.head.state_dict()[name], rtol=0, atol=0)
    assert report["head"] == n - 2
    torch.testing.assert_close(other.backbone.storage_tokens, source.backbone.storage_tokens, rtol=0, atol=0)
    v1 = save_model(build_model("seg", "nano", head_channels=8, pos_grid=(4, 3)), tmp_path / "v1.safetensors")
    with pytest.raises(ValueError, match="a Sapiens v1 backbone .* cannot start a sapiens2_nano model"):
        load_initial_weights(_model("seg"), str(v1))


def test_storage_tokens_train_with_the_patch_embedding_and_with_weight_decay_as_sapiens2s_configs():
    model = _model("pose")
    groups = param_groups(model.named_parameters(), 0.1, layer_decay=0.8, num_layers=18, decay_tokens=True)
    where = {n: g for g in groups for n in g["names"]}
    for name in ("backbone.storage_tokens", "backbone.cls_token", "backbone.patch_embed.proj.weight"):
        assert where[name]["layer_id"] == 0
    assert where["backbone.storage_tokens"]["weight_decay"] == where["backbone.cls_token"]["weight_decay"] == 0.1
    assert where["backbone.blocks.9.attn.wk.weight"]["layer_id"] == 10
    no_decay = [n for n, g in where.items() if g["weight_decay"] == 0]
    assert no_decay and all(n.endswith(".bias") or dict(model.named_parameters())[n].ndim == 1 for n in no_decay)
    v1_rule = {n: g for g in param_groups(model.named_parameters(), 0.1, 0.8, 18) for n in g["names"]}
    assert v1_rule["backbone.storage_tokens"]["weight_decay"] == 0.0  # v1's rule spares the tokens


@pytest.mark.parametrize("task", ["pose", "normal"])
def test_checkpointed_blocks_and_head_give_the_plain_graphs_gradients(task):
    """Recomputation in backward changes memory, not numbers: the checkpointed Sapiens2 blocks (which take the
    rotary tables and the prefix length besides the tokens) and heads give the same loss and gradients, and keep
    far fewer tensors for backward (counted as autograd saves them), the head alone too."""
    x = torch.randn(2, 3, 64, 48)
    grads, saved = [], {}
    for checkpointed in (False, True):
        model = _model(task).train()
        if checkpointed:
            assert checkpoint_blocks(model.backbone.blocks) == 18
            checkpoint_head(model.head)
        for part, run in (("head", lambda m=model: m.head(torch.randn(2, 64, 4, 3))), ("all", lambda m=model: m(x))):
            count = [0]

            def pack(t, count=count):
                count[0] += 1
                return t

            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                out = run()
            saved[part, checkpointed] = count[0]
        loss = out.square().mean()
        loss.backward()
        grads.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    assert saved["head", True] * 2 < saved["head", False] and saved["all", True] * 2 < saved["all", False]
    (plain_loss, plain), (ckpt_loss, ckpt) = grads
    torch.testing.assert_close(ckpt_loss, plain_loss, rtol=0, atol=0)
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], rtol=1e-6, atol=1e-9)


def test_rms_norm_under_autocast_normalizes_in_float32():
    """Under autocast (bf16 input, float32 weight) PyTorch's rms_norm has no fused kernel and says so; ours
    normalizes in float32 as autocast does LayerNorm, and gives the float64 result rounded once."""
    import warnings

    norm = RMSNorm(64)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 1.5, 64))
    x = (torch.randn(4, 7, 64) * 3).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16), warnings.catch_warnings():
        warnings.simplefilter("error")  # "Mismatch dtype between input and weight ... Cannot dispatch to fused"
        got = norm(x)
    x64 = x.double()
    want = x64 / torch.sqrt(x64.square().mean(-1, keepdim=True) + 1e-6) * norm.weight.double()
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.double(), want.to(torch.bfloat16).double(), rtol=0, atol=0)


def test_a_short_sapiens2_normal_fine_tune_writes_a_sapiens2_model(tmp_path, capsys):
    init = export_official(_model("normal"), tmp_path / "init.safetensors")
    run = tmp_path / "run"
    argv = ["train", "--task", "normal", "--data", "synth", "--init", str(init), "--steps", "3", "--input-size",
            "64x48", "--batch-size", "2", "--device", "cpu", "--checkpointing", "blocks+head", "--out", str(run)]
    assert main(argv) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["arch"] == "sapiens2_nano" and config["schedule"] == "poly"
    model = load_model(run / "final.safetensors")
    assert model.config.generation == 2 and model.config.head_spec == SMALL["normal"]
    predictor = load_predictor(None, run / "final.safetensors", device="cpu")
    assert predictor.input_size == (64, 48) and predictor.preprocess.resize == "center"
    capsys.readouterr()
    assert main(["train", "--task", "seg", "--data", "synth", "--arch", "sapiens2_nano", "--classes", "sapiens2",
                 "--steps", "1", "--input-size", "64x48", "--device", "cpu", "--out", str(tmp_path / "r2")]) == 2
    assert "--data synth labels the 28 Goliath classes, not the 29" in capsys.readouterr().err


def test_a_sapiens2_run_resumes_with_its_heads_widths_after_its_init_file_is_gone(tmp_path):
    init = export_official(_model("pose", out_channels=308), tmp_path / "init.safetensors")
    run = tmp_path / "run"
    argv = ["train", "--task", "pose", "--data", "synth", "--steps", "2", "--input-size", "64x48", "--batch-size", "1",
            "--device", "cpu", "--ckpt-interval", "1", "--out", str(run)]
    assert main([*argv, "--init", str(init)]) == 0
    init.unlink()
    argv[argv.index("--steps") + 1] = "3"
    assert main([*argv, "--resume"]) == 0
    assert json.loads((run / "config.json").read_text())["head_spec"] == SMALL["pose"].to_dict()
    assert load_model(run / "final.safetensors").config.head_spec == SMALL["pose"]


def test_arch_spellings_generations_and_head_options_resolve_or_are_refused_clearly(tmp_path):
    init = export_official(_model("normal"), tmp_path / "init.safetensors")
    cfg = resolve(TrainConfig(task="normal", data="d", out=str(tmp_path), arch="Sapiens2-Nano", init=str(init)))
    assert cfg.head_spec == SMALL["normal"].to_dict()  # the same size, however it is written
    with pytest.raises(ValueError, match="--head-channels narrows a Sapiens v1 head"):
        resolve(TrainConfig(task="normal", data="d", out=str(tmp_path), arch="sapiens2_nano", head_channels=16))
    with pytest.raises(ValueError, match="holds a Sapiens2 backbone .* --arch nano is the other generation"):
        resolve(TrainConfig(task="normal", data="d", out=str(tmp_path), arch="nano", init=str(init)))


def test_a_sapiens2_model_reports_the_attention_it_runs_on():
    """The FA4 and Triton kernels replace v1's attention layers; a Sapiens2 model stays on SDPA and says so."""
    from opensapiens.training.speed import use_fast_attention

    assert use_fast_attention(_model("pose"), torch.device("cuda"), "fa4") == "sdpa"  # (returns before any CUDA call)


def test_the_nhwc_head_layout_is_kept_for_v1_heads_only():
    """Measured (docs/performance.md): NHWC speeds v1's deconvolution heads' step, and slows every Sapiens2 head
    measured (seg's deconvolutions, normal's and pointmap's pixel shuffles); ``train`` asks ``channels_last_pays``
    before applying it."""
    from opensapiens.inference.optimize import channels_last_pays

    assert channels_last_pays(build_model("seg", "nano", head_channels=8).head)
    assert channels_last_pays(build_model("pose", "nano", head_channels=8).head)
    for task in ("pose", "seg", "normal"):
        assert not channels_last_pays(_model(task).head)
    assert not channels_last_pays(build_model("pointmap", "sapiens2_nano", head_spec=SMALL["normal"]).head)


def test_a_sapiens2_seg_head_starts_a_goliath_fine_tune_with_its_classifier_rows_by_name(tmp_path):
    """Labels are the data's (--classes goliath by default, whatever --init predicts); a Sapiens2 seg file still gives
    a Goliath 28-class model its whole head: the classifier row of each class is the 29-class one of the same name
    (Eyeglass left out). Classes of their own take no row."""
    from opensapiens.metadata import seg_classes

    source = _model("seg", out_channels=29)
    path = export_official(source, tmp_path / "s2seg.safetensors")
    cfg = resolve(TrainConfig(task="seg", data="d", out=str(tmp_path / "a"), init=str(path)))
    assert cfg.classes == "goliath" and cfg.head_spec == SMALL["seg"].to_dict()
    v1, v2 = seg_classes("goliath").names, seg_classes("sapiens2").names
    model = build_model("seg", "sapiens2_nano", out_channels=28, head_spec=SMALL["seg"], class_names=list(v1))
    report = load_initial_weights(model, str(path))
    assert report["skipped_head"] == "" and report["head"] == len(model.head.state_dict()) and report["mapped"]
    for c, name in enumerate(v1):
        for p in ("weight", "bias"):
            torch.testing.assert_close(getattr(model.head.final, p)[c], getattr(source.head.final, p)[v2.index(name)],
                                       rtol=0, atol=0)
    own = build_model("seg", "sapiens2_nano", out_channels=28, head_spec=SMALL["seg"],
                      class_names=[f"part_{i}" for i in range(28)])
    report = load_initial_weights(own, str(path))
    assert not report["mapped"] and "final.weight" in report["skipped_head"]
    narrow = build_model("seg", "sapiens2_nano", out_channels=28, head_spec=Head2Spec((16, 16, 8, 8), (4,), 1),
                         class_names=list(v1))  # the classifier's input width differs too: no rows to take
    report = load_initial_weights(narrow, str(path))
    assert not report["mapped"] and "final.weight" in report["skipped_head"]


