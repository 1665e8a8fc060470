"""
Step 3 of the tutorial: make the generator's images sharp with a GAN (SRGAN, ESRGAN, Real-ESRGAN).

A network trained with a pixel loss (train_srresnet.py) hedges: where many sharp textures are plausible it
outputs their average, which is blurry. Here the generator starts from that network and is trained against a
discriminator, a classifier that learns to tell real HR images from super-resolved ones. Fooling it forces the
generator onto the "manifold" of natural images: sharp, textured results. Two more changes from step 2:
  - the perceptual loss compares VGG19 feature maps instead of pixels: two images with the same textures shifted
    by a pixel are far apart in pixels but close in VGG space, so the generator is free to invent plausible detail;
  - generator and discriminator are trained in turn, one step each per iteration.
(Words: the SRGAN paper calls the VGG term the "content loss", and the generator's total loss, content plus
adversarial, the "perceptual loss". Here, as in ESRGAN and Real-ESRGAN, "perceptual loss" is the VGG term.)

Recipes (--recipe) set the hyperparameters of each paper; any flag given explicitly still wins:
  srgan       Ledig et al. 2017: MSE between VGG19 relu5_4 features (weighted 1/12.75^2, the paper's rescaling)
              + 1e-3 vanilla GAN loss
  esrgan      Wang et al. 2018: relativistic average GAN, VGG conv5_4 features (before the ReLU), pixel L1,
              128x128 crops; from its official code (BasicSR's options): the L1 distance between the features and
              an EMA of the weights
  realesrgan  Wang et al. 2021: trained on synthetic real-world degradations, U-Net discriminator, 5-layer
              perceptual loss, sharpened targets
With --vgg_weights random (no download), any recipe compares five VGG19 layers with L1 and adds the lattice loss
(RANDOM_VGG): a random network's relu5_4 alone carries almost nothing, and it would teach the generator a grid.

Quick start (CPU):  python train_srgan.py --data_folder data_lists --srresnet_checkpoint checkpoint_srresnet.pth \\
                        --iterations 50 --batch_size 8 --crop_size 48 --vgg_weights random --pixel_loss_weight 1 ...
CutBlur:            python train_srgan.py --data_folder data_lists --srresnet_checkpoint <an x1 checkpoint> \\
                        --mixopts cutblur --mixprob 1.0 --mixalpha 0.7
Classic SRGAN:      python train_srgan.py --data_folder data_lists
ESRGAN:             python train_srgan.py --data_folder data_lists --recipe esrgan
Resume:             python train_srgan.py --data_folder data_lists --checkpoint checkpoint_srgan.pth
Watch it:           tensorboard --logdir <output_folder> (validation on --val_sets every --val_every iterations;
                        the weights of the best PSNR go to best_srgan.pth, the numbers also to log_srgan.jsonl)

Every hyperparameter below can be overridden by a flag of the same name; --help lists them.
(Old flags still work and say what replaced them: --lr, --lr_milestones, --lr_gamma, --vgg_before_activation,
--cutblur_prob.)
"""
import sys

import torch
import torch.nn.functional as F

import augmentations
import cli
import datasets
import degradations
import inference
import models
import training
import training_log
import utils

