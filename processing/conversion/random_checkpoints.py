"""Random Hugging Face checkpoints built locally, so that import/export can be tried (and tested) without any
download: a Qwen3 or Llama decoder folder (weights, config, a small byte-level BPE tokenizer with ChatML specials and
its own chat template) and a CLIP or SigLIP vision folder, each tiny or shaped like a real model
(``scripts/make_random_checkpoint.py``).

A preset-shaped decoder keeps the real model's vocabulary size (its embedding table), while the tokenizer stays small:
the rows past the tokenizer are unused, as Qwen3's own padding rows are.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM,
    PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM, SiglipConfig, SiglipModel, SiglipVisionConfig,
    SiglipVisionModel, ViTConfig, ViTModel,
)

from ..tokenizers import ENDOFTEXT_TOKEN, IM_END_TOKEN, IM_START_TOKEN, IMAGE_TOKEN, VISION_END_TOKEN, VISION_START_TOKEN

CHATML_TOKENS = [ENDOFTEXT_TOKEN, IM_START_TOKEN, IM_END_TOKEN]
VISION_TOKENS = [VISION_START_TOKEN, VISION_END_TOKEN, IMAGE_TOKEN]
CORPUS = ["hello world, the cat sat on the mat. Describe the image: a red square and two blue circles."] * 8
TOKENIZER_SIZE = 290

# Decoder shapes. `tiny`: seconds to build and run; the others: the real models' shapes (random weights).
DECODER_SHAPES = {
    "tiny": dict(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, rope_theta=50000.0, rms_norm_eps=1e-6,
                 max_position_embeddings=512),
    "smollm2-135m": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, head_dim=64, rope_theta=100000.0,
                         rms_norm_eps=1e-5, max_position_embeddings=8192),
    "qwen3-0.6b": dict(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                       num_attention_heads=16, num_key_value_heads=8, head_dim=128, rope_theta=1000000.0,
                       rms_norm_eps=1e-6, max_position_embeddings=40960),
}
DECODER_FAMILIES = ("qwen3", "llama")
# Vision shapes. `tiny`: 32 px, patch 16 (4 patch tokens); `base`: ViT-B/16 at 224 px (196 patch tokens).
VISION_SHAPES = {
    "tiny": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                 patch_size=16),
    "base": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                 image_size=224, patch_size=16),
}
VISION_KINDS = ("clip_full", "clip_vision", "clip_vision_legacy", "siglip_vision", "siglip_full", "vit")
_DUAL_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=99)


def make_tokenizer(folder: str | os.PathLike, vision_tokens: bool = True,
                   size: int = TOKENIZER_SIZE) -> PreTrainedTokenizerFast:
    """A Qwen-style byte-level BPE tokenizer saved in `folder` (ChatML specials, its own chat template, which an
    import replaces); the vision tokens only if `vision_tokens`."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    specials = CHATML_TOKENS + (VISION_TOKENS if vision_tokens else [])
    trainer = trainers.BpeTrainer(vocab_size=size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(CORPUS, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=IM_END_TOKEN, pad_token=ENDOFTEXT_TOKEN)
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    tokenizer.save_pretrained(str(folder))
    return tokenizer


def make_decoder(folder: str | os.PathLike, family: str = "qwen3", shape: str = "tiny", tied: bool = True,
                 shards: bool = False, vision_tokens: bool = True, seed: int = 0, **overrides) -> Path:
    """A random `family` ('qwen3' | 'llama') decoder of `shape` (a key of DECODER_SHAPES) saved in `folder` with a
    tokenizer; `overrides` are config fields (e.g. vocab_size, attention_bias). `shards` writes ~40 KB shards."""
    if family not in DECODER_FAMILIES:
        raise ValueError(f"unknown decoder family {family!r}; choose one of {DECODER_FAMILIES}")
    if shape not in DECODER_SHAPES:
        raise ValueError(f"unknown decoder shape {shape!r}; choose one of {list(DECODER_SHAPES)}")
    folder = Path(folder)
    fields = {**DECODER_SHAPES[shape], **overrides}
    tokenizer = make_tokenizer(folder, vision_tokens, size=min(TOKENIZER_SIZE, fields["vocab_size"]))
    rope_theta = fields.pop("rope_theta")
    common = dict(fields, rope_parameters={"rope_type": "default", "rope_theta": rope_theta},
                  tie_word_embeddings=tied, bos_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(Qwen3Config(**common)) if family == "qwen3" else LlamaForCausalLM(LlamaConfig(**common))
    model.save_pretrained(str(folder), max_shard_size="40KB" if shards else "50GB")
    return folder


def make_vision(folder: str | os.PathLike, kind: str = "clip_full", shape: str = "tiny", seed: int = 0) -> Path:
    """A random vision checkpoint of `kind` (a key of VISION_KINDS; 'vit' is one the import refuses) and `shape`
    saved in `folder`. `clip_full` also gets a preprocessor config with non-default settings."""
    if shape not in VISION_SHAPES:
        raise ValueError(f"unknown vision shape {shape!r}; choose one of {list(VISION_SHAPES)}")
    folder, vision = Path(folder), VISION_SHAPES[shape]
    size = vision["image_size"]
    torch.manual_seed(seed)
    if kind == "clip_full":
        text = dict(_DUAL_TEXT, bos_token_id=0, eos_token_id=1, pad_token_id=1)
        CLIPModel(CLIPConfig(vision_config=vision, text_config=text, projection_dim=16)).save_pretrained(folder)
        # Non-default settings, to show that the checkpoint's image processor config drives the processor.
        CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                              image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.25, 0.3]).save_pretrained(folder)
    elif kind in ("clip_vision", "clip_vision_legacy"):
        CLIPVisionModel(CLIPVisionConfig(**vision)).save_pretrained(folder)
        if kind == "clip_vision_legacy":  # transformers 4 wrote a CLIPVisionModel's keys under `vision_model.`
            from safetensors.torch import load_file, save_file

            path = folder / "model.safetensors"
            save_file({f"vision_model.{k}": v for k, v in load_file(path).items()}, path, metadata={"format": "pt"})
    elif kind == "siglip_vision":
        SiglipVisionModel(SiglipVisionConfig(**vision)).save_pretrained(folder)
    elif kind == "siglip_full":
        SiglipModel(SiglipConfig(vision_config=vision, text_config=_DUAL_TEXT)).save_pretrained(folder)
    elif kind == "vit":
        ViTModel(ViTConfig(**vision)).save_pretrained(folder)
    else:
        raise ValueError(f"unknown vision kind {kind!r}; choose one of {VISION_KINDS}")
    return folder


def make_random_pair(output_dir: str | os.PathLike, family: str = "qwen3", shape: str = "tiny",
                     vision_kind: str = "clip_full", vision_shape: str = "tiny", tied: bool = True, seed: int = 0,
                     overwrite: bool = False) -> tuple[Path, Path]:
    """`output_dir/decoder` and `output_dir/vision`, ready for `scripts/import_qwen3.py`, written atomically."""
    from .safetensors_io import atomic_output_dir

    output_dir = Path(output_dir)
    with atomic_output_dir(output_dir, overwrite) as tmp_dir:
        make_decoder(tmp_dir / "decoder", family, shape, tied=tied, seed=seed)
        make_vision(tmp_dir / "vision", vision_kind, vision_shape, seed=seed)
    return output_dir / "decoder", output_dir / "vision"


__all__ = [
    "CORPUS", "DECODER_FAMILIES", "DECODER_SHAPES", "TOKENIZER_SIZE", "VISION_KINDS", "VISION_SHAPES",
    "make_decoder", "make_random_pair", "make_tokenizer", "make_vision",
]
