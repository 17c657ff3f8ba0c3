"""Op arguments as they travel: the one walker over nested tuples, lists and dict values.

Every place that rewrites an op's arguments uses `walk`: the client turning pointers into
references (pointer.py), pipelined prediction standing meta tensors in for pointers
(pipeline.py), a worker turning the pointers it holds into references on the worker they
point to (worker/core.py). Imports nothing.
"""

from __future__ import annotations

from typing import Any, Callable

__all__ = ["walk"]


def walk(value: Any, replace: dict[type, Callable[[Any], Any]], other: Callable[[Any], Any] | None = None,
         freeze: bool = False) -> Any:
    """`value` with each leaf whose exact type is in `replace` replaced by `replace[type](leaf)`.

    Tuples, lists and dicts (their values) are rebuilt with the same type; `other`, if given,
    sees every remaining leaf and returns what stands in its place. With `freeze`, containers
    become hashable tuples tagged with their type (a cache key: `x[[0, 1]]` and `x[(0, 1)]`
    differ).
    """
    kind = type(value)
    fn = replace.get(kind)
    if fn is not None:
        return fn(value)
    if kind is tuple or kind is list:
        items = [walk(v, replace, other, freeze) for v in value]
        return (kind, *items) if freeze else kind(items)
    if kind is dict:
        if freeze:
            return (dict, *((k, walk(v, replace, other, freeze)) for k, v in value.items()))
        return {k: walk(v, replace, other) for k, v in value.items()}
    return value if other is None else other(value)
