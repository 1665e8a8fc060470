"""Upscale any image with any of our generators, in bounded memory -- or draw the tutorial's comparison grid.

The classic tutorial could only *evaluate*: it always downsampled an HR image first and upscaled that. This script
upscales the image you give it, as it is:

    python super_resolve.py photo.jpg           # x4 into upscaled/photo_x4.png, with the shipped model for its
                                                # kind: 'realistic' for a JPEG, 'compact' for others (default_model_for)
    python super_resolve.py photo.jpg --model srresnet    # the shipped SRResNet (weights/README.md)
    python super_resolve.py photo.jpg scans/ --model checkpoint_srgan.pth --output_folder upscaled/
    python super_resolve.py big.png --model RealESRGAN_x4plus.pth --output_folder out/ --tile 256 --precision bf16
    python super_resolve.py photo.jpg --model realesr-general-x4v3.pth --outscale 3.5 --output_folder out/
    python super_resolve.py photo.jpg --model realesr-general-wdn-x4v3.pth \\
        --interpolate_with realesr-general-x4v3.pth --alpha 0.5 --output_folder out/   # Real-ESRGAN's denoise 0.5

(--outscale: any output scale, the network's output resized; --interpolate_with / --alpha: network interpolation,
(1 - alpha) x model + alpha x the other, inference.load_generator_or_blend.) And, for learners, it still draws the
tutorial's comparison (HR | bicubic | SRResNet | SRGAN/ESRGAN ...):

    python super_resolve.py --grid butterfly.png --model srresnet.pth srgan.pth --output_folder out/
    python super_resolve.py --strip photo.jpg --model compact srresnet --crop 100 60 64 48 --output_folder out/

How it works, top to bottom:
  1. `read_image()` / `write_image()`: real files -- phone photos (EXIF orientation), greyscale, transparency
     (RGBA / LA / palette), 16-bit greyscale PNGs, CMYK JPEGs -- in, and a PNG of the same kind out.
  2. `upscale_image()`: an image of any of these kinds through the network. The network itself runs in tiles in
     inference.upscale (so that only one tile's activations are ever in memory), which eval.py and the validation
     during training run too (metrics.evaluate_set). Any other output
     scale is a resize of the network's output (`resize_to_outscale()`).
  3. `comparison_grid()`: the tutorial's figure, with a label (and PSNR against HR, as eval.py measures it) on each
     panel; `photo_strip()`: the same for a real photo with no HR image, each panel labelled with its NIQE.
  4. `main()`: the command line -- files and folders in, `<stem>_x<s>.png` out, failures listed at the end.

Output files are always PNG (lossless, and the only common format that holds transparency and 16 bits); a JPEG
input therefore gives a PNG output, with the input's ICC colour profile when it has one (icc_profile_for). Outputs are
written atomically (temporary name, then a hard link to the final name, which is refused if the name is taken), so a
crash never leaves half a PNG behind, a failing input never touches the outputs already written, and two runs writing
one folder at once never replace each other's files.

Limits (honest ones): Pillow (13 included) reads a 16-bit *RGB* PNG as 8-bit RGB and cannot write one, so such
a file is upscaled and saved as 8-bit RGB (a warning says so); only 16-bit *greyscale* PNGs ('I;16') keep their
16 bits end to end. 32-bit float images ('F') are refused. Animated images use their first frame (a warning says
so). The whole output is held in memory before it is written (about OUTPUT_BYTES_PER_PIXEL bytes per output pixel):
an image whose output would be larger than --max_output_megapixels is refused before anything is decoded, with the
memory it would need (`check_output_size()`). When the output folder is also an input folder, the files in it named
like our outputs (`*_x<s>.png`) are skipped (`find_inputs()`), so that a second run does not upscale the first
run's outputs again. A file already in the output folder with an output's name is never replaced without --overwrite
(it may be a picture of yours), and a file this run wrote over is never read after as an input.
"""
import argparse
import math
import re
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont, UnidentifiedImageError
from tqdm import tqdm

import cli
import inference
import metrics
import png_writer
import utils

# ======================================================================================================
# 1. Real files in and out
# ======================================================================================================

class ImageData:
    """An image ready for the network, plus what is needed to write it back in the same kind.

    rgb:   (1, 3, H, W) float32 in [0, 1]    what the network sees (greyscale replicated to 3 channels)
    alpha: (1, 1, H, W) float32 in [0, 1] or None
    grey:  True if the output should be greyscale ('L' / 'LA' / 'I;16')
    bits:  8 or 16
    icc_profile: the file's embedded ICC profile (bytes) when it describes the output's colours, else None
    """

    def __init__(self, rgb, alpha, grey, bits, icc_profile=None):
        self.rgb, self.alpha, self.grey, self.bits, self.icc_profile = rgb, alpha, grey, bits, icc_profile


