"""Speed paths for particular hardware: the same functions as the networks of models.py, computed faster.

The networks in models.py are the papers' figures on every device. Where a CPU runs one of their steps badly, the
network (or inference.upscale, for its tiles and rows) calls into this file, which computes the same function
another way (tests/test_fast_paths.py checks that they match: bit for bit, up to the order of float sums, or, for
Winograd's convolutions, within fp32 rounding):

  PReLU                          nn.PReLU with one shared slope, whose backward on a CPU runs through LeakyReLU's
                                 kernels (SRResNet's 19 PReLUs)
  fold_convolution_weight        a convolution's weights for the pixel-unshuffled (folded) image
  can_fold_output,               SRResNet's last sub-pixel block and 9x9 convolution, with that convolution run one
  folded_upsample_and_output     pixel shuffle earlier, on the folded grid (a CPU's convolutions use 3 output
                                 channels badly)
  map_tiles                      the tiles of an upscaling on a CPU side by side, one thread each, instead of one
                                 after the other on all threads
  convolutions_in_rows           a plain stack of 3x3 convolutions (the compact network's body) run a strip of rows
                                 at a time, each row once, instead of in tiles that recompute their context; in fp32
                                 its convolutions by Winograd's algorithm (NNPACK), with fewer multiplications
"""
import contextlib
import functools
import threading
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F
from torch import nn


class PReLU(nn.PReLU):
    """nn.PReLU (the same learned negative slope a, the same state-dict key `weight`): x for x > 0, a x below.

    One case runs another way: training on a CPU with one shared slope (SRResNet's 19 PReLUs). PyTorch's PReLU
    backward is slow there (it took 17% of SRResNet's bf16 training step on an AVX-512 CPU, one thread, and 7 to 10%
    of its fp32 step on a CPU held to AVX2), so _SharedSlopePReLU computes the same thing with LeakyReLU's kernels,
    which run the slope as a number: the same outputs and input gradients bit for bit, and the slope's gradient,
    sum(grad * min(x, 0)), summed in fp32 (in another order than PReLU's kernel). Measured forward and backward of a
    (16, 64, 24, 24) bf16 tensor: 1.3 ms instead of 4.9 ms; (16, 256, 48, 48): 30 ms instead of 70 ms; in fp32 held
    to AVX2, 0.34 ms instead of 1.97 ms and 64 ms instead of 67 ms: the whole SRResNet step about 3% faster
    (docs/benchmarks.md). Everywhere else (no gradients, GPUs, a slope per channel, float64) the kernel is used as
    it is.
    """

    def forward(self, x):
        recording = torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)
        if (recording and self.num_parameters == 1 and x.device.type == "cpu"
                and x.dtype in (torch.float32, torch.bfloat16, torch.float16)):
            return _SharedSlopePReLU.apply(x, self.weight)
        return super().forward(x)


class _SharedSlopePReLU(torch.autograd.Function):
    """PReLU with one slope, through LeakyReLU's forward and backward kernels (see PReLU)."""

    @staticmethod
    def forward(ctx, x, weight):
        slope = weight.to(x.dtype).item()  # the slope as PReLU's kernel uses it: rounded to x's dtype
        ctx.save_for_backward(x)
        ctx.slope = slope
        return F.leaky_relu(x, slope)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        grad_x = torch.ops.aten.leaky_relu_backward(grad, x, ctx.slope, False)  # grad, or slope * grad where x <= 0
        grad_weight = (grad * x.clamp(max=0)).sum(dtype=torch.float32).view(1)  # d(a x)/da = x where x <= 0
        return grad_x, grad_weight



