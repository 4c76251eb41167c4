"""Optimization for the MiniMind-V trainer: AdamW parameter groups (projector learning rate, no weight decay on
biases, norms and embeddings), the optimizer, and the warmup + cosine schedule."""

from __future__ import annotations

import logging
import math

import torch
from torch import nn

from .parts import part_of

logger = logging.getLogger(__name__)


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


__all__ = ["build_optimizer", "build_param_groups", "warmup_cosine_schedule"]
