"""Tests of docs/figures.py: every figure is drawn from tiny made images and tiny networks with random weights, twice
(the same bytes both times), and the numbers the figures show are checked against computations made another way."""
import importlib.util
import json
import math
import re

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import degradations
import metrics
import models
from conftest import REPO_ROOT

# docs/figures.py is a script, not a module of the package: load it from its file.
_spec = importlib.util.spec_from_file_location("figures", REPO_ROOT / "docs" / "figures.py")
figures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(figures)


def made_photo(side, seed=0):
    """A small made colour image, (side, side, 3) uint8: smooth shading with a few sharp discs, values in 40..215
    (so that the stripes of mse_blur.png never clip)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side] / side
    img = 128 + 40 * np.sin(3 * x + 2 * y)[..., None] * np.array([1.0, 0.6, -0.4])
    for _ in range(4):
        cy, cx, radius = rng.uniform(0, 1, 2).tolist() + [rng.uniform(0.1, 0.25)]
        img[(y - cy) ** 2 + (x - cx) ** 2 < radius ** 2] += rng.uniform(-45, 45, 3)
    return np.clip(np.round(img), 40, 215).astype(np.uint8)


class TinyFeatures(nn.Module):
    """A stand-in for models.VGGFeatureExtractor (building VGG19 takes seconds): frozen, {layer: (N, 4, H/16, W/16)}."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 16, stride=16)
        self.requires_grad_(False)
        self.layer_weights = {"relu5_4": 1.0}

    def forward(self, imgs):
        return {"relu5_4": torch.relu(self.conv(imgs))}


@pytest.fixture(scope="module")
def networks():
    torch.manual_seed(0)
    return {"srresnet": models.SRResNet(n_channels=8, n_blocks=4).eval(),
            "compact": models.SRVGGNetCompact(num_feat=8, num_conv=2).eval(),
            "discriminator": models.Discriminator(n_channels=8, fc_size=16), "vgg": TinyFeatures()}


def draw_twice(tmp_path, name, draw):
    """Draw a figure into two folders; it must be a PNG, the same bytes both times. Returns draw's first result."""
    results = []
    for folder in ("first", "second"):
        (tmp_path / folder).mkdir(exist_ok=True)
        results.append(draw(tmp_path / folder / f"{name}.png"))
    first, second = ((tmp_path / folder / f"{name}.png").read_bytes() for folder in ("first", "second"))
    assert first == second, f"{name}.png differs between two runs"
    assert Image.open(tmp_path / "first" / f"{name}.png").format == "PNG"
    return results[0]


def test_upsamplers(tmp_path, networks):
    hr = made_photo(32)
    generators = {"compact": networks["compact"], "srresnet": networks["srresnet"]}
    psnr = draw_twice(tmp_path, "upsamplers", lambda path: figures.draw_upsamplers(path, hr, generators, (8, 8, 8)))
    assert list(psnr) == ["nearest", "bilinear", "bicubic", "compact", "srresnet"]
    # Nearest-neighbour x4 is each LR pixel repeated 4 x 4 times; its PSNR, computed here on MATLAB's Y (4 pixels
    # shaved), is the figure's.
    lr = metrics.imresize(hr, scale=1 / 4)
    nearest = figures.fixed_upsample(lr, "nearest")
    assert np.array_equal(nearest, np.repeat(np.repeat(lr, 4, axis=0), 4, axis=1))
    mse = np.mean((metrics.rgb2y(nearest)[4:-4, 4:-4] - metrics.rgb2y(hr)[4:-4, 4:-4]) ** 2)
    assert psnr["nearest"] == pytest.approx(10 * math.log10(255 ** 2 / mse), abs=1e-9)
    assert psnr["bicubic"] > psnr["nearest"]  # a smooth image: bicubic is closer than blocks


@pytest.mark.parametrize("scale", [4, 16])
def test_the_fixed_filters_weights_are_the_textbook_curves(scale):
    """The weights measured by upsampling an impulse are the box, the triangle and Keys' cubic (a = -0.5)."""
    def keys(d):
        d = np.abs(d)
        return np.where(d <= 1, 1.5 * d ** 3 - 2.5 * d ** 2 + 1,
                        np.where(d < 2, -0.5 * d ** 3 + 2.5 * d ** 2 - 4 * d + 2, 0.0))

    expected = {"nearest": lambda d: (np.abs(d) < 0.5).astype(float), "bilinear": lambda d: np.maximum(0, 1 - np.abs(d)),
                "bicubic": keys}
    for mode, curve in expected.items():
        positions, weights = figures.fixed_kernel_weights(mode, scale)
        assert len(positions) == len(weights) == 7 * scale
        np.testing.assert_allclose(weights, curve(positions), atol=1e-6, err_msg=mode)