def fold_convolution_weight(weight, r):
    """
    The weights that run a convolution on the pixel-unshuffled (folded) image instead: the same outputs, folded too.

    A k x k convolution (k odd, 'same' padding) on an image of size (r H, r W) gives exactly the same numbers as a
    K x K convolution (K = 2 ceil((k // 2) / r) + 1) of the image pixel-unshuffled by r (C r^2 channels of size
    (H, W)) with these weights, followed by a pixel shuffle by r. Output sub-pixel (a, a') of a folded pixel reads
    input sub-pixel (b, b') of the folded pixel D rows and D' columns away, i.e. the original pixel r D + b - a rows
    (r D' + b' - a' columns) away: that tap of the k x k kernel, or 0 where it falls outside. Padding is the same
    zeros, at the folded image's border.

    Why SRResNet uses it: its last convolution (9 x 9, 64 -> 3 channels, at HR size) gives just 3 output channels,
    which a CPU's convolution kernels use badly (they vectorise over output channels): it took three quarters of the
    time of the 33 convolutions of the body together, for a fifth of their multiply-adds. Folded by 2 it has 256
    inputs and 12 outputs at a quarter of the pixels (23% more multiply-adds, the zero taps): measured on an AVX-512
    CPU, one thread, a training step of that convolution (bf16, batch 16, 96 x 96) took 101 ms instead of 269 ms, and
    on a 512 x 512 image (fp32) 124 ms instead of 398 ms. Its input is the last sub-pixel block's output before its
    pixel shuffle, so that shuffle and the unshuffle cancel and neither is run.

    :param weight: (C_out, C_in, k, k), k odd
    :return: (folded weight (C_out r^2, C_in r^2, K, K), its padding K // 2); channels in PyTorch's pixel-shuffle
             order (channel c r^2 + i r + j is sub-pixel (i, j) of channel c), so F.pixel_shuffle unfolds the output
    """
    k = weight.shape[-1]
    half = -(-(k // 2) // r)  # K // 2, the folded kernel's reach, in folded pixels
    size = 2 * half + 1  # K
    # Tap t of the folded kernel for output sub-pixel a and input sub-pixel b is the original tap r (t - half) + b - a
    # (offset from the centre): padded by `pad` zeros on each side (and r more at the end, never read as non-zero),
    # that is index r t + (b - a + r - 1) of the padded kernel, a strided slice for each (a, b).
    pad = r * half + r - 1 - k // 2
    padded = F.pad(weight, (pad, pad + r, pad, pad + r))
    def taps(a, b, a2, b2):  # the (K, K) kernels for output sub-pixel (a, a2), input sub-pixel (b, b2)
        return padded[:, :, b - a + r - 1::r, b2 - a2 + r - 1::r][:, :, :size, :size]
    # (C_out, r, r, C_in, r, r, K, K): output channel c_out r^2 + a r + a2, input channel c_in r^2 + b r + b2.
    folded = torch.stack([torch.stack([torch.stack([torch.stack([taps(a, b, a2, b2) for b2 in range(r)], 2)
                                                    for b in range(r)], 2) for a2 in range(r)], 1)
                          for a in range(r)], 1)
    c_out, c_in = weight.shape[:2]
    return folded.reshape(c_out * r * r, c_in * r * r, size, size), half


def can_fold_output(conv_block3, features):
    """Whether folded_upsample_and_output runs for this last block and these features: on a CPU, with an odd kernel
    (on a GPU the folding was not measured, so the plain way runs there)."""
    last_conv = conv_block3.conv_block[0]
    return last_conv.kernel_size[0] % 2 == 1 and features.device.type == "cpu"


def folded_upsample_and_output(subpixel_blocks, conv_block3, features):
    """
    conv_block3(subpixel_blocks(features)) -- SRResNet's sub-pixel blocks, then its last convolution and tanh --
    with that convolution run on the folded grid of the last block (fold_convolution_weight says why it is faster):
    (N, 64, H, W) -> (N, 3, s H, s W) in [-1, 1], the same function and weights.
    """
    last_conv, tanh = conv_block3.conv_block
    *first_blocks, last_block = subpixel_blocks
    for block in first_blocks:  # (x4: the first x2 block)
        features = block(features)  # (N, 64, s H / 2, s W / 2)
    # The last block's convolution and PReLU, without its pixel shuffle: (N, 64 * 4, s H / 2, s W / 2), the 4
    # sub-pixel positions of each pixel as channels. (PReLU's one slope treats every channel alike, so it may come
    # before the shuffle.)
    folded = last_block.prelu(last_block.conv(features))
    # conv_block3's 9x9 convolution on that folded grid: a 5x5 convolution 256 -> 3 * 4, then the shuffle.
    weight, padding = fold_convolution_weight(last_conv.weight, 2)
    sr_imgs = F.pixel_shuffle(F.conv2d(folded, weight, last_conv.bias.repeat_interleave(4), padding=padding), 2)
    return tanh(sr_imgs)


def map_tiles(function, tiles, device):
    """
    function(tile) for each of `tiles`, in order (an iterator): what inference.upscale does with its tiles. On a
    CPU with several threads, as many tiles as PyTorch has threads run side by side, each on one thread, instead of
    one tile after the other on all of them.

    Why: PyTorch splits every layer of one tile across its threads, which then wait for each other at the end of
    the layer, and share the tile's activations through the caches. Side by side, each thread runs whole layers of
    its own tile. Measured on a 2-core AMD EPYC, the 16 tiles of a 1000x1000 photo through the shipped compact
    model (which on a CPU now runs in rows instead, convolutions_in_rows): 7.5 s instead of 8.1 s in fp32 held to
    AVX2, 2.28 s instead of 2.40 s in bf16 (docs/benchmarks.md).
    Each tile gives the same numbers up to float rounding (one thread may sum in another order). Elsewhere (a GPU,
    one thread, one tile) the tiles simply run in turn.

    :param function: tile -> result, e.g. a tile's box -> its SR image
    :param tiles: a list of tiles
    :param device: where the tiles run
    """
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads < 2 or len(tiles) < 2:
        yield from map(function, tiles)
        return

    pool = ThreadPoolExecutor(threads)
    try:
        yield from pool.map(_on_one_thread(function), tiles)
    finally:  # also when the caller stops early (an error, Ctrl+C): no tile is started after that
        pool.shutdown(wait=True, cancel_futures=True)
        torch.set_num_threads(threads)


def _on_one_thread(function):
    """function, run by a worker thread with its PyTorch operations on that thread alone (map_tiles and
    convolutions_in_rows give each worker whole layers; the caller sets PyTorch's thread count back after)."""
    def on_one_thread(*args):
        torch.set_num_threads(1)
        return function(*args)
    return on_one_thread


ROWS = 32  # LR rows per strip in convolutions_in_rows (16 and 64 measured no faster on a 1000-pixel-wide photo)
WINOGRAD = True  # convolutions_in_rows's fp32 convolutions by Winograd's algorithm where NNPACK runs (see below)
# Rows per strip for Winograd: a multiple of its 6-row blocks of output (32 rows would compute 36). Held to AVX2, the
# compact model on a 1000x1000 photo used 7.08 CPU s in strips of 18 rows, 7.20 in 24, 7.83 in 32 (medians of 7).
WINOGRAD_ROWS = 18


@functools.cache
def winograd_available():
    """
    Whether this PyTorch build has NNPACK and this CPU runs it (x86 CPUs with AVX2, ARM with NEON).

    Why NNPACK: its 3x3 convolutions use Winograd's F(6x6, 3x3) algorithm, which computes each 6x6 block of output
    with 8x8 = 64 multiplications per channel pair instead of 6x6x9 = 324, for rounding errors of about 1e-6 of the
    values (inputs and outputs are transformed in fp32). PyTorch ships it but calls it only for batches of 16 or more
    with its faster default (oneDNN) switched off; convolutions_in_rows calls it directly. Measured on a 2-core AMD
    EPYC held to AVX2, the shipped compact model on a 1000x1000 photo: 3.5 s instead of 6.5 s; with AVX-512 (which
    NNPACK does not use, oneDNN does) about as fast as oneDNN; bf16 (oneDNN) stays faster where the CPU has it
    (benchmarks/bench_rows.py, docs/benchmarks.md).

    NNPACK keeps one thread pool, made at its first convolution with the calling thread's PyTorch thread count; a
    pool of one thread runs each convolution in its caller, so that every thread of convolutions_in_rows runs its
    own (a pool of two, shared and locked, measured 1.7x slower). Its first convolution is therefore made here, on
    one thread.
    """
    if not torch._nnpack_available():  # (also starts NNPACK: without it, its convolutions fail)
        return False
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        torch._nnpack_spatial_convolution(torch.zeros(1, 1, 3, 3), torch.zeros(1, 1, 3, 3), None, [1, 1])
        return True
    except RuntimeError:
        return False
    finally:
        torch.set_num_threads(threads)


def can_run_in_rows(layers):
    """Whether convolutions_in_rows computes these layers: 3x3 convolutions with stride 1, zero padding 1, no
    dilation or groups, and element-wise modules (PReLU) between them."""
    convolutions = [layer for layer in layers if isinstance(layer, nn.Conv2d)]
    return bool(convolutions) and all(isinstance(layer, (nn.Conv2d, nn.PReLU)) for layer in layers) and all(
        conv.kernel_size == (3, 3) and conv.stride == (1, 1) and conv.padding == (1, 1) and conv.dilation == (1, 1)
        and conv.groups == 1 and conv.padding_mode == "zeros" for conv in convolutions)


def convolutions_in_rows(layers, x, emit, rows=None, context=contextlib.nullcontext):
    """
    The layers of a plain stack (can_run_in_rows: 3x3 convolutions and PReLUs, the compact network's body) on x, a
    strip of rows at a time, without gradients: what inference.upscale runs for the compact network on a CPU.
    Each strip's finished rows are handed to emit(top, features): features (1, C_out, n, W) are rows top .. top + n - 1
    of what the layers give on the whole image.

    Why: tiles recompute their context (a 1000 x 1000 photo's 256-pixel tiles with 16 pixels of context run 1.2
    times its pixels through the network). A line buffer needs no context: every convolution keeps the last two
    rows of its input from the strip before (its carry), so each output row lags one row behind its input and every
    row is computed once. The result is exactly the whole image's, whatever the receptive field (up to the order of
    float sums), where tiles are exact only when their context covers it. With several threads, thread j takes
    strips j, j + threads, ... (one thread each, as map_tiles does for tiles), and a strip's convolution waits for
    the carry of the strip before it at that convolution: the threads run the same layers one layer apart, each as
    busy as the other, and nothing is computed twice (bands of rows would each need their receptive field again).
    Measured on a 2-core AMD EPYC, inference.upscale on a 1000 x 1000 photo with the shipped compact models: 0.88
    to 0.96 of the tiles' time with the same convolutions, in fp32 (also held to AVX2) and bf16; 0.43 to 0.44 held
    to AVX2 with Winograd's (benchmarks/bench_rows.py, docs/benchmarks.md).

    In fp32 (no autocast) the convolutions run by Winograd's algorithm where NNPACK is there (winograd_available):
    the same function, rounded differently (about 1e-6 of the values; compact's output within 1e-5 of the direct
    convolutions').

    :param layers: list of modules, in order (can_run_in_rows)
    :param x: (1, C, H, W) input, on a CPU
    :param emit: function(top, features), called from the threads: each strip's rows once, in any order
    :param rows: input rows per strip (None: WINOGRAD_ROWS for Winograd's convolutions, ROWS for the others)
    :param context: () -> the context each thread runs the layers in (e.g. inference.autocast's, for bf16)
    """
    with context():  # Winograd's convolutions in fp32 outside autocast (NNPACK's pool made here, before the threads)
        winograd = (WINOGRAD and x.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
                    and winograd_available())
    rows = rows or (WINOGRAD_ROWS if winograd else ROWS)
    height, width = x.shape[2], x.shape[3]
    reach = sum(isinstance(layer, nn.Conv2d) for layer in layers)  # rows the output lags behind the input
    tops = list(range(0, height, rows))
    threads = torch.get_num_threads()
    count = min(threads, len(tops))  # worker threads
    carries, finished = {}, {}  # (strip, convolution index) -> its carry / an Event set when it is there
    failed = threading.Event()

    def run_strip(k):
        """Strip k through the layers; its finished rows to emit."""
        top, bottom = tops[k], min(tops[k] + rows, height)

        def take_carry(index):  # the carry of strip k - 1 at this convolution (None above the first strip)
            if k == 0:
                return None
            if count > 1:
                while not finished[k - 1, index].wait(0.1):  # (the strip before, on another thread)
                    if failed.is_set():
                        raise _Stopped()
            return carries.pop((k - 1, index))

        def give_carry(index, carry):
            carries[k, index] = carry
            finished[k, index].set()

        with torch.inference_mode(), context():  # (both are per thread: entered in each)
            features = _strip_through(layers, x[:, :, top:bottom], bottom == height, width, take_carry, give_carry,
                                      winograd)
            # Each convolution lags one row: these are rows top - reach .. bottom - reach (to the end, for the last)
            first = max(top - reach, 0)
            if features.shape[2]:
                emit(first, features)

    for k in range(len(tops)):
        for index, layer in enumerate(layers):
            if isinstance(layer, nn.Conv2d):
                finished[k, index] = threading.Event()
    if count == 1:
        for k in range(len(tops)):
            run_strip(k)
        return

    def worker(j):
        try:
            for k in range(j, len(tops), count):
                run_strip(k)
        except BaseException:
            failed.set()  # the other threads stop at their next wait instead of waiting for ever
            raise

    with ThreadPoolExecutor(count) as pool:
        try:
            errors = [future.exception() for future in [pool.submit(_on_one_thread(worker), j) for j in range(count)]]
        finally:
            torch.set_num_threads(threads)
    errors = [error for error in errors if error is not None and not isinstance(error, _Stopped)]
    if errors:
        raise errors[0]


class _Stopped(Exception):
    """A thread of convolutions_in_rows stopped because another one failed."""


def _strip_through(layers, features, last, width, take_carry, give_carry, winograd):
    """One strip of rows through the layers (convolutions_in_rows): features (1, C, n, W) the strip's input rows
    (n may be 0), last whether they end the image; each convolution's window starts with take_carry(index) (None at
    the top: the zero padding) and gives its own last two rows to give_carry(index, rows) for the next strip;
    winograd: the convolutions by NNPACK's Winograd (fp32), else F.conv2d (oneDNN).
    :return: (1, C_out, m, W), the rows of the output this strip completes"""
    # NNPACK takes contiguous (N, C, H, W); oneDNN is faster channels-last.
    layout = torch.contiguous_format if winograd else torch.channels_last

    def zero_row(like):  # a row of the convolutions' zero padding, above row 0 and below row H - 1
        return like.new_zeros((1, like.shape[1], 1, width)).contiguous(memory_format=layout)

    features = features.contiguous(memory_format=layout)
    for index, layer in enumerate(layers):
        if not isinstance(layer, nn.Conv2d):
            features = layer(features)  # PReLU: row by row
            continue
        carry = take_carry(index)
        window = [zero_row(features) if carry is None else carry, features] + ([zero_row(features)] if last else [])
        window = torch.cat(window, 2)  # (1, C, 2 + n, W), or fewer rows at the top
        if window.shape[2] < 3:  # not a whole 3-row window yet (the first strips, deep in the stack)
            give_carry(index, window)
            features = window.new_zeros((1, layer.out_channels, 0, width))
            continue
        give_carry(index, window[:, :, -2:].clone())  # (a copy: a view would keep the whole window alive)
        # Rows padded by the window itself, columns by zeros: one output row per full 3-row window.
        if winograd:
            features = torch._nnpack_spatial_convolution(window, layer.weight.contiguous(), layer.bias, [0, 1])
        else:
            features = F.conv2d(window, layer.weight, layer.bias, padding=(0, 1))  # (1, C_out, n, W)
    return features
