"""Value ensembles (docs/design.md, "Value ensembles"): P̂(s) = σ(mean over the members m of logit P̂_m(s)).

    prefixvalue ensemble members=[runs/s0/final,runs/s1/final,runs/s2/final] out=runs/ensemble
    prefixvalue evaluate checkpoint=runs/ensemble traces=... labels=... out=runs/eval_ensemble

Value checkpoints of one split of one policy's traces (different training seeds, or different recipes) are
averaged in logit space. An ensemble folder holds `ENSEMBLE_FILE` (its members, as paths relative to the folder)
beside copies of the records the members share (`SHARED_RECORDS`: the split, so every member held out the same
prompts and evaluate scores only prompts none trained on; the prompt and step formats). `load_value_model` on
such a folder loads every member (`load_ensemble`, which checks the shared records again), so every command that
reads a checkpoint through it (evaluate, label's ``select``, steer, advantages, serve, the Python API) takes an
ensemble as it takes one checkpoint. Each member loads its own backbone, and an ensemble runs every member's
forward passes (``forward_passes``: evaluate counts them in its cost).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import __version__, runfolder
from ..config import ConfigError
from ..data import SPLIT_FILE, SplitRecord
from ..jsonlines import read_json_object
from ..loading import LoadOptions
from ..prompting import PROMPT_FORMAT_FILE, STEP_FORMAT_FILE
from .base import ValueModel, ValueScoringAPI
from .checkpoint import CONFIG_NAME, read_value_config

#: the file that makes a folder an ensemble: ``{"members": [path, ...], "combine": "mean_logit", ...}``
ENSEMBLE_FILE = "ensemble.json"
#: records every member must hold alike (or every member lack), copied into the ensemble folder
SHARED_RECORDS = (SPLIT_FILE, PROMPT_FORMAT_FILE, STEP_FORMAT_FILE)
#: how far a member's probability is clipped from 0 and 1 before its logit (a saturated member counts ±34.5)
PROB_CLIP = 1e-15


def is_ensemble(path: str | Path) -> bool:
    """Whether `path` is an ensemble folder (it holds `ENSEMBLE_FILE`)."""
    return (Path(path) / ENSEMBLE_FILE).is_file()


def _record(folder: Path, name: str) -> Any:
    """What a member's shared record says, compared across members: the split as a `SplitRecord`, a format file
    as its JSON object; None when the member has none."""
    if not (folder / name).is_file():
        return None
    return SplitRecord.load(folder) if name == SPLIT_FILE else read_json_object(folder / name)


def check_members(members: Sequence[str | Path], who: str = "ensemble") -> list[Path]:
    """The member folders of an ensemble, checked: at least two distinct local value checkpoints (no ensemble
    among them) of one reference policy, whose `SHARED_RECORDS` agree (each file equal in content, or absent from
    every member). A ConfigError in one line naming the member that breaks a rule."""
    paths = [Path(m).expanduser() for m in members]
    if len(paths) < 2:
        raise ConfigError(f"{who}: an ensemble needs at least two member checkpoints, got {len(paths)}")
    seen: dict[Path, Path] = {}
    for p in paths:
        if is_ensemble(p):
            raise ConfigError(f"{who}: member {p} is itself an ensemble; list its members instead")
        if not (p / CONFIG_NAME).is_file():
            raise ConfigError(f"{who}: member {p} is not a local value checkpoint (no {CONFIG_NAME})")
        if p.resolve() in seen:
            raise ConfigError(f"{who}: member {p} is listed twice (also as {seen[p.resolve()]})")
        seen[p.resolve()] = p
    first = paths[0]
    base = read_value_config(first).base_model
    for p in paths[1:]:
        other = read_value_config(p).base_model
        if other != base:
            raise ConfigError(
                f"{who}: member {p} reads the policy {other!r}, member {first} reads {base!r}: an ensemble's members "
                "value one policy"
            )
    for name in SHARED_RECORDS:
        want = _record(first, name)
        for p in paths[1:]:
            if _record(p, name) != want:
                what = "was trained on another split" if name == SPLIT_FILE else f"has another {name}"
                raise ConfigError(
                    f"{who}: member {p} {what} than member {first} ({name} differs or is missing): an ensemble's "
                    "members share one split of one policy's traces"
                )
    return paths


def write_ensemble(folder: runfolder.RunFolder, members: Sequence[str | Path]) -> Path:
    """Write an ensemble of the checked `members` (`check_members`) into the claimed run folder `folder`: its
    `ENSEMBLE_FILE` (members as paths relative to the folder, so that the two travel together) and copies of the
    members' `SHARED_RECORDS`. Returns the folder's path."""
    paths = check_members(members)
    out = folder.path
    rel = [os.path.relpath(p.resolve(), out.resolve()) for p in paths]
    record = {"members": rel, "combine": "mean_logit", "prefixvalue_version": __version__}
    for name in SHARED_RECORDS:
        if (paths[0] / name).is_file():
            folder.write_bytes(name, (paths[0] / name).read_bytes())
    folder.write_text(ENSEMBLE_FILE, json.dumps(record, indent=2) + "\n")
    return out


def ensemble_members(path: str | Path) -> list[Path]:
    """The member folders an ensemble folder names (relative paths read from the folder), each checked to exist;
    a ConfigError in one line naming `ENSEMBLE_FILE` when it is malformed or a member is missing."""
    folder = Path(path)
    file = folder / ENSEMBLE_FILE
    members = read_json_object(file).get("members")
    if not isinstance(members, list) or not all(isinstance(m, str) and m for m in members):
        raise ConfigError(f"{file}: 'members' must be a list of checkpoint paths")
    paths = [Path(m) if Path(m).is_absolute() else folder / m for m in members]
    for m, p in zip(members, paths):
        if not p.is_dir():
            raise ConfigError(f"{file}: member {m!r} is not there ({p}); an ensemble travels with its members")
    return paths


def load_ensemble(
    path: str | Path,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    options: LoadOptions | None = None,
    base_model: str | None = None,
) -> ValueEnsemble:
    """Load the ensemble folder `path`: its members (`ensemble_members`, their shared records checked again by
    `check_members`, so a member retrained on another split since is refused), each by
    `ValueModel.from_pretrained` on `device` in `dtype` with the loading options `options` (and `base_model`,
    a name or path, in place of the recorded reference policy)."""
    folder = Path(path)
    paths = check_members(ensemble_members(folder), f"{folder / ENSEMBLE_FILE}")
    models = [
        ValueModel.from_pretrained(p, base_model=base_model, device=device, dtype=dtype, options=options) for p in paths
    ]
    ensemble = ValueEnsemble(models)
    ensemble.source = folder
    return ensemble


def mean_logit(per_member: Sequence[Sequence[np.ndarray]]) -> list[np.ndarray]:
    """σ(mean over members of logit P̂) per row, from each member's list of float64 arrays of P̂ (rows alike)."""
    out = []
    for rows in zip(*per_member):
        p = np.clip(np.stack([np.asarray(r, dtype=np.float64) for r in rows]), PROB_CLIP, 1.0 - PROB_CLIP)
        z = np.mean(np.log(p) - np.log1p(-p), axis=0)
        out.append(1.0 / (1.0 + np.exp(-z)))
    return out


