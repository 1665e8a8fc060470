"""
Step 2 of the tutorial: train a super-resolution network with a pixel loss.

The network sees a low-resolution (LR) crop and must produce the high-resolution (HR) crop it was made from.
The loss compares the two pixel by pixel: MSE for SRResNet (the SRGAN paper), L1 for ESRGAN's PSNR-oriented
RRDB network. A pixel loss maximises PSNR but gives slightly blurry images (the average of all plausible
textures); train_srgan.py then starts from this network and makes it produce sharp textures.

Quick start (CPU, a minute):  python train_srresnet.py --data_folder data_lists --generator_arch compact \\
                                  --num_feat 32 --num_conv 6 --iterations 1500 --learning_rate 1e-3 ...
Classic SRResNet (GPU, days): python train_srresnet.py --data_folder data_lists
ESRGAN's RRDB-PSNR:           python train_srresnet.py --data_folder data_lists --generator_arch rrdb --pixel_loss l1 \\
                                  --crop_size 128 --learning_rate 2e-4 --learning_rate_gamma 0.5 \\
                                  --learning_rate_milestones 200000 400000 600000 800000
Real-ESRNet (Real-ESRGAN's    python train_srresnet.py --data_folder data_lists --generator_arch rrdb --pixel_loss l1 \\
first stage):                     --degradation realesrgan --queue_size 180 --crop_size 256 --learning_rate 2e-4 \\
                                  --ema_decay 0.999
Several processes:            torchrun --nproc_per_node 2 train_srresnet.py --data_folder data_lists
Resume:                       python train_srresnet.py --data_folder data_lists --checkpoint checkpoint_srresnet.pth
Fine-tune the shipped model:  python train_srresnet.py --data_folder my_lists --pretrained srresnet --learning_rate 1e-5
CutBlur (an x1 model):        python train_srresnet.py --data_folder data_lists --use_unshuffle true \\
                                  --unshuffle_scale 4 --mixopts cutblur --mixprob 1.0 --mixalpha 0.7
The paper's mixture:          ... --use_unshuffle true --unshuffle_scale 4 --mixopts blend rgb mixup cutout cutmix \\
                                  cutmixup cutblur
Watch it:                     tensorboard --logdir <output_folder> (validation on --val_sets every --val_every
                                  iterations; the best weights go to best_srresnet.pth, the numbers also to
                                  log_srresnet.jsonl)

Every hyperparameter below can be overridden by a flag of the same name; --help lists them.
(--lr, --lr_milestones and --lr_gamma, the old names of the learning-rate flags, still work.)
"""
import sys

