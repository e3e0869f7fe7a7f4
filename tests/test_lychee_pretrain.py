"""A compressor of LycheeMemory's design made for a Llama base and pre-trained here (issue 25, part 5).

Initialised as the authors' code initialises one (extra projections copies of the layer's own, the memory
embedding the end-of-sequence token's), trained with the continuation loss after its block read their way, only
its extra tensors learning, saved self-contained in a compressmem checkpoint and loaded back.
"""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from compressmem import ChunkingConfig, CompressedMemoryModel, CompressionConfig, MemoryConfig
from compressmem.chunking import Chunk
from compressmem.compressors import LycheeCompressor
from compressmem.compressors.lychee import EMBEDDING, OWN_FILE, POINTER_FILE, SETTINGS_KEY, projection_name
from compressmem.errors import CheckpointMismatchError
from compressmem.reader import pad_token_id, step_input, step_logprobs
from compressmem.training.pretrain import (
    LycheeTrainee,
    PretrainConfig,
    continuation_loss,
    pretrain,
    start_or_resume,
    trainee,
    training_pairs,
)

from .conftest import tiny_model

CHUNK = 32
CONFIG = MemoryConfig(chunking=ChunkingConfig(CHUNK), gate=None)
TEXT = ("The harbour master counted the boats each morning and wrote their names in a ledger. "
        "Gulls argued over the nets while the tide turned. ") * 20


def _lychee(tokenizer, folder=None, **overrides):
    # SmolLM2's tokenizer pads with its eos token, whose embedding a random model zeroes (padding_idx): no padding
    # row here, so the memory embedding starts from a real row, as it does from SmolLM2's trained one
    model = tiny_model("llama", tokenizer, 0, pad_token_id=None, **overrides)
    plain = CompressedMemoryModel(model, tokenizer, memory_config=CONFIG, base_name=str(folder or "tiny"),
                                  show_progress=False)
    return start_or_resume(plain, "/nonexistent-run", design="lychee", ratios=(2, 4, 8))


def test_a_new_compressor_copies_each_layers_projections_and_the_eos_embedding(tokenizer):
    model = _lychee(tokenizer)
    compressor = model.compressor
    assert isinstance(compressor, LycheeCompressor) and compressor.ratio == 4
    assert compressor.settings.window == CHUNK and compressor.settings.ratios == (2, 4, 8)
    assert model.memory_config.compression == CompressionConfig("learned", ratio=4)
    layers = model.model.model.layers
    for index, layer in enumerate(layers):
        for p in "qkvo":
            torch.testing.assert_close(compressor.extras[projection_name(index, p)],
                                       getattr(layer.self_attn, f"{p}_proj").weight, rtol=0, atol=0)
    assert not any(name.endswith(".bias") for name in compressor.extras)  # Llama's projections have no bias
    eos = model.model.config.eos_token_id
    torch.testing.assert_close(compressor.extras[EMBEDDING][0], model.model.model.embed_tokens.weight[eos])
    assert len(compressor.extras) == 1 + 4 * len(layers)


def test_at_initialisation_a_block_is_the_base_models_kv_of_eos_tokens_interleaved(tokenizer):
    """With the projections copied and the embedding the eos token's, the memory tokens are eos tokens read by
    the base model itself: one window's block values are the base model's values at the interleaved eos tokens."""
    model = _lychee(tokenizer)
    ids = torch.tensor(tokenizer(TEXT, add_special_tokens=False)["input_ids"][:CHUNK])[None]
    blocks = model.compressor.forward_blocks(model.model, model.builder.prefix_ids, ids, model.builder.layers, True)
    eos = model.model.config.eos_token_id
    step = 4
    interleaved, memory = [], []
    for start in range(0, CHUNK, step):
        interleaved += [*ids[0, start : start + step].tolist(), eos]
        memory.append(len(interleaved) - 1)
    with torch.no_grad():
        cache = model.model(torch.tensor([interleaved]), use_cache=True).past_key_values
    for layer in model.builder.layers:
        theirs = cache.layers[layer].values[0][:, memory] if hasattr(cache, "layers") else cache[layer][1][0][:, memory]
        torch.testing.assert_close(blocks.values[0, layer], theirs, rtol=1e-4, atol=1e-5)
    assert blocks.keys.shape[3] == CHUNK // step


