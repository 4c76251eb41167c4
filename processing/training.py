"""Reusable pieces of the MiniMind-V trainer (scripts/train.py): which parts train, optimizer groups, the schedule,
atomic resumable checkpoints and the per-step JSONL log.

Kept free of argument parsing so notebooks and other trainers can reuse them.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)

# Parameter-name prefixes of the three parts (lm_head is tied to the decoder's embeddings).
PART_PREFIXES: dict[str, tuple[str, ...]] = {
    "vision": ("model.vision_tower.",),
    "projector": ("model.multi_modal_projector.",),
    "decoder": ("model.language_model.", "lm_head."),
}
PARTS = tuple(PART_PREFIXES)
STAGE_PARTS: dict[str, tuple[str, ...]] = {"pretrain": ("projector",), "sft": ("projector", "decoder")}

CHECKPOINT_PREFIX = "checkpoint-"
COMPLETE_MARKER = "checkpoint_complete.json"
TRAINER_STATE = "trainer_state.json"
_TMP_PREFIX = ".tmp-" + CHECKPOINT_PREFIX
_CHECKPOINT_RE = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")


# ----------------------------------------------------------------------------------------------------------------------
# Parts and parameters
# ----------------------------------------------------------------------------------------------------------------------

def part_of(name: str) -> str:
    for part, prefixes in PART_PREFIXES.items():
        if name.startswith(prefixes):
            return part
    raise ValueError(f"parameter {name!r} belongs to no part {PARTS}")


def parse_parts(spec: str) -> tuple[str, ...]:
    """'vision,projector' -> ('vision', 'projector'); rejects unknown names."""
    parts = tuple(dict.fromkeys(p.strip() for p in spec.split(",") if p.strip()))
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        raise ValueError(f"--train takes a comma-separated subset of {PARTS}, got {spec!r}")
    return parts


def set_trainable(model: nn.Module, parts: tuple[str, ...]) -> None:
    """requires_grad=True exactly for the parameters of `parts`; frozen ones never reach the optimizer."""
    for name, param in model.named_parameters():
        param.requires_grad_(part_of(name) in parts)


def parameter_report(model: nn.Module) -> dict[str, dict[str, int]]:
    """{part: {"trainable": n, "total": n}} plus "all"; tied parameters are counted once."""
    report = {part: {"trainable": 0, "total": 0} for part in (*PARTS, "all")}
    for name, param in model.named_parameters():  # named_parameters() yields a tied tensor once
        for key in (part_of(name), "all"):
            report[key]["total"] += param.numel()
            report[key]["trainable"] += param.numel() if param.requires_grad else 0
    return report


def _no_decay_names(model: nn.Module) -> set[str]:
    """Biases, norm weights and embeddings: decaying them only shrinks scales and rare-token vectors."""
    names = set()
    for module_name, module in model.named_modules():
        is_norm = isinstance(module, (nn.LayerNorm, nn.GroupNorm)) or "Norm" in type(module).__name__
        is_embedding = isinstance(module, nn.Embedding)
        for param_name, param in module.named_parameters(recurse=False):
            full = f"{module_name}.{param_name}" if module_name else param_name
            if is_norm or is_embedding or param_name.endswith("bias") or param.ndim < 2:
                names.add(full)
    return names


def build_param_groups(model: nn.Module, lr: float, weight_decay: float,
                       projector_lr: float | None = None) -> list[dict]:
    """AdamW groups: (decoder/vision | projector) x (decay | no decay), trainable parameters only.

    The tied lm_head/embedding tensor appears once (named_parameters de-duplicates) and, being an embedding, without
    weight decay.
    """
    no_decay = _no_decay_names(model)
    groups: dict[tuple[str, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_projector = part_of(name) == "projector"
        decay = name not in no_decay
        key = ("projector" if is_projector else "main", decay)
        group = groups.setdefault(key, {
            "name": f"{key[0]}/{'decay' if decay else 'no_decay'}", "params": [],
            "lr": projector_lr if is_projector and projector_lr is not None else lr,
            "weight_decay": weight_decay if decay else 0.0,
        })
        group["params"].append(param)
    if not groups:
        raise ValueError("no trainable parameters: check --stage / --train")
    # main groups first, so group 0's lr is the one logged as "lr"
    return [groups[k] for k in sorted(groups, key=lambda k: (k[0] != "main", not k[1]))]


def build_optimizer(groups: list[dict], lr: float, betas=(0.9, 0.95), eps: float = 1e-8) -> torch.optim.Optimizer:
    """AdamW, fused where this torch/device supports it, else the multi-tensor (foreach) kernel."""
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=True)
    except (RuntimeError, ValueError) as error:
        logger.info("fused AdamW unavailable (%s); using foreach", error)
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, foreach=True)


def warmup_cosine_schedule(optimizer, total_steps: int, warmup_steps: int, min_lr_ratio: float = 0.0):
    """Linear warmup from 0 to each group's lr over `warmup_steps`, then cosine decay to `min_lr_ratio` * lr."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps  # step 0 already trains, with a small non-zero lr
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# ----------------------------------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------------------------------

def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for dirpath, _, filenames in os.walk(root):
        for filename in filenames:
            _fsync_path(Path(dirpath) / filename)
        _fsync_path(Path(dirpath))


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
        json.dump({"step": step}, f)
        f.flush()
        os.fsync(f.fileno())
    _fsync_path(tmp)
    if final.exists():  # re-saving a step after resuming from an older checkpoint: move the old one out first
        stale = final.with_name(f"{_TMP_PREFIX}stale-{step}")
        shutil.rmtree(stale, ignore_errors=True)
        os.replace(final, stale)
        shutil.rmtree(stale, ignore_errors=True)
    os.replace(tmp, final)
    _fsync_path(Path(output_dir))
    return final


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
    with open(Path(checkpoint) / TRAINER_STATE, encoding="utf-8") as f:
        return json.load(f)


# ----------------------------------------------------------------------------------------------------------------------
# Step log
# ----------------------------------------------------------------------------------------------------------------------

class JsonlLog:
    """Append-only JSON-lines log (one record per optimizer step), flushed per line so a crash loses at most one."""

    def __init__(self, path, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled
        self._file = None

    def truncate_after(self, step: int) -> None:
        """Keep records with `step` <= step (a resumed run rewrites what came after its checkpoint) and drop a torn
        last line left by a kill."""
        if not self.enabled or not self.path.is_file():
            return
        kept = []
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if record.get("step", 0) <= step:
                    kept.append(line if line.endswith("\n") else line + "\n")
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(kept)
        os.replace(tmp, self.path)

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8", buffering=1)
        self._file.write(json.dumps(record) + "\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_jsonl_log(path) -> list[dict]:
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


__all__ = [
    "CHECKPOINT_PREFIX", "COMPLETE_MARKER", "JsonlLog", "PARTS", "STAGE_PARTS", "build_optimizer",
    "build_param_groups", "checkpoint_tmp_dir", "finalize_checkpoint", "is_complete_checkpoint", "latest_checkpoint",
    "list_checkpoints", "load_trainer_state", "parameter_report", "parse_parts", "part_of", "prune_checkpoints",
    "read_jsonl_log", "remove_stale_tmp_dirs", "set_trainable", "warmup_cosine_schedule",
]
