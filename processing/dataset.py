"""The trainer's dataset: rows (:mod:`processing.rows`) -> pre-tokenized token ids, assistant-only labels and pixel
values, with an in-memory image cache, plus the epoch sampler that makes resumed runs see the same order.

Where validation happens:

* at load (eager): the row schema (JSON/Parquet decoding, structure, roles, an assistant reply, placeholder/image
  count, image files existing; see :mod:`processing.rows`), the chat template, and ``max_length`` (a row that does
  not fit is dropped whole, so an image block is never cut). Text is tokenized once here, in batches, through the
  processor's chat template; labels keep only the assistant replies and their ``<|im_end|>``.
* image decoding: eagerly too when the images are cached in memory (the default when they fit the cache budget),
  otherwise lazily in ``__getitem__``; a row whose image fails to decode then comes back as a skip marker that the
  collator drops and counts, so one bad file never ends an epoch.

Every skipped row is counted by reason in a :class:`~processing.rows.DataStats`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import PIL.Image
import torch
from torch.utils.data import Dataset, Sampler

from .labels import IGNORE_INDEX, never_labelled_ids
from .rows import CORRUPT_IMAGE, NO_ASSISTANT, TOO_LONG, DataStats, ImageRef, RowError, decode_image, parse_rows
from .templating import encode_rows

logger = logging.getLogger(__name__)

DEFAULT_IMAGE_CACHE_BYTES = 2 * 1024**3
DECODE_CHUNK = 256  # images decoded and preprocessed per image-processor call when caching


def pixel_values(image_processor, images: Sequence[PIL.Image.Image]) -> torch.Tensor:
    """[n_images, 3, H, W] for RGB PIL images (channels-last said explicitly: tiny images fool the format guess)."""
    return image_processor(images=list(images), return_tensors="pt", input_data_format="channels_last")["pixel_values"]


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
        allow_outside_root: accept image paths that leave `image_root` (by default they are skipped as
            ``image_outside_root``).
        pixel_dtype: dtype of the pixel values it caches and returns. The trainer asks for bfloat16 under bf16
            mixed precision: the tower's patch convolution casts its input to bfloat16 under autocast anyway, so the
            result is bit-identical while the cache, the workers' hand-over and the host-to-device copy halve.
    """

    def __init__(self, path, processor, image_root=None, max_length: int | None = None,
                 cache_images: bool | None = None, cache_bytes: int = DEFAULT_IMAGE_CACHE_BYTES,
                 allow_outside_root: bool = False, pixel_dtype: torch.dtype = torch.float32):
        self.path = Path(path)
        self.pixel_dtype = pixel_dtype
        self.processor = processor
        self.image_root = Path(image_root) if image_root is not None else self.path.resolve().parent
        self.max_length = max_length
        self.stats = DataStats(source=str(self.path))
        self._unlabelled_ids = torch.tensor(never_labelled_ids(processor))
        tokenizer = processor.tokenizer
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

        self.image_refs: list[ImageRef] = []
        image_index: dict = {}
        self.examples: list[Example] = []
        for row, encoded in encode_rows(processor, parse_rows(self.path, self.image_root, self.stats,
                                                                     allow_outside_root),
                                        assistant_masks=True):
            example = encoded if isinstance(encoded, RowError) else self._labels(encoded)
            if isinstance(example, RowError):
                self.stats.skip(example.reason, row.where, str(example))
                continue
            input_ids, labels = example
            if max_length is not None and len(input_ids) > max_length:
                # Cutting could split an image block or leave a reply without its end; drop the row whole.
                self.stats.skip(TOO_LONG, row.where, f"{len(input_ids)} tokens > max_length={max_length}")
                continue
            ids = []
            for ref in row.images:
                key = ref.key()
                if key not in image_index:
                    image_index[key] = len(self.image_refs)
                    self.image_refs.append(ref)
                ids.append(image_index[key])
            self.examples.append(Example(input_ids, labels, tuple(ids), row.where))

        self.pixel_cache: torch.Tensor | None = None
        if cache_images is None:
            vision = self._image_shape()
            element = torch.empty((), dtype=pixel_dtype).element_size()
            cache_images = len(self.image_refs) * element * vision[0] * vision[1] * vision[2] <= cache_bytes
        if cache_images and self.image_refs:
            self._cache_all_images()
        self.stats.kept = len(self.examples)
        self.stats.log(logger)

    # ------------------------------------------------------------------ construction helpers
    def _image_shape(self) -> tuple[int, int, int]:
        dummy = pixel_values(self.processor.image_processor, [PIL.Image.new("RGB", (8, 8))])
        return tuple(dummy.shape[1:])

    def _labels(self, encoded):
        """(input_ids, labels) of a templated row: assistant tokens only, never the unlabelled ids."""
        input_ids = torch.tensor(encoded.input_ids)
        keep = torch.tensor(encoded.assistant_mask, dtype=torch.bool) & ~torch.isin(input_ids, self._unlabelled_ids)
        if not bool(keep.any()):
            return RowError(NO_ASSISTANT, "no labelled token after templating")
        return input_ids, torch.where(keep, input_ids, torch.full_like(input_ids, IGNORE_INDEX))

    def _cache_all_images(self) -> None:
        """Decode and preprocess every image once; rows with an undecodable image are dropped here."""
        bad: set[int] = set()
        tensors, position = [], {}
        for start in range(0, len(self.image_refs), DECODE_CHUNK):
            decoded = []
            for index in range(start, min(start + DECODE_CHUNK, len(self.image_refs))):
                try:
                    decoded.append((index, decode_image(self.image_refs[index])))
                except RowError:
                    bad.add(index)
            if decoded:
                pixels = pixel_values(self.processor.image_processor, [image for _, image in decoded]).to(
                    self.pixel_dtype)
                for (index, _), pixel in zip(decoded, pixels):
                    position[index] = len(tensors)
                    tensors.append(pixel)
        kept = []
        for example in self.examples:
            failed = [i for i in example.image_ids if i in bad]
            if failed:
                self.stats.skip(CORRUPT_IMAGE, example.where, self.image_refs[failed[0]].describe())
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
        pixels = None
        if example.image_ids:
            if self.pixel_cache is not None:
                pixels = self.pixel_cache[list(example.image_ids)]
            else:
                try:
                    images = [decode_image(self.image_refs[i]) for i in example.image_ids]
                except RowError as error:
                    return {"skip": error.reason, "where": example.where, "detail": str(error)}
                pixels = pixel_values(self.processor.image_processor, images).to(self.pixel_dtype)
        return {"input_ids": example.input_ids, "labels": example.labels, "pixel_values": pixels}


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


__all__ = ["DEFAULT_IMAGE_CACHE_BYTES", "EpochSampler", "Example", "VLMDataset", "pixel_values"]
