"""The JSON Schemas (draft 2020-12) of the `--format json` documents, one file
per command beside common.json (what every document shares). A document says
which it follows in its "schema" field, `spiread/<command>/<version>`.
`spiread schema COMMAND` prints `bundled(COMMAND)`: the command's schema with
common.json embedded, so it stands alone.

Adding a command's document is adding its COMMAND.json here."""

from __future__ import annotations

import json
from importlib import resources

VERSION = 1


def tag(command: str) -> str:
    """The "schema" field of `command`'s documents."""
    return f"spiread/{command}/{VERSION}"


def commands() -> list[str]:
    """The commands whose documents have a schema."""
    return sorted(p.name[:-5] for p in resources.files(__name__).iterdir()
                  if p.name.endswith(".json") and p.name != "common.json")


def _load(name: str) -> dict:
    return json.loads(resources.files(__name__).joinpath(f"{name}.json").read_text("utf-8"))


def bundled(command: str) -> dict:
    """`command`'s schema as one document: common.json rides along in its
    $defs, where its $id (urn:spiread:common:1) makes the references to it
    resolve (JSON Schema 2020-12's bundling of embedded resources)."""
    schema = _load(command)
    schema.setdefault("$defs", {})["common"] = _load("common")
    return schema
