"""Helpers shared by every script, in the order a script meets them.

  Device and images             get_device; convert_image and the luma weights; load_image
  Writing files safely          atomic_write, atomic_write_all
  Checkpoints                   save_checkpoint, load_checkpoint (which refuses pickled code)
  Generators for inference      load_generator (our checkpoints and the official files), load_interpolated_generator
  Precision                     resolve_precision, autocast
  Running a generator           match_generator_input, run_generator, upscale (tiled inference)
  Reproducibility               seed_everything, random_seed / random_generator, get_rng_state / set_rng_state
  Command line                  parse_hyperparameters (with deprecated aliases), add_scaling_factor_argument, run_cli
  Training                      GracefulExit, TrainingLog, setup_distributed, wrap_for_training, ModelEMA,
                                checkpoint_saver, resume_training

The data are in datasets.py, the Real-ESRGAN degradations in degradations.py, and imresize, PSNR / SSIM and the
evaluation protocol in metrics.py.
"""
import argparse
import copy
import hashlib
import math
import os
import pickle
import random
import re
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm import tqdm

# ImageNet statistics (RGB), used to normalise images the way the pretrained VGG19 expects.
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406])
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225])

# Luma, as MATLAB's rgb2ycbcr computes it for RGB in [0, 1]: Y = 16 + 65.481 R + 128.553 G + 24.966 B, in [16, 235]
# (the "studio range" of ITU-R BT.601: 219 levels). The weights are 219 x the BT.601 luma coefficients (0.299, 0.587,
# 0.114). float64, because MATLAB computes in double and the metrics must match it bit for bit. This is the one copy
# of these numbers in the project; everything else derives from it.
RGB_TO_Y_WEIGHTS = torch.tensor([65.481, 128.553, 24.966], dtype=torch.float64)
# Full-range luma weights (they sum to 1): the grey value of an RGB image, e.g. for greyscale outputs and grey noise.
LUMA_WEIGHTS = RGB_TO_Y_WEIGHTS / RGB_TO_Y_WEIGHTS.sum()

IMAGE_FORMATS = ("pil", "[0, 1]", "[-1, 1]", "imagenet-norm", "y-channel")


