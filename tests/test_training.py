"""Tests of the training scripts end to end, on tiny models and tiny images: training, exact resume, safety, DDP.

Most runs call the script's main() in this process (fast: torch is already imported); runs that must be separate
processes (signals, torchrun, the command-line error path) start a subprocess.
"""
import hashlib
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch
from PIL import Image
from skimage import data as skimage_data

import create_data_lists
import datasets
import degradations
import models
import train_srgan
import train_srresnet
import utils

# A tiny SRResNet / RRDB, tiny crops, no data-loading processes: each run takes a second or two.
TINY_SRRESNET = ["--n_blocks", "1", "--n_channels", "8", "--crop_size", "24", "--batch_size", "4", "--workers", "0"]
TINY_RRDB = ["--generator_arch", "rrdb", "--num_feat", "8", "--num_block", "1", "--num_grow_ch", "4",
             "--crop_size", "24", "--batch_size", "4", "--workers", "0"]
TINY_DISCRIMINATOR = ["--n_blocks_d", "2", "--n_channels_d", "8", "--fc_size_d", "16", "--vgg_weights", "random"]


@pytest.fixture(scope="module")
def data_folder(tmp_path_factory):
    """Data lists over four small real photos (scikit-image's), 64 to 96 pixels a side."""
    root = tmp_path_factory.mktemp("training_data")
    (root / "images").mkdir()
    for name, size in (("astronaut", (64, 64)), ("coffee", (96, 64)), ("chelsea", (90, 60)), ("rocket", (64, 96))):
        Image.fromarray(getattr(skimage_data, name)()).resize(size, Image.Resampling.BICUBIC).save(
            root / "images" / f"{name}.png")
    create_data_lists.create_data_lists([str(root / "images")], [], min_size=24, output_folder=str(root / "lists"))
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
@pytest.mark.parametrize("arch_args, loss", [(TINY_SRRESNET, "mse"), (TINY_RRDB, "l1")], ids=["srresnet", "rrdb"])
def test_train_srresnet_runs(data_folder, tmp_path, monkeypatch, arch_args, loss):
    run_script(train_srresnet, [*arch_args, "--data_folder", data_folder, "--output_folder", tmp_path,
                                "--iterations", 3, "--pixel_loss", loss, "--ema_decay", 0.9], monkeypatch)
    checkpoint = utils.load_checkpoint(tmp_path / "checkpoint_srresnet.pth", expected_kind="srresnet")
    assert checkpoint["iteration"] == 3 and checkpoint["hyperparameters"]["pixel_loss"] == loss
    # The weights moved from their initial values, and the EMA lies between (it is a different tensor set).
    torch.manual_seed(0)
    initial = models.build_generator(checkpoint["generator_arch"], **checkpoint["generator_kwargs"]).state_dict()
    changed = [name for name, value in checkpoint["generator"].items()
               if value.is_floating_point() and not torch.equal(value, initial[name])]
    assert changed
    assert any(not torch.equal(checkpoint["generator_ema"][name], checkpoint["generator"][name]) for name in changed)
    model, _, _ = utils.load_generator(tmp_path / "checkpoint_srresnet.pth")
    assert model(torch.rand(1, 3, 6, 6)).shape == (1, 3, 24, 24)


