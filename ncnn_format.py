"""ncnn's model files, in and out: a model.param / model.bin pair read into this project's networks, and ours written.

ncnn (Tencent's inference engine for phones and desktops, no dependencies, Vulkan on any GPU) is how most people run
Real-ESRGAN: realesrgan-ncnn-vulkan and the apps built on it (Upscayl among them) take a model as two files:

  model.param   the graph, text: the magic number 7767517, then "layer_count blob_count", then one layer a line,
                    Type  name  n_inputs n_outputs  input blobs... output blobs...  key=value ...
                e.g. "Convolution Conv_0 1 1 data 703 0=64 1=3 4=1 5=1 6=1728": 64 outputs (0), a 3 x 3 kernel
                (1), padding 1 (4), a bias (5), 1728 weights (6). A key of -23300 - k holds an array, "n,v1,...,vn".
                A blob read by several layers is first copied by a Split layer, one copy for each.
  model.bin     the weights, the layers' in the order of the .param, nothing else (no names, no shapes):
                  Convolution   a 4-byte tag, then weight_data_size weights, (out, in, kh, kw) as PyTorch's:
                                tag 0x01306B47: fp16 (padded to 4 bytes), tag 0: fp32; then the bias, fp32
                  PReLU         num_slope slopes, fp32          BatchNorm   slope, mean, variance, bias, fp32
                (ncnn's src/modelbin.cpp, ModelBinFromDataReader::load; the layers' load_model in src/layer/.)

  Reading (read_generator)
      parse_param, read_weights      the layers, and each one's tensors (the .bin's size checked against the
                                     graph before anything is read: a truncated file, or another model's, is refused)
      Graph                          the layers as a graph (Splits undone), walked from the input: each
                                     layer must be the one the network has next, or its name is given in the error
      read_rrdbnet, read_compact,    the three networks this project knows: ESRGAN / Real-ESRGAN's RRDBNet (x4, and
      read_srresnet                  its x2 / x1 pixel-unshuffle variants), Real-ESRGAN's SRVGGNetCompact (any scale
                                     and depth, and the official -x2 / -x3 files: the x4 network bicubic-resized),
                                     and SRResNet as write_generator writes it
  Writing (write_generator)          the same layouts, as the official files have them, fp16 or fp32 weights

Two of ncnn's layers come in two channel orders (porting.py's subject): PixelShuffle (0=r, 1=mode) and Reorg, its
inverse (0=stride, 1=mode). Read in ncnn's src/layer/pixelshuffle.cpp and reorg.cpp, mode 0 reads channel
c r^2 + i r + j for sub-pixel (i, j) of channel c, PyTorch's order; mode 1 reads (i r + j) C + c, TensorFlow's
depth_to_space order. A mode-1 graph is read by permuting the neighbouring convolution's channels
(porting.shuffle_channel_permutation); written files use mode 0.
"""
import struct
from collections import OrderedDict
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

import models
import porting
import utils

MAGIC = 7767517  # the first line of every text .param
FP16_TAG = 0x01306B47  # a Convolution's weights follow in fp16
FP32_TAGS = (0, 0x0002C056)  # ... in fp32 (the second: "raw data with extra scaling", the same bytes)
LEAKY_SLOPE = 0.2  # the LeakyReLU of RRDBNet
BLOB_IN, BLOB_OUT = "data", "output"  # the blob names realesrgan-ncnn-vulkan feeds and extracts

# ncnn's layer types this module reads, and how many fp32 values (beyond a Convolution's tagged weights) each
# brings in the .bin, from its parameters (ncnn's load_model of each layer).
FP32_VALUES = {
    "Convolution": lambda p: p.get(0, 0) if p.get(5, 0) else 0,  # the bias
    "PReLU": lambda p: p.get(0, 0),
    "BatchNorm": lambda p: 4 * p.get(0, 0),  # slope, mean, variance, bias
    "Padding": lambda p: p.get(6, 0),  # per-channel padding values (none in our graphs)
}
NO_WEIGHTS = {"Input", "Split", "Concat", "Eltwise", "BinaryOp", "Interp", "PixelShuffle", "Reorg", "Crop", "TanH",
              "ReLU"}
NETWORKS = "RRDBNet (ESRGAN / Real-ESRGAN), SRVGGNetCompact (realesr-animevideov3) or SRResNet"


class Layer(NamedTuple):
    """One line of a .param: its type, name, input and output blob names and its parameters {key: int, float or
    list}."""
    type: str
    name: str
    inputs: list
    outputs: list
    params: dict


def ncnn_paths(path):
    """(model.param, model.bin) for the path of either; anything else (a .pth, ...) gives None."""
    path = Path(path)
    if path.suffix.lower() not in (".param", ".bin"):
        return None
    return path.with_suffix(".param"), path.with_suffix(".bin")


def is_ncnn_model(path):
    """True for a path ending in .param, or in .bin with its .param beside it: an ncnn model, read by read_generator.
    A .bin alone is a PyTorch checkpoint (pytorch_model.bin, as Hugging Face names them)."""
    paths = ncnn_paths(path)
    return paths is not None and (Path(path).suffix.lower() == ".param" or paths[0].is_file())


# ------------------------------------------------------------------------------------------------------
# Reading the two files
# ------------------------------------------------------------------------------------------------------
def _parse_value(text):
    """A .param value: an int, a float (has '.', 'e' or 'E'), a list of them ("n,v1,..." arrays), or a string."""
    if "," in text:
        return [_parse_value(item) for item in text.split(",")]
    if text.startswith('"'):
        return text.strip('"')
    try:
        return float(text) if any(char in text for char in ".eE") else int(text)
    except ValueError:
        return text


