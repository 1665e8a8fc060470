"""
Step 3 of the tutorial: make the generator's images sharp with a GAN (SRGAN, ESRGAN, Real-ESRGAN).

A network trained with a pixel loss (train_srresnet.py) hedges: where many sharp textures are plausible it
outputs their average, which is blurry. Here the generator starts from that network and is trained against a
discriminator, a classifier that learns to tell real HR images from super-resolved ones. Fooling it forces the
generator onto the "manifold" of natural images: sharp, textured results. Two more changes from step 2:
  - the content loss compares VGG19 feature maps instead of pixels: two images with the same textures shifted by
    a pixel are far apart in pixels but close in VGG space, so the generator is free to invent plausible detail;
  - generator and discriminator are trained in turn, one step each per iteration.

Recipes (--recipe) set the hyperparameters of each paper; any flag given explicitly still wins:
  srgan       Ledig et al. 2017: VGG relu5_4 MSE content loss + 1e-3 vanilla GAN loss
  esrgan      Wang et al. 2018: relativistic average GAN, VGG conv5_4 before activation, L1, pixel L1, EMA
  realesrgan  Wang et al. 2021: trained on synthetic real-world degradations, U-Net discriminator, 5-layer
              perceptual loss, sharpened targets

Quick start (CPU):  python train_srgan.py --data_folder data_lists --srresnet_checkpoint checkpoint_srresnet.pth \\
                        --iterations 100 --vgg_weights random --pixel_loss_weight 1
Classic SRGAN:      python train_srgan.py --data_folder data_lists
ESRGAN:             python train_srgan.py --data_folder data_lists --recipe esrgan
Resume:             python train_srgan.py --data_folder data_lists --checkpoint checkpoint_srgan.pth

Every hyperparameter below can be overridden by a flag of the same name; --help lists them.
"""
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

import datasets
import models
import utils

# ------------------------------------------------------------------------------------------------------
# Hyperparameters (each one is also a command-line flag: --name value). The defaults are the SRGAN paper's.
# ------------------------------------------------------------------------------------------------------
hyperparameters = dict(
    recipe="srgan",  # 'srgan', 'esrgan' or 'realesrgan': sets the hyperparameters listed in RECIPES below
    # Data
    data_folder="./",  # folder with train_images.json, written by create_data_lists.py
    crop_size=96,  # side of the HR training crops
    scaling_factor=4,  # must match the generator's (from the SRResNet checkpoint)
    augment=False,  # random flips and 90-degree rotations of the crops
    lr_maker="pil",  # how LR crops are made from HR (degradation 'bicubic'): 'pil' or 'matlab'
    degradation="bicubic",  # 'bicubic' (LR = bicubic downscale) or 'realesrgan' (random blur, noise, resize, JPEG)
    cutblur_prob=0.0,  # CutBlur probability (needs an x1 generator: train_srresnet.py --use_unshuffle true --unshuffle_scale 4; 0: off)
    # Generator: its architecture and starting weights come from the pixel-loss network
    srresnet_checkpoint="checkpoint_srresnet.pth",  # checkpoint of train_srresnet.py to start the generator from
    # Discriminator
    discriminator_arch="srgan",  # 'srgan' (the SRGAN paper's classifier) or 'unet' (Real-ESRGAN's per-pixel U-Net)
    kernel_size_d=3,  # SRGAN discriminator: kernel size of its convolutions
    n_channels_d=64,  # SRGAN discriminator: channels of the first block (doubled every other block)
    n_blocks_d=8,  # SRGAN discriminator: convolutional blocks
    fc_size_d=1024,  # SRGAN discriminator: size of its hidden fully connected layer
    num_feat_d=64,  # U-Net discriminator: feature channels
    # Losses
    gan_type="vanilla",  # 'vanilla' (is this image real?) or 'relativistic' (is it more real than the others?)
    perceptual_layers=["conv5_4"],  # VGG19 feature maps of the content loss (SRGAN's phi_{5,4} is conv5_4)
    perceptual_layer_weights=[1.0],  # one weight per layer in perceptual_layers
    vgg_before_activation=False,  # take the feature maps before their ReLU (ESRGAN) or after it (SRGAN)
    vgg_weights="imagenet",  # 'imagenet' (torchvision's download), a path to vgg19-dcbb9e9d.pth, or 'random' (tests)
    perceptual_loss="mse",  # distance between feature maps: 'mse' (SRGAN) or 'l1' (ESRGAN)
    perceptual_loss_weight=1.0,  # weight of the content (perceptual) loss
    pixel_loss_weight=0.0,  # weight of an L1 pixel loss (ESRGAN: 1e-2, Real-ESRGAN: 1)
    adversarial_loss_weight=1e-3,  # weight of the generator's adversarial loss (SRGAN's beta)
    # Learning
    batch_size=16,  # crops per iteration (over all processes together)
    iterations=200_000,  # training iterations (the SRGAN paper: 1e5 at lr 1e-4, then 1e5 at 1e-5)
    lr=1e-4,  # Adam's learning rate, for both networks
    lr_milestones=[100_000],  # iterations at which the learning rates are multiplied by lr_gamma
    lr_gamma=0.1,  # factor applied at each milestone (SRGAN: divided by 10 halfway)
    ema_decay=0.0,  # keep an exponential moving average of the generator's weights (0: off; ESRGAN-style 0.999)
    # Speed
    precision="auto",  # 'auto', 'fp32', 'bf16' or 'fp16' (autocast); 'auto' picks what the hardware does well
    channels_last=True,  # NHWC memory layout, faster for convolutions with bf16 / fp16
    compile=False,  # torch.compile the networks (slow to start, faster per iteration on GPUs)
    workers=4,  # data-loading processes
    image_cache_mb=2048,  # keep up to this many MB of decoded training images in memory (0: decode an image per crop)
    sync_batch_norm=True,  # with several GPU processes, batch-norm statistics over the global batch (SyncBatchNorm)
    fused_adam=True,  # Adam's update as one fused kernel per step (same math; the default is slow for NHWC weights)
    # Bookkeeping
    seed=0,  # random seed
    print_every=100,  # update the running losses shown on the progress bar every this many iterations
    checkpoint_every=1000,  # save a checkpoint every this many iterations (and at the end, and on Ctrl+C)
    output_folder=".",  # where checkpoint_srgan.pth is written
    checkpoint=None,  # path of a checkpoint_srgan.pth to resume from
)

