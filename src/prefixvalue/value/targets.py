"""Training targets for value models beyond the trace's own outcome (docs/design.md, "Training signals"):
the formulas; which signal uses which, and when, is `prefixvalue.value.signals` (its registry, `SIGNALS`).

- ``outcome``: every prefix of a trace is trained towards the trace's 0/1 outcome (the default).
- ``siblings``: every prefix is trained towards the mean outcome of the traces of the same prompt that pass
  through it (`sibling_targets`), a soft label with a known count, free from the traces alone.
- ``td``: every prefix is trained towards the λ-return built from the model's own stop-gradient
  predictions later along the trace and the outcome at its end (`td_lambda_targets`).
- ``reference``: on the path of the prompt's reference solution (the trace has written exactly its first p
  tokens), the probability that the policy writes the rest of it, Π_{t≥p} π(g_t | s ⊕ g_<t)
  (`reference_path_values`, one forward pass per training prompt); off that path the sibling label
  (`attach_reference_targets`).
- soft Monte Carlo labels (``labels=DIR`` of `prefixvalue train`) replace any of these where they exist.

All targets are float32 probabilities in [0, 1], end to end: nothing is rounded to a class.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import datasets
import numpy as np
import torch

from ..data.collate import ERROR_TARGETS, PREFIX_TARGETS
from ..data.steps import has_step_labels, step_facts


def sibling_targets(
    prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], outcomes: Sequence[float]
) -> tuple[list[list[float]], list[list[int]]]:
    """Mean outcome and count of the traces that share each prefix, per trace and position 0..T.

    Traces are grouped by prompt token ids (a shared prefix is the same model input); within a group a
    trie over completion tokens holds the
    outcome sum and trace count of every prefix. Position p of a trace gets the mean outcome of all traces
    of its prompt whose first p completion tokens equal its own (p = 0: every trace of the prompt; p = T:
    the traces identical to it). A shared prefix appears once in each of its n traces, so in the loss it
    carries n terms: it is weighted by its count. Returns ``(means, counts)``.
    """
    if not len(prompts) == len(completions) == len(outcomes):
        raise ValueError("prompts, completions and outcomes must have the same length")
    node_of: dict[tuple, int] = {}
    sums: list[float] = []
    counts: list[int] = []
    paths: list[list[int]] = []

    def node(key: tuple) -> int:
        n = node_of.get(key)
        if n is None:
            n = node_of[key] = len(sums)
            sums.append(0.0)
            counts.append(0)
        return n

    for prompt, comp, r in zip(prompts, completions, outcomes):
        r = float(r)
        if not 0.0 <= r <= 1.0:
            raise ValueError(f"outcome {r} outside [0, 1]: sibling labels average outcomes")
        cur = node(("prompt", *map(int, prompt)))
        path = [cur]
        for tok in comp:
            cur = node((cur, int(tok)))
            path.append(cur)
        for n in path:
            sums[n] += r
            counts[n] += 1
        paths.append(path)
    means = [[sums[n] / counts[n] for n in path] for path in paths]
    return means, [[counts[n] for n in path] for path in paths]


def attach_sibling_targets(ds: datasets.Dataset) -> tuple[datasets.Dataset, dict[str, float]]:
    """`ds` (training traces) with ``prefix_targets`` holding the sibling label at every position where no MC
    label is given (MC labels, when attached, win); returns it and `counts_summary` of the sharing found."""
    means, counts = sibling_targets(ds["prompt_ids"], ds["completion_ids"], ds["outcome"])
    merged = [[m if _unlabelled(g, p) else g[p] for p, m in enumerate(row)] for row, g in zip(means, _given_labels(ds))]
    return _with_column(ds, PREFIX_TARGETS, merged), counts_summary(counts)


def _given_labels(ds: datasets.Dataset) -> list[Any]:
    """Each trace's MC labels as attached (``prefix_targets``: a float or None per position), or None per trace."""
    return ds[PREFIX_TARGETS] if PREFIX_TARGETS in ds.column_names else [None] * len(ds)


def _unlabelled(given: Any, p: int) -> bool:
    """Whether position `p` of a trace with attached labels `given` has no MC label (None or NaN)."""
    return given is None or given[p] is None or given[p] != given[p]


def _with_column(ds: datasets.Dataset, name: str, rows: list[list[float]]) -> datasets.Dataset:
    """`ds` with float32 list column `name` set to `rows` (replacing one of that name)."""
    if name in ds.column_names:
        ds = ds.remove_columns(name)
    # in memory: a selection of a traces folder would otherwise write its flattened copy into that folder (a cache
    # file the folder's run did not write, which a rerun of the collect refuses)
    ds = ds.flatten_indices(keep_in_memory=True)
    return ds.add_column(name, rows, feature=datasets.List(datasets.Value("float32")))


