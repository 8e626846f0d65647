# Two commands on a fresh machine: `make demo` and `make test` (both create .venv when missing).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# torch/torchvision pair; override on machines with other wheels, e.g. `make test TORCH_SPEC="torch torchvision"`
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

.PHONY: venv test test-fast test-gpu gpu-check demo app clean

$(VENV)/.installed: setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch, torchvision" 2>/dev/null || $(PIP) install -q $(TORCH_SPEC)
	$(PIP) install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

test: venv
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: venv
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

# The CUDA checks in one command (parity, speed-mode bounds, a training step with each option, a
# one-process NCCL DDP step, CUDA memory figures); they skip, saying so, without a GPU. The figures for
# the README: python tools/benchmark.py --device cuda ... (README "Performance").
test-gpu: venv
	$(PY) -m pytest -q -rs -m gpu $(PYTEST_ARGS)

# test-gpu plus the benchmark's CUDA figures, logs and JSON in one folder (tools/gpu_check.sh).
GPU_CHECK_OUT ?= output/gpu_check
gpu-check: venv
	PYTHON=$(PY) tools/gpu_check.sh $(GPU_CHECK_OUT)

# The toy demo: synthetic part dataset (if missing) -> train a reduced-width PartCATSeg from scratch
# on the CPU (300 iterations: 1 min 24 s on a 2-core Intel Xeon, idle) -> the table.
DETECTRON2_DATASETS ?= datasets
export DETECTRON2_DATASETS
DEMO_OUT ?= output/toy_demo

demo: venv
	@test -f $(DETECTRON2_DATASETS)/ToyPart/toy_meta.json || \
	  $(PY) tools/make_toy_dataset.py --out $(DETECTRON2_DATASETS)/ToyPart --num-train 120 --num-val 24 --quiet
	$(PY) train_net.py --config-file configs/toy/partcatseg_toy.yaml OUTPUT_DIR $(DEMO_OUT)
	@echo "Results (the table above): $(DEMO_OUT)/inference/results_table.txt; metrics.json, TensorBoard events and checkpoints in $(DEMO_OUT)"

# The web app (Gradio) on http://127.0.0.1:7860: released weights when present in weights/, else the toy
# model of `make demo` (trained first when output/toy_demo/model_final.pth is missing, as `make demo` does).
# Options: make app APP_ARGS="--model partcatseg_voc --device cuda --port 7861"
APP_ARGS ?=

app: venv
	$(PY) -m partcatseg.cli.app --toy-output $(DEMO_OUT) $(APP_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
