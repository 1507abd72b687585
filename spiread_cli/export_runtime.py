"""The helpers an exported module calls (`spiread export --to python`).

spiread never imports this module: spiread_cli/export.py copies into each
exported module the functions it calls (an op's `Export.python` form names
them), so the module stands alone. They are written against the Python array
API through array-api-compat, the namespace taken from their arguments, and
compute what the op table's value rules compute (spiread_cli/ops.py).
"""

import numpy as np
from array_api_compat import array_namespace, device, is_numpy_array, is_torch_array


def _arguments(function: str, given: dict, own: dict, shapes: dict) -> tuple:
    """The namespace of the arrays given, and every argument as a float64
    array of it on their device, checked as spiread checks a value it is
    given (`_checked`); one not given is the program's own value. Plain
    Python numbers and (nested) lists take the arrays' namespace, or numpy's
    when no array is given."""
    arrays = [v for v in given.values() if type(v) is np.ndarray or _an_array(v)]
    if all(type(v) is np.ndarray for v in arrays):
        # numpy's own arrays (or none): numpy's asarray, a tenth of the namespace's (0.1 against 0.9 us)
        return array_namespace(*arrays[:1] or [np.empty(0)]), [
            np.asarray(own[name] if v is None else _checked(v, shapes[name], function, name), dtype=np.float64)
            for name, v in given.items()]
    xp = array_namespace(*arrays)
    where = device(arrays[0])
    return xp, [xp.asarray(own[name] if v is None else _checked(v, shapes[name], function, name), dtype=xp.float64,
                           device=where) for name, v in given.items()]


def _an_array(value) -> bool:
    """An array of some namespace (numpy's scalars that are Python numbers
    aside); anything else (numbers, lists, text) is read by np.asarray."""
    return hasattr(value, "dtype") and hasattr(value, "shape") and not isinstance(value, (int, float, complex))


def _checked(value, shape: tuple, function: str, name: str):
    """`value` if it is real numbers (bool, integer or float: not complex,
    text or objects) of `shape`, the shape `function` was exported for (a
    plain number or list as a numpy array); else an error naming it (`name`),
    the shape it needs and the shape it has. Non-finite entries are taken,
    as spiread takes them."""
    if type(value) is not np.ndarray and not _an_array(value):
        try:
            value = np.asarray(value)
        except ValueError:
            raise ValueError(f"{function}(): `{name}`: its rows differ in length") from None
    kind = getattr(value.dtype, "kind", None)  # numpy's dtype (CuPy's, Dask's, JAX's) says it at once
    if kind is None and hasattr(value.dtype, "is_complex"):  # PyTorch's: every other dtype is real numbers
        kind = "c" if value.dtype.is_complex else "f"
    if kind == "O":  # numbers numpy keeps as objects (2**70, a Fraction, a Decimal) are numbers
        from decimal import Decimal
        from numbers import Real
        if all(isinstance(x, (Real, Decimal)) for x in value.flat):
            try:
                value, kind = value.astype(np.float64), "f"
            except OverflowError:
                raise ValueError(f"{function}(): `{name}`: a number is beyond the range of a float64 (about "
                                 "±1.8e308)") from None
    if not (kind in "biuf" if kind is not None else
            array_namespace(value).isdtype(value.dtype, ("bool", "integral", "real floating"))):
        named = {"U": "text", "S": "text", "O": "Python objects", "c": "complex numbers"}.get(kind, value.dtype)
        raise TypeError(f"{function}(): `{name}` must be real numbers, not {named}")
    if value.shape != shape and tuple(value.shape) != shape:  # a torch.Size equals its tuple, a Dask shape may not
        raise ValueError(f"{function}(): `{name}` must have shape {shape}, not {tuple(value.shape)}: the module was "
                         f"exported for that shape (export the program again with a value of the new shape to use it)")
    return value


def _constant(xp, value: np.ndarray, like):
    """A constant of the program, in the namespace and on the device of `like`."""
    return xp.asarray(value, device=device(like)) if value.dtype.kind in "biu" else \
        xp.asarray(value, dtype=xp.float64, device=device(like))


