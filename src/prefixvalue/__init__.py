"""prefixvalue: learn and check the value of a prefix.

The value of a prefix s_t is the probability that a policy, continuing from s_t, ends in a
verified-correct answer. See the project README for the pipeline (collect -> label -> train ->
evaluate) and the Python API::

    from prefixvalue import ValueModel
    vm = ValueModel.from_pretrained("runs/quickstart/train_head/final")   # a folder or a Hub id
    vm.score("Q:6-3-9*6-9=", "6-3=3;3-9=4;")                             # P̂ after 0..T tokens

The objects below are imported on first use (module ``__getattr__``), so ``import prefixvalue`` and
the command line start without importing torch.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

#: public name -> module that defines it (imported lazily)
_EXPORTS: dict[str, str] = {
    "ValueModel": "prefixvalue.value.base",
    "ValueModelConfig": "prefixvalue.value.base",
    "StepScores": "prefixvalue.value.base",
    "HeadValueModel": "prefixvalue.value.head",
    "ImplicitValueModel": "prefixvalue.value.implicit",
    "QHeadValueModel": "prefixvalue.value.qhead",
    "CandidateValues": "prefixvalue.value.base",
    "load_value_model": "prefixvalue.value",
    "build_value_model": "prefixvalue.value",
    "VALUE_MODELS": "prefixvalue.value",
    "push_to_hub": "prefixvalue.value.hub",
    "export_token_classification": "prefixvalue.value.export",
    "PromptFormat": "prefixvalue.prompting",
    "LoadOptions": "prefixvalue.loading",
    "load_policy": "prefixvalue.policies",
    "evaluate": "prefixvalue.evaluation.evaluator",
    "ScoringOptions": "prefixvalue.evaluation.options",
    "ConfigError": "prefixvalue.config",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'prefixvalue' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
