"""Tests of metrics.py: the MATLAB-compatible imresize, the metrics, the protocols and evaluating a test set.

Checked against independent references: MATLAB-made LR images (../shared/data), scikit-image's SSIM / PSNR /
rgb2ycbcr, BasicSR's NIQE (numbers stored below), and values computed by hand from the cubic kernel's formula.
"""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage
import torch
from PIL import Image
from skimage import data as skimage_data
from skimage.color import rgb2ycbcr
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

import degradations
import metrics


@pytest.fixture(scope="module")
def astronaut():
    """A real 512x512 RGB photo, uint8 (ships with scikit-image, no download)."""
    return skimage_data.astronaut()


# ------------------------------------------------------------------------------------------------------
# imresize
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_imresize_reproduces_matlab_lr_images_of_set14(shared_data, scale):
    """MATLAB's imresize(hr, 1/s, 'bicubic') made Set14's LR images: ours must give the same pixels
    (acceptance: >= 99.5% identical and none off by more than 1 grey level)."""
    n_pixels = n_identical = 0
    max_diff = 0
    hr_paths = sorted((shared_data / "Set14" / "HR").glob("*.png"))
    assert len(hr_paths) == 14
    for hr_path in hr_paths:
        hr = np.asarray(Image.open(hr_path))  # bridge.png is greyscale (H, W): resized as such
        lr_path = shared_data / "Set14" / "LR_bicubic" / f"X{scale}" / f"{hr_path.stem}x{scale}.png"
        lr_matlab = np.asarray(Image.open(lr_path))
        lr_ours = metrics.imresize(metrics.modcrop_array(hr, scale), scale=1 / scale)
        assert lr_ours.dtype == np.uint8
        assert lr_ours.shape == lr_matlab.shape, hr_path.name
        diff = np.abs(lr_ours.astype(int) - lr_matlab.astype(int))
        n_pixels += diff.size
        n_identical += int((diff == 0).sum())
        max_diff = max(max_diff, int(diff.max()))
    assert n_identical / n_pixels >= 0.995
    assert max_diff <= 1


def test_imresize_upscale_impulse_matches_hand_computed_cubic_weights():
    """x2 upscaling of one bright pixel on a flat row, worked out by hand.

    Output pixel x (1-based) sits at u = x / 2 + 0.25 in the input; the kernel (a = -0.5) at the distances that
    occur is cubic(0.25) = 0.8671875, cubic(0.75) = 0.2265625, cubic(1.25) = -0.0703125, cubic(1.75) = -0.0234375.
    The input is 101 with 165 (= 101 + 64) at 1-based position 4, so output = 101 + 64 * weight:
    156.5 -> 157, 115.5 -> 116, 96.5 -> 97, 99.5 -> 100: every value is an exact half, which MATLAB rounds away
    from zero (numpy's round-half-to-even would give 156, 116, 96, 100).
    """
    row = np.full((1, 8), 101, dtype=np.uint8)
    row[0, 3] = 165
    out = metrics.imresize(row, scale=2)
    expected = [101, 101, 101, 100, 97, 116, 157, 157, 116, 97, 100, 101, 101, 101, 101, 101]
    assert out.shape == (2, 16)
    np.testing.assert_array_equal(out, np.array([expected, expected], dtype=np.uint8))


def test_imresize_downscale_impulse_gives_the_stretched_antialiasing_kernel():
    """Shrinking by 2, MATLAB widens the kernel: weight = 0.5 * cubic(0.5 * d). Output pixel x (1-based) sits at
    u = 2x - 0.5; with the impulse at input position 8 the distances are d = u - 8 = -2.5, -0.5, 1.5, 3.5 for
    x = 3, 4, 5, 6, so the weights are 0.5 * cubic(1.25), 0.5 * cubic(0.25), 0.5 * cubic(0.75), 0.5 * cubic(1.75)
    (hand-computed values above); |d| >= 4 is outside the kernel."""
    row = np.zeros((1, 16))
    row[0, 7] = 1.0  # 1-based position 8
    out = metrics.imresize(row, output_size=(1, 8))
    expected = [0, 0, -0.03515625, 0.43359375, 0.11328125, -0.01171875, 0, 0]
    np.testing.assert_allclose(out[0], expected, atol=1e-12)


@pytest.mark.parametrize("scale", [1 / 4, 1 / 3, 1 / 2, 2, 3, 4, 0.7])
def test_imresize_keeps_a_constant_image_constant(scale):
    """Each row of weights sums to 1, so a flat image stays flat -- borders included (mirrored padding)."""
    flat_uint8 = np.full((37, 29, 3), 173, dtype=np.uint8)
    np.testing.assert_array_equal(metrics.imresize(flat_uint8, scale=scale), 173)
    flat_float = np.full((37, 29), 0.25)
    np.testing.assert_allclose(metrics.imresize(flat_float, scale=scale), 0.25, atol=1e-12)


@pytest.mark.parametrize("size, scale, expected", [
    ((37, 29), 1 / 4, (10, 8)),   # ceil(37 / 4) = 10, ceil(29 / 4) = 8
    ((37, 29), 1 / 3, (13, 10)),
    ((321, 480), 1 / 3, (107, 160)),   # Huang's BSD100 x3 crop
    ((50, 25), 1.1, (56, 28)),   # in double precision 1.1 * 50 = 55.00000000000001: MATLAB's ceil gives 56 too
    ((10, 8), 4, (40, 32)),
    ((5, 7), 3, (15, 21)),
    ((5, 7), 0.5, (3, 4)),
])
def test_imresize_output_size_is_ceil_of_scale_times_size(size, scale, expected):
    assert metrics.imresize(np.zeros(size, dtype=np.uint8), scale=scale).shape == expected
    assert metrics.imresize(np.zeros(size + (3,)), scale=scale).shape == expected + (3,)


