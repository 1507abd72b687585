"""numpy's 2-D vocabulary of positions and shapes (issue 23): slices, and
the words that reshape, stack, split and pick diagonals and triangles.

Values against numpy (the semantics the language follows), gradients in
both modes against central differences of the whole program, Hessians
against closed forms, and the errors located at what is wrong.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from conftest import gradients, lit, program_fd, run, spiread, value
from spiread_cli import compile
from spiread_cli.diagnostics import SpireadError

RNG = np.random.default_rng(23)
V = RNG.normal(size=5)
X = RNG.normal(size=(4, 3))


def assert_gradients_agree(text: str, names: list[str]) -> None:
    """Reverse and forward mode equal central differences of the program."""
    for mode in ("reverse", "forward"):
        result = gradients(text, names, mode=mode)
        for name in names:
            np.testing.assert_allclose(result.gradients[name], program_fd(text, name), rtol=1e-6, atol=1e-7,
                                       err_msg=f"{mode} ∂/∂{name}\n{text}")


def assert_located_error(text: str, message: str, line: int, column: int) -> None:
    """Running `text` fails with an error that starts with `message`, at line:column."""
    with pytest.raises(SpireadError) as error:
        run(text)
    diagnostic = error.value.diagnostic
    assert diagnostic.message.startswith(message), diagnostic.message
    assert (diagnostic.span.line, diagnostic.span.column) == (line, column)


def weighted(expr: str, shape) -> str:
    """A scalar that weighs each entry of `expr` differently."""
    if 0 in shape:  # no entries to weigh
        return f"({expr}).sum"
    return f"({expr} * {lit(RNG.normal(size=shape))}).sum" if shape else f"({expr}) * 1.7"


# ------------------------------------------------------------------ slices

SLICES = [  # (the receiver, its subscript as written, numpy's key)
    ("v", "1:3", (slice(1, 3),)), ("v", "1:", (slice(1, None),)), ("v", ":-1", (slice(None, -1),)),
    ("v", "::2", (slice(None, None, 2),)), ("v", "::-1", (slice(None, None, -1),)), ("v", "-1", (-1,)),
    ("v", "-4:-1:2", (slice(-4, -1, 2),)), ("v", "4:0:-2", (slice(4, 0, -2),)), ("v", ":", (slice(None),)),
    ("v", "5:", (slice(5, None),)), ("v", "-5:-5", (slice(-5, -5),)),
    ("X", ":, 0:2", (slice(None), slice(0, 2))), ("X", "1:3, :", (slice(1, 3), slice(None))),
    ("X", "2:4, :", (slice(2, 4), slice(None))), ("X", ":, 1", (slice(None), 1)), ("X", "-1", (-1,)),
    ("X", "1:", (slice(1, None),)), ("X", "::-1, ::2", (slice(None, None, -1), slice(None, None, 2))),
    ("X", "-1, 1:", (-1, slice(1, None))), ("X", "0, -1", (0, -1)), ("X", "1:1, :", (slice(1, 1), slice(None))),
]


@pytest.mark.parametrize("name, subscript, key", SLICES, ids=[f"{n}[{s}]" for n, s, _ in SLICES])
def test_slices_take_what_numpy_takes_and_scatter_their_gradient(name, subscript, key):
    data = {"v": V, "X": X}[name]
    setup = f"{name} = {lit(data)}\n"
    np.testing.assert_array_equal(value(f"{setup}{name}[{subscript}]"), data[key])
    shape = data[key].shape
    text = f"{setup}loss = {weighted(f'{name}[{subscript}]', shape)}"
    assert_gradients_agree(text, [name])
    # The gradient is a scatter into zeros: nothing reaches the entries not taken.
    taken = np.zeros(data.shape, dtype=bool)
    taken[key] = True
    assert np.all(gradients(text, [name]).gradients[name][~taken] == 0)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.data())
def test_any_slice_within_the_bounds_is_numpys(n, data):
    bound = st.none() | st.integers(-n, n)
    start, stop = data.draw(bound), data.draw(bound)
    step = data.draw(st.none() | st.sampled_from([1, 2, 3, -1, -2]))
    parts = ["" if p is None else str(p) for p in (start, stop)]
    subscript = ":".join(parts) + ("" if step is None else f":{step}")
    x = np.arange(n, dtype=float) + 0.5
    np.testing.assert_array_equal(value(f"x = {lit(x)}\nx[{subscript}]"), x[start:stop:step])


ROSENBROCK = "x = [1.5, -0.5, 0.3, 2.0, -1.2]\nf = (100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2).sum\n"


def rosenbrock_derivatives(x):
    """The extended Rosenbrock function's gradient and Hessian, by hand."""
    n = len(x)
    g, h = np.zeros(n), np.zeros((n, n))
    for i in range(n - 1):
        a, b = x[i + 1] - x[i] ** 2, 1 - x[i]
        g[i] += -400 * a * x[i] - 2 * b
        g[i + 1] += 200 * a
        h[i, i] += -400 * a + 800 * x[i] ** 2 + 2
        h[i, i + 1] += -400 * x[i]
        h[i + 1, i] += -400 * x[i]
        h[i + 1, i + 1] += 200
    return g, h


