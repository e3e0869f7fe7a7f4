"""Checkpoints pushed to and pulled from a Hub-compatible server on loopback (tests/hub_server.py)."""

import pytest
import torch

from compressmem import (
    CheckpointMismatchError,
    ChunkingConfig,
    CompressedMemoryModel,
    CompressionConfig,
    GateConfig,
    MemoryConfig,
    ReadingConfig,
)
from compressmem.compressors import LearnedCompressor
from compressmem.gate import GateHead

from .conftest import tiny_model
from .hub_server import USER

CONFIG = MemoryConfig(chunking=ChunkingConfig(64), compression=CompressionConfig("learned", ratio=4),
                      reading=ReadingConfig("compressed"), gate=GateConfig("head", top_k=2))
CONTEXT = "The lighthouse keeper wrote the vault code 4719283 in the logbook before the storm. " * 12


def _trained(base_folder: str, config: MemoryConfig = CONFIG, seed: int = 0) -> CompressedMemoryModel:
    """A wrapper with every part a checkpoint can carry: a learned compressor (nonzero LoRA) and a gate head."""
    plain = CompressedMemoryModel.from_pretrained(base_folder, show_progress=False)
    compressor = LearnedCompressor.initialise(plain.model, config.compression.ratio, config.chunking.size, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, weight in plain.model.named_parameters():
            if "lora_B" in name:
                weight.normal_(0, 0.05, generator=generator)
        head = GateHead((1, 2), heads=4)
        head.weight.normal_(generator=generator)
    return CompressedMemoryModel(plain.model, plain.tokenizer, memory_config=config, base_name=base_folder,
                                 show_progress=False, gate_head=head,
                                 compressor=compressor)


def _same_memory(a: CompressedMemoryModel, b: CompressedMemoryModel) -> bool:
    first, second = a.compress(CONTEXT), b.compress(CONTEXT)
    return all(torch.equal(x.keys, y.keys) and torch.equal(x.values, y.values)
               for x, y in zip(first.blocks, second.blocks, strict=True))


def test_push_then_pull_with_the_base_or_from_the_repo_alone(hub, base_folder, tokenizer, tmp_path):
    model = _trained(base_folder)
    url = model.push_to_hub(f"{USER}/memory", token=hub.token, evaluation={"niah 4K accuracy": 0.5})
    assert url.startswith(f"{hub.url}/{USER}/memory/commit/")
    files = hub.repos[f"{USER}/memory"].commits[url.rsplit("/", 1)[1]]
    assert {"compressmem_config.json", "gate_head.safetensors", "compressor/adapter_model.safetensors",
            "README.md"} <= set(files)
    assert not any(path.endswith((".bin", ".pt", ".pth")) or path.startswith("model") for path in files)
    card = files["README.md"].decode()
    assert f'checkpoint="{USER}/memory"' in card and "| niah 4K accuracy | 0.5 |" in card

    pulled = CompressedMemoryModel.from_pretrained(base_folder, checkpoint=f"{USER}/memory", show_progress=False)
    assert pulled.memory_config == CONFIG
    assert torch.equal(pulled.gate_head.weight, model.gate_head.weight)
    assert _same_memory(pulled, model)

    alone = CompressedMemoryModel.from_pretrained(f"{USER}/memory", show_progress=False)
    assert alone.base_name == base_folder and alone.memory_config == CONFIG
    assert _same_memory(alone, model)

    other = tmp_path / "other"
    tiny_model("llama", tokenizer, 1).save_pretrained(other)
    tokenizer.save_pretrained(other)
    with pytest.raises(CheckpointMismatchError, match=f"'{USER}/memory'.*{base_folder}.*other"):
        CompressedMemoryModel.from_pretrained(str(other), checkpoint=f"{USER}/memory", show_progress=False)


def test_revisions_pin_what_is_loaded(hub, base_folder):
    first = _trained(base_folder, CONFIG.replace(gate=GateConfig("head", top_k=1)))
    commit = first.push_to_hub(f"{USER}/pinned", token=hub.token).rsplit("/", 1)[1]
    second = _trained(base_folder, CONFIG.replace(gate=GateConfig("head", top_k=3)), seed=1)
    second.push_to_hub(f"{USER}/pinned", token=hub.token, commit_message="top 3")
    _trained(base_folder, CONFIG.replace(gate=GateConfig("head", top_k=5)), seed=2).push_to_hub(
        f"{USER}/pinned", token=hub.token, revision="experiment")

    def top_k(**kwargs) -> int:
        return CompressedMemoryModel.from_pretrained(base_folder, checkpoint=f"{USER}/pinned", show_progress=False,
                                                     **kwargs).memory_config.gate.top_k

    assert (top_k(), top_k(revision=commit), top_k(revision="experiment")) == (3, 1, 5)
    assert hub.repos[f"{USER}/pinned"].refs["main"] != commit  # main moved on; the commit id still loads the first
    with pytest.raises(FileNotFoundError, match="no revision 'v9'"):
        top_k(revision="v9")


def test_a_pulled_checkpoint_loads_offline_from_the_cache(hub, base_folder, monkeypatch):
    import huggingface_hub.constants as constants

    model = _trained(base_folder)
    model.push_to_hub(f"{USER}/cached", token=hub.token)
    CompressedMemoryModel.from_pretrained(base_folder, checkpoint=f"{USER}/cached", show_progress=False)
    hub.stop()  # the Hub is gone: connection refused

    unreachable = CompressedMemoryModel.from_pretrained(base_folder, checkpoint=f"{USER}/cached", show_progress=False)
    assert _same_memory(unreachable, model)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    offline = CompressedMemoryModel.from_pretrained(f"{USER}/cached", show_progress=False)
    assert offline.base_name == base_folder and _same_memory(offline, model)
    with pytest.raises(FileNotFoundError, match="not in the local Hub cache"):
        CompressedMemoryModel.from_pretrained(base_folder, checkpoint=f"{USER}/never-downloaded", show_progress=False)


def test_a_private_checkpoint_needs_a_token(hub, base_folder):
    _trained(base_folder).push_to_hub(f"{USER}/secret", private=True, token=hub.token)
    assert hub.repos[f"{USER}/secret"].private
    with pytest.raises(FileNotFoundError, match="private.*token"):
        CompressedMemoryModel.from_pretrained(base_folder, checkpoint=f"{USER}/secret", show_progress=False)
    pulled = CompressedMemoryModel.from_pretrained(base_folder, checkpoint=f"{USER}/secret", token=hub.token,
                                                   show_progress=False)
    assert pulled.memory_config == CONFIG


def test_the_command_line_takes_a_hub_checkpoint_and_its_revision(hub, base_folder, tmp_path):
    import os
    import subprocess
    import sys

    _trained(base_folder).push_to_hub(f"{USER}/cli", token=hub.token, revision="v1")
    (tmp_path / "doc.txt").write_text(CONTEXT, encoding="utf-8")
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(tmp_path / "hf")}

    def ask(revision: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "compressmem.cli", "ask", "--model", base_folder, "--checkpoint",
                               f"{USER}/cli", "--revision", revision, "--context", str(tmp_path / "doc.txt"),
                               "--question", "What is the vault code?", "--quiet"],
                              env=env, capture_output=True, text=True, timeout=300)

    answered, missing = ask("v1"), ask("v2")
    assert answered.returncode == 0, answered.stderr[-2000:]
    assert missing.returncode != 0 and f"'{USER}/cli' has no revision 'v2'" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_revision_names_the_hub_checkpoints_and_base_revision_the_base(hub, base_folder, monkeypatch):
    import compressmem.model

    _trained(base_folder).push_to_hub(f"{USER}/revs", token=hub.token, revision="v1")
    asked = []
    load = compressmem.model.AutoModelForCausalLM.from_pretrained

    def spy(source, **kwargs):
        asked.append(kwargs.get("revision"))
        return load(source, **{k: v for k, v in kwargs.items() if k != "revision"})

    monkeypatch.setattr(compressmem.model.AutoModelForCausalLM, "from_pretrained", spy)
    CompressedMemoryModel.from_pretrained(base_folder, checkpoint=f"{USER}/revs", revision="v1", show_progress=False)
    CompressedMemoryModel.from_pretrained(base_folder, checkpoint=f"{USER}/revs", revision="v1", base_revision="b2",
                                          show_progress=False)
    CompressedMemoryModel.from_pretrained(base_folder, revision="r3", show_progress=False)
    assert asked == [None, "b2", "r3"]
