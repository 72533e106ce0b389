"""Parsed TOML and JSON, narrowed: tomllib and json hand back untyped values, and the
code that reads them (migrate, settings, the pool's memory) takes these views of them.
A value of another shape reads as empty, as a missing one does.
"""

from __future__ import annotations


def table(value: object) -> dict[str, object]:
    """A table (dict) with string keys, as TOML and JSON objects have; {} otherwise."""
    if not isinstance(value, dict):
        return {}
    return {str(key): item for key, item in value.items()}


def items(value: object) -> list[object]:
    """An array's items; [] for anything else."""
    return list(value) if isinstance(value, list) else []


def tables(value: object) -> list[dict[str, object]]:
    """An array of tables (``[[name]]``); items that are not tables are left out."""
    return [table(item) for item in items(value) if isinstance(item, dict)]


def integer(value: object) -> int:
    """``int(value)`` for the values int() takes (numbers, numeric strings)."""
    if isinstance(value, int | float | str):
        return int(value)
    raise TypeError(f"not a number: {value!r}")


def number(value: object) -> float:
    """``float(value)`` for the values float() takes (numbers, numeric strings)."""
    if isinstance(value, int | float | str):
        return float(value)
    raise TypeError(f"not a number: {value!r}")


def array(value: object) -> list[object]:
    """An array's items; anything else raises TypeError (for a reader that must refuse
    malformed input rather than read it as empty)."""
    if not isinstance(value, list):
        raise TypeError(f"not an array: {type(value).__name__}")
    return list(value)
