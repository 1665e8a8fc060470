"""The little every script shares, in the order a script meets it (the classic tutorial's utils.py, grown up).

  Device and images             get_device, available_cpus, default_workers; convert_image and the luma
                                weights; load_image
  Writing files safely          atomic_write, atomic_write_all (optionally never over a file: create-if-absent),
                                check_output_folder
  Reproducibility               seed_everything, random_seed / make_rng

Everything else has a room of its own: measurements in metrics.py, checkpoints in checkpoints.py, the networks in
models.py, running them in inference.py, the command line in cli.py, and the training machinery in training.py and
training_log.py.
"""
import hashlib
import os
import random
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

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


def available_cpus():
    """The CPU cores this process may run on (taskset, a container's CPU set), else all of the machine's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_workers(most=4):
    """
    The training scripts' default number of data-loading processes: `most`, or one fewer than the cores this
    process may use when that is less (0 on one core: the batches are then made in the training process).

    A worker only helps on a core of its own: on fewer cores the workers take turns with the training step, and
    starting them and passing their batches costs time (measured on one core, 24 SRResNet iterations: 4 workers
    used 1.7 s more CPU time than none, of 35 s).
    """
    return max(0, min(most, available_cpus() - 1))


def memory_format(channels_last):
    """The layout of image tensors and convolution weights: torch.channels_last (NHWC: oneDNN on CPUs and cuDNN on
    GPUs run convolutions fastest in it, with the same numbers) when channels_last is true, else NCHW."""
    return torch.channels_last if channels_last else torch.contiguous_format

# ------------------------------------------------------------------------------------------------------
# Image conversions
# ------------------------------------------------------------------------------------------------------
def _channel_view(stats, img):
    """Reshape a 3-vector so that it broadcasts over the channel axis of a (3, H, W) or (N, 3, H, W) image."""
    shape = (3, 1, 1) if img.dim() == 3 else (1, 3, 1, 1)
    return stats.to(img.device, img.dtype).view(shape)


def pil_to_tensor(img):
    """An 8-bit PIL image as a float32 tensor (C, H, W) in [0, 1]: torchvision's to_tensor, the same numbers
    (uint8 -> float32, divided by 255), without importing torchvision, which takes seconds to load and which nothing
    else in upscaling or evaluation needs."""
    pixels = torch.from_numpy(np.array(img, dtype=np.uint8))  # (H, W) or (H, W, C), uint8
    pixels = pixels[:, :, None] if pixels.dim() == 2 else pixels
    return pixels.permute(2, 0, 1).contiguous().to(torch.float32).div(255)


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
        img = pil_to_tensor(img.convert("RGB"))  # (3, H, W), uint8 / 255 -> [0, 1]
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
    conversion; a 32-bit floating-point one (mode 'F'), whose range is unknown, is refused unless its own mode is
    kept. Of an animated image (GIF, APNG, WebP) only the first frame is used, and a warning says so.

    :param path: path to the image file
    :param mode: PIL mode to convert to ('RGB' by default); a tuple of modes keeps the file's mode when it is one of
                 them (16-bit grey counts as 'L') and converts to the first otherwise, e.g. ('RGB', 'L'); None keeps
                 the file's own mode, 16 bits included
    :return: a PIL image
    :raises FileNotFoundError: the file does not exist
    :raises ValueError: the file is not a readable image (corrupt, truncated, not an image, too large, floating-point,
                        or not a regular file: a FIFO would block the read)
    """
    path = Path(path)
    not_found = (f"Image not found: {path}. Check the path (if it comes from a data list, the images have moved: "
                 f"rebuild the lists with create_data_lists.py).")
    # Whether it is a file first, then why not: a file deleted between two checks is "not found", not "a folder".
    if not path.is_file():
        if path.exists():
            raise ValueError(f"{path} is not an image file (a folder, FIFO, socket or device).")
        raise FileNotFoundError(not_found)
    try:
        with Image.open(path) as img:
            n_frames = getattr(img, "n_frames", 1)
            img.load()  # decode now: truncated or corrupt data fails here
            img = ImageOps.exif_transpose(img)
    except FileNotFoundError:  # deleted since the check above (a training image removed while a run reads it)
        raise FileNotFoundError(not_found) from None
    except Image.DecompressionBombError as error:  # Pillow's guard against huge (or malicious) files
        raise ValueError(f"Cannot read image {path}: {error} Use a smaller image, or split it into parts.") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ValueError(f"Cannot read image {path}: it is corrupt, truncated or not an image ({error}). "
                         f"Replace or remove it (and rebuild any data list that names it).") from None
    if n_frames > 1:
        warnings.warn(f"{path} is animated ({n_frames} frames); only its first frame is used.")
    if mode is None:
        return img
    if img.mode == "F":  # converted to 8 bits, its values would be clipped (a [0, 1] image: near-black)
        raise ValueError(f"{path} is a 32-bit floating-point image (mode 'F'), whose value range is unknown; convert "
                         f"it to a 16-bit or 8-bit PNG first.")
    if img.mode in GREY_16BIT_MODES:
        img = Image.fromarray(np.round(grey_16bit_values(img, path) * 255).astype(np.uint8))  # mode 'L'
    modes = (mode,) if isinstance(mode, str) else tuple(mode)
    return img if img.mode in modes else img.convert(modes[0])


