"""The pages run: every ```console block of README.md, docs/*.md and
examples/*/README.md is executed, and what it shows is compared with what the
commands print now. One test per block.

How a page writes a block (the one convention; other fences show no `$ `):

- A line starting with `$ ` is a command, as typed in bash; the lines after
  it, up to the next command, are what it prints (standard output and error
  as a terminal shows them, in the order written). A command with nothing
  after it must succeed (exit 0); what it prints is not compared.
- The text is compared exactly (trailing spaces aside) and numbers to a
  relative 1e-6. `…` stands for any text within a line (a timing); a line of
  `…` alone for any number of lines.
- `cd DIR` (alone or before `&&`) moves the rest of the block into DIR.
- An HTML comment before a block tells the harness more:
  `<!-- cwd: tests/bad -->` runs this and the page's later blocks there
  (default: the repository); `<!-- given: PATH = SOURCE -->` puts SOURCE
  (relative to the repository) at PATH for the next block, which is skipped
  when SOURCE is missing; `<!-- not run: REASON -->` skips the next block,
  and the skip is counted.

Each block runs in a scratch copy of the repository (hard links), so what
the commands write (`> graph.svg`, `--save w.npz`) lands there.

A block of lines `spiread COMMAND ... [--option ...]` under a
`<!-- synopsis: --debug ... -->` comment is a synopsis: the last test holds it
to the command's real options (those named in the comment are described in
the text beside it instead).
"""

from __future__ import annotations

import difflib
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted(REPO.glob("examples/*/README.md"))]
FENCE = re.compile(r"^```(\S*)\s*$")
DIRECTIVE = re.compile(r"^<!--\s*(cwd|given|not run|synopsis)\s*:?\s*(.*?)\s*-->\s*$")
NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
RTOL, ATOL = 1e-6, 1e-9  # ATOL: rounding-level figures such as `fwd−rev 2e-17`


@dataclass
class Block:
    page: Path
    line: int                       # of the opening fence, 1-based
    language: str
    lines: list[str]
    cwd: str = "."
    given: dict[str, str] = field(default_factory=dict)
    not_run: str | None = None
    synopsis: str | None = None     # the options a synopsis leaves to the text beside it

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    found, pending, cwd = [], {}, "."
    lines = page.read_text("utf-8").splitlines()
    i = 0
    while i < len(lines):
        directive, fence = DIRECTIVE.match(lines[i]), FENCE.match(lines[i])
        if directive:
            key, value = directive.groups()
            if key == "cwd":
                cwd = value
            elif key == "given":
                target, source = (part.strip() for part in value.split("="))
                pending.setdefault("given", {})[target] = source
            else:
                pending[key] = value
        elif fence:
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            found.append(Block(page, i + 1, fence.group(1), lines[i + 1:end], cwd, pending.get("given", {}),
                               pending.get("not run"), pending.get("synopsis")))
            pending, i = {}, end
        i += 1
    return found


ALL = [b for page in PAGES for b in blocks(page)]
CONSOLE = [b for b in ALL if b.language == "console"]


def commands(block: Block) -> list[tuple[str, list[str]]]:
    """(command, the lines it shows) for each `$ ` line of a block."""
    runs = []
    for line in block.lines:
        if line.startswith("$ "):
            runs.append((line[2:], []))
        else:
            runs[-1][1].append(line)
    return runs


def scratch_tree(block: Block, root: Path) -> Path:
    """The repository with its files hard-linked (not symbolic links, which
    messages would show resolved), plus the block's givens. What the pages'
    commands write are new files, or files spiread replaces by a rename, so
    nothing is written through a link into the repository."""
    shutil.copytree(REPO, root, copy_function=os.link,
                    ignore=shutil.ignore_patterns(".git", "*.egg-info", "__pycache__", ".venv*", "dist"))
    for target, source in block.given.items():
        if not (REPO / source).exists():
            pytest.skip(f"{source} is not here")
        os.symlink(REPO / source, root / target)
    return root


def run(command: str, cwd: Path) -> subprocess.CompletedProcess:
    """bash, with this interpreter's `spiread` and `python` first on PATH and
    standard error merged into standard output as written."""
    env = {key: value for key, value in os.environ.items() if key != "SPIREAD_MAX_BYTES"}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}", PYTHONUNBUFFERED="1",
               COLUMNS="80")
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=120)


def pattern(shown: str) -> tuple[re.Pattern, list[float]]:
    """A regex for the text a page shows, each number a group (and the
    numbers), `…` a wildcard."""
    parts, numbers = [], []
    for line in shown.splitlines():
        if line.strip() == "…":
            parts.append(r"(?:[^\n]*\n)*?")
            continue
        for piece in re.split(f"({NUMBER}|…)", line):
            if piece == "…":
                parts.append(r"[^\n]*?")
            elif re.fullmatch(NUMBER, piece):
                parts.append(f"({NUMBER})")
                numbers.append(float(piece))
            else:
                parts.append(re.escape(piece))
        parts.append("\n")
    return re.compile("".join(parts)), numbers


