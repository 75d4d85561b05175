"""UDP heatmap codec against float64 numpy re-derivations of the official UDP target and DARK-UDP decoder."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from opensapiens.codecs import decode_udp_heatmaps, encode_udp_heatmaps, gaussian_blur, gaussian_kernel1d
from opensapiens.codecs import heatmap as heatmap_codec

INPUT, HEATMAP, SIGMA = (1024, 768), (256, 192), 6.0  # Sapiens pose


# ---- independent references (float64 numpy, one keypoint at a time) -----

def ref_encode(kp_hm: np.ndarray, visible: bool, size: tuple[int, int], sigma: float) -> tuple[np.ndarray, float]:
    """Official UDP target for one keypoint given in heatmap pixels (integer 3 sigma)."""
    h, w = size
    r = int(3 * sigma)
    out = np.zeros((h, w))
    if not visible:
        return out, 0.0
    mu = [int(v + 0.5) for v in kp_hm]  # Python int() truncates toward zero, as numpy's astype(int64)
    if mu[0] - r >= w or mu[1] - r >= h or mu[0] + r + 1 < 0 or mu[1] + r + 1 < 0:
        return out, 0.0
    for y in range(max(0, mu[1] - r), min(h, mu[1] + r + 1)):
        for x in range(max(0, mu[0] - r), min(w, mu[0] + r + 1)):
            out[y, x] = math.exp(-((x - kp_hm[0]) ** 2 + (y - kp_hm[1]) ** 2) / (2 * sigma**2))
    return out, 1.0


def ref_dark_udp(hm: np.ndarray, kernel: int = 11) -> tuple[np.ndarray, float]:
    """Official decode of one heatmap, in heatmap pixels: argmax, cv2 blur of the zero-padded map, Newton step."""
    h, w = hm.shape
    idx = int(np.argmax(hm))
    y, x = divmod(idx, w)
    score = float(hm.max())
    if score <= 0:
        return np.array([-1.0, -1.0]), score
    b = kernel // 2
    padded = np.zeros((h + 2 * b, w + 2 * b))
    padded[b:-b, b:-b] = hm
    blurred = cv2.GaussianBlur(padded, (kernel, kernel), 0)[b:-b, b:-b]
    blurred *= hm.max() / blurred.max()
    L = np.pad(np.log(np.clip(blurred, 1e-3, 50.0)), 1, mode="edge")
    Y, X = y + 1, x + 1

    def v(dy: int, dx: int) -> float:
        return L[Y + dy, X + dx]

    grad = np.array([0.5 * (v(0, 1) - v(0, -1)), 0.5 * (v(1, 0) - v(-1, 0))])
    dxy = 0.5 * (v(1, 1) - v(0, 1) - v(1, 0) + 2 * v(0, 0) - v(0, -1) - v(-1, 0) + v(-1, -1))
    hess = np.array([[v(0, 1) - 2 * v(0, 0) + v(0, -1), dxy], [dxy, v(1, 0) - 2 * v(0, 0) + v(-1, 0)]])
    step = np.linalg.solve(hess + np.finfo(np.float32).eps * np.eye(2), grad)
    return np.array([x, y], dtype=np.float64) - step, score


def gaussian_map(size: tuple[int, int], centre: tuple[float, float], sigma: float) -> np.ndarray:
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    return np.exp(-((xx - centre[0]) ** 2 + (yy - centre[1]) ** 2) / (2 * sigma**2))


def border_distance_hm(kp_hm: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    return np.minimum.reduce([kp_hm[..., 0], w - 1 - kp_hm[..., 0], kp_hm[..., 1], h - 1 - kp_hm[..., 1]])


# ---- blur -----

@pytest.mark.parametrize("k", [1, 3, 5, 7, 9, 11, 13, 17])
def test_gaussian_kernel_matches_opencv(k):
    np.testing.assert_allclose(gaussian_kernel1d(k, dtype=torch.float64).numpy(), cv2.getGaussianKernel(k, 0)[:, 0],
                               atol=1e-12)


@pytest.mark.parametrize("k", [3, 9, 11])
def test_blur_matches_opencv_on_zero_padded_maps(k):
    rng = np.random.default_rng(k)
    maps = rng.standard_normal((3, 23, 17))
    b = k // 2
    ref = []
    for m in maps:
        p = np.zeros((23 + 2 * b, 17 + 2 * b))
        p[b:-b, b:-b] = m
        ref.append(cv2.GaussianBlur(p, (k, k), 0)[b:-b, b:-b])
    out = gaussian_blur(torch.from_numpy(maps), k).numpy()
    np.testing.assert_allclose(out, np.stack(ref), atol=1e-12)


def test_blur_rejects_even_kernel():
    with pytest.raises(ValueError, match="odd"):
        gaussian_blur(torch.zeros(1, 5, 5), 4)


# ---- encode -----

def test_encode_matches_official_target():
    rng = np.random.default_rng(0)
    N, K = 3, 40
    kp = np.stack([rng.uniform(-120, 900, (N, K)), rng.uniform(-150, 1180, (N, K))], axis=-1)  # many outside
    vis = rng.random((N, K)) > 0.2
    heat, weights = encode_udp_heatmaps(torch.from_numpy(kp).float(), torch.from_numpy(vis), INPUT, HEATMAP, SIGMA)
    assert heat.shape == (N, K, *HEATMAP) and heat.dtype == torch.float32 and weights.shape == (N, K)

    scale = np.array([(INPUT[1] - 1) / (HEATMAP[1] - 1), (INPUT[0] - 1) / (HEATMAP[0] - 1)])
    kp_hm = kp.astype(np.float32) / scale.astype(np.float32)
    for n in range(N):
        for k in range(K):
            ref, wref = ref_encode(kp_hm[n, k].astype(np.float64), vis[n, k], HEATMAP, SIGMA)
            assert weights[n, k].item() == wref, (n, k, kp[n, k])
            np.testing.assert_allclose(heat[n, k].numpy(), ref, atol=2e-6)
    assert 0 < weights.sum() < vis.sum()  # some visible keypoints fall fully outside


@pytest.mark.parametrize(
    ("x_hm", "weight", "column0"),
    [
        (-19.4, 1.0, math.exp(-(19.4**2) / 72)),  # mu = -18: window reaches column 0
        (-19.6, 1.0, 0.0),  # mu = -19: window ends at column -1, official keeps the weight (empty target)
        (-20.6, 0.0, 0.0),  # mu = -20: right edge < 0 -> outside
        (-0.7, 1.0, math.exp(-(0.7**2) / 72)),  # trunc(-0.2) = 0, not floor
    ],
)
def test_encode_left_boundary_rule(x_hm, weight, column0):
    kp = torch.tensor([[[x_hm, 10.0]]])  # input = heatmap size: UDP scale 1
    heat, w = encode_udp_heatmaps(kp, torch.ones(1, 1), (32, 24), (32, 24), SIGMA)
    assert w.item() == weight
    assert heat[0, 0, 10, 0].item() == pytest.approx(column0, abs=1e-7)


@pytest.mark.parametrize(("x_hm", "weight"), [(23 + 18.4, 1.0), (23 + 18.6, 0.0), (23 + 19.2, 0.0)])
def test_encode_right_boundary_rule(x_hm, weight):
    heat, w = encode_udp_heatmaps(torch.tensor([[[x_hm, 10.0]]]), None, (32, 24), (32, 24), SIGMA)
    assert w.item() == weight
    assert (heat.abs().sum() > 0).item() == bool(weight)


def test_invisible_keypoints_get_zero_weight_and_target():
    kp = torch.tensor([[[100.0, 200.0], [300.0, 400.0]]])
    heat, w = encode_udp_heatmaps(kp, torch.tensor([[0.4, 1.0]]))
    assert w.tolist() == [[0.0, 1.0]]
    assert heat[0, 0].abs().max() == 0 and heat[0, 1].max() > 0.9


def test_encode_rejects_bad_shapes():
    with pytest.raises(ValueError, match="keypoints"):
        encode_udp_heatmaps(torch.zeros(3, 2), None)
    with pytest.raises(ValueError, match="visible"):
        encode_udp_heatmaps(torch.zeros(1, 3, 2), torch.ones(3))


# ---- decode -----

def test_decode_scale_convention_on_symmetric_peaks():
    """A symmetric peak at heatmap pixel (j, i) decodes to input pixel (j (W-1)/(w-1), i (H-1)/(h-1))."""
    heat = torch.zeros(1, 3, *HEATMAP)
    peaks = [(20, 30), (100, 200), (191, 255)]  # (x, y); the last one is the far corner
    for k, (x, y) in enumerate(peaks):
        heat[0, k] = torch.from_numpy(gaussian_map(HEATMAP, (x, y), SIGMA))
    kp, scores = decode_udp_heatmaps(heat, INPUT)
    expect = [(x * 767 / 191, y * 1023 / 255) for x, y in peaks[:2]]
    np.testing.assert_allclose(kp[0, :2].numpy(), expect, atol=1e-3)
    np.testing.assert_allclose(scores[0].numpy(), 1.0, atol=1e-6)


def test_decode_subpixel_gaussians():
    """Gaussians (placed by an independent formula) decode within 0.05 input px, from the centre to 6 px of the edge.

    Within ~6 heatmap pixels of the edge the official DARK-UDP is biased (its blur sees zeros outside the map);
    that band is checked against the official algorithm itself in ``test_decode_matches_numpy_dark_udp``.
    """
    rng = np.random.default_rng(1)
    h, w = HEATMAP
    near = [(rng.uniform(6, 12), rng.uniform(6, h - 7)) for _ in range(8)]  # a band just inside each edge
    near += [(w - 1 - rng.uniform(6, 12), rng.uniform(6, h - 7)) for _ in range(8)]
    near += [(rng.uniform(6, w - 7), rng.uniform(6, 12)) for _ in range(8)]
    near += [(rng.uniform(6, w - 7), h - 1 - rng.uniform(6, 12)) for _ in range(8)]
    inner = [(rng.uniform(12, w - 13), rng.uniform(12, h - 13)) for _ in range(32)]
    centres = np.array(near + inner)  # (64, 2) heatmap pixels
    heat = np.stack([gaussian_map(HEATMAP, c, SIGMA) for c in centres])[None]
    kp, _ = decode_udp_heatmaps(torch.from_numpy(heat).float(), INPUT)
    expect = centres * [(INPUT[1] - 1) / (w - 1), (INPUT[0] - 1) / (h - 1)]
    err = np.linalg.norm(kp[0].numpy() - expect, axis=-1)
    assert err.max() < 0.05, err.max()


def test_encode_decode_round_trip():
    rng = np.random.default_rng(2)
    kp = np.stack([rng.uniform(25, 742, (4, 24)), rng.uniform(25, 998, (4, 24))], axis=-1)  # >= 6 heatmap px in
    heat, weights = encode_udp_heatmaps(torch.from_numpy(kp).float(), None, INPUT, HEATMAP, SIGMA)
    assert weights.min() == 1
    dec, scores = decode_udp_heatmaps(heat, INPUT)
    assert np.abs(dec.numpy() - kp).max() < 0.05
    assert scores.min() > 0.99


@pytest.mark.parametrize("chunk,dtype", [(5, torch.float32), (2048, torch.float32), (5, torch.bfloat16)])
def test_decode_matches_numpy_dark_udp(chunk, dtype, monkeypatch):
    """Random blurry multi-peak maps, peaks anywhere (borders included), non-positive maps, other sizes; bf16 maps
    (read in place, never copied to float32) against the reference on their exact values."""
    monkeypatch.setattr(heatmap_codec, "_CHUNK", chunk)
    rng = np.random.default_rng(3)
    size, input_size = (64, 48), (256, 192)
    maps = []
    for i in range(48):
        m = np.zeros(size)
        for _ in range(rng.integers(1, 4)):
            c = (rng.uniform(-3, size[1] + 2), rng.uniform(-3, size[0] + 2))
            m += rng.uniform(0.2, 1.5) * gaussian_map(size, c, rng.uniform(1.0, 4.0))
        m += 0.01 * rng.standard_normal(size)
        if i % 16 == 5:
            m -= m.max() + 0.1  # max <= 0 -> location -1
        maps.append(m)
    heat = torch.from_numpy(np.stack(maps)).to(dtype)
    kp, scores = decode_udp_heatmaps(heat.view(4, 12, *size), input_size)
    kp, scores = kp.reshape(-1, 2).numpy(), scores.reshape(-1).numpy()
    scale = np.array([(input_size[1] - 1) / (size[1] - 1), (input_size[0] - 1) / (size[0] - 1)])
    for i, m in enumerate(heat.double().numpy()):
        ref_kp, ref_score = ref_dark_udp(m)
        assert scores[i] == pytest.approx(ref_score, abs=1e-6)
        np.testing.assert_allclose(kp[i] / scale, ref_kp, atol=2e-3, err_msg=f"map {i}")
    np.testing.assert_allclose(kp[5], -scale, rtol=1e-6)  # a non-positive map


def test_maps_under_the_clip_skip_the_whole_map_blur_and_match_the_reference(monkeypatch):
    """Peaks under 1e-3 (weak maps, e.g. keypoints outside the image) or not positive: every DARK sample is clipped
    whatever the rescale, so the whole-map blur is skipped; the result is still the official decode's."""
    rng = np.random.default_rng(7)
    size, input_size = (32, 24), (128, 96)
    maps = [scale * gaussian_map(size, (rng.uniform(0, 23), rng.uniform(0, 31)), 2.0) + noise
            for scale, noise in ((5e-4, 0.0), (2e-4, 1e-6 * rng.standard_normal(size)), (-1.0, 0.0))]
    maps.append(2e-3 * gaussian_map(size, (12.3, 16.6), 0.5))  # peak over the clip, blurred samples under: the blur
    calls = []
    real = heatmap_codec.gaussian_blur
    monkeypatch.setattr(heatmap_codec, "gaussian_blur", lambda m, k: calls.append(m.shape[0]) or real(m, k))
    heat = torch.from_numpy(np.stack(maps)).float()
    kp, scores = decode_udp_heatmaps(heat.view(1, 4, *size), input_size)
    scale = np.array([(input_size[1] - 1) / (size[1] - 1), (input_size[0] - 1) / (size[0] - 1)])
    for i in (0, 1, 3):
        ref_kp, _ = ref_dark_udp(heat[i].double().numpy())
        np.testing.assert_allclose(kp[0, i].numpy() / scale, ref_kp, atol=2e-3, err_msg=f"map {i}")
    np.testing.assert_allclose(kp[0, 2].numpy(), -scale, rtol=1e-6)  # not positive: location -1
    assert calls == [1]  # the blur ran for the one map whose rescale matters