#: the key of a trace's ``prompt_meta`` (JSON) holding the prompt's reference solution: the completion text the
#: policy would write when right (task=arith writes it; a jsonl task with ``solution_field``)
SOLUTION_KEY = "solution"


def reference_solutions(ds: datasets.Dataset, tokenizer: Any) -> dict[tuple[int, ...], list[int]]:
    """Each prompt's reference completion as token ids, keyed by the prompt's token ids: the ``solution`` of its
    traces' ``prompt_meta`` tokenized without special tokens, followed by the EOS token when the traces end their
    completions with it (so the path ends where a finished trace ends). Prompts without one are left out."""
    eos = getattr(tokenizer, "eos_token_id", None)
    ends_eos = eos is not None and any(c and c[-1] == eos for c in ds["completion_ids"])
    out: dict[tuple[int, ...], list[int]] = {}
    metas = ds["prompt_meta"] if "prompt_meta" in ds.column_names else [None] * len(ds)
    for prompt, meta in zip(ds["prompt_ids"], metas):
        key = tuple(int(t) for t in prompt)
        if key in out or not meta:
            continue
        solution = json.loads(meta).get(SOLUTION_KEY)
        if isinstance(solution, str) and solution:
            ids = list(tokenizer(solution, add_special_tokens=False)["input_ids"])
            out[key] = ids + ([eos] if ends_eos else [])
    return out


