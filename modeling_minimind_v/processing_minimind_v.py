"""MiniMindVProcessor: turns images + text (or chat messages) into MiniMind-V model inputs.

This file travels to the Hub as remote code (it is copied next to a saved processor and loaded with
`AutoProcessor.from_pretrained(path, trust_remote_code=True)`), so it imports only transformers, torch, PIL and the
standard library, and nothing from this project.

Each image placeholder `<|image_pad|>` in the text (written once per image by the user or by the chat template)
expands to `<|vision_start|>` + `<|image_pad|>` * image_seq_length + `<|vision_end|>`; the model scatters the
projected image features into the `<|image_pad|>` positions. The default chat template is ChatML, turns a literal
`<image>` inside *string* message content into the placeholder (the project's dataset rows use `<image>`) and wraps
each assistant reply plus its `<|im_end|>` in `{% generation %}` so `return_assistant_tokens_mask=True` works.

Message text is user text: `apply_chat_template(..., tokenize=True)` encodes control tokens found in it
(`<|im_start|>`, `<|vision_start|>`, ...) as plain text by default (`sanitize_control_tokens=True`), so typed text can
neither open a turn nor an image slot; pass `sanitize_control_tokens=False` to opt out.
"""

import bisect
import os
from typing import Any

import numpy as np
import PIL.Image
import torch
import transformers
from transformers import BatchFeature, ProcessorMixin
from transformers.image_utils import load_image
from transformers.processing_utils import MultiModalData
from transformers.utils import is_numpy_array, is_torchvision_available, logging

from .compat import SANITIZE_SUPPORTED, neutralise_control_tokens, strip_marked_control_tokens

logger = logging.get_logger(__name__)

DEFAULT_CHAT_TEMPLATE = (
    # ChatML. Content is a string or a list of items; every image item renders as ONE placeholder (the processor
    # expands it). `<image>` is converted only in string content: tools such as TRL wrap string content into a text
    # item and add their own image items, so converting inside text items would count the image twice.
    # The jinja env runs with trim_blocks/lstrip_blocks, so every newline is emitted inside {{ }}.
    # `message['content']` (not `.get`) is what vLLM's chat-template analysis recognises as per-item content: it then
    # hands images over as `{"type": "image"}` items (its "openai" content format) instead of dropping them.
    "{%- macro render_content(content) -%}"
    "{%- if content is none -%}"
    "{%- elif content is string -%}"
    "{{- content | replace('<image>', '<|image_pad|>') -}}"
    "{%- else -%}"
    "{%- for item in content -%}"
    "{%- if item is string -%}"
    "{{- item -}}"
    "{%- elif item['type'] == 'image' -%}"
    "{{- '<|image_pad|>' -}}"
    "{%- elif item['type'] == 'text' -%}"
    "{{- item['text'] -}}"
    "{%- else -%}"
    "{{- raise_exception('Unsupported content type for MiniMind-V: ' ~ item['type']) -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{%- endmacro -%}"
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\n' -}}"
    "{%- if message['role'] == 'assistant' -%}"
    # The mask covers the reply and its <|im_end|> (the model must learn to stop), not the header or the newline.
    "{%- generation -%}"
    "{{- render_content(message['content']) + '<|im_end|>' -}}"
    "{%- endgeneration -%}"
    "{{- '\n' -}}"
    "{%- else -%}"
    "{{- render_content(message['content']) + '<|im_end|>' + '\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\n' -}}"
    "{%- endif -%}"
)

# Modes with an alpha channel are composited onto white: dropping alpha would expose whatever colour the
# transparent pixels happen to store (often black).
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}


