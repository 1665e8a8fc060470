"""
Step 2 of the tutorial: train a super-resolution network with a pixel loss.

The network sees a low-resolution (LR) crop and must produce the high-resolution (HR) crop it was made from.
The loss compares the two pixel by pixel: MSE for SRResNet (the SRGAN paper), L1 for ESRGAN's PSNR-oriented
RRDB network. A pixel loss maximises PSNR but gives slightly blurry images (the average of all plausible
textures); train_srgan.py then starts from this network and makes it produce sharp textures.

Quick start (CPU, minutes):   python train_srresnet.py --data_folder data_lists --iterations 200 --n_blocks 4
Classic SRResNet (GPU, days): python train_srresnet.py --data_folder data_lists
ESRGAN's RRDB-PSNR:           python train_srresnet.py --data_folder data_lists --generator_arch rrdb --pixel_loss l1 \\
                                  --learning_rate 2e-4 --learning_rate_milestones 200000 400000 600000 800000 \\
                                  --learning_rate_gamma 0.5
Several processes:            torchrun --nproc_per_node 2 train_srresnet.py --data_folder data_lists
Resume:                       python train_srresnet.py --data_folder data_lists --checkpoint checkpoint_srresnet.pth

Every hyperparameter below can be overridden by a flag of the same name; --help lists them.
(--lr, --lr_milestones and --lr_gamma, the old names of the learning-rate flags, still work.)
"""
from pathlib import Path

import torch
from torch import nn

import datasets
import models
import utils

# ------------------------------------------------------------------------------------------------------
# Hyperparameters (each one is also a command-line flag: --name value)
# ------------------------------------------------------------------------------------------------------
hyperparameters = dict(
    # Data
    data_folder="./",  # folder with train_images.json, written by create_data_lists.py
    crop_size=96,  # side of the HR training crops; the LR crops are crop_size / scaling_factor
    scaling_factor=4,  # the data's upscaling factor (LR crops are crop_size / scaling_factor): 2, 4 or 8 for SRResNet, 4 for RRDB
    augment=False,  # random flips and 90-degree rotations of the crops
    lr_maker="pil",  # how LR crops are made from HR: 'pil' (Pillow bicubic) or 'matlab' (MATLAB's imresize)
    # Generator
    generator_arch="srresnet",  # 'srresnet' (SRGAN paper) or 'rrdb' (ESRGAN's RRDBNet)
    large_kernel_size=9,  # SRResNet: kernel of the first and last convolutions
    small_kernel_size=3,  # SRResNet: kernel of all other convolutions
    n_channels=64,  # SRResNet: feature channels
    n_blocks=16,  # SRResNet: residual blocks
    num_feat=64,  # RRDB: feature channels
    num_block=23,  # RRDB: residual-in-residual dense blocks (23 in ESRGAN, 6 in the Real-ESRGAN anime model)
    num_grow_ch=32,  # RRDB: channels added by each dense layer
    use_unshuffle=False,  # an x4 network behind a pixel-unshuffle: an x2 (unshuffle_scale 2) or x1 (4) model, fed the LR nearest-upscaled to match
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
    # Speed: precision, channels_last, compile, workers, image_cache_mb, sync_batch_norm and fused_adam, shared by both
    # training scripts: see utils.SPEED_HYPERPARAMETERS (added below)
    # Bookkeeping
    seed=0,  # random seed: same seed, same crops, same initial weights
    print_every=100,  # update the running losses shown on the progress bar every this many iterations
    checkpoint_every=1000,  # save a checkpoint every this many iterations (and at the end, and on Ctrl+C)
    output_folder=".",  # where checkpoint_srresnet.pth is written
    checkpoint=None,  # path of a checkpoint_srresnet.pth to resume from
)
hyperparameters.update(utils.SPEED_HYPERPARAMETERS)  # precision, channels_last, compile, workers, ...


def generator_kwargs(hp):
    """The generator's constructor arguments, taken from the hyperparameters (models.build_generator takes them)."""
    # With pixel-unshuffle, an x4 network behind a fold by r: overall x(4 / r), whatever the data's scaling factor
    # (an x1 model trains on x4 data, fed the LR crops nearest-upscaled: utils.match_generator_input).
    scaling_factor = 4 // hp.unshuffle_scale if hp.use_unshuffle else hp.scaling_factor
    if hp.generator_arch == "srresnet":
        kwargs = dict(large_kernel_size=hp.large_kernel_size, small_kernel_size=hp.small_kernel_size,
                      n_channels=hp.n_channels, n_blocks=hp.n_blocks, scaling_factor=scaling_factor)
        return {**kwargs, "unshuffle_scale": hp.unshuffle_scale} if hp.use_unshuffle else kwargs
    if hp.generator_arch == "rrdb":
        # RRDBNet's `scale` (BasicSR's name) is the overall scale: 4 natively, 2 / 1 through pixel-unshuffle.
        return dict(scale=scaling_factor, num_feat=hp.num_feat, num_block=hp.num_block, num_grow_ch=hp.num_grow_ch)
    raise ValueError(f"generator_arch must be 'srresnet' or 'rrdb', not {hp.generator_arch!r}.")


