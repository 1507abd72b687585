"""Memory: what training keeps of a run once its fused copy exists
(docs/performance.md, "Memory")."""

from __future__ import annotations

import numpy as np

from spiread_cli import api, optim, train


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
