"""Triton where there is one, for the fast decoder's kernels (decode_attention.py, decode_projections.py): the guarded
import and what the two kernel files share. Triton ships with CUDA builds of torch; without it (CPU-only torch)
`triton` is None and the decoder runs the modules. Remote code: torch, transformers and the standard library, plus
this guarded import."""

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # no Triton: callers check `triton is None`
    triton = tl = None


def launches_with_pdl(device: torch.device) -> bool:
    """Whether kernels on `device` launch with programmatic dependent launch: Hopper (sm 9.0) and newer GPUs."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 9


if triton is not None:

    @triton.jit
    def round_to(x, dtype: tl.constexpr):
        """fp32 `x` rounded to `dtype` and back: the kernels round where the eager modules do."""
        return x.to(dtype).to(tl.float32)

else:
    round_to = None


__all__ = ["launches_with_pdl", "round_to", "tl", "triton"]