def test_the_extended_rosenbrock_function_is_written_with_slices():
    x = np.array([1.5, -0.5, 0.3, 2.0, -1.2])
    expected = sum(100 * (x[i + 1] - x[i] ** 2) ** 2 + (1 - x[i]) ** 2 for i in range(4))
    g, h = rosenbrock_derivatives(x)
    program = compile(ROSENBROCK)
    for mode in ("reverse", "forward"):
        result = program.grad(wrt="x", mode=mode)
        assert result.value == pytest.approx(expected, rel=1e-14)
        np.testing.assert_allclose(result["x"], g, rtol=1e-13)
    np.testing.assert_allclose(program.hessian(wrt="x").blocks["x"]["x"], h, rtol=1e-13)


def test_check_passes_through_slices_and_names_no_kink(tmp_program):
    """A slice has a derivative everywhere: `check` (first and second order)
    agrees, and no op of the program has a kink to report."""
    path = tmp_program(ROSENBROCK)
    for order in ("1", "2"):
        done = spiread("check", path, "--order", order)
        assert done.returncode == 0, done.stderr
        assert "kink" not in done.stdout + done.stderr
    r = run(ROSENBROCK)
    assert all(node.op is None or node.op.kink is None for node in r.tape.nodes)


BAD_SLICES = [  # (program, message, column of the caret)
    ("x = [1, 2, 3]\nx[::0]", "a slice's step cannot be 0", 5),
    ("x = [1, 2, 3]\nx[0.5:]", "a slice's bound must be a whole number, but `0.5` is 0.5", 3),
    ("x = [1, 2, 3]\nx[::1.5]", "a slice's step must be a whole number, but `1.5` is 1.5", 5),
    ("x = [1, 2, 3]\nx[:, 1:]", "`x` is a vector of 3; it takes at most 1 position, got 2", 1),
    ("x = 2\nx[1:]", "`x` is a scalar; it has no positions to index", 1),
    ("x = [1, 2, 3]\nx[[1, 2]:]", "a slice's bound must be a number, but `[1, 2]` is a vector of 2", 3),
    ("x = [1, 2, 3]\nx[1:(2, 3)]", "a slice's bound must be a number, but `(2, 3)` is a vector of 2", 5),
]


@pytest.mark.parametrize("text, message, column", BAD_SLICES, ids=[t.split("\n")[1] for t, _, _ in BAD_SLICES])
def test_an_ill_formed_slice_is_a_located_error(text, message, column):
    assert_located_error(text, message, 2, column)


PAST_THE_ENDS = [  # (program, numpy's value, the warning, its column)
    ("x = [1, 2, 3]\nx[1:5]", [2.0, 3.0], "the slice bound 5 is past the end of `x`, which is a vector of 3", 5),
    ("x = [1, 2, 3]\nx[-4:]", [1.0, 2.0, 3.0], "the slice bound -4 is past the start of `x`", 3),
    ("X = [[1, 2], [3, 4]]\nX[:, 0:3]", [[1.0, 2.0], [3.0, 4.0]], "the slice bound 3 is past the end of `X`, which is 2×2", 8),
    ("x = [1, 2, 3]\nx[7:9]", np.zeros(0), "the slice bound 7 is past the end of `x`", 3),
]


@pytest.mark.parametrize("text, expected, message, column", PAST_THE_ENDS, ids=[t.split("\n")[1] for t, *_ in PAST_THE_ENDS])
def test_a_bound_past_the_end_is_clipped_as_numpy_does_with_a_located_warning(text, expected, message, column):
    r = run(text)
    np.testing.assert_array_equal(r.tape.nodes[r.output].value, expected)
    first = r.diagnostics.warnings[0]
    assert first.message.startswith(message), first.message
    assert (first.span.line, first.span.column) == (2, column)


