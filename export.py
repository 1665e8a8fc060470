"""
After training: the generator as a file that other programs run.

A training checkpoint holds everything needed to continue training (the discriminator, the optimisers' moments, the
random states): several times the size of the generator, in this project's own layout. This script writes the
generator alone, in the format the output file's extension names:

  .pth          {"params": state dict, "params_ema": state dict (when the run kept EMA weights)}, the convention of
                BasicSR and Real-ESRGAN, plus plain-value keys that say the architecture (generator_arch,
                generator_kwargs, scaling_factor, data_scaling_factor, input_format, output_format; the programs
                below ignore them).
                RRDBNet and SRVGGNetCompact already have Real-ESRGAN's parameter names, so Real-ESRGAN's
                inference script, BasicSR and chaiNNer (spandrel) load these files as they load the official ones.
                SRResNet has no such program: it keeps our names, and this project's scripts read it.
                Only tensors and plain values: torch.load(..., weights_only=True) reads it with no allow-listed class.
  .safetensors  the same tensors without pickle, for loaders that refuse pickle files: ONE flat state dict (the
                EMA weights when the run kept them, else the raw ones; spandrel / chaiNNer read such a file), the
                architecture as string metadata (the same keys, generator_kwargs as JSON, and 'weights': which set).
  .onnx         the whole network as a graph (ONNX opset 18) for ONNX Runtime, chaiNNer and other runtimes, as the
                ecosystem's ONNX super-resolution models are: input (N, 3, H, W) RGB float32 in [0, 1], output
                (N, 3, sH, sW) float32 in [0, 1] whatever the network's own ranges (SRResNet's [-1, 1] output is
                converted, and every output clamped, inside the graph); batch, height and width are free. An x1 / x2
                model trained on x4 data (data_scaling_factor 4) is exported with its nearest-neighbour input
                upscale inside the graph, so the graph is an x4 model: give it the LR image, as the others. After
                export, ONNX Runtime runs the file on a test image and must match PyTorch to 50 dB PSNR.
  .param        an ncnn model: model.param (the graph, text) and model.bin (the weights) beside it, for
                realesrgan-ncnn-vulkan, Upscayl and other ncnn apps, laid out as the official Real-ESRGAN ncnn files
                (ncnn_format.write_generator; input blob 'data', output blob 'output', RGB in [0, 1]); fp16 weights as
                those files have them, or fp32 with --fp32. After export, this project's own ncnn reader loads the
                pair back and must match PyTorch to 50 dB PSNR on a test image (ncnn's runtime is checked in the
                tests; docs/export.md).

--half stores fp16 tensors (.pth / .safetensors: files half the size; loaders copy them into their float32 networks)
or an fp16 graph (.onnx: fp16 weights and arithmetic, still float32 in and out); a weight beyond fp16's range is
refused, naming it, before any file is written. An --output that exists is replaced only with --overwrite, and never
when it is the checkpoint itself. (ncnn files are fp16 unless --fp32 is given.)

    python export.py runs/checkpoint_srgan.pth --output runs/srgan.onnx
    python export.py runs/checkpoint_srgan.pth --output runs/srgan.pth --half
    python export.py runs/checkpoint_srresnet.pth --output weights/srresnet_x4.pth --half --weights ema --overwrite
    python export.py RealESRGAN_x4plus.pth --output RealESRGAN_x4plus.safetensors
    python export.py compact --output runs/compact-x4.param          # runs/compact-x4.param + .bin, for ncnn apps

The checkpoint may be anything inference.load_generator reads: our training checkpoints, the best-validation files
(best_<kind>.pth), files this script wrote, and the official ESRGAN / Real-ESRGAN files. The README's "Using your
model elsewhere" says which program takes which file.
"""
import argparse
import copy
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

import cli
import inference
import metrics
import ncnn_format
import utils

FORMATS = (".pth", ".safetensors", ".onnx", ".param")
ONNX_OPSET = 18  # ONNX Runtime runs opset 18 from version 1.14 on; torch.onnx's exporter writes it without warnings
MIN_ONNX_PSNR = 50.0  # dB between ONNX Runtime's and PyTorch's 8-bit outputs; exact exports give 60 dB or more


