"""The house's floors, read from the source as installed (``kernels/`` is ``bam_fused.kernels``):
the kernels are the ground floor and import nothing from the package, every import within the
package stands at module level where a reader and a tool see it, and the module-level imports
form no circle."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Each source folder with the package it is installed as (pyproject's package-dir).
FOLDERS = {"bam_fused": ROOT / "bam_fused", "bam_fused.kernels": ROOT / "kernels"}


def _modules() -> dict[str, Path]:
    """Every installed module name of the package → its file."""
    found = {}
    for package, folder in FOLDERS.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join((package, *parts))] = path
    return found


MODULES = _modules()


def _imported(node: ast.ImportFrom | ast.Import, module: str, is_package: bool) -> list[str]:
    """The package's modules that ``node`` (in ``module``) imports: for ``from X import name``,
    X.name where that is a module, else X."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = module if is_package else module.rpartition(".")[0]
        for _ in range(node.level - 1):
            base = base.rpartition(".")[0]
        source = ".".join(p for p in (base if node.level else "", node.module or "") if p)
        names = [f"{source}.{a.name}" for a in node.names if f"{source}.{a.name}" in MODULES] or [source]
    return [n for n in names if n in MODULES]


def _imports(module: str) -> tuple[set[str], list[str]]:
    """(the package's modules ``module`` imports at module level, its imports of them inside
    functions or classes, as source lines)."""
    path = MODULES[module]
    tree = ast.parse(path.read_text())
    is_package = path.name == "__init__.py"
    top, nested = set(), []

    def visit(node, inside: bool):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)) and (found := _imported(child, module, is_package)):
                if inside:
                    nested.append(ast.unparse(child))
                else:
                    top.update(found)
            visit(child, inside or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)))

    visit(tree, False)
    return top - {module}, nested


GRAPH = {m: _imports(m)[0] for m in MODULES}


def test_the_sources_are_read():
    assert "bam_fused.fused_bam" in MODULES and "bam_fused.kernels.channel_mlp" in MODULES
    assert "bam_fused.kernels.channel_mlp" in GRAPH["bam_fused.fused_bam"]


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("bam_fused.kernels")))
def test_the_kernels_import_nothing_from_the_package(module):
    above = sorted(m for m in GRAPH[module] if not m.startswith("bam_fused.kernels"))
    assert not above, f"{module} imports {above}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_within_the_package_stand_at_module_level(module):
    nested = _imports(module)[1]
    assert not nested, f"{module} imports inside a function or class: {nested}"


def _circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of ``graph``, as the modules along it, or None."""
    state = {}  # module → "open" while on the path, "done" after

    def walk(m, path):
        state[m] = "open"
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                return path[path.index(n) :] + [n]
            if n not in state and (found := walk(n, path + [n])):
                return found
        state[m] = "done"
        return None

    for m in sorted(graph):
        if m not in state and (found := walk(m, [m])):
            return found
    return None


def test_the_module_level_imports_form_no_circle():
    assert _circle(GRAPH) is None, " -> ".join(_circle(GRAPH))


def test_a_circle_is_found():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _circle(graph) == ["a", "b", "c", "a"]
    assert _circle({"a": {"b"}, "b": set()}) is None


def test_a_nested_import_and_a_relative_one_are_read(tmp_path, monkeypatch):
    source = "from . import reference\n\n\ndef f():\n    from .kernels.utils import cdiv\n"
    path = tmp_path / "probe.py"
    path.write_text(source)
    monkeypatch.setitem(MODULES, "bam_fused.probe", path)
    top, nested = _imports("bam_fused.probe")
    assert top == {"bam_fused.reference"}
    assert nested == ["from .kernels.utils import cdiv"]
