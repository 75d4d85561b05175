"""Pre-processing to the model input and restoring dense outputs to the original image.

References: ``cv2.resize(INTER_LINEAR)`` on float32 (exact bilinear, align_corners=False) and a float64 numpy
separable interpolation written here with ``np.interp``.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from opensapiens.inference.transforms import LITE_MEAN, LITE_STD, MEAN, STD, Preprocessor, ResizeMeta, restore

RNG = np.random.default_rng(0)


def _image(h: int, w: int) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _unnormalize(batch: torch.Tensor, i: int = 0) -> np.ndarray:
    return batch[i].permute(1, 2, 0).double().numpy() * np.array(STD) + np.array(MEAN)  # (H, W, 3) 0-255


def test_constants():
    assert MEAN == (123.675, 116.28, 103.53) and STD == (58.395, 57.12, 57.375)
    assert LITE_MEAN == (123.5, 116.5, 103.5) and LITE_STD == (58.5, 57.0, 57.5)


@pytest.mark.parametrize("shape", [(37, 53), (200, 150), (64, 48), (1, 1), (7, 3)])
def test_stretch_is_cv2_bilinear(shape):
    img = _image(*shape)
    batch, metas = Preprocessor((64, 48), "stretch")([img])
    assert batch.shape == (1, 3, 64, 48) and batch.dtype == torch.float32
    ref = cv2.resize(img.astype(np.float32), (48, 64), interpolation=cv2.INTER_LINEAR).reshape(64, 48, 3)
    np.testing.assert_allclose(_unnormalize(batch), ref, atol=2e-3)
    m = metas[0]
    assert m.original_size == shape and m.input_size == (64, 48) and m.pad == (0, 0, 0, 0) and m.mode == "stretch"
    assert m.scale == pytest.approx((64 / shape[0], 48 / shape[1]))


@pytest.mark.parametrize("shape", [(2000, 1500), (1080, 1920), (900, 1000), (500, 1500), (700, 800), (50, 40),
                                   (1500, 768), (1024, 768)])
def test_area_cubic_is_opencvs_resize_of_sapiens2_seg(shape):
    """Sapiens2's seg resize: cv2.resize of the uint8 image, INTER_AREA when the width shrinks (an average when both
    sides do, two taps when the height grows), INTER_CUBIC otherwise; ours is float (no uint8 rounding)."""
    img = _image(*shape)
    ref = cv2.resize(img, (768, 1024), interpolation=cv2.INTER_AREA if shape[1] > 768 else cv2.INTER_CUBIC)
    pre = Preprocessor((1024, 768), "stretch", interpolation="area-cubic")
    got = _unnormalize(pre([torch.from_numpy(img)])[0])  # a tensor: the device path (resize_area_cubic)
    assert np.abs(np.rint(got) - ref).max() <= 1 and np.abs(got - ref).mean() < 0.3
    np.testing.assert_allclose(_unnormalize(pre([img])[0]), ref, atol=1e-3)  # an array on the CPU: OpenCV itself
    with pytest.raises(ValueError, match="interpolation must be one of"):
        Preprocessor((64, 48), interpolation="lanczos")


def test_normalization_and_custom_mean():
    img = np.full((4, 4, 3), (10, 128, 250), np.uint8)
    batch, _ = Preprocessor((4, 4), mean=LITE_MEAN, std=LITE_STD)([img])
    expected = (np.array([10, 128, 250]) - np.array(LITE_MEAN)) / np.array(LITE_STD)
    np.testing.assert_allclose(batch[0, :, 2, 2].numpy(), expected, rtol=1e-6)


def test_mixed_and_equal_sizes_give_the_same_rows():
    a, b, c = _image(30, 20), _image(30, 20), _image(50, 90)
    pre = Preprocessor((32, 24), "pad")
    together, _ = pre([a, b])  # one shared resize
    mixed, _ = pre([a, c, b])  # one resize per image
    torch.testing.assert_close(together[0], mixed[0])
    torch.testing.assert_close(together[1], mixed[2])
    tensors, _ = pre([torch.from_numpy(a), b])
    torch.testing.assert_close(tensors, together)


@pytest.mark.parametrize("shape, content", [((100, 37), (64, 24)), ((30, 90), (16, 48)), ((64, 48), (64, 48)),
                                            ((1, 1), (48, 48)), ((4000, 30), (64, 1)), ((7, 3), (64, 27))])
def test_pad_letterbox_layout(shape, content):
    img = _image(*shape)
    batch, metas = Preprocessor((64, 48), "pad")([img])
    m = metas[0]
    ch, cw = content
    assert m.content_size == content and m.pad == (0, 0, 64 - ch, 48 - cw)
    assert m.scale == pytest.approx((ch / shape[0], cw / shape[1]))
    assert (batch[0, :, ch:] == 0).all() and (batch[0, :, :, cw:] == 0).all()  # fill = mean colour
    ref = cv2.resize(img.astype(np.float32), (cw, ch), interpolation=cv2.INTER_LINEAR).reshape(ch, cw, 3)
    np.testing.assert_allclose(_unnormalize(batch)[:ch, :cw], ref, atol=2e-3)


def test_bad_images_are_named():
    pre = Preprocessor((32, 32))
    with pytest.raises(ValueError, match=r"image 1: .*\(5, 5\)"):
        pre([_image(5, 5), np.zeros((5, 5), np.uint8)])
    with pytest.raises(ValueError, match="image 0: .*float32"):
        pre([np.zeros((5, 5, 3), np.float32)])
    with pytest.raises(ValueError, match="resize"):
        Preprocessor((32, 32), "crop")


# ----------------------------------------------------------------------------------------------------------- restore

def _reference_restore(out: np.ndarray, meta: ResizeMeta, nearest: bool = False) -> np.ndarray:
    """float64 separable interpolation: original pixel centres mapped into the output map, clamped to the output
    pixels whose centres lie inside the content."""
    c, h, w = out.shape
    result = out.astype(np.float64)
    for axis, n_out, n_in, size in ((1, meta.original_size[0], h, meta.input_size[0]),
                                    (2, meta.original_size[1], w, meta.input_size[1])):
        length = meta.content_size[axis - 1] * n_in / size  # content extent in output pixels
        n_valid = max(1, int(np.sum(np.arange(n_in) + 0.5 < length)))
        src = (np.arange(n_out) + 0.5) * length / n_out - 0.5
        moved = np.moveaxis(result, axis, -1)[..., :n_valid]
        if nearest:
            idx = np.clip(np.floor(src + 0.5), 0, n_valid - 1).astype(int)
            moved = moved[..., idx]
        else:
            flat = moved.reshape(-1, n_valid)
            moved = np.stack([np.interp(src, np.arange(n_valid), row) for row in flat]).reshape(
                moved.shape[:-1] + (n_out,))
        result = np.moveaxis(moved, -1, axis)
    return result


@pytest.mark.parametrize("mode", ["stretch", "pad"])
@pytest.mark.parametrize("stride", [1, 2, 4])
@pytest.mark.parametrize("shape", [(1, 1), (7, 3), (4000, 30), (45, 101), (64, 48), (33, 10)])
def test_restore_matches_reference(mode, stride, shape):
    # (33, 10) in pad mode at stride 2: content 19 input = 9.5 output pixels wide for 10 image columns (F.interpolate
    # given that scale had kept the axis as it was)
    _, metas = Preprocessor((64, 48), mode)([_image(*shape)])
    out = torch.randn(1, 2, 64 // stride, 48 // stride, dtype=torch.float64)
    got = restore(out, metas)[0]
    assert got.shape == (2, *shape) and got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), _reference_restore(out[0].numpy(), metas[0]), atol=1e-9)
    near = restore(out, metas, mode="nearest")[0]
    np.testing.assert_array_equal(near.numpy(), _reference_restore(out[0].numpy(), metas[0], nearest=True))


def test_restore_stretch_is_cv2_resize():
    img = _image(101, 37)
    pre = Preprocessor((64, 48), "stretch")
    _, metas = pre([img])
    out = torch.randn(1, 3, 32, 24)
    got = pre.restore(out, metas)[0].permute(1, 2, 0).numpy()
    ref = cv2.resize(out[0].permute(1, 2, 0).numpy(), (37, 101), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(got, ref, atol=1e-5)


def _centre_sampled_output(meta: ResizeMeta, stride: int, fn, fill: float) -> torch.Tensor:
    """A stride-s 'identity model': each output pixel holds ``fn`` at its centre in original-image coordinates if
    that centre is inside the content (the first row/column always counts: a content thinner than half an output
    pixel has no other), else ``fill``."""
    (H, W), (ch, cw) = meta.input_size, meta.content_size
    ys = (np.arange(H // stride) + 0.5) * stride  # output pixel centres in input edge coordinates
    xs = (np.arange(W // stride) + 0.5) * stride
    y0 = ys / meta.scale[0] - 0.5  # ... in original pixel coordinates
    x0 = xs / meta.scale[1] - 0.5
    out = fn(y0[:, None], x0[None, :]) + 0 * x0[None, :]
    out[((ys[:, None] >= ch) & (ys[:, None] > ys[0])) | ((xs[None, :] >= cw) & (xs[None, :] > xs[0]))] = fill
    return torch.from_numpy(out)[None, None]


@pytest.mark.parametrize("stride", [1, 2, 4])
@pytest.mark.parametrize("shape", [(1, 1), (7, 3), (4000, 30), (30, 4000), (45, 101)])
def test_pad_restore_never_reads_the_fill(stride, shape):
    _, metas = Preprocessor((64, 48), "pad")([_image(*shape)])
    out = _centre_sampled_output(metas[0], stride, lambda y, x: np.full_like(y, 7.0), fill=1e6)
    got = restore(out, metas)[0]
    assert got.shape == (1, *shape)
    torch.testing.assert_close(got, torch.full_like(got, 7.0))


@pytest.mark.parametrize("stride", [1, 2])
def test_pad_identity_model_restores_the_image(stride):
    """A smooth image letterboxed, passed through an identity 'model' at stride 1 or 2, comes back."""
    h0, w0 = 90, 50
    yy, xx = np.mgrid[:h0, :w0]
    img = np.stack([2 * yy + 20, 3 * xx + 30, 100 + 40 * np.sin(xx / 9.0) * np.cos(yy / 11.0)], -1)
    img = np.clip(np.round(img), 0, 255).astype(np.uint8)
    pre = Preprocessor((64, 48), "pad")
    batch, metas = pre([img])
    x = batch * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)
    out = torch.nn.functional.avg_pool2d(x, stride) if stride > 1 else x
    got = pre.restore(out, metas)[0].permute(1, 2, 0).numpy()
    err = np.abs(got - img)
    assert err[3:-3, 3:-3].max() < 4 * stride  # down/up-sampling error of the smooth pattern only
    assert err.mean() < 1.5 * stride


def test_resize_meta_coordinate_maps():
    _, metas = Preprocessor((64, 48), "pad")([_image(100, 50)])  # content (64, 32): scale 0.64
    m = metas[0]
    pts = np.array([[0.0, 0.0], [49.0, 99.0], [12.3, 45.6]])
    expected = (pts + 0.5) * np.array([32 / 50, 64 / 100]) - 0.5  # closed form, pixel centres at integers
    np.testing.assert_allclose(m.to_input(pts), expected)
    np.testing.assert_allclose(m.to_original(m.to_input(pts)), pts)
    torch.testing.assert_close(m.to_original(torch.from_numpy(expected)), torch.from_numpy(pts))


def test_restore_checks_arguments():
    _, metas = Preprocessor((64, 48))([_image(10, 10)])
    with pytest.raises(ValueError, match="metas"):
        restore(torch.zeros(2, 1, 16, 12), metas)
    with pytest.raises(ValueError, match="mode"):
        restore(torch.zeros(1, 1, 16, 12), metas, mode="bicubic")
