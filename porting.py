"""Reading networks trained elsewhere: other frameworks' pixel-shuffle orders, and the official weight files.

  Pixel shuffle in PyTorch / TensorFlow / Caffe order     the same idea, three channel orders, and the permutation
                                                          that ports sub-pixel weights from one to another
  generator_from_official_state_dict                      the official ESRGAN / Real-ESRGAN / BasicSR files
                                                          (RRDBNet and SRVGGNetCompact), architecture read from the
                                                          tensors

The networks themselves are in models.py; inference.load_generator calls this module for files it does not know.
"""
import math
import re
from collections import OrderedDict

import torch

import models

# ------------------------------------------------------------------------------------------------------
# Pixel shuffle across frameworks: the same idea, three channel orders.
#
# A sub-pixel layer turns C * r * r low-resolution channels into C channels r times larger on each side. Output
# pixel (h * r + i, w * r + j) of output channel c (0 <= i, j < r are its position inside the r x r block)
# is read from input pixel (h, w) of ONE input channel -- but frameworks disagree on WHICH one:
#
#   PyTorch (nn.PixelShuffle), "CRD" order:      k = c * r * r + i * r + j      (the channel index varies slowest)
#   TensorFlow (tf.nn.depth_to_space), "DCR":    k = (i * r + j) * C + c        (the sub-pixel position slowest)
#   Caffe, as in the RealSR "Dtow" layer:        k = c * r * r + i * r + j      (same as PyTorch)
#
# The Caffe entry: Caffe itself has no pixel-shuffle layer; super-resolution code written in Caffe ships its own.
# We checked two: the "Dtow" layer of RealSR (Cai et al., ICCV 2019, github.com/csjcai/RealSR,
# Layer/Shuffle/dtow_layer.cpp: output channel tc / r^2, row th * r + (tc % r^2) / r, column
# tw * r + (tc % r^2) % r) and the pixel-shuffler added to the Reshape layer of ShenghaiRong/caffe_srgan
# (src/layers/reshape_layer.cpp); both use exactly PyTorch's order (both frameworks store NCHW blobs row-major,
# and both authors unrolled the same "channel-major" formula). So Caffe weights need no permutation; TensorFlow /
# Keras weights (and ONNX DepthToSpace in its default 'DCR' mode, ncnn's PixelShuffle mode 1) do.
# (Departure: an article on pixel shuffle calls Caffe's (RealSR's) order column-major; RealSR's code, quoted above,
# is row-major within each r x r block, i = (tc % r^2) / r its row, so we follow the code.)
# ------------------------------------------------------------------------------------------------------

SUBPIXEL_ORDERS = ("pytorch", "tensorflow", "caffe")


def subpixel_source_channel(order, c, i, j, n_channels, r):
    """Which of the n_channels * r * r input channels feeds sub-pixel (i, j) of output channel c, in `order`."""
    if order in ("pytorch", "caffe"):
        return (c * r + i) * r + j  # = c r^2 + i r + j
    if order == "tensorflow":
        return (i * r + j) * n_channels + c
    raise ValueError(f"unknown sub-pixel order {order!r}; choose one of {SUBPIXEL_ORDERS}")


def pixel_shuffle_pytorch(x, r):
    """PyTorch's pixel shuffle written out: (N, C r^2, H, W) -> (N, C, H r, W r), same as F.pixel_shuffle.

    out[n, c, h*r + i, w*r + j] = x[n, c*r*r + i*r + j, h, w]
    """
    n, channels, height, width = x.shape
    c = channels // (r * r)
    x = x.reshape(n, c, r, r, height, width)  # split the channel index k into (c, i, j): k = (c*r + i)*r + j
    x = x.permute(0, 1, 4, 2, 5, 3)  # (n, c, h, i, w, j): row index h*r + i, column index w*r + j
    return x.reshape(n, c, height * r, width * r)


def pixel_unshuffle_pytorch(x, r):
    """Inverse of pixel_shuffle_pytorch: (N, C, H r, W r) -> (N, C r^2, H, W), same as F.pixel_unshuffle."""
    n, c, big_height, big_width = x.shape
    height, width = big_height // r, big_width // r
    x = x.reshape(n, c, height, r, width, r)  # (n, c, h, i, w, j)
    x = x.permute(0, 1, 3, 5, 2, 4)  # (n, c, i, j, h, w): channel index (c*r + i)*r + j
    return x.reshape(n, c * r * r, height, width)


