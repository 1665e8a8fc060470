"""Datasets: (LR, HR) pairs from the JSON data lists, and Real-ESRGAN-style degradations."""

# ======================================================================================================
# Section: SRDataset (lead) -- (LR, HR) pairs from the JSON lists written by create_data_lists.py.
# ======================================================================================================
import json
import random
from pathlib import Path

import torch
import torchvision.transforms.functional as TF
from torch.utils.data import DataLoader, Dataset, Sampler

import utils


def read_data_list(data_folder, split, test_data_name=None):
    """
    Read a list of image paths written by create_data_lists.py.

    :param data_folder: the folder holding train_images.json and <name>_test_images.json
    :param split: 'train' or 'test'
    :param test_data_name: for split='test', the test set's name (e.g. 'Set5')
    :return: list of image paths (str)
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}.")
    file_name = "train_images.json" if split == "train" else f"{test_data_name}_test_images.json"
    list_path = Path(data_folder) / file_name
    if not list_path.is_file():
        raise FileNotFoundError(f"No data list at {list_path}. Run create_data_lists.py first (with "
                                f"--output_folder {data_folder}), or point --data_folder at its output folder.")
    image_paths = json.loads(list_path.read_text())
    if not image_paths:
        raise ValueError(f"The data list {list_path} is empty; rebuild it with create_data_lists.py.")
    return image_paths


class SRDataset(Dataset):
    """
    (LR, HR) image pairs for training or testing, both as float tensors in [0, 1].

    Training: each item is a random crop_size x crop_size HR crop of one image (optionally flipped / rotated),
    and the LR image made from it by bicubic downscaling: LR (3, crop_size/s, crop_size/s), HR (3, crop_size,
    crop_size). The item key may be an image index or an (image index, crop seed) pair from TrainingSampler,
    which makes every crop reproducible from the seed alone, in any worker process.

    Testing: each item is a whole image, cropped top-left to a multiple of the scaling factor, and its LR.
    """

    def __init__(self, data_folder, split, crop_size=96, scaling_factor=4, test_data_name=None,
                 augment=False, lr_maker="pil"):
        if split == "train" and crop_size % scaling_factor != 0:
            raise ValueError(f"crop_size ({crop_size}) must be a multiple of scaling_factor ({scaling_factor}), so "
                             f"that the LR crop is exactly crop_size / scaling_factor pixels.")
        self.image_paths = read_data_list(data_folder, split, test_data_name)
        self.split = split
        self.crop_size = crop_size
        self.scaling_factor = scaling_factor
        self.augment = augment
        self.lr_maker = lr_maker

    def __len__(self):
        return len(self.image_paths)

    def __getitem__(self, key):
        image_index, crop_seed = key if isinstance(key, tuple) else (key, key)
        hr_img = utils.load_image(self.image_paths[image_index])  # PIL, RGB
        if self.split == "train":
            rng = random.Random(crop_seed)  # this crop's own generator: reproducible in any worker
            hr_img = utils.random_crop(hr_img, self.crop_size, rng)
            if self.augment:
                hr_img = utils.augment(hr_img, rng)
        else:
            hr_img = utils.modcrop(hr_img, self.scaling_factor)
        lr_img = utils.make_lr_image(hr_img, self.scaling_factor, self.lr_maker)
        # (3, h, w) and (3, h*s, w*s), in [0, 1]
        return TF.to_tensor(lr_img), TF.to_tensor(hr_img)


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
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n_images, generator=generator).tolist()

    def __iter__(self):
        iteration, epoch, order = self.start_iteration, None, None
        while True:
            first = iteration * self.batch_size + self.rank * self.local_batch_size
            for sample_number in range(first, first + self.local_batch_size):
                sample_epoch, position = divmod(sample_number, self.n_images)
                if sample_epoch != epoch:
                    epoch, order = sample_epoch, self._epoch_order(sample_epoch)
                yield order[position], self.seed * 1_000_000_007 + sample_number
            iteration += 1


def make_train_loader(hp, start_iteration=0, rank=0, world_size=1):
    """
    The training DataLoader shared by train_srresnet.py and train_srgan.py.

    :param hp: the script's hyperparameters (data_folder, crop_size, scaling_factor, augment, lr_maker,
               batch_size, seed, workers)
    :return: an endless iterator of (lr_imgs, hr_imgs): (N, 3, crop/s, crop/s) and (N, 3, crop, crop), in [0, 1]
    """
    dataset = SRDataset(hp.data_folder, "train", crop_size=hp.crop_size, scaling_factor=hp.scaling_factor,
                        augment=hp.augment, lr_maker=hp.lr_maker)
    sampler = TrainingSampler(len(dataset), hp.batch_size, seed=hp.seed, start_iteration=start_iteration,
                              rank=rank, world_size=world_size)
    loader = DataLoader(dataset, batch_size=sampler.local_batch_size, sampler=sampler, num_workers=hp.workers,
                        pin_memory=torch.cuda.is_available(), persistent_workers=hp.workers > 0)
    return iter(loader)

# --- end of section: SRDataset ---


# ======================================================================================================
# Section: Real-ESRGAN degradations and CutBlur (degradations engineer).
# ======================================================================================================

# --- end of section: degradations ---
