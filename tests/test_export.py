"""Tests for export.py: the generator alone, as .pth / .safetensors files for other programs and as an ONNX graph.

The references are independent of our code where one exists: an RRDBNet written here from the published
architecture (BasicSR's parameter names), loaded the way Real-ESRGAN's inference script loads its files; spandrel,
the model loader of chaiNNer; ONNX Runtime. Tiny networks: an ONNX export still takes a few seconds each (torch.export
traces the network with symbolic sizes).
"""
import json
import pickletools
import shlex
import sys
import zipfile

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import safe_open
from skimage import data as skimage_data
from torch import nn

import checkpoints
import cli
import create_data_lists
import eval as eval_script
import export
import inference
import metrics
import models
import super_resolve
import train_srgan
import train_srresnet
import utils
from test_training import run_script  # a training script's main() in this process

# One tiny generator of each architecture export.py knows. Growth 32 in the RRDBNets: spandrel only reads that one.
ARCHITECTURES = {
    "srresnet": ("srresnet", dict(n_channels=8, n_blocks=1, scaling_factor=4)),
    "rrdb_x4": ("rrdb", dict(num_feat=8, num_block=1, num_grow_ch=32, scale=4)),
    "rrdb_x2": ("rrdb", dict(num_feat=8, num_block=1, num_grow_ch=32, scale=2)),
    "compact": ("compact", dict(num_feat=8, num_conv=2, upscale=4)),
}


def random_network(name, seed, **changes):
    """A generator of ARCHITECTURES[name] (with `changes` to its arguments) whose every tensor is random (no zero
    biases, batch-norm statistics that change the output), so that any tensor lost or misplaced by an export changes
    the output."""
    arch, kwargs = ARCHITECTURES[name]
    torch.manual_seed(seed)
    generator = models.build_generator(arch, **{**kwargs, **changes})
    with torch.no_grad():
        for parameter in generator.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))
        for buffer_name, buffer in generator.named_buffers():
            if buffer_name.endswith("running_mean"):
                buffer.add_(0.1 * torch.randn_like(buffer))
            elif buffer_name.endswith("running_var"):
                buffer.mul_(0.5 + torch.rand_like(buffer))
    return generator.eval()


def write_checkpoint(path, name, **changes):
    """A train_srresnet.py checkpoint with raw and EMA weights (different ones); returns (raw, ema) generators."""
    raw, ema = random_network(name, 1, **changes), random_network(name, 2, **changes)
    checkpoints.save_checkpoint(dict(kind="srresnet", iteration=7, generator_arch=raw.generator_arch,
                               generator_kwargs=raw.generator_kwargs, generator=raw.state_dict(),
                               generator_ema=ema.state_dict()), path)
    return raw, ema


def photo_batch(batch, height, width):
    """(batch, 3, height, width) crops of scikit-image's astronaut in [0, 1]: real image content."""
    photo = torch.from_numpy(skimage_data.astronaut()).permute(2, 0, 1).float() / 255
    return torch.stack([photo[:, 90 + 40 * i:90 + 40 * i + height, 150:150 + width] for i in range(batch)])


def forward(model, lr_imgs):
    """The generator's SR images in [0, 1] (inference.run_generator: what our scripts compute)."""
    return inference.run_generator(model, lr_imgs)


def psnr_8bit(a, b):
    """PSNR between two (N, 3, H, W) batches in [0, 1], as 8-bit images."""
    to_uint8 = lambda x: metrics.quantize_to_uint8(np.asarray(x).transpose(0, 2, 3, 1))  # noqa: E731
    return metrics.calculate_psnr(to_uint8(a), to_uint8(b))


def pickled_globals(path):
    """The Python objects a torch file's pickle names (module and name), read without unpickling anything."""
    with zipfile.ZipFile(path) as archive:
        pickle_bytes = archive.read(next(name for name in archive.namelist() if name.endswith("/data.pkl")))
    ops = list(pickletools.genops(pickle_bytes))
    found = {tuple(arg.split(" ")) for op, arg, _ in ops if op.name == "GLOBAL"}
    found |= {(ops[i - 2][1], ops[i - 1][1]) for i, (op, _, _) in enumerate(ops) if op.name == "STACK_GLOBAL"}
    return found


