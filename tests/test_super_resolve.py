"""Tests for super_resolve.py: real input files, the command line and the comparison grid (the tiled inference
itself, inference.upscale, is tested in test_utils.py).

Models used here are tiny so the whole file runs in well under a minute on 2 CPU cores:
  * NearestNet: nearest-neighbour upscaling with a '[-1, 1]' output, whose result we know exactly, for the file
    round trips (every pixel of the output can be checked, not just the size and mode);
  * small RRDBNet / SRResNet from models.py (random weights) for the CLI and the grid.
"""
import os
import resource
import signal
import subprocess
import sys
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageCms
from skimage import data
from torch import nn

import checkpoints
import inference
import metrics
import models
import super_resolve
import utils


class NearestNet(nn.Module):
    """Nearest-neighbour x s upscaling, giving [-1, 1] like SRResNet: the exact output is known for any input."""

    input_format = "[0, 1]"
    output_format = "[-1, 1]"

    def __init__(self, scaling_factor=2):
        super().__init__()
        self.scaling_factor = scaling_factor
        self.unused = nn.Parameter(torch.zeros(()))  # upscale() reads device and dtype from the parameters

    def forward(self, x):
        return F.interpolate(x, scale_factor=self.scaling_factor, mode="nearest") * 2 - 1


def nearest_upscale(array, scale):
    """The expected output of NearestNet for an (H, W) or (H, W, C) array, computed with numpy."""
    return array.repeat(scale, axis=0).repeat(scale, axis=1)


# ------------------------------------------------------------------------------------------------------
# Real input files: each kind round-trips with the right mode, size and pixels
# ------------------------------------------------------------------------------------------------------

def round_trip(path, scale=2):
    """read -> NearestNet -> PIL image, as the command line does."""
    return super_resolve.upscale_image(NearestNet(scale).eval(), super_resolve.read_image(path), tile=5, tile_pad=2)


def random_pixels(shape, seed=0, high=256, dtype=np.uint8):
    return np.random.default_rng(seed).integers(0, high, size=shape).astype(dtype)


def test_rgb_png_round_trip(tmp_path):
    pixels = random_pixels((9, 13, 3))
    Image.fromarray(pixels).save(tmp_path / "rgb.png")
    out = round_trip(tmp_path / "rgb.png")
    assert out.mode == "RGB" and out.size == (26, 18)
    np.testing.assert_array_equal(np.asarray(out), nearest_upscale(pixels, 2))


def test_exif_rotated_jpeg_is_upright(tmp_path):
    # A phone photo: pixels stored landscape (16 wide, 8 high) with EXIF orientation 6 ("rotate 90 clockwise").
    pixels = np.zeros((8, 16, 3), np.uint8)
    pixels[:, :8] = (255, 0, 0)  # left half red (stored)
    pixels[:, 8:] = (0, 0, 255)  # right half blue
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(tmp_path / "phone.jpg", exif=exif, quality=95)
    out = np.asarray(round_trip(tmp_path / "phone.jpg"))
    assert out.shape == (32, 16, 3)  # upright: 8 wide, 16 high, x2
    # Rotating 90 degrees clockwise puts the stored left (red) half on top.
    assert out[2, 8, 0] > 200 and out[2, 8, 2] < 60
    assert out[29, 8, 2] > 200 and out[29, 8, 0] < 60


def test_greyscale_round_trip(tmp_path):
    pixels = random_pixels((7, 11))
    Image.fromarray(pixels).save(tmp_path / "grey.png")
    out = round_trip(tmp_path / "grey.png", scale=4)
    assert out.mode == "L" and out.size == (44, 28)
    np.testing.assert_array_equal(np.asarray(out), nearest_upscale(pixels, 4))


def test_bilevel_image_becomes_greyscale(tmp_path):
    Image.fromarray(random_pixels((6, 6), high=2).astype(bool)).save(tmp_path / "bw.png")
    out = round_trip(tmp_path / "bw.png")
    assert out.mode == "L" and out.size == (12, 12) and set(np.unique(np.asarray(out))) <= {0, 255}


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_upscaled_separately(tmp_path, mode):
    channels = 4 if mode == "RGBA" else 2
    pixels = random_pixels((10, 12, channels))
    pixels[..., -1] = 0
    pixels[:, 6:, -1] = 255  # alpha: transparent left half, opaque right half (a hard edge)
    Image.fromarray(pixels, mode).save(tmp_path / "alpha.png")
    out = round_trip(tmp_path / "alpha.png")
    assert out.mode == mode and out.size == (24, 20)
    out = np.asarray(out)
    # The colour went through the network (NearestNet: exact); alpha through bicubic: flat parts stay exact.
    np.testing.assert_array_equal(out[..., :-1], nearest_upscale(pixels[..., :-1], 2))
    assert (out[:, :9, -1] == 0).all() and (out[:, 15:, -1] == 255).all()
    assert 0 < out[5, 12, -1] < 255  # the edge is interpolated, not copied


def test_palette_images(tmp_path):
    pixels = random_pixels((8, 8), high=3) + 1  # palette indices 1..3
    pixels[:, :4] = 0  # index 0 on the left half
    palette = [0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 12)
    opaque = Image.fromarray(pixels, "L").convert("P")
    opaque.putpalette(palette)
    opaque.save(tmp_path / "palette.png")
    out = round_trip(tmp_path / "palette.png")
    assert out.mode == "RGB" and out.size == (16, 16)
    colours = np.asarray(opaque.convert("RGB"))
    np.testing.assert_array_equal(np.asarray(out), nearest_upscale(colours, 2))

    opaque.save(tmp_path / "palette_transparent.png", transparency=0)  # palette index 0 is transparent
    out = round_trip(tmp_path / "palette_transparent.png")
    assert out.mode == "RGBA" and out.size == (16, 16)
    out = np.asarray(out)
    np.testing.assert_array_equal(out[..., :3], nearest_upscale(colours, 2))
    assert (out[:, :6, 3] == 0).all() and (out[:, 10:, 3] == 255).all()  # transparent left, opaque right


