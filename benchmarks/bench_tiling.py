"""Tiled vs untiled super-resolution: time and peak memory (RSS) of inference.upscale on the CPU (or a GPU).

    python benchmarks/bench_tiling.py                      # 1024x1024 LR -> 4096x4096, full RRDBNet, x4
    python benchmarks/bench_tiling.py --size 4096          # 4096x4096 LR -> 16384x16384, tiled only (hours on CPU)
    python benchmarks/bench_tiling.py --size 256 --num_block 2   # a quick look
    python benchmarks/bench_tiling.py --size 4096 --num_feat 8 --num_block 1 --write_png   # 16384^2 output, minutes
    python benchmarks/bench_tiling.py --device cuda --size 4096   # on a GPU: also its peak memory

What is measured, and how:
  * Each variant (untiled = `tile 0`, tiled = `--tile/--tile_pad`) runs in its own child process, so that one
    run's memory cannot hide in the other's. The parent reads the child's peak resident set size (ru_maxrss) from
    os.wait4 -- the honest figure for PyTorch, whose tensors live outside Python's allocator (tracemalloc would
    see almost nothing). The child also reports its RSS just before upscaling (model + input + Python + torch),
    so the growth caused by inference itself is visible.
  * Time is the wall time of upscale() alone (model built and input made before the clock starts).
  * With --device cuda the model runs on the GPU (the output is still assembled on the CPU, as super_resolve.py
    does); the child also reports the GPU's peak allocated memory.
  * The weights are random (no pretrained weights here): that is fine for time and memory, which do not depend on
    the weights. The PSNR between tiled and untiled outputs printed at the end is reported too, but random weights
    are only a proxy for how far a trained network "looks" (see the note printed with it).
  * Before the runs, a calibration child times a 96x96 crop and extrapolates the time of each variant, so that you
    know what you are in for (a 4096x4096 input at x4 with the full RRDBNet takes hours on a 2-core CPU).
The input is a real photo (scikit-image's astronaut) resized to --size x --size with Lanczos.
"""
import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1024, help="LR side in pixels (default 1024)")
    parser.add_argument("--scaling_factor", "--scale", type=int, default=4, choices=(1, 2, 4),
                        help="RRDBNet's upscaling factor (default 4; --scale is its old name)")
    parser.add_argument("--num_block", type=int, default=23, help="RRDBs (23 = the full ESRGAN generator)")
    parser.add_argument("--num_feat", type=int, default=64, help="feature channels (64 = the full generator)")
    parser.add_argument("--num_grow_ch", type=int, default=32, help="dense growth channels (32 = the full one)")
    parser.add_argument("--write_png", action="store_true",
                        help="also convert the output to 8 bits and write it as a PNG (the whole CLI path)")
    parser.add_argument("--tile", type=int, default=None, help="tile side (default: inference.DEFAULT_TILE)")
    parser.add_argument("--tile_pad", type=int, default=None, help="tile pad (default: inference.DEFAULT_TILE_PAD)")
    parser.add_argument("--variants", nargs="+", default=None, choices=("untiled", "tiled"),
                        help="what to run (default: both for --size <= 1024, tiled only above)")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--device", default="cpu", help="where the model runs: 'cpu' (default) or 'cuda'")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--estimate_only", action="store_true", help="only print the time estimates")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # internal: run one variant
    parser.add_argument("--output", default=None, help=argparse.SUPPRESS)  # internal: where the child saves SR
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------------------------------
# The child: build the model and the input, run one variant, report as one JSON line.
# ------------------------------------------------------------------------------------------------------
def run_child(args):
    import numpy as np
    import torch
    from PIL import Image
    from skimage import data

    import inference
    import models
    import super_resolve

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = models.RRDBNet(scale=args.scaling_factor, num_block=args.num_block, num_feat=args.num_feat,
                           num_grow_ch=args.num_grow_ch).eval().to(args.device)  # random weights
    photo = Image.fromarray(data.astronaut()).resize((args.size, args.size), Image.Resampling.LANCZOS)
    lr_img = torch.from_numpy(np.asarray(photo, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]  # (1,3,S,S)

    if args.child == "calibrate":
        # A small 96x96 crop: ~1% of a 1024x1024 run, enough to know the cost per pixel (on a GPU, after a warm-up).
        side = min(96, args.size)
        if args.device != "cpu":
            inference.upscale(model, lr_img[:, :, :side, :side].contiguous(), tile=0, precision=args.precision)
        start = time.perf_counter()
        inference.upscale(model, lr_img[:, :, :side, :side].contiguous(), tile=0, precision=args.precision)
        print(json.dumps({"seconds": time.perf_counter() - start, "side": side}))
        return

    rss_before_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    tile = 0 if args.child == "untiled" else args.tile
    start = time.perf_counter()
    sr_img = inference.upscale(model, lr_img, tile=tile, tile_pad=args.tile_pad, precision=args.precision,
                                   progress=sys.stderr.isatty())  # (1, 3, S*s, S*s), [0, 1]; bar on a terminal
    seconds = time.perf_counter() - start
    report = {"seconds": seconds, "rss_before_mb": rss_before_mb, "shape": list(sr_img.shape)}
    if args.device != "cpu":
        report["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
    if args.write_png:
        # The rest of what the command line does: round to 8 bits (band by band) and write the PNG atomically.
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as folder:
            super_resolve.write_image(super_resolve.to_pil(sr_img[0]), Path(folder) / "sr.png")
            report["png_mb"] = (Path(folder) / "sr.png").stat().st_size / 2 ** 20
        report["png_seconds"] = time.perf_counter() - start
    if args.output:
        # 16-bit levels keep the comparison far finer than the 45 dB we check (8 bits would add rounding noise).
        np.save(args.output, (sr_img[0] * 65535).round().to(torch.int32).numpy().astype(np.uint16))
    print(json.dumps(report))


def spawn(args, variant, output=None):
    """Run one variant in a child process; return (its JSON report, its peak RSS in MB)."""
    command = [sys.executable, __file__, "--child", variant, "--size", str(args.size), "--scaling_factor", str(args.scaling_factor),
               "--num_block", str(args.num_block), "--num_feat", str(args.num_feat),
               "--num_grow_ch", str(args.num_grow_ch), "--tile", str(args.tile), "--tile_pad", str(args.tile_pad),
               "--precision", args.precision, "--device", args.device]
    if args.threads:
        command += ["--threads", str(args.threads)]
    if args.write_png and variant != "calibrate":
        command += ["--write_png"]
    if output:
        command += ["--output", output]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, cwd=REPO_ROOT)
    stdout = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)  # the child's own rusage: ru_maxrss is its peak RSS, in KiB
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise RuntimeError(f"the {variant} run failed (exit {child.returncode}); see its output above")
    report = json.loads(stdout.decode().strip().splitlines()[-1])
    return report, usage.ru_maxrss / 1024