def test_pixel_shuffle_orders_follow_the_formulas():
    inputs, pytorch, tensorflow = figures.pixel_shuffle_orders(n_channels=3, r=2, size=2)
    n_channels, r = 3, 2
    assert inputs.shape == (12, 2, 2) and pytorch.shape == tensorflow.shape == (3, 4, 4)
    for c in range(n_channels):
        for h in range(2):
            for w in range(2):
                for i in range(r):
                    for j in range(r):
                        assert pytorch[c, h * r + i, w * r + j] == c * r * r + i * r + j   # README: PyTorch's rule
                        assert tensorflow[c, h * r + i, w * r + j] == (i * r + j) * n_channels + c   # TensorFlow's


def test_pixel_shuffle(tmp_path, networks):
    lr = made_photo(8)
    _, (before, after) = draw_twice(tmp_path, "pixel_shuffle",
                                    lambda path: figures.draw_pixel_shuffle(path, networks["srresnet"], lr))
    assert before.shape == (4, 16, 16) and after.shape == (32, 32)
    # The shuffled map interleaves the four: pixel (2h + i, 2w + j) is map 2i + j at (h, w).
    for i in range(2):
        for j in range(2):
            assert np.array_equal(after[i::2, j::2], before[2 * i + j])


def test_srresnet_features(tmp_path, networks):
    generator = networks["srresnet"]
    lr = made_photo(8)
    sr_imgs, stages = draw_twice(tmp_path, "srresnet_features",
                                 lambda path: figures.draw_srresnet_features(path, generator, lr))
    maps = dict(stages)
    assert [tuple(m.shape) for m in maps.values()] == [(8, 8, 8)] * 6 + [(8, 16, 16), (8, 32, 32)]
    # The same maps computed here by calling the network's layers one by one, without hooks, and the plain
    # (unfolded) last convolution: they must give the model's own output.
    with torch.no_grad():
        x = figures.to_tensor(lr)
        head = generator.conv_block1(x)
        skip_sum = generator.conv_block2(generator.residual_blocks(head)) + head
        upsampled = generator.subpixel_convolutional_blocks(skip_sum)
        output = (generator.conv_block3(upsampled) + 1) / 2
    torch.testing.assert_close(maps["head: 9x9\nconv + PReLU"], head[0])
    torch.testing.assert_close(maps["long skip: plus\nthe head's output"], skip_sum[0])
    torch.testing.assert_close(maps["sub-pixel\nblock 2 (x2)"], upsampled[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sr_imgs, output.clamp(0, 1), atol=1e-5, rtol=1e-5)


def test_mse_blur(tmp_path, networks):
    base = made_photo(48)  # 32 x 32 shown, and a margin of 8
    texture = np.random.default_rng(2).integers(64, 192, (48, 64)).astype(np.uint8)  # all fine detail, no clipping
    results = draw_twice(tmp_path, "mse_blur",
                         lambda path: figures.draw_mse_blur(path, base, texture, networks["srresnet"]))
    (stripes, _, stripe_demo), (textures, shifts, texture_demo) = results
    assert shifts == [0, 1, 2, 3] and all(img.shape == (48, 48, 3) for img in stripes + textures)
    assert all(img.shape == (32, 32, 3) for img in stripe_demo["candidates"] + texture_demo["candidates"])
    assert stripe_demo["lr"].shape == (8, 8, 3) and stripe_demo["sr"].shape == (32, 32, 3)
    # Four stripe phases a quarter period apart cancel: their average is the photo without stripes (each image is
    # rounded to 8 bits, so within half a level).
    assert np.abs(stripe_demo["average"] - base[8:-8, 8:-8]).max() <= 0.5
    # The LR differences, measured again with Pillow's bicubic shrink instead of MATLAB's (the same cubic, its own
    # code): the same small numbers, far below the HR differences.
    def pil_shrink(img):  # (48, 48, 3) -> the inner (8, 8, 3) of its (12, 12, 3) shrink
        return np.asarray(Image.fromarray(img).resize((12, 12), Image.Resampling.BICUBIC), np.float64)[2:-2, 2:-2]

    for candidates, demo in ((stripes, stripe_demo), (textures, texture_demo)):
        pil_differences = [figures.rms(pil_shrink(img), pil_shrink(candidates[0])) for img in candidates]
        np.testing.assert_allclose(demo["lr_differences"], pil_differences, atol=0.3)
    for demo in (stripe_demo, texture_demo):  # the figure's claim: the LR images differ by under a level
        assert max(demo["lr_differences"]) < 1.0 and min(demo["hr_differences"][1:]) > 30
    # The figure's distances: SR to the average and to each candidate.
    assert stripe_demo["sr_to_average"] == pytest.approx(figures.rms(stripe_demo["sr"], base[8:-8, 8:-8]), abs=0.5)


def test_gan_iteration(tmp_path, networks):
    lr_imgs = torch.stack([figures.to_tensor(made_photo(8, seed))[0] for seed in (0, 1)])  # (2, 3, 8, 8)
    hr_imgs = torch.stack([figures.to_tensor(made_photo(32, seed))[0] for seed in (0, 1)])  # (2, 3, 32, 32)
    before = {name: [p.clone() for p in network.parameters()] for name, network in networks.items()}
    run = draw_twice(tmp_path, "gan_iteration", lambda path: figures.draw_gan_iteration(
        path, networks["srresnet"], networks["discriminator"], networks["vgg"], lr_imgs, hr_imgs))
    assert (run["lr"], run["sr"], run["hr"], run["logits"], run["features"]) == (
        (2, 3, 8, 8), (2, 3, 32, 32), (2, 3, 32, 32), (2,), (2, 4, 2, 2))
    # The generator step trains G only, through the frozen D and VGG; the discriminator step D only (detach).
    assert run["g_step"] == {"generator": True, "discriminator": False, "vgg": False}
    assert run["d_step"] == {"generator": False, "discriminator": True, "vgg": False}
    # The networks given were copied, not changed.
    for name, network in networks.items():
        assert all(torch.equal(a, b) for a, b in zip(before[name], network.parameters()))
        assert all(p.grad is None for p in network.parameters())
    assert all(p.requires_grad for p in networks["discriminator"].parameters())


def test_degradations(tmp_path):
    hr = made_photo(32)
    panels, trace = draw_twice(tmp_path, "degradations", lambda path: figures.draw_degradations(path, hr, seed=3))
    titles = [title for title, _ in panels]
    assert len(panels) == 13 and titles[0].startswith("HR crop") and titles[-1].endswith("the LR image")
    kernels = [item for _, item in panels if item.dim() == 2]
    assert len(kernels) == 3 and all(float(k.sum()) == pytest.approx(1.0, abs=1e-5) for k in kernels)
    # The panels are the pipeline's own steps: its LR image, computed here without a trace, ends them.
    lr_imgs = degradations.degrade_batch(figures.to_tensor(hr), 4, rng=torch.Generator().manual_seed(3))
    assert lr_imgs.shape == (1, 3, 8, 8) and torch.equal(panels[-1][1], lr_imgs)
    # The titles show what was drawn: a JPEG quality, applied to the image before, gives the panel's image; a kernel's
    # side is the side of the kernel shown, which is the middle of the kernel the pipeline applied.
    applied = [drawn["kernel"] for record in trace if "kernel" in record["params"][0] for drawn in record["params"]]
    qualities = []
    for (title, item), (_, before) in zip(panels[1:], panels):
        if title.startswith("JPEG"):
            qualities.append(int(re.search(r"quality (\d+)", title)[1]))
            assert torch.equal(item, degradations.jpeg_compress(before, qualities[-1]))
        if item.dim() == 2:
            side = int(re.search(r"(\d+)x\1", title)[1])
            pad = (21 - side) // 2
            assert torch.equal(item, applied.pop(0)[pad:pad + side, pad:pad + side])
    assert qualities == [record["params"][0]["quality"] for record in trace if record["step"].startswith("jpeg")]
    assert applied == [] and "final: none (11x11 identity)" in titles[10]  # this draw leaves the final sinc out
    # Another seed draws another chain.
    other, _ = figures.degradation_panels(figures.to_tensor(hr), 4)
    assert [title for title, _ in other] != titles


def test_gan_training(tmp_path, capsys):
    log = tmp_path / "log_srgan.jsonl"
    records = [{"iteration": 0, "bicubic": {"Set14": {"psnr": 25.0, "ssim": 0.6}}},
               {"iteration": 0, "val": {"Set14": {"psnr": 26.0, "ssim": 0.7}}}]
    records += [{"iteration": i, "losses": {"perceptual": 0.02, "pixel": 0.04, "adversarial": 0.7 + i / 1e3,
                                            "discriminator": 1.38}} for i in range(10, 60, 10)]
    records.append({"iteration": 50, "val": {"Set14": {"psnr": 25.5, "ssim": 0.65}}})
    log.write_text("".join(json.dumps(record) + "\n" for record in records))
    curves, (scores, bicubic) = draw_twice(tmp_path, "gan_training", lambda path: figures.draw_gan_training(path, log))
    assert curves["adversarial"] == ([10, 20, 30, 40, 50], [0.71, 0.72, 0.73, 0.74, 0.75])
    assert scores == {"Set14": [(0, 26.0, 0.7), (50, 25.5, 0.65)]} and bicubic["Set14"]["psnr"] == 25.0
    # The command line: without the log, that figure is skipped with one line, and nothing else is drawn.
    assert figures.main(["--only", "gan_training", "--log", str(tmp_path / "missing.jsonl"),
                         "--output_folder", str(tmp_path / "out")]) == []
    assert "Skipped gan_training.png: no training log" in capsys.readouterr().out
    assert not (tmp_path / "out").exists()