def test_16bit_greyscale_png_keeps_16_bits(tmp_path):
    pixels = random_pixels((6, 9), high=65536, dtype=np.uint16)
    pixels[0, 0], pixels[0, 1] = 1, 65535  # levels an 8-bit path could never reproduce / the extremes
    Image.fromarray(pixels).save(tmp_path / "grey16.png")
    assert Image.open(tmp_path / "grey16.png").mode == "I;16"
    out = round_trip(tmp_path / "grey16.png")
    out.save(tmp_path / "out16.png")
    reread = Image.open(tmp_path / "out16.png")
    assert reread.mode == "I;16" and reread.size == (18, 12)
    np.testing.assert_array_equal(np.asarray(reread), nearest_upscale(pixels, 2))


def _write_16bit_rgb_png(path, pixels):
    """A minimal 16-bit RGB PNG writer (Pillow cannot write one): signature, IHDR, one IDAT, IEND."""
    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    height, width, _ = pixels.shape
    rows = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(height))  # filter 0 per row
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def test_16bit_rgb_png_is_upscaled_at_8_bits_with_a_warning(tmp_path):
    pixels = random_pixels((5, 7, 3), high=65536, dtype=np.uint16)
    _write_16bit_rgb_png(tmp_path / "rgb16.png", pixels)
    with pytest.warns(UserWarning, match="16-bit"):
        out = round_trip(tmp_path / "rgb16.png")
    assert out.mode == "RGB" and out.size == (14, 10)
    np.testing.assert_array_equal(np.asarray(out), nearest_upscale((pixels >> 8).astype(np.uint8), 2))


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    Image.fromarray(random_pixels((8, 10, 3))).convert("CMYK").save(tmp_path / "cmyk.jpg")
    assert Image.open(tmp_path / "cmyk.jpg").mode == "CMYK"
    out = round_trip(tmp_path / "cmyk.jpg")
    assert out.mode == "RGB" and out.size == (20, 16)
    expected = np.asarray(Image.open(tmp_path / "cmyk.jpg").convert("RGB"))
    np.testing.assert_array_equal(np.asarray(out), nearest_upscale(expected, 2))


def test_float_images_are_refused(tmp_path):
    Image.fromarray(np.ones((4, 4), np.float32)).save(tmp_path / "float.tiff")
    with pytest.raises(ValueError, match="floating-point"):
        super_resolve.read_image(tmp_path / "float.tiff")


def test_outputs_are_rounded_not_truncated():
    levels = torch.tensor([0.0, 100.6, 100.4, 254.5, 255.0]) / 255  # 254.5 rounds half to even: 254
    out = super_resolve.to_pil(levels.reshape(1, 1, 5))
    assert np.asarray(out).tolist() == [[0, 101, 100, 254, 255]]
    out16 = super_resolve.to_pil((torch.tensor([1000.7]) / 65535).reshape(1, 1, 1), bits=16)
    assert out16.mode == "I;16" and np.asarray(out16).tolist() == [[1001]]


# ------------------------------------------------------------------------------------------------------
# Command line and grid
# ------------------------------------------------------------------------------------------------------

def save_tiny_checkpoint(path, arch, **kwargs):
    torch.manual_seed(0)
    generator = models.build_generator(arch, **kwargs)
    checkpoints.save_checkpoint({"kind": "srgan", "generator_arch": arch, "generator_kwargs": kwargs,
                           "generator": generator.state_dict(), "iteration": 1}, path)
    return path


def run_cli(*args):
    return subprocess.run([sys.executable, "super_resolve.py", *map(str, args), "--no_progress"],
                          cwd=Path(super_resolve.__file__).parent, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def tiny_rrdb(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "rrdb.pth", "rrdb",
                                num_feat=8, num_block=1, num_grow_ch=4)


def test_cli_folder_and_bad_inputs(tmp_path, tiny_rrdb):
    Image.fromarray(random_pixels((12, 10, 3))).save(tmp_path / "a.png")
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(random_pixels((9, 11, 4)), "RGBA").save(folder / "b.png")
    (folder / "notes.txt").write_text("not an image")  # inside a folder: skipped with a warning
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"this is not a png")  # given explicitly: a failure
    out_folder = tmp_path / "out"
    out_folder.mkdir()
    (out_folder / "broken_x4.png").write_bytes(b"an output from an earlier run")

    # Order: a good file, a broken one, a folder (processed after the failure), a missing file.
    result = run_cli(tmp_path / "a.png", bad, folder, tmp_path / "missing.png", "--model", tiny_rrdb,
                     "--output_folder", out_folder, "--tile", 4, "--tile_pad", 2)
    assert result.returncode == 1
    assert "skipping" in result.stderr and "notes.txt" in result.stderr
    assert "broken.png" in result.stderr and "missing.png" in result.stderr
    assert "2 of 4 input(s) failed" in result.stderr
    assert "Traceback" not in result.stderr
    # Good inputs were written with the right size and mode; nothing else was touched or left behind.
    with Image.open(out_folder / "a_x4.png") as a, Image.open(out_folder / "b_x4.png") as b:
        assert (a.mode, a.size, b.mode, b.size) == ("RGB", (40, 48), "RGBA", (44, 36))
    assert (out_folder / "broken_x4.png").read_bytes() == b"an output from an earlier run"
    assert sorted(p.name for p in out_folder.iterdir()) == ["a_x4.png", "b_x4.png", "broken_x4.png"]

    # The CLI's output is exactly what upscale() gives in-process (tiling included).
    model, _, _ = inference.load_generator(tiny_rrdb)
    expected = inference.upscale(model, photo_from_file(tmp_path / "a.png"), tile=4, tile_pad=2)
    np.testing.assert_array_equal(np.asarray(Image.open(out_folder / "a_x4.png")),
                                  np.asarray(utils.convert_image(expected[0], "[0, 1]", "pil")))


def photo_from_file(path):
    return utils.convert_image(Image.open(path).convert("RGB"), "pil", "[0, 1]")[None]


