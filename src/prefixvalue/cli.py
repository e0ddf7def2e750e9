"""The ``prefixvalue`` command: one sub-command per pipeline stage.

    prefixvalue collect  task=arith model=data/policies/arith-tiny num_prompts=64 traces_per_prompt=8 out=runs/traces
    prefixvalue label    traces=runs/traces model=data/policies/arith-tiny positions=steps samples=16 out=runs/labels
    prefixvalue train    --config recipes/configs/arith-tiny.yaml traces=runs/traces output_dir=runs/train
    prefixvalue evaluate checkpoint=runs/train/final traces=runs/traces labels=runs/labels out=runs/eval
    prefixvalue quickstart
    prefixvalue export   traces=runs/traces labels=runs/labels out=runs/export        # TRL, Math-Shepherd, ProcessBench
    prefixvalue import   rollouts=mine.jsonl model=data/policies/arith-tiny task=arith out=runs/traces_mine
    prefixvalue distance traces=runs/quickstart/traces labels=runs/quickstart/labels out=runs/distance
    prefixvalue actions  policy=data/policies/arith-tiny checkpoints=[runs/quickstart/train_head/final] out=runs/actions
    prefixvalue advantages traces=runs/quickstart/heldout_traces checkpoints=[runs/quickstart/train_implicit/final] out=runs/advantages
    prefixvalue steer    policy=data/policies/arith-tiny checkpoints=[runs/quickstart/train_head-pf-siblings/final] out=runs/steer
    prefixvalue distrl   advantage=distrl value_checkpoint=runs/quickstart/train_qhead-siblings/final out=runs/distrl
    prefixvalue distrl-trl split_from=runs/quickstart/train_qhead-siblings/final out=runs/distrl_trl   # TRL's GRPO anchor
    prefixvalue push-data traces=runs/quickstart/traces labels=runs/quickstart/labels repo_id=you/arith-values  # the Hub
    prefixvalue serve    checkpoint=runs/quickstart/train_head/final port=8000      # HTTP rewards (OpenRLHF /get_reward)
    prefixvalue ensemble members=[runs/s0/final,runs/s1/final,runs/s2/final] out=runs/ensemble  # one checkpoint of several
    accelerate launch -m prefixvalue.cli COMMAND ...      # several processes

Each sub-command takes ``--config FILE.yaml`` and ``key=value`` overrides; ``--help`` lists options.
"""

from __future__ import annotations

import importlib
import sys

from .atomic import disk_error

#: sub-command -> module whose ``main(argv)`` runs it (a plain dict, filled here)
COMMANDS: dict[str, str] = {
    "collect": "prefixvalue.stages.collect",
    "label": "prefixvalue.stages.label",
    "train": "prefixvalue.stages.train",
    "evaluate": "prefixvalue.stages.evaluate",
    "quickstart": "prefixvalue.stages.quickstart",
    "distance": "prefixvalue.studies.distance",
    "actions": "prefixvalue.studies.actions",
    "advantages": "prefixvalue.studies.advantages",
    "steer": "prefixvalue.studies.steer",
    "export": "prefixvalue.tools.export",
    "import": "prefixvalue.tools.import_rollouts",
    "export-model": "prefixvalue.tools.export_model",
    "ensemble": "prefixvalue.tools.ensemble",
    "push-model": "prefixvalue.tools.push_model",
    "push-data": "prefixvalue.tools.push_data",
    "serve": "prefixvalue.tools.serve",
    "distrl": "prefixvalue.rl.loop",
    "distrl-trl": "prefixvalue.rl.anchor",
}


def main(argv: list[str] | None = None) -> int:
    """Run ``prefixvalue COMMAND ...``; returns the exit status: 0, or 2 for a refused configuration or
    folder (one line on stderr, `prefixvalue.config.ConfigError`) and for a full, read-only or forbidden disk
    (`disk_error`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        print("\ncommands: " + ", ".join(COMMANDS))
        return 0
    if argv[0] in ("-V", "--version"):
        from . import __version__

        print(__version__)
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(cmd, list(COMMANDS), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        print(f"prefixvalue: unknown command {cmd!r}{hint}", file=sys.stderr)
        return 2
    from .config import ConfigError
    from .processes import exit_with_launcher

    exit_with_launcher()  # a worker of a launcher ends with it, never left running on its own
    module = importlib.import_module(COMMANDS[cmd])
    try:
        return int(module.main(rest))  # every command's main returns its exit status
    except ConfigError as exc:
        msg = str(exc).removeprefix(f"{cmd}: ")  # stages name themselves in their messages
        print(f"prefixvalue {cmd}: {msg}", file=sys.stderr)
        return 2
    except Exception as exc:  # a full, read-only or forbidden disk, however a library wrapped it: one line
        line = disk_error(exc)
        if line is None:
            raise
        print(f"prefixvalue {cmd}: {line}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
