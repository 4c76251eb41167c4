"""The one row schema of MiniMind-V data and its reader: JSONL/Parquet rows -> validated conversations + images.

Row format (``.jsonl`` or ``.parquet``, one conversation per row)::

    {"conversations": [{"role": "user", "content": "<image>\\nWhat is this?"}, {"role": "assistant", "content": "..."}],
     "image": "images/x.png"}          # or "images": [paths], or "image_bytes": bytes | base64 str | list of them

* ``conversations``: a non-empty list of turns ``{"role": "system" | "user" | "assistant", "content": ...}``. Content
  is a string, in which each literal ``<image>`` marks where one image goes, or a list of items as chat templates
  take them (strings, ``{"type": "text", "text": ...}``, ``{"type": "image"}``; ``<image>`` inside a text item is
  literal text, as in the chat template). At least one assistant reply is non-empty; replies hold no image.
* images: at most one of ``image`` / ``images`` (a path or a list of paths, relative ones resolved against the image
  root; a datasets ``{"bytes": ..., "path": ...}`` dict works too) and ``image_bytes`` (raw bytes, a base64 string,
  or a list of them). Their number equals the number of placeholders. Text-only rows have neither. A path must stay
  inside the image root once resolved (``../``, absolute paths and symlinks that leave it are skipped as
  ``image_outside_root``) unless the reader is told ``allow_outside_root=True``: a data file cannot make the trainer
  open ``/etc/passwd``.
* any other key (``type``, ``objects``, ...) is kept in :attr:`Row.fields`.

A parsed :class:`Row` holds its messages in the chat-template form (content = list of text and image items), which
is what the processor, TRL and the evaluator all take. Every consumer reads through here (the trainer's dataset, the
TRL adapter, evaluation, the demo), so a row means the same everywhere; images are decoded by the Hub processor's
own RGB conversion, so training and inference see identical pixels. A row that cannot be used raises
:class:`RowError` with a skip reason, counted in a :class:`DataStats`.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import PIL.Image

IMAGE_PLACEHOLDER = "<image>"
ROLES = ("system", "user", "assistant")
IMAGE_KEYS = ("image", "images", "image_bytes")

# Skip reasons (keys of DataStats.skipped).
BAD_JSON = "bad_json"
BAD_STRUCTURE = "bad_structure"
NO_ASSISTANT = "no_assistant_turn"
PLACEHOLDER_MISMATCH = "placeholder_mismatch"
MISSING_IMAGE = "missing_image"
CORRUPT_IMAGE = "corrupt_image"
TOO_LONG = "too_long"
TEMPLATE_ERROR = "template_error"
OUTSIDE_IMAGE_ROOT = "image_outside_root"
CONTROL_TOKEN = "control_token"


class RowError(ValueError):
    """A row that cannot be used; `reason` is one of the skip reasons above."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass
class DataStats:
    """Rows read, kept and skipped (by reason) for one data file; `skipped` also grows while training (lazy images)."""

    source: str = ""
    rows: int = 0
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)
    # A few examples per reason, so a log line can say *which* rows were bad.
    examples: dict = field(default_factory=dict)

    def skip(self, reason: str, where: str, detail: str = "") -> None:
        self.skipped[reason] += 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < 3:
            shown.append(f"{where}: {detail}"[:200])

    def as_dict(self) -> dict:
        return {"source": self.source, "rows": self.rows, "kept": self.kept, "skipped": dict(self.skipped)}

    def summary(self) -> str:
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(self.skipped.items())) or "none"
        return f"{self.source}: {self.rows} rows read, {self.kept} kept, skipped: {reasons}"

    def log(self, logger: logging.Logger) -> None:
        """The summary line plus a few skipped rows per reason, at INFO."""
        logger.info("data %s", self.summary())
        for reason, shown in self.examples.items():
            logger.info("  skipped (%s), e.g. %s", reason, "; ".join(shown))


@dataclass(frozen=True)
class ImageRef:
    """Where an image comes from: a file path or raw encoded bytes."""

    path: str | None = None
    data: bytes | None = None

    def key(self):
        # Rows that share an image file share one decoded copy.
        return ("path", self.path) if self.path is not None else ("bytes", id(self.data))

    def describe(self) -> str:
        return self.path or "<bytes>"


@dataclass
class Row:
    """One valid row: messages in chat-template form, its images in order of appearance, and its other keys."""

    where: str
    messages: list[dict]  # [{"role", "content": [{"type": "text", "text"} | {"type": "image"}, ...]}]
    images: list[ImageRef]
    fields: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------------------------------

def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[str, dict | RowError]]:
    """Yield ``(location, object)`` per non-blank line of a JSON-lines file; a line that is not JSON yields a
    :class:`RowError` instead of raising, so one bad (or torn) line costs one record."""
    path = Path(path)
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            where = f"{path.name}:{line_no}"
            try:
                yield where, json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                yield where, RowError(BAD_JSON, str(error))
            except RecursionError:  # a line nested thousands of levels deep costs one row, not the whole load
                yield where, RowError(BAD_JSON, "nested too deeply to parse")


