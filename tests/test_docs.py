"""The documentation site builds in strict mode (no broken link, no missing snippet, no docstring
warning), with the API reference generated from the code and the results page from benchmarks/RESULTS.md."""

from __future__ import annotations

import html
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("mkdocs", reason="the docs need the docs extra: pip install -e '.[docs]'")
pytest.importorskip("mkdocstrings", reason="the docs need the docs extra: pip install -e '.[docs]'")


def visible_text(page: str) -> str:
    """A built page's text as a reader sees it: tags dropped, entities decoded, whitespace collapsed."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", "", page)).split())


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    return out


def test_api_reference_documents_from_pretrained(site):
    page = (site / "reference" / "model" / "index.html").read_text(encoding="utf-8")
    assert 'id="compressmem.CompressedMemoryModel.from_pretrained"' in page
    from compressmem import CompressedMemoryModel

    first_line = CompressedMemoryModel.from_pretrained.__doc__.strip().splitlines()[0]
    assert " ".join(first_line.replace("`", "").split()) in visible_text(page)


def test_results_page_shows_benchmarks_results(site):
    results = (ROOT / "benchmarks" / "RESULTS.md").read_text(encoding="utf-8")
    headings = [line.lstrip("#").strip().replace("`", "") for line in results.splitlines() if line.startswith("## ")]
    assert headings, "benchmarks/RESULTS.md has no section headings"
    text = visible_text((site / "results" / "index.html").read_text(encoding="utf-8"))
    for heading in headings:
        assert heading in text


def test_examples_are_shown_from_their_files(site):
    page = visible_text((site / "how-to" / "compress-once" / "index.html").read_text(encoding="utf-8"))
    source = (ROOT / "examples" / "ask_folder.py").read_text(encoding="utf-8")
    definitions = re.findall(r"^def (\w+\(.*)$", source, flags=re.MULTILINE)
    assert definitions and all(" ".join(d.split()) in page for d in definitions)