# ------------------------------------------------------------------------------------------------------
# The generator and its weights
# ------------------------------------------------------------------------------------------------------
def load_weights(path):
    """
    The generator of any file inference.load_generator reads, and its weights as a generator-only file keeps them.

    The file is read once, and both sets of weights are taken from that one read: a running training rewrites its
    checkpoint every --checkpoint_every iterations, and two reads could give the raw weights of one iteration and the
    EMA weights of the next (or "EMA weights" that are only the next iteration's raw ones).

    :return: (model with the preferred weights (EMA when there are), weights, descriptions) with weights
             {"params": the raw weights} plus {"params_ema": the EMA weights} when the file holds both (a file with
             one set of weights gives it as "params"), and descriptions the one-line description of each
    """
    if ncnn_format.is_ncnn_model(path):  # model.param + model.bin: one set of weights, read by ncnn_format
        model, description, _ = inference.load_generator(path)
        return model, {"params": model.state_dict()}, {"params": description}
    checkpoint = inference.read_generator_file(path)  # the one read
    model, description, _ = inference.load_generator(path, checkpoint=checkpoint)  # EMA weights, when there are
    raw_model, raw_description, _ = inference.load_generator(path, ema=False, checkpoint=checkpoint)
    weights, descriptions = {"params": raw_model.state_dict()}, {"params": raw_description}
    ema_weights = model.state_dict()
    if any(not torch.equal(ema_weights[name], value) for name, value in weights["params"].items()):
        weights["params_ema"], descriptions["params_ema"] = ema_weights, description
    return model, weights, descriptions


def architecture(model):
    """The plain values an exported file says about its network: how to build it, what it eats and gives, and the
    scaling factor of the data it was trained on (4 for an x1 pixel-unshuffle model trained on x4 data: the loaders of
    this project then feed it the LR image nearest-upscaled, inference.fit_generator_to_data)."""
    return dict(generator_arch=model.generator_arch, generator_kwargs=dict(model.generator_kwargs),
                scaling_factor=model.scaling_factor,
                data_scaling_factor=getattr(model, "data_scaling_factor", model.scaling_factor),
                input_format=model.input_format, output_format=model.output_format)


def plain_tensors(state_dict, half=False):
    """A state dict as a file stores it: plain dict, contiguous tensors that share no memory (safetensors refuses
    shared ones), floating-point ones in fp16 with `half` (integer buffers, e.g. batch-norm counters, stay as
    they are)."""
    return {name: (value.half() if half and value.is_floating_point() else value).detach().clone().contiguous()
            for name, value in state_dict.items()}


FP16_MAX = torch.finfo(torch.float16).max  # 65504: larger values become inf in fp16


def check_fits_fp16(state_dict, weights_name):
    """Refuse (ValueError, naming the tensor) weights that fp16 cannot hold: beyond FP16_MAX they would be stored as
    inf, and the network would output black images."""
    for name, value in state_dict.items():
        if value.is_floating_point() and value.abs().max() > FP16_MAX:
            raise ValueError(f"{weights_name}: the tensor {name} has values up to {value.abs().max().item():.4g}, "
                             f"beyond fp16's largest ({FP16_MAX:g}): --half would store them as inf. Export without "
                             f"--half.")


# ------------------------------------------------------------------------------------------------------
# The three formats
# ------------------------------------------------------------------------------------------------------
def export_pth(model, weights, path, half=False):
    """{"params": ..., "params_ema": ... (when there are), the architecture's plain values}, written atomically."""
    state = {name: plain_tensors(state_dict, half) for name, state_dict in weights.items()}
    state.update(architecture(model))
    utils.atomic_write(path, lambda file: torch.save(state, file))


def export_safetensors(model, weights, path, half=False):
    """One flat state dict (the EMA weights when there are) and the architecture as string metadata."""
    from safetensors.torch import save

    weights_name = "params_ema" if "params_ema" in weights else "params"
    facts = architecture(model)
    metadata = {name: value if isinstance(value, str) else json.dumps(value) for name, value in facts.items()}
    metadata["weights"] = weights_name
    data = save(plain_tensors(weights[weights_name], half), metadata=metadata)
    utils.atomic_write(path, lambda file: file.write(data))


