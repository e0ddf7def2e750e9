"""``prefixvalue advantages``: counterfactual token values and TD advantages, checked against Monte Carlo.

    prefixvalue advantages traces=runs/quickstart/heldout_traces labels=runs/quickstart/labels checkpoints=[runs/quickstart/train_implicit/final,runs/quickstart/train_head/final] out=runs/advantages

For each prefix s_p of the traces (p = 0..T−1), the candidates are the policy's ``top_candidates`` next tokens and the
token the trace sampled. Each value checkpoint gives V(s_p ⊕ y') and the TD advantage V(s_p ⊕ y') − V(s_p)
through `ValueModel.token_candidate_values`: an implicit model and a Q-head from one forward pass per trace
(V_φ(s ⊕ y') = V_φ(s) + β·[log π_φ(y'|s) − log π_ref(y'|s)]; Q(s, y')), a head from one sequence s_p ⊕ y' per
candidate, batched; metrics.json's ``cost`` counts the sequences and tokens each needed. OUT/advantages.parquet holds one row per
(prefix, candidate), its columns documented in OUT/columns.json and docs/design.md ("Values of alternatives").

The check: ``mc_prefixes`` prefixes (the ``mc_forks`` largest MC jumps of ``labels`` first, then random ones)
and each of their candidates are labelled by Monte Carlo (``samples`` continuations, the traces' sampling);
OUT/mc_check.parquet holds them, metrics.json (``advantages``) and report.md the scores: within-prefix
Spearman of candidate values, Spearman over counterfactual and over sampled tokens, and the sign of the
advantages against the MC advantage (agreement beside the majority-sign base rate: most unsampled tokens are
worse than their prefix, so "always negative" agrees often; balanced accuracy and AUROC, which a constant guess
holds at 0.5; `prefixvalue.evaluation.advantages.sign_scores`). Every figure is named by its model: the short
name of the checkpoint folder (runs/quickstart/train_head-pf-siblings/final → head-pf-siblings), with the folder
itself in ``checkpoints`` and in each entry of ``check.models``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import runfolder
from ..config import ConfigError, config_to_dict, field, parse_config, save_resolved_config
from ..loading import ModelLoadConfig

#: the top-level names the study writes into OUT (the run-folder contract, `prefixvalue.runfolder`)
OUTPUTS = (runfolder.CONFIG_FILE, "advantages.parquet", "columns.json", "mc_check.parquet", "metrics.json", "report.md")
#: keys that may differ when the same study runs again into OUT
RERUN_KEYS = runfolder.RERUN_KEYS | {"threads"}
#: keys naming files or folders, compared as resolved paths
PATH_KEYS = ("traces", "labels", "policy")


@dataclass
class AdvantagesConfig(ModelLoadConfig):
    """Counterfactual token advantages of value checkpoints, as an RL dataset, checked against Monte Carlo."""

    out: str | None = field(None, help="output folder (advantages.parquet, mc_check.parquet, metrics.json, report.md)")
    traces: str | None = field(None, help="traces dataset folder (prefixvalue collect); every prefix gets candidates")
    checkpoints: list[str] = field(default_factory=list, help="value checkpoints (at least one: implicit, head, qhead)")
    policy: str | None = field(
        None, help="policy giving the top-k candidates and continuations (default: the traces')", synonyms=("model",)
    )
    allow_other_policy: bool = field(False, help="let `policy` differ from the model that wrote the traces")
    labels: str | None = field(
        None,
        help="prefix labels of the traces (prefixvalue label, positions=all or adaptive): their largest MC jumps "
        "between neighbouring tokens are checked first",
    )
    top_candidates: int = field(
        5,
        help="the policy's most likely next tokens taken as candidates (plus the sampled one)",
        renamed_from="top_k",
    )
    max_traces: int | None = field(60, help="first K traces get candidates (None: all)")
    mc_prefixes: int = field(120, help="prefixes whose candidates are labelled by Monte Carlo (forks included)")
    mc_forks: int = field(40, help="of those, the largest MC jumps in `labels` (known forking tokens)")
    samples: int = field(32, help="MC continuations per prefix and per candidate")
    split: str = field(
        "test",
        help="side of the checkpoints' split the MC check scores: test (held out: the figures) | validation (where "
        "a choice among checkpoints is made)",
    )
    seed: int = field(0, help="sampling, prefix-choice and bootstrap seed")
    batch_size: int = field(8, help="traces per forward pass (the head: 4x as many candidate sequences)")
    batch_rows: int = field(256, help="most continuations decoded together")
    n_bootstrap: int = field(1000, help="bootstrap replicates of the CIs (0: none)")
    dtype: str = field("auto", help="policy dtype: auto | float32 | bfloat16 | float16")
    device: str | None = field(None, help="torch device (default: cuda if present, else cpu)")
    verifier_timeout_s: float | None = field(10.0, help="verifier time limit per continuation (None: none)")
    threads: int = field(0, help="torch CPU threads (0: torch's default)")

    def __post_init__(self) -> None:
        for name in ("top_candidates", "samples", "batch_size", "batch_rows"):
            if getattr(self, name) < 1:
                raise ConfigError(f"advantages: {name} must be >= 1, got {getattr(self, name)}")
        if self.mc_prefixes < 0 or self.mc_forks < 0:
            raise ConfigError("advantages: mc_prefixes and mc_forks must be >= 0")
        if self.max_traces is not None and self.max_traces < 1:
            raise ConfigError("advantages: max_traces must be >= 1 (or None for all)")
        if self.split not in ("test", "validation"):
            raise ConfigError(f"advantages: split must be test or validation, got {self.split!r}")

    def check_inputs(self) -> None:
        """What a run needs (left unset in the quickstart's nested config, which fills them)."""
        for name in ("out", "traces"):
            if not getattr(self, name):
                raise ConfigError(f"advantages: {name} is required ({name}=...)")
        if not self.checkpoints:
            raise ConfigError("advantages: checkpoints is required (checkpoints=[PATH,...], at least one)")


def shown_path(path: str) -> str:
    """`path` as the report shows it: relative to the working directory when under it (a checkpoint records its
    checker resolved)."""
    p = Path(path)
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def run(cfg: AdvantagesConfig) -> dict[str, Any]:
    """Run the study; returns metrics.json's ``advantages`` section (also written to OUT)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from ..data import load_labels, load_traces
    from ..evaluation.advantages import (
        CHECKER_COLUMNS,
        COLUMNS,
        MODEL_COLUMNS,
        TraceInput,
        candidate_cost,
        candidate_logprobs,
        candidate_table,
        choose_check_prefixes,
        consistency,
        forks_from_labels,
        mc_check,
        one_pass_verdict,
        policy_candidates,
        render_advantages_section,
        score_check,
    )
    from ..loading import traces_policy
    from ..policies import check_vocabulary, default_device, load_policy
    from ..sampling.labelling import LabellerOptions, labeller_for, trace_refs
    from ..value import load_value_model
    from .actions import checkpoint_names, heldout_under

    cfg.check_inputs()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    out = Path(str(cfg.out))
    folder = runfolder.claim(out, "advantages", cfg, outputs=OUTPUTS, rerun_keys=RERUN_KEYS, path_keys=PATH_KEYS)
    save_resolved_config(cfg, out)
    ds = load_traces(str(cfg.traces))
    if cfg.max_traces is not None and len(ds) > cfg.max_traces:
        ds = ds.select(range(cfg.max_traces))
    load = cfg.load_options()
    policy_path, load = traces_policy(ds, cfg.policy, load, cfg.allow_other_policy, "advantages")
    device = cfg.device or str(default_device())
    policy, tok = load_policy(policy_path, cfg.dtype, device, load)
    check_vocabulary(tok, ds, "advantages", getattr(policy.config, "vocab_size", None))
    refs = {r.trace_id: r for r in trace_refs(ds)}
    traces = [
        TraceInput(r.trace_id, r.prompt.prompt_id, list(r.prompt_ids), list(r.completion_ids)) for r in refs.values()
    ]
    names = checkpoint_names(cfg.checkpoints)
    models = {n: load_value_model(p, device=device, options=cfg.load_options()) for n, p in names.items()}
    # the checker a compared model reads (the first such model's): its ranking of the candidates is a baseline
    reader = next((n for n, m in models.items() if getattr(m, "checker_lm", None) is not None), None)
    with torch.no_grad():
        cands = policy_candidates(policy, traces, cfg.top_candidates, cfg.batch_size)
        table = candidate_table(traces, cands, models, tok, cfg.batch_size)
        if reader is not None:
            lps = candidate_logprobs(models[reader].checker_lm, traces, cands, cfg.batch_size)
            table["checker_logprob"] = np.concatenate(lps) if lps else np.zeros(0)
    t_table = time.perf_counter() - t0
    folder.write_with(
        "advantages.parquet", lambda path: pq.write_table(pa.table({k: v.tolist() for k, v in table.items()}), path)
    )
    columns = {**COLUMNS, **(CHECKER_COLUMNS if reader is not None else {})}
    for n in models:
        columns.update({k.format(m=n): v for k, v in MODEL_COLUMNS.items()})
    folder.write_text("columns.json", json.dumps(columns, indent=2, ensure_ascii=False))

    # the MC check scores learned values: only traces whose prompt every checkpoint holds out (on side `split`)
    texts = [refs[t.trace_id].prompt.text for t in traces]
    held = heldout_under(cfg.checkpoints, texts, "advantages", cfg.split)
    check_traces = [t for t, h in zip(traces, held) if h]
    if not check_traces:
        where = "holds out" if cfg.split == "test" else "puts on its validation side"
        raise ConfigError(f"advantages: no trace whose prompt every checkpoint {where}, so no MC check")
    forks = (
        forks_from_labels(load_labels(cfg.labels, ds), cfg.mc_forks, trace_ids={t.trace_id for t in check_traces})
        if cfg.labels and cfg.mc_forks
        else []
    )
    chosen = choose_check_prefixes(check_traces, cfg.mc_prefixes, forks, cfg.seed)
    options = LabellerOptions(seed=cfg.seed, batch_rows=cfg.batch_rows, verifier_timeout_s=cfg.verifier_timeout_s)
    labeller = labeller_for(ds, options, policy, tok)
    eos = [tok.eos_token_id] if tok.eos_token_id is not None else []
    t1 = time.perf_counter()
    check = mc_check(labeller, refs, traces, table, chosen, cfg.samples, eos)
    t_mc = time.perf_counter() - t1
    folder.write_with(
        "mc_check.parquet",
        lambda path: pq.write_table(pa.table({k: np.asarray(v).tolist() for k, v in check.items()}), path),
    )
    kinds = {n: str(getattr(m, "kind", "?")) for n, m in models.items()}
    scores = score_check(check, list(models), cfg.n_bootstrap, cfg.seed, checkpoints=names, kinds=kinds)
    one_pass = [n for n, m in models.items() if getattr(m, "counterfactuals", False)]  # every candidate in one pass
    # the verdict is about the first one-pass checkpoint given (the quickstart gives its validation choice first, then
    # the others best first on validation), never one chosen by the check's own labels, which the verdict reports
    best = one_pass[0] if one_pass else None
    metrics: dict[str, Any] = {
        "n_traces": len(traces),
        "split": cfg.split,
        "check_heldout_traces": len(check_traces),
        "check_dropped_training_traces": len(traces) - len(check_traces),
        "n_prefixes": int(len(set(table["prefix_id"].tolist()))),
        "n_rows": int(len(table["prefix_id"])),
        "top_k": cfg.top_candidates,  # metrics key as before the option's rename
        "samples": cfg.samples,
        "models": kinds,
        "checkpoints": names,  # each model's name -> the checkpoint folder the command received
        "checker": {"read_by": reader, "path": shown_path(models[reader].config.checker)} if reader else None,
        "dataset": "advantages.parquet",
        "check": scores,
        "cost": {n: candidate_cost(traces, cands, n in one_pass, m.forward_passes) for n, m in models.items()},
        "consistency": {n: consistency(table, n) for n in models},
        "verdict_model": best,
        "verdict": one_pass_verdict(scores, best) if best else None,
        "mc_cost": labeller.cost.as_dict(),
        "seconds_dataset": round(t_table, 1),
        "seconds_mc": round(t_mc, 1),
        "seconds": round(time.perf_counter() - t0, 1),
        "files": {"dataset": "advantages.parquet", "columns": "columns.json", "check": "mc_check.parquet"},
    }
    folder.write_text("metrics.json", json.dumps({"advantages": metrics, "config": config_to_dict(cfg)}, indent=2))
    folder.write_text("report.md", "# prefixvalue advantages\n\n" + render_advantages_section(metrics))
    folder.finish()
    print(
        f"advantages: {metrics['n_rows']} candidate rows over {metrics['n_prefixes']} prefixes, MC check of "
        f"{scores['n_prefixes']} prefixes, {metrics['seconds']:.1f} s -> {out}/report.md"
    )
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``prefixvalue advantages``; returns the exit status."""
    run(parse_config(AdvantagesConfig, list(argv) if argv is not None else None, prog="prefixvalue advantages"))
    return 0