# Real-ESRGAN's degradations (used when degradation='realesrgan'): every probability and range is a hyperparameter
# too, with Real-ESRGAN's values as defaults. datasets.DEGRADATION_DEFAULTS lists them with what each one means;
# override any from the command line like the others (e.g. --noise_range 1 20 --jpeg_range 50 95). l1_gt_usm,
# percep_gt_usm and gan_gt_usm say which losses compare with the unsharp-masked HR image.
hyperparameters.update(datasets.DEGRADATION_DEFAULTS)

# What each recipe changes from the defaults above (the SRGAN paper's). Reading this table is a good summary
# of what ESRGAN and Real-ESRGAN changed.
RECIPES = {
    "srgan": {},
    "esrgan": dict(
        gan_type="relativistic", vgg_before_activation=True, perceptual_loss="l1",
        pixel_loss_weight=1e-2, perceptual_loss_weight=1.0, adversarial_loss_weight=5e-3,
        iterations=400_000, lr_milestones=[50_000, 100_000, 200_000, 300_000], lr_gamma=0.5, ema_decay=0.999,
    ),
    "realesrgan": dict(
        degradation="realesrgan", discriminator_arch="unet", gan_type="vanilla", crop_size=256,
        perceptual_layers=["conv1_2", "conv2_2", "conv3_4", "conv4_4", "conv5_4"],
        perceptual_layer_weights=[0.1, 0.1, 1.0, 1.0, 1.0], vgg_before_activation=True, perceptual_loss="l1",
        pixel_loss_weight=1.0, perceptual_loss_weight=1.0, adversarial_loss_weight=0.1,
        iterations=400_000, lr_milestones=[400_000], ema_decay=0.999,
    ),
}


def apply_recipe(defaults, argv):
    """The defaults with the chosen recipe's values on top (explicit flags are applied after, by the parser)."""
    recipe = defaults["recipe"]
    for index, arg in enumerate(argv):  # peek at --recipe before the full parse
        if arg == "--recipe" and index + 1 < len(argv):
            recipe = argv[index + 1]
        elif arg.startswith("--recipe="):
            recipe = arg.split("=", 1)[1]
    if recipe not in RECIPES:
        raise ValueError(f"recipe must be one of {sorted(RECIPES)}, not {recipe!r}.")
    return {**defaults, **RECIPES[recipe], "recipe": recipe}


