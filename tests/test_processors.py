"""Tests for processing/processors.py: build_processor per vision family, padding side, tokenizer checks, and the
shipped tokenizer."""

import pytest
import torch
from transformers import AutoTokenizer

from helpers_processor import (
    assistant_segments, clip_vision_config, image_blocks, make_tokenizer, siglip_vision_config, solid_image,
)
from modeling_minimind_v.processing_minimind_v import MiniMindVProcessor
from processing.image_processors import build_image_processor
from processing.processors import build_processor
from processing.tokenizers import default_tokenizer_path

SEQ = 5  # image_seq_length of the small processors
IMG = "<|image_pad|>"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tok"))


def test_padding_side_defaults(tokenizer):
    texts = ["a b c d e f", "a"]
    # build_processor pads on the left by default (batched generation needs it) without touching the caller's
    # tokenizer; the side can be chosen, and a processor built directly keeps the tokenizer's own setting.
    assert tokenizer.padding_side == "right"
    left = build_processor(tokenizer, clip_vision_config(32), SEQ)
    assert tokenizer.padding_side == "right" and left.tokenizer.padding_side == "left"
    assert left(text=texts, padding=True, return_tensors="pt")["attention_mask"][1].tolist()[:2] == [0, 0]
    right = build_processor(tokenizer, clip_vision_config(32), SEQ, padding_side="right")
    assert right(text=texts, padding=True, return_tensors="pt")["attention_mask"][1].tolist()[:2] == [1, 0]
    left_tokenizer = AutoTokenizer.from_pretrained(tokenizer.name_or_path, padding_side="left")
    direct = MiniMindVProcessor(build_image_processor(clip_vision_config(32)), left_tokenizer, image_seq_length=SEQ)
    assert direct(text=texts, padding=True, return_tensors="pt")["attention_mask"][1].tolist()[:2] == [0, 0]


def test_tokenizer_without_vision_tokens_rejected(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel()
    backend.add_special_tokens(["<|endoftext|>"])
    plain = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<|endoftext|>")
    with pytest.raises(ValueError, match="no token '<\\|image_pad\\|>'"):
        build_processor(plain, clip_vision_config(32), SEQ)


@pytest.mark.parametrize(
    ("make_config", "mean", "std"),
    [
        (clip_vision_config, (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
        (siglip_vision_config, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    ],
)
def test_build_processor_per_vision_family(tokenizer, make_config, mean, std):
    config = make_config(image_size=224, patch_size=16)
    processor = build_processor(tokenizer, config, image_seq_length=196)
    assert tuple(processor.image_processor.image_mean) == pytest.approx(mean)
    assert tuple(processor.image_processor.image_std) == pytest.approx(std)
    images = [solid_image((30, 60, 90), (640, 480)), solid_image((0, 0, 0), (50, 300))]
    out = processor(text=[f"{IMG} first", f"second {IMG}"], images=images, padding=True, return_tensors="pt")
    assert out["pixel_values"].shape == (2, 3, 224, 224)
    for row in out["input_ids"].tolist():
        assert image_blocks(row, processor) == [[processor.image_token_id] * 196]
    # A black image normalises to -mean/std in every channel.
    expected_black = torch.tensor([-m / s for m, s in zip(mean, std)])
    assert torch.allclose(out["pixel_values"][1].mean(dim=(1, 2)), expected_black, atol=1e-4)


def test_with_shipped_tokenizer():
    processor = build_processor(str(default_tokenizer_path()), clip_vision_config(48, 16), image_seq_length=9)
    assert (processor.image_token_id, processor.vision_start_token_id, processor.vision_end_token_id) == (5, 3, 4)
    conversation = [
        {"role": "user",
         "content": [{"type": "image", "image": solid_image()}, {"type": "text", "text": "What colour?"}]},
        {"role": "assistant", "content": "It is red."},
    ]
    out = processor.apply_chat_template(
        conversation, tokenize=True, return_dict=True, return_assistant_tokens_mask=True, return_tensors="pt"
    )
    ids, mask = out["input_ids"][0].tolist(), out["assistant_masks"][0].tolist()
    assert image_blocks(ids, processor) == [[5] * 9]
    assert assistant_segments(ids, mask, processor.tokenizer) == ["It is red.<|im_end|>"]
    assert ids[0] == 1 and processor.tokenizer.eos_token_id == 2 and processor.tokenizer.pad_token_id == 0
