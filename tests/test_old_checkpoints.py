"""Checkpoints written by the project before its modules were reorganised still work.

tests/data/old_checkpoints/ holds tiny checkpoints made by that earlier code (2 iterations each): a plain SRResNet,
an x2 pixel-unshuffle SRResNet (then SRResNet(use_unshuffle=True), which stored the BODY's scale), an RRDBNet and an
SRGAN (with EMA weights). They were trained under the old hyperparameter names (lr, lr_milestones, lr_gamma,
vgg_before_activation with perceptual_layers ['conv5_4']). old_outputs.pt holds what the old code's loader gave for a
fixed input. Here the new code loads them for inference (eval.py's and super_resolve.py's loader), and resumes
training from them.
"""
import signal
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image
from skimage import data as skimage_data
from torchvision.models.vgg import cfgs, make_layers

import create_data_lists
import checkpoints
import inference
import models
import super_resolve
import train_srgan
import train_srresnet
import utils

OLD = Path(__file__).parent / "data" / "old_checkpoints"
GENERATORS = {"srresnet": ("SRResNet", 4), "srresnet_unshuffle_x2": ("SRResNet", 2), "rrdb": ("RRDBNet", 4),
              "srgan": ("SRResNet", 4)}
# The flags of the old runs (their architecture comes from the checkpoint; these must match to continue them).
OLD_RUN = ["--crop_size", 32, "--batch_size", 2, "--workers", 0, "--image_cache_mb", 0, "--precision", "fp32"]


@pytest.fixture(scope="module")
def old_outputs():
    return torch.load(OLD / "old_outputs.pt", weights_only=True)


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_old_checkpoints_load_and_give_the_old_outputs(name, old_outputs):
    class_name, scaling_factor = GENERATORS[name]
    model, description, _ = inference.load_generator(OLD / f"{name}.pth", scaling_factor=scaling_factor)
    assert type(model).__name__ == class_name and model.scaling_factor == scaling_factor
    with torch.no_grad():
        # The same numbers, up to float rounding: SRResNet now runs its last convolution on the folded grid
        # (fast_paths.fold_convolution_weight), the same sums in another order.
        torch.testing.assert_close(model(old_outputs["input"]), old_outputs[name], atol=1e-6, rtol=0)
    # The same through the tiled inference of super_resolve.py and eval.py.
    expected = utils.convert_image(old_outputs[name], model.output_format, "[0, 1]").clamp(0, 1)
    torch.testing.assert_close(inference.upscale(model, old_outputs["input"], tile=4, tile_pad=8), expected,
                               atol=1e-5, rtol=0)


def test_old_srgan_discriminator_loads(old_outputs):
    checkpoint = checkpoints.load_checkpoint(OLD / "srgan.pth", expected_kind="srgan")
    discriminator = models.Discriminator(**checkpoint["discriminator_kwargs"]).eval()
    discriminator.load_state_dict(checkpoint["discriminator"])
    with torch.no_grad():
        # The same numbers up to float rounding: the stored ones were computed on another CPU, whose convolution
        # kernels may add the same products in another order.
        torch.testing.assert_close(discriminator(old_outputs["discriminator_input"]), old_outputs["srgan_discriminator"],
                                   atol=1e-6, rtol=0)


def test_super_resolve_command_line_with_an_old_checkpoint(tmp_path):
    Image.fromarray(skimage_data.astronaut()[:9, :7]).save(tmp_path / "a.png")
    assert super_resolve.main([str(tmp_path / "a.png"), "--model", str(OLD / "srresnet_unshuffle_x2.pth"),
                               "--output_folder", str(tmp_path), "--no_progress", "--scaling_factor", "2"]) == 0
    assert Image.open(tmp_path / "a_x2.png").size == (14, 18)


# ------------------------------------------------------------------------------------------------------
# Resuming training from old checkpoints
# ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("old_checkpoint_data")
    (root / "images").mkdir()
    for name in ("astronaut", "coffee"):
        Image.fromarray(getattr(skimage_data, name)()).resize((64, 64)).save(root / "images" / f"{name}.png")
    create_data_lists.create_data_lists([str(root / "images")], [], min_size=32, output_folder=str(root / "lists"))
    return root / "lists"


@pytest.fixture
def small_vgg(monkeypatch):
    """VGG19's layers with random weights, without the classifier load_vgg19('random') also builds (seconds)."""
    torch.manual_seed(0)
    features = make_layers(cfgs["E"])
    monkeypatch.setattr(models, "load_vgg19", lambda weights: SimpleNamespace(features=features))


def run_script(module, args, monkeypatch):
    handlers = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    monkeypatch.setattr(sys, "argv", [module.__file__, *map(str, args)])
    try:
        module.main()
    finally:
        for number, handler in handlers.items():
            signal.signal(number, handler)


