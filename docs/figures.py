"""
Draw the tutorial's figures from the package's own code and its shipped models.

    python docs/figures.py                                 # every figure -> docs/figures/<name>.png
    python docs/figures.py --only pixel_shuffle            # one of them (--only may be given several times)
    python docs/figures.py --output_folder /tmp/figures    # somewhere else
    python docs/figures.py --log runs/my_gan/log_srgan.jsonl   # gan_training.png from another run's log

Each figure is one function below, in the order of the README's tutorial, and each function's docstring says what
the figure teaches. Every image, map, shape and number in them comes from running the package: models.py's
networks, the shipped weights/ models, degradations.py's steps, metrics.py's resize and PSNR, train_srgan.py's
losses, a training run's log.

  upsamplers.png         part 1, "Upsampling: from fixed filters to learned ones"
  pixel_shuffle.png      part 1, "Sub-pixel convolution"
  srresnet_features.png  part 1, "SRResNet"
  mse_blur.png           part 1, "Training with a pixel loss, and why the result is blurry"
  gan_iteration.png      part 2, "Interleaved training"
  gan_training.png       part 2, "Training SRGAN" (from a log: skipped, with a line, when the log is absent)
  degradations.png       part 4, "The second-order degradation pipeline"

The photos come with scikit-image (a requirement of the package, so they are there wherever it is installed, with
no download): `chelsea`, the cat, which none of the shipped models was trained on, and `grass`, a grey texture.
The figures are deterministic: fixed crops, fixed seeds, a fixed dpi and PNG files without a date or a program
version, so running the script again writes the same bytes (on the same machine and library versions).
"""
import argparse
import copy
import functools
import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # draw into files; no window, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import skimage.data  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from matplotlib import patches  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # the package's flat modules (models.py, metrics.py, ...) live in the root

import cli  # noqa: E402
import degradations  # noqa: E402
import inference  # noqa: E402
import metrics  # noqa: E402
import models  # noqa: E402
import plot_training  # noqa: E402
import porting  # noqa: E402
import train_srgan  # noqa: E402
import training_log  # noqa: E402
import utils  # noqa: E402

SCALING_FACTOR = 4  # every figure is about x4, the tutorial's scale
DPI = 100  # one resolution for every figure: small files, readable 8-point text
OUTPUT_FOLDER = REPO_ROOT / "docs" / "figures"
DEFAULT_LOG = OUTPUT_FOLDER / "data" / "srgan_log.jsonl"  # the GAN run gan_training.png draws: the shipped srgan

# Where the figures look in the photos: (top, left, side) in HR pixels.
EYE_CROP = (56, 120, 96)  # the cat's eye and fur: a 96 x 96 HR crop, a 24 x 24 LR crop, the sizes of training
EYE_INSET = (26, 36, 24)  # inside it, the edge of the eye, enlarged in an inset
CHEEK_CROP = (188, 322, 80)  # soft fur with little detail, under mse_blur.png's stripes (64 x 64 and a margin)
GRASS_CROP = (92, 92, 96)  # blades of grass, whose fine detail mse_blur.png moves around (and room to move it)
DEGRADATION_CROP = (40, 100, 128)  # the eye again, with room for the blur kernels to act
DEGRADATION_SEED = 4  # the draw of degradations.png: one that takes the steps degrade_batch takes 80% of the time
#   (the stage-2 blur, the final sinc filter), and whose every step is easy to see (any seed is a fair draw)


# ======================================================================================================
# Little helpers: images between numpy and torch, panels, saving
# ======================================================================================================
def crop(img, top, left, side):
    """A side x side crop of an (H, W[, C]) array."""
    return img[top:top + side, left:left + side]


