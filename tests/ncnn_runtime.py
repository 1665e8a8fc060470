"""Run an ncnn model with ncnn's own CPU runtime, the reference for ncnn_format.py's tests (and nothing else).

A separate program, run by a Python that has the `ncnn` package (PyPI), which need not have torch: the tests call it
through a subprocess (tests/test_ncnn_format.py: SR_NCNN_PYTHON). Only numpy and ncnn are imported.

    python tests/ncnn_runtime.py model.param lr.npy sr.npy [--fp16] [--threads N] [--repeat N]

lr.npy: (H, W, 3) uint8 RGB. The image goes in as realesrgan-ncnn-vulkan feeds it: ncnn.Mat.from_pixels(...,
PIXEL_RGB, W, H) times 1/255 into blob 'data'; blob 'output' comes out as sr.npy, (3, sH, sW) float32, unclamped.
Without --fp16, ncnn computes in fp32 (its fp16 / bf16 storage and arithmetic off) so that a comparison with PyTorch
measures the files, not the arithmetic. --repeat N runs it N times and prints the best time in seconds.
"""
import argparse
import time

import ncnn
import numpy as np


def run(param_path, lr, fp16=False, threads=1):
    """(3, sH, sW) float32: ncnn's CPU output for the (H, W, 3) uint8 image `lr`."""
    net = ncnn.Net()
    net.opt.use_vulkan_compute = False
    net.opt.num_threads = threads
    for option in ("use_fp16_packed", "use_fp16_storage", "use_fp16_arithmetic", "use_bf16_storage"):
        setattr(net.opt, option, fp16)
    if net.load_param(str(param_path)) or net.load_model(str(param_path)[:-len(".param")] + ".bin"):
        raise SystemExit(f"ncnn cannot load {param_path}")
    height, width = lr.shape[:2]
    mat = ncnn.Mat.from_pixels(np.ascontiguousarray(lr), ncnn.Mat.PixelType.PIXEL_RGB, width, height)
    mat.substract_mean_normalize([], [1 / 255.0] * 3)
    extractor = net.create_extractor()
    extractor.input("data", mat)
    status, out = extractor.extract("output")
    if status:
        raise SystemExit(f"ncnn failed to run {param_path} (status {status})")
    return np.array(out, dtype=np.float32)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("param")
    parser.add_argument("lr")
    parser.add_argument("sr")
    parser.add_argument("--fp16", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    lr = np.load(args.lr)
    times = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        sr = run(args.param, lr, args.fp16, args.threads)
        times.append(time.perf_counter() - start)
    np.save(args.sr, sr)
    if args.repeat > 1:
        print(f"{min(times):.3f}")


if __name__ == "__main__":
    main()
