"""Runs kept between a program's Python calls (spiread_cli/kept_runs.py): a
call like an earlier one replays that call's recording with its own values,
and gives exactly what a fresh Program gives — values, gradients, Hessians,
HVPs, Jacobians, warnings with their spans, printed lines, errors — while a
call whose recording could differ (other shapes, other values of a binding
used as a size or a position, a changed file) runs afresh."""

from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import spiread_cli
from spiread_cli import SpireadError, SpireadWarning, python_args
from spiread_cli.interpreter import Interpreter
from spiread_cli.kept_runs import KEPT_SIGNATURES
from programs import programs


@pytest.fixture
def recordings(monkeypatch):
    """How many times a program was run afresh (recorded by the interpreter)."""
    count = [0]
    run = Interpreter.run

    def counted(self, *args, **kwargs):
        count[0] += 1
        return run(self, *args, **kwargs)
    monkeypatch.setattr(Interpreter, "run", counted)
    return count


def outcome(prog, task: str, bindings: dict, **options):
    """What a call gives and shows: its result as plain data (or the error's
    text), its warnings (text and span) and its printed lines."""
    out = io.StringIO()
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(out):
        warnings.simplefilter("always")
        try:
            result = plain(getattr(prog, task)(bindings, **options))
        except SpireadError as err:
            result = ("error", str(err), err.span)
    shown = [(str(w.message), getattr(w.message, "span", None)) for w in caught
             if issubclass(w.category, SpireadWarning)]
    return result, shown, out.getvalue()


def plain(result):
    """A result as nested tuples, arrays as (shape, bytes): equal means the same bits."""
    if isinstance(result, dict):
        return tuple((k, plain(v)) for k, v in result.items())
    if isinstance(result, (float, int)):
        return np.float64(result).tobytes()
    if isinstance(result, np.ndarray):
        return result.shape, (result + 0.0).tobytes()
    if result is None or isinstance(result, str):
        return result
    if hasattr(result, "toarray"):  # a sparse Jacobian or Hessian (scipy.sparse), or a pattern
        return plain(result.toarray()), getattr(result, "sweeps", None)
    return tuple((name, plain(getattr(result, name))) for name in vars(result))


def fresh(source: str, task: str, bindings: dict, **options):
    return outcome(spiread_cli.compile(source), task, bindings, **options)


def assert_as_fresh(prog, source: str, task: str, bindings: dict, **options):
    got = outcome(prog, task, bindings, **options)
    assert got == fresh(source, task, bindings, **options)
    return got


# ------------------------------------------------------- random programs


TASKS = ("eval", "grad", "hessian", "hvp", "sparse hessian", "hessian pattern", "jacobian", "sparse jacobian")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs(), st.data())
def test_random_programs_called_again_give_what_a_fresh_program_gives(program, data):
    """Each task, called with the program's values and then twice with new
    values of the same shapes: every call equals a fresh Program's call."""
    task = data.draw(st.sampled_from(TASKS), label="task")
    names = [n for n in program.names if n in program.inputs]
    options: dict = {}
    if task not in ("eval", "grad"):
        wrt = [n for n in program.default_wrt() if n in program.inputs][:2]
        if not wrt:
            task = "grad"
        else:
            options["wrt"] = wrt
            if task == "hvp":
                rng = np.random.default_rng(0)
                options["hvp"] = {n: rng.standard_normal(np.shape(program.inputs[n])) for n in wrt}
            options.update({"sparse hessian": {"sparse": True}, "hessian pattern": {"pattern": True},
                            "sparse jacobian": {"sparse": True}}.get(task, {}))
    call = task.split()[-1].replace("hvp", "hessian").replace("pattern", "hessian")
    prog = spiread_cli.compile(program.source)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    for scale in (0.0, 0.05, 0.2, None, "poisoned"):
        # the fourth call's values are new: zeros, other signs (what a pattern or a derivative's branch reads)
        values = {n: np.asarray(program.inputs[n], dtype=float) * (1 + scale * rng.standard_normal(
            np.shape(program.inputs[n]))) if type(scale) is float else
            np.where(rng.random(np.shape(program.inputs[n])) < 0.3, 0.0, rng.standard_normal(np.shape(program.inputs[n])))
            for n in names}
        if scale == "poisoned":  # the last call's hold an inf or a nan, which may reach no value computed (1 / inf)
            for n in names:
                values[n].flat[rng.integers(values[n].size)] = rng.choice([np.inf, -np.inf, np.nan])
        assert_as_fresh(prog, program.source, call, values, **options)