def _directions(xp, direction, like: dict) -> list:
    """The HVP's direction for each value differentiated by (zero where none
    is given), each checked as an argument is, for the shape of its value: a
    dict by name, or, when one value is differentiated by, its direction
    alone (as `jax.jvp` and `torch.func.jvp` take it)."""
    if not isinstance(direction, dict):
        if len(like) != 1:
            raise TypeError(f"hvp(): the direction is a dict of names to values, e.g. {{{next(iter(like))!r}: ...}}, "
                            f"since {len(like)} values are differentiated by: {sorted(like)}")
        direction = {next(iter(like)): direction}
    unknown = set(direction) - set(like)
    if unknown:
        raise TypeError(f"hvp(): no value {sorted(unknown)[0]!r} is differentiated by; they are {sorted(like)}")
    return [xp.zeros_like(x) if direction.get(name) is None else
            xp.asarray(_checked(direction[name], tuple(x.shape), "hvp", f"direction[{name!r}]"), dtype=xp.float64,
                       device=device(x)) for name, x in like.items()]


def _into(ufunc, a, b, out):
    """numpy's `ufunc` (add, subtract, multiply, divide) of a and b, written
    into `out` (a or b: a large array the function lets go) where it is
    numpy's; any other namespace gets a new array, as `a - b` makes it
    (PyTorch's autograd may have kept `out`, JAX's arrays cannot change)."""
    if is_numpy_array(out):
        return ufunc(a, b, out=out)
    import operator
    return getattr(operator, {"add": "add", "subtract": "sub", "multiply": "mul", "divide": "truediv"}[ufunc.__name__])(a, b)


def _sigmoid(x):
    # exp of a negative number only, so neither branch overflows.
    xp = array_namespace(x)
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1 / (1 + e), e / (1 + e))


def _scale(t, d):
    """t · d, except that a zero t stays zero where d is infinite or nan."""
    product = t * d
    xp = array_namespace(product)
    if isinstance(t, (int, float)):  # a number: all zero or not at all
        return xp.zeros_like(product) if t == 0 else product
    return xp.where(t == 0, 0.0, product)


def _row_total(x):
    """The sum of each row, kept as a column. numpy sums narrow rows faster
    by einsum (228,146 rows of 27: 1.7 ms against 5.3)."""
    if is_numpy_array(x) and x.shape[-1] <= 64:
        return np.einsum("...j->...", x)[..., None]
    return array_namespace(x).sum(x, axis=-1, keepdims=True)


def _exp_rows(x):
    """exp(x − rowmax(x)) and its row totals (and the maxima), as the op
    table's softmax ops compute them: the softmax is e / total, log-sum-exp
    rowmax + log(total). On numpy the exp is written into the difference:
    a fresh array past 32 MiB costs its pages' faults again (np.exp of
    228,146 × 27: 5.2 ms into an array, 11.9 into a new one)."""
    xp = array_namespace(x)
    m = xp.max(x, axis=-1, keepdims=True)
    e = x - m
    e = np.exp(e, out=e) if is_numpy_array(e) else xp.exp(e)
    return m, e, _row_total(e)


def _softmax_of(parts, in_place=False):
    """The rows' softmax from `_exp_rows`'s parts: `in_place` (where they
    are read no more), into e where it is numpy's."""
    _, e, total = parts
    return np.divide(e, total, out=e) if in_place and is_numpy_array(e) else e / total


def _log_softmax_of(x, parts):
    """The rows' log softmax from `_exp_rows`'s parts, as the op's value rule: (x − max) − log(total)."""
    m, _, total = parts
    return (x - m) - array_namespace(x).log(total)


