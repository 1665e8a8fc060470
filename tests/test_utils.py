"""Tests of utils.py: conversions, image loading, atomic writes, checkpoints, generators and tiled inference, seeds,
the command line (hyperparameters and deprecated flags) and the training bookkeeping."""
import argparse
import contextlib
import errno
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data
from torch import nn

import checkpoints
import cli
import inference
import models
import training
import training_log
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
def test_load_image_refuses_floating_point_images(tmp_path):
    """A 32-bit float image (mode 'F', e.g. a float TIFF in [0, 1]) has no known range: converting it to RGB would
    clip it to near-black (and a test set of such images would score infinite PSNR). Refused, except by callers that
    keep the file's own mode (mode=None: super_resolve.py says the same itself)."""
    Image.fromarray(np.full((6, 5), 0.5, np.float32)).save(tmp_path / "float.tiff")
    for mode in ("RGB", ("RGB", "L"), "L"):
        with pytest.raises(ValueError, match=r"float.tiff.*floating-point.*mode 'F'"):
            utils.load_image(tmp_path / "float.tiff", mode=mode)
    assert utils.load_image(tmp_path / "float.tiff", mode=None).mode == "F"


def test_an_image_deleted_while_it_is_loaded_is_not_found_not_a_folder(tmp_path, monkeypatch):
    """A file removed right after load_image first looks at it (a training image deleted while a run reads it) is
    reported as not found, not as a folder or a corrupt image."""
    photo = tmp_path / "photo.png"
    random_pil(8, 8).save(photo)

    real_exists = Path.exists

    def then_deleted(check):  # the real check, after which the file is gone
        def checked(path):
            result = check(path)
            if path == photo and real_exists(photo):
                photo.unlink()
            return result
        return checked

    monkeypatch.setattr(Path, "is_file", then_deleted(Path.is_file))
    monkeypatch.setattr(Path, "exists", then_deleted(Path.exists))
    with pytest.raises(FileNotFoundError, match="Image not found"):
        utils.load_image(photo)


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


def test_load_image_scales_16bit_grey_to_8_bits_instead_of_clipping(tmp_path):
    # Every 8-bit level v stored as 16 bits (v * 257: 255 -> 65535) must come back as v, in every mode asked for.
    levels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    Image.fromarray(levels.astype(np.uint16) * 257).save(tmp_path / "grey16.png")
    assert Image.open(tmp_path / "grey16.png").mode == "I;16"
    np.testing.assert_array_equal(np.asarray(utils.load_image(tmp_path / "grey16.png")), np.repeat(
        levels[..., None], 3, axis=2))
    grey = utils.load_image(tmp_path / "grey16.png", mode=("RGB", "L"))  # grey stays grey
    assert grey.mode == "L"
    np.testing.assert_array_equal(np.asarray(grey), levels)
    assert utils.load_image(tmp_path / "grey16.png", mode=None).mode == "I;16"  # the 16 bits, for super_resolve.py
    # A 32-bit integer image beyond 16 bits is refused, not clipped.
    Image.fromarray(np.full((4, 4), 70000, np.int32)).save(tmp_path / "int32.tiff")
    with pytest.raises(ValueError, match="outside 0..65535"):
        utils.load_image(tmp_path / "int32.tiff")


def test_load_image_says_when_only_the_first_frame_is_used(tmp_path):
    frames = [Image.new("RGB", (6, 4), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "animated.gif", save_all=True, append_images=frames[1:])
    with pytest.warns(UserWarning, match="animated.gif is animated \\(2 frames\\); only its first frame is used"):
        img = utils.load_image(tmp_path / "animated.gif")
    assert img.getpixel((0, 0)) == (255, 0, 0)


def test_load_image_decompression_bomb_message_fits_any_script(tmp_path, monkeypatch):
    Image.new("L", (40, 40)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 1600 pixels is then over twice Pillow's limit
    with pytest.raises(ValueError, match="big.png.*exceeds limit.*split it into parts") as error:
        utils.load_image(tmp_path / "big.png")
    assert "data list" not in str(error.value)


# ------------------------------------------------------------------------------------------------------
# Checkpoints
# ------------------------------------------------------------------------------------------------------
def test_checkpoint_round_trip_and_kind_check(tmp_path):
    path = tmp_path / "ckpt.pth"
    state = dict(kind="srresnet", generator={"w": torch.arange(3.0)}, iteration=7, hyperparameters={"lr": 1e-4})
    checkpoints.save_checkpoint(state, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pth"]  # the temporary file was renamed
    loaded = checkpoints.load_checkpoint(path, expected_kind="srresnet")
    assert loaded["iteration"] == 7 and torch.equal(loaded["generator"]["w"], torch.arange(3.0))
    with pytest.raises(ValueError, match="written by train_srresnet.py, but a checkpoint of train_srgan.py"):
        checkpoints.load_checkpoint(path, expected_kind="srgan")


def test_a_checkpoint_that_cannot_be_written_says_why(tmp_path, monkeypatch):
    """save_checkpoint on a full disk: which file, why, the previous file intact, no partial file left; torch's own
    short-write error (it names no reason) is reported with the free space; other errors pass through unchanged."""
    path = tmp_path / "ckpt.pth"
    checkpoints.save_checkpoint({"iteration": 1}, path)
    for error, reason in ((OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), "No space left on device"),
                          (RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"),
                           "the disk is full (0.5 MB free)")):
        def failing_save(obj, file, error=error):
            file.write(b"\0" * 1000)
            raise error

        with monkeypatch.context() as patch:
            patch.setattr(torch, "save", failing_save)
            patch.setattr(checkpoints.shutil, "disk_usage", lambda folder: SimpleNamespace(free=2 ** 19))
            with pytest.raises(RuntimeError) as error_info:
                checkpoints.save_checkpoint({"iteration": 2}, path)
        assert str(error_info.value) == (f"Could not write {path}: {reason}; the previous ckpt.pth there is intact, "
                                         f"and no partial file is left.")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pth"]
        assert checkpoints.load_checkpoint(path)["iteration"] == 1

    def interrupted_save(obj, file):
        raise RuntimeError("DataLoader worker (pid 123) is killed by signal: Terminated.")

    monkeypatch.setattr(torch, "save", interrupted_save)
    with pytest.raises(RuntimeError, match=r"^DataLoader worker \(pid 123\)"):
        checkpoints.save_checkpoint({"iteration": 2}, path)


def test_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="Checkpoint not found"):
        checkpoints.load_checkpoint(tmp_path / "missing.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a PyTorch checkpoint"):
        checkpoints.load_checkpoint(junk)
    other = tmp_path / "other.pth"
    torch.save({"weights": torch.zeros(1)}, other)
    with pytest.raises(ValueError, match="not a checkpoint of this project"):
        checkpoints.load_checkpoint(other, expected_kind="srresnet")


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
        checkpoints.load_checkpoint(path)
    assert not marker.exists()


class _RunsACommand:
    """Unpickling this would run a shell command (os.system): torch blocks the whole module, with another message."""

    def __reduce__(self):
        return (os.system, ("true",))


def test_a_pickle_naming_a_blocked_module_is_refused_not_called_damaged(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"kind": "srresnet", "payload": _RunsACommand()}, path)
    with pytest.raises(ValueError, match=r"Refused to load .*evil.pth: it holds Python objects \((posix|nt)\.system\)"):
        checkpoints.load_checkpoint(path)


