"""Every network of the tutorial, from SRResNet (2017) to Real-ESRGAN (2021), in one file read top to bottom.

Contents, in the order the papers introduced them:

  Part A -- SRResNet and SRGAN (Ledig et al., 2017, "Photo-Realistic Single Image Super-Resolution Using a GAN")
      ConvolutionalBlock, SubPixelConvolutionalBlock, ResidualBlock   the building blocks (icnr_, icnr_srresnet_:
                                                                      another start for the sub-pixel convolutions)
      SRResNet, Generator                                             the generator (trained with MSE, then as a GAN)
      BinomialBlur                                                    a fixed low-pass filter: the discriminators'
                                                                      antialias=True (a departure) puts it before
                                                                      each stride-2 step
      Discriminator                                                   the SRGAN discriminator (one logit per image)
      load_vgg19, VGGFeatureExtractor                                 the frozen VGG19 behind the perceptual losses

  Part B -- ESRGAN (Wang et al., 2018, "ESRGAN: Enhanced Super-Resolution GANs")
      ResidualDenseBlock, RRDB, RRDBNet                               the residual-in-residual dense generator

  Part C -- Real-ESRGAN (Wang et al., 2021, "Real-ESRGAN: Training Real-World Blind Super-Resolution ...")
      UNetDiscriminatorSN                                             U-Net discriminator with spectral norm

  Part D -- Real-ESRGAN's compact network (realesr-animevideov3, realesr-general-x4v3)
      SRVGGNetCompact                                                 a plain stack of convolutions at LR size, and
                                                                      why its initialisation matters

  Later additions: pixel-unshuffle x2 / x1 models
      pad_to_multiple                                                 SRResNet(unshuffle_scale=r) and RRDBNet(scale=2
                                                                      or 1): an x4 network behind a pixel-unshuffle

  Choosing a generator by name (at the end of the file)
      build_generator                                                 'srresnet' | 'rrdb' | 'compact' -> a generator,
                                                                      from the constructor arguments a checkpoint
                                                                      stores
      generator_from_weights, check_weights                           the same from a file, once its tensors are
                                                                      known to fit (shapes, dtypes, finite values)

Speed paths for particular hardware (a faster PReLU backward on a CPU, SRResNet's last convolution on the folded
grid on a CPU) live in fast_paths.py: the networks here use them without changing what they compute.

Conventions shared by the whole project:
  * image tensors are float32 (N, C, H, W);
  * every generator says what it eats and what it gives through the attributes `input_format` and `output_format`
    (strings understood by utils.convert_image), and how much it enlarges through the int attribute
    `scaling_factor` (pixel-unshuffle models also have `unshuffle_scale`); scripts convert with these and never
    need to know which architecture they hold.
"""
import math
import os

import torch
import torch.nn.functional as F
from torch import nn

import fast_paths


# ======================================================================================================
# Part A -- SRResNet and SRGAN
# ======================================================================================================

