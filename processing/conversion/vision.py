"""Importing a CLIP / SigLIP vision tower from a Hugging Face folder (``CLIPModel``, ``CLIPVisionModel``,
``SiglipModel``, ``SiglipVisionModel``): its family from the registry in :mod:`modeling_minimind_v.vision`, its
config, the key mapping onto MiniMind-V's tower, and the image processor its preprocessor config describes."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import PIL.Image
from transformers import AutoConfig

from modeling_minimind_v.vision import VISION_FAMILIES, VisionFamily, vision_family

from ..image_processors import build_image_processor, image_processor_class
from .safetensors_io import CheckpointError, SafetensorsCheckpoint, read_json

# Image-processor settings taken from a vision checkpoint's preprocessor/processor config.
IMAGE_PROCESSOR_FIELDS = (
    "do_resize", "size", "resample", "do_center_crop", "crop_size", "do_rescale", "rescale_factor",
    "do_normalize", "image_mean", "image_std", "do_convert_rgb",
)


def vision_family_of(vision_dir: str | os.PathLike) -> VisionFamily:
    """The family of the checkpoint in `vision_dir` (from its config.json `model_type`); anything else is refused."""
    config_path = Path(vision_dir) / "config.json"
    model_type = read_json(config_path).get("model_type")
    try:
        return vision_family(model_type)
    except ValueError as error:
        known = sorted(t for family in VISION_FAMILIES.values() for t in family.model_types)
        raise CheckpointError(f"{vision_dir} holds a {model_type!r} checkpoint; supported vision checkpoints are "
                              f"CLIP and SigLIP (model_type one of {known})") from error


@dataclass
class VisionSource:
    """A vision checkpoint folder: its family, the tower's config and its lazy weights."""

    directory: Path
    family: VisionFamily
    config: object  # a CLIPVisionConfig / SiglipVisionConfig
    checkpoint: SafetensorsCheckpoint


def open_vision_checkpoint(vision_dir: str | os.PathLike) -> VisionSource:
    """Open a CLIP (CLIPModel, CLIPVisionModel) or SigLIP (SiglipModel, SiglipVisionModel) folder."""
    vision_dir = Path(vision_dir)
    family = vision_family_of(vision_dir)
    try:
        config = AutoConfig.from_pretrained(str(vision_dir), trust_remote_code=False)
    except Exception as error:
        raise CheckpointError(f"cannot read the vision config in {vision_dir}: {error}") from error
    if hasattr(config, "vision_config"):  # dual encoder (CLIPModel, SiglipModel): keep the vision half
        config = config.vision_config
    return VisionSource(vision_dir, family, config, SafetensorsCheckpoint(vision_dir))


def vision_key_mapping(source: VisionSource, tower_keys, target_prefix: str):
    """Map checkpoint keys onto the vision tower's keys: returns (target -> (ckpt, source key), unmapped keys).

    Checkpoints differ in whether the tower's keys sit under `vision_model.` (every CLIPModel/SiglipModel and
    vision-only files saved by transformers 4) or not (vision-only files saved by transformers 5, whose
    CLIPVisionModel/SiglipVisionModel dropped that wrapper); the prefix is removed on both sides before matching.
    A dual encoder's text tower and heads (the family's ignored prefixes) are skipped.
    """
    prefix = source.family.checkpoint_prefix
    tower_keys = list(tower_keys)
    tower_prefix = prefix if tower_keys and all(k.startswith(prefix) for k in tower_keys) else ""
    ignored = source.family.ignored_checkpoint_prefixes
    mapping, unmapped = {}, []
    for key in source.checkpoint.keys():
        if key.startswith(prefix):
            core = key[len(prefix):]
        elif key.startswith(ignored):
            continue
        else:
            core = key
        target = f"{target_prefix}{tower_prefix}{core}"
        if target in mapping:
            unmapped.append(key)  # the same tensor twice (with and without prefix): ambiguous
        else:
            mapping[target] = (source.checkpoint, key)
    return mapping, unmapped


def load_image_processor(vision_dir: str | os.PathLike, vision_config, family: VisionFamily):
    """The PIL image processor described by the vision checkpoint's preprocessor/processor config, if it has one,
    else the project's default for `vision_config`; checked to produce image_size x image_size pixels."""
    vision_dir = Path(vision_dir)
    settings = None
    for name in ("preprocessor_config.json", "processor_config.json"):
        if (vision_dir / name).is_file():
            data = read_json(vision_dir / name)
            settings = data.get("image_processor", data) if name == "processor_config.json" else data
            break
    if settings is None:
        processor = build_image_processor(vision_config)
    else:
        # Always the PIL backend, as build_image_processor does: no torchvision needed to use the checkpoint.
        kwargs = {key: settings[key] for key in IMAGE_PROCESSOR_FIELDS if key in settings}
        try:
            processor = image_processor_class(family)(**kwargs)
        except Exception as error:
            raise CheckpointError(f"invalid image processor settings in {vision_dir}: {error}") from error
    size = vision_config.image_size
    try:
        # An odd-sized probe image: catches settings that would not yield square image_size pixels (e.g. a resize
        # without centre crop), which the model would reject only at the first forward.
        pixels = processor(PIL.Image.new("RGB", (size + 7, size + 3)), return_tensors="pt")["pixel_values"]
    except Exception as error:
        raise CheckpointError(f"the image processor from {vision_dir} fails on a test image: {error}") from error
    if tuple(pixels.shape[1:]) != (3, size, size):
        raise CheckpointError(
            f"the image processor from {vision_dir} yields pixel_values {list(pixels.shape[1:])}, but the vision "
            f"tower expects [3, {size}, {size}]"
        )
    return processor


__all__ = [
    "IMAGE_PROCESSOR_FIELDS", "VisionSource", "load_image_processor", "open_vision_checkpoint", "vision_family_of",
    "vision_key_mapping",
]
