"""Upscale any image with any of our generators, in bounded memory -- or draw the tutorial's comparison grid.

The classic tutorial could only *evaluate*: it always downsampled an HR image first and upscaled that. This script
upscales the image you give it, as it is:

    python super_resolve.py photo.jpg scans/ --model checkpoint_srgan.pth --output_folder upscaled/
    python super_resolve.py big.png --model RealESRGAN_x4plus.pth --output_folder out/ --tile 256 --precision bf16

and, for learners, it still draws the tutorial's comparison (HR | bicubic | SRResNet | SRGAN/ESRGAN ...):

    python super_resolve.py --grid butterfly.png --model srresnet.pth srgan.pth --output_folder out/

How it works, top to bottom:
  1. `upscale()`: the core. A (1, C, H, W) image in [0, 1] -> (1, C, H*s, W*s) in [0, 1], cut into overlapping
     tiles so that only one tile's activations are ever in memory (the output is assembled on the CPU).
  2. `read_image()` / `write_image()`: real files -- phone photos (EXIF orientation), greyscale, transparency
     (RGBA / LA / palette), 16-bit greyscale PNGs, CMYK JPEGs -- in, and a PNG of the same kind out.
  3. `comparison_grid()`: the tutorial's figure, with a label (and PSNR against HR) on each panel.
  4. `main()`: the command line -- files and folders in, `<stem>_x<s>.png` out, failures listed at the end.

Output files are always PNG (lossless, and the only common format that holds transparency and 16 bits); a JPEG
input therefore gives a PNG output. Outputs are written atomically (temporary name, then rename), so a crash
never leaves half a PNG behind, and a failing input never touches the outputs already written.

Limits (honest ones): Pillow (13 included) reads a 16-bit *RGB* PNG as 8-bit RGB and cannot write one, so such
a file is upscaled and saved as 8-bit RGB (a warning says so); only 16-bit *greyscale* PNGs ('I;16') keep their
16 bits end to end. 32-bit float images ('F') are refused. Animated images use their first frame.
"""
import argparse
import math
import os
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont, UnidentifiedImageError
from tqdm import tqdm

import utils

# Default tile settings. A 256-pixel LR tile (1024 pixels at x4) keeps the full RRDBNet (ESRGAN) at about 1 GB of
# activations in fp32 whatever the image size: for a 1024x1024 input at x4 on the CPU, the process peaks at ~2 GB
# tiled vs ~14 GB untiled (benchmarks/bench_tiling.py; the memory peak is in the full-size x4 tail, which every
# RRDBNet depth shares). Time hardly suffers: tiles fit the caches better, so tiled was even faster on an AVX-512 CPU
# (283 s vs 428 s) and ~15% slower on an older AVX2 one. The 16-pixel pad is far less than the RRDBNet's theoretical
# receptive field (~350 LR pixels), but the *effective* influence of far pixels decays fast: in every network we
# could measure (random and briefly trained RRDBNets) pad 8 already gave >= 84 dB PSNR between tiled and untiled
# outputs, and the tests check >= 45 dB with these defaults on a real photo. No pretrained ESRGAN was available to
# confirm it on; if you ever see a seam, raise --tile_pad (32 costs ~20% more time).
DEFAULT_TILE = 256
DEFAULT_TILE_PAD = 16
PRECISIONS = ("fp32", "bf16", "fp16")


# ======================================================================================================
# 1. The core: tiled inference
# ======================================================================================================

def _tile_starts(length, tile):
    """Start offsets of the tiles along one side: 0, tile, 2*tile, ... (the last tile may be shorter)."""
    return list(range(0, length, tile))


def _round_up(value, multiple):
    return int(math.ceil(value / multiple) * multiple)


