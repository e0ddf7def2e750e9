# make quickstart   set up (.venv, pinned CPU torch, the package) and run the whole loop on the embedded default
# make test         set up and run the test suite (slow tests excluded; .ci/run also runs `pytest -m slow`)
# make bench        set up and run benchmarks/ (figures land in benchmarks/results.json)
# make frontier     after `make quickstart`: the value-learning frontier, every training recipe at 3 budgets x 3 seeds
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

FRONTIER_TRACES ?= runs/frontier/traces

.PHONY: install quickstart test bench frontier lint clean

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

# 8000 prompts collected like the quickstart's 2000 (same policy, split, sampling), then 8 recipes x 3 budgets x 3
# seeds scored on the quickstart's held-out MC labels (about an hour on 2 CPU cores; an interrupted sweep resumes)
frontier: install
	$(VENV)/bin/prefixvalue collect model=data/policies/arith-tiny task=arith split=test \
		num_prompts=8000 samples=8 max_new_tokens=64 temperature=1.0 seed=0 out=$(FRONTIER_TRACES)
	$(PY) benchmarks/frontier.py $(QUICKSTART_OUT) traces=$(FRONTIER_TRACES)
	$(PY) benchmarks/ipvrm_diagnosis.py $(QUICKSTART_OUT) traces=$(FRONTIER_TRACES)

lint: install
	$(VENV)/bin/ruff check src recipes tests benchmarks
	$(VENV)/bin/ruff format --check src recipes tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
