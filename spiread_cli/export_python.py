"""`spiread export --to python`: the exported graphs (export.py) written as
one module over the array API, each op by its `Export.python` form, with
the helpers of export_runtime.py it calls copied in."""

from __future__ import annotations

import ast
import hashlib
import keyword
import math
import re
from pathlib import Path

import numpy as np

from .export import Graphs
from .files import atomic_output
from .ops import Op
from .tape_nodes import Node
from .version import __version__

# The names an exported module defines or imports itself: a program's name
# that is one of them (or a keyword) is written with a `_` after it.
RESERVED = {"xp", "np", "Path", "INPUTS", "CONSTANTS", "SHAPES", "inputs", "value", "value_and_grad", "hvp", "direction",
            "array_namespace", "device", "is_numpy_array", "is_torch_array"}
# Arrays with at most this many entries are written into the module; larger
# ones go into the companion .npz.
INLINE_ENTRIES = 64
RUNTIME = Path(__file__).with_name("export_runtime.py")
# An intermediate of at least this many entries (128 KiB: what glibc's
# allocator gives its own pages) is freed after its last use (`del`).
FREED_ENTRIES = 16384


def python_name(name: str) -> str:
    return f"{name}_" if keyword.iskeyword(name) or name in RESERVED or name.startswith("_") else name


def code_text(text: str) -> str:
    """Text from outside (a file's name) as it may stand in the module's
    comments and docstrings: a line break would end a comment and put the
    rest in code, a quote or backslash would end or escape a docstring, so
    those and every other unprintable character are written escaped."""
    return "".join('\\"' if c == '"' else c if c.isprintable() and c != "\\" else
                   c.encode("unicode_escape").decode("ascii") for c in text)


def array_code(value: np.ndarray) -> str:
    """An array as a numpy literal that reads back exactly (repr of floats round-trips)."""
    value = np.asarray(value)
    if value.size == 0:
        return f"np.zeros({value.shape}, dtype=np.{value.dtype.name})"
    if value.dtype.kind == "f" and not np.isfinite(value).all():  # inf and nan are no Python literals
        return f"np.array({_list_code(value.tolist())})"
    return f"np.array({value.tolist()!r})"


def _list_code(entries) -> str:
    """Nested lists of floats as code, each entry by number_code."""
    if isinstance(entries, list):
        return f"[{', '.join(_list_code(e) for e in entries)}]"
    return number_code(entries)


def number_code(value: float) -> str:
    value = float(value)
    if math.isfinite(value):
        return f"({value!r})" if value < 0 or (value == 0 and math.copysign(1, value) < 0) else repr(value)
    return f"float({str(value)!r})"


