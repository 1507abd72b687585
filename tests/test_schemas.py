"""The JSON Schemas of the --format json documents: well formed, printed by
`spiread schema`, one for every command that writes a document (.ci/run proves
the wheel carries them); and the check conftest.py applies to every document
the tests see does refuse what breaks the contract."""

from __future__ import annotations

import inspect
import json

import jsonschema
import pytest
from typer.testing import CliRunner

from conftest import EXAMPLES, spiread, strict_json, validate_document
from spiread_cli import output, schemas
from spiread_cli.cli import app

DOCUMENTED = ["check", "eval", "grad", "hessian", "jacobian", "train"]  # the commands here that take --format json


def test_every_command_with_a_json_document_has_a_schema():
    takes_format = sorted(c.name for c in app.registered_commands
                          if "fmt" in inspect.signature(c.callback).parameters)
    assert takes_format == DOCUMENTED
    assert set(takes_format) <= set(schemas.commands())


@pytest.mark.parametrize("command", schemas.commands())
def test_each_schema_is_a_2020_12_schema_named_for_its_command(command):
    schema = schemas.bundled(command)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == f"urn:spiread:{command}:1"
    assert schema["properties"]["schema"] == {"const": schemas.tag(command)} == {"const": f"spiread/{command}/1"}
    assert schema["unevaluatedProperties"] is False  # a key the schema does not name is an error


@pytest.mark.parametrize("command", DOCUMENTED)
def test_spiread_schema_prints_the_bundled_schema(command):
    done = spiread("schema", command)
    assert done.returncode == 0 and done.stderr == ""
    assert json.loads(done.stdout) == schemas.bundled(command)


def test_a_command_without_a_document_is_a_usage_error():
    done = spiread("schema", "gard")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == ("spiread: error: `gard` has no --format json document; the commands with one are "
                           "check, eval, grad, hessian, jacobian, train\n  = note: did you mean `grad`?\n")
    assert spiread("schema", "dot").returncode == 2


# ----------------------------------------------- documents in every state


def invoke(*args):
    """In process: conftest checks each document as it is written."""
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.ad")))
def test_every_example_writes_valid_documents(example):
    path = EXAMPLES / example
    for args in (["eval"], ["grad"], ["grad", "--mode", "forward", "--explain"], ["grad", "--explain"],
                 ["check"]):
        result = invoke(*args, path, "--format", "json")
        assert result.exit_code in (0, 1), result.stderr
        if args[0] == "eval" or result.stdout:  # gradients of a vector output are an error: no document
            assert strict_json(result.stdout)["schema"] == f"spiread/{args[0]}/1"


def test_documents_with_warnings_non_finite_values_and_failures_are_valid(tmp_program):
    nonfinite = tmp_program("x = [0.0, 1.0]\ny = x.log\nloss = (x * y).sum\n")
    doc = strict_json(invoke("eval", nonfinite, "--format", "json").stdout)
    assert doc["values"]["y"]["value"] == ["-inf", 0.0] and doc["warnings"][0]["line"] == 2
    kink = tmp_program("x = [0.0, 1.0]\nloss = x.relu.sum\n", "kink.ad")
    failed = invoke("check", kink, "--format", "json")
    assert failed.exit_code == 1 and strict_json(failed.stdout)["ok"] is False
    big = tmp_program("w = randn(40, 40, seed=2)\nloss = (w * w).sum\n", "big.ad")
    checked = strict_json(invoke("check", big, "--format", "json").stdout)
    assert checked["results"]["w"]["method"] == "directional"
    trained = strict_json(invoke("train", big, "--wrt", "w", "--steps", "2", "--format", "json").stdout)
    assert trained["steps"] == 2 and trained["saved"] is None


# ------------------------------------------------ the check itself can fail


def good_grad_document() -> dict:
    return strict_json(spiread("grad", EXAMPLES / "least_squares.ad", "--format", "json").stdout)


@pytest.mark.parametrize("breakage, complaint", [
    (lambda d: d.pop("schema"), "names its schema"),
    (lambda d: d.update(schema="spiread/grad/2"), "spiread/grad/2"),
    (lambda d: d.update(extra=1), "Unevaluated properties are not allowed ('extra' was unexpected)"),
    (lambda d: d.pop("gradients"), "'gradients' is a required property"),
    (lambda d: d.update(mode="sideways"), "'sideways' is not one of ['reverse', 'forward']"),
    (lambda d: d["value"].update(value="Infinity"), "at ['value', 'value']"),
    (lambda d: d["gradients"]["w"].update(shape=[-1]), "at ['gradients', 'w', 'shape', 0]"),
    (lambda d: d["warnings"].append({"line": 1, "message": "m"}), "'column' is a required property"),
])
def test_a_document_that_breaks_its_schema_is_refused(breakage, complaint):
    document = good_grad_document()
    validate_document(document)
    breakage(document)
    with pytest.raises(AssertionError, match=None) as refused:
        validate_document(document)
    assert complaint in str(refused.value)


def test_documents_written_in_process_are_checked_as_they_are_written(capsys):
    with pytest.raises(AssertionError, match="'values' is a required property"):
        output.write_json({"schema": "spiread/eval/1", "file": "f.ad", "output": "x", "warnings": []})
