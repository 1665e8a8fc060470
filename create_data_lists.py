"""
Create the data lists: JSON files that say which images to train and test on.

Training and evaluation never walk folders themselves. They read small JSON files, each a sorted list of absolute
image paths, written once by this script:

    data_lists/train_images.json        every usable training image (all training folders together)
    data_lists/<name>_test_images.json  one list per test set, e.g. Set5_test_images.json

A test set is named after its folder, or after the folder's parent when the folder is called HR, the usual layout of
SR benchmarks (`../shared/data/Set5/HR` gives `Set5`).

Every image is fully decoded once here, so a corrupt or truncated file is found now, in one report, and not hours
into training inside a DataLoader worker. Images that cannot be used are skipped and reported by name, with the reason:
  - unreadable (missing, corrupt, truncated, not an image at all, or a 32-bit float image, whose range is unknown):
    skipped from every list;
  - too small (shorter side below --min_size): skipped from the TRAINING list only. Training cuts random crops
    (96 x 96 by default) out of each image, so every training image must be at least that large. Test images are
    never filtered by size, because a benchmark set must stay complete to be comparable with published figures.
Greyscale images are kept: they are converted to RGB when loaded.

Which files count as images: .png .jpg .jpeg .bmp .tif .tiff .webp (any letter case). Other files (text, JSON,
.DS_Store, ...) and hidden files are ignored silently.

Sub-folders: training folders are searched recursively, so one folder holding several sets (e.g.
`../shared/data/train` with T91/, BSD200/, SunHays80/), or ImageNet-style class folders, can be given as is.
Test folders are NOT searched recursively: a benchmark folder such as `Set5/` also holds `LR_bicubic/X4/...`,
whose small LR images must not slip into the HR test set, so give the folder that holds the HR images itself.

Paired training data: if you already have LR images for your training images (made by your own camera pipeline,
or the benchmark packs' LR_bicubic folders), give them with --train_lr_folders, one folder per --train_folders
folder, and their scale with --scaling_factor. Each HR image is matched by relative path and name with an LR image
(LR/<name>.<any ext>, or <name>x<s>.<any ext> as in LR_bicubic/X4/babyx4.png), and the training list then holds
{"hr": ..., "lr": ..., "scaling_factor": s} entries: training cuts aligned crops of both (datasets.random_paired_crop)
instead of making LR images itself. An LR image must be exactly HR // s a side; a missing LR image, an unreadable
one or a wrong size skips the pair and is reported here by name, not hours into training. (Plain lists of paths,
like those written before, still work as they are.)

    python create_data_lists.py --train_folders ../shared/data/Set14/HR \\
        --train_lr_folders ../shared/data/Set14/LR_bicubic/X4 --scaling_factor 4 --output_folder paired_lists

Quick start (no download): with no folders, the script saves the photos bundled with scikit-image into
`<output_folder>/sample_images/` and builds the lists from them: eleven to train on and two test sets, 'Samples' (two
colour photos, to validate on during training) and 'Unseen' (five grey ones, kept for the end), enough to see
training work end to end:

    python create_data_lists.py

Full recipe (the SRResNet/SRGAN setup, with the images in ../shared/data):

    python create_data_lists.py \\
        --train_folders ../shared/data/train/T91 ../shared/data/train/BSD200 \\
        --test_folders ../shared/data/Set5/HR ../shared/data/Set14/HR ../shared/data/BSD100/HR \\
        --output_folder data_lists

Giving only --test_folders writes only the test lists (handy to add one more benchmark set); an existing
train_images.json is then left as it is.

Runs are reproducible (lists are sorted) and safe to interrupt: all lists are first written to temporary files in the
output folder and only then moved over the old ones, so a list on disk is always complete, and a run that fails
(missing folder, no usable training images, ...) leaves every existing list untouched.
"""
import argparse
import json
import os

import numpy as np
from PIL import Image
from skimage import data as skimage_data

from cli import add_scaling_factor_argument, run_cli
from utils import atomic_write, atomic_write_all, check_output_folder, load_image

