"""One derivative statement per op, interpreted many ways.

Every op in the table (spiread_cli/ops.py) states its derivative once, as its
vjp written over the table's own ops: ``derivative(i, g, out, *xs, emit,
**params)`` returns what the output's cotangent `g` sends to operand `i`
(None where that is 0). `g`, `out` and the operands are whatever the
interpreter `emit` works on; the statement only combines them through
``emit(op_name, inputs, **params)``, ``emit.const(value, name=None)`` and
``emit.shape(v)``. Each use of a derivative is an interpreter of that one
statement (HIPS autograd's vjps over differentiable primitives, JAX's
interpreters over one program):

- `NUMERIC`: the values are numpy (or Dask) arrays and an op is its `impl`:
  the numeric vjp of the first-order sweeps;
- `tape.Emitter`: the values are tape nodes and an op is recorded: the
  backward pass as a graph, differentiated again for Hessians (and again for
  third derivatives: every op's statement is made of ops with statements);
- `Printer`: the values are formulas: `grad --explain`'s rule text;
- `CodeWriter`: the values are Python names: the rule written out as code,
  which `compiled_vjp` runs as the numeric vjp;
- `jvp_term`: forward mode. The statement is linear in `g`; tracing it with
  `g` symbolic (`LinearTrace`) separates the coefficients, computed at once,
  from the linear steps, and running those steps backwards, each through
  its own op's statement, applies the transpose — the Jacobian itself — to a
  tangent (JAX's transposition, in the other direction). Tangents carry a
  leading batch axis (one slice per seed direction): the linear ops apply
  to it by their `batched` value rule, or one direction at a time.

This module holds what every interpretation shares — the registry of ops
by name (`OPS`, which the table fills, and `IMPLS`), how a rule names its
operands — and the computed one, `NUMERIC`. The others have a module each:
rules_forward.py (the statement transposed for forward mode, and evaluated
on batches), rules_printed.py (`Printer`), rules_code.py (`CodeWriter`, and
`compiled_vjp`/`compiled_jvp`, which run what it writes).
"""

from __future__ import annotations

from typing import Callable

import numpy as np


class Registry(dict):
    """Name -> entry: the op table's primitives, filled by spiread_cli/ops.py
    as it defines them (what tests and tools iterate over), and, found by
    name but not listed, the ops that join a tape to what runs below it
    (`beyond`: spiread_cli/row_totals.py's sums over row chunks)."""

    def __init__(self):
        super().__init__()
        self.beyond: dict = {}

    def __missing__(self, name: str):
        return self.beyond[name]


OPS = Registry()


# ---------------------------------------------------------------- numeric


# The primal rules by name, for `Numeric` (one lookup fewer per step: the
# first-order sweeps evaluate statements step by step).
IMPLS = Registry()


class Numeric:
    """Evaluates a statement: each op by its primal rule."""

    def __call__(self, name: str, inputs: list, **params):
        return IMPLS[name](*inputs, **params)

    @staticmethod
    def const(value, name: str | None = None):
        return value if type(value) is float else np.asarray(value, dtype=np.float64)

    @staticmethod
    def shape(v) -> tuple:
        return v.shape if type(v) is np.ndarray else np.shape(v)


NUMERIC = Numeric()


def interpreted_vjp(derivative: Callable) -> Callable:
    """The numeric vjp an op gets from its statement."""
    def vjp(i, g, out, *xs, **params):
        result = derivative(i, g, out, *xs, emit=NUMERIC, **params)
        return np.zeros_like(xs[i], dtype=np.float64) if result is None else result
    return vjp


def without_residual(rule: Callable) -> Callable:
    """A rule interpreted from the statement, for an op whose fast paths keep
    a residual: the statement reads the operands, not the residual."""
    def rule_without_residual(*args, residual=None, **params):
        return rule(*args, **params)
    if hasattr(rule, "resolve"):  # a compiled jvp's (rules_code.compiled_jvp)
        rule_without_residual.resolve = lambda ts, out, xs, params, unguarded=False, into=False: rule.resolve(
            ts, out, xs, {k: v for k, v in params.items() if k != "residual"}, unguarded, into)
    return rule_without_residual


def comparable(param):
    """A parameter as a key (of a cache, of `Tape.repeats`): a slice (`x[1:]`'s),
    unhashable before Python 3.12, as its parts; an array stays unhashable."""
    if type(param) is slice:
        return ("slice", param.start, param.stop, param.step)
    return tuple(map(comparable, param)) if type(param) is tuple else param


def operand_names(arity: int) -> list[str]:
    """How a rule names its operands: x; a and b; x0, x1, … (stack)."""
    return ["x"] if arity == 1 else ["a", "b"] if arity == 2 else [f"x{k}" for k in range(arity)]
