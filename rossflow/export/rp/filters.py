"""MongoDB-style filters of the Request Processor (``evaluate``, handler and query conditions).

Semantics follow Rossum's engine (``LOCAL_FILTER_OPERATORS``): comparisons with ``None`` are
false, ``$regex`` only matches strings, several operators in one object are ANDed, a plain
value means ``$eq``. Unlike Rossum, an unknown operator is refused when the config is loaded
(:mod:`rossflow.export.rp_spec`) instead of silently failing the condition.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sized
from typing import Any

from rossflow.export.errors import StepError

__all__ = ["evaluate_filter"]

Resolver = Callable[[str], Any]


def _compare(op: str, left: Any, right: Any) -> bool:
    if left is None or right is None:
        return False
    try:
        if op == "$gt":
            return bool(left > right)
        if op == "$gte":
            return bool(left >= right)
        if op == "$lt":
            return bool(left < right)
        return bool(left <= right)
    except TypeError:
        return False


def _contains(container: Any, value: Any) -> bool | None:
    try:
        return value in container
    except TypeError:
        return None


def _apply(op: str, left: Any, right: Any) -> bool:
    if op == "$eq":
        return bool(left == right)
    if op == "$ne":
        return bool(left != right)
    if op in ("$gt", "$gte", "$lt", "$lte"):
        return _compare(op, left, right)
    if op == "$in":
        return bool(_contains(right, left))
    if op == "$nin":
        found = _contains(right, left)
        return found is not None and not found
    if op == "$exists":
        return (left is not None) == bool(right)
    if op == "$regex":
        if not isinstance(left, str) or not isinstance(right, str):
            return False
        try:
            return re.search(right, left) is not None
        except re.error as exc:
            raise StepError(f"invalid $regex {right!r}: {exc}") from None
    if op == "$size":
        if not isinstance(left, Sized) or isinstance(left, (str, bytes)):
            raise StepError(f"$size needs a list, got {type(left).__name__}")
        size = len(left)
        if isinstance(right, Mapping):
            return all(_apply(o, size, r) for o, r in right.items())
        return size == right
    # Unknown operators are refused at load time; reaching here is a bug, not user input.
    raise StepError(f"unknown operator {op!r}")


def evaluate_filter(condition: Mapping[str, Any], resolve: Resolver) -> bool:
    """Whether ``condition`` holds; ``resolve`` maps a path (``field.x.value``) to its value."""
    for key, expected in condition.items():
        if key == "$and":
            if not all(evaluate_filter(sub, resolve) for sub in expected):
                return False
            continue
        if key == "$or":
            if not any(evaluate_filter(sub, resolve) for sub in expected):
                return False
            continue
        actual = resolve(key)
        if isinstance(expected, Mapping) and any(str(k).startswith("$") for k in expected):
            if not all(_apply(op, actual, right) for op, right in expected.items()):
                return False
        elif not _apply("$eq", actual, expected):
            return False
    return True
