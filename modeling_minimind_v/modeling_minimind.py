"""The MiniMind decoder as transformers models: `MiniMindModel` (AutoModel for model_type "minimind": embeddings,
decoder layers, final norm) and `MiniMindForCausalLM` (AutoModelForCausalLM: plus the LM head, loss and generate).

Submodule names follow transformers' Qwen3/Llama (`model.embed_tokens`, `model.layers.N.self_attn.q_proj`,
`mlp.gate_proj`, `input_layernorm`, `model.norm`), so their checkpoints load 1:1, and MiniMind-V uses `MiniMindModel`
as its `language_model`. Layers return tensors; attention weights and router logits are collected only when asked
for. Remote code: imports only torch, transformers and files of this folder.
"""

from dataclasses import dataclass

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .attention import MiniMindAttention, MiniMindRotaryEmbedding
from .compat import cache_field, causal_mask, output_cache, pop_cache
from .configuration_minimind import MiniMindConfig
from .feed_forward import MiniMindMLP, MiniMindSparseMoeBlock, load_balancing_loss
from .loss import chunked_causal_lm_loss
from .rms_norm import MiniMindRMSNorm


@dataclass
class MiniMindModelOutputWithPast(BaseModelOutputWithPast):
    """Decoder output; `router_logits` (one [tokens, experts] tensor per MoE layer) when asked for."""

    router_logits: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class MiniMindCausalLMOutputWithPast(CausalLMOutputWithPast):
    """`loss` includes `aux_loss` (router_aux_loss_coef x the MoE load-balancing loss) when both are computed."""

    aux_loss: torch.FloatTensor | None = None
    router_logits: tuple[torch.FloatTensor, ...] | None = None


class MiniMindDecoderLayer(GradientCheckpointingLayer):
    def __init__(self, config: MiniMindConfig, layer_idx: int):
        super().__init__()
        self.self_attn = MiniMindAttention(config, layer_idx)
        self.mlp = MiniMindSparseMoeBlock(config) if config.num_experts > 0 else MiniMindMLP(config)
        self.input_layernorm = MiniMindRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = MiniMindRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        # Identity when unused: a p=0 Dropout still costs a pass over the activations in training mode.
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()

    def forward(self, hidden_states, attention_mask=None, position_embeddings=None, past_key_values=None,
                attentions: list | None = None, router_logits: list | None = None, fused_projections: bool = False,
                decode_projections=None, **kwargs) -> torch.Tensor:
        """One pre-norm block. `attentions` / `router_logits`, when lists, collect this layer's attention weights
        and router logits. `decode_projections` (with `decode_attention`): the fast decoder's one-token kernels."""
        if decode_projections is not None:
            return self._decode_forward(hidden_states, position_embeddings, decode_projections,
                                        kwargs["decode_attention"])
        residual = hidden_states
        attn_out, attn_weights = self.self_attn(
            self.input_layernorm(hidden_states), position_embeddings, attention_mask, past_key_values,
            fused_projections=fused_projections, **kwargs,
        )
        hidden_states = residual + self.dropout(attn_out)
        if attentions is not None:
            attentions.append(attn_weights)
        if isinstance(self.mlp, MiniMindSparseMoeBlock):
            mlp_out, logits = self.mlp(self.post_attention_layernorm(hidden_states),
                                       fused_projections=fused_projections)
            if router_logits is not None:
                router_logits.append(logits)
        else:
            mlp_out = self.mlp(self.post_attention_layernorm(hidden_states), fused_projections=fused_projections)
        return hidden_states + self.dropout(mlp_out)

    def _decode_forward(self, hidden_states, position_embeddings, projections, attention) -> torch.Tensor:
        """The block above for one new token per row, as six kernels (decode_projections.py, decode_attention.py):
        the norms, residual adds and SwiGLU fused into the projections, which read the fused q/k/v and gate/up
        weights (`fuse_projections`). Dense layers in eval mode only (no dropout, no router)."""
        qkv = projections.norm_linear(hidden_states, self.input_layernorm, self.self_attn.fused_qkv)
        hidden_states = projections.linear_add(attention(self.self_attn, qkv, position_embeddings),
                                               self.self_attn.o_proj.weight, hidden_states)
        act = projections.norm_swiglu(hidden_states, self.post_attention_layernorm, self.mlp.fused_gate_up)
        return projections.linear_add(act, self.mlp.down_proj.weight, hidden_states)


