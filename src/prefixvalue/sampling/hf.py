"""`HFSampler`: the `Sampler` over any Hugging Face causal LM with a KV cache, with its own batched decode loop.

`generate` prefills each batch of prompts once and decodes it; `branch` continues prefixes
``sequences[i][:cut]`` from one forward over each sequence, so a prefix is never re-encoded, on one of two
paths that give the same continuations: the plain path here (each row's cache sliced from its sequence's,
then decoded like `generate`'s rows) or the trie path (`prefixvalue.sampling.trie`), chosen on the first
call. Rows are seeded per key (`prefixvalue.sampling.noise`), so a row's tokens do not depend on its batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .cache import cache_layers, grow_cache
from .lm import CausalLM, Continuations
from .noise import fold_seeds, row_seed, sample_tokens
from .sampler import (
    BranchRequest,
    Generation,
    OnBatch,
    SamplerStats,
    SamplingParams,
    check_branch,
    check_generate,
)
from .tree import register as register_tree
from .tree import supports_tree
from .trie import branch_trie, logits_budget


@dataclass
class _Rows:
    """Decode state of the rows still running (tensors indexed by live row)."""

    index: torch.Tensor  # original row index, int64 (rows,)
    mask: torch.Tensor  # attention mask over cache columns, int64 (rows, cache_len)
    pos: torch.Tensor  # position id of the next token, int64 (rows,)
    seeds: torch.Tensor  # int64 (rows,)
    limits: list[int]  # max new tokens per original row
    logits: torch.Tensor  # next-token logits (rows, vocab)


class HFSampler:
    """`Sampler` over any Hugging Face causal LM with a KV cache, with its own batched decode loop.

    Prompts are left-padded with explicit ``position_ids`` (so padding never shifts positions),
    finished rows are compacted out of the batch and all-padding cache columns are trimmed. At most
    `max_batch_rows` rows decode together.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any | None = None,
        max_batch_rows: int = 256,
        eos_token_ids: Sequence[int] | None = None,
        tree_attention: bool = True,
        max_tree_rows: int = 4096,
    ) -> None:
        self.max_batch_rows = int(max_batch_rows)
        #: rows of one `branch` batch on the trie path (a row there is a node id and a seed, not a KV copy)
        self.max_tree_rows = int(max_tree_rows)
        self.stats = SamplerStats()
        #: the model, run with this sampler's caches; its prefills and the trie's forwards count into `stats`
        self.lm = CausalLM(model, tokenizer, eos_token_ids, self.stats)
        #: shared-prefix attention for `branch` (see `prefixvalue.sampling.tree`): None until the first
        #: branch call decides it (True when the model supports it and it matched the plain path there)
        self.tree_attention: bool | None = None if tree_attention else False
        #: why the plain path is used, when it is
        self.tree_attention_reason: str | None = None if tree_attention else "turned off"

    @property
    def model(self) -> Any:
        return self.lm.model

    @property
    def tokenizer(self) -> Any | None:
        return self.lm.tokenizer

    @property
    def eos_token_ids(self) -> list[int]:
        """The token ids that end a row (given, else the model's or the tokenizer's EOS)."""
        return self.lm.eos_token_ids

    @property
    def device(self) -> torch.device:
        return self.lm.device

    # -- public API -------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        keys: Sequence[str],
        params: SamplingParams,
        on_batch: OnBatch | None = None,
    ) -> list[Generation]:
        """One continuation per prompt; see `Sampler.generate`. Batches rows of similar length;
        `on_batch(rows, tokens)` is called after each batch."""
        check_generate(prompts, keys)
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        out: list[Generation | None] = [None] * len(prompts)
        for b0 in range(0, len(order), self.max_batch_rows):
            idx = order[b0 : b0 + self.max_batch_rows]
            rows = [list(map(int, prompts[i])) for i in idx]
            cache, mask, pos, last_logits = self.lm.prefill(rows)
            cache = grow_cache([(la.keys, la.values) for la in cache_layers(cache)], min(params.max_new_tokens, 64))
            state = _Rows(
                index=torch.arange(len(idx), device=self.device),
                mask=mask,
                pos=pos,
                seeds=fold_seeds([row_seed(params.seed, keys[i]) for i in idx], self.device),
                limits=[params.max_new_tokens] * len(idx),
                logits=last_logits,
            )
            before = self.stats.generated_tokens
            for j, gen in enumerate(self._decode(cache, state, params)):
                out[idx[j]] = gen
            if on_batch is not None:
                on_batch(len(idx), self.stats.generated_tokens - before)
        return [g for g in out if g is not None]

    @torch.no_grad()
    def generate_shared(
        self,
        prompts: Sequence[Sequence[int]],
        keys: Sequence[str],
        params: SamplingParams,
        on_batch: OnBatch | None = None,
    ) -> list[Generation]:
        """`generate` (same arguments, same continuations) with the rows of one prompt sharing it: equal
        prompts become one sequence, each row a `branch` request cut at the sequence's full length with its
        own key, so that on the trie path each prompt is prefilled once and rows that draw the same tokens
        share their forwards. Where the trie path cannot serve the model (`tree_attention` is False, decided
        on the first call as for `branch`), the rows run through `generate`. docs/design.md ("Collect on
        the trie path")."""
        check_generate(prompts, keys)
        if not prompts:
            return []
        index: dict[tuple[int, ...], int] = {}
        requests = []
        for p, key in zip(prompts, keys):
            ids = tuple(map(int, p))
            requests.append(BranchRequest(index.setdefault(ids, len(index)), len(ids), key))
        sequences = [list(ids) for ids in index]
        if not self._use_tree(sequences, requests, params):
            return self.generate(prompts, keys, params, on_batch)
        return self.branch(sequences, requests, params, on_batch)

    @torch.no_grad()
    def branch(
        self,
        sequences: Sequence[Sequence[int]],
        requests: Sequence[BranchRequest],
        params: SamplingParams,
        on_batch: OnBatch | None = None,
    ) -> list[Generation]:
        """Continuations of prefixes ``sequences[r.seq][:r.cut]``, in request order; `on_batch(rows,
        tokens)` is called after each batch.

        Two paths give the same continuations (each row samples with its own seed from the same
        logits); `tree_attention` says which one runs:

        - the trie path (`prefixvalue.sampling.trie`, for models whose attention dispatches through
          transformers' AttentionInterface): each batch of up to `max_tree_rows` rows, grouped by
          sequence, prefills its sequences once and decodes only the distinct token histories its rows
          reach;
        - the plain path: each batch of up to `max_batch_rows` rows prefills its sequences once, up to
          the longest cut, and builds each row's cache by slicing that KV (RoPE keys are cached already
          rotated, and a prefix's keys/values do not depend on later tokens, so the slice equals the
          prefix's own cache); every row then decodes on its own.
        """
        check_branch(sequences, requests)
        if not requests:
            return []
        tree = self._use_tree(sequences, requests, params)
        order = _branch_order(sequences, requests, tree)
        out: list[Generation | None] = [None] * len(requests)
        size = self.max_tree_rows if tree else self.max_batch_rows
        for b0 in range(0, len(order), size):
            idx = order[b0 : b0 + size]
            reqs = [requests[i] for i in idx]
            before = self.stats.generated_tokens
            gens = self._trie_path(sequences, reqs, params) if tree else self._plain_path(sequences, reqs, params)
            for j, gen in enumerate(gens):
                out[idx[j]] = gen
            if on_batch is not None:
                on_batch(len(idx), self.stats.generated_tokens - before)
        return [g for g in out if g is not None]

    # -- choosing the branch path -----------------------------------------------------------
    def _use_tree(
        self, sequences: Sequence[Sequence[int]], requests: Sequence[BranchRequest], params: SamplingParams
    ) -> bool:
        """Whether `branch` runs on the trie path (`_trie_path`); decided on the first call.

        The model must dispatch attention through transformers' AttentionInterface (see
        `tree.supports_tree`), and a probe of this call's first sequences (a few cuts, 4 sampled tokens
        each) must give the plain path's tokens, with log-probs within 1e-3, so that a model whose
        attention layers do something the trie does not know about keeps the plain path instead of
        sampling from wrong numbers. A probe that fails with an error also keeps the plain path (the
        reason is in `tree_attention_reason`).
        """
        if self.tree_attention is not None:
            return self.tree_attention
        reason = supports_tree(self.model)
        if reason is None:
            register_tree()
            reason = self._probe_tree(sequences, requests, params.seed)
        self.tree_attention = reason is None
        self.tree_attention_reason = reason
        return self.tree_attention

    def _probe_tree(
        self, sequences: Sequence[Sequence[int]], requests: Sequence[BranchRequest], seed: int
    ) -> str | None:
        """Why the trie path cannot serve this model (its probe samples differ from the plain path's, or
        it fails), None when it can. The probe's work is not counted in `stats`."""
        probe = _probe_requests(sequences, requests)
        check = SamplingParams(temperature=1.0, max_new_tokens=4, seed=seed)
        saved = self.stats.as_dict()
        try:
            plain = self._plain_path(sequences, probe, check)
            trie = self._trie_path(sequences, probe, check)
        except Exception as exc:  # noqa: BLE001 - any failure of the probe means: use the plain path
            return f"the trie probe failed ({type(exc).__name__}: {exc})"
        else:
            err = max(abs(a - b) for p, t in zip(plain, trie) for a, b in zip(p.logprobs, t.logprobs))
            if [p.token_ids for p in plain] != [t.token_ids for t in trie] or not err <= 1e-3:
                return f"its samples differ from the plain path's (log-prob difference {err:.1e})"
            return None
        finally:
            for k, v in saved.items():  # the probe is not work done for the caller
                setattr(self.stats, k, v)

    # -- the trie path ----------------------------------------------------------------------
    def _trie_path(
        self, sequences: Sequence[Sequence[int]], reqs: Sequence[BranchRequest], params: SamplingParams
    ) -> list[Generation]:
        """Continue one batch of `reqs` on a trie of token histories (`trie.branch_trie`)."""
        return branch_trie(self.lm, sequences, reqs, params, self._logits_budget)

    def _logits_budget(self, vocab: int) -> int:
        """Rows of node logits a trie keeps (at least 4 * max_tree_rows)."""
        return logits_budget(vocab, self.max_tree_rows)

    # -- the plain path ---------------------------------------------------------------------
    def _plain_path(
        self, sequences: Sequence[Sequence[int]], reqs: Sequence[BranchRequest], params: SamplingParams
    ) -> list[Generation]:
        """Continue one batch of `reqs`, each row on its own cache sliced from its sequence's."""
        cache, state = self._branch_state(sequences, reqs, params)
        return self._decode(cache, state, params)

    def _branch_state(
        self, sequences: Sequence[Sequence[int]], reqs: Sequence[BranchRequest], params: SamplingParams
    ) -> tuple[Any, _Rows]:
        """Prefill the sequences of `reqs` once and slice one cache row per request; returns the rows'
        cache and their decode state."""
        dev = self.device
        seq_ids = sorted({r.seq for r in reqs})
        local = {s: i for i, s in enumerate(seq_ids)}
        max_cut = {s: 0 for s in seq_ids}
        for r in reqs:
            max_cut[r.seq] = max(max_cut[r.seq], r.cut)
        rows = [list(map(int, sequences[s][: max_cut[s]])) for s in seq_ids]
        cache, mask, _, logits = self.lm.prefill(rows, keep_all_logits=True)
        width = mask.shape[1]
        pad = torch.tensor([width - len(r) for r in rows], dtype=torch.int64, device=dev)
        src = torch.tensor([local[r.seq] for r in reqs], dtype=torch.int64, device=dev)
        cuts = torch.tensor([r.cut for r in reqs], dtype=torch.int64, device=dev)
        limits = [r.budget(params) for r in reqs]
        branch_cache, valid = _slice_cache(cache, src, pad[src], cuts, room=max(1, min(max(limits), 64)))
        state = _Rows(
            index=torch.arange(len(reqs), device=dev),
            mask=valid.to(torch.int64),
            pos=cuts.clone(),
            seeds=fold_seeds([row_seed(params.seed, r.key) for r in reqs], dev),
            limits=limits,
            logits=logits[src, pad[src] + cuts - 1],
        )
        return branch_cache, state

    def _decode(self, cache: Any, st: _Rows, params: SamplingParams) -> list[Generation]:
        """Run the decode loop until every row has finished; returns one Generation per initial row
        (the rows of `st` are the initial rows, in order)."""
        dev = self.device
        out = Continuations(self.lm, st.limits, params.stop)
        n = st.index.shape[0]
        finished = torch.zeros(n, dtype=torch.bool, device=dev)  # per batch row (not per original row)
        steps_done = torch.zeros(n, dtype=torch.int64, device=dev)
        while True:
            tok, lp = sample_tokens(st.logits, params, st.seeds, steps_done)
            steps_done = steps_done + 1
            live = (~finished).nonzero()[:, 0]
            self.stats.generated_tokens += int(live.numel())
            drawn = zip(tok[live].tolist(), lp[live].tolist(), st.index[live].tolist())
            newly = [r for r, (t, p, i) in enumerate(drawn) if out.add(i, t, p)]
            if newly:
                finished[live[torch.tensor(newly, dtype=torch.int64, device=dev)]] = True
            if bool(finished.all()):
                break
            # Finished rows stay in the batch (their tokens are ignored) until a quarter of the batch
            # has finished; then one copy compacts them out. Compacting at every finish would copy
            # the whole cache nearly every step.
            if int(finished.sum()) * 4 >= finished.numel():
                keep = (~finished).nonzero()[:, 0]
                tok, steps_done, finished = tok[keep], steps_done[keep], finished[keep]
                st = _compact(cache, st, keep)
            st.mask = torch.cat([st.mask, torch.ones_like(st.mask[:, :1])], dim=1)
            logits, cache = self.lm.forward(tok[:, None], st.mask, st.pos[:, None], cache)
            self.stats.decode_tokens += int(tok.shape[0])
            self.stats.decode_steps += 1
            st.pos = st.pos + 1
            st.logits = logits[:, -1]
        return out.generations()


