"""MiniMindVConfig: the configuration of the MiniMind-V vision-language model, a LLaVA-style composite.

`text_config` is a [`MiniMindConfig`] (the decoder), `vision_config` a transformers vision config (CLIP ViT-B/16 by
default; SigLIP and other `AutoModel`-buildable ViT configs work too); the projector and image-token fields sit at the
top. The decoder's fields are also accepted flat, as earlier releases and the presets in `configs/` write them
(`MiniMindVConfig(hidden_size=512, ...)`): they are routed into `text_config`, so checkpoints saved with a flat
config load unchanged. Remote code: imports only transformers, torch and the standard library.
"""

import dataclasses
import importlib
import importlib.resources
import json
from pathlib import Path

from transformers import AutoConfig, PreTrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from .configuration_minimind import LEGACY_MOE_KEYS, MiniMindConfig, require
from .projector import PROJECTORS

# CLIP ViT-B/16 vision tower (openai/clip-vit-base-patch16): 224 px, patch 16 -> 196 patch tokens of width 768.
DEFAULT_VISION_CONFIG = {
    "model_type": "clip_vision_model",
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "image_size": 224,
    "patch_size": 16,
    "projection_dim": 512,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}
# The presets ship as JSON in the repository's `configs/`, installed as this package by setup.py.
PRESETS_PACKAGE = "minimind_v_configs"

_BASE_FIELDS = {f.name for f in dataclasses.fields(PreTrainedConfig)}
# Decoder fields that may be given flat on MiniMindVConfig (everything MiniMindConfig adds, plus legacy names).
DECODER_KEYS = frozenset({f.name for f in dataclasses.fields(MiniMindConfig)} - _BASE_FIELDS) | set(LEGACY_MOE_KEYS)


