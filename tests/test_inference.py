"""Tests of inference.py's generators from files against crafted and damaged files: what a file says about its network
is checked against its tensors before anything is built, and weights that cannot be right are refused with one line.

(Loading the files this project and others write, and network interpolation, are tested in test_utils.py; the
shipped models in test_weights.py.)
"""
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import checkpoints
import inference
import models

SRRESNET = dict(n_channels=8, n_blocks=1, scaling_factor=4)


def tiny_state_dict():
    torch.manual_seed(0)
    return models.build_generator("srresnet", **SRRESNET).state_dict()


def save_export(path, weights=None, arch="srresnet", kwargs=SRRESNET, name="params"):
    """An export.py-style .pth file: {name: weights, 'generator_arch': arch, 'generator_kwargs': kwargs}."""
    torch.save({name: tiny_state_dict() if weights is None else weights, "generator_arch": arch,
                "generator_kwargs": kwargs}, path)
    return path


def save_safetensors(path, state_dict=None, **metadata):
    """An export.py-style .safetensors file, with string metadata (the architecture; 'weights': which set) as given."""
    metadata = {"generator_arch": "srresnet", "generator_kwargs": json.dumps(SRRESNET), "weights": "params",
                **metadata}
    save_file(tiny_state_dict() if state_dict is None else state_dict, path, metadata=metadata)
    return path


def refused(path, match):
    """load_generator refuses `path` with one line (a ValueError, which the scripts print as one line) that names
    the file and matches `match`."""
    with pytest.raises(ValueError, match=match or None) as error:
        inference.load_generator(path)
    message = str(error.value)
    assert str(path) in message and "\n" not in message, message
    return message


def test_crafted_sizes_are_refused_before_any_memory_is_spent(tmp_path):
    """A file of a few kB whose generator_kwargs claim a huge network: checked against its tensors (and bounded)
    before the network is built. 20,000 channels would take 14 GB per convolution; 1,000, about 0.4 GB."""
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB
    refused(save_export(tmp_path / "wide.pth", kwargs={**SRRESNET, "n_channels": 1000}),
            r"n_channels.*do not fit|do not fit.*conv_block1")
    refused(save_export(tmp_path / "huge.pth", kwargs={**SRRESNET, "n_channels": 20000}), r"n_channels=20000")
    refused(save_safetensors(tmp_path / "huge.safetensors", generator_kwargs=json.dumps({**SRRESNET,
                                                                                         "n_blocks": 10 ** 9})),
            r"n_blocks=1000000000")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before < 200_000  # no network was allocated


@pytest.mark.parametrize("extension", [".pth", ".safetensors"])
def test_crafted_architectures_give_one_line(tmp_path, extension):
    """generator_kwargs with an unknown key or a list, weights under a name the file does not have, weights that are
    not a state dict: one line each (ValueError), never a traceback."""
    if extension == ".pth":
        files = [save_export(tmp_path / "unknown_key.pth", kwargs={**SRRESNET, "bogus": 1}),
                 save_export(tmp_path / "list.pth", kwargs={**SRRESNET, "n_channels": [8]}),
                 save_export(tmp_path / "kwargs_list.pth", kwargs=[8, 1, 4]),
                 save_export(tmp_path / "no_weights.pth", name="weights_of_another_name"),
                 save_export(tmp_path / "params_tensor.pth", weights=torch.zeros(3))]
    else:
        files = [save_safetensors(tmp_path / "unknown_key.safetensors",
                                  generator_kwargs=json.dumps({**SRRESNET, "bogus": 1})),
                 save_safetensors(tmp_path / "list.safetensors",
                                  generator_kwargs=json.dumps({**SRRESNET, "n_channels": [8]})),
                 save_safetensors(tmp_path / "not_json.safetensors", generator_kwargs="{n_channels: 8"),
                 save_safetensors(tmp_path / "no_weights.safetensors", weights="weights_of_another_name")]
    for path in files:
        refused(path, None)


def test_weights_that_cannot_be_right_are_refused_with_the_tensors_name(tmp_path):
    """NaN or infinite weights (an fp16 export that overflowed, a diverged run) and integer or bool tensors where the
    network has floats: refused on load, naming the tensor, in our files, safetensors files and official ones."""
    name = "conv_block1.conv_block.0.weight"
    for value in (float("nan"), float("inf")):
        weights = tiny_state_dict()
        weights[name][0, 0, 0, 0] = value
        refused(save_export(tmp_path / "non_finite.pth", weights), rf"{name}.*(NaN|infinite)")
        refused(save_safetensors(tmp_path / "non_finite.safetensors", weights), rf"{name}.*(NaN|infinite)")
    for dtype in (torch.int32, torch.bool):
        weights = tiny_state_dict()
        weights[name] = weights[name].to(dtype)
        refused(save_safetensors(tmp_path / "integer.safetensors", weights), rf"{name}.*{str(dtype)[6:]}")
    # Batch norm's counters are integers in the network itself: they stay allowed.
    assert tiny_state_dict()["residual_blocks.0.conv_block1.conv_block.1.num_batches_tracked"].dtype == torch.int64
    assert inference.load_generator(save_safetensors(tmp_path / "good.safetensors"))[0].generator_arch == "srresnet"
    # An official Real-ESRGAN compact file with an infinite weight.
    torch.manual_seed(0)
    official = models.SRVGGNetCompact(num_feat=8, num_conv=2, upscale=4).state_dict()
    official["body.0.weight"][0, 0, 0, 0] = float("inf")
    torch.save({"params": official}, tmp_path / "realesr-general-x4v3.pth")
    refused(tmp_path / "realesr-general-x4v3.pth", r"body\.0\.weight.*(NaN|infinite)")


