"""The `.ad` language, LANGUAGE.md §2–7, through the library API."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import gradients, run, value
from spiread_cli import api
from spiread_cli.diagnostics import SpireadError

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
    result = api.gradients(r, ["w", "z"])
    np.testing.assert_array_equal(result.gradients["z"], np.zeros((2, 2)))
    np.testing.assert_array_equal(result.gradients["w"], [1.0, 1.0])
    [warning] = r.diagnostics.warnings
    assert "`z`" in warning.message and "zero" in warning.message
    assert (warning.span.line, warning.span.column) == (2, 1)


def test_unknown_wrt_is_a_usage_error():
    r = run("w = [1.0, 2.0]\nloss = w.sum")
    with pytest.raises(SpireadError) as err:
        api.gradients(r, ["ww"])
    assert err.value.exit_code == 2


def test_gradients_need_a_scalar_output_and_say_how_to_reduce():
    r = run("w = [1.0, 2.0]\nh = w * 2")
    with pytest.raises(SpireadError) as err:
        api.gradients(r, ["w"])
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
    r = api.run_file("project/model.ad")
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
