"""The package's import graph: data flows one way (tokens → chunks → bank → gate → reader → answer), errors live in
a leaf module, and no module reaches for another module's private names."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "compressmem"

# Each part of the package may import only parts of the same or a lower level.
LEVELS = {
    "errors": 0,
    "config": 1,
    "quantize": 2,
    "chunking": 2,
    "hf": 3,
    "kernels": 3,
    "bank": 4,
    "compressors": 4,
    "compression": 5,
    "gate": 5,
    "distributed": 6,
    "reader": 6,
    "hub": 7,
    "model_card": 7,
    "embedded": 7,
    "model": 8,
    "lychee": 8,
    "eval": 9,
    "training": 10,
    "cli": 11,
    "checkpoints": 11,
}


def _modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found.append((".".join(parts), path))
    return found


def _imports(name: str, path: Path) -> list[tuple[str, list[str], int]]:
    """(absolute module, imported names, line) for each relative import of the module."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
            found.append((target, [alias.name for alias in node.names], node.lineno))
    return found


def _part(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_every_part_of_the_package_has_a_level():
    parts = {_part(name) for name, _ in _modules()} - {None, "__main__"}
    assert parts <= set(LEVELS), f"give these parts a level in LEVELS: {sorted(parts - set(LEVELS))}"


@pytest.mark.parametrize(("name", "path"), _modules(), ids=[name for name, _ in _modules()])
def test_imports_go_down_the_pipeline(name, path):
    own = _part(name)
    if own is None or own == "__main__":
        return
    upward = [
        f"line {line}: {target}"
        for target, _, line in _imports(name, path)
        if _part(target) is not None and LEVELS[_part(target)] > LEVELS[own]
    ]
    assert not upward, f"{name} imports from a later stage: {upward}"


def test_errors_is_a_leaf():
    assert _imports("compressmem.errors", ROOT / "errors.py") == []


@pytest.mark.parametrize(("name", "path"), _modules(), ids=[name for name, _ in _modules()])
def test_no_module_imports_another_modules_private_names(name, path):
    private = [
        f"line {line}: {target}.{imported}"
        for target, names, line in _imports(name, path)
        for imported in names
        if imported.startswith("_") and not imported.startswith("__")
    ]
    assert not private, f"{name} imports private names (make them public where they belong): {private}"
