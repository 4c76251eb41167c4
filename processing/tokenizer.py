"""The project's own byte-level BPE tokenizer, plus helpers to make any tokenizer VLM-ready.

The shipped tokenizer (``processing/tokenizer/``, built by ``scripts/train_tokenizer.py``) is trained on the synthetic
task's text and a small English sample, with a 1024-entry vocabulary to match the tiny model preset. Its special
tokens use Qwen's names, with fixed ids::

    0 <|endoftext|>  (pad)   1 <|im_start|>   2 <|im_end|> (eos)
    3 <|vision_start|>       4 <|vision_end|> 5 <|image_pad|> (one per image feature)

so the same processor/chat template works with this tokenizer and with a Qwen3 one. ``ensure_vlm_special_tokens``
adds whichever of these a foreign tokenizer lacks.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from .synthetic import corpus_texts

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

# A small hand-written English sample (plus punctuation, digits and symbols) so that ordinary text gets sensible
# merges too, not only the synthetic task's words. Kept short so task words dominate the 1024-token budget.
ENGLISH_SAMPLE: tuple[str, ...] = (
    "You are a helpful assistant. Answer the question about the image in a few words.",
    "The quick brown fox jumps over the lazy dog. A small model can still learn simple things if the data is clean.",
    "This is a picture of a cat sitting on a table next to a cup of coffee and an open book.",
    "There are two people walking in the park, and one of them is holding a red umbrella.",
    "Please describe the image in detail. What do you see? Is there anything unusual about it?",
    "I think the answer is yes, but I am not completely sure. Could you show me another example?",
    "The weather today is sunny with a light wind from the north; tomorrow it will probably rain.",
    "Language models predict the next token given the previous tokens. Vision encoders turn images into features.",
    "We trained the model for 3 epochs with a learning rate of 0.001 and a batch size of 32 on 1 GPU.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 20 42 100 256 1024 2024 3.14 -7 +5 50% $9.99",
    "Punctuation and symbols: , . ; : ! ? ' \" ( ) [ ] { } < > / \\ | @ # $ % ^ & * - _ + = ~ `",
    "The letters of the alphabet are A B C D E F G H I J K L M N O P Q R S T U V W X Y Z and "
    "a b c d e f g h i j k l m n o p q r s t u v w x y z.",
    "It was a bright cold day in April. She opened the window, looked at the garden and smiled.",
    "Where is the station? Go straight ahead, then turn left at the second street and it is on your right.",
    "How many apples are on the plate? There are five apples: three green ones and two yellow ones.",
    "What time is it? It is half past seven in the morning, so we still have time for breakfast.",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))  # prints 5\n",
    "Hello, world! Thank you very much. Good morning, good evening and good night.",
    "The objects in the image are arranged on a grid with three rows and three columns.",
    "Colors such as black, white, gray, brown and pink are common in photos of everyday scenes.",
)


# Frequent English words, so ordinary text falls into whole-word tokens rather than single bytes.
COMMON_WORDS = (
    "the be to of and a in that have I it for not on with he as you do at this but his by from they we say her she "
    "or an will my one all would there their what so up out if about who get which go me when make can like time no "
    "just him know take people into year your good some could them see other than then now look only come its over "
    "think also back after use two how our work first well way even new want because any these give day most us is "
    "are was were been has had did said made went got very much more many such here where why each few every both "
    "again still never always often here small large big little long short high low old young right left top bottom "
    "center middle above below under between next near far inside outside color colour shape image picture photo "
    "object thing man woman child person dog cat car house tree water food city world life hand eye head word "
    "number part place case week company system program question answer problem point fact group home room mother "
    "father friend school student teacher book story name line end side kind body face door table chair window "
    "light open close start stop run walk read write play move live believe hold bring happen sit stand lose pay "
    "meet include continue set learn change lead understand watch follow create speak allow add spend grow offer "
    "remember love consider appear buy wait serve die send expect build stay fall cut reach kill remain please "
    "yes hello thanks thank sorry today tomorrow yesterday morning evening night white black gray brown pink"
).split()


def default_training_texts() -> Iterator[str]:
    """The default corpus: all text the synthetic task can produce, plus a small English sample.

    The English part is yielded twice so its words clear the trainer's ``min_frequency=2``; the task's own text is
    far more frequent, so its words still get their merges first.
    """
    yield from corpus_texts()
    for _ in range(2):
        yield from ENGLISH_SAMPLE
        yield " ".join(COMMON_WORDS)


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
