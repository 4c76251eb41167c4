"""A tiny trainable MiniMind-V on the synthetic shapes task, shared by the end-to-end tests (test_e2e.py, test_vllm.py):
rows asking what one rendered shape is, and an untrained 48-px model + processor folder to train from."""

import json
import random
from pathlib import Path

import torch

from modeling_minimind_v import MiniMindVConfig, MiniMindVForConditionalGeneration
from processing.processors import build_processor
from processing.synthetic import COLORS, POSITIONS, SHAPES, render_image
from processing.tokenizers import load_default_tokenizer

QUESTION = "What is in the image?"


def write_shape_rows(root: Path, split: str, n: int, rng: random.Random) -> Path:
    """`n` one-shape rows ("red circle") with 48-px images under root/images; returns root/{split}.jsonl."""
    (root / "images").mkdir(exist_ok=True)
    path = root / f"{split}.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            obj = {"color": rng.choice(COLORS), "shape": rng.choice(SHAPES), "cell": rng.choice(POSITIONS)}
            image = f"images/{split}_{i}.png"
            render_image([obj], 48).save(root / image)
            row = {"conversations": [{"role": "user", "content": f"<image>\n{QUESTION}"},
                                     {"role": "assistant", "content": f"{obj['color']} {obj['shape']}"}],
                   "image": image, "type": "what"}
            f.write(json.dumps(row) + "\n")
    return path


def save_untrained_model(folder: Path, max_position_embeddings: int = 256, **decoder) -> MiniMindVConfig:
    """A seeded random 2-layer model (hidden 64, head_dim 32, 1-layer 48-px CLIP tower) + its processor in `folder`."""
    tokenizer = load_default_tokenizer()
    config = MiniMindVConfig(
        vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
        intermediate_size=128, max_position_embeddings=max_position_embeddings, rope_theta=10000.0,
        initializer_range=0.1,
        vision_config={"model_type": "clip_vision_model", "hidden_size": 64, "intermediate_size": 128,
                       "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": 48, "patch_size": 16,
                       "projection_dim": 64},
        **decoder,
    )
    torch.manual_seed(0)
    MiniMindVForConditionalGeneration(config).save_pretrained(folder)
    build_processor(tokenizer, config.vision_config, config.image_seq_length).save_pretrained(folder)
    return config