def test_imresize_output_size_argument_and_bad_arguments():
    img = np.zeros((20, 30, 3), dtype=np.uint8)
    assert metrics.imresize(img, output_size=(7, 11)).shape == (7, 11, 3)
    with pytest.raises(ValueError):
        metrics.imresize(img)  # neither scale nor output_size
    with pytest.raises(ValueError):
        metrics.imresize(img, scale=2, output_size=(40, 60))  # both
    with pytest.raises(ValueError):
        metrics.imresize(np.zeros((2, 2, 2, 2)), scale=2)  # not an image


def test_imresize_rounds_uint8_after_each_pass(astronaut):
    """MATLAB stores each 1-D pass in the input's class: on uint8 input the first pass is already rounded to 8 bits.
    Rebuild that from two float passes (one axis at a time) with explicit rounding and compare."""
    crop = astronaut[:90, :72]                                                    # 90 / 30 = 72 / 24 = 3 exactly
    ours = metrics.imresize(crop, scale=1 / 3)                                      # (30, 24, 3), uint8
    heights_done = metrics.imresize(crop.astype(np.float64), output_size=(30, 72))  # height pass only (width x1)
    heights_done = np.clip(np.floor(heights_done + 0.5), 0, 255)                  # rounded to 8 bits
    both_done = metrics.imresize(heights_done, output_size=(30, 24))                # width pass
    np.testing.assert_array_equal(ours, np.clip(np.floor(both_done + 0.5), 0, 255).astype(np.uint8))
    # ... which is not the same as rounding once at the end (so the test can tell the two apart).
    once = metrics.imresize(crop.astype(np.float64), scale=1 / 3)
    assert not np.array_equal(ours, np.clip(np.floor(once + 0.5), 0, 255).astype(np.uint8))


def test_imresize_float_keeps_dtype_and_overshoot(astronaut):
    """Float in -> float out, not clipped: bicubic overshoots near edges, and nothing is rounded."""
    img = astronaut[:64, :64].astype(np.float32) / 255
    out = metrics.imresize(img, scale=2)
    assert out.dtype == np.float32 and out.shape == (128, 128, 3)
    assert out.min() < 0 or out.max() > 1
    assert not np.allclose(out * 255, np.round(out * 255))


def test_imresize_on_torch_batches_matches_numpy(astronaut):
    """A float (N, C, H, W) tensor is resized on its last two axes, like the (H, W, C) numpy array."""
    img = astronaut[:60, :50].astype(np.float64) / 255
    batch = torch.from_numpy(img).permute(2, 0, 1).unsqueeze(0).repeat(2, 1, 1, 1).float()   # (2, 3, 60, 50)
    for scale in (1 / 4, 3):
        out = metrics.imresize(batch, scale=scale)
        assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
        expected = metrics.imresize(img, scale=scale)
        np.testing.assert_allclose(out[1].permute(1, 2, 0).numpy(), expected, atol=1e-5)


# ------------------------------------------------------------------------------------------------------
# rgb2y
# ------------------------------------------------------------------------------------------------------
def test_rgb2y_hand_computed_values():
    """Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255, rounded to 8 bits as MATLAB's rgb2ycbcr does for uint8."""
    pixels = np.array([[[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255], [128, 128, 128]]],
                      dtype=np.uint8)
    # black 16; white 16 + 219 = 235; red 16 + 65.481 = 81.481; green 144.553; blue 40.966; grey 16 + 219 * 128 / 255
    expected = [[16, 235, 81, 145, 41, 126]]
    y = metrics.rgb2y(pixels)
    assert y.dtype == np.float64
    np.testing.assert_array_equal(y, expected)


def test_rgb2y_agrees_with_skimage_rgb2ycbcr(astronaut):
    """skimage's rgb2ycbcr gives the same luma unrounded: ours is it rounded to the nearest whole number."""
    ours = metrics.rgb2y(astronaut)
    reference = rgb2ycbcr(astronaut)[..., 0]
    assert np.abs(ours - reference).max() <= 0.5 + 1e-9
    assert np.mean(ours == np.floor(reference + 0.5)) > 0.9999  # only exact halves may tip either way
    assert 16 <= ours.min() and ours.max() <= 235
    with pytest.raises(ValueError):
        metrics.rgb2y(astronaut.astype(np.float32))


# ------------------------------------------------------------------------------------------------------
# PSNR
# ------------------------------------------------------------------------------------------------------
def test_psnr_hand_computed_cases():
    hr = np.zeros((10, 10))
    # MSE 100 -> 10 log10(255^2 / 100)
    assert metrics.calculate_psnr(np.full((10, 10), 10.0), hr) == pytest.approx(10 * math.log10(65025 / 100), abs=1e-12)
    # One pixel off by 255 among 100: MSE = 650.25 = 255^2 / 100 -> exactly 20 dB.
    sr = hr.copy()
    sr[5, 5] = 255
    assert metrics.calculate_psnr(sr, hr) == pytest.approx(20.0, abs=1e-12)
    # The same error inside a 1-pixel border that is cropped away: identical -> infinite PSNR.
    sr_border = hr.copy()
    sr_border[0, 3] = 255
    assert metrics.calculate_psnr(sr_border, hr, crop_border=1) == math.inf
    # Computed in float64 even for uint8 input (no wrap-around of 0 - 255).
    assert metrics.calculate_psnr(sr.astype(np.uint8), hr.astype(np.uint8)) == pytest.approx(20.0, abs=1e-12)
    with pytest.raises(ValueError):
        metrics.calculate_psnr(np.zeros((4, 4)), np.zeros((4, 5)))


