"""One decode step's projections as Triton GEMV kernels with their neighbours fused in, for the fast decoder on CUDA.

At batch 1 every projection of a decode step is a matrix-vector product: it reads its weight once and does almost no
arithmetic, so its cost is the weight's bytes plus a fixed launch-and-ramp latency of a few µs. Fusing the work
around each product into it takes kernels (and their latencies) out of the step. Per decoder layer there are four:

- `norm_linear`: the input RMSNorm and the q/k/v projection (one concatenated weight);
- `linear_add`: the o projection plus the residual, and the down projection plus the residual;
- `norm_swiglu`: the post-attention RMSNorm, the gate/up projection (one concatenated weight) and SwiGLU.

Together with decode_attention.py's two attention kernels a layer is six launches. Each kernel rounds to the model
dtype where the eager modules round (the norm before and after its weight, the projection, SiLU, the product, the
residual sum), so the step computes what the modules compute, up to the order of the fp32 sums.

Each program reads BLOCK_N whole rows of the weight, and every program recomputes the RMSNorm statistic of its one
input row (a few KB, from L2), so no kernel waits for another. Launch settings are the best of a sweep on an H100
(docs/benchmarks.md). Triton ships with CUDA builds of torch; without it the modules run. Remote code: torch,
transformers and the standard library, plus Triton through triton_support.py's guarded import.
"""

import re

import torch

from .triton_support import launches_with_pdl, round_to, tl, triton

MAX_BATCH = 4  # rows up to which the GEMV kernels run; beyond, a step's projections are matrix products (cuBLAS)
BLOCK_N = 4  # weight rows per program
MAX_BLOCK_K = 4096  # weight columns per load: rows of up to this many columns are read in one go


def decode_projections_available(config, device: torch.device) -> bool:
    """Whether the kernels can run this decoder's projections on this device (dense SwiGLU MLP, no biases)."""
    return (triton is not None and device.type == "cuda" and not config.num_experts and not config.attention_bias
            and config.hidden_act == "silu")


