"""
Draw how a training run went: its validation PSNR against bicubic's, and the fixed validation crop over time.

    python plot_training.py runs --kind srresnet --output_folder docs
        -> docs/validation_curve.png and docs/validation_strip.png

It reads what the training scripts log in their output folder (training_log.LogFiles) when they validate (--val_sets,
--val_every):
  log_<kind>.jsonl       the validation scores, {"iteration", "val": {test set: {"psnr", "ssim"}}}, and bicubic's on
                         the same sets, {"iteration": 0, "bicubic": {...}}, measured when the run started
  tensorboard_<kind>/    the images of the fixed validation crop (the centre of the first test image): its SR image
                         at every validation ('val_crop/sr') and its HR and bicubic images ('val_crop/hr',
                         'val_crop/bicubic'), read back with TensorBoard's own reader (EventAccumulator)
and draws:
  validation_curve.png   validation PSNR against the iteration, one line per test set, with bicubic's PSNR on that
                         set as a dashed line of the same colour: the network is worth its cost once it is above
  validation_strip.png   the crop as bicubic upscaling makes it, then the network's SR image at --strip_count
                         validations spread over the run (the first and the last among them), then the HR crop

Errors a user can cause (no log, a run that did not validate) end the script with one line on stderr.
"""
import argparse
import io
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # draw into files; no window, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

import cli  # noqa: E402
import training_log  # noqa: E402
import utils  # noqa: E402


# ------------------------------------------------------------------------------------------------------
# Reading a run's logs
# ------------------------------------------------------------------------------------------------------
def read_validation(run_folder, kind):
    """
    The validation scores of a run and bicubic's, from its log_<kind>.jsonl.

    :return: (scores: test set -> list of (iteration, PSNR, SSIM) in the order of the iterations,
              bicubic: test set -> {"psnr", "ssim"})
    """
    path = Path(run_folder) / f"log_{kind}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"No training log {path}: give the output folder of a train_{kind}.py run "
                                f"(and --kind srgan for train_srgan.py's).")
    return validation_of_records(training_log.read_jsonl(path), path)


def validation_of_records(records, path):
    """
    The validation scores and bicubic's among the records of a log (training_log.read_jsonl of `path`, which the
    message of a log without validation names): read_validation's result.
    """
    def measured(value, names):  # a set's scores as the training scripts log them (a damaged record is not drawn)
        return isinstance(value, dict) and all(isinstance(value.get(name), (int, float)) for name in names)

    scores, bicubic = {}, {}
    for record in records:  # (records with an iteration: other lines were left out, with a note)
        for test_set, value in (record["val"].items() if isinstance(record.get("val"), dict) else ()):
            if measured(value, ("psnr", "ssim")):
                scores.setdefault(test_set, []).append((record["iteration"], value["psnr"], value["ssim"]))
        if isinstance(record.get("bicubic"), dict):
            bicubic.update({name: value for name, value in record["bicubic"].items() if measured(value, ("psnr",))})
    if not scores:
        raise ValueError(f"{path} holds no validation: train with --val_sets <test sets> and --val_every N "
                         f"(N > 0) to get one.")
    return {test_set: sorted(values) for test_set, values in scores.items()}, bicubic


def read_crops(run_folder, kind):
    """
    The images of the fixed validation crop, from the run's TensorBoard event files.

    :return: dict 'hr' / 'bicubic' -> (h, w, 3) uint8 array (absent if not logged), and 'sr' -> list of
             (iteration, (h, w, 3) uint8 array) in the order of the iterations
    """
    from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator

    folder = Path(run_folder) / f"tensorboard_{kind}"
    if not folder.is_dir():
        raise FileNotFoundError(f"No TensorBoard folder {folder}: give the output folder of a train_{kind}.py run.")
    events = EventAccumulator(str(folder), size_guidance={IMAGES: 0})  # 0: keep every image, not a sample
    events.Reload()
    tags = events.Tags()[IMAGES]

    def decode(event):
        return np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB"))

    crops = {name: decode(events.Images(f"val_crop/{name}")[-1]) for name in ("hr", "bicubic")
             if f"val_crop/{name}" in tags}
    crops["sr"] = [(event.step, decode(event)) for event in events.Images("val_crop/sr")] \
        if "val_crop/sr" in tags else []
    return crops


def spread(items, count):
    """`count` items spread evenly over a list, the first and the last included (all of them if there are fewer)."""
    if len(items) <= count:
        return list(items)
    return [items[int(i * (len(items) - 1) / (count - 1) + 0.5)] for i in range(count)]  # rounded half up


