"""The order of the Backprop tab's run list: within a sweep, by the overrides that differ, numbers by value.

A sweep's job directories are named by their overrides (``model=sigmoid,optim.lr=0.1``); sorted as text,
``optim.lr=10`` comes before ``optim.lr=3``. :func:`sort_runs` compares the values that differ as numbers.
"""

from __future__ import annotations

import math


def overrides(name: str) -> list[tuple[str | None, str]]:
    """A run name's parts as (key, value): ``model=linear,optim.lr=0.1`` → [("model", "linear"),
    ("optim.lr", "0.1")]; a part without ``=`` (a label such as ``relu``) has key None. Commas inside
    brackets belong to a value (``model.hidden=[8,8]``)."""
    parts, depth, start = [], 0, 0
    for j, c in enumerate(name):
        depth += c in "[(" or -(c in "])")
        if c == "," and depth == 0:
            parts.append(name[start:j])
            start = j + 1
    parts.append(name[start:])
    out = []
    for part in parts:
        key, eq, value = part.partition("=")
        out.append((key, value) if eq else (None, part))
    return out


def _number_or_text(value: str) -> tuple:
    """Numbers before words, numbers by value (0.01 < 0.03 < 0.1 < 1 < 3 < 10), words by text."""
    try:
        number = float(value)
    except ValueError:
        return (1, 0.0, value)
    return (0, number, "") if math.isfinite(number) else (0, math.inf, value)


def sort_runs(names: list[str]) -> list[str]:
    """``names`` (the runs of one group) ordered by the overrides that differ between them, each as a
    number where it is one, in the order the keys first appear; then by name."""
    parsed = {n: overrides(n) for n in names}
    keys: list[str] = []
    for items in parsed.values():
        for key, _ in items:
            if key is not None and key not in keys:
                keys.append(key)
    by_key = {n: dict(items) for n, items in parsed.items()}
    differ = [k for k in keys if len({by_key[n].get(k) for n in names}) > 1]

    def order(name: str) -> tuple:
        have = by_key[name]
        return tuple((0, *_number_or_text(have[k])) if k in have else (1,) for k in differ) + (name,)

    return sorted(names, key=order)