def test_psnr_agrees_with_skimage(astronaut):
    sr = metrics.imresize(metrics.imresize(astronaut, scale=1 / 4), scale=4)
    ours = metrics.calculate_psnr(sr, astronaut, crop_border=4)
    reference = peak_signal_noise_ratio(astronaut[4:-4, 4:-4], sr[4:-4, 4:-4], data_range=255)
    assert ours == pytest.approx(reference, abs=1e-10)


# ------------------------------------------------------------------------------------------------------
# SSIM
# ------------------------------------------------------------------------------------------------------
def _real_y_pairs(shared_data):
    """(SR, HR) luma pairs from real photos: bicubic x4 round trips of crops of Set5/Set14 (if present) and of
    scikit-image's photos."""
    photos = [skimage_data.astronaut(), skimage_data.coffee(), skimage_data.chelsea()]
    if shared_data is not None:
        photos += [np.asarray(Image.open(shared_data / "Set5" / "HR" / "butterfly.png")),
                   np.asarray(Image.open(shared_data / "Set14" / "HR" / "baboon.png"))]
    pairs = []
    for photo in photos:
        hr = metrics.modcrop_array(photo[:200, :160], 4)
        sr = metrics.imresize(metrics.imresize(hr, scale=1 / 4), scale=4)
        pairs.append((metrics.rgb2y(sr), metrics.rgb2y(hr)))
    return pairs


@pytest.fixture(scope="module")
def y_pairs(request):
    try:
        shared = request.getfixturevalue("shared_data")
    except pytest.skip.Exception:
        shared = None
    return _real_y_pairs(shared)


def test_ssim_agrees_with_skimage_gaussian_ssim(y_pairs):
    """Wang et al.'s SSIM = skimage's with gaussian_weights=True, sigma=1.5, use_sample_covariance=False."""
    for sr_y, hr_y in y_pairs:
        ours = metrics.calculate_ssim(sr_y, hr_y, crop_border=4)
        reference = structural_similarity(hr_y[4:-4, 4:-4], sr_y[4:-4, 4:-4], gaussian_weights=True, sigma=1.5,
                                          use_sample_covariance=False, data_range=255)
        assert 0.1 < ours < 0.99  # a real, imperfect reconstruction
        assert ours == pytest.approx(reference, abs=1e-9)


def test_ssim_skimage_default_variant_agrees_with_skimage_default(y_pairs):
    """The classic tutorial's SSIM (skimage's defaults: 7x7 uniform window, sample covariance)."""
    for sr_y, hr_y in y_pairs:
        ours = metrics.calculate_ssim(sr_y, hr_y, gaussian_weights=False, win_size=7, sample_covariance=True)
        reference = structural_similarity(hr_y, sr_y, data_range=255)
        assert ours == pytest.approx(reference, abs=1e-9)


def test_ssim_basic_properties(astronaut):
    y = metrics.rgb2y(astronaut)
    assert metrics.calculate_ssim(y, y) == pytest.approx(1.0, abs=1e-12)
    noisy = np.clip(y + np.random.default_rng(0).normal(0, 10, y.shape), 0, 255)
    assert metrics.calculate_ssim(noisy, y) == pytest.approx(metrics.calculate_ssim(y, noisy), abs=1e-12)  # symmetric
    assert metrics.calculate_ssim(noisy, y) < 0.9
    # Colour: mean of the per-channel SSIMs.
    rgb = astronaut[:64, :64].astype(np.float64)
    rgb_noisy = np.clip(rgb + 5, 0, 255)
    per_channel = [metrics.calculate_ssim(rgb_noisy[..., c], rgb[..., c]) for c in range(3)]
    assert metrics.calculate_ssim(rgb_noisy, rgb) == pytest.approx(np.mean(per_channel), abs=1e-12)
    with pytest.raises(ValueError):
        metrics.calculate_ssim(np.zeros((12, 12)), np.zeros((12, 12)), crop_border=2)  # 8x8 left: below 11x11


