"""The project's own byte-level BPE tokenizer, plus helpers to make any tokenizer VLM-ready.

The shipped tokenizer (``processing/tokenizer/``, built by ``scripts/train_tokenizer.py``) is trained on the synthetic
task's text and a small English sample (:mod:`processing.tokenizer_corpus`), with a 1024-entry vocabulary to match
the tiny model preset. Its special tokens use Qwen's names, with fixed ids::

    0 <|endoftext|>  (pad)   1 <|im_start|>   2 <|im_end|> (eos)
    3 <|vision_start|>       4 <|vision_end|> 5 <|image_pad|> (one per image feature)

so the same processor/chat template works with this tokenizer and with a Qwen3 one. ``ensure_vlm_special_tokens``
adds whichever of these a foreign tokenizer lacks; ``ensure_distinct_pad_token`` gives one that pads with
``<|im_end|>`` (SmolLM2) or not at all (Llama 3) the pad token ``<|endoftext|>``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

logger = logging.getLogger(__name__)

ENDOFTEXT_TOKEN = "<|endoftext|>"
IM_START_TOKEN = "<|im_start|>"
IM_END_TOKEN = "<|im_end|>"
VISION_START_TOKEN = "<|vision_start|>"
VISION_END_TOKEN = "<|vision_end|>"
IMAGE_TOKEN = "<|image_pad|>"
# Order matters: the BPE trainer assigns ids 0..5 in this order, and models/configs rely on those ids.
SPECIAL_TOKENS: tuple[str, ...] = (
    ENDOFTEXT_TOKEN, IM_START_TOKEN, IM_END_TOKEN, VISION_START_TOKEN, VISION_END_TOKEN, IMAGE_TOKEN,
)
# What the VLM's chat template and image expansion need from any tokenizer (pad/eos handling is the caller's).
VLM_TOKENS: tuple[str, ...] = (IM_START_TOKEN, IM_END_TOKEN, VISION_START_TOKEN, VISION_END_TOKEN, IMAGE_TOKEN)
DEFAULT_VOCAB_SIZE = 1024
MODEL_MAX_LENGTH = 131072

def _wrap(backend: Tokenizer) -> PreTrainedTokenizerFast:
    """Wrap a `tokenizers.Tokenizer` built with :data:`SPECIAL_TOKENS` as a transformers tokenizer."""
    return PreTrainedTokenizerFast(  # = TokenizersBackend in transformers 5
        tokenizer_object=backend,
        eos_token=IM_END_TOKEN,
        pad_token=ENDOFTEXT_TOKEN,
        bos_token=None,
        unk_token=None,
        # Registered as special so skip_special_tokens drops them and all_special_tokens lists them.
        extra_special_tokens=[t for t in SPECIAL_TOKENS if t not in (IM_END_TOKEN, ENDOFTEXT_TOKEN)],
        model_max_length=MODEL_MAX_LENGTH,
        clean_up_tokenization_spaces=False,
    )


def train_bpe_tokenizer(
    texts: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE, min_frequency: int = 2
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``texts``; special tokens get ids 0..5 and ``len(tokenizer) <= vocab_size``."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(SPECIAL_TOKENS) + len(alphabet):
        raise ValueError(f"vocab_size must be >= {len(SPECIAL_TOKENS) + len(alphabet)} (specials + 256 bytes)")
    backend = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    # trim_offsets=False keeps offsets pointing at the leading space, as Qwen's tokenizer does.
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        # The full byte alphabet makes every string encodable, even bytes absent from the corpus.
        initial_alphabet=alphabet,
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    for expected_id, token in enumerate(SPECIAL_TOKENS):
        if backend.token_to_id(token) != expected_id:
            raise RuntimeError(f"special token {token} got id {backend.token_to_id(token)}, expected {expected_id}")
    tokenizer = _wrap(backend)
    logger.info("trained byte-level BPE: %d tokens (requested %d)", len(tokenizer), vocab_size)
    return tokenizer


def save_tokenizer(tokenizer: PreTrainedTokenizerBase | Tokenizer, directory: str | Path) -> Path:
    """Write ``tokenizer.json`` + ``tokenizer_config.json`` (no chat template: the processor owns it)."""
    if isinstance(tokenizer, Tokenizer):
        tokenizer = _wrap(tokenizer)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(directory))
    return directory


def default_tokenizer_path() -> Path:
    """The tokenizer folder shipped inside this package."""
    return Path(__file__).resolve().parent / "tokenizer"


def load_default_tokenizer() -> PreTrainedTokenizerBase:
    path = default_tokenizer_path()
    if not (path / "tokenizer.json").is_file():
        raise FileNotFoundError(f"no shipped tokenizer at {path}; build it with scripts/train_tokenizer.py")
    return AutoTokenizer.from_pretrained(str(path))


def ensure_vlm_special_tokens(
    tokenizer: PreTrainedTokenizerBase, tokens: Sequence[str] = VLM_TOKENS
) -> list[str]:
    """Make ``tokens`` usable as single special tokens; return the ones that got a new id.

    Tokens the tokenizer already knows keep their id (a Qwen3 tokenizer needs nothing). A token that exists only as
    an ordinary vocabulary entry is re-registered as special, still with its id, so text containing it is not split
    and ``skip_special_tokens`` drops it. The caller resizes the model's embeddings iff the returned list is
    non-empty (more precisely, if ``len(tokenizer)`` now exceeds the embedding size).
    """
    vocab = tokenizer.get_vocab()
    added_special = {
        str(t) for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if getattr(t, "special", False)
    }
    to_register = [t for t in tokens if t not in added_special]
    new = [t for t in tokens if t not in vocab]
    if to_register:
        # replace_extra_special_tokens=False: keep the tokenizer's existing extra special tokens.
        tokenizer.add_special_tokens({"extra_special_tokens": to_register}, replace_extra_special_tokens=False)
    if new:
        logger.info("added %d special tokens to the tokenizer: %s (resize embeddings)", len(new), new)
    return new


def ensure_distinct_pad_token(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """Give ``tokenizer`` a pad token that is not ``<|im_end|>``; return the tokens that got a new id.

    Training never labels the pad id (:mod:`processing.labels`), so a pad token equal to the end-of-turn token the
    chat template trains (SmolLM2 pads with ``<|im_end|>``) would teach the model never to stop. A missing pad token
    (Llama 3) cannot pad a batch at all. Either way ``<|endoftext|>`` becomes the pad token, added as a special token
    if the vocabulary lacks it. A pad token that is neither is kept.
    """
    im_end_id = tokenizer.convert_tokens_to_ids(IM_END_TOKEN) if IM_END_TOKEN in tokenizer.get_vocab() else None
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id != im_end_id:
        return []
    previous = tokenizer.pad_token
    new = [] if ENDOFTEXT_TOKEN in tokenizer.get_vocab() else [ENDOFTEXT_TOKEN]
    tokenizer.add_special_tokens({"pad_token": ENDOFTEXT_TOKEN})
    logger.info("pad token: %s (was %s)", ENDOFTEXT_TOKEN, previous)
    return new
