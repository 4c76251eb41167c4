"""The MiniMind decoder: a Qwen3-style causal language model (RMSNorm, RoPE, GQA, SwiGLU, optional QK-norm and MoE).

Submodule names follow transformers' Qwen3 (`embed_tokens`, `layers.N.self_attn.q_proj`, `q_norm`, `mlp.gate_proj`,
`input_layernorm`, `norm`) so that a Qwen3 state dict maps onto `MiniMindTextModel` 1:1. Attention goes through
transformers' attention interface (sdpa, eager, flash, flex, or a host engine's backend). Remote code: imports only
torch and transformers.
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .compat import causal_mask
from .configuration_minimind_v import MiniMindVConfig


class MiniMindRMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 for stability under bf16, as Qwen3 does, so imported weights give identical outputs.
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states.to(input_dtype)


class MiniMindRotary(nn.Module):
    """Rotary position embedding: returns (cos, sin) of shape [batch, seq, head_dim] for the given positions."""

    def __init__(self, config: MiniMindVConfig):
        super().__init__()
        self.head_dim = config.head_dim
        self.rope_theta = config.rope_theta
        self.register_buffer("inv_freq", self.compute_inv_freq(), persistent=False)

    def compute_inv_freq(self) -> torch.Tensor:
        exponents = torch.arange(0, self.head_dim, 2, dtype=torch.int64).float() / self.head_dim
        return 1.0 / (self.rope_theta**exponents)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Angles in fp32 even under autocast: bf16 positions lose precision beyond a few hundred tokens.
        with torch.autocast(device_type=x.device.type, enabled=False):
            freqs = position_ids[..., None].float() * self.inv_freq.to(x.device)  # [b, s, d/2]
            emb = torch.cat((freqs, freqs), dim=-1)  # [b, s, d]
            return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(q, k, cos, sin):
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # broadcast over heads: [b, 1, s, d]
    return (q * cos) + (rotate_half(q) * sin), (k * cos) + (rotate_half(k) * sin)


def eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Plain attention. GQA without repeat_kv copies: each KV head's query heads are stacked along the query axis."""
    batch, heads, q_len, head_dim = query.shape
    kv_heads = key.shape[1]
    groups = heads // kv_heads
    query = query.reshape(batch, kv_heads, groups * q_len, head_dim)  # head i -> KV head i // groups
    attn_weights = torch.matmul(query, key.transpose(2, 3)) * scaling  # [b, kv_heads, groups*q, kv_len]
    if attention_mask is not None:
        mask = attention_mask[:, :, :, : key.shape[-2]]  # [b, 1, q, kv_len]
        attn_weights = (attn_weights.view(batch, kv_heads, groups, q_len, -1) + mask[:, :, None]).flatten(2, 3)
    attn_weights = F.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = F.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value)  # [b, kv_heads, groups*q, d]
    attn_output = attn_output.view(batch, heads, q_len, head_dim).transpose(1, 2).contiguous()  # [b, q, heads, d]
    return attn_output, attn_weights.view(batch, heads, q_len, -1)


