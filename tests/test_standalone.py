"""The repository stands alone: it points at no document it does not hold, and the README's map of the package
names every module in it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "compressmem"
TEXT_FILES = [
    *PACKAGE.rglob("*.py"),
    *PACKAGE.rglob("*.md"),
    *(ROOT / "docs").rglob("*.md"),
    *(ROOT / "benchmarks").glob("*.py"),
    *(ROOT / "examples").rglob("*.py"),
    ROOT / "README.md",
]


@pytest.mark.parametrize("path", TEXT_FILES, ids=[str(p.relative_to(ROOT)) for p in TEXT_FILES])
def test_no_reference_to_a_design_document_the_repository_lacks(path):
    found = [
        f"line {number}: {line.strip()}"
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if re.search(r"\bDESIGN\b", line)
    ]
    assert not found, f"{path.relative_to(ROOT)} refers to DESIGN, which users do not have: say what is meant. {found}"


def _readme_map() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("## How it works")
    return text[start : text.index("\n## ", start + 1)]


def _modules() -> list[Path]:
    return [
        path.relative_to(PACKAGE)
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name not in ("__init__.py", "__main__.py") and path.relative_to(PACKAGE).parts[0] != "checkpoints"
    ]


def test_the_readme_map_names_every_module_and_package():
    table = _readme_map()
    tops = sorted({m.parts[0] + "/" if len(m.parts) > 1 else m.name for m in _modules()})
    missing = [top for top in tops if f"`{top}`" not in table]
    assert not missing, f"the README's 'How it works' table does not name: {missing}"


def test_the_architecture_page_names_every_file():
    page = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    missing = [m.as_posix() for m in _modules() if f"`{m.as_posix()}`" not in page]
    assert not missing, f"docs/architecture.md does not name: {missing}"
