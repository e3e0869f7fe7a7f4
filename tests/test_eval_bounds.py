"""An evaluation checks the memory its longest case needs before making any, makes its cases one at a time, and
names a haystack folder given for a file (issue 26, items 8 and 11)."""

from __future__ import annotations

import pytest

from compressmem import ContextError
from compressmem.cli import main
from compressmem.eval import make_cases
from compressmem.eval.runner import EVAL_BYTES_PER_TOKEN, check_memory
from compressmem.eval.tasks import iter_cases

HAYSTACK = "The harbour town kept its records in a stone archive by the quay. " * 200


def test_a_length_beyond_the_memory_is_refused_with_what_fits():
    length, available = 500 * 2**20, 16 * 2**30
    need = f"{length * EVAL_BYTES_PER_TOKEN / 2**30:.1f} GiB"
    fits = available // EVAL_BYTES_PER_TOKEN
    with pytest.raises(ContextError) as refused:
        check_memory(length, available=available)
    message = str(refused.value)
    assert f"{length:,} tokens needs about {need}" in message and f"{fits:,} tokens" in message
    check_memory(2**20, available=available)  # 1M tokens fits in 16 GiB


def test_the_cli_refuses_500m_in_one_line_before_making_a_case(base_folder, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("compressmem.eval.runner.available_bytes", lambda: 16 * 2**30)
    monkeypatch.setattr("compressmem.eval.runner.iter_cases", lambda *a, **k: pytest.fail("a case was made"))
    status = main(["eval", "--model", base_folder, "--task", "niah_single", "--lengths", "500m", "--n", "1",
                   "--modes", "default", "--out", str(tmp_path / "out"), "--no-plots", "--quiet",
                   "--chunk-size", "64"])
    err = capsys.readouterr().err
    assert status == 1 and "524,288,000 tokens needs about" in err and "Traceback" not in err


def test_cases_are_made_one_at_a_time_and_equal_the_list(tokenizer):
    lazy = iter_cases("niah_single", tokenizer, 256, 3, 0, haystack=HAYSTACK)
    first = next(lazy)
    listed = make_cases("niah_single", tokenizer, 256, 3, 0, haystack=HAYSTACK)
    assert first == listed[0] and list(lazy) == listed[1:]


def test_a_haystack_folder_is_named_as_a_folder(tokenizer, tmp_path):
    with pytest.raises(IsADirectoryError, match="is a folder; --haystack takes a file"):
        make_cases("niah_single", tokenizer, 256, 1, 0, haystack=tmp_path)