class MiniMindVConfig(PreTrainedConfig):
    r"""
    Configuration for [`MiniMindVForConditionalGeneration`] and [`MiniMindVModel`].

    Args:
        text_config (`MiniMindConfig` or dict): the decoder. Its fields may also be passed flat (see the module doc).
        vision_config (`PreTrainedConfig` or dict): a transformers vision config (default: CLIP ViT-B/16).
        vision_feature_layer (`int`, -1): vision hidden state fed to the projector (-1: the last).
        freeze_vision_tower (`bool`, True): keep the tower's weights frozen (also after `from_pretrained`).
        projector_type (`str`, "mlp"): one of `PROJECTORS` (linear, mlp, cross_attention);
            `projector_num_queries`, `projector_num_heads`, `projector_num_layers` configure cross_attention.
        image_token_id (`int`): the placeholder token whose embeddings are replaced by image features.
        image_seq_length (`int`, derived): features per image: the vision tower's patch tokens for linear/mlp, the
            number of queries for cross_attention.
        tie_word_embeddings (`bool`, True): share the LM head with the input embeddings.
    """

    model_type = "minimind_v"
    keys_to_ignore_at_inference = ["past_key_values", "cache"]
    sub_configs = {"text_config": MiniMindConfig, "vision_config": AutoConfig}

    text_config: dict | PreTrainedConfig | None = None
    vision_config: dict | PreTrainedConfig | None = None
    vision_feature_layer: int = -1
    freeze_vision_tower: bool = True
    projector_type: str = "mlp"
    projector_num_queries: int = 64
    projector_num_heads: int = 8
    projector_num_layers: int = 1
    image_token_id: int = 5
    image_seq_length: int | None = None
    tie_word_embeddings: bool = True

    def __post_init__(self, **kwargs):
        flat = {key: kwargs.pop(key) for key in list(kwargs) if key in DECODER_KEYS}
        self.text_config = self._build_text_config(self.text_config, flat)
        self.vision_config = self._build_vision_config(self.vision_config)
        self._validate()
        if self.image_seq_length is None:
            self.image_seq_length = self._derived_image_seq_length()
        elif self.image_seq_length != self._derived_image_seq_length():
            raise ValueError(
                f"Invalid MiniMindVConfig.image_seq_length: {self.image_seq_length} does not match the projector "
                f"output: projector_type={self.projector_type!r} yields {self._derived_image_seq_length()} features "
                "per image"
            )
        super().__post_init__(**kwargs)

    def _build_text_config(self, text_config, flat: dict) -> MiniMindConfig:
        if isinstance(text_config, PreTrainedConfig):
            if not isinstance(text_config, MiniMindConfig) and getattr(text_config, "model_type", None) != "minimind":
                raise ValueError(f"Invalid MiniMindVConfig.text_config: expected a MiniMindConfig, got "
                                 f"{type(text_config).__name__}")
            if not flat:
                text_config.tie_word_embeddings = self.tie_word_embeddings
                return text_config
            text_config = text_config.to_dict()
        if text_config is not None and not isinstance(text_config, dict):
            raise ValueError(f"Invalid MiniMindVConfig.text_config: must be a dict or a MiniMindConfig, got "
                             f"{type(text_config).__name__}")
        fields = {key: value for key, value in (text_config or {}).items() if key != "model_type"}
        fields.update(flat)  # flat decoder fields win: they are the caller's explicit overrides
        # The VLM's tie_word_embeddings is the one transformers reads; the decoder follows it.
        fields["tie_word_embeddings"] = self.tie_word_embeddings
        return _named_errors("text_config", MiniMindConfig, fields)

    @staticmethod
    def _build_vision_config(vision_config) -> PreTrainedConfig:
        if vision_config is None:
            vision_config = dict(DEFAULT_VISION_CONFIG)
        if isinstance(vision_config, dict):
            vision_dict = dict(vision_config)
            model_type = vision_dict.pop("model_type", "clip_vision_model")
            if model_type not in CONFIG_MAPPING:
                raise ValueError(f"Invalid MiniMindVConfig.vision_config: model_type={model_type!r} is not a "
                                 "transformers config type")
            vision_config = _named_errors("vision_config", CONFIG_MAPPING[model_type], vision_dict)
        if not isinstance(vision_config, PreTrainedConfig):
            raise ValueError(f"Invalid MiniMindVConfig.vision_config: must be a dict or a PreTrainedConfig, got "
                             f"{type(vision_config).__name__}")
        return vision_config

    def _validate(self):
        def req(condition, field, message):
            require(condition, "MiniMindVConfig", field, message)

        text, vision = self.text_config, self.vision_config
        req(self.projector_type in PROJECTORS, "projector_type",
            f"{self.projector_type!r} is not one of {tuple(PROJECTORS)}")
        if self.projector_type == "cross_attention":
            for field in ("projector_num_queries", "projector_num_layers", "projector_num_heads"):
                value = getattr(self, field)
                req(isinstance(value, int) and value > 0, field, f"must be a positive integer, got {value!r}")
            req(text.hidden_size % self.projector_num_heads == 0, "projector_num_heads",
                f"projector_num_heads={self.projector_num_heads} does not divide hidden_size={text.hidden_size}")
        req(isinstance(self.image_token_id, int) and 0 <= self.image_token_id < text.vocab_size, "image_token_id",
            f"{self.image_token_id} is outside the vocabulary (vocab_size={text.vocab_size})")
        for attr in ("image_size", "patch_size", "hidden_size"):
            value = getattr(vision, attr, None)
            req(isinstance(value, int) and not isinstance(value, bool) and value > 0, "vision_config",
                f"{type(vision).__name__}.{attr} must be a positive integer, got {value!r} "
                "(use a ViT-style vision config such as CLIP or SigLIP)")
        req(vision.image_size >= vision.patch_size, "vision_config",
            f"image_size={vision.image_size} is smaller than patch_size={vision.patch_size}: no patch tokens")
        n_layers = vision.num_hidden_layers
        req(isinstance(self.vision_feature_layer, int) and -n_layers <= self.vision_feature_layer < n_layers + 1
            and self.vision_feature_layer != 0,
            "vision_feature_layer", f"{self.vision_feature_layer} is not a layer of a {n_layers}-layer vision tower")

    @property
    def num_patches(self) -> int:
        """Patch tokens per image produced by the vision tower (class token excluded)."""
        return (self.vision_config.image_size // self.vision_config.patch_size) ** 2

    def _derived_image_seq_length(self) -> int:
        return self.projector_num_queries if self.projector_type == "cross_attention" else self.num_patches

    # ------------------------------------------------------------------------------------------------ presets
    @staticmethod
    def _presets_dir() -> Path:
        try:
            # Imported by name at call time: the Hub copy of this file does not need the package to load.
            package = importlib.import_module(PRESETS_PACKAGE)
        except ImportError as error:
            raise ImportError(
                f"Presets ship with the minimind-v package (its `configs/` folder, installed as {PRESETS_PACKAGE!r}); "
                "install it (`pip install -e .` in the repository) or pass a config JSON path"
            ) from error
        return Path(importlib.resources.files(package))

    @classmethod
    def available_presets(cls) -> list[str]:
        return sorted(p.stem for p in cls._presets_dir().glob("*.json"))

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "MiniMindVConfig":
        """A config from a preset name (tiny, small, base, moe, qwen3-0.6b) or a JSON file path; `overrides` are
        config fields (flat decoder fields included)."""
        path = Path(name)
        if path.suffix != ".json" or not path.is_file():
            path = cls._presets_dir() / f"{name}.json"
        if not path.is_file():
            raise ValueError(f"Unknown preset {name!r}: not a JSON file and not one of {cls.available_presets()}")
        fields = json.loads(path.read_text(encoding="utf-8"))
        fields.pop("_comment", None)
        fields.update(overrides)
        return cls(**fields)


def _named_errors(name: str, config_class, fields: dict):
    """`config_class(**fields)`, with any validation failure raised as a ValueError that names the sub-config.

    transformers validates config fields through huggingface_hub's strict dataclasses, whose errors are neither
    ValueError nor TypeError; callers catching those would miss them."""
    try:
        return config_class(**fields)
    except (ValueError, TypeError):
        raise
    except Exception as error:  # strict-dataclass validation errors (field types, class validators)
        message = " ".join(str(error).split())
        raise ValueError(f"Invalid MiniMindVConfig.{name}: {message}") from error


__all__ = ["MiniMindVConfig"]