@pytest.mark.parametrize("recipe", ["srgan", "esrgan"])
def test_train_srgan_runs_from_srresnet_checkpoint(data_folder, tmp_path, monkeypatch, recipe):
    run_script(train_srresnet, [*TINY_SRRESNET, "--data_folder", data_folder, "--output_folder", tmp_path,
                                "--iterations", 2], monkeypatch)
    srresnet_checkpoint = utils.load_checkpoint(tmp_path / "checkpoint_srresnet.pth")
    run_script(train_srgan, ["--recipe", recipe, *TINY_DISCRIMINATOR, "--data_folder", data_folder,
                             "--srresnet_checkpoint", tmp_path / "checkpoint_srresnet.pth", "--crop_size", 24,
                             "--batch_size", 4, "--workers", 0, "--iterations", 2, "--output_folder", tmp_path],
               monkeypatch)
    checkpoint = utils.load_checkpoint(tmp_path / "checkpoint_srgan.pth", expected_kind="srgan")
    assert checkpoint["iteration"] == 2 and checkpoint["hyperparameters"]["recipe"] == recipe
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
    trained = utils.load_checkpoint(tmp_path / "checkpoint_srresnet.pth")
    # The same network at iteration 0: same seed, same initial weights.
    torch.manual_seed(0)
    initial = models.build_generator("srresnet", **trained["generator_kwargs"])
    final = models.build_generator("srresnet", **trained["generator_kwargs"])
    final.load_state_dict(trained["generator"])
    # Fixed training crops (the first 32 of the run's own sample stream), scored with the training loss.
    hp = train_srresnet.utils.parse_hyperparameters(train_srresnet.hyperparameters, "", argv=[*map(str, args)])
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
@pytest.mark.parametrize("workers", [0, 2])
def test_resume_is_exact(data_folder, tmp_path, monkeypatch, workers):
    """4 iterations in one go == 2 iterations, stop, resume to 4: identical weights, optimiser, EMA, scheduler."""
    args = [*TINY_SRRESNET, "--workers", workers, "--data_folder", data_folder, "--augment", "true",
            "--ema_decay", 0.5, "--learning_rate_milestones", 3, "--learning_rate_gamma", 0.1]
    run_script(train_srresnet, [*args, "--iterations", 4, "--output_folder", tmp_path / "whole"], monkeypatch)
    run_script(train_srresnet, [*args, "--iterations", 2, "--output_folder", tmp_path / "halves"], monkeypatch)
    first_half = utils.load_checkpoint(tmp_path / "halves" / "checkpoint_srresnet.pth")
    assert first_half["iteration"] == 2
    run_script(train_srresnet, [*args, "--iterations", 4, "--output_folder", tmp_path / "halves",
                                "--checkpoint", tmp_path / "halves" / "checkpoint_srresnet.pth"], monkeypatch)
    whole = utils.load_checkpoint(tmp_path / "whole" / "checkpoint_srresnet.pth")
    resumed = utils.load_checkpoint(tmp_path / "halves" / "checkpoint_srresnet.pth")
    assert whole["iteration"] == resumed["iteration"] == 4
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
    checkpoint = utils.load_checkpoint(checkpoint_path, expected_kind="srresnet")
    assert 3 <= checkpoint["iteration"] < 100000
    assert not list(tmp_path.glob("*.tmp"))  # no half-written file left behind


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
    save_checkpoint = utils.save_checkpoint

    def recording_save(state, path):
        save_checkpoint(state, path)
        saved_hashes.append(hashlib.sha256(path.read_bytes()).hexdigest())

    monkeypatch.setattr(utils, "save_checkpoint", recording_save)
    with pytest.raises(RuntimeError, match=r"loss became nan between iterations 2 and 4.*last good checkpoint"):
        run_script(train_srresnet, [*TINY_SRRESNET, "--data_folder", data_folder, "--output_folder", tmp_path,
                                    "--iterations", 10, "--checkpoint_every", 2, "--print_every", 5], monkeypatch)
    checkpoint_path = tmp_path / "checkpoint_srresnet.pth"
    assert len(saved_hashes) == 1  # the checkpoint of iteration 2, and none after the NaN
    assert hashlib.sha256(checkpoint_path.read_bytes()).hexdigest() == saved_hashes[0]
    checkpoint = utils.load_checkpoint(checkpoint_path)
    assert checkpoint["iteration"] == 2
    assert all(torch.isfinite(value).all() for value in checkpoint["generator"].values())


class _WritesAFileWhenUnpickled:
    """A pickled object that runs code when loaded: open(marker, 'w') creates the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def run_cli(module, args, monkeypatch, capsys):
    """Run a script as its command line does (utils.run_cli): return (exit code, stderr lines)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_script(module, args, monkeypatch)
    return exit_info.value.code, capsys.readouterr().err.strip().splitlines()


