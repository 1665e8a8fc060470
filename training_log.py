"""What a training run reports as it goes: the running losses, validation, the log files and the progress bar.

  check_finite, RunningLosses     the losses since the last report, summed on the device, and the NaN / inf check
  Validation                      PSNR / SSIM on test sets during training, exactly as eval.py measures them, and
                                  the best weights so far (best_<kind>.pth)
  LogFiles, read_jsonl            TensorBoard event files and a JSON-lines log, continued exactly by a resumed run
  TrainingLog                     the progress bar, reports and validations a training loop asks for
  start_run, start_duties         the set-up both training scripts share around their networks and optimisers:
                                  validation, the training-pair pool and the resume; the signals, checkpoints and log
                                  that the end of each iteration calls
  export_command                  the command a finished run suggests, to use its generator elsewhere
"""
import json
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import checkpoints
import degradations
import inference
import metrics
import training
import utils

def check_finite(loss, iteration, checkpoint_path, since_iteration=None):
    """
    Stop training when a loss becomes NaN or infinite: continuing would only overwrite the last good
    checkpoint with garbage. The checkpoint on disk is left as it is.

    `loss` may be a sum of the losses of the iterations since `since_iteration` (one NaN / inf makes the sum NaN /
    inf): checking a sum now and then instead of every loss spares a GPU synchronisation per iteration.
    `checkpoint_path` is the last good checkpoint, or None when there is none yet (the message then names no file).
    """
    if not torch.isfinite(loss):
        when = f"at iteration {iteration}" if since_iteration is None else \
            f"between iterations {since_iteration} and {iteration}"
        if checkpoint_path is None:  # nothing saved yet (and not resumed): no file to name
            raise RuntimeError(f"The loss became {loss.item()} {when}; training stopped, before any checkpoint was "
                               f"saved. Start again with a lower learning rate or precision='fp32'.")
        raise RuntimeError(f"The loss became {loss.item()} {when}; training stopped. The last "
                           f"good checkpoint is kept at {checkpoint_path}. Try a lower learning rate or "
                           f"precision='fp32', then resume with --checkpoint {checkpoint_path}.")


class RunningLosses:
    """
    The losses of the iterations since the last report, for the progress bar and the NaN check.

    They are summed on the device and read (.item()) only when reported: reading a GPU value makes the CPU wait
    for the GPU, which would otherwise already be queuing the next iteration's work.

    The sums are part of the training checkpoint (state_dict), which may be saved between two reports: a resumed
    run's first report then averages the same iterations as an uninterrupted run's, not only those since the resume.
    """

    def __init__(self, names, device, start_iteration):
        self.names, self.device = names, device
        self.last_checked = start_iteration  # the sums hold the losses of the iterations since this one
        self._reset()

    def _reset(self):
        self.sums = {name: torch.zeros((), device=self.device) for name in self.names}
        self.count = 0  # the iterations in the sums
        self.timed, self.start_time = 0, time.time()  # the iterations this process ran since start_time (the speed)

    def add(self, **losses):
        for name, value in losses.items():
            self.sums[name] = self.sums[name] + value.detach().float()
        self.count += 1
        self.timed += 1

    def state_dict(self):
        """The sums and their count (0-d float32 tensors on the CPU, an int), for the training checkpoint."""
        return {"sums": {name: total.detach().cpu() for name, total in self.sums.items()}, "count": self.count}

    def load_state_dict(self, state):
        """Continue the sums of a checkpoint (a resumed run); the speed is measured afresh."""
        if set(self.names) - set(state["sums"]):  # a checkpoint that did not log every loss: averages start afresh
            return
        self.sums = {name: state["sums"][name].to(self.device) for name in self.names}
        self.count = state["count"]

    def check_finite(self, iteration, checkpoint_path):
        """One NaN / inf loss makes its sum NaN / inf: stop before a checkpoint overwrites the last good one."""
        check_finite(sum(self.sums.values()), iteration, checkpoint_path, since_iteration=self.last_checked)
        self.last_checked = iteration

    def report(self):
        """The mean of each loss and the iterations per second since the last report (then start afresh).

        :return: (dict name -> mean loss, iterations per second), floats
        """
        means = {name: total.item() / self.count for name, total in self.sums.items()}
        it_per_s = self.timed / (time.time() - self.start_time)
        self._reset()
        return means, it_per_s


