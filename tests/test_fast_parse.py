"""The fast parse path (parse_driver.TableDriver) against Lark's ordinary parse.

`syntax.parse` reads a program with a tighter driver over Lark's own tables,
lexers and rule callbacks, and falls back to Lark for a syntax error. Both
must give the same AST (every node, every span) for any program that parses,
and the same error, at the same span, for any that does not. The reference
here is `syntax.parse` with the fast path switched off: Lark's parser alone,
as it read every program before.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import EXAMPLES
from programs import programs
from test_fuzz import language_text, mutated_programs
from spiread_cli import lark_tables, parse_driver, syntax
from spiread_cli.syntax_builder import AstBuilder
from spiread_cli.diagnostics import Source, SpireadError

TESTS = Path(__file__).parent
CORPUS = sorted({*EXAMPLES.rglob("*.ad"), *(TESTS / "golden").rglob("*.ad"), *(TESTS / "bad").rglob("*.ad")})
SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)


def text_of(path: Path) -> str:
    return path.read_bytes().decode("utf-8", errors="replace")  # tests/bad has a UTF-16 file


def dump(value):
    """An AST as plain nested data, spans included (NumberArray's arrays as lists)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return (type(value).__name__,) + tuple(dump(getattr(value, f.name)) for f in dataclasses.fields(value))
    if isinstance(value, np.ndarray):
        return ("array", value.shape, value.tolist())
    if isinstance(value, list):
        return [dump(v) for v in value]
    return value  # a Span, a str, a float, None


def outcome(text: str, fast: bool, monkeypatch) -> tuple:
    """What `syntax.parse` gives: the AST, or the error with its span and notes."""
    def lark_only():
        raise parse_driver.NotOnTheFastPath

    with monkeypatch.context() as patch:
        if not fast:
            patch.setattr(syntax._get_driver(), "parse", lambda text: lark_only())
        try:
            module = syntax.parse(Source("t.ad", text))
        except SpireadError as err:
            d = err.diagnostic
            return ("error", d.message, d.span, d.notes, d.related)
    return ("ok", dump(module.statements))


def same(text: str, monkeypatch) -> tuple:
    fast, lark = outcome(text, True, monkeypatch), outcome(text, False, monkeypatch)
    assert fast == lark, text
    return fast


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_every_example_and_golden_program_reads_the_same(path, monkeypatch):
    same(text_of(path), monkeypatch)


def test_the_corpus_holds_programs_and_syntax_errors(monkeypatch):
    """So the test above compares both paths, the driver's and Lark's."""
    outcomes = [same(text_of(path), monkeypatch) for path in CORPUS]
    assert any(o[0] == "ok" for o in outcomes)
    assert any(o[0] == "error" and o[1].startswith("unexpected") for o in outcomes)


@pytest.mark.parametrize("version", ["1.2.2", "1.4.0", "2.0", "unknown"])
def test_under_an_untested_lark_lark_parses_alone_and_the_same(version, cache_home, monkeypatch):
    """The driver reads Lark's private structures, so it runs only under the
    Lark releases it is tested against (pyproject.toml pins the same range).
    Under any other Lark, Lark's own parser reads every program, giving the
    same ASTs and the same messages as the driver does."""
    import lark
    fast = [outcome(text_of(path), True, monkeypatch) for path in CORPUS]
    assert lark_tables.tested(lark.__version__)
    assert not lark_tables.tested(version)
    monkeypatch.setattr(lark, "__version__", version)
    monkeypatch.setattr(syntax, "_driver", None)
    assert syntax._get_driver() is None
    lark_parses = []
    monkeypatch.setattr(syntax, "_lark_parse", lambda source, read=syntax._lark_parse: lark_parses.append(1) or read(source))
    assert [outcome(text_of(path), True, monkeypatch) for path in CORPUS] == fast
    assert len(lark_parses) == len(CORPUS)


def test_pyproject_pins_the_tested_lark():
    import tomllib
    project = tomllib.loads((TESTS.parent / "pyproject.toml").read_text())["project"]
    (low, high), = [lark_tables.TESTED]
    pin = f"lark>={low[0]}.{low[1]},<{high[0]}.{high[1]}"
    assert pin in project["dependencies"]


@SETTINGS
@given(programs())
def test_random_programs_read_the_same(program):
    with pytest.MonkeyPatch.context() as monkeypatch:
        assert same(program.source, monkeypatch)[0] == "ok"


@settings(SETTINGS, max_examples=300)
@given(mutated_programs())
def test_mutated_examples_read_the_same(text):
    with pytest.MonkeyPatch.context() as monkeypatch:
        same(text, monkeypatch)


@settings(SETTINGS, max_examples=300)
@given(language_text)
def test_random_text_reads_the_same(text):
    with pytest.MonkeyPatch.context() as monkeypatch:
        same(text, monkeypatch)


# Pieces of every construct the grammar has, so random sequences of them meet
# the keywords, blocks, givens, lambdas, imports, strings and literals too.
PIECES = ["x", "y2", "_w", "1", "2.5", ".5", "3.", "1e-3", "[1, 2]", "[[1, 2], [3, 4]]", "[-1,\n 2]", '"a.csv"',
          '"q\\"', "+", "-", "*", "/", "**", "@@", "@", "(", ")", "[", "]", "{", "}", ",", ".", "=", "=>", ":",
          ";", "\n", "\r\n", " ", "\t", "# c\n", "// c\n", "val ", "def ", "given ", "import a.b\n", "import = 1\n",
          "Double", "sum", ".exp", ".T", "(a = 1)", "x => x", "f(x: Double)", "[T: Field]"]


@settings(SETTINGS, max_examples=400)
@given(st.lists(st.sampled_from(PIECES), max_size=30).map("".join))
def test_random_pieces_of_every_construct_read_the_same(text):
    with pytest.MonkeyPatch.context() as monkeypatch:
        same(text, monkeypatch)


@pytest.mark.parametrize("text", [
    "",
    "\n\n",
    "x = 1",                                  # no final newline
    "x = (1 +\n 2)\ny = [x,\n x]\n",          # newlines inside brackets
    "x = {1}\n",                              # a brace outside a def
    "def f[T: Field](x: T, y: T): T = {\n val s = x * y\n s + x\n}\nz = f(1, 2)\n",
    "given jd: JetDim = JetDim(1)\nval x: Double = 1\nimport spire.math._\n",
    "y = x.sin.cos\n" + "(" * 200 + "1" + ")" * 200 + "\n",
    "x = [1, 2\ny = 3\n",                     # unclosed
    "x = 1)\n",                               # unmatched
    "x = [1, 2)\n",                           # the wrong closer
    "x = \"abc\n",                            # unterminated string
    "x = 1 × 2\n",                            # a character from elsewhere
    "x = a[b = 1]\n",                         # an error the AST builder raises
    "x = a[b = 1]\ny = (\n",                  # ... before a syntax error later
    "val = 2\ndef = 3\ngiven = 4\n",
])
def test_edge_cases_read_the_same(text, monkeypatch):
    same(text, monkeypatch)


def test_a_long_program_reads_the_same(monkeypatch):
    import sys
    sys.path.insert(0, str(TESTS.parent / "benchmarks"))
    from load import lines_program
    assert same(lines_program(2_000), monkeypatch)[0] == "ok"


def test_a_program_that_parses_never_reaches_lark_s_parser(monkeypatch):
    """The fast path is taken, not quietly left for Lark on every program."""
    def refuse(text):
        raise AssertionError("Lark's parser was used")
    monkeypatch.setattr(syntax._get_parser(), "parse", refuse)
    for path in EXAMPLES.rglob("*.ad"):
        syntax.parse(Source(path.name, text_of(path)))
    with pytest.raises(AssertionError, match="Lark's parser was used"):
        syntax.parse(Source("bad.ad", "x = (1\n"))


@pytest.fixture
def cache_home(tmp_path, monkeypatch) -> Path:
    """An empty cache home of this user's: the parse tables go to its `spiread/`."""
    home = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(home))
    return home