# ------------------------------------------------------------------------------------------------------
# evaluate_pair: the whole protocol for one image
# ------------------------------------------------------------------------------------------------------
def test_standard_protocol_steps(astronaut):
    """HR cropped top-left to a multiple of the scale, SR quantised, Y channel, `scale` pixels shaved."""
    scale = 3
    hr = astronaut[:101, :98]                                   # not multiples of 3
    hr_crop = hr[:99, :96]                                      # top-left crop, as MATLAB's modcrop
    sr_float = metrics.imresize(metrics.imresize(hr_crop, scale=1 / scale).astype(np.float64) / 255, scale=scale)
    psnr, ssim = metrics.evaluate_pair(sr_float, hr, scale)
    sr_uint8 = np.clip(np.floor(sr_float * 255 + 0.5), 0, 255).astype(np.uint8)
    hr_y, sr_y = metrics.rgb2y(hr_crop), metrics.rgb2y(sr_uint8)
    assert psnr == pytest.approx(peak_signal_noise_ratio(hr_y[3:-3, 3:-3], sr_y[3:-3, 3:-3], data_range=255), abs=1e-10)
    reference_ssim = structural_similarity(hr_y[3:-3, 3:-3], sr_y[3:-3, 3:-3], gaussian_weights=True, sigma=1.5,
                                           use_sample_covariance=False, data_range=255)
    assert ssim == pytest.approx(reference_ssim, abs=1e-9)
    # The float SR is quantised first: same numbers as the 8-bit SR.
    assert metrics.evaluate_pair(sr_uint8, hr, scale) == (psnr, ssim)
    # Extra rows/columns past the multiple of the scale are ignored (top-left crop, not centred).
    assert metrics.evaluate_pair(sr_uint8, hr_crop, scale) == (psnr, ssim)
    with pytest.raises(ValueError):
        metrics.evaluate_pair(sr_uint8[:-3], hr, scale)         # SR does not match the cropped HR
    with pytest.raises(ValueError):
        metrics.evaluate_pair(sr_uint8, hr, scale, protocol="tutorial")


def test_standard_protocol_measures_grey_images_on_their_own_values(astronaut):
    """A single-channel HR image is measured on its grey values, not on a luma of them (which would squeeze them
    into [16, 235] and raise PSNR by 20 log10(255 / 219) = 1.32 dB)."""
    grey = metrics.rgb2y(astronaut).astype(np.uint8)[:96, :96]
    sr = metrics.imresize(metrics.imresize(grey, scale=1 / 4), scale=4)
    psnr, ssim = metrics.evaluate_pair(sr, grey, 4)
    assert psnr == pytest.approx(metrics.calculate_psnr(sr, grey, crop_border=4), abs=1e-12)
    assert ssim == pytest.approx(metrics.calculate_ssim(sr, grey, crop_border=4), abs=1e-12)
    # A model returns RGB for it (grey repeated into 3 channels): measured as the same grey values.
    assert metrics.evaluate_pair(np.repeat(sr[..., None], 3, axis=2), grey, 4) == pytest.approx((psnr, ssim))


def test_classic_protocol_matches_a_reimplementation_of_the_tutorial(astronaut):
    """The classic tutorial: centre crop, float Y from [0, 1] images (SR not quantised), 4 pixels cropped whatever
    the scale, skimage's default PSNR and SSIM."""
    scale = 3
    hr = astronaut[:101, :98]
    hr_crop = hr[1:100, 1:97]                                   # centred: 101 % 3 = 2 -> 1 row off the top
    sr = np.clip(metrics.imresize(hr_crop.astype(np.float64) / 255, scale=1 / 3), 0, 1)
    sr = np.clip(metrics.imresize(sr, scale=3) + 0.001, 0, 1)      # float, between 8-bit levels
    weights = np.array([65.481, 128.553, 24.966])
    hr_y = (hr_crop.astype(np.float64) / 255)[4:-4, 4:-4] @ weights + 16
    sr_y = sr[4:-4, 4:-4] @ weights + 16
    psnr, ssim = metrics.evaluate_pair(sr, hr, scale, protocol="classic")
    assert psnr == pytest.approx(peak_signal_noise_ratio(hr_y, sr_y, data_range=255), abs=1e-9)
    assert ssim == pytest.approx(structural_similarity(hr_y, sr_y, data_range=255), abs=1e-9)
    # ... and it is a different protocol: its numbers differ from the standard one's on the same images.
    assert abs(psnr - metrics.evaluate_pair(sr, hr_crop, scale)[0]) > 0.01


# ------------------------------------------------------------------------------------------------------
# NIQE
# ------------------------------------------------------------------------------------------------------
# Reference NIQE scores computed once, outside this project, with BasicSR 1.4.2's calculate_niqe(img, crop_border,
# input_order='HWC', convert_to='y') (basicsr/metrics/niqe.py, its own pristine parameters), on the image read by
# cv2.imread (BGR; input_order='HW' for the grey bridge.png). "HR": the benchmark file itself; "bicubic x4": the MATLAB
# LR file LR_bicubic/X4/<name>x4.png upscaled x4 with metrics.imresize (MATLAB's bicubic, bit for bit), crop_border 4.
# BasicSR computes in float32 and metrics.calculate_niqe in float64, as MATLAB does: BasicSR's niqe() run in float64
# (with a float64 imresize) gives our scores to 1e-9; its float32 rounding moves its scores by up to ~0.2 on images
# with flat areas (MSCN coefficients that are exactly 0 in exact arithmetic change sign), by under 0.03 on these.
BASICSR_NIQE = [
    # (set, image, what, crop_border, BasicSR NIQE); the comment: width x height of the image measured
    ("Set14", "baboon", "HR", 0, 5.729572592446565),                # 500 x 480, RGB
    ("Set14", "comic", "HR", 0, 4.1388358658943085),                # 250 x 361, RGB
    ("Set14", "bridge", "HR", 0, 2.512162189134675),                # 512 x 512, grey
    ("BSD100", "101087", "HR", 0, 3.9807931637691643),              # 320 x 480, RGB
    ("Set5", "bird", "bicubic x4", 4, 8.104775405863803),           # 288 x 288
    ("Set5", "woman", "bicubic x4", 4, 7.343660672978073),          # 228 x 344
    ("Set14", "monarch", "bicubic x4", 4, 7.534146471924531),       # 768 x 512
    ("Set14", "zebra", "bicubic x4", 4, 7.569937606892577),         # 584 x 388
]


