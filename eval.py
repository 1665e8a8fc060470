"""
Evaluate super-resolution models on the standard benchmarks, the way papers measure them.

Papers report x2 / x3 / x4 PSNR and SSIM on Set5, Set14 and BSD100 under one protocol (metrics.py implements it):
LR images made with MATLAB's bicubic `imresize`, SR quantised to 8 bits, luma Y of BT.601, `scaling_factor` pixels
shaved from each border, SSIM with an 11x11 Gaussian window. This script follows it, so its numbers can be put next
to a paper's, and prints them beside the published figures:

    python eval.py --model bicubic checkpoint_srresnet.pth --data_folder data_lists --scaling_factor 4 \\
        --json results.json

| Model (x4)         | Set5 PSNR / SSIM | Set14 PSNR / SSIM | BSD100 PSNR / SSIM |
|--------------------|------------------|-------------------|--------------------|
| bicubic            | 28.42 / 0.8101   | 25.99 / 0.7023    | 25.96 / 0.6672     |
| published: Bicubic | 28.42 / 0.8104   | 26.00 / 0.7027    | 25.96 / 0.6675     |
| diff               | -0.004 / -0.0003 | -0.010 / -0.0004  | -0.004 / -0.0003   |

Inputs:
  --model       one or more of `bicubic` (MATLAB-style bicubic upscaling of the LR image, the usual baseline), the
                shipped models `compact`, `realistic`, `srresnet`, `srgan` and `realistic_gan` (weights/,
                inference.SHIPPED_MODELS; their model card lists these very numbers) or checkpoint paths (ours,
                export.py's .pth / .safetensors files, official ESRGAN / Real-ESRGAN / BasicSR weights, or ncnn
                models: x.param with x.bin beside it, the official Real-ESRGAN ncnn files among them), loaded
                with inference.load_generator, and run in tiles (inference.upscale). A model's scaling_factor must
                equal --scaling_factor (--scale, its old name, still works).
  --interpolate_with, --alpha
                network interpolation: the one checkpoint of --model blended with another one, weight by weight,
                (1 - alpha) x model + alpha x other (inference.load_generator_or_blend, as in super_resolve.py).
  --test_sets   names of test sets; each is read from `<data_folder>/<name>_test_images.json`, the JSON list of HR
                image paths written by create_data_lists.py. Sets without a list are skipped with a note.
  --lr_source   `generated` (default): the LR image is made here from the HR image with metrics.imresize, which
                reproduces MATLAB's imresize. `provided`: use the MATLAB-made LR images that benchmark folders
                ship beside HR, `<Set>/LR_bicubic/X<s>/<name>x<s>.png`.
  --protocol    `standard` (default, comparable with papers) or `classic`: the classic PyTorch tutorial's own
                protocol (centre crop, Pillow's bicubic LR, float Y, 4-pixel border, 7x7 uniform SSIM), FOR
                COMPARISON ONLY -- its numbers cannot be put next to a paper's.
  --lr_degradation
                how the LR test images are made (metrics.LR_DEGRADATIONS; the HR image stays the reference):
                `bicubic` (default, the standard LR images), `jpeg` (bicubic, then JPEG at quality 75), `noise_jpeg`
                (bicubic, Gaussian noise of sigma 5 levels, then JPEG at quality 75) or `realesrgan` (Real-ESRGAN's
                second-order chain, degradations.py, at milder ranges than its training). Random draws use a fixed
                seed per image, so every run, and every model, gets the very same LR images: a robustness test.
  --metrics     any of `psnr`, `ssim`, `psnr_rgb`, `niqe` and `spectral` (default: psnr ssim). PSNR and SSIM are
                measured on Y, as papers do; `psnr_rgb` (metrics.calculate_rgb_psnr) is PSNR on the three 8-bit RGB
                channels, with the same border: it shows a colour shift, which Y hides. NIQE (metrics.calculate_niqe)
                scores the SR image alone, on the same Y with the same border shaved: LOWER IS BETTER. It rewards
                sharpness, artefacts included, so read it beside PSNR, never alone. `spectral`
                (metrics.calculate_spectral) compares the power spectra of SR and HR on that Y, in dB: `hf_gain` (high
                frequencies, < 0: blurrier than HR), `lattice` and `lattice_hr` (a grid or checkerboard of the
                scale's period: visible when lattice > 0.5 and lattice_hr > -10).

Outputs: a markdown table on stdout (rows: models, then the published figures and the difference where known --
for clean bicubic LR only; columns: test sets) and, with --json, `{"results": [{"model", "test_set", "scale",
"lr_degradation", "psnr", "ssim", "n_images", "images"}, ...]}`, with "psnr_rgb", "niqe", "hf_gain", "lattice" and
"lattice_hr" too when measured (each measure is an average over the images of the set, as in papers; "images" has
each image's own numbers; "scale" is the scaling factor; only the measures asked for are there).

The work itself (reading the test sets, making their LR images, running a model on them, measuring) is metrics.py's:
read_test_list, load_test_pairs and measure_set, which a training script can call to validate with exactly this
protocol.

Errors a user can cause (missing list or folder, unreadable image, wrong checkpoint, model of another scale) end the
script with one line on stderr and a non-zero exit. Nothing computed is lost: the sets finished before the error
are still printed and written to --json.
"""
import argparse
import json
import math
import sys
import time
from pathlib import Path