# ------------------------------------------------------------------------------------------------------
# Hyperparameters (each one is also a command-line flag: --name value). The defaults are the SRGAN paper's.
# ------------------------------------------------------------------------------------------------------
hyperparameters = dict(
    recipe="srgan",  # 'srgan', 'esrgan' or 'realesrgan': sets the hyperparameters listed in RECIPES below
    # Data
    data_folder="./",  # folder with train_images.json, written by create_data_lists.py
    crop_size=96,  # side of the HR training crops
    scaling_factor=4,  # the data's upscaling factor; the generator (from the SRResNet checkpoint) must fit it
    augment=False,  # random flips and 90-degree rotations of the crops
    lr_maker="pil",  # how LR crops are made from HR (degradation 'bicubic'): 'pil' or 'matlab'
    degradation="bicubic",  # how LR images are made: 'bicubic' (the loader's LR crops) or 'realesrgan' (Real-ESRGAN's
    #   random blur, noise, resize and JPEG, on the device; its settings: degradations.DEGRADATION_DEFAULTS, below)
    queue_size=0,  # Real-ESRGAN's training-pair pool: draw each batch from this many recent (LR, HR) pairs
    #   (Real-ESRGAN: 180; at least batch_size; 0: off)
    # Batch augmentations: the CutBlur paper's (augmentations.py), one drawn per iteration; traiNNer's option names
    mixopts=["none"],  # any of blend rgb mixup cutout cutmix cutmixup cutblur none ('none': off; all seven: the
    #   paper's mixture); cutblur needs an x1 generator (train_srresnet.py --use_unshuffle true --unshuffle_scale 4)
    mixprob=[],  # probability that the augmentation drawn is applied: one per mixopts, one for all, or none (the
    #   paper's: 1.0)
    mixalpha=[],  # strength of each: one per mixopts, one for all, or none (the paper's: blend 0.6, rgb 1.0, mixup
    #   1.2, cutout 0.001, cutmix 0.7, cutmixup 0.7, cutblur 0.7)
    aux_mixprob=1.0,  # cutmixup: probability of its mixup (the paper's 1.0)
    aux_mixalpha=1.2,  # cutmixup: its mixup's Beta(a, a) (the paper's 1.2)
    # Generator: its architecture and starting weights come from the pixel-loss network
    srresnet_checkpoint="checkpoint_srresnet.pth",  # checkpoint of train_srresnet.py to start the generator from
    #   (or the shipped 'srresnet', a file of export.py, an official Real-ESRGAN / ESRGAN file, or an ncnn .param)
    # Discriminator
    discriminator_arch="srgan",  # 'srgan' (the SRGAN paper's classifier) or 'unet' (Real-ESRGAN's per-pixel U-Net)
    kernel_size_d=3,  # SRGAN discriminator: kernel size of its convolutions
    first_kernel_size_d=3,  # SRGAN discriminator: kernel size of its first convolution (the SRGAN paper and the
    #   classic tutorial's code: 3; the tutorial's text says 9)
    n_channels_d=64,  # SRGAN discriminator: channels of the first block (doubled every other block)
    n_blocks_d=8,  # SRGAN discriminator: convolutional blocks
    fc_size_d=1024,  # SRGAN discriminator: size of its hidden fully connected layer
    num_feat_d=64,  # U-Net discriminator: feature channels
    antialias_d=False,  # either discriminator: low-pass before each strided convolution (models.UNetDiscriminatorSN:
    #   without it, the gradients the generator gets carry a checkerboard that it learns as a grid in its images)
    # Losses
    gan_type="vanilla",  # 'vanilla' (is this image real?) or 'relativistic' (is it more real than the others?)
    perceptual_layers=["relu5_4"],  # VGG19 feature maps of the perceptual loss: convX_Y is taken before its ReLU,
    #   reluX_Y after it (SRGAN: relu5_4)
    perceptual_layer_weights=[1.0],  # one weight per layer in perceptual_layers (1 each when only the layers are given)
    vgg_weights="imagenet",  # 'imagenet' (torchvision's download), a path to vgg19-dcbb9e9d.pth, or 'random' (no
    #   download; it brings the perceptual loss such a network needs: RANDOM_VGG below)
    vgg_pooling="auto",  # VGG19's pooling: 'max' (its own), 'avg' (average pooling in its place) or 'auto': max for
    #   the ImageNet weights, avg for random ones (a random VGG19 with max-pooling teaches the generator a grid:
    #   docs/training.md, "Where the grid comes from")
    perceptual_loss="mse",  # distance between feature maps: 'mse' (SRGAN) or 'l1' (ESRGAN's and Real-ESRGAN's code)
    perceptual_loss_weight=1 / 12.75 ** 2,  # weight of the perceptual (VGG) loss: the SRGAN paper divides the VGG
    #   features by 12.75, which with the MSE distance is this weight, 0.0062 (perceptual_loss's docstring)
    pixel_loss_weight=0.0,  # weight of an L1 pixel loss (ESRGAN: 1e-2, Real-ESRGAN: 1)
    adversarial_loss_weight=1e-3,  # weight of the generator's adversarial loss (SRGAN's beta)
    artifact_loss_weight=0.0,  # weight of LDL's artifact loss (artifact_loss: an L1 loss where the generator's
    #   residual is noisier than its EMA's, against noise-like texture; needs --ema_decay > 0; LDL: 1; 0: off; on
    #   realistic_gan's grain it did not help: docs/training.md)
    lattice_loss_weight=0.0,  # weight of the sub-pixel lattice loss (lattice_loss: ties the s x s phase means of SR to
    #   HR's, the only place a fixed grid can hide; 0: off; 100 with --vgg_weights random, RANDOM_VGG)
    # Learning
    batch_size=16,  # crops per iteration (over all processes together)
    iterations=200_000,  # training iterations (the SRGAN paper: 1e5 at a learning rate of 1e-4, then 1e5 at 1e-5)
    learning_rate=1e-4,  # Adam's learning rate, for both networks
    learning_rate_milestones=[100_000],  # iterations at which the learning rates are multiplied by
    #   learning_rate_gamma
    learning_rate_gamma=0.1,  # factor applied at each milestone (SRGAN: divided by 10 halfway)
    ema_decay=0.0,  # keep an exponential moving average of the generator's weights (0: off; BasicSR's and
    #   Real-ESRGAN's 0.999)
    # Speed (docs/training.md, "Training faster and safer")
    precision="auto",  # 'auto', 'fp32', 'bf16' or 'fp16' (autocast); 'auto': native bf16, else fp16 (GPU) / fp32 (CPU)
    channels_last=True,  # NHWC memory layout: faster convolutions in bf16 / fp16, and in fp32 on AVX2 CPUs (measured)
    compile=False,  # torch.compile the networks (slow to start, faster per iteration on GPUs)
    workers=utils.default_workers(),  # data-loading processes (4, or one fewer than this process's CPU cores if
    #   that is less: 0 on one core, where the batches are made between the steps)
    image_cache_mb=2048,  # keep up to this many MB of decoded training images in memory (0: decode per crop)
    sync_batch_norm=True,  # with several GPU processes, batch-norm statistics over the global batch
    fused_adam=True,  # Adam's update as one fused kernel per step (same math; the default is slow for NHWC weights)
    # Validation
    val_sets=["Set5"],  # test sets to validate on (<data_folder>/<name>_test_images.json); the first one's PSNR
    #   picks the best weights, written to best_srgan.pth
    val_every=1000,  # measure PSNR / SSIM on val_sets every this many iterations, at the start and the end (0: off)
    val_degradation="bicubic",  # how the validation LR images are made, as eval.py's --lr_degradation: 'bicubic'
    #   (the papers' protocol), 'jpeg', 'noise_jpeg' or 'realesrgan' (watch a model for real photos on such inputs)
    # Bookkeeping
    seed=0,  # random seed
    print_every=100,  # update the running losses shown on the progress bar every this many iterations
    checkpoint_every=1000,  # save a checkpoint every this many iterations (and at the end, and on Ctrl+C)
    output_folder=".",  # where checkpoint_srgan.pth, best_srgan.pth and the logs are written
    checkpoint=None,  # path of a checkpoint_srgan.pth to resume from
    overwrite=False,  # start a new run in an output_folder that holds a run of this script: its checkpoint, best
    #   weights and logs are removed first (without it such a run is refused: resume it with --checkpoint instead)
)
# Real-ESRGAN's degradations (degradation 'realesrgan'): every probability and range is a flag too, with Real-ESRGAN's
# values as defaults (degradations.DEGRADATION_DEFAULTS says what each means), e.g. --noise_range 1 20 --jpeg_range 50
# 95. l1_gt_usm, percep_gt_usm and gan_gt_usm say which losses compare with the unsharp-masked HR image.
hyperparameters.update(degradations.DEGRADATION_DEFAULTS)