def test_cli_model_errors(tmp_path, tiny_rrdb, capsys):
    # In-process (main() returns the exit status) to save the seconds a new Python + torch costs per call.
    Image.fromarray(random_pixels((8, 8, 3))).save(tmp_path / "a.png")
    common = [str(tmp_path / "a.png"), "--no_progress", "--output_folder", str(tmp_path / "out")]
    assert super_resolve.main(common + ["--model", str(tmp_path / "nope.pth")]) == 1
    error = capsys.readouterr().err
    assert error.startswith("error:") and "nope.pth" in error and "Traceback" not in error
    assert super_resolve.main(common + ["--model", str(tiny_rrdb), "--scaling_factor", "2"]) == 1
    assert "x4, not x2" in capsys.readouterr().err
    # The old name of the flag still works, and says what replaced it.
    assert super_resolve.main(common + ["--model", str(tiny_rrdb), "--scale", "2"]) == 1
    error = capsys.readouterr().err
    assert "note: --scale is deprecated, use --scaling_factor" in error and "x4, not x2" in error
    assert super_resolve.main(common + ["--model", str(tiny_rrdb), "--precision", "fp16", "--device", "cpu"]) == 1
    assert "CUDA" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing written when the model cannot run


def _write_black_rgb_png(path, width, height):
    """A valid 8-bit RGB PNG of any size, all black: it compresses to almost nothing (9600 x 9600: 268 kB)."""
    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    compressor = zlib.compressobj(9)
    row = bytes(1 + 3 * width)  # filter byte 0, then black pixels
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", data) + chunk(b"IEND", b""))


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # (check_output_size called directly)
def test_an_output_too_large_for_memory_is_refused_before_decoding(tmp_path, tiny_rrdb, capsys, monkeypatch):
    # A 268 kB PNG of 9600 x 9600 pixels (under Pillow's refusal limit): at x4 its output would take ~35 GB.
    _write_black_rgb_png(tmp_path / "huge.png", 9600, 9600)
    Image.fromarray(random_pixels((8, 8, 3))).save(tmp_path / "small.png")
    decoded = []
    monkeypatch.setattr(super_resolve, "read_image", lambda path, read=super_resolve.read_image: decoded.append(
        Path(path).name) or read(path))
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB
    code = super_resolve.main([str(tmp_path / "huge.png"), str(tmp_path / "small.png"), "--model", str(tiny_rrdb),
                               "--output_folder", str(tmp_path / "out"), "--no_progress"])
    error = capsys.readouterr().err
    assert code == 1 and decoded == ["small.png"]  # the huge image was never decoded; the next one was upscaled
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before < 500_000  # nothing big was allocated
    assert "38400x38400 (1,475 megapixels), which needs about 35.4 GB of memory" in error, error
    assert "--max_output_megapixels 500" in error and "decompression bomb" not in error
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["small_x4.png"]
    # A larger limit (or none) lets it through; an alpha channel needs more memory.
    assert super_resolve.check_output_size(tmp_path / "huge.png", 4, 2000) is None
    assert super_resolve.check_output_size(tmp_path / "huge.png", 4, 0) is None
    Image.new("RGBA", (600, 500)).save(tmp_path / "alpha.png")
    with pytest.raises(ValueError, match=r"2400x2000 \(5 megapixels\), which needs about 0.2 GB"):
        super_resolve.check_output_size(tmp_path / "alpha.png", 4, 1)
    # An image beyond Pillow's own limit gets a message for this script, not one about data lists.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ValueError, match="split the image into parts") as refused:
        super_resolve.check_output_size(tmp_path / "huge.png", 4, 500)
    assert "data list" not in str(refused.value)