def parse_param(path):
    """
    The layers of a text .param file, in its order (ncnn's: every layer after the ones it reads).

    :return: list of Layer; array parameters (key -23300 - k) under key k, as lists without their length
    :raises ValueError: one line, for a file that is not a text .param (a binary .param.bin, another file)
    """
    lines = [line.split() for line in Path(path).read_text(errors="replace").splitlines() if line.strip()]
    if not lines or lines[0] != [str(MAGIC)]:
        raise ValueError(f"{path} is not an ncnn text .param file (its first line is not the magic number {MAGIC}); "
                         f"give the text .param written by ncnn's converters (binary .param.bin files are not read).")
    layers = []
    for number, tokens in enumerate(lines[2:], start=3):
        try:
            layer_type, name, n_inputs, n_outputs = tokens[0], tokens[1], int(tokens[2]), int(tokens[3])
            blobs = tokens[4:4 + n_inputs + n_outputs]
            params = {}
            for item in tokens[4 + n_inputs + n_outputs:]:
                key, value = item.split("=", 1)
                key, value = int(key), _parse_value(value)
                if key <= -23300:  # an array: "n,v1,...,vn"
                    key, value = -key - 23300, (value if isinstance(value, list) else [value])[1:]
                params[key] = value
        except (IndexError, ValueError):
            raise ValueError(f"{path}, line {number}, is not an ncnn layer ('Type name n_inputs n_outputs blobs... "
                             f"key=value...'): {' '.join(tokens)[:80]}") from None
        if len(blobs) != n_inputs + n_outputs:
            raise ValueError(f"{path}, line {number}: layer {name} names fewer blobs than its counts say.")
        layers.append(Layer(layer_type, name, blobs[:n_inputs], blobs[n_inputs:], params))
    return layers


class _Span(NamedTuple):
    """Where a tensor lies in the .bin: byte offset, number of values, numpy dtype."""
    offset: int
    count: int
    dtype: str


def _weight_spans(layers, data, bin_path):
    """Every layer's tensors as spans of the .bin (reading only the Convolutions' 4-byte tags), and the .bin's size
    checked against them: {layer name: [spans]}. Raises ValueError in one line for a layer that is none of ours
    with weights, int8 weights, or a file of the wrong size."""
    spans, offset = {}, 0
    for layer in layers:
        if layer.type not in FP32_VALUES and layer.type not in NO_WEIGHTS:
            raise ValueError(f"layer {layer.name} is a {layer.type}, a layer none of the networks this project reads "
                             f"has ({NETWORKS}).")
        spans[layer.name] = []
        if layer.type == "Convolution":
            count = layer.params.get(6, 0)  # weight_data_size
            if offset + 4 > len(data):
                raise ValueError(f"{bin_path} ends at byte {len(data)}, inside the weights of layer {layer.name}: the "
                                 f"file is truncated, or another model's; use the .bin written with this .param.")
            (tag,) = struct.unpack_from("<I", data, offset)
            if tag == FP16_TAG:
                spans[layer.name].append(_Span(offset + 4, count, "<f2"))
                offset += 4 + (2 * count + 3) // 4 * 4  # fp16 values padded to a multiple of 4 bytes
            elif tag in FP32_TAGS:
                spans[layer.name].append(_Span(offset + 4, count, "<f4"))
                offset += 4 + 4 * count
            else:
                raise ValueError(f"{bin_path}: the weights of layer {layer.name} (byte {offset}) carry the tag "
                                 f"0x{tag:08X}, neither fp16 (0x{FP16_TAG:08X}) nor fp32 (0): int8 / quantised "
                                 f"weights, or another model's .bin; export the model with fp16 or fp32 weights.")
        count = FP32_VALUES.get(layer.type, lambda params: 0)(layer.params)
        if count:
            spans[layer.name].append(_Span(offset, count, "<f4"))
            offset += 4 * count
    if offset != len(data):
        raise ValueError(f"{bin_path} holds {len(data)} bytes, but the layers of its .param need "
                         f"{offset if offset > len(data) else 'exactly ' + str(offset)}: the file is truncated, or "
                         f"another model's; use the .bin written with this .param.")
    return spans


def read_weights(param_path, bin_path=None):
    """
    The layers of an ncnn model and their tensors, once the .bin's size is known to fit the graph.

    :return: (layers, {layer name: [float32 numpy arrays, flat]}: a Convolution's [weights, bias], a PReLU's
             [slopes], a BatchNorm's [slope, mean, variance, bias], and True when the convolutions' weights are
             stored in fp16)
    :raises ValueError: one line, for a .bin of the wrong size (checked before any tensor is read), or missing
    """
    layers = parse_param(param_path)
    bin_path = Path(bin_path) if bin_path is not None else Path(param_path).with_suffix(".bin")
    if not bin_path.is_file():
        raise FileNotFoundError(f"{bin_path}, the weights of {param_path}, is missing: an ncnn model is two files, "
                                f"model.param and model.bin, in one folder.")
    data = bin_path.read_bytes()
    spans = _weight_spans(layers, data, bin_path)
    tensors = {name: [np.frombuffer(data, span.dtype, span.count, span.offset).astype(np.float32)
                      for span in layer_spans] for name, layer_spans in spans.items()}
    fp16 = any(span.dtype == "<f2" for layer_spans in spans.values() for span in layer_spans)
    return layers, tensors, fp16


