"""Data files against hostile and careless input: `load("path")` and
`--set NAME=PATH` return a float64 array of rank ≤ 2 with the rank the file
holds, or a SpireadError of one bounded sentence naming the file; they never
hang, never read what is not a regular file, and never allocate before the
declared size is known to be within SPIREAD_MAX_BYTES."""

from __future__ import annotations

import io
import json
import os
import struct
import tracemalloc
import zipfile
from math import prod
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import run, spiread
from spiread_cli.program import Program
from spiread_cli.data import load_array
from spiread_cli.data_open import shown
from spiread_cli.data_text import TextTable
from spiread_cli.diagnostics import SpireadError

FUZZ = settings(max_examples=150, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def write(folder: Path, name: str, content: bytes | str) -> Path:
    path = folder / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def message(path: Path, name: str | None = None) -> str:
    with pytest.raises(SpireadError) as err:
        load_array(path, name=name)
    text = err.value.diagnostic.message
    assert len(text) < 300 and "\n" not in text, text
    return text


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def npy_with_header(header: str, data: bytes = b"", version: int = 1) -> bytes:
    """An .npy file whose header text is exactly `header` (no padding added)."""
    length = struct.pack("<H" if version == 1 else "<I", len(header))
    return b"\x93NUMPY" + bytes([version, 0]) + length + header.encode("latin1") + data


def header(shape, descr="'<f8'", fortran="False") -> str:
    return f"{{'descr': {descr}, 'fortran_order': {fortran}, 'shape': {shape}, }}\n"


def npz_bytes(members: dict[str, bytes], compression=zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return buffer.getvalue()


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


# ------------------------------------------------ 1. sizes checked before reading


def test_an_npy_header_declaring_too_much_is_refused_before_reading(in_tmp, monkeypatch):
    monkeypatch.setenv("SPIREAD_MAX_BYTES", str(1 << 30))
    path = write(in_tmp, "big.npy", npy_with_header(header("(40000, 40000)")))
    with pytest.raises(SpireadError) as err:
        load_array(path)
    assert err.value.diagnostic.message == (
        "cannot load `big.npy`: its array would be 40000×40000 (11.9 GB), more than the limit of 1.0 GB")
    assert err.value.diagnostic.notes == ("set SPIREAD_MAX_BYTES (in bytes) to raise the limit",
                                          "for data larger than memory, `--backend dask` reads .npy, .zarr and text "
                                          "(.csv, .tsv, .txt) files a chunk of rows at a time (docs/scaling.md)")


def test_the_limit_counts_float64_bytes_whatever_the_stored_type(in_tmp, monkeypatch):
    monkeypatch.setenv("SPIREAD_MAX_BYTES", "800")
    write(in_tmp, "ok.npy", npy_bytes(np.arange(100, dtype=np.int8)))
    assert load_array(in_tmp / "ok.npy").dtype == np.float64
    write(in_tmp, "over.npy", npy_bytes(np.arange(101, dtype=np.int8)))
    assert message(in_tmp / "over.npy") == (
        "cannot load `over.npy`: its array would be a vector of 101 (808 bytes), more than the limit of 800 bytes")


def test_a_zip_bomb_member_is_refused_by_its_uncompressed_size(in_tmp, monkeypatch):
    monkeypatch.setenv("SPIREAD_MAX_BYTES", str(1 << 20))
    bomb = npz_bytes({"x.npy": npy_bytes(np.zeros(1 << 18))}, zipfile.ZIP_DEFLATED)
    assert len(bomb) < 10_000
    assert message(write(in_tmp, "bomb.npz", bomb)) == (
        "cannot load `bomb.npz`: its member `x.npy` unpacks to 2.0 MB, more than the limit of 1.0 MB")


def test_an_npz_member_header_declaring_too_much_is_refused(in_tmp, monkeypatch):
    monkeypatch.setenv("SPIREAD_MAX_BYTES", "1000")
    path = write(in_tmp, "w.npz", npz_bytes({"w.npy": npy_with_header(header("(1000, 1000)"))}))
    assert message(path, name="w") == ("cannot load `w.npz`: its member `w.npy` would be 1000×1000 (7.6 MB), "
                                       "more than the limit of 1000 bytes")


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".txt", ".json"])
def test_text_is_refused_by_the_most_numbers_its_size_allows(in_tmp, monkeypatch, suffix):
    # a number takes at least 2 bytes (`1,`): a byte may cost 4 as float64 (32 parsing JSON)
    monkeypatch.setenv("SPIREAD_MAX_BYTES", "4096")
    largest = ("[" + ",".join(["1"] * 63) + "]").ljust(128) if suffix == ".json" else "1\n" * 512
    assert load_array(write(in_tmp, "ok" + suffix, largest)).size == (63 if suffix == ".json" else 512)
    kind = "JSON" if suffix == ".json" else "text"
    assert message(write(in_tmp, "big" + suffix, largest + "1")) == (
        f"cannot load `big{suffix}`: reading {'129 bytes' if suffix == '.json' else '1.0 KB'} of {kind} "
        "may take up to 4.0 KB, more than the limit of 4.0 KB")  # 4,100 and 4,128 bytes, rounded


