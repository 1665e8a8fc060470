"""Helpers shared by every script, in the order a script meets them.

  Device and images             get_device; convert_image and the luma weights; load_image
  Writing files safely          atomic_write, atomic_write_all
  Checkpoints                   save_checkpoint, load_checkpoint (which refuses pickled code), read_safetensors
  Generators for inference      load_generator (our checkpoints, export.py's files and the official files),
                                load_interpolated_generator
  Precision                     resolve_precision, autocast
  Running a generator           match_generator_input, run_generator, upscale (tiled inference)
  Reproducibility               seed_everything, random_seed / random_generator, get_rng_state / set_rng_state
  Command line                  parse_hyperparameters (with deprecated aliases), add_scaling_factor_argument, run_cli
  Training                      GracefulExit, Validation, LogFiles, TrainingLog (and export_command, its last
                                words), setup_distributed, wrap_for_training, ModelEMA, checkpoint_saver,
                                resume_training

The data are in datasets.py, the Real-ESRGAN degradations in degradations.py, and imresize, PSNR / SSIM and the
evaluation protocol in metrics.py.
"""
import argparse
import copy
import hashlib
import json
import math
import os
import pickle
import random
import re
import shlex
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

    A .safetensors file (export.py writes them) holds no pickle at all: it is read with the safetensors package and
    returned in the form of export.py's .pth files (read_safetensors).

    :param path: the .pth (or .safetensors) file
    :param expected_kind: if given ('srresnet' or 'srgan'), the script that must have written it
    :return: the checkpoint dict
    :raises FileNotFoundError, ValueError: with a message that says what to do
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint not found: {path}.")
    if path.suffix.lower() == ".safetensors":
        checkpoint = read_safetensors(path)
        check_checkpoint_kind(checkpoint, expected_kind, path)
        return checkpoint
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
    check_checkpoint_kind(checkpoint, expected_kind, path)
    return checkpoint


def check_checkpoint_kind(checkpoint, expected_kind, path):
    """Raise ValueError, saying which script wrote it, unless train_<expected_kind>.py wrote `checkpoint` (any file
    passes when expected_kind is None)."""
    if expected_kind is not None:
        kind = checkpoint.get("kind") if isinstance(checkpoint, dict) else None
        if kind != expected_kind:
            what = f"was written by train_{kind}.py" if kind else "is not a checkpoint of this project"
            raise ValueError(f"{path} {what}, but a checkpoint of train_{expected_kind}.py is needed here.")


def read_safetensors(path):
    """
    A .safetensors file as a dict in the form of export.py's .pth files: {weights: state dict, 'generator_arch': ...,
    'generator_kwargs': {...}}, with `weights` 'params_ema' or 'params' and the architecture from the string metadata
    export.py writes (see there). A file without that metadata (a model converted by another program) is returned
    as its bare state dict, which load_generator recognises by its key names when it is an official layout.
    """
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt", device="cpu") as file:
            metadata = file.metadata() or {}
            state_dict = {name: file.get_tensor(name) for name in file.keys()}
    except (SafetensorError, OSError) as error:
        raise ValueError(f"Cannot read {path}: it is not a safetensors file or it is damaged ({error}).") from None
    if "generator_arch" not in metadata:
        return state_dict
    return {metadata.get("weights", "params"): state_dict, "generator_arch": metadata["generator_arch"],
            "generator_kwargs": json.loads(metadata["generator_kwargs"])}


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


