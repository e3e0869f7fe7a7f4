"""Our LycheeMemory compressor against the authors' own code, on a committed fixture of their outputs.

`tests/fixtures/lycheememory` was written by `benchmarks/peers/lycheememory/parity.py` in their environment
(transformers 4.53.2, their source at the recorded commit): a tiny random Qwen2 in their layout (`model/`) and
the per-layer memory keys and values their `aggregate_text` left for each case. Here the same checkpoint is
loaded by transformers 5 as a plain Qwen2 plus the extra tensors, and `LycheeCompressor` must give the same KV.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, DynamicCache

from compressmem.bank import MemoryBank
from compressmem.chunking import Chunk
from compressmem.compression import BankBuilder
from compressmem.compressors import LycheeCompressor
from compressmem.compressors.lychee import (
    EMBEDDING,
    LycheeSettings,
    projection_name,
    read_checkpoint,
    split_checkpoint,
)
from compressmem.config import CompressionConfig
from compressmem.errors import CheckpointMismatchError, ConfigError
from compressmem.hf.fingerprint import BaseFingerprint

FIXTURE = Path(__file__).parent / "fixtures" / "lycheememory"
MANIFEST = json.loads((FIXTURE / "manifest.json").read_text())
CASES = {case["name"]: case for case in MANIFEST["cases"]}
TOLERANCE = 1e-4
LAYERS = (0, 1, 2)
PREFIX = torch.tensor([1])


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(FIXTURE / "model", dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def theirs() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURE / "their_outputs.safetensors"))


@pytest.fixture(scope="module")
def checkpoint() -> tuple[LycheeSettings, dict[str, torch.Tensor]]:
    return read_checkpoint(FIXTURE / "model")


def ours(model, settings, extras, case: dict, ids: torch.Tensor):
    compressor = LycheeCompressor(settings, extras, ratio=case["ratio"])
    compressor.check(model)
    with torch.no_grad():
        return compressor.compress(model, PREFIX, ids[None], LAYERS, keep_values=True)


@pytest.mark.parametrize("name", list(CASES))
def test_compressed_kv_equals_theirs_per_layer(name, model, theirs, checkpoint) -> None:
    case = CASES[name]
    settings, extras = checkpoint
    ids = theirs[f"{name}.input_ids"]
    out = ours(model, settings, extras, case, ids)
    entries = -(-case["tokens"] // case["ratio"])
    # their kv_mask keeps exactly the memory entries of groups holding a real token: the first ceil(n / ratio)
    kv_mask = theirs[f"{name}.kv_mask"]
    assert kv_mask[:entries].all() and not kv_mask[entries:].any()
    assert out.keys.shape == (1, len(LAYERS), 2, entries, 16)
    assert out.values is not None
    assert (out.positions == 0).all()  # their reader uses the keys unrotated
    for layer in LAYERS:
        their_keys = theirs[f"{name}.layer{layer}.keys"][:, :entries]
        their_values = theirs[f"{name}.layer{layer}.values"][:, :entries]
        assert (out.keys[0, layer] - their_keys).abs().max().item() < TOLERANCE, (name, layer)
        assert (out.values[0, layer] - their_values).abs().max().item() < TOLERANCE, (name, layer)


@pytest.mark.parametrize(
    "tensor",
    [EMBEDDING, *(projection_name(0, p) for p in ("q", "k", "v", "o")), projection_name(1, "k", "bias")],
)
def test_each_extra_tensor_changes_the_kv(tensor, model, theirs, checkpoint) -> None:
    """The parity test can fail: with any one extra tensor perturbed (or the base weight used in its place)
    the KV moves far beyond the tolerance."""
    settings, extras = checkpoint
    name = "two_windows_ratio4"
    ids = theirs[f"{name}.input_ids"]
    generator = torch.Generator().manual_seed(0)
    perturbed = dict(extras)
    perturbed[tensor] = extras[tensor] + 0.05 * torch.randn(extras[tensor].shape, generator=generator)
    out = ours(model, settings, perturbed, CASES[name], ids)
    differences = [
        max(
            (out.keys[0, layer] - theirs[f"{name}.layer{layer}.keys"]).abs().max().item(),
            (out.values[0, layer] - theirs[f"{name}.layer{layer}.values"]).abs().max().item(),
        )
        for layer in LAYERS
    ]
    assert max(differences) > 100 * TOLERANCE, (tensor, differences)


def test_base_projections_for_memory_tokens_would_differ(model, theirs, checkpoint) -> None:
    """Using the layer's own projections and embedding for memory tokens (a plain LM with extra tokens) is not
    their compressor: the KV differs from theirs."""
    settings, extras = checkpoint
    name = "one_window_ratio8"
    plain = dict(extras)
    for layer, block in enumerate(model.model.layers):
        for p in ("q", "k", "v", "o"):
            base = getattr(block.self_attn, f"{p}_proj")
            plain[projection_name(layer, p)] = base.weight.detach().clone()
            if base.bias is not None:
                plain[projection_name(layer, p, "bias")] = base.bias.detach().clone()
    out = ours(model, settings, plain, CASES[name], theirs[f"{name}.input_ids"])
    assert (out.keys[0, 2] - theirs[f"{name}.layer2.keys"]).abs().max().item() > 100 * TOLERANCE


def test_a_misshapen_extra_tensor_is_refused_naming_it_and_both_shapes(model, checkpoint) -> None:
    settings, extras = checkpoint
    name = projection_name(1, "v")
    wrong = dict(extras)
    wrong[name] = torch.zeros(16, 32)  # the base v_proj is [32, 64]
    with pytest.raises(CheckpointMismatchError) as refused:
        LycheeCompressor(settings, wrong, ratio=4).check(model)
    message = str(refused.value)
    assert name in message and "[16, 32]" in message and "[32, 64]" in message
    missing = dict(extras)
    del missing[EMBEDDING]
    with pytest.raises(CheckpointMismatchError, match="lychee_memory_embed_tokens"):
        LycheeCompressor(settings, missing, ratio=4).check(model)


def test_split_checkpoint_separates_base_and_extra_tensors(model) -> None:
    state = load_file(str(FIXTURE / "model" / "model.safetensors"))
    base, extras = split_checkpoint(state)
    assert set(extras) == set(read_checkpoint(FIXTURE / "model")[1])
    assert all("lychee_memory" not in name for name in base)
    assert set(model.state_dict()) <= set(base)  # every base weight is in the base part


def test_settings_from_config_and_refusals() -> None:
    config = json.loads((FIXTURE / "model" / "config.json").read_text())
    settings = LycheeSettings.from_config(config)
    assert (settings.window, settings.ratios, settings.param) == (32, (2, 4, 8), ("q", "k", "v", "o"))
    with pytest.raises(ConfigError, match="choose one"):
        settings.pick_ratio(None)
    with pytest.raises(ConfigError, match="divide"):
        settings.pick_ratio(5)
    with pytest.raises(ConfigError, match="interleave"):
        LycheeSettings.from_config({**config, "lychee_memory_pos": "append"})


def test_a_bank_of_lychee_blocks_records_the_extra_tensors_digest(model, checkpoint) -> None:
    settings, extras = checkpoint
    compressor = LycheeCompressor(settings, extras, ratio=4)
    text = "Vault 7 opens with the combination 31-04-88. The harbour vault opens on Sundays."
    ids = torch.tensor(list(text.encode()))
    chunks = [Chunk(ids[i : i + 32], 0, i, None) for i in range(0, ids.numel(), 32)]
    builder = BankBuilder(
        model,
        PREFIX,
        32,
        BaseFingerprint("tiny-lychee", "0" * 64),
        CompressionConfig(method="learned", ratio=4, bits=4),
        compressor,
        LAYERS,
        values=True,
    )
    bank = builder.bank(chunks, torch.device("cpu"), show_progress=False)
    assert isinstance(bank, MemoryBank)
    assert bank.provenance.compressor_digest == compressor.digest(model)
    assert len(bank.blocks) == len(chunks)
    other = dict(extras)
    other[projection_name(2, "o")] = extras[projection_name(2, "o")] * 1.01
    assert LycheeCompressor(settings, other, ratio=4).digest(model) != compressor.digest(model)
    assert LycheeCompressor(settings, extras, ratio=8).digest(model) != compressor.digest(model)


# --- their recurrent generate, read by our compressor's blocks (issue 25, part 2(b)) -------------------------

GENERATE = MANIFEST["generate"]
EOS = 2  # the fixture tokenizer's end of text (and padding): ids are bytes


def fill(template: str, **values: list[int]) -> list[int]:
    """Their prompt template with its `{name}` fields replaced by token ids (the tokenizer is byte-level, so a
    text piece's ids are its UTF-8 bytes)."""
    parts = re.split(r"\{([a-zA-Z]+)\}", template)
    return [i for n, part in enumerate(parts) for i in (values[part] if n % 2 else list(part.encode()))]


def greedy(model, prompt: list[int], kv, first_position: int, max_new: int) -> tuple[list[int], list[int]]:
    """Greedy decoding after a KV prefix (per layer `[1, kv_heads, m, d]`, or None), the prompt at RoPE positions
    from `first_position`, as their reader runs it: the new tokens, and every token chosen (one more than made
    when no end of text came)."""
    cache = DynamicCache()
    for layer, (keys, values) in enumerate(kv or []):
        cache.update(keys, values, layer)
    seen = 0 if kv is None else kv[0][0].shape[2]
    ids = torch.tensor([prompt])
    position = first_position
    chosen: list[int] = []
    made: list[int] = []
    with torch.no_grad():
        for _ in range(max_new + 1):
            length = ids.shape[1]
            logits = model(
                input_ids=ids,
                position_ids=torch.arange(position, position + length)[None],
                attention_mask=torch.ones(1, seen + length, dtype=torch.long),
                cache=cache,
                use_cache=True,
            ).logits
            chosen.append(int(logits[0, -1].argmax()))
            seen, position = seen + length, position + length
            if len(made) == max_new:
                break
            made.append(chosen[-1])
            if chosen[-1] == EOS:
                break
            ids = torch.tensor([[chosen[-1]]])
    return made, chosen


@pytest.mark.parametrize("case", range(len(GENERATE["answers"])))
def test_recurrent_reading_gives_their_greedy_tokens(case, model, checkpoint) -> None:
    """Every chunk compressed by `LycheeCompressor` and read in order with their update prompt, then their answer
    prompt: every greedy token (each memory update's, then the answer's) equals their recurrent `generate`'s."""
    settings, extras = checkpoint
    run = GENERATE["settings"]
    window, ratio = run["window"], run["ratio"]
    compressor = LycheeCompressor(replace(settings, window=window, stride=window), extras, ratio=ratio)
    update, answer = GENERATE["prompts"]
    expected = GENERATE["answers"][case]
    text = list(expected["text"].encode())
    question = list(expected["question"].encode())
    memory = list(b"No previous memory")
    trace: list[int] = []
    for start in range(0, len(text), window):
        chunk = torch.tensor(text[start : start + window])
        with torch.no_grad():
            block = compressor.compress(model, torch.tensor([EOS]), chunk[None], LAYERS, keep_values=True)
        assert block.values is not None
        kv = [(block.keys[:, layer], block.values[:, layer]) for layer in LAYERS]
        # their reader's prompt follows all window / ratio memory entries of a (padded) chunk
        made, chosen = greedy(
            model, fill(update, prompt=question, memory=memory), kv, window // ratio, run["memory_size"]
        )
        trace += chosen
        memory = [t for t in made if t != EOS][-run["memory_size"] :]
    final = fill(answer, prompt=question, memory=memory)
    assert len(final) <= window  # a longer answer prompt takes another path in their generate
    made, chosen = greedy(model, final, None, 0, run["max_new_tokens"])
    trace += chosen
    assert made == expected["answer_ids"]
    assert trace == expected["greedy_trace"]


def test_recurrent_reading_depends_on_the_blocks(model, checkpoint) -> None:
    """The greedy comparison can fail: blocks made with a perturbed memory value projection change the tokens."""
    settings, extras = checkpoint
    run = GENERATE["settings"]
    window, ratio = run["window"], run["ratio"]
    perturbed = {**extras, projection_name(2, "v"): extras[projection_name(2, "v")] * 3.0}
    compressor = LycheeCompressor(replace(settings, window=window, stride=window), perturbed, ratio=ratio)
    expected = GENERATE["answers"][0]
    chunk = torch.tensor(list(expected["text"].encode())[:window])
    with torch.no_grad():
        block = compressor.compress(model, torch.tensor([EOS]), chunk[None], LAYERS, keep_values=True)
    assert block.values is not None
    kv = [(block.keys[:, layer], block.values[:, layer]) for layer in LAYERS]
    prompt = fill(
        GENERATE["prompts"][0], prompt=list(expected["question"].encode()), memory=list(b"No previous memory")
    )
    _, chosen = greedy(model, prompt, kv, window // ratio, run["memory_size"])
    assert chosen != expected["greedy_trace"][: len(chosen)]