def arrays_in(result) -> list[np.ndarray]:
    """Every array a call returned, however nested."""
    if isinstance(result, np.ndarray):
        return [result]
    if isinstance(result, dict):
        return [a for v in result.values() for a in arrays_in(v)]
    if hasattr(result, "__dict__") and not hasattr(result, "toarray"):
        return [a for v in vars(result).values() for a in arrays_in(v)]
    return []


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs(), st.data())
def test_results_made_in_place_are_the_callers_own(program, data):
    """python_args.result_values makes a sweep's own array the result in
    place (here every array, not only the large ones): each call still
    equals a fresh Program's, no -0.0 comes back, no result shares memory
    with another or with what was passed, and a caller writing into every
    result changes nothing the next call gives."""
    task = data.draw(st.sampled_from(("eval", "grad", "hessian", "hvp", "jacobian")), label="task")
    names = [n for n in program.names if n in program.inputs]
    options: dict = {}
    wrt = [n for n in program.default_wrt() if n in program.inputs][:2]
    if task != "eval" and wrt:
        options["wrt"] = wrt
        if task == "hvp":
            options["hvp"] = {n: np.random.default_rng(0).standard_normal(np.shape(program.inputs[n])) for n in wrt}
        elif task == "jacobian":
            options["mode"] = data.draw(st.sampled_from(("forward", "reverse")), label="mode")
    call = "hessian" if task == "hvp" else task
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    values = {n: np.asarray(program.inputs[n], dtype=float) * (1 + 0.1 * rng.standard_normal(
        np.shape(program.inputs[n]))) for n in names}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(python_args, "OWNED_ENTRIES", 0)
        prog = spiread_cli.compile(program.source)
        for _ in range(3):
            given = {n: v.copy() for n, v in values.items()}
            expected = fresh(program.source, call, values, **options)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    result = getattr(prog, call)(given, **options)
                except SpireadError:
                    return  # errors: the random test above
            assert outcome(prog, call, values, **options) == expected
            returned = arrays_in(result)
            assert not any(np.any((a == 0) & np.signbit(a)) for a in returned), "a -0.0 came back"
            for k, a in enumerate(returned):
                assert not any(np.shares_memory(a, b) for b in [*returned[k + 1:], *given.values()])
                a[...] = 7.0  # the caller's to write into (finite: a replay meeting nan runs afresh)


@pytest.mark.parametrize("task", ["jacobian", "hessian"])
def test_a_coefficient_made_infinite_where_a_slice_drops_it_keeps_a_fresh_runs_bits(task):
    """A product's tangents along the identity are kept as its matrix times
    one value (`rules_forward.Scaled`), stepped through the elementwise ops
    that follow. Once the push is written, a call whose M has a zero row
    makes sqrt's partial infinite there, and the slice drops that entry, so
    the result is finite: the kept call must still round as a fresh run does,
    which makes the batch an array at that step (rev-c's finding: 3,557 of
    10,000 entries an ulp apart)."""
    source = ("M = randn(200, 100, seed=1).abs\nw = randn(100, seed=2).abs\ny = (M @@ w).sqrt.sin[1:101]\n"
              "loss = (y * y).sum\n")
    rng = np.random.default_rng(0)
    M, w = np.abs(rng.standard_normal((200, 100))), np.abs(rng.standard_normal(100))
    options = {"of": "y", "wrt": "w", "mode": "forward"} if task == "jacobian" else {"wrt": "w"}
    program = spiread_cli.compile(source)
    for _ in range(4):  # run, kept, its push written, replayed
        getattr(program, task)(M=M, w=w, **options)
    M[0] = 0.0
    kept = getattr(program, task)(M=M, w=w, **options)
    fresh = getattr(spiread_cli.compile(source), task)(M=M, w=w, **options)
    kept, fresh = (r["w"] if task == "jacobian" else r["w"]["w"] for r in (kept, fresh))
    assert np.isfinite(fresh).all()
    assert kept.tobytes() == fresh.tobytes()


def test_a_result_the_run_keeps_is_a_copy():
    """Where every array may become a result in place, those the kept run
    holds are still copies: a binding folded from literals, a binding given,
    the output's value beside a Jacobian."""
    source = "c = [1.0, -2.0] * 2\nx = [1.0, 1.0]\ny = c * x\n"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(python_args, "OWNED_ENTRIES", 0)
        prog = spiread_cli.compile(source)
        for _ in range(3):
            values = prog.eval(x=[3.0, 4.0])
            np.testing.assert_array_equal(values["c"], [2.0, -4.0])
            np.testing.assert_array_equal(values["x"], [3.0, 4.0])
            jacobian = prog.jacobian(x=[3.0, 4.0], wrt="x")
            np.testing.assert_array_equal(jacobian.value, [6.0, -16.0])
            np.testing.assert_array_equal(jacobian["x"], np.diag([2.0, -4.0]))
            for written in (values["c"], values["x"], jacobian.value, jacobian["x"]):
                written[...] = 7.0  # finite: a replay meeting nan would run afresh


def test_a_replay_keeps_the_residual_of_an_op_with_a_forward_rule():
    """A kept run is replayed as one written function (tape_nodes.straight_line);
    an op with a forward rule (`Op.fwd`: logSoftmaxRows) keeps its residual
    for the value replayed, as the tape's evaluator does, so a sweep on the
    kept run reads it instead of computing the op again; results are a
    fresh run's."""
    source = "X = zeros(4, 3)\nW = zeros(3, 5)\nloss = (X @@ W).logSoftmaxRows.sum + (W * W).sum\n"
    prog = spiread_cli.compile(source)
    rng = np.random.default_rng(4)
    for _ in range(3):
        values = {"X": rng.standard_normal((4, 3)), "W": rng.standard_normal((3, 5))}
        assert_as_fresh(prog, source, "eval", values)
        assert_as_fresh(prog, source, "grad", values, wrt="W")
        for kept in prog._kept.kept:
            node = next(n for n in kept.run.tape.nodes if n.op is not None and n.op.name == "logSoftmaxRows")
            assert node.residual is not None and node.residual.of is node.value


def test_a_sparse_hessian_follows_the_zeros_of_a_binding_not_differentiated_by():
    """A constant's zeros are structural (the pattern of (a * x).sum² has a
    zero row where a has a zero): a kept run's pattern is read again when
    they move, and not when only the values differentiated by move."""
    source = "a = zeros(3)\nx = zeros(3)\nloss = (a * x).sum.square\n"
    prog = spiread_cli.compile(source)
    for a in ([1.0, 0.0, 1.0], [1.0, 1.0, 1.0], [0.0, 2.0, 0.0], [0.0, 3.0, 0.0]):
        got = prog.hessian(a=np.array(a), x=np.array([0.5, -1.0, 2.0]), wrt="x", sparse=True)
        np.testing.assert_array_equal(got.toarray(), 2 * np.outer(a, a))
        assert got.sweeps == sum(1 for v in a if v)
        assert_as_fresh(prog, source, "hessian", {"a": np.array(a), "x": np.array([1.0, 2.0, 3.0])}, wrt="x",
                        sparse=True)