def test_weak_peaks_on_negative_maps_match_the_reference():
    """A peak under the clip on a map whose blur is negative everywhere: the official rescale ratio peak / blur max is
    negative, flips the samples' signs and lifts some above the clip, so the step is not 0 (unlike for the weak maps
    above, whose blur maximum is positive)."""
    size, input_size = (32, 24), (128, 96)
    maps, peaks = [], [(10, 6, 5e-4), (20, 15, 2e-4)]  # row, column, value
    for y, x, peak in peaks:
        m = -np.ones(size)
        m[:, 18:] = -0.01
        m[y, x], m[y, x + 1] = peak, -0.5
        maps.append(m)
    heat = torch.from_numpy(np.stack(maps)).float()
    kp, _ = decode_udp_heatmaps(heat.view(1, 2, *size), input_size)
    scale = np.array([(input_size[1] - 1) / (size[1] - 1), (input_size[0] - 1) / (size[0] - 1)])
    for i, (y, x, _) in enumerate(peaks):
        ref_kp, _ = ref_dark_udp(heat[i].double().numpy())
        assert np.abs(ref_kp - [x, y]).max() > 0.1  # the official decode does move off the argmax
        np.testing.assert_allclose(kp[0, i].numpy() / scale, ref_kp, atol=2e-3, err_msg=f"map {i}")