# File name endings that count as images (compared in lower case).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

# The quick start's photos: all bundled with scikit-image (no download); grey ones are saved as RGB (R = G = B), as
# training loads them anyway. (skimage's `cat` is `chelsea`.) Training: five colour photos, two of unusual colours,
# a wheel of every hue, and five grey ones (textures, a page, a cell), which teach the network to leave a grey grey:
# trained on the five colour photos alone, a small SRResNet tints the photos it has not seen.
SAMPLE_TRAIN_PHOTOS = {
    "astronaut": skimage_data.astronaut,  # 512 x 512
    "rocket": skimage_data.rocket,  # 640 x 427
    "motorcycle": lambda: skimage_data.stereo_motorcycle()[0],  # 741 x 500, left view of a stereo pair
    "immunohistochemistry": skimage_data.immunohistochemistry,  # 512 x 512, stained tissue under a microscope
    "hubble_deep_field": skimage_data.hubble_deep_field,  # 1000 x 872
    "colorwheel": skimage_data.colorwheel,  # 371 x 370, every hue (synthetic)
    "brick": skimage_data.brick,  # 512 x 512, grey
    "grass": skimage_data.grass,  # 512 x 512, grey
    "gravel": skimage_data.gravel,  # 512 x 512, grey
    "page": skimage_data.page,  # 384 x 191, grey, a printed page
    "cell": skimage_data.cell,  # 550 x 660, grey, a cell under a microscope
}
# Two test sets, neither trained on. 'Samples' is validated on during training (which keeps the best weights by it);
# 'Unseen' is left for the end. Its photos are grey, saved as RGB: any tint a network adds to them is an error that
# RGB PSNR shows at once (eval.py --metrics psnr_rgb).
SAMPLE_TEST_PHOTOS = {
    "Samples": {
        "coffee": skimage_data.coffee,  # 600 x 400
        "chelsea": skimage_data.chelsea,  # 451 x 300
    },
    "Unseen": {
        "camera": skimage_data.camera,  # 512 x 512, the cameraman
        "coins": skimage_data.coins,  # 384 x 303
        "moon": skimage_data.moon,  # 512 x 512
        "clock": skimage_data.clock,  # 400 x 300, a motion-blurred clock
        "text": skimage_data.text,  # 448 x 172, text on a wall
    },
}


def name_of_test_set(folder):
    """
    Name of a test set: its folder's name, or the parent's name when the folder is called HR.

    '../shared/data/Set5/HR' -> 'Set5';  '/data/Urban100' -> 'Urban100'. ('HR' is matched in any letter case.)
    """
    folder = os.path.abspath(folder)  # also drops a trailing '/', so basename is the folder's own name
    name = os.path.basename(folder)
    if name.lower() == "hr":
        name = os.path.basename(os.path.dirname(folder))
    return name


def find_image_files(folder, recursive):
    """
    All image files in a folder (and its sub-folders if recursive), as sorted absolute paths.

    Files whose extension is not an image extension, and hidden files and folders (name starting with '.',
    e.g. macOS's '._photo.png' resource forks), are ignored. Symbolic links to folders are not followed.
    """
    folder = os.path.abspath(folder)
    paths = []
    for current_folder, sub_folders, file_names in os.walk(folder):
        # Editing sub_folders in place tells os.walk which sub-folders to visit next.
        sub_folders[:] = [] if not recursive else [name for name in sub_folders if not name.startswith(".")]
        for file_name in file_names:
            if not file_name.startswith(".") and file_name.lower().endswith(IMAGE_EXTENSIONS):
                paths.append(os.path.join(current_folder, file_name))
    return sorted(paths)


