"""prefixvalue: learn and check the value of a prefix.

The value of a prefix s_t is the probability that a policy, continuing from s_t, ends in a
verified-correct answer. See the project README for the pipeline (collect -> label -> train ->
evaluate).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