# What a file of tensors must name, and all that spandrel's restricted unpickler (chaiNNer) lets through.
TENSOR_GLOBALS = {("torch._utils", "_rebuild_tensor_v2"), ("collections", "OrderedDict"), ("torch", "FloatStorage"),
                  ("torch", "HalfStorage"), ("torch", "LongStorage")}


# ------------------------------------------------------------------------------------------------------
# .pth and .safetensors
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_pth_and_safetensors_load_back_to_the_same_network(name, tmp_path):
    raw, ema = write_checkpoint(tmp_path / "checkpoint.pth", name)
    lr_imgs = photo_batch(2, 11, 14)  # odd sides: the pixel-unshuffle model pads
    for extension in (".pth", ".safetensors"):
        export.main([str(tmp_path / "checkpoint.pth"), "--output", str(tmp_path / f"exported{extension}")])
        model, description, _ = inference.load_generator(tmp_path / f"exported{extension}")
        assert type(model) is type(ema) and "export.py" in description and "params_ema" in description
        assert torch.equal(forward(model, lr_imgs), forward(ema, lr_imgs))
    # The .pth keeps the raw weights too, as "params".
    assert torch.equal(forward(inference.load_generator(tmp_path / "exported.pth", ema=False)[0], lr_imgs),
                       forward(raw, lr_imgs))

    # The .pth: tensors and plain values only, which torch.load reads with weights_only and no allowed class.
    with torch.serialization.safe_globals([]):
        state = torch.load(tmp_path / "exported.pth", map_location="cpu", weights_only=True)
    assert set(state) == {"params", "params_ema", "generator_arch", "generator_kwargs", "scaling_factor",
                          "data_scaling_factor", "input_format", "output_format"}
    assert state["generator_arch"] == ARCHITECTURES[name][0] and state["scaling_factor"] == ema.scaling_factor
    assert state["data_scaling_factor"] == ema.scaling_factor  # (the checkpoint names no other data scale)
    assert models.build_generator(state["generator_arch"], **state["generator_kwargs"]).state_dict().keys() == \
        state["params"].keys() == ema.state_dict().keys()
    assert pickled_globals(tmp_path / "exported.pth") <= TENSOR_GLOBALS

    # The .safetensors: one flat state dict (the EMA weights) and the architecture in its string metadata.
    with safe_open(tmp_path / "exported.safetensors", framework="pt") as file:
        metadata, keys = file.metadata(), set(file.keys())
    assert keys == set(ema.state_dict()) and metadata["weights"] == "params_ema"
    assert metadata["generator_arch"] == ARCHITECTURES[name][0]
    assert json.loads(metadata["generator_kwargs"]) == ema.generator_kwargs
    assert (metadata["input_format"], metadata["output_format"]) == (ema.input_format, ema.output_format)
    assert int(metadata["data_scaling_factor"]) == ema.scaling_factor


def test_a_file_with_one_set_of_weights_exports_it_as_params(tmp_path):
    generator = random_network("srresnet", seed=3)
    checkpoints.save_checkpoint(dict(kind="srgan", iteration=1, generator_arch="srresnet",
                               generator_kwargs=generator.generator_kwargs, generator=generator.state_dict()),
                          tmp_path / "checkpoint.pth")
    export.main([str(tmp_path / "checkpoint.pth"), "--output", str(tmp_path / "exported.pth")])
    state = torch.load(tmp_path / "exported.pth", weights_only=True)
    assert "params_ema" not in state and state["params"].keys() == generator.state_dict().keys()
    export.main([str(tmp_path / "checkpoint.pth"), "--output", str(tmp_path / "exported.safetensors")])
    with safe_open(tmp_path / "exported.safetensors", framework="pt") as file:
        assert file.metadata()["weights"] == "params"


