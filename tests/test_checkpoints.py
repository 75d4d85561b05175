"""Reading official checkpoint containers safely, the lite formats, our safetensors, names and offline errors."""

from __future__ import annotations

import io
import os
import pickle
import zipfile

import pytest
import torch
from torch import nn

from opensapiens.checkpoints import (
    CheckpointError,
    export_official,
    load_model,
    parse_name,
    read_state_dict,
    resolve_checkpoint,
    save_model,
)

from conftest import TINY, make_official_state, save_mmengine_checkpoint


def _same_outputs(a: nn.Module, b: nn.Module, hw=(128, 96)) -> bool:
    x = torch.randn(1, 3, *hw)
    with torch.no_grad():
        return torch.allclose(a(x), b(x), atol=1e-5, rtol=1e-5)


def test_mmengine_container_with_unknown_meta_class(tmp_path, mmengine_like_meta):
    model, official = make_official_state("pose", 17)
    path = tmp_path / "sapiens_tiny_coco_best_coco_AP_1.pth"
    save_mmengine_checkpoint(path, official, mmengine_like_meta)
    # torch's own safe loader refuses this file: the class in `meta` is not importable / not allow-listed.
    with pytest.raises(Exception):  # noqa: B017 - torch raises UnpicklingError or AttributeError depending on version
        torch.load(path, weights_only=True)
    sd, _ = read_state_dict(path)
    assert sd.keys() == official.keys() and all(torch.equal(sd[k], official[k]) for k in sd)
    assert _same_outputs(load_model(path, num_heads=TINY.num_heads), model)


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch " + _Evil.marker,))


def test_pickled_code_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    _Evil.marker = str(marker)
    _, official = make_official_state("depth")
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": official, "meta": {"hook": _Evil()}}, path)
    sd, _ = read_state_dict(path)
    assert not marker.exists()
    assert "backbone.pos_embed" in sd


