"""UI-independent chat logic for any image-text-to-text checkpoint: history -> messages, safe templating, streaming.

Used by `scripts/web_demo.py` (and meant for `scripts/chat.py` too). It touches a model only through public
transformers APIs (the Auto classes' `generate`, the processor's `apply_chat_template`, `TextIteratorStreamer`), so
it works for every checkpoint kind the project saves (trained demo models, decoders imported from Qwen3 or Llama) and
imports nothing from the rest of the project.

Text the user typed is never trusted as markup: control tokens in it (`<|im_start|>`, `<|image_pad|>`, ...) are
encoded as plain text, through `apply_chat_template(sanitize_control_tokens=True)` where the installed transformers
has it and by neutralising them here where it does not. Either way typed text cannot open a turn or an image slot.
"""

import inspect
import logging
import queue
import re
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import PIL.Image
import PIL.ImageOps
import torch
from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

logger = logging.getLogger(__name__)

# Inserted after the first character of a control token typed by the user: invisible when shown, and it splits the
# token so the tokenizer can no longer match it (byte-level BPE encodes it as ordinary bytes).
WORD_JOINER = "\u2060"

# How long the consumer waits for the next piece of streamed text before it checks on the generate thread again.
_STREAM_POLL_S = 0.5


class UnreadableImageError(ValueError):
    """An uploaded file is not an image PIL can decode; the message is meant to be shown to the user as is."""


@dataclass
class ChatTurn:
    """One exchange: what the user wrote (text and images) and the assistant's reply (None while it is pending)."""

    text: str
    images: list[PIL.Image.Image] = field(default_factory=list)
    reply: str | None = None


@dataclass
class StreamUpdate:
    """The reply so far. The last update has `done=True` and the exact decode of all generated ids."""

    text: str
    done: bool = False
    num_tokens: int | None = None


# ---------------------------------------------------------------------------------------------------------- images
def load_image(path: str | Path, name: str | None = None) -> PIL.Image.Image:
    """Open and fully decode an image file; raise UnreadableImageError with a readable reason otherwise.

    `Image.open` is lazy, so a truncated file would only fail later, inside the processor: decoding here makes every
    bad file fail at one place, with a message naming it.
    """
    label = name or Path(path).name
    try:
        with PIL.Image.open(path) as opened:
            opened.load()
            image = _upright(opened)
    except PIL.UnidentifiedImageError as error:
        raise UnreadableImageError(f"'{label}' is not an image in a format this demo can read.") from error
    except PIL.Image.DecompressionBombError as error:
        raise UnreadableImageError(f"'{label}' has too many pixels to open safely.") from error
    except (OSError, SyntaxError, ValueError) as error:
        # OSError for truncated or corrupt data, SyntaxError or ValueError for some malformed headers. The reason
        # may quote the server-side path: show the file's name instead.
        reason = str(error).replace(str(path), label) or type(error).__name__
        raise UnreadableImageError(f"'{label}' could not be decoded as an image: {reason}.") from error
    if image.width == 0 or image.height == 0:
        raise UnreadableImageError(f"'{label}' is an empty image.")
    return image


def _upright(image: PIL.Image.Image) -> PIL.Image.Image:
    """A decoded copy of `image`, rotated as its EXIF orientation says (phone photos): the model sees what users see."""
    try:
        return PIL.ImageOps.exif_transpose(image)
    except Exception:  # malformed EXIF must not reject an image whose pixels decoded fine
        logger.debug("ignoring unreadable EXIF orientation", exc_info=True)
        return image.copy()


# --------------------------------------------------------------------------------------------------------- messages
def build_messages(history: Sequence[ChatTurn], system: str | None = None) -> list[dict]:
    """Chat messages for `apply_chat_template` from the history; a turn without a reply must be the last one.

    All content is a list of typed items, never a bare string: chat templates may rewrite markup inside string
    content (the project's turns `<image>` into an image slot), and neither typed text nor a model's earlier reply may
    do that.
    """
    messages = [{"role": "system", "content": [{"type": "text", "text": system}]}] if system else []
    for index, turn in enumerate(history):
        content = [{"type": "image", "image": image} for image in turn.images]
        if turn.text:
            content.append({"type": "text", "text": turn.text})
        if not content:
            raise ValueError(f"turn {index} has neither text nor images")
        messages.append({"role": "user", "content": content})
        if turn.reply is not None:
            messages.append({"role": "assistant", "content": [{"type": "text", "text": turn.reply}]})
        elif index != len(history) - 1:
            raise ValueError(f"turn {index} has no reply but is not the last turn")
    return messages


