"""docs/ARCHITECTURE.md's layering holds: every module imports only from lower floors."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "sgsc"
ENTRY_POINTS = ("__init__", "__main__")  # above every floor: the package API and the CLI


def _floors() -> dict[str, int]:
    """Module (dotted, relative to sgsc) -> floor, from the plan's code block."""
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    block = text.split("```", 2)[1]
    floors, floor = {}, None
    for line in block.splitlines():
        match = re.match(r"^(?:floor (\d+)\s+|\s{9})([\w/]+\.py)(?: / [\w.]+)? —", line)
        if match:
            floor = int(match.group(1)) if match.group(1) else floor
            module = match.group(2)[:-3].replace("/", ".")
            floors[module.removesuffix(".__init__")] = floor
    return floors


def _imports(path: Path) -> set[str]:
    """The sgsc modules ``path`` imports, at any level (TYPE_CHECKING ones excluded)."""
    tree = ast.parse(path.read_text())
    typing_only = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            typing_only |= {id(n) for child in node.body for n in ast.walk(child)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sgsc"):
            if node.module == "sgsc":
                found |= {alias.name for alias in node.names}
            else:
                found.add(node.module[len("sgsc."):])
        elif isinstance(node, ast.Import):
            found |= {a.name[len("sgsc."):] for a in node.names if a.name.startswith("sgsc.")}
    return found


def _modules() -> dict[str, Path]:
    return {str(p.relative_to(PACKAGE).with_suffix("")).replace("/", ".").removesuffix(
        ".__init__"): p for p in PACKAGE.rglob("*.py")}


def test_every_module_is_on_the_plan():
    floors = _floors()
    missing = sorted(m for m in _modules() if m not in floors and m not in ENTRY_POINTS)
    assert not missing, f"modules missing from docs/ARCHITECTURE.md: {missing}"
    assert not sorted(m for m in floors if m not in _modules()), "the plan names gone files"


def test_every_import_goes_down():
    floors = _floors()
    wrong = []
    for module, path in _modules().items():
        if module in ENTRY_POINTS:
            continue
        for imported in _imports(path):
            imported = imported if imported in floors else imported.split(".")[0]
            if imported == module or imported not in floors or module not in floors:
                continue
            if floors[imported] >= floors[module]:
                wrong.append(f"{module} (floor {floors[module]}) imports {imported} "
                             f"(floor {floors[imported]})")
    assert not wrong, "\n".join(wrong)


def test_the_checker_catches_an_upward_import(tmp_path, monkeypatch):
    fake = tmp_path / "quant.py"
    fake.write_text("from sgsc.runs import run\n")
    assert "runs" in _imports(fake)
    assert _floors()["runs"] > _floors()["quant"]