@pytest.mark.parametrize("mode", ["forward", "reverse"])
def test_a_sparse_jacobian_follows_the_zeros_of_a_binding_not_differentiated_by(mode):
    """The same for a sparse Jacobian, whose plan (pattern, colouring,
    recovery) is kept with the run: read again when a constant's zeros move
    (a * x has a zero row where a has a zero), kept when only x moves.
    Found in the kept run's plans, not asked for again."""
    source = "a = zeros(4)\nx = zeros(4)\ny = a * x.exp\n"
    prog = spiread_cli.compile(source)
    plans = []
    for a, x in (([1.0, 0.0, 1.0, 2.0], [0.5, -1.0, 2.0, 0.0]), ([1.0, 0.0, 1.0, 2.0], [1.0, 2.0, 3.0, 4.0]),
                 ([0.0, 3.0, 0.0, 0.0], [1.0, 2.0, 3.0, 4.0]), ([1.0, 1.0, 1.0, 1.0], [0.0, 0.5, 1.0, 1.5])):
        a, x = np.array(a), np.array(x)
        got = prog.jacobian(a=a, x=x, wrt="x", sparse=True, mode=mode)
        np.testing.assert_array_equal(got.toarray(), np.diag(a * np.exp(x)))
        assert got.nnz == np.count_nonzero(a)
        assert_as_fresh(prog, source, "jacobian", {"a": a, "x": x}, wrt="x", sparse=True, mode=mode)
        plans.append(_kept_plan(prog, "sparse jacobian"))
    assert plans[0] is plans[1] and plans[1] is not plans[2] and plans[2] is not plans[3]


@pytest.mark.parametrize("task", ["jacobian", "hessian"])
def test_a_kept_runs_pattern_is_read_again_only_when_a_constants_zeros_move(task, monkeypatch):
    """`pattern=True` called again: the pattern and its colouring are kept
    with the run, as a sparse plan is, and read again only when a
    constant's zeros move (a's); every call is a fresh one's, and its matrix
    the caller's own (a caller's writes into it reach no later call)."""
    from spiread_cli import sparsity
    source = "a = zeros(4)\nx = zeros(4)\ny = a * x.exp\nloss = (y * y).sum\n"
    prog = spiread_cli.compile(source)
    options = {"of": "y"} if task == "jacobian" else {}
    reads, read = [], getattr(sparsity.Sweep, task)
    monkeypatch.setattr(sparsity.Sweep, task, lambda sweep: reads.append(task) or read(sweep))
    for a, x, read_again in (([1.0, 0.0, 1.0, 2.0], [0.5, -1.0, 2.0, 0.0], True),
                             ([1.0, 0.0, 1.0, 2.0], [1.0, 2.0, 3.0, 4.0], False),
                             ([0.0, 3.0, 0.0, 0.0], [1.0, 2.0, 3.0, 4.0], True),
                             ([0.0, 5.0, 0.0, 0.0], [0.0, 0.5, 1.0, 1.5], False)):
        bindings = {"a": np.array(a), "x": np.array(x)}
        reads.clear()
        got = getattr(prog, task)(bindings, wrt="x", pattern=True, **options)
        assert reads == ([task] if read_again else [])
        np.testing.assert_array_equal(got.toarray(), np.diag(np.array(a) != 0))
        got.data[:] = False  # the caller's own
        assert_as_fresh(prog, source, task, bindings, wrt="x", pattern=True, **options)


def _kept_plan(prog, kind: str):
    """The one plan of `kind` ("sparse jacobian", "sparse hessian") the program's kept runs hold."""
    (plan,) = [p for kept in prog._kept.kept for key, p in kept.run.prepared.items() if key[0] == kind]
    return plan


@pytest.mark.parametrize("task", ["jacobian", "hessian"])
def test_a_kept_sparse_plan_outlives_zeros_that_move_with_the_values_differentiated_by(task):
    """A relu's zeros move with x, but where they can, x's own pattern
    reaches (the padding's zeros cannot move), so the pattern cannot change:
    the kept plan stays (it was read again at every call), and every call
    is a fresh one's."""
    source = "x = zeros(5)\nz = hstack(0.0, x, 0.0)\ny = z[0:5].relu * z[2:7]\nloss = y.sum\n"
    prog = spiread_cli.compile(source)
    options = {"of": "y", "mode": "forward"} if task == "jacobian" else {}
    plans = []
    for x in ([1.0, -1.0, 2.0, -2.0, 0.5], [-1.0, 1.0, -2.0, 2.0, -0.5], [1.0, 2.0, 3.0, 4.0, 5.0]):
        assert_as_fresh(prog, source, task, {"x": np.array(x)}, wrt="x", sparse=True, **options)
        plans.append(_kept_plan(prog, f"sparse {task}"))
    assert plans[0] is plans[1] is plans[2]


# ------------------------------------------------- reuse, and what stops it


SOFTMAX_LOSS = """\
A = zeros(5, 3)
w = zeros(3)
loss = (A @@ w).tanh.sum + (w ** 4).sum / 4 + (A @@ w).exp.normaliseRowsL1.log.sum
"""