def control_tokens(tokenizer) -> list[str]:
    """The tokenizer's added tokens that user text must not be able to produce (longest first)."""
    tokens = set(tokenizer.get_added_vocab())
    tokens.update(str(token) for token in getattr(tokenizer, "all_special_tokens", []))
    # One-character or whitespace tokens (e.g. a "\n" added token) are ordinary text, and cannot be split anyway.
    return sorted((t for t in tokens if len(t) > 1 and not t.isspace()), key=len, reverse=True)


def neutralise_control_tokens(text: str, tokens: Sequence[str]) -> str:
    """`text` with every occurrence of `tokens` split by an invisible WORD JOINER, so it encodes as plain text."""
    if not tokens or not text:
        return text
    pattern = re.compile("|".join(map(re.escape, sorted(tokens, key=len, reverse=True))))
    return pattern.sub(lambda match: match.group(0)[0] + WORD_JOINER + match.group(0)[1:], text)


def supports_builtin_sanitizer(processor) -> bool:
    """Whether this processor's `apply_chat_template` takes `sanitize_control_tokens` (transformers >= 5.2x).

    Checked on the signature, not the version: older releases accept any **kwargs and would silently pass the flag
    on to the template instead of sanitising.
    """
    try:
        return "sanitize_control_tokens" in inspect.signature(processor.apply_chat_template).parameters
    except (TypeError, ValueError):
        return False


def _neutralise_messages(messages: list[dict], tokens: Sequence[str]) -> list[dict]:
    out = []
    for message in messages:
        content = message["content"]
        if isinstance(content, str):
            content = neutralise_control_tokens(content, tokens)
        else:
            content = [
                {**item, "text": neutralise_control_tokens(item["text"], tokens)}
                if item.get("type") == "text" else item
                for item in content
            ]
        out.append({**message, "content": content})
    return out


def encode_chat(processor, messages: list[dict], sanitize: bool | None = None):
    """Model inputs (`input_ids`, `attention_mask`, `pixel_values`, ...) for `messages`, ready for `generate`.

    sanitize: True uses transformers' `sanitize_control_tokens=True`, False neutralises control tokens here; None
    picks the built-in sanitiser when the installed transformers has it.
    """
    if sanitize is None:
        sanitize = supports_builtin_sanitizer(processor)
    template_kwargs = {"add_generation_prompt": True, "tokenize": True, "return_dict": True, "return_tensors": "pt"}
    if sanitize:
        return processor.apply_chat_template(messages, sanitize_control_tokens=True, **template_kwargs)
    tokens = control_tokens(processor.tokenizer)
    inputs = processor.apply_chat_template(_neutralise_messages(messages, tokens), **template_kwargs)
    # A tokenizer whose normaliser drops the joiner (some strip format characters) would rebuild the token: refuse
    # rather than let typed text through as markup. The template's own tokens are counted against a reference.
    _check_no_forged_tokens(processor, messages, inputs, tokens)
    return inputs


def _check_no_forged_tokens(processor, messages, inputs, tokens: Sequence[str]) -> None:
    tokenizer = processor.tokenizer
    token_ids = {tokenizer.convert_tokens_to_ids(token) for token in tokens}
    for message in messages:
        items = [message["content"]] if isinstance(message["content"], str) else message["content"]
        for item in items:
            text = item if isinstance(item, str) else item.get("text") if item.get("type") == "text" else None
            if not text:
                continue
            ids = tokenizer(neutralise_control_tokens(text, tokens), add_special_tokens=False)["input_ids"]
            if token_ids.intersection(ids):
                raise ValueError("this tokenizer turns neutralised control tokens back into control tokens")