import cli
import inference
import metrics
import utils

# ------------------------------------------------------------------------------------------------------
# Published reference numbers: {reference name: {"source": citation, (test set, scale): (PSNR, SSIM)}}.
# All were measured with the standard protocol above (Y channel, `scaling_factor` pixels shaved). Which row a model
# is compared with comes from inference.load_generator (inference.PUBLISHED_REFERENCE_OF_CHECKPOINT).
# ------------------------------------------------------------------------------------------------------
PUBLISHED = {
    # The bicubic baseline as tabulated by EDSR (Lim et al., CVPRW 2017, Table 6) and RCAN (Zhang et al., ECCV 2018,
    # Table 3), numbers that go back to the VDSR / LapSRN tables.
    "Bicubic": {
        "source": "EDSR (Lim et al. 2017) / RCAN (Zhang et al. 2018) tables",
        ("Set5", 2): (33.66, 0.9299), ("Set14", 2): (30.24, 0.8688), ("BSD100", 2): (29.56, 0.8431),
        ("Set5", 3): (30.39, 0.8682), ("Set14", 3): (27.55, 0.7742), ("BSD100", 3): (27.21, 0.7385),
        ("Set5", 4): (28.42, 0.8104), ("Set14", 4): (26.00, 0.7027), ("BSD100", 4): (25.96, 0.6675),
    },
    # SRGAN paper (Ledig et al., CVPR 2017), Table 4: SRResNet (MSE) and SRGAN (VGG54), x4.
    "SRResNet": {
        "source": "SRGAN paper (Ledig et al. 2017), Table 4",
        ("Set5", 4): (32.05, 0.9019), ("Set14", 4): (28.49, 0.8184), ("BSD100", 4): (27.58, 0.7620),
    },
    "SRGAN": {
        "source": "SRGAN paper (Ledig et al. 2017), Table 4",
        ("Set5", 4): (29.40, 0.8472), ("Set14", 4): (26.02, 0.7397), ("BSD100", 4): (25.16, 0.6688),
    },
    # ESRGAN paper (Wang et al., ECCVW 2018), Table 1: the PSNR-oriented RRDB network trained on DF2K, x4.
    "RRDB-PSNR": {
        "source": "ESRGAN paper (Wang et al. 2018), Table 1 (RRDB, DF2K)",
        ("Set5", 4): (32.73, 0.9011), ("Set14", 4): (28.99, 0.7917), ("BSD100", 4): (27.85, 0.7455),
    },
}

SCALES = (2, 3, 4)


# ------------------------------------------------------------------------------------------------------
# Report: markdown table and JSON
# ------------------------------------------------------------------------------------------------------
MEASURE_NAMES = {"psnr": "PSNR", "ssim": "SSIM", "psnr_rgb": "RGB PSNR", "niqe": "NIQE", "hf_gain": "HF gain",
                 "lattice": "lattice", "lattice_hr": "lattice/HR"}


def _format(measure, value, signed=False):
    """One number of a cell: PSNR (Y or RGB), NIQE and the spectral measures (dB) with 2 decimals, SSIM with 4; a
    difference (signed) with one more for PSNR.
    An infinite PSNR is marked with '*' (explained below the table); None (not known) is '-'."""
    if value is None:
        return "-"
    if signed:
        return f"{value:+.3f}" if measure in ("psnr", "psnr_rgb") else f"{value:+.4f}"
    text = f"{value:.4f}" if measure == "ssim" else f"{value:.2f}"
    return text + "*" if math.isinf(value) else text