def main():
    args = parse_args()
    import inference  # only for the default tile settings (the parent itself never runs the model)

    args.tile = inference.DEFAULT_TILE if args.tile is None else args.tile
    args.tile_pad = inference.DEFAULT_TILE_PAD if args.tile_pad is None else args.tile_pad
    if args.child:
        run_child(args)
        return
    variants = args.variants or (["untiled", "tiled"] if args.size <= 1024 else ["tiled"])
    print(f"RRDBNet(num_block={args.num_block}, num_feat={args.num_feat}, num_grow_ch={args.num_grow_ch}) "
          f"x{args.scaling_factor}, random weights, {args.precision}, {args.device}; "
          f"LR {args.size}x{args.size} -> SR {args.size * args.scaling_factor}x{args.size * args.scaling_factor}; "
          f"tile {args.tile}, tile_pad {args.tile_pad}", flush=True)

    # Estimate first: the cost per pixel of a small crop, times the (padded) area of the whole run.
    calibration, _ = spawn(args, "calibrate")
    seconds_per_pixel = calibration["seconds"] / calibration["side"] ** 2
    n_tiles_side = math.ceil(args.size / args.tile)
    padded_side = args.size + 2 * args.tile_pad * (n_tiles_side - 1)  # every inner tile edge adds context twice
    estimates = {"untiled": seconds_per_pixel * args.size ** 2, "tiled": seconds_per_pixel * padded_side ** 2}
    for variant in variants:
        print(f"estimated {variant}: {estimates[variant] / 60:.1f} min "
              f"(from a {calibration['side']}x{calibration['side']} crop in {calibration['seconds']:.1f} s)",
              flush=True)
    if args.estimate_only:
        return

    results = {}
    with tempfile.TemporaryDirectory() as folder:
        compare = set(variants) == {"untiled", "tiled"}
        for variant in variants:
            output = os.path.join(folder, f"{variant}.npy") if compare else None
            report, peak_mb = spawn(args, variant, output)
            results[variant] = (report, peak_mb)
            png = (f", then 8-bit PNG ({report['png_mb']:.0f} MB) written in {report['png_seconds']:.1f} s"
                   if "png_seconds" in report else "")
            gpu = f"   GPU peak {report['gpu_peak_mb']:6.0f} MB" if "gpu_peak_mb" in report else ""
            print(f"{variant:>8}: upscale {report['seconds']:8.1f} s   peak RSS {peak_mb:8.0f} MB   "
                  f"(RSS before upscaling {report['rss_before_mb']:.0f} MB){gpu}{png}", flush=True)
        if compare:
            import numpy as np
            untiled = np.load(os.path.join(folder, "untiled.npy")).astype(np.float64) / 65535
            tiled = np.load(os.path.join(folder, "tiled.npy")).astype(np.float64) / 65535
            import metrics
            psnr = metrics.calculate_psnr(tiled, untiled, data_range=1.0)
            print(f"PSNR(tiled, untiled) = {psnr:.2f} dB, max |difference| = "
                  f"{np.abs(tiled - untiled).max() * 255:.2f} grey levels "
                  f"(random weights: a trained network may look further, so treat this as indicative)")
    if compare:
        (untiled_report, untiled_mb), (tiled_report, tiled_mb) = results["untiled"], results["tiled"]
        print(f"tiled / untiled: time x{tiled_report['seconds'] / untiled_report['seconds']:.2f}, "
              f"peak RSS x{tiled_mb / untiled_mb:.2f}")


if __name__ == "__main__":
    main()
