"""Measuring super-resolution the way papers do, and evaluating a generator on a test set.

Papers report PSNR / SSIM under one fixed protocol, computed with MATLAB. To put our numbers next to theirs we
reproduce that protocol exactly (Departure from the classic tutorial, whose own protocol, kept as 'classic' for
comparison, differs at almost every step):
  1. LR test images are made with MATLAB's `imresize(hr, 1/s, 'bicubic')` (antialiased, 8 bits per pass).
  2. The HR image is cropped top-left to a multiple of s; the SR output is quantised to 8 bits.
  3. RGB images are measured on their luma Y (BT.601, MATLAB's `rgb2ycbcr` on the 8-bit image: Y in [16, 235],
     itself 8 bits); single-channel (grey) images are measured on their own values.
  4. s pixels are shaved from every border (the network cannot see past the image edge there).
  5. PSNR in float64; SSIM as in Wang et al. 2004 (11x11 Gaussian window, sigma 1.5, 'valid' filtering).
Beside them: PSNR over the three RGB channels (the same crop, 8 bits and border), which shows what Y hides: a
colour shift (a tint, or a grey photo turned slightly red, costs RGB PSNR and leaves Y almost as it is); NIQE, a
no-reference score of how natural the SR image looks (on the same Y, the same border shaved),
and degraded-input settings (JPEG, noise, Real-ESRGAN's chain) that measure how a model copes with the LR images
people actually have, each reproducible to the bit.
Everything works on whole arrays at once (no per-pixel Python loops).

Contents, top to bottom:
  imresize                                    MATLAB's bicubic resize, bit for bit
  rgb2y, calculate_psnr, calculate_ssim       the measurements
  calculate_rgb_psnr                          PSNR on the RGB channels instead of Y, to see colour shifts
  calculate_niqe                              NIQE as MATLAB's niqe computes it (pristine model in metrics_data/)
  calculate_spectral                          blur and periodic patterns (grids) from the power spectra of SR and HR
  evaluate_pair                               the protocols ('standard', and the classic tutorial's for comparison)
  LR_DEGRADATIONS, degrade_lr                 the LR images of the degraded-input settings, with fixed seeds
  read_test_list ... evaluate_set             a generator (or bicubic) on a whole test set: what eval.py runs, and
                                              what a training script can call to validate with exactly eval.py's code
"""
import functools
import io
import json
import math
import sys
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import degradations
import inference
import utils


# ------------------------------------------------------------------------------------------------------
# MATLAB's bicubic imresize
# ------------------------------------------------------------------------------------------------------
def _cubic(x):
    """Keys' cubic convolution kernel with a = -0.5 (MATLAB's 'bicubic'). x: any array; returns weights there."""
    absx = np.abs(x)
    absx2, absx3 = absx ** 2, absx ** 3
    # |x| <= 1: 1.5|x|^3 - 2.5|x|^2 + 1;  1 < |x| <= 2: -0.5|x|^3 + 2.5|x|^2 - 4|x| + 2;  0 beyond.
    return ((1.5 * absx3 - 2.5 * absx2 + 1) * (absx <= 1)
            + (-0.5 * absx3 + 2.5 * absx2 - 4 * absx + 2) * ((absx > 1) & (absx <= 2)))


def _resize_taps(in_length, out_length, scale, antialiasing=True):
    """The taps of a 1-D resize done the way MATLAB's imresize does it.

    Each output sample is a weighted sum of P input samples under a cubic kernel centred on its position in the
    input. Returns (weights, indices), both (out_length, P): output sample i = sum over p of
    weights[i, p] * input[indices[i, p]] (0-based indices, already mirrored at the borders).
    """
    # When shrinking, MATLAB stretches the kernel by 1/scale (a low-pass filter against aliasing).
    if scale < 1 and antialiasing:
        kernel_width = 4.0 / scale
        kernel = lambda x: scale * _cubic(scale * x)
    else:
        kernel_width = 4.0
        kernel = _cubic

    # Output pixel x (1-based, as in MATLAB) sits at position u in the input: pixel centres are aligned, not corners.
    x = np.arange(1, out_length + 1, dtype=np.float64)                        # (out_length,)
    u = x / scale + 0.5 * (1 - 1 / scale)

    # The input pixels that can touch output pixel x: P of them, starting at the leftmost one under the kernel.
    left = np.floor(u - kernel_width / 2)
    num_taps = int(math.ceil(kernel_width)) + 2
    indices = left[:, None] + np.arange(num_taps)[None, :]                      # (out_length, P), 1-based
    weights = kernel(u[:, None] - indices)                                       # (out_length, P)
    weights = weights / weights.sum(axis=1, keepdims=True)                       # each row sums to 1

    # Taps outside the image read the mirror image of the border ("symmetric" padding: ... 2 1 | 1 2 3 ...).
    mirror = np.concatenate([np.arange(in_length), np.arange(in_length - 1, -1, -1)])   # 0-based
    indices = mirror[np.mod(indices.astype(np.int64) - 1, 2 * in_length)]

    # Drop the taps whose weight is 0 for every output sample (MATLAB does the same).
    used = np.any(weights != 0, axis=0)
    return weights[:, used], indices[:, used]


def _resize_along_axis(img, weights, indices, axis):
    """Apply the taps of `_resize_taps` along one axis of a numpy array or torch tensor (float).

    The loop runs over the P taps only (6 when upscaling, 4 * s + 2 when shrinking by s); each step handles every
    pixel at once. Summing tap by tap, in order, is also the order MATLAB sums in.
    """
    # Weights broadcast along the other axes: shape (1, ..., out_length, ..., 1).
    shape = [1] * img.ndim
    shape[axis] = -1
    out = 0
    for p in range(weights.shape[1]):
        if isinstance(img, torch.Tensor):
            tap = torch.index_select(img, axis, torch.from_numpy(indices[:, p]).to(img.device))
            out = out + torch.from_numpy(weights[:, p]).to(device=img.device, dtype=img.dtype).view(shape) * tap
        else:
            out = out + weights[:, p].reshape(shape) * np.take(img, indices[:, p], axis=axis)
    return out


def _round_to_uint8(values):
    """Round half away from zero and saturate to [0, 255], as MATLAB does when a uint8 result is stored."""
    if isinstance(values, torch.Tensor):
        return torch.floor(values + 0.5).clamp_(0, 255)
    return np.clip(np.floor(values + 0.5), 0, 255)