# ------------------------------------------------------------------------------------------------------
# Drawing
# ------------------------------------------------------------------------------------------------------
def save_figure(figure, path, dpi=120):
    """Write a figure as a PNG atomically (utils.atomic_write) and close it. The PNG carries no "Software" entry
    (matplotlib's version) and no date: drawing the same figure again gives the same bytes."""
    utils.atomic_write(path, lambda file: figure.savefig(file, format="png", dpi=dpi, bbox_inches="tight",
                                                         metadata={"Software": None}))
    plt.close(figure)


def plot_curve(scores, bicubic, path, title):
    """Validation PSNR against the iteration, per test set, with bicubic's PSNR on the same set (dashed)."""
    figure, axes = plt.subplots(figsize=(7, 4))
    draw_validation(axes, scores, bicubic)
    axes.set_title(title)
    save_figure(figure, path)


def draw_validation(axes, scores, bicubic):
    """plot_curve's lines and labels on the given matplotlib axes (docs/figures.py draws them beside the losses)."""
    for index, (test_set, values) in enumerate(scores.items()):
        colour = f"C{index}"
        iterations, psnrs, _ = zip(*values)
        axes.plot(iterations, psnrs, marker="o", markersize=3, color=colour, label=f"{test_set}: the network")
        if test_set in bicubic:
            axes.axhline(bicubic[test_set]["psnr"], color=colour, linestyle="--",
                         label=f"{test_set}: bicubic ({bicubic[test_set]['psnr']:.2f} dB)")
    axes.set_xlabel("iteration")
    axes.set_ylabel("validation PSNR (dB, Y channel)")
    axes.grid(alpha=0.3)
    axes.legend()


def plot_strip(crops, scores, path, count, title):
    """The crop: bicubic, the SR image at `count` validations spread over the run, HR; each with its label."""
    first_set = next(iter(scores))
    psnr_at = {iteration: psnr for iteration, psnr, _ in scores[first_set]}
    panels = [("bicubic", crops["bicubic"])] if "bicubic" in crops else []
    for iteration, image in spread(crops["sr"], count):
        score = f"\n{first_set} {psnr_at[iteration]:.2f} dB" if iteration in psnr_at else ""
        panels.append((f"iteration {iteration}{score}", image))
    if "hr" in crops:
        panels.append(("HR", crops["hr"]))
    figure, axes = plt.subplots(1, len(panels), figsize=(2.2 * len(panels), 2.7), squeeze=False)
    for ax, (label, image) in zip(axes[0], panels):
        ax.imshow(image, interpolation="nearest")  # pixels as they are: no smoothing that would hide blur
        ax.set_title(label, fontsize=9)
        ax.axis("off")
    figure.suptitle(title, fontsize=10)
    save_figure(figure, path)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_folder", help="the --output_folder of a training run")
    parser.add_argument("--kind", default="srresnet", choices=("srresnet", "srgan"),
                        help="which script's logs: train_srresnet.py's or train_srgan.py's (default: srresnet)")
    parser.add_argument("--output_folder", default=None,
                        help="where to write validation_curve.png and validation_strip.png (default: the run folder)")
    parser.add_argument("--strip_count", type=int, default=5,
                        help="how many SR crops the strip shows, spread over the run (default: 5)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.strip_count < 2:
        raise ValueError("--strip_count must be at least 2 (the first and the last validation).")
    output_folder = Path(args.output_folder or args.run_folder)
    utils.check_output_folder(output_folder)  # a file there: one line before the logs are read
    scores, bicubic = read_validation(args.run_folder, args.kind)
    crops = read_crops(args.run_folder, args.kind)
    for test_set in scores:
        if test_set not in bicubic:
            print(f"note: no bicubic score of {test_set} in the log (the run started without it): no bicubic line "
                  f"for it", file=sys.stderr)
    title = f"train_{args.kind}.py, {args.run_folder}"
    paths = [output_folder / "validation_curve.png", output_folder / "validation_strip.png"]
    plot_curve(scores, bicubic, paths[0], title)
    if not crops["sr"]:
        raise ValueError(f"No validation images in {Path(args.run_folder) / f'tensorboard_{args.kind}'}.")
    plot_strip(crops, scores, paths[1], args.strip_count, title)
    for path in paths:
        print(f"Wrote {path}")
    return paths


if __name__ == "__main__":
    cli.run_cli(main)