def load_generator(path, device="cpu", scaling_factor=None, ema=True, expected_kind=None):
    """
    Load a generator for inference from any checkpoint this project understands (what eval.py and super_resolve.py
    use).

    Accepts our own checkpoints (from train_srresnet.py / train_srgan.py, old ones included; the EMA weights are used
    when present), the generator files of export.py (.pth and .safetensors) and the official ESRGAN / Real-ESRGAN /
    BasicSR weight files (architecture inferred from the tensors). Weights stored in fp16 are loaded into the float32
    model (load_state_dict converts them).

    :param scaling_factor: if given, the upscaling factor the model must have. A weight file holds one network with
                           one scale (a pixel-unshuffle x2 variant is its own file), so this only confirms which one
                           you meant: a mismatch is an error rather than a silent x4 when you asked for x2.
    :param ema: False takes the raw weights of a file that also holds EMA weights (which are the default)
    :param expected_kind: if given, the training script our training checkpoints must come from (load_checkpoint);
                          exported and official files are accepted as they are
    :return: (model in eval mode on `device`, a one-line description, the name of its published figures in
             eval.PUBLISHED or None); the model's generator_arch and generator_kwargs say how to build it again
    """
    import models  # imported here: models.py does not depend on utils.py, but utils.py uses models.py here

    checkpoint = load_checkpoint(path)
    if isinstance(checkpoint, dict) and "generator_arch" in checkpoint:
        # Training checkpoints keep the raw and EMA weights as 'generator' / 'generator_ema'; export.py's files as
        # 'params' / 'params_ema' (BasicSR's names). A file with one set of weights gives it either way.
        if expected_kind is not None and "kind" in checkpoint:
            check_checkpoint_kind(checkpoint, expected_kind, path)
        arch = checkpoint["generator_arch"]
        model = models.build_generator(arch, **checkpoint["generator_kwargs"])
        order = ("generator_ema", "params_ema", "generator", "params")
        weights_name = next(name for name in (order if ema else order[2:] + order[:2]) if name in checkpoint)
        model.load_state_dict(checkpoint[weights_name])
        source = (f"train_{checkpoint['kind']}.py, iteration {checkpoint.get('iteration', '?')}"
                  if "kind" in checkpoint else "export.py")
        description = f"{arch} x{model.scaling_factor} from {source} ({weights_name} weights)"
        reference = PUBLISHED_REFERENCE_OF_CHECKPOINT.get((checkpoint.get("kind"), arch))
    elif isinstance(checkpoint, dict) and models.is_official_generator_state_dict(checkpoint):
        if not ema and isinstance(checkpoint.get("params"), dict):
            checkpoint = {"params": checkpoint["params"]}  # the raw weights, not the params_ema preferred otherwise
        model, description = models.generator_from_official_state_dict(checkpoint)
        reference = PUBLISHED_REFERENCE_OF_OFFICIAL_FILE.get(Path(path).stem.lower())
    else:
        raise ValueError(f"{path} holds no generator this project recognises: expected a checkpoint from "
                         f"train_srresnet.py / train_srgan.py, a file of export.py or an official ESRGAN / "
                         f"Real-ESRGAN / BasicSR file.")
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


# The command line of network interpolation, shared by super_resolve.py and eval.py: --model A --interpolate_with B
# --alpha a runs the generator whose weights are (1 - a) * A + a * B (load_interpolated_generator).
def add_interpolation_arguments(parser):
    """--interpolate_with and --alpha (see load_generator_or_blend) for an argparse script with --model."""
    parser.add_argument("--interpolate_with", metavar="PATH", default=None,
                        help="blend the --model generator with this one, weight by weight: (1 - alpha) x model + "
                             "alpha x this (ESRGAN's network interpolation). Any two files of the same architecture: "
                             "a PSNR model and the GAN trained from it, or Real-ESRGAN's realesr-general-wdn-x4v3.pth "
                             "(--model) and realesr-general-x4v3.pth (here), where --alpha is Real-ESRGAN's "
                             "--denoise_strength")
    parser.add_argument("--alpha", type=float, default=None, metavar="A",
                        help="the weight of --interpolate_with, in [0, 1]: 0 gives --model, 1 --interpolate_with")


