"""Tests of the training scripts end to end, on tiny models and tiny images: training, exact resume, safety, DDP.

Most runs call the script's main() in this process (fast: torch is already imported); runs that must be separate
processes (signals, torchrun, the command-line error path) start a subprocess.
"""
import contextlib
import errno
import hashlib
import io
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skimage_data
from tensorboard.backend.event_processing.event_accumulator import IMAGES, SCALARS, EventAccumulator

import augmentations
import create_data_lists
import checkpoints
import cli
import datasets
import degradations
import eval as eval_script
import inference
import metrics
import models
import plot_training
import train_srgan
import train_srresnet
import training
import training_log
import utils

# A tiny SRResNet / RRDB, tiny crops, no data-loading processes: each run takes a second or two.
TINY_SRRESNET = ["--n_blocks", "1", "--n_channels", "8", "--crop_size", "24", "--batch_size", "4", "--workers", "0"]
TINY_RRDB = ["--generator_arch", "rrdb", "--num_feat", "8", "--num_block", "1", "--num_grow_ch", "4",
             "--crop_size", "24", "--batch_size", "4", "--workers", "0"]
TINY_COMPACT = ["--generator_arch", "compact", "--num_feat", "8", "--num_conv", "2", "--crop_size", "24",
                "--batch_size", "4", "--workers", "0"]
TINY_DISCRIMINATOR = ["--n_blocks_d", "2", "--n_channels_d", "8", "--fc_size_d", "16", "--vgg_weights", "random"]
VALIDATE = ["--val_sets", "Tiny"]  # validation on the data_folder fixture's test set (the default, Set5, is absent)


@pytest.fixture(scope="module")
def data_folder(tmp_path_factory):
    """Data lists over four small real photos (scikit-image's), 64 to 96 pixels a side, and a test set 'Tiny' of two
    other small photos for validation (a grey one first, sides that are not multiples of the scale)."""
    root = tmp_path_factory.mktemp("training_data")
    (root / "images").mkdir()
    for name, size in (("astronaut", (64, 64)), ("coffee", (96, 64)), ("chelsea", (90, 60)), ("rocket", (64, 96))):
        Image.fromarray(getattr(skimage_data, name)()).resize(size, Image.Resampling.BICUBIC).save(
            root / "images" / f"{name}.png")
    (root / "Tiny").mkdir()
    for name, size in (("camera", (50, 42)), ("hubble_deep_field", (46, 39))):
        Image.fromarray(getattr(skimage_data, name)()).resize(size, Image.Resampling.BICUBIC).save(
            root / "Tiny" / f"{name}.png")
    create_data_lists.create_data_lists([str(root / "images")], [str(root / "Tiny")], min_size=24,
                                        output_folder=str(root / "lists"))
    return root / "lists"


def run_script(module, args, monkeypatch):
    """Run a training script's main() in this process with the given command-line arguments."""
    handlers = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    monkeypatch.setattr(sys, "argv", [module.__file__, *map(str, args)])
    try:
        module.main()
    finally:  # the script installs its own Ctrl+C handler; give pytest its own back
        for number, handler in handlers.items():
            signal.signal(number, handler)


def run_subprocess(args, timeout=120, **kwargs):
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          cwd=os.path.dirname(train_srresnet.__file__), **kwargs)


def assert_same_state(state_a, state_b):
    assert state_a.keys() == state_b.keys()
    for name in state_a:
        assert torch.equal(state_a[name], state_b[name]), name


# ------------------------------------------------------------------------------------------------------
# Training runs end to end
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch_args, loss", [(TINY_SRRESNET, "mse"), (TINY_RRDB, "l1"), (TINY_COMPACT, "l1")],
                         ids=["srresnet", "rrdb", "compact"])
def test_train_srresnet_runs(data_folder, tmp_path, monkeypatch, arch_args, loss):
    run_script(train_srresnet, [*arch_args, "--data_folder", data_folder, "--output_folder", tmp_path,
                                "--iterations", 3, "--pixel_loss", loss, "--ema_decay", 0.9], monkeypatch)
    checkpoint = checkpoints.load_checkpoint(tmp_path / "checkpoint_srresnet.pth", expected_kind="srresnet")
    assert checkpoint["iteration"] == 3 and checkpoint["hyperparameters"]["pixel_loss"] == loss
    # The weights moved from their initial values, and the EMA lies between (it is a different tensor set).
    torch.manual_seed(0)
    initial = models.build_generator(checkpoint["generator_arch"], **checkpoint["generator_kwargs"]).state_dict()
    changed = [name for name, value in checkpoint["generator"].items()
               if value.is_floating_point() and not torch.equal(value, initial[name])]
    assert changed
    assert any(not torch.equal(checkpoint["generator_ema"][name], checkpoint["generator"][name]) for name in changed)
    model, _, _ = inference.load_generator(tmp_path / "checkpoint_srresnet.pth")
    assert model(torch.rand(1, 3, 6, 6)).shape == (1, 3, 24, 24)


@pytest.mark.parametrize("recipe", ["srgan", "esrgan"])
def test_train_srgan_runs_from_srresnet_checkpoint(data_folder, tmp_path, monkeypatch, recipe):
    run_script(train_srresnet, [*TINY_SRRESNET, "--data_folder", data_folder, "--output_folder", tmp_path,
                                "--iterations", 2], monkeypatch)
    srresnet_checkpoint = checkpoints.load_checkpoint(tmp_path / "checkpoint_srresnet.pth")
    run_script(train_srgan, ["--recipe", recipe, *TINY_DISCRIMINATOR, "--data_folder", data_folder,
                             "--srresnet_checkpoint", tmp_path / "checkpoint_srresnet.pth", "--crop_size", 24,
                             "--batch_size", 4, "--workers", 0, "--iterations", 2, "--output_folder", tmp_path,
                             *VALIDATE, "--val_every", 1]
               + (["--artifact_loss_weight", 1] if recipe == "esrgan" else []), monkeypatch)  # (LDL needs its EMA)
    checkpoint = checkpoints.load_checkpoint(tmp_path / "checkpoint_srgan.pth", expected_kind="srgan")
    assert checkpoint["iteration"] == 2 and checkpoint["hyperparameters"]["recipe"] == recipe
    # It validated the weights eval.py takes from its checkpoint (ESRGAN's EMA), and kept the best ones.
    assert sorted(validation_records(tmp_path / "log_srgan.jsonl")) == [0, 1, 2]
    # The losses it reports, the lattice loss among them (the random VGG19 of TINY_DISCRIMINATOR weighs it 100).
    reported = [record["losses"] for record in training_log.read_jsonl(tmp_path / "log_srgan.jsonl")
                if "losses" in record]
    artifact = ["artifact"] if recipe == "esrgan" else []
    names = sorted(["adversarial", "discriminator", "lattice", "perceptual", "pixel"] + artifact)
    assert reported and all(sorted(losses) == names and losses["lattice"] > 0 and losses.get("artifact", 1) > 0
                            for losses in reported)
    assert checkpoint["hyperparameters"]["lattice_loss_weight"] == 100
    best = checkpoints.load_checkpoint(tmp_path / "best_srgan.pth", expected_kind="srgan")
    assert best["iteration"] == checkpoint["validation"]["best"]["iteration"] in (0, 1, 2)  # (0: the start won)
    assert ("generator_ema" in best) == (recipe == "esrgan")
    assert best["generator_kwargs"] == checkpoint["generator_kwargs"]
    assert checkpoint["generator_kwargs"] == srresnet_checkpoint["generator_kwargs"]
    assert ("generator_ema" in checkpoint) == (recipe == "esrgan")  # ESRGAN keeps an EMA
    # The generator started from the SRResNet weights and was then trained further.
    name = "residual_blocks.0.conv_block1.conv_block.0.weight"
    assert name in checkpoint["generator"]
    assert not torch.equal(checkpoint["generator"][name], srresnet_checkpoint["generator"][name])
    assert torch.allclose(checkpoint["generator"][name], srresnet_checkpoint["generator"][name], atol=1e-2)


def test_tiny_srresnet_learns(data_folder, tmp_path, monkeypatch):
    """The learning test: a small SRResNet fits a few images; its loss on training crops falls clearly."""
    args = [*TINY_SRRESNET, "--data_folder", data_folder, "--learning_rate", 1e-3, "--checkpoint_every", 10_000]
    run_script(train_srresnet, [*args, "--iterations", 40, "--output_folder", tmp_path], monkeypatch)
    trained = checkpoints.load_checkpoint(tmp_path / "checkpoint_srresnet.pth")
    # The same network at iteration 0: same seed, same initial weights.
    torch.manual_seed(0)
    initial = models.build_generator("srresnet", **trained["generator_kwargs"])
    final = models.build_generator("srresnet", **trained["generator_kwargs"])
    final.load_state_dict(trained["generator"])
    # Fixed training crops (the first 32 of the run's own sample stream), scored with the training loss.
    hp = train_srresnet.cli.parse_hyperparameters(train_srresnet.hyperparameters, "", argv=[*map(str, args)])
    hp.batch_size = 32
    lr_imgs, hr_imgs = next(datasets.make_train_loader(hp))
    losses = []
    for model in (initial, final):
        model.train()  # as in training: batch norm uses the batch's statistics
        with torch.no_grad():
            sr_imgs = model(utils.convert_image(lr_imgs, "[0, 1]", model.input_format))
        losses.append(torch.nn.functional.mse_loss(sr_imgs, utils.convert_image(hr_imgs, "[0, 1]",
                                                                                  model.output_format)).item())
    assert losses[1] < 0.5 * losses[0], losses


# ------------------------------------------------------------------------------------------------------
# Exact resume
# ------------------------------------------------------------------------------------------------------
def whole_and_resumed_runs(args, iterations, stop_at, tmp_path, monkeypatch):
    """train_srresnet.py with `args` for `iterations` in one go, and for `stop_at`, then resumed to `iterations`:
    the checkpoints (whole, first half, resumed), the first and last checked for their iteration counts."""
    run_script(train_srresnet, [*args, "--iterations", iterations, "--output_folder", tmp_path / "whole"], monkeypatch)
    run_script(train_srresnet, [*args, "--iterations", stop_at, "--output_folder", tmp_path / "halves"], monkeypatch)
    first_half = checkpoints.load_checkpoint(tmp_path / "halves" / "checkpoint_srresnet.pth")
    assert first_half["iteration"] == stop_at
    run_script(train_srresnet, [*args, "--iterations", iterations, "--output_folder", tmp_path / "halves",
                                "--checkpoint", tmp_path / "halves" / "checkpoint_srresnet.pth"], monkeypatch)
    whole = checkpoints.load_checkpoint(tmp_path / "whole" / "checkpoint_srresnet.pth")
    resumed = checkpoints.load_checkpoint(tmp_path / "halves" / "checkpoint_srresnet.pth")
    assert whole["iteration"] == resumed["iteration"] == iterations
    return whole, first_half, resumed


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_is_exact(data_folder, tmp_path, monkeypatch, workers):
    """4 iterations in one go == 2 iterations, stop, resume to 4: identical weights, optimiser, EMA, scheduler."""
    args = [*TINY_SRRESNET, "--workers", workers, "--data_folder", data_folder, "--augment", "true",
            "--ema_decay", 0.5, "--learning_rate_milestones", 3, "--learning_rate_gamma", 0.1]
    whole, first_half, resumed = whole_and_resumed_runs(args, 4, 2, tmp_path, monkeypatch)
    assert_same_state(whole["generator"], resumed["generator"])
    assert_same_state(whole["generator_ema"], resumed["generator_ema"])
    assert whole["scheduler_g"] == resumed["scheduler_g"] and whole["scheduler_g"]["_last_lr"] == [1e-5]
    for state_a, state_b in zip(whole["optimizer_g"]["state"].values(), resumed["optimizer_g"]["state"].values()):
        assert_same_state(state_a, state_b)
    # The halves really differ from a fresh start: the first half's weights are not the final ones.
    assert not torch.equal(first_half["generator"]["conv_block1.conv_block.0.weight"],
                           whole["generator"]["conv_block1.conv_block.0.weight"])


def test_image_cache_gives_the_same_crops(data_folder):
    """Decoding the images once (the cache) changes nothing in the crops, only the time they take."""
    cached = datasets.SRDataset(data_folder, "train", crop_size=24, augment=True)
    assert cached.cache_images(max_megabytes=16) == len(cached)
    plain = datasets.SRDataset(data_folder, "train", crop_size=24, augment=True)
    budget_of_one = datasets.SRDataset(data_folder, "train", crop_size=24, augment=True)
    assert budget_of_one.cache_images(max_megabytes=64 * 64 * 3 / 2 ** 20) == 1  # room for the first image only
    for key in [(0, 11), (1, 12), (2, 13), (3, 14), (0, 15)]:
        for lr_a, lr_b, lr_c in zip(cached[key], plain[key], budget_of_one[key]):
            assert torch.equal(lr_a, lr_b) and torch.equal(lr_a, lr_c)


