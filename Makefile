# `make demo` and `make test` each set up .venv (idempotently) and run.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch first, pinned to the CPU wheel this machine carries, so that nothing pulls the CUDA build;
# the package itself asks only for torch>=2.6, which 2.13.0 satisfies.
TORCH_VERSION ?= 2.13.0

.PHONY: demo test test-slow test-pandas bench-quality bench-service clean

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

# The suite in parallel: one pytest-xdist worker a CPU (at most 4; tests/conftest.py says how many
# and gives each worker's torch its share of the CPUs), a test file to one worker (pyproject's
# --dist loadfile: its module fixtures trained once). TEST_WORKERS=0 runs it in this process,
# TEST_WORKERS=N in N workers; unset or empty, auto.
TEST_OPTIONS = -n $(or $(strip $(TEST_WORKERS)),auto)

test: $(VENV)/.installed
	$(BIN)/python -m pytest $(TEST_OPTIONS)

test-slow: $(VENV)/.installed
	$(BIN)/python -m pytest $(TEST_OPTIONS) -m slow

# The tests whose paths depend on the pandas version (CSV parsing, huge integers, JSON records), again on
# pandas releases that parse differently from the one installed: each put first on the path, no deps
PANDAS_OTHERS ?= 2.2.3 3.0.6
PANDAS_TESTS := tests/test_io.py tests/test_batch.py tests/test_preprocessing.py tests/test_instances.py
test-pandas: $(VENV)/.installed
	set -e; for v in $(PANDAS_OTHERS); do \
	    $(BIN)/pip install --quiet --upgrade --no-deps --target $(VENV)/pandas-$$v "pandas==$$v" pytz tzdata; \
	    echo "pandas $$v:"; PYTHONPATH=$(VENV)/pandas-$$v $(BIN)/python -m pytest -q -p no:cacheprovider $(PANDAS_TESTS); \
	done

bench-quality: $(VENV)/.installed
	$(BIN)/pip install --quiet -e ".[bench]"
	$(BIN)/python benchmarks/quality.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info

bench-service: $(VENV)/.installed
	$(BIN)/python benchmarks/service_load.py
