"""
Benchmark: training speed of train_srresnet.py, the plain fp32 eager loop against our defaults.

One run measures, on this machine, the training iterations per second of SRResNet (batch 16, crop 96) and of ESRGAN's
RRDBNet (crop 96; batch 16 on a GPU, 2 on a CPU, where one RRDB iteration at batch 16 takes minutes) with:
  baseline  the plain loop: fp32, contiguous (NCHW) tensors, no torch.compile, every crop decoded from its file,
            PyTorch's default Adam
  defaults  the script's own defaults on this device (precision 'auto', channels_last, the decoded-image cache,
            fused Adam, ...)
and prints a table and the ratios. Optional extra rows (--extra): 'bf16', 'channels_last_off', 'compile'.

Speed is worth nothing if the faster arithmetic trains a worse model. With --quality_iterations N, it also trains
SRResNet N iterations twice from the same seed (same initial weights, same crops): once in fp32 and once with the
defaults (which differ only in their arithmetic: bf16 autocast where 'auto' picks it), and compares the two models'
Set5 PSNR (x4, standard protocol; Set5 from ../shared/data or $SR_SHARED_DATA).

It times the real script: each measurement runs train_srresnet.main() in a fresh process, and records the time at
which the loop asks for batch `warmup` and for batch `warmup + iterations`; that interval holds `iterations` whole
iterations (loading, forward, backward, optimiser step), without start-up, warm-up (including compilation) or the
final checkpoint. On CUDA the GPU is synchronised at both ends, and the run also reports the model FLOPs of one
iteration (counted by torch.utils.flop_counter.FlopCounterMode), the achieved TFLOP/s and its share of the GPU's
peak for that precision (from the table below; 'unknown' for other GPUs), and the peak memory.

    python benchmarks/bench_training.py                      # both models, baseline vs defaults
    python benchmarks/bench_training.py --models srresnet --iterations 10 --extra bf16 compile
    python benchmarks/bench_training.py --models srresnet --quality_iterations 500   # + the fp32-vs-defaults PSNR
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

# Hyperparameters of each row (train_srresnet.py flags); 'defaults' changes nothing.
CONFIGS = {
    "baseline": dict(precision="fp32", channels_last=False, compile=False, image_cache_mb=0, fused_adam=False),
    "defaults": dict(),
    "bf16": dict(precision="bf16"),
    "channels_last_off": dict(channels_last=False),
    "compile": dict(compile=True),
}

# Dense (no sparsity) peak TFLOP/s of tensor-core math, by precision, from the vendors' data sheets. 'fp32' means
# PyTorch's default for fp32 convolutions on these GPUs, which run in TF32 (torch.backends.cudnn.allow_tf32).
GPU_PEAK_TFLOPS = {
    "H100 SXM": dict(bf16=989.4, fp16=989.4, tf32=494.7, fp32=66.9),
    "H100 PCIe": dict(bf16=756.0, fp16=756.0, tf32=378.0, fp32=51.2),
    "H100 NVL": dict(bf16=835.5, fp16=835.5, tf32=417.8, fp32=60.0),
    "H200": dict(bf16=989.4, fp16=989.4, tf32=494.7, fp32=66.9),
    "A100": dict(bf16=312.0, fp16=312.0, tf32=156.0, fp32=19.5),
    "L4": dict(bf16=121.0, fp16=121.0, tf32=60.0, fp32=30.3),
    "RTX 4090": dict(bf16=165.2, fp16=165.2, tf32=82.6, fp32=82.6),
    "V100": dict(fp16=125.0, fp32=15.7),
}


def peak_tflops(device_name, precision):
    """The GPU's peak for this precision, or None when the GPU is not in the table."""
    import torch

    name = device_name.replace("NVIDIA ", "")
    matches = [key for key in GPU_PEAK_TFLOPS if key in name]
    if name.startswith("H100") and not matches:
        matches = ["H100 SXM"] if "HBM3" in name or "80GB" in name else []
    if not matches:
        return None
    table = GPU_PEAK_TFLOPS[max(matches, key=len)]  # the most specific name ('H100 PCIe' before 'H100')
    if precision == "fp32" and torch.backends.cudnn.allow_tf32 and "tf32" in table:
        precision = "tf32"
    return table.get(precision)