def depth_to_space_tf(x, r):
    """TensorFlow's depth_to_space on an NHWC tensor: (N, H, W, C r^2) -> (N, H r, W r, C).

    out[n, h*r + i, w*r + j, c] = x[n, h, w, (i*r + j)*C + c]
    """
    n, height, width, channels = x.shape
    c = channels // (r * r)
    x = x.reshape(n, height, width, r, r, c)  # split the depth index into (i, j, c): (i*r + j)*C + c
    x = x.permute(0, 1, 3, 2, 4, 5)  # (n, h, i, w, j, c)
    return x.reshape(n, height * r, width * r, c)


def space_to_depth_tf(x, r):
    """Inverse of depth_to_space_tf (TensorFlow's space_to_depth): (N, H r, W r, C) -> (N, H, W, C r^2)."""
    n, big_height, big_width, c = x.shape
    height, width = big_height // r, big_width // r
    x = x.reshape(n, height, r, width, r, c)  # (n, h, i, w, j, c)
    x = x.permute(0, 1, 3, 2, 4, 5)  # (n, h, w, i, j, c): depth index (i*r + j)*C + c
    return x.reshape(n, height, width, c * r * r)


def pixel_shuffle_caffe(x, r):
    """The Caffe (RealSR 'Dtow' layer) pixel shuffle, NCHW: its order is PyTorch's (see the notes above)."""
    return pixel_shuffle_pytorch(x, r)


def pixel_unshuffle_caffe(x, r):
    """The Caffe (RealSR 'Dtow', method MWTOD) space-to-depth, NCHW: PyTorch's order (see the notes above)."""
    return pixel_unshuffle_pytorch(x, r)


def shuffle_channel_permutation(n_channels, r, source_order="tensorflow"):
    """Permutation that ports a sub-pixel convolution from `source_order` to nn.PixelShuffle.

    A convolution trained in front of TensorFlow's depth_to_space writes sub-pixel (i, j) of colour/feature c
    into channel (i*r + j)*C + c; nn.PixelShuffle reads it from channel c*r*r + i*r + j. Re-ordering the
    convolution's output channels (its weight's dim 0 and its bias) fixes that without touching anything else:

        perm = shuffle_channel_permutation(C, r, 'tensorflow')
        conv.weight.data = tf_weight[perm]        # tf_weight already converted HWIO -> OIHW: .permute(3, 2, 0, 1)
        conv.bias.data = tf_bias[perm]
        # now nn.PixelShuffle(r)(conv(x)) == depth_to_space(tf_conv(x)) (up to the NCHW/NHWC layout)

    Args:
        n_channels: C, the channels AFTER the shuffle.  r: the upscaling factor.
        source_order: 'tensorflow', 'caffe' or 'pytorch' (the last two give the identity).
    Returns:
        LongTensor of length C * r * r: perm[pytorch_channel] = source_channel.
    """
    perm = [subpixel_source_channel(source_order, c, i, j, n_channels, r)
            for c in range(n_channels) for i in range(r) for j in range(r)]  # enumerated in PyTorch's order
    return torch.tensor(perm, dtype=torch.long)


