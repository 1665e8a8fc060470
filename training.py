"""The machinery of the training scripts, in the order a run meets it.

  Checks and set-up        check_training_hyperparameters; setup_training (processes, precision, the locked output
                           folder, the seed, memory kept for reuse): setup_distributed, prepare_output_folder /
                           lock_output_folder, keep_freed_memory
  Signals                  GracefulExit: Ctrl+C and SIGTERM become "save, then stop", in every process at once
  The step                 wrap_for_training (DDP, torch.compile), deepened_compact (a trained compact network with
                           more layers, to fine-tune), ModelEMA (the average of the weights)
  The optimiser            make_optimizer (Adam and its learning-rate schedule)
  Checkpoints of a run     training_checkpoint (everything a resume needs), CheckpointSaver, and resuming:
                           load_run_to_resume (check_resumable, reconcile_resumed_hyperparameters), resume_training
                           (with a new learning-rate schedule if asked)

What a run reports (losses, validation, log files) is in training_log.py; a training script's main() calls both.
"""
import atexit
import bisect
import collections
import contextlib
import copy
import ctypes
import fcntl
import glob
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path

import torch

import checkpoints
import cli
import inference
import metrics
import models
import utils

# The hyperparameters of both training scripts whose values are limited (check_training_hyperparameters): counts that
# must be positive, numbers that may be 0 but not negative, and names with a fixed set of values. Each script adds its
# own (architecture sizes, loss names).
TRAINING_POSITIVE = ("crop_size", "scaling_factor", "batch_size", "print_every", "checkpoint_every")
TRAINING_NON_NEGATIVE = ("iterations", "learning_rate", "ema_decay", "workers", "image_cache_mb", "val_every",
                         "queue_size")
TRAINING_CHOICES = dict(precision=("auto", *inference.PRECISIONS), lr_maker=("pil", "matlab"),
                        val_degradation=tuple(metrics.LR_DEGRADATIONS))


# The largest networks a run builds. A size flag is bounded before anything is built: --num_conv 100000 would build
# for minutes, its memory growing without bound. Layer counts (blocks, convolutions) by MAX_LAYERS, far above any
# published network of the project's kinds (ESRGAN: 23 RRDB blocks; SRResNet: 16; EDSR: 32; the compact network: 16
# or 32 convolutions) and small enough to count the parameters of on the 'meta' device in a few seconds; widths
# (channels, kernel sizes) by models.MAX_ARCHITECTURE_VALUE, the bound of files too. And the whole network by
# MAX_PARAMETERS (check_network_size): 12 times ESRGAN's RRDBNet (16.7 million); training holds 16 bytes per parameter
# (weights, gradients and Adam's two moments in fp32), 3.2 GB at the bound, before any activation.
MAX_LAYERS = 512
MAX_PARAMETERS = 200_000_000


def check_training_hyperparameters(hp, positive=(), non_negative=(), choices=None, layer_counts=(), widths=()):
    """
    Stop with one clear line (ValueError, through cli.run_cli) on a flag whose value cannot work, before anything is
    loaded: --print_every 0 would divide by zero at the first iteration, --n_blocks -1 build a network without
    blocks, --num_conv 100000 build for minutes, and an unknown name such as --pixel_loss huber must not be trained
    as something else.

    :param positive, non_negative: names of numbers that must be > 0 / >= 0, besides TRAINING_POSITIVE and
                                   TRAINING_NON_NEGATIVE
    :param choices: dict name -> the values allowed, besides TRAINING_CHOICES
    :param layer_counts, widths: names of architecture sizes (also in `positive`) that must be at most MAX_LAYERS /
                                 models.MAX_ARCHITECTURE_VALUE
    """
    for name, allowed in {**TRAINING_CHOICES, **(choices or {})}.items():
        if getattr(hp, name) not in allowed:
            raise ValueError(f"--{name} must be one of {', '.join(map(str, allowed))}, not {getattr(hp, name)!r}.")
    for name in TRAINING_POSITIVE + tuple(positive):
        if getattr(hp, name) <= 0:
            raise ValueError(f"--{name} must be greater than 0, not {getattr(hp, name)}.")
    for name in TRAINING_NON_NEGATIVE + tuple(non_negative):
        if getattr(hp, name) < 0:
            raise ValueError(f"--{name} must be 0 or more, not {getattr(hp, name)}.")
    for names, most, what in ((layer_counts, MAX_LAYERS, "layers"), (widths, models.MAX_ARCHITECTURE_VALUE, "wide")):
        for name in names:
            if getattr(hp, name) > most:
                raise ValueError(f"--{name} must be at most {most}, not {getattr(hp, name)}: no network this project "
                                 f"trains is that many {what} (ESRGAN's RRDBNet: 23 blocks of 64 channels).")


