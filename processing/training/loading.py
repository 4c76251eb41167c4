"""The model and processor a training run starts from, for both trainers: a fresh model from a preset (with the
shipped tokenizer), or a saved folder loaded with this project's classes in float32 master weights; either way
checked to agree with each other."""

from __future__ import annotations

import logging

import torch

from modeling_minimind_v import MiniMindVConfig, MiniMindVForConditionalGeneration
from modeling_minimind_v.processing_minimind_v import MiniMindVProcessor

from ..processors import build_processor, processor_problems
from ..tokenizers import load_default_tokenizer

logger = logging.getLogger(__name__)


def load_model_and_processor(model_dir=None, preset: str | None = None, require_processor: bool = False):
    """(model, processor) from `preset` (a preset name or config JSON: a fresh model) or from `model_dir`.

    A folder without a loadable processor gets one built from the shipped tokenizer, unless `require_processor`
    (then it is an error). Mixed precision runs under autocast, so the weights load in float32 whatever the folder
    stores. Raises ValueError when the model and processor disagree (image token, image_seq_length, vocabulary).
    """
    if (model_dir is None) == (preset is None):
        raise ValueError("give exactly one of model_dir and preset")
    if preset is not None:
        config = MiniMindVConfig.from_preset(preset)
        processor = _shipped_processor(config)
        _check_match(config, processor, hint=(
            f". --config {preset} needs its own tokenizer: build a checkpoint with scripts/import_qwen3.py (from "
            "real weights, or from scripts/make_random_checkpoint.py --family qwen3 --shape qwen3-0.6b "
            "--vision-shape base, nothing downloaded) and pass it as --model"))  # before allocating the model
        model = MiniMindVForConditionalGeneration(config)
    else:
        model = MiniMindVForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32)
        try:
            # Our own class loads it; the flag only stops AutoTokenizer asking about the auto_map it finds there.
            processor = MiniMindVProcessor.from_pretrained(model_dir, trust_remote_code=True)
        except (OSError, ValueError, TypeError) as error:
            if require_processor:
                raise ValueError(f"{model_dir} has no MiniMind-V processor ({error})") from error
            logger.warning("no processor in %s (%s); using the shipped tokenizer", model_dir, error)
            processor = _shipped_processor(model.config)
        _check_match(model.config, processor)
    return model, processor


def _check_match(config, processor, hint: str = "") -> None:
    problems = processor_problems(config, processor)
    if problems:
        raise ValueError("model and processor do not match: " + "; ".join(problems) + hint)


def _shipped_processor(config):
    return build_processor(load_default_tokenizer(), config.vision_config, config.image_seq_length)


__all__ = ["load_model_and_processor"]