class Validation:
    """
    PSNR / SSIM of the generator on test sets during training, measured exactly as eval.py measures them, and the
    best weights so far.

    The test images are loaded once, at start-up (metrics.load_test_pairs: the standard protocol, LR made with
    MATLAB's imresize); each validation runs metrics.evaluate_set, the code eval.py runs, on the weights a checkpoint
    gives to eval.py (the EMA when there is one). So the PSNR logged at iteration k is the number eval.py prints for
    the checkpoint saved at iteration k. The images go through inference.upscale, in tiles: large test images take
    bounded memory, as in super_resolve.py.

    Validating changes nothing in training: the generator is measured in eval mode (batch norm uses its running
    statistics and updates none), without gradients, and put back in training mode after; nothing draws a random
    number or touches the data loader. Only the main process validates. The others go on to the next iteration and
    wait there for its gradients; no collective operation is called while it validates, so none can hang.

    The weights with the best PSNR on the first set are written to `best_path`, a generator-only checkpoint that
    load_generator, eval.py and super_resolve.py read like any other. When the run starts from trained weights
    (fine-tuning, a GAN stage), the starting point, validated at iteration 0, is a candidate too: the best file is
    then never worse than the weights the run started from (if no iteration beats them, it holds them). Weights
    initialised at random are no candidate: they are nobody's result. The best score is saved in the training
    checkpoint (state_dict / load_state_dict, through the script's `stateful` objects), so a resumed run keeps it.
    """

    CROP = 64  # side of the LR crop whose SR image is logged at each validation (the first image's centre)

    def __init__(self, hp, kind, generator, ema, best_path, is_main_process, start_is_candidate=False,
                 **architecture):
        """
        :param hp: the hyperparameters (val_sets, val_every, data_folder, scaling_factor; stored with the best weights)
        :param kind: 'srresnet' or 'srgan', the script (the best file's `kind`, as in its training checkpoints)
        :param generator: the plain generator (not its DDP / torch.compile wrapper); ema: its ModelEMA, or None
        :param best_path: where the best weights are written (best_<kind>.pth, beside the training checkpoint)
        :param start_is_candidate: whether the weights at iteration 0 may be the best (True when they are trained
                                   weights: --pretrained, or the pixel-loss network a GAN stage starts from)
        :param architecture: generator_arch and generator_kwargs, stored with the best weights
        """
        self.hp, self.kind, self.best_path, self.architecture = hp, kind, Path(best_path), architecture
        self.start_is_candidate = start_is_candidate
        self.is_main_process = is_main_process
        self.model, self.weights_name = (ema.module, "generator_ema") if ema is not None else (generator, "generator")
        self.measured = self.model  # what evaluate_set runs: the model, or it behind a nearest upscale (x1 / x2)
        self.best = None  # the best validation so far: {"iteration", "val_set", "psnr"}
        self.pairs, self.bicubic = {}, {}  # test set -> its (name, hr, lr) images; -> bicubic's {"psnr", "ssim"}
        self.crops = {}  # 'lr', 'hr', 'bicubic' -> the fixed crop, uint8 (h, w, 3)
        self.lr_degradation = getattr(hp, "val_degradation", "bicubic")  # how the test LR images are made

    def load_test_sets(self):
        """Load the test sets, make their LR images and measure bicubic on them, once (TrainingLog calls this when
        training starts, after the training data were found: a missing test list is only a note)."""
        hp, s = self.hp, self.hp.scaling_factor
        if hp.val_every <= 0 or not self.is_main_process:
            return
        # An x1 / x2 generator of x4 data is measured as an x4 model, on the LR image nearest-upscaled to its input
        # size, exactly as it trains (inference.MatchedInputGenerator: it holds the live generator, no copy).
        self.measured, note = inference.fit_generator_to_data(self.model, s)
        if note:
            print(f"note: validating {note}", file=sys.stderr)
        for name, hr_paths in metrics.find_test_lists(hp.data_folder, hp.val_sets, "not validating on").items():
            # The LR images as eval.py makes them under --lr_degradation (e.g. JPEG-compressed ones, for a model
            # trained on degraded inputs): the same pixels at every validation.
            self.pairs[name] = metrics.load_test_pairs(hr_paths, s, lr_degradation=self.lr_degradation)
            self.bicubic[name] = self._scores(*metrics.evaluate_set(None, self.pairs[name], s))
        if self.best is not None and self.first_set not in (None, self.best["val_set"]):
            print(f"note: the best weights so far were chosen by their PSNR on {self.best['val_set']}; from now on "
                  f"{self.first_set} chooses them, and the next validation replaces {self.best_path}", file=sys.stderr)
            self.best = None
        if self.pairs:
            # The crop: the centre of the first LR image (the whole image if smaller), and its HR and bicubic images.
            _, hr, lr = next(iter(self.pairs.values()))[0]
            size = min(self.CROP, lr.shape[0], lr.shape[1])
            top, left = (lr.shape[0] - size) // 2, (lr.shape[1] - size) // 2
            lr_crop = lr[top:top + size, left:left + size]
            self.crops = {"lr": _rgb(lr_crop), "hr": _rgb(hr[top * s:(top + size) * s, left * s:(left + size) * s]),
                          "bicubic": _rgb(metrics.upscale_array(None, lr_crop, s))}

    @staticmethod
    def _scores(psnr, ssim):
        return {"psnr": psnr, "ssim": ssim}

    @property
    def first_set(self):
        """The test set whose PSNR picks the best weights (the first of val_sets that has a list), or None."""
        return next(iter(self.pairs), None)

    def due(self, iteration, last):
        """Whether to validate after `iteration` completed iterations (never in processes that do not validate)."""
        return bool(self.pairs) and (iteration % self.hp.val_every == 0 or last)

    def __call__(self, iteration):
        """
        Measure the generator now, after `iteration` completed iterations, and keep its weights if they are the best
        so far (iteration 0, the starting point, only when start_is_candidate: random weights are measured, never
        kept).

        :return: (scores: test set -> {"psnr", "ssim"}, the SR image of the fixed crop (h s, w s, 3) uint8,
                  whether these weights are the new best)
        """
        s = self.hp.scaling_factor
        modes = {module: module.training for module in self.model.modules()}
        self.model.eval()
        try:
            scores = {name: self._scores(*metrics.evaluate_set(self.measured, pairs, s)) for name, pairs in
                      self.pairs.items()}
            sr_crop = metrics.upscale_array(self.measured, self.crops["lr"], s)
        finally:
            for module, training in modes.items():
                module.train(training)
        psnr = scores[self.first_set]["psnr"]
        is_best = (iteration > 0 or self.start_is_candidate) and (self.best is None or psnr > self.best["psnr"])
        if is_best:
            self.best = {"iteration": iteration, "val_set": self.first_set, "psnr": psnr}
            checkpoints.save_checkpoint({"kind": self.kind, "iteration": iteration, **self.architecture,
                             self.weights_name: self.model.state_dict(), "val": scores,
                             "hyperparameters": vars(self.hp)}, self.best_path)
        return scores, sr_crop, is_best

    def state_dict(self):
        return {"best": self.best}

    def load_state_dict(self, state):
        self.best = state["best"]


