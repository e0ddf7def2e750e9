"""Report files: a browser-free parse of heatmap.html (one coloured element per token), plots, report.md."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser

import numpy as np

from prefixvalue.evaluation.report import render_heatmap, value_colour, write_report
from prefixvalue.evaluation.scoring import evaluate_prefixes
from prefixvalue.stages import evaluate as ev

from test_evaluate import FakeValueModel, make_tiny_eval


class TokenSpans(HTMLParser):
    """Collects, per trace div, the ``span.tok`` elements with their style, title and text."""

    def __init__(self) -> None:
        super().__init__()
        self.traces: dict[str, list[dict]] = {}
        self.current: str | None = None
        self.in_tok: dict | None = None
        self.external: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in ("script", "link", "img") or a.get("src"):
            self.external.append(tag)
        if tag == "div" and "data-trace-id" in a:
            self.current = a["data-trace-id"]
            self.traces[self.current] = []
        if tag == "span" and "tok" in (a.get("class") or "").split():
            self.in_tok = {**a, "text": ""}
            self.traces[self.current].append(self.in_tok)

    def handle_endtag(self, tag):
        if tag == "span":
            self.in_tok = None

    def handle_data(self, data):
        if self.in_tok is not None:
            self.in_tok["text"] += data


def _result(tokenizer, **kw):
    traces, labels = make_tiny_eval(tokenizer, n_prompts=3)
    cfg = ev.EvaluateConfig(n_bootstrap=20, noise_ceiling_repeats=5, **kw)
    return traces, evaluate_prefixes(traces, labels, value_model=FakeValueModel("x"), config=cfg)


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
            assert "learned" in s["title"]
        text = "".join(s["text"] for s in spans).replace("↵", "")
        assert text.startswith(by_id[tid]["completion"])


def test_value_colour_scale():
    assert value_colour(0.0) != value_colour(1.0)
    assert value_colour(-1) == value_colour(0.0) and value_colour(2) == value_colour(1.0)


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