# ------------------------------------------------------------------------------------------------------
# Loading the official ESRGAN / Real-ESRGAN / BasicSR generator files.
#
# The same RRDBNet has been published under three sets of parameter names:
#   'basicsr'    BasicSR / Real-ESRGAN (our names): conv_first, body.{i}.rdb{k}.conv{n}, conv_body, conv_up1,
#                conv_up2, conv_hr, conv_last. Files are usually {'params_ema': ..., 'params': ...}; params_ema is
#                the exponential moving average of the weights, smoother and what the authors evaluate with.
#   'esrgan'     xinntao/ESRGAN's RRDBNet_arch.py: conv_first, RRDB_trunk.{i}.RDB{k}.conv{n}, trunk_conv, upconv1,
#                upconv2, HRconv, conv_last (BSRGAN's and jixiaozhong/RealSR's files use it too, according to the
#                model detection of the chaiNNer upscaler).
#   'esrgan-old' the original ESRGAN release (RRDB_ESRGAN_x4_old_arch.pth), a flattened nn.Sequential:
#                model.0 = conv_first, model.1.sub.{i}.RDB{k}.conv{n}.0 = the RRDB convolutions (".0" because each
#                conv sat in a Sequential with its LeakyReLU), model.1.sub.{num_block} = the trunk convolution,
#                model.3 / model.6 = the two upsampling convolutions (after an Upsample at model.2 / model.5, each
#                followed by a LeakyReLU), model.8 = HR conv, model.10 = last conv. (Mapping checked against
#                xinntao/ESRGAN's transer_RRDB_models.py, which converts between the two ESRGAN layouts.)
# Real-ESRGAN's compact network has one layout, ours (Part D):
#   'compact'    body.{N}.weight / body.{N}.bias (N even: the convolutions) and body.{N}.weight (N odd: the PReLU
#                slopes), in {'params': ...} or {'params_ema': ...} (realesr-general-x4v3.pth,
#                realesr-general-wdn-x4v3.pth, realesr-animevideov3.pth).
# ------------------------------------------------------------------------------------------------------

_SUPPORTED_FILES = (
    "supported files: Real-ESRGAN / BasicSR RRDBNet weights (e.g. RealESRGAN_x4plus.pth, RealESRGAN_x2plus.pth; "
    "a dict with 'params_ema' or 'params', or a bare state dict), Real-ESRGAN's compact SRVGGNetCompact weights "
    "(realesr-general-x4v3.pth, realesr-animevideov3.pth), xinntao/ESRGAN weights (RRDB_ESRGAN_x4.pth, "
    "RRDB_PSNR_x4.pth) and old-architecture ESRGAN weights (RRDB_ESRGAN_x4_old_arch.pth)")

# Renaming rules, (regular expression, replacement), applied to each key of a file in that layout.
_RENAME_RULES = {
    "esrgan": [
        (r"^RRDB_trunk\.(\d+)\.RDB([123])\.conv([1-5])\.", r"body.\1.rdb\2.conv\3."),
        (r"^trunk_conv\.", "conv_body."),
        (r"^upconv1\.", "conv_up1."),
        (r"^upconv2\.", "conv_up2."),
        (r"^HRconv\.", "conv_hr."),
    ],
    "esrgan-old": [
        (r"^model\.0\.", "conv_first."),
        (r"^model\.1\.sub\.(\d+)\.RDB([123])\.conv([1-5])\.0\.", r"body.\1.rdb\2.conv\3."),
        # model.1.sub.{num_block}. -> conv_body. is done in code: it needs num_block.
        (r"^model\.3\.", "conv_up1."),
        (r"^model\.6\.", "conv_up2."),
        (r"^model\.8\.", "conv_hr."),
        (r"^model\.10\.", "conv_last."),
    ],
}


def _unwrap_official(checkpoint):
    """(state_dict, which) from a BasicSR-style {'params_ema', 'params'} file or a bare state dict."""
    for wrapper_key in ("params_ema", "params"):  # params_ema first: the averaged weights the authors publish
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(wrapper_key), dict):
            return checkpoint[wrapper_key], wrapper_key
    return checkpoint, None


def official_layout(checkpoint):
    """'basicsr', 'esrgan', 'esrgan-old' (RRDBNet), 'compact' (SRVGGNetCompact), or None when `checkpoint` is none of
    the official layouts.

    Accepts what torch.load returned for an official file (a bare state dict or {'params_ema': ...}). Cheap: looks
    at key names only. inference.load_generator uses this to tell official files from our own checkpoints.
    """
    state_dict, _ = _unwrap_official(checkpoint)
    if not isinstance(state_dict, dict):
        return None
    keys = [key[len("module."):] if key.startswith("module.") else key for key in state_dict if isinstance(key, str)]
    if "conv_first.weight" in keys and any(key.startswith("body.0.rdb1.") for key in keys):
        return "basicsr"
    if "conv_first.weight" in keys and any(key.startswith("RRDB_trunk.0.RDB1.") for key in keys):
        return "esrgan"
    if "model.0.weight" in keys and any(key.startswith("model.1.sub.0.RDB1.") for key in keys):
        return "esrgan-old"
    if {"body.0.weight", "body.1.weight", "body.2.weight"} <= set(keys) and "conv_first.weight" not in keys:
        return "compact"  # a convolution, its PReLU, the next convolution
    return None


