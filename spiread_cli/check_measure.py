"""The tolerance rule of `spiread check`: measure a derivative along
directions by AD (reverse and forward) and by central differences, and judge
the measurement (check.py runs it over a program's values); the report it
fills (`CheckReport`, light to import: the Python API's `CheckResult` holds one).

The tolerance rule (docs/check.md): an entry passes when

    |ad - fd| <= tol * max(|fd|, scale) + noise

where `scale` is the largest |ad| among the numbers compared for that value,
and `noise` = 64 · 2⁻⁵² · max(|f(x±h)|, M) / h allows for rounding in the
difference quotient, M = Σ |v| · |∂f/∂v| over the values v the output is
computed from (a first-order bound on how far rounding moves f): a small
output made by cancelling large terms is only as exact as those terms.

An entry that fails the rule and is no kink is measured again at
h = eps / 100, where the central difference's own (truncation) error has
shrunk, 10⁴-fold where f is smooth and 100-fold at a jump of f'' (C¹ like
clampMin(x, 0).square at 0, where the error is eps/2 and AD's 0 is exact),
while a wrong gradient's error stays. It passes when, at h,

    |ad - fd| <= tol * max(|fd|, scale) + noise + |ad - fd at eps| / 10

(noise at h is 100 times that at eps); the figures reported are those at h.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Protocol

import numpy as np

from .diagnostics import Diagnostic

if TYPE_CHECKING:
    from .run import Run
    from .tape_nodes import Node

NOISE_ULPS = 64
# A gap between the right and left slopes larger than this share of the
# gradient's scale makes an entry a kink candidate; it is a kink when the gap
# stays as the step shrinks 100-fold (curvature makes it shrink with the step).
KINK_GAP = 1e-3
KINK_SHRINK = 100
# An entry measured again at eps / KINK_SHRINK may keep this share of its
# error at eps (besides the rule at that step): truncation error shrinks
# 10⁴-fold there where f is smooth and at least 100-fold at a jump of f''
# (wherever in the step the jump sits). Asking a 10-fold shrink (error ∝
# step^½ or faster) leaves a factor 10 for higher-order terms; a wrong
# gradient, whose error stays, passes only if under about a ninth of the
# difference's own error at eps.
TRUNCATION_SHRINK = 10
FORWARD_TOL = 1e-8
ULP = float(np.finfo(np.float64).eps)


class Along(Protocol):
    """What `measure` evaluates: the output with a value moved (check.Probe)."""
    x: np.ndarray                                        # the value's point

    def __call__(self, value: np.ndarray) -> float: ...  # the output at `value`

    def forward(self, v: np.ndarray) -> np.ndarray: ...  # its derivatives along v, by forward mode


@dataclass
class ValueCheck:
    name: str
    shape: tuple[int, ...]
    method: str                      # "elementwise" or "directional"
    checked: int                     # entries, or random directions, compared
    max_abs_error: float
    max_rel_error: float
    forward_vs_reverse: float        # largest |forward - reverse| among the same numbers
    worst: tuple[int, ...] | int     # entry index (elementwise) or direction number
    ad: float                        # reverse-mode AD at the worst entry / direction
    fd: float                        # central finite difference there
    ok: bool
    problem: str | None = None       # why it failed, in words
    kink: bool = False               # the failure is a point with no derivative

    def where(self) -> str:
        if self.method == "directional":
            return f"`{self.name}` along random direction {self.worst} of {self.checked}"
        return f"`{self.name}{list(self.worst) if self.worst else ''}`"


@dataclass
class KinkSite:
    """An op on the path from a checked value to the output whose input sits
    exactly at a point where the op has no derivative."""
    node: Node
    count: int
    size: int
    where: tuple[int, ...]
    value: float

    def note(self) -> str:
        span = self.node.span
        at = f" (line {span.line}, column {span.column})" if span else ""
        where = f" at {list(self.where)}" if self.where else ""
        return (f"`{self.node.label}`{at} has input {self.value:g}{where} ({self.count} of {self.size} entries), "
                "where it has no derivative: AD takes one side's slope there by convention (as PyTorch does), "
                "finite differences see both sides; check at a point off the kink")


@dataclass
class CheckReport:
    output_name: str
    value: float | np.ndarray        # the output's (an array: a Jacobian's check)
    eps: float
    tol: float
    results: dict[str, ValueCheck]
    kink_sites: list[KinkSite] = field(default_factory=list)
    problem: str | None = None       # about the whole check (a non-finite output)
    order: int = 1                   # 2: second derivatives (check_second_order)
    sparse: SparseCheck | None = None  # `check --sparse`: the compressed evaluation against the dense one

    @property
    def what(self) -> str:
        """What was checked: "gradient", "Jacobian" or "second-derivative"."""
        if self.order == 2:
            return "second-derivative"
        return "gradient" if np.ndim(self.value) == 0 else "Jacobian"

    @property
    def ok(self) -> bool:
        return (self.problem is None and all(r.ok for r in self.results.values())
                and (self.sparse is None or self.sparse.ok))

    def failures(self, run: Run) -> list[Diagnostic]:
        """One located error per failed value, with kink notes where they apply."""
        out = []
        if self.problem:  # then every value fails for the same reason: say it once
            return [Diagnostic("error", self.problem, run.tape.nodes[run.output].span)]
        if self.sparse is not None:
            out += self.sparse.failures(run.tape.nodes[run.output].span)
        for result in self.results.values():
            if result.ok:
                continue
            notes = [site.note() for site in self.kink_sites]
            if result.kink and not notes:
                notes = ["the slopes to either side differ: the function has a kink here"]
            span = self.kink_sites[0].node.span if notes and self.kink_sites else run.binding_spans.get(result.name)
            out.append(Diagnostic("error", f"{self.what} check failed for {result.where()}: {result.problem}",
                                  span, tuple(notes)))
        return out


@dataclass
class SparseCheck:
    """`check --sparse`: the Jacobian (order 1) or Hessian (order 2) that
    `--sparse` computes, from one sweep per colour of the exact pattern, in
    each direction it can take, against the dense one entry by entry; and
    the dense one's nonzeros against the pattern (AD computes a structural
    zero as exactly 0, so a nonzero outside it is a wrong structure rule)."""
    what: str                        # "Jacobian" or "Hessian"
    sweeps: int                      # what `--sparse` takes (its own choice of direction)
    colouring: str                   # and how: "columns", "rows" or "star"
    nonzeros: int                    # the pattern's entries
    compared: list[str]              # the colourings whose results were compared ("columns", "rows", "star")
    max_abs_error: float             # |sparse - dense|, worst over the entries and the colourings
    scale: float                     # the largest |dense| entry
    tol: float
    worst: str | None                # the entry with that error, named (`∂y[1]/∂x[2]`)
    missed: int                      # nonzeros of the dense derivative outside the pattern
    first_missed: str | None         # one of them, named, with its value
    rule_node: Node | None = None    # the op node whose structure rule misses a derivative (a Jacobian's)
    rule_misses: str | None = None   # that derivative, named (`∂v[0]/∂x[0]`)

    @property
    def ok(self) -> bool:
        return self.missed == 0 and self.max_abs_error <= self.tol * self.scale

    def failures(self, span) -> list[Diagnostic]:
        out = []
        if self.max_abs_error > self.tol * self.scale:
            out.append(Diagnostic("error", f"sparse {self.what} check failed at `{self.worst}`: the compressed "
                                           f"evaluation differs from the dense one by {self.max_abs_error:.3g} "
                                           f"(tolerance {self.tol:g} × {self.scale:.3g}, the largest entry)", span))
        if self.missed:
            more = f" (and {self.missed - 1} more)" if self.missed > 1 else ""
            notes = ["an entry outside the exact pattern is a wrong structure rule of an op, a bug in spiread "
                     "(spiread_cli/structure.py): please report it with this program"]
            if self.rule_node is not None:
                span = self.rule_node.span or span
                notes.insert(0, f"the rule of `{self.rule_node.op.name}` here misses `{self.rule_misses}`")
            out.append(Diagnostic("error", f"the sparsity pattern of the {self.what} misses `{self.first_missed}`"
                                           f"{more}, nonzero at this point", span, tuple(notes)))
        return out


@dataclass
class Measurement:
    """Per direction: AD (reverse and forward), the central difference, the
    one-sided slopes' gap, the rounding allowance and whether it is a kink;
    where the difference at eps failed the rule and is no kink, the central
    difference and its rounding allowance at eps / KINK_SHRINK (`refined`)."""
    ad: np.ndarray
    forward: np.ndarray
    fd: np.ndarray
    right: np.ndarray           # one-sided slopes
    left: np.ndarray
    noise: np.ndarray
    kink: np.ndarray
    refined: np.ndarray         # measured again at eps / KINK_SHRINK
    fine_fd: np.ndarray         # the central difference there (fd where not refined)
    fine_noise: np.ndarray      # and its rounding allowance (noise where not refined)
    scale: float                # the largest finite |ad|
    magnitude: float            # the output's rounding bound (output_magnitude)


def allowance(fd: np.ndarray, scale: float, noise: np.ndarray, tol: float) -> np.ndarray:
    """The tolerance rule: how far AD may be from the central difference."""
    return tol * np.maximum(np.abs(fd), scale) + noise


def measure(probe: Along, grad: np.ndarray, v: np.ndarray, f0: float, magnitude: float, eps: float,
            tol: float) -> Measurement:
    """Differentiate along each direction in `v` by AD (the reverse gradient
    projected, and forward mode) and by central differences, and look for
    kinks: a gap between the one-sided slopes that stays as the step shrinks
    (curvature makes it shrink with the step). Directions that fail the
    tolerance rule and are no kink are measured again at the smaller step
    (`judge` decides whether the error shrank as truncation error does)."""
    x = probe.x
    count = len(v)
    flat = v.reshape(count, x.size)
    with np.errstate(all="ignore"):
        # 0 · inf is 0 here: an entry a direction does not move has no say.
        ad = np.where(flat != 0, flat * grad.ravel(), 0.0).sum(axis=1)
    forward = probe.forward(v)

    def differences(h: float, which) -> tuple[np.ndarray, np.ndarray]:
        plus = np.array([probe(x + h * v[j]) for j in which])
        minus = np.array([probe(x - h * v[j]) for j in which])
        return plus, minus

    def rounding(plus: np.ndarray, minus: np.ndarray, h: float) -> np.ndarray:
        return NOISE_ULPS * ULP * np.maximum(np.maximum(np.abs(plus), np.abs(minus)), magnitude) / h

    plus, minus = differences(eps, range(count))
    with np.errstate(all="ignore"):
        fd = (plus - minus) / (2 * eps)
        gap = (plus - 2 * f0 + minus) / eps                  # right slope minus left slope
        noise = rounding(plus, minus, eps)
        finite_ad = np.abs(ad[np.isfinite(ad)])
        scale = float(finite_ad.max()) if finite_ad.size else 0.0
        candidates = (np.abs(gap) > KINK_GAP * np.maximum(scale, np.abs(fd))) & (np.abs(gap) > 4 * noise)
        # (`scale` is this measurement's: a joined one's may be larger, so this may refine an entry that passes)
        failing = np.isfinite(ad) & np.isfinite(fd) & ~(np.abs(ad - fd) <= allowance(fd, scale, noise, tol))
        again = np.flatnonzero(candidates | failing)         # one evaluation at the smaller step serves both
        kink = np.zeros(count, dtype=bool)
        refined = np.zeros(count, dtype=bool)
        fine_fd, fine_noise = fd.copy(), noise.copy()
        if again.size:
            h = eps / KINK_SHRINK
            p2, m2 = differences(h, again)
            gap2 = (p2 - 2 * f0 + m2) / h
            kink[again] = candidates[again] & (np.abs(gap2) > 0.5 * np.abs(gap[again])) & \
                (np.abs(gap2) > 4 * KINK_SHRINK * noise[again])
            fine_fd[again], fine_noise[again] = (p2 - m2) / (2 * h), rounding(p2, m2, h)
            refined[again] = failing[again] & ~kink[again] & np.isfinite(fine_fd[again])
        right, left = (plus - f0) / eps, (f0 - minus) / eps
    return Measurement(ad, forward, fd, right, left, noise, kink, refined, fine_fd, fine_noise, scale, magnitude)


def judge(name: str, shape: tuple[int, ...], method: str, m: Measurement, tol: float, eps: float) -> ValueCheck:
    """Apply the tolerance rule to a measurement: the worst direction, and in
    words why it fails if it does. A direction that fails the rule at eps
    and was measured again at eps / KINK_SHRINK is judged there, with
    1/TRUNCATION_SHRINK of its error at eps allowed on top of the rule: the
    difference's own error shrinks with the step, a wrong gradient's does not."""
    count = len(m.ad)
    with np.errstate(all="ignore"):
        coarse_err = np.abs(m.ad - m.fd)
        fine = m.refined & ~(coarse_err <= allowance(m.fd, m.scale, m.noise, tol))  # judged at the smaller step
        fd = np.where(fine, m.fine_fd, m.fd)
        err = np.abs(m.ad - fd)
        allowed = np.where(fine, allowance(m.fine_fd, m.scale, m.fine_noise, tol) + coarse_err / TRUNCATION_SHRINK,
                           allowance(m.fd, m.scale, m.noise, tol))
        rel = np.where(err == 0, 0.0, err / np.maximum(np.abs(fd), m.scale))
        fvr = np.where(m.forward == m.ad, 0.0, np.abs(m.forward - m.ad))
        # Forward and reverse mode sum the same terms in other orders: they
        # agree to rounding, relative to the gradient and to the output.
        fvr_bad = ~(fvr <= FORWARD_TOL * (m.scale + np.abs(m.ad)) + NOISE_ULPS * ULP * (1 + m.magnitude))
        nonfinite = ~(np.isfinite(m.ad) & np.isfinite(fd))
        bad = ~(err <= allowed) | m.kink | nonfinite
        ratio = np.where(err == 0, 0.0, err / allowed)
    if nonfinite.any():
        j = int(np.flatnonzero(nonfinite)[0])
    elif m.kink.any():
        j = int(np.flatnonzero(m.kink)[0])
    elif fvr_bad.any() and not bad.any():
        j = int(np.flatnonzero(fvr_bad)[0])
    else:
        j = int(np.nanargmax(np.where(np.isnan(ratio), np.inf, ratio))) if count else 0
    if method == "elementwise":
        worst = tuple(int(i) for i in np.unravel_index(j, shape)) if shape and count else ()
    else:
        worst = j
    ad, fd_j = (float(m.ad[j]), float(fd[j])) if count else (0.0, 0.0)
    result = ValueCheck(name, shape, method, count, _max(err), _max(rel), _max(fvr), worst, ad, fd_j, ok=True)
    if bad.any() or fvr_bad.any():
        result.ok = False
        result.kink = bool(m.kink[j])
        if not np.isfinite(ad):
            result.problem = f"the AD gradient is {ad:g} there"
        elif not np.isfinite(fd_j):
            result.problem = (f"finite differences give {fd_j:g} there: the output is not finite "
                              f"a step of {eps:g} away in that direction")
        elif m.kink[j]:
            result.problem = (f"not differentiable there: the slope is {m.right[j]:.6g} to the right and "
                              f"{m.left[j]:.6g} to the left; AD gives {ad:.6g}, central differences {fd_j:.6g}")
        elif bad[j] and fine[j]:
            result.problem = (f"AD gives {ad:.6g} but finite differences {fd_j:.6g} at a step of "
                              f"{eps / KINK_SHRINK:g} (error {err[j]:.3g}, allowed {allowed[j]:.3g}; "
                              f"{coarse_err[j]:.3g} at {eps:g}: a difference's own error would have shrunk at least "
                              f"{TRUNCATION_SHRINK}-fold)")
        elif bad[j]:
            result.problem = (f"AD gives {ad:.6g} but finite differences {fd_j:.6g} "
                              f"(error {err[j]:.3g}, allowed {allowed[j]:.3g})")
        else:
            result.problem = f"forward mode gives {m.forward[j]:.17g} but reverse mode {ad:.17g}"
    return result


def _max(a: np.ndarray) -> float:
    """The largest entry; nan if any entry is nan (a failed comparison must show)."""
    if a.size == 0:
        return 0.0
    return float(np.nan) if np.isnan(a).any() else float(a.max())


def joined(parts: list[Measurement]) -> Measurement:
    """Measurements along several row directions as one, direction after
    direction; none (a block over an empty value) measure no direction."""
    def cat(field_name):
        empty = np.zeros(0, dtype=bool if field_name in ("kink", "refined") else np.float64)
        return np.concatenate([empty] + [getattr(p, field_name) for p in parts])
    per_direction = {f.name: cat(f.name) for f in fields(Measurement) if f.name not in ("scale", "magnitude")}
    return Measurement(**per_direction, scale=max((p.scale for p in parts), default=0.0),
                       magnitude=max((p.magnitude for p in parts), default=0.0))
