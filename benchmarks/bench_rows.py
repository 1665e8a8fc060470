"""The compact network in rows or in tiles: inference.upscale's two ways, timed in turns in one process.

    python benchmarks/bench_rows.py                                   # compact and realistic, 1000x1000, fp32 and bf16
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/bench_rows.py --precision fp32   # as AVX2

inference.upscale runs the compact network a strip of rows at a time (fast_paths.convolutions_in_rows) on a CPU where
an image needs more than one tile, and other networks in tiles (256 pixels and 16 of context, side by side:
fast_paths.map_tiles). In fp32 the rows' convolutions run by Winograd's algorithm (NNPACK) where it is there. This
prints each way for each model and precision: rows, tiles, and in fp32 also rows with direct convolutions
(fast_paths.WINOGRAD off) - the wall and CPU seconds of upscale() alone on a random image (medians of --runs, the ways
in turn so that the machine's drift touches each), their ratio to the tiles' time, and how far their outputs are from
the tiles' (rows give the whole image's numbers; tiles differ where their context does not cover the receptive
field). The choices in inference.runs_in_rows (rows on a CPU, fp32 and bf16) and fast_paths.WINOGRAD are what these
figures said on a 2-core AMD EPYC (docs/benchmarks.md).
"""
import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import fast_paths  # noqa: E402
import inference  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", nargs="+", default=["compact", "realistic"], help="compact-network models")
    parser.add_argument("--size", type=int, default=1000,
                        help="LR side in pixels (default 1000; above the tile, 256, or every way runs the whole image)")
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=("fp32", "bf16"))
    parser.add_argument("--runs", type=int, default=3, help="runs of each way (medians printed)")
    return parser.parse_args(argv)


def timed(function):
    """(result, wall seconds, CPU seconds of this process) of function()."""
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    result = function()
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    return result, wall, (after.ru_utime - cpu.ru_utime) + (after.ru_stime - cpu.ru_stime)


def main(argv=None):
    args = parse_args(argv)
    print(f"{torch.get_num_threads()} thread(s), CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"{args.size}x{args.size} LR, medians of {args.runs}\n")
    print("| model | precision | way | wall s / CPU s | / tiles (wall) | max difference from tiles |")
    print("|---|---|---|---|---|---|")
    lr_img = torch.rand(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    in_rows = inference.runs_in_rows
    for name in args.model:
        model, _, _ = inference.load_generator(name)
        model.eval()
        for precision in args.precision:
            ways = ["rows", "tiles"]
            if precision == "fp32" and fast_paths.winograd_available():
                ways.append("rows, direct convolutions")
            figures = {way: [] for way in ways}
            for _ in range(args.runs):
                for way in ways:  # in turn; each way forced by what runs_in_rows answers (and WINOGRAD)
                    inference.runs_in_rows = (lambda *_: way != "tiles")
                    fast_paths.WINOGRAD = way != "rows, direct convolutions"
                    try:
                        sr, wall, cpu = timed(lambda: inference.upscale(model, lr_img, precision=precision))
                    finally:
                        inference.runs_in_rows, fast_paths.WINOGRAD = in_rows, True
                    figures[way].append((wall, cpu, sr))
            medians = {way: [statistics.median(run[k] for run in runs) for k in (0, 1)]
                       for way, runs in figures.items()}
            for way in ways:
                difference = (figures[way][-1][2] - figures["tiles"][-1][2]).abs().max().item()
                print(f"| {name} | {precision} | {way} | {medians[way][0]:.2f} / {medians[way][1]:.2f} | "
                      f"{medians[way][0] / medians['tiles'][0]:.3f} | {difference:.1e} |")

if __name__ == "__main__":
    main()