def upscale(model, lr_img, tile=DEFAULT_TILE, tile_pad=DEFAULT_TILE_PAD, precision="fp32", progress=False):
    """
    Super-resolve one image, tile by tile, with any generator of the project.

    Why tiles? A network's activations are many times larger than its input: the full RRDBNet keeps maps of
    64-192 channels at LR size and 64 channels at 2x and 4x size, so a 1024x1024 photo needs ~13 GB at once.
    Cutting the LR image into tile x tile pieces bounds that by the tile size instead of the image size.

    Why do tiles overlap? A convolution near a tile's edge sees the zero padding of the tile instead of the real
    neighbouring pixels, so pasting independently upscaled tiles side by side shows seams. We therefore run each
    tile with `tile_pad` extra LR pixels of real context on each side (clamped at the image border), and keep only
    the upscaled centre. An output pixel depends only on the input pixels within the network's receptive-field
    radius r (a stack of L 3x3 convolutions has r = L). If tile_pad >= r, every kept output pixel sees exactly
    the same inputs as in the untiled run -- and where the padded tile is clamped at the image border, the tile's
    border *is* the image's border, so the zero padding there is also the same. Tiled == untiled then, up to
    floating-point summation order. Real networks have huge theoretical receptive fields, but far pixels matter
    very little, so a small pad already makes the seams invisible (see DEFAULT_TILE_PAD).

    Models that pixel-unshuffle their input by r (x2 / x1 variants) fold r x r blocks of pixels into channels,
    so tile borders and pads are kept on multiples of r; otherwise a tile would be folded differently from the
    whole image.

    :param model: a generator with `scaling_factor`, `input_format` and `output_format` attributes, in eval mode;
                  its device (and dtype, e.g. float64 in tests) is where the tiles run
    :param lr_img: (1, C, H, W) float tensor in [0, 1], on any device
    :param tile: LR tile side in pixels; 0 (or >= the image) runs the whole image at once
    :param tile_pad: LR pixels of context added on each side of a tile
    :param precision: 'fp32', 'bf16' (torch.autocast on CPU and CUDA) or 'fp16' (CUDA only)
    :param progress: show a tqdm bar over the tiles (only when there is more than one)
    :return: (1, C, H * s, W * s) tensor in [0, 1] on the CPU, with lr_img's float dtype (float32 for integer input)
    """
    if lr_img.dim() != 4 or lr_img.shape[0] != 1:
        raise ValueError(f"upscale() takes one image of shape (1, C, H, W), got {tuple(lr_img.shape)}.")
    if tile < 0 or tile_pad < 0:
        raise ValueError(f"tile and tile_pad must be >= 0 (tile 0 = whole image), got {tile} and {tile_pad}.")
    parameter = next(model.parameters())
    device, model_dtype = parameter.device, parameter.dtype
    autocast = _autocast_context(precision, device)
    scale = int(model.scaling_factor)
    out_dtype = lr_img.dtype if lr_img.is_floating_point() else torch.float32

    # Tile borders on multiples of the model's pixel-unshuffle factor (1 for models without unshuffle).
    multiple = int(getattr(model, "unshuffle_scale", 1))
    _, _, height, width = lr_img.shape
    if tile == 0 or (tile >= height and tile >= width):
        tile = max(height, width)  # one tile: the whole image
    tile = _round_up(tile, multiple)
    tile_pad = _round_up(tile_pad, multiple)

    tiles = [(top, left) for top in _tile_starts(height, tile) for left in _tile_starts(width, tile)]
    sr_img = None  # allocated once we know the model's output channels
    with tqdm(total=len(tiles), desc="tiles", unit="tile", leave=False,
              disable=not progress or len(tiles) == 1) as bar:
        for top, left in tiles:
            bottom, right = min(top + tile, height), min(left + tile, width)
            # The tile plus its context, clamped at the image border.
            pad_top, pad_left = max(top - tile_pad, 0), max(left - tile_pad, 0)
            pad_bottom, pad_right = min(bottom + tile_pad, height), min(right + tile_pad, width)
            lr_tile = lr_img[:, :, pad_top:pad_bottom, pad_left:pad_right]  # (1, C, h + pads, w + pads), [0, 1]

            sr_tile = _run_model(model, lr_tile, device, model_dtype, out_dtype, autocast)  # (1, C', s*.., s*..)

            # Keep only the upscaled centre: drop the s * pad pixels that came from the context.
            y0, x0 = (top - pad_top) * scale, (left - pad_left) * scale
            sr_centre = sr_tile[:, :, y0:y0 + (bottom - top) * scale, x0:x0 + (right - left) * scale]
            if len(tiles) == 1:
                return sr_centre.cpu()  # untiled: the model's output is the result, no second copy
            if sr_img is None:
                # The whole output lives on the CPU: only the current tile occupies the accelerator.
                sr_img = torch.empty((1, sr_tile.shape[1], height * scale, width * scale), dtype=out_dtype)
            sr_img[:, :, top * scale:bottom * scale, left * scale:right * scale] = sr_centre.cpu()
            bar.update(1)
    return sr_img  # (1, C', H * s, W * s), in [0, 1]


