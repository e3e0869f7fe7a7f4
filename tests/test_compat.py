"""What `compressmem.hf.compat` relies on in transformers, bitsandbytes and accelerate, checked against the
installed versions: a test here fails when an upgrade changes a private name or behaviour compressmem uses."""

import copy
import re
from pathlib import Path

import pytest
import torch
from transformers import DynamicCache
from transformers.modeling_layers import GradientCheckpointingLayer

from compressmem.hf.compat import (
    CHECKPOINTING_ATTRIBUTES,
    attention_implementation,
    checkpointing_state,
    eager_attention,
    has_input_grads_hook,
    hook_execution_device,
    keep_cache_when_checkpointed,
    offloaded_weight,
    restore_checkpointing_state,
    stop_forward,
    stoppable_forward,
    turn_off_cpu_repacking,
    undo_cpu_repacking,
)
from compressmem.hf.probe import probe

from .conftest import ARCHS, tiny_model

PACKAGE = Path(__file__).resolve().parent.parent / "compressmem"
INTERNALS = (
    "_attn_implementation",
    "eager_attention_forward",
    "_gradient_checkpointing_func",
    "_can_checkpoint_with_cache",
    "_require_grads_hook",
    "support_avx512bf16_for_cpu",
    "packing_format_for_cpu",
    "_convert_weight_packed_for_cpu",
    "_hf_hook",
)


def test_only_the_compat_module_names_framework_internals():
    compat = PACKAGE / "hf" / "compat.py"
    assert all(name in compat.read_text() for name in INTERNALS)
    found = [
        f"{path.relative_to(PACKAGE.parent)}: {name}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path != compat
        for name in INTERNALS
        if re.search(rf"(?<!\w){name}", path.read_text(encoding="utf-8"))  # `set_attn_implementation` is public
    ]
    assert not found, f"go through compressmem.hf.compat instead: {found}"


def _ids(length: int = 12) -> torch.Tensor:
    return torch.randint(0, 1000, (1, length), generator=torch.Generator().manual_seed(0))


# --- transformers ----------------------------------------------------------------------------------------------


def test_attention_implementation_names_what_the_model_runs(tokenizer):
    model = tiny_model("llama", tokenizer)
    assert attention_implementation(model) == "sdpa"
    model.set_attn_implementation("eager")
    assert attention_implementation(model) == "eager"


@pytest.mark.parametrize("arch", ARCHS)
def test_eager_attention_is_what_an_eager_model_runs(arch, tokenizer):
    """The probe, which runs `eager_attention` in place of the model's own, changes no logit of an eager model."""
    model = tiny_model(arch, tokenizer)
    model.set_attn_implementation("eager")
    assert callable(eager_attention(model.get_decoder().layers[0].self_attn))
    with torch.no_grad():
        plain = model(_ids()).logits
        seen = []
        with probe(model, lambda layer, query, key: seen.append(layer)):
            probed = model(_ids()).logits
    assert seen == list(range(model.config.num_hidden_layers))
    torch.testing.assert_close(probed, plain, rtol=0, atol=0)


def test_checkpointing_sets_only_the_attributes_saved_and_restoring_undoes_them(tokenizer):
    model = tiny_model("llama", tokenizer)
    layers = [m for m in model.modules() if hasattr(m, "gradient_checkpointing")]
    before = [dict(vars(layer)) for layer in layers]
    saved = [checkpointing_state(layer) for layer in layers]
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    for layer in layers:
        keep_cache_when_checkpointed(layer)
    decoder_layers = [layer for layer in layers if isinstance(layer, GradientCheckpointingLayer)]
    assert decoder_layers and all(
        layer.gradient_checkpointing and "_gradient_checkpointing_func" in vars(layer) for layer in decoder_layers
    )
    for layer, was in zip(layers, before):
        assert set(vars(layer)) - set(was) <= set(CHECKPOINTING_ATTRIBUTES)  # nothing else to save
    for layer, state in zip(layers, saved):
        restore_checkpointing_state(layer, state)
    for layer, was in zip(layers, before):
        assert set(vars(layer)) == set(was)
        assert not layer.gradient_checkpointing
    assert all(layer._can_checkpoint_with_cache is False for layer in decoder_layers)  # the class default again


def test_a_checkpointed_layer_keeps_its_cache_only_when_told(tokenizer):
    model = tiny_model("llama", tokenizer)
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    dropped = DynamicCache()
    model(input_ids=_ids(8), cache=dropped, use_cache=True)
    assert dropped.get_seq_length() == 0  # transformers drops a checkpointed layer's cache by default
    for layer in model.get_decoder().layers:
        keep_cache_when_checkpointed(layer)
    kept = DynamicCache()
    model(input_ids=_ids(8), cache=kept, use_cache=True)
    assert kept.get_seq_length() == 8


def test_input_grads_hook_is_seen_and_its_removal_too(tokenizer):
    model = tiny_model("llama", tokenizer)
    assert not has_input_grads_hook(model)
    model.enable_input_require_grads()
    assert has_input_grads_hook(model)
    model.disable_input_require_grads()
    assert not has_input_grads_hook(model)


