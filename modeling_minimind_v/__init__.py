"""minimind-v model package: the configs and transformers models of MiniMind-V and of its MiniMind decoder, and the
MiniMind-V processor. Everything in this folder travels to the Hub as remote code."""

from .configuration_minimind import MiniMindConfig
from .configuration_minimind_v import MiniMindVConfig
from .modeling_minimind import MiniMindForCausalLM, MiniMindModel, MiniMindPreTrainedModel
from .modeling_minimind_v import MiniMindVForConditionalGeneration, MiniMindVModel, MiniMindVPreTrainedModel

__all__ = [
    "MiniMindConfig", "MiniMindForCausalLM", "MiniMindModel", "MiniMindPreTrainedModel", "MiniMindVConfig",
    "MiniMindVForConditionalGeneration", "MiniMindVModel", "MiniMindVPreTrainedModel",
]
