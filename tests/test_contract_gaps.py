"""LANGUAGE.md read again by a stranger, line by line: the statements the
rest of the suite did not yet hold spiread to, through the real `spiread`
binary (few processes, many lines of the contract each)."""

from __future__ import annotations

import pytest

from conftest import spiread

# `sqrt`'s derivative is inf at 0: a warning in every command that
# differentiates, an error under --strict.
SQRT_AT_ZERO = "w = [1.0, 0.0]\nr = w.sqrt * 2\nloss = r.sum\n"


@pytest.mark.parametrize("args, written", [
    (["jacobian", "--of", "r", "--wrt", "w", "--out", "J.npz"], "J.npz"),
    (["jacobian", "--of", "r", "--wrt", "w", "--sparse", "--out", "J.npz"], "J.npz"),
    (["hessian", "--wrt", "w", "--sparse", "--out", "H.npz"], "H.npz"),
    (["export", "--to", "python", "-o", "m.py"], "m.py"),
    (["export", "--to", "onnx", "-o", "m.onnx"], "m.onnx"),
])
def test_a_strict_error_leaves_no_output_file(tmp_path, args, written):
    # §8: "Output files (--save, --out) are written whole or not at all" and a
    # --strict warning is an error (exit 1). export wrote its module, then
    # failed on the warning its gradient had raised.
    (tmp_path / "f.ad").write_text(SQRT_AT_ZERO)
    done = spiread(args[0], "f.ad", *args[1:], "--strict", cwd=tmp_path)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith("f.ad:2:7: error: the derivative of `sqrt` gave inf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.ad"]
    relaxed = spiread(args[0], "f.ad", *args[1:], cwd=tmp_path)  # without --strict: a warning, and the file
    assert relaxed.returncode == 0 and "f.ad:2:7: warning: the derivative of `sqrt` gave inf" in relaxed.stderr
    assert (tmp_path / written).is_file()
