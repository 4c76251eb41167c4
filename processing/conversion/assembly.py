"""The MiniMind-V assembly (what ``scripts/import_qwen3.py`` runs): a Qwen3 or Llama decoder folder + a CLIP/SigLIP
vision folder -> a MiniMind-V model and processor, with a freshly initialised projector, saved atomically.

The decoder and the tower are streamed into a model whose parameters start on the meta device, strictly: every
missing, unexpected or mis-shaped key is an error that lists the keys. The decoder's own tokenizer keeps its ids and
gets the project's ChatML VLM chat template; the vision tokens are added as special tokens only where missing, and
only if they do not fit in the table are the embeddings (and an untied head) resized, the new rows set to the mean of
the existing ones (so a new token starts as an "average" token, not as noise). The model card records all of it.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from accelerate import init_empty_weights

from modeling_minimind_v import MiniMindVConfig, MiniMindVForConditionalGeneration
from modeling_minimind_v.processing_minimind_v import DEFAULT_CHAT_TEMPLATE, MiniMindVProcessor

from ..tokenizers import IMAGE_TOKEN, ensure_distinct_pad_token, ensure_vlm_special_tokens
from ..layout import LM_HEAD, PROJECTOR_PREFIX, TOWER_PREFIX
from .decoder import HF_DECODER_PREFIX, decoder_import_mapping
from .decoders import decoder_family_of
from .safetensors_io import (
    CheckpointError, SafetensorsCheckpoint, atomic_output_dir, check_key_coverage, check_materialised,
    check_output_dir, expected_shapes, load_generation_config, load_tokenizer, parse_dtype, stream_into,
)
from .vision import load_image_processor, open_vision_checkpoint, vision_family_of, vision_key_mapping


def preflight_import(qwen3_dir, vision_dir, output_dir, overwrite: bool = False):
    """The checks of `convert_qwen3_to_minimind_v` that need no model: output folder, configs, weight headers."""
    check_output_dir(output_dir, overwrite, inputs=[qwen3_dir, vision_dir])
    decoder_family_of(qwen3_dir).decoder_fields(Path(qwen3_dir))
    SafetensorsCheckpoint(qwen3_dir)
    vision_family_of(vision_dir)
    SafetensorsCheckpoint(vision_dir)


def _stores_untied_head(ckpt: SafetensorsCheckpoint, tied_in_config: bool) -> bool:
    """The head counts as tied if the file has no separate head or stores the same values as the embeddings;
    a differing head is kept (transformers 5 skips tying in that case too)."""
    embeddings = HF_DECODER_PREFIX + "embed_tokens.weight"
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
    """Build a MiniMind-V model + processor from a decoder folder (Qwen3 or Llama, by its config.json model_type)
    and a CLIP/SigLIP folder.

    The decoder and the vision tower are streamed in strictly; the projector is freshly initialised (seeded with
    `seed`). `dtype` is 'float32' | 'bfloat16' | a torch dtype. Returns (model in eval mode, MiniMindVProcessor).
    """
    model, processor, _ = _import(qwen3_dir, vision_dir, projector_type, dtype, seed)
    return model, processor


def _import(qwen3_dir, vision_dir, projector_type, dtype, seed):
    """`import_qwen3`, plus the `ImportRecord` the model card is written from."""
    qwen3_dir, vision_dir, dtype = Path(qwen3_dir), Path(vision_dir), parse_dtype(dtype)
    family = decoder_family_of(qwen3_dir)
    decoder = family.decoder_fields(qwen3_dir)
    text_ckpt = SafetensorsCheckpoint(qwen3_dir)
    vision = open_vision_checkpoint(vision_dir)

    tokenizer = load_tokenizer(qwen3_dir, vocab_size=decoder["vocab_size"])
    old_pad = tokenizer.pad_token
    added = ensure_vlm_special_tokens(tokenizer)
    added += ensure_distinct_pad_token(tokenizer)
    image_token_id, pad_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN), tokenizer.pad_token_id
    # The tokenizer's pad token is the one batches are padded with (and never labelled): the config follows it. An
    # id that lies beyond the table until the resize below is set after it.
    decoder["pad_token_id"] = pad_token_id if pad_token_id < decoder["vocab_size"] else None
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
    check_key_coverage(mapping, decoder_expected, unmapped, what=f"the {family.name} checkpoint in {qwen3_dir}")
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

    old_rows = config.get_text_config().vocab_size
    if len(tokenizer) > old_rows:
        # Only when added tokens do not fit in the table's unused rows (Qwen3: 151669 tokens, 151936 rows;
        # SmolLM2: 49152 tokens and rows, so its three vision tokens get new rows).
        resize_with_mean_rows(model, len(tokenizer))
    model.config.image_token_id = image_token_id
    model.config.get_text_config().pad_token_id = pad_token_id
    model.config.dtype = dtype
    load_generation_config(model, qwen3_dir)
    model.generation_config.pad_token_id = pad_token_id
    model.eval()

    tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE  # the tokenizer alone renders the same prompts as the processor
    processor = MiniMindVProcessor(
        image_processor=image_processor, tokenizer=tokenizer, image_seq_length=config.image_seq_length
    )
    record = ImportRecord(family.name, qwen3_dir.name, vision.family.name, vision_dir.name, added, old_rows,
                          len(tokenizer) > old_rows, None if tokenizer.pad_token == old_pad else (old_pad, tokenizer.pad_token))
    return model, processor, record


def resize_with_mean_rows(model, new_rows: int) -> None:
    """Grow the input embeddings (and an untied head) to `new_rows`, each new row the mean of the existing rows."""
    old_rows = model.get_input_embeddings().weight.shape[0]
    model.resize_token_embeddings(new_rows, mean_resizing=False)  # transformers' own mean_resizing samples noise
    with torch.no_grad():
        tables = {id(t): t for t in (model.get_input_embeddings().weight, model.get_output_embeddings().weight)}
        for table in tables.values():  # a tied head is the same tensor: filled once
            table[old_rows:] = table[:old_rows].mean(dim=0, dtype=torch.float32).to(table.dtype)


class ImportRecord:
    """Where an imported model came from and what changed in its vocabulary: the model card's provenance."""

    def __init__(self, decoder_family: str, decoder_name: str, vision_family: str, vision_name: str,
                 added_tokens: list[str], old_rows: int, resized: bool,
                 pad_change: tuple[str | None, str] | None = None):
        self.decoder_family, self.decoder_name = decoder_family, decoder_name
        self.vision_family, self.vision_name = vision_family, vision_name
        self.added_tokens, self.old_rows, self.resized = list(added_tokens), old_rows, resized
        self.pad_change = pad_change  # (the decoder's pad token or None, the one chosen), when they differ

    def model_card_section(self, new_rows: int) -> str:
        if not self.added_tokens:
            tokens = "The decoder's tokenizer already had the vision tokens: every id and embedding row is unchanged."
        elif self.resized:
            tokens = (f"Added special tokens {', '.join(f'`{t}`' for t in self.added_tokens)}: the embedding table "
                      f"(and an untied head) grew from {self.old_rows} to {new_rows} rows; each new row was set to "
                      "the mean of the existing rows.")
        else:
            tokens = (f"Added special tokens {', '.join(f'`{t}`' for t in self.added_tokens)} in unused rows of the "
                      f"{self.old_rows}-row embedding table (rows kept as stored in the checkpoint).")
        if self.pad_change is not None:
            old, new = self.pad_change
            was = f"the decoder's was `{old}`" if old is not None else "the decoder had none"
            tokens += (f" The pad token is `{new}` ({was}): training never labels the pad token, and batches need "
                       "one that is not the end-of-turn token `<|im_end|>`.")
        return (
            "\n## Provenance\n\n"
            f"Imported with minimind-v's `scripts/import_qwen3.py`: decoder `{self.decoder_name}` "
            f"({self.decoder_family} architecture, weights copied exactly), vision tower `{self.vision_name}` "
            f"({self.vision_family}, weights copied exactly), projector freshly initialised (untrained until the "
            "pretrain stage). The decoder's own tokenizer is kept, with the project's ChatML VLM chat template. "
            f"{tokens}\n"
        )


