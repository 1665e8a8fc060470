"""Upscaling a photo side by side: super_resolve.py against the tools people would use instead, whole processes.

    python benchmarks/bench_inference.py                     # a 1 MP photo and a 256 px one, compact and realistic
    python benchmarks/bench_inference.py --sizes 256 --runs 1 --model srresnet
    python benchmarks/bench_inference.py --peer_python /path/to/venv/bin/python   # the peers from another environment

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
output at x4), saved as a PNG. The peers write their PNG at super_resolve.py's zlib level (PNG_COMPRESS_LEVEL, 1), so
that the rows compare upscalers, not PNG settings: Pillow's default level, 6, adds about 2.5 s to a 4000x4000 output
(3.4 s against 0.9 s on a 2-core AVX-512 EPYC), more than the networks differ by. Threads: each process uses what
it is given (set OMP_NUM_THREADS to compare at one thread).

Two kinds of CPU (--cpus): 'native' runs everything as the machine is; 'avx2' holds PyTorch and oneDNN to AVX2
(ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2), what a CPU without AVX-512 and native bf16 does -- most laptops
and desktops. There `--precision auto` picks fp32, so 'ours' is 'ours fp32'. OpenVINO's CPU plugin is built on oneDNN
and follows the same limit; ONNX Runtime's own kernels (MLAS) pick their instructions from the CPU and have no such
switch, so its row there still runs AVX-512 (said beside it). By default a CPU with AVX-512 prints both kinds' tables,
any other CPU its own.
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
import torch
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from skimage import data as skimage_data  # noqa: E402

import export  # noqa: E402
import inference  # noqa: E402
import super_resolve  # noqa: E402

# The 10-line ONNX Runtime script a user would write: read, run the exported graph once on the whole image, write.
ONNXRUNTIME_SCRIPT = """
import sys, numpy as np, onnxruntime as ort
from PIL import Image
session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
lr = np.asarray(Image.open(sys.argv[2]).convert("RGB"), dtype=np.float32).transpose(2, 0, 1)[None] / 255
sr = session.run(None, {session.get_inputs()[0].name: lr})[0][0]
Image.fromarray((sr.transpose(1, 2, 0) * 255).round().clip(0, 255).astype(np.uint8)).save(sys.argv[3],
                                                                                        compress_level=int(sys.argv[4]))
"""
# The same with OpenVINO (fp32 or bf16 by its inference-precision hint).
OPENVINO_SCRIPT = """
import sys, numpy as np, openvino as ov
from PIL import Image
core = ov.Core()
model = core.compile_model(sys.argv[1], "CPU", {"INFERENCE_PRECISION_HINT": sys.argv[5]})
lr = np.asarray(Image.open(sys.argv[2]).convert("RGB"), dtype=np.float32).transpose(2, 0, 1)[None] / 255
sr = model(lr)[0][0]
Image.fromarray((sr.transpose(1, 2, 0) * 255).round().clip(0, 255).astype(np.uint8)).save(sys.argv[3],
                                                                                        compress_level=int(sys.argv[4]))
