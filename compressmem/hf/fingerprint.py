"""A short, stable identity for a base model, so banks and checkpoints refuse the wrong model.

Format 1 (release 0.4 and before) hashed the architecture, the vocabulary and a sample of the embedding
rows: a fine-tune that changed every layer but not the embeddings kept the base's identity and read its
banks, whose KV it does not compute. Format 2 adds `layers`, a hash of a sample of every weight the KV
depends on (every layer's attention and MLP weights, norms included). A format-1 fingerprint recorded by an
older bank is compared the old way (`digest` only).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

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


FINGERPRINT_VERSION = 2
"""1: architecture, vocabulary, embedding rows (`digest`); 2: also a sample of every layer's weights (`layers`)."""

_SAMPLE = 32  # elements sampled from each weight tensor


@dataclass(frozen=True, eq=False)
class BaseFingerprint:
    """`name` is for people (the id or path the model was loaded from); `digest` (architecture, vocabulary,
    embedding rows) and `layers` (a sample of every layer's weights; None in a format-1 fingerprint, or for
    a model whose layers are quantized, so their float weights cannot be sampled) are what is compared.

    Two fingerprints are equal when they are of the same model (`matches`): the same `digest` and, when both
    hold one, the same `layers`."""

    name: str
    digest: str
    layers: str | None = None
    version: int = 1

    def describe(self) -> str:
        return f"'{self.name}' (fingerprint {self.digest[:12]}{'' if self.layers is None else '/' + self.layers[:8]})"

    def matches(self, other: BaseFingerprint) -> bool:
        """Whether `other` is of the same model: the same architecture, vocabulary and embeddings and, when both
        sampled them, the same layer weights (a format-1 fingerprint, or a quantized model's, has none)."""
        if self.digest != other.digest:
            return False
        return self.layers is None or other.layers is None or self.layers == other.layers

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BaseFingerprint) and self.matches(other)

    def __hash__(self) -> int:
        return hash(self.digest)

    def to_dict(self) -> dict[str, str | int | None]:
        """As recorded in banks and checkpoints; a format-1 fingerprint as release 0.4 wrote it."""
        if self.version == 1:
            return {"name": self.name, "digest": self.digest}
        return {"name": self.name, "digest": self.digest, "layers": self.layers, "version": self.version}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BaseFingerprint:
        return cls(
            name=data["name"], digest=data["digest"], layers=data.get("layers"), version=int(data.get("version", 1))
        )


def fingerprint_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, name: str) -> BaseFingerprint:
    """Hash the architecture, the vocabulary and a sample of the embedding weights (`digest`), and a sample of
    every other weight of the model (`layers`).

    The samples tell two fine-tunes of one architecture apart (their KV differ) at the cost of reading a few
    values of each weight, not the whole model; they are rounded to bfloat16 so that loading the same model
    in another dtype keeps its identity. Adapters (LoRA) attached to the model are left out: the base's
    weights are sampled under them.
    """
    config = model.config.get_text_config()
    digest = hashlib.sha256()
    fields = {key: getattr(config, key, None) for key in _CONFIG_FIELDS}
    digest.update(json.dumps(fields, sort_keys=True, default=str).encode())
    digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    sample = _embedding_weight(model)[:4, :64].detach().to("cpu", torch.bfloat16).float()
    digest.update(sample.numpy().tobytes())
    return BaseFingerprint(name=name, digest=digest.hexdigest(), layers=_layers_digest(model), version=2)


def _layers_digest(model: PreTrainedModel) -> str | None:
    """A hash of the first `_SAMPLE` values of every weight of the model but the input embeddings (each named as
    in the base model, without adapters), or None when some weight is not floating point (quantized layers)."""
    embeddings = input_embedding_weight(model)
    hashed = hashlib.sha256()
    for name, parameter in model.named_parameters():
        parts = name.split(".")
        if parameter is embeddings or any(part.startswith("lora_") or part == "modules_to_save" for part in parts):
            continue
        base = [part for part in parts if part != "base_layer"]
        weight: torch.Tensor = parameter
        if weight.device.type == "meta":  # offloaded by accelerate: its values rest in the module's hook
            weight = offloaded_weight(model.get_submodule(".".join(parts[:-1])), parts[-1])
        if not weight.is_floating_point():
            return None
        values = weight.detach().reshape(-1)[:_SAMPLE].to("cpu", torch.bfloat16).float()
        hashed.update(".".join(base).encode())
        hashed.update(values.numpy().tobytes())
    return hashed.hexdigest()


def _embedding_weight(model: PreTrainedModel) -> torch.Tensor:
    """The input embedding matrix, also when accelerate offloaded it (its parameter is then on `meta`
    and the weights rest in the module's offload hook)."""
    weight = input_embedding_weight(model)
    if weight.device.type == "meta":
        return offloaded_weight(model.get_input_embeddings(), "weight")
    return weight
