"""
Evaluate super-resolution models on the standard benchmarks, the way papers measure them.

Papers report x2 / x3 / x4 PSNR and SSIM on Set5, Set14 and BSD100 under one protocol (see the metrics section of
utils.py): LR images made with MATLAB's bicubic `imresize`, SR quantised to 8 bits, luma Y of BT.601, `scale`
pixels shaved from each border, SSIM with an 11x11 Gaussian window. This script follows it, so its numbers can be
put next to a paper's, and prints them beside the published figures:

    python eval.py --model bicubic checkpoint_srresnet.pth --data_folder data_lists --scale 4 --json results.json

| Model (x4)         | Set5 PSNR / SSIM | Set14 PSNR / SSIM | BSD100 PSNR / SSIM |
|--------------------|------------------|-------------------|--------------------|
| bicubic            | 28.42 / 0.8101   | 25.99 / 0.7023    | 25.96 / 0.6672     |
| published: Bicubic | 28.42 / 0.8104   | 26.00 / 0.7027    | 25.96 / 0.6675     |
| diff               | -0.004 / -0.0003 | -0.010 / -0.0004  | -0.004 / -0.0003   |

Inputs:
  --model       one or more of `bicubic` (MATLAB-style bicubic upscaling of the LR image, the usual baseline) or
                checkpoint paths (ours, or official ESRGAN / Real-ESRGAN / BasicSR weights), loaded with
                utils.load_generator. A model's scaling_factor must equal --scale.
  --test_sets   names of test sets; each is read from `<data_folder>/<name>_test_images.json`, the JSON list of HR
                image paths written by create_data_lists.py. Sets without a list are skipped with a note.
  --lr_source   `generated` (default): the LR image is made here from the HR image with utils.imresize, which
                reproduces MATLAB's imresize. `provided`: use the MATLAB-made LR images that benchmark folders
                ship beside HR, `<Set>/LR_bicubic/X<s>/<name>x<s>.png`.
  --protocol    `standard` (default, comparable with papers) or `classic`: the classic PyTorch tutorial's own
                protocol (centre crop, Pillow's bicubic LR, float Y, 4-pixel border, 7x7 uniform SSIM), FOR
                COMPARISON ONLY -- its numbers cannot be put next to a paper's.

Outputs: a markdown table on stdout (rows: models, then the published figures and the difference where known;
columns: test sets) and, with --json, `{"results": [{"model", "test_set", "scale", "psnr", "ssim", "n_images"},
...]}` (PSNR and SSIM are averages over the images of the set, as in papers).

Errors a user can cause (missing list or folder, unreadable image, wrong checkpoint, model of another scale) end the
script with one line on stderr and a non-zero exit. Nothing computed is lost: the sets finished before the error
are still printed and written to --json.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import utils

# ------------------------------------------------------------------------------------------------------
# Published reference numbers: {reference name: {"source": citation, (test set, scale): (PSNR, SSIM)}}.
# All were measured with the standard protocol above (Y channel, `scale` pixels shaved).
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

# Which published row a checkpoint of ours is compared with: (kind = training script, generator_arch) -> reference.
# A GAN-trained RRDBNet (ESRGAN) has no PSNR-oriented reference: its aim is texture, not PSNR.
REFERENCE_OF_CHECKPOINT = {
    ("srresnet", "srresnet"): "SRResNet",
    ("srgan", "srresnet"): "SRGAN",
    ("srresnet", "rrdb"): "RRDB-PSNR",
}
# Official weight files, recognised by name.
REFERENCE_OF_OFFICIAL_FILE = {"rrdb_psnr_x4": "RRDB-PSNR"}

SCALES = (2, 3, 4)


# ------------------------------------------------------------------------------------------------------
# Test sets: HR images from the data lists, and their LR images
# ------------------------------------------------------------------------------------------------------
def read_test_list(data_folder, test_set):
    """The HR image paths of one test set, from `<data_folder>/<test_set>_test_images.json`, or None if there is
    no such list. Relative paths are taken as they are, or relative to the list's folder."""
    list_path = Path(data_folder) / f"{test_set}_test_images.json"
    if not list_path.is_file():
        return None
    try:
        with open(list_path) as f:
            paths = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{list_path} is not a valid JSON list ({error}); rebuild it with create_data_lists.py.")
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        raise ValueError(f"{list_path} should hold a JSON list of image paths; rebuild it with create_data_lists.py.")
    return [Path(p) if Path(p).exists() or Path(p).is_absolute() else list_path.parent / p for p in paths]