class MiniMindPreTrainedModel(PreTrainedModel):
    config_class = MiniMindConfig
    config: MiniMindConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["MiniMindDecoderLayer"]
    _skip_keys_device_placement = ["past_key_values", "cache"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    @property
    def _can_compile_fullgraph(self) -> bool:
        # MoE dispatch reads expert sizes on the host; the dense model compiles without graph breaks.
        return self.config.get_text_config().num_experts == 0

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, MiniMindRotaryEmbedding):
            init.copy_(module.inv_freq, module.compute_inv_freq())


def _flag(value, config, name: str):
    """A per-call output flag, falling back to the config's (transformers' convention)."""
    return value if value is not None else getattr(config, name, False)


def select_hidden_states(all_hidden: tuple, selection) -> tuple:
    """`output_hidden_states` may be True or, as in transformers 5, an index or a list of indices into all of them."""
    if isinstance(selection, bool):
        return all_hidden
    indices = [selection] if isinstance(selection, int) else list(selection)
    return tuple(all_hidden[i] for i in indices)


@torch.compiler.disable  # a data-dependent check; runs eagerly even inside a compiled forward
def _is_all_ones(mask: torch.Tensor) -> bool:
    return bool(mask.all())


def positions_from_mask(attention_mask, inputs_embeds, past_key_values) -> torch.Tensor:
    """Position ids [b, s]: counted over real tokens when a 2-D mask is given (left-padded rows start at 0 like
    unpadded ones), else continuing after the cached tokens."""
    past = past_key_values.get_seq_length() if past_key_values is not None else 0
    seq_len = inputs_embeds.shape[1]
    if attention_mask is not None and attention_mask.ndim == 2:
        positions = attention_mask.long().cumsum(-1) - 1
        return positions.clamp(min=0)[:, -seq_len:]
    return (torch.arange(seq_len, device=inputs_embeds.device) + past).unsqueeze(0)