def test_the_loss_is_inferences_read_of_a_bank_of_its_blocks(tokenizer):
    """The pre-training loss is what the reader's own step (`step_input`, their way) scores for a bank of the
    same chunks, and its gradient reaches the extra projections."""
    model = _lychee(tokenizer, initializer_range=0.2)
    pairs = training_pairs(model, [TEXT], continuation_tokens=16)[:2]
    chunks, continuations = pairs[:, :CHUNK], pairs[:, CHUNK:]
    weights = trainee(model).weights()
    loss = continuation_loss(model, chunks, continuations, ratio=4)
    bank = model.builder.bank([Chunk(ids, 0, 0, None) for ids in chunks], torch.device("cpu"), batch_size=2,
                              show_progress=False)
    with torch.no_grad():
        reads = [step_input(bank, row, continuations[row, :1], "compressed") for row in range(2)]
        scores, mask = step_logprobs(model.model, reads, list(continuations[:, 1:]), pad_token_id(tokenizer))
    torch.testing.assert_close(loss, -scores[mask].mean(), rtol=1e-5, atol=1e-5)
    loss.backward()
    last = len(model.model.model.layers) - 1
    # the last layer's memory queries and outputs shape no kept key or value: only they get no gradient
    idle = {projection_name(last, "q"), projection_name(last, "o")}
    got = {name for name, t in model.compressor.extras.items() if t.grad is not None and t.grad.abs().sum() > 0}
    assert got == set(model.compressor.extras) - idle and len(weights) == len(model.compressor.extras)


def test_a_few_steps_lower_the_loss_and_only_the_extra_tensors_learn(tokenizer):
    torch.manual_seed(0)
    model = _lychee(tokenizer, initializer_range=0.2)
    base_before = {name: w.detach().clone() for name, w in model.model.named_parameters()}
    extras_before = {name: t.detach().clone() for name, t in model.compressor.extras.items()}
    pairs = training_pairs(model, [TEXT], continuation_tokens=16)[:2]
    learner = trainee(model)
    assert isinstance(learner, LycheeTrainee)
    optimizer = torch.optim.Adam(learner.weights(), lr=1e-2)
    losses = []
    for _ in range(8):
        loss = continuation_loss(model, pairs[:, :CHUNK], pairs[:, CHUNK:], ratio=4)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses
    for name, weight in model.model.named_parameters():
        assert not weight.requires_grad and torch.equal(weight, base_before[name]), name
    changed = [name for name, t in model.compressor.extras.items() if not torch.equal(t, extras_before[name])]
    assert EMBEDDING in changed and len(changed) == len(extras_before) - 2  # all but the last layer's q and o


def test_ratios_are_drawn_per_step_from_the_mix_and_a_ratio_outside_it_is_refused(tokenizer):
    model = _lychee(tokenizer)
    drawn = {trainee(model, seed=3).ratio(step) for step in range(40)}
    assert drawn == {2, 4, 8}
    assert [trainee(model, seed=3).ratio(s) for s in range(10)] == [trainee(model, seed=3).ratio(s) for s in range(10)]
    plain = CompressedMemoryModel(tiny_model("llama", tokenizer), tokenizer, memory_config=CONFIG, show_progress=False)
    with pytest.raises(ValueError, match="one of its ratios"):
        start_or_resume(plain, "/nonexistent-run", ratio=16, design="lychee", ratios=(2, 4, 8))


@pytest.fixture
def trained(tokenizer, tmp_path):
    """A tiny base saved in a folder, and a LycheeMemory-design run of 4 steps over it (saved every 2)."""
    base = tmp_path / "base"
    tiny_model("llama", tokenizer).save_pretrained(base)
    tokenizer.save_pretrained(base)
    return base, _run(base, tmp_path / "run", 4)