def test_save_checkpoint_keeps_the_old_file_if_saving_fails(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pth"
    checkpoints.save_checkpoint({"iteration": 1}, path)

    def failing_save(obj, file):
        file.write(b"half a file")
        raise KeyboardInterrupt  # e.g. Ctrl+C in the middle of writing

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(KeyboardInterrupt):
        checkpoints.save_checkpoint({"iteration": 2}, path)
    monkeypatch.undo()
    assert checkpoints.load_checkpoint(path)["iteration"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pth"]  # no temporary file left behind


# ------------------------------------------------------------------------------------------------------
# Atomic writes
# ------------------------------------------------------------------------------------------------------
def test_atomic_write_content_permissions_and_temporary_names(tmp_path, monkeypatch):
    names_seen = []

    def write(file):  # while it writes, the temporary file is the one new name in the folder
        names_seen.extend(name for name in os.listdir(tmp_path / "sub") if name != "out.txt")
        file.write(b"new content")

    (tmp_path / "out.txt").write_bytes(b"old content")
    utils.atomic_write(tmp_path / "sub" / "out.txt", write)  # the folder is created
    assert (tmp_path / "sub" / "out.txt").read_bytes() == b"new content"
    # The temporary file sat in the same folder, hidden, named after the file, unique: ".out.txt.<random>.tmp".
    assert len(names_seen) == 1 and names_seen[0].startswith(".out.txt.") and names_seen[0].endswith(".tmp")
    utils.atomic_write(tmp_path / "sub" / "out.txt", write)
    assert len(names_seen) == 2 and names_seen[0] != names_seen[1]
    # The usual permissions of a new file (0o666 minus the umask), not mkstemp's 0o600.
    old_umask = os.umask(0o022)
    try:
        utils.atomic_write(tmp_path / "sub" / "perm.txt", write)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE((tmp_path / "sub" / "perm.txt").stat().st_mode) == 0o644
    # The content is on the disk before the rename.
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    utils.atomic_write(tmp_path / "sub" / "synced.txt", lambda file: file.write(b"x"))
    assert len(synced) == 1


@pytest.mark.parametrize("error", [ValueError, KeyboardInterrupt])
def test_atomic_write_failure_keeps_the_old_file_and_leaves_nothing(tmp_path, error):
    (tmp_path / "out.txt").write_bytes(b"old content")

    def failing(file):
        file.write(b"half")
        raise error

    with pytest.raises(error):
        utils.atomic_write(tmp_path / "out.txt", failing)
    assert (tmp_path / "out.txt").read_bytes() == b"old content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_atomic_write_all_is_all_or_nothing(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"old a")

    def failing(file):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    # The system's refusal is one line (RuntimeError, which the scripts print as it is): which file, why, nothing lost.
    with pytest.raises(RuntimeError, match=r"^Could not write .*b\.txt: No space left on device; no earlier file was "
                                           r"replaced, and no partial file is left\.$"):
        utils.atomic_write_all({tmp_path / "a.txt": lambda file: file.write(b"new a"), tmp_path / "b.txt": failing})
    assert (tmp_path / "a.txt").read_bytes() == b"old a"  # the first file was not replaced either
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]
    utils.atomic_write_all({tmp_path / "a.txt": lambda file: file.write(b"new a"),
                            tmp_path / "b.txt": lambda file: file.write(b"new b")})
    assert (tmp_path / "a.txt").read_bytes() == b"new a" and (tmp_path / "b.txt").read_bytes() == b"new b"


def test_check_finite():
    training_log.check_finite(torch.tensor(1.0), 3, "ckpt.pth")
    with pytest.raises(RuntimeError, match="iteration 3.*ckpt.pth"):
        training_log.check_finite(torch.tensor(float("nan")), 3, "ckpt.pth")


def test_model_ema_moves_towards_the_weights():
    model = torch.nn.Linear(2, 1)
    ema = training.ModelEMA(model, decay=0.9)
    before = ema.module.weight.clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model, iteration=1000)  # past the warm-up: the decay itself
    torch.testing.assert_close(ema.module.weight, before + 0.1)
    assert not ema.module.weight.requires_grad


def test_model_ema_warms_up():
    """At iteration t the decay is min(decay, (1 + t) / (10 + t)): the first update takes 90% of the new weights,
    so a short run's average is not the random initial weights."""
    model = torch.nn.Linear(2, 1)
    ema = training.ModelEMA(model, decay=0.999)
    before = ema.module.weight.clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model, iteration=0)  # decay 1 / 10
    torch.testing.assert_close(ema.module.weight, before + 0.9)
    ema.update(model, iteration=90)  # decay 91 / 100: 9% of the remaining 0.1
    torch.testing.assert_close(ema.module.weight, before + 0.9 + 0.1 * 0.09)