class PythonWriter:
    """Writes the graphs as one module. Each function is the nodes its
    results need, one line per op node in tape order; arguments keep the
    program's names, other nodes are named after their binding or their op."""

    def __init__(self, graphs: Graphs):
        self.g = graphs
        self.constant = graphs.constant
        self.names: dict[int, str] = {}
        self.taken: set[str] = set(RESERVED)
        self.constants: dict[str, np.ndarray] = {}  # name -> value, for CONSTANTS
        self.by_identity: dict[int, tuple[object, str]] = {}  # id -> (a parameter or value, its constant)
        self.by_content: dict[tuple, str] = {}  # an array's dtype, shape and digest -> its constant
        self.used: set[str] = set()  # the constants the function being written uses
        self.current: Node | None = None
        self.lines: dict[int, tuple[str, set[str]]] = {}  # node id -> its line and the constants it reads
        self.operands: dict[int, list[str]] = {}  # node id -> how its line reads its operands
        self.shares: dict[str, str] = {}  # code -> the name of its shared line (`shared`)
        self.sharing: dict[int, list[str]] = {}  # node id -> the shared lines its line reads
        self.last_readers: set[tuple[int, str]] = set()  # (node id, shared name): its last reader in the function
        self.varying: set[int] = set()  # nodes whose line depends on the function (`last_reads`)
        self.returned: set[int] = set()  # the nodes the function's results so far are, or are views of
        for prefix, results in (("grad", graphs.grads), ("hvp", graphs.hvps)):
            for name, i in results.items():  # a result line is named for what it is
                node = graphs.nodes[i]
                if node.op is not None and not self.constant[i] and not node.name and i not in self.names:
                    self.names[i] = self.fresh(f"{prefix}_{name}")

    # -------------------------------------------------------------- names

    def name_of(self, node: Node) -> str:
        if node.id not in self.names:
            self.names[node.id] = self.fresh(node.name if node.name and node.name.isidentifier()
                                             else f"{node.op.name if node.op else 'c'}_{node.id}")
        return self.names[node.id]

    def fresh(self, wanted: str) -> str:
        name = python_name(wanted)
        while name in self.taken:
            name += "_"
        self.taken.add(name)
        return name

    def literal(self, value, hint: str = "c") -> str:
        """A parameter or constant as code: numbers and strings as themselves,
        an array as a named constant of the module."""
        if isinstance(value, (bool, int, str)) or value is None:
            return repr(value)
        if isinstance(value, float):
            return number_code(value)
        if isinstance(value, tuple):
            return f"({', '.join(self.literal(v) for v in value)}{',' if len(value) == 1 else ''})"
        known = self.by_identity.get(id(value))
        if known is None:  # kept with the value, so that its id is not another's while it is known
            # An array equal to one written (a form written again, in place: `Export.update`) is that one.
            digest = (np.asarray(value).dtype.str, np.shape(value),
                      hashlib.blake2b(np.ascontiguousarray(value).tobytes(), digest_size=16).digest())
            known = self.by_identity[id(value)] = (value, self.by_content.get(digest) or self.fresh(
                f"{hint}_{self.current.id}" if self.current else hint))
            self.by_content[digest] = known[1]
            self.constants[known[1]] = np.asarray(value)
        name = known[1]
        self.used.add(name)
        return name

    def shared(self, code: str, stem: str) -> str:
        """The name of `code` computed once per function, on a line of its
        own before the first line that reads it: what several ops' forms
        compute alike (the softmax family's exponentials, which a mean
        log-likelihood and its derivative's softmax both need)."""
        if code not in self.shares:
            self.shares[code] = self.fresh(stem)
        reading = self.sharing.setdefault(self.current.id, [])
        if code not in reading:
            reading.append(code)
        return self.shares[code]

    def last_reads(self, shared: str) -> bool:
        """Whether the line being written is the last of its function to
        read the shared line named `shared`: it may take over its arrays."""
        self.varying.add(self.current.id)
        return (self.current.id, shared) in self.last_readers

    def shape(self, operand: str) -> tuple:
        return self.shapes[operand]

    def value(self, operand: str):
        """An operand's value if it is a constant of the export, else None."""
        return self.values.get(operand)

    # -------------------------------------------------------------- code

    def operand(self, node: Node, numbers: bool) -> str:
        """How an op's line reads an operand: an argument or a line's name,
        a number (where the form takes numbers), or a named constant."""
        if not self.constant[node.id]:
            return self.name_of(node)
        value = np.asarray(node.value)
        if value.ndim == 0 and numbers:
            return number_code(value)
        if node.id not in self.names:
            hint = node.name or (node.label if node.label.isidentifier() and node.label != "constant" else "c")
            self.names[node.id] = self.literal(value, hint)
        self.used.add(self.names[node.id])
        return self.names[node.id]

    def line(self, node: Node) -> str:
        """The node's line (written once, then reused by every function that
        needs it, unless it depends on the function: `last_reads`)."""
        if node.id not in self.lines or node.id in self.varying:
            outer, self.used = self.used, set()
            self.lines[node.id] = (self.written(node), self.used)
            self.used = outer
        text, used = self.lines[node.id]
        self.used |= used
        return text

    def written(self, node: Node, out: str | None = None) -> str:
        """The node's line; `out`: the operand its form writes into (`Export.update` "out")."""
        op: Op = node.op
        form = op.export
        self.current = node
        operands = self.operands[node.id] = [self.operand(self.g.nodes[i], form.numbers) for i in node.inputs]
        self.shapes = {name: self.g.nodes[i].shape for name, i in zip(operands, node.inputs)}
        self.values = {name: self.g.nodes[i].value for name, i in zip(operands, node.inputs) if self.constant[i]}
        if out is not None:
            code = form.python(self, *operands, out=out, **node.params)
        elif callable(form.python):
            code = form.python(self, *operands, **node.params)
        else:
            code = form.python.format(*operands, **{k: self.literal(v) for k, v in node.params.items()})
        self.current = None
        return f"{self.name_of(node)} = {code}  # {code_text(f'{self.g.where(node)} {self.g.describe(node)}')}"

    def result(self, node_id: int) -> str:
        node = self.g.nodes[node_id]
        code = self.operand(node, False)  # a constant result as an array of the namespace
        viewed = self.viewed(node)
        if viewed.op is None or self.constant[viewed.id] or viewed.id in self.returned:
            # A result that is an argument, a direction or a constant (∂(x·y)/∂x is y), or a view of
            # one or of another result (∂(X·yᵀ)/∂X is yᵀ), is returned as a copy: the caller may write
            # into it, and it is theirs, the module's or another result.
            code = f"xp.asarray({code}, copy=True)"
        self.returned.add(viewed.id)
        return code

    def viewed(self, node: Node) -> Node:
        """The node whose array a node's value may be, or be a view of:
        through the forms that may give their first operand (`Export.view`)."""
        while node.op is not None and not self.constant[node.id] and node.op.export.view:
            node = self.g.nodes[node.inputs[0]]
        return node

    def function(self, header: str, doc: str, outputs: list[int], returns, directions: bool = False) -> list[str]:
        """A function computing `outputs`; `returns(result)` writes its return
        value from a result writer."""
        self.used = set()
        arguments = self.g.arguments()
        needed = self.g.needed(outputs)
        computed = [n for n in self.g.nodes if needed[n.id] and n.op is not None and not self.constant[n.id]]
        body = self.body(computed, set(outputs))
        self.returned = set()
        returned = returns(self.result)
        names = [self.name_of(n) for n in arguments]
        given = "{" + ", ".join(f"{name!r}: {name}" for name in names) + "}"
        unpacked = ", ".join(names) + ("," if len(names) == 1 else "")
        like = names[0] if names else "None"
        lines = [f"def {header.format(arguments=', '.join(f'{n}=None' for n in names))}:", f'    """{doc}"""',
                 f"    xp, ({unpacked}) = _arguments({header.split('(')[0]!r}, {given}, INPUTS, SHAPES)"]
        if directions:
            moving = {name: self.name_of(self.g.nodes[i]) for name, i in self.g.wrt.items()}
            ds = [self.name_of(self.g.nodes[i]) for i in self.g.directions.values()]
            lines.append(f"    {', '.join(ds)}{',' if len(ds) == 1 else ''} = _directions(xp, direction, "
                         "{" + ", ".join(f"{k!r}: {v}" for k, v in moving.items()) + "})")
        for name in sorted(self.used):
            lines.append(f"    {name} = _constant(xp, CONSTANTS[{name!r}], like={like})")
        lines += [f"    {line}" for line in body]
        lines.append(f"    return {returned}")
        return lines

    def body(self, computed: list[Node], kept: set[int]) -> list[str]:
        """The nodes' lines, a large intermediate (128 KiB or more: what
        glibc's allocator gives its own pages) let go of with `del` after its
        last use, and a result written into the array of a large operand
        that dies at its line where the op can (`Export.update`). Holding
        every array until the function returned made new pages for each
        step, a third of the mlp step; past 32 MiB glibc maps every new
        array afresh, its page faults costing as much again as the pass
        that fills it (the dense bigram's 49 MB arrays: benchmarks/exported.py)."""
        last: dict[int, int] = {}
        for k, node in enumerate(computed):
            for i in node.inputs:
                last[i] = k
        large = {n.id for n in computed if n.id in last and n.id not in kept and math.prod(n.shape) >= FREED_ENTRIES}
        dead: dict[int, list[str]] = {}
        for node in computed:
            if node.id in large:
                dead.setdefault(last[node.id], []).append(self.name_of(node))
        # Its own: not a view of another array, and no view of it is read (an array it may be is not written).
        own = large - {n.id for n in computed if n.op.export.view} - {n.inputs[0] for n in computed if n.op.export.view}
        readers: dict[str, int] = {}  # a shared line -> its last reader
        for k, node in enumerate(computed):
            self.line(node)
            readers |= dict.fromkeys(self.sharing.get(node.id, ()), k)
        self.last_readers = {(computed[k].id, self.shares[code]) for code, k in readers.items()}
        lines, written = [], set()
        for k, node in enumerate(computed):
            line = self.line(node)
            for code in self.sharing.get(node.id, ()):
                if code not in written:
                    written.add(code)
                    lines.append(f"{self.shares[code]} = {code}  # shared by the lines that read it")
            into = self.updated(node, [i in own and last[i] == k for i in node.inputs])
            if into is None:
                lines.append(line)
            elif node.op.export.update == "out":
                lines.append(f"{self.written(node, self.operands[node.id][into])} (in place on numpy)")
            else:
                operands = self.operands[node.id]
                lines.append(f"{self.name_of(node)} = _into(np.{node.op.export.update}, {', '.join(operands)}, "
                             f"{operands[into]})  # {line.split('  # ', 1)[1]} (in place on numpy)")
            gone = dead.get(k, []) + [self.shares[c] for c in self.sharing.get(node.id, ()) if readers[c] == k]
            if gone:
                lines.append(f"del {', '.join(gone)}")
        return lines

    def updated(self, node: Node, dying: list[bool]) -> int | None:
        """Which operand's array the node's result is written into (see
        `body`: `dying` says which may be), or None: one of the result's
        shape (one it broadcasts to a larger result cannot hold it)."""
        if node.op.export.update is None or len(set(node.inputs)) != len(node.inputs):
            return None
        return next((k for k, i in enumerate(node.inputs) if dying[k] and self.g.nodes[i].shape == node.shape), None)

    def module(self, companion: str | None) -> tuple[str, dict[str, np.ndarray]]:
        """The module's text, and the arrays for its companion .npz (empty
        when every array is written into the module)."""
        g = self.g
        out_name = g.run.output_name
        value_doc = f"`{out_name}` of {code_text(Path(g.run.source.name).name)}"
        wrt = list(g.wrt)
        grads = ", ".join(f"{n!r}: ∂{out_name}/∂{n}" for n in wrt)
        functions = [
            self.function("value({arguments})", f"{value_doc}.", [g.output], lambda r: r(g.output)),
            self.function("value_and_grad({arguments})", f"{value_doc} and its gradient: (value, {{{grads}}}).",
                          [g.output, *g.grads.values()],
                          lambda r: f"{r(g.output)}, {{" + ", ".join(f"{n!r}: {r(i)}" for n, i in g.grads.items())
                          + "}")]
        if g.hvps:
            functions.append(self.function(
                "hvp(direction, {arguments})", "The Hessian of the value times `direction` (a dict by name; a name "
                "left out is zero" + ("; or the direction alone" if len(wrt) == 1 else "") + "): {" + ", ".join(f"{n!r}: H·v" for n in wrt) + "}.", list(g.hvps.values()),
                lambda r: "{" + ", ".join(f"{n!r}: {r(i)}" for n, i in g.hvps.items()) + "}", directions=True))
        inputs = {self.name_of(n): np.asarray(n.value) for n in g.arguments()}  # by keyword: `lambda_`
        stored: dict[str, np.ndarray] = {}
        tables = []
        for table, arrays in (("INPUTS", inputs), ("CONSTANTS", self.constants)):
            entries = []
            for name, value in arrays.items():
                if value.size <= INLINE_ENTRIES:
                    entries.append(f"    {name!r}: {array_code(value)},")
                else:
                    stored[f"{table}/{name}"] = value
            tables.append([f"{table} = {{", *entries, "}"] if entries else [f"{table} = {{}}"])
        code = "\n\n\n".join("\n".join(f) for f in functions)
        helpers = runtime_helpers(code)
        text = "\n".join([
            f'"""{value_doc}, its gradient with respect to {", ".join(f"`{n}`" for n in wrt)}'
            f'{" and its Hessian-vector product" if g.hvps else ""}: exported by spiread {__version__}.',
            "",
            "Every function takes the program's inputs as keyword arguments, arrays of",
            "any array API namespace (numpy, PyTorch, CuPy, Dask); one left out is the",
            "program's own value (`inputs()`). Each must be real numbers of its shape in",
            "SHAPES (another is an error naming it). Each line cites the program's FILE:LINE:COL;",
            "a large intermediate is let go (`del`) after its last use, or written into there (in place on numpy).",
            '"""',
            "",
            *(["from pathlib import Path", ""] if stored else []),
            "import numpy as np",
            f"from array_api_compat import {', '.join(sorted(imported_names(code + helpers)))}",
            "",
            *tables[0], *tables[1],
            "# The shape of each argument: the shapes the module was exported for.",
            "SHAPES = {" + ", ".join(f"{name!r}: {value.shape!r}" for name, value in inputs.items()) + "}",
            *([f"_STORED = np.load(Path(__file__).with_name({companion!r}), allow_pickle=False)",
               "for _key in _STORED.files:",
               "    _table, _name = _key.split('/', 1)",
               "    {'INPUTS': INPUTS, 'CONSTANTS': CONSTANTS}[_table][_name] = _STORED[_key]"] if stored else []),
            "",
            "",
            "def inputs():",
            '    """The program\'s own input values, by name."""',
            "    return {name: value.copy() for name, value in INPUTS.items()}",
            "",
            "",
            code,
            "",
            "",
            helpers,
        ])
        return text, stored