def test_strict_makes_a_bound_past_the_end_an_error(tmp_program):
    done = spiread("eval", tmp_program("x = [1, 2, 3]\nx[1:5]\n"), "--strict")
    assert done.returncode == 1
    assert ":2:5: error: the slice bound 5 is past the end of `x`" in done.stderr


# ------------------------------------------------------------- shape words

A = RNG.normal(size=(3, 3))
B = RNG.normal(size=(3, 4))
U = RNG.normal(size=3)
SETUP = f"v = {lit(V)}\nX = {lit(X)}\nA = {lit(A)}\nB = {lit(B)}\nu = {lit(U)}\n"
ENV = {"v": V, "X": X, "A": A, "B": B, "u": U}

WORDS = [  # (expression, numpy's value, the names it reads)
    ("X.reshape(2, 6)", lambda: X.reshape(2, 6), ["X"]), ("X.reshape(-1, 2)", lambda: X.reshape(-1, 2), ["X"]),
    ("X.reshape(12)", lambda: X.reshape(12), ["X"]), ("v.reshape(5, 1)", lambda: V.reshape(5, 1), ["v"]),
    ("X.flatten", lambda: X.flatten(), ["X"]),
    ("hstack(v, u)", lambda: np.hstack([V, U]), ["v", "u"]), ("hstack(X, B.T, X)", lambda: np.hstack([X, B.T, X]), ["X", "B"]),
    ("hstack(u, 2.5, v)", lambda: np.hstack([U, 2.5, V]), ["u", "v"]),
    ("vstack(X, u, B.T)", lambda: np.vstack([X, U, B.T]), ["X", "u", "B"]), ("vstack(u, u * 2)", lambda: np.vstack([U, U * 2]), ["u"]),
    ("concat(v, u)", lambda: np.concatenate([V, U]), ["v", "u"]),
    # numpy's spelling, the pieces in one list or tuple
    ("hstack([v, u])", lambda: np.hstack([V, U]), ["v", "u"]), ("vstack((u, u * 2))", lambda: np.vstack((U, U * 2)), ["u"]),
    ("concat([A, B], axis=1)", lambda: np.concatenate([A, B], axis=1), ["A", "B"]),
    ("concat(A, B, axis=1)", lambda: np.concatenate([A, B], axis=1), ["A", "B"]),
    ("concat(X, A, axis=0)", lambda: np.concatenate([X, A], axis=0), ["X", "A"]),
    # a literal of numbers in that place is numpy's list too: its rows, or its numbers, are the pieces
    ("hstack([[1, 2], [3, 4]]) * u.sum", lambda: np.hstack([[1, 2], [3, 4]]) * U.sum(), ["u"]),
    ("vstack([1, 2]) * u.sum", lambda: np.vstack([1, 2]) * U.sum(), ["u"]),
    ("concat([[0.5]], axis=0) * u.sum", lambda: np.concatenate([[0.5]], axis=0) * U.sum(), ["u"]),
    ("vstack([[1, 2, 3]], u)", lambda: np.vstack([[[1, 2, 3]], U]), ["u"]),
    ("diag(u)", lambda: np.diag(U), ["u"]), ("diag(u, 1)", lambda: np.diag(U, 1), ["u"]), ("u.diag(-2)", lambda: np.diag(U, -2), ["u"]),
    ("A.diag", lambda: np.diag(A), ["A"]), ("diag(B)", lambda: np.diag(B), ["B"]), ("B.diag(2)", lambda: np.diag(B, 2), ["B"]),
    ("X.diag(-1)", lambda: np.diag(X, -1), ["X"]),
    ("A.trace", lambda: np.trace(A), ["A"]), ("B.trace(1)", lambda: np.trace(B, 1), ["B"]), ("X.trace(-2)", lambda: np.trace(X, -2), ["X"]),
    ("A.triu", lambda: np.triu(A), ["A"]), ("B.triu(1)", lambda: np.triu(B, 1), ["B"]), ("X.tril", lambda: np.tril(X), ["X"]),
    ("X.tril(-1)", lambda: np.tril(X, -1), ["X"]),
    ("v.cumsum", lambda: np.cumsum(V), ["v"]), ("X.cumsum", lambda: np.cumsum(X), ["X"]),
    ("X.rowCumsum", lambda: np.cumsum(X, axis=1), ["X"]), ("v.rowCumsum", lambda: np.cumsum(V), ["v"]),
    ('einsum("ij,jk->ik", A, B)', lambda: A @ B, ["A", "B"]), ('einsum("ii->", A)', lambda: np.trace(A), ["A"]),
    ('einsum("ii->i", A)', lambda: np.diag(A), ["A"]), ('einsum("ij,ij->i", X, X * 2)', lambda: np.sum(X * X * 2, axis=1), ["X"]),
    ('einsum("ij->ji", B)', lambda: B.T, ["B"]), ('einsum("ij,jk", A, B)', lambda: A @ B, ["A", "B"]),
    ('einsum("ji", B)', lambda: B.T, ["B"]), ('einsum("i,j->ij", u, v)', lambda: np.outer(U, V), ["u", "v"]),
    ('einsum("ij,j->i", X, u)', lambda: X @ U, ["X", "u"]), ('einsum("ij->", X)', lambda: np.sum(X), ["X"]),
    ('einsum("i,i", u, u)', lambda: U @ U, ["u"]), ('einsum("ij,kl->ik", A, B)', lambda: np.einsum("ij,kl->ik", A, B), ["A", "B"]),
    ('einsum(",ij->ij", 2.5, A)', lambda: 2.5 * A, ["A"]),
]