def check_network_size(build, what):
    """
    Refuse, in one line, a network with more than MAX_PARAMETERS parameters, before it is built: `build` runs on the
    'meta' device, where every tensor is a shape without memory, and the parameters are counted there.

    :param build: () -> the network (e.g. lambda: models.build_generator(arch, **kwargs))
    :param what: how the message names it, e.g. "The generator (compact)"
    :raises ValueError: too many parameters (or so many that their count overflows)
    """
    try:
        with torch.device("meta"):
            n_parameters = sum(parameter.numel() for parameter in build().parameters())
    except (RuntimeError, OverflowError):  # "Storage size calculation overflowed": beyond any memory
        n_parameters = float("inf")
    if n_parameters > MAX_PARAMETERS:
        raise ValueError(f"{what} would have {n_parameters / 1e6:,.0f} million parameters, more than the "
                         f"{MAX_PARAMETERS / 1e6:.0f} million a run trains at most (ESRGAN's RRDBNet: 16.7 million): "
                         f"give smaller sizes.")


class GracefulExit:
    """
    Turn SIGINT (Ctrl+C) and SIGTERM (a cluster's time limit) into a flag the training loop checks after
    each iteration, so that it can save a checkpoint and exit cleanly instead of dying mid-step.

    Further signals: a second Ctrl+C is a person who wants out now, and the run exits at once with one line and
    status 130 (every checkpoint is written atomically, so the last one is intact); except while a checkpoint is
    being written (inside `saving()`): breaking off that write would lose the very checkpoint the first signal asked
    for, so the save goes on and the run stops after it. A repeated SIGTERM is the same request again, not an
    escalation (a scheduler, `timeout` or a process manager may signal the process group and the process, several
    times): the run goes on to its save and stops (SIGKILL is how those escalate).

    Only the main process of each training process gets here: the data-loading workers ignore both signals
    (datasets.ignore_stop_signals), because `timeout`, Slurm and Kubernetes signal the whole process group, and a
    worker that died of it would take the next batch, and with it the save, down.
    """

    def __init__(self):
        self.requested = False
        self.is_saving = False
        for signal_number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signal_number, self._handler)
        # With several processes, all must stop at the same iteration (the others would otherwise wait forever for
        # the gradients of the one that left). They agree through a small CPU (gloo) group: no GPU synchronisation.
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        self.group = torch.distributed.new_group(backend="gloo") if distributed else None

    def should_stop(self):
        """Whether this process or any other received a signal. Call it at the same point in every process."""
        if self.group is None:
            return self.requested
        flag = torch.tensor([int(self.requested)])
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX, group=self.group)
        return bool(flag.item())

    @contextlib.contextmanager
    def saving(self):
        """Within this block (a checkpoint being written) a signal only asks to stop after it, never breaks it."""
        self.is_saving = True
        try:
            yield
        finally:
            self.is_saving = False

    def _handler(self, signal_number, frame):
        name = signal.Signals(signal_number).name
        if self.is_saving:  # any signal during a save: let the save finish, then stop
            if not self.requested:
                _say(f"\nReceived {name} while writing a checkpoint: saving, please wait (the run stops once it is "
                     f"written).")
            self.requested = True
        elif not self.requested:
            self.requested = True
            _say(f"\nReceived {name}: saving a checkpoint after this iteration (press Ctrl+C again to quit at once).")
        elif signal_number == signal.SIGINT:  # a second Ctrl+C: the user really wants out, without a traceback
            _say(f"\nReceived SIGINT again: quitting at once, without saving this iteration; the last checkpoint "
                 f"written is intact (saves are atomic).")
            raise SystemExit(130)  # (128 + SIGINT, the shell's status for a Ctrl+C)
        # else: a repeated SIGTERM, the same request: the run saves and stops as the first one asked


def _say(text):
    """Print a line on stderr from a signal handler. The handler may have interrupted a print to stderr (a progress
    bar's), and a buffered stream refuses a second write from within one ("reentrant call"): the line is then lost,
    never turned into a traceback."""
    try:
        print(text, file=sys.stderr, flush=True)
    except RuntimeError:
        pass



def get_rng_state():
    """The global torch RNG states (CPU and CUDA), as tensors, for a checkpoint."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    """Restore RNG states saved by get_rng_state()."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def setup_training(hp, kind):
    """
    The set-up both training scripts begin with: the processes (setup_distributed), the precision, the output folder
    (checked and locked by the main process before any work: prepare_output_folder), the seed (the same in every
    process: identical initial weights), and memory kept for reuse (keep_freed_memory).

    :return: (rank, world_size, device, precision)
    """
    keep_freed_memory()
    rank, world_size, device = setup_distributed()
    precision = inference.resolve_precision(hp.precision, device)
    note = inference.precision_note(precision, device)  # bf16 emulated on this CPU: about 9 times slower to train
    if note and rank == 0:
        print(note, file=sys.stderr)
    if rank == 0:
        prepare_output_folder(hp.output_folder, kind, fresh=hp.checkpoint is None, overwrite=hp.overwrite)
    utils.seed_everything(hp.seed)
    return rank, world_size, device, precision


# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory():
    """
    Let the C allocator keep the memory of freed tensors for the next ones (glibc on Linux; elsewhere nothing changes).

    A training step on a CPU allocates and frees the same large activations every iteration. By default glibc gives
    every block of more than a few MB straight back to the system when it is freed, so the next iteration gets fresh
    pages, which the kernel must map and zero one by one: about 45 ms of system time per SRResNet iteration (batch
    16, crop 96, bf16) on one AVX-512 core. Serving blocks of up to 32 MB (glibc's largest such threshold) from the
    heap, and keeping up to 1 GB of freed heap instead of returning it, removed most of it: a whole run of 24
    iterations (train_srresnet.py's defaults, one thread) then took 1.2 s of system time instead of 2.2 s, the same
    user time, and 3% more peak memory (1538 MB instead of 1497 MB; medians of 3 runs each).

    :return: whether the allocator took the settings
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt  # (the C library of this process; a missing function: not glibc)
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, 32 * 2 ** 20)) and bool(mallopt(M_TRIM_THRESHOLD, 2 ** 30))


def setup_distributed():
    """
    Join the process group when the script was started by torchrun, else run as a single process.

    torchrun sets RANK, WORLD_SIZE and LOCAL_RANK for each process it starts. Processes talk through NCCL
    on GPUs and gloo on CPUs. Each process then trains on its own slice of every batch, and
    DistributedDataParallel averages the gradients, so N processes take the same steps as one process
    with the whole batch.

    :return: (rank, world_size, device)
    """
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    if world_size == 1:
        return 0, 1, utils.get_device()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        # One process per GPU: NCCL cannot put two processes on one GPU.
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"torchrun started process {local_rank} of this machine, but only "
                               f"{torch.cuda.device_count()} GPU(s) are visible: use --nproc_per_node "
                               f"{torch.cuda.device_count()} (one process per GPU), or CUDA_VISIBLE_DEVICES= to "
                               f"train on the CPU.")
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    torch.distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return rank, world_size, device


def finish(output_folder, kind):
    """The end of a run: give the output folder back to other runs (release_output_folder; only the main process
    holds it) and leave the process group (end_distributed)."""
    release_output_folder(output_folder, kind)
    end_distributed()


def end_distributed():
    """Leave the process group at the end of a torchrun run (nothing to do in a single process)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def wrap_for_training(model, hp, device, world_size):
    """
    The model as the training step runs it: wrapped for several processes (DistributedDataParallel) and for speed
    (torch.compile). The wrappers add prefixes to the state dict, so checkpoints are always written from the plain
    `model`, which the wrapper shares its weights with.

    Batch norm normalises with the statistics of the batch, but each process holds only its slice of it: with
    hp.sync_batch_norm, SyncBatchNorm gathers the statistics of the whole global batch. (PyTorch has it for GPUs
    only: on CPUs each process normalises over its own slice, which changes results slightly for models with batch
    norm.)
    """
    wrapped = model
    if world_size > 1:
        if hp.sync_batch_norm and device.type == "cuda":
            torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # swaps the layers in place, keeping the parameters
        device_ids = [device.index] if device.type == "cuda" else None
        wrapped = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    if hp.compile:
        wrapped = torch.compile(wrapped)
    return wrapped


@torch.no_grad()
def deepened_compact(generator, num_conv):
    """
    A deeper SRVGGNetCompact that computes exactly what `generator` (a trained one) computes: room to learn more (e.g.
    to undo JPEG blocks and noise as well as upscale) without starting again from random weights.

    The new network has `generator`'s layers, then num_conv - generator's num_conv new (3x3 conv, PReLU) pairs just
    before the last convolution. Each new pair starts as an identity: the convolution passes every channel through
    (a 1 at the centre of its own channel's kernel, zero bias) and the PReLU has slope 1 on both sides (PReLU(x) = x).
    Training then moves them away from it (the "deeper" operation of Net2Net, Chen et al. 2016).

    generator: an SRVGGNetCompact; num_conv: at least its num_conv. Returns a new SRVGGNetCompact (on the same device,
    float32), with generator_arch / generator_kwargs set as models.build_generator sets them.
    (Used by train_srresnet.py: --pretrained of a compact model with a larger --num_conv.)
    """
    kwargs = dict(generator.generator_kwargs, num_conv=num_conv)
    old_num_conv = generator.generator_kwargs["num_conv"]
    if num_conv < old_num_conv:
        raise ValueError(f"cannot deepen a compact network of {old_num_conv} convolutions to {num_conv}: give "
                         f"--num_conv {old_num_conv} or more.")
    check_network_size(lambda: models.build_generator("compact", **kwargs),
                       f"The generator (compact, deepened to {num_conv} convolutions)")
    deeper = models.build_generator("compact", **kwargs).to(next(generator.parameters()).device)
    old_layers, new_layers = list(generator.body), list(deeper.body)
    # The first conv + PReLU and the old num_conv pairs, then the new pairs, then the last conv.
    n_kept = 2 + 2 * old_num_conv
    for old, new in zip(old_layers[:n_kept], new_layers[:n_kept]):
        new.load_state_dict(old.state_dict())
    new_layers[-1].load_state_dict(old_layers[-1].state_dict())
    for conv, prelu in zip(new_layers[n_kept:-1:2], new_layers[n_kept + 1:-1:2]):
        conv.weight.zero_()
        conv.weight[:, :, 1, 1] = torch.eye(conv.out_channels)  # (F, F, 3, 3): channel c -> channel c, centre only
        conv.bias.zero_()
        prelu.weight.fill_(1.0)
    return deeper


