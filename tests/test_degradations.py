"""Tests of degradations.py: the Real-ESRGAN degradations, the training batch and the training-pair pool.

Each building block is checked against an independent reference where one exists: the blur kernels against
their formulas evaluated with numpy (covariance-matrix form) and scipy's Bessel function, the grouped
convolution and the unsharp mask against scipy.ndimage, the JPEG simulation against PIL's real encoder.
"""
import io
import math

import numpy as np
import pytest
import scipy.ndimage
import scipy.special
import skimage.data
import torch
from PIL import Image

from degradations import (DEGRADATION_DEFAULTS, add_gaussian_noise, add_poisson_noise, anisotropic_gaussian_kernel,
                          degrade_batch, filter_per_image, generalized_gaussian_kernel,
                          isotropic_gaussian_kernel, jpeg_compress, make_realesrgan_batch, plateau_kernel,
                          random_blur_kernel, sinc_kernel, usm_sharpen)
from degradations import _JPEG_CHROMA_TABLE, _JPEG_LUMA_TABLE, _jpeg_tables  # the tables are checked against PIL

import metrics


def photo_crop(size=64, top=40, left=180):
    """A crop of a real photo (skimage's astronaut: face, hair, fabric), (1, 3, size, size) in [0, 1]."""
    img = skimage.data.astronaut()[top:top + size, left:left + size]
    return torch.from_numpy(img).permute(2, 0, 1).float().div(255).unsqueeze(0)


def psnr(a, b):
    return 10 * math.log10(1.0 / ((a - b) ** 2).mean().item())


def reference_kernel(profile, sigma_x, sigma_y, theta, size):
    """Independent kernel formula: quadratic form p^T Sigma^-1 p with Sigma = R diag(sx^2, sy^2) R^T (numpy)."""
    half = size // 2
    coords = np.arange(-half, half + 1, dtype=np.float64)
    x, y = np.meshgrid(coords, coords)  # x along columns, y along rows
    rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    inverse_cov = np.linalg.inv(rotation @ np.diag([sigma_x ** 2, sigma_y ** 2]) @ rotation.T)
    points = np.stack([x, y], axis=-1)
    quad = np.einsum("...i,ij,...j->...", points, inverse_cov, points)
    kernel = profile(quad)
    return kernel / kernel.sum()


# ------------------------------------------------------------------------------------------------------
# Kernels
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [
    lambda s: isotropic_gaussian_kernel(1.7, s),
    lambda s: anisotropic_gaussian_kernel(2.5, 0.6, 0.7, s),
    lambda s: generalized_gaussian_kernel(2.0, 1.0, -1.2, 0.6, s),
    lambda s: plateau_kernel(1.5, 2.8, 2.0, 1.4, s),
    lambda s: sinc_kernel(math.pi / 4, s),
])
@pytest.mark.parametrize("size", [7, 13, 21])
def test_kernels_have_requested_size_and_sum_to_one(make, size):
    kernel = make(size)
    assert kernel.shape == (size, size) and kernel.dtype == torch.float32
    assert abs(kernel.sum().item() - 1) < 1e-5


def test_isotropic_kernels_are_rotation_and_flip_symmetric():
    for kernel in (isotropic_gaussian_kernel(2.0, 15), generalized_gaussian_kernel(2.0, 2.0, 0.0, 2.5, 15),
                   plateau_kernel(1.3, 1.3, 0.0, 1.5, 15), sinc_kernel(1.1, 15)):
        for transformed in (kernel.flip(0), kernel.flip(1), kernel.T, torch.rot90(kernel)):
            assert torch.allclose(transformed, kernel, atol=1e-7)


def test_anisotropic_kernels_are_point_symmetric_but_not_rotation_symmetric():
    for kernel in (anisotropic_gaussian_kernel(3.0, 0.8, 0.5, 21), generalized_gaussian_kernel(3.0, 0.8, 0.5, 0.7, 21),
                   plateau_kernel(3.0, 0.8, 0.5, 1.5, 21)):
        assert torch.allclose(kernel.flip(0, 1), kernel, atol=1e-7)
        assert not torch.allclose(torch.rot90(kernel), kernel, atol=1e-4)


