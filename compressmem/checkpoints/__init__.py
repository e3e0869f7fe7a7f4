"""Checkpoints shipped inside compressmem, in checkpoint layout: pass one as `checkpoint=` to
`CompressedMemoryModel.from_pretrained` (or `--checkpoint` on the command line)."""

from pathlib import Path

SMOLLM2_GATE = Path(__file__).resolve().parent / "smollm2-135m-instruct-gate"
"""A gate head trained for SmolLM2-135M-Instruct (`compressmem train gate`; see its README.md)."""

SMOLLM2_LEARNED = Path(__file__).resolve().parent / "smollm2-135m-instruct-learned-r4"
"""A learned compressor (ratio 4, chunks of 256) for SmolLM2-135M-Instruct, pre-trained for 1150
steps on one GPU (see its README.md and docs/training.md)."""

__all__ = ["SMOLLM2_GATE", "SMOLLM2_LEARNED"]