def _log_sum_exp(x, axis):
    """log Σ exp(x) over all entries (axis None) or along `axis`, shifted by
    the maximum so no exp overflows; an infinite maximum is not subtracted
    (−inf − −inf is nan), as the op's value rule."""
    xp = array_namespace(x)
    m = xp.max(x, axis=axis, keepdims=True)
    m = xp.where(xp.isfinite(m), m, xp.zeros_like(m))
    total = xp.sum(xp.exp(x - m), axis=axis, keepdims=True)
    shape = () if axis is None else tuple(n for k, n in enumerate(x.shape) if k != axis)
    return xp.reshape(xp.log(total) + m, shape)


def _mean_log_softmax_pick(z, picks, parts):
    """The mean of log softmax(z) at the flat positions `picks`, from
    `_exp_rows`'s parts: each pick less its row's log-sum-exp, as the op's
    value rule computes it (the whole log softmax is never written)."""
    xp = array_namespace(z)
    m, _, total = parts
    log_sum_exp = xp.reshape(m + xp.log(total), (-1,))
    rows = picks // max(z.shape[-1], 1)
    return xp.sum(xp.take(xp.reshape(z, (-1,)), picks) - xp.take(log_sum_exp, rows)) / picks.shape[0]


def _row_cumsum(x, reverse=False):
    """Running sums along each row (a vector is one row); `reverse`: from the end."""
    xp = array_namespace(x)
    if reverse:
        return xp.flip(xp.cumulative_sum(xp.flip(x, axis=-1), axis=-1), axis=-1)
    return xp.cumulative_sum(x, axis=-1)


def _exclusive_products(x, over: str):
    """Each entry's product of the others (over "all" entries, or along each
    of the "rows"), without dividing, so zeros are exact."""
    xp = array_namespace(x)
    rows = xp.reshape(x, (1, -1)) if over == "all" else x
    n = rows.shape[1]
    eye = xp.eye(n, dtype=xp.bool, device=device(x))
    others = xp.where(eye, 1.0, xp.broadcast_to(rows[:, None, :], (rows.shape[0], n, n)))
    return xp.reshape(xp.prod(others, axis=-1), x.shape)


def _scatter_add(values, index, size: int):
    """`size` rows of zeros with each row of `values` added into the row
    `index` gives it (rows sent to the same place add up)."""
    xp = array_namespace(values)
    if is_numpy_array(values) and values.ndim == 1:
        return np.bincount(index, weights=values, minlength=size).astype(np.float64)
    if is_numpy_array(values):  # each row's entries at their flat positions: one bincount
        k = values.size // max(values.shape[0], 1)
        flat = (index[:, None] * k + np.arange(k)).reshape(-1)
        return np.bincount(flat, weights=values.reshape(-1), minlength=size * k).reshape((size,) + values.shape[1:])
    if is_torch_array(values):
        zeros = xp.zeros((size,) + tuple(values.shape[1:]), dtype=values.dtype, device=device(values))
        return zeros.index_add_(0, index, values)
    # Any other namespace: a product with the one-hot matrix of the places.
    places = xp.astype(xp.arange(size, device=device(values))[:, None] == index[None, :], values.dtype)
    return xp.reshape(places @ xp.reshape(values, (values.shape[0], -1)), (size,) + tuple(values.shape[1:]))


def _add_flat(x, v, positions, distinct: bool, out=None):
    """x with v's entries added at their flat positions (an entry given twice
    gets both). On numpy into `out` (x, an array the function lets go) where
    it is given, else a new array; where the positions are `distinct`, at
    them alone. Any other namespace gets a new array, as `_into` makes it."""
    if not (is_numpy_array(x) and is_numpy_array(v)):
        return x + _scatter_flat(v, positions, tuple(x.shape))
    if not distinct:
        return np.add(x, _scatter_flat(v, positions, x.shape), out=out)
    out = np.array(x, dtype=np.float64, order="C") if out is None or not out.flags.c_contiguous else out
    out.reshape(-1)[positions] += v
    return out


def _scatter_flat(x, positions, shape: tuple):
    """A `shape` array of zeros with x's entries added at their flat positions."""
    xp = array_namespace(x)
    size = 1
    for n in shape:
        size *= n
    return xp.reshape(_scatter_add(xp.reshape(x, (-1,)), xp.reshape(positions, (-1,)), size), shape)
