"""The `.ad` language, LANGUAGE.md §2–7, through the library API."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import gradients, run, value
from spiread_cli.gradients import gradients as run_gradients
from spiread_cli.program import Program
from spiread_cli.set_options import parse_overrides
from spiread_cli.diagnostics import BEYOND_FLOAT64, SpireadError

A = "a = [[1.0, 2.0], [3.0, 4.0]]\n"
B = "b = [[0.5, -1.0], [2.0, 0.25]]\n"
C = "c = [[-1.5, 0.5], [1.0, 3.0]]\n"
a = np.array([[1.0, 2.0], [3.0, 4.0]])
b = np.array([[0.5, -1.0], [2.0, 0.25]])
c = np.array([[-1.5, 0.5], [1.0, 3.0]])


def error(text: str, **kwargs) -> SpireadError:
    with pytest.raises(SpireadError) as caught:
        run(text, **kwargs)
    return caught.value


# ------------------------------------------------------------- §2 lexical


@pytest.mark.parametrize("text,expected", [
    ("2", 2.0), ("2.0", 2.0), (".5", 0.5), ("1e-3", 1e-3), ("1.5E+2", 150.0), ("2.5e2", 250.0),
    ("1.0.tej", 1.0), ("1.tej", 1.0), ("-1.0.tej", -1.0), ("3.0.exp", np.exp(3.0)),
])
def test_numbers(text, expected):
    assert value(text) == pytest.approx(expected, rel=1e-15)
    assert value(text).dtype == np.float64


def test_integer_literals_become_floats():
    assert value("[1, 2] / 4").tolist() == [0.25, 0.5]


def test_comments():
    text = "# a comment\nx = 2 # trailing\n// slashes too\ny = x * 3 // trailing\ny # done"
    assert value(text) == 6.0


def test_statements_end_at_newlines_and_semicolons():
    assert value("x = 2; y = 3\nz = x * y; z") == 6.0
    assert value("x = 2;\n\n;y = x + 1;") == 3.0


def test_newlines_inside_brackets_are_ignored():
    text = "m = [\n  [1, 2],\n  [3, 4]\n]\ns = (m\n  .sum\n)\nt = ones(\n2,\n3\n).sum\ns + t"
    assert value(text) == 16.0


def test_names():
    assert value("_x1 = 2\nX_y2 = 3\n_x1 * X_y2") == 6.0


def test_strings_are_paths(tmp_path):
    (tmp_path / "v.json").write_text("[1, 2]")
    r = run('v = load("v.json")\nv.sum', base_dir=tmp_path)
    assert r.tape.nodes[r.output].value == 3.0


# ---------------------------------------------------------- §3 statements


def test_val_binding():
    assert value("val x = 4\nval y = x.sqrt\ny") == 2.0


def test_import_and_given_lines_are_ignored():
    text = "import spire._\nimport vecxt.all.*\ngiven graph: TejVGraph[Double] = TejVGraph[Double]()\nx = 3\nx"
    assert value(text) == 3.0


def test_single_assignment_names_both_places():
    err = error("x = 1\ny = 2\nx = 3")
    span = err.diagnostic.span
    assert (span.line, span.column) == (3, 1)
    assert "`x`" in err.diagnostic.message and "1:1" in err.diagnostic.message


OUTPUT_PROGRAM = "w = [1.0, 2.0]\nloss = (w * w).sum\nother = w.mean\n"


def test_output_is_the_last_statement():
    r = run(OUTPUT_PROGRAM)
    assert r.output_name == "other"
    r = run(OUTPUT_PROGRAM + "w.sum * 10")
    assert r.output_name == "w.sum * 10" and r.tape.nodes[r.output].value == 30.0


def test_output_is_the_backward_receiver_even_before_later_statements():
    r = run(OUTPUT_PROGRAM.replace("other", "loss.backward(w)\nother"))
    assert r.output_name == "loss" and r.tape.nodes[r.output].value == 5.0
    assert r.backward_wrt == ["w"]


def test_of_overrides_everything():
    r = run(OUTPUT_PROGRAM + "loss.backward(w)", of="other")
    assert r.output_name == "other" and r.tape.nodes[r.output].value == 1.5


def test_of_must_name_a_binding():
    err = error(OUTPUT_PROGRAM, of="los")
    assert err.exit_code == 2 and "los" in err.diagnostic.message


@pytest.mark.parametrize("statement", ["loss.backward(w, v)", "loss.backward((w = w, v = v))",
                                       "loss.backward((v = v, w = w))"])
def test_backward_names_are_the_default_wrt(statement):
    text = "w = [1.0, 2.0]\nv = 3.0\nu = 5.0\nloss = (w * v * u).sum\n" + statement
    result = gradients(text)
    assert set(result.gradients) == {"w", "v"}
    np.testing.assert_allclose(result.gradients["w"], [15.0, 15.0])
    assert float(result.gradients["v"]) == 15.0


def test_default_wrt_is_every_input_the_output_depends_on():
    text = "w = [1.0, 2.0]\nunused = 7\nk = 2\nh = w * k\nloss = h.sum + 1"
    r = run(text)
    assert list(r.wrt_ids()) == ["w", "k"]  # not the intermediate h, not the unused input
    assert r.diagnostics.warnings == []


def test_wrt_may_name_an_intermediate():
    result = gradients("w = [1.0, 2.0]\nh = w * 3\nloss = (h * h).sum", ["h", "w"])
    np.testing.assert_allclose(result.gradients["h"], [6.0, 12.0])
    np.testing.assert_allclose(result.gradients["w"], [18.0, 36.0])


def test_unrelated_wrt_gets_zero_and_a_warning_at_its_binding():
    r = run("w = [1.0, 2.0]\nz = [[1, 2], [3, 4]]\nloss = w.sum")
    result = run_gradients(r, ["w", "z"])
    np.testing.assert_array_equal(result.gradients["z"], np.zeros((2, 2)))
    np.testing.assert_array_equal(result.gradients["w"], [1.0, 1.0])
    [warning] = r.diagnostics.warnings
    assert "`z`" in warning.message and "zero" in warning.message
    assert (warning.span.line, warning.span.column) == (2, 1)


def test_unknown_wrt_is_a_usage_error():
    r = run("w = [1.0, 2.0]\nloss = w.sum")
    with pytest.raises(SpireadError) as err:
        run_gradients(r, ["ww"])
    assert err.value.exit_code == 2


def test_gradients_need_a_scalar_output_and_say_how_to_reduce():
    r = run("w = [1.0, 2.0]\nh = w * 2")
    with pytest.raises(SpireadError) as err:
        run_gradients(r, ["w"])
    text = err.value.diagnostic.message + " ".join(err.value.diagnostic.notes)
    assert ".sum" in text or ".mean" in text


# ---------------------------------------------------------- §4 precedence


@pytest.mark.parametrize("text,expected", [
    ("1 + 2 * 3", 7.0), ("10 - 4 - 3", 3.0), ("32 / 4 / 2", 4.0), ("2 * 3 / 4", 1.5),
    ("-3 ** 2", -9.0), ("-(3 ** 2)", -9.0), ("(-3) ** 2", 9.0), ("2 ** 3 ** 2", 512.0), ("(2 ** 3) ** 2", 64.0),
    ("2 ** -1", 0.5), ("- -2", 2.0), ("+2", 2.0), ("-4.0.sqrt", -2.0), ("2 * -3", -6.0),
])
def test_scalar_precedence(text, expected):
    assert value(text) == expected


def test_matmul_binds_tighter_than_times():
    got = value(A + B + C + "a * b @@ c")
    np.testing.assert_allclose(got, a * (b @ c))
    assert not np.allclose(got, (a * b) @ c)
    np.testing.assert_allclose(value(A + B + C + "a @@ b * c"), (a @ b) * c)
    np.testing.assert_allclose(value(A + B + C + "a / b @ c"), a / (b @ c))
    np.testing.assert_allclose(value(A + B + C + "a + b @@ c"), a + b @ c)


def test_matmul_is_left_associative_and_unary_binds_tighter():
    np.testing.assert_allclose(value(A + B + C + "a @@ b @@ c"), (a @ b) @ c)
    np.testing.assert_allclose(value(A + B + "-a @@ b"), (-a) @ b)


def test_power_binds_tighter_than_unary_minus_on_arrays():
    np.testing.assert_allclose(value(A + "-a ** 2"), -(a ** 2))
    np.testing.assert_allclose(value(A + "a.T ** 2"), a.T ** 2)


def test_methods_without_parentheses():
    np.testing.assert_allclose(value(A + "a.exp"), value(A + "a.exp()"))
    np.testing.assert_allclose(value(A + "a.exp.sum"), np.exp(a).sum())


def test_literals():
    np.testing.assert_array_equal(value("[1, 2]"), [1.0, 2.0])
    np.testing.assert_array_equal(value("Array(1, 2)"), [1.0, 2.0])
    np.testing.assert_array_equal(value("[[1, 2], [3, 4]]"), a)
    np.testing.assert_array_equal(value("[[1, 2, 3]]"), [[1.0, 2.0, 3.0]])


# -------------------------------------------------------------- §6 methods


SELECTIONS = ["a[(0, 0), (1, 1)]", "a(Array((0, 0), (1, 1)))", "a.select((0, 0), (1, 1))",
              "a.select([0, 1], [0, 1])", "a.select(Array(0, 1), Array(0, 1))", "(a)(Array((0, 0), (1, 1)))"]


@pytest.mark.parametrize("form", SELECTIONS)
def test_selection_forms_keep_the_shape_and_zero_the_rest(form):
    np.testing.assert_array_equal(value(A + form), [[1.0, 0.0], [0.0, 4.0]])
    g = gradients(A + f"loss = ({form} * [[1, 2], [3, 4]]).sum", ["a"]).gradients["a"]
    np.testing.assert_array_equal(g, [[1.0, 0.0], [0.0, 4.0]])  # gradient flows only to the chosen entries


def test_selection_of_a_parenthesised_method_result():
    np.testing.assert_array_equal(value(A + "(a.T)(Array((0, 1)))"), [[0.0, 3.0], [0.0, 0.0]])


@pytest.mark.parametrize("form,expected", [
    ("a.arrange((1, 0), (0, 1), (1, 0))", [3.0, 2.0, 3.0]),
    ("a.arrange([1, 0], [0, 1])", [3.0, 2.0]),
])
def test_arrange_gathers_in_order(form, expected):
    np.testing.assert_array_equal(value(A + form), expected)


def test_arrange_gradient_adds_repeated_entries():
    g = gradients(A + "loss = a.arrange((1, 0), (0, 1), (1, 0)).sum", ["a"]).gradients["a"]
    np.testing.assert_array_equal(g, [[0.0, 1.0], [2.0, 0.0]])


def test_single_entries():
    assert value(A + "a[1, 0]") == 3.0
    assert value("v = [5, 6, 7]\nv[2]") == 7.0
    np.testing.assert_array_equal(value(A + "a.row(1)"), [3.0, 4.0])
    np.testing.assert_array_equal(value(A + "a.col(1)"), [2.0, 4.0])


@pytest.mark.parametrize("text", [A + "a[2, 0]", A + "a.row(5)", A + "a.col(-3)", "v = [1, 2]\nv[2]",
                                  A + "a[(0, 0), (0, 2)]", A + "a.arrange((3, 0))"])
def test_index_out_of_range_names_index_and_shape(text):
    err = error(text)
    message = err.diagnostic.message
    assert "out of range" in message and ("2×2" in message or "vector of 2" in message)
    assert err.diagnostic.span.line == text.count("\n") + 1


@pytest.mark.parametrize("text", [A + "a.row(0.5)", A + "a[0.5, 1]", A + "a.select([0.5], [1])"])
def test_indices_must_be_whole_numbers(text):
    assert "whole" in error(text).diagnostic.message


def test_select_needs_equal_lengths():
    assert "length" in error(A + "a.select([0, 1], [1])").diagnostic.message


@pytest.mark.parametrize("reduction,expected", [
    ("sum", [3.0, 7.0]), ("mean", [1.5, 3.5]), ("product", [2.0, 12.0]),
    ("ReductionOps.Sum", [3.0, 7.0]), ("ReductionOps.Mean", [1.5, 3.5]), ("ReductionOps.Product", [2.0, 12.0]),
])
def test_map_rows_to_scalar(reduction, expected):
    np.testing.assert_array_equal(value(A + f"a.mapRowsToScalar({reduction})"), expected)


@pytest.mark.parametrize("british,american", [("normaliseRowsL1", "normalizeRowsL1"),
                                              ("normaliseRowsL2", "normalizeRowsL2")])
def test_normalise_spellings(british, american):
    np.testing.assert_array_equal(value(A + f"a.{british}"), value(A + f"a.{american}"))
    expected = a / np.abs(a).sum(axis=1, keepdims=True) if british.endswith("L1") \
        else a / np.linalg.norm(a, axis=1, keepdims=True)
    np.testing.assert_allclose(value(A + f"a.{british}"), expected, rtol=1e-15)


def test_row_functions_on_a_vector_treat_it_as_one_row():
    np.testing.assert_allclose(value("v = [1.0, 3.0]\nv.normaliseRowsL1"), [0.25, 0.75])
    np.testing.assert_allclose(value("v = [0.0, 0.0]\nv.softmaxRows"), [0.5, 0.5])


def test_pow_takes_a_number_or_a_scalar_value():
    np.testing.assert_array_equal(value(A + "a.pow(2)"), a ** 2)
    np.testing.assert_array_equal(value(A + "p = 3\na.pow(p)"), a ** 3)
    np.testing.assert_array_equal(value(A + "a ** (1 + 1)"), a ** 2)


def test_seed_spellings():
    np.testing.assert_array_equal(value(A + "a.div(2)"), a / 2)
    np.testing.assert_array_equal(value(A + "a.tej"), a)
    np.testing.assert_array_equal(value(A + "a.T"), a.T)
    np.testing.assert_array_equal(value(A + "a.transpose"), a.T)


# ------------------------------------------------------------ §7 functions


def test_matrix_from_rows_and_columns():
    np.testing.assert_array_equal(value("Matrix.fromRows(Array(1, 2), Array(3, 4))"), a)
    np.testing.assert_array_equal(value("Matrix.fromRows([1, 2], [3, 4])"), a)
    np.testing.assert_array_equal(value("Matrix.fromColumns(Array(1, 3), [2, 4])"), a)


@pytest.mark.parametrize("text,expected", [
    ("zeros(2, 3)", np.zeros((2, 3))), ("ones(2, 3)", np.ones((2, 3))), ("zeros(3)", np.zeros(3)),
    ("ones(4)", np.ones(4)), ("full(2, 3, 7.5)", np.full((2, 3), 7.5)), ("eye(3)", np.eye(3)),
    ("arange(4)", np.arange(4.0)), ("onehot([0, 2, 1], 3)", np.eye(3)[[0, 2, 1]]),
    ("onehot(Array(1, 1), 2)", np.array([[0.0, 1.0], [0.0, 1.0]])),
])
def test_constant_functions(text, expected):
    got = value(text)
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("seed", [0, 1, 12345])
def test_random_functions_match_numpy_default_rng(seed):
    np.testing.assert_array_equal(value(f"randn(3, 2, seed={seed})"),
                                  np.random.default_rng(seed).standard_normal((3, 2)))
    np.testing.assert_array_equal(value(f"rand(2, 4, seed={seed})"), np.random.default_rng(seed).random((2, 4)))
    np.testing.assert_array_equal(value(f"randn(5, seed={seed})"), np.random.default_rng(seed).standard_normal(5))


def test_random_default_seed_is_zero_and_reproducible():
    np.testing.assert_array_equal(value("randn(2, 2)"), np.random.default_rng(0).standard_normal((2, 2)))
    np.testing.assert_array_equal(value("rand(3)"), value("rand(3)"))


def test_sizes():
    text = "m = zeros(2, 3)\n"
    assert value(text + "rows(m)") == 2.0
    assert value(text + "cols(m)") == 3.0
    assert value(text + "size(m)") == 6.0
    assert value("size([1, 2, 3, 4])") == 4.0
    assert value(text + "ones(rows(m), cols(m)).sum") == 6.0


@pytest.mark.parametrize("name,content,expected", [
    ("d.csv", "x,y\n1,2\n3,4\n", [[1.0, 2.0], [3.0, 4.0]]),       # a header is skipped
    ("d.csv", "1,2\n3,4\n", [[1.0, 2.0], [3.0, 4.0]]),
    ("d.csv", "value\n1.5\n2.5\n", [1.5, 2.5]),                   # one column gives a vector
    ("d.tsv", "a\tb\n1\t2\n3\t4\n", [[1.0, 2.0], [3.0, 4.0]]),
    ("d.txt", "1 2\n3 4\n", [[1.0, 2.0], [3.0, 4.0]]),
    ("d.json", "[[1, 2], [3, 4]]", [[1.0, 2.0], [3.0, 4.0]]),
    ("d.json", "[1, 2, 3]", [1.0, 2.0, 3.0]),
])
def test_load_text_formats(tmp_path, name, content, expected):
    (tmp_path / name).write_text(content)
    np.testing.assert_array_equal(value(f'load("{name}")', base_dir=tmp_path), expected)


def test_load_npy(tmp_path):
    data = np.random.default_rng(1).normal(size=(3, 2))
    np.save(tmp_path / "w.npy", data)
    np.testing.assert_array_equal(value('load("w.npy")', base_dir=tmp_path), data)


def test_load_is_relative_to_the_program_file(tmp_path, monkeypatch):
    folder = tmp_path / "project"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "x.json").write_text(json.dumps([[1, 2], [3, 4]]))
    (folder / "model.ad").write_text('x = load("data/x.json")\nloss = x.sum\n')
    monkeypatch.chdir(tmp_path)  # not the program's folder
    r = Program.open("project/model.ad").run()
    assert r.tape.nodes[r.output].value == 10.0


def test_load_of_a_missing_file_is_a_located_error(tmp_path):
    err = error('x = load("nope.csv")', base_dir=tmp_path)
    assert "nope.csv" in err.diagnostic.message and err.diagnostic.span.line == 1


# ------------------------------------------------------------ §5 arithmetic


def test_constants_and_inputs():
    """A bound constant is an input leaf; an expression of inputs is not."""
    r = run("w = [1.0, 2.0]\nk = 2 * 3\nh = w * k\nloss = h.sum")
    kinds = {name: r.node(name).kind for name in r.bindings}
    assert kinds == {"w": "input", "k": "input", "h": "op", "loss": "op"}
    assert r.node("k").value == 6.0


@pytest.mark.parametrize("text,words", [
    ("zeros(2.5)", "whole"), ("ones(2, 1.5)", "whole"), ("onehot([0.5, 1], 3)", "whole"),
    ("onehot([0, 1], 2.5)", "whole"), ("onehot([0, 3], 3)", "out of range"), ("eye(-1)", "negative"),
])
def test_sizes_and_labels_must_be_whole_numbers_in_range(text, words):
    err = error(text)
    assert words in err.diagnostic.message and err.diagnostic.span.line == 1


def test_matmul_mismatch_names_both_shapes_at_the_operator():
    err = error("a = [[1, 2], [3, 4]]\nb = [[1, 2, 3]]\nc = a @@ b")
    assert "2×2" in err.diagnostic.message and "1×3" in err.diagnostic.message
    assert (err.diagnostic.span.line, err.diagnostic.span.column) == (3, 7)


def test_a_vector_takes_one_position():
    assert "1 position" in error("v = [1, 2]\nv[0, 1]").diagnostic.message


def test_non_finite_warning_counts_and_locates():
    r = run("x = [1.0, 0.0, -1.0, 0.0]\ny = x.log")
    [warning] = r.diagnostics.warnings
    assert "3 of 4 entries" in warning.message and "first at [1]" in warning.message
    assert (warning.span.line, warning.span.column) == (2, 7)


def test_only_the_first_op_to_make_a_non_finite_value_warns():
    r = run("x = [1.0, 0.0]\ny = x.log * 2 + 1\nz = y.exp")
    assert len(r.diagnostics.warnings) == 1


def test_load_txt_with_a_header(tmp_path):
    (tmp_path / "d.txt").write_text("a b\n1 2\n3 4\n")
    np.testing.assert_array_equal(value('load("d.txt")', base_dir=tmp_path), [[1.0, 2.0], [3.0, 4.0]])


@pytest.mark.parametrize("statement, name", [("(x * x).sum", "(x * x).sum"), ("((x)).exp.sum", "((x)).exp.sum"),
                                             ("(x + 1)[0]", "(x + 1)[0]"), ("-(x).sum", "-(x).sum")])
def test_an_unbound_output_is_named_as_written_brackets_and_all(statement, name):
    r = run(f"x = [1.0, 2.0]\n{statement}\n")
    assert r.output_name == name


# ------------------------------------------ names given twice, calls, `def`s

def snippet(text: str, span) -> str:
    return text[span.start:span.end]


@pytest.mark.parametrize("text, first, second, words", [
    ("w = 1.0\nb = 2.0\nloss = w * b\ng = loss.backward((a = w, a = b))", "a = w", "a = b", "key `a` is given twice"),
    ("w = 1.0\nb = 2.0\nloss = w * b\nloss.backward((a = w, b = b, a = b))", "a = w", "a = b", "key `a` is given twice"),
    ("w = 1.0\nloss = w * w\ng = loss.backward(w, w)", "w", "w", "key `w` twice"),
    ("w = 1.0\nb = 2.0\nloss = w * b\ng = loss.backward(b, (b = w))", "b", "b = w", "key `b` twice"),
    ("x = randn(2, 2, seed=1, seed=2)", "seed=1", "seed=2", "argument `seed` is given twice"),
    ("x = randn(2, seed=1, seed=1)", "seed=1", "seed=1", "argument `seed` is given twice"),
    ("def f(x, y, x) = x * y\nf(1, 2, 3)", "x", "x", "`f` has two parameters named `x`"),
    ("def f(x) = { val s = x\n val s = 2\n s }\nf(1)", "s", "s", "`s` is already bound in this block"),
])
def test_a_name_given_twice_is_an_error_at_the_second_pointing_at_the_first(text, first, second, words):
    err = error(text).diagnostic
    assert words in err.message
    assert snippet(text, err.span) == second
    (first_span, _), = err.related
    assert snippet(text, first_span) == first and first_span.start < err.span.start


def test_distinct_keys_still_name_each_gradient():
    r = run("w = 3.0\nb = 2.0\nloss = w * w * b\ng = loss.backward((a = w, c = b))")
    assert r.node("g.a").value == 12.0 and r.node("g.c").value == 9.0   # ∂(w²b)/∂w = 2wb, ∂/∂b = w²


def test_a_chain_of_a_thousand_defs_inlines_without_recursion():
    n = 1000
    text = "def f0(x) = x + 1\n" + "".join(f"def f{k}(x) = f{k - 1}(x) * 2 - x\n" for k in range(1, n))
    # f_k(x) = 2 f_{k-1}(x) - x, f_0 = x + 1: f_k(x) = x + 2^k, so ∂f/∂x = 1.
    r = run(text + f"x = 0.5\ny = f{n - 1}(x)")
    assert r.value == 0.5 + 2.0 ** (n - 1)
    assert gradients(text + f"x = 0.5\ny = f{n - 1}(x) / 2 ** {n - 1}").gradients["x"] == pytest.approx(2.0 ** -(n - 1))


def test_a_chain_of_defs_through_map_inlines_without_recursion():
    n = 500
    text = "def f0(v) = v\n" + "".join(f"def f{k}(v) = f{k - 1}(v).map(z => z + 1)\n" for k in range(1, n))
    assert value(text + f"v = [1.0, 2.0]\nf{n - 1}(v)").tolist() == [float(n), float(n + 1)]


def test_the_same_call_twice_is_computed_once():
    """40 defs each calling the previous twice: 2^40 inlinings if nothing were
    shared. The tape grows by a handful of ops per def (checked at 12 levels
    first, so that without sharing this fails rather than hangs)."""
    for n in (12, 40):
        text = "def f0(x) = x * 1.5\n" + "".join(f"def f{k}(x) = f{k - 1}(x) + f{k - 1}(x)\n" for k in range(1, n))
        r = run(text + f"x = 2.0\ny = f{n - 1}(x)")
        assert len(r.tape.nodes) < 5 * n
        assert r.value == 2.0 * 1.5 * 2.0 ** (n - 1)
        assert gradients(text + f"x = 2.0\ny = f{n - 1}(x)").gradients["x"] == 1.5 * 2.0 ** (n - 1)


def test_shared_calls_stay_within_one_statement_and_one_set_of_values():
    text = "def sq(x) = x * x\nx = 3.0\nb = 2.0\na = sq(x)\nc = sq(x)\nd = sq(b) + sq(x)\nloss = a * c"
    r = run(text)
    assert r.bindings["a"] != r.bindings["c"]               # two statements, two values
    assert r.node("d").value == 13.0
    assert gradients(text, wrt=["a"]).gradients["a"] == 9.0          # ∂(a·c)/∂a = c, c its own value


def test_an_error_inside_inlined_calls_leaves_no_call_open():
    from spiread_cli.diagnostics import Source
    from spiread_cli.interpreter import Interpreter
    from spiread_cli.syntax import parse
    source = Source("t.ad", "def g(x) = { val y = x * 2\n y @@ [1.0, 2.0, 3.0] }\ndef f(x) = g(x) + 1\n"
                            "v = [1.0, 2.0].map(z => z)\nw = f(v)")
    interpreter = Interpreter(source)
    with pytest.raises(SpireadError, match="inner sizes differ") as caught:
        interpreter.run(parse(source))
    # While the error (and so its traceback and the evaluator's stack) lives, as in a caller's `except`:
    assert caught.value and interpreter.scope is None and interpreter.inlining == []


@pytest.mark.parametrize("text, expected", [
    ("def mk(a) = (x => x * a)\nmk(3.0)(2.0)", 6.0),
    ("def mk(a) = (x => x * a)\nf = mk(3.0)\nf(2.0)", 6.0),
    ("(x => x * 2)(3.0)", 6.0),
    ("def mk(a) = { val k = a + 1\n (x => x * k) }\ndef twice(g, x) = g(g(x))\ntwice(mk(1.0), 5.0)", 20.0),
])
def test_a_function_a_call_returns_can_be_called(text, expected):
    assert value(text) == expected


def test_gradient_through_a_returned_function():
    text = "def mk(a) = (x => x * x * a)\nw = 3.0\nloss = mk(w)(2.0)"
    assert gradients(text).gradients["w"] == 4.0                     # ∂(x²w)/∂w = x²
    assert error("def mk(a) = (x => x * a)\nmk(3.0)(2.0, 1.0)").diagnostic.message == \
        "`(x => x * a)` takes 1 argument, got 2"


def test_a_jet_is_refused_as_wrt_at_its_binding():
    text = "given jd: JetDim = JetDim(1)\nx = Jet(2.0) + Jet.h[Double](0)\ny = x * x\nw = 3.0\nz = w * w"
    r = run(text)
    assert r.jets[r.bindings["y"]].tolist() == [4.0]       # the Jet's own part: ∂(x²)/∂x = 2x
    with pytest.raises(SpireadError) as caught:
        run_gradients(run(text, of="y"), ["x"])
    err = caught.value.diagnostic
    assert "`x` is a Jet" in err.message and err.span.line == 2
    assert "`x = 2.0`" in err.notes[-1]
    assert run_gradients(run(text, of="z"), ["w"]).gradients["w"] == 6.0


# ---------------------------------------------- hints at the right spelling

def _methods_without_a_function_form():
    from spiread_cli.builtin_functions import FUNCTIONS
    from spiread_cli.builtin_methods import METHOD_SUGAR
    from spiread_cli.ops import METHODS
    return sorted(name for name in {*METHODS, *METHOD_SUGAR} if name not in FUNCTIONS)


@pytest.mark.parametrize("name", _methods_without_a_function_form())
def test_a_method_called_as_a_function_is_spelled_as_a_method(name):
    err = error(f"x = [[1.0, 2.0], [3.0, 4.0]]\ny = {name}(x + 1)").diagnostic
    assert err.message == f"unknown function `{name}`"
    assert f"`(x + 1).{name}`" in err.notes[0]
    assert "reserved" not in err.notes[0]


@pytest.mark.parametrize("name", ["exp", "sum", "mean", "T", "sigmoid", "softmaxRows", "value"])
def test_the_spelling_a_hint_gives_runs(name):
    text = "x = [[1.0, 2.0], [3.0, 4.0]]\ny = {}"
    spelled = error(text.format(f"{name}(x + 1)")).diagnostic.notes[0].rsplit("`", 2)[1]
    assert np.array_equal(value(text.format(spelled)), value(text.format(f"(x + 1).{name}")))


def test_a_method_with_arguments_is_spelled_with_them():
    err = error("x = [1.0, 2.0]\ny = pow(-x, 2)").diagnostic
    assert err.notes == ("`pow` is a method: it follows its value, `(-x).pow(2)`",)
    assert value("x = [1.0, 2.0]\ny = (-x).pow(2)").tolist() == [1.0, 4.0]
    assert "`exp` is a method" in error("x = [1.0]\ny = x.map(exp)").diagnostic.notes[0]


@pytest.mark.parametrize("text", ["y = zeros", "y = [1.0].map(eye)", "y = Matrix.fromRows"])
def test_a_function_without_arguments_says_to_call_it(text):
    assert "is a function; call it with arguments" in error(text).diagnostic.message


@pytest.mark.parametrize("name", ["rows", "cols", "size"])
def test_a_function_written_as_a_method_is_spelled_as_a_function(name):
    err = error(f"x = [[1.0, 2.0]]\nn = x.{name}").diagnostic
    assert f"`{name}(x)`" in err.notes[0]
    assert value(f"x = [[1.0, 2.0]]\nn = {name}(x)") == {"rows": 1, "cols": 2, "size": 2}[name]


@pytest.mark.parametrize("use", ["y = sq(2.0)", "y = [1.0, 2.0].map(sq)", "def g(x) = sq(x) + 1\ny = g(2.0)"])
def test_a_def_used_above_its_definition_says_where_it_is(use):
    text = f"x = 1.0\n{use}\ndef sq(x: Double) = x * x"
    err = error(text).diagnostic
    line = len(use.splitlines()) + 2
    assert err.message == f"`sq` is defined below, on line {line}"
    at, label = err.related[0]  # (then the call it was met in, for `g`'s body: test_contract_gaps)
    assert (at.line, label) == (line, "defined here")


def test_a_value_used_as_a_function_above_its_binding_says_where_it_is():
    assert error("y = f(2.0)\nf = 3").diagnostic.message == "`f` is used before it is bound (at 2:1)"


@pytest.mark.parametrize("word", ["val", "def", "given", "import"])
def test_reserved_words_are_named_where_misused_and_the_way_out_works(word):
    misuse = "import + 1" if word == "import" else f"{word} = 3"
    for text in (misuse, f"y = {word} + 1"):
        notes = error(text).diagnostic.notes
        assert any(f"`{word}` is a reserved word" in n and f"write `val {word} = …`" in n for n in notes), text
    assert value(f"val {word} = 3\ny = {word} + 1") == 4.0


def test_reserved_words_are_listed_in_the_language_page():
    from pathlib import Path
    from spiread_cli.syntax_errors import RESERVED_WORDS
    page = (Path(__file__).parent.parent / "docs" / "language.md").read_text("utf-8")
    listed = page.split("**Reserved words:**", 1)[1].split(".", 1)[0]
    assert set(re.findall(r"`(\w+)`", listed)) == set(RESERVED_WORDS)


def test_import_lines_name_what_they_import():
    assert value("import spire._\nimport vecxt.all.{*, given}\nimport\ta.b as c\nx = 2\nx") == 2.0
    assert "not an import line" in error("import\nx = 1").diagnostic.message


def test_printmat_text_is_not_a_path():
    err = error("x = [1.0, 2.0]\nw = (x * 3).printMat").diagnostic
    assert "load(" not in " ".join(err.notes) and "compute with `(x * 3)` itself" in err.notes[0]
    assert "load(\"w.csv\")" in error('x = "w.csv" * 2').diagnostic.notes[0]
    assert "takes a path in quotes" in error("x = [1.0]\ny = load(x.printMat)").diagnostic.message


# ------------------------------------------------ numbers beyond float64

@given(st.lists(st.floats(-1e300, 1e300), min_size=1, max_size=6), st.data())
def test_a_literal_beyond_float64_is_an_error_at_that_number(entries, data):
    entries = [repr(e) for e in entries]
    big = data.draw(st.sampled_from(["1e309", "2.5E+400", "17976931348623159" + "0" * 292, ".9e310"]))
    at = data.draw(st.integers(0, len(entries)))
    entries.insert(at, ("-" if data.draw(st.booleans()) else "") + big)
    gap = data.draw(st.sampled_from([", ", ",\n  ", " , # c\n"]))
    for literal in (f"[{gap.join(entries)}]", f"[[1, 2], [{gap.join(entries)}]]", big):
        text = f"x = 1\nw = {literal}\n"
        err = error(text).diagnostic
        assert snippet(text, err.span) == big, literal
        assert err.message == f"the number `{big}` is {BEYOND_FLOAT64}"
        assert (err.span.line, err.span.column) == _line_and_column(text, err.span.start)


def _line_and_column(text: str, offset: int) -> tuple[int, int]:
    before = text[:offset]
    return before.count("\n") + 1, offset - (before.rfind("\n") + 1) + 1


def test_numbers_beyond_float64_say_the_same_in_a_program_a_data_file_and_set(tmp_path):
    (tmp_path / "w.json").write_text("[1, 1e400]")
    (tmp_path / "w.csv").write_text("a,b\n1,inf\n2,-1e400\n")
    (tmp_path / "inf.txt").write_text("1 -inf\n2 Infinity\n")
    assert "`[1]` is 1e400, " + BEYOND_FLOAT64 in error('w = load("w.json")', base_dir=tmp_path).diagnostic.message
    assert "line 3, column 2: `-1e400` is " + BEYOND_FLOAT64 in \
        error('w = load("w.csv")', base_dir=tmp_path).diagnostic.message
    assert value('w = load("inf.txt")', base_dir=tmp_path).tolist() == [[1, -np.inf], [2, np.inf]]  # written inf
    with pytest.raises(SpireadError) as caught:
        parse_overrides(["w=[1, 1e400]"])
    assert BEYOND_FLOAT64 in caught.value.diagnostic.message
    assert caught.value.exit_code == 2 and "`--set w=[1, 1e400]`" in caught.value.diagnostic.message
    assert value("x = 1e-400") == 0.0 and value("x = 1.7976931348623157e308") == np.finfo(float).max