def test_niqe_agrees_with_basicsr_on_real_images(shared_data):
    """Acceptance: within 0.05 of BasicSR's NIQE on real images of 8 different sizes (HR photos, a grey one, and
    bicubic x4 upscales), with the border crop."""
    diffs = []
    for test_set, name, what, crop_border, reference in BASICSR_NIQE:
        hr_path = shared_data / test_set / "HR" / f"{name}.png"
        if what == "HR":
            img = np.asarray(Image.open(hr_path))                                  # (H, W, 3) or (H, W), uint8
        else:
            img = metrics.imresize(np.asarray(Image.open(metrics.provided_lr_path(hr_path, 4))), scale=4)
        ours = metrics.calculate_niqe(img, crop_border=crop_border)
        diffs.append(abs(ours - reference))
        assert ours == pytest.approx(reference, abs=0.05), (name, what)
    assert max(diffs) < 0.03  # (measured: 0.021, Set5 bird; the others under 0.01)


def test_niqe_of_a_blurred_image_is_higher(astronaut):
    """Blur removes the sharp-edge statistics of natural photos: NIQE (lower is better) rises, clearly."""
    blurred = np.stack([scipy.ndimage.gaussian_filter(astronaut[..., c].astype(np.float64), 1.5) for c in range(3)],
                       axis=2)
    blurred = np.clip(np.floor(blurred + 0.5), 0, 255).astype(np.uint8)
    sharp_score, blurred_score = metrics.calculate_niqe(astronaut), metrics.calculate_niqe(blurred)
    assert 2 < sharp_score < 5  # a sharp photo (measured: 3.10)
    assert blurred_score > sharp_score + 2  # (measured: 6.63)


def test_niqe_pristine_model_file():
    """The data file holds the model MATLAB's niqe uses: 36 means, a symmetric positive-definite 36x36 covariance,
    the 7x7 Gaussian window of sigma 7/6 (MATLAB's fspecial('gaussian', 7, 7/6)), and names its source and licence."""
    mu, cov, window = metrics.load_niqe_model()
    assert mu.shape == (36,) and cov.shape == (36, 36) and window.shape == (7, 7)
    assert mu[0] == 2.6013136801541448  # the first mean, as in BasicSR's niqe_pris_params.npz, to the bit
    np.testing.assert_array_equal(cov, cov.T)
    assert np.linalg.eigvalsh(cov).min() > 0
    offsets = np.arange(-3, 4)
    gaussian = np.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2 * (7 / 6) ** 2))
    np.testing.assert_allclose(window, gaussian / gaussian.sum(), atol=1e-15)
    about = json.loads(metrics.NIQE_MODEL_PATH.read_text())
    assert "BasicSR 1.4.2" in about["source"] and "Mittal" in about["source"]
    assert "Apache License 2.0" in about["licence"]


def test_niqe_input_forms_blocks_and_errors(astronaut):
    """RGB is measured on rgb2y's luma; a grey (H, W) or (H, W, 1) array on its values; the border crop is a plain
    crop; only whole 96x96 blocks (top-left) count; fewer than two blocks is an error."""
    y = metrics.rgb2y(astronaut)
    score = metrics.calculate_niqe(astronaut)
    assert metrics.calculate_niqe(y) == score
    assert metrics.calculate_niqe(y.astype(np.uint8)[..., None]) == score
    assert metrics.calculate_niqe(astronaut, crop_border=5) == metrics.calculate_niqe(y[5:-5, 5:-5])
    # 500x300 holds 5x3 whole blocks: the pixels past them (bottom and right) change nothing.
    assert metrics.calculate_niqe(y[:500, :300]) == metrics.calculate_niqe(y[:480, :288])
    assert metrics.calculate_niqe(y[:500, :300]) != metrics.calculate_niqe(y[12:492, 12:300])
    with pytest.raises(ValueError, match="at least two 96x96 blocks"):
        metrics.calculate_niqe(astronaut[:191, :191])                               # one block only
    with pytest.raises(ValueError):
        metrics.calculate_niqe(np.zeros((200, 200, 2)))                             # neither RGB nor grey


# ------------------------------------------------------------------------------------------------------
# Spectral measures
# ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def photo_y(astronaut):
    """The astronaut's luma, 8-bit values in [16, 235], (512, 512) float64."""
    return metrics.rgb2y(astronaut)


def test_welch_power_spectrum_of_white_noise_and_of_a_wave():
    """Normalised so that white noise of variance v has power v in every bin (what Welch's method promises), and a
    wave of k / 32 cycles per pixel puts its power at bin k."""
    rng = np.random.default_rng(0)
    power = metrics.welch_power_spectrum(rng.normal(0, 3, (512, 512)), 32)                 # (32, 32)
    assert power.shape == (32, 32)
    assert np.median(power) == pytest.approx(9, rel=0.05)
    x = np.arange(256)
    wave = np.tile(np.sin(2 * np.pi * 5 / 32 * x), (256, 1))                              # along the width
    power = metrics.welch_power_spectrum(wave, 32)
    assert np.unravel_index(power.argmax(), power.shape) in [(0, 5), (0, 27)]             # +-5 / 32


def test_spectral_of_identical_images_is_zero(photo_y):
    assert metrics.calculate_spectral(photo_y, photo_y, 4, crop_border=4) == {
        "hf_gain": 0.0, "lattice": 0.0, "lattice_hr": 0.0}


