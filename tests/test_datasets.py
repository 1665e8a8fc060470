"""Tests of datasets.py: crops, augmentation and LR making, SRDataset, TrainingSampler and the training loader."""
import itertools
import json
import os
import random
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import datasets
import utils


def random_pil(width=17, height=13, seed=0):
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)



@pytest.fixture
def data_folder(tmp_path):
    """A data list of three small real-looking images (smooth gradients plus noise), one of odd size."""
    rng = np.random.default_rng(0)
    paths = []
    for index, (width, height) in enumerate([(64, 48), (50, 70), (97, 61)]):
        x = np.linspace(0, 255, width)[None, :, None]
        y = np.linspace(0, 255, height)[:, None, None]
        pixels = (0.5 * x + 0.5 * y + rng.normal(0, 10, (height, width, 3))).clip(0, 255).astype(np.uint8)
        path = tmp_path / f"img{index}.png"
        Image.fromarray(pixels).save(path)
        paths.append(str(path))
    (tmp_path / "train_images.json").write_text(json.dumps(paths))
    (tmp_path / "Tiny_test_images.json").write_text(json.dumps(paths))
    return tmp_path


def test_train_items_are_lr_hr_crops_in_range(data_folder):
    dataset = datasets.SRDataset(data_folder, "train", crop_size=32, scaling_factor=4, augment=True)
    lr_img, hr_img = dataset[(2, 12345)]
    assert lr_img.shape == (3, 8, 8) and hr_img.shape == (3, 32, 32)
    for img in (lr_img, hr_img):
        assert img.dtype == torch.float32 and img.min() >= 0 and img.max() <= 1
    # The same key always gives the same crop; another seed another crop.
    assert torch.equal(dataset[(2, 12345)][1], hr_img)
    assert not torch.equal(dataset[(2, 54321)][1], hr_img)