class ModelEMA:
    """
    An exponential moving average of a model's weights: ema = decay * ema + (1 - decay) * weights, after
    every optimiser step. The average is smoother than the weights themselves (GAN training makes them
    jitter), so Real-ESRGAN and BasicSR (its ESRGAN options too) evaluate and release the EMA weights.

    Warm-up (a departure from BasicSR's and Real-ESRGAN's constant decay): at iteration t the decay is
    min(decay, (1 + t) / (10 + t)), as in TensorFlow's ExponentialMovingAverage. Without it, the average of a short
    run is mostly the random initial weights (with decay 0.999, 0.999^750 = 47% of it after 750 iterations: on Set5,
    26.7 dB where the weights themselves had 29.6); with it, the average spans about the last tenth of the run until
    that reaches 1 / (1 - decay) iterations. The decay depends on the iteration only, so a resumed run averages
    exactly as a whole one.
    """

    def __init__(self, model, decay):
        self.decay = decay
        self.module = copy.deepcopy(_unwrap(model)).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model, iteration):
        """Move the average towards `model`'s weights after the optimiser step of `iteration` (0 for the first)."""
        decay = min(self.decay, (1 + iteration) / (10 + iteration))
        ema_state, model_state = self.module.state_dict(), _unwrap(model).state_dict()
        for name, ema_value in ema_state.items():
            if ema_value.is_floating_point():
                ema_value.lerp_(model_state[name], 1.0 - decay)
            else:  # integer buffers (batch-norm counters) are copied
                ema_value.copy_(model_state[name])

    def state_dict(self):
        return self.module.state_dict()

    def load_state_dict(self, state_dict):
        self.module.load_state_dict(state_dict)


def training_checkpoint(kind, iteration, hp, stateful, **extra):
    """
    Everything needed to continue a run exactly, as one checkpoint dict.

    :param kind: 'srresnet' or 'srgan' (the script writing it)
    :param iteration: iterations completed
    :param hp: the run's hyperparameters (argparse.Namespace)
    :param stateful: name -> object with a state_dict() (models, optimisers, schedulers, ModelEMA) or None
    :param extra: further plain values (architecture names and constructor arguments)
    """
    state = dict(kind=kind, iteration=iteration, hyperparameters=vars(hp), rng_state=get_rng_state(), **extra)
    state.update({name: obj.state_dict() for name, obj in stateful.items() if obj is not None})
    return state


# ------------------------------------------------------------------------------------------------------
# The output folder of a run: checked, locked and cleaned before training starts
# ------------------------------------------------------------------------------------------------------
_HELD_LOCKS = {}  # lock file -> its open file, for the locks this process holds (see lock_output_folder)


def run_files(folder, kind):
    """The files of a train_<kind>.py run in `folder` that are there: checkpoint_<kind>.pth, best_<kind>.pth,
    log_<kind>.jsonl and the folder tensorboard_<kind>/."""
    folder = Path(folder)
    paths = [folder / name for name in (f"checkpoint_{kind}.pth", f"best_{kind}.pth", f"log_{kind}.jsonl")]
    return [path for path in paths if path.exists()] + [path for path in [folder / f"tensorboard_{kind}"]
                                                        if path.is_dir()]