def get_device():
    """The device to train / run on: the first CUDA GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")

# ------------------------------------------------------------------------------------------------------
# Image conversions
# ------------------------------------------------------------------------------------------------------
def _channel_view(stats, img):
    """Reshape a 3-vector so that it broadcasts over the channel axis of a (3, H, W) or (N, 3, H, W) image."""
    shape = (3, 1, 1) if img.dim() == 3 else (1, 3, 1, 1)
    return stats.to(img.device, img.dtype).view(shape)


def convert_image(img, source, target):
    """
    Convert an image between the representations used in this project.

    Representations:
        'pil':           a PIL image (8 bits per channel, RGB)
        '[0, 1]':        a float tensor (3, H, W) or (N, 3, H, W) with values in [0, 1]
        '[-1, 1]':       the same, rescaled to [-1, 1] (what a tanh output produces)
        'imagenet-norm': the same, normalised with ImageNet's mean and std (what VGG19 expects)
        'y-channel':     luma Y of BT.601 (MATLAB's rgb2ycbcr), (H, W) or (N, H, W), in [16, 235];
                         the channel PSNR/SSIM are computed on in most SR papers (target only)

    Every conversion goes through '[0, 1]'. Going to 'pil' (8 bits) rounds to the nearest level and
    clips to [0, 255]: truncating instead would make every image about half a grey level darker.

    :param img: the image, in the `source` representation
    :param source: one of 'pil', '[0, 1]', '[-1, 1]', 'imagenet-norm'
    :param target: one of 'pil', '[0, 1]', '[-1, 1]', 'imagenet-norm', 'y-channel'
    :return: the image in the `target` representation
    """
    if source not in IMAGE_FORMATS[:4] or target not in IMAGE_FORMATS:
        raise ValueError(f"Cannot convert from {source!r} to {target!r}; formats are {IMAGE_FORMATS}.")
    if source == target:
        return img

    # Step 1: source -> [0, 1].
    if source == "pil":
        img = TF.to_tensor(img.convert("RGB"))  # (3, H, W), uint8 / 255 -> [0, 1]
    elif source == "[-1, 1]":
        img = (img + 1.0) / 2.0
    elif source == "imagenet-norm":
        img = img * _channel_view(IMAGENET_STD, img) + _channel_view(IMAGENET_MEAN, img)

    # Step 2: [0, 1] -> target.
    if target == "pil":
        if img.dim() == 4:
            raise ValueError("convert_image(..., target='pil') takes one image (3, H, W), not a batch.")
        img_uint8 = (img.detach().float().cpu() * 255.0).round().clamp(0, 255).to(torch.uint8)
        return Image.fromarray(img_uint8.permute(1, 2, 0).numpy(), mode="RGB")
    if target == "[0, 1]":
        return img
    if target == "[-1, 1]":
        return img * 2.0 - 1.0
    if target == "imagenet-norm":
        return (img - _channel_view(IMAGENET_MEAN, img)) / _channel_view(IMAGENET_STD, img)
    # target == 'y-channel': weighted sum over the channel axis, plus the 16 offset.
    weights = RGB_TO_Y_WEIGHTS.to(img.device, img.dtype)
    return torch.einsum("...chw,c->...hw", img, weights) + 16.0


# ------------------------------------------------------------------------------------------------------
# Loading images
# ------------------------------------------------------------------------------------------------------
def load_image(path, mode="RGB"):
    """
    Open an image file and decode it fully, with a clear error for the mistakes a user can make.

    The file is decoded here (not lazily, as PIL does by default), so a truncated file fails now with a
    message that names it, not later inside a DataLoader worker. EXIF orientation is applied, so a phone
    photo is the right way up.

    :param path: path to the image file
    :param mode: PIL mode to convert to ('RGB' by default; None keeps the file's own mode)
    :return: a PIL image
    :raises FileNotFoundError: the file does not exist
    :raises ValueError: the file is not a readable image (corrupt, truncated, not an image)
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Image not found: {path}. Check the path (if it comes from a data list, the "
                                f"images have moved: rebuild the lists with create_data_lists.py).")
    try:
        with Image.open(path) as img:
            img.load()  # decode now: truncated or corrupt data fails here
            img = ImageOps.exif_transpose(img)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as error:
        raise ValueError(f"Cannot read image {path}: it is corrupt, truncated or not an image ({error}). "
                         f"Replace or remove it (and rebuild any data list that names it).") from None
    return img.convert(mode) if mode is not None and img.mode != mode else img


# ------------------------------------------------------------------------------------------------------
# Writing files safely
# ------------------------------------------------------------------------------------------------------
def _write_temporary(path, write):
    """Write a file's new content beside it, under a temporary name unique to this process, and return that name.

    The content is flushed and on the disk (os.fsync) before this returns, so that the rename that follows can never
    publish an empty or half-written file, even after a power cut. mkstemp creates the file readable by its owner
    only; it gets the permissions a new file normally has (0o666 minus the umask)."""
    descriptor, temporary_path = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        umask = os.umask(0)  # the only way to read the umask is to set it
        os.umask(umask)
        os.chmod(temporary_path, 0o666 & ~umask)
    except BaseException:  # also Ctrl+C (KeyboardInterrupt): never leave the temporary file behind
        os.remove(temporary_path)
        raise
    return temporary_path


def atomic_write_all(writers):
    """
    Write several files so that either all of them are complete on disk, or none has changed.

    Each new content is first written to a temporary file in its own folder (`.<name>.<random>.tmp`); only when
    every one is written does os.replace move each over its file. os.replace is atomic within one folder: readers see
    either the old file or the complete new one, never half of it. Any error (a full disk, Ctrl+C, a failing
    `write`) leaves every old file untouched and removes the temporary files.

    :param writers: dict path -> write, where write(file) writes the content into the open binary file it is given
    :return: the paths written, as Path objects
    """
    temporary_paths = {}
    try:
        for path, write in writers.items():
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary_paths[path] = _write_temporary(path, write)
        for path, temporary_path in temporary_paths.items():
            os.replace(temporary_path, path)
    finally:
        for temporary_path in temporary_paths.values():
            if os.path.exists(temporary_path):  # only left over when something above failed
                os.remove(temporary_path)
    return list(temporary_paths)


def atomic_write(path, write):
    """Write one file atomically (see atomic_write_all): a crash while writing leaves the old file intact.

    :param write: write(file) writes the content into the open binary file it is given,
                  e.g. lambda file: torch.save(state, file) or lambda file: img.save(file, format="PNG")
    :return: the path, as a Path
    """
    return atomic_write_all({path: write})[0]


# ------------------------------------------------------------------------------------------------------
# Checkpoints
# ------------------------------------------------------------------------------------------------------
def save_checkpoint(state, path):
    """
    Save a checkpoint (a dict of state dicts, numbers and strings) atomically.

    A crash or Ctrl+C while saving leaves the previous checkpoint intact instead of half a file. Only tensors and
    plain Python values are saved (never pickled modules), so the file loads with weights_only=True on any device.
    """
    atomic_write(path, lambda file: torch.save(state, file))

def load_checkpoint(path, expected_kind=None):
    """
    Load a checkpoint safely: onto the CPU (so a GPU checkpoint loads anywhere) and with weights_only=True
    (so loading a file can never run code hidden in it).

    :param path: the .pth file
    :param expected_kind: if given ('srresnet' or 'srgan'), the script that must have written it
    :return: the checkpoint dict
    :raises FileNotFoundError, ValueError: with a message that says what to do
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint not found: {path}.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "Unsupported global" not in str(error):
            raise ValueError(f"Cannot read checkpoint {path}: it is not a PyTorch checkpoint or it is damaged.") from None
        # The file names Python classes or functions: unpickling them could run arbitrary code.
        offending = re.search(r"GLOBAL (\S+)", str(error))
        raise ValueError(f"Refused to load {path}: it holds Python objects "
                         f"({offending.group(1) if offending else 'not only tensors'}) besides tensors and plain "
                         f"values, and loading those could run code. Only load files you trust; save models as "
                         f"state dicts.") from None
    except Exception as error:  # not a torch file at all (zip error, truncated, ...)
        raise ValueError(f"Cannot read checkpoint {path}: it is not a PyTorch checkpoint or it is "
                         f"damaged ({error}).") from None
    if expected_kind is not None:
        kind = checkpoint.get("kind") if isinstance(checkpoint, dict) else None
        if kind != expected_kind:
            what = f"was written by train_{kind}.py" if kind else "is not a checkpoint of this project"
            raise ValueError(f"{path} {what}, but a checkpoint of train_{expected_kind}.py is needed here.")
    return checkpoint


# ------------------------------------------------------------------------------------------------------
# Generators for inference: our checkpoints and the official weight files
# ------------------------------------------------------------------------------------------------------
# Which published figures (eval.PUBLISHED) a generator is compared with: our checkpoints by (the training script that
# wrote it, architecture), official files by name. A GAN-trained RRDBNet (ESRGAN) has none: it aims at texture, not
# at PSNR.
PUBLISHED_REFERENCE_OF_CHECKPOINT = {
    ("srresnet", "srresnet"): "SRResNet",
    ("srgan", "srresnet"): "SRGAN",
    ("srresnet", "rrdb"): "RRDB-PSNR",
}
PUBLISHED_REFERENCE_OF_OFFICIAL_FILE = {"rrdb_psnr_x4": "RRDB-PSNR"}


def load_generator(path, device="cpu", scaling_factor=None):
    """
    Load a generator for inference from any checkpoint this project understands (what eval.py and super_resolve.py
    use).

    Accepts our own checkpoints (from train_srresnet.py / train_srgan.py, old ones included; the EMA weights are used
    when present) and the official ESRGAN / Real-ESRGAN / BasicSR weight files (architecture inferred from the
    tensors).

    :param scaling_factor: if given, the upscaling factor the model must have. A weight file holds one network with
                           one scale (a pixel-unshuffle x2 variant is its own file), so this only confirms which one
                           you meant: a mismatch is an error rather than a silent x4 when you asked for x2.
    :return: (model in eval mode on `device`, a one-line description, the name of its published figures in
             eval.PUBLISHED or None)
    """
    import models  # imported here: models.py does not depend on utils.py, but utils.py uses models.py here

    checkpoint = load_checkpoint(path)
    if isinstance(checkpoint, dict) and "generator_arch" in checkpoint:
        arch = checkpoint["generator_arch"]
        model = models.build_generator(arch, **checkpoint["generator_kwargs"])
        weights_name = "generator_ema" if "generator_ema" in checkpoint else "generator"
        model.load_state_dict(checkpoint[weights_name])
        description = (f"{arch} x{model.scaling_factor} from train_{checkpoint['kind']}.py, "
                       f"iteration {checkpoint.get('iteration', '?')} ({weights_name} weights)")
        reference = PUBLISHED_REFERENCE_OF_CHECKPOINT.get((checkpoint.get("kind"), arch))
    elif isinstance(checkpoint, dict) and models.is_official_generator_state_dict(checkpoint):
        model, description = models.generator_from_official_state_dict(checkpoint)
        reference = PUBLISHED_REFERENCE_OF_OFFICIAL_FILE.get(Path(path).stem.lower())
    else:
        raise ValueError(f"{path} holds no generator this project recognises: expected a checkpoint from "
                         f"train_srresnet.py / train_srgan.py or an official ESRGAN / Real-ESRGAN / BasicSR file.")
    if scaling_factor is not None and model.scaling_factor != scaling_factor:
        raise ValueError(f"{path} upscales x{model.scaling_factor}, not x{scaling_factor} ({description}): use a "
                         f"model trained for x{scaling_factor} (for x2 / x1, a pixel-unshuffle variant), or give "
                         f"--scaling_factor {model.scaling_factor}.")
    return model.to(device).eval(), description, reference


def load_interpolated_generator(psnr_path, gan_path, alpha, device="cpu", skip_mismatched=False):
    """
    ESRGAN's network interpolation: one generator whose every weight is (1 - alpha) * PSNR + alpha * GAN.

    alpha = 0 gives the smooth PSNR-oriented network (train_srresnet.py), alpha = 1 the sharp GAN one
    (train_srgan.py, which started from it); values in between trade fidelity for realism without retraining.
    Layers whose shapes differ (e.g. the first convolution of a pixel-unshuffle variant) raise an error, or, with
    skip_mismatched, keep the PSNR network's weights and are named in the description.

    :return: (model in eval mode on `device`, a one-line description)
    """
    import models

    psnr_model, _, _ = load_generator(psnr_path)
    gan_model, _, _ = load_generator(gan_path)
    # The same architecture, or one with a pixel-unshuffle front end (a subclass): their layers then differ in the
    # first convolution only, which interpolate_state_dicts reports (or skips).
    if not (isinstance(psnr_model, type(gan_model)) or isinstance(gan_model, type(psnr_model))):
        raise ValueError(f"Cannot interpolate a {type(psnr_model).__name__} ({psnr_path}) with a "
                         f"{type(gan_model).__name__} ({gan_path}): the two networks must share an architecture.")
    state_dict, skipped = models.interpolate_state_dicts(psnr_model.state_dict(), gan_model.state_dict(), alpha,
                                                         skip_mismatched=skip_mismatched)
    psnr_model.load_state_dict(state_dict)
    description = f"interpolation {1 - alpha:g} x {psnr_path} + {alpha:g} x {gan_path}"
    if skipped:
        description += f" (kept from {psnr_path}: {', '.join(skipped)})"
    return psnr_model.to(device).eval(), description


# ------------------------------------------------------------------------------------------------------
# Precision
# ------------------------------------------------------------------------------------------------------
def resolve_precision(precision, device):
    """
    Pick the arithmetic for training / inference: 'fp32', 'bf16' or 'fp16'.

    'auto' means bf16 autocast where the hardware does it well (CUDA GPUs with bf16, and CPUs with native
    bf16 instructions), else fp16 on older GPUs and fp32 on other CPUs. fp16 exists on CUDA only.
    """
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"
    if precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"precision must be 'auto', 'fp32', 'bf16' or 'fp16', not {precision!r}.")
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("precision 'fp16' needs a CUDA GPU; use 'bf16' or 'fp32' on the CPU.")
    return precision


def autocast(device, precision):
    """
    Mixed precision: inside this context, convolutions and matrix products run in bf16 / fp16 while
    reductions and losses stay in fp32. With precision 'fp32' it does nothing.
    """
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype is not None)


# ------------------------------------------------------------------------------------------------------
# Running a generator on an image
# ------------------------------------------------------------------------------------------------------
# Default tile settings of upscale(). A 256-pixel LR tile (1024 pixels at x4) keeps the full RRDBNet (ESRGAN) at about
# 1 GB of activations in fp32 whatever the image size (README, "Upscaling your own images", has the measurements).
# The 16-pixel pad is far less than the RRDBNet's theoretical receptive field (~350 LR pixels), but the *effective*
# influence of far pixels decays fast: the tests require >= 45 dB PSNR between tiled and untiled outputs with these
# defaults on a real photo. If you ever see a seam, raise the pad (32 costs ~20% more time).
DEFAULT_TILE = 256
DEFAULT_TILE_PAD = 16


def match_generator_input(lr_imgs, generator, scaling_factor):
    """
    Give a generator the input size it expects.

    Most generators upscale by the data's scaling_factor and take the LR image as it is. A pixel-unshuffle model
    that upscales less (e.g. an x1 model with an x4 body, as CutBlur needs) takes the LR image enlarged by
    scaling_factor / generator.scaling_factor with nearest-neighbour interpolation, which adds no information.

    :param lr_imgs: (N, 3, h, w) LR images, any range
    :return: (N, 3, h * k, w * k) with k = scaling_factor / generator.scaling_factor
    """
    if scaling_factor % generator.scaling_factor != 0:
        raise ValueError(f"The generator upscales x{generator.scaling_factor}, which does not divide the scaling "
                         f"factor {scaling_factor}.")
    factor = scaling_factor // generator.scaling_factor
    if factor == 1:
        return lr_imgs
    return torch.nn.functional.interpolate(lr_imgs, scale_factor=factor, mode="nearest")


def run_generator(generator, lr_imgs, precision="fp32"):
    """
    One forward pass of a generator on LR images in [0, 1], without gradients: the one place where a generator is
    run for inference (upscale() runs it on each tile).

    The images go into the generator's input format and come back from its output format (utils.convert_image, with
    the generator's `input_format` / `output_format`), so the caller never needs to know which architecture it holds.

    :param lr_imgs: (N, 3, h, w) float tensor in [0, 1], on any device (moved to the generator's device and dtype)
    :param precision: 'fp32', 'bf16' (CPU or CUDA) or 'fp16' (CUDA only), see resolve_precision
    :return: (N, 3, h * s, w * s) in [0, 1], clamped, on the generator's device, with lr_imgs' float dtype
    """
    parameter = next(generator.parameters())
    device = parameter.device
    out_dtype = lr_imgs.dtype if lr_imgs.is_floating_point() else torch.float32
    # channels_last (NHWC) input: PyTorch then runs every convolution of the model in NHWC, which oneDNN (CPU) and
    # cuDNN (GPU) do much faster than NCHW -- 1.5x for the full RRDBNet in fp32 on an AVX-512 CPU. Same numbers.
    x = lr_imgs.to(device=device, dtype=parameter.dtype).contiguous(memory_format=torch.channels_last)
    x = convert_image(x, "[0, 1]", generator.input_format)
    with torch.inference_mode(), autocast(device, resolve_precision(precision, device)):
        sr_imgs = generator(x)
    # Back to full precision before rescaling: bf16 / fp16 outputs would lose levels in the arithmetic.
    return convert_image(sr_imgs.to(out_dtype), generator.output_format, "[0, 1]").clamp(0.0, 1.0)


def _round_up(value, multiple):
    return int(math.ceil(value / multiple) * multiple)


def upscale(generator, lr_img, tile=DEFAULT_TILE, tile_pad=DEFAULT_TILE_PAD, precision="fp32", progress=False):
    """
    Super-resolve one image, tile by tile, with any generator of the project (super_resolve.py and eval.py use it).

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

    :param generator: a generator with `scaling_factor`, `input_format` and `output_format` attributes, in eval
                      mode; its device (and dtype, e.g. float64 in tests) is where the tiles run
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
    resolve_precision(precision, next(generator.parameters()).device)  # a bad precision fails before any work
    scale = int(generator.scaling_factor)
    out_dtype = lr_img.dtype if lr_img.is_floating_point() else torch.float32

    # Tile borders on multiples of the model's pixel-unshuffle factor (1 for models without unshuffle).
    multiple = int(getattr(generator, "unshuffle_scale", 1))
    _, _, height, width = lr_img.shape
    if tile == 0 or (tile >= height and tile >= width):
        tile = max(height, width)  # one tile: the whole image
    tile = _round_up(tile, multiple)
    tile_pad = _round_up(tile_pad, multiple)

    tiles = [(top, left) for top in range(0, height, tile) for left in range(0, width, tile)]
    sr_img = None  # allocated once we know the model's output channels
    with tqdm(total=len(tiles), desc="tiles", unit="tile", leave=False,
              disable=not progress or len(tiles) == 1) as bar:
        for top, left in tiles:
            bottom, right = min(top + tile, height), min(left + tile, width)
            # The tile plus its context, clamped at the image border.
            pad_top, pad_left = max(top - tile_pad, 0), max(left - tile_pad, 0)
            pad_bottom, pad_right = min(bottom + tile_pad, height), min(right + tile_pad, width)
            lr_tile = lr_img[:, :, pad_top:pad_bottom, pad_left:pad_right]  # (1, C, h + pads, w + pads), [0, 1]

            sr_tile = run_generator(generator, lr_tile.to(out_dtype), precision)  # (1, C', s * .., s * ..), [0, 1]

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


# ------------------------------------------------------------------------------------------------------
# Reproducibility
# ------------------------------------------------------------------------------------------------------
def seed_everything(seed):
    """Seed Python's, NumPy's and PyTorch's random number generators, so that runs can be repeated."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def random_seed(seed, purpose, iteration=0, rank=0):
    """
    The seed of one random stream, derived from (seed, purpose, iteration, rank), so that no two streams collide.

    Training draws random numbers for several purposes, at every iteration and in every process: which crop, the
    order of the images, the degradations, CutBlur's rectangles. Seeds made by arithmetic, such as
    seed * 1000003 + iteration * 1009 + rank (+ 1 for a second purpose), collide: rank r's second stream is then
    rank r + 1's first, and the two processes draw the same "random" numbers. A cryptographic hash of the four
    values has no such pattern, and gives the same number on every machine, in every process and in every run.

    :param seed: the run's seed (the --seed hyperparameter)
    :param purpose: what the stream is for, a short string: 'crop', 'epoch_order', 'degradation', 'cutblur', ...
    :param iteration: the iteration (or epoch, or sample number) the stream is for
    :param rank: the process it is for (0 for streams that every process must share)
    :return: an int in [0, 2^63), for random.Random, numpy or torch.Generator.manual_seed
    """
    digest = hashlib.sha256(f"{seed}/{purpose}/{iteration}/{rank}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def random_generator(seed, purpose, iteration=0, rank=0, device="cpu"):
    """A torch.Generator on `device` seeded with random_seed(seed, purpose, iteration, rank)."""
    return torch.Generator(device=device).manual_seed(random_seed(seed, purpose, iteration, rank))


def get_rng_state():
    """The global torch RNG states (CPU and CUDA), as tensors, for a checkpoint."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    """Restore RNG states saved by get_rng_state()."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ------------------------------------------------------------------------------------------------------
# Command line: the hyperparameter dict at the top of each training script, overridable by flags
# ------------------------------------------------------------------------------------------------------
def _parse_bool(text):
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")


def _parse_number(text):
    try:
        return int(text)
    except ValueError:
        return float(text)


def _parse_optional(text):
    """Flags whose default is None take a string, a number, or 'none'."""
    if text.lower() == "none":
        return None
    for number_type in (int, float):
        try:
            return number_type(text)
        except ValueError:
            pass
    return text


def _flag_arguments(default):
    """argparse's type / nargs / metavar for a flag whose default is `default` (its type follows the default)."""
    if isinstance(default, bool):
        return dict(type=_parse_bool, metavar="true|false")
    if isinstance(default, (list, tuple)):
        # numbers parse as int when written as one ("100000"), else float ("0.5", "2e-4")
        numeric = all(isinstance(value, (int, float)) for value in default)
        return dict(type=_parse_number if numeric else type(default[0]) if default else str, nargs="*")
    if default is None:
        return dict(type=_parse_optional)
    return dict(type=type(default))


class Renamed(NamedTuple):
    """A hyperparameter under its old name, kept so that old command lines and checkpoints still work.

    new: the hyperparameter that replaced it. convert: None when only the name changed; else a function
    (old value, the other hyperparameters as a dict) -> the new hyperparameter's value. example: a value of the
    old flag's type, when it differs from the new one's. note: what to tell the user (default: "use --<new>").
    """
    new: str
    convert: Optional[Callable] = None
    example: Any = None
    note: Optional[str] = None


# Hyperparameters of both training scripts that were renamed: `lr` now always means low resolution (lr_imgs,
# lr_maker), and the learning rate is spelled out.
RENAMED_HYPERPARAMETERS = {"lr": "learning_rate", "lr_milestones": "learning_rate_milestones",
                           "lr_gamma": "learning_rate_gamma"}


def _as_renamed(alias):
    return alias if isinstance(alias, Renamed) else Renamed(alias)


class _DeprecatedFlag(argparse.Action):
    """An old flag that still works: it says on stderr what replaced it, and stores its value."""

    def __init__(self, option_strings, dest, replaced_by, **kwargs):
        super().__init__(option_strings, dest, **kwargs)
        self.replaced_by = replaced_by

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"note: {option_string} is deprecated, {self.replaced_by}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def parse_hyperparameters(defaults, description, script_path=None, argv=None, aliases=None):
    """
    Make every hyperparameter in `defaults` a command-line flag of the same name.

    A flag's type follows its default (int, float, bool as true/false, list as several values, None as
    text / number / 'none'); its help text is the comment on the hyperparameter's line in the script.

    :param defaults: dict name -> default value (the script's hyperparameters)
    :param description: text for --help (the script's docstring)
    :param script_path: the script's file (or a list of files), to read the comments from
    :param aliases: dict old name -> new name (or a Renamed): old flags that still work, say what replaced them on
                    stderr, and set the new hyperparameter; --help does not list them
    :return: argparse.Namespace with one attribute per hyperparameter
    """
    comments = {}
    script_paths = [] if script_path is None else [script_path] if isinstance(script_path, (str, Path)) else script_path
    for path in script_paths:
        for line in Path(path).read_text().splitlines():
            # `name=value,  # comment` in a dict(...) or `"name": value,  # comment` in a {...} literal
            match = re.match(r"\s*\"?(\w+)\"?\s*[=:].*?#\s*(.*)$", line)
            if match and match.group(1) in defaults:
                comments.setdefault(match.group(1), match.group(2))
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, default in defaults.items():
        help_text = f"{comments.get(name, '')} (default: {default})".replace("%", "%%")
        parser.add_argument(f"--{name}", default=default, help=help_text, **_flag_arguments(default))
    converted = {}
    for old, alias in (aliases or {}).items():
        alias = _as_renamed(alias)
        # A plain rename stores straight into the new hyperparameter; a conversion waits until everything is parsed.
        dest = alias.new if alias.convert is None else f"deprecated_{old}"
        if alias.convert is not None:
            converted[dest] = alias
        example = defaults[alias.new] if alias.example is None else alias.example
        parser.add_argument(f"--{old}", dest=dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS,
                            action=_DeprecatedFlag, replaced_by=alias.note or f"use --{alias.new}",
                            **_flag_arguments(example))
    hp = parser.parse_args(argv)
    for dest, alias in converted.items():
        if hasattr(hp, dest):
            value = getattr(hp, dest)
            delattr(hp, dest)
            setattr(hp, alias.new, alias.convert(value, vars(hp)))
    return hp


def rename_hyperparameters(saved, aliases):
    """The hyperparameters of an older checkpoint under today's names (`aliases` as for parse_hyperparameters)."""
    saved = dict(saved)
    for old, alias in (aliases or {}).items():
        alias = _as_renamed(alias)
        if old in saved:
            value = saved.pop(old)
            saved[alias.new] = value if alias.convert is None else alias.convert(value, saved)
    return saved


def add_scaling_factor_argument(parser, **kwargs):
    """--scaling_factor (the one name of the upscaling factor in every script) for an argparse script, and its old
    name --scale, which still works and says so."""
    parser.add_argument("--scaling_factor", type=int, **kwargs)
    parser.add_argument("--scale", dest="scaling_factor", type=int, choices=kwargs.get("choices"),
                        default=argparse.SUPPRESS, help=argparse.SUPPRESS, action=_DeprecatedFlag,
                        replaced_by="use --scaling_factor")

def run_cli(main):
    """
    Run a script's main(), turning the errors a user can cause into one clear line and a non-zero exit.

    FileNotFoundError / ValueError / RuntimeError raised by our code carry a message that says what to do;
    a traceback would only hide it. Set SR_DEBUG=1 to see the full traceback.
    """
    try:
        main()
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        if os.environ.get("SR_DEBUG"):
            raise
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)


# ======================================================================================================
# Training machinery shared by train_srresnet.py and train_srgan.py
# ======================================================================================================
# The speed settings of both training scripts: hyperparameters (and flags) of each, added to its own dictionary. The
# comments here are their --help text.
SPEED_HYPERPARAMETERS = dict(
    precision="auto",  # 'auto', 'fp32', 'bf16' or 'fp16' (autocast); 'auto' picks what the hardware does well
    channels_last=True,  # NHWC memory layout, faster for convolutions with bf16 / fp16
    compile=False,  # torch.compile the networks (slow to start, faster per iteration on GPUs)
    workers=4,  # data-loading processes
    image_cache_mb=2048,  # keep up to this many MB of decoded training images in memory (0: decode an image per crop)
    sync_batch_norm=True,  # with several GPU processes, batch-norm statistics over the global batch (SyncBatchNorm)
    fused_adam=True,  # Adam's update as one fused kernel per step (same math; the default is slow for NHWC weights)
)


class GracefulExit:
    """
    Turn SIGINT (Ctrl+C) and SIGTERM (a cluster's time limit) into a flag the training loop checks after
    each iteration, so that it can save a checkpoint and exit cleanly instead of dying mid-step.
    A second signal exits at once.
    """

    def __init__(self):
        self.requested = False
        for signal_number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signal_number, self._handler)
        # With several processes, all must stop at the same iteration (the others would otherwise wait forever for
        # the gradients of the one that left). They agree through a small CPU (gloo) group: no GPU synchronisation.
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        self.group = torch.distributed.new_group(backend="gloo") if distributed else None

    def should_stop(self):
        """Whether this process or any other received a signal. Call it at the same point in every process."""
        if self.group is None:
            return self.requested
        flag = torch.tensor([int(self.requested)])
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX, group=self.group)
        return bool(flag.item())

    def _handler(self, signal_number, frame):
        if self.requested:  # second Ctrl+C: the user really wants out
            raise KeyboardInterrupt
        self.requested = True
        print(f"\nReceived {signal.Signals(signal_number).name}: saving a checkpoint after this iteration "
              f"(press Ctrl+C again to quit at once).", file=sys.stderr)


