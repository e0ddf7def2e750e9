"""Sampling components: the batched KV-cache sampler with per-row seeds, label positions, and the
Monte Carlo prefix labeller built on the sampler.
"""
