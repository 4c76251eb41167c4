"""Memory-lean causal-LM loss: cross-entropy computed from hidden states chunk by chunk, never materialising the
full [tokens, vocab] logits, and only at positions that carry a label.

Gradients for the hidden states and the LM-head weight are produced during the forward pass (one chunk at a time)
and replayed in backward, so peak memory is one chunk of logits instead of all of them. Remote code: torch only.
"""

import torch

# Rows per chunk are chosen so one logits chunk stays near this many elements (2**26: 128 MiB in bf16).
CHUNK_ELEMENTS = 2**26


def _loss_and_grad(logits: torch.Tensor, targets: torch.Tensor, scale: float, with_grad: bool):
    """Summed cross-entropy of a logits chunk [c, V] and, optionally, d(loss * scale)/d(logits) in logits' dtype."""
    logits32 = logits.float()
    lse = torch.logsumexp(logits32, dim=-1)
    loss = (lse - logits32.gather(1, targets[:, None]).squeeze(1)).sum()
    if not with_grad:
        return loss, None
    # softmax - onehot without materialising a one-hot tensor (fuses into one pass when compiled)
    hit = torch.arange(logits.shape[1], device=logits.device)[None, :] == targets[:, None]
    grad = ((logits32 - lse[:, None]).exp() - hit.float()) * scale
    return loss, grad.to(logits.dtype)


_compiled_loss_and_grad = None


def _chunk_loss_and_grad(logits, targets, scale, with_grad):
    # On GPUs the elementwise passes over a [chunk, vocab] tensor dominate: compile them into one or two kernels.
    global _compiled_loss_and_grad
    if logits.device.type != "cuda":
        return _loss_and_grad(logits, targets, scale, with_grad)
    if _compiled_loss_and_grad is None:
        _compiled_loss_and_grad = torch.compile(_loss_and_grad, dynamic=True)
    return _compiled_loss_and_grad(logits, targets, scale, with_grad)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, denominator, chunk_rows):
        # hidden [N, h] (only labelled positions), weight [V, h], targets [N]
        need_hidden_grad, need_weight_grad = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_hidden = torch.empty_like(hidden) if need_hidden_grad else None
        # In the weights' dtype, like the .grad it becomes: an fp32 copy would cost V x h x 4 bytes at peak memory.
        grad_weight = torch.zeros_like(weight) if need_weight_grad else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk_rows):
            h = hidden[start : start + chunk_rows]
            t = targets[start : start + chunk_rows]
            logits = h @ weight.T  # [c, V] in the weights' dtype
            with_grad = need_hidden_grad or need_weight_grad
            loss, grad_logits = _chunk_loss_and_grad(logits, t, 1.0 / denominator, with_grad)
            total += loss
            if with_grad:
                if need_hidden_grad:
                    grad_hidden[start : start + chunk_rows] = grad_logits @ weight
                if need_weight_grad:
                    grad_weight.addmm_(grad_logits.T, h)
        ctx.save_for_backward(grad_hidden, grad_weight)
        return total / denominator

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight = ctx.saved_tensors
        if grad_hidden is not None:
            grad_hidden = grad_hidden * grad_output.to(grad_hidden.dtype)
        if grad_weight is not None:
            grad_weight = grad_weight * grad_output.to(grad_weight.dtype)
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
