"""`generate` with the types it has at run time: transformers types `PreTrainedModel` without `generate` (only its
causal language models mix in `GenerationMixin`) and `generate`'s result as an output or a bare tensor."""

from __future__ import annotations

from typing import Any

import torch
from transformers import GenerationMixin, PreTrainedModel
from transformers.generation.utils import GenerateBeamDecoderOnlyOutput, GenerateDecoderOnlyOutput

DecoderOutput = GenerateDecoderOnlyOutput | GenerateBeamDecoderOnlyOutput
"""What `generate` returns for a decoder-only model asked for `return_dict_in_generate`."""


def generation_model(model: PreTrainedModel) -> GenerationMixin:
    """`model`, refused unless it can generate text."""
    if not isinstance(model, GenerationMixin):
        raise TypeError(
            f"{type(model).__name__} cannot generate text (it has no transformers GenerationMixin): load a causal "
            "language model, e.g. with AutoModelForCausalLM."
        )
    return model


def generate_output(model: PreTrainedModel, **kwargs: Any) -> DecoderOutput:
    """`model.generate(**kwargs)` for settings that ask for `return_dict_in_generate`, typed as the output it is."""
    out = generation_model(model).generate(**kwargs)
    if not isinstance(out, (GenerateDecoderOnlyOutput, GenerateBeamDecoderOnlyOutput)):
        raise TypeError(
            f"generate returned a {type(out).__name__}, not a decoder-only model's output: ask for "
            "return_dict_in_generate=True, from a decoder-only model."
        )
    return out


def generate_ids(model: PreTrainedModel, *args: Any, **kwargs: Any) -> torch.Tensor:
    """`model.generate(*args, **kwargs)` for settings that ask for ids alone (no `return_dict_in_generate`)."""
    out = generation_model(model).generate(*args, **kwargs)
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"generate returned a {type(out).__name__} where token ids were asked for.")
    return out
