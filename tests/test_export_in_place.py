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
    ("loss = ((A @@ B + A) * (A @@ B - B) / 3.0).sum", r"(in place)", "A|B"),
    ("loss = (B + A @@ B).tanh.sum + (c * (A @@ B)).sum", r"(in place)", "A|B|c"),
    # − into its dying second operand through a helper (numpy's out=); / of one is a new array
    ("loss = (2.0 - A @@ B).exp.sum", r"= _subtract_into\(2\.0, matmul_\d+\)  #", "A|B"),
    ("loss = (2.0 / (A @@ B + 3.0)).sum", r"= 2\.0 / add_\d+  #", "A|B"),
    # C's transpose, made before C's last use as an operand, is read after it: C is never written
    ("C = A @@ B\nT = C.T\nD = C + 1.0\nloss = (D * T).sum", r"D = C \+ 1\.0  #", "A|B|C"),
    ("C = A @@ B\nloss = ((C + C.T) * A).sum", r"= C \+ transpose_\d+  #", "A|B|C"),
    # nor an array read again after the line (C, until its last use), or an argument (A, B)
    ("C = A @@ B\nloss = (C * A).sum + (C * B).sum", r"= C \* A  #", "A|B"),
])
def test_results_written_in_place_are_spiread_s_and_leave_the_arguments(body, shown, never, tmp_path):
    run = Program.parse(Source("p.ad", GIVEN + body + "\n")).run()
    check_program(run, tmp_path, ["A", "B"])  # value, gradients and H·v on numpy, PyTorch and onnxruntime
    text = (tmp_path / "exported.py").read_text()
    function = text[text.index("def value_and_grad"):text.index("def hvp")]
    assert re.search(re.escape(shown) if shown == "(in place)" else shown, function), function
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