def is_jpeg_file(path):
    """Whether `path` is a JPEG file, by its first bytes (the SOI marker FF D8 FF), not by its name: a photo renamed
    .png is still compressed. False for a file that does not exist or cannot be read, and for anything but a regular
    file (opening a FIFO for reading would wait for a writer forever)."""
    if not Path(path).is_file():
        return False
    try:
        with open(path, "rb") as file:
            return file.read(3) == b"\xff\xd8\xff"
    except OSError:
        return False


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


def _publish_new(temporary_path, path):
    """
    Give the complete temporary file its final name only if no file has that name: atomically, so that of two
    processes writing the same name at once exactly one succeeds and the other gets FileExistsError (a check for the
    name followed by a rename would let both pass the check, and the second replace the first's file).

    A hard link to the final name is refused by the system when the name exists. On a file system without hard links
    (FAT, some network shares) the name is claimed first with O_CREAT | O_EXCL (refused alike when it exists), and
    the content then renamed over the empty file claimed: a reader may see it empty for that moment, never another
    process's file replaced.
    """
    try:
        os.link(temporary_path, path)
    except FileExistsError:
        raise
    except OSError:  # no hard links here (EPERM, ENOTSUP, ...): claim the name, then rename over it
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        os.replace(temporary_path, path)
        return
    os.remove(temporary_path)


def file_in_the_way(folder):
    """The first of `folder` and its parents that exists as something other than a folder (a file where a folder
    should be), or None."""
    for part in [Path(folder), *Path(folder).parents]:
        if part.exists():
            return None if part.is_dir() else part
    return None


def check_output_folder(folder, flag="--output_folder"):
    """Refuse, in one line (ValueError), an output folder that is a file or lies below one, before any work: writing
    into it would only fail later with the system's "File exists" or "Not a directory". A missing folder is fine
    (it is created when the first file is written)."""
    blocking = file_in_the_way(folder)
    if blocking is not None:
        inside = "" if blocking == Path(folder) else f" (its parent {blocking} is)"
        raise ValueError(f"The output folder {folder} is a file, not a folder{inside}: give another {flag}.")


def atomic_write_all(writers, overwrite=True):
    """
    Write several files so that either all of them are complete on disk, or none has changed.

    Each new content is first written to a temporary file in its own folder (`.<name>.<random>.tmp`); only when
    every one is written does os.replace move each over its file. os.replace is atomic within one folder: readers see
    either the old file or the complete new one, never half of it. Any error (a full disk, Ctrl+C, a failing
    `write`) leaves every old file untouched and removes the temporary files.

    :param writers: dict path -> write, where write(file) writes the content into the open binary file it is given
    :param overwrite: False never replaces a file: each name is taken only if it is free at that moment
                      (_publish_new), so that a file another process writes meanwhile is kept, whatever the timing
    :return: the paths written, as Path objects
    :raises FileExistsError: (overwrite=False) a file has the name; the files published before it are kept
    :raises RuntimeError: when the system refuses a write (a read-only or full disk, no permission, a file where the
                          folder should be), in one line: which file, why, and that nothing was replaced
    """
    temporary_paths, path = {}, None
    try:
        for path, write in writers.items():
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary_paths[path] = _write_temporary(path, write)
        for path, temporary_path in temporary_paths.items():
            if overwrite:
                os.replace(temporary_path, path)
            else:
                _publish_new(temporary_path, path)
    except OSError as error:  # the system's refusal, said in one line instead of a traceback
        if isinstance(error, FileExistsError) and not overwrite and path.parent.is_dir():
            raise  # the name was taken (overwrite=False): the caller says what that means
        blocking = file_in_the_way(path.parent)
        if blocking is not None:
            raise RuntimeError(f"Could not write {path}: {blocking} is a file, not a folder; give another "
                               f"folder.") from None
        previous = f"the previous {path.name} there is intact" if path.is_file() else "no earlier file was replaced"
        raise RuntimeError(f"Could not write {path}: {error.strerror or error}; {previous}, and no partial file "
                           f"is left.") from None
    finally:
        for temporary_path in temporary_paths.values():
            if os.path.exists(temporary_path):  # only left over when something above failed
                os.remove(temporary_path)
    return list(temporary_paths)


def atomic_write(path, write, overwrite=True):
    """Write one file atomically (see atomic_write_all): a crash while writing leaves the old file intact.

    :param write: write(file) writes the content into the open binary file it is given,
                  e.g. lambda file: torch.save(state, file) or lambda file: img.save(file, format="PNG")
    :param overwrite: False: never replace a file of that name, even one that appears while this writes
                      (FileExistsError)
    :return: the path, as a Path
    """
    return atomic_write_all({path: write}, overwrite)[0]



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


def make_rng(seed, purpose, iteration=0, rank=0, device="cpu"):
    """A torch.Generator on `device` seeded with random_seed(seed, purpose, iteration, rank)."""
    return torch.Generator(device=device).manual_seed(random_seed(seed, purpose, iteration, rank))