def prepare_output_folder(folder, kind, fresh=False, overwrite=False):
    """
    Make a training run's output folder ready before training starts, so that nothing fails only at the first save,
    hours in: it must be a folder (it is created if missing), and writable (a byte is written: a full disk still
    creates empty files); its tensorboard_<kind> must be a writable folder if it is there; it is locked for this run
    (lock_output_folder); and the temporary files that interrupted writes of this run's own files left behind
    (a kill -9 during a save) are removed, with a note.

    A fresh run (not resumed) writes its log and TensorBoard events from scratch, and its checkpoints over those
    there: a run of the same script already in the folder would be lost without a word. So a fresh run is refused in
    a folder that holds one (run_files), unless `overwrite` (the flag --overwrite true) says to start over: the
    previous run's files are then removed first, so that nothing of it mixes with the new one.

    Call it in the main process only. TrainingLog.close() releases the lock at the end.

    :param folder: the output folder
    :param kind: 'srresnet' or 'srgan': the script whose files (checkpoint_<kind>.pth, best_<kind>.pth,
                 log_<kind>.jsonl, tensorboard_<kind>/) are written there
    :param fresh: True for a run from scratch (no --checkpoint)
    :param overwrite: with `fresh`, remove a previous run's files instead of refusing to start
    :raises ValueError: with what to do, when the folder is a file, cannot be created or written (nor its lock file,
                        nor its TensorBoard folder), is in use, or holds a run that a fresh run would replace
    """
    folder = Path(folder)
    utils.check_output_folder(folder)  # (a file there, or above it)
    tensorboard = folder / f"tensorboard_{kind}"
    if tensorboard.exists() and not tensorboard.is_dir():
        raise ValueError(f"{tensorboard} is a file, where this run's TensorBoard folder goes: move it away, or give "
                         f"another --output_folder.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # Can files be created and written there? (The probe is removed on closing; whether a checkpoint fits is a
        # question for CheckpointSaver, which knows its size.)
        with tempfile.TemporaryFile(dir=folder) as probe:
            probe.write(b"\0")
            probe.flush()  # (a full disk still creates an empty file: it refuses the first byte)
    except OSError as error:
        raise ValueError(f"Cannot write to the output folder {folder} ({error.strerror or error}): fix its "
                         f"permissions or free some space, or give another --output_folder.") from None
    lock_output_folder(folder, kind)
    previous = run_files(folder, kind) if fresh else []
    if previous and not overwrite:
        release_output_folder(folder, kind)  # refused: the folder is left exactly as it was
        checkpoint = folder / f"checkpoint_{kind}.pth"
        resume = (f"resume it with --checkpoint {checkpoint}" if checkpoint.is_file()
                  else "it has no checkpoint to resume")
        raise ValueError(f"{folder} holds a train_{kind}.py run ({', '.join(path.name for path in previous)}), which a "
                         f"new run would replace: {resume}; start over with --overwrite true (which removes these "
                         f"files), or give another --output_folder.")
    for path in previous:  # --overwrite true: start over
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    if previous:
        print(f"Note: --overwrite: removed the previous run's {', '.join(path.name for path in previous)} from "
              f"{folder}.", file=sys.stderr)
    if tensorboard.is_dir():  # a resumed run's TensorBoard folder: TensorBoard would fail on it with a traceback
        try:
            with tempfile.TemporaryFile(dir=tensorboard):
                pass
        except OSError as error:
            release_output_folder(folder, kind)
            raise ValueError(f"Cannot write to the TensorBoard folder {tensorboard} ({error.strerror or error}): fix "
                             f"its permissions, or give another --output_folder.") from None
    # A temporary file of one of our names can only be left over now: the lock says no other run of this script
    # writes here.
    leftovers = [path for name in (f"checkpoint_{kind}.pth", f"best_{kind}.pth", f"log_{kind}.jsonl")
                 for path in folder.glob(f".{glob.escape(name)}.*.tmp")]
    if leftovers:
        n_bytes = sum(path.stat().st_size for path in leftovers)
        for path in leftovers:
            path.unlink()
        print(f"Note: removed {len(leftovers)} temporary file(s) ({n_bytes / 2 ** 20:.1f} MB) that interrupted saves "
              f"left in {folder}; the files they were to replace are intact.", file=sys.stderr)


def lock_output_folder(folder, kind):
    """
    Take the lock of train_<kind>.py on `folder`, so that a second run writing into the same folder is refused
    (two runs would write the same checkpoint and logs, each over the other's).

    The lock is an flock (fcntl) on the file <folder>/train_<kind>.lock, which says which process holds it. The
    kernel releases an flock when its process ends, however it ends, so a crashed or killed run never leaves the
    folder locked: the next run takes the lock over. A process that holds the lock already (a second run in the same
    Python process, as the tests do) keeps it.

    :raises ValueError: when another process holds the lock
    """
    path = (Path(folder) / f"train_{kind}.lock").resolve()
    if path in _HELD_LOCKS:
        return path
    while True:
        file = open(path, "a+", encoding="utf-8")
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            holder = file.read().strip() or "another process"
            file.close()
            raise ValueError(f"{Path(folder)} is in use by another train_{kind}.py run ({holder}; lock file "
                             f"{path}): wait until it ends, or give another --output_folder.") from None
        # The file may have been removed by the run that held it, between our open and our lock: lock the file
        # that is there now.
        try:
            if os.path.samestat(os.stat(path), os.fstat(file.fileno())):
                break
        except FileNotFoundError:
            pass
        file.close()
    try:
        file.seek(0)
        file.truncate()
        file.write(f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        file.flush()
    except OSError as error:  # a disk full to the last block, which still let the lock file be created
        file.close()
        raise ValueError(f"Cannot write the lock file {path} ({error.strerror or error}): free some space, or give "
                         f"another --output_folder.") from None
    _HELD_LOCKS[path] = file
    atexit.register(release_output_folder, path.parent, kind)  # a run that ends with an error leaves no lock file either
    return path


def release_output_folder(folder, kind):
    """Give back the lock of lock_output_folder (nothing to do if this process does not hold it)."""
    path = (Path(folder) / f"train_{kind}.lock").resolve()
    file = _HELD_LOCKS.pop(path, None)
    if file is not None:
        path.unlink(missing_ok=True)  # removed while still locked: a run that opened it meanwhile tries again
        file.close()


def checkpoint_bytes(stateful):
    """About the size of a checkpoint of `stateful` (name -> object with a state_dict(), or None), in bytes: its
    tensors, and the two moments per weight that Adam keeps once it has taken a step (a fresh optimiser has none
    yet)."""
    def tensor_bytes(value):
        if isinstance(value, torch.Tensor):
            return value.numel() * value.element_size()
        if isinstance(value, dict):
            return sum(tensor_bytes(item) for item in value.values())
        if isinstance(value, (list, tuple)):
            return sum(tensor_bytes(item) for item in value)
        return 0

    total = 0
    for obj in stateful.values():
        if obj is None:
            continue
        total += tensor_bytes(obj.state_dict())
        if isinstance(obj, torch.optim.Adam) and not obj.state:
            total += 2 * sum(tensor_bytes(p) for group in obj.param_groups for p in group["params"])
    return total


class CheckpointSaver:
    """
    save(iteration) writes training_checkpoint() atomically to `path`, from the first process only (all processes
    hold the same weights), while a stop signal waits for it (GracefulExit.saving).

    It checks first that a checkpoint fits on the disk (checkpoint_bytes): a full disk is found before training,
    not at the first save. A save that fails all the same (the disk filled up meanwhile) stops training with one
    line: which file, why, that the previous checkpoint is intact, and the iteration it holds.

    last_checkpoint is the last good checkpoint of the run, which a message about a NaN loss names: the one this run
    saved last, else the one it resumed from (`resumed_from`), else None.
    """

    def __init__(self, kind, path, hp, stateful, is_main_process, stop_signal, resumed_from=None, **extra):
        self.kind, self.path, self.hp, self.stateful, self.extra = kind, Path(path), hp, stateful, extra
        self.is_main_process, self.stop_signal, self.resumed_from = is_main_process, stop_signal, resumed_from
        self.saved_iteration = None  # the iteration of the last checkpoint this run wrote
        if is_main_process:
            needed, free = checkpoint_bytes(stateful), checkpoints.free_bytes(self.path.parent)
            if free is not None and free < needed:
                raise ValueError(f"No room for a checkpoint in {self.path.parent}: it needs about "
                                 f"{needed / 2 ** 20:.1f} MB, and {free / 2 ** 20:.1f} MB are free. Free some space, "
                                 f"or give another --output_folder.")

    def __call__(self, iteration):
        with self.stop_signal.saving():  # a signal now lets the save finish (and stops the run after it)
            if self.is_main_process:
                self._write(iteration)
        self.saved_iteration = iteration

    def _write(self, iteration):
        try:
            checkpoints.save_checkpoint(training_checkpoint(self.kind, iteration, self.hp, self.stateful,
                                                            **self.extra), self.path)
        except RuntimeError as error:
            if self.path.is_file():
                last = f"; it holds iteration {self.saved_iteration}" if self.saved_iteration is not None else ""
                raise RuntimeError(f"{error} Training stopped at iteration {iteration}{last}: make room (or fix the "
                                   f"permissions), then resume with --checkpoint {self.path}.") from None
            raise RuntimeError(f"{error} Training stopped at iteration {iteration}, before any checkpoint was "
                               f"written.") from None

    @property
    def last_checkpoint(self):
        """The last good checkpoint of this run: the one it saved last, else the one it resumed from, else None."""
        return self.path if self.saved_iteration is not None else self.resumed_from


def _flag_text(value):
    """A hyperparameter's value as it is written on the command line: lists as their items, separated by spaces."""
    return " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def reconcile_resumed_hyperparameters(checkpoint, hp, aliases=None, architecture=(), not_used=(), kept=(),
                                      predating=None):
    """
    Before the networks are built for a resumed run: settle which hyperparameters the checkpoint decides.

    A resumed run continues the checkpoint's networks, so
      * an architecture flag given with another value than the checkpoint's is refused (it would be ignored, and the
        new checkpoints would claim a network the run does not have); those not given take the checkpoint's values;
      * a flag in `not_used` (what the checkpoint replaces, e.g. train_srgan.py's --srresnet_checkpoint) is noted
        when given with another value, and takes the checkpoint's value;
      * a hyperparameter in `kept` that is not given keeps the checkpoint's value (or, when the checkpoint predates
        it, its value in `predating`): what a run trains with does not change on resume when a default changed since
        it was written.
    hp is changed in place, so that the checkpoints the run writes record what it really uses. (The learning-rate
    schedule is settled by resume_training, against the schedulers' state.)

    :param architecture: the names of the hyperparameters that shape the networks or the data they fit
                         (scaling_factor)
    :raises ValueError: naming the refused flags
    """
    saved = cli.rename_hyperparameters(checkpoint.get("hyperparameters") or {}, aliases)
    given = getattr(hp, "given", set(vars(hp)))  # (hyperparameters not from parse_hyperparameters: all count)
    refused = [f"--{name} {_flag_text(getattr(hp, name))} (the checkpoint's: {_flag_text(saved[name])})"
               for name in architecture if name in given and name in saved and saved[name] != getattr(hp, name)]
    if refused:
        raise ValueError(f"Cannot resume {hp.checkpoint} with another architecture: {', '.join(refused)}. A resumed "
                         f"run continues the checkpoint's network: drop these flags, or start a new run (without "
                         f"--checkpoint).")
    for name in architecture:
        if name in saved:
            setattr(hp, name, saved[name])
    overridden = [f"--{name}" for name in not_used if name in given and getattr(hp, name) != saved.get(name)]
    if overridden:
        print(f"Note: {', '.join(overridden)} not used when resuming: the checkpoint {hp.checkpoint} brings the "
              f"networks.", file=sys.stderr)
    for name in not_used:
        setattr(hp, name, saved.get(name))
    for name in kept:
        if name not in given and (name in saved or name in (predating or {})):
            setattr(hp, name, saved[name] if name in saved else predating[name])


def make_optimizer(network, hp):
    """
    Adam over `network`'s weights at hp.learning_rate (PyTorch's betas, 0.9 and 0.999), and the schedule that
    multiplies its learning rate by hp.learning_rate_gamma at each of hp.learning_rate_milestones (iterations).

    fused (hp.fused_adam): one kernel updates every weight; the default (foreach) runs ~10 operations per weight
    tensor, and on CPUs they take a slow path for channels_last weights (about 15x slower for SRResNet, measured on
    an AVX2 CPU). The same arithmetic either way. (Departure from the official ESRGAN and Real-ESRGAN code, whose
    betas are (0.9, 0.99); the ESRGAN paper's are these.)

    :return: (optimizer, scheduler), the MultiStepLR stepped once per iteration
    """
    optimizer = torch.optim.Adam(network.parameters(), lr=hp.learning_rate, fused=hp.fused_adam or None)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=hp.learning_rate_milestones,
                                                     gamma=hp.learning_rate_gamma)
    return optimizer, scheduler


