"""The paper's released compressor (LycheeMemory, Activation Beacon's design), computed by our own forward.

A LycheeMemory checkpoint is a Qwen2 checkpoint plus extra tensors: per decoder layer the projections
`lychee_memory_{q,k,v,o}_proj` (those its `lychee_memory_param` names) used instead of the layer's own for
memory tokens, and one embedding row `lychee_memory_embed_tokens` for every memory token. The base model is
the checkpoint's Qwen2 weights, loaded by transformers as usual; the compressor is the extra tensors and the
`lychee_memory_*` settings of its `config.json` (`LycheeSettings`).

Compressing a chunk (what the authors' `aggregate_text` does for every chunk their recurrent `generate`
reads, written here anew for any transformers release we support):

- the chunk is cut into windows of `lychee_memory_window` tokens; in each window a memory token follows
  every group of `ratio` tokens (the last group of a chunk may be shorter: it still gets its memory token,
  as their padded last chunk does);
- memory tokens embed as the memory embedding row, and their queries, keys, values and attention outputs
  go through the extra projections named by `lychee_memory_param` (the layer's own projections otherwise);
  norms and MLPs are the base model's;
- RoPE positions run over the window with its memory tokens, one position each, after the memory entries
  of earlier windows of the chunk (which sit at `0..M-1`);
- attention is causal over [memory of earlier windows; this window with its memory tokens] ("full-coverage":
  raw tokens and memory tokens alike see everything before them, the raw tokens of earlier windows are gone);
- what is kept, per layer, is the memory tokens' keys (before RoPE, as their cache keeps them) and values;
  a chunk of `n` tokens leaves `ceil(n / ratio)` entries.

Their reader uses these keys unrotated, that is rotated at position 0, so a block's `positions` are all 0:
that is the position at which its keys are rotated (the gate's un-rotation leaves them as they are). Their
reader then places its prompt after `window / ratio` memory entries (padded ones included). The chunk does
not see the bank's shared prefix (theirs compresses each chunk on its own); the prefix's KV is the base
model's, kept in the bank for what reads it. compressmem's reader reads a block of this compressor their way
(`reader/step.py`): the block's entries alone, then the bank's section prefix and the update prompt as
tokens from position `prompt_position(chunk_size, ratio)`; a bank says it holds such blocks by its
compressor digest, which starts with `DIGEST_MARK` (`reads_their_way`).

A checkpoint on the Hub or in a folder is found with `checkpoint_files` (only its configuration, weight and
tokenizer files), and a compressmem checkpoint made over one points at it with `POINTER_FILE`.

The same design serves any Qwen2 or Llama base (SmolLM2 is a Llama; a projection without a bias has no extra
bias): `LycheeCompressor.initialise` makes a new one for a base model as their code does when the extra tensors
are missing (each extra projection a copy of its layer's own, the memory embedding the end-of-sequence token's),
for `training.pretrain` to train; `save` and `load` keep its extra tensors and settings in one safetensors file
(`OWN_FILE`) inside a compressmem checkpoint, whose `POINTER_FILE` then names the base model.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from ..errors import CheckpointMismatchError, ConfigError
from .base import CompressedChunks, Compressor

PROJECTIONS = ("q", "k", "v", "o")
EMBEDDING = "model.lychee_memory_embed_tokens.weight"
SETTINGS_PREFIX = "lychee_memory_"
EXTRA_MARK = "lychee_memory_"  # every extra tensor's name holds it; no base Qwen2 tensor's does
DIGEST_MARK = "lychee-"  # a LycheeCompressor's digest starts with it: a bank of its blocks is read their way
POINTER_FILE = "lychee_base.json"  # in a compressmem checkpoint over a LycheeMemory one: its repo and revision
CHECKPOINT_FILES = ("*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.tiktoken")
OWN_FILE = "lychee_memory.safetensors"  # a trained-here compressor's extra tensors, its settings in the metadata
SETTINGS_KEY = "lychee_memory_settings"  # the metadata key of OWN_FILE holding the settings (JSON)
ARCHITECTURES = ("qwen2", "llama")  # bases whose decoder layers this forward computes


def is_lychee(config: Mapping[str, Any]) -> bool:
    """Whether a `config.json` (a dict) describes a LycheeMemory checkpoint: it holds `lychee_memory_*` settings."""
    return LycheeSettings.present(config)


def reads_their_way(compressor_digest: str | None) -> bool:
    """Whether a bank whose provenance records `compressor_digest` holds LycheeCompressor blocks, which are read
    as the authors' reader reads them (memory entries unrotated, the prompt at `prompt_position`)."""
    return compressor_digest is not None and compressor_digest.startswith(DIGEST_MARK)


