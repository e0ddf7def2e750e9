"""A value checkpoint as a genlm-control critic: twisted SMC with genlm's samplers, guided by P̂.

Needs the optional genlm-control package (``make install-genlm``; tested with genlm-control 0.4.1)::

    import asyncio
    from genlm.control import direct_token_sampler
    from prefixvalue.steering.genlm import ValuePotential, prompted_llm

    llm = prompted_llm("data/policies/arith-tiny")
    critic = ValuePotential(llm, "runs/quickstart/train_head/final", prompt="Q:3+5*2-7=")
    llm.prompt_ids = critic.prompt_ids  # the policy sees the prompt as collect wrote it
    seqs = asyncio.run(direct_token_sampler(llm).smc(n_particles=8, ess_threshold=0.5, max_tokens=64, critic=critic))
    print(seqs.decoded_posterior)

As in `prefixvalue.steering.twists`, log ψ = log clip(P̂, floor, 1): ``prefix`` scores a partial completion (the
twist), ``complete`` a finished one (P̂ after its EOS token, as value checkpoints are trained), so the final
particles target π(y)·P̂(y).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from genlm.backend.llm import base as _genlm_lm_base
from genlm.backend.tokenization.bytes import ByteVocabError
from genlm.backend.tokenization.token import Token
from genlm.control import Potential, PromptedLLM
from genlm.control.sampler.token import DirectTokenSampler

from ..sampling.noise import row_seed
from ..value import ValueModel, load_value_model
from .twists import PSI_FLOOR


class ValuePotential(Potential):
    """log clip(P̂(prompt ⊕ context), floor, 1) of a value checkpoint over `llm`'s token vocabulary.

    `model`: a `ValueModel` or a checkpoint folder / Hub id (`load_value_model`); `prompt`: its text (encoded as
    the checkpoint's training traces were, ``model.encode(prompt, "")[0]``) or its token ids. genlm-control's SMC
    batches the particles' calls, so the value model runs once per step on every live particle."""

    def __init__(
        self,
        llm: PromptedLLM,
        model: ValueModel | str | Path,
        prompt: str | Sequence[int],
        floor: float = PSI_FLOOR,
        batch_size: int = 64,
    ) -> None:  # noqa: D107
        super().__init__(llm.vocab, tables=llm.tables)
        self.model = load_value_model(model) if isinstance(model, (str, Path)) else model
        if llm.model.tokenizer.get_vocab() != self.model.tokenizer.get_vocab():
            raise ValueError("the value model's tokenizer differs from the policy's: token ids would not match")
        self.prompt_ids = self.model.encode(prompt, "")[0] if isinstance(prompt, str) else [int(t) for t in prompt]
        self.eos_id = int(self.model.tokenizer.eos_token_id)
        self.floor = float(floor)
        self.batch_size = int(batch_size)

    def log_values(self, contexts: Sequence[Sequence[Token]], finished: Sequence[bool]) -> np.ndarray:
        """log clip(P̂) after each context's last token (after an appended EOS where `finished`), in one call."""
        rows = [[t.token_id for t in c] + ([self.eos_id] if f else []) for c, f in zip(contexts, finished)]
        with torch.no_grad():
            preds = self.model.predict([self.prompt_ids] * len(rows), rows, batch_size=self.batch_size)
        return np.log(np.clip(np.array([float(p[-1]) for p in preds], dtype=np.float64), self.floor, 1.0))

    async def prefix(self, context: Sequence[Token]) -> float:
        return float(self.log_values([context], [False])[0])

    async def complete(self, context: Sequence[Token]) -> float:
        return float(self.log_values([context], [True])[0])

    async def batch_prefix(self, contexts: Sequence[Sequence[Token]]) -> np.ndarray:
        return self.log_values(contexts, [False] * len(contexts))

    async def batch_complete(self, contexts: Sequence[Sequence[Token]]) -> np.ndarray:
        return self.log_values(contexts, [True] * len(contexts))

    async def batch_score(self, contexts: Sequence[Sequence[Any]]) -> np.ndarray:
        """Prefixes and finished contexts (ending in genlm's EOS) of one step in a single value-model call."""
        finished = [bool(c) and c[-1] == self.eos for c in contexts]
        return self.log_values([c[:-1] if f else c for c, f in zip(contexts, finished)], finished)


def _char_decode_vocab(tokenizer: Any, byte2str_fallback: str = "tokenizer") -> tuple[list[Token], list[str]]:
    """genlm-backend's ``decode_vocab`` for a character-level tokenizer: each token's bytes are its string's UTF-8."""
    strs = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    special = set(tokenizer.all_special_tokens)
    odd = [s for s in strs if s is None or (len(s) != 1 and s not in special)]
    if odd:
        raise ValueError(
            f"the byte encoding of the tokens of {tokenizer.name_or_path!r} is unknown: genlm-backend reads only "
            f"ByteLevel or SentencePiece decoders, and {len(odd)} of its tokens (such as {odd[:3]!r}) are neither a "
            "single character nor a special token"
        )
    return [Token(token_id=i, byte_string=s.encode("utf-8")) for i, s in enumerate(strs)], strs


@contextmanager
def _char_vocab() -> Iterator[None]:
    """genlm-backend's language models read their byte vocabulary with `_char_decode_vocab` inside the block."""
    original = _genlm_lm_base.decode_vocab
    _genlm_lm_base.decode_vocab = _char_decode_vocab
    try:
        yield
    finally:
        _genlm_lm_base.decode_vocab = original


def _byte_vocab_error(exc: BaseException | None) -> bool:
    while exc is not None:
        if isinstance(exc, ByteVocabError):
            return True
        exc = exc.__cause__
    return False


def prompted_llm(name_or_path: str | Path, device: str = "cpu", **kwargs: Any) -> PromptedLLM:
    """genlm's ``PromptedLLM.from_name(name_or_path, backend="hf", hf_opts={"device_map": device, "dtype":
    torch.float32}, timeout=0.0, **kwargs)`` (`kwargs` override these). ``timeout=0.0``: genlm's default waits
    20 ms per step for more batch-mates, 3x the time of an SMC run on the shipped policy, for the same batches.

    genlm-backend builds the tokens' byte strings only from a ByteLevel or SentencePiece decoder; for the shipped
    char-level policy (decoder ``Fuse``) it fails with ``ByteVocabError: Cannot determine the byte encoding of
    '.../arith-tiny': its decoder is ['Fuse'], which is neither ByteLevel nor SentencePiece``, raised as
    ``ValueError: Could not decode byte representation of token vocabuary``. On that error the load is retried
    once with genlm-backend's internal ``genlm.backend.llm.base.decode_vocab`` patched, during that load only, to
    take each token's bytes as its string's UTF-8, which is right only when every token is one character or a
    special token: that is checked, else a ValueError says the byte encoding is unknown."""
    kwargs.setdefault("hf_opts", {"device_map": device, "dtype": torch.float32})
    kwargs.setdefault("timeout", 0.0)
    kwargs.setdefault("backend", "hf")
    try:
        return PromptedLLM.from_name(str(name_or_path), **kwargs)
    except (ByteVocabError, ValueError) as exc:
        if not _byte_vocab_error(exc):
            raise
    with _char_vocab():
        return PromptedLLM.from_name(str(name_or_path), **kwargs)


class CountingSampler(DirectTokenSampler):
    """genlm's direct token sampler (tokens drawn from the policy, as `direct_token_sampler` gives), counting the
    tokens it draws: one per `sample` call, so resampled copies are not counted again."""

    def __init__(self, potential: Potential) -> None:  # noqa: D107
        super().__init__(potential)
        self.tokens = 0

    async def sample(self, context: Any, draw: Any = None) -> Any:
        self.tokens += 1
        return await super().sample(context, draw)


def genlm_smc(
    llm: PromptedLLM,
    model: ValueModel,
    prompt_ids: Sequence[int],
    n_particles: int,
    ess_threshold: float,
    max_tokens: int,
    seed: int,
    key: str,
) -> tuple[list[list[int]], list[str], np.ndarray, int]:
    """genlm-control's SMC for one prompt with `model` as the critic: ``(completion ids, finish reasons, normalised
    weights, tokens drawn)`` of the final particles. A finished particle's ids end with the EOS id (reason ``eos``),
    one cut at `max_tokens` does not (``length``). genlm draws from numpy's and torch's global generators; both are
    seeded from (`seed`, `key`) first (`prefixvalue.sampling.noise.row_seed`), so a run repeats."""
    r = row_seed(seed, key)
    np.random.seed(r % 2**32)
    torch.manual_seed(r % 2**63)
    critic = ValuePotential(llm, model, list(prompt_ids))
    llm.prompt_ids = list(prompt_ids)
    sampler = CountingSampler(llm)
    seqs = asyncio.run(
        sampler.smc(n_particles=n_particles, ess_threshold=ess_threshold, max_tokens=max_tokens, critic=critic)
    )
    ids, reasons = [], []
    for context in seqs.contexts:
        done = bool(context) and context[-1] == llm.eos
        ids.append([t.token_id for t in (context[:-1] if done else context)] + ([critic.eos_id] if done else []))
        reasons.append("eos" if done else "length")
    return ids, reasons, np.asarray(seqs.normalized_weights, dtype=np.float64), sampler.tokens


__all__ = ["CountingSampler", "ValuePotential", "genlm_smc", "prompted_llm"]
