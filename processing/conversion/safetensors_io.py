"""Checkpoint-folder I/O for conversions: strict and lazy.

* :class:`SafetensorsCheckpoint` reads a single ``model.safetensors`` or an index + shards lazily (headers first,
  then one tensor at a time), so an import holds one copy of the weights plus the tensor in flight;
* :func:`check_key_coverage` makes a load strict: every missing, unexpected, mis-shaped or non-float key is reported,
  never skipped; :func:`stream_into` fills a model whose parameters start on the meta device;
* :func:`atomic_output_dir` writes an output folder into a temporary folder next to the target and renames it into
  place only when complete; JSON configs, tokenizers and generation configs are read with one-line errors.

Every user-facing failure is a :class:`CheckpointError` with a one-line message.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn
from transformers import AutoTokenizer, GenerationConfig

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_FLOAT_DTYPES = {"F64", "F32", "F16", "BF16"}


class CheckpointError(ValueError):
    """A checkpoint that cannot be imported/exported as asked; the message is one line meant for the user."""


def format_keys(keys, limit: int = 8) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f" ... (+{len(keys) - limit} more)" if len(keys) > limit else "")


def read_json(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def parse_dtype(name: str | torch.dtype | None) -> torch.dtype | None:
    """'float32' | 'bfloat16' | 'float16' | torch.dtype | None -> torch.dtype | None."""
    if name is None or isinstance(name, torch.dtype):
        return name
    if name not in DTYPES:
        raise CheckpointError(f"unsupported dtype {name!r}; choose one of {list(DTYPES)}")
    return DTYPES[name]


class SafetensorsCheckpoint:
    """Lazy, validated view of the safetensors weights of one folder (`model.safetensors` or index + shards).

    Construction reads only the headers: it checks that every shard named by the index exists and is a valid
    safetensors file (a truncated file fails here, before any tensor is read) and records each key's file, shape
    and dtype. `get` opens the key's file, reads that one tensor and closes it again, so no file stays mapped.
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise CheckpointError(f"{self.directory} is not a directory")
        single, index = self.directory / SINGLE_FILE, self.directory / INDEX_FILE
        self._file_of: dict[str, Path] = {}
        self._shape: dict[str, tuple[int, ...]] = {}
        self._dtype: dict[str, str] = {}
        if single.is_file():
            self.files = [single]
            self._read_header(single, expected=None)
        elif index.is_file():
            weight_map = read_json(index).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise CheckpointError(f"{index} has no (or an empty) 'weight_map'")
            by_file: dict[str, list[str]] = {}
            for key, file_name in weight_map.items():
                by_file.setdefault(str(file_name), []).append(key)
            missing = [name for name in by_file if not (self.directory / name).is_file()]
            if missing:
                raise CheckpointError(f"{index} names shard file(s) that do not exist: {format_keys(missing)}")
            self.files = [self.directory / name for name in sorted(by_file)]
            for name in sorted(by_file):
                self._read_header(self.directory / name, expected=by_file[name])
        else:
            found = [p.name for p in self.directory.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt")]
            hint = f" (found {', '.join(sorted(found))}: only safetensors weights are supported)" if found else ""
            raise CheckpointError(f"{self.directory} has no {SINGLE_FILE} or {INDEX_FILE}{hint}")

    def _read_header(self, path: Path, expected: list[str] | None):
        try:
            with safe_open(str(path), framework="pt") as handle:
                keys = list(handle.keys())
                present = set(keys)
                for key in keys if expected is None else [k for k in expected if k in present]:
                    tensor_slice = handle.get_slice(key)
                    self._shape[key] = tuple(tensor_slice.get_shape())
                    self._dtype[key] = tensor_slice.get_dtype()
        except SafetensorError as error:
            raise CheckpointError(f"{path} is not a valid safetensors file (truncated or corrupt?): {error}") from error
        if expected is not None:
            absent = set(expected) - set(keys)
            if absent:
                raise CheckpointError(
                    f"{path.name} lacks tensors that {INDEX_FILE} assigns to it: {format_keys(absent)}"
                )
            keys = expected
        for key in keys:
            if key in self._file_of:
                raise CheckpointError(f"tensor {key} appears in both {self._file_of[key].name} and {path.name}")
            self._file_of[key] = path

    def keys(self) -> list[str]:
        return list(self._file_of)

    def shape(self, key: str) -> tuple[int, ...]:
        return self._shape[key]

    def dtype(self, key: str) -> str:
        """The safetensors dtype string (F32, BF16, ...)."""
        return self._dtype[key]

    def get(self, key: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The tensor `key`, converted to `dtype` if given."""
        path = self._file_of[key]
        try:
            with safe_open(str(path), framework="pt") as handle:
                tensor = handle.get_tensor(key)
        except SafetensorError as error:
            raise CheckpointError(f"cannot read tensor {key} from {path}: {error}") from error
        return tensor if dtype is None else tensor.to(dtype)


def expected_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Persistent state of `model` (tied aliases included) as key -> shape; works on meta tensors."""
    return {key: tuple(value.shape) for key, value in model.state_dict(keep_vars=True).items()}


def check_key_coverage(
    mapping: dict[str, tuple[SafetensorsCheckpoint, str]],
    expected: dict[str, tuple[int, ...]],
    unexpected_sources: list[str] = (),
    what: str = "checkpoint",
):
    """Raise one CheckpointError naming every missing, unexpected and mis-shaped key of a strict load.

    `mapping` is target key -> (checkpoint, source key); `expected` is target key -> shape; `unexpected_sources`
    lists source keys that map to nothing.
    """
    problems = []
    missing = set(expected) - set(mapping)
    unexpected = [source for target, (_, source) in mapping.items() if target not in expected]
    unexpected += list(unexpected_sources)
    mis_shaped = [
        f"{source} {list(ckpt.shape(source))} vs model {target} {list(expected[target])}"
        for target, (ckpt, source) in mapping.items()
        if target in expected and ckpt.shape(source) != expected[target]
    ]
    not_float = [source for _, (ckpt, source) in mapping.items() if ckpt.dtype(source) not in _FLOAT_DTYPES]
    if missing:
        problems.append(f"missing keys: {format_keys(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {format_keys(unexpected)}")
    if mis_shaped:
        problems.append(f"shape mismatches: {format_keys(mis_shaped, limit=4)}")
    if not_float:
        problems.append(f"non-floating tensors: {format_keys(not_float)}")
    if problems:
        raise CheckpointError(f"{what} does not match the model config: " + "; ".join(problems))


def _assign_tensor(model: nn.Module, key: str, tensor: torch.Tensor):
    """Replace the (meta) parameter or buffer `key` of `model` by `tensor`, keeping requires_grad."""
    module_path, _, name = key.rpartition(".")
    module = model.get_submodule(module_path)
    if name in module._parameters:
        old = module._parameters[name]
        module._parameters[name] = nn.Parameter(tensor, requires_grad=old.requires_grad)
    elif name in module._buffers:
        module._buffers[name] = tensor
    else:
        raise CheckpointError(f"the model has no parameter or buffer {key}")


def stream_into(model: nn.Module, mapping: dict[str, tuple[SafetensorsCheckpoint, str]],
                dtype: torch.dtype | None = None):
    """Read each mapped tensor (one at a time, converted to `dtype`) into `model`."""
    for target, (ckpt, source) in mapping.items():
        _assign_tensor(model, target, ckpt.get(source, dtype))


def check_materialised(model: nn.Module):
    meta = [name for name, tensor in [*model.named_parameters(), *model.named_buffers()] if tensor.is_meta]
    if meta:  # cannot happen after a successful strict check; guards against silent partial loads
        raise CheckpointError(f"tensors left uninitialised after loading: {format_keys(meta)}")


def check_output_dir(output_dir: str | os.PathLike, overwrite: bool = False,
                     inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """Refuse an output path that is a file, a non-empty folder unless `overwrite`, or one that is (or contains) an
    input folder or file: replacing it would delete the inputs. Returns it absolute."""
    output_dir = Path(output_dir).absolute()
    resolved = output_dir.resolve()
    for source in inputs:
        source_path = Path(source).absolute()
        if resolved == source_path.resolve() or resolved in source_path.resolve().parents:
            raise CheckpointError(
                f"the output folder {output_dir} is (or contains) the input {source_path}: writing there would "
                "delete the input; choose another output folder"
            )
    if output_dir.exists() and not output_dir.is_dir():
        raise CheckpointError(f"{output_dir} exists and is not a directory")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise CheckpointError(f"{output_dir} already exists and is not empty (pass --overwrite to replace it)")
    return output_dir


@contextmanager
def atomic_output_dir(output_dir: str | os.PathLike, overwrite: bool = False,
                      inputs: Iterable[str | os.PathLike] = ()) -> Iterator[Path]:
    """Yield a fresh temporary folder next to `output_dir`; rename it to `output_dir` only if the block succeeds.

    An existing non-empty `output_dir` is refused unless `overwrite`; it is replaced only after the new folder is
    complete. On any error the temporary folder is removed and `output_dir` is left as it was. An `output_dir` that
    is or contains one of `inputs` is refused (see `check_output_dir`).
    """
    output_dir = check_output_dir(output_dir, overwrite, inputs)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    # Same parent folder, hence same filesystem: the final os.replace is an atomic rename.
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.tmp-", dir=output_dir.parent))
    try:
        yield tmp_dir
        if output_dir.exists():
            # Move the old folder aside first so that a failure between the two renames never loses both.
            old_dir = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.old-", dir=output_dir.parent))
            os.replace(output_dir, old_dir / "previous")
            os.replace(tmp_dir, output_dir)
            shutil.rmtree(old_dir, ignore_errors=True)
        else:
            os.replace(tmp_dir, output_dir)
    finally:
        if tmp_dir.exists():
            shutil.rmtree(tmp_dir, ignore_errors=True)


def load_generation_config(model, directory: Path):
    """Carry `generation_config.json` (e.g. Qwen3's eos list and sampling defaults) over, if there is one."""
    if (directory / "generation_config.json").is_file():
        try:
            model.generation_config = GenerationConfig.from_pretrained(str(directory))
        except Exception as error:
            raise CheckpointError(f"invalid {directory / 'generation_config.json'}: {error}") from error


# Files from which a tokenizer with a real vocabulary can be built (fast, BPE, SentencePiece, WordPiece layouts).
TOKENIZER_VOCAB_FILES = ("tokenizer.json", "vocab.json", "tokenizer.model", "spiece.model", "vocab.txt")
_TOKENIZER_PROBE = "Hello world"


def load_tokenizer(directory: Path, vocab_size: int | None = None):
    """The tokenizer saved in `directory`, refused when the folder has no vocabulary file (transformers would build
    an empty tokenizer from config.json alone, which encodes any text to no tokens), when it encodes a probe text to
    nothing, or when it has more tokens than the decoder's `vocab_size` embedding rows."""
    directory = Path(directory)
    if not any((directory / name).is_file() for name in TOKENIZER_VOCAB_FILES):
        raise CheckpointError(
            f"{directory} has no tokenizer (none of {', '.join(TOKENIZER_VOCAB_FILES)}); copy the tokenizer files "
            "of the checkpoint into it"
        )
    try:
        # trust_remote_code=False: never prompt, and never run code from the folder.
        tokenizer = AutoTokenizer.from_pretrained(str(directory), trust_remote_code=False)
    except Exception as error:
        raise CheckpointError(f"cannot load a tokenizer from {directory}: {error}") from error
    if not tokenizer(_TOKENIZER_PROBE, add_special_tokens=False)["input_ids"]:
        raise CheckpointError(f"the tokenizer in {directory} encodes {_TOKENIZER_PROBE!r} to no tokens: its "
                              "vocabulary is empty or broken")
    if vocab_size is not None and len(tokenizer) > vocab_size:
        raise CheckpointError(f"the tokenizer in {directory} has {len(tokenizer)} tokens but the decoder has only "
                              f"{vocab_size} embedding rows: tokenizer and weights do not belong together")
    return tokenizer


__all__ = [
    "CheckpointError", "DTYPES", "INDEX_FILE", "SINGLE_FILE", "SafetensorsCheckpoint", "atomic_output_dir",
    "check_key_coverage", "check_materialised", "check_output_dir", "expected_shapes", "format_keys",
    "TOKENIZER_VOCAB_FILES", "load_generation_config", "load_tokenizer", "parse_dtype", "read_json", "stream_into",
]
