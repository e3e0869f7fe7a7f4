"""A saved LoRA adapter that does not fit the model it is loaded into (another rank, another base model's layer
sizes or layers, a damaged file) is refused with `CheckpointMismatchError` naming the file, the tensor and both
shapes, before any weight is copied, and leaves the model without the adapter (issue 17)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from compressmem import CheckpointMismatchError
from compressmem.hf.adapters import REASONER_ADAPTER, WEIGHTS_FILE, ReasonerAdapter, adapter_weights

from .conftest import tiny_model


@pytest.fixture
def saved(tokenizer, tmp_path):
    """A rank-8 reasoner adapter saved from a tiny llama (hidden size 64), with non-zero weights."""
    model = tiny_model("llama", tokenizer)
    adapter = ReasonerAdapter.initialise(model, rank=8, seed=1)
    with torch.no_grad():
        for weight in adapter.weights(model):
            weight.normal_()
    folder = tmp_path / "adapter"
    adapter.save(model, folder)
    return folder


def _refused(model, folder, *fragments):
    with pytest.raises(CheckpointMismatchError) as refused:
        ReasonerAdapter.load(model, folder)
    message = str(refused.value)
    for fragment in fragments:
        assert fragment in message, message
    assert not adapter_weights(model, REASONER_ADAPTER)  # nothing left behind
    return message


def test_a_rank_that_does_not_match_the_weights_names_file_tensor_and_shapes(tokenizer, saved):
    settings = saved / "adapter_config.json"
    settings.write_text(json.dumps({**json.loads(settings.read_text()), "r": 4}))
    model = tiny_model("llama", tokenizer)
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        before = model(ids).logits
    _refused(model, saved, f"The adapter in {saved / WEIGHTS_FILE} does not fit this model",
             "tensor model.layers.0.self_attn.k_proj.lora_A.compressmem_reasoner.weight has shape (8, 64) in the "
             "file, but the model needs (4, 64) (and 31 more tensors differ)",
             "the file's weights have rank 8 but adapter_config.json says r=4")
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, before, rtol=0, atol=0)


def test_an_adapter_of_another_base_models_sizes_is_refused(tokenizer, saved):
    wider = tiny_model("llama", tokenizer, hidden_size=128, head_dim=16)
    _refused(wider, saved, str(saved / WEIGHTS_FILE), "has shape (8, 64) in the file, but the model needs (8, 128)",
             "saved from a base model with other layer sizes: load it with the base model it was trained for")


def test_missing_and_extra_tensors_are_named(tokenizer, saved):
    path = saved / WEIGHTS_FILE
    tensors = load_file(str(path))
    dropped = "model.layers.3.self_attn.v_proj.lora_B.compressmem_reasoner.weight"
    del tensors[dropped]
    save_file(tensors, str(path))
    _refused(tiny_model("llama", tokenizer), saved, str(path), f"1 of the 32 tensors the model's adapter needs are "
             f"missing from the file (e.g. {dropped})")
    tensors[dropped] = torch.zeros(64, 8)
    tensors["model.layers.9.self_attn.q_proj.lora_A.compressmem_reasoner.weight"] = torch.zeros(8, 64)
    save_file(tensors, str(path))
    _refused(tiny_model("llama", tokenizer), saved, "1 tensors in the file have no place in the model (e.g. "
             "model.layers.9.self_attn.q_proj.lora_A.compressmem_reasoner.weight)")


def test_a_damaged_adapter_names_its_file(tokenizer, saved):
    path, settings = saved / WEIGHTS_FILE, saved / "adapter_config.json"
    good = path.read_bytes()
    path.write_bytes(good[:500])
    _refused(tiny_model("llama", tokenizer), saved, f"{path} is not a readable safetensors file",
             "the adapter is damaged")
    path.write_bytes(good)
    settings.write_text("{not json")
    _refused(tiny_model("llama", tokenizer), saved, f"{settings} is not a readable LoRA configuration")


def test_a_fitting_adapter_still_loads_and_a_failed_load_can_be_retried(tokenizer, saved):
    settings = saved / "adapter_config.json"
    good = settings.read_text()
    settings.write_text(json.dumps({**json.loads(good), "r": 4}))
    model = tiny_model("llama", tokenizer)
    _refused(model, saved)
    settings.write_text(good)
    adapter = ReasonerAdapter.load(model, saved)
    stored = load_file(str(saved / WEIGHTS_FILE))
    loaded = adapter_weights(model, REASONER_ADAPTER)
    assert adapter.lora_config.r == 8 and set(loaded) == set(stored)
    assert all(torch.equal(loaded[key].detach(), stored[key]) for key in stored)
