"""The command line's errors (issue 17): a bad option value is argparse's usage error (exit status 2); a failure
the user can put right is one line `compressmem COMMAND: message` (exit status 1); neither shows a traceback, unless
--debug is given; a bug keeps its traceback. Run in-process through `main`, on a tiny random model."""

from __future__ import annotations

import json

import pytest

from compressmem import MemoryBank

from compressmem.cli import main

from .conftest import tiny_model

TEXT = "The lighthouse keeper wrote down every ship that passed the harbour in a long blue ledger. " * 40


@pytest.fixture(scope="module")
def files(tokenizer, tmp_path_factory):
    """A tiny base model folder and a text file, shared by the module's tests."""
    folder = tmp_path_factory.mktemp("cli_errors")
    base = folder / "base"
    tiny_model("llama", tokenizer).save_pretrained(base)
    tokenizer.save_pretrained(base)
    document = folder / "doc.txt"
    document.write_text(TEXT, encoding="utf-8")
    return base, document


def cli(capsys, *argv) -> tuple[int, str]:
    """Run `compressmem ARGV`; its exit status and stderr (which must hold no traceback)."""
    try:
        code = main([str(arg) for arg in argv])
    except SystemExit as exit:
        code = exit.code
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return code, err


def model(files) -> list[str]:
    return ["--model", files[0], "--quiet"]


@pytest.mark.parametrize("argv, message", [
    (["compress", "{doc}", "-o", "{tmp}/x.safetensors", "--chunk-size", "-5"], "argument --chunk-size: must be a "
                                                                               "positive integer, got '-5'"),
    (["compress", "{doc}", "-o", "{tmp}/x.safetensors", "--chunk-size", "0"], "argument --chunk-size: must be a "
                                                                              "positive integer, got '0'"),
    (["ask", "--context", "{doc}", "--question", "Who?", "--max-new-tokens", "-1"], "argument --max-new-tokens"),
    (["ask", "--context", "{doc}", "--question", "Who?", "--max-new-tokens", "0"], "argument --max-new-tokens"),
    (["ask", "--context", "{doc}", "--question", "Who?", "--device", "bogus"], "'bogus' is not a device"),
    (["ask", "--context", "{doc}", "--question", "   "], "argument --question: is empty"),
    (["ask", "--context", "{doc}", "--question", "Who?", "--memory", "{tmp}", "--checkpoint", "{tmp}"],
     "give --checkpoint only"),
    (["eval", "--task", "niah_single,bogus", "--out", "{tmp}/eval", "--no-plots"], "unknown task 'bogus'"),
    (["eval", "--modes", "default,bogus", "--out", "{tmp}/eval", "--no-plots", "--n", "1", "--lengths", "1k"],
     "unknown mode 'bogus'"),
])
def test_a_bad_option_value_is_a_usage_error(files, tmp_path, capsys, argv, message):
    """Exit status 2, the command's usage and one line naming the option; checked before any model is loaded."""
    argv = [arg.format(doc=files[1], tmp=tmp_path) for arg in argv]
    code, err = cli(capsys, *argv, *model(files))
    assert code == 2
    assert err.startswith("usage: compressmem ") and f"compressmem {argv[0]}: error: " in err and message in err, err
    assert not (tmp_path / "x.safetensors").exists()


def test_a_device_this_machine_lacks_is_a_usage_error(files, capsys):
    import torch

    if torch.cuda.is_available():
        device = f"cuda:{torch.cuda.device_count()}"
        message = f"'{device}': this machine has {torch.cuda.device_count()} cuda device"
    else:
        device, message = "cuda:0", "'cuda:0': this machine has no cuda device"
    code, err = cli(capsys, "ask", "--context", files[1], "--question", "Who?", "--device", device, *model(files))
    assert code == 2 and message in err, err


def test_an_empty_file_is_refused_before_the_model_loads(files, tmp_path, capsys):
    empty, blank = tmp_path / "empty.txt", tmp_path / "blank.txt"
    empty.write_text("")
    blank.write_text("  \n\n\t ")
    for file, what in ((empty, "is empty"), (blank, "is only whitespace")):
        for argv in (["compress", file, "-o", tmp_path / "bank.safetensors"], ["compress", file, "-o", tmp_path / "f"],
                     ["ask", "--context", file, "--question", "Who?"]):
            code, err = cli(capsys, *argv, "--model", tmp_path / "no-model", "--quiet")
            assert code == 1, err
            assert err == f"compressmem {argv[0]}: {file} {what}: there is nothing to read; give a file with text in " \
                          "it.\n"


