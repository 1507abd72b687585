"""A reverse sweep made again is written out as one function
(spiread_cli/reverse_steps.py, `Tape.sweeps`): a kept call's gradient and
reverse-mode Jacobian, a training step's gradient. It gives the loop's bits,
batched or not, finite or not, with the loop's warnings at their spans and no
numpy RuntimeWarning, and holds no more memory than the loop."""

from __future__ import annotations

import tracemalloc
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import spiread_cli
from spiread_cli import tape as tape_module
from spiread_cli.diagnostics import Diagnostics
from spiread_cli.rules_forward import Diagonal, dense
from spiread_cli.tape import Tape
from programs import programs
from test_kept_runs import assert_as_fresh


@pytest.fixture
def looped(monkeypatch):
    """How many sweeps the tape's loop made (`Tape._sweep`): its first item."""
    count = [0]
    monkeypatch.setattr(Tape, "_sweep", lambda tape, *args, sweep=Tape._sweep: count.__setitem__(0, count[0] + 1)
                        or sweep(tape, *args))
    return count


def bits(result: dict) -> list:
    """A sweep's result as (node, kind, shape, bytes): equal means the same bits and kinds."""
    return [(w, type(g).__name__, np.shape(dense(g)), np.asarray(dense(g)).tobytes()) for w, g in result.items()]


def warned(diagnostics: Diagnostics | None) -> list:
    return [] if diagnostics is None else [(w.message, w.span) for w in diagnostics.warnings]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs(), st.data())
def test_a_sweep_made_again_is_written_and_gives_the_loops_bits(program, data):
    """On random programs, at values with zeros, infs and nans, of the scalar
    output or (batched: arrays or rows of the identity as cotangents) of a
    random value: each sweep after the first runs the written function and
    gives what the loop gives for the same values, bit for bit, and its
    warnings (the loop's checking sweep, where a result is not finite)."""
    run = spiread_cli.compile(program.source).run({})
    tape, names = run.tape, [n for n in program.default_wrt() if n in program.inputs]
    if not names:
        return
    wrt = [run.bindings[n] for n in names]
    fed = tape.fed_by(wrt, len(tape.nodes) - 1)
    reached = [node.id for node in tape.nodes if node.op is not None and fed[node.id] and node.id <= run.output]
    batched = data.draw(st.sampled_from([None, "arrays", "identity"]), label="batched")
    output = run.output if batched is None or not reached else data.draw(st.sampled_from(reached), label="output")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    shape = tape.nodes[output].shape
    for call, poison in enumerate((None, None, 0.0, np.inf, np.nan, None)):
        for name in names:
            node = run.node(name)
            value = np.asarray(program.inputs[name], dtype=float) * (1 + 0.1 * rng.standard_normal(node.shape))
            if poison is not None and value.size:
                value.flat[rng.integers(value.size)] = poison
            node.set_value(value.reshape(node.shape))
        with np.errstate(all="ignore"):
            tape.replay(tape.nodes[:output + 1])
        size = int(np.prod(shape))
        cotangents = None if batched is None else rng.standard_normal((3,) + shape) if batched == "arrays" else \
            Diagonal.identity_rows(shape, 0, size) if size else None
        # (a batch's non-finite derivatives are found by its caller: jacobian.pull_blocks)
        expected_warnings, diagnostics = (Diagnostics(), Diagnostics()) if cotangents is None else (None, None)
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # none leaks from either sweep
            expected = Tape(tape.nodes).backward(output, wrt, expected_warnings, cotangents=cotangents)  # a first
            got = tape.backward(output, wrt, diagnostics, cotangents=cotangents)
        assert bits(got) == bits(expected)
        assert warned(diagnostics) == warned(expected_warnings)
        assert callable(tape.sweeps[(output, tuple(wrt), cotangents is not None)]) == (call > 0)