# ------------------------------------------------------------------------------------------------------
# One measurement (child process): run train_srresnet.main() and time the batches it asks for.
# ------------------------------------------------------------------------------------------------------
def measure(argv, warmup, iterations):
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    import cli
    import datasets
    import inference
    import models
    import train_srresnet
    import utils

    times = []
    make_train_loader = datasets.make_train_loader

    def timed_train_loader(hp, *args, **kwargs):
        """The script's loader, noting the time at which batches `warmup` and `warmup + iterations` are asked for.
        On a GPU it waits there for the queued work to finish, and only there: waiting at every batch would stop the
        CPU from queuing the next iteration while the GPU runs this one, and add the two times up."""
        loader = make_train_loader(hp, *args, **kwargs)
        for index, batch in enumerate(loader):
            if index in (warmup, warmup + iterations):
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                times.append(time.perf_counter())
            yield batch

    datasets.make_train_loader = timed_train_loader
    sys.argv = ["train_srresnet.py", *argv, "--iterations", str(warmup + iterations + 1),
                "--checkpoint_every", "1000000", "--print_every", "1000000"]
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    train_srresnet.main()
    # Batch `warmup` is asked for at the start of iteration `warmup`, batch `warmup + iterations` at the start of the
    # iteration after the last timed one.
    seconds = times[1] - times[0]
    result = dict(it_per_s=iterations / seconds)

    hp = cli.parse_hyperparameters(train_srresnet.hyperparameters, "", argv=argv)
    device = utils.get_device()
    if device.type == "cuda":
        # Model FLOPs of one iteration: forward and backward of the generator on one batch (the count does not depend
        # on the precision, so it is taken in fp32).
        generator = models.build_generator(hp.generator_arch, **train_srresnet.generator_kwargs(hp)).to(device)
        lr_imgs = torch.rand(hp.batch_size, 3, hp.crop_size // hp.scaling_factor, hp.crop_size // hp.scaling_factor,
                             device=device)
        with FlopCounterMode(display=False) as counter:
            generator(lr_imgs).square().mean().backward()
        precision = inference.resolve_precision(hp.precision, device)
        flops = counter.get_total_flops()
        peak = peak_tflops(torch.cuda.get_device_name(device), precision)
        result.update(device=torch.cuda.get_device_name(device), precision=precision, gflop_per_iteration=flops / 1e9,
                      tflops=flops * result["it_per_s"] / 1e12, peak_tflops=peak,
                      peak_memory_gib=torch.cuda.max_memory_allocated(device) / 2 ** 30)
    return result