def imresize(img, scale=None, output_size=None, antialiasing=True):
    """Resize an image with bicubic interpolation exactly as MATLAB's `imresize(img, scale, 'bicubic')` does.

    :param img: numpy array (H, W) or (H, W, C), uint8 or float (e.g. `np.asarray(pil_img)`), or a float torch tensor
                (..., H, W), e.g. (N, C, H, W) in [0, 1]
    :param scale: resize factor for both axes, e.g. 1/4 to make an LR image, 4 to upscale one
    :param output_size: (out_H, out_W) instead of `scale`; the factor of each axis is then out/in
    :param antialiasing: widen the kernel when shrinking (MATLAB's default, True)
    :return: the resized image, same type and dtype as `img`; its size is ceil(scale * size).
             uint8 in -> uint8 out, rounded to 8 bits after EACH of the two 1-D passes, as MATLAB does;
             float in -> float out, not clipped (bicubic can overshoot the input's range a little).
    """
    is_tensor = isinstance(img, torch.Tensor)
    if is_tensor:
        height_axis, width_axis = img.dim() - 2, img.dim() - 1
    else:
        img = np.asarray(img)
        if img.ndim not in (2, 3):
            raise ValueError(f"imresize expects an (H, W) or (H, W, C) array, got shape {img.shape}")
        height_axis, width_axis = 0, 1
    in_size = (img.shape[height_axis], img.shape[width_axis])

    # Scale factor and output size of each axis: ceil(scale * size), in double precision exactly as MATLAB computes it
    # (so 1.1 * 50 = 55.00000000000001 gives 56 there and here).
    if (scale is None) == (output_size is None):
        raise ValueError("imresize needs exactly one of `scale` or `output_size`")
    if scale is not None:
        scales = (float(scale), float(scale))
        out_size = tuple(int(math.ceil(s * n)) for s, n in zip(scales, in_size))
    else:
        out_size = (int(output_size[0]), int(output_size[1]))
        scales = (out_size[0] / in_size[0], out_size[1] / in_size[1])
    if min(out_size) < 1:
        raise ValueError(f"imresize: a {in_size[0]}x{in_size[1]} image is too small to resize by {scale}")

    # Work in float64 for numpy (as MATLAB does) and in the tensor's own float dtype for torch.
    is_uint8 = img.dtype == (torch.uint8 if is_tensor else np.uint8)
    if is_tensor:
        out = img.to(torch.float64) if is_uint8 else img
    else:
        out = img.astype(np.float64)

    # MATLAB resizes the axis that shrinks most first (height first when both scales are equal).
    order = sorted(range(2), key=lambda k: scales[k])
    for k in order:
        axis = (height_axis, width_axis)[k]
        weights, indices = _resize_taps(in_size[k], out_size[k], scales[k], antialiasing)   # (out_len, P) each
        out = _resize_along_axis(out, weights, indices, axis)
        # MATLAB stores each pass's result in the input's class, so 8-bit input is rounded after every pass.
        if is_uint8:
            out = _round_to_uint8(out)

    if is_tensor:
        return out.to(torch.uint8) if is_uint8 else out
    return out.astype(np.uint8) if is_uint8 else out.astype(img.dtype)


# ------------------------------------------------------------------------------------------------------
# Luma, PSNR and SSIM
# ------------------------------------------------------------------------------------------------------
# MATLAB's rgb2ycbcr luma weights w = utils.RGB_TO_Y_WEIGHTS; for 8-bit RGB, Y = 16 + (w_R R + w_G G + w_B B) / 255.
# A float64 numpy array, for the numpy metrics.
_Y_WEIGHTS = utils.RGB_TO_Y_WEIGHTS.numpy()


def rgb2y(img):
    """Luma Y (BT.601) of an 8-bit RGB image, exactly as MATLAB's `rgb2ycbcr` computes it from the uint8 image
    (the first channel of its result).

    MATLAB returns uint8 for uint8 input, so Y is quantised too: 16 + (w_R R + w_G G + w_B B) / 255 (the weights of
    utils.RGB_TO_Y_WEIGHTS), rounded half away from zero. (Scripts that call `rgb2ycbcr(im2double(img))` instead
    keep Y's fraction; that gives about 0.01-0.03 dB higher PSNR on the bicubic baselines. The protocol here quantises, as MATLAB does on
    the 8-bit images: the classic tutorial's "float Y never quantised" is one of the differences it removes.)

    :param img: uint8 numpy array (H, W, 3), RGB
    :return: float64 array (H, W) of whole numbers in [16, 235]
    """
    img = np.asarray(img)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"rgb2y expects an 8-bit RGB array (H, W, 3), got dtype {img.dtype} and shape {img.shape}")
    rgb = img.astype(np.float64)
    # Same order of operations as MATLAB (imlincomb): each weight pre-divided by 255, the offset added last.
    y = (_Y_WEIGHTS[0] / 255 * rgb[..., 0] + _Y_WEIGHTS[1] / 255 * rgb[..., 1]
         + _Y_WEIGHTS[2] / 255 * rgb[..., 2] + 16)
    return _round_to_uint8(y)


def _shave(img, crop_border):
    """Remove `crop_border` pixels from each of the four borders of an (H, W) or (H, W, C) array."""
    if crop_border == 0:
        return img
    return img[crop_border:-crop_border, crop_border:-crop_border, ...]


def calculate_psnr(sr, hr, crop_border=0, data_range=255.):
    """Peak signal-to-noise ratio, in float64: 10 log10(data_range^2 / MSE).

    :param sr: super-resolved image, numpy array (H, W) or (H, W, C), any real dtype
    :param hr: ground-truth image of the same shape
    :param crop_border: pixels removed from each border before measuring
    :param data_range: peak value (255 for 8-bit values)
    :return: PSNR in dB (float; inf for identical images)
    """
    sr, hr = np.asarray(sr), np.asarray(hr)
    if sr.shape != hr.shape:
        raise ValueError(f"PSNR needs images of the same shape, got {sr.shape} and {hr.shape}")
    diff = _shave(sr.astype(np.float64), crop_border) - _shave(hr.astype(np.float64), crop_border)
    mse = np.mean(diff ** 2)
    if mse == 0:
        return float("inf")
    return float(10 * np.log10(data_range ** 2 / mse))


def _filter_valid(img, window_1d):
    """Filter an (H, W) float64 image with the separable window outer(w, w), keeping only the 'valid' part
    (MATLAB's filter2(window, img, 'valid')): the result is (H - k + 1, W - k + 1) for a window of length k."""
    k = len(window_1d)
    # sliding_window_view gives every k-long run along an axis as a last axis; a product with the window sums it.
    rows = np.lib.stride_tricks.sliding_window_view(img, k, axis=0) @ window_1d        # (H - k + 1, W)
    return np.lib.stride_tricks.sliding_window_view(rows, k, axis=1) @ window_1d       # (H - k + 1, W - k + 1)


def calculate_ssim(sr, hr, crop_border=0, data_range=255., gaussian_weights=True, win_size=11, sigma=1.5,
                   sample_covariance=False):
    """Structural similarity (Wang, Bovik, Sheikh, Simoncelli, IEEE TIP 2004), the mean of the SSIM map.

    The defaults are the paper's (and its reference MATLAB code's): an 11x11 Gaussian window with sigma 1.5,
    'valid' filtering (no padding), K1 = 0.01, K2 = 0.03, population (1/N) variances.
    `gaussian_weights=False, win_size=7, sample_covariance=True` gives scikit-image's default SSIM instead
    (a 7x7 uniform window, variances over N - 1), which the classic tutorial used.

    :param sr: super-resolved image, numpy array (H, W), or (H, W, C) (then the mean over channels)
    :param hr: ground-truth image of the same shape
    :param crop_border: pixels removed from each border before measuring
    :param data_range: peak value (255 for 8-bit values)
    :return: SSIM in [-1, 1] (float)
    """
    sr, hr = np.asarray(sr), np.asarray(hr)
    if sr.shape != hr.shape:
        raise ValueError(f"SSIM needs images of the same shape, got {sr.shape} and {hr.shape}")
    sr = _shave(sr.astype(np.float64), crop_border)
    hr = _shave(hr.astype(np.float64), crop_border)
    if sr.ndim == 3:
        # Colour: measure each channel on its own and average.
        return float(np.mean([calculate_ssim(sr[..., c], hr[..., c], 0, data_range, gaussian_weights, win_size,
                                              sigma, sample_covariance) for c in range(sr.shape[2])]))
    if min(sr.shape) < win_size:
        raise ValueError(f"SSIM needs images of at least {win_size}x{win_size} pixels after the border crop, "
                         f"got {sr.shape[0]}x{sr.shape[1]}")

    # The 1-D window: the 2-D window is its outer product (both the Gaussian and the uniform one separate).
    if gaussian_weights:
        offsets = np.arange(win_size) - (win_size - 1) / 2
        window_1d = np.exp(-offsets ** 2 / (2 * sigma ** 2))
    else:
        window_1d = np.ones(win_size)
    window_1d = window_1d / window_1d.sum()

    # Local means, variances and covariance under the window, each (H - k + 1, W - k + 1).
    mu_sr, mu_hr = _filter_valid(sr, window_1d), _filter_valid(hr, window_1d)
    var_sr = _filter_valid(sr * sr, window_1d) - mu_sr ** 2
    var_hr = _filter_valid(hr * hr, window_1d) - mu_hr ** 2
    cov = _filter_valid(sr * hr, window_1d) - mu_sr * mu_hr
    if sample_covariance:
        n = win_size ** 2
        var_sr, var_hr, cov = (v * n / (n - 1) for v in (var_sr, var_hr, cov))

    # SSIM map = luminance x contrast x structure terms, with the constants that keep them stable near zero.
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    ssim_map = (((2 * mu_sr * mu_hr + c1) * (2 * cov + c2))
                / ((mu_sr ** 2 + mu_hr ** 2 + c1) * (var_sr + var_hr + c2)))
    return float(ssim_map.mean())


