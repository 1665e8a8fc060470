"""Tests of the lesson itself: train_srgan.py's losses against values computed by hand, each recipe's
hyperparameters, and the hyperparameter comments that become the --help text."""
import math
import sys
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torchvision.models.vgg import cfgs, make_layers

import cli
import degradations
import models
import train_srgan
import train_srresnet


def bce_real(logit):
    """-log sigmoid(x): binary cross-entropy of one logit against the target 1 ("real"), by hand."""
    return math.log(1 + math.exp(-logit))


def bce_fake(logit):
    """-log(1 - sigmoid(x)): against the target 0 ("fake")."""
    return math.log(1 + math.exp(logit))


def mean(values):
    return sum(values) / len(values)


REAL, FAKE = [2.0, -1.0], [0.5, -0.5]  # the discriminator's logits for two HR and two SR images


def loss(gan_type, for_generator, real=REAL, fake=FAKE):
    real_logits = None if real is None else torch.tensor(real)
    return train_srgan.adversarial_loss(real_logits, torch.tensor(fake), gan_type, for_generator).item()


# ------------------------------------------------------------------------------------------------------
# The adversarial losses
# ------------------------------------------------------------------------------------------------------
def test_vanilla_gan_losses_by_hand():
    # The discriminator: real images -> 1, fakes -> 0, each term a mean over the batch.
    expected_d = mean([bce_real(2.0), bce_real(-1.0)]) + mean([bce_fake(0.5), bce_fake(-0.5)])
    assert loss("vanilla", for_generator=False) == pytest.approx(expected_d, rel=1e-6)
    # The generator: its fakes against the target of real images, -log D(SR); the real logits play no part.
    expected_g = mean([bce_real(0.5), bce_real(-0.5)])
    assert loss("vanilla", for_generator=True) == pytest.approx(expected_g, rel=1e-6)
    assert loss("vanilla", for_generator=True, real=None) == pytest.approx(expected_g, rel=1e-6)
    # Non-saturating: while D easily spots a fake (a very negative logit), the generator still gets a strong
    # gradient, where log(1 - D(SR)) would give almost none.
    fake = torch.tensor([-8.0], requires_grad=True)
    train_srgan.adversarial_loss(None, fake, "vanilla", for_generator=True).backward()
    assert fake.grad.item() == pytest.approx(-1 / (1 + math.exp(-8.0)), rel=1e-5)  # ~ -1: steep


def test_relativistic_gan_losses_by_hand():
    # Relativistic average: each real logit minus the mean fake logit (0), each fake minus the mean real (0.5).
    real_vs_fake = [2.0 - 0.0, -1.0 - 0.0]
    fake_vs_real = [0.5 - 0.5, -0.5 - 0.5]
    expected_d = (mean([bce_real(x) for x in real_vs_fake]) + mean([bce_fake(x) for x in fake_vs_real])) / 2
    assert loss("relativistic", for_generator=False) == pytest.approx(expected_d, rel=1e-6)
    # The generator: the same with the targets swapped, so it also learns from the real images.
    expected_g = (mean([bce_fake(x) for x in real_vs_fake]) + mean([bce_real(x) for x in fake_vs_real])) / 2
    assert loss("relativistic", for_generator=True) == pytest.approx(expected_g, rel=1e-6)
    real = torch.tensor(REAL, requires_grad=True)
    train_srgan.adversarial_loss(real, torch.tensor(FAKE), "relativistic", for_generator=True).backward()
    assert real.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="gan_type"):
        loss("wasserstein", for_generator=True)


