"""The trainer's resumable state without pickle: what a ``checkpoint-STEP`` folder holds besides its marker, written
and read by this module only, as safetensors (tensors) and JSON (everything else).

Accelerate's ``save_state`` pickles registered objects (``custom_checkpoint_0.pkl``) and RNG states
(``random_states_0.pkl``) and its ``load_state`` unpickles them, so a checkpoint folder from someone else would run
their code on ``--resume``. Here every file is data: the model weights, the optimizer's tensors and settings, the LR
schedule, the gradient scaler and each process's RNG states. A pickle-format file in a checkpoint (``*.pkl``,
``*.bin``, ``*.pt``, ...) is refused before anything is read, and a file that is missing, truncated or does not parse
stops the resume with a :class:`CheckpointError` that names it.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model

logger = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
OPTIMIZER_TENSORS = "optimizer.safetensors"
OPTIMIZER_FILE = "optimizer.json"
SCHEDULER_FILE = "scheduler.json"
SCALER_FILE = "scaler.json"
# Suffixes of the formats torch.save / pickle write: loading any of them can execute code.
PICKLE_SUFFIXES = (".pkl", ".pickle", ".bin", ".pt", ".pth", ".ckpt")


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from; the message names the file."""


def rng_files(rank: int) -> tuple[str, str]:
    """(tensors, JSON) file names of process `rank`'s RNG states."""
    return f"rng_state_{rank}.safetensors", f"rng_state_{rank}.json"


# ----------------------------------------------------------------------------------------------------------------------
# Reading helpers: every failure names its file
# ----------------------------------------------------------------------------------------------------------------------

def refuse_pickles(folder) -> None:
    """Raise CheckpointError if `folder` holds a pickle-format file (never opened: unpickling runs code)."""
    folder = Path(folder)
    found = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in PICKLE_SUFFIXES)
    if found:
        names = ", ".join(str(p.relative_to(folder)) for p in found)
        raise CheckpointError(
            f"{folder} holds pickle-format file(s) {names}: refusing to resume from it, because loading a pickle "
            "can run arbitrary code. Checkpoints of this trainer are safetensors + JSON only; this one was written "
            "by an older version or by another program")


def _require(path: Path) -> Path:
    if not path.is_file():
        raise CheckpointError(f"{path}: missing from the checkpoint")
    return path


def read_json(path) -> dict:
    """The JSON object in `path`; CheckpointError naming the file when it is missing, unreadable or not an object."""
    path = _require(Path(path))
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise CheckpointError(f"{path}: unreadable ({error})") from error
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def read_tensors(path) -> dict[str, torch.Tensor]:
    path = _require(Path(path))
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"{path}: unreadable safetensors file ({error})") from error


def _write_json(path: Path, value) -> None:
    path.write_text(json.dumps(value, indent=1) + "\n", encoding="utf-8")


# ----------------------------------------------------------------------------------------------------------------------
# Optimizer: tensors to safetensors, the rest (hyper-parameters, parameter indices) to JSON
# ----------------------------------------------------------------------------------------------------------------------