def test_one_set_of_weights_ema_or_raw(tmp_path):
    """--weights ema / raw: one set alone, half the file; it loads whatever ema= asks (there is one set)."""
    raw, ema = write_checkpoint(tmp_path / "checkpoint.pth", "compact")
    export.main([str(tmp_path / "checkpoint.pth"), "--output", str(tmp_path / "both.pth")])
    lr_imgs = photo_batch(1, 9, 13)
    for choice, kept, model in (("ema", "params_ema", ema), ("raw", "params", raw)):
        path = tmp_path / f"{choice}.pth"
        export.main([str(tmp_path / "checkpoint.pth"), "--output", str(path), "--weights", choice])
        assert set(torch.load(path, weights_only=True)) & {"params", "params_ema"} == {kept}
        assert path.stat().st_size < 0.6 * (tmp_path / "both.pth").stat().st_size
        for ema_flag in (True, False):
            assert torch.equal(forward(inference.load_generator(path, ema=ema_flag)[0], lr_imgs), forward(model, lr_imgs))
    # The ONNX graph (and the check export.py runs on it) holds the chosen set too: --weights raw, the raw network.
    export.main([str(tmp_path / "checkpoint.pth"), "--output", str(tmp_path / "raw.onnx"), "--weights", "raw"])
    sr_onnx = onnx_outputs(tmp_path / "raw.onnx", lr_imgs)
    assert psnr_8bit(sr_onnx, forward(raw, lr_imgs)) >= 50 > psnr_8bit(sr_onnx, forward(ema, lr_imgs))


def test_half_files_are_half_the_size_and_load_as_float32(tmp_path):
    # Batch norm: integer counters too. Big enough for the tensors to outweigh the file's own bytes.
    _, ema = write_checkpoint(tmp_path / "checkpoint.pth", "srresnet", n_channels=32, n_blocks=2)
    lr_imgs = photo_batch(1, 12, 10)
    for extension in (".pth", ".safetensors"):
        full, half = tmp_path / f"full{extension}", tmp_path / f"half{extension}"
        export.main([str(tmp_path / "checkpoint.pth"), "--output", str(full)])
        export.main([str(tmp_path / "checkpoint.pth"), "--output", str(half), "--half"])
        assert half.stat().st_size < 0.6 * full.stat().st_size
        stored = torch.load(half, weights_only=True)["params_ema"] if extension == ".pth" else \
            checkpoints.read_safetensors(half)["params_ema"]
        for key, value in stored.items():
            assert value.dtype == (torch.int64 if key.endswith("num_batches_tracked") else torch.float16), key
        model, _, _ = inference.load_generator(half)
        assert all(value.dtype == torch.float32 for value in model.parameters())
        assert psnr_8bit(forward(model, lr_imgs), forward(ema, lr_imgs)) > 45


# An RRDBNet written from the published architecture (ESRGAN, Wang et al. 2018) with BasicSR's parameter names, as
# Real-ESRGAN's inference script builds it, independent of models.py: the x2 and x1 models pixel-unshuffle their
# input first (BasicSR's RRDBNet(scale=2) / (scale=1): conv_first takes 12 / 48 channels) and need sides divisible
# by the fold.
class PublishedRRDBNet(nn.Module):
    class DenseBlock(nn.Module):
        def __init__(self, num_feat, num_grow_ch):
            super().__init__()
            for k in range(1, 6):  # conv k sees the input and the k - 1 earlier outputs; conv5 returns to num_feat
                setattr(self, f"conv{k}", nn.Conv2d(num_feat + (k - 1) * num_grow_ch,
                                                    num_feat if k == 5 else num_grow_ch, 3, padding=1))

        def forward(self, x):
            features = [x]
            for k in range(1, 5):
                features.append(F.leaky_relu(getattr(self, f"conv{k}")(torch.cat(features, 1)), 0.2))
            return x + 0.2 * self.conv5(torch.cat(features, 1))

    class Block(nn.Module):
        def __init__(self, num_feat, num_grow_ch):
            super().__init__()
            self.rdb1, self.rdb2, self.rdb3 = (PublishedRRDBNet.DenseBlock(num_feat, num_grow_ch) for _ in range(3))

        def forward(self, x):
            return x + 0.2 * self.rdb3(self.rdb2(self.rdb1(x)))

    def __init__(self, num_feat, num_block, num_grow_ch, scale):
        super().__init__()
        self.fold = 4 // scale
        self.conv_first = nn.Conv2d(3 * self.fold ** 2, num_feat, 3, padding=1)
        self.body = nn.Sequential(*(PublishedRRDBNet.Block(num_feat, num_grow_ch) for _ in range(num_block)))
        for name in ("conv_body", "conv_up1", "conv_up2", "conv_hr"):
            setattr(self, name, nn.Conv2d(num_feat, num_feat, 3, padding=1))
        self.conv_last = nn.Conv2d(num_feat, 3, 3, padding=1)

    def forward(self, x):
        x = F.pixel_unshuffle(x, self.fold) if self.fold > 1 else x
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        for conv in (self.conv_up1, self.conv_up2):
            feat = F.leaky_relu(conv(F.interpolate(feat, scale_factor=2, mode="nearest")), 0.2)
        return self.conv_last(F.leaky_relu(self.conv_hr(feat), 0.2))


