"""Tests of utils.py's core helpers: conversions, image loading, crops, LR making, checkpoints, hyperparameters."""
import random

import numpy as np
import pytest
import torch
from PIL import Image

import utils


# ------------------------------------------------------------------------------------------------------
# convert_image
# ------------------------------------------------------------------------------------------------------
def random_pil(width=17, height=13, seed=0):
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def test_pil_round_trip_is_exact():
    img = random_pil()
    tensor = utils.convert_image(img, "pil", "[0, 1]")
    assert tensor.shape == (3, 13, 17) and tensor.min() >= 0 and tensor.max() <= 1
    assert np.array_equal(np.asarray(utils.convert_image(tensor, "[0, 1]", "pil")), np.asarray(img))


@pytest.mark.parametrize("target", ["[-1, 1]", "imagenet-norm"])
def test_float_round_trips(target):
    img = torch.rand(2, 3, 8, 9)
    there = utils.convert_image(img, "[0, 1]", target)
    back = utils.convert_image(there, target, "[0, 1]")
    torch.testing.assert_close(back, img)
    # and through PIL, single images: exact at 8 bits
    pil = utils.convert_image(there[0], target, "pil")
    assert np.array_equal(np.asarray(pil), (img[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))


def test_ranges_of_known_values():
    img = torch.tensor([0.0, 0.5, 1.0]).view(3, 1, 1)
    assert utils.convert_image(img, "[0, 1]", "[-1, 1]").flatten().tolist() == [-1.0, 0.0, 1.0]
    normed = utils.convert_image(img, "[0, 1]", "imagenet-norm").flatten()
    expected = [(0.0 - 0.485) / 0.229, (0.5 - 0.456) / 0.224, (1.0 - 0.406) / 0.225]
    assert normed.tolist() == pytest.approx(expected, rel=1e-6)


def test_going_to_8_bits_rounds_instead_of_truncating():
    # 100.6 / 255 must become 101, not 100 (truncation makes images darker by half a level on average).
    img = torch.full((3, 2, 2), 100.6 / 255)
    assert np.asarray(utils.convert_image(img, "[0, 1]", "pil")).max() == 101
    # out-of-range values (a tanh output is never exactly +-1, but float noise can exceed) are clipped
    img = torch.tensor([-0.2, 0.5, 1.3]).view(3, 1, 1)
    assert np.asarray(utils.convert_image(img, "[0, 1]", "pil")).flatten().tolist() == [0, 128, 255]


def test_y_channel_matches_matlab_rgb2ycbcr():
    # MATLAB: rgb2ycbcr(uint8([255 255 255])) gives Y = 235, black gives 16; pure red 81.481 (65.481 + 16).
    img = torch.tensor([[1.0, 0.0, 1.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]).view(3, 1, 3)
    y = utils.convert_image(img, "[0, 1]", "y-channel")
    assert y.shape == (1, 3)
    assert y.flatten().tolist() == pytest.approx([235.0, 16.0, 81.481], abs=1e-4)
    # batched: (N, 3, H, W) -> (N, H, W)
    assert utils.convert_image(torch.rand(2, 3, 4, 5), "[0, 1]", "y-channel").shape == (2, 4, 5)


def test_unknown_format_is_a_clear_error():
    with pytest.raises(ValueError, match="formats are"):
        utils.convert_image(torch.rand(3, 2, 2), "[0, 1]", "[0, 255]")


# ------------------------------------------------------------------------------------------------------
# load_image
# ------------------------------------------------------------------------------------------------------
def test_load_image_missing_corrupt_truncated(tmp_path):
    with pytest.raises(FileNotFoundError, match="Image not found"):
        utils.load_image(tmp_path / "nope.png")
    text = tmp_path / "text.png"
    text.write_text("this is not an image")
    with pytest.raises(ValueError, match="corrupt, truncated or not an image"):
        utils.load_image(text)
    good = tmp_path / "good.png"
    random_pil(64, 64).save(good)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    with pytest.raises(ValueError, match="truncated.png"):
        utils.load_image(truncated)


def test_load_image_converts_greyscale_and_applies_exif_orientation(tmp_path):
    Image.new("L", (5, 3), 77).save(tmp_path / "grey.png")
    img = utils.load_image(tmp_path / "grey.png")
    assert img.mode == "RGB" and img.size == (5, 3)
    assert utils.load_image(tmp_path / "grey.png", mode=None).mode == "L"
    # A photo stored 8x4 with EXIF orientation 6 (rotate 90 degrees clockwise to display) is 4x8 upright.
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (8, 4), (200, 10, 10)).save(tmp_path / "rotated.jpg", exif=exif)
    assert utils.load_image(tmp_path / "rotated.jpg").size == (4, 8)


# ------------------------------------------------------------------------------------------------------
# Crops, augmentation, LR images
# ------------------------------------------------------------------------------------------------------
def test_random_crop_reaches_every_position_including_the_edges():
    img = Image.fromarray(np.arange(10 * 12, dtype=np.uint8).reshape(10, 12))  # 12 wide, 10 high
    rng = random.Random(0)
    corners = set()
    for _ in range(400):
        crop = np.asarray(utils.random_crop(img, 8, rng))
        corners.add((int(crop[0, 0]) // 12, int(crop[0, 0]) % 12))  # (top, left) of the crop
    assert corners == {(top, left) for top in range(3) for left in range(5)}


def test_random_crop_of_an_image_exactly_the_crop_size_and_too_small():
    img = random_pil(96, 96)
    assert np.array_equal(np.asarray(utils.random_crop(img, 96, random.Random(1))), np.asarray(img))
    with pytest.raises(ValueError, match="min_size"):
        utils.random_crop(random_pil(95, 200), 96, random.Random(1))


def test_modcrop_keeps_the_top_left():
    img = random_pil(103, 77)
    cropped = utils.modcrop(img, 4)
    assert cropped.size == (100, 76)
    assert np.array_equal(np.asarray(cropped), np.asarray(img)[:76, :100])


def test_augment_gives_all_eight_symmetries():
    img = Image.fromarray(np.arange(9, dtype=np.uint8).reshape(3, 3))
    rng = random.Random(0)
    seen = {np.asarray(utils.augment(img, rng)).tobytes() for _ in range(200)}
    assert len(seen) == 8


@pytest.mark.parametrize("lr_maker", ["pil", "matlab"])
def test_make_lr_image_size(lr_maker):
    hr = random_pil(48, 36)
    lr = utils.make_lr_image(hr, 4, lr_maker)
    assert lr.size == (12, 9) and lr.mode == "RGB"


def test_make_lr_image_unknown_maker():
    with pytest.raises(ValueError, match="lr_maker"):
        utils.make_lr_image(random_pil(8, 8), 2, "lanczos")


# ------------------------------------------------------------------------------------------------------
# Checkpoints
# ------------------------------------------------------------------------------------------------------
def test_checkpoint_round_trip_and_kind_check(tmp_path):
    path = tmp_path / "ckpt.pth"
    state = dict(kind="srresnet", generator={"w": torch.arange(3.0)}, iteration=7, hyperparameters={"lr": 1e-4})
    utils.save_checkpoint(state, path)
    assert not (tmp_path / "ckpt.pth.tmp").exists()  # the temporary file was renamed
    loaded = utils.load_checkpoint(path, expected_kind="srresnet")
    assert loaded["iteration"] == 7 and torch.equal(loaded["generator"]["w"], torch.arange(3.0))
    with pytest.raises(ValueError, match="written by train_srresnet.py, but a checkpoint of train_srgan.py"):
        utils.load_checkpoint(path, expected_kind="srgan")


def test_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="Checkpoint not found"):
        utils.load_checkpoint(tmp_path / "missing.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a PyTorch checkpoint"):
        utils.load_checkpoint(junk)
    other = tmp_path / "other.pth"
    torch.save({"weights": torch.zeros(1)}, other)
    with pytest.raises(ValueError, match="not a checkpoint of this project"):
        utils.load_checkpoint(other, expected_kind="srresnet")


class _Exploit:
    """Unpickling this would create a file: a stand-in for code hidden in a malicious checkpoint."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.pth"
    torch.save({"kind": "srresnet", "payload": _Exploit(marker)}, path)
    with pytest.raises(ValueError, match="Refused to load"):
        utils.load_checkpoint(path)
    assert not marker.exists()


def test_save_checkpoint_keeps_the_old_file_if_saving_fails(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pth"
    utils.save_checkpoint({"iteration": 1}, path)

    def failing_save(obj, f):
        open(f, "wb").write(b"half a file")
        raise KeyboardInterrupt  # e.g. Ctrl+C in the middle of writing

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(KeyboardInterrupt):
        utils.save_checkpoint({"iteration": 2}, path)
    monkeypatch.undo()
    assert utils.load_checkpoint(path)["iteration"] == 1


def test_check_finite():
    utils.check_finite(torch.tensor(1.0), 3, "ckpt.pth")
    with pytest.raises(RuntimeError, match="iteration 3.*ckpt.pth"):
        utils.check_finite(torch.tensor(float("nan")), 3, "ckpt.pth")


def test_model_ema_moves_towards_the_weights():
    model = torch.nn.Linear(2, 1)
    ema = utils.ModelEMA(model, decay=0.9)
    before = ema.module.weight.clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    torch.testing.assert_close(ema.module.weight, before + 0.1)
    assert not ema.module.weight.requires_grad


# ------------------------------------------------------------------------------------------------------
# Hyperparameters from the command line
# ------------------------------------------------------------------------------------------------------
def test_parse_hyperparameters_types_and_comments(tmp_path):
    script = tmp_path / "script.py"
    script.write_text("hp = dict(\n    lr=1e-4,  # Adam's learning rate\n    n_blocks=16,  # residual blocks\n)\n")
    defaults = dict(lr=1e-4, n_blocks=16, augment=False, milestones=[10, 20], checkpoint=None, arch="srresnet")
    hp = utils.parse_hyperparameters(defaults, "doc", script, argv=[])
    assert vars(hp) == defaults
    hp = utils.parse_hyperparameters(defaults, "doc", script, argv=[
        "--lr", "2e-4", "--n_blocks", "4", "--augment", "true", "--milestones", "5", "--checkpoint", "a.pth",
        "--arch", "rrdb"])
    assert vars(hp) == dict(lr=2e-4, n_blocks=4, augment=True, milestones=[5], checkpoint="a.pth", arch="rrdb")
    assert utils.parse_hyperparameters(defaults, "doc", script, argv=["--milestones"]).milestones == []


# ------------------------------------------------------------------------------------------------------
# Loading generators for inference (our checkpoints, official files, interpolation)
# ------------------------------------------------------------------------------------------------------
def _save_generator_checkpoint(path, arch, kwargs, seed, kind="srresnet", ema=False):
    import models

    torch.manual_seed(seed)
    model = models.build_generator(arch, **kwargs)
    state = dict(kind=kind, generator_arch=arch, generator_kwargs=kwargs, generator=model.state_dict(), iteration=3)
    if ema:  # EMA weights differ from the raw ones: load_generator must prefer them
        torch.manual_seed(seed + 100)
        state["generator_ema"] = models.build_generator(arch, **kwargs).state_dict()
    utils.save_checkpoint(state, path)
    return state


def test_load_generator_prefers_ema_and_reads_official_files(tmp_path):
    import models

    kwargs = dict(num_feat=8, num_block=1, num_grow_ch=4, scale=4)
    state = _save_generator_checkpoint(tmp_path / "ours.pth", "rrdb", kwargs, seed=0, ema=True)
    model, description = utils.load_generator(tmp_path / "ours.pth")
    assert isinstance(model, models.RRDBNet) and not model.training and "generator_ema" in description
    assert torch.equal(model.state_dict()["conv_first.weight"], state["generator_ema"]["conv_first.weight"])
    # The same weights as a Real-ESRGAN file ('params_ema') load to the same network.
    torch.save({"params_ema": state["generator_ema"]}, tmp_path / "official.pth")
    official, _ = utils.load_generator(tmp_path / "official.pth")
    lr_imgs = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(official(lr_imgs), model(lr_imgs))
    torch.save({"something": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="no generator this project recognises"):
        utils.load_generator(tmp_path / "other.pth")


def test_network_interpolation(tmp_path):
    kwargs = dict(n_channels=8, n_blocks=1, scaling_factor=2)
    psnr = _save_generator_checkpoint(tmp_path / "psnr.pth", "srresnet", kwargs, seed=1)["generator"]
    gan = _save_generator_checkpoint(tmp_path / "gan.pth", "srresnet", kwargs, seed=2, kind="srgan")["generator"]
    model, description = utils.load_interpolated_generator(tmp_path / "psnr.pth", tmp_path / "gan.pth", 0.25)
    name = "conv_block1.conv.weight" if "conv_block1.conv.weight" in psnr else next(iter(psnr))
    torch.testing.assert_close(model.state_dict()[name], 0.75 * psnr[name] + 0.25 * gan[name])
    # A pixel-unshuffle variant differs in its first convolution only: skipped (and named) on request.
    _save_generator_checkpoint(tmp_path / "unshuffle.pth", "srresnet", {**kwargs, "scaling_factor": 4,
                                                                          "use_unshuffle": True}, seed=3)
    with pytest.raises(ValueError, match="different shapes"):
        utils.load_interpolated_generator(tmp_path / "psnr.pth", tmp_path / "unshuffle.pth", 0.5)
    model, description = utils.load_interpolated_generator(tmp_path / "psnr.pth", tmp_path / "unshuffle.pth", 0.5,
                                                           skip_mismatched=True)
    assert "kept from" in description and model.scaling_factor == 2