def to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """Convert a PIL image of any mode to 8-bit RGB."""
    if image.width == 0 or image.height == 0:
        raise ValueError(f"empty image of size {image.width}x{image.height}")
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I;16") or image.mode in {"I", "F"}:
        # High bit-depth greyscale: PIL's convert("L") clips instead of scaling, which turns most 16-bit images
        # white. Scale the full range down to 8 bits first. "I;16*" modes are 16-bit by definition (a dark image is
        # still 16-bit); a 32-bit "I" image beyond 8 bits is taken as 16-bit; float images in [0, 1] are scaled up.
        sixteen_bit = image.mode.startswith("I;16")
        image = image.convert("I") if sixteen_bit else image
        high = image.getextrema()[1]
        if image.mode == "F":
            scale = 255.0 if high <= 1.0 else 1.0
        else:
            scale = 1.0 / 257.0 if sixteen_bit or high > 255 else 1.0
        return image.point(lambda v: v * scale).convert("L").convert("RGB")
    if image.mode in _ALPHA_MODES or (image.mode == "P" and "transparency" in image.info):
        if image.mode in {"La", "RGBa"}:
            # Premultiplied alpha: PIL converts these only to their straight-alpha twins.
            image = image.convert(image.mode[:-1] + "A")
        rgba = image.convert("RGBA")
        background = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return PIL.Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


IMAGE_BACKENDS = ("pil", "torchvision")


def _with_backend(image_processor, backend: str):
    """The same image processor on transformers' `backend` ("pil": `CLIPImageProcessorPil`, "torchvision":
    `CLIPImageProcessor`); returned as it is when it already is on it or has no twin on it. Without torchvision,
    "torchvision" keeps the PIL backend with a warning, as transformers does."""
    if backend not in IMAGE_BACKENDS:
        raise ValueError(f"backend={backend!r}: the image processor backend is one of {', '.join(IMAGE_BACKENDS)}")
    if backend == "torchvision" and not is_torchvision_available():
        logger.warning("backend='torchvision' needs torchvision, which is not installed: the PIL backend is kept")
        backend = "pil"
    name = type(image_processor).__name__
    base = name.removesuffix("Pil")
    target = f"{base}Pil" if backend == "pil" else base
    target_class = None if target == name else getattr(transformers, target, None)
    if target_class is None:
        return image_processor
    settings = {k: v for k, v in image_processor.to_dict().items() if not k.startswith("image_processor")}
    return target_class(**settings)


