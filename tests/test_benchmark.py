"""The benchmark helpers: kernel kinds from real kernel names, and a profile split by kind."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from opensapiens.benchmark import kernel_kind, time_by_kind, time_ms_or_error

# kernel names from H200 profiles of this project (bench/results/mae_0.3b_diag.log and the seg training profile)
H200_KERNELS = {
    "cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma_f16_knob_26_64x64x64_1x4x1_cga1x1x1_kernel0_0":
        "attention",
    "cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_7_64x128x64_4x1x1_cga1x1x1_kernel0_0":
        "attention",
    "void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128, 64, 4>>": "attention",
    "nvjet_sm90_tst_128x288_64x4_2x1_v_bz_coopA_bias_TNT": "GEMM",
    "void cublasLt::splitKreduce_kernel<32, 16, int, float, __nv_bfloat16>": "other (eager elementwise, copies, "
                                                                              "reductions, optimizer)",
    "void precomputed_convolve_sgemm<__nv_bfloat16, 128, 6, 7, 3, 3, 5, 0, false>": "convolution",
    "sm90_xmma_dgrad_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc": "convolution",
    "void cudnn::engines_precompiled::nchwToNhwcKernel<__nv_bfloat16>": "convolution",
    "triton_per_fused__to_copy_add_native_layer_norm_native_layer_norm_backward_9": "fused elementwise/norm "
                                                                                   "(Triton)",
    "_shifted_layer_norm_kernel": "fused elementwise/norm (Triton)",  # ours, opensapiens/inference/kernels.py
    "_rows_to_e4m3_kernel": "fused elementwise/norm (Triton)",
    "_qk_norm_rope_kernel": "fused elementwise/norm (Triton)",  # Sapiens2's, the same file
    "_swiglu_kernel": "fused elementwise/norm (Triton)",
    # a compiled head's InstanceNorm + SiLU: named after its ops, convolution among them, but not a convolution
    "triton_red_fused__native_batch_norm_legit_convolution_silu_view_1": "fused elementwise/norm (Triton)",
    "cpp_fused__native_batch_norm_legit_convolution_silu_0": "fused elementwise/norm (Triton)",
    "aten::convolution": "convolution",
    "void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>>": "other (eager "
                                                                                         "elementwise, copies, "
                                                                                         "reductions, optimizer)",
}


@pytest.mark.parametrize("name,kind", list(H200_KERNELS.items()))
def test_kernel_kinds_of_real_kernel_names(name, kind):
    assert kernel_kind(name) == kind


def test_time_by_kind_splits_a_cpu_profile_and_sums_to_the_total():
    torch.manual_seed(0)
    a, b = torch.randn(256, 256), torch.randn(256, 256)
    img, w = torch.randn(1, 16, 64, 64), torch.randn(16, 16, 3, 3)
    q = torch.randn(1, 2, 128, 32)

    def work():
        a @ b
        F.conv2d(img, w, padding=1)
        F.scaled_dot_product_attention(q, q, q)

    kinds = time_by_kind(work, torch.device("cpu"), calls=2)
    assert {"GEMM", "convolution", "attention"} <= set(kinds)
    assert all(v > 0 for v in kinds.values())
    parts = sum(v for k, v in kinds.items() if k != "total")
    assert kinds["total"] == pytest.approx(parts, abs=1e-2)  # each value rounded to the microsecond
    assert list(kinds)[:-1] == sorted((k for k in kinds if k != "total"), key=lambda k: -kinds[k])


def test_time_ms_or_error_records_a_failing_candidate_and_times_the_others():
    def fails():
        raise RuntimeError("out of resource: shared memory\nmore detail")

    assert time_ms_or_error(fails, torch.device("cpu")) == {"error": "RuntimeError: out of resource: shared memory"}
    calls = []
    r = time_ms_or_error(lambda: calls.append(1), torch.device("cpu"), iters=3)
    assert set(r) == {"ms"} and r["ms"] >= 0 and len(calls) >= 1 + 3  # one trial call, then the timed ones


def test_write_json_makes_the_folder_and_skips_without_a_path(tmp_path):
    from opensapiens.benchmark import write_json

    result = {"device": "cpu", "rows": [{"ms": 1.5}]}
    path = tmp_path / "a" / "b" / "r.json"
    write_json(path, result)
    assert json.loads(path.read_text()) == result
    write_json(None, result)  # no --out: nothing written, nothing raised
    assert [p.name for p in tmp_path.rglob("*.json")] == ["r.json"]


def test_keep_busy_calls_back_to_back_until_the_time_is_up():
    import time

    from opensapiens.benchmark import keep_busy

    calls = []
    t0 = time.perf_counter()
    n = keep_busy(lambda: (time.sleep(0.001), calls.append(time.perf_counter())), torch.device("cpu"), seconds=0.05)
    assert n == len(calls) and n % 16 == 0 and n >= 32  # whole rounds of 16 calls between the waits
    assert time.perf_counter() - t0 >= 0.05  # busy for the time asked
    assert calls[-17] - t0 < 0.05  # and no round more than needed: the one before the last ended before the time


def test_clock_summary_takes_medians_of_nvidia_smi_lines_and_skips_what_is_not_a_sample():
    from opensapiens.benchmark import clock_summary

    lines = ["1980, 121.70\n", "1650, 690.12\n", "1665, 688.00\n", "[N/A], [N/A]\n", "garbage\n", "1590, 694.5\n"]
    inner = [690.12, 688.00]  # the first and last samples (121.70 as the load began, 694.5) left out of the mean
    assert clock_summary(lines) == {"sm_mhz": (1650 + 1665) / 2, "watts": round((688.00 + 690.12) / 2, 1),
                                    "mean_watts": round(sum(inner) / 2, 1), "samples": 4}
    assert clock_summary(["1980, 100.0", "1700, 600.0"])["mean_watts"] == 350.0  # two samples: both
    assert clock_summary([]) is None and clock_summary(["[N/A], 80.1"]) is None


def test_gpu_clocks_on_the_cpu_samples_nothing():
    from opensapiens.benchmark import GpuClocks

    with GpuClocks(torch.device("cpu")) as clocks:
        torch.ones(4).sum()
    assert clocks.summary() is None and clocks.lines == [] and clocks.power_field is None


@pytest.mark.parametrize("task,channels,scale", [("pose", 308, 4), ("seg", 28, 2)])
def test_random_model_has_the_official_outputs_at_the_input_size(task, channels, scale):
    from opensapiens.benchmark import random_model

    model = random_model(task, "nano", (64, 48), torch.device("cpu"))
    assert not model.training and model.config.pos_grid == (4, 3)
    with torch.inference_mode():
        assert model(torch.randn(1, 3, 64, 48)).shape == (1, channels, 64 // scale, 48 // scale)


def test_bench_cli_counts_the_backbone_flops_of_the_closed_form_and_reports_its_rows(tmp_path, capsys):
    """``opensapiens bench`` on the CPU (eager only): FLOPs per image equal the ViT's closed form (patch embedding,
    24 N C^2 of GEMMs and 4 N^2 C of attention per block), and each row's rates follow from its time."""
    from opensapiens.cli.main import main
    from opensapiens.models.vit import get_arch

    out = tmp_path / "r.json"
    assert main(["bench", "--task", "features", "--arch", "nano", "--batch", "2", "--input-size", "64x48",
                 "--iters", "1", "--device", "cpu", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    a = get_arch("nano")
    n, c = (64 // 16) * (48 // 16), a.embed_dim
    gemms, attention = 2 * n * c * (3 * c + c + 2 * int(a.mlp_ratio * c)), 4 * n * n * c  # per block
    closed_form = 2 * n * 3 * 16 * 16 * c + a.depth * (gemms + attention)
    assert r["flops_per_image"] == closed_form
    row = r["variants"]["eager"]
    assert row["images_per_s"] == pytest.approx(2 / (row["ms_per_batch"] * 1e-3), rel=1e-3)
    assert row["rel_error_vs_fp32"] < 0.05  # bf16 against the fp32 model
    assert r["matmul_peak_sustained_tflops"] is None and row["clocks"] is None  # CPU: no power cap to measure
    assert r["power_reading"] is None and row["joules_per_image"] is None
    assert "eager" in capsys.readouterr().out
    # MFU against the peak of the dtype that ran (bf16 here), every rate kept to 4 significant digits: the JSON's
    # own numbers give its MFU back (round(x, 1) had made a CPU's TFLOP/s 0.0)
    assert r["matmul_peak_dtype"] == "bfloat16" and r["matmul_peak_tflops"] > 0
    assert row["mfu"] == pytest.approx(row["tflops"] / r["matmul_peak_tflops"], rel=2e-3)


def test_bench_refuses_cuda_variants_on_a_cpu_and_sizes_below_one(capsys):
    from opensapiens.cli.main import main

    base = ["bench", "--task", "features", "--arch", "nano", "--input-size", "64x48", "--device", "cpu"]
    assert main([*base, "--fp8", "--cuda-graphs"]) == 2
    assert "--fp8, --cuda-graphs" in capsys.readouterr().err
    for flag in ("--batch", "--iters"):
        with pytest.raises(SystemExit):
            main([*base, flag, "0"])


def test_bench_end_to_end_on_a_cpu_runs_predicts_loop_on_the_eager_model(tmp_path):
    from PIL import Image

    from opensapiens.cli.main import main

    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for k in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(folder / f"{k}.jpg")
    out = tmp_path / "r.json"
    assert main(["bench", "--task", "seg", "--arch", "nano", "--batch", "2", "--input-size", "64x48", "--iters", "1",
                 "--e2e", str(folder), "--out", str(out)]) == 0
    e2e = json.loads(out.read_text())["end_to_end"]
    assert e2e["images"] == 3 and e2e["images_per_s"] > 0


def test_count_flops_counts_attention_on_the_cpu_as_on_cuda():
    """torch's counter knows SDPA's CUDA kernels only; on the CPU ours counts it the same way: Q K^T and P V forward
    (4 B H N^2 D), and backward what the matmuls' gradients take plus the recomputed Q K^T, as the flash kernels do."""
    from opensapiens.benchmark import count_flops

    b, h, n, d = 2, 3, 12, 8
    q = torch.randn(b, h, n, d, requires_grad=True)
    assert count_flops(lambda: F.scaled_dot_product_attention(q, q, q)) == 4 * b * h * n * n * d

    def by_matmuls():  # the same attention in explicit matmuls, which every counter knows
        (torch.softmax(q @ q.transpose(-1, -2) / d**0.5, -1) @ q).sum().backward()

    recompute = 2 * b * h * n * n * d
    sdpa = count_flops(lambda: F.scaled_dot_product_attention(q, q, q).sum().backward())
    assert sdpa == count_flops(by_matmuls) + recompute


@pytest.mark.parametrize("reply,field", [("512.30\n", "power.draw.instant"), ("[N/A]\n", "power.draw"),
                                         (OSError, "power.draw"),
                                         ('Field "power.draw.instant" is not a valid field to query.', "power.draw")])
def test_power_field_is_the_instant_reading_only_where_the_driver_gives_one(monkeypatch, reply, field):
    import subprocess

    from opensapiens import benchmark

    def run(argv, **kwargs):
        if reply is OSError:
            raise OSError("nvidia-smi: not found")
        return subprocess.CompletedProcess(argv, 0, stdout=reply, stderr="")

    monkeypatch.setattr(subprocess, "run", run)
    benchmark.power_field.cache_clear()
    try:
        assert benchmark.power_field() == field
    finally:
        benchmark.power_field.cache_clear()


@pytest.mark.parametrize("flags,no_compile", [([], False), (["--compile"], False), (["--no-compile"], True)])
def test_bench_compiles_by_default_and_takes_compile_and_no_compile(flags, no_compile):
    import argparse

    from opensapiens.cli import bench

    parser = argparse.ArgumentParser()
    bench.register(parser.add_subparsers())
    assert parser.parse_args(["bench", "--task", "pose", *flags]).no_compile is no_compile


def test_bench_reads_power_over_the_timed_calls_only_and_needs_three_readings(monkeypatch, tmp_path, capsys):
    """The power window wrapped the warm-up calls too (and a first call's compile): J/img mixed idle and load
    readings. Now only the ``--iters`` timed calls run inside it, and fewer than 3 readings give no J/img."""
    import opensapiens.benchmark as benchmark
    from opensapiens.cli.main import main
    from opensapiens.models.sapiens import SapiensModel

    state = {"open": False, "inside": 0, "samples": 5}

    class Window:
        power_field = "power.draw.instant"

        def __init__(self, device):
            pass

        def __enter__(self):
            state["open"] = True
            return self

        def __exit__(self, *exc):
            state["open"] = False

        def summary(self):
            return {"sm_mhz": 1000.0, "watts": 100.0, "mean_watts": 100.0, "samples": state["samples"]}

    forward = SapiensModel.forward

    def counted(self, x):
        state["inside"] += state["open"]
        return forward(self, x)

    monkeypatch.setattr(benchmark, "GpuClocks", Window)
    monkeypatch.setattr(SapiensModel, "forward", counted)
    args = ["bench", "--task", "features", "--arch", "nano", "--batch", "2", "--input-size", "64x48", "--iters", "4",
            "--device", "cpu", "--out", str(tmp_path / "r.json")]
    assert main(args) == 0
    row = json.loads((tmp_path / "r.json").read_text())["variants"]["eager"]
    assert state["inside"] == 4  # the timed calls, no warm-up
    assert row["joules_per_image"] == pytest.approx(100.0 * row["ms_per_batch"] / 2 / 1e3, rel=1e-2)
    state.update(inside=0, samples=2)
    assert main(args) == 0
    assert json.loads((tmp_path / "r.json").read_text())["variants"]["eager"]["joules_per_image"] is None


def test_bench_checks_its_architecture_and_e2e_folder_before_measuring(tmp_path, capsys):
    from opensapiens.cli.main import main

    base = ["bench", "--task", "pose", "--device", "cpu"]
    (tmp_path / "empty").mkdir()
    for extra, message in ((["--arch", "bogus"], "unknown architecture 'bogus'"),
                           (["--e2e", str(tmp_path / "missing")], "is not a folder of images"),
                           (["--e2e", str(tmp_path / "empty")], "holds no images")):
        with pytest.raises(SystemExit):
            main([*base, *extra])
        assert message in capsys.readouterr().err


def test_bench_times_a_sapiens2_pointmap_model_and_judges_its_metric_points(tmp_path):
    """The pointmap model's (points, scale) pair is compared with the fp32 reference as metric points (points /
    scale), the scale branch sized for the benchmarked input."""
    from opensapiens.cli.main import main

    out = tmp_path / "pm.json"
    assert main(["bench", "--task", "pointmap", "--arch", "sapiens2_nano", "--batch", "1", "--input-size", "256x192",
                 "--iters", "1", "--device", "cpu", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    eager = report["variants"]["eager"]
    assert report["task"] == "pointmap" and report["flops_per_image"] > 0
    assert 0 < eager["rel_error_vs_fp32"] < 0.1  # bf16 against fp32