@pytest.mark.parametrize("pattern", ["grid", "checkerboard"])
def test_spectral_sees_a_grid_or_a_checkerboard_added_to_a_photo(photo_y, pattern):
    """A faint pattern of period 4 (a random fixed 4x4 tile, 2 grey levels) or 2 (a checkerboard) added to a photo:
    high on both lattice measures, past the thresholds of a visible pattern (0.5 and -10 dB), while the high
    frequencies as a whole barely move. (A checkerboard has one of the 15 lattice frequencies, (1/2, 1/2), so the
    mean over them rises less than for a grid, which has them all.)"""
    rng = np.random.default_rng(1)
    if pattern == "grid":
        cell = rng.uniform(-1, 1, (4, 4))
        cell *= 2 / np.abs(cell).max()
        added = np.tile(cell, (128, 128))                                                  # (512, 512)
    else:
        added = 2.0 * (-1.0) ** np.add.outer(np.arange(512), np.arange(512))
    scores = metrics.calculate_spectral(photo_y + added, photo_y, 4, crop_border=4)
    assert scores["lattice"] > (3 if pattern == "grid" else 1) and scores["lattice_hr"] > -10
    assert abs(scores["hf_gain"]) < 3


def test_spectral_of_blur_and_of_a_blurry_output_with_a_faint_grid(photo_y):
    """Blur: hf_gain clearly negative, no lattice peak. The same blur with a very faint grid: the grid stands out of
    the blurred neighbourhood (lattice up) but stays far below the photo's own power there (lattice_hr low): by the
    two thresholds together, not a visible pattern."""
    blurred = scipy.ndimage.gaussian_filter(photo_y, 1.5)
    scores = metrics.calculate_spectral(blurred, photo_y, 4, crop_border=4)
    assert scores["hf_gain"] < -10
    assert abs(scores["lattice"]) < 0.5
    sharper = metrics.calculate_spectral(scipy.ndimage.gaussian_filter(photo_y, 0.7), photo_y, 4, crop_border=4)
    assert scores["hf_gain"] < sharper["hf_gain"] < 0
    faint = np.tile(np.random.default_rng(2).uniform(-0.1, 0.1, (4, 4)), (128, 128))
    scores = metrics.calculate_spectral(blurred + faint, photo_y, 4, crop_border=4)
    assert scores["lattice"] > 0.5 and scores["lattice_hr"] < -10


def test_spectral_needs_a_tile(photo_y):
    with pytest.raises(ValueError, match="at least 32x32 pixels"):
        metrics.calculate_spectral(photo_y[:38, :100], photo_y[:38, :100], 4, crop_border=4)


# ------------------------------------------------------------------------------------------------------
# Degraded-input protocols
# ------------------------------------------------------------------------------------------------------
DEGRADED = [name for name in metrics.LR_DEGRADATIONS if name != "bicubic"]


def test_image_seed_is_a_fixed_function_of_the_name():
    """CRC-32 of the name: the same number in every process and Python version (hash() of a str is not)."""
    assert metrics.image_seed("baby") == 2272035134
    assert metrics.image_seed("baby") != metrics.image_seed("bird")


@pytest.mark.parametrize("lr_degradation", DEGRADED)
def test_degraded_lr_is_bit_identical_on_every_run_and_depends_on_the_seed(astronaut, lr_degradation):
    """Acceptance: the same HR image and seed give the same LR bits; another seed gives another LR image (for the
    settings that draw random numbers; 'jpeg' draws none, so its seed changes nothing)."""
    hr = metrics.modcrop_array(astronaut[:203, :157], 4)
    lr = metrics.degrade_lr(hr, 4, lr_degradation, seed=11)
    assert lr.dtype == np.uint8 and lr.shape == (50, 39, 3)
    np.testing.assert_array_equal(metrics.degrade_lr(hr, 4, lr_degradation, seed=11), lr)
    assert not np.array_equal(lr, metrics.imresize(hr, scale=1 / 4))               # degraded, not the clean LR
    other_seed = metrics.degrade_lr(hr, 4, lr_degradation, seed=12)
    if lr_degradation == "jpeg":
        np.testing.assert_array_equal(other_seed, lr)
    else:
        assert not np.array_equal(other_seed, lr)


def test_degraded_lr_is_the_same_in_another_process(tmp_path, astronaut):
    """Every run: a fresh Python process (another hash seed, another thread count) loads the same test images and makes
    the same LR bits."""
    paths = []
    for name, crop in (("left", astronaut[:120, :100]), ("right", astronaut[200:320, 300:400])):
        paths.append(tmp_path / f"{name}.png")
        Image.fromarray(crop).save(paths[-1])
    # The other run writes its LR images to lr.npz, one array per (setting, image).
    script = "\n".join([
        f"import sys; sys.path.insert(0, {str(Path(metrics.__file__).parent)!r})",
        "from pathlib import Path; import numpy as np; import metrics",
        f"paths = [Path(p) for p in {[str(p) for p in paths]!r}]",
        f"lrs = {{f'{{d}}_{{name}}': lr for d in {DEGRADED!r}",
        "       for name, _, lr in metrics.load_test_pairs(paths, 4, lr_degradation=d)}",
        f"np.savez({str(tmp_path / 'lr.npz')!r}, **lrs)"])
    threads = "1" if torch.get_num_threads() > 1 else "2"
    subprocess.run([sys.executable, "-c", script], check=True,
                   env={**os.environ, "PYTHONHASHSEED": "123", "OMP_NUM_THREADS": threads})
    other_run = np.load(tmp_path / "lr.npz")
    for lr_degradation in DEGRADED:
        for name, _, lr in metrics.load_test_pairs(paths, 4, lr_degradation=lr_degradation):
            np.testing.assert_array_equal(other_run[f"{lr_degradation}_{name}"], lr)