@pytest.mark.parametrize("task, options", [
    ("eval", {}), ("grad", {"wrt": "w"}), ("grad", {"wrt": "w", "mode": "forward"}), ("hessian", {"wrt": "w"}),
    ("hessian", {"wrt": "w", "hvp": {"w": [1.0, -2.0, 0.5]}}), ("hessian", {"wrt": ["w", "A"], "hvp": {"A": np.ones((5, 3))}}),
    ("jacobian", {"wrt": "w"}), ("jacobian", {"wrt": "A", "mode": "forward"}), ("dot", {"wrt": "w"}),
    ("hessian", {"wrt": "w", "sparse": True}), ("hessian", {"wrt": "w", "pattern": True}),
    ("jacobian", {"wrt": "A", "sparse": True}), ("jacobian", {"wrt": "w", "pattern": True, "mode": "reverse"})])
def test_a_call_like_an_earlier_one_replays_it(task, options, recordings):
    prog = spiread_cli.compile(SOFTMAX_LOSS)
    rng = np.random.default_rng(1)
    for _ in range(3):
        values = {"A": rng.standard_normal((5, 3)), "w": rng.standard_normal(3)}
        if task == "dot":  # a graph: its text
            assert prog.dot(values, **options).source == spiread_cli.compile(SOFTMAX_LOSS).dot(values, **options).source
        else:
            assert_as_fresh(prog, SOFTMAX_LOSS, task, values, **options)
    assert recordings[0] == 1 + 3  # the first call's own, and a fresh Program's at each call


def test_other_shapes_options_or_tasks_record_afresh(recordings):
    prog = spiread_cli.compile(SOFTMAX_LOSS)
    A, w = np.ones((5, 3)) / 3, np.array([0.1, 0.2, 0.3])
    prog.grad(A=A, w=w)
    prog.grad(A=A, w=w)
    assert recordings[0] == 1
    prog.grad(A=np.ones((4, 3)), w=w)                     # another shape
    prog.grad(A=A, w=w, wrt="A")                          # other options
    prog.hessian(A=A, w=w, wrt="w")                       # another task
    assert recordings[0] == 4
    prog.grad(A=A, w=w)                                   # still kept
    assert recordings[0] == 4
    prog.grad(A=A)                                        # other names bound
    assert recordings[0] == 5


def test_the_memory_limit_set_between_calls_holds_at_the_next(monkeypatch, recordings):
    """SPIREAD_MAX_BYTES is read at each call (limits.configured_limit): set, it is in the signature (a
    fresh run) and refuses a result over it; unset again, the run kept before is replayed."""
    prog = spiread_cli.compile("w = zeros(3)\ny = w.tanh\n")
    w = np.array([0.1, 0.2, 0.3])
    for _ in range(2):
        prog.jacobian(w=w, wrt="w")
    assert recordings[0] == 1
    monkeypatch.setenv("SPIREAD_MAX_BYTES", "64")  # the 3×3 Jacobian is 72 bytes
    with pytest.raises(SpireadError, match="more than the limit of 64 bytes"):
        prog.jacobian(w=w, wrt="w")
    monkeypatch.delenv("SPIREAD_MAX_BYTES")
    np.testing.assert_array_equal(prog.jacobian(w=w, wrt="w")["w"], np.diag(1 - np.tanh(w) ** 2))
    assert recordings[0] == 2  # the refused call's own; then the kept run, replayed


def test_a_kept_jacobian_is_sized_against_the_memory_available_at_each_call(monkeypatch, recordings):
    """Its size is found once per run (jacobian._set_up), its check against the limit made at every call: a
    9.7 MB Jacobian (over what fits whatever the memory) is refused once the memory available is 1 MB."""
    from spiread_cli import limits
    prog = spiread_cli.compile("w = zeros(3)\ny = w.tanh\n")
    w = np.linspace(-1, 1, 1100)
    for _ in range(2):
        assert prog.jacobian(w=w, wrt="w")["w"].shape == (1100, 1100)
    monkeypatch.setattr(limits, "available_bytes", lambda nbytes=None: 1 << 20)
    with pytest.raises(SpireadError, match=r"the Jacobian block ∂y/∂w would be 1100×1100 \(9.2 MB\), more than the "
                                           r"limit of 512.0 KB"):
        prog.jacobian(w=w, wrt="w")
    assert recordings[0] == 1


def test_kept_runs_are_bounded_and_close_drops_them(recordings):
    prog = spiread_cli.compile(SOFTMAX_LOSS)
    w = np.array([0.1, 0.2, 0.3])
    for rows in range(1, KEPT_SIGNATURES + 2):  # one signature more than are kept
        prog.grad(A=np.ones((rows, 3)), w=w)
    assert recordings[0] == KEPT_SIGNATURES + 1
    prog.grad(A=np.ones((1, 3)), w=w)             # the least recently used went
    assert recordings[0] == KEPT_SIGNATURES + 2
    prog.grad(A=np.ones((KEPT_SIGNATURES + 1, 3)), w=w)
    assert recordings[0] == KEPT_SIGNATURES + 2
    prog.close()
    prog.grad(A=np.ones((KEPT_SIGNATURES + 1, 3)), w=w)
    assert recordings[0] == KEPT_SIGNATURES + 3


