"""The benchmark helpers: kernel kinds from real kernel names, and a profile split by kind."""

from __future__ import annotations

import json

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
    assert clock_summary(lines) == {"sm_mhz": (1650 + 1665) / 2, "watts": round((688.00 + 690.12) / 2, 1),
                                    "samples": 4}
    assert clock_summary([]) is None and clock_summary(["[N/A], 80.1"]) is None


def test_gpu_clocks_on_the_cpu_samples_nothing():
    from opensapiens.benchmark import GpuClocks

    with GpuClocks(torch.device("cpu")) as clocks:
        torch.ones(4).sum()
    assert clocks.summary() is None and clocks.lines == []
