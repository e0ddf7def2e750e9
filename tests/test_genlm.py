"""The genlm-control adapter (`prefixvalue.steering.genlm`): a value checkpoint as a genlm SMC critic.

    make test-genlm                                  # in .venv-genlm (make install-genlm)
    .venv-genlm/bin/python -m pytest -m genlm tests/test_genlm.py

Every test here needs genlm-control and is marked ``genlm``; without the package the module is skipped.
"""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest

pytest.importorskip("genlm.control")

import genlm.backend.llm.base as genlm_lm_base  # noqa: E402
from genlm.backend.tokenization import vocab as genlm_vocab  # noqa: E402

from prefixvalue.steering import genlm as adapter  # noqa: E402
from prefixvalue.steering.genlm import ValuePotential, prompted_llm  # noqa: E402

from conftest import REPO  # noqa: E402

pytestmark = pytest.mark.genlm

POLICY = REPO / "data" / "policies" / "arith-tiny"
PROMPT = "Q:3+5*2-7="


@pytest.fixture(scope="module")
def head_checkpoint(shipped_head_checkpoint):
    return shipped_head_checkpoint


@pytest.fixture(scope="module")
def llm():
    return prompted_llm(POLICY)


def tokens(llm, ids):
    by_id = {t.token_id: t for t in llm.vocab}
    return [by_id[i] for i in ids]


def test_readme_example_runs(tmp_path, monkeypatch, capsys, head_checkpoint):
    """The README's genlm-control example, exactly its lines, from a folder laid out like the repository after
    the quickstart: the shipped policy, a value checkpoint as critic, 8 particles of twisted SMC."""
    import re
    import shutil

    readme = (REPO / "README.md").read_text().split("## Values that steer\n", 1)[1].split("\n## ", 1)[0]
    block = re.findall(r"```python\n(.*?)```", readme, flags=re.S)[0]
    assert 'ValuePotential(llm, "runs/quickstart/train_head-pf-siblings/final"' in block
    (tmp_path / "data" / "policies").mkdir(parents=True)
    (tmp_path / "data" / "policies" / "arith-tiny").symlink_to(POLICY)
    shutil.copytree(head_checkpoint, tmp_path / "runs" / "quickstart" / "train_head-pf-siblings" / "final")
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(block, "README.md", "exec"), scope)
    seqs, llm = scope["seqs"], scope["llm"]
    assert len(seqs.contexts) == 8 and len(seqs.log_weights) == 8
    assert np.isfinite(seqs.log_weights).any()
    texts = [b"".join(c[:-1] if c and c[-1] == llm.eos else c).decode() for c in seqs.contexts]
    assert all(isinstance(t, str) for t in texts) and any(t for t in texts)
    assert math.isclose(sum(seqs.decoded_posterior.values()), 1.0, abs_tol=1e-9)
    assert "A:" in capsys.readouterr().out  # the posterior over completions was printed


def test_prefix_and_complete_are_log_values_of_the_checkpoint(llm, head_checkpoint):
    """prefix = log P̂ after the context, complete = log P̂ after the context and EOS, as `predict` gives them;
    the batched calls (one value-model call for a mixed step) agree with the single ones."""
    from prefixvalue.value import load_value_model

    model = load_value_model(head_checkpoint)
    critic = ValuePotential(llm, model, prompt=PROMPT)
    pids = model.encode(PROMPT, "")[0]
    assert critic.prompt_ids == pids and ValuePotential(llm, model, prompt=pids).prompt_ids == pids
    eos = model.tokenizer.eos_token_id
    texts = ["", "3+5=8;", "3+5=8;8*2=6;6-7=9;A:9"]
    contexts = [tokens(llm, model.encode(PROMPT, t)[1]) for t in texts]

    def log_p(ids):
        return math.log(min(max(float(model.predict([pids], [ids])[0][-1]), 1e-6), 1.0))

    prefix = [asyncio.run(critic.prefix(c)) for c in contexts]
    complete = [asyncio.run(critic.complete(c)) for c in contexts]
    for c, p, q in zip(contexts, prefix, complete):
        ids = [t.token_id for t in c]
        assert abs(p - log_p(ids)) < 1e-9 and abs(q - log_p(ids + [eos])) < 1e-9
    assert np.allclose(asyncio.run(critic.batch_prefix(contexts)), prefix, atol=1e-6, rtol=0)
    assert np.allclose(asyncio.run(critic.batch_complete(contexts)), complete, atol=1e-6, rtol=0)
    mixed = asyncio.run(critic.batch_score([contexts[0], [*contexts[2], llm.eos], contexts[1]]))
    assert np.allclose(mixed, [prefix[0], complete[2], prefix[1]], atol=1e-6, rtol=0)


def test_the_vocabulary_patch_is_restored(llm):
    """The shipped char-level policy loads (its decoder is Fuse), and genlm-backend's decode_vocab is its own
    again afterwards, also when a load inside the patch fails."""
    assert genlm_lm_base.decode_vocab is genlm_vocab.decode_vocab
    assert len(llm.vocab) == 98 and llm.eos_byte_strings == [b"<eos>"]
    assert tokens(llm, [55])[0] == b"Q"
    with pytest.raises(RuntimeError), adapter._char_vocab():
        assert genlm_lm_base.decode_vocab is adapter._char_decode_vocab
        raise RuntimeError
    assert genlm_lm_base.decode_vocab is genlm_vocab.decode_vocab


def test_a_tokenizer_that_is_not_char_level_is_refused():
    class WordTokenizer:
        name_or_path = "words"
        all_special_tokens = ["<eos>"]

        def __len__(self):
            return 3

        def convert_ids_to_tokens(self, ids):
            return ["<eos>", "a", "hello"][: len(ids)]

    with pytest.raises(ValueError, match="byte encoding of the tokens of 'words' is unknown"):
        adapter._char_decode_vocab(WordTokenizer())


def test_steer_swaps_in_genlm_as_the_smc_engine(tmp_path, head_checkpoint):
    """``prefixvalue steer methods=[smc,smc-genlm]``: genlm-control's SMC with the checkpoint as the critic runs on
    the same prompts and budget as the toolkit's own, its drawn tokens counted, and a rerun repeats it exactly."""
    import json

    from prefixvalue.cli import main

    args = [f"policy={POLICY}", f"checkpoints=[{head_checkpoint}]", "max_prompts=2", "budgets=[1,2]"]
    args += ["replicates=1", "mc_samples=0", "soft_value=false", "methods=[smc,smc-genlm]", "report_to=none"]
    args += ["n_bootstrap=10", "threads=1"]
    runs = []
    for name in ("a", "b"):
        assert main(["steer", *args, f"out={tmp_path / name}"]) == 0
        runs.append(json.loads((tmp_path / name / "steer.json").read_text()))
    table = runs[0]["accuracy"]
    genlm_row = table["smc-genlm/head"]["2"]
    assert genlm_row["tokens_per_prompt"] > 0 and genlm_row["prompts"] == 2
    assert any(p["a"] == "smc-genlm/head" and p["b"] == "smc/head" for p in runs[0]["paired"])
    assert runs[1]["accuracy"] == table
