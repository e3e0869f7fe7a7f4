"""A short, stable identity for a base model, so banks and checkpoints refuse the wrong model."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .compat import offloaded_weight
from .placement import input_embedding_weight

_CONFIG_FIELDS = (
    "model_type",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
    "rope_parameters",
    "rope_theta",
    "rope_scaling",
    "sliding_window",
)


@dataclass(frozen=True)
class BaseFingerprint:
    """`name` is for people (the id or path the model was loaded from); `digest` is what is compared."""

    name: str
    digest: str

    def describe(self) -> str:
        return f"'{self.name}' (fingerprint {self.digest[:12]})"

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, str]) -> BaseFingerprint:
        return cls(name=data["name"], digest=data["digest"])


def fingerprint_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, name: str) -> BaseFingerprint:
    """Hash the architecture, the vocabulary and a sample of the embedding weights.

    The weight sample tells two fine-tunes of one architecture apart (their KV differ) at the cost of
    reading a few rows, not the whole model; it is rounded to bfloat16 so that loading the same model
    in another dtype keeps its identity.
    """
    config = model.config.get_text_config()
    digest = hashlib.sha256()
    fields = {key: getattr(config, key, None) for key in _CONFIG_FIELDS}
    digest.update(json.dumps(fields, sort_keys=True, default=str).encode())
    digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    sample = _embedding_weight(model)[:4, :64].detach().to("cpu", torch.bfloat16).float()
    digest.update(sample.numpy().tobytes())
    return BaseFingerprint(name=name, digest=digest.hexdigest())


def _embedding_weight(model: PreTrainedModel) -> torch.Tensor:
    """The input embedding matrix, also when accelerate offloaded it (its parameter is then on `meta`
    and the weights rest in the module's offload hook)."""
    weight = input_embedding_weight(model)
    if weight.device.type == "meta":
        return offloaded_weight(model.get_input_embeddings(), "weight")
    return weight
