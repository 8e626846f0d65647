#!/usr/bin/env bash
# Download, where PyPI is reachable, the wheels of this project's dependencies that a CUDA machine with
# PyTorch, timm and the usual scientific stack may lack, into .whl/ for tools/gpu_check.sh:
#
#   tools/gpu_wheels.sh [PYTHON_VERSION]        (default 3.12: the interpreter of the target machine)
#
# fvcore and iopath are published as source only: they are built into pure-Python wheels here.
set -euo pipefail
cd "$(dirname "$0")/.."
version="${1:-3.12}"
py="${PYTHON:-python3}"
mkdir -p .whl
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version "$version" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
    open_clip_torch ftfy wcwidth yacs termcolor pycocotools gdown beautifulsoup4 soupsieve colorcet
"$py" -m pip wheel -q --no-deps -w .whl "fvcore>=0.1.5.post20221221" "iopath>=0.1.9"
ls .whl
