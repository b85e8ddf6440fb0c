# `make demo` and `make test` each set up .venv (idempotently) and run.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch first, pinned to the CPU wheel this machine carries, so that nothing pulls the CUDA build;
# the package itself asks only for torch>=2.6, which 2.13.0 satisfies.
TORCH_VERSION ?= 2.13.0

.PHONY: demo test test-slow bench-quality bench-service clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.torch-$(TORCH_VERSION): | $(BIN)/python
	$(BIN)/pip install --quiet "torch==$(TORCH_VERSION)"
	touch $@

# the demo needs the core only; the tests need every extra
$(VENV)/.installed-core: pyproject.toml $(VENV)/.torch-$(TORCH_VERSION)
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed: pyproject.toml $(VENV)/.torch-$(TORCH_VERSION)
	$(BIN)/pip install --quiet -e ".[dev,images,plots,service,spark,onnx]"
	touch $@ $(VENV)/.installed-core

demo: $(VENV)/.installed-core
	$(BIN)/anomaly-vae demo

test: $(VENV)/.installed
	$(BIN)/python -m pytest

test-slow: $(VENV)/.installed
	$(BIN)/python -m pytest -m slow

bench-quality: $(VENV)/.installed
	$(BIN)/pip install --quiet -e ".[bench]"
	$(BIN)/python benchmarks/quality.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info

bench-service: $(VENV)/.installed
	$(BIN)/python benchmarks/service_load.py