def _optimizer_to_files(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, scalars = {}, {}
    for index, values in state_dict["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def _optimizer_from_files(tensors: dict[str, torch.Tensor], meta: dict, where: Path) -> dict:
    try:
        state: dict[int, dict] = {}
        for name, tensor in tensors.items():
            index, key = name.split(".", 1)
            state.setdefault(int(index), {})[key] = tensor
        for index, values in meta["scalars"].items():
            state.setdefault(int(index), {}).update(values)
        groups = []
        for group in meta["param_groups"]:
            group = dict(group)
            if isinstance(group.get("betas"), list):
                group["betas"] = tuple(group["betas"])
            groups.append(group)
    except (KeyError, ValueError, TypeError, AttributeError) as error:
        raise CheckpointError(f"{where}: not an optimizer state written by this trainer ({error!r})") from error
    return {"state": state, "param_groups": groups}


# ----------------------------------------------------------------------------------------------------------------------
# RNG states
# ----------------------------------------------------------------------------------------------------------------------

def _rng_to_files() -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{index}"] = state
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    meta = {"python": [version, list(internal), gauss],
            "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)]}
    return tensors, meta


def _restore_rng(tensors: dict[str, torch.Tensor], meta: dict, tensors_path: Path, meta_path: Path) -> None:
    try:
        torch.set_rng_state(tensors["torch"])
        cuda = [tensors[f"cuda.{i}"] for i in range(len(tensors) - 1) if f"cuda.{i}" in tensors]
        if cuda and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
    except (KeyError, ValueError, TypeError, RuntimeError) as error:
        raise CheckpointError(f"{tensors_path}: not an RNG state written by this trainer ({error!r})") from error
    try:
        version, internal, gauss = meta["python"]
        random.setstate((version, tuple(internal), gauss))
        kind, keys, pos, has_gauss, cached = meta["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    except (KeyError, ValueError, TypeError, RuntimeError) as error:
        raise CheckpointError(f"{meta_path}: not an RNG state written by this trainer ({error!r})") from error


# ----------------------------------------------------------------------------------------------------------------------
# Save / load
# ----------------------------------------------------------------------------------------------------------------------

def save_training_state(folder, accelerator, model, optimizer, scheduler) -> None:
    """Every process writes its RNG states into `folder`; the main process also the model, optimizer, schedule and
    gradient scaler (identical on every process under DDP)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors_name, json_name = rng_files(accelerator.process_index)
    rng_tensors, rng_meta = _rng_to_files()
    save_file(rng_tensors, str(folder / tensors_name))
    _write_json(folder / json_name, rng_meta)
    if not accelerator.is_main_process:
        return
    save_model(accelerator.unwrap_model(model), str(folder / MODEL_FILE))
    optimizer_tensors, optimizer_meta = _optimizer_to_files(optimizer.state_dict())
    save_file(optimizer_tensors, str(folder / OPTIMIZER_TENSORS))
    _write_json(folder / OPTIMIZER_FILE, optimizer_meta)
    _write_json(folder / SCHEDULER_FILE, scheduler.state_dict())
    if getattr(accelerator, "scaler", None) is not None:
        _write_json(folder / SCALER_FILE, accelerator.scaler.state_dict())


def load_training_state(folder, accelerator, model, optimizer, scheduler) -> None:
    """Restore what `save_training_state` wrote; refuses pickles first and names any file that fails."""
    folder = Path(folder)
    refuse_pickles(folder)
    model_path = _require(folder / MODEL_FILE)
    try:
        missing, unexpected = load_model(accelerator.unwrap_model(model), str(model_path), strict=False)
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"{model_path}: unreadable or does not fit this model ({error})") from error
    if missing or unexpected:
        raise CheckpointError(f"{model_path}: does not fit this model (missing {sorted(missing)[:5]}, unexpected "
                              f"{sorted(unexpected)[:5]})")
    optimizer_state = _optimizer_from_files(read_tensors(folder / OPTIMIZER_TENSORS),
                                            read_json(folder / OPTIMIZER_FILE), folder / OPTIMIZER_FILE)
    try:
        optimizer.load_state_dict(optimizer_state)
    except (KeyError, ValueError, TypeError, RuntimeError) as error:
        raise CheckpointError(f"{folder / OPTIMIZER_FILE}: does not fit this optimizer ({error})") from error
    try:
        scheduler.load_state_dict(read_json(folder / SCHEDULER_FILE))
    except (KeyError, ValueError, TypeError) as error:
        raise CheckpointError(f"{folder / SCHEDULER_FILE}: not an LR schedule state ({error!r})") from error
    if getattr(accelerator, "scaler", None) is not None:
        try:
            accelerator.scaler.load_state_dict(read_json(folder / SCALER_FILE))
        except (KeyError, ValueError, TypeError, RuntimeError) as error:
            raise CheckpointError(f"{folder / SCALER_FILE}: not a gradient scaler state ({error!r})") from error
    tensors_name, json_name = rng_files(accelerator.process_index)
    _restore_rng(read_tensors(folder / tensors_name), read_json(folder / json_name), folder / tensors_name,
                 folder / json_name)


__all__ = [
    "CheckpointError", "MODEL_FILE", "OPTIMIZER_FILE", "OPTIMIZER_TENSORS", "PICKLE_SUFFIXES", "SCALER_FILE",
    "SCHEDULER_FILE", "load_training_state", "read_json", "read_tensors", "refuse_pickles", "rng_files",
    "save_training_state",
]
