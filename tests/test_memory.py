"""Memory: what training keeps of a run once its fused copy exists
(docs/performance.md, "Memory")."""

from __future__ import annotations

import numpy as np

from spiread_cli import api, optim, train

from conftest import REPO


def test_spending_the_run_lets_the_unfused_values_go_and_trains_the_same(bigram_slice):
    program = str(bigram_slice / "bigram.ad")
    kept_run, spent_run = api.run_file(program), api.run_file(program)
    rows = spent_run.node("xs").value.shape[0]
    # The one-hot matrix and the unfused intermediates: one row per data row.
    unfused = [n.id for n in spent_run.tape.nodes if n.value.ndim == 2 and n.value.shape[0] == rows]
    assert len(unfused) >= 4
    kept = train.train(kept_run, ["W"], 5, optim.SGD(10.0))
    spent = train.train(spent_run, ["W"], 5, optim.SGD(10.0), spend_run=True)
    assert spent.status == kept.status == "done"
    assert spent.losses == kept.losses
    np.testing.assert_array_equal(spent.values["W"], kept.values["W"])
    assert [spent_run.tape.nodes[i].value for i in unfused] == [None] * len(unfused)
    assert all(kept_run.tape.nodes[i].value is not None for i in unfused), "without spend_run the run stays whole"
    # What is left: the names, the trained value the steps started from, and the output's value.
    assert spent_run.value == kept_run.value and spent_run.node("W").value is not None


def test_training_holds_at_most_the_one_hot_matrix_of_the_rows(tmp_path):
    """Peak memory of setting up and taking a step: a run recorded for
    training computes only its fused tape, so the largest thing ever held is
    the one-hot matrix the program builds (which the rewrite reads to find
    its rows), not the five arrays of that size the program as written makes."""
    import tracemalloc

    import spiread_cli
    rows, width = 20_000, 27
    rng = np.random.default_rng(0)
    np.save(tmp_path / "xs.npy", rng.integers(0, width, rows).astype(float))
    np.save(tmp_path / "ys.npy", rng.integers(0, width, rows).astype(float))
    (tmp_path / "bigram.ad").write_text(
        (REPO / "examples" / "bigram" / "bigram.ad").read_text().replace(".txt", ".npy"))
    program = spiread_cli.load(tmp_path / "bigram.ad")
    one_array = rows * width * 8
    tracemalloc.start()
    try:
        program.train(wrt="W", steps=2, lr=1.0, progress=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1.6 * one_array, f"{peak / one_array:.2f} arrays of {rows}×{width}"
    tracemalloc.start()
    try:
        api.run_file(str(tmp_path / "bigram.ad"))  # computed whole, for comparison
        whole = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert whole > 4 * one_array