def to_tensor(img):
    """(H, W, 3) uint8 -> (1, 3, H, W) float32 in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().div(255).unsqueeze(0)


def to_uint8(imgs):
    """(1, 3, H, W) float in [0, 1] -> (H, W, 3) uint8, rounded as a saved PNG is (metrics.quantize_to_uint8)."""
    return metrics.quantize_to_uint8(imgs[0].permute(1, 2, 0).double().clamp(0, 1).numpy())


def shrink(img):
    """(H, W, 3) uint8 -> the LR image (H/4, W/4, 3) uint8, made as the benchmarks make theirs: MATLAB's bicubic
    shrink (metrics.imresize)."""
    return metrics.imresize(img, scale=1 / SCALING_FACTOR)


def rms(a, b):
    """Root-mean-square difference of two images, in their units (8-bit levels for uint8 images)."""
    return float(np.sqrt(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)))


def show(ax, img, title=None, side=None, fontsize=8):
    """An image in a panel, its pixels as they are (no smoothing that would hide blockiness or blur). With `side`,
    the image fills a side x side square whatever its own size, so that images of several sizes line up."""
    extent = None if side is None else (0, side, side, 0)
    ax.imshow(img, interpolation="nearest", extent=extent, cmap="gray", vmin=0, vmax=255)  # uint8 (grey or RGB)
    if title is not None:
        ax.set_title(title, fontsize=fontsize)
    ax.set_xticks([])
    ax.set_yticks([])


def panel_grid(rows, columns, panel, title_room=34, gap=10, top=26):
    """
    A figure of rows x columns square panels of exactly `panel` x `panel` pixels (at DPI), with `title_room` pixels
    above each for its title and `top` pixels for the figure's title. Exact sizes show an image of panel / k pixels
    with every pixel as a k x k block (tight_layout would scale the panels to fractional sizes, and nearest-neighbour
    display would then draw some pixels wider than others, which fine stripes turn into false patterns).

    :return: (figure, axes: (rows, columns) array of matplotlib axes)
    """
    width = columns * panel + (columns + 1) * gap
    height = top + rows * (title_room + panel) + gap
    figure = plt.figure(figsize=(width / DPI, height / DPI))
    axes = np.empty((rows, columns), dtype=object)
    for row in range(rows):
        bottom = height - top - (row + 1) * (title_room + panel)  # in pixels from the bottom
        for column in range(columns):
            axes[row, column] = figure.add_axes(((gap + column * (panel + gap)) / width, bottom / height,
                                                 panel / width, panel / height))
    return figure, axes


def show_map(ax, feature_map, title=None):
    """One feature map (H, W) in grey, stretched to its own range: the pattern matters, not the scale."""
    ax.imshow(feature_map, interpolation="nearest", cmap="gray")
    if title is not None:
        ax.set_title(title, fontsize=7)
    ax.axis("off")


def save(figure, path):
    """The PNG, written as plot_training.py writes its pictures (atomically, no date, no program version)."""
    plot_training.save_figure(figure, path, dpi=DPI)
    print(f"Wrote {path} ({Path(path).stat().st_size / 1024:.0f} KB)")


def run_with_hooks(model, modules, lr_imgs):
    """
    Run a generator on lr_imgs (N, 3, h, w) in [0, 1] as inference does (inference.run_generator), recording what
    named modules of it compute with forward hooks: a hook is a function PyTorch calls right after a module's
    forward, with its input and output, so we see inside the network without changing it.

    :param modules: name -> a module of `model`
    :return: (sr_imgs (N, 3, H, W) in [0, 1], name -> that module's output (its last one))
    """
    outputs = {}

    def recorder(name):  # the hook of one module: it keeps the module's output under `name`
        def hook(module, inputs, output):
            outputs[name] = output.detach()
        return hook

    handles = [module.register_forward_hook(recorder(name)) for name, module in modules.items()]
    try:
        sr_imgs = inference.run_generator(model, lr_imgs)
    finally:
        for handle in handles:  # hooks left behind would keep recording
            handle.remove()
    return sr_imgs, outputs


# ======================================================================================================
# Part 1, "Upsampling: from fixed filters to learned ones": upsamplers.png
# ======================================================================================================
def fixed_upsample(lr, mode):
    """
    Enlarge an LR image x4 with a fixed filter: (h, w, 3) uint8 -> (4h, 4w, 3) uint8.

    'bicubic' is MATLAB's imresize (metrics.imresize), the bicubic of every table in the README and of eval.py;
    'nearest' and 'bilinear' are PyTorch's F.interpolate (pixel centres aligned, as imresize aligns them).
    """
    if mode == "bicubic":
        return metrics.imresize(lr, scale=SCALING_FACTOR)
    align = {} if mode == "nearest" else {"align_corners": False}
    return to_uint8(F.interpolate(to_tensor(lr), scale_factor=SCALING_FACTOR, mode=mode, **align))


def fixed_kernel_weights(mode, scale, reach=3):
    """
    The 1-D weights a fixed upsampler gives the neighbours of an output pixel, measured rather than written down: we
    upsample a single bright LR pixel (an impulse), and the output at each position is the weight that pixel gets
    there. The same functions as fixed_upsample do it (F.interpolate, metrics.imresize).

    :param mode: 'nearest', 'bilinear' or 'bicubic'
    :param scale: the upscaling factor (4 for the figure's dots; a large one traces the whole curve)
    :param reach: LR pixels on each side of the impulse (bicubic reaches 2)
    :return: (positions: distance of each output pixel from the bright LR pixel, in LR pixels, (n,);
              weights (n,)), float64
    """
    length = 2 * reach + 1
    impulse = np.zeros((1, length))
    impulse[0, reach] = 1.0
    if mode == "bicubic":
        weights = metrics.imresize(impulse, output_size=(1, length * scale))[0]  # (1, n) -> (n,)
    else:
        torch_mode = {"nearest": "nearest", "bilinear": "linear"}[mode]  # the 1-D name of bilinear
        align = {} if mode == "nearest" else {"align_corners": False}
        weights = F.interpolate(torch.from_numpy(impulse)[None], scale_factor=scale, mode=torch_mode,
                                **align)[0, 0].numpy()
    # Output pixel j sits at (j + 0.5) / scale - 0.5 in LR pixel coordinates (pixel centres aligned).
    positions = (np.arange(length * scale) + 0.5) / scale - 0.5 - reach
    return positions, weights


def draw_upsamplers(path, hr, generators, inset=EYE_INSET):
    """
    What the README's list of upsamplers looks like on one photo crop, with the PSNR of each: nearest (blocks),
    bilinear and bicubic (fixed weighted averages: soft edges), and the shipped learned models `compact` and
    `srresnet` (sharper edges, higher PSNR), beside the LR input and the HR truth; an inset enlarges an edge. A last
    panel plots the fixed filters' weights: the curves nearest, bilinear and bicubic average the LR pixels with
    (the dots: the weights at x4's sixteen output positions). A learned upsampler has no such fixed curve.

    :param hr: (H, W, 3) uint8 HR crop, sides multiples of 4
    :param generators: name -> generator (e.g. the shipped 'compact' and 'srresnet', inference.load_generator)
    :param inset: (top, left, side) of the enlarged region, in HR pixels
    :return: name -> PSNR in dB (metrics.evaluate_pair: the standard protocol, Y, 4 pixels shaved), for every
             upsampler
    """
    lr = shrink(hr)  # (H/4, W/4, 3) uint8
    # Every upsampler's answer, (H, W, 3) uint8, and its PSNR against HR, measured as eval.py measures.
    sr = {mode: fixed_upsample(lr, mode) for mode in ("nearest", "bilinear", "bicubic")}
    sr.update({name: metrics.upscale_array(generator, lr, SCALING_FACTOR) for name, generator in generators.items()})
    psnr = {name: metrics.evaluate_pair(img, hr, SCALING_FACTOR)[0] for name, img in sr.items()}

    panels = [(f"LR input, {lr.shape[1]}x{lr.shape[0]}", lr)]
    panels += [(f"{name}: {psnr[name]:.2f} dB", img) for name, img in sr.items()]
    panels.append((f"HR, {hr.shape[1]}x{hr.shape[0]}", hr))
    side = hr.shape[0]
    figure, axes = panel_grid(2, 4, 2 * side)  # every HR pixel a 2 x 2 block, every LR pixel an 8 x 8 one
    top, left, inset_side = inset
    for ax, (title, img) in zip(axes.flat, panels):
        show(ax, img, title, side=side)  # the LR image fills the panel too: its pixels show as 8 x 8 blocks
        # The inset: the marked region, enlarged, in the lower right corner.
        ax.add_patch(patches.Rectangle((left, top), inset_side, inset_side, fill=False, edgecolor="yellow", lw=0.8))
        zoom = ax.inset_axes([0.6, 0.0, 0.4, 0.4])
        k = img.shape[0] / side  # the LR image is 4 times smaller: its region is too
        show(zoom, crop(img, int(top * k), int(left * k), int(inset_side * k)))
        for spine in zoom.spines.values():
            spine.set_edgecolor("yellow")

    # The last panel: the weights of the fixed filters, made smaller inside its square to leave room for the labels.
    ax = axes.flat[-1]
    width, height = figure.get_size_inches() * DPI
    place = ax.get_position()
    ax.set_position((place.x0 + 38 / width, place.y0 + 30 / height, place.width - 40 / width,
                     place.height - 30 / height))
    for colour, mode in zip(("C0", "C1", "C2"), ("nearest", "bilinear", "bicubic")):
        ax.plot(*fixed_kernel_weights(mode, 64), color=colour, lw=1.2, label=mode)
        ax.plot(*fixed_kernel_weights(mode, SCALING_FACTOR), "o", color=colour, markersize=2.5)
    ax.axhline(0, color="black", lw=0.5)
    ax.set_xlim(-2.6, 2.6)
    ax.set_xlabel("distance from the LR pixel (LR pixels)", fontsize=7)
    ax.set_ylabel("weight", fontsize=7)
    ax.tick_params(labelsize=7)
    ax.set_ylim(-0.15, 1.4)
    ax.legend(fontsize=6.5, frameon=False, loc="upper center", ncol=3, handlelength=1, columnspacing=0.8)
    ax.set_title("the fixed filters' weights (dots: x4)", fontsize=8)
    figure.suptitle(f"x{SCALING_FACTOR} upsampling of one crop; PSNR on Y, {SCALING_FACTOR} pixels shaved "
                    f"(eval.py's protocol)", fontsize=9)
    save(figure, path)
    return psnr


# ======================================================================================================
# Part 1, "Sub-pixel convolution": pixel_shuffle.png
# ======================================================================================================
def pixel_shuffle_orders(n_channels=2, r=2, size=2):
    """
    Pixel shuffle on a real tensor whose channel k holds the number k everywhere: after the shuffle, every output
    pixel shows which input channel it was read from.

    :return: (input (C r^2, size, size), PyTorch's F.pixel_shuffle of it (C, size r, size r), TensorFlow's
             depth_to_space of it (porting.depth_to_space_tf, on the NHWC layout TensorFlow uses) (C, size r,
             size r)), as int64 arrays
    """
    x = torch.arange(n_channels * r * r, dtype=torch.float64).view(1, -1, 1, 1).expand(1, -1, size, size)
    pytorch = F.pixel_shuffle(x, r)  # (1, C, size r, size r)
    tensorflow = porting.depth_to_space_tf(x.permute(0, 2, 3, 1), r).permute(0, 3, 1, 2)  # NCHW -> NHWC -> NCHW
    return tuple(t[0].round().long().numpy() for t in (x, pytorch, tensorflow))


def draw_channel_grid(ax, values, r, title, colours):
    """A small map whose cells show their value (an input channel's number), coloured by it, with the r x r blocks
    that one LR pixel becomes outlined."""
    ax.imshow(values, cmap=colours, vmin=-0.5, vmax=colours.N - 0.5, interpolation="nearest")
    for (row, column), value in np.ndenumerate(values):
        ax.text(column, row, str(value), ha="center", va="center", fontsize=7)
    for edge in np.arange(-0.5, values.shape[0], r):  # the blocks: every r pixels
        ax.axhline(edge, color="black", lw=1.2)
        ax.axvline(edge, color="black", lw=1.2)
    ax.set_title(title, fontsize=7)
    ax.set_xticks([])
    ax.set_yticks([])


def draw_pixel_shuffle(path, generator, lr):
    """
    Pixel shuffle, on a real tensor and in the shipped SRResNet.

    Top: 8 input channels (C = 2 output channels times r^2 = 4 sub-pixel positions) of 2 x 2 pixels, each channel
    holding its own number, and what nn.PixelShuffle(2) (PyTorch) and tf.nn.depth_to_space (TensorFlow) make of
    them: the same 2 channels of 4 x 4, each 2 x 2 block coming from one LR pixel, but filled from different input
    channels (PyTorch: 4c + 2i + j, TensorFlow: 2 (2i + j) + c). Bottom: the last sub-pixel layer of `generator` on
    an LR crop: the four channels of one feature (its four sub-pixel positions) before the shuffle, as four maps at
    half the output size, and the one map twice as large that the shuffle interleaves them into.

    :param generator: an SRResNet (models.SRResNet; e.g. the shipped 'srresnet')
    :param lr: (h, w, 3) uint8 LR crop
    :return: (input, PyTorch's, TensorFlow's) of pixel_shuffle_orders, and (before: (4, 2h, 2w), after (4h, 4w)),
             the generator's maps
    """
    orders = pixel_shuffle_orders()
    inputs, pytorch, tensorflow = orders
    r = 2

    # The generator's last sub-pixel block: its convolution's output is what the shuffle takes. (A hook on the
    # convolution, not on the block: on a CPU SRResNet runs its last convolution on the folded grid, fast_paths.py,
    # and calls the block's convolution and PReLU but not the block's own forward.)
    last_block = generator.subpixel_convolutional_blocks[-1]
    _, outputs = run_with_hooks(generator, {"conv": last_block.conv}, to_tensor(lr))
    before = outputs["conv"][0]  # (64 r^2, 2h, 2w): feature c's sub-pixel (i, j) is channel 4c + 2i + j
    after = last_block.pixel_shuffle(before[None])[0]  # (64, 4h, 4w), the block's own nn.PixelShuffle
    # The feature to show: the one whose map varies most (a flat map would teach nothing).
    feature = int(after.flatten(1).std(dim=1).argmax())
    before, after = before[feature * r * r:(feature + 1) * r * r].numpy(), after[feature].numpy()

    figure = plt.figure(figsize=(8.6, 6.0))
    grid = figure.add_gridspec(3, 8, height_ratios=[1, 1.3, 1.9])
    colours = plt.get_cmap("Pastel1", len(inputs))
    for k, channel in enumerate(inputs):  # top row: the 8 input channels
        draw_channel_grid(figure.add_subplot(grid[0, k]), channel, 1, f"input channel {k}", colours)
    for index, (name, result) in enumerate((("PyTorch nn.PixelShuffle(2): channel 4c + 2i + j", pytorch),
                                            ("TensorFlow depth_to_space: channel (2i + j)\u00b72 + c", tensorflow))):
        for c in range(len(result)):
            ax = figure.add_subplot(grid[1, 4 * index + 2 * c:4 * index + 2 * c + 2])
            draw_channel_grid(ax, result[c], r, f"output channel c = {c}", colours)
            if c == 0:
                ax.text(1.05, 1.32, name, transform=ax.transAxes, ha="center", fontsize=8, weight="bold")
    for index in range(r * r):  # bottom row: the generator's four sub-pixel maps, then the shuffled one
        show_map(figure.add_subplot(grid[2, index]), before[index],
                 f"channel {feature * r * r + index}\n(i, j) = {divmod(index, r)}")
    show_map(figure.add_subplot(grid[2, 4:6]), after, f"after the shuffle:\none {after.shape[1]}x{after.shape[0]} map")
    # Which of the four maps each output pixel comes from: the block's own shuffle of four maps that hold 0, 1, 2, 3.
    phases = last_block.pixel_shuffle(torch.arange(r * r).view(1, r * r, 1, 1).expand(1, -1, 3, 3))[0, 0].numpy()
    draw_channel_grid(figure.add_subplot(grid[2, 6:8]), phases, r,
                      "the map each pixel comes\nfrom (a 6 x 6 corner)", plt.get_cmap("Pastel2", r * r))
    figure.text(0.5, 0.37, f"The shipped SRResNet's last sub-pixel layer on a {lr.shape[1]}x{lr.shape[0]} LR crop: "
                f"the four {before.shape[2]}x{before.shape[1]} maps of feature {feature} (channels 4\u00b7{feature} + "
                f"2i + j), interleaved", ha="center", fontsize=8, weight="bold")
    figure.suptitle("Pixel shuffle: C r\u00b2 channels -> C channels r times larger (here C = 2, r = 2)", fontsize=9)
    figure.subplots_adjust(left=0.02, right=0.98, top=0.88, bottom=0.02, hspace=0.6, wspace=0.25)
    save(figure, path)
    return orders, (before, after)


# ======================================================================================================
# Part 1, "SRResNet": srresnet_features.png
# ======================================================================================================
def srresnet_stages(generator, lr_imgs):
    """
    SRResNet's feature maps along the network, recorded with forward hooks (run_with_hooks) while the model runs.

    :param generator: a models.SRResNet
    :param lr_imgs: (1, 3, h, w) in [0, 1]
    :return: (sr_imgs (1, 3, 4h, 4w) in [0, 1], the model's output; stages: a list of (label, (C, H, W) maps) in
             the order of the network)
    """
    blocks = generator.residual_blocks
    shown_blocks = sorted({1, len(blocks) // 2, len(blocks)} - {0})  # 1, 8 and 16 of the 16 residual blocks
    last_block = generator.subpixel_convolutional_blocks[-1]
    modules = {"head": generator.conv_block1, **{f"block {n}": blocks[n - 1] for n in shown_blocks},
               "body": generator.conv_block2, "upsampling 1": generator.subpixel_convolutional_blocks[0],
               "last conv": last_block.conv}
    sr_imgs, outputs = run_with_hooks(generator, modules, lr_imgs)
    # Two maps no module returns, computed from the recorded ones with the network's own layers:
    # the long skip's sum (SRResNet.forward adds it), and the last sub-pixel block's output (on a CPU the network
    # runs that block's shuffle and the last convolution folded, fast_paths.py, so the block's forward is skipped).
    skip_sum = outputs["body"] + outputs["head"]
    with torch.no_grad():
        upsampled = last_block.prelu(last_block.pixel_shuffle(outputs["last conv"]))
    labels = [("head", "head: 9x9\nconv + PReLU"), *((f"block {n}", f"after residual\nblock {n}") for n in shown_blocks),
              ("body", "body's last\n3x3 conv + BN")]
    stages = [(text, outputs[name][0]) for name, text in labels]
    stages += [("long skip: plus\nthe head's output", skip_sum[0]),
               ("sub-pixel\nblock 1 (x2)", outputs["upsampling 1"][0]), ("sub-pixel\nblock 2 (x2)", upsampled[0])]
    return sr_imgs, stages


def draw_srresnet_features(path, generator, lr, channels=4):
    """
    What SRResNet computes, stage by stage, on one LR crop: a few feature maps after the 9x9 head, after residual
    blocks 1, 8 and 16, after the body's last convolution, after the long skip, after each x2 sub-pixel block, and
    the output. All the work happens at the LR size; only the two sub-pixel blocks make the maps larger, and the
    last 9x9 convolution turns 64 feature maps into the 3 colours.

    :param generator: a models.SRResNet (the shipped 'srresnet')
    :param lr: (h, w, 3) uint8 LR crop
    :param channels: maps shown per stage: those that vary most (a flat map would teach nothing)
    :return: sr_imgs (1, 3, 4h, 4w) in [0, 1] and the stages, as srresnet_stages returns them
    """
    lr_imgs = to_tensor(lr)
    sr_imgs, stages = srresnet_stages(generator, lr_imgs)
    figure, axes = plt.subplots(channels, len(stages) + 2, figsize=(1.1 * (len(stages) + 2), 1.1 * channels + 0.6))
    show(axes[0, 0], lr, f"LR input\n\n(3, {lr.shape[0]}, {lr.shape[1]})")
    show(axes[0, -1], to_uint8(sr_imgs), f"output: 9x9\nconv + tanh\n(3, {sr_imgs.shape[2]}, {sr_imgs.shape[3]})")
    for column, (label, maps) in enumerate(stages, start=1):
        strongest = maps.flatten(1).std(dim=1).argsort(descending=True)[:channels].sort().values
        for row, channel in enumerate(strongest.tolist()):
            show_map(axes[row, column], maps[channel].numpy(), f"{label}\n{tuple(maps.shape)}" if row == 0 else None)
            axes[row, column].text(0.02, 0.02, f"ch {channel}", transform=axes[row, column].transAxes, fontsize=6,
                                   color="yellow", va="bottom")
    for row in range(1, channels):  # the first and last columns hold one image each
        axes[row, 0].axis("off")
        axes[row, -1].axis("off")
    figure.suptitle(f"SRResNet (the shipped srresnet) inside: the {channels} most varied of each stage's maps, in "
                    f"grey from their lowest to their highest value", fontsize=9)
    figure.tight_layout()
    save(figure, path)
    return sr_imgs, stages


# ======================================================================================================
# Part 1, "Training with a pixel loss, and why the result is blurry": mse_blur.png
# ======================================================================================================
STRIPE_PERIOD = 3.0  # pixels: far finer than a x4 LR image can hold (its finest period is 8 HR pixels)
STRIPE_AMPLITUDE = 40.0  # 8-bit levels
MSE_MARGIN = 8  # HR pixels around mse_blur.png's images, cut off after the shrink (blur_demo)


def striped_candidates(base, count=4):
    """
    `count` HR images that differ only in fine detail: the photo `base` with thin vertical stripes (a sine of
    STRIPE_PERIOD pixels) shifted by a quarter period each time (0, 0.75, 1.5, 2.25 pixels).

    :param base: (H, W, 3) uint8
    :return: (list of (H, W, 3) uint8 images, the shifts in pixels)
    """
    shifts = [k * STRIPE_PERIOD / count for k in range(count)]
    columns = np.arange(base.shape[1], dtype=np.float64)
    images = [np.clip(np.round(base + STRIPE_AMPLITUDE * np.sin(2 * np.pi * (columns - shift) / STRIPE_PERIOD)
                               [None, :, None]), 0, 255).astype(np.uint8) for shift in shifts]
    return images, shifts


def fine_detail(img, rounds=8):
    """
    The part of a grey image (H, W) float that a x4 shrink removes: what is left when what survives the shrink
    (the shrink, enlarged again) is taken away. One round leaves some of it (the enlargement does not exactly undo
    the shrink), so it is taken away again, `rounds` times: on the figure's grass, 8 rounds leave less than half an
    8-bit level in the shrink, under the rounding of an LR image.
    """
    detail = img
    for _ in range(rounds):
        detail = detail - metrics.imresize(metrics.imresize(detail, scale=1 / SCALING_FACTOR), scale=SCALING_FACTOR)
    return detail


def texture_candidates(texture, size, count=4):
    """
    `count` HR images of a real texture that differ only in fine detail: the texture with its fine detail (what a
    x4 shrink removes, fine_detail) replaced by the fine detail of the texture 0, 1, 2, 3 pixels further right.
    The first one is the texture itself.

    :param texture: grey uint8 (H, W), at least size[0] x (size[1] + count + 8)
    :param size: (height, width) of the images
    :return: (list of (height, width, 3) uint8 images, the shifts in pixels)
    """
    texture = texture.astype(np.float64)
    height, width = size
    wide = width + 8  # a little wider than the images: the resizes misbehave at the right border, cut off below
    first = texture[:height, :wide]
    coarse = first - fine_detail(first)  # what the shrink sees of it
    images = []
    for shift in range(count):
        detail = fine_detail(texture[:height, shift:shift + wide])  # the fine detail moved by `shift` pixels
        grey = np.clip(np.round(coarse + detail), 0, 255).astype(np.uint8)[:, :width]
        images.append(np.repeat(grey[..., None], 3, axis=2))  # the networks take RGB: R = G = B
    return images, list(range(count))


def inner(img, margin):
    """An (H, W[, C]) image without `margin` pixels at each border."""
    return img[margin:img.shape[0] - margin, margin:img.shape[1] - margin]


def blur_demo(candidates, generator, margin=MSE_MARGIN):
    """
    The numbers behind mse_blur.png for one set of candidates (HR images equally plausible for one LR image).

    The LR images and the generator's answer are made from the whole candidates, then everything is measured and
    shown without a `margin` of HR pixels (margin / 4 LR pixels) at each border: the shrink mirrors an image at its
    borders, and the differences that makes there are not those of an LR crop cut from a whole photo.

    :param candidates: (H + 2 margin, W + 2 margin, 3) uint8 images, sides multiples of 4
    :return: dict with 'candidates' (the inner (H, W, 3) parts), 'lr' (the LR image of the first candidate, uint8),
             'hr_differences' and 'lr_differences' (RMS in 8-bit levels of each candidate, and of its LR image, from
             the first one's), 'average' (the candidates' mean, float64: the answer with the lowest expected squared
             error when each is as likely), 'sr' (the generator's answer for the LR image, uint8), 'sr_to_average'
             and 'sr_to_candidates' (RMS)
    """
    lr_margin = margin // SCALING_FACTOR
    lrs = [inner(shrink(img), lr_margin) for img in candidates]
    sr = inner(metrics.upscale_array(generator, shrink(candidates[0]), SCALING_FACTOR), margin)
    candidates = [inner(img, margin) for img in candidates]
    average = np.mean([img.astype(np.float64) for img in candidates], axis=0)
    return {"candidates": candidates, "lr": lrs[0], "hr_differences": [rms(img, candidates[0]) for img in candidates],
            "lr_differences": [rms(lr, lrs[0]) for lr in lrs], "average": average, "sr": sr,
            "sr_to_average": rms(sr, average), "sr_to_candidates": [rms(sr, img) for img in candidates]}


def draw_mse_blur(path, base, texture, generator):
    """
    Why a network trained with MSE paints blur. Each row: four HR images that differ in their fine detail (shifted
    stripes on a photo; a grass texture's fine detail moved by 0-3 pixels) but whose x4 LR images are nearly the
    same (the differences are printed: under a level, against tens for the HR images), so a network that sees the
    LR image cannot tell which one is true. The prediction with the lowest expected squared error is then their
    average, which has lost the detail; the shipped srresnet's answer for the LR image is close to that average,
    farther from every sharp candidate.

    :param base: (side + 2 MSE_MARGIN, side + 2 MSE_MARGIN, 3) uint8 photo crop (under the stripes); side a
                 multiple of 4. The figure shows the inner side x side part (blur_demo says why).
    :param texture: grey uint8 texture of at least (side + 2 MSE_MARGIN, side + 2 MSE_MARGIN + 12)
    :param generator: the generator to ask (the shipped 'srresnet')
    :return: [(the whole candidates, shifts, blur_demo's dict)] for the two rows
    """
    side = base.shape[0] - 2 * MSE_MARGIN
    rows = [("a photo with fine stripes", "stripes moved", *striped_candidates(base)),
            ("a grass texture", "fine detail moved", *texture_candidates(texture, base.shape[:2]))]
    results = []
    figure, axes = panel_grid(len(rows), 7, 2 * side, title_room=40)  # every HR pixel a 2 x 2 block
    for row, (name, what, candidates, shifts) in enumerate(rows):
        demo = blur_demo(candidates, generator)
        results.append((candidates, shifts, demo))
        print(f"{name}: HR differences {', '.join(f'{d:.1f}' for d in demo['hr_differences'])} levels; "
              f"their LR images differ by {', '.join(f'{d:.1f}' for d in demo['lr_differences'])} levels (RMS)")
        for k, (img, shift) in enumerate(zip(demo["candidates"], shifts)):
            title = (f"{what} {shift:g} px\nHR {demo['hr_differences'][k]:.0f}, LR "
                     f"{demo['lr_differences'][k]:.1f} from #1") if k else f"HR candidate #1:\n{name}"
            show(axes[row, k], img, title)
        show(axes[row, 4], demo["lr"], f"the LR image: all four\nwithin {max(demo['lr_differences']):.1f} of it",
             side=side)
        show(axes[row, 5], metrics.quantize_to_uint8(demo["average"] / 255),
             f"their average: MSE's\nbest answer; SR {demo['sr_to_average']:.0f} away")
        show(axes[row, 6], demo["sr"], f"srresnet(LR): {min(demo['sr_to_candidates']):.0f}-"
                                        f"{max(demo['sr_to_candidates']):.0f}\naway from the four")
    figure.suptitle("Four HR images, one LR image: the pixel-loss network answers with their average "
                    "(distances: RMS, in 8-bit levels)", fontsize=9)
    save(figure, path)
    return results


# ======================================================================================================
# Part 2, "Interleaved training": gan_iteration.png
# ======================================================================================================
def gan_iteration(generator, discriminator, vgg, lr_imgs, hr_imgs):
    """
    One SRGAN iteration as train_srgan.py runs it (its loss functions and its default weights, the SRGAN paper's:
    perceptual 1 / 12.75^2, adversarial 1e-3), without the optimisers' steps: we record the shapes that flow and which network's weights receive
    gradients in each step. The networks are copied first, so the ones given are left untouched.

    :param lr_imgs: (N, 3, h, w) in [0, 1];  hr_imgs: (N, 3, 4h, 4w) in [0, 1]
    :return: dict of shapes ('lr', 'sr', 'hr', 'logits', 'features') and of which networks got gradients in each
             step ('g_step', 'd_step': network name -> bool)
    """
    generator, discriminator, vgg = (copy.deepcopy(network) for network in (generator, discriminator, vgg))
    networks = {"generator": generator, "discriminator": discriminator, "vgg": vgg}
    generator.train()  # as in training: batch norm uses the batch's statistics (VGG stays in eval mode, frozen)
    discriminator.train()

    def received_gradients():  # which networks' weights got a gradient, then forget them for the next step
        got = {name: any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in network.parameters())
               for name, network in networks.items()}
        for network in networks.values():
            network.zero_grad(set_to_none=True)
        return got

    # 1. Generator step: D frozen for the step (gradients pass through it to the SR images, none stay in it).
    discriminator.requires_grad_(False)
    sr_imgs = generator(utils.convert_image(lr_imgs, "[0, 1]", generator.input_format))
    sr_imgs = utils.convert_image(sr_imgs, generator.output_format, "[0, 1]")  # (N, 3, H, W) in [0, 1]
    layer = next(iter(vgg.layer_weights))
    with torch.no_grad():  # phi(HR), for its shape: (N, 512, H / 16, W / 16) for VGG19's relu5_4
        features = vgg(utils.convert_image(hr_imgs, "[0, 1]", "imagenet-norm"))[layer]
    perceptual = train_srgan.perceptual_loss(vgg, sr_imgs, hr_imgs, "mse")
    fake_logits = discriminator(sr_imgs)  # (N,)
    adversarial = train_srgan.adversarial_loss(None, fake_logits, "vanilla", for_generator=True)
    weights = train_srgan.hyperparameters  # the script's defaults: SRGAN's loss weights
    (weights["perceptual_loss_weight"] * perceptual + weights["adversarial_loss_weight"] * adversarial).backward()
    g_step = received_gradients()

    # 2. Discriminator step: SR images detached, so nothing flows back into the generator.
    discriminator.requires_grad_(True)
    real_logits, fake_logits = discriminator(hr_imgs), discriminator(sr_imgs.detach())
    train_srgan.adversarial_loss(real_logits, fake_logits, "vanilla", for_generator=False).backward()
    d_step = received_gradients()
    return {"lr": tuple(lr_imgs.shape), "sr": tuple(sr_imgs.shape), "hr": tuple(hr_imgs.shape),
            "logits": tuple(fake_logits.shape), "features": tuple(features.shape), "layer": layer,
            "g_step": g_step, "d_step": d_step}


UPDATED, FROZEN, DATA, LOSS, IDLE = "#f6b26b", "#9fc5e8", "#ffffff", "#fff2cc", "#eeeeee"  # box colours


def box(ax, x, y, width, height, text, colour, dashed=False):
    """A rounded box with centred text on a diagram; returns its (x, y, width, height)."""
    ax.add_patch(patches.FancyBboxPatch((x, y), width, height, boxstyle="round,pad=0.05", facecolor=colour,
                                        edgecolor="grey" if dashed else "black", linestyle="--" if dashed else "-",
                                        lw=1))
    ax.text(x + width / 2, y + height / 2, text, ha="center", va="center", fontsize=7.5)
    return x, y, width, height


def arrow(ax, start, end, text=None, colour="black", dashed=False):
    """An arrow from `start` to `end` (x, y), with an optional label above its middle."""
    ax.annotate("", xy=end, xytext=start, arrowprops=dict(arrowstyle="-|>", color=colour, lw=1,
                                                          linestyle="--" if dashed else "-", shrinkA=0, shrinkB=0))
    if text:
        ax.text((start[0] + end[0]) / 2, (start[1] + end[1]) / 2 + 0.12, text, ha="center", va="bottom",
                fontsize=7, color=colour)


def backward_path(ax, points, text, text_at):
    """The way the gradient goes back: a dashed red line through `points`, its arrowhead at the last one."""
    xs, ys = zip(*points[:-1])
    ax.plot(xs, ys, color="C3", lw=1, ls="--")
    arrow(ax, points[-2], points[-1], colour="C3", dashed=True)
    ax.text(*text_at, text, ha="center", va="bottom", fontsize=7, color="C3")


def right(b, dy=0.0):
    """The middle of a box's right side, moved up by dy (left(b) is its left side's)."""
    return b[0] + b[2], b[1] + b[3] / 2 + dy


def left(b, dy=0.0):
    return b[0], b[1] + b[3] / 2 + dy


def draw_gan_iteration(path, generator, discriminator, vgg, lr_imgs, hr_imgs):
    """
    One SRGAN iteration as a data-flow picture, its shapes measured by running the networks on a small batch
    (gan_iteration). Top, the generator step: G makes SR images; the frozen VGG19 compares their features with HR's
    (the perceptual loss) and the discriminator, frozen for this step, scores them against the target 1, "HR" (the
    adversarial loss); the gradient flows through both into G, and only G changes. Bottom, the discriminator step:
    D scores HR images against 1 and the *detached* SR images against 0; only D changes. Orange: weights that
    receive gradients in that step (measured), blue: frozen ones.

    :param generator, discriminator, vgg: the networks (a generator with input_format / output_format, a
           models.Discriminator, a models.VGGFeatureExtractor or any module that returns {layer: features} and has
           layer_weights)
    :param lr_imgs: (N, 3, h, w) in [0, 1];  hr_imgs: (N, 3, 4h, 4w) in [0, 1]
    :return: gan_iteration's dict
    """
    run = gan_iteration(generator, discriminator, vgg, lr_imgs, hr_imgs)
    g, d = run["g_step"], run["d_step"]

    def network(got_gradients, frozen_note):  # a network's colour and note, from the measured gradients
        return (UPDATED, "updated") if got_gradients else (FROZEN, frozen_note)

    figure, ax = plt.subplots(figsize=(11, 6.4))
    ax.set_xlim(0, 22)
    ax.set_ylim(0, 12.8)
    ax.axis("off")

    # ---- 1. the generator step (top half) ----
    ax.text(0.1, 12.3, "1. generator step: discriminator.requires_grad_(False)", fontsize=9, weight="bold")
    lr_box = box(ax, 0.2, 9.6, 2.6, 1.2, f"LR lr_imgs\n{run['lr']}", DATA)
    colour, note = network(g["generator"], "frozen")
    g_box = box(ax, 3.6, 9.6, 2.6, 1.2, f"generator G\n(SRResNet)\n{note}", colour)
    sr_box = box(ax, 7.0, 9.6, 2.6, 1.2, f"SR sr_imgs\n{run['sr']}", DATA)
    colour, note = network(g["discriminator"], "frozen in this step")
    d_box = box(ax, 10.6, 10.5, 2.8, 1.2, f"discriminator D\n{note}", colour)
    colour, note = network(g["vgg"], "frozen, always")
    vgg_box = box(ax, 10.6, 7.9, 2.8, 1.2, f"VGG19 up to {run['layer']}\n{note}", colour)
    hr_box = box(ax, 7.0, 7.4, 2.6, 1.2, f"HR hr_imgs\n{run['hr']}", DATA)
    adv_box = box(ax, 14.4, 10.5, 3.2, 1.2, f"adversarial = BCE(D(SR), 1)\ntarget 1: \"HR\"\nlogits {run['logits']}",
                  LOSS)
    per_box = box(ax, 14.4, 7.9, 3.2, 1.2, f"perceptual =\nMSE(\u03c6(SR), \u03c6(HR))\n\u03c6: {run['features']}",
                  LOSS)
    weights = train_srgan.hyperparameters
    g_loss = box(ax, 18.6, 9.2, 3.2, 1.2, f"generator_loss =\n{weights['perceptual_loss_weight']:.4f} perceptual\n"
                                          f"+ {weights['adversarial_loss_weight']:g} adversarial", LOSS)
    for start, end in ((right(lr_box), left(g_box)), (right(g_box), left(sr_box)), (right(sr_box, 0.3), left(d_box)),
                       (right(sr_box, -0.3), left(vgg_box, 0.3)), (right(hr_box), left(vgg_box, -0.3)),
                       (right(d_box), left(adv_box)), (right(vgg_box), left(per_box)),
                       (right(adv_box), left(g_loss, 0.3)), (right(per_box), left(g_loss, -0.3))):
        arrow(ax, start, end)
    backward_path(ax, [(20.2, 9.2), (20.2, 7.0), (4.9, 7.0), (4.9, 9.6)],
                  "backward: through D and VGG into G; D's and VGG's own weights keep no gradient", (12.5, 6.55))

    # ---- 2. the discriminator step (bottom half) ----
    ax.plot([0, 22], [6.3, 6.3], color="grey", lw=0.6)
    ax.text(0.1, 5.7, "2. discriminator step: discriminator.requires_grad_(True)", fontsize=9, weight="bold")
    colour, note = network(d["generator"], "not in this step")
    old_g = box(ax, 3.6, 3.6, 2.6, 1.2, f"generator G\n{note}", colour if d["generator"] else IDLE, dashed=True)
    fake_box = box(ax, 7.0, 3.6, 2.6, 1.2, f"sr_imgs.detach()\n{run['sr']}", DATA)
    real_box = box(ax, 7.0, 1.4, 2.6, 1.2, f"HR hr_imgs\n{run['hr']}", DATA)
    colour, note = network(d["discriminator"], "frozen")
    d2_box = box(ax, 10.6, 2.0, 2.8, 2.2, f"discriminator D\n{note}", colour)
    fake_loss = box(ax, 14.4, 3.6, 3.2, 1.2, f"BCE(D(SR), 0)\ntarget 0: \"SR\"\nlogits {run['logits']}", LOSS)
    real_loss = box(ax, 14.4, 1.4, 3.2, 1.2, f"BCE(D(HR), 1)\ntarget 1: \"HR\"\nlogits {run['logits']}", LOSS)
    d_loss = box(ax, 18.6, 2.5, 3.2, 1.2, "discriminator_loss =\nthe sum of the two", LOSS)
    arrow(ax, right(old_g), left(fake_box), "detach", colour="grey", dashed=True)
    ax.text(6.6, 3.95, "\u2702", fontsize=11, ha="center", va="center", color="grey")  # the cut: no way back to G
    for start, end in ((right(fake_box), left(d2_box, 0.5)), (right(real_box), left(d2_box, -0.5)),
                       (right(d2_box, 0.5), left(fake_loss)), (right(d2_box, -0.5), left(real_loss)),
                       (right(fake_loss), left(d_loss, 0.3)), (right(real_loss), left(d_loss, -0.3))):
        arrow(ax, start, end)
    backward_path(ax, [(20.2, 2.5), (20.2, 0.8), (12.0, 0.8), (12.0, 2.0)],
                  "backward: into D only; the detach cut G off", (16.1, 0.35))

    legend = [patches.Patch(facecolor=UPDATED, edgecolor="black", label="weights updated (got gradients: measured)"),
              patches.Patch(facecolor=FROZEN, edgecolor="black", label="frozen (no gradient kept)"),
              patches.Patch(facecolor=DATA, edgecolor="black", label=f"tensors: shapes in this run (batch of "
                                                                      f"{run['lr'][0]})"),
              patches.Patch(facecolor=LOSS, edgecolor="black", label="losses (train_srgan.py's functions)")]
    ax.legend(handles=legend, loc="upper right", fontsize=7, ncol=2, frameon=False, bbox_to_anchor=(1.0, 1.0))
    figure.tight_layout()
    save(figure, path)
    return run


# ======================================================================================================
# Part 2, "Training SRGAN": gan_training.png
# ======================================================================================================
GAN_LOSSES = ("adversarial", "discriminator")  # the two that measure the contest, drawn apart from the others


def loss_curves(records):
    """The losses of a training log's records (training_log.read_jsonl): name -> (iterations, values)."""
    curves = {}
    for record in records:
        for name, value in (record["losses"].items() if isinstance(record.get("losses"), dict) else ()):
            if isinstance(value, (int, float)):
                iterations, values = curves.setdefault(name, ([], []))
                iterations.append(record["iteration"])
                values.append(value)
    return curves


def draw_gan_training(path, log_path):
    """
    A GAN run as its log tells it: the generator's adversarial loss and the discriminator's loss go up and down
    around each other, not steadily down, beside the values of a discriminator that cannot tell HR from SR (ln 2 and
    2 ln 2: sigmoid 0.5 for every image): a contest; the generator's other losses (those the log holds, whatever
    their weights in the run) barely move; the validation PSNR, against bicubic's, is how far the SR images stay
    from the truth. (The losses are the means between two reports.)

    :param log_path: a train_srgan.py log (log_srgan.jsonl, the JSON lines training_log.LogFiles writes)
    :return: (the loss curves, the validation scores) as loss_curves and plot_training.validation_of_records give
    """
    records = training_log.read_jsonl(log_path)
    curves = loss_curves(records)
    scores, bicubic = plot_training.validation_of_records(records, log_path)
    if not curves:
        raise ValueError(f"{log_path} holds no losses: give the log_srgan.jsonl of a train_srgan.py run.")

    figure, axes = plt.subplots(1, 3, figsize=(12, 3.4), sharex=True)  # one iteration axis for the three
    for name in GAN_LOSSES:
        if name in curves:
            axes[0].plot(*curves[name], lw=1, label=name)
    # Where the losses sit when D answers 0.5 ("can't tell") for every image: -ln 0.5 for the generator's one BCE,
    # twice that for the discriminator's two.
    axes[0].axhline(math.log(2), color="C0", ls=":", lw=1, label="ln 2: D says 0.5 to SR")
    axes[0].axhline(2 * math.log(2), color="C1", ls=":", lw=1, label="2 ln 2: D says 0.5 to all")
    axes[0].set_title("the contest: generator's adversarial, discriminator's loss", fontsize=9)
    for name, curve in curves.items():
        if name not in GAN_LOSSES:
            axes[1].plot(*curve, lw=1, label=name)
    axes[1].set_title("the generator's other losses", fontsize=9)
    for ax in axes[:2]:
        ax.set_xlabel("iteration", fontsize=8)
        ax.set_ylabel("loss (mean since the last report)", fontsize=8)
        ax.grid(alpha=0.3)
    plot_training.draw_validation(axes[2], scores, bicubic)  # plot_training.py's validation curve, as it draws it
    axes[2].set_title("validation", fontsize=9)
    for ax in axes:
        ax.legend(fontsize=7)
        ax.tick_params(labelsize=7)
    figure.suptitle(f"A GAN run, from its log ({Path(log_path).name})", fontsize=9)
    figure.tight_layout()
    save(figure, path)
    return curves, (scores, bicubic)


# ======================================================================================================
# Part 4, "The second-order degradation pipeline": degradations.png
# ======================================================================================================
def kernel_title(drawn):
    """What was drawn for a blur or sinc kernel (a record of degradations.degrade_batch's trace), as a title."""
    kind, side = drawn["kind"], f"{drawn['size']}x{drawn['size']}"
    if drawn["skipped"]:  # the stage-2 blur and the final sinc filter are left out now and then (20% by default)
        return f"none ({side} identity):\nthis draw leaves it out"
    if kind == "sinc":
        return f"sinc, {side},\ncutoff {drawn['cutoff'] / math.pi:.2f} \u03c0"
    title = f"{kind}, {side},\n\u03c3 {drawn['sigma_x']:.1f}" + (
        f" x {drawn['sigma_y']:.1f} px, {math.degrees(drawn['theta']):.0f}\u00b0" if kind.endswith("aniso") else " px")
    return title + (f", \u03b2 {drawn['beta']:.1f}" if "beta" in drawn else "")


def drawn_kernel(drawn):
    """The kernel a trace's record applied, cut from its zero padding to the side that was drawn: (side, side)."""
    pad = (drawn["kernel"].shape[-1] - drawn["size"]) // 2
    return drawn["kernel"][pad:pad + drawn["size"], pad:pad + drawn["size"]]


def degradation_panels(hr_imgs, seed):
    """
    Real-ESRGAN's second-order degradation of one HR image, step by step: degradations.degrade_batch, run with a
    trace, and each of its records made into a panel titled with what the pipeline drew for it (a blur: its kernel,
    then the blurred image; the final resize and sinc filter: one image).

    :param hr_imgs: (1, 3, H, W) in [0, 1], H and W multiples of 4
    :param seed: the seed of the torch.Generator all draws come from
    :return: (a list of (title, (1, 3, h, w) image in [0, 1] or (k, k) kernel), the LR image (1, 3, H / 4, W / 4)
             last; degrade_batch's trace)
    """
    trace = []
    degradations.degrade_batch(hr_imgs, SCALING_FACTOR, rng=torch.Generator().manual_seed(seed), trace=trace)
    panels = [(f"HR crop,\n{hr_imgs.shape[3]}x{hr_imgs.shape[2]}", hr_imgs)]
    for record in trace:
        step, drawn, imgs = record["step"], record["params"][0], record["imgs"]
        size = f"{imgs.shape[3]}x{imgs.shape[2]}"
        if step.startswith("blur"):
            panels += [(f"stage {step[-1]} kernel: {kernel_title(drawn)}", drawn_kernel(drawn)),
                       ("blurred with it", imgs)]
        elif step.startswith("resize"):
            panels.append((f"resize {drawn['direction']} x{drawn['scale']:.2f},\n{drawn['mode']}, -> {size}", imgs))
        elif step.startswith("noise"):
            colour = "grey" if drawn["grey"] else "colour"
            strength = (f"\u03c3 {drawn['sigma']:.1f} levels" if drawn["kind"] == "gaussian"
                        else f"scale {drawn['scale']:.2f}")
            panels.append((f"{drawn['kind'].capitalize()} noise, {colour},\n{strength}", imgs))
        elif step.startswith("jpeg"):
            panels.append((f"JPEG, quality {drawn['quality']}", imgs))
        elif step == "final resize":
            resize_mode = drawn["mode"]  # shown with the sinc filter that follows it
        elif step == "final sinc":
            then = "" if drawn["skipped"] else ", then the sinc"
            panels += [(f"final: {kernel_title(drawn)}", drawn_kernel(drawn)),
                       (f"resize to {size},\n{resize_mode}{then}", imgs)]
        else:  # the output, rounded to 8-bit levels: the last panel's image, as an LR image is stored
            panels[-1] = (panels[-1][0] + ":\nthe LR image", imgs)
    return panels, trace


def draw_degradations(path, hr, seed=DEGRADATION_SEED):
    """
    Real-ESRGAN's second-order degradation pipeline on one crop, step by step, each panel titled with what was drawn
    for it: stage 1 (a random blur kernel, the blurred crop, a random resize, noise, JPEG), stage 2 (the same, milder,
    around the LR size) and the final resize to the LR size with a sinc filter and JPEG, in a random order. Every
    image fills the same square, so a smaller image shows larger pixels; kernels are drawn in their own colours.

    :param hr: (H, W, 3) uint8, sides multiples of 4
    :param seed: the seed of the torch.Generator all draws come from
    :return: degradation_panels' (panels, trace)
    """
    panels, trace = degradation_panels(to_tensor(hr), seed)
    figure, axes = panel_grid(2, 7, hr.shape[0], title_room=44, top=40)  # the HR crop: one screen pixel per pixel
    # Row 1: the HR crop and stage 1; row 2: stage 2 and the final step (the last panel of row 1 stays empty).
    places = list(axes[0, :6]) + list(axes[1, :])
    axes[0, 6].axis("off")
    for ax, (title, item) in zip(places, panels):
        if item.dim() == 2:  # a kernel: its weights, 0 in white
            limit = float(item.abs().max())
            ax.imshow(item.numpy(), cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
            ax.set_title(title, fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
        else:
            show(ax, to_uint8(item), title, side=hr.shape[0], fontsize=7)
    figure.suptitle(f"Real-ESRGAN's second-order degradations, one draw (seed {seed}): HR -> x{SCALING_FACTOR} LR\n"
                    f"every image fills the same square (a smaller one shows larger pixels); kernels: red > 0 > blue",
                    fontsize=9)
    save(figure, path)
    return panels, trace


# ======================================================================================================
# The inputs of the figures, and the command line
# ======================================================================================================
class ShippedInputs:
    """What the figures are drawn from, each loaded once, when a figure first needs it."""

    @functools.cached_property
    def photo(self):
        return skimage.data.chelsea()  # (300, 451, 3) uint8, the cat

    @functools.cached_property
    def generators(self):
        # The shipped models (weights/, checked against their SHA-256), in eval mode on the CPU.
        return {name: inference.load_generator(name)[0] for name in ("compact", "srresnet")}

    @functools.cached_property
    def discriminator(self):
        torch.manual_seed(0)  # its random initial weights: the figure shows shapes and gradients, not scores
        return models.Discriminator()

    @functools.cached_property
    def vgg(self):
        # Random weights (the ImageNet ones are a download): the same layers, so the same shapes and the same
        # gradient flow.
        torch.manual_seed(0)
        return models.VGGFeatureExtractor({"relu5_4": 1.0}, weights="random")

    def gan_batch(self):
        """Two HR crops of 96 x 96 and their LR crops (24 x 24): (2, 3, 24, 24) and (2, 3, 96, 96), in [0, 1]."""
        top, left, side = EYE_CROP
        hr = [crop(self.photo, top, left + shift, side) for shift in (0, side)]
        return torch.cat([to_tensor(shrink(img)) for img in hr]), torch.cat([to_tensor(img) for img in hr])


def make_figures(inputs, log_path):
    """Every figure: name -> function(path) that draws it from `inputs` (a ShippedInputs)."""
    def eye():  # (96, 96, 3) uint8; shrink(eye()): its (24, 24, 3) LR crop
        return crop(inputs.photo, *EYE_CROP)

    return {
        "upsamplers": lambda path: draw_upsamplers(path, eye(), inputs.generators),
        "pixel_shuffle": lambda path: draw_pixel_shuffle(path, inputs.generators["srresnet"], shrink(eye())),
        "srresnet_features": lambda path: draw_srresnet_features(path, inputs.generators["srresnet"], shrink(eye())),
        "mse_blur": lambda path: draw_mse_blur(path, crop(inputs.photo, *CHEEK_CROP),
                                               crop(skimage.data.grass(), *GRASS_CROP), inputs.generators["srresnet"]),
        "gan_iteration": lambda path: draw_gan_iteration(path, inputs.generators["srresnet"], inputs.discriminator,
                                                         inputs.vgg, *inputs.gan_batch()),
        "gan_training": lambda path: draw_gan_training(path, log_path),
        "degradations": lambda path: draw_degradations(path, crop(inputs.photo, *DEGRADATION_CROP)),
    }


FIGURE_NAMES = tuple(make_figures(None, None))  # (the functions are only made here, not run)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", choices=FIGURE_NAMES,
                        help="draw only this figure (may be given several times; default: all)")
    parser.add_argument("--output_folder", default=str(OUTPUT_FOLDER),
                        help=f"where to write <name>.png (default: {OUTPUT_FOLDER.relative_to(REPO_ROOT)})")
    parser.add_argument("--log", default=str(DEFAULT_LOG),
                        help=f"the train_srgan.py log gan_training.png draws (default: "
                             f"{DEFAULT_LOG.relative_to(REPO_ROOT)})")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    output_folder = Path(args.output_folder)
    utils.check_output_folder(output_folder)  # a file there: one line, before any work
    figures = make_figures(ShippedInputs(), Path(args.log))
    paths = []
    # One thread: the networks' float sums then run in one order whatever the number of cores, so that a second
    # run writes the same bytes. (The figures take seconds.)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name in args.only or FIGURE_NAMES:
            if name == "gan_training" and not Path(args.log).is_file():
                print(f"Skipped {name}.png: no training log at {args.log} (give one with --log)")
                continue
            output_folder.mkdir(parents=True, exist_ok=True)
            paths.append(output_folder / f"{name}.png")
            figures[name](paths[-1])
    finally:
        torch.set_num_threads(threads)
    return paths


if __name__ == "__main__":
    cli.run_cli(main)
