"""argparse types for flags that set no config key (config keys are range-checked by :mod:`pcam.config`).

Each raises ``argparse.ArgumentTypeError``, which the CLI turns into one line and exit code 2.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def _parse(text: str, convert: Callable[[str], T], expected: str) -> T:
    """``convert(text)``, or the one-line argparse error saying what was ``expected``."""
    try:
        return convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise argparse.ArgumentTypeError(message)


def positive_int(text: str) -> int:
    """An integer >= 1."""
    value = _parse(text, int, "an integer >= 1")
    _check(value >= 1, f"must be >= 1, got {value}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0."""
    value = _parse(text, float, "a number")
    _check(math.isfinite(value) and value > 0, f"must be a finite number > 0, got {text}")
    return value


def finite_float(text: str) -> float:
    """Any finite number (NaN and infinities refused)."""
    value = _parse(text, float, "a number")
    _check(math.isfinite(value), f"must be a finite number, got {text}")
    return value


def integer(text: str) -> int:
    """Any integer; the config key it sets checks the range."""
    return _parse(text, int, "an integer")
