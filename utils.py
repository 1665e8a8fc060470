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
                                words), setup_distributed, wrap_for_training, ModelEMA, prepare_output_folder
                                (checks, lock, leftovers), checkpoint_saver, reconcile_resumed_hyperparameters,
                                resume_training

The data are in datasets.py, the Real-ESRGAN degradations in degradations.py, and imresize, PSNR / SSIM and the
evaluation protocol in metrics.py.
"""
import argparse
import atexit
import bisect
import collections
import contextlib
import copy
import fcntl
import glob
import hashlib
import json
import math
import os
import pickle
import random
import re
import shlex
import shutil
import signal
import socket
import sys
import tempfile
import time
import warnings
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
# The modes Pillow gives 16-bit (or wider integer) greyscale images in: 16-bit PNGs and TIFFs ('I;16...'), and 'I'.
GREY_16BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def grey_16bit_values(img, path):
    """
    The pixels of a 16-bit greyscale PIL image (a mode of GREY_16BIT_MODES), scaled to [0, 1]: 65535 is white.

    The one conversion of 16-bit grey in the project: load_image rounds these values to 8 bits, super_resolve.py keeps
    all 16. (Pillow's own convert('L') or convert('RGB') clips such values at 255 instead of scaling them: a typical
    16-bit photo would turn almost entirely white.)

    :return: (H, W) float32 array in [0, 1]
    :raises ValueError: values outside 0..65535 (a 32-bit 'I' image that is not 16-bit data)
    """
    grey = np.asarray(img).astype(np.float32)  # (H, W), 0..65535
    if grey.max(initial=0) > 65535 or grey.min(initial=0) < 0:
        raise ValueError(f"{path}: mode {img.mode!r} with values outside 0..65535 is not a 16-bit image; "
                         f"convert it to a 16-bit or 8-bit PNG first.")
    return grey / 65535.0


def load_image(path, mode="RGB"):
    """
    Open an image file and decode it fully, with a clear error for the mistakes a user can make.

    The file is decoded here (not lazily, as PIL does by default), so a truncated file fails now with a
    message that names it, not later inside a DataLoader worker. EXIF orientation is applied, so a phone
    photo is the right way up. A 16-bit greyscale image is scaled to 8 bits (grey_16bit_values, rounded) before any
    conversion. Of an animated image (GIF, APNG, WebP) only the first frame is used, and a warning says so.

    :param path: path to the image file
    :param mode: PIL mode to convert to ('RGB' by default); a tuple of modes keeps the file's mode when it is one of
                 them (16-bit grey counts as 'L') and converts to the first otherwise, e.g. ('RGB', 'L'); None keeps
                 the file's own mode, 16 bits included
    :return: a PIL image
    :raises FileNotFoundError: the file does not exist
    :raises ValueError: the file is not a readable image (corrupt, truncated, not an image, or too large)
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Image not found: {path}. Check the path (if it comes from a data list, the "
                                f"images have moved: rebuild the lists with create_data_lists.py).")
    try:
        with Image.open(path) as img:
            n_frames = getattr(img, "n_frames", 1)
            img.load()  # decode now: truncated or corrupt data fails here
            img = ImageOps.exif_transpose(img)
    except Image.DecompressionBombError as error:  # Pillow's guard against huge (or malicious) files
        raise ValueError(f"Cannot read image {path}: {error} Use a smaller image, or split it into parts.") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ValueError(f"Cannot read image {path}: it is corrupt, truncated or not an image ({error}). "
                         f"Replace or remove it (and rebuild any data list that names it).") from None
    if n_frames > 1:
        warnings.warn(f"{path} is animated ({n_frames} frames); only its first frame is used.")
    if mode is None:
        return img
    if img.mode in GREY_16BIT_MODES:
        img = Image.fromarray(np.round(grey_16bit_values(img, path) * 255).astype(np.uint8))  # mode 'L'
    modes = (mode,) if isinstance(mode, str) else tuple(mode)
    return img if img.mode in modes else img.convert(modes[0])


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

    :raises RuntimeError: when the file cannot be written (a full disk, no permission), saying which file, why, and
                          that the previous one is intact; the partial temporary file is removed
    """
    path = Path(path)
    try:
        atomic_write(path, lambda file: torch.save(state, file))
    except (OSError, RuntimeError) as error:  # the OS's errors, and those of torch's writer (a short write)
        if isinstance(error, RuntimeError) and "inline_container" not in str(error):
            raise  # not a write that failed (e.g. a DataLoader worker's death, reported by a signal handler)
        if isinstance(error, OSError) and error.strerror:
            reason = error.strerror  # 'No space left on device', 'Permission denied', 'Read-only file system'
        else:  # torch's zip writer says only "unexpected pos 3696640 vs 3696532" when the disk fills
            free = _free_bytes(path.parent)
            reason = f"the disk is full ({free / 2 ** 20:.1f} MB free)" if free is not None and free < 2 ** 20 * 64 \
                else str(error).strip()
        previous = f"the previous {path.name} there is intact" if path.is_file() else "no earlier file was replaced"
        raise RuntimeError(f"Could not write {path}: {reason}; {previous}, and the partial file was removed.") from None


def _free_bytes(folder):
    """The space left for files in `folder` (None if it cannot be told)."""
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None

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
        # The file names Python classes or functions (torch's weights-only unpickler says "GLOBAL <name>", as
        # "Unsupported global: GLOBAL io.open ..." or "unsupported GLOBAL posix.system whose module posix is
        # blocked"): unpickling them could run arbitrary code.
        offending = re.search(r"GLOBAL (\S+)", str(error))
        if offending is None:
            raise ValueError(f"Cannot read checkpoint {path}: it is not a PyTorch checkpoint or it is damaged.") from None
        raise ValueError(f"Refused to load {path}: it holds Python objects ({offending.group(1)}) besides tensors "
                         f"and plain values, and loading those could run code. Only load files you trust; save "
                         f"models as state dicts.") from None
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

# The trained models that ship with the code, in weights/ (weights/README.md is their model card: how each was
# trained and what it scores). Every script that takes a model (--model, --pretrained) also takes these names.
WEIGHTS_FOLDER = Path(__file__).resolve().parent / "weights"
SHIPPED_MODELS = {  # name: (file in weights/, published figures of the same architecture, or None)
    "srresnet": ("srresnet_x4.pth", "SRResNet"),  # the SRGAN paper's SRResNet, PSNR-oriented
    "compact": ("compact_x4.pth", None),  # Real-ESRGAN's SRVGGNetCompact (16 convolutions): the fast default
}
DEFAULT_MODEL = "compact"  # what super_resolve.py upscales with when no --model is given


def shipped_model_path(name_or_path):
    """
    The file of a shipped model named `name_or_path` ('srresnet', 'compact'): weights/<file>. Anything else is a path
    and comes back unchanged (a file of that name in the current folder is a path too, and wins).
    """
    if name_or_path in SHIPPED_MODELS and not Path(name_or_path).exists():
        return WEIGHTS_FOLDER / SHIPPED_MODELS[name_or_path][0]
    return Path(name_or_path)


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

    shipped_name = str(path) if shipped_model_path(path) != Path(path) else None
    path = shipped_model_path(path)  # 'srresnet' / 'compact': the shipped weights/<file>
    if shipped_name is not None and not path.exists():
        raise FileNotFoundError(f"The shipped model '{shipped_name}' should be {path}, which is missing: restore it "
                                f"with `git checkout -- weights/`, or give the path of a checkpoint.")
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
    if shipped_name is not None:
        description = (f"{model.generator_arch} x{model.scaling_factor}, the "
                       f"shipped '{shipped_name}' model ({path.relative_to(WEIGHTS_FOLDER.parent)}; its model card: "
                       f"weights/README.md)")
        reference = SHIPPED_MODELS[shipped_name][1]
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
    :return: Hyperparameters (an argparse.Namespace) with one attribute per hyperparameter, and in `given` the names
             of those set on the command line (a resumed run needs to know: see reconcile_resumed_hyperparameters)
    """
    comments = {}
    script_paths = [] if script_path is None else [script_path] if isinstance(script_path, (str, Path)) else script_path
    for path in script_paths:
        for line in Path(path).read_text().splitlines():
            # `name=value,  # comment` in a dict(...) or `"name": value,  # comment` in a {...} literal
            match = re.match(r"\s*\"?(\w+)\"?\s*[=:].*?#\s*(.*)$", line)
            if match and match.group(1) in defaults:
                comments.setdefault(match.group(1), match.group(2))
    # allow_abbrev=False: argparse would otherwise take a prefix of a flag for the flag (train_srgan.py's --n_blocks 2
    # would silently set --n_blocks_d, the discriminator's); every flag must be given whole.
    parser = argparse.ArgumentParser(description=description, allow_abbrev=False,
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
    # Parsed into a namespace that holds a marker for every hyperparameter: argparse then leaves the markers of the
    # flags not given (instead of writing their defaults), which tells the given ones apart.
    not_given = object()
    hp = parser.parse_args(argv, namespace=Hyperparameters(**{name: not_given for name in defaults}))
    hp.given = {name for name, value in vars(hp).items() if value is not not_given and name in defaults}
    for name, default in defaults.items():
        if getattr(hp, name) is not_given:
            setattr(hp, name, default)
    for dest, alias in converted.items():
        if hasattr(hp, dest):
            value = getattr(hp, dest)
            delattr(hp, dest)
            setattr(hp, alias.new, alias.convert(value, vars(hp)))
            hp.given.add(alias.new)
    return hp


class Hyperparameters(argparse.Namespace):
    """The hyperparameters of a training script, one attribute each (what parse_hyperparameters returns).

    `given` (a set of names: the hyperparameters set on the command line) sits in a slot, outside vars(hp), so that
    vars(hp), which checkpoints store, holds the hyperparameters alone."""
    __slots__ = ("given",)


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


# The hyperparameters of both training scripts whose values are limited (check_training_hyperparameters): counts that
# must be positive, numbers that may be 0 but not negative, and names with a fixed set of values. Each script adds its
# own (architecture sizes, loss names).
TRAINING_POSITIVE = ("crop_size", "scaling_factor", "batch_size", "print_every", "checkpoint_every")
TRAINING_NON_NEGATIVE = ("iterations", "learning_rate", "ema_decay", "workers", "image_cache_mb", "val_every",
                         "queue_size")
TRAINING_CHOICES = dict(precision=("auto", "fp32", "bf16", "fp16"), lr_maker=("pil", "matlab"))


def check_training_hyperparameters(hp, positive=(), non_negative=(), choices=None):
    """
    Stop with one clear line (ValueError, through run_cli) on a flag whose value cannot work, before anything is
    loaded: --print_every 0 would divide by zero at the first iteration, --n_blocks -1 build a network without
    blocks, and an unknown name such as --pixel_loss huber must not be trained as something else.

    :param positive, non_negative: names of numbers that must be > 0 / >= 0, besides TRAINING_POSITIVE and
                                   TRAINING_NON_NEGATIVE
    :param choices: dict name -> the values allowed, besides TRAINING_CHOICES
    """
    for name, allowed in {**TRAINING_CHOICES, **(choices or {})}.items():
        if getattr(hp, name) not in allowed:
            raise ValueError(f"--{name} must be one of {', '.join(map(str, allowed))}, not {getattr(hp, name)!r}.")
    for name in TRAINING_POSITIVE + tuple(positive):
        if getattr(hp, name) <= 0:
            raise ValueError(f"--{name} must be greater than 0, not {getattr(hp, name)}.")
    for name in TRAINING_NON_NEGATIVE + tuple(non_negative):
        if getattr(hp, name) < 0:
            raise ValueError(f"--{name} must be 0 or more, not {getattr(hp, name)}.")


class GracefulExit:
    """
    Turn SIGINT (Ctrl+C) and SIGTERM (a cluster's time limit) into a flag the training loop checks after
    each iteration, so that it can save a checkpoint and exit cleanly instead of dying mid-step.
    A second signal exits at once, except while a checkpoint is being written (inside `saving()`): breaking off
    that write would lose the very checkpoint the first signal asked for, so the save goes on and the run stops
    after it.

    Only the main process of each training process gets here: the data-loading workers ignore both signals
    (datasets.ignore_stop_signals), because `timeout`, Slurm and Kubernetes signal the whole process group, and a
    worker that died of it would take the next batch, and with it the save, down.
    """

    def __init__(self):
        self.requested = False
        self.is_saving = False
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

    @contextlib.contextmanager
    def saving(self):
        """Within this block (a checkpoint being written) a signal only asks to stop after it, never breaks it."""
        self.is_saving = True
        try:
            yield
        finally:
            self.is_saving = False

    def _handler(self, signal_number, frame):
        if self.is_saving:  # any signal during a save: let the save finish, then stop
            self.requested = True
            print(f"\nReceived {signal.Signals(signal_number).name} while writing a checkpoint: saving, please wait "
                  f"(the run stops once it is written).", file=sys.stderr)
            return
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
    `checkpoint_path` is the last good checkpoint, or None when there is none yet (the message then names no file).
    """
    if not torch.isfinite(loss):
        when = f"at iteration {iteration}" if since_iteration is None else \
            f"between iterations {since_iteration} and {iteration}"
        if checkpoint_path is None:  # nothing saved yet (and not resumed): no file to name
            raise RuntimeError(f"The loss became {loss.item()} {when}; training stopped, before any checkpoint was "
                               f"saved. Start again with a lower learning rate or precision='fp32'.")
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
        self.kind = kind
        # The checkpoints the messages may name: this run's, once it has saved one; before that the one it resumed.
        self.saved, self.start_iteration = False, start_iteration
        self.resumed_from = getattr(hp, "checkpoint", None) if start_iteration > 0 else None
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
            self.running_losses.check_finite(completed, self.last_checkpoint)  # never save a NaN model over a good one
        if report_now:
            self.report(completed, *self.running_losses.report())
        if validate_now:
            self.validate(completed)  # before the save: the checkpoint then holds the best score, this one included
        if save_now:
            # A signal during the save waits for it (and, if it was the first, stops the run after the next
            # iteration, which every process then agrees on).
            with self.stop_signal.saving():
                self.save(completed)
            self.saved = True
        return stop_now

    @property
    def last_checkpoint(self):
        """The last good checkpoint of this run: the one it saved last, else the one it resumed from, else None."""
        return self.checkpoint_path if self.saved else self.resumed_from

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
        if self.kind is not None:  # the run is over: another may now use the folder (see prepare_output_folder)
            release_output_folder(Path(self.checkpoint_path).parent, self.kind)
        if self.is_main_process:
            # Only files that exist are named: a run with nothing to train (--iterations at or below the starting
            # iteration) writes no checkpoint, and a run resumed into another folder has no best file there yet.
            if self.saved:
                print(f"Checkpoint: {self.checkpoint_path}")
            else:
                print(f"No checkpoint written: nothing to train from iteration {self.start_iteration} to --iterations "
                      f"{self.hp.iterations}" + (f"; {self.resumed_from} is unchanged" if self.resumed_from else "")
                      + ".")
            best = self.validation.best if self.validation is not None else None
            best_written = best is not None and self.validation.best_path.is_file()
            if best_written:
                print(f"Best validated weights: {self.validation.best_path} (iteration {best['iteration']}, "
                      f"{best['val_set']} {best['psnr']:.2f} dB)")
            paths = ([self.checkpoint_path] if self.saved else []) + ([self.validation.best_path] if best_written else [])
            if paths:
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


def setup_training(hp, kind):
    """
    The set-up both training scripts begin with: the processes (setup_distributed), the precision, the output folder
    (checked and locked by the main process before any work: prepare_output_folder) and the seed (the same in every
    process: identical initial weights).

    :return: (rank, world_size, device, precision)
    """
    rank, world_size, device = setup_distributed()
    precision = resolve_precision(hp.precision, device)
    if rank == 0:
        prepare_output_folder(hp.output_folder, kind)
    seed_everything(hp.seed)
    return rank, world_size, device, precision


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

    Warm-up: at iteration t the decay is min(decay, (1 + t) / (10 + t)), as in TensorFlow's
    ExponentialMovingAverage. Without it, the average of a short run is mostly the random initial weights (with
    decay 0.999, 0.999^750 = 47% of it after 750 iterations: on Set5, 26.7 dB where the weights themselves had
    29.6); with it, the average spans about the last tenth of the run until that reaches 1 / (1 - decay)
    iterations. The decay depends on the iteration only, so a resumed run averages exactly as a whole one.
    """

    def __init__(self, model, decay):
        self.decay = decay
        self.module = copy.deepcopy(_unwrap(model)).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model, iteration):
        """Move the average towards `model`'s weights after the optimiser step of `iteration` (0 for the first)."""
        decay = min(self.decay, (1 + iteration) / (10 + iteration))
        ema_state, model_state = self.module.state_dict(), _unwrap(model).state_dict()
        for name, ema_value in ema_state.items():
            if ema_value.is_floating_point():
                ema_value.lerp_(model_state[name], 1.0 - decay)
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