@pytest.mark.parametrize("name", ["rrdb_x4", "rrdb_x2"])
@pytest.mark.parametrize("half", [False, True])
def test_exported_rrdb_loads_like_real_esrgans_files(name, half, tmp_path):
    _, ema = write_checkpoint(tmp_path / "checkpoint.pth", name)
    export.main([str(tmp_path / "checkpoint.pth"), "--output", str(tmp_path / "exported.pth")]
                + (["--half"] if half else []))
    _, kwargs = ARCHITECTURES[name]
    network = PublishedRRDBNet(kwargs["num_feat"], kwargs["num_block"], kwargs["num_grow_ch"], kwargs["scale"])
    # Real-ESRGAN's loader (RealESRGANer): the EMA weights when the file has them, strictly.
    loadnet = torch.load(tmp_path / "exported.pth", map_location="cpu", weights_only=True)
    network.load_state_dict(loadnet["params_ema" if "params_ema" in loadnet else "params"], strict=True)
    lr_imgs = photo_batch(2, 12, 16)  # sides divisible by the fold, as Real-ESRGAN pads them
    with torch.no_grad():
        expected = ema(lr_imgs)
        if half:  # the fp16 weights, copied into the float32 network: close to ours, not equal
            assert psnr_8bit(network(lr_imgs).clamp(0, 1), expected.clamp(0, 1)) > 45
        else:
            torch.testing.assert_close(network(lr_imgs), expected, rtol=0, atol=1e-5)


def test_spandrel_loads_the_exported_files(tmp_path):
    spandrel = pytest.importorskip("spandrel")  # pinned in requirements.txt; chaiNNer's loader
    lr_imgs = photo_batch(1, 12, 16)
    for name in ("rrdb_x4", "rrdb_x2", "compact"):
        _, ema = write_checkpoint(tmp_path / f"{name}.pth", name)
        for extension in (".pth", ".safetensors"):
            path = tmp_path / f"{name}_exported{extension}"
            export.main([str(tmp_path / f"{name}.pth"), "--output", str(path)])
            descriptor = spandrel.ModelLoader().load_from_file(path)
            assert descriptor.scale == ema.scaling_factor, (name, extension)
            with torch.no_grad():
                torch.testing.assert_close(descriptor.model.eval()(lr_imgs), ema(lr_imgs), rtol=0, atol=1e-5)
    # SRResNet has no such program: spandrel does not know our layout and says so (it does not misread it).
    write_checkpoint(tmp_path / "srresnet.pth", "srresnet")
    export.main([str(tmp_path / "srresnet.pth"), "--output", str(tmp_path / "srresnet_exported.pth")])
    with pytest.raises(spandrel.UnsupportedModelError):
        spandrel.ModelLoader().load_from_file(tmp_path / "srresnet_exported.pth")