# What each recipe changes from the defaults above (the SRGAN paper's). Reading this table is a good summary
# of what ESRGAN and Real-ESRGAN changed. Where a paper and its official code differ, the comments say which is
# followed (docs/departures.md lists them). Adam keeps PyTorch's betas (0.9, 0.999) in all three, the ESRGAN paper's;
# the official option files of ESRGAN (BasicSR) and Real-ESRGAN use (0.9, 0.99).
RECIPES = {
    "srgan": {},
    "esrgan": dict(
        gan_type="relativistic", perceptual_layers=["conv5_4"], crop_size=128,  # the paper's 128x128 HR patches
        # Departure from the paper (which changes SRGAN's layer, not its distance): the official code's L1 distance
        # between the VGG features, with which the weights below were set.
        perceptual_loss="l1",
        pixel_loss_weight=1e-2, perceptual_loss_weight=1.0, adversarial_loss_weight=5e-3,
        iterations=400_000, learning_rate_milestones=[50_000, 100_000, 200_000, 300_000], learning_rate_gamma=0.5,
        ema_decay=0.999,  # (Departure from the paper, which has no EMA: BasicSR's ESRGAN options, as Real-ESRGAN)
    ),
    "realesrgan": dict(
        degradation="realesrgan", queue_size=180, discriminator_arch="unet", gan_type="vanilla", crop_size=256,
        perceptual_layers=["conv1_2", "conv2_2", "conv3_4", "conv4_4", "conv5_4"],
        perceptual_layer_weights=[0.1, 0.1, 1.0, 1.0, 1.0], perceptual_loss="l1",
        pixel_loss_weight=1.0, perceptual_loss_weight=1.0, adversarial_loss_weight=0.1,
        iterations=400_000, learning_rate_milestones=[400_000], ema_decay=0.999,
        # (Departure: batch_size stays 16, where the paper used 48, 12 on each of 4 GPUs: 48 crops of 256 pixels
        # through RRDBNet, the U-Net and VGG19 need a large GPU. --batch_size 48 --queue_size 720 gives the paper's.)
    ),
}


def literal_vgg_layer_names(vgg_before_activation, hyperparameters):
    """The perceptual layers under literal names, for the old --vgg_before_activation flag, which said on which side
    of the ReLU 'convX_Y' was meant: true, before it (now 'convX_Y'); false, after it (now 'reluX_Y')."""
    old, new = ("relu", "conv") if vgg_before_activation else ("conv", "relu")
    return [new + name[len(old):] if name.startswith(old) else name for name in hyperparameters["perceptual_layers"]]


def cutblur_prob_as_mixopts(cutblur_prob, hyperparameters):
    """The old --cutblur_prob P (CutBlur with probability P, 0: off) as the batch augmentations' --mixopts."""
    return ["cutblur"] if cutblur_prob > 0 else ["none"]


# Old names of hyperparameters, still accepted on the command line and in checkpoints (cli.parse_hyperparameters).
RENAMED = {
    **cli.RENAMED_HYPERPARAMETERS,
    "cutblur_prob": cli.Renamed(
        "mixopts", convert=cutblur_prob_as_mixopts, example=0.0,
        note="use --mixopts cutblur --mixprob P: CutBlur is one of the batch augmentations now, and P the probability "
             "for the batch (as in the CutBlur paper's code; without --mixprob, the paper's 1.0)"),
    "vgg_before_activation": cli.Renamed(
        "perceptual_layers", convert=literal_vgg_layer_names, example=False,
        note="name the layers of --perceptual_layers literally instead: conv5_4 is the feature map before its "
             "ReLU, relu5_4 the one after it"),
}


# The perceptual loss without the ImageNet download (--vgg_weights random), on top of any recipe. A randomly
# initialised VGG19 has no trained deep features: the MSE of its relu5_4 alone is almost nil, so it compares five
# layers from shallow to deep with the L1 distance (Real-ESRGAN's layers and weights), at weight 1; its pooling is
# average pooling (vgg_pooling), and the lattice loss keeps the generator from answering its random filters with a
# fixed grid of its sub-pixel lattice (docs/training.md, "Where the grid comes from", measured run by run).
# (Departure from every paper, whose VGG19 is ImageNet's; explicit flags still win.)
RANDOM_VGG = dict(
    perceptual_layers=["conv1_2", "conv2_2", "conv3_4", "conv4_4", "conv5_4"],
    perceptual_layer_weights=[0.1, 0.1, 1.0, 1.0, 1.0], perceptual_loss="l1", perceptual_loss_weight=1.0,
    lattice_loss_weight=100.0,
)


# On resume, the losses are the checkpoint's unless a flag is given: their defaults, and RANDOM_VGG, may have changed
# since it was written. A checkpoint from before a setting existed trained without it (PREDATING).
RESUMED_LOSSES = ("vgg_weights", "vgg_pooling", "perceptual_layers", "perceptual_layer_weights", "perceptual_loss",
                  "perceptual_loss_weight", "pixel_loss_weight", "adversarial_loss_weight", "lattice_loss_weight",
                  "artifact_loss_weight")
PREDATING = dict(vgg_pooling="max", lattice_loss_weight=0.0, artifact_loss_weight=0.0)


