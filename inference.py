"""Running a generator: which file holds which network, blending two of them, precision, and tiled upscaling.

  Generators from files      the shipped models (SHIPPED_MODELS, weights/, check_shipped_file: their SHA-256),
                             read_generator_file (a file read once, a shipped one by its name),
                             load_generator (our checkpoints, export.py's files, the official ones and ncnn models,
                             model.param + model.bin: ncnn_format.py; what a file says of its network is checked
                             against its tensors: models.generator_from_weights),
                             load_weights_folding_first_convolution (an x4 network's weights into its x2 / x1
                             pixel-unshuffle variant, which then computes the same: fold_first_convolution)
  Network interpolation      interpolate_state_dicts, load_interpolated_generator (across x1 / x2 / x4 variants
                             too), load_generator_or_blend and the --interpolate_with / --alpha flags
  The data's scale           MatchedInputGenerator, fit_generator_to_data: an x1 / x2 model trained on x4 data, run
                             as an x4 model (the LR image nearest-upscaled to its input size)
  Precision and layout       PRECISIONS, native_bf16, resolve_precision, precision_note, autocast
  Running a generator        check_generator_scale, match_generator_input, run_generator, upscale (tiled
                             inference; min_tile, the smallest tile worth running)

eval.py, super_resolve.py, export.py and the validation during training all run generators through this module.
"""
import hashlib
import math
from collections import OrderedDict
from pathlib import Path
from typing import NamedTuple, Optional

import torch
from torch import nn
from tqdm import tqdm

import checkpoints
import fast_paths
import models
import ncnn_format
import porting
import utils

# ------------------------------------------------------------------------------------------------------
# Generators from files: our checkpoints, the shipped models and the official weight files
# ------------------------------------------------------------------------------------------------------
# Which published figures (eval.PUBLISHED) a generator is compared with: our checkpoints by (the training script that
# wrote it, architecture), official files by name. A GAN-trained RRDBNet (ESRGAN) has none: it aims at texture, not
# at PSNR.
PUBLISHED_REFERENCE_OF_CHECKPOINT = {
    ("srresnet", "srresnet"): "SRResNet",
    ("srgan", "srresnet"): "SRGAN",
    ("srresnet", "rrdb"): "RRDB-PSNR",
}
PUBLISHED_REFERENCE_OF_OFFICIAL_FILE = {"rrdb_psnr_x4": "RRDB-PSNR"}


class ShippedModel(NamedTuple):
    """A trained model that ships with the code: its file in weights/, the name of the published figures of the same
    architecture (eval.PUBLISHED) or None, and the SHA-256 of the file (also in the model card), checked on load."""
    file: str
    reference: Optional[str]
    sha256: str


# The trained models that ship with the code, in weights/ (weights/README.md is their model card: how each was
# trained, what it scores, and the same SHA-256s). Every script that takes a model (--model, --pretrained) also takes
# these names.
WEIGHTS_FOLDER = Path(__file__).resolve().parent / "weights"
SHIPPED_MODELS = {
    # the SRGAN paper's SRResNet, PSNR-oriented
    "srresnet": ShippedModel("srresnet_x4.pth", "SRResNet",
                             "38ea3313eada9d53785fa92ad7909fbe2d61df7b01e0a7e3acd05880d5506ca2"),
    # Real-ESRGAN's SRVGGNetCompact (16 convolutions): the fast default for clean images
    "compact": ShippedModel("compact_x4.pth", None,
                            "c8bdc9d1613d4acd636a6e61b000e4974ebf763b8d7d0495fbc38011b89e6bf2"),
    # the same network deepened to 32 convolutions, fine-tuned as a Real-ESRNet on shrunk, noisy, JPEG-compressed LR
    # images: the default for JPEG files
    "realistic": ShippedModel("realistic_x4.pth", None,
                              "2b923f23aa55df2bf6881dc260a0ece2a86976775565dc47769d67f09adf6bc6"),
    # the SRGAN paper's GAN stage on srresnet (with a random VGG19): sharper texture, lower PSNR
    "srgan": ShippedModel("srgan_x4.pth", "SRGAN", "8c42ecc75460003785d3bfea73b2a12a9f2089c914671e16a44d969e0d5e3412"),
    # realistic, trained further as a GAN (Real-ESRGAN's second stage, with a random VGG19): invented texture
    "realistic_gan": ShippedModel("realistic_gan_x4.pth", None,
                                  "2007111b6920d8a43f0bf4528d2a9de7eed6f300cfa69d49be6c724127dc9791"),
}
# What super_resolve.py upscales with when no --model is given (default_model_for): a JPEG file was compressed, and
# often shrunk and noisy before that, which a model trained on clean images sharpens along with the detail; other
# files (PNG, TIFF, ...) get the model with the best PSNR on clean images. weights/README.md has the measurements.
# (Not realistic_gan for JPEGs: sharper, NIQE 1.6 lower, but about 1 dB less PSNR and a faint fine texture at 300% on
# a heavily compressed photo; it is one --model away.)
DEFAULT_MODEL = "compact"
DEFAULT_MODEL_FOR_JPEG = "realistic"


def default_model_for(path):
    """The shipped model for an image file when the user names none: DEFAULT_MODEL_FOR_JPEG ('realistic') for a
    JPEG file (recognised by its first bytes, whatever its name), DEFAULT_MODEL ('compact') for any other file, or
    one that cannot be read (reading it will say what is wrong)."""
    return DEFAULT_MODEL_FOR_JPEG if utils.is_jpeg_file(path) else DEFAULT_MODEL


