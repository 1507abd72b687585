"""An exported function writes a result into the array of a large operand
that dies at its line (`Export.update`: `a += b` where a is read by nothing
after, as a step written by hand works in place), and never into an array
that is an argument, a constant, a result, or that a view read later shares:
the numbers are spiread's, on numpy and PyTorch, and no argument changes."""

from __future__ import annotations

import re

import numpy as np
import pytest

from spiread_cli.diagnostics import Source
from spiread_cli.program import Program
from test_export import check_program, load_module

torch = pytest.importorskip("torch")

N = 130  # 16,900 entries: past export_python.FREED_ENTRIES, so intermediates are large
GIVEN = f"A = randn({N}, {N}, seed=1) / 10\nB = randn({N}, {N}, seed=2) / 10\nc = randn({N}, seed=3)\n"


@pytest.mark.parametrize("body, shown, never", [
    # each arithmetic op into its first operand, and + and * into their second (they commute)
    ("loss = ((A @@ B + A) * (A @@ B - B) / 3.0).sum", r"(in place on numpy)", "A|B"),
    ("loss = (B + A @@ B).tanh.sum + (c * (A @@ B)).sum", r"(in place on numpy)", "A|B|c"),
    ("loss = ((A @@ B).tanh * B).sum", r"(in place on numpy)", "A|B"),  # tanh's value, which PyTorch's autograd keeps
    # − and / into their dying second operand
    ("loss = (2.0 - A @@ B).exp.sum", r"= _into\(np\.subtract, 2\.0, (matmul_\d+), \1\)  #", "A|B"),
    ("loss = (2.0 / (A @@ B + 3.0)).sum", r"= _into\(np\.divide, \(-2\.0\), (square_\d+), \1\)  # p\.ad:4:13 ∂\(/\)/∂b", "A|B"),
    # C's transpose, made before C's last use as an operand, is read after it: C is never written
    ("C = A @@ B\nT = C.T\nD = C + 1.0\nloss = (D * T).sum", r"D = C \+ 1\.0  #", "A|B|C"),
    ("C = A @@ B\nloss = ((C + C.T) * A).sum", r"= C \+ transpose_\d+  #", "A|B|C"),
    # the mean log-likelihood's derivative adds count / n at its picks into the array it scales (`addPairs`),
    # once a position: each row picked once, and pairs picked two or three times
    ("loss = -(A @@ B).logSoftmaxRows.arrange(arange(130), arange(130) * 7 % 130).mean",
     r"= _add_flat\((mul_\d+), c_\d+, picks_\d+, True, out=\1\)  #", "A|B"),
    ("loss = -(A @@ B).logSoftmaxRows.arrange(arange(130) % 50, arange(130) % 2).mean",
     r"= _add_flat\((mul_\d+), c_\d+, picks_\d+, True, out=\1\)  #", "A|B"),
    # nor an array read again after the line (C, until its last use), or an argument (A, B)
    ("C = A @@ B\nloss = (C * A).sum + (C * B).sum", r"= C \* A  #", "A|B"),
])
def test_results_written_in_place_are_spiread_s_and_leave_the_arguments(body, shown, never, tmp_path):
    run = Program.parse(Source("p.ad", GIVEN + body + "\n")).run()
    check_program(run, tmp_path, ["A", "B"])  # value, gradients and H·v on numpy, PyTorch and onnxruntime
    text = (tmp_path / "exported.py").read_text()
    function = text[text.index("def value_and_grad"):text.index("def hvp")]
    assert re.search(re.escape(shown) if shown == "(in place on numpy)" else shown, function), function
    assert not re.search(rf"^ +\w+ = ({never})$", text, re.MULTILINE), f"one of {never} was written"
    module = load_module(tmp_path / "exported.py")
    for convert in (np.asarray, torch.from_numpy):
        given = {name: convert(value.copy()) for name, value in module.inputs().items()}
        kept = {name: np.array(value) for name, value in given.items()}
        module.value_and_grad(**given)
        module.hvp({"A": np.ones((N, N))} if convert is np.asarray else {"A": torch.ones(N, N, dtype=torch.float64)},
                   **given)
        for name, value in given.items():
            np.testing.assert_array_equal(np.asarray(value), kept[name], err_msg=f"{name} was written")
    # PyTorch's autograd differentiates the exported value: nothing it kept is written in place
    A = torch.from_numpy(module.inputs()["A"].copy()).requires_grad_()
    module.value(A=A).backward()
    np.testing.assert_allclose(A.grad.numpy(), module.value_and_grad()[1]["A"], rtol=1e-10, atol=1e-10)


def test_an_operand_the_result_is_larger_than_does_not_hold_it(tmp_path):
    """x · 2 (1 × 20,000) dies at its sum with Y (2 × 20,000): the sum is a
    new array, and the product with Y is written into the sum."""
    program = "x = randn(1, 20000, seed=1)\nY = randn(2, 20000, seed=2)\nloss = ((x * 2.0 + Y) * Y).sum\n"
    check_program(Program.parse(Source("p.ad", program)).run(), tmp_path, ["x", "Y"])
    text = (tmp_path / "exported.py").read_text()
    assert re.search(r"= mul_\d+ \+ Y  #", text) and re.search(r"= _into\(np\.multiply, (add_\d+), Y, \1\)", text)


@pytest.mark.parametrize("body", [
    "S = A.softmaxRows\nL = A.logSoftmaxRows\nloss = (S * B).sum + (L * B).sum + (A.softmaxRows * A).sum",
    "S = A.softmaxRows\nloss = (S * S * B).sum + (A.logSoftmaxRows * B).sum",
    "loss = ((A * 2.0).softmaxRows * B).sum + ((A * 2.0).softmaxRows.tanh).sum",
    "S = (A @@ B.T).softmaxRows\nloss = (S.logSoftmaxRows * (A @@ B.T)).sum + (S.softmaxRows * S).sum",
])
def test_the_softmax_takes_over_its_shared_exponentials_only_where_it_reads_them_last(body, tmp_path):
    """Softmax ops of one matrix read one `_exp_rows` line; the last reader
    divides in place, an earlier one makes a new array."""
    given = "A = randn(6, 5, seed=1)\nB = randn(6, 5, seed=2)\n"
    check_program(Program.parse(Source("p.ad", given + body + "\n")).run(), tmp_path, ["A"])