def iter_rows(path: str | os.PathLike) -> Iterator[tuple[str, dict | RowError]]:
    """Yield ``(location, raw row)`` for every row of a .jsonl (JSON lines) or .parquet file; undecodable lines
    yield a :class:`RowError`."""
    path = Path(path)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq  # optional dependency, only needed for parquet input

        for index, row in enumerate(pq.read_table(path).to_pylist()):
            yield f"{path.name}[{index}]", row
        return
    yield from iter_jsonl(path)


def parse_rows(path: str | os.PathLike, image_root: Path | None, stats: DataStats,
               allow_outside_root: bool = False) -> list[Row]:
    """Every valid row of a data file; invalid rows are counted in ``stats``."""
    parsed = []
    for where, raw in iter_rows(path):
        stats.rows += 1
        try:
            parsed.append(parse_row(raw, image_root, where, allow_outside_root=allow_outside_root))
        except RowError as error:
            stats.skip(error.reason, where, str(error))
        except RecursionError:  # a deeply nested (but parsable) row
            stats.skip(BAD_STRUCTURE, where, "nested too deeply")
    return parsed


# ----------------------------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------------------------

def parse_row(raw, image_root: Path | None, where: str = "", allow_outside_root: bool = False) -> Row:
    """Validate one raw row (a dict, or the RowError a reader yielded for it); return it as a :class:`Row` or raise
    :class:`RowError`. Relative image paths resolve against `image_root` (None: the working directory, and no
    confinement); a path that leaves `image_root` is refused unless `allow_outside_root`."""
    if isinstance(raw, RowError):
        raise raw
    if not isinstance(raw, dict):
        raise RowError(BAD_STRUCTURE, f"row must be an object, got {type(raw).__name__}")
    conversations = raw.get("conversations")
    if not isinstance(conversations, list) or not conversations:
        raise RowError(BAD_STRUCTURE, "'conversations' must be a non-empty list")
    messages = [_message(i, turn) for i, turn in enumerate(conversations)]
    if not any(m["role"] == "assistant" and message_text(m).strip() for m in messages):
        raise RowError(NO_ASSISTANT, "no non-empty assistant turn")
    images = _image_refs(raw, image_root, allow_outside_root)
    n_placeholders = count_images(messages)
    if n_placeholders != len(images):
        raise RowError(PLACEHOLDER_MISMATCH,
                       f"{n_placeholders} {IMAGE_PLACEHOLDER} placeholder(s), {len(images)} image(s)")
    fields = {k: v for k, v in raw.items() if k != "conversations" and k not in IMAGE_KEYS}
    return Row(where, messages, images, fields)


def _message(index: int, turn) -> dict:
    if not isinstance(turn, dict):
        raise RowError(BAD_STRUCTURE, f"conversations[{index}] must be an object")
    role, content = turn.get("role"), turn.get("content")
    if role not in ROLES:
        raise RowError(BAD_STRUCTURE, f"conversations[{index}].role={role!r} is not one of {ROLES}")
    items = _content_items(index, content)
    if role == "assistant" and any(item["type"] == "image" for item in items):
        # Image tokens inside a reply would sit in the labelled span; the model never generates images.
        raise RowError(PLACEHOLDER_MISMATCH, f"conversations[{index}] is an assistant turn containing an image")
    return {"role": role, "content": items}


def _content_items(index: int, content) -> list[dict]:
    """String content -> text and image items, one image item where each ``<image>`` stood; list content checked
    item by item (``<image>`` inside a text item stays text, as the chat template treats it)."""
    if isinstance(content, str):
        items = []
        for k, piece in enumerate(content.split(IMAGE_PLACEHOLDER)):
            if k > 0:
                items.append({"type": "image"})
            if piece:
                items.append({"type": "text", "text": piece})
        return items
    if not isinstance(content, list):
        raise RowError(BAD_STRUCTURE,
                       f"conversations[{index}].content must be a string or a list, got {type(content).__name__}")
    items = []
    for k, item in enumerate(content):
        if isinstance(item, str):
            items.append({"type": "text", "text": item})
        elif isinstance(item, dict) and item.get("type") == "text" and isinstance(item.get("text", ""), str):
            items.append({"type": "text", "text": item.get("text", "")})
        elif isinstance(item, dict) and item.get("type") == "image":
            items.append({"type": "image"})  # the image itself comes from the row's image keys
        else:
            raise RowError(BAD_STRUCTURE, f"conversations[{index}].content[{k}] is not a text or image item: "
                                          f"{item!r:.80}")
    return items


