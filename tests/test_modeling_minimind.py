"""The MiniMind decoder on its own (modeling_minimind_v/modeling_minimind.py, attention.py, feed_forward.py): parity
with transformers' Qwen3 (QK-norm) and Llama (no QK-norm), MoE routing and Mixtral's balance-loss contract, output
options, and the decoder saved alone and loaded as `AutoModelForCausalLM` in a clean process.

Run: `python -m pytest tests/test_modeling_minimind.py -q`.
"""

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_model

from modeling_minimind_v import MiniMindConfig, MiniMindForCausalLM
from modeling_minimind_v.feed_forward import load_balancing_loss

IMG = 5


def decoder(seed=0, **overrides) -> MiniMindForCausalLM:
    fields = dict(vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, rope_theta=10000.0, max_position_embeddings=256)
    fields.update(overrides)
    torch.manual_seed(seed)
    return MiniMindForCausalLM(MiniMindConfig(**fields)).eval()


def left_padded(rows):
    width = max(map(len, rows))
    ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


def text_rows(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(6, 1024, (n,), generator=g).tolist() for n in (14, 9)]


# ----------------------------------------------------------------------------------------------- reference parity


def _copy_reference_weights(reference, model):
    missing, unexpected = model.load_state_dict(reference.state_dict(), strict=False)
    assert not unexpected, unexpected
    assert set(missing) <= {"lm_head.weight"} or not missing, missing


@pytest.mark.parametrize("family", ["qwen3", "llama"])
def test_decoder_matches_transformers_reference(family):
    """QK-norm on: Qwen3ForCausalLM; off: LlamaForCausalLM. Same state dict keys, same logits, same greedy tokens."""
    if family == "qwen3":
        from transformers import Qwen3Config as RefConfig
        from transformers import Qwen3ForCausalLM as RefModel
    else:
        from transformers import LlamaConfig as RefConfig
        from transformers import LlamaForCausalLM as RefModel
    ref_config = RefConfig(vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=32, rope_theta=10000.0,
                           rms_norm_eps=1e-6, tie_word_embeddings=False, max_position_embeddings=256)
    torch.manual_seed(0)
    reference = RefModel(ref_config).eval()
    model = decoder(head_dim=32, rms_norm_eps=1e-6, tie_word_embeddings=False, qk_norm=family == "qwen3")
    assert set(model.state_dict()) == set(reference.state_dict())
    model.load_state_dict(reference.state_dict(), strict=True)
    ids, mask = left_padded(text_rows(1))
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=mask).logits
        actual = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(actual[mask.bool()], expected[mask.bool()], atol=1e-5, rtol=1e-5)
    kwargs = dict(input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert torch.equal(model.generate(**kwargs), reference.generate(**kwargs))


# ----------------------------------------------------------------------------------------------- standalone model


def test_decoder_saves_alone_and_loads_as_auto_model_for_causal_lm(tmp_path, isolated):
    model = decoder(seed=3)
    ids, mask = left_padded(text_rows(2))
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
    model.save_pretrained(tmp_path / "decoder")
    torch.save({"ids": ids, "mask": mask, "logits": logits}, tmp_path / "reference.pt")
    assert not (tmp_path / "decoder" / "modeling_minimind_v.py").exists()  # only the decoder's own code travels
    isolated(
        """
        import torch
        from transformers import AutoConfig, AutoModel, AutoModelForCausalLM
        ref = torch.load("reference.pt")
        config = AutoConfig.from_pretrained("decoder", trust_remote_code=True)
        assert config.model_type == "minimind" and config.num_experts == 0
        model = AutoModelForCausalLM.from_pretrained("decoder", trust_remote_code=True).eval()
        assert type(model).__name__ == "MiniMindForCausalLM"
        with torch.no_grad():
            assert torch.equal(model(input_ids=ref["ids"], attention_mask=ref["mask"]).logits, ref["logits"])
            base = AutoModel.from_pretrained("decoder", trust_remote_code=True).eval()
            assert type(base).__name__ == "MiniMindModel"
            cached = model.generate(input_ids=ref["ids"], attention_mask=ref["mask"], max_new_tokens=6,
                                    do_sample=False, pad_token_id=0)
            uncached = model.generate(input_ids=ref["ids"], attention_mask=ref["mask"], max_new_tokens=6,
                                      do_sample=False, pad_token_id=0, use_cache=False)
            assert torch.equal(cached, uncached)
        """
    )


def test_vlm_decoder_weights_are_the_standalone_decoder_weights():
    vlm = tiny_model(seed=1)
    standalone = MiniMindForCausalLM(vlm.config.text_config).eval()
    state = {k.removeprefix("model.language_model."): v for k, v in vlm.state_dict().items()
             if k.startswith("model.language_model.")}
    standalone.model.load_state_dict(state, strict=True)
    ids = torch.tensor([text_rows(3)[0]])
    with torch.no_grad():
        torch.testing.assert_close(standalone(input_ids=ids).logits, vlm(input_ids=ids).logits)


def test_return_dict_false_and_hidden_state_selection():
    model = decoder()
    ids = torch.tensor([text_rows(4)[1]])
    with torch.no_grad():
        full = model(input_ids=ids, output_hidden_states=True)
        as_tuple = model(input_ids=ids, return_dict=False, use_cache=False)
        selected = model(input_ids=ids, output_hidden_states=[0, -1])
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], full.logits)
    assert len(full.hidden_states) == model.config.num_hidden_layers + 1
    assert len(selected.hidden_states) == 2
    assert torch.equal(selected.hidden_states[0], full.hidden_states[0])
    assert torch.equal(selected.hidden_states[1], full.hidden_states[-1])
    model.config.output_hidden_states = True  # the config's default applies when the call says nothing
    assert len(model(input_ids=ids).hidden_states) == model.config.num_hidden_layers + 1


