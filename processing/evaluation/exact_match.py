"""Exact-match evaluation of a MiniMind-V model on conversation rows (the synthetic ``eval.jsonl`` format).

Rows are read and validated by the one row reader (:mod:`processing.rows`): ``{"conversations": [...], "image":
"images/x.png" | [...], "type": "color" | ...}``, JSONL or Parquet, string or list content. The conversation up to
(not including) its last assistant turn is the prompt, rendered with the processor's chat template and
``add_generation_prompt=True``; the last assistant turn is the gold answer. Prompts are generated greedily in
left-padded batches, stopping at ``<|im_end|>``, and a prediction counts as correct when
``normalize_answer(prediction) == normalize_answer(gold)``.

Rows that cannot be evaluated (malformed, no assistant turn, missing or unreadable image, image count not matching
the placeholders) are skipped and counted by reason rather than aborting the run, so a half-broken data file still
yields a score for the rest. ``evaluate_model`` is what ``scripts/evaluate.py`` and the demo call in-process.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch

from ..rows import (
    BAD_JSON, BAD_STRUCTURE, CORRUPT_IMAGE, IMAGE_PLACEHOLDER, MISSING_IMAGE, NO_ASSISTANT, PLACEHOLDER_MISMATCH,
    OUTSIDE_IMAGE_ROOT, ImageRef, RowError, decode_image, iter_rows, message_text, parse_row,
)
from ..synthetic import normalize_answer
from ..tokenizers import IM_END_TOKEN

logger = logging.getLogger(__name__)

UNTYPED = "all"  # type key for rows without a "type"
# The evaluator's skip reasons (the result's "skip_reasons" keys) for the row reader's.
SKIP_REASONS = {
    BAD_JSON: "bad_row", BAD_STRUCTURE: "bad_row", NO_ASSISTANT: "bad_row",
    PLACEHOLDER_MISMATCH: "image_count_mismatch", MISSING_IMAGE: "missing_image", CORRUPT_IMAGE: "unreadable_image",
    OUTSIDE_IMAGE_ROOT: "image_outside_root",
}
_MAX_LOGGED_SKIPS = 5  # per evaluation: enough to see what is wrong without flooding the log


@dataclass
class _Item:
    """One evaluable row: its position in the input, prompt text, images and gold answer."""

    index: int
    qtype: str
    prompt: str
    question: str
    gold: str
    images: list[ImageRef] = field(default_factory=list)


class _SkipRow(Exception):
    """Raised while preparing a row that cannot be evaluated; `reason` is the counter key."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def read_rows(path: str | os.PathLike, limit: int | None = None) -> list[dict | None]:
    """The raw rows of a .jsonl or .parquet file (at most `limit`); a line that is not valid JSON becomes ``None``
    (skipped and counted by the evaluator)."""
    rows: list[dict | None] = []
    for where, raw in iter_rows(path):
        if limit is not None and len(rows) >= limit:
            break
        if isinstance(raw, RowError):
            logger.warning("%s is not valid JSON (%s); it will be skipped", where, raw)
            raw = None
        rows.append(raw)
    return rows


def _prepare(index: int, raw: Any, processor, image_root: Path | None, allow_outside_root: bool = False) -> _Item:
    try:
        row = parse_row(raw, image_root, f"row {index}", allow_outside_root=allow_outside_root)
    except RowError as error:
        raise _SkipRow(SKIP_REASONS.get(error.reason, "bad_row"), str(error)) from error
    last = max(i for i, message in enumerate(row.messages) if message["role"] == "assistant")
    messages = row.messages[:last]
    if not messages:
        raise _SkipRow("bad_row", "conversation has nothing before its last assistant turn")
    gold = message_text(row.messages[last])
    question = message_text(messages[-1]).replace(IMAGE_PLACEHOLDER, "").strip()
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    if isinstance(prompt, list):  # some transformers versions return a one-element batch
        prompt = prompt[0]
    # Checked per row here: inside a batch the processor would raise and take the whole batch down with it.
    n_placeholders = prompt.count(processor.image_token)
    if n_placeholders != len(row.images):
        raise _SkipRow("image_count_mismatch",
                       f"prompt has {n_placeholders} image placeholder(s) but the row has {len(row.images)} image(s)")
    qtype = row.fields.get("type")
    return _Item(index, str(qtype) if qtype else UNTYPED, prompt, question, gold, row.images)


def _load_images(refs: list[ImageRef]) -> list:
    try:
        return [decode_image(ref) for ref in refs]  # decoded now: a truncated file fails here, not in the processor
    except RowError as error:
        raise _SkipRow(SKIP_REASONS[error.reason], f"cannot read image: {error}") from error


def _stop_token_ids(model, tokenizer) -> list[int]:
    """`<|im_end|>` plus every eos id the tokenizer and the model's generation config know."""
    ids: set[int] = set()
    candidates = [tokenizer.eos_token_id, getattr(getattr(model, "generation_config", None), "eos_token_id", None)]
    im_end = tokenizer.convert_tokens_to_ids(IM_END_TOKEN)
    if im_end is not None and im_end != tokenizer.unk_token_id:
        candidates.append(im_end)
    for candidate in candidates:
        if isinstance(candidate, int):
            ids.add(candidate)
        elif isinstance(candidate, (list, tuple)):
            ids.update(i for i in candidate if isinstance(i, int))
    if not ids:
        raise ValueError("no eos / <|im_end|> token id found: generation would never stop early")
    return sorted(ids)