class MiniMindAttention(nn.Module):
    """Grouped-query self-attention with optional per-head QK RMSNorm (applied before RoPE, as in Qwen3)."""

    def __init__(self, config: MiniMindVConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.num_key_value_groups = config.num_attention_heads // config.num_key_value_heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.dropout
        self.is_causal = True
        bias = config.attention_bias
        self.q_proj = nn.Linear(config.hidden_size, config.num_attention_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, config.num_key_value_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, config.num_key_value_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(config.num_attention_heads * self.head_dim, config.hidden_size, bias=bias)
        if config.qk_norm:
            self.q_norm = MiniMindRMSNorm(self.head_dim, eps=config.rms_norm_eps)
            self.k_norm = MiniMindRMSNorm(self.head_dim, eps=config.rms_norm_eps)
        else:
            self.q_norm = self.k_norm = nn.Identity()

    def forward(self, hidden_states, position_embeddings, attention_mask, past_key_values: Cache | None = None,
                **kwargs):
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        # [b, s, heads*d] -> [b, s, heads, d] -> [b, heads, s, d]
        query = self.q_norm(self.q_proj(hidden_states).view(hidden_shape)).transpose(1, 2)
        key = self.k_norm(self.k_proj(hidden_states).view(hidden_shape)).transpose(1, 2)
        value = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        cos, sin = position_embeddings
        query, key = apply_rotary_pos_emb(query, key, cos, sin)
        if past_key_values is not None:
            key, value = past_key_values.update(key, value, self.layer_idx)

        # A caller may pin the kernel (the CUDA-graph decoder does); otherwise the configured implementation.
        attention_interface: Callable = kwargs.pop("attention_interface", None) or \
            ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        attn_output, attn_weights = attention_interface(
            self, query, key, value, attention_mask,
            dropout=self.attention_dropout if self.training else 0.0, scaling=self.scaling, **kwargs,
        )
        attn_output = attn_output.reshape(*input_shape, -1).contiguous()  # [b, s, heads*d]
        return self.o_proj(attn_output), attn_weights


class MiniMindMLP(nn.Module):
    """SwiGLU feed-forward: down(act(gate(x)) * up(x))."""

    def __init__(self, config: MiniMindVConfig, intermediate_size: int | None = None):
        super().__init__()
        intermediate_size = intermediate_size or config.intermediate_size
        self.gate_proj = nn.Linear(config.hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, config.hidden_size, bias=False)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x):
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class MiniMindMoE(nn.Module):
    """Mixture of experts: top-k routed SwiGLU experts plus always-on shared experts, with a balance loss.

    Dispatch sorts the (token, expert) assignments by expert and runs each expert once on its contiguous slice, so
    Python loops over experts, never over tokens.
    """

    def __init__(self, config: MiniMindVConfig):
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.n_routed_experts = config.n_routed_experts
        self.norm_topk_prob = config.norm_topk_prob
        self.seq_aux = config.seq_aux
        self.aux_loss_alpha = config.aux_loss_alpha
        self.gate = nn.Linear(config.hidden_size, config.n_routed_experts, bias=False)
        self.experts = nn.ModuleList(
            [MiniMindMLP(config, config.moe_intermediate_size) for _ in range(config.n_routed_experts)]
        )
        self.shared_experts = nn.ModuleList(
            [MiniMindMLP(config, config.moe_intermediate_size) for _ in range(config.n_shared_experts)]
        )

    def route(self, flat: torch.Tensor):
        """[T, h] -> router probabilities [T, E] (fp32), top-k weights [T, k] and expert ids [T, k]."""
        probs = F.softmax(self.gate(flat), dim=-1, dtype=torch.float32)
        topk_weight, topk_idx = torch.topk(probs, self.top_k, dim=-1)
        if self.norm_topk_prob and self.top_k > 1:
            topk_weight = topk_weight / (topk_weight.sum(dim=-1, keepdim=True) + 1e-20)
        return probs, topk_weight, topk_idx

    def aux_loss(self, probs: torch.Tensor, topk_idx: torch.Tensor, batch_size: int) -> torch.Tensor:
        """Load-balancing loss: alpha * E * sum_i(load_i * mean_prob_i), per sequence (seq_aux) or over all tokens."""
        n_experts = self.n_routed_experts
        if self.seq_aux:
            probs = probs.view(batch_size, -1, n_experts)  # [b, s, E]
            idx = topk_idx.view(batch_size, -1)  # [b, s*k]
            load = torch.zeros(batch_size, n_experts, device=probs.device, dtype=probs.dtype)
            load.scatter_add_(1, idx, torch.ones_like(idx, dtype=probs.dtype))
            load = load / (idx.shape[1] / n_experts)  # 1.0 per expert when perfectly balanced
            return (load * probs.mean(dim=1)).sum(dim=1).mean() * self.aux_loss_alpha
        load = F.one_hot(topk_idx.view(-1), n_experts).to(probs.dtype).mean(dim=0)  # fraction of assignments
        return (load * probs.mean(dim=0)).sum() * n_experts * self.aux_loss_alpha

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch_size, seq_len, hidden = hidden_states.shape
        flat = hidden_states.reshape(-1, hidden)  # [T, h]
        probs, topk_weight, topk_idx = self.route(flat)

        flat_expert = topk_idx.reshape(-1)  # [T*k], assignment a belongs to token a // k
        order = torch.argsort(flat_expert, stable=True)
        token_of = order // self.top_k
        counts = torch.bincount(flat_expert, minlength=self.n_routed_experts).tolist()
        routed_in = flat[token_of].split(counts)
        routed_out = torch.cat([expert(x) for expert, x in zip(self.experts, routed_in)])  # [T*k, h]
        routed_out = routed_out * topk_weight.reshape(-1)[order].unsqueeze(-1).to(routed_out.dtype)
        output = torch.zeros_like(flat).index_add_(0, token_of, routed_out)
        for shared in self.shared_experts:
            output = output + shared(flat)

        aux = None
        if self.training and self.aux_loss_alpha > 0:
            aux = self.aux_loss(probs, topk_idx, batch_size)
        return output.view(batch_size, seq_len, hidden), aux


class MiniMindDecoderLayer(GradientCheckpointingLayer):
    def __init__(self, config: MiniMindVConfig, layer_idx: int):
        super().__init__()
        self.self_attn = MiniMindAttention(config, layer_idx)
        self.mlp = MiniMindMoE(config) if config.use_moe else MiniMindMLP(config)
        self.input_layernorm = MiniMindRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = MiniMindRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        # Identity when unused: a p=0 Dropout still costs a pass over the activations in training mode.
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()

    def forward(self, hidden_states, attention_mask=None, position_embeddings=None, past_key_values=None, **kwargs):
        residual = hidden_states
        hidden_states, _ = self.self_attn(
            self.input_layernorm(hidden_states), position_embeddings, attention_mask, past_key_values, **kwargs
        )
        hidden_states = residual + self.dropout(hidden_states)
        mlp_out = self.mlp(self.post_attention_layernorm(hidden_states))
        aux = None
        if isinstance(mlp_out, tuple):
            mlp_out, aux = mlp_out
        return hidden_states + self.dropout(mlp_out), aux


class MiniMindTextModel(nn.Module):
    """Token embeddings, decoder layers and final norm; the VLM feeds it merged `inputs_embeds`."""

    def __init__(self, config: MiniMindVConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList([MiniMindDecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = MiniMindRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = MiniMindRotary(config)

    def forward(self, inputs_embeds: torch.Tensor, attention_mask=None, position_ids=None,
                past_key_values: Cache | None = None, output_hidden_states: bool = False, **kwargs):
        """Returns (last_hidden_state, all_hidden_states or None, summed MoE aux loss or None)."""
        if not isinstance(attention_mask, dict):  # generate may pass a prepared mapping
            attention_mask = causal_mask(self.config, inputs_embeds, attention_mask, past_key_values, position_ids)
        else:
            attention_mask = attention_mask["full_attention"]
        hidden_states = inputs_embeds
        position_embeddings = self.rotary_emb(hidden_states, position_ids)
        all_hidden = [] if output_hidden_states else None
        aux_total = None
        for layer in self.layers:
            if all_hidden is not None:
                all_hidden.append(hidden_states)
            hidden_states, aux = layer(
                hidden_states, attention_mask=attention_mask, position_embeddings=position_embeddings,
                past_key_values=past_key_values, position_ids=position_ids, **kwargs,
            )
            if aux is not None:
                aux_total = aux if aux_total is None else aux_total + aux
        hidden_states = self.norm(hidden_states)
        if all_hidden is not None:
            all_hidden.append(hidden_states)
        return hidden_states, (tuple(all_hidden) if all_hidden is not None else None), aux_total
