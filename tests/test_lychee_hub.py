"""A LycheeMemory checkpoint (the paper's released layout) from the loopback Hub, as a user would load it.

The repo is the parity fixture's tiny random Qwen2 in their layout (`tests/fixtures/lycheememory/model`, plus its
byte-level tokenizer): random weights, so these tests assert that everything runs end to end and is refused where
it must be, not what the answers say.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi
from safetensors.torch import load_file, save_file

from compressmem import (
    BankMismatchError,
    CheckpointMismatchError,
    CompressedMemoryModel,
    GateConfig,
    MemoryBank,
    MemoryConfig,
)
from compressmem.compressors import LycheeCompressor
from compressmem.compressors.lychee import DIGEST_MARK, POINTER_FILE, is_lychee, projection_name, read_checkpoint
from compressmem.gate import GateHead
from compressmem.lychee import load_lychee, lychee_memory_config, push_lychee, save_lychee

from .hub_server import USER, HubServer

FIXTURE = Path(__file__).parent / "fixtures" / "lycheememory"
REPO = f"{USER}/LycheeMemory-tiny"
TEXT = (
    "Mara Quill was born in Port Sallow in 1871. The lighthouse keeper wrote the vault code 4719283 in the "
    "ledger before the storm. The harbour vault opens on Sundays only, and the key hangs in the chapel."
)


def lychee_folder(folder: Path, change: dict[str, torch.Tensor] | None = None) -> Path:
    """The fixture checkpoint and tokenizer in one folder, as their Hub repo holds them, with `change`'s tensors
    replaced. Its window of positions is raised from 512 to 8192 so that compressmem's (longer) prompts fit; no
    weight depends on it."""
    folder.mkdir(parents=True)
    for path in [*(FIXTURE / "model").iterdir(), *(FIXTURE / "tokenizer").iterdir()]:
        shutil.copy(path, folder / path.name)
    config = json.loads((folder / "config.json").read_text())
    config["max_position_embeddings"] = 8192
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    if change:
        state = load_file(str(folder / "model.safetensors"))
        state.update(change)
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def upload(hub: HubServer, folder: Path, repo: str) -> str:
    """Create `repo` on the loopback Hub with `folder`'s files; the commit's id."""
    api = HfApi(token=hub.token)
    api.create_repo(repo, exist_ok=True)
    commit = api.upload_folder(repo_id=repo, folder_path=folder, commit_message="LycheeMemory layout")
    return str(commit.oid)


def config() -> MemoryConfig:
    """The default configuration with the lexical gate (the default semantic gate needs an embedding model)."""
    return MemoryConfig(gate=GateConfig("lexical", top_k=2))


def test_is_lychee_reads_the_settings_keys() -> None:
    assert is_lychee(json.loads((FIXTURE / "model" / "config.json").read_text()))
    assert not is_lychee({"model_type": "qwen2", "hidden_size": 64})


def test_load_compress_answer_reload_and_refuse_other_extra_weights(hub, tmp_path) -> None:
    commit = upload(hub, lychee_folder(tmp_path / "theirs"), REPO)
    model = load_lychee(REPO, memory_config=None, show_progress=False)  # the defaults: the semantic gate
    assert isinstance(model, CompressedMemoryModel)
    compressor = model.compressor
    assert isinstance(compressor, LycheeCompressor)
    assert compressor.origin == (REPO, commit)  # the commit the weights were taken at, for save_lychee
    assert (compressor.ratio, compressor.settings.window) == (4.0, 32)  # their example's ratio; one window a chunk
    assert model.memory_config.compression is not None and model.memory_config.compression.method == "learned"
    assert model.memory_config.chunking.size == 32 and model.memory_config.reading.mode == "compressed"

    model = load_lychee(REPO, memory_config=lychee_memory_config(compressor.settings, 4, config()), show_progress=False)
    bank = model.compress(TEXT)
    assert bank.provenance.compressor_digest == model.compressor.digest(model.model)
    assert bank.provenance.compressor_digest.startswith(DIGEST_MARK)
    assert len(bank) == -(-len(TEXT.encode()) // 32)
    assert all(block.keys.shape[2] == -(-block.num_tokens // 4) for block in bank.blocks)
    answer = model.answer("What is the vault code?", bank=bank, return_sources=True, max_new_tokens=8)
    read = [step.block for step in answer.trace.steps]
    assert read and all(0 <= block < len(bank) for block in read)  # the gate picked blocks and they were read
    assert all(step.output_ids for step in answer.trace.steps)

    bank.save(tmp_path / "bank")
    reloaded = MemoryBank.load(tmp_path / "bank")
    again = model.answer("What is the vault code?", bank=reloaded, return_sources=True, max_new_tokens=8)
    assert [step.block for step in again.trace.steps] == read
    assert [s.output_ids for s in again.trace.steps] == [s.output_ids for s in answer.trace.steps]

    name = projection_name(1, "v")
    other_weights = load_file(str(FIXTURE / "model" / "model.safetensors"))[name] * 1.05
    upload(hub, lychee_folder(tmp_path / "other", {name: other_weights}), f"{USER}/LycheeMemory-other")
    other = load_lychee(f"{USER}/LycheeMemory-other", memory_config=model.memory_config, show_progress=False)
    assert other.fingerprint.digest == model.fingerprint.digest  # the same base weights, other extra tensors
    with pytest.raises(BankMismatchError, match="compressor weights lychee-"):
        other.answer("What is the vault code?", bank=reloaded, max_new_tokens=4)


def test_extra_tensors_that_do_not_fit_the_base_are_refused(hub, tmp_path) -> None:
    name = projection_name(2, "k")
    upload(hub, lychee_folder(tmp_path / "wrong", {name: torch.zeros(32, 48)}), f"{USER}/LycheeMemory-wrong")
    with pytest.raises(CheckpointMismatchError) as refused:
        load_lychee(f"{USER}/LycheeMemory-wrong", show_progress=False)
    message = str(refused.value)
    assert name in message and "[32, 48]" in message and "[32, 64]" in message


def test_a_plain_base_model_is_not_taken_for_a_lychee_checkpoint(base_folder) -> None:
    with pytest.raises(CheckpointMismatchError, match="no lychee_memory_"):
        load_lychee(base_folder, show_progress=False)


def test_push_stores_only_what_compressmem_adds_and_points_at_their_commit(hub, tmp_path) -> None:
    commit = upload(hub, lychee_folder(tmp_path / "theirs"), REPO)
    loaded = load_lychee(REPO, show_progress=False)
    gated = loaded.memory_config.replace(gate=GateConfig("head", top_k=2))
    head = GateHead((1, 2), heads=4)
    with torch.no_grad():
        head.weight.normal_(generator=torch.Generator().manual_seed(0))
    model = CompressedMemoryModel(
        loaded.model,
        loaded.tokenizer,
        memory_config=gated,
        base_name=loaded.base_name,
        show_progress=False,
        gate_head=head,
        compressor=loaded.compressor,
    )
    url = push_lychee(model, f"{USER}/memory-over-lychee", token=hub.token)
    files = hub.repos[f"{USER}/memory-over-lychee"].commits[url.rsplit("/", 1)[1]]
    assert set(files) - {".gitattributes"} == {
        "compressmem_config.json",
        POINTER_FILE,
        "gate_head.safetensors",
        "README.md",
    }
    pointer = json.loads(files[POINTER_FILE])
    assert (pointer["repo"], pointer["revision"], pointer["ratio"]) == (REPO, commit, 4.0)

    pulled = load_lychee(f"{USER}/memory-over-lychee", show_progress=False)
    assert pulled.memory_config == gated
    assert pulled.gate_head is not None and torch.equal(pulled.gate_head.weight, head.weight)
    assert isinstance(pulled.compressor, LycheeCompressor)
    assert pulled.compressor.digest(pulled.model) == model.compressor.digest(model.model)
    first, second = model.compress(TEXT), pulled.compress(TEXT)
    assert all(
        torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
        for a, b in zip(first.blocks, second.blocks, strict=True)
    )

    save_lychee(model, tmp_path / "saved")
    assert sorted(p.name for p in (tmp_path / "saved").iterdir()) == sorted(
        ["compressmem_config.json", POINTER_FILE, "gate_head.safetensors", "README.md"]
    )
    with pytest.raises(ValueError, match="save_pretrained"):
        save_lychee(CompressedMemoryModel(loaded.model, loaded.tokenizer, show_progress=False), tmp_path / "no")


def test_is_lychee_source_for_folders_and_hub_repos(hub, tmp_path, base_folder) -> None:
    from compressmem.compressors.lychee import is_lychee_source

    upload(hub, lychee_folder(tmp_path / "theirs"), REPO)
    assert is_lychee_source(REPO) and is_lychee_source(tmp_path / "theirs")
    assert not is_lychee_source(base_folder) and not is_lychee_source(f"{USER}/no-such-repo")


def test_from_pretrained_recognises_their_repo_and_a_checkpoint_pointing_at_it(hub, tmp_path) -> None:
    upload(hub, lychee_folder(tmp_path / "theirs"), REPO)
    settings = read_checkpoint(tmp_path / "theirs")[0]
    model = CompressedMemoryModel.from_pretrained(
        REPO, config=lychee_memory_config(settings, 4, config()), show_progress=False
    )
    assert isinstance(model.compressor, LycheeCompressor)
    bank = model.compress(TEXT)
    assert bank.provenance.compressor_digest.startswith(DIGEST_MARK)
    answer = model.answer("What is the vault code?", bank=bank, return_sources=True, max_new_tokens=4)
    assert answer.trace.steps

    model.save_pretrained(tmp_path / "ours")
    assert (tmp_path / "ours" / POINTER_FILE).is_file() and not list((tmp_path / "ours").glob("model*.safetensors"))
    again = CompressedMemoryModel.from_pretrained(tmp_path / "ours", show_progress=False)
    assert isinstance(again.compressor, LycheeCompressor) and again.memory_config == model.memory_config
    assert again.compressor.digest(again.model) == model.compressor.digest(model.model)