def test_kept_gradients_and_reverse_jacobians_sweep_by_the_written_function(looped):
    """A kept call's sweep is the written one: the loop runs for the fresh
    call alone, and again only where a gradient is not finite (its checking
    sweep); each call equals a fresh Program's, warnings included."""
    source = "A = zeros(4, 3)\nw = zeros(3)\ny = (A @@ w).tanh\nloss = y.sum + (w ** 4).sum + w.sqrt.sum\n"
    rng = np.random.default_rng(3)
    A, w = rng.standard_normal((4, 3)), rng.random(3) + 0.5
    for call, of in (("grad", None), ("jacobian", "y")):
        prog = spiread_cli.compile(source)
        options = {"wrt": "w", "of": of} | ({"mode": "reverse"} if call == "jacobian" else {})
        looped[0] = 0
        for scale in (1.0, 1.5, 2.0, 0.5):
            got = getattr(prog, call)({"A": A, "w": w * scale}, **options)
            want = getattr(spiread_cli.compile(source), call)({"A": A, "w": w * scale}, **options)
            assert np.asarray(got["w"]).tobytes() == np.asarray(want["w"]).tobytes()
        assert looped[0] == 4 + 1  # the fresh Programs' four and the first call's
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            looped[0] = 0
            got = prog.grad({"A": A, "w": np.array([0.0, 1.0, 2.0])}, wrt="w") if call == "grad" else None
            kept = [(str(c.message), c.category) for c in caught]
            caught.clear()
            if got is not None:
                assert looped[0] == 1  # the checking sweep that finds sqrt
                want = spiread_cli.compile(source).grad({"A": A, "w": np.array([0.0, 1.0, 2.0])}, wrt="w")
                assert np.asarray(got["w"]).tobytes() == np.asarray(want["w"]).tobytes()
                assert kept == [(str(c.message), c.category) for c in caught] and "`sqrt`" in kept[0][0]
                assert not any(issubclass(category, RuntimeWarning) for _, category in kept)


def test_training_steps_sweep_by_the_written_function(looped, monkeypatch):
    """Every training step after the first sweeps by the written function,
    and replays by one (as a kept run does), and training gives the bits it
    gives with the tape's loops at every step."""
    source = "X = zeros(20, 4)\ny = zeros(20)\nw = zeros(4)\nloss = ((X @@ w).tanh - y).square.mean + (w * w).sum\n"
    rng = np.random.default_rng(7)
    values = {"X": rng.standard_normal((20, 4)), "y": rng.standard_normal(20), "w": rng.standard_normal(4)}
    replayed = []  # the tape's replay loop, which the steps leave to the written replay
    monkeypatch.setattr(Tape, "replay", lambda tape, *args, loop=Tape.replay: replayed.append(1) or loop(tape, *args))
    spiread_cli.compile(source).train(values, wrt="w", steps=3, lr=0.1, optimizer="adam")
    before, looped[0] = len(replayed), 0
    written = spiread_cli.compile(source).train(values, wrt="w", steps=12, lr=0.1, optimizer="adam")
    assert looped[0] == 1 and len(replayed) == 2 * before
    monkeypatch.setattr(tape_module, "written_sweep", lambda nodes, output, wrt, needs, batched: lambda cotangents:
                        Tape(nodes)._sweep(output, wrt, needs, None, cotangents))
    monkeypatch.setattr(Tape, "replay_function", lambda tape, ops, *args: lambda: tape.replay(ops))
    loop = spiread_cli.compile(source).train(values, wrt="w", steps=12, lr=0.1, optimizer="adam")
    assert np.array(written.losses).tobytes() == np.array(loop.losses).tobytes()
    assert written.values["w"].tobytes() == loop.values["w"].tobytes()


@pytest.mark.parametrize("source, shape", [
    ("w = zeros(1)\nloss = (((w.tanh * 2).exp + w).sin * w).sum\n", (200_000,)),
    ("w = zeros(1)\nloss = (w.sin * w).sum + w.tanh.sum\n", (200_000,)),  # a second contribution, a fast path's
    ("w = zeros(1, 1)\nloss = w.softmaxRows.square.sum + w.sum\n", (400, 500)),
])
def test_a_written_sweep_holds_no_more_than_the_loop(source, shape):
    """Adjoints, a statement's temporaries and a rule's result are dropped
    as the loop drops them (the temporaries before the result is added in):
    the written sweep's peak memory is the loop's, or less."""
    rng = np.random.default_rng(2)
    run = spiread_cli.compile(source.replace("zeros(1, 1)", f"zeros{shape}").replace("zeros(1)", f"zeros{shape}")).run(
        {"w": rng.standard_normal(shape)})
    tape, wrt = run.tape, [run.bindings["w"]]
    peaks = []
    for _ in range(3):  # the loop, then the written sweep
        tracemalloc.start()
        result = tape.backward(run.output, wrt)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        del result
    assert callable(tape.sweeps[(run.output, tuple(wrt), False)])
    assert max(peaks[1:]) <= peaks[0] + 4096