def provided_lr_path(hr_path, scale):
    """Where a benchmark folder keeps the MATLAB-made LR image of an HR image: `<Set>/LR_bicubic/X<s>/<name>x<s>.png`
    beside `<Set>/HR/<name>.png`."""
    return hr_path.parent.parent / "LR_bicubic" / f"X{scale}" / f"{hr_path.stem}x{scale}.png"


def load_test_pairs(hr_paths, scale, lr_source, protocol):
    """Load the HR images of a test set and make (or read) their LR images.

    :return: list of (name, hr, lr): hr a uint8 array (H, W) or (H, W, 3) as stored (greyscale stays single-channel,
             so it is measured on its own values); lr a uint8 array of the size the protocol gives.
    """
    pairs = []
    for hr_path in hr_paths:
        hr_img = utils.load_image(hr_path, mode=None)              # PIL, its own mode ('RGB', 'L', ...)
        if hr_img.mode not in ("RGB", "L"):
            hr_img = hr_img.convert("RGB")                         # e.g. RGBA or palette images
        hr = np.asarray(hr_img)                                    # (H, W, 3) or (H, W), uint8
        if min(hr.shape[:2]) < 2 * scale + 11:
            raise ValueError(f"{hr_path} is only {hr.shape[1]}x{hr.shape[0]} pixels, too small to measure at "
                             f"x{scale} (SSIM needs 11x11 pixels after the border crop). Remove it from the list.")

        if protocol == "classic":
            # The tutorial: centre crop to a multiple of the scale, RGB, Pillow's bicubic downscale.
            hr_crop = utils.center_modcrop_array(hr, scale)
            lr_img = utils.make_lr_image(Image.fromarray(hr_crop).convert("RGB"), scale, lr_maker="pil")
            lr = np.asarray(lr_img)                                # (h, w, 3), uint8
        elif lr_source == "generated":
            # MATLAB's recipe: crop HR top-left to a multiple of the scale, then imresize by 1/scale.
            lr = utils.imresize(utils.modcrop_array(hr, scale), scale=1 / scale)   # (H/s, W/s[, 3]), uint8
        else:
            lr_path = provided_lr_path(hr_path, scale)
            if not lr_path.is_file():
                raise FileNotFoundError(f"No provided LR image for {hr_path}: expected {lr_path}. "
                                        f"Use --lr_source generated to make LR images from HR instead.")
            lr = np.asarray(utils.load_image(lr_path, mode=hr_img.mode))
        pairs.append((hr_path.stem, hr, lr))
    return pairs


# ------------------------------------------------------------------------------------------------------
# Models: bicubic, or a generator from a checkpoint
# ------------------------------------------------------------------------------------------------------
def load_model(model_arg, scale, device):
    """Load one --model: returns (eval-mode generator, or None for 'bicubic'; a one-line description; the name of
    its published reference in PUBLISHED, or None when there is none).

    :raises ValueError: the checkpoint's model upscales by another factor than --scale
    """
    if model_arg == "bicubic":
        return None, "MATLAB-style bicubic upscaling of the LR image", "Bicubic"
    model, description = utils.load_generator(model_arg, device)
    if model.scaling_factor != scale:
        raise ValueError(f"{model_arg} holds a x{model.scaling_factor} model ({description}), but --scale is {scale}. "
                         f"Evaluate it with --scale {model.scaling_factor}.")
    # Which published figures to compare with: from what our checkpoint says it is, or an official file's name.
    checkpoint = utils.load_checkpoint(model_arg)
    if isinstance(checkpoint, dict) and "generator_arch" in checkpoint:
        reference = REFERENCE_OF_CHECKPOINT.get((checkpoint.get("kind"), checkpoint["generator_arch"]))
    else:
        reference = REFERENCE_OF_OFFICIAL_FILE.get(Path(model_arg).stem.lower())
    return model, description, reference


