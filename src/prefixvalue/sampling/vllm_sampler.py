"""`VLLMSampler`: the `Sampler` protocol on vLLM's offline engine (``vllm.LLM``), with prefix caching.

    prefixvalue collect ... backend=vllm            # in the vLLM environment: make install-vllm
    prefixvalue label ... backend=vllm
    make test-vllm                                  # tests/test_vllm.py on CPU

vLLM is imported lazily (the package imports without it). What the backend guarantees, against
`HFSampler` (docs/design.md, "Sampling backends"):

- **Seeds.** Each request gets vLLM's per-request seed ``row_seed(params.seed, key)`` folded to 63 bits,
  so a row's draw depends on its seed, its step and its logits, and the same command repeats itself.
  vLLM's noise is its own (not the counter-based noise of `HFSampler`): the two backends draw from the
  same distributions but not the same samples; labels agree in distribution, not row by row.
- **Log-probs.** The engine runs with ``logprobs_mode="processed_logprobs"`` and asks for the sampled
  token only (``logprobs=0``): the log-probability of the chosen token after temperature, top-k and top-p,
  the raw model distribution when greedy -- the `Generation` convention.
- **Stops.** EOS: the sampler's EOS ids (as `HFSampler` finds them: generation config, else tokenizer)
  are the engine's stop token ids (``ignore_eos`` keeps vLLM's own EOS rule out, so both backends stop
  on the same ids); the EOS token is kept in ``token_ids``. Stop strings are kept in the text
  (``include_stop_str_in_output``) and the token that completed one is kept. Finish reasons map to
  ``eos`` / ``stop`` / ``length`` as in `HFSampler`.
- **Branching.** ``branch`` sends each prefix ``sequences[seq][:cut]`` as token ids; requests go in
  (sequence, cut) order so that prefixes sharing KV blocks are cached by vLLM's automatic prefix caching
  (whole blocks only: a prefix shorter than the engine's block size is prefilled each time).
- **Stats.** ``prefill_tokens`` counts prompt tokens the engine computed (prompt length minus its
  prefix-cache hits, ``num_cached_tokens``), ``generated_tokens`` the sampled tokens, ``decode_steps``
  the engine iterations (each mixes prefill and decode; from vLLM's ``vllm:iteration_tokens_total``
  histogram count, 0 when the engine's stats are off), ``decode_tokens`` the decode rows (every sampled
  token but each request's first: vLLM shares no decode work between requests).
- **Progress.** Requests are submitted in chunks of `chunk_rows` (continuous batching inside a chunk);
  ``on_batch(rows, tokens)`` runs after each chunk.

Engines are cached per process by their arguments (`engine`), so in-process callers (the quickstart,
tests) that sample twice with the same model start the engine once (29 s for the tiny policy on the 2-core
CPU machine when quiet, 110-260 s while other jobs load it). On CPU the engine's KV cache size comes from ``VLLM_CPU_KVCACHE_SPACE`` (GiB); `engine` sets it
to `DEFAULT_CPU_KVCACHE_GIB` when unset. vLLM starts its engine core in a spawned process, so scripts
that use this module need the ``if __name__ == "__main__":`` guard.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .noise import row_seed
from .sampler import (
    BranchRequest,
    Generation,
    OnBatch,
    SamplerStats,
    SamplingParams,
    check_branch,
    check_generate,
)

#: ``VLLM_CPU_KVCACHE_SPACE`` (GiB of KV cache on CPU) set when unset; enough for the tiny policy and
#: small models; raise it for long contexts or many concurrent rows
DEFAULT_CPU_KVCACHE_GIB = 1
#: vLLM's per-request seed is folded into this many bits (a non-negative int64)
SEED_BITS = 63

_ENGINES: dict[tuple[Any, ...], Any] = {}


def fold_seed(seed: int) -> int:
    """A 64-bit row seed (`row_seed`) as a non-negative 63-bit integer, the range vLLM's seed takes."""
    return int(seed) & ((1 << SEED_BITS) - 1)


def _engine_dtype(dtype: str) -> str:
    """vLLM's dtype name for ours: ``auto`` as `prefixvalue.policies.resolve_dtype` reads it (bfloat16 on
    a CUDA device that supports it, else float32), so both backends run a model in the same dtype."""
    import torch

    from ..policies import resolve_dtype

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return str(resolve_dtype(dtype, device)).removeprefix("torch.")