def shipped_model_path(name_or_path):
    """
    The file of a shipped model named `name_or_path` (a key of SHIPPED_MODELS, e.g. 'compact'): weights/<file>. Anything
    else is a path and comes back unchanged (a file of that name in the current folder is a path too, and wins; a
    folder of that name, e.g. an output folder named after the model, does not).
    """
    if name_or_path in SHIPPED_MODELS and not Path(name_or_path).is_file():
        return WEIGHTS_FOLDER / SHIPPED_MODELS[name_or_path].file
    return Path(name_or_path)


def check_shipped_file(path):
    """
    If `path` is a shipped model's file (however it was named), check its SHA-256 against SHIPPED_MODELS, as
    torchvision checks the files it downloads: bytes changed in place (a bad disk, a botched merge, an edit) would
    otherwise load without a word and upscale badly.

    :raises ValueError: the file is not the one that ships, in one line that says how to get it back
    """
    for name, shipped in SHIPPED_MODELS.items():
        shipped_path = WEIGHTS_FOLDER / shipped.file
        if shipped_path.is_file() and Path(path).is_file() and Path(path).samefile(shipped_path):
            digest = hashlib.sha256(shipped_path.read_bytes()).hexdigest()
            if digest != shipped.sha256:
                raise ValueError(f"{shipped_path}, the shipped '{name}' model, is not the file that ships (its SHA-256 "
                                 f"is {digest[:16]}..., not {shipped.sha256[:16]}...): restore it with `git checkout "
                                 f"-- weights/`. (If you replaced it on purpose, record its SHA-256 in "
                                 f"inference.SHIPPED_MODELS and weights/README.md.)")


def read_generator_file(path):
    """
    The content of a generator file (checkpoints.load_checkpoint), or of a shipped model by its name ('srresnet':
    weights/srresnet_x4.pth, checked against its SHA-256 first: check_shipped_file).

    :raises FileNotFoundError, ValueError: in one line, a missing shipped file saying how to restore it
    """
    shipped_name = str(path) if shipped_model_path(path) != Path(path) else None
    path = shipped_model_path(path)
    if shipped_name is not None and not path.exists():
        raise FileNotFoundError(f"The shipped model '{shipped_name}' should be {path}, which is missing: restore it "
                                f"with `git checkout -- weights/`, or give the path of a checkpoint.")
    check_shipped_file(path)  # a shipped file, by its name or its path: the bytes that ship
    return checkpoints.load_checkpoint(path)


def load_generator(path, device="cpu", scaling_factor=None, ema=True, expected_kind=None, checkpoint=None):
    """
    Load a generator for inference from any checkpoint this project understands (what eval.py and super_resolve.py
    use).

    Accepts our own checkpoints (from train_srresnet.py / train_srgan.py, old ones included; the EMA weights are used
    when present), the generator files of export.py (.pth and .safetensors), the official ESRGAN / Real-ESRGAN /
    BasicSR weight files (architecture inferred from the tensors) and ncnn models (model.param, with model.bin beside
    it: the official Real-ESRGAN ncnn files and export.py's; ncnn_format.read_generator). Weights stored in fp16 are
    loaded into the float32 model (load_state_dict converts them).

    :param scaling_factor: if given, the upscaling factor the model must have, or the data's it was trained on (an x1
                           model trained on x4 data serves x4: fit_generator_to_data). A weight file holds one
                           network with one scale (a pixel-unshuffle x2 variant is its own file), so this only confirms
                           which one you meant: a mismatch is an error rather than a silent x4 when you asked for x2.
    :param ema: False takes the raw weights of a file that also holds EMA weights (which are the default)
    :param expected_kind: if given, the training script our training checkpoints must come from (load_checkpoint);
                          exported and official files are accepted as they are
    :param checkpoint: the file's content, read already with read_generator_file(path), or None to read it
                       here: one read gives one version of a file that a running training may rewrite meanwhile, so
                       that two networks built from it (export.py's raw and EMA weights) come from the same one
    :return: (model in eval mode on `device`, a one-line description, the name of its published figures in
             eval.PUBLISHED or None); the model's generator_arch and generator_kwargs say how to build it again, and
             its data_scaling_factor the scaling factor of the data it was trained on (the checkpoint's
             hyperparameter scaling_factor, or what export.py recorded; else the network's own scale)
    """
    shipped_name = str(path) if shipped_model_path(path) != Path(path) else None
    path = shipped_model_path(path)  # a shipped model's name ('compact', 'srgan', ...): weights/<file>
    if ncnn_format.is_ncnn_model(path):  # model.param + model.bin: the graph tells the network, the .bin its weights
        model, description = ncnn_format.read_generator(path)
        reference = None
    else:
        checkpoint = read_generator_file(shipped_name or path) if checkpoint is None else checkpoint
        model, description, reference = _generator_from_checkpoint(path, checkpoint, ema, expected_kind)
    if shipped_name is not None:
        description = (f"{model.generator_arch} x{model.scaling_factor}, the "
                       f"shipped '{shipped_name}' model ({path.relative_to(WEIGHTS_FOLDER.parent)}; its model card: "
                       f"weights/README.md)")
        reference = SHIPPED_MODELS[shipped_name].reference
    if not hasattr(model, "data_scaling_factor"):  # official files: trained at the network's own scale
        model.data_scaling_factor = model.scaling_factor
    if scaling_factor is not None and scaling_factor not in (model.scaling_factor, model.data_scaling_factor):
        data = model.data_scaling_factor
        trained = f", trained on x{data} data" if data != model.scaling_factor else ""
        raise ValueError(f"{path} upscales x{model.scaling_factor}{trained}, not x{scaling_factor} ({description}): "
                         f"use a model trained for x{scaling_factor} (for x2 / x1, a pixel-unshuffle variant), or give "
                         f"--scaling_factor {data}.")
    return model.to(device).eval(), description, reference


