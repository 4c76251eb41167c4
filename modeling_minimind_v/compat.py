"""Compatibility with every transformers release this package accepts (see `TRANSFORMERS_RANGE`): the one place that
knows how their public APIs differ, so the model, processor and fast decoder never test versions themselves.

Remote code runs on whatever transformers the user has installed, so each difference is detected from the installed
library's public surface (a dataclass field, a function signature), never from a version number. Remote code: imports
only transformers and the standard library.
"""

import inspect
import re

from transformers import GenerationMixin
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


__all__ = [
    "CACHE_FIELD", "CACHE_NAMES", "MARKED_CONTROL_TOKEN_RE", "TRANSFORMERS_RANGE", "cache_field", "causal_mask",
    "output_cache", "pop_cache", "prepare_cache_arg", "strip_marked_control_tokens",
]