def _own_gpus(tensor_parallel_size: int) -> None:
    """Under a launcher with several processes on this machine (``LOCAL_WORLD_SIZE`` > 1, as
    ``accelerate launch`` sets), give this process's engine its own GPUs: local rank r gets GPUs
    ``[r * tp, (r + 1) * tp)`` of those visible, through ``CUDA_VISIBLE_DEVICES``, which vLLM's engine
    process reads when it starts (otherwise every process's engine would start on the first GPU).
    Nothing changes on CPU or with one process. Written for GPU machines; not exercised by the CPU tests."""
    import torch

    from ..config import ConfigError

    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if local_world <= 1 or not torch.cuda.is_available():
        return
    rank = int(os.environ.get("LOCAL_RANK", "0"))
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    visible = given.split(",") if given else [str(i) for i in range(torch.cuda.device_count())]
    mine = visible[rank * tensor_parallel_size : (rank + 1) * tensor_parallel_size]
    if len(mine) < tensor_parallel_size:
        raise ConfigError(
            f"backend=vllm: {local_world} processes x vllm_tensor_parallel_size={tensor_parallel_size} need "
            f"{local_world * tensor_parallel_size} GPUs on this machine, {len(visible)} are visible"
        )
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(mine)


def engine(
    model: str,
    *,
    dtype: str = "auto",
    revision: str | None = None,
    trust_remote_code: bool = False,
    max_num_seqs: int = 256,
    gpu_memory_utilization: float = 0.9,
    tensor_parallel_size: int = 1,
    max_model_len: int | None = None,
    seed: int = 0,
) -> Any:
    """A ``vllm.LLM`` for these arguments, started once per process and cached (see the module docstring).

    The engine always has prefix caching on, returns processed log-probs and keeps its stats on (they
    give `SamplerStats.decode_steps`). `seed` seeds only requests without their own seed (none here).
    """
    path = Path(model).expanduser()
    name = str(path.resolve()) if path.exists() else model
    key = (
        name,
        _engine_dtype(dtype),
        revision,
        trust_remote_code,
        max_num_seqs,
        gpu_memory_utilization,
        tensor_parallel_size,
        max_model_len,
        seed,
    )
    if key in _ENGINES:
        return _ENGINES[key]
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(DEFAULT_CPU_KVCACHE_GIB))
    _own_gpus(tensor_parallel_size)
    from vllm import LLM
    from vllm.platforms import current_platform

    kwargs: dict[str, Any] = {}
    if max_model_len is not None:
        kwargs["max_model_len"] = max_model_len
    if current_platform.is_cpu():
        # vLLM 0.32 on CPU: a seeded request whose prompt is split over engine steps (chunked prefill) kills
        # the engine ("CPU Generator does not use offset": the worker rewinds the request's generator, which
        # CPU generators cannot). Without chunked prefill every prompt is prefilled in one step.
        kwargs["enable_chunked_prefill"] = False
    llm = LLM(
        model=name,
        tokenizer=name,
        revision=revision,
        trust_remote_code=trust_remote_code,
        dtype=key[1],
        seed=seed,
        enable_prefix_caching=True,
        logprobs_mode="processed_logprobs",
        disable_log_stats=False,
        max_num_seqs=max_num_seqs,
        gpu_memory_utilization=gpu_memory_utilization,
        tensor_parallel_size=tensor_parallel_size,
        **kwargs,
    )
    _ENGINES[key] = llm
    return llm


def close_engines() -> None:
    """Shut down every cached engine (frees its process and memory)."""
    while _ENGINES:
        _, llm = _ENGINES.popitem()
        shutdown = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if shutdown is not None and hasattr(shutdown, "shutdown"):
            shutdown.shutdown()