def check_finite(loss, iteration, checkpoint_path, since_iteration=None):
    """
    Stop training when a loss becomes NaN or infinite: continuing would only overwrite the last good
    checkpoint with garbage. The checkpoint on disk is left as it is.

    `loss` may be a sum of the losses of the iterations since `since_iteration` (one NaN / inf makes the sum NaN /
    inf): checking a sum now and then instead of every loss spares a GPU synchronisation per iteration.
    """
    if not torch.isfinite(loss):
        when = f"at iteration {iteration}" if since_iteration is None else \
            f"between iterations {since_iteration} and {iteration}"
        raise RuntimeError(f"The loss became {loss.item()} {when}; training stopped. The last "
                           f"good checkpoint is kept at {checkpoint_path}. Try a lower learning rate or "
                           f"precision='fp32', then resume with --checkpoint {checkpoint_path}.")


class RunningLosses:
    """
    The losses of the iterations since the last report, for the progress bar and the NaN check.

    They are summed on the device and read (.item()) only when reported: reading a GPU value makes the CPU wait
    for the GPU, which would otherwise already be queuing the next iteration's work.
    """

    def __init__(self, names, device, start_iteration):
        self.names, self.device = names, device
        self.last_checked = start_iteration  # the sums hold the losses of the iterations since this one
        self._reset()

    def _reset(self):
        self.sums = {name: torch.zeros((), device=self.device) for name in self.names}
        self.count, self.start_time = 0, time.time()

    def add(self, **losses):
        for name, value in losses.items():
            self.sums[name] = self.sums[name] + value.detach().float()
        self.count += 1

    def check_finite(self, iteration, checkpoint_path):
        """One NaN / inf loss makes its sum NaN / inf: stop before a checkpoint overwrites the last good one."""
        check_finite(sum(self.sums.values()), iteration, checkpoint_path, since_iteration=self.last_checked)
        self.last_checked = iteration

    def report(self):
        """The mean of each loss and the iterations per second since the last report (then start afresh)."""
        summary = {name: f"{total.item() / self.count:.4f}" for name, total in self.sums.items()}
        summary["it_per_s"] = f"{self.count / (time.time() - self.start_time):.2f}"
        self._reset()
        return summary