def markdown_table(results, models, test_sets, scaling_factor, references, protocol, measures=("psnr", "ssim"),
                   lr_degradation="bicubic"):
    """A markdown table: one row per model (then its published figures and the difference, where known), one
    column per test set, each cell the measures in order, e.g. 'PSNR / SSIM / NIQE'. Under a degraded LR setting the
    header and every model row name it, and no published rows are shown (papers measure clean bicubic LR only)."""
    by_key = {(r["model"], r["test_set"]): r for r in results}
    setting = "" if lr_degradation == "bicubic" else f", {lr_degradation} LR"
    lower_is_better = "; NIQE: lower is better" if "niqe" in measures else ""
    lower_is_better += "; spectral in dB" if "hf_gain" in measures else ""
    header = ([f"Model (x{scaling_factor}{setting}{lower_is_better})"]
              + [f"{s} " + " / ".join(MEASURE_NAMES[m] for m in measures) for s in test_sets])
    rows = []
    for model_arg in models:
        measured = [by_key.get((model_arg, s)) for s in test_sets]
        label = model_arg if lr_degradation == "bicubic" else f"{model_arg} ({lr_degradation} LR)"
        rows.append([label] + [" / ".join(_format(m, r[m]) for m in measures) if r else "-" for r in measured])
        # Published figures (PSNR and SSIM; '-' for NIQE) are comparable with clean bicubic LR, standard protocol.
        reference = references.get(model_arg)
        published = [PUBLISHED.get(reference, {}).get((s, scaling_factor)) for s in test_sets]
        if (protocol == "standard" and lr_degradation == "bicubic" and any(published)
                and {"psnr", "ssim"} & set(measures)):
            paper = [dict(zip(("psnr", "ssim"), p)) if p else None for p in published]
            rows.append([f"published: {reference}"] + [" / ".join(_format(m, p.get(m)) for m in measures)
                                                      if p else "-" for p in paper])
            rows.append(["diff"] + [" / ".join(_format(m, r[m] - p[m] if m in p else None, signed=True)
                                               for m in measures) if r and p else "-"
                                    for r, p in zip(measured, paper)])
    widths = [max(len(row[i]) for row in [header] + rows) for i in range(len(header))]
    lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |" for row in [header] + rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    if any(math.isinf(r.get("psnr", 0)) for r in results):
        lines.append("* infinite: some output equals its HR image exactly (named in the note on stderr), which makes "
                     "the set's mean PSNR infinite; remove such images from the test list.")
    return "\n".join(lines)


def write_json(path, results):
    """Write {"results": [...]} atomically, so a crash never leaves half a file."""
    text = json.dumps({"results": results}, indent=2)
    utils.atomic_write(path, lambda file: file.write(text.encode("utf-8")))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", nargs="+", default=["bicubic"], metavar="MODEL",
                        help=f"'bicubic', the shipped models ({', '.join(repr(name) for name in inference.SHIPPED_MODELS)}; "
                             "weights/), and/or checkpoint paths (default: bicubic)")
    parser.add_argument("--test_sets", nargs="+", default=["Set5", "Set14", "BSD100"], metavar="NAME",
                        help="test sets, read from <data_folder>/<NAME>_test_images.json (default: Set5 Set14 BSD100)")
    parser.add_argument("--data_folder", default=".",
                        help="folder where create_data_lists.py wrote the lists (default: .)")
    cli.add_scaling_factor_argument(parser, default=4, choices=SCALES, help="upscaling factor (default: 4)")
    parser.add_argument("--lr_source", default="generated", choices=("generated", "provided"),
                        help="make LR images with MATLAB-style imresize, or read <Set>/LR_bicubic/X<s>/ "
                             "(default: generated)")
    parser.add_argument("--protocol", default="standard", choices=("standard", "classic"),
                        help="'standard' (comparable with papers) or 'classic' (the old tutorial's, for comparison "
                             "only)")
    parser.add_argument("--lr_degradation", default="bicubic", choices=tuple(metrics.LR_DEGRADATIONS),
                        help="how the LR test images are made from HR, with a fixed seed per image: "
                             + "; ".join(f"'{name}': {setting['models']}"
                                         for name, setting in metrics.LR_DEGRADATIONS.items())
                             + " (default: bicubic)")
    parser.add_argument("--metrics", nargs="+", default=["psnr", "ssim"], choices=metrics.MEASURES, metavar="NAME",
                        help="what to measure: any of psnr, ssim (both on Y, as papers do), psnr_rgb (PSNR on RGB: "
                             "shows colour shifts), niqe (no-reference, lower is better), spectral (hf_gain, lattice, "
                             "lattice_hr: blur and grids, in dB) (default: psnr ssim)")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the results to this JSON file")
    inference.add_interpolation_arguments(parser)
    args = parser.parse_args(argv)
    inference.check_interpolation_arguments(parser, args, [model for model in args.model if model != "bicubic"])
    return args