# ------------------------------------------------------------------------------------------------------
# The benchmark (parent process): one child per (model, configuration), then the table.
# ------------------------------------------------------------------------------------------------------
SHARED_DATA = Path(os.environ.get("SR_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def make_data_lists(folder):
    """Data lists of the real training images in ../shared/data/train (else of scikit-image's sample photos), and of
    Set5 for the quality check when it is there."""
    import create_data_lists

    shared_train, set5 = SHARED_DATA / "train", SHARED_DATA / "Set5" / "HR"
    train_folders = [str(shared_train)] if shared_train.is_dir() else []
    test_folders = [str(set5)] if set5.is_dir() else []
    create_data_lists.create_data_lists(train_folders, test_folders, min_size=96, output_folder=str(folder))
    names = ", ".join(sorted(p.name for p in shared_train.iterdir() if p.is_dir())) if train_folders else ""
    return names or "scikit-image sample photos"


def quality_check(work_folder, iterations):
    """Train SRResNet `iterations` iterations in fp32 and with the defaults (same seed), evaluate both on Set5 (x4,
    standard protocol) and print the two PSNRs and their difference."""
    lists = Path(work_folder) / "lists"
    if not (lists / "Set5_test_images.json").is_file():
        print(f"\nquality check skipped: no Set5 in {SHARED_DATA}")
        return
    checkpoints = {}
    for name, flags in [("fp32", ["--precision", "fp32"]), ("defaults", [])]:
        output_folder = Path(work_folder) / f"quality_{name}"
        command = [sys.executable, "train_srresnet.py", "--data_folder", str(lists), "--output_folder",
                   str(output_folder), "--iterations", str(iterations), "--checkpoint_every", str(iterations),
                   "--print_every", str(iterations), *flags]
        start = time.perf_counter()
        child = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
        if child.returncode != 0:
            print(f"\nquality check: the {name} run failed\n{child.stderr[-2000:]}")
            return
        print(f"  trained {name}: {iterations} iterations in {time.perf_counter() - start:.0f} s", flush=True)
        checkpoints[name] = str(output_folder / "checkpoint_srresnet.pth")
    json_path = Path(work_folder) / "quality.json"
    child = subprocess.run([sys.executable, "eval.py", "--data_folder", str(lists), "--test_sets", "Set5", "--model",
                            checkpoints["fp32"], checkpoints["defaults"], "--json", str(json_path)],
                           cwd=REPO_ROOT, capture_output=True, text=True)
    if child.returncode != 0:
        print(f"\nquality check: evaluation failed\n{child.stderr[-2000:]}")
        return
    psnr = {name: next(r["psnr"] for r in json.loads(json_path.read_text())["results"] if r["model"] == path)
            for name, path in checkpoints.items()}
    difference = psnr["defaults"] - psnr["fp32"]
    print(f"  Set5 x4 PSNR after {iterations} iterations: fp32 {psnr['fp32']:.4f} dB, defaults "
          f"{psnr['defaults']:.4f} dB, difference {difference:+.4f} dB "
          f"({'within' if abs(difference) <= 0.05 else 'OUTSIDE'} the 0.05 dB target)")


def format_row(name, result, baseline):
    text = f"  {name:<18} {result['it_per_s']:8.3f} it/s  x{result['it_per_s'] / baseline['it_per_s']:5.2f}"
    if "tflops" in result:
        share = f"{100 * result['tflops'] / result['peak_tflops']:.1f}% of peak" if result["peak_tflops"] else \
            "peak unknown"
        text += (f"   {result['precision']:>4}: {result['tflops']:7.2f} TFLOP/s ({share}), "
                 f"{result['gflop_per_iteration']:.0f} GFLOP/it, peak memory {result['peak_memory_gib']:.2f} GiB")
    return text


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["srresnet", "rrdb"], choices=["srresnet", "rrdb"])
    parser.add_argument("--extra", nargs="*", default=[], help="more rows to measure",
                        choices=[name for name in CONFIGS if name not in ("baseline", "defaults")])
    parser.add_argument("--warmup", type=int, default=None, help="untimed iterations (default: 2 CPU, 20 GPU)")
    parser.add_argument("--iterations", type=int, default=None, help="timed iterations (default: 5 CPU, 100 GPU)")
    parser.add_argument("--rrdb_batch_size", type=int, default=None, help="RRDB's batch (default: 2 CPU, 16 GPU)")
    parser.add_argument("--quality_iterations", type=int, default=0,
                        help="also compare fp32 and the defaults after this many SRResNet iterations (0: skip)")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # internal: JSON of one measurement to run
    args = parser.parse_args()

    if args.child:  # one measurement, in this fresh process; the result is the last line of stdout
        spec = json.loads(args.child)
        print(json.dumps(measure(spec["argv"], spec["warmup"], spec["iterations"])))
        return

    import torch

    on_gpu = torch.cuda.is_available()
    warmup = args.warmup if args.warmup is not None else (20 if on_gpu else 2)
    iterations = args.iterations if args.iterations is not None else (100 if on_gpu else 5)
    rrdb_batch_size = args.rrdb_batch_size or (16 if on_gpu else 2)
    model_flags = {
        "srresnet": ["--generator_arch", "srresnet", "--batch_size", "16", "--crop_size", "96"],
        "rrdb": ["--generator_arch", "rrdb", "--pixel_loss", "l1", "--batch_size", str(rrdb_batch_size),
                 "--crop_size", "96"],
    }
    device = torch.cuda.get_device_name(0) if on_gpu else \
        f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"
    print(f"bench_training: {device}, torch {torch.__version__}; {warmup} warm-up + {iterations} timed iterations")
    if not on_gpu:
        print("No CUDA GPU here: CPU figures only (the GPU figures need a CUDA device).")

    with tempfile.TemporaryDirectory() as work_folder:
        print(f"Training images: {make_data_lists(Path(work_folder) / 'lists')}")
        for model_name in args.models:
            batch_size = model_flags[model_name][model_flags[model_name].index("--batch_size") + 1]
            print(f"\n{model_name} (batch {batch_size}, crop 96):")
            results = {}
            for config_name in ["baseline", "defaults", *args.extra]:
                argv = [*model_flags[model_name], "--data_folder", str(Path(work_folder) / "lists"),
                        "--output_folder", work_folder, "--overwrite", "true"]  # (each configuration's run anew)
                for name, value in CONFIGS[config_name].items():
                    argv += [f"--{name}", str(value).lower() if isinstance(value, bool) else str(value)]
                spec = json.dumps(dict(argv=argv, warmup=warmup, iterations=iterations))
                child = subprocess.run([sys.executable, __file__, "--child", spec], cwd=REPO_ROOT,
                                       capture_output=True, text=True)
                if child.returncode != 0:
                    print(f"  {config_name}: failed\n{child.stderr[-2000:]}")
                    continue
                results[config_name] = json.loads(child.stdout.strip().splitlines()[-1])
                if "baseline" in results:
                    print(format_row(config_name, results[config_name], results["baseline"]), flush=True)
            if "baseline" in results and "defaults" in results:
                ratio = results["defaults"]["it_per_s"] / results["baseline"]["it_per_s"]
                print(f"  => defaults / baseline: {ratio:.2f}x")
        if args.quality_iterations:
            print("\nquality (SRResNet, batch 16, crop 96, fp32 vs defaults, seed 0):", flush=True)
            quality_check(work_folder, args.quality_iterations)


if __name__ == "__main__":
    main()