def test_the_cached_tables_are_lark_s(cache_home, monkeypatch):
    """The tables the fast path reads come from Lark, are written to the
    cache, read back from it without Lark, and a cache made from anything
    else (another grammar, Lark or syntax.py) is not used."""
    import marshal
    fresh = lark_tables.tables_of(syntax._get_parser())
    # Made by another Lark (whose terminals are its Tokens, which marshal
    # refuses), they too can be written, and read every example the same.
    afresh = lark_tables.tables_of(syntax._lark())
    assert marshal.loads(marshal.dumps(afresh)) == afresh
    for path in EXAMPLES.rglob("*.ad"):
        text = text_of(path)
        assert dump(parse_driver.TableDriver(afresh, AstBuilder()).parse(text)) == dump(syntax._get_driver().parse(text)), path
    assert syntax._load_tables() == fresh
    folder = cache_home / "spiread"
    cache, = folder.iterdir()
    assert folder.stat().st_mode & 0o777 == 0o700  # made owner-only
    made = []
    monkeypatch.setattr(lark_tables, "tables_of", lambda lark: made.append(lark) or fresh)
    assert syntax._load_tables() == fresh and made == []
    key, tables = marshal.loads(cache.read_bytes())
    cache.write_bytes(marshal.dumps((key[:-1] + ("another syntax.py",), {**tables, "start": -1})))
    assert syntax._load_tables() == fresh and len(made) == 1
    assert marshal.loads(cache.read_bytes()) == (key, fresh)  # made again
    # Written for this user alone; one that others may write is not read
    # (marshal trusts its data).
    assert cache.stat().st_mode & 0o777 == 0o600
    cache.chmod(0o666)
    assert syntax._load_tables() == fresh and len(made) == 2
    assert cache.stat().st_mode & 0o777 == 0o600  # replaced by one of ours
    assert [p.name for p in folder.iterdir()] == [cache.name]  # no partial file left