def _rgb(img):
    """A uint8 image (h, w) or (h, w, 3) as (h, w, 3): grey images repeated into three channels, for display."""
    return np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img


class LogFiles:
    """
    The logs of a run, for people and for scripts, in its output folder: TensorBoard event files in
    `tensorboard_<kind>/` (watch them with `tensorboard --logdir <output folder>`), and the same numbers as JSON
    lines in `log_<kind>.jsonl`, one record per line, e.g.

        {"iteration": 200, "time": 1700000000.0, "losses": {"loss": 0.0123}, "learning_rate": 0.0001, "it_per_s": 5.1}
        {"iteration": 200, "time": 1700000001.2, "val": {"Set5": {"psnr": 28.91, "ssim": 0.8231}}}

    In TensorBoard a value's tag is its path in the record ('losses/loss', 'val/Set5/psnr') and its step the
    iteration; `time` is the Unix time. Images go to TensorBoard only.

    A resumed run continues the same logs, with each iteration once: what was written after the iteration of the
    checkpoint it resumes from (between the last save and a crash) is dropped. The JSON lines are rewritten with
    the records up to that iteration; TensorBoard hides the later events itself (SummaryWriter's purge_step). A run
    from scratch (start_iteration 0) starts both afresh.
    """

    def __init__(self, output_folder, kind, start_iteration):
        try:
            from torch.utils.tensorboard import SummaryWriter  # imported here: only the main process writes logs
        except ImportError as error:  # (a package of requirements.txt, not a project module)
            raise RuntimeError(f"TensorBoard is not installed ({error}): pip install -r requirements.txt.") from None
        output_folder = Path(output_folder)
        output_folder.mkdir(parents=True, exist_ok=True)
        self.jsonl_path = output_folder / f"log_{kind}.jsonl"
        kept = [record for record in read_jsonl(self.jsonl_path) if record["iteration"] <= start_iteration] \
            if start_iteration > 0 and self.jsonl_path.is_file() else []
        text = "".join(json.dumps(record) + "\n" for record in kept)
        utils.atomic_write(self.jsonl_path, lambda file: file.write(text.encode("utf-8")))
        self.jsonl = open(self.jsonl_path, "a", encoding="utf-8")
        # purge_step: TensorBoard hides the events of steps >= it written before (all of them, for a fresh run).
        self.tensorboard = SummaryWriter(output_folder / f"tensorboard_{kind}",
                                         purge_step=start_iteration + 1 if start_iteration > 0 else 0)

    def write(self, record):
        """Append one record {"iteration", "time", ...} to the JSON lines, and each of its numbers to TensorBoard."""
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()  # a record is on disk as soon as it is written, whatever happens next
        for tag, value in _flatten(record):
            if tag not in ("iteration", "time"):
                self.tensorboard.add_scalar(tag, value, record["iteration"], walltime=record["time"])
        self.tensorboard.flush()

    def add_image(self, tag, image, iteration):
        """An image (h, w, 3) uint8 in TensorBoard (stored as PNG: read back, it is the same pixels)."""
        self.tensorboard.add_image(tag, image, iteration, dataformats="HWC")
        self.tensorboard.flush()

    def close(self):
        self.jsonl.close()
        self.tensorboard.close()


