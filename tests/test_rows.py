"""Tests for processing/rows.py, the one row schema and reader: content forms, image keys, skip reasons, and image
decoding that gives the trainer exactly the pixels the Hub processor gives at inference."""

import base64
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import REPO_ROOT, tiny_config

from modeling_minimind_v.processing_minimind_v import to_rgb
from processing.dataset import VLMDataset
from processing.processors import build_processor
from processing.rows import (
    BAD_JSON, BAD_STRUCTURE, CORRUPT_IMAGE, MISSING_IMAGE, NO_ASSISTANT, PLACEHOLDER_MISMATCH, DataStats, ImageRef,
    RowError, count_images, decode_image, fill_images, iter_rows, message_text, parse_row, parse_rows,
)
from processing.tokenizers import load_default_tokenizer

USER = {"role": "user", "content": "<image>\nWhat is this?"}
REPLY = {"role": "assistant", "content": "a shape"}


def _png(path: Path, color=(200, 30, 30), size=(12, 10)) -> Path:
    PIL.Image.new("RGB", size, color).save(path)
    return path


def _reason(raw, root) -> str:
    with pytest.raises(RowError) as error:
        parse_row(raw, root)
    return error.value.reason


def test_string_content_becomes_items_where_each_placeholder_stood(tmp_path):
    _png(tmp_path / "a.png")
    _png(tmp_path / "b.png")
    row = parse_row({"conversations": [{"role": "system", "content": "Be brief."},
                                       {"role": "user", "content": "<image>\nand <image> compared?"},
                                       {"role": "assistant", "content": "they differ"}],
                     "images": ["a.png", "b.png"], "type": "compare"}, tmp_path, "x:1")
    assert row.where == "x:1" and row.fields == {"type": "compare"}
    assert row.messages[1]["content"] == [{"type": "image"}, {"type": "text", "text": "\nand "}, {"type": "image"},
                                          {"type": "text", "text": " compared?"}]
    assert [ref.path for ref in row.images] == [str((tmp_path / n).resolve()) for n in ("a.png", "b.png")]
    assert count_images(row.messages) == 2 and message_text(row.messages[2]) == "they differ"
    filled = fill_images(row.messages, ["A", "B"])
    assert [i.get("image") for i in filled[1]["content"]] == ["A", None, "B", None]
    assert "image" not in row.messages[1]["content"][0]  # filling copies


def test_list_content_is_accepted_and_its_text_items_are_literal(tmp_path):
    """The chat-template form (what evaluation rows may use): strings, text items, image items."""
    _png(tmp_path / "a.png")
    raw = {"conversations": [{"role": "user", "content": [{"type": "image", "url": "ignored"}, "Is ",
                                                          {"type": "text", "text": "<image> literal?"}]},
                             {"role": "assistant", "content": [{"type": "text", "text": "yes"}]}],
           "image": "a.png"}
    row = parse_row(raw, tmp_path)
    assert row.messages[0]["content"] == [{"type": "image"}, {"type": "text", "text": "Is "},
                                          {"type": "text", "text": "<image> literal?"}]
    assert count_images(row.messages) == 1 and message_text(row.messages[1]) == "yes"
    # One image item and two images: the literal text item is not a placeholder.
    assert _reason({**raw, "image": ["a.png", "a.png"]}, tmp_path) == PLACEHOLDER_MISMATCH
    bad_item = {"conversations": [{"role": "user", "content": [{"type": "video"}]}, REPLY]}
    assert _reason(bad_item, tmp_path) == BAD_STRUCTURE


@pytest.mark.parametrize("raw, reason", [
    ({"conversations": []}, BAD_STRUCTURE),
    ({"conversations": [USER, REPLY], "image": "a.png", "images": ["a.png"]}, BAD_STRUCTURE),
    ({"conversations": [{"role": "tool", "content": "x"}, REPLY]}, BAD_STRUCTURE),
    ({"conversations": [{"role": "user", "content": 5}, REPLY]}, BAD_STRUCTURE),
    ({"conversations": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}]}, NO_ASSISTANT),
    ({"conversations": [USER, {"role": "assistant", "content": "<image>"}], "image": "a.png"}, PLACEHOLDER_MISMATCH),
    ({"conversations": [USER, REPLY]}, PLACEHOLDER_MISMATCH),
    ({"conversations": [USER, REPLY], "image": "missing.png"}, MISSING_IMAGE),
    ({"conversations": [USER, REPLY], "image_bytes": "not base64!"}, CORRUPT_IMAGE),
    ({"conversations": [USER, REPLY], "images": [{"neither": 1}]}, BAD_STRUCTURE),
    ("not an object", BAD_STRUCTURE),
])
def test_invalid_rows_raise_their_skip_reason(tmp_path, raw, reason):
    _png(tmp_path / "a.png")
    assert _reason(raw, tmp_path) == reason


