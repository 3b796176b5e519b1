"""Lint and docstring rules of the package, checked so that they stay true.

* ``ruff check`` with the configuration of ``pyproject.toml`` (pycodestyle, pyflakes, import order, pydocstyle with
  the Google convention) passes;
* every public function and class has a Google-style docstring that documents its interface. Ruff has no rule that
  requires an ``Args:`` section (D417 only checks the sections that exist), so :func:`docstring_problems` reads the
  AST. Its scope, exactly:

  - *public* names of a module: the names in its ``__all__`` that the module itself defines (re-exports are checked
    where they are defined); in a module without ``__all__``, its top-level functions and classes whose names do not
    start with ``_`` (also when ``__all__`` is not a literal list, as in the package's lazy ``__init__``);
  - *public methods* of a public class: those defined in the class body whose names do not start with ``_``, plus
    ``__call__``; methods marked ``@overload`` are skipped;
  - ``Args:`` must name every parameter other than a method's ``self`` / ``cls`` (``*args`` and ``**kwargs`` may be
    written with or without their stars). For a class, the parameters are those of its ``__init__``; for a class
    with a ``@dataclass`` decorator and no ``__init__``, its fields (annotated, not ``ClassVar``, not
    ``field(init=False)``), which may also be listed under ``Attributes:``. A class's arguments may be documented in
    the class docstring or in its ``__init__``'s;
  - ``Returns:`` when the function's own body has a ``return <value>`` other than ``return None``, or its return
    annotation is not ``None`` / ``NoReturn`` / ``Never``; ``Yields:`` instead when the body has ``yield``.
    Properties are attributes and need neither;
  - ``Raises:`` must name every exception the function's own body raises by name (``raise SomeError(...)`` or
    ``raise SomeError``), other than ``AssertionError`` (which marks unreachable code); for a class, those raised
    by its ``__init__`` and ``__post_init__``. A bare ``raise``, a ``raise err`` of a caught exception, and raises
    in nested functions or in the functions it calls are not seen (document those by hand where they matter).

Both checks cover the modules listed in :data:`CHECKED`; :func:`test_docstring_check_sees_what_it_should` checks
the checker itself on a known-bad and a known-good module.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "dynocc_data"
MODULES = sorted(PACKAGE.rglob("*.py"))
# Every module of the package (issue 12): new modules are checked from the start.
CHECKED = MODULES

SECTION = re.compile(r"^(\s*)(Args|Arguments|Attributes|Returns|Yields|Raises):\s*$")
ENTRY = re.compile(r"^\s*(\*{0,2}[\w.]+)\s*(\([^)]*\))?\s*:")
NO_VALUE = {"None", "NoReturn", "Never"}
NOT_RAISED_ON_PURPOSE = {"AssertionError"}  # ``raise AssertionError("unreachable")`` marks code that cannot run


def docstring_sections(doc: str | None) -> dict[str, list[str]]:
    """The Google-style sections of a docstring: section name -> entry names (``Returns``/``Yields`` get ``[]``)."""
    sections: dict[str, list[str]] = {}
    lines = (doc or "").splitlines()
    i = 0
    while i < len(lines):
        match = SECTION.match(lines[i])
        i += 1
        if not match:
            continue
        indent, name = len(match.group(1)), {"Arguments": "Args"}.get(match.group(2), match.group(2))
        entries = sections.setdefault(name, [])
        entry_indent = None
        while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent):
            line = lines[i]
            i += 1
            if not line.strip():
                continue
            depth = len(line) - len(line.lstrip())
            entry_indent = depth if entry_indent is None else entry_indent
            entry = ENTRY.match(line) if depth == entry_indent else None
            if entry:
                entries.append(entry.group(1).lstrip("*").rsplit(".", 1)[-1])
    return sections


def _own_nodes(func: ast.AST):
    """The nodes of a function's own body, not those of the functions, lambdas or classes nested in it."""
    stack = list(ast.iter_child_nodes(func))
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            continue
        yield node
        stack.extend(ast.iter_child_nodes(node))