DARK_KERNEL_CHECK = """
import cv2
import numpy as np
import torch

from opensapiens.codecs import gaussian_kernel1d
from opensapiens.codecs.dark_kernel import blurred_maxima

rng = np.random.default_rng(0)
taps = gaussian_kernel1d(11)
for (h, w), dtype in (((70, 50), torch.float32), ((37, 129), torch.bfloat16), ((20, 300), torch.float32)):
    maps = torch.from_numpy(rng.standard_normal((4, h, w))).to(dtype)
    maps[1] -= 5.0  # all negative: the zero border and the tiles' padding must not win the maximum
    maps[2, -1, -1] = 40.0  # the maximum in the last, partial tile, at the map's corner
    ids = torch.tensor([3, 0, 2, 2, 1])
    out = blurred_maxima(maps, ids, taps)
    for i, m in zip(ids.tolist(), out.tolist()):
        padded = np.pad(maps[i].double().numpy(), 5)
        ref = cv2.GaussianBlur(padded, (11, 11), 0)[5:-5, 5:-5].max()
        assert abs(m - ref) < 1e-5 * max(1.0, abs(ref)), (h, w, i, m, ref)
assert blurred_maxima(maps, torch.tensor([], dtype=torch.long), taps).shape == (0,)
print("ok")
"""