def _generator_from_checkpoint(path, checkpoint, ema, expected_kind):
    """load_generator for a PyTorch file's content (ours, export.py's, an official one): (model, description, the name
    of its published figures or None); the model's data_scaling_factor is set for our own files."""
    if isinstance(checkpoint, dict) and "generator_arch" in checkpoint:
        # Training checkpoints keep the raw and EMA weights as 'generator' / 'generator_ema'; export.py's files as
        # 'params' / 'params_ema' (BasicSR's names). A file with one set of weights gives it either way.
        if expected_kind is not None and "kind" in checkpoint:
            checkpoints.check_checkpoint_kind(checkpoint, expected_kind, path)
        arch = checkpoint["generator_arch"]
        order = ("generator_ema", "params_ema", "generator", "params")
        weights_name = next((name for name in (order if ema else order[2:] + order[:2]) if name in checkpoint), None)
        if weights_name is None:
            raise ValueError(f"{path} names a generator ({arch}) but holds no weights for it (none of "
                             f"{', '.join(order)}): the file is damaged or was not written by this project.")
        # What the file says about the network is checked against its tensors before anything is built.
        model = models.generator_from_weights(arch, checkpoint.get("generator_kwargs"), checkpoint[weights_name],
                                              f"{path} ({weights_name})")
        source = (f"train_{checkpoint['kind']}.py, iteration {checkpoint.get('iteration', '?')}"
                  if "kind" in checkpoint else "export.py")
        description = f"{arch} x{model.scaling_factor} from {source} ({weights_name} weights)"
        reference = PUBLISHED_REFERENCE_OF_CHECKPOINT.get((checkpoint.get("kind"), arch))
        # The data's scaling factor, beside the network's: an x1 pixel-unshuffle model trained on x4 data says 4.
        data_scaling_factor = (checkpoint.get("hyperparameters") or {}).get("scaling_factor",
                                                                            checkpoint.get("data_scaling_factor"))
        data_scaling_factor = int(data_scaling_factor or model.scaling_factor)
        model.data_scaling_factor = data_scaling_factor if data_scaling_factor % model.scaling_factor == 0 else \
            model.scaling_factor
    elif isinstance(checkpoint, dict) and porting.is_official_generator_state_dict(checkpoint):
        if not ema and isinstance(checkpoint.get("params"), dict):
            checkpoint = {"params": checkpoint["params"]}  # the raw weights, not the params_ema preferred otherwise
        try:
            model, description = porting.generator_from_official_state_dict(checkpoint)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None
        reference = PUBLISHED_REFERENCE_OF_OFFICIAL_FILE.get(Path(path).stem.lower())
    else:
        raise ValueError(f"{path} holds no generator this project recognises: expected a checkpoint from "
                         f"train_srresnet.py / train_srgan.py, a file of export.py or an official ESRGAN / "
                         f"Real-ESRGAN / BasicSR file.")
    return model, description, reference


def first_convolution(state_dict):
    """The name of a generator's first convolution weight: the first entry of its state dict (SRResNet's
    'conv_block1.conv_block.0.weight', RRDBNet's 'conv_first.weight'), the one layer whose shape differs between an
    x4 network and its x2 / x1 pixel-unshuffle variants (3 r^2 input channels instead of 3)."""
    return next(iter(state_dict))


def fold_first_convolution(weight, r):
    """
    An x4 network's first convolution as the first convolution of its x(4 / r) pixel-unshuffle variant, computing the
    same thing on that variant's input.

    The variant's input is the LR image nearest-upscaled by r (match_generator_input), pixel-unshuffled by r: channel
    c r^2 + i r + j (PyTorch's order) is sub-pixel (i, j) of colour c, and after a nearest upscale all r^2 of them are
    copies of one LR pixel of colour c. A convolution whose weights for those r^2 channels are the x4 weight of
    colour c divided by r^2 sums r^2 equal terms back into exactly the x4 convolution's output, at every LR pixel:
    the variant then computes exactly what the x4 network computes. (On other inputs, e.g. real x2 data, it sees
    the average of each r x r block: a fair start there too.)

    :param weight: (C_out, C, k, k), the x4 network's (C = 3 colours)
    :return: (C_out, C r^2, k, k)
    """
    return weight.repeat_interleave(r * r, dim=1) / (r * r)