# ------------------------------------------------------------------------------------------------------
# The graph, walked from its input
# ------------------------------------------------------------------------------------------------------
class Graph:
    """
    An ncnn graph without its Split layers (each copy of a blob is the blob itself), walked from the input by the
    readers below: `take` claims the next layer reading a blob, `conv` also checks a convolution and returns its
    tensors. Whatever does not fit raises ValueError in one line naming the layer; `finish` refuses layers no step
    claimed.
    """

    def __init__(self, layers, tensors, network):
        self.network = network  # the network being read, for the messages
        self.tensors = tensors
        alias = {}
        for layer in layers:
            if layer.type == "Split":
                for output in layer.outputs:
                    alias[output] = alias.get(layer.inputs[0], layer.inputs[0])
        self.layers = [layer._replace(inputs=[alias.get(blob, blob) for blob in layer.inputs])
                       for layer in layers if layer.type != "Split"]
        self.producer = {blob: layer for layer in self.layers for blob in layer.outputs}
        self.claimed = set()
        inputs = [layer for layer in self.layers if layer.type == "Input"]
        if len(inputs) != 1:
            raise ValueError(f"the graph has {len(inputs)} Input layers; an image network has one.")
        self.claimed.add(inputs[0].name)
        self.input = inputs[0].outputs[0]
        # An x1 / x2 network trained on x4 data, as write_generator writes it: the input first nearest-upscaled to
        # the network's input size (inference.MatchedInputGenerator), the one layer reading it.
        self.input_upscale = 1
        readers = self.readers(self.input)
        if len(readers) == 1 and readers[0].type == "Interp" and readers[0].params.get(0) == 1:
            scale = readers[0].params.get(1, 1.0)
            if scale == readers[0].params.get(2, 1.0) and float(scale).is_integer() and scale > 1:
                self.claimed.add(readers[0].name)
                self.input, self.input_upscale = readers[0].outputs[0], int(scale)

    def fail(self, layer, what):
        raise ValueError(f"layer {layer.name} ({layer.type}) {what}, which does not fit {self.network}.")

    def readers(self, blob):
        """The unclaimed layers reading `blob`, in the file's order."""
        return [layer for layer in self.layers if blob in layer.inputs and layer.name not in self.claimed]

    def next_type(self, blob):
        """The type of the first unclaimed layer reading `blob`, or None."""
        readers = self.readers(blob)
        return readers[0].type if readers else None

    def chain(self, blob, length):
        """The types of the layers met following the first unclaimed reader of `blob`, `length` times: a look
        ahead that claims nothing (e.g. ['Convolution', 'BatchNorm', 'PReLU'] in an SRResNet's residual block)."""
        types = []
        for _ in range(length):
            readers = self.readers(blob)
            if not readers:
                break
            types.append(readers[0].type)
            blob = readers[0].outputs[0]
        return types

    def take(self, blob, layer_type, inputs=None):
        """Claim the first unclaimed layer of `layer_type` reading `blob` (and, if given, exactly the blobs
        `inputs`, in that order): the network's next layer."""
        readers = self.readers(blob)
        layer = next((layer for layer in readers if layer.type == layer_type), None)
        if layer is None:
            after = self.producer[blob].name if blob in self.producer else blob
            found = ", ".join(f"{reader.name} ({reader.type})" for reader in readers) or "no layer"
            raise ValueError(f"after layer {after}, {self.network} has a {layer_type} layer; the graph has {found} "
                             f"there.")
        if inputs is not None and layer.inputs != list(inputs):
            self.fail(layer, f"reads {', '.join(self.name_of(blob) for blob in layer.inputs)} where the network reads "
                             f"{', '.join(self.name_of(blob) for blob in inputs)}")
        self.claimed.add(layer.name)
        return layer

    def name_of(self, blob):
        return f"the output of {self.producer[blob].name}" if blob in self.producer else blob

    def conv(self, blob, in_channels, out_channels=None, kernel=None, activation=None):
        """
        Claim the Convolution reading `blob` and check it: `in_channels` in (None: read off its weights), stride 1,
        'same' padding, a bias, the given kernel and output channels (None: any), and after it `activation` (None,
        or 'leakyrelu': fused into the convolution as ncnn's converters write it, or a ReLU layer with slope 0.2).

        :return: (output blob, weight (out, in, k, k) float32 tensor, bias (out,) tensor)
        """
        layer = self.take(blob, "Convolution")
        p = layer.params
        out, k = p.get(0, 0), p.get(1, 0)
        if (out_channels is not None and out != out_channels) or (kernel is not None and k != kernel):
            self.fail(layer, f"has {out} outputs and a {k} x {k} kernel where the network's has "
                             f"{out_channels or out} and {kernel or k} x {kernel or k}")
        if (p.get(11, k), p.get(2, 1), p.get(12, p.get(2, 1)), p.get(3, 1), p.get(13, p.get(3, 1))) != (k, 1, 1, 1, 1):
            self.fail(layer, "is not a square convolution of stride and dilation 1")
        pads = (p.get(4, 0), p.get(15, p.get(4, 0)), p.get(14, p.get(4, 0)), p.get(16, p.get(14, p.get(4, 0))))
        if pads != (k // 2,) * 4 or not p.get(5, 0) or p.get(8, 0) or p.get(19, 0):
            self.fail(layer, f"has padding {pads}{'' if p.get(5, 0) else ', no bias'}, where the network's "
                             f"convolutions pad by {k // 2} on each side and have a bias")
        if in_channels is None and out and k:  # the first convolution: as many as its weights say
            in_channels = p.get(6, 0) // (out * k * k)
        if not in_channels or p.get(6, 0) != out * in_channels * k * k:
            self.fail(layer, f"has {p.get(6, 0)} weights, not the {out} x {in_channels} x {k} x {k} of a convolution "
                             f"of the {in_channels} channels it reads")
        weight, bias = self.tensors[layer.name]
        output = layer.outputs[0]
        fused = p.get(9, 0)
        if activation == "leakyrelu" and not fused:
            relu = self.take(output, "ReLU")
            fused, slopes, output = 2, [relu.params.get(0, 0.0)], relu.outputs[0]
        else:
            slopes = p.get(10, [])
        if fused != (2 if activation == "leakyrelu" else 0) or (fused and not np.isclose(slopes[0], LEAKY_SLOPE)):
            self.fail(layer, f"has the activation {('none', 'relu', 'leakyrelu')[fused] if fused < 3 else fused}"
                             f"{f' (slope {slopes[0]:g})' if fused == 2 else ''} where the network has "
                             f"{'a LeakyReLU (slope 0.2)' if activation else 'none'}")
        return (output, torch.from_numpy(weight.reshape(out, in_channels, k, k).copy()),
                torch.from_numpy(bias.copy()))

    def prelu(self, blob, channels):
        """Claim the PReLU reading `blob`: (output blob, slopes (channels,)), a single slope repeated."""
        layer = self.take(blob, "PReLU")
        (slopes,) = self.tensors[layer.name]
        if len(slopes) not in (1, channels):
            self.fail(layer, f"has {len(slopes)} slopes for {channels} channels")
        return layer.outputs[0], torch.from_numpy(np.resize(slopes, channels).copy())

    def interp(self, blob, resize_type, scale):
        """Claim the Interp reading `blob`: nearest (resize_type 1) or bicubic (3) by `scale` (None: any; returned)."""
        layer = self.take(blob, "Interp")
        p = layer.params
        layer_scale = p.get(1, 1.0)
        if (p.get(0, 0) != resize_type or p.get(2, 1.0) != layer_scale or p.get(3, 0) or p.get(4, 0) or p.get(6, 0)
                or (scale is not None and layer_scale != scale)):
            kinds = {1: "nearest", 2: "bilinear", 3: "bicubic"}
            self.fail(layer, f"resizes by {layer_scale:g} x {p.get(2, 1.0):g} ({kinds.get(p.get(0, 0), 'type ?')}) "
                             f"where the network resizes by {scale or 'a factor'} ({kinds[resize_type]})")
        return layer.outputs[0], layer_scale

    def eltwise_sum(self, blob, other, scale):
        """Claim the Eltwise (or BinaryOp) adding `blob` x `scale` and `other` x 1: the residual scaling of RRDBNet."""
        layer = self.take(blob, self.next_type(blob) if self.next_type(blob) in ("Eltwise", "BinaryOp") else "Eltwise")
        coefficients = dict(zip(layer.inputs, layer.params.get(1, [1.0, 1.0]) if layer.type == "Eltwise" else
                                [1.0, 1.0]))
        is_sum = (layer.params.get(0, 0) == 1) if layer.type == "Eltwise" else (layer.params.get(0, 0) == 0 and
                                                                                 not layer.params.get(1, 0))
        if (not is_sum or set(layer.inputs) != {blob, other} or not np.isclose(coefficients.get(blob), scale)
                or not np.isclose(coefficients.get(other), 1.0)):
            self.fail(layer, f"is not the sum {scale:g} x {self.name_of(blob)} + {self.name_of(other)}")
        return layer.outputs[0]

    def add(self, blob, other):
        """Claim the BinaryOp / Eltwise adding `blob` and `other` (either order)."""
        return self.eltwise_sum(blob, other, 1.0)

    def finish(self, blob):
        """Refuse layers no step claimed, and a network output some layer still reads."""
        rest = [layer for layer in self.layers if layer.name not in self.claimed]
        if rest:
            self.fail(rest[0], f"comes after the end of the network ({self.name_of(blob)})" if blob in rest[0].inputs
                      else "is not part of the network")


def _channel_order(graph, layer):
    """'pytorch' or 'tensorflow' for a PixelShuffle / Reorg layer's mode 0 / 1 (see the notes at the top)."""
    mode = layer.params.get(1, 0)
    if mode not in (0, 1):
        graph.fail(layer, f"has mode {mode} (0 and 1 exist)")
    return ("pytorch", "tensorflow")[mode]


def _unshuffle_front(graph):
    """The pixel-unshuffle in front of an x2 / x1 network, if any: an optional reflect Padding by r - 1 (bottom,
    right) and a Reorg by r. :return: (blob after it, r, its channel order)"""
    blob = graph.input
    padding = graph.take(blob, "Padding") if graph.next_type(blob) == "Padding" else None
    if padding is None and graph.next_type(blob) != "Reorg":
        return blob, 1, "pytorch"
    reorg = graph.take(padding.outputs[0] if padding else blob, "Reorg")
    r = reorg.params.get(0, 1)
    if padding is not None and [padding.params.get(key, 0) for key in (0, 1, 2, 3, 4)] != [0, r - 1, 0, r - 1, 2]:
        graph.fail(padding, f"is not the reflect padding by {r - 1} at the bottom and right that a pixel-unshuffle "
                            f"by {r} needs")
    return reorg.outputs[0], r, _channel_order(graph, reorg)


def _crop_back(graph, blob, r, scale):
    """The Crop of a pixel-unshuffle (by r) network's output back to (s H, s W), s = `scale` (its reference blob: the
    input, nearest-upscaled by s when s > 1), if there is one. :return: the blob after it"""
    if r == 1 or graph.next_type(blob) != "Crop":
        return blob
    crop = graph.take(blob, "Crop")
    if len(crop.inputs) != 2 or crop.inputs[0] != blob or any(key in crop.params for key in (0, 1, 3, 4, 9, 19)):
        graph.fail(crop, "is not the crop of the network's output to the size of a reference blob")
    if crop.inputs[1] != graph.input or scale != 1:  # x2: the input nearest-upscaled by 2 gives the size
        reference, _ = graph.interp(graph.input, 1, float(scale))
        if reference != crop.inputs[1]:
            graph.fail(crop, f"crops to the size of {graph.name_of(crop.inputs[1])}, not of the input upscaled "
                             f"x{scale}")
    return crop.outputs[0]


def _unshuffled_weight(weight, r, order):
    """A first convolution's weight, its input channels put into PyTorch's pixel-unshuffle order."""
    if order == "pytorch" or r == 1:
        return weight
    return weight[:, porting.shuffle_channel_permutation(weight.shape[1] // (r * r), r, order)]


def read_rrdbnet(graph):
    """ESRGAN / Real-ESRGAN's RRDBNet (models.RRDBNet), x4 or its x2 / x1 pixel-unshuffle variant:
    (generator_arch, generator_kwargs, state dict)."""
    blob, r, order = _unshuffle_front(graph)
    state = OrderedDict()
    first = graph.readers(blob)[0] if graph.readers(blob) else None
    trunk, weight, bias = graph.conv(blob, None, kernel=3)
    num_feat = weight.shape[0]
    if weight.shape[1] % (r * r):
        graph.fail(first, f"reads {weight.shape[1]} channels, not a multiple of {r * r}")
    num_ch = weight.shape[1] // (r * r)
    state["conv_first.weight"], state["conv_first.bias"] = _unshuffled_weight(weight, r, order), bias
    feat, num_grow_ch, index = trunk, None, 0
    # RRDBs, as long as the next convolution feeds a Concat (a dense block); then conv_body closes the long skip.
    while graph.chain(feat, 2) == ["Convolution", "Concat"] or graph.chain(feat, 3) == ["Convolution", "ReLU",
                                                                                         "Concat"]:
        block_in = feat
        for k in (1, 2, 3):
            features = [feat]
            for n in (1, 2, 3, 4, 5):
                concat = feat if n == 1 else graph.take(features[-1], "Concat", inputs=features).outputs[0]
                out = num_feat if n == 5 else num_grow_ch
                grown, weight, bias = graph.conv(concat, num_feat + (n - 1) * (num_grow_ch or 0), out, 3,
                                                 None if n == 5 else "leakyrelu")
                num_grow_ch = num_grow_ch or weight.shape[0]
                state[f"body.{index}.rdb{k}.conv{n}.weight"], state[f"body.{index}.rdb{k}.conv{n}.bias"] = weight, bias
                features.append(grown)
            feat = graph.eltwise_sum(features[-1], feat, 0.2)  # x + 0.2 x5
        feat = graph.eltwise_sum(feat, block_in, 0.2)  # the RRDB: x + 0.2 rdb3(...)
        index += 1
    body, state["conv_body.weight"], state["conv_body.bias"] = graph.conv(feat, num_feat, num_feat, 3)
    feat = graph.add(body, trunk)
    for name in ("conv_up1", "conv_up2"):
        feat, _ = graph.interp(feat, 1, 2.0)
        feat, state[f"{name}.weight"], state[f"{name}.bias"] = graph.conv(feat, num_feat, num_feat, 3, "leakyrelu")
    feat, state["conv_hr.weight"], state["conv_hr.bias"] = graph.conv(feat, num_feat, num_feat, 3, "leakyrelu")
    sr, state["conv_last.weight"], state["conv_last.bias"] = graph.conv(feat, num_feat, num_ch, 3)
    graph.finish(_crop_back(graph, sr, r, 4 // r))
    if 4 % r:
        graph.fail(graph.producer[blob], f"unshuffles by {r}; RRDBNet's variants unshuffle by 2 or 4")
    return "rrdb", dict(num_in_ch=num_ch, num_out_ch=num_ch, scale=4 // r, num_feat=num_feat, num_block=index,
                        num_grow_ch=num_grow_ch), state


def read_compact(graph):
    """Real-ESRGAN's SRVGGNetCompact (models.SRVGGNetCompact), any scale and depth, with the bicubic resize of the
    official realesr-animevideov3-x2 / -x3 files: (generator_arch, generator_kwargs, state dict)."""
    state = OrderedDict()
    feat, weight, bias = graph.conv(graph.input, None, kernel=3)
    (num_feat, num_ch), index = weight.shape[:2], 0
    state["body.0.weight"], state["body.0.bias"] = weight, bias
    while True:
        feat, state[f"body.{index + 1}.weight"] = graph.prelu(feat, num_feat)
        index += 2
        conv_out, weight, bias = graph.conv(feat, num_feat, kernel=3)
        state[f"body.{index}.weight"], state[f"body.{index}.bias"] = weight, bias
        feat = conv_out
        if graph.next_type(conv_out) != "PReLU":  # the last convolution: the sub-pixel values
            break
    shuffle = graph.take(feat, "PixelShuffle")
    upscale = shuffle.params.get(0, 1)
    if weight.shape[0] != num_ch * upscale ** 2:
        graph.fail(shuffle, f"shuffles by {upscale} the {weight.shape[0]} channels of the last convolution, not "
                            f"{num_ch} x {upscale}^2")
    permutation = porting.shuffle_channel_permutation(num_ch, upscale, _channel_order(graph, shuffle))
    state[f"body.{index}.weight"], state[f"body.{index}.bias"] = weight[permutation], bias[permutation]
    nearest, _ = graph.interp(graph.input, 1, float(upscale))
    sr = graph.add(shuffle.outputs[0], nearest)
    kwargs = dict(num_in_ch=num_ch, num_out_ch=num_ch, num_feat=num_feat, num_conv=index // 2 - 1, upscale=upscale)
    if graph.next_type(sr) == "Interp":  # realesr-animevideov3-x2 / -x3: the x4 output, bicubic-resized
        resize = graph.readers(sr)[0]
        sr, scale = graph.interp(sr, 3, None)
        outscale = round(scale * upscale)
        if not np.isclose(outscale, scale * upscale) or not 1 <= outscale < upscale:
            graph.fail(resize, f"resizes the x{upscale} output by {scale:g}, to no whole scale below {upscale}")
        kwargs["outscale"] = outscale
    graph.finish(sr)
    return "compact", kwargs, state


def _batch_norm(graph, blob, channels, prefix, state):
    """Claim a BatchNorm reading `blob` (eps that of nn.BatchNorm2d) into `state` under `prefix`: its output blob."""
    layer = graph.take(blob, "BatchNorm")
    if layer.params.get(0, 0) != channels or not np.isclose(layer.params.get(1, 0.0), 1e-5, rtol=1e-3, atol=0):
        graph.fail(layer, f"normalises {layer.params.get(0, 0)} channels with eps {layer.params.get(1, 0.0):g}; the "
                          f"network's: {channels} channels, eps 1e-05")
    (values,) = graph.tensors[layer.name]  # slope, mean, variance, bias: 4 x channels
    slope, mean, var, bias = (torch.from_numpy(part.copy()) for part in np.split(values, 4))
    state.update({f"{prefix}.weight": slope, f"{prefix}.bias": bias, f"{prefix}.running_mean": mean,
                  f"{prefix}.running_var": var, f"{prefix}.num_batches_tracked": torch.tensor(0)})
    return layer.outputs[0]


def _scalar_op(graph, blob, op_type, value):
    """Claim the BinaryOp applying `op_type` (0 add, 2 multiply) with the number `value` to `blob`."""
    layer = graph.take(blob, "BinaryOp")
    if (layer.params.get(0, 0), layer.params.get(1, 0)) != (op_type, 1) or not np.isclose(layer.params.get(2, 0.0),
                                                                                           value):
        graph.fail(layer, f"is not the {('addition of', '', 'multiplication by')[op_type]} {value:g} that turns the "
                          f"tanh's [-1, 1] into [0, 1]")
    return layer.outputs[0]


def read_srresnet(graph):
    """SRResNet (models.SRResNet) as write_generator writes it, x2 / x4 / x8 or a pixel-unshuffle variant:
    (generator_arch, generator_kwargs, state dict)."""
    blob, r, order = _unshuffle_front(graph)
    state = OrderedDict()
    readers = graph.readers(blob)
    large = readers[0].params.get(1, 9) if readers else 9
    feat, weight, bias = graph.conv(blob, 3 * r * r, kernel=large)
    state["conv_block1.conv_block.0.weight"], state["conv_block1.conv_block.0.bias"] = \
        _unshuffled_weight(weight, r, order), bias
    n_channels = weight.shape[0]
    feat, slope = graph.prelu(feat, 1)
    state["conv_block1.conv_block.1.weight"] = slope
    residual, n_blocks = feat, 0
    small = graph.readers(feat)[0].params.get(1, 3) if graph.readers(feat) else 3

    def conv_bn(blob, prefix):  # (N, n_channels, H, W) -> the same, through a convolution and its batch norm
        out, state[f"{prefix}.conv_block.0.weight"], state[f"{prefix}.conv_block.0.bias"] = \
            graph.conv(blob, n_channels, n_channels, small)
        return _batch_norm(graph, out, n_channels, f"{prefix}.conv_block.1", state)

    # Residual blocks, as long as a convolution's batch norm is followed by a PReLU (conv_block2's is not).
    while graph.chain(feat, 3) == ["Convolution", "BatchNorm", "PReLU"]:
        prefix = f"residual_blocks.{n_blocks}"
        out, state[f"{prefix}.conv_block1.conv_block.2.weight"] = graph.prelu(conv_bn(feat, f"{prefix}.conv_block1"), 1)
        feat = graph.add(conv_bn(out, f"{prefix}.conv_block2"), feat)
        n_blocks += 1
    feat = graph.add(conv_bn(feat, "conv_block2"), residual)
    n_subpixel = 0
    while graph.chain(feat, 2) == ["Convolution", "PixelShuffle"]:
        prefix = f"subpixel_convolutional_blocks.{n_subpixel}"
        out, state[f"{prefix}.conv.weight"], state[f"{prefix}.conv.bias"] = \
            graph.conv(feat, n_channels, 4 * n_channels, small)
        shuffle = graph.take(out, "PixelShuffle")
        if shuffle.params.get(0, 1) != 2:
            graph.fail(shuffle, f"shuffles by {shuffle.params.get(0, 1)}; SRResNet's sub-pixel blocks by 2")
        permutation = porting.shuffle_channel_permutation(n_channels, 2, _channel_order(graph, shuffle))
        state[f"{prefix}.conv.weight"] = state[f"{prefix}.conv.weight"][permutation]
        state[f"{prefix}.conv.bias"] = state[f"{prefix}.conv.bias"][permutation]
        feat, state[f"{prefix}.prelu.weight"] = graph.prelu(shuffle.outputs[0], 1)
        n_subpixel += 1
    out, state["conv_block3.conv_block.0.weight"], state["conv_block3.conv_block.0.bias"] = \
        graph.conv(feat, n_channels, 3, large)
    sr = _scalar_op(graph, _scalar_op(graph, graph.take(out, "TanH").outputs[0], 2, 0.5), 0, 0.5)  # [-1, 1] -> [0, 1]
    graph.finish(_crop_back(graph, sr, r, max(1, 2 ** n_subpixel // r)))
    kwargs = dict(large_kernel_size=large, small_kernel_size=small, n_channels=n_channels, n_blocks=n_blocks,
                  scaling_factor=2 ** n_subpixel // r, **({"unshuffle_scale": r} if r > 1 else {}))
    if 2 ** n_subpixel % r:
        graph.fail(graph.producer[blob], f"unshuffles by {r}, more than the x{2 ** n_subpixel} body upscales")
    return "srresnet", kwargs, state


def _network_of(layers):
    """Which network a graph looks like, by the layer types that only one of them has: (name, reader)."""
    types = {layer.type for layer in layers}
    if "Concat" in types:
        return "an RRDBNet (ESRGAN / Real-ESRGAN)", read_rrdbnet
    if "BatchNorm" in types or "TanH" in types:
        return "an SRResNet", read_srresnet
    return "an SRVGGNetCompact (Real-ESRGAN's compact network)", read_compact


def read_generator(path):
    """
    The generator of an ncnn model (model.param, with model.bin beside it): one of the networks of models.py, with
    the file's weights (fp16 ones converted to float32).

    :return: (model in eval mode, a one-line description); the model's generator_arch and generator_kwargs say how
             to build it again, as for any file of inference.load_generator
    :raises ValueError: one line naming the file and the layer or shape that does not fit (another network, int8
                        weights, a .bin of the wrong size); FileNotFoundError for a missing file
    """
    param_path, bin_path = ncnn_paths(path)
    if not param_path.is_file():
        raise FileNotFoundError(f"{param_path} is missing: an ncnn model is two files, model.param and model.bin, in "
                                f"one folder.")
    try:
        layers, tensors, fp16 = read_weights(param_path, bin_path)
        network, reader = _network_of(layers)
        graph = Graph(layers, tensors, network)
        arch, kwargs, state = reader(graph)
    except ValueError as error:
        raise ValueError(f"{param_path}: {error}") from None
    model = models.generator_from_weights(arch, kwargs, state, str(param_path))
    model.data_scaling_factor = model.scaling_factor * graph.input_upscale  # (an x1 model of x4 data: 4)
    names = {"rrdb": "RRDBNet", "compact": "SRVGGNetCompact", "srresnet": "SRResNet"}
    return model.eval(), (f"{names[arch]} x{model.scaling_factor} from the ncnn model {param_path.name} + "
                          f"{bin_path.name} ({'fp16' if fp16 else 'fp32'} weights)")


# ------------------------------------------------------------------------------------------------------
# Writing: our networks as the official files are laid out
# ------------------------------------------------------------------------------------------------------
class _GraphWriter:
    """
    A graph being written: layers in the order they run (each one's output blob named after it), and the .bin's
    bytes in the same order. Layers are named after the PyTorch modules they hold (conv_first, body.0.rdb1.conv1...),
    so a .param reads like the state dict. `text` adds the Split layers ncnn wants for a blob read more than once.
    """

    def __init__(self, fp16):
        self.fp16 = fp16
        self.layers = []  # [type, name, inputs, params]
        self.chunks = []  # the .bin, piece by piece

    def layer(self, layer_type, name, inputs, params=None):
        """Add a layer reading the blobs `inputs`: its output blob (named `name`)."""
        self.layers.append([layer_type, name, list(inputs), params or {}])
        return name

    def fp32(self, tensor):
        self.chunks.append(tensor.detach().float().contiguous().numpy().astype("<f4").tobytes())

    def conv(self, blob, name, conv, activation=None, weight=None, bias=None):
        """A Convolution of nn.Conv2d `conv` (or of the given weight / bias), with LeakyReLU(0.2) fused when
        `activation` is 'leakyrelu', as ncnn's converters write it: its tagged weights, then its fp32 bias."""
        weight = conv.weight if weight is None else weight  # (out, in, k, k): ncnn's order too
        bias = conv.bias if bias is None else bias
        out, _, k, _ = weight.shape
        params = {0: out, 1: k, 4: k // 2, 5: 1, 6: weight.numel()}
        if activation == "leakyrelu":
            params.update({9: 2, 10: [LEAKY_SLOPE]})
        values = weight.detach().float().contiguous().numpy()
        if self.fp16:  # fp16, padded to a multiple of 4 bytes
            data = values.astype("<f2").tobytes()
            self.chunks.append(struct.pack("<I", FP16_TAG) + data + b"\0" * (-len(data) % 4))
        else:
            self.chunks.append(struct.pack("<I", 0) + values.astype("<f4").tobytes())
        self.fp32(bias)
        return self.layer("Convolution", name, [blob], params)

    def prelu(self, blob, name, prelu):
        self.fp32(prelu.weight)
        return self.layer("PReLU", name, [blob], {0: prelu.weight.numel()})

    def batch_norm(self, blob, name, bn):
        """ncnn's BatchNorm: slope (= gamma), mean, variance, bias (= beta), in fp32, and eps."""
        for tensor in (bn.weight, bn.running_mean, bn.running_var, bn.bias):
            self.fp32(tensor)
        return self.layer("BatchNorm", name, [blob], {0: bn.num_features, 1: float(bn.eps)})

    def text(self):
        """The .param: Split layers after every blob read more than once (one copy per reader), the last output
        named 'output'."""
        readers = {}
        for _, _, inputs, _ in self.layers:
            for blob in inputs:
                readers[blob] = readers.get(blob, 0) + 1
        last = self.layers[-1][1]
        rename = {last: BLOB_OUT}
        lines, copies, n_splits = [], {}, 0
        for layer_type, name, inputs, params in self.layers:
            ins = []
            for blob in inputs:
                if readers[blob] > 1:  # the next unused copy
                    ins.append(f"{blob}_splitncnn_{copies[blob]}")
                    copies[blob] += 1
                else:
                    ins.append(rename.get(blob, blob))
            out = rename.get(name, name)
            lines.append((layer_type, name, ins, [out], params))
            if readers.get(name, 0) > 1:
                copies[name] = 0
                lines.append(("Split", f"splitncnn_{n_splits}", [out],
                              [f"{name}_splitncnn_{i}" for i in range(readers[name])], {}))
                n_splits += 1
        blobs = {blob for line in lines for blob in line[3]}
        text = [str(MAGIC), f"{len(lines)} {len(blobs)}"]
        for layer_type, name, ins, outs, params in lines:
            values = " ".join(_format_param(key, value) for key, value in params.items())
            text.append(f"{layer_type:<24} {name:<24} {len(ins)} {len(outs)} {' '.join(ins + outs)} {values}".rstrip())
        return "\n".join(text) + "\n"


def _format_param(key, value):
    """key=value as ncnn's .param spells it: ints plain, floats %e, arrays -23300-key=n,v1,...,vn."""
    if isinstance(value, list):
        return f"{-23300 - key}={len(value)}," + ",".join(f"{v:e}" if isinstance(v, float) else str(v) for v in value)
    return f"{key}={value:e}" if isinstance(value, float) else f"{key}={value}"


def _write_unshuffle(writer, blob, r):
    """The pixel-unshuffle by r of an x2 / x1 network: reflect padding by r - 1 at the bottom and right, then a
    Reorg by r (mode 0, PyTorch's order), which drops the rows and columns beyond a multiple of r: the same input as
    models.pad_to_multiple's, computed from any input size."""
    padded = writer.layer("Padding", "pad_to_multiple", [blob], {0: 0, 1: r - 1, 2: 0, 3: r - 1, 4: 2})
    return writer.layer("Reorg", "pixel_unshuffle", [padded], {0: r, 1: 0})


def _write_crop_back(writer, blob, data, scale):
    """The crop of an x2 / x1 network's output to (s H, s W): the size of the input (x1), or of the input
    nearest-upscaled by s (a cheap reference, no weights)."""
    reference = data if scale == 1 else writer.layer("Interp", "output_size", [data],
                                                     {0: 1, 1: float(scale), 2: float(scale)})
    return writer.layer("Crop", "crop_padding", [blob, reference])


def _write_rrdbnet(writer, model, data):
    blob = _write_unshuffle(writer, data, model.unshuffle_scale) if model.unshuffle_scale > 1 else data
    trunk = feat = writer.conv(blob, "conv_first", model.conv_first)  # (num_feat, H, W)
    for i, block in enumerate(model.body):
        block_in = feat
        for k, rdb in enumerate((block.rdb1, block.rdb2, block.rdb3), start=1):
            features = [feat]  # x, x1, x2, ...: the dense connections
            for n in range(1, 6):
                name = f"body.{i}.rdb{k}"
                concat = feat if n == 1 else writer.layer("Concat", f"{name}.cat{n}", features)
                features.append(writer.conv(concat, f"{name}.conv{n}", getattr(rdb, f"conv{n}"),
                                            "leakyrelu" if n < 5 else None))
            feat = writer.layer("Eltwise", f"{name}.residual", [features[-1], feat], {0: 1, 1: [0.2, 1.0]})
        feat = writer.layer("Eltwise", f"body.{i}.residual", [feat, block_in], {0: 1, 1: [0.2, 1.0]})
    body = writer.conv(feat, "conv_body", model.conv_body)
    feat = writer.layer("BinaryOp", "trunk_skip", [trunk, body], {0: 0})
    for name in ("conv_up1", "conv_up2"):  # nearest x2, convolution, LeakyReLU: (num_feat, 4 H, 4 W)
        feat = writer.layer("Interp", f"{name}.nearest", [feat], {0: 1, 1: 2.0, 2: 2.0})
        feat = writer.conv(feat, name, getattr(model, name), "leakyrelu")
    feat = writer.conv(feat, "conv_hr", model.conv_hr, "leakyrelu")
    sr = writer.conv(feat, "conv_last", model.conv_last)  # (3, 4 H, 4 W) in about [0, 1]
    if model.unshuffle_scale > 1:
        _write_crop_back(writer, sr, data, model.scaling_factor)


def _write_compact(writer, model, data):
    feat = data
    for index, layer in enumerate(model.body):  # conv, PReLU, ..., conv: (3 s^2, H, W)
        feat = writer.conv(feat, f"body.{index}", layer) if isinstance(layer, torch.nn.Conv2d) else \
            writer.prelu(feat, f"body.{index}", layer)
    correction = writer.layer("PixelShuffle", "upsampler", [feat], {0: model.upscale, 1: 0})  # (3, s H, s W)
    nearest = writer.layer("Interp", "nearest", [data], {0: 1, 1: float(model.upscale), 2: float(model.upscale)})
    sr = writer.layer("BinaryOp", "add", [correction, nearest], {0: 0})
    if model.outscale is not None:  # bicubic to x outscale, as the official realesr-animevideov3-x2 / -x3 files
        scale = model.outscale / model.upscale
        writer.layer("Interp", "outscale", [sr], {0: 3, 1: scale, 2: scale})


def _write_srresnet(writer, model, data):
    r = model.unshuffle_scale
    blob = _write_unshuffle(writer, data, r) if r > 1 else data

    def block(blob, name, conv_block):  # ConvolutionalBlock: convolution, [batch norm], [PReLU | tanh]
        for index, layer in enumerate(conv_block.conv_block):
            layer_name = f"{name}.conv_block.{index}"
            if isinstance(layer, torch.nn.Conv2d):
                blob = writer.conv(blob, layer_name, layer)
            elif isinstance(layer, torch.nn.BatchNorm2d):
                blob = writer.batch_norm(blob, layer_name, layer)
            elif isinstance(layer, torch.nn.PReLU):
                blob = writer.prelu(blob, layer_name, layer)
            else:
                blob = writer.layer("TanH", layer_name, [blob])
        return blob

    residual = feat = block(blob, "conv_block1", model.conv_block1)  # (64, H, W)
    for i, residual_block in enumerate(model.residual_blocks):
        out = block(block(feat, f"residual_blocks.{i}.conv_block1", residual_block.conv_block1),
                    f"residual_blocks.{i}.conv_block2", residual_block.conv_block2)
        feat = writer.layer("BinaryOp", f"residual_blocks.{i}.skip", [out, feat], {0: 0})
    feat = writer.layer("BinaryOp", "long_skip", [block(feat, "conv_block2", model.conv_block2), residual], {0: 0})
    for i, subpixel in enumerate(model.subpixel_convolutional_blocks):  # (64, 2 H, 2 W) each
        name = f"subpixel_convolutional_blocks.{i}"
        shuffled = writer.layer("PixelShuffle", f"{name}.pixel_shuffle", [writer.conv(feat, f"{name}.conv",
                                                                                      subpixel.conv)], {0: 2, 1: 0})
        feat = writer.prelu(shuffled, f"{name}.prelu", subpixel.prelu)
    sr = block(feat, "conv_block3", model.conv_block3)  # (3, s H, s W) in [-1, 1]
    # ncnn apps read [0, 1]: (x + 1) / 2, as two BinaryOps with a number.
    sr = writer.layer("BinaryOp", "to_0_1.mul", [sr], {0: 2, 1: 1, 2: 0.5})
    sr = writer.layer("BinaryOp", "to_0_1.add", [sr], {0: 0, 1: 1, 2: 0.5})
    if r > 1:
        _write_crop_back(writer, sr, data, model.scaling_factor)


def write_generator(model, param_path, fp16=True):
    """
    Write a generator of models.py (RRDBNet, SRVGGNetCompact, SRResNet, their pixel-unshuffle variants) as an
    ncnn model, model.param and model.bin beside it (both at once, atomically), laid out as the official
    Real-ESRGAN files: input blob 'data' (3, H, W) RGB in [0, 1], output blob 'output' (3, s H, s W) in about
    [0, 1] (SRResNet's [-1, 1] converted in the graph), so realesrgan-ncnn-vulkan and the apps built on it take it.
    An x1 / x2 network trained on x4 data (its data_scaling_factor) gets the nearest-neighbour upscale of its input
    in the graph, as export.py's ONNX graphs: the file is then an x4 model, given the LR image as any other.

    :param fp16: the convolutions' weights in fp16 (half the file, as the official files); False: fp32. Biases,
                 PReLU slopes and batch-norm statistics are fp32 either way, as ncnn stores them.
    :return: (param path, bin path)
    """
    writer = _GraphWriter(fp16)
    data = writer.layer("Input", BLOB_IN, [])
    model = model.float().eval()
    data_upscale = getattr(model, "data_scaling_factor", model.scaling_factor) // model.scaling_factor
    if data_upscale > 1:  # an x1 / x2 network of x4 data: the LR image nearest-upscaled first, as in training
        data = writer.layer("Interp", "match_data_scale", [data], {0: 1, 1: float(data_upscale),
                                                                    2: float(data_upscale)})
    if isinstance(model, models.RRDBNet):
        _write_rrdbnet(writer, model, data)
    elif isinstance(model, models.SRVGGNetCompact):
        _write_compact(writer, model, data)
    elif isinstance(model, models.SRResNet):
        _write_srresnet(writer, model, data)
    else:
        raise ValueError(f"ncnn files are written for RRDBNet, SRVGGNetCompact and SRResNet, not "
                         f"{type(model).__name__}.")
    param_path = Path(param_path).with_suffix(".param")
    bin_path = param_path.with_suffix(".bin")
    text, chunks = writer.text(), writer.chunks
    utils.atomic_write_all({param_path: lambda file: file.write(text.encode()),
                            bin_path: lambda file: [file.write(chunk) for chunk in chunks]})
    return param_path, bin_path
