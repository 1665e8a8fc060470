"""Real-ESRGAN's degradations: realistic LR training images made from HR ones, on the device, batch by batch.

Why synthetic degradations?
  A model trained on "bicubic-downscaled" LR images learns to undo exactly one, perfectly clean degradation.
  Real low-resolution photos are made differently: the lens and focus blur the scene (optics blur), the
  sensor adds noise (photon "shot" noise, which grows with brightness, and read noise, which does not),
  the camera or a website shrinks the picture with some resampling filter, and JPEG compression adds 8x8
  block edges and ringing. Real-ESRGAN (Wang et al., 2021) therefore makes each LR training image from its HR
  image with a random chain of these operations, and runs the chain TWICE ("second-order degradation"): a
  photo is often taken with a phone, compressed, shared, resized and re-compressed, and the second pass
  covers such mixtures that one pass cannot produce. A final 2-D sinc filter adds the ringing / overshoot
  halos that sharp low-pass filters (and many resizers) leave around edges, so the model learns to remove them.

The pipeline, as in Real-ESRGAN (every probability and range lives in DEGRADATION_DEFAULTS below):

  HR (N, 3, H, W) in [0, 1]                         H, W cropped to multiples of scaling_factor s
   -- stage 1 --  blur (random kernel, per image) -> random resize (up / down / keep, area / bilinear /
                  bicubic) -> Gaussian or Poisson noise (colour or grey) -> JPEG (quality in jpeg_range)
   -- stage 2 --  blur (with prob. second_blur_prob) -> random resize around the target LR size ->
                  noise -> then, in a random order, either
                    [resize to (H/s, W/s) + sinc filter] -> JPEG     or     JPEG -> [resize + sinc filter]
  LR (N, 3, H/s, W/s) in [0, 1], rounded to 8-bit levels (k / 255)

Everything runs batched on the device of the images (GPU when training on one): per-image random kernels
are applied with one grouped convolution, noise and JPEG are plain tensor maths. Only the small decisions
(which kernel, which sigma, which quality, ...) are drawn on the CPU, from ONE torch.Generator, so a seed
gives the same degradations every time (on the same device type; CPU and CUDA noise streams differ).
As in Real-ESRGAN, the resize scale and resize mode are shared by the whole batch (a batch must keep one
spatial size); all other choices are made per image. To see them, give degrade_batch a list as `trace`: each step
adds what it drew for each image and the images after it (docs/figures.py draws degradations.png from one).

How a training step uses it (make_training_pairs at the end of this file does this for both training scripts):

    settings = {**DEGRADATION_DEFAULTS, **overrides}           # train_srgan.py: every key is also a flag
    rng = utils.make_rng(seed, "degradation", iteration, rank)   # a CPU torch.Generator
    hr_imgs = hr_imgs.to(device)                                 # (N, 3, H, W) in [0, 1], H, W multiples of 4
    lr_imgs, hr_imgs, hr_usm_imgs = make_realesrgan_batch(hr_imgs, 4, settings, rng)
    # lr_imgs (N, 3, H/4, W/4) in [0, 1]; hr_usm_imgs: the sharpened ground truth, (N, 3, H, W)
    pixel_target = hr_usm_imgs if settings['l1_gt_usm'] else hr_imgs
    perceptual_target = hr_usm_imgs if settings['percep_gt_usm'] else hr_imgs
    real_for_discriminator = hr_usm_imgs if settings['gan_gt_usm'] else hr_imgs

Contents, top to bottom: DEGRADATION_DEFAULTS; random draws; blur kernels; unsharp masking (USM); noise; JPEG;
the two-stage pipeline (degrade_batch, make_realesrgan_batch); and, at the end, the training batch of both training
scripts (make_training_pairs) with Real-ESRGAN's training-pair pool (TrainingPairPool). (CutBlur and the other batch
augmentations of the CutBlur paper are augmentations.py's.)
"""
import math

import torch
import torch.nn.functional as F

import utils

# Real-ESRGAN's defaults, from its options/train_realesrnet_x4plus.yml and train_realesrgan_x4plus.yml (the two
# files use identical degradation settings). Names are Real-ESRGAN's option names; the keys after
# "constants" are values Real-ESRGAN hard-codes, exposed here so that every range and probability can be tuned.
DEGRADATION_DEFAULTS = {
    # ---- stage 1: blur ----
    "blur_kernel_size": 21,  # largest kernel side; every stage-1 kernel is zero-padded to this size
    "kernel_list": ["iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso"],  # kinds
    #   of stage-1 blur kernel: (an)isotropic Gaussian, generalized Gaussian, plateau
    "kernel_prob": [0.45, 0.25, 0.12, 0.03, 0.12, 0.03],  # the probability of each kind in kernel_list
    "sinc_prob": 0.1,  # chance that the stage-1 kernel is a 2-D sinc instead of one of kernel_list
    "blur_sigma": [0.2, 3.0],  # Gaussian-family standard deviations, in pixels
    "betag_range": [0.5, 4.0],  # shape exponent of the generalized Gaussian (1 = Gaussian)
    "betap_range": [1.0, 2.0],  # shape exponent of the plateau kernel
    # ---- stage 1: resize, noise, JPEG ----
    "resize_prob": [0.2, 0.7, 0.1],  # probabilities of up / down / keep
    "resize_range": [0.15, 1.5],  # scale range: down draws from [0.15, 1], up from [1, 1.5]
    "gaussian_noise_prob": 0.5,  # else Poisson noise
    "noise_range": [1, 30],  # Gaussian sigma, in 8-bit levels (x / 255)
    "poisson_scale_range": [0.05, 3.0],  # multiplier of the Poisson noise
    "gray_noise_prob": 0.4,  # chance that the noise is the same in R, G and B (luminance-only noise)
    "jpeg_range": [30, 95],  # JPEG quality
    # ---- stage 2 ----
    "second_blur_prob": 0.8,  # chance that stage 2 blurs at all
    "blur_kernel_size2": 21,  # stage 2: as blur_kernel_size
    "kernel_list2": ["iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso"],  # stage
    #   2: as kernel_list
    "kernel_prob2": [0.45, 0.25, 0.12, 0.03, 0.12, 0.03],  # stage 2: as kernel_prob
    "sinc_prob2": 0.1,  # stage 2: as sinc_prob
    "blur_sigma2": [0.2, 1.5],  # stage 2: as blur_sigma
    "betag_range2": [0.5, 4.0],  # stage 2: as betag_range
    "betap_range2": [1.0, 2.0],  # stage 2: as betap_range
    "resize_prob2": [0.3, 0.4, 0.3],  # up / down / keep, relative to the target LR size
    "resize_range2": [0.3, 1.2],  # stage 2: as resize_range, relative to the target LR size
    "gaussian_noise_prob2": 0.5,  # stage 2: as gaussian_noise_prob
    "noise_range2": [1, 25],  # stage 2: as noise_range
    "poisson_scale_range2": [0.05, 2.5],  # stage 2: as poisson_scale_range
    "gray_noise_prob2": 0.4,  # stage 2: as gray_noise_prob
    "jpeg_range2": [30, 95],  # stage 2: as jpeg_range
    # ---- final sinc filter ----
    "final_sinc_prob": 0.8,  # else the final filter is the identity
    # ---- which targets are unsharp-masked (used by the training step, not by degrade_batch) ----
    "l1_gt_usm": True,  # the pixel (L1) loss compares with the sharpened HR image
    "percep_gt_usm": True,  # the perceptual loss compares with the sharpened HR image
    "gan_gt_usm": False,  # the discriminator's real images are the sharpened HR images
    # ---- constants Real-ESRGAN hard-codes ----
    "blur_kernel_min_size": 7,  # kernel sides are drawn from the odd numbers in [7, blur_kernel_size]
    "kernel_rotation_range": [-math.pi, math.pi],  # angle of anisotropic kernels, radians
    "sinc_cutoff_range_small": [math.pi / 3, math.pi],  # stage 1/2 sinc cutoff for kernel sides < 13
    "sinc_cutoff_range_large": [math.pi / 5, math.pi],  # ... and for sides >= 13
    "final_sinc_cutoff_range": [math.pi / 3, math.pi],  # cutoff of the final sinc filter, radians
    "resize_mode_list": ["area", "bilinear", "bicubic"],  # interpolations of the random resizes
    "resize_mode_prob": [1 / 3, 1 / 3, 1 / 3],  # the probability of each of resize_mode_list
    "resize_antialias": False,  # anti-alias shrinking bilinear / bicubic resizes (Real-ESRGAN: no; photo software:
    #   yes)
    "final_jpeg_first_prob": 0.5,  # order of the last two steps: JPEG first, or [resize + sinc] first
    "usm_weight": 0.5,  # unsharp masking of the ground truth: strength,
    "usm_radius": 50,  # Gaussian window side (made odd: 51, sigma 8 as OpenCV derives it),
    "usm_threshold": 10,  # and the residual (in 8-bit levels) below which nothing is sharpened
}