def test_output_extension_must_name_a_format(tmp_path):
    write_checkpoint(tmp_path / "checkpoint.pth", "compact")
    with pytest.raises(ValueError, match=r"extension.*\.pth, \.safetensors, \.onnx"):
        export.main([str(tmp_path / "checkpoint.pth"), "--output", str(tmp_path / "model.bin")])


def test_export_never_writes_over_its_input_and_asks_before_replacing_a_file(tmp_path, monkeypatch):
    """--output naming the checkpoint itself (however spelled, or a shipped model's file) is refused even with
    --overwrite; any other file that exists is replaced only with --overwrite. Nothing is touched when refused."""
    write_checkpoint(tmp_path / "checkpoint.pth", "compact")
    checkpoint = (tmp_path / "checkpoint.pth").read_bytes()
    for output in (tmp_path / "checkpoint.pth", tmp_path / "sub" / ".." / "checkpoint.pth"):
        for overwrite in ([], ["--overwrite"]):
            with pytest.raises(ValueError, match="its own input"):
                export.main([str(tmp_path / "checkpoint.pth"), "--output", str(output), *overwrite])
    assert (tmp_path / "checkpoint.pth").read_bytes() == checkpoint
    # A shipped model by its name: its file in weights/ (a copy here) is the input.
    monkeypatch.setattr(inference, "WEIGHTS_FOLDER", tmp_path / "weights")
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "compact_x4.pth").write_bytes((inference.Path(export.__file__).parent / "weights" /
                                                          "compact_x4.pth").read_bytes())
    with pytest.raises(ValueError, match="its own input"):
        export.main(["compact", "--output", str(tmp_path / "weights" / "compact_x4.pth"), "--overwrite"])
    monkeypatch.undo()
    # Another file: only with --overwrite.
    (tmp_path / "model.pth").write_bytes(b"a file of yours")
    with pytest.raises(ValueError, match="--overwrite"):
        export.main([str(tmp_path / "checkpoint.pth"), "--output", str(tmp_path / "model.pth")])
    assert (tmp_path / "model.pth").read_bytes() == b"a file of yours"
    export.main([str(tmp_path / "checkpoint.pth"), "--output", str(tmp_path / "model.pth"), "--overwrite"])
    assert inference.load_generator(tmp_path / "model.pth")[0].generator_arch == "compact"


def test_export_refuses_weights_that_fp16_or_anything_cannot_hold(tmp_path):
    """--half turns values beyond 65504 into inf: a network that outputs black. Refused before writing, with the
    tensor's name, in every format; and a checkpoint with NaN weights is refused on load. No file is left."""
    raw, ema = write_checkpoint(tmp_path / "checkpoint.pth", "compact")
    state = checkpoints.load_checkpoint(tmp_path / "checkpoint.pth")
    state["generator_ema"]["body.0.weight"][0, 0, 0, 0] = 1e5  # fine in float32, inf in fp16
    checkpoints.save_checkpoint(state, tmp_path / "large.pth")
    state["generator"]["body.0.weight"][0, 0, 0, 0] = float("nan")
    checkpoints.save_checkpoint(state, tmp_path / "nan.pth")
    for extension in export.FORMATS:
        output = tmp_path / "out" / f"model{extension}"
        with pytest.raises(ValueError, match=r"body\.0\.weight.*65504"):
            export.main([str(tmp_path / "large.pth"), "--output", str(output), "--half"])
        with pytest.raises(ValueError, match=r"body\.0\.weight.*NaN"):
            export.main([str(tmp_path / "nan.pth"), "--output", str(output)])
        assert not output.exists() and not list(tmp_path.glob("**/.*.tmp"))


