# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# the test-only extras (torchao for the quantised-transformer tests), apart so that `make demo` runs without them
TEST_STAMP := $(VENV)/.installed-test

.PHONY: demo test test-fast lint bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch and torchvision are pinned to the releases this machine's local index serves (see README);
# everything else resolves from the registry.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m pip install -e ".[dev]"
	# VBench-2.0's prompt suite (fglens eval import vbench2), without its pinned dependencies, which would
	# replace diffusers, accelerate, transformers and more with older releases
	$(PY) -m pip install --no-deps "vbench2==0.1.1"
	touch $(STAMP)

# the viewer's browser tests drive Debian's chromium through its chromedriver (never a downloaded browser)
$(TEST_STAMP): $(STAMP)
	$(PY) -m pip install -e ".[dev,quant,view]"
	@if [ ! -x /usr/bin/chromedriver ]; then \
		if [ "$$(id -u)" = 0 ]; then apt-get update && apt-get install -y chromium chromium-driver; \
		else sudo apt-get update && sudo apt-get install -y chromium chromium-driver; fi; \
	fi
	touch $(TEST_STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/fglens demo --out demo

test: $(TEST_STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest tests fglens --doctest-modules
	$(VENV)/bin/ruff check fglens tests analyses docs

# the core in a few minutes: tracing, statistics, store, interventions, CLI, figures; leaves out the benchmark
# harness, the documentation's code blocks, the analyses, the evaluation and sweep runners and the doctests
FAST_SKIP := tests/benchmarks tests/test_docs_code.py tests/test_analyses.py tests/test_eval_runner.py \
	tests/test_sweep.py
test-fast: $(TEST_STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest tests -q $(addprefix --ignore=,$(FAST_SKIP))
	$(VENV)/bin/ruff check fglens tests analyses docs

lint: $(STAMP)
	$(VENV)/bin/ruff check fglens tests analyses docs

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/fglens bench

clean:
	rm -rf $(VENV) demo
