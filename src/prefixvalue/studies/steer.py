"""``prefixvalue steer``: value-guided sampling on held-out prompts, scored by the task's verifier.

    prefixvalue steer policy=data/policies/arith-tiny checkpoints=[runs/quickstart/train_head-pf-siblings/final] out=runs/steer

For each budget N (``budgets``) and each of ``replicates`` sampling seeds, every prompt is answered by

- ``sample``: one plain sample (N = 1 only), ``majority``: the most common answer of N samples;
- ``best_of_n/T``: of the same N samples, the one twist T values most at its end; ``weighted_vote/T``: the answer
  with the most total value;
- ``beam/T``: step-level beam search, width N / ``beam_expand``, each beam expanded ``beam_expand`` times;
- ``smc/T``: twisted SMC with N particles and T as the twist (`prefixvalue.steering.engine`).

Twists T: each value checkpoint (named by its folder: runs/quickstart/train_head/final → head), the policy's
MellowMax soft value (``soft_value``), and the Monte Carlo value (``mc_samples`` continuations per particle and
round: the reference "perfect twist", SMC only, its continuation tokens counted apart). Particles grow step by step
(the task's step boundaries, `prefixvalue.tasks.base.Task.step_stops`) or ``every`` tokens.

Prompts: the first ``num_prompts`` of the task's ``prompt_split``, kept when every checkpoint's split record puts
them on side ``split`` (test, or validation for choices), at most ``max_prompts``. OUT/records.jsonl holds one line
per (method, budget, replicate, prompt); an interrupted run resumes from it (whole prompt batches, nothing twice).
OUT/steer.json and report.md hold the scores (`prefixvalue.steering.analysis`), accuracy_vs_tokens.png the plot.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import runfolder
from ..config import ConfigError, RawMapping, config_to_dict, field, parse_config, save_resolved_config
from ..data import load_split
from ..loading import ModelLoadConfig
from ..policies import default_device, load_policy
from ..prompting import choose_prompt_format
from ..sampling.hf import HFSampler
from ..sampling.sampler import SamplingParams
from ..steering import analysis
from ..steering.engine import Chunking, Generator, Judge, beam_search, iid_samples, normalised, twisted_smc, vote
from ..steering.twists import MCTwist, SoftValueTwist, State, ValueTwist
from ..tasks import build_task, task_configs, task_options
from ..tasks.base import Prompt
from ..tracking import WandbConfig, build_logger
from .actions import checkpoint_names

#: the top-level names the study writes into OUT (the run-folder contract, `prefixvalue.runfolder`)
OUTPUTS = (
    runfolder.CONFIG_FILE,
    "records.jsonl",
    "steer.json",
    "report.md",
    "accuracy_vs_tokens.png",
    *runfolder.LOGGER_OUTPUTS,
)
#: keys that may differ when the same study runs again into OUT (resume)
RERUN_KEYS = runfolder.RERUN_KEYS | {"threads", "report_to", "run_name", "wandb", "n_bootstrap"}
#: keys naming files or folders, compared as resolved paths
PATH_KEYS = ("policy",)
RECORDS = "records.jsonl"
#: the methods beyond one sample (``smc-genlm``: genlm-control's SMC with each checkpoint as the critic, needs
#: genlm-control, `make install-genlm`)
METHODS = ("majority", "best_of_n", "weighted_vote", "beam", "smc", "smc-genlm")


@dataclass
class SteerConfig(ModelLoadConfig):
    """Value-guided sampling (twisted SMC, step beam search, best-of-N, majority vote) on held-out prompts."""

    out: str | None = field(None, help="output folder (records.jsonl, steer.json, report.md, accuracy_vs_tokens.png)")
    policy: str | None = field(
        None, help="the policy that samples (hub name, local folder or .gguf file)", synonyms=("model",)
    )
    checkpoints: list[str] = field(
        default_factory=list, help="value checkpoints used as twists (their split decides the prompts)"
    )
    task: str = field("arith", help="task name in prefixvalue.tasks.TASKS")
    task_args: RawMapping = field(
        default_factory=RawMapping, help="options of the task's config (task_args.NAME=VALUE)", configs=task_configs
    )
    prompt_split: str = field("test", help="task split the prompts come from")
    num_prompts: int = field(2000, help="first N prompts of prompt_split, before the held-out filter")
    max_prompts: int = field(200, help="most prompts answered (the first kept ones)")
    split: str = field("test", help="side of the checkpoints' split the prompts must be on: test | validation")
    budgets: list[int] = field(
        default_factory=lambda: [1, 2, 4, 8], help="N: particles / samples / beam width × expansions"
    )
    replicates: int = field(3, help="sampling seeds (seed, seed + 1, ...); figures are means over them")
    seed: int = field(0, help="first sampling seed (resampling, beams and Monte Carlo twists are seeded from it too)")
    soft_value: bool = field(True, help="also steer with the policy's MellowMax soft value (twist `mellowmax`)")
    mellowmax_omega: float = field(1.0, help="ω of the soft-value twist (inf: the max)", allow_inf=True)
    twist_beta: float = field(
        1.0, help="inverse temperature of the value twists: log ψ = β·log P̂ (checkpoints), β·mm_ω (soft value)"
    )
    mc_samples: int = field(4, help="Monte Carlo twist: continuations per particle and round (0: no MC twist)")
    mc_budgets: list[int] = field(default_factory=list, help="budgets where the MC twist runs (empty: all)")
    methods: list[str] = field(
        default_factory=lambda: ["majority", "best_of_n", "weighted_vote", "beam", "smc"],
        help="methods beyond one sample: majority, best_of_n, weighted_vote, beam, smc, smc-genlm (genlm-control's "
        "SMC with each checkpoint as the critic, token by token; needs genlm-control)",
    )
    beam_expand: int = field(2, help="beam search: continuations of each beam per step")
    ess_threshold: float = field(0.5, help="SMC resamples when ESS < ess_threshold × N")
    every: int | None = field(None, help="grow particles every K tokens (None: at the task's step boundaries)")
    stops: list[str] = field(default_factory=list, help="step stop strings (empty: the task's)", escapes=True)
    temperature: float = field(1.0, help="sampling temperature")
    top_p: float = field(1.0, help="nucleus sampling mass (1 = off)")
    top_k: int = field(0, help="top-k sampling (0 = off)")
    max_new_tokens: int = field(64, help="longest completion, in tokens")
    fail_truncated: bool = field(True, help="a completion cut off at max_new_tokens scores 0 (as in collect)")
    chat_template: bool | None = field(
        None, help="wrap prompts in the tokenizer's chat template (None: when it has one)"
    )
    system_prompt: str | None = field(None, help="system message with the chat template", escapes=True)
    chunk_prompts: int = field(50, help="prompts per batch (the unit a resumed run skips; keep it when resuming)")
    batch_rows: int = field(512, help="most sequences decoded together")
    value_batch_size: int = field(64, help="sequences per value-model forward")
    n_bootstrap: int = field(1000, help="bootstrap replicates of the CIs over prompts")
    dtype: str = field("auto", help="policy and value-model dtype: auto | float32 | bfloat16 | float16")
    device: str | None = field(None, help="torch device (default: cuda if present, else cpu)")
    verifier_timeout_s: float | None = field(10.0, help="verifier time limit per completion (None: none)")
    threads: int = field(0, help="torch CPU threads (0: torch's default)")
    report_to: str = field("disk,wandb", help="loggers: any of disk, stdout, wandb (offline without key), none")
    run_name: str | None = field(None, help="wandb run name")
    wandb: WandbConfig = field(default_factory=WandbConfig, help="wandb project, entity, group, tags, job_type")

    def __post_init__(self) -> None:
        try:
            self.task_args = task_options(self.task, self.task_args)
        except KeyError as exc:
            raise ConfigError(f"steer: {exc.args[0]}") from None
        for name in (
            "num_prompts",
            "max_prompts",
            "replicates",
            "beam_expand",
            "chunk_prompts",
            "batch_rows",
            "value_batch_size",
            "max_new_tokens",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"steer: {name} must be >= 1, got {getattr(self, name)}")
        if not self.budgets or any(int(n) < 1 for n in self.budgets):
            raise ConfigError(f"steer: budgets must be integers >= 1, got {self.budgets}")
        self.budgets = sorted({int(n) for n in self.budgets} | {1})
        if self.split not in ("test", "validation"):
            raise ConfigError(f"steer: split must be test or validation, got {self.split!r}")
        unknown = set(self.methods) - set(METHODS)
        if unknown:
            raise ConfigError(f"steer: unknown methods {sorted(unknown)}; choose from {', '.join(METHODS)}")
        if not self.twist_beta > 0:
            raise ConfigError(f"steer: twist_beta must be > 0, got {self.twist_beta}")
        if not 0 <= self.ess_threshold <= 1:
            raise ConfigError(f"steer: ess_threshold must be in [0, 1], got {self.ess_threshold}")
        if self.mc_samples < 0:
            raise ConfigError("steer: mc_samples must be >= 0")
        if self.every is not None and self.every < 1:
            raise ConfigError("steer: every must be >= 1 (or None for step boundaries)")
        try:
            self.params(0)
        except ValueError as exc:
            raise ConfigError(f"steer: {exc}") from None

    def check_inputs(self) -> None:
        for name in ("out", "policy"):
            if not getattr(self, name):
                raise ConfigError(f"steer: {name} is required ({name}=...)")
        if "smc-genlm" in self.methods and importlib.util.find_spec("genlm") is None:
            raise ConfigError(
                "steer: method smc-genlm needs genlm-control (make install-genlm, then run .venv-genlm/bin/prefixvalue)"
            )
        if "smc-genlm" in self.methods and not self.checkpoints:
            raise ConfigError("steer: method smc-genlm needs checkpoints (its critics)")

    def params(self, replicate: int) -> SamplingParams:
        return SamplingParams(self.temperature, self.top_p, self.top_k, self.max_new_tokens, (), self.seed + replicate)


# ------------------------------------------------------------------------------------------ prompts
def held_out_prompts(cfg: SteerConfig, task: Any) -> tuple[list[Prompt], dict[str, Any]]:
    """The prompts to answer and the split they were checked against: those of ``cfg.prompt_split`` on side
    ``cfg.split`` of every checkpoint's split record (ConfigError when a checkpoint records none, or two
    record different splits)."""
    prompts = list(task.prompts(cfg.num_prompts, cfg.prompt_split))
    records = []
    for path in cfg.checkpoints:
        rec = load_split(Path(path))
        if rec is None:
            raise ConfigError(f"steer: {path} records no split (split.json); its held-out prompts are unknown")
        if records and not records[0].same_split(rec):
            raise ConfigError(
                f"steer: {path} was trained on another split than {cfg.checkpoints[0]}; "
                "steer compares checkpoints of one split"
            )
        records.append(rec)
    if records:
        kept = [p for p in prompts if records[0].side(p.text) == cfg.split]
        note = f"on the {cfg.split} side of the checkpoints' split"
    else:
        kept = prompts
        note = "no value checkpoint: no split to check, every prompt used"
    if not kept:
        raise ConfigError(
            f"steer: none of the {len(prompts)} prompts is on the {cfg.split} side of the checkpoints' split"
        )
    info = {"drawn": len(prompts), "on_side": len(kept), "used": min(len(kept), cfg.max_prompts), "note": note}
    return kept[: cfg.max_prompts], info


# ------------------------------------------------------------------------------------------ records
def read_records(path: Path) -> tuple[list[dict[str, Any]], set[tuple[str, int]], dict[str, float]]:
    """Lines of a records file whose batch finished (its ``done`` line was written), the finished (unit, batch)
    pairs and seconds per unit. A torn last line (an interrupted write) and an unfinished batch are dropped."""
    rows: dict[tuple[str, int], list[dict[str, Any]]] = {}
    done: set[tuple[str, int]] = set()
    seconds: dict[str, float] = {}
    if not path.exists():
        return [], done, seconds
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "done" in row:
            done.add((row["done"], int(row["batch"])))
            seconds[row["done"]] = seconds.get(row["done"], 0.0) + float(row["seconds"])
        else:
            rows.setdefault((row["unit"], int(row["batch"])), []).append(row)
    kept = [r for key, rs in rows.items() if key in done for r in rs]
    return kept, done, seconds


def rewrite_finished(path: Path, done: set[tuple[str, int]]) -> None:
    """Keep only the finished batches' lines of `path` (before a resumed run appends to it)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        key = (row.get("done") or row.get("unit"), int(row.get("batch", -1)))
        if key in done:
            keep.append(line)
    text = "".join(x + "\n" for x in keep)
    if text != path.read_text(encoding="utf-8"):
        runfolder.write_text(path, text)