def _autocast_context(precision, device):
    """fp32: no autocast. bf16: torch.autocast on CPU or CUDA. fp16: CUDA only (CPU fp16 convolutions are slow
    or missing, and fp16's narrow range is only worth it on GPU tensor cores)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}.")
    if precision == "fp32":
        return torch.autocast(device_type=device.type, enabled=False)
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("precision 'fp16' needs a CUDA GPU; on the CPU use --precision bf16 or fp32.")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _run_model(model, lr_tile, device, model_dtype, out_dtype, autocast):
    """One forward pass: [0, 1] -> the model's input format -> model -> [0, 1], clamped (no gradients kept)."""
    # channels_last (NHWC) input: PyTorch then runs every convolution of the model in NHWC, which oneDNN (CPU) and
    # cuDNN (GPU) do much faster than NCHW -- 1.5x for the full RRDBNet in fp32 on an AVX-512 CPU. Same numbers.
    x = lr_tile.to(device=device, dtype=model_dtype).contiguous(memory_format=torch.channels_last)
    x = utils.convert_image(x, "[0, 1]", model.input_format)
    with torch.inference_mode(), autocast:
        y = model(x)
    # Back to full precision before rescaling: bf16 / fp16 outputs would lose levels in the arithmetic.
    y = utils.convert_image(y.to(out_dtype), model.output_format, "[0, 1]")
    return y.clamp(0.0, 1.0)


# ======================================================================================================
# 2. Real files in and out
# ======================================================================================================

# Modes that Pillow gives 16-bit (or wider integer) greyscale PNG / TIFF data in.
_GREY_16BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


class ImageData:
    """An image ready for the network, plus what is needed to write it back in the same kind.

    rgb:   (1, 3, H, W) float32 in [0, 1]    what the network sees (greyscale replicated to 3 channels)
    alpha: (1, 1, H, W) float32 in [0, 1] or None
    grey:  True if the output should be greyscale ('L' / 'LA' / 'I;16')
    bits:  8 or 16
    """

    def __init__(self, rgb, alpha, grey, bits):
        self.rgb, self.alpha, self.grey, self.bits = rgb, alpha, grey, bits