def test_without_sources_to_key_the_cache_on_the_tables_come_from_lark(cache_home, monkeypatch):
    """Installed as bytecode only, or from a zip, there is no syntax.py or
    Lark source to read: no cache is written or read, Lark makes the tables."""

    def unreadable():
        raise FileNotFoundError("syntax.py")
    monkeypatch.setattr(syntax, "_cache_key", unreadable)
    assert syntax._load_tables() == lark_tables.tables_of(syntax._get_parser())
    assert not cache_home.exists()


def planted(cache_home: Path) -> dict:
    """A cache file whose key is right but whose tables are not Lark's; the
    real tables are returned."""
    import marshal
    syntax._load_tables()
    cache, = (cache_home / "spiread").iterdir()
    key, tables = marshal.loads(cache.read_bytes())
    cache.write_bytes(marshal.dumps((key, {**tables, "start": -1})))
    return tables


@pytest.mark.parametrize("make_unsafe", [
    lambda folder: folder.chmod(0o777),  # others may write the folder
    lambda folder: folder.chmod(0o720),
    lambda folder: (folder.rename(folder.with_name("elsewhere")),  # a link, wherever it points
                    folder.symlink_to(folder.with_name("elsewhere"))),
], ids=["world-writable", "group-writable", "a symbolic link"])
def test_a_cache_folder_others_may_write_is_not_read(cache_home, make_unsafe):
    tables = planted(cache_home)
    make_unsafe(cache_home / "spiread")
    assert syntax._load_tables() == tables


def test_a_named_pipe_at_the_cache_s_name_is_not_waited_on(cache_home):
    """Opening a FIFO for reading blocks until a writer comes: the cache is
    opened non-blocking and read only if it is a regular file."""
    folder = cache_home / "spiread"
    folder.mkdir(mode=0o700, parents=True)
    cache = folder / syntax._cache_name(syntax._cache_key())
    os.mkfifo(cache, 0o600)
    assert syntax._load_tables() == lark_tables.tables_of(syntax._get_parser())
    os.remove(cache)
    os.mkfifo(cache, 0o600)
    done = subprocess.run([sys.executable, "-m", "spiread_cli", "eval", str(EXAMPLES / "seed.ad")],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "XDG_CACHE_HOME": str(cache_home)})
    assert done.returncode == 0, done.stderr