# ------------------------------------------------------------------------------------------------------
# The output folder of a run: checked, locked and cleaned before training starts
# ------------------------------------------------------------------------------------------------------
_HELD_LOCKS = {}  # lock file -> its open file, for the locks this process holds (see lock_output_folder)


def prepare_output_folder(folder, kind):
    """
    Make a training run's output folder ready before training starts, so that nothing fails only at the first save,
    hours in: it must be a folder (it is created if missing), and writable; it is locked for this run
    (lock_output_folder); and the temporary files that interrupted writes of this run's own files left behind
    (a kill -9 during a save) are removed, with a note.

    Call it in the main process only. TrainingLog.close() releases the lock at the end.

    :param folder: the output folder
    :param kind: 'srresnet' or 'srgan': the script whose files (checkpoint_<kind>.pth, best_<kind>.pth,
                 log_<kind>.jsonl) are written there
    :raises ValueError: with what to do, when the folder is a file, cannot be created or written, or is in use
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"The output folder {folder} is a file, not a folder: give another --output_folder.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # Can files be created there? (The probe is removed on closing; whether a checkpoint fits is a question for
        # checkpoint_saver, which knows its size.)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise ValueError(f"Cannot write to the output folder {folder} ({error.strerror or error}): fix its "
                         f"permissions or free some space, or give another --output_folder.") from None
    lock_output_folder(folder, kind)
    # A temporary file of one of our names can only be left over now: the lock says no other run of this script
    # writes here.
    leftovers = [path for name in (f"checkpoint_{kind}.pth", f"best_{kind}.pth", f"log_{kind}.jsonl")
                 for path in folder.glob(f".{glob.escape(name)}.*.tmp")]
    if leftovers:
        n_bytes = sum(path.stat().st_size for path in leftovers)
        for path in leftovers:
            path.unlink()
        print(f"Note: removed {len(leftovers)} temporary file(s) ({n_bytes / 2 ** 20:.1f} MB) that interrupted saves "
              f"left in {folder}; the files they were to replace are intact.", file=sys.stderr)


def lock_output_folder(folder, kind):
    """
    Take the lock of train_<kind>.py on `folder`, so that a second run writing into the same folder is refused
    (two runs would write the same checkpoint and logs, each over the other's).

    The lock is an flock (fcntl) on the file <folder>/train_<kind>.lock, which says which process holds it. The
    kernel releases an flock when its process ends, however it ends, so a crashed or killed run never leaves the
    folder locked: the next run takes the lock over. A process that holds the lock already (a second run in the same
    Python process, as the tests do) keeps it.

    :raises ValueError: when another process holds the lock
    """
    path = (Path(folder) / f"train_{kind}.lock").resolve()
    if path in _HELD_LOCKS:
        return path
    while True:
        file = open(path, "a+", encoding="utf-8")
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            holder = file.read().strip() or "another process"
            file.close()
            raise ValueError(f"{Path(folder)} is in use by another train_{kind}.py run ({holder}; lock file "
                             f"{path}): wait until it ends, or give another --output_folder.") from None
        # The file may have been removed by the run that held it, between our open and our lock: lock the file
        # that is there now.
        try:
            if os.path.samestat(os.stat(path), os.fstat(file.fileno())):
                break
        except FileNotFoundError:
            pass
        file.close()
    file.seek(0)
    file.truncate()
    file.write(f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    file.flush()
    _HELD_LOCKS[path] = file
    atexit.register(release_output_folder, path.parent, kind)  # a run that ends with an error leaves no lock file either
    return path


def release_output_folder(folder, kind):
    """Give back the lock of lock_output_folder (nothing to do if this process does not hold it)."""
    path = (Path(folder) / f"train_{kind}.lock").resolve()
    file = _HELD_LOCKS.pop(path, None)
    if file is not None:
        path.unlink(missing_ok=True)  # removed while still locked: a run that opened it meanwhile tries again
        file.close()


def checkpoint_bytes(stateful):
    """About the size of a checkpoint of `stateful` (name -> object with a state_dict(), or None), in bytes: its
    tensors, and the two moments per weight that Adam keeps once it has taken a step (a fresh optimiser has none
    yet)."""
    def tensor_bytes(value):
        if isinstance(value, torch.Tensor):
            return value.numel() * value.element_size()
        if isinstance(value, dict):
            return sum(tensor_bytes(item) for item in value.values())
        if isinstance(value, (list, tuple)):
            return sum(tensor_bytes(item) for item in value)
        return 0

    total = 0
    for obj in stateful.values():
        if obj is None:
            continue
        total += tensor_bytes(obj.state_dict())
        if isinstance(obj, torch.optim.Adam) and not obj.state:
            total += 2 * sum(tensor_bytes(p) for group in obj.param_groups for p in group["params"])
    return total


def checkpoint_saver(kind, path, hp, stateful, is_main_process, **extra):
    """
    The save(iteration) function of a training script: training_checkpoint() written atomically to `path`, by the
    first process only (all processes hold the same weights).

    It checks first that a checkpoint fits on the disk (checkpoint_bytes): a full disk is found before training,
    not at the first save. A save that fails all the same (the disk filled up meanwhile) stops training with one
    line: which file, why, that the previous checkpoint is intact, and the iteration it holds.
    """
    if is_main_process:
        needed, free = checkpoint_bytes(stateful), _free_bytes(Path(path).parent)
        if free is not None and free < needed:
            raise ValueError(f"No room for a checkpoint in {Path(path).parent}: it needs about "
                             f"{needed / 2 ** 20:.1f} MB, and {free / 2 ** 20:.1f} MB are free. Free some space, or "
                             f"give another --output_folder.")
    saved = {}  # the iteration of the last checkpoint this run wrote

    def save(iteration):
        if not is_main_process:
            return
        try:
            save_checkpoint(training_checkpoint(kind, iteration, hp, stateful, **extra), path)
        except RuntimeError as error:
            last = f"; it holds iteration {saved['iteration']}" if saved else ""
            raise RuntimeError(f"{error} Training stopped at iteration {iteration}{last}: make room (or fix the "
                               f"permissions), then resume with --checkpoint {path}." if Path(path).is_file() else
                               f"{error} Training stopped at iteration {iteration}, before any checkpoint was "
                               f"written.") from None
        saved["iteration"] = iteration
    return save


def _flag_text(value):
    """A hyperparameter's value as it is written on the command line: lists as their items, separated by spaces."""
    return " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def reconcile_resumed_hyperparameters(checkpoint, hp, aliases=None, architecture=(), not_used=()):
    """
    Before the networks are built for a resumed run: settle which hyperparameters the checkpoint decides.

    A resumed run continues the checkpoint's networks, so
      * an architecture flag given with another value than the checkpoint's is refused (it would be ignored, and the
        new checkpoints would claim a network the run does not have); those not given take the checkpoint's values;
      * a flag in `not_used` (what the checkpoint replaces, e.g. train_srgan.py's --srresnet_checkpoint) is noted
        when given with another value, and takes the checkpoint's value.
    hp is changed in place, so that the checkpoints the run writes record what it really uses. (The learning-rate
    schedule is settled by resume_training, against the schedulers' state.)

    :param architecture: the names of the hyperparameters that shape the networks or the data they fit
                         (scaling_factor)
    :raises ValueError: naming the refused flags
    """
    saved = rename_hyperparameters(checkpoint.get("hyperparameters") or {}, aliases)
    given = getattr(hp, "given", set(vars(hp)))  # (hyperparameters not from parse_hyperparameters: all count)
    refused = [f"--{name} {_flag_text(getattr(hp, name))} (the checkpoint's: {_flag_text(saved[name])})"
               for name in architecture if name in given and name in saved and saved[name] != getattr(hp, name)]
    if refused:
        raise ValueError(f"Cannot resume {hp.checkpoint} with another architecture: {', '.join(refused)}. A resumed "
                         f"run continues the checkpoint's network: drop these flags, or start a new run (without "
                         f"--checkpoint).")
    for name in architecture:
        if name in saved:
            setattr(hp, name, saved[name])
    overridden = [f"--{name}" for name in not_used if name in given and getattr(hp, name) != saved.get(name)]
    if overridden:
        print(f"Note: {', '.join(overridden)} not used when resuming: the checkpoint {hp.checkpoint} brings the "
              f"networks.", file=sys.stderr)
    for name in not_used:
        setattr(hp, name, saved.get(name))


# The hyperparameters of the learning-rate schedule (MultiStepLR), which a resumed run may change.
LEARNING_RATE_SCHEDULE = ("learning_rate", "learning_rate_milestones", "learning_rate_gamma")


def learning_rate_schedule(scheduler):
    """The schedule a MultiStepLR follows, under the names of LEARNING_RATE_SCHEDULE."""
    return dict(learning_rate=scheduler.base_lrs[0], learning_rate_milestones=sorted(scheduler.milestones.elements()),
                learning_rate_gamma=scheduler.gamma)


def set_learning_rate_schedule(scheduler, learning_rate, learning_rate_milestones, learning_rate_gamma):
    """
    Give a MultiStepLR (and its optimiser) another schedule from now on, as if the run had had it from the start:
    the learning rate becomes learning_rate * gamma^(the milestones already passed), and the later milestones
    multiply it by gamma as they come. A milestone earlier than the scheduler's iteration counts as passed.
    """
    scheduler.base_lrs = [learning_rate] * len(scheduler.optimizer.param_groups)
    scheduler.milestones = collections.Counter(learning_rate_milestones)
    scheduler.gamma = learning_rate_gamma
    # last_epoch: the steps taken so far
    passed = bisect.bisect_right(sorted(learning_rate_milestones), scheduler.last_epoch)
    for group in scheduler.optimizer.param_groups:
        group["initial_lr"] = learning_rate
        group["lr"] = learning_rate * learning_rate_gamma ** passed
    scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]  # what get_last_lr() returns