# The hyperparameters of the learning-rate schedule (MultiStepLR), which a resumed run may change.
LEARNING_RATE_SCHEDULE = ("learning_rate", "learning_rate_milestones", "learning_rate_gamma")


def learning_rate_schedule(scheduler):
    """The schedule a MultiStepLR follows, under the names of LEARNING_RATE_SCHEDULE."""
    return dict(learning_rate=scheduler.base_lrs[0], learning_rate_milestones=sorted(scheduler.milestones.elements()),
                learning_rate_gamma=scheduler.gamma)


def set_learning_rate_schedule(scheduler, learning_rate, learning_rate_milestones, learning_rate_gamma):
    """
    Give a MultiStepLR (and its optimiser) another schedule from now on, as if the run had had it from the start:
    the learning rate becomes learning_rate * gamma^(the milestones already passed), and the later milestones
    multiply it by gamma as they come. A milestone earlier than the scheduler's iteration counts as passed.
    """
    scheduler.base_lrs = [learning_rate] * len(scheduler.optimizer.param_groups)
    scheduler.milestones = collections.Counter(learning_rate_milestones)
    scheduler.gamma = learning_rate_gamma
    # last_epoch: the steps taken so far
    passed = bisect.bisect_right(sorted(learning_rate_milestones), scheduler.last_epoch)
    for group in scheduler.optimizer.param_groups:
        group["initial_lr"] = learning_rate
        group["lr"] = learning_rate * learning_rate_gamma ** passed
    scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]  # what get_last_lr() returns


