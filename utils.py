"""Helpers shared by every script: image conversions, crops, checkpoints, MATLAB-style resizing and metrics."""

# ======================================================================================================
# Section: core helpers (lead) -- conversions, crops, checkpoints, loading.
# ======================================================================================================
import argparse
import copy
import math
import os
import pickle
import random
import re
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image, ImageOps, UnidentifiedImageError

# ImageNet statistics (RGB), used to normalise images the way the pretrained VGG19 expects.
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406])
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225])

# ITU-R BT.601 luma coefficients scaled for RGB in [0, 1] (MATLAB's rgb2ycbcr): Y lies in [16, 235].
RGB_WEIGHTS_Y = torch.tensor([65.481, 128.553, 24.966], dtype=torch.float64)  # float64: MATLAB computes in double

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
    elif isinstance(checkpoint, dict) and models.is_official_generator_state_dict(checkpoint):
        model, description = models.generator_from_official_state_dict(checkpoint)
    else:
        raise ValueError(f"{path} holds no generator this project recognises: expected a checkpoint from "
                         f"train_srresnet.py / train_srgan.py or an official ESRGAN / Real-ESRGAN / BasicSR file.")
    return model.to(device).eval(), description


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

    psnr_model, _ = load_generator(psnr_path)
    gan_model, _ = load_generator(gan_path)
    if type(psnr_model) is not type(gan_model):
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