def test_set_names_the_option_when_a_file_is_too_big(in_tmp):
    write(in_tmp, "p.ad", "w = [1.0, 2.0]\nloss = w.sum\n")
    write(in_tmp, "big.npy", npy_with_header(header("(40000, 40000)")))
    done = spiread("eval", "p.ad", "--set", "w=big.npy", cwd=in_tmp, env={"SPIREAD_MAX_BYTES": "1e6"})
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.splitlines()[0] == ("spiread: error: `--set w=big.npy`: cannot load `big.npy`: its array "
                                           "would be 40000×40000 (11.9 GB), more than the limit of 976.6 KB")
    assert "SPIREAD_MAX_BYTES" in done.stderr


def test_load_of_a_file_too_big_is_located_at_the_call(in_tmp):
    write(in_tmp, "p.ad", 'w = load("big.npy")\nloss = w.sum\n')
    write(in_tmp, "big.npy", npy_with_header(header("(40000, 40000)")))
    done = spiread("eval", "p.ad", cwd=in_tmp, env={"SPIREAD_MAX_BYTES": "1e6"})
    assert done.returncode == 1
    assert done.stderr.startswith("p.ad:1:10: error: cannot load `big.npy`: its array would be 40000×40000")


def test_a_header_promising_more_than_the_file_holds_is_cut_short(in_tmp, monkeypatch):
    monkeypatch.setenv("SPIREAD_MAX_BYTES", str(1 << 40))
    path = write(in_tmp, "short.npy", npy_bytes(np.arange(6.0).reshape(2, 3))[:-8])
    assert message(path) == "cannot load `short.npy`: it is cut short: its 2×3 array needs 48 bytes, but only 40 are there"
    # declared 11.9 GB, within the raised limit, is not allocated for a file that cannot hold it
    path = write(in_tmp, "big.npy", npy_with_header(header("(40000, 40000)")))
    assert "is cut short: its 40000×40000 array needs 12,800,000,000 bytes, but only 0" in message(path)


# ------------------------------------------------ 2. only regular files, reads capped


def test_a_fifo_is_refused_without_blocking(in_tmp):
    os.mkfifo(in_tmp / "pipe.csv")
    assert message(in_tmp / "pipe.csv") == "cannot load `pipe.csv`: it is a named pipe (FIFO), not a regular file"


@pytest.mark.parametrize("suffix", [".npy", ".csv", ".json", ".npz"])
def test_a_link_to_a_device_is_refused(in_tmp, suffix):
    (in_tmp / f"zero{suffix}").symlink_to("/dev/zero")
    assert message(in_tmp / f"zero{suffix}") == f"cannot load `zero{suffix}`: it is a device, not a regular file"