# Bindings whose values decide what is recorded: each program is called with
# the first values, the second, the first again; each call equals a fresh one.
DECIDING = [
    ("x = [1.0, 2.0, 3.0]\ni = 0\ny = (x[i] * x).sum\n", {"i": [0.0, 2.0, 0.0]}),
    ("x = [1.0, 2.0, 3.0]\nk = 2\ny = x[0:k].exp.sum\n", {"k": [2.0, 3.0, 2.0]}),
    ("n = 2\nx = [1.0, 2.0, 3.0]\ny = ((zeros(n) + 1).sum * x).sum\n", {"n": [2.0, 4.0, 2.0]}),
    ("m = [[1.0, 2.0], [3.0, 4.0]]\nr = 0\ny = (m.row(r) * m.row(1)).sum\n", {"r": [0.0, 1.0, 0.0]}),
    ("w = [1.0, 2.0, 3.0]\nlabels = [0.0, 1.0]\ny = (onehot(labels, 3) @@ w).sum\n",
     {"labels": [[0.0, 1.0], [2.0, 2.0], [0.0, 1.0]]}),
    ("x = [1.0, 2.0, 3.0, 4.0]\nc = 2\ny = x.reshape(c, 4 / c).rowSum.exp.sum\n", {"c": [2.0, 1.0, 2.0]}),
    ("x = [1.0, 2.0]\nt = 1.5\ny = x.clampMin(t).exp.sum\n", {"t": [1.5, 0.0, 1.5]}),
    ("x = [1.0, 2.0]\nb = 3.0\ny = (x * full(2, b)).sum\n", {"b": [3.0, -1.0, 3.0]}),
    ("x = [1.0, 2.0]\nb = 3.0\nprintln(b)\ny = (x * b).sum\n", {"b": [3.0, -1.0, 3.0]}),
    ("given jd: JetDim = JetDim(1)\nc = 2.0\nj = Jet(c) * Jet.h[Double](0)\n", {"c": [2.0, 5.0, 2.0]}),
]


@pytest.mark.parametrize("source, changes", DECIDING)
def test_a_binding_that_decides_the_recording_is_part_of_the_signature(source, changes, recordings):
    prog = spiread_cli.compile(source)
    (name, values), = changes.items()
    tasks = ("eval",) if "Jet" in source else ("eval", "grad")
    for value in values:
        for task in tasks:
            result = assert_as_fresh(prog, source, task, {name: np.asarray(value)})
            assert result[0][0] != "error", result
    # each call recorded afresh, but the last ones, whose values were kept
    assert recordings[0] == 2 * len(values) * len(tasks) - len(tasks)


def test_printed_lines_each_call(recordings):
    """A text printed whole is shown again at each replay; a printed value
    decides the recording (its text), so a new value records afresh."""
    source = 'w = [1.0, 2.0]\nprintln("loss:")\nprintln(w)\nloss = (w * w).sum\n'
    prog = spiread_cli.compile(source)
    for w in ([1.0, 2.0], [1.0, 2.0], [3.0, -1.0]):
        _, _, printed = assert_as_fresh(prog, source, "grad", {"w": np.array(w)})
        assert printed.startswith("loss:\n")
    assert recordings[0] == 2 + 3
    source = 'w = [1.0, 2.0]\nprintln("loss:")\nloss = (w * w).sum\n'
    prog = spiread_cli.compile(source)
    for w in ([1.0, 2.0], [3.0, -1.0]):
        assert assert_as_fresh(prog, source, "grad", {"w": np.array(w)})[2] == "loss:\n"
    assert recordings[0] == 5 + 1 + 2


def test_warnings_each_call_at_their_spans(recordings):
    """A run that warned is not kept; a kept run whose new values would warn
    (a value not finite) runs afresh and warns, at the same span."""
    source = "x = [1.0, 2.0]\ny = x.log.sum + (x * x).sum\n"
    prog = spiread_cli.compile(source)
    for x in ([1.0, 2.0], [0.5, 2.0], [-1.0, 2.0], [-1.0, 2.0], [3.0, 1.0]):
        for task, options in (("grad", {}), ("hessian", {"hvp": {"x": [1.0, 1.0]}}), ("jacobian", {})):
            _, shown, _ = assert_as_fresh(prog, source, task, {"x": np.array(x)}, **options)
            assert bool(shown) == (x[0] < 0)
            assert all(span.line == 2 for _, span in shown)
    # 15 fresh Programs' calls; the program's: each task's first, and both calls that warned
    assert recordings[0] == 15 + 3 + 2 * 3


def test_errors_on_a_kept_run_are_a_fresh_runs():
    prog = spiread_cli.compile(SOFTMAX_LOSS)
    values = {"A": np.ones((5, 3)), "w": np.ones(3)}
    prog.hessian(values, wrt="w", hvp={"w": np.ones(3)})
    for options in ({"wrt": "w", "hvp": {"w": np.ones(4)}}, {"wrt": "v", "hvp": {"w": np.ones(3)}}):
        got = assert_as_fresh(prog, SOFTMAX_LOSS, "hessian", values, **options)
        assert got[0][0] == "error"


def test_a_file_read_again_at_each_call(tmp_path, recordings):
    data = tmp_path / "x.npy"
    np.save(data, np.array([1.0, 2.0]))
    source = 'x = load("x.npy")\nw = [1.0, 1.0]\nloss = (x * w.exp).sum\n'
    prog = spiread_cli.compile(source, base_dir=tmp_path)
    w = np.array([0.5, 0.25])
    first = prog.grad(w=w).gradients["w"]
    np.testing.assert_array_equal(prog.grad(w=w).gradients["w"], first)
    assert recordings[0] == 1
    np.save(data, np.array([3.0, 4.0]))
    np.testing.assert_array_equal(prog.grad(w=w).gradients["w"], np.array([3.0, 4.0]) * np.exp(w))
    assert recordings[0] == 2
    data.unlink()
    with pytest.raises(SpireadError, match="x.npy"):
        prog.grad(w=w)


