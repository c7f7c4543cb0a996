#!/usr/bin/env bash
# The GPU half of mixed precision and DDP (issue 5), in one call of under 8 minutes:
#   1. the GPU-marked tests of tests/test_amp.py and tests/test_ddp.py (CUDA FP16 fit with the GradScaler,
#      bf16 without one, NMS/RoIAlign/losses under CUDA autocast, --gpus mapping, 2-GPU DDP when there are 2);
#   2. the full benchmark, scripts/bench_amp.py: fasterrcnn_resnet50_fpn_v2 (8 x 800 px) and
#      deeplabv3_resnet50 (16 x 512 px) under FP32, FP16-AMP and bf16-AMP.
# Results go to <outdir>: device.txt, gpu_tests.log, gpu_tests.xml, bench_amp.txt, bench_amp.json, summary.txt.
#
#   scripts/gpu_check.sh <outdir>
#   BENCH_ARGS=--small scripts/gpu_check.sh <outdir>   # a dry run on a CPU machine (the GPU tests skip)
set -uo pipefail

out=${1:?usage: scripts/gpu_check.sh <outdir>}
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.."
if [[ -n "${PYTHON:-}" ]]; then python=$PYTHON
elif [[ -x .venv/bin/python ]]; then python=.venv/bin/python
else python=python3
fi
export PYTHONWARNINGS=ignore NO_ALBUMENTATIONS_UPDATE=1

{
  date -u
  nvidia-smi || true
  "$python" -c "import torch, torchvision, pytorch_lightning as pl
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'torchvision', torchvision.__version__, 'lightning', pl.__version__)
print('gpus', torch.cuda.device_count(), [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])
print('bf16 supported', torch.cuda.is_available() and torch.cuda.is_bf16_supported())"
} > "$out/device.txt" 2>&1
cat "$out/device.txt"

started=$SECONDS
# -m gpu selects the tests and the CUDA parameters marked gpu; they skip themselves without CUDA.
timeout 270 "$python" -m pytest -m gpu tests/test_amp.py tests/test_ddp.py -v -rs -p no:cacheprovider \
    --durations=10 --junitxml="$out/gpu_tests.xml" > "$out/gpu_tests.log" 2>&1
tests=$?
tail -n 25 "$out/gpu_tests.log"
echo "GPU tests: exit $tests in $((SECONDS - started)) s"

started=$SECONDS
# shellcheck disable=SC2086  # BENCH_ARGS holds flags
timeout 180 "$python" scripts/bench_amp.py ${BENCH_ARGS:-} --json "$out/bench_amp.json" > "$out/bench_amp.txt" 2>&1
bench=$?
cat "$out/bench_amp.txt"
echo "benchmark: exit $bench in $((SECONDS - started)) s"

printf 'gpu tests exit %s\nbenchmark exit %s\n' "$tests" "$bench" > "$out/summary.txt"
(( tests == 0 && bench == 0 ))
