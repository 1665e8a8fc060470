"""Tests of fast_paths.py: each speed path computes what the plain network computes (bit for bit, or up to the order
of float sums), SRResNet takes it where it should, upscaling's tiles side by side land where one at a time do, and the
compact network run in rows gives the whole image's numbers."""
import copy
import threading

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fast_paths
import inference
import models


@pytest.mark.parametrize("kernel_size, r", [(9, 2), (3, 2), (5, 2), (7, 3), (1, 2)])
def test_fold_convolution_weight_is_the_same_convolution(kernel_size, r):
    """A k x k convolution of an image equals the K x K convolution of the image pixel-unshuffled by r with the folded
    weights, pixel-shuffled back (zero padding at the borders included)."""
    torch.manual_seed(0)
    weight, bias = torch.randn(3, 4, kernel_size, kernel_size, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    x = torch.randn(2, 4, 5 * r, 7 * r, dtype=torch.float64)
    folded, padding = fast_paths.fold_convolution_weight(weight, r)
    out = F.pixel_shuffle(F.conv2d(F.pixel_unshuffle(x, r), folded, bias.repeat_interleave(r * r), padding=padding), r)
    assert torch.allclose(out, F.conv2d(x, weight, bias, padding=kernel_size // 2), atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float64])
def test_prelu_is_pytorchs_prelu(dtype):
    """fast_paths.PReLU gives nn.PReLU's outputs and gradients; on a CPU in bf16 or fp32, with gradients, it takes
    LeakyReLU's kernels (the same outputs and input gradients bit for bit; the slope's gradient summed in fp32)."""
    torch.manual_seed(0)
    x = torch.randn(4, 8, 6, 6).to(dtype).contiguous(memory_format=torch.channels_last)
    x[0, 0, 0, :3] = 0  # PReLU's slope applies at 0 too
    ours, theirs = fast_paths.PReLU().to(torch.float64 if dtype == torch.float64 else torch.float32), nn.PReLU()
    theirs = theirs.to(ours.weight.dtype)
    theirs.weight.data.fill_(0.3)
    ours.load_state_dict(theirs.state_dict())
    grads = []
    for module in (ours, theirs):
        x_in = x.clone().requires_grad_()
        with torch.autocast("cpu", torch.bfloat16, enabled=dtype == torch.bfloat16):  # (as training runs bf16)
            y = module(x_in)
        if module is ours:  # bf16 and fp32 take LeakyReLU's kernels (_SharedSlopePReLU); float64 takes nn.PReLU's
            assert (type(y.grad_fn).__name__ == "_SharedSlopePReLUBackward") == (dtype != torch.float64)
        y.backward(torch.linspace(-1, 1, y.numel()).view_as(y).to(dtype))
        grads.append((y, x_in.grad, module.weight.grad))
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])
    assert grads[0][2].dtype == ours.weight.dtype
    tolerance = 1e-2 if dtype == torch.bfloat16 else 1e-5  # the slope's gradient: the same sum in another order
    torch.testing.assert_close(grads[0][2], grads[1][2], rtol=tolerance, atol=tolerance)
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=dtype == torch.bfloat16):
        assert torch.equal(ours(x), theirs(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_srresnet_on_a_cpu_takes_the_folded_output_and_computes_the_papers_function(dtype, monkeypatch):
    """SRResNet.upsample_and_output runs folded_upsample_and_output on a CPU: the same outputs as the paper's sub-pixel
    blocks and last convolution, up to float rounding (the same sums in another order)."""
    torch.manual_seed(0)
    model = models.SRResNet(n_channels=8, n_blocks=1).eval()
    features = torch.randn(1, 8, 6, 7)
    assert fast_paths.can_fold_output(model.conv_block3, features)
    calls = []  # a spy: the folded path is the one taken, not only a function that gives the same numbers
    real = fast_paths.folded_upsample_and_output
    monkeypatch.setattr(fast_paths, "folded_upsample_and_output", lambda *args: calls.append(1) or real(*args))
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=dtype == torch.bfloat16):
        folded = model.upsample_and_output(features)
        plain = model.conv_block3(model.subpixel_convolutional_blocks(features))
    assert calls == [1] and folded.shape == plain.shape == (1, 3, 24, 28)
    torch.testing.assert_close(folded.float(), plain.float(), rtol=0, atol=1e-5 if dtype == torch.float32 else 2e-2)


def test_map_tiles_runs_the_tiles_side_by_side_on_a_cpu_each_on_one_thread_and_keeps_their_order():
    """On a CPU with 2 threads, map_tiles gives function(tile) in the tiles' order, computed off the caller's thread
    with PyTorch held to one thread each, and gives the caller its threads back; on one thread it runs them in turn."""
    seen = []

    def square(tile):
        seen.append((threading.get_ident(), torch.get_num_threads()))
        return tile * tile

    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert list(fast_paths.map_tiles(square, list(range(7)), torch.device("cpu"))) == [t * t for t in range(7)]
        assert all(threads == 1 for _, threads in seen) and threading.get_ident() not in {ident for ident, _ in seen}
        assert torch.get_num_threads() == 2
        seen.clear()
        torch.set_num_threads(1)  # one thread: in turn, on this thread
        assert list(fast_paths.map_tiles(square, [3, 4], torch.device("cpu"))) == [9, 16]
        assert {ident for ident, _ in seen} == {threading.get_ident()}
    finally:
        torch.set_num_threads(previous)


def test_a_tiled_upscale_on_two_threads_gives_what_one_thread_gives():
    """inference.upscale with its tiles side by side (two threads) equals the same tiles one after the other (one
    thread), up to float rounding: the tiles land in their places."""
    torch.manual_seed(0)
    model = models.RRDBNet(scale=2, num_feat=8, num_block=1, num_grow_ch=4).eval()  # (the compact network: rows)
    lr_img = torch.rand(1, 3, 37, 45)
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = inference.upscale(model, lr_img, tile=16, tile_pad=4)
        torch.set_num_threads(2)
        two = inference.upscale(model, lr_img, tile=16, tile_pad=4)  # 3 x 3 tiles
    finally:
        torch.set_num_threads(previous)
    torch.testing.assert_close(two, one, rtol=0, atol=1e-6)


def compact_body(num_conv=5, dtype=torch.float64):
    torch.manual_seed(0)
    model = models.SRVGGNetCompact(num_feat=8, num_conv=num_conv, upscale=2).to(dtype).eval()
    with torch.no_grad():  # slopes of both signs and sizes, so every PReLU matters
        for layer in model.body:
            if isinstance(layer, nn.PReLU):
                layer.weight.uniform_(-0.5, 1.5)
    return model


def in_rows(layers, x, rows):
    """convolutions_in_rows' pieces put together by their rows, checking that they tile the output: (1, C_out, H, W)."""
    pieces = {}
    def emit(top, features):
        assert top not in pieces
        pieces[top] = features.clone()
    fast_paths.convolutions_in_rows(layers, x, emit, rows=rows)
    tops = sorted(pieces)
    assert tops[0] == 0 and all(tops[i] + pieces[tops[i]].shape[2] == tops[i + 1] for i in range(len(tops) - 1))
    return torch.cat([pieces[top] for top in tops], 2)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("height, rows", [(1, 4), (5, 4), (23, 4), (23, 32), (64, 7)])
def test_convolutions_in_rows_give_the_whole_images_numbers(threads, height, rows):
    """The compact network's body run a strip of rows at a time (every other strip on each of several threads) equals
    the body on the whole image, in float64 to 1e-12: every row is there once, with the same neighbours -- also for
    images with fewer rows than convolutions, and strips of fewer rows than the stack is deep."""
    model = compact_body()
    layers = list(model.body)
    x = torch.rand(1, 3, height, 11, dtype=torch.float64)
    with torch.no_grad():
        reference = x
        for layer in layers:
            reference = layer(reference)  # (1, 3 * 4, height, 11)
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        got = in_rows(layers, x, rows)
        assert torch.get_num_threads() == threads  # the stages' one-thread setting does not leak out
    finally:
        torch.set_num_threads(previous)
    assert got.shape == reference.shape
    assert (got - reference).abs().max() < 1e-12


@pytest.mark.skipif(not fast_paths.winograd_available(), reason="this PyTorch or CPU has no NNPACK")
def test_convolutions_in_rows_in_fp32_run_by_winograd_and_give_the_whole_images_numbers(monkeypatch):
    """In fp32 the rows' convolutions run through NNPACK (Winograd): within fp32 rounding of the body on the whole image
    (computed in float64), the same bits on one thread and on two (each convolution runs in its own thread), and
    not taken when WINOGRAD is off or under bf16 autocast (oneDNN's bf16 convolutions)."""
    model = compact_body(dtype=torch.float32)
    layers = list(model.body)
    x = torch.rand(1, 3, 45, 37)
    with torch.no_grad():
        reference = x.double()
        for layer in layers:
            reference = layer.double()(reference)  # (1, 3 * 4, 45, 37), float64
        model.float()
    calls = []
    nnpack = torch._nnpack_spatial_convolution

    def counted(*args):
        calls.append(args[0].shape)
        return nnpack(*args)

    monkeypatch.setattr(torch, "_nnpack_spatial_convolution", counted)
    previous = torch.get_num_threads()
    try:
        results, counts = {}, {}
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results[threads] = in_rows(layers, x, rows=8)
            counts[threads] = len(calls)
            calls.clear()
        torch.set_num_threads(previous)
        assert torch.get_num_threads() == previous  # (winograd_available gives the thread count back)
    finally:
        torch.set_num_threads(previous)
    assert counts[1] >= 6 * 7 and counts[2] == counts[1]  # 7 convolutions on each of 6 strips of 8 rows (and more:
    #                                                        the last strip finishes the rows still in the stack)
    assert torch.equal(results[1], results[2])
    scale = reference.abs().max().item()
    assert (results[1].double() - reference).abs().max() < 1e-5 * scale
    calls.clear()
    monkeypatch.setattr(fast_paths, "WINOGRAD", False)
    direct = in_rows(layers, x, rows=8)
    assert not calls and (direct.double() - reference).abs().max() < 1e-5 * scale
    monkeypatch.setattr(fast_paths, "WINOGRAD", True)
    fast_paths.convolutions_in_rows(layers, x, lambda top, features: None, rows=8,
                                    context=lambda: torch.autocast("cpu", dtype=torch.bfloat16))
    assert not calls


def test_a_failing_layer_stops_convolutions_in_rows_with_its_error():
    """An error in a layer (here the last PReLU) comes out of convolutions_in_rows as it is, the other thread stops
    instead of waiting for ever, and PyTorch's threads are given back."""
    model = compact_body()

    class Broken(nn.PReLU):
        def forward(self, x):
            raise ValueError("broken layer")

    layers = list(model.body)[:-1] + [Broken(), model.body[-1]]
    x = torch.rand(1, 3, 40, 9, dtype=torch.float64)
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with pytest.raises(ValueError, match="broken layer"):
            in_rows(layers, x, rows=4)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)