def test_a_refused_replay_leaves_one_run_of_its_signature(recordings):
    """A replay that meets a non-finite value runs afresh; the fresh run
    replaces the kept one rather than crowding out the other signatures."""
    prog = spiread_cli.compile(SOFTMAX_LOSS)
    A, w = np.ones((5, 3)) / 3, np.array([0.1, 0.2, 0.3])
    prog.eval(A=A, w=w)
    for _ in range(KEPT_SIGNATURES + 1):
        prog.grad(A=A, w=np.array([np.nan, 0.2, 0.3]))
    before = recordings[0]
    prog.eval(A=A, w=w)
    assert recordings[0] == before  # eval's run is still kept


def test_a_binding_not_finite_replays_where_what_it_reaches_is_finite(recordings):
    """A binding's inf or nan is no reason to run afresh: where every value
    a replay computes from it is finite (here a slice leaves the entry
    out) a fresh run computes the same values and warns of nothing, so the
    call replays; where one is not, it runs afresh and warns as a fresh run
    does, or not (kept_runs.Kept.replayed)."""
    source = "x = [1.0, 2.0, 3.0]\nz = x[0:2]\ny = z.exp\nloss = y.sum\n"
    prog = spiread_cli.compile(source)
    for task, options in (("eval", {}), ("grad", {}), ("hessian", {}), ("jacobian", {"of": "y"})):
        assert_as_fresh(prog, source, task, {"x": np.array([1.0, 2.0, 3.0])}, **options)
        for x, replays, warns in (([1.0, 2.0, np.inf], True, False), ([1.0, 2.0, np.nan], True, False),
                                  ([np.nan, 2.0, 3.0], False, False), ([1000.0, 2.0, 3.0], False, True)):
            before = recordings[0]
            got = outcome(prog, task, {"x": np.array(x)}, **options)
            assert recordings[0] == before + (not replays), (task, x)
            assert got == fresh(source, task, {"x": np.array(x)}, **options)
            assert bool(got[1]) == warns


def test_a_program_copies_and_pickles_without_its_kept_runs():
    import copy
    import pickle
    prog = spiread_cli.compile(SOFTMAX_LOSS)
    A, w = np.ones((5, 3)) / 3, np.array([0.1, 0.2, 0.3])
    expected = prog.grad(A=A, w=w)["w"]
    for other in (copy.deepcopy(prog), pickle.loads(pickle.dumps(prog))):
        np.testing.assert_array_equal(other.grad(A=A, w=w)["w"], expected)


# ------------------------------------- what the elaborator reads, checked


def structure(run) -> tuple:
    """Everything a recording decides besides the values that flow through
    it: each node's op, inputs, parameters and shape, the constants'
    values, the printed lines and the Jets' parts."""
    nodes = tuple((n.op.name if n.op else n.kind, n.inputs, repr(sorted(n.params.items())), n.shape,
                   None if n.op or n.kind == "input" else n.value.tobytes()) for n in run.tape.nodes)
    return nodes, tuple(run.printed), tuple((i, t.tobytes()) for i, t in run.jets.items())


def deciding_names(run, names) -> set[str]:
    from spiread_cli.kept_runs import _deciders
    return set(_deciders(run, {name: run.tape.nodes[run.bindings[name]] for name in names}))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs(), st.data())
def test_values_the_elaborator_does_not_read_decide_nothing(program, data):
    """A binding not traced to a read (`Run.read`) leaves the recording as it
    was when its value changes: the read-tracking misses no value that
    decides the tape (random programs, whose values are all bindings)."""
    names = [n for n in program.names if n in program.inputs]
    prog = spiread_cli.compile(program.source)
    values = {n: np.asarray(program.inputs[n], dtype=float) for n in names}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first = prog.run(values)
        free = set(names) - deciding_names(first, names)
        rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
        moved = {n: v * (1 + rng.standard_normal(v.shape)) if n in free else v for n, v in values.items()}
        assert structure(prog.run(moved)) == structure(first)


@pytest.mark.parametrize("source, changes", DECIDING)
def test_a_binding_read_as_a_size_or_position_is_traced(source, changes):
    (name, _), = changes.items()
    run = spiread_cli.compile(source).run()
    assert deciding_names(run, [n for n in run.bindings if run.tape.nodes[run.bindings[n]].kind == "input"]) == {name}


def test_a_call_while_another_uses_the_kept_run_runs_afresh(recordings):
    """A kept run serves one call at a time (a second thread's call, while
    the first's is on it, records afresh and gives the same)."""
    prog = spiread_cli.compile(SOFTMAX_LOSS)
    values = {"A": np.ones((5, 3)) / 4, "w": np.array([0.1, -0.2, 0.3])}
    first = outcome(prog, "grad", values)
    with prog._kept.lock:
        assert outcome(prog, "grad", values) == first
    assert outcome(prog, "grad", values) == first
    assert recordings[0] == 2


def test_an_unguarded_replay_is_exact_where_every_value_is_finite():
    """A kept run replays `scale` as a multiply (tape_nodes.straight_line,
    `unguarded`) and checks every value it computes: where all are finite,
    no guard had anything to do (the same bits as the guarded replay); where
    the guard keeps a zero against an infinite partial, the multiply gives
    a nan, so the check fails and a fresh run follows."""
    from spiread_cli.ops import OPS
    from spiread_cli.tape_nodes import straight_line
    r = spiread_cli.compile("t = [0.0, 2.0, -1.0]\nd = [1.5, 3.0, 0.25]\ny = t * d\n").run({})
    nodes = r.tape.nodes
    t, d = nodes[r.bindings["t"]], nodes[r.bindings["d"]]
    node = r.tape.record(OPS["scale"], (t.id, d.id), {}, nodes[r.output].span, "scale", None)
    guarded, unguarded = straight_line(nodes, [node]), straight_line(nodes, [node], unguarded=True)
    for dv, same in (([1.5, 3.0, 0.25], True), ([np.inf, 3.0, 0.25], False)):
        d.set_value(np.array(dv))
        guarded()
        want = node.value
        unguarded()
        assert (node.value.tobytes() == want.tobytes()) == same
        assert np.isfinite(node.value).all() == same and np.isfinite(want).all()


