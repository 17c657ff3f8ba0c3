"""Op arguments as they travel: the one walker over nested tuples, lists and dict values.

Every place that rewrites an op's arguments uses `walk`: the client turning pointers into
references (pointer.py), pipelined prediction standing meta tensors in for pointers
(pipeline.py), a worker turning the pointers it holds into references on the worker they
point to (worker/core.py). Imports nothing.
"""

from __future__ import annotations

from typing import Any, Callable

__all__ = ["walk"]


def walk(value: Any, replace: dict[type, Callable[[Any], Any]], other: Callable[[Any], Any] | None = None) -> Any:
    """`value` with each leaf whose exact type is in `replace` replaced by `replace[type](leaf)`.

    Tuples, lists and dicts (their values) are rebuilt with the same type; `other`, if given,
    sees every remaining leaf and returns what stands in its place.
    """
    kind = type(value)
    fn = replace.get(kind)
    if fn is not None:
        return fn(value)
    if kind is tuple or kind is list:
        return kind([walk(v, replace, other) for v in value])
    if kind is dict:
        return {k: walk(v, replace, other) for k, v in value.items()}
    return value if other is None else other(value)
