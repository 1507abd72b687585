"""Loading at scale: long numeric literals are data (one NUMBERS token, one
array node), and the parser keeps nothing that grows with the program per
node. Checked by structure and memory, never by timing."""

from __future__ import annotations

import random
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import run, spiread, strict_json, value
from spiread_cli import syntax, syntax_tree
from spiread_cli.program import Program
from spiread_cli.set_options import parse_overrides
from spiread_cli.diagnostics import Source, SpireadError


def parse(text: str) -> list:
    return syntax.parse(Source("test.ad", text)).statements


def numbers_text(n: int, seed: int = 0) -> tuple[str, np.ndarray]:
    """n numbers written in every form the lexer knows, and their values by float()."""
    rng = random.Random(seed)
    forms = ("{:d}", "{:.3f}", "{:.6e}", "{:.2E}", "+{:.1f}", "{:.0f}.")
    texts = []
    for _ in range(n):
        x = rng.uniform(-1e3, 1e3)
        form = rng.choice(forms)
        texts.append(form.format(int(x)) if form == "{:d}" else form.format(abs(x) if form[0] == "+" else x))
    return ", ".join(texts), np.array([float(t) for t in texts])


# ------------------------------------------------------------ long literals


def test_a_long_literal_is_one_array_node_with_the_right_values():
    body, expected = numbers_text(100_000)
    statements = parse(f"x = [{body}]\n")
    assert isinstance(statements[0].value, syntax_tree.NumberArray)
    np.testing.assert_array_equal(statements[0].value.value, expected)
    np.testing.assert_array_equal(value(f"x = [{body}]\n"), expected)


def test_a_long_literal_through_set_is_the_same_array():
    body, expected = numbers_text(100_000, seed=1)
    overrides = parse_overrides([f"x=[{body}]"])
    np.testing.assert_array_equal(overrides["x"], expected)
    np.testing.assert_array_equal(value("x = 0\ny = x * 2\n", of="y", sets=overrides), 2 * expected)


def test_a_large_matrix_literal_is_one_array_node():
    rows = [numbers_text(50, seed=k) for k in range(400)]
    text = "m = [\n" + "".join(f"  [{body}],  // row {k}\n" for k, (body, _) in enumerate(rows)) + "]\n"
    statements = parse(text)
    assert isinstance(statements[0].value, syntax_tree.NumberArray)
    np.testing.assert_array_equal(value(text), np.stack([v for _, v in rows]))


def test_set_on_the_command_line_takes_a_long_literal():
    body, expected = numbers_text(5_000, seed=2)  # one argument: at most 128 KB on Linux
    result = spiread("eval", "-", "--of", "s", "--set", f"x=[{body}]", "--format", "json",
                     stdin="x = [0]\ns = x.sum\n")
    assert result.returncode == 0, result.stderr
    values = strict_json(result.stdout)["values"]
    np.testing.assert_array_equal(values["x"]["value"], expected)
    assert values["s"]["value"] == expected.sum()


# A literal of plain numbers must read the same as the same literal read token
# by token. `(1)` is not a plain number, so putting one entry in parentheses
# makes the parser take the ordinary LSQB ... RSQB path: that is the reference.
number = st.one_of(st.integers(0, 10**6).map(str),
                   st.floats(0, 1e6, allow_nan=False).map(repr),
                   st.floats(0, 1e3, allow_nan=False).map(lambda x: f"{x:.3e}"),
                   st.integers(0, 999).map(lambda k: f".{k}"),
                   st.integers(0, 99).map(lambda k: f"{k}."))
signed = st.tuples(st.sampled_from(["", "-", "+"]), number).map("".join)
gap = st.sampled_from(["", " ", "\n", "  \n\t", " // a comment [1]\n", " # note ]\n  "])


@st.composite
def vector(draw, size=None):
    """(values, literal, reference): the reference is the same literal with its
    first entry in parentheses."""
    items = draw(st.lists(signed, min_size=size or 1, max_size=size or 8))
    before = [draw(gap) for _ in items]
    after = [draw(gap) for _ in items]
    trailing = "," + draw(gap) if draw(st.booleans()) else ""

    def written(first):
        return "[" + ",".join(b + item + a for b, item, a in zip(before, [first, *items[1:]], after)) + trailing + "]"
    return [float(x) for x in items], written(items[0]), written(f"({items[0]})")


@st.composite
def matrix(draw):
    cols = draw(st.integers(1, 4))
    rows = draw(st.lists(vector(cols), min_size=1, max_size=4))
    gaps = [draw(gap) for _ in range(len(rows) + 1)]

    def written(first):
        texts = [first, *(literal for _, literal, _ in rows[1:])]
        return "[" + gaps[0] + ",".join(t + g for t, g in zip(texts, gaps[1:])) + "]"
    return [values for values, _, _ in rows], written(rows[0][1]), written(rows[0][2])


