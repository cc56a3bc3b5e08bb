"""A setting's value from YAML, the command line or Python, turned into its type, or refused with its key named."""

from __future__ import annotations

import math

from cnnkit.core.errors import CnnkitError


def to_type(key: str, value, kind: type, optional: bool):
    """`value` as `kind` (int, float, bool or str); None only where the setting is `optional`.
    Numbers must be finite: an infinite rate or a NaN seed is a mistake, never a setting."""
    if value is None:
        if optional:
            return None
        raise CnnkitError(f"setting {key!r} needs a value ({kind.__name__}); leave it out to use the default")
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        converted = value
    else:
        try:
            converted = _convert(kind, value)
        except (ValueError, KeyError, TypeError, OverflowError):
            raise CnnkitError(f"setting {key!r} must be {kind.__name__}, got {value!r}") from None
    if kind in (int, float) and isinstance(converted, (int, float)) and not math.isfinite(converted):
        raise CnnkitError(f"setting {key!r} must be a finite number, got {value!r}")
    return converted


def _convert(kind: type, value):
    if isinstance(value, (list, dict, tuple, set)):
        raise TypeError  # a YAML list or mapping where one value belongs
    if kind is bool:
        return {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}[str(value).lower()]
    if kind is int:
        number = float(value)
        if not number.is_integer():
            raise ValueError
        return int(number)
    return kind(value)
