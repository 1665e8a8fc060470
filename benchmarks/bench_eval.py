"""How long the standard evaluation takes: bicubic on Set5, Set14 and BSD100 at x4, end to end and stage by stage.

    python benchmarks/bench_eval.py                         # images from ../shared/data, scale 4
    python benchmarks/bench_eval.py --scaling_factor 2 --repeats 3

What is measured, and how:
  * End to end: eval.main() with `--model bicubic`, as a user runs it (reading the PNGs, making the LR images with
    the MATLAB-style imresize, upscaling them back, the whole standard protocol), per set and in total. The data
    lists are written to a temporary folder; the images stay in ../shared/data.
  * Stage by stage, per image on average over all three sets: reading the PNG, imresize down (LR) and up (SR),
    luma (rgb2y), PSNR and SSIM. All are whole-array numpy code (no per-pixel Python loops).
  * For scale: the same SSIM from scikit-image (structural_similarity with gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False), timed in the same run, and printed as a ratio.
Each figure is the best of --repeats runs (the least disturbed by other processes on the machine).
"""
import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from skimage.metrics import structural_similarity  # noqa: E402

import cli  # noqa: E402
import metrics  # noqa: E402

eval_script = __import__("eval")  # eval.py at the repository root

TEST_SETS = ("Set5", "Set14", "BSD100")


def best_time(function, repeats):
    """The shortest wall time of `repeats` calls, in seconds, and the last call's result."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return min(times), result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared_data", default=str(REPO_ROOT.parent / "shared" / "data"),
                        help="folder holding Set5/HR, Set14/HR, BSD100/HR (default: ../shared/data)")
    cli.add_scaling_factor_argument(parser, default=4, choices=(2, 3, 4), help="upscaling factor (default 4)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per figure; the best is kept (default 1)")
    args = parser.parse_args()

    shared_data = Path(args.shared_data)
    hr_paths = {name: sorted((shared_data / name / "HR").glob("*.png")) for name in TEST_SETS}
    if not all(hr_paths.values()):
        sys.exit(f"error: benchmark images not found in {shared_data} (need Set5/HR, Set14/HR, BSD100/HR)")

    # --- End to end: eval.py as a user runs it, one set at a time ---
    print(f"Bicubic, x{args.scaling_factor}, standard protocol, LR generated with metrics.imresize (best of {args.repeats})")
    with tempfile.TemporaryDirectory() as lists_folder:
        for name, paths in hr_paths.items():
            with open(Path(lists_folder) / f"{name}_test_images.json", "w") as f:
                json.dump([str(p) for p in paths], f)
        total = 0.0
        for name in TEST_SETS:
            argv = ["--data_folder", lists_folder, "--test_sets", name, "--scaling_factor", str(args.scaling_factor)]
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                seconds, results = best_time(lambda: eval_script.main(argv), args.repeats)   # eval's table muted
            total += seconds
            print(f"  {name:7s} {len(hr_paths[name]):4d} images  {seconds:7.2f} s  "
                  f"({1000 * seconds / len(hr_paths[name]):6.1f} ms/image)   "
                  f"PSNR {results[0]['psnr']:.2f}  SSIM {results[0]['ssim']:.4f}")
        print(f"  all three sets: {total:.2f} s")

    # --- Stage by stage, averaged over every image of the three sets ---
    s = args.scaling_factor
    stage_times = {"read PNG": 0.0, "imresize down (LR)": 0.0, "imresize up (SR)": 0.0, "rgb2y (HR and SR)": 0.0,
                   "PSNR": 0.0, "SSIM (ours)": 0.0, "SSIM (scikit-image)": 0.0}
    n_images = 0
    max_ssim_gap = 0.0
    for paths in hr_paths.values():
        for path in paths:
            t, hr = best_time(lambda: np.asarray(Image.open(path)), args.repeats)
            stage_times["read PNG"] += t
            hr = metrics.modcrop_array(hr, s)
            t, lr = best_time(lambda: metrics.imresize(hr, scale=1 / s), args.repeats)
            stage_times["imresize down (LR)"] += t
            t, sr = best_time(lambda: metrics.imresize(lr, scale=s), args.repeats)
            stage_times["imresize up (SR)"] += t
            if hr.ndim == 3:
                t, (hr_y, sr_y) = best_time(lambda: (metrics.rgb2y(hr), metrics.rgb2y(sr)), args.repeats)
                stage_times["rgb2y (HR and SR)"] += t
            else:
                hr_y, sr_y = hr.astype(np.float64), sr.astype(np.float64)
            t, _ = best_time(lambda: metrics.calculate_psnr(sr_y, hr_y, crop_border=s), args.repeats)
            stage_times["PSNR"] += t
            t, ours = best_time(lambda: metrics.calculate_ssim(sr_y, hr_y, crop_border=s), args.repeats)
            stage_times["SSIM (ours)"] += t
            hr_c, sr_c = hr_y[s:-s, s:-s], sr_y[s:-s, s:-s]
            t, reference = best_time(lambda: structural_similarity(
                hr_c, sr_c, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255),
                args.repeats)
            stage_times["SSIM (scikit-image)"] += t
            max_ssim_gap = max(max_ssim_gap, abs(ours - reference))
            n_images += 1

    print(f"\nPer image, averaged over the {n_images} images:")
    for stage, seconds in stage_times.items():
        print(f"  {stage:22s} {1000 * seconds / n_images:7.2f} ms")
    ratio = stage_times["SSIM (scikit-image)"] / stage_times["SSIM (ours)"]
    print(f"  our SSIM is {ratio:.2f}x the speed of scikit-image's (same values: max |difference| {max_ssim_gap:.1e})")


if __name__ == "__main__":
    main()