def test_lr_is_the_bicubic_downscale_of_hr(data_folder):
    dataset = datasets.SRDataset(data_folder, "train", crop_size=32, scaling_factor=2)
    lr_img, hr_img = dataset[(0, 7)]
    # An independent reference: Pillow's bicubic on the HR crop itself.
    hr_pil = Image.fromarray((hr_img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    expected = np.asarray(hr_pil.resize((16, 16), Image.Resampling.BICUBIC))
    assert np.array_equal((lr_img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), expected)


def test_test_items_are_whole_images_cropped_to_a_multiple_of_the_scale(data_folder):
    dataset = datasets.SRDataset(data_folder, "test", scaling_factor=4, test_data_name="Tiny")
    lr_img, hr_img = dataset[2]  # 97 x 61 -> 96 x 60
    assert hr_img.shape == (3, 60, 96) and lr_img.shape == (3, 15, 24)


def test_clear_errors(data_folder, tmp_path):
    with pytest.raises(FileNotFoundError, match="Run create_data_lists.py"):
        datasets.SRDataset(tmp_path / "nowhere", "train")
    with pytest.raises(ValueError, match="multiple of scaling_factor"):
        datasets.SRDataset(data_folder, "train", crop_size=30, scaling_factor=4)
    # An image smaller than the crop says how to fix the lists.
    dataset = datasets.SRDataset(data_folder, "train", crop_size=64, scaling_factor=4)
    with pytest.raises(ValueError, match="min_size"):
        dataset[(1, 0)]  # 50 x 70


@pytest.mark.parametrize("content, shown", [('{"images": ["a.png"]}', 'holds {"images": ["a.png"]}'),
                                            ("[1, 2]", "has the entry 1"), ('[{"hr": "a.png"}]', 'has the entry {"hr"'),
                                            ("[\"a.png\"", "not valid JSON")])
def test_a_malformed_data_list_is_named_in_one_clear_error(tmp_path, content, shown):
    (tmp_path / "train_images.json").write_text(content)
    with pytest.raises(ValueError) as error:
        datasets.SRDataset(tmp_path, "train", crop_size=32, scaling_factor=4)
    message = str(error.value)
    assert str(tmp_path / "train_images.json") in message and shown in message and "create_data_lists.py" in message
    assert "\n" not in message


def test_sampler_visits_every_image_once_per_epoch_and_is_reproducible():
    sampler = datasets.TrainingSampler(n_images=10, batch_size=4, seed=3)
    keys = list(itertools.islice(iter(sampler), 30))
    assert sorted(index for index, _ in keys[:10]) == list(range(10))
    assert sorted(index for index, _ in keys[10:20]) == list(range(10))
    assert [index for index, _ in keys[:10]] != [index for index, _ in keys[10:20]]  # reshuffled each epoch
    assert len({seed for _, seed in keys}) == 30  # every sample its own crop
    assert keys == list(itertools.islice(iter(datasets.TrainingSampler(10, 4, seed=3)), 30))


def test_sampler_resumes_and_splits_exactly():
    whole = list(itertools.islice(iter(datasets.TrainingSampler(7, 4, seed=1)), 40))
    # Resuming at iteration 3 continues with sample 12.
    assert list(itertools.islice(iter(datasets.TrainingSampler(7, 4, seed=1, start_iteration=3)), 28)) == whole[12:]
    # Two ranks take the two halves of every global batch.
    rank0 = list(itertools.islice(iter(datasets.TrainingSampler(7, 4, seed=1, rank=0, world_size=2)), 20))
    rank1 = list(itertools.islice(iter(datasets.TrainingSampler(7, 4, seed=1, rank=1, world_size=2)), 20))
    for iteration in range(10):
        batch = whole[4 * iteration: 4 * iteration + 4]
        assert rank0[2 * iteration: 2 * iteration + 2] + rank1[2 * iteration: 2 * iteration + 2] == batch
    with pytest.raises(ValueError, match="divisible"):
        datasets.TrainingSampler(7, 5, world_size=2)


def test_train_loader_batches(data_folder):
    hp = SimpleNamespace(data_folder=data_folder, crop_size=24, scaling_factor=3, augment=False, lr_maker="pil",
                         batch_size=4, seed=0, workers=0)
    loader = datasets.make_train_loader(hp)
    lr_imgs, hr_imgs = next(loader)
    assert lr_imgs.shape == (4, 3, 8, 8) and hr_imgs.shape == (4, 3, 24, 24)
    # With Real-ESRGAN's degradations the loader gives the same HR crops and no LR (made on the device instead).
    hp.degradation = "realesrgan"
    no_lr_imgs, same_hr_imgs = next(datasets.make_train_loader(hp))
    assert no_lr_imgs is None and torch.equal(same_hr_imgs, hr_imgs)
    hp.degradation = "bilinear"
    with pytest.raises(ValueError, match="degradation must be one of bicubic, realesrgan"):
        datasets.make_train_loader(hp)


# ------------------------------------------------------------------------------------------------------
# Crops, augmentation, LR images
# ------------------------------------------------------------------------------------------------------
def test_random_crop_reaches_every_position_including_the_edges():
    img = Image.fromarray(np.arange(10 * 12, dtype=np.uint8).reshape(10, 12))  # 12 wide, 10 high
    rng = random.Random(0)
    corners = set()
    for _ in range(400):
        crop = np.asarray(datasets.random_crop(img, 8, rng))
        corners.add((int(crop[0, 0]) // 12, int(crop[0, 0]) % 12))  # (top, left) of the crop
    assert corners == {(top, left) for top in range(3) for left in range(5)}


def test_random_crop_of_an_image_exactly_the_crop_size_and_too_small():
    img = random_pil(96, 96)
    assert np.array_equal(np.asarray(datasets.random_crop(img, 96, random.Random(1))), np.asarray(img))
    with pytest.raises(ValueError, match="min_size"):
        datasets.random_crop(random_pil(95, 200), 96, random.Random(1))


def test_modcrop_keeps_the_top_left():
    img = random_pil(103, 77)
    cropped = datasets.modcrop(img, 4)
    assert cropped.size == (100, 76)
    assert np.array_equal(np.asarray(cropped), np.asarray(img)[:76, :100])


def test_augment_gives_all_eight_symmetries():
    img = Image.fromarray(np.arange(9, dtype=np.uint8).reshape(3, 3))
    rng = random.Random(0)
    seen = {np.asarray(datasets.augment(img, rng)).tobytes() for _ in range(200)}
    assert len(seen) == 8


@pytest.mark.parametrize("lr_maker", ["pil", "matlab"])
def test_make_lr_image_size(lr_maker):
    hr = random_pil(48, 36)
    lr = datasets.make_lr_image(hr, 4, lr_maker)
    assert lr.size == (12, 9) and lr.mode == "RGB"


def test_make_lr_image_unknown_maker():
    with pytest.raises(ValueError, match="lr_maker"):
        datasets.make_lr_image(random_pil(8, 8), 2, "lanczos")


def test_sampler_streams_come_from_utils_random_seed():
    """Epoch orders and crops have their own random streams (utils.random_seed), shared by every rank."""
    keys = list(itertools.islice(iter(datasets.TrainingSampler(n_images=5, batch_size=2, seed=7)), 10))
    assert [seed for _, seed in keys] == [utils.random_seed(7, "crop", k) for k in range(10)]
    for epoch in (0, 1):
        order = torch.randperm(5, generator=utils.make_rng(7, "epoch_order", epoch)).tolist()
        assert [index for index, _ in keys[5 * epoch: 5 * epoch + 5]] == order


# A training loop that fails in its own step (not in the data) while the loader's workers run; the error is held in a
# reference cycle (frame -> error -> traceback -> frame), so the loader is still alive when Python exits.
FAILING_STEP = """
import sys, types
sys.path.insert(0, {root!r})
import cli, datasets
hp = types.SimpleNamespace(data_folder={data!r}, crop_size=16, scaling_factor=4, augment=False, lr_maker="pil",
                           batch_size=2, seed=0, workers=2, image_cache_mb=0)
def main():
    batches = datasets.make_train_loader(hp)
    next(batches)
    try:
        raise RuntimeError("the training step failed")
    except RuntimeError as caught:
        kept = caught
        raise kept
cli.run_cli(main)
"""


def test_the_workers_never_keep_a_failed_process_from_exiting(data_folder):
    """The workers ignore SIGTERM (the main process saves on it), which is what Python's exit sends them before it
    waits for them: whatever ends the process, they must be stopped first, or the process never exits."""
    start = time.time()
    result = subprocess.run([sys.executable, "-c", FAILING_STEP.format(root=os.path.dirname(datasets.__file__),
                                                                       data=str(data_folder))],
                            capture_output=True, text=True, timeout=60, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 1 and result.stderr.strip() == "error: the training step failed", result.stderr
    assert time.time() - start < 20