def test_triton_blurred_maxima_against_opencv():
    """The CUDA kernel of DARK's rescale (one pass, per-tile maxima), run by Triton's interpreter on the CPU, against
    OpenCV's blur of the zero-padded float64 map: two row tiles, two column tiles, maps shorter than a tile, negative
    maps, a corner maximum, repeated and unordered ids, bf16 maps."""
    from kernel_checks import run_under_interpreter

    run_under_interpreter(DARK_KERNEL_CHECK)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_decode_on_cuda_matches_the_cpu_decode():
    """On CUDA the whole-map blur is the Triton kernel: noise-like maps (all of them take it) decode as on the CPU,
    in float32 and bf16, and the kernel's maxima equal the CPU blur's."""
    torch.manual_seed(0)
    heat = torch.rand(4, 308, 64 * 48) * 1e-3  # blurred samples under the clip
    heat.scatter_(2, torch.randint(0, 64 * 48, (4, 308, 1)), 0.01)  # one peak per map: no argmax ties in bf16
    heat = heat.view(4, 308, 64, 48)
    ids = torch.arange(0, 4 * 308, 3)
    maxima = heatmap_codec._blurred_maxima(heat.view(-1, 64, 48).cuda(), ids.cuda(), 11)
    torch.testing.assert_close(maxima.cpu(), gaussian_blur(heat.view(-1, 64, 48)[ids], 11).amax(dim=(1, 2)))
    for dtype in (torch.float32, torch.bfloat16):
        kp_gpu, sc_gpu = decode_udp_heatmaps(heat.to(dtype).cuda(), (256, 192))
        kp_cpu, sc_cpu = decode_udp_heatmaps(heat.to(dtype), (256, 192))
        torch.testing.assert_close(kp_gpu.cpu(), kp_cpu, atol=1e-3, rtol=0)
        torch.testing.assert_close(sc_gpu.cpu(), sc_cpu)


def test_decode_handles_empty_and_half_precision():
    kp, sc = decode_udp_heatmaps(torch.zeros(0, 17, 64, 48), (256, 192))
    assert kp.shape == (0, 17, 2) and sc.shape == (0, 17)
    heat = torch.from_numpy(gaussian_map((64, 48), (20.3, 30.6), 2.0)).half()[None, None]
    kp, _ = decode_udp_heatmaps(heat, (64, 48))  # input = heatmap size: UDP scale 1
    assert kp.dtype == torch.float32
    np.testing.assert_allclose(kp[0, 0].numpy(), [20.3, 30.6], atol=0.02)