def test_sparse_results_have_no_negative_zero():
    """A sparse result's zeros are 0.0, as a dense result's are (a written
    forward push may make a -0.0 where the guarded sweep made 0.0):
    python_args.with_sweeps and the `--out` file alike."""
    import scipy.sparse as sp

    from spiread_cli.files import save_sparse
    from spiread_cli.python_args import with_sweeps
    matrix = sp.csr_array(np.array([[-0.0, 1.0], [2.0, -0.0]]))
    matrix.data = np.array([-0.0, 1.0, 2.0, -0.0])
    matrix.indices, matrix.indptr = np.array([0, 1, 0, 1]), np.array([0, 2, 4])
    assert np.signbit(matrix.data).any()
    assert not np.signbit(with_sweeps(matrix.copy(), 2).data).any()
    import tempfile
    from pathlib import Path
    with tempfile.TemporaryDirectory() as folder:
        save_sparse(Path(folder) / "m.npz", matrix)
        assert not np.signbit(sp.load_npz(Path(folder) / "m.npz").data).any()


def _replayed_ops(run, inputs):
    nodes = run.tape.nodes
    moving = run.tape.fed_by([run.bindings[n] for n in inputs], len(nodes) - 1)
    return [node for node in nodes if node.op is not None and moving[node.id]]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs(), st.data())
def test_a_checked_replay_says_finite_only_when_every_value_is(program, data):
    """A kept run's replay checks what it computes as it is written
    (tape_nodes.straight_line, `checked`): it says finite exactly when every
    value it computed but a copy is (np.isfinite of each, an independent
    test; a copy makes no entry that is not finite from finite ones), save
    a sum that overflows, which may only say no where all are finite.
    Values poisoned with inf and nan make some values not finite (a
    binding's may reach no value: 1 / inf is 0)."""
    from spiread_cli.structure import COPIES
    from spiread_cli.tape_nodes import straight_line
    run = spiread_cli.compile(program.source).run({})
    ops = _replayed_ops(run, program.inputs)
    computed = [node for node in ops if node.op.structure is not COPIES]
    replay = straight_line(run.tape.nodes, ops, unguarded=True, checked=True)
    if replay is None:  # an op that is not the table's own
        return
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    for poison in (None, np.inf, np.nan, -np.inf):
        for name in program.inputs:
            node = run.node(name)
            value = np.array(program.inputs[name], dtype=float, ndmin=0).reshape(node.shape)
            if poison is not None and value.size and rng.random() < 0.5:
                value.flat[rng.integers(value.size)] = poison
            node.set_value(value)
        with np.errstate(all="ignore"):
            said = replay()
        every = all(np.isfinite(node.value).all() for node in computed)
        if said:
            assert every
        elif every:  # only a sum past the largest float64 may say no
            assert sum(np.abs(node.value).sum() for node in computed) > 1e300


@pytest.mark.parametrize("where", [None, "few", "large"])
def test_a_checked_replay_checks_large_values_one_by_one(where):
    """Values over tape_nodes.FEW_ENTRIES are checked one by one, the others
    together: a nan in either kind says no, and a kept call gives what a
    fresh one gives (here a warning, so it is never kept)."""
    from spiread_cli.tape_nodes import FEW_ENTRIES
    n = int(np.sqrt(FEW_ENTRIES)) + 2
    # 1 / inf is 0: what was not finite reaches no other value
    source = f"X = zeros({n}, {n})\nv = zeros({n})\nloss = (1 / X.exp).sum + (1 / v.log).sum\n"
    prog = spiread_cli.compile(source)
    rng = np.random.default_rng(1)
    values = {"X": rng.standard_normal((n, n)), "v": rng.random(n) + 2.0}
    assert_as_fresh(prog, source, "grad", values)
    if where is not None:
        poisoned = {k: v.copy() for k, v in values.items()}
        if where == "large":
            poisoned["X"][3, 4] = 1e3  # exp overflows: a value of n² entries
        else:
            poisoned["v"][2] = 0.0     # log of 0: a value of n entries
        result, shown, _ = assert_as_fresh(prog, source, "grad", poisoned)
        assert shown
    assert_as_fresh(prog, source, "grad", values)


def test_a_replay_computes_a_repeated_op_once():
    """An op that computes what an earlier one does (`Tape.repeats`: `A @@ w`
    written twice) is replayed once, and its node given that value (the same
    array, so the same bits); every call equals a fresh run's."""
    source = "A = zeros(4, 3)\nw = zeros(3)\nloss = (A @@ w).tanh.sum + (A @@ w).exp.sum + (w ** 3).sum\n"
    prog = spiread_cli.compile(source)
    rng = np.random.default_rng(5)
    for task, options in (("eval", {}), ("hessian", {"wrt": "w"}), ("hessian", {"wrt": "w", "hvp": {"w": np.ones(3)}})):
        for _ in range(3):
            values = {"A": rng.standard_normal((4, 3)), "w": rng.standard_normal(3)}
            assert_as_fresh(prog, source, task, values, **options)
        run = prog._kept.kept[0].run
        products = [node for node in run.tape.nodes if node.op is not None and node.op.name == "matmul"
                    and node.inputs == (run.bindings["A"], run.bindings["w"])]
        assert len(products) == 2 and products[1].value is products[0].value


# ------------------------------------------------ what a replay computes


