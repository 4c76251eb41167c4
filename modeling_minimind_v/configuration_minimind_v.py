"""MiniMindVConfig: the configuration of the MiniMind-V vision-language model.

The decoder fields are flat on this config (so `config.get_text_config()` is the config itself and transformers'
caches size themselves from it); the vision tower is a nested transformers vision config (CLIP ViT-B/16 by default,
SigLIP and other `AutoModel`-buildable vision configs work too). This file travels to the Hub as remote code: it may
import only transformers, torch and the standard library.
"""

import json
import math
from pathlib import Path

from transformers import AutoConfig, PreTrainedConfig
from transformers.activations import ACT2FN
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

PROJECTOR_TYPES = ("linear", "mlp", "cross_attention")

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


def _presets_dir() -> Path:
    # Presets live in the repository's top-level `configs/` folder, next to this package.
    return Path(__file__).resolve().parent.parent / "configs"


class MiniMindVConfig(PreTrainedConfig):
    r"""
    Configuration for [`MiniMindVForConditionalGeneration`].

    Decoder (MiniMind, Qwen3-style): `vocab_size`, `hidden_size`, `num_hidden_layers`, `num_attention_heads`,
    `num_key_value_heads` (GQA), `head_dim` (defaults to hidden_size // num_attention_heads), `intermediate_size`
    (defaults to ~8/3 hidden rounded up to a multiple of 64), `max_position_embeddings`, `rope_theta`, `rms_norm_eps`,
    `hidden_act`, `dropout`, `attention_bias`, `qk_norm`, `tie_word_embeddings`, `initializer_range`.
    MoE: `use_moe`, `num_experts_per_tok`, `n_routed_experts`, `n_shared_experts`, `moe_intermediate_size`,
    `aux_loss_alpha`, `seq_aux` (balance loss per sequence instead of per token), `norm_topk_prob`.
    Vision: `vision_config` (dict or config of a transformers vision model), `vision_feature_layer` (-1 = last
    hidden state), `freeze_vision_tower`.
    Projector: `projector_type` (linear | mlp | cross_attention), `projector_num_queries`, `projector_num_heads`,
    `projector_num_layers` (the last three for cross_attention only).
    Image tokens: `image_token_id`, `image_seq_length` (features per image; derived when None: the number of patch
    tokens for linear/mlp, the number of queries for cross_attention).
    """

    model_type = "minimind_v"
    keys_to_ignore_at_inference = ["past_key_values", "cache"]
    sub_configs = {"vision_config": AutoConfig}

    vocab_size: int = 6400
    hidden_size: int = 512
    num_hidden_layers: int = 8
    num_attention_heads: int = 8
    num_key_value_heads: int = 2
    head_dim: int | None = None
    intermediate_size: int | None = None
    max_position_embeddings: int = 32768
    rope_theta: float = 1000000.0
    rms_norm_eps: float = 1e-6
    hidden_act: str = "silu"
    dropout: float = 0.0
    attention_bias: bool = False
    qk_norm: bool = True
    initializer_range: float = 0.02
    tie_word_embeddings: bool = True
    use_cache: bool = True

    use_moe: bool = False
    num_experts_per_tok: int = 2
    n_routed_experts: int = 4
    n_shared_experts: int = 1
    moe_intermediate_size: int | None = None
    aux_loss_alpha: float = 0.01
    seq_aux: bool = True
    norm_topk_prob: bool = True

    vision_config: dict | PreTrainedConfig | None = None
    vision_feature_layer: int = -1
    freeze_vision_tower: bool = True

    projector_type: str = "mlp"
    projector_num_queries: int = 64
    projector_num_heads: int = 8
    projector_num_layers: int = 1

    image_token_id: int = 5
    image_seq_length: int | None = None

    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    pad_token_id: int | None = 0

    def __post_init__(self, **kwargs):
        if self.vision_config is None:
            self.vision_config = dict(DEFAULT_VISION_CONFIG)
        if isinstance(self.vision_config, dict):
            vision_dict = dict(self.vision_config)
            model_type = vision_dict.pop("model_type", "clip_vision_model")
            if model_type not in CONFIG_MAPPING:
                raise ValueError(f"vision_config.model_type={model_type!r} is not a transformers config type")
            self.vision_config = CONFIG_MAPPING[model_type](**vision_dict)
        if not isinstance(self.vision_config, PreTrainedConfig):
            raise ValueError(f"vision_config must be a dict or a PreTrainedConfig, got {type(self.vision_config)}")

        if self.head_dim is None:
            self._require(self.hidden_size % self.num_attention_heads == 0, "num_attention_heads",
                          f"num_attention_heads={self.num_attention_heads} does not divide "
                          f"hidden_size={self.hidden_size} (set head_dim explicitly to decouple them)")
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.intermediate_size is None:
            self.intermediate_size = 64 * math.ceil(self.hidden_size * 8 / 3 / 64)
        if self.moe_intermediate_size is None:
            self.moe_intermediate_size = self.intermediate_size
        self._validate()
        if self.image_seq_length is None:
            self.image_seq_length = self._derived_image_seq_length()
        elif self.image_seq_length != self._derived_image_seq_length():
            raise ValueError(
                f"image_seq_length={self.image_seq_length} does not match the projector output: "
                f"projector_type={self.projector_type!r} yields {self._derived_image_seq_length()} features per image"
            )
        super().__post_init__(**kwargs)

    @staticmethod
    def _require(condition: bool, field: str, message: str):
        if not condition:
            raise ValueError(f"Invalid MiniMindVConfig.{field}: {message}")

    def _validate(self):
        req = self._require
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                     "head_dim", "intermediate_size", "max_position_embeddings"):
            value = getattr(self, name)
            req(isinstance(value, int) and value > 0, name, f"must be a positive integer, got {value!r}")
        req(self.num_attention_heads % self.num_key_value_heads == 0, "num_key_value_heads",
            f"num_key_value_heads={self.num_key_value_heads} does not divide "
            f"num_attention_heads={self.num_attention_heads}")
        req(self.head_dim % 2 == 0, "head_dim", f"RoPE needs an even head_dim, got {self.head_dim}")
        req(self.rope_theta > 0, "rope_theta", f"must be > 0, got {self.rope_theta}")
        req(self.rms_norm_eps > 0, "rms_norm_eps", f"must be > 0, got {self.rms_norm_eps}")
        req(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout}")
        req(self.hidden_act in ACT2FN, "hidden_act", f"unknown activation {self.hidden_act!r}")
        if self.use_moe:
            req(self.n_routed_experts >= 1, "n_routed_experts", f"must be >= 1, got {self.n_routed_experts}")
            req(1 <= self.num_experts_per_tok <= self.n_routed_experts, "num_experts_per_tok",
                f"top-k={self.num_experts_per_tok} must be between 1 and n_routed_experts={self.n_routed_experts}")
            req(self.n_shared_experts >= 0, "n_shared_experts", f"must be >= 0, got {self.n_shared_experts}")
            req(self.aux_loss_alpha >= 0, "aux_loss_alpha", f"must be >= 0, got {self.aux_loss_alpha}")
        req(self.projector_type in PROJECTOR_TYPES, "projector_type",
            f"{self.projector_type!r} is not one of {PROJECTOR_TYPES}")
        if self.projector_type == "cross_attention":
            req(self.projector_num_queries > 0, "projector_num_queries", "must be > 0")
            req(self.projector_num_layers > 0, "projector_num_layers", "must be > 0")
            req(self.hidden_size % self.projector_num_heads == 0, "projector_num_heads",
                f"projector_num_heads={self.projector_num_heads} does not divide hidden_size={self.hidden_size}")
        req(0 <= self.image_token_id < self.vocab_size, "image_token_id",
            f"{self.image_token_id} is outside the vocabulary (vocab_size={self.vocab_size})")
        for attr in ("image_size", "patch_size", "hidden_size"):
            req(hasattr(self.vision_config, attr), "vision_config",
                f"{type(self.vision_config).__name__} has no {attr!r}; use a ViT-style vision config (CLIP, SigLIP)")
        n_layers = self.vision_config.num_hidden_layers
        req(-n_layers <= self.vision_feature_layer < n_layers + 1 and self.vision_feature_layer != 0,
            "vision_feature_layer", f"{self.vision_feature_layer} is not a layer of a {n_layers}-layer vision tower")

    @property
    def num_patches(self) -> int:
        """Patch tokens per image produced by the vision tower (class token excluded)."""
        return (self.vision_config.image_size // self.vision_config.patch_size) ** 2

    def _derived_image_seq_length(self) -> int:
        return self.projector_num_queries if self.projector_type == "cross_attention" else self.num_patches

    @classmethod
    def available_presets(cls) -> list[str]:
        return sorted(p.stem for p in _presets_dir().glob("*.json"))

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "MiniMindVConfig":
        """Build a config from a preset name in `configs/` (tiny, small, base, moe, qwen3-0.6b) or a JSON file path."""
        path = Path(name)
        if path.suffix != ".json" or not path.is_file():
            path = _presets_dir() / f"{name}.json"
        if not path.is_file():
            raise ValueError(f"Unknown preset {name!r}: not a JSON file and not one of {cls.available_presets()}")
        fields = json.loads(path.read_text())
        fields.pop("_comment", None)
        fields.update(overrides)
        return cls(**fields)


__all__ = ["MiniMindVConfig"]