def runtime_helpers(code: str) -> str:
    """The functions of export_runtime.py that `code` calls, and those they call."""
    source = RUNTIME.read_text()
    tree = ast.parse(source)
    defined = {f.name: ast.get_source_segment(source, f) for f in tree.body if isinstance(f, ast.FunctionDef)}
    wanted: list[str] = []
    pending = [n for n in defined if re.search(rf"\b{n}\(", code)]
    while pending:
        name = pending.pop(0)
        if name not in wanted:
            wanted.append(name)
            pending += [n for n in defined if n not in wanted and re.search(rf"\b{n}\(", defined[name])]
    return "\n\n\n".join(defined[n] for n in defined if n in wanted) + "\n"


def imported_names(code: str) -> list[str]:
    return [n for n in ("array_namespace", "device", "is_numpy_array", "is_torch_array") if re.search(rf"\b{n}\(", code)]


def export_python(graphs: Graphs, path: Path) -> list[Path]:
    """Write the module at `path` (and its companion .npz beside it, when an
    array is too large to write in); returns the files written."""
    companion = path.with_suffix(".npz")
    text, stored = PythonWriter(graphs).module(companion.name)
    written = []
    if stored:
        with atomic_output(companion) as f:
            np.savez_compressed(f, **stored)
        written.append(companion)
    with atomic_output(path) as f:
        f.write(text.encode("utf-8"))
    return [path, *written]
