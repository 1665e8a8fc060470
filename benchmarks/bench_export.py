"""Exported generators: file sizes, export time, and the speed of ONNX Runtime next to PyTorch's on the CPU.

    OMP_NUM_THREADS=1 python benchmarks/bench_export.py                 # the four architectures, 256x256 input
    python benchmarks/bench_export.py --models compact srresnet --size 128 --threads 2

For each architecture at its published size (random weights: sizes and times do not depend on them), the script
  * writes the generator with export.py's own functions: .pth, .safetensors and .onnx, in fp32 and with --half, and
    prints each file's size and how long the ONNX export took;
  * upscales one --size x --size crop of scikit-image's astronaut with PyTorch (inference.run_generator, float32, as
    super_resolve.py runs an untiled image) and with ONNX Runtime (the fp32 and fp16 files), and prints the seconds
    per image (the best of --repeats runs, after a warm-up run on a small crop) and the PSNR between ONNX Runtime's
    and PyTorch's 8-bit outputs.
Both run on --threads threads (default: OMP_NUM_THREADS, else PyTorch's default): torch.set_num_threads and ONNX
Runtime's intra_op_num_threads, so that the two are compared on the same cores.

Architectures (--models): srresnet (SRGAN paper: 16 blocks, 64 channels, x4), rrdb_x4 (ESRGAN / RealESRGAN_x4plus:
23 RRDBs), rrdb_x2 (RealESRGAN_x2plus: the same behind a pixel-unshuffle), compact (realesr-animevideov3: 16
convolutions; compact32 is realesr-general-x4v3's 32).
"""
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from bench_eval import best_time  # noqa: E402 (the best of a few timed runs, and the last result)

ARCHITECTURES = {
    "srresnet": ("srresnet", dict(n_channels=64, n_blocks=16, scaling_factor=4)),
    "rrdb_x4": ("rrdb", dict(num_feat=64, num_block=23, num_grow_ch=32, scale=4)),
    "rrdb_x2": ("rrdb", dict(num_feat=64, num_block=23, num_grow_ch=32, scale=2)),
    "compact": ("compact", dict(num_feat=64, num_conv=16, upscale=4)),
    "compact32": ("compact", dict(num_feat=64, num_conv=32, upscale=4)),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["srresnet", "rrdb_x4", "rrdb_x2", "compact"],
                        choices=sorted(ARCHITECTURES), help="architectures to measure (default: all but compact32)")
    parser.add_argument("--size", type=int, default=256, help="side of the LR input in pixels (default 256)")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs of each (the best counts; default 1)")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 0)) or None,
                        help="threads for PyTorch and ONNX Runtime (default: OMP_NUM_THREADS, else PyTorch's)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    import numpy as np
    import onnxruntime
    import torch
    from skimage import data as skimage_data

    import export
    import inference
    import metrics
    import models

    if args.threads:
        torch.set_num_threads(args.threads)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    print(f"{args.size}x{args.size} input, {torch.get_num_threads()} thread(s) for PyTorch and ONNX Runtime, "
          f"PyTorch {torch.__version__}, ONNX Runtime {onnxruntime.__version__}, random weights", flush=True)

    photo = torch.from_numpy(skimage_data.astronaut()).permute(2, 0, 1).float().div(255).unsqueeze(0)  # 512x512
    lr_imgs = photo[..., :args.size, :args.size].contiguous()
    warm_up = photo[..., :32, :32].contiguous()
    to_uint8 = lambda x: metrics.quantize_to_uint8(np.asarray(x)[0].transpose(1, 2, 0))  # noqa: E731

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models:
            arch, kwargs = ARCHITECTURES[name]
            torch.manual_seed(0)
            model = models.build_generator(arch, **kwargs).eval()
            weights = {"params": model.state_dict()}
            sizes, export_seconds = {}, {}
            for half in (False, True):
                suffix = "_fp16" if half else ""
                export.export_pth(model, weights, Path(folder) / f"{name}{suffix}.pth", half)
                export.export_safetensors(model, weights, Path(folder) / f"{name}{suffix}.safetensors", half)
                start = time.perf_counter()
                export.export_onnx(model, Path(folder) / f"{name}{suffix}.onnx", half)
                export_seconds[half] = time.perf_counter() - start
                for extension in (".pth", ".safetensors", ".onnx"):
                    sizes[extension + suffix] = (Path(folder) / f"{name}{suffix}{extension}").stat().st_size / 1e6

            inference.run_generator(model, warm_up)
            torch_seconds, torch_sr = best_time(lambda: inference.run_generator(model, lr_imgs), args.repeats)
            onnx = {}
            for half in (False, True):
                session = onnxruntime.InferenceSession(str(Path(folder) / f"{name}{'_fp16' if half else ''}.onnx"),
                                                       options, providers=["CPUExecutionProvider"])
                session.run(None, {"input": warm_up.numpy()})
                seconds, sr = best_time(lambda: session.run(None, {"input": lr_imgs.numpy()})[0], args.repeats)
                onnx[half] = (seconds, metrics.calculate_psnr(to_uint8(sr), to_uint8(torch_sr)))
            n_parameters = sum(p.numel() for p in model.parameters())
            rows.append((name, n_parameters, sizes, export_seconds, torch_seconds, onnx))
            print(f"{name}: done", flush=True)

    print("\nFile sizes (MB) and ONNX export time:\n")
    print("| model | parameters | .pth | .pth --half | .safetensors | .safetensors --half | .onnx | .onnx --half "
          "| ONNX export (fp32 / fp16) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, n_parameters, sizes, export_seconds, _, _ in rows:
        print(f"| {name} | {n_parameters / 1e6:.2f} M | " + " | ".join(
            f"{sizes[key]:.1f}" for key in (".pth", ".pth_fp16", ".safetensors", ".safetensors_fp16", ".onnx",
                                            ".onnx_fp16"))
              + f" | {export_seconds[False]:.0f} s / {export_seconds[True]:.0f} s |")
    print(f"\nSeconds per {args.size}x{args.size} image on the CPU ({torch.get_num_threads()} thread(s)), and the "
          f"PSNR of ONNX Runtime's output against PyTorch's (8 bits); in brackets ONNX Runtime's speed-up:\n")
    print("| model | PyTorch fp32 | ONNX Runtime, fp32 file | ONNX Runtime, fp16 file |")
    print("|---|---|---|---|")
    for name, _, _, _, torch_seconds, onnx in rows:
        cells = [f"{seconds:.2f} s ({torch_seconds / seconds:.2f}x), {psnr:.1f} dB" for seconds, psnr in
                 (onnx[False], onnx[True])]
        print(f"| {name} | {torch_seconds:.2f} s | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