class MiniMindVProcessor(ProcessorMixin):
    r"""
    Processor for MiniMind-V: an image processor (CLIP or SigLIP) plus a byte-level BPE tokenizer.

    Args:
        image_processor: a transformers image processor producing `pixel_values` of a fixed size.
        tokenizer: a fast tokenizer that knows `image_token`, `vision_start_token` and `vision_end_token`.
        chat_template (`str`, *optional*): Jinja chat template; defaults to [`DEFAULT_CHAT_TEMPLATE`] (ChatML).
        image_seq_length (`int`, defaults to 196): number of `image_token`s each image expands to; must equal the
            number of features the model's projector emits per image.
        image_token / vision_start_token / vision_end_token (`str`): the special tokens used for images.

    Calling the processor: `processor(images=..., text=..., padding=..., padding_side=..., return_tensors="pt")`.
    `text` is a string or a list of strings, each containing one `image_token` per image. `images` is a single
    image, a flat list (consumed in order, sample by sample) or a list of per-sample lists; items are PIL images,
    arrays/tensors, or paths/URLs. Returns `input_ids`, `attention_mask` and, when images were given,
    `pixel_values` `[num_images, 3, H, W]` in order of appearance.

    `offset_mapping` (when requested without `return_text_replacement_offsets`) refers to the caller's text: every
    token of an expanded image maps onto the span of its placeholder. With `return_text_replacement_offsets=True`
    it refers to the expanded text, as in transformers, and the replacement offsets say how to map back.
    """

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        chat_template=None,
        image_seq_length: int = 196,
        image_token: str = "<|image_pad|>",
        vision_start_token: str = "<|vision_start|>",
        vision_end_token: str = "<|vision_end|>",
        **kwargs,
    ):
        if not isinstance(image_seq_length, int) or isinstance(image_seq_length, bool) or image_seq_length < 1:
            raise ValueError(f"image_seq_length must be a positive int, got {image_seq_length!r}")
        self.image_seq_length = image_seq_length
        self.image_token = image_token
        self.vision_start_token = vision_start_token
        self.vision_end_token = vision_end_token
        # ProcessorMixin reads image_token / image_token_id while initialising and calling, so they must exist
        # before super().__init__.
        if tokenizer is not None:
            self.image_token_id = self._special_token_id(tokenizer, image_token)
            self.vision_start_token_id = self._special_token_id(tokenizer, vision_start_token)
            self.vision_end_token_id = self._special_token_id(tokenizer, vision_end_token)
        super().__init__(image_processor, tokenizer, chat_template=chat_template or DEFAULT_CHAT_TEMPLATE, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """`ProcessorMixin.from_pretrained`, with transformers' PIL image backend unless `backend=` says otherwise.

        Training builds the PIL-backend image processor, and the saved config does not record a backend; left to
        itself, transformers reloads with its torchvision backend wherever torchvision is installed, whose resizing
        and normalisation give slightly different pixels from the ones the model was trained on. `backend=` (and the
        deprecated `use_fast=`) is applied to the image processor here and not passed on: transformers would hand it
        to the tokenizer too, which then takes it for its own backend and refuses assistant masks.
        """
        use_fast = kwargs.pop("use_fast", None)
        backend = kwargs.pop("backend", None) or ("torchvision" if use_fast else "pil")
        processor = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        processor.image_processor = _with_backend(processor.image_processor, backend)
        return processor

    @staticmethod
    def _special_token_id(tokenizer, token: str) -> int:
        # A token missing from the vocabulary would silently tokenize into pieces and the model would find no
        # image positions; fail early instead.
        token_id = tokenizer.convert_tokens_to_ids(token)
        if token_id is None or (token_id == tokenizer.unk_token_id and token != tokenizer.unk_token):
            raise ValueError(f"The tokenizer has no token {token!r}; MiniMindVProcessor needs it as a single token.")
        return token_id

    # ---------------------------------------------------------------- expansion (transformers 5.x hook)
    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs) -> str:
        return self.vision_start_token + self.image_token * self.image_seq_length + self.vision_end_token

    def _get_num_multimodal_tokens(self, image_sizes=None, **kwargs) -> MultiModalData:
        """Placeholder tokens and pixel rows per image, for serving engines (vLLM sizes its encoder budget and splits
        `pixel_values` by these): whatever its size, an image becomes one [3, H, W] row and `image_seq_length` image
        tokens (the vision start/end tokens around them hold no features)."""
        if image_sizes is None:
            return MultiModalData()
        return MultiModalData(num_image_tokens=[self.image_seq_length] * len(image_sizes),
                              num_image_patches=[1] * len(image_sizes))

    @property
    def unused_input_names(self) -> list[str]:
        # `generate` rejects keys the model does not accept; byte-level BPE tokenizers may still emit these.
        return ["token_type_ids"]

    # ---------------------------------------------------------------- chat template
    def apply_chat_template(self, conversation, chat_template=None, sanitize_control_tokens=None, **kwargs):
        """`ProcessorMixin.apply_chat_template`, sanitising control tokens in the messages by default when tokenizing
        (transformers cannot sanitise untokenized output, nor together with `return_assistant_tokens_mask`)."""
        self._check_conversation(conversation)
        sanitize = sanitize_control_tokens
        can_sanitize = kwargs.get("tokenize", False) and not kwargs.get("return_assistant_tokens_mask", False)
        if sanitize is None:
            sanitize = bool(can_sanitize)
        if sanitize and not SANITIZE_SUPPORTED:  # this transformers has no sanitiser: split the tokens ourselves
            tokens = [t for t in self.tokenizer.get_added_vocab() if len(t) > 1 and not t.isspace()]
            conversation, sanitize = neutralise_control_tokens(conversation, tokens), False
        if sanitize:
            kwargs["sanitize_control_tokens"] = True
        return super().apply_chat_template(conversation, chat_template, **kwargs)

    @staticmethod
    def _check_conversation(conversation) -> None:
        """Raise ValueError naming the first malformed message (the template would fail deep inside jinja, or render
        an empty conversation without complaint)."""
        if hasattr(conversation, "messages"):
            conversation = conversation.messages
        if not isinstance(conversation, (list, tuple)) or not conversation:
            raise ValueError(f"a conversation must be a non-empty list of messages, got {conversation!r:.80}")
        batch = conversation if isinstance(conversation[0], (list, tuple)) or hasattr(conversation[0], "messages") \
            else [conversation]
        for b, chat in enumerate(batch):
            chat = getattr(chat, "messages", chat)
            where = f"conversation[{b}]" if len(batch) > 1 else "conversation"
            if not isinstance(chat, (list, tuple)) or not chat:
                raise ValueError(f"{where} must be a non-empty list of messages, got {chat!r:.80}")
            for m, message in enumerate(chat):
                if not isinstance(message, dict):
                    raise ValueError(f"{where}[{m}] must be a dict with 'role' and 'content', got {message!r:.80}")
                role, content = message.get("role"), message.get("content")
                if not isinstance(role, str) or not role:
                    raise ValueError(f"{where}[{m}]['role'] must be a non-empty string, got {role!r:.40}")
                if content is None or isinstance(content, str):
                    continue
                if not isinstance(content, (list, tuple)):
                    raise ValueError(f"{where}[{m}]['content'] must be a string or a list of items, got "
                                     f"{type(content).__name__}")
                for i, item in enumerate(content):
                    if isinstance(item, str):
                        continue
                    kind = item.get("type") if isinstance(item, dict) else None
                    if kind == "text" and isinstance(item.get("text"), str) or kind == "image":
                        continue
                    raise ValueError(f"{where}[{m}]['content'][{i}] must be a text item with a string 'text' or "
                                     f"an image item (MiniMind-V takes no other kinds), got {item!r:.80}")

    # ---------------------------------------------------------------- call
    def __call__(self, images=None, text=None, videos=None, audio=None, **kwargs) -> BatchFeature:
        if videos is not None or audio is not None:
            raise ValueError("MiniMindVProcessor handles images and text only (no videos or audio).")
        texts = self._check_text(text)
        counted = texts
        if kwargs.get("sanitize_control_tokens"):
            # Control tokens marked as user text are not placeholders (transformers drops them from its count too).
            counted = [strip_marked_control_tokens(sample) for sample in texts]
        counts = [sample.count(self.image_token) for sample in counted]
        per_sample = self._assign_images(images, counts)
        flat_images = [image for sample_images in per_sample for image in sample_images]

        if flat_images:
            # PIL images go on as (H, W, 3) uint8 arrays said to be channels-last: without the flag the format guess
            # misreads tiny images such as 1x3 (they look channels-first), and the flag cannot ride with PIL images
            # because the torchvision backend of transformers < 5.24 makes them (3, H, W) first and then permutes.
            if all(isinstance(image, PIL.Image.Image) for image in flat_images):
                flat_images = [np.asarray(image) for image in flat_images]
                kwargs.setdefault("input_data_format", "channels_last")
        else:
            kwargs.pop("input_data_format", None)

        wants_offsets = kwargs.get("return_offsets_mapping", False)
        # (5.23 also has a class-level default for the flag; 5.17 only the kwarg.)
        wants_replacements = kwargs.get(
            "return_text_replacement_offsets", getattr(self, "return_text_replacement_offsets", False)
        )
        remap_offsets = bool(wants_offsets) and not wants_replacements
        if remap_offsets:
            kwargs["return_text_replacement_offsets"] = True

        outputs = super().__call__(images=flat_images or None, text=texts, **kwargs)

        if remap_offsets:
            replacements = outputs.pop("text_replacement_offsets")
            outputs["offset_mapping"] = self._offsets_to_caller_text(
                outputs["offset_mapping"], replacements, texts, outputs["attention_mask"]
            )
        pixels = outputs.get("pixel_values")
        if isinstance(pixels, (torch.Tensor, np.ndarray)) and pixels.size != 0:
            bad = ~(torch.isfinite(pixels) if isinstance(pixels, torch.Tensor) else np.isfinite(pixels))
            if bad.any():
                # NaN/Inf pixels (a float array with NaN) make NaN image features and meaningless output.
                per_image = [int(b.sum()) for b in bad.reshape(bad.shape[0], -1)]
                logger.warning(
                    "pixel_values hold %d NaN/Inf value(s) (per image: %s): the model's output for these images "
                    "is meaningless; check the input images", sum(per_image), per_image
                )
        return outputs

    def validate_inputs(self, images=None, text=None, videos=None, audio=None, **kwargs):
        # Counts were checked per sample in __call__ (transformers 5.17 checks nothing, 5.23 only the total).
        if images is None and text is None:
            raise ValueError("MiniMindVProcessor needs `text` (with one image placeholder per image).")

    def _check_text(self, text) -> list[str]:
        if text is None:
            raise ValueError(
                f"MiniMindVProcessor needs `text`: a string or list of strings with one {self.image_token} per image."
            )
        texts = [text] if isinstance(text, str) else text
        if not isinstance(texts, (list, tuple)) or len(texts) == 0:
            raise ValueError(f"`text` must be a non-empty string or a non-empty list of strings, got {text!r}")
        for index, sample in enumerate(texts):
            if not isinstance(sample, str):
                raise ValueError(f"`text[{index}]` must be a string, got {type(sample).__name__}: {sample!r}")
            if sample == "":
                raise ValueError(f"`text[{index}]` is empty; every sample needs some text.")
        return list(texts)

    # ---------------------------------------------------------------- images
    def _assign_images(self, images, counts: list[int]) -> list[list]:
        """Split `images` over the samples (nested lists are per sample, flat lists are consumed in order)."""
        placeholder = self.image_token
        if images is None:
            if any(counts):
                raise ValueError(
                    f"The text has {sum(counts)} image placeholder(s) {placeholder} (per sample: {counts}) "
                    "but no images were given."
                )
            return [[] for _ in counts]

        nested = isinstance(images, (list, tuple)) and len(images) > 0 and all(
            isinstance(item, (list, tuple)) for item in images
        )
        if nested:
            if len(images) != len(counts):
                raise ValueError(f"Got image lists for {len(images)} samples but {len(counts)} text samples.")
            per_sample = []
            for sample_idx, (sample_images, count) in enumerate(zip(images, counts)):
                if len(sample_images) != count:
                    raise ValueError(
                        f"Sample {sample_idx} has {count} image placeholder(s) {placeholder} but "
                        f"{len(sample_images)} image(s) were given for it."
                    )
                per_sample.append(
                    [self._load(image, f"images[{sample_idx}][{i}]") for i, image in enumerate(sample_images)]
                )
            return per_sample

        flat = list(images) if isinstance(images, (list, tuple)) else [images]
        if len(flat) != sum(counts):
            per_sample_note = f" (per sample: {counts})" if len(counts) > 1 else ""
            raise ValueError(
                f"The text has {sum(counts)} image placeholder(s) {placeholder}{per_sample_note} but "
                f"{len(flat)} image(s) were given."
            )
        loaded = [self._load(image, f"images[{i}]") for i, image in enumerate(flat)]
        per_sample, start = [], 0
        for count in counts:
            per_sample.append(loaded[start : start + count])
            start += count
        return per_sample

    @staticmethod
    def _load(image: Any, name: str):
        """Return an RGB PIL image (or the array/tensor as given); raise ValueError naming anything else."""
        if isinstance(image, (str, os.PathLike)):
            try:
                image = load_image(str(image))
            except Exception as error:  # load_image raises several types for bad paths/URLs/base64
                raise ValueError(
                    f"{name} ({str(image)[:80]!r}) is not a loadable image path or URL: {error}"
                ) from error
        if isinstance(image, PIL.Image.Image):
            try:
                image.load()  # PIL opens lazily: a truncated or corrupt file only fails when its pixels are read
            except Exception as error:  # PIL raises OSError, SyntaxError, ValueError, ... for bad data
                filename = getattr(image, "filename", "") or ""
                label = f"{name} ({os.path.basename(filename)})" if filename else name
                raise ValueError(f"{label} could not be decoded as an image: {error}") from error
            try:
                return to_rgb(image)
            except ValueError as error:
                raise ValueError(f"{name}: {error}") from error
        if isinstance(image, torch.Tensor) and image.ndim in (2, 3) and image.numel() > 0:
            return MiniMindVProcessor._array_image(image.detach().cpu().numpy(), name)
        if is_numpy_array(image) and image.ndim in (2, 3) and image.size > 0:
            return MiniMindVProcessor._array_image(image, name)
        raise ValueError(
            f"{name} is not an image: got {type(image).__name__} {repr(image)[:80]}. Pass PIL images, "
            "2-D/3-D arrays or tensors, or image paths/URLs."
        )

    @staticmethod
    def _array_image(array: np.ndarray, name: str):
        """A 2-D (greyscale) or 3-D array as the image processor takes it: greyscale repeated to 3 channels
        (channels-last); float arrays become uint8 like every other input, read as [0, 1] when all values lie there
        (as [0, 255] otherwise), so they are not rescaled twice and do not come out black. NaN/Inf pixels are named
        in a warning (and read as 0)."""
        if array.dtype == bool or not np.issubdtype(array.dtype, np.number):
            raise ValueError(f"{name}: an image array must be numeric, got dtype {array.dtype}")
        if array.ndim == 2:
            array = np.repeat(array[..., None], 3, axis=-1)
        if np.issubdtype(array.dtype, np.floating):
            finite = np.isfinite(array)
            if not finite.all():
                logger.warning("%s holds %d NaN/Inf pixel value(s): read as 0, the output for it is unreliable",
                               name, int((~finite).sum()))
            array = np.where(finite, array, 0.0)
            scale = 255.0 if array.size and array.min() >= 0.0 and array.max() <= 1.0 else 1.0
            array = np.clip(np.rint(array * scale), 0, 255).astype(np.uint8)
        return array

    # ---------------------------------------------------------------- offsets
    @staticmethod
    def _offsets_to_caller_text(offset_mapping, replacements, texts, attention_mask):
        """Map token offsets in the expanded text back to the text the caller passed.

        Right-side padding gets an empty span at the end of the text instead of (0, 0), so the starts stay sorted:
        transformers 5.17 finds assistant tokens by bisecting the starts and mis-masks right-padded rows otherwise.
        """
        as_tensor = isinstance(offset_mapping, torch.Tensor)
        rows = offset_mapping.tolist() if as_tensor else offset_mapping
        masks = attention_mask.tolist() if isinstance(attention_mask, torch.Tensor) else attention_mask
        mapped_rows = []
        for row, mask, sample_replacements, text in zip(rows, masks, replacements, texts):
            new_starts = [r["new_span"][0] for r in sample_replacements]
            spans = [(r["span"], r["new_span"]) for r in sample_replacements]

            def to_caller(position: int, is_end: bool) -> int:
                # The last replacement starting at/before `position` (strictly before, for span ends).
                k = (bisect.bisect_left if is_end else bisect.bisect_right)(new_starts, position) - 1
                if k < 0:
                    return position
                (old_start, old_end), (new_start, new_end) = spans[k]
                if position < new_end or (is_end and position == new_end):
                    return old_end if is_end else old_start
                return position - (new_end - old_end)

            seen_token = False
            mapped = []
            for (start, end), keep in zip(row, mask):
                if not keep:
                    position = len(text) if seen_token else 0
                    mapped.append((position, position))
                    continue
                seen_token = True
                mapped.append((to_caller(start, False), to_caller(end, True)))
            mapped_rows.append(mapped)
        if as_tensor:
            return torch.tensor(mapped_rows, dtype=offset_mapping.dtype)
        return mapped_rows

    # ---------------------------------------------------------------- decoding
    def post_process_image_text_to_text(self, generated_outputs, skip_special_tokens=True, **kwargs):
        """Decode generated ids (a batch or one sequence) into text, as the image-text-to-text pipeline expects."""
        if isinstance(generated_outputs, torch.Tensor) and generated_outputs.ndim == 1:
            generated_outputs = generated_outputs.unsqueeze(0)
        elif isinstance(generated_outputs, (list, tuple)) and generated_outputs and isinstance(
            generated_outputs[0], int
        ):
            generated_outputs = [generated_outputs]
        return self.tokenizer.batch_decode(generated_outputs, skip_special_tokens=skip_special_tokens, **kwargs)


MiniMindVProcessor.register_for_auto_class()

__all__ = ["DEFAULT_CHAT_TEMPLATE", "MiniMindVProcessor", "to_rgb"]
