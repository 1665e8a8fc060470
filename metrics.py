"""Measuring super-resolution the way papers do, and evaluating a generator on a test set.

Papers report PSNR / SSIM under one fixed protocol, computed with MATLAB. To put our numbers next to theirs we
reproduce that protocol exactly:
  1. LR test images are made with MATLAB's `imresize(hr, 1/s, 'bicubic')` (antialiased, 8 bits per pass).
  2. The HR image is cropped top-left to a multiple of s; the SR output is quantised to 8 bits.
  3. RGB images are measured on their luma Y (BT.601, MATLAB's `rgb2ycbcr` on the 8-bit image: Y in [16, 235],
     itself 8 bits); single-channel (grey) images are measured on their own values.
  4. s pixels are shaved from every border (the network cannot see past the image edge there).
  5. PSNR in float64; SSIM as in Wang et al. 2004 (11x11 Gaussian window, sigma 1.5, 'valid' filtering).
Everything works on whole arrays at once (no per-pixel Python loops).

Contents, top to bottom:
  imresize                                    MATLAB's bicubic resize, bit for bit
  rgb2y, calculate_psnr, calculate_ssim       the measurements
  evaluate_pair                               the protocols ('standard', and the classic tutorial's for comparison)
  read_test_list ... evaluate_set             a generator (or bicubic) on a whole test set: what eval.py runs, and
                                              what a training script can call to validate with exactly eval.py's code
"""
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

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
        hr = modcrop_array(hr, scaling_factor)
        sr = quantize_to_uint8(sr)
        if hr.ndim == 2 or hr.shape[2] == 1:
            # Grey HR: measure grey values. A model that returned RGB for it is brought back to grey.
            hr = hr.reshape(hr.shape[0], hr.shape[1])
            if sr.ndim == 3 and sr.shape[2] == 3:
                sr = _grey_from_rgb(sr)
            sr = sr.reshape(sr.shape[0], sr.shape[1])
            hr_y, sr_y = hr.astype(np.float64), sr.astype(np.float64)
        else:
            hr_y, sr_y = rgb2y(hr), rgb2y(sr)                                   # (H, W), whole numbers in [16, 235]
        if sr_y.shape != hr_y.shape:
            raise ValueError(f"SR image is {sr_y.shape[1]}x{sr_y.shape[0]} but the HR image cropped to a multiple "
                             f"of {scaling_factor} is {hr_y.shape[1]}x{hr_y.shape[0]}")
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


def load_test_pairs(hr_paths, scaling_factor, lr_source="generated", protocol="standard"):
    """Load the HR images of a test set and make (or read) their LR images.

    :param lr_source: 'generated' (made here with imresize, as MATLAB makes them) or 'provided' (read from
                      provided_lr_path)
    :return: list of (name, hr, lr): hr a uint8 array (H, W) or (H, W, 3) as stored (greyscale stays single-channel,
             so it is measured on its own values); lr a uint8 array of the size the protocol gives.
    """
    s = scaling_factor
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


def evaluate_set(generator, pairs, scaling_factor, protocol="standard", precision="fp32"):
    """Average PSNR and SSIM of one generator (None: bicubic) over one test set's (name, hr, lr) pairs.

    The generator is used as it is: put it in eval mode first (batch norm must use its running statistics), and
    back in training mode afterwards when validating during training.

    :return: (mean PSNR in dB, mean SSIM), floats
    """
    s = scaling_factor
    psnrs, ssims = [], []
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
        psnr, ssim = evaluate_pair(sr, hr, s, protocol=protocol)
        psnrs.append(psnr)
        ssims.append(ssim)
    exact = [name for (name, _, _), psnr in zip(pairs, psnrs) if math.isinf(psnr)]
    if exact:
        # An output identical to its HR image has an infinite PSNR, and so then has the mean: say why, every time.
        print(f"note: the PSNR of {', '.join(exact)} is infinite: the output equals the HR image exactly (a flat or "
              f"synthetic image?), so the mean PSNR of the set is infinite too; such an image says nothing about a "
              f"model: remove it from the test list.", file=sys.stderr)
    return float(np.mean(psnrs)), float(np.mean(ssims))