# ------------------------------------------------------------------------------------------------------- generation
def generation_kwargs(temperature: float, top_p: float, max_new_tokens: int) -> dict:
    """`generate` arguments for the UI's sampling controls; temperature 0 means greedy decoding."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if not temperature >= 0:  # also NaN
        raise ValueError(f"temperature must be >= 0 (0 means greedy decoding), got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if temperature == 0:
        return {"do_sample": False, "max_new_tokens": int(max_new_tokens)}
    return {"do_sample": True, "temperature": float(temperature), "top_p": float(top_p),
            "max_new_tokens": int(max_new_tokens)}


class _StopOnEvent(StoppingCriteria):
    """Stops generate when the consumer goes away (the browser disconnects or the user clears the chat)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs):
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


def context_limit(model) -> int | None:
    """The decoder's maximum number of positions, when its config says."""
    text_config = model.config.get_text_config()
    limit = getattr(text_config, "max_position_embeddings", None)
    return limit if isinstance(limit, int) and limit > 0 else None


def stream_reply(model, processor, inputs, **generate_kwargs) -> Iterator[StreamUpdate]:
    """Run `generate` on `inputs` in a thread and yield the reply as it grows.

    The streamed pieces are for display; the final update carries the decode of all generated ids at once, which is
    exactly what a plain `generate` + `decode` gives (streamed text can differ in spacing or split characters).
    Closing the iterator early stops generation.
    """
    tokenizer = processor.tokenizer
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=_STREAM_POLL_S)
    stop = threading.Event()
    result: dict = {}
    inputs = inputs.to(model.device)
    criteria = StoppingCriteriaList([_StopOnEvent(stop), *generate_kwargs.pop("stopping_criteria", [])])

    def run():
        try:
            with torch.inference_mode():
                result["output"] = model.generate(
                    **inputs, streamer=streamer, stopping_criteria=criteria, **generate_kwargs
                )
        except Exception as error:  # re-raised in the consumer's thread below
            result["error"] = error
            streamer.end()  # unblock the consumer; generate did not get to end the stream

    thread = threading.Thread(target=run, name="generate", daemon=True)
    thread.start()
    text = ""
    try:
        while True:
            try:
                piece = next(streamer)
            except StopIteration:
                break
            except queue.Empty:  # nothing new within the poll interval: keep waiting while generate runs
                if not thread.is_alive() and streamer.text_queue.empty():
                    break
                continue
            if piece:
                text += piece
                yield StreamUpdate(text)
        thread.join()
        if "error" in result:
            raise result["error"]
        new_ids = result["output"][0, inputs["input_ids"].shape[1]:]
        yield StreamUpdate(tokenizer.decode(new_ids, skip_special_tokens=True), done=True, num_tokens=len(new_ids))
    finally:
        stop.set()
        thread.join()


def describe_model(model, processor, name: str | None = None) -> dict:
    """Name and sizes of a loaded checkpoint, for display (from public config fields only)."""
    config = model.config
    text_config = config.get_text_config()
    vision_config = getattr(config, "vision_config", None)
    image_tokens = getattr(processor, "image_seq_length", None) or getattr(config, "image_seq_length", None)
    info = {
        "name": name or Path(str(getattr(config, "name_or_path", "") or "model")).name,
        "architecture": type(model).__name__,
        "parameters": model.num_parameters(),
        "decoder_type": getattr(text_config, "model_type", None),
        "decoder_layers": getattr(text_config, "num_hidden_layers", None),
        "hidden_size": getattr(text_config, "hidden_size", None),
        "vocab_size": getattr(text_config, "vocab_size", None),
        "context": getattr(text_config, "max_position_embeddings", None),
        "vision_type": getattr(vision_config, "model_type", None),
        "image_size": getattr(vision_config, "image_size", None),
        "patch_size": getattr(vision_config, "patch_size", None),
        "image_tokens": image_tokens,
        "device": str(model.device),
        "dtype": str(model.dtype).replace("torch.", ""),
    }
    return info


def format_parameters(count: int) -> str:
    """1234567 -> '1.23M' (K/M/B)."""
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if count >= scale:
            return f"{count / scale:.2f}{suffix}"
    return str(count)


__all__ = [
    "WORD_JOINER", "ChatTurn", "StreamUpdate", "UnreadableImageError", "build_messages", "context_limit",
    "control_tokens", "describe_model", "encode_chat", "format_parameters", "generation_kwargs", "load_image",
    "neutralise_control_tokens", "stream_reply", "supports_builtin_sanitizer",
]