# What every training checkpoint holds (training_checkpoint); each script names the rest of its own (the discriminator).
RESUMABLE_KEYS = ("iteration", "hyperparameters", "rng_state", "generator_arch", "generator_kwargs", "generator",
                  "optimizer_g", "scheduler_g")


def check_resumable(checkpoint, path, required=()):
    """
    Raise ValueError, in one line, unless `checkpoint` (from load_checkpoint, of the right kind) holds a run to resume:
    a generator-only file (best_<kind>.pth) gets told which file to resume from, a file without some of RESUMABLE_KEYS
    and `required` (damaged, or made by something else under the right kind) is named with what it lacks.
    """
    kind = checkpoint.get("kind")
    if "rng_state" not in checkpoint:
        raise ValueError(f"{path}: this {kind} checkpoint holds a generator only (such as best_{kind}.pth, the best "
                         f"validated weights), not a run to resume: resume from checkpoint_{kind}.pth.")
    missing = [name for name in RESUMABLE_KEYS + tuple(required) if name not in checkpoint]
    if missing:
        raise ValueError(f"Cannot resume from {path}: it lacks {', '.join(missing)}, which every checkpoint of "
                         f"train_{kind}.py holds, so it is damaged or was not written by it. Resume from another "
                         f"checkpoint, or start a new run without --checkpoint.")


