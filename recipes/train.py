"""Train a value model (implicit IPVRM or explicit head) on outcome-labelled traces.

    accelerate launch --config_file recipes/accelerate/cpu.yaml recipes/train.py --config recipes/configs/quickstart.yaml traces=runs/quickstart/traces output_dir=runs/quickstart/train
    python recipes/train.py --config recipes/configs/quickstart.yaml value_model=head max_steps=100 report_to=disk,wandb

One script for 1..N processes (accelerate); options: ``python recipes/train.py --help``. The loop
itself is `prefixvalue.stages.train` (read it top to bottom), so the quickstart and this script train the
same way. The final value checkpoint is ``output_dir/final``; a killed run restarted with the same
command resumes from the last complete checkpoint in ``output_dir/checkpoints``.
"""

import sys

from prefixvalue.stages.train import TrainConfig, latest_checkpoint, main, run

__all__ = ["TrainConfig", "latest_checkpoint", "main", "run"]

if __name__ == "__main__":
    main(sys.argv[1:])