def peek_flag(argv, name, default):
    """The value of --name in argv (as `--name value` or `--name=value`) before the full parse, else default."""
    value = default
    for index, arg in enumerate(argv):
        if arg == f"--{name}" and index + 1 < len(argv):
            value = argv[index + 1]
        elif arg.startswith(f"--{name}="):
            value = arg.split("=", 1)[1]
    return value


def apply_recipe(defaults, argv):
    """The defaults with the chosen recipe's values on top, then RANDOM_VGG's for --vgg_weights random (explicit
    flags are applied after, by the parser)."""
    recipe = peek_flag(argv, "recipe", defaults["recipe"])
    if recipe not in RECIPES:
        raise ValueError(f"recipe must be one of {sorted(RECIPES)}, not {recipe!r}.")
    random_vgg = RANDOM_VGG if peek_flag(argv, "vgg_weights", defaults["vgg_weights"]) == "random" else {}
    return {**defaults, **RECIPES[recipe], **random_vgg, "recipe": recipe}


def check_hyperparameters(hp):
    """Mistakes in the flags that would otherwise only show up later, or as a confusing error (the values that cannot
    work: training.check_training_hyperparameters). --perceptual_layers given alone weighs each layer 1."""
    training.check_training_hyperparameters(
        hp, positive=("kernel_size_d", "first_kernel_size_d", "n_channels_d", "n_blocks_d", "fc_size_d", "num_feat_d"),
        choices=dict(discriminator_arch=("srgan", "unet"), gan_type=("vanilla", "relativistic"),
                     perceptual_loss=("mse", "l1"), vgg_pooling=("auto", "max", "avg"),
                     degradation=degradations.DEGRADATIONS),
        layer_counts=("n_blocks_d",), widths=("kernel_size_d", "first_kernel_size_d", "n_channels_d", "fc_size_d",
                                              "num_feat_d"))
    # Counted before it is built (the SRGAN discriminator doubles its channels every two blocks).
    training.check_network_size(lambda: build_discriminator(hp)[0], f"The discriminator ({hp.discriminator_arch})")
    given = getattr(hp, "given", set())
    if "perceptual_layers" in given and "perceptual_layer_weights" not in given:  # layers named without weights
        hp.perceptual_layer_weights = [1.0] * len(hp.perceptual_layers)  # 1 each, as if given (a resume keeps them)
        given.add("perceptual_layer_weights")
    if len(hp.perceptual_layers) != len(hp.perceptual_layer_weights):
        raise ValueError("perceptual_layers and perceptual_layer_weights must have the same length.")
    augmentations.mixture_of(hp)  # --mixopts and its probabilities and strengths
    if hp.artifact_loss_weight > 0 and hp.ema_decay <= 0:
        raise ValueError("--artifact_loss_weight compares the generator with its EMA: give --ema_decay too (e.g. "
                         "0.999), or --artifact_loss_weight 0.")


# ------------------------------------------------------------------------------------------------------
# Losses
# ------------------------------------------------------------------------------------------------------
def adversarial_loss(real_logits, fake_logits, gan_type, for_generator):
    """
    The GAN losses, from the discriminator's logits for real (HR) and fake (SR) images.

    vanilla (SRGAN): D(x) = sigmoid(logit) is the probability that x is real. The discriminator learns real -> 1 and
        fake -> 0: BCE(real, 1) + BCE(fake, 0). The generator is trained with the *target of real images* for its
        fakes, BCE(fake, 1) = -log D(SR): it wins when D calls its SR images "HR". (This "non-saturating" form is
        steep while D easily spots the fakes, where log(1 - D(SR)) would be flat.) real_logits are not used.
    relativistic (ESRGAN's relativistic average GAN): D estimates whether a real image is more realistic than the
        average fake, and a fake more realistic than the average real image:
            discriminator: (BCE(real - mean(fake), 1) + BCE(fake - mean(real), 0)) / 2
            generator:     (BCE(real - mean(fake), 0) + BCE(fake - mean(real), 1)) / 2     (targets swapped)
        The generator then gets gradients from real images too, which ESRGAN found gives sharper edges and more
        stable training. The means are over the batch (dim 0): "the average fake" is an expectation over images.
        With one logit per image (the SRGAN discriminator) that is the mean of all logits. With one logit per pixel
        (the U-Net discriminator) it keeps one average per pixel position; a global mean would compare each real
        pixel with the average of every fake pixel of every kind (sky, grass, edges), a baseline that says little
        about that pixel.

    Logits are (N,) for the SRGAN discriminator or (N, 1, H, W) for the U-Net one, in float32.
    BCE is F.binary_cross_entropy_with_logits (the sigmoid folded in, numerically stable), a mean over elements.
    """
    bce = F.binary_cross_entropy_with_logits
    ones, zeros = torch.ones_like(fake_logits), torch.zeros_like(fake_logits)
    if gan_type == "vanilla":
        if for_generator:
            return bce(fake_logits, ones)
        return bce(real_logits, ones) + bce(fake_logits, zeros)
    if gan_type == "relativistic":
        real_vs_fake = real_logits - fake_logits.mean(dim=0, keepdim=True)
        fake_vs_real = fake_logits - real_logits.mean(dim=0, keepdim=True)
        if for_generator:  # roles swapped: the fakes should look more real than the reals
            return (bce(real_vs_fake, zeros) + bce(fake_vs_real, ones)) / 2
        return (bce(real_vs_fake, ones) + bce(fake_vs_real, zeros)) / 2
    raise ValueError(f"gan_type must be 'vanilla' or 'relativistic', not {gan_type!r}.")