def test_export_into_a_folder_it_cannot_write_or_onto_a_folder_is_one_line(tmp_path, monkeypatch, capsys):
    write_checkpoint(tmp_path / "checkpoint.pth", "compact")

    def export_cli(*args):
        """export.py's command line (cli.run_cli): the lines it prints on stderr."""
        monkeypatch.setattr(sys, "argv", ["export.py", str(tmp_path / "checkpoint.pth"), "--output", *map(str, args)])
        with pytest.raises(SystemExit):
            cli.run_cli(export.main)
        return capsys.readouterr().err.strip().splitlines()

    def read_only(*args, **kwargs):  # what a read-only folder answers (chmod would not stop root)
        raise PermissionError(13, "Permission denied")

    with monkeypatch.context() as patch:
        patch.setattr(utils.tempfile, "mkstemp", read_only)
        lines = export_cli(tmp_path / "model.safetensors")
    assert len(lines) == 1 and "model.safetensors" in lines[0] and "Permission denied" in lines[0], lines
    (tmp_path / "model.pth").mkdir()  # a folder where the file should go
    lines = export_cli(tmp_path / "model.pth", "--overwrite")
    assert len(lines) == 1 and str(tmp_path / "model.pth") in lines[0], lines


# ------------------------------------------------------------------------------------------------------
# ONNX
# ------------------------------------------------------------------------------------------------------
def onnx_outputs(path, lr_imgs):
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": lr_imgs.numpy()})[0]


# The RRDBNets' exports take 5 to 10 s each on a 2-core CPU (the x2 model's padding makes every size a formula).
@pytest.mark.parametrize("name", ["srresnet", "compact", pytest.param("rrdb_x4", marks=pytest.mark.slow),
                                  pytest.param("rrdb_x2", marks=pytest.mark.slow)])
def test_onnx_matches_pytorch_at_other_sizes(name, tmp_path, capsys):
    _, ema = write_checkpoint(tmp_path / "checkpoint.pth", name)
    export.main([str(tmp_path / "checkpoint.pth"), "--output", str(tmp_path / "model.onnx")])
    assert "ONNX Runtime reproduces PyTorch" in capsys.readouterr().out  # export.py's own check passed
    graph = onnx.load(tmp_path / "model.onnx")
    (graph_input,), (graph_output,) = graph.graph.input, graph.graph.output
    dims = [dim.dim_param or dim.dim_value for dim in graph_input.type.tensor_type.shape.dim]
    assert dims[1] == 3 and all(isinstance(dims[i], str) for i in (0, 2, 3)), dims  # batch, height, width free
    assert graph_input.type.tensor_type.elem_type == graph_output.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    # Sizes other than the export's (17 x 23) and the check's (67 x 61); 13 x 18 needs padding in the x2 model,
    # 16 x 12 does not. Both ways the output is the 8-bit image PyTorch gives, in [0, 1].
    for lr_imgs in (photo_batch(1, 16, 12), photo_batch(3, 13, 18)):
        sr_onnx, sr_torch = onnx_outputs(tmp_path / "model.onnx", lr_imgs), forward(ema, lr_imgs)
        assert sr_onnx.shape == sr_torch.shape
        assert sr_onnx.min() >= 0 and sr_onnx.max() <= 1
        assert psnr_8bit(sr_onnx, sr_torch) >= 50


def test_onnx_half_and_a_failed_check(tmp_path, capsys):
    _, ema = write_checkpoint(tmp_path / "checkpoint.pth", "compact")
    export.main([str(tmp_path / "checkpoint.pth"), "--output", str(tmp_path / "model.onnx"), "--half"])
    assert "ONNX Runtime reproduces PyTorch" in capsys.readouterr().out
    graph = onnx.load(tmp_path / "model.onnx")
    weights = [init for init in graph.graph.initializer if len(init.dims) == 4]  # the convolutions' kernels
    assert weights and all(init.data_type == onnx.TensorProto.FLOAT16 for init in weights)
    assert graph.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # float32 in and out
    lr_imgs = photo_batch(2, 15, 9)
    assert psnr_8bit(onnx_outputs(tmp_path / "model.onnx", lr_imgs), forward(ema, lr_imgs)) >= 50
    # The check after export fails, with the figure, when ONNX Runtime and PyTorch disagree.
    with pytest.raises(RuntimeError, match=r"does not reproduce the PyTorch network: \d+\.\d dB"):
        export.check_onnx(random_network("compact", seed=5), tmp_path / "model.onnx")