def main(argv=None):
    args = parse_args(argv)
    args.model = list(dict.fromkeys(args.model))  # a model named twice is evaluated once
    args.metrics = [m for m in metrics.MEASURES if m in args.metrics]  # each once, in the table's order
    if args.protocol == "classic" and args.lr_source == "provided":
        raise ValueError("--protocol classic makes its own LR images with Pillow; use it with --lr_source generated.")
    if args.lr_degradation != "bicubic" and (args.protocol, args.lr_source) != ("standard", "generated"):
        raise ValueError(f"--lr_degradation {args.lr_degradation} makes its LR images from HR under the standard "
                         f"protocol; use it with --protocol standard --lr_source generated.")
    for measure in ("niqe", "psnr_rgb", "spectral"):
        if measure in args.metrics and args.protocol != "standard":
            raise ValueError(f"--metrics {measure} is measured under the standard protocol only; drop --protocol "
                             f"classic.")
    if not Path(args.data_folder).is_dir():
        raise FileNotFoundError(f"Data folder not found: {args.data_folder}. Give --data_folder the folder where "
                                f"create_data_lists.py wrote the *_test_images.json lists.")
    device = utils.get_device()

    # Load every model first: a wrong checkpoint fails now, before minutes of evaluation.
    # (With --interpolate_with, the one checkpoint is the blend, and its row is named 'A ~ B @ alpha'.)
    models, references = {}, {}
    for model_arg in args.model:
        name = model_arg
        if model_arg == "bicubic":
            model, description, reference = None, "MATLAB-style bicubic upscaling of the LR image", "Bicubic"
        else:
            model, description, reference, name = inference.load_generator_or_blend(
                model_arg, device, args.scaling_factor, args.interpolate_with, args.alpha)
        models[name], references[name] = model, reference
        print(f"{name}: {description}", file=sys.stderr)
    args.model = list(models)  # the rows of the table

    # Find the test lists; a set without one is skipped with a note.
    test_lists = metrics.find_test_lists(args.data_folder, args.test_sets)
    if not test_lists:
        raise FileNotFoundError(f"No test list found in {args.data_folder} for {', '.join(args.test_sets)}. "
                                f"Run create_data_lists.py --test_folders ... first, or fix --data_folder.")

    # Evaluate: each set's LR images are made once and shared by all models (degraded ones too: the same pixels).
    results = []
    try:
        for test_set, hr_paths in test_lists.items():
            start = time.time()
            pairs = metrics.load_test_pairs(hr_paths, args.scaling_factor, args.lr_source, args.protocol,
                                            args.lr_degradation)
            for model_arg, model in models.items():
                per_image = []
                scores = metrics.measure_set(model, pairs, args.scaling_factor, args.metrics, args.protocol,
                                             per_image=per_image)
                results.append({"model": model_arg, "test_set": test_set, "scale": args.scaling_factor,
                                "lr_degradation": args.lr_degradation, **scores, "n_images": len(pairs),
                                "images": per_image})
            print(f"{test_set}: {len(pairs)} images, {time.time() - start:.1f} s", file=sys.stderr)
    finally:
        # Whatever happens, report (and save) what was computed.
        if results:
            if args.protocol == "classic":
                print("Protocol: classic tutorial's, FOR COMPARISON ONLY (not comparable with published numbers).")
            print(markdown_table(results, args.model, list(test_lists), args.scaling_factor, references,
                                 args.protocol, metrics.measure_keys(args.metrics), args.lr_degradation))
            if args.json:
                write_json(args.json, results)
    return results


if __name__ == "__main__":
    cli.run_cli(main)