def super_resolve(model, lr, scale, protocol, device):
    """Upscale one LR image.

    :param model: None for bicubic, else a generator
    :param lr: uint8 array (h, w) or (h, w, 3)
    :return: SR image (h * scale, w * scale[, 3]): uint8 under the standard protocol (quantised, as papers save
             PNGs); float in [0, 1], not quantised, under the classic one (as the tutorial measured it)
    """
    if model is None:
        # Bicubic baseline: MATLAB's imresize. On 8-bit input it gives 8 bits (rounded after each 1-D pass), exactly
        # what MATLAB gives; the classic protocol measures float outputs, so it upscales in float.
        if protocol == "standard":
            return utils.imresize(lr, scale=scale)                         # (H, W[, 3]), uint8
        sr = np.clip(utils.imresize(lr.astype(np.float64) / 255, scale=scale), 0, 1)   # (H, W[, 3]), [0, 1]
    else:
        # A generator takes RGB: a greyscale LR image is repeated into 3 channels.
        lr_rgb = np.repeat(lr[..., None], 3, axis=2) if lr.ndim == 2 else lr
        lr_tensor = torch.from_numpy(lr_rgb).permute(2, 0, 1).float().div(255).unsqueeze(0).to(device)
        # lr_tensor: (1, 3, h, w), in [0, 1]
        with torch.inference_mode():
            sr_tensor = model(utils.convert_image(lr_tensor, "[0, 1]", model.input_format))
            sr_tensor = utils.convert_image(sr_tensor, model.output_format, "[0, 1]").clamp(0, 1)   # (1, 3, H, W)
        sr = sr_tensor[0].permute(1, 2, 0).double().cpu().numpy()         # (H, W, 3), in [0, 1]
    if protocol == "classic":
        return sr
    return utils.quantize_to_uint8(sr)                                    # 8 bits, rounded


def evaluate_set(model, pairs, scale, protocol, device):
    """Average PSNR and SSIM of one model over one test set's (name, hr, lr) pairs."""
    psnrs, ssims = [], []
    for name, hr, lr in pairs:
        sr = super_resolve(model, lr, scale, protocol, device)
        if protocol == "standard":
            # Provided LR images can be made from a slightly larger crop than HR (BSD100 x3: 480x321 vs 480x320);
            # keep the top-left part that matches the HR image cropped to a multiple of the scale.
            h, w = hr.shape[0] - hr.shape[0] % scale, hr.shape[1] - hr.shape[1] % scale
            if sr.shape[0] < h or sr.shape[1] < w or sr.shape[0] - h >= 2 * scale or sr.shape[1] - w >= 2 * scale:
                raise ValueError(f"The LR image of {name} gives a {sr.shape[1]}x{sr.shape[0]} output at x{scale}, "
                                 f"which does not match its {w}x{h} HR image cropped to a multiple of {scale}.")
            sr = sr[:h, :w]
        psnr, ssim = utils.evaluate_pair(sr, hr, scale, protocol=protocol)
        psnrs.append(psnr)
        ssims.append(ssim)
    return float(np.mean(psnrs)), float(np.mean(ssims))