def test_anisotropic_kernel_long_axis_points_along_theta():
    # theta = 0: the long axis (sigma_x = 3) lies along x (columns), so the kernel is wider than tall.
    kernel = anisotropic_gaussian_kernel(3.0, 0.7, 0.0, 21)
    assert kernel[10, 13] > 10 * kernel[13, 10]
    # theta = pi / 2: the same ellipse turned to lie along y (rows).
    turned = anisotropic_gaussian_kernel(3.0, 0.7, math.pi / 2, 21)
    assert torch.allclose(turned, kernel.T, atol=1e-7)


@pytest.mark.parametrize("sigma_x, sigma_y, theta", [(1.0, 1.0, 0.0), (2.7, 0.9, 0.4), (0.5, 2.2, -2.5)])
def test_gaussian_family_matches_covariance_formula(sigma_x, sigma_y, theta):
    size = 17
    cases = [
        (anisotropic_gaussian_kernel(sigma_x, sigma_y, theta, size), lambda q: np.exp(-0.5 * q)),
        (generalized_gaussian_kernel(sigma_x, sigma_y, theta, 0.7, size), lambda q: np.exp(-0.5 * q ** 0.7)),
        (generalized_gaussian_kernel(sigma_x, sigma_y, theta, 2.5, size), lambda q: np.exp(-0.5 * q ** 2.5)),
        (plateau_kernel(sigma_x, sigma_y, theta, 1.6, size), lambda q: 1 / (1 + q ** 1.6)),
    ]
    for kernel, profile in cases:
        expected = reference_kernel(profile, sigma_x, sigma_y, theta, size)
        np.testing.assert_allclose(kernel.numpy(), expected, rtol=1e-4, atol=1e-9)
    # The isotropic Gaussian is the anisotropic one with equal sigmas.
    iso = isotropic_gaussian_kernel(sigma_x, size).numpy()
    np.testing.assert_allclose(iso, reference_kernel(lambda q: np.exp(-0.5 * q), sigma_x, sigma_x, 0, size),
                               rtol=1e-4, atol=1e-9)


def test_generalized_gaussian_with_beta_one_is_the_gaussian():
    assert torch.allclose(generalized_gaussian_kernel(2.0, 1.0, 0.3, 1.0, 21),
                          anisotropic_gaussian_kernel(2.0, 1.0, 0.3, 21), atol=1e-7)


def reference_sinc(cutoff, size):
    """Independent 2-D sinc: cutoff J1(cutoff r) / (2 pi r) with scipy's Bessel function, normalised (numpy)."""
    half = size // 2
    y, x = np.mgrid[-half:half + 1, -half:half + 1].astype(np.float64)
    r = np.hypot(x, y)
    with np.errstate(invalid="ignore", divide="ignore"):
        kernel = cutoff * scipy.special.j1(cutoff * r) / (2 * np.pi * r)
    kernel[half, half] = cutoff ** 2 / (4 * np.pi)  # the limit r -> 0
    return kernel / kernel.sum()


@pytest.mark.parametrize("cutoff, size", [(math.pi, 7), (math.pi / 3, 13), (math.pi / 5, 21)])
def test_sinc_kernel_matches_bessel_formula(cutoff, size):
    expected = reference_sinc(cutoff, size)
    np.testing.assert_allclose(sinc_kernel(cutoff, size).numpy(), expected, rtol=1e-4, atol=1e-8)
    if cutoff < math.pi / 2:
        assert sinc_kernel(cutoff, size).min() < 0  # the negative side lobes that make ringing


def test_random_blur_kernels_are_valid_and_reproducible():
    for stage in (1, 2, "final"):
        first = [random_blur_kernel(None, torch.Generator().manual_seed(s), stage) for s in range(30)]
        again = [random_blur_kernel(None, torch.Generator().manual_seed(s), stage) for s in range(30)]
        for kernel, repeat in zip(first, again):
            assert kernel.shape == (21, 21)
            assert abs(kernel.sum().item() - 1) < 1e-5
            assert torch.equal(kernel, repeat)
        assert len({tuple(k.flatten().tolist()) for k in first}) > 20  # really random