def _branch_order(sequences: Sequence[Sequence[int]], requests: Sequence[BranchRequest], tree: bool) -> list[int]:
    """The order in which `branch` batches `requests` (indices into them)."""
    if tree:
        # rows of one sequence decode together (they share its cached prefix); within a sequence,
        # rows with about as many tokens left after the cut sit next to each other
        return sorted(
            range(len(requests)),
            key=lambda i: (requests[i].seq, len(sequences[requests[i].seq]) - requests[i].cut, requests[i].cut),
        )
    # rows whose continuations will be about as long decode together (a batch runs as long as
    # its longest row): sort by the tokens left after the cut in the given sequence
    return sorted(
        range(len(requests)),
        key=lambda i: (len(sequences[requests[i].seq]) - requests[i].cut, requests[i].seq, requests[i].cut),
    )


def _probe_requests(sequences: Sequence[Sequence[int]], requests: Sequence[BranchRequest]) -> list[BranchRequest]:
    """A few requests of a branch call that exercise the tree path's masking: two sequences when there
    are two, each cut at its first requested cut and at its full length."""
    seqs = sorted({r.seq for r in requests})[:2]
    out = []
    for s in seqs:
        cuts = sorted({r.cut for r in requests if r.seq == s})
        for c in {cuts[0], cuts[-1], len(sequences[s])}:
            out.append(BranchRequest(s, c, f"probe/{s}/{c}"))
    return out