@pytest.mark.parametrize("expr, expected, names", WORDS, ids=[w[0] for w in WORDS])
def test_shape_words_are_numpys_and_differentiate_in_both_modes(expr, expected, names):
    want = expected()
    np.testing.assert_allclose(value(f"{SETUP}{expr}"), want, rtol=1e-13, atol=1e-14)
    assert_gradients_agree(f"{SETUP}loss = {weighted(expr, np.shape(want))}", names)


def test_the_hessian_through_shape_words_is_the_closed_form():
    """(vstack(A.triu, A.T).cumsum · w)² summed: a quadratic whose Hessian
    is 2 MᵀM for the linear map M it applies to A's entries."""
    text = f"{SETUP}y = vstack(A.triu, einsum(\"ij->ji\", A)).cumsum\nloss = (y * y).sum\n"
    columns = []
    for k in range(9):
        e = np.zeros(9)
        e[k] = 1.0
        a = e.reshape(3, 3)
        columns.append(np.cumsum(np.vstack([np.triu(a), a.T])))
    m = np.array(columns).T
    hessian = compile(text).hessian(wrt="A").blocks["A"]["A"]
    np.testing.assert_allclose(hessian.reshape(9, 9), 2 * m.T @ m, rtol=1e-13, atol=1e-13)


BAD_WORDS = [  # (expression, the start of the message, the column it points at)
    ("X.reshape(5, 2)", "`X.reshape(5, 2)`: `X` is 4×3, 12 entries, which cannot be laid out as 5×2 (10 entries)", 3),
    ("X.reshape(-1, 5)", "`.reshape`: `X` is 4×3, 12 entries, which do not fill rows of 5", 1),
    ("X.reshape(-1, -1)", "`.reshape`: sizes are whole numbers from 0 up, and at most one is -1", 1),
    ("hstack(X, u)", "`hstack(X, u)`: the pieces must be all vectors or all matrices: `X` is 4×3, `u` is a vector of 3", 7),
    ("vstack(X, v)", "`vstack(X, v)`: the pieces must have as many columns: `X` is 4×3, `v` is 1×5", 7),
    ("concat(X, A, axis=1)", "`concat(X, A, axis=1)`: the pieces must have as many rows: `X` is 4×3, `A` is 3×3", 7),
    ("concat(u, v, axis=1)", "`concat(u, v, axis=1)`: vectors are joined end to end (axis 0), not along axis 1", 7),
    ("concat([[1, 2], [3, 4]], axis=1)", "`concat([[1, 2], [3, 4]], axis=1)`: vectors are joined end to end (axis 0), "
     "not along axis 1: `[1, 2]` is a vector of 2, `[3, 4]` is a vector of 2", 7),  # a literal's rows named as written
    ("concat(u, v, axis=2)", "`concat`: the axis is 0 (rows after rows) or 1 (columns after columns), not 2", 19),
    ("diag(2.0)", "`diag` needs a vector (to place on a diagonal) or a matrix (to take its diagonal), but `2.0` is a scalar", 5),
    ("u.trace", "`.trace` needs a matrix, but `u` is a vector of 3", 3),
    ("u.triu(1)", "`.triu` needs a matrix, but `u` is a vector of 3", 3),
    ("(2.0).cumsum", "`(2.0).cumsum`: running sums need a vector or matrix, but `(2.0)` is a scalar", 7),
    ('einsum("ij,jk->ik", A, X)', '`einsum("ij,jk->ik", A, X)`: `j` is 3 long in `A`, which is 3×3, but 4 long in `X`, which is 4×3', 7),
    ('einsum("ij,jk->ik", A)', '"ij,jk->ik" has subscripts for 2 operands, but `einsum` is given 1', 8),
    ('einsum("ijk->i", A)', '"ijk" names 3 axes, but a value has at most 2', 8),
    ('einsum("ij->ii", A)', "`i` is twice in the result", 8),
    ('einsum("ij->k", A)', "`k` is in the result but in no operand", 8),
    ('einsum("...ij", A)', "`...` is not needed", 8),
    ('einsum("i2", A)', "`2` is not a subscript", 8),
    ('einsum("i,j", A, u)', '`einsum("i,j", A, u)`: "i" has 1 axes, but `A` is 3×3', 7),
    ("einsum(A, A)", "`einsum` takes its subscripts first, in quotes", 8),
]


