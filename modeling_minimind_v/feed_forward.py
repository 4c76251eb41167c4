"""Feed-forward blocks of the MiniMind decoder: the SwiGLU MLP, and the mixture of experts (top-k routed SwiGLU experts
plus always-on shared experts) with Mixtral's load-balancing loss.

The MoE block follows transformers' contract: it returns its hidden states and its router logits (the model collects
them when `output_router_logits`), the experts module is called as `experts(tokens, top_k_index, top_k_weights)`
(so serving engines can swap in fused kernels), and the balance loss is computed once, in the head, from all
layers' router logits. For decoding, gate/up can run as one matmul from a concatenated weight the MLP owns
(`fuse_projections`), and the experts as two batched matmuls over stacked weights with static shapes (no
data-dependent split, so the step can be captured as a CUDA graph). Remote code: imports only torch and transformers.
"""

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN


class MiniMindMLP(nn.Module):
    """SwiGLU feed-forward: down(act(gate(x)) * up(x))."""

    def __init__(self, config, intermediate_size: int | None = None):
        super().__init__()
        intermediate_size = intermediate_size or config.intermediate_size
        self.gate_proj = nn.Linear(config.hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, config.hidden_size, bias=False)
        self.act_fn = ACT2FN[config.hidden_act]
        self.fused_gate_up: torch.Tensor | None = None  # set by fuse_projections; not a parameter, never saved

    def fuse_projections(self):
        """(Re)build the concatenated gate/up weight from the current weights."""
        parts = (self.gate_proj.weight.detach(), self.up_proj.weight.detach())
        if self.fused_gate_up is None or self.fused_gate_up.device != parts[0].device \
                or self.fused_gate_up.dtype != parts[0].dtype:
            self.fused_gate_up = torch.cat(parts)
        else:
            torch.cat(parts, out=self.fused_gate_up)

    def forward(self, x, fused_projections: bool = False):
        if fused_projections and self.fused_gate_up is not None:
            gate, up = F.linear(x, self.fused_gate_up).chunk(2, dim=-1)
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        return self.down_proj(self.act_fn(gate) * up)


class MiniMindExperts(nn.ModuleList):
    """The routed experts, each a SwiGLU MLP (checkpoint keys `experts.N.{gate,up,down}_proj.weight`).

    Dispatch sorts the (token, expert) assignments by expert and runs each expert once on its contiguous slice, so
    Python loops over experts, never over tokens.
    """

    def __init__(self, config):
        super().__init__([MiniMindMLP(config, config.moe_intermediate_size) for _ in range(config.num_experts)])
        self.stacked: tuple[torch.Tensor, torch.Tensor] | None = None  # set by fuse_projections; never saved

    def fuse_projections(self):
        """(Re)build the stacked weights: gate/up [E, 2I, h] and down [E, h, I], in place when they exist."""
        with torch.no_grad():
            gate_up = torch.stack([torch.cat((e.gate_proj.weight, e.up_proj.weight)) for e in self])
            down = torch.stack([e.down_proj.weight for e in self])
        if self.stacked is None or self.stacked[0].device != gate_up.device or self.stacked[0].dtype != gate_up.dtype:
            self.stacked = (gate_up, down)
        else:
            self.stacked[0].copy_(gate_up)
            self.stacked[1].copy_(down)

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor,
                fused_projections: bool = False):
        """tokens [T, h], expert ids [T, k], weights [T, k] -> weighted sum of the chosen experts' outputs [T, h]."""
        if fused_projections and self.stacked is not None:
            return self._static_forward(hidden_states, top_k_index, top_k_weights)
        top_k = top_k_index.shape[-1]
        flat_expert = top_k_index.reshape(-1)  # [T*k]; assignment a belongs to token a // k
        order = torch.argsort(flat_expert, stable=True)
        token_of = order // top_k
        counts = torch.bincount(flat_expert, minlength=len(self)).tolist()
        routed_in = hidden_states[token_of].split(counts)
        routed_out = torch.cat([expert(x) for expert, x in zip(self, routed_in)])  # [T*k, h]
        routed_out = routed_out * top_k_weights.reshape(-1)[order].unsqueeze(-1).to(routed_out.dtype)
        return torch.zeros_like(hidden_states).index_add_(0, token_of, routed_out)

    def _static_forward(self, hidden_states, top_k_index, top_k_weights):
        """Every expert on every token, weighted by the routing (0 for experts not chosen): the same sum with static
        shapes. Costs E/k times the routed FLOPs, which is nothing for the few tokens of a decode step."""
        gate_up, down = self.stacked
        weights = torch.zeros(hidden_states.shape[0], len(self), dtype=top_k_weights.dtype,
                              device=hidden_states.device).scatter(1, top_k_index, top_k_weights)  # [T, E]
        gate, up = torch.einsum("th,eoh->teo", hidden_states, gate_up).chunk(2, dim=-1)  # [T, E, I] each
        out = torch.einsum("tei,ehi->teh", self[0].act_fn(gate) * up, down)  # [T, E, h]
        return (out * weights.unsqueeze(-1).to(out.dtype)).sum(1)