# Run as `python -c PROBE eval FILE`: spiread's main with every file it opens
# recorded and unpickling made to fail loudly.
PROBE = """
import json, pickle, sys
opened = []
sys.addaudithook(lambda event, args: opened.append(str(args[0])) if event == 'open' else None)
def refuse(*args, **kwargs):
    raise AssertionError('unpickled')
pickle.load = pickle.loads = pickle.Unpickler = refuse
from spiread_cli.__main__ import main
try:
    main()
except SystemExit as stop:
    print(json.dumps([stop.code, opened]), file=sys.__stdout__)
"""


def test_nothing_in_the_temporary_folder_is_read_or_unpickled(tmp_path, cache_home):
    """Lark's own cache was a pickle at a predictable name in the shared
    temporary folder: another user could plant one there that ran as code
    at the next syntax error. Such a planted file (at the very name Lark
    would use) is not read, nor is any other file in the temporary folder,
    and nothing is unpickled, by a program that parses or one that does not."""
    import tempfile
    from lark import Lark
    shared = tmp_path / "shared-tmp"
    shared.mkdir()
    tempfile.tempdir, before = str(shared), tempfile.tempdir
    try:  # Lark's cache, made as spiread used to make it, names the file to plant
        Lark(syntax.grammar_text(), parser="lalr", postlex=syntax._BracketPostLexer(), transformer=AstBuilder(),
             maybe_placeholders=True, cache=True)
    finally:
        tempfile.tempdir = before
    lark_cache, = shared.iterdir()
    ran = tmp_path / "ran"
    lark_cache.write_bytes(b"cos\nsystem\n(S'touch " + str(ran).encode() + b"'\ntR.")
    for text, code in (("x = (1 + 2\n", 1), ("x = 1 + 2\n", 0)):
        program = tmp_path / "p.ad"
        program.write_text(text)
        done = subprocess.run([sys.executable, "-c", PROBE, "eval", str(program)], capture_output=True, text=True,
                              timeout=60, env={**os.environ, "TMPDIR": str(shared), "XDG_CACHE_HOME": str(cache_home)})
        exit_code, opened = json.loads(done.stdout.splitlines()[-1])
        assert exit_code == code, done.stderr
        assert [path for path in opened if path.startswith(str(shared))] == []
        assert "unpickled" not in done.stderr
    assert not ran.exists()
    assert list(shared.iterdir()) == [lark_cache]


def test_syntax_errors_in_threads_report_their_own_brackets():
    """The post-lexer's memory of open brackets is per thread: programs that
    fail in parallel each name the bracket they opened."""
    from concurrent.futures import ThreadPoolExecutor

    def error(width: int) -> tuple:
        text = "x = " + " " * width + "(1 +\n" + "y = 2\n" * 200
        with pytest.raises(SpireadError) as caught:
            syntax._lark_parse(Source("t.ad", text))
        d = caught.value.diagnostic
        return d.message, d.span, d.notes, d.related

    alone = {width: error(width) for width in range(4)}
    assert len(set(map(str, alone.values()))) == len(alone)  # each names its own column
    switching = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads take turns within one parse
    try:
        with ThreadPoolExecutor(4) as pool:
            widths = list(range(4)) * 3
            assert list(pool.map(error, widths)) == [alone[w] for w in widths]
    finally:
        sys.setswitchinterval(switching)


@settings(SETTINGS, max_examples=100)
@given(st.lists(st.sampled_from(PIECES), max_size=20).map("".join))
def test_the_root_alternation_lexes_as_each_state_s_own(text):
    """Where the root lexer's match is a terminal the fast path takes from
    it for a state (`_shared`), the state's own alternation matches the same
    terminal and text, at every position of the text, in every state."""
    import re
    tables = syntax._load_tables()
    root = re.compile(tables["root"], tables["flags"])
    for alternation, shared in zip(tables["alternations"], tables["shared"]):
        own = re.compile(alternation, tables["flags"])
        for pos in range(len(text)):
            match = root.match(text, pos)
            if match is not None and match.lastgroup in shared:
                mine = own.match(text, pos)
                assert (mine.lastgroup, mine.group()) == (match.lastgroup, match.group())