import torch
from torch import nn

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
# Hyperparameters (each one is also a command-line flag: --name value)
# ------------------------------------------------------------------------------------------------------
hyperparameters = dict(
    # Data
    data_folder="./",  # folder with train_images.json, written by create_data_lists.py
    crop_size=96,  # side of the HR training crops; the LR crops are crop_size / scaling_factor
    scaling_factor=4,  # the data's upscaling factor: 2, 4 or 8 for SRResNet, 4 for RRDB, any for compact
    augment=False,  # random flips and 90-degree rotations of the crops
    lr_maker="pil",  # how LR crops are made from HR (degradation 'bicubic'): 'pil' (Pillow's bicubic) or 'matlab'
    #   (MATLAB's imresize)
    degradation="bicubic",  # how LR images are made: 'bicubic' (the loader's LR crops) or 'realesrgan' (Real-ESRGAN's
    #   random blur, noise, resize and JPEG, on the device; its settings: degradations.DEGRADATION_DEFAULTS, below)
    queue_size=0,  # Real-ESRGAN's training-pair pool: draw each batch from this many recent (LR, HR) pairs
    #   (Real-ESRGAN: 180; at least batch_size; 0: off)
    # Batch augmentations: the CutBlur paper's (augmentations.py), one drawn per iteration; traiNNer's option names
    mixopts=["none"],  # any of blend rgb mixup cutout cutmix cutmixup cutblur none ('none': off; all seven: the
    #   paper's mixture); cutblur needs an x1 model (--use_unshuffle true --unshuffle_scale 4 on x4 data)
    mixprob=[],  # probability that the augmentation drawn is applied: one per mixopts, one for all, or none (the
    #   paper's: 1.0)
    mixalpha=[],  # strength of each: one per mixopts, one for all, or none (the paper's: blend 0.6, rgb 1.0, mixup
    #   1.2, cutout 0.001, cutmix 0.7, cutmixup 0.7, cutblur 0.7)
    aux_mixprob=1.0,  # cutmixup: probability of its mixup (the paper's 1.0)
    aux_mixalpha=1.2,  # cutmixup: its mixup's Beta(a, a) (the paper's 1.2)
    # Generator
    generator_arch="srresnet",  # 'srresnet' (SRGAN paper), 'rrdb' (ESRGAN's RRDBNet) or 'compact' (Real-ESRGAN's
    #   SRVGGNetCompact)
    large_kernel_size=9,  # srresnet: kernel of the first and last convolutions
    small_kernel_size=3,  # srresnet: kernel of all other convolutions
    n_channels=64,  # srresnet: feature channels (the SRGAN paper's name; BasicSR's num_feat for the others)
    n_blocks=16,  # srresnet: residual blocks
    icnr=False,  # srresnet: start each sub-pixel convolution from ICNR (models.icnr_; Aitken et al. 2017), its
    #   sub-kernels equal: no sub-pixel pattern at the start, but no fainter one after training (measured:
    #   docs/training.md, "Where the grid comes from")
    num_feat=64,  # rrdb and compact: feature channels
    num_block=23,  # rrdb: residual-in-residual dense blocks (23 in ESRGAN, 6 in the Real-ESRGAN anime model)
    num_grow_ch=32,  # rrdb: channels added by each dense layer
    num_conv=32,  # compact: 3x3 convolutions between the first and the last (32: realesr-general-x4v3, 16:
    #   realesr-animevideov3); with --pretrained of a compact model, more than its own deepens it
    #   (training.deepened_compact)
    use_unshuffle=False,  # srresnet and rrdb: an x4 network behind a pixel-unshuffle, an x2 (unshuffle_scale 2) or
    #   x1 (4) model, fed the LR crops nearest-upscaled to match
    unshuffle_scale=2,  # the pixel-unshuffle factor when use_unshuffle is on
    # Learning
    pixel_loss="mse",  # 'mse' (SRResNet) or 'l1' (ESRGAN's RRDB-PSNR)
    batch_size=16,  # crops per iteration (over all processes together)
    iterations=1_000_000,  # training iterations (the SRGAN paper: 1e6)
    learning_rate=1e-4,  # Adam's learning rate
    learning_rate_milestones=[],  # iterations at which the learning rate is multiplied by learning_rate_gamma
    learning_rate_gamma=0.5,  # factor applied at each milestone
    ema_decay=0.0,  # keep an exponential moving average of the weights with this decay (0: off; e.g. 0.999)
    grad_clip=0.0,  # clip the gradient norm to this value (0: off)
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
    #   picks the best weights, written to best_srresnet.pth
    val_every=1000,  # measure PSNR / SSIM on val_sets every this many iterations, at the start and the end (0: off)
    val_degradation="bicubic",  # how the validation LR images are made, as eval.py's --lr_degradation: 'bicubic'
    #   (the papers' protocol), 'jpeg', 'noise_jpeg' or 'realesrgan' (watch a model for real photos on such inputs)
    # Bookkeeping
    seed=0,  # random seed: same seed, same crops, same initial weights
    print_every=100,  # update the running losses shown on the progress bar every this many iterations
    checkpoint_every=1000,  # save a checkpoint every this many iterations (and at the end, and on Ctrl+C)
    output_folder=".",  # where checkpoint_srresnet.pth, best_srresnet.pth and the logs are written
    checkpoint=None,  # path of a checkpoint_srresnet.pth to resume from
    overwrite=False,  # start a new run in an output_folder that holds a run of this script: its checkpoint, best
    #   weights and logs are removed first (without it such a run is refused: resume it with --checkpoint instead)
    pretrained=None,  # start from these weights, to fine-tune on your data: a shipped model ('srresnet', 'compact',
    #   'realistic') or any file eval.py takes; the architecture comes with them (with --use_unshuffle true: its x2 /
    #   x1 variant, starting where these weights are: the first convolution folded, inference.fold_first_convolution)
)
# Real-ESRGAN's degradations (degradation 'realesrgan'): every probability and range is a flag too, with Real-ESRGAN's
# values as defaults (degradations.DEGRADATION_DEFAULTS says what each means). Of its three sharpened-target flags
# only l1_gt_usm applies here (Real-ESRNet's gt_usm); the other two are for train_srgan.py's losses.
hyperparameters.update({name: value for name, value in degradations.DEGRADATION_DEFAULTS.items()
                        if name not in ("percep_gt_usm", "gan_gt_usm")})