def test_sums_made_in_place_give_the_loops_bits():
    """An adjoint of IN_PLACE_ENTRIES or more with three contributions and
    more takes them into the sum the sweep made, in place, as the loop does."""
    from spiread_cli.ops import IN_PLACE_ENTRIES
    source = f"w = zeros({5 * IN_PLACE_ENTRIES})\nloss = (w.sin * w).sum + w.tanh.sum + (w * 3).exp.sum + w.square.sum\n"
    rng = np.random.default_rng(4)
    prog = spiread_cli.compile(source)
    for _ in range(4):
        w = rng.standard_normal(5 * IN_PLACE_ENTRIES)
        got = prog.grad(w=w)["w"]
        assert got.tobytes() == spiread_cli.compile(source).grad(w=w)["w"].tobytes()
    run = prog._kept.kept[0].run
    assert any(callable(sweep) for sweep in run.tape.sweeps.values())


def test_a_tape_forgets_the_sweeps_over_what_it_drops():
    """`Tape.forget` drops the sweeps of the nodes it drops, a sweep by no node too."""
    run = spiread_cli.compile("w = [1.0, 2.0]\nloss = (w * w).sum\n").run({})
    tape = run.tape
    for wrt in ([], [run.bindings["w"]]):
        tape.backward(run.output, wrt)
    tape.forget(len(tape.nodes))
    assert len(tape.sweeps) == 2
    tape.forget(run.output)
    assert tape.sweeps == {}


def test_a_long_sweep_is_written_once_the_loop_has_cost_what_writing_does():
    """A sweep over many nodes is written out only after as many loops as
    writing it costs (`sweeps_before_writing`); a short one the second time."""
    from spiread_cli.reverse_steps import NODES_A_WRITING_COSTS, sweeps_before_writing
    blocks = NODES_A_WRITING_COSTS  # three nodes a block: written at the third sweep
    source = "v0 = [0.1, 0.2]\n" + "".join(f"v{i} = (v{i - 1} * 0.5).sin\n" for i in range(1, blocks + 1)) + \
        f"loss = v{blocks}.sum\n"
    run = spiread_cli.compile(source).run({})
    tape, wrt = run.tape, [run.bindings["v0"]]
    before = sweeps_before_writing(run.output + 1 - wrt[0])
    assert before == 3 and sweeps_before_writing(12) == 2
    first = bits(tape.backward(run.output, wrt))
    for call in range(2, before + 2):
        assert bits(tape.backward(run.output, wrt)) == first
        assert callable(tape.sweeps[(run.output, tuple(wrt), False)]) == (call >= before)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs(), st.data())
def test_random_programs_kept_gradients_and_reverse_jacobians_are_fresh_ones(program, data):
    """Through the Python API, a program's gradient and reverse Jacobian
    called again and again — at new values, with zeros, with an inf or a nan
    — equal a fresh Program's, warnings included; the run kept last, called
    three times, sweeps by its written function."""
    task = data.draw(st.sampled_from(["grad", "jacobian"]), label="task")
    names = [n for n in program.names if n in program.inputs]
    wrt = [n for n in program.default_wrt() if n in program.inputs][:2]
    if not wrt:
        return
    options = {"wrt": wrt} | ({"mode": "reverse"} if task == "jacobian" else {})
    prog = spiread_cli.compile(program.source)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    for kind in ("values", "zeros", "poisoned", "values", "values", "values"):
        values = {n: np.asarray(program.inputs[n], dtype=float) * (1 + 0.1 * rng.standard_normal(
            np.shape(program.inputs[n]))) for n in names}
        for n in names:
            if kind != "values" and values[n].size:
                values[n].flat[rng.integers(values[n].size)] = 0.0 if kind == "zeros" else \
                    rng.choice([np.inf, -np.inf, np.nan])
        assert_as_fresh(prog, program.source, task, values, **options)
    kept = prog._kept.kept
    if kept and not kept[0].run.diagnostics.warnings:
        assert any(callable(sweep) for sweep in kept[0].run.tape.sweeps.values())