def test_relativistic_mean_is_over_the_batch_for_per_pixel_logits():
    # U-Net logits (N, 1, H, W) = (2, 1, 1, 2): one average per pixel position, over the two images.
    real = [[[[1.0, 3.0]]], [[[-1.0, 1.0]]]]  # per-pixel means (0, 2); the global mean would be 1
    fake = [[[[0.0, 4.0]]], [[[2.0, 2.0]]]]   # per-pixel means (1, 3); the global mean would be 2
    real_vs_fake = [1 - 1, 3 - 3, -1 - 1, 1 - 3]
    fake_vs_real = [0 - 0, 4 - 2, 2 - 0, 2 - 2]
    expected = (mean([bce_real(x) for x in real_vs_fake]) + mean([bce_fake(x) for x in fake_vs_real])) / 2
    assert loss("relativistic", False, real, fake) == pytest.approx(expected, rel=1e-6)
    # The global mean would give another number: the test tells the two apart.
    global_mean = (mean([bce_real(x - 2) for x in (1, 3, -1, 1)]) + mean([bce_fake(x - 1) for x in (0, 4, 2, 2)])) / 2
    assert abs(expected - global_mean) > 0.05


# ------------------------------------------------------------------------------------------------------
# The perceptual loss
# ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_vgg():
    """A VGGFeatureExtractor on VGG19's real layer layout with random weights, without building the 120 M-parameter
    classifier that load_vgg19('random') also makes."""
    torch.manual_seed(0)
    features = make_layers(cfgs["E"])  # torchvision's own VGG19 `features` (in-place ReLUs)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(models, "load_vgg19", lambda weights: SimpleNamespace(features=features))
        vgg = models.VGGFeatureExtractor({"relu1_2": 0.5, "conv2_2": 2.0}, weights="random")
    return vgg, features


@pytest.mark.parametrize("distance", ["mse", "l1"])
def test_perceptual_loss_matches_a_manual_computation(tiny_vgg, distance):
    vgg, features = tiny_vgg
    torch.manual_seed(1)
    sr_imgs = torch.rand(2, 3, 16, 16, requires_grad=True)
    hr_imgs = torch.rand(2, 3, 16, 16)
    value = train_srgan.perceptual_loss(vgg, sr_imgs, hr_imgs, distance)
    # By hand: ImageNet normalisation, then torchvision's layers up to relu1_2 (index 3, after the ReLU) and up to
    # conv2_2 (index 7, before its ReLU), each run from the image.
    mean_, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    distance_function = {"mse": lambda a, b: ((a - b) ** 2).mean(), "l1": lambda a, b: (a - b).abs().mean()}[distance]
    with torch.no_grad():
        sr, hr = (sr_imgs - mean_) / std, (hr_imgs - mean_) / std
        expected = (0.5 * distance_function(features[:4](sr.clone()), features[:4](hr.clone()))
                    + 2.0 * distance_function(features[:8](sr.clone()), features[:8](hr.clone())))
    assert isinstance(features[7], nn.Conv2d) and isinstance(features[3], nn.ReLU)
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)
    # Gradients reach the SR images, never VGG's weights.
    value.backward()
    assert sr_imgs.grad.abs().sum() > 0 and all(p.grad is None for p in vgg.parameters())
    assert train_srgan.perceptual_loss(vgg, hr_imgs, hr_imgs, distance).item() == 0
    with pytest.raises(ValueError, match="perceptual_loss"):
        train_srgan.perceptual_loss(vgg, sr_imgs, hr_imgs, "ssim")


# ------------------------------------------------------------------------------------------------------
# The recipes and the hyperparameter command line
# ------------------------------------------------------------------------------------------------------
def srgan_hyperparameters(*argv):
    argv = list(argv)
    return vars(cli.parse_hyperparameters(train_srgan.apply_recipe(train_srgan.hyperparameters, argv), "", argv=argv,
                                            aliases=train_srgan.RENAMED))


COMMON = dict(learning_rate=1e-4, batch_size=16, perceptual_layer_weights=[1.0], degradation="bicubic",
              discriminator_arch="srgan", crop_size=96)
