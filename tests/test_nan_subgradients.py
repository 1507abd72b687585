"""The ops that select or mask (max and min over all entries, rows and
columns, maximum and minimum, relu, abs, the clamps) and the log-sums, at
nan and infinite entries and at ties, against PyTorch's autograd
(LANGUAGE.md §10: "PyTorch's subgradients"): the gradient in both modes and
the second derivatives, over random matrices drawn from a few values so
that ties, nans and infinities meet.

Where a slice holds a nan, its max and min are nan and the nans win
(torch.max(x)'s backward; torch.max(x, dim) picks the nan too); maximum and
minimum send g to both operands where either is nan (torch.maximum's
backward); relu'(nan) = 1 and abs'(nan) = 0, as torch.relu's and
torch.abs's. PyTorch's forward mode departs from its own reverse mode at a
nan (its max jvp is nan, its maximum jvp takes the second operand's tangent);
spiread's forward mode is its reverse mode transposed, so both give the
reverse mode's numbers, which are the ones compared here."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spiread_cli import compile

torch = pytest.importorskip("torch")

ENTRIES = st.sampled_from([-1.0, 0.0, 0.5, 2.0, np.inf, -np.inf, np.nan])


@st.composite
def pairs(draw):
    """Two matrices of one shape (1–3 × 1–3), entries from ENTRIES."""
    r, c = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    entries = st.lists(st.lists(ENTRIES, min_size=c, max_size=c), min_size=r, max_size=r)
    return np.array(draw(entries)), np.array(draw(entries))


def _each(reduce, dim: int):
    """torch's full reduction `reduce` applied to each row (dim 1) or column
    (dim 0): its subgradient splits among ties and goes to the nans, where
    torch.amax's is nan and torch.max(x, dim)'s picks one entry of a tie."""
    return lambda x: torch.stack([reduce(s) for s in (x if dim == 1 else x.T)])


# (the `.ad` expression of the matrices x and w, PyTorch's)
CASES = [
    ("x.max", lambda x, w: x.max()),
    ("x.min", lambda x, w: x.min()),
    ("x.rowMax.sum", lambda x, w: _each(torch.max, 1)(x).sum()),
    ("x.mapRowsToScalar(min).sum", lambda x, w: _each(torch.min, 1)(x).sum()),
    ("x.colMax.sum", lambda x, w: _each(torch.max, 0)(x).sum()),
    ("x.colMin.sum", lambda x, w: _each(torch.min, 0)(x).sum()),
    ("maximum(x, w).sum", lambda x, w: torch.maximum(x, w).sum()),
    ("minimum(x, w).sum", lambda x, w: torch.minimum(x, w).sum()),
    ("x.relu.sum + w.abs.sum", lambda x, w: x.relu().sum() + w.abs().sum()),
    ("x.clampMin(0.5).sum + w.clampMax(0.5).sum", lambda x, w: x.clamp(min=0.5).sum() + w.clamp(max=0.5).sum()),
    ("x.logSumExp + w.rowLogSumExp.sum", lambda x, w: x.logsumexp((0, 1)) + w.logsumexp(1).sum()),
]


def _spiread_grads(expr: str, x: np.ndarray, w: np.ndarray, mode: str) -> list[np.ndarray]:
    program = compile(f"x = {np.zeros(x.shape).tolist()}\nw = {np.zeros(w.shape).tolist()}\nloss = {expr}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an inf − inf warns; the warnings are not what is compared
        g = program.grad(x=x, w=w, wrt=["x", "w"], mode=mode)
    return [np.asarray(g["x"]), np.asarray(g["w"])]


def _torch_grads(f, x: np.ndarray, w: np.ndarray) -> list[np.ndarray]:
    xt, wt = (torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (x, w))
    gs = torch.autograd.grad(f(xt, wt), [xt, wt], allow_unused=True)
    return [np.zeros(v.shape) if g is None else g.numpy() for g, v in zip(gs, (x, w))]


@pytest.mark.parametrize("expr, reference", CASES, ids=[c[0] for c in CASES])
@settings(max_examples=60, deadline=None)
@given(xw=pairs())
def test_subgradients_at_nan_inf_and_ties_are_pytorchs_in_both_modes(expr, reference, xw):
    x, w = xw
    want = _torch_grads(reference, x, w)
    for mode in ("reverse", "forward"):
        for got, expected in zip(_spiread_grads(expr, x, w, mode), want):
            np.testing.assert_allclose(got, expected, rtol=1e-14, atol=0,  # the log-sums' rounding
                                       err_msg=f"{mode} at x = {x.tolist()}, w = {w.tolist()}")


@pytest.mark.parametrize("mode", ["reverse", "forward"])
def test_the_reviewers_examples(mode):
    """x = [1, nan, 3]: the nan wins max and min; maximum's g goes to both operands at it."""
    for expr in ("x.max", "x.min"):
        g = compile(f"x = [0, 0, 0]\ny = {expr}").grad(x=[1.0, np.nan, 3.0], mode=mode)
        np.testing.assert_array_equal(g["x"], [0.0, 1.0, 0.0])
    g = compile("x = [0, 0, 0]\nw = [0, 0, 0]\ny = maximum(x, w).sum").grad(x=[1.0, np.nan, 3.0], mode=mode)
    np.testing.assert_array_equal(g["x"], [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(g["w"], [0.0, 1.0, 0.0])


# Second order: the selection times a scalar s, so the mixed block ∂²/∂x∂s
# is the subgradient itself and the x block is 0 (piecewise linear).
SECOND = [("x.max", torch.max), ("x.rowMin.sum", lambda x: _each(torch.min, 1)(x).sum()),
          ("maximum(x, w).sum", None), ("x.relu.sum", torch.relu), ("x.abs.sum", torch.abs)]


@pytest.mark.parametrize("expr, reference", SECOND, ids=[c[0] for c in SECOND])
@settings(max_examples=30, deadline=None)
@given(xw=pairs())
def test_second_derivatives_at_nan_inf_and_ties_are_pytorchs(expr, reference, xw):
    x, w = xw
    program = compile(f"x = {np.zeros(x.shape).tolist()}\nw = {np.zeros(w.shape).tolist()}\ns = 1.5\n"
                      f"loss = ({expr}) * s")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        blocks = program.hessian(x=x, w=w, wrt=["x", "s"]).blocks

    def f(xt, s):
        selected = torch.maximum(xt, torch.tensor(w)).sum() if reference is None else reference(xt).sum()
        return selected * s
    want = torch.autograd.functional.hessian(f, (torch.tensor(x), torch.tensor(1.5, dtype=torch.float64)))
    np.testing.assert_array_equal(blocks["x"]["s"], want[0][1].numpy(), err_msg=f"at x = {x.tolist()}")
    np.testing.assert_array_equal(blocks["x"]["x"], want[0][0].numpy(), err_msg=f"at x = {x.tolist()}")
