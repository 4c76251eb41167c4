"""Fast decoding for `generate(..., cache_implementation="static")`: a preallocated KV cache and a decode step that
is compiled and captured once as a CUDA graph, so each new token costs one graph replay instead of a Python pass
through `generate`'s machinery. Used only for plain greedy / sampled decoding of the dense model; every other
`generate` call goes through transformers unchanged. On CPU the same loop runs eagerly (tests check it against
transformers' generate token for token). Remote code: torch only.
"""

import torch

from .language_model import apply_rotary_pos_emb, eager_attention_forward

# `generate` arguments this path understands; anything else falls back to transformers.
FAST_KWARGS = {
    "input_ids", "attention_mask", "pixel_values", "max_new_tokens", "min_new_tokens", "do_sample", "temperature",
    "top_k", "top_p", "eos_token_id", "pad_token_id", "cache_implementation", "use_cache",
}
EOS_CHECK_EVERY = 16  # steps between host checks for "every row has finished"


class StaticKVCache:
    """Per-layer [batch, kv_heads, max_length, head_dim] buffers written at a device-side position counter."""

    is_compileable = True

    def __init__(self, config, batch_size: int, max_length: int, device, dtype):
        shape = (batch_size, config.num_key_value_heads, max_length, config.head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.num_hidden_layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.num_hidden_layers)]
        self.length = torch.zeros((), dtype=torch.long, device=device)  # next write index

    def update(self, key, value, layer_idx, *args, **kwargs):
        index = self.length + torch.arange(key.shape[2], device=key.device)
        self.keys[layer_idx].index_copy_(2, index, key)
        self.values[layer_idx].index_copy_(2, index, value)
        return self.keys[layer_idx], self.values[layer_idx]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return int(self.length)