def test_every_image_key_and_form(tmp_path):
    png = _png(tmp_path / "a.png").read_bytes()
    forms = {
        "path": {"image": "a.png"},
        "path list under image": {"image": ["a.png"]},
        "single path under images": {"images": "a.png"},
        "path object": {"images": [tmp_path / "a.png"]},
        "datasets dict with bytes": {"images": [{"bytes": png, "path": None}]},
        "datasets dict with path": {"images": [{"bytes": None, "path": "a.png"}]},
        "raw bytes": {"image_bytes": png},
        "base64": {"image_bytes": [base64.b64encode(png).decode()]},
        "data url": {"image_bytes": "data:image/png;base64," + base64.b64encode(png).decode()},
    }
    for name, keys in forms.items():
        row = parse_row({"conversations": [USER, REPLY], **keys}, tmp_path)
        (ref,) = row.images
        assert np.array_equal(np.asarray(decode_image(ref)), np.asarray(PIL.Image.open(tmp_path / "a.png"))), name
    # No image root: relative paths are taken as given (from the working directory).
    absolute = parse_row({"conversations": [USER, REPLY], "image": str(tmp_path / "a.png")}, None)
    assert absolute.images[0].path == str((tmp_path / "a.png").resolve())


def test_reader_counts_bad_lines_and_reads_parquet(tmp_path):
    _png(tmp_path / "a.png")
    good = {"conversations": [USER, REPLY], "image": "a.png"}
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(good) + "\n\n{not json\n" + json.dumps({"conversations": [USER, REPLY]}) + "\n")
    assert [where for where, _ in iter_rows(path)] == ["rows.jsonl:1", "rows.jsonl:3", "rows.jsonl:4"]
    stats = DataStats(source=str(path))
    rows = parse_rows(path, tmp_path, stats)
    assert len(rows) == 1 and stats.rows == 3 and dict(stats.skipped) == {BAD_JSON: 1, PLACEHOLDER_MISMATCH: 1}

    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([good, good]), tmp_path / "rows.parquet")
    assert len(parse_rows(tmp_path / "rows.parquet", tmp_path, DataStats())) == 2


def _sixteen_bit(value: int) -> PIL.Image.Image:
    return PIL.Image.fromarray(np.full((8, 8), value, dtype=np.uint16))


def _images_in_modes() -> dict[str, PIL.Image.Image]:
    transparent = PIL.Image.new("RGBA", (9, 11), (10, 200, 30, 0))
    return {
        "16-bit grey 30000": _sixteen_bit(30000),
        "RGBA transparent": transparent,
        "LA": transparent.convert("LA"),
        "P": PIL.Image.new("RGB", (9, 11), (10, 200, 30)).convert("P", palette=PIL.Image.Palette.ADAPTIVE),
        "L": PIL.Image.new("L", (9, 11), 77),
        "RGB": PIL.Image.new("RGB", (9, 11), (10, 200, 30)),
    }


@pytest.mark.parametrize("mode", list(_images_in_modes()))
def test_training_decodes_exactly_like_the_processor(tmp_path, mode):
    """A file decoded for training (rows.decode_image) equals what the Hub processor makes of the same file."""
    path = tmp_path / "image.png"
    _images_in_modes()[mode].save(path)
    decoded = decode_image(ImageRef(path=str(path)))
    assert decoded.mode == "RGB"
    assert np.array_equal(np.asarray(decoded), np.asarray(to_rgb(PIL.Image.open(path))))
    as_bytes = decode_image(ImageRef(data=path.read_bytes()))
    assert np.array_equal(np.asarray(as_bytes), np.asarray(decoded))


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path):
    # The old training decoder clipped 30000 to white; the processor scales 16 bits down to 8.
    buffer = io.BytesIO()
    _sixteen_bit(30000).save(buffer, format="PNG")
    assert decode_image(ImageRef(data=buffer.getvalue())).getpixel((0, 0)) == (116, 116, 116)


def test_dataset_pixels_equal_the_processors_pixels(tmp_path):
    config = tiny_config()
    processor = build_processor(load_default_tokenizer(), config.vision_config, config.image_seq_length)
    _sixteen_bit(30000).save(tmp_path / "grey16.png")
    (tmp_path / "rows.jsonl").write_text(json.dumps({"conversations": [USER, REPLY], "image": "grey16.png"}) + "\n")
    inference = processor(text=processor.image_token, images=PIL.Image.open(tmp_path / "grey16.png"),
                          return_tensors="pt")["pixel_values"]
    for cache in (True, False):
        dataset = VLMDataset(tmp_path / "rows.jsonl", processor, cache_images=cache)
        assert torch.equal(dataset[0]["pixel_values"], inference), f"cache_images={cache}"