class TinyNet(nn.Module):
    """conv3x3 - relu - conv3x3 - relu - conv3x3 (3 * s^2 channels) - pixel shuffle: receptive-field radius 3 LR px.

    Each 3x3 convolution widens the region an output pixel depends on by one pixel on each side, and the pixel
    shuffle only rearranges channels of one LR pixel, so an output pixel depends on LR pixels at most 3 away."""

    input_format = "[0, 1]"
    output_format = "[0, 1]"
    receptive_field_radius = 3

    def __init__(self, scaling_factor=2):
        super().__init__()
        self.scaling_factor = scaling_factor
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(8, 3 * scaling_factor ** 2, 3, padding=1),
                                  nn.PixelShuffle(scaling_factor))

    def forward(self, x):
        return torch.sigmoid(self.body(x))


def photo_01(height, width, dtype=torch.float32):
    """A crop of a real photo (scikit-image's astronaut), (1, 3, height, width) in [0, 1]."""
    pixels = data.astronaut()[:height, :width]
    return torch.from_numpy(pixels).permute(2, 0, 1)[None].to(dtype) / 255


# ------------------------------------------------------------------------------------------------------
# Running a generator: run_generator and the tiled inference.upscale
# ------------------------------------------------------------------------------------------------------

def test_tiled_equals_untiled_when_pad_covers_receptive_field():
    # float64, so that the only possible difference between the runs is the summation order of the convolutions
    # (different input sizes can make the CPU kernels block the sums differently): that is ~1e-16, while any
    # missing context shows up as ~1e-2. A 1e-12 tolerance therefore separates the two cases without ambiguity.
    torch.manual_seed(0)
    model = TinyNet(scaling_factor=2).double().eval()
    lr_img = photo_01(37, 53, torch.float64)  # sides not multiples of the tile: ragged last tiles
    with torch.no_grad():
        reference = model(lr_img)  # independent reference: the network on the whole image, no tiling code
    radius = TinyNet.receptive_field_radius
    for tile in (12, 20):
        tiled = inference.upscale(model, lr_img, tile=tile, tile_pad=radius)
        assert tiled.shape == (1, 3, 74, 106) and tiled.dtype == torch.float64
        assert (tiled - reference).abs().max() < 1e-12, f"tile {tile}"
    # And the test can fail: one pixel of context too few leaves visible seams.
    too_little = inference.upscale(model, lr_img, tile=16, tile_pad=radius - 1)
    assert (too_little - reference).abs().max() > 1e-4


def test_tiled_equals_untiled_for_pixel_unshuffle_rrdbnet():
    # x2 RRDBNet folds 2x2 pixel blocks into channels: tiles must start on even pixels, which upscale() ensures
    # even for an odd tile size and odd image sides (reflect-padded inside the model). Receptive field: 1 RRDB =
    # 15 convs + conv_first + conv_body = 17 unshuffled pixels, plus < 1 for the 4 convs after the upsampling,
    # i.e. 18 unshuffled = 36 LR pixels, +1 for the 2x2 block alignment: 40 covers it.
    torch.manual_seed(0)
    model = models.RRDBNet(scale=2, num_feat=8, num_block=1, num_grow_ch=4).double().eval()
    lr_img = photo_01(51, 69, torch.float64)
    with torch.no_grad():
        reference = model(lr_img)
    tiled = inference.upscale(model, lr_img, tile=31, tile_pad=40)  # tile rounded up to 32: 2 x 3 tiles
    assert tiled.shape == reference.shape == (1, 3, 102, 138)
    assert (tiled - reference.clamp(0, 1)).abs().max() < 1e-12


def test_default_tiling_psnr_on_real_photo():
    # With the default tile settings the image must really be split, so use an LR photo larger than one tile.
    torch.manual_seed(0)
    model = models.RRDBNet(scale=4, num_feat=8, num_block=2, num_grow_ch=4).eval()
    lr_img = photo_01(inference.DEFAULT_TILE + 40, inference.DEFAULT_TILE + 24)  # 2 x 2 tiles
    untiled = inference.upscale(model, lr_img, tile=0)
    tiled = inference.upscale(model, lr_img)  # default tile and tile_pad
    assert tiled.shape == untiled.shape == (1, 3, 4 * lr_img.shape[2], 4 * lr_img.shape[3])
    mse = torch.mean((tiled.double() - untiled.double()) ** 2).item()
    psnr = 10 * np.log10(1 / mse) if mse > 0 else float("inf")
    assert psnr >= 45, f"PSNR(tiled, untiled) = {psnr:.2f} dB"


def test_precision_modes_on_cpu():
    torch.manual_seed(0)
    model = TinyNet().eval()
    lr_img = photo_01(24, 24)
    fp32 = inference.upscale(model, lr_img, tile=0)
    bf16 = inference.upscale(model, lr_img, tile=0, precision="bf16")
    assert bf16.dtype == torch.float32 and 0 < (bf16 - fp32).abs().max() < 0.02  # bf16 ran, and is close
    with pytest.raises(ValueError, match="fp16.*CUDA"):
        inference.upscale(model, lr_img, precision="fp16")


def test_upscale_rejects_bad_arguments():
    model = TinyNet().eval()
    with pytest.raises(ValueError, match=r"\(1, C, H, W\)"):
        inference.upscale(model, photo_01(8, 8)[0])
    with pytest.raises(ValueError, match="tile"):
        inference.upscale(model, photo_01(8, 8), tile=-1)


