"""The paper's released checkpoints (LycheeMemory, e.g. `lerverson/LycheeMemory-7B`) inside compressmem.

`load_lychee(repo_or_folder)` recognises a checkpoint whose `config.json` holds `lychee_memory_*` settings
(`is_lychee`), loads its Qwen2 weights with transformers as any base model (the extra tensors are not the base
model's; no `trust_remote_code`), builds the `LycheeCompressor` from the extra tensors and settings, and returns
a `CompressedMemoryModel` that compresses with it (`CompressionConfig("learned", ratio=...)`, compressed
reading, blocks read as the authors' reader reads them): a bank made once serves every question, the gate picks
blocks, blocks may be quantized to 8 or 4 bits, answers are judged and sourced.

`save_lychee` / `push_lychee` write a compressmem checkpoint over it that stores only what compressmem adds
(the configuration, a gate head when there is one) and a pointer (`lychee_base.json`) to the LycheeMemory repo
and the commit its weights were taken at; `load_lychee` of that checkpoint loads the pointed-at weights.

A compressor of this design made here for another base (`LycheeCompressor.initialise`, trained by
`compressmem train pretrain --design lychee`) is saved self-contained: its extra tensors and settings in
`lychee_memory.safetensors` inside the compressmem checkpoint, the pointer naming the plain base model
(`"own"`); `load_lychee` (and `CompressedMemoryModel.from_pretrained(base, checkpoint=folder)`) loads that base
with transformers and the compressor from the file, refusing a tensor that does not fit the base.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from transformers import AutoModelForCausalLM, AutoTokenizer

from .compressors.lychee import (
    OWN_FILE,
    POINTER_FILE,
    LycheeCompressor,
    LycheeSettings,
    checkpoint_files,
    is_lychee,
    read_checkpoint,
    read_pointer,
    write_pointer,
)
from .config import ChunkingConfig, CompressionConfig, ConfigError, MemoryConfig, ReadingConfig
from .errors import CheckpointMismatchError
from .gate.head import HEAD_FILE
from .hub import Checkpoint, find_checkpoint, upload_checkpoint, write_config
from .model import CompressedMemoryModel
from .model_card import write_model_card

DEFAULT_LYCHEE_RATIO = 4  # the ratio the authors' example runs inference with
HUB_KEYS = ("token", "cache_dir", "local_files_only")

__all__ = [
    "DEFAULT_LYCHEE_RATIO",
    "POINTER_FILE",
    "is_lychee",
    "load_lychee",
    "lychee_memory_config",
    "push_lychee",
    "save_lychee",
]


def lychee_memory_config(
    settings: LycheeSettings, ratio: int | None = None, base: MemoryConfig | None = None
) -> MemoryConfig:
    """`base` (default: `MemoryConfig()`) set to read compressed LycheeMemory blocks: chunks of one window (their
    recurrent reader's chunk), `CompressionConfig("learned", ratio)` (default: 4 when the checkpoint was trained
    with it, as their example runs, else its only ratio) and compressed reading."""
    if ratio is None:
        ratio = DEFAULT_LYCHEE_RATIO if DEFAULT_LYCHEE_RATIO in settings.ratios else settings.pick_ratio(None)
    ratio = settings.pick_ratio(ratio)
    config = base or MemoryConfig()
    stored = config.compression
    reading = config.reading
    return config.replace(
        chunking=ChunkingConfig(settings.window),
        compression=CompressionConfig(
            "learned",
            ratio=ratio,
            bits=16 if stored is None else stored.bits,
            group=None if stored is None else stored.group,
        ),
        reading=ReadingConfig(
            "compressed", reading.order, reading.recall, reading.max_steps, until=reading.until, judge=reading.judge
        ),
    )


def load_lychee(
    repo_or_folder: str | Path,
    revision: str | None = None,
    memory_config: MemoryConfig | None = None,
    *,
    ratio: int | None = None,
    window: int | None = None,
    show_progress: bool = True,
    **hf_kwargs: Any,
) -> CompressedMemoryModel:
    """A `CompressedMemoryModel` over a LycheeMemory checkpoint (Hub repo id or folder, at `revision`), or over a
    compressmem checkpoint saved by `save_lychee` (its configuration and gate head, the LycheeMemory weights it
    points at).

    `memory_config` must compress with `CompressionConfig("learned", ratio=r)` and read `compressed`; without it,
    `lychee_memory_config`'s defaults (or the saved checkpoint's configuration) are used. `ratio` picks one of the
    checkpoint's trained ratios when no configuration names one; `window` replaces the checkpoint's
    `lychee_memory_window` (their example runs inference with 2048). `hf_kwargs` (`dtype`, `device_map`,
    `attn_implementation`, `token`, `cache_dir`, `local_files_only`, ...) go to transformers; the Hub ones also
    fetch the checkpoint. A checkpoint whose extra tensors do not fit its base weights is refused, naming the
    tensor and both shapes.
    """
    hub_kwargs = {key: hf_kwargs[key] for key in HUB_KEYS if key in hf_kwargs}
    hf_kwargs.pop("revision", None)
    saved = _saved_over_lychee(str(repo_or_folder), revision, hub_kwargs)
    source: str | Path = repo_or_folder
    if saved is not None and saved[1].get("own"):
        return _load_own(saved[0], saved[1], memory_config, ratio, show_progress, hf_kwargs)
    if saved is not None:
        checkpoint, pointer = saved
        source, revision = pointer["repo"], pointer.get("revision")
        window = window or pointer.get("window")
        memory_config = memory_config or checkpoint.config
    folder, commit = checkpoint_files(source, revision, **hub_kwargs)
    settings, extras = read_checkpoint(folder)
    if window is not None:
        settings = replace(settings, window=window, stride=window)
        settings.check()
    config = memory_config or lychee_memory_config(settings, ratio)
    chosen = _lychee_ratio(config, ratio)
    model = AutoModelForCausalLM.from_pretrained(folder, **hf_kwargs).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder, **{k: v for k, v in hf_kwargs.items() if k in HUB_KEYS})
    name = str(source)
    compressor = LycheeCompressor(settings, extras, chosen, origin=(name, commit))
    compressor.check(model)
    gate_head = None if saved is None else saved[0].gate_head
    wrapper = _wrapped(model, tokenizer, config, name, show_progress, gate_head, compressor)
    if saved is not None:
        saved[0].check_base(wrapper.fingerprint)
        recorded = saved[1].get("compressor_digest")
        if recorded is not None and recorded != compressor.digest(model):
            raise CheckpointMismatchError(
                f"The compressmem checkpoint {saved[0].source} was made over LycheeMemory weights with digest "
                f"{recorded[:19]}, but {name} (revision {commit or 'local folder'}) now gives "
                f"{compressor.digest(model)[:19]}: load the revision it names."
            )
    return wrapper


def _load_own(
    checkpoint: Checkpoint,
    pointer: Mapping[str, Any],
    memory_config: MemoryConfig | None,
    ratio: int | None,
    show_progress: bool,
    hf_kwargs: dict[str, Any],
) -> CompressedMemoryModel:
    """A compressmem checkpoint holding its own LycheeMemory-design compressor (`OWN_FILE`) over the plain base
    model its pointer names: the base loaded with transformers, the compressor from the file."""
    from .embedded import resolve_model_source

    name = str(pointer["repo"])
    source = resolve_model_source(name)
    if pointer.get("revision") is not None:
        hf_kwargs = {**hf_kwargs, "revision": pointer["revision"]}
    model = AutoModelForCausalLM.from_pretrained(source, **hf_kwargs).eval()
    tokenizer_keys = (*HUB_KEYS, "revision", "trust_remote_code")
    tokenizer = AutoTokenizer.from_pretrained(source, **{k: v for k, v in hf_kwargs.items() if k in tokenizer_keys})
    config = memory_config or checkpoint.config
    chosen = _lychee_ratio(config, ratio)
    compressor = LycheeCompressor.load(model, checkpoint.directory / str(pointer["own"]), chosen)
    wrapper = _wrapped(model, tokenizer, config, name, show_progress, checkpoint.gate_head, compressor)
    checkpoint.check_base(wrapper.fingerprint)
    recorded, found = pointer.get("compressor_digest"), compressor.digest(model)
    if recorded is not None and recorded != found:
        raise CheckpointMismatchError(
            f"The compressmem checkpoint {checkpoint.source} records compressor digest {recorded[:19]}, but its "
            f"{pointer['own']} gives {found[:19]}: the file was changed after the checkpoint was saved."
        )
    return wrapper


def _lychee_ratio(config: MemoryConfig, ratio: int | None) -> int:
    """The ratio `config` compresses with, refused unless it is a LycheeMemory reading configuration."""
    compression = config.compression
    if compression is None or compression.method != "learned" or compression.ratio is None:
        raise ConfigError(
            "A LycheeMemory model compresses with its own trained compressor: use "
            "CompressionConfig('learned', ratio=R) with one of the checkpoint's ratios (see lychee_memory_config)."
        )
    if config.reading.mode != "compressed":
        raise ConfigError("A LycheeMemory model reads its compressed blocks: use ReadingConfig('compressed').")
    if compression.ratio != int(compression.ratio):
        raise ConfigError(f"A LycheeMemory ratio is a whole number of tokens, got {compression.ratio:g}.")
    if ratio is not None and ratio != compression.ratio:
        raise ConfigError(f"ratio={ratio} differs from the configuration's compression ratio {compression.ratio:g}.")
    return int(compression.ratio)


def _saved_over_lychee(
    name: str, revision: str | None, hub_kwargs: Mapping[str, Any]
) -> tuple[Checkpoint, dict[str, Any]] | None:
    """The compressmem checkpoint `name` holds and its pointer to a LycheeMemory checkpoint, when it is one."""
    saved = find_checkpoint(name, revision, **hub_kwargs)
    if saved is None:
        return None
    pointer = read_pointer(saved.directory)
    if pointer is None:
        raise CheckpointMismatchError(
            f"The compressmem checkpoint {saved.source} names no LycheeMemory checkpoint ({POINTER_FILE} is "
            "missing): load it with CompressedMemoryModel.from_pretrained."
        )
    return saved, pointer


def save_lychee(
    model: CompressedMemoryModel, directory: str | Path, evaluation: Mapping[str, float | str] | None = None
) -> None:
    """Write a compressmem checkpoint over `model`'s LycheeMemory checkpoint: `compressmem_config.json`, the gate
    head when there is one, a model card, and `lychee_base.json` naming the LycheeMemory repo (or folder) and
    commit whose weights it uses, never those weights."""
    _save(model, Path(directory), str(directory), evaluation)


def push_lychee(
    model: CompressedMemoryModel,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
    commit_message: str = "Upload compressmem checkpoint over LycheeMemory",
    evaluation: Mapping[str, float | str] | None = None,
) -> str:
    """`save_lychee` into the Hub model repo `repo_id` as one commit; returns the commit's URL."""
    return upload_checkpoint(
        lambda folder: _save(model, folder, repo_id, evaluation),
        repo_id,
        private=private,
        token=token,
        revision=revision,
        commit_message=commit_message,
    )