def refold_first_convolution(weight, r_from, r_to):
    """
    A first convolution of a pixel-unshuffle variant with fold r_from as the one of the variant with fold r_to (1: the
    x4 network itself), computing the same on the nearest-upscaled image: unfolded (each colour's r_from^2 channels
    summed: exactly what they compute on r_from^2 copies of a pixel), then folded by r_to (fold_first_convolution).

    :param weight: (C_out, C r_from^2, k, k)
    :return: (C_out, C r_to^2, k, k)
    """
    c_out, channels, *kernel = weight.shape
    unfolded = weight.reshape(c_out, channels // (r_from * r_from), r_from * r_from, *kernel).sum(2)  # (C_out, C, k, k)
    return fold_first_convolution(unfolded, r_to)


def load_weights_folding_first_convolution(generator, source):
    """
    Start an x2 / x1 pixel-unshuffle generator where its x4 network is (or the other way round, or x2 from x1): every
    layer is copied, and the first convolution, whose input channels differ (3 r^2 instead of 3), is refolded
    (refold_first_convolution), so the started generator computes on the LR image nearest-upscaled to its input
    exactly what `source` computes. (Real-ESRGAN starts its x2 model from the x4 one with the first convolution anew;
    that costs the x2 / x1 model thousands of iterations to get back where the x4 model was: the shipped SRResNet's
    x1 variant started at 7.9 dB on Set5 that way, folded at the x4 model's 30.44 dB.)

    :param generator: the model to start (changed in place); source: a trained model of the same network
    :return: the names of the parameters folded (the first convolution's weight; none if the folds are the same)
    :raises ValueError: if any other layer differs (another network, or other sizes)
    """
    target_state, source_state = generator.state_dict(), source.state_dict()
    first = first_convolution(target_state)
    different = [name for name in target_state if name not in source_state
                 or (name != first and source_state[name].shape != target_state[name].shape)]
    if type(generator) is not type(source) or different or set(source_state) != set(target_state):
        raise ValueError(f"cannot start a {type(generator).__name__} x{generator.scaling_factor} from a "
                         f"{type(source).__name__} x{source.scaling_factor}: they differ beyond the first convolution "
                         f"({porting.short_list(different) or 'other layers'}); give a model of the same network "
                         f"(the same blocks and channels).")
    folded = [name for name in target_state if source_state[name].shape != target_state[name].shape]
    generator.load_state_dict({**source_state, **{name: refold_first_convolution(
        source_state[name], int(getattr(source, "unshuffle_scale", 1)), int(getattr(generator, "unshuffle_scale", 1)))
        for name in folded}})
    return folded


# ------------------------------------------------------------------------------------------------------
# Network interpolation (ESRGAN section 3.4)
# ------------------------------------------------------------------------------------------------------
def interpolate_state_dicts(psnr_state, gan_state, alpha, skip_mismatched=False):
    """Blend two trained versions of the same network parameter by parameter:

        theta = (1 - alpha) * theta_PSNR + alpha * theta_GAN

    ESRGAN's trick to trade fidelity for realism without retraining: the PSNR-oriented model (trained with L1 only)
    is smooth but blurry, the GAN model sharp but with artefacts; because the GAN model was fine-tuned *from* the
    PSNR model, the two sit in the same basin and every alpha in between gives a sensible network (alpha = 0.8
    is the paper's showcase). Works on any pair of state dicts with the same layout.

    Args:
        psnr_state, gan_state: state dicts (name -> tensor) of the same architecture.
        alpha: in [0, 1]; 0 gives the PSNR model, 1 the GAN model, exactly.
        skip_mismatched: when True, keys whose shapes differ or that only one dict has keep the PSNR value (or are
            left out, if only the GAN dict has them) and are reported; when False such keys raise ValueError.
    Returns:
        (state_dict, skipped_keys). Non-float tensors (e.g. BatchNorm's num_batches_tracked) keep the PSNR value.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1] (0: PSNR model, 1: GAN model), got {alpha}")
    skipped_keys, differences = _mismatch(psnr_state, gan_state)
    if skipped_keys and not skip_mismatched:
        raise ValueError(f"the two state dicts do not match: {differences}. Pass skip_mismatched=True to keep the "
                         f"PSNR values for these keys.")

    skipped = set(skipped_keys)
    blended = OrderedDict()
    for key, psnr_value in psnr_state.items():
        if key in skipped or not torch.is_floating_point(psnr_value):
            blended[key] = psnr_value.clone()
        else:
            gan_value = gan_state[key].to(device=psnr_value.device, dtype=psnr_value.dtype)
            blended[key] = (1 - alpha) * psnr_value + alpha * gan_value
    return blended, skipped_keys


def _mismatch(psnr_state, gan_state):
    """The keys two state dicts do not share, or hold in different shapes (a list), and a line that names them."""
    only_psnr = [k for k in psnr_state if k not in gan_state]
    only_gan = [k for k in gan_state if k not in psnr_state]
    shape_differs = [k for k in psnr_state if k in gan_state and psnr_state[k].shape != gan_state[k].shape]
    return only_psnr + shape_differs + only_gan, (
        f"only in the PSNR model: {porting.short_list(only_psnr)}; only in the GAN model: "
        f"{porting.short_list(only_gan)}; different shapes: {porting.short_list(shape_differs)}")


def load_interpolated_generator(psnr_path, gan_path, alpha, device="cpu", skip_mismatched=False):
    """
    ESRGAN's network interpolation: one generator whose every weight is (1 - alpha) * PSNR + alpha * GAN.

    alpha = 0 gives the smooth PSNR-oriented network (train_srresnet.py), alpha = 1 the sharp GAN one
    (train_srgan.py, which started from it); values in between trade fidelity for realism without retraining.

    Across scales: an x1 / x2 pixel-unshuffle model and the x4 model of the same network differ in their first
    convolution only (3 r^2 input channels instead of 3). The second model's first convolution is refolded to the
    first model's input first (refold_first_convolution: it then computes on the nearest-upscaled image exactly what
    it did), so that every layer is blended, the first included, and the description says so; the result is the
    first model's network (its scale, its data's scale). Other layers whose shapes differ raise an error, or, with
    skip_mismatched, keep the first network's weights and are named in the description.

    :return: (model in eval mode on `device`, a one-line description)
    """
    psnr_model, _, _ = load_generator(psnr_path)
    gan_model, _, _ = load_generator(gan_path)
    # The same architecture (a pixel-unshuffle variant is the same class: their layers differ in the first convolution
    # only, which is refolded to the first model's input).
    if not (isinstance(psnr_model, type(gan_model)) or isinstance(gan_model, type(psnr_model))):
        raise ValueError(f"Cannot interpolate a {type(psnr_model).__name__} ({psnr_path}) with a "
                         f"{type(gan_model).__name__} ({gan_path}): the two networks must share an architecture.")
    psnr_state, gan_state = psnr_model.state_dict(), gan_model.state_dict()
    across_scales = psnr_model.scaling_factor != gan_model.scaling_factor
    first = first_convolution(psnr_state)
    folds = (int(getattr(gan_model, "unshuffle_scale", 1)), int(getattr(psnr_model, "unshuffle_scale", 1)))
    if across_scales and first in gan_state:  # x1 / x2 with x4: the first convolution refolded to the first's input
        gan_state = {**gan_state, first: refold_first_convolution(gan_state[first], *folds)}
    mismatched, differences = _mismatch(psnr_state, gan_state)
    if mismatched and not skip_mismatched:  # (said in the words of the scripts' flags, which end up here)
        raise ValueError(f"Cannot blend {psnr_path} (x{psnr_model.scaling_factor}, --model) with {gan_path} "
                         f"(x{gan_model.scaling_factor}, --interpolate_with): they differ in "
                         f"{porting.short_list(mismatched)} ({differences}), so they are not the same network (other "
                         f"blocks or channels); give two files of one network.")
    state_dict, skipped = interpolate_state_dicts(psnr_state, gan_state, alpha, skip_mismatched=skip_mismatched)
    description = f"interpolation {1 - alpha:g} x {psnr_path} + {alpha:g} x {gan_path}"
    if across_scales:
        description += (f" (x{psnr_model.scaling_factor} with x{gan_model.scaling_factor}: the first convolution "
                        f"{first} of {gan_path} folded to the input of {psnr_path}, as it computes on the "
                        f"nearest-upscaled image)")
    psnr_model.load_state_dict(state_dict)
    if skipped:
        description += f" (kept from {psnr_path}: {', '.join(skipped)})"
    return psnr_model.to(device).eval(), description


# The command line of network interpolation, shared by super_resolve.py and eval.py: --model A --interpolate_with B
# --alpha a runs the generator whose weights are (1 - a) * A + a * B (load_interpolated_generator).
def add_interpolation_arguments(parser):
    """--interpolate_with and --alpha (see load_generator_or_blend) for an argparse script with --model."""
    parser.add_argument("--interpolate_with", metavar="PATH", default=None,
                        help="blend the --model generator with this one, weight by weight: (1 - alpha) x model + "
                             "alpha x this (ESRGAN's network interpolation). Any two files of the same architecture: "
                             "a PSNR model and the GAN trained from it, or Real-ESRGAN's realesr-general-wdn-x4v3.pth "
                             "(--model) and realesr-general-x4v3.pth (here), where --alpha is Real-ESRGAN's "
                             "--denoise_strength")
    parser.add_argument("--alpha", type=float, default=None, metavar="A",
                        help="the weight of --interpolate_with, in [0, 1]: 0 gives --model, 1 --interpolate_with")


def check_interpolation_arguments(parser, args, model_paths):
    """Stop with parser.error on --alpha without --interpolate_with (or the reverse), an alpha outside [0, 1], or
    an interpolation with more (or fewer) than one checkpoint in model_paths."""
    if (args.interpolate_with is None) != (args.alpha is None):
        parser.error("--interpolate_with and --alpha go together: --model A --interpolate_with B --alpha 0.5 runs "
                     "(1 - 0.5) x A + 0.5 x B")
    if args.alpha is not None and not 0 <= args.alpha <= 1:
        parser.error(f"--alpha must be in [0, 1] (0: --model, 1: --interpolate_with), not {args.alpha}")
    if args.interpolate_with is not None and len(model_paths) != 1:
        parser.error(f"--interpolate_with blends one --model file with it, got {len(model_paths)} "
                     f"({' '.join(model_paths) or 'none'})")


def load_generator_or_blend(path, device="cpu", scaling_factor=None, interpolate_with=None, alpha=None):
    """
    The generator a script's --model PATH asks for: load_generator(path), or, with interpolate_with, the blend
    (1 - alpha) * path + alpha * interpolate_with (load_interpolated_generator), e.g. Real-ESRGAN's denoise strength s
    as path = realesr-general-wdn-x4v3.pth, interpolate_with = realesr-general-x4v3.pth, alpha = s.

    An x1 / x2 model trained on data of a larger scale comes as that scale's model (fit_generator_to_data: the LR
    image nearest-upscaled to its input size), and its description says so.

    :return: (model in eval mode on `device`, a one-line description, the name of its published figures or None,
             the name tables give it: path, or 'path ~ interpolate_with @ alpha' for a blend)
    """
    if interpolate_with is None:
        model, description, reference = load_generator(path, device, scaling_factor)
        name = str(path)
    else:
        model, description = load_interpolated_generator(path, interpolate_with, alpha, device)
        reference, name = None, f"{path} ~ {interpolate_with} @ {alpha:g}"
        if scaling_factor is not None and scaling_factor not in (model.scaling_factor, model.data_scaling_factor):
            raise ValueError(f"{path} and {interpolate_with} upscale x{model.scaling_factor}, not x{scaling_factor}: "
                             f"give --scaling_factor {model.data_scaling_factor}.")
    model, note = fit_generator_to_data(model, scaling_factor)
    return model, description + (f"; {note}" if note else ""), reference, name


# ------------------------------------------------------------------------------------------------------
# The data's scale: x1 / x2 models trained on x4 data
# ------------------------------------------------------------------------------------------------------
class MatchedInputGenerator(nn.Module):
    """
    A generator that upscales less than the data it was trained on (an x1 / x2 pixel-unshuffle model trained on x4
    data, as CutBlur needs), run as a model of the data's scale: it takes the LR image, enlarges it with nearest
    neighbour to the generator's input size (match_generator_input, exactly as training fed it), and runs the
    generator. Everything that runs generators (upscale's tiles, eval.py, validation, the grid, an ONNX export) then
    treats it as an x4 model.

    (N, 3, h, w) --nearest x(s / g)--> (N, 3, h s / g, w s / g) --generator x g--> (N, 3, h s, w s)

    Attributes as a generator's: scaling_factor (the data's, s), input_format, output_format; `generator` is the
    network itself (its weights are the generator's: nothing is copied).
    """

    def __init__(self, generator, scaling_factor):
        super().__init__()
        if scaling_factor % generator.scaling_factor != 0:
            raise ValueError(f"The generator upscales x{generator.scaling_factor}, which does not divide the scaling "
                             f"factor {scaling_factor}.")
        self.generator, self.scaling_factor = generator, scaling_factor
        self.input_format, self.output_format = generator.input_format, generator.output_format
        self.data_scaling_factor = scaling_factor
        self.training = generator.training  # (the flag only: train() / eval() would change the generator's modes)

    def forward(self, lr_imgs):
        """(N, 3, h, w) in the generator's input format -> (N, 3, h s, w s) in its output format."""
        return self.generator(match_generator_input(lr_imgs, self.generator, self.scaling_factor))


def fit_generator_to_data(model, scaling_factor=None):
    """
    The model as a model of its data's scale (or of `scaling_factor`): itself when it upscales by that already, else
    a MatchedInputGenerator around it.

    :return: (model, a one-line note saying what is done, or None when nothing is)
    """
    target = scaling_factor or getattr(model, "data_scaling_factor", model.scaling_factor)
    if target == model.scaling_factor:
        return model, None
    note = (f"an x{model.scaling_factor} network trained on x{target} data: fed the LR image enlarged "
            f"x{target // model.scaling_factor} with nearest neighbour, as in training")
    return MatchedInputGenerator(model, target), note


# ------------------------------------------------------------------------------------------------------
# Precision
# ------------------------------------------------------------------------------------------------------
# The arithmetic a generator runs in: fp32, or autocast to bf16 (CPUs with native bf16 instructions, recent GPUs) or
# fp16 (CUDA GPUs only). Every script's --precision takes these, or 'auto' (resolve_precision).
PRECISIONS = ("fp32", "bf16", "fp16")


def native_bf16(device):
    """Whether `device` computes bf16 natively: a CUDA GPU with bf16, or a CPU whose instructions oneDNN uses for it
    (AVX-512 BF16, AMX: oneDNN's own check, which follows its ONEDNN_MAX_CPU_ISA limit). Elsewhere bf16 runs emulated,
    each value converted to fp32 and back around every operation."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def resolve_precision(precision, device):
    """
    Pick the arithmetic for training / inference: 'fp32', 'bf16' or 'fp16'.

    'auto' means bf16 autocast where the hardware does it well (CUDA GPUs with bf16, and CPUs with native
    bf16 instructions: native_bf16), else fp16 on older GPUs and fp32 on other CPUs. fp16 exists on CUDA only.
    """
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if native_bf16(device) else "fp16"
        return "bf16" if native_bf16(device) else "fp32"
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be 'auto', {', '.join(map(repr, PRECISIONS))}, not {precision!r}.")
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("precision 'fp16' needs a CUDA GPU; use 'bf16' or 'fp32' on the CPU.")
    return precision


def precision_note(precision, device):
    """
    One line for the user when the precision asked for runs emulated (bf16 on a CPU without native bf16), else None.

    Such a run is not refused, nor silently switched to fp32: bf16 was asked for by name, perhaps to reproduce
    another machine's bf16 numbers, and it gives them; but it is several times slower than fp32 there (measured on an
    AVX2 CPU: upscaling 4.8 times, training about 9 times), which nobody would guess from "precision bf16". 'auto'
    never picks it there. The scripts print this once, where they print the precision.
    """
    if precision == "bf16" and not native_bf16(device):
        return (f"warning: this {device.type.upper()} has no native bf16 instructions: bf16 runs emulated, several "
                f"times slower than fp32 (with the numbers native bf16 gives); give --precision fp32 (or auto, which picks "
                f"the fast one) for speed")
    return None


def autocast(device, precision):
    """
    Mixed precision: inside this context, convolutions and matrix products run in bf16 / fp16 while
    reductions and losses stay in fp32. With precision 'fp32' it does nothing.
    """
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype is not None)


# ------------------------------------------------------------------------------------------------------
# Running a generator on an image
# ------------------------------------------------------------------------------------------------------
# Default tile settings of upscale(). A 256-pixel LR tile (1024 pixels at x4) keeps the full RRDBNet (ESRGAN) at about
# 1 GB of activations in fp32 whatever the image size (docs/benchmarks.md, "Tiled upscaling", has the measurements).
# The 16-pixel pad is far less than the RRDBNet's theoretical receptive field (~350 LR pixels), but the *effective*
# influence of far pixels decays fast: the tests require >= 45 dB PSNR between tiled and untiled outputs with these
# defaults on a real photo. If you ever see a seam, raise the pad (32 costs ~20% more time).
DEFAULT_TILE = 256
DEFAULT_TILE_PAD = 16
# The smallest tile worth running. A tile runs with tile_pad pixels of context on each side, so it does
# ((tile + 2 pad) / tile)^2 times the work it keeps: 4 times at tile = 2 pad, and at --tile 1 with the default pad
# 1089 times (measured: the realistic model on a 96 x 64 photo, 108 s instead of 3.7 s), for a saving of memory
# that no machine needs (a 32-pixel tile of the full RRDBNet takes a few tens of MB). min_tile is the floor the
# command line raises a smaller --tile to.
MIN_TILE = 16


def min_tile(tile_pad):
    """The smallest sensible LR tile side for this pad: MIN_TILE, or 2 tile_pad when that is larger (a tile then does
    at most 4 times the work it keeps)."""
    return max(MIN_TILE, 2 * tile_pad)


def check_generator_scale(generator, scaling_factor, source="The generator"):
    """
    Raise ValueError, in one line, unless `generator` fits data of `scaling_factor`: it upscales by that factor, or it
    is a pixel-unshuffle model whose x(s r) body behind its fold by r makes up that factor (the one network meant for
    LR images nearest-upscaled by r: match_generator_input). A plain x2 network on x4 data would otherwise train on
    nearest-upscaled images without a word.

    :param source: what to call the generator in the message (a flag and its file, e.g. "--pretrained x2.pth")
    """
    scale, fold = int(generator.scaling_factor), int(getattr(generator, "unshuffle_scale", 1))
    if scaling_factor == scale or (fold > 1 and scaling_factor == scale * fold):
        return
    body = f" (a pixel-unshuffle model: x{scale * fold} behind a fold by {fold})" if fold > 1 else ""
    raise ValueError(f"{source} upscales x{scale}{body}, but the data are x{scaling_factor}: give --scaling_factor "
                     f"{scale} (data of its scale), or a model made for x{scaling_factor}.")


def match_generator_input(lr_imgs, generator, scaling_factor):
    """
    Give a generator the input size it expects.

    Most generators upscale by the data's scaling_factor and take the LR image as it is. A pixel-unshuffle model
    that upscales less (e.g. an x1 model with an x4 body, as CutBlur needs) takes the LR image enlarged by
    scaling_factor / generator.scaling_factor (its fold) with nearest-neighbour interpolation, which adds no
    information. Any other generator is refused (check_generator_scale).

    :param lr_imgs: (N, 3, h, w) LR images, any range
    :return: (N, 3, h * k, w * k) with k = scaling_factor / generator.scaling_factor
    """
    check_generator_scale(generator, scaling_factor)
    factor = scaling_factor // generator.scaling_factor
    if factor == 1:
        return lr_imgs
    return torch.nn.functional.interpolate(lr_imgs, scale_factor=factor, mode="nearest")


def run_generator(generator, lr_imgs, precision="fp32"):
    """
    One forward pass of a generator on LR images in [0, 1], without gradients: the one place where a generator is
    run for inference (upscale() runs it on each tile).

    The images go into the generator's input format and come back from its output format (utils.convert_image, with
    the generator's `input_format` / `output_format`), so the caller never needs to know which architecture it holds.

    :param lr_imgs: (N, 3, h, w) float tensor in [0, 1], on any device (moved to the generator's device and dtype)
    :param precision: 'fp32', 'bf16' (CPU or CUDA) or 'fp16' (CUDA only), see resolve_precision
    :return: (N, 3, h * s, w * s) in [0, 1], clamped, on the generator's device, with lr_imgs' float dtype
    """
    parameter = next(generator.parameters())
    device = parameter.device
    out_dtype = lr_imgs.dtype if lr_imgs.is_floating_point() else torch.float32
    # channels_last (NHWC) input: PyTorch then runs every convolution of the model in NHWC, which oneDNN (CPU) and
    # cuDNN (GPU) do much faster than NCHW -- 1.5x for the full RRDBNet in fp32 on an AVX-512 CPU. Same numbers.
    x = lr_imgs.to(device=device, dtype=parameter.dtype).contiguous(memory_format=utils.memory_format(True))
    x = utils.convert_image(x, "[0, 1]", generator.input_format)
    with torch.inference_mode(), autocast(device, resolve_precision(precision, device)):
        sr_imgs = generator(x)
    # Back to full precision before rescaling: bf16 / fp16 outputs would lose levels in the arithmetic.
    return utils.convert_image(sr_imgs.to(out_dtype), generator.output_format, "[0, 1]").clamp(0.0, 1.0)


def _round_up(value, multiple):
    return int(math.ceil(value / multiple) * multiple)


def upscale(generator, lr_img, tile=DEFAULT_TILE, tile_pad=DEFAULT_TILE_PAD, precision="fp32", progress=False):
    """
    Super-resolve one image, tile by tile, with any generator of the project (super_resolve.py and eval.py use it).

    Why tiles? A network's activations are many times larger than its input: the full RRDBNet keeps maps of
    64-192 channels at LR size and 64 channels at 2x and 4x size, so a 1024x1024 photo needs ~13 GB at once.
    Cutting the LR image into tile x tile pieces bounds that by the tile size instead of the image size.

    Why do tiles overlap? A convolution near a tile's edge sees the zero padding of the tile instead of the real
    neighbouring pixels, so pasting independently upscaled tiles side by side shows seams. We therefore run each
    tile with `tile_pad` extra LR pixels of real context on each side (clamped at the image border), and keep only
    the upscaled centre. An output pixel depends only on the input pixels within the network's receptive-field
    radius r (a stack of L 3x3 convolutions has r = L). If tile_pad >= r, every kept output pixel sees exactly
    the same inputs as in the untiled run -- and where the padded tile is clamped at the image border, the tile's
    border *is* the image's border, so the zero padding there is also the same. Tiled == untiled then, up to
    floating-point summation order. Real networks have huge theoretical receptive fields, but far pixels matter
    very little, so a small pad already makes the seams invisible (see DEFAULT_TILE_PAD).

    Models that pixel-unshuffle their input by r (x2 / x1 variants) fold r x r blocks of pixels into channels,
    so tile borders and pads are kept on multiples of r; otherwise a tile would be folded differently from the
    whole image.

    The compact network on a CPU, where the image needs more than one tile, runs a strip of rows at a time instead
    (runs_in_rows): faster, and exactly the whole image's numbers; the tile's size and `tile_pad` do not apply then.

    :param generator: a generator with `scaling_factor`, `input_format` and `output_format` attributes, in eval
                      mode; its device (and dtype, e.g. float64 in tests) is where the tiles run
    :param lr_img: (1, C, H, W) float tensor in [0, 1], on any device
    :param tile: LR tile side in pixels; 0 (or >= the image) runs the whole image at once
    :param tile_pad: LR pixels of context added on each side of a tile
    :param precision: 'fp32', 'bf16' (torch.autocast on CPU and CUDA) or 'fp16' (CUDA only)
    :param progress: show a tqdm bar over the tiles (only when there is more than one), or over the rows
    :return: (1, C, H * s, W * s) tensor in [0, 1] on the CPU, with lr_img's float dtype (float32 for integer input)
    """
    if lr_img.dim() != 4 or lr_img.shape[0] != 1:
        raise ValueError(f"upscale() takes one image of shape (1, C, H, W), got {tuple(lr_img.shape)}.")
    if tile < 0 or tile_pad < 0:
        raise ValueError(f"tile and tile_pad must be >= 0 (tile 0 = whole image), got {tile} and {tile_pad}.")
    device = next(generator.parameters()).device
    resolved = resolve_precision(precision, device)  # a bad precision fails before any work
    scale = int(generator.scaling_factor)
    out_dtype = lr_img.dtype if lr_img.is_floating_point() else torch.float32

    # Tile borders on multiples of the model's pixel-unshuffle factor (1 for models without unshuffle).
    multiple = int(getattr(generator, "unshuffle_scale", 1))
    _, _, height, width = lr_img.shape
    if tile == 0 or (tile >= height and tile >= width):
        tile = max(height, width)  # one tile: the whole image
    tile = _round_up(tile, multiple)
    tile_pad = _round_up(tile_pad, multiple)

    tiles = [(top, left) for top in range(0, height, tile) for left in range(0, width, tile)]
    if len(tiles) > 1 and runs_in_rows(generator, device):  # split, but in rows (no context to compute twice)
        return _upscale_in_rows(generator, lr_img, out_dtype, resolved, progress)

    def context_box(top, left):
        """The tile at (top, left) plus its context: tile_pad pixels on each side, clamped at the image border."""
        return (max(top - tile_pad, 0), max(left - tile_pad, 0),
                min(top + tile + tile_pad, height), min(left + tile + tile_pad, width))

    def upscale_tile(top_left):
        """One tile plus its context through the generator."""
        pad_top, pad_left, pad_bottom, pad_right = context_box(*top_left)
        lr_tile = lr_img[:, :, pad_top:pad_bottom, pad_left:pad_right]  # (1, C, h + pads, w + pads), [0, 1]
        return run_generator(generator, lr_tile.to(out_dtype), precision)  # (1, C', s * .., s * ..), [0, 1]

    sr_img = None  # allocated once we know the model's output channels
    with tqdm(total=len(tiles), desc="tiles", unit="tile", leave=False,
              disable=not progress or len(tiles) == 1) as bar:
        # The tiles in order; on a CPU several at once, one thread each (fast_paths.map_tiles: the same numbers).
        for (top, left), sr_tile in zip(tiles, fast_paths.map_tiles(upscale_tile, tiles, device)):
            bottom, right = min(top + tile, height), min(left + tile, width)
            # Keep only the upscaled centre: drop the s * pad pixels that came from the context.
            pad_top, pad_left, _, _ = context_box(top, left)
            y0, x0 = (top - pad_top) * scale, (left - pad_left) * scale
            sr_centre = sr_tile[:, :, y0:y0 + (bottom - top) * scale, x0:x0 + (right - left) * scale]
            if len(tiles) == 1:
                return sr_centre.cpu()  # untiled: the model's output is the result, no second copy
            if sr_img is None:
                # The whole output lives on the CPU: only the current tile occupies the accelerator.
                sr_img = torch.empty((1, sr_tile.shape[1], height * scale, width * scale), dtype=out_dtype)
            sr_img[:, :, top * scale:bottom * scale, left * scale:right * scale] = sr_centre.cpu()
            bar.update(1)
    return sr_img  # (1, C', H * s, W * s), in [0, 1]


def runs_in_rows(generator, device):
    """Whether upscale() runs this generator a strip of rows at a time (fast_paths.convolutions_in_rows) instead of
    in tiles: the compact network (its body a plain stack of 3x3 convolutions; no outscale, whose bicubic resize
    needs rows around each output row) on a CPU, in fp32 or bf16 (benchmarks/bench_rows.py, a 1000x1000 photo: 4 to
    12% faster than the tiles with the same convolutions; in fp32 with Winograd's, 2.3 times as fast held to AVX2).
    GPUs keep the tiles (not measured there), and an image that fits in one tile runs whole, as other networks' do
    (faster than rows for a small image: no threads to coordinate)."""
    return (isinstance(generator, models.SRVGGNetCompact) and generator.outscale is None and device.type == "cpu"
            and fast_paths.can_run_in_rows(generator.body))


def _upscale_in_rows(generator, lr_img, out_dtype, precision="fp32", progress=False):
    """upscale() for runs_in_rows: the body on the whole image through fast_paths.convolutions_in_rows (under
    autocast(precision), as run_generator), each piece of rows it finishes upsampled (the network's own upsample)
    and written into the result at once; with `progress`, a tqdm bar over the LR rows (for an image of more than one
    strip).

    :return: (1, C, H * s, W * s) in [0, 1], on the CPU, in out_dtype
    """
    parameter = next(generator.parameters())
    # (1, C, H, W) in [0, 1] (the compact network's input format), channels_last as in run_generator
    lr_imgs = lr_img.to(device=parameter.device, dtype=parameter.dtype).contiguous(
        memory_format=utils.memory_format(True))
    scale, (_, channels, height, width) = generator.upscale, lr_imgs.shape
    sr_img = torch.empty((1, channels, height * scale, width * scale), dtype=out_dtype)

    def emit(top, features):  # rows top .. top + n - 1 of the body's output: (1, C s^2, n, W)
        bottom = top + features.shape[2]
        sr_rows = generator.upsample(lr_imgs[:, :, top:bottom], features)  # (1, C, n s, W s), about [0, 1]
        sr_img[:, :, top * scale:bottom * scale] = sr_rows.to(out_dtype).clamp(0.0, 1.0)
        bar.update(bottom - top)  # (tqdm's update takes a lock: the threads may call it at once)

    with tqdm(total=height, desc="rows", unit="row", leave=False,
              disable=not progress or height <= fast_paths.WINOGRAD_ROWS) as bar:
        fast_paths.convolutions_in_rows(list(generator.body), lr_imgs, emit,
                                        context=lambda: autocast(parameter.device, precision))
    return sr_img