def _as_bytes(value, where: str) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, dict) and value.get("bytes") is not None:  # datasets' Image feature stored in parquet
        return _as_bytes(value["bytes"], where)
    if isinstance(value, str):
        text = value.split(",", 1)[1] if value.startswith("data:") else value
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as error:
            raise RowError(CORRUPT_IMAGE, f"{where} is not valid base64: {error}") from error
    raise RowError(BAD_STRUCTURE, f"{where} must be bytes or a base64 string, got {type(value).__name__}")


def _inside(path: Path, root: Path) -> bool:
    """Whether `path`, symlinks resolved, lies inside `root` (also resolved)."""
    try:
        return path.resolve().is_relative_to(root.resolve())
    except (OSError, RuntimeError):  # a symlink loop
        return False


def _image_refs(raw: dict, image_root: Path | None, allow_outside_root: bool = False) -> list[ImageRef]:
    present = [key for key in IMAGE_KEYS if raw.get(key) is not None]
    if len(present) > 1:
        raise RowError(BAD_STRUCTURE, f"row has more than one of {present}")
    if not present:
        return []
    key = present[0]
    values = raw[key] if isinstance(raw[key], list) else [raw[key]]
    if key == "image_bytes":
        return [ImageRef(data=_as_bytes(v, f"image_bytes[{i}]")) for i, v in enumerate(values)]
    refs = []
    for i, item in enumerate(values):
        if isinstance(item, dict) and item.get("bytes") is not None:
            refs.append(ImageRef(data=_as_bytes(item, f"{key}[{i}]")))
            continue
        if isinstance(item, dict) and item.get("path"):
            item = item["path"]
        if isinstance(item, os.PathLike):
            item = os.fspath(item)
        if not isinstance(item, str) or not item:
            raise RowError(BAD_STRUCTURE, f"{key}[{i}] must be a non-empty path string, got {item!r:.80}")
        if "\x00" in item:
            raise RowError(BAD_STRUCTURE, f"{key}[{i}] contains a NUL character")
        path = Path(item) if image_root is None or os.path.isabs(item) else Path(image_root) / item
        if image_root is not None and not allow_outside_root and not _inside(path, Path(image_root)):
            # Checked before the file is even looked at: a row must not make the reader open files elsewhere.
            raise RowError(OUTSIDE_IMAGE_ROOT, f"{key}[{i}]={item!r:.120} leaves the image root {image_root} (allow "
                                               "it with --allow-outside-image-root)")
        if not path.is_file():
            raise RowError(MISSING_IMAGE, str(path))
        refs.append(ImageRef(path=str(path.resolve())))
    return refs


# ----------------------------------------------------------------------------------------------------------------------
# Messages
# ----------------------------------------------------------------------------------------------------------------------

def message_text(message: dict) -> str:
    """The text of a parsed message: its text items joined (image items contribute nothing)."""
    return "".join(item["text"] for item in message["content"] if item["type"] == "text")


def count_images(messages: list[dict]) -> int:
    return sum(item["type"] == "image" for message in messages for item in message["content"])


def fill_images(messages: list[dict], images: list) -> list[dict]:
    """Copies of `messages` with `images`, in order, put into their image items (what the processor reads)."""
    remaining = iter(images)
    return [
        {**m, "content": [{**item, "image": next(remaining)} if item["type"] == "image" else item
                          for item in m["content"]]}
        for m in messages
    ]


# ----------------------------------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------------------------------

def decode_image(ref: ImageRef) -> PIL.Image.Image:
    """Decode fully (``load`` catches truncated files) and convert to RGB exactly as the Hub processor does at
    inference (transparent pixels onto white, 16-bit and float images scaled), so training sees the same pixels."""
    # Imported here, not at the top: importing the Hub code's package loads torch, transformers and the model,
    # seconds that the synthetic task and the CLIs that only validate rows should not pay.
    from modeling_minimind_v.processing_minimind_v import to_rgb

    try:
        image = PIL.Image.open(ref.path if ref.path is not None else io.BytesIO(ref.data))
        image.load()
        rgb = to_rgb(image)
    except Exception as error:  # PIL raises many types (OSError, SyntaxError, ValueError, DecompressionBomb...)
        raise RowError(CORRUPT_IMAGE, f"{ref.describe()}: {error}") from error
    # An RGB file comes back as the file's own image object; hand out a plain in-memory copy, detached from it.
    return rgb.copy() if rgb is image else rgb


__all__ = [
    "BAD_JSON", "BAD_STRUCTURE", "CONTROL_TOKEN", "CORRUPT_IMAGE", "DataStats", "IMAGE_PLACEHOLDER", "ImageRef",
    "MISSING_IMAGE", "NO_ASSISTANT", "OUTSIDE_IMAGE_ROOT", "PLACEHOLDER_MISMATCH", "ROLES", "Row", "RowError",
    "TEMPLATE_ERROR", "TOO_LONG", "count_images", "decode_image", "fill_images", "iter_jsonl", "iter_rows",
    "message_text", "parse_row", "parse_rows",
]
