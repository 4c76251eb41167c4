"""Which parts of MiniMind-V train: the three parts (vision tower, projector, decoder), what each stage trains,
freezing, and the one parameter count that both trainers (and diagnose) report, for plain and PEFT-wrapped models."""

from __future__ import annotations

import logging

from torch import nn

from ..layout import DECODER_MODULE, LM_HEAD_MODULE, PROJECTOR_MODULE, VISION_MODULE

# The modules that hold each part, as they appear in parameter names ("model.vision_tower.", or PEFT's
# "base_model.model.model.vision_tower."); lm_head is tied to the decoder's embeddings.
PART_MODULES: dict[str, tuple[str, ...]] = {
    "vision": (VISION_MODULE,),
    "projector": (PROJECTOR_MODULE,),
    "decoder": (DECODER_MODULE, LM_HEAD_MODULE),
}
PARTS = tuple(PART_MODULES)
LORA = "lora"  # PEFT adapter weights (lora_A, lora_B, ...), counted apart from the part they adapt
STAGE_PARTS: dict[str, tuple[str, ...]] = {"pretrain": ("projector",), "sft": ("projector", "decoder")}


def part_of(name: str) -> str:
    """The part a parameter (or state-dict key) belongs to."""
    components = name.split(".")
    for part, modules in PART_MODULES.items():
        if any(module in components for module in modules):
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
    """{group: {"trainable": n, "total": n}} for vision / projector / decoder / lora / all; tied tensors count once.

    Works on plain and PEFT-wrapped models: adapter weights count under "lora", a `modules_to_save` copy under its
    part (so a LoRA run's projector total holds the original and the trained copy).
    """
    report = {group: {"trainable": 0, "total": 0} for group in (*PARTS, LORA, "all")}
    for name, param in model.named_parameters():  # named_parameters() yields a tied tensor once
        group = LORA if any(c.startswith("lora_") for c in name.split(".")) else part_of(name)
        for key in (group, "all"):
            report[key]["total"] += param.numel()
            report[key]["trainable"] += param.numel() if param.requires_grad else 0
    return report


def log_parameter_report(report: dict[str, dict[str, int]], logger: logging.Logger) -> None:
    total = report["all"]
    logger.info("trainable parameters: %s / %s (%.2f%%)", f"{total['trainable']:,}", f"{total['total']:,}",
                100.0 * total["trainable"] / max(total["total"], 1))
    for group, counts in report.items():
        if group != "all" and counts["total"]:
            logger.info("  %-9s trainable %12s / %12s", group, f"{counts['trainable']:,}", f"{counts['total']:,}")


__all__ = [
    "LORA", "PARTS", "PART_MODULES", "STAGE_PARTS", "log_parameter_report", "parameter_report",
    "parse_parts", "part_of", "set_trainable",
]
