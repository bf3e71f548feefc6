"""bench/results.json: the figures of the latest `make bench`, flat and numeric.

Every benchmark merges its own keys (`listener.bare_eps`, `claims.double`,
...) into the one file, so running one benchmark alone keeps the others'
figures. The file holds nothing but `"area.name": number` pairs, so any
reader (the README's table, a plot, a CI gate) can take it as it is.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

RESULTS = Path(__file__).with_name("results.json")


def record(figures: Mapping[str, float | int], *, path: Path = RESULTS) -> dict[str, float | int]:
    """Merge `figures` into the results file and return every figure it now holds.

    A key that is not `area.name` or a value that is not a finite number is a
    bug in the benchmark: it raises rather than writing a file a reader
    cannot use.
    """
    for key, value in figures.items():
        if not isinstance(key, str) or "." not in key:
            raise ValueError(f"benchmark key {key!r} must be 'area.name'")
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or not math.isfinite(value):
            raise ValueError(f"benchmark figure {key}={value!r} must be a finite number")
    try:
        merged: dict[str, float | int] = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        merged = {}
    merged.update(figures)
    merged = dict(sorted(merged.items()))
    # Written beside the target and renamed: a reader never sees half a file.
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=path.parent,
                                     delete=False, suffix=".tmp") as tmp:
        json.dump(merged, tmp, indent=2)
        tmp.write("\n")
    os.replace(tmp.name, path)
    return merged
