# make quickstart   set up (.venv, pinned CPU torch, the package) and run the whole loop on the embedded default
# make test         set up and run the test suite (slow tests excluded; .ci/run also runs `pytest -m slow`)
# make bench        set up and run benchmarks/ (figures land in benchmarks/results.json)
#
# On a GPU machine, choose the torch build:  make test TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.prefixvalue-installed
QUICKSTART_CONFIG ?= recipes/quickstart.yaml
QUICKSTART_OUT ?= runs/quickstart

export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install quickstart test bench lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch first and pinned, so that resolving the package's dependencies never pulls CUDA wheels
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install $(TORCH_SPEC)
	$(PY) -m pip install -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# a run from an empty folder records its wall clock in benchmarks/results.json (quickstart_seconds)
quickstart: install
	$(VENV)/bin/prefixvalue quickstart --config $(QUICKSTART_CONFIG) out=$(QUICKSTART_OUT)
	$(PY) benchmarks/record_quickstart.py $(QUICKSTART_OUT)

test: install
	$(PY) -m pytest

bench: install
	@set -e; for f in benchmarks/bench_*.py; do echo "== $$f"; $(PY) $$f; done
	@echo "figures in benchmarks/results.json"

lint: install
	$(VENV)/bin/ruff check src recipes tests benchmarks
	$(VENV)/bin/ruff format --check src recipes tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