def is_official_generator_state_dict(checkpoint):
    """True when `checkpoint` (a loaded file) is an ESRGAN / Real-ESRGAN / BasicSR RRDBNet or a Real-ESRGAN
    SRVGGNetCompact state dict."""
    return official_layout(checkpoint) is not None


def _rename_official(state_dict, layout):
    """Our RRDBNet key names for every tensor of an official state dict."""
    state_dict = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state_dict.items()}
    if layout == "esrgan-old":
        # The trunk convolution is the last entry of model.1.sub, after the num_block RRDBs.
        block_indices = {int(m.group(1)) for m in (re.match(r"^model\.1\.sub\.(\d+)\.RDB", k) for k in state_dict)
                         if m}
        trunk_prefix = f"model.1.sub.{max(block_indices) + 1}."
        state_dict = {("conv_body." + k[len(trunk_prefix):] if k.startswith(trunk_prefix) else k): v
                      for k, v in state_dict.items()}
    renamed = OrderedDict()
    for key, value in state_dict.items():
        for pattern, replacement in _RENAME_RULES.get(layout, []):
            new_key, n_subs = re.subn(pattern, replacement, key)
            if n_subs:
                key = new_key
                break
        renamed[key] = value
    return renamed


def short_list(keys, limit=5):
    """Up to `limit` of `keys`, sorted, for a message: 'a, b, c ... (+7 more)', or 'none'."""
    keys = sorted(keys)
    more = f" ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more if keys else "none"


def _rrdbnet_architecture(state_dict, layout):
    """RRDBNet's constructor arguments, read off the shapes of an official state dict (renamed to our keys)."""
    try:
        conv_first = state_dict["conv_first.weight"]  # (num_feat, num_in_ch * unshuffle^2, 3, 3)
        num_feat, first_in_channels = conv_first.shape[:2]
        num_out_ch = state_dict["conv_last.weight"].shape[0]  # (num_out_ch, num_feat, 3, 3)
        num_grow_ch = state_dict["body.0.rdb1.conv1.weight"].shape[0]  # (num_grow_ch, num_feat, 3, 3)
    except KeyError as error:
        raise ValueError(f"incomplete RRDBNet state dict: no {error.args[0]!r} after renaming the {layout!r} "
                         f"layout to ours; {_SUPPORTED_FILES}") from None
    num_block = len({key.split(".")[1] for key in state_dict if key.startswith("body.")})
    # Real-ESRGAN's x2 / x1 models pixel-unshuffle the input by 2 / 4, multiplying conv_first's in-channels by
    # 4 / 16 (3 -> x4, 12 -> x2, 48 -> x1 for RGB). We assume as many input as output channels.
    scales = {1: 4, 4: 2, 16: 1}
    ratio, remainder = divmod(first_in_channels, num_out_ch)
    if remainder or ratio not in scales:
        raise ValueError(f"conv_first has {first_in_channels} input channels for {num_out_ch} output channels: "
                         f"expected {num_out_ch} (x4), {4 * num_out_ch} (x2) or {16 * num_out_ch} (x1)")
    return dict(num_in_ch=num_out_ch, num_out_ch=num_out_ch, scale=scales[ratio], num_feat=num_feat,
                num_block=num_block, num_grow_ch=num_grow_ch)