def prompt_position(chunk_size: int, ratio: float) -> int:
    """The RoPE position at which the authors' reader places the prompt after a block: the number of memory
    entries of a full chunk (their last chunk is padded to the full size, so every chunk's prompt starts there).
    A chunk of `chunk_size` tokens has `ceil(chunk_size / ratio)` entries whatever its windows, since the ratio
    divides the window."""
    return math.ceil(chunk_size / ratio)


def projection_name(layer: int, projection: str, part: str = "weight") -> str:
    """The checkpoint name of layer `layer`'s extra `projection` ("q", "k", "v", "o") `part` ("weight", "bias")."""
    return f"model.layers.{layer}.self_attn.lychee_memory_{projection}_proj.{part}"


@dataclass(frozen=True)
class LycheeSettings:
    """The `lychee_memory_*` settings of a LycheeMemory `config.json` that compression depends on.

    `ratios` is the list the checkpoint was trained with (its ratio mix); a compressor uses one of them.
    Only the design their inference runs is accepted: memory tokens interleaved (`pos="interleave"`, which
    needs `stride == window`), "full-coverage" attention, no sink tokens, one window at a time.
    """

    window: int
    stride: int
    ratios: tuple[int, ...]
    param: tuple[str, ...]
    pos: str = "interleave"
    attn: str = "full-coverage"
    sink_size: int = 0
    parallel_window: int = 1

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> LycheeSettings:
        """Read the settings of a `config.json` (a dict); missing keys take their configuration class's defaults."""
        get = config.get
        settings = cls(
            window=int(get("lychee_memory_window", 1024)),
            stride=int(get("lychee_memory_stride", 1024)),
            ratios=tuple(int(r) for r in get("lychee_memory_ratio", [2, 4, 8, 16, 32])),
            param=tuple(get("lychee_memory_param", [])),
            pos=str(get("lychee_memory_pos", "interleave")),
            attn=str(get("lychee_memory_attn", "full-coverage")),
            sink_size=int(get("lychee_memory_sink_size", 0)),
            parallel_window=int(get("lychee_memory_parallel_window", 1)),
        )
        settings.check()
        return settings

    @staticmethod
    def present(config: Mapping[str, Any]) -> bool:
        """Whether a `config.json` (a dict) describes a LycheeMemory checkpoint."""
        return any(str(key).startswith(SETTINGS_PREFIX) for key in config)

    def check(self) -> None:
        """Refuse settings whose compression this implementation does not compute (nor their inference runs)."""
        problems = []
        if self.pos != "interleave":
            problems.append(f"lychee_memory_pos is {self.pos!r}; only 'interleave' is supported")
        if self.attn != "full-coverage":
            problems.append(f"lychee_memory_attn is {self.attn!r}; only 'full-coverage' is supported")
        if self.stride != self.window:
            problems.append(f"lychee_memory_stride {self.stride} differs from lychee_memory_window {self.window}")
        if self.sink_size != 0:
            problems.append(f"lychee_memory_sink_size is {self.sink_size}; only 0 is supported")
        if self.parallel_window != 1:
            problems.append(f"lychee_memory_parallel_window is {self.parallel_window}; only 1 is supported")
        unknown = [p for p in self.param if p not in PROJECTIONS]
        if unknown:
            problems.append(f"lychee_memory_param names {unknown}; known projections are {list(PROJECTIONS)}")
        if self.window < 1 or any(r < 1 for r in self.ratios):
            problems.append(f"window {self.window} and ratios {list(self.ratios)} must be positive")
        if problems:
            raise ConfigError("This LycheeMemory configuration cannot be compressed here: " + "; ".join(problems) + ".")

    def to_config(self) -> dict[str, Any]:
        """The settings as `lychee_memory_*` configuration keys (the inverse of `from_config`)."""
        return {
            "lychee_memory_window": self.window,
            "lychee_memory_stride": self.stride,
            "lychee_memory_ratio": list(self.ratios),
            "lychee_memory_param": list(self.param),
            "lychee_memory_pos": self.pos,
            "lychee_memory_attn": self.attn,
            "lychee_memory_sink_size": self.sink_size,
            "lychee_memory_parallel_window": self.parallel_window,
        }

    def pick_ratio(self, ratio: int | None) -> int:
        """The compression ratio to use: `ratio` (one dividing the window), or the checkpoint's only one."""
        if ratio is None:
            if len(self.ratios) != 1:
                raise ConfigError(
                    f"This LycheeMemory checkpoint was trained with ratios {list(self.ratios)}: choose one "
                    "(their inference sets one, e.g. 4) with ratio=..."
                )
            ratio = self.ratios[0]
        if ratio < 1 or self.window % ratio:
            raise ConfigError(
                f"A LycheeMemory ratio must divide the window of {self.window} tokens (so that every window ends "
                f"on a memory token); got {ratio}."
            )
        return ratio