# ------------------------------------------------------------------------------------------------------
# NIQE: a no-reference measure of how natural an image looks
# ------------------------------------------------------------------------------------------------------
# NIQE (Mittal, Soundararajan, Bovik, "Making a Completely Blind Image Quality Analyzer", 2013) needs no HR image.
# Natural photos share statistics: after each pixel is normalised by its neighbourhood's mean and deviation (the MSCN
# coefficients), the values, and the products of neighbouring values, follow bell-shaped (generalised Gaussian)
# distributions of typical shapes. NIQE fits those shapes in every 96x96 block of the image, at two scales (36
# numbers a block), fits one multivariate Gaussian to all blocks, and returns its distance to the Gaussian of pristine
# photos that the authors fitted once. 0 would be "exactly as natural as the pristine photos"; higher is less natural.
# The pristine model (36 means, their 36x36 covariance and the 7x7 window) lives in metrics_data/, with its source.
NIQE_MODEL_PATH = Path(__file__).resolve().parent / "metrics_data" / "niqe_pristine_model.json"
NIQE_BLOCK = 96  # block side at the full scale, the authors' choice (and that of their pristine model)

# The shape parameter alpha of a generalised Gaussian is found by table look-up, as the authors' code does: the
# ratio r(alpha) = Gamma(2 / alpha)^2 / (Gamma(1 / alpha) Gamma(3 / alpha)) for alpha = 0.2, 0.201, ..., 10 (the
# same grid, so the same alpha is picked), and each block takes the alpha whose ratio is closest to its own.
_AGGD_ALPHAS = np.arange(0.2, 10.001, 0.001)                                             # (9801,)


# SciPy is imported where NIQE uses it, not at the top of this file: importing it takes about 0.2 s, which every run of
# super_resolve.py and of the training scripts (they import this module, not NIQE) would otherwise pay.
def _gamma(x):
    """Euler's Gamma function, element-wise (scipy.special.gamma): float or array -> the same shape."""
    import scipy.special
    return scipy.special.gamma(x)


@functools.lru_cache(maxsize=1)
def _aggd_ratios():
    """r(alpha) for every alpha of _AGGD_ALPHAS: (9801,), computed once."""
    return _gamma(2 / _AGGD_ALPHAS) ** 2 / (_gamma(1 / _AGGD_ALPHAS) * _gamma(3 / _AGGD_ALPHAS))


@functools.lru_cache(maxsize=1)
def load_niqe_model():
    """NIQE's pristine model from NIQE_MODEL_PATH, read once.

    :return: (mu (36,), cov (36, 36), window (7, 7)), float64 numpy arrays
    """
    with open(NIQE_MODEL_PATH) as f:
        model = json.load(f)
    return tuple(np.array(model[key], dtype=np.float64) for key in ("mu", "cov", "gaussian_window"))


def _mscn(img, window):
    """Mean-subtracted, contrast-normalised coefficients of an (H, W) image: (x - local mean) / (local deviation + 1),
    under the Gaussian window (the +1 keeps flat regions from dividing by zero, on the 0-255 scale)."""
    import scipy.ndimage  # (here, not at the top: see _gamma)
    # The border is repeated outwards (MATLAB's imfilter(..., 'replicate')); the output has the input's size.
    mu = scipy.ndimage.convolve(img, window, mode="nearest")
    sigma = np.sqrt(np.abs(scipy.ndimage.convolve(img * img, window, mode="nearest") - mu * mu))
    return (img - mu) / (sigma + 1)


def _aggd_fit(x):
    """Fit an asymmetric generalised Gaussian to each row of x: (N, M) samples -> alpha, beta_left, beta_right, each
    (N,). alpha is the shape (2: Gaussian, smaller: peakier), the betas the spreads of the left and right halves.
    A row with no negative (or no positive) value gets NaN spreads, which the caller leaves out, as the authors do."""
    with np.errstate(divide="ignore", invalid="ignore"):
        left_std = np.sqrt(np.sum(x * x * (x < 0), axis=1) / np.sum(x < 0, axis=1))
        right_std = np.sqrt(np.sum(x * x * (x > 0), axis=1) / np.sum(x > 0, axis=1))
        gamma_hat = left_std / right_std
        r_hat = np.mean(np.abs(x), axis=1) ** 2 / np.mean(x * x, axis=1)
        r_hat_norm = r_hat * (gamma_hat ** 3 + 1) * (gamma_hat + 1) / (gamma_hat ** 2 + 1) ** 2
    # The closest ratio in the table, every row at once: (N, 9801) differences. (A NaN row picks the first entry,
    # as the authors' code does; its betas are NaN anyway.)
    alpha = _AGGD_ALPHAS[np.argmin((_aggd_ratios()[None, :] - r_hat_norm[:, None]) ** 2, axis=1)]
    spread = np.sqrt(_gamma(1 / alpha) / _gamma(3 / alpha))
    return alpha, left_std * spread, right_std * spread


