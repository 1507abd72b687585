"""spireAD's pages as they stand (LANGUAGE.md §3, §9): each is an example
file, run through the real `spiread` binary, with exactly what it prints."""

from __future__ import annotations

import numpy as np

from conftest import EXAMPLES, spiread, strict_json

WEIGHTS = np.array([[0.1, 0.05], [0.2, 0.1]])
GRADIENT = np.array([[-0.734299, 0.734299], [-1.136785, 1.136785]])  # the page's printed gradient


def test_backward_mode_page_prints_weights_gradient_and_update():
    done = spiread("eval", EXAMPLES / "backward_mode.ad")
    assert done.returncode == 0 and done.stderr == ""
    printed = done.stdout.split("\ndata ")[0]
    assert printed == ("[[0.1  0.05]\n"
                       " [0.2  0.1 ]]\n"
                       "[[-0.734299  0.734299]\n"
                       " [-1.136785  1.136785]]\n"
                       "[[ 0.17343  -0.02343 ]\n"
                       " [ 0.313679 -0.013679]]")
    assert done.stdout.rstrip().endswith("output loss  scalar  0.5183549628810483")


def test_backward_mode_page_gradient_and_update_as_json():
    doc = strict_json(spiread("eval", EXAMPLES / "backward_mode.ad", "--format", "json").stdout)
    gradient = np.array(doc["values"]["gradient.weights"]["value"])
    np.testing.assert_allclose(gradient, GRADIENT, atol=5e-7)
    np.testing.assert_allclose(doc["values"]["updated"]["value"], WEIGHTS - 0.1 * gradient, rtol=1e-15)
    assert doc["output"] == "loss" and doc["values"]["loss"]["value"] == 0.5183549628810483
    assert len(doc["printed"]) == 3 and doc["printed"][1] == "[[-0.734299  0.734299]\n [-1.136785  1.136785]]"


def test_backward_mode_page_grad_uses_the_declared_output_and_wrt():
    doc = strict_json(spiread("grad", EXAMPLES / "backward_mode.ad", "--format", "json").stdout)
    assert list(doc["gradients"]) == ["weights"]
    np.testing.assert_allclose(doc["gradients"]["weights"]["value"], GRADIENT, atol=5e-7)
    done = spiread("grad", EXAMPLES / "backward_mode.ad")
    assert done.stdout.startswith("[[0.1  0.05]\n")  # println's lines come first, then the command's own


def test_basics_page_def_and_map():
    done = spiread("eval", EXAMPLES / "basics_def.ad")
    assert done.returncode == 0 and done.stderr == ""
    assert done.stdout == "output List(1.0, 2.0, 3.0).map(sq)  3  [1. 4. 9.]\n"


def test_basics_page_jet():
    done = spiread("eval", EXAMPLES / "basics_jet.ad")
    assert done.returncode == 0 and done.stderr == ""
    assert done.stdout == "y  scalar  (10.0 + [1.0]h)\n\noutput y * y  scalar  (100.0 + [20.0]h)\n"
    doc = strict_json(spiread("eval", EXAMPLES / "basics_jet.ad", "--format", "json").stdout)
    assert doc["values"]["y * y"] == {"shape": [], "value": 100.0, "jet": [20.0]}


def test_dot_keeps_stdout_dot_and_prints_to_stderr():
    done = spiread("dot", EXAMPLES / "backward_mode.ad")
    assert done.returncode == 0 and done.stdout.startswith("digraph")
    assert done.stderr.startswith("[[0.1  0.05]\n")