SECOND_ORDER_TASKS = {"hvp": "hvp", "hessian": None, "sparse hessian": "sparse"}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs(), st.data())
def test_a_replay_leaves_out_only_what_its_task_never_reads(program, data):
    """A kept run's replay computes the program's nodes and, of what its task
    recorded, what the task reads or a fresh run of it checks (`Run.reading`):
    the recorded nodes it leaves out are set to nan before each later call,
    which still gives a fresh Program's bits and warnings — at the values
    given, scaled (an overflow), or poisoned with inf and nan."""
    task = data.draw(st.sampled_from(sorted(SECOND_ORDER_TASKS)), label="task")
    wrt = [n for n in program.default_wrt() if n in program.inputs][:2]
    if not wrt:
        return
    options: dict = {"wrt": wrt}
    if task == "hvp":
        options["hvp"] = {n: np.random.default_rng(0).standard_normal(np.shape(program.inputs[n])) for n in wrt}
    elif task == "sparse hessian":
        options["sparse"] = True
    prog = spiread_cli.compile(program.source)
    names = [n for n in program.names if n in program.inputs]
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    for scale in (None, 1.0, 1e160, "poisoned", 1.0):
        values = {n: np.asarray(program.inputs[n], dtype=float) * (1 + 0.2 * rng.standard_normal(
            np.shape(program.inputs[n]))) for n in names}
        if type(scale) is float:
            values = {n: v * scale for n, v in values.items()}
        elif scale == "poisoned":
            for n in names:
                values[n].flat[rng.integers(values[n].size)] = rng.choice([np.inf, -np.inf, np.nan])
        for kept in prog._kept.kept:
            replayed = {node.id for node in kept.ops}
            for node in kept.run.tape.nodes[kept.run.recorded_from:]:
                if node.op is not None and node.id not in replayed:
                    node.set_value(np.full(node.shape, np.nan))
        assert_as_fresh(prog, program.source, "hessian", values, **options)


LOGITS = "A = zeros(6, 4)\nw = zeros(4)\nloss = (A @@ w).tanh.sum + (w ** 4).sum / 4 + (A @@ w).exp.normaliseRowsL1.log.sum\n"


def test_a_kept_hvp_replays_no_gradient_its_products_do_not_read():
    """The products of a kept HVP never read the recorded gradient ∂f/∂w
    itself (h only multiplies it by v): its last sum, which a fresh run
    computes but never checks, is not replayed; the rules' results it adds,
    which a fresh run checks, are."""
    prog = spiread_cli.compile(LOGITS)
    rng = np.random.default_rng(3)
    for _ in range(3):
        values = {"A": rng.standard_normal((6, 4)), "w": rng.standard_normal(4)}
        assert_as_fresh(prog, LOGITS, "hessian", values, wrt="w", hvp={"w": rng.standard_normal(4)})
    kept = prog._kept.kept[0]
    nodes = kept.run.tape.nodes
    gradient = max(kept.run.reads - {node.id for node in kept.ops} | {len(nodes) - 1})
    assert nodes[gradient].label == "Σ∂ w" and gradient == len(nodes) - 1
    assert nodes[gradient] not in kept.ops
    recorded = [node for node in kept.ops if node.id >= kept.run.recorded_from]
    assert 0 < len(recorded) < len([node for node in nodes[kept.run.recorded_from:] if node.op is not None])


@pytest.mark.parametrize("hvp", [False, True])
def test_a_derivative_born_not_finite_where_no_product_reads_it_warns_each_call(hvp):
    """∂f/∂w of `(A @@ w).sum` is the columns' sums of A, which no HVP reads
    (H·v = 2v): a fresh call computes it, and warns where it overflows; a
    kept call does too (a fresh run's checks are what the task reads)."""
    source = "A = zeros(2, 3)\nw = zeros(3)\nloss = (A @@ w).sum + (w * w).sum\n"
    prog = spiread_cli.compile(source)
    options = {"wrt": "w", **({"hvp": {"w": np.ones(3)}} if hvp else {})}
    values = {"A": np.ones((2, 3)), "w": np.ones(3)}
    assert_as_fresh(prog, source, "hessian", values, **options)
    overflowing = {"A": np.array([[1e308, 1.0, 1.0], [1e308, 1.0, 1.0]]), "w": np.array([1e-300, 1.0, 1.0])}
    result, shown, _ = assert_as_fresh(prog, source, "hessian", overflowing, **options)
    assert shown and "derivative of `@@`" in shown[0][0]
    assert_as_fresh(prog, source, "hessian", values, **options)


@pytest.mark.parametrize("task", ["hessian", "eval"])
def test_a_derivative_no_gradient_reads_warns_on_a_kept_call_too(task):
    """∂/∂(A == w) of `(A == w) @@ v` is computed and checked by a fresh
    recording (a fresh call warns where it overflows), though the comparison
    passes nothing on: it stays on the tape (emitter.unread_dropped keeps
    what a recording checked), so a kept call computes and checks it too —
    the recorded gradient of a Hessian's, and a program's own `.backward`."""
    source = "A = zeros(1, 1)\nw = ones(1, 1)\nv = ones(1)\nloss = ((A == w) @@ v).sum * w.sum\n"
    if task == "eval":
        source += "g = loss.backward(w)\nout = g.w.sum\n"
    prog = spiread_cli.compile(source)
    options = {"wrt": "w"} if task == "hessian" else {}
    values = {"A": np.zeros((1, 1)), "w": np.ones((1, 1)), "v": np.ones(1)}
    assert_as_fresh(prog, source, task, values, **options)
    result, shown, _ = assert_as_fresh(prog, source, task, {**values, "w": np.full((1, 1), 1e200),
                                                           "v": np.full(1, 1e200)}, **options)
    assert shown and "derivative of `@@`" in shown[0][0]
