"""ONNX export (``checkpoints.onnx_export``, ``opensapiens convert OUT.onnx``), checked by running the graph in
onnxruntime, a runtime of its own, against the PyTorch model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("onnxscript")  # the [onnx] extra (installed with [test]; absent on the GPU image)
ort = pytest.importorskip("onnxruntime")

from opensapiens.checkpoints import export_onnx, onnx_export, save_model  # noqa: E402
from opensapiens.cli.main import main  # noqa: E402

from conftest import make_official_state  # noqa: E402


def _run(path, x: torch.Tensor) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {session.get_inputs()[0].name: x.numpy()})))


def _relative(a: np.ndarray, b: torch.Tensor) -> float:
    b = b.double().numpy()
    return float(np.abs(a.astype(np.float64) - b).max() / np.abs(b).max())


@pytest.mark.parametrize("task,channels", [("pose", 17), ("seg", 28), ("depth", 1), ("normal", 3)])
def test_the_graph_computes_what_the_model_does_at_any_batch_size(tmp_path, task, channels):
    model, _ = make_official_state(task, channels)  # position grid 8x6: trained at 128x96
    path = export_onnx(model, tmp_path / f"{task}.onnx")
    for batch in (1, 3):  # exported with 2: the batch is dynamic
        x = torch.randn(batch, 3, 128, 96, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            want = model(x)
        (got,) = _run(path, x).values()
        assert got.shape == tuple(want.shape) and _relative(got, want) < 1e-4


def test_another_input_size_a_multitask_model_and_fp16(tmp_path):
    """At another size than the model's own the position embedding is resized as in PyTorch; a multi-task model
    gives one output per task, by name; fp16 keeps fp16 weights and leaves the caller's model in fp32."""
    from opensapiens.checkpoints import load_model

    model, _ = make_official_state("seg", 28)
    model.train()  # as mid-training: exported in eval mode, and left training
    path = export_onnx(model, tmp_path / "seg.onnx", input_size=(64, 80))
    assert model.training and all(m.training for m in model.modules())
    model.eval()
    x = torch.randn(2, 3, 64, 80, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert _relative(_run(path, x)["seg"], model(x)) < 1e-4

    nano = load_model("sapiens-nano")
    path = export_onnx(nano, tmp_path / "nano.onnx")  # its own 256x192
    x = torch.randn(1, 3, 256, 192, generator=torch.Generator().manual_seed(1))
    got = _run(path, x)
    with torch.no_grad():
        want = nano(x)
    assert sorted(got) == sorted(want) == ["depth", "normal", "pose", "seg"]
    assert all(_relative(got[t], want[t]) < 1e-4 for t in want)

    import onnx

    path = export_onnx(model, tmp_path / "seg16.onnx", dtype="fp16")
    assert next(model.parameters()).dtype == torch.float32
    weights = {i.data_type for i in onnx.load(str(path)).graph.initializer if len(i.dims) > 1}
    assert weights == {onnx.TensorProto.FLOAT16}
    x = torch.randn(1, 3, 128, 96, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert _relative(_run(path, x.half())["seg"], model(x)) < 2e-2


def test_large_weights_go_beside_the_graph_and_nothing_is_left_half_written(tmp_path, monkeypatch):
    model, _ = make_official_state("depth")
    monkeypatch.setattr(onnx_export, "PROTOBUF_LIMIT", 1000)  # as a 1B model's 4 GB in fp32
    out = tmp_path / "models"
    path = export_onnx(model, out / "depth.onnx")
    assert sorted(p.name for p in out.iterdir()) == ["depth.onnx", "depth.onnx.data"]  # no temporary folder left
    assert path.stat().st_size < (out / "depth.onnx.data").stat().st_size
    x = torch.randn(1, 3, 128, 96, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert _relative(_run(path, x)["depth"], model(x)) < 1e-4

    def broken(*args, **kwargs):
        raise RuntimeError("export failed midway")

    monkeypatch.setattr(onnx_export, "PROTOBUF_LIMIT", 2 << 30)  # the same name again, weights inside the graph:
    export_onnx(model, out / "depth.onnx")  # the earlier weights file goes, not left beside it unreferenced
    assert sorted(p.name for p in out.iterdir()) == ["depth.onnx"]
    with torch.no_grad():
        assert _relative(_run(out / "depth.onnx", x)["depth"], model(x)) < 1e-4

    monkeypatch.setattr(torch.onnx, "export", broken)
    with pytest.raises(RuntimeError, match="midway"):
        export_onnx(model, out / "other.onnx")
    assert sorted(p.name for p in out.iterdir()) == ["depth.onnx"]


def test_convert_writes_and_checks_an_onnx_file_and_refuses_what_does_not_apply(tmp_path, capsys, monkeypatch):
    model, _ = make_official_state("pose", 17)
    ckpt = save_model(model, tmp_path / "pose.safetensors")
    assert main(["convert", str(ckpt), str(tmp_path / "pose.ONNX"), "--input-size", "64x48"]) == 0  # any case
    out = capsys.readouterr().out
    assert "wrote" in out and "onnxruntime vs PyTorch" in out
    err = float(out.split("pose ")[-1])
    assert err < 1e-4
    x = torch.randn(2, 3, 64, 48, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert _relative(_run(tmp_path / "pose.ONNX", x)["pose"], model(x)) < 1e-4

    assert main(["convert", str(ckpt), str(tmp_path / "x.onnx"), "--official"]) == 2
    assert main(["convert", str(ckpt), str(tmp_path / "x.safetensors"), "--dtype", "fp16"]) == 2
    with pytest.raises(SystemExit):  # 40: not a multiple of 16
        main(["convert", str(ckpt), str(tmp_path / "x.onnx"), "--input-size", "64x40"])
    capsys.readouterr()
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else
                        find_spec(name, *a))
    assert main(["convert", str(ckpt), str(tmp_path / "y.onnx")]) == 2
    assert "pip install 'opensapiens[onnx]'" in capsys.readouterr().err
    assert not (tmp_path / "y.onnx").exists()