def test_a_link_to_a_file_is_followed_and_a_broken_link_is_missing(in_tmp):
    write(in_tmp, "real.csv", "1,2\n3,4\n")
    (in_tmp / "link.csv").symlink_to(in_tmp / "real.csv")
    np.testing.assert_array_equal(load_array(in_tmp / "link.csv"), [[1, 2], [3, 4]])
    (in_tmp / "dangling.csv").symlink_to(in_tmp / "gone.csv")
    assert message(in_tmp / "dangling.csv") == "cannot load `dangling.csv`: no such file"
    (in_tmp / "loop.csv").symlink_to(in_tmp / "loop.csv")
    assert message(in_tmp / "loop.csv") == "cannot load `loop.csv`: Too many levels of symbolic links"


def test_a_file_whose_size_is_not_reported_is_read_only_up_to_the_limit(in_tmp, monkeypatch):
    # /proc files report size 0 but have contents: the read itself is capped
    monkeypatch.setenv("SPIREAD_MAX_BYTES", "64")
    (in_tmp / "status.txt").symlink_to("/proc/self/status")
    assert message(in_tmp / "status.txt") == ("cannot load `status.txt`: reading 17 bytes of text may take up to "
                                              "68 bytes, more than the limit of 64 bytes")


def test_unreadable_and_oddly_named_paths(in_tmp):
    assert message(in_tmp / "a\0b.csv") == "cannot load `a\\x00b.csv`: a file name cannot hold a NUL byte"
    assert message(in_tmp) == "cannot load `.`: it is a directory"
    write(in_tmp, "p.ad", 'x = load("")\n')
    with pytest.raises(SpireadError) as err:
        Program.open(str(in_tmp / "p.ad")).run()
    assert err.value.diagnostic.message == "`load` names no file: the path is empty"
    assert (err.value.diagnostic.span.line, err.value.diagnostic.span.column) == (1, 10)
    locked = write(in_tmp, "locked.csv", "1\n")
    locked.chmod(0)
    if os.access(locked, os.R_OK):
        pytest.skip("running as root: permissions do not stop reading")
    assert message(locked) == "cannot load `locked.csv`: Permission denied"


# ------------------------------------------------ 3. scalars stay scalars


@pytest.mark.parametrize("name, content", [
    ("s.npy", npy_bytes(np.array(2.5))),
    ("s.npz", npz_bytes({"s.npy": npy_bytes(np.array(2.5))})),
    ("s.json", "2.5"),
], ids=["npy", "npz", "json"])  # an npz's bytes hold a timestamp: not an id xdist workers agree on
def test_a_scalar_stays_a_scalar_in_every_format_that_has_one(in_tmp, name, content):
    value = load_array(write(in_tmp, name, content))
    assert value.shape == () and value.dtype == np.float64 and float(value) == 2.5


@pytest.mark.parametrize("name, content", [("s.csv", "2.5\n"), ("s.txt", "# a learning rate\n2.5"),
                                           ("s.tsv", "rate\n2.5\n"), ("h.csv", "a\n2.5")])
def test_a_table_of_one_number_is_a_column_so_a_vector_of_one(in_tmp, name, content):
    """LANGUAGE.md §7: one column gives a vector; a table has no rank 0 (a scalar is a JSON number or an .npy's)."""
    path = write(in_tmp, name, content)
    np.testing.assert_array_equal(load_array(path), np.array([2.5]), strict=True)
    table = TextTable.scan(path)
    assert table.shape == (1,) and table.rows == 1
    np.testing.assert_array_equal(table.read(0, 1), np.array([2.5]), strict=True)


@pytest.mark.parametrize("array", [np.arange(3.0), np.arange(6.0).reshape(2, 3), np.arange(6.0).reshape(2, 3).T,
                                   np.arange(4, dtype=">i4"), np.array([True, False]), np.zeros((0, 3))])
