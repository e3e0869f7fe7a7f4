"""The shipped learned checkpoint on the real model: the compressor loads, blocks are memory tokens at
ratio 4, the base model's own generate() is untouched by the adapter, and the compressor is trained:
the base model rebuilds a held-out chunk from its block far better than from an untrained one's."""

import math
from pathlib import Path

import pytest
import torch

from compressmem import CompressedMemoryModel, MemoryConfig
from compressmem.checkpoints import SMOLLM2_LEARNED
from compressmem.compressors import LearnedCompressor
from compressmem.training.pretrain import reconstruction_loss, start_or_resume

pytestmark = pytest.mark.slow


def test_shipped_learned_checkpoint_compresses_and_answers(smollm2):
    model = CompressedMemoryModel.from_pretrained(smollm2.base_name, checkpoint=SMOLLM2_LEARNED, show_progress=False)
    assert isinstance(model.compressor, LearnedCompressor)
    prompt = model.prompt_ids("What is the secret code?")
    plain = model.generate(prompt, max_new_tokens=8, do_sample=False)
    assert torch.equal(plain, smollm2.model.generate(prompt, max_new_tokens=8, do_sample=False))
    context = "The secret code of the harbour vault is 5521907. " + "Boats came and went all day. " * 80
    bank = model.compress(context)
    for block in bank.blocks:
        assert block.keys.shape[2] == math.ceil(block.num_tokens / model.memory_config.compression.ratio)
    out = model.generate(prompt, bank=bank, max_new_tokens=16, do_sample=False, return_dict_in_generate=True)
    assert out.trace[0].blocks_read == [0]  # the lexical gate passes the block that holds the code
    assert out.sequences.shape[1] > prompt.shape[1]


def test_shipped_compressor_keeps_what_an_untrained_one_loses(smollm2, tmp_path):
    trained = CompressedMemoryModel.from_pretrained(smollm2.base_name, checkpoint=SMOLLM2_LEARNED, show_progress=False)
    fresh_base = CompressedMemoryModel.from_pretrained(smollm2.base_name, config=MemoryConfig(), show_progress=False)
    untrained = start_or_resume(fresh_base, tmp_path, seed=0, config=trained.memory_config)
    chunk = trained.memory_config.chunking.size
    text = (Path(__file__).resolve().parents[1] / "examples" / "long_document.txt").read_text()  # never trained on
    ids = trained.tokenizer(text[:6000], add_special_tokens=False)["input_ids"]
    window = torch.tensor(ids[-(chunk + 32):])[None]
    with torch.no_grad():
        losses = [reconstruction_loss(m, window[:, :chunk], window[:, chunk:]).item() for m in (trained, untrained)]
    assert losses[0] < 0.5 * losses[1]
