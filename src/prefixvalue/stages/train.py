"""``prefixvalue train``: train a value model on outcome-labelled traces.

    prefixvalue train --config recipes/configs/arith-tiny.yaml traces=runs/quickstart/traces output_dir=runs/quickstart/train
    accelerate launch -m prefixvalue.cli train --config recipes/configs/arith-tiny.yaml ...
    accelerate launch recipes/train.py --config recipes/configs/arith-tiny.yaml ...   # the same loop

The config (`TrainConfig`) and the loop (`run`) live in the library, `prefixvalue.training`, because the
quickstart, the distance study and the tests call the loop in process; this module is the command.
"""

from __future__ import annotations

from ..config import parse_config
from ..training import TrainConfig, run


def main(argv: list[str] | None = None) -> int:
    """Run ``prefixvalue train`` (or ``recipes/train.py``) from the command line; returns the exit
    status. The final metrics are in output_dir/final_metrics.json; `run` returns them."""
    run(parse_config(TrainConfig, argv, prog="prefixvalue train"))
    return 0


__all__ = ["TrainConfig", "main", "run"]
