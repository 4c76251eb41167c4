"""MiniMindConfig: the configuration of the MiniMind decoder, a Qwen3-style causal language model (model_type
"minimind"), usable and savable on its own and as the `text_config` of MiniMind-V.

Without QK-norm the decoder is the Llama architecture, with it Qwen3's; with `num_experts > 0` its feed-forward
blocks are mixtures of experts (routed top-k plus shared experts) following Mixtral's contract
(`output_router_logits`, `router_aux_loss_coef`). Field names are the ones transformers, TRL and vLLM read
(`num_experts`, `num_experts_per_tok`, `n_shared_experts`, `moe_intermediate_size`), and a dense config has
`num_experts == 0`, so no tool mistakes one kind for the other. Remote code: imports only transformers and the
standard library.
"""

import math

from transformers import PreTrainedConfig
from transformers.activations import ACT2FN

# Keyword arguments of earlier minimind-v releases (flat MiniMind-V configs) and what they mean now.
LEGACY_MOE_KEYS = ("use_moe", "n_routed_experts", "aux_loss_alpha", "seq_aux")


def require(condition: bool, config_name: str, field: str, message: str):
    """Raise the one error type configs use: a ValueError that names the offending field."""
    if not condition:
        raise ValueError(f"Invalid {config_name}.{field}: {message}")


def check_token_id(config_name: str, field: str, value, vocab_size: int):
    """A special-token id (or list of them) must be None or inside the vocabulary."""
    values = value if isinstance(value, (list, tuple)) else [value]
    for token_id in values:
        if token_id is None:
            continue
        require(isinstance(token_id, int) and not isinstance(token_id, bool) and 0 <= token_id < vocab_size,
                config_name, field, f"{value!r} is not a token id of a {vocab_size}-token vocabulary")