def _run(base, out, steps):
    plain = CompressedMemoryModel.from_pretrained(str(base), config=CONFIG, show_progress=False)
    model = start_or_resume(plain, out, seed=1, design="lychee", ratios=(2, 4, 8))
    settings = PretrainConfig(steps=steps, batch_size=2, learning_rate=1e-2, continuation_tokens=16, save_every=2,
                              seed=1)
    log = pretrain(model, [TEXT], out, settings, show_progress=False)
    return model, log


def test_a_saved_run_loads_back_with_identical_blocks_and_resumes_as_one_run(trained, tmp_path):
    base, (model, log) = trained
    out = tmp_path / "run"
    assert (out / OWN_FILE).is_file() and json.loads((out / POINTER_FILE).read_text())["own"] == OWN_FILE
    assert {e["ratio"] for e in log} <= {2, 4, 8} and all(e["peak_memory_mib"] > 0 for e in log)
    loaded = CompressedMemoryModel.from_pretrained(str(base), checkpoint=out, show_progress=False)
    assert isinstance(loaded.compressor, LycheeCompressor) and loaded.memory_config.chunking.size == CHUNK
    assert loaded.compressor.digest(loaded.model) == model.compressor.digest(model.model)
    ours, theirs = model.compress(TEXT), loaded.compress(TEXT)
    assert len(ours) == len(theirs) > 1
    for a, b in zip(ours.blocks, theirs.blocks):
        torch.testing.assert_close(a.keys, b.keys, rtol=0, atol=0)
        torch.testing.assert_close(a.values, b.values, rtol=0, atol=0)
    _, straight = _run(base, tmp_path / "straight", 6)
    _, resumed = _run(base, out, 6)
    assert [e["step"] for e in resumed] == [1, 2, 3, 4, 5, 6]
    torch.testing.assert_close(torch.tensor([e["loss"] for e in resumed]), torch.tensor([e["loss"] for e in straight]),
                               rtol=1e-4, atol=1e-5)


def test_a_checkpoint_whose_tensor_does_not_fit_the_base_is_refused(trained, tmp_path):
    base, _ = trained
    path = tmp_path / "run" / OWN_FILE
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    name = projection_name(1, "v")
    tensors[name] = tensors[name][:, :-1].contiguous()
    save_file(tensors, str(path), metadata=metadata)
    assert SETTINGS_KEY in metadata
    with pytest.raises(CheckpointMismatchError, match=rf"{name}.*shape \[\d+, \d+\].*needs"):
        CompressedMemoryModel.from_pretrained(str(base), checkpoint=tmp_path / "run", show_progress=False)


def test_pretrain_command_trains_a_lychee_design_compressor(tokenizer, tmp_path):
    from compressmem.cli import main

    base = tmp_path / "base"
    tiny_model("llama", tokenizer).save_pretrained(base)
    tokenizer.save_pretrained(base)
    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    out = tmp_path / "run"
    assert main(["train", "pretrain", "--model", str(base), "--chunk-size", "32", "--files", str(text),
                 "--out", str(out), "--design", "lychee", "--ratios", "2,4,8", "--batch-size", "2",
                 "--continuation-tokens", "8", "--steps", "2", "--quiet"]) == 0
    loaded = CompressedMemoryModel.from_pretrained(str(base), checkpoint=out, show_progress=False)
    assert isinstance(loaded.compressor, LycheeCompressor)
    assert loaded.compressor.settings.ratios == (2, 4, 8) and loaded.memory_config.compression.ratio == 4


def test_a_compressor_saved_in_bfloat16_keeps_its_digest_and_settings(tokenizer, tmp_path):
    model = _lychee(tokenizer)
    path = tmp_path / OWN_FILE
    model.compressor.save(path, dtype=torch.bfloat16)
    loaded = LycheeCompressor.load(model.model, path, 8)
    assert loaded.ratio == 8 and loaded.settings == model.compressor.settings
    assert all(t.dtype == torch.bfloat16 for t in loaded.extras.values())
    assert loaded.at_ratio(4).digest(model.model) == model.compressor.digest(model.model)
