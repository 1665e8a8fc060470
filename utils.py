"""Helpers shared by every script: image conversions, crops, checkpoints, MATLAB-style resizing and metrics."""

# ======================================================================================================
# Section: core helpers (lead) -- conversions, crops, checkpoints, loading.
# ======================================================================================================
import argparse
import copy
import os
import pickle
import random
import re
import signal
import sys
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image, ImageOps, UnidentifiedImageError

# ImageNet statistics (RGB), used to normalise images the way the pretrained VGG19 expects.
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406])
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225])

# ITU-R BT.601 luma coefficients scaled for RGB in [0, 1] (MATLAB's rgb2ycbcr): Y lies in [16, 235].
RGB_WEIGHTS_Y = torch.tensor([65.481, 128.553, 24.966])

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
    weights = RGB_WEIGHTS_Y.to(img.device, img.dtype)
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
        raise FileNotFoundError(f"Image not found: {path}. Check the path, or rebuild the data lists "
                                f"with create_data_lists.py if the images have moved.")
    try:
        with Image.open(path) as img:
            img.load()  # decode now: truncated or corrupt data fails here
            img = ImageOps.exif_transpose(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ValueError(f"Cannot read image {path}: it is corrupt, truncated or not an image ({error}). "
                         f"Replace or delete it, then rebuild the data lists with create_data_lists.py.") from None
    return img.convert(mode) if mode is not None and img.mode != mode else img


# ------------------------------------------------------------------------------------------------------
# Crops, augmentation and making LR images
# ------------------------------------------------------------------------------------------------------
def random_crop(img, crop_size, rng):
    """
    Cut a random crop_size x crop_size square out of a PIL image.

    Every position is possible, including the very first (left/top = 0) and the very last
    (left = width - crop_size), so an image exactly crop_size wide gives exactly one crop.

    :param img: PIL image, at least crop_size on each side
    :param crop_size: side of the square crop, in pixels
    :param rng: a random.Random, so that the crop is reproducible
    :return: the cropped PIL image
    """
    width, height = img.size
    if width < crop_size or height < crop_size:
        raise ValueError(f"Image of {width}x{height} is smaller than the {crop_size}px crop. Rebuild the data "
                         f"lists with create_data_lists.py --min_size {crop_size} (or larger) to skip such images.")
    left = rng.randint(0, width - crop_size)  # randint includes both ends
    top = rng.randint(0, height - crop_size)
    return img.crop((left, top, left + crop_size, top + crop_size))


def modcrop(img, scaling_factor):
    """
    Crop a PIL image at the top-left so that both sides are multiples of the scaling factor.

    This is the standard test-time crop of SR papers (MATLAB's `modcrop`): the LR image is then exactly
    1/scaling_factor of the HR image, and SR output and HR line up pixel for pixel.
    """
    width, height = img.size
    return img.crop((0, 0, width - width % scaling_factor, height - height % scaling_factor))


def augment(img, rng):
    """
    Random flips and 90-degree rotations (the 8 symmetries of a square) of a PIL image.

    Natural images look just as natural mirrored or rotated, so this multiplies the variety of training
    crops by 8 at no cost. The same transform must be applied to LR and HR, so apply it to the HR crop
    before making the LR image from it.
    """
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.ROTATE_90)
    return img


