"""Atomic, resumable run checkpoints of the MiniMind-V trainer: ``OUTPUT/checkpoint-STEP`` folders that count only
once they carry a completion marker, written into a temporary folder, fsynced and renamed into place.

A crash at any point leaves either a ``.tmp-`` folder or a folder without the marker, which :func:`list_checkpoints`
ignores, never a checkpoint that looks complete but is not.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path

from .output import fsync_path
from .resume_state import CheckpointError, load_training_state, read_json, refuse_pickles

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
COMPLETE_MARKER = "checkpoint_complete.json"
TRAINER_STATE = "trainer_state.json"
_TMP_PREFIX = ".tmp-" + CHECKPOINT_PREFIX
_CHECKPOINT_RE = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")


def _fsync_tree(root: Path) -> None:
    for dirpath, _, filenames in os.walk(root):
        for filename in filenames:
            fsync_path(Path(dirpath) / filename)
        fsync_path(Path(dirpath))


def is_complete_checkpoint(path: Path) -> bool:
    return path.is_dir() and _CHECKPOINT_RE.match(path.name) is not None and (path / COMPLETE_MARKER).is_file()


def list_checkpoints(output_dir) -> list[Path]:
    """Complete checkpoints under `output_dir`, oldest step first; anything without the marker is ignored."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [p for p in output_dir.iterdir() if is_complete_checkpoint(p)]
    return sorted(found, key=lambda p: int(_CHECKPOINT_RE.match(p.name).group(1)))


def latest_checkpoint(output_dir) -> Path | None:
    checkpoints = list_checkpoints(output_dir)
    return checkpoints[-1] if checkpoints else None


def checkpoint_tmp_dir(output_dir, step: int) -> Path:
    """Where checkpoint `step` is written before it is renamed into place (same name on every process)."""
    return Path(output_dir) / f"{_TMP_PREFIX}{step}"


def finalize_checkpoint(output_dir, step: int, trainer_state: dict) -> Path:
    """Main process, after every process wrote into `checkpoint_tmp_dir`: add the trainer state, fsync everything,
    write the completion marker, and rename the folder into place.

    A crash at any point leaves either a `.tmp-` folder or a folder without the marker, which `list_checkpoints`
    ignores, never a checkpoint that looks complete but is not.
    """
    tmp = checkpoint_tmp_dir(output_dir, step)
    final = Path(output_dir) / f"{CHECKPOINT_PREFIX}{step}"
    with open(tmp / TRAINER_STATE, "w", encoding="utf-8") as f:
        json.dump(trainer_state, f, indent=2)
    _fsync_tree(tmp)  # the data must be durable before the marker claims it is
    with open(tmp / COMPLETE_MARKER, "w", encoding="utf-8") as f:
        # Checksums let a resume tell a damaged file (a flipped byte in a tensor loads silently otherwise).
        json.dump({"step": step, "sha256": _checksums(tmp)}, f)
        f.flush()
        os.fsync(f.fileno())
    fsync_path(tmp)
    if final.exists():  # re-saving a step after resuming from an older checkpoint: move the old one out first
        stale = final.with_name(f"{_TMP_PREFIX}stale-{step}")
        shutil.rmtree(stale, ignore_errors=True)
        os.replace(final, stale)
        shutil.rmtree(stale, ignore_errors=True)
    os.replace(tmp, final)
    fsync_path(Path(output_dir))
    return final


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _checksums(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): _sha256(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != COMPLETE_MARKER}


def verify_checkpoint(checkpoint) -> None:
    """Raise CheckpointError naming the first file of `checkpoint` that is missing or differs from what was saved
    (checkpoints written before checksums existed are taken as they are)."""
    checkpoint = Path(checkpoint)
    sums = read_json(checkpoint / COMPLETE_MARKER).get("sha256")
    if sums is None:
        return
    if not isinstance(sums, dict):
        raise CheckpointError(f"{checkpoint / COMPLETE_MARKER}: 'sha256' must be an object")
    for name, expected in sums.items():
        path = checkpoint / name
        if not path.is_file():
            raise CheckpointError(f"{path}: missing from the checkpoint")
        if _sha256(path) != expected:
            raise CheckpointError(f"{path}: damaged (its checksum differs from the one saved with the checkpoint)")


def remove_stale_tmp_dirs(output_dir) -> None:
    """Delete half-written checkpoint folders left by a crash (main process, before training)."""
    output_dir = Path(output_dir)
    if output_dir.is_dir():
        for path in output_dir.iterdir():
            if path.name.startswith(_TMP_PREFIX) and path.is_dir():
                logger.info("removing incomplete checkpoint %s", path)
                shutil.rmtree(path, ignore_errors=True)


def prune_checkpoints(output_dir, keep: int | None) -> None:
    if keep is None or keep <= 0:
        return
    for path in list_checkpoints(output_dir)[:-keep]:
        # Un-mark first: if deletion is interrupted, the remains are not mistaken for a checkpoint.
        (path / COMPLETE_MARKER).unlink(missing_ok=True)
        shutil.rmtree(path, ignore_errors=True)


def load_trainer_state(checkpoint: Path) -> dict:
    """The trainer state of `checkpoint`; CheckpointError naming the file when it is missing, does not parse or lacks
    the "state" / "run" objects."""
    path = Path(checkpoint) / TRAINER_STATE
    saved = read_json(path)
    for key in ("state", "run"):
        if not isinstance(saved.get(key), dict):
            raise CheckpointError(f"{path}: no {key!r} object (not a trainer state written by this trainer)")
    return saved


def load_checkpoint(checkpoint, accelerator, model, optimizer, scheduler) -> dict:
    """Resume from `checkpoint`: refuse pickles (before anything is read), verify the checksums, restore the model,
    optimizer, schedule and RNG states, and return the trainer state. Raises CheckpointError naming a bad file."""
    checkpoint = Path(checkpoint)
    refuse_pickles(checkpoint)
    verify_checkpoint(checkpoint)
    saved = load_trainer_state(checkpoint)
    load_training_state(checkpoint, accelerator, model, optimizer, scheduler)
    return saved


__all__ = [
    "CHECKPOINT_PREFIX", "COMPLETE_MARKER", "TRAINER_STATE", "checkpoint_tmp_dir", "finalize_checkpoint",
    "is_complete_checkpoint", "latest_checkpoint", "list_checkpoints", "load_checkpoint", "load_trainer_state",
    "prune_checkpoints", "remove_stale_tmp_dirs", "verify_checkpoint",
]
