"""Tests for processing/training/parts.py: parameter names -> parts (plain and PEFT-wrapped), stages, freezing, and
the one parameter count of both trainers."""

import pytest
from conftest import tiny_model

from processing.training.parts import (
    PARTS, STAGE_PARTS, parameter_report, parse_parts, part_of, set_trainable,
)


def test_part_of_plain_and_peft_names():
    assert part_of("model.vision_tower.embeddings.patch_embedding.weight") == "vision"
    assert part_of("model.multi_modal_projector.linear_1.weight") == "projector"
    assert part_of("model.language_model.layers.0.self_attn.q_proj.weight") == "decoder"
    assert part_of("lm_head.weight") == "decoder"
    peft_projector = "base_model.model.model.multi_modal_projector.modules_to_save.default.linear_1.weight"
    assert part_of(peft_projector) == "projector"
    assert part_of("base_model.model.model.language_model.layers.0.self_attn.q_proj.base_layer.weight") == "decoder"
    with pytest.raises(ValueError, match="belongs to no part"):
        part_of("something.else")


def test_parse_parts():
    assert parse_parts(" vision,projector,vision ") == ("vision", "projector")
    for spec in ("", "vision,eyes"):
        with pytest.raises(ValueError, match="comma-separated subset"):
            parse_parts(spec)


def test_report_counts_each_part_once_and_follows_freezing():
    model = tiny_model()
    set_trainable(model, STAGE_PARTS["pretrain"])
    report = parameter_report(model)
    modules = {"vision": model.model.vision_tower, "projector": model.model.multi_modal_projector,
               "decoder": model.model.language_model}  # lm_head is tied: counted once, with the embeddings
    for part in PARTS:
        assert report[part]["total"] == sum(p.numel() for p in modules[part].parameters()), part
    assert report["lora"] == {"trainable": 0, "total": 0}
    assert report["all"]["total"] == sum(report[part]["total"] for part in PARTS) == model.num_parameters()
    assert report["all"]["trainable"] == report["projector"]["trainable"] == report["projector"]["total"]
    assert report["vision"]["trainable"] == report["decoder"]["trainable"] == 0
