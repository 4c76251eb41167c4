"""Tests for processing/training/step.py: the compiled training step compiles once, not once per new loss
denominator, per epoch's short last batch or per evaluation pass (each recompile costs minutes at real sizes)."""

import torch
from accelerate import Accelerator
from conftest import tiny_model

from processing.collator import VLMCollator
from processing.dataset import VLMDataset
from processing.training.step import TrainStep, compile_for_training
from processing.training.trainer import evaluate


def _step_inputs(collator, items):
    batch = collator(items)
    batch.pop("skipped")
    return [batch], batch.pop("num_targets"), batch.pop("num_tokens")


def test_compiled_step_does_not_recompile_after_its_first_step(tiny_processor, shapes_data):
    dataset = VLMDataset(shapes_data / "sft.jsonl", tiny_processor)
    model = tiny_model(seed=0).float().train()
    compile_for_training(model, backend="eager")
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    step = TrainStep(Accelerator(cpu=True), model, optimizer, scheduler, trainable, max_grad_norm=1.0)
    # 256: every row of the task rounds to one length, so only the guards under test can trigger a recompile.
    collator = VLMCollator(tiny_processor.tokenizer.pad_token_id, pad_to_multiple_of=256, pad_rows_to=4)
    first = _step_inputs(collator, [dataset[i] for i in range(4)])
    losses = [step(*first).numbers()[0]]  # compiles
    later = [_step_inputs(collator, [dataset[i] for i in range(4, 8)]),  # another target count
             _step_inputs(collator, [dataset[8], dataset[9]])]  # an epoch's short last batch
    assert len({n for _, n, _ in [first, *later]}) == 3  # three different loss denominators
    with torch.compiler.set_stance("fail_on_recompile"):
        losses += [step(*inputs).numbers()[0] for inputs in later]
        eval_loss = evaluate(step.accelerator, model, torch.utils.data.Subset(dataset, range(3)), collator, 4)
    assert all(torch.isfinite(torch.tensor([*losses, eval_loss])))