# What every training checkpoint holds (training_checkpoint); each script names the rest of its own (the discriminator).
RESUMABLE_KEYS = ("iteration", "hyperparameters", "rng_state", "generator_arch", "generator_kwargs", "generator",
                  "optimizer_g", "scheduler_g")


def check_resumable(checkpoint, path, required=()):
    """
    Raise ValueError, in one line, unless `checkpoint` (from load_checkpoint, of the right kind) holds a run to resume:
    a generator-only file (best_<kind>.pth) gets told which file to resume from, a file without some of RESUMABLE_KEYS
    and `required` (damaged, or made by something else under the right kind) is named with what it lacks.
    """
    kind = checkpoint.get("kind")
    if "rng_state" not in checkpoint:
        raise ValueError(f"{path}: this {kind} checkpoint holds a generator only (such as best_{kind}.pth, the best "
                         f"validated weights), not a run to resume: resume from checkpoint_{kind}.pth.")
    missing = [name for name in RESUMABLE_KEYS + tuple(required) if name not in checkpoint]
    if missing:
        raise ValueError(f"Cannot resume from {path}: it lacks {', '.join(missing)}, which every checkpoint of "
                         f"train_{kind}.py holds, so it is damaged or was not written by it. Resume from another "
                         f"checkpoint, or start a new run without --checkpoint.")