def parse_hyperparameters(defaults, description, script_path=None, argv=None):
    """
    Make every hyperparameter in `defaults` a command-line flag of the same name.

    A flag's type follows its default (int, float, bool as true/false, list as several values, None as
    text / number / 'none'); its help text is the comment on the hyperparameter's line in the script.

    :param defaults: dict name -> default value (the script's hyperparameters)
    :param description: text for --help (the script's docstring)
    :param script_path: the script's file (or a list of files), to read the comments from
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
        if isinstance(default, bool):
            parser.add_argument(f"--{name}", type=_parse_bool, default=default, metavar="true|false", help=help_text)
        elif isinstance(default, (list, tuple)):
            # numbers parse as int when written as one ("100000"), else float ("0.5", "2e-4")
            numeric = all(isinstance(value, (int, float)) for value in default)
            element_type = _parse_number if numeric else type(default[0]) if default else str
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


# ------------------------------------------------------------------------------------------------------
# Training machinery shared by train_srresnet.py and train_srgan.py
# ------------------------------------------------------------------------------------------------------
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


def resume_training(checkpoint, stateful, hp):
    """
    Restore the objects of training_checkpoint() and the RNG states from a checkpoint.

    :return: the iteration to continue from
    """
    for name, obj in stateful.items():
        if obj is not None and name in checkpoint:
            obj.load_state_dict(checkpoint[name])
    set_rng_state(checkpoint["rng_state"])
    warn_changed_hyperparameters(checkpoint["hyperparameters"], vars(hp))
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

# --- end of section: core helpers ---


# ======================================================================================================
# Section: MATLAB-compatible bicubic resize (imresize) and evaluation metrics (evaluation engineer).
# ======================================================================================================
#
# Papers report PSNR/SSIM under one fixed protocol, computed with MATLAB. To put our numbers next to theirs we
# reproduce that protocol exactly:
#   1. LR test images are made with MATLAB's `imresize(hr, 1/s, 'bicubic')` (antialiased, 8 bits per pass).
#   2. The HR image is cropped top-left to a multiple of s; the SR output is quantised to 8 bits.
#   3. RGB images are measured on their luma Y (BT.601, MATLAB's `rgb2ycbcr` on the 8-bit image: Y in [16, 235],
#      itself 8 bits); single-channel (grey) images are measured on their own values.
#   4. s pixels are shaved from every border (the network cannot see past the image edge there).
#   5. PSNR in float64; SSIM as in Wang et al. 2004 (11x11 Gaussian window, sigma 1.5, 'valid' filtering).
# Everything here works on whole arrays at once (no per-pixel Python loops).


def _cubic(x):
    """Keys' cubic convolution kernel with a = -0.5 (MATLAB's 'bicubic'). x: any array; returns weights there."""
    absx = np.abs(x)
    absx2, absx3 = absx ** 2, absx ** 3
    # |x| <= 1: 1.5|x|^3 - 2.5|x|^2 + 1;  1 < |x| <= 2: -0.5|x|^3 + 2.5|x|^2 - 4|x| + 2;  0 beyond.
    return ((1.5 * absx3 - 2.5 * absx2 + 1) * (absx <= 1)
            + (-0.5 * absx3 + 2.5 * absx2 - 4 * absx + 2) * ((absx > 1) & (absx <= 2)))


def _resize_taps(in_length, out_length, scale, antialiasing=True):
    """The taps of a 1-D resize done the way MATLAB's imresize does it.

    Each output sample is a weighted sum of P input samples under a cubic kernel centred on its position in the
    input. Returns (weights, indices), both (out_length, P): output sample i = sum over p of
    weights[i, p] * input[indices[i, p]] (0-based indices, already mirrored at the borders).
    """
    # When shrinking, MATLAB stretches the kernel by 1/scale (a low-pass filter against aliasing).
    if scale < 1 and antialiasing:
        kernel_width = 4.0 / scale
        kernel = lambda x: scale * _cubic(scale * x)
    else:
        kernel_width = 4.0
        kernel = _cubic

    # Output pixel x (1-based, as in MATLAB) sits at position u in the input: pixel centres are aligned, not corners.
    x = np.arange(1, out_length + 1, dtype=np.float64)                        # (out_length,)
    u = x / scale + 0.5 * (1 - 1 / scale)

    # The input pixels that can touch output pixel x: P of them, starting at the leftmost one under the kernel.
    left = np.floor(u - kernel_width / 2)
    num_taps = int(math.ceil(kernel_width)) + 2
    indices = left[:, None] + np.arange(num_taps)[None, :]                      # (out_length, P), 1-based
    weights = kernel(u[:, None] - indices)                                       # (out_length, P)
    weights = weights / weights.sum(axis=1, keepdims=True)                       # each row sums to 1

    # Taps outside the image read the mirror image of the border ("symmetric" padding: ... 2 1 | 1 2 3 ...).
    mirror = np.concatenate([np.arange(in_length), np.arange(in_length - 1, -1, -1)])   # 0-based
    indices = mirror[np.mod(indices.astype(np.int64) - 1, 2 * in_length)]

    # Drop the taps whose weight is 0 for every output sample (MATLAB does the same).
    used = np.any(weights != 0, axis=0)
    return weights[:, used], indices[:, used]


def _resize_along_axis(img, weights, indices, axis):
    """Apply the taps of `_resize_taps` along one axis of a numpy array or torch tensor (float).

    The loop runs over the P taps only (6 when upscaling, 4 * s + 2 when shrinking by s); each step handles every
    pixel at once. Summing tap by tap, in order, is also the order MATLAB sums in.
    """
    # Weights broadcast along the other axes: shape (1, ..., out_length, ..., 1).
    shape = [1] * img.ndim
    shape[axis] = -1
    out = 0
    for p in range(weights.shape[1]):
        if isinstance(img, torch.Tensor):
            tap = torch.index_select(img, axis, torch.from_numpy(indices[:, p]).to(img.device))
            out = out + torch.from_numpy(weights[:, p]).to(device=img.device, dtype=img.dtype).view(shape) * tap
        else:
            out = out + weights[:, p].reshape(shape) * np.take(img, indices[:, p], axis=axis)
    return out


def _round_to_uint8(values):
    """Round half away from zero and saturate to [0, 255], as MATLAB does when a uint8 result is stored."""
    if isinstance(values, torch.Tensor):
        return torch.floor(values + 0.5).clamp_(0, 255)
    return np.clip(np.floor(values + 0.5), 0, 255)


def imresize(img, scale=None, output_size=None, antialiasing=True):
    """Resize an image with bicubic interpolation exactly as MATLAB's `imresize(img, scale, 'bicubic')` does.

    :param img: numpy array (H, W) or (H, W, C), uint8 or float (e.g. `np.asarray(pil_img)`), or a float torch tensor
                (..., H, W), e.g. (N, C, H, W) in [0, 1]
    :param scale: resize factor for both axes, e.g. 1/4 to make an LR image, 4 to upscale one
    :param output_size: (out_H, out_W) instead of `scale`; the factor of each axis is then out/in
    :param antialiasing: widen the kernel when shrinking (MATLAB's default, True)
    :return: the resized image, same type and dtype as `img`; its size is ceil(scale * size).
             uint8 in -> uint8 out, rounded to 8 bits after EACH of the two 1-D passes, as MATLAB does;
             float in -> float out, not clipped (bicubic can overshoot the input's range a little).
    """
    is_tensor = isinstance(img, torch.Tensor)
    if is_tensor:
        height_axis, width_axis = img.dim() - 2, img.dim() - 1
    else:
        img = np.asarray(img)
        if img.ndim not in (2, 3):
            raise ValueError(f"imresize expects an (H, W) or (H, W, C) array, got shape {img.shape}")
        height_axis, width_axis = 0, 1
    in_size = (img.shape[height_axis], img.shape[width_axis])

    # Scale factor and output size of each axis: ceil(scale * size), in double precision exactly as MATLAB computes it
    # (so 1.1 * 50 = 55.00000000000001 gives 56 there and here).
    if (scale is None) == (output_size is None):
        raise ValueError("imresize needs exactly one of `scale` or `output_size`")
    if scale is not None:
        scales = (float(scale), float(scale))
        out_size = tuple(int(math.ceil(s * n)) for s, n in zip(scales, in_size))
    else:
        out_size = (int(output_size[0]), int(output_size[1]))
        scales = (out_size[0] / in_size[0], out_size[1] / in_size[1])
    if min(out_size) < 1:
        raise ValueError(f"imresize: a {in_size[0]}x{in_size[1]} image is too small to resize by {scale}")

    # Work in float64 for numpy (as MATLAB does) and in the tensor's own float dtype for torch.
    is_uint8 = img.dtype == (torch.uint8 if is_tensor else np.uint8)
    if is_tensor:
        out = img.to(torch.float64) if is_uint8 else img
    else:
        out = img.astype(np.float64)

    # MATLAB resizes the axis that shrinks most first (height first when both scales are equal).
    order = sorted(range(2), key=lambda k: scales[k])
    for k in order:
        axis = (height_axis, width_axis)[k]
        weights, indices = _resize_taps(in_size[k], out_size[k], scales[k], antialiasing)   # (out_len, P) each
        out = _resize_along_axis(out, weights, indices, axis)
        # MATLAB stores each pass's result in the input's class, so 8-bit input is rounded after every pass.
        if is_uint8:
            out = _round_to_uint8(out)

    if is_tensor:
        return out.to(torch.uint8) if is_uint8 else out
    return out.astype(np.uint8) if is_uint8 else out.astype(img.dtype)


# BT.601 luma weights for 8-bit RGB, as in MATLAB's rgb2ycbcr (Poynton):
# Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255.
# The luma weights of the core section (RGB_WEIGHTS_Y), as a float64 numpy array for the numpy metrics.
_BT601_Y_WEIGHTS = RGB_WEIGHTS_Y.numpy()


def rgb2y(img):
    """Luma Y (BT.601) of an 8-bit RGB image, exactly as MATLAB's `rgb2ycbcr` computes it from the uint8 image
    (the first channel of its result).

    MATLAB returns uint8 for uint8 input, so Y is quantised too: 16 + (65.481 R + 128.553 G + 24.966 B) / 255,
    rounded half away from zero. (Scripts that call `rgb2ycbcr(im2double(img))` instead keep Y's fraction; that
    gives about 0.01-0.03 dB higher PSNR on the bicubic baselines. The protocol here quantises, as the issue that
    defines it asks: the classic tutorial's "float Y never quantised" is one of the differences it removes.)

    :param img: uint8 numpy array (H, W, 3), RGB
    :return: float64 array (H, W) of whole numbers in [16, 235]
    """
    img = np.asarray(img)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"rgb2y expects an 8-bit RGB array (H, W, 3), got dtype {img.dtype} and shape {img.shape}")
    rgb = img.astype(np.float64)
    # Same order of operations as MATLAB (imlincomb): each weight pre-divided by 255, the offset added last.
    y = (_BT601_Y_WEIGHTS[0] / 255 * rgb[..., 0] + _BT601_Y_WEIGHTS[1] / 255 * rgb[..., 1]
         + _BT601_Y_WEIGHTS[2] / 255 * rgb[..., 2] + 16)
    return _round_to_uint8(y)


def _shave(img, crop_border):
    """Remove `crop_border` pixels from each of the four borders of an (H, W) or (H, W, C) array."""
    if crop_border == 0:
        return img
    return img[crop_border:-crop_border, crop_border:-crop_border, ...]


def calculate_psnr(sr, hr, crop_border=0, data_range=255.):
    """Peak signal-to-noise ratio, in float64: 10 log10(data_range^2 / MSE).

    :param sr: super-resolved image, numpy array (H, W) or (H, W, C), any real dtype
    :param hr: ground-truth image of the same shape
    :param crop_border: pixels removed from each border before measuring
    :param data_range: peak value (255 for 8-bit values)
    :return: PSNR in dB (float; inf for identical images)
    """
    sr, hr = np.asarray(sr), np.asarray(hr)
    if sr.shape != hr.shape:
        raise ValueError(f"PSNR needs images of the same shape, got {sr.shape} and {hr.shape}")
    diff = _shave(sr.astype(np.float64), crop_border) - _shave(hr.astype(np.float64), crop_border)
    mse = np.mean(diff ** 2)
    if mse == 0:
        return float("inf")
    return float(10 * np.log10(data_range ** 2 / mse))


def _filter_valid(img, window_1d):
    """Filter an (H, W) float64 image with the separable window outer(w, w), keeping only the 'valid' part
    (MATLAB's filter2(window, img, 'valid')): the result is (H - k + 1, W - k + 1) for a window of length k."""
    k = len(window_1d)
    # sliding_window_view gives every k-long run along an axis as a last axis; a product with the window sums it.
    rows = np.lib.stride_tricks.sliding_window_view(img, k, axis=0) @ window_1d        # (H - k + 1, W)
    return np.lib.stride_tricks.sliding_window_view(rows, k, axis=1) @ window_1d       # (H - k + 1, W - k + 1)


def calculate_ssim(sr, hr, crop_border=0, data_range=255., gaussian_weights=True, win_size=11, sigma=1.5,
                   sample_covariance=False):
    """Structural similarity (Wang, Bovik, Sheikh, Simoncelli, IEEE TIP 2004), the mean of the SSIM map.

    The defaults are the paper's (and its reference MATLAB code's): an 11x11 Gaussian window with sigma 1.5,
    'valid' filtering (no padding), K1 = 0.01, K2 = 0.03, population (1/N) variances.
    `gaussian_weights=False, win_size=7, sample_covariance=True` gives scikit-image's default SSIM instead
    (a 7x7 uniform window, variances over N - 1), which the classic tutorial used.

    :param sr: super-resolved image, numpy array (H, W), or (H, W, C) (then the mean over channels)
    :param hr: ground-truth image of the same shape
    :param crop_border: pixels removed from each border before measuring
    :param data_range: peak value (255 for 8-bit values)
    :return: SSIM in [-1, 1] (float)
    """
    sr, hr = np.asarray(sr), np.asarray(hr)
    if sr.shape != hr.shape:
        raise ValueError(f"SSIM needs images of the same shape, got {sr.shape} and {hr.shape}")
    sr = _shave(sr.astype(np.float64), crop_border)
    hr = _shave(hr.astype(np.float64), crop_border)
    if sr.ndim == 3:
        # Colour: measure each channel on its own and average.
        return float(np.mean([calculate_ssim(sr[..., c], hr[..., c], 0, data_range, gaussian_weights, win_size,
                                              sigma, sample_covariance) for c in range(sr.shape[2])]))
    if min(sr.shape) < win_size:
        raise ValueError(f"SSIM needs images of at least {win_size}x{win_size} pixels after the border crop, "
                         f"got {sr.shape[0]}x{sr.shape[1]}")

    # The 1-D window: the 2-D window is its outer product (both the Gaussian and the uniform one separate).
    if gaussian_weights:
        offsets = np.arange(win_size) - (win_size - 1) / 2
        window_1d = np.exp(-offsets ** 2 / (2 * sigma ** 2))
    else:
        window_1d = np.ones(win_size)
    window_1d = window_1d / window_1d.sum()

    # Local means, variances and covariance under the window, each (H - k + 1, W - k + 1).
    mu_sr, mu_hr = _filter_valid(sr, window_1d), _filter_valid(hr, window_1d)
    var_sr = _filter_valid(sr * sr, window_1d) - mu_sr ** 2
    var_hr = _filter_valid(hr * hr, window_1d) - mu_hr ** 2
    cov = _filter_valid(sr * hr, window_1d) - mu_sr * mu_hr
    if sample_covariance:
        n = win_size ** 2
        var_sr, var_hr, cov = (v * n / (n - 1) for v in (var_sr, var_hr, cov))

    # SSIM map = luminance x contrast x structure terms, with the constants that keep them stable near zero.
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    ssim_map = (((2 * mu_sr * mu_hr + c1) * (2 * cov + c2))
                / ((mu_sr ** 2 + mu_hr ** 2 + c1) * (var_sr + var_hr + c2)))
    return float(ssim_map.mean())


def _grey_from_rgb(img):
    """Full-range BT.601 luma of an 8-bit RGB array, rounded to 8 bits: (H, W, 3) uint8 -> (H, W) uint8.
    Used when a model returns RGB for a single-channel (grey) test image, which is measured on grey values."""
    grey = (img.astype(np.float64) @ _BT601_Y_WEIGHTS) / _BT601_Y_WEIGHTS.sum()
    return _round_to_uint8(grey).astype(np.uint8)


def quantize_to_uint8(img):
    """A numpy image as 8 bits: uint8 stays as is; float in [0, 1] is scaled to [0, 255], rounded (never truncated)
    and clipped -- what saving an SR output as PNG does, and what the standard protocol measures."""
    img = np.asarray(img)
    if img.dtype == np.uint8:
        return img
    return _round_to_uint8(img.astype(np.float64) * 255).astype(np.uint8)


def modcrop_array(img, scaling_factor):
    """Crop an (H, W) or (H, W, C) image top-left to a multiple of `scaling_factor` in each dimension (MATLAB's
    `modcrop`, which the standard protocol applies to HR images; `modcrop` above does the same to a PIL image)."""
    h, w = img.shape[0], img.shape[1]
    return img[:h - h % scaling_factor, :w - w % scaling_factor, ...]


def center_modcrop_array(img, scaling_factor):
    """Crop an (H, W) or (H, W, C) image to the largest CENTRED region whose sides are multiples of
    `scaling_factor` (what the classic tutorial does; the standard protocol crops top-left instead)."""
    h, w = img.shape[0], img.shape[1]
    top, left = (h % scaling_factor) // 2, (w % scaling_factor) // 2
    return img[top:top + h - h % scaling_factor, left:left + w - w % scaling_factor, ...]


def evaluate_pair(sr, hr, scaling_factor, protocol='standard'):
    """PSNR and SSIM of one super-resolved image against its ground truth, under a named protocol.

    'standard' -- the protocol papers report (EDSR, RCAN, ESRGAN, ... all use it):
        HR cropped top-left to a multiple of the scale; SR quantised to 8 bits; RGB measured on MATLAB's luma Y
        (`rgb2y`), a single-channel HR on its own grey values; `scaling_factor` pixels shaved from each border;
        PSNR in float64; SSIM with the 11x11 Gaussian window of Wang et al.
    'classic' -- FOR COMPARISON ONLY: the protocol of the classic PyTorch SR tutorial, whose numbers cannot be put
        next to a paper's: HR centre-cropped to a multiple of the scale and converted to RGB, float Y computed from
        [0, 1] images without quantising the SR output, a fixed 4-pixel border whatever the scale, and
        scikit-image's default SSIM (7x7 uniform window, sample covariance).

    :param sr: SR image, numpy (H, W[, C]) uint8, or float in [0, 1] (quantised to 8 bits by 'standard', used
               as it is by 'classic'); the size of the cropped HR image
    :param hr: ground-truth HR image, uint8 numpy (H0, W0) or (H0, W0, 3), e.g. `np.asarray(pil_img)`, uncropped
    :param scaling_factor: the upscale factor (2, 3, 4, ...)
    :param protocol: 'standard' or 'classic'
    :return: (psnr in dB, ssim), floats
    """
    hr = np.asarray(hr)
    sr = np.asarray(sr)
    if hr.dtype != np.uint8:
        raise ValueError(f"evaluate_pair expects an 8-bit HR image, got dtype {hr.dtype}")

    if protocol == 'standard':
        hr = modcrop_array(hr, scaling_factor)
        sr = quantize_to_uint8(sr)
        if hr.ndim == 2 or hr.shape[2] == 1:
            # Grey HR: measure grey values. A model that returned RGB for it is brought back to grey.
            hr = hr.reshape(hr.shape[0], hr.shape[1])
            if sr.ndim == 3 and sr.shape[2] == 3:
                sr = _grey_from_rgb(sr)
            sr = sr.reshape(sr.shape[0], sr.shape[1])
            hr_y, sr_y = hr.astype(np.float64), sr.astype(np.float64)
        else:
            hr_y, sr_y = rgb2y(hr), rgb2y(sr)                                   # (H, W), whole numbers in [16, 235]
        if sr_y.shape != hr_y.shape:
            raise ValueError(f"SR image is {sr_y.shape[1]}x{sr_y.shape[0]} but the HR image cropped to a multiple "
                             f"of {scaling_factor} is {hr_y.shape[1]}x{hr_y.shape[0]}")
        psnr = calculate_psnr(sr_y, hr_y, crop_border=scaling_factor)
        ssim = calculate_ssim(sr_y, hr_y, crop_border=scaling_factor)
        return psnr, ssim

    if protocol == 'classic':
        hr = center_modcrop_array(hr, scaling_factor)
        if hr.ndim == 2:
            hr = np.repeat(hr[..., None], 3, axis=2)                           # the tutorial converts to RGB
        hr_01 = hr.astype(np.float64) / 255
        sr_01 = sr.astype(np.float64) / 255 if sr.dtype == np.uint8 else sr.astype(np.float64)
        if sr_01.ndim == 2:
            sr_01 = np.repeat(sr_01[..., None], 3, axis=2)
        if sr_01.shape != hr_01.shape:
            raise ValueError(f"SR image shape {sr_01.shape} does not match the centre-cropped HR shape {hr_01.shape}")
        # Float Y from [0, 1] images, never rounded: 16 + (65.481 R + 128.553 G + 24.966 B), 4 pixels cropped.
        hr_y = _shave(hr_01, 4) @ _BT601_Y_WEIGHTS + 16
        sr_y = _shave(sr_01, 4) @ _BT601_Y_WEIGHTS + 16
        psnr = calculate_psnr(sr_y, hr_y)
        ssim = calculate_ssim(sr_y, hr_y, gaussian_weights=False, win_size=7, sample_covariance=True)
        return psnr, ssim

    raise ValueError(f"unknown protocol {protocol!r}: use 'standard' (comparable with papers) or 'classic'")

# --- end of section: imresize and metrics ---
