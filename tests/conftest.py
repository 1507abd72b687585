"""Shared helpers for the core tests: running programs through the library API
and the real `spiread` binary, central finite differences, `.ad` literals of
arrays, strict JSON held to its schemas, and a record of how closely gradients
agree (printed at the end of the run)."""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from spiread_cli import output, schemas
from spiread_cli.gradients import gradients as run_gradients
from spiread_cli.program import Program
from spiread_cli.diagnostics import Source

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
# spireAD's basics page: a `def` mapped over a list and a Jet. They compute
# from constants only, so there is nothing for grad, check or dot --wrt to
# differentiate by.
CONSTANT_EXAMPLES = {"basics_def.ad", "basics_jet.ad"}
# The makemore names: CI lays shared/ beside the repository; it is not ours to ship.
NAMES = REPO.parent / "shared" / "data" / "names.txt"


@pytest.fixture(scope="session")
def bigram_slice(tmp_path_factory):
    """examples/bigram/bigram.ad with its data prepared from the first 300 names."""
    if not NAMES.exists():
        pytest.skip(f"{NAMES} is not here")
    folder = tmp_path_factory.mktemp("bigram")
    shutil.copy(EXAMPLES / "bigram" / "bigram.ad", folder)
    prepared = subprocess.run([sys.executable, str(EXAMPLES / "bigram" / "prepare.py"), str(NAMES),
                               "--limit", "300", "--out", str(folder)], capture_output=True, text=True)
    assert prepared.returncode == 0, prepared.stderr
    assert "skipping the header line 'name'" in prepared.stderr
    return folder


# ------------------------------------------------------------- library API


def run(text: str, of: str | None = None, sets: dict | None = None, name: str = "test.ad",
        base_dir: Path | None = None, evaluate: bool = True):
    """Run program text through the library, as the CLI does."""
    return Program.parse(Source(name, text), base_dir or REPO).run(sets, of, evaluate)


def value(text: str, **kwargs) -> np.ndarray:
    r = run(text, **kwargs)
    return r.tape.nodes[r.output].value


def gradients(text: str, wrt: list[str] | None = None, of: str | None = None, mode: str = "reverse",
              sets: dict | None = None):
    return run_gradients(run(text, of=of, sets=sets), wrt, mode)


