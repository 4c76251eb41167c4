"""Every shipped preset in configs/ builds (on the meta device) with the parameter count it promises.

Run: `python -m pytest tests/test_presets.py -q`.
"""

import json

import pytest
import torch
from conftest import REPO_ROOT
from transformers import CLIPVisionConfig, CLIPVisionModel, Qwen3Config, Qwen3ForCausalLM

from modeling_minimind_v import MiniMindVConfig, MiniMindVForConditionalGeneration

PRESETS = sorted(p.stem for p in (REPO_ROOT / "configs").glob("*.json"))


def build_meta(config):
    with torch.device("meta"):
        return MiniMindVForConditionalGeneration(config)


def count(module, prefix=""):
    return sum(p.numel() for n, p in module.named_parameters() if n.startswith(prefix))


def test_presets_are_all_known():
    assert set(PRESETS) == {"tiny", "small", "base", "moe", "qwen3-0.6b"}
    assert MiniMindVConfig.available_presets() == PRESETS


@pytest.mark.parametrize("name", PRESETS)
def test_preset_builds_and_round_trips(name, tmp_path):
    config = MiniMindVConfig.from_preset(name)
    model = build_meta(config)
    assert config.image_seq_length == config.num_patches
    config.save_pretrained(tmp_path)
    assert MiniMindVConfig.from_pretrained(tmp_path).to_dict() == config.to_dict()
    assert count(model, "model.language_model.") > 0


@pytest.mark.parametrize("name, millions", [("small", 26), ("base", 104)])
def test_dense_decoder_sizes(name, millions):
    model = build_meta(MiniMindVConfig.from_preset(name))
    decoder = count(model, "model.language_model.")  # lm_head is tied to embed_tokens, counted once
    assert abs(decoder / 1e6 - millions) < 1.0, decoder


def test_moe_preset_has_routed_and_shared_experts():
    config = MiniMindVConfig.from_preset("moe")
    layer = build_meta(config).model.language_model.layers[0].mlp
    assert len(layer.experts) == config.text_config.num_experts == 4 and len(layer.shared_experts) == 1
    assert config.text_config.num_experts_per_tok == 2


def test_clip_presets_use_vit_b16():
    for name in ("small", "base", "moe", "qwen3-0.6b"):
        vision = MiniMindVConfig.from_preset(name).vision_config
        assert (vision.model_type, vision.hidden_size, vision.num_hidden_layers) == ("clip_vision_model", 768, 12)
        assert (vision.image_size, vision.patch_size) == (224, 16)
        assert MiniMindVConfig.from_preset(name).image_seq_length == 196


def test_qwen3_preset_equals_transformers_qwen3_plus_clip_plus_projector():
    config = MiniMindVConfig.from_preset("qwen3-0.6b")
    raw = json.loads((REPO_ROOT / "configs" / "qwen3-0.6b.json").read_text())
    qwen_config = Qwen3Config(
        vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
        num_key_value_heads=8, head_dim=128, max_position_embeddings=40960, rope_theta=1000000.0, rms_norm_eps=1e-6,
        tie_word_embeddings=True,
    )
    for field in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings"):
        assert raw[field] == getattr(qwen_config, field), field
    assert raw["rope_theta"] == qwen_config.rope_parameters["rope_theta"]
    with torch.device("meta"):
        qwen = Qwen3ForCausalLM(qwen_config)
        clip = CLIPVisionModel(CLIPVisionConfig(**{k: v for k, v in config.vision_config.to_dict().items()
                                                   if k != "model_type"}))
    model = build_meta(config)
    projector = count(model, "model.multi_modal_projector.")
    assert projector == 768 * 1024 + 1024 + 1024 * 1024 + 1024  # mlp: Linear(768, 1024) -> GELU -> Linear(1024, 1024)
    assert count(qwen) == 596_049_920  # Qwen3-0.6B, tied embedding counted once
    assert count(model) == count(qwen) + count(clip) + projector
    assert count(model, "model.language_model.") == count(qwen)


@pytest.mark.parametrize("name", PRESETS)
def test_processor_token_count_matches_model_features(name):
    """For every preset, the processor's image block has exactly as many placeholders as the model has features."""
    from PIL import Image

    from processing.processors import build_processor
    from processing.tokenizers import load_default_tokenizer

    config = MiniMindVConfig.from_preset(name)
    processor = build_processor(load_default_tokenizer(), config.vision_config, config.image_seq_length)
    out = processor(images=[Image.new("RGB", (300, 200), "red")], text=f"look {processor.image_token} here",
                    return_tensors="pt")
    image_token_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    assert int((out["input_ids"] == image_token_id).sum()) == config.image_seq_length
    size = config.vision_config.image_size
    assert tuple(out["pixel_values"].shape) == (1, 3, size, size)
    with torch.device("meta"):
        model = MiniMindVForConditionalGeneration(config)
        features = model.model.get_image_features(torch.empty(1, 3, size, size, device="meta")).pooler_output
    assert features.shape[1] == config.image_seq_length