class MiniMindSparseMoeBlock(nn.Module):
    """Router (`gate`) -> top-k routed experts + shared experts; returns (hidden states, router logits [T, E])."""

    def __init__(self, config):
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.norm_topk_prob = config.norm_topk_prob
        self.gate = nn.Linear(config.hidden_size, config.num_experts, bias=False)
        self.experts = MiniMindExperts(config)
        self.shared_experts = nn.ModuleList(
            [MiniMindMLP(config, config.moe_intermediate_size) for _ in range(config.n_shared_experts)]
        )

    def route(self, router_logits: torch.Tensor):
        """Router logits [T, E] -> top-k weights [T, k] (fp32 softmax, optionally renormalised) and expert ids."""
        probs = F.softmax(router_logits, dim=-1, dtype=torch.float32)
        top_k_weights, top_k_index = torch.topk(probs, self.top_k, dim=-1)
        if self.norm_topk_prob and self.top_k > 1:
            top_k_weights = top_k_weights / (top_k_weights.sum(dim=-1, keepdim=True) + 1e-20)
        return top_k_weights, top_k_index

    def fuse_projections(self):
        self.experts.fuse_projections()
        for shared in self.shared_experts:
            shared.fuse_projections()

    def forward(self, hidden_states: torch.Tensor, fused_projections: bool = False,
                **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        batch_size, seq_len, hidden = hidden_states.shape
        flat = hidden_states.reshape(-1, hidden)  # [T, h]
        router_logits = self.gate(flat)  # [T, E]
        top_k_weights, top_k_index = self.route(router_logits)
        if fused_projections:
            output = self.experts(flat, top_k_index, top_k_weights, fused_projections=True)
        else:  # positional only: the (tokens, ids, weights) call serving engines replace with fused kernels
            output = self.experts(flat, top_k_index, top_k_weights)
        for shared in self.shared_experts:
            output = output + shared(flat, fused_projections=fused_projections)
        return output.view(batch_size, seq_len, hidden), router_logits


def load_balancing_loss(router_logits, num_experts: int, top_k: int, attention_mask: torch.Tensor | None = None):
    """Mixtral's auxiliary load-balancing loss over all layers' router logits (Switch Transformer, eqs. 4-6).

    `router_logits`: a tuple of [batch * seq, num_experts] tensors, one per MoE layer. With a 2-D `attention_mask`
    only real tokens count. E * sum_e(fraction of assignments to e * mean router probability of e); 1.0 when
    perfectly balanced (top-1), larger when the router collapses. The same value as transformers'
    `load_balancing_loss_func`, so TRL's MoE handling and this model's own loss agree.
    """
    if router_logits is None or not isinstance(router_logits, tuple) or len(router_logits) == 0:
        return None
    device = router_logits[0].device
    logits = torch.cat([layer.to(device) for layer in router_logits], dim=0)  # [layers * T, E]
    routing_weights = F.softmax(logits, dim=-1, dtype=torch.float32)
    _, selected = torch.topk(routing_weights, top_k, dim=-1)
    expert_mask = F.one_hot(selected, num_experts).to(routing_weights.dtype)  # [layers * T, k, E]
    if attention_mask is None or attention_mask.ndim != 2:
        tokens_per_expert = expert_mask.mean(dim=0)  # [k, E]
        router_prob_per_expert = routing_weights.mean(dim=0)  # [E]
    else:
        batch, seq = attention_mask.shape
        n_layers = logits.shape[0] // (batch * seq)
        token_mask = attention_mask.to(device, routing_weights.dtype).reshape(1, batch * seq).expand(n_layers, -1)
        token_mask = token_mask.reshape(-1, 1)  # [layers * T, 1]
        tokens_per_expert = (expert_mask * token_mask[:, :, None]).sum(0) / token_mask.sum(0)[:, None]
        router_prob_per_expert = (routing_weights * token_mask).sum(0) / token_mask.sum(0)
    return (tokens_per_expert * router_prob_per_expert.unsqueeze(0)).sum() * num_experts


__all__ = ["MiniMindExperts", "MiniMindMLP", "MiniMindSparseMoeBlock", "load_balancing_loss"]