def test_output_folder_that_is_also_the_input_folder_skips_our_outputs(tmp_path, tiny_rrdb, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(random_pixels((8, 10, 3))).save(folder / "a.png")
    args = [str(folder), "--model", str(tiny_rrdb), "--output_folder", str(folder), "--no_progress", "--overwrite"]
    for run in range(3):  # each run must find a.png only, never a_x4.png (which would give a_x4_x4.png, x16)
        assert super_resolve.main(args) == 0
        error = capsys.readouterr().err
        assert ("skipping 1 file(s)" in error and "a_x4.png" in error) == (run > 0), error
    assert sorted(p.name for p in folder.iterdir()) == ["a.png", "a_x4.png"]
    # Given by name, an output is upscaled again (explicit files are always used), and another folder keeps them all.
    assert super_resolve.main([str(folder / "a_x4.png")] + args[1:]) == 0
    assert (folder / "a_x4_x4.png").is_file()
    assert [path.name for path, _ in super_resolve.find_inputs([folder], tmp_path / "elsewhere")] == [
        "a.png", "a_x4.png", "a_x4_x4.png"]


def test_comparison_grid(tmp_path, tiny_rrdb, monkeypatch):
    srresnet = save_tiny_checkpoint(tmp_path / "srresnet.pth", "srresnet", n_channels=8, n_blocks=1)
    # Every label's PSNR is eval.py's: the standard protocol of metrics.evaluate_pair, against the HR image.
    measured = []
    evaluate_pair = metrics.evaluate_pair
    monkeypatch.setattr(metrics, "evaluate_pair", lambda sr, hr, s, *args: measured.append((sr, hr, s, args))
                        or evaluate_pair(sr, hr, s, *args))
    hr = np.asarray(Image.fromarray(data.astronaut()).resize((66, 50)))  # not a multiple of 4: mod-cropped
    Image.fromarray(hr).save(tmp_path / "hr.png")
    assert super_resolve.main(["--grid", str(tmp_path / "hr.png"), "--model", str(srresnet), str(tiny_rrdb),
                               "--output_folder", str(tmp_path), "--no_progress"]) == 0
    grid = np.asarray(Image.open(tmp_path / "hr_grid_x4.png"))
    # Four 64x48 panels side by side under a label strip; the first panel is the (mod-cropped) HR image.
    label_height = grid.shape[0] - 48
    assert label_height > 0 and grid.shape[1] >= 4 * 64 and grid.shape[2] == 3
    np.testing.assert_array_equal(grid[label_height:, :64], hr[:48, :64])
    assert (grid[:label_height] < 128).any()  # some label text was drawn
    assert len(measured) == 3 and all(s == 4 and args == () for _, _, s, args in measured)  # bicubic + 2 models
    np.testing.assert_array_equal(measured[0][1], hr[:48, :64])
    # The bicubic panel is MATLAB's imresize of the LR image, as eval.py's bicubic baseline.
    expected_bicubic = metrics.imresize(metrics.imresize(hr[:48, :64], scale=1 / 4), scale=4)
    np.testing.assert_array_equal(measured[0][0], expected_bicubic)
    np.testing.assert_array_equal(grid[label_height:, 64 + max(4, 64 // 64):][:, :64], expected_bicubic)

    # Models of different scales cannot share a grid.
    x2 = models.RRDBNet(scale=2, num_feat=8, num_block=1, num_grow_ch=4).eval()
    with pytest.raises(ValueError, match="one scale"):
        super_resolve.comparison_grid(Image.fromarray(hr), [(x2, "x2"), (NearestNet(4).eval(), "x4")])


# ------------------------------------------------------------------------------------------------------
# Any output scale (--outscale)
# ------------------------------------------------------------------------------------------------------

def pillow_bicubic(planes, size):
    """An independent reference for resize_to_outscale: Pillow's bicubic (Keys' a = -0.5, widened when shrinking,
    pixel centres aligned, as MATLAB's) on each float plane of an (H, W, C) array in [0, 1], clipped to [0, 1] (bicubic
    overshoots next to edges); `size` is (width, height)."""
    return np.stack([np.asarray(Image.fromarray(planes[..., c].astype(np.float32), "F").resize(
        size, Image.Resampling.BICUBIC)) for c in range(planes.shape[-1])], axis=-1).clip(0, 1)


@pytest.mark.parametrize("outscale", [3.5, 2.5, 2.25, 1.3, 6.0])
def test_outscale_gives_any_size_through_the_networks_own_scale(tmp_path, outscale):
    pixels = random_pixels((9, 13, 3))
    Image.fromarray(pixels).save(tmp_path / "rgb.png")
    out = super_resolve.upscale_image(NearestNet(4).eval(), super_resolve.read_image(tmp_path / "rgb.png"), tile=5,
                                      tile_pad=2, outscale=outscale)
    # round(side x outscale), halves up: 13 x 2.5 = 32.5 -> 33, 9 x 2.5 = 22.5 -> 23.
    expected_size = (int(np.floor(13 * outscale + 0.5)), int(np.floor(9 * outscale + 0.5)))
    assert out.mode == "RGB" and out.size == expected_size
    # The x4 network's output (NearestNet: exactly the nearest x4 upscale) resized to that size: away from the
    # borders (where the two filters pad differently) it is Pillow's bicubic of it, to the 8-bit level.
    reference = pillow_bicubic(nearest_upscale(pixels, 4) / 255, expected_size) * 255
    difference = np.abs(np.asarray(out).astype(np.float64) - reference)[4:-4, 4:-4]
    assert difference.max() <= 0.5 + 1e-3


def test_outscale_keeps_alpha_and_16_bits(tmp_path):
    pixels = random_pixels((10, 12, 4))
    pixels[..., -1] = 0
    pixels[:, 6:, -1] = 255
    Image.fromarray(pixels, "RGBA").save(tmp_path / "alpha.png")
    out = super_resolve.upscale_image(NearestNet(4).eval(), super_resolve.read_image(tmp_path / "alpha.png"),
                                      outscale=2.5)
    assert out.mode == "RGBA" and out.size == (30, 25)
    assert (np.asarray(out)[:, :10, -1] == 0).all() and (np.asarray(out)[:, 20:, -1] == 255).all()

    grey = random_pixels((6, 9), high=65536, dtype=np.uint16)
    Image.fromarray(grey).save(tmp_path / "grey16.png")
    out = super_resolve.upscale_image(NearestNet(4).eval(), super_resolve.read_image(tmp_path / "grey16.png"),
                                      outscale=3.5)
    out.save(tmp_path / "out16.png")
    reread = np.asarray(Image.open(tmp_path / "out16.png")).astype(np.float64)
    assert Image.open(tmp_path / "out16.png").mode == "I;16" and reread.shape == (21, 32)
    # Resized at full precision: 16-bit levels, within one level of the float reference (an 8-bit detour would be
    # off by up to 128 levels).
    reference = pillow_bicubic(nearest_upscale(grey, 4)[..., None] / 65535.0, (32, 21))[..., 0] * 65535
    assert np.abs(reread - reference)[4:-4, 4:-4].max() <= 1


def test_cli_outscale_file_name_and_errors(tmp_path, tiny_rrdb, capsys):
    Image.fromarray(random_pixels((10, 12, 3))).save(tmp_path / "a.png")
    common = [str(tmp_path / "a.png"), "--no_progress", "--output_folder", str(tmp_path / "out"), "--model",
              str(tiny_rrdb)]
    assert super_resolve.main(common + ["--outscale", "3.5"]) == 0
    with Image.open(tmp_path / "out" / "a_x3.5.png") as out:
        assert out.size == (42, 35)
    for bad in (["--outscale", "0"], ["--outscale", "2", "--grid", str(tmp_path / "a.png")], ["--outscale", "inf"],
                ["--outscale", "nan"]):
        with pytest.raises(SystemExit):
            super_resolve.main(common + bad)
        error = capsys.readouterr().err
        assert "--outscale" in error and "Traceback" not in error, error


# ------------------------------------------------------------------------------------------------------
# Network interpolation from the command line (--interpolate_with, --alpha)
# ------------------------------------------------------------------------------------------------------

def save_official_compact(path, seed):
    """A file in Real-ESRGAN's compact layout ({'params': body.N...}) with random weights; returns its state dict."""
    torch.manual_seed(seed)
    state = {name: torch.randn_like(value) * 0.1
             for name, value in models.SRVGGNetCompact(num_feat=8, num_conv=2, upscale=4).state_dict().items()}
    torch.save({"params": state}, path)
    return state


def test_cli_denoise_strength_is_network_interpolation(tmp_path, tiny_rrdb, capsys):
    """Real-ESRGAN's --denoise_strength s runs the weights s x realesr-general-x4v3 + (1 - s) x its -wdn twin: here
    --model the wdn file --interpolate_with the general one --alpha s."""
    general = save_official_compact(tmp_path / "realesr-general-x4v3.pth", seed=0)
    wdn = save_official_compact(tmp_path / "realesr-general-wdn-x4v3.pth", seed=1)
    Image.fromarray(random_pixels((10, 12, 3))).save(tmp_path / "a.png")
    common = [str(tmp_path / "a.png"), "--no_progress", "--tile", "0", "--precision", "fp32", "--model",
              str(tmp_path / "realesr-general-wdn-x4v3.pth"), "--interpolate_with",
              str(tmp_path / "realesr-general-x4v3.pth")]
    for strength in (0.0, 0.3, 1.0):
        out_folder = tmp_path / f"out{strength}"
        assert super_resolve.main(common + ["--alpha", str(strength), "--output_folder", str(out_folder)]) == 0
        blended = models.SRVGGNetCompact(num_feat=8, num_conv=2, upscale=4).eval()
        blended.load_state_dict({name: strength * general[name] + (1 - strength) * wdn[name] for name in general})
        expected = inference.upscale(blended, photo_from_file(tmp_path / "a.png"), tile=0)
        np.testing.assert_array_equal(np.asarray(Image.open(out_folder / "a_x4.png")),
                                      np.asarray(utils.convert_image(expected[0], "[0, 1]", "pil")))
    # Mistakes: an alpha without a second file (or out of range), two --model files, networks that do not match.
    for bad in (["--output_folder", str(tmp_path / "x")],  # --interpolate_with without --alpha
                ["--alpha", "1.5", "--output_folder", str(tmp_path / "x")]):
        with pytest.raises(SystemExit):
            super_resolve.main(common + bad)
        assert "--alpha" in capsys.readouterr().err
    assert super_resolve.main([str(tmp_path / "a.png"), "--no_progress", "--output_folder", str(tmp_path / "x"),
                               "--model", str(tiny_rrdb), "--interpolate_with",
                               str(tmp_path / "realesr-general-x4v3.pth"), "--alpha", "0.5"]) == 1
    assert "share an architecture" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(inference.SHIPPED_MODELS))
def test_bf16_and_fp32_outputs_agree_on_real_photos(name):
    """The default precision ('auto') is bf16 on CPUs and GPUs with native bf16: its 8-bit outputs must be those of
    fp32 within a level or two (PSNR >= 50 dB) on real photos, for every shipped model."""
    model = inference.load_generator(name)[0]
    for photo in (data.coffee()[100:196, 200:296], data.chelsea()[50:146, 150:246]):
        fp32, bf16 = (metrics.upscale_array(model, photo, 4, precision=p).astype(np.float64) for p in ("fp32", "bf16"))
        assert not np.array_equal(fp32, bf16)  # bf16 did run (its rounding shows somewhere)
        psnr = 10 * np.log10(255 ** 2 / np.mean((fp32 - bf16) ** 2))
        assert psnr >= 50 and np.abs(fp32 - bf16).max() <= 3, (name, psnr)


def test_upscaling_uses_the_devices_fast_precision_by_default(tmp_path, monkeypatch, capsys):
    photo = tmp_path / "photo.png"
    Image.fromarray(data.coffee()[:24, :32]).save(photo)
    monkeypatch.setattr(inference, "resolve_precision", lambda precision, device: {"auto": "bf16"}.get(precision,
                                                                                                         precision))
    assert super_resolve.main([str(photo), "--model", "compact", "--output_folder", str(tmp_path), "--no_progress"]) == 0
    assert "precision bf16" in capsys.readouterr().out
    assert super_resolve.main([str(photo), "--model", "compact", "--output_folder", str(tmp_path / "exact"),
                               "--precision", "fp32", "--no_progress"]) == 0
    assert "precision fp32" in capsys.readouterr().out


def test_photo_strip_shows_the_crop_and_scores_the_whole_image(tmp_path, monkeypatch, capsys):
    """--strip: bicubic | each model on a real photo with no HR, the crop of each output, and NIQE of each whole
    output (what calculate_niqe was given)."""
    photo = tmp_path / "photo.jpg"
    Image.fromarray(data.coffee()[:60, :80]).save(photo, quality=60)
    scored = []
    monkeypatch.setattr(metrics, "calculate_niqe", lambda img, crop_border: scored.append(img.shape) or 5.0)
    assert super_resolve.main(["--strip", str(photo), "--model", "compact", "srresnet", "--crop", "10", "5", "30", "20",
                               "--output_folder", str(tmp_path)]) == 0
    assert scored == [(240, 320, 3)] * 3  # bicubic and the two models, each whole upscaled photo
    with Image.open(tmp_path / "photo_strip_x4.png") as strip:
        gap, label = max(4, 120 // 64), max(12, min(40, 80 // 16)) + 12
        assert strip.size == (3 * 120 + 2 * gap, 80 + label)
    # The crop is the model's output there: the middle panel is bicubic's crop, the first one.
    lr = np.asarray(Image.open(photo).convert("RGB"))
    with Image.open(tmp_path / "photo_strip_x4.png") as strip:
        first = np.asarray(strip)[label:, :120]
    np.testing.assert_array_equal(first, metrics.imresize(lr, scale=4)[20:100, 40:160])
    assert super_resolve.main(["--strip", str(photo), "--model", "compact", "--crop", "70", "0", "30", "20",
                               "--output_folder", str(tmp_path / "again")]) == 1
    assert "does not fit" in capsys.readouterr().err


def test_mismatched_networks_to_blend_are_named_by_their_flags(tmp_path, capsys):
    """Two files whose layers differ cannot be blended: the line names the two flags, not a Python argument."""
    save_official_compact(tmp_path / "a.pth", seed=0)
    torch.manual_seed(1)
    torch.save({"params": models.SRVGGNetCompact(num_feat=8, num_conv=3, upscale=4).state_dict()}, tmp_path / "b.pth")
    Image.fromarray(random_pixels((10, 12, 3))).save(tmp_path / "photo.png")
    assert super_resolve.main([str(tmp_path / "photo.png"), "--no_progress", "--output_folder", str(tmp_path / "out"),
                               "--model", str(tmp_path / "a.pth"), "--interpolate_with", str(tmp_path / "b.pth"),
                               "--alpha", "0.5"]) == 1
    error = capsys.readouterr().err
    assert "--model" in error and "--interpolate_with" in error and "skip_mismatched" not in error, error
    assert len(error.strip().splitlines()) == 1, error


# ------------------------------------------------------------------------------------------------------
# Nothing lost, nothing hung: files of the user's, odd inputs, memory
# ------------------------------------------------------------------------------------------------------

def test_never_overwrites_a_file_it_did_not_write(tmp_path, tiny_rrdb, capsys):
    """A file of the user's named like an output (b_x4.png in the output folder) is replaced only with --overwrite;
    and a file this run wrote over is never read after as an input (no b_x4_x4.png made from b.png's output)."""
    Image.fromarray(random_pixels((8, 10, 3))).save(tmp_path / "b.png")
    out = tmp_path / "out"
    out.mkdir()
    Image.fromarray(random_pixels((6, 7, 3))).save(out / "b_x4.png")  # the user's own picture
    users = (out / "b_x4.png").read_bytes()
    common = ["--model", str(tiny_rrdb), "--output_folder", str(out), "--no_progress"]
    assert super_resolve.main([str(tmp_path / "b.png"), *common]) == 1
    error = capsys.readouterr().err
    assert "b_x4.png" in error and "--overwrite" in error and "Traceback" not in error, error
    assert (out / "b_x4.png").read_bytes() == users
    # The user's file given as an input too: without --overwrite it is read, never replaced (its own output is new).
    assert super_resolve.main([str(tmp_path / "b.png"), str(out / "b_x4.png"), *common]) == 1
    assert (out / "b_x4.png").read_bytes() == users and (out / "b_x4_x4.png").is_file()
    capsys.readouterr()
    # With --overwrite b.png's output replaces it, and it is then not read again as the second input.
    (out / "b_x4_x4.png").unlink()
    assert super_resolve.main([str(tmp_path / "b.png"), str(out / "b_x4.png"), *common, "--overwrite"]) == 0
    assert "b_x4.png" in capsys.readouterr().err  # a line says why the second input was skipped
    with Image.open(out / "b_x4.png") as sr_img:
        assert sr_img.size == (40, 32)
    assert sorted(path.name for path in out.iterdir()) == ["b_x4.png"]


def test_an_input_folder_without_images_is_an_error(tmp_path, tiny_rrdb, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "readme.txt").write_text("no image here")
    for folder in (empty, notes):
        assert super_resolve.main([str(folder), "--model", str(tiny_rrdb), "--output_folder", str(tmp_path / "out"),
                                   "--no_progress"]) == 1
        error = capsys.readouterr().err
        assert str(folder) in error and "no image" in error, error


class Blocked(BaseException):
    """Raised by the alarm below when a call blocks (a BaseException: no `except OSError` swallows it)."""


@pytest.mark.parametrize("with_model", [True, False], ids=["model", "no_model"])
def test_a_fifo_given_as_input_is_skipped_with_a_line_not_waited_for(tmp_path, tiny_rrdb, capsys, with_model):
    """Without --model the model is chosen by the file's first bytes (JPEG or not): a FIFO is not read for that
    either."""
    os.mkfifo(tmp_path / "pipe.png")  # opening it for reading blocks until someone writes: nobody will
    Image.fromarray(random_pixels((8, 8, 3))).save(tmp_path / "a.png")

    def blocked(*args):
        raise Blocked("super_resolve.py waited for the FIFO")

    previous = signal.signal(signal.SIGALRM, blocked)
    signal.alarm(10)
    try:
        status = super_resolve.main([str(tmp_path / "pipe.png"), str(tmp_path / "a.png"),
                                     *(["--model", str(tiny_rrdb)] if with_model else []),
                                     "--output_folder", str(tmp_path / "out"), "--no_progress"])
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    error = capsys.readouterr().err
    assert status == 1 and "pipe.png" in error and "not a regular file" in error, error
    assert (tmp_path / "out" / "a_x4.png").is_file()


def test_running_out_of_memory_on_one_image_skips_it(tmp_path, tiny_rrdb, capsys, monkeypatch):
    """NumPy and Pillow raise MemoryError (not torch's out-of-memory RuntimeError): that image fails with a line,
    the others are still written."""
    for name in ("a", "b"):
        Image.fromarray(random_pixels((8, 8, 3))).save(tmp_path / f"{name}.png")
    write_image = super_resolve.write_image

    def write_or_run_out_of_memory(img, path, *args):
        if path.name == "a_x4.png":
            raise MemoryError()  # (what Pillow raises: no message)
        write_image(img, path, *args)

    monkeypatch.setattr(super_resolve, "write_image", write_or_run_out_of_memory)
    assert super_resolve.main([str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--model", str(tiny_rrdb),
                               "--output_folder", str(tmp_path / "out"), "--no_progress"]) == 1
    error = capsys.readouterr().err
    assert "a.png" in error and "memory" in error, error
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["b_x4.png"]


def test_two_runs_writing_one_output_at_once_never_replace_each_others_files(tmp_path, tiny_rrdb, capsys,
                                                                             monkeypatch):
    """Another run writes photo_x4.png after this run checked the name was free and before it writes its own: the
    other run's file is kept (the name is taken atomically, utils.atomic_write(overwrite=False)), and this run says
    so and fails that input, whatever the timing."""
    Image.fromarray(random_pixels((8, 8, 3))).save(tmp_path / "photo.png")
    out = tmp_path / "out"
    upscale_image = super_resolve.upscale_image

    def upscale_while_another_run_writes(*args, **kwargs):
        sr_img = upscale_image(*args, **kwargs)
        out.mkdir(exist_ok=True)
        (out / "photo_x4.png").write_bytes(b"the other run's output")
        return sr_img

    monkeypatch.setattr(super_resolve, "upscale_image", upscale_while_another_run_writes)
    assert super_resolve.main([str(tmp_path / "photo.png"), "--model", str(tiny_rrdb), "--output_folder", str(out),
                               "--no_progress"]) == 1
    captured = capsys.readouterr()
    assert "wrote" not in captured.out and "photo_x4.png already exists" in captured.err, captured
    assert "--overwrite" in captured.err and "Traceback" not in captured.err
    assert (out / "photo_x4.png").read_bytes() == b"the other run's output"
    assert sorted(path.name for path in out.iterdir()) == ["photo_x4.png"]  # no temporary file left either
    # With --overwrite this run's output replaces it, as asked.
    assert super_resolve.main([str(tmp_path / "photo.png"), "--model", str(tiny_rrdb), "--output_folder", str(out),
                               "--no_progress", "--overwrite"]) == 0
    with Image.open(out / "photo_x4.png") as sr_img:
        assert sr_img.size == (32, 32)


def test_an_output_folder_that_is_a_file_is_one_line_before_any_work(tmp_path, tiny_rrdb, capsys):
    Image.fromarray(random_pixels((8, 8, 3))).save(tmp_path / "a.png")
    (tmp_path / "afile").write_text("not a folder")
    for folder in (tmp_path / "afile", tmp_path / "afile" / "sub"):
        assert super_resolve.main([str(tmp_path / "a.png"), "--model", str(tiny_rrdb), "--output_folder", str(folder),
                                   "--no_progress"]) == 1
        captured = capsys.readouterr()
        assert captured.err.startswith("error: The output folder") and "is a file" in captured.err, captured.err
        assert len(captured.err.strip().splitlines()) == 1 and "model:" not in captured.out


def test_unreadable_image_files_in_a_folder_are_failures(tmp_path, tiny_rrdb, capsys):
    """In a folder, a file named like an image that is none (0 bytes, an HTML page saved as .jpg) is a failure: in
    the summary, and the exit status 1, as when such a file is given alone. Files with other names (notes.txt,
    .DS_Store) are still skipped with a warning."""
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(random_pixels((8, 8, 3))).save(folder / "a.png")
    (folder / "empty.png").write_bytes(b"")
    (folder / "page.jpg").write_text("<html><body>not a photo</body></html>")
    (folder / "notes.txt").write_text("not an image")
    status = super_resolve.main([str(folder), "--model", str(tiny_rrdb), "--output_folder", str(tmp_path / "out"),
                                 "--no_progress"])
    error = capsys.readouterr().err
    assert status == 1 and "2 of 3 input(s) failed" in error, error
    summary = error[error.index("input(s) failed"):]
    assert "empty.png" in summary and "page.jpg" in summary and "notes.txt" not in summary
    assert "skipping" in error and "notes.txt" in error
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["a_x4.png"]


def test_the_same_input_given_twice_is_upscaled_once_with_a_note(tmp_path, tiny_rrdb, capsys, monkeypatch):
    Image.fromarray(random_pixels((8, 8, 3))).save(tmp_path / "a.png")
    monkeypatch.chdir(tmp_path)
    # The same file three ways (two spellings, and inside a folder given too).
    assert super_resolve.main(["a.png", "./a.png", str(tmp_path), "--model", str(tiny_rrdb), "--output_folder",
                               "out", "--no_progress"]) == 0
    captured = capsys.readouterr()
    assert captured.out.count("wrote") == 1 and "rename" not in captured.err, captured
    assert "given more than once" in captured.err and "upscaled once" in captured.err, captured.err
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["a_x4.png"]


def test_a_tile_too_small_to_be_worth_it_is_raised_with_a_line(tmp_path, tiny_rrdb, capsys):
    """--tile 1 with the default --tile_pad 16 would run each LR pixel with 33 x 33 pixels of context: ~1000 times
    the work, for no memory worth saving. Such a tile is raised to the smallest sensible one (inference.min_tile),
    with one line, and the output is that tile's."""
    photo = np.asarray(Image.fromarray(data.astronaut()).resize((96, 64)))
    Image.fromarray(photo).save(tmp_path / "photo.png")
    assert inference.min_tile(16) == 32 and inference.min_tile(4) == inference.MIN_TILE
    common = [str(tmp_path / "photo.png"), "--model", str(tiny_rrdb), "--precision", "fp32", "--no_progress"]
    assert super_resolve.main(common + ["--tile", "1", "--output_folder", str(tmp_path / "one")]) == 0
    captured = capsys.readouterr()
    assert "--tile 1 raised to 32" in captured.err and len(captured.err.strip().splitlines()) == 1, captured.err
    assert super_resolve.main(common + ["--tile", "32", "--output_folder", str(tmp_path / "t32")]) == 0
    assert "raised" not in capsys.readouterr().err
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "one" / "photo_x4.png")),
                                  np.asarray(Image.open(tmp_path / "t32" / "photo_x4.png")))


# A real ICC profile's bytes (LittleCMS's sRGB, made once: its header holds the time it was made).
SRGB_PROFILE = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def icc_profile(colour_space=b"RGB "):
    """SRGB_PROFILE, its header's colour space set to `colour_space` (a profile of another space, e.g. a CMYK one,
    differs in that field for what is checked here)."""
    profile = bytearray(SRGB_PROFILE)
    profile[16:20] = colour_space
    return bytes(profile)


def test_a_jpegs_icc_profile_is_carried_into_the_png(tmp_path, tiny_rrdb):
    """A photo from a wide-gamut camera or phone (Display P3, Adobe RGB) says so with an embedded ICC profile; the
    output carries the same profile, so viewers show the same colours (only where the output has the profile's
    colour space: a CMYK JPEG's profile does not describe the RGB output)."""
    Image.fromarray(random_pixels((8, 8, 3))).save(tmp_path / "p3.jpg", icc_profile=icc_profile())
    Image.fromarray(random_pixels((8, 8))).save(tmp_path / "grey.jpg", icc_profile=icc_profile(b"GRAY"))
    Image.fromarray(random_pixels((8, 8, 4)), "CMYK").save(tmp_path / "cmyk.jpg", icc_profile=icc_profile(b"CMYK"))
    Image.fromarray(random_pixels((8, 8, 3))).save(tmp_path / "plain.jpg")
    Image.fromarray(random_pixels((8, 8, 4)), "RGBA").save(tmp_path / "alpha.png", icc_profile=icc_profile())
    inputs = [str(tmp_path / name) for name in ("p3.jpg", "grey.jpg", "cmyk.jpg", "plain.jpg", "alpha.png")]
    assert super_resolve.main([*inputs, "--model", str(tiny_rrdb), "--output_folder", str(tmp_path / "out"),
                               "--no_progress"]) == 0
    carried = {}
    for name in ("p3", "grey", "cmyk", "plain", "alpha"):
        with Image.open(tmp_path / "out" / f"{name}_x4.png") as sr_img:
            carried[name] = sr_img.info.get("icc_profile")
    assert carried == {"p3": icc_profile(), "grey": icc_profile(b"GRAY"), "cmyk": None, "plain": None,
                       "alpha": icc_profile()}


# ------------------------------------------------------------------------------------------------------
# x1 / x2 models trained on x4 data
# ------------------------------------------------------------------------------------------------------

def test_an_x1_model_of_x4_data_upscales_x4_from_the_nearest_upscaled_photo(tmp_path, tiny_rrdb, capsys):
    """An x1 pixel-unshuffle model whose checkpoint says it was trained on x4 data makes x4 outputs: it is fed the
    photo enlarged x4 with nearest neighbour, as in training (and the run says so); in tiles too, and in the grid."""
    kwargs = dict(n_channels=8, n_blocks=1, scaling_factor=1, unshuffle_scale=4)
    torch.manual_seed(0)
    model = models.build_generator("srresnet", **kwargs).eval()
    checkpoints.save_checkpoint({"kind": "srresnet", "generator_arch": "srresnet", "generator_kwargs": kwargs,
                                 "generator": model.state_dict(), "iteration": 5,
                                 "hyperparameters": {"scaling_factor": 4}}, tmp_path / "x1.pth")
    photo = np.asarray(Image.fromarray(data.astronaut()).resize((27, 21)))  # odd sides
    Image.fromarray(photo).save(tmp_path / "photo.png")
    assert super_resolve.main([str(tmp_path / "photo.png"), "--model", str(tmp_path / "x1.pth"), "--precision", "fp32",
                               "--output_folder", str(tmp_path / "out"), "--tile", "0", "--no_progress"]) == 0
    assert "an x1 network trained on x4 data: fed the LR image enlarged x4 with nearest neighbour" in \
        capsys.readouterr().out
    out = np.asarray(Image.open(tmp_path / "out" / "photo_x4.png"))
    assert out.shape == (84, 108, 3)
    # By hand: every pixel repeated 4 x 4, through the x1 network, [-1, 1] (tanh) to 8 bits.
    lr_up = torch.from_numpy(photo.repeat(4, axis=0).repeat(4, axis=1)).permute(2, 0, 1).float().div(255)[None]
    with torch.no_grad():
        expected = ((model(lr_up)[0].permute(1, 2, 0).numpy() + 1) / 2).clip(0, 1)
    np.testing.assert_array_equal(out, (expected * 255).round().astype(np.uint8))
    # In tiles the same, but for the tiny differences of tiling.
    assert super_resolve.main([str(tmp_path / "photo.png"), "--model", str(tmp_path / "x1.pth"), "--output_folder",
                               str(tmp_path / "tiled"), "--tile", "8", "--tile_pad", "4", "--no_progress"]) == 0
    tiled = np.asarray(Image.open(tmp_path / "tiled" / "photo_x4.png"))
    assert metrics.calculate_psnr(tiled, out) > 40
    # The grid puts it beside x4 models: its scale is the data's.
    hr = np.asarray(Image.fromarray(data.astronaut()).resize((64, 48)))
    Image.fromarray(hr).save(tmp_path / "hr.png")
    assert super_resolve.main(["--grid", str(tmp_path / "hr.png"), "--model", str(tmp_path / "x1.pth"),
                               str(tiny_rrdb), "--output_folder", str(tmp_path), "--no_progress"]) == 0
    assert Image.open(tmp_path / "hr_grid_x4.png").size[0] >= 4 * 64
    assert "fed the LR image enlarged x4" in capsys.readouterr().out


def test_bf16_emulated_on_this_cpu_is_said_once(tmp_path):
    """An AVX2 CPU (emulated with oneDNN's and ATen's switches): --precision bf16 runs as asked, with one line saying
    it is emulated and slower, however many tiles and images; --precision auto picks fp32 without a word."""
    for name in ("a", "b"):
        Image.fromarray(data.coffee()[:40, :48]).save(tmp_path / f"{name}.png")
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "OMP_NUM_THREADS": "1"}
    common = [sys.executable, "super_resolve.py", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--model",
              "compact", "--tile", "16", "--tile_pad", "4", "--no_progress"]
    result = subprocess.run(common + ["--precision", "bf16", "--output_folder", str(tmp_path / "bf16")], env=env,
                            cwd=Path(super_resolve.__file__).parent, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("emulated") == 1 and "--precision fp32" in result.stderr, result.stderr
    result = subprocess.run(common + ["--output_folder", str(tmp_path / "auto")], env=env,
                            cwd=Path(super_resolve.__file__).parent, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "precision fp32" in result.stdout and "emulated" not in result.stderr, result
