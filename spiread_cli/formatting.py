"""Values as text and as JSON: the formatting every presenter shares (the
command output, builtins' println, explanations, DOT labels). Below all of
them: it imports nothing of spiread's."""

from __future__ import annotations

import json
import math

import numpy as np

# Arrays larger than this are summarised with `...`, as numpy prints them.
SUMMARY_THRESHOLD = 100


# RFC 8259 has no inf or nan: they travel as these strings (LANGUAGE.md §8),
# which spiread reads back as the numbers in JSON data and in `--set`.
NON_FINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}


def json_number(x: float):
    if math.isfinite(x):
        return x
    return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")


def json_value(array: np.ndarray) -> dict:
    array = np.asarray(array, dtype=np.float64) + 0.0  # zero is 0, never -0 (format_array)
    nested = array.tolist()
    return {"shape": list(array.shape), "value": json_numbers(nested)}


def json_numbers(nested):
    """Nested lists of floats as JSON numbers (`json_number` each)."""
    if isinstance(nested, list):
        return [json_numbers(x) for x in nested]
    return json_number(nested)


def dumps(document: dict) -> str:
    return json.dumps(document, allow_nan=False, ensure_ascii=False)


def format_array(array: np.ndarray, precision: int = 6, width: int = 120) -> str:
    """A scalar in full (shortest round-trip form), arrays numpy-style in
    lines of at most `width` characters, small entries in scientific
    notation rather than rounded to 0 (a derivative of 1e-10 is not a
    structural zero). Zero is shown as 0, never -0:
    forward and reverse mode reach a zero by different sums, and one may
    carry a sign the other does not."""
    array = np.asarray(array) + 0.0  # -0.0 + 0.0 is 0.0
    if array.ndim == 0:
        return str(json_number(float(array)))
    return np.array2string(array, precision=precision, suppress_small=False, threshold=SUMMARY_THRESHOLD,
                           edgeitems=3, max_line_width=width, separator=" ")


def terminal_width() -> int:
    """The columns text for people may fill: the terminal's, or $COLUMNS, else 80."""
    import shutil
    return shutil.get_terminal_size().columns


def short_shape(shape: tuple) -> str:
    return "scalar" if not shape else "×".join(map(str, shape))
