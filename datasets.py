"""The training and test data: (LR, HR) pairs cut from the images listed by create_data_lists.py.

Contents, top to bottom:
  read_data_list, paired_lists                the JSON lists of image paths (HR images, or (LR, HR) pairs)
  random_crop, random_paired_crop, modcrop,   crops (aligned LR / HR crops of paired images), flips / rotations,
  augment, make_lr_image                      and the bicubic LR image of an HR crop
  SRDataset                                   one (LR, HR) pair per item, as float tensors in [0, 1] (HR only when
                                              the degradations make the LR image on the device)
  TrainingSampler, make_train_loader          the endless, reproducible and resumable stream of training batches
  (ignore_stop_signals)                       (whose workers leave Ctrl+C / SIGTERM to the main process)

(The Real-ESRGAN degradations, which make LR images on the device inside the training step, are in degradations.py;
the test sets of the evaluation protocol are read by metrics.py.)
"""
import atexit
import json
import random
import re
import signal
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

import degradations
import metrics
import utils


def read_data_list(data_folder, split, test_data_name=None):
    """
    Read a list of image paths written by create_data_lists.py.

    :param data_folder: the folder holding train_images.json and <name>_test_images.json
    :param split: 'train' or 'test'
    :param test_data_name: for split='test', the test set's name (e.g. 'Set5')
    :return: list of image paths (str); a training list of paired images (create_data_lists.py --train_lr_folders)
             has {"hr": path, "lr": path, "scaling_factor": s} entries instead
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}.")
    file_name = "train_images.json" if split == "train" else f"{test_data_name}_test_images.json"
    list_path = Path(data_folder) / file_name
    if not list_path.is_file():
        raise FileNotFoundError(f"No data list at {list_path}. Run create_data_lists.py first (with "
                                f"--output_folder {data_folder}), or point --data_folder at its output folder.")
    rebuild = "rebuild it with create_data_lists.py"
    try:
        image_paths = json.loads(list_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"The data list {list_path} is not valid JSON ({error}); {rebuild}.") from None
    # What create_data_lists.py writes: a list of paths, or (training) of {"hr", "lr", "scaling_factor"} pairs.
    def is_entry(entry):
        return isinstance(entry, str) or (split == "train" and isinstance(entry, dict) and isinstance(
            entry.get("hr"), str) and isinstance(entry.get("lr"), str) and isinstance(entry.get("scaling_factor"), int))

    if not isinstance(image_paths, list):
        wrong = f"holds {json.dumps(image_paths)[:80]}"
    else:
        wrong = next((f"has the entry {json.dumps(entry)[:80]}" for entry in image_paths if not is_entry(entry)), None)
    if wrong is not None:
        raise ValueError(f"The data list {list_path} should hold a JSON list of image paths"
                         + (' (or of {"hr": path, "lr": path, "scaling_factor": s} pairs)' if split == "train" else "")
                         + f", but it {wrong}; {rebuild}.")
    if not image_paths:
        raise ValueError(f"The data list {list_path} is empty; {rebuild}.")
    return image_paths


def paired_lists(entries, scaling_factor):
    """
    (HR paths, LR paths or None) of a data list's entries: plain paths (HR images only), or the pairs
    {"hr", "lr", "scaling_factor"} that create_data_lists.py writes for LR images the user already has.

    :raises ValueError: a list mixing both kinds, or pairs made for another scaling factor
    """
    paired = [isinstance(entry, dict) for entry in entries]
    if not any(paired):
        return list(entries), None
    if not all(paired):
        raise ValueError("The training list mixes plain images and (LR, HR) pairs; rebuild it with "
                         "create_data_lists.py, giving --train_lr_folders for every training folder or for none.")
    scales = sorted({entry["scaling_factor"] for entry in entries})
    if scales != [scaling_factor]:
        raise ValueError(f"The training list pairs HR images with LR images made at x{', x'.join(map(str, scales))}, "
                         f"but scaling_factor is {scaling_factor}: train with --scaling_factor {scales[0]}, or list "
                         f"LR images of x{scaling_factor} (create_data_lists.py --scaling_factor).")
    return [entry["hr"] for entry in entries], [entry["lr"] for entry in entries]


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


def random_paired_crop(lr_img, hr_img, crop_size, scaling_factor, rng):
    """
    Cut aligned random crops out of an LR image and its HR image (LR = HR / s, s = scaling_factor).

    The LR crop (crop_size / s a side) starts at any LR pixel (left, top); the HR crop is the crop_size square at
    (s left, s top), a position that is a multiple of s: exactly the HR pixels that the LR crop's pixels stand for.

    :param lr_img, hr_img: PIL images, the LR one (width // s, height // s) of the HR one (width, height)
    :param rng: a random.Random
    :return: (LR crop, HR crop), PIL images
    """
    lr_crop_size = crop_size // scaling_factor
    width, height = lr_img.size
    if width < lr_crop_size or height < lr_crop_size:
        raise ValueError(f"LR image of {width}x{height} is smaller than the {lr_crop_size}px LR crop (HR crop "
                         f"{crop_size} at x{scaling_factor}). Rebuild the data lists with create_data_lists.py "
                         f"--min_size {crop_size} (or larger) to skip such images.")
    left = rng.randint(0, width - lr_crop_size)  # randint includes both ends
    top = rng.randint(0, height - lr_crop_size)
    lr_img = lr_img.crop((left, top, left + lr_crop_size, top + lr_crop_size))
    hr_left, hr_top = left * scaling_factor, top * scaling_factor
    return lr_img, hr_img.crop((hr_left, hr_top, hr_left + crop_size, hr_top + crop_size))


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
    Random flips and 90-degree rotations (the 8 symmetries of a square) of a PIL image, or of a list of them.

    Natural images look just as natural mirrored or rotated, so this multiplies the variety of training
    crops by 8 at no cost. The same transform must be applied to LR and HR: apply it to the HR crop before
    making the LR image from it, or give the (LR, HR) crops of paired images as a list, which all get the same one.
    """
    imgs = list(img) if isinstance(img, (list, tuple)) else [img]
    for transpose in (Image.Transpose.FLIP_LEFT_RIGHT, Image.Transpose.FLIP_TOP_BOTTOM, Image.Transpose.ROTATE_90):
        if rng.random() < 0.5:
            imgs = [one.transpose(transpose) for one in imgs]
    return imgs if isinstance(img, (list, tuple)) else imgs[0]


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
        lr_array = metrics.imresize(np.asarray(hr_img), scale=1.0 / scaling_factor)  # uint8 in, uint8 out
        return Image.fromarray(lr_array)
    raise ValueError(f"lr_maker must be 'pil' or 'matlab', not {lr_maker!r}.")


# ------------------------------------------------------------------------------------------------------
# The dataset and the training stream
# ------------------------------------------------------------------------------------------------------
class SRDataset(Dataset):
    """
    (LR, HR) image pairs for training or testing, both as float tensors in [0, 1].

    Training: each item is a random crop_size x crop_size HR crop of one image (optionally flipped / rotated) and its
    LR crop (3, crop_size/s, crop_size/s): the bicubic downscale of the HR crop made with `lr_maker`, or, when the
    data list pairs each HR image with an LR image the user already has, the aligned crop of that LR image
    (random_paired_crop; the same flips and rotations). With lr_maker None no LR is made, and the item's LR is None:
    the Real-ESRGAN degradations make it on the device. The item key may be an image index or an (image index, crop
    seed) pair from TrainingSampler, which makes every crop reproducible from the seed alone, in any worker process.

    Testing: each item is a whole image, cropped top-left to a multiple of the scaling factor, and its LR.
    """

    def __init__(self, data_folder, split, crop_size=96, scaling_factor=4, test_data_name=None,
                 augment=False, lr_maker="pil"):
        if split == "train" and crop_size % scaling_factor != 0:
            raise ValueError(f"crop_size ({crop_size}) must be a multiple of scaling_factor ({scaling_factor}), so "
                             f"that the LR crop is exactly crop_size / scaling_factor pixels.")
        self.image_paths, self.lr_paths = paired_lists(read_data_list(data_folder, split, test_data_name),
                                                       scaling_factor)
        self.split = split
        self.crop_size = crop_size
        self.scaling_factor = scaling_factor
        self.augment = augment
        self.lr_maker = lr_maker
        self.decoded_images = {}  # image index -> (decoded HR image, its paired LR image or None), by cache_images()

    def __len__(self):
        return len(self.image_paths)

    def _decode(self, image_index):
        """(HR image, paired LR image or None), decoded from the files."""
        lr_img = utils.load_image(self.lr_paths[image_index]) if self.lr_paths else None
        return utils.load_image(self.image_paths[image_index]), lr_img

    def cache_images(self, max_megabytes, n_threads=4):
        """
        Decode the images once and keep them in memory, so that training cuts its crops from pixels already decoded.

        Without this, every 96 x 96 crop decodes a whole image (about 20 ms for a 1024 x 768 JPEG on a CPU core): a
        batch of 16 crops costs about 0.3 s of CPU time, far more than a GPU's training step (tens of ms), so the GPU
        would wait for the data-loading workers; on a CPU it takes cores away from the training step. The cache is
        filled here, in the main process, before the DataLoader starts its workers: on Linux the workers are forked
        and share these pixels, so all of them together hold one copy. Images beyond the budget are decoded on every use, as before. Crops are the same either way.

        :param max_megabytes: memory budget for decoded pixels (0: no cache)
        :param n_threads: images decoded in parallel (decoding releases the GIL)
        :return: the number of images cached
        """
        budget = max_megabytes * 2 ** 20
        indices = range(len(self.image_paths)) if budget > 0 else []
        with ThreadPoolExecutor(max(1, n_threads)) as pool:
            for image_index, imgs in zip(indices, pool.map(self._decode, indices)):
                n_bytes = sum(img.width * img.height * len(img.getbands()) for img in imgs if img is not None)
                if n_bytes > budget:
                    break  # the budget is spent; the rest are decoded on use (pool.map's leftovers are dropped)
                self.decoded_images[image_index] = imgs
                budget -= n_bytes
        return len(self.decoded_images)

    def __getitem__(self, key):
        image_index, crop_seed = key if isinstance(key, tuple) else (key, key)
        # PIL, RGB (crop() below makes a copy: the cache is untouched)
        hr_img, lr_img = self.decoded_images.get(image_index) or self._decode(image_index)
        if lr_img is not None and lr_img.size != (hr_img.width // self.scaling_factor,
                                                  hr_img.height // self.scaling_factor):
            raise ValueError(f"The LR image {self.lr_paths[image_index]} ({lr_img.width}x{lr_img.height}) is not "
                             f"its HR image {self.image_paths[image_index]} ({hr_img.width}x{hr_img.height}) "
                             f"divided by {self.scaling_factor}; rebuild the data lists with create_data_lists.py.")
        if self.split == "train":
            rng = random.Random(crop_seed)  # this crop's own generator: reproducible in any worker
            try:
                if lr_img is None:
                    hr_img = random_crop(hr_img, self.crop_size, rng)
                else:
                    lr_img, hr_img = random_paired_crop(lr_img, hr_img, self.crop_size, self.scaling_factor, rng)
            except ValueError as error:  # an image too small for the crop: say which one
                raise ValueError(f"{self.image_paths[image_index]}: {error}") from None
            if self.augment and lr_img is None:
                hr_img = augment(hr_img, rng)
            elif self.augment:
                lr_img, hr_img = augment([lr_img, hr_img], rng)  # the same flips / rotations for both
        else:
            hr_img = modcrop(hr_img, self.scaling_factor)
        if lr_img is None and self.lr_maker is not None:
            lr_img = make_lr_image(hr_img, self.scaling_factor, self.lr_maker)
        # (3, h, w) or None, and (3, h*s, w*s), in [0, 1]
        return (utils.pil_to_tensor(lr_img) if lr_img is not None else None), utils.pil_to_tensor(hr_img)


class TrainingSampler(Sampler):
    """
    An endless, reproducible stream of (image index, crop seed) keys for iteration-based training.

    SR models are trained for a number of iterations (1e6 for SRResNet), not epochs, so this sampler never
    ends. Sample number k of the whole run (k = iteration * batch_size + position in the batch) always maps
    to the same image and the same crop, whatever the number of worker processes, so that:
      - a run resumed at iteration t sees exactly the batches an uninterrupted run would have seen;
      - with distributed training, rank r of R takes its own slice of each global batch, and R processes
        together see exactly the batches one process would.
    Images are visited in a fresh random order every epoch (each image once per pass over the data).

    Both random streams come from utils.random_seed: the order of epoch e from (seed, "epoch_order", e), the crop
    of sample k from (seed, "crop", k). Neither depends on the rank: sample k is the same crop whichever process
    draws it, which is what makes R processes equal one.
    """

    def __init__(self, n_images, batch_size, seed=0, start_iteration=0, rank=0, world_size=1):
        if batch_size % world_size != 0:
            raise ValueError(f"batch_size ({batch_size}) must be divisible by the number of processes ({world_size}).")
        self.n_images = n_images
        self.batch_size = batch_size  # the global batch, over all processes
        self.local_batch_size = batch_size // world_size
        self.seed = seed
        self.start_iteration = start_iteration
        self.rank = rank

    def _epoch_order(self, epoch):
        rng = utils.make_rng(self.seed, "epoch_order", epoch)
        return torch.randperm(self.n_images, generator=rng).tolist()

    def __iter__(self):
        iteration, epoch, order = self.start_iteration, None, None
        while True:
            first = iteration * self.batch_size + self.rank * self.local_batch_size
            for sample_number in range(first, first + self.local_batch_size):
                sample_epoch, position = divmod(sample_number, self.n_images)
                if sample_epoch != epoch:
                    epoch, order = sample_epoch, self._epoch_order(sample_epoch)
                yield order[position], utils.random_seed(self.seed, "crop", sample_number)
            iteration += 1


def _collate(items):
    """Stack the items' LR and HR crops into a batch; the LR stays None when the dataset makes none."""
    lr_imgs, hr_imgs = zip(*items)
    return (None if lr_imgs[0] is None else torch.stack(lr_imgs)), torch.stack(hr_imgs)


def ignore_stop_signals(worker_id=None):
    """
    The DataLoader workers' worker_init_fn: they ignore Ctrl+C (SIGINT) and SIGTERM, which the main process handles.

    `timeout`, Slurm, Kubernetes and a terminal's Ctrl+C signal the whole process group, the workers included. A
    worker that died of it would make the main process's next batch fail ("DataLoader worker (pid N) is killed by
    signal"), before it could save the checkpoint the signal asks for. Ignoring them, the workers keep serving
    batches until the main process has saved and shuts them down (and, should it die, they notice and exit).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class TrainingBatches:
    """
    The endless iterator of training batches that make_train_loader returns: the DataLoader's own, plus what a run
    needs when the data fail.

    A worker that cannot make a crop (an image deleted, replaced or too small since the lists were made) sends its
    error to the main process, where the DataLoader raises it again with the worker's whole traceback. Here it becomes
    one line that names the file and the reason, and the workers are stopped first. They must be: they ignore SIGTERM
    (ignore_stop_signals), so Python's exit, which terminates them with SIGTERM and then waits for them, would wait
    forever, and so would `timeout` or a cluster's scheduler. For the same reason the workers are also stopped when
    the process ends for any other reason (an error in the training step, a failed save) while they run.
    """

    def __init__(self, loader):
        self.batches = iter(loader)
        # (A weak reference: the registration must not keep the workers alive once the run has let them go.)
        atexit.register(_stop_workers_at_exit, weakref.ref(self))

    def __iter__(self):
        return self

    def __next__(self):
        try:
            return next(self.batches)
        except Exception as error:  # (not KeyboardInterrupt: a second Ctrl+C goes through as it is)
            self.stop_workers()
            kind = type(error) if type(error) in (FileNotFoundError, ValueError) else RuntimeError
            raise kind(f"{_worker_error_reason(error)} Training stopped; the checkpoints written so far are intact: "
                       f"fix the data (or rebuild the lists with create_data_lists.py), then resume with "
                       f"--checkpoint.") from None

    def stop_workers(self):
        """End the data-loading processes now: asked to stop, then killed if one does not within seconds (a worker
        blocked reading a file)."""
        shutdown = getattr(self.batches, "_shutdown_workers", None)  # (no workers: nothing to stop)
        if shutdown is None:
            return
        shutdown()  # each worker is told to stop, and joined for up to 5 s
        for worker in self.batches._workers:
            if worker.is_alive():  # it ignored the SIGTERM that followed: SIGKILL, which cannot be ignored
                worker.kill()
                worker.join()


def _stop_workers_at_exit(reference):
    batches = reference()
    if batches is not None:
        batches.stop_workers()


def _worker_error_reason(error):
    """The message of a data error, in one line. A worker's error comes with its traceback ("Caught ValueError in
    DataLoader worker process 0. Original Traceback ...", the original message in its last line): that line."""
    text = str(error).strip()
    if "Original Traceback" in text:
        text = re.sub(r"^[\w.]+: ", "", text.splitlines()[-1])  # 'ValueError: <message>' -> '<message>'
    return " ".join(text.split()) or type(error).__name__


def make_train_loader(hp, start_iteration=0, rank=0, world_size=1):
    """
    The training DataLoader shared by train_srresnet.py and train_srgan.py.

    :param hp: the script's hyperparameters (data_folder, crop_size, scaling_factor, augment, lr_maker,
               batch_size, seed, workers, and optionally image_cache_mb and degradation)
    :return: an endless iterator of (lr_imgs, hr_imgs): (N, 3, crop/s, crop/s) and (N, 3, crop, crop), in [0, 1];
             lr_imgs is None with degradation 'realesrgan', which makes the LR images on the device (no bicubic LR
             is made only to be thrown away)
    """
    degradation = getattr(hp, "degradation", "bicubic")
    if degradation not in degradations.DEGRADATIONS:
        raise ValueError(f"degradation must be one of {', '.join(degradations.DEGRADATIONS)}, not {degradation!r}.")
    dataset = SRDataset(hp.data_folder, "train", crop_size=hp.crop_size, scaling_factor=hp.scaling_factor,
                        augment=hp.augment, lr_maker=None if degradation == "realesrgan" else hp.lr_maker)
    if dataset.lr_paths is not None and degradation == "realesrgan":
        raise ValueError("The training list pairs LR images with the HR images, but degradation 'realesrgan' makes "
                         "its own LR images from HR: train on these pairs with --degradation bicubic, or list the HR "
                         "images alone (create_data_lists.py without --train_lr_folders).")
    # Decode the training images once, before the workers start (they then share the decoded pixels).
    dataset.cache_images(getattr(hp, "image_cache_mb", 0), n_threads=min(4, utils.available_cpus()))
    sampler = TrainingSampler(len(dataset), hp.batch_size, seed=hp.seed, start_iteration=start_iteration,
                              rank=rank, world_size=world_size)
    loader = DataLoader(dataset, batch_size=sampler.local_batch_size, sampler=sampler, num_workers=hp.workers,
                        collate_fn=_collate, pin_memory=torch.cuda.is_available(), persistent_workers=hp.workers > 0,
                        worker_init_fn=ignore_stop_signals)  # signals are the main process's (the save is there)
    return TrainingBatches(loader)
