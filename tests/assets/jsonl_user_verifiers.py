"""User verifiers for tests/test_jsonl.py, loaded as ``tests/assets/jsonl_user_verifiers.py:NAME``."""

import time


def contains_answer(completion: str, answer: str, ignore_case: bool = False) -> float:
    """1.0 when the answer text occurs in the completion."""
    if ignore_case:
        return float(answer.lower() in completion.lower())
    return float(answer in completion)


def crash_on_boom(completion: str, answer: str) -> float:
    """Raises on completions that contain 'boom', else compares exactly."""
    if "boom" in completion:
        raise RuntimeError("verifier exploded")
    return float(completion.strip() == answer)


def sleep_on_slow(completion: str, answer: str) -> float:
    """Sleeps past any short time limit on completions that contain 'slow', else compares exactly."""
    if "slow" in completion:
        time.sleep(1.0)
    return float(completion.strip() == answer)


def not_a_score(completion: str, answer: str) -> str:
    """Returns text, which is not a score."""
    return "yes"
