"""Projectors from vision-tower width to decoder width: `linear`, `mlp` (LLaVA's Linear-GELU-Linear) and
`cross_attention` (a resampler: a fixed set of learned queries cross-attends to the projected patch features).

All take patch features [n_images, n_patches, vision_hidden] and return [n_images, image_seq_length, hidden].
`PROJECTORS` is the one registry of projector types: the config validates against it and everything else lists its
keys. Remote code: imports only torch.
"""

import torch
from torch import nn


class MiniMindVLinearProjector(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.linear_1 = nn.Linear(config.vision_config.hidden_size, config.text_config.hidden_size)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        return self.linear_1(image_features)


class MiniMindVMLPProjector(nn.Module):
    def __init__(self, config):
        super().__init__()
        hidden = config.text_config.hidden_size
        self.linear_1 = nn.Linear(config.vision_config.hidden_size, hidden)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(hidden, hidden)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(image_features)))


class MiniMindVCrossAttentionBlock(nn.Module):
    """Pre-norm block: queries attend to the (normed) patch features, then a GELU MLP; both residual."""

    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        self.norm_queries = nn.LayerNorm(hidden_size)
        self.norm_context = nn.LayerNorm(hidden_size)
        self.cross_attn = nn.MultiheadAttention(hidden_size, num_heads, batch_first=True)
        self.norm_mlp = nn.LayerNorm(hidden_size)
        self.mlp = nn.Sequential(
            nn.Linear(hidden_size, 4 * hidden_size), nn.GELU(), nn.Linear(4 * hidden_size, hidden_size)
        )

    def forward(self, queries: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        context = self.norm_context(context)
        attended, _ = self.cross_attn(self.norm_queries(queries), context, context, need_weights=False)
        queries = queries + attended
        return queries + self.mlp(self.norm_mlp(queries))


class MiniMindVResampler(nn.Module):
    """Cross-attention projector: `projector_num_queries` learned queries read all patch tokens of one image.

    Every query sees every patch (no collapse to a single pooled vector), so the output keeps spatial detail while
    fixing the number of image tokens independently of the vision tower's resolution.
    """

    def __init__(self, config):
        super().__init__()
        hidden = config.text_config.hidden_size
        self.input_proj = nn.Linear(config.vision_config.hidden_size, hidden)
        self.queries = nn.Parameter(torch.zeros(config.projector_num_queries, hidden))
        self.blocks = nn.ModuleList(
            [MiniMindVCrossAttentionBlock(hidden, config.projector_num_heads)
             for _ in range(config.projector_num_layers)]
        )
        self.norm_out = nn.LayerNorm(hidden)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        context = self.input_proj(image_features)  # [n, patches, hidden]
        queries = self.queries.unsqueeze(0).expand(context.shape[0], -1, -1).to(context.dtype)  # [n, q, hidden]
        for block in self.blocks:
            queries = block(queries, context)
        return self.norm_out(queries)


PROJECTORS = {
    "linear": MiniMindVLinearProjector,
    "mlp": MiniMindVMLPProjector,
    "cross_attention": MiniMindVResampler,
}


def build_projector(config) -> nn.Module:
    """The projector of a MiniMindVConfig (its `projector_type`, validated against this registry)."""
    return PROJECTORS[config.projector_type](config)