class ValueEnsemble(ValueScoringAPI, nn.Module):
    """Several value models as one: ``predict`` and ``token_candidate_values`` average their members' logits; the
    text API (`ValueScoringAPI`: ``score``, ``score_steps``, ``reward_func``, ``candidate_values``) works on top.
    The config, prompt and step formats and tokenizer are the first member's (every member shares them,
    `check_members`)."""

    kind = "ensemble"
    description = "ensemble: P̂ = σ(mean of the members' logit P̂)"
    process_scores = False
    position0_note = None

    def __init__(self, members: Sequence[ValueModel]) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least two members, got {len(members)}")
        self.members = nn.ModuleList(members)
        first = members[0]
        self.config = first.config
        self.prompt_format = first.prompt_format
        self.step_format = first.step_format
        self.source: Path | None = None
        self._tokenizer: Any = None
        self._warned_step_format = False

    @property
    def tokenizer(self) -> Any:
        """The first member's tokenizer (every member reads the same policy), unless one is set."""
        return self._tokenizer if self._tokenizer is not None else self.members[0].tokenizer

    @tokenizer.setter
    def tokenizer(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer

    @property
    def counterfactuals(self) -> bool:
        """One pass per member gives every candidate's value only when every member's does."""
        return all(m.counterfactuals for m in self.members)

    @property
    def forward_passes(self) -> int:
        """Every member's passes over each sequence, together."""
        return sum(m.forward_passes for m in self.members)

    @property
    def pass_parameters(self) -> list[int]:
        """Every member's passes' parameters, in member order."""
        return [n for m in self.members for n in m.pass_parameters]

    def _device(self) -> torch.device:
        return self.members[0]._device()

    def reference_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The reference policy's logits (the first member's reference: every member reads the same policy)."""
        return self.members[0].reference_logits(input_ids, attention_mask)

    def predict(
        self, prompt_ids: list[list[int]], completion_ids: list[list[int]], batch_size: int = 32
    ) -> list[np.ndarray]:
        """P̂ at positions 0..T_i of every row: σ of the mean of the members' logits (`mean_logit`)."""
        return mean_logit([m.predict(prompt_ids, completion_ids, batch_size=batch_size) for m in self.members])

    def token_candidate_values(
        self,
        prompt_ids: list[list[int]],
        completion_ids: list[list[int]],
        positions: list[np.ndarray],
        token_ids: list[np.ndarray],
        batch_size: int = 32,
    ) -> list[np.ndarray]:
        """P̂(s_p ⊕ y) of every candidate: σ of the mean of the members' logits (each member's
        ``token_candidate_values``)."""
        return mean_logit(
            [
                m.token_candidate_values(prompt_ids, completion_ids, positions, token_ids, batch_size)
                for m in self.members
            ]
        )


__all__ = [
    "ENSEMBLE_FILE",
    "SHARED_RECORDS",
    "ValueEnsemble",
    "check_members",
    "ensemble_members",
    "is_ensemble",
    "load_ensemble",
    "mean_logit",
    "write_ensemble",
]
