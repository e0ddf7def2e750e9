"""The trie path of `HFSampler.branch`: continuations of a batch's prefixes decoded on a trie of token histories.

Rows are not decoded one by one: a *node* is a distinct token history (a sequence's first c tokens, then
off-trace tokens), and each decode forward runs only the nodes that no row has reached before. Every row
still draws its own token from its node's logits with its own seed, so a row's continuation is what the
plain path (`prefixvalue.sampling.hf`) samples for it; rows of one prefix that draw the same tokens, and a
row that re-draws the trace's own next token (it then stands where the rows of the next position start),
share every forward from there on. The sequences' cache is the shared part of the attention
(`prefixvalue.sampling.tree`); an off-trace node's own keys/values are one column each
(`prefixvalue.sampling.cache.node_cache`), and a node attends to the chain of its off-trace ancestors.
docs/design.md ("Monte Carlo labelling at scale: the trie path") has the cost model and the memory bounds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .cache import cache_layers, node_cache
from .lm import CausalLM, Continuations
from .noise import fold_seeds, row_seed, sample_tokens
from .sampler import BranchRequest, Generation, SamplingParams
from .tree import TreeBatch, use_tree_attention

#: the sequences' logits at every position are kept when they take at most this many bytes
_TRACE_LOGITS_BYTES = 256 << 20
#: node logits a branch trie keeps before it drops those no row stands on
_NODE_LOGITS_BYTES = 1 << 30


def logits_budget(vocab: int, max_rows: int) -> int:
    """Rows of node logits a trie of batches of `max_rows` rows keeps (at least 4 * max_rows)."""
    return max(4 * max_rows, _NODE_LOGITS_BYTES // (4 * vocab))


def branch_trie(
    lm: CausalLM,
    sequences: Sequence[Sequence[int]],
    reqs: Sequence[BranchRequest],
    params: SamplingParams,
    budget: Callable[[int], int],
) -> list[Generation]:
    """Continue ``sequences[r.seq][:r.cut]`` for each request of `reqs` on one trie; returns one
    `Generation` per request, in order. `budget(vocab)` is how many rows of node logits the trie keeps
    (`logits_budget`); beyond it the logits of nodes no row stands on are dropped and recomputed if a row
    reaches them again."""
    trie = _Trie(lm, sequences, reqs, budget)
    row_node = [trie.start(r) for r in reqs]
    seeds = fold_seeds([row_seed(params.seed, r.key) for r in reqs], trie.device)
    out = Continuations(lm, [r.budget(params) for r in reqs], params.stop)
    live = list(range(len(reqs)))
    step = 0
    while live:
        rows = torch.tensor(live, device=trie.device)
        tok, lp = sample_tokens(trie.logits([row_node[r] for r in live]), params, seeds[rows], step)
        step += 1
        lm.stats.generated_tokens += len(live)
        new: list[int] = []
        survivors = []
        for r, t, p in zip(live, tok.tolist(), lp.tolist()):
            if out.add(r, t, p):
                continue
            row_node[r] = trie.child(row_node[r], t, new)
            survivors.append(r)
        live = survivors
        if new:
            if trie.table.spare() < len(new):  # before the table grows: free what no row can reach again
                trie.drop_unreachable([row_node[r] for r in live])
            trie.forward(new)
        if live and trie.table.full():
            trie.drop_logits(keep={row_node[r] for r in live})
    return out.generations()


class TrieLogits:
    """Next-token logits of trie nodes in one growing table with a free list."""

    def __init__(self, first: torch.Tensor, capacity: int) -> None:  # noqa: D107
        self.data = first
        self.capacity = max(int(capacity), first.shape[0])
        self.free_slots: list[int] = []
        self.used = first.shape[0]

    def keep_first(self, n: int) -> None:
        self.used = n

    def rows(self, slots: torch.Tensor) -> torch.Tensor:
        return self.data[slots]

    def add(self, logits: torch.Tensor) -> list[int]:
        n = logits.shape[0]
        slots = [self.free_slots.pop() for _ in range(min(n, len(self.free_slots)))]
        fresh = n - len(slots)
        if self.used + fresh > self.data.shape[0]:
            grow = max(self.used + fresh, 2 * self.data.shape[0]) - self.data.shape[0]
            self.data = torch.cat([self.data, self.data.new_empty((grow, self.data.shape[1]))])
        slots += list(range(self.used, self.used + fresh))
        self.used += fresh
        self.data[torch.tensor(slots, device=self.data.device)] = logits.to(self.data.dtype)
        return slots

    def spare(self) -> int:
        """Rows the table can take before it grows."""
        return self.data.shape[0] - self.used + len(self.free_slots)

    def full(self) -> bool:
        return self.used - len(self.free_slots) > self.capacity

    def free(self, slots: list[int]) -> None:
        self.free_slots.extend(slots)


class _Trie:
    """The token histories one batch of rows has reached: their logits and their keys/values.

    Nodes are ids into the lists `seq`, `cut`, `length`, `chain`, `token` and `slot` (their row in
    `table`, -1 when not held). Node 0 is the zero column the chains are padded with. An on-trace node (a
    sequence's first c tokens, ``on_trace[(sequence, c)]``) holds no column of its own; an off-trace node
    holds one column of `nodes_kv` and stands at `cut` of its sequence with `chain`, its off-trace
    ancestors and itself.
    """

    def __init__(
        self,
        lm: CausalLM,
        sequences: Sequence[Sequence[int]],
        reqs: Sequence[BranchRequest],
        budget: Callable[[int], int],
    ) -> None:
        """Prefill the sequences of `reqs` (full length) once: one on-trace node per position whose
        logits are kept (every position when they fit, else where rows start)."""
        self.lm = lm
        self.device = lm.device
        seq_ids = sorted({r.seq for r in reqs})
        self.local = {s: i for i, s in enumerate(seq_ids)}
        self.rows = [list(map(int, sequences[s])) for s in seq_ids]
        width = max(len(r) for r in self.rows)
        self.pads = [width - len(r) for r in self.rows]
        columns = self._logit_columns(reqs, width)
        cache, _, _, trace_logits = lm.prefill(self.rows, columns=columns)
        layers = cache_layers(cache)
        self.trace_k, self.trace_v = [la.keys for la in layers], [la.values for la in layers]
        vocab = trace_logits.shape[-1]
        self.seq, self.cut, self.length, self.chain = [0], [0], [0], [()]
        self.token, self.slot = [0], [-1]
        self.on_trace: dict[tuple[int, int], int] = {}
        self.children: dict[tuple[int, int], int] = {}
        self.table = TrieLogits(trace_logits.reshape(-1, vocab), budget(vocab))
        self._add_trace_nodes(columns.tolist())
        k0, v0 = self.trace_k[0], self.trace_v[0]
        self.nodes_kv = node_cache(len(layers), k0.shape[1], k0.shape[3], v0.shape[3], 1024, k0)

    def _logit_columns(self, reqs: Sequence[BranchRequest], width: int) -> torch.Tensor:
        """The padded columns whose logits the prefill keeps: every column from the first where a row
        starts when the sequences' logits fit (a row that re-draws the trace's next token then needs no
        forward; no row reaches a column before the first start), else only where rows start."""
        vocab = self.lm.vocab_size()
        starts = [self.pads[self.local[r.seq]] + r.cut - 1 for r in reqs]
        first = min(starts)
        if vocab is not None and len(self.rows) * (width - first) * vocab * 4 <= _TRACE_LOGITS_BYTES:
            return torch.arange(first, width, device=self.device)
        return torch.unique(torch.tensor(starts, device=self.device))

    def _add_trace_nodes(self, columns: list[int]) -> None:
        """One on-trace node per (sequence, kept column), whose logits are the table's rows so far."""
        for si, r in enumerate(self.rows):
            for j, col in enumerate(columns):
                c = col - self.pads[si] + 1  # tokens of the sequence seen at that column
                if 1 <= c <= len(r):
                    self.on_trace[(si, c)] = self._add(si, c, c, (), r[c - 1], si * len(columns) + j)
        self.table.keep_first(len(self.rows) * len(columns))

    def _add(self, seq: int, cut: int, length: int, chain: tuple[int, ...], token: int, slot: int) -> int:
        """A new node; returns its id."""
        self.seq.append(seq)
        self.cut.append(cut)
        self.length.append(length)
        self.chain.append(chain)
        self.token.append(token)
        self.slot.append(slot)
        return len(self.seq) - 1

    def start(self, req: BranchRequest) -> int:
        """The node where the rows of `req` start (the on-trace node of its prefix)."""
        return self.on_trace[(self.local[req.seq], req.cut)]

    def logits(self, nodes: list[int]) -> torch.Tensor:
        """Next-token logits of `nodes` (held in the table), (len(nodes), vocab)."""
        return self.table.rows(torch.tensor([self.slot[n] for n in nodes], device=self.device))

    def child(self, parent: int, token: int, new: list[int]) -> int:
        """The node a row on `parent` moves to when it draws `token`.

        That is the node reached before with that draw, else the sequence's next on-trace node when
        `token` is the sequence's own next token, else a new off-trace node, appended to `new` (its
        logits are computed by the next `forward`).
        """
        child = self.children.get((parent, token))
        if child is None:
            si, c = self.seq[parent], self.cut[parent]
            on_trace = not self.chain[parent] and self.rows[si][c : c + 1] == [token]
            child = self.on_trace.get((si, c + 1), -1) if on_trace else -1
            if child < 0:
                child = len(self.seq)
                self._add(si, c, self.length[parent] + 1, (*self.chain[parent], child), token, -1)
                new.append(child)
            self.children[(parent, token)] = child
        return child

    def forward(self, new: list[int]) -> None:
        """One decode forward of the off-trace nodes `new` (sorted here by sequence): writes their
        keys/values into `nodes_kv` and their logits into the table."""
        dev = self.device
        new.sort(key=lambda n: self.seq[n])
        depth = max(len(self.chain[n]) for n in new)
        chains = torch.tensor([list(self.chain[n]) + [0] * (depth - len(self.chain[n])) for n in new], device=dev)
        seqs = torch.tensor([self.seq[n] for n in new], device=dev)
        cuts = torch.tensor([self.cut[n] for n in new], device=dev)
        pad_t = torch.tensor(self.pads, device=dev)[seqs]
        col = torch.arange(self.trace_k[0].shape[2], device=dev)
        prefix_mask = (col[None, :] >= pad_t[:, None]) & (col[None, :] < (pad_t + cuts)[:, None])
        ids = torch.tensor(new, device=dev)
        for la in cache_layers(self.nodes_kv):
            la.reserve(len(self.seq))
            la.node_ids, la.chains = ids, chains
        shared = TreeBatch.build(self.trace_k, self.trace_v, seqs, prefix_mask, chains != 0)
        tok = torch.tensor([[self.token[n]] for n in new], device=dev)
        pos = torch.tensor([[self.length[n] - 1] for n in new], device=dev)
        with use_tree_attention(self.lm.model, shared):
            # the mask is only for transformers' padding check: the tree attention masks by itself
            logits, _ = self.lm.forward(tok, torch.ones_like(tok), pos, self.nodes_kv)
        for n, slot in zip(new, self.table.add(logits[:, -1])):
            self.slot[n] = slot
        self.lm.stats.decode_steps += 1
        self.lm.stats.decode_tokens += len(new)

    def drop_unreachable(self, standing: list[int]) -> None:
        """Free the table rows of off-trace nodes no live row can reach again: rows move one token deeper per
        step, so a node shallower than every live row of its sequence (those on `standing`) is never reached
        (in collect, where a sequence's rows start together, that is every node of the past steps)."""
        floor: dict[int, int] = {}
        for n in standing:
            floor[self.seq[n]] = min(floor.get(self.seq[n], self.length[n]), self.length[n])
        self.drop_logits(
            {n for n, sl in enumerate(self.slot) if sl >= 0 and self.length[n] >= floor.get(self.seq[n], 1 << 62)}
        )

    def drop_logits(self, keep: set[int]) -> None:
        """Free the table rows of off-trace nodes not in `keep` (no row stands on them); a row that
        reaches one again recomputes it (it is forgotten as a child)."""
        freed = {n for n, sl in enumerate(self.slot) if sl >= 0 and n not in keep and self.chain[n]}
        self.table.free([self.slot[n] for n in freed])
        for n in freed:
            self.slot[n] = -1
        self.children = {k: v for k, v in self.children.items() if v not in freed}


__all__ = ["TrieLogits", "branch_trie", "logits_budget"]