def perceptual_loss(vgg, sr_imgs, hr_imgs, distance):
    """
    The perceptual loss: the weighted distance between VGG19 feature maps of the SR and HR images.

        sum over the layers l of vgg.layer_weights[l] * distance(phi_l(SR), phi_l(HR))       distance 'mse' or 'l1'

    sr_imgs, hr_imgs: (N, 3, H, W) in [0, 1]; they are ImageNet-normalised for VGG here. Gradients flow through the
    frozen VGG into the SR images; the HR features are targets and need none.

    The SRGAN paper divides the VGG feature maps by 12.75 to bring its VGG loss to the scale of a pixel MSE; with the
    MSE distance that is the same as multiplying this loss by 1 / 12.75^2 = 0.0062. We do not rescale here: the loss
    weights are the one place where the terms are balanced (as in ESRGAN and Real-ESRGAN, which do not rescale
    either), and the default --perceptual_loss_weight, 0.0062, is the paper's rescaling in our terms. (The classic
    PyTorch tutorial weighs this loss 1 beside the same 1e-3 adversarial weight, which makes the adversarial term
    about 160 times weaker next to it than in the paper: --perceptual_loss_weight 1 gives it.)
    """
    distances = {"mse": F.mse_loss, "l1": F.l1_loss}
    if distance not in distances:
        raise ValueError(f"perceptual_loss must be 'mse' or 'l1', not {distance!r}.")
    sr_features = vgg(utils.convert_image(sr_imgs, "[0, 1]", "imagenet-norm"))
    with torch.no_grad():  # the targets need no gradient
        hr_features = vgg(utils.convert_image(hr_imgs, "[0, 1]", "imagenet-norm"))
    return sum(weight * distances[distance](sr_features[name].float(), hr_features[name].float())
               for name, weight in vgg.layer_weights.items())