def _flatten(record, prefix=""):
    """(tag, value) for every number in a nested dict: {"val": {"Set5": {"psnr": x}}} -> ("val/Set5/psnr", x)."""
    for key, value in record.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}/")
        else:
            yield prefix + key, value


def read_jsonl(path):
    """
    The records of a JSON-lines log (LogFiles), as a list of dicts, each with its int "iteration".

    A last line cut short by a crash is left out. So is any other line that is not such a record (bytes damaged on
    the disk, a line of something else), with a note that names the file: a resumed run (which rewrites the log with
    the records it keeps) and plot_training.py go on with the rest.
    """
    lines = Path(path).read_bytes().splitlines()  # bytes: a damaged line need not be UTF-8
    records, damaged = [], 0
    for number, line in enumerate(lines):
        try:
            record = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            record = None
            if number == len(lines) - 1 or not line.strip():  # the line a crash cut short, or an empty one
                continue
        if isinstance(record, dict) and type(record.get("iteration")) is int:
            records.append(record)
        else:
            damaged += 1
    if damaged:
        print(f"note: {path}: {damaged} line(s) that are not log records left out (damaged, or written by something "
              f"else)", file=sys.stderr)
    return records


class TrainingLog:
    """
    What a training run shows and writes as it goes, shared by both training scripts: the progress bar, the running
    losses, the validations and the log files (LogFiles: TensorBoard and JSON lines), and the closing lines. The
    training loop decides when each happens, in plain sight:

        log = training_log.TrainingLog(["loss"], hp, start_iteration, device, is_main_process, ...)
        for iteration in log.iterations():
            ...                                                  # one training step
            log.add_losses(loss=loss)
            if report_now or validate_now or save_now:
                log.check_finite(completed, save.last_checkpoint)  # never save a NaN model over a good one
            if report_now:
                log.report(completed)
            if validate_now:
                log.validate(completed)
            ...
        log.close(save)

    Only the main process prints, validates and writes files.
    """

    def __init__(self, loss_names, hp, start_iteration, device, is_main_process, description="training",
                 learning_rate=None, validation=None, kind=None, resumed=None):
        """
        :param loss_names: the names of the losses given to add_losses
        :param hp: the hyperparameters (iterations, output_folder, checkpoint)
        :param learning_rate: optional function () -> the current learning rate, reported with the losses
        :param validation: a Validation, or None (no validation)
        :param kind: 'srresnet' or 'srgan': the log files are log_<kind>.jsonl and tensorboard_<kind>/ in
                     hp.output_folder (None: no log files)
        :param resumed: the checkpoint a resumed run continues, whose running losses (the sums since its last report)
                        it continues too; the training checkpoints save `running_losses` under that name
        """
        self.hp, self.is_main_process, self.learning_rate, self.validation = hp, is_main_process, learning_rate, \
            validation
        self.start_iteration = start_iteration
        if validation is not None:
            validation.load_test_sets()
        self.running_losses = RunningLosses(loss_names, device, start_iteration)
        if resumed is not None and "running_losses" in resumed:  # (older checkpoints have none: afresh)
            self.running_losses.load_state_dict(resumed["running_losses"])
        self.log_files = LogFiles(hp.output_folder, kind, start_iteration) \
            if is_main_process and kind is not None else None
        self.postfix = {}  # what the progress bar shows after the counter: the last losses, speed, scores
        self.progress = tqdm(range(start_iteration, hp.iterations), initial=start_iteration, total=hp.iterations,
                             disable=not is_main_process, desc=description)
        if start_iteration == 0 and validation is not None and validation.pairs:
            # A fresh run: bicubic's scores and the crop's HR and bicubic images once, then the starting point.
            if self.log_files is not None:
                self.log_files.write({"iteration": 0, "time": time.time(), "bicubic": validation.bicubic})
                for name in ("hr", "bicubic"):
                    self.log_files.add_image(f"val_crop/{name}", validation.crops[name], 0)
            self.validate(0)

    def iterations(self):
        """The iterations still to run, start_iteration .. iterations - 1 (advancing the progress bar)."""
        return self.progress

    def add_losses(self, **losses):
        """Add one iteration's losses (name -> 0-d tensor) to the running sums (read only when reported)."""
        self.running_losses.add(**losses)

    def check_finite(self, iteration, last_checkpoint):
        """Stop the run (RuntimeError, naming last_checkpoint) if a loss since the last check was NaN or infinite."""
        self.running_losses.check_finite(iteration, last_checkpoint)

    def report(self, iteration):
        """Show and log the mean losses since the last report, the speed and the learning rate."""
        losses, it_per_s = self.running_losses.report()
        record = {"iteration": iteration, "time": time.time(), "losses": losses}
        if self.learning_rate is not None:
            record["learning_rate"] = self.learning_rate()
        record["it_per_s"] = it_per_s
        self.postfix.update({name: f"{value:.4f}" for name, value in losses.items()})
        if self.learning_rate is not None:
            self.postfix["learning_rate"] = f"{record['learning_rate']:.1e}"
        self.postfix["it_per_s"] = f"{it_per_s:.2f}"
        if self.is_main_process:
            self.progress.set_postfix(self.postfix)
        if self.log_files is not None:
            self.log_files.write(record)

    def validate(self, iteration):
        """Validate now (the main process only; see Validation), show and log the scores and the crop's SR image."""
        start = time.time()
        scores, sr_crop, is_best = self.validation(iteration)
        bicubic = self.validation.bicubic
        setting = "" if self.validation.lr_degradation == "bicubic" else f" ({self.validation.lr_degradation} LR)"
        self.progress.write(f"iteration {iteration}: " + ", ".join(
            f"{name}{setting} {s['psnr']:.2f} dB / {s['ssim']:.4f} (bicubic {bicubic[name]['psnr']:.2f} / "
            f"{bicubic[name]['ssim']:.4f})" for name, s in scores.items())
            + (f"; best so far, saved to {self.validation.best_path}" if is_best else ""))
        self.postfix.update({name: f"{s['psnr']:.2f}dB" for name, s in scores.items()})
        self.progress.set_postfix(self.postfix)
        if self.log_files is not None:
            self.log_files.write({"iteration": iteration, "time": time.time(), "val": scores})
            self.log_files.add_image("val_crop/sr", sr_crop, iteration)
        self.running_losses.start_time += time.time() - start  # the speed reported is the training's own

    def close(self, save):
        """Close the progress bar and the log files, and say which files the run leaves (save: its CheckpointSaver)."""
        self.progress.close()
        if self.log_files is not None:
            self.log_files.close()
        if not self.is_main_process:
            return
        # Only files that exist are named: a run with nothing to train (--iterations at or below the starting
        # iteration) writes no checkpoint, and a run resumed into another folder has no best file there yet.
        saved = save.saved_iteration is not None
        if saved:
            print(f"Checkpoint: {save.path}")
        else:
            print(f"No checkpoint written: nothing to train from iteration {self.start_iteration} to --iterations "
                  f"{self.hp.iterations}" + (f"; {save.resumed_from} is unchanged" if save.resumed_from else "")
                  + ".")
        best = self.validation.best if self.validation is not None else None
        best_written = best is not None and self.validation.best_path.is_file()
        if best_written:
            print(f"Best validated weights: {self.validation.best_path} (iteration {best['iteration']}, "
                  f"{best['val_set']} {best['psnr']:.2f} dB)")
        paths = ([save.path] if saved else []) + ([self.validation.best_path] if best_written else [])
        if paths:
            print("To run the generator in other programs, export it (to .onnx, .pth or .safetensors; see "
                  "docs/export.md):\n" + "\n".join(f"    {export_command(p)}" for p in paths))