class MiniMindModel(MiniMindPreTrainedModel):
    """Token embeddings, decoder layers and the final norm; takes `input_ids` or `inputs_embeds`."""

    def __init__(self, config: MiniMindConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList([MiniMindDecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = MiniMindRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = MiniMindRotaryEmbedding(config)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def fuse_projections(self):
        """Concatenated q/k/v and gate/up weights (stacked expert weights in MoE layers) in every layer, for
        decoding with `fused_projections=True`."""
        for layer in self.layers:
            layer.self_attn.fuse_projections()
            layer.mlp.fuse_projections()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | dict | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | int | list[int] | None = None,
        output_router_logits: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> MiniMindModelOutputWithPast | tuple:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds")
        past_key_values = pop_cache(past_key_values, kwargs)
        config = self.config
        output_attentions = _flag(output_attentions, config, "output_attentions")
        output_hidden_states = _flag(output_hidden_states, config, "output_hidden_states")
        output_router_logits = _flag(output_router_logits, config, "output_router_logits") and config.num_experts > 0
        return_dict = _flag(return_dict, config, "return_dict")
        use_cache = use_cache if use_cache is not None else (config.use_cache and not self.training)
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(self._checked_ids(input_ids))

        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=config)
        if position_ids is None:
            position_ids = positions_from_mask(attention_mask, inputs_embeds, past_key_values)
        if isinstance(attention_mask, dict):  # prepared masks (generate with a compileable cache, the fast decoder)
            attention_mask = attention_mask["full_attention"]
        else:
            if isinstance(attention_mask, torch.Tensor) and attention_mask.ndim == 2 \
                    and not torch.compiler.is_compiling() and _is_all_ones(attention_mask):
                # Nothing is padded: a pure causal mask lets sdpa pick its flash kernel instead of a masked one.
                attention_mask = None
            attention_mask = causal_mask(config, inputs_embeds, attention_mask, past_key_values, position_ids)

        hidden_states = inputs_embeds
        position_embeddings = self.rotary_emb(hidden_states, position_ids)
        if kwargs.get("decode_attention") is not None:  # the fast decoder's kernels: cos / sin once for all layers
            position_embeddings = kwargs["decode_attention"].position_embeddings(position_embeddings)
        all_hidden = [] if output_hidden_states is not False else None
        attentions = [] if output_attentions else None
        router_logits = [] if output_router_logits else None
        for layer in self.layers:
            if all_hidden is not None:
                all_hidden.append(hidden_states)
            hidden_states = layer(
                hidden_states, attention_mask=attention_mask, position_embeddings=position_embeddings,
                past_key_values=past_key_values, position_ids=position_ids, attentions=attentions,
                router_logits=router_logits, **kwargs,
            )
        hidden_states = self.norm(hidden_states)
        if all_hidden is not None:
            all_hidden.append(hidden_states)
        output = MiniMindModelOutputWithPast(
            last_hidden_state=hidden_states,
            **cache_field(past_key_values if use_cache else None),
            hidden_states=select_hidden_states(tuple(all_hidden), output_hidden_states) if all_hidden else None,
            attentions=tuple(attentions) if attentions is not None else None,
            router_logits=tuple(router_logits) if router_logits else None,
        )
        return output if return_dict else output.to_tuple()

    def _checked_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token ids must index the embedding table: a bad id is a clear error, not an IndexError deep inside."""
        check_ids_shape(input_ids)
        if input_ids.numel() == 0 or input_ids.shape[-1] == 0:
            raise ValueError(f"input_ids is empty (shape {list(input_ids.shape)}): give at least one token")
        # Skipped in training (the data pipeline checks ids against the tokenizer) and when compiling: a host sync.
        if not self.training and not torch.compiler.is_compiling():
            low, high = int(input_ids.min()), int(input_ids.max())
            if low < 0 or high >= self.config.vocab_size:
                raise ValueError(f"input_ids holds token id {low if low < 0 else high}, outside the vocabulary "
                                 f"[0, {self.config.vocab_size})")
        return input_ids


def lm_head_outputs(model, hidden_states, labels, logits_to_keep, router_logits, attention_mask, vocab_size,
                    **kwargs):
    """Logits, loss and MoE aux loss of a causal-LM head (`model.lm_head`), shared by MiniMind and MiniMind-V.

    Training with labels takes the loss straight from the hidden states at labelled positions (no full-vocabulary
    logits); otherwise logits are computed for `logits_to_keep` positions and the loss by `model.loss_function`.
    With router logits and labels, router_aux_loss_coef x the load-balancing loss is returned and added to the loss
    (Mixtral's contract; trainers that build their own loss from `router_logits`, like TRL, add it themselves).
    """
    loss = logits = None
    if labels is not None and model.training and isinstance(logits_to_keep, int) and logits_to_keep == 0:
        loss = chunked_causal_lm_loss(hidden_states, model.lm_head.weight, labels,
                                      num_items_in_batch=kwargs.get("num_items_in_batch"),
                                      num_targets=kwargs.get("num_targets"))
    else:
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = model.lm_head(hidden_states[:, keep, :])
        if labels is not None:
            loss = model.loss_function(logits=logits, labels=labels, vocab_size=vocab_size, **kwargs)
    aux_loss = None
    if router_logits and labels is not None:
        text = model.config.get_text_config()
        mask = attention_mask if isinstance(attention_mask, torch.Tensor) and attention_mask.ndim == 2 else None
        balance = load_balancing_loss(router_logits, text.num_experts, text.num_experts_per_tok, mask)
        aux_loss = text.router_aux_loss_coef * balance
        if loss is not None:
            loss = loss + aux_loss.to(loss.device)
    return logits, loss, aux_loss


def check_ids_shape(input_ids) -> None:
    """input_ids must be a [batch, length] tensor of integer token ids (float or 1-D/3-D ids fail deep inside)."""
    if not isinstance(input_ids, torch.Tensor):
        raise TypeError(f"input_ids must be a torch.Tensor of token ids, got {type(input_ids).__name__}")
    if input_ids.dtype.is_floating_point or input_ids.dtype.is_complex or input_ids.dtype == torch.bool:
        raise TypeError(f"input_ids must hold integer token ids, got dtype {input_ids.dtype}")
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be [batch, length], got shape {list(input_ids.shape)}")


def check_generate_inputs(model, args, kwargs) -> None:
    """`generate`'s input_ids checked up front (shape, dtype, emptiness, vocabulary), so a bad prompt is a named
    ValueError/TypeError rather than an IndexError inside transformers' generation loop."""
    input_ids = kwargs.get("input_ids", args[0] if args and isinstance(args[0], torch.Tensor) else None)
    if input_ids is None:
        return
    check_ids_shape(input_ids)
    vocab_size = model.config.get_text_config().vocab_size
    if input_ids.numel() == 0:
        raise ValueError(f"input_ids is empty (shape {list(input_ids.shape)}): give at least one token")
    low, high = int(input_ids.min()), int(input_ids.max())
    if low < 0 or high >= vocab_size:
        raise ValueError(f"input_ids holds token id {low if low < 0 else high}, outside the vocabulary "
                         f"[0, {vocab_size})")
    attention_mask = kwargs.get("attention_mask")
    if isinstance(attention_mask, torch.Tensor) and attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask has shape {list(attention_mask.shape)} but input_ids "
                         f"{list(input_ids.shape)}: they must match")


class MiniMindForCausalLM(MiniMindPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    _tp_plan = {"lm_head": "colwise_gather_output"}
    _pp_plan = {"lm_head": (["hidden_states"], ["logits"])}

    # Written into config.json on save, so every Auto class loads the decoder, whichever class was saved.
    _auto_map = {
        "AutoConfig": "configuration_minimind.MiniMindConfig",
        "AutoModel": "modeling_minimind.MiniMindModel",
        "AutoModelForCausalLM": "modeling_minimind.MiniMindForCausalLM",
    }

    def __init__(self, config: MiniMindConfig):
        super().__init__(config)
        self.model = MiniMindModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def generate(self, *args, **kwargs):
        check_generate_inputs(self, args, kwargs)
        return super().generate(*args, **kwargs)

    def save_pretrained(self, save_directory, *args, **kwargs):
        self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), **self._auto_map}
        return super().save_pretrained(save_directory, *args, **kwargs)

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        return_dict: bool | None = None,
        **kwargs,
    ) -> MiniMindCausalLMOutputWithPast | tuple:
        return_dict = _flag(return_dict, self.config, "return_dict")
        outputs = self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
            past_key_values=pop_cache(past_key_values, kwargs), inputs_embeds=inputs_embeds, use_cache=use_cache,
            return_dict=True, **kwargs,
        )
        logits, loss, aux_loss = lm_head_outputs(
            self, outputs.last_hidden_state, labels, logits_to_keep, outputs.router_logits, attention_mask,
            self.config.vocab_size, **kwargs,
        )
        output = MiniMindCausalLMOutputWithPast(
            loss=loss, logits=logits, **cache_field(output_cache(outputs)), hidden_states=outputs.hidden_states,
            attentions=outputs.attentions, aux_loss=aux_loss, router_logits=outputs.router_logits,
        )
        return output if return_dict else output.to_tuple()


MiniMindConfig.register_for_auto_class()
MiniMindModel.register_for_auto_class("AutoModel")
MiniMindForCausalLM.register_for_auto_class("AutoModelForCausalLM")

__all__ = ["MiniMindForCausalLM", "MiniMindModel", "MiniMindPreTrainedModel"]
