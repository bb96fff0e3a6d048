"""Text formatting shared by the report's CSV, Markdown and HTML writers."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any


def num(value: Any) -> float | None:
    """``value`` as a float, or None when it is not a number (bool, missing, text) or NaN."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return None if math.isnan(float(value)) else float(value)


def fmt(value: Any, digits: int = 4) -> str:
    """A table cell: floats to ``digits`` places, None or NaN as ``n/a``, anything else as text."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def fmt_seconds(value: float | None) -> str:
    """A duration in the unit a reader takes in at a glance (s, min or h)."""
    if value is None:
        return "n/a"
    if value >= 3600:
        return f"{value / 3600:.1f} h"
    if value >= 120:
        return f"{value / 60:.1f} min"
    return f"{value:.1f} s"


def delta(a: float | None, b: float | None) -> str:
    """``a - b`` with its sign, or an empty string when either is undefined."""
    if a is None or b is None:
        return ""
    return f"{a - b:+.4f}"


def slug(text: str) -> str:
    """A file-name-safe form of ``text`` (``run`` when nothing is left)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "run"


def recorded(value: object) -> str:
    """``value`` as text, or ``not recorded`` when it is missing or empty."""
    return "not recorded" if value in (None, "") else str(value)


def yes_no(value: bool | None) -> str:
    """``yes`` / ``NO`` for a recorded fact, ``unknown`` when it was not recorded."""
    return "unknown" if value is None else "yes" if value else "NO"


def order(name: str, names: Sequence[str]) -> int:
    """Position of ``name`` in ``names``; unknown names sort after the known ones."""
    return names.index(name) if name in names else len(names)