class FastDecoder:
    """Static buffers + one decode step for a fixed (batch, max_length, sampling) setting; reused across calls."""

    def __init__(self, model, batch_size: int, max_length: int, sampling: tuple):
        config = model.config
        device, dtype = model.device, model.dtype
        self.model, self.max_length = model, max_length
        self.do_sample, self.temperature, self.top_k, self.top_p = sampling
        self.cache = StaticKVCache(config, batch_size, max_length, device, dtype)
        self.tokens = torch.zeros(batch_size, 1, dtype=torch.long, device=device)
        self.positions = torch.zeros(batch_size, 1, dtype=torch.long, device=device)
        self.valid = torch.ones(batch_size, max_length, dtype=torch.bool, device=device)  # False: prompt padding
        self.finished = torch.zeros(batch_size, dtype=torch.bool, device=device)
        self.step_index = torch.zeros((), dtype=torch.long, device=device)
        self.min_new = torch.zeros((), dtype=torch.long, device=device)
        self.pad = torch.zeros((), dtype=torch.long, device=device)
        self.eos = torch.full((8,), -1, dtype=torch.long, device=device)
        self.key_positions = torch.arange(max_length, device=device)
        self.next_token = torch.zeros(batch_size, dtype=torch.long, device=device)
        # At batch 1 a decode step is ~7 small matmuls per layer, each latency-bound: run q/k/v and gate/up as one
        # matmul each, from concatenated copies of the weights (refreshed at every request, so never stale).
        self.layers = model.model.language_model.layers
        self.fused_qkv = [torch.cat(self._qkv_weights(layer)) for layer in self.layers]
        self.fused_gate_up = [torch.cat(self._gate_up_weights(layer)) for layer in self.layers]
        self.graph = None
        self.step_fn = self._step
        if device.type == "cuda":
            self._capture()

    @staticmethod
    def _qkv_weights(layer):
        attn = layer.self_attn
        return attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight

    @staticmethod
    def _gate_up_weights(layer):
        return layer.mlp.gate_proj.weight, layer.mlp.up_proj.weight

    def _refresh_fused_weights(self):
        for layer, qkv, gate_up in zip(self.layers, self.fused_qkv, self.fused_gate_up):
            torch.cat(self._qkv_weights(layer), out=qkv)
            torch.cat(self._gate_up_weights(layer), out=gate_up)

    # -------------------------------------------------------------------------------------------- one step
    def _mask(self, query_positions: torch.Tensor) -> torch.Tensor:
        """Additive [b, 1, q, L] mask: a query sees written, non-padding keys at or before its cache slot."""
        allowed = (self.key_positions[None, None, :] <= query_positions[:, :, None]) & self.valid[:, None, :]
        mask = torch.zeros(allowed.shape, dtype=self.model.dtype, device=allowed.device)
        return mask.masked_fill(~allowed, torch.finfo(self.model.dtype).min)[:, None]

    def _select(self, logits: torch.Tensor) -> torch.Tensor:
        """Next token from fp32 logits [b, V]: EOS held back before min_new_tokens, then greedy or sampled."""
        eos_ids = self.eos.clamp(min=0)
        hold = (self.step_index < self.min_new) & (self.eos >= 0)
        eos_logits = logits.index_select(1, eos_ids)
        logits = logits.index_copy(1, eos_ids, torch.where(hold[None, :], float("-inf"), eos_logits))
        if not self.do_sample:
            token = logits.argmax(-1)
        else:
            logits = logits / self.temperature
            if self.top_k:
                kth = torch.topk(logits, min(self.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            if self.top_p < 1.0:
                sorted_logits, order = torch.sort(logits, descending=True)
                cumulative = sorted_logits.softmax(-1).cumsum(-1)
                drop_sorted = cumulative - sorted_logits.softmax(-1) > self.top_p  # keep the token crossing top_p
                logits = logits.masked_fill(drop_sorted.scatter(1, order, drop_sorted), float("-inf"))
            # Exponential race == sampling from softmax(logits), with no host sync (CUDA-graph safe).
            probs = logits.softmax(-1)
            token = (probs / torch.empty_like(probs).exponential_()).argmax(-1)
        token = torch.where(self.finished, self.pad, token)
        self.finished |= (token[:, None] == self.eos[None, :]).any(-1)
        self.step_index += 1
        return token

    def _layer(self, index, hidden, position_embeddings, mask):
        """MiniMindDecoderLayer.forward for one new token, with the fused q/k/v and gate/up matmuls."""
        layer = self.layers[index]
        attn, mlp = layer.self_attn, layer.mlp
        batch = hidden.shape[0]
        x = layer.input_layernorm(hidden)
        q, k, v = (x @ self.fused_qkv[index].T).split(
            [attn.q_proj.out_features, attn.k_proj.out_features, attn.v_proj.out_features], dim=-1)
        q = attn.q_norm(q.view(batch, 1, -1, attn.head_dim)).transpose(1, 2)  # [b, heads, 1, d]
        k = attn.k_norm(k.view(batch, 1, -1, attn.head_dim)).transpose(1, 2)
        v = v.view(batch, 1, -1, attn.head_dim).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, *position_embeddings)
        k, v = self.cache.update(k, v, index)
        out, _ = eager_attention_forward(attn, q, k, v, mask, scaling=attn.scaling)
        hidden = hidden + attn.o_proj(out.reshape(batch, 1, -1))
        gate, up = (layer.post_attention_layernorm(hidden) @ self.fused_gate_up[index].T).chunk(2, dim=-1)
        return hidden + mlp.down_proj(mlp.act_fn(gate) * up)

    def _step(self):
        model = self.model
        language_model = model.model.language_model
        hidden = model.get_input_embeddings()(self.tokens)  # [b, 1, h]
        mask = self._mask(self.cache.length.expand(self.tokens.shape[0])[:, None])
        position_embeddings = language_model.rotary_emb(hidden, self.positions)
        for index in range(len(self.layers)):
            hidden = self._layer(index, hidden, position_embeddings, mask)
        hidden = language_model.norm(hidden)
        token = self._select(model.lm_head(hidden[:, -1]).float())
        self.next_token.copy_(token)
        self.tokens.copy_(token[:, None])
        self.positions += 1
        self.cache.length += 1

    def _capture(self):
        try:
            self.step_fn = torch.compile(self._step, dynamic=False)
        except Exception:  # no compiler available: a graph of the eager step still removes the launch overhead
            self.step_fn = self._step
        saved = self._snapshot()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):  # warm-up: compile, autotune and allocate outside the capture
                self.step_fn()
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.step_fn()
        self._restore(saved)

    def _snapshot(self):
        return [t.clone() for t in (self.tokens, self.positions, self.finished, self.step_index, self.cache.length)]

    def _restore(self, saved):
        for dst, src in zip((self.tokens, self.positions, self.finished, self.step_index, self.cache.length), saved):
            dst.copy_(src)

    # -------------------------------------------------------------------------------------------- a request
    @torch.no_grad()
    def generate(self, input_ids, attention_mask, pixel_values, max_new_tokens, min_new_tokens, eos_ids, pad_id):
        model = self.model
        batch, prompt_len = input_ids.shape
        self._refresh_fused_weights()
        self.valid.fill_(True)
        self.valid[:, :prompt_len] = attention_mask.bool()
        self.finished.zero_()
        self.step_index.zero_()
        self.min_new.fill_(min_new_tokens)
        self.pad.fill_(pad_id)
        self.eos.fill_(-1)
        self.eos[: len(eos_ids)] = torch.tensor(eos_ids, dtype=torch.long)
        self.cache.length.zero_()

        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        prompt_mask = self._mask(torch.arange(prompt_len, device=input_ids.device).expand(batch, -1))
        out = model(input_ids=input_ids, pixel_values=pixel_values, attention_mask={"full_attention": prompt_mask},
                    position_ids=positions, past_key_values=self.cache, use_cache=True, logits_to_keep=1)
        self.cache.length.fill_(prompt_len)
        first = self._select(out.logits[:, -1].float())
        self.tokens.copy_(first[:, None])
        self.positions.copy_(positions[:, -1:] + 1)

        generated = [first.clone()]
        for step in range(1, max_new_tokens):
            if step % EOS_CHECK_EVERY == 0 and bool(self.finished.all()):
                break
            if self.graph is not None:
                self.graph.replay()
            else:
                self.step_fn()
            generated.append(self.next_token.clone())
        new_tokens = torch.stack(generated, dim=1)  # [b, n]
        # Like transformers: stop at the step where the last row finished.
        done = torch.cumsum((new_tokens[:, :, None] == torch.tensor(eos_ids, device=new_tokens.device)).any(-1),
                            dim=1) > 0
        all_done = done.all(0).nonzero()
        if len(all_done):
            new_tokens = new_tokens[:, : int(all_done[0]) + 1]
        return torch.cat([input_ids, new_tokens], dim=1)


