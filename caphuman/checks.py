"""The one place numbers from users are checked: config dataclasses and command-line flags.

Every check raises :class:`caphuman.errors.ConfigError` with one sentence naming the setting, so
nonsense (NaN, infinity, a negative step count, a seed torch cannot take) stops before any model
loads. :func:`flag` turns a check into an argparse ``type`` (argparse then prints
"argument --steps: ..." and exits with code 2, as for any bad flag).

This module imports nothing heavy: every command's ``add_arguments`` uses it.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any

from caphuman.errors import ConfigError

# torch.Generator.manual_seed takes a 64-bit value; negative seeds are allowed by torch but are
# refused here, so a seed means the same thing in every tool.
MAX_SEED = 2**64 - 1


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got '{value}'.")


def check_finite(name: str, value: float) -> None:
    # NaN compares false with everything, so range checks alone would let it through.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value}.")


def check_positive(name: str, value: float, allow_zero: bool = False) -> None:
    check_finite(name, value)
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}.")


def check_range(name: str, value: float, low: float | None = None, high: float | None = None) -> None:
    """``low <= value <= high`` (either bound may be None) and finite."""
    check_finite(name, value)
    if (low is not None and value < low) or (high is not None and value > high):
        if low is not None and high is not None:
            bounds = f"in [{low}, {high}]"
        elif low is not None:
            bounds = f">= {low}"
        else:
            bounds = f"<= {high}"
        raise ConfigError(f"{name} must be {bounds}, got {value}.")


def check_seed(name: str, value: int) -> None:
    check_range(name, value, 0, MAX_SEED)


def _parse(kind: type, text: str) -> float | int:
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not {'an integer' if kind is int else 'a number'}") from None


def flag(kind: type, check: Callable[..., None], *bounds: Any) -> Callable[[str], Any]:
    """An argparse ``type``: parse as ``kind`` (int or float), then run ``check`` on it.

    Example: ``parser.add_argument("--steps", type=flag(int, check_positive))``.
    """

    def parse(text: str):
        value = _parse(kind, text)
        try:
            check("the value", value, *bounds)
        except ConfigError as error:
            raise argparse.ArgumentTypeError(str(error).removeprefix("the value ").rstrip(".")) from None
        return value

    parse.__name__ = kind.__name__  # argparse names the type in "invalid <type> value" messages
    return parse


def positive_int(allow_zero: bool = False) -> Callable[[str], int]:
    return flag(int, check_positive, allow_zero)


def positive_float(allow_zero: bool = False) -> Callable[[str], float]:
    return flag(float, check_positive, allow_zero)


def ranged_float(low: float | None, high: float | None) -> Callable[[str], float]:
    return flag(float, check_range, low, high)


def ranged_int(low: int | None, high: int | None) -> Callable[[str], int]:
    return flag(int, check_range, low, high)


def seed_flag() -> Callable[[str], int]:
    return flag(int, check_seed)


__all__ = [
    "MAX_SEED",
    "check_choice",
    "check_finite",
    "check_positive",
    "check_range",
    "check_seed",
    "flag",
    "positive_float",
    "positive_int",
    "ranged_float",
    "ranged_int",
    "seed_flag",
]
