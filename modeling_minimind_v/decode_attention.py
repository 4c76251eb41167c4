"""One decode step's attention as two Triton kernels (split-KV "flash decoding"), for the fast decoder on CUDA.

The first kernel takes the new token's raw q/k/v projections and does, per KV head and 64-slot block of the static
KV cache: QK-norm and RoPE of q and k (rounded to the model dtype where the eager modules round), the write of k and
v into the cache, and a softmax-weighted sum over the block's keys. The second combines the blocks. In the
compiled step they take the place of the QK-norm + RoPE + cache-write kernels, the two attention GEMVs and the masked
softmax (four fewer launches per layer), and read every cached key and value once for all the query heads sharing it.

RoPE's cos / sin come from the rotary module (computed once per step, not per layer). On Hopper and newer GPUs both
kernels launch with programmatic dependent launch (PDL), as decode_projections.py's GEMVs do, so a layer's six
kernels overlap their neighbours' tails: the split kernel loads its block of the cache before it waits for the
previous kernel, and the combine kernel lets the next one start loading its weights. Both run inside one custom op
(Inductor launches the Triton kernels it traces itself, without PDL). On by default on CUDA
(`fast_generate.USE_DECODE_KERNELS`; `scripts/benchmark.py --decode-attention module` is the A/B): on an H100 at
batch 1, with the projections as kernels too, 1,315 tok/s with PDL here against 1,101 without, docs/benchmarks.md.

Triton ships with CUDA builds of torch; without it (CPU, MPS) the decoder runs the modules' own attention. Remote
code: torch, transformers and the standard library, plus Triton through triton_support.py's guarded import.
"""

import re

import torch

from .triton_support import launches_with_pdl, round_to, tl, triton

BLOCK_N = 64  # cache slots per program of the first kernel


def decode_kernels_available(config, device: torch.device) -> bool:
    """Whether the kernels can run the decode attention for this decoder config on this device."""
    head_dim = config.head_dim
    return (triton is not None and device.type == "cuda" and head_dim >= 16 and head_dim & (head_dim - 1) == 0
            and config.num_attention_heads % config.num_key_value_heads == 0)


