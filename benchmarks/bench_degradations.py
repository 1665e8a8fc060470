"""Benchmark of the Real-ESRGAN degradation pipeline, and a picture of what it produces.

    python benchmarks/bench_degradations.py [--batch-size 16] [--size 256] [--iterations 3]

Prints the throughput (HR images per second) of `degrade_batch` (the two-stage degradation alone) and of
`make_realesrgan_batch` (unsharp-masked ground truth + degradation, what a training step calls), at
`--size` x `--size` HR crops and x4, on the CPU and, when there is one, on the CUDA GPU; then a JPEG check
(PSNR of our torch JPEG against PIL's encoder on a real photo); then writes docs/degraded_samples.png: for
two photos, the HR crop, three random degradations (LR, nearest-upscaled x4 so that they show at the HR
size) and one CutBlur input.
"""
import argparse
import io
import sys
import time
from pathlib import Path

import numpy as np
import skimage.data
import torch
from PIL import Image, ImageDraw

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import metrics  # noqa: E402
from augmentations import cutblur  # noqa: E402
from degradations import degrade_batch, jpeg_compress, make_realesrgan_batch  # noqa: E402

SCALING_FACTOR = 4


def photo(name):
    """A real photo from scikit-image as a (1, 3, H, W) tensor in [0, 1]."""
    array = getattr(skimage.data, name)()
    return torch.from_numpy(array).permute(2, 0, 1).float().div(255).unsqueeze(0)


def hr_batch(batch_size, size):
    """(batch_size, 3, size, size) random crops of the astronaut photo, in [0, 1] (real image content matters:
    the Poisson noise and JPEG work on real statistics)."""
    image = photo("astronaut")
    generator = torch.Generator().manual_seed(0)
    crops = []
    for _ in range(batch_size):
        top = int(torch.randint(0, image.shape[2] - size + 1, (), generator=generator))
        left = int(torch.randint(0, image.shape[3] - size + 1, (), generator=generator))
        crops.append(image[..., top:top + size, left:left + size])
    return torch.cat(crops)


def throughput(function, hr_imgs, iterations):
    """HR images per second of function(hr_imgs, generator), after one warm-up call, median over iterations."""
    synchronize = torch.cuda.synchronize if hr_imgs.is_cuda else (lambda: None)
    function(hr_imgs, torch.Generator().manual_seed(0))  # warm-up (allocations, kernel caches)
    synchronize()
    seconds = []
    for i in range(iterations):
        start = time.perf_counter()
        function(hr_imgs, torch.Generator().manual_seed(i + 1))
        synchronize()
        seconds.append(time.perf_counter() - start)
    return hr_imgs.shape[0] / float(np.median(seconds))


def benchmark(args):
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    print(f"HR crops {args.size} x {args.size}, batch {args.batch_size}, x{SCALING_FACTOR}, "
          f"median of {args.iterations} after a warm-up; torch threads: {torch.get_num_threads()}")
    for device in devices:
        hr_imgs = hr_batch(args.batch_size, args.size).to(device)
        degrade = throughput(lambda x, g: degrade_batch(x, SCALING_FACTOR, None, g), hr_imgs, args.iterations)
        full = throughput(lambda x, g: make_realesrgan_batch(x, SCALING_FACTOR, None, g), hr_imgs, args.iterations)
        print(f"  {device.type:4s}: degrade_batch {degrade:8.1f} images/s   "
              f"make_realesrgan_batch (USM + degradation) {full:8.1f} images/s")


def jpeg_check():
    """PSNR between our torch JPEG and PIL's real JPEG encoder/decoder at the same quality, on a real photo."""
    image = photo("astronaut")[..., :256, 128:384]
    array = (image[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    print("JPEG simulation vs PIL (astronaut 256 x 256), PSNR in dB:")
    for quality in (10, 30, 50, 75, 95):
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="JPEG", quality=quality)
        reference = torch.from_numpy(np.asarray(Image.open(buffer)).copy()).permute(2, 0, 1).float() / 255
        ours = jpeg_compress(image, quality)[0]
        ours_vs_pil = metrics.calculate_psnr(ours.numpy(), reference.numpy(), data_range=1.0)
        pil_vs_original = metrics.calculate_psnr(reference.numpy(), image[0].numpy(), data_range=1.0)
        print(f"  quality {quality:3d}: ours vs PIL {ours_vs_pil:5.1f}   (PIL vs original {pil_vs_original:5.1f})")


def to_tile(img, label):
    """(3, H, W) in [0, 1] -> PIL tile with a small label bar on top."""
    array = (img.permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    tile = Image.new("RGB", (array.shape[1], array.shape[0] + 14), "black")
    tile.paste(Image.fromarray(array), (0, 14))
    ImageDraw.Draw(tile).text((3, 1), label, fill="white")
    return tile


def sample_grid(path, tile_size=192):
    """One row per photo: HR crop | three degraded LR samples (nearest x4) | a CutBlur input."""
    rows = []
    for name, (top, left) in (("astronaut", (30, 150)), ("coffee", (60, 200))):
        hr = photo(name)[..., top:top + tile_size, left:left + tile_size]
        # One call per sample: a batch shares its resize scale, separate calls show the full variety.
        lr_imgs = torch.cat([make_realesrgan_batch(hr, SCALING_FACTOR, None, torch.Generator().manual_seed(seed))[0]
                             for seed in (11, 12, 13)])  # (3, 3, tile_size / 4, tile_size / 4)
        lr_upscaled = torch.nn.functional.interpolate(lr_imgs, scale_factor=SCALING_FACTOR, mode="nearest")
        mixed, _ = cutblur(lr_upscaled[:1], hr, torch.Generator().manual_seed(3), alpha=0.5)  # HR-sized input
        tiles = [to_tile(hr[0], f"{name}: HR")]
        tiles += [to_tile(lr_upscaled[i], f"degraded LR #{i + 1} (x4 nearest)") for i in range(3)]
        tiles.append(to_tile(mixed[0], "CutBlur input"))
        rows.append(tiles)
    width = sum(tile.width for tile in rows[0]) + 4 * (len(rows[0]) - 1)
    height = sum(row[0].height for row in rows) + 4 * (len(rows) - 1)
    grid = Image.new("RGB", (width, height), "white")
    y = 0
    for row in rows:
        x = 0
        for tile in row:
            grid.paste(tile, (x, y))
            x += tile.width + 4
        y += row[0].height + 4
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path, optimize=True)
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KB, {grid.width} x {grid.height})")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--size", type=int, default=256, help="HR crop side in pixels")
    parser.add_argument("--iterations", type=int, default=3, help="timed batches per device")
    parser.add_argument("--png", type=Path, default=REPO_ROOT / "docs" / "degraded_samples.png")
    args = parser.parse_args()
    if args.size < SCALING_FACTOR or args.size > 512:
        print(f"error: --size must be between {SCALING_FACTOR} and 512 (the astronaut photo is 512 px)",
              file=sys.stderr)
        sys.exit(2)
    benchmark(args)
    jpeg_check()
    sample_grid(args.png)


if __name__ == "__main__":
    main()
