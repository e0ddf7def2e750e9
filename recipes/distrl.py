"""Improve a policy by online RL with outcome (GRPO), TD or DistRL advantages from a value model.

    accelerate launch --config_file recipes/accelerate/cpu.yaml recipes/distrl.py advantage=distrl value_checkpoint=runs/quickstart/train_qhead-siblings/final out=runs/distrl/qhead
    python recipes/distrl.py advantage=outcome split_from=runs/quickstart/train_qhead-siblings/final out=runs/distrl/grpo
    python recipes/distrl.py advantage=td value=mc split_from=runs/quickstart/train_qhead-siblings/final out=runs/distrl/mc

One script for 1..N processes (accelerate: each process samples its share of a step's prompts, gradients are
all-reduced); options: ``python recipes/distrl.py --help``. The loop itself is `prefixvalue.rl.loop.run` (read it
top to bottom), also run by ``prefixvalue distrl`` and ``make distrl``. The policy's checkpoint is ``out/final``; a
killed run restarted with the same command resumes from its last checkpoint in ``out/checkpoints``. TRL's
GRPOTrainer on the same settings: ``prefixvalue distrl-trl`` (`prefixvalue.rl.anchor`).
"""

import sys

from prefixvalue import cli
from prefixvalue.rl import DistRLConfig, run

__all__ = ["DistRLConfig", "run"]

if __name__ == "__main__":
    # through the CLI, so a mistake in the config is one line on stderr and exit status 2, not a traceback
    raise SystemExit(cli.main(["distrl", *sys.argv[1:]]))
