"""Checkpoints: the folder layout, reading and writing it, and moving it to and from the Hugging Face Hub.

A checkpoint holds only what compressmem adds to a base model: `compressmem_config.json` (format
version, the base model's fingerprint, the `MemoryConfig`; format 1, release 0.1's flat settings, is
migrated on read), and the trained parts it has
(`gate_head.safetensors`, `compressor/`, `reasoner/`), plus a generated model card. A Hub checkpoint
is fetched with `snapshot_download`, so it is cached like any Hub model and loads offline from the cache.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import ConfigError, MemoryConfig
from .errors import CheckpointMismatchError
from .gate import GateHead
from .gate.head import HEAD_FILE
from .hf.fingerprint import BaseFingerprint

CHECKPOINT_CONFIG = "compressmem_config.json"
CHECKPOINT_FORMAT_VERSION = 2
COMPRESSOR_FOLDER = "compressor"
REASONER_FOLDER = "reasoner"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass
class Checkpoint:
    """A checkpoint folder's contents, read once: what it was made for and its training-free parts."""

    directory: Path
    fingerprint: BaseFingerprint
    config: MemoryConfig
    gate_head: GateHead | None
    repo_id: str | None = None

    @property
    def source(self) -> str:
        """How errors name the checkpoint: its Hub repo id, else its folder."""
        return f"'{self.repo_id}'" if self.repo_id else str(self.directory)

    @property
    def compressor_folder(self) -> Path | None:
        folder = self.directory / COMPRESSOR_FOLDER
        return folder if folder.is_dir() else None

    @property
    def reasoner_folder(self) -> Path | None:
        folder = self.directory / REASONER_FOLDER
        return folder if folder.is_dir() else None

    def check_base(self, fingerprint: BaseFingerprint) -> None:
        """Refuse a base model other than the one the checkpoint was made for, naming both."""
        if self.fingerprint.digest != fingerprint.digest:
            raise CheckpointMismatchError(
                f"The compressmem checkpoint {self.source} was made for base model {self.fingerprint.describe()}, "
                f"but the base model loaded is {fingerprint.describe()}. Load the base model it was made for."
            )


def read_checkpoint(directory: Path, repo_id: str | None = None) -> Checkpoint:
    """Read a checkpoint folder (downloaded from the Hub repo `repo_id`, when given)."""
    source = f"'{repo_id}'" if repo_id else None
    path = directory / CHECKPOINT_CONFIG
    if not path.is_file():
        raise FileNotFoundError(
            f"{source or directory} is not a compressmem checkpoint: {CHECKPOINT_CONFIG} is missing."
        )
    payload = _payload(path, source or str(path))
    head = GateHead.load(directory / HEAD_FILE) if (directory / HEAD_FILE).is_file() else None
    try:
        config = (
            MemoryConfig.from_legacy(payload["memory_config"])
            if payload["format_version"] == 1
            else MemoryConfig.from_dict(payload["config"])
        )
    except (KeyError, TypeError, ConfigError) as error:
        raise CheckpointMismatchError(f"{source or path} holds no valid compressmem configuration: {error}") from None
    return Checkpoint(directory, BaseFingerprint.from_dict(payload["base_model"]), config, head, repo_id)


def _payload(path: Path, source: str) -> dict[str, Any]:
    """`compressmem_config.json`, refused with the file named unless it is a JSON object with a supported
    `format_version` and a `base_model` fingerprint."""
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise CheckpointMismatchError(f"{path} is not valid JSON ({error}); the checkpoint is damaged.") from None
    if not isinstance(payload, dict):
        raise CheckpointMismatchError(
            f"{path} must hold a JSON object, got {type(payload).__name__}; the checkpoint is damaged."
        )
    version = payload.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise CheckpointMismatchError(
            f"{path}: format_version must be a positive integer, got {version!r}; the checkpoint is damaged."
        )
    if version > CHECKPOINT_FORMAT_VERSION:
        raise CheckpointMismatchError(
            f"{source} has checkpoint format {version}, but this compressmem reads up to format "
            f"{CHECKPOINT_FORMAT_VERSION}; upgrade compressmem (pip install -U compressmem) to read it."
        )
    base = payload.get("base_model")
    if not isinstance(base, dict) or not all(isinstance(base.get(k), str) for k in ("name", "digest")):
        raise CheckpointMismatchError(
            f"{path}: base_model must be an object with the base model's name and digest, "
            f"got {base!r}; the checkpoint is damaged."
        )
    return payload


