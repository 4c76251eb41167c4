"""minimind-v model package: MiniMindVConfig and the MiniMind-V transformers models (the Hub's remote code)."""

from .configuration_minimind_v import MiniMindVConfig
from .modeling_minimind_v import (
    MiniMindVForConditionalGeneration,
    MiniMindVModel,
    MiniMindVPreTrainedModel,
)

__all__ = ["MiniMindVConfig", "MiniMindVForConditionalGeneration", "MiniMindVModel", "MiniMindVPreTrainedModel"]
