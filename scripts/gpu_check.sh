#!/usr/bin/env bash
# What only a GPU can tell, in one call of under 8 minutes:
#   1. the GPU-marked tests (about 1.5 minutes): tests/test_amp.py, tests/test_ddp.py (CUDA FP16 fit with the
#      GradScaler, bf16 without one, NMS/RoIAlign/losses under autocast, --gpus, 2-GPU DDP when there are 2) and
#      tests/test_monitoring.py (CUDA synchronisations per training step of `cvtrain fit`: none outside the
#      model except one per logging step);
#   2. scripts/bench_fit.py (about 5.5 minutes): `cvtrain fit` beside a plain PyTorch loop under FP32, FP16-AMP
#      and bf16-AMP on fasterrcnn_resnet50_fpn_v2 and fasterrcnn_mobilenet_v3_large_fpn (raccoon, 8 x 800 px),
#      deeplabv3_resnet50 (CamVid, 16 x 512 crops), and the fixed cost per step on a tiny detector at 64 px.
# Results go to <outdir>: device.txt, gpu_tests.log, gpu_tests.xml, bench_fit.txt, bench_fit.json, summary.txt.
#
#   scripts/gpu_check.sh <outdir>
#   BENCH_ARGS=--small scripts/gpu_check.sh <outdir>   # a dry run on a CPU machine (the GPU tests skip)
#
# On a machine without internet and without cvtrain's own dependencies (albumentations, pycocotools,
# pydantic), install them first from wheels made beside a checkout with ../shared/tools/gpu-wheels.sh; this
# script imports nothing else. The datasets travel in a git-ignored folder of the checkout (CamVid's training
# frames only: 29 MiB; raccoon: 14 MiB):
#   mkdir -p .bench-data/camvid/CamVid && cp -r ../shared/datasets/raccoon .bench-data/ &&
#   cp -r ../shared/datasets/camvid/CamVid/{val,valannot,val.txt} .bench-data/camvid/CamVid/
# and are found there (else at $CVTRAIN_SHARED/datasets or ../shared/datasets); a detection case whose dataset is
# missing trains on generated shapes and says so.
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
timeout 120 "$python" -m pytest -m gpu tests/test_amp.py tests/test_ddp.py tests/test_monitoring.py -v -rs \
    -p no:cacheprovider --durations=10 --junitxml="$out/gpu_tests.xml" > "$out/gpu_tests.log" 2>&1
tests=$?
tail -n 25 "$out/gpu_tests.log"
echo "GPU tests: exit $tests in $((SECONDS - started)) s"

started=$SECONDS
# shellcheck disable=SC2086  # BENCH_ARGS holds flags
# --budget: no run starts after 280 s, so the last one ends before the timeout; bench_fit.json is written after
# every run, so what ran is kept whatever happens.
timeout 330 "$python" scripts/bench_fit.py --budget 280 ${BENCH_ARGS:-} --json "$out/bench_fit.json" \
    > "$out/bench_fit.txt" 2>&1
bench=$?
cat "$out/bench_fit.txt"
echo "benchmark: exit $bench in $((SECONDS - started)) s"

printf 'gpu tests exit %s\nbenchmark exit %s\n' "$tests" "$bench" > "$out/summary.txt"
(( tests == 0 && bench == 0 ))