def resume_training(checkpoint, stateful, hp, aliases=None):
    """
    Restore the objects of training_checkpoint() and the RNG states from a checkpoint (after
    reconcile_resumed_hyperparameters).

    The optimisers' learning rate and the schedulers' milestones come back with them. Learning-rate flags given with
    new values then apply (set_learning_rate_schedule), and say so; those not given keep the checkpoint's schedule,
    and hp is set to it. Any other hyperparameter that differs from the checkpoint's applies from now on and is
    listed in a note. hp then holds what the run really uses, which its checkpoints record.

    :param aliases: the script's renamed hyperparameters (see parse_hyperparameters), so that the hyperparameters of
                    an older checkpoint are compared under today's names
    :return: the iteration to continue from
    """
    for name, obj in stateful.items():
        if obj is not None and name in checkpoint:
            obj.load_state_dict(checkpoint[name])
    set_rng_state(checkpoint["rng_state"])
    schedulers = [obj for obj in stateful.values() if isinstance(obj, torch.optim.lr_scheduler.MultiStepLR)]
    if schedulers and all(hasattr(hp, name) for name in LEARNING_RATE_SCHEDULE):
        restored = learning_rate_schedule(schedulers[0])
        given = getattr(hp, "given", set(vars(hp)))
        for name in LEARNING_RATE_SCHEDULE:  # not given: the checkpoint's
            if name not in given:
                setattr(hp, name, restored[name])
        wanted = dict(learning_rate=hp.learning_rate, learning_rate_milestones=sorted(hp.learning_rate_milestones),
                      learning_rate_gamma=hp.learning_rate_gamma)
        if wanted != restored:
            for scheduler in schedulers:
                set_learning_rate_schedule(scheduler, **wanted)
            changes = "; ".join(f"{name} {_flag_text(restored[name])} -> {_flag_text(wanted[name])}"
                                for name in LEARNING_RATE_SCHEDULE if wanted[name] != restored[name])
            print(f"Learning-rate schedule changed on resume ({changes}): it applies from iteration "
                  f"{checkpoint['iteration']} on, as if the run had had it from the start (milestones already passed "
                  f"count): learning rate now {schedulers[0].get_last_lr()[0]:.3g}.", file=sys.stderr)
    warn_changed_hyperparameters(rename_hyperparameters(checkpoint["hyperparameters"], aliases), vars(hp),
                                 keys_to_ignore=("checkpoint", "iterations", "workers", *LEARNING_RATE_SCHEDULE))
    return checkpoint["iteration"]


def _unwrap(model):
    """The plain model inside DistributedDataParallel / torch.compile wrappers (their state dicts add prefixes)."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)


def warn_changed_hyperparameters(saved, current, keys_to_ignore=("checkpoint", "iterations", "workers")):
    """On resume, list the hyperparameters that differ from the run being resumed (a common mistake; they apply from
    now on)."""
    changed = [f"{name}: {saved[name]!r} -> {value!r}" for name, value in current.items()
               if name in saved and saved[name] != value and name not in keys_to_ignore]
    if changed:
        print("Note: resuming with hyperparameters that differ from the checkpoint's: " + "; ".join(changed),
              file=sys.stderr)
