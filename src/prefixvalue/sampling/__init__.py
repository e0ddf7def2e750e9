"""Sampling components: the sampling backends with per-row seeds, label positions, and the Monte Carlo
prefix labeller built on them.

- `sampler`: the `Sampler` protocol, its parameter and result types and argument checks;
- `noise`: counter-based per-row seeds and the token draw;
- `hf`: `HFSampler` (any transformers causal LM), its batched decode and the plain branch path, over
  `lm` (the model run with explicit caches) and `cache` (the KV-cache layouts);
- `trie` and `tree`: the trie path of `HFSampler.branch` and its shared-prefix attention;
- `vllm_sampler` and `backend`: the vLLM backend and the choice between backends;
- `positions` and `mc`: which prefixes are labelled, and the Monte Carlo labeller.
"""