def icc_profile_for(img, grey):
    """
    The ICC profile embedded in an image file (Pillow's img.info['icc_profile']), when it can go with the output: an
    RGB profile for colour outputs, a grey one for grey outputs. None otherwise: no profile (the colours are sRGB's,
    by the web's convention), or one of another colour space, e.g. a CMYK JPEG's, which does not describe the RGB
    pixels its conversion gives.

    Why carry the profile rather than convert the pixels to sRGB? The network upscales the numbers it is given, and
    for a photo with a wide-gamut profile (Display P3 from phones, Adobe RGB from cameras) those numbers only mean
    the right colours together with the profile. Carried into the PNG, every colour-managed viewer and editor shows
    the output exactly as the input, and nothing of the gamut is lost (a conversion to sRGB clips the colours outside
    it); Real-ESRGAN's and chaiNNer's users compare the output with the input side by side and expect the same
    colours. (The ICC header names the profile's colour space in bytes 16-19: 'RGB ', 'GRAY', 'CMYK', ...)
    """
    profile = img.info.get("icc_profile")
    if not isinstance(profile, bytes) or len(profile) < 20:
        return None
    return profile if profile[16:20] == (b"GRAY" if grey else b"RGB ") else None


def read_image(path):
    """
    Read any image file Pillow understands into an ImageData, the right way up.

    * EXIF orientation is applied (utils.load_image does it): phone photos are stored sideways with a tag.
    * 'L' / '1' greyscale: replicated to RGB for the network (all our models take 3 channels), written back as 'L'.
    * 'RGBA' / 'LA' / palette with transparency: the alpha channel is split off; see write side for why.
    * 'P' palette without transparency, 'CMYK', 'YCbCr', 'LAB', 'HSV', 'RGBX': converted to RGB.
    * 16-bit greyscale ('I;16' PNGs, also 'I'): read at full 16-bit precision, written back as 16 bits.
    * 16-bit RGB PNGs: Pillow only reads their top 8 bits; we warn and continue at 8 bits.
    * An embedded ICC profile (wide-gamut photos) is kept for the output when it fits it (icc_profile_for).

    :raises FileNotFoundError, ValueError: with a message naming the file
    """
    img = utils.load_image(path, mode=None)  # decoded, EXIF-transposed, own mode kept (16-bit grey too)
    if _png_bit_depth_and_colour_type(path) in ((16, 2), (16, 6), (16, 4)):
        warnings.warn(f"{path} is a 16-bit colour (or grey + alpha) PNG; Pillow reads and writes only 8 bits per "
                      f"channel of such files, so it is upscaled and saved at 8 bits.")

    mode = img.mode
    if mode in utils.GREY_16BIT_MODES:
        grey = utils.grey_16bit_values(img, path)  # (H, W), [0, 1], all 16 bits (load_image would round to 8)
        rgb = torch.from_numpy(grey).expand(3, -1, -1)[None].contiguous()  # (1, 3, H, W), [0, 1]
        return ImageData(rgb, None, grey=True, bits=16, icc_profile=icc_profile_for(img, grey=True))
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
    return ImageData(rgb, alpha, grey=grey, bits=8, icc_profile=icc_profile_for(img, grey))


def _png_bit_depth_and_colour_type(path):
    """(bit depth, colour type) from a PNG's IHDR header, or None for other files.

    Pillow decodes 16-bit RGB(A) and grey+alpha PNGs (colour types 2, 6, 4) into 8-bit modes without saying so;
    the header is the only place that tells."""
    with open(path, "rb") as file:
        header = file.read(26)
    if len(header) < 26 or header[:8] != b"\x89PNG\r\n\x1a\n" or header[12:16] != b"IHDR":
        return None
    return header[24], header[25]


def upscale_image(model, image, tile=inference.DEFAULT_TILE, tile_pad=inference.DEFAULT_TILE_PAD, precision="fp32",
                  progress=False, outscale=None):
    """
    Upscale an ImageData into a PIL image of the same kind (L / LA / RGB / RGBA / I;16), s times larger, or
    `outscale` times larger (any factor, e.g. 3.5 with an x4 model: see resize_to_outscale).

    Why is alpha upscaled separately, with plain bicubic? The networks were trained on RGB photos only: they
    have no input for a 4th channel, and an alpha mask (flat areas, hard edges) is not a photo anyway -- a
    "hallucinating" GAN would invent texture in it. Bicubic keeps the mask smooth and exactly aligned with the
    colour (same pixel-centre convention as the network's x s grid).
    """
    scale = int(model.scaling_factor)
    sr_rgb = inference.upscale(model, image.rgb, tile=tile, tile_pad=tile_pad, precision=precision,
                           progress=progress)  # (1, 3, H*s, W*s), [0, 1]
    channels = sr_rgb[0]  # (3, H*s, W*s)
    if image.grey:
        # Back to one channel with the BT.601 luma weights (what Pillow's convert('L') uses). The input channels
        # were equal, so this only averages away the small colour casts the network may add.
        weights = utils.LUMA_WEIGHTS.to(channels.dtype)
        channels = torch.einsum("chw,c->hw", channels, weights)[None]  # (1, H*s, W*s)
    if image.alpha is not None:
        sr_alpha = F.interpolate(image.alpha, scale_factor=scale, mode="bicubic", align_corners=False)
        channels = torch.cat([channels, sr_alpha[0].clamp(0.0, 1.0).to(channels.dtype)])  # (C + 1, H*s, W*s)
    if outscale is not None and outscale != scale:
        channels = resize_to_outscale(channels, image.rgb.shape[-2:], outscale)
    return to_pil(channels, bits=image.bits)