def start_run(kind, hp, stateful, resumed, aliases, rank, world_size, start_is_candidate, **architecture):
    """
    Complete a training script's `stateful` (name -> what a checkpoint saves and a resumed run loads) with the
    validation and Real-ESRGAN's training-pair pool, then continue a resumed run from its checkpoint
    (training.resume_training: every object of `stateful`, the random-number state, the learning-rate schedule).

    :param kind: 'srresnet' or 'srgan': the best weights go to best_<kind>.pth in hp.output_folder
    :param stateful: the networks, optimisers and schedulers, and "generator" and "generator_ema" (a ModelEMA or
                     None) among them; "validation" and "pair_pool" are added
    :param resumed: the checkpoint of the run resumed (training.load_run_to_resume), or None
    :param aliases: the script's renamed hyperparameters, for an older checkpoint's
    :param start_is_candidate: whether the starting weights may be the best (Validation)
    :param architecture: generator_arch and generator_kwargs (stored with the best weights), and any other names
                         the script's checkpoints store (not used here)
    :return: (validation, the pair pool or None when --queue_size is 0, the iteration to start from)
    """
    validation = Validation(hp, kind, stateful["generator"], stateful["generator_ema"],
                            Path(hp.output_folder) / f"best_{kind}.pth", rank == 0,
                            start_is_candidate=start_is_candidate, generator_arch=architecture["generator_arch"],
                            generator_kwargs=architecture["generator_kwargs"])
    pair_pool = degradations.make_pair_pool(hp, rank, world_size)
    stateful.update(validation=validation, pair_pool=pair_pool)
    start_iteration = training.resume_training(resumed, stateful, hp, aliases) if resumed else 0
    return validation, pair_pool, start_iteration