def _generate(model, processor, items: list[_Item], max_new_tokens: int, stop_ids: list[int], pad_id: int):
    """Greedy-generate answers for `items` in one left-padded batch; returns (items kept, answers, skips)."""
    kept, images, skips = [], [], []
    for item in items:
        try:
            images.append(_load_images(item.images))
            kept.append(item)
        except _SkipRow as skip:
            skips.append((item.index, skip))
    if not kept:
        return kept, [], skips
    has_images = any(images)
    inputs = processor(
        images=images if has_images else None,
        text=[item.prompt for item in kept],
        padding=True,
        padding_side="left",  # generation appends on the right, so padding must sit on the left
        return_tensors="pt",
    )
    inputs.pop("token_type_ids", None)
    device = getattr(model, "device", torch.device("cpu"))
    inputs = inputs.to(device)
    output = model.generate(
        **inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
        eos_token_id=stop_ids, pad_token_id=pad_id,
    )
    new_tokens = output[:, inputs["input_ids"].shape[1]:].tolist()
    stop = set(stop_ids)
    answers = []
    for tokens in new_tokens:
        # Finished rows are padded after their eos; cut at the first stop token so nothing after it is decoded.
        end = next((i for i, t in enumerate(tokens) if t in stop), len(tokens))
        answers.append(processor.tokenizer.decode(tokens[:end], skip_special_tokens=True))
    return kept, answers, skips


def evaluate_model(
    model,
    processor,
    rows: Iterable[Any],
    image_root: str | os.PathLike | None = None,
    batch_size: int = 64,
    max_new_tokens: int = 8,
    num_examples: int = 5,
    allow_outside_root: bool = False,
) -> dict:
    """Exact-match accuracy of `model` on `rows`, overall and per question type.

    `image_root` resolves relative image paths (None: use them as given); a path leaving it is skipped as
    ``image_outside_root`` unless `allow_outside_root`. Returns ``{"overall", "per_type",
    "counts", "correct", "n", "skipped", "skip_reasons", "examples"}``: accuracies are in [0, 1] (``None`` when no
    row could be evaluated), ``counts`` / ``correct`` are per type and sum to ``n`` / the number correct, rows
    without a type count under ``"all"``, and ``examples`` holds the first `num_examples` predictions in input
    order.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    root = Path(image_root) if image_root is not None else None
    tokenizer = processor.tokenizer
    stop_ids = _stop_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]

    skip_reasons: Counter = Counter()
    n_logged = 0

    def record_skip(index: int, skip: _SkipRow):
        nonlocal n_logged
        skip_reasons[skip.reason] += 1
        if n_logged < _MAX_LOGGED_SKIPS:
            logger.warning("skipping row %d (%s): %s", index, skip.reason, skip)
            n_logged += 1

    items: list[_Item] = []
    for index, row in enumerate(rows):
        try:
            items.append(_prepare(index, row, processor, root, allow_outside_root))
        except _SkipRow as skip:
            record_skip(index, skip)

    # Similar lengths in one batch waste less compute on padding; results are keyed by row index, so order is free.
    ordered = sorted(items, key=lambda item: len(item.prompt))
    predictions: dict[int, tuple[_Item, str]] = {}
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(ordered), batch_size):
                kept, answers, skips = _generate(
                    model, processor, ordered[start:start + batch_size], max_new_tokens, stop_ids, pad_id
                )
                for index, skip in skips:
                    record_skip(index, skip)
                for item, answer in zip(kept, answers):
                    predictions[item.index] = (item, answer)
                logger.info("evaluated %d / %d rows", min(start + batch_size, len(ordered)), len(ordered))
    finally:
        if was_training:
            model.train()  # leave an in-process caller's model as it was

    counts: Counter = Counter()
    correct: Counter = Counter()
    examples = []
    for index in sorted(predictions):
        item, answer = predictions[index]
        hit = normalize_answer(answer) == normalize_answer(item.gold)
        counts[item.qtype] += 1
        correct[item.qtype] += hit
        if len(examples) < num_examples:
            examples.append({"index": index, "type": item.qtype, "question": item.question,
                             "prediction": answer, "answer": item.gold, "correct": hit})
    n = sum(counts.values())
    types = sorted(counts)
    return {
        "overall": sum(correct.values()) / n if n else None,
        "per_type": {t: correct[t] / counts[t] for t in types},
        "counts": {t: counts[t] for t in types},
        "correct": {t: correct[t] for t in types},
        "n": n,
        "skipped": sum(skip_reasons.values()),
        "skip_reasons": dict(sorted(skip_reasons.items())),
        "examples": examples,
    }


def load_for_inference(model_dir, device: str | None = None):
    """(model in eval mode on `device`, processor) of a saved folder, loaded as a Hub user loads them: the Auto
    classes with the folder's remote code. `device` None: cuda if available, else cpu."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    # bf16 on GPU halves memory and time; CPU kernels are fastest (and exact) in fp32.
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    processor = AutoProcessor.from_pretrained(model_dir, trust_remote_code=True)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, trust_remote_code=True, dtype=dtype)
    return model.to(device).eval(), processor


def evaluate_saved_model(model_dir, data, image_root=None, limit: int | None = None, device: str | None = None,
                         **kwargs) -> dict:
    """:func:`evaluate_model` on a saved folder and a data file (the first `limit` rows); relative image paths
    resolve against `image_root` (default: the data file's folder). `kwargs` go to `evaluate_model`."""
    model, processor = load_for_inference(model_dir, device)
    root = Path(image_root) if image_root else Path(data).resolve().parent
    return evaluate_model(model, processor, read_rows(data, limit=limit), image_root=root, **kwargs)


__all__ = ["SKIP_REASONS", "UNTYPED", "evaluate_model", "evaluate_saved_model", "load_for_inference", "read_rows"]
