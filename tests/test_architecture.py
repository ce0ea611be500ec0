"""docs/ARCHITECTURE.md's layering holds: every module lives in the sub-package of its role,
and imports only from its own room or the rooms below it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "sgsc"
# Bottom to top: a room imports from itself and the rooms before it, never after.
ROOMS = ("structure", "core", "fileformat", "reporting", "experiments")
ENTRY_POINTS = ("__init__", "__main__", "cli")  # above every room: the API and the CLI


def _imports(path: Path, top_level_only: bool = False) -> set[str]:
    """The sgsc modules ``path`` imports, at any level (TYPE_CHECKING ones excluded), as
    dotted names relative to ``sgsc`` (``core.compress``; ``from sgsc.core import quant``
    gives ``core.quant``); with ``top_level_only``, the module-level imports alone."""
    tree = ast.parse(path.read_text())
    if top_level_only:
        tree = ast.Module(body=[n for n in tree.body if isinstance(n, (ast.Import,
                                                                       ast.ImportFrom))],
                          type_ignores=[])
    typing_only = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            typing_only |= {id(n) for child in node.body for n in ast.walk(child)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sgsc"):
            base = node.module[len("sgsc."):] if node.module != "sgsc" else ""
            for alias in node.names:
                candidate = f"{base}.{alias.name}".strip(".")
                found.add(candidate if _is_module(candidate) else base or alias.name)
        elif isinstance(node, ast.Import):
            found |= {a.name[len("sgsc."):] for a in node.names if a.name.startswith("sgsc.")}
    return {f for f in found if f}


def _is_module(dotted: str) -> bool:
    path = PACKAGE.joinpath(*dotted.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def _modules() -> dict[str, Path]:
    return {str(p.relative_to(PACKAGE).with_suffix("")).replace("/", ".").removesuffix(
        ".__init__"): p for p in PACKAGE.rglob("*.py")}


def _room(module: str) -> str:
    return module.split(".")[0]


def _rank(module: str) -> int:
    room = _room(module)
    return ROOMS.index(room) if room in ROOMS else len(ROOMS)


def test_every_module_lives_in_the_room_of_its_role():
    flat = sorted(m for m in _modules() if "." not in m and m not in ROOMS + ENTRY_POINTS)
    assert not flat, f"modules outside a sub-package: {flat}"
    assert {_room(m) for m in _modules()} <= set(ROOMS + ENTRY_POINTS)


def test_every_import_goes_down_or_stays_in_its_room():
    wrong = []
    for module, path in _modules().items():
        if module in ENTRY_POINTS:
            continue
        for imported in _imports(path):
            if _rank(imported) > _rank(module):
                wrong.append(f"{module} ({_room(module)}) imports {imported} "
                             f"({_room(imported)})")
    assert not wrong, "\n".join(wrong)


def test_no_circle_inside_a_room():
    """Module-level imports only: a function-level import may break a circle on purpose."""
    modules = _modules()
    graph = {module: {m for m in _imports(path, top_level_only=True)
                      if m != module and m in modules and _room(m) == _room(module)}
             for module, path in modules.items()}
    done, active = set(), []

    def visit(node):
        if node in active:
            pytest.fail("import circle: " + " -> ".join(active[active.index(node):] + [node]))
        if node in done:
            return
        active.append(node)
        for nxt in graph.get(node, ()):
            visit(nxt)
        active.pop()
        done.add(node)

    for module in graph:
        visit(module)


def test_the_plan_names_every_module_and_only_existing_ones():
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    missing = sorted(m for m in _modules() if m not in ENTRY_POINTS
                     and f"{m.split('.')[-1]}" not in text)
    assert not missing, f"modules missing from docs/ARCHITECTURE.md: {missing}"
    for room in ROOMS:
        assert f"`{room}/`" in text, room


def test_the_checker_catches_an_upward_import(tmp_path):
    fake = tmp_path / "quant.py"
    fake.write_text("from sgsc.experiments.runs import run\nfrom sgsc.core import tasks\n")
    assert _imports(fake) == {"experiments.runs", "core.tasks"}
    assert _rank("experiments.runs") > _rank("core.quant")