# ------------------------------------------------------------------------------------------------------
# Report: markdown table and JSON
# ------------------------------------------------------------------------------------------------------
def markdown_table(results, models, test_sets, scale, references, protocol):
    """A markdown table: one row per model (then its published figures and the difference, where known), one
    column per test set, each cell 'PSNR / SSIM'."""
    by_key = {(r["model"], r["test_set"]): r for r in results}
    header = [f"Model (x{scale})"] + [f"{s} PSNR / SSIM" for s in test_sets]
    rows = []
    for model_arg in models:
        measured = [by_key.get((model_arg, s)) for s in test_sets]
        rows.append([model_arg] + [f"{r['psnr']:.2f} / {r['ssim']:.4f}" if r else "-" for r in measured])
        reference = references.get(model_arg)
        published = [PUBLISHED.get(reference, {}).get((s, scale)) for s in test_sets]
        if protocol == "standard" and any(published):
            rows.append([f"published: {reference}"]
                        + [f"{p[0]:.2f} / {p[1]:.4f}" if p else "-" for p in published])
            rows.append(["diff"] + [f"{r['psnr'] - p[0]:+.3f} / {r['ssim'] - p[1]:+.4f}" if r and p else "-"
                                    for r, p in zip(measured, published)])
    widths = [max(len(row[i]) for row in [header] + rows) for i in range(len(header))]
    lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |" for row in [header] + rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def write_json(path, results):
    """Write {"results": [...]} atomically (temporary file, then rename), so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary_path = path.with_name(path.name + ".tmp")
    with open(temporary_path, "w") as f:
        json.dump({"results": results}, f, indent=2)
    os.replace(temporary_path, path)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", nargs="+", default=["bicubic"], metavar="MODEL",
                        help="'bicubic' and/or checkpoint paths (default: bicubic)")
    parser.add_argument("--test_sets", nargs="+", default=["Set5", "Set14", "BSD100"], metavar="NAME",
                        help="test sets, read from <data_folder>/<NAME>_test_images.json (default: Set5 Set14 BSD100)")
    parser.add_argument("--data_folder", default=".",
                        help="folder where create_data_lists.py wrote the lists (default: .)")
    parser.add_argument("--scale", type=int, default=4, choices=SCALES, help="upscaling factor (default: 4)")
    parser.add_argument("--lr_source", default="generated", choices=("generated", "provided"),
                        help="make LR images with MATLAB-style imresize, or read <Set>/LR_bicubic/X<s>/ "
                             "(default: generated)")
    parser.add_argument("--protocol", default="standard", choices=("standard", "classic"),
                        help="'standard' (comparable with papers) or 'classic' (the old tutorial's, for comparison "
                             "only)")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the results to this JSON file")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    args.model = list(dict.fromkeys(args.model))  # a model named twice is evaluated once
    if args.protocol == "classic" and args.lr_source == "provided":
        raise ValueError("--protocol classic makes its own LR images with Pillow; use it with --lr_source generated.")
    if not Path(args.data_folder).is_dir():
        raise FileNotFoundError(f"Data folder not found: {args.data_folder}. Give --data_folder the folder where "
                                f"create_data_lists.py wrote the *_test_images.json lists.")
    device = utils.get_device()

    # Load every model first: a wrong checkpoint fails now, before minutes of evaluation.
    models, references = {}, {}
    for model_arg in args.model:
        model, description, reference = load_model(model_arg, args.scale, device)
        models[model_arg], references[model_arg] = model, reference
        print(f"{model_arg}: {description}", file=sys.stderr)

    # Find the test lists; a set without one is skipped with a note.
    test_lists = {}
    for test_set in args.test_sets:
        hr_paths = read_test_list(args.data_folder, test_set)
        if hr_paths is None:
            print(f"note: skipping {test_set}: no {Path(args.data_folder) / (test_set + '_test_images.json')} "
                  f"(create it with create_data_lists.py --test_folders ...)", file=sys.stderr)
        elif not hr_paths:
            print(f"note: skipping {test_set}: its list is empty", file=sys.stderr)
        else:
            test_lists[test_set] = hr_paths
    if not test_lists:
        raise FileNotFoundError(f"No test list found in {args.data_folder} for {', '.join(args.test_sets)}. "
                                f"Run create_data_lists.py --test_folders ... first, or fix --data_folder.")

    # Evaluate: each set's LR images are made once and shared by all models.
    results = []
    try:
        for test_set, hr_paths in test_lists.items():
            start = time.time()
            pairs = load_test_pairs(hr_paths, args.scale, args.lr_source, args.protocol)
            for model_arg, model in models.items():
                psnr, ssim = evaluate_set(model, pairs, args.scale, args.protocol, device)
                results.append({"model": model_arg, "test_set": test_set, "scale": args.scale,
                                "psnr": psnr, "ssim": ssim, "n_images": len(pairs)})
            print(f"{test_set}: {len(pairs)} images, {time.time() - start:.1f} s", file=sys.stderr)
    finally:
        # Whatever happens, report (and save) what was computed.
        if results:
            if args.protocol == "classic":
                print("Protocol: classic tutorial's, FOR COMPARISON ONLY (not comparable with published numbers).")
            print(markdown_table(results, args.model, list(test_lists), args.scale, references, args.protocol))
            if args.json:
                write_json(args.json, results)
    return results


if __name__ == "__main__":
    utils.run_cli(main)
