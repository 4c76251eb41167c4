"""Rows through the processor's chat template in batches: token ids (and assistant masks) per row, where a row the
template or the processor rejects becomes a :class:`~processing.rows.RowError` instead of failing its batch.

A row whose text holds one of the tokenizer's control tokens (``<|im_start|>``, ``<|im_end|>``, ``<|image_pad|>``,
...) is skipped as ``control_token``: templated as is, the token would open a fake turn or an image slot, and inside
an assistant reply it would silently become a training target.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import PIL.Image

from .rows import CONTROL_TOKEN, PLACEHOLDER_MISMATCH, TEMPLATE_ERROR, Row, RowError, count_images, fill_images

CHUNK = 256  # rows per apply_chat_template call: batched templating is ~4x faster than row by row


@dataclass
class Encoded:
    """One templated row, unpadded: its token ids (images expanded) and, when asked for, the assistant mask."""

    input_ids: list[int]
    assistant_mask: list[int] | None = None


def control_token_pattern(tokenizer) -> re.Pattern | None:
    """A regex matching any of the tokenizer's added tokens that markup is made of (longest first); None if none.

    One-character and whitespace added tokens are ordinary text."""
    tokens = {str(t) for t in tokenizer.get_added_vocab()} | {str(t) for t in tokenizer.all_special_tokens}
    tokens = sorted((t for t in tokens if len(t) > 1 and not t.isspace()), key=len, reverse=True)
    return re.compile("|".join(map(re.escape, tokens))) if tokens else None


def control_token_error(row: Row, pattern: re.Pattern | None) -> RowError | None:
    """A CONTROL_TOKEN RowError naming the first turn of `row` whose text holds a control token, else None."""
    if pattern is None:
        return None
    for index, message in enumerate(row.messages):
        for item in message["content"]:
            found = pattern.search(item["text"]) if item["type"] == "text" else None
            if found:
                return RowError(CONTROL_TOKEN, f"conversations[{index}] ({message['role']}) holds the control token "
                                               f"{found.group(0)!r}; write images as <image>, never as tokens")
    return None


def encode_rows(processor, rows: Sequence[Row],
                assistant_masks: bool = False) -> Iterator[tuple[Row, Encoded | RowError]]:
    """Yield ``(row, Encoded or RowError)`` for every row, templating `CHUNK` rows per call.

    Only the text side is computed: each image item gets a 1x1 stand-in, since the processor's expansion of an
    image does not depend on its pixels. Rows holding control tokens come back as CONTROL_TOKEN errors.
    """
    pattern = control_token_pattern(processor.tokenizer)
    for start in range(0, len(rows), CHUNK):
        chunk = rows[start : start + CHUNK]
        errors = [control_token_error(row, pattern) for row in chunk]
        clean = [row for row, error in zip(chunk, errors) if error is None]
        encoded = iter(_encode(processor, clean, assistant_masks) if clean else [])
        yield from ((row, error if error is not None else next(encoded)) for row, error in zip(chunk, errors))


def _encode(processor, rows: Sequence[Row], assistant_masks: bool) -> list[Encoded | RowError]:
    stand_in = PIL.Image.new("RGB", (1, 1))
    conversations = [fill_images(row.messages, [stand_in] * count_images(row.messages)) for row in rows]
    try:
        encoded = processor.apply_chat_template(
            conversations, tokenize=True, return_dict=True, return_assistant_tokens_mask=assistant_masks,
            processor_kwargs={"padding": True, "padding_side": "right"},
        )
    except Exception as error:  # the template or the processor rejected a conversation
        if len(rows) > 1:  # one bad row fails the whole batch: redo it row by row to find it
            return [_encode(processor, [row], assistant_masks)[0] for row in rows]
        reason = PLACEHOLDER_MISMATCH if "placeholder" in str(error) else TEMPLATE_ERROR
        return [RowError(reason, str(error)[:200])]
    masks = encoded["assistant_masks"] if assistant_masks else [None] * len(rows)
    results = []
    for ids, attention, assistant in zip(encoded["input_ids"], encoded["attention_mask"], masks):
        length = sum(attention)  # right padding: the row's own tokens come first
        results.append(Encoded(list(ids[:length]), None if assistant is None else list(assistant[:length])))
    return results


__all__ = ["CHUNK", "Encoded", "control_token_error", "control_token_pattern", "encode_rows"]