RECIPE_HYPERPARAMETERS = {
    "srgan": dict(COMMON, gan_type="vanilla", perceptual_layers=["relu5_4"], perceptual_loss="mse",
                  # perceptual_loss_weight: the paper's rescaling of the VGG features by 12.75
                  perceptual_loss_weight=1 / 12.75 ** 2, pixel_loss_weight=0.0, adversarial_loss_weight=1e-3,
                  iterations=200_000, learning_rate_milestones=[100_000], learning_rate_gamma=0.1, ema_decay=0.0),
    "esrgan": dict(COMMON, crop_size=128, gan_type="relativistic", perceptual_layers=["conv5_4"], perceptual_loss="l1",
                   perceptual_loss_weight=1.0, pixel_loss_weight=1e-2, adversarial_loss_weight=5e-3,
                   iterations=400_000, learning_rate_milestones=[50_000, 100_000, 200_000, 300_000],
                   learning_rate_gamma=0.5, ema_decay=0.999),
    "realesrgan": dict(COMMON, gan_type="vanilla", degradation="realesrgan", discriminator_arch="unet", crop_size=256,
                       perceptual_layers=["conv1_2", "conv2_2", "conv3_4", "conv4_4", "conv5_4"],
                       perceptual_layer_weights=[0.1, 0.1, 1.0, 1.0, 1.0], perceptual_loss="l1",
                       perceptual_loss_weight=1.0, pixel_loss_weight=1.0, adversarial_loss_weight=0.1,
                       iterations=400_000, learning_rate_milestones=[400_000], learning_rate_gamma=0.1,
                       ema_decay=0.999),
}


@pytest.mark.parametrize("recipe", sorted(RECIPE_HYPERPARAMETERS))
def test_each_recipe_sets_its_papers_hyperparameters(recipe):
    hp = srgan_hyperparameters("--recipe", recipe)
    assert hp["recipe"] == recipe
    assert {name: hp[name] for name in RECIPE_HYPERPARAMETERS[recipe]} == RECIPE_HYPERPARAMETERS[recipe]
    # A flag given explicitly wins over the recipe (either spelling of --recipe).
    hp = srgan_hyperparameters(f"--recipe={recipe}", "--pixel_loss_weight", "0.5", "--perceptual_layers", "relu2_2")
    assert hp["pixel_loss_weight"] == 0.5 and hp["perceptual_layers"] == ["relu2_2"]
    assert hp["adversarial_loss_weight"] == RECIPE_HYPERPARAMETERS[recipe]["adversarial_loss_weight"]


@pytest.mark.parametrize("recipe", sorted(RECIPE_HYPERPARAMETERS))
def test_a_random_vgg19_brings_its_own_perceptual_loss_in_every_recipe(recipe):
    """--vgg_weights random: five layers with L1 at weight 1 and the lattice loss, on top of the recipe; the rest of
    the recipe stays, and explicit flags still win."""
    hp = srgan_hyperparameters("--recipe", recipe, "--vgg_weights", "random")
    assert hp["perceptual_layers"] == ["conv1_2", "conv2_2", "conv3_4", "conv4_4", "conv5_4"]
    assert (hp["perceptual_layer_weights"], hp["perceptual_loss"]) == ([0.1, 0.1, 1.0, 1.0, 1.0], "l1")
    assert (hp["perceptual_loss_weight"], hp["lattice_loss_weight"]) == (1.0, 100.0)
    for name in ("gan_type", "crop_size", "adversarial_loss_weight", "pixel_loss_weight", "discriminator_arch"):
        assert hp[name] == RECIPE_HYPERPARAMETERS[recipe][name], name
    hp = srgan_hyperparameters("--recipe", recipe, "--vgg_weights=random", "--perceptual_layers", "relu5_4",
                               "--perceptual_layer_weights", "1", "--lattice_loss_weight", "0")
    assert (hp["perceptual_layers"], hp["lattice_loss_weight"], hp["perceptual_loss"]) == (["relu5_4"], 0.0, "l1")
    assert srgan_hyperparameters("--recipe", recipe)["lattice_loss_weight"] == 0.0  # ImageNet's VGG19: none


def test_unknown_recipe():
    with pytest.raises(ValueError, match="recipe must be one of"):
        srgan_hyperparameters("--recipe", "edsr")


