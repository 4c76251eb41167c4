"""The chunked linear cross-entropy (modeling_minimind_v/loss.py): equal to transformers' ForCausalLMLoss on full
logits, in fp32 and under bf16 autocast with fp32 master weights (the mixed-precision training path)."""

import pytest
import torch
from conftest import tiny_model


def _batch(vocab: int):
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(10, vocab, (3, 17), generator=generator)
    labels = ids.clone()
    labels[:, :6] = -100  # a prompt without labels
    labels[1, 12:] = -100
    return ids, labels


def _loss_and_grads(model, ids, labels, autocast: bool, training: bool):
    model.zero_grad(set_to_none=True)
    model.train(training)  # train(): chunked loss from hidden states; eval(): full logits + loss_function
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = model(input_ids=ids, labels=labels).loss
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_chunked_loss_matches_full_logits_loss(autocast):
    model = tiny_model(seed=1)
    ids, labels = _batch(model.config.text_config.vocab_size)
    ref_loss, ref_grads = _loss_and_grads(model, ids, labels, autocast, training=False)
    loss, grads = _loss_and_grads(model, ids, labels, autocast, training=True)
    # fp32 weights and gradients whatever the compute dtype (fp32 master weights under autocast).
    assert all(g.dtype == torch.float32 for g in grads.values())
    tol = 2e-2 if autocast else 1e-5
    torch.testing.assert_close(loss, ref_loss, atol=tol, rtol=tol)
    # The tied head: its gradient collects the chunked loss and the embedding lookup.
    for name in ("model.language_model.embed_tokens.weight", "model.language_model.layers.0.mlp.up_proj.weight"):
        scale = ref_grads[name].abs().max()
        assert (grads[name] - ref_grads[name]).abs().max() <= tol * scale, name


def test_chunked_loss_scales_gradients_by_the_upstream_gradient():
    model = tiny_model(seed=2).train()
    ids, labels = _batch(model.config.text_config.vocab_size)
    _, grads = _loss_and_grads(model, ids, labels, autocast=False, training=True)
    model.zero_grad(set_to_none=True)
    (model(input_ids=ids, labels=labels).loss * 1024.0).backward()  # what a grad scaler does
    torch.testing.assert_close(model.lm_head.weight.grad, grads["model.language_model.embed_tokens.weight"] * 1024.0)


def test_host_counted_targets_give_the_same_loss_and_gradients_and_a_wrong_count_is_refused():
    # num_targets (the collator's count) replaces the loss's nonzero(), a device-to-host sync, with a stable sort.
    model = tiny_model(seed=3)
    ids, labels = _batch(model.config.text_config.vocab_size)
    ref_loss, ref_grads = _loss_and_grads(model, ids, labels, autocast=False, training=True)
    count = int((labels[:, 1:] != -100).sum())
    model.zero_grad(set_to_none=True)
    loss = model(input_ids=ids, labels=labels, num_targets=torch.tensor(count)).loss
    loss.backward()
    assert torch.equal(loss.detach(), ref_loss)
    for name, p in model.named_parameters():
        if p.grad is not None:
            assert torch.equal(p.grad, ref_grads[name]), name
    with pytest.raises(ValueError, match="num_targets=.*target positions"):
        model(input_ids=ids, labels=labels, num_targets=count - 1)