def test_npy_and_npz_keep_shape_order_and_values(in_tmp, array):
    for name, content in (("a.npy", npy_bytes(array)), ("a.npz", npz_bytes({"a.npy": npy_bytes(array)}))):
        value = load_array(write(in_tmp, name, content))
        assert value.dtype == np.float64 and value.flags.c_contiguous and value.flags.writeable
        np.testing.assert_array_equal(value, array.astype(np.float64))


def test_long_doubles_beyond_float64_are_refused_at_their_place(in_tmp):
    values = np.array([[1, np.inf], [np.longdouble("1e400"), 2]], dtype=np.longdouble)
    assert message(write(in_tmp, "l.npy", npy_bytes(values))) == (
        "cannot load `l.npy`: the number at [1, 0] is beyond the range spiread can hold (a float64 reaches about ±1.8e308)")
    np.testing.assert_array_equal(load_array(write(in_tmp, "ok.npy", npy_bytes(values[:1]))), [[1, np.inf]])


def test_a_trained_scalar_continues_through_set(in_tmp):
    write(in_tmp, "t.ad", "w = [1.0, 2.0]\nb = 0.5\nloss = ((w * 3).sum + b - 1) ** 2\n")
    trained = spiread("train", "t.ad", "--wrt", "w", "--wrt", "b", "--steps", "2", "--save", "wb.npz", cwd=in_tmp)
    assert trained.returncode == 0, trained.stderr
    with np.load(in_tmp / "wb.npz") as archive:
        saved_b, saved_w = float(archive["b"]), archive["w"]
    done = spiread("eval", "t.ad", "--set", "b=wb.npz", "--set", "w=wb.npz", "--format", "json", cwd=in_tmp)
    assert done.returncode == 0, done.stderr
    values = json.loads(done.stdout)["values"]
    assert values["b"]["shape"] == [] and values["b"]["value"] == saved_b
    assert values["w"]["value"] == saved_w.tolist()


# ------------------------------------------------ 4. CSV headers


def test_a_first_row_entirely_non_numeric_is_a_header(in_tmp):
    np.testing.assert_array_equal(load_array(write(in_tmp, "h.csv", "x,y\n1,2\n3,4\n")), [[1, 2], [3, 4]])
    # comments and blank lines before the header do not move it
    np.testing.assert_array_equal(load_array(write(in_tmp, "c.csv", "# data\n\nx,y\n1,2\n")), [[1, 2]])
    np.testing.assert_array_equal(load_array(write(in_tmp, "t.txt", "x y\n1 2\n3 4\n")), [[1, 2], [3, 4]])


@pytest.mark.parametrize("content, where", [
    ("a,2,3\n4,5,6\n", "line 1, column 1: `a`"),
    ("1,b,3\n4,5,6\n", "line 1, column 2: `b`"),
    ("# note\n1,2,three\n4,5,6\n", "line 2, column 3: `three`"),
    ("1,,3\n4,5,6\n", "line 1, column 2: ``"),
    ("1,2,3\n4,x,6\n", "line 2, column 2: `x`"),  # the same cell later: the same error
])
def test_a_partly_numeric_first_row_is_an_error_at_its_cell(in_tmp, content, where):
    assert message(write(in_tmp, "p.csv", content)) == f"cannot load `p.csv`: {where} is not a number"


@given(st.lists(st.sampled_from(["1", " 2.5 ", "-3e2", "nan", "x", "a name", "1a", ""]), min_size=1, max_size=5)
       .filter(lambda cells: "".join(cells).strip()))
@FUZZ
def test_header_rule(tmp_path, cells):
    path = write(tmp_path, "h.csv", ",".join(cells) + "\n" + ",".join(["7"] * len(cells)) + "\n")
    numeric = [cell not in ("x", "a name", "1a", "") for cell in cells]
    if all(numeric):
        assert load_array(path).shape == ((2, len(cells)) if len(cells) > 1 else (2,))
    elif not any(numeric):
        expected = np.full((1, len(cells)), 7.0) if len(cells) > 1 else np.array([7.0])  # one row; one column
        np.testing.assert_array_equal(load_array(path), expected, strict=True)
    else:
        column = numeric.index(False) + 1
        assert message(path).startswith(f"cannot load `{shown(path)}`: line 1, column {column}: ")


