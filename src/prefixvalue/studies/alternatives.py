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

from ..evaluation.actions import render_actions_section
from ..evaluation.advantages import render_advantages_section
from ..tracking import timed
from . import actions as actions_stage
from . import advantages as advantages_stage

#: the keys of ``actions`` and ``advantages`` that `run_alternatives` sets (key → what to); the quickstart
#: refuses them when given, with the loading options it sets too
SET_BY_ALTERNATIVES: dict[str, dict[str, str]] = {
    "actions": {"out": "OUT/actions", "policy": "policy", "checkpoints": "the trained checkpoints"},
    "advantages": {"out": "OUT/advantages", "traces": "OUT/heldout_traces", "labels": "OUT/labels"}
    | {"policy": "policy", "checkpoints": "the trained checkpoints", "split": "validation, then test"},
}


def run_alternatives(
    actions_cfg: actions_stage.ActionsConfig,
    advantages_cfg: advantages_stage.AdvantagesConfig,
    policy: str,
    checkpoints: Sequence[str],
    traces: Path,
    labels: Path,
    out: Path,
    load_fields: dict[str, Any],
    seconds: dict[str, float],
) -> tuple[dict[str, Any], list[str]]:
    """Run both studies into ``out/actions`` and ``out/advantages``, each timed into `seconds`
    (`prefixvalue.tracking.timed`). Returns metrics.json's ``actions`` and ``advantages`` sections and the
    report sections (their plot paths relative to `out`)."""

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
        split="test",
    )
    with timed(seconds, "actions"):
        am = actions_stage.run(acfg)
    with timed(seconds, "advantages"):
        vm = advantages_stage.run(vcfg)
    plot = am["files"].get("plot")
    sections = [
        render_actions_section(am, f"actions/{plot}" if plot else None),
        render_advantages_section(vm).replace(f"`{vm['dataset']}`", f"`advantages/{vm['dataset']}`"),
    ]
    return {"actions": am, "advantages": vm}, sections