def _degradation_settings(settings):
    """DEGRADATION_DEFAULTS updated with `settings`; an unknown key (a typo) is an error, not silently ignored."""
    settings = dict(settings or {})
    unknown = sorted(set(settings) - set(DEGRADATION_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown degradation setting(s) {unknown}; valid keys are the keys of "
                         f"degradations.DEGRADATION_DEFAULTS")
    return {**DEGRADATION_DEFAULTS, **settings}


# ------------------------------------------------------------------------------------------------------
# Small random draws. They all come from one CPU torch.Generator, in a fixed order, which is what makes the
# whole pipeline reproducible for a seed.
# ------------------------------------------------------------------------------------------------------
def _uniform(rng, low, high):
    """One float drawn uniformly from [low, high)."""
    return low + (high - low) * torch.rand((), generator=rng, dtype=torch.float64).item()


def _choice(rng, options, probs):
    """One element of `options`, drawn with the (not necessarily normalised) probabilities `probs`."""
    index = torch.multinomial(torch.as_tensor(probs, dtype=torch.float64), 1, generator=rng).item()
    return options[index]


def _beta_exponent(rng, beta_range):
    """Shape exponent as Real-ESRGAN draws it: half the time below 1 (heavier tails), half above (flatter top)."""
    low, high = beta_range
    return _uniform(rng, low, 1.0) if _uniform(rng, 0, 1) < 0.5 else _uniform(rng, 1.0, high)


# ------------------------------------------------------------------------------------------------------
# Blur kernels. A blur kernel is the image of a single bright point through the optics (the point spread
# function): a perfect lens gives a tiny disc, defocus a wider one, motion or astigmatism a stretched one.
# Each maker returns a (size, size) float32 tensor that sums to 1 (so blurring keeps the mean brightness).
# Coordinates: the centre pixel is (0, 0); x grows along columns (to the right), y along rows (downwards).
# ------------------------------------------------------------------------------------------------------
def _kernel_grid(size):
    """x, y coordinates of a (size, size) kernel, centred on 0, float64."""
    if size < 1 or size % 2 != 1:
        raise ValueError(f"kernel size must be a positive odd number, got {size}")
    half = size // 2
    coords = torch.arange(-half, half + 1, dtype=torch.float64)
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    return x, y


def _squared_radius(sigma_x, sigma_y, theta, size):
    """Squared Mahalanobis distance (u / sigma_x)^2 + (v / sigma_y)^2 of each kernel pixel from the centre,
    where (u, v) are the pixel coordinates rotated by -theta: the kernel's long axis points at angle theta."""
    if sigma_x <= 0 or sigma_y <= 0:
        raise ValueError(f"kernel sigmas must be > 0, got {sigma_x}, {sigma_y}")
    x, y = _kernel_grid(size)
    cos_t, sin_t = math.cos(theta), math.sin(theta)
    u = x * cos_t + y * sin_t
    v = -x * sin_t + y * cos_t
    return (u / sigma_x) ** 2 + (v / sigma_y) ** 2


def _normalised(kernel):
    return (kernel / kernel.sum()).float()


def anisotropic_gaussian_kernel(sigma_x, sigma_y, theta, size):
    """Gaussian kernel exp(-d^2 / 2) with standard deviations sigma_x, sigma_y (pixels) along axes rotated by
    theta (radians): an elliptical blur, e.g. slight motion or astigmatism. Returns (size, size), sums to 1."""
    return _normalised(torch.exp(-0.5 * _squared_radius(sigma_x, sigma_y, theta, size)))


def isotropic_gaussian_kernel(sigma, size):
    """Round Gaussian blur with standard deviation `sigma` pixels (the classic model of defocus / optics)."""
    return anisotropic_gaussian_kernel(sigma, sigma, 0.0, size)


def generalized_gaussian_kernel(sigma_x, sigma_y, theta, beta, size):
    """Generalized Gaussian exp(-(d^2)^beta / 2): beta = 1 is the Gaussian, beta < 1 has a sharper peak and
    heavier tails, beta > 1 a flatter top with a steeper edge (closer to a defocus disc)."""
    return _normalised(torch.exp(-0.5 * _squared_radius(sigma_x, sigma_y, theta, size) ** beta))


def plateau_kernel(sigma_x, sigma_y, theta, beta, size):
    """Plateau-shaped kernel 1 / (1 + (d^2)^beta): a flat top and long polynomial tails."""
    return _normalised(1.0 / (1.0 + _squared_radius(sigma_x, sigma_y, theta, size) ** beta))


def sinc_kernel(cutoff, size):
    """Circular ideal low-pass filter ("2-D sinc") with cutoff frequency `cutoff` in radians per pixel (pi is
    the Nyquist limit). Its spatial form is cutoff * J1(cutoff * r) / (2 pi r), J1 the Bessel function of the
    first kind, value cutoff^2 / (4 pi) at r = 0. Truncated to (size, size) and normalised to sum 1.
    The kernel has negative side lobes: filtering with it produces the ringing and overshoot halos next to
    edges that real resizers and sharpeners leave, which is exactly why Real-ESRGAN adds it."""
    x, y = _kernel_grid(size)
    radius = torch.sqrt(x ** 2 + y ** 2)
    safe_radius = torch.where(radius > 0, radius, torch.ones_like(radius))  # avoid 0 / 0 at the centre
    kernel = cutoff * torch.special.bessel_j1(cutoff * safe_radius) / (2 * math.pi * safe_radius)
    kernel = torch.where(radius > 0, kernel, torch.full_like(kernel, cutoff ** 2 / (4 * math.pi)))
    return _normalised(kernel)


def _pad_kernel(kernel, size):
    """Zero-pad a centred (k, k) kernel to (size, size) (zero weights: the same blur, a common shape)."""
    pad = (size - kernel.shape[-1]) // 2
    return F.pad(kernel, (pad, pad, pad, pad)) if pad > 0 else kernel


def _identity_kernel(size):
    """A (size, size) kernel that leaves the image unchanged (1 at the centre)."""
    kernel = torch.zeros(size, size)
    kernel[size // 2, size // 2] = 1.0
    return kernel


def random_blur_kernel(settings, rng, stage, drawn=None):
    """
    One random kernel, drawn as Real-ESRGAN draws it, from a CPU torch.Generator.

    stage 1 or 2: the blur of that degradation stage (settings 'kernel_list', 'kernel_prob', 'sinc_prob',
    'blur_sigma', 'betag_range', 'betap_range', 'blur_kernel_size' and their '...2' twins).
    stage 'final': the final sinc filter (a sinc with prob. 'final_sinc_prob', else the identity).
    Returns a (K, K) float32 tensor summing to 1, K = 'blur_kernel_size' (stage 1) or 'blur_kernel_size2'
    (stages 2 and 'final'); smaller kernels (side drawn from the odd numbers in [blur_kernel_min_size, K])
    are zero-padded to K so that a whole batch of kernels stacks into one tensor.
    drawn: an optional dict that receives what was drawn, as plain Python values: 'size' (the kernel's own side),
    'kind' (one of kernel_list, 'sinc', or 'identity' where the final filter is left out) and the kind's parameters
    ('sigma_x', 'sigma_y' in pixels, 'theta' in radians, 'beta'; a sinc's 'cutoff' in radians per pixel).
    """
    drawn = {} if drawn is None else drawn
    settings = _degradation_settings(settings)
    if stage not in (1, 2, "final"):
        raise ValueError(f"stage must be 1, 2 or 'final', got {stage!r}")
    suffix = "" if stage == 1 else "2"
    max_size = settings["blur_kernel_size" + suffix]
    sizes = list(range(settings["blur_kernel_min_size"] | 1, max_size + 1, 2))  # odd sides only
    if not sizes:
        raise ValueError(f"blur_kernel_size{suffix}={max_size} is smaller than blur_kernel_min_size")
    size = _choice(rng, sizes, [1.0] * len(sizes))
    drawn["size"] = size

    if stage == "final":
        if _uniform(rng, 0, 1) >= settings["final_sinc_prob"]:
            drawn["kind"] = "identity"
            return _identity_kernel(max_size)
        cutoff = _uniform(rng, *settings["final_sinc_cutoff_range"])
        drawn.update(kind="sinc", cutoff=cutoff)
        return _pad_kernel(sinc_kernel(cutoff, size), max_size)

    if _uniform(rng, 0, 1) < settings["sinc_prob" + suffix]:
        # Wide kernels may use lower cutoffs (blurrier sinc); small ones cannot represent them.
        cutoff_range = settings["sinc_cutoff_range_small" if size < 13 else "sinc_cutoff_range_large"]
        cutoff = _uniform(rng, *cutoff_range)
        drawn.update(kind="sinc", cutoff=cutoff)
        return _pad_kernel(sinc_kernel(cutoff, size), max_size)

    kind = _choice(rng, settings["kernel_list" + suffix], settings["kernel_prob" + suffix])
    sigma_range = settings["blur_sigma" + suffix]
    sigma_x = _uniform(rng, *sigma_range)
    if kind.endswith("_iso") or kind == "iso":
        sigma_y, theta = sigma_x, 0.0
    else:
        sigma_y = _uniform(rng, *sigma_range)
        theta = _uniform(rng, *settings["kernel_rotation_range"])
    drawn.update(kind=kind, sigma_x=sigma_x, sigma_y=sigma_y, theta=theta)
    if kind in ("iso", "aniso"):
        kernel = anisotropic_gaussian_kernel(sigma_x, sigma_y, theta, size)
    elif kind.startswith("generalized"):
        beta = drawn["beta"] = _beta_exponent(rng, settings["betag_range" + suffix])
        kernel = generalized_gaussian_kernel(sigma_x, sigma_y, theta, beta, size)
    elif kind.startswith("plateau"):
        beta = drawn["beta"] = _beta_exponent(rng, settings["betap_range" + suffix])
        kernel = plateau_kernel(sigma_x, sigma_y, theta, beta, size)
    else:
        raise ValueError(f"unknown kernel type {kind!r} in kernel_list{suffix}; use iso, aniso, "
                         f"generalized_iso, generalized_aniso, plateau_iso or plateau_aniso")
    return _pad_kernel(kernel, max_size)


def filter_per_image(imgs, kernels):
    """
    Convolve each image of a batch with its own kernel, in one grouped convolution.

    imgs: (N, C, H, W); kernels: (N, K, K) (one per image) or (K, K) (shared), K odd.
    Returns (N, C, H, W). Borders are reflect-padded (replicate-padded when the image is smaller than the
    kernel radius), so a blurred image does not darken at its edges.
    """
    n, c, h, w = imgs.shape
    kernels = kernels.to(imgs.device, imgs.dtype)
    if kernels.dim() == 2:
        kernels = kernels.expand(n, -1, -1)
    k = kernels.shape[-1]
    pad = k // 2
    mode = "reflect" if pad < h and pad < w else "replicate"
    padded = F.pad(imgs, (pad, pad, pad, pad), mode=mode)
    # conv2d computes a correlation; flipping the kernel makes it a true convolution (the same thing for the
    # point-symmetric kernels above, but correct for any kernel a user passes).
    # groups = N * C: channel j of image i (group i * C + j) meets only kernel i.
    weight = kernels.flip(-1, -2).repeat_interleave(c, dim=0).unsqueeze(1)  # (N * C, 1, K, K)
    out = F.conv2d(padded.reshape(1, n * c, h + 2 * pad, w + 2 * pad), weight, groups=n * c)
    return out.view(n, c, h, w)


# ------------------------------------------------------------------------------------------------------
# Unsharp masking (USM) of the ground truth. Real-ESRGAN sharpens the HR target before the pixel and
# perceptual losses: the model then learns to produce crisper edges than the (often slightly soft) training
# photos have, which people judge as better. Only pixels near real edges are sharpened (the residual must
# exceed a threshold), so flat regions and noise are left alone; the GAN's "real" images stay unsharpened.
# ------------------------------------------------------------------------------------------------------
def _gaussian_window_1d(radius):
    """1-D Gaussian window of odd side (radius, made odd) with OpenCV's default sigma for that side."""
    side = radius + 1 if radius % 2 == 0 else radius
    sigma = 0.3 * ((side - 1) * 0.5 - 1) + 0.8  # OpenCV's getGaussianKernel(side, 0) rule: side 51 -> 8.0
    coords = torch.arange(side, dtype=torch.float64) - side // 2
    window = torch.exp(-coords ** 2 / (2 * sigma ** 2))
    return (window / window.sum()).float()


def _separable_blur(imgs, window):
    """Blur (N, C, H, W) with the 2-D kernel outer(window, window), as two 1-D passes.

    Each 1-D pass is written as a product with a banded matrix (column j holds the window at rows j .. j + K-1
    of the padded axis): on CPUs this is several times faster than a (1, K) convolution, and it is exact."""
    n, c, h, w = imgs.shape
    side = window.numel()
    pad = side // 2
    mode = "reflect" if pad < h and pad < w else "replicate"
    x = F.pad(imgs, (pad, pad, pad, pad), mode=mode)  # (N, C, H + 2 pad, W + 2 pad)

    def banded(length):  # (length + 2 pad, length)
        matrix = torch.zeros(length + 2 * pad, length, device=imgs.device, dtype=imgs.dtype)
        rows = torch.arange(side, device=imgs.device).view(side, 1) + torch.arange(length, device=imgs.device)
        cols = torch.arange(length, device=imgs.device).expand(side, length)
        matrix[rows, cols] = window.to(imgs.device, imgs.dtype).view(side, 1).expand(side, length)
        return matrix

    x = x @ banded(w)  # along rows:    (N, C, H + 2 pad, W)
    x = (x.transpose(2, 3) @ banded(h)).transpose(2, 3)  # along columns: (N, C, H, W)
    return x.contiguous()


def usm_sharpen(imgs, weight=0.5, radius=50, threshold=10):
    """
    Unsharp masking as Real-ESRGAN applies it to the ground truth.

    imgs: (N, 3, H, W) in [0, 1]. With blurred = Gaussian blur of the image (window side `radius`, made odd):
        residual = imgs - blurred                         (the image's high frequencies)
        sharp    = clamp(imgs + weight * residual, 0, 1)
        mask     = blur(|residual| * 255 > threshold)      (soft 0..1 map of "near an edge")
        output   = mask * sharp + (1 - mask) * imgs
    Returns (N, 3, H, W) in [0, 1]. A flat image is returned unchanged (its residual is 0).
    """
    window = _gaussian_window_1d(radius)
    residual = imgs - _separable_blur(imgs, window)
    edge_mask = _separable_blur((residual.abs() * 255 > threshold).to(imgs.dtype), window)
    sharp = (imgs + weight * residual).clamp(0, 1)
    return edge_mask * sharp + (1 - edge_mask) * imgs


# ------------------------------------------------------------------------------------------------------
# Noise. Gaussian noise models the sensor's read noise (the same strength everywhere); Poisson noise models
# photon shot noise, whose variance equals the photon count, so bright pixels get more absolute noise.
# "Grey" noise is identical in R, G and B (luminance noise); colour noise is independent per channel.
# ------------------------------------------------------------------------------------------------------
def add_gaussian_noise(imgs, sigma, gray, rng):
    """
    imgs: (N, C, H, W) in [0, 1]; sigma: (N,) standard deviations in 8-bit levels (so sigma / 255 in [0, 1]
    units); gray: (N,) bool, True where the noise should be the same in every channel.
    `rng` must live on imgs.device. Returns imgs + noise (not clamped).
    """
    n, c, h, w = imgs.shape
    noise = torch.randn(imgs.shape, generator=rng, device=imgs.device, dtype=imgs.dtype)
    gray = gray.to(imgs.device).view(n, 1, 1, 1)
    if gray.any():
        gray_noise = torch.randn((n, 1, h, w), generator=rng, device=imgs.device, dtype=imgs.dtype)
        noise = torch.where(gray, gray_noise.expand_as(noise), noise)
    return imgs + noise * (sigma.to(imgs.device, imgs.dtype).view(n, 1, 1, 1) / 255.0)


def _poisson_noise(imgs, rng):
    """Zero-mean Poisson noise for (N, C', H, W) images in [0, 1], Real-ESRGAN's way: the image is read as
    8-bit levels, and its "photon count" scale is the number of distinct levels it uses, rounded up to a power
    of two (a 256-level image counts value v as 256 v photons, so the noise std is sqrt(v / 256))."""
    n = imgs.shape[0]
    quantised = (imgs * 255).round().clamp(0, 255)  # (N, C', H, W) integer-valued levels
    # Count the distinct levels of each image at once: mark used levels in an (N, 256) table.
    used = torch.zeros(n, 256, device=imgs.device, dtype=imgs.dtype)
    used.scatter_(1, quantised.long().reshape(n, -1), 1.0)
    counts = 2 ** torch.ceil(torch.log2(used.sum(dim=1)))  # (N,)
    counts = counts.view(n, 1, 1, 1)
    quantised = quantised / 255
    return torch.poisson(quantised * counts, generator=rng) / counts - quantised


def add_poisson_noise(imgs, scale, gray, rng):
    """
    imgs: (N, 3, H, W) in [0, 1]; scale: (N,) noise multipliers; gray: (N,) bool (noise computed on the
    luminance and shared by the channels). `rng` must live on imgs.device. Returns imgs + noise.
    """
    n = imgs.shape[0]
    noise = _poisson_noise(imgs, rng)
    gray = gray.to(imgs.device).view(n, 1, 1, 1)
    if gray.any():
        luma_weights = utils.LUMA_WEIGHTS.to(imgs.device, imgs.dtype)
        luminance = (imgs * luma_weights.view(1, 3, 1, 1)).sum(dim=1, keepdim=True)  # (N, 1, H, W)
        noise = torch.where(gray, _poisson_noise(luminance, rng).expand_as(noise), noise)
    return imgs + noise * scale.to(imgs.device, imgs.dtype).view(n, 1, 1, 1)


# ------------------------------------------------------------------------------------------------------
# JPEG compression, simulated in torch so that it runs batched on the GPU with a per-image quality. It
# follows the baseline JPEG codec step by step (as libjpeg, which PIL uses, does with default settings):
#   RGB -> YCbCr (JFIF, full range) -> 4:2:0 chroma subsampling (2x2 averages of Cb, Cr) -> 8x8 blocks ->
#   DCT -> divide by the quantisation table, ROUND (the only lossy step besides subsampling) -> multiply back
#   -> inverse DCT -> chroma upsampled with libjpeg's "fancy" (triangular = bilinear) filter -> RGB, 8 bits.
# The rounding of high-frequency coefficients is what makes blocking (8x8 edges) and ringing (mosquito noise).
# ------------------------------------------------------------------------------------------------------
# The example tables of the JPEG standard (ITU-T T.81, Annex K), for quality 50; rows = vertical frequency.
_JPEG_LUMA_TABLE = torch.tensor([
    [16, 11, 10, 16, 24, 40, 51, 61],
    [12, 12, 14, 19, 26, 58, 60, 55],
    [14, 13, 16, 24, 40, 57, 69, 56],
    [14, 17, 22, 29, 51, 87, 80, 62],
    [18, 22, 37, 56, 68, 109, 103, 77],
    [24, 35, 55, 64, 81, 104, 113, 92],
    [49, 64, 78, 87, 103, 121, 120, 101],
    [72, 92, 95, 98, 112, 100, 103, 99]], dtype=torch.float32)
_JPEG_CHROMA_TABLE = torch.full((8, 8), 99.0)
_JPEG_CHROMA_TABLE[:4, :4] = torch.tensor([
    [17, 18, 24, 47],
    [18, 21, 26, 66],
    [24, 26, 56, 99],
    [47, 66, 99, 99]], dtype=torch.float32)


def _rgb_to_ycbcr_matrix():
    """JFIF's full-range YCbCr as a (3, 3) matrix: Y = the BT.601 luma (utils.LUMA_WEIGHTS: kr R + kg G + kb B),
    Cb / Cr = the blue / red differences B - Y and R - Y, scaled into [-0.5, 0.5] (then centred on 128 in 8-bit
    units by _YCBCR_OFFSET): Cb = 0.5 (B - Y) / (1 - kb), Cr = 0.5 (R - Y) / (1 - kr)."""
    luma = utils.LUMA_WEIGHTS.double()
    blue, red = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64), torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    return torch.stack([luma, 0.5 * (blue - luma) / (1 - luma[2]), 0.5 * (red - luma) / (1 - luma[0])])


_RGB_TO_YCBCR = _rgb_to_ycbcr_matrix()
_YCBCR_OFFSET = torch.tensor([0.0, 128.0, 128.0])


def _block_dct_matrix(device, dtype):
    """(64, 64) matrix of the 2-D 8x8 DCT acting on row-major flattened blocks.

    The orthonormal 1-D DCT-II is the (8, 8) matrix D[u, x] = c(u) cos((2x + 1) u pi / 16), c(0) = sqrt(1/8),
    c(u > 0) = sqrt(2/8); the 2-D DCT of a block B is D @ B @ D.T. On flattened blocks that is one product with
    the Kronecker product kron(D, D): a single large matrix multiplication instead of many tiny ones."""
    freq = torch.arange(8, dtype=torch.float64).view(8, 1)
    pos = torch.arange(8, dtype=torch.float64).view(1, 8)
    dct_1d = torch.cos((2 * pos + 1) * freq * math.pi / 16) * math.sqrt(2 / 8)
    dct_1d[0] = math.sqrt(1 / 8)
    return torch.kron(dct_1d, dct_1d).to(device, dtype)


def _jpeg_tables(quality, base_table):
    """Per-image quantisation tables (N, 8, 8) for integer qualities (N,) in [1, 100], libjpeg's integer scaling:
    scale = 5000 // q below 50, 200 - 2 q from 50; table = (base * scale + 50) // 100, kept in [1, 255]."""
    scale = torch.where(quality < 50, torch.floor(5000 / quality), 200 - 2 * quality).view(-1, 1, 1)
    return torch.floor((base_table.to(quality.device) * scale + 50) / 100).clamp(1, 255)


def _jpeg_planes(planes, tables):
    """Quantise planes (N, P, H, W) (H, W multiples of 8, values level-shifted to [-128, 127]) in the DCT
    domain with tables (N, 8, 8); returns the decoded planes, same shape."""
    n, p, h, w = planes.shape
    dct = _block_dct_matrix(planes.device, planes.dtype)  # (64, 64), orthonormal: its inverse is dct.T
    blocks = planes.reshape(n, p, h // 8, 8, w // 8, 8).transpose(3, 4).reshape(n, p, h // 8, w // 8, 64)
    coefficients = blocks @ dct.T  # (N, P, H/8, W/8, 64): frequency (u, v) at index 8 u + v
    tables = tables.to(planes.dtype).reshape(n, 1, 1, 1, 64)
    coefficients = torch.round(coefficients / tables) * tables
    blocks = (coefficients @ dct).reshape(n, p, h // 8, w // 8, 8, 8)
    return blocks.transpose(3, 4).reshape(n, p, h, w)


def _jpeg_quality(quality, device=None):
    """A JPEG quality as an encoder takes it: a number or a tensor -> a float32 tensor of whole numbers in [1, 100]."""
    return torch.as_tensor(quality, dtype=torch.float32, device=device).round().clamp(1, 100)


def jpeg_compress(imgs, quality):
    """
    Simulate JPEG compression (baseline, 4:2:0 chroma, standard tables) of a batch, in torch.

    imgs: (N, 3, H, W) in [0, 1] (clamped first); quality: a number or an (N,) tensor, one quality per image,
    in [1, 100] (rounded to an integer, as an encoder takes it; 100 is nearly lossless, 10 very lossy).
    Returns the decoded images, (N, 3, H, W) in [0, 1], rounded to 8-bit levels like a real decoder's output.
    """
    n, c, h, w = imgs.shape
    if c != 3:
        raise ValueError(f"jpeg_compress expects RGB images (N, 3, H, W), got {tuple(imgs.shape)}")
    quality = _jpeg_quality(quality, imgs.device).expand(n)  # (N,)
    rgb = imgs.clamp(0, 1) * 255
    # JPEG codes 16x16 macroblocks (8x8 luma blocks, 2x2-subsampled chroma): pad by repeating the last
    # row / column (what libjpeg does), crop back at the end.
    pad_h, pad_w = (-h) % 16, (-w) % 16
    rgb = F.pad(rgb, (0, pad_w, 0, pad_h), mode="replicate")
    ycbcr = torch.einsum("ij,njhw->nihw", _RGB_TO_YCBCR.to(rgb), rgb) + _YCBCR_OFFSET.to(rgb).view(1, 3, 1, 1)
    luma = ycbcr[:, :1]  # (N, 1, H', W'), [0, 255]
    chroma = F.avg_pool2d(ycbcr[:, 1:], 2)  # (N, 2, H'/2, W'/2): 4:2:0 subsampling, each 2x2 averaged

    # Level shift to [-128, 127] (centred values give a small DC coefficient), quantise, shift back.
    luma = _jpeg_planes(luma - 128, _jpeg_tables(quality, _JPEG_LUMA_TABLE)) + 128
    chroma = _jpeg_planes(chroma - 128, _jpeg_tables(quality, _JPEG_CHROMA_TABLE)) + 128
    chroma = F.interpolate(chroma, scale_factor=2, mode="bilinear", align_corners=False)  # (N, 2, H', W')

    ycbcr = torch.cat([luma, chroma], dim=1) - _YCBCR_OFFSET.to(rgb).view(1, 3, 1, 1)
    rgb = torch.einsum("ij,njhw->nihw", torch.linalg.inv(_RGB_TO_YCBCR).to(rgb), ycbcr)[:, :, :h, :w]
    return rgb.round().clamp(0, 255) / 255


# ------------------------------------------------------------------------------------------------------
# The two-stage pipeline. Each random step returns its output and what it drew, one dict per image (the
# pipeline's trace, see degrade_batch).
# ------------------------------------------------------------------------------------------------------
def _random_resize(imgs, settings, rng, suffix, reference_size):
    """Resize the whole batch by one random scale ('up' / 'down' / 'keep' with resize_prob{suffix}) of
    reference_size (H, W), with a random mode (area, bilinear or bicubic). Returns (N, C, h', w') and the draws
    (the same for every image)."""
    direction = _choice(rng, ["up", "down", "keep"], settings["resize_prob" + suffix])
    low, high = settings["resize_range" + suffix]
    scale = {"up": lambda: _uniform(rng, 1, high), "down": lambda: _uniform(rng, low, 1),
             "keep": lambda: 1.0}[direction]()
    size = (max(1, int(reference_size[0] * scale)), max(1, int(reference_size[1] * scale)))
    mode = _choice(rng, settings["resize_mode_list"], settings["resize_mode_prob"])
    drawn = [{"direction": direction, "scale": scale, "mode": mode} for _ in range(imgs.shape[0])]
    return _resize(imgs, size, mode, settings["resize_antialias"]), drawn


def _resize(imgs, size, mode, antialias=False):
    """F.interpolate with the given mode. Real-ESRGAN does not anti-alias (aliasing is one more artifact to learn);
    with `antialias` (the setting resize_antialias), bilinear and bicubic shrinking widen their filter as photo
    software (and MATLAB's imresize) does, so the LR images look like the downscaled photos people have."""
    if mode == "area":
        return F.interpolate(imgs, size=size, mode="area")
    if mode in ("bilinear", "bicubic"):
        return F.interpolate(imgs, size=size, mode=mode, align_corners=False, antialias=antialias)
    raise ValueError(f"unknown resize mode {mode!r} in resize_mode_list; use area, bilinear or bicubic")


def _random_noise(imgs, settings, rng, noise_rng, suffix):
    """Per image: Gaussian noise (prob. gaussian_noise_prob{suffix}) or Poisson noise, grey or colour.
    Returns the noisy batch clamped to [0, 1], and the draws: 'kind', 'sigma' (Gaussian, in 8-bit levels) or
    'scale' (Poisson), 'grey'."""
    n = imgs.shape[0]
    use_gaussian = torch.tensor([_uniform(rng, 0, 1) < settings["gaussian_noise_prob" + suffix]
                                 for _ in range(n)])
    gray = torch.tensor([_uniform(rng, 0, 1) < settings["gray_noise_prob" + suffix] for _ in range(n)])
    sigma = torch.tensor([_uniform(rng, *settings["noise_range" + suffix]) for _ in range(n)])
    scale = torch.tensor([_uniform(rng, *settings["poisson_scale_range" + suffix]) for _ in range(n)])
    out = imgs.clone()
    # Each noise type only on the images that drew it (tensor indexing keeps it batched).
    for selected, add_noise, strength in ((use_gaussian, add_gaussian_noise, sigma),
                                          (~use_gaussian, add_poisson_noise, scale)):
        index = selected.nonzero().flatten()
        if index.numel():
            device_index = index.to(imgs.device)
            out[device_index] = add_noise(imgs[device_index], strength[index], gray[index], noise_rng)
    drawn = [{"kind": "gaussian", "sigma": sigma[i].item(), "grey": gray[i].item()} if use_gaussian[i] else
             {"kind": "poisson", "scale": scale[i].item(), "grey": gray[i].item()} for i in range(n)]
    return out.clamp(0, 1), drawn


def _random_jpeg(imgs, settings, rng, suffix):
    """JPEG with a per-image quality drawn from jpeg_range{suffix}. Returns the decoded batch and the draws."""
    # (N,) whole numbers, as jpeg_compress uses them: the draws record the quality really applied.
    quality = _jpeg_quality([_uniform(rng, *settings["jpeg_range" + suffix]) for _ in range(imgs.shape[0])])
    return jpeg_compress(imgs.clamp(0, 1), quality.to(imgs.device)), [{"quality": int(q)} for q in quality]


def _kernel_batch(settings, rng, stage, n, device, apply_prob=1.0):
    """(N, K, K) kernels for one stage; an image skips the blur (identity kernel) with prob. 1 - apply_prob.
    Also returns the draws: random_blur_kernel's, 'skipped', and the (K, K) 'kernel' applied (on the CPU)."""
    kernels, drawn = [], []
    for _ in range(n):
        kernel_drawn = {}
        kernel = random_blur_kernel(settings, rng, stage, kernel_drawn)
        skipped = _uniform(rng, 0, 1) >= apply_prob or kernel_drawn["kind"] == "identity"
        if skipped:
            kernel = _identity_kernel(kernel.shape[-1])
        kernels.append(kernel)
        drawn.append({**kernel_drawn, "skipped": skipped, "kernel": kernel})
    return torch.stack(kernels).to(device), drawn


def _check_hr_batch(hr_imgs, scaling_factor):
    if hr_imgs.dim() != 4 or hr_imgs.shape[1] != 3:
        raise ValueError(f"expected a batch of RGB images (N, 3, H, W), got shape {tuple(hr_imgs.shape)}")
    if not isinstance(scaling_factor, int) or scaling_factor < 1:
        raise ValueError(f"scaling_factor must be a positive int, got {scaling_factor!r}")
    if min(hr_imgs.shape[-2:]) < scaling_factor:
        raise ValueError(f"HR images of {tuple(hr_imgs.shape[-2:])} px are too small for x{scaling_factor}; "
                         f"use crops of at least {scaling_factor} px (Real-ESRGAN uses 256)")


def _cpu_rng(rng):
    """A CPU torch.Generator for the small random decisions. A CPU `rng` is used as it is; an rng on
    another device (e.g. torch.Generator('cuda')) or None (torch's global RNG, so torch.manual_seed applies)
    only seeds a fresh CPU one: the outcome is still fixed by the seed."""
    if rng is not None and rng.device.type == "cpu":
        return rng
    device = "cpu" if rng is None else rng.device
    seed = int(torch.randint(0, 2 ** 62, (), generator=rng, device=device).item())
    return torch.Generator().manual_seed(seed)


def _rngs(rng, device):
    """(CPU rng for the decisions, rng on `device` for the noise), both determined by `rng`."""
    rng = _cpu_rng(rng)
    noise_rng = torch.Generator(device=device)
    noise_rng.manual_seed(int(torch.randint(0, 2 ** 62, (), generator=rng).item()))
    return rng, noise_rng


@torch.no_grad()
def degrade_batch(hr_imgs, scaling_factor, settings=None, rng=None, trace=None):
    """
    Real-ESRGAN's second-order degradation of a batch: HR images -> realistic LR images.

    hr_imgs: (N, 3, H, W) float in [0, 1], on any device (all heavy work stays there).
    scaling_factor: int s. The LR size is (H // s, W // s): if H or W is not a multiple of s, the HR images
        are first cropped (top-left) to (s * (H // s), s * (W // s)), and THAT crop is the matching ground
        truth (e.g. 97 x 101 HR at x4 -> LR 24 x 25, matching hr_imgs[..., :96, :100]). make_realesrgan_batch
        returns the cropped HR for you.
    settings: dict of overrides of DEGRADATION_DEFAULTS (None: Real-ESRGAN's defaults).
    rng: a torch.Generator, best a CPU one (a rng on another device only seeds a CPU one; None
        draws that seed from torch's global RNG). The same seed gives the same output on the same device type.
    trace: None, or a list to which each step appends what it did (for figures and for learning; the output and
        the random draws are the same with or without it): {'step': its name ('blur 1', 'resize 1', 'noise 1',
        'jpeg 1', 'blur 2', 'resize 2', 'noise 2', then 'final resize', 'final sinc' and 'jpeg final' in the drawn
        order, and '8-bit levels'), 'params': a list of N dicts, what was drawn for each image (see
        random_blur_kernel and the _random_* steps; a blur that was left out says 'skipped': True),
        'imgs': the images after the step, (N, 3, h, w) on the CPU}. The last record's images are lr_imgs.
    Returns lr_imgs (N, 3, H // s, W // s) in [0, 1], rounded to 8-bit levels (k / 255).
    """
    settings = _degradation_settings(settings)
    _check_hr_batch(hr_imgs, scaling_factor)
    rng, noise_rng = _rngs(rng, hr_imgs.device)
    n = hr_imgs.shape[0]
    lr_size = (hr_imgs.shape[2] // scaling_factor, hr_imgs.shape[3] // scaling_factor)
    out = hr_imgs[..., :lr_size[0] * scaling_factor, :lr_size[1] * scaling_factor].float()

    def step(name, imgs, drawn):
        """One step's output, recorded in the trace with what it drew (when there is a trace)."""
        if trace is not None:
            trace.append({"step": name, "params": drawn, "imgs": imgs.detach().to("cpu", copy=True)})
        return imgs

    # ---- stage 1: optics blur, resize, sensor noise, JPEG ----
    kernels, drawn = _kernel_batch(settings, rng, 1, n, out.device)
    out = step("blur 1", filter_per_image(out, kernels), drawn)  # (N, 3, H, W)
    out = step("resize 1", *_random_resize(out, settings, rng, "", out.shape[-2:]))  # (N, 3, ~0.15 .. 1.5 H, ...)
    out = step("noise 1", *_random_noise(out, settings, rng, noise_rng, ""))  # clamped to [0, 1]
    out = step("jpeg 1", *_random_jpeg(out, settings, rng, ""))  # 8-bit levels in [0, 1]

    # ---- stage 2: the same kinds of damage again, milder blur, sizes around the target LR size ----
    kernels, drawn = _kernel_batch(settings, rng, 2, n, out.device, settings["second_blur_prob"])
    out = step("blur 2", filter_per_image(out, kernels), drawn)
    out = step("resize 2", *_random_resize(out, settings, rng, "2", lr_size))  # (N, 3, ~0.3 .. 1.2 x LR size)
    out = step("noise 2", *_random_noise(out, settings, rng, noise_rng, "2"))

    # ---- final: [resize to the LR size + sinc filter] and JPEG, in a random order ----
    # (Real-ESRGAN found that other orders, e.g. sinc -> JPEG -> resize, give twisted lines.)
    sinc_kernels, sinc_drawn = _kernel_batch(settings, rng, "final", n, out.device)
    resize_mode = _choice(rng, settings["resize_mode_list"], settings["resize_mode_prob"])
    jpeg_first = _uniform(rng, 0, 1) < settings["final_jpeg_first_prob"]
    if jpeg_first:
        out = step("jpeg final", *_random_jpeg(out, settings, rng, "2"))
    out = step("final resize", _resize(out, lr_size, resize_mode, settings["resize_antialias"]),
               [{"mode": resize_mode} for _ in range(n)])  # (N, 3, h, w)
    out = step("final sinc", filter_per_image(out, sinc_kernels), sinc_drawn)
    if not jpeg_first:
        out = step("jpeg final", *_random_jpeg(out, settings, rng, "2"))

    # A real LR image is stored with 8 bits per channel.
    return step("8-bit levels", (out * 255).round().clamp(0, 255) / 255, [{} for _ in range(n)])


@torch.no_grad()
def make_realesrgan_batch(hr_imgs, scaling_factor, settings=None, rng=None):
    """
    One Real-ESRGAN training batch: (lr_imgs, hr_imgs, hr_usm_imgs).

    hr_imgs: (N, 3, H, W) in [0, 1]. As in Real-ESRGAN, the ground truth is first sharpened by unsharp masking
    (usm_sharpen with 'usm_weight', 'usm_radius', 'usm_threshold') and the LR images are degraded from the
    SHARPENED ground truth (degrade_batch).
    Returns lr_imgs (N, 3, H // s, W // s), hr_imgs and hr_usm_imgs (N, 3, s * (H // s), s * (W // s)),
    all in [0, 1]. Which target each loss uses is set by 'l1_gt_usm', 'percep_gt_usm', 'gan_gt_usm'.
    """
    settings = _degradation_settings(settings)
    _check_hr_batch(hr_imgs, scaling_factor)
    h = hr_imgs.shape[2] // scaling_factor * scaling_factor
    w = hr_imgs.shape[3] // scaling_factor * scaling_factor
    hr_imgs = hr_imgs[..., :h, :w].float()
    hr_usm_imgs = usm_sharpen(hr_imgs, settings["usm_weight"], settings["usm_radius"], settings["usm_threshold"])
    lr_imgs = degrade_batch(hr_usm_imgs, scaling_factor, settings, rng)
    return lr_imgs, hr_imgs, hr_usm_imgs


# ------------------------------------------------------------------------------------------------------
# The training batch of both training scripts (train_srresnet.py for the pixel-loss network, Real-ESRNet included,
# and train_srgan.py): the LR images, made on the device or taken from the loader, drawn through Real-ESRGAN's
# training-pair pool, and the sharpened targets.
#
# Why a pool? The pipeline above shares the resize scale and mode across a batch (a batch must keep one spatial
# size), so all the pairs of one iteration were shrunk the same way. Real-ESRGAN therefore keeps a pool ("queue")
# of queue_size degraded pairs and trains on pairs drawn from it: once the pool is full, each iteration shuffles it,
# takes the first batch out and puts the new batch in, so one batch mixes pairs degraded at many iterations.
# Here a random choice of batch_size positions is exchanged instead of shuffling the whole pool first: the same
# draw (a uniformly random subset of the pool), without copying the pool every iteration.
# ------------------------------------------------------------------------------------------------------
# The ways the training scripts make LR images (their --degradation): the loader's bicubic LR crops, or the pipeline
# above.
DEGRADATIONS = ("bicubic", "realesrgan")


def _to_levels(imgs):
    """[0, 1] images of 8-bit levels (k / 255) -> uint8 k: lossless for them, and 4 times smaller than float32."""
    return (imgs * 255).round().clamp(0, 255).to(torch.uint8)


class TrainingPairPool:
    """
    Real-ESRGAN's training-pair pool: queue_size (LR, HR) pairs, from which every batch is drawn.

    While the pool fills up, each batch trains as it is and is stored; once it is full, each iteration takes
    batch_size random pairs out (the batch trained on) and puts the new batch in their place. The random positions
    come from utils.make_rng(seed, 'pair_pool', iteration), so a run is reproducible, and the pool's pairs
    are part of the checkpoint (state_dict), so a resumed run draws exactly what an uninterrupted one would.

    The pairs are stored as uint8: LR images are rounded to 8-bit levels by the degradations (and are 8-bit files
    otherwise), HR crops come from 8-bit images, so nothing is lost, and Real-ESRGAN's pool of 180 pairs of 256 x 256
    HR crops takes 35 MB for HR + 2 MB for LR (142 MB + 9 MB in float32). The sharpened HR images are not stored:
    USM is a fixed function of HR, recomputed for the drawn batch (as Real-ESRGAN does).

    With several processes the pool is global, like the batch: every process gathers the whole global batch, makes
    the same exchange (the random stream is shared: rank 0's), keeps an identical copy of the pool, and takes its
    own slice of the drawn batch. The first process's checkpoint therefore holds everyone's pool.
    """

    def __init__(self, queue_size, batch_size, seed, rank=0, world_size=1):
        """
        :param queue_size: pairs in the pool (Real-ESRGAN: 180), at least batch_size
        :param batch_size: the global batch (over all processes); each process brings batch_size / world_size pairs
        """
        if queue_size < batch_size:
            raise ValueError(f"queue_size ({queue_size}) must be at least batch_size ({batch_size}): each iteration "
                             f"draws a whole batch from the pool (Real-ESRGAN uses 180; 0 turns the pool off).")
        self.queue_size, self.seed, self.rank, self.world_size = queue_size, seed, rank, world_size
        self.count = 0  # pairs stored so far (queue_size once full)
        self.lr_levels = self.hr_levels = None  # (queue_size, 3, h, w) and (queue_size, 3, H, W) uint8, on the device

    def _gather(self, imgs):
        """The global batch: every process's slice, in rank order (only this process's with one process)."""
        if self.world_size == 1:
            return imgs
        slices = [torch.empty_like(imgs) for _ in range(self.world_size)]
        torch.distributed.all_gather(slices, imgs.contiguous())
        return torch.cat(slices)

    @torch.no_grad()
    def exchange(self, lr_imgs, hr_imgs, iteration):
        """
        Put this iteration's pairs into the pool and return the pairs to train on.

        :param lr_imgs: (n, 3, h, w), hr_imgs: (n, 3, H, W), in [0, 1] and 8-bit levels, this process's slice
        :return: (lr_imgs, hr_imgs), the same shapes and device, float32: the new pairs themselves while the pool
                 fills up, then pairs drawn from it (from earlier iterations, or these)
        """
        lr_levels, hr_levels = self._gather(_to_levels(lr_imgs)), self._gather(_to_levels(hr_imgs))  # (N, ...)
        if self.lr_levels is None:
            self.lr_levels = lr_levels.new_zeros((self.queue_size, *lr_levels.shape[1:]))
            self.hr_levels = hr_levels.new_zeros((self.queue_size, *hr_levels.shape[1:]))
        elif (self.lr_levels.shape[1:], self.hr_levels.shape[1:]) != (lr_levels.shape[1:], hr_levels.shape[1:]):
            raise ValueError(f"the training-pair pool holds {tuple(self.hr_levels.shape[1:])} HR crops, but this "
                             f"batch has {tuple(hr_levels.shape[1:])}: keep crop_size and scaling_factor when resuming "
                             f"with a pool.")
        self.lr_levels, self.hr_levels = self.lr_levels.to(lr_imgs.device), self.hr_levels.to(hr_imgs.device)
        if self.count < self.queue_size:  # still filling: store what fits, train on the batch as it is
            stored = min(len(lr_levels), self.queue_size - self.count)
            self.lr_levels[self.count:self.count + stored] = lr_levels[:stored]
            self.hr_levels[self.count:self.count + stored] = hr_levels[:stored]
            self.count += stored
            return lr_imgs, hr_imgs
        # Full: take a random batch out, put the new one in its place (one stream for all processes: same pool).
        rng = utils.make_rng(self.seed, "pair_pool", iteration)
        positions = torch.randperm(self.queue_size, generator=rng)[:len(lr_levels)].to(lr_imgs.device)
        drawn_lr, drawn_hr = self.lr_levels[positions], self.hr_levels[positions]  # copies (advanced indexing)
        self.lr_levels[positions], self.hr_levels[positions] = lr_levels, hr_levels
        # This process's slice of the drawn global batch, back to [0, 1].
        local = slice(self.rank * len(lr_imgs), (self.rank + 1) * len(lr_imgs))
        return drawn_lr[local].float() / 255, drawn_hr[local].float() / 255

    def state_dict(self):
        """The pool's pairs (uint8, on the CPU) and fill count, for a checkpoint."""
        if self.lr_levels is None:
            return {"count": 0}
        return {"count": self.count, "lr_levels": self.lr_levels.cpu(), "hr_levels": self.hr_levels.cpu()}

    def load_state_dict(self, state):
        if state["count"] and len(state["lr_levels"]) != self.queue_size:
            raise ValueError(f"the checkpoint's training-pair pool holds {len(state['lr_levels'])} pairs, not "
                             f"queue_size {self.queue_size}: resume with --queue_size {len(state['lr_levels'])}.")
        self.count = state["count"]
        self.lr_levels, self.hr_levels = state.get("lr_levels"), state.get("hr_levels")  # moved to the device on use


def make_pair_pool(hp, rank=0, world_size=1):
    """The run's TrainingPairPool, or None when hp.queue_size is 0 (no pool)."""
    return TrainingPairPool(hp.queue_size, hp.batch_size, hp.seed, rank, world_size) if hp.queue_size > 0 else None


@torch.no_grad()
def make_training_pairs(lr_imgs, hr_imgs, hp, iteration, rank, device, pair_pool=None):
    """
    The (LR, HR) pairs of one training iteration, on `device`, for both training scripts.

      bicubic     the loader's LR crops as they are (bicubic downscales of HR, or the LR images paired with HR in
                  the data list); the "sharpened" HR is HR itself.
      realesrgan  Real-ESRGAN: the loader gives HR crops only (lr_imgs is None); the HR crops are sharpened (USM)
                  and the LR images degraded from the sharpened ones, on the device.
    With a pair pool (hp.queue_size > 0), the pairs then go through it (see TrainingPairPool), and the sharpened
    HR is recomputed for the pairs drawn. The random choices come from utils.make_rng(seed, purpose,
    iteration, rank): reproducible, resumable, different in every process.

    :param lr_imgs: (N, 3, h, w) in [0, 1], or None (degradation 'realesrgan')
    :param hr_imgs: (N, 3, H, W) in [0, 1], H = s h (s = hp.scaling_factor; e.g. H = 256 with Real-ESRGAN's crops)
    :return: (lr_imgs (N, 3, h, w), hr_imgs (N, 3, H, W), hr_usm_imgs (N, 3, H, W)), in [0, 1], on `device`, in
             the memory format of hp.channels_last; which target each loss uses is the script's choice
             (l1_gt_usm, percep_gt_usm, gan_gt_usm)
    """
    memory_format = utils.memory_format(hp.channels_last)
    hr_imgs = hr_imgs.to(device, memory_format=memory_format, non_blocking=True)
    if hp.degradation == "realesrgan":
        settings = {name: getattr(hp, name) for name in DEGRADATION_DEFAULTS if hasattr(hp, name)}
        rng = utils.make_rng(hp.seed, "degradation", iteration, rank)
        lr_imgs, hr_imgs, hr_usm_imgs = make_realesrgan_batch(hr_imgs, hp.scaling_factor, settings, rng)
    else:
        lr_imgs, hr_usm_imgs = lr_imgs.to(device, memory_format=memory_format, non_blocking=True), hr_imgs
    if pair_pool is not None:
        lr_imgs, hr_imgs = pair_pool.exchange(lr_imgs, hr_imgs, iteration)
        # The drawn HR images may be other iterations': sharpen them again (USM is a fixed function of HR).
        hr_usm_imgs = (usm_sharpen(hr_imgs, hp.usm_weight, hp.usm_radius, hp.usm_threshold)
                       if hp.degradation == "realesrgan" else hr_imgs)
    return tuple(img.contiguous(memory_format=memory_format) for img in (lr_imgs, hr_imgs, hr_usm_imgs))