def _official_module_tree(state: dict[str, torch.Tensor]) -> nn.Module:
    """An nn.Module whose attribute tree reproduces the official names (what the lite TorchScript files trace)."""
    root = nn.Module()
    for key, value in state.items():
        *path, leaf = key.split(".")
        mod = root
        for part in path:
            if not hasattr(mod, part):
                mod.add_module(part, nn.Module())
            mod = getattr(mod, part)
        mod.register_parameter(leaf, nn.Parameter(value.clone()))

    class Traced(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = root.backbone
            self.decode_head = root.decode_head
            self.data_preprocessor = nn.Module()  # mmseg's preprocessor constants travel in the traced file
            self.data_preprocessor.register_buffer("mean", torch.zeros(3), persistent=False)

        def forward(self, x):
            return x * self.backbone.ln1.weight.sum() + self.decode_head.conv_seg.bias.sum()

    return Traced()


def test_torchscript_lite_file(tmp_path):
    model, official = make_official_state("seg", 28)
    traced = torch.jit.trace(_official_module_tree(official).eval(), torch.randn(1, 3, 8, 8))
    path = tmp_path / "sapiens_tiny_goliath_best_goliath_mIoU_1_torchscript.pt2"
    traced.save(str(path))
    assert _same_outputs(load_model(path, num_heads=TINY.num_heads), model)


def test_torch_export_archive_with_nested_state_dict(tmp_path):
    model, official = make_official_state("normal")
    buf = io.BytesIO()
    torch.save({k: v.to(torch.bfloat16) for k, v in official.items()}, buf)
    path = tmp_path / "sapiens_tiny_normal_render_people_epoch_1_bfloat16.pt2"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/serialized_exported_program.json", "{}")
        zf.writestr("archive/serialized_state_dict.pt", buf.getvalue())
    loaded = load_model(path, num_heads=TINY.num_heads)
    assert loaded.task == "normal" and loaded.config.patch_padding == 2
    assert loaded.backbone.pos_embed.dtype == torch.float32  # stored bf16, loaded in the requested fp32


def test_safetensors_roundtrip_and_official_export(tmp_path):
    model, _ = make_official_state("pose", 308)
    st = save_model(model, tmp_path / "m.safetensors")
    again = load_model(st)  # architecture, head count and padding come from the metadata
    assert again.config.arch == model.config.arch and again.config.patch_padding == 2
    assert _same_outputs(again, model)
    pth = export_official(again, tmp_path / "official.pth")
    sd = torch.load(pth, weights_only=True)["state_dict"]
    assert "head.final_layer.weight" in sd and "backbone.layers.1.ffn.layers.0.0.weight" in sd
    assert _same_outputs(load_model(pth, num_heads=TINY.num_heads), model)
    assert _same_outputs(load_model(st, task="features"), model.backbone)


def test_loading_takes_the_weights_without_a_random_init(tmp_path):
    """Loading builds the model without initializing it (seconds of CPU for 1B, overwritten anyway): the global RNG
    is untouched, the weights equal the file's bit for bit in the requested dtype, and the result is an ordinary
    trainable model (every tensor real, on the CPU, parameters requiring grad). The multi-task file too."""
    from opensapiens.checkpoints import load_multitask
    from opensapiens.checkpoints.hub import BUNDLED

    model, _ = make_official_state("seg", 28)
    st = save_model(model, tmp_path / "m.safetensors", dtype=torch.bfloat16)
    for load, path in ((load_model, st), (load_multitask, BUNDLED)):
        for dtype in (None, "bf16"):
            torch.manual_seed(0)
            rng = torch.get_rng_state()
            loaded = load(path, dtype=dtype)
            assert torch.equal(torch.get_rng_state(), rng)
            stored, _ = read_state_dict(path)
            state = loaded.state_dict()
            assert state.keys() == stored.keys()
            want = torch.float32 if dtype is None else torch.bfloat16
            assert all(torch.equal(state[k], v.to(want)) and state[k].dtype == want for k, v in stored.items())
            assert all(t.device.type == "cpu" for t in [*loaded.parameters(), *loaded.buffers()])
            assert all(p.requires_grad for p in loaded.parameters()) and not loaded.training


def test_bad_files_give_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        read_state_dict(tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match="is a folder without model.safetensors .*; give the checkpoint file"):
        read_state_dict(tmp_path)
    torch.save(nn.Linear(2, 2), tmp_path / "whole.pth")
    with pytest.raises(CheckpointError, match=r"torch.save\(model\) cannot be read .* save model.state_dict"):
        read_state_dict(tmp_path / "whole.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"this is not a checkpoint at all")
    with pytest.raises(CheckpointError, match="junk.pth"):
        read_state_dict(junk)
    legacy = tmp_path / "legacy.pth"
    legacy.write_bytes(pickle.dumps({"a": 1}, protocol=2))
    with pytest.raises(CheckpointError, match="legacy"):
        read_state_dict(legacy)
    nohead = tmp_path / "nohead.pth"
    torch.save({"state_dict": {"foo.weight": torch.zeros(2)}}, nohead)
    with pytest.raises(CheckpointError, match="no Sapiens backbone"):
        load_model(nohead)
    good, cut = tmp_path / "good.pth", tmp_path / "cut.pth"
    torch.save({"w": torch.zeros(64)}, good)
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(cut, "w") as dst:  # the storage loses half its bytes
        for name in src.namelist():
            data = src.read(name)
            dst.writestr(name, data[: len(data) // 2] if name.endswith("data/0") else data)
    with pytest.raises(CheckpointError, match="cut.pth: corrupt"):
        read_state_dict(cut)
    _, official = make_official_state("seg", 4)
    segfile = tmp_path / "seg.pth"
    torch.save(official, segfile)
    with pytest.raises(CheckpointError, match="up-sampling"):
        load_model(segfile, task="pose", num_heads=TINY.num_heads)


def test_official_names_resolve_offline(tmp_path, offline_hub):
    hub = parse_name("sapiens-seg-1b")
    assert hub.repo_id == "facebook/sapiens-seg-1b"
    assert hub.filename == "sapiens_1b_goliath_best_goliath_mIoU_7994_epoch_151.pth"
    assert parse_name("pose-0.3b").filename == "sapiens_0.3b_goliath_best_goliath_AP_573.pth"
    assert parse_name("sapiens-pretrain-2b").filename == "sapiens_2b_epoch_660_clean.pth"
    assert parse_name("sapiens-depth-1b-torchscript").filename == "sapiens_1b_render_people_epoch_88_torchscript.pt2"
    assert parse_name("sapiens-pose-17-1b").repo_id == "noahcao/sapiens-pose-coco"
    with pytest.raises(FileNotFoundError, match="no official pose-308 checkpoint"):
        parse_name("sapiens-pose-308-2b")

    with pytest.raises(FileNotFoundError) as err:
        resolve_checkpoint("sapiens-normal-0.3b")
    msg = str(err.value)
    assert "sapiens_0.3b_normal_render_people_epoch_66.pth" in msg
    assert "huggingface.co/facebook/sapiens-normal-0.3b" in msg
    assert str(tmp_path / "local") in msg

    # A file in the Hugging Face cache layout is found offline through huggingface_hub itself.
    snap = tmp_path / "hf" / "models--facebook--sapiens-normal-0.3b" / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    model, official = make_official_state("normal")
    torch.save({"state_dict": official}, snap / hub_normal_file())
    (tmp_path / "hf" / "models--facebook--sapiens-normal-0.3b" / "refs").mkdir()
    (tmp_path / "hf" / "models--facebook--sapiens-normal-0.3b" / "refs" / "main").write_text("a" * 40)
    assert resolve_checkpoint("sapiens-normal-0.3b") == snap / hub_normal_file()
    assert _same_outputs(load_model("sapiens-normal-0.3b", num_heads=TINY.num_heads), model)
    assert resolve_checkpoint(hub_normal_file()) == snap / hub_normal_file()  # the official file's own name too
    with pytest.raises(FileNotFoundError, match="Download it from https://huggingface.co/facebook/sapiens-pose-1b"):
        resolve_checkpoint("sapiens_1b_goliath_best_goliath_AP_639.pth")
    with pytest.raises(FileNotFoundError, match="huggingface.co/facebook/sapiens-seg-1b-torchscript"):
        resolve_checkpoint("sapiens_1b_goliath_best_goliath_mIoU_7994_epoch_151_torchscript.pt2")  # a lite export's

    # ... and a file dropped into $OPENSAPIENS_CHECKPOINTS takes precedence.
    (tmp_path / "local").mkdir()
    torch.save({"state_dict": official}, tmp_path / "local" / hub_normal_file())
    assert resolve_checkpoint("normal-0.3b") == tmp_path / "local" / hub_normal_file()


def hub_normal_file() -> str:
    return "sapiens_0.3b_normal_render_people_epoch_66.pth"


def test_coco_pose_files_live_in_the_third_party_repo_layout():
    """noahcao/sapiens-pose-coco mirrors the official tree: sapiens_host/pose/... for .pth, and
    sapiens_lite_host/$MODE/pose/... for the lite exports."""
    pth, lite = parse_name("sapiens-pose-17-1b"), parse_name("sapiens-pose-133-0.3b-bfloat16")
    assert pth.subfolder == "sapiens_host/pose/checkpoints/sapiens_1b"
    assert lite.subfolder == "sapiens_lite_host/bfloat16/pose/checkpoints/sapiens_0.3b"
    assert lite.filename == "sapiens_0.3b_coco_wholebody_best_coco_wholebody_AP_620_bfloat16.pt2"


def test_checkpoint_folder_from_the_environment_expands_home(tmp_path, monkeypatch):
    from opensapiens.checkpoints.hub import local_dir

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("OPENSAPIENS_CHECKPOINTS", "~/ckpts")
    assert local_dir() == tmp_path / "ckpts"
    monkeypatch.setenv("OPENSAPIENS_CHECKPOINTS", "")  # set but empty: the default
    assert local_dir() == tmp_path / ".cache" / "opensapiens"


@pytest.mark.parametrize("task", ["pose", "normal"])
def test_a_task_files_backbone_loaded_as_features_keeps_its_patch_padding(tmp_path, task):
    """Pose and normal backbones were fine-tuned with padding 2: as features they must keep it, from the official
    .pth as from our safetensors."""
    model, official = make_official_state(task, 308 if task == "pose" else None)
    path = tmp_path / "official.pth"
    torch.save({"state_dict": official}, path)
    for src in (path, save_model(model, tmp_path / "ours.safetensors")):
        features = load_model(src, task="features", num_heads=TINY.num_heads)
        assert features.config.patch_padding == 2
        assert _same_outputs(features, model.backbone)


def test_official_export_refuses_what_the_layout_cannot_record(tmp_path):
    from opensapiens.checkpoints.hub import BUNDLED
    from opensapiens.cli.main import main

    with pytest.raises(CheckpointError, match="one task"):
        export_official(load_model(BUNDLED), tmp_path / "nano.pth")
    assert main(["convert", str(BUNDLED), str(tmp_path / "nano.pth"), "--official"]) == 2
    seg = load_model(BUNDLED, task="seg")  # one task of it: exported, and read back the same
    assert _same_outputs(load_model(export_official(seg, tmp_path / "seg.pth"), num_heads=seg.config.arch.num_heads),
                         seg)

    model, official = make_official_state("pose", 17)
    torch.save({"state_dict": official}, tmp_path / "pose.pth")
    unofficial = load_model(tmp_path / "pose.pth", num_heads=TINY.num_heads, patch_padding=0)
    with pytest.raises(CheckpointError, match="patch padding 0"):
        export_official(unofficial, tmp_path / "out.pth")
    landscape, _ = make_official_state("seg", 28, pos_grid=(6, 8))
    with pytest.raises(CheckpointError, match=r"position grid \(6, 8\)"):
        export_official(landscape, tmp_path / "out.pth")
    three, three_official = make_official_state("seg", 3)  # a reader of the layout makes normals of it
    torch.save({"state_dict": three_official}, tmp_path / "three.pth")
    assert load_model(tmp_path / "three.pth", num_heads=TINY.num_heads).task == "normal"
    with pytest.raises(CheckpointError, match="3-class seg head has the shape of a normal head"):
        export_official(three, tmp_path / "out.pth")


def test_a_multitask_files_task_takes_a_patch_padding_override():
    from opensapiens.checkpoints.hub import BUNDLED

    default = load_model(BUNDLED, task="pose").config.patch_padding
    assert load_model(BUNDLED, task="pose", patch_padding=2 - default).config.patch_padding == 2 - default


def test_saved_models_get_the_permissions_of_any_output(tmp_path):
    """safetensors makes its file 0600; a model written for others to load gets what open() gives under the umask."""
    model, _ = make_official_state("seg", 4)
    old = os.umask(0o022)
    try:
        path = save_model(model, tmp_path / "m.safetensors")
        official = export_official(model, tmp_path / "m_official.safetensors")
    finally:
        os.umask(old)
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o644) and oct(os.stat(official).st_mode & 0o777) == oct(0o644)


def test_a_bare_official_file_name_is_found_in_the_checkpoint_folder(tmp_path, monkeypatch):
    name = "sapiens_0.3b_normal_render_people_epoch_66.pth"
    monkeypatch.setenv("OPENSAPIENS_CHECKPOINTS", str(tmp_path / "local"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "local").mkdir()
    torch.save({"state_dict": make_official_state("normal")[1]}, tmp_path / "local" / name)
    assert resolve_checkpoint(name) == tmp_path / "local" / name


@pytest.mark.parametrize("damage", ["truncated", "png"])
def test_a_truncated_pth_or_another_kind_of_file_is_not_called_a_corrupt_safetensors_file(tmp_path, damage):
    path = tmp_path / "model.pth"
    torch.save({"state_dict": {"w": torch.zeros(1000)}}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\x89PNG\r\n\x1a\n" + bytes(64))
    with pytest.raises(CheckpointError, match="not a safetensors file nor a complete zip-format PyTorch checkpoint"):
        read_state_dict(path)


def test_a_checkpoint_loaded_as_another_task_names_the_task_its_head_has(tmp_path):
    _, sd = make_official_state("seg", out_channels=5)
    torch.save({"state_dict": sd}, tmp_path / "seg.pth")
    with pytest.raises(CheckpointError, match=r"holds a seg head \(3 up-sampling layers\), not pose \(a pose head "
                                              r"has 2\)"):
        load_model(tmp_path / "seg.pth", task="pose")


def test_a_corrupt_or_empty_safetensors_file_is_a_checkpoint_error_wherever_it_is_opened(tmp_path):
    """Loading without a task reads the header first (is it a multi-task file?): that read raised safetensors' own
    error, a traceback in every command."""
    empty, folder = tmp_path / "empty.safetensors", tmp_path / "folder.safetensors"
    empty.write_bytes(b"")
    folder.mkdir()
    for path in (empty, folder):
        with pytest.raises(CheckpointError, match=f"{path.name}: "):
            load_model(path)


def test_a_training_checkpoint_s_weights_are_found_beside_its_step_tensors(tmp_path):
    _, sd = make_official_state("seg", out_channels=5)
    path = tmp_path / "train.pth"
    torch.save({"state_dict": sd, "epoch": torch.tensor(3)}, path)  # one tensor at the top: half of two entries
    assert read_state_dict(path)[0].keys() == sd.keys()
    torch.save({"model": sd, "step": torch.tensor(10), "lr": 0.1}, path)
    assert read_state_dict(path)[0].keys() == sd.keys()


def test_a_misspelled_official_name_gets_the_close_ones_suggested(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENSAPIENS_CHECKPOINTS", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    for typo, meant in (("sapiens-pos-1b", "sapiens-pose-1b"), ("sapiens-sge-2b", "sapiens-seg-2b")):
        with pytest.raises(FileNotFoundError, match=f"did you mean {meant}"):
            resolve_checkpoint(typo)


def test_an_official_width_with_fewer_blocks_is_warned_about():
    """Depth is counted from the block keys: a 0.3B file that lost its last blocks would load as a shallower model."""
    import warnings

    from opensapiens.models.vit import arch_from_width

    with pytest.warns(UserWarning, match="width 1024 is Sapiens-0.3b's, but the checkpoint has 23 blocks, not 24"):
        assert arch_from_width(1024, 23).depth == 23
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert arch_from_width(1024, 24).name == "0.3b" and arch_from_width(128, 6).name == "nano"


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "model.", "module._orig_mod."])
@pytest.mark.parametrize("layout", ["ours", "official"])
def test_a_state_dict_saved_from_a_wrapped_model_loads(tmp_path, prefix, layout):
    """DDP / FSDP (module.), torch.compile (_orig_mod.) and Lightning-style (model.) wrappers prefix every key."""
    model, official = make_official_state("seg", 5)
    sd = model.state_dict() if layout == "ours" else official
    torch.save({prefix + k: v for k, v in sd.items()}, tmp_path / "wrapped.pth")
    loaded = load_model(tmp_path / "wrapped.pth", task="seg", num_heads=TINY.num_heads)
    assert _same_outputs(loaded, model)


def test_tensors_of_dtypes_without_a_typed_storage_are_read(tmp_path):
    """float8 and uint16 tensors are pickled with their dtype beside untyped bytes (_rebuild_tensor_v3): they used to
    become inert records, dropped from the state dict and reported as missing keys."""
    path = tmp_path / "fp8.pth"
    fp8 = torch.randn(3, 4).to(torch.float8_e4m3fn)
    view = torch.arange(6, dtype=torch.int32).to(torch.uint16).reshape(2, 3)[:, 1:]  # offset and strides kept
    torch.save({"w": fp8, "v": view, "b": torch.randn(2)}, path)
    sd, _ = read_state_dict(path)
    assert sd["w"].dtype == torch.float8_e4m3fn and torch.equal(sd["w"].float(), fp8.float())
    assert sd["v"].dtype == torch.uint16 and torch.equal(sd["v"].int(), view.int())


def test_a_sapiens2_name_finds_its_file_in_the_repos_task_folder_or_where_the_listing_says(tmp_path, monkeypatch,
                                                                                            offline_hub):
    """Sapiens2's Hub layout is known only from its docs' local paths (pose/sapiens2_0.4b_pose.safetensors): the
    file is found at the root, in its task's folder (offline, from the Hugging Face cache), or wherever the repo's
    listing has it (online); the real huggingface_hub does the finding."""
    import huggingface_hub

    repo = tmp_path / "hf" / "models--facebook--sapiens2-pose-0.4b"
    snap = repo / "snapshots" / ("b" * 40)
    (snap / "pose").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("b" * 40)
    (snap / "pose" / "sapiens2_0.4b_pose.safetensors").write_bytes(b"weights")
    assert resolve_checkpoint("sapiens2-pose-0.4b") == snap / "pose" / "sapiens2_0.4b_pose.safetensors"

    moved = snap / "checkpoints" / "sapiens2_0.4b_pose.safetensors"
    moved.parent.mkdir()
    (snap / "pose" / "sapiens2_0.4b_pose.safetensors").rename(moved)
    with pytest.raises(FileNotFoundError, match="could not find or download sapiens2_0.4b_pose.safetensors"):
        resolve_checkpoint("sapiens2-pose-0.4b")  # offline, where no listing can say where it went
    listed = ["README.md", "checkpoints/sapiens2_0.4b_pose.safetensors"]
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", lambda self, repo_id, **kw: listed)
    assert resolve_checkpoint("sapiens2-pose-0.4b") == moved
    listed.append("old/sapiens2_0.4b_pose.safetensors")  # two candidates: which is meant is unknown
    with pytest.raises(FileNotFoundError, match="could not find or download"):
        resolve_checkpoint("sapiens2-pose-0.4b")
