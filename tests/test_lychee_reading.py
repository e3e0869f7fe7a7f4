"""compressmem's reader reads LycheeMemory blocks as the authors' reader does.

Their recurrent `generate` (owoakuma/LycheeMemory at the fixture's commit, `src/modeling_qwen2.py`) reads a chunk
as: the cache their `aggregate_text` left (memory keys as computed, before RoPE: unrotated), the padded entries
masked, then the prompt with positions from the cache's length, `chunk / ratio` (their last chunk is padded to the
full chunk). Here that recipe is reproduced with the KV *their own code* computed (`their_outputs.safetensors`) and
compared, logit for logit, with what compressmem's reader feeds the model for the same block (`step_input`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import DynamicCache

from compressmem import ChunkingConfig, CompressionConfig, MemoryConfig, PromptConfig, ReadingConfig
from compressmem.compressors.lychee import prompt_position, reads_their_way
from compressmem.lychee import load_lychee
from compressmem.reader import StepInput, pad_token_id, step_input, step_logprobs

FIXTURE = Path(__file__).parent / "fixtures" / "lycheememory"
MANIFEST = json.loads((FIXTURE / "manifest.json").read_text())
CASES = {case["name"]: case for case in MANIFEST["cases"]}
QUESTION = "What did the keeper write into the ledger?"
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """The fixture checkpoint and tokenizer in one folder; positions raised to 8192 for compressmem's prompts."""
    folder = tmp_path_factory.mktemp("lychee")
    for path in [*(FIXTURE / "model").iterdir(), *(FIXTURE / "tokenizer").iterdir()]:
        shutil.copy(path, folder / path.name)
    config = json.loads((folder / "config.json").read_text())
    config["max_position_embeddings"] = 8192
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def theirs() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURE / "their_outputs.safetensors"))


def wrapper(folder: Path, chunk: int, ratio: int, bits: int = 16):
    config = MemoryConfig(
        chunking=ChunkingConfig(chunk),
        compression=CompressionConfig("learned", ratio=ratio, bits=bits),
        gate=None,
        reading=ReadingConfig("compressed", until="all", max_steps=1),
        prompts=PromptConfig(not_found=None),
    )
    return load_lychee(folder, memory_config=config, show_progress=False, dtype=torch.float32)


def their_recipe(model, keys: list[torch.Tensor], values: list[torch.Tensor], ids: list[int], first: int):
    """Logits `[len(ids), vocab]` of their reader over a chunk's memory KV: per layer `[kv_heads, m, d]` unrotated
    keys and values in the cache, then `ids` at positions `first, first + 1, ...`."""
    cache = DynamicCache()
    for layer, (k, v) in enumerate(zip(keys, values, strict=True)):
        cache.update(k[None], v[None], layer)
    seen = keys[0].shape[1]
    with torch.no_grad():
        return model(
            input_ids=torch.tensor([ids]),
            position_ids=torch.arange(first, first + len(ids))[None],
            attention_mask=torch.ones(1, seen + len(ids), dtype=torch.long),
            cache=cache,
            use_cache=True,
        ).logits[0]


def read_logits(model, item: StepInput, outputs: torch.Tensor, pad: int) -> torch.Tensor:
    """compressmem's teacher-forced log-probabilities of `outputs` after its read `item` (the reader's own
    `step_logprobs`, the twin of the greedy decoding that writes the notes)."""
    with torch.no_grad():
        scores, _ = step_logprobs(model, [item], [outputs], pad)
    return scores[0]


def test_prompt_position_is_the_entries_of_a_full_chunk() -> None:
    assert prompt_position(512, 4) == 128 and prompt_position(96, 4) == 24 and prompt_position(33, 4) == 9
    assert reads_their_way("lychee-" + "0" * 64) and not reads_their_way("0" * 64) and not reads_their_way(None)