# ------------------------------------------------------------------------------------------------------
# Safety: signals, NaN losses, untrusted checkpoints, user errors
# ------------------------------------------------------------------------------------------------------
def test_sigterm_saves_a_checkpoint_and_exits(data_folder, tmp_path):
    checkpoint_path = tmp_path / "checkpoint_srresnet.pth"
    process = subprocess.Popen(
        [sys.executable, "train_srresnet.py", *TINY_SRRESNET, "--data_folder", str(data_folder),
         "--output_folder", str(tmp_path), "--iterations", "100000", "--checkpoint_every", "3"],
        cwd=os.path.dirname(train_srresnet.__file__), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 90
        while not checkpoint_path.exists() and time.time() < deadline and process.poll() is None:
            time.sleep(0.1)
        assert checkpoint_path.exists(), process.communicate()[1] if process.poll() is not None else "timeout"
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 0, stderr
    assert "Received SIGTERM" in stderr
    checkpoint = checkpoints.load_checkpoint(checkpoint_path, expected_kind="srresnet")
    assert 3 <= checkpoint["iteration"] < 100000
    assert not list(tmp_path.glob("*.tmp"))  # no half-written file left behind


# The settings of the fault tests below: 2 blocks, batch 4, crop 32, fp32.
FAULT_TINY = ["--n_blocks", "2", "--n_channels", "8", "--crop_size", "32", "--batch_size", "4", "--precision", "fp32"]


def wait_for(path, process, timeout=90):
    """Wait until `path` exists (or the process ended, or the timeout passed); True if it exists."""
    deadline = time.time() + timeout
    while not path.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.1)
    return path.exists()