def changed_hyperparameters(stderr):
    """The names in the 'resuming with hyperparameters that differ' note."""
    lines = [line for line in stderr.splitlines() if "differ from the checkpoint's" in line]
    return {item.split(":")[0].strip() for item in lines[0].split("checkpoint's:")[1].split(";")} if lines else set()


SRRESNET = ["--n_blocks", 1, "--n_channels", 4, "--large_kernel_size", 3]


@pytest.mark.parametrize("name, flags", [
    ("srresnet", SRRESNET),
    ("srresnet_unshuffle_x2", [*SRRESNET, "--use_unshuffle", "true", "--unshuffle_scale", 2, "--scaling_factor", 2]),
    ("rrdb", ["--generator_arch", "rrdb", "--num_block", 1, "--num_feat", 4, "--num_grow_ch", 2])])
def test_train_srresnet_resumes_an_old_checkpoint(name, flags, data_folder, tmp_path, monkeypatch, capsys):
    old = checkpoints.load_checkpoint(OLD / f"{name}.pth")
    assert "lr" in old["hyperparameters"] and "learning_rate" not in old["hyperparameters"]  # really an old one
    run_script(train_srresnet, [*OLD_RUN, *flags, "--data_folder", data_folder, "--output_folder", tmp_path,
                                "--checkpoint", OLD / f"{name}.pth", "--iterations", 3], monkeypatch)
    # The old names are compared under the new ones: only the folders differ from the old run.
    assert changed_hyperparameters(capsys.readouterr().err) == {"data_folder", "output_folder"}
    new = checkpoints.load_checkpoint(tmp_path / "checkpoint_srresnet.pth")
    assert new["iteration"] == 3 and new["hyperparameters"]["learning_rate"] == old["hyperparameters"]["lr"]
    assert "lr" not in new["hyperparameters"]
    assert new["generator_kwargs"] == models.upgrade_generator_kwargs(old["generator_arch"], old["generator_kwargs"])
    assert "use_unshuffle" not in new["generator_kwargs"]  # new checkpoints store the new arguments
    assert [state["step"].item() for state in new["optimizer_g"]["state"].values()][0] == 3  # Adam continued


def test_train_srgan_resumes_an_old_checkpoint_and_starts_from_an_old_srresnet(data_folder, tmp_path, monkeypatch,
                                                                               capsys, small_vgg):
    discriminator = ["--n_channels_d", 4, "--n_blocks_d", 2, "--fc_size_d", 8, "--vgg_weights", "random"]
    run_script(train_srgan, [*OLD_RUN, *discriminator, "--ema_decay", 0.9, "--data_folder", data_folder,
                             "--output_folder", tmp_path / "resumed", "--checkpoint", OLD / "srgan.pth",
                             "--iterations", 3], monkeypatch)
    # lr, lr_milestones, lr_gamma and (vgg_before_activation false, conv5_4) = relu5_4 all match the new names. (A
    # resumed run takes its generator from the checkpoint, and records the srresnet_checkpoint of the old run.)
    assert changed_hyperparameters(capsys.readouterr().err) == {"data_folder", "output_folder"}
    resumed = checkpoints.load_checkpoint(tmp_path / "resumed" / "checkpoint_srgan.pth")
    assert resumed["iteration"] == 3 and resumed["hyperparameters"]["perceptual_layers"] == ["relu5_4"]
    # Its losses stay the old run's, though --vgg_weights random now brings others by default: no lattice loss (it
    # predates it) and VGG19's max-pooling, as it trained.
    old_losses = {name: resumed["hyperparameters"][name] for name in ("perceptual_loss", "lattice_loss_weight",
                                                                       "vgg_pooling", "perceptual_layer_weights")}
    assert old_losses == dict(perceptual_loss="mse", lattice_loss_weight=0.0, vgg_pooling="max",
                              perceptual_layer_weights=[1.0])
    assert "vgg_before_activation" not in resumed["hyperparameters"]
    # Step 3 from an old step-2 checkpoint.
    run_script(train_srgan, [*OLD_RUN, *discriminator, "--data_folder", data_folder, "--output_folder", tmp_path,
                             "--srresnet_checkpoint", OLD / "srresnet_unshuffle_x2.pth", "--scaling_factor", 2,
                             "--iterations", 1], monkeypatch)
    started = checkpoints.load_checkpoint(tmp_path / "checkpoint_srgan.pth")
    assert started["generator_kwargs"] == dict(large_kernel_size=3, small_kernel_size=3, n_channels=4, n_blocks=1,
                                               scaling_factor=2, unshuffle_scale=2)
    assert inference.load_generator(tmp_path / "checkpoint_srgan.pth")[0].scaling_factor == 2