def tidy(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.strip("\n").split("\n")) + "\n"


def differs(shown: str, printed: str) -> str | None:
    """None when `printed` is what the page shows, else how it differs."""
    shown, printed = tidy(shown), tidy(printed)
    regex, expected = pattern(shown)
    match = regex.fullmatch(printed)
    if match:
        got = [float(n) for n in match.groups()]
        if all(e == g or abs(e - g) <= RTOL * max(abs(e), abs(g)) + ATOL for e, g in zip(expected, got)):
            return None
    diff = difflib.unified_diff(shown.splitlines(), printed.splitlines(), "the page", "printed now", lineterm="")
    return "\n".join(diff)


@pytest.mark.parametrize("block", CONSOLE, ids=lambda b: b.id)
def test_console_block(block: Block, tmp_path):
    if block.not_run is not None:
        pytest.skip(f"not run: {block.not_run}")
    root = scratch_tree(block, tmp_path / "repo")
    cwd = root / block.cwd
    for command, shown in commands(block):
        step = re.fullmatch(r"cd (\S+)(?: && (.*))?", command)
        if step:
            cwd = cwd / step.group(1)
            if not step.group(2):
                continue
            command = step.group(2)
        done = run(command, cwd)
        if not shown:
            assert done.returncode == 0, f"{block.id}: `{command}` failed:\n{done.stdout}"
            continue
        difference = differs("\n".join(shown), done.stdout)
        assert difference is None, f"{block.id}: `{command}` prints otherwise:\n{difference}"


def test_every_shown_command_is_in_a_console_block():
    """A `$ ` command shown in another kind of block would escape the run."""
    stray = [b.id for b in ALL if b.language != "console" and any(line.startswith("$ ") for line in b.lines)]
    assert stray == []
    assert len(CONSOLE) >= 40


def test_the_matcher_compares_numbers_to_a_tolerance_and_the_rest_exactly():
    assert differs("loss  scalar  0.5183549628810483", "loss  scalar  0.51835496288") is None
    assert differs("loss  scalar  0.518", "loss  scalar  0.519") is not None
    assert differs("loss  scalar  0.518", "loss  vector  0.518") is not None
    assert differs("3×3  1.4e-10  2e-17", "3×3  1.1e-10  0") is None
    assert differs("100 steps in … (… a step)\nok", "100 steps in 0.2 s (1.6 ms a step)\nok") is None
    assert differs("head\n…\ntail 1", "head\na\nb\ntail 1.0000000001") is None
    assert differs("head\n…\ntail 1", "head\na\nb\ntail 2") is not None
    assert differs("a\nb", "a") is not None


SYNOPSES = [b for b in ALL if b.synopsis is not None]


def synopsis_lines(block: Block) -> dict[str, str]:
    """COMMAND -> its synopsis, continuation lines (indented) joined."""
    lines: dict[str, str] = {}
    for line in block.lines:
        if line.startswith("spiread "):
            command = line.split()[1]
            lines[command] = line
        else:
            lines[command] += " " + line.strip()
    return lines


@pytest.mark.parametrize("block", SYNOPSES, ids=lambda b: b.id)
def test_synopsis_lists_the_commands_real_options(block: Block):
    """Every option of the command, and each choice of an option that takes
    one of a few, as `--help` has them; the options named in the directive
    (`<!-- synopsis: --debug ... -->`) are described beside it instead."""
    import typer

    from spiread_cli.cli import app
    described = set(block.synopsis.split())
    for command, line in synopsis_lines(block).items():
        params = [p for p in typer.main.get_command(app).commands[command].params if p.param_type_name == "option"]
        real = {opt: sorted(getattr(p.type, "choices", None) or []) for p in params
                for opt in p.opts[:1] + p.secondary_opts}  # a flag's off switch too: --sparse/--no-sparse
        shown = dict(re.findall(r"(--[a-z-]+)(?:[ =]([\w.]+(?:\|[\w.]+)+))?", line))
        assert set(shown) | (described & set(real)) == set(real), f"spiread {command}: {line}"
        for option, choices in shown.items():
            if choices and real[option]:
                assert sorted(choices.split("|")) == real[option], f"spiread {command} {option}"


def test_directives_reach_the_blocks_they_stand_before(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("<!-- cwd: tests/bad -->\n<!-- not run: needs a cluster -->\n```console\n$ spiread eval a.ad\n```\n"
                    "<!-- given: x/names.txt = ../shared/names.txt -->\n```console\n$ spiread eval b.ad\nout\n```\n"
                    "<!-- synopsis: --debug -->\n```\nspiread eval FILE\n```\n")
    first, second, third = blocks(page)
    assert (first.cwd, first.not_run, first.given, first.line) == ("tests/bad", "needs a cluster", {}, 3)
    assert (second.cwd, second.not_run, second.given) == ("tests/bad", None, {"x/names.txt": "../shared/names.txt"})
    assert commands(second) == [("spiread eval b.ad", ["out"])]
    assert (third.language, third.synopsis, first.synopsis) == ("", "--debug", None)
