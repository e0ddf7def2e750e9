"""Train a value model (implicit IPVRM or explicit head) on outcome-labelled traces.

    accelerate launch --config_file recipes/accelerate/cpu.yaml recipes/train.py --config recipes/configs/arith-tiny.yaml traces=runs/quickstart/traces output_dir=runs/quickstart/train
    python recipes/train.py --config recipes/configs/arith-tiny.yaml value_model.kind=head max_steps=100 report_to=disk,wandb

One script for 1..N processes (accelerate); options: ``python recipes/train.py --help``. The loop
itself is `prefixvalue.training.run` (read it top to bottom), also run by ``prefixvalue train``
and the quickstart, so all of them train the same way. Mixed precision is accelerate's setting
(``mixed_precision`` in the accelerate config, or ``accelerate launch --mixed_precision bf16``).
The final value checkpoint is ``output_dir/final``; a killed run restarted with the same command resumes from the last complete checkpoint in ``output_dir/checkpoints``.
"""

import sys

from prefixvalue import cli
from prefixvalue.stages.train import main
from prefixvalue.training import TrainConfig, latest_checkpoint, run

__all__ = ["TrainConfig", "latest_checkpoint", "main", "run"]

if __name__ == "__main__":
    # through the CLI, so a mistake in the config is one line on stderr and exit status 2, not a traceback
    raise SystemExit(cli.main(["train", *sys.argv[1:]]))