def checked_size(path, min_size):
    """
    Check one image by decoding it fully: ((width, height), None) if it is usable, else (None, the reason, a short
    sentence).

    :param path: image file
    :param min_size: smallest allowed shorter side in pixels, or None not to check the size (test sets, LR images)
    """
    try:
        img = load_image(path)  # decodes every pixel, so truncated files fail here
    except (FileNotFoundError, ValueError, OSError, Image.DecompressionBombError) as error:
        return None, f"unreadable: {error}"
    width, height = img.size
    if min_size is not None and min(width, height) < min_size:
        return None, f"too small: {width}x{height}, shorter side below --min_size {min_size}"
    return img.size, None


def collect_images(folders, min_size, recursive, skipped, exclude=(), sizes=None):
    """
    The usable images of some folders, as one sorted list of absolute paths (an image found twice counts once).

    Unusable images are appended to `skipped` as (path, reason) pairs. Images inside the `exclude` folders (the LR
    folders of paired training data) are left out. When `sizes` is a dict, it receives path -> (width, height).
    """
    excluded = [os.path.join(os.path.realpath(folder), "") for folder in exclude]
    usable = set()
    for folder in folders:
        for path in find_image_files(folder, recursive):
            if any(os.path.realpath(path).startswith(prefix) for prefix in excluded):
                continue
            size, reason = checked_size(path, min_size)
            if reason is None:
                usable.add(path)
            else:
                skipped.append((path, reason))
            if sizes is not None:
                sizes[path] = size
    return sorted(usable)


# ------------------------------------------------------------------------------------------------------
# Paired training data: LR images the user already has, beside the HR ones
# ------------------------------------------------------------------------------------------------------
def lr_image_index(lr_folder, scaling_factor):
    """
    The LR images of a folder (searched recursively), by (sub-folder, HR name) -> [paths].

    An LR image stands for the HR image of the same relative sub-folder and name (LR/baby.png for HR/baby.png), with
    or without the benchmark packs' scale suffix (LR_bicubic/X4/babyx4.png for HR/baby.png); any image extension.
    """
    suffix = f"x{scaling_factor}"
    index = {}
    for path in find_image_files(lr_folder, recursive=True):
        relative = os.path.relpath(path, os.path.abspath(lr_folder))
        folder, stem = os.path.dirname(relative), os.path.splitext(os.path.basename(relative))[0]
        names = {stem, stem[:-len(suffix)]} if stem.endswith(suffix) and len(stem) > len(suffix) else {stem}
        for name in names:
            index.setdefault((folder, name), []).append(path)
    return index