def generator_kwargs(hp):
    """The generator's constructor arguments, taken from the hyperparameters (models.build_generator takes them)."""
    # With pixel-unshuffle, an x4 network behind a fold by r: overall x(4 / r), whatever the data's scaling factor
    # (an x1 model trains on x4 data, fed the LR crops nearest-upscaled: inference.match_generator_input).
    scaling_factor = 4 // hp.unshuffle_scale if hp.use_unshuffle else hp.scaling_factor
    if hp.generator_arch == "srresnet":
        kwargs = dict(large_kernel_size=hp.large_kernel_size, small_kernel_size=hp.small_kernel_size,
                      n_channels=hp.n_channels, n_blocks=hp.n_blocks, scaling_factor=scaling_factor)
        return {**kwargs, "unshuffle_scale": hp.unshuffle_scale} if hp.use_unshuffle else kwargs
    if hp.generator_arch == "rrdb":
        # RRDBNet's `scale` (BasicSR's name) is the overall scale: 4 natively, 2 / 1 through pixel-unshuffle.
        return dict(scale=scaling_factor, num_feat=hp.num_feat, num_block=hp.num_block, num_grow_ch=hp.num_grow_ch)
    if hp.generator_arch == "compact":
        if hp.use_unshuffle:
            raise ValueError("use_unshuffle is for generator_arch 'srresnet' or 'rrdb'; the compact network upscales "
                             "by any integer itself (its PixelShuffle): give --scaling_factor instead.")
        # Real-ESRGAN's names; `upscale` is the scale of its PixelShuffle.
        return dict(num_feat=hp.num_feat, num_conv=hp.num_conv, upscale=hp.scaling_factor)
    raise ValueError(f"generator_arch must be 'srresnet', 'rrdb' or 'compact', not {hp.generator_arch!r}.")


# The hyperparameters that shape the generator, and scaling_factor (the data it fits): a resumed run keeps its
# checkpoint's, and refuses other values (training.reconcile_resumed_hyperparameters).
ARCHITECTURE = ("generator_arch", "large_kernel_size", "small_kernel_size", "n_channels", "n_blocks", "num_feat",
                "num_block", "num_grow_ch", "num_conv", "use_unshuffle", "unshuffle_scale", "scaling_factor")


# The flags of each architecture. The sources' own names are kept (the SRGAN paper's n_blocks / n_channels, BasicSR's
# num_block / num_feat), so a flag of another network would be silently ignored: check_hyperparameters refuses it.
ARCHITECTURE_FLAGS = {
    "srresnet": ("large_kernel_size", "small_kernel_size", "n_channels", "n_blocks", "icnr", "use_unshuffle",
                 "unshuffle_scale"),
    "rrdb": ("num_feat", "num_block", "num_grow_ch", "use_unshuffle", "unshuffle_scale"),
    "compact": ("num_feat", "num_conv"),
}


