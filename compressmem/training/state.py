"""What a trainer leaves in its output folder besides the checkpoint: optimiser state, log, curve.

`trainer_state.safetensors` holds the step reached and AdamW's moments (no pickle), so a run
resumes exactly where it stopped; the log is JSONL, one line a step, and its curve a PNG.
"""

from __future__ import annotations

import json
import resource
from pathlib import Path
from typing import Any

import torch

TRAINER_STATE = "trainer_state.safetensors"


def save_trainer_state(optimizer: torch.optim.Optimizer, step: int, out: Path, settings: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    tensors = {}
    for index, state in optimizer.state_dict()["state"].items():
        for name, value in state.items():
            tensors[f"{index}.{name}"] = torch.as_tensor(value).detach().cpu().contiguous()
    save_file(tensors, str(out / TRAINER_STATE), metadata={"step": str(step), "config": json.dumps(settings)})


def resume_trainer_state(optimizer: torch.optim.Optimizer, out: Path) -> int:
    """Restore AdamW's state from `out` and return the step it reached (0 for a new run)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = out / TRAINER_STATE
    if not path.is_file():
        return 0
    with safe_open(str(path), framework="pt") as handle:
        step = int((handle.metadata() or {})["step"])
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in load_file(str(path)).items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value.to(optimizer.param_groups[0]["params"][0].device)
    saved = optimizer.state_dict()
    saved["state"] = state
    optimizer.load_state_dict(saved)
    return step


def read_log(path: Path, step: int) -> list[dict]:
    """The log entries of a run up to `step` (none for a new run)."""
    if not step or not path.is_file():
        return []
    return [entry for entry in map(json.loads, path.read_text().splitlines()) if entry["step"] <= step]


def write_log(log: list[dict], path: Path, key: str, label: str) -> None:
    """Write the JSONL log and, when matplotlib is installed, the curve of `key` beside it (same name, .png)."""
    path.write_text("".join(json.dumps(entry) + "\n" for entry in log), encoding="utf-8")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return  # the JSONL log holds the same curve
    figure, axis = plt.subplots(figsize=(6, 4))
    axis.plot([entry["step"] for entry in log], [entry[key] for entry in log])
    axis.set_xlabel("step")
    axis.set_ylabel(label)
    figure.tight_layout()
    figure.savefig(path.with_suffix(".png"))
    plt.close(figure)


def peak_memory_mib() -> float:
    """Peak accelerator memory on a GPU, else the process's peak resident memory, in MiB (for the logs)."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
