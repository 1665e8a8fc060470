#!/usr/bin/env bash
# What we run on a CUDA machine, since CI has no GPU: the test suite (its CUDA tests run there), every script on the
# GPU in every precision, and the GPU rows of the benchmarks. Prints one section per check; a check that fails
# prints FAILED and the rest still run.
#
#     bash benchmarks/gpu_checks.sh checks       [DATA]   # correctness: tests, scripts, precisions (~5 min on an H100)
#     bash benchmarks/gpu_checks.sh benchmarks   [DATA]   # training speed and quality, tiling at 1024 and 4096 px (~10 min)
#
# DATA is the folder holding Set5/, Set14/, BSD100/, train/T91 and MANIFEST.tsv (default ../shared/data).
set -u
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
WHAT=${1:-checks}
export SR_SHARED_DATA=${2:-../shared/data}
export PYTHONUNBUFFERED=1
WORK=$(mktemp -d)
FAILED=()

check() {  # check NAME COMMAND...: run one check, note a failure, go on
    local name=$1; shift
    echo; echo "=== $name"
    local start=$SECONDS
    if "$@"; then echo "--- $name: ok ($((SECONDS - start)) s)"; else echo "--- $name: FAILED"; FAILED+=("$name"); fi
}

environment() {
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $PYTHON -c 'import torch, torchvision; print("torch", torch.__version__, "torchvision", torchvision.__version__,
      "| GPU bf16:", torch.cuda.is_bf16_supported(), "| CPU bf16:", torch.ops.mkldnn._is_mkldnn_bf16_supported())'
  lscpu | grep -E '^Model name|^CPU\(s\)'
}
check environment environment

if [ "$WHAT" = checks ]; then
  # 128 px at least: the realesrgan recipe below trains on 128-px crops.
  check data_lists $PYTHON create_data_lists.py --train_folders "$SR_SHARED_DATA/train/T91" \
    --test_folders "$SR_SHARED_DATA/Set5/HR" --output_folder "$WORK/lists" --min_size 128
  check pytest $PYTHON -m pytest -q -p no:cacheprovider

  # Training scripts on the GPU: the defaults (bf16 autocast, channels_last), then fp16 (gradient scaler) and compile.
  check srresnet_defaults $PYTHON train_srresnet.py --data_folder "$WORK/lists" --output_folder "$WORK/srresnet" \
    --iterations 200 --print_every 100
  check srresnet_fp16_compile $PYTHON train_srresnet.py --data_folder "$WORK/lists" --output_folder "$WORK/fp16" \
    --iterations 40 --print_every 20 --precision fp16 --compile true
  check rrdb_small $PYTHON train_srresnet.py --data_folder "$WORK/lists" --output_folder "$WORK/rrdb" \
    --generator_arch rrdb --num_block 2 --pixel_loss l1 --iterations 40 --print_every 20
  check srgan_fp16 $PYTHON train_srgan.py --data_folder "$WORK/lists" --output_folder "$WORK/srgan" \
    --srresnet_checkpoint "$WORK/srresnet/checkpoint_srresnet.pth" --vgg_weights random --iterations 40 \
    --print_every 20 --precision fp16
  check esrgan_bf16 $PYTHON train_srgan.py --recipe esrgan --data_folder "$WORK/lists" --output_folder "$WORK/esrgan" \
    --srresnet_checkpoint "$WORK/rrdb/checkpoint_srresnet.pth" --vgg_weights random --iterations 40 --print_every 20
  # Real-ESRGAN's two stages: Real-ESRNet (degradations and the training-pair pool on the GPU, full after 2
  # iterations of 16), then the GAN recipe from it.
  check realesrnet_gpu_pool $PYTHON train_srresnet.py --data_folder "$WORK/lists" --output_folder "$WORK/realesrnet" \
    --generator_arch rrdb --num_block 2 --pixel_loss l1 --degradation realesrgan --queue_size 32 --crop_size 128 \
    --iterations 40 --print_every 20
  check realesrgan_gpu_degradations $PYTHON train_srgan.py --recipe realesrgan --data_folder "$WORK/lists" \
    --output_folder "$WORK/realesrgan" --srresnet_checkpoint "$WORK/realesrnet/checkpoint_srresnet.pth" \
    --vgg_weights random --iterations 40 --print_every 20 --crop_size 128

  check eval_gpu $PYTHON eval.py --data_folder "$WORK/lists" --test_sets Set5 \
    --model bicubic "$WORK/srresnet/checkpoint_srresnet.pth" "$WORK/srgan/checkpoint_srgan.pth"

  # super_resolve in every precision, tiled and whole: each must stay close to fp32 untiled (> 35 dB PSNR).
  for precision in fp32 bf16 fp16; do
    for tile in 0 64; do
      check "super_resolve_${precision}_tile${tile}" $PYTHON super_resolve.py "$SR_SHARED_DATA/Set5/HR/baby.png" \
        --model "$WORK/esrgan/checkpoint_srgan.pth" --output_folder "$WORK/sr_${precision}_${tile}" \
        --precision $precision --tile $tile --no_progress
    done
  done
  check super_resolve_agreement $PYTHON - "$WORK" <<'EOF'
import sys
from PIL import Image
import numpy as np
import metrics
work = sys.argv[1]
reference = Image.open(f"{work}/sr_fp32_0/baby_x4.png")
for precision in ("fp32", "bf16", "fp16"):
    for tile in (0, 64):
        psnr = metrics.calculate_psnr(np.asarray(Image.open(f"{work}/sr_{precision}_{tile}/baby_x4.png")),
                                      np.asarray(reference))
        print(f"PSNR({precision} tile {tile}, fp32 whole) = {psnr:.1f} dB")
        assert psnr > 35, "a precision or tiling changed the image far more than rounding does"
EOF
else
  check bench_training $PYTHON benchmarks/bench_training.py --extra compile --quality_iterations 1000
  check bench_tiling_1024 $PYTHON benchmarks/bench_tiling.py --device cuda --size 1024
  check bench_tiling_4096 $PYTHON benchmarks/bench_tiling.py --device cuda --size 4096
fi

echo
if [ ${#FAILED[@]} -eq 0 ]; then echo "gpu_checks $WHAT: all passed"; else echo "gpu_checks $WHAT: FAILED: ${FAILED[*]}"; fi
rm -rf "$WORK"
[ ${#FAILED[@]} -eq 0 ]
