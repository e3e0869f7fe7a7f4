"""The checkpoint's model card (`README.md`): what a reader of the Hub page needs to use it.

YAML front matter from `huggingface_hub.ModelCardData` (base model, library, tags), then the base
model and its fingerprint, the trained parts, the `MemoryConfig` settings that differ from the
defaults, how to load it, and evaluation numbers when the caller gives them. A card without the
generated marker (one the user wrote, or edited and then removed the marker from) is never overwritten.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCardData

from .config import MemoryConfig
from .hf.fingerprint import BaseFingerprint

CARD_FILE = "README.md"
GENERATED_MARKER = "<!-- compressmem rewrites this card on every save; delete this line to keep your edits -->"


def write_model_card(
    directory: Path,
    location: str,
    fingerprint: BaseFingerprint,
    config: MemoryConfig,
    parts: list[str],
    evaluation: Mapping[str, float | str] | None = None,
) -> bool:
    """Write `directory/README.md` unless it holds a card without the marker; returns whether it wrote one.
    `location` is where users will load the checkpoint from (its folder or Hub repo id)."""
    path = directory / CARD_FILE
    if path.exists() and GENERATED_MARKER not in path.read_text(encoding="utf-8"):
        return False
    path.write_text(model_card(location, fingerprint, config, parts, evaluation), encoding="utf-8")
    return True


def model_card(
    location: str,
    fingerprint: BaseFingerprint,
    config: MemoryConfig,
    parts: list[str],
    evaluation: Mapping[str, float | str] | None = None,
) -> str:
    """The card's text: front matter, then sections for the base model, settings, usage and results."""
    front = ModelCardData(
        base_model=fingerprint.name,
        library_name="compressmem",
        tags=["compressmem", "long-context", *_method_tag(config)],
    ).to_yaml()
    lines = [
        f"---\n{front}\n---",
        "",
        f"# compressmem checkpoint for {fingerprint.name}",
        "",
        "A [compressmem](https://pypi.org/project/compressmem/) checkpoint: it holds only what compressmem "
        "adds to the base model, never the base model's weights.",
        "",
        f"- Base model: `{fingerprint.name}` (fingerprint `{fingerprint.digest[:12]}`; loading it on another "
        "base model is refused)",
        f"- Trained parts: {', '.join(parts) if parts else 'none (training-free settings only)'}",
        "",
        "## Settings",
        "",
        *_settings_table(config),
        "",
        "## Use",
        "",
        "```python",
        "from compressmem import CompressedMemoryModel",
        "",
        f'model = CompressedMemoryModel.from_pretrained("{fingerprint.name}", checkpoint="{location}")',
        'out = model.generate(model.prompt_ids("Your question?"), context=long_text, max_new_tokens=64)',
        "```",
    ]
    if evaluation:
        lines += ["", "## Evaluation", "", "| metric | value |", "|---|---|"]
        lines += [f"| {name} | {_format(value)} |" for name, value in evaluation.items()]
    return "\n".join([*lines, "", GENERATED_MARKER, ""])


def _settings_table(config: MemoryConfig) -> list[str]:
    """The settings that differ from `MemoryConfig()`'s defaults, by dotted name (all of them would bury the few
    that matter), and always the chunk size and the compression."""
    ours, defaults = _flat(config.to_dict()), _flat(MemoryConfig().to_dict())
    rows = [
        (name, value)
        for name, value in ours.items()
        if value != defaults.get(name, object()) or name == "chunking.size" or name.startswith("compression")
    ]
    return ["| setting | value |", "|---|---|", *[_row(name, value) for name, value in rows]]


def _flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _method_tag(config: MemoryConfig) -> list[str]:
    return [] if config.compression is None else [f"compressor-{config.compression.method}"]


def _row(name: str, value: object) -> str:
    shown = repr(value).replace("|", "\\|")  # a template's pipe would split the table cell
    return f"| `{name}` | `{shown}` |"


def _format(value: float | str) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