class OnnxGenerator(nn.Module):
    """
    A generator as the ecosystem's ONNX models are used: (N, 3, H, W) RGB float32 in [0, 1] in, (N, 3, s H, s W)
    float32 in [0, 1] out, whatever the network's own input / output formats (utils.convert_image) and precision.

    With `half`, the network (a copy) computes in fp16: the input is cast to fp16 on the way in, the output back to
    float32 before the range conversion and the clamp (as inference.run_generator does), so the file is a drop-in
    replacement for the float32 one.
    """

    def __init__(self, generator, half=False):
        super().__init__()
        self.generator = copy.deepcopy(generator).half() if half else generator
        self.dtype = torch.float16 if half else torch.float32

    def forward(self, lr_imgs):
        x = utils.convert_image(lr_imgs.to(self.dtype), "[0, 1]", self.generator.input_format)
        sr_imgs = self.generator(x).float()  # (N, 3, s H, s W) in the network's output format
        return utils.convert_image(sr_imgs, self.generator.output_format, "[0, 1]").clamp(0.0, 1.0)


def export_onnx(model, path, half=False):
    """
    The generator as an ONNX graph (OnnxGenerator) with free batch, height and width, written atomically.

    torch.onnx.export with dynamo=True records the network with torch.export, with symbolic sizes, so the graph
    computes every size from the input's (the older TorchScript exporter is deprecated). Shapes that the network
    only branches on are recorded for the example input's values: a pixel-unshuffle model pads its input to a
    multiple of its fold only when needed (models.pad_to_multiple), so the example has sides that need padding
    (17 x 23), which records the padding (reflect) in the graph, computed from the input's size; it pads by 0 where
    the sides divide. Reflection needs sides of at least the fold: such a graph takes images from 2 (x2) or 4 (x1)
    pixels a side. The example's batch of 2 keeps the batch free (a batch of 1 would be recorded as fixed).
    """
    # An x1 / x2 model of x4 data: the nearest-neighbour upscale of its input goes into the graph, which is then an
    # x4 model (inference.MatchedInputGenerator; the ONNX Resize operator, mode nearest).
    model, _ = inference.fit_generator_to_data(model.eval())
    wrapper = OnnxGenerator(model, half).eval()
    example = torch.rand(2, 3, 17, 23)
    free = torch.export.Dim.DYNAMIC
    with torch.no_grad():
        program = torch.onnx.export(wrapper, (example,), dynamo=True, opset_version=ONNX_OPSET, verbose=False,
                                    input_names=["input"], output_names=["output"],
                                    dynamic_shapes={"lr_imgs": {0: free, 2: free, 3: free}})
    data = program.model_proto.SerializeToString()  # one file: the weights inside (a limit of 2 GB)
    utils.atomic_write(path, lambda file: file.write(data))


def check_image():
    """The image an export is checked on: a 67 x 61 crop of scikit-image's astronaut, the face, fine detail (odd
    sides: a pixel-unshuffle model's padding runs too), as (1, 3, 67, 61) float32 in [0, 1]."""
    from skimage import data as skimage_data

    lr = skimage_data.astronaut()[100:167, 180:241]  # (67, 61, 3) uint8
    return torch.from_numpy(lr).permute(2, 0, 1).float().div(255).unsqueeze(0)


def psnr_8bit(sr_a, sr_b):
    """PSNR in dB between two (1, 3, H, W) outputs in [0, 1] (arrays or tensors), quantised to 8 bits (inf when
    identical)."""
    return metrics.calculate_psnr(*(metrics.quantize_to_uint8(np.moveaxis(np.asarray(sr[0]), 0, -1))
                                    for sr in (sr_a, sr_b)))