def _niqe_block_features(mscn, block):
    """The 18 NIQE features of each block x block tile of an MSCN map whose sides are multiples of `block`.

    :param mscn: (H, W) MSCN coefficients
    :return: (number of tiles, 18), the tiles in row-major order
    """
    h, w = mscn.shape
    # (H, W) -> (tiles, block, block): rows of tiles, then tiles within a row.
    tiles = mscn.reshape(h // block, block, w // block, block).transpose(0, 2, 1, 3).reshape(-1, block, block)
    features = []
    # 1-2: the shape and mean spread of the coefficients themselves.
    alpha, beta_left, beta_right = _aggd_fit(tiles.reshape(len(tiles), -1))
    features += [alpha, (beta_left + beta_right) / 2]
    # 3-18: products of each coefficient with its right, lower, lower-right and lower-left neighbour. Each tile is
    # shifted circularly within itself (what the authors' code does), so a tile's own pixels only are used.
    for shift in ((0, 1), (1, 0), (1, 1), (1, -1)):
        products = tiles * np.roll(tiles, shift, axis=(1, 2))
        alpha, beta_left, beta_right = _aggd_fit(products.reshape(len(tiles), -1))
        mean = (beta_right - beta_left) * _gamma(2 / alpha) / _gamma(1 / alpha)
        features += [alpha, mean, beta_left, beta_right]
    return np.stack(features, axis=1)                                                       # (tiles, 18)


def calculate_niqe(img, crop_border=0):
    """NIQE, the naturalness of one image without any reference (Mittal et al. 2013). LOWER IS BETTER.

    Computed as MATLAB's `niqe` and BasicSR's `calculate_niqe(img, crop_border, convert_to='y')` compute it: on the
    luma Y (`rgb2y`, whole numbers in [16, 235]) of an RGB image, or on the values of a single-channel one;
    `crop_border` pixels shaved from each border; the rest cropped top-left to whole 96x96 blocks; features at the
    full and at half size (MATLAB's bicubic imresize by 0.5); the pristine model of metrics_data/.

    NIQE rewards the statistics of sharp natural photos, so it also rewards invented detail and some artefacts (noise,
    ringing): read it beside PSNR / SSIM, never alone.

    :param img: uint8 numpy array (H, W, 3), RGB; or (H, W) / (H, W, 1) grey or Y values in [0, 255], any real dtype
                (used as given)
    :param crop_border: pixels removed from each border first (the scaling factor, in the standard protocol)
    :return: NIQE score (float, typically 2-10 on photos; lower is better)
    """
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[2] == 3:
        y = rgb2y(img)                                                          # (H, W), whole numbers in [16, 235]
    elif img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 1):
        y = img.reshape(img.shape[0], img.shape[1]).astype(np.float64)         # (H, W), [0, 255]
    else:
        raise ValueError(f"NIQE expects an RGB (H, W, 3) or grey (H, W) image, got shape {img.shape}")
    y = _shave(y, crop_border)

    # Whole blocks only (top-left), and at least two of them: the image's Gaussian needs a covariance.
    n_rows, n_cols = y.shape[0] // NIQE_BLOCK, y.shape[1] // NIQE_BLOCK
    if n_rows * n_cols < 2:
        raise ValueError(f"NIQE needs at least two {NIQE_BLOCK}x{NIQE_BLOCK} blocks after the border crop (e.g. "
                         f"{NIQE_BLOCK}x{2 * NIQE_BLOCK} pixels); this image has {y.shape[1]}x{y.shape[0]}")
    y = y[:n_rows * NIQE_BLOCK, :n_cols * NIQE_BLOCK]

    # 18 features per block at full size, 18 more for the same block at half size: (blocks, 36).
    mu_pristine, cov_pristine, window = load_niqe_model()
    half = imresize(y, scale=0.5)                                    # (H/2, W/2), float, MATLAB's antialiased bicubic
    features = np.concatenate([_niqe_block_features(_mscn(y, window), NIQE_BLOCK),
                               _niqe_block_features(_mscn(half, window), NIQE_BLOCK // 2)], axis=1)

    # The image's multivariate Gaussian: mean over blocks (ignoring NaN features), covariance of the complete blocks.
    mu = np.nanmean(features, axis=0)                                                       # (36,)
    cov = np.cov(features[~np.isnan(features).any(axis=1)], rowvar=False)                   # (36, 36)

    # Distance between the two Gaussians: sqrt((mu_p - mu)^T ((cov_p + cov) / 2)^+ (mu_p - mu)) (pseudo-inverse: the
    # mean covariance can be singular).
    diff = mu_pristine - mu
    return float(np.sqrt(diff @ np.linalg.pinv((cov_pristine + cov) / 2) @ diff))


# ------------------------------------------------------------------------------------------------------
# Spectral measures: blur and periodic patterns (grids, checkerboards), with no network
# ------------------------------------------------------------------------------------------------------
# A GAN can print a faint regular pattern: a grid of the upscaling factor's period, or a checkerboard. PSNR barely
# moves and NIQE may even like it, but in the power spectrum such a pattern is plain: a pattern repeating every s
# pixels puts all its power at the frequencies k / s cycles per pixel (the "lattice"). Comparing the spectra of SR and
# HR tile by tile (Welch's method: the mean power spectrum of overlapping windowed tiles) gives three numbers:
#   hf_gain     mean dB of SR / HR power above 0.1 cycles per pixel: < 0 blurrier than HR (bicubic x4, Set14: -23),
#               > 0 more high-frequency power than HR (noise, over-sharpening)
#   lattice     dB by which the lattice frequencies stand above their neighbourhood in SR / HR: a pattern of period s
#               (or 2, a checkerboard) makes peaks there; a pattern-free image scores about 0
#   lattice_hr  mean dB of SR / HR power at the lattice frequencies alone: how strong the pattern is next to what
#               the real image has there. A blurry output's faint pattern stands out of its weak neighbourhood
#               (high lattice) while staying far below HR (low lattice_hr): visible needs both, e.g. lattice > 0.5
#               and lattice_hr > -10.
SPECTRAL_MEASURES = ("hf_gain", "lattice", "lattice_hr")
SPECTRAL_HIGH_FREQUENCY = 0.1  # cycles per pixel above which hf_gain averages


def welch_power_spectrum(img, tile):
    """The mean power spectrum of an image's tile x tile tiles (half overlap, each without its mean, under a 2-D Hann
    window): Welch's method in two dimensions.

    :param img: (H, W) float values (e.g. Y in [16, 235]); at least tile x tile
    :param tile: tile side; the spectrum's bins are k / tile cycles per pixel, in numpy.fft order
    :return: (tile, tile) float64, power per bin (the window's energy divided out)
    """
    step = tile // 2
    tiles = np.lib.stride_tricks.sliding_window_view(np.asarray(img, dtype=np.float64), (tile, tile))
    tiles = tiles[::step, ::step].reshape(-1, tile, tile)                        # (n tiles, tile, tile)
    tiles = tiles - tiles.mean(axis=(1, 2), keepdims=True)   # no DC: a tile's brightness is not a frequency
    hann = np.hanning(tile + 2)[1:-1]                         # (tile,), no zero end points: every pixel counts
    window = np.outer(hann, hann)
    power = np.abs(np.fft.fft2(tiles * window)) ** 2                             # (n tiles, tile, tile)
    return power.mean(axis=0) / (window ** 2).sum()


def calculate_spectral(sr_y, hr_y, scaling_factor, crop_border=0):
    """hf_gain, lattice and lattice_hr of an SR image against its HR image (see SPECTRAL_MEASURES above), in dB.

    The tiles are 8 s pixels a side (32 at x4), so the lattice frequencies k / s cycles per pixel fall on whole bins
    (every 8th); a bin's neighbourhood is the ring of bins two away from it (the Hann window spreads a peak over the
    adjacent bins): lattice_contrast.

    :param sr_y, hr_y: (H, W) the measured luma (_measured_luma: 8-bit values), the same size
    :param scaling_factor: s, the period of the lattice
    :param crop_border: pixels removed from each border first
    :return: dict hf_gain, lattice, lattice_hr -> float (dB)
    """
    tile = 8 * scaling_factor
    sr_y, hr_y = _shave(sr_y, crop_border), _shave(hr_y, crop_border)
    if min(sr_y.shape) < tile:
        raise ValueError(f"the spectral measures need at least {tile}x{tile} pixels after the border crop; this image "
                         f"has {sr_y.shape[1]}x{sr_y.shape[0]}")
    # dB of SR / HR power per bin (a tiny floor keeps a perfectly flat HR image finite). (tile, tile)
    ratio_db = 10 * np.log10((welch_power_spectrum(sr_y, tile) + 1e-10) / (welch_power_spectrum(hr_y, tile) + 1e-10))
    frequency = np.fft.fftfreq(tile)                                             # (tile,), cycles per pixel
    radius = np.hypot(frequency[:, None], frequency[None, :])                    # (tile, tile)
    lattice, lattice_hr = lattice_contrast(ratio_db)
    return {"hf_gain": float(ratio_db[radius > SPECTRAL_HIGH_FREQUENCY].mean()), "lattice": lattice,
            "lattice_hr": lattice_hr}


def lattice_contrast(spectrum_db):
    """How much a spectrum stands out at the lattice frequencies: every 8th bin in each direction, without the DC bin
    (k / s cycles per pixel with 8 s bins), against the ring of bins two away from each (wrapping round, as
    frequencies do).

    :param spectrum_db: (8 s, 8 s) dB per bin, numpy.fft order (a ratio of two spectra, or one spectrum)
    :return: (mean dB by which the lattice bins stand above their rings, mean dB at the lattice bins)
    """
    tile = spectrum_db.shape[0]
    lattice_bins = [(i, j) for i in range(0, tile, 8) for j in range(0, tile, 8) if (i, j) != (0, 0)]
    ring = [(di, dj) for di in range(-2, 3) for dj in range(-2, 3) if max(abs(di), abs(dj)) == 2]
    at_lattice = np.array([spectrum_db[i, j] for i, j in lattice_bins])
    around = np.array([np.mean([spectrum_db[(i + di) % tile, (j + dj) % tile] for di, dj in ring])
                       for i, j in lattice_bins])
    return float(np.mean(at_lattice - around)), float(np.mean(at_lattice))


# ------------------------------------------------------------------------------------------------------
# The evaluation protocols
# ------------------------------------------------------------------------------------------------------
def _grey_from_rgb(img):
    """Full-range BT.601 luma of an 8-bit RGB array, rounded to 8 bits: (H, W, 3) uint8 -> (H, W) uint8.
    Used when a model returns RGB for a single-channel (grey) test image, which is measured on grey values."""
    grey = (img.astype(np.float64) @ _Y_WEIGHTS) / _Y_WEIGHTS.sum()
    return _round_to_uint8(grey).astype(np.uint8)


def quantize_to_uint8(img):
    """A numpy image as 8 bits: uint8 stays as is; float in [0, 1] is scaled to [0, 255], rounded (never truncated)
    and clipped -- what saving an SR output as PNG does, and what the standard protocol measures."""
    img = np.asarray(img)
    if img.dtype == np.uint8:
        return img
    return _round_to_uint8(img.astype(np.float64) * 255).astype(np.uint8)


def modcrop_array(img, scaling_factor):
    """Crop an (H, W) or (H, W, C) image top-left to a multiple of `scaling_factor` in each dimension (MATLAB's
    `modcrop`, which the standard protocol applies to HR images; datasets.modcrop does the same to a PIL image)."""
    h, w = img.shape[0], img.shape[1]
    return img[:h - h % scaling_factor, :w - w % scaling_factor, ...]


def center_modcrop_array(img, scaling_factor):
    """Crop an (H, W) or (H, W, C) image to the largest CENTRED region whose sides are multiples of
    `scaling_factor` (what the classic tutorial does; the standard protocol crops top-left instead)."""
    h, w = img.shape[0], img.shape[1]
    top, left = (h % scaling_factor) // 2, (w % scaling_factor) // 2
    return img[top:top + h - h % scaling_factor, left:left + w - w % scaling_factor, ...]


def _measured_luma(sr, hr, scaling_factor):
    """What the standard protocol measures of an SR image and its HR image: (sr_y, hr_y), float64 (H, W) each.

    HR cropped top-left to a multiple of the scale; SR quantised to 8 bits; RGB -> MATLAB's luma Y (rgb2y, whole
    numbers in [16, 235]); a single-channel HR image -> its grey values (an RGB SR of it brought back to grey).
    The border is not shaved here: each measure shaves it.
    """
    hr = modcrop_array(np.asarray(hr), scaling_factor)
    sr = quantize_to_uint8(sr)
    if hr.ndim == 2 or hr.shape[2] == 1:
        # Grey HR: measure grey values. A model that returned RGB for it is brought back to grey.
        hr = hr.reshape(hr.shape[0], hr.shape[1])
        if sr.ndim == 3 and sr.shape[2] == 3:
            sr = _grey_from_rgb(sr)
        sr = sr.reshape(sr.shape[0], sr.shape[1])
        sr_y, hr_y = sr.astype(np.float64), hr.astype(np.float64)
    else:
        sr_y, hr_y = rgb2y(sr), rgb2y(hr)                                       # (H, W), whole numbers in [16, 235]
    if sr_y.shape != hr_y.shape:
        raise ValueError(f"SR image is {sr_y.shape[1]}x{sr_y.shape[0]} but the HR image cropped to a multiple "
                         f"of {scaling_factor} is {hr_y.shape[1]}x{hr_y.shape[0]}")
    return sr_y, hr_y


def calculate_rgb_psnr(sr, hr, scaling_factor):
    """PSNR of an SR image on its three 8-bit RGB channels, not on Y: the standard protocol otherwise (HR cropped
    top-left to a multiple of the scale, SR quantised to 8 bits, `scaling_factor` pixels shaved from each border).

    Y weighs R, G and B together, so a tint that keeps the brightness barely moves it; here each channel counts on
    its own. A grey (single-channel) image, or a grey SR of it, is repeated into three channels: a model that tints a
    grey photo is measured on that tint, while a grey SR gives exactly the PSNR of its grey values.

    :param sr: SR image, numpy (H, W[, 3]) uint8, or float in [0, 1] (quantised to 8 bits); the size of the cropped HR
    :param hr: ground-truth HR image, uint8 numpy (H0, W0) or (H0, W0, 3), uncropped
    :return: PSNR in dB over all three channels (float; inf for identical images)
    """
    hr = modcrop_array(np.asarray(hr), scaling_factor)
    sr = quantize_to_uint8(sr)
    # (H, W) or (H, W, 1) -> (H, W, 3): grey is R = G = B.
    hr, sr = [np.repeat(img.reshape(img.shape[0], img.shape[1], 1), 3, axis=2) if img.ndim == 2 or img.shape[2] == 1
              else img for img in (hr, sr)]
    if sr.shape != hr.shape:
        raise ValueError(f"SR image is {sr.shape[1]}x{sr.shape[0]} but the HR image cropped to a multiple "
                         f"of {scaling_factor} is {hr.shape[1]}x{hr.shape[0]}")
    return calculate_psnr(sr, hr, crop_border=scaling_factor)                 # (H, W, 3) 8-bit values, float64


def evaluate_pair(sr, hr, scaling_factor, protocol='standard'):
    """PSNR and SSIM of one super-resolved image against its ground truth, under a named protocol.

    'standard' -- the protocol papers report (EDSR, RCAN, ESRGAN, ... all use it):
        HR cropped top-left to a multiple of the scale; SR quantised to 8 bits; RGB measured on MATLAB's luma Y
        (`rgb2y`), a single-channel HR on its own grey values; `scaling_factor` pixels shaved from each border;
        PSNR in float64; SSIM with the 11x11 Gaussian window of Wang et al.
    'classic' -- FOR COMPARISON ONLY: the protocol of the classic PyTorch SR tutorial, whose numbers cannot be put
        next to a paper's: HR centre-cropped to a multiple of the scale and converted to RGB, float Y computed from
        [0, 1] images without quantising the SR output, a fixed 4-pixel border whatever the scale, and
        scikit-image's default SSIM (7x7 uniform window, sample covariance).

    :param sr: SR image, numpy (H, W[, C]) uint8, or float in [0, 1] (quantised to 8 bits by 'standard', used
               as it is by 'classic'); the size of the cropped HR image
    :param hr: ground-truth HR image, uint8 numpy (H0, W0) or (H0, W0, 3), e.g. `np.asarray(pil_img)`, uncropped
    :param scaling_factor: the upscale factor (2, 3, 4, ...)
    :param protocol: 'standard' or 'classic'
    :return: (psnr in dB, ssim), floats
    """
    hr = np.asarray(hr)
    sr = np.asarray(sr)
    if hr.dtype != np.uint8:
        raise ValueError(f"evaluate_pair expects an 8-bit HR image, got dtype {hr.dtype}")

    if protocol == 'standard':
        sr_y, hr_y = _measured_luma(sr, hr, scaling_factor)
        psnr = calculate_psnr(sr_y, hr_y, crop_border=scaling_factor)
        ssim = calculate_ssim(sr_y, hr_y, crop_border=scaling_factor)
        return psnr, ssim

    if protocol == 'classic':
        hr = center_modcrop_array(hr, scaling_factor)
        if hr.ndim == 2:
            hr = np.repeat(hr[..., None], 3, axis=2)                           # the tutorial converts to RGB
        hr_01 = hr.astype(np.float64) / 255
        sr_01 = sr.astype(np.float64) / 255 if sr.dtype == np.uint8 else sr.astype(np.float64)
        if sr_01.ndim == 2:
            sr_01 = np.repeat(sr_01[..., None], 3, axis=2)
        if sr_01.shape != hr_01.shape:
            raise ValueError(f"SR image shape {sr_01.shape} does not match the centre-cropped HR shape {hr_01.shape}")
        # Float Y from [0, 1] images, never rounded: 16 + w . (R, G, B), 4 pixels cropped.
        hr_y = _shave(hr_01, 4) @ _Y_WEIGHTS + 16
        sr_y = _shave(sr_01, 4) @ _Y_WEIGHTS + 16
        psnr = calculate_psnr(sr_y, hr_y)
        ssim = calculate_ssim(sr_y, hr_y, gaussian_weights=False, win_size=7, sample_covariance=True)
        return psnr, ssim

    raise ValueError(f"unknown protocol {protocol!r}: use 'standard' (comparable with papers) or 'classic'")


# ------------------------------------------------------------------------------------------------------
# Degraded-input protocols: how robust is a model to the LR images people actually have?
# ------------------------------------------------------------------------------------------------------
# The standard protocol feeds clean bicubic LR images; real photos arrive compressed, noisy, blurred. Each setting
# below makes the LR test image from the HR one (after the standard top-left crop to a multiple of the scale; the HR
# image stays the reference), with fixed values and, where something is random, a fixed seed per image
# (image_seed), so every run gives the very same LR images, and bicubic and every model see the same ones.
# The fixed values are chosen for ordinary photos from phones and the web; each says why.
LR_DEGRADATIONS = {
    # The standard protocol papers report: MATLAB's bicubic imresize by 1/s, nothing else (or, with
    # lr_source='provided', the MATLAB-made LR files of a benchmark folder, which are the same pixels).
    "bicubic": {"models": "a clean bicubic downscale (the standard protocol papers report)"},
    # Bicubic, then one JPEG round trip: a photo saved or shared once.
    "jpeg": {
        "models": "a bicubic downscale saved once as JPEG (quality 75)",
        "jpeg_quality": 75,  # libjpeg's and Pillow's default quality: what an image saved with no setting gets
    },
    # Bicubic, then sensor-like noise, then JPEG: a noisy photo saved once.
    "noise_jpeg": {
        "models": "a bicubic downscale with colour noise (sigma 5 levels), saved as JPEG (quality 75)",
        "noise_sigma": 5.0,  # in 8-bit levels: visible grain in flat areas, like an indoor phone photo
        "jpeg_quality": 75,  # the same quality as 'jpeg', so the two rows differ by the noise alone
    },
    # degradations.degrade_batch, Real-ESRGAN's second-order chain (blur, resize, noise, JPEG, twice, and a final
    # sinc filter), at milder ranges than Real-ESRGAN trains with; every other value is DEGRADATION_DEFAULTS'.
    # (No unsharp masking: that sharpens the training target, while here the HR image itself is the reference.)
    "realesrgan": {
        "models": "Real-ESRGAN's second-order blur / resize / noise / JPEG chain, at milder ranges than its training",
        "settings": {
            "blur_sigma": [0.2, 1.5],  # optics and focus of a usable photo (training: up to 3 pixels)
            "blur_sigma2": [0.2, 1.0],  # (training: up to 1.5)
            "resize_range": [0.5, 1.5],  # a photo shrunk to half, not to 15% and back (training: 0.15-1.5)
            "resize_range2": [0.5, 1.2],  # (training: 0.3-1.2)
            "noise_range": [1, 10],  # Gaussian noise sigma in levels: phone photos, not night shots (training: 1-30)
            "noise_range2": [1, 8],  # (training: 1-25)
            "poisson_scale_range": [0.05, 1.0],  # shot noise, scaled down in the same proportion (training: 0.05-3)
            "poisson_scale_range2": [0.05, 0.8],  # (training: 0.05-2.5)
            "jpeg_range": [60, 95],  # web photos are rarely stored below quality 60 (training: 30-95)
            "jpeg_range2": [60, 95],  # (training: 30-95)
        },
    },
}


def image_seed(name):
    """The fixed seed of one test image: CRC-32 of its name (e.g. 'baby'), the same in every run, process and
    Python version (unlike Python's hash() of a string, which changes from run to run)."""
    return zlib.crc32(name.encode("utf-8"))


def _jpeg_round_trip(img, quality):
    """Encode a uint8 (H, W) or (H, W, 3) array as JPEG with Pillow and decode it again: same shape, uint8.
    Baseline JPEG with 4:2:0 chroma, the defaults of Pillow and most cameras; the same Pillow gives the same bytes."""
    buffer = io.BytesIO()
    Image.fromarray(img).save(buffer, format="JPEG", quality=quality, subsampling="4:2:0")
    return np.array(Image.open(buffer))                                   # a writable copy, like imresize's output


def degrade_lr(hr, scaling_factor, lr_degradation="bicubic", seed=0):
    """Make the LR test image of one HR image under a named setting of LR_DEGRADATIONS, the same on every run.

    :param hr: uint8 numpy array (H, W, 3) or (H, W), H and W multiples of scaling_factor (modcrop_array first)
    :param scaling_factor: the upscale factor s
    :param lr_degradation: a name of LR_DEGRADATIONS: 'bicubic', 'jpeg', 'noise_jpeg' or 'realesrgan'
    :param seed: the image's seed (image_seed of its name) for the random settings ('noise_jpeg', 'realesrgan');
                 'bicubic' and 'jpeg' draw nothing
    :return: uint8 array (H/s, W/s, 3) or (H/s, W/s), like hr; bit-identical for the same arguments, whatever the
             thread count (with the same numpy, Pillow and torch, on the same kind of CPU)
    """
    if lr_degradation not in LR_DEGRADATIONS:
        raise ValueError(f"unknown LR degradation {lr_degradation!r}: use one of {', '.join(LR_DEGRADATIONS)}")
    hr = np.asarray(hr)
    s = scaling_factor
    if hr.dtype != np.uint8 or hr.shape[0] % s or hr.shape[1] % s:
        raise ValueError(f"degrade_lr expects an 8-bit HR image cropped to a multiple of {s} (modcrop_array), got "
                         f"dtype {hr.dtype} and shape {hr.shape}")
    setting = LR_DEGRADATIONS[lr_degradation]

    if lr_degradation == "realesrgan":
        # The training pipeline, on the CPU, one image at a time, with its own generator seeded for this image.
        rgb = np.repeat(hr[..., None], 3, axis=2) if hr.ndim == 2 else hr         # the pipeline takes RGB
        hr_tensor = torch.tensor(rgb).permute(2, 0, 1).unsqueeze(0).float().div(255)   # (1, 3, H, W), [0, 1] (a copy)
        # On one thread: split over several, torch's sums (convolutions, the JPEG transform) change their order, and
        # a pixel may then round to the next 8-bit level; one thread gives the same bits whatever the thread count.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            lr_tensor = degradations.degrade_batch(hr_tensor, s, setting["settings"],
                                                   torch.Generator().manual_seed(seed))   # (1, 3, H/s, W/s), 8-bit
        finally:
            torch.set_num_threads(threads)
        lr = quantize_to_uint8(lr_tensor[0].permute(1, 2, 0).double().numpy())        # (H/s, W/s, 3), uint8
        return _grey_from_rgb(lr) if hr.ndim == 2 else lr                             # a grey image stays grey

    # Every other setting starts from the standard bicubic LR image (MATLAB's imresize, 8 bits).
    lr = imresize(hr, scale=1 / s)                                                    # (H/s, W/s[, 3]), uint8
    if "noise_sigma" in setting:
        # Gaussian noise in 8-bit levels, independent per pixel and channel, from this image's own generator;
        # rounded and clipped to 8 bits, as a camera stores it.
        rng = np.random.Generator(np.random.PCG64(seed))
        noise = rng.normal(0.0, setting["noise_sigma"], size=lr.shape)
        lr = _round_to_uint8(lr + noise).astype(np.uint8)
    if "jpeg_quality" in setting:
        lr = _jpeg_round_trip(lr, setting["jpeg_quality"])
    return lr


# ======================================================================================================
# Evaluating a generator (or the bicubic baseline) on a test set
# ======================================================================================================
# eval.py runs these on every model and test set; a training script can call evaluate_set on its generator (in eval
# mode) to validate with exactly the same code, and so get exactly eval.py's numbers.

def read_test_list(data_folder, test_set):
    """The HR image paths of one test set, from `<data_folder>/<test_set>_test_images.json`, or None if there is
    no such list. Relative paths are taken as they are, or relative to the list's folder."""
    list_path = Path(data_folder) / f"{test_set}_test_images.json"
    if not list_path.is_file():
        return None
    try:
        with open(list_path) as f:
            paths = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{list_path} is not a valid JSON list ({error}); rebuild it with create_data_lists.py.")
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        raise ValueError(f"{list_path} should hold a JSON list of image paths; rebuild it with create_data_lists.py.")
    return [Path(p) if Path(p).exists() or Path(p).is_absolute() else list_path.parent / p for p in paths]


def find_test_lists(data_folder, test_sets, skipping="skipping"):
    """The HR image paths of each test set that has a non-empty list (read_test_list); each other set is skipped
    with one note line on stderr (a missing set is not an error: eval.py measures the others, training validates
    on the others).

    :param skipping: how the note starts, e.g. 'skipping' (eval.py) or 'not validating on' (training)
    :return: dict test set name -> list of HR image paths, in the order of test_sets
    """
    test_lists = {}
    for test_set in test_sets:
        hr_paths = read_test_list(data_folder, test_set)
        if hr_paths is None:
            print(f"note: {skipping} {test_set}: no {Path(data_folder) / (test_set + '_test_images.json')} "
                  f"(create it with create_data_lists.py --test_folders ...)", file=sys.stderr)
        elif not hr_paths:
            print(f"note: {skipping} {test_set}: its list is empty", file=sys.stderr)
        else:
            test_lists[test_set] = hr_paths
    return test_lists


def provided_lr_path(hr_path, scaling_factor):
    """Where a benchmark folder keeps the MATLAB-made LR image of an HR image: `<Set>/LR_bicubic/X<s>/<name>x<s>.png`
    beside `<Set>/HR/<name>.png`."""
    return hr_path.parent.parent / "LR_bicubic" / f"X{scaling_factor}" / f"{hr_path.stem}x{scaling_factor}.png"


def load_test_pairs(hr_paths, scaling_factor, lr_source="generated", protocol="standard", lr_degradation="bicubic"):
    """Load the HR images of a test set and make (or read) their LR images.

    :param lr_source: 'generated' (made here with imresize, as MATLAB makes them) or 'provided' (read from
                      provided_lr_path); the degraded settings always make theirs from HR ('generated')
    :param lr_degradation: a name of LR_DEGRADATIONS: 'bicubic' (the standard LR images), or a degraded input made by
                           degrade_lr with the image's fixed seed (image_seed of its file name), standard protocol only
    :return: list of (name, hr, lr): hr a uint8 array (H, W) or (H, W, 3) as stored (greyscale stays single-channel,
             so it is measured on its own values); lr a uint8 array of the size the protocol gives.
    """
    s = scaling_factor
    # A degraded setting starts from HR under the standard protocol: say so now, before any image is read.
    if lr_degradation not in LR_DEGRADATIONS:
        raise ValueError(f"unknown LR degradation {lr_degradation!r}: use one of {', '.join(LR_DEGRADATIONS)}")
    if lr_degradation != "bicubic" and (protocol != "standard" or lr_source != "generated"):
        raise ValueError(f"the {lr_degradation!r} LR images are made from HR under the standard protocol: use them "
                         f"with --protocol standard --lr_source generated")
    pairs = []
    for hr_path in hr_paths:
        # PIL, RGB or grey as stored: other modes (RGBA, palette) become RGB, 16-bit grey is rounded to 8 bits.
        hr_img = utils.load_image(hr_path, mode=("RGB", "L"))
        hr = np.asarray(hr_img)                                    # (H, W, 3) or (H, W), uint8
        if min(hr.shape[:2]) < 2 * s + 11:
            raise ValueError(f"{hr_path} is only {hr.shape[1]}x{hr.shape[0]} pixels, too small to measure at "
                             f"x{s} (SSIM needs 11x11 pixels after the border crop). Remove it from the list.")

        if protocol == "classic":
            # The tutorial: centre crop to a multiple of the scale, RGB, Pillow's bicubic downscale (the 'pil' LR
            # maker of datasets.make_lr_image).
            hr_crop = Image.fromarray(center_modcrop_array(hr, s)).convert("RGB")
            lr_img = hr_crop.resize((hr_crop.width // s, hr_crop.height // s), Image.Resampling.BICUBIC)
            lr = np.asarray(lr_img)                                # (h, w, 3), uint8
        elif lr_degradation != "bicubic":
            # The standard crop, then the named degradation with this image's own seed.
            lr = degrade_lr(modcrop_array(hr, s), s, lr_degradation, image_seed(hr_path.stem))   # (H/s, W/s[, 3])
        elif lr_source == "generated":
            # MATLAB's recipe: crop HR top-left to a multiple of the scale, then imresize by 1/scale.
            lr = imresize(modcrop_array(hr, s), scale=1 / s)       # (H/s, W/s[, 3]), uint8
        else:
            lr_path = provided_lr_path(hr_path, s)
            if not lr_path.is_file():
                raise FileNotFoundError(f"No provided LR image for {hr_path}: expected {lr_path}. "
                                        f"Use --lr_source generated to make LR images from HR instead.")
            lr = np.asarray(utils.load_image(lr_path, mode=hr_img.mode))
        pairs.append((hr_path.stem, hr, lr))
    return pairs


def upscale_array(generator, lr, scaling_factor, protocol="standard", precision="fp32", tile=inference.DEFAULT_TILE,
                  tile_pad=inference.DEFAULT_TILE_PAD):
    """Upscale one LR image as the evaluation does.

    :param generator: None for the bicubic baseline, else a generator in eval mode, run where its weights are, in
                      tiles of `tile` LR pixels (inference.upscale; the benchmark images fit in one tile)
    :param lr: uint8 array (h, w) or (h, w, 3)
    :return: SR image (h * s, w * s[, 3]): uint8 under the standard protocol (quantised, as papers save PNGs);
             float in [0, 1], not quantised, under the classic one (as the tutorial measured it)
    """
    if generator is None:
        # Bicubic baseline: MATLAB's imresize. On 8-bit input it gives 8 bits (rounded after each 1-D pass), exactly
        # what MATLAB gives; the classic protocol measures float outputs, so it upscales in float.
        if protocol == "standard":
            return imresize(lr, scale=scaling_factor)                                       # (H, W[, 3]), uint8
        sr = np.clip(imresize(lr.astype(np.float64) / 255, scale=scaling_factor), 0, 1)    # (H, W[, 3]), [0, 1]
    else:
        # A generator takes RGB: a greyscale LR image is repeated into 3 channels.
        lr_rgb = np.repeat(lr[..., None], 3, axis=2) if lr.ndim == 2 else lr
        lr_tensor = torch.from_numpy(lr_rgb).permute(2, 0, 1).float().div(255).unsqueeze(0)   # (1, 3, h, w), [0, 1]
        sr_tensor = inference.upscale(generator, lr_tensor, tile, tile_pad, precision)            # (1, 3, H, W), [0, 1]
        sr = sr_tensor[0].permute(1, 2, 0).double().numpy()                                  # (H, W, 3), [0, 1]
    if protocol == "classic":
        return sr
    return quantize_to_uint8(sr)                                                             # 8 bits, rounded


# What measure_set can average. psnr_rgb is PSNR on RGB instead of Y (calculate_rgb_psnr); NIQE needs no HR image and
# is lower-is-better; 'spectral' gives the three SPECTRAL_MEASURES (calculate_spectral).
MEASURES = ("psnr", "ssim", "psnr_rgb", "niqe", "spectral")


def measure_keys(measures):
    """The numbers that measure_set returns for these measures, in order ('spectral' is three of them)."""
    return [key for m in measures for key in (SPECTRAL_MEASURES if m == "spectral" else (m,))]


def measure_set(generator, pairs, scaling_factor, measures=("psnr", "ssim"), protocol="standard", precision="fp32",
                per_image=None):
    """Average measures of one generator (None: bicubic) over one test set's (name, hr, lr) pairs.

    PSNR and SSIM compare each SR image with its HR image (evaluate_pair); psnr_rgb does so on the RGB channels
    (calculate_rgb_psnr); NIQE looks at the SR image alone, on the same Y channel with the same border shaved
    (calculate_niqe); spectral compares the power spectra of SR and HR on that Y (calculate_spectral). psnr_rgb, NIQE
    and spectral: standard protocol only. The generator is used as
    it is: put it in eval mode first (batch norm must use its running statistics), and back in training mode
    afterwards when validating during training.

    :param pairs: from load_test_pairs
    :param measures: any of MEASURES, e.g. ('psnr', 'ssim', 'niqe') or ('psnr', 'psnr_rgb')
    :param per_image: a list to append one dict per image to, {"image": name, measure key: value, ...}, or None
    :return: dict measure key (measure_keys) -> mean over the images (float), in the order of `measures`
    """
    s = scaling_factor
    unknown = [m for m in measures if m not in MEASURES]
    if unknown or not measures:
        raise ValueError(f"unknown measure(s) {unknown}: choose one or more of {', '.join(MEASURES)}")
    for measure, what in (("niqe", "NIQE"), ("psnr_rgb", "RGB PSNR"), ("spectral", "The spectral measures")):
        if measure in measures and protocol != "standard":
            raise ValueError(f"{what} is measured under the standard protocol only (on its 8-bit outputs)")
    values = {key: [] for key in measure_keys(measures)}
    for name, hr, lr in pairs:
        sr = upscale_array(generator, lr, s, protocol, precision)
        if protocol == "standard":
            # Provided LR images can be made from a slightly larger crop than HR (BSD100 x3: 480x321 vs 480x320);
            # keep the top-left part that matches the HR image cropped to a multiple of the scale.
            h, w = hr.shape[0] - hr.shape[0] % s, hr.shape[1] - hr.shape[1] % s
            if sr.shape[0] < h or sr.shape[1] < w or sr.shape[0] - h >= 2 * s or sr.shape[1] - w >= 2 * s:
                raise ValueError(f"The LR image of {name} gives a {sr.shape[1]}x{sr.shape[0]} output at x{s}, "
                                 f"which does not match its {w}x{h} HR image cropped to a multiple of {s}.")
            sr = sr[:h, :w]
        image = {}
        if "psnr" in values or "ssim" in values:
            psnr, ssim = evaluate_pair(sr, hr, s, protocol=protocol)
            image.update((m, value) for m, value in (("psnr", psnr), ("ssim", ssim)) if m in values)
        if "psnr_rgb" in values:
            image["psnr_rgb"] = calculate_rgb_psnr(sr, hr, s)
        if "niqe" in values or "hf_gain" in values:
            sr_y, hr_y = _measured_luma(sr, hr, s)                               # what PSNR / SSIM measure, too
            try:
                if "niqe" in values:
                    image["niqe"] = calculate_niqe(sr_y, crop_border=s)
                if "hf_gain" in values:
                    image.update(calculate_spectral(sr_y, hr_y, s, crop_border=s))
            except ValueError as error:
                raise ValueError(f"{name}: {error}; measure this set without niqe and spectral, or remove the "
                                 f"image") from None
        for key, value in image.items():
            values[key].append(value)
        if per_image is not None:
            per_image.append({"image": name, **image})
    exact = [name for (name, _, _), psnr in zip(pairs, values.get("psnr", [])) if math.isinf(psnr)]
    if exact:
        # An output identical to its HR image has an infinite PSNR, and so then has the mean: say why, every time.
        print(f"note: the PSNR of {', '.join(exact)} is infinite: the output equals the HR image exactly (a flat or "
              f"synthetic image?), so the mean PSNR of the set is infinite too; such an image says nothing about a "
              f"model: remove it from the test list.", file=sys.stderr)
    return {m: float(np.mean(v)) for m, v in values.items()}


def evaluate_set(generator, pairs, scaling_factor, protocol="standard", precision="fp32"):
    """Average PSNR and SSIM of one generator (None: bicubic) over one test set's (name, hr, lr) pairs: measure_set
    with ('psnr', 'ssim'), the numbers eval.py prints by default and a training run validates with.

    :return: (mean PSNR in dB, mean SSIM), floats
    """
    scores = measure_set(generator, pairs, scaling_factor, ("psnr", "ssim"), protocol, precision)
    return scores["psnr"], scores["ssim"]