def test_run_generator_converts_formats_and_keeps_no_gradients():
    torch.manual_seed(0)
    model = models.SRResNet(n_channels=8, n_blocks=1).eval()  # takes [0, 1], gives [-1, 1]
    lr_imgs = photo_01(6, 7).double()
    sr_imgs = inference.run_generator(model, lr_imgs)
    with torch.no_grad():
        expected = ((model(lr_imgs.float()) + 1) / 2).clamp(0, 1).double()
    assert sr_imgs.dtype == torch.float64 and not sr_imgs.requires_grad
    torch.testing.assert_close(sr_imgs, expected, atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------------------------------
# Random streams
# ------------------------------------------------------------------------------------------------------
def test_random_seeds_differ_across_purposes_iterations_and_ranks_and_are_reproducible():
    keys = [(seed, purpose, iteration, rank) for seed in (0, 1) for purpose in ("crop", "epoch_order", "degradation",
            "cutblur") for iteration in range(20) for rank in range(4)]
    seeds = [utils.random_seed(*key) for key in keys]
    assert len(set(seeds)) == len(keys)  # no two streams share a seed
    assert seeds == [utils.random_seed(*key) for key in keys]  # the same every time (and in every process)
    assert all(0 <= seed < 2 ** 63 for seed in seeds)
    # The collision of the arithmetic seeds (seed * 1000003 + iteration * 1009 + rank, + 1 for CutBlur): rank r's
    # CutBlur stream was rank r + 1's degradation stream. Not any more, and the streams themselves differ.
    assert utils.random_seed(0, "cutblur", 5, 0) != utils.random_seed(0, "degradation", 5, 1)
    draws = {(purpose, rank): torch.rand(8, generator=utils.make_rng(0, purpose, 5, rank))
             for purpose in ("degradation", "cutblur") for rank in (0, 1)}
    assert len({tuple(values.tolist()) for values in draws.values()}) == 4
    torch.testing.assert_close(torch.rand(8, generator=utils.make_rng(0, "cutblur", 5, 1)),
                               draws["cutblur", 1])


# ------------------------------------------------------------------------------------------------------
# Hyperparameters from the command line
# ------------------------------------------------------------------------------------------------------
def test_parse_hyperparameters_types_and_comments(tmp_path):
    script = tmp_path / "script.py"
    script.write_text("hp = dict(\n    lr=1e-4,  # Adam's learning rate\n    n_blocks=16,  # residual blocks\n)\n")
    defaults = dict(lr=1e-4, n_blocks=16, augment=False, milestones=[10, 20], checkpoint=None, arch="srresnet")
    hp = cli.parse_hyperparameters(defaults, "doc", script, argv=[])
    assert vars(hp) == defaults
    hp = cli.parse_hyperparameters(defaults, "doc", script, argv=[
        "--lr", "2e-4", "--n_blocks", "4", "--augment", "true", "--milestones", "5", "--checkpoint", "a.pth",
        "--arch", "rrdb"])
    assert vars(hp) == dict(lr=2e-4, n_blocks=4, augment=True, milestones=[5], checkpoint="a.pth", arch="rrdb")
    assert cli.parse_hyperparameters(defaults, "doc", script, argv=["--milestones"]).milestones == []


def test_deprecated_flags_still_work_and_say_what_replaced_them(capsys):
    defaults = dict(learning_rate=1e-4, learning_rate_milestones=[10], layers=["relu5_4"])
    aliases = {"lr": "learning_rate", "lr_milestones": "learning_rate_milestones",
               "before": cli.Renamed("layers", convert=lambda before, hp: [f"{before}:{name}" for name in hp["layers"]],
                                       example=False, note="name the layers instead")}
    hp = cli.parse_hyperparameters(defaults, "doc", argv=["--lr", "2e-4", "--lr_milestones", "5", "6"],
                                     aliases=aliases)
    assert vars(hp) == dict(learning_rate=2e-4, learning_rate_milestones=[5, 6], layers=["relu5_4"])
    err = capsys.readouterr().err.splitlines()
    assert err == ["note: --lr is deprecated, use --learning_rate",
                   "note: --lr_milestones is deprecated, use --learning_rate_milestones"]
    # A conversion sees the other hyperparameters after the whole command line is parsed, whatever the order.
    hp = cli.parse_hyperparameters(defaults, "doc", argv=["--before", "true", "--layers", "conv1_2"],
                                     aliases=aliases)
    assert hp.layers == ["True:conv1_2"] and not hasattr(hp, "deprecated_before")
    assert capsys.readouterr().err.strip() == "note: --before is deprecated, name the layers instead"
    # Nothing is said when the old flags are not used, and --help does not list them.
    assert vars(cli.parse_hyperparameters(defaults, "doc", argv=[], aliases=aliases)) == defaults
    with pytest.raises(SystemExit):
        cli.parse_hyperparameters(defaults, "doc", argv=["--help"], aliases=aliases)
    help_text = capsys.readouterr().out
    assert "--learning_rate" in help_text and "--lr " not in help_text and "--before" not in help_text
    # The hyperparameters saved in an older checkpoint are read under today's names.
    saved = dict(lr=1e-3, lr_milestones=[7], layers=["conv5_4"], before=False)
    assert cli.rename_hyperparameters(saved, aliases) == dict(learning_rate=1e-3, learning_rate_milestones=[7],
                                                                layers=["False:conv5_4"])


def test_parse_hyperparameters_tells_which_were_given():
    """hp.given: the hyperparameters set on the command line (an old flag counts for its new name), also when the
    value given is the default; kept out of vars(hp), which checkpoints store."""
    defaults = dict(learning_rate=1e-4, n_blocks=16, milestones=[10], checkpoint=None)
    hp = cli.parse_hyperparameters(defaults, "doc", argv=["--lr", "2e-4", "--n_blocks", "16"],
                                     aliases={"lr": "learning_rate"})
    assert hp.given == {"learning_rate", "n_blocks"} and vars(hp) == dict(defaults, learning_rate=2e-4)
    hp = cli.parse_hyperparameters(defaults, "doc", argv=[])
    assert hp.given == set() and vars(hp) == defaults
    converted = {"first_milestone": cli.Renamed("milestones", convert=lambda value, hp: [value], example=0)}
    hp = cli.parse_hyperparameters(defaults, "doc", argv=["--first_milestone", "5"], aliases=converted)
    assert hp.given == {"milestones"} and hp.milestones == [5]


def test_a_prefix_of_a_flag_is_not_taken_for_it(capsys):
    """--n_blocks must not silently set --n_blocks_d (the discriminator's) when the script has no --n_blocks."""
    with pytest.raises(SystemExit):
        cli.parse_hyperparameters(dict(n_blocks_d=8), "doc", argv=["--n_blocks", "2"])
    assert "unrecognized arguments: --n_blocks 2" in capsys.readouterr().err


def test_scaling_factor_argument_and_its_old_name(capsys):
    parser = argparse.ArgumentParser()
    cli.add_scaling_factor_argument(parser, default=4, choices=(2, 3, 4))
    assert parser.parse_args([]).scaling_factor == 4
    assert parser.parse_args(["--scaling_factor", "2"]).scaling_factor == 2
    assert capsys.readouterr().err == ""
    assert parser.parse_args(["--scale", "3"]).scaling_factor == 3
    assert capsys.readouterr().err.strip() == "note: --scale is deprecated, use --scaling_factor"
    with pytest.raises(SystemExit):
        parser.parse_args(["--scale", "5"])  # the old name is checked like the new one


# ------------------------------------------------------------------------------------------------------
# Training bookkeeping
# ------------------------------------------------------------------------------------------------------
def test_training_log_reports_the_means_and_checks_for_nan(tmp_path):
    hp = SimpleNamespace(iterations=7, output_folder=tmp_path)
    log = training_log.TrainingLog(["loss"], hp, 0, torch.device("cpu"), True, learning_rate=lambda: 0.5)
    for value in (1.0, 2.0, 6.0):
        log.add_losses(loss=torch.tensor(value))
    log.check_finite(3, None)
    log.report(3)  # the mean since the last report, the learning rate and the speed, on the progress bar
    assert log.progress.postfix.startswith("loss=3.0000, learning_rate=5.0e-01, it_per_s=")
    log.add_losses(loss=torch.tensor(float("nan")))
    log.add_losses(loss=torch.tensor(1.0))
    # A NaN loss is found at the next check, which names the iterations it happened between and the last good file.
    with pytest.raises(RuntimeError, match="between iterations 3 and 5.*kept at ckpt.pth"):
        log.check_finite(5, "ckpt.pth")
    log.progress.close()


def test_checkpoint_saver_names_the_last_good_checkpoint_and_lets_a_signal_wait(tmp_path, monkeypatch):
    hp = SimpleNamespace(iterations=7)
    stop_signal = SimpleNamespace(saving=contextlib.nullcontext)
    saved = []
    monkeypatch.setattr(checkpoints, "save_checkpoint", lambda state, path: saved.append(state["iteration"]))
    stateful = {"model": nn.Linear(2, 2)}
    save = training.CheckpointSaver("srresnet", tmp_path / "ckpt.pth", hp, stateful, True, stop_signal,
                                    resumed_from="old.pth")
    assert save.last_checkpoint == "old.pth"  # nothing saved yet: the checkpoint the run resumed from
    save(2)
    assert saved == [2] and save.last_checkpoint == tmp_path / "ckpt.pth" and save.saved_iteration == 2
    # Only the main process writes; the others just count the save.
    others = training.CheckpointSaver("srresnet", tmp_path / "ckpt.pth", hp, stateful, False, stop_signal)
    others(4)
    assert saved == [2] and others.saved_iteration == 4
    # A signal that arrives during a save lets it finish and asks to stop after it.
    monkeypatch.undo()
    exit_flag = training.GracefulExit()
    monkeypatch.setattr(checkpoints, "save_checkpoint", lambda state, path: exit_flag._handler(signal.SIGTERM, None))
    save = training.CheckpointSaver("srresnet", tmp_path / "ckpt.pth", hp, stateful, True, exit_flag)
    save(3)
    assert exit_flag.requested and save.saved_iteration == 3


@pytest.mark.parametrize("switch_at", [3, 6, 12])
def test_a_new_learning_rate_schedule_is_the_one_set_from_the_start(switch_at):
    """set_learning_rate_schedule, what a resumed run does with new learning-rate flags: from the switch on, the same
    learning rates as a MultiStepLR given the new schedule from the start (milestones already passed included)."""
    def scheduler(learning_rate, milestones, gamma):
        optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=learning_rate)
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma)

    def step(*schedulers):  # one training iteration: the optimiser's step, then the scheduler's
        for each in schedulers:
            each.optimizer.step()
            each.step()

    switched, reference = scheduler(1e-3, [4], 0.5), scheduler(1e-2, [5, 10], 0.1)
    for _ in range(switch_at):
        step(switched, reference)
    training.set_learning_rate_schedule(switched, 1e-2, [10, 5], 0.1)
    assert training.learning_rate_schedule(switched) == dict(learning_rate=1e-2, learning_rate_milestones=[5, 10],
                                                          learning_rate_gamma=0.1)
    for _ in range(10):
        assert switched.get_last_lr() == pytest.approx(reference.get_last_lr(), rel=1e-12)
        assert switched.optimizer.param_groups[0]["lr"] == pytest.approx(reference.get_last_lr()[0], rel=1e-12)
        step(switched, reference)
    # and it survives a checkpoint: a scheduler restored from its state dict goes on alike
    restored = scheduler(1.0, [], 1.0)
    restored.load_state_dict(switched.state_dict())
    restored.optimizer.load_state_dict(switched.optimizer.state_dict())
    step(restored, reference)
    assert restored.get_last_lr() == pytest.approx(reference.get_last_lr(), rel=1e-12)