def _compact_architecture(state_dict):
    """SRVGGNetCompact's constructor arguments, read off the shapes of a Real-ESRGAN compact state dict."""
    # The convolutions are the 4-D weights body.0, body.2, ..., body.2(num_conv + 1); the PReLUs sit between them.
    conv_indices = sorted(int(key.split(".")[1]) for key, value in state_dict.items()
                          if re.fullmatch(r"body\.\d+\.weight", key) and value.dim() == 4)
    if len(conv_indices) < 2 or conv_indices != list(range(0, 2 * len(conv_indices), 2)):
        raise ValueError(f"not a Real-ESRGAN SRVGGNetCompact state dict: its convolutions are body.{conv_indices}, "
                         f"expected body.0, body.2, body.4, ... with a PReLU between each two; {_SUPPORTED_FILES}")
    num_feat, num_in_ch = state_dict["body.0.weight"].shape[:2]  # (num_feat, num_in_ch, 3, 3)
    last_out_channels = state_dict[f"body.{conv_indices[-1]}.weight"].shape[0]  # num_out_ch * upscale^2
    # The output channels are the input's (the input is added to the output): the rest of the ratio is the scale^2.
    upscale = math.isqrt(last_out_channels // num_in_ch)
    if upscale < 1 or upscale ** 2 * num_in_ch != last_out_channels:
        raise ValueError(f"the last convolution of this SRVGGNetCompact has {last_out_channels} output channels, "
                         f"which is not {num_in_ch} (the image channels) times a square scale^2")
    return dict(num_in_ch=num_in_ch, num_out_ch=num_in_ch, num_feat=num_feat, num_conv=len(conv_indices) - 2,
                upscale=upscale)


def generator_from_official_state_dict(checkpoint):
    """Build the generator of an official ESRGAN / Real-ESRGAN / BasicSR weight file and load it strictly.

    Args:
        checkpoint: what torch.load(path, map_location='cpu', weights_only=True) returned for the file.
    Returns:
        (model, description): an RRDBNet with `scaling_factor` 4, 2 or 1, or an SRVGGNetCompact (both input/output
        '[0, 1]'), in eval mode, and one line saying what was recognised, e.g. "Real-ESRGAN/BasicSR RRDBNet x4 (23
        blocks, 64 features, growth 32, 3->3 channels; params_ema)". The architecture (blocks or convolutions,
        features, scale, channels) is read off the tensors' shapes.
    Raises:
        ValueError naming the missing and unexpected keys (first few of each) and the supported files, when the
        file is not (exactly) one of these layouts.
    """
    layout = official_layout(checkpoint)
    if layout is None:
        sample = list(checkpoint)[:5] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ValueError(f"not an ESRGAN / Real-ESRGAN / BasicSR generator state dict (first keys: {sample}); "
                         f"{_SUPPORTED_FILES}")
    state_dict, wrapper_key = _unwrap_official(checkpoint)
    state_dict = _rename_official(state_dict, layout)
    if layout == "compact":
        network, kwargs = models.SRVGGNetCompact, _compact_architecture(state_dict)
    else:
        network, kwargs = models.RRDBNet, _rrdbnet_architecture(state_dict, layout)
    # First on the 'meta' device (shapes, no memory): a crafted first tensor could claim a huge network.
    arch = "compact" if layout == "compact" else "rrdb"
    with torch.device("meta"):
        skeleton = models.build_generator(arch, **kwargs)

    # Strict loading, with an error that says what differs instead of PyTorch's wall of text.
    name = network.__name__
    expected_keys = set(skeleton.state_dict())
    missing, unexpected = expected_keys - set(state_dict), set(state_dict) - expected_keys
    if missing or unexpected:
        raise ValueError(f"the weights do not fit an {name}{kwargs} (read as layout {layout!r}): "
                         f"missing keys: {short_list(missing)}; unexpected keys: {short_list(unexpected)}. "
                         f"{_SUPPORTED_FILES}")
    # Shapes, and weights that cannot be right (integer, NaN or infinite), by the names of our network.
    models.check_weights(skeleton.state_dict(), state_dict, f"the {wrapper_key or 'state dict'} of an {name}")
    model = models.build_generator(arch, **kwargs)  # keeps its arch and kwargs
    model.load_state_dict(state_dict, strict=True)
    model.eval()

    weights_note = f"; {wrapper_key}" if wrapper_key else ""
    channels = f"{kwargs['num_out_ch']}->{kwargs['num_out_ch']} channels{weights_note}"
    if layout == "compact":
        return model, (f"Real-ESRGAN SRVGGNetCompact x{kwargs['upscale']} ({kwargs['num_conv']} convolutions, "
                       f"{kwargs['num_feat']} features, {channels})")
    names = {"basicsr": "Real-ESRGAN/BasicSR", "esrgan": "ESRGAN", "esrgan-old": "ESRGAN (old architecture)"}
    return model, (f"{names[layout]} RRDBNet x{kwargs['scale']} ({kwargs['num_block']} blocks, {kwargs['num_feat']} "
                   f"features, growth {kwargs['num_grow_ch']}, {channels})")
