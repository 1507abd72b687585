"""Values as text and as JSON: the formatting every presenter shares (the
command output, builtins' println, explanations, DOT labels). Below all of
them: it imports nothing of spiread's."""

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
    return {"shape": list(array.shape), "value": json_numbers(nested)}


def json_numbers(nested):
    """Nested lists of floats as JSON numbers (`json_number` each)."""
    if isinstance(nested, list):
        return [json_numbers(x) for x in nested]
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