def test_log_files_continue_a_resumed_run_with_each_iteration_once(tmp_path):
    """LogFiles: a resumed run drops what was logged after its checkpoint's iteration, in the JSON lines (a line cut
    short by a crash included) and as TensorBoard's reader shows it; a run from scratch starts both afresh."""
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    def tensorboard_scalars(tag):
        events = EventAccumulator(str(tmp_path / "tensorboard_srresnet"), size_guidance={SCALARS: 0})
        events.Reload()
        return [(event.step, event.value) for event in events.Scalars(tag)]

    log = training_log.LogFiles(tmp_path, "srresnet", 0)
    for iteration in range(1, 7):
        log.write({"iteration": iteration, "time": 100.0 + iteration, "losses": {"loss": float(iteration)}})
    log.write({"iteration": 6, "time": 106.5, "val": {"Set5": {"psnr": 30.5, "ssim": 0.875}}})
    log.close()
    with open(tmp_path / "log_srresnet.jsonl", "a") as file:
        file.write('{"iteration": 7, "ti')  # the process died in the middle of a line
    assert tensorboard_scalars("val/Set5/psnr") == [(6, 30.5)]  # a value's tag is its path in the record
    time.sleep(1)  # TensorBoard reads event files in the order of their names, which begin with the time in seconds
    log = training_log.LogFiles(tmp_path, "srresnet", 4)  # resumed from the checkpoint of iteration 4
    for iteration in (5, 6, 7):
        log.write({"iteration": iteration, "time": 200.0 + iteration, "losses": {"loss": -float(iteration)}})
    log.close()
    records = training_log.read_jsonl(tmp_path / "log_srresnet.jsonl")
    assert [(record["iteration"], record["losses"]["loss"]) for record in records] == [
        (1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0), (5, -5.0), (6, -6.0), (7, -7.0)]
    assert tensorboard_scalars("losses/loss") == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0), (5, -5.0), (6, -6.0),
                                                  (7, -7.0)]
    assert tensorboard_scalars("val/Set5/psnr") == []  # iteration 6's validation was after the checkpoint
    time.sleep(1)
    log = training_log.LogFiles(tmp_path, "srresnet", 0)  # a new run from scratch in the same folder
    log.write({"iteration": 1, "time": 300.0, "losses": {"loss": 9.0}})
    log.close()
    assert training_log.read_jsonl(tmp_path / "log_srresnet.jsonl") == [{"iteration": 1, "time": 300.0,
                                                                 "losses": {"loss": 9.0}}]
    assert tensorboard_scalars("losses/loss") == [(1, 9.0)]


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
    checkpoints.save_checkpoint(state, path)
    return state


