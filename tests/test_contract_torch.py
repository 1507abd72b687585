"""LANGUAGE.md §4–§7 and §10 against an independent reference: every method
and function, as the `.ad` language spells it, next to PyTorch's autograd —
the value, the gradient in both modes, the dense and sparse Hessian and the
Jacobian both ways (the rest of the suite holds ops to finite differences and
to their own closed forms; PyTorch is what the contract's words name)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from spiread_cli import compile

def T(value):
    return torch.tensor(value, dtype=torch.float64)


V = [0.45, -0.3, 0.75]                        # a vector off every kink: no clamp bound, tie, or zero
M = [[0.5, -1.2, 2.0], [1.5, 0.3, -0.75]]     # a 2×3 matrix, the same
A = [[1.0, 2.0, 3.0], [-1.0, 0.5, 2.0]]       # a constant operand

# (the receiver `x`'s value, the `.ad` expression, PyTorch's)
CASES = [
    (V, "x.exp", torch.exp), (V, "x.abs.log", lambda x: x.abs().log()),
    (V, "x.sin", torch.sin), (V, "x.cos", torch.cos), (V, "x.tan", torch.tan), (V, "x.tanh", torch.tanh),
    (V, "x.sinh", torch.sinh), (V, "x.cosh", torch.cosh), (V, "x.abs.sqrt", lambda x: x.abs().sqrt()),
    (V, "x.abs", torch.abs), (V, "x.square", torch.square), (V, "x.sigmoid", torch.sigmoid),
    (V, "x.relu", torch.relu), (V, "x.log1p", torch.log1p), (V, "x.neg", torch.neg),
    (V, "x.pow(3)", lambda x: x.pow(3)), (V, "x ** 2", lambda x: x ** 2), (V, "x.abs ** 0.5", lambda x: x.abs() ** 0.5),
    (V, "2.0 ** x", lambda x: 2.0 ** x), (V, "x.abs ** x", lambda x: x.abs() ** x),
    (V, "-x ** 2", lambda x: -(x ** 2)), (V, "x.clampMin(0.2)", lambda x: x.clamp(min=0.2)),
    (V, "x.clampMax(0.2)", lambda x: x.clamp(max=0.2)), (V, "x.div(x.square + 1)", lambda x: x / (x.square() + 1)),
    (V, "x.tej * 3 - 1 / x", lambda x: x * 3 - 1 / x), (V, "x.softplus", F.softplus), (V, "x.logSigmoid", F.logsigmoid),
    (V, "x.asin", torch.asin), (V, "x.acos", torch.acos), (V, "x.atan", torch.atan), (V, "x.asinh", torch.asinh),
    (V, "x.atanh", torch.atanh), (V, "(x + 2).acosh", lambda x: (x + 2).acosh()),
    (V, "x % 0.4", lambda x: torch.remainder(x, 0.4)), (V, "1.3 % x", lambda x: torch.remainder(T(1.3), x)),
    (V, "maximum(x, x.square)", lambda x: torch.maximum(x, x.square())),
    (V, "minimum(x, 0.1)", lambda x: torch.minimum(x, T(0.1))),
    (V, "logaddexp(x, x.square)", lambda x: torch.logaddexp(x, x.square())),
    (V, "where(x > 0, x.exp, x.sin)", lambda x: torch.where(x > 0, x.exp(), x.sin())),
    (V, "(x >= 0.45) * x + (x < 0) * x.square + (x == 0.75) + (x != 0.75) * 2 + (x <= 0) * x",
     lambda x: (x >= 0.45) * x + (x < 0) * x.square() + (x == 0.75) + (x != 0.75) * 2 + (x <= 0) * x),
    (V, "x.sum", torch.sum), (V, "x.mean", torch.mean), (V, "x.product", torch.prod), (V, "x.max", torch.max),
    (V, "x.min", torch.min), (V, "x.logSumExp", lambda x: x.logsumexp(0)), (V, "x.cumsum", lambda x: x.cumsum(0)),
    (V, "x @@ x", lambda x: x @ x), (V, "x @ [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]", lambda x: x @ T([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])),
    (V, "x[::2]", lambda x: x[::2]), (V, "x[:-1]", lambda x: x[:-1]), (V, "x[::-1]", lambda x: x.flip(0)),
    (V, "x[1:]", lambda x: x[1:]), (V, "x[-1] * x[0]", lambda x: x[-1] * x[0]), (V, "x.reshape(1, 3)", lambda x: x.reshape(1, 3)),
    (V, "diag(x)", torch.diag), (V, "hstack(x, x.exp)", lambda x: torch.hstack([x, x.exp()])),
    (V, "vstack(x, x.exp)", lambda x: torch.vstack([x, x.exp()])), (V, "einsum(\"i,j->ij\", x, x)", lambda x: torch.outer(x, x)),
    (V, "x.T", lambda x: x), (V, "Array(x[0], x[2])", lambda x: torch.stack([x[0], x[2]])),
    (V, "Matrix.fromRows(x, x.square)", lambda x: torch.stack([x, x.square()])),
    (V, "Matrix.fromColumns(x, x.square)", lambda x: torch.stack([x, x.square()], 1)),
    (V, "x.map(v => v * v.sin)", lambda x: x * x.sin()),
    (V, "x.value * x", lambda x: x.detach() * x),
    (V, "x / size(x) + rows(x) * cols(x)", lambda x: x / 3 + 9),
    (M, "x.sum", torch.sum), (M, "x.mean", torch.mean), (M, "x.product", torch.prod),
    (M, "x.mapRowsToScalar(sum)", lambda x: x.sum(1)), (M, "x.mapRowsToScalar(ReductionOps.Mean)", lambda x: x.mean(1)),
    (M, "x.mapRowsToScalar(ReductionOps.Product)", lambda x: x.prod(1)),
    (M, "x.abs.normaliseRowsL1", lambda x: x.abs() / x.abs().sum(1, keepdim=True)),
    (M, "x.normalizeRowsL2", lambda x: F.normalize(x, dim=1)), (M, "x.softmaxRows", lambda x: x.softmax(1)),
    (M, "x.logSoftmaxRows", lambda x: x.log_softmax(1)), (M, "x.T", lambda x: x.T), (M, "x.transpose", lambda x: x.T),
    (M, "x.row(1)", lambda x: x[1]), (M, "x.col(-1)", lambda x: x[:, -1]),
    (M, "x[(0, 1), (1, 2)]", lambda x: x * T([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])),
    (M, "x(Array((0, 1), (1, 2)))", lambda x: x * T([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])),
    (M, "x.select([1, 0], [0, 2])", lambda x: x * T([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])),
    (M, "x.arrange((0, 1), (1, 2), (0, 1))", lambda x: x[[0, 1, 0], [1, 2, 1]]),
    (M, "x.arrange([1, 0], [0, 2])", lambda x: x[[1, 0], [0, 2]]), (M, "x[1, 2] * x[-2, -3]", lambda x: x[1, 2] * x[-2, -3]),
    (M, "x[1]", lambda x: x[1]), (M, "x[:, 0:2]", lambda x: x[:, 0:2]), (M, "x[1:2, :]", lambda x: x[1:2, :]),
    (M, "x[:, 1]", lambda x: x[:, 1]), (M, "x[-1, 1:]", lambda x: x[-1, 1:]), (M, "x[::-1, ::2]", lambda x: x.flip(0)[:, ::2]),
    (M, "x.max", torch.max), (M, "x.min", torch.min), (M, "x.rowMax", lambda x: x.amax(1)),
    (M, "x.colMax", lambda x: x.amax(0)), (M, "x.rowMin", lambda x: x.amin(1)), (M, "x.colMin", lambda x: x.amin(0)),
    (M, "x.reshape(3, 2)", lambda x: x.reshape(3, 2)), (M, "x.flatten", torch.flatten),
    (M, "hstack(x, x.square)", lambda x: torch.hstack([x, x.square()])), (M, "vstack(x, x.row(0))", lambda x: torch.vstack([x, x[0]])),
    (M, "x.diag", torch.diagonal), (M, "(x @@ x.T).trace", lambda x: (x @ x.T).trace()), (M, "x.triu", torch.triu),
    (M, "x.tril", torch.tril), (M, "x.logSumExp", lambda x: x.logsumexp((0, 1))), (M, "x.rowLogSumExp", lambda x: x.logsumexp(1)),
    (M, "x.cumsum", lambda x: x.flatten().cumsum(0)),
    (M, "x @@ x.T * 2", lambda x: (x @ x.T) * 2), (M, "2 * x.T @@ x", lambda x: 2 * (x.T @ x)),
    (M, "x @@ [1.0, 2.0, 3.0]", lambda x: x @ T([1.0, 2.0, 3.0])), (M, "[1.0, 2.0] @ x", lambda x: T([1.0, 2.0]) @ x),
    (M, f"x * {A} - x / [1.0, 2.0, 4.0] + [[1.0], [2.0]] * x", lambda x: x * T(A) - x / T([1.0, 2.0, 4.0]) + T([[1.0], [2.0]]) * x),
    (M, "einsum(\"ij,kj->ik\", x, x)", lambda x: torch.einsum("ij,kj->ik", x, x)),
    (M, "einsum(\"ij,ij->i\", x, x.exp)", lambda x: torch.einsum("ij,ij->i", x, x.exp())),
    (M, "x.square.div(x.exp)", lambda x: x.square() / x.exp()),
]


def torch_loss(y):
    """A scalar of y whose Hessian is dense where y's Jacobian is: y² and sin y."""
    return (y * y * 0.5 + y.sin()).sum()


