"""Tests for processing/image_processors.py: CLIP / SigLIP image processors from the vision-family registry."""

import pytest

from modeling_minimind_v.vision import VISION_FAMILIES
from processing.image_processors import build_image_processor, image_processor_class


@pytest.mark.parametrize("model_type", [t for family in VISION_FAMILIES.values() for t in family.model_types])
def test_every_registered_model_type_gets_its_familys_processor(model_type):
    (family,) = [f for f in VISION_FAMILIES.values() if model_type in f.model_types]
    processor = build_image_processor({"model_type": model_type, "image_size": 32})
    assert type(processor) is image_processor_class(family) and type(processor).__name__ == family.image_processor
    assert tuple(processor.image_mean) == pytest.approx(family.image_mean)
    assert tuple(processor.image_std) == pytest.approx(family.image_std)


def test_build_image_processor_accepts_dicts_and_rejects_unknown_families():
    assert build_image_processor({"model_type": "siglip_vision_model", "image_size": 64}).size.height == 64
    assert build_image_processor({"model_type": "clip_vision_model", "image_size": 48}).crop_size.height == 48
    with pytest.raises(ValueError, match="No image processor for vision model_type 'dinov2'"):
        build_image_processor({"model_type": "dinov2", "image_size": 224})
    with pytest.raises(ValueError, match="image_size"):
        build_image_processor({"model_type": "clip_vision_model"})