def split_checkpoint(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A LycheeMemory state dict split into the base Qwen2 weights and the extra `lychee_memory_*` tensors.

    The split is by name; `LycheeCompressor.check` then holds the extra tensors to the base model's shapes.
    """
    base: dict[str, torch.Tensor] = {}
    extras: dict[str, torch.Tensor] = {}
    for name, tensor in state_dict.items():
        (extras if EXTRA_MARK in name else base)[name] = tensor
    return base, extras


def read_checkpoint(directory: str | Path) -> tuple[LycheeSettings, dict[str, torch.Tensor]]:
    """The settings and the extra tensors of a LycheeMemory checkpoint folder (`config.json`, `*.safetensors`),
    reading only the extra tensors from the weight files."""
    from safetensors import safe_open

    directory = Path(directory)
    config = json.loads((directory / "config.json").read_text())
    if not LycheeSettings.present(config):
        raise CheckpointMismatchError(f"{directory / 'config.json'} holds no lychee_memory_* settings.")
    extras: dict[str, torch.Tensor] = {}
    for file in sorted(directory.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 - a safetensors handle is not iterable
                if EXTRA_MARK in name:
                    extras[name] = handle.get_tensor(name)
    return LycheeSettings.from_config(config), extras


def is_lychee_source(name: str | Path, revision: str | None = None, **hub_kwargs: Any) -> bool:
    """Whether `name` (a folder or a Hub repo id) is a LycheeMemory checkpoint: its `config.json` holds
    `lychee_memory_*` settings. False when that cannot be read (no such file, offline and not cached)."""
    path = Path(name) / "config.json"
    if not Path(name).is_dir():
        from huggingface_hub import hf_hub_download

        try:
            path = Path(hf_hub_download(str(name), "config.json", revision=revision, **hub_kwargs))
        except (OSError, ValueError):  # huggingface_hub's not-found and connection errors are OSErrors
            return False
    try:
        return path.is_file() and is_lychee(json.loads(path.read_text(encoding="utf-8")))
    except ValueError:
        return False


def checkpoint_files(name: str | Path, revision: str | None = None, **hub_kwargs: Any) -> tuple[Path, str | None]:
    """The local folder of the LycheeMemory checkpoint `name` (a folder, or a Hub repo id whose configuration,
    safetensors weights and tokenizer files are downloaded, or taken from the Hub cache) and the commit it was
    taken at (None for a folder). `hub_kwargs` are `snapshot_download`'s (`token`, `cache_dir`,
    `local_files_only`). Refused, naming `name`, unless its `config.json` holds `lychee_memory_*` settings."""
    if Path(name).is_dir():
        folder, commit = Path(name), None
    else:
        from huggingface_hub import snapshot_download

        folder = Path(
            snapshot_download(str(name), revision=revision, allow_patterns=list(CHECKPOINT_FILES), **hub_kwargs)
        )
        commit = folder.name  # the Hub cache keeps a snapshot per commit, named by its hash
    path = folder / "config.json"
    if not path.is_file():
        raise CheckpointMismatchError(f"{name} is no model checkpoint: it has no config.json.")
    if not is_lychee(json.loads(path.read_text(encoding="utf-8"))):
        raise CheckpointMismatchError(
            f"{name} is no LycheeMemory checkpoint: its config.json holds no lychee_memory_* settings."
        )
    if not any(folder.glob("*.safetensors")):
        raise CheckpointMismatchError(
            f"{name} holds no .safetensors weights; LycheeMemory's extra tensors are read from safetensors files."
        )
    return folder, commit


def write_pointer(
    directory: Path,
    origin: tuple[str, str | None],
    ratio: float,
    window: int,
    digest: str,
    own: str | None = None,
) -> None:
    """Write `POINTER_FILE` into a compressmem checkpoint folder: the LycheeMemory checkpoint (repo or folder,
    and commit) whose base weights and extra tensors it uses, the ratio and window it compresses with, and the
    digest its banks record (so a reload that finds other weights is refused). With `own` (a file of the folder,
    `OWN_FILE`), the extra tensors are that file's and `origin` names the plain base model."""
    repo, revision = origin
    payload: dict[str, Any] = {
        "repo": repo,
        "revision": revision,
        "ratio": ratio,
        "window": window,
        "compressor_digest": digest,
    }
    if own is not None:
        payload["own"] = own
    directory.mkdir(parents=True, exist_ok=True)
    (directory / POINTER_FILE).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")


