"""Tests for processing/dataset.py: assistant-only labels, bad-row accounting, too-long rows, input formats, the epoch
sampler (packing equivalence is in test_collator.py)."""

import base64
import json
import shutil

import pytest
import torch
from torch.utils.data import DataLoader

from processing.collator import VLMCollator
from processing.dataset import EpochSampler, VLMDataset
from processing.labels import IGNORE_INDEX
from processing.synthetic import read_jsonl


def _labelled_spans(labels: torch.Tensor) -> list[list[int]]:
    """Maximal runs of labelled (!= -100) token ids."""
    spans, current = [], []
    for token in labels.tolist():
        if token == IGNORE_INDEX:
            if current:
                spans.append(current)
            current = []
        else:
            current.append(token)
    return spans + ([current] if current else [])


def test_labels_are_exactly_the_assistant_replies(tiny_processor, shapes_data):
    tokenizer = tiny_processor.tokenizer
    rows = read_jsonl(shapes_data / "sft.jsonl")
    dataset = VLMDataset(shapes_data / "sft.jsonl", tiny_processor)
    assert len(dataset) == len(rows) == dataset.stats.kept
    forbidden = {tokenizer.pad_token_id, tiny_processor.image_token_id, tiny_processor.vision_start_token_id,
                 tiny_processor.vision_end_token_id}
    for index, row in enumerate(rows):
        item = dataset[index]
        ids, labels = item["input_ids"], item["labels"]
        replies = [turn["content"] for turn in row["conversations"] if turn["role"] == "assistant"]
        decoded = [tokenizer.decode(span) for span in _labelled_spans(labels)]
        assert decoded == [reply + "<|im_end|>" for reply in replies]
        labelled = labels != IGNORE_INDEX
        assert torch.equal(labels[labelled], ids[labelled])  # labels are the tokens themselves, unshifted
        assert not set(ids[labelled].tolist()) & forbidden
        # The image block is whole: start, image_seq_length pads, end.
        n_pad = int((ids == tiny_processor.image_token_id).sum())
        assert n_pad == tiny_processor.image_seq_length and item["pixel_values"].shape[0] == 1
        start = int((ids == tiny_processor.vision_start_token_id).nonzero())
        assert ids[start + 1 + n_pad] == tiny_processor.vision_end_token_id

    batch = VLMCollator(tokenizer.pad_token_id)([dataset[i] for i in range(4)])
    pad_positions = batch["attention_mask"] == 0
    assert pad_positions.any() and (batch["labels"][pad_positions] == IGNORE_INDEX).all()
    assert batch["pixel_values"].shape == (4, 3, 48, 48)