# ------------------------------------------------ 5. JSON values that are not numbers


@pytest.mark.parametrize("content, says", [
    ("[[1, 2], [3, null]]", "`[1][1]` is null, not a number"),
    ("[1, true]", "`[1]` is true, not a number"),
    ('[1, "2"]', "`[1]` is text (`2`), not a number"),
    ('[1, "Infinity"]', "`[1]` is text (`Infinity`), not a number"),  # the strings spiread writes, and no others
    ('[["nan", "-inf"], [1, "NaN"]]', "`[1][1]` is text (`NaN`), not a number"),
    ('"inf "', "it holds text (`inf `), not a number or lists of numbers"),
    ("[[1], [{}]]", "`[1][0]` is an object (`{…}`), not a number"),
    ("null", "it holds null, not a number or lists of numbers"),
    ('{"w": [1]}', "it holds an object (`{…}`), not a number or lists of numbers"),
    ("[1, " + "9" * 400 + "]", "`[1]` is 999999999999… (400 characters), beyond the range spiread can hold"),
    ("[[1e400]]", "`[0][0]` is 1e400, beyond the range spiread can hold"),
    ("-1e999", "it is -1e999, beyond the range spiread can hold"),
    ("[[1, 2], [3]]", "its rows have different lengths: `[1]` has 1 entry, `[0]` has 2 entries"),
    ("[[1], 2]", "`[1]` is a number, but `[0]` is a list (a row)"),
    ("[1, [2]]", "`[1]` is a list, but `[0]` is a number"),
    ("[[[1, 2]]]", "`[0][0]` is a list: it is 3-dimensional, spiread handles at most 2"),
])
def test_json_refuses_what_is_not_a_number_at_its_place(in_tmp, content, says):
    assert message(write(in_tmp, "d.json", content)).startswith(f"cannot load `d.json`: {says}")


def test_json_numbers_of_every_spelling(in_tmp):
    value = load_array(write(in_tmp, "d.json", "[[1, -2.5e3, 1" + "0" * 300 + "], [NaN, Infinity, 1E-400]]"))
    np.testing.assert_array_equal(value, [[1, -2500, 1e300], [np.nan, np.inf, 0.0]])
    assert load_array(write(in_tmp, "e.json", "[]")).shape == (0,)


@pytest.mark.parametrize("content, expected", [
    ('["-inf", 0.0, "inf", "nan"]', [-np.inf, 0.0, np.inf, np.nan]),
    ('[["nan", 1], [2, "-inf"]]', [[np.nan, 1.0], [2.0, -np.inf]]),
    ('"inf"', np.inf),
])
def test_json_reads_the_strings_spiread_writes_for_non_finite_numbers(in_tmp, content, expected):
    """LANGUAGE.md §8: non-finite numbers are the strings "inf", "-inf", "nan" in spiread's JSON."""
    np.testing.assert_array_equal(load_array(write(in_tmp, "d.json", content)), np.array(expected), strict=True)


def test_what_eval_writes_as_json_reads_back_through_load_and_set(in_tmp):
    write(in_tmp, "w.ad", "x = [1, 2, 3, 0]\ny = (x - 1).log / (x - 2)\n")  # inf, 0/0, log(2) / 1, nan / -2
    written = spiread("eval", "w.ad", "--format", "json", cwd=in_tmp)
    y = json.loads(written.stdout)["values"]["y"]
    assert y["value"][:2] == ["inf", "nan"] and y["value"][3] == "nan"
    (in_tmp / "y.json").write_text(json.dumps(y["value"]))
    with np.errstate(all="ignore"):
        want = np.log(np.array([1.0, 2.0, 3.0, 0.0]) - 1) / (np.array([1.0, 2.0, 3.0, 0.0]) - 2)
    write(in_tmp, "r.ad", 'x = load("y.json")\nz = [0, 0, 0, 0]\n')
    for sets in ([], ["--set", "z=y.json"]):
        done = spiread("eval", "r.ad", *sets, "--format", "json", cwd=in_tmp)
        assert done.returncode == 0, done.stderr
        values = json.loads(done.stdout)["values"]
        assert values["x"] == y and (values["z"] == y if sets else True)
    np.testing.assert_array_equal(run('x = load("y.json")', base_dir=in_tmp).value, want)