def test_old_vgg_before_activation_flag_becomes_literal_layer_names(capsys):
    assert srgan_hyperparameters("--vgg_before_activation", "true")["perceptual_layers"] == ["conv5_4"]
    assert srgan_hyperparameters("--vgg_before_activation", "false")["perceptual_layers"] == ["relu5_4"]
    hp = srgan_hyperparameters("--recipe", "esrgan", "--vgg_before_activation", "false")
    assert hp["perceptual_layers"] == ["relu5_4"] and "vgg_before_activation" not in hp
    assert srgan_hyperparameters("--vgg_before_activation", "false", "--perceptual_layers", "conv1_2",
                                 "pool2")["perceptual_layers"] == ["relu1_2", "pool2"]
    assert capsys.readouterr().err.count("note: --vgg_before_activation is deprecated") == 4
    assert srgan_hyperparameters("--lr", "3e-4")["learning_rate"] == 3e-4
    assert "note: --lr is deprecated, use --learning_rate" in capsys.readouterr().err


@pytest.mark.parametrize("script", [train_srgan, train_srresnet], ids=["train_srgan", "train_srresnet"])
def test_help_text_comes_from_the_hyperparameter_comments(script, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [script.__file__, "--help"])
    with pytest.raises(SystemExit) as exit_info:
        script.main()
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    text = " ".join(out[out.index("options:"):].split())  # the flags (argparse wraps lines: single spaces)
    assert "--learning_rate LEARNING_RATE Adam's learning rate" in text
    assert "--crop_size CROP_SIZE side of the HR training crops" in text
    assert "(default: 96)" in text
    assert "--fused_adam true|false Adam's update as one fused kernel per step" in text  # from utils.py
    assert "--lr " not in text  # deprecated names work but are not advertised
    if script is train_srgan:
        # Comments of train_srgan.py, and of degradations.py for the degradation settings.
        assert ("--perceptual_layers [PERCEPTUAL_LAYERS ...] VGG19 feature maps of the perceptual loss: convX_Y is "
                "taken before its ReLU, reluX_Y after it (SRGAN: relu5_4) (default: ['relu5_4'])") in text
        assert "--jpeg_range [JPEG_RANGE ...] JPEG quality (default: [30, 95])" in text
        assert "--vgg_before_activation" not in text


@pytest.mark.parametrize("script", [train_srgan, train_srresnet], ids=["train_srgan", "train_srresnet"])
def test_help_lists_every_hyperparameter_with_its_comment(script, monkeypatch, capsys):
    """Every hyperparameter of the script's block (and of the degradation settings it adds) is a flag in --help, and
    each has a help text: the comment of its line, with any '#   ' continuation lines."""
    comments = cli.help_texts([script.__file__, degradations.__file__], script.hyperparameters)
    assert set(comments) == set(script.hyperparameters), set(script.hyperparameters) - set(comments)
    monkeypatch.setattr(sys, "argv", [script.__file__, "--help"])
    with pytest.raises(SystemExit):
        script.main()
    text = capsys.readouterr().out
    squeezed = "".join(text.split())  # argparse wraps the help, at spaces and after hyphens
    for name, comment in comments.items():
        assert f"--{name} " in text and "".join(comment.split()).replace("%%", "%") in squeezed, name
    # A wrapped comment is one help text: the continuation line is in it, not lost.
    assert "(Real-ESRGAN: 180; at least batch_size; 0: off)" in comments["queue_size"]


def test_vgg_pooling_auto_is_average_for_a_random_vgg_and_max_for_imagenet():
    """--vgg_pooling auto: the ImageNet VGG19 keeps its own max-pooling; a random one gets average pooling (with max
    it teaches the generator a grid, docs/training.md)."""
    for weights, pooling, expected in [("imagenet", "auto", "max"), ("vgg19-dcbb9e9d.pth", "auto", "max"),
                                       ("random", "auto", "avg"), ("random", "max", "max"), ("imagenet", "avg", "avg")]:
        hp = SimpleNamespace(vgg_weights=weights, vgg_pooling=pooling)
        assert train_srgan.vgg_pooling(hp) == expected