def check_onnx(model, path):
    """
    Run the ONNX file with ONNX Runtime on a real image (check_image) and compare with PyTorch
    (inference.run_generator, float32).

    :return: PSNR in dB between the two 8-bit outputs (inf when identical)
    :raises RuntimeError: under MIN_ONNX_PSNR, with the figure
    """
    import onnxruntime

    lr_imgs = check_image()  # (1, 3, 67, 61) in [0, 1]
    try:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        onnx_sr = session.run(None, {"input": lr_imgs.numpy()})[0]  # (1, 3, 67 s, 61 s) in [0, 1]
    except Exception as error:  # onnxruntime's own exception types
        raise RuntimeError(f"ONNX Runtime cannot run the exported file {path} on a 67 x 61 test image ({error}); "
                           f"do not use the file.") from None
    torch_sr = inference.run_generator(inference.fit_generator_to_data(model)[0], lr_imgs).numpy()
    if onnx_sr.shape != torch_sr.shape:
        raise RuntimeError(f"The ONNX file {path} gives an output of shape {onnx_sr.shape}, PyTorch "
                           f"{torch_sr.shape}: the export is wrong; do not use the file.")
    psnr = psnr_8bit(onnx_sr, torch_sr)
    if psnr < MIN_ONNX_PSNR:
        raise RuntimeError(f"The ONNX file {path} does not reproduce the PyTorch network: {psnr:.1f} dB PSNR between "
                           f"ONNX Runtime's and PyTorch's 8-bit outputs on a test image, under the {MIN_ONNX_PSNR:g} "
                           f"dB expected. Do not use the file (without --half, if it was given, it may pass).")
    return psnr


def check_ncnn(model, path):
    """
    Load the ncnn files back with this project's reader (inference.load_generator, ncnn_format.read_generator) and
    compare with the PyTorch network on check_image: the graph must be read as the same network, and its weights
    (fp16 ones rounded) must give the same image.

    :return: PSNR in dB between the two 8-bit outputs (inf when identical)
    :raises RuntimeError: under MIN_ONNX_PSNR (the same bar as ONNX), with the figure
    """
    lr_imgs = check_image()
    read_back, _, _ = inference.load_generator(path)
    def network(generator):  # what makes two networks the same: their class, scales and tensors' shapes
        return (type(generator), generator.scaling_factor, generator.data_scaling_factor,
                {name: value.shape for name, value in generator.state_dict().items()})
    if network(read_back) != network(model):
        raise RuntimeError(f"The ncnn file {path} reads back as {read_back.generator_arch} "
                           f"{read_back.generator_kwargs}, not as the exported {model.generator_arch} "
                           f"{model.generator_kwargs}: do not use the file.")
    psnr = psnr_8bit(*(inference.run_generator(inference.fit_generator_to_data(generator)[0], lr_imgs).numpy()
                       for generator in (read_back, model)))
    if psnr < MIN_ONNX_PSNR:
        raise RuntimeError(f"The ncnn file {path} does not reproduce the PyTorch network: {psnr:.1f} dB PSNR on a test "
                           f"image, under the {MIN_ONNX_PSNR:g} dB expected; do not use the file (with --fp32 it may "
                           f"pass).")
    return psnr