def read_image(path):
    """
    Read any image file Pillow understands into an ImageData, the right way up.

    * EXIF orientation is applied (utils.load_image does it): phone photos are stored sideways with a tag.
    * 'L' / '1' greyscale: replicated to RGB for the network (all our models take 3 channels), written back as 'L'.
    * 'RGBA' / 'LA' / palette with transparency: the alpha channel is split off; see write side for why.
    * 'P' palette without transparency, 'CMYK', 'YCbCr', 'LAB', 'HSV', 'RGBX': converted to RGB.
    * 16-bit greyscale ('I;16' PNGs, also 'I'): read at full 16-bit precision, written back as 16 bits.
    * 16-bit RGB PNGs: Pillow only reads their top 8 bits; we warn and continue at 8 bits.

    :raises FileNotFoundError, ValueError: with a message naming the file
    """
    try:
        img = utils.load_image(path, mode=None)  # decoded, EXIF-transposed, own mode kept
    except Image.DecompressionBombError as error:  # Pillow's guard against huge (or malicious) files
        raise ValueError(f"{path}: {error} Its upscaled output would hold billions of pixels; split the image "
                         f"into parts first.") from None
    if _png_bit_depth_and_colour_type(path) in ((16, 2), (16, 6), (16, 4)):
        warnings.warn(f"{path} is a 16-bit colour (or grey + alpha) PNG; Pillow reads and writes only 8 bits per "
                      f"channel of such files, so it is upscaled and saved at 8 bits.")

    mode = img.mode
    if mode in _GREY_16BIT_MODES:
        grey = np.asarray(img).astype(np.float32)  # (H, W), 0..65535
        if grey.max(initial=0) > 65535 or grey.min(initial=0) < 0:
            raise ValueError(f"{path}: mode {mode!r} with values outside 0..65535 is not a 16-bit image; "
                             f"convert it to a 16-bit or 8-bit PNG first.")
        rgb = torch.from_numpy(grey / 65535.0).expand(3, -1, -1)[None].contiguous()  # (1, 3, H, W), [0, 1]
        return ImageData(rgb, None, grey=True, bits=16)
    if mode == "F":
        raise ValueError(f"{path} is a 32-bit floating-point image (mode 'F'), whose value range is unknown; "
                         f"convert it to a 16-bit or 8-bit PNG first.")

    # Bring every other mode to one of L, LA, RGB, RGBA.
    if mode == "P":
        mode_8bit = "RGBA" if "transparency" in img.info else "RGB"
    elif mode in ("PA", "RGBa", "RGBA"):
        mode_8bit = "RGBA"
    elif mode in ("LA", "La"):
        mode_8bit = "LA"
    elif mode in ("1", "L"):
        mode_8bit = "L"
    else:  # RGB, RGBX, CMYK, YCbCr, LAB, HSV
        mode_8bit = "RGB"
    img = img.convert(mode_8bit) if img.mode != mode_8bit else img

    pixels = torch.from_numpy(np.array(img, dtype=np.float32) / 255.0)  # (H, W) or (H, W, C), in [0, 1]
    if pixels.dim() == 2:
        pixels = pixels[:, :, None]
    pixels = pixels.permute(2, 0, 1)[None]  # (1, C, H, W)
    has_alpha = mode_8bit in ("LA", "RGBA")
    colour = pixels[:, :-1] if has_alpha else pixels  # (1, 1 or 3, H, W)
    alpha = pixels[:, -1:].contiguous() if has_alpha else None
    grey = colour.shape[1] == 1
    rgb = colour.expand(-1, 3, -1, -1).contiguous() if grey else colour.contiguous()
    return ImageData(rgb, alpha, grey=grey, bits=8)


def _png_bit_depth_and_colour_type(path):
    """(bit depth, colour type) from a PNG's IHDR header, or None for other files.

    Pillow decodes 16-bit RGB(A) and grey+alpha PNGs (colour types 2, 6, 4) into 8-bit modes without saying so;
    the header is the only place that tells."""
    with open(path, "rb") as file:
        header = file.read(26)
    if len(header) < 26 or header[:8] != b"\x89PNG\r\n\x1a\n" or header[12:16] != b"IHDR":
        return None
    return header[24], header[25]


def upscale_image(model, image, tile=DEFAULT_TILE, tile_pad=DEFAULT_TILE_PAD, precision="fp32", progress=False):
    """
    Upscale an ImageData into a PIL image of the same kind (L / LA / RGB / RGBA / I;16), s times larger.

    Why is alpha upscaled separately, with plain bicubic? The networks were trained on RGB photos only: they
    have no input for a 4th channel, and an alpha mask (flat areas, hard edges) is not a photo anyway -- a
    "hallucinating" GAN would invent texture in it. Bicubic keeps the mask smooth and exactly aligned with the
    colour (same pixel-centre convention as the network's x s grid).
    """
    scale = int(model.scaling_factor)
    sr_rgb = upscale(model, image.rgb, tile=tile, tile_pad=tile_pad, precision=precision,
                     progress=progress)  # (1, 3, H*s, W*s), [0, 1]
    channels = sr_rgb[0]  # (3, H*s, W*s)
    if image.grey:
        # Back to one channel with the BT.601 luma weights (what Pillow's convert('L') uses). The input channels
        # were equal, so this only averages away the small colour casts the network may add.
        weights = torch.tensor([0.299, 0.587, 0.114], dtype=channels.dtype)
        channels = torch.einsum("chw,c->hw", channels, weights)[None]  # (1, H*s, W*s)
    if image.alpha is not None:
        sr_alpha = F.interpolate(image.alpha, scale_factor=scale, mode="bicubic", align_corners=False)
        channels = torch.cat([channels, sr_alpha[0].clamp(0.0, 1.0).to(channels.dtype)])  # (C + 1, H*s, W*s)
    return to_pil(channels, bits=image.bits)


