"""How report.md writes a number in its tables (`prefixvalue.formatting`, bound once for the report).

report.md's evaluation tables show a missing number as an em dash; the quickstart's sections and
summary write ``n/a`` (`prefixvalue.formatting.fixed`'s default).
"""

from __future__ import annotations

from typing import Any

from ...formatting import num

#: a missing number in report.md's evaluation tables
DASH = "—"


def cell(v: Any, digits: int = 3) -> str:
    """A number in a report.md table: a float to `digits` decimals, any other value as written, None as
    `DASH` (`prefixvalue.formatting.num`)."""
    return num(v, digits, none=DASH)


__all__ = ["DASH", "cell"]
