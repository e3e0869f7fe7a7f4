"""Checkpoints shipped inside compressmem, in checkpoint layout: pass one as `memory=` to
`CompressedMemoryModel.from_pretrained` (or `--memory` on the command line)."""

from pathlib import Path

SMOLLM2_GATE = Path(__file__).resolve().parent / "smollm2-135m-instruct-gate"
"""A gate head trained for SmolLM2-135M-Instruct (`compressmem train gate`; see its README.md)."""

__all__ = ["SMOLLM2_GATE"]
