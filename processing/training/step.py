"""One optimizer step of the MiniMind-V trainer: forward and backward over a window of micro-batches, gradient
clipping, AdamW and the schedule. The trainer (`processing/training/trainer.py`) and the benchmark
(`processing/benchmark.py`) both run this class, so the benchmark times exactly what `scripts/train.py` runs.

The step never waits for the GPU: the loss and the gradient norm stay device tensors until the caller reads them
(the trainer reads a step's numbers after the next step has been queued), and the loss finds its labelled positions
from the collator's host-side count instead of a `nonzero` that would wait for the forward pass.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)


def micro_batch_loss(out, n_micro_batches: int) -> torch.Tensor:
    """The loss to backpropagate for one micro-batch: its token loss plus the MoE balance loss once per optimizer step
    (not once per micro-batch). The model follows Mixtral's contract: with labels and router logits, `out.aux_loss`
    is router_aux_loss_coef x the balance loss and `out.loss` already includes it."""
    aux = getattr(out, "aux_loss", None)
    if aux is None:
        return out.loss
    return out.loss - aux + aux / n_micro_batches


def token_loss(out) -> torch.Tensor:
    """The token loss alone (what evaluation reports), without any balance loss."""
    aux = getattr(out, "aux_loss", None)
    return out.loss - aux if aux is not None else out.loss


@dataclass
class StepResult:
    """What one step measured; `loss` and `grad_norm` are device tensors (read them with `numbers()`)."""

    loss: torch.Tensor
    lr: float
    num_tokens: int
    grad_norm: torch.Tensor | None

    def numbers(self) -> tuple[float, float | None]:
        """(loss, grad norm) as floats: waits for the step to finish on the device."""
        return float(self.loss), (float(self.grad_norm) if self.grad_norm is not None else None)


def resolve_compile(requested: bool | None) -> bool:
    """`--compile` default: on with a CUDA GPU (where the compiled step pays), off on CPU."""
    return torch.cuda.is_available() if requested is None else requested


def compile_for_training(model: torch.nn.Module, backend: str = "inductor") -> torch.nn.Module:
    """Compile the model's forward in place (`nn.Module.compile`, so state-dict keys and saving are unchanged).

    The chunked loss and a few data-dependent checks run eagerly (graph breaks by design); sequence lengths vary
    between batches, so dynamic shapes are allowed after the first recompile. What else would recompile is kept
    constant: the loss denominator is a tensor (TrainStep) and short batches are filled up (VLMCollator.pad_rows_to).
    `backend`: torch.compile's (tests use "eager": recompiles come from Dynamo's guards, whatever the backend).
    """
    model.compile(dynamic=None, backend=backend)
    logger.info("training step: torch.compile on the model's forward")
    return model


def eager_forward():
    """Context in which a model compiled by `compile_for_training` runs eagerly (an uncompiled one is unaffected):
    evaluation passes, whose eval mode and batch shapes would each compile graphs of their own (minutes at real
    sizes) for a few hundred rows."""
    set_stance = getattr(torch.compiler, "set_stance", None)  # torch >= 2.6; older ones compile the eval graph
    return set_stance("force_eager") if set_stance is not None else nullcontext()


class TrainStep:
    """One optimizer step over a window of micro-batches (remembers the last good batch for DDP stand-ins)."""

    def __init__(self, accelerator, model, optimizer, scheduler, trainable: list, max_grad_norm: float):
        self.accelerator, self.model, self.optimizer, self.scheduler = accelerator, model, optimizer, scheduler
        self.trainable, self.max_grad_norm = trainable, max_grad_norm
        self.last_good_batch = None

    def __call__(self, window: list[dict], num_targets: int, num_tokens: int) -> StepResult:
        """`num_targets` / `num_tokens`: prediction targets and real tokens of the window over all processes. A
        micro-batch may carry its own target count under "num_targets" (an int, as the collator gives it)."""
        accelerator = self.accelerator
        world = accelerator.num_processes
        # Every micro-batch's loss is a sum over its targets divided by the window's target count, so a step's
        # gradient is the token mean over the whole window, whatever the split into micro-batches (x world: DDP
        # averages over processes).
        denominator = max(num_targets, 1) / world
        # A CPU tensor, not a float: torch.compile guards on a float's value and recompiled the whole forward on the
        # second step; a tensor is guarded on its dtype only, and the (eager) loss reads it without a GPU sync.
        denominator = torch.tensor(denominator, dtype=torch.float32)
        loss_sum = torch.zeros((), device=accelerator.device)
        for index, batch in enumerate(window):
            weight = 1.0
            batch = dict(batch)
            # The collator's count of this micro-batch's targets, as a CPU tensor (a tensor for the same reason as
            # the denominator): the loss then finds the labelled positions without waiting for the GPU.
            count = batch.pop("num_targets", None)
            if count is not None:
                batch["num_targets"] = torch.tensor(count, dtype=torch.int64)
            if "input_ids" not in batch:  # every row of this micro-batch failed to load
                if world == 1 or self.last_good_batch is None:
                    continue
                batch, weight = self.last_good_batch, 0.0  # other processes wait for this one's gradients
            else:
                self.last_good_batch = batch
            sync = index == len(window) - 1 or world == 1
            with nullcontext() if sync else accelerator.no_sync(self.model):
                out = self.model(**batch, num_items_in_batch=denominator)
                loss = micro_batch_loss(out, len(window)) * weight
                accelerator.backward(loss)
            loss_sum += loss.detach()
        lr = self.optimizer.param_groups[0]["lr"]  # the lr this step uses (the scheduler moves it afterwards)
        grad_norm = None
        if self.max_grad_norm > 0:
            grad_norm = accelerator.clip_grad_norm_(self.trainable, self.max_grad_norm)
            grad_norm = grad_norm.detach() if torch.is_tensor(grad_norm) else torch.tensor(float(grad_norm))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if world > 1:
            loss_sum = accelerator.reduce(loss_sum, "mean")
        return StepResult(loss_sum, lr, num_tokens, grad_norm)


__all__ = ["StepResult", "TrainStep", "compile_for_training", "eager_forward", "micro_batch_loss", "resolve_compile",
           "token_loss"]