def _write_bad_rows(root):
    """A data file with 2 good rows and one row per failure kind (the corrupt image is a file of junk bytes)."""
    good = read_jsonl(root / "sft.jsonl")[:2]
    (root / "images" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    user = {"role": "user", "content": "<image>\nWhat is this?"}
    reply = {"role": "assistant", "content": "a shape"}
    lines = [json.dumps(row) for row in good] + [
        json.dumps({"conversations": [user, reply], "image": "images/does_not_exist.png"}),  # missing_image
        json.dumps({"conversations": [user, reply], "image": "images/corrupt.png"}),  # corrupt_image
        json.dumps({"conversations": [user], "image": good[0]["image"]}),  # no_assistant_turn
        '{"conversations": [ this is not json',  # bad_json
        json.dumps({"conversations": [user, reply]}),  # placeholder_mismatch (1 placeholder, 0 images)
        json.dumps({"conversations": [{"role": "user", "content": 5}, reply]}),  # bad_structure
        # a literal image token in the text is a control token (it would be a placeholder without an image)
        json.dumps({"conversations": [{"role": "user", "content": "what is <|image_pad|>?"}, reply]}),
    ]
    path = root / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


EXPECTED_EAGER = {"missing_image": 1, "corrupt_image": 1, "no_assistant_turn": 1, "bad_json": 1,
                  "placeholder_mismatch": 1, "bad_structure": 1, "control_token": 1}


def test_bad_rows_are_counted_by_reason_and_skipped(tiny_processor, shapes_data, tmp_path):
    root = tmp_path / "d"
    shutil.copytree(shapes_data, root)
    path = _write_bad_rows(root)

    cached = VLMDataset(path, tiny_processor, cache_images=True)  # images decoded at load: corrupt one found there
    assert cached.stats.rows == 9 and cached.stats.kept == len(cached) == 2
    assert dict(cached.stats.skipped) == EXPECTED_EAGER

    # Lazy decoding: the corrupt image only fails inside the epoch; the collator drops it and the epoch completes.
    lazy = VLMDataset(path, tiny_processor, cache_images=False)
    assert len(lazy) == 3 and dict(lazy.stats.skipped) == {k: v for k, v in EXPECTED_EAGER.items()
                                                            if k != "corrupt_image"}
    loader = DataLoader(lazy, batch_size=2, collate_fn=VLMCollator(0), sampler=EpochSampler(len(lazy), seed=0))
    seen, skipped = 0, {}
    for batch in loader:
        for reason, count in batch["skipped"].items():
            skipped[reason] = skipped.get(reason, 0) + count
        seen += batch["input_ids"].shape[0] if "input_ids" in batch else 0
    assert seen == 2 and skipped == {"corrupt_image": 1}


def test_too_long_rows_are_dropped_whole(tiny_processor, shapes_data):
    full = VLMDataset(shapes_data / "sft.jsonl", tiny_processor)
    lengths = sorted(len(full.examples[i].input_ids) for i in range(len(full)))
    limit = lengths[len(lengths) // 2]
    short = VLMDataset(shapes_data / "sft.jsonl", tiny_processor, max_length=limit)
    expected_dropped = sum(n > limit for n in lengths)
    assert expected_dropped > 0 and short.stats.skipped["too_long"] == expected_dropped
    assert all(len(e.input_ids) <= limit for e in short.examples)


def test_parquet_bytes_multi_image_and_text_only_rows(tiny_processor, shapes_data, tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    png = [(shapes_data / f"images/train_{i:06d}.png").read_bytes() for i in range(2)]
    rows = [
        {"conversations": [{"role": "user", "content": "<image> and <image>: same?"},
                           {"role": "assistant", "content": "no"}],
         "image_bytes": [base64.b64encode(png[0]).decode(), base64.b64encode(png[1]).decode()]},
        {"conversations": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                           {"role": "assistant", "content": "hello"}], "image_bytes": None},
    ]
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    dataset = VLMDataset(path, tiny_processor)
    assert len(dataset) == 2 and not dataset.stats.skipped
    two, text = dataset[0], dataset[1]
    assert two["pixel_values"].shape[0] == 2
    assert int((two["input_ids"] == tiny_processor.image_token_id).sum()) == 2 * tiny_processor.image_seq_length
    assert text["pixel_values"] is None and dataset.has_text_only_rows
    batch = VLMCollator(0)([two, text])
    assert batch["pixel_values"].shape[0] == 2
    # images paths relative to an explicit root work as well
    jsonl = tmp_path / "paths.jsonl"
    jsonl.write_text(json.dumps({"images": ["images/train_000000.png", "images/train_000001.png"],
                                 "conversations": rows[0]["conversations"]}) + "\n")
    assert len(VLMDataset(jsonl, tiny_processor, image_root=shapes_data)) == 1


def test_epoch_sampler_is_a_function_of_seed_and_epoch():
    a, b = EpochSampler(50, seed=3), EpochSampler(50, seed=3)
    a.set_epoch(2)
    b.set_epoch(2)
    assert list(a) == list(b) and sorted(a) == list(range(50))
    b.set_epoch(3)
    assert list(a) != list(b)
    assert list(EpochSampler(50, seed=4)) != list(EpochSampler(50, seed=3))


def test_bfloat16_pixels_halve_the_cache_and_round_like_autocast(tiny_processor, shapes_data):
    path = shapes_data / "sft.jsonl"
    full = VLMDataset(path, tiny_processor, cache_images=True)
    half = VLMDataset(path, tiny_processor, cache_images=True, pixel_dtype=torch.bfloat16)
    lazy = VLMDataset(path, tiny_processor, cache_images=False, pixel_dtype=torch.bfloat16)
    assert full.pixel_cache.dtype == torch.float32 and half.pixel_cache.dtype == torch.bfloat16
    assert half.pixel_cache.nbytes * 2 == full.pixel_cache.nbytes
    assert torch.equal(half.pixel_cache, full.pixel_cache.to(torch.bfloat16))
    for i in range(len(full)):  # cached or decoded per access: the same values
        assert torch.equal(lazy[i]["pixel_values"], full[i]["pixel_values"].to(torch.bfloat16))
    # The cache budget counts the dtype's bytes: a budget between the two sizes caches only the bfloat16 pixels.
    budget = full.pixel_cache.nbytes - 1
    assert VLMDataset(path, tiny_processor, cache_bytes=budget, pixel_dtype=torch.bfloat16).pixel_cache is not None
    assert VLMDataset(path, tiny_processor, cache_bytes=budget).pixel_cache is None


def test_bfloat16_pixels_give_the_fp32_pixels_loss_and_gradients_under_bf16_autocast(tiny_processor, shapes_data):
    """Why the trainer keeps pixels in bfloat16 under bf16 mixed precision: the vision tower's patch convolution casts
    its input to bfloat16 under autocast, so bfloat16 pixels change nothing, bit for bit, tower trained or not."""
    from conftest import tiny_model

    dataset = VLMDataset(shapes_data / "sft.jsonl", tiny_processor, cache_images=True)
    batch = VLMCollator(dataset.pad_token_id)([dataset[i] for i in range(4)])
    model = tiny_model(seed=0).float().train()  # fp32 master weights, every part trained (the tower too)
    model.requires_grad_(True)

    def loss_and_grads(pixels):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
                         pixel_values=pixels).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    ref_loss, ref_grads = loss_and_grads(batch["pixel_values"])
    loss, grads = loss_and_grads(batch["pixel_values"].to(torch.bfloat16))
    assert batch["pixel_values"].dtype == torch.float32
    assert torch.equal(loss, ref_loss)
    assert any("vision_tower" in n for n in grads) and grads.keys() == ref_grads.keys()
    for name, grad in grads.items():
        assert torch.equal(grad, ref_grads[name]), name