def test_crafted_pickle_checkpoint_is_refused(data_folder, tmp_path, monkeypatch, capsys):
    marker = tmp_path / "code_was_run"
    crafted = tmp_path / "crafted.pth"
    torch.save({"kind": "srresnet", "generator": _WritesAFileWhenUnpickled(marker)}, crafted)
    # (utils.load_checkpoint itself is tested in test_utils.py.) Through the scripts' flags: one clear line on
    # stderr, exit code 1, and no code run.
    monkeypatch.setattr(train_srresnet, "main", lambda main=train_srresnet.main: utils.run_cli(main))
    monkeypatch.setattr(train_srgan, "main", lambda main=train_srgan.main: utils.run_cli(main))
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
    monkeypatch.setattr(train_srgan, "main", lambda main=train_srgan.main: utils.run_cli(main))
    code, lines = run_cli(train_srgan, ["--data_folder", data_folder, "--workers", 0, "--output_folder", tmp_path,
                                        "--srresnet_checkpoint", tmp_path / "checkpoint_srgan.pth"],
                          monkeypatch, capsys)
    assert code == 1 and len(lines) == 1, lines
    assert "train_srgan.py" in lines[0] and "train_srresnet.py is needed" in lines[0], lines


def test_more_processes_than_gpus_is_a_clear_error(monkeypatch):
    """torchrun --nproc_per_node 2 on a 1-GPU machine: say what to do, before NCCL fails with 'invalid device'."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(RuntimeError, match="--nproc_per_node 1"):
        utils.setup_distributed()


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
    In fp32: on a CPU with native bf16, 'auto' would pick bf16, whose rounding the different order would amplify."""
    args = [*TINY_RRDB, "--data_folder", data_folder, "--iterations", 3, "--augment", "true", "--precision", "fp32"]
    result = torchrun(["train_srresnet.py", *args, "--output_folder", tmp_path / "ddp"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "x2 processes" in result.stdout and result.stdout.count("parameters; device") == 1  # rank 0 prints
    result = run_subprocess(["train_srresnet.py", *args, "--output_folder", tmp_path / "single"], env=CPU_ONLY)
    assert result.returncode == 0, result.stderr[-3000:]
    ddp = utils.load_checkpoint(tmp_path / "ddp" / "checkpoint_srresnet.pth")
    single = utils.load_checkpoint(tmp_path / "single" / "checkpoint_srresnet.pth")
    assert ddp["iteration"] == single["iteration"] == 3
    for name, value in single["generator"].items():
        # Same steps up to float rounding: the gradient is averaged in a different order.
        assert torch.allclose(ddp["generator"][name], value, rtol=1e-4, atol=1e-6), name
    # ... and they did train: the weights moved well beyond that tolerance from their initial values.
    torch.manual_seed(0)
    initial = models.build_generator("rrdb", **single["generator_kwargs"]).state_dict()
    assert max((value - initial[name]).abs().max().item() for name, value in single["generator"].items()) > 1e-4


@pytest.mark.slow  # two processes each building a VGG19: 48 s on the (busy) 2-core development machine
def test_torchrun_trains_srgan(data_folder, tmp_path, monkeypatch):
    run_script(train_srresnet, [*TINY_SRRESNET, "--data_folder", data_folder, "--output_folder", tmp_path,
                                "--iterations", 1], monkeypatch)
    result = torchrun(["train_srgan.py", "--recipe", "esrgan", *TINY_DISCRIMINATOR, "--data_folder", data_folder,
                       "--srresnet_checkpoint", tmp_path / "checkpoint_srresnet.pth", "--crop_size", 24,
                       "--batch_size", 4, "--workers", 0, "--iterations", 2, "--output_folder", tmp_path])
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = utils.load_checkpoint(tmp_path / "checkpoint_srgan.pth", expected_kind="srgan")
    assert checkpoint["iteration"] == 2
    assert not any(key.startswith("module.") for key in checkpoint["discriminator"])  # saved unwrapped


def test_train_srgan_realesrgan_recipe(data_folder, tmp_path, monkeypatch):
    """A few iterations of the Real-ESRGAN recipe: on-the-fly degradations, U-Net discriminator, 5-layer VGG loss."""
    run_script(train_srresnet, [*TINY_SRRESNET, "--data_folder", data_folder, "--output_folder", tmp_path,
                                "--iterations", 1, "--crop_size", 48], monkeypatch)
    # Count the degraded batches: the recipe must make its LR images with Real-ESRGAN's pipeline, on every iteration.
    calls = []
    real_make_batch = degradations.make_realesrgan_batch
    monkeypatch.setattr(degradations, "make_realesrgan_batch",
                        lambda *args, **kwargs: calls.append(args[0].shape) or real_make_batch(*args, **kwargs))
    run_script(train_srgan, ["--recipe", "realesrgan", "--num_feat_d", 8, "--vgg_weights", "random",
                             "--data_folder", data_folder, "--srresnet_checkpoint", tmp_path / "checkpoint_srresnet.pth",
                             "--crop_size", 48, "--batch_size", 2, "--workers", 0, "--iterations", 2,
                             "--output_folder", tmp_path], monkeypatch)
    checkpoint = utils.load_checkpoint(tmp_path / "checkpoint_srgan.pth", expected_kind="srgan")
    hyperparameters = checkpoint["hyperparameters"]
    assert checkpoint["iteration"] == 2 and checkpoint["discriminator_arch"] == "unet"
    assert hyperparameters["degradation"] == "realesrgan" and len(hyperparameters["perceptual_layers"]) == 5
    assert hyperparameters["jpeg_range"] == degradations.DEGRADATION_DEFAULTS["jpeg_range"]  # degradation flags exist
    assert "generator_ema" in checkpoint
    assert "conv9.weight" in checkpoint["discriminator"]  # Real-ESRGAN's key names
    assert calls == [(2, 3, 48, 48)] * 2  # HR crops in, once per iteration


def test_pixel_unshuffle_models_and_cutblur(data_folder, tmp_path, monkeypatch):
    """x2 and x1 pixel-unshuffle SRResNets train on x2 / x4 data; the x1 one then trains with CutBlur."""
    unshuffle = ["--use_unshuffle", "true", "--workers", 0, "--iterations", 1, "--n_blocks", 1, "--n_channels", 8,
                 "--crop_size", 32, "--batch_size", 2, "--data_folder", data_folder]
    run_script(train_srresnet, [*unshuffle, "--scaling_factor", 2, "--unshuffle_scale", 2,
                                "--output_folder", tmp_path / "x2"], monkeypatch)
    model, _, _ = utils.load_generator(tmp_path / "x2" / "checkpoint_srresnet.pth")
    assert model.scaling_factor == 2 and model(torch.rand(1, 3, 7, 9)).shape == (1, 3, 14, 18)
    run_script(train_srresnet, [*unshuffle, "--scaling_factor", 4, "--unshuffle_scale", 4,
                                "--output_folder", tmp_path / "x1"], monkeypatch)
    assert utils.load_generator(tmp_path / "x1" / "checkpoint_srresnet.pth")[0].scaling_factor == 1
    # CutBlur: spy on the batches it makes, and on what the generator is given.
    cutblur_calls, generator_inputs = [], []
    real_cutblur = degradations.cutblur

    def spy_cutblur(lr_imgs, hr_imgs, *args, **kwargs):
        mixed_imgs, target_imgs = real_cutblur(lr_imgs, hr_imgs, *args, **kwargs)
        cutblur_calls.append((lr_imgs.clone(), hr_imgs.clone(), mixed_imgs.clone()))
        return mixed_imgs, target_imgs

    monkeypatch.setattr(degradations, "cutblur", spy_cutblur)
    real_convert = utils.convert_image
    monkeypatch.setattr(utils, "convert_image", lambda img, source, target: (
        generator_inputs.append(img.detach().clone()) if (source, target) == ("[0, 1]", "[0, 1]") else None)
        or real_convert(img, source, target))  # the generator's input conversion: SRResNet takes '[0, 1]'
    run_script(train_srgan, [*TINY_DISCRIMINATOR, "--cutblur_prob", 1.0, "--data_folder", data_folder,
                             "--srresnet_checkpoint", tmp_path / "x1" / "checkpoint_srresnet.pth", "--crop_size", 32,
                             "--batch_size", 2, "--workers", 0, "--iterations", 2, "--perceptual_layers", "relu2_2",
                             "--output_folder", tmp_path / "x1"], monkeypatch)
    monkeypatch.setattr(utils, "convert_image", real_convert)
    checkpoint = utils.load_checkpoint(tmp_path / "x1" / "checkpoint_srgan.pth")
    assert checkpoint["iteration"] == 2
    assert len(cutblur_calls) == 2  # once per iteration
    for lr_imgs, hr_imgs, mixed_imgs in cutblur_calls:
        assert lr_imgs.shape == (2, 3, 8, 8) and hr_imgs.shape == mixed_imgs.shape == (2, 3, 32, 32)
        lr_upscaled = torch.nn.functional.interpolate(lr_imgs, scale_factor=4, mode="nearest")
        from_hr = (mixed_imgs == hr_imgs).all(dim=1) & (mixed_imgs != lr_upscaled).any(dim=1)
        from_lr = (mixed_imgs == lr_upscaled).all(dim=1) & (mixed_imgs != hr_imgs).any(dim=1)
        assert from_hr.flatten(1).any(dim=1).all() and from_lr.flatten(1).any(dim=1).all()  # every image is mixed
        # ... and the x1 generator ran on exactly these HR-sized mixtures.
        assert any(torch.equal(mixed_imgs, seen) for seen in generator_inputs)
    # The generator trained from its x1 start (and is still the x1 model).
    start = utils.load_checkpoint(tmp_path / "x1" / "checkpoint_srresnet.pth")
    assert checkpoint["generator_kwargs"] == start["generator_kwargs"] == dict(
        large_kernel_size=9, small_kernel_size=3, n_channels=8, n_blocks=1, scaling_factor=1, unshuffle_scale=4)
    assert any(not torch.equal(value, start["generator"][name]) for name, value in checkpoint["generator"].items()
               if value.is_floating_point())
    # CutBlur with an x4 generator is refused with a clear message.
    with pytest.raises(ValueError, match="needs an x1 model"):
        run_script(train_srgan, [*TINY_DISCRIMINATOR, "--cutblur_prob", 0.5, "--data_folder", data_folder,
                                 "--srresnet_checkpoint", tmp_path / "x2" / "checkpoint_srresnet.pth",
                                 "--scaling_factor", 2, "--iterations", 1, "--workers", 0,
                                 "--output_folder", tmp_path / "x2"], monkeypatch)


def test_training_batches_differ_across_ranks_and_repeat_exactly():
    """The degradations and CutBlur of one iteration: other random draws in each process (the old seeds made rank
    r's CutBlur stream rank r + 1's degradation stream), the same draws every time for the same process."""
    argv = ["--recipe", "realesrgan", "--cutblur_prob", "1.0", "--channels_last", "false"]
    hp = utils.parse_hyperparameters(train_srgan.apply_recipe(train_srgan.hyperparameters, argv), "", argv=argv)
    torch.manual_seed(0)
    hr_imgs = torch.rand(2, 3, 32, 32)
    lr_imgs = torch.nn.functional.interpolate(hr_imgs, scale_factor=0.25, mode="area")
    x1_generator = SimpleNamespace(scaling_factor=1)

    def batch(iteration, rank):
        return train_srgan.make_training_batch(lr_imgs, hr_imgs, hp, iteration, rank, x1_generator, torch.device("cpu"))

    rank0, rank1, again = batch(5, 0), batch(5, 1), batch(5, 0)
    assert rank0[0].shape == (2, 3, 32, 32)  # CutBlur: HR-sized inputs for the x1 generator
    assert all(torch.equal(a, b) for a, b in zip(rank0, again))
    assert not torch.equal(rank0[0], rank1[0]) and not torch.equal(rank0[0], batch(6, 0)[0])
