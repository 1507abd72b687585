"""Showing results: text through rich for people, strict JSON for scripts."""

from __future__ import annotations

import json
import math

import numpy as np


# Arrays larger than this are summarised with `...`, as numpy prints them.
SUMMARY_THRESHOLD = 100


def json_number(x: float):
    """RFC 8259 has no inf or nan: they travel as strings."""
    if math.isfinite(x):
        return x
    return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")


def json_value(array: np.ndarray) -> dict:
    array = np.asarray(array, dtype=np.float64)
    nested = array.tolist()
    return {"shape": list(array.shape), "value": _map_numbers(nested)}


def _map_numbers(nested):
    if isinstance(nested, list):
        return [_map_numbers(x) for x in nested]
    return json_number(nested)


def dumps(document: dict) -> str:
    return json.dumps(document, allow_nan=False, ensure_ascii=False)


def format_array(array: np.ndarray, precision: int = 6) -> str:
    """A scalar in full (shortest round-trip form), arrays numpy-style."""
    array = np.asarray(array)
    if array.ndim == 0:
        return str(json_number(float(array)))
    return np.array2string(array, precision=precision, suppress_small=True, threshold=SUMMARY_THRESHOLD,
                           edgeitems=3, max_line_width=120, separator=" ")


def short_shape(shape: tuple) -> str:
    return "scalar" if not shape else "×".join(map(str, shape))


def values_table(rows: list[tuple[str, np.ndarray]]):
    """Aligned `name  shape  value` lines; a matrix continues on the lines below."""
    from rich.text import Text

    name_width = max((len(name) for name, _ in rows), default=0)
    shape_width = max((len(short_shape(np.shape(v))) for _, v in rows), default=0)
    indent = " " * (name_width + shape_width + 4)
    out = Text()
    for name, value in rows:
        out.append(name.ljust(name_width), style="bold cyan")
        out.append("  ")
        out.append(short_shape(np.shape(value)).ljust(shape_width), style="magenta")
        out.append("  ")
        out.append(format_array(value).replace("\n", "\n" + indent))
        out.append("\n")
    out.rstrip()
    return out


def stdout_console():
    from rich.console import Console
    import sys
    # Piped output is not wrapped at 80 columns: a script reads whole lines.
    return Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 10_000)


def stderr_console():
    from rich.console import Console
    return Console(stderr=True, highlight=False)