def main():
    hp = utils.parse_hyperparameters(hyperparameters, __doc__, [__file__, utils.__file__],
                                     aliases=utils.RENAMED_HYPERPARAMETERS)
    rank, world_size, device = utils.setup_distributed()
    is_main_process = rank == 0  # only one process prints and writes checkpoints
    precision = utils.resolve_precision(hp.precision, device)
    checkpoint_path = Path(hp.output_folder) / "checkpoint_srresnet.pth"
    utils.seed_everything(hp.seed)  # same seed in every process: identical initial weights

    # The generator: a new one, or the one of the checkpoint we resume (its architecture comes with it).
    resumed = utils.load_checkpoint(hp.checkpoint, expected_kind="srresnet") if hp.checkpoint else None
    arch = resumed["generator_arch"] if resumed else hp.generator_arch
    kwargs = models.upgrade_generator_kwargs(arch, resumed["generator_kwargs"]) if resumed else generator_kwargs(hp)
    generator = models.build_generator(arch, **kwargs).to(device)
    if hp.scaling_factor % generator.scaling_factor != 0:
        raise ValueError(f"The {arch} generator upscales x{generator.scaling_factor}, which does not divide "
                         f"scaling_factor {hp.scaling_factor}.")
    if hp.channels_last:
        generator = generator.to(memory_format=torch.channels_last)
    # fused: one kernel updates every weight; the default (foreach) runs ~10 operations per weight tensor, and on CPUs
    # they take a slow path for channels_last weights (about 15x slower for SRResNet, measured on an AVX2 CPU).
    optimizer = torch.optim.Adam(generator.parameters(), lr=hp.learning_rate, fused=hp.fused_adam or None)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=hp.learning_rate_milestones,
                                                     gamma=hp.learning_rate_gamma)
    ema = utils.ModelEMA(generator, hp.ema_decay) if hp.ema_decay > 0 else None
    # Everything a checkpoint holds to continue exactly where it stopped.
    stateful = dict(generator=generator, optimizer_g=optimizer, scheduler_g=scheduler, generator_ema=ema)
    start_iteration = utils.resume_training(resumed, stateful, hp, utils.RENAMED_HYPERPARAMETERS) if resumed else 0
    if is_main_process:
        n_parameters = sum(p.numel() for p in generator.parameters())
        resuming = f"; resuming from {hp.checkpoint} at iteration {start_iteration}" if resumed else ""
        print(f"{arch} x{generator.scaling_factor}: {n_parameters:,} parameters; device {device} "
              f"(x{world_size} processes), precision {precision}{resuming}.")

    model = utils.wrap_for_training(generator, hp, device, world_size)  # DDP / torch.compile, as asked
    loss_function = nn.MSELoss() if hp.pixel_loss == "mse" else nn.L1Loss()
    grad_scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")  # fp16 needs loss scaling
    train_loader = datasets.make_train_loader(hp, start_iteration, rank, world_size)
    memory_format = torch.channels_last if hp.channels_last else torch.contiguous_format
    save = utils.checkpoint_saver("srresnet", checkpoint_path, hp, stateful, is_main_process, generator_arch=arch,
                                  generator_kwargs=kwargs)

    # The training loop: one batch of crops per iteration.
    generator.train()
    log = utils.TrainingLog(["loss"], hp, start_iteration, device, save, checkpoint_path, is_main_process,
                            "train_srresnet", learning_rate=lambda: scheduler.get_last_lr()[0])
    for iteration in log.iterations():
        lr_imgs, hr_imgs = next(train_loader)  # (N, 3, crop / s, crop / s) and (N, 3, crop, crop), in [0, 1]
        # Move to the device, and into the ranges the generator takes and gives (SRResNet: LR in [0, 1], SR in
        # [-1, 1]; RRDB: both in [0, 1]), so that the loss compares like with like.
        # (An x2 / x1 pixel-unshuffle model takes the LR crops nearest-upscaled to its input size.)
        lr_imgs = utils.match_generator_input(lr_imgs.to(device, non_blocking=True), generator, hp.scaling_factor)
        lr_imgs = utils.convert_image(lr_imgs.contiguous(memory_format=memory_format), "[0, 1]",
                                      generator.input_format)
        hr_imgs = utils.convert_image(hr_imgs.to(device, non_blocking=True), "[0, 1]", generator.output_format)

        with utils.autocast(device, precision):
            sr_imgs = model(lr_imgs)  # (N, 3, crop, crop), in the generator's output range
        loss = loss_function(sr_imgs.float(), hr_imgs)  # the loss itself in fp32

        optimizer.zero_grad(set_to_none=True)
        grad_scaler.scale(loss).backward()
        if hp.grad_clip > 0:
            grad_scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(generator.parameters(), hp.grad_clip)
        grad_scaler.step(optimizer)
        grad_scaler.update()
        scheduler.step()  # milestones count iterations
        if ema is not None:
            ema.update(generator)

        if log.end_of_iteration(iteration, loss=loss):  # print / check / save as due; True on Ctrl+C or SIGTERM
            break
    log.close()
    utils.end_distributed()


if __name__ == "__main__":
    utils.run_cli(main)
