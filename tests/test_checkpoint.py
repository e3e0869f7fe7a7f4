import json

import pytest

from compressmem import (
    CheckpointMismatchError,
    ChunkingConfig,
    CompressedMemoryModel,
    GateConfig,
    MemoryConfig,
    ReadingConfig,
)
from compressmem.hf.compat import attention_implementation

from .conftest import tiny_model


def _save_tiny_base(folder, tokenizer, seed):
    model = tiny_model("llama", tokenizer, seed)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_checkpoint_round_trip_and_base_model_check(tokenizer, tmp_path):
    base = _save_tiny_base(tmp_path / "base", tokenizer, 0)
    other = _save_tiny_base(tmp_path / "other", tokenizer, 1)
    config = MemoryConfig(chunking=ChunkingConfig(128), gate=GateConfig(top_k=3), reading=ReadingConfig(recall=True))
    model = CompressedMemoryModel.from_pretrained(str(base), config=config, show_progress=False)
    model.save_pretrained(tmp_path / "ckpt")
    saved = json.loads((tmp_path / "ckpt" / "compressmem_config.json").read_text())
    assert saved["base_model"]["digest"] == model.fingerprint.digest
    assert not list((tmp_path / "ckpt").glob("*.bin")) and not list((tmp_path / "ckpt").glob("*.pt"))

    reloaded = CompressedMemoryModel.from_pretrained(str(base), checkpoint=tmp_path / "ckpt", show_progress=False)
    assert reloaded.memory_config == config
    with pytest.raises(CheckpointMismatchError, match="base.*other|other.*base"):
        CompressedMemoryModel.from_pretrained(str(other), checkpoint=tmp_path / "ckpt", show_progress=False)
    with pytest.raises(FileNotFoundError, match="not a compressmem checkpoint"):
        CompressedMemoryModel.from_pretrained(str(base), checkpoint=tmp_path, show_progress=False)


def test_hf_kwargs_reach_transformers(tokenizer, tmp_path):
    import torch

    base = _save_tiny_base(tmp_path / "base", tokenizer, 0)
    model = CompressedMemoryModel.from_pretrained(str(base), torch_dtype=torch.bfloat16, attn_implementation="eager",
                                                  show_progress=False)
    assert model.dtype == torch.bfloat16 and attention_implementation(model.model) == "eager"


def test_save_writes_a_model_card_and_keeps_an_edited_one(tokenizer, tmp_path):
    from huggingface_hub import ModelCard

    base = _save_tiny_base(tmp_path / "base", tokenizer, 0)
    config = MemoryConfig(chunking=ChunkingConfig(128), gate=GateConfig(top_k=3))
    model = CompressedMemoryModel.from_pretrained(str(base), config=config, show_progress=False)
    model.save_pretrained(tmp_path / "ckpt", evaluation={"niah_single 16K accuracy": 0.925})
    assert f'checkpoint="{tmp_path / "ckpt"}"' in (tmp_path / "ckpt" / "README.md").read_text()
    card = ModelCard.load(tmp_path / "ckpt" / "README.md")
    assert card.data.base_model == str(base) and card.data.library_name == "compressmem"
    assert "| `gate.top_k` | `3` |" in card.text and "| `chunking.size` | `128` |" in card.text
    assert "| `compression` | `None` |" in card.text  # the bank holds token ids only: said, not hidden
    assert "| `notes.max_tokens` |" not in card.text  # a default: left out
    assert "| niah_single 16K accuracy | 0.925 |" in card.text and model.fingerprint.digest[:12] in card.text

    model.save_pretrained(tmp_path / "ckpt")  # a generated card is regenerated
    assert "niah_single 16K accuracy" not in (tmp_path / "ckpt" / "README.md").read_text()
    (tmp_path / "ckpt" / "README.md").write_text("# My own notes\n")
    model.save_pretrained(tmp_path / "ckpt", evaluation={"x": 1.0})
    assert (tmp_path / "ckpt" / "README.md").read_text() == "# My own notes\n"


def test_a_checkpoint_from_a_newer_compressmem_says_to_upgrade(tokenizer, tmp_path):
    base = _save_tiny_base(tmp_path / "base", tokenizer, 0)
    CompressedMemoryModel.from_pretrained(str(base), show_progress=False).save_pretrained(tmp_path / "ckpt")
    path = tmp_path / "ckpt" / "compressmem_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "format_version": 99}))
    with pytest.raises(CheckpointMismatchError, match="format 99.*upgrade compressmem"):
        CompressedMemoryModel.from_pretrained(str(base), checkpoint=tmp_path / "ckpt", show_progress=False)
    with pytest.raises(FileNotFoundError, match="neither a folder nor a Hub repo id"):
        CompressedMemoryModel.from_pretrained(str(base), checkpoint=tmp_path / "missing", show_progress=False)


@pytest.mark.parametrize("edit, message", [
    (lambda text, data: "{ not json", "is not valid JSON"),
    (lambda text, data: "", "is not valid JSON"),
    (lambda text, data: json.dumps([data]), "must hold a JSON object, got list"),
    (lambda text, data: json.dumps({**data, "format_version": "2"}), "format_version must be a positive integer"),
    (lambda text, data: json.dumps({k: v for k, v in data.items() if k != "format_version"}), "got None"),
    (lambda text, data: json.dumps({**data, "format_version": -1}), "got -1"),
    (lambda text, data: json.dumps({k: v for k, v in data.items() if k != "base_model"}), "base_model must be"),
    (lambda text, data: json.dumps({**data, "config": ["not", "settings"]}), "no valid compressmem configuration"),
])
def test_a_damaged_checkpoint_config_is_refused_naming_the_file(tokenizer, tmp_path, edit, message):
    base = _save_tiny_base(tmp_path / "base", tokenizer, 0)
    CompressedMemoryModel.from_pretrained(str(base), show_progress=False).save_pretrained(tmp_path / "ckpt")
    path = tmp_path / "ckpt" / "compressmem_config.json"
    text = path.read_text()
    path.write_text(edit(text, json.loads(text)))
    with pytest.raises(CheckpointMismatchError, match=message):
        CompressedMemoryModel.from_pretrained(str(base), checkpoint=tmp_path / "ckpt", show_progress=False)