@pytest.mark.parametrize("script", ["train_srresnet", pytest.param("train_srgan", marks=pytest.mark.slow)])
def test_sigterm_to_the_process_group_with_workers_saves_and_exits(data_folder, tmp_path, monkeypatch, script):
    """What `timeout`, Slurm and Kubernetes do: SIGTERM to every process of the group, the DataLoader workers too.
    The workers must not die of it (that would break the next batch, and the save): the run saves and exits 0."""
    args = ["--workers", 1, "--data_folder", data_folder, "--output_folder", tmp_path, "--iterations", 100000,
            "--checkpoint_every", 3]
    if script == "train_srresnet":
        args += FAULT_TINY
    else:  # the generator of a train_srresnet.py run, and a tiny discriminator
        run_script(train_srresnet, [*FAULT_TINY, "--workers", 0, "--data_folder", data_folder, "--iterations", 1,
                                    "--output_folder", tmp_path / "srresnet"], monkeypatch)
        args += [*FAULT_TINY[4:], *TINY_DISCRIMINATOR,
                 "--srresnet_checkpoint", tmp_path / "srresnet" / "checkpoint_srresnet.pth"]
    checkpoint_path = tmp_path / f"checkpoint_{script.removeprefix('train_')}.pth"
    process = subprocess.Popen([sys.executable, f"{script}.py", *map(str, args)], start_new_session=True,
                               cwd=os.path.dirname(train_srresnet.__file__), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        started = wait_for(checkpoint_path, process)
        assert started, process.communicate()[1] if process.poll() is not None else "timeout"
        # The data-loading worker ignores SIGINT and SIGTERM (the signals' bits in its SigIgn mask). Checked first
        # because whether its death would break the run depends on timing: it does when PyTorch's SIGCHLD handler
        # raises in the main process, or when the batches fetched in advance run out before the save.
        workers = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
        assert len(workers) == 1
        ignored = int(re.search(r"SigIgn:\s*(\w+)", Path(f"/proc/{workers[0]}/status").read_text()).group(1), 16)
        assert ignored >> (signal.SIGTERM - 1) & 1 and ignored >> (signal.SIGINT - 1) & 1
        os.killpg(process.pid, signal.SIGTERM)  # the whole group: the script and its data-loading worker
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 0, stderr
    assert "Received SIGTERM" in stderr and "killed by signal" not in stderr
    checkpoint = checkpoints.load_checkpoint(checkpoint_path)
    assert 3 <= checkpoint["iteration"] < 100000 and not list(tmp_path.glob(".*.tmp"))
    deadline = time.time() + 10  # and the worker is gone with it
    while time.time() < deadline:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("a process of the run outlived it")


def error_lines(stderr):
    """The 'error: ...' lines of a script's stderr (a progress bar may precede one on the same line, after a \\r)."""
    return [line[line.index("error:"):] for line in re.split(r"[\r\n]+", stderr) if "error:" in line]


@pytest.mark.parametrize("damage", ["deleted", "too_small"])
def test_a_data_error_in_a_worker_stops_the_run_at_once(tmp_path, damage):
    """A training image deleted, or replaced by one smaller than the crop, while a run with data-loading processes
    trains: one line naming the file and the reason, exit 1 within seconds (the workers ignore SIGTERM, so nothing
    may wait for them to end by themselves), no process left behind, and the last checkpoint kept."""
    images = tmp_path / "images"
    images.mkdir()
    for name in ("astronaut", "coffee"):
        Image.fromarray(getattr(skimage_data, name)()).resize((48, 48)).save(images / f"{name}.png")
    create_data_lists.create_data_lists([str(images)], [], min_size=32, output_folder=str(tmp_path / "lists"))
    checkpoint_path = tmp_path / "run" / "checkpoint_srresnet.pth"
    process = subprocess.Popen(
        [sys.executable, "train_srresnet.py", *map(str, FAULT_TINY), "--workers", "2", "--image_cache_mb", "0",
         "--data_folder", str(tmp_path / "lists"), "--output_folder", str(tmp_path / "run"), "--iterations", "100000",
         "--checkpoint_every", "1", "--val_every", "0"], start_new_session=True,
        cwd=os.path.dirname(train_srresnet.__file__), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    damaged = images / "coffee.png"
    try:
        assert wait_for(checkpoint_path, process), process.communicate()[1] if process.poll() is not None else "timeout"
        if damage == "deleted":
            damaged.unlink()
        else:  # replaced at once (a rename), as a program that rewrites its files does
            Image.fromarray(skimage_data.coffee()).resize((20, 20)).save(tmp_path / "small.png")
            os.replace(tmp_path / "small.png", damaged)
        start = time.time()
        _, stderr = process.communicate(timeout=60)
        elapsed = time.time() - start
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # (the script and its workers, should they still be there)
        process.wait()
    assert process.returncode == 1 and elapsed < 20, (process.returncode, elapsed, stderr)
    lines = error_lines(stderr)
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    reason = "Image not found" if damage == "deleted" else "smaller than the 32px crop"
    assert str(damaged) in lines[0] and reason in lines[0], lines
    assert checkpoints.load_checkpoint(checkpoint_path)["iteration"] >= 1
    assert not list(checkpoint_path.parent.glob(".*.tmp"))


def test_a_second_ctrl_c_during_the_save_waits_for_it(data_folder, tmp_path, monkeypatch, capsys):
    """Ctrl+C twice while a checkpoint is written (the first Ctrl+C's save takes long for a big model): the save
    goes on, says so, and the run stops after it with a complete checkpoint."""
    save_checkpoint = checkpoints.save_checkpoint

    def save_interrupted_twice(state, path):
        for _ in range(2):
            signal.raise_signal(signal.SIGINT)  # (its handler runs right here, as it would within torch.save)
        save_checkpoint(state, path)

    monkeypatch.setattr(checkpoints, "save_checkpoint", save_interrupted_twice)
    try:
        run_script(train_srresnet, [*FAULT_TINY, "--workers", 0, "--data_folder", data_folder, "--output_folder",
                                    tmp_path, "--iterations", 100, "--checkpoint_every", 2], monkeypatch)
    except KeyboardInterrupt:
        pytest.fail("the second Ctrl+C broke the save off")
    assert "saving, please wait" in capsys.readouterr().err
    checkpoint = checkpoints.load_checkpoint(tmp_path / "checkpoint_srresnet.pth")
    assert checkpoint["iteration"] == 3  # the save at 2 completed; the run stopped after the next iteration's save
    assert not list(tmp_path.glob(".*.tmp"))


def test_repeated_sigterms_around_a_save_stop_the_run_cleanly_after_it(data_folder, tmp_path, monkeypatch, capsys):
    """Three SIGTERMs 30 ms apart (a cluster's scheduler, `timeout`, a process manager signalling the group and the
    process): one request to save and stop, not an escalation. The run stops after its next save, with a complete
    checkpoint, no traceback, and one line about the signal."""
    save_checkpoint = checkpoints.save_checkpoint
    signalled = []

    def save_then_be_signalled_thrice(state, path):
        save_checkpoint(state, path)
        if not signalled:  # after the first save: the signals arrive between two saves
            for _ in range(3):
                signalled.append(signal.SIGTERM)
                signal.raise_signal(signal.SIGTERM)
                time.sleep(0.03)

    monkeypatch.setattr(checkpoints, "save_checkpoint", save_then_be_signalled_thrice)
    try:
        run_script(train_srresnet, [*FAULT_TINY, "--workers", 0, "--data_folder", data_folder, "--output_folder",
                                    tmp_path, "--iterations", 100, "--checkpoint_every", 2], monkeypatch)
    except (KeyboardInterrupt, SystemExit) as error:
        pytest.fail(f"the repeated SIGTERM broke the run off: {error!r}")
    error = capsys.readouterr().err
    assert error.count("Received SIGTERM") == 1, error
    assert checkpoints.load_checkpoint(tmp_path / "checkpoint_srresnet.pth")["iteration"] == 3
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_second_ctrl_c_outside_a_save_quits_at_once_in_one_line(monkeypatch, capsys):
    """Ctrl+C twice is a person who wants out now: one line (the last checkpoint is intact, as every save is atomic),
    exit status 130, no KeyboardInterrupt traceback. Signals during a save only ask to stop after it."""
    handlers = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        stop_signal = training.GracefulExit()
        signal.raise_signal(signal.SIGINT)
        with stop_signal.saving():
            signal.raise_signal(signal.SIGINT)  # (waits for the save)
            signal.raise_signal(signal.SIGTERM)
        signal.raise_signal(signal.SIGTERM)  # the same request again
        assert stop_signal.should_stop()
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            signal.raise_signal(signal.SIGINT)
    finally:
        for number, handler in handlers.items():
            signal.signal(number, handler)
    assert exit_info.value.code == 130
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "SIGINT again" in lines[0] and "intact" in lines[0], lines


def test_output_folder_is_checked_before_training(data_folder, tmp_path, monkeypatch, capsys):
    """A file given as the output folder, a folder that cannot be written, a disk without room for a checkpoint:
    one line each, before any training (no log, no checkpoint)."""
    monkeypatch.setattr(train_srresnet, "main", lambda main=train_srresnet.main: cli.run_cli(main))
    args = [*FAULT_TINY, "--workers", 0, "--data_folder", data_folder, "--iterations", 2]
    (tmp_path / "a_file").write_text("not a folder")
    code, lines = run_cli(train_srresnet, [*args, "--output_folder", tmp_path / "a_file"], monkeypatch, capsys)
    assert code == 1 and len(lines) == 1 and "is a file, not a folder" in lines[0], lines

    def permission_denied(*args, **kwargs):  # what a read-only folder answers (chmod would not stop root)
        raise PermissionError(13, "Permission denied")

    with monkeypatch.context() as patch:
        patch.setattr(training.tempfile, "TemporaryFile", permission_denied)
        code, lines = run_cli(train_srresnet, [*args, "--output_folder", tmp_path / "read_only"], monkeypatch, capsys)
    assert code == 1 and len(lines) == 1, lines
    assert "Cannot write to the output folder" in lines[0] and "Permission denied" in lines[0], lines
    with monkeypatch.context() as patch:
        patch.setattr(checkpoints.shutil, "disk_usage", lambda folder: SimpleNamespace(free=100_000))  # 0.1 MB free
        code, lines = run_cli(train_srresnet, [*args, "--output_folder", tmp_path / "full"], monkeypatch, capsys)
    assert code == 1 and len(lines) == 1 and "No room for a checkpoint" in lines[0], lines
    assert not list((tmp_path / "full").glob("*.pth")) and not (tmp_path / "full" / "log_srresnet.jsonl").exists()


class FullDiskFile:
    """A file on a disk with no space left: opened and locked like any other, every write refused (ENOSPC)."""

    def __init__(self, file):
        self.file = file

    def __getattr__(self, name):
        return getattr(self.file, name)

    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_tensorboard_folder_that_is_a_file_or_read_only_and_a_full_disk_give_one_line(data_folder, tmp_path,
                                                                                        monkeypatch, capsys):
    """Found before training, one line each: a file where the run's TensorBoard folder goes, a TensorBoard folder that
    refuses writes (of a run being resumed), and a disk so full that the lock file cannot be written."""
    monkeypatch.setattr(train_srresnet, "main", lambda main=train_srresnet.main: cli.run_cli(main))
    args = [*FAULT_RUN, "--data_folder", data_folder, "--iterations", 1, "--val_every", 0]
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "tensorboard_srresnet").write_text("a file of yours")
    code, lines = run_cli(train_srresnet, [*args, "--output_folder", tmp_path / "a"], monkeypatch, capsys)
    assert code == 1 and len(lines) == 1 and "tensorboard_srresnet" in lines[0], lines
    assert (tmp_path / "a" / "tensorboard_srresnet").read_text() == "a file of yours"

    run_script(train_srresnet, [*args, "--output_folder", tmp_path / "b"], monkeypatch)
    temporary_file = tempfile.TemporaryFile

    def read_only_tensorboard_folder(*args, dir=None, **kwargs):  # (chmod would not stop root)
        if Path(dir).name == "tensorboard_srresnet":
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
        return temporary_file(*args, dir=dir, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(training.tempfile, "TemporaryFile", read_only_tensorboard_folder)
        code, lines = run_cli(train_srresnet, [*args, "--output_folder", tmp_path / "b", "--iterations", 2,
                                               "--checkpoint", tmp_path / "b" / "checkpoint_srresnet.pth"],
                              monkeypatch, capsys)
    assert code == 1 and len(lines) == 1, lines
    assert "tensorboard_srresnet" in lines[0] and "Permission denied" in lines[0], lines

    with monkeypatch.context() as patch:
        patch.setattr(training, "open", lambda *args, **kwargs: FullDiskFile(open(*args, **kwargs)), raising=False)
        code, lines = run_cli(train_srresnet, [*args, "--output_folder", tmp_path / "c"], monkeypatch, capsys)
    assert code == 1 and len(lines) == 1 and "No space left on device" in lines[0], lines


def test_a_damaged_log_does_not_block_a_resume(data_folder, tmp_path, monkeypatch, capsys):
    """Lines of log_srresnet.jsonl that are not records (a list, a record without its iteration, binary bytes) are
    left out, with a note naming the file, and the run resumes; its log then holds each iteration's records once."""
    args = [*FAULT_RUN, "--data_folder", data_folder, "--output_folder", tmp_path, "--print_every", 1]
    run_script(train_srresnet, [*args, "--iterations", 2], monkeypatch)
    log = tmp_path / "log_srresnet.jsonl"
    with open(log, "ab") as file:
        file.write(b'[1, 2]\n{"time": 5.0, "losses": {"loss": 1.0}}\n\xff\xfe\x00 binary\n')
    capsys.readouterr()
    run_script(train_srresnet, [*args, "--iterations", 3, "--checkpoint", tmp_path / "checkpoint_srresnet.pth"],
               monkeypatch)
    assert str(log) in capsys.readouterr().err
    assert [record["iteration"] for record in training_log.read_jsonl(log) if "losses" in record] == [1, 2, 3]
    assert checkpoints.load_checkpoint(tmp_path / "checkpoint_srresnet.pth")["iteration"] == 3


def test_a_failed_save_says_why_and_keeps_the_previous_checkpoint(data_folder, tmp_path, monkeypatch, capsys):
    """The disk fills up during a run: the save of iteration 4 fails (ENOSPC after part of the file). One line says
    which file, why, and that the checkpoint of iteration 2 is intact; the partial file is removed."""
    torch_save = torch.save

    def save_on_a_disk_that_fills_up(obj, file, *args, **kwargs):
        if obj.get("iteration") == 4:
            file.write(b"\0" * 100_000)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        torch_save(obj, file, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_on_a_disk_that_fills_up)
    monkeypatch.setattr(train_srresnet, "main", lambda main=train_srresnet.main: cli.run_cli(main))
    code, lines = run_cli(train_srresnet, [*FAULT_TINY, "--workers", 0, "--data_folder", data_folder,
                                           "--output_folder", tmp_path, "--iterations", 10, "--checkpoint_every", 2],
                          monkeypatch, capsys)
    checkpoint_path = tmp_path / "checkpoint_srresnet.pth"
    assert not any("Traceback" in line for line in lines)
    lines = [line for line in lines if line.startswith("error:")]  # (the progress bar and the notes before it)
    assert code == 1 and len(lines) == 1, lines
    assert str(checkpoint_path) in lines[0] and "No space left on device" in lines[0], lines
    assert "intact" in lines[0] and "iteration 2" in lines[0], lines
    assert not list(tmp_path.glob(".*.tmp"))
    assert checkpoints.load_checkpoint(checkpoint_path)["iteration"] == 2


def test_temporary_files_of_interrupted_saves_are_removed(data_folder, tmp_path, monkeypatch, capsys):
    """A run killed (kill -9) while saving leaves its temporary file; the next run in the folder removes those of
    its own files, and no others."""
    ours = [tmp_path / ".checkpoint_srresnet.pth.k2j4_x.tmp", tmp_path / ".best_srresnet.pth.0a9bz1.tmp"]
    others = [tmp_path / ".checkpoint_srgan.pth.k2j4_x.tmp", tmp_path / ".notes.txt.abc.tmp"]
    for path in ours + others:
        path.write_bytes(b"\0" * 5000)
    run_script(train_srresnet, [*FAULT_TINY, "--workers", 0, "--data_folder", data_folder, "--output_folder",
                                tmp_path, "--iterations", 1], monkeypatch)
    assert not any(path.exists() for path in ours) and all(path.exists() for path in others)
    assert "removed 2 temporary file(s)" in capsys.readouterr().err


LOCK_HOLDER = """
import sys, time
sys.path.insert(0, {root!r})
import training
training.lock_output_folder({folder!r}, "srresnet")
print("locked", flush=True)
time.sleep(120)
"""


def test_a_fresh_run_never_replaces_the_run_in_its_folder(data_folder, tmp_path, monkeypatch, capsys):
    """A run without --checkpoint into a folder that holds a run of the same script (its checkpoint, best weights,
    JSON-lines log or TensorBoard folder): refused with one line that names the --checkpoint resuming it and
    --overwrite; every file of the previous run byte for byte as it was. --overwrite true starts over."""
    run = tmp_path / "run"
    args = [*FAULT_RUN, "--data_folder", data_folder, "--output_folder", run, *VALIDATE, "--val_every", 1]
    run_script(train_srresnet, [*args, "--iterations", 2], monkeypatch)

    def files(folder):
        return {path.relative_to(folder): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}

    before = files(run)
    assert {"checkpoint_srresnet.pth", "best_srresnet.pth", "log_srresnet.jsonl"} <= {str(p) for p in before}
    assert any(str(path).startswith("tensorboard_srresnet/") for path in before)
    monkeypatch.setattr(train_srresnet, "main", lambda main=train_srresnet.main: cli.run_cli(main))
    code, lines = run_cli(train_srresnet, [*args, "--iterations", 3], monkeypatch, capsys)
    assert code == 1 and len(lines) == 1, lines
    assert f"--checkpoint {run / 'checkpoint_srresnet.pth'}" in lines[0] and "--overwrite true" in lines[0], lines
    assert files(run) == before
    # Any one of the run's files is a run (a run stopped before its first save has its logs only).
    for name in ("checkpoint_srresnet.pth", "best_srresnet.pth", "log_srresnet.jsonl", "tensorboard_srresnet"):
        folder = tmp_path / f"only_{name}"
        (folder / name).parent.mkdir(parents=True)
        (folder / name).mkdir() if name.startswith("tensorboard") else (folder / name).write_bytes(b"x")
        code, lines = run_cli(train_srresnet, [*args[:-4], "--output_folder", folder, "--iterations", 1],
                              monkeypatch, capsys)
        assert code == 1 and "--overwrite true" in lines[0], (name, lines)
        assert sorted(p.name for p in folder.iterdir()) == [name]
    # Another script's run may share the folder; --overwrite true starts over, with nothing of the old run left.
    (run / "checkpoint_srgan.pth").write_bytes(b"another script's run")
    run_script(train_srresnet, [*args, "--iterations", 1, "--overwrite", "true", "--val_every", 0], monkeypatch)
    assert checkpoints.load_checkpoint(run / "checkpoint_srresnet.pth")["iteration"] == 1
    assert not (run / "best_srresnet.pth").exists() and validation_records(run / "log_srresnet.jsonl") == {}
    assert (run / "checkpoint_srgan.pth").read_bytes() == b"another script's run"


def test_a_second_run_into_the_same_folder_is_refused(data_folder, tmp_path, monkeypatch, capsys):
    """While one train_srresnet.py run holds its output folder, a second one there is refused with one line; once
    the first is gone, even killed with no chance to clean up (kill -9), the folder is free again."""
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER.format(
        root=os.path.dirname(train_srresnet.__file__), folder=str(tmp_path))], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        monkeypatch.setattr(train_srresnet, "main", lambda main=train_srresnet.main: cli.run_cli(main))
        args = [*FAULT_TINY, "--workers", 0, "--data_folder", data_folder, "--output_folder", tmp_path,
                "--iterations", 1]
        code, lines = run_cli(train_srresnet, args, monkeypatch, capsys)
        assert code == 1 and len(lines) == 1, lines
        assert "in use by another train_srresnet.py run" in lines[0] and f"pid {holder.pid}" in lines[0], lines
        assert not (tmp_path / "checkpoint_srresnet.pth").exists()
        # train_srgan.py writes other files: it may share the folder.
        training.lock_output_folder(tmp_path, "srgan")
        training.release_output_folder(tmp_path, "srgan")
    finally:
        holder.kill()  # SIGKILL: its lock file stays behind, naming a dead process
        holder.wait()
    assert (tmp_path / "train_srresnet.lock").exists()
    run_script(train_srresnet, args, monkeypatch)
    assert checkpoints.load_checkpoint(tmp_path / "checkpoint_srresnet.pth")["iteration"] == 1
    assert not (tmp_path / "train_srresnet.lock").exists()  # released at the end


# ------------------------------------------------------------------------------------------------------
# Resuming with other flags
# ------------------------------------------------------------------------------------------------------
def test_resume_refuses_another_architecture_and_records_the_one_used(data_folder, tmp_path, monkeypatch, capsys):
    base = ["--crop_size", 32, "--batch_size", 4, "--precision", "fp32", "--workers", 0, "--data_folder", data_folder,
            "--output_folder", tmp_path]
    run_script(train_srresnet, [*base, "--n_blocks", 2, "--n_channels", 8, "--iterations", 1], monkeypatch)
    checkpoint_path = tmp_path / "checkpoint_srresnet.pth"
    monkeypatch.setattr(train_srresnet, "main", lambda main=train_srresnet.main: cli.run_cli(main))
    for flags in (["--n_blocks", 8], ["--generator_arch", "rrdb"], ["--n_channels", 16, "--scaling_factor", 2]):
        code, lines = run_cli(train_srresnet, [*base, "--n_blocks", 2, "--n_channels", 8, *flags, "--iterations", 2,
                                               "--checkpoint", checkpoint_path], monkeypatch, capsys)
        assert code == 1 and len(lines) == 1 and "Cannot resume" in lines[0], lines
        for name, value in zip(flags[::2], flags[1::2]):
            assert f"{name} {value}" in lines[0], lines
    assert checkpoints.load_checkpoint(checkpoint_path)["iteration"] == 1  # nothing was overwritten
    # The architecture flags left out (their defaults, 16 blocks of 64 channels, are not the checkpoint's): the
    # checkpoint's network, and the new checkpoint records it.
    run_script(train_srresnet, [*base, "--iterations", 2, "--checkpoint", checkpoint_path], monkeypatch)
    checkpoint = checkpoints.load_checkpoint(checkpoint_path)
    assert checkpoint["iteration"] == 2 and checkpoint["generator_kwargs"]["n_blocks"] == 2
    assert checkpoint["hyperparameters"]["n_blocks"] == 2 and checkpoint["hyperparameters"]["n_channels"] == 8


def test_resume_applies_a_changed_learning_rate_schedule(data_folder, tmp_path, monkeypatch, capsys):
    """A long run resumed at iteration 4 with a new learning rate and milestones, one of them already passed: the
    learning rate is the new one times gamma at once, the later milestone applies as it comes, a line says so, and
    the checkpoint records the new schedule. Not giving them keeps the checkpoint's schedule."""
    base = [*FAULT_TINY, "--workers", 0, "--data_folder", data_folder, "--output_folder", tmp_path,
            "--print_every", 1]
    run_script(train_srresnet, [*base, "--iterations", 4, "--learning_rate", 2e-3], monkeypatch)
    checkpoint_path = tmp_path / "checkpoint_srresnet.pth"
    capsys.readouterr()
    run_script(train_srresnet, [*base, "--iterations", 6, "--checkpoint", checkpoint_path, "--learning_rate", 1e-2,
                                "--learning_rate_milestones", 2, 5, "--learning_rate_gamma", 0.1], monkeypatch)
    stderr = capsys.readouterr().err
    # From iteration 4 on: 1e-2 with milestone 2 passed, 1e-3; from iteration 5 (the second milestone) on, 1e-4.
    assert "Learning-rate schedule changed on resume" in stderr and "learning rate now 0.001" in stderr, stderr
    learning_rates = {record["iteration"]: record["learning_rate"]
                      for record in training_log.read_jsonl(tmp_path / "log_srresnet.jsonl") if "learning_rate" in record}
    # (the rate logged at iteration i is the one of the steps after it)
    assert learning_rates[4] == pytest.approx(2e-3) and learning_rates[5] == learning_rates[6] == pytest.approx(1e-4)
    checkpoint = checkpoints.load_checkpoint(checkpoint_path)
    assert checkpoint["optimizer_g"]["param_groups"][0]["lr"] == pytest.approx(1e-4)
    hyperparameters = checkpoint["hyperparameters"]
    assert hyperparameters["learning_rate"] == 1e-2 and hyperparameters["learning_rate_milestones"] == [2, 5]
    assert hyperparameters["learning_rate_gamma"] == 0.1
    # Resumed again without the flags (their defaults are not this schedule): the checkpoint's schedule goes on.
    run_script(train_srresnet, [*FAULT_TINY, "--workers", 0, "--data_folder", data_folder, "--output_folder",
                                tmp_path, "--iterations", 7, "--checkpoint", checkpoint_path], monkeypatch)
    checkpoint = checkpoints.load_checkpoint(checkpoint_path)
    assert checkpoint["optimizer_g"]["param_groups"][0]["lr"] == pytest.approx(1e-4)
    assert checkpoint["hyperparameters"]["learning_rate"] == 1e-2
    assert checkpoint["hyperparameters"]["learning_rate_milestones"] == [2, 5]


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(data_folder, tmp_path, monkeypatch):
    # The MSE loss returns NaN from its 4th call on (iteration 4); a checkpoint is written every 2 iterations.
    calls = []
    mse_forward = torch.nn.MSELoss.forward

    def poisoned_forward(self, input, target):
        calls.append(1)
        loss = mse_forward(self, input, target)
        return loss * float("nan") if len(calls) >= 4 else loss

    monkeypatch.setattr(torch.nn.MSELoss, "forward", poisoned_forward)
    saved_hashes = []
    save_checkpoint = checkpoints.save_checkpoint

    def recording_save(state, path):
        save_checkpoint(state, path)
        saved_hashes.append(hashlib.sha256(path.read_bytes()).hexdigest())

    monkeypatch.setattr(checkpoints, "save_checkpoint", recording_save)
    with pytest.raises(RuntimeError, match=r"loss became nan between iterations 2 and 4.*last good checkpoint"):
        run_script(train_srresnet, [*TINY_SRRESNET, "--data_folder", data_folder, "--output_folder", tmp_path,
                                    "--iterations", 10, "--checkpoint_every", 2, "--print_every", 5], monkeypatch)
    checkpoint_path = tmp_path / "checkpoint_srresnet.pth"
    assert len(saved_hashes) == 1  # the checkpoint of iteration 2, and none after the NaN
    assert hashlib.sha256(checkpoint_path.read_bytes()).hexdigest() == saved_hashes[0]
    checkpoint = checkpoints.load_checkpoint(checkpoint_path)
    assert checkpoint["iteration"] == 2
    assert all(torch.isfinite(value).all() for value in checkpoint["generator"].values())


class _WritesAFileWhenUnpickled:
    """A pickled object that runs code when loaded: open(marker, 'w') creates the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def run_cli(module, args, monkeypatch, capsys):
    """Run a script as its command line does (cli.run_cli): return (exit code, stderr lines)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_script(module, args, monkeypatch)
    return exit_info.value.code, capsys.readouterr().err.strip().splitlines()


def test_crafted_pickle_checkpoint_is_refused(data_folder, tmp_path, monkeypatch, capsys):
    marker = tmp_path / "code_was_run"
    crafted = tmp_path / "crafted.pth"
    torch.save({"kind": "srresnet", "generator": _WritesAFileWhenUnpickled(marker)}, crafted)
    # (checkpoints.load_checkpoint itself is tested in test_utils.py.) Through the scripts' flags: one clear line on
    # stderr, exit code 1, and no code run.
    monkeypatch.setattr(train_srresnet, "main", lambda main=train_srresnet.main: cli.run_cli(main))
    monkeypatch.setattr(train_srgan, "main", lambda main=train_srgan.main: cli.run_cli(main))
    for module, flag in ((train_srresnet, "--checkpoint"), (train_srgan, "--srresnet_checkpoint"),
                         (train_srgan, "--checkpoint")):
        code, lines = run_cli(module, [*TINY_SRRESNET[-2:], "--data_folder", data_folder, flag, crafted,
                                       "--output_folder", tmp_path], monkeypatch, capsys)
        assert code == 1 and len(lines) == 1 and lines[0].startswith("error: Refused to load"), lines
        assert not marker.exists()


def test_user_errors_give_one_clear_line(data_folder, tmp_path, monkeypatch, capsys):
    # A missing data folder, through the real command line.
    result = run_subprocess(["train_srresnet.py", "--data_folder", tmp_path / "missing", "--workers", 0,
                             "--output_folder", tmp_path])
    assert result.returncode == 1 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "create_data_lists.py" in lines[0], result.stderr
    # A checkpoint of the wrong kind: an SRGAN checkpoint given where an SRResNet one is needed.
    run_script(train_srresnet, [*TINY_SRRESNET, "--data_folder", data_folder, "--output_folder", tmp_path,
                                "--iterations", 1], monkeypatch)
    run_script(train_srgan, [*TINY_DISCRIMINATOR, "--data_folder", data_folder, "--crop_size", 24, "--batch_size", 4,
                             "--workers", 0, "--iterations", 1, "--output_folder", tmp_path,
                             "--srresnet_checkpoint", tmp_path / "checkpoint_srresnet.pth"], monkeypatch)
    monkeypatch.setattr(train_srgan, "main", lambda main=train_srgan.main: cli.run_cli(main))
    code, lines = run_cli(train_srgan, ["--data_folder", data_folder, "--workers", 0, "--output_folder",
                                        tmp_path / "other", "--srresnet_checkpoint", tmp_path / "checkpoint_srgan.pth"],
                          monkeypatch, capsys)
    assert code == 1 and len(lines) == 1, lines
    assert "train_srgan.py" in lines[0] and "train_srresnet.py is needed" in lines[0], lines


# The fault tests below run with FAULT_TINY and no data-loading processes.
FAULT_RUN = [*FAULT_TINY, "--workers", "0"]


@pytest.mark.parametrize("script, flags, expected", [
    (train_srresnet, ["--checkpoint_every", 0], "--checkpoint_every must be greater than 0, not 0."),
    (train_srresnet, ["--print_every", 0], "--print_every must be greater than 0, not 0."),
    (train_srresnet, ["--batch_size", -4], "--batch_size must be greater than 0, not -4."),
    (train_srresnet, ["--n_blocks", -1], "--n_blocks must be greater than 0, not -1."),
    (train_srresnet, ["--workers", -1], "--workers must be 0 or more, not -1."),
    (train_srresnet, ["--pixel_loss", "huber"], "--pixel_loss must be one of mse, l1, not 'huber'."),
    (train_srresnet, ["--generator_arch", "edsr"], "--generator_arch must be one of srresnet, rrdb, compact, not 'edsr'."),
    (train_srgan, ["--checkpoint_every", 0], "--checkpoint_every must be greater than 0, not 0."),
    (train_srgan, ["--gan_type", "hinge"], "--gan_type must be one of vanilla, relativistic, not 'hinge'."),
    (train_srgan, ["--n_blocks_d", 0], "--n_blocks_d must be greater than 0, not 0."),
    (train_srresnet, ["--mixopts", "cutmix", "mixup", "--mixprob", 0.5, 0.5, 0.5],
     "--mixprob gives 3 values for 2 --mixopts: give one per option, one for all, or none (the paper's)."),
    (train_srgan, ["--mixopts", "cutmix", "blur"], "--mixopts takes each of blend rgb mixup cutout cutmix cutmixup "
     "cutblur none at most once, not cutmix blur (the paper's mixture: --mixopts blend rgb mixup cutout cutmix cutmixup "
     "cutblur)."),
], ids=lambda value: value.__name__ if hasattr(value, "__name__") else None)
def test_flags_that_cannot_work_give_one_line_before_any_work(data_folder, tmp_path, monkeypatch, capsys, script,
                                                              flags, expected):
    monkeypatch.setattr(script, "main", lambda main=script.main: cli.run_cli(main))
    # (train_srgan.py has no --n_blocks / --n_channels: its generator comes from the checkpoint.)
    base = FAULT_RUN if script is train_srresnet else [*FAULT_RUN[4:], *TINY_DISCRIMINATOR[:4]]
    code, lines = run_cli(script, [*base, "--data_folder", data_folder, "--output_folder", tmp_path / "run",
                                   "--iterations", 2, *flags], monkeypatch, capsys)
    assert code == 1 and lines == [f"error: {expected}"], lines
    assert not (tmp_path / "run").exists()  # refused before anything was made


class Hang(BaseException):
    """Raised by an alarm when a call runs far longer than it should (a BaseException: no `except` swallows it)."""


@pytest.mark.parametrize("script, flags, expected", [
    (train_srresnet, ["--pretrained", "compact", "--num_conv", 100000], "--num_conv must be at most 512, not 100000"),
    (train_srresnet, ["--n_blocks", 100000], "--n_blocks must be at most 512, not 100000"),
    (train_srresnet, ["--n_channels", 100000], "--n_channels must be at most 4096, not 100000"),
    (train_srresnet, ["--generator_arch", "compact", "--num_feat", 4096], "The generator (compact) would have 4,834 "
     "million parameters"),
    (train_srgan, ["--n_blocks_d", 40], "The discriminator (srgan) would have"),
    (train_srgan, ["--n_blocks_d", 100], "The discriminator (srgan) would have"),
], ids=["pretrained_num_conv", "n_blocks", "n_channels", "num_feat", "n_blocks_d", "n_blocks_d_overflow"])
def test_networks_too_large_to_train_are_refused_in_one_line_before_building(data_folder, tmp_path, monkeypatch,
                                                                              capsys, script, flags, expected):
    """--num_conv 100000 built for minutes, its memory growing without bound. Every size flag is bounded (layer
    counts by training.MAX_LAYERS, widths by models.MAX_ARCHITECTURE_VALUE), and the network's parameters are
    counted on the 'meta' device (no memory) before it is built (training.check_network_size)."""
    monkeypatch.setattr(script, "main", lambda main=script.main: cli.run_cli(main))

    def hang(*args):
        raise Hang("the check took more than 30 s: the network is being built")

    base = ["--crop_size", 32, "--batch_size", 4, "--workers", 0]
    if script is train_srgan:
        base += ["--srresnet_checkpoint", "srresnet", "--vgg_weights", "random"]
    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(30)
    try:
        code, lines = run_cli(script, [*base, "--data_folder", data_folder, "--output_folder", tmp_path / "run",
                                       "--iterations", 2, *flags], monkeypatch, capsys)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert code == 1 and len(lines) == 1 and lines[0].startswith(f"error: {expected}"), lines
    assert not (tmp_path / "run").exists()  # refused before anything was made


def test_weights_of_another_scale_than_the_data_are_refused(data_folder, tmp_path, monkeypatch, capsys):
    """--pretrained (or train_srgan.py's --srresnet_checkpoint) with an x2 network on x4 data would train it on
    nearest-upscaled crops and exit 0: refused, with one line. A pixel-unshuffle x2 model (an x4 network behind a
    2 x 2 fold) is the one network meant for such input, and is taken."""
    def save_generator(path, **kwargs):
        torch.manual_seed(0)
        generator = models.build_generator("srresnet", n_channels=8, n_blocks=1, **kwargs)
        torch.save({"params": generator.state_dict(), "generator_arch": "srresnet",
                    "generator_kwargs": generator.generator_kwargs}, path)
        return path

    x2 = save_generator(tmp_path / "x2.pth", scaling_factor=2)
    monkeypatch.setattr(train_srresnet, "main", lambda main=train_srresnet.main: cli.run_cli(main))
    monkeypatch.setattr(train_srgan, "main", lambda main=train_srgan.main: cli.run_cli(main))
    for script, flag in ((train_srresnet, "--pretrained"), (train_srgan, "--srresnet_checkpoint")):
        base = FAULT_RUN if script is train_srresnet else [*FAULT_RUN[4:], *TINY_DISCRIMINATOR]
        code, lines = run_cli(script, [*base, "--data_folder", data_folder, "--output_folder", tmp_path / "run",
                                       "--iterations", 1, flag, x2], monkeypatch, capsys)
        assert code == 1 and len(lines) == 1, lines
        assert "x2" in lines[0] and "x4" in lines[0] and "--scaling_factor 2" in lines[0], lines
        assert not list((tmp_path / "run").glob("checkpoint_*.pth"))
    unshuffle = save_generator(tmp_path / "unshuffle_x2.pth", scaling_factor=2, unshuffle_scale=2)
    run_script(train_srresnet, [*FAULT_RUN, "--data_folder", data_folder, "--output_folder", tmp_path / "run",
                                "--iterations", 1, "--pretrained", unshuffle, "--overwrite", "true"], monkeypatch)
    assert checkpoints.load_checkpoint(tmp_path / "run" / "checkpoint_srresnet.pth")["iteration"] == 1


def test_a_checkpoint_lacking_what_a_run_needs_gives_one_line(data_folder, tmp_path, monkeypatch, capsys):
    run_script(train_srresnet, [*FAULT_RUN, "--data_folder", data_folder, "--output_folder", tmp_path, "--iterations",
                                1], monkeypatch)
    checkpoint = checkpoints.load_checkpoint(tmp_path / "checkpoint_srresnet.pth")
    del checkpoint["generator_arch"], checkpoint["optimizer_g"]
    checkpoints.save_checkpoint(checkpoint, tmp_path / "crafted.pth")  # of the right kind, but without those keys
    monkeypatch.setattr(train_srresnet, "main", lambda main=train_srresnet.main: cli.run_cli(main))
    code, lines = run_cli(train_srresnet, [*FAULT_RUN, "--data_folder", data_folder, "--output_folder", tmp_path / "b",
                                           "--checkpoint", tmp_path / "crafted.pth", "--iterations", 2],
                          monkeypatch, capsys)
    assert code == 1 and len(lines) == 1, lines
    assert "crafted.pth: it lacks generator_arch, optimizer_g" in lines[0]


def test_a_checkpoint_whose_architecture_does_not_fit_its_weights_gives_one_line(data_folder, tmp_path, monkeypatch,
                                                                                 capsys):
    """A training checkpoint whose generator_kwargs were changed (1,000 channels over tensors of 8; a crafted file
    could claim 20,000, and 14 GB per convolution): refused before the network is built, by both scripts."""
    run_script(train_srresnet, [*FAULT_RUN, "--data_folder", data_folder, "--output_folder", tmp_path, "--iterations",
                                1], monkeypatch)
    checkpoint = checkpoints.load_checkpoint(tmp_path / "checkpoint_srresnet.pth")
    checkpoint["generator_kwargs"]["n_channels"] = 1000
    checkpoints.save_checkpoint(checkpoint, tmp_path / "crafted.pth")
    monkeypatch.setattr(train_srresnet, "main", lambda main=train_srresnet.main: cli.run_cli(main))
    code, lines = run_cli(train_srresnet, [*FAULT_RUN, "--data_folder", data_folder, "--output_folder", tmp_path / "b",
                                           "--checkpoint", tmp_path / "crafted.pth", "--iterations", 2],
                          monkeypatch, capsys)
    assert code == 1 and len(lines) == 1 and "crafted.pth" in lines[0] and "do not fit" in lines[0], lines


def test_srgan_resume_with_other_discriminator_flags_gives_one_line(data_folder, tmp_path, monkeypatch, capsys):
    # (Not FAULT_RUN's generator flags: train_srgan.py has no --n_blocks, and argparse would read it as --n_blocks_d.)
    srgan = [*FAULT_RUN[4:], "--data_folder", data_folder, "--vgg_weights", "random", "--n_channels_d", 8,
             "--fc_size_d", 16]
    run_script(train_srresnet, [*FAULT_RUN, "--data_folder", data_folder, "--output_folder", tmp_path, "--iterations",
                                1], monkeypatch)
    run_script(train_srgan, [*srgan, "--n_blocks_d", 2, "--srresnet_checkpoint", tmp_path / "checkpoint_srresnet.pth",
                             "--output_folder", tmp_path / "gan", "--iterations", 1], monkeypatch)
    resume = [*srgan, "--checkpoint", tmp_path / "gan" / "checkpoint_srgan.pth", "--output_folder", tmp_path / "gan"]
    monkeypatch.setattr(train_srgan, "main", lambda main=train_srgan.main: cli.run_cli(main))
    code, lines = run_cli(train_srgan, [*resume, "--n_blocks_d", 4, "--iterations", 2], monkeypatch, capsys)
    assert code == 1 and len(lines) == 1 and "--n_blocks_d" in lines[0], lines
    # A checkpoint whose recorded flags do not match its discriminator (crafted) is refused in one line too, never
    # with load_state_dict's dump of mismatched tensors.
    checkpoint = checkpoints.load_checkpoint(tmp_path / "gan" / "checkpoint_srgan.pth")
    checkpoint["hyperparameters"]["n_blocks_d"] = 4
    checkpoints.save_checkpoint(checkpoint, tmp_path / "crafted.pth")
    code, lines = run_cli(train_srgan, [*srgan, "--checkpoint", tmp_path / "crafted.pth", "--output_folder",
                                        tmp_path / "gan", "--iterations", 2], monkeypatch, capsys)
    assert code == 1 and len(lines) == 1, lines
    assert "holds the discriminator of --discriminator_arch srgan --kernel_size_d 3 --n_channels_d 8 --n_blocks_d 2" \
           in lines[0] and "the flags ask for" in lines[0] and "--n_blocks_d 4" in lines[0]
    # Without discriminator flags, the checkpoint's are used: the run resumes.
    run_script(train_srgan, [*srgan[:-4], "--checkpoint", tmp_path / "gan" / "checkpoint_srgan.pth",
                             "--output_folder", tmp_path / "gan", "--iterations", 2], monkeypatch)
    assert checkpoints.load_checkpoint(tmp_path / "gan" / "checkpoint_srgan.pth")["iteration"] == 2


def test_nan_and_nothing_to_train_name_only_checkpoints_that_exist(data_folder, tmp_path, monkeypatch, capsys):
    run = [*FAULT_RUN, "--data_folder", data_folder, "--output_folder", tmp_path / "run"]
    # --iterations 0: nothing trained, nothing written, and no file named as if it were.
    run_script(train_srresnet, [*run, "--iterations", 0], monkeypatch)
    out = capsys.readouterr().out
    assert "No checkpoint written: nothing to train from iteration 0 to --iterations 0." in out
    assert "Checkpoint:" not in out and "export.py" not in out
    assert not (tmp_path / "run" / "checkpoint_srresnet.pth").exists()
    # A NaN before the first save: no checkpoint to keep or resume from, and the message says so.
    mse_forward = torch.nn.MSELoss.forward
    monkeypatch.setattr(torch.nn.MSELoss, "forward", lambda self, *args: mse_forward(self, *args) * float("nan"))
    with pytest.raises(RuntimeError, match="loss became nan.*before any checkpoint was saved") as error:
        run_script(train_srresnet, [*run, "--iterations", 10, "--print_every", 1, "--checkpoint_every", 5,
                                    "--overwrite", "true"], monkeypatch)  # (the first run left its log there)
    assert "checkpoint_srresnet.pth" not in str(error.value)
    assert not (tmp_path / "run" / "checkpoint_srresnet.pth").exists()


def test_more_processes_than_gpus_is_a_clear_error(monkeypatch):
    """torchrun --nproc_per_node 2 on a 1-GPU machine: say what to do, before NCCL fails with 'invalid device'."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(RuntimeError, match="--nproc_per_node 1"):
        training.setup_distributed()


# ------------------------------------------------------------------------------------------------------
# Several processes (torchrun, gloo on the CPU)
# ------------------------------------------------------------------------------------------------------
# Both runs on the CPU, also on a machine with GPUs (NCCL would need one GPU per process).
CPU_ONLY = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


def torchrun(args, n_processes=2, timeout=180):
    return run_subprocess(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", n_processes, *args],
                          timeout=timeout, env=CPU_ONLY)


def test_torchrun_matches_one_process(data_folder, tmp_path):
    """2 processes with 2 crops each take the same steps as 1 process with 4 crops (RRDB has no batch norm).
    In fp32: on a CPU with native bf16, 'auto' would pick bf16, whose rounding the different order would amplify.
    The processes validate at every iteration, the single one never: only the first process validates and writes
    the logs, the others neither hang meanwhile nor change course."""
    args = [*TINY_RRDB, "--data_folder", data_folder, "--iterations", 3, "--augment", "true", "--precision", "fp32"]
    result = torchrun(["train_srresnet.py", *args, *VALIDATE, "--val_every", 1, "--output_folder", tmp_path / "ddp"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "x2 processes" in result.stdout and result.stdout.count("parameters; device") == 1  # rank 0 prints
    assert sorted(validation_records(tmp_path / "ddp" / "log_srresnet.jsonl")) == [0, 1, 2, 3]  # each once
    assert len(list((tmp_path / "ddp" / "tensorboard_srresnet").iterdir())) == 1  # one event file: one writer
    assert result.stdout.count("iteration 3: Tiny") == 1  # and one process validated
    result = run_subprocess(["train_srresnet.py", *args, "--val_every", 0, "--output_folder", tmp_path / "single"],
                            env=CPU_ONLY)
    assert result.returncode == 0, result.stderr[-3000:]
    ddp = checkpoints.load_checkpoint(tmp_path / "ddp" / "checkpoint_srresnet.pth")
    single = checkpoints.load_checkpoint(tmp_path / "single" / "checkpoint_srresnet.pth")
    assert ddp["iteration"] == single["iteration"] == 3
    for name, value in single["generator"].items():
        # Same steps up to float rounding: the gradient is averaged in a different order.
        assert torch.allclose(ddp["generator"][name], value, rtol=1e-4, atol=1e-6), name
    # ... and they did train: the weights moved well beyond that tolerance from their initial values.
    torch.manual_seed(0)
    initial = models.build_generator("rrdb", **single["generator_kwargs"]).state_dict()
    assert max((value - initial[name]).abs().max().item() for name, value in single["generator"].items()) > 1e-4


@pytest.mark.slow  # three 2-process runs with degradations: ~100 s on the (busy) 2-core development machine
def test_torchrun_resume_with_the_pair_pool_is_exact(data_folder, tmp_path):
    """With several processes the pool is global (each process keeps the same copy, built from the gathered
    global batch), so the first process's checkpoint holds all of it and a resumed run is exact."""
    args = [*TINY_RRDB, "--data_folder", data_folder, "--degradation", "realesrgan", "--queue_size", 8,
            "--crop_size", 48, "--precision", "fp32"]
    resume_from = ["--checkpoint", tmp_path / "halves" / "checkpoint_srresnet.pth"]
    for iterations, folder, resume in ((5, "whole", []), (3, "halves", []), (5, "halves", resume_from)):
        result = torchrun(["train_srresnet.py", *args, "--iterations", iterations, "--output_folder", tmp_path / folder,
                           *resume])
        assert result.returncode == 0, result.stderr[-3000:]
    whole = checkpoints.load_checkpoint(tmp_path / "whole" / "checkpoint_srresnet.pth")
    resumed = checkpoints.load_checkpoint(tmp_path / "halves" / "checkpoint_srresnet.pth")
    assert whole["pair_pool"]["count"] == 8 and torch.equal(whole["pair_pool"]["hr_levels"],
                                                            resumed["pair_pool"]["hr_levels"])
    assert_same_state(whole["generator"], resumed["generator"])


@pytest.mark.slow  # two processes each building a VGG19: 48 s on the (busy) 2-core development machine
def test_torchrun_trains_srgan(data_folder, tmp_path, monkeypatch):
    run_script(train_srresnet, [*TINY_SRRESNET, "--data_folder", data_folder, "--output_folder", tmp_path,
                                "--iterations", 1], monkeypatch)
    result = torchrun(["train_srgan.py", "--recipe", "esrgan", *TINY_DISCRIMINATOR, "--data_folder", data_folder,
                       "--srresnet_checkpoint", tmp_path / "checkpoint_srresnet.pth", "--crop_size", 24,
                       "--batch_size", 4, "--workers", 0, "--iterations", 2, "--output_folder", tmp_path])
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = checkpoints.load_checkpoint(tmp_path / "checkpoint_srgan.pth", expected_kind="srgan")
    assert checkpoint["iteration"] == 2
    assert not any(key.startswith("module.") for key in checkpoint["discriminator"])  # saved unwrapped


def test_two_stage_realesrgan_recipe(data_folder, tmp_path, monkeypatch):
    """Real-ESRGAN's two stages with the two scripts: Real-ESRNet (train_srresnet.py: RRDB, L1 against the sharpened
    HR, on degraded images, through the pair pool), then the GAN recipe starting from it (on-the-fly degradations,
    U-Net discriminator, 5-layer VGG loss). Both make their LR images with Real-ESRGAN's pipeline on every iteration,
    and no bicubic LR image is made for them (the loader gives HR crops only)."""
    calls, bicubic_lr_made, batches, l1_targets = [], [], [], []
    real_make_batch, real_make_lr = degradations.make_realesrgan_batch, datasets.make_lr_image
    real_training_batch, real_l1 = degradations.make_training_pairs, torch.nn.L1Loss.forward
    monkeypatch.setattr(degradations, "make_realesrgan_batch",
                        lambda *args, **kwargs: calls.append(args[0].shape) or real_make_batch(*args, **kwargs))
    monkeypatch.setattr(datasets, "make_lr_image",
                        lambda *args, **kwargs: bicubic_lr_made.append(1) or real_make_lr(*args, **kwargs))
    monkeypatch.setattr(degradations, "make_training_pairs",
                        lambda *args, **kwargs: batches.append(real_training_batch(*args, **kwargs)) or batches[-1])
    monkeypatch.setattr(torch.nn.L1Loss, "forward",
                        lambda self, sr_imgs, target_imgs: l1_targets.append(target_imgs) or real_l1(self, sr_imgs,
                                                                                                      target_imgs))
    run_script(train_srresnet, [*TINY_RRDB, "--degradation", "realesrgan", "--queue_size", 4, "--pixel_loss", "l1",
                                "--ema_decay", 0.999, "--crop_size", 48, "--batch_size", 2, "--iterations", 3,
                                "--data_folder", data_folder, "--output_folder", tmp_path], monkeypatch)
    assert calls == [(2, 3, 48, 48)] * 3 and not bicubic_lr_made  # HR crops in, once per iteration
    # Real-ESRNet's target is the sharpened HR (l1_gt_usm, on by default), not the plain one.
    for (_, hr_imgs, hr_usm_imgs), target_imgs in zip(batches, l1_targets):
        assert torch.equal(target_imgs, hr_usm_imgs) and not torch.equal(target_imgs, hr_imgs)
    esrnet = checkpoints.load_checkpoint(tmp_path / "checkpoint_srresnet.pth", expected_kind="srresnet")
    assert esrnet["generator_arch"] == "rrdb" and esrnet["hyperparameters"]["degradation"] == "realesrgan"
    assert "percep_gt_usm" not in esrnet["hyperparameters"]  # only the flags that mean something here
    assert esrnet["pair_pool"]["count"] == 4 and esrnet["pair_pool"]["hr_levels"].shape == (4, 3, 48, 48)

    calls.clear()
    run_script(train_srgan, ["--recipe", "realesrgan", "--num_feat_d", 8, "--vgg_weights", "random",
                             "--data_folder", data_folder, "--srresnet_checkpoint", tmp_path / "checkpoint_srresnet.pth",
                             "--crop_size", 48, "--batch_size", 2, "--workers", 0, "--iterations", 2,
                             "--output_folder", tmp_path], monkeypatch)
    checkpoint = checkpoints.load_checkpoint(tmp_path / "checkpoint_srgan.pth", expected_kind="srgan")
    hyperparameters = checkpoint["hyperparameters"]
    assert checkpoint["iteration"] == 2 and checkpoint["discriminator_arch"] == "unet"
    assert hyperparameters["degradation"] == "realesrgan" and len(hyperparameters["perceptual_layers"]) == 5
    assert hyperparameters["jpeg_range"] == degradations.DEGRADATION_DEFAULTS["jpeg_range"]  # degradation flags exist
    assert hyperparameters["queue_size"] == 180 and checkpoint["pair_pool"]["count"] == 4  # the recipe's pool
    assert "generator_ema" in checkpoint
    assert "conv9.weight" in checkpoint["discriminator"]  # Real-ESRGAN's key names
    assert calls == [(2, 3, 48, 48)] * 2 and not bicubic_lr_made
    # The GAN started from Real-ESRNet's EMA weights and trained them further.
    assert checkpoint["generator_kwargs"] == esrnet["generator_kwargs"]
    name = "body.0.rdb1.conv1.weight"
    assert torch.allclose(checkpoint["generator"][name], esrnet["generator_ema"][name], atol=1e-2)
    assert not torch.equal(checkpoint["generator"][name], esrnet["generator_ema"][name])


def test_resume_with_the_pair_pool_is_exact(data_folder, tmp_path, monkeypatch):
    """6 iterations in one go == 3, stop, resume to 6, with Real-ESRGAN's degradations and a pool of 4 pairs (full
    after 2 iterations of 2): the pool's pairs are in the checkpoint, so the resumed run draws the same batches."""
    args = [*TINY_RRDB, "--degradation", "realesrgan", "--queue_size", 4, "--crop_size", 48, "--batch_size", 2,
            "--data_folder", data_folder]
    whole, _, resumed = whole_and_resumed_runs(args, 6, 3, tmp_path, monkeypatch)
    assert_same_state(whole["generator"], resumed["generator"])
    assert whole["pair_pool"]["count"] == resumed["pair_pool"]["count"] == 4
    for name in ("lr_levels", "hr_levels"):
        assert torch.equal(whole["pair_pool"][name], resumed["pair_pool"][name]), name


def symmetries(img):
    """The 8 flips / rotations of an (H, W, C) array, as (name, transformed array)."""
    for flip_lr in (False, True):
        for flip_tb in (False, True):
            for rotations in (0, 1):
                out = img[:, ::-1] if flip_lr else img
                out = out[::-1] if flip_tb else out
                yield (flip_lr, flip_tb, rotations), np.rot90(out, rotations)


def test_training_on_paired_images_crops_aligned_pairs(tmp_path, monkeypatch):
    """Paired data (create_data_lists.py --train_lr_folders): each training LR crop is the LR image's own pixels at
    the HR crop's position / s, under the same flip / rotation. The LR images are random, not downscales of HR, so
    only the alignment can make them match."""
    rng = np.random.default_rng(0)
    for name, (width, height) in (("a", (64, 48)), ("b", (52, 41))):  # b: sides not multiples of 4
        for folder, size in (("HR", (width, height)), ("LR", (width // 4, height // 4))):
            (tmp_path / folder).mkdir(exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(
                tmp_path / folder / f"{name}.png")
    create_data_lists.create_data_lists([str(tmp_path / "HR")], [], min_size=32, output_folder=str(tmp_path / "lists"),
                                        train_lr_folders=[str(tmp_path / "LR")], scaling_factor=4)
    crops = []
    real_training_batch = degradations.make_training_pairs
    monkeypatch.setattr(degradations, "make_training_pairs",
                        lambda lr_imgs, hr_imgs, *args: crops.append((lr_imgs, hr_imgs)) or real_training_batch(
                            lr_imgs, hr_imgs, *args))
    run_script(train_srresnet, [*TINY_SRRESNET, "--crop_size", 32, "--augment", "true", "--iterations", 3,
                                "--data_folder", tmp_path / "lists", "--output_folder", tmp_path / "run"], monkeypatch)
    assert checkpoints.load_checkpoint(tmp_path / "run" / "checkpoint_srresnet.pth")["iteration"] == 3
    images = {name: {folder: np.asarray(Image.open(tmp_path / folder / f"{name}.png")) for folder in ("HR", "LR")}
              for name in ("a", "b")}
    to_array = lambda img: (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)  # noqa: E731
    transforms_seen = set()
    for lr_imgs, hr_imgs in crops:
        for lr_crop, hr_crop in zip(map(to_array, lr_imgs), map(to_array, hr_imgs)):
            assert lr_crop.shape == (8, 8, 3) and hr_crop.shape == (32, 32, 3)
            # Where (and how turned) the HR crop lies in its HR image: search every position whose pixel matches the
            # top-left pixel of one of the crop's 8 symmetries (the group holds the inverse of the one applied) ...
            found = {(name, int(top), int(left), transform)
                     for name, pair in images.items() for _, untransformed in symmetries(hr_crop)
                     for top, left in np.argwhere((pair["HR"][:-31, :-31] == untransformed[0, 0]).all(axis=-1))
                     for transform, turned in symmetries(pair["HR"][top:top + 32, left:left + 32])
                     if np.array_equal(turned, hr_crop)}
            assert len(found) == 1
            name, top, left, transform = found.pop()
            assert top % 4 == 0 and left % 4 == 0  # the HR crop starts on a multiple of the scale
            # ... and the LR crop is the LR image's pixels there, turned the same way.
            lr_region = images[name]["LR"][top // 4:top // 4 + 8, left // 4:left // 4 + 8]
            assert np.array_equal(dict(symmetries(lr_region))[transform], lr_crop)
            transforms_seen.add(transform)
    assert len(crops) == 3 and len(transforms_seen) > 1  # the augmentation did turn some crops


def test_pixel_unshuffle_models_and_cutblur(data_folder, tmp_path, monkeypatch, capsys):
    """x2 and x1 pixel-unshuffle SRResNets train on x2 / x4 data; the x1 one trains with CutBlur in both scripts and is
    validated as an x4 model (its LR test images nearest-upscaled)."""
    unshuffle = ["--use_unshuffle", "true", "--workers", 0, "--iterations", 1, "--n_blocks", 1, "--n_channels", 8,
                 "--crop_size", 32, "--batch_size", 2, "--data_folder", data_folder]
    run_script(train_srresnet, [*unshuffle, "--scaling_factor", 2, "--unshuffle_scale", 2,
                                "--output_folder", tmp_path / "x2"], monkeypatch)
    model, _, _ = inference.load_generator(tmp_path / "x2" / "checkpoint_srresnet.pth")
    assert model.scaling_factor == 2 and model(torch.rand(1, 3, 7, 9)).shape == (1, 3, 14, 18)
    # CutBlur: spy on the batches it makes, and on what the generator is given.
    cutblur_calls, generator_inputs = [], []
    real_cutblur = augmentations.cutblur

    def spy_cutblur(lr_imgs, hr_imgs, *args, **kwargs):
        mixed_imgs, target_imgs = real_cutblur(lr_imgs, hr_imgs, *args, **kwargs)
        cutblur_calls.append((lr_imgs.clone(), hr_imgs.clone(), mixed_imgs.clone()))
        return mixed_imgs, target_imgs

    monkeypatch.setattr(augmentations, "cutblur", spy_cutblur)
    real_convert = utils.convert_image
    monkeypatch.setattr(utils, "convert_image", lambda img, source, target: (
        generator_inputs.append(img.detach().clone()) if (source, target) == ("[0, 1]", "[0, 1]") else None)
        or real_convert(img, source, target))  # the generator's input conversion: SRResNet takes '[0, 1]'
    cutblur = ["--mixopts", "cutblur", "--mixprob", 1.0, "--mixalpha", 0.7]
    run_script(train_srresnet, [*unshuffle, *cutblur, *VALIDATE, "--val_every", 1, "--scaling_factor", 4,
                                "--unshuffle_scale", 4, "--output_folder", tmp_path / "x1"], monkeypatch)
    assert "validating an x1 network trained on x4 data" in capsys.readouterr().err
    assert sorted(validation_records(tmp_path / "x1" / "log_srresnet.jsonl")) == [0, 1]  # validated, as x4
    assert inference.load_generator(tmp_path / "x1" / "checkpoint_srresnet.pth")[0].data_scaling_factor == 4
    run_script(train_srgan, [*TINY_DISCRIMINATOR, *cutblur, "--data_folder", data_folder,
                             "--srresnet_checkpoint", tmp_path / "x1" / "checkpoint_srresnet.pth", "--crop_size", 32,
                             "--batch_size", 2, "--workers", 0, "--iterations", 2, "--perceptual_layers", "relu2_2",
                             "--output_folder", tmp_path / "x1"], monkeypatch)
    monkeypatch.setattr(utils, "convert_image", real_convert)
    checkpoint = checkpoints.load_checkpoint(tmp_path / "x1" / "checkpoint_srgan.pth")
    assert checkpoint["iteration"] == 2
    assert len(cutblur_calls) == 3  # once per iteration: 1 of train_srresnet.py, 2 of train_srgan.py
    for lr_upscaled, hr_imgs, mixed_imgs in cutblur_calls:
        # The x1 generator's input: the LR crops (N, 3, 8, 8) nearest-upscaled, each pixel repeated 4 x 4.
        assert lr_upscaled.shape == hr_imgs.shape == mixed_imgs.shape == (2, 3, 32, 32)
        assert torch.equal(lr_upscaled, lr_upscaled[..., ::4, ::4].repeat_interleave(4, 2).repeat_interleave(4, 3))
        from_hr = (mixed_imgs == hr_imgs).all(dim=1) & (mixed_imgs != lr_upscaled).any(dim=1)
        from_lr = (mixed_imgs == lr_upscaled).all(dim=1) & (mixed_imgs != hr_imgs).any(dim=1)
        assert from_hr.flatten(1).any(dim=1).all() and from_lr.flatten(1).any(dim=1).all()  # every image is mixed
        # ... and the x1 generator ran on exactly these HR-sized mixtures.
        assert any(torch.equal(mixed_imgs, seen) for seen in generator_inputs)
    # The generator trained from its x1 start (and is still the x1 model).
    start = checkpoints.load_checkpoint(tmp_path / "x1" / "checkpoint_srresnet.pth")
    assert checkpoint["generator_kwargs"] == start["generator_kwargs"] == dict(
        large_kernel_size=9, small_kernel_size=3, n_channels=8, n_blocks=1, scaling_factor=1, unshuffle_scale=4)
    assert any(not torch.equal(value, start["generator"][name]) for name, value in checkpoint["generator"].items()
               if value.is_floating_point())
    # CutBlur with an x2 generator is refused with a clear message, by both scripts.
    with pytest.raises(ValueError, match="needs an x1 generator.*upscales x2"):
        run_script(train_srgan, [*TINY_DISCRIMINATOR, *cutblur, "--data_folder", data_folder,
                                 "--srresnet_checkpoint", tmp_path / "x2" / "checkpoint_srresnet.pth",
                                 "--scaling_factor", 2, "--iterations", 1, "--workers", 0,
                                 "--output_folder", tmp_path / "x2"], monkeypatch)
    with pytest.raises(ValueError, match="needs an x1 generator.*upscales x4"):
        run_script(train_srresnet, [*TINY_SRRESNET, *cutblur, "--data_folder", data_folder, "--iterations", 1,
                                    "--output_folder", tmp_path / "x4"], monkeypatch)


def test_resume_with_the_batch_augmentations_is_exact(data_folder, tmp_path, monkeypatch):
    """The paper's mixture on an x1 model: 4 iterations in one go == 2, stop, resume to 4 (each iteration's draws
    come from utils.make_rng(seed, 'mixture', iteration, rank)); and the augmentations did change the training."""
    drawn = []
    real_mix_batch = augmentations.mix_batch
    monkeypatch.setattr(augmentations, "mix_batch", lambda *args: drawn.append(real_mix_batch(*args)) or drawn[-1])
    args = ["--use_unshuffle", "true", "--unshuffle_scale", 4, "--n_blocks", 1, "--n_channels", 8, "--crop_size", 32,
            "--batch_size", 4, "--workers", 0, "--data_folder", data_folder]
    mixture = ["--mixopts", *augmentations.PAPER_MIXTURE]
    whole, _, resumed = whole_and_resumed_runs([*args, *mixture], 4, 2, tmp_path, monkeypatch)
    assert_same_state(whole["generator"], resumed["generator"])
    for state_a, state_b in zip(whole["optimizer_g"]["state"].values(), resumed["optimizer_g"]["state"].values()):
        assert_same_state(state_a, state_b)
    assert len(drawn) == 8 and len({name for *_, name in drawn}) > 1  # 4 + 2 + 2 iterations, several kinds
    assert [name for *_, name in drawn[:4]] == [name for *_, name in drawn[4:]]  # the same draws when resumed
    run_script(train_srresnet, [*args, "--iterations", 4, "--output_folder", tmp_path / "plain"], monkeypatch)
    plain = checkpoints.load_checkpoint(tmp_path / "plain" / "checkpoint_srresnet.pth")
    assert not torch.equal(plain["generator"]["conv_block1.conv_block.0.weight"],
                           whole["generator"]["conv_block1.conv_block.0.weight"])


def test_the_old_cutblur_prob_flag_still_works(capsys):
    argv = ["--cutblur_prob", "0.5"]
    hp = cli.parse_hyperparameters(train_srgan.apply_recipe(train_srgan.hyperparameters, argv), "", argv=argv,
                                   aliases=train_srgan.RENAMED)
    assert hp.mixopts == ["cutblur"] and "mixopts" in hp.given
    assert "--cutblur_prob is deprecated, use --mixopts cutblur --mixprob P" in capsys.readouterr().err
    argv = ["--cutblur_prob", "0"]
    hp = cli.parse_hyperparameters(train_srgan.apply_recipe(train_srgan.hyperparameters, argv), "", argv=argv,
                                   aliases=train_srgan.RENAMED)
    assert hp.mixopts == ["none"]


def test_pretrained_x4_model_starts_its_x1_variant(data_folder, tmp_path, monkeypatch, capsys):
    """train_srresnet.py --use_unshuffle true --pretrained <x4 model>: every layer comes from the x4 model, the first
    convolution folded over the 3 r^2 channels of the nearest-upscaled, pixel-unshuffled input, and the run says so."""
    run_script(train_srresnet, [*TINY_SRRESNET, "--data_folder", data_folder, "--iterations", 1, "--output_folder",
                                tmp_path / "x4"], monkeypatch)
    x4 = checkpoints.load_checkpoint(tmp_path / "x4" / "checkpoint_srresnet.pth")["generator"]
    capsys.readouterr()
    # A learning rate so small that one Adam step (which moves each weight by about the learning rate) shows nothing.
    run_script(train_srresnet, ["--use_unshuffle", "true", "--unshuffle_scale", 4, "--pretrained",
                                tmp_path / "x4" / "checkpoint_srresnet.pth", "--learning_rate", 1e-9, "--crop_size", 32,
                                "--batch_size", 4, "--workers", 0, "--data_folder", data_folder, "--iterations", 1,
                                "--output_folder", tmp_path / "x1"], monkeypatch)
    assert ("Starting the x1 pixel-unshuffle variant of srresnet x4 from train_srresnet.py, iteration 1 (generator "
            "weights) where that model is: its layers, and its first convolution folded over the 48 input channels "
            "(conv_block1.conv_block.0.weight, divided by 16 and repeated), which computes what the x4 model computes "
            "on the nearest-upscaled LR image.") in capsys.readouterr().out
    x1 = checkpoints.load_checkpoint(tmp_path / "x1" / "checkpoint_srresnet.pth")
    assert x1["generator_kwargs"] == dict(large_kernel_size=9, small_kernel_size=3, n_channels=8, n_blocks=1,
                                          scaling_factor=1, unshuffle_scale=4)
    assert x1["hyperparameters"]["use_unshuffle"] is True and x1["hyperparameters"]["unshuffle_scale"] == 4
    first = "conv_block1.conv_block.0.weight"
    assert x1["generator"][first].shape == (8, 48, 9, 9) and x4[first].shape == (8, 3, 9, 9)
    for name, value in x4.items():  # (batch norm's running statistics move with the training forward pass)
        if name == first:
            value = value.repeat_interleave(16, dim=1) / 16  # folded: the x4 model's, on 16 copies of each pixel
        if value.is_floating_point() and "running_" not in name:
            torch.testing.assert_close(x1["generator"][name], value, rtol=0, atol=1e-7)
    # The compact network has no such variant: one line.
    with pytest.raises(ValueError, match="compact network has no pixel-unshuffle variant"):
        run_script(train_srresnet, ["--use_unshuffle", "true", "--pretrained", "compact", "--data_folder",
                                    data_folder, "--iterations", 1, "--output_folder", tmp_path / "c"], monkeypatch)


def test_training_batches_differ_across_ranks_and_repeat_exactly():
    """The degradations and CutBlur of one iteration: other random draws in each process (the old seeds made rank
    r's CutBlur stream rank r + 1's degradation stream), the same draws every time for the same process."""
    argv = ["--recipe", "realesrgan", "--mixopts", "cutblur", "--channels_last", "false"]
    hp = cli.parse_hyperparameters(train_srgan.apply_recipe(train_srgan.hyperparameters, argv), "", argv=argv)
    torch.manual_seed(0)
    hr_imgs = torch.rand(2, 3, 32, 32)
    lr_imgs = torch.nn.functional.interpolate(hr_imgs, scale_factor=0.25, mode="area")
    x1_generator = SimpleNamespace(scaling_factor=1, unshuffle_scale=4)  # an x4 body behind a fold by 4

    def batch(iteration, rank):
        return train_srgan.make_gan_batch(lr_imgs, hr_imgs, hp, iteration, rank, x1_generator, torch.device("cpu"))

    rank0, rank1, again = batch(5, 0), batch(5, 1), batch(5, 0)
    assert rank0[0].shape == (2, 3, 32, 32) and rank0[4] is None  # CutBlur: HR-sized inputs for the x1 generator
    assert all(torch.equal(a, b) for a, b in zip(rank0[:4], again[:4]))
    assert not torch.equal(rank0[0], rank1[0]) and not torch.equal(rank0[0], batch(6, 0)[0])


# ------------------------------------------------------------------------------------------------------
# Watching training: validation, the best weights, the TensorBoard and JSON-lines logs
# ------------------------------------------------------------------------------------------------------
def read_tensorboard(folder):
    """A run's TensorBoard event files read back with TensorBoard's own reader: every scalar and image, by tag."""
    events = EventAccumulator(str(folder), size_guidance={SCALARS: 0, IMAGES: 0})  # 0: keep all, not a sample
    events.Reload()
    return events


def decode_png(image_event):
    return np.asarray(Image.open(io.BytesIO(image_event.encoded_image_string)).convert("RGB"))


def keep_every_checkpoint(monkeypatch, folder):
    """From now on, also keep a copy of each training checkpoint as it is saved, as folder/<iteration>.pth."""
    save_checkpoint = checkpoints.save_checkpoint

    def save_and_keep(state, path):
        save_checkpoint(state, path)
        if Path(path).name.startswith("checkpoint_"):
            save_checkpoint(state, Path(folder) / f"{state['iteration']}.pth")

    monkeypatch.setattr(checkpoints, "save_checkpoint", save_and_keep)


def validation_records(path):
    """iteration -> the validation scores on Tiny ({"psnr", "ssim"}), from a run's JSON-lines log."""
    return {record["iteration"]: record["val"]["Tiny"] for record in training_log.read_jsonl(path) if "val" in record}


# A learning rate high enough that the validation PSNR of these tiny runs goes up and then down again: the best
# weights are then not simply the last ones.
NOISY = ["--learning_rate", 0.05]


def test_validation_is_eval_py_and_keeps_the_best_weights(data_folder, tmp_path, monkeypatch):
    """The PSNR / SSIM logged at iteration k (JSON lines and TensorBoard) are eval.py's for the checkpoint saved at k,
    the crop's SR image logged at k is that checkpoint's, and best_srresnet.pth holds the best of those weights."""
    keep_every_checkpoint(monkeypatch, tmp_path / "saved")
    run = tmp_path / "run"
    run_script(train_srresnet, [*TINY_SRRESNET, *VALIDATE, *NOISY, "--data_folder", data_folder, "--output_folder",
                                run, "--iterations", 7, "--val_every", 2, "--checkpoint_every", 2, "--ema_decay", 0.5],
               monkeypatch)
    validated = validation_records(run / "log_srresnet.jsonl")
    assert sorted(validated) == [0, 2, 4, 6, 7]  # the start, every val_every iterations, the end
    events = read_tensorboard(run / "tensorboard_srresnet")
    for metric in ("psnr", "ssim"):  # TensorBoard keeps float32
        assert {event.step: event.value for event in events.Scalars(f"val/Tiny/{metric}")} == {
            iteration: pytest.approx(scores[metric], rel=1e-6) for iteration, scores in validated.items()}
    # The fixed crop: the centre 10x10 of the first image's 12x10 LR image (camera, grey), at x4.
    name, hr, lr = metrics.load_test_pairs(metrics.read_test_list(data_folder, "Tiny"), 4)[0]
    assert name == "camera" and lr.shape == (10, 12)
    lr_crop = lr[:, 1:11]
    assert np.array_equal(decode_png(events.Images("val_crop/hr")[0]), np.stack([hr[:40, 4:44]] * 3, axis=2))
    assert np.array_equal(decode_png(events.Images("val_crop/bicubic")[0]),
                          np.stack([metrics.imresize(lr_crop, scale=4)] * 3, axis=2))
    sr_crops = {event.step: decode_png(event) for event in events.Images("val_crop/sr")}
    assert sorted(sr_crops) == [0, 2, 4, 6, 7]
    for iteration in (2, 4, 6, 7):
        checkpoint_path = tmp_path / "saved" / f"{iteration}.pth"
        results = eval_script.main(["--data_folder", str(data_folder), "--test_sets", "Tiny",
                                    "--model", str(checkpoint_path)])
        assert (results[0]["psnr"], results[0]["ssim"]) == (validated[iteration]["psnr"], validated[iteration]["ssim"])
        model, description, _ = inference.load_generator(checkpoint_path)
        assert "generator_ema" in description  # what was measured: the EMA, as eval.py takes it
        assert np.array_equal(sr_crops[iteration], metrics.upscale_array(model, lr_crop, 4))
    # The best weights: those of the validation with the highest PSNR (the start does not count).
    best_iteration = max((2, 4, 6, 7), key=lambda iteration: validated[iteration]["psnr"])
    assert best_iteration != 7  # (the settings make the test able to tell "the best" from "the last")
    best = checkpoints.load_checkpoint(run / "best_srresnet.pth", expected_kind="srresnet")
    assert best["iteration"] == best_iteration and best["val"] == {"Tiny": validated[best_iteration]}
    assert best["generator_arch"] == "srresnet" and best["generator_kwargs"]["n_channels"] == 8
    assert_same_state(best["generator_ema"], checkpoints.load_checkpoint(tmp_path / "saved" / f"{best_iteration}.pth")[
        "generator_ema"])
    results = eval_script.main(["--data_folder", str(data_folder), "--test_sets", "Tiny",
                                "--model", str(run / "best_srresnet.pth")])
    assert results[0]["psnr"] == validated[best_iteration]["psnr"]
    # The training checkpoints know the best score so far (so a resumed run keeps it), from the iteration it was
    # measured at on; and the best file cannot be resumed by mistake.
    for path in (tmp_path / "saved" / f"{best_iteration}.pth", run / "checkpoint_srresnet.pth"):
        assert checkpoints.load_checkpoint(path)["validation"]["best"] == {
            "iteration": best_iteration, "val_set": "Tiny", "psnr": validated[best_iteration]["psnr"]}
    with pytest.raises(ValueError, match="holds a generator only.*resume from checkpoint_srresnet.pth"):
        run_script(train_srresnet, [*TINY_SRRESNET, "--data_folder", data_folder, "--output_folder", run,
                                    "--checkpoint", run / "best_srresnet.pth", "--iterations", 9], monkeypatch)

@pytest.mark.parametrize("script", [train_srresnet, train_srgan], ids=["pretrained", "gan_stage"])
def test_the_best_weights_of_a_fine_tuning_are_never_worse_than_the_start(data_folder, tmp_path, monkeypatch, capsys,
                                                                          script):
    """A run that starts from trained weights (--pretrained, or a GAN stage from its pixel-loss network) counts the
    validation at iteration 0 as a candidate: a learning rate that only makes things worse leaves best_<kind>.pth
    holding the starting weights, with their score. (A run from random weights does not: test above.)"""
    run_script(train_srresnet, [*TINY_SRRESNET, "--data_folder", data_folder, "--output_folder", tmp_path / "start",
                                "--iterations", 30, "--learning_rate", 1e-3, "--val_every", 0], monkeypatch)
    start = tmp_path / "start" / "checkpoint_srresnet.pth"
    ruin = ["--learning_rate", 0.5, "--iterations", 2, "--val_every", 1, *VALIDATE, "--data_folder", data_folder,
            "--output_folder", tmp_path / "run", "--crop_size", 24, "--batch_size", 4, "--workers", 0]
    if script is train_srresnet:
        run_script(train_srresnet, ["--pretrained", start, *ruin], monkeypatch)
    else:  # (max-pooling: with the average pooling a random VGG19 gets by default, this tiny run's second step
        # happens to land above its start, and the test needs a run that only makes the generator worse)
        run_script(train_srgan, ["--srresnet_checkpoint", start, *TINY_DISCRIMINATOR, "--vgg_pooling", "max", *ruin],
                   monkeypatch)
    kind = "srresnet" if script is train_srresnet else "srgan"
    validated = validation_records(tmp_path / "run" / f"log_{kind}.jsonl")
    assert max(validated[1]["psnr"], validated[2]["psnr"]) < validated[0]["psnr"]  # (training only made it worse)
    out = capsys.readouterr().out
    assert re.search(r"iteration 0: .*; best so far, saved to", out) and "iteration 2: " in out, out
    best = checkpoints.load_checkpoint(tmp_path / "run" / f"best_{kind}.pth")
    assert best["iteration"] == 0 and best["val"] == {"Tiny": validated[0]}
    assert_same_state(best["generator"], checkpoints.load_checkpoint(start)["generator"])
    checkpoint = checkpoints.load_checkpoint(tmp_path / "run" / f"checkpoint_{kind}.pth")
    assert checkpoint["validation"]["best"]["iteration"] == 0



@pytest.mark.parametrize("script", [train_srresnet, pytest.param(train_srgan, marks=pytest.mark.slow)],
                         ids=["srresnet", "srgan"])  # srgan: 13 s on the busy 2-core development machine
def test_validation_does_not_change_training(data_folder, tmp_path, monkeypatch, script):
    """Validating at every iteration changes nothing: the same weights, optimiser states and random-number state as
    a run that never validates. (SRResNet has batch norm, which must be back in training mode after each one.)"""
    args = [*TINY_SRRESNET, "--augment", "true"]
    if script is train_srgan:
        run_script(train_srresnet, [*TINY_SRRESNET, "--data_folder", data_folder, "--output_folder", tmp_path,
                                    "--iterations", 2, "--val_every", 0], monkeypatch)
        args = [*TINY_DISCRIMINATOR, "--srresnet_checkpoint", tmp_path / "checkpoint_srresnet.pth", "--crop_size", 24,
                "--batch_size", 4, "--workers", 0, "--augment", "true"]
    for val_every in (1, 0):
        run_script(script, [*args, *VALIDATE, "--data_folder", data_folder, "--iterations", 4, "--precision", "fp32",
                            "--val_every", val_every, "--output_folder", tmp_path / f"val_every_{val_every}"],
                   monkeypatch)
    kind = "srresnet" if script is train_srresnet else "srgan"
    validating, plain = (checkpoints.load_checkpoint(tmp_path / f"val_every_{val_every}" / f"checkpoint_{kind}.pth")
                         for val_every in (1, 0))
    assert sorted(validation_records(tmp_path / "val_every_1" / f"log_{kind}.jsonl")) == [0, 1, 2, 3, 4]
    assert validation_records(tmp_path / "val_every_0" / f"log_{kind}.jsonl") == {}
    networks = ["generator"] if script is train_srresnet else ["generator", "discriminator"]
    for name in networks:
        assert_same_state(validating[name], plain[name])
    for name in ["optimizer_g", "optimizer_d"][:len(networks)]:
        for state_a, state_b in zip(validating[name]["state"].values(), plain[name]["state"].values()):
            assert_same_state(state_a, state_b)
    assert torch.equal(validating["rng_state"]["torch"], plain["rng_state"]["torch"])
    # ... and the weights did move: the runs trained.
    start = checkpoints.load_checkpoint(tmp_path / "checkpoint_srresnet.pth")["generator"] if script is train_srgan else \
        models.build_generator("srresnet", **plain["generator_kwargs"]).state_dict()
    assert not torch.equal(plain["generator"]["conv_block1.conv_block.0.weight"],
                           start["conv_block1.conv_block.0.weight"])


def test_resumed_run_logs_every_iteration_once(data_folder, tmp_path, monkeypatch):
    """A run resumed from its checkpoint of iteration 4 after its logs went on to 6 (as after a crash following a
    save) logs every iteration once, in both logs, with the numbers of an uninterrupted run, and keeps the best."""
    args = [*TINY_SRRESNET, *VALIDATE, *NOISY, "--data_folder", data_folder, "--print_every", 1, "--val_every", 2,
            "--checkpoint_every", 2]
    run_script(train_srresnet, [*args, "--iterations", 8, "--output_folder", tmp_path / "whole"], monkeypatch)
    keep_every_checkpoint(monkeypatch, tmp_path / "saved")
    crashed = tmp_path / "crashed"
    run_script(train_srresnet, [*args, "--iterations", 6, "--output_folder", crashed], monkeypatch)
    time.sleep(1)  # TensorBoard reads event files in the order of their names, which begin with the time in seconds
    resumed_at = time.time()
    run_script(train_srresnet, [*args, "--iterations", 8, "--output_folder", crashed,
                                "--checkpoint", tmp_path / "saved" / "4.pth"], monkeypatch)
    whole_log, log = (training_log.read_jsonl(folder / "log_srresnet.jsonl") for folder in (tmp_path / "whole", crashed))

    def iterations(records, key):
        return [record["iteration"] for record in records if key in record]

    assert iterations(log, "losses") == list(range(1, 9)) and iterations(log, "val") == [0, 2, 4, 6, 8]
    assert iterations(log, "bicubic") == [0]
    assert all(record["time"] >= resumed_at for record in log if record["iteration"] > 4)  # 5 and 6 written again
    for key in ("losses", "val", "bicubic"):  # the resume is exact: the uninterrupted run's numbers
        assert [record[key] for record in log if key in record] == [
            record[key] for record in whole_log if key in record]
    # TensorBoard's reader shows every step once too: the events of 5 and 6 from before the resume are hidden.
    events = read_tensorboard(crashed / "tensorboard_srresnet")
    assert [event.step for event in events.Scalars("losses/loss")] == list(range(1, 9))
    assert [event.value for event in events.Scalars("losses/loss")] == [
        pytest.approx(record["losses"]["loss"], rel=1e-6) for record in whole_log if "losses" in record]
    assert [event.step for event in events.Scalars("val/Tiny/psnr")] == [0, 2, 4, 6, 8]
    assert [event.step for event in events.Images("val_crop/sr")] == [0, 2, 4, 6, 8]
    assert [event.step for event in events.Images("val_crop/hr")] == [0]
    # The best weights are chosen over the whole run, the iterations before the resume included.
    best, whole_best = (checkpoints.load_checkpoint(folder / "best_srresnet.pth") for folder in (crashed, tmp_path / "whole"))
    assert best["iteration"] == whole_best["iteration"] and best["val"] == whole_best["val"]
    assert_same_state(best["generator"], whole_best["generator"])
    # plot_training.py draws the run from these logs.
    paths = plot_training.main([str(crashed), "--output_folder", str(tmp_path / "plots"), "--strip_count", "3"])
    assert [path.name for path in paths] == ["validation_curve.png", "validation_strip.png"]
    assert all(Image.open(path).format == "PNG" for path in paths)
    assert [step for step, _ in plot_training.read_crops(crashed, "srresnet")["sr"]] == [0, 2, 4, 6, 8]


def test_the_first_report_after_a_resume_averages_the_same_iterations_as_an_uninterrupted_run(data_folder, tmp_path,
                                                                                               monkeypatch):
    """A checkpoint saved between two reports (--checkpoint_every 2, --print_every 4; or a stop signal) holds the
    running sums of the losses since the last report, so the resumed run's report at 4 is the mean of iterations 1-4,
    exactly the uninterrupted run's, not of 3-4 only."""
    args = [*TINY_SRRESNET, "--data_folder", data_folder, "--print_every", 4, "--checkpoint_every", 2, "--val_every", 0]
    keep_every_checkpoint(monkeypatch, tmp_path / "saved")
    run_script(train_srresnet, [*args, "--iterations", 8, "--output_folder", tmp_path / "whole"], monkeypatch)
    run_script(train_srresnet, [*args, "--iterations", 8, "--output_folder", tmp_path / "resumed",
                                "--checkpoint", tmp_path / "saved" / "2.pth"], monkeypatch)
    whole, resumed = ([record["losses"] for record in training_log.read_jsonl(folder / "log_srresnet.jsonl")
                       if "losses" in record] for folder in (tmp_path / "whole", tmp_path / "resumed"))
    assert len(whole) == 2 and resumed == whole


def test_validation_under_a_degraded_setting_measures_the_jpeg_lr_images(data_folder, tmp_path, monkeypatch, capsys):
    """--val_degradation jpeg validates on the LR images eval.py makes under --lr_degradation jpeg: bicubic's scores
    are eval.py's for those images, and the line on the screen names the setting."""
    run_script(train_srresnet, [*TINY_SRRESNET, *VALIDATE, "--data_folder", data_folder, "--output_folder", tmp_path,
                                "--iterations", 1, "--val_every", 1, "--val_degradation", "jpeg"], monkeypatch)
    assert "Tiny (jpeg LR)" in capsys.readouterr().out
    logged = training_log.read_jsonl(tmp_path / "log_srresnet.jsonl")[0]["bicubic"]["Tiny"]
    hr_paths = metrics.read_test_list(data_folder, "Tiny")
    expected = metrics.evaluate_set(None, metrics.load_test_pairs(hr_paths, 4, lr_degradation="jpeg"), 4)
    clean = metrics.evaluate_set(None, metrics.load_test_pairs(hr_paths, 4), 4)
    assert (logged["psnr"], logged["ssim"]) == pytest.approx(expected) and logged["psnr"] < clean[0]


def test_a_flag_of_another_architecture_is_refused(data_folder, tmp_path, monkeypatch, capsys):
    """The sources' names stay (n_blocks for SRResNet, num_block for RRDBNet): the wrong one is refused, not ignored."""
    monkeypatch.setattr(train_srresnet, "main", lambda main=train_srresnet.main: cli.run_cli(main))
    code, lines = run_cli(train_srresnet, ["--generator_arch", "rrdb", "--n_blocks", 2, "--data_folder", data_folder,
                                           "--output_folder", tmp_path], monkeypatch, capsys)
    assert code == 1 and len(lines) == 1 and "--n_blocks not used by --generator_arch rrdb" in lines[0], lines
    assert "--num_block" in lines[0]
    code, lines = run_cli(train_srresnet, ["--generator_arch", "compact", "--unshuffle_scale", 4, "--data_folder",
                                           data_folder, "--output_folder", tmp_path], monkeypatch, capsys)
    assert code == 1 and "--unshuffle_scale not used by --generator_arch compact" in lines[0], lines


def test_icnr_flag_starts_the_sub_pixel_convolutions_equal(data_folder, tmp_path, monkeypatch, capsys):
    """--icnr true: a new SRResNet's sub-pixel convolutions start from models.icnr_ (the s*s sub-kernels of each
    output channel equal), without it from PyTorch's default (all different); refused for another architecture, and
    noted as not used when resuming or fine-tuning (the checkpoint or --pretrained brings the weights)."""
    for icnr in (True, False):
        hp = cli.parse_hyperparameters(train_srresnet.hyperparameters, "",
                                       argv=["--n_blocks", "1", "--n_channels", "8", "--icnr", str(icnr).lower()])
        generator, _ = train_srresnet.make_generator(hp, None, torch.device("cpu"), is_main_process=True)
        for block in generator.subpixel_convolutional_blocks:
            kernels = block.conv.weight.unflatten(0, (8, 4))  # (8 output channels, 4 sub-kernels, 8, 3, 3)
            assert torch.equal(kernels, kernels[:, :1].expand_as(kernels)) == icnr
    monkeypatch.setattr(train_srresnet, "main", lambda main=train_srresnet.main: cli.run_cli(main))
    code, lines = run_cli(train_srresnet, ["--generator_arch", "compact", "--icnr", "true", "--output_folder", tmp_path],
                          monkeypatch, capsys)
    assert code == 1 and "--icnr not used by --generator_arch compact" in lines[0], lines
    run_script(train_srresnet, [*TINY_SRRESNET, "--data_folder", data_folder, "--output_folder", tmp_path,
                                "--iterations", 1], monkeypatch)
    capsys.readouterr()
    run_script(train_srresnet, [*TINY_SRRESNET, "--data_folder", data_folder, "--output_folder", tmp_path,
                                "--iterations", 2, "--checkpoint", tmp_path / "checkpoint_srresnet.pth", "--icnr",
                                "true"], monkeypatch)
    assert "--icnr not used when resuming" in capsys.readouterr().err
    hp = cli.parse_hyperparameters(train_srresnet.hyperparameters, "", argv=[
        "--pretrained", str(tmp_path / "checkpoint_srresnet.pth"), "--icnr", "true"])
    train_srresnet.make_generator(hp, None, torch.device("cpu"), is_main_process=True)
    assert "--icnr not used with --pretrained" in capsys.readouterr().err and hp.icnr is False  # (as checkpoints say)


def test_deepened_compact_computes_the_same_and_its_new_layers_learn():
    """training.deepened_compact: more (conv, PReLU) pairs, each an identity at first, so the output is the same; the
    new layers get gradients (they are not dead identities); fewer convolutions is an error."""
    torch.manual_seed(0)
    generator = models.build_generator("compact", num_feat=8, num_conv=2, upscale=3)
    deeper = training.deepened_compact(generator, 5)
    assert deeper.generator_kwargs == dict(num_feat=8, num_conv=5, upscale=3) and len(deeper.body) == 2 + 2 * 5 + 1
    lr_imgs = torch.rand(2, 3, 9, 11)
    torch.testing.assert_close(deeper(lr_imgs), generator(lr_imgs), atol=1e-6, rtol=0)
    deeper(lr_imgs).square().mean().backward()
    assert deeper.body[8].weight.grad.abs().sum() > 0  # a new convolution (pairs 3 to 5 are new)
    assert torch.equal(deeper.body[8].weight[:, :, 1, 1], torch.eye(8))
    with pytest.raises(ValueError, match="--num_conv 2 or more"):
        training.deepened_compact(generator, 1)
