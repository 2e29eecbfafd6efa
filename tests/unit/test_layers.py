"""The layering the architecture promises, checked on the source: no import cycles,
core never reaches up into the node agent or FUSE, settings import no engine, and
the CLI starts without its engines."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {
    "mediadrive.core": ROOT / "core" / "src" / "mediadrive" / "core",
    "mediadrive.node": ROOT / "csi-node" / "src" / "mediadrive" / "node",
    "mediadrive.cli": ROOT / "cli" / "src" / "mediadrive" / "cli",
}


def _module_name(package: str, folder: Path, path: Path) -> str:
    parts = list(path.relative_to(folder).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([package, *parts])


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            found[_module_name(package, folder, path)] = path
    return found


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every module this one imports, anywhere in it (TYPE_CHECKING and function
    bodies included: a cycle hidden there is still a cycle in the design)."""
    is_package = path.name == "__init__.py"
    here = name if is_package else name.rsplit(".", 1)[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base]) if base else ".".join(anchor)
            for alias in node.names:
                target = f"{base}.{alias.name}"
                out.add(target if target in known else base)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    graph = {}
    for name, path in modules.items():
        # A module importing its own package's __init__ is how submodules register.
        graph[name] = {
            m for m in _imports(name, path, known) if m in known and not name.startswith(m + ".")
        }
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles() -> None:
    assert _cycles(_graph()) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_core_never_imports_the_node_agent_the_cli_or_fuse() -> None:
    modules = _modules()
    known = set(modules)
    for name, path in modules.items():
        if not name.startswith("mediadrive.core"):
            continue
        imported = _imports(name, path, known)
        bad = {m for m in imported if m.split(".")[0] == "pyfuse3"}
        bad |= {m for m in imported if m.startswith(("mediadrive.node", "mediadrive.cli"))}
        assert not bad, f"{name} imports {sorted(bad)}"


@pytest.mark.parametrize("module", ["mediadrive.node.tree", "mediadrive.node.writeback"])
def test_node_parts_below_the_adapter_do_not_import_pyfuse3(module: str) -> None:
    modules = _modules()
    imported = _imports(module, modules[module], set(modules))
    assert not {m for m in imported if m.split(".")[0] == "pyfuse3"}


def _loaded_after(statement: str, names: tuple[str, ...]) -> list[str]:
    """Which of ``names`` a fresh interpreter has imported after ``statement``."""
    probe = (
        f"import json, sys\n{statement}\n"
        f"print(json.dumps([n for n in {names!r} if n in sys.modules]))\n"
    )
    output = subprocess.run(
        [sys.executable, "-c", probe], check=True, capture_output=True, text=True
    ).stdout
    loaded: list[str] = json.loads(output.splitlines()[-1])
    return loaded


def test_settings_models_import_no_engine() -> None:
    heavy = ("pyfastcdc", "boto3", "psycopg", "blake3", "pyfuse3", "pydantic_settings")
    assert _loaded_after("import mediadrive.core.config", heavy) == []


def test_cli_help_imports_no_engine() -> None:
    heavy = ("pyfastcdc", "boto3", "psycopg", "pyfuse3", "pydantic", "rich", "yaml", "aiohttp")
    statement = (
        "from mediadrive.cli.main import app\n"
        "try:\n    app(['--help'])\nexcept SystemExit:\n    pass"
    )
    assert _loaded_after(statement, heavy) == []