def check_interpolation_arguments(parser, args, model_paths):
    """Stop with parser.error on --alpha without --interpolate_with (or the reverse), an alpha outside [0, 1], or
    an interpolation with more (or fewer) than one checkpoint in model_paths."""
    if (args.interpolate_with is None) != (args.alpha is None):
        parser.error("--interpolate_with and --alpha go together: --model A --interpolate_with B --alpha 0.5 runs "
                     "(1 - 0.5) x A + 0.5 x B")
    if args.alpha is not None and not 0 <= args.alpha <= 1:
        parser.error(f"--alpha must be in [0, 1] (0: --model, 1: --interpolate_with), not {args.alpha}")
    if args.interpolate_with is not None and len(model_paths) != 1:
        parser.error(f"--interpolate_with blends one --model file with it, got {len(model_paths)} "
                     f"({' '.join(model_paths) or 'none'})")


def load_generator_or_blend(path, device="cpu", scaling_factor=None, interpolate_with=None, alpha=None):
    """
    The generator a script's --model PATH asks for: load_generator(path), or, with interpolate_with, the blend
    (1 - alpha) * path + alpha * interpolate_with (load_interpolated_generator), e.g. Real-ESRGAN's denoise strength s
    as path = realesr-general-wdn-x4v3.pth, interpolate_with = realesr-general-x4v3.pth, alpha = s.

    :return: (model in eval mode on `device`, a one-line description, the name of its published figures or None,
             the name tables give it: path, or 'path ~ interpolate_with @ alpha' for a blend)
    """
    if interpolate_with is None:
        return (*load_generator(path, device, scaling_factor), str(path))
    model, description = load_interpolated_generator(path, interpolate_with, alpha, device)
    if scaling_factor is not None and model.scaling_factor != scaling_factor:
        raise ValueError(f"{path} and {interpolate_with} upscale x{model.scaling_factor}, not x{scaling_factor}: "
                         f"give --scaling_factor {model.scaling_factor}.")
    return model, description, None, f"{path} ~ {interpolate_with} @ {alpha:g}"


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