@pytest.mark.parametrize("x0, expression, reference", CASES, ids=[case[1] for case in CASES])
def test_every_method_and_function_is_pytorchs_to_second_order(x0, expression, reference):
    prog = compile(f"x = {x0}\ny = {expression}\nloss = (y * y * 0.5 + y.sin).sum\n")
    x = T(x0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # off every kink: nothing to warn of
        values = prog.eval(x=x0)
        gradients = {mode: prog.grad(wrt="x", mode=mode)["x"] for mode in ("reverse", "forward")}
        hessian = prog.hessian(wrt="x")["x"]["x"]
        sparse = prog.hessian(wrt="x", sparse=True).toarray().reshape(hessian.shape)
        jacobians = {mode: prog.jacobian(of="y", wrt="x", mode=mode)["x"] for mode in ("reverse", "forward")}
    np.testing.assert_allclose(values["y"], reference(x).detach().numpy(), rtol=1e-14, atol=1e-15)
    expected_gradient = torch.func.grad(lambda t: torch_loss(reference(t)))(x).numpy()
    expected_hessian = torch.autograd.functional.hessian(lambda t: torch_loss(reference(t)), x).numpy()
    expected_jacobian = torch.autograd.functional.jacobian(reference, x).numpy()
    for mode in ("reverse", "forward"):
        np.testing.assert_allclose(gradients[mode], expected_gradient, rtol=1e-12, atol=1e-13, err_msg=mode)
        np.testing.assert_allclose(jacobians[mode], expected_jacobian.reshape(jacobians[mode].shape), rtol=1e-12,
                                   atol=1e-13, err_msg=mode)
    assert jacobians["reverse"].shape == np.shape(values["y"]) + np.shape(x0)  # shape(Y) + shape(X), as torch
    for got in (hessian, sparse):
        np.testing.assert_allclose(got, expected_hessian, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("optimizer, options", [("sgd", {"lr": 0.001}), ("sgd", {"lr": 0.001, "momentum": 0.9}),
                                                ("adam", {"lr": 0.05})])
def test_training_steps_are_torch_optims_and_each_loss_is_before_its_step(optimizer, options):
    # §8: train repeats forward, backward and an optimizer step; "the loss reported for a step is the one
    # computed before that step's update". torch.optim's SGD (with momentum) and Adam, step by step.
    prog = compile("w = [1.5, -0.5]\n"
                   "loss = (w[0] - 1) ** 2 * 100 + (w[1] - w[0] * w[0]) ** 2 * 3 + (w.square.sum - 1).square\n")
    w = T([1.5, -0.5]).requires_grad_()
    step = (torch.optim.Adam([w], **options) if optimizer == "adam" else torch.optim.SGD([w], **options))
    losses = []
    for _ in range(20):
        step.zero_grad()
        loss = (w[0] - 1) ** 2 * 100 + (w[1] - w[0] * w[0]) ** 2 * 3 + (w.square().sum() - 1).square()
        losses.append(loss.item())
        loss.backward()
        step.step()
    trained = prog.train(wrt="w", steps=20, optimizer=optimizer, **options)
    np.testing.assert_allclose(trained.losses, losses, rtol=1e-13)
    np.testing.assert_allclose(trained.values["w"], w.detach().numpy(), rtol=1e-13)
