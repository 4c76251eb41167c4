"""The trainer's output folder: what a fresh run may write into, how earlier logs are kept, and the atomic final save.

* A fresh run (no ``--resume``) refuses a folder that already holds a model or the logs of a run, unless
  ``--overwrite``; then the earlier ``train_log.jsonl`` / ``eval_log.jsonl`` are kept as
  ``train_log.previous-N.jsonl`` (never deleted) and the model files are replaced.
* The final model + processor + metrics are written into ``OUTPUT/.tmp-final``, fsynced, then moved into place
  file by file (weights first, ``config.json`` last), so a crash never leaves a folder whose ``config.json`` describes
  weights that were not written; the model card is written fresh with them, never left over from an earlier model.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)

MODEL_FILES = ("config.json", "model.safetensors", "model.safetensors.index.json")
LOG_FILES = ("train_log.jsonl", "eval_log.jsonl")
RUN_FILES = LOG_FILES + ("train_metrics.json", "train_config.json")
FINAL_TMP = ".tmp-final"


def _what_is_there(output: Path) -> str | None:
    found = [name for name in MODEL_FILES + RUN_FILES if (output / name).exists()]
    if not found:
        return None
    what = "files of an earlier run"
    config = output / "config.json"
    if config.is_file():
        try:
            model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
        except (OSError, ValueError, AttributeError):
            model_type = None
        what = f"a model (model_type {model_type!r})" if model_type else "a model"
    return f"{what}: {', '.join(found)}"


def check_output(output, fresh_run: bool, overwrite: bool) -> None:
    """Raise ValueError when a run may not write into `output` (a file; or, for a fresh run without `overwrite`,
    a folder that holds a model or an earlier run's logs)."""
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise ValueError(f"--output {output} is a file, not a folder")
    if not fresh_run or overwrite or not output.is_dir():
        return
    there = _what_is_there(output)
    if there:
        raise ValueError(f"--output {output} already holds {there}. Pass --resume to continue its run, --overwrite "
                         "to replace the model (its logs are kept as *.previous-N.jsonl), or use an empty --output")


def archive_logs(output) -> list[Path]:
    """Rename the step logs of an earlier run to ``NAME.previous-N.jsonl`` (first free N); returns the new paths."""
    output = Path(output)
    kept = []
    for name in LOG_FILES:
        path = output / name
        if not path.is_file():
            continue
        stem = name[: -len(".jsonl")]
        n = 1
        while (output / f"{stem}.previous-{n}.jsonl").exists():
            n += 1
        target = output / f"{stem}.previous-{n}.jsonl"
        os.replace(path, target)
        logger.warning("kept the earlier run's %s as %s", name, target.name)
        kept.append(target)
    return kept


def fsync_path(path: Path) -> None:
    """Flush a file's (or a folder's entries') data to disk, so a crash cannot leave it half written."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _move_order(name: str) -> tuple[int, str]:
    # Weights first, config.json (what loaders open first) last.
    return (0 if name.endswith(".safetensors") else 2 if name == "config.json" else 1, name)


def save_final(output, write: Callable[[Path], None]) -> None:
    """Call ``write(folder)`` on a fresh temporary folder inside `output`, then move what it wrote into `output`.

    Weight files of an earlier model that this save does not write (shards of a bigger model, a stale index) are
    removed, so the folder never mixes two models' weights; nothing else already in `output` is touched.
    """
    output = Path(output)
    tmp = output / FINAL_TMP
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    names = sorted((p.name for p in tmp.iterdir()), key=_move_order)
    for name in names:
        if (tmp / name).is_file():
            fsync_path(tmp / name)
    written = set(names)
    for old in output.iterdir():
        # save_pretrained's weight names only (model.safetensors, model-0000N-of-0000M.safetensors, the index).
        is_weights = old.name.startswith("model") and (old.name.endswith(".safetensors")
                                                        or old.name == "model.safetensors.index.json")
        if old.is_file() and is_weights and old.name not in written:
            logger.info("removing %s of the earlier model (not part of the new one)", old.name)
            old.unlink()
    for name in names:
        target = output / name
        if (tmp / name).is_dir():  # save_pretrained writes no folders today; keep one as a whole if it ever does
            if target.is_dir():
                shutil.rmtree(target)
        os.replace(tmp / name, target)
    fsync_path(output)
    shutil.rmtree(tmp, ignore_errors=True)


__all__ = ["FINAL_TMP", "LOG_FILES", "MODEL_FILES", "RUN_FILES", "archive_logs", "check_output", "save_final"]