def build_discriminator(hp):
    """The discriminator and its constructor arguments, from the hyperparameters."""
    if hp.discriminator_arch == "srgan":
        kwargs = dict(kernel_size=hp.kernel_size_d, n_channels=hp.n_channels_d, n_blocks=hp.n_blocks_d,
                      fc_size=hp.fc_size_d)
        return models.Discriminator(**kwargs), kwargs
    if hp.discriminator_arch == "unet":
        kwargs = dict(num_feat=hp.num_feat_d)
        return models.UNetDiscriminatorSN(**kwargs), kwargs
    raise ValueError(f"discriminator_arch must be 'srgan' or 'unet', not {hp.discriminator_arch!r}.")


def adversarial_losses(real_logits, fake_logits, gan_type, for_generator):
    """
    The GAN losses, from the discriminator's logits for real (HR) and fake (SR) images.

    vanilla:      D(x) = sigmoid(logit) is the probability that x is real. D learns real -> 1, fake -> 0; the
                  generator is trained with the *target of real images* (1) for its fakes: it wins when D calls its
                  SR images "HR".
    relativistic: ESRGAN's relativistic average GAN: D estimates whether a real image is more realistic than the
                  average fake (logit difference), and vice versa. The generator then gets gradients from real
                  images too, which ESRGAN found gives sharper edges and more stable training.
    Logits are (N, 1) for the SRGAN discriminator or (N, 1, H, W) for the U-Net one (one per pixel).
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


def main():
    argv = sys.argv[1:]
    hp = utils.parse_hyperparameters(apply_recipe(hyperparameters, argv), __doc__, [__file__, datasets.__file__],
                                     argv)
    if len(hp.perceptual_layers) != len(hp.perceptual_layer_weights):
        raise ValueError("perceptual_layers and perceptual_layer_weights must have the same length.")
    rank, world_size, device = utils.setup_distributed()
    is_main_process = rank == 0
    precision = utils.resolve_precision(hp.precision, device)
    checkpoint_path = Path(hp.output_folder) / "checkpoint_srgan.pth"
    utils.seed_everything(hp.seed)

    # The generator: from the SRGAN checkpoint we resume, or else from the pixel-loss network of step 2.
    resumed = utils.load_checkpoint(hp.checkpoint, expected_kind="srgan") if hp.checkpoint else None
    if resumed:
        generator_source = resumed
    else:
        generator_source = utils.load_checkpoint(hp.srresnet_checkpoint, expected_kind="srresnet")
    arch, kwargs = generator_source["generator_arch"], generator_source["generator_kwargs"]
    generator = models.build_generator(arch, **kwargs)
    # Start from the EMA weights when step 2 kept them: they are the better network.
    generator.load_state_dict(generator_source["generator_ema" if not resumed and "generator_ema" in generator_source
                                                else "generator"])
    generator = generator.to(device)
    # With CutBlur the generator takes HR-sized inputs, so it must not upscale (an x1 pixel-unshuffle model).
    if hp.scaling_factor % generator.scaling_factor != 0 or (hp.cutblur_prob > 0 and generator.scaling_factor != 1):
        raise ValueError(f"The generator from {hp.srresnet_checkpoint} upscales x{generator.scaling_factor}, which "
                         f"does not fit scaling_factor {hp.scaling_factor}"
                         + (" with CutBlur (it needs an x1 model)." if hp.cutblur_prob > 0 else "."))

    discriminator, discriminator_kwargs = build_discriminator(hp)
    discriminator = discriminator.to(device)
    # The frozen VGG19 of the content loss. It takes 'imagenet-norm' images.
    vgg = models.VGGFeatureExtractor(dict(zip(hp.perceptual_layers, hp.perceptual_layer_weights)),
                                     weights=hp.vgg_weights, before_activation=hp.vgg_before_activation).to(device)
    if hp.channels_last:
        generator, discriminator, vgg = (m.to(memory_format=torch.channels_last)
                                         for m in (generator, discriminator, vgg))

    # fused: one kernel per step updates every weight (see train_srresnet.py).
    optimizer_g = torch.optim.Adam(generator.parameters(), lr=hp.lr, fused=hp.fused_adam or None)
    optimizer_d = torch.optim.Adam(discriminator.parameters(), lr=hp.lr, fused=hp.fused_adam or None)
    scheduler_g = torch.optim.lr_scheduler.MultiStepLR(optimizer_g, hp.lr_milestones, hp.lr_gamma)
    scheduler_d = torch.optim.lr_scheduler.MultiStepLR(optimizer_d, hp.lr_milestones, hp.lr_gamma)
    ema = utils.ModelEMA(generator, hp.ema_decay) if hp.ema_decay > 0 else None
    # Everything a checkpoint holds to continue exactly where it stopped.
    stateful = dict(generator=generator, discriminator=discriminator, optimizer_g=optimizer_g,
                    optimizer_d=optimizer_d, scheduler_g=scheduler_g, scheduler_d=scheduler_d, generator_ema=ema)
    start_iteration = 0
    if resumed:
        start_iteration = utils.resume_training(resumed, stateful, hp)
    if is_main_process:
        print(f"recipe {hp.recipe}: generator {arch} x{generator.scaling_factor} "
              f"({'resumed from ' + hp.checkpoint if resumed else 'from ' + hp.srresnet_checkpoint}), "
              f"discriminator {hp.discriminator_arch}, {hp.gan_type} GAN; device {device} (x{world_size} processes), "
              f"precision {precision}.")

    # Wrappers for several processes / speed; checkpoints are written from the plain modules.
    generator_model, discriminator_model = generator, discriminator
    if world_size > 1:
        if hp.sync_batch_norm and device.type == "cuda":  # batch-norm statistics of the global batch (see train_srresnet)
            nn.SyncBatchNorm.convert_sync_batchnorm(generator)  # swaps the layers in place, keeping the parameters
            nn.SyncBatchNorm.convert_sync_batchnorm(discriminator)
        device_ids = [device.index] if device.type == "cuda" else None
        generator_model = nn.parallel.DistributedDataParallel(generator, device_ids=device_ids)
        discriminator_model = nn.parallel.DistributedDataParallel(discriminator, device_ids=device_ids)
    if hp.compile:
        generator_model, discriminator_model = torch.compile(generator_model), torch.compile(discriminator_model)

    pixel_loss_function = nn.L1Loss()
    perceptual_distance = nn.MSELoss() if hp.perceptual_loss == "mse" else nn.L1Loss()
    grad_scaler_g = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    grad_scaler_d = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    train_loader = datasets.make_train_loader(hp, start_iteration, rank, world_size)
    memory_format = torch.channels_last if hp.channels_last else torch.contiguous_format
    # Real-ESRGAN's degradation settings: every probability and range, as set by the hyperparameters.
    degradation_settings = {name: getattr(hp, name) for name in datasets.DEGRADATION_DEFAULTS}
    if hp.degradation not in ("bicubic", "realesrgan"):
        raise ValueError(f"degradation must be 'bicubic' or 'realesrgan', not {hp.degradation!r}.")

    def perceptual_loss(sr_imgs, hr_imgs):
        """Weighted distance between VGG19 feature maps of SR and HR images (both in '[0, 1]')."""
        sr_features = vgg(utils.convert_image(sr_imgs, "[0, 1]", "imagenet-norm"))
        with torch.no_grad():  # the targets need no gradient
            hr_features = vgg(utils.convert_image(hr_imgs, "[0, 1]", "imagenet-norm"))
        return sum(weight * perceptual_distance(sr_features[name].float(), hr_features[name].float())
                   for name, weight in vgg.layer_weights.items())

    def save(iteration):
        if is_main_process:
            state = utils.training_checkpoint("srgan", iteration, hp, stateful, generator_arch=arch,
                                              generator_kwargs=kwargs, discriminator_arch=hp.discriminator_arch,
                                              discriminator_kwargs=discriminator_kwargs)
            utils.save_checkpoint(state, checkpoint_path)

    stop = utils.GracefulExit()
    generator.train()
    discriminator.train()
    running_losses = utils.RunningLosses(["content", "pixel", "adversarial", "discriminator"], device,
                                         start_iteration)  # for the progress bar and the NaN check
    progress = tqdm(range(start_iteration, hp.iterations), initial=start_iteration, total=hp.iterations,
                    disable=not is_main_process, desc=f"train_srgan ({hp.recipe})")
    for iteration in progress:
        lr_imgs, hr_imgs = next(train_loader)  # (N, 3, 24, 24) and (N, 3, 96, 96), in [0, 1]
        lr_imgs = lr_imgs.to(device, memory_format=memory_format, non_blocking=True)
        hr_imgs = hr_imgs.to(device, memory_format=memory_format, non_blocking=True)

        # Real-ESRGAN: throw away the bicubic LR and make a realistically degraded one from the (sharpened) HR,
        # on the device. Its randomness comes from a generator seeded by (seed, iteration, rank): reproducible
        # and resumable. Each loss then compares with the plain or the sharpened HR image, as the settings say.
        pixel_target_imgs = perceptual_target_imgs = gan_real_imgs = hr_imgs
        if hp.degradation == "realesrgan":
            random_generator = torch.Generator(device).manual_seed(hp.seed * 1_000_003 + iteration * 1009 + rank)
            lr_imgs, hr_imgs, hr_usm_imgs = datasets.make_realesrgan_batch(hr_imgs, hp.scaling_factor,
                                                                           degradation_settings, random_generator)
            pixel_target_imgs = hr_usm_imgs if hp.l1_gt_usm else hr_imgs
            perceptual_target_imgs = hr_usm_imgs if hp.percep_gt_usm else hr_imgs
            gan_real_imgs = hr_usm_imgs if hp.gan_gt_usm else hr_imgs
        # CutBlur: the generator sees an HR-sized image, part LR (nearest-upscaled), part HR, and must return HR.
        if hp.cutblur_prob > 0:
            cutblur_generator = torch.Generator(device).manual_seed(hp.seed * 1_000_003 + iteration * 1009 + rank + 1)
            lr_imgs, _ = datasets.cutblur(lr_imgs, hr_imgs, hp.scaling_factor, cutblur_generator, prob=hp.cutblur_prob)
        else:  # an x2 / x1 pixel-unshuffle generator takes the LR nearest-upscaled to its input size
            lr_imgs = utils.match_generator_input(lr_imgs, generator, hp.scaling_factor)

        # ---- Generator step: content + pixel + adversarial loss. ----
        # The discriminator's weights get no gradients here (saves time; its optimiser would ignore them anyway).
        # It is called unwrapped: with several processes only the discriminator step syncs its gradients.
        discriminator.requires_grad_(False)
        with utils.autocast(device, precision):
            sr_imgs = generator_model(utils.convert_image(lr_imgs, "[0, 1]", generator.input_format))
            sr_imgs = utils.convert_image(sr_imgs.float(), generator.output_format, "[0, 1]")  # (N, 3, 96, 96)
            content_loss = perceptual_loss(sr_imgs, perceptual_target_imgs)
            pixel_loss = pixel_loss_function(sr_imgs, pixel_target_imgs)
            fake_logits = discriminator(sr_imgs)
            # The relativistic loss also needs D's opinion of real images (a constant for the generator).
            real_logits = None
            if hp.gan_type == "relativistic":
                with torch.no_grad():
                    real_logits = discriminator(gan_real_imgs).float()
            adversarial_loss = adversarial_losses(real_logits, fake_logits.float(), hp.gan_type, for_generator=True)
            generator_loss = (hp.perceptual_loss_weight * content_loss + hp.pixel_loss_weight * pixel_loss
                              + hp.adversarial_loss_weight * adversarial_loss)
        optimizer_g.zero_grad(set_to_none=True)
        grad_scaler_g.scale(generator_loss).backward()
        grad_scaler_g.step(optimizer_g)
        grad_scaler_g.update()
        if ema is not None:
            ema.update(generator)

        # ---- Discriminator step: tell HR (real) from SR (fake). ----
        # The SR images are detached: this step must change only the discriminator, and backpropagating into
        # the generator would waste time on gradients nobody uses.
        discriminator.requires_grad_(True)
        with utils.autocast(device, precision):
            real_logits = discriminator_model(gan_real_imgs)
            fake_logits = discriminator_model(sr_imgs.detach())
            discriminator_loss = adversarial_losses(real_logits.float(), fake_logits.float(), hp.gan_type,
                                                    for_generator=False)
        optimizer_d.zero_grad(set_to_none=True)
        grad_scaler_d.scale(discriminator_loss).backward()
        grad_scaler_d.step(optimizer_d)
        grad_scaler_d.update()
        scheduler_g.step()
        scheduler_d.step()

        running_losses.add(content=content_loss, pixel=pixel_loss, adversarial=adversarial_loss,
                           discriminator=discriminator_loss)
        stop_now = stop.should_stop()  # Ctrl+C / SIGTERM in any process: save and leave, all together
        print_now = (iteration + 1) % hp.print_every == 0 or iteration + 1 == hp.iterations
        save_now = (iteration + 1) % hp.checkpoint_every == 0 or iteration + 1 == hp.iterations or stop_now
        if print_now or save_now:
            running_losses.check_finite(iteration + 1, checkpoint_path)  # never save a NaN model over a good one
        if print_now:
            summary = running_losses.report()
            if is_main_process:
                progress.set_postfix(summary)
        if save_now:
            save(iteration + 1)
        if stop_now:
            break
    progress.close()
    if is_main_process:
        print(f"Checkpoint: {checkpoint_path}")
    if world_size > 1:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    utils.run_cli(main)