def make_lr_image(hr_img, scaling_factor, lr_maker="pil"):
    """
    Make the low-resolution image from an HR PIL image by bicubic downscaling.

    :param hr_img: PIL RGB image whose sides are multiples of scaling_factor
    :param scaling_factor: 2, 3, 4, ...
    :param lr_maker: 'pil' (Pillow's bicubic, fast, the classic tutorial's) or 'matlab' (MATLAB's imresize,
                     which is how every benchmark's LR images were made)
    :return: PIL RGB image of size (width // scaling_factor, height // scaling_factor)
    """
    width, height = hr_img.size
    if lr_maker == "pil":
        return hr_img.resize((width // scaling_factor, height // scaling_factor), Image.Resampling.BICUBIC)
    if lr_maker == "matlab":
        lr_array = imresize(np.asarray(hr_img), scale=1.0 / scaling_factor)  # uint8 in, uint8 out
        return Image.fromarray(lr_array)
    raise ValueError(f"lr_maker must be 'pil' or 'matlab', not {lr_maker!r}.")


# ------------------------------------------------------------------------------------------------------
# Checkpoints
# ------------------------------------------------------------------------------------------------------
def save_checkpoint(state, path):
    """
    Save a checkpoint (a dict of state dicts, numbers and strings) atomically.

    The file is written under a temporary name and then renamed: a crash or Ctrl+C while saving leaves the
    previous checkpoint intact instead of half a file. Only tensors and plain Python values are saved (never
    pickled modules), so the file loads with weights_only=True on any device.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary_path = path.with_name(path.name + ".tmp")
    torch.save(state, temporary_path)
    os.replace(temporary_path, path)  # atomic on POSIX and Windows


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
        raise ValueError(f"Refused to load {path}: it contains Python objects other than tensors and plain "
                         f"values, and loading it could run code ({str(error).splitlines()[0]}). Only load files "
                         f"you trust; re-save it as a state dict.") from None
    except Exception as error:  # not a torch file at all (zip error, truncated, ...)
        raise ValueError(f"Cannot read checkpoint {path}: it is not a PyTorch checkpoint or it is "
                         f"damaged ({error}).") from None
    if expected_kind is not None:
        kind = checkpoint.get("kind") if isinstance(checkpoint, dict) else None
        if kind != expected_kind:
            what = f"was written by train_{kind}.py" if kind else "is not a checkpoint of this project"
            raise ValueError(f"{path} {what}, but a checkpoint of train_{expected_kind}.py is needed here.")
    return checkpoint


def load_generator(path, device="cpu"):
    """
    Load a generator for inference from any checkpoint this project understands.

    Accepts our own checkpoints (from train_srresnet.py / train_srgan.py; the EMA weights are used when
    present) and the official ESRGAN / Real-ESRGAN / BasicSR weight files (architecture inferred from the
    tensors).

    :return: (model in eval mode on `device`, a one-line description)
    """
    import models  # imported here: models.py does not depend on utils.py, but utils.py uses models.py here

    checkpoint = load_checkpoint(path)
    if isinstance(checkpoint, dict) and "generator_arch" in checkpoint:
        model = models.build_generator(checkpoint["generator_arch"], **checkpoint["generator_kwargs"])
        weights_name = "generator_ema" if "generator_ema" in checkpoint else "generator"
        model.load_state_dict(checkpoint[weights_name])
        description = (f"{checkpoint['generator_arch']} x{model.scaling_factor} from train_{checkpoint['kind']}.py, "
                       f"iteration {checkpoint.get('iteration', '?')} ({weights_name} weights)")
    elif isinstance(checkpoint, dict) and models.is_official_state_dict(checkpoint):
        model, description = models.generator_from_official_state_dict(checkpoint)
    else:
        raise ValueError(f"{path} holds no generator this project recognises: expected a checkpoint from "
                         f"train_srresnet.py / train_srgan.py or an official ESRGAN / Real-ESRGAN / BasicSR file.")
    return model.to(device).eval(), description


# ------------------------------------------------------------------------------------------------------
# Reproducibility
# ------------------------------------------------------------------------------------------------------
def seed_everything(seed):
    """Seed Python's, NumPy's and PyTorch's random number generators, so that runs can be repeated."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


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
# Hyperparameters: the dict at the top of each script, overridable from the command line
# ------------------------------------------------------------------------------------------------------
def _parse_bool(text):
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")


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


def parse_hyperparameters(defaults, description, script_path=None, argv=None):
    """
    Make every hyperparameter in `defaults` a command-line flag of the same name.

    A flag's type follows its default (int, float, bool as true/false, list as several values, None as
    text / number / 'none'); its help text is the comment on the hyperparameter's line in the script.

    :param defaults: dict name -> default value (the script's hyperparameters)
    :param description: text for --help (the script's docstring)
    :param script_path: the script's file, to read the comments from
    :return: argparse.Namespace with one attribute per hyperparameter
    """
    comments = {}
    if script_path is not None:
        for line in Path(script_path).read_text().splitlines():
            match = re.match(r"\s*(\w+)\s*=.*?#\s*(.*)$", line)
            if match and match.group(1) in defaults:
                comments.setdefault(match.group(1), match.group(2))
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, default in defaults.items():
        help_text = f"{comments.get(name, '')} (default: {default})".replace("%", "%%")
        if isinstance(default, bool):
            parser.add_argument(f"--{name}", type=_parse_bool, default=default, metavar="true|false", help=help_text)
        elif isinstance(default, (list, tuple)):
            element_type = type(default[0]) if default else str
            parser.add_argument(f"--{name}", type=element_type, nargs="*", default=default, help=help_text)
        elif default is None:
            parser.add_argument(f"--{name}", type=_parse_optional, default=None, help=help_text)
        else:
            parser.add_argument(f"--{name}", type=type(default), default=default, help=help_text)
    return parser.parse_args(argv)


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

    def _handler(self, signal_number, frame):
        if self.requested:  # second Ctrl+C: the user really wants out
            raise KeyboardInterrupt
        self.requested = True
        print(f"\nReceived {signal.Signals(signal_number).name}: saving a checkpoint after this iteration "
              f"(press Ctrl+C again to quit at once).", file=sys.stderr)


def check_finite(loss, iteration, checkpoint_path):
    """
    Stop training when a loss becomes NaN or infinite: continuing would only overwrite the last good
    checkpoint with garbage. The checkpoint on disk is left as it is.
    """
    if not torch.isfinite(loss):
        raise RuntimeError(f"The loss became {loss.item()} at iteration {iteration}; training stopped. The last "
                           f"good checkpoint is kept at {checkpoint_path}. Try a lower learning rate or "
                           f"precision='fp32', then resume with --checkpoint {checkpoint_path}.")


# ------------------------------------------------------------------------------------------------------
# Training machinery shared by train_srresnet.py and train_srgan.py
# ------------------------------------------------------------------------------------------------------
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
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    torch.distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return rank, world_size, device


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

# --- end of section: core helpers ---


# ======================================================================================================
# Section: MATLAB-compatible bicubic resize (imresize) and evaluation metrics (evaluation engineer).
# ======================================================================================================

# --- end of section: imresize and metrics ---