def _eos_ids(model: str, tokenizer: Any | None, revision: str | None, trust_remote_code: bool) -> list[int]:
    """EOS ids as `HFSampler` finds them: the model's generation config, else the tokenizer's EOS."""
    from transformers import AutoConfig, GenerationConfig

    kw: dict[str, Any] = {"revision": revision, "trust_remote_code": trust_remote_code}
    try:
        gen = GenerationConfig.from_pretrained(model, **kw)
    except OSError:  # no generation_config.json: transformers derives it from the model config
        gen = GenerationConfig.from_model_config(AutoConfig.from_pretrained(model, **kw))
    eos: Any = gen.eos_token_id
    if eos is None and tokenizer is not None:
        eos = tokenizer.eos_token_id
    return [] if eos is None else ([int(eos)] if isinstance(eos, int) else [int(e) for e in eos])


def _iterations(llm: Any) -> int | None:
    """Engine iterations so far (count of ``vllm:iteration_tokens_total``), None when stats are off."""
    try:
        metrics = llm.get_metrics()
    except (AssertionError, AttributeError, RuntimeError, ValueError):
        return None
    for m in metrics:
        if m.name == "vllm:iteration_tokens_total":
            return int(getattr(m, "count", 0))
    return None


class VLLMSampler:
    """`Sampler` on a vLLM engine; see the module docstring for what matches `HFSampler` and what does not.

    `model`: a local folder or hub name vLLM can load. `tokenizer`: the caller's Hugging Face tokenizer of
    the model (used only to find EOS when the generation config names none). `max_batch_rows` is the
    engine's ``max_num_seqs`` (most sequences decoded together); `chunk_rows` requests go to the engine
    per call (progress granularity; default 8 x max_batch_rows).
    """

    def __init__(
        self,
        model: str,
        tokenizer: Any | None = None,
        max_batch_rows: int = 256,
        eos_token_ids: Sequence[int] | None = None,
        *,
        dtype: str = "auto",
        revision: str | None = None,
        trust_remote_code: bool = False,
        gpu_memory_utilization: float = 0.9,
        tensor_parallel_size: int = 1,
        max_model_len: int | None = None,
        chunk_rows: int | None = None,
    ) -> None:
        self.llm = engine(
            model,
            dtype=dtype,
            revision=revision,
            trust_remote_code=trust_remote_code,
            max_num_seqs=int(max_batch_rows),
            gpu_memory_utilization=gpu_memory_utilization,
            tensor_parallel_size=tensor_parallel_size,
            max_model_len=max_model_len,
        )
        self.tokenizer = tokenizer
        self.chunk_rows = int(chunk_rows or 8 * max_batch_rows)
        if eos_token_ids is None:
            eos_token_ids = _eos_ids(model, tokenizer, revision, trust_remote_code)
        self.eos_token_ids = [int(e) for e in eos_token_ids]
        self.stats = SamplerStats()

    @property
    def max_model_len(self) -> int:
        """Positions the engine holds per sequence (prompt plus completion)."""
        return int(self.llm.llm_engine.model_config.max_model_len)

    @property
    def vocab_size(self) -> int:
        """Rows of the model's output embedding (the token ids it can sample)."""
        return int(self.llm.llm_engine.model_config.get_vocab_size())

    # -- public API -------------------------------------------------------------------------
    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        keys: Sequence[str],
        params: SamplingParams,
        on_batch: OnBatch | None = None,
    ) -> list[Generation]:
        """One continuation per prompt; see `Sampler.generate`. Row `i` is seeded by
        ``(params.seed, keys[i])``; `on_batch(rows, tokens)` runs after each chunk of requests."""
        check_generate(prompts, keys)
        rows = [(list(map(int, p)), k, params.max_new_tokens) for p, k in zip(prompts, keys)]
        return self._run(rows, params, list(range(len(rows))), on_batch)

    def branch(
        self,
        sequences: Sequence[Sequence[int]],
        requests: Sequence[BranchRequest],
        params: SamplingParams,
        on_batch: OnBatch | None = None,
    ) -> list[Generation]:
        """Continuations of prefixes ``sequences[r.seq][:r.cut]``, in request order (see `Sampler.branch`)."""
        check_branch(sequences, requests)
        rows = [(list(map(int, sequences[r.seq][: r.cut])), r.key, r.budget(params)) for r in requests]
        # prefixes of one sequence next to each other, shortest first: their KV blocks are cached for the next
        order = sorted(range(len(requests)), key=lambda i: (requests[i].seq, requests[i].cut, i))
        return self._run(rows, params, order, on_batch)

    # -- internals --------------------------------------------------------------------------
    def _sampling_params(self, params: SamplingParams, key: str, max_tokens: int) -> Any:
        from vllm import SamplingParams as VSamplingParams

        return VSamplingParams(
            n=1,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=params.top_k,
            max_tokens=max_tokens,
            seed=fold_seed(row_seed(params.seed, key)),
            stop=list(params.stop) or None,
            include_stop_str_in_output=True,
            stop_token_ids=list(self.eos_token_ids) or None,
            ignore_eos=True,  # EOS is the stop_token_ids above, the ids HFSampler stops on
            logprobs=0,  # the sampled token's log-prob only
            skip_special_tokens=True,
        )

    def _run(
        self,
        rows: list[tuple[list[int], str, int]],
        params: SamplingParams,
        order: list[int],
        on_batch: OnBatch | None,
    ) -> list[Generation]:
        from vllm.inputs import TokensPrompt

        limit = self.max_model_len
        out: list[Generation | None] = [None] * len(rows)
        for c0 in range(0, len(order), self.chunk_rows):
            idx = order[c0 : c0 + self.chunk_rows]
            prompts, sps = [], []
            for i in idx:
                ids, key, max_tokens = rows[i]
                if len(ids) >= limit:
                    raise ValueError(f"prompt of {len(ids)} tokens leaves no room in the engine's {limit} positions")
                prompts.append(TokensPrompt(prompt_token_ids=ids))
                # the engine refuses a request past its context: the continuation ends there ("length")
                sps.append(self._sampling_params(params, key, min(max_tokens, limit - len(ids))))
            steps_before = _iterations(self.llm)
            results = self.llm.generate(prompts, sps, use_tqdm=False)
            steps_after = _iterations(self.llm)
            tokens = 0
            for i, res in zip(idx, results):
                gen = self._generation(res.outputs[0])
                out[i] = gen
                tokens += len(gen.token_ids)
                cached = int(getattr(res, "num_cached_tokens", 0) or 0)
                self.stats.prefill_tokens += len(rows[i][0]) - cached
            self.stats.generated_tokens += tokens
            # each sampled token after a request's first ran one decode row (vLLM shares no decode work)
            self.stats.decode_tokens += tokens - sum(1 for i in idx if out[i] is not None and out[i].token_ids)
            if steps_before is not None and steps_after is not None:
                self.stats.decode_steps += steps_after - steps_before
            if on_batch is not None:
                on_batch(len(idx), tokens)
        return [g for g in out if g is not None]

    def _generation(self, completion: Any) -> Generation:
        """Our `Generation` of one vLLM ``CompletionOutput``."""
        token_ids = [int(t) for t in completion.token_ids]
        logprobs = []
        for t, entry in zip(token_ids, completion.logprobs or []):
            logprobs.append(float(entry[t].logprob))
        if len(logprobs) != len(token_ids):
            raise RuntimeError(f"vLLM returned {len(logprobs)} log-probs for {len(token_ids)} tokens")
        if completion.finish_reason == "length":
            reason = "length"
        elif isinstance(completion.stop_reason, str):
            reason = "stop"
        elif completion.finish_reason == "stop":  # a stop token id: one of the EOS ids
            reason = "eos"
        else:
            raise RuntimeError(f"vLLM finished a request with reason {completion.finish_reason!r}")
        return Generation(token_ids, logprobs, reason)


def vllm_sampler_for(cfg: Any, model: str, load: Any, tokenizer: Any) -> VLLMSampler:
    """The `VLLMSampler` a stage config asks for (`prefixvalue.sampling.backend.SamplerBackendConfig`:
    ``dtype``, ``batch_rows``, the ``vllm_*`` options) on `model` with loading options `load` (revision and
    trust_remote_code apply; attn_implementation and device_map are transformers' and do not)."""
    return VLLMSampler(
        model,
        tokenizer,
        max_batch_rows=cfg.batch_rows,
        dtype=cfg.dtype,
        revision=load.revision,
        trust_remote_code=load.trust_remote_code,
        gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
        tensor_parallel_size=cfg.vllm_tensor_parallel_size,
        max_model_len=cfg.vllm_max_model_len,
    )


__all__ = ["DEFAULT_CPU_KVCACHE_GIB", "VLLMSampler", "close_engines", "engine", "fold_seed", "vllm_sampler_for"]
