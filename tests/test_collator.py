"""Tests for processing/collator.py: packed (padding-free) and padded batches give the same loss and gradients."""

import pytest
import torch
from conftest import tiny_model

from processing.collator import VLMCollator
from processing.dataset import VLMDataset


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_and_padded_batches_give_same_loss_and_gradients(tiny_processor, shapes_data, attn):
    dataset = VLMDataset(shapes_data / "sft.jsonl", tiny_processor)
    items = [dataset[i] for i in range(6)]
    # Larger init than the default 0.02 so attention actually shapes the logits (the control below needs that).
    model = tiny_model(seed=1, initializer_range=0.3).float().train()
    model.set_attn_implementation(attn)
    model.requires_grad_(True)  # vision tower too: its gradients must match as well

    def loss_and_grads(batch):
        batch = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
        model.zero_grad(set_to_none=True)
        loss = model(**batch).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    padded = VLMCollator(0)(items)
    packed = VLMCollator(0, packing=True)(items)
    assert packed["input_ids"].shape == (1, padded["attention_mask"].sum())
    assert "attention_mask" not in packed and packed["num_targets"] == padded["num_targets"]
    loss_pad, grads_pad = loss_and_grads(padded)
    loss_pack, grads_pack = loss_and_grads(packed)
    torch.testing.assert_close(loss_pack, loss_pad, rtol=1e-6, atol=1e-6)
    assert grads_pad.keys() == grads_pack.keys()
    assert {"model.vision_tower.embeddings.patch_embedding.weight", "model.multi_modal_projector.linear_1.weight",
            "model.language_model.embed_tokens.weight"} <= grads_pad.keys()
    for name in grads_pad:
        torch.testing.assert_close(grads_pack[name], grads_pad[name], rtol=1e-5, atol=1e-6, msg=name)

    # Control: without the position resets nothing marks the boundaries, samples attend across them, loss changes.
    leaky = dict(packed, position_ids=torch.arange(packed["input_ids"].shape[1]).unsqueeze(0))
    leaky_loss, _ = loss_and_grads(leaky)
    assert abs(leaky_loss.item() - loss_pad.item()) > 1e-4


@pytest.mark.parametrize("packing", [False, True])
def test_padding_to_a_multiple_changes_shapes_but_not_the_loss(tiny_processor, shapes_data, packing):
    """pad_to_multiple_of (used with a compiled step) adds only positions that are neither attended to by real tokens
    nor targets: same loss, same token and target counts."""
    dataset = VLMDataset(shapes_data / "sft.jsonl", tiny_processor)
    items = [dataset[i] for i in range(5)]
    model = tiny_model(seed=2, initializer_range=0.3).float().eval()
    plain = VLMCollator(0, packing=packing)(items)
    rounded = VLMCollator(0, packing=packing, pad_to_multiple_of=64)(items)
    assert rounded["input_ids"].shape[1] % 64 == 0 and rounded["input_ids"].shape[1] > plain["input_ids"].shape[1]
    assert (rounded["num_tokens"], rounded["num_targets"]) == (plain["num_tokens"], plain["num_targets"])

    def loss(batch):
        with torch.no_grad():
            return model(**{k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}).loss

    torch.testing.assert_close(loss(rounded), loss(plain), rtol=1e-6, atol=1e-6)


def test_filling_a_short_batch_keeps_loss_gradients_and_counts(tiny_processor, shapes_data):
    """pad_rows_to (used with a compiled step) fills an epoch's short last batch with label-free copies: the batch
    keeps the compiled batch size while loss, gradients and the token / target counts stay those of the real rows."""
    dataset = VLMDataset(shapes_data / "sft.jsonl", tiny_processor)
    items = [dataset[i] for i in range(3)]
    model = tiny_model(seed=3, initializer_range=0.3).float().train()

    def loss_and_grads(batch):
        model.zero_grad(set_to_none=True)
        loss = model(**{k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = VLMCollator(0)(items)
    filled = VLMCollator(0, pad_rows_to=8)(items)
    assert filled["input_ids"].shape == (8, plain["input_ids"].shape[1])
    assert filled["pixel_values"].shape[0] == 8 and (filled["labels"][3:] == -100).all()
    assert (filled["num_tokens"], filled["num_targets"]) == (plain["num_tokens"], plain["num_targets"])
    assert VLMCollator(0, pad_rows_to=3)(items)["input_ids"].shape[0] == 3  # a full batch is left alone
    assert VLMCollator(0, packing=True, pad_rows_to=8)(items)["input_ids"].shape[0] == 1  # packed: one row anyway
    loss_plain, grads_plain = loss_and_grads(plain)
    loss_filled, grads_filled = loss_and_grads(filled)
    torch.testing.assert_close(loss_filled, loss_plain, rtol=1e-6, atol=1e-6)
    assert grads_filled.keys() == grads_plain.keys()
    for name in grads_plain:
        torch.testing.assert_close(grads_filled[name], grads_plain[name], rtol=1e-5, atol=1e-6, msg=name)
    with pytest.raises(ValueError, match="pad_rows_to must be >= 1"):
        VLMCollator(0, pad_rows_to=0)