def test_realesrgan_lr_does_not_depend_on_the_thread_count(shared_data):
    """torch splits sums differently over 1 and 2 threads, which moved 2 pixels of Set14 (baboon, flowers) by one
    level; degrade_lr runs the pipeline on one thread, so the LR images are the same whatever the thread count."""
    paths = sorted((shared_data / "Set14" / "HR").glob("*.png"))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = metrics.load_test_pairs(paths, 4, lr_degradation="realesrgan")
        torch.set_num_threads(2)
        two = metrics.load_test_pairs(paths, 4, lr_degradation="realesrgan")
    finally:
        torch.set_num_threads(threads)
    for (name, _, lr_one), (_, _, lr_two) in zip(one, two):
        np.testing.assert_array_equal(lr_one, lr_two, err_msg=name)
    assert torch.get_num_threads() == threads  # degrade_lr gave the thread count back


def test_jpeg_and_noise_settings_do_what_they_say(astronaut, monkeypatch, tmp_path):
    """'jpeg' is the bicubic LR image through one Pillow JPEG file at quality 75; 'noise_jpeg' adds Gaussian noise of
    sigma 5 levels (rounded, clipped) before the same JPEG step."""
    hr = metrics.modcrop_array(astronaut, 4)
    bicubic = metrics.imresize(hr, scale=1 / 4)                                    # (128, 128, 3), uint8
    np.testing.assert_array_equal(metrics.degrade_lr(hr, 4, "bicubic", seed=3), bicubic)
    # JPEG, by way of a real file.
    Image.fromarray(bicubic).save(tmp_path / "lr.jpg", quality=75)
    np.testing.assert_array_equal(metrics.degrade_lr(hr, 4, "jpeg"), np.asarray(Image.open(tmp_path / "lr.jpg")))
    # The noise alone (JPEG switched off): zero mean, sigma 5, whole levels in [0, 255].
    monkeypatch.setattr(metrics, "_jpeg_round_trip", lambda img, quality: img)
    noisy = metrics.degrade_lr(hr, 4, "noise_jpeg", seed=3).astype(np.float64)
    noise = (noisy - bicubic)[(bicubic > 20) & (bicubic < 235)]                   # away from clipping
    assert abs(noise.mean()) < 0.1 and noise.std() == pytest.approx(5.0, abs=0.1)
    assert noise.std() > 0 and np.array_equal(noise, np.round(noise))


