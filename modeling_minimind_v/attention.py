"""Self-attention of the MiniMind decoder: rotary position embeddings, grouped-query attention with optional per-head
QK RMSNorm (Qwen3; without it, Llama), through transformers' attention interface (sdpa, eager, flash, flex, or a host
engine's backend such as vLLM's).

Submodule names follow transformers' Qwen3/Llama (`q_proj`, `k_proj`, `v_proj`, `o_proj`, `q_norm`, `k_norm`), so their
checkpoints map 1:1. For decoding, q/k/v can run as one matmul from a concatenated copy of the three weights that the
module owns (`fuse_projections`); the fast decoder asks for it per call. Remote code: imports only torch and
transformers.
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .rms_norm import MiniMindRMSNorm


class MiniMindRotaryEmbedding(nn.Module):
    """Rotary position embedding: (cos, sin) of shape [batch, seq, head_dim] for the given positions."""

    def __init__(self, config):
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
    """Plain attention. GQA without repeat_kv copies: each KV head's query heads are stacked along the query axis.

    Returns the output [b, q, heads, d] and the weights [b, heads, q, kv]; the weights returned are the tensor the
    output is computed from, so they can retain gradients.
    """
    batch, heads, q_len, head_dim = query.shape
    kv_heads = key.shape[1]
    groups = heads // kv_heads
    query = query.reshape(batch, kv_heads, groups * q_len, head_dim)  # head i -> KV head i // groups
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling  # [b, kv_heads, groups*q, kv_len]
    scores = scores.view(batch, heads, q_len, -1)
    if attention_mask is not None:
        scores = scores + attention_mask[:, :, :, : key.shape[-2]]  # [b, 1, q, kv_len] broadcast over heads
    weights = F.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = F.dropout(weights, p=dropout, training=module.training)  # [b, heads, q, kv_len]
    attn_output = torch.matmul(weights.view(batch, kv_heads, groups * q_len, -1), value)  # [b, kv_heads, groups*q, d]
    attn_output = attn_output.view(batch, heads, q_len, head_dim).transpose(1, 2).contiguous()  # [b, q, heads, d]
    return attn_output, weights


class MiniMindAttention(nn.Module):
    """Grouped-query self-attention with optional per-head QK RMSNorm (applied before RoPE, as in Qwen3)."""

    def __init__(self, config, layer_idx: int):
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
        self.fused_qkv: torch.Tensor | None = None  # set by fuse_projections; not a parameter, never saved

    def fuse_projections(self):
        """(Re)build the concatenated q/k/v weight from the current weights (e.g. once per decoding request)."""
        parts = (self.q_proj.weight, self.k_proj.weight, self.v_proj.weight)
        if self.fused_qkv is None or self.fused_qkv.device != parts[0].device or self.fused_qkv.dtype != parts[0].dtype:
            self.fused_qkv = torch.cat([p.detach() for p in parts])
        else:
            torch.cat([p.detach() for p in parts], out=self.fused_qkv)

    def project_qkv(self, hidden_states: torch.Tensor, fused: bool = False):
        if fused and self.fused_qkv is not None and self.q_proj.bias is None:
            return F.linear(hidden_states, self.fused_qkv).split(
                [self.q_proj.out_features, self.k_proj.out_features, self.v_proj.out_features], dim=-1)
        return self.q_proj(hidden_states), self.k_proj(hidden_states), self.v_proj(hidden_states)

    def project_joint_qkv(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """q, k and v side by side in one tensor [b, s, (heads + 2 kv_heads) * d] (one matmul when fused)."""
        if self.fused_qkv is not None and self.q_proj.bias is None:
            return F.linear(hidden_states, self.fused_qkv)
        return torch.cat(self.project_qkv(hidden_states), dim=-1)

    def forward(self, hidden_states, position_embeddings, attention_mask, past_key_values=None,
                fused_projections: bool = False, decode_attention: Callable | None = None, **kwargs):
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        if decode_attention is not None:
            # The fast decoder's one-token kernels (decode_attention.py) do QK-norm, RoPE, the cache write and the
            # attention from the raw projections; they write into past_key_values themselves.
            return self.o_proj(decode_attention(self, self.project_joint_qkv(hidden_states), position_embeddings)), None
        query, key, value = self.project_qkv(hidden_states, fused_projections)
        # [b, s, heads*d] -> [b, s, heads, d] -> [b, heads, s, d]
        query = self.q_norm(query.view(hidden_shape)).transpose(1, 2)
        key = self.k_norm(key.view(hidden_shape)).transpose(1, 2)
        value = value.view(hidden_shape).transpose(1, 2)
        cos, sin = position_embeddings
        query, key = apply_rotary_pos_emb(query, key, cos, sin)
        if past_key_values is not None:
            key, value = past_key_values.update(key, value, self.layer_idx)

        # The configured implementation, unless a caller pins the kernel (the fast decoder does). Keep the lookup a
        # plain assignment from ALL_ATTENTION_FUNCTIONS and the call below the only call of it: vLLM's Transformers
        # backend finds this module's attention by reading exactly that pattern in this source.
        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward)
        pinned_interface = kwargs.pop("attention_interface", None)
        if pinned_interface is not None:
            attention_interface = pinned_interface
        attn_output, attn_weights = attention_interface(
            self, query, key, value, attention_mask,
            dropout=self.attention_dropout if self.training else 0.0, scaling=self.scaling, **kwargs,
        )
        attn_output = attn_output.reshape(*input_shape, -1).contiguous()  # [b, s, heads*d]
        return self.o_proj(attn_output), attn_weights


__all__ = ["MiniMindAttention", "MiniMindRotaryEmbedding", "apply_rotary_pos_emb", "eager_attention_forward"]