def fast_generate_settings(model, kwargs: dict) -> dict | None:
    """The settings for the fast path if this `generate` call qualifies, else None (use transformers)."""
    config = model.generation_config
    if kwargs.get("cache_implementation", config.cache_implementation) != "static":
        return None
    if set(kwargs) - FAST_KWARGS or model.config.use_moe or model.config.attention_bias or model.training:
        return None
    if kwargs.get("use_cache") is False:
        return None
    if kwargs.get("input_ids") is None or (config.num_beams or 1) != 1 or config.repetition_penalty not in (None, 1.0):
        return None
    input_ids = kwargs["input_ids"]
    prompt_len = input_ids.shape[1]
    max_new = kwargs.get("max_new_tokens", config.max_new_tokens)
    if max_new is None:
        max_new = (config.max_length or 20) - prompt_len
    eos = kwargs.get("eos_token_id", config.eos_token_id)
    eos = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
    pad = kwargs.get("pad_token_id", config.pad_token_id)
    do_sample = kwargs.get("do_sample", config.do_sample)
    if len(eos) > 8 or max_new < 1:
        return None
    return {
        "input_ids": input_ids,
        "attention_mask": kwargs.get("attention_mask", torch.ones_like(input_ids)),
        "pixel_values": kwargs.get("pixel_values"),
        "max_new_tokens": int(max_new),
        "min_new_tokens": int(kwargs.get("min_new_tokens", config.min_new_tokens) or 0),
        "eos_ids": eos,
        "pad_id": int(pad if pad is not None else (eos[0] if eos else 0)),
        "sampling": (
            bool(do_sample),
            float(kwargs.get("temperature", config.temperature) or 1.0) if do_sample else 1.0,
            int(kwargs.get("top_k", config.top_k) or 0) if do_sample else 0,
            float(kwargs.get("top_p", config.top_p) or 1.0) if do_sample else 1.0,
        ),
    }


@torch.no_grad()  # also while compiling and capturing the step: no autograd graph of the decode
def fast_generate(model, settings: dict) -> torch.Tensor:
    batch, prompt_len = settings["input_ids"].shape
    max_length = prompt_len + settings["max_new_tokens"]
    key = (batch, max_length, settings["sampling"], model.device, model.dtype)
    decoders = model.__dict__.setdefault("_fast_decoders", {})
    if key not in decoders:
        decoders.clear()  # one captured setting at a time: its buffers hold a KV cache
        decoders[key] = FastDecoder(model, batch, max_length, settings["sampling"])
    return decoders[key].generate(
        settings["input_ids"], settings["attention_mask"], settings["pixel_values"], settings["max_new_tokens"],
        settings["min_new_tokens"], settings["eos_ids"], settings["pad_id"],
    )
