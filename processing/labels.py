"""Label conventions of MiniMind-V training: the ignore index and the token ids that are never prediction targets."""

IGNORE_INDEX = -100


def never_labelled_ids(processor) -> tuple[int, ...]:
    """Pad, image and vision start/end ids: never labelled, even if a template change put them inside a generation
    block (and TRL's collator leaves image placeholders in the labels)."""
    candidates = (processor.tokenizer.pad_token_id, processor.image_token_id,
                  getattr(processor, "vision_start_token_id", None), getattr(processor, "vision_end_token_id", None))
    return tuple(sorted({token_id for token_id in candidates if token_id is not None}))


__all__ = ["IGNORE_INDEX", "never_labelled_ids"]
