"""Compatibility with every transformers release this package accepts (see `TRANSFORMERS_RANGE`): the one place that
knows how their public APIs differ, so the model, processor and fast decoder never test versions themselves.

Remote code runs on whatever transformers the user has installed, so each difference is detected from the installed
library's public surface (a dataclass field, a function signature), never from a version number. Remote code: imports
only transformers and the standard library.
"""

import inspect
import re

from transformers import GenerationMixin, ProcessorMixin
from transformers.masking_utils import create_causal_mask
from transformers.modeling_outputs import BaseModelOutputWithPast

# The range setup.py declares and the model card states; keep the three in step.
TRANSFORMERS_RANGE = ">=5.17,<6"

# transformers 5.24 renamed the KV cache from `past_key_values` to `cache`: the keyword generate passes to forward,
# the field of the output classes, and the argument of create_causal_mask. Older releases use `past_key_values`.
CACHE_FIELD = "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"
_MASK_CACHE_ARG = "cache" if "cache" in inspect.signature(create_causal_mask).parameters else "past_key_values"
_PREPARE_CACHE_ARG = ("cache" if "cache" in inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters
                      else "past_key_values")
CACHE_NAMES = ("past_key_values", "cache")


def pop_cache(past_key_values, kwargs: dict):
    """The KV cache the caller passed under either name (removed from `kwargs`); None when there is none."""
    cache = kwargs.pop("cache", None)
    if past_key_values is not None and cache is not None and cache is not past_key_values:
        raise ValueError("Pass the KV cache once, as `cache` or as `past_key_values`, not both")
    return past_key_values if past_key_values is not None else cache


def cache_field(cache) -> dict:
    """Keyword argument that stores `cache` in a transformers output class of the installed release."""
    return {CACHE_FIELD: cache}


def output_cache(output):
    """The cache held by a transformers output (either field name)."""
    return output.get(CACHE_FIELD) if hasattr(output, "get") else getattr(output, CACHE_FIELD, None)


def prepare_cache_arg(cache) -> dict:
    """Keyword argument that hands `cache` to `GenerationMixin.prepare_inputs_for_generation` of the installed
    release."""
    return {_PREPARE_CACHE_ARG: cache}


def causal_mask(config, inputs_embeds, attention_mask, cache, position_ids):
    """`create_causal_mask` with the cache passed under the name the installed release expects."""
    return create_causal_mask(
        config=config, inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
        **{_MASK_CACHE_ARG: cache},
    )


def _marked_span_pattern():
    """Regex of a control token that `apply_chat_template(sanitize_control_tokens=True)` marked as user text.

    The markers are private characters of transformers; they are read off its public `mark_control_tokens` instead of
    imported by name. None on releases without control-token sanitising.
    """
    try:
        from transformers.utils.chat_template_utils import mark_control_tokens
    except ImportError:
        return None
    marked = mark_control_tokens("x", re.compile("x"))
    if not isinstance(marked, str) or len(marked) < 3 or marked[1:-1] != "x":
        return None
    return re.compile(re.escape(marked[0]) + ".*?" + re.escape(marked[-1]), re.DOTALL)


MARKED_CONTROL_TOKEN_RE = _marked_span_pattern()


def strip_marked_control_tokens(text: str) -> str:
    """`text` without the control tokens marked as user text (they are not image placeholders)."""
    return MARKED_CONTROL_TOKEN_RE.sub("", text) if MARKED_CONTROL_TOKEN_RE is not None else text


# Whether the installed ProcessorMixin.apply_chat_template takes `sanitize_control_tokens` (checked on the signature:
# releases without it pass unknown keywords on to the template, silently).
SANITIZE_SUPPORTED = "sanitize_control_tokens" in inspect.signature(ProcessorMixin.apply_chat_template).parameters
# Inserted after the first character of a control token where the release cannot sanitise: the tokenizer then no
# longer matches the token and encodes the text as ordinary bytes.
WORD_JOINER = "\u2060"


def neutralise_control_tokens(conversation, tokens):
    """Copies of the messages (one conversation or a batch) with every control token in text content split by a WORD
    JOINER: the fallback for releases whose `apply_chat_template` has no `sanitize_control_tokens`."""
    if not tokens:
        return conversation
    pattern = re.compile("|".join(map(re.escape, sorted(tokens, key=len, reverse=True))))

    def text(value):
        return pattern.sub(lambda m: m.group(0)[0] + WORD_JOINER + m.group(0)[1:], value)

    def message(m):
        if not isinstance(m, dict):
            return m
        content = m.get("content")
        if isinstance(content, str):
            content = text(content)
        elif isinstance(content, list):
            content = [{**item, "text": text(item["text"])}
                       if isinstance(item, dict) and isinstance(item.get("text"), str)
                       else text(item) if isinstance(item, str) else item for item in content]
        return {**m, "content": content}

    if conversation and isinstance(conversation[0], (list, tuple)):
        return [[message(m) for m in chat] for chat in conversation]
    return [message(m) for m in conversation]


__all__ = [
    "CACHE_FIELD", "CACHE_NAMES", "MARKED_CONTROL_TOKEN_RE", "SANITIZE_SUPPORTED", "TRANSFORMERS_RANGE", "WORD_JOINER",
    "cache_field", "causal_mask", "neutralise_control_tokens", "output_cache", "pop_cache", "prepare_cache_arg",
    "strip_marked_control_tokens",
]