# --- ending a forward pass early -------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_a_stopped_forward_keeps_the_cache_of_the_layers_it_ran_and_runs_no_other(arch, tokenizer):
    model = tiny_model(arch, tokenizer)
    full = DynamicCache()
    with torch.no_grad():
        model(input_ids=_ids(), cache=full, use_cache=True)
    seen = []

    def stop_at_layer_one(layer: int, query: torch.Tensor, key: torch.Tensor) -> None:
        seen.append(layer)
        if layer == 1:
            stop_forward()

    stopped = DynamicCache()
    with torch.no_grad(), probe(model, stop_at_layer_one), stoppable_forward():
        model(input_ids=_ids(), cache=stopped, use_cache=True)
    assert seen == [0, 1]  # the exception left the model: no later layer ran
    for layer in (0, 1):  # the cache was written before attention ran
        torch.testing.assert_close(stopped.layers[layer].keys, full.layers[layer].keys, rtol=0, atol=0)
        torch.testing.assert_close(stopped.layers[layer].values, full.layers[layer].values, rtol=0, atol=0)
    assert all(not layer.is_initialized for layer in stopped.layers[2:])


# --- accelerate --------------------------------------------------------------------------------------------------


def test_offloaded_weights_and_execution_device_are_read_from_accelerates_hook(tokenizer):
    from accelerate import cpu_offload

    model = tiny_model("llama", tokenizer)
    embeddings = model.get_input_embeddings()
    weight = copy.deepcopy(embeddings.weight.detach())
    assert hook_execution_device(embeddings) is None
    cpu_offload(model, execution_device="cpu")
    assert embeddings.weight.device.type == "meta"
    assert hook_execution_device(embeddings) == torch.device("cpu")
    assert torch.equal(offloaded_weight(embeddings, "weight"), weight)


# --- bitsandbytes ------------------------------------------------------------------------------------------------


@pytest.fixture
def linear4bit():
    """A bitsandbytes 4-bit layer quantized on the CPU, in eval mode (skipped where bitsandbytes cannot run one)."""
    bnb = pytest.importorskip("bitsandbytes", reason="needs bitsandbytes: pip install 'compressmem[quant]'")
    dense = torch.nn.Linear(64, 64, bias=False)
    layer = bnb.nn.Linear4bit(64, 64, bias=False, compute_dtype=torch.float32, quant_type="nf4")
    layer.weight = bnb.nn.Params4bit(dense.weight.data.clone(), requires_grad=False, quant_type="nf4")
    try:
        layer = layer.to("cpu").eval()
    except Exception as error:  # noqa: BLE001 - any failure of the library itself means: not supported here
        pytest.skip(f"bitsandbytes {bnb.__version__} cannot quantize a 4-bit layer on this CPU: {error}")
    return layer


def test_the_repacking_switch_is_a_4bit_layers_own_and_turns_repacking_off(linear4bit, monkeypatch):
    import bitsandbytes.nn.modules

    assert not turn_off_cpu_repacking(torch.nn.Linear(4, 4))
    repacked = []

    def record(weight, quant_state, *args, **kwargs):
        repacked.append(True)
        return weight, quant_state  # left as it was, so the layer runs its ordinary matmul on any CPU

    monkeypatch.setattr(bitsandbytes.nn.modules, "_convert_weight_packed_for_cpu", record)
    linear4bit.support_avx512bf16_for_cpu = True  # as on a CPU with AVX512-BF16
    with torch.no_grad():
        linear4bit(torch.randn(2, 64))
    assert repacked == [True]  # eval mode, no gradient: bitsandbytes repacks
    assert turn_off_cpu_repacking(linear4bit)
    with torch.no_grad():
        linear4bit(torch.randn(2, 64))
    assert repacked == [True]  # ... and no longer once switched off


def test_undoing_a_cpu_repacking_gives_back_the_weight_and_its_results(linear4bit):
    from bitsandbytes.functional import _convert_weight_packed_for_cpu

    inputs = torch.randn(3, 64)
    with torch.no_grad():
        expected = linear4bit(inputs)
    weight = linear4bit.weight.data.clone()
    undo_cpu_repacking(linear4bit)  # not repacked: nothing to undo
    assert torch.equal(linear4bit.weight.data, weight)
    linear4bit.weight.data, linear4bit.weight.quant_state = _convert_weight_packed_for_cpu(
        linear4bit.weight.data, linear4bit.weight.quant_state
    )
    assert linear4bit.weight.quant_state.packing_format_for_cpu
    undo_cpu_repacking(linear4bit)
    assert not linear4bit.weight.quant_state.packing_format_for_cpu
    assert torch.equal(linear4bit.weight.data, weight)
    linear4bit.support_avx512bf16_for_cpu = False
    with torch.no_grad():  # the repacking kept the scales in bfloat16: results agree to that precision
        torch.testing.assert_close(linear4bit(inputs), expected, rtol=1e-2, atol=1e-2)
    inputs.requires_grad_(True)
    linear4bit(inputs).sum().backward()  # the ordinary layout has a backward again
    assert inputs.grad.abs().sum() > 0