def test_a_good_export_still_loads_exactly(tmp_path):
    """The checks change nothing for a sound file: the same weights, bit for bit."""
    model, description, _ = inference.load_generator(save_export(tmp_path / "good.pth"))
    for key, value in tiny_state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    assert checkpoints.load_checkpoint(tmp_path / "good.pth")["generator_arch"] == "srresnet"


def test_bf16_on_a_cpu_without_native_bf16_is_said_once_in_one_line(monkeypatch):
    """--precision bf16 on a CPU without bf16 instructions runs, as asked, but emulated: several times slower than
    fp32. The scripts say so in one line that names what is faster; 'auto' picks fp32 there and says nothing."""
    cpu = torch.device("cpu")
    monkeypatch.setattr(inference, "native_bf16", lambda device: False)
    note = inference.precision_note("bf16", cpu)
    assert "emulated" in note and "--precision fp32" in note and "\n" not in note
    assert inference.resolve_precision("auto", cpu) == "fp32"
    assert inference.precision_note("fp32", cpu) is None
    monkeypatch.setattr(inference, "native_bf16", lambda device: True)
    assert inference.precision_note("bf16", cpu) is None and inference.resolve_precision("auto", cpu) == "bf16"


def test_native_bf16_follows_the_cpu_the_libraries_use():
    """An AVX2 CPU, emulated with oneDNN's and ATen's own switches: no native bf16 (in a fresh process: the switches
    are read once)."""
    code = "import torch, inference; print(inference.native_bf16(torch.device('cpu')))"
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    result = subprocess.run([sys.executable, "-c", code], cwd=Path(inference.__file__).parent, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "False", result.stderr


def test_an_onnx_file_given_as_a_model_says_what_it_is_and_which_files_are_taken(tmp_path):
    """export.py writes .onnx files; given back as --model / --pretrained, one line says that ONNX Runtime runs them
    and which files this project loads (not "not a PyTorch checkpoint or it is damaged")."""
    onnx = tmp_path / "srgan.onnx"
    onnx.write_bytes(b"\x08\x09\x12\x07pytorch\x1a\x052.1.0:\x8a\x01\n")  # the first bytes of an ONNX model proto
    with pytest.raises(ValueError) as error:
        inference.load_generator(onnx)
    message = str(error.value)
    assert "ONNX" in message and "ONNX Runtime" in message and "damaged" not in message and "\n" not in message
    assert checkpoints.MODEL_FILES in message and ".safetensors" in checkpoints.MODEL_FILES


@pytest.mark.parametrize("arch, kwargs", [("srresnet", dict(n_channels=8, n_blocks=2, scaling_factor=4)),
                                          ("rrdb", dict(num_feat=8, num_block=1, num_grow_ch=4, scale=4))])
@pytest.mark.parametrize("r", [2, 4], ids=["x2", "x1"])
def test_the_x2_and_x1_variants_start_computing_exactly_what_the_x4_model_computes(arch, kwargs, r):
    """The x(4 / r) pixel-unshuffle variant's input is the LR image nearest-upscaled by r, then pixel-unshuffled: each
    colour's r^2 channels are copies of one LR pixel. Its first convolution with the x4 model's weights divided by r^2,
    repeated over those channels, computes the x4 model's; every other layer is the x4 model's: the variant starts
    as the x4 model (float64: equal to rounding). Unfolding (summing the r^2 channels) gives the x4 model back."""
    torch.manual_seed(0)
    x4 = models.build_generator(arch, **kwargs).double().eval()
    variant = models.build_generator(arch, **models.pixel_unshuffle_variant(arch, x4.generator_kwargs, r)).double()
    assert inference.load_weights_folding_first_convolution(variant, x4) == [inference.first_convolution(
        x4.state_dict())]
    variant.eval()
    lr_imgs = torch.rand(2, 3, 11, 13, dtype=torch.float64)
    with torch.no_grad():
        expected = x4(lr_imgs)
        started = variant(inference.match_generator_input(lr_imgs, variant, 4))
    torch.testing.assert_close(started, expected, rtol=0, atol=1e-12)
    # (and for a fresh variant, without the folding, it would not: the check can fail)
    fresh = models.build_generator(arch, **variant.generator_kwargs).double().eval()
    with torch.no_grad():
        assert not torch.allclose(fresh(inference.match_generator_input(lr_imgs, fresh, 4)), expected, atol=1e-3)
    back = models.build_generator(arch, **x4.generator_kwargs).double().eval()
    inference.load_weights_folding_first_convolution(back, variant)
    first = inference.first_convolution(x4.state_dict())
    torch.testing.assert_close(back.state_dict()[first], x4.state_dict()[first], rtol=0, atol=1e-15)