def convert_qwen3_to_minimind_v(qwen3_dir, vision_dir, output_dir, projector_type: str = "mlp", dtype="float32",
                                overwrite: bool = False, seed: int = 0) -> Path:
    """`import_qwen3` + save model and processor into `output_dir` atomically. Returns the output path.

    An `output_dir` that is (or contains) one of the input folders is refused, whatever `overwrite` says."""
    preflight_import(qwen3_dir, vision_dir, output_dir, overwrite)
    with atomic_output_dir(output_dir, overwrite, inputs=[qwen3_dir, vision_dir]) as tmp_dir:
        model, processor, record = _import(qwen3_dir, vision_dir, projector_type, dtype, seed)
        model.save_pretrained(tmp_dir)
        processor.save_pretrained(tmp_dir)
        card = tmp_dir / "README.md"  # written by save_pretrained; the provenance goes below the usage
        rows = model.get_input_embeddings().weight.shape[0]
        with card.open("a", encoding="utf-8") as handle:
            handle.write(record.model_card_section(rows))
    return Path(output_dir)


# The same functions under family-neutral names (the decoder may be Llama as well as Qwen3).
import_decoder = import_qwen3
convert_decoder_to_minimind_v = convert_qwen3_to_minimind_v

__all__ = [
    "ImportRecord", "convert_decoder_to_minimind_v", "convert_qwen3_to_minimind_v", "import_decoder", "import_qwen3",
    "preflight_import", "resize_with_mean_rows",
]