@pytest.mark.parametrize("word", ["inf", "-inf", "nan"])
def test_set_takes_a_non_finite_number_as_json_spells_it(in_tmp, word):
    write(in_tmp, "s.ad", "x = 1.0\ny = x * 2\n")
    done = spiread("eval", "s.ad", "--set", f"x={word}", "--format", "json", cwd=in_tmp)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["values"]["x"] == {"shape": [], "value": word}
    refused = spiread("eval", "s.ad", "--set", f"x=[1, {word}]", cwd=in_tmp)  # in a list: a file holds it
    assert refused.returncode == 2 and "a list holding inf or nan: a file" in refused.stderr


# ------------------------------------------------ 6. damaged files: one bounded sentence


@pytest.mark.parametrize("content, says", [
    (npy_with_header("{'descr': '<f8'\n"), "it has a damaged .npy header"),
    (npy_with_header("[1, 2]\n"), "it has a damaged .npy header"),
    (npy_with_header(header("(3,)", fortran="'no'")), "it has a damaged .npy header"),
    (npy_with_header(header("3")), "it has a damaged .npy header"),
    (npy_with_header(header("(-3,)")), "it has a .npy header declaring an impossible size"),
    (npy_with_header(header("(" + "9" * 1000 + ",)")), "it has a .npy header declaring an impossible size"),
    (npy_with_header(header("(3,)", descr="'<q9'")), "it has a .npy header naming no valid element type"),
    (npy_with_header(header("(3,)", descr="'|O'")), "it holds Python objects (pickled), which spiread never loads"),
    (npy_with_header(header("(3,)", descr="[('a', '<f8')]")), "it holds records with named fields, not real numbers"),
    (npy_with_header(header("(3,)", descr="'<c16'")), "it holds complex numbers, not real numbers"),
    (npy_with_header(header("(3,)", descr="'<U3'")), "it holds text, not real numbers"),
    (npy_with_header(header("(1, 1, 1)")), "it is 3-dimensional, spiread handles at most 2"),
    (npy_with_header(header("(1,)"), version=9), "it is a .npy file of a version spiread does not know (9)"),
    (b"\x93NUMPY\x01\x00\xff\xff", "it is cut short in its .npy header"),
    (b"\x93NUMPY\x02\x00\xff\xff\xff\xff", "it has a .npy header of 4,294,967,295 bytes, more than the 65,536"),
    (b"\x93NUMPY", "it is a .npy file of a version spiread does not know (None)"),
    (b"PK\x03\x04", "it is not a NumPy .npy file"),
    (b"", "it is empty"),
])
def test_a_damaged_npy_is_one_sentence(in_tmp, content, says):
    assert message(write(in_tmp, "d.npy", content)).startswith(f"cannot load `d.npy`: {says}")


def test_a_long_but_harmless_npy_header_is_read_not_called_pickled(in_tmp):
    text = header("(2,)")
    content = npy_with_header(text[:-1] + " " * 20_000 + "\n", np.arange(2.0).tobytes(), version=2)
    np.testing.assert_array_equal(load_array(write(in_tmp, "long.npy", content)), [0.0, 1.0])