def _save(
    model: CompressedMemoryModel, directory: Path, location: str, evaluation: Mapping[str, float | str] | None
) -> None:
    compressor = model.compressor
    if not isinstance(compressor, LycheeCompressor):
        raise ValueError(
            "save_lychee saves a model whose compressor is of LycheeMemory's design (load_lychee, or "
            "LycheeCompressor.initialise); save other models with save_pretrained."
        )
    write_config(directory, model.fingerprint, model.memory_config)
    digest = compressor.digest(model.model)
    window = compressor.settings.window
    if compressor.origin is None:  # made here: its extra tensors travel in the checkpoint, beside a plain base
        compressor.save(directory / OWN_FILE)
        write_pointer(directory, (model.base_name, None), compressor.ratio, window, digest, own=OWN_FILE)
        parts = [f"LycheeMemory-design compressor ({OWN_FILE}) over the base model {model.base_name}"]
    else:
        write_pointer(directory, compressor.origin, compressor.ratio, window, digest)
        repo, commit = compressor.origin
        parts = [f"pointer to the LycheeMemory checkpoint {repo} at {commit or 'a local folder'} (base and compressor)"]
    if model.gate_head is not None:
        model.gate_head.save(directory / HEAD_FILE)
        parts.append("gate head")
    write_model_card(directory, location, model.fingerprint, model.memory_config, parts, evaluation)


def _wrapped(
    model: Any,
    tokenizer: Any,
    config: MemoryConfig,
    name: str,
    show_progress: bool,
    gate_head: Any,
    compressor: LycheeCompressor,
) -> CompressedMemoryModel:
    """The base model and its LycheeMemory-design compressor, wrapped with the configuration and gate head."""
    return CompressedMemoryModel(
        model,
        tokenizer,
        memory_config=config,
        base_name=name,
        show_progress=show_progress,
        gate_head=gate_head,
        compressor=compressor,
    )