# The validation settings of both training scripts (see Validation below), added to each one's dictionary too.
VALIDATION_HYPERPARAMETERS = dict(
    val_sets=["Set5"],  # test sets to validate on, from <data_folder>/<name>_test_images.json (a missing one is skipped with a note); the best weights by the first one's PSNR go to best_<kind>.pth
    val_every=1000,  # measure PSNR / SSIM on val_sets every this many iterations, at the start and at the end (0: off)
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
        """The mean of each loss and the iterations per second since the last report (then start afresh).

        :return: (dict name -> mean loss, iterations per second), floats
        """
        means = {name: total.item() / self.count for name, total in self.sums.items()}
        it_per_s = self.count / (time.time() - self.start_time)
        self._reset()
        return means, it_per_s


class Validation:
    """
    PSNR / SSIM of the generator on test sets during training, measured exactly as eval.py measures them, and the
    best weights so far.

    The test images are loaded once, at start-up (metrics.load_test_pairs: the standard protocol, LR made with
    MATLAB's imresize); each validation runs metrics.evaluate_set, the code eval.py runs, on the weights a checkpoint
    gives to eval.py (the EMA when there is one). So the PSNR logged at iteration k is the number eval.py prints for
    the checkpoint saved at iteration k. The images go through utils.upscale, in tiles: large test images take
    bounded memory, as in super_resolve.py.

    Validating changes nothing in training: the generator is measured in eval mode (batch norm uses its running
    statistics and updates none), without gradients, and put back in training mode after; nothing draws a random
    number or touches the data loader. Only the main process validates. The others go on to the next iteration and
    wait there for its gradients; no collective operation is called while it validates, so none can hang.

    The weights with the best PSNR on the first set are written to `best_path`, a generator-only checkpoint that
    load_generator, eval.py and super_resolve.py read like any other. The best score is saved in the training
    checkpoint (state_dict / load_state_dict, through the script's `stateful` objects), so a resumed run keeps it.
    """

    CROP = 64  # side of the LR crop whose SR image is logged at each validation (the first image's centre)

    def __init__(self, hp, kind, generator, ema, best_path, is_main_process, **architecture):
        """
        :param hp: the hyperparameters (val_sets, val_every, data_folder, scaling_factor; stored with the best weights)
        :param kind: 'srresnet' or 'srgan', the script (the best file's `kind`, as in its training checkpoints)
        :param generator: the plain generator (not its DDP / torch.compile wrapper); ema: its ModelEMA, or None
        :param best_path: where the best weights are written (best_<kind>.pth, beside the training checkpoint)
        :param architecture: generator_arch and generator_kwargs, stored with the best weights
        """
        self.hp, self.kind, self.best_path, self.architecture = hp, kind, Path(best_path), architecture
        self.is_main_process = is_main_process
        self.model, self.weights_name = (ema.module, "generator_ema") if ema is not None else (generator, "generator")
        self.best = None  # the best validation so far: {"iteration", "val_set", "psnr"}
        self.pairs, self.bicubic = {}, {}  # test set -> its (name, hr, lr) images; -> bicubic's {"psnr", "ssim"}
        self.crops = {}  # 'lr', 'hr', 'bicubic' -> the fixed crop, uint8 (h, w, 3)

    def load_test_sets(self):
        """Load the test sets, make their LR images and measure bicubic on them, once (TrainingLog calls this when
        training starts, after the training data were found: a missing test list is only a note)."""
        import metrics  # imported here: metrics.py uses utils.py

        hp, s = self.hp, self.hp.scaling_factor
        if hp.val_every <= 0 or not self.is_main_process:
            return
        if self.model.scaling_factor != s:
            print(f"note: no validation: the generator upscales x{self.model.scaling_factor}, and the test sets are "
                  f"measured at the data's scaling factor, x{s}", file=sys.stderr)
            return
        for name, hr_paths in metrics.find_test_lists(hp.data_folder, hp.val_sets, "not validating on").items():
            self.pairs[name] = metrics.load_test_pairs(hr_paths, s)
            self.bicubic[name] = self._scores(*metrics.evaluate_set(None, self.pairs[name], s))
        if self.best is not None and self.first_set not in (None, self.best["val_set"]):
            print(f"note: the best weights so far were chosen by their PSNR on {self.best['val_set']}; from now on "
                  f"{self.first_set} chooses them, and the next validation replaces {self.best_path}", file=sys.stderr)
            self.best = None
        if self.pairs:
            # The crop: the centre of the first LR image (the whole image if smaller), and its HR and bicubic images.
            _, hr, lr = next(iter(self.pairs.values()))[0]
            size = min(self.CROP, lr.shape[0], lr.shape[1])
            top, left = (lr.shape[0] - size) // 2, (lr.shape[1] - size) // 2
            lr_crop = lr[top:top + size, left:left + size]
            self.crops = {"lr": _rgb(lr_crop), "hr": _rgb(hr[top * s:(top + size) * s, left * s:(left + size) * s]),
                          "bicubic": _rgb(metrics.upscale_array(None, lr_crop, s))}

    @staticmethod
    def _scores(psnr, ssim):
        return {"psnr": psnr, "ssim": ssim}

    @property
    def first_set(self):
        """The test set whose PSNR picks the best weights (the first of val_sets that has a list), or None."""
        return next(iter(self.pairs), None)

    def due(self, iteration, last):
        """Whether to validate after `iteration` completed iterations (never in processes that do not validate)."""
        return bool(self.pairs) and (iteration % self.hp.val_every == 0 or last)

    def __call__(self, iteration):
        """
        Measure the generator now, after `iteration` completed iterations, and keep its weights if they are the best
        so far (iteration 0, the starting point, is measured but never kept: it is not this run's work).

        :return: (scores: test set -> {"psnr", "ssim"}, the SR image of the fixed crop (h s, w s, 3) uint8,
                  whether these weights are the new best)
        """
        import metrics

        s = self.hp.scaling_factor
        modes = {module: module.training for module in self.model.modules()}
        self.model.eval()
        try:
            scores = {name: self._scores(*metrics.evaluate_set(self.model, pairs, s)) for name, pairs in
                      self.pairs.items()}
            sr_crop = metrics.upscale_array(self.model, self.crops["lr"], s)
        finally:
            for module, training in modes.items():
                module.train(training)
        psnr = scores[self.first_set]["psnr"]
        is_best = iteration > 0 and (self.best is None or psnr > self.best["psnr"])
        if is_best:
            self.best = {"iteration": iteration, "val_set": self.first_set, "psnr": psnr}
            save_checkpoint({"kind": self.kind, "iteration": iteration, **self.architecture,
                             self.weights_name: self.model.state_dict(), "val": scores,
                             "hyperparameters": vars(self.hp)}, self.best_path)
        return scores, sr_crop, is_best

    def state_dict(self):
        return {"best": self.best}

    def load_state_dict(self, state):
        self.best = state["best"]


def _rgb(img):
    """A uint8 image (h, w) or (h, w, 3) as (h, w, 3): grey images repeated into three channels, for display."""
    return np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img


class LogFiles:
    """
    The logs of a run, for people and for scripts, in its output folder: TensorBoard event files in
    `tensorboard_<kind>/` (watch them with `tensorboard --logdir <output folder>`), and the same numbers as JSON
    lines in `log_<kind>.jsonl`, one record per line, e.g.

        {"iteration": 200, "time": 1700000000.0, "losses": {"loss": 0.0123}, "learning_rate": 0.0001, "it_per_s": 5.1}
        {"iteration": 200, "time": 1700000001.2, "val": {"Set5": {"psnr": 28.91, "ssim": 0.8231}}}

    In TensorBoard a value's tag is its path in the record ('losses/loss', 'val/Set5/psnr') and its step the
    iteration; `time` is the Unix time. Images go to TensorBoard only.

    A resumed run continues the same logs, with each iteration once: what was written after the iteration of the
    checkpoint it resumes from (between the last save and a crash) is dropped. The JSON lines are rewritten with
    the records up to that iteration; TensorBoard hides the later events itself (SummaryWriter's purge_step). A run
    from scratch (start_iteration 0) starts both afresh.
    """

    def __init__(self, output_folder, kind, start_iteration):
        try:
            from torch.utils.tensorboard import SummaryWriter  # imported here: only the main process writes logs
        except ImportError as error:
            raise RuntimeError(f"TensorBoard is not installed ({error}): pip install -r requirements.txt.") from None
        output_folder = Path(output_folder)
        output_folder.mkdir(parents=True, exist_ok=True)
        self.jsonl_path = output_folder / f"log_{kind}.jsonl"
        kept = [record for record in read_jsonl(self.jsonl_path) if record["iteration"] <= start_iteration] \
            if start_iteration > 0 and self.jsonl_path.is_file() else []
        text = "".join(json.dumps(record) + "\n" for record in kept)
        atomic_write(self.jsonl_path, lambda file: file.write(text.encode("utf-8")))
        self.jsonl = open(self.jsonl_path, "a", encoding="utf-8")
        # purge_step: TensorBoard hides the events of steps >= it written before (all of them, for a fresh run).
        self.tensorboard = SummaryWriter(output_folder / f"tensorboard_{kind}",
                                         purge_step=start_iteration + 1 if start_iteration > 0 else 0)

    def write(self, record):
        """Append one record {"iteration", "time", ...} to the JSON lines, and each of its numbers to TensorBoard."""
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()  # a record is on disk as soon as it is written, whatever happens next
        for tag, value in _flatten(record):
            if tag not in ("iteration", "time"):
                self.tensorboard.add_scalar(tag, value, record["iteration"], walltime=record["time"])
        self.tensorboard.flush()

    def add_image(self, tag, image, iteration):
        """An image (h, w, 3) uint8 in TensorBoard (stored as PNG: read back, it is the same pixels)."""
        self.tensorboard.add_image(tag, image, iteration, dataformats="HWC")
        self.tensorboard.flush()

    def close(self):
        self.jsonl.close()
        self.tensorboard.close()


def _flatten(record, prefix=""):
    """(tag, value) for every number in a nested dict: {"val": {"Set5": {"psnr": x}}} -> ("val/Set5/psnr", x)."""
    for key, value in record.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}/")
        else:
            yield prefix + key, value