# ------------------------------------------------------------------------------------------------------
# End to end: the training script's last words, and our scripts reading the exported files
# ------------------------------------------------------------------------------------------------------
def test_training_prints_the_export_command_and_our_scripts_read_exported_files(tmp_path, monkeypatch, capsys):
    (tmp_path / "photos").mkdir()
    for name in ("astronaut", "coffee"):
        Image.fromarray(getattr(skimage_data, name)()[:96, :96]).save(tmp_path / "photos" / f"{name}.png")
    create_data_lists.create_data_lists([str(tmp_path / "photos")], [str(tmp_path / "photos")], min_size=24,
                                        output_folder=str(tmp_path / "lists"))
    tiny = ["--data_folder", tmp_path / "lists", "--crop_size", 24, "--batch_size", 2, "--workers", 0,
            "--iterations", 2, "--output_folder", tmp_path / "runs"]
    run_script(train_srresnet, [*tiny, "--n_blocks", 1, "--n_channels", 8], monkeypatch)
    printed = capsys.readouterr().out.splitlines()
    commands = [shlex.split(line) for line in printed if line.strip().startswith("python ")]
    assert [command[2:] for command in commands] == [[str(tmp_path / "runs" / "checkpoint_srresnet.pth"), "--output",
                                                      str(tmp_path / "runs" / "srresnet.onnx")]]
    assert commands[0][1].endswith("export.py")
    checkpoint = tmp_path / "runs" / "checkpoint_srresnet.pth"
    # The printed command, writing .pth and .safetensors files (the ONNX export has its own tests, above).
    for extension in (".pth", ".safetensors"):
        export.main(commands[0][2:-1] + [str(tmp_path / f"srresnet{extension}")])
    # super_resolve.py and eval.py give the same images and scores with the exported files as with the checkpoint.
    upscaled = {}
    for model in (checkpoint, tmp_path / "srresnet.pth", tmp_path / "srresnet.safetensors"):
        output_folder = tmp_path / "upscaled" / model.name
        assert super_resolve.main([str(tmp_path / "photos" / "coffee.png"), "--model", str(model), "--output_folder",
                                   str(output_folder), "--no_progress"]) == 0
        upscaled[model.name] = np.asarray(Image.open(output_folder / "coffee_x4.png"))
    assert all(np.array_equal(img, upscaled[checkpoint.name]) for img in upscaled.values())
    eval_script.main(["--model", str(checkpoint), str(tmp_path / "srresnet.safetensors"), "--data_folder",
                      str(tmp_path / "lists"), "--test_sets", "photos", "--json", str(tmp_path / "scores.json")])
    scores = json.loads((tmp_path / "scores.json").read_text())["results"]
    assert len(scores) == 2 and scores[0]["psnr"] == scores[1]["psnr"] and scores[0]["ssim"] == scores[1]["ssim"]

    # A GAN started from an exported file: the architecture comes from the file, the weights are its own.
    run_script(train_srgan, [*tiny, "--srresnet_checkpoint", tmp_path / "srresnet.safetensors",
                                      "--n_blocks_d", 2, "--n_channels_d", 8, "--fc_size_d", 16,
                                      "--vgg_weights", "random", "--iterations", 1], monkeypatch)
    gan = checkpoints.load_checkpoint(tmp_path / "runs" / "checkpoint_srgan.pth", expected_kind="srgan")
    start = checkpoints.load_checkpoint(checkpoint)
    assert (gan["generator_arch"], gan["generator_kwargs"]) == (start["generator_arch"], start["generator_kwargs"])
    name = "conv_block1.conv_block.0.weight"
    assert torch.allclose(gan["generator"][name], start["generator"][name], atol=1e-2)
    assert "srgan.onnx" in capsys.readouterr().out  # its own export command


