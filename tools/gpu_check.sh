#!/usr/bin/env bash
# The GPU check and the README's CUDA figures in one command, on a machine with CUDA:
#
#   tools/gpu_check.sh [OUT_DIR]        (or `make gpu-check`; OUT_DIR defaults to $OUT, else output/gpu_check)
#
# 1. pytest -m gpu: parity with the official fixture on CUDA, the speed modes within their bounds, one
#    training step with each option, a one-process NCCL DDP step (tests/test_gpu.py);
# 2. tools/benchmark.py --device cuda: matmul peaks, inference per mode with its per-stage profile,
#    a training step per option, with CUDA memory figures.
# Writes device.txt, test_gpu.log, benchmark_cuda.{txt,json,err} to OUT_DIR; exits 0 when both passed,
# 1 when one failed, 2 when no CUDA device is visible (nothing is run then).
# Python: $PYTHON, else .venv/bin/python when present, else python3. Packages the machine lacks can come
# as wheels in .whl/ (tools/gpu_wheels.sh downloads them where PyPI is reachable); they are installed
# into a temporary folder, never into the interpreter's own site-packages.
set -uo pipefail
out="${1:-${OUT:-}}"
case "$out" in
    "") out="$(cd "$(dirname "$0")/.." && pwd)/output/gpu_check" ;;
    /*) ;;
    *) out="$PWD/$out" ;;  # relative to where the command was given
esac
cd "$(dirname "$0")/.."
py="${PYTHON:-}"
if [ -z "$py" ]; then
    if [ -x .venv/bin/python ]; then py=.venv/bin/python; else py=python3; fi
fi
if ! "$py" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_check: no CUDA device visible to $py (torch.cuda.is_available() is False or torch is missing); nothing was run" >&2
    exit 2
fi
if compgen -G ".whl/*.whl" > /dev/null; then
    site="$(mktemp -d -t partcatseg-site.XXXXXX)"
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" .whl/*.whl || {
        echo "gpu_check: could not install the wheels in .whl/ with $py" >&2; exit 1; }
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$out"
{ nvidia-smi 2>&1; "$py" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name())"; } > "$out/device.txt"
status=0
"$py" -m pytest -q -rs -m gpu -p no:cacheprovider 2>&1 | tee "$out/test_gpu.log" || status=1
"$py" tools/benchmark.py --config-file configs/zero_shot/partcatseg_voc.yaml --device cuda \
    --phases matmul_peak inference stages train_step --batch-size 1 --repeats 5 --random-text \
    --inference-variants default bf16 fp16 channels_last \
    --train-variants default checkpointing bf16 checkpointing+bf16 accumulate4 \
    --json "$out/benchmark_cuda.json" 2> "$out/benchmark_cuda.err" | tee "$out/benchmark_cuda.txt" || status=1
echo "gpu_check: results in $out (exit $status)"
exit $status
