"""Numbers as text: the one set of formatters behind report.md, the study sections, the quickstart's
summary and the model card.

Each caller keeps the words it has always written: the placeholder of a missing value (``none``:
``n/a``, an em dash or an en dash) and the decimals are parameters, not copies of the function.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def fixed(v: Any, digits: int = 3, none: str = "n/a") -> str:
    """`v` with `digits` decimals (ints too: ``3`` → ``3.000``), or `none` when it is None."""
    return none if v is None else f"{v:.{digits}f}"


def num(v: Any, digits: int = 3, none: str = "n/a") -> str:
    """A float with `digits` decimals, any other value as written (``12``, ``"x"``), `none` for None."""
    if v is None:
        return none
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def general(v: Any) -> str:
    """A number in the shortest general form (``%g``: ``3``, ``0.25``, ``1e-05``); anything else as written."""
    return f"{v:g}" if isinstance(v, (int, float)) else str(v)


def significant(v: float, digits: int = 4) -> str:
    """`v` to `digits` significant figures (``%.4g``)."""
    return f"{v:.{digits}g}"


def interval(ci: Sequence[Any] | None, digits: int = 2, missing: str = "(no CI)", sep: str = "") -> str:
    """A confidence interval as ``[lo, hi]`` with `digits` decimals after `sep`; `missing` when there is
    none (None, empty, or a bound that is None)."""
    if not ci or None in ci:
        return missing
    return f"{sep}[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def with_ci(
    value: Any, ci: Sequence[Any] | None, digits: int = 3, ci_digits: int | None = None, none: str = "n/a"
) -> str:
    """``value [lo, hi]`` (value to `digits` decimals, the interval to `ci_digits`, default `digits`), the
    value alone when there is no usable interval (None, not two bounds, a bound that is None), and `none`
    when the value is None."""
    if value is None:
        return none
    d = digits if ci_digits is None else ci_digits
    if ci and len(ci) == 2 and None not in ci:
        return f"{value:.{digits}f} [{ci[0]:.{d}f}, {ci[1]:.{d}f}]"
    return f"{value:.{digits}f}"


def correlation_cell(c: Mapping[str, Any], ci_digits: int = 3) -> str:
    """A metrics.json correlation (``{"value", "ci"}``) as ``value [lo, hi]`` (`with_ci`, 3 decimals), or n/a."""
    return with_ci(c.get("value"), c.get("ci"), 3, ci_digits)


__all__ = ["correlation_cell", "fixed", "general", "interval", "num", "significant", "with_ci"]