@pytest.mark.parametrize(
    ("name", "chunk"),
    [("two_windows_ratio4", 64), ("one_window_ratio8", 32), ("padded_ratio4", 96), ("padded_ratio2", 64)],
)
def test_first_read_of_a_block_gives_their_readers_logits(name, chunk, folder, theirs) -> None:
    case = CASES[name]
    ratio = case["ratio"]
    memory = wrapper(folder, chunk, ratio)
    model = memory.model
    bank = memory.compress(case["text"])
    assert len(bank) == 1 and bank.token_ids(0).tolist() == theirs[f"{name}.input_ids"].tolist()
    assert reads_their_way(bank.provenance.compressor_digest)

    # compressmem's reader: its first read of the block, greedy, through `answer`
    out = memory.answer(QUESTION, bank=bank, return_sources=True, max_new_tokens=4)
    step = out.trace.steps[0]
    prompt = torch.tensor(step.prompt_ids)
    assert step.block == 0 and step.output_ids
    written = torch.tensor(step.output_ids)
    item = step_input(bank, 0, prompt, "compressed")
    assert item.first_position == chunk // ratio  # their prompt follows the padded chunk's entries
    ours = read_logits(model, item, written, pad_token_id(memory.tokenizer))

    # their reader, over the KV their own code computed: the entries kv_mask keeps, then the same tokens
    kept = -(-case["tokens"] // ratio)
    keys = [theirs[f"{name}.layer{layer}.keys"][:, :kept] for layer in range(3)]
    values = [theirs[f"{name}.layer{layer}.values"][:, :kept] for layer in range(3)]
    ids = bank.prefix_ids.tolist() + step.prompt_ids + step.output_ids
    logits = their_recipe(model, keys, values, ids, chunk // ratio)
    start = len(ids) - len(step.output_ids) - 1
    expected = logits[start : start + len(step.output_ids)].log_softmax(-1)
    expected = expected.gather(-1, written[:, None])[:, 0]
    assert (ours - expected).abs().max().item() < TOLERANCE
    # the greedy tokens our reader wrote are their reader's greedy tokens
    assert logits[start : start + len(step.output_ids)].argmax(-1).tolist() == step.output_ids


def test_compressmem_placement_would_differ_from_theirs(folder, theirs) -> None:
    """The comparison can fail: the placement compressmem uses for its own compressors (the bank's prefix KV, the
    block after it, the prompt after the chunk's positions) gives other log-probabilities for these blocks."""
    name, chunk, ratio = "two_windows_ratio4", 64, 4
    memory = wrapper(folder, chunk, ratio)
    bank = memory.compress(CASES[name]["text"])
    prompt = memory.prompts.update_ids(QUESTION, "")
    theirs_way = step_input(bank, 0, prompt, "compressed")
    block = bank.blocks[0]
    assert bank.prefix_keys is not None and bank.prefix_values is not None
    assert block.keys is not None and block.values is not None
    ours_way = StepInput(
        torch.cat([bank.prefix_keys, block.keys], 2),
        torch.cat([bank.prefix_values, block.values], 2),
        prompt,
        bank.prefix_ids.numel() + block.num_tokens,
    )
    target = torch.tensor(list(b" the ledger"))
    pad = pad_token_id(memory.tokenizer)
    difference = read_logits(memory.model, theirs_way, target, pad) - read_logits(memory.model, ours_way, target, pad)
    assert difference.abs().max().item() > 100 * TOLERANCE


@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_blocks_are_read_their_way_too(bits, folder) -> None:
    memory = wrapper(folder, 32, 4, bits=bits)
    bank = memory.compress(CASES["five_windows_ratio2"]["text"])
    item = step_input(bank, 1, memory.prompts.update_ids(QUESTION, ""), "compressed")
    assert item.first_position == 8 and item.keys is not None and item.keys.shape[2] == 8  # no prefix KV
    out = memory.answer(QUESTION, bank=bank, return_sources=True, max_new_tokens=4)
    assert out.trace.steps and out.trace.steps[0].output_ids