@torch.no_grad()
def reference_path_values(
    policy: Any, references: Mapping[tuple[int, ...], Sequence[int]], temperature: float = 1.0, batch_size: int = 16
) -> dict[tuple[int, ...], np.ndarray]:
    """V_ref(p) = Π_{t≥p} π(g_t | prompt ⊕ g_<t), p = 0..len(g), for each prompt (token ids) and its reference
    completion g: the probability that the policy, sampling at `temperature` from the prefix that has written g's
    first p tokens, writes the rest of g exactly (1.0 at p = len(g)). One forward pass over prompt ⊕ g per prompt,
    right-padded batches of `batch_size` on the policy's device; float64 arrays of length len(g) + 1. A lower bound
    of the value there: other correct completions add to it."""
    device = next(policy.parameters()).device
    items = list(references.items())
    out: dict[tuple[int, ...], np.ndarray] = {}
    for i in range(0, len(items), batch_size):
        chunk = items[i : i + batch_size]
        seqs = [list(p) + list(g) for p, g in chunk]
        width = max(len(x) for x in seqs)
        ids = torch.zeros(len(seqs), width, dtype=torch.long)
        mask = torch.zeros(len(seqs), width, dtype=torch.long)
        for j, x in enumerate(seqs):
            ids[j, : len(x)] = torch.tensor(x)
            mask[j, : len(x)] = 1
        logits = policy(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits.float()
        logp = torch.log_softmax(logits / temperature, dim=-1).cpu()
        for j, (prompt, g) in enumerate(chunk):
            n, m = len(prompt), len(g)
            lp = logp[j, n - 1 : n + m - 1].gather(1, torch.tensor(list(g))[:, None]).squeeze(1).double().numpy()
            suffix = np.concatenate([np.cumsum(lp[::-1])[::-1], [0.0]])  # suffix[p] = Σ_{t≥p} log π(g_t | …)
            out[prompt] = np.exp(suffix)
    return out


def attach_reference_targets(
    ds: datasets.Dataset,
    references: Mapping[tuple[int, ...], Sequence[int]],
    values: Mapping[tuple[int, ...], np.ndarray],
) -> tuple[datasets.Dataset, dict[str, float]]:
    """`ds` (training traces) with ``prefix_targets``: at each position p < T where the trace has written exactly the
    first p tokens of its prompt's reference completion (`references`), the reference-path value `values`[prompt][p]
    (`reference_path_values`); elsewhere, the finished trace (p = T) included, the sibling label (`sibling_targets`);
    MC labels, when attached, win.
    Returns it and what was found: prompts with a reference, the share of positions on a reference path and the
    mean target there."""
    means, _ = sibling_targets(ds["prompt_ids"], ds["completion_ids"], ds["outcome"])
    merged, on_path, on_sum = [], 0, 0.0
    for prompt, comp, row, g in zip(ds["prompt_ids"], ds["completion_ids"], means, _given_labels(ds)):
        key = tuple(int(t) for t in prompt)
        ref, v = references.get(key), values.get(key)
        m = -1  # the longest on-path prefix: completion[:m] == reference[:m]
        if ref is not None and v is not None:
            m = 0
            while m < min(len(comp), len(ref)) and int(comp[m]) == int(ref[m]):
                m += 1
        targets = []
        for p, sib in enumerate(row):
            if not _unlabelled(g, p):
                targets.append(g[p])
            elif p <= m and p < len(comp):  # the finished trace itself (p = T) is worth its outcome
                targets.append(float(v[p]))
                on_path, on_sum = on_path + 1, on_sum + float(v[p])
            else:
                targets.append(sib)
        merged.append(targets)
    n = sum(len(r) for r in merged)
    return _with_column(ds, PREFIX_TARGETS, merged), {
        "prompts_with_reference": len(references),
        "on_path_share": on_path / max(n, 1),
        "on_path_mean_target": on_sum / on_path if on_path else None,
    }


def sampling_temperature(ds: datasets.Dataset) -> tuple[float, str | None]:
    """The traces' sampling temperature (column ``sampling``, default 1.0) and, when they truncated the
    distribution (top_k > 0 or top_p < 1), why a reference-path value under the full distribution does not hold."""
    base = json.loads(ds[0]["sampling"]) if "sampling" in ds.column_names and len(ds) and ds[0]["sampling"] else {}
    temperature = float(base.get("temperature", 1.0))
    top_k, top_p = int(base.get("top_k") or 0), float(base.get("top_p", 1.0))
    if temperature <= 0:
        return temperature, "the traces were decoded greedily (temperature 0)"
    why = f"the traces were sampled with top_k={top_k}, top_p={top_p}" if top_k > 0 or top_p < 1.0 else None
    return temperature, why


def attach_error_targets(ds: datasets.Dataset) -> tuple[datasets.Dataset, dict[str, float]]:
    """`ds` (training traces with exact step labels) with ``error_targets``: at every position p = 0..T, 1.0 when a
    wrong step has been written by p (`prefixvalue.data.steps.step_facts`), else 0.0, the target of the error head
    (docs/design.md, "Error head"); returns it and the share of positions after an error. Raises ValueError when a
    trace carries no step labels."""
    if not has_step_labels(ds):
        raise ValueError(
            "value_model.error_head=true trains on exact step labels, and these traces carry none (a task with step "
            "verdicts, e.g. task=arith, records step_spans and step_labels)"
        )
    rows = ds.select_columns(["completion_ids", "step_spans", "step_labels"])
    flags = [
        step_facts(r["step_spans"] or [], r["step_labels"], len(r["completion_ids"]))[0].astype(float).tolist()
        for r in rows
    ]
    n = sum(len(f) for f in flags)
    return _with_column(ds, ERROR_TARGETS, flags), {
        "positions": n,
        "error_share": sum(sum(f) for f in flags) / max(n, 1),
    }


@torch.no_grad()
def td_lambda_targets(
    values: torch.Tensor, outcome: torch.Tensor, completion_lengths: torch.Tensor, lam: float
) -> torch.Tensor:
    """λ-returns G(p), p = 0..Tmax, from the model's own predictions (no gradient flows through them).

    ``values`` [B, Tmax+1] are the model's P̂(s_p); ``outcome`` [B] the verified outcome, which is the value
    of the complete trace (p = T). Backwards from T: G(T) = outcome, G(p) = (1 − λ)·P̂(p + 1) + λ·G(p + 1),
    with P̂(T) replaced by the outcome. λ = 1 gives the outcome at every prefix; λ = 0 gives TD(0), the next
    prefix's prediction. Columns past a row's T are the outcome (they are masked by the loss anyway).
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"td_lambda must be in [0, 1], got {lam}")
    v = values.detach().float()
    b, width = v.shape
    pos = torch.arange(width, device=v.device)[None, :]
    r = outcome.float()[:, None].expand(b, width)
    # the value of a finished trace is its outcome: P̂ at p >= T is replaced by it
    v = torch.where(pos >= completion_lengths[:, None], r, v)
    g = r.clone()
    for p in range(width - 2, -1, -1):
        g_p = (1.0 - lam) * v[:, p + 1] + lam * g[:, p + 1]
        g[:, p] = torch.where(completion_lengths > p, g_p, r[:, p])
    return g


def counts_summary(counts: list[list[int]]) -> dict[str, float]:
    """How much sharing the sibling labels found: share of prefixes seen by more than one trace, mean count."""
    flat = np.fromiter((c for row in counts for c in row), dtype=np.int64)
    if flat.size == 0:
        return {"prefixes": 0, "shared_fraction": 0.0, "mean_count": 0.0}
    return {
        "prefixes": int(flat.size),
        "shared_fraction": float((flat > 1).mean()),
        "mean_count": float(flat.mean()),
    }