def _slice_cache(
    cache: Any, src: torch.Tensor, start: torch.Tensor, cuts: torch.Tensor, room: int
) -> tuple[Any, torch.Tensor]:
    """One cache row per branch row b: the first ``cuts[b]`` tokens of source row ``src[b]`` of `cache`
    (whose tokens start at column ``start[b]``), right-aligned in ``new_w = max(cuts)`` columns with
    `room` to grow. Returns the new cache and its mask of real columns, bool (rows, new_w).

    Column j of branch row b holds source column ``start[b] + cuts[b] - new_w + j`` (valid when
    ``j >= new_w - cuts[b]``). Sources get one zero column in front; invalid columns read it. Per layer,
    one gather of the rows' columns is copied into the branch cache's buffer (rows, heads, new_w + room,
    dim), which the cache adopts as is.
    """
    new_w = int(cuts.max())
    j = torch.arange(new_w, device=cuts.device)
    col = start[:, None] + cuts[:, None] - new_w + j[None, :] + 1
    valid = j[None, :] >= (new_w - cuts)[:, None]
    col = torch.where(valid, col, torch.zeros_like(col))
    cap = new_w + room
    buffers = []
    for layer in cache_layers(cache):
        pair = []
        for x in (layer.keys, layer.values):  # (sequences, heads, width, dim)
            xz = torch.cat([x.new_zeros((x.shape[0], x.shape[1], 1, x.shape[3])), x], dim=2).transpose(1, 2)
            buf = x.new_empty((len(src), x.shape[1], cap, x.shape[3]))
            buf.transpose(1, 2)[:, :new_w] = xz[src[:, None], col]  # (rows, new_w, heads, dim)
            pair.append(buf)
        buffers.append((pair[0], pair[1]))
    return grow_cache(buffers, 0, used=new_w), valid


def _compact(cache: Any, st: _Rows, keep: torch.Tensor) -> _Rows:
    """Keep only the batch rows `keep` of `cache` (one copy) and drop the leading columns that are
    padding for every one of them; returns their decode state (`logits` left as is: the next forward
    replaces them)."""
    kept = _Rows(st.index[keep], st.mask[keep], st.pos[keep], st.seeds[keep], st.limits, st.logits)
    lead = int((kept.mask.cumsum(-1) == 0).all(0).sum())
    kept.mask = kept.mask[:, lead:]
    for layer in cache_layers(cache):
        layer.select(keep, lead)
    return kept


__all__ = ["HFSampler"]