def append_batch(path: Path, rows: Sequence[dict[str, Any]], unit: str, batch: int, seconds: float) -> None:
    """Append a batch's lines and its ``done`` line in one write, flushed to disk."""
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
    text += json.dumps({"done": unit, "batch": batch, "seconds": round(seconds, 3)}) + "\n"
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


# ------------------------------------------------------------------------------------------ units
class Study:
    """The loaded policy, sampler, judge and twists of one run, and the work units it runs."""

    def __init__(self, cfg: SteerConfig, policy: Any, tokenizer: Any, task: Any, value_models: dict[str, Any]) -> None:  # noqa: D107
        self.cfg = cfg
        self.task = task
        # the plain branch path: steering continues distinct sequences at their ends, where the trie path's
        # sharing saves nothing and its set-up costs (SMC with a Monte Carlo twist: 17.4 s plain, 26.2 s trie)
        self.sampler = HFSampler(policy, tokenizer, max_batch_rows=cfg.batch_rows, tree_attention=False)
        self.judge = Judge(task, tokenizer, cfg.fail_truncated, cfg.verifier_timeout_s)
        stops = tuple(cfg.stops) or (None if cfg.every else task.step_stops())
        if cfg.every is None and not stops:
            raise ConfigError(f"steer: task {cfg.task!r} has no step stop strings; set every=K or stops=[...]")
        self.chunking = Chunking(cfg.max_new_tokens, tuple(stops or ()), cfg.every)
        self.twists: dict[str, Any] = {
            n: ValueTwist(n, m, cfg.value_batch_size, cfg.twist_beta) for n, m in value_models.items()
        }
        if cfg.soft_value:
            self.twists["mellowmax"] = SoftValueTwist(
                "mellowmax", policy, cfg.mellowmax_omega, cfg.twist_beta, cfg.value_batch_size
            )
        #: twists that value a finished completion without the verifier (best-of-N, weighted vote, beam)
        self.value_twists = list(self.twists)
        #: the value checkpoints among them (genlm-control's SMC takes these as critics)
        self.checkpoint_twists = list(value_models)
        self.genlm_llm: Any = None
        self.mc: MCTwist | None = None
        if cfg.mc_samples:
            self.mc = MCTwist("mc", self.sampler, cfg.params(0), cfg.mc_samples, self.judge.score)

    def units(self, n: int) -> list[str]:
        """The work units at budget `n`: ``iid`` (one set of N samples for every selection method), then one
        ``smc/T`` and ``beam/T`` per twist."""
        methods = self.cfg.methods
        out = ["iid"] if (n == 1 or {"majority", "best_of_n", "weighted_vote"} & set(methods)) else []
        if n > 1 and "smc" in methods:
            out += [f"smc/{t}" for t in self.value_twists]
            if self.mc is not None and (not self.cfg.mc_budgets or n in self.cfg.mc_budgets):
                out.append("smc/mc")
        if n > 1 and "beam" in methods:
            out += [f"beam/{t}" for t in self.value_twists]
        if n > 1 and "smc-genlm" in methods:
            out += [f"smc-genlm/{t}" for t in self.checkpoint_twists]
        return out

    def genlm_rows(
        self, name: str, n: int, replicate: int, batch: list[tuple[Prompt, list[int]]]
    ) -> list[dict[str, Any]]:
        """``smc-genlm/T``: genlm-control's token-level SMC with checkpoint T as the critic, one prompt at a time
        (`prefixvalue.steering.genlm.genlm_smc`; the answer is the one with the most final weight)."""
        from ..steering import genlm as genlm_engine  # optional: genlm-control is installed for this method only

        if self.genlm_llm is None:
            self.genlm_llm = genlm_engine.prompted_llm(str(self.cfg.policy), device=str(self.sampler.device))
        rows = []
        for prompt, ids in batch:
            unit = f"smc-genlm/{name}"
            key = f"{prompt.prompt_id}/{unit}/N{n}"
            model = self.twists[name].model
            cfg = self.cfg
            completions, reasons, weights, tokens = genlm_engine.genlm_smc(
                self.genlm_llm, model, ids, n, cfg.ess_threshold, cfg.max_new_tokens, cfg.seed + replicate, key
            )
            judged = [self.judge.judge(prompt, c, r) for c, r in zip(completions, reasons)]
            i = vote([a for _, a in judged], weights.tolist())
            rows.append(
                {
                    "budget": n,
                    "replicate": replicate,
                    "unit": unit,
                    "prompt_id": prompt.prompt_id,
                    "method": unit,
                    "answer": judged[i][1],
                    "correct": judged[i][0],
                    "tokens": tokens,
                    "twist_tokens": 0,
                    "details": {"engine": "genlm-control"},
                }
            )
        return rows

    def select(self, group: list[State], values: dict[str, np.ndarray]) -> list[dict[str, Any]]:
        """The answers the selection methods take from one prompt's `group` of N samples, with the twists' log
        values of each sample at its end: ``sample`` (N = 1), else ``pass@n`` (the verifier's ceiling),
        ``majority``, ``best_of_n/T`` and ``weighted_vote/T``."""
        judged = [self.judge.judge(s.prompt, s.completion_ids, s.finish_reason) for s in group]
        answers = [a for _, a in judged]

        def pick(method: str, i: int) -> dict[str, Any]:
            return {"method": method, "answer": judged[i][1], "correct": judged[i][0]}

        if len(group) == 1:
            return [pick(analysis.PLAIN, 0)]
        out = [{"method": "pass@n", "answer": "", "correct": max(score for score, _ in judged)}]
        if "majority" in self.cfg.methods:
            out.append(pick("majority", vote(answers, [1.0] * len(group))))
        for t, lv in values.items():
            if "best_of_n" in self.cfg.methods:
                out.append(pick(f"best_of_n/{t}", int(np.argmax(lv))))
            if "weighted_vote" in self.cfg.methods:
                out.append(pick(f"weighted_vote/{t}", vote(answers, normalised(lv).tolist())))
        return out

    def run_unit(
        self, unit: str, n: int, replicate: int, batch: list[tuple[Prompt, list[int]]]
    ) -> list[dict[str, Any]]:
        """Answer every prompt of `batch` by `unit` at budget `n`; one row per (method, prompt)."""
        cfg = self.cfg
        gen = Generator(self.sampler, cfg.params(replicate), self.chunking)
        base = {"budget": n, "replicate": replicate}
        rows: list[dict[str, Any]] = []
        if unit == "iid":
            groups = iid_samples(gen, batch, n, "iid")
            flat = [s for g in groups for s in g]
            values = (
                {t: self.twists[t].log_values(flat, f"iid/r{replicate}") for t in self.value_twists} if n > 1 else {}
            )
            for gi, group in enumerate(groups):
                pid = group[0].prompt.prompt_id
                common = {**base, "prompt_id": pid, "tokens": gen.tokens.get(pid, 0), "unit": unit}
                group_values = {t: v[gi * n : (gi + 1) * n] for t, v in values.items()}
                rows += [{**common, **r} for r in self.select(group, group_values)]
            return rows
        family, name = unit.split("/", 1)
        if family == "smc-genlm":
            return self.genlm_rows(name, n, replicate, batch)
        twist = self.mc if name == "mc" else self.twists[name]
        before = dict(getattr(twist, "tokens_by_prompt", {}))
        tag = f"{unit}/N{n}/r{replicate}"
        if family == "smc":
            runs = twisted_smc(gen, batch, n, twist, tag, cfg.ess_threshold, cfg.seed + replicate)
            finals = [
                (
                    r.particles,
                    normalised(r.log_weights).tolist(),
                    {
                        "ess_mean": float(np.mean(r.ess)) if r.ess else float(n),
                        "ess_min": float(np.min(r.ess)) if r.ess else float(n),
                        "resamples": len(r.resampled),
                        "rounds": r.rounds,
                    },
                )
                for r in runs
            ]
        else:
            width = max(1, n // cfg.beam_expand)
            expand = n if n < cfg.beam_expand else cfg.beam_expand
            runs_b = beam_search(gen, batch, width, expand, twist, tag)
            finals = [(r.beams[:1], [1.0], {"rounds": r.rounds}) for r in runs_b]
        after = getattr(twist, "tokens_by_prompt", {})
        for particles, weights, details in finals:
            pid = particles[0].prompt.prompt_id
            judged = [self.judge.judge(s.prompt, s.completion_ids, s.finish_reason) for s in particles]
            i = vote([a for _, a in judged], weights)
            rows.append(
                {
                    **base,
                    "unit": unit,
                    "prompt_id": pid,
                    "method": unit,
                    "answer": judged[i][1],
                    "correct": judged[i][0],
                    "tokens": gen.tokens.get(pid, 0),
                    "twist_tokens": after.get(pid, 0) - before.get(pid, 0),
                    "details": details,
                }
            )
        return rows


def _states_prompts(
    task: Any, tokenizer: Any, cfg: SteerConfig, prompts: list[Prompt]
) -> list[tuple[Prompt, list[int]]]:
    fmt = choose_prompt_format(tokenizer, cfg.chat_template, cfg.system_prompt)
    return [(p, fmt.encode(tokenizer, p.text)) for p in prompts]


def seconds_per_method(seconds: dict[str, float]) -> dict[str, dict[str, float]]:
    """Wall clock of each work unit (``N{n}/r{r}/{unit}``) summed over replicates: unit → budget → seconds (the
    ``iid`` unit's samples serve majority vote, best-of-N and the weighted votes together)."""
    out: dict[str, dict[str, float]] = {}
    for key, sec in seconds.items():
        n, _, unit = key.split("/", 2)
        row = out.setdefault(unit, {})
        row[n[1:]] = round(row.get(n[1:], 0.0) + sec, 1)
    return dict(sorted(out.items()))


def summarise(
    cfg: SteerConfig,
    study: Study,
    records: list[dict[str, Any]],
    info: dict[str, Any],
    seconds: dict[str, float],
    wall: float,
) -> dict[str, Any]:
    """steer.json: the accuracy table, paired differences, ESS, the MC-gain share, goals, costs."""
    cells = analysis.per_prompt(records)
    table = analysis.accuracy_table(cells, cfg.n_bootstrap, cfg.seed)
    pairs = analysis.comparisons(cells, study.value_twists, cfg.n_bootstrap, cfg.seed)
    ref = "mc" if study.mc is not None else None
    return {
        "task": cfg.task,
        "policy": cfg.policy,
        "checkpoints": checkpoint_names(cfg.checkpoints),
        "split": {"side": cfg.split, "prompt_split": cfg.prompt_split},
        "prompts": info,
        "budgets": cfg.budgets,
        "replicates": cfg.replicates,
        "chunking": {"stops": list(study.chunking.stops), "every": study.chunking.every},
        "twists": {n: type(t).__name__ for n, t in study.twists.items()} | ({"mc": "MCTwist"} if ref else {}),
        "accuracy": table,
        "paired": pairs,
        "mc_reference": ref,
        "mc_gain_share": analysis.mc_gain_share(table, study.value_twists, ref),
        "goals": analysis.goals(table, pairs, study.value_twists),
        "limits": analysis.limits(table, study.value_twists, ref),
        "verifier_errors": study.judge.errors,
        "generated_tokens": int(
            sum(
                r["tokens"]
                for r in records
                if r["method"] not in ("pass@n",) and not r["method"].startswith(("best_of_n/", "weighted_vote/"))
            )
        ),
        "twist_tokens": int(sum(r.get("twist_tokens", 0) for r in records)),
        "seconds_per_method": seconds_per_method(seconds),
        "seconds": round(wall, 1),
    }


def run(cfg: SteerConfig) -> dict[str, Any]:
    """Run the study; returns steer.json's content (also written to OUT)."""
    import torch

    from ..value import load_value_model

    cfg.check_inputs()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    out = Path(str(cfg.out))
    folder = runfolder.claim(out, "steer", cfg, outputs=OUTPUTS, rerun_keys=RERUN_KEYS, path_keys=PATH_KEYS)
    save_resolved_config(cfg, out)
    task = build_task(cfg.task, cfg.task_args)
    prompts, info = held_out_prompts(cfg, task)
    device = cfg.device or str(default_device())
    policy, tok = load_policy(str(cfg.policy), cfg.dtype, device, cfg.load_options())
    names = checkpoint_names(cfg.checkpoints)
    models = {n: load_value_model(p, device=device, options=cfg.load_options()) for n, p in names.items()}
    study = Study(cfg, policy, tok, task, models)
    encoded = _states_prompts(task, tok, cfg, prompts)
    batches = [encoded[i : i + cfg.chunk_prompts] for i in range(0, len(encoded), cfg.chunk_prompts)]
    path = out / RECORDS
    records, done, seconds = read_records(path)
    rewrite_finished(path, done)
    folder.record_files(RECORDS)
    todo = [(n, r, u) for n in cfg.budgets for r in range(cfg.replicates) for u in study.units(n)]
    for n, r, unit in todo:
        key = f"N{n}/r{r}/{unit}"
        for b, batch in enumerate(batches):
            if (key, b) in done:
                continue
            t1 = time.perf_counter()
            with torch.no_grad():
                rows = study.run_unit(unit, n, r, batch)
            for row in rows:
                row.update(unit=key, batch=b)
            append_batch(path, rows, key, b, time.perf_counter() - t1)
            records += rows
            seconds[key] = seconds.get(key, 0.0) + time.perf_counter() - t1
            done.add((key, b))
        print(f"steer: {key} done ({seconds.get(key, 0.0):.1f} s)", flush=True)
    steer = summarise(cfg, study, records, info, seconds, time.perf_counter() - t0)
    folder.write_json("steer.json", steer)
    folder.write_text("report.md", analysis.render_report(steer))
    analysis.plot(steer["accuracy"], out / "accuracy_vs_tokens.png", steer["mc_reference"])
    folder.record_files("accuracy_vs_tokens.png")
    logger = build_logger(
        cfg.report_to, out, config_to_dict(cfg), cfg.run_name, cfg.wandb, "steer", checkpoints=cfg.checkpoints
    )
    summary = {
        f"steer/{m}/N{n}/accuracy": row["accuracy"] for m, rows in steer["accuracy"].items() for n, row in rows.items()
    }
    logger.log(summary, step=0)
    logger.log_image("steer/accuracy_vs_tokens", out / "accuracy_vs_tokens.png", step=0)
    logger.log_table(
        "steer/paired",
        ["a", "b", "budget", "difference", "ci_low", "ci_high"],
        [[p["a"], p["b"], p["budget"], p["difference"], *(p["ci"] or [None, None])] for p in steer["paired"]],
        step=0,
    )
    logger.finish()
    folder.finish()
    print(f"steer: {info['used']} prompts, budgets {cfg.budgets}, {steer['seconds']:.0f} s -> {out}/report.md")
    return steer


#: the keys of ``steering`` that the quickstart sets (key → to what); given there, they are refused
SET_BY_QUICKSTART = {
    "out": "OUT/steer",
    "policy": "policy",
    "checkpoints": "the trained checkpoints",
    "task": "collect.task",
    "task_args": "collect.task_args",
    "prompt_split": "collect.split",
    "num_prompts": "collect.num_prompts",
    "temperature": "collect.temperature",
    "max_new_tokens": "collect.max_new_tokens",
    "fail_truncated": "collect.fail_truncated",
}


def quickstart_steer(
    cfg: SteerConfig, policy: str, checkpoints: Sequence[str], collect_cfg: Any, out: Path, load_fields: dict[str, Any]
) -> tuple[dict[str, Any], str]:
    """The quickstart's ``steer=true`` section: `run` into ``out/steer`` on the quickstart's policy, trained
    checkpoints (the first is `learned`) and collect's task and sampling. Returns steer.json's content and the
    report section."""
    sets = {
        "out": str(out / "steer"),
        "policy": policy,
        "checkpoints": list(checkpoints),
        "task": collect_cfg.task,
        "task_args": collect_cfg.task_args,
        "prompt_split": collect_cfg.split,
        "num_prompts": collect_cfg.num_prompts,
        "temperature": collect_cfg.temperature,
        "max_new_tokens": collect_cfg.max_new_tokens,
        "fail_truncated": collect_cfg.fail_truncated,
    }
    steer = run(dataclasses.replace(cfg, **load_fields, **sets))
    body = analysis.render_report(steer).replace("# prefixvalue steer", "## Values that steer (steer=true)", 1)
    return steer, body.replace("\n## ", "\n### ").replace("accuracy_vs_tokens.png", "steer/accuracy_vs_tokens.png")


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``prefixvalue steer``; returns the exit status."""
    run(parse_config(SteerConfig, list(argv) if argv is not None else None, prog="prefixvalue steer"))
    return 0
