"""Helpers for the processor and pipeline tests: a tiny byte-level BPE tokenizer, vision configs, images, and
readers of image blocks and assistant masks in token ids.

The tokenizer is trained here with the `tokenizers` library so these tests do not depend on the shipped one; it has
the project's special tokens with the project's ids (0 pad, 1 im_start, 2 im_end/eos, 3-5 vision tokens).
"""

from pathlib import Path

import PIL.Image
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, CLIPVisionConfig, PreTrainedTokenizerFast, SiglipVisionConfig

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>"]

_CORPUS = [
    "You are a helpful assistant. Describe the image in a few words.",
    "What colour is the square? The square is red. It is on the left.",
    "How many circles are there? There are two blue circles and one green one.",
    "user assistant system hello world the a an is are of in on with and",
    "0 1 2 3 4 5 6 7 8 9 . , ? ! : ; ' \" ( ) - _ < > / \n",
]


def make_tokenizer(save_dir: Path, vocab_size: int = 400):
    """Train a tiny byte-level BPE tokenizer, save it to `save_dir` and load it back with AutoTokenizer."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_CORPUS * 4, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=SPECIAL_TOKENS[1:],
    )
    tokenizer.save_pretrained(save_dir)
    return AutoTokenizer.from_pretrained(save_dir)


def clip_vision_config(image_size: int = 224, patch_size: int = 16) -> CLIPVisionConfig:
    return CLIPVisionConfig(
        image_size=image_size, patch_size=patch_size, hidden_size=32, intermediate_size=64,
        num_hidden_layers=1, num_attention_heads=2,
    )


def siglip_vision_config(image_size: int = 224, patch_size: int = 16) -> SiglipVisionConfig:
    return SiglipVisionConfig(
        image_size=image_size, patch_size=patch_size, hidden_size=32, intermediate_size=64,
        num_hidden_layers=1, num_attention_heads=2,
    )


def solid_image(color=(200, 30, 30), size=(20, 16), mode="RGB") -> PIL.Image.Image:
    return PIL.Image.new("RGB", size, color).convert(mode)


def image_blocks(ids: list[int], processor) -> list[list[int]]:
    """The token runs between <|vision_start|> and <|vision_end|>, checking they are well formed."""
    blocks, current = [], None
    for token in ids:
        if token == processor.vision_start_token_id:
            assert current is None, "nested <|vision_start|>"
            current = []
        elif token == processor.vision_end_token_id:
            blocks.append(current)
            current = None
        elif current is not None:
            current.append(token)
        else:
            assert token != processor.image_token_id, "image token outside a vision block"
    assert current is None
    return blocks


def assistant_segments(ids, mask, tokenizer) -> list[str]:
    segments, current = [], []
    for token, keep in zip(ids, mask):
        if keep:
            current.append(token)
        elif current:
            segments.append(tokenizer.decode(current))
            current = []
    if current:
        segments.append(tokenizer.decode(current))
    return segments
