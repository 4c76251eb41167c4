"""Vision towers: the one registry of the vision families MiniMind-V knows (CLIP, SigLIP), and the patch features a
tower gives for a batch of images.

A family says how its images are preprocessed (mean/std, resize), which transformers image processor does it, how its
checkpoints name the tower's weights, and how many leading non-patch tokens (CLIP's class token) its outputs carry.
The model itself builds any transformers vision config with `AutoModel.from_config`; the registry is what processor
building and checkpoint conversion read. Remote code: imports only torch, transformers and the standard library.
"""

from dataclasses import dataclass

import torch
from torch import nn
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD


@dataclass(frozen=True)
class VisionFamily:
    name: str
    model_types: tuple[str, ...]  # transformers `model_type`s: the dual encoder and the vision-only model
    image_processor: str  # transformers image processor class (PIL backend: no torchvision needed)
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    resize: str  # "shortest_edge_then_center_crop" (CLIP) or "square" (SigLIP)
    ignored_checkpoint_prefixes: tuple[str, ...]  # a dual encoder's text tower and heads, unused by the VLM
    checkpoint_prefix: str = "vision_model."  # where the tower's own weights sit in the family's checkpoints


VISION_FAMILIES: dict[str, VisionFamily] = {
    "clip": VisionFamily(
        name="clip", model_types=("clip", "clip_vision_model"), image_processor="CLIPImageProcessorPil",
        image_mean=tuple(OPENAI_CLIP_MEAN), image_std=tuple(OPENAI_CLIP_STD), resize="shortest_edge_then_center_crop",
        ignored_checkpoint_prefixes=("text_model.", "text_projection.", "visual_projection.", "logit_scale"),
    ),
    "siglip": VisionFamily(
        name="siglip", model_types=("siglip", "siglip_vision_model"), image_processor="SiglipImageProcessorPil",
        image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5), resize="square",
        ignored_checkpoint_prefixes=("text_model.", "logit_scale", "logit_bias"),
    ),
}


def vision_family(model_type: str | None) -> VisionFamily:
    """The family of a vision config's `model_type`; a ValueError listing the known ones otherwise."""
    for family in VISION_FAMILIES.values():
        if model_type in family.model_types:
            return family
    known = [t for family in VISION_FAMILIES.values() for t in family.model_types]
    raise ValueError(f"unsupported vision model_type {model_type!r}; supported: {known}")


def patch_features(tower: nn.Module, pixel_values: torch.Tensor, feature_layer: int, num_patches: int,
                   output_hidden_states: bool = False, output_attentions: bool = False):
    """Run the tower; return (patch features [n_images, num_patches, vision_hidden], the tower's output).

    `feature_layer` -1 takes the last hidden state, other values index the tower's hidden states. Leading tokens
    beyond the patch grid (CLIP's class token) are dropped; SigLIP has none.
    """
    out = tower(pixel_values=pixel_values, output_hidden_states=output_hidden_states or feature_layer != -1,
                output_attentions=output_attentions)
    features = out.last_hidden_state if feature_layer == -1 else out.hidden_states[feature_layer]
    return features[:, features.shape[1] - num_patches:], out  # [n, patches, vision_hidden]


__all__ = ["VISION_FAMILIES", "VisionFamily", "patch_features", "vision_family"]