class ConvolutionalBlock(nn.Module):
    """Convolution -> optional batch norm -> optional activation: the Lego brick of SRResNet and its discriminator.

    'Same' padding (kernel_size // 2) keeps the spatial size when stride is 1; stride 2 halves it (the
    discriminator's way of shrinking the image instead of max-pooling).

    Args:
        in_channels, out_channels: channels in and out.
        kernel_size: odd int.
        stride: 1 or 2.
        batch_norm: add nn.BatchNorm2d after the convolution.
        activation: 'prelu' | 'leakyrelu' (slope 0.2) | 'tanh' | None (case-insensitive).
    Shapes: (N, in_channels, H, W) -> (N, out_channels, H / stride, W / stride).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, batch_norm=False, activation=None):
        super().__init__()
        activations = {
            "prelu": lambda: fast_paths.PReLU(),  # nn.PReLU: one learnable negative slope shared by all channels, as
            #   in SRGAN (fast_paths.PReLU: the same, with a faster backward when training on a CPU)
            "leakyrelu": lambda: nn.LeakyReLU(0.2),  # fixed slope 0.2, as in the SRGAN discriminator
            "tanh": lambda: nn.Tanh(),  # squashes the generator's output into [-1, 1]
        }
        if activation is not None:
            activation = activation.lower()
            if activation not in activations:
                raise ValueError(f"activation must be one of {sorted(activations)} or None, got {activation!r}")

        layers = [nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2)]
        if batch_norm:
            layers.append(nn.BatchNorm2d(out_channels))
        if activation is not None:
            layers.append(activations[activation]())
        self.conv_block = nn.Sequential(*layers)

    def forward(self, x):
        return self.conv_block(x)  # (N, out_channels, H / stride, W / stride)


class SubPixelConvolutionalBlock(nn.Module):
    """Learned x`scaling_factor` upsampling: a convolution makes s*s times more channels, PixelShuffle re-arranges them.

    Why not a transposed convolution? Shi et al. (ESPCN, 2016) showed that computing s*s sub-pixel values per
    low-resolution pixel and then interleaving them ("pixel shuffle") costs less (the convolution runs at low
    resolution) and avoids the uneven overlap of transposed-convolution kernels that makes their checkerboards.
    (The s*s sub-pixel kernels are still separate weights: where they differ, the output repeats the difference every
    s pixels, a fainter pattern that eval.py --metrics spectral measures. PyTorch's default init draws them apart, so
    an untrained block prints that pattern; icnr_ below starts them equal, but training brings a pattern back, no
    fainter (docs/training.md, "Where the grid comes from"): it is an option, not the default.)

    Shapes: (N, n_channels, H, W) -> conv -> (N, n_channels * s^2, H, W) -> shuffle -> (N, n_channels, H*s, W*s).
    """

    def __init__(self, kernel_size=3, n_channels=64, scaling_factor=2):
        super().__init__()
        self.conv = nn.Conv2d(n_channels, n_channels * scaling_factor ** 2, kernel_size, padding=kernel_size // 2)
        self.pixel_shuffle = nn.PixelShuffle(scaling_factor)
        self.prelu = fast_paths.PReLU()  # nn.PReLU (a faster backward when training on a CPU: fast_paths.py)

    def forward(self, x):
        x = self.conv(x)  # (N, n_channels * s^2, H, W)
        x = self.pixel_shuffle(x)  # (N, n_channels, H * s, W * s)
        return self.prelu(x)


@torch.no_grad()
def icnr_(conv, scaling_factor):
    """ICNR (Aitken et al. 2017, "Checkerboard artifact free sub-pixel convolution"): initialise, in place, a
    convolution that feeds a PixelShuffle(s) so that the s*s sub-kernels of each output channel are equal.

    PixelShuffle makes output channel c's s x s cell out of the convolution's channels c*s*s + k, k = 0 .. s*s - 1.
    One kernel per output channel is drawn with PyTorch's default Conv2d initialisation (a Conv2d of out_channels / s^2
    outputs: the same fan-in, so the same scale) and repeated s*s times in that order (repeat_interleave, not
    repeat), biases too. Convolution and shuffle then start as "that smaller convolution, then nearest upsampling",
    whose output has nothing at the lattice frequencies (an untrained x4 SRResNet: a lattice of about 0 dB instead of
    26). Not the default: after a short SRResNet training (4 blocks of 32 channels, 4,500 iterations on the quick
    start's photos) the pattern is back, no fainter (train_srresnet.py --icnr).

    :param conv: nn.Conv2d with out_channels a multiple of s^2 (weight (C s^2, C_in, k, k)); modified in place
    :param scaling_factor: s, the PixelShuffle's factor
    :return: conv
    """
    n_phases = scaling_factor ** 2
    if conv.out_channels % n_phases:
        raise ValueError(f"ICNR needs out_channels divisible by scaling_factor^2 = {n_phases}, got {conv.out_channels}")
    base = nn.Conv2d(conv.in_channels, conv.out_channels // n_phases, conv.kernel_size, bias=conv.bias is not None)
    conv.weight.copy_(base.weight.repeat_interleave(n_phases, dim=0))  # (C s^2, C_in, k, k): kernel c at c*s*s + k
    if conv.bias is not None:
        conv.bias.copy_(base.bias.repeat_interleave(n_phases))  # (C s^2,)
    return conv


def icnr_srresnet_(generator):
    """icnr_ for each sub-pixel convolution of an SRResNet (train_srresnet.py --icnr), in place; returns generator."""
    for block in generator.subpixel_convolutional_blocks:
        icnr_(block.conv, block.pixel_shuffle.upscale_factor)
    return generator


class ResidualBlock(nn.Module):
    """conv-BN-PReLU, conv-BN, plus the input: the block SRResNet stacks 16 times.

    The skip connection means each block only learns a *correction* to its input, which keeps gradients flowing
    through a deep stack (He et al., 2016). Shapes are unchanged: (N, n_channels, H, W) -> same.
    """

    def __init__(self, kernel_size=3, n_channels=64):
        super().__init__()
        self.conv_block1 = ConvolutionalBlock(n_channels, n_channels, kernel_size, batch_norm=True, activation="prelu")
        self.conv_block2 = ConvolutionalBlock(n_channels, n_channels, kernel_size, batch_norm=True, activation=None)

    def forward(self, x):
        residual = x
        x = self.conv_block1(x)
        x = self.conv_block2(x)
        return x + residual


class SRResNet(nn.Module):
    """The SRResNet generator of the SRGAN paper.

    Pipeline (shapes for an h x w LR input at x4; the paper trains on 24 x 24 crops, so h = w = 24):
        (N, 3, h, w) in [0, 1]
        -> 9x9 conv + PReLU                          (N, 64, h, w)     the "large kernel" sees a wide context
        -> 16 residual blocks                        (N, 64, h, w)     the body: all the heavy lifting at LR size
        -> 3x3 conv + BN, plus the 9x9 conv's output (N, 64, h, w)     a long skip around the whole body
        -> 2 sub-pixel blocks, x2 each               (N, 64, 4h, 4w)   upsampling happens only at the very end
        -> 9x9 conv + tanh                           (N, 3, 4h, 4w) in [-1, 1]

    Args:
        large_kernel_size: kernel of the first and last convolutions (9).
        small_kernel_size: kernel everywhere else (3).
        n_channels: feature channels in the body (64).
        n_blocks: number of residual blocks (16).
        scaling_factor: how much the network enlarges overall (the attribute `scaling_factor`): 2, 4 or 8 (one x2
            sub-pixel block per factor of 2), or, behind a pixel-unshuffle, 1, 2 or 4.
        unshuffle_scale: r = 1 (the paper's network), or 2 / 4: an x(scaling_factor * r) SRResNet fed the input
            pixel-unshuffled by r, e.g. x1 = an x4 body behind r = 4 (see "Pixel-unshuffle" at the end of the file).
    """

    input_format = "[0, 1]"
    output_format = "[-1, 1]"

    def __init__(self, large_kernel_size=9, small_kernel_size=3, n_channels=64, n_blocks=16, scaling_factor=4,
                 unshuffle_scale=1):
        super().__init__()
        scaling_factor, unshuffle_scale = int(scaling_factor), int(unshuffle_scale)
        body_scale = scaling_factor * unshuffle_scale  # what the sub-pixel blocks upscale
        if unshuffle_scale == 1 and scaling_factor not in {2, 4, 8}:
            raise ValueError(f"SRResNet's scaling_factor must be 2, 4 or 8, got {scaling_factor}")
        if unshuffle_scale < 1 or body_scale not in {2, 4, 8}:
            raise ValueError(f"unshuffle_scale {unshuffle_scale} with an overall scaling_factor {scaling_factor} "
                             f"needs an x{body_scale} SRResNet, which does not exist: use unshuffle_scale 2 or 4, "
                             f"with scaling_factor * unshuffle_scale 2, 4 or 8 (e.g. 2 and 2, or 1 and 4)")
        self.scaling_factor = scaling_factor  # overall: what the scripts read
        self.unshuffle_scale = unshuffle_scale

        # Front end: from 3 colour channels (3 r^2 for the folded input of a pixel-unshuffle model) to n_channels
        # features, with a large kernel.
        self.conv_block1 = ConvolutionalBlock(3 * unshuffle_scale ** 2, n_channels, large_kernel_size,
                                              activation="prelu")

        # Body: residual blocks at low resolution, then a convolution closing the long skip connection.
        self.residual_blocks = nn.Sequential(
            *[ResidualBlock(small_kernel_size, n_channels) for _ in range(n_blocks)])
        self.conv_block2 = ConvolutionalBlock(n_channels, n_channels, small_kernel_size, batch_norm=True)

        # Upsampling: one x2 sub-pixel block per factor of 2 (x4 -> 2 blocks).
        n_subpixel_blocks = int(math.log2(body_scale))
        self.subpixel_convolutional_blocks = nn.Sequential(
            *[SubPixelConvolutionalBlock(small_kernel_size, n_channels, scaling_factor=2)
              for _ in range(n_subpixel_blocks)])

        # Back end: back to 3 colour channels, tanh into [-1, 1].
        self.conv_block3 = ConvolutionalBlock(n_channels, 3, large_kernel_size, activation="tanh")

    def forward(self, lr_imgs):
        """(N, 3, H, W) in [0, 1] -> (N, 3, H * scaling_factor, W * scaling_factor) in [-1, 1]."""
        height, width = lr_imgs.shape[-2:]
        if self.unshuffle_scale > 1:  # x2 / x1 variants: fold r x r pixel blocks into channels first
            lr_imgs, _ = pad_to_multiple(lr_imgs, self.unshuffle_scale)
            lr_imgs = F.pixel_unshuffle(lr_imgs, self.unshuffle_scale)  # (N, 3 r^2, H / r, W / r)
        output = self.conv_block1(lr_imgs)  # (N, 64, H, W)
        residual = output
        output = self.residual_blocks(output)  # (N, 64, H, W)
        output = self.conv_block2(output) + residual  # long skip: the body learns what to add to the shallow features
        sr_imgs = self.upsample_and_output(output)  # (N, 3, H * s, W * s), in [-1, 1]
        if self.unshuffle_scale > 1:  # crop away what the padding added
            sr_imgs = sr_imgs[..., :height * self.scaling_factor, :width * self.scaling_factor]
        return sr_imgs

    def upsample_and_output(self, features):
        """
        The paper's upsampling and last convolution: (N, 64, H, W) -> (N, 3, s H, s W) in [-1, 1]. On a CPU the same
        function runs faster with the last convolution one pixel shuffle earlier (fast_paths.folded_upsample_and_output).
        """
        if fast_paths.can_fold_output(self.conv_block3, features):
            return fast_paths.folded_upsample_and_output(self.subpixel_convolutional_blocks, self.conv_block3, features)
        return self.conv_block3(self.subpixel_convolutional_blocks(features))


class Generator(SRResNet):
    """The SRGAN generator: exactly SRResNet, trained adversarially instead of (only) with MSE.

    It is a subclass rather than a wrapper so that the state-dict keys are identical: the SRGAN recipe starts from
    a trained SRResNet (to avoid the GAN's poor early local optima), which is simply
    `generator.load_state_dict(srresnet_checkpoint['generator'])`.
    """


class BinomialBlur(nn.Module):
    """A fixed low-pass filter, [1, 2, 1] x [1, 2, 1] / 16 on each channel, borders repeated: (N, C, H, W) -> the same
    shape. It removes the frequencies that a stride-2 step would alias (Zhang, "Making convolutional networks
    shift-invariant again", ICML 2019). No weights: the filter is a constant, not saved in state dicts."""

    def __init__(self):
        super().__init__()
        taps = torch.tensor([1.0, 2.0, 1.0])
        self.register_buffer("kernel", torch.outer(taps, taps) / 16, persistent=False)         # (3, 3)

    def forward(self, x):
        channels = x.shape[1]
        kernel = self.kernel.to(x.dtype).expand(channels, 1, 3, 3)
        return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=channels)


class Discriminator(nn.Module):
    """The SRGAN discriminator: is this (N, 3, H, W) image a real HR image or a generated one?

    Eight convolutional blocks alternate stride 1 (double the channels, 64 -> 128 -> 256 -> 512) and stride 2
    (halve the size), with LeakyReLU(0.2) and batch norm everywhere but the first block. An adaptive average pool
    to 6x6 (the size a 96x96 crop reaches after four halvings) makes any input size work, then
    Dense(1024) - LeakyReLU - Dense(1).

    Output: (N,) raw logits -- no sigmoid here; use nn.BCEWithLogitsLoss, which fuses the sigmoid into the loss in
    a numerically stable way. Input range: train_srgan.py feeds HR and SR images in [0, 1].

    antialias=True (a departure, off by default): each stride-2 block first low-passes its input (BinomialBlur), as
    UNetDiscriminatorSN(antialias=True) does and for the same reason: the checkerboard that strided convolutions put
    into the gradient the generator learns from. The weights keep their names and shapes.
    """

    def __init__(self, kernel_size=3, n_channels=64, n_blocks=8, fc_size=1024, first_kernel_size=None,
                 antialias=False):
        """kernel_size: of every convolution; first_kernel_size: of the first one, if other (None: kernel_size). The
        SRGAN paper's figure and the classic tutorial's code use 3 x 3 throughout; the tutorial's text gives the first
        convolution 9 x 9 (train_srgan.py's first_kernel_size_d)."""
        super().__init__()
        blocks = []
        in_channels = 3
        for i in range(n_blocks):
            # Even blocks: stride 1 and (except the first, which sets n_channels) double the channels.
            # Odd blocks: stride 2, same channels -- they halve the spatial size.
            if i % 2 == 0:
                out_channels = n_channels if i == 0 else in_channels * 2
                stride = 1
            else:
                out_channels = in_channels
                stride = 2
            block_kernel_size = first_kernel_size if i == 0 and first_kernel_size else kernel_size
            blocks.append(ConvolutionalBlock(in_channels, out_channels, block_kernel_size, stride=stride,
                                             batch_norm=(i != 0), activation="leakyrelu"))
            in_channels = out_channels
        self.conv_blocks = nn.Sequential(*blocks)
        self.blur = BinomialBlur() if antialias else nn.Identity()  # before each stride-2 block
        self.adaptive_pool = nn.AdaptiveAvgPool2d((6, 6))
        self.fc1 = nn.Linear(out_channels * 6 * 6, fc_size)
        self.leaky_relu = nn.LeakyReLU(0.2)
        self.fc2 = nn.Linear(fc_size, 1)

    def forward(self, imgs):
        """(N, 3, H, W) -> (N,) logits (positive: 'looks real')."""
        x = imgs
        for index, block in enumerate(self.conv_blocks):  # odd blocks halve the size (blur: nothing, or a low-pass)
            x = block(self.blur(x) if index % 2 == 1 else x)  # ... -> (N, 512, H / 16, W / 16)
        x = self.adaptive_pool(x)  # (N, 512, 6, 6)
        x = self.leaky_relu(self.fc1(x.flatten(1)))  # (N, fc_size)
        return self.fc2(x).squeeze(1)  # (N,)


# ------------------------------------------------------------------------------------------------------
# The frozen VGG19 behind the perceptual losses
# ------------------------------------------------------------------------------------------------------

# VGG19's convolutions per block (all 3x3), each followed by a ReLU; each block ends in a 2x2 max-pool.
VGG19_CONVS_PER_BLOCK = (2, 2, 4, 4, 4)


def vgg19_layer_names():
    """Names of the modules of torchvision's vgg19().features, in order (37 of them).

    'conv{b}_{k}' is the k-th convolution of block b, 'relu{b}_{k}' its ReLU, 'pool{b}' the max-pool closing
    block b. So 'conv5_4' is the feature map before its ReLU and 'relu5_4' the same one after it (the SRGAN paper's
    "VGG54", phi_{5,4}, is taken after the activation: relu5_4; ESRGAN's is conv5_4). The list index is the module's
    index in torchvision's nn.Sequential, so this list is the one place that knows the layout.
    """
    names = []
    for block, n_convs in enumerate(VGG19_CONVS_PER_BLOCK, start=1):
        for k in range(1, n_convs + 1):
            names += [f"conv{block}_{k}", f"relu{block}_{k}"]
        names.append(f"pool{block}")
    return names


def load_vgg19(weights="imagenet"):
    """torchvision's VGG19 with the requested weights.

    Args:
        weights: 'imagenet' (torchvision's IMAGENET1K_V1 weights, downloaded once into the torch hub cache),
                 a path to that file (vgg19-dcbb9e9d.pth, a state dict), or 'random' (random initialisation; an
                 explicit opt-in, for smoke runs and tests -- a random VGG gives a meaningless perceptual loss).
    Returns:
        torchvision.models.VGG (eval mode, on CPU).
    Raises:
        RuntimeError saying where to put the file when the ImageNet weights cannot be downloaded,
        FileNotFoundError for a path that does not exist.
    """
    import torchvision  # imported here so that models.py works (without VGG) even where torchvision is broken
    from torchvision.models import VGG19_Weights

    if weights == "random":
        model = torchvision.models.vgg19(weights=None)
    elif weights == "imagenet":
        try:
            model = torchvision.models.vgg19(weights=VGG19_Weights.IMAGENET1K_V1)
        except (OSError, RuntimeError, ValueError) as error:  # URLError (offline) is an OSError; hash errors Runtime
            url = VGG19_Weights.IMAGENET1K_V1.url
            file_name = url.rsplit("/", 1)[-1]
            folder = os.path.join(torch.hub.get_dir(), "checkpoints")
            raise RuntimeError(
                f"Could not get the ImageNet VGG19 weights needed by the perceptual loss ({type(error).__name__}: "
                f"{error}). Download {file_name} from {url} on a machine with internet access and put it in "
                f"{folder} (where torchvision looks for it), or pass the path to the file as the VGG weights "
                f"instead of 'imagenet'; use 'random' only for smoke runs and tests. If a partial or corrupt "
                f"{file_name} is already in that folder, delete it first.") from error
    else:
        path = os.fspath(weights)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"VGG19 weights file not found: {path!r}. Pass 'imagenet', 'random', or the path to torchvision's "
                f"vgg19-dcbb9e9d.pth.")
        model = torchvision.models.vgg19(weights=None)
        try:
            state_dict = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(state_dict)
        except Exception as error:  # not a pickle, not a state dict, other keys/shapes: all the same user error
            raise ValueError(
                f"{path!r} is not torchvision's VGG19 state dict (vgg19-dcbb9e9d.pth from "
                f"{VGG19_Weights.IMAGENET1K_V1.url}): {type(error).__name__}: {str(error)[:300]}") from error
    return model.eval()


class VGGFeatureExtractor(nn.Module):
    """The frozen VGG19 behind the perceptual losses: its feature maps at the layers you name.

    Layers have their literal names (vgg19_layer_names): 'conv5_4' is the output of the 4th convolution of block 5,
    BEFORE its ReLU; 'relu5_4' is the same feature map after the ReLU (the SRGAN paper's phi_{5,4}: "the feature
    map obtained by the 4th convolution (after activation) before the 5th max-pooling layer").
      * SRGAN compares relu5_4.
      * ESRGAN compares conv5_4: after the ReLU most features are zero (sparse), which weakens the supervision and
        lets the brightness drift.
      * Real-ESRGAN weighs the L1 distances of conv1_2, conv2_2, conv3_4, conv4_4 and conv5_4 by 0.1, 0.1, 1, 1, 1:
        shallow layers keep colours and fine texture honest, deep ones the structure.

    Frozen means: no parameter requires a gradient (the optimizer never touches VGG, and backward does not waste
    memory on its weight gradients -- gradients still flow *through* it to the generator), and the module stays in
    eval mode even when a parent calls .train() (VGG19 has no dropout/BN in `features`, but a loss network must
    never change behaviour between training and evaluation).

    Args:
        layer_weights: dict {'relu5_4': 1.0, ...} or a list of layer names (then every weight is 1.0); kept as the
                       attribute `layer_weights` for the loss to use. Default: Real-ESRGAN's five layers.
        weights: see load_vgg19.
        pooling: 'max' (VGG19's own 2x2 max-pooling) or 'avg' (2x2 average pooling in its place, as Gatys et al. did
                 for texture synthesis: smoother gradients. With random VGG19 weights, 200 GAN iterations from the
                 shipped `realistic` printed a grid with max-pooling (lattice +9 dB on Set14) and a faint one with
                 average pooling (+5 dB): docs/training.md, "Where the grid comes from").
    Forward: (N, 3, H, W) 'imagenet-norm' (utils.convert_image) -> {name: feature map}, e.g. relu5_4 or conv5_4:
    (N, 512, H / 16, W / 16). VGG only runs as deep as the deepest layer asked for.
    """

    def __init__(self, layer_weights=None, weights="imagenet", pooling="max"):
        super().__init__()
        if pooling not in ("max", "avg"):
            raise ValueError(f"pooling must be 'max' or 'avg', not {pooling!r}")
        if layer_weights is None:
            layer_weights = {"conv1_2": 0.1, "conv2_2": 0.1, "conv3_4": 1.0, "conv4_4": 1.0, "conv5_4": 1.0}
        if not isinstance(layer_weights, dict):
            layer_weights = {name: 1.0 for name in layer_weights}
        if not layer_weights:
            raise ValueError("VGGFeatureExtractor needs at least one layer name")
        names = vgg19_layer_names()
        for name in layer_weights:
            if name not in names:
                raise ValueError(f"unknown VGG19 layer {name!r}; valid names: {', '.join(names)} (convX_Y: before "
                                 f"the ReLU, reluX_Y: after it)")
        indices = {name: names.index(name) for name in layer_weights}

        layers = list(load_vgg19(weights).features.children())[:max(indices.values()) + 1]
        # torchvision's ReLUs work in place; ours must not, or a feature map taken *before* a ReLU (ESRGAN's
        # conv5_4) would be overwritten by that ReLU when the next layer runs.
        layers = [nn.ReLU(inplace=False) if isinstance(layer, nn.ReLU) else layer for layer in layers]
        if pooling == "avg":
            layers = [nn.AvgPool2d(2) if isinstance(layer, nn.MaxPool2d) else layer for layer in layers]
        self.features = nn.Sequential(*layers)
        for param in self.features.parameters():
            param.requires_grad = False
        self.layer_weights = dict(layer_weights)
        self._index_to_name = {index: name for name, index in indices.items()}
        self.eval()

    def train(self, mode=True):
        # Ignore the requested mode: a frozen feature extractor is always in eval mode.
        return super().train(False)

    def forward(self, imgs):
        features = {}
        x = imgs
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self._index_to_name:
                features[self._index_to_name[index]] = x
        return features


# ======================================================================================================
# Part B -- ESRGAN
# ======================================================================================================

@torch.no_grad()
def _scaled_kaiming_init(modules, scale):
    """Kaiming-normal init multiplied by `scale` (0.1 for ESRGAN's dense blocks), biases zero.

    Why shrink: a residual block whose convolutions start small begins close to the identity, so a 23-block
    network without batch norm starts as a stable, shallow-ish function and gradually learns corrections.
    """
    for module in modules:
        for layer in module.modules():
            if isinstance(layer, nn.Conv2d) and not layer.weight.is_meta:  # (meta: a skeleton of shapes only)
                # Kaiming (He) normal for ReLU-like layers has std sqrt(2 / fan_in); draw it already scaled.
                fan_in = layer.weight[0].numel()  # in_channels * kernel_h * kernel_w
                layer.weight.normal_(0.0, scale * math.sqrt(2.0 / fan_in))
                if layer.bias is not None:
                    layer.bias.zero_()


class ResidualDenseBlock(nn.Module):
    """Five 3x3 convolutions with dense connections (each sees the block input and all earlier outputs).

        x                                   (N, num_feat, H, W)
        x1 = lrelu(conv1(x))                (N, g, H, W)               g = num_grow_ch, the "growth" of the block
        x2 = lrelu(conv2([x, x1]))          (N, g, H, W)               [...] = concatenation along channels
        x3 = lrelu(conv3([x, x1, x2]))      ...
        x4 = lrelu(conv4([x, x1, x2, x3]))
        x5 = conv5([x, x1, x2, x3, x4])     (N, num_feat, H, W)
        out = x + 0.2 * x5

    No batch norm (ESRGAN section 3.1): BN normalises with batch statistics during training but running averages at
    test time; when those differ (other image content, other sizes) BN produces artefacts, and removing it also
    saves memory and compute. The price is a harder-to-train deep network, which residual scaling pays for: the
    0.2 keeps each block's contribution small so the sum of 69 blocks does not blow up at initialisation.
    """

    def __init__(self, num_feat=64, num_grow_ch=32):
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_grow_ch, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat + num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv3 = nn.Conv2d(num_feat + 2 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv4 = nn.Conv2d(num_feat + 3 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv5 = nn.Conv2d(num_feat + 4 * num_grow_ch, num_feat, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)
        _scaled_kaiming_init([self.conv1, self.conv2, self.conv3, self.conv4, self.conv5], 0.1)

    def forward(self, x):
        x1 = self.lrelu(self.conv1(x))
        x2 = self.lrelu(self.conv2(torch.cat((x, x1), 1)))
        x3 = self.lrelu(self.conv3(torch.cat((x, x1, x2), 1)))
        x4 = self.lrelu(self.conv4(torch.cat((x, x1, x2, x3), 1)))
        x5 = self.conv5(torch.cat((x, x1, x2, x3, x4), 1))
        return x + 0.2 * x5  # residual scaling


class RRDB(nn.Module):
    """Residual-in-Residual Dense Block: three ResidualDenseBlocks in a row, wrapped in one more scaled skip.

    (N, num_feat, H, W) -> same. The two levels of residuals ("residual in residual") let ESRGAN go much deeper
    than SRResNet (23 RRDBs = 345 convolutions) while staying easy to optimise.
    """

    def __init__(self, num_feat=64, num_grow_ch=32):
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow_ch)

    def forward(self, x):
        out = self.rdb3(self.rdb2(self.rdb1(x)))
        return x + 0.2 * out  # residual scaling again, around the whole block


class RRDBNet(nn.Module):
    """The ESRGAN / Real-ESRGAN generator, with the exact constructor arguments and state-dict names of BasicSR /
    Real-ESRGAN.

    Pipeline (shapes for an h x w input; x4):
        (N, 3, h, w) in [0, 1]
        conv_first                                   (N, 64, h, w)
        body: num_block RRDBs, then conv_body        (N, 64, h, w)     plus conv_first's output (long skip)
        nearest x2, conv_up1, lrelu                  (N, 64, 2h, 2w)
        nearest x2, conv_up2, lrelu                  (N, 64, 4h, 4w)
        conv_hr, lrelu, conv_last                    (N, 3, 4h, 4w) roughly in [0, 1] (not clamped: clamp to show)

    Why nearest-neighbour interpolation + convolution instead of pixel shuffle: ESRGAN's choice; the convolution
    after a nearest upsample sees whole copies of each pixel, which avoids checkerboard patterns as well.

    Args:
        num_in_ch, num_out_ch: image channels (3).
        scale: 4, or 2 / 1 (the attribute `scaling_factor`): Real-ESRGAN's x2 / x1 models, the same x4 network fed
            the input pixel-unshuffled by 2 / 4 (the attribute `unshuffle_scale`), as BasicSR's RRDBNet does with
            those scales; only conv_first changes (num_in_ch * 4 or * 16 input channels), so the official files
            load (see "Pixel-unshuffle" at the end of the file).
        num_feat: feature channels (64). num_block: RRDBs (23). num_grow_ch: dense growth channels (32).
    """

    input_format = "[0, 1]"
    output_format = "[0, 1]"

    def __init__(self, num_in_ch=3, num_out_ch=3, scale=4, num_feat=64, num_block=23, num_grow_ch=32):
        super().__init__()
        scale = int(scale)
        if scale not in (1, 2, 4):
            raise ValueError(f"RRDBNet's scale must be 4, 2 or 1 (2 and 1: the x4 network behind a pixel-unshuffle), "
                             f"got {scale}")
        self.scaling_factor = scale  # overall: what the scripts read
        self.unshuffle_scale = 4 // scale  # 1 (x4), 2 (x2) or 4 (x1): the body always upscales x4
        self.conv_first = nn.Conv2d(num_in_ch * self.unshuffle_scale ** 2, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*[RRDB(num_feat, num_grow_ch) for _ in range(num_block)])
        self.conv_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, lr_imgs):
        """(N, num_in_ch, H, W) in [0, 1] -> (N, num_out_ch, s H, s W), about [0, 1] (s = scaling_factor)."""
        height, width = lr_imgs.shape[-2:]
        if self.unshuffle_scale > 1:  # x2 / x1 models: fold r x r pixel blocks into channels first
            lr_imgs, _ = pad_to_multiple(lr_imgs, self.unshuffle_scale)
            lr_imgs = F.pixel_unshuffle(lr_imgs, self.unshuffle_scale)  # (N, num_in_ch r^2, H / r, W / r)
        feat = self.conv_first(lr_imgs)  # (N, num_feat, H, W)
        feat = feat + self.conv_body(self.body(feat))  # long skip around the whole trunk
        feat = self.lrelu(self.conv_up1(F.interpolate(feat, scale_factor=2, mode="nearest")))  # (N, F, 2H, 2W)
        feat = self.lrelu(self.conv_up2(F.interpolate(feat, scale_factor=2, mode="nearest")))  # (N, F, 4H, 4W)
        sr_imgs = self.conv_last(self.lrelu(self.conv_hr(feat)))  # (N, num_out_ch, 4H, 4W)
        if self.unshuffle_scale > 1:  # crop away what the padding added
            sr_imgs = sr_imgs[..., :height * self.scaling_factor, :width * self.scaling_factor]
        return sr_imgs


# ======================================================================================================
# Part C -- Real-ESRGAN
# ======================================================================================================

class UNetDiscriminatorSN(nn.Module):
    """Real-ESRGAN's U-Net discriminator with spectral normalisation: one real/fake logit PER PIXEL.

    Why a U-Net: Real-ESRGAN's degradations (blur, noise, JPEG, twice) make the generator's job harder and its
    failures local; a discriminator that answers per pixel gives the generator detailed, local feedback ("this
    patch of sky is fake") instead of one verdict for the whole image, and the skip connections bring the fine
    detail of the encoder to the decoder.
    Why spectral norm: it bounds each layer's Lipschitz constant, keeping the stronger U-Net discriminator from
    overpowering the generator and stabilising GAN training (Miyato et al., 2018). torch.nn.utils.spectral_norm is
    the hook-based API Real-ESRGAN uses, which keeps their state-dict names (weight_orig, weight_u, weight_v).

    Shapes (H, W divisible by 8 keep the skips aligned; other sizes are padded and cropped):
        (N, num_in_ch, H, W)
        conv0                         (N, F, H, W)          F = num_feat
        conv1 (stride 2, SN)          (N, 2F, H/2, W/2)
        conv2 (stride 2, SN)          (N, 4F, H/4, W/4)
        conv3 (stride 2, SN)          (N, 8F, H/8, W/8)
        x2 bilinear, conv4 (SN)       (N, 4F, H/4, W/4)     + conv2's output (skip)
        x2 bilinear, conv5 (SN)       (N, 2F, H/2, W/2)     + conv1's output
        x2 bilinear, conv6 (SN)       (N, F, H, W)          + conv0's output
        conv7, conv8 (SN), conv9      (N, 1, H, W)          raw logits (use BCEWithLogits)
    All activations are LeakyReLU(0.2). Convolutions followed by spectral norm have no bias, as in Real-ESRGAN.

    antialias=True (a departure, off by default): each strided convolution first low-passes its input with a fixed
    [1, 2, 1] x [1, 2, 1] / 16 filter (BinomialBlur). Why: the generator learns from this network's gradient with
    respect to the SR image, and the backward pass of a stride-2 convolution is a transposed convolution, whose four
    sub-kernels weigh the even and odd pixels differently: a checkerboard. Three of them in a row print a pattern of
    period 2, 4 and 8 into that gradient: measured on 64x64 crops, its power at the x4 lattice frequencies k / 4
    stands 16 dB above the neighbouring frequencies at initialisation and 26 dB after 200 GAN iterations, and the
    generator copies it into its images as a grid. The blur removes what the stride would alias (the gradient's lattice
    falls to under 1 dB). The weights keep Real-ESRGAN's shapes and names. (A trained discriminator may still reward a
    grid, as any high-frequency energy: train_srgan.lattice_loss is what stops that, docs/training.md.)
    """

    def __init__(self, num_in_ch=3, num_feat=64, skip_connection=True, antialias=False):
        super().__init__()
        self.skip_connection = skip_connection
        self.blur = BinomialBlur() if antialias else nn.Identity()  # before each strided convolution
        sn = nn.utils.spectral_norm
        self.conv0 = nn.Conv2d(num_in_ch, num_feat, kernel_size=3, stride=1, padding=1)
        # Downsampling: 4x4 kernels with stride 2 halve the size.
        self.conv1 = sn(nn.Conv2d(num_feat, num_feat * 2, 4, 2, 1, bias=False))
        self.conv2 = sn(nn.Conv2d(num_feat * 2, num_feat * 4, 4, 2, 1, bias=False))
        self.conv3 = sn(nn.Conv2d(num_feat * 4, num_feat * 8, 4, 2, 1, bias=False))
        # Upsampling: bilinear x2, then a 3x3 convolution. (Departure from a text that describes it with nearest
        # upsampling: Real-ESRGAN's code, discriminator_arch.py, is bilinear, and its released weights expect that.)
        self.conv4 = sn(nn.Conv2d(num_feat * 8, num_feat * 4, 3, 1, 1, bias=False))
        self.conv5 = sn(nn.Conv2d(num_feat * 4, num_feat * 2, 3, 1, 1, bias=False))
        self.conv6 = sn(nn.Conv2d(num_feat * 2, num_feat, 3, 1, 1, bias=False))
        # Extra refinement at full size, then one logit per pixel.
        self.conv7 = sn(nn.Conv2d(num_feat, num_feat, 3, 1, 1, bias=False))
        self.conv8 = sn(nn.Conv2d(num_feat, num_feat, 3, 1, 1, bias=False))
        self.conv9 = nn.Conv2d(num_feat, 1, 3, 1, 1)

    def forward(self, imgs):
        """(N, C, H, W) -> (N, 1, H, W) per-pixel logits."""
        lrelu = lambda t: F.leaky_relu(t, negative_slope=0.2)  # noqa: E731 (a one-line helper reads best here)
        up = lambda t: F.interpolate(t, scale_factor=2, mode="bilinear", align_corners=False)  # noqa: E731
        x, (height, width) = pad_to_multiple(imgs, 8)  # see "Later additions"; cropped back at the end

        x0 = lrelu(self.conv0(x))  # (N, F, H, W)
        x1 = lrelu(self.conv1(self.blur(x0)))  # (N, 2F, H/2, W/2)   (blur: nothing, or the antialiasing filter)
        x2 = lrelu(self.conv2(self.blur(x1)))  # (N, 4F, H/4, W/4)
        x3 = lrelu(self.conv3(self.blur(x2)))  # (N, 8F, H/8, W/8)

        x4 = lrelu(self.conv4(up(x3)))  # (N, 4F, H/4, W/4)
        if self.skip_connection:
            x4 = x4 + x2
        x5 = lrelu(self.conv5(up(x4)))  # (N, 2F, H/2, W/2)
        if self.skip_connection:
            x5 = x5 + x1
        x6 = lrelu(self.conv6(up(x5)))  # (N, F, H, W)
        if self.skip_connection:
            x6 = x6 + x0

        out = lrelu(self.conv7(x6))
        out = lrelu(self.conv8(out))
        out = self.conv9(out)  # (N, 1, H, W)
        return out[..., :height, :width]


# ======================================================================================================
# Part D -- Real-ESRGAN's compact network (SRVGGNetCompact)
# ======================================================================================================
#
# Real-ESRGAN's later models for anime video and for fast general use, realesr-animevideov3 and realesr-general-x4v3
# (and its weak-denoise twin realesr-general-wdn-x4v3), drop RRDBNet for a plain VGG-style stack of 3x3 convolutions
# with 15 to 29 times less computation. Why it is so much faster, for the same LR image:
#   * everything runs at LR resolution. RRDBNet's upsampler runs four 64-channel convolutions at 2x and 4x size
#     (conv_up1, conv_up2, conv_hr, conv_last); here the last convolution makes the 3 s^2 sub-pixel values of each
#     LR pixel and a free PixelShuffle lays them out: no convolution ever sees an HR-sized map;
#   * no dense connections. An RRDB's convolutions read the concatenation of all earlier feature maps (up to 192
#     channels in, 69 such blocks); here every convolution reads exactly the 64 channels of the one before;
#   * a plain stack: 16 or 32 convolutions instead of ~350, no residual-in-residual bookkeeping, no concatenations,
#     so little memory traffic besides the convolutions themselves (and it maps well onto mobile and video engines).
# Multiply-adds per LR pixel (the weights times 1, since everything is at LR size): 0.62 million for num_conv 16,
# 1.21 million for 32, against ~18 million for the 23-block RRDBNet (16.5 million in its body, 1.4 million in its
# upsampler): 15 to 29 times less.
#
# The network only learns a correction: its output is added to the nearest-neighbour upsampled input, so the stack
# never has to carry the image itself through 17 or 33 layers.
#
# Initialisation matters here, and it is a good lesson on why. The network has no batch norm (like RRDBNet, see Part
# B) and no skip connections inside the stack. PyTorch's default convolution init (uniform, std 1 / sqrt(3 fan_in))
# with a PReLU after it multiplies the variance of what passes through by about 1/3 x (1 + 0.25^2) / 2 = 0.18 per
# layer (divides the std by ~2.4), forward and backward: after a few layers the activations are mostly the biases, not
# the image, and through the 17 layers of num_conv 16 the gradient reaching the first convolution is ~1e-10 (measured:
# 7e-11 on average, against 2.5e-4 with the init below). That is below Adam's eps (1e-8), which then dominates Adam's
# normalisation: its step there is lr x g / (|g| + eps), about lr / 100 instead of about lr, so the first layers
# barely move, and what they pass on carries too little of the image for the later layers to learn from. Trained from
# scratch (num_conv 16, L1, batch 16, crop 96, lr 5e-4, on the 370 images of ../shared/data/train) such a network
# stalls at nearest-neighbour quality: after 250 iterations it scores 26.25 dB on Set5 x4, exactly what nearest
# upsampling scores. Kaiming (He) normal init for PReLU keeps the variance of the activations the same through every
# layer (std = gain / sqrt(fan_in), gain = sqrt(2 / (1 + a^2)) with a = 0.25, PReLU's initial slope), so every layer
# gets a gradient of the same order; biases start at zero, and the last convolution is scaled by 0.1 so that the
# untrained network is almost exactly the nearest upsampling it adds to (a small, safe start, as RRDBNet's 0.1-scaled
# residual branches). With that, the same training reaches 28.39 dB after 250 iterations (Set5 x4; bicubic is 28.42).
# Batch norm would hide the problem by renormalising every layer; without it, the init is what keeps a deep plain
# stack trainable.
# (Real-ESRGAN's released weights load over this init, so it matters only when training.)

class SRVGGNetCompact(nn.Module):
    """Real-ESRGAN's compact generator, with its constructor arguments and state-dict keys.

    Pipeline (shapes for an h x w input, s = upscale; F = num_feat):
        (N, num_in_ch, h, w) in [0, 1]
        body.0  3x3 conv         (N, F, h, w)
        body.1  PReLU(F)                                one learned negative slope per channel
        body.2k, body.2k+1       (N, F, h, w)           k = 1 .. num_conv: 3x3 conv + PReLU(F), all at LR size
        body.2(num_conv+1)       (N, num_out_ch s^2, h, w)   the last conv: s^2 sub-pixel values per pixel and channel
        PixelShuffle(s)          (N, num_out_ch, s h, s w)   the correction
        + nearest x s of the input                      (N, num_out_ch, s h, s w) about [0, 1] (not clamped)
        [bicubic resize to outscale]                    (N, num_out_ch, o h, o w)   only when outscale o is given

    The state-dict keys are Real-ESRGAN's (body.{N}.weight / .bias: convolutions for N even, PReLU slopes for N odd).
    Args:
        num_in_ch, num_out_ch: image channels (3); the nearest-upsampled input is added, so they must match.
        num_feat: feature channels (64 in the released models).
        num_conv: 3x3 convolutions between the first and the last (16: realesr-animevideov3, 32: realesr-general-x4v3).
        upscale: the scale s (any integer >= 1; Real-ESRGAN's name), also the attribute `scaling_factor`.
        outscale: None, or o < s: the output bicubic-resized to x o, as the ncnn realesr-animevideov3-x2 / -x3 files.
    Real-ESRGAN's act_type option (ReLU or LeakyReLU instead of PReLU) is left out: every released model uses PReLU.
    """

    input_format = "[0, 1]"
    output_format = "[0, 1]"

    def __init__(self, num_in_ch=3, num_out_ch=3, num_feat=64, num_conv=16, upscale=4, outscale=None):
        super().__init__()
        if int(upscale) < 1 or num_in_ch != num_out_ch or (outscale is not None and not 1 <= outscale < upscale):
            raise ValueError(f"SRVGGNetCompact needs upscale >= 1, no outscale or one below it, and as many input as "
                             f"output channels (the input is added to the output), got upscale {upscale}, outscale "
                             f"{outscale}, {num_in_ch} -> {num_out_ch} channels")
        self.upscale, self.outscale = int(upscale), (None if outscale is None else int(outscale))
        self.scaling_factor = self.outscale or self.upscale
        # One flat list, in Real-ESRGAN's order (so its key names): conv, PReLU, num_conv x (conv, PReLU), conv.
        layers = [nn.Conv2d(num_in_ch, num_feat, 3, 1, 1), nn.PReLU(num_feat)]
        for _ in range(num_conv):
            layers += [nn.Conv2d(num_feat, num_feat, 3, 1, 1), nn.PReLU(num_feat)]
        layers.append(nn.Conv2d(num_feat, num_out_ch * self.upscale ** 2, 3, 1, 1))
        self.body = nn.ModuleList(layers)
        self.upsampler = nn.PixelShuffle(self.upscale)
        self._initialise()

    @torch.no_grad()
    def _initialise(self):
        """Kaiming-normal init for PReLU (a = 0.25), zero biases, the last convolution scaled by 0.1 (see above)."""
        convolutions = [layer for layer in self.body if isinstance(layer, nn.Conv2d)]
        if convolutions[0].weight.is_meta:  # a skeleton of shapes (generator_from_weights): no numbers to draw
            return
        for conv in convolutions:
            nn.init.kaiming_normal_(conv.weight, a=0.25, nonlinearity="leaky_relu")
            conv.bias.zero_()
        convolutions[-1].weight.mul_(0.1)

    def forward(self, lr_imgs):
        """(N, C, H, W) in [0, 1] -> (N, C, H * upscale, W * upscale), about [0, 1]."""
        features = lr_imgs
        for layer in self.body:  # conv, PReLU, ..., conv, all at LR size
            features = layer(features)  # last: (N, C s^2, H, W)
        return self.upsample(lr_imgs, features)

    def upsample(self, lr_imgs, features):
        """The last steps: features (N, C s^2, H, W) shuffled and added to the nearest-upsampled input (N, C, H, W)
        -> (N, C, s H, s W). Without outscale, row by row (inference.upscale runs them on a few rows at a time)."""
        correction = self.upsampler(features)  # (N, C, s H, s W)
        sr_imgs = F.interpolate(lr_imgs, scale_factor=self.upscale, mode="nearest") + correction
        if self.outscale is not None:  # (N, C, o H, o W): bicubic (a = -0.75, half-pixel centres, as ncnn's Interp)
            sr_imgs = F.interpolate(sr_imgs, size=[side * self.outscale for side in lr_imgs.shape[-2:]],
                                    mode="bicubic", align_corners=False)
        return sr_imgs


# ======================================================================================================
# Later additions: pixel-unshuffle x2 / x1 models
# ======================================================================================================
#
# Real-ESRGAN's x2 model is its x4 RRDBNet fed a pixel-unshuffled input: nn.PixelUnshuffle(r) folds every r x r
# patch of pixels into 3 r^2 channels of one pixel, so the image is r times smaller on each side and the same x4
# network now gives an overall x(4 / r): an x2 model (r = 2) whose expensive body runs on a quarter of the pixels,
# or an x1 model (r = 4, what CutBlur needs). Only the first convolution changes (3 r^2 input channels instead of
# 3); the state-dict keys stay the same. Inputs whose sides are not divisible by r are reflect-padded and the output
# is cropped back. Both networks do it in plain sight, in the first and last lines of their forward():
#
#     if self.unshuffle_scale > 1:
#         lr_imgs, _ = pad_to_multiple(lr_imgs, r)
#         lr_imgs = F.pixel_unshuffle(lr_imgs, r)      # (N, 3 r^2, H / r, W / r)
#     ... the x4 network ...
#     if self.unshuffle_scale > 1:
#         sr_imgs = sr_imgs[..., :height * s, :width * s]

def pad_to_multiple(imgs, multiple):
    """Pad the bottom and right of `imgs` so that height and width are divisible by `multiple`.

    Pixel-unshuffle by r needs H and W divisible by r. We reflect-pad (mirror the last rows / columns) rather than
    zero-pad, because a black border would be a strong, fake edge that the network would try to sharpen; after the
    network runs, the caller crops the output back to (H * scale, W * scale), so the padding never reaches the user.

    Args:
        imgs: (N, C, H, W) tensor, any range.
        multiple: int >= 1.
    Returns:
        (N, C, H', W') with H' = ceil(H / multiple) * multiple (same for W), and the original (H, W).
    """
    height, width = imgs.shape[-2:]
    pad_h = (-height) % multiple
    pad_w = (-width) % multiple
    if pad_h or pad_w:
        # 'reflect' needs the pad to be smaller than the side; tiny images (a side of 1 px) fall back to copying the
        # edge pixel, which is the next best thing.
        mode = "reflect" if (pad_h < height and pad_w < width) else "replicate"
        imgs = F.pad(imgs, (0, pad_w, 0, pad_h), mode=mode)
    return imgs, (height, width)


# ======================================================================================================
# Choosing a generator by name (used by every script)
# ======================================================================================================

def upgrade_generator_kwargs(arch, kwargs):
    """A generator's constructor arguments in today's form, from a checkpoint of any version.

    Checkpoints written before the pixel-unshuffle SRResNet had its own class stored, for 'srresnet',
    {..., 'scaling_factor': the BODY's scale, 'use_unshuffle': bool, 'unshuffle_scale': r (also when unused)}.
    Today 'scaling_factor' is the overall scale (the body's / r) and 'unshuffle_scale' is given only for the
    pixel-unshuffle model.
    """
    kwargs = dict(kwargs)
    if arch == "srresnet" and "use_unshuffle" in kwargs:
        use_unshuffle = kwargs.pop("use_unshuffle")
        unshuffle_scale = int(kwargs.pop("unshuffle_scale", 2))
        if use_unshuffle:
            kwargs["scaling_factor"] = int(kwargs.get("scaling_factor", 4)) // unshuffle_scale
            kwargs["unshuffle_scale"] = unshuffle_scale
    return kwargs


def pixel_unshuffle_variant(arch, kwargs, unshuffle_scale):
    """
    The constructor arguments of the same network behind a pixel-unshuffle by r = unshuffle_scale: the same body
    (blocks, channels, sub-pixel / upsampling stages), an overall scale of body / r. E.g. an x4 SRResNet's x1 variant
    (r = 4), or RRDBNet x4's x2 variant (r = 2, Real-ESRGAN's x2 model). r = 1 gives the plain network.

    :param kwargs: a generator's generator_kwargs (today's form: upgrade_generator_kwargs)
    :raises ValueError: for the compact network (it has no pixel-unshuffle variant), or a body r does not divide
    """
    kwargs, r = dict(kwargs), int(unshuffle_scale)
    if arch == "srresnet":
        body = int(kwargs.get("scaling_factor", 4)) * int(kwargs.pop("unshuffle_scale", 1))
        if body % r:
            raise ValueError(f"an x{body} SRResNet body has no pixel-unshuffle variant with unshuffle_scale {r}.")
        return {**kwargs, "scaling_factor": body // r, **({"unshuffle_scale": r} if r > 1 else {})}
    if arch == "rrdb":  # the body is always RRDBNet's x4
        if 4 % r:
            raise ValueError(f"RRDBNet has no pixel-unshuffle variant with unshuffle_scale {r}: use 2 or 4.")
        return {**kwargs, "scale": 4 // r}
    raise ValueError(f"the {arch} network has no pixel-unshuffle variant (use_unshuffle is for 'srresnet' and 'rrdb').")


GENERATOR_ARCHITECTURES = ("srresnet", "rrdb", "compact")


def build_generator(arch, **kwargs):
    """A generator from the name and constructor arguments that checkpoints store.

    'srresnet' -> SRResNet(**kwargs) (with an unshuffle_scale above 1: the x2 / x1 pixel-unshuffle model);
    'rrdb' -> RRDBNet(**kwargs) (scale 2 or 1: the x2 / x1 models); 'compact' -> SRVGGNetCompact(**kwargs). Older
    checkpoints' arguments are accepted too (upgrade_generator_kwargs). Unknown names raise ValueError.
    The generator keeps the name and the arguments (today's form) as the attributes `generator_arch` and
    `generator_kwargs`, so that whoever holds it can save it again (export.py, a GAN started from an exported file).
    """
    if arch not in GENERATOR_ARCHITECTURES:
        raise ValueError(f"unknown generator architecture {arch!r}; choose one of {sorted(GENERATOR_ARCHITECTURES)}")
    kwargs = upgrade_generator_kwargs(arch, kwargs)
    if arch == "srresnet" and kwargs.get("unshuffle_scale", 1) <= 1:
        kwargs.pop("unshuffle_scale", None)  # a plain SRResNet
    if arch == "rrdb":
        generator = RRDBNet(**kwargs)
    elif arch == "compact":
        generator = SRVGGNetCompact(**kwargs)
    else:
        generator = SRResNet(**kwargs)
    generator.generator_arch, generator.generator_kwargs = arch, kwargs
    return generator


# The largest value a constructor argument read from a file may have (channels, blocks, convolutions, kernel sizes).
# Real networks stay far below it (RRDBNet: 64 channels, 23 blocks); a crafted file claiming 20,000 channels would
# make every loader allocate gigabytes for each convolution before its tensors could be found not to fit.
MAX_ARCHITECTURE_VALUE = 4096


def check_weights(expected, weights, source):
    """
    Check, before they are loaded, that a file's weights fit the network they are for and can be right.

    :param expected: the network's state dict (its tensors may be on the 'meta' device: only names, shapes and
                     dtypes are read)
    :param weights: the file's state dict
    :param source: what to name in the message, e.g. "model.pth (params_ema)"
    :raises ValueError: in one line, naming the tensors: names missing or unexpected, other shapes; an integer or bool
                        tensor where the network has floats (load_state_dict would cast it silently); NaN or infinite
                        values (an fp16 export that overflowed, a run that diverged: the network would output black)
    """
    def names(keys):
        keys = sorted(keys)
        return ", ".join(keys[:3]) + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "") if keys else "none"

    missing, unexpected = expected.keys() - weights.keys(), weights.keys() - expected.keys()
    reshaped = [f"{key} {tuple(weights[key].shape)} (the network's: {tuple(expected[key].shape)})"
                for key in expected if key in weights and weights[key].shape != expected[key].shape]
    if missing or unexpected or reshaped:
        raise ValueError(f"{source}: the weights do not fit the network the file describes (missing: {names(missing)}; "
                         f"unexpected: {names(unexpected)}; other shapes: {names(reshaped)}): the file is damaged, "
                         f"or its architecture was changed.")
    for key, value in weights.items():
        if expected[key].is_floating_point() and not value.is_floating_point():
            raise ValueError(f"{source}: the tensor {key} is {str(value.dtype).removeprefix('torch.')}, not floating "
                             f"point, where the network has weights: the file is damaged or not a generator's.")
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise ValueError(f"{source}: the tensor {key} holds NaN or infinite values, so the network would output "
                             f"nothing usable: the file is damaged, or was written from a run that diverged (or by an "
                             f"fp16 export whose values overflowed).")


def generator_from_weights(arch, kwargs, weights, source):
    """
    The generator a file describes (`arch`, `kwargs`: its generator_arch and generator_kwargs), with its weights, once
    they are known to fit.

    A file's description is not trusted: the arguments must be a dict of values no larger than
    MAX_ARCHITECTURE_VALUE, and the network is first built on the 'meta' device (shapes, no memory) and its tensors
    compared with the file's (check_weights). Only then is it built for real and loaded.

    :raises ValueError: one line naming `source`, for anything that does not fit
    """
    if not isinstance(kwargs, dict) or not all(isinstance(key, str) for key in kwargs):
        raise ValueError(f"{source}: its generator_kwargs ({str(kwargs)[:80]}) are not the constructor arguments of a "
                         f"network: the file is damaged or was not written by this project.")
    too_large = [f"{key}={value}" for key, value in kwargs.items()
                 if isinstance(value, (int, float)) and not abs(value) <= MAX_ARCHITECTURE_VALUE]
    if too_large:
        raise ValueError(f"{source}: its generator_kwargs claim {', '.join(too_large)}, beyond any real network (at "
                         f"most {MAX_ARCHITECTURE_VALUE}): the file is damaged or crafted; it was not loaded.")
    if not isinstance(weights, dict) or not all(isinstance(value, torch.Tensor) for value in weights.values()):
        raise ValueError(f"{source}: its weights are a {type(weights).__name__}, not a state dict (names -> tensors): "
                         f"the file is damaged or was not written by this project.")
    try:
        with torch.device("meta"):  # every tensor a shape without memory
            skeleton = build_generator(arch, **kwargs)
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"{source}: generator_arch {arch!r} with generator_kwargs {kwargs} is no network of this "
                         f"project ({error}).") from None
    check_weights(skeleton.state_dict(), weights, source)
    generator = build_generator(arch, **kwargs)
    generator.load_state_dict(weights)
    return generator
