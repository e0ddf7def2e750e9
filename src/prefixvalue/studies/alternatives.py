"""The quickstart's optional stage ``alternatives=true``: `prefixvalue actions` and `prefixvalue advantages`
on the quickstart's own policy, trained checkpoints, held-out traces and labels (docs/design.md, "Values of
alternatives"). Off by default: it adds a few minutes to a quickstart that already fills its budget.

    prefixvalue quickstart --config recipes/quickstart.yaml alternatives=true
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import actions as actions_stage
from . import advantages as advantages_stage


def run_alternatives(
    actions_cfg: actions_stage.ActionsConfig,
    advantages_cfg: advantages_stage.AdvantagesConfig,
    policy: str,
    checkpoints: Sequence[str],
    traces: Path,
    labels: Path,
    out: Path,
    load_fields: dict[str, Any],
    timed: Any,
) -> tuple[dict[str, Any], list[str]]:
    """Run both studies into ``out/actions`` and ``out/advantages``; `timed(name, fn, cfg)` runs and times a
    stage. Returns metrics.json's ``actions`` and ``advantages`` sections and the report sections (their
    plot paths relative to `out`)."""
    from ..evaluation.actions import render_actions_section
    from ..evaluation.advantages import render_advantages_section

    acfg = dataclasses.replace(
        actions_cfg, **load_fields, out=str(out / "actions"), policy=policy, checkpoints=list(checkpoints)
    )
    vcfg = dataclasses.replace(
        advantages_cfg,
        **load_fields,
        out=str(out / "advantages"),
        traces=str(traces),
        labels=str(labels),
        policy=policy,
        checkpoints=list(checkpoints),
    )
    am = timed("actions", actions_stage.run, acfg)
    vm = timed("advantages", advantages_stage.run, vcfg)
    plot = am["files"].get("plot")
    sections = [
        render_actions_section(am, f"actions/{plot}" if plot else None),
        render_advantages_section(vm).replace(f"`{vm['dataset']}`", f"`advantages/{vm['dataset']}`"),
    ]
    return {"actions": am, "advantages": vm}, sections