@pytest.mark.parametrize("members, says", [
    ({}, "it holds no arrays"),
    ({"x.txt": b"hello"}, "it holds no arrays (its only member is not a .npy file)"),
    ({"x.txt": b"", "y.bin": b""}, "it holds no arrays (none of its 2 members is a .npy file)"),
    ({"x.npy": b"hello"}, "its member `x.npy` is not a NumPy .npy file"),
    ({"x.npy": npy_bytes(np.arange(3.0))[:-1]}, "its member `x.npy` is cut short: its 3 array needs 24 bytes"),
    ({"x.npy": npy_bytes(np.array(["a"]))}, "its member `x.npy` holds text, not real numbers"),
])
def test_a_damaged_npz_is_one_sentence(in_tmp, members, says):
    assert message(write(in_tmp, "d.npz", npz_bytes(members))).startswith(f"cannot load `d.npz`: {says}")


def test_an_npz_with_many_members_lists_a_few(in_tmp):
    path = write(in_tmp, "many.npz", npz_bytes({f"m{i}.npy": b"" for i in range(20_000)}))
    with pytest.raises(SpireadError) as err:
        load_array(path, name="w")
    assert err.value.diagnostic.message == "cannot load `many.npz`: it has no array called `w`"
    assert err.value.diagnostic.notes == ("it holds: m0, m1, m2, m3, m4 and 19,995 more",)


def test_an_npz_listing_too_many_members_is_refused_before_listing_them(in_tmp, monkeypatch):
    monkeypatch.setenv("SPIREAD_MAX_BYTES", str(1 << 20))
    path = write(in_tmp, "many.npz", npz_bytes({f"m{i}.npy": b"" for i in range(2_000)}))
    assert message(path) == ("cannot load `many.npz`: its list of 2,000 members may take up to 1.7 MB to read, "
                             "more than the limit of 1.0 MB")


def test_a_corrupt_or_truncated_npz_is_one_sentence(in_tmp):
    good = npz_bytes({"x.npy": npy_bytes(np.arange(100.0))}, zipfile.ZIP_DEFLATED)
    start = good.index(b"x.npy") + len(b"x.npy")
    corrupt = good[:start + 10] + bytes(b ^ 0xFF for b in good[start + 10:start + 60]) + good[start + 60:]
    assert message(write(in_tmp, "c.npz", corrupt)).startswith("cannot load `c.npz`: it is a damaged or unsupported")
    assert message(write(in_tmp, "t.npz", good[:len(good) // 2])).startswith(
        "cannot load `t.npz`: it is a damaged or unsupported .npz archive")
    encrypted = bytearray(npz_bytes({"x.npy": npy_bytes(np.arange(3.0))}))
    encrypted[6] |= 1  # the "encrypted" flag, in the member's header and in the archive's list
    encrypted[encrypted.index(b"PK\x01\x02") + 8] |= 1
    assert message(write(in_tmp, "e.npz", bytes(encrypted))) == "cannot load `e.npz`: its member `x.npy` is encrypted"
    assert message(write(in_tmp, "n.npz", "not a zip")) == "cannot load `n.npz`: it is not a NumPy .npz archive"
    assert message(write(in_tmp, "empty.npz", "")) == "cannot load `empty.npz`: it is empty"


# ------------------------------------------------ 7. fuzzing


LIMIT = 4096


@pytest.fixture
def small_limit(monkeypatch):
    monkeypatch.setenv("SPIREAD_MAX_BYTES", str(LIMIT))


def load_within_limit(path: Path, name: str | None = None) -> None:
    """The property: a float64 array of rank ≤ 2 or a SpireadError, and no
    allocation far beyond the limit (numpy's buffers are traced too)."""
    tracemalloc.start()
    try:
        value = load_array(path, name=name)
    except SpireadError as err:
        assert len(err.diagnostic.message) < 300 and "\n" not in err.diagnostic.message
    else:
        assert isinstance(value, np.ndarray) and value.dtype == np.float64 and value.ndim <= 2
        assert value.nbytes <= LIMIT
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak < 8 * LIMIT + (256 << 10), peak


# mostly shapes and element types spiread reads, so many files load (and some are too big)
SHAPES = st.one_of(st.tuples(), st.tuples(st.integers(-2, 600)), st.tuples(st.integers(0, 60), st.integers(0, 60)),
                   st.tuples(st.integers(0, 60), st.integers(0, 60)),
                   st.lists(st.integers(-(2 ** 70), 2 ** 70), max_size=4).map(tuple))
# element types with their sizes (0: not one spiread reads)
DESCRS = st.sampled_from([("'<f8'", 8), ("'>f4'", 4), ("'|u1'", 1), ("'|b1'", 1), ("'<i8'", 8), ("'<f16'", 16)] * 2 + [
                          ("'<c8'", 0), ("'|O'", 0), ("'<U2'", 0), ("'V8'", 0), ("[('a', '<f8')]", 0),
                          ("('<f8', (2,))", 0), ("'<f8x'", 0), ("3", 0), ("None", 0), ("'<M8[s]'", 0)])


@st.composite
def npy_files(draw) -> bytes:
    shape, (descr, itemsize) = draw(SHAPES), draw(DESCRS)
    text = header(repr(shape), descr, draw(st.sampled_from(["False", "True"] * 3 + ["1", "None"])))
    declared = prod(shape) * max(itemsize, 1) if all(0 <= n <= 600 for n in shape) and len(shape) <= 2 else None
    exact = declared is not None and declared <= 1 << 16 and draw(st.booleans())  # often exactly the data it declares
    data = draw(st.binary(min_size=declared, max_size=declared) if exact else st.binary(max_size=400))
    content = npy_with_header(text, data, draw(st.sampled_from([1, 2, 3])))
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2]))):  # mutate: flip, cut, or insert bytes
        at = draw(st.integers(0, len(content)))
        content = draw(st.sampled_from([
            content[:at] + bytes([draw(st.integers(0, 255))]) + content[at + 1:],
            content[:at],
            content[:at] + draw(st.binary(min_size=1, max_size=8)) + content[at:],
        ]))
    return content


