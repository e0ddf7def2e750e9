"""Schemas of the pipeline's two datasets: traces (written by collect and import) and prefix labels (written
by label). The fields and their meaning are the contracts of docs/design.md, "Files on disk"."""

from __future__ import annotations

import datasets

#: schema of a traces dataset written by collect (contract fields first, then run metadata)
TRACE_FEATURES = datasets.Features(
    {
        "trace_id": datasets.Value("string"),
        "prompt_id": datasets.Value("string"),
        "prompt": datasets.Value("string"),
        "completion": datasets.Value("string"),
        "prompt_ids": datasets.List(datasets.Value("int32")),
        "completion_ids": datasets.List(datasets.Value("int32")),
        "outcome": datasets.Value("float64"),
        "verifier_error": datasets.Value("string"),
        "step_spans": datasets.List(datasets.List(datasets.Value("int32"))),
        "step_labels": datasets.List(datasets.Value("bool")),
        "logprobs": datasets.List(datasets.Value("float32")),
        "finish_reason": datasets.Value("string"),
        "outcome_note": datasets.Value("string"),
        "answer": datasets.Value("string"),
        "prompt_meta": datasets.Value("string"),
        "task": datasets.Value("string"),
        "task_args": datasets.Value("string"),
        "model": datasets.Value("string"),
        "sampling": datasets.Value("string"),
        "prompt_format": datasets.Value("string"),
        "model_load": datasets.Value("string"),
        "backend": datasets.Value("string"),
        "fail_truncated": datasets.Value("bool"),
        "seed": datasets.Value("int64"),
        "prefixvalue_version": datasets.Value("string"),
    }
)


#: schema of a prefix-labels dataset written by label (contract fields first)
LABEL_FEATURES = datasets.Features(
    {
        "trace_id": datasets.Value("string"),
        "position": datasets.Value("int32"),
        "n": datasets.Value("int32"),
        "successes": datasets.Value("float64"),
        "mean": datasets.Value("float64"),
        "ci_low": datasets.Value("float64"),
        "ci_high": datasets.Value("float64"),
        "prefix_tokens": datasets.Value("int32"),
        "method": datasets.Value("string"),
        "prompt_id": datasets.Value("string"),
    }
)
