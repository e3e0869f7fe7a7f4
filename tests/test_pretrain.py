"""Compressor pre-training: the loss falls on a fixed batch, and a resumed run continues the same run."""

import json

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
from compressmem.chunking import Chunk
from compressmem.reader import pad_token_id, step_input, step_logprobs
from compressmem.training.pretrain import (
    PretrainConfig,
    pretrain,
    reconstruction_loss,
    start_or_resume,
    trainable_weights,
    training_pairs,
)

from .conftest import tiny_model

CONFIG = MemoryConfig(chunking=ChunkingConfig(32), gate=None)
TEXT = ("The harbour master counted the boats each morning and wrote their names in a ledger. "
        "Gulls argued over the nets while the tide turned. ") * 20


def _plain(tokenizer, seed=0):
    return CompressedMemoryModel(tiny_model("llama", tokenizer, seed), tokenizer, memory_config=CONFIG, base_name="tiny",
                                 show_progress=False)


def test_a_few_steps_on_one_batch_lower_the_loss_markedly(tokenizer):
    torch.manual_seed(0)
    # weights at initializer_range 0.2 give the random base logits a range the block can steer
    plain = CompressedMemoryModel(tiny_model("llama", tokenizer, 0, initializer_range=0.2), tokenizer,
                                  memory_config=CONFIG, base_name="tiny", show_progress=False)
    model = start_or_resume(plain, "/nonexistent-run")
    pairs = training_pairs(model, [TEXT], continuation_tokens=16)[:2]
    optimizer = torch.optim.Adam(trainable_weights(model), lr=3e-2)
    losses = []
    for _ in range(15):
        loss = reconstruction_loss(model, pairs[:, :32], pairs[:, 32:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses
    assert all(not w.requires_grad for n, w in model.model.named_parameters() if "lora_" not in n)


def test_resumed_run_matches_an_uninterrupted_one(tokenizer, tmp_path):
    base = tmp_path / "base"
    tiny_model("llama", tokenizer).save_pretrained(base)
    tokenizer.save_pretrained(base)
    settings = dict(batch_size=2, learning_rate=1e-2, continuation_tokens=16, save_every=2, seed=1)

    def run(out, steps):
        plain = CompressedMemoryModel.from_pretrained(str(base), config=CONFIG, show_progress=False)
        return pretrain(start_or_resume(plain, out, seed=1), [TEXT], out, PretrainConfig(steps=steps, **settings),
                        show_progress=False)

    straight = run(tmp_path / "straight", 6)
    run(tmp_path / "resumed", 4)
    resumed = run(tmp_path / "resumed", 6)
    assert [e["step"] for e in resumed] == [1, 2, 3, 4, 5, 6]
    torch.testing.assert_close(torch.tensor([e["loss"] for e in resumed]), torch.tensor([e["loss"] for e in straight]),
                               rtol=1e-4, atol=1e-5)
    logged = [json.loads(line) for line in (tmp_path / "resumed" / "pretrain_log.jsonl").read_text().splitlines()]
    assert len(logged) == 6
    loaded = CompressedMemoryModel.from_pretrained(str(base), checkpoint=tmp_path / "resumed", show_progress=False)
    assert loaded.memory_config.compression.method == "learned" and len(loaded.compress(TEXT)) > 1


def test_pretraining_reads_a_block_exactly_as_inference_does_quantization_included(tokenizer, tmp_path):
    """The loss pre-training computes is the one inference's own read step (`step_input`, `step_logprobs`) gives
    for a bank of the same chunks stored in 2 bits, and its gradients still reach the compressor."""
    tiny_model("llama", tokenizer, 0, initializer_range=0.2).save_pretrained(tmp_path)  # logits a block steers
    tokenizer.save_pretrained(tmp_path)
    stored = CompressionConfig("select", ratio=4, bits=2, group=8)
    config = CONFIG.replace(compression=stored, reading=ReadingConfig("compressed"))
    plain = CompressedMemoryModel.from_pretrained(str(tmp_path), config=config, show_progress=False)
    model = start_or_resume(plain, tmp_path / "run")
    assert model.memory_config.compression == CompressionConfig("learned", ratio=4, bits=2, group=8)
    pairs = training_pairs(model, [TEXT], continuation_tokens=16)[:2]
    chunks, continuations = pairs[:, :32], pairs[:, 32:]
    trainable_weights(model)
    loss = reconstruction_loss(model, chunks, continuations)

    bank = model.builder.bank([Chunk(ids, 0, 0, None) for ids in chunks], torch.device("cpu"), batch_size=2,
                              show_progress=False)
    targets = torch.cat([chunks, continuations], dim=1)
    with torch.no_grad():
        reads = [step_input(bank, row, targets[row, :1], "compressed", device=model.model.device,
                            dtype=model.model.dtype) for row in range(len(bank))]
        scores, mask = step_logprobs(model.model, reads, list(targets[:, 1:]), pad_token_id(tokenizer))
    torch.testing.assert_close(loss, -scores[mask].mean(), rtol=1e-5, atol=1e-5)
    loss.backward()
    assert model.compressor.memory_embeddings.grad.abs().sum() > 0  # straight through the quantization


def test_texts_too_short_for_one_window_are_refused(tokenizer):
    with pytest.raises(ValueError, match="no window of 48 tokens"):
        training_pairs(_plain(tokenizer), ["too short"], continuation_tokens=16)


def _base_and_text(tokenizer, folder):
    """A saved tiny base model and a text file to pre-train on, for the command-line tests."""
    base = folder / "base"
    tiny_model("llama", tokenizer).save_pretrained(base)
    tokenizer.save_pretrained(base)
    text = folder / "text.txt"
    text.write_text(TEXT)
    return base, text


def test_pretrain_command_trains_resumes_and_writes_a_loadable_checkpoint(tokenizer, tmp_path):
    from compressmem.cli import main

    base, text = _base_and_text(tokenizer, tmp_path)
    out = tmp_path / "run"
    args = ["train", "pretrain", "--model", str(base), "--chunk-size", "32", "--files", str(text), "--out", str(out),
            "--batch-size", "2", "--continuation-tokens", "8", "--save-every", "2", "--quiet"]
    assert main(args + ["--steps", "2"]) == 0
    assert main(args + ["--steps", "3"]) == 0
    log = [json.loads(line) for line in (out / "pretrain_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == [1, 2, 3] and all(e["peak_memory_mib"] > 0 for e in log)
    assert (out / "pretrain_log.png").is_file() and (out / "compressor" / "adapter_model.safetensors").is_file()
    loaded = CompressedMemoryModel.from_pretrained(str(base), checkpoint=out, show_progress=False)
    assert loaded.memory_config.compression == CompressionConfig("learned", ratio=4)
    assert loaded.memory_config.reading.mode == "compressed"


def test_pretrain_command_takes_a_learned_configuration_and_a_device(tokenizer, tmp_path):
    from compressmem.cli import main

    base, text = _base_and_text(tokenizer, tmp_path)
    config = tmp_path / "learned.json"
    MemoryConfig(chunking=ChunkingConfig(32), compression=CompressionConfig("learned", ratio=4.0),
                 reading=ReadingConfig("compressed"), gate=GateConfig(top_k=2)).save(config)
    out = tmp_path / "run"
    assert main(["train", "pretrain", "--model", str(base), "--config", str(config), "--files", str(text),
                 "--out", str(out), "--batch-size", "2", "--continuation-tokens", "8", "--steps", "1",
                 "--device", "cpu", "--dtype", "float32", "--quiet"]) == 0
    loaded = CompressedMemoryModel.from_pretrained(str(base), checkpoint=out, show_progress=False)
    assert loaded.memory_config.compression == CompressionConfig("learned", ratio=4.0)
    assert loaded.memory_config.gate.top_k == 2 and loaded.memory_config.chunking.size == 32
