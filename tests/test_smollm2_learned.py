"""The shipped learned checkpoint on the real model: compressor and reasoner adapter load, blocks are
memory tokens at ratio 4, and the base model's own generate() is untouched by either adapter."""

import math

import torch

from compressmem import CompressedMemoryModel
from compressmem.checkpoints import SMOLLM2_LEARNED
from compressmem.compressors import LearnedCompressor


def test_shipped_learned_checkpoint_compresses_and_answers(smollm2):
    model = CompressedMemoryModel.from_pretrained(smollm2.base_name, memory=SMOLLM2_LEARNED, show_progress=False)
    assert isinstance(model.compressor, LearnedCompressor) and model.reasoner_adapter is not None
    prompt = model.prompt_ids("What is the secret code?")
    plain = model.generate(prompt, max_new_tokens=8, do_sample=False)
    assert torch.equal(plain, smollm2.model.generate(prompt, max_new_tokens=8, do_sample=False))
    context = "The secret code of the harbour vault is 5521907. " + "Boats came and went all day. " * 80
    bank = model.compress(context)
    for block in bank.blocks:
        assert block.keys.shape[2] == math.ceil(block.num_tokens / model.memory_config.ratio)
    out = model.generate(prompt, memory=bank, max_new_tokens=16, do_sample=False, return_dict_in_generate=True)
    assert out.trace[0].blocks_read == [0]  # the lexical gate passes the block that holds the code
    assert out.sequences.shape[1] > prompt.shape[1]