def read_pointer(directory: Path) -> dict[str, Any] | None:
    """A compressmem checkpoint folder's `POINTER_FILE` (None when it has none: no LycheeMemory base)."""
    path = directory / POINTER_FILE
    if not path.is_file():
        return None
    payload = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(payload, dict) or not isinstance(payload.get("repo"), str):
        raise CheckpointMismatchError(f"{path} must name the LycheeMemory checkpoint ('repo'); it is damaged.")
    return payload


def _rotate_half(states: torch.Tensor) -> torch.Tensor:
    half = states.shape[-1] // 2
    return torch.cat((-states[..., half:], states[..., :half]), dim=-1)


class LycheeCompressor(Compressor):
    """LycheeMemory's compressor over a Qwen2 or Llama base: interleaved memory tokens read each window of a chunk
    through the checkpoint's extra projections; their keys and values are the block."""

    name = "lychee"

    def __init__(
        self,
        settings: LycheeSettings,
        extras: Mapping[str, torch.Tensor],
        ratio: int | None = None,
        origin: tuple[str, str | None] | None = None,
    ) -> None:
        self.settings = settings
        self.extras = dict(extras)  # checkpoint names -> tensors (`split_checkpoint`, `read_checkpoint`)
        super().__init__(float(settings.pick_ratio(ratio)))
        self.step = int(self.ratio)  # raw tokens per memory token
        self.origin = origin  # the checkpoint's Hub repo (or folder) and commit, when loaded from one

    @classmethod
    def from_checkpoint(
        cls, model: PreTrainedModel, directory: str | Path, ratio: int | None = None
    ) -> LycheeCompressor:
        """The compressor of a LycheeMemory checkpoint folder for `model` (its base weights, already loaded),
        its extra tensors checked against `model`'s shapes."""
        settings, extras = read_checkpoint(directory)
        compressor = cls(settings, extras, ratio)
        compressor.check(model)
        return compressor

    @classmethod
    def initialise(
        cls,
        model: PreTrainedModel,
        window: int,
        ratios: tuple[int, ...],
        ratio: int | None = None,
        param: tuple[str, ...] = PROJECTIONS,
    ) -> LycheeCompressor:
        """A new compressor of this design for `model`, as the authors' code makes one when a checkpoint lacks
        the extra tensors: every extra projection a copy of its layer's own (weight, and bias where there is one),
        the memory embedding the end-of-sequence token's embedding (their default `lychee_memory_embed_init`).
        The extra tensors are float32 whatever the model's dtype. `ratio` (default: 4 when in `ratios`, else the
        first) is the one it compresses with; training samples from `ratios`."""
        settings = LycheeSettings(window=window, stride=window, ratios=tuple(ratios), param=tuple(param))
        settings.check()
        _check_architecture(model)
        decoder = _decoder(model)
        eos = getattr(model.config, "eos_token_id", None)
        eos = eos[0] if isinstance(eos, list) else eos
        if eos is None:
            raise ConfigError("The base model's configuration names no eos_token_id for the memory embedding.")
        extras = {EMBEDDING: decoder.embed_tokens.weight.detach()[eos : eos + 1].float().clone()}
        for index, layer in enumerate(decoder.layers):
            for projection in settings.param:
                own = getattr(layer.self_attn, f"{projection}_proj")
                extras[projection_name(index, projection)] = own.weight.detach().float().clone()
                if own.bias is not None:
                    extras[projection_name(index, projection, "bias")] = own.bias.detach().float().clone()
        if ratio is None:
            ratio = 4 if 4 in settings.ratios else settings.ratios[0]
        compressor = cls(settings, extras, ratio)
        compressor.check(model)
        return compressor

    def at_ratio(self, ratio: int) -> LycheeCompressor:
        """The same compressor (the same extra tensors, not copies) compressing at `ratio`."""
        return type(self)(self.settings, self.extras, ratio, self.origin)

    def weights(self) -> list[torch.nn.Parameter]:
        """The extra tensors as float32 parameters (made so in place, once), for an optimizer to train."""
        for name, tensor in self.extras.items():
            if not isinstance(tensor, torch.nn.Parameter):
                self.extras[name] = torch.nn.Parameter(tensor.detach().float().clone())
        return [t for _, t in sorted(self.extras.items()) if isinstance(t, torch.nn.Parameter)]

    def save(self, path: str | Path, dtype: torch.dtype = torch.float32) -> None:
        """Write the extra tensors (in `dtype`; bfloat16 halves the file and keeps the digest, which rounds to it)
        and the settings (as metadata) into one safetensors file `path` (`OWN_FILE`)."""
        from safetensors.torch import save_file

        tensors = {name: t.detach().to("cpu", dtype).contiguous() for name, t in self.extras.items()}
        save_file(tensors, str(path), metadata={SETTINGS_KEY: json.dumps(self.settings.to_config())})

    @classmethod
    def load(cls, model: PreTrainedModel, path: str | Path, ratio: int | None = None) -> LycheeCompressor:
        """The compressor `save` wrote to `path`, for `model`, checked against its shapes (a tensor that does not
        fit is refused, naming it and both shapes)."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise CheckpointMismatchError(f"{path} is missing: the checkpoint holds no LycheeMemory-design compressor.")
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            extras = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
        if SETTINGS_KEY not in metadata:
            raise CheckpointMismatchError(f"{path} holds no {SETTINGS_KEY} metadata: it is not a saved compressor.")
        settings = LycheeSettings.from_config(json.loads(metadata[SETTINGS_KEY]))
        if ratio is None and len(settings.ratios) > 1:
            ratio = 4 if 4 in settings.ratios else settings.ratios[0]
        compressor = cls(settings, extras, ratio)
        compressor.check(model)
        return compressor

    def expected_shapes(self, model: PreTrainedModel) -> dict[str, tuple[int, ...]]:
        """The name and shape of every extra tensor the settings call for, from `model`'s own layers: a memory
        projection has its base projection's shape (and a bias where the base one has one)."""
        decoder = _decoder(model)
        hidden = decoder.embed_tokens.weight.shape[1]
        shapes: dict[str, tuple[int, ...]] = {EMBEDDING: (1, hidden)}
        for index, layer in enumerate(decoder.layers):
            for projection in self.settings.param:
                base = getattr(layer.self_attn, f"{projection}_proj")
                shapes[projection_name(index, projection)] = tuple(base.weight.shape)
                if base.bias is not None:
                    shapes[projection_name(index, projection, "bias")] = tuple(base.bias.shape)
        return shapes

    def check(self, model: PreTrainedModel) -> None:
        """Refuse extra tensors that do not fit `model`: a missing or unexpected one by name, a misshapen one
        naming the tensor, its shape and the shape the base model needs."""
        _check_architecture(model)
        expected = self.expected_shapes(model)
        for name, shape in expected.items():
            if name not in self.extras:
                raise CheckpointMismatchError(
                    f"The LycheeMemory checkpoint lacks {name} (shape {list(shape)} for this base model)."
                )
            found = tuple(self.extras[name].shape)
            if found != shape:
                raise CheckpointMismatchError(
                    f"The LycheeMemory tensor {name} has shape {list(found)}, but the base model needs "
                    f"{list(shape)}: the checkpoint's extra tensors were trained for another base model."
                )
        unexpected = sorted(set(self.extras) - set(expected))
        if unexpected:
            raise CheckpointMismatchError(
                f"The LycheeMemory checkpoint holds tensors this base model has no place for: {unexpected[:4]}"
                + (f" and {len(unexpected) - 4} more" if len(unexpected) > 4 else "")
                + f" (its lychee_memory_param is {list(self.settings.param)})."
            )

    def digest(self, model: PreTrainedModel) -> str:
        """SHA-256 of the settings compression depends on, the ratio, and every extra tensor (by name, rounded to
        bfloat16 as the base model's fingerprint is), so a bank records which LycheeMemory weights made it."""
        digest = hashlib.sha256()
        fields = (self.settings.window, self.settings.stride, self.settings.param, self.settings.pos, self.step)
        digest.update(repr(fields).encode())
        for name in sorted(self.extras):
            digest.update(name.encode())
            digest.update(self.extras[name].detach().to("cpu", torch.bfloat16).float().numpy().tobytes())
        return DIGEST_MARK + digest.hexdigest()

    def kept_entries(self, num_tokens: int) -> int:
        return math.ceil(num_tokens / self.step)

    def _extra(self, name: str, like: torch.Tensor) -> torch.Tensor:
        return self.extras[name].to(device=like.device, dtype=like.dtype)

    def _project(
        self, module: torch.nn.Linear, layer: int, projection: str, states: torch.Tensor, memory: torch.Tensor
    ) -> torch.Tensor:
        """`module(states)`, with the extra projection for the memory tokens (`memory`, `[S]` bool) where the
        settings name one."""
        ordinary = module(states)
        if projection not in self.settings.param:
            return ordinary
        weight = self._extra(projection_name(layer, projection), states)
        bias_name = projection_name(layer, projection, "bias")
        bias = self._extra(bias_name, states) if bias_name in self.extras else None
        special = torch.nn.functional.linear(states, weight, bias)
        return torch.where(memory[None, :, None], special, ordinary)

    def forward_blocks(
        self,
        model: PreTrainedModel,
        prefix_ids: torch.Tensor,
        chunk_ids: torch.Tensor,
        layers: tuple[int, ...],
        keep_values: bool,
    ) -> CompressedChunks:
        """`compress`, with autograd left to the caller: every chunk of the `[batch, n]` batch compressed on its
        own, window by window; the memory keys and values of `layers`."""
        decoder = _decoder(model)
        device = decoder.embed_tokens.weight.device
        num_tokens = chunk_ids.shape[1]
        chunk_ids = chunk_ids.to(device)
        last = max(layers)
        past: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * (last + 1)
        for start in range(0, num_tokens, self.settings.window):
            window = chunk_ids[:, start : start + self.settings.window]
            made = self._window(model, window, past)
            past = [
                kv if old is None else (torch.cat([old[0], kv[0]], 2), torch.cat([old[1], kv[1]], 2))
                for old, kv in zip(past, made, strict=True)
            ]
        kv = [_present(past[i]) for i in layers]
        keys = torch.stack([k for k, _ in kv], dim=1)
        values = torch.stack([v for _, v in kv], dim=1) if keep_values else None
        positions = torch.zeros(keys.shape[:4], dtype=torch.int32, device=keys.device)
        prefix_keys, prefix_values = self._prefix_kv(model, prefix_ids, layers)
        return CompressedChunks(keys, values, positions, prefix_keys, prefix_values if keep_values else None)

    @staticmethod
    def _prefix_kv(
        model: PreTrainedModel, prefix_ids: torch.Tensor, layers: tuple[int, ...]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The base model's KV of the shared prefix at `layers`, `[layers, kv_heads, p, head_dim]` (post-RoPE at
        `0..p-1`, as every compressor leaves it): taken from the plain compressor's pass over a one-token chunk."""
        plain = Compressor().forward_blocks(model, prefix_ids, prefix_ids[-1:].view(1, 1), layers, keep_values=True)
        assert plain.prefix_values is not None
        return plain.prefix_keys, plain.prefix_values

    def _window(
        self,
        model: PreTrainedModel,
        window: torch.Tensor,
        past: list[tuple[torch.Tensor, torch.Tensor] | None],
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """One window `[batch, L]` after the memory `past` of earlier windows (per layer, pre-RoPE keys and values
        `[batch, kv_heads, M, d]`, or None before the first): the new memory entries' keys and values per layer."""
        decoder = _decoder(model)
        batch, length = window.shape
        step = self.step
        groups = math.ceil(length / step)
        size = length + groups
        # a memory token after every group of `step` tokens; the last group may be short
        slot = torch.arange(size, device=window.device)
        memory = (slot % (step + 1) == step) | (slot == size - 1)
        embeds = decoder.embed_tokens(window)
        hidden = embeds.new_empty(batch, size, embeds.shape[-1])
        hidden[:, ~memory] = embeds
        hidden[:, memory] = self._extra(EMBEDDING, embeds)[0]
        before = 0 if past[0] is None else past[0][0].shape[2]
        total = before + size
        cos, sin = decoder.rotary_emb(hidden, torch.arange(total, device=window.device)[None])
        cos, sin = cos[:, None], sin[:, None]  # [1, 1, total, d]
        allowed = torch.arange(total, device=window.device)[None, :] <= (
            torch.arange(size, device=window.device)[:, None] + before
        )
        made = []
        for index, layer in enumerate(decoder.layers[: len(past)]):
            attention = layer.self_attn
            head_dim = attention.head_dim
            normed = layer.input_layernorm(hidden)
            query, key, value = (
                self._project(getattr(attention, f"{p}_proj"), index, p, normed, memory)
                .view(batch, size, -1, head_dim)
                .transpose(1, 2)
                for p in ("q", "k", "v")
            )
            made.append((key[:, :, memory], value[:, :, memory]))
            earlier = past[index]
            if earlier is not None:
                key = torch.cat([earlier[0], key], dim=2)
                value = torch.cat([earlier[1], value], dim=2)
            query = query * cos[:, :, before:] + _rotate_half(query) * sin[:, :, before:]
            key = key * cos + _rotate_half(key) * sin
            groups_per_kv = query.shape[1] // key.shape[1]
            key = key.repeat_interleave(groups_per_kv, dim=1)
            value = value.repeat_interleave(groups_per_kv, dim=1)
            out = torch.nn.functional.scaled_dot_product_attention(
                query, key, value, attn_mask=allowed, scale=head_dim**-0.5
            )
            out = out.transpose(1, 2).reshape(batch, size, -1)
            hidden = hidden + self._project(attention.o_proj, index, "o", out, memory)
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        return made


def _present(kv: tuple[torch.Tensor, torch.Tensor] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """A layer's memory after at least one window (a chunk has at least one token, so at least one window)."""
    if kv is None:
        raise ValueError("An empty chunk leaves no memory: compress chunks of at least one token.")
    return kv


def _check_architecture(model: PreTrainedModel) -> None:
    """Refuse a base whose decoder layers this forward does not compute (Qwen2 and Llama only)."""
    kind = getattr(model.config, "model_type", None)
    if kind not in ARCHITECTURES:
        raise CheckpointMismatchError(
            f"LycheeMemory's compressor is computed here for {list(ARCHITECTURES)} models; this base is {kind!r}."
        )


def _decoder(model: PreTrainedModel) -> Any:
    """The Qwen2 decoder (`Qwen2Model`) of a causal LM: embeddings, layers, rotary embedding."""
    decoder = getattr(model, "model", None)
    if decoder is None or not hasattr(decoder, "layers") or not hasattr(decoder, "rotary_emb"):
        raise CheckpointMismatchError(
            "LycheeMemory's compressor needs a Qwen2 or Llama causal LM (model.model.layers, "
            f"model.model.rotary_emb); got {type(model).__name__}."
        )
    return decoder