if triton is not None:

    @triton.jit
    def _norm_rope(x1, x2, w_ptr, eps, cos, sin, d, HALF: tl.constexpr, QK_NORM: tl.constexpr,
                   DTYPE: tl.constexpr):
        """Per-head RMSNorm and RoPE of [rows, HALF] halves, rounded as the eager modules round."""
        if QK_NORM:
            inv = tl.rsqrt((tl.sum(x1 * x1, 1) + tl.sum(x2 * x2, 1)) / (2 * HALF) + eps)  # [rows]
            x1 = round_to(tl.load(w_ptr + d).to(tl.float32)[None, :] * round_to(x1 * inv[:, None], DTYPE), DTYPE)
            x2 = round_to(tl.load(w_ptr + HALF + d).to(tl.float32)[None, :] * round_to(x2 * inv[:, None], DTYPE), DTYPE)
        # x * cos + rotate_half(x) * sin with rotate_half(x) = (-x2, x1); cos / sin are the same for both halves
        r1 = round_to(round_to(x1 * cos[None, :], DTYPE) + round_to(-x2 * sin[None, :], DTYPE), DTYPE)
        r2 = round_to(round_to(x2 * cos[None, :], DTYPE) + round_to(x1 * sin[None, :], DTYPE), DTYPE)
        return r1, r2

    @triton.jit
    def _split_kernel(
        qkv_ptr, qkv_row,  # the new token's q / k / v projections, concatenated: row b at qkv_ptr + b * qkv_row
        qn_ptr, kn_ptr, eps, cos_ptr, sin_ptr,  # QK-norm weights; the rotary module's cos / sin [b, 1, D]
        kc_ptr, vc_ptr, valid_ptr, pos_ptr,  # cache [b, kv_heads, L, d], valid [b, L] (0 = padding), write slot
        m_ptr, l_ptr, acc_ptr, scale,  # per (row, head, split): running max, sum and weighted values
        HEADS: tl.constexpr, KV_HEADS: tl.constexpr, GROUP: tl.constexpr, ROWS: tl.constexpr,
        D: tl.constexpr, L: tl.constexpr, SPLITS: tl.constexpr, BLOCK: tl.constexpr, QK_NORM: tl.constexpr,
        PRECISION: tl.constexpr, PDL: tl.constexpr,
    ):
        DTYPE: tl.constexpr = kc_ptr.dtype.element_ty
        HALF: tl.constexpr = D // 2
        bh = tl.program_id(0)
        split = tl.program_id(1)
        b = bh // KV_HEADS
        h = bh % KV_HEADS
        g = tl.arange(0, ROWS)  # the group's query heads, padded to ROWS (>= 16, what tl.dot needs)
        g_ok = g < GROUP
        d = tl.arange(0, HALF)
        dd = tl.arange(0, D)
        heads = h * GROUP + g  # the query heads that read KV head h
        row = (b * KV_HEADS + h) * L
        n = split * BLOCK + tl.arange(0, BLOCK)

        # The cache first: it is the kernel's bytes, and no kernel of this step writes the slots read here (this
        # layer's slot `pos` is written below, by this kernel alone), so with PDL these loads overlap the previous
        # kernels. The write position is only advanced between steps; a copy read again after the wait gives the
        # mask (the early one reads one slot more, so a stale copy could only widen what is loaded, never narrow it).
        early = tl.load(pos_ptr)
        loaded = (n <= early) & (n < L)
        valid = tl.load(valid_ptr + b * L + n, mask=n < L, other=0) != 0  # [BLOCK]
        kc = kc_ptr + (row + n[None, :]) * D + d[:, None]  # [HALF, BLOCK]: keys transposed
        key1 = tl.load(kc, mask=loaded[None, :], other=0.0)
        key2 = tl.load(kc + HALF, mask=loaded[None, :], other=0.0)
        values = tl.load(vc_ptr + (row + n[:, None]) * D + dd[None, :], mask=loaded[:, None], other=0.0)
        if PDL:
            tl.extra.cuda.gdc_launch_dependents()
            tl.extra.cuda.gdc_wait()
        # What earlier kernels of the step wrote (q / k / v, cos / sin) is read after the wait, every load at once
        # (at batch 1 the kernel is latency-bound: a chain of dependent loads costs ~1 µs each).
        pos = tl.load(pos_ptr)  # this token's cache slot; slots before it are written
        cos = tl.load(cos_ptr + b * D + d).to(tl.float32)  # [HALF]: both halves of cos / sin are equal
        sin = tl.load(sin_ptr + b * D + d).to(tl.float32)
        q_at = qkv_ptr + b * qkv_row + heads[:, None] * D + d[None, :]
        q1 = tl.load(q_at, mask=g_ok[:, None], other=0.0).to(tl.float32)  # [ROWS, HALF]
        q2 = tl.load(q_at + HALF, mask=g_ok[:, None], other=0.0).to(tl.float32)
        k_at = qkv_ptr + b * qkv_row + (HEADS + h) * D + d[None, :]
        k1 = tl.load(k_at).to(tl.float32)  # [1, HALF]
        k2 = tl.load(k_at + HALF).to(tl.float32)
        v_new = tl.load(qkv_ptr + b * qkv_row + (HEADS + KV_HEADS + h) * D + dd).to(tl.float32)  # [D]
        seen = (n < pos) & valid
        values = tl.where(seen[:, None], values, 0.0)  # [BLOCK, D]; padding slots may hold anything

        q1, q2 = _norm_rope(q1, q2, qn_ptr, eps, cos, sin, d, HALF, QK_NORM, DTYPE)
        k1, k2 = _norm_rope(k1, k2, kn_ptr, eps, cos, sin, d, HALF, QK_NORM, DTYPE)

        scores = tl.dot(q1.to(DTYPE), key1, input_precision=PRECISION)
        scores += tl.dot(q2.to(DTYPE), key2, input_precision=PRECISION)  # [ROWS, BLOCK], fp32
        scores = tl.where(seen[None, :], scores * scale, float("-inf"))
        # The block that holds slot `pos` counts the new token itself, from registers: no program reads slot `pos`
        # from memory, so there is no race with its write below.
        owner = split == pos // BLOCK
        new_score = (tl.sum(q1 * k1, 1) + tl.sum(q2 * k2, 1)) * scale  # [ROWS]
        new_score = tl.where(owner, new_score, float("-inf"))
        top = tl.maximum(tl.max(scores, 1), new_score)
        top_safe = tl.where(top == float("-inf"), 0.0, top)  # a block with nothing to see: weights 0, not NaN
        p = tl.exp(scores - top_safe[:, None])
        p_new = tl.exp(new_score - top_safe)
        acc = tl.dot(p.to(DTYPE), values.to(DTYPE), input_precision=PRECISION) + p_new[:, None] * v_new[None, :]
        total = tl.sum(p, 1) + p_new

        at = (b * HEADS + heads) * SPLITS + split  # [ROWS]
        tl.store(m_ptr + at, top, mask=g_ok)
        tl.store(l_ptr + at, total, mask=g_ok)
        tl.store(acc_ptr + at[:, None] * D + dd[None, :], acc, mask=g_ok[:, None])  # [ROWS, D]
        half_mask = (d[None, :] * 0 + pos // BLOCK) == split  # `owner` as a [1, HALF] mask
        tl.store(kc_ptr + (row + pos) * D + d[None, :], k1.to(DTYPE), mask=half_mask)
        tl.store(kc_ptr + (row + pos) * D + HALF + d[None, :], k2.to(DTYPE), mask=half_mask)
        tl.store(vc_ptr + (row + pos) * D + dd, v_new.to(DTYPE), mask=(dd * 0 + pos // BLOCK) == split)

    @triton.jit
    def _combine_kernel(m_ptr, l_ptr, acc_ptr, out_ptr, D: tl.constexpr, SPLITS: tl.constexpr,
                        SPLITS_P: tl.constexpr, PDL: tl.constexpr):
        """out[row, head] = sum_s exp(m_s - M) acc_s / sum_s exp(m_s - M) l_s over the blocks s."""
        if PDL:  # everything read here is the split kernel's: let the next kernel start loading its weights
            tl.extra.cuda.gdc_launch_dependents()
            tl.extra.cuda.gdc_wait()
        rh = tl.program_id(0)  # row * heads + head
        s = tl.arange(0, SPLITS_P)
        s_ok = s < SPLITS
        dd = tl.arange(0, D)
        m = tl.load(m_ptr + rh * SPLITS + s, mask=s_ok, other=float("-inf"))
        weight = tl.exp(m - tl.max(m, 0))  # the block with the new token is always finite
        total = tl.sum(weight * tl.load(l_ptr + rh * SPLITS + s, mask=s_ok, other=0.0), 0)
        acc = tl.load(acc_ptr + (rh * SPLITS + s[:, None]) * D + dd[None, :], mask=s_ok[:, None], other=0.0)
        out = tl.sum(weight[:, None] * acc, 0) / total
        tl.store(out_ptr + rh * D + dd, out.to(out_ptr.dtype.element_ty))

    def _attention(qkv: torch.Tensor, q_norm: torch.Tensor, k_norm: torch.Tensor, eps: float, cos: torch.Tensor,
                   sin: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, valid: torch.Tensor, pos: torch.Tensor,
                   scale: float, qk_norm: bool) -> torch.Tensor:
        """The split and combine kernels (`DecodeAttention.__call__` has the shapes); both launched with PDL on
        Hopper and newer GPUs. Writes the new k / v into `keys` / `values` at slot `pos`."""
        batch = qkv.shape[0]
        _, kv_heads, length, head_dim = keys.shape
        heads = qkv.shape[-1] // head_dim - 2 * kv_heads
        group = heads // kv_heads
        splits = -(-length // BLOCK_N)
        pdl = launches_with_pdl(qkv.device)
        launch = {"launch_pdl": True} if pdl else {}
        top = torch.empty(batch * heads * splits, device=qkv.device, dtype=torch.float32)
        total = torch.empty(batch * heads * splits, device=qkv.device, dtype=torch.float32)
        acc = torch.empty(batch * heads * splits, head_dim, device=qkv.device, dtype=torch.float32)
        _split_kernel[(batch * kv_heads, splits)](
            qkv, qkv.stride(0), q_norm, k_norm, eps, cos, sin, keys, values, valid, pos, top, total, acc, scale,
            HEADS=heads, KV_HEADS=kv_heads, GROUP=group, ROWS=max(16, triton.next_power_of_2(group)), D=head_dim,
            L=length, SPLITS=splits, BLOCK=BLOCK_N, QK_NORM=qk_norm,
            PRECISION="ieee" if keys.dtype == torch.float32 else "tf32", PDL=pdl, num_warps=4, num_stages=1, **launch,
        )
        out = torch.empty(batch, 1, heads * head_dim, device=qkv.device, dtype=qkv.dtype)
        _combine_kernel[(batch * heads,)](
            top, total, acc, out, D=head_dim, SPLITS=splits, SPLITS_P=triton.next_power_of_2(splits), PDL=pdl,
            num_warps=4, **launch,
        )
        return out

    # A custom op (mutating the cache), so that torch.compile launches the kernels above as they are: Inductor
    # launches the user Triton kernels it traces itself, without PDL. One op name per copy of this module: the
    # package and a checkpoint's remote code can be loaded side by side.
    _attention_op = torch.library.custom_op("minimind_v::decode_attention_" + re.sub(r"\W", "_", __name__),
                                            _attention, mutates_args=("keys", "values"))

    @_attention_op.register_fake
    def _(qkv, q_norm, k_norm, eps, cos, sin, keys, values, valid, pos, scale, qk_norm):
        return qkv.new_empty(qkv.shape[0], 1, qkv.shape[-1] - 2 * keys.shape[1] * keys.shape[-1])


def _rotary_table(cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """(cos, sin) [b, 1, D] -> [2, b, 1, D]: one buffer for the step's layers to read."""
    return torch.stack((cos, sin))


# An opaque op, so that the step computes the rotary table once: Inductor gives every custom-op input its own copy
# of a pointwise result, so each layer's kernel had its cos / sin recomputed by extra kernels between its neighbours.
_rotary_table_op = torch.library.custom_op("minimind_v::rotary_table_" + re.sub(r"\W", "_", __name__),
                                           _rotary_table, mutates_args=())


@_rotary_table_op.register_fake
def _(cos, sin):
    return cos.new_empty(2, *cos.shape)


class DecodeAttention:
    """The fast decoder's attention for one-token steps: called by `MiniMindAttention.forward` (argument
    `decode_attention`) or by the decoder layer's one-token path with the new token's projections and the rotary
    module's (cos, sin), in place of its QK-norm, RoPE, cache update and attention. It writes k / v at the cache's
    shared write position and does not advance it (the decoder does, once per step). `valid` [b, L] marks the cache
    slots that are not prompt padding."""

    def __init__(self, cache, valid: torch.Tensor):
        self.cache, self.valid = cache, valid.view(torch.uint8)

    @staticmethod
    def position_embeddings(position_embeddings):
        """The rotary module's (cos, sin) as the layers' kernels take them, computed once per step (the decoder
        model calls this before its layers)."""
        table = _rotary_table_op(*(t.contiguous() for t in position_embeddings))
        return table[0], table[1]

    def __call__(self, module, qkv: torch.Tensor, position_embeddings) -> torch.Tensor:
        """`qkv` [b, 1, (heads + 2 kv_heads) * head_dim]: the new token's q, k and v projections side by side;
        `position_embeddings`: (cos, sin) [b, 1, head_dim] as the rotary module returns them. Returns the attention
        output [b, 1, heads * head_dim]."""
        batch = qkv.shape[0]
        cos, sin = (t.contiguous() for t in position_embeddings)
        if qkv.shape[1] != 1 or qkv.stride(-1) != 1 or cos.shape[:2] != (batch, 1):
            raise ValueError("DecodeAttention takes one token per row: [b, 1, (heads + 2 kv_heads) * head_dim], "
                             "with (cos, sin) [b, 1, head_dim]")
        layer = self.cache.layers[module.layer_idx]  # keys / values [b, kv_heads, L, d], contiguous
        qk_norm = not isinstance(module.q_norm, torch.nn.Identity)
        q_norm = module.q_norm.weight if qk_norm else cos  # any tensor when unused
        k_norm = module.k_norm.weight if qk_norm else cos
        eps = module.q_norm.variance_epsilon if qk_norm else 0.0
        return _attention_op(qkv, q_norm, k_norm, eps, cos, sin, layer.keys, layer.values, self.valid,
                             self.cache.position(), module.scaling, qk_norm)


__all__ = ["BLOCK_N", "DecodeAttention", "decode_kernels_available"]