def test_realesrgan_setting_is_a_milder_run_of_the_training_pipeline(astronaut):
    """'realesrgan' is degradations.degrade_batch with its own settings, each range within the training range; a grey
    image stays grey."""
    settings = metrics.LR_DEGRADATIONS["realesrgan"]["settings"]
    for key, (low, high) in settings.items():
        default_low, default_high = degradations.DEGRADATION_DEFAULTS[key]
        if key.startswith("jpeg"):  # milder JPEG: a higher lowest quality
            assert low >= default_low and high == default_high
        else:
            assert low >= default_low and high <= default_high and (low, high) != (default_low, default_high)
    hr = metrics.modcrop_array(astronaut[:128, :96], 4)
    seed = metrics.image_seed("astronaut")
    expected = degradations.degrade_batch(torch.from_numpy(hr.copy()).permute(2, 0, 1)[None].float() / 255, 4,
                                          settings, torch.Generator().manual_seed(seed))
    expected = (expected[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    np.testing.assert_array_equal(metrics.degrade_lr(hr, 4, "realesrgan", seed), expected)
    grey = metrics.degrade_lr(metrics.rgb2y(hr).astype(np.uint8), 4, "realesrgan", seed)
    assert grey.shape == (32, 24) and grey.dtype == np.uint8


def test_load_test_pairs_with_a_degraded_setting(tmp_path, astronaut):
    """The HR image stays as stored; the LR image is degrade_lr of its standard crop with the seed of its file name;
    settings that need HR under the standard protocol refuse the other LR sources."""
    crop = astronaut[:101, :98]
    for name in ("a", "b"):  # the same pixels under two names: two seeds
        Image.fromarray(crop).save(tmp_path / f"{name}.png")
    pairs = metrics.load_test_pairs([tmp_path / "a.png", tmp_path / "b.png"], 4, lr_degradation="noise_jpeg")
    (name_a, hr_a, lr_a), (_, _, lr_b) = pairs
    assert name_a == "a" and np.array_equal(hr_a, crop)
    np.testing.assert_array_equal(lr_a, metrics.degrade_lr(crop[:100, :96], 4, "noise_jpeg", metrics.image_seed("a")))
    assert not np.array_equal(lr_a, lr_b)
    with pytest.raises(ValueError, match="standard protocol"):
        metrics.load_test_pairs([tmp_path / "a.png"], 4, lr_source="provided", lr_degradation="jpeg")
    with pytest.raises(ValueError, match="standard protocol"):
        metrics.load_test_pairs([tmp_path / "a.png"], 4, protocol="classic", lr_degradation="jpeg")
    with pytest.raises(ValueError, match="unknown LR degradation"):
        metrics.load_test_pairs([tmp_path / "a.png"], 4, lr_degradation="blur")


def test_rgb_psnr_is_scikit_images_psnr_of_the_rgb_channels(astronaut):
    """calculate_rgb_psnr: scikit-image's PSNR of the 8-bit RGB arrays, HR cropped top-left to a multiple of the
    scale and `scale` pixels shaved; a float SR image is quantised first."""
    hr = astronaut[:301, :250]                                                     # cropped to 300 x 248 at x4
    sr = metrics.imresize(metrics.imresize(metrics.modcrop_array(hr, 4), scale=1 / 4), scale=4)   # (300, 248, 3)
    expected = peak_signal_noise_ratio(hr[4:296, 4:244], sr[4:-4, 4:-4], data_range=255)
    assert metrics.calculate_rgb_psnr(sr, hr, 4) == pytest.approx(expected, abs=1e-9)
    assert metrics.calculate_rgb_psnr(sr / 255, hr, 4) == metrics.calculate_rgb_psnr(sr, hr, 4)
    with pytest.raises(ValueError, match="multiple of 4"):
        metrics.calculate_rgb_psnr(sr[:-4], hr, 4)


def test_rgb_psnr_sees_the_tint_of_a_grey_photo_that_y_hides():
    """A grey photo turned red (+6) and less green (-3), which leaves its luma where it was: the Y PSNR stays
    infinite, the RGB PSNR is 10 log10(255^2 / ((36 + 9 + 0) / 3)). A grey SR of a grey photo: RGB PSNR = PSNR."""
    grey = np.clip(skimage_data.camera()[:200, :200], 10, 240)                    # (200, 200) uint8, grey HR
    tinted = np.stack([grey + 6, grey - 3, grey], axis=2).astype(np.uint8)        # (200, 200, 3)
    assert metrics.evaluate_pair(tinted, grey, 4)[0] == math.inf
    assert metrics.calculate_rgb_psnr(tinted, grey, 4) == pytest.approx(10 * math.log10(255 ** 2 / 15), abs=1e-9)
    pairs = [("camera", grey, metrics.imresize(grey, scale=1 / 4))]
    scores = metrics.measure_set(None, pairs, 4, ("psnr", "psnr_rgb"))           # bicubic: grey in, grey out
    assert scores["psnr_rgb"] == scores["psnr"] < math.inf
    with pytest.raises(ValueError, match="standard protocol"):
        metrics.measure_set(None, pairs, 4, ("psnr_rgb",), protocol="classic")


def test_measure_set_adds_niqe_of_the_measured_luma(astronaut, tmp_path):
    """measure_set: PSNR / SSIM as evaluate_set gives them, NIQE of each SR image's Y with `scale` pixels shaved."""
    Image.fromarray(astronaut[:300, :250]).save(tmp_path / "photo.png")
    pairs = metrics.load_test_pairs([tmp_path / "photo.png"], 4, lr_degradation="jpeg")
    scores = metrics.measure_set(None, pairs, 4, ("psnr", "ssim", "niqe"))
    assert list(scores) == ["psnr", "ssim", "niqe"]
    assert (scores["psnr"], scores["ssim"]) == metrics.evaluate_set(None, pairs, 4)
    sr = metrics.imresize(pairs[0][2], scale=4)                                    # bicubic, (300, 248, 3)
    assert scores["niqe"] == metrics.calculate_niqe(metrics.rgb2y(sr)[4:-4, 4:-4])
    assert metrics.measure_set(None, pairs, 4, ("niqe",)) == {"niqe": scores["niqe"]}
    with pytest.raises(ValueError, match="unknown measure"):
        metrics.measure_set(None, pairs, 4, ("lpips",))
    with pytest.raises(ValueError, match="standard protocol"):
        metrics.measure_set(None, pairs, 4, ("niqe",), protocol="classic")


def test_measure_set_adds_the_spectral_measures_and_each_images_numbers(astronaut, tmp_path):
    """'spectral' gives hf_gain, lattice and lattice_hr of the measured luma against HR's, and per_image each image's
    numbers, whose means are the set's."""
    Image.fromarray(astronaut[:300, :250]).save(tmp_path / "a.png")
    Image.fromarray(astronaut[200:, 100:]).save(tmp_path / "b.png")
    pairs = metrics.load_test_pairs([tmp_path / "a.png", tmp_path / "b.png"], 4)
    per_image = []
    scores = metrics.measure_set(None, pairs, 4, ("psnr", "spectral"), per_image=per_image)
    assert list(scores) == ["psnr", "hf_gain", "lattice", "lattice_hr"] == metrics.measure_keys(("psnr", "spectral"))
    assert [image["image"] for image in per_image] == ["a", "b"]
    for key in scores:
        assert scores[key] == pytest.approx(np.mean([image[key] for image in per_image]))
    sr = metrics.imresize(pairs[0][2], scale=4)                                    # bicubic, (300, 248, 3)
    expected = metrics.calculate_spectral(metrics.rgb2y(sr), metrics.rgb2y(astronaut[:300, :248]), 4, crop_border=4)
    assert {key: per_image[0][key] for key in expected} == expected
    assert scores["hf_gain"] < -15                                                 # bicubic x4 is blurry
    with pytest.raises(ValueError, match="standard protocol"):
        metrics.measure_set(None, pairs, 4, ("spectral",), protocol="classic")
