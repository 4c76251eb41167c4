"""The MiniMind-V assembly (what ``scripts/import_qwen3.py`` runs): a Qwen3 decoder folder + a CLIP/SigLIP vision
folder -> a MiniMind-V model and processor, with a freshly initialised projector, saved atomically.

The decoder and the tower are streamed into a model whose parameters start on the meta device, strictly: every
missing, unexpected or mis-shaped key is an error that lists the keys. Qwen3's tokenizer keeps its ids (the vision
tokens are added only where missing, resizing the embeddings only if they do not fit) and gets the project's
chat template.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from accelerate import init_empty_weights

from modeling_minimind_v import MiniMindVConfig, MiniMindVForConditionalGeneration
from modeling_minimind_v.processing_minimind_v import DEFAULT_CHAT_TEMPLATE, MiniMindVProcessor

from ..tokenizers import IMAGE_TOKEN, ensure_vlm_special_tokens
from ..layout import LM_HEAD, PROJECTOR_PREFIX, TOWER_PREFIX
from .qwen3 import QWEN3_PREFIX, check_qwen3_config, decoder_import_mapping, qwen3_decoder_fields
from .safetensors_io import (
    CheckpointError, SafetensorsCheckpoint, atomic_output_dir, check_key_coverage, check_materialised,
    check_output_dir, expected_shapes, load_generation_config, load_tokenizer, parse_dtype, stream_into,
)
from .vision import load_image_processor, open_vision_checkpoint, vision_family_of, vision_key_mapping


def preflight_import(qwen3_dir, vision_dir, output_dir, overwrite: bool = False):
    """The checks of `convert_qwen3_to_minimind_v` that need no model: output folder, configs, weight headers."""
    check_output_dir(output_dir, overwrite)
    check_qwen3_config(qwen3_dir)
    SafetensorsCheckpoint(qwen3_dir)
    vision_family_of(vision_dir)
    SafetensorsCheckpoint(vision_dir)


def _stores_untied_head(ckpt: SafetensorsCheckpoint, tied_in_config: bool) -> bool:
    """The head counts as tied if the file has no separate head or stores the same values as the embeddings;
    a differing head is kept (transformers 5 skips tying in that case too)."""
    embeddings = QWEN3_PREFIX + "embed_tokens.weight"
    untied = LM_HEAD in ckpt.keys()
    if untied and tied_in_config and embeddings in ckpt.keys():
        untied = not torch.equal(ckpt.get(LM_HEAD), ckpt.get(embeddings))
    return untied


def import_qwen3(
    qwen3_dir: str | os.PathLike,
    vision_dir: str | os.PathLike,
    projector_type: str = "mlp",
    dtype: str | torch.dtype = "float32",
    seed: int = 0,
) -> tuple[MiniMindVForConditionalGeneration, MiniMindVProcessor]:
    """Build a MiniMind-V model + processor from a Qwen3 folder and a CLIP/SigLIP folder.

    The decoder and the vision tower are streamed in strictly; the projector is freshly initialised (seeded with
    `seed`). `dtype` is 'float32' | 'bfloat16' | a torch dtype. Returns (model in eval mode, MiniMindVProcessor).
    """
    qwen3_dir, vision_dir, dtype = Path(qwen3_dir), Path(vision_dir), parse_dtype(dtype)
    decoder = qwen3_decoder_fields(qwen3_dir)
    text_ckpt = SafetensorsCheckpoint(qwen3_dir)
    vision = open_vision_checkpoint(vision_dir)

    tokenizer = load_tokenizer(qwen3_dir)
    ensure_vlm_special_tokens(tokenizer)
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    if decoder["pad_token_id"] is None:
        decoder["pad_token_id"] = tokenizer.pad_token_id
    image_processor = load_image_processor(vision_dir, vision.config, vision.family)

    decoder["tie_word_embeddings"] = not _stores_untied_head(text_ckpt, decoder["tie_word_embeddings"])
    try:
        config = MiniMindVConfig(
            **decoder,
            vision_config=vision.config,
            projector_type=projector_type,
            # A newly added <|image_pad|> lies beyond the vocabulary until the embeddings are resized below.
            image_token_id=image_token_id if image_token_id < decoder["vocab_size"] else 0,
        )
    except ValueError as error:
        raise CheckpointError(f"cannot build a MiniMind-V config: {error}") from error

    with init_empty_weights(include_buffers=False):  # parameters on meta; buffers (RoPE, position ids) real
        model = MiniMindVForConditionalGeneration(config)
    expected = expected_shapes(model)
    if config.tie_word_embeddings:
        expected.pop(LM_HEAD, None)
    decoder_expected = {k: v for k, v in expected.items() if not k.startswith((TOWER_PREFIX, PROJECTOR_PREFIX))}
    tower_expected = {k: v for k, v in expected.items() if k.startswith(TOWER_PREFIX)}

    mapping, unmapped = decoder_import_mapping(text_ckpt, config.tie_word_embeddings)
    check_key_coverage(mapping, decoder_expected, unmapped, what=f"the Qwen3 checkpoint in {qwen3_dir}")
    vision_mapping, vision_unmapped = vision_key_mapping(
        vision, [k[len(TOWER_PREFIX):] for k in tower_expected], TOWER_PREFIX
    )
    check_key_coverage(vision_mapping, tower_expected, vision_unmapped, what=f"the vision checkpoint in {vision_dir}")

    stream_into(model, {**mapping, **vision_mapping}, dtype)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.get_input_embeddings().weight
    projector = model.model.multi_modal_projector
    projector.to_empty(device="cpu")
    torch.manual_seed(seed)
    projector.apply(model._init_weights)  # the initialisation a freshly constructed MiniMind-V gives its projector
    projector.to(dtype)
    check_materialised(model)

    if len(tokenizer) > config.get_text_config().vocab_size:
        # Only when added tokens do not fit in the table's unused rows (Qwen3: 151669 tokens, 151936 rows).
        model.resize_token_embeddings(len(tokenizer))
    model.config.image_token_id = image_token_id
    model.config.dtype = dtype
    load_generation_config(model, qwen3_dir)
    model.eval()

    tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE  # the tokenizer alone renders the same prompts as the processor
    processor = MiniMindVProcessor(
        image_processor=image_processor, tokenizer=tokenizer, image_seq_length=config.image_seq_length
    )
    return model, processor


def convert_qwen3_to_minimind_v(qwen3_dir, vision_dir, output_dir, projector_type: str = "mlp", dtype="float32",
                                overwrite: bool = False, seed: int = 0) -> Path:
    """`import_qwen3` + save model and processor into `output_dir` atomically. Returns the output path."""
    preflight_import(qwen3_dir, vision_dir, output_dir, overwrite)
    with atomic_output_dir(output_dir, overwrite) as tmp_dir:
        model, processor = import_qwen3(qwen3_dir, vision_dir, projector_type, dtype, seed)
        model.save_pretrained(tmp_dir)
        processor.save_pretrained(tmp_dir)
    return Path(output_dir)


__all__ = ["convert_qwen3_to_minimind_v", "import_qwen3", "preflight_import"]