def write_config(directory: Path, fingerprint: BaseFingerprint, config: MemoryConfig) -> None:
    """Write `compressmem_config.json`: the format version, the base model's fingerprint and the settings."""
    directory.mkdir(parents=True, exist_ok=True)
    payload = {
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "base_model": fingerprint.to_dict(),
        "config": config.to_dict(),
    }
    (directory / CHECKPOINT_CONFIG).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")


def is_hub_id(name: str) -> bool:
    """Whether `name` has the shape of a Hub repo id (`name` or `org/name`) and is no local folder."""
    return bool(_REPO_ID.match(name)) and not Path(name).exists()


def fetch_checkpoint(name: str | Path, revision: str | None = None, **hub_kwargs: Any) -> Checkpoint:
    """A checkpoint from a local folder or, for a Hub id, downloaded (or taken from the cache).

    `hub_kwargs` are `snapshot_download`'s (`token`, `cache_dir`, `local_files_only`).
    """
    if Path(name).is_dir():
        return read_checkpoint(Path(name))
    if not is_hub_id(str(name)):
        raise FileNotFoundError(
            f"No compressmem checkpoint at {name}: it is neither a folder nor a Hub repo id (org/name)."
        )
    return read_checkpoint(_download(str(name), revision, hub_kwargs), str(name))


def find_checkpoint(name: str, revision: str | None = None, **hub_kwargs: Any) -> Checkpoint | None:
    """The checkpoint `name` holds, or None when `name` is a base model (folder or Hub repo) instead.

    A Hub repo is a checkpoint when it has `compressmem_config.json`; when the Hub cannot say (offline
    and not cached, unreachable, no such repo), `name` is taken for a base model and transformers
    reports whatever is wrong with it.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

    if Path(name).is_dir():
        return read_checkpoint(Path(name)) if (Path(name) / CHECKPOINT_CONFIG).is_file() else None
    if not is_hub_id(name):
        return None
    try:
        hf_hub_download(name, CHECKPOINT_CONFIG, revision=revision, **hub_kwargs)
    except (EntryNotFoundError, LocalEntryNotFoundError, HfHubHTTPError, OSError):
        return None
    return fetch_checkpoint(name, revision, **hub_kwargs)


def _download(repo_id: str, revision: str | None, hub_kwargs: dict[str, Any]) -> Path:
    """`snapshot_download` with errors that say what to do about them."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        return Path(snapshot_download(repo_id, revision=revision, **hub_kwargs))
    except RepositoryNotFoundError as error:
        raise FileNotFoundError(
            f"The compressmem checkpoint '{repo_id}' was not found on the Hub, or it is private or gated and no token "
            "with access to it was given: check the id, pass token=... or run `hf auth login`."
        ) from error
    except RevisionNotFoundError as error:
        raise FileNotFoundError(
            f"The compressmem checkpoint '{repo_id}' has no revision {revision!r}: name an "
            "existing branch, tag or commit."
        ) from error
    except LocalEntryNotFoundError as error:
        raise FileNotFoundError(
            f"The compressmem checkpoint '{repo_id}' (revision {revision or 'main'}) is not in the local Hub cache and "
            "the Hub cannot be reached (offline mode, or no connection). Download it once while online."
        ) from error


def upload_checkpoint(
    save: Callable[[Path], None],
    repo_id: str,
    *,
    private: bool | None,
    token: str | None,
    revision: str | None,
    commit_message: str,
) -> str:
    """Create the model repo (and branch `revision`) when missing, write the checkpoint with `save` into
    a temporary folder and upload it as one commit; returns the commit's URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    if revision is not None:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        save(Path(folder))
        commit = api.upload_folder(
            repo_id=repo_id, folder_path=folder, revision=revision, commit_message=commit_message
        )
    return str(commit.commit_url)