def test_lattice_loss_sees_a_fixed_pattern_and_nothing_else():
    """lattice_loss: 0 for SR = HR and for a shift of the whole image; a fixed 4x4 pattern added to SR gives the mean
    square of that pattern (its mean removed), computed here by hand, position by position."""
    torch.manual_seed(0)
    hr_imgs = torch.rand(2, 3, 16, 12)
    assert train_srgan.lattice_loss(hr_imgs, hr_imgs, 4) == 0
    assert train_srgan.lattice_loss(hr_imgs + 0.1, hr_imgs, 4) < 1e-12
    pattern = torch.rand(4, 4)
    sr_imgs = hr_imgs + pattern.repeat(4, 3)                                   # (2, 3, 16, 12): tiled 4 x 3 times
    by_hand = sum(float(pattern[a, b] - pattern.mean()) ** 2 for a in range(4) for b in range(4)) / 16
    assert float(train_srgan.lattice_loss(sr_imgs, hr_imgs, 4)) == pytest.approx(by_hand, rel=1e-5)
    # Descending it removes the pattern from every pixel of its phase alike.
    sr = sr_imgs.clone().requires_grad_(True)
    train_srgan.lattice_loss(sr, hr_imgs, 4).backward()
    step = -sr.grad[0, 0, :4, :4]
    assert torch.allclose(step / step.abs().max(), -(pattern - pattern.mean()) / (pattern - pattern.mean()).abs().max(),
                          atol=1e-5)
    assert torch.equal(sr.grad[..., :4, :4], sr.grad[..., 4:8, 8:12])



def test_artifact_loss_by_hand():
    """artifact_loss (LDL): the map is each pixel's unbiased residual variance over its 7x7 window (reflect-padded),
    times the image's residual variance^(1/5), and 0 where the EMA is farther from HR than SR; computed here with
    unfold, pixel by pixel. A noisy SR weighs more than a smooth one that is as far from HR, and the map carries
    no gradient."""
    torch.manual_seed(0)
    hr_imgs = torch.rand(2, 3, 12, 10)
    sr_imgs = hr_imgs + 0.1 * torch.randn(2, 3, 12, 10)
    ema_sr_imgs = hr_imgs + 0.1 * torch.randn(2, 3, 12, 10)
    residual = (hr_imgs - sr_imgs).abs().sum(1, keepdim=True)
    ema_residual = (hr_imgs - ema_sr_imgs).abs().sum(1, keepdim=True)
    windows = torch.nn.functional.pad(residual, [3] * 4, mode="reflect").unfold(2, 7, 1).unfold(3, 7, 1)
    local = windows.reshape(2, 1, 12, 10, 49).var(dim=-1, unbiased=True)  # (2, 1, 12, 10)
    artifact_map = residual.var(dim=(1, 2, 3), keepdim=True) ** 0.2 * local * (residual >= ema_residual)
    by_hand = (artifact_map * (sr_imgs - hr_imgs)).abs().mean()
    sr = sr_imgs.clone().requires_grad_(True)
    loss = train_srgan.artifact_loss(sr, ema_sr_imgs, hr_imgs)
    assert loss.item() == pytest.approx(float(by_hand), rel=1e-5)
    loss.backward()
    by_hand_grad = artifact_map * torch.sign(artifact_map * (sr_imgs - hr_imgs)) / sr.numel()
    assert torch.allclose(sr.grad, by_hand_grad, atol=1e-9)
    assert 0 < int((artifact_map == 0).sum()) < artifact_map.numel()  # the EMA's test drops some pixels, not all
    # As far from HR (the same mean absolute residual) but smooth: no local variance, no loss.
    smooth = hr_imgs + residual.mean() / 3
    assert float(train_srgan.artifact_loss(smooth, hr_imgs + 1.0, hr_imgs)) < 1e-10


def test_artifact_loss_needs_the_ema():
    with pytest.raises(ValueError, match="--ema_decay"):
        argv = ["--artifact_loss_weight", "1", "--ema_decay", "0"]
        train_srgan.check_hyperparameters(cli.parse_hyperparameters(
            train_srgan.apply_recipe(train_srgan.hyperparameters, argv), "", argv=argv, aliases=train_srgan.RENAMED))