def test_a_malformed_config_is_named(files, tmp_path, capsys):
    config = tmp_path / "config.json"
    for content, message in (("{not json", "is not a JSON configuration (Expecting property name"),
                             ('{"chunking": {"size": -3}}', "is not a valid MemoryConfig: chunking.size must be a "
                                                            "positive integer, got -3.")):
        config.write_text(content)
        code, err = cli(capsys, "compress", files[1], "-o", tmp_path / "x.safetensors", "--config", config,
                        *model(files))
        assert code == 1 and err.startswith(f"compressmem compress: --config {config} {message}"), err
        assert len(err.splitlines()) == 1
    code, err = cli(capsys, "compress", files[1], "-o", tmp_path / "x.safetensors", "--config", tmp_path / "none.json",
                    *model(files))
    assert code == 1 and f"cannot read --config {tmp_path / 'none.json'}: No such file or directory" in err, err


def test_a_reused_output_folder_is_refused_before_the_model_loads(files, tmp_path, capsys):
    folder = tmp_path / "bank"
    assert cli(capsys, "compress", files[1], "-o", folder, "--chunk-size", "64", *model(files))[0] == 0
    code, err = cli(capsys, "compress", files[1], "-o", folder, "--model", tmp_path / "no-model", "--quiet")
    assert code == 1 and err == f"compressmem compress: {folder} already holds a memory bank; pass --overwrite to " \
                                "replace it, or choose an empty folder.\n"
    first = MemoryBank.load(folder)
    assert cli(capsys, "compress", files[1], "-o", folder, "--chunk-size", "32", "--overwrite", *model(files))[0] == 0
    again = MemoryBank.load(folder)  # replaced: its chunks are the new size, no shard of the old bank is left
    assert len(again) > len(first) and len(list(folder.glob("blocks-*.safetensors"))) >= 1


def test_an_existing_file_or_a_folder_of_other_files_is_not_written_over(files, tmp_path, capsys):
    output = tmp_path / "mine.safetensors"
    output.write_bytes(b"the user's own file")
    code, err = cli(capsys, "compress", files[1], "-o", output, "--model", tmp_path / "no-model", "--quiet")
    assert code == 1 and err == f"compressmem compress: {output} already exists; pass --overwrite to replace it, " \
                                "or choose another name.\n"
    assert output.read_bytes() == b"the user's own file"
    assert cli(capsys, "compress", files[1], "-o", output, "--chunk-size", "64", "--overwrite", *model(files))[0] == 0
    assert len(MemoryBank.load(output)) > 0
    folder = tmp_path / "documents"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    code, err = cli(capsys, "compress", files[1], "-o", folder, "--model", tmp_path / "no-model", "--quiet")
    assert code == 1 and "holds files that are not a memory bank (notes.txt)" in err and "--overwrite" in err, err
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]


def test_an_output_in_a_missing_folder_is_refused_before_the_model_loads(files, tmp_path, capsys):
    output = tmp_path / "nowhere" / "doc.safetensors"
    code, err = cli(capsys, "compress", files[1], "-o", output, "--model", tmp_path / "no-model", "--quiet")
    assert code == 1 and err == f"compressmem compress: cannot write {output}: the folder {output.parent} does not " \
                                "exist; create it first.\n"


def test_a_truncated_bank_is_one_line(files, tmp_path, capsys):
    """A bank file cut short, and a bank folder whose shard is cut short (read only when the question is asked)."""
    bank, folder = tmp_path / "doc.safetensors", tmp_path / "bank"
    for output in (bank, folder):
        assert cli(capsys, "compress", files[1], "-o", output, "--chunk-size", "64", *model(files))[0] == 0
    bank.write_bytes(bank.read_bytes()[:3000])
    shard = next(folder.glob("blocks-*.safetensors"))
    shard.write_bytes(shard.read_bytes()[:2000])
    for source in (bank, folder):
        code, err = cli(capsys, "ask", "--context", source, "--question", "Who kept the ledger?", *model(files))
        assert code == 1 and len(err.splitlines()) == 1 and str(source) in err, err


def _checkpoint_with_reasoner(base, folder):
    from compressmem import CompressedMemoryModel
    from compressmem.training.grpo import with_reasoner_adapter

    loaded = CompressedMemoryModel.from_pretrained(str(base), show_progress=False)
    with_reasoner_adapter(loaded, rank=2).save_pretrained(folder)
    return folder