def check_hyperparameters(hp):
    """One clear line for a flag whose value cannot work (training.check_training_hyperparameters), or that belongs
    to another network than --generator_arch, before any work."""
    training.check_training_hyperparameters(
        hp, positive=("large_kernel_size", "small_kernel_size", "n_channels", "n_blocks", "num_feat", "num_block",
                      "num_grow_ch", "num_conv"),
        non_negative=("grad_clip",),
        choices=dict(generator_arch=tuple(ARCHITECTURE_FLAGS), pixel_loss=("mse", "l1"),
                     degradation=degradations.DEGRADATIONS),
        layer_counts=("n_blocks", "num_block", "num_conv"),
        widths=("large_kernel_size", "small_kernel_size", "n_channels", "num_feat", "num_grow_ch"))
    augmentations.mixture_of(hp)  # --mixopts and its probabilities and strengths
    if hp.checkpoint is None and hp.pretrained is None:  # (otherwise the file brings the architecture)
        own = ARCHITECTURE_FLAGS[hp.generator_arch]
        foreign = [f"--{name}" for flags in ARCHITECTURE_FLAGS.values() for name in flags
                   if name in hp.given and name not in own]
        if foreign:
            raise ValueError(f"{', '.join(sorted(set(foreign)))} not used by --generator_arch {hp.generator_arch}, "
                             f"whose flags are {', '.join('--' + name for name in own)}: give those instead (or the "
                             f"--generator_arch the flags are for).")
        # Counted before it is built (a file's network was counted when its weights were checked against it).
        training.check_network_size(lambda: models.build_generator(hp.generator_arch, **generator_kwargs(hp)),
                                    f"The generator ({hp.generator_arch})")


def make_generator(hp, resumed, device, is_main_process):
    """
    The generator to train, on `device`, in the memory layout of --channels_last: the one of the run we resume, or
    pretrained weights to fine-tune (both bring their architecture with them), or a new one from the flags.

    Fine-tuning sets the architecture flags of hp to the weights' (the checkpoints record the network really used),
    and says in one line what it starts from. The network must fit the data's scale, and CutBlur an x1 model.

    :param resumed: the checkpoint of the run --checkpoint resumes (training.load_run_to_resume), or None
    :return: (generator, architecture: dict(generator_arch, generator_kwargs), what the checkpoints store)
    """
    if resumed:
        # (Built once its weights are known to fit what the file says of it: models.generator_from_weights.)
        generator = models.generator_from_weights(resumed["generator_arch"], resumed["generator_kwargs"],
                                                  resumed["generator"], f"{hp.checkpoint} (generator)").to(device)
        arch, kwargs = generator.generator_arch, generator.generator_kwargs  # (older checkpoints' in today's form)
    elif hp.pretrained:
        generator, description, _ = inference.load_generator(hp.pretrained, device)  # its EMA weights, if it has them
        arch, kwargs = generator.generator_arch, generator.generator_kwargs
        started = f"Fine-tuning {description}; its architecture replaces the generator flags."
        if "use_unshuffle" in hp.given and hp.use_unshuffle:
            # Its x2 / x1 pixel-unshuffle variant, started where it is: the same body, and the first convolution, which
            # takes 3 r^2 channels instead of 3, folded so that on its input (the LR crop nearest-upscaled, then
            # pixel-unshuffled) it computes exactly what the x4 model computes (inference.fold_first_convolution).
            variant = models.pixel_unshuffle_variant(arch, kwargs, hp.unshuffle_scale)
            if variant != kwargs:
                pretrained, kwargs = generator, variant
                generator = models.build_generator(arch, **kwargs).to(device)
                folded = inference.load_weights_folding_first_convolution(generator, pretrained)
                r_squared = hp.unshuffle_scale ** 2
                started = (f"Starting the x{generator.scaling_factor} pixel-unshuffle variant of {description} where "
                           f"that model is: its layers, and its first convolution folded over the {3 * r_squared} "
                           f"input channels ({', '.join(folded)}, divided by {r_squared} and repeated), which computes "
                           f"what the x{pretrained.scaling_factor} model computes on the nearest-upscaled LR image.")
        if "num_conv" in hp.given and arch == "compact" and hp.num_conv != kwargs["num_conv"]:
            # A deeper compact network that starts as this one computes (training.deepened_compact): more layers to
            # learn with, e.g. JPEG and noise removal on top of the upscaling it already does.
            generator = training.deepened_compact(generator, hp.num_conv)
            started = (f"Fine-tuning {description}, deepened from {kwargs['num_conv']} to {hp.num_conv} convolutions "
                       f"(the new ones start as identities: the same output at first).")
            kwargs = generator.generator_kwargs
        if hp.icnr and is_main_process:  # (how new weights start: these are not new)
            print(f"Note: --icnr not used with --pretrained: {hp.pretrained} brings the weights.", file=sys.stderr)
        hp.icnr = False
        # The checkpoints record the architecture really used, under the flags' names where they have one.
        hp.generator_arch = arch
        hp.use_unshuffle = getattr(generator, "unshuffle_scale", 1) > 1
        hp.unshuffle_scale = getattr(generator, "unshuffle_scale", 1) if hp.use_unshuffle else hp.unshuffle_scale
        for name, value in kwargs.items():
            if name in ARCHITECTURE and name != "scaling_factor":
                setattr(hp, name, value)
        if is_main_process:
            print(started)
    else:
        arch, kwargs = hp.generator_arch, generator_kwargs(hp)
        generator = models.build_generator(arch, **kwargs).to(device)
        if hp.icnr:  # (how the new weights start; the architecture, generator_kwargs, is the same)
            models.icnr_srresnet_(generator)
    # The network must fit the data's scale (a pixel-unshuffle model by its fold), whichever way it came; CutBlur
    # needs an x1 model.
    source = f"--pretrained {hp.pretrained}" if hp.pretrained and not resumed else f"The {arch} generator"
    inference.check_generator_scale(generator, hp.scaling_factor, source)
    augmentations.check_generator_scale(augmentations.mixture_of(hp), generator.scaling_factor)
    generator = generator.to(memory_format=utils.memory_format(hp.channels_last))
    return generator, dict(generator_arch=arch, generator_kwargs=kwargs)