def test_an_x1_model_of_x4_data_exports_as_an_x4_model(tmp_path, capsys):
    """An x1 pixel-unshuffle model trained on x4 data: the files record the data's scale (our loaders then feed it the
    nearest-upscaled LR image again), and the ONNX graph holds the nearest upscale, so it takes the LR image as it is
    and gives the x4 image, as PyTorch's nearest-upscale-then-network does."""
    raw, ema = write_checkpoint(tmp_path / "checkpoint.pth", "srresnet", scaling_factor=1, unshuffle_scale=4)
    checkpoint = checkpoints.load_checkpoint(tmp_path / "checkpoint.pth")
    checkpoints.save_checkpoint({**checkpoint, "hyperparameters": {"scaling_factor": 4}}, tmp_path / "checkpoint.pth")
    for suffix in (".pth", ".safetensors"):
        export.main([str(tmp_path / "checkpoint.pth"), "--output", str(tmp_path / f"model{suffix}")])
        model, description, _ = inference.load_generator(tmp_path / f"model{suffix}")
        assert (model.scaling_factor, model.data_scaling_factor) == (1, 4)
        assert inference.load_generator_or_blend(tmp_path / f"model{suffix}", scaling_factor=4)[0].scaling_factor == 4
    assert torch.load(tmp_path / "model.pth", weights_only=True)["data_scaling_factor"] == 4
    export.main([str(tmp_path / "checkpoint.pth"), "--output", str(tmp_path / "model.onnx")])
    out = capsys.readouterr().out
    assert "The graph is an x4 model: an x1 network trained on x4 data" in out and "ONNX Runtime reproduces" in out
    lr_imgs = photo_batch(2, 13, 18)
    sr_onnx = onnx_outputs(tmp_path / "model.onnx", lr_imgs)
    lr_upscaled = lr_imgs.repeat_interleave(4, dim=2).repeat_interleave(4, dim=3)  # every pixel 4 x 4, by hand
    assert sr_onnx.shape == (2, 3, 52, 72)
    # Float outputs: a bilinear upscale in the graph would be 1e-2 off here, yet 55 dB in 8 bits (a smooth photo).
    assert (torch.from_numpy(sr_onnx) - forward(ema, lr_upscaled)).abs().max() < 1e-4


def test_an_output_folder_that_is_a_file_is_one_line(tmp_path):
    write_checkpoint(tmp_path / "checkpoint.pth", "compact")
    (tmp_path / "afile").write_text("not a folder")
    with pytest.raises(ValueError, match=r"^The output folder .*afile is a file, not a folder.*--output"):
        export.main([str(tmp_path / "checkpoint.pth"), "--output", str(tmp_path / "afile" / "model.onnx")])


def test_a_checkpoint_rewritten_during_the_export_gives_one_consistent_snapshot(tmp_path, monkeypatch):
    """A running training rewrites checkpoint_srresnet.pth (atomically) every --checkpoint_every iterations. An export
    reads the file once: every tensor of the exported file comes from one version of it, never raw weights of one
    iteration beside EMA weights of the next (nor 'params_ema' for a run that has no EMA)."""
    path = tmp_path / "checkpoint_srresnet.pth"
    before = random_network("srresnet", 1)
    after = random_network("srresnet", 2)  # the next iteration's weights, no EMA in either

    def save(network, iteration):
        checkpoints.save_checkpoint(dict(kind="srresnet", iteration=iteration, generator_arch=network.generator_arch,
                                         generator_kwargs=network.generator_kwargs,
                                         generator=network.state_dict()), path)

    save(before, 1)
    load_checkpoint = checkpoints.load_checkpoint

    def load_while_training_saves(*args, **kwargs):
        checkpoint = load_checkpoint(*args, **kwargs)
        save(after, 2)  # the training writes its next checkpoint right after this read
        return checkpoint

    monkeypatch.setattr(checkpoints, "load_checkpoint", load_while_training_saves)
    export.main([str(path), "--output", str(tmp_path / "exported.pth")])
    exported = torch.load(tmp_path / "exported.pth", weights_only=True)
    assert "params_ema" not in exported
    assert_same_weights(exported["params"], before.state_dict())


def assert_same_weights(state_a, state_b):
    assert state_a.keys() == state_b.keys()
    for name in state_a:
        assert torch.equal(state_a[name], state_b[name]), name