class TrainingLog:
    """
    The bookkeeping at the end of every training iteration, shared by both training scripts:

      * the running losses, reported on the progress bar every `print_every` iterations (with the learning rate);
      * the NaN / inf check, before any save, so that a broken model never overwrites the last good checkpoint;
      * a checkpoint every `checkpoint_every` iterations, at the end, and when Ctrl+C / SIGTERM arrives;
      * the stop on Ctrl+C / SIGTERM, in every process at the same iteration.

    The loop of a training script then reads:

        log = utils.TrainingLog(["loss"], hp, start_iteration, device, save, checkpoint_path, is_main_process)
        for iteration in log.iterations():
            ...                                        # one training step
            if log.end_of_iteration(iteration, loss=loss):
                break                                  # a signal arrived; the checkpoint is saved
        log.close()

    Anything else done every N iterations (validation, a log file) belongs in end_of_iteration, next to the rest.
    """

    def __init__(self, loss_names, hp, start_iteration, device, save, checkpoint_path, is_main_process,
                 description="training", learning_rate=None):
        """
        :param loss_names: the names of the losses given to end_of_iteration
        :param hp: the hyperparameters (iterations, print_every, checkpoint_every)
        :param save: save(iteration) writes the checkpoint (see checkpoint_saver)
        :param checkpoint_path: where it is written (for the messages)
        :param learning_rate: optional function () -> the current learning rate, shown with the losses
        """
        self.hp, self.save, self.checkpoint_path = hp, save, checkpoint_path
        self.is_main_process, self.learning_rate = is_main_process, learning_rate
        self.stop_signal = GracefulExit()
        self.running_losses = RunningLosses(loss_names, device, start_iteration)
        self.progress = tqdm(range(start_iteration, hp.iterations), initial=start_iteration, total=hp.iterations,
                             disable=not is_main_process, desc=description)

    def iterations(self):
        """The iterations still to run, start_iteration .. iterations - 1 (advancing the progress bar)."""
        return self.progress

    def end_of_iteration(self, iteration, **losses):
        """Record the losses of `iteration`, then report, check and save as due. Returns True when training must
        stop now (a signal arrived: the checkpoint has just been saved)."""
        completed = iteration + 1
        self.running_losses.add(**losses)
        stop_now = self.stop_signal.should_stop()  # Ctrl+C / SIGTERM in any process: save and leave, all together
        last = completed == self.hp.iterations
        report_now = completed % self.hp.print_every == 0 or last
        save_now = completed % self.hp.checkpoint_every == 0 or last or stop_now
        if report_now or save_now:
            self.running_losses.check_finite(completed, self.checkpoint_path)  # never save a NaN model over a good one
        if report_now:
            self.report(completed, self.running_losses.report())
        if save_now:
            self.save(completed)
        return stop_now

    def report(self, iteration, summary):
        """Show the mean losses since the last report (summary: name -> text) and the learning rate."""
        if self.learning_rate is not None:
            summary["learning_rate"] = f"{self.learning_rate():.1e}"
        if self.is_main_process:
            self.progress.set_postfix(summary)

    def close(self):
        self.progress.close()
        if self.is_main_process:
            print(f"Checkpoint: {self.checkpoint_path}")

