"""Bases split over devices by accelerate (`device_map`): layers offloaded to disk, KV placed per layer."""

import pytest
import torch

from compressmem import (
    ChunkingConfig,
    CompressedMemoryModel,
    CompressionConfig,
    GateConfig,
    MemoryConfig,
    ReadingConfig,
)
from compressmem.hf.placement import layer_devices

CONFIG = MemoryConfig(chunking=ChunkingConfig(64), compression=CompressionConfig(), reading=ReadingConfig("compressed"),
                      gate=GateConfig("attention", layers=(1, 2), top_k=2))
CONTEXT = "The vault code is 4719283, said the keeper. Bakers rise before dawn to knead bread. " * 30
HALF_ON_DISK = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu",
                "model.layers.1": "cpu", "model.layers.2": "disk", "model.layers.3": "disk", "model.norm": "disk",
                "lm_head": "disk"}


def test_a_base_with_layers_offloaded_to_disk_compresses_and_answers_like_one_on_a_device(base_folder, tmp_path):
    whole = CompressedMemoryModel.from_pretrained(base_folder, config=CONFIG, show_progress=False)
    split = CompressedMemoryModel.from_pretrained(base_folder, config=CONFIG, show_progress=False,
                                                  device_map=HALF_ON_DISK, offload_folder=str(tmp_path / "offload"))
    layers = split.model.get_decoder().layers
    assert next(layers[3].parameters()).device.type == "meta"  # its weights really rest on disk
    assert layer_devices(split.model) == [torch.device("cpu")] * 4  # ... and it computes on the CPU
    assert split.fingerprint == whole.fingerprint

    expected, got = whole.compress(CONTEXT), split.compress(CONTEXT)
    for a, b in zip(expected.blocks, got.blocks, strict=True):
        torch.testing.assert_close(b.keys, a.keys)
        torch.testing.assert_close(b.values, a.values)
    prompt = whole.prompt_ids("What is the vault code?")
    kwargs = dict(max_new_tokens=8, do_sample=False, return_dict_in_generate=True)
    want, have = whole.generate(prompt, bank=expected, **kwargs), split.generate(prompt, bank=got, **kwargs)
    assert have.trace[0].blocks_read == want.trace[0].blocks_read and len(want.trace[0].blocks_read) > 0
    assert torch.equal(have.sequences, want.sequences)


def test_a_base_offloaded_whole_is_refused_with_what_to_do(base_folder, tmp_path):
    with pytest.raises(ValueError, match="input embeddings were offloaded.*max_memory"):
        CompressedMemoryModel.from_pretrained(base_folder, config=CONFIG, show_progress=False, device_map={"": "disk"},
                                              offload_folder=str(tmp_path / "offload"))
