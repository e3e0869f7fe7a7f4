"""examples/push_and_pull.py, run as written against the Hub stand-in (HF_ENDPOINT pointed at it)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .hub_server import USER, HubServer

ROOT = Path(__file__).resolve().parents[1]
FACT = "4719283"


@pytest.mark.slow
def test_push_and_pull_example_round_trips_the_gate_checkpoint(tmp_path):
    text = (ROOT / "examples" / "long_document.txt").read_text(encoding="utf-8")
    at = text.index(FACT)
    (tmp_path / "excerpt.txt").write_text(text[at - 6000:at + 6000], encoding="utf-8")  # ~3K tokens around it
    with HubServer() as hub:
        env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_TOKEN": hub.token, "HF_HUB_DISABLE_XET": "1",
               "HF_HOME": str(tmp_path / "hf"), "OMP_NUM_THREADS": "2"}
        run = subprocess.run([sys.executable, "examples/push_and_pull.py", f"{USER}/gate", "--private",
                              "--document", str(tmp_path / "excerpt.txt")],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr[-3000:]
        repo = hub.repos[f"{USER}/gate"]
        assert repo.private and "gate_head.safetensors" in repo.commits[repo.refs["main"]]
    lines = dict(line.split(": ", 1) for line in run.stdout.splitlines() if ": " in line)
    assert lines["pushed"].startswith(f"{hub.url}/{USER}/gate/commit/{repo.refs['main']}")
    assert lines["pulled"] == "base HuggingFaceTB/SmolLM2-135M-Instruct, gate head"
    assert FACT in lines["answer"]