@pytest.mark.parametrize("expr, message, column", BAD_WORDS, ids=[w[0] for w in BAD_WORDS])
def test_shape_words_refuse_what_does_not_fit_with_a_located_error(expr, message, column):
    assert_located_error(f"{SETUP}{expr}", message, 6, column)


def test_no_shape_word_has_a_kink():
    """`check` never reports a kink at a shape word: no op they record has one."""
    r = run(f"{SETUP}" + "\n".join(f"y{i} = {expr}" for i, (expr, _, _) in enumerate(WORDS)))
    assert {node.op.name for node in r.tape.nodes if node.op} >= {"reshape", "concat", "arrange", "scatterPairs",
                                                                   "select", "rowCumsum", "einsum", "sum"}
    assert all(node.op.kink is None for node in r.tape.nodes if node.op)


# ------------------------------------------------------------------- split

SPLITS = [  # (the call, numpy's pieces)
    ("split(v, 5)", lambda: np.split(V, 5)), ("split(v, [2])", lambda: np.split(V, [2])),
    ("split(v, [1, 3])", lambda: np.split(V, [1, 3])), ("split(v, [-2])", lambda: np.split(V, [-2])),
    ("split(X, 2)", lambda: np.split(X, 2)), ("split(X, 3, axis=1)", lambda: np.split(X, 3, axis=1)),
    ("split(X, [1], axis=1)", lambda: np.split(X, [1], axis=1)), ("split(X, [3, 9])", lambda: np.split(X, [3, 9])),
]


@pytest.mark.parametrize("call, expected", SPLITS, ids=[c for c, _ in SPLITS])
def test_split_gives_numpys_pieces_and_each_differentiates(call, expected):
    pieces = expected()
    for i, piece in enumerate(pieces):
        np.testing.assert_array_equal(value(f"{SETUP}parts = {call}\nparts[{i}]"), piece)
        np.testing.assert_array_equal(value(f"{SETUP}{call}[{i - len(pieces)}]"), piece)
    name = call[6]
    used = [i for i, p in enumerate(pieces) if p.size]
    text = f"{SETUP}parts = {call}\nloss = " + " + ".join(weighted(f"parts[{i}]", pieces[i].shape) for i in used)
    assert_gradients_agree(text, [name])


BAD_SPLITS = [
    ("split(v, 2)", "`split`: 5 entries do not split into 2 equal pieces", 10),
    ("split(X, 2, axis=2)", "`split`: `X` is 4×3, which has no axis 2", 18),
    ("split(2.0, 1)", "`split`: `2.0` is a scalar, which has no axis 0", 1),
    ("split(v, 5)[5]", "index 5 is out of range for `split(v, 5)`, which holds 5 values", 1),
    ("split(v, 5)[1:]", "`split(v, 5)` holds 5 values: pick one by its position", 1),
    ("split(v, 5) + 1", "`split(v, 5)` holds 5 values, not one array", 1),
]


@pytest.mark.parametrize("expr, message, column", BAD_SPLITS, ids=[b[0] for b in BAD_SPLITS])
def test_a_split_that_does_not_fit_is_a_located_error(expr, message, column):
    assert_located_error(f"{SETUP}{expr}", message, 6, column)
