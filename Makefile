# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch and torchvision are pinned to the releases this machine's local index serves (see README);
# everything else resolves from the registry.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m pip install -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/fglens demo --out demo

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest tests fglens --doctest-modules
	$(VENV)/bin/ruff check fglens tests analyses

lint: $(STAMP)
	$(VENV)/bin/ruff check fglens tests analyses

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/fglens bench

clean:
	rm -rf $(VENV) demo
