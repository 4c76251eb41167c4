"""The registry of decoder families a MiniMind-V checkpoint imports from and exports to (Qwen3, Llama), and the
choice of family: by a decoder folder's config.json `model_type` on import, by the MiniMind decoder's QK-norm on
export (``--format auto``: QK-norm is Qwen3, none is Llama)."""

from __future__ import annotations

import os
from pathlib import Path

from .decoder import DecoderFamily, check_minimind_v_config, convert_minimind_v_to_decoder, text_fields_of
from .llama import LLAMA
from .qwen3 import QWEN3
from .safetensors_io import CheckpointError, read_json

DECODER_FAMILIES: dict[str, DecoderFamily] = {family.name: family for family in (QWEN3, LLAMA)}
EXPORT_FORMATS = ("auto", *DECODER_FAMILIES)


def decoder_family_of(decoder_dir: str | os.PathLike) -> DecoderFamily:
    """The family of the decoder checkpoint in `decoder_dir`, from its config.json `model_type`."""
    config_path = Path(decoder_dir) / "config.json"
    model_type = read_json(config_path).get("model_type")
    for family in DECODER_FAMILIES.values():
        if family.model_type == model_type:
            return family
    known = sorted(family.model_type for family in DECODER_FAMILIES.values())
    raise CheckpointError(f"{config_path} has model_type {model_type!r}; supported decoders are {known} (dense)")


def export_family_for(model_dir: str | os.PathLike, export_format: str = "auto") -> DecoderFamily:
    """The family to export the MiniMind-V checkpoint in `model_dir` as: `export_format` ('auto', 'qwen3', 'llama');
    'auto' picks Qwen3 for a QK-normed decoder and Llama for one without."""
    if export_format not in EXPORT_FORMATS:
        raise CheckpointError(f"unknown export format {export_format!r}; choose one of {list(EXPORT_FORMATS)}")
    if export_format != "auto":
        return DECODER_FAMILIES[export_format]
    text = text_fields_of(check_minimind_v_config(model_dir))
    return QWEN3 if text.get("qk_norm", True) else LLAMA  # MiniMindConfig's default: qk_norm True


def export_minimind_v(model_dir, output_dir, export_format: str = "auto", dtype=None,
                      overwrite: bool = False) -> Path:
    """Write the decoder of a MiniMind-V folder as a plain Qwen3 or Llama folder (see `export_family_for`)."""
    family = export_family_for(model_dir, export_format)
    return convert_minimind_v_to_decoder(model_dir, output_dir, family, dtype, overwrite)


__all__ = ["DECODER_FAMILIES", "EXPORT_FORMATS", "decoder_family_of", "export_family_for", "export_minimind_v"]