def test_random_blur_kernel_respects_settings():
    identity = torch.zeros(21, 21)
    identity[10, 10] = 1
    no_final_sinc = random_blur_kernel({"final_sinc_prob": 0.0}, torch.Generator().manual_seed(0), "final")
    assert torch.equal(no_final_sinc, identity)
    always_sinc = random_blur_kernel({"sinc_prob": 1.0, "blur_kernel_min_size": 21},
                                     torch.Generator().manual_seed(0), 1)
    assert always_sinc.min() < 0  # a sinc of side 21 always has negative lobes
    smaller = random_blur_kernel({"blur_kernel_size2": 11}, torch.Generator().manual_seed(0), 2)
    assert smaller.shape == (11, 11)
    with pytest.raises(ValueError, match="unknown degradation setting"):
        random_blur_kernel({"blur_sigmaa": [1, 2]}, torch.Generator(), 1)
    with pytest.raises(ValueError, match="unknown kernel type"):
        random_blur_kernel({"kernel_list": ["motion"], "kernel_prob": [1.0], "sinc_prob": 0.0},
                           torch.Generator().manual_seed(0), 1)


def test_filter_per_image_matches_scipy_convolution():
    generator = torch.Generator().manual_seed(0)
    imgs = torch.rand(3, 2, 20, 23, generator=generator)
    kernels = torch.rand(3, 5, 5, generator=generator)  # not symmetric: checks convolution vs correlation
    out = filter_per_image(imgs, kernels)
    for i in range(3):
        for c in range(2):
            # torch's 'reflect' padding is scipy's 'mirror' (the edge pixel is not repeated).
            expected = scipy.ndimage.convolve(imgs[i, c].double().numpy(), kernels[i].double().numpy(), mode="mirror")
            np.testing.assert_allclose(out[i, c].numpy(), expected, atol=1e-5)


# ------------------------------------------------------------------------------------------------------
# Unsharp masking
# ------------------------------------------------------------------------------------------------------
def test_usm_leaves_flat_images_unchanged():
    flat = torch.full((2, 3, 40, 40), 0.3)
    assert torch.allclose(usm_sharpen(flat), flat, atol=1e-6)


def test_usm_matches_scipy_reference_and_sharpens():
    img = photo_crop(96)
    out = usm_sharpen(img, weight=0.5, radius=50, threshold=10)
    # Independent reference: Gaussian blur of side 51 (sigma 8, radius 25 = truncate 3.125 sigmas), mirror borders.
    array = img[0].double().numpy()

    def blur(a):
        return scipy.ndimage.gaussian_filter(a, sigma=(0, 8.0, 8.0), truncate=25 / 8.0, mode="mirror")

    residual = array - blur(array)
    soft_mask = blur((np.abs(residual) * 255 > 10).astype(np.float64))
    sharp = np.clip(array + 0.5 * residual, 0, 1)
    expected = soft_mask * sharp + (1 - soft_mask) * array
    np.testing.assert_allclose(out[0].numpy(), expected, atol=1e-4)

    assert out.min() >= 0 and out.max() <= 1

    def high_frequency_energy(x):  # energy of the discrete Laplacian
        lap = 4 * x[..., 1:-1, 1:-1] - x[..., :-2, 1:-1] - x[..., 2:, 1:-1] - x[..., 1:-1, :-2] - x[..., 1:-1, 2:]
        return (lap ** 2).mean().item()

    assert high_frequency_energy(out) > 1.2 * high_frequency_energy(img)
    assert abs(out.mean().item() - img.mean().item()) < 0.01  # sharpening, not brightening


# ------------------------------------------------------------------------------------------------------
# Noise
# ------------------------------------------------------------------------------------------------------
def test_gaussian_noise_statistics():
    flat = torch.full((2, 3, 128, 128), 0.5)
    noisy = add_gaussian_noise(flat, torch.tensor([20.0, 5.0]), torch.tensor([False, True]),
                               torch.Generator().manual_seed(0))
    noise = noisy - flat
    for i, sigma in enumerate((20.0, 5.0)):
        assert abs(noise[i].mean().item()) < 0.05 * sigma / 255
        assert abs(noise[i].std().item() / (sigma / 255) - 1) < 0.03
    assert not torch.allclose(noise[0, 0], noise[0, 1])  # colour noise: channels independent
    assert torch.equal(noise[1, 0], noise[1, 1]) and torch.equal(noise[1, 0], noise[1, 2])  # grey noise