@given(npy_files())
@FUZZ
def test_fuzz_npy(tmp_path, small_limit, content):
    load_within_limit(write(tmp_path, "f.npy", content))


@given(st.dictionaries(st.sampled_from(["a.npy", "b.npy", "c", "d/e.npy", ".npy"]),
                       st.one_of(npy_files(), st.binary(max_size=64)), max_size=3),
       st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA]),
       st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=3), st.sampled_from([None, "a"]))
@FUZZ
def test_fuzz_npz(tmp_path, small_limit, members, compression, flips, name):
    content = bytearray(npz_bytes(members, compression))
    for at, byte in flips:
        content[at % len(content)] = byte
    load_within_limit(write(tmp_path, "f.npz", bytes(content)), name)


TEXT = st.lists(st.sampled_from(list("0123456789.,;-+eE \t\n#\"[]{}:xnaif") + ["null", "true", "NaN", "1e999",
                                                                                  "\r", "\u00e9", "\ufeff"]),
                max_size=60).map("".join)


@given(TEXT, st.sampled_from([".csv", ".tsv", ".txt", ".json"]))
@FUZZ
def test_fuzz_text(tmp_path, small_limit, text, suffix):
    load_within_limit(write(tmp_path, "f" + suffix, text))


@given(st.recursive(st.one_of(st.none(), st.booleans(), st.floats(), st.integers(-(10 ** 400), 10 ** 400),
                              st.text(max_size=3)),
                    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=2), children,
                                                                                       max_size=2),
                    max_leaves=12))
@FUZZ
def test_fuzz_json_values(tmp_path, small_limit, data):
    load_within_limit(write(tmp_path, "f.json", json.dumps(data)))


@pytest.mark.parametrize("path", ['""', '"  "'])
def test_load_of_an_empty_path_names_no_file(path):
    with pytest.raises(SpireadError, match="`load` names no file") as caught:
        run(f"x = load({path})\n")
    assert caught.value.diagnostic.span.column == 10