def read_jsonl(path):
    """The records of a JSON-lines log (LogFiles), as a list of dicts; a last line cut short by a crash is left out."""
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return records


class TrainingLog:
    """
    The bookkeeping at the end of every training iteration, shared by both training scripts:

      * the running losses, reported every `print_every` iterations (with the learning rate and the speed) on the
        progress bar and in the log files (LogFiles: TensorBoard and JSON lines);
      * validation (Validation) every `val_every` iterations, at the start and at the end: PSNR / SSIM on the
        progress bar, in a line on the screen and in the log files, and the SR image of a fixed crop in TensorBoard;
      * the NaN / inf check, before any validation or save, so that a broken model never overwrites the last good
        checkpoint (or the best one);
      * a checkpoint every `checkpoint_every` iterations, at the end, and when Ctrl+C / SIGTERM arrives;
      * the stop on Ctrl+C / SIGTERM, in every process at the same iteration.

    The loop of a training script then reads:

        log = utils.TrainingLog(["loss"], hp, start_iteration, device, save, checkpoint_path, is_main_process,
                                validation=validation, kind="srresnet")
        for iteration in log.iterations():
            ...                                        # one training step
            if log.end_of_iteration(iteration, loss=loss):
                break                                  # a signal arrived; the checkpoint is saved
        log.close()

    Only the main process prints, validates and writes files.
    """

    def __init__(self, loss_names, hp, start_iteration, device, save, checkpoint_path, is_main_process,
                 description="training", learning_rate=None, validation=None, kind=None):
        """
        :param loss_names: the names of the losses given to end_of_iteration
        :param hp: the hyperparameters (iterations, print_every, checkpoint_every)
        :param save: save(iteration) writes the checkpoint (see checkpoint_saver)
        :param checkpoint_path: where it is written (for the messages); the log files go beside it
        :param learning_rate: optional function () -> the current learning rate, reported with the losses
        :param validation: a Validation, or None (no validation)
        :param kind: 'srresnet' or 'srgan': the log files are log_<kind>.jsonl and tensorboard_<kind>/ (None: none)
        """
        self.hp, self.save, self.checkpoint_path = hp, save, checkpoint_path
        self.is_main_process, self.learning_rate, self.validation = is_main_process, learning_rate, validation
        self.stop_signal = GracefulExit()
        if validation is not None:
            validation.load_test_sets()
        self.running_losses = RunningLosses(loss_names, device, start_iteration)
        self.log_files = LogFiles(Path(checkpoint_path).parent, kind, start_iteration) \
            if is_main_process and kind is not None else None
        self.postfix = {}  # what the progress bar shows after the counter: the last losses, speed, scores
        self.progress = tqdm(range(start_iteration, hp.iterations), initial=start_iteration, total=hp.iterations,
                             disable=not is_main_process, desc=description)
        if start_iteration == 0 and validation is not None and validation.pairs:
            # A fresh run: bicubic's scores and the crop's HR and bicubic images once, then the starting point.
            if self.log_files is not None:
                self.log_files.write({"iteration": 0, "time": time.time(), "bicubic": validation.bicubic})
                for name in ("hr", "bicubic"):
                    self.log_files.add_image(f"val_crop/{name}", validation.crops[name], 0)
            self.validate(0)

    def iterations(self):
        """The iterations still to run, start_iteration .. iterations - 1 (advancing the progress bar)."""
        return self.progress

    def end_of_iteration(self, iteration, **losses):
        """Record the losses of `iteration`, then report, check, validate and save as due. Returns True when training
        must stop now (a signal arrived: the checkpoint has just been saved)."""
        completed = iteration + 1
        self.running_losses.add(**losses)
        stop_now = self.stop_signal.should_stop()  # Ctrl+C / SIGTERM in any process: save and leave, all together
        last = completed == self.hp.iterations
        report_now = completed % self.hp.print_every == 0 or last
        validate_now = self.validation is not None and self.validation.due(completed, last)
        save_now = completed % self.hp.checkpoint_every == 0 or last or stop_now
        if report_now or validate_now or save_now:
            self.running_losses.check_finite(completed, self.checkpoint_path)  # never save a NaN model over a good one
        if report_now:
            self.report(completed, *self.running_losses.report())
        if validate_now:
            self.validate(completed)  # before the save: the checkpoint then holds the best score, this one included
        if save_now:
            self.save(completed)
        return stop_now

    def report(self, iteration, losses, it_per_s):
        """Show and log the mean losses since the last report (name -> float), the speed and the learning rate."""
        record = {"iteration": iteration, "time": time.time(), "losses": losses}
        if self.learning_rate is not None:
            record["learning_rate"] = self.learning_rate()
        record["it_per_s"] = it_per_s
        self.postfix.update({name: f"{value:.4f}" for name, value in losses.items()})
        if self.learning_rate is not None:
            self.postfix["learning_rate"] = f"{record['learning_rate']:.1e}"
        self.postfix["it_per_s"] = f"{it_per_s:.2f}"
        if self.is_main_process:
            self.progress.set_postfix(self.postfix)
        if self.log_files is not None:
            self.log_files.write(record)

    def validate(self, iteration):
        """Validate now (the main process only; see Validation), show and log the scores and the crop's SR image."""
        start = time.time()
        scores, sr_crop, is_best = self.validation(iteration)
        bicubic = self.validation.bicubic
        self.progress.write(f"iteration {iteration}: " + ", ".join(
            f"{name} {s['psnr']:.2f} dB / {s['ssim']:.4f} (bicubic {bicubic[name]['psnr']:.2f} / "
            f"{bicubic[name]['ssim']:.4f})" for name, s in scores.items())
            + (f"; best so far, saved to {self.validation.best_path}" if is_best else ""))
        self.postfix.update({name: f"{s['psnr']:.2f}dB" for name, s in scores.items()})
        self.progress.set_postfix(self.postfix)
        if self.log_files is not None:
            self.log_files.write({"iteration": iteration, "time": time.time(), "val": scores})
            self.log_files.add_image("val_crop/sr", sr_crop, iteration)
        self.running_losses.start_time += time.time() - start  # the speed reported is the training's own

    def close(self):
        self.progress.close()
        if self.log_files is not None:
            self.log_files.close()
        if self.is_main_process:
            print(f"Checkpoint: {self.checkpoint_path}")
            best = self.validation.best if self.validation is not None else None
            if best is not None:
                print(f"Best validated weights: {self.validation.best_path} (iteration {best['iteration']}, "
                      f"{best['val_set']} {best['psnr']:.2f} dB)")
            paths = [self.checkpoint_path] + ([self.validation.best_path] if best is not None else [])
            print("To run the generator in other programs, export it (to .onnx, .pth or .safetensors; see the "
                  "README, \"Using your model elsewhere\"):\n" + "\n".join(f"    {export_command(p)}" for p in paths))


def export_command(path):
    """The command that exports the generator of a checkpoint for other programs (export.py), to an ONNX file beside
    it: checkpoint_srgan.pth -> srgan.onnx, best_srgan.pth -> best_srgan.onnx."""
    path = Path(path)
    output = path.with_name(path.stem.removeprefix("checkpoint_") + ".onnx")
    script = Path(__file__).resolve().with_name("export.py")
    script = os.path.relpath(script) if Path.cwd() in script.parents else str(script)  # 'export.py' when run here
    return f"python {shlex.quote(script)} {shlex.quote(str(path))} --output {shlex.quote(str(output))}"


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
    if "rng_state" not in checkpoint:
        raise ValueError(f"This {checkpoint.get('kind')} checkpoint holds a generator only (such as best_"
                         f"{checkpoint.get('kind')}.pth, the best validated weights), not a run to resume: resume "
                         f"from checkpoint_{checkpoint.get('kind')}.pth.")
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