def test_eager_attention_weights_are_returned_and_retain_grad():
    model = decoder()
    model.set_attn_implementation("eager")
    ids = torch.tensor([text_rows(5)[1]])
    out = model(input_ids=ids, output_attentions=True)
    assert len(out.attentions) == model.config.num_hidden_layers
    weights = out.attentions[0]
    assert weights.shape == (1, 4, ids.shape[1], ids.shape[1])
    torch.testing.assert_close(weights.sum(-1), torch.ones(1, 4, ids.shape[1]))
    assert torch.all(weights[0, :, 0, 1:] == 0)  # causal
    weights.retain_grad()
    out.logits.sum().backward()
    assert weights.grad is not None and weights.grad.abs().sum() > 0


@pytest.mark.parametrize("bad, message", [([[3, 2000]], "outside the vocabulary"), ([[-1, 4]], "outside"),
                                          (torch.zeros(1, 0, dtype=torch.long), "empty")])
def test_bad_token_ids_are_named(bad, message):
    with pytest.raises(ValueError, match=message):
        decoder()(input_ids=torch.as_tensor(bad))


# ----------------------------------------------------------------------------------------------- MoE


def moe_decoder(**overrides):
    return decoder(num_experts=4, n_shared_experts=1, num_experts_per_tok=2, **overrides)


def test_moe_routing_matches_per_token_reference():
    moe = moe_decoder().model.layers[0].mlp
    x = torch.randn(2, 7, 64)
    with torch.no_grad():
        out, router_logits = moe(x)
        weights, idx = moe.route(router_logits)
    assert router_logits.shape == (14, 4) and weights.shape == (14, 2) and idx.shape == (14, 2)
    torch.testing.assert_close(weights.sum(-1), torch.ones(14))  # norm_topk_prob
    flat = x.reshape(-1, 64)
    with torch.no_grad():
        reference = torch.stack([
            sum(weights[t, j] * moe.experts[idx[t, j]](flat[t]) for j in range(2)) + moe.shared_experts[0](flat[t])
            for t in range(14)
        ])
    torch.testing.assert_close(out.reshape(-1, 64), reference, atol=1e-5, rtol=1e-5)


def test_moe_static_shape_experts_equal_dispatch():
    """The decode path (every expert on every token, unchosen ones weighted 0) gives the routed dispatch's output."""
    moe = moe_decoder().model.layers[0].mlp
    x = torch.randn(3, 5, 64)
    with torch.no_grad():
        dispatched, logits = moe(x)
        moe.fuse_projections()
        static, static_logits = moe(x, fused_projections=True)
        for expert in moe.experts:  # the stacked weights follow later weight updates once rebuilt
            expert.down_proj.weight.mul_(2.0)
        moe.fuse_projections()
        doubled_routed = moe.experts(x.reshape(-1, 64), *reversed(moe.route(logits)))
        doubled_static = moe.experts(x.reshape(-1, 64), *reversed(moe.route(logits)), fused_projections=True)
    torch.testing.assert_close(static, dispatched, atol=1e-6, rtol=1e-5)
    assert torch.equal(static_logits, logits)
    torch.testing.assert_close(doubled_static, doubled_routed, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("masked", [False, True])
def test_balance_loss_equals_transformers_mixtral(masked):
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    g = torch.Generator().manual_seed(0)
    logits = tuple(torch.randn(2 * 5, 4, generator=g) for _ in range(3))
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]]) if masked else None
    torch.testing.assert_close(load_balancing_loss(logits, 4, 2, mask), load_balancing_loss_func(logits, 4, 2, mask))


def test_moe_loss_is_cross_entropy_plus_weighted_balance_loss():
    model = moe_decoder(router_aux_loss_coef=0.05).train()
    ids, mask = left_padded(text_rows(6))
    out = model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100))
    assert len(out.router_logits) == 2 and out.router_logits[0].shape == (ids.numel(), 4)
    expected_aux = 0.05 * load_balancing_loss(out.router_logits, 4, 2, mask)
    torch.testing.assert_close(out.aux_loss, expected_aux)
    with torch.no_grad():
        logits = model.eval()(input_ids=ids, attention_mask=mask).logits
    model.train()
    labels = ids.masked_fill(mask == 0, -100)
    plain = F.cross_entropy(logits[:, :-1].reshape(-1, 1024), labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.loss, plain + out.aux_loss)
    out.aux_loss.backward()
    gate = model.model.layers[0].mlp.gate.weight
    assert gate.grad is not None and gate.grad.abs().sum() > 0
    model.eval()
    assert model(input_ids=ids).aux_loss is None  # no labels: no balance loss


def test_dense_and_moe_configs_say_so_in_the_fields_tools_read():
    dense, moe = MiniMindConfig(), MiniMindConfig(num_experts=4)
    assert dense.num_experts == 0 and not dense.output_router_logits and dense.router_aux_loss_coef == 0.0
    assert moe.num_experts == 4 and moe.output_router_logits and moe.router_aux_loss_coef > 0
    legacy = MiniMindConfig(use_moe=True, n_routed_experts=3, aux_loss_alpha=0.02, seq_aux=True)
    assert (legacy.num_experts, legacy.router_aux_loss_coef) == (3, 0.02)
    assert MiniMindConfig(use_moe=False, n_routed_experts=3).num_experts == 0


@pytest.mark.parametrize("use_moe", [False, True])
def test_training_steps_reduce_loss(use_moe):
    model = (moe_decoder() if use_moe else decoder()).train()
    ids, mask = left_padded(text_rows(7))
    labels = ids.masked_fill(mask == 0, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0], losses