def outscale_size(height, width, outscale):
    """The output size for an h x w input at `outscale`: (round(h * outscale), round(w * outscale)), halves rounded
    up, at least 1 pixel."""
    return tuple(max(1, math.floor(side * outscale + 0.5)) for side in (height, width))


def resize_to_outscale(channels, input_size, outscale):
    """
    Real-ESRGAN's --outscale: the network runs at its own scale s, and its output is resized to the requested
    factor, (C, H s, W s) -> (C, round(H outscale), round(W outscale)), in [0, 1], before rounding to 8 or 16 bits.

    The filter is metrics.imresize on the float values: MATLAB's bicubic (Keys' cubic, a = -0.5), widened when
    shrinking, which is the common case (x4 -> x3.5 or x2 shrinks the network's output): a plain bicubic or a
    nearest pick would alias fine detail then. It is the same filter as the evaluation's, it works on floats, so
    16-bit outputs keep their precision and nothing is rounded twice, and any number of channels (alpha too) is
    resized alike. (Real-ESRGAN resizes with OpenCV's Lanczos; Lanczos is a touch sharper, with a little more
    ringing; bicubic is the filter the rest of this project, and its tests, already rely on.)
    """
    output_size = outscale_size(*input_size, outscale)
    return metrics.imresize(channels, output_size=output_size).clamp_(0.0, 1.0)  # bicubic overshoots a little


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
    levels_out = torch.from_numpy(array)  # (H, W, C), the same memory: PyTorch writes it, on all its threads
    # A band of rows at a time: a 16384 x 16384 RGB output is 3 GB in float32, and converting it in one go would
    # make three more such temporaries (x * 255, round, clamp); band by band the extra memory is a few MB.
    band = max(1, (1 << 22) // max(1, width * n_channels))
    for top in range(0, height, band):
        levels = channels[:, top:top + band].float() * max_value  # (C, band, W), new tensor
        levels = levels.round_().clamp_(0, max_value)  # integer-valued, in place
        levels_out[top:top + band] = levels.permute(1, 2, 0)  # cast to the integer type on assignment
    if n_channels == 1:
        return Image.fromarray(array[:, :, 0])  # mode 'L', or 'I;16' for uint16
    return Image.fromarray(array)  # 'LA' (2 channels), 'RGB' or 'RGBA'


# zlib's effort when writing PNGs. Level 6 (Pillow's default) spends most of its time on the last few percent: the
# 4000x4000 output of the compact model on a photo took 2.67 s to write with Pillow at 6 (10.0 MB), 1.04 s at 3
# (11.5 MB) and 0.70 s at 1 (12.4 MB), on one core of an AVX-512 EPYC, where the network itself took about 2 s. At x4
# the output is 16 times the input, so writing it is a large share of the whole run: level 1 is 3.8 times faster for
# a file 24% larger. png_writer.py then spreads the compression over the threads (0.22 s on two, 12.3 MB).
PNG_COMPRESS_LEVEL = 1
PNG_MODES = ("L", "LA", "RGB", "RGBA", "I;16")  # what to_pil makes: written by png_writer.py


def write_image(img, path, overwrite=True, icc_profile=None):
    """
    Save a PIL image as PNG atomically (utils.atomic_write): a crash, a full disk or Ctrl+C leaves either the old
    file or the complete new one, never half a PNG that an image viewer (or the next script) chokes on.

    The modes to_pil makes are written by png_writer.write_png, which compresses bands of rows on all of PyTorch's
    threads at once (4 times faster than Pillow on two cores, for the same pixels); other modes by Pillow.

    :param overwrite: False takes the name only if no file has it at that moment (utils.atomic_write): of two runs
                      writing one output folder at once, the second to finish fails this file instead of replacing
                      the first's, however close the two are
    :param icc_profile: an ICC profile (bytes) to embed, or None
    :raises ValueError: (overwrite=False) a file of that name is there, in one line
    """
    if img.mode in PNG_MODES:
        pixels = np.asarray(img)  # (H, W) or (H, W, C), uint8 ('I;16': uint16)
        def write(file):
            png_writer.write_png(file, pixels, PNG_COMPRESS_LEVEL, icc_profile, threads=torch.get_num_threads())
    else:
        options = {} if icc_profile is None else {"icc_profile": icc_profile}
        def write(file):
            img.save(file, format="PNG", compress_level=PNG_COMPRESS_LEVEL, **options)
    try:
        utils.atomic_write(path, write, overwrite=overwrite)
    except FileExistsError:
        raise ValueError(already_exists(path, "appeared while this run upscaled: another run writing there, or a "
                                              "file of yours")) from None


# ======================================================================================================
# 2. The tutorial's comparison grid
# ======================================================================================================

def comparison_grid(hr_img, models, tile=inference.DEFAULT_TILE, tile_pad=inference.DEFAULT_TILE_PAD, precision="fp32"):
    """
    The tutorial's figure: HR | bicubic | each model's output, side by side, labelled with name and PSNR.

    The panels are made and measured as eval.py makes and measures them (metrics.py): the HR image is cropped
    top-left to a multiple of the scale and shrunk with MATLAB's bicubic imresize; "bicubic" upscales that LR image
    back with imresize, and each model upscales the same LR image (in tiles, inference.upscale). Each PSNR is the
    standard protocol's (luma Y, `scale` pixels shaved from the borders), so it is the figure eval.py gives for this
    image. GAN outputs look sharper yet score lower.

    :param hr_img: PIL image (any mode; converted to RGB)
    :param models: list of (model, label) pairs, all with the same scaling_factor
    :return: PIL RGB image
    """
    scales = {int(model.scaling_factor) for model, _ in models}
    if len(scales) != 1:
        raise ValueError(f"The grid compares models of one scale, but got scales {sorted(scales)}; "
                         f"pass models of the same scale.")
    scale = scales.pop()
    hr = metrics.modcrop_array(np.asarray(hr_img.convert("RGB")), scale)  # (H, W, 3), uint8
    height, width = hr.shape[:2]
    if min(height, width) < 2 * scale + 11:
        raise ValueError(f"The HR image ({width}x{height} after cropping to a multiple of {scale}) is too small for a "
                         f"x{scale} grid: measuring it needs {2 * scale + 11} pixels a side; use a larger image.")
    lr = metrics.imresize(hr, scale=1 / scale)  # (H / s, W / s, 3), uint8

    panels = [("HR", Image.fromarray(hr))]
    for model, label in [(None, "Bicubic"), *models]:
        sr = metrics.upscale_array(model, lr, scale, precision=precision, tile=tile, tile_pad=tile_pad)
        psnr, _ = metrics.evaluate_pair(sr, hr, scale)
        panels.append((f"{label}  {psnr:.2f} dB", Image.fromarray(sr)))
    return side_by_side(panels)


def photo_strip(lr_img, models, crop=None, tile=inference.DEFAULT_TILE, tile_pad=inference.DEFAULT_TILE_PAD,
                precision="fp32"):
    """
    The comparison for a real photo, which has no HR image: bicubic | each model's output, each labelled with its
    name and NIQE (metrics.calculate_niqe, of the whole upscaled image: lower is better), cropped to `crop` to show
    detail. With no HR there is no PSNR; NIQE rewards sharp-looking statistics, artefacts included, so the picture
    is the evidence and the number only a guide.

    :param lr_img: PIL image, the photo as it is (e.g. a JPEG), upscaled as super_resolve.py would
    :param models: list of (model, label) pairs of one scale
    :param crop: (left, top, width, height) of the region shown, in the photo's own pixels (None: all of it)
    :return: PIL RGB image
    """
    scales = {int(model.scaling_factor) for model, _ in models}
    if len(scales) != 1:
        raise ValueError(f"The strip compares models of one scale, but got scales {sorted(scales)}.")
    scale = scales.pop()
    lr = np.array(lr_img.convert("RGB"))  # (h, w, 3), uint8 (a writable copy, as torch.from_numpy wants)
    left, top, width, height = crop or (0, 0, lr.shape[1], lr.shape[0])
    if left + width > lr.shape[1] or top + height > lr.shape[0]:
        raise ValueError(f"The crop {width}x{height} at ({left}, {top}) does not fit in the {lr.shape[1]}x"
                         f"{lr.shape[0]} photo: give a --crop inside it.")
    panels = []
    for model, label in [(None, "Bicubic"), *models]:
        sr = metrics.upscale_array(model, lr, scale, precision=precision, tile=tile, tile_pad=tile_pad)  # uint8
        niqe = metrics.calculate_niqe(sr, crop_border=scale)
        shown = sr[top * scale:(top + height) * scale, left * scale:(left + width) * scale]
        panels.append((f"{label}  NIQE {niqe:.2f}", Image.fromarray(shown)))
    return side_by_side(panels)


def side_by_side(panels):
    """One row of (label, PIL image) panels of one size, a label strip above each: the grid's and the strip's layout."""
    width, height = panels[0][1].size
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
    for index, (label, panel) in enumerate(panels):
        left = index * (width + gap)
        canvas.paste(panel, (left, label_height))
        while draw.textlength(label, font=font) > width and len(label) > 1:  # shorten labels that do not fit
            label = label[:-2] + "…"
        draw.text((left + 2, 4), label, fill="black", font=font)
    return canvas


# ======================================================================================================
# 3. Command line
# ======================================================================================================

# The names output_path() gives: <stem>_x4.png, <stem>_x3.5.png.
OUTPUT_NAME = re.compile(r"_x\d+(\.\d+)?\.png$")


def find_inputs(inputs, output_folder=None):
    """
    Expand the command-line inputs into (path, given_explicitly) pairs.

    A folder contributes every image file directly inside it, sorted by name; files that Pillow does not
    recognise as images are skipped with a warning (a folder of photos often holds a .txt or a .DS_Store), unless
    they are named as images (.png, .jpg, ...: Pillow's registered extensions): a 0-byte photo.png or a web page
    saved as photo.jpg is a damaged input, kept so that it is reported as a failure. An explicit file is always kept,
    so that a bad one is reported as a failure, not skipped quietly. A file given more than once (two spellings of
    one path, or a file and its folder) is kept once, with a note.
    A folder that is also `output_folder` holds our own outputs of earlier runs: the files named like them
    (OUTPUT_NAME, photo_x4.png) are skipped with one warning, or each run would upscale the last one's outputs again
    (photo_x4_x4.png, x16, then x64). Give such a file explicitly to upscale it anyway.
    """
    found = []
    image_suffixes = Image.registered_extensions()
    for item in inputs:
        item = Path(item)
        if not item.is_dir():
            found.append((item, True))
            continue
        paths = sorted(p for p in item.iterdir() if p.is_file())
        if output_folder is not None and Path(output_folder).is_dir() and item.samefile(output_folder):
            ours = [path for path in paths if OUTPUT_NAME.search(path.name)]
            if ours:
                warnings.warn(f"skipping {len(ours)} file(s) in {item} named like this script's outputs "
                              f"(<name>_x<s>.png, e.g. {ours[0].name}), since {item} is also the output folder; "
                              f"give such a file by name to upscale it again.")
                paths = [path for path in paths if not OUTPUT_NAME.search(path.name)]
        for path in paths:
            try:
                with Image.open(path):  # reads the header only: cheap
                    pass
            except (UnidentifiedImageError, OSError):
                if path.suffix.lower() not in image_suffixes:
                    warnings.warn(f"skipping {path}: not an image file")
                    continue  # (named as an image, it is kept: reading it fails, and says why)
            except Image.DecompressionBombError:
                pass  # an image, but a huge one: reading it will report the problem clearly
            found.append((path, False))
    return found


def unique_inputs(inputs):
    """The (path, given_explicitly) pairs of find_inputs with each file once, in the order first given: a file given
    twice (two spellings of one path, or a file and its folder) is upscaled once, with a note, rather than failing
    the second time for an output name already taken."""
    unique = {}  # resolved path -> (path, explicit), the first spelling
    for path, explicit in inputs:
        first = unique.setdefault(path.resolve(), (path, explicit))[0]
        if first is not path:
            also = f" (also as {first})" if str(first) != str(path) else ""
            warnings.warn(f"{path} is given more than once{also}: upscaled once")
    return list(unique.values())


# The memory the output of one image takes, per output pixel: the network's output as float32 RGB (12 bytes), its
# 8-bit copy (3) and Pillow's image (4: Pillow stores RGB as 4 bytes), plus a margin for the grey and --outscale
# steps; an alpha channel adds its float32 upscale and a 4-channel float32 copy (20 bytes more). Measured: a
# 1000 x 1000 input at x4 (16 megapixels out) raises the peak memory by 20.7 bytes per output pixel for RGB, 20.4 for
# grey, 41.9 for RGBA.
OUTPUT_BYTES_PER_PIXEL = 24
ALPHA_BYTES_PER_PIXEL = 20
DEFAULT_MAX_OUTPUT_MEGAPIXELS = 500  # about 12 GB: e.g. a 24-megapixel photo at x4 (384 megapixels) fits


def check_output_size(path, scale, max_megapixels):
    """
    Refuse, before anything is decoded, an image whose output would not fit in memory: the whole output is held in
    memory before it is written (the network itself runs in tiles, inference.upscale), about OUTPUT_BYTES_PER_PIXEL bytes
    per output pixel (more with alpha), so a 9600 x 9600 PNG of 268 kB would need ~35 GB at x4.

    Only the file's header is read (Image.open is lazy). A file Pillow cannot open is left to read_image to report.

    :param scale: the output's scale: the network's, or --outscale when that is larger
    :param max_megapixels: the largest output allowed, in megapixels (0: no limit)
    :raises ValueError: the output is too large (saying the memory it would need and the flag that allows it), or
                        the image is beyond Pillow's own limit against decompression bombs
    """
    try:
        with Image.open(path) as img:  # the header only
            width, height = img.size
            has_alpha = img.mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in img.info
    except Image.DecompressionBombError as error:
        raise ValueError(f"{error} Pillow refuses to open an image this large, and its x{scale:g} output would be "
                         f"larger still; split the image into parts first.") from None
    except (UnidentifiedImageError, OSError):
        return
    output_height, output_width = outscale_size(height, width, scale)
    megapixels = output_width * output_height / 1e6
    if max_megapixels and megapixels > max_megapixels:
        bytes_per_pixel = OUTPUT_BYTES_PER_PIXEL + (ALPHA_BYTES_PER_PIXEL if has_alpha else 0)
        gigabytes = output_width * output_height * bytes_per_pixel / 1e9
        raise ValueError(f"its x{scale:g} output would be {output_width}x{output_height} ({megapixels:,.0f} "
                         f"megapixels), which needs about {gigabytes:,.1f} GB of memory: more than "
                         f"--max_output_megapixels {max_megapixels:g} allows. Give a larger --max_output_megapixels "
                         f"(0: no limit) if this machine has the memory, or split the image into parts.")


def output_path(input_path, output_folder, scale):
    """`<output_folder>/<stem>_x<s>.png` (e.g. photo_x4.png, photo_x3.5.png) -- always PNG (lossless; holds alpha
    and 16-bit grey)."""
    return Path(output_folder) / f"{Path(input_path).stem}_x{scale:g}.png"


def write_comparison(kind, image_path, labelled, draw, args):
    """Draw a --grid or a --strip of `image_path` (draw: PIL image -> the picture) and write it to
    <output_folder>/<stem>_<kind>_x<scale>.png, never over a file already there without --overwrite.

    :return: the exit status: 0, or 1 after one line on stderr"""
    path = Path(args.output_folder) / f"{Path(image_path).stem}_{kind}_x{labelled[0][0].scaling_factor}.png"
    try:
        check_not_overwriting(path, args.overwrite)
        write_image(draw(utils.load_image(image_path, mode="RGB")), path, args.overwrite)
    except (FileNotFoundError, ValueError, RuntimeError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {path}")
    return 0


def comparing_only(args):
    """Whether the command only draws a --grid or a --strip (no input files to upscale)."""
    return (args.grid is not None or args.strip is not None) and not args.inputs


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="*", help="image files and/or folders of images to upscale")
    parser.add_argument("--model", nargs="+", default=None,
                        help=f"default: per input, '{inference.DEFAULT_MODEL_FOR_JPEG}' for a JPEG file (trained on "
                             f"compressed, noisy photos), '{inference.DEFAULT_MODEL}' for any other (the best PSNR on "
                             "clean images). A shipped model ('compact': fast on a CPU; 'realistic': for JPEG photos; "
                             "'srresnet': slower, sharper edges; the GANs 'realistic_gan' (a sharper look for JPEG "
                             "photos, at about 1 dB of PSNR and a faint fine texture at 300%%) and 'srgan' (invented "
                             "texture for clean images); weights/README.md says how they were trained) or "
                             "generator file(s): our checkpoints, export.py's .pth / .safetensors files, official "
                             "ESRGAN / Real-ESRGAN weights (architecture detected) or ncnn models (x.param, x.bin "
                             "beside it); several only with --grid or --strip")
    parser.add_argument("--output_folder", default="upscaled",
                        help="where <stem>_x<s>.png files are written (default: upscaled/, in the current folder)")
    cli.add_scaling_factor_argument(parser, default=None,
                                      help="expected upscaling factor; an error if the model does not provide it")
    parser.add_argument("--tile", type=int, default=inference.DEFAULT_TILE,
                        help=f"LR tile side in pixels, 0 = whole image at once (default {inference.DEFAULT_TILE}); "
                             "the compact models on a CPU split an image into rows instead (the untiled result)")
    parser.add_argument("--tile_pad", type=int, default=inference.DEFAULT_TILE_PAD,
                        help=f"LR context pixels around each tile (default {inference.DEFAULT_TILE_PAD})")
    parser.add_argument("--precision", choices=("auto", *inference.PRECISIONS), default=None,
                        help="auto (the default for upscaling; --grid measures in fp32, as eval.py): bf16 where the CPU or GPU computes it natively, else fp32 (bf16 "
                             "outputs are within 1-2 levels of fp32's, 54 dB or more); fp32: exact, and tiles give "
                             "the untiled result; bf16 (CPU or CUDA autocast); fp16 (CUDA only)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--outscale", type=float, default=None, metavar="FACTOR",
                        help="the output's scale, any factor (e.g. 3.5 with an x4 model): the network runs at its "
                             "own scale and its output is resized to round(H x FACTOR) x round(W x FACTOR) with "
                             "MATLAB-style bicubic (default: the model's scale)")
    parser.add_argument("--max_output_megapixels", type=float, default=DEFAULT_MAX_OUTPUT_MEGAPIXELS, metavar="MP",
                        help=f"refuse an image whose output would be larger than this many megapixels (the output "
                             f"is held in memory, about {OUTPUT_BYTES_PER_PIXEL} bytes a pixel; 0: no limit; default "
                             f"{DEFAULT_MAX_OUTPUT_MEGAPIXELS:g}, about "
                             f"{DEFAULT_MAX_OUTPUT_MEGAPIXELS * OUTPUT_BYTES_PER_PIXEL / 1e3:.0f} GB)")
    inference.add_interpolation_arguments(parser)
    parser.add_argument("--grid", metavar="HR_IMAGE", default=None,
                        help="draw the comparison grid HR | bicubic | each --model for this HR image")
    parser.add_argument("--strip", metavar="PHOTO", default=None,
                        help="draw the comparison for a real photo (no HR image): bicubic | each --model, labelled "
                             "with NIQE (lower is better), cropped to --crop")
    parser.add_argument("--crop", type=int, nargs=4, metavar=("LEFT", "TOP", "WIDTH", "HEIGHT"), default=None,
                        help="the region of the --strip photo to show, in its own pixels (default: all of it)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace files already in --output_folder that have an output's name (without it, such "
                             "a file is left as it is and its input fails with a line: it may be a picture of yours)")
    parser.add_argument("--no_progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    comparing = args.grid is not None or args.strip is not None
    if args.model is None and comparing:  # a --grid or --strip compares the model its image would be upscaled with
        args.model = [inference.default_model_for(args.grid if args.grid is not None else args.strip)]
    if not comparing and not args.inputs:
        parser.error("give at least one input image or folder (or --grid HR_IMAGE, or --strip PHOTO)")
    if not comparing and len(args.model or []) > 1:
        parser.error(f"upscaling takes one --model, got {len(args.model)} ({' '.join(args.model)}); several models "
                     f"are for --grid and --strip. Put the input images before --model: INPUT... --model PATH")
    if args.tile < 0 or args.tile_pad < 0 or args.max_output_megapixels < 0:
        parser.error("--tile, --tile_pad and --max_output_megapixels must be >= 0")
    if 0 < args.tile < inference.min_tile(args.tile_pad):  # mostly repeated work (inference.MIN_TILE says why)
        print(f"note: --tile {args.tile} raised to {inference.min_tile(args.tile_pad)}: each tile runs with "
              f"--tile_pad {args.tile_pad} pixels of context on each side, so smaller tiles repeat that work many "
              f"times over and save no memory worth having (--tile 0: the whole image at once)", file=sys.stderr)
        args.tile = inference.min_tile(args.tile_pad)
    if args.outscale is not None and (not 0 < args.outscale < math.inf or comparing):
        parser.error("--outscale must be a number > 0 (not inf or nan), and is for upscaling files: --grid and "
                     "--strip compare models at their own scale")
    if args.crop is not None and (args.strip is None or min(args.crop) < 0 or min(args.crop[2:]) == 0):
        parser.error("--crop LEFT TOP WIDTH HEIGHT (non-negative, a width and height above 0) goes with --strip")
    inference.check_interpolation_arguments(parser, args, args.model or [])
    return args


def already_exists(target, why="from an earlier run, or a file of yours"):
    """The line that says an output's name is taken and the file is left as it is."""
    return (f"{target} already exists ({why}): it is left as it is. Give --overwrite to replace it, or another "
            f"--output_folder.")


def check_not_overwriting(target, overwrite):
    """Refuse (ValueError) to write `target` over a file that is already there, unless --overwrite: a file named like
    an output that this run did not write may be the user's own picture (the caller skips the targets it wrote).
    This early check saves the work of upscaling; write_image(overwrite=False) is what guarantees it, atomically."""
    if target.exists() and not overwrite:
        raise ValueError(already_exists(target))


def _upscale_all(args, model_for, progress, failures, written):
    """The main loop: every input, one at a time, through the model model_for(path) gives it (with the reason when
    the model was chosen for the file, or None); failures are collected, never fatal."""
    inputs = find_inputs(args.inputs, args.output_folder)
    # A folder that gives no image is a mistake to report, not an empty success (a typo, or the wrong folder).
    for folder in (Path(item) for item in args.inputs if Path(item).is_dir()):
        if not any(not explicit and path.parent == folder for path, explicit in inputs):
            failures.append((folder, ValueError("no image files in this folder (it is empty, or holds no file "
                                                "Pillow reads as an image)")))
            tqdm.write(f"error: {folder}: {failures[-1][1]}", file=sys.stderr)
    inputs = unique_inputs(inputs)
    for input_path, _ in tqdm(inputs, desc="images", unit="image", disable=not progress):
        model, why = model_for(input_path)
        scale = int(model.scaling_factor)
        target = output_path(input_path, args.output_folder, args.outscale or scale)
        wrote_it = [source for output, source in written.items() if output.resolve() == input_path.resolve()]
        if wrote_it:  # (with --overwrite) an input this run has written over: never read our own output as input
            warnings.warn(f"skipping {input_path}: this run replaced it with the output of {wrote_it[0]}")
            continue
        try:
            if target in written:  # photo.jpg and photo.png would both become photo_x4.png
                raise ValueError(f"its output {target} was already written from {written[target]} in this run; "
                                 f"rename one of the two inputs.")
            check_not_overwriting(target, args.overwrite)
            # Only regular files: opening a FIFO (or a device) to read its header would wait for a writer forever.
            if input_path.exists() and not input_path.is_file():
                raise ValueError("not a regular file (a FIFO, socket or device): give image files or folders.")
            # The network's output at its own scale is made first, then resized to --outscale: the larger counts.
            check_output_size(input_path, max(scale, args.outscale or scale), args.max_output_megapixels)
            image = read_image(input_path)
            sr_img = upscale_image(model, image, tile=args.tile, tile_pad=args.tile_pad, precision=args.precision,
                                   progress=progress, outscale=args.outscale)
            write_image(sr_img, target, args.overwrite, image.icc_profile)
            written[target] = input_path
            tqdm.write(f"wrote {target} ({sr_img.mode} {sr_img.width}x{sr_img.height})" + (f", {why}" if why else ""))
        except (FileNotFoundError, ValueError, RuntimeError, OSError, MemoryError) as error:
            # Keep going: one bad file should not cost the user the rest of the folder. Running out of memory on one
            # image is such a case too: torch says so with a RuntimeError, NumPy and Pillow with a MemoryError.
            if isinstance(error, MemoryError):
                error = MemoryError(f"out of memory ({str(error) or 'MemoryError'}): lower --max_output_megapixels or "
                                    f"--tile, or split the image into parts")
            failures.append((input_path, error))
            tqdm.write(f"error: {input_path}: {error}", file=sys.stderr)


def main(argv=None):
    """Run the command line; returns the exit status (0: all done, 1: something failed)."""
    args = parse_args(argv)
    progress = not args.no_progress
    try:
        utils.check_output_folder(args.output_folder)  # a file there: one line now, not one per input later
        device = torch.device(args.device)
        # (--interpolate_with: the one --model blended with another, inference.load_generator_or_blend. An x1 / x2
        # model trained on x4 data comes as an x4 model: fed the LR image nearest-upscaled, as in training.)
        # No --model: the two shipped models default_model_for picks from, each input then gets the one for its kind
        # (both loaded here, 20-35 ms each, so that a missing or damaged file is reported before any work).
        model_names = args.model or [inference.DEFAULT_MODEL, inference.DEFAULT_MODEL_FOR_JPEG]
        models = [inference.load_generator_or_blend(path, device, args.scaling_factor, args.interpolate_with,
                                                    args.alpha)[:3] for path in model_names]
        # 'auto' (or no flag): what this device computes fast; a --grid's PSNR is eval.py's only in fp32.
        comparison_precision = inference.resolve_precision(args.precision or "fp32", device)
        args.precision = inference.resolve_precision(args.precision or "auto", device)
        note = inference.precision_note(args.precision, device)  # bf16 emulated: slow, said once here
        if note:
            print(note, file=sys.stderr)
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1

    if args.grid is not None:
        for _, description, _ in models:
            print(f"model: {description}")
        # Panel labels: the file's name and architecture, e.g. 'checkpoint_srresnet (srresnet)', 'srresnet (shipped)'.
        labelled = [(model, f"{path} (shipped)" if inference.shipped_model_path(path) != Path(path)
                     else f"{Path(path).stem} ({description.split(' ')[0]})")
                    for (model, description, _), path in zip(models, args.model)]
        draw = lambda img: comparison_grid(img, labelled, args.tile, args.tile_pad, comparison_precision)  # noqa: E731
        if write_comparison("grid", args.grid, labelled, draw, args) != 0:
            return 1
    if args.strip is not None:
        labelled = [(model, Path(path).stem) for (model, _, _), path in zip(models, args.model)]
        draw = lambda img: photo_strip(img, labelled, args.crop, args.tile, args.tile_pad, comparison_precision)  # noqa: E731
        if write_comparison("strip", args.strip, labelled, draw, args) != 0:
            return 1
    if comparing_only(args):
        return 0

    if args.model is None:
        print(f"model: per input (no --model given): '{inference.DEFAULT_MODEL_FOR_JPEG}' for a JPEG file, "
              f"'{inference.DEFAULT_MODEL}' for any other (a JPEG's blocks and grain: the first removes them, the "
              f"second would sharpen them; --model realistic_gan for a sharper look); precision {args.precision}")
        by_name = {name: model for name, (model, _, _) in zip(model_names, models)}

        def model_for(path):
            name = inference.default_model_for(path)
            kind = "a JPEG file" if name == inference.DEFAULT_MODEL_FOR_JPEG else "not a JPEG file"
            return by_name[name], f"model {name} ({kind})"
    else:
        model, description, _ = models[0]
        print(f"model: {description}; precision {args.precision}")
        model_for = lambda path: (model, None)  # noqa: E731
    failures, written = [], {}
    with warnings.catch_warnings():  # restores the warning machinery when done
        # Warnings (skipped files, 8-bit fallbacks) are printed through tqdm so they do not break the bars.
        warnings.simplefilter("always")
        # Pillow's warning about images over 89 megapixels ("could be decompression bomb"): check_output_size says more.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        warnings.showwarning = lambda message, *rest, **kwargs: tqdm.write(f"warning: {message}", file=sys.stderr)
        _upscale_all(args, model_for, progress, failures, written)
    if failures:
        print(f"error: {len(failures)} of {len(failures) + len(written)} input(s) failed "
              f"(the {len(written)} output(s) written are kept):", file=sys.stderr)
        for input_path, error in failures:
            print(f"  {input_path}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