def test_a_damaged_checkpoint_is_one_line(files, tmp_path, capsys):
    checkpoint = _checkpoint_with_reasoner(files[0], tmp_path / "ckpt")
    settings = checkpoint / "reasoner" / "adapter_config.json"
    config = json.loads(settings.read_text())
    settings.write_text(json.dumps({**config, "r": 4}))
    code, err = cli(capsys, "ask", "--context", files[1], "--question", "Who?", "--checkpoint", checkpoint,
                    *model(files))
    assert code == 1 and len(err.splitlines()) == 1, err
    assert f"{checkpoint / 'reasoner' / 'adapter_model.safetensors'} does not fit this model" in err
    assert "rank 2 but adapter_config.json says r=4" in err
    (checkpoint / "compressmem_config.json").write_text('{"format_version": 2')
    code, err = cli(capsys, "ask", "--context", files[1], "--question", "Who?", "--checkpoint", checkpoint,
                    *model(files))
    assert code == 1 and "compressmem_config.json is not valid JSON" in err, err


def test_a_model_that_cannot_be_found_or_loaded_is_one_line(files, tmp_path, capsys, monkeypatch):
    ask = ["ask", "--context", files[1], "--question", "Who?", "--quiet"]
    for name in (tmp_path / "no-model", "does/not/exist"):
        code, err = cli(capsys, *ask, "--model", name)
        assert code == 1 and err == f"compressmem ask: --model {name}: no such folder, and not a Hub model id " \
                                    "(org/name); give a model folder or a Hub model id.\n"
    folder = tmp_path / "not-a-model"
    folder.mkdir()
    code, err = cli(capsys, *ask, "--model", folder)
    assert code == 1 and err.startswith(f"compressmem ask: --model {folder} is a folder without config.json"), err
    (folder / "config.json").write_text("{}")  # transformers' ValueError: no model_type
    code, err = cli(capsys, *ask, "--model", folder)
    assert code == 1 and err.startswith(f"compressmem ask: cannot load the model {folder}: Unrecognized model"), err
    # a Hub id that cannot be downloaded: transformers' OSError (offline here, so the test waits on no network)
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    code, err = cli(capsys, *ask, "--model", "compressmem-tests/no-such-model-5f3a")
    assert code == 1 and err.startswith("compressmem ask: cannot load the model compressmem-tests/no-such-model-5f3a "
                                        "(no such folder here, so it was looked for on the Hub): "), err
    assert len(err.splitlines()) == 1


def test_a_value_the_library_refuses_is_one_line(files, tmp_path, capsys):
    """A ValueError raised by compressmem's own checks is the user's to put right."""
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"context": TEXT, "question": "Who?", "answers": ["the keeper"]}) + "\n")
    code, err = cli(capsys, "train", "grpo", "--data", data, "--out", tmp_path / "run", "--group-size", "1",
                    "--steps", "1", *model(files))
    assert code == 1 and err.startswith("compressmem train grpo: group_size must be at least 2"), err
    data.write_text(data.read_text() + "{not json\n")
    code, err = cli(capsys, "train", "grpo", "--data", data, "--out", tmp_path / "run", "--steps", "1",
                    *model(files))
    assert code == 1 and err.startswith(f"compressmem train grpo: {data}:2 is not a JSON object"), err


def test_debug_shows_the_traceback(files, tmp_path, capsys):
    """--debug after the command or before it: the failure is raised, so Python prints its traceback."""
    from compressmem import CheckpointMismatchError

    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    (checkpoint / "compressmem_config.json").write_text("[]")
    ask = ["ask", "--context", files[1], "--question", "Who?", "--checkpoint", checkpoint, *model(files)]
    for argv in ([*ask, "--debug"], ["--debug", *ask]):
        with pytest.raises(CheckpointMismatchError, match="must hold a JSON object"):
            main([str(arg) for arg in argv])


def test_a_bug_keeps_its_traceback(files, monkeypatch, capsys):
    """An error no user input explains (here a TypeError, and a ValueError from outside compressmem) shows its
    traceback and asks for a report; Ctrl-C is one line and exit status 130."""
    from compressmem import CompressedMemoryModel

    ask = ["ask", "--context", str(files[1]), "--question", "Who?", *map(str, model(files))]
    for error in (TypeError("an internal mistake"), ValueError("deep inside a dependency"), KeyboardInterrupt()):
        def fail(*args, error=error, **kwargs):
            raise error

        monkeypatch.setattr(CompressedMemoryModel, "answer", fail)
        code = main(ask)
        err = capsys.readouterr().err
        if isinstance(error, KeyboardInterrupt):
            assert code == 130 and err == "compressmem ask: interrupted.\n"
            continue
        assert code == 1 and "Traceback" in err and str(error) in err
        assert err.splitlines()[-1].startswith(f"compressmem ask: unexpected {type(error).__name__}; this is a bug")
