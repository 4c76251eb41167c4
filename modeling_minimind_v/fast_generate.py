"""Fast decoding for `generate(..., cache_implementation="static")`: a preallocated KV cache (transformers'
`StaticCache`) and a decode step that is compiled and captured once as a CUDA graph, so each new token costs one
graph replay instead of a Python pass through `generate`'s machinery. One decoder (its cache, its compiled step)
serves every request of its batch size and sampling settings that fits its cache, whatever the prompt length.
On CUDA a dense decoder also captures its prefill (vision tower, prompt forward, first token) as a graph per padded
prompt shape, so that a request of a shape seen before replays it instead of running ~1,000 eager launches
(`CAPTURE_PREFILL`, on by default).

The step runs the model's own modules (`MiniMindModel.forward`, with the q/k/v and gate/up matmuls fused by the
modules themselves, see `fuse_projections`); local are the token choice and the cache's one write counter. Used
for plain greedy / sampled decoding of the dense and the MoE model (experts as static-shape batched matmuls); every
other `generate` call goes through transformers unchanged. On CPU the same loop runs eagerly (tests check it against
transformers' generate token for token). On CUDA with Triton (`USE_DECODE_KERNELS`), the step's attention and, at
batch <= 4, its projections run as the Triton kernels of decode_attention.py and decode_projections.py. Remote
code: torch and transformers only (Triton where torch's CUDA build brings it).
"""

import logging

import torch
from transformers.cache_utils import StaticCache

from .attention import eager_attention_forward
from .decode_attention import DecodeAttention, decode_kernels_available
from .decode_projections import MAX_BATCH as PROJECTION_MAX_BATCH
from .decode_projections import DecodeProjections, decode_projections_available

logger = logging.getLogger(__name__)

# `generate` arguments this path understands; anything else falls back to transformers.
FAST_KWARGS = {
    "input_ids", "attention_mask", "pixel_values", "max_new_tokens", "min_new_tokens", "do_sample", "temperature",
    "top_k", "top_p", "eos_token_id", "pad_token_id", "cache_implementation", "use_cache",
}
STEPS_PER_GRAPH = 8  # decode steps captured in one CUDA graph: one replay (and one host round trip) per 8 tokens
EOS_CHECK_EVERY = 16  # steps between host checks for "every row has finished" (a multiple of STEPS_PER_GRAPH)
CACHE_ROUND = 128  # KV-cache capacity is a multiple of this, and a decoder serves any request that fits: other
# prompt lengths and max_new_tokens reuse the compiled step instead of compiling a new one.
# CAPTURE_PREFILL: on CUDA the prefill (vision tower + prompt forward + first token choice) of a dense decoder is
# captured as a CUDA graph per prompt shape, on the first request of that shape, and replayed by the later ones.
# Eager, the prefill is host-bound (~33 ms of Python and launches for a one-image prompt at 0.6B size, against a few
# ms of GPU work). Prompts are then left-padded (masked) to a multiple of PREFILL_ROUND tokens so that nearby lengths
# share a graph; the PREFILL_GRAPHS most recent are kept. On by default: on an H100, batch 1, time to first token
# 32 ms -> 10 ms and tokens/s 717 -> 758 (`scripts/benchmark.py --prefill graph` against `--prefill eager`,
# docs/benchmarks.md). The first request of a new shape pays the eager prefill and the capture's recording; set it to
# False for traffic whose prompt shapes never repeat.
PREFILL_ROUND = 16
PREFILL_GRAPHS = 8
CAPTURE_PREFILL = True
# Inductor settings of the compiled decode step. Coordinate-descent tuning makes Inductor lower one-row matmuls
# (batch-1 decoding) to multiply + sum reductions it tunes and fuses with neighbouring RMSNorm / residual / SwiGLU
# work, instead of one cuBLAS GEMV launch per projection (1.76x tokens/s at batch 1 on an H200, docs/benchmarks.md).
STEP_COMPILE_OPTIONS = {"coordinate_descent_tuning": True}
# True: on CUDA with Triton, the step's attention runs as decode_attention.py's split-KV kernels (QK-norm, RoPE and
# the cache write fused in, cos / sin from the rotary module) and, at batch <= 4, its projections as
# decode_projections.py's GEMV kernels. On an H100 (scripts/benchmark.py, docs/benchmarks.md): batch 1 800 tok/s with
# the modules' path, 956 with the attention kernels, 990 with the projections too, 1,094 once those launch with PDL,
# 1,315 once the attention kernels do too (4.9x LLaVA's best mode in that run); batch 32 13,729 (3.0x). False: the
# modules' path.
USE_DECODE_KERNELS = True
# With the decode kernels, at batch <= decode_projections.MAX_BATCH: the step's projections too, as GEMV kernels with
# the RMSNorms, SwiGLU and residual adds fused in (decode_projections.py); six launches per dense layer in all.
USE_DECODE_PROJECTIONS = True


