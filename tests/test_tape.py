"""The tape as the one evaluator: every path that computes an op (recording,
constant folding, replay, both sweeps) reports inf and nan the same way, at
the op's span; passes leave the caller's tape as written."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import run, spiread, strict_json
from programs import programs
from spiread_cli import optim, train
from spiread_cli.gradients import gradients as run_gradients
from spiread_cli.program import Program
from spiread_cli.diagnostics import SpireadError

# (expression over x, a value of x where the op's value is not finite): one
# per op whose value can leave the finite numbers.
NONFINITE_VALUES = [
    ("x.log", "[-1.0, 2.0]"), ("x.sqrt", "[-1.0, 4.0]"), ("x.exp", "[1000.0, 1.0]"),
    ("x.sinh", "[1000.0, 1.0]"), ("x.cosh", "[1000.0, 1.0]"), ("x.log1p", "[-2.0, 1.0]"),
    ("1 / x", "[0.0, 1.0]"), ("x.div(0)", "[1.0, 2.0]"), ("x ** 0.5", "[-1.0, 4.0]"),
    ("x * 1e300 * 1e300", "[1.0, 2.0]"), ("x.normaliseRowsL1", "[0.0, 0.0]"),
    ("x.normaliseRowsL2", "[0.0, 0.0]"), ("x.product * 1e300 * 1e300", "[1e200, 1e200]"),
]


def warnings_of(text: str) -> list[tuple[str, int, int]]:
    r = run(text)
    return [(w.message, w.span.line, w.span.column) for w in r.diagnostics.warnings]


@pytest.mark.parametrize("expr, x", NONFINITE_VALUES)
def test_a_folded_op_warns_exactly_as_a_recorded_one(expr, x):
    recorded = warnings_of(f"x = {x}\ny = {expr}\n")           # x is an input: the op is recorded
    constant = re.sub(r"\bx\b", f"({x})", expr)
    folded = warnings_of(f"y = {constant}\n")  # all constants: the op is folded
    assert recorded and len(folded) == len(recorded)
    assert [m for m, _, _ in folded] == [m for m, _, _ in recorded]
    assert all(line == (2 if recorded is r else 1) for r in (recorded, folded) for _, line, _ in r)


@pytest.mark.parametrize("text", ["a = [-1.0, 2.0].log\n", "a = 1 / 0\n", "a = zeros(2) / 0\n"])
def test_strict_refuses_a_folded_nonfinite_constant(tmp_program, text):
    result = spiread("eval", tmp_program(text), "--strict")
    assert result.returncode == 1 and "error:" in result.stderr and "gave" in result.stderr
    relaxed = spiread("eval", tmp_program(text), "--format", "json")
    assert relaxed.returncode == 0 and strict_json(relaxed.stdout)["warnings"]


# (program, the op whose derivative is born non-finite): ops whose value may
# be finite or not where the derivative is infinite.
NONFINITE_DERIVATIVES = [
    ("x = 0.0\ny = x.log\n", "log"),                      # value -inf, derivative inf
    ("x = 0.0\ny = x.sqrt\n", "sqrt"),                    # value 0, derivative inf
    ("x = 0.0\ny = x ** 0.5\n", "**"),
    ("x = [0.0, 1.0]\ny = (1 / x).sum\n", "/"),
    ("x = 1.0\ny = (x - 2).log1p\n", "log1p"),
    ("x = [1.0, 2.0]\ny = (x - 1).sqrt.sum\n", "sqrt"),
]


@pytest.mark.parametrize("text, op", NONFINITE_DERIVATIVES)
def test_every_nonfinite_gradient_says_where_it_was_born_in_both_modes(text, op):
    for mode in ("reverse", "forward"):
        r = run(text)
        before = len(r.diagnostics.warnings)
        result = run_gradients(r, ["x"], mode)
        assert not np.all(np.isfinite(result.gradients["x"]))
        born = r.diagnostics.warnings[before:]
        assert [w.message.split(" gave")[0] for w in born] == [f"the derivative of `{op}`"], (mode, born)
        assert born[0].span.line == 2


def test_a_finite_gradient_around_an_infinite_value_warns_only_about_the_value():
    # The seed example's case: log(0) at an entry the selection drops.
    r = run("x = [[0.5, 0.5], [0.0, 1.0]]\ny = x.log.select((0, 0), (1, 1)).sum\n")
    result = run_gradients(r, ["x"])
    assert np.all(np.isfinite(result.gradients["x"]))
    assert [w.message.split(" gave")[0] for w in r.diagnostics.warnings] == ["`log`"]


def test_training_from_the_library_leaves_the_run_as_it_was(bigram_slice):
    r = Program.open(str(bigram_slice / "bigram.ad")).run()
    before = run_gradients(r, ["probs"]).gradients["probs"].copy()
    values = [(n.op, n.inputs, n.value) for n in r.tape.nodes]
    result = train.train(r, ["W"], 3, optim.SGD(10.0))
    assert result.status == "done" and result.losses[2] < result.losses[0]
    assert [(n.op, n.inputs, n.value) for n in r.tape.nodes] == values
    after = run_gradients(r, ["probs"]).gradients["probs"]
    assert after.dtype == np.float64
    np.testing.assert_array_equal(after, before)


def test_between_is_what_a_change_moves_and_the_output_reads():
    r = run("a = 1.0\nb = 2.0\nc = a * 2\nd = b * 3\nunused = a.exp\ne = c + d\n")
    ids = [n.id for n in r.tape.between([r.bindings["a"]], r.output)]
    assert ids == [r.bindings["a"], r.bindings["c"], r.bindings["e"]]
    assert r.tape.between([r.bindings["unused"]], r.output) == []


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs(), st.data())
def test_between_is_every_node_a_source_feeds_that_feeds_the_output(program, data):
    """`between` (one walk each way from the lowest source) against its definition over the whole tape."""
    tape = run(program.source, name="generated.ad").tape
    nodes = tape.nodes
    sources = data.draw(st.lists(st.sampled_from(range(len(nodes))), min_size=0, max_size=3, unique=True))
    output = data.draw(st.sampled_from(range(len(nodes))))
    fed, feeds = tape.fed_by(sources, output), tape.feeding(output)
    assert [n.id for n in tape.between(sources, output)] == [n.id for n in nodes[:output + 1] if fed[n.id] and feeds[n.id]]


@pytest.mark.parametrize("text, words", [
    ("zeros = 3\ny = zeros(2, 2)\n", "`zeros` here is the value bound at 1:1, which hides the function `zeros`"),
    ("Matrix = 3\ny = Matrix.fromRows([1, 2])\n", "hides the function `Matrix.fromRows`"),
    ("onehot = [1.0]\ny = onehot([0], 2)\n", "hides the function `onehot`"),
])
def test_a_name_that_hides_a_function_says_so(text, words):
    with pytest.raises(SpireadError) as caught:
        run(text)
    assert words in caught.value.diagnostic.message
    assert caught.value.diagnostic.related[0][1] == "bound here"


@pytest.mark.parametrize("text", ["x = zeros(1e300, 1e300)\n", "x = ones(1e30)\n", "x = eye(1e20)\n",
                                  "x = randn(1e18, 1e18)\n", "x = onehot([0], 1e300)\n", "x = full(1e200, 2, 1)\n"])
def test_absurd_sizes_are_refused_in_a_short_message(text):
    with pytest.raises(SpireadError) as caught:
        run(text)
    message = caught.value.diagnostic.message
    assert "more than the limit" in message and len(message) < 200, message


@pytest.mark.parametrize("text, shape", [("x = eye(3000)\n", "3000×3000"), ("x = onehot(arange(3000), 3000)\n", "3000×3000"),
                                         ("x = zeros(3000, 3000)\n", "3000×3000")])
def test_constructors_are_sized_by_what_they_allocate(monkeypatch, text, shape):
    monkeypatch.setenv("SPIREAD_MAX_BYTES", str(8 * 3000 * 3000 - 1))
    with pytest.raises(SpireadError, match=shape):
        run(text)
    monkeypatch.setenv("SPIREAD_MAX_BYTES", str(8 * 3000 * 3000))
    assert run(text).value.shape == (3000, 3000)


@pytest.mark.parametrize("seed", ["-1", "0.5", "[1, 2]"])
def test_a_bad_seed_is_located(seed):
    with pytest.raises(SpireadError) as caught:
        run(f"x = randn(2, seed={seed})\n")
    assert caught.value.diagnostic.span.column == 19


@pytest.mark.parametrize("limit", ["lots", "inf", "-inf", "nan", "-1", "1e400", ""])
def test_a_size_limit_that_is_not_a_byte_count_is_a_usage_error(tmp_program, limit):
    result = spiread("eval", tmp_program("x = zeros(3, 3)\n"), env={"SPIREAD_MAX_BYTES": limit})
    if limit == "":  # unset in effect: the default limit applies
        assert result.returncode == 0
    else:
        assert result.returncode == 2 and "SPIREAD_MAX_BYTES" in result.stderr
        assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 2