"""


# The environment of each kind of CPU (see the docstring).
CPU_KINDS = {
    "native": {},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
}


def default_cpu_kinds():
    """Both kinds on a CPU with AVX-512 (it can be held to AVX2), else only what it is."""
    return ["native", "avx2"] if torch.backends.cpu.get_cpu_capability().startswith("AVX512") else ["native"]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 256], help="photo sides in pixels")
    parser.add_argument("--model", nargs="+", default=["compact", "realistic"],
                        help="shipped model names or generator files (one table each)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each way (the medians are printed)")
    parser.add_argument("--cpus", nargs="+", choices=list(CPU_KINDS), default=None,
                        help="kinds of CPU to measure as (default: native and avx2 on an AVX-512 CPU, else native)")
    parser.add_argument("--peer_python", default=sys.executable,
                        help="the Python that runs ONNX Runtime and OpenVINO (default: this one)")
    parser.add_argument("--realesrgan_script", default=None,
                        help="path of Real-ESRGAN's inference_realesrgan.py, to time it too (with --fp32)")
    return parser.parse_args(argv)


def timed_process(command, output, env=None):
    """Run `command` to its end, with `env` added to the environment; return (wall s, CPU s, peak RSS MB). Raises if
    it fails or writes no `output`.

    The peak is measured by /usr/bin/time around the command, not read from os.wait4 here: a child's ru_maxrss
    starts at the RSS of the process that forked it, and this one holds a model and whole images."""
    start = time.perf_counter()
    process = subprocess.Popen(["/usr/bin/time", "-f", "peak_kb %M", *map(str, command)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, cwd=REPO_ROOT, env={**os.environ, **(env or {})})
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


def ways(args, model, cpu, folder, photo, onnx_path):
    """name -> (command, output path) for every way that can run here, for one model and one kind of CPU."""
    python, peer, out = sys.executable, args.peer_python, Path(folder) / cpu
    png_level = str(super_resolve.PNG_COMPRESS_LEVEL)  # the peers write their PNG as super_resolve.py does
    found = {"ours": ([python, "super_resolve.py", photo, "--model", model, "--output_folder", out / "ours",
                       "--no_progress"], out / "ours" / f"{Path(photo).stem}_x4.png")}
    if cpu == "native":  # (held to AVX2, 'auto' is fp32: the same command)
        found["ours fp32"] = ([python, "super_resolve.py", photo, "--model", model, "--precision", "fp32",
                               "--output_folder", out / "fp32", "--no_progress"],
                              out / "fp32" / f"{Path(photo).stem}_x4.png")
    has = {name: subprocess.run([peer, "-c", f"import {name}"], capture_output=True).returncode == 0
           for name in ("onnxruntime", "openvino")}
    if has["onnxruntime"]:
        label = "onnxruntime" if cpu == "native" else "onnxruntime (not held: AVX-512)"
        found[label] = ([peer, "-c", ONNXRUNTIME_SCRIPT, onnx_path, photo, out / "ort.png", png_level], out / "ort.png")
    if has["openvino"]:
        for precision in ("f32", "bf16") if cpu == "native" else ("f32",):
            found[f"openvino {precision}"] = ([peer, "-c", OPENVINO_SCRIPT, onnx_path, photo,
                                               out / f"ov_{precision}.png", png_level, precision],
                                              out / f"ov_{precision}.png")
    missing = [name for name, ok in has.items() if not ok]
    if missing:
        print(f"({' and '.join(missing)} not importable by {peer}: no rows; see --peer_python)")
    if args.realesrgan_script:
        found["realesrgan --fp32"] = ([python, args.realesrgan_script, "-n", "realesr-animevideov3", "--model_path",
                                       inference.shipped_model_path(model), "-i", photo, "-o", out / "realesrgan",
                                       "--fp32", "--suffix", "out"],
                                      out / "realesrgan" / f"{Path(photo).stem}_out.png")
    return found


def main(argv=None):
    args = parse_args(argv)
    cpus = args.cpus or default_cpu_kinds()
    print(f"{os.cpu_count()} CPU(s) ({torch.backends.cpu.get_cpu_capability()}), OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS', 'unset')}, {args.runs} run(s) each, in turns; {time.strftime('%Y-%m-%d')}")
    with tempfile.TemporaryDirectory() as folder:
        for model_name in args.model:
            model, description, _ = inference.load_generator(model_name)
            onnx_path = Path(folder) / f"{Path(model_name).stem}.onnx"
            export.export_onnx(model, onnx_path)
            print(f"\n{description}; exported to ONNX for the other runtimes")
            for size in args.sizes:
                photo = Path(folder) / f"photo_{size}.png"
                Image.fromarray(skimage_data.astronaut()).resize((size, size), Image.LANCZOS).save(photo)
                for cpu in cpus:
                    commands = ways(args, model_name, cpu, folder, photo, onnx_path)
                    figures = {name: [] for name in commands}
                    for _ in range(args.runs):
                        for name, (command, output) in commands.items():
                            Path(output).unlink(missing_ok=True)
                            figures[name].append(timed_process(command, output, CPU_KINDS[cpu]))
                    reference = commands["ours fp32" if cpu == "native" else "ours"][1]
                    ours_wall = statistics.median(wall for wall, _, _ in figures["ours"])
                    held = " ".join(f"{key}={value}" for key, value in CPU_KINDS[cpu].items())
                    print(f"\n{model_name}, {size}x{size} -> {4 * size}x{4 * size}, CPU: {cpu}"
                          + (f" (held to AVX2: {held})" if held else ""))
                    print(f"| how | wall s | CPU s | peak MB | wall / ours | PSNR vs {Path(reference).parent.name} (dB) |")
                    print("|---|---|---|---|---|---|")
                    for name, runs in figures.items():
                        wall, cpu_s, peak = (statistics.median(values) for values in zip(*runs))
                        print(f"| {name} | {wall:.2f} | {cpu_s:.2f} | {peak:.0f} | {wall / ours_wall:.2f} | "
                              f"{psnr(commands[name][1], reference):.1f} |")


if __name__ == "__main__":
    main()