def load_run_to_resume(hp, kind, aliases, architecture, not_used, required=(), kept=(), predating=None):
    """
    The checkpoint of the run that --checkpoint resumes, or None for a new run (no --checkpoint): loaded, checked to
    hold a run to resume (check_resumable), and with hp's architecture flags settled by it
    (reconcile_resumed_hyperparameters), before any network is built.

    :param kind: 'srresnet' or 'srgan': the script whose checkpoints are accepted
    :param aliases, architecture, not_used, kept, predating: as reconcile_resumed_hyperparameters takes them
    :param required: as check_resumable takes it
    """
    if not hp.checkpoint:
        return None
    resumed = checkpoints.load_checkpoint(hp.checkpoint, expected_kind=kind)
    check_resumable(resumed, hp.checkpoint, required)
    reconcile_resumed_hyperparameters(resumed, hp, aliases, architecture, not_used, kept, predating)
    return resumed


def resume_training(checkpoint, stateful, hp, aliases=None):
    """
    Restore the objects of training_checkpoint() and the RNG states from a checkpoint (after
    reconcile_resumed_hyperparameters).

    The optimisers' learning rate and the schedulers' milestones come back with them. Learning-rate flags given with
    new values then apply (set_learning_rate_schedule), and say so; those not given keep the checkpoint's schedule,
    and hp is set to it. Any other hyperparameter that differs from the checkpoint's applies from now on and is
    listed in a note. hp then holds what the run really uses, which its checkpoints record.

    :param aliases: the script's renamed hyperparameters (see parse_hyperparameters), so that the hyperparameters of
                    an older checkpoint are compared under today's names
    :return: the iteration to continue from
    """
    for name, obj in stateful.items():
        if obj is not None and name in checkpoint:
            obj.load_state_dict(checkpoint[name])
    set_rng_state(checkpoint["rng_state"])
    schedulers = [obj for obj in stateful.values() if isinstance(obj, torch.optim.lr_scheduler.MultiStepLR)]
    if schedulers and all(hasattr(hp, name) for name in LEARNING_RATE_SCHEDULE):
        restored = learning_rate_schedule(schedulers[0])
        given = getattr(hp, "given", set(vars(hp)))
        for name in LEARNING_RATE_SCHEDULE:  # not given: the checkpoint's
            if name not in given:
                setattr(hp, name, restored[name])
        wanted = dict(learning_rate=hp.learning_rate, learning_rate_milestones=sorted(hp.learning_rate_milestones),
                      learning_rate_gamma=hp.learning_rate_gamma)
        if wanted != restored:
            for scheduler in schedulers:
                set_learning_rate_schedule(scheduler, **wanted)
            changes = "; ".join(f"{name} {_flag_text(restored[name])} -> {_flag_text(wanted[name])}"
                                for name in LEARNING_RATE_SCHEDULE if wanted[name] != restored[name])
            print(f"Learning-rate schedule changed on resume ({changes}): it applies from iteration "
                  f"{checkpoint['iteration']} on, as if the run had had it from the start (milestones already passed "
                  f"count): learning rate now {schedulers[0].get_last_lr()[0]:.3g}.", file=sys.stderr)
    warn_changed_hyperparameters(cli.rename_hyperparameters(checkpoint["hyperparameters"], aliases), vars(hp),
                                 keys_to_ignore=("checkpoint", "iterations", "workers", "overwrite",
                                                 *LEARNING_RATE_SCHEDULE))
    return checkpoint["iteration"]


def _unwrap(model):
    """The plain model inside DistributedDataParallel / torch.compile wrappers (their state dicts add prefixes)."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)


def warn_changed_hyperparameters(saved, current, keys_to_ignore=("checkpoint", "iterations", "workers")):
    """On resume, list the hyperparameters that differ from the run being resumed (a common mistake; they apply from
    now on)."""
    changed = [f"{name}: {saved[name]!r} -> {value!r}" for name, value in current.items()
               if name in saved and saved[name] != value and name not in keys_to_ignore]
    if changed:
        print("Note: resuming with hyperparameters that differ from the checkpoint's: " + "; ".join(changed),
              file=sys.stderr)
