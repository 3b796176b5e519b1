"""The package's layout rules (docs/ARCHITECTURE.md), checked so that they stay true.

* the import-linter contracts of ``pyproject.toml`` (layers, independence of the two sides, tools never imported
  by training code);
* no import cycles between modules, and no imports inside functions other than optional dependencies;
* one list of public names (``dynocc_data._EXPORTS``), every one resolving;
* no module over 500 lines without a reason stated at its top;
* the package's errors are also the standard exceptions callers catch.
"""

from __future__ import annotations

import ast
import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

import dynocc_data
from dynocc_data.errors import DynOccError, InputError, InputNotFoundError, ShardFormatError

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "dynocc_data"
MODULES = sorted(PACKAGE.rglob("*.py"))

# Imports allowed inside functions: optional dependencies (not installed everywhere), imported where used.
OPTIONAL = {"decord", "torchcodec", "matplotlib", "numpy._core", "numpy.core", "ray", "s3fs", "torchdata", "moto"}
LONG_FILE_REASON = "Longer than 500 lines because"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_import_linter_contracts_are_kept():
    exe = shutil.which("lint-imports")
    assert exe is not None, "import-linter is part of the test extras: pip install -e '.[test]'"
    done = subprocess.run([exe, "--config", str(ROOT / "pyproject.toml")], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "broken" in done.stdout and "0 broken" in done.stdout


def test_no_import_cycles_between_modules():
    graph = grimp.build_graph("dynocc_data", include_external_packages=False)
    modules = sorted(graph.modules)
    edges = {m: {d for d in graph.find_modules_directly_imported_by(m) if d in graph.modules} for m in modules}
    # a package's __init__ importing its own submodules is not a cycle in the sense that matters here
    for m in modules:
        edges[m] = {d for d in edges[m] if not d.startswith(m + ".")}
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

    def strongconnect(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10000))
    for m in modules:
        if m not in index:
            strongconnect(m)
    assert cycles == []


def _function_imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for inner in ast.walk(node):
                if isinstance(inner, ast.Import):
                    found += [(inner.lineno, alias.name) for alias in inner.names]
                elif isinstance(inner, ast.ImportFrom):
                    found.append((inner.lineno, "." * inner.level + (inner.module or "")))
    return found


def test_imports_inside_functions_are_optional_dependencies_only():
    offending = [f"{p.relative_to(ROOT)}:{line} imports {name}" for p in MODULES
                 for line, name in _function_imports(p) if name.split(".")[0] not in OPTIONAL and name not in OPTIONAL]
    assert offending == []


def test_examples_and_tests_do_not_edit_sys_path():
    users = [p.relative_to(ROOT) for folder in ("examples", "tests", "benchmarks") for p in (ROOT / folder).glob("*.py")
             if "sys.path." in p.read_text(encoding="utf-8") and p.name != "test_layout.py"]
    assert users == []


def test_long_modules_say_why_at_their_top():
    long = []
    for path in MODULES:
        text = path.read_text(encoding="utf-8")
        if text.count("\n") > 500:
            doc = ast.get_docstring(ast.parse(text)) or ""
            if LONG_FILE_REASON not in doc:
                long.append(f"{path.relative_to(ROOT)} ({text.count(chr(10))} lines)")
    assert long == [], f"modules over 500 lines need '{LONG_FILE_REASON} ...' in their docstring"


def test_public_names_are_one_list_and_all_resolve():
    exports = dynocc_data._EXPORTS
    names = [n for group in exports.values() for n in group]
    assert len(names) == len(set(names)), "a public name listed twice"
    assert dynocc_data.__all__ == ["__version__", *names]
    for module, group in exports.items():
        mod = importlib.import_module(f"dynocc_data.{module}")
        for name in group:
            assert getattr(dynocc_data, name) is getattr(mod, name)
            assert name in getattr(mod, "__all__", ()), f"{name} missing from dynocc_data.{module}.__all__"
    assert set(dir(dynocc_data)) >= set(names)


def test_generate_is_the_function_even_after_submodules_are_imported():
    importlib.import_module("dynocc_data.generation.pipeline")
    from dynocc_data import GenerateConfig, generate

    assert callable(generate) and generate.__module__ == "dynocc_data.generation.launch"
    assert dynocc_data.generate is generate and isinstance(GenerateConfig(), GenerateConfig)


def test_errors_are_the_standard_exceptions_too(tmp_path):
    from dynocc_data import DynOccDataset, read_index

    with pytest.raises(FileNotFoundError):
        read_index(tmp_path)  # no index.json there
    with pytest.raises(FileNotFoundError) as missing:
        DynOccDataset(str(tmp_path / "no-such-shard.tar"))
    assert isinstance(missing.value, InputNotFoundError) and str(missing.value).endswith("shard not found")
    (tmp_path / "index.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a shard index") as bad:
        read_index(tmp_path)
    assert isinstance(bad.value, InputError) and not isinstance(bad.value, FileNotFoundError)
    assert issubclass(ShardFormatError, ValueError) and issubclass(InputError, DynOccError)