def collect_pairs(train_folders, lr_folders, min_size, scaling_factor, skipped):
    """
    The usable (HR, LR) pairs of training folders and their LR folders (one LR folder per training folder), as a
    sorted list of {"hr": path, "lr": path, "scaling_factor": s} entries.

    A pair is usable when both images decode, the HR image is at least min_size a side, and the LR image is exactly
    the HR image divided by the scale (HR width // s x HR height // s: the size of an x s LR image of it, also when
    the HR sides are not multiples of s). Anything else is appended to `skipped` as (HR path, reason): an HR image
    without an LR image (or with two), an unreadable LR image, sizes that do not match.
    """
    pairs, sizes = {}, {}
    for folder, lr_folder in zip(train_folders, lr_folders):
        index = lr_image_index(lr_folder, scaling_factor)
        for hr_path in collect_images([folder], min_size, True, skipped, exclude=lr_folders, sizes=sizes):
            relative = os.path.relpath(hr_path, os.path.abspath(folder))
            key = (os.path.dirname(relative), os.path.splitext(os.path.basename(relative))[0])
            candidates = index.get(key, [])
            if len(candidates) != 1:
                what = "no LR image" if not candidates else f"{len(candidates)} LR images ({', '.join(candidates)})"
                skipped.append((hr_path, f"{what} in {lr_folder} for it (expected {os.path.join(*key)}.<ext> or "
                                         f"{os.path.join(*key)}x{scaling_factor}.<ext>)"))
                continue
            lr_path = candidates[0]
            lr_size, reason = checked_size(lr_path, None)
            hr_size = sizes[hr_path]
            expected = (hr_size[0] // scaling_factor, hr_size[1] // scaling_factor)
            if reason is not None:
                skipped.append((hr_path, f"its LR image {lr_path} is {reason}"))
            elif lr_size != expected:
                skipped.append((hr_path, f"its LR image {lr_path} is {lr_size[0]}x{lr_size[1]}, but an "
                                         f"x{scaling_factor} LR image of this {hr_size[0]}x{hr_size[1]} HR image "
                                         f"is {expected[0]}x{expected[1]} (HR // {scaling_factor})"))
            else:
                pairs[hr_path] = {"hr": hr_path, "lr": lr_path, "scaling_factor": scaling_factor}
    return [pairs[hr_path] for hr_path in sorted(pairs)]


def save_sample_images(output_folder):
    """
    Save scikit-image's bundled photos as RGB PNG files, for the quick start.

    :return: (training folder, {test set name: its folder}): <output_folder>/sample_images/train and
             .../test/<name> for each of SAMPLE_TEST_PHOTOS
    """
    train_folder = os.path.join(output_folder, "sample_images", "train")
    test_folders = {name: os.path.join(output_folder, "sample_images", "test", name) for name in SAMPLE_TEST_PHOTOS}
    sets = [(train_folder, SAMPLE_TRAIN_PHOTOS)] + [(test_folders[name], photos)
                                                    for name, photos in SAMPLE_TEST_PHOTOS.items()]
    for folder, photos in sets:
        for name, load_photo in photos.items():  # (atomic_write makes the folder, and says so if it cannot)
            pixels = load_photo()                                  # (H, W) grey or (H, W, 3) RGB, uint8 in [0, 255]
            if pixels.ndim == 2:
                pixels = np.repeat(pixels[..., None], 3, axis=2)   # grey -> (H, W, 3), R = G = B
            img = Image.fromarray(pixels)                          # PIL RGB
            # Atomic, like the lists: an interrupted run never leaves a half-written PNG behind.
            atomic_write(os.path.join(folder, f"{name}.png"), lambda file: img.save(file, format="PNG"))
    return train_folder, test_folders


def write_lists(lists, output_folder):
    """
    Write several JSON lists so that either all of them are complete on disk or the old ones are untouched
    (utils.atomic_write_all: every list goes to a temporary file first, and only then are they all renamed).

    :param lists: dict file name -> list of image paths
    :return: the paths of the files written
    """
    writers = {}
    for file_name, image_paths in lists.items():
        data = (json.dumps(image_paths, indent=2) + "\n").encode("utf-8")
        writers[os.path.join(output_folder, file_name)] = lambda file, data=data: file.write(data)  # its own data
    atomic_write_all(writers)
    return [os.path.join(output_folder, file_name) for file_name in lists]


def create_data_lists(train_folders, test_folders, min_size=100, output_folder="data_lists", train_lr_folders=None,
                      scaling_factor=4):
    """
    Check every image in the given folders and write the JSON data lists.

    :param train_folders: folders of training images (searched recursively); may be empty
    :param train_lr_folders: optional, one per training folder: the LR images the user already has for its images
                             (same relative names, or <name>x<s>), listed as pairs instead of HR images alone
    :param scaling_factor: the scale of those LR images (LR = HR // scaling_factor)
    :param test_folders: folders of test images, one test set each (not searched recursively); may be empty.
                         With no folders at all, scikit-image's bundled photos are used instead.
    :param min_size: training images whose shorter side is below this many pixels are skipped
                     (use at least the training crop size, 96 by default)
    :param output_folder: where the lists (and, in the quick start, the sample photos) are written
    :return: summary dict: 'train_images' (list of paths, or of {"hr", "lr", "scaling_factor"} pairs with
             train_lr_folders; None when no training folders were given),
             'test_images' (dict test set name -> list of paths), 'skipped' (list of (path, reason)),
             'list_files' (the JSON files written), 'used_sample_images' (bool)
    :raises FileNotFoundError: a folder does not exist
    :raises ValueError: no usable training images, an empty test set, two test sets with the same name, bad min_size,
                        not one LR folder per training folder, an output folder that is a file
    """
    train_folders, test_folders = list(train_folders or []), list(test_folders or [])
    train_lr_folders = list(train_lr_folders or [])
    if min_size < 0:
        raise ValueError(f"--min_size must be 0 or more, not {min_size}.")
    check_output_folder(output_folder)  # a file there: one line before the images are read
    if train_lr_folders and len(train_lr_folders) != len(train_folders):
        raise ValueError(f"Give one --train_lr_folders folder per --train_folders folder, in the same order (got "
                         f"{len(train_lr_folders)} for {len(train_folders)}).")
    if train_lr_folders and scaling_factor < 1:
        raise ValueError(f"--scaling_factor must be 1 or more, not {scaling_factor}.")

    # Check every folder before doing any work, so a typo fails at once and writes nothing.
    for folder in train_folders + train_lr_folders + test_folders:
        if not os.path.exists(folder):
            raise FileNotFoundError(f"The folder {folder} does not exist; check the path or run without folders "
                                    f"for the bundled sample images.")
        if not os.path.isdir(folder):
            raise ValueError(f"{folder} is a file, not a folder; give the folder that holds the images.")

    # The same folder given twice (perhaps spelled differently) is one set; keep the first spelling.
    unique_test_folders = {}
    for folder in test_folders:
        unique_test_folders.setdefault(os.path.realpath(folder), folder)
    test_folders = list(unique_test_folders.values())

    # Two test folders with the same name would write the same list file; refuse rather than lose one.
    names = [name_of_test_set(folder) for folder in test_folders]
    for name in sorted(set(names)):
        if names.count(name) > 1:
            clashing = [folder for folder in test_folders if name_of_test_set(folder) == name]
            raise ValueError(f"The test folders {', '.join(clashing)} would all be named '{name}' (a test set is "
                             f"named after its folder, or the parent of a folder called HR); give each test set "
                             f"a folder with its own name.")

    # Quick start: no folders at all -> save and use scikit-image's bundled photos.
    used_sample_images = not train_folders and not test_folders
    if used_sample_images:
        print("No --train_folders or --test_folders given: using a few photos bundled with scikit-image, saved in "
              f"{os.path.join(output_folder, 'sample_images')}. They are enough to check that training runs, not to "
              f"train a good model; for real data give your own folders (see --help).")
        train_folder, sample_test_folders = save_sample_images(output_folder)
        train_folders, test_folders = [train_folder], list(sample_test_folders.values())
        names = list(sample_test_folders)

    skipped = []  # (path, reason) for every image left out

    # Training images: recursive search, size filter (and, with LR folders, an LR image of the right size each).
    train_images = None
    if train_lr_folders:
        train_images = collect_pairs(train_folders, train_lr_folders, min_size, scaling_factor, skipped)
    elif train_folders:
        train_images = collect_images(train_folders, min_size, recursive=True, skipped=skipped)
    if train_images is not None:
        if not train_images:
            first = f"; the first because: {skipped[0][1]}" if skipped else ""
            raise ValueError(f"No usable training images in {', '.join(train_folders)} ({len(skipped)} skipped: "
                             f"{describe_skipped(skipped)}{first}). Give folders of .png/.jpg/... images of at least "
                             f"{min_size} px a side, lower --min_size, or run without folders for the bundled "
                             f"sample images.")

    # Test images: one set per folder, no size filter (benchmark sets stay complete), unreadable files skipped.
    test_images = {}
    for name, folder in zip(names, test_folders):
        skipped_before = len(skipped)
        test_images[name] = collect_images([folder], min_size=None, recursive=False, skipped=skipped)
        if not test_images[name]:
            hint = ""
            if os.path.isdir(os.path.join(folder, "HR")):
                hint = f" It has an HR sub-folder: did you mean {os.path.join(folder, 'HR')}?"
            raise ValueError(f"No readable images in the test folder {folder} ({len(skipped) - skipped_before} "
                             f"unreadable; test folders are not searched recursively).{hint}")

    # A test image that is also a training image makes its test figures meaningless: warn (not an error,
    # since someone may do it on purpose, e.g. to check that a model can overfit).
    train_real_paths = {os.path.realpath(entry["hr"] if isinstance(entry, dict) else entry)
                        for entry in train_images or []}
    for name, paths in test_images.items():
        overlap = [path for path in paths if os.path.realpath(path) in train_real_paths]
        if overlap:
            print(f"Warning: {len(overlap)} of the {len(paths)} images of test set '{name}' are also training "
                  f"images, so its scores will be too good.")

    # Everything is checked: now write all lists at once (atomically).
    lists = {f"{name}_test_images.json": paths for name, paths in test_images.items()}
    if train_images is not None:
        lists = {"train_images.json": train_images, **lists}
    list_files = write_lists(lists, output_folder)

    summary = {"train_images": train_images, "test_images": test_images, "skipped": skipped,
               "list_files": list_files, "used_sample_images": used_sample_images}
    print_report(summary, output_folder)
    return summary


def describe_skipped(skipped):
    """File names of (at most 10) skipped images, for one-line error messages."""
    names = [os.path.basename(path) for path, _ in skipped]
    more = f" and {len(names) - 10} more" if len(names) > 10 else ""
    return (", ".join(names[:10]) + more) or "none"


def print_report(summary, output_folder):
    """Print what was written and what was skipped (and why)."""
    if summary["train_images"] and isinstance(summary["train_images"][0], dict):
        print(f"Training pairs (HR images with their x{summary['train_images'][0]['scaling_factor']} LR images): "
              f"{len(summary['train_images'])} -> {os.path.join(output_folder, 'train_images.json')}")
    elif summary["train_images"] is not None:
        print(f"Training images: {len(summary['train_images'])} -> "
              f"{os.path.join(output_folder, 'train_images.json')}")
    else:
        print("No --train_folders given: train_images.json was not written (an existing one is kept).")
    for name, paths in summary["test_images"].items():
        print(f"Test set '{name}': {len(paths)} images -> {os.path.join(output_folder, f'{name}_test_images.json')}")
    print(f"Skipped images: {len(summary['skipped'])}")
    for path, reason in summary["skipped"]:
        print(f"  {path}: {reason}")
    if summary["used_sample_images"]:
        print("These lists point at the sample photos. To use real data, run e.g.\n"
              "  python create_data_lists.py --train_folders ../shared/data/train/T91 ../shared/data/train/BSD200 "
              "--test_folders ../shared/data/Set5/HR ../shared/data/Set14/HR ../shared/data/BSD100/HR")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train_folders", nargs="+", default=[], metavar="FOLDER",
                        help="folders of training images, searched recursively")
    parser.add_argument("--test_folders", nargs="+", default=[], metavar="FOLDER",
                        help="folders of test images, one test set each, named after the folder "
                             "(or its parent when the folder is called HR); not searched recursively")
    parser.add_argument("--train_lr_folders", nargs="+", default=[], metavar="FOLDER",
                        help="LR images you already have for the training images, one folder per --train_folders "
                             "folder in the same order (LR/<name>.png or the benchmark packs' "
                             "LR_bicubic/X4/<name>x4.png); the training list then holds (LR, HR) pairs, and training "
                             "crops them instead of making LR images (use it with --degradation bicubic)")
    add_scaling_factor_argument(parser, default=4,
                                help="the scale of the --train_lr_folders images: each is HR // scaling_factor "
                                     "(default: %(default)s)")
    parser.add_argument("--min_size", type=int, default=100,
                        help="skip training images whose shorter side is below this (pixels); keep it at least "
                             "the training crop size (default: %(default)s)")
    parser.add_argument("--output_folder", default="data_lists",
                        help="where to write the JSON lists (default: %(default)s)")
    args = parser.parse_args()
    run_cli(lambda: create_data_lists(args.train_folders, args.test_folders, args.min_size, args.output_folder,
                                      args.train_lr_folders, args.scaling_factor))
