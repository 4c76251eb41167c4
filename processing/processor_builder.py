"""Build MiniMind-V processors from a vision config and a tokenizer (project-side helpers, not Hub remote code).

The image processor follows the vision tower's family: CLIP towers get CLIP's resize-shortest-edge + centre-crop
and CLIP's mean/std, SigLIP towers get a square resize and mean/std 0.5. Only the PIL backends are used so that
building a processor never needs torchvision.
"""

import copy
import os

from transformers import AutoTokenizer, CLIPImageProcessorPil, SiglipImageProcessorPil
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from modeling_minimind_v.processing_minimind_v import MiniMindVProcessor

CLIP_MODEL_TYPES = ("clip", "clip_vision_model")
SIGLIP_MODEL_TYPES = ("siglip", "siglip_vision_model")
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)


def _vision_fields(vision_config) -> tuple[str, int]:
    """Return (model_type, image_size) from a vision config object or dict (a full CLIP/SigLIP config works too)."""
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


def build_image_processor(vision_config):
    """A CLIP or SigLIP PIL image processor producing `image_size` x `image_size` pixel values."""
    model_type, size = _vision_fields(vision_config)
    if model_type in CLIP_MODEL_TYPES:
        return CLIPImageProcessorPil(
            size={"shortest_edge": size},
            crop_size={"height": size, "width": size},
            image_mean=list(OPENAI_CLIP_MEAN),
            image_std=list(OPENAI_CLIP_STD),
        )
    if model_type in SIGLIP_MODEL_TYPES:
        return SiglipImageProcessorPil(
            size={"height": size, "width": size}, image_mean=list(SIGLIP_MEAN), image_std=list(SIGLIP_STD)
        )
    raise ValueError(
        f"No image processor for vision model_type {model_type!r}; supported: {CLIP_MODEL_TYPES + SIGLIP_MODEL_TYPES}"
    )


def build_processor(
    tokenizer, vision_config, image_seq_length: int, chat_template: str | None = None, padding_side: str = "left"
):
    """A `MiniMindVProcessor` for `vision_config`; `tokenizer` is a tokenizer object or a folder/repo to load.

    The processor gets its own copy of the tokenizer with `padding_side` (default "left"): batched generation, and
    the image-text-to-text pipeline's batching, pad on the tokenizer's side and need left padding. Training is
    unaffected: the model derives positions from the attention mask, and collators may pass `padding_side=`.
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = AutoTokenizer.from_pretrained(tokenizer)
    else:
        tokenizer = copy.deepcopy(tokenizer)  # don't change the caller's tokenizer
    tokenizer.padding_side = padding_side
    # save_pretrained writes init_kwargs, not the attribute: without this the saved folder would reload as "right".
    tokenizer.init_kwargs["padding_side"] = padding_side
    return MiniMindVProcessor(
        image_processor=build_image_processor(vision_config),
        tokenizer=tokenizer,
        chat_template=chat_template,
        image_seq_length=image_seq_length,
    )


__all__ = ["build_image_processor", "build_processor"]
