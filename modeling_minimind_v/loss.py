"""Memory-lean causal-LM loss: cross-entropy computed from hidden states chunk by chunk, never materialising the
full [tokens, vocab] logits, and only at positions that carry a label.

Gradients for the hidden states and the LM-head weight are produced during the forward pass (one chunk at a time)
and replayed in backward, so peak memory is one chunk of logits instead of all of them. Remote code: torch only.
"""

import torch

# Rows per chunk are chosen so one fp32 logits chunk stays near this many elements (2**27 = 512 MiB).
CHUNK_ELEMENTS = 2**27


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, denominator, chunk_rows):
        # hidden [N, h] (only labelled positions), weight [V, h], targets [N]
        need_hidden_grad, need_weight_grad = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        ctx.weight_dtype = weight.dtype
        grad_hidden = torch.empty_like(hidden) if need_hidden_grad else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if need_weight_grad else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk_rows):
            h = hidden[start : start + chunk_rows]
            t = targets[start : start + chunk_rows]
            logits = (h @ weight.T).float()  # [c, V]
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse - logits.gather(1, t[:, None]).squeeze(1)).sum()
            if need_hidden_grad or need_weight_grad:
                # d(loss)/d(logits) = softmax - onehot, scaled by 1/denominator
                grad_logits = logits.sub_(lse[:, None]).exp_()
                grad_logits[torch.arange(t.shape[0], device=t.device), t] -= 1.0
                grad_logits = (grad_logits / denominator).to(hidden.dtype)
                if need_hidden_grad:
                    grad_hidden[start : start + chunk_rows] = grad_logits @ weight
                if need_weight_grad:
                    grad_weight += (grad_logits.T @ h).float()
        ctx.save_for_backward(grad_hidden, grad_weight)
        return total / denominator

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight = ctx.saved_tensors
        if grad_hidden is not None:
            grad_hidden = grad_hidden * grad_output.to(grad_hidden.dtype)
        if grad_weight is not None:
            grad_weight = (grad_weight * grad_output).to(ctx.weight_dtype)
        return grad_hidden, grad_weight, None, None, None


@torch.compiler.disable  # data-dependent sizes (labelled positions) and a Python chunk loop: keep it eager
def chunked_causal_lm_loss(hidden_states: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                           num_items_in_batch: int | torch.Tensor | None = None,
                           ignore_index: int = -100) -> torch.Tensor:
    """Equals `ForCausalLMLoss(hidden_states @ weight.T, labels)`: labels shift by one, `ignore_index` skipped, mean
    over labelled tokens (or sum / `num_items_in_batch` under gradient accumulation)."""
    # Position t predicts labels[t + 1]; the last position predicts nothing.
    targets = torch.cat([labels[:, 1:], labels.new_full((labels.shape[0], 1), ignore_index)], dim=1)
    targets = targets.reshape(-1)
    keep = (targets != ignore_index).nonzero().squeeze(1)
    hidden = hidden_states.reshape(-1, hidden_states.shape[-1]).index_select(0, keep)  # [N, h]
    targets = targets.index_select(0, keep)
    if num_items_in_batch is None:
        denominator = max(int(keep.numel()), 1)
    else:
        denominator = float(num_items_in_batch.item() if torch.is_tensor(num_items_in_batch) else num_items_in_batch)
    chunk_rows = max(1, CHUNK_ELEMENTS // weight.shape[0])
    return _LinearCrossEntropy.apply(hidden, weight, targets, denominator, chunk_rows)