# ------------------------------------------------------------------------------------------------------
# The command line
# ------------------------------------------------------------------------------------------------------
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="any generator file inference.load_generator reads (our checkpoints, "
                                           "best-validation files, exported files, official ESRGAN / Real-ESRGAN "
                                           "files)")
    parser.add_argument("--output", required=True,
                        help="the file to write; its extension picks the format: " + ", ".join(FORMATS))
    parser.add_argument("--half", action="store_true",
                        help="fp16 tensors (.pth / .safetensors) or an fp16 graph with float32 input and output "
                             "(.onnx): smaller files")
    parser.add_argument("--fp32", action="store_true",
                        help="for .param (ncnn): fp32 convolution weights instead of fp16 (the official files' and the "
                             "default: half the file)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace --output if it exists (never the checkpoint itself, which is always refused)")
    parser.add_argument("--weights", choices=("both", "ema", "raw"), default="both",
                        help="which weights of a file that has raw and EMA ones to write: both (default; .pth only: "
                             "'params' and 'params_ema'), ema or raw alone (half the .pth file; the EMA weights are "
                             "what .safetensors and .onnx hold otherwise, and what inference uses)")
    args = parser.parse_args(argv)
    output = Path(args.output)
    if output.suffix.lower() not in FORMATS:
        raise ValueError(f"--output {output} has no extension this script writes: end it in "
                         f"{', '.join(FORMATS)} to choose the format.")
    ncnn = output.suffix.lower() == ".param"
    if args.fp32 and not ncnn:
        raise ValueError(f"--fp32 is for ncnn files (.param); {output.suffix} files are fp32 unless --half is given.")
    if args.fp32 and args.half:
        raise ValueError("--half and --fp32 ask for two precisions: give --fp32 alone for fp32 ncnn files, or neither "
                         "for fp16 ones (the default).")
    # Never write over the file read (a training checkpoint, or a shipped model's weights/ file by its name), however
    # the two paths are spelled; any other file only when asked. An ncnn model writes two files, model.param and
    # model.bin, and reads two.
    source = inference.shipped_model_path(args.checkpoint)
    outputs = ncnn_format.ncnn_paths(output) if ncnn else (output,)
    sources = ncnn_format.ncnn_paths(source) if ncnn_format.is_ncnn_model(source) else (source,)
    for written in outputs:
        for read in sources:
            if written.resolve() == read.resolve() or (written.exists() and read.exists() and written.samefile(read)):
                raise ValueError(f"--output {output} is the checkpoint being exported, its own input: give another "
                                 f"file name (the export would replace the file it reads).")
        if written.exists() and not args.overwrite:
            raise ValueError(f"--output {output} would replace {written}, which exists: give --overwrite to replace "
                             f"it, or another name.")
    utils.check_output_folder(output.parent, "--output")  # a file where its folder should be: one line now

    model, weights, descriptions = load_weights(args.checkpoint)
    description = descriptions.get("params_ema", descriptions["params"])  # (the preferred weights')
    if args.weights != "both" and "params_ema" in weights:
        # One set: the EMA weights under their own name (as Real-ESRGAN's released files), or the raw ones as 'params'.
        weights = {"params_ema": weights["params_ema"]} if args.weights == "ema" else {"params": weights["params"]}
        if args.weights == "raw":  # say so: the description above is of the EMA weights
            description = descriptions["params"]
    half = args.half or (ncnn and not args.fp32)
    if half:  # before any file is written: a value fp16 cannot hold would become inf, and the output black
        for weights_name, state_dict in weights.items():
            check_fits_fp16(state_dict, weights_name)
    stored = "params_ema" if "params_ema" in weights else "params"  # what .safetensors, .onnx and .param keep
    model.load_state_dict(weights[stored])  # (--weights raw: the raw ones, in the graphs and in their checks)
    if output.suffix.lower() == ".pth":
        export_pth(model, weights, output, args.half)
        stored = " + ".join(weights)
    elif output.suffix.lower() == ".safetensors":
        export_safetensors(model, weights, output, args.half)
    elif ncnn:
        ncnn_format.write_generator(model, output, fp16=half)
    else:
        export_onnx(model, output, args.half)
    size = sum(written.stat().st_size for written in outputs)
    print(f"Wrote {' + '.join(str(written) for written in outputs)} ({size / 1e6:.1f} MB" if size >= 1e5 else
          f"Wrote {' + '.join(str(written) for written in outputs)} ({size / 1e3:.0f} kB",
          f"{'fp16' if half else 'fp32'}, {stored}): {description}", sep=", ")
    if output.suffix.lower() == ".onnx":
        _, note = inference.fit_generator_to_data(model)
        if note:  # the graph takes the LR image as it is, like any x4 model
            print(f"The graph is an x{model.data_scaling_factor} model: {note} (the upscale is inside the graph).")
        psnr = check_onnx(model, output)
        print("ONNX Runtime reproduces PyTorch on a test image: " + (
            "identical 8-bit outputs." if psnr == float("inf") else f"{psnr:.1f} dB PSNR between the 8-bit outputs."))
    if ncnn:
        _, note = inference.fit_generator_to_data(model)
        if note:  # the graph takes the LR image as it is, like any x4 model
            print(f"The graph is an x{model.data_scaling_factor} model: {note} (the upscale is inside the graph).")
        psnr = check_ncnn(model, output)
        print("Read back, the ncnn files reproduce PyTorch on a test image: " + (
            "identical 8-bit outputs." if psnr == float("inf") else f"{psnr:.1f} dB PSNR between the 8-bit outputs.")
            + f" For ncnn apps: {model.scaling_factor if not note else model.data_scaling_factor}x, blobs 'data' / "
              f"'output'.")


if __name__ == "__main__":
    cli.run_cli(main)