def warm_up(fn, *args, repeats: int = 1):
    """Run `fn(*args)` `repeats` times on a side stream, as CUDA-graph capture wants of the work it will record
    (compilation, autotuning and the first allocations happen outside the capture)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(repeats):
            fn(*args)
    torch.cuda.current_stream().wait_stream(stream)


def greedy_token(logits: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """`logits.argmax(-1)` for [b, V] logits, as a max over chunks of the vocabulary and then over the chunks' maxima:
    two parallel reductions instead of one long one (a single 152k-wide reduction took 28-37 µs per token on an
    H200). The first maximum wins, as in argmax."""
    batch, vocab = logits.shape
    chunks = -(-vocab // chunk)
    padded = torch.nn.functional.pad(logits, (0, chunks * chunk - vocab), value=float("-inf"))
    best, index = padded.view(batch, chunks, chunk).max(-1)  # [b, chunks] each: per-chunk max and its first index
    which = best.argmax(-1, keepdim=True)  # [b, 1]: the first chunk holding the overall max
    return (which * chunk + index.gather(1, which)).squeeze(1)


class MiniMindStaticCache(StaticCache):
    """transformers' `StaticCache` with one write position for all layers, a device tensor: advanced once per
    forward (after the last layer's write) instead of once per layer (28 tiny kernels per decode step at 0.6B size),
    and read by masks built inside a CUDA graph. Rewinding between requests only resets it: slots beyond it are
    masked, so they need no zeroing. Call `early_initialization` before use."""

    def early_initialization(self, *args, **kwargs):
        super().early_initialization(*args, **kwargs)
        self.length = self.layers[0].cumulative_length
        for layer in self.layers:  # transformers reads the layers' lengths (get_seq_length): all see the shared one
            layer.cumulative_length = self.length

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        layer = self.layers[layer_idx]
        new = key_states.shape[-2]
        slots = self.length + torch.arange(new, device=key_states.device)
        try:
            layer.keys.index_copy_(2, slots, key_states)
            layer.values.index_copy_(2, slots, value_states)
        except NotImplementedError:  # as in transformers' StaticLayer: devices without index_copy_ (MPS)
            layer.keys[:, :, slots] = key_states
            layer.values[:, :, slots] = value_states
        if layer_idx == len(self.layers) - 1:
            self.length.add_(new)
        return layer.keys, layer.values

    def position(self) -> torch.Tensor:
        return self.length

    def advance(self, new: int):
        """Count `new` slots as written by someone else than `update` (the decode kernels write them)."""
        self.length.add_(new)

    def rewind(self):
        self.length.zero_()


class FastDecoder:
    """Static buffers + one decode step for a fixed (batch, sampling) setting and a KV cache of `cache_len` slots
    (a multiple of CACHE_ROUND); reused by every request that fits (prompt + new tokens <= max_length)."""

    def __init__(self, model, batch_size: int, cache_len: int, sampling: tuple):
        device, dtype = model.device, model.dtype
        # A request's last graph replay may run up to STEPS_PER_GRAPH - 1 steps past max_length: room for them.
        self.model, self.max_length = model, cache_len - STEPS_PER_GRAPH
        self.language_model = model.model.language_model
        self.do_sample, self.temperature, self.top_k, self.top_p = sampling
        text = model.config.get_text_config()
        self.cache = MiniMindStaticCache(config=text, max_cache_len=cache_len)
        # Allocated now (not at the first update), so the step can be captured before any request: warm-up steps
        # then write only slots the next prefill overwrites.
        self.cache.early_initialization(batch_size, text.num_key_value_heads, text.head_dim, dtype, device)
        self.tokens = torch.zeros(batch_size, 1, dtype=torch.long, device=device)
        self.positions = torch.zeros(batch_size, 1, dtype=torch.long, device=device)
        self.valid = torch.ones(batch_size, cache_len, dtype=torch.bool, device=device)  # False: prompt padding
        self.finished = torch.zeros(batch_size, dtype=torch.bool, device=device)
        self.step_index = torch.zeros((), dtype=torch.long, device=device)
        self.min_new = torch.zeros((), dtype=torch.long, device=device)
        self.pad = torch.zeros((), dtype=torch.long, device=device)
        self.eos = torch.full((8,), -1, dtype=torch.long, device=device)
        self.key_positions = torch.arange(cache_len, device=device)
        # Every chosen token, written on the device at its step index (no per-token host copy).
        self.out_tokens = torch.zeros(batch_size, cache_len, dtype=torch.long, device=device)
        self.dtype = dtype
        # At batch 1 a decode step is ~7 small matmuls per layer, each latency-bound: the attention and MLP modules
        # run q/k/v and gate/up as one matmul each from concatenated weights (refreshed at every request).
        self.language_model.fuse_projections()
        if USE_DECODE_KERNELS and decode_kernels_available(text, device):
            self.kernels = DecodeAttention(self.cache, self.valid)
            self.attention_args = {"decode_attention": self.kernels}
            if USE_DECODE_PROJECTIONS and batch_size <= PROJECTION_MAX_BATCH \
                    and decode_projections_available(text, device):
                self.attention_args["decode_projections"] = DecodeProjections()
        else:
            # GQA without repeat_kv copies: on an H200 this beat a multiply + sum formulation compiled to
            # reductions and FlexAttention's decoding kernel (docs/benchmarks.md).
            self.kernels = None
            self.attention_args = {"attention_interface": eager_attention_forward}
        self.graph = None
        self.step_fn = self._step
        # Captured prefills, {prompt shape: (graph, its input buffers)}, oldest first. None: prefill runs eagerly
        # (CPU; MoE, whose routing counts tokens per expert on the host; or a capture failed).
        self.prefills = {} if captures_prefill(model) else None
        if device.type == "cuda":
            self._capture()
        logger.info("fast static-cache decoding: batch %d, cache %d slots, %s, %s attention", batch_size, cache_len,
                    "compiled CUDA graph" if self.graph is not None else "eager",
                    ("Triton decode" + (" (projections too)" if "decode_projections" in self.attention_args else ""))
                    if self.kernels is not None else "module")

    # -------------------------------------------------------------------------------------------- one step
    def _mask(self, query_positions: torch.Tensor) -> torch.Tensor:
        """Additive [b, 1, q, L] mask: a query sees written, non-padding keys at or before its cache slot."""
        allowed = (self.key_positions[None, None, :] <= query_positions[:, :, None]) & self.valid[:, None, :]
        mask = torch.zeros(allowed.shape, dtype=self.dtype, device=allowed.device)
        return mask.masked_fill(~allowed, torch.finfo(self.dtype).min)[:, None]

    def _select(self, logits: torch.Tensor) -> torch.Tensor:
        """Next token from fp32 logits [b, V]: EOS held back before min_new_tokens, then greedy or sampled."""
        eos_ids = self.eos.clamp(min=0)
        hold = (self.step_index < self.min_new) & (self.eos >= 0)
        eos_logits = logits.index_select(1, eos_ids)
        logits = logits.index_copy(1, eos_ids, torch.where(hold[None, :], float("-inf"), eos_logits))
        if not self.do_sample:
            token = greedy_token(logits)
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
        self.out_tokens.index_copy_(1, self.step_index.view(1), token[:, None])
        self.step_index += 1
        return token

    def _step(self):
        """One new token per row: the decoder's own forward on the last token, then the token choice."""
        hidden = self.language_model.embed_tokens(self.tokens)  # [b, 1, h]
        # The kernels read the padding (`valid`) and the write position themselves: no additive mask.
        mask = None if self.kernels is not None else self._mask(
            self.cache.position().expand(self.tokens.shape[0])[:, None])
        out = self.language_model(
            inputs_embeds=hidden, attention_mask={"full_attention": mask}, position_ids=self.positions,
            past_key_values=self.cache, use_cache=True, output_attentions=False, output_hidden_states=False,
            output_router_logits=False, return_dict=True, fused_projections=True, **self.attention_args,
        )
        if self.kernels is not None:
            self.cache.advance(1)
        token = self._select(self.model.lm_head(out.last_hidden_state[:, -1]).float())
        self.tokens.copy_(token[:, None])
        self.positions += 1

    def _steps(self):
        """STEPS_PER_GRAPH decode steps (what one graph replay runs)."""
        for _ in range(STEPS_PER_GRAPH):
            self.step_fn()

    def _capture(self):
        try:
            self.step_fn = torch.compile(self._step, dynamic=False, options=dict(STEP_COMPILE_OPTIONS))
        except Exception:  # no compiler available: a graph of the eager step still removes the launch overhead
            self.step_fn = self._step
        saved = self._snapshot()
        warm_up(self.step_fn, repeats=3)  # compile, autotune and allocate outside the capture
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._steps()
        self._restore(saved)

    def _state(self) -> list[torch.Tensor]:
        return [self.tokens, self.positions, self.finished, self.step_index, self.cache.position()]

    def _snapshot(self):
        return [t.clone() for t in self._state()]

    def _restore(self, saved):
        for dst, src in zip(self._state(), saved):
            dst.copy_(src)

    # -------------------------------------------------------------------------------------------- the prefill
    def padded_prompt(self, input_ids, attention_mask, pad_id: int):
        """The prompt left-padded to `prompt_slots` tokens (padding masked, so the outputs are the unpadded ones)."""
        extra = prompt_slots(self.model, input_ids.shape[1]) - input_ids.shape[1]
        if not extra:
            return input_ids, attention_mask
        image_token = self.model.config.image_token_id  # a pad id equal to it would add placeholders: use another
        fill = pad_id if pad_id != image_token else (image_token - 1 if image_token > 0 else 1)
        pad = input_ids.new_full((input_ids.shape[0], extra), fill)
        return torch.cat([pad, input_ids], 1), torch.cat([torch.zeros_like(pad, dtype=attention_mask.dtype),
                                                           attention_mask], 1)

    def _prefill(self, input_ids, attention_mask, pixel_values):
        """The prompt into the cache and the first token's choice, through the model's own image merge (its
        `get_image_features` + `merge_image_features`) and decoder. No host sync, so it can be captured: the
        caller has checked the placeholders against the images."""
        vlm = self.model.model
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # [b, s]: left padding starts at 0
        prompt_mask = self._mask(torch.arange(input_ids.shape[1], device=input_ids.device)
                                 .expand(input_ids.shape[0], -1))
        embeds = self.language_model.embed_tokens(input_ids)  # [b, s, h]
        if pixel_values is not None:
            features = vlm.get_image_features(pixel_values, return_dict=True).pooler_output
            embeds = vlm.merge_image_features(embeds, input_ids == self.model.config.image_token_id, features,
                                              check=False)
        out = self.language_model(
            inputs_embeds=embeds, attention_mask={"full_attention": prompt_mask}, position_ids=positions,
            past_key_values=self.cache, use_cache=True, output_attentions=False, output_hidden_states=False,
            output_router_logits=False, return_dict=True,
        )
        first = self._select(self.model.lm_head(out.last_hidden_state[:, -1:])[:, -1].float())
        self.tokens.copy_(first[:, None])
        self.positions.copy_(positions[:, -1:] + 1)

    def _run_prefill(self, input_ids, attention_mask, pixel_values):
        """`_prefill`, as a replay of the graph captured for this prompt shape when there is one. The first
        request of a shape runs it eagerly (also the capture's warm-up), then captures it for the next ones."""
        if self.prefills is None:
            return self._prefill(input_ids, attention_mask, pixel_values)
        key = (tuple(input_ids.shape), None if pixel_values is None else (tuple(pixel_values.shape),
                                                                           pixel_values.dtype))
        entry = self.prefills.pop(key, None)
        if entry is not None:
            graph, buffers = entry
            for buffer, value in zip(buffers, (input_ids, attention_mask, pixel_values)):
                if buffer is not None:
                    buffer.copy_(value)
            graph.replay()
        else:
            warm_up(self._prefill, input_ids, attention_mask, pixel_values)
            entry = self._capture_prefill(input_ids, attention_mask, pixel_values)
        if entry is not None and self.prefills is not None:
            self.prefills[key] = entry  # most recently used last
            while len(self.prefills) > PREFILL_GRAPHS:
                del self.prefills[next(iter(self.prefills))]

    def _capture_prefill(self, input_ids, attention_mask, pixel_values):
        """A graph of `_prefill` over copies of these inputs (capturing records, it does not run: the state the
        eager prefill left stays). On failure the decoder keeps its prefill eager."""
        buffers = tuple(None if t is None else t.clone() for t in (input_ids, attention_mask, pixel_values))
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self._prefill(*buffers)
        except Exception as error:  # e.g. a vision tower that syncs with the host: stay correct, only slower
            logger.warning("fast static-cache decoding: the prefill could not be captured as a CUDA graph (%s); "
                           "it runs eagerly", error)
            self.prefills = None
            return None
        return graph, buffers

    # -------------------------------------------------------------------------------------------- a request
    @torch.no_grad()
    def generate(self, input_ids, attention_mask, pixel_values, max_new_tokens, min_new_tokens, eos_ids, pad_id):
        model = self.model
        prompt = input_ids
        input_ids, attention_mask = self.padded_prompt(input_ids, attention_mask, pad_id)
        batch, prompt_len = input_ids.shape
        self.language_model.fuse_projections()  # in place: the captured graph keeps reading the same buffers
        self.valid.fill_(True)
        self.valid[:, :prompt_len] = attention_mask.bool()
        self.finished.zero_()
        self.step_index.zero_()
        self.min_new.fill_(min_new_tokens)
        self.pad.fill_(pad_id)
        self.eos.fill_(-1)
        self.eos[: len(eos_ids)] = torch.tensor(eos_ids, dtype=torch.long)
        self.cache.rewind()
        self.model.model.check_image_tokens(  # eager, before any graph: a host sync of the placeholder count
            prompt == model.config.image_token_id, None if pixel_values is None else pixel_values.shape[0])
        self._run_prefill(input_ids, attention_mask, pixel_values)

        produced, replays = 1, 0
        while produced < max_new_tokens:
            if replays and replays % (EOS_CHECK_EVERY // STEPS_PER_GRAPH) == 0 and bool(self.finished.all()):
                break
            if self.graph is not None:
                self.graph.replay()
            else:
                self._steps()
            produced, replays = produced + STEPS_PER_GRAPH, replays + 1
        new_tokens = self.out_tokens[:, : min(produced, max_new_tokens)].clone()  # [b, n]
        # Like transformers: stop at the step where the last row finished.
        done = torch.cumsum((new_tokens[:, :, None] == torch.tensor(eos_ids, device=new_tokens.device)).any(-1),
                            dim=1) > 0
        all_done = done.all(0).nonzero()
        if len(all_done):
            new_tokens = new_tokens[:, : int(all_done[0]) + 1]
        return torch.cat([prompt, new_tokens], dim=1)


def captures_prefill(model) -> bool:
    """Whether the fast decoder captures this model's prefill as CUDA graphs (CUDA, dense decoder: MoE routing
    counts tokens per expert on the host)."""
    return CAPTURE_PREFILL and model.device.type == "cuda" and not model.config.get_text_config().num_experts


def prompt_slots(model, prompt_len: int) -> int:
    """Cache slots a prompt of `prompt_len` tokens takes: rounded up to PREFILL_ROUND where prefills are captured."""
    return -(-prompt_len // PREFILL_ROUND) * PREFILL_ROUND if captures_prefill(model) else prompt_len


def fast_generate_settings(model, kwargs: dict) -> dict | None:
    """The settings for the fast path if this `generate` call qualifies, else None (use transformers)."""
    config = model.generation_config
    if kwargs.get("cache_implementation", config.cache_implementation) != "static":
        return None
    text = model.config.get_text_config()
    if set(kwargs) - FAST_KWARGS or text.attention_bias or model.training:
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
    key = (batch, settings["sampling"], model.device, model.dtype)
    decoders = model.__dict__.setdefault("_fast_decoders", {})
    decoder = decoders.get(key)
    needed = prompt_slots(model, prompt_len) + settings["max_new_tokens"]
    if decoder is None or decoder.max_length < needed:
        decoders.clear()  # one captured setting at a time: its buffers hold a KV cache
        cache_len = -(-(needed + STEPS_PER_GRAPH) // CACHE_ROUND) * CACHE_ROUND
        decoder = decoders[key] = FastDecoder(model, batch, cache_len, settings["sampling"])
    return decoder.generate(
        settings["input_ids"], settings["attention_mask"], settings["pixel_values"], settings["max_new_tokens"],
        settings["min_new_tokens"], settings["eos_ids"], settings["pad_id"],
    )