def test_poisson_noise_statistics():
    # A flat 8-bit level 128 image with one row that uses all 256 levels: the "photon count" scale is then 256,
    # so in the flat part the noise std is scale * sqrt(v * 256) / 256 with v = 128 / 255.
    img = torch.full((2, 3, 200, 256), 128 / 255)
    img[:, :, 0, :] = torch.arange(256) / 255
    scale = torch.tensor([1.0, 2.5])
    noisy = add_poisson_noise(img, scale, torch.tensor([False, True]), torch.Generator().manual_seed(0))
    noise = (noisy - img)[:, :, 1:]
    for i in range(2):
        expected_std = scale[i].item() * math.sqrt(128 / 255 * 256) / 256
        assert abs(noise[i].mean().item()) < 0.05 * expected_std
        assert abs(noise[i].std().item() / expected_std - 1) < 0.05
    assert not torch.allclose(noise[0, 0], noise[0, 1])
    assert torch.equal(noise[1, 0], noise[1, 1])  # grey: one luminance noise for all channels


# ------------------------------------------------------------------------------------------------------
# JPEG
# ------------------------------------------------------------------------------------------------------
def pil_jpeg(img, quality):
    """Encode (1, 3, H, W) in [0, 1] with PIL's JPEG encoder (libjpeg, 4:2:0) and decode it back."""
    array = (img[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=quality)
    decoded = np.asarray(Image.open(buffer).convert("RGB"))
    return torch.from_numpy(decoded.copy()).permute(2, 0, 1).float().div(255).unsqueeze(0)


def test_jpeg_quality_100_is_nearly_lossless_and_10_is_clearly_lossy():
    img = photo_crop(96)
    img = (img * 255).round() / 255
    assert psnr(jpeg_compress(img, 100), img) > 40
    assert psnr(jpeg_compress(img, 10), img) < 30
    assert psnr(jpeg_compress(img, 95), img) > psnr(jpeg_compress(img, 50), img) > psnr(jpeg_compress(img, 10), img)


@pytest.mark.parametrize("quality", [10, 30, 60, 95])
def test_jpeg_matches_pil_encoder(quality):
    img = (photo_crop(128, top=30, left=150) * 255).round() / 255
    ours = jpeg_compress(img, quality)
    reference = pil_jpeg(img, quality)
    # Both lose a lot at quality 10 (PSNR to the original ~28 dB), yet they agree far more closely.
    assert psnr(ours, reference) > 38
    assert abs(psnr(ours, img) - psnr(reference, img)) < 0.5


@pytest.mark.parametrize("quality", [5, 10, 30, 50, 75, 95, 100])
def test_jpeg_quantisation_tables_match_pils_encoder(quality):
    # PIL reports the tables it wrote into the file (natural row-major order): ours must be the same.
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(buffer, format="JPEG", quality=quality)
    pil_tables = Image.open(buffer).quantization
    q = torch.tensor([float(quality)])
    assert _jpeg_tables(q, _JPEG_LUMA_TABLE).flatten().tolist() == list(pil_tables[0])
    assert _jpeg_tables(q, _JPEG_CHROMA_TABLE).flatten().tolist() == list(pil_tables[1])


def test_jpeg_batch_uses_per_image_quality_and_odd_sizes():
    img = (photo_crop(45) * 255).round() / 255  # 45 px: not a multiple of 8 or 16
    batch = jpeg_compress(img.repeat(2, 1, 1, 1), torch.tensor([20.0, 90.0]))
    assert batch.shape == (2, 3, 45, 45)
    assert torch.equal(batch[0:1], jpeg_compress(img, 20)) and torch.equal(batch[1:2], jpeg_compress(img, 90))
    assert torch.equal(batch * 255, (batch * 255).round())  # decoded to 8-bit levels


# ------------------------------------------------------------------------------------------------------
# The pipeline
# ------------------------------------------------------------------------------------------------------
def test_degrade_batch_is_deterministic_for_a_seed_and_in_range():
    hr = photo_crop(96).repeat(3, 1, 1, 1)
    first = degrade_batch(hr, 4, rng=torch.Generator().manual_seed(1))
    second = degrade_batch(hr, 4, rng=torch.Generator().manual_seed(1))
    other = degrade_batch(hr, 4, rng=torch.Generator().manual_seed(2))
    assert first.shape == (3, 3, 24, 24)
    assert torch.equal(first, second)
    assert not torch.equal(first, other)
    assert first.min() >= 0 and first.max() <= 1
    assert torch.equal(first * 255, (first * 255).round())  # 8-bit levels
    assert not torch.equal(first[0], first[1])  # per-image random choices differ inside a batch


@pytest.mark.parametrize("size, scaling_factor, expected", [((97, 101), 4, (24, 25)), ((31, 30), 2, (15, 15)),
                                                            ((40, 36), 1, (40, 36))])
def test_degrade_batch_sizes_are_floor_divisions(size, scaling_factor, expected):
    hr = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(0))
    lr = degrade_batch(hr, scaling_factor, rng=torch.Generator().manual_seed(0))
    assert lr.shape == (2, 3, *expected)
    lr_again, hr_cropped, hr_usm = make_realesrgan_batch(hr, scaling_factor, rng=torch.Generator().manual_seed(0))
    assert hr_cropped.shape == hr_usm.shape == (2, 3, expected[0] * scaling_factor, expected[1] * scaling_factor)
    assert torch.equal(hr_cropped, hr[..., :expected[0] * scaling_factor, :expected[1] * scaling_factor])