if triton is not None:

    @triton.jit
    def _gemv_kernel(
        x_ptr, w_ptr, out_ptr, res_ptr, norm_ptr, eps, n_out,  # x [b, K]; w [n_out (x2 for SwiGLU), K]; out [b, n_out]
        K: tl.constexpr, NORM: tl.constexpr, SWIGLU: tl.constexpr, RESIDUAL: tl.constexpr, BLOCK: tl.constexpr,
        BLOCK_K: tl.constexpr, PDL: tl.constexpr,
    ):
        DTYPE: tl.constexpr = w_ptr.dtype.element_ty
        rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        b = tl.program_id(1)
        rows_ok = rows < n_out
        x_row = x_ptr + b * K
        ks = tl.arange(0, BLOCK_K)
        # The first BLOCK_K columns of the weight rows (all of them when K <= BLOCK_K) are loaded before waiting
        # for the previous kernel: weights are never written during decoding, so with PDL these loads overlap the
        # previous kernel's tail. Everything the previous kernels wrote is read after the wait.
        at = rows[:, None] * K + ks[None, :]
        ok = rows_ok[:, None] & (ks < K)[None, :]
        w = tl.load(w_ptr + at, mask=ok, other=0.0)
        if SWIGLU:  # the up rows sit n_out rows below the gate rows in the concatenated weight
            w_up = tl.load(w_ptr + n_out * K + at, mask=ok, other=0.0)
        if PDL:
            tl.extra.cuda.gdc_launch_dependents()
            tl.extra.cuda.gdc_wait()
        inv = 1.0
        if NORM:  # RMSNorm statistic of the whole input row, in fp32 as the module computes it
            squares = tl.zeros([BLOCK_K], dtype=tl.float32)
            for k0 in tl.range(0, K, BLOCK_K):
                part = tl.load(x_row + k0 + ks, mask=k0 + ks < K, other=0.0).to(tl.float32)
                squares += part * part
            inv = tl.rsqrt(tl.sum(squares, 0) / K + eps)
        acc = tl.zeros([BLOCK, BLOCK_K], dtype=tl.float32)  # per-lane partial sums, reduced once at the end
        acc_up = tl.zeros([BLOCK, BLOCK_K], dtype=tl.float32)
        for k0 in tl.range(0, K, BLOCK_K):
            kk = k0 + ks
            k_ok = kk < K
            if k0 > 0:  # the next columns (only when K > BLOCK_K)
                at = rows[:, None] * K + kk[None, :]
                ok = rows_ok[:, None] & k_ok[None, :]
                w = tl.load(w_ptr + at, mask=ok, other=0.0)
                if SWIGLU:
                    w_up = tl.load(w_ptr + n_out * K + at, mask=ok, other=0.0)
            x = tl.load(x_row + kk, mask=k_ok, other=0.0).to(tl.float32)
            if NORM:  # weight * normalised x, each rounded to the model dtype as MiniMindRMSNorm rounds
                x = round_to(tl.load(norm_ptr + kk, mask=k_ok, other=0.0).to(tl.float32) * round_to(x * inv, DTYPE),
                           DTYPE)
            acc += w.to(tl.float32) * x[None, :]
            if SWIGLU:
                acc_up += w_up.to(tl.float32) * x[None, :]
        y = round_to(tl.sum(acc, 1), DTYPE)  # [BLOCK]
        if SWIGLU:  # silu(gate) * up, each rounded as the eager ops round
            up = round_to(tl.sum(acc_up, 1), DTYPE)
            y = round_to(round_to(y / (1.0 + tl.exp(-y)), DTYPE) * up, DTYPE)
        if RESIDUAL:
            y = round_to(y + tl.load(res_ptr + b * n_out + rows, mask=rows_ok, other=0.0).to(tl.float32), DTYPE)
        tl.store(out_ptr + b * n_out + rows, y.to(DTYPE), mask=rows_ok)

    def _gemv(x: torch.Tensor, weight: torch.Tensor, n_out: int, norm: torch.Tensor | None, eps: float,
              residual: torch.Tensor | None, swiglu: bool) -> torch.Tensor:
        """x [b, 1, K] -> [b, 1, n_out] through `_gemv_kernel`; launched with PDL on Hopper and newer GPUs."""
        batch, _, k = x.shape
        out = torch.empty(batch, 1, n_out, device=x.device, dtype=x.dtype)
        pdl = launches_with_pdl(x.device)
        _gemv_kernel[(triton.cdiv(n_out, BLOCK_N), batch)](
            x, weight, out, x if residual is None else residual, x if norm is None else norm, eps, n_out,
            K=k, NORM=norm is not None, SWIGLU=swiglu, RESIDUAL=residual is not None, BLOCK=BLOCK_N,
            BLOCK_K=min(MAX_BLOCK_K, triton.next_power_of_2(k)), PDL=pdl, num_warps=4,
            **({"launch_pdl": True} if pdl else {}),
        )
        return out

    # A custom op, so that torch.compile calls the launch above as it is (Inductor launches the user Triton kernels
    # it traces itself, without PDL) and fuses everything around it as before. One op name per copy of this module:
    # the package and a checkpoint's remote code can be loaded side by side.
    _OP_NAME = "minimind_v::decode_gemv_" + re.sub(r"\W", "_", __name__)
    _gemv_op = torch.library.custom_op(_OP_NAME, _gemv, mutates_args=())

    @_gemv_op.register_fake
    def _(x, weight, n_out, norm, eps, residual, swiglu):
        return x.new_empty(x.shape[0], 1, n_out)


def _launch(x, weight, n_out, norm=None, residual=None, swiglu=False):
    """x [b, 1, K] -> [b, 1, n_out]: the checks, then the kernel (as the custom op)."""
    if x.ndim != 3 or x.shape[1] != 1 or not x.is_contiguous() or not weight.is_contiguous() \
            or weight.shape[1] != x.shape[-1]:
        raise ValueError(f"decode projections take one contiguous token per row, [b, 1, {weight.shape[1]}]; "
                         f"got {list(x.shape)}")
    return _gemv_op(x, weight, n_out, None if norm is None else norm.weight,
                    0.0 if norm is None else norm.variance_epsilon, residual, swiglu)


class DecodeProjections:
    """The fast decoder's projections for one-token steps, called by `MiniMindDecoderLayer.forward` (argument
    `decode_projections`) in place of its norms, projections, SwiGLU and residual adds."""

    @staticmethod
    def norm_linear(x, norm, weight):
        """`F.linear(norm(x), weight)` for x [b, 1, K]."""
        return _launch(x, weight, weight.shape[0], norm=norm)

    @staticmethod
    def norm_swiglu(x, norm, gate_up):
        """`silu(gate) * up` of `F.linear(norm(x), gate_up).chunk(2, -1)`."""
        return _launch(x, gate_up, gate_up.shape[0] // 2, norm=norm, swiglu=True)

    @staticmethod
    def linear_add(x, weight, residual):
        """`residual + F.linear(x, weight)`."""
        return _launch(x, weight, weight.shape[0], residual=residual)


__all__ = ["MAX_BATCH", "DecodeProjections", "decode_projections_available"]
