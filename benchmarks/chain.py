"""Long chain: 10,000 small ops on 4-vectors and scalars, forward + backward.
Measures what the tape costs per node, against a peer's cost per op."""

from __future__ import annotations

import numpy as np

from common import have

BLOCKS = 1111  # 9 ops a block, plus the final sum: 10,000 ops


def program() -> str:
    lines = ["v0 = [0.1, 0.2, 0.3, 0.4]", "s0 = 0.5"]
    for i in range(1, BLOCKS + 1):
        lines.append(f"t{i} = (v{i-1}.tanh * s{i-1} + v{i-1}).sin")
        lines.append(f"s{i} = (t{i}.sum * 0.01 + s{i-1}).cos")
        lines.append(f"v{i} = t{i} * s{i}")
    lines.append(f"loss = v{BLOCKS}.sum")
    return "\n".join(lines) + "\n"


OPS = 9 * BLOCKS + 1


def implementations(ctx: dict) -> dict:
    impls = {"spiread": lambda: spiread_step(ctx)}
    if have("torch"):
        impls["PyTorch eager"] = torch_step
    if have("autograd"):
        impls["HIPS autograd"] = autograd_step
    # JAX is left out: jit-compiling the unrolled 10,000-op chain had not
    # finished after 8 minutes here.
    return impls


def spiread_step(ctx):
    from spiread_cli.program import Program
    from spiread_cli.diagnostics import Diagnostics, Source

    run = Program.parse(Source("chain.ad", program())).run()
    ops = sum(node.op is not None for node in run.tape.nodes)
    assert ops == OPS, ops
    wrt = [run.bindings["v0"], run.bindings["s0"]]
    diagnostics = Diagnostics()
    moved = run.tape.between(wrt, run.output)

    def step():
        run.tape.replay(moved)  # as `train` replays: warnings are checked when a program is first run
        return run.tape.backward(run.output, wrt, diagnostics)
    return step


def chain(v, s, tanh, sin, cos):
    for _ in range(BLOCKS):
        t = sin(tanh(v) * s + v)
        s = cos(t.sum() * 0.01 + s)
        v = t * s
    return v.sum()


def torch_step():
    import torch
    torch.set_num_threads(1)  # tiny tensors: threads only add overhead

    def step():
        v = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64, requires_grad=True)
        s = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
        chain(v, s, torch.tanh, torch.sin, torch.cos).backward()
        return v.grad, s.grad
    return step


def autograd_step():
    import autograd.numpy as anp
    from autograd import grad
    g = grad(lambda args: chain(args[0], args[1], anp.tanh, anp.sin, anp.cos))
    x = (np.array([0.1, 0.2, 0.3, 0.4]), np.array(0.5))
    return lambda: g(x)

