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
        with_grad = need_hidden_grad or need_weight_grad
        # Under autocast the head's matmuls run in the autocast dtype, as nn.Linear's would, while the gradients are
        # kept in the dtypes of the tensors they belong to (fp32 master weights stay fp32). In-place ops are not
        # autocast, so every cast is explicit and autocast is off inside.
        device_type = hidden.device.type
        autocast = torch.is_autocast_enabled(device_type)
        compute_dtype = torch.get_autocast_dtype(device_type) if autocast else weight.dtype
        grad_hidden = torch.empty_like(hidden) if need_hidden_grad else None
        # In the weights' dtype, like the .grad it becomes: an fp32 copy of a bf16 head would cost V x h x 4 bytes.
        grad_weight = torch.zeros_like(weight) if need_weight_grad else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        # d(mean loss)/d(logits) = (softmax - onehot) / denominator, scaled in fp32 before the cast. In fp16 a scaled
        # gradient would underflow (p / N < 6e-8 for rare tokens), so there it stays unscaled, in [-1, 1], and the
        # 1 / denominator is applied in backward instead.
        fp16 = compute_dtype == torch.float16
        pre_scale, ctx.post_scale = (1.0, 1.0 / denominator) if fp16 else (1.0 / denominator, 1.0)
        with torch.autocast(device_type, enabled=False):
            w = weight.to(compute_dtype)  # [V, h]; a no-op without autocast
            for start in range(0, hidden.shape[0], chunk_rows):
                h = hidden[start : start + chunk_rows].to(compute_dtype)
                t = targets[start : start + chunk_rows]
                logits = h @ w.T  # [c, V]
                loss, grad_logits = _chunk_loss_and_grad(logits, t, pre_scale, with_grad)
                total += loss
                if need_hidden_grad:
                    grad_hidden[start : start + chunk_rows] = grad_logits @ w
                if need_weight_grad:
                    if grad_weight.dtype == compute_dtype:
                        grad_weight.addmm_(grad_logits.T, h)
                    else:
                        grad_weight += (grad_logits.T @ h).to(grad_weight.dtype)
        ctx.save_for_backward(grad_hidden, grad_weight)
        return total / denominator

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight = ctx.saved_tensors
        scale = grad_output * ctx.post_scale
        if grad_hidden is not None:
            grad_hidden = grad_hidden * scale.to(grad_hidden.dtype)
        if grad_weight is not None:
            grad_weight = grad_weight * scale.to(grad_weight.dtype)
        return grad_hidden, grad_weight, None, None, None


@torch.compiler.disable  # data-dependent sizes (labelled positions) and a Python chunk loop: keep it eager
def chunked_causal_lm_loss(hidden_states: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                           num_items_in_batch: int | torch.Tensor | None = None,
                           ignore_index: int = -100, num_targets: int | torch.Tensor | None = None) -> torch.Tensor:
    """Equals `ForCausalLMLoss(hidden_states @ weight.T, labels)`: labels shift by one, `ignore_index` skipped, mean
    over labelled tokens (or sum / `num_items_in_batch` under gradient accumulation).

    `num_targets`: how many positions of this batch are targets after the shift, when the caller counted them on the
    host (the trainer's collator does). The labelled positions are then found without a device-to-host sync, so the
    host can queue the next step's work while the GPU still runs this one; without it they are found by `nonzero`,
    which waits for the forward pass to finish.
    """
    # Position t predicts labels[t + 1]; the last position predicts nothing.
    targets = torch.cat([labels[:, 1:], labels.new_full((labels.shape[0], 1), ignore_index)], dim=1)
    targets = targets.reshape(-1)
    is_target = targets != ignore_index
    if num_targets is None:
        keep = is_target.nonzero().squeeze(1)
    else:
        count = int(num_targets.item() if torch.is_tensor(num_targets) else num_targets)  # a host value: no sync
        if targets.device.type == "cpu" and count != int(is_target.sum()):  # free to check where there is no sync
            raise ValueError(f"num_targets={count} but the labels hold {int(is_target.sum())} target positions")
        # A stable sort puts the target positions first, in order: the first `count` are exactly nonzero()'s.
        keep = torch.sort((~is_target).to(torch.int8), stable=True).indices[:count]
    hidden = hidden_states.reshape(-1, hidden_states.shape[-1]).index_select(0, keep)  # [N, h]
    targets = targets.index_select(0, keep)
    if num_items_in_batch is None:
        denominator = max(int(keep.numel()), 1)
    else:
        denominator = float(num_items_in_batch.item() if torch.is_tensor(num_items_in_batch) else num_items_in_batch)
    chunk_rows = max(1, CHUNK_ELEMENTS // weight.shape[0])
    return _LinearCrossEntropy.apply(hidden, weight, targets, denominator, chunk_rows)