def test_upscale_runs_the_compact_network_in_rows_on_a_cpu_and_gets_the_whole_images_numbers(monkeypatch):
    """inference.upscale takes the rows for the compact network on a CPU where the image needs several tiles: the
    result is the network on the whole image (to 1e-12 in float64), even with tiles whose context (tile_pad 0) would
    leave seams, and in bf16 within bf16's rounding; other networks keep the tiles, and one tile runs whole."""
    model = compact_body()
    lr_img = torch.rand(1, 3, 41, 30, dtype=torch.float64)
    with torch.no_grad():
        whole = model(lr_img).clamp(0, 1)
    cpu = torch.device("cpu")
    assert inference.runs_in_rows(model, cpu)
    assert not inference.runs_in_rows(models.RRDBNet(scale=2, num_feat=8, num_block=1, num_grow_ch=4), cpu)
    assert not inference.runs_in_rows(models.SRVGGNetCompact(num_feat=8, num_conv=1, upscale=4, outscale=2), cpu)
    rows = inference.upscale(model, lr_img, tile=8, tile_pad=0)
    assert rows.shape == whole.shape and rows.dtype == torch.float64
    assert (rows - whole).abs().max() < 1e-12
    # (bf16 rounds: 1e-3 or more)
    bf16 = inference.upscale(copy.deepcopy(model).float(), lr_img.float(), tile=8, precision="bf16")
    assert bf16.dtype == torch.float32 and 1e-3 < (bf16.double() - whole).abs().max() < 0.05
    # An image of one tile runs whole (run_generator), not in rows.
    monkeypatch.setattr(fast_paths, "convolutions_in_rows", None)
    assert (inference.upscale(model, lr_img) - whole).abs().max() < 1e-12
    # The same tiles without the rows leave seams: the check above can tell.
    monkeypatch.setattr(inference, "runs_in_rows", lambda *args: False)
    assert (inference.upscale(model, lr_img, tile=8, tile_pad=0) - whole).abs().max() > 1e-4


def test_upscale_in_rows_shows_its_progress_over_the_rows(monkeypatch):
    """With progress, the rows path draws a bar over the LR rows (as the tiles draw one over the tiles), counted to
    the end; without, none."""
    bars = []

    class Recorded(inference.tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.asked_to_hide = kwargs["disable"]  # (a closed bar says disable itself)
            bars.append(self)

    monkeypatch.setattr(inference, "tqdm", Recorded)
    model = compact_body(dtype=torch.float32)
    for progress in (True, False):
        inference.upscale(model, torch.rand(1, 3, 80, 9), tile=16, progress=progress)
    (shown, hidden) = bars
    assert shown.desc == "rows" and shown.total == 80 and shown.n == 80 and not shown.asked_to_hide
    assert hidden.asked_to_hide
