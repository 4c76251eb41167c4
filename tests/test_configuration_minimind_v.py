"""MiniMindVConfig, the composite config (configuration_minimind_v.py): decoder fields flat or in `text_config` give
the same config, checkpoints saved with the earlier flat config load with identical logits, every invalid value is a
ValueError naming its field. (Presets: test_presets.py.)

Run: `python -m pytest tests/test_configuration_minimind_v.py -q`.
"""

import json

import pytest
import torch
from conftest import REPO_ROOT, tiny_config
from safetensors.torch import load_file

from modeling_minimind_v import MiniMindConfig, MiniMindVConfig, MiniMindVForConditionalGeneration

LEGACY = REPO_ROOT / "tests" / "fixtures" / "legacy_flat"


def test_text_config_is_a_separate_minimind_config():
    config = tiny_config()
    assert isinstance(config.text_config, MiniMindConfig) and config.text_config.model_type == "minimind"
    # vLLM/SGLang pick their multimodal wrapper only when the text config is a separate sub-config.
    assert config.get_text_config() is config.text_config and config.get_text_config() is not config
    assert not hasattr(config, "hidden_size")


def test_flat_and_nested_decoder_fields_give_the_same_config():
    flat = MiniMindVConfig(hidden_size=96, num_hidden_layers=3, num_attention_heads=4, vocab_size=777)
    nested = MiniMindVConfig(text_config={"hidden_size": 96, "num_hidden_layers": 3, "num_attention_heads": 4,
                                          "vocab_size": 777})
    assert flat.to_dict() == nested.to_dict()
    assert flat.text_config.head_dim == 24
    # Flat fields override a given text_config (from_preset(name, **overrides) relies on it).
    assert MiniMindVConfig(text_config={"hidden_size": 96, "num_attention_heads": 4}, hidden_size=128).text_config \
        .hidden_size == 128


def test_tie_word_embeddings_lives_on_the_vlm_and_the_decoder_follows():
    config = MiniMindVConfig(tie_word_embeddings=False, text_config={"tie_word_embeddings": True})
    assert config.tie_word_embeddings is False and config.text_config.tie_word_embeddings is False


def test_save_and_reload_keeps_the_composite_config(tmp_path):
    config = tiny_config(use_moe=True, n_routed_experts=4)
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["text_config"]["model_type"] == "minimind" and saved["text_config"]["num_experts"] == 4
    assert "hidden_size" not in saved
    assert MiniMindVConfig.from_pretrained(tmp_path).to_dict() == config.to_dict()


@pytest.mark.parametrize("name", ["tiny_dense", "tiny_moe", "tiny_cross_attention"])
def test_checkpoint_saved_with_the_flat_config_loads_with_identical_logits(name):
    folder = LEGACY / name
    assert "hidden_size" in json.loads((folder / "config.json").read_text())  # really the old, flat layout
    model = MiniMindVForConditionalGeneration.from_pretrained(folder).eval()
    reference = load_file(str(folder / "reference.safetensors"))
    with torch.no_grad():
        logits = model(input_ids=reference["input_ids"], pixel_values=reference["pixel_values"],
                       attention_mask=reference["attention_mask"]).logits
    # The references were computed on another machine: CPU matmul kernels differ in the last bits (seen: 1.3e-5);
    # a weight loaded into the wrong place, or not at all, moves logits by O(1).
    torch.testing.assert_close(logits, reference["logits"], rtol=1e-4, atol=1e-4)
    assert (model.config.text_config.num_experts > 0) == (name == "tiny_moe")


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"hidden_size": 60, "num_attention_heads": 7}, "num_attention_heads"),
        ({"num_attention_heads": 0}, "num_attention_heads"),
        ({"num_key_value_heads": 3}, "num_key_value_heads"),
        ({"use_moe": True, "n_routed_experts": 2, "num_experts_per_tok": 3}, "num_experts_per_tok"),
        ({"num_experts": 4, "moe_intermediate_size": 0}, "moe_intermediate_size"),
        ({"projector_type": "conv"}, "projector_type"),
        ({"image_token_id": 5000}, "image_token_id"),
        ({"hidden_act": "nope"}, "hidden_act"),
        ({"image_seq_length": 10}, "image_seq_length"),
        ({"dropout": 1.5}, "dropout"),
        ({"vocab_size": 0}, "vocab_size"),
        ({"eos_token_id": 1024}, "eos_token_id"),
        ({"eos_token_id": [2, 4096]}, "eos_token_id"),
        ({"pad_token_id": -7}, "pad_token_id"),
        ({"vision_config": {"model_type": "clip_vision_model", "image_size": 8, "patch_size": 16}}, "vision_config"),
        ({"vision_config": {"model_type": "clip_vision_model", "patch_size": 0}}, "vision_config"),
        ({"vision_config": {"model_type": "clip_vision_model", "hidden_size": 0}}, "vision_config"),
        ({"vision_config": {"model_type": "no_such_model"}}, "vision_config"),
        ({"text_config": "nope"}, "text_config"),
    ],
)
def test_invalid_config_names_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        tiny_config(**overrides)


def test_unknown_preset_lists_available():
    with pytest.raises(ValueError, match="tiny"):
        MiniMindVConfig.from_preset("no-such-preset")
