"""Upscaling a photo side by side: super_resolve.py against the tools people would use instead, whole processes.

    python benchmarks/bench_inference.py                     # a 1 MP photo and a 256 px one, the shipped compact model
    python benchmarks/bench_inference.py --sizes 256 --runs 1 --model srresnet

Each way of upscaling runs as a whole process (start-up, reading the image, the network, writing the PNG: what a
user waits for), the same weights every time, in turns (A, B, C, A, B, C, ...) so that a slow moment of the machine
falls on all of them alike; the figures are medians over --runs. For each it prints the wall time, the CPU time
(user + system, all threads), the peak memory (the process's maximum resident set, from /usr/bin/time), the ratio of its wall
time to super_resolve.py's (default settings), and the PSNR between its output and super_resolve.py --precision
fp32's (8-bit RGB, whole image): how far each is from the exact result.

The ways, each only where it can run here:
  ours            python super_resolve.py PHOTO --model NAME                  (its defaults)
  ours fp32       the same with --precision fp32                              (exact, what the others are held to)
  onnxruntime     ONNX Runtime on export.py's ONNX graph of the same weights, whole image, a 10-line script
  openvino        OpenVINO on the same ONNX graph, fp32 and bf16 hints        (only where openvino is installed)
  realesrgan      Real-ESRGAN's inference_realesrgan.py --fp32                (only with --realesrgan_script PATH)

The photo is scikit-image's astronaut, resized with Lanczos to --sizes (1000 -> a 1000x1000 input, 4000x4000
output at x4), saved as a PNG. Threads: each process uses what it is given (set OMP_NUM_THREADS to compare at one
thread).
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from skimage import data as skimage_data  # noqa: E402

import export  # noqa: E402
import inference  # noqa: E402

# The 10-line ONNX Runtime script a user would write: read, run the exported graph once on the whole image, write.
ONNXRUNTIME_SCRIPT = """
import sys, numpy as np, onnxruntime as ort
from PIL import Image
session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
lr = np.asarray(Image.open(sys.argv[2]).convert("RGB"), dtype=np.float32).transpose(2, 0, 1)[None] / 255
sr = session.run(None, {session.get_inputs()[0].name: lr})[0][0]
Image.fromarray((sr.transpose(1, 2, 0) * 255).round().clip(0, 255).astype(np.uint8)).save(sys.argv[3])
"""
# The same with OpenVINO (fp32 or bf16 by its inference-precision hint).
OPENVINO_SCRIPT = """
import sys, numpy as np, openvino as ov
from PIL import Image
core = ov.Core()
model = core.compile_model(sys.argv[1], "CPU", {"INFERENCE_PRECISION_HINT": sys.argv[4]})
lr = np.asarray(Image.open(sys.argv[2]).convert("RGB"), dtype=np.float32).transpose(2, 0, 1)[None] / 255
sr = model(lr)[0][0]
Image.fromarray((sr.transpose(1, 2, 0) * 255).round().clip(0, 255).astype(np.uint8)).save(sys.argv[3])
"""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 256], help="photo sides in pixels")
    parser.add_argument("--model", default="compact", help="a shipped model name or a generator file")
    parser.add_argument("--runs", type=int, default=3, help="runs of each way (the medians are printed)")
    parser.add_argument("--realesrgan_script", default=None,
                        help="path of Real-ESRGAN's inference_realesrgan.py, to time it too (with --fp32)")
    return parser.parse_args(argv)


def timed_process(command, output):
    """Run `command` to its end; return (wall s, CPU s, peak RSS MB). Raises if it fails or writes no `output`.

    The peak is measured by /usr/bin/time around the command, not read from os.wait4 here: a child's ru_maxrss
    starts at the RSS of the process that forked it, and this one holds a model and whole images."""
    start = time.perf_counter()
    process = subprocess.Popen(["/usr/bin/time", "-f", "peak_kb %M", *map(str, command)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, cwd=REPO_ROOT)
    _, status, usage = os.wait4(process.pid, 0)  # the child's own resource usage (CPU time of all its threads)
    wall = time.perf_counter() - start
    stderr = process.stderr.read().decode(errors="replace")
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0 or not Path(output).is_file():
        raise RuntimeError(f"{' '.join(map(str, command))} failed ({process.returncode}): {stderr[-500:]}")
    peak_kb = int(stderr.rsplit("peak_kb ", 1)[1].split()[0])
    return wall, usage.ru_utime + usage.ru_stime, peak_kb / 1024


def psnr(a_path, b_path):
    """PSNR (dB) between two 8-bit RGB images of the same size (inf when identical)."""
    a, b = (np.asarray(Image.open(p).convert("RGB"), dtype=np.float64) for p in (a_path, b_path))
    mse = np.mean((a - b) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255 ** 2 / mse)


def ways(args, folder, photo, onnx_path):
    """name -> (command, output path) for every way that can run here."""
    python, out = sys.executable, Path(folder)
    found = {
        "ours": ([python, "super_resolve.py", photo, "--model", args.model, "--output_folder", out / "ours",
                  "--no_progress"], out / "ours" / f"{Path(photo).stem}_x4.png"),
        "ours fp32": ([python, "super_resolve.py", photo, "--model", args.model, "--precision", "fp32",
                       "--output_folder", out / "fp32", "--no_progress"], out / "fp32" / f"{Path(photo).stem}_x4.png"),
        "onnxruntime": ([python, "-c", ONNXRUNTIME_SCRIPT, onnx_path, photo, out / "ort.png"], out / "ort.png"),
    }
    try:
        import openvino  # noqa: F401 (only to know whether it is installed)
        for precision in ("f32", "bf16"):
            found[f"openvino {precision}"] = ([python, "-c", OPENVINO_SCRIPT, onnx_path, photo, out / f"ov_{precision}.png",
                                               precision], out / f"ov_{precision}.png")
    except ImportError:
        print("(openvino is not installed: no OpenVINO rows)")
    if args.realesrgan_script:
        found["realesrgan --fp32"] = ([python, args.realesrgan_script, "-n", "realesr-animevideov3", "--model_path",
                                       inference.shipped_model_path(args.model), "-i", photo, "-o", out / "realesrgan", "--fp32",
                                       "--suffix", "out"], out / "realesrgan" / f"{Path(photo).stem}_out.png")
    return found


def main(argv=None):
    args = parse_args(argv)
    print(f"{os.cpu_count()} CPU(s), OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
          f"model {args.model}, {args.runs} run(s) each, in turns; {time.strftime('%Y-%m-%d')}")
    with tempfile.TemporaryDirectory() as folder:
        model, description, _ = inference.load_generator(args.model)
        onnx_path = Path(folder) / "model.onnx"
        export.export_onnx(model, onnx_path)
        print(f"{description}; exported to ONNX for the other runtimes")
        for size in args.sizes:
            photo = Path(folder) / f"photo_{size}.png"
            Image.fromarray(skimage_data.astronaut()).resize((size, size), Image.LANCZOS).save(photo)
            commands = ways(args, folder, photo, onnx_path)
            figures = {name: [] for name in commands}
            for _ in range(args.runs):
                for name, (command, output) in commands.items():
                    Path(output).unlink(missing_ok=True)
                    figures[name].append(timed_process(command, output))
            reference = commands["ours fp32"][1]
            ours_wall = statistics.median(wall for wall, _, _ in figures["ours"])
            print(f"\n{size}x{size} -> {4 * size}x{4 * size}")
            print("| how | wall s | CPU s | peak MB | wall / ours | PSNR vs ours fp32 (dB) |")
            print("|---|---|---|---|---|---|")
            for name, runs in figures.items():
                wall, cpu, peak = (statistics.median(values) for values in zip(*runs))
                print(f"| {name} | {wall:.2f} | {cpu:.2f} | {peak:.0f} | {wall / ours_wall:.2f} | "
                      f"{psnr(commands[name][1], reference):.1f} |")


if __name__ == "__main__":
    main()
