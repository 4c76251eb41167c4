"""A GGUF file (llama.cpp's format) -> a plain Hugging Face safetensors folder that ``scripts/import_qwen3.py``
imports (``scripts/gguf_to_safetensors.py``), and a cache of such conversions keyed by the GGUF's content.

transformers reads GGUF itself (`from_pretrained(folder, gguf_file=...)`, needs the `gguf` package), dequantizing to
float32, but refuses to `save_pretrained` a GGUF-loaded model; so the state dict is written with safetensors here
(the head dropped when tied to the embeddings), with config.json (its GGUF quantization entry removed),
generation_config.json and the tokenizer. Dequantized weights are what llama.cpp computes with, not the original
float checkpoint: a Q4_1 file gives a float32 model with Q4_1's rounding.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from .safetensors_io import CheckpointError, SINGLE_FILE, atomic_output_dir, check_output_dir, read_json

logger = logging.getLogger(__name__)

SOURCE_RECORD = "gguf_source.json"  # which GGUF a folder was converted from (the cache's key)
CACHE_ENV = "MINIMIND_V_CACHE"
# config.json entries that describe the GGUF load, not the model.
_LOAD_ONLY_KEYS = ("quantization_config", "_name_or_path", "_model_name_or_path", "_commit_hash")


def file_digest(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _require_gguf_package():
    try:
        import gguf  # noqa: F401 - transformers' GGUF reader needs it
    except ImportError as error:
        raise CheckpointError("reading GGUF files needs the `gguf` package: pip install gguf") from error


def load_gguf(gguf_path: str | os.PathLike):
    """(model in float32 eval mode, tokenizer) as transformers loads them from `gguf_path`, offline."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise CheckpointError(f"{gguf_path} does not exist")
    _require_gguf_package()
    folder, name = str(gguf_path.parent), gguf_path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32,
                                                     local_files_only=True)
    except Exception as error:  # transformers raises several types for unreadable or unsupported GGUF files
        raise CheckpointError(f"cannot load {gguf_path} with transformers: {error}") from error
    return model.eval(), tokenizer


def gguf_state_dict(model) -> dict[str, torch.Tensor]:
    """The model's tensors to save: contiguous copies, without the head when it is tied to the embeddings."""
    tensors = {key: value.detach().contiguous() for key, value in model.state_dict().items()}
    head, embeddings = model.get_output_embeddings(), model.get_input_embeddings()
    if head is not None and head.weight.data_ptr() == embeddings.weight.data_ptr():
        tensors = {key: value for key, value in tensors.items() if key != "lm_head.weight"}
    return tensors


def gguf_to_safetensors(gguf_path: str | os.PathLike, output_dir: str | os.PathLike,
                        overwrite: bool = False) -> Path:
    """Write `gguf_path` as a Hugging Face folder (model.safetensors, config.json, generation_config.json,
    tokenizer, gguf_source.json) into `output_dir`, atomically. Returns the output path."""
    gguf_path = Path(gguf_path).absolute()
    check_output_dir(output_dir, overwrite, inputs=[gguf_path])
    model, tokenizer = load_gguf(gguf_path)
    with atomic_output_dir(output_dir, overwrite, inputs=[gguf_path]) as tmp_dir:
        save_file(gguf_state_dict(model), str(tmp_dir / SINGLE_FILE), metadata={"format": "pt"})
        config = {key: value for key, value in model.config.to_dict().items() if key not in _LOAD_ONLY_KEYS}
        config["architectures"] = [type(model).__name__]
        config["dtype"] = "float32"
        (tmp_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        model.generation_config.save_pretrained(str(tmp_dir))
        tokenizer.save_pretrained(str(tmp_dir))
        record = {"gguf_file": gguf_path.name, "sha256": file_digest(gguf_path), "size": gguf_path.stat().st_size}
        (tmp_dir / SOURCE_RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    logger.info("wrote %s as safetensors into %s", gguf_path.name, output_dir)
    return Path(output_dir)


def default_cache_dir() -> Path:
    """$MINIMIND_V_CACHE, else $XDG_CACHE_HOME/minimind-v, else ~/.cache/minimind-v."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "minimind-v"


def cached_gguf_folder(gguf_path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """The safetensors folder of `gguf_path` under `cache_dir` (default `default_cache_dir()`), converted on the
    first call and reused while the GGUF's sha256 matches the one recorded in the folder."""
    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise CheckpointError(f"{gguf_path} does not exist")
    digest = file_digest(gguf_path)
    folder = Path(cache_dir or default_cache_dir()) / f"{gguf_path.stem}-{digest[:12]}"
    record = folder / SOURCE_RECORD
    if record.is_file() and (folder / SINGLE_FILE).is_file():
        try:
            if read_json(record).get("sha256") == digest:
                return folder
        except CheckpointError:
            pass  # an unreadable record: convert again (the folder is the cache's own)
    logger.info("converting %s into the cache at %s (about a minute)", gguf_path.name, folder)
    return gguf_to_safetensors(gguf_path, folder, overwrite=True)


__all__ = [
    "CACHE_ENV", "SOURCE_RECORD", "cached_gguf_folder", "default_cache_dir", "file_digest", "gguf_state_dict",
    "gguf_to_safetensors", "load_gguf",
]
