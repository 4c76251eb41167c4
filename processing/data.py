"""Training data for MiniMind-V: chat rows with images -> token ids, assistant-only labels and pixel values.

Row format (``.jsonl`` or ``.parquet``, one conversation per row)::

    {"conversations": [{"role": "user", "content": "<image>\\nWhat is this?"}, {"role": "assistant", "content": "..."}],
     "image": "images/x.png"}          # or "images": [paths], or "image_bytes": bytes | base64 str | list of them

Each literal ``<image>`` marks where one image goes; their count must equal the number of images. Text-only rows
(no image, no ``<image>``) are allowed. Relative image paths resolve against ``image_root`` (default: the data file's
folder).

Where validation happens:

* at load (eager): JSON/parquet decoding, row structure and types, roles, the presence of an assistant reply, the
  placeholder/image count, image files existing, the chat template, and ``max_length`` (a row that does not fit is
  dropped whole, so an image block is never cut). Text is tokenized once here, in batches, through the processor's
  chat template; labels keep only the assistant replies and their ``<|im_end|>``.
* image decoding: eagerly too when the images are cached in memory (the default when they fit the cache budget),
  otherwise lazily in ``__getitem__``; a row whose image fails to decode then comes back as a skip marker that the
  collator drops and counts, so one bad file never ends an epoch.

Every skipped row is counted by reason in a :class:`DataStats`.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import PIL.Image
import torch
from torch.utils.data import Dataset, Sampler

logger = logging.getLogger(__name__)

IMAGE_PLACEHOLDER = "<image>"
IGNORE_INDEX = -100
ROLES = ("system", "user", "assistant")
DEFAULT_IMAGE_CACHE_BYTES = 2 * 1024**3
TOKENIZE_CHUNK = 256

# Skip reasons (keys of DataStats.skipped).
BAD_JSON = "bad_json"
BAD_STRUCTURE = "bad_structure"
NO_ASSISTANT = "no_assistant_turn"
PLACEHOLDER_MISMATCH = "placeholder_mismatch"
MISSING_IMAGE = "missing_image"
CORRUPT_IMAGE = "corrupt_image"
TOO_LONG = "too_long"
TEMPLATE_ERROR = "template_error"

_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}


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


# ----------------------------------------------------------------------------------------------------------------------
# Reading rows
# ----------------------------------------------------------------------------------------------------------------------

def iter_rows(path: str | os.PathLike) -> Iterator[tuple[str, dict | RowError]]:
    """Yield ``(location, row)`` for every row of a .jsonl/.json-lines or .parquet file; undecodable lines yield a
    :class:`RowError` instead of raising, so one bad line costs one row."""
    path = Path(path)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq  # optional dependency, only needed for parquet input

        table = pq.read_table(path)
        for index, row in enumerate(table.to_pylist()):
            yield f"{path.name}[{index}]", row
        return
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            where = f"{path.name}:{line_no}"
            try:
                row = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                yield where, RowError(BAD_JSON, str(error))
                continue
            yield where, row


@dataclass(frozen=True)
class ImageRef:
    """Where an image comes from: a file path or raw encoded bytes."""

    path: str | None = None
    data: bytes | None = None

    def key(self):
        # Rows that share an image file share one decoded copy.
        return ("path", self.path) if self.path is not None else ("bytes", id(self.data))


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


def _image_refs(row: dict, image_root: Path) -> list[ImageRef]:
    present = [key for key in ("image", "images", "image_bytes") if row.get(key) is not None]
    if len(present) > 1:
        raise RowError(BAD_STRUCTURE, f"row has more than one of {present}")
    if not present:
        return []
    key = present[0]
    value = row[key]
    if key == "image_bytes":
        values = value if isinstance(value, list) else [value]
        return [ImageRef(data=_as_bytes(v, f"image_bytes[{i}]")) for i, v in enumerate(values)]
    values = [value] if key == "image" else value
    if not isinstance(values, list):
        raise RowError(BAD_STRUCTURE, f"'images' must be a list of paths, got {type(values).__name__}")
    refs = []
    for i, item in enumerate(values):
        if isinstance(item, dict) and (item.get("bytes") is not None or item.get("path")):
            if item.get("bytes") is not None:
                refs.append(ImageRef(data=_as_bytes(item, f"{key}[{i}]")))
                continue
            item = item["path"]
        if not isinstance(item, str) or not item:
            raise RowError(BAD_STRUCTURE, f"{key}[{i}] must be a non-empty path string, got {item!r:.80}")
        path = Path(item) if os.path.isabs(item) else image_root / item
        if not path.is_file():
            raise RowError(MISSING_IMAGE, str(path))
        refs.append(ImageRef(path=str(path.resolve())))
    return refs


def parse_row(row, image_root: Path) -> tuple[list[dict], list[ImageRef]]:
    """Validate one row; return its messages and image references or raise :class:`RowError`."""
    if isinstance(row, RowError):
        raise row
    if not isinstance(row, dict):
        raise RowError(BAD_STRUCTURE, f"row must be an object, got {type(row).__name__}")
    conversations = row.get("conversations")
    if not isinstance(conversations, list) or not conversations:
        raise RowError(BAD_STRUCTURE, "'conversations' must be a non-empty list")
    messages = []
    for i, turn in enumerate(conversations):
        if not isinstance(turn, dict):
            raise RowError(BAD_STRUCTURE, f"conversations[{i}] must be an object")
        role, content = turn.get("role"), turn.get("content")
        if role not in ROLES:
            raise RowError(BAD_STRUCTURE, f"conversations[{i}].role={role!r} is not one of {ROLES}")
        if not isinstance(content, str):
            raise RowError(BAD_STRUCTURE, f"conversations[{i}].content must be a string, got {type(content).__name__}")
        if role == "assistant" and IMAGE_PLACEHOLDER in content:
            # Image tokens inside a reply would sit in the labelled span; the model never generates images.
            raise RowError(PLACEHOLDER_MISMATCH,
                           f"conversations[{i}] is an assistant turn containing {IMAGE_PLACEHOLDER}")
        messages.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
        raise RowError(NO_ASSISTANT, "no non-empty assistant turn")
    images = _image_refs(row, image_root)
    n_placeholders = sum(m["content"].count(IMAGE_PLACEHOLDER) for m in messages)
    if n_placeholders != len(images):
        raise RowError(PLACEHOLDER_MISMATCH,
                       f"{n_placeholders} {IMAGE_PLACEHOLDER} placeholder(s), {len(images)} image(s)")
    return messages, images


def parse_rows(path: Path, image_root: Path, stats: "DataStats") -> list[tuple[str, list[dict], list["ImageRef"]]]:
    """Every valid row of a data file as (where, messages, image refs); invalid rows are counted in ``stats``."""
    parsed = []
    for where, row in iter_rows(path):
        stats.rows += 1
        try:
            messages, refs = parse_row(row, image_root)
        except RowError as error:
            stats.skip(error.reason, where, str(error))
            continue
        parsed.append((where, messages, refs))
    return parsed

def _to_content_items(messages: list[dict], image) -> list[dict]:
    """String content with `<image>` -> list content with image items, so the chat template emits one placeholder per
    image and the processor expands it (a stand-in image is enough: only the text side is kept)."""
    out = []
    for message in messages:
        items = []
        for k, piece in enumerate(message["content"].split(IMAGE_PLACEHOLDER)):
            if k > 0:
                items.append({"type": "image", "image": image})
            if piece:
                items.append({"type": "text", "text": piece})
        out.append({"role": message["role"], "content": items})
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------------------------------

def decode_image(ref: ImageRef) -> PIL.Image.Image:
    """Decode fully (``load`` catches truncated files) into RGB; transparent pixels composite onto white."""
    try:
        image = PIL.Image.open(ref.path if ref.path is not None else io.BytesIO(ref.data))
        image.load()
        if image.width == 0 or image.height == 0:
            raise ValueError("empty image")
        if image.mode in _ALPHA_MODES or (image.mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            background = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return PIL.Image.alpha_composite(background, rgba).convert("RGB")
        return image.convert("RGB")
    except Exception as error:  # PIL raises many types (OSError, SyntaxError, ValueError, DecompressionBomb...)
        raise RowError(CORRUPT_IMAGE, f"{ref.path or '<bytes>'}: {error}") from error


def _pixel_values(image_processor, images: Sequence[PIL.Image.Image]) -> torch.Tensor:
    return image_processor(images=list(images), return_tensors="pt", input_data_format="channels_last")["pixel_values"]


# ----------------------------------------------------------------------------------------------------------------------
# Dataset
# ----------------------------------------------------------------------------------------------------------------------

@dataclass
class Example:
    input_ids: torch.Tensor  # [L] int64
    labels: torch.Tensor  # [L] int64, IGNORE_INDEX outside assistant replies
    image_ids: tuple[int, ...]  # indices into the dataset's image table, in order of appearance
    where: str


class VLMDataset(Dataset):
    """Pre-tokenized chat rows with assistant-only labels; images cached as pixel tensors or decoded lazily.

    ``__getitem__`` returns ``{"input_ids", "labels", "pixel_values" (or None)}``, or ``{"skip": reason, ...}`` when
    a lazily decoded image fails (the collator drops those).

    Args:
        path: .jsonl or .parquet file.
        processor: a MiniMindVProcessor (chat template, tokenizer, image processor).
        image_root: folder that relative image paths resolve against (default: the data file's folder).
        max_length: rows with more tokens are dropped (``too_long``); None keeps all.
        cache_images: decode every image once at load and keep the pixel tensors (True), decode per access (False),
            or cache when the pixel tensors fit ``cache_bytes`` (None).
    """

    def __init__(self, path, processor, image_root=None, max_length: int | None = None,
                 cache_images: bool | None = None, cache_bytes: int = DEFAULT_IMAGE_CACHE_BYTES):
        self.path = Path(path)
        self.processor = processor
        self.image_root = Path(image_root) if image_root is not None else self.path.resolve().parent
        self.max_length = max_length
        self.stats = DataStats(source=str(self.path))
        tokenizer = processor.tokenizer
        # Never labelled, even if a template change put them inside a generation block.
        self._unlabelled_ids = torch.tensor(sorted({
            tid for tid in (tokenizer.pad_token_id, processor.image_token_id, processor.vision_start_token_id,
                            processor.vision_end_token_id) if tid is not None
        }))
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

        parsed = parse_rows(self.path, self.image_root, self.stats)

        self.image_refs: list[ImageRef] = []
        image_index: dict = {}
        self.examples: list[Example] = []
        for start in range(0, len(parsed), TOKENIZE_CHUNK):
            chunk = parsed[start : start + TOKENIZE_CHUNK]  # batched templating is ~4x faster than row by row
            for (where, _, refs), encoded in zip(chunk, self._tokenize([messages for _, messages, _ in chunk])):
                if isinstance(encoded, RowError):
                    self.stats.skip(encoded.reason, where, str(encoded))
                    continue
                input_ids, labels = encoded
                if max_length is not None and len(input_ids) > max_length:
                    # Cutting could split an image block or leave a reply without its end; drop the row whole.
                    self.stats.skip(TOO_LONG, where, f"{len(input_ids)} tokens > max_length={max_length}")
                    continue
                ids = []
                for ref in refs:
                    key = ref.key()
                    if key not in image_index:
                        image_index[key] = len(self.image_refs)
                        self.image_refs.append(ref)
                    ids.append(image_index[key])
                self.examples.append(Example(input_ids, labels, tuple(ids), where))

        self.pixel_cache: torch.Tensor | None = None
        if cache_images is None:
            vision = self._image_shape()
            cache_images = len(self.image_refs) * 4 * vision[0] * vision[1] * vision[2] <= cache_bytes
        if cache_images and self.image_refs:
            self._cache_all_images()
        self.stats.kept = len(self.examples)
        logger.info("data %s", self.stats.summary())
        for reason, shown in self.stats.examples.items():
            logger.info("  skipped (%s), e.g. %s", reason, "; ".join(shown))

    # ------------------------------------------------------------------ construction helpers
    def _image_shape(self) -> tuple[int, int, int]:
        dummy = _pixel_values(self.processor.image_processor, [PIL.Image.new("RGB", (8, 8))])
        return tuple(dummy.shape[1:])

    def _tokenize(self, batch: list[list[dict]]) -> list:
        """Chat-template a batch of conversations; returns per row ``(input_ids, labels)`` or a RowError."""
        stand_in = PIL.Image.new("RGB", (1, 1))
        conversations = [_to_content_items(messages, stand_in) for messages in batch]
        try:
            encoded = self.processor.apply_chat_template(
                conversations, tokenize=True, return_dict=True, return_assistant_tokens_mask=True,
                processor_kwargs={"padding": True, "padding_side": "right"},
            )
        except Exception as error:  # the template or the processor rejected a conversation
            if len(batch) > 1:  # one bad row fails the whole batch: redo it row by row to find it
                return [self._tokenize([messages])[0] for messages in batch]
            reason = PLACEHOLDER_MISMATCH if "placeholder" in str(error) else TEMPLATE_ERROR
            return [RowError(reason, str(error)[:200])]
        rows = []
        for ids, mask, assistant in zip(encoded["input_ids"], encoded["attention_mask"], encoded["assistant_masks"]):
            length = sum(mask)
            rows.append(self._labels(torch.tensor(ids[:length]), torch.tensor(assistant[:length], dtype=torch.bool)))
        return rows

    def _labels(self, input_ids: torch.Tensor, assistant: torch.Tensor):
        keep = assistant & ~torch.isin(input_ids, self._unlabelled_ids)
        if not bool(keep.any()):
            return RowError(NO_ASSISTANT, "no labelled token after templating")
        labels = torch.where(keep, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
        return input_ids, labels

    def _cache_all_images(self, chunk: int = 256) -> None:
        """Decode and preprocess every image once; rows with an undecodable image are dropped here."""
        bad: set[int] = set()
        tensors, position = [], {}
        for start in range(0, len(self.image_refs), chunk):
            decoded = []
            for index in range(start, min(start + chunk, len(self.image_refs))):
                try:
                    decoded.append((index, decode_image(self.image_refs[index])))
                except RowError:
                    bad.add(index)
            if decoded:
                pixels = _pixel_values(self.processor.image_processor, [image for _, image in decoded])
                for (index, _), pixel in zip(decoded, pixels):
                    position[index] = len(tensors)
                    tensors.append(pixel)
        kept = []
        for example in self.examples:
            failed = [i for i in example.image_ids if i in bad]
            if failed:
                self.stats.skip(CORRUPT_IMAGE, example.where, self.image_refs[failed[0]].path or "<bytes>")
                continue
            example.image_ids = tuple(position[i] for i in example.image_ids)
            kept.append(example)
        self.examples = kept
        self.pixel_cache = torch.stack(tensors) if tensors else None
        self.image_refs = []  # the decoded tensors replace the references (and free any raw bytes)

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return len(self.examples)

    def num_tokens(self, index: int) -> int:
        return len(self.examples[index].input_ids)

    @property
    def has_text_only_rows(self) -> bool:
        return any(not example.image_ids for example in self.examples)

    def __getitem__(self, index: int) -> dict:
        example = self.examples[index]
        pixel_values = None
        if example.image_ids:
            if self.pixel_cache is not None:
                pixel_values = self.pixel_cache[list(example.image_ids)]
            else:
                try:
                    images = [decode_image(self.image_refs[i]) for i in example.image_ids]
                except RowError as error:
                    return {"skip": error.reason, "where": example.where, "detail": str(error)}
                pixel_values = _pixel_values(self.processor.image_processor, images)
        return {"input_ids": example.input_ids, "labels": example.labels, "pixel_values": pixel_values}


# ----------------------------------------------------------------------------------------------------------------------
# Collation and sampling
# ----------------------------------------------------------------------------------------------------------------------

class VLMCollator:
    """Batches dataset items; drops (and reports under ``"skipped"``) items that failed lazily.

    * padded (default): right padding to the longest row; ``input_ids``, ``attention_mask``, ``labels`` ``[B, L]``.
    * ``packing=True``: padding-free; all rows concatenated into ``[1, total]`` with ``position_ids`` restarting at 0
      per row and no attention mask: transformers' ``create_causal_mask`` finds the row boundaries from the position
      resets and builds a block-diagonal causal mask. The first label of every row is -100, so no token is trained
      to predict the next row's first token (in padded mode the label shift drops it anyway: losses match).

    ``pixel_values`` are concatenated in order of appearance. Plain-int entries ``num_tokens`` (real tokens) and
    ``num_targets`` (tokens that are prediction targets after the shift) let the trainer weight losses without
    touching tensors; it removes them, and ``skipped``, before calling the model.
    """

    def __init__(self, pad_token_id: int, packing: bool = False):
        self.pad_token_id = pad_token_id
        self.packing = packing

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
        if self.packing:
            labels = torch.cat([item["labels"] for item in items])
            starts = torch.tensor([0] + lengths[:-1]).cumsum(0)
            labels[starts] = IGNORE_INDEX
            batch["input_ids"] = torch.cat([item["input_ids"] for item in items]).unsqueeze(0)
            batch["position_ids"] = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0)
            batch["labels"] = labels.unsqueeze(0)
        else:
            size = (len(items), max(lengths))
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
        batch["num_tokens"] = sum(lengths)
        batch["num_targets"] = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        return batch


class EpochSampler(Sampler):
    """Index order that is a pure function of (seed, epoch): a resumed run sees exactly the same order."""

    def __init__(self, length: int, seed: int, shuffle: bool = True):
        self.length = length
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        if not self.shuffle:
            return iter(range(self.length))
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.length, generator=generator).tolist())


__all__ = [
    "DataStats", "EpochSampler", "IGNORE_INDEX", "IMAGE_PLACEHOLDER", "ImageRef", "RowError", "VLMCollator",
    "VLMDataset", "decode_image", "iter_rows", "parse_row",
]