def start_duties(kind, hp, stateful, resumed, start_iteration, device, is_main_process, loss_names, description,
                 **architecture):
    """
    What the end of each iteration of a training loop calls, each when it is due:

      stop_signal   training.GracefulExit: Ctrl+C and SIGTERM become "save, then stop", in every process at once
      save          training.CheckpointSaver: checkpoint_<kind>.pth in hp.output_folder, atomically, holding
                    `stateful` and `architecture` (room for it on the disk is checked now)
      log           TrainingLog: the progress bar, the running losses (`loss_names`), validation and the log files;
                    a fresh run validates its starting point now

    The running losses join `stateful` as "running_losses": a checkpoint holds them, so the first report after a
    resume averages the same iterations as an uninterrupted run's.

    :param stateful: as start_run completed it ("scheduler_g" gives the learning rate reported, "validation" the
                     validation)
    :param description: the progress bar's label, e.g. 'train_srresnet'
    :return: (stop_signal, save, log)
    """
    stop_signal = training.GracefulExit()
    save = training.CheckpointSaver(kind, Path(hp.output_folder) / f"checkpoint_{kind}.pth", hp, stateful,
                                    is_main_process, stop_signal, resumed_from=hp.checkpoint if resumed else None,
                                    **architecture)
    scheduler = stateful["scheduler_g"]
    log = TrainingLog(loss_names, hp, start_iteration, device, is_main_process, description,
                      learning_rate=lambda: scheduler.get_last_lr()[0], validation=stateful["validation"], kind=kind,
                      resumed=resumed)
    stateful["running_losses"] = log.running_losses
    return stop_signal, save, log


def export_command(path):
    """The command that exports the generator of a checkpoint for other programs (export.py), to an ONNX file beside
    it: checkpoint_srgan.pth -> srgan.onnx, best_srgan.pth -> best_srgan.onnx."""
    path = Path(path)
    output = path.with_name(path.stem.removeprefix("checkpoint_") + ".onnx")
    script = Path(__file__).resolve().with_name("export.py")
    script = os.path.relpath(script) if Path.cwd() in script.parents else str(script)  # 'export.py' when run here
    return f"python {shlex.quote(script)} {shlex.quote(str(path))} --output {shlex.quote(str(output))}"
