"""Exact-match evaluation of a MiniMind-V model on conversation rows (the synthetic ``eval.jsonl`` format).

Each row is ``{"conversations": [...], "image": "images/x.png" | [...], "type": "color" | ...}``. The conversation up
to (not including) its last assistant turn is the prompt, rendered with the processor's chat template and
``add_generation_prompt=True``; the last assistant turn is the gold answer. Prompts are generated greedily in
left-padded batches, stopping at ``<|im_end|>``, and a prediction counts as correct when
``normalize_answer(prediction) == normalize_answer(gold)``.

Rows that cannot be evaluated (malformed, no assistant turn, missing or unreadable image, image count not matching
the placeholders) are skipped and counted by reason rather than aborting the run, so a half-broken data file still
yields a score for the rest. ``evaluate_model`` is what ``scripts/evaluate.py`` and the demo call in-process.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import PIL.Image
import torch

from .synthetic import normalize_answer

logger = logging.getLogger(__name__)

UNTYPED = "all"  # type key for rows without a "type"
IM_END_TOKEN = "<|im_end|>"
IMAGE_PLACEHOLDER = "<image>"
_MAX_LOGGED_SKIPS = 5  # per evaluation: enough to see what is wrong without flooding the log


@dataclass
class _Item:
    """One evaluable row: its position in the input, prompt text, image paths and gold answer."""

    index: int
    qtype: str
    prompt: str
    question: str
    gold: str
    image_paths: list[Path] = field(default_factory=list)


class _SkipRow(Exception):
    """Raised while preparing a row that cannot be evaluated; `reason` is the counter key."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def read_rows(path: str | os.PathLike, limit: int | None = None) -> list[dict | None]:
    """Read a JSONL file; a line that is not valid JSON becomes ``None`` (skipped and counted by the evaluator)."""
    rows: list[dict | None] = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if limit is not None and len(rows) >= limit:
                break
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                logger.warning("%s line %d is not valid JSON (%s); it will be skipped", path, line_no, error)
                rows.append(None)
    return rows


def _text_of(content: Any) -> str:
    """The text of a message content: a string, or the concatenated text items of a content list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for item in content:
            if isinstance(item, str):
                parts.append(item)
            elif isinstance(item, dict) and item.get("type") == "text":
                parts.append(str(item.get("text", "")))
        return "".join(parts)
    raise _SkipRow("bad_row", f"message content must be a string or a list, got {type(content).__name__}")


def _image_paths(row: dict, image_root: Path | None) -> list[Path]:
    images = row.get("image", row.get("images"))
    if images is None:
        return []
    images = [images] if isinstance(images, (str, os.PathLike)) else images
    if not isinstance(images, list) or not all(isinstance(p, (str, os.PathLike)) for p in images):
        raise _SkipRow("bad_row", f"'image' must be a path or a list of paths, got {images!r:.80}")
    paths = [Path(p) if image_root is None or Path(p).is_absolute() else image_root / p for p in images]
    for path in paths:
        if not path.is_file():
            raise _SkipRow("missing_image", f"image not found: {path}")
    return paths


def _prepare(index: int, row: Any, processor, image_root: Path | None) -> _Item:
    if not isinstance(row, dict):
        raise _SkipRow("bad_row", "row is not a JSON object")
    conversations = row.get("conversations")
    if not isinstance(conversations, list) or not all(isinstance(m, dict) and "role" in m for m in conversations):
        raise _SkipRow("bad_row", "row has no valid 'conversations' list")
    assistant_turns = [i for i, m in enumerate(conversations) if m["role"] == "assistant"]
    if not assistant_turns:
        raise _SkipRow("bad_row", "conversation has no assistant turn to score against")
    last = assistant_turns[-1]
    messages = conversations[:last]
    if not messages:
        raise _SkipRow("bad_row", "conversation has nothing before its last assistant turn")
    gold = _text_of(conversations[last].get("content"))
    question = _text_of(messages[-1].get("content")).replace(IMAGE_PLACEHOLDER, "").strip()
    paths = _image_paths(row, image_root)
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    if isinstance(prompt, list):  # some transformers versions return a one-element batch
        prompt = prompt[0]
    # Checked per row here: inside a batch the processor would raise and take the whole batch down with it.
    n_placeholders = prompt.count(processor.image_token)
    if n_placeholders != len(paths):
        raise _SkipRow("image_count_mismatch",
                       f"prompt has {n_placeholders} image placeholder(s) but the row has {len(paths)} image(s)")
    qtype = row.get("type")
    return _Item(index, str(qtype) if qtype else UNTYPED, prompt, question, gold, paths)


def _load_images(paths: list[Path]) -> list[PIL.Image.Image]:
    images = []
    for path in paths:
        try:
            with PIL.Image.open(path) as image:
                image.load()  # decode now: a truncated file must fail here, not inside the processor
                images.append(image.copy())
        except (OSError, ValueError) as error:
            raise _SkipRow("unreadable_image", f"cannot read image {path}: {error}") from error
    return images


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
            images.append(_load_images(item.image_paths))
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
) -> dict:
    """Exact-match accuracy of `model` on `rows`, overall and per question type.

    `image_root` resolves relative image paths (None: use them as given). Returns ``{"overall", "per_type",
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
            items.append(_prepare(index, row, processor, root))
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


__all__ = ["UNTYPED", "evaluate_model", "read_rows"]