def artifact_loss(sr_imgs, ema_sr_imgs, target_imgs, window=7):
    """
    LDL's artifact loss (Liang et al., CVPR 2022, "Details or Artifacts"): an L1 loss weighted by a map of where
    the generator's output is likely an artifact rather than a detail.

    A GAN's details and its artifacts both differ from HR; what tells them apart is the residual |HR - SR| (summed
    over the colours, (N, 1, H, W)): where it varies a lot within a small window (its local variance over
    window x window pixels), SR has noise-like texture that HR does not, and where the EMA of the generator (steadier,
    fewer artifacts) is closer to HR than the generator is, that texture is not a detail the EMA also found. The map
    is that local variance, times the image's residual variance^(1/5) (images with more artifacts weigh more), and 0
    where the generator is as close to HR as its EMA. The map is a weight (no gradient through it):

        mean of | map * SR - map * HR |

    :param sr_imgs: (N, 3, H, W) the generator's output, in [0, 1]
    :param ema_sr_imgs: (N, 3, H, W) the EMA generator's output on the same input (no gradient)
    :param target_imgs: (N, 3, H, W) the pixel loss's target, in [0, 1]
    :return: scalar tensor
    """
    sr_imgs, ema_sr_imgs, target_imgs = sr_imgs.float(), ema_sr_imgs.float(), target_imgs.float()
    with torch.no_grad():
        residual = (target_imgs - sr_imgs).abs().sum(1, keepdim=True)  # (N, 1, H, W)
        ema_residual = (target_imgs - ema_sr_imgs).abs().sum(1, keepdim=True)
        image_weight = residual.var(dim=(1, 2, 3), keepdim=True) ** 0.2  # (N, 1, 1, 1)
        padded = F.pad(residual, [window // 2] * 4, mode="reflect")
        local_mean = F.avg_pool2d(padded, window, stride=1)  # (N, 1, H, W)
        local_variance = (F.avg_pool2d(padded ** 2, window, stride=1) - local_mean ** 2).clamp_min(0)
        local_variance *= window ** 2 / (window ** 2 - 1)  # the unbiased variance, as LDL's
        artifact_map = image_weight * local_variance * (residual >= ema_residual)
    return F.l1_loss(artifact_map * sr_imgs, artifact_map * target_imgs)


def lattice_loss(sr_imgs, target_imgs, scaling_factor):
    """
    The sub-pixel lattice loss: how far the s x s phase means of SR are from HR's (s = scaling_factor).

    An x s generator makes each output pixel (y, x) with its sub-pixel channel (y mod s, x mod s): a fixed s x s
    pattern added to the output (a grid) shifts the mean of each of the s^2 phases by its own amount, and changes
    nothing else of these means. A discriminator that has learnt "sharp means real" rewards any added high-frequency
    energy, and such a pattern is the cheapest the generator can make; this loss takes that path away and leaves every
    other detail to the other losses. Per image and channel, the phase means of SR - target without their mean:

        mean over images, channels and phases of ( mean over the positions of phase (a, b) of (SR - target) )^2

    :param sr_imgs, target_imgs: (N, C, H, W), H and W multiples of s (training crops are)
    :return: scalar tensor (float32)
    """
    n, c, h, w = sr_imgs.shape
    s = scaling_factor
    phases = (sr_imgs - target_imgs).float().reshape(n, c, h // s, s, w // s, s).mean(dim=(2, 4))   # (N, C, s, s)
    phases = phases - phases.mean(dim=(2, 3), keepdim=True)  # a shift of the whole image is no pattern
    return (phases ** 2).mean()


# ------------------------------------------------------------------------------------------------------
# The networks and the training batches
# ------------------------------------------------------------------------------------------------------
def build_discriminator(hp):
    """The discriminator and its constructor arguments, from the hyperparameters."""
    if hp.discriminator_arch == "srgan":
        kwargs = dict(kernel_size=hp.kernel_size_d, n_channels=hp.n_channels_d, n_blocks=hp.n_blocks_d,
                      fc_size=hp.fc_size_d)
        if hp.first_kernel_size_d != hp.kernel_size_d:  # (a discriminator with one kernel size is stored as before)
            kwargs["first_kernel_size"] = hp.first_kernel_size_d
        if hp.antialias_d:  # (the paper's discriminator is stored as before)
            kwargs["antialias"] = True
        return models.Discriminator(**kwargs), kwargs
    if hp.discriminator_arch == "unet":
        kwargs = dict(num_feat=hp.num_feat_d)
        if hp.antialias_d:  # (Real-ESRGAN's discriminator is stored as before)
            kwargs["antialias"] = True
        return models.UNetDiscriminatorSN(**kwargs), kwargs
    raise ValueError(f"discriminator_arch must be 'srgan' or 'unet', not {hp.discriminator_arch!r}.")


# The hyperparameters that shape the discriminator: a resumed run keeps its checkpoint's (and refuses other values).
DISCRIMINATOR_ARCHITECTURE = ("discriminator_arch", "kernel_size_d", "first_kernel_size_d", "n_channels_d",
                              "n_blocks_d", "fc_size_d", "num_feat_d", "antialias_d")


# What a checkpoint of this script holds besides training.RESUMABLE_KEYS: the discriminator's weights, architecture,
# optimiser and schedule.
RESUMABLE_DISCRIMINATOR_KEYS = ("discriminator", "discriminator_arch", "discriminator_kwargs", "optimizer_d",
                                "scheduler_d")


def discriminator_flags(arch, kwargs):
    """The flags that build a discriminator (build_discriminator's), e.g. '--discriminator_arch srgan --n_blocks_d 8'."""
    return " ".join([f"--discriminator_arch {arch}"] + [f"--{name}_d {value}" for name, value in kwargs.items()])


def vgg_pooling(hp):
    """The pooling of the perceptual loss's VGG19: --vgg_pooling, with 'auto' as 'avg' for a random VGG19 and 'max'
    (the network's own) for trained weights. Max-pooling rewards any added high-frequency energy (the largest of four
    values grows when they oscillate), which random filters cannot tell from detail: the generator's cheapest such
    energy is a fixed pattern of its sub-pixel lattice. Average pooling is linear and gives no such reward.
    (Departure from the papers, whose VGG19 is always ImageNet's, only with --vgg_weights random.)"""
    if hp.vgg_pooling == "auto":
        return "avg" if hp.vgg_weights == "random" else "max"
    return hp.vgg_pooling


def build_networks(hp, resumed, device):
    """
    The three networks, on `device`: the generator (from the SRGAN checkpoint we resume, or else from the
    pixel-loss network of step 2), the discriminator, and the frozen VGG19 of the perceptual loss.

    :return: (generator, discriminator, vgg, architecture), architecture being the names and constructor arguments
             a checkpoint stores
    """
    if resumed:  # (built once its weights are known to fit what the file says of it)
        generator = models.generator_from_weights(resumed["generator_arch"], resumed["generator_kwargs"],
                                                  resumed["generator"], f"{hp.checkpoint} (generator)")
    else:
        # Step 2's network, with its EMA weights when it kept them (they are the better network), or any generator
        # file inference.load_generator reads, e.g. one of export.py (its architecture comes with it; no optimiser state).
        generator, _, _ = inference.load_generator(hp.srresnet_checkpoint, expected_kind="srresnet")
    arch, kwargs = generator.generator_arch, generator.generator_kwargs  # (build_generator keeps them)
    # The generator must fit the data's scale (a pixel-unshuffle model by its fold); with CutBlur it takes HR-sized
    # inputs, so it must not upscale at all (an x1 pixel-unshuffle model).
    source = f"--checkpoint {hp.checkpoint}" if resumed else f"--srresnet_checkpoint {hp.srresnet_checkpoint}"
    inference.check_generator_scale(generator, hp.scaling_factor, f"The generator of {source}")
    augmentations.check_generator_scale(augmentations.mixture_of(hp), generator.scaling_factor)
    discriminator, discriminator_kwargs = build_discriminator(hp)
    if resumed and (resumed["discriminator_arch"], resumed["discriminator_kwargs"]) != (hp.discriminator_arch,
                                                                                        discriminator_kwargs):
        # A resumed run continues its own discriminator: other flags would build one its weights do not fit.
        raise ValueError(f"{hp.checkpoint} holds the discriminator of "
                         f"{discriminator_flags(resumed['discriminator_arch'], resumed['discriminator_kwargs'])}, but "
                         f"the flags ask for {discriminator_flags(hp.discriminator_arch, discriminator_kwargs)}: a "
                         f"resumed run keeps its discriminator; give its flags, or start a new run without "
                         f"--checkpoint.")
    # The frozen VGG19 of the perceptual loss. It takes 'imagenet-norm' images.
    vgg = models.VGGFeatureExtractor(dict(zip(hp.perceptual_layers, hp.perceptual_layer_weights)),
                                     weights=hp.vgg_weights, pooling=vgg_pooling(hp))
    memory_format = utils.memory_format(hp.channels_last)
    generator, discriminator, vgg = (m.to(device, memory_format=memory_format) for m in (generator, discriminator, vgg))
    architecture = dict(generator_arch=arch, generator_kwargs=kwargs, discriminator_arch=hp.discriminator_arch,
                        discriminator_kwargs=discriminator_kwargs)
    return generator, discriminator, vgg, architecture


def make_gan_batch(lr_imgs, hr_imgs, hp, iteration, rank, generator, device, pair_pool=None):
    """
    One GAN training batch, made on `device` from the loader's crops: lr_imgs (N, 3, h, w) (None with degradation
    'realesrgan') and hr_imgs (N, 3, H, W), H = s h, in [0, 1] (s = scaling_factor; e.g. h = 24 and H = 96 with the
    SRGAN defaults, H = 256 with Real-ESRGAN's).

    The (LR, HR) pairs are degradations.make_training_pairs's, as in train_srresnet.py: the loader's LR crops
    ('bicubic'), or Real-ESRGAN's degradations of the sharpened HR crops ('realesrgan'), through the training-pair
    pool when there is one. Then, as in train_srresnet.py:
      input       an x2 / x1 pixel-unshuffle generator gets the LR crops nearest-upscaled to its input size;
      mixopts     the batch augmentations (augmentations.mix_training_pairs): one drawn per iteration; CutBlur
                  makes the x1 generator's input part LR, part HR; cutout gives a loss mask;
      targets     each is the plain or the sharpened (USM) HR image, as l1_gt_usm, percep_gt_usm and gan_gt_usm say
                  (with 'bicubic', all are HR), augmented alike, and multiplied by cutout's loss mask.
    The random choices come from utils.make_rng(seed, purpose, iteration, rank): reproducible, resumable,
    and different in every process and for every purpose.

    :return: (generator input (N, 3, H / g, W / g) with g = generator.scaling_factor, the pixel loss's target,
              the perceptual loss's target, the discriminator's real images, the loss mask (N, 1, H, W) or None:
              multiply the SR images by it too), the targets (N, 3, H, W)
    """
    lr_imgs, hr_imgs, hr_usm_imgs = degradations.make_training_pairs(lr_imgs, hr_imgs, hp, iteration, rank, device,
                                                                     pair_pool)
    lr_imgs = inference.match_generator_input(lr_imgs, generator, hp.scaling_factor)
    lr_imgs, hr_imgs, hr_usm_imgs, loss_mask = augmentations.mix_training_pairs(lr_imgs, hr_imgs, hr_usm_imgs, hp,
                                                                                iteration, rank)
    if loss_mask is not None:  # cutout: the dropped pixels count in no loss (the discriminator sees them masked too)
        hr_imgs, hr_usm_imgs = hr_imgs * loss_mask, hr_usm_imgs * loss_mask
    pixel_target_imgs = hr_usm_imgs if hp.l1_gt_usm else hr_imgs
    perceptual_target_imgs = hr_usm_imgs if hp.percep_gt_usm else hr_imgs
    real_imgs = hr_usm_imgs if hp.gan_gt_usm else hr_imgs
    return lr_imgs, pixel_target_imgs, perceptual_target_imgs, real_imgs, loss_mask


# ------------------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------------------
def main():
    argv = sys.argv[1:]
    hp = cli.parse_hyperparameters(apply_recipe(hyperparameters, argv), __doc__, [__file__, degradations.__file__],
                                   argv, aliases=RENAMED)
    check_hyperparameters(hp)
    # Processes, precision, a checked and locked output folder, the seed (training.setup_training).
    rank, world_size, device, precision = training.setup_training(hp, "srgan")
    is_main_process = rank == 0  # only one process prints and writes checkpoints

    # The networks: the generator (from the run we resume, None for a new run, or from the pixel-loss network), the
    # discriminator and the frozen VGG19 (build_networks); an Adam and a learning-rate schedule for each of the two
    # trained; and, if asked, the average of the generator's weights (EMA).
    resumed = training.load_run_to_resume(hp, "srgan", RENAMED, ("scaling_factor", *DISCRIMINATOR_ARCHITECTURE),
                                          not_used=("srresnet_checkpoint",), required=RESUMABLE_DISCRIMINATOR_KEYS,
                                          kept=RESUMED_LOSSES, predating=PREDATING)
    generator, discriminator, vgg, architecture = build_networks(hp, resumed, device)
    optimizer_g, scheduler_g = training.make_optimizer(generator, hp)
    optimizer_d, scheduler_d = training.make_optimizer(discriminator, hp)
    ema = training.ModelEMA(generator, hp.ema_decay) if hp.ema_decay > 0 else None
    # Everything a checkpoint holds to continue exactly where it stopped. Validation (the best weights so far: a GAN
    # trades some PSNR for texture, so the best file is the generator's most faithful state, not its most realistic
    # one; the generator starts trained, so its starting weights are a candidate too) and Real-ESRGAN's training-pair
    # pool join it, and a resumed run continues all from its checkpoint.
    stateful = dict(generator=generator, discriminator=discriminator, optimizer_g=optimizer_g,
                    optimizer_d=optimizer_d, scheduler_g=scheduler_g, scheduler_d=scheduler_d, generator_ema=ema)
    validation, pair_pool, start_iteration = training_log.start_run(
        "srgan", hp, stateful, resumed, RENAMED, rank, world_size, start_is_candidate=True, **architecture)
    if is_main_process:
        print(f"recipe {hp.recipe}: generator {architecture['generator_arch']} x{generator.scaling_factor} "
              f"({'resumed from ' + hp.checkpoint if resumed else 'from ' + hp.srresnet_checkpoint}), "
              f"discriminator {hp.discriminator_arch}, {hp.gan_type} GAN; device {device} (x{world_size} processes), "
              f"precision {precision}.")

    # Wrappers for several processes / speed (DDP, torch.compile); checkpoints are written from the plain modules.
    generator_model = training.wrap_for_training(generator, hp, device, world_size)
    discriminator_model = training.wrap_for_training(discriminator, hp, device, world_size)
    grad_scaler_g = torch.amp.GradScaler(device.type, enabled=precision == "fp16")  # fp16 needs loss scaling
    grad_scaler_d = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    train_loader = datasets.make_train_loader(hp, start_iteration, rank, world_size)
    # Ctrl+C / SIGTERM, checkpoints, the progress bar, reports and logs: the duties of the loop's end.
    stop_signal, save, log = training_log.start_duties(
        "srgan", hp, stateful, resumed, start_iteration, device, is_main_process,
        ["perceptual", "pixel", "adversarial", "discriminator", "lattice"]
        + (["artifact"] if hp.artifact_loss_weight > 0 else []), f"train_srgan ({hp.recipe})",
        **architecture)

    generator.train()
    discriminator.train()
    for iteration in log.iterations():  # start_iteration .. iterations - 1, with a progress bar
        lr_imgs, hr_imgs = next(train_loader)  # the loader's crops, in [0, 1]: LR (None: degradations) and HR
        lr_imgs, pixel_target_imgs, perceptual_target_imgs, real_imgs, loss_mask = make_gan_batch(
            lr_imgs, hr_imgs, hp, iteration, rank, generator, device, pair_pool)

        # ---- Generator step: perceptual + pixel + adversarial + lattice (+ artifact) loss, each with its weight. ----
        # The discriminator's weights get no gradients here (saves time; its optimiser would ignore them anyway).
        # It is called unwrapped: with several processes only the discriminator step syncs its gradients.
        discriminator.requires_grad_(False)
        with inference.autocast(device, precision):
            sr_imgs = generator_model(utils.convert_image(lr_imgs, "[0, 1]", generator.input_format))
            sr_imgs = utils.convert_image(sr_imgs.float(), generator.output_format, "[0, 1]")  # (N, 3, H, W)
            if loss_mask is not None:  # cutout (--mixopts): what it dropped counts in no loss, as in the targets
                sr_imgs = sr_imgs * loss_mask
            perceptual = perceptual_loss(vgg, sr_imgs, perceptual_target_imgs, hp.perceptual_loss)
            pixel = F.l1_loss(sr_imgs, pixel_target_imgs)
            # No fixed s x s pattern (a grid): the phase means of SR follow HR's (lattice_loss; logged even at
            # weight 0, where it measures the grid a run may be growing).
            lattice = lattice_loss(sr_imgs, pixel_target_imgs, hp.scaling_factor)
            fake_logits = discriminator(sr_imgs).float()
            # The relativistic loss also needs D's opinion of real images (a constant for the generator).
            real_logits = None
            if hp.gan_type == "relativistic":
                with torch.no_grad():
                    real_logits = discriminator(real_imgs).float()
            adversarial = adversarial_loss(real_logits, fake_logits, hp.gan_type, for_generator=True)
            generator_loss = (hp.perceptual_loss_weight * perceptual + hp.pixel_loss_weight * pixel
                              + hp.adversarial_loss_weight * adversarial + hp.lattice_loss_weight * lattice)
            losses = dict(perceptual=perceptual, pixel=pixel, adversarial=adversarial, lattice=lattice)  # (logged)
            if hp.artifact_loss_weight > 0:  # LDL: where SR is noisier than the EMA generator's SR (artifact_loss)
                with torch.no_grad():
                    ema_sr_imgs = ema.module(utils.convert_image(lr_imgs, "[0, 1]", generator.input_format))
                    ema_sr_imgs = utils.convert_image(ema_sr_imgs.float(), generator.output_format, "[0, 1]")
                    if loss_mask is not None:  # (cutout: as sr_imgs)
                        ema_sr_imgs = ema_sr_imgs * loss_mask
                losses["artifact"] = artifact_loss(sr_imgs, ema_sr_imgs, pixel_target_imgs)
                generator_loss = generator_loss + hp.artifact_loss_weight * losses["artifact"]
        optimizer_g.zero_grad(set_to_none=True)
        grad_scaler_g.scale(generator_loss).backward()
        grad_scaler_g.step(optimizer_g)
        grad_scaler_g.update()
        if ema is not None:
            ema.update(generator, iteration)

        # ---- Discriminator step: tell HR (real) from SR (fake). ----
        # (Departure: the classic tutorial feeds the discriminator ImageNet-normalised images; we feed [0, 1], as
        # ESRGAN and Real-ESRGAN do: only VGG needs ImageNet's normalisation, and perceptual_loss applies it.)
        # The SR images are detached: this step must change only the discriminator, and backpropagating into
        # the generator would waste time on gradients nobody uses.
        discriminator.requires_grad_(True)
        with inference.autocast(device, precision):
            real_logits = discriminator_model(real_imgs).float()
            fake_logits = discriminator_model(sr_imgs.detach()).float()
            discriminator_loss = adversarial_loss(real_logits, fake_logits, hp.gan_type, for_generator=False)
        optimizer_d.zero_grad(set_to_none=True)
        grad_scaler_d.scale(discriminator_loss).backward()
        grad_scaler_d.step(optimizer_d)
        grad_scaler_d.update()
        scheduler_g.step()
        scheduler_d.step()

        # The duties of the end of an iteration, each when it is due.
        completed = iteration + 1
        log.add_losses(**losses, discriminator=discriminator_loss)
        stop_now = stop_signal.should_stop()  # Ctrl+C / SIGTERM in any process: all save now and stop together
        last = completed == hp.iterations
        report_now = completed % hp.print_every == 0 or last
        validate_now = validation.due(completed, last)
        save_now = completed % hp.checkpoint_every == 0 or last or stop_now
        if report_now or validate_now or save_now:
            log.check_finite(completed, save.last_checkpoint)  # a NaN loss stops the run before it saves
        if report_now:
            log.report(completed)  # mean losses, learning rate and speed: progress bar and log files
        if validate_now:
            log.validate(completed)  # before the save: the checkpoint then holds the best score, this one included
        if save_now:
            save(completed)  # checkpoint_srgan.pth, atomically; a signal during the save waits for it
        if stop_now:
            break
    log.close(save)
    training.finish(hp.output_folder, "srgan")  # release the output folder; leave the process group


if __name__ == "__main__":
    cli.run_cli(main)