def setup_distributed():
    """
    Join the process group when the script was started by torchrun, else run as a single process.

    torchrun sets RANK, WORLD_SIZE and LOCAL_RANK for each process it starts. Processes talk through NCCL
    on GPUs and gloo on CPUs. Each process then trains on its own slice of every batch, and
    DistributedDataParallel averages the gradients, so N processes take the same steps as one process
    with the whole batch.

    :return: (rank, world_size, device)
    """
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    if world_size == 1:
        return 0, 1, get_device()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        # One process per GPU: NCCL cannot put two processes on one GPU.
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"torchrun started process {local_rank} of this machine, but only "
                               f"{torch.cuda.device_count()} GPU(s) are visible: use --nproc_per_node "
                               f"{torch.cuda.device_count()} (one process per GPU), or CUDA_VISIBLE_DEVICES= to "
                               f"train on the CPU.")
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    torch.distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return rank, world_size, device


def end_distributed():
    """Leave the process group at the end of a torchrun run (nothing to do in a single process)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def wrap_for_training(model, hp, device, world_size):
    """
    The model as the training step runs it: wrapped for several processes (DistributedDataParallel) and for speed
    (torch.compile). The wrappers add prefixes to the state dict, so checkpoints are always written from the plain
    `model`, which the wrapper shares its weights with.

    Batch norm normalises with the statistics of the batch, but each process holds only its slice of it: with
    hp.sync_batch_norm, SyncBatchNorm gathers the statistics of the whole global batch. (PyTorch has it for GPUs
    only: on CPUs each process normalises over its own slice, which changes results slightly for models with batch
    norm.)
    """
    wrapped = model
    if world_size > 1:
        if hp.sync_batch_norm and device.type == "cuda":
            torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # swaps the layers in place, keeping the parameters
        device_ids = [device.index] if device.type == "cuda" else None
        wrapped = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    if hp.compile:
        wrapped = torch.compile(wrapped)
    return wrapped

class ModelEMA:
    """
    An exponential moving average of a model's weights: ema = decay * ema + (1 - decay) * weights, after
    every optimiser step. The average is smoother than the weights themselves (GAN training makes them
    jitter), so ESRGAN / Real-ESRGAN evaluate and release the EMA weights.
    """

    def __init__(self, model, decay):
        self.decay = decay
        self.module = copy.deepcopy(_unwrap(model)).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model):
        ema_state, model_state = self.module.state_dict(), _unwrap(model).state_dict()
        for name, ema_value in ema_state.items():
            if ema_value.is_floating_point():
                ema_value.lerp_(model_state[name], 1.0 - self.decay)
            else:  # integer buffers (batch-norm counters) are copied
                ema_value.copy_(model_state[name])

    def state_dict(self):
        return self.module.state_dict()

    def load_state_dict(self, state_dict):
        self.module.load_state_dict(state_dict)


def training_checkpoint(kind, iteration, hp, stateful, **extra):
    """
    Everything needed to continue a run exactly, as one checkpoint dict.

    :param kind: 'srresnet' or 'srgan' (the script writing it)
    :param iteration: iterations completed
    :param hp: the run's hyperparameters (argparse.Namespace)
    :param stateful: name -> object with a state_dict() (models, optimisers, schedulers, ModelEMA) or None
    :param extra: further plain values (architecture names and constructor arguments)
    """
    state = dict(kind=kind, iteration=iteration, hyperparameters=vars(hp), rng_state=get_rng_state(), **extra)
    state.update({name: obj.state_dict() for name, obj in stateful.items() if obj is not None})
    return state


def checkpoint_saver(kind, path, hp, stateful, is_main_process, **extra):
    """The save(iteration) function of a training script: training_checkpoint() written atomically to `path`, by the
    first process only (all processes hold the same weights)."""
    def save(iteration):
        if is_main_process:
            save_checkpoint(training_checkpoint(kind, iteration, hp, stateful, **extra), path)
    return save


def resume_training(checkpoint, stateful, hp, aliases=None):
    """
    Restore the objects of training_checkpoint() and the RNG states from a checkpoint.

    :param aliases: the script's renamed hyperparameters (see parse_hyperparameters), so that the hyperparameters of
                    an older checkpoint are compared under today's names
    :return: the iteration to continue from
    """
    for name, obj in stateful.items():
        if obj is not None and name in checkpoint:
            obj.load_state_dict(checkpoint[name])
    set_rng_state(checkpoint["rng_state"])
    warn_changed_hyperparameters(rename_hyperparameters(checkpoint["hyperparameters"], aliases), vars(hp))
    return checkpoint["iteration"]


def _unwrap(model):
    """The plain model inside DistributedDataParallel / torch.compile wrappers (their state dicts add prefixes)."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)


def warn_changed_hyperparameters(saved, current, keys_to_ignore=("checkpoint", "iterations", "workers")):
    """On resume, list the hyperparameters that differ from the run being resumed (a common mistake)."""
    changed = [f"{name}: {saved[name]!r} -> {value!r}" for name, value in current.items()
               if name in saved and saved[name] != value and name not in keys_to_ignore]
    if changed:
        print("Note: resuming with hyperparameters that differ from the checkpoint's: " + "; ".join(changed),
              file=sys.stderr)
