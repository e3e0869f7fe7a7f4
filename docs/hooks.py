"""MkDocs hook: publish the benchmark plots under the paths `benchmarks/RESULTS.md` links to.

`docs/results.md` includes `benchmarks/RESULTS.md` (pymdownx.snippets), whose image links are
relative to `benchmarks/` (`results/.../speed.png`) so that they read right on GitHub. Adding the
images of `benchmarks/results/` to the site as `results/...` makes the same links resolve from
`docs/results.md` too, without copying anything into `docs/` and without weakening the strict
build's link checks.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
IMAGES = ("*.png", "*.svg")


def on_files(files: Files, config: MkDocsConfig) -> Files:
    """Add every image under `benchmarks/results/` to the site as `results/...`."""
    for pattern in IMAGES:
        for path in sorted((BENCHMARKS / "results").rglob(pattern)):
            files.append(File(path.relative_to(BENCHMARKS).as_posix(), str(BENCHMARKS), config.site_dir,
                              config.use_directory_urls))
    return files
