"""The trainer's collator: dataset items -> padded (or packed, padding-free) batches, dropping and counting the items
whose image failed to load."""

from __future__ import annotations

import logging
from collections import Counter

import torch

from .labels import IGNORE_INDEX

logger = logging.getLogger(__name__)


class VLMCollator:
    """Batches dataset items; drops (and reports under ``"skipped"``) items that failed lazily.

    * padded (default): right padding to the longest row; ``input_ids``, ``attention_mask``, ``labels`` ``[B, L]``.
    * ``packing=True``: padding-free; all rows concatenated into ``[1, total]`` with ``position_ids`` restarting at 0
      per row and no attention mask: transformers' ``create_causal_mask`` finds the row boundaries from the position
      resets and builds a block-diagonal causal mask. The first label of every row is -100, so no token is trained
      to predict the next row's first token (in padded mode the label shift drops it anyway: losses match).

    ``pad_to_multiple_of`` rounds the batch length up (padded: more padding; packed: one trailing all-padding row of
    its own), so a compiled step sees few distinct shapes and does not recompile for every batch. ``pad_rows_to``
    (padded mode) fills a short batch (an epoch's last one, or one that lost rows to load errors) up to that many rows
    with copies of its last row whose labels are all -100: they add no loss and no gradient, and a compiled step
    keeps its batch size instead of recompiling (minutes at real model sizes). ``num_tokens`` / ``num_targets``
    count the real rows only. (With an MoE decoder the copies' tokens do enter the router balance loss, which averages
    over every attended token: one batch per epoch weights one row's routing a little more.)

    ``pixel_values`` are concatenated in order of appearance. Plain-int entries ``num_tokens`` (real tokens) and
    ``num_targets`` (tokens that are prediction targets after the shift) let the trainer weight losses without
    touching tensors; it removes ``num_tokens`` and ``skipped`` before calling the model and hands ``num_targets`` to
    the loss, which then selects the labelled positions without a device-to-host sync.
    """

    def __init__(self, pad_token_id: int, packing: bool = False, pad_to_multiple_of: int | None = None,
                 pad_rows_to: int | None = None):
        for name, value in (("pad_to_multiple_of", pad_to_multiple_of), ("pad_rows_to", pad_rows_to)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.pad_token_id = pad_token_id
        self.packing = packing
        self.pad_to_multiple_of = pad_to_multiple_of
        self.pad_rows_to = None if packing else pad_rows_to  # packed batches are one row whatever their count

    def _rounded(self, length: int) -> int:
        multiple = self.pad_to_multiple_of or 1
        return -(-length // multiple) * multiple

    def __call__(self, items: list[dict]) -> dict:
        skipped = Counter(item["skip"] for item in items if "skip" in item)
        for item in items:
            if "skip" in item:
                logger.warning("skipping %s (%s): %s", item["where"], item["skip"], item["detail"])
        items = [item for item in items if "skip" not in item]
        batch: dict = {"skipped": dict(skipped), "num_tokens": 0, "num_targets": 0}
        if not items:
            return batch
        lengths = [len(item["input_ids"]) for item in items]
        num_tokens = sum(lengths)
        if self.pad_rows_to and len(items) < self.pad_rows_to:
            filler = dict(items[-1], labels=torch.full_like(items[-1]["labels"], IGNORE_INDEX))
            items = items + [filler] * (self.pad_rows_to - len(items))
            lengths = [len(item["input_ids"]) for item in items]
        if self.packing:
            labels = torch.cat([item["labels"] for item in items])
            starts = torch.tensor([0] + lengths[:-1]).cumsum(0)
            labels[starts] = IGNORE_INDEX
            input_ids = torch.cat([item["input_ids"] for item in items])
            positions = [torch.arange(n) for n in lengths]
            pad = self._rounded(sum(lengths)) - sum(lengths)
            if pad:  # a trailing row of padding: its own document (positions restart), never a target
                input_ids = torch.cat([input_ids, torch.full((pad,), self.pad_token_id, dtype=torch.long)])
                labels = torch.cat([labels, torch.full((pad,), IGNORE_INDEX, dtype=torch.long)])
                positions.append(torch.arange(pad))
            batch["input_ids"] = input_ids.unsqueeze(0)
            batch["position_ids"] = torch.cat(positions).unsqueeze(0)
            batch["labels"] = labels.unsqueeze(0)
        else:
            size = (len(items), self._rounded(max(lengths)))
            input_ids = torch.full(size, self.pad_token_id, dtype=torch.long)
            labels = torch.full(size, IGNORE_INDEX, dtype=torch.long)
            attention_mask = torch.zeros(size, dtype=torch.long)
            for row, (item, n) in enumerate(zip(items, lengths)):
                input_ids[row, :n] = item["input_ids"]
                labels[row, :n] = item["labels"]
                attention_mask[row, :n] = 1
            batch.update(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
        pixels = [item["pixel_values"] for item in items if item["pixel_values"] is not None]
        if pixels:
            batch["pixel_values"] = torch.cat(pixels)
        batch["num_tokens"] = num_tokens
        batch["num_targets"] = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        return batch


__all__ = ["VLMCollator"]
