"""Values that improve a policy: online RL with outcome (GRPO), TD and DistRL advantages (docs/design.md, "DistRL").

- `objective`: GRPO's group advantages, TD advantages, the clipped loss with DistRL's candidate term;
- `values`: where the dense advantages come from (a value checkpoint, or Monte Carlo at step starts);
- `evaluation`: held-out accuracy and KL from the start policy, the one scorer of every arm and of TRL's anchor;
- `loop`: ``prefixvalue distrl`` (`DistRLConfig`, `run`), what recipes/distrl.py launches.
"""

from .evaluation import PolicyScore, evaluate_policy
from .loop import DistRLConfig, run
from .objective import ARMS, group_advantages, policy_loss, td_advantages

__all__ = [
    "ARMS",
    "DistRLConfig",
    "PolicyScore",
    "evaluate_policy",
    "group_advantages",
    "policy_loss",
    "run",
    "td_advantages",
]
