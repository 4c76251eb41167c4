"""Shared inputs for the decoder import/export tests (test_conversion.py, test_conversion_llama.py)."""

import torch


def text_batch(seed: int = 0):
    """A left-padded batch of two prompts over the original (pre-import) vocabulary of the tiny random decoders."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(6, 280, (2, 13), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, :5] = 0
    ids[1, :5] = 0
    return ids, mask