def central_difference(f, x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """∂f/∂x for a scalar function of an array, entry by entry."""
    x = np.asarray(x, dtype=float)
    grad = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        step = np.zeros_like(x)
        step[index] = eps
        grad[index] = (float(f(x + step)) - float(f(x - step))) / (2 * eps)
    return grad


def program_fd(text: str, name: str, of: str | None = None, eps: float = 1e-6) -> np.ndarray:
    """Finite differences of a program's output with respect to a binding,
    by re-running it with the binding replaced (`--set`'s mechanism)."""
    x0 = run(text, of=of).node(name).value
    return central_difference(lambda x: value(text, of=of, sets={name: x}), x0, eps)


# ------------------------------------------------------------ command line


def spiread_command() -> list[str]:
    """The installed `spiread` entry point next to this interpreter."""
    beside = Path(sys.executable).with_name("spiread")
    found = str(beside) if beside.exists() else shutil.which("spiread")
    return [found] if found else [sys.executable, "-m", "spiread_cli"]


def spiread(*args: str, stdin: str | None = None, cwd: Path | None = None, env: dict | None = None):
    """Run the real binary; stdout and stderr are pipes (not a terminal).
    A --format json document it writes must follow its published schema."""
    environment = {**os.environ, **(env or {})}
    args = [str(a) for a in args]
    done = subprocess.run(spiread_command() + args, input=stdin, capture_output=True,
                          text=True, cwd=cwd or REPO, env=environment, timeout=60)
    if "json" in args and args[args.index("json") - 1] == "--format" and done.stdout:
        strict_json(done.stdout)
    return done


def lit(x) -> str:
    """An `.ad` literal for an array, exact (shortest round-trip floats)."""
    x = np.asarray(x, dtype=float)
    if x.ndim == 0:
        return repr(float(x))
    return "[" + ", ".join(lit(v) for v in x) + "]"


def _reject_constant(name: str):
    raise ValueError(f"not RFC 8259 JSON: bare {name}")


def strict_json(text: str):
    """A --format json document: json.loads that refuses NaN and Infinity
    (RFC 8259 has neither), and that holds the document to the schema it
    names (spiread_cli/schemas/)."""
    document = json.loads(text, parse_constant=_reject_constant)
    validate_document(document)
    return document


@functools.cache
def schema_validator(command: str):
    import jsonschema
    schema = schemas.bundled(command)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def validate_document(document) -> None:
    """Fail unless `document` names its schema in "schema" and follows it."""
    assert isinstance(document, dict) and isinstance(document.get("schema"), str), \
        f"a --format json document names its schema: {str(document)[:200]}"
    command = document["schema"].split("/")[1]
    assert command in schemas.commands() and document["schema"] == schemas.tag(command), document["schema"]
    errors = sorted(schema_validator(command).iter_errors(document), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{document['schema']}: at {list(e.path)}: {e.message}"[:500] for e in errors)


@pytest.fixture(autouse=True, scope="session")
def json_documents_follow_their_schemas():
    """Every document written in-process (CliRunner, the library) is checked
    as it is written; the real binary's through `spiread` and `strict_json`.
    (Session-wide, so hypothesis's tests have it too.)"""
    write_json = output.write_json

    def checked(document: dict) -> None:
        write_json(document)
        strict_json(output.dumps(document))

    output.write_json = checked
    yield
    output.write_json = write_json


# ---------------------------------------------------------------- figures


class Agreement:
    """The worst disagreement seen between two gradient computations:
    max |a − b| over entries, and that divided by max(|b|) of the same
    gradient (a scale-relative error, meaningful where b has zeros; skipped
    for gradients that are zero up to rounding)."""

    def __init__(self):
        self.max_abs = 0.0
        self.max_rel = 0.0
        self.count = 0

    def update(self, got, expected) -> None:
        got, expected = np.asarray(got, dtype=float), np.asarray(expected, dtype=float)
        if got.size == 0:
            return
        diff = float(np.max(np.abs(got - expected)))
        scale = float(np.max(np.abs(expected)))
        self.max_abs = max(self.max_abs, diff)
        if scale > 1e-8:  # a gradient that is zero up to rounding has no relative error
            self.max_rel = max(self.max_rel, diff / scale)
        self.count += 1

    def record(self, record_property, kind: str) -> None:
        record_property(f"agreement:{kind}", (self.max_abs, self.max_rel, self.count))


_FIGURES: dict[str, list] = {}


def pytest_runtest_logreport(report):
    # user_properties travel from xdist workers to the controller with the report.
    if report.when == "call":
        for key, (max_abs, max_rel, count) in [(k, v) for k, v in report.user_properties
                                               if str(k).startswith("agreement:")]:
            worst = _FIGURES.setdefault(key.split(":", 1)[1], [0.0, 0.0, 0])
            worst[0], worst[1], worst[2] = max(worst[0], max_abs), max(worst[1], max_rel), worst[2] + count


def pytest_terminal_summary(terminalreporter):
    if _FIGURES:
        terminalreporter.section("gradient agreement")
        for kind, (max_abs, max_rel, count) in sorted(_FIGURES.items()):
            terminalreporter.write_line(f"{kind:>28}: {count:5d} gradients, max abs diff {max_abs:.3g}, "
                                        f"max scale-relative diff {max_rel:.3g}")


@pytest.fixture
def tmp_program(tmp_path):
    """Write a program (and optional data files) into a temporary folder."""
    def write(text: str, name: str = "prog.ad") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path
    return write


@pytest.fixture(autouse=True)
def numbers_of_its_own(request):
    """A test module's shared generator (`RNG`) restarts from each test's own
    id, so what a test draws does not depend on which tests pytest-xdist gave
    its worker before it (a different share each run: a random point could
    land on a kink in one run and not the next)."""
    rng = getattr(request.module, "RNG", None)
    if isinstance(rng, np.random.Generator):
        rng.bit_generator.state = np.random.default_rng(list(request.node.nodeid.encode())).bit_generator.state