@settings(max_examples=150, deadline=None)
@given(st.one_of(vector(), matrix()))
def test_a_literal_reads_the_same_as_token_by_token(case):
    values, literal, reference = case
    expected = np.array(values)
    text = f"x = {literal}\n"
    statement = parse(text)[0]
    assert isinstance(statement.value, syntax_tree.NumberArray)
    assert Source("t", text).snippet(statement.value.span) == literal
    np.testing.assert_array_equal(statement.value.value, expected)
    np.testing.assert_array_equal(value(text), expected)
    assert not isinstance(parse(f"x = {reference}\n")[0].value, syntax_tree.NumberArray)
    np.testing.assert_array_equal(value(f"x = {reference}\n"), expected)


def test_a_literal_spans_its_lines_and_what_follows_is_placed_right():
    statements = parse("x = [1,\n  2, # two\n  3]\ny = x * 2\n")
    assert (statements[0].value.span.line, statements[0].value.span.end_line) == (1, 3)
    assert statements[1].at.line == 4 and statements[1].at.column == 1
    with pytest.raises(SpireadError) as caught:
        run("x = [[1, 2],\n  // [9, 9, 9]\n  [3, 4],\n]\ny = z\n")
    assert (caught.value.diagnostic.span.line, caught.value.diagnostic.span.column) == (5, 5)


def test_rows_of_different_lengths_give_the_usual_error_at_the_rows():
    with pytest.raises(SpireadError) as caught:
        run("x = [[1, 2], // first\n     [3]]\n")
    diagnostic = caught.value.diagnostic
    assert diagnostic.message == ("`[[1, 2], // first\n     [3]]`: the pieces differ in shape: "
                                  "`[1, 2]` is a vector of 2, `[3]` is a vector of 1")
    rows = parse("x = [[1, 2], // first\n     [3]]\n")[0].value.items
    assert [(r.span.line, r.span.column, r.span.end_column) for r in rows] == [(1, 6, 12), (2, 6, 9)]


def test_a_literal_after_a_value_is_still_an_index():
    assert value("x = [10, 20, 30]\ny = x[1]\n") == 20
    assert value("y = [10, 20, 30][2]\n") == 30
    np.testing.assert_array_equal(value("m = [[1, 2], [3, 4]]\ny = m[1, 0]\n"), 3)


def test_a_syntax_error_never_quotes_a_whole_literal():
    body, _ = numbers_text(1_000)
    for text, message in [(f"x.[{body}]\n", "expected a method name after `.`, found `[`"),
                          (f"x = [{body}] 3\n", "unexpected `3` after `]`; expected an operator or the end of the line")]:
        with pytest.raises(SpireadError) as caught:
            run(text)
        assert caught.value.diagnostic.message == message


# --------------------------------------------------------------- long chains


def test_the_ast_of_a_long_chain_holds_no_growing_text():
    links = 20_000
    names = ("sin", "tanh", "cos")
    node = parse("y = x" + "".join(f".{names[k % 3]}" for k in range(links)) + "\n")[0].value
    seen = 0
    while isinstance(node, syntax_tree.Attribute):
        assert isinstance(node.name, str) and len(node.name) <= 4
        assert node.span.start == 4 and node.at.end == node.span.end
        node, seen = node.receiver, seen + 1
    assert seen == links and isinstance(node, syntax_tree.Name)


def parse_peak(text: str) -> int:
    tracemalloc.start()
    try:
        parse(text)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_parse_memory_grows_linearly_with_a_chain():
    chain = lambda n: "y = x" + ".sin" * n + "\n"  # noqa: E731
    small, large = parse_peak(chain(5_000)), parse_peak(chain(20_000))
    # Linear: four times the links, about four times the memory (quadratic would be sixteen).
    assert large < 6 * small, (small, large)


def test_load_memory_grows_linearly_with_program_lines():
    """Parse and record a realistic program (benchmarks/load.py's *lines*)."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
    from load import lines_program

    def peak(n: int) -> int:
        source = Source("lines.ad", lines_program(n))
        tracemalloc.start()
        try:
            Program.parse(source).run()
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    Program.parse(Source("warm.ad", lines_program(20))).run()  # the parser and its scanners are built once
    small, large = peak(300), peak(1_200)
    # Four times the lines, about four times the memory (quadratic would be sixteen).
    assert large < 6 * small, (small, large)


def test_the_possessive_entry_repeat_is_spelled_from_gap_and_number():
    """_MORE is (_GAP "," _GAP _SIGNED)* made possessive, written out by hand
    because the grammar's operators cannot say possessive: it must not drift."""
    terminals = {t.name: t.pattern.value for t in syntax._get_parser().terminals}
    grammar = syntax.grammar_text()
    gap = next(line for line in grammar.splitlines() if line.startswith("_GAP:"))
    more = next(line for line in grammar.splitlines() if line.startswith("_MORE:"))
    gap_regex = gap.split("/", 1)[1].rsplit("/", 1)[0]
    assert more == f"_MORE: /(?:{gap_regex},{gap_regex}[-+]?{terminals['NUMBER']})*+/"
