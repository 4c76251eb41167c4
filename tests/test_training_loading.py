"""Tests for processing/training/loading.py: a preset or a folder becomes (model, processor), and a preset whose
token ids the shipped tokenizer cannot hold is refused up front with the way to build a matching checkpoint."""

import pytest

import processing.training.loading as loading
from processing.training.loading import load_model_and_processor


def test_preset_loads_a_fresh_model_with_the_shipped_processor():
    model, processor = load_model_and_processor(preset="tiny")
    assert processor.image_token_id == model.config.image_token_id
    assert processor.image_seq_length == model.config.image_seq_length


def test_qwen3_preset_is_refused_before_the_model_is_built_and_says_how_to_get_one(monkeypatch):
    def build(config):  # refused from the config alone: the 0.6B model would be 2.7 GB of fp32 weights
        raise AssertionError("the model was built before the processor check")

    monkeypatch.setattr(loading, "MiniMindVForConditionalGeneration", build)
    with pytest.raises(ValueError, match="image token id.*make_random_checkpoint.py --family qwen3"):
        load_model_and_processor(preset="qwen3-0.6b")