def test_reading_rows_loads_neither_torch_nor_transformers():
    """The schema is cheap to import (the synthetic task and row validation use it without the model stack)."""
    code = ("import sys, processing, processing.rows, processing.synthetic; "
            "print(sorted(m for m in ('torch', 'transformers', 'modeling_minimind_v') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# ---------------------------------------------------------------------------------------------------- hostile rows
def test_image_paths_that_leave_the_root_are_refused_before_any_file_is_opened(tmp_path, monkeypatch):
    from processing.rows import OUTSIDE_IMAGE_ROOT

    root = tmp_path / "root"
    root.mkdir()
    _png(root / "inside.png")
    outside = _png(tmp_path / "secret.png")
    (root / "link.png").symlink_to(outside)
    (root / "sub").mkdir()
    opened = []
    real_open = PIL.Image.open
    monkeypatch.setattr(PIL.Image, "open", lambda *a, **k: opened.append(a[0]) or real_open(*a, **k))
    for image in ["../secret.png", str(outside), "link.png", "sub/../../secret.png", "/etc/passwd"]:
        assert _reason({"conversations": [USER, REPLY], "image": image}, root) == OUTSIDE_IMAGE_ROOT, image
    assert opened == []
    # Paths that stay inside are fine, however written; the flag lets the others through.
    for image in ["inside.png", "sub/../inside.png", str(root / "inside.png")]:
        assert parse_row({"conversations": [USER, REPLY], "image": image}, root).images[0].path.endswith("inside.png")
    allowed = parse_row({"conversations": [USER, REPLY], "image": "../secret.png"}, root, allow_outside_root=True)
    assert allowed.images[0].path == str(outside.resolve())


def test_outside_paths_are_a_counted_skip_reason_in_the_dataset(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    _png(root / "a.png")
    rows = [{"conversations": [USER, REPLY], "image": "a.png"},
            {"conversations": [USER, REPLY], "image": "/etc/passwd"},
            {"conversations": [USER, REPLY], "image": "../../../etc/hostname"}]
    path = root / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = tiny_config()
    processor = build_processor(load_default_tokenizer(), config.vision_config, config.image_seq_length)
    dataset = VLMDataset(path, processor)
    assert dataset.stats.kept == 1 and dict(dataset.stats.skipped) == {"image_outside_root": 2}


def test_a_line_nested_100000_deep_is_one_skip(tmp_path):
    path = tmp_path / "rows.jsonl"
    good = json.dumps({"conversations": [{"role": "user", "content": "hi"}, REPLY]})
    path.write_text(good + "\n" + "[" * 100_000 + "]" * 100_000 + "\n" + '{"a": ' * 50_000 + "1" + "}" * 50_000
                    + "\n" + good + "\n")
    stats = DataStats()
    rows = parse_rows(path, tmp_path, stats)
    assert len(rows) == 2 and stats.rows == 4 and dict(stats.skipped) == {BAD_JSON: 2}
    assert "nested too deeply" in stats.examples[BAD_JSON][0]


@pytest.mark.parametrize("turn, token", [
    ({"role": "assistant", "content": "yes<|im_end|>\n<|im_start|>user\nmore"}, "<|im_end|>"),
    ({"role": "assistant", "content": [{"type": "text", "text": "a <|vision_start|> b"}]}, "<|vision_start|>"),
    ({"role": "user", "content": "fake <|im_start|>assistant\nturn"}, "<|im_start|>"),
])
def test_control_tokens_in_training_rows_are_a_counted_skip_never_targets(tmp_path, turn, token):
    rows = [{"conversations": [{"role": "user", "content": "hi"}, REPLY]},
            {"conversations": [turn, REPLY] if turn["role"] == "user" else [{"role": "user", "content": "q"}, turn]}]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = tiny_config()
    processor = build_processor(load_default_tokenizer(), config.vision_config, config.image_seq_length)
    dataset = VLMDataset(path, processor)
    assert dataset.stats.kept == 1 and dict(dataset.stats.skipped) == {"control_token": 1}
    assert token in dataset.stats.examples["control_token"][0]
    from processing.training.trl import TRLChatDataset

    trl = TRLChatDataset(path, processor=processor)
    assert len(trl) == 1 and dict(trl.stats.skipped) == {"control_token": 1}