def to_pil(channels, bits=8):
    """
    (C, H, W) float tensor in [0, 1] -> PIL image: C = 1 'L' (or 'I;16' when bits=16), 2 'LA', 3 'RGB', 4 'RGBA'.

    Why round, not truncate? `uint8(x * 255)` drops the fraction, so every value lands on the level *below* it on
    average: the whole image gets ~half a level darker, and an exact 0.5/255 error is added everywhere. Rounding
    to the nearest level is the unbiased choice (utils.convert_image does the same for RGB).
    """
    max_value = 65535 if bits == 16 else 255
    if bits == 16 and channels.shape[0] != 1:
        raise ValueError("16-bit output is only possible for one-channel (greyscale) images in Pillow.")
    n_channels, height, width = channels.shape
    array = np.empty((height, width, n_channels), dtype=np.uint16 if bits == 16 else np.uint8)
    # A band of rows at a time: a 16384 x 16384 RGB output is 3 GB in float32, and converting it in one go would
    # make three more such temporaries (x * 255, round, clamp); band by band the extra memory is a few MB.
    band = max(1, (1 << 22) // max(1, width * n_channels))
    for top in range(0, height, band):
        levels = channels[:, top:top + band].float() * max_value  # (C, band, W), new tensor
        levels = levels.round_().clamp_(0, max_value)  # integer-valued, in place
        array[top:top + band] = levels.permute(1, 2, 0).numpy()  # cast to the integer type on assignment
    if n_channels == 1:
        return Image.fromarray(array[:, :, 0])  # mode 'L', or 'I;16' for uint16
    return Image.fromarray(array)  # 'LA' (2 channels), 'RGB' or 'RGBA'


def write_image(img, path):
    """
    Save a PIL image as PNG atomically: write '<dir>/.<name>.*.tmp', then rename it over `path`.

    os.replace is atomic, so a crash, a full disk or Ctrl+C leaves either the old file or the complete new one,
    never half a PNG that an image viewer (or the next script) chokes on.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary_path = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as file:
            img.save(file, format="PNG")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary_path, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(temporary_path, path)
    except BaseException:
        if os.path.exists(temporary_path):
            os.remove(temporary_path)
        raise


# ======================================================================================================
# 3. The tutorial's comparison grid
# ======================================================================================================

def comparison_grid(hr_img, models, tile=DEFAULT_TILE, tile_pad=DEFAULT_TILE_PAD, precision="fp32",
                    progress=False):
    """
    The tutorial's figure: HR | bicubic | each model's output, side by side, labelled with name and PSNR.

    The HR image is cropped to a multiple of the scale and downsampled with bicubic (as the training LR images
    are made, utils.make_lr_image); "bicubic" upscales that LR image back with bicubic, and each model upscales
    the same LR image. PSNR (RGB, against HR) is only a rough guide: GAN outputs look sharper yet score lower.

    :param hr_img: PIL image (any mode; converted to RGB)
    :param models: list of (model, label) pairs, all with the same scaling_factor
    :return: PIL RGB image
    """
    scales = {int(model.scaling_factor) for model, _ in models}
    if len(scales) != 1:
        raise ValueError(f"The grid compares models of one scale, but got scales {sorted(scales)}; "
                         f"pass models of the same scale.")
    scale = scales.pop()
    hr_img = utils.modcrop(hr_img.convert("RGB"), scale)
    width, height = hr_img.size
    if width < scale or height < scale:
        raise ValueError(f"The HR image ({width}x{height}) is too small for x{scale}; use a larger image.")
    lr_img = utils.make_lr_image(hr_img, scale)
    bicubic_img = lr_img.resize((width, height), Image.Resampling.BICUBIC)

    panels = [("HR", hr_img), ("Bicubic", bicubic_img)]
    lr_tensor = utils.convert_image(lr_img, "pil", "[0, 1]")[None]  # (1, 3, h, w), [0, 1]
    for model, label in models:
        sr_tensor = upscale(model, lr_tensor, tile=tile, tile_pad=tile_pad, precision=precision, progress=progress)
        panels.append((label, utils.convert_image(sr_tensor[0], "[0, 1]", "pil")))

    # Layout: one row of panels, a label strip above each. ImageFont.load_default(size) is Pillow's built-in
    # scalable font (no font file needed, works offline); text is measured with textbbox / textlength, which
    # replace the textsize() that Pillow 10 removed.
    font_size = max(12, min(40, height // 16))
    try:
        font = ImageFont.load_default(size=font_size)
    except TypeError:  # Pillow 10.0 has only the small fixed-size bitmap font
        font = ImageFont.load_default()
    gap, label_height = max(4, width // 64), font_size + 12
    canvas = Image.new("RGB", (len(panels) * width + (len(panels) - 1) * gap, height + label_height), "white")
    draw = ImageDraw.Draw(canvas)
    hr_array = np.asarray(hr_img, dtype=np.float64)
    for index, (label, panel) in enumerate(panels):
        left = index * (width + gap)
        canvas.paste(panel, (left, label_height))
        if index > 0:  # PSNR against HR, on 8-bit RGB
            mse = np.mean((np.asarray(panel, dtype=np.float64) - hr_array) ** 2)
            label = f"{label}  {10 * math.log10(255 ** 2 / mse):.2f} dB" if mse > 0 else f"{label}  inf dB"
        while draw.textlength(label, font=font) > width and len(label) > 1:  # shorten labels that do not fit
            label = label[:-2] + "…"
        draw.text((left + 2, 4), label, fill="black", font=font)
    return canvas


# ======================================================================================================
# 4. Command line
# ======================================================================================================

def load_model(path, device, scale=None):
    """
    utils.load_generator (our checkpoints or official ESRGAN / Real-ESRGAN files), plus the --scale check.

    A weight file holds one network with one scale (a pixel-unshuffle x2 variant is its own file), so --scale
    only confirms which one you meant; a mismatch is an error rather than a silent x4 when you asked for x2.
    """
    model, description = utils.load_generator(path, device=device)
    if scale is not None and scale != model.scaling_factor:
        raise ValueError(f"{path} upscales x{model.scaling_factor}, not x{scale}; use a model trained for x{scale} "
                         f"(for x2 / x1 a pixel-unshuffle variant) or drop --scale.")
    return model, description


def find_inputs(inputs):
    """
    Expand the command-line inputs into (path, given_explicitly) pairs.

    A folder contributes every image file directly inside it, sorted by name; files that Pillow does not
    recognise as images are skipped with a warning (a folder of photos often holds a .txt or a .DS_Store).
    An explicit file is always kept, so that a bad one is reported as a failure, not skipped quietly.
    """
    found = []
    for item in inputs:
        item = Path(item)
        if not item.is_dir():
            found.append((item, True))
            continue
        for path in sorted(p for p in item.iterdir() if p.is_file()):
            try:
                with Image.open(path):  # reads the header only: cheap
                    pass
            except (UnidentifiedImageError, OSError):
                warnings.warn(f"skipping {path}: not an image file")
                continue
            except Image.DecompressionBombError:
                pass  # an image, but a huge one: reading it will report the problem clearly
            found.append((path, False))
    return found


def output_path(input_path, output_folder, scale):
    """`<output_folder>/<stem>_x<s>.png` -- always PNG (lossless; holds alpha and 16-bit grey)."""
    return Path(output_folder) / f"{Path(input_path).stem}_x{scale}.png"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="*", help="image files and/or folders of images to upscale")
    parser.add_argument("--model", nargs="+", required=True,
                        help="generator file(s): our checkpoints or official ESRGAN / Real-ESRGAN weights "
                             "(architecture detected); several only with --grid")
    parser.add_argument("--output_folder", required=True, help="where <stem>_x<s>.png files are written")
    parser.add_argument("--scale", type=int, default=None,
                        help="expected upscaling factor; an error if the model does not provide it")
    parser.add_argument("--tile", type=int, default=DEFAULT_TILE,
                        help=f"LR tile side in pixels, 0 = whole image at once (default {DEFAULT_TILE})")
    parser.add_argument("--tile_pad", type=int, default=DEFAULT_TILE_PAD,
                        help=f"LR context pixels around each tile (default {DEFAULT_TILE_PAD})")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="fp32; bf16 (CPU or CUDA autocast); fp16 (CUDA only)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--grid", metavar="HR_IMAGE", default=None,
                        help="draw the comparison grid HR | bicubic | each --model for this HR image")
    parser.add_argument("--no_progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.grid is None and not args.inputs:
        parser.error("give at least one input image or folder (or --grid HR_IMAGE)")
    if args.grid is None and len(args.model) > 1:
        parser.error(f"upscaling takes one --model, got {len(args.model)} ({' '.join(args.model)}); several models "
                     f"are for --grid. Put the input images before --model: INPUT... --model PATH")
    if args.tile < 0 or args.tile_pad < 0:
        parser.error("--tile and --tile_pad must be >= 0")
    return args


def _upscale_all(args, model, scale, progress, failures, written):
    """The main loop: every input, one at a time; failures are collected, never fatal."""
    for input_path, _ in tqdm(find_inputs(args.inputs), desc="images", unit="image", disable=not progress):
        target = output_path(input_path, args.output_folder, scale)
        try:
            if target in written:  # photo.jpg and photo.png would both become photo_x4.png
                raise ValueError(f"its output {target} was already written from {written[target]} in this run; "
                                 f"rename one of the two inputs.")
            sr_img = upscale_image(model, read_image(input_path), tile=args.tile, tile_pad=args.tile_pad,
                                   precision=args.precision, progress=progress)
            write_image(sr_img, target)
            written[target] = input_path
            tqdm.write(f"wrote {target} ({sr_img.mode} {sr_img.width}x{sr_img.height})")
        except (FileNotFoundError, ValueError, RuntimeError, OSError) as error:
            # Keep going: one bad file should not cost the user the rest of the folder.
            failures.append((input_path, error))
            tqdm.write(f"error: {input_path}: {error}", file=sys.stderr)


def main(argv=None):
    """Run the command line; returns the exit status (0: all done, 1: something failed)."""
    args = parse_args(argv)
    progress = not args.no_progress
    try:
        device = torch.device(args.device)
        models = [load_model(path, device, args.scale) for path in args.model]
        _autocast_context(args.precision, device)  # fail now, not after the first image, on a bad precision
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1

    if args.grid is not None:
        try:
            labelled = [(model, f"{Path(path).stem} ({description.split(' ')[0]})")
                        for (model, description), path in zip(models, args.model)]
            grid = comparison_grid(utils.load_image(args.grid, mode="RGB"), labelled, tile=args.tile,
                                   tile_pad=args.tile_pad, precision=args.precision, progress=progress)
            grid_path = Path(args.output_folder) / f"{Path(args.grid).stem}_grid_x{labelled[0][0].scaling_factor}.png"
            write_image(grid, grid_path)
        except (FileNotFoundError, ValueError, RuntimeError, OSError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        print(f"wrote {grid_path}")
        if not args.inputs:
            return 0

    model, description = models[0]
    scale = int(model.scaling_factor)
    print(f"model: {description}")
    failures, written = [], {}
    with warnings.catch_warnings():  # restores the warning machinery when done
        # Warnings (skipped files, 8-bit fallbacks) are printed through tqdm so they do not break the bars.
        warnings.simplefilter("always")
        warnings.showwarning = lambda message, *rest, **kwargs: tqdm.write(f"warning: {message}", file=sys.stderr)
        _upscale_all(args, model, scale, progress, failures, written)
    if failures:
        print(f"error: {len(failures)} of {len(failures) + len(written)} input(s) failed "
              f"(the {len(written)} output(s) written are kept):", file=sys.stderr)
        for input_path, error in failures:
            print(f"  {input_path}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