def test_mild_settings_give_a_plain_downscale():
    # With blur, noise, JPEG loss and resizing all switched off, only the final x4 resize remains.
    mild = {"kernel_list": ["iso"], "kernel_prob": [1.0], "sinc_prob": 0.0, "blur_sigma": [0.01, 0.02],
            "resize_prob": [0, 0, 1], "noise_range": [0, 0], "poisson_scale_range": [0, 0], "jpeg_range": [100, 100],
            "second_blur_prob": 0.0, "resize_prob2": [0, 0, 1], "noise_range2": [0, 0],
            "poisson_scale_range2": [0, 0], "jpeg_range2": [100, 100], "final_sinc_prob": 0.0,
            "resize_mode_list": ["area"], "resize_mode_prob": [1.0]}
    hr = photo_crop(64)
    lr = degrade_batch(hr, 4, mild, torch.Generator().manual_seed(0))
    assert psnr(lr, torch.nn.functional.avg_pool2d(hr, 4)) > 38
    # The default settings damage the image much more.
    assert psnr(degrade_batch(hr, 4, None, torch.Generator().manual_seed(0)),
                torch.nn.functional.avg_pool2d(hr, 4)) < 35


def test_make_realesrgan_batch_degrades_the_sharpened_ground_truth():
    hr = photo_crop(64).repeat(2, 1, 1, 1)
    lr, hr_out, hr_usm = make_realesrgan_batch(hr, 4, rng=torch.Generator().manual_seed(3))
    assert torch.equal(hr_out, hr)
    assert torch.allclose(hr_usm, usm_sharpen(hr))
    assert torch.equal(lr, degrade_batch(hr_usm, 4, rng=torch.Generator().manual_seed(3)))


STAGE_STEPS = ["blur 1", "resize 1", "noise 1", "jpeg 1", "blur 2", "resize 2", "noise 2"]
TRACE_SETTINGS = [None, {"final_jpeg_first_prob": 1.0, "sinc_prob": 0.5, "sinc_prob2": 0.5},
                  {"second_blur_prob": 0.0, "final_sinc_prob": 0.0, "final_jpeg_first_prob": 0.0}]


