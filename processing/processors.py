"""Build a MiniMind-V processor (the Hub's :class:`MiniMindVProcessor`) from a tokenizer and a vision config, and
check that a processor fits a model config."""

from __future__ import annotations

import copy
import os

from transformers import AutoTokenizer

from modeling_minimind_v.processing_minimind_v import MiniMindVProcessor

from .image_processors import build_image_processor


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


def processor_problems(config, processor) -> list[str]:
    """How `processor` disagrees with the model `config` (image token id, image_seq_length, vocabulary size)."""
    problems = []
    if processor.image_seq_length != config.image_seq_length:
        problems.append(f"processor image_seq_length {processor.image_seq_length} != config "
                        f"image_seq_length {config.image_seq_length}")
    token_id = getattr(processor, "image_token_id", None)
    if token_id != config.image_token_id:
        problems.append(f"processor image token id {token_id} != config image_token_id {config.image_token_id}")
    vocab_size = config.get_text_config().vocab_size
    if len(processor.tokenizer) > vocab_size:
        problems.append(f"tokenizer has {len(processor.tokenizer)} tokens but vocab_size is {vocab_size}")
    return problems


__all__ = ["build_processor", "processor_problems"]