def main():
    hp = cli.parse_hyperparameters(hyperparameters, __doc__, [__file__, degradations.__file__],
                                   aliases=cli.RENAMED_HYPERPARAMETERS)
    check_hyperparameters(hp)
    # Processes, precision, a checked and locked output folder, the seed (training.setup_training).
    rank, world_size, device, precision = training.setup_training(hp, "srresnet")
    is_main_process = rank == 0  # only one process prints and writes checkpoints

    # The generator: a new one, the one of the run we resume, or pretrained weights to fine-tune (`resumed` is the
    # checkpoint of the run resumed, or None); Adam and its learning-rate schedule; and, if asked, the average of its
    # weights (EMA).
    resumed = training.load_run_to_resume(hp, "srresnet", cli.RENAMED_HYPERPARAMETERS, ARCHITECTURE,
                                          not_used=("pretrained", "icnr"))  # (icnr: how new weights start)
    generator, architecture = make_generator(hp, resumed, device, is_main_process)
    optimizer, scheduler = training.make_optimizer(generator, hp)
    ema = training.ModelEMA(generator, hp.ema_decay) if hp.ema_decay > 0 else None
    # Everything a checkpoint holds to continue exactly where it stopped. Validation (the best weights so far; when
    # fine-tuning, the starting weights are a candidate too, so the best file is never worse than them) and
    # Real-ESRGAN's training-pair pool join it, and a resumed run continues all from its checkpoint.
    stateful = dict(generator=generator, optimizer_g=optimizer, scheduler_g=scheduler, generator_ema=ema)
    validation, pair_pool, start_iteration = training_log.start_run(
        "srresnet", hp, stateful, resumed, cli.RENAMED_HYPERPARAMETERS, rank, world_size,
        start_is_candidate=hp.pretrained is not None, **architecture)
    if is_main_process:
        n_parameters = sum(p.numel() for p in generator.parameters())
        resuming = f"; resuming from {hp.checkpoint} at iteration {start_iteration}" if resumed else ""
        print(f"{architecture['generator_arch']} x{generator.scaling_factor}: {n_parameters:,} parameters; device "
              f"{device} (x{world_size} processes), precision {precision}{resuming}.")

    model = training.wrap_for_training(generator, hp, device, world_size)  # DDP / torch.compile, as asked
    loss_function = {"mse": nn.MSELoss(), "l1": nn.L1Loss()}[hp.pixel_loss]  # (checked by check_hyperparameters)
    grad_scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")  # fp16 needs loss scaling
    memory_format = utils.memory_format(hp.channels_last)
    train_loader = datasets.make_train_loader(hp, start_iteration, rank, world_size)
    # Ctrl+C / SIGTERM, checkpoints, the progress bar, reports and logs: the duties of the loop's end.
    stop_signal, save, log = training_log.start_duties("srresnet", hp, stateful, resumed, start_iteration, device,
                                                       is_main_process, ["loss"], "train_srresnet", **architecture)

    # The training loop: one batch of crops per iteration.
    generator.train()
    for iteration in log.iterations():  # start_iteration .. iterations - 1, with a progress bar
        lr_imgs, hr_imgs = next(train_loader)  # (N, 3, crop / s, crop / s) (None: degradations) and (N, 3, crop, crop)
        # On the device: the LR crops as they are ('bicubic'), or made from HR by Real-ESRGAN's degradations, through
        # the pair pool when there is one (the same code as train_srgan.py's). In [0, 1].
        lr_imgs, hr_imgs, hr_usm_imgs = degradations.make_training_pairs(lr_imgs, hr_imgs, hp, iteration, rank,
                                                                         device, pair_pool)
        # An x2 / x1 pixel-unshuffle model takes the LR crops nearest-upscaled to its input size (N, 3, crop / g, ..).
        lr_imgs = inference.match_generator_input(lr_imgs, generator, hp.scaling_factor)
        # The batch augmentations (--mixopts; none by default): one drawn per iteration, seeded by it, on the device.
        # cutout's loss_mask leaves the pixels it dropped out of the loss.
        lr_imgs, hr_imgs, hr_usm_imgs, loss_mask = augmentations.mix_training_pairs(lr_imgs, hr_imgs, hr_usm_imgs, hp,
                                                                                    iteration, rank)
        target_imgs = hr_usm_imgs if hp.l1_gt_usm else hr_imgs  # Real-ESRNet's sharpened target ('bicubic': HR)
        # Into the ranges the generator takes and gives (SRResNet: LR in [0, 1], SR in [-1, 1]; RRDB and compact: both
        # in [0, 1]), so that the loss compares like with like. (Departure: the classic tutorial feeds ImageNet-
        # normalised LR images; the SRGAN paper, ESRGAN and Real-ESRGAN feed [0, 1], and so do we.)
        lr_imgs = utils.convert_image(lr_imgs.contiguous(memory_format=memory_format), "[0, 1]",
                                      generator.input_format)
        target_imgs = utils.convert_image(target_imgs, "[0, 1]", generator.output_format)

        with inference.autocast(device, precision):
            sr_imgs = model(lr_imgs)  # (N, 3, crop, crop), in the generator's output range
        sr_imgs = sr_imgs.float()  # the loss itself in fp32
        if loss_mask is not None:  # (N, 1, crop, crop) of 0 / 1, as the CutBlur paper's training loop masks both
            sr_imgs, target_imgs = sr_imgs * loss_mask, target_imgs * loss_mask
        loss = loss_function(sr_imgs, target_imgs)

        optimizer.zero_grad(set_to_none=True)
        grad_scaler.scale(loss).backward()
        if hp.grad_clip > 0:
            grad_scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(generator.parameters(), hp.grad_clip)
        grad_scaler.step(optimizer)
        grad_scaler.update()
        scheduler.step()  # milestones count iterations
        if ema is not None:
            ema.update(generator, iteration)

        # The duties of the end of an iteration, each when it is due.
        completed = iteration + 1
        log.add_losses(loss=loss)
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
            save(completed)  # checkpoint_srresnet.pth, atomically; a signal during the save waits for it
        if stop_now:
            break
    log.close(save)
    training.finish(hp.output_folder, "srresnet")  # release the output folder; leave the process group


if __name__ == "__main__":
    cli.run_cli(main)