def _decorator_names(node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> set[str]:
    names = set()
    for dec in node.decorator_list:
        target = dec.func if isinstance(dec, ast.Call) else dec
        names.add(target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", ""))
    return names


def _raised_names(func: ast.AST) -> set[str]:
    names = set()
    for node in _own_nodes(func):
        if isinstance(node, ast.Raise) and node.exc is not None:
            exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            name = exc.attr if isinstance(exc, ast.Attribute) else getattr(exc, "id", "")
            if name[:1].isupper() and name not in NOT_RAISED_ON_PURPOSE:
                names.add(name)
    return names


def _parameters(func: ast.FunctionDef | ast.AsyncFunctionDef, method: bool) -> list[str]:
    args = func.args
    names = [a.arg for a in [*args.posonlyargs, *args.args]]
    if method and "staticmethod" not in _decorator_names(func):
        names = names[1:]
    names += [a.arg for a in args.kwonlyargs]
    names += [a.arg for a in (args.vararg, args.kwarg) if a is not None]
    return names


def _returns_value(func: ast.FunctionDef | ast.AsyncFunctionDef) -> tuple[bool, bool]:
    """``(returns, yields)``: whether the function returns a value, whether it is a generator."""
    nodes = list(_own_nodes(func))
    yields = any(isinstance(n, (ast.Yield, ast.YieldFrom)) for n in nodes)
    returns = any(isinstance(n, ast.Return) and n.value is not None
                  and not (isinstance(n.value, ast.Constant) and n.value.value is None) for n in nodes)
    annotation = func.returns
    if annotation is not None and not yields:
        text = ast.unparse(annotation).strip("'\"").rsplit(".", 1)[-1]
        returns = returns or text not in NO_VALUE
    return returns, yields


def _function_problems(where: str, func, method: bool) -> list[str]:
    doc = ast.get_docstring(func)
    if not doc:
        return [f"{where}: no docstring"]
    problems, sections = [], docstring_sections(doc)
    params = _parameters(func, method)
    documented = set(sections.get("Args", []))
    missing = [p for p in params if p not in documented]
    if missing:
        problems.append(f"{where}: Args: does not name {', '.join(missing)}")
    if "property" not in _decorator_names(func) and "cached_property" not in _decorator_names(func):
        returns, yields = _returns_value(func)
        if yields and "Yields" not in sections:
            problems.append(f"{where}: a generator without Yields:")
        elif returns and not yields and "Returns" not in sections:
            problems.append(f"{where}: returns a value but has no Returns:")
    unnamed = sorted(_raised_names(func) - set(sections.get("Raises", [])))
    if unnamed:
        problems.append(f"{where}: Raises: does not name {', '.join(unnamed)}")
    return problems


def _dataclass_fields(cls: ast.ClassDef) -> list[str]:
    fields = []
    for node in cls.body:
        if not isinstance(node, ast.AnnAssign) or not isinstance(node.target, ast.Name):
            continue
        if "ClassVar" in ast.unparse(node.annotation):
            continue
        value = node.value
        if isinstance(value, ast.Call) and getattr(value.func, "id", getattr(value.func, "attr", "")) == "field":
            if any(k.arg == "init" and isinstance(k.value, ast.Constant) and k.value.value is False
                   for k in value.keywords):
                continue
        fields.append(node.target.id)
    return fields


def _class_problems(where: str, cls: ast.ClassDef) -> list[str]:
    doc = ast.get_docstring(cls)
    if not doc:
        return [f"{where}: no docstring"]
    problems, sections = [], docstring_sections(doc)
    methods = {n.name: n for n in cls.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    init = methods.get("__init__")
    init_sections = docstring_sections(ast.get_docstring(init)) if init is not None else {}
    documented = set(sections.get("Args", [])) | set(init_sections.get("Args", []))
    if init is not None:
        params = _parameters(init, method=True)
    elif "dataclass" in _decorator_names(cls):
        params = _dataclass_fields(cls)
        documented |= set(sections.get("Attributes", []))
    else:
        params = []
    missing = [p for p in params if p not in documented]
    if missing:
        problems.append(f"{where}: Args: does not name {', '.join(missing)}")
    raised = set()
    for name in ("__init__", "__post_init__"):
        if name in methods:
            raised |= _raised_names(methods[name])
    unnamed = sorted(raised - set(sections.get("Raises", [])) - set(init_sections.get("Raises", [])))
    if unnamed:
        problems.append(f"{where}: Raises: does not name {', '.join(unnamed)}")
    for name, method in methods.items():
        if (name.startswith("_") and name != "__call__") or "overload" in _decorator_names(method):
            continue
        problems += _function_problems(f"{where}.{name}", method, method=True)
    return problems


def _public_names(tree: ast.Module) -> set[str] | None:
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
            try:
                return set(ast.literal_eval(node.value))
            except ValueError:  # built from other names (the package's lazy exports): treated as absent
                return None
    return None


def docstring_problems(path: Path, root: Path = ROOT) -> list[str]:
    """Every breach of the docstring rules (this file's docstring) in the module at ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    module = path.relative_to(root).as_posix()
    public = _public_names(tree)
    problems = []
    for node in tree.body:
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        if (node.name not in public) if public is not None else node.name.startswith("_"):
            continue
        if "overload" in _decorator_names(node):
            continue
        where = f"{module}:{node.lineno} {node.name}"
        if isinstance(node, ast.ClassDef):
            problems += _class_problems(where, node)
        else:
            problems += _function_problems(where, node, method=False)
    return problems


def test_ruff_check_passes():
    files = [str(p.relative_to(ROOT)) for p in CHECKED]
    command = [sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", *files]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0 and "No module named ruff" in done.stderr:
        pytest.fail("ruff is part of the test extras: pip install -e '.[test]'")
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]


@pytest.mark.parametrize("path", CHECKED, ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_public_docstrings_document_args_returns_raises(path):
    problems = docstring_problems(path)
    assert not problems, "\n".join(problems)


def test_docstring_check_sees_what_it_should(tmp_path):
    """The checker itself: a known-bad module gives exactly the known problems, a known-good one none."""
    bad = tmp_path / "bad.py"
    bad.write_text('''
__all__ = ["f", "C", "D"]
from dataclasses import dataclass

def f(a, *, b=1, **kw):
    """Summary.

    Args:
        a: first.
    """
    if a:
        raise ValueError(a)
    return a

class C:
    """Summary."""

    def __init__(self, x):
        pass

    def get(self, y) -> int:
        """Summary."""

    def _private(self, z):
        pass

@dataclass
class D:
    """Summary.

    Attributes:
        p: documented.
    """

    p: int
    q: int = 0
''', encoding="utf-8")
    good = tmp_path / "good.py"
    good.write_text('''
__all__ = ["f", "C"]

def f(a, *args, **kwargs):
    """Summary.

    Args:
        a (int): first.
        *args: more.
        kwargs: options.

    Returns:
        a.

    Raises:
        ValueError: when ``a`` is false.
    """
    if not a:
        raise ValueError(a)
    return a

class C:
    """Summary.

    Args:
        x: the x.
    """

    def __init__(self, x):
        self.x = x

    @property
    def double(self) -> int:
        """Twice x."""
        return 2 * self.x

    def items(self, n):
        """Summary.

        Args:
            n: how many.

        Yields:
            numbers.
        """
        yield from range(n)

def _helper(q):
    return q
''', encoding="utf-8")
    assert docstring_problems(good, root=tmp_path) == []
    found = [p.split(" ", 1)[1] for p in docstring_problems(bad, root=tmp_path)]
    assert found == [
        "f: Args: does not name b, kw",
        "f: returns a value but has no Returns:",
        "f: Raises: does not name ValueError",
        "C: Args: does not name x",
        "C.get: Args: does not name y",
        "C.get: returns a value but has no Returns:",
        "D: Args: does not name q",
    ]
