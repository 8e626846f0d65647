# Two commands on a fresh machine: `make demo` and `make test` (both create .venv when missing).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# torch/torchvision pair; override on machines with other wheels, e.g. `make test TORCH_SPEC="torch torchvision"`
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

.PHONY: venv test test-fast demo clean

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

demo: venv
	@if [ -f tools/demo_toy.py ]; then $(PY) tools/demo_toy.py; else \
	  echo "The toy training demo arrives with train_net.py (issue 4)."; \
	  $(PY) -m partcatseg.selfcheck; fi

clean:
	rm -rf $(VENV) .pytest_cache