def test_load_generator_prefers_ema_and_reads_official_files(tmp_path):
    import models

    kwargs = dict(num_feat=8, num_block=1, num_grow_ch=4, scale=4)
    state = _save_generator_checkpoint(tmp_path / "ours.pth", "rrdb", kwargs, seed=0, ema=True)
    model, description, reference = inference.load_generator(tmp_path / "ours.pth")
    assert isinstance(model, models.RRDBNet) and not model.training and "generator_ema" in description
    assert reference == "RRDB-PSNR"  # an RRDB trained by train_srresnet.py: ESRGAN's PSNR-oriented model
    assert torch.equal(model.state_dict()["conv_first.weight"], state["generator_ema"]["conv_first.weight"])
    # The same weights as a Real-ESRGAN file ('params_ema') load to the same network.
    torch.save({"params_ema": state["generator_ema"]}, tmp_path / "official.pth")
    official, _, reference = inference.load_generator(tmp_path / "official.pth")
    assert reference is None  # no published figures for a file of that name
    lr_imgs = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(official(lr_imgs), model(lr_imgs))
    torch.save({"something": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="no generator this project recognises"):
        inference.load_generator(tmp_path / "other.pth")
    # The scale check: a clear error naming both scales and the flag.
    with pytest.raises(ValueError, match=r"upscales x4, not x2.*--scaling_factor 4"):
        inference.load_generator(tmp_path / "ours.pth", scaling_factor=2)
    assert inference.load_generator(tmp_path / "ours.pth", scaling_factor=4)[0].scaling_factor == 4


def test_load_generator_raw_weights_expected_kind_and_safetensors(tmp_path):
    from safetensors.torch import save_file

    kwargs = dict(num_feat=8, num_block=1, num_grow_ch=4, scale=4)
    state = _save_generator_checkpoint(tmp_path / "ours.pth", "rrdb", kwargs, seed=0, ema=True, kind="srgan")
    weights = lambda model: model.state_dict()["conv_first.weight"]  # noqa: E731
    # ema=False: the raw weights of our checkpoints and of official files that hold both.
    raw, description, _ = inference.load_generator(tmp_path / "ours.pth", ema=False)
    assert torch.equal(weights(raw), state["generator"]["conv_first.weight"]) and "(generator weights)" in description
    torch.save({"params": state["generator"], "params_ema": state["generator_ema"]}, tmp_path / "official.pth")
    assert torch.equal(weights(inference.load_generator(tmp_path / "official.pth", ema=False)[0]),
                       state["generator"]["conv_first.weight"])
    assert torch.equal(weights(inference.load_generator(tmp_path / "official.pth")[0]),
                       state["generator_ema"]["conv_first.weight"])
    # expected_kind refuses our checkpoints of another script, and lets files without a script through.
    with pytest.raises(ValueError, match="written by train_srgan.py.*train_srresnet.py is needed"):
        inference.load_generator(tmp_path / "ours.pth", expected_kind="srresnet")
    assert inference.load_generator(tmp_path / "official.pth", expected_kind="srresnet")[0].generator_arch == "rrdb"
    # A .safetensors file: export.py's metadata says the architecture; without it, the key names do (official).
    save_file(state["generator_ema"], tmp_path / "bare.safetensors")
    model, description, _ = inference.load_generator(tmp_path / "bare.safetensors")
    assert torch.equal(weights(model), state["generator_ema"]["conv_first.weight"]) and "RRDBNet x4" in description
    save_file(state["generator"], tmp_path / "ours.safetensors",
              metadata={"generator_arch": "rrdb", "generator_kwargs": '{"num_feat": 8, "num_block": 1, '
                        '"num_grow_ch": 4, "scale": 4}', "weights": "params"})
    model, description, _ = inference.load_generator(tmp_path / "ours.safetensors")
    assert torch.equal(weights(model), state["generator"]["conv_first.weight"]) and "(params weights)" in description
    (tmp_path / "broken.safetensors").write_bytes(b"not a safetensors file" * 10)
    with pytest.raises(ValueError, match="not a safetensors file"):
        inference.load_generator(tmp_path / "broken.safetensors")
    with pytest.raises(ValueError, match="not a checkpoint of this project"):
        checkpoints.load_checkpoint(tmp_path / "ours.safetensors", expected_kind="srresnet")


def test_network_interpolation(tmp_path):
    kwargs = dict(n_channels=8, n_blocks=1, scaling_factor=2)
    psnr = _save_generator_checkpoint(tmp_path / "psnr.pth", "srresnet", kwargs, seed=1)["generator"]
    gan = _save_generator_checkpoint(tmp_path / "gan.pth", "srresnet", kwargs, seed=2, kind="srgan")["generator"]
    model, description = inference.load_interpolated_generator(tmp_path / "psnr.pth", tmp_path / "gan.pth", 0.25)
    blended = model.state_dict()
    assert blended.keys() == psnr.keys() and "conv_block1.conv_block.0.weight" in blended
    differing = [name for name, value in psnr.items() if not torch.equal(value, gan[name])]
    conv_weights = [name for name in psnr if name.endswith("conv_block.0.weight") or name.endswith("conv.weight")]
    assert len(conv_weights) >= 4 and set(conv_weights) <= set(differing)  # what the check below can see
    for name, value in psnr.items():
        if value.is_floating_point():  # every weight is the blend
            torch.testing.assert_close(blended[name], 0.75 * value + 0.25 * gan[name])
        else:  # integer buffers (batch-norm counters) keep the PSNR network's value
            assert torch.equal(blended[name], value)
    # A pixel-unshuffle variant differs in its first convolution only: skipped (and named) on request.
    _save_generator_checkpoint(tmp_path / "unshuffle.pth", "srresnet", {**kwargs, "unshuffle_scale": 2}, seed=3)
    with pytest.raises(ValueError, match="differ in .*conv_block1.conv_block.0.weight.*not the same network"):
        inference.load_interpolated_generator(tmp_path / "psnr.pth", tmp_path / "unshuffle.pth", 0.5)
    model, description = inference.load_interpolated_generator(tmp_path / "psnr.pth", tmp_path / "unshuffle.pth", 0.5,
                                                           skip_mismatched=True)
    assert "kept from" in description and "conv_block1.conv_block.0.weight" in description
    assert model.scaling_factor == 2
    # Different architectures cannot be blended at all.
    _save_generator_checkpoint(tmp_path / "rrdb.pth", "rrdb", dict(num_feat=8, num_block=1, num_grow_ch=4, scale=2),
                               seed=4)
    with pytest.raises(ValueError, match="share an architecture"):
        inference.load_interpolated_generator(tmp_path / "psnr.pth", tmp_path / "rrdb.pth", 0.5)


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_pil_to_tensor_is_torchvisions_to_tensor(mode):
    """The same numbers as torchvision's to_tensor (the independent reference), for colour and grey images."""
    import torchvision.transforms.functional as TF

    img = Image.fromarray(data.astronaut()[:37, :53]).convert(mode)
    assert torch.equal(utils.pil_to_tensor(img), TF.to_tensor(img))


def test_upscaling_and_evaluating_do_not_load_torchvision():
    """torchvision takes seconds to import; super_resolve.py and eval.py start without it (only the VGG19 of the
    perceptual loss needs it). Loading a shipped model draws no random numbers on the 'meta' device either (which
    would import torch's compiler, another second)."""
    code = ("import sys, super_resolve, eval, inference; inference.load_generator('compact'); "
            "inference.load_generator('srresnet'); "
            "assert 'torchvision' not in sys.modules, 'torchvision was imported'; "
            "assert 'torch._dynamo' not in sys.modules, 'torch._dynamo was imported'")
    result = subprocess.run([sys.executable, "-c", code], cwd=Path(utils.__file__).parent, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr[-500:]


def test_network_interpolation_across_scales_folds_the_first_convolution(tmp_path):
    """An x1 / x2 pixel-unshuffle model with the x4 model of the same network (RRDBNet here, as Real-ESRGAN's x2 and
    x4 models): the second model's first convolution is first folded to the first model's input
    (inference.refold_first_convolution: exactly the network it is, on the nearest-upscaled image), then every weight
    is blended; the result is the first model's network, its data's scale included, and the description says so."""
    kwargs = dict(num_feat=8, num_block=1, num_grow_ch=4)
    for scale in (1, 2):
        x1 = _save_generator_checkpoint(tmp_path / "small.pth", "rrdb", {**kwargs, "scale": scale}, seed=1)
        x1["hyperparameters"] = {"scaling_factor": 4}  # trained on x4 data
        checkpoints.save_checkpoint(x1, tmp_path / "small.pth")
        x4 = _save_generator_checkpoint(tmp_path / "x4.pth", "rrdb", {**kwargs, "scale": 4}, seed=2)["generator"]
        model, description = inference.load_interpolated_generator(tmp_path / "small.pth", tmp_path / "x4.pth", 0.3)
        assert (model.scaling_factor, model.data_scaling_factor) == (scale, 4)
        assert f"x{scale} with x4: the first convolution conv_first.weight of {tmp_path / 'x4.pth'} folded" in description
        blended = model.state_dict()
        r = 4 // scale
        folded = x4["conv_first.weight"].repeat_interleave(r * r, dim=1) / r ** 2  # (8, 3 r^2, 3, 3), by hand
        torch.testing.assert_close(blended["conv_first.weight"], 0.7 * x1["generator"]["conv_first.weight"] + 0.3 * folded)
        for name, value in x4.items():
            if name != "conv_first.weight":
                torch.testing.assert_close(blended[name], 0.7 * x1["generator"][name] + 0.3 * value)
    # And from the x4 side: the x1 / x2 model's first convolution unfolded (summed over each colour's r^2 channels).
    model, description = inference.load_interpolated_generator(tmp_path / "x4.pth", tmp_path / "small.pth", 0.5)
    unfolded = x1["generator"]["conv_first.weight"].reshape(8, 3, 4, 3, 3).sum(2)
    assert model.scaling_factor == 4
    torch.testing.assert_close(model.state_dict()["conv_first.weight"], 0.5 * x4["conv_first.weight"] + 0.5 * unfolded)


def test_load_weights_folding_first_convolution():
    kwargs = dict(n_channels=8, n_blocks=2)
    torch.manual_seed(0)
    x4 = models.build_generator("srresnet", **kwargs, scaling_factor=4)
    variant = models.pixel_unshuffle_variant("srresnet", x4.generator_kwargs, 4)
    assert variant == {**kwargs, "scaling_factor": 1,
                       "unshuffle_scale": 4}
    x1 = models.build_generator("srresnet", **variant)
    first = "conv_block1.conv_block.0.weight"
    assert inference.load_weights_folding_first_convolution(x1, x4) == [first]
    for name, value in x4.state_dict().items():
        expected = value.repeat_interleave(16, dim=1) / 16 if name == first else value
        assert torch.equal(x1.state_dict()[name], expected), name
    assert models.pixel_unshuffle_variant("rrdb", {"scale": 4, "num_feat": 8}, 2) == {"scale": 2, "num_feat": 8}
    with pytest.raises(ValueError, match="beyond the first convolution"):  # another body: refused in one line
        inference.load_weights_folding_first_convolution(x1, models.build_generator("srresnet", n_channels=8,
                                                                                    n_blocks=3))
    with pytest.raises(ValueError, match="no pixel-unshuffle variant"):
        models.pixel_unshuffle_variant("compact", {"upscale": 4}, 4)


def test_an_x1_model_runs_as_a_model_of_its_datas_scale(tmp_path):
    """load_generator reads the data's scaling factor from the checkpoint; fit_generator_to_data runs such a model on
    the LR image nearest-upscaled (every pixel repeated), keeps the generator's weights and modes, and upscale() tiles
    it like any x4 model."""
    kwargs = dict(n_channels=8, n_blocks=1, scaling_factor=1, unshuffle_scale=4)
    state = _save_generator_checkpoint(tmp_path / "x1.pth", "srresnet", kwargs, seed=0)
    assert inference.load_generator(tmp_path / "x1.pth")[0].data_scaling_factor == 1  # the file does not say
    state["hyperparameters"] = {"scaling_factor": 4}
    checkpoints.save_checkpoint(state, tmp_path / "x1.pth")
    model, _, _ = inference.load_generator(tmp_path / "x1.pth", scaling_factor=4)
    assert (model.scaling_factor, model.data_scaling_factor) == (1, 4)
    with pytest.raises(ValueError, match="upscales x1, trained on x4 data, not x2.*--scaling_factor 4"):
        inference.load_generator(tmp_path / "x1.pth", scaling_factor=2)
    matched, note = inference.fit_generator_to_data(model)
    assert note == ("an x1 network trained on x4 data: fed the LR image enlarged x4 with nearest neighbour, as in "
                    "training")
    assert (matched.scaling_factor, matched.input_format, matched.output_format) == (4, "[0, 1]", "[-1, 1]")
    assert inference.fit_generator_to_data(matched) == (matched, None)  # already an x4 model
    lr_imgs = torch.rand(2, 3, 5, 7)
    with torch.no_grad():
        expected = model(lr_imgs.repeat_interleave(4, dim=2).repeat_interleave(4, dim=3))
        assert torch.equal(matched(lr_imgs), expected)
    sr_imgs = inference.upscale(matched, lr_imgs[:1], tile=0)
    assert sr_imgs.shape == (1, 3, 20, 28)
    torch.testing.assert_close(sr_imgs, ((expected[:1] + 1) / 2).clamp(0, 1))
    assert inference.upscale(matched, lr_imgs[:1], tile=3, tile_pad=2).shape == (1, 3, 20, 28)
    # Wrapping a generator in training (validation does) leaves its mode alone; its weights are the same tensors.
    model.train()
    matched, _ = inference.fit_generator_to_data(model, 4)
    assert model.training and matched.generator is model and list(matched.parameters()) == list(model.parameters())


def test_atomic_write_without_overwrite_never_replaces_a_file_that_appears_meanwhile(tmp_path, monkeypatch):
    """overwrite=False publishes the file only if its name is free at that very moment (a hard link, which the system
    refuses over an existing name): a file another process wrote between a check and the rename is kept, whatever
    the timing, and nothing is left behind."""
    target = tmp_path / "photo_x4.png"

    def write_while_another_run_publishes(file):
        target.write_bytes(b"the other run's output")  # the other run wins the race
        file.write(b"ours")

    with pytest.raises(FileExistsError):
        utils.atomic_write(target, write_while_another_run_publishes, overwrite=False)
    assert target.read_bytes() == b"the other run's output"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photo_x4.png"]
    # A free name is written as atomic_write always writes (complete or not at all).
    utils.atomic_write(tmp_path / "free.png", lambda file: file.write(b"ours"), overwrite=False)
    assert (tmp_path / "free.png").read_bytes() == b"ours"
    # A file system without hard links: the name is claimed with O_CREAT | O_EXCL, then replaced by the content.
    monkeypatch.setattr(os, "link", lambda *args: (_ for _ in ()).throw(OSError(errno.EPERM, "no links here")))
    utils.atomic_write(tmp_path / "fat.png", lambda file: file.write(b"ours"), overwrite=False)
    assert (tmp_path / "fat.png").read_bytes() == b"ours"
    with pytest.raises(FileExistsError):
        utils.atomic_write(target, lambda file: file.write(b"ours"), overwrite=False)
    assert target.read_bytes() == b"the other run's output"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fat.png", "free.png", "photo_x4.png"]


def test_an_output_folder_that_is_a_file_is_one_line(tmp_path):
    (tmp_path / "afile").write_text("x")
    for folder in (tmp_path / "afile", tmp_path / "afile" / "sub"):
        with pytest.raises(ValueError, match=r"^The output folder .*afile.* is a file"):
            utils.check_output_folder(folder)
        # atomic_write says the same when a script did not check first
        with pytest.raises(RuntimeError, match=r"afile is a file, not a folder"):
            utils.atomic_write(folder / "out.png", lambda file: file.write(b"x"))
    utils.check_output_folder(tmp_path / "new" / "folder")  # missing folders are fine: they are created
    assert not (tmp_path / "new").exists()


def test_jpeg_sniffing_never_opens_a_fifo(tmp_path):
    """Opening a FIFO for reading waits for a writer forever: is_jpeg_file reads regular files only."""
    os.mkfifo(tmp_path / "pipe.jpg")
    result = subprocess.run([sys.executable, "-c", f"import utils; print(utils.is_jpeg_file({str(tmp_path / 'pipe.jpg')!r}))"],
                            cwd=Path(utils.__file__).parent, capture_output=True, text=True, timeout=20)
    assert result.stdout.strip() == "False", result.stderr