class MiniMindConfig(PreTrainedConfig):
    r"""
    Configuration for [`MiniMindModel`] and [`MiniMindForCausalLM`].

    Shape: `vocab_size`, `hidden_size`, `num_hidden_layers`, `num_attention_heads`, `num_key_value_heads` (GQA),
    `head_dim` (default hidden_size // num_attention_heads), `intermediate_size` (default ~8/3 hidden, rounded up to a
    multiple of 64). Attention: `max_position_embeddings`, `rope_theta`, `attention_bias`, `qk_norm` (Qwen3's per-head
    RMSNorm on queries and keys; off = Llama). Also `rms_norm_eps`, `hidden_act`, `dropout`, `initializer_range`,
    `tie_word_embeddings`, `use_cache`.
    Mixture of experts: `num_experts` (routed experts per layer; 0 = dense), `num_experts_per_tok` (top-k),
    `n_shared_experts` (always-on experts), `moe_intermediate_size`, `norm_topk_prob`, `router_aux_loss_coef`
    (weight of the load-balancing loss added to the training loss), `output_router_logits` (return the router logits
    and add that loss; defaults to True for MoE models).
    """

    model_type = "minimind"
    keys_to_ignore_at_inference = ["past_key_values", "cache"]
    # Tensor-parallel plan (as Qwen3's: column-wise in, row-wise out), read by `from_pretrained(tp_plan="auto")` and
    # vLLM; pipeline-parallel plan: the stages' inputs and outputs.
    base_model_tp_plan = {
        "layers.*.self_attn.q_proj": "colwise",
        "layers.*.self_attn.k_proj": "colwise",
        "layers.*.self_attn.v_proj": "colwise",
        "layers.*.self_attn.o_proj": "rowwise",
        "layers.*.mlp.gate_proj": "colwise",
        "layers.*.mlp.up_proj": "colwise",
        "layers.*.mlp.down_proj": "rowwise",
    }
    base_model_pp_plan = {
        "embed_tokens": (["input_ids"], ["inputs_embeds"]),
        "layers": (["hidden_states", "attention_mask"], ["hidden_states"]),
        "norm": (["hidden_states"], ["hidden_states"]),
    }

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

    num_experts: int = 0
    num_experts_per_tok: int = 2
    n_shared_experts: int = 1
    moe_intermediate_size: int | None = None
    norm_topk_prob: bool = True
    router_aux_loss_coef: float = 0.01
    output_router_logits: bool | None = None

    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    pad_token_id: int | None = 0

    def __post_init__(self, **kwargs):
        self._route_legacy_moe_keys(kwargs)
        name = type(self).__name__
        for field in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                      "max_position_embeddings"):
            value = getattr(self, field)
            require(isinstance(value, int) and not isinstance(value, bool) and value > 0, name, field,
                    f"must be a positive integer, got {value!r}")
        if self.head_dim is None:
            require(self.hidden_size % self.num_attention_heads == 0, name, "num_attention_heads",
                    f"num_attention_heads={self.num_attention_heads} does not divide hidden_size={self.hidden_size} "
                    "(set head_dim explicitly to decouple them)")
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.intermediate_size is None:
            self.intermediate_size = 64 * math.ceil(self.hidden_size * 8 / 3 / 64)
        if self.moe_intermediate_size is None:
            self.moe_intermediate_size = self.intermediate_size
        if self.output_router_logits is None:
            self.output_router_logits = self.num_experts > 0
        if self.num_experts == 0:
            # Dense: no balance loss, so trainers that add one (TRL) leave the loss alone.
            self.output_router_logits = False
            self.router_aux_loss_coef = 0.0
        self._validate()
        super().__post_init__(**kwargs)

    def _route_legacy_moe_keys(self, kwargs: dict):
        """Map the MoE keywords of earlier releases: use_moe + n_routed_experts -> num_experts, aux_loss_alpha ->
        router_aux_loss_coef. `seq_aux` (a per-sequence balance loss) is gone: the loss is Mixtral's."""
        use_moe = kwargs.pop("use_moe", None)
        n_routed = kwargs.pop("n_routed_experts", None)
        if use_moe is not None:
            self.num_experts = (n_routed if n_routed is not None else 4) if use_moe else 0
        elif n_routed is not None:
            self.num_experts = n_routed
        if (alpha := kwargs.pop("aux_loss_alpha", None)) is not None:
            self.router_aux_loss_coef = alpha
        kwargs.pop("seq_aux", None)

    @property
    def use_moe(self) -> bool:
        return self.num_experts > 0

    def _validate(self):
        name = type(self).__name__

        def req(condition, field, message):
            require(condition, name, field, message)

        for field in ("head_dim", "intermediate_size", "moe_intermediate_size"):
            value = getattr(self, field)
            req(isinstance(value, int) and not isinstance(value, bool) and value > 0, field,
                f"must be a positive integer, got {value!r}")
        req(self.num_attention_heads % self.num_key_value_heads == 0, "num_key_value_heads",
            f"num_key_value_heads={self.num_key_value_heads} does not divide "
            f"num_attention_heads={self.num_attention_heads}")
        req(self.head_dim % 2 == 0, "head_dim", f"RoPE needs an even head_dim, got {self.head_dim}")
        req(isinstance(self.rope_theta, (int, float)) and self.rope_theta > 0, "rope_theta",
            f"must be > 0, got {self.rope_theta!r}")
        req(isinstance(self.rms_norm_eps, (int, float)) and self.rms_norm_eps > 0, "rms_norm_eps",
            f"must be > 0, got {self.rms_norm_eps!r}")
        req(isinstance(self.dropout, (int, float)) and 0.0 <= self.dropout < 1.0, "dropout",
            f"must be in [0, 1), got {self.dropout!r}")
        req(self.hidden_act in ACT2FN, "hidden_act", f"unknown activation {self.hidden_act!r}")
        req(isinstance(self.num_experts, int) and self.num_experts >= 0, "num_experts",
            f"must be >= 0 (0 = dense), got {self.num_experts!r}")
        if self.num_experts > 0:
            req(isinstance(self.num_experts_per_tok, int) and 1 <= self.num_experts_per_tok <= self.num_experts,
                "num_experts_per_tok",
                f"top-k={self.num_experts_per_tok!r} must be between 1 and num_experts={self.num_experts}")
            req(isinstance(self.n_shared_experts, int) and self.n_shared_experts >= 0, "n_shared_experts",
                f"must be >= 0, got {self.n_shared_experts!r}")
            req(self.router_aux_loss_coef >= 0, "router_aux_loss_coef",
                f"must be >= 0, got {self.router_aux_loss_coef}")
        for field in ("bos_token_id", "eos_token_id", "pad_token_id"):
            check_token_id(name, field, getattr(self, field), self.vocab_size)


__all__ = ["MiniMindConfig"]