@pytest.mark.parametrize("settings", TRACE_SETTINGS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_trace_changes_nothing_and_ends_with_the_output(seed, settings):
    hr = photo_crop(48).repeat(2, 1, 1, 1)
    rng, traced_rng = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
    trace = []
    lr = degrade_batch(hr, 4, settings, rng)
    assert torch.equal(lr, degrade_batch(hr, 4, settings, traced_rng, trace=trace))
    assert torch.equal(rng.get_state(), traced_rng.get_state())  # the same draws, no more
    assert torch.equal(trace[-1]["imgs"], lr)
    final = ["final resize", "final sinc", "jpeg final"]
    if trace[7]["step"] == "jpeg final":  # JPEG drawn to come first
        final = final[2:] + final[:2]
    assert [record["step"] for record in trace] == STAGE_STEPS + final + ["8-bit levels"]
    for record in trace:
        assert record["imgs"].device.type == "cpu" and record["imgs"].shape[:2] == (2, 3) and len(record["params"]) == 2
    if settings == TRACE_SETTINGS[2]:  # the stage-2 blur and the final sinc left out: said, and nothing done
        steps = {record["step"]: record for record in trace}
        assert all(drawn["skipped"] for drawn in steps["blur 2"]["params"] + steps["final sinc"]["params"])
        assert torch.equal(steps["blur 2"]["imgs"], steps["jpeg 1"]["imgs"])
        assert torch.equal(steps["final sinc"]["imgs"], steps["final resize"]["imgs"])


def kernel_of(drawn, padded_size=21):
    """The (padded_size, padded_size) kernel a trace's draws describe, from the formulas (numpy, scipy)."""
    size, kind, beta = drawn["size"], drawn["kind"], drawn.get("beta")
    if drawn["skipped"]:
        kernel, size = np.ones((1, 1)), 1
    elif kind == "sinc":
        kernel = reference_sinc(drawn["cutoff"], size)
    else:
        profiles = {"iso": lambda quad: np.exp(-0.5 * quad), "generalized": lambda quad: np.exp(-0.5 * quad ** beta),
                    "plateau": lambda quad: 1 / (1 + quad ** beta)}
        profile = profiles[kind.split("_")[0].replace("aniso", "iso")]
        kernel = reference_kernel(profile, drawn["sigma_x"], drawn["sigma_y"], drawn["theta"], size)
    pad = (padded_size - size) // 2
    return np.pad(kernel, pad)


def test_a_trace_records_what_each_step_drew():
    """Each step's recorded draws, applied again to the previous step's images, give the step's images."""
    settings = {"kernel_prob": [1] * 6, "sinc_prob": 0.2, "second_blur_prob": 0.5, "final_sinc_prob": 0.5}
    hr = photo_crop(64).repeat(6, 1, 1, 1)
    kinds = set()
    for seed in range(3):
        trace = []
        degrade_batch(hr, 4, settings, torch.Generator().manual_seed(seed), trace=trace)
        previous = hr
        for record in trace:
            name, params, imgs = record["step"], record["params"], record["imgs"]
            if name.startswith(("blur", "final sinc")):
                kinds.update(drawn["kind"] + " skipped" * drawn["skipped"] for drawn in params)
                for drawn in params:
                    np.testing.assert_allclose(drawn["kernel"].numpy(), kernel_of(drawn), rtol=1e-4, atol=1e-7)
                kernels = torch.stack([drawn["kernel"] for drawn in params])
                assert torch.equal(imgs, filter_per_image(previous, kernels))
            elif name.startswith("resize"):
                reference = previous.shape[-2:] if name == "resize 1" else (16, 16)
                scale = params[0]["scale"]
                assert (scale > 1, scale < 1) == (params[0]["direction"] == "up", params[0]["direction"] == "down")
                size = [int(side * scale) for side in reference]
                mode = params[0]["mode"]
                expected = torch.nn.functional.interpolate(previous, size, mode=mode,
                                                           align_corners=None if mode == "area" else False)
                assert torch.equal(imgs, expected)
            elif name == "final resize":
                assert imgs.shape[-2:] == (16, 16)
            elif name.startswith("noise"):
                for img, before, drawn in zip(imgs, previous, params):
                    inside = ((img > 0) & (img < 1)).all(dim=0)  # pixels no channel of which was clipped
                    noise = (img - before)[:, inside]  # (3, pixels)
                    assert torch.allclose(noise, noise[:1].expand_as(noise), atol=1e-6) == drawn["grey"]
                    if drawn["kind"] == "gaussian":
                        assert noise.std().item() * 255 == pytest.approx(drawn["sigma"], rel=0.2)
            elif name.startswith("jpeg"):
                qualities = torch.tensor([drawn["quality"] for drawn in params])
                assert all(30 <= q <= 95 and q == int(q) for q in qualities.tolist())
                assert torch.equal(imgs, jpeg_compress(previous, qualities))
            else:  # the 8-bit levels of the last step
                assert torch.equal(imgs, (previous * 255).round().clamp(0, 255) / 255)
            previous = imgs
    # Every kind of kernel was drawn, and both stage-2 blurs and final sincs that were left out.
    assert kinds >= set(DEGRADATION_DEFAULTS["kernel_list"]) | {"sinc", "identity skipped"}
    assert any(kind.endswith("skipped") and kind != "identity skipped" for kind in kinds)


def test_degradation_errors_are_clear():
    with pytest.raises(ValueError, match="unknown degradation setting"):
        degrade_batch(torch.rand(1, 3, 32, 32), 4, {"jpeg_rang": [1, 2]})
    with pytest.raises(ValueError, match="too small"):
        degrade_batch(torch.rand(1, 3, 3, 32), 4)
    with pytest.raises(ValueError, match="RGB"):
        degrade_batch(torch.rand(3, 32, 32), 4)


def test_generator_none_follows_torch_manual_seed_and_channels_last_is_accepted():
    hr = photo_crop(48).repeat(2, 1, 1, 1)
    torch.manual_seed(5)
    first = degrade_batch(hr, 4)
    torch.manual_seed(5)
    assert torch.equal(first, degrade_batch(hr, 4))
    seeded = degrade_batch(hr, 4, rng=torch.Generator().manual_seed(9))
    channels_last = degrade_batch(hr.to(memory_format=torch.channels_last), 4,
                                  rng=torch.Generator().manual_seed(9))
    assert torch.equal(seeded, channels_last)
    noisy = add_poisson_noise(hr.to(memory_format=torch.channels_last), torch.ones(2), torch.tensor([True, False]),
                              torch.Generator().manual_seed(0))
    assert noisy.shape == hr.shape


def test_defaults_are_real_esrgans():
    # Spot checks against options/train_realesrgan_x4plus.yml.
    assert DEGRADATION_DEFAULTS["kernel_prob"] == [0.45, 0.25, 0.12, 0.03, 0.12, 0.03]
    assert DEGRADATION_DEFAULTS["resize_prob"] == [0.2, 0.7, 0.1] and DEGRADATION_DEFAULTS["resize_range2"] == [0.3, 1.2]
    assert DEGRADATION_DEFAULTS["blur_sigma2"] == [0.2, 1.5] and DEGRADATION_DEFAULTS["final_sinc_prob"] == 0.8


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_degrade_batch_runs_on_cuda():
    hr = photo_crop(64).repeat(4, 1, 1, 1).cuda()
    first = degrade_batch(hr, 4, rng=torch.Generator().manual_seed(0))
    assert first.device.type == "cuda" and first.shape == (4, 3, 16, 16)
    assert torch.equal(first, degrade_batch(hr, 4, rng=torch.Generator().manual_seed(0)))
    assert first.min() >= 0 and first.max() <= 1
    # A CUDA generator is accepted too (it seeds the CPU generator of the decisions).
    from_cuda_generator = degrade_batch(hr, 4, rng=torch.Generator("cuda").manual_seed(0))
    assert torch.equal(from_cuda_generator, degrade_batch(hr, 4, rng=torch.Generator("cuda").manual_seed(0)))


# ------------------------------------------------------------------------------------------------------
# The training-pair pool
# ------------------------------------------------------------------------------------------------------
def tagged_batch(iteration, batch_size=2):
    """A batch whose pairs say where they come from: pair k of iteration t has every LR pixel at level 4 t + k and
    every HR pixel at level 4 t + k + 100 (8-bit levels, as the pool stores them; t < 38, k < 4)."""
    tags = torch.tensor([4 * iteration + k for k in range(batch_size)], dtype=torch.float32).view(-1, 1, 1, 1)
    return tags.expand(-1, 3, 2, 2) / 255, (tags + 100).expand(-1, 3, 8, 8) / 255


def tags_of(lr_imgs, hr_imgs):
    lr_tags = (lr_imgs * 255).round().flatten(1)
    hr_tags = (hr_imgs * 255).round().flatten(1) - 100
    assert (lr_tags == lr_tags[:, :1]).all() and torch.equal(lr_tags[:, 0], hr_tags[:, 0])  # pairs stay pairs
    return [int(tag) for tag in lr_tags[:, 0]]


def test_pair_pool_mixes_pairs_of_different_iterations_and_loses_none():
    from degradations import TrainingPairPool

    pool = TrainingPairPool(queue_size=6, batch_size=2, seed=0)
    put_in, taken_out, batches = [], [], []
    for iteration in range(30):
        lr_imgs, hr_imgs = tagged_batch(iteration)
        put_in += tags_of(lr_imgs, hr_imgs)
        drawn = tags_of(*pool.exchange(lr_imgs, hr_imgs, iteration))
        batches.append(drawn)
        if iteration < 3:  # filling (6 pairs = 3 batches): each batch trains as it is
            assert drawn == tags_of(lr_imgs, hr_imgs)
        else:
            taken_out += drawn
    state = pool.state_dict()
    assert state["lr_levels"].dtype == torch.uint8 and state["count"] == 6
    # Every pair put in is either still in the pool or was drawn exactly once (after filling).
    in_pool = tags_of(state["lr_levels"].float() / 255, state["hr_levels"].float() / 255)
    assert sorted(taken_out + in_pool) == sorted(put_in)
    # Batches mix iterations: some drawn batch holds pairs degraded at two different iterations, and pairs of
    # earlier iterations come back later.
    assert any(len({tag // 4 for tag in drawn}) > 1 for drawn in batches[3:])
    assert any(tag // 4 < iteration for iteration, drawn in enumerate(batches) for tag in drawn)
    # Each iteration draws other positions: every pair of the full pool comes out sooner or later.
    assert set(put_in[:6]) <= set(taken_out)


def test_pair_pool_resumes_exactly_from_its_state():
    from degradations import TrainingPairPool

    whole = TrainingPairPool(queue_size=4, batch_size=2, seed=3)
    first_half = TrainingPairPool(queue_size=4, batch_size=2, seed=3)
    draws = [tags_of(*whole.exchange(*tagged_batch(t), t)) for t in range(8)]
    for t in range(4):
        first_half.exchange(*tagged_batch(t), t)
    resumed = TrainingPairPool(queue_size=4, batch_size=2, seed=3)
    resumed.load_state_dict(first_half.state_dict())
    assert [tags_of(*resumed.exchange(*tagged_batch(t), t)) for t in range(4, 8)] == draws[4:]
    # Another seed draws other pairs; a wrong size or a pool smaller than a batch is refused clearly.
    other = TrainingPairPool(queue_size=4, batch_size=2, seed=4)
    assert [tags_of(*other.exchange(*tagged_batch(t), t)) for t in range(8)] != draws
    with pytest.raises(ValueError, match="--queue_size 4"):
        TrainingPairPool(queue_size=6, batch_size=2, seed=3).load_state_dict(first_half.state_dict())
    with pytest.raises(ValueError, match="at least batch_size"):
        TrainingPairPool(queue_size=3, batch_size=4, seed=0)


def test_pair_pool_stores_8_bit_pairs_losslessly():
    from degradations import TrainingPairPool

    pool = TrainingPairPool(queue_size=2, batch_size=2, seed=0)
    hr_imgs = photo_crop(16).repeat(2, 1, 1, 1)  # 8-bit levels, as the loader's crops
    lr_imgs = degrade_batch(hr_imgs, 4, rng=torch.Generator().manual_seed(0))  # rounded to levels too
    pool.exchange(lr_imgs, hr_imgs, 0)
    drawn_lr, drawn_hr = pool.exchange(torch.zeros_like(lr_imgs), torch.zeros_like(hr_imgs), 1)
    order = [0, 1] if torch.equal(drawn_lr[0], lr_imgs[0]) else [1, 0]  # the pool draws its pairs in random order
    assert torch.equal(drawn_lr, lr_imgs[order]) and torch.equal(drawn_hr, hr_imgs[order])


def test_resize_antialias_makes_lr_images_like_matlabs():
    """resize_antialias: a bicubic shrink by 4 with anti-aliasing is close to MATLAB's imresize (the protocol's LR
    images, and what photo software does); Real-ESRGAN's plain bicubic aliases, far from it."""
    hr = skimage.data.astronaut()[:256, :256]
    hr_imgs = torch.from_numpy(hr).permute(2, 0, 1)[None].float() / 255
    settings = {**DEGRADATION_DEFAULTS, "blur_sigma": [0.1, 0.1], "second_blur_prob": 0.0, "sinc_prob": 0.0,
                "final_sinc_prob": 0.0, "resize_prob": [0, 0, 1], "resize_prob2": [0, 0, 1], "noise_range": [0, 0],
                "noise_range2": [0, 0], "gaussian_noise_prob": 1.0, "gaussian_noise_prob2": 1.0,
                "jpeg_range": [100, 100], "jpeg_range2": [100, 100], "resize_mode_list": ["bicubic"],
                "resize_mode_prob": [1.0]}
    reference = metrics.imresize(hr, 1 / 4)[2:-2, 2:-2].astype(np.float64)

    def psnr_to_matlab(antialias):
        lr = degrade_batch(hr_imgs, 4, {**settings, "resize_antialias": antialias}, rng=torch.Generator().manual_seed(0))
        lr = (lr[0].permute(1, 2, 0).numpy() * 255).round()[2:-2, 2:-2]
        return 10 * np.log10(255 ** 2 / np.mean((lr - reference) ** 2))

    assert psnr_to_matlab(True) > 36 and psnr_to_matlab(False) < 30
