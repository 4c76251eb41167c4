"""CLIP / SigLIP image processors (PIL backends: no torchvision needed), built from the vision-family registry in
:mod:`modeling_minimind_v.vision`: CLIP towers get a shortest-edge resize + centre crop and CLIP's mean/std, SigLIP
towers a square resize and mean/std 0.5."""

from __future__ import annotations

import transformers

from modeling_minimind_v.vision import VisionFamily, vision_family


def vision_fields(vision_config) -> tuple[str | None, int]:
    """(model_type, image_size) of a vision config object or dict (a full CLIP/SigLIP config works too)."""
    if isinstance(vision_config, dict):
        inner = vision_config.get("vision_config")
        if isinstance(inner, dict) and "image_size" not in vision_config:
            vision_config = inner
        model_type, image_size = vision_config.get("model_type"), vision_config.get("image_size")
    else:
        inner = getattr(vision_config, "vision_config", None)
        if inner is not None and not hasattr(vision_config, "image_size"):
            vision_config = inner
        model_type, image_size = getattr(vision_config, "model_type", None), getattr(vision_config, "image_size", None)
    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"The vision config needs a positive int `image_size`, got {image_size!r}")
    return model_type, image_size


def image_processor_class(family: VisionFamily) -> type:
    """The transformers image processor class the family names (public top-level transformers attribute)."""
    return getattr(transformers, family.image_processor)


def family_of(model_type: str | None) -> VisionFamily:
    """The vision family of `model_type`, with an error that says no image processor can be built."""
    try:
        return vision_family(model_type)
    except ValueError as error:
        raise ValueError(f"No image processor for vision model_type {model_type!r}: {error}") from error


def build_image_processor(vision_config):
    """The family's PIL image processor producing `image_size` x `image_size` pixel values."""
    model_type, size = vision_fields(vision_config)
    family = family_of(model_type)
    if family.resize == "shortest_edge_then_center_crop":
        geometry = {"size": {"shortest_edge": size}, "crop_size": {"height": size, "width": size}}
    elif family.resize == "square":
        geometry = {"size": {"height": size, "width": size}}
    else:
        raise ValueError(f"vision family {family.name!r} has an unknown resize rule {family.resize!r}")
    return image_processor_class(family)(
        **geometry, image_mean=list(family.image_mean), image_std=list(family.image_std)
    )


__all__ = ["build_image_processor", "family_of", "image_processor_class", "vision_fields"]
