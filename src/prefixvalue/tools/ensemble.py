"""``prefixvalue ensemble``: several value checkpoints as one, P̂ = σ(mean of the members' logit P̂).

    prefixvalue ensemble members=[runs/s0/final,runs/s1/final,runs/s2/final] out=runs/ensemble
    prefixvalue evaluate checkpoint=runs/ensemble traces=runs/heldout_traces labels=runs/labels out=runs/eval_ens

The members are checkpoints ``prefixvalue train`` wrote on one split of one policy's traces (training seeds, or
recipes); the folder names them by relative path and copies their split, prompt format and step format
(`prefixvalue.value.ensemble`; docs/design.md, "Value ensembles"). Nothing is copied from the members' weights:
the ensemble travels with them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .. import runfolder
from ..config import ConfigError, field, parse_config
from ..value.ensemble import ENSEMBLE_FILE, SHARED_RECORDS, check_members, write_ensemble

#: what the command writes into out: the names a folder without a run record may hold (`prefixvalue.runfolder`)
OUTPUTS = (ENSEMBLE_FILE, *SHARED_RECORDS)


@dataclass
class EnsembleConfig:
    """Write an ensemble of value checkpoints (the mean of their logits)."""

    members: list[str] = field(
        default_factory=list, help="value checkpoint folders (CKPT1,CKPT2,...), at least two, of one split"
    )
    out: str = field("", help="output folder of the ensemble")
    overwrite: bool = field(False, help="replace an ensemble of other members in out (the files it wrote, only)")


def run(cfg: EnsembleConfig) -> dict:
    """Write the ensemble `cfg` describes; returns ``{"out", "members"}``."""
    if not cfg.out:
        raise ConfigError("ensemble: give members=[CKPT1,CKPT2,...] and out=DIR")
    out = Path(cfg.out)
    rules = {"outputs": OUTPUTS, "overwrite": cfg.overwrite}  # the members compare as written
    runfolder.check(out, "ensemble", cfg, **rules)  # refuse another run's folder before reading any member
    check_members(cfg.members)
    folder = runfolder.claim(out, "ensemble", cfg, **rules)
    write_ensemble(folder, cfg.members)
    folder.finish()
    print(f"ensemble: wrote {out} ({len(cfg.members)} members; load it as one checkpoint)")
    return {"out": str(out), "members": list(cfg.members)}


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``prefixvalue ensemble``; returns the exit status."""
    run(parse_config(EnsembleConfig, list(argv) if argv is not None else None, prog="prefixvalue ensemble"))
    return 0
