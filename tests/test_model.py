"""Core model tests: forward/merge, loss, caches and generation, MoE, Qwen3 parity, bad input, save -> reload.

Run: `python -m pytest tests/test_model.py -q` (CPU, about a minute).
"""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config, tiny_model
from transformers.generation.streamers import BaseStreamer

from modeling_minimind_v import MiniMindVConfig, MiniMindVForConditionalGeneration, MiniMindVModel

IMG = 5  # image_token_id of the tiny preset
N_IMG_TOK = 9  # 48 px / patch 16 -> 3 x 3 patches


def prompt(n_text_before=3, n_images=1, n_text_after=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = [1] + torch.randint(6, 1024, (n_text_before,), generator=g).tolist()
    for _ in range(n_images):
        ids += [3] + [IMG] * N_IMG_TOK + [4]
    ids += torch.randint(6, 1024, (n_text_after,), generator=g).tolist()
    return ids


def pixels(n, seed=0):
    return torch.randn(n, 3, 48, 48, generator=torch.Generator().manual_seed(seed))


def pad_batch(rows, side="right", pad_id=0):
    width = max(map(len, rows))
    ids, mask = [], []
    for r in rows:
        pad = [pad_id] * (width - len(r))
        ids.append(pad + r if side == "left" else r + pad)
        m = [0] * len(pad) + [1] * len(r) if side == "left" else [1] * len(r) + [0] * len(pad)
        mask.append(m)
    return torch.tensor(ids), torch.tensor(mask)


# ----------------------------------------------------------------------------------------------- forward / merge


def test_text_only_forward_and_loss():
    model = tiny_model()
    ids = torch.tensor([prompt(n_images=0, n_text_after=10)])
    out = model(input_ids=ids, labels=ids)
    assert out.logits.shape == (1, ids.shape[1], 1024)
    assert torch.isfinite(out.loss)


def test_image_changes_only_later_positions():
    model = tiny_model()
    ids = torch.tensor([prompt(n_text_before=3, n_images=1, n_text_after=5)])
    first_img = (ids[0] == IMG).nonzero()[0].item()
    a = model(input_ids=ids, pixel_values=pixels(1, 0)).logits
    b = model(input_ids=ids, pixel_values=pixels(1, 1)).logits
    torch.testing.assert_close(a[:, :first_img], b[:, :first_img])  # causal: text before the image is unaffected
    assert (a[:, -1] - b[:, -1]).abs().max() > 1e-4  # the image reaches the answer positions


def test_several_images_and_mixed_batch_match_single_rows():
    model = tiny_model()
    rows = [prompt(n_images=2, seed=1), prompt(n_images=0, n_text_after=9, seed=2), prompt(n_images=1, seed=3)]
    pv = pixels(3, seed=4)  # images in order of appearance: row 0 has two, row 2 has one
    ids, mask = pad_batch(rows)
    batched = model(input_ids=ids, attention_mask=mask, pixel_values=pv).logits
    singles = [
        model(input_ids=torch.tensor([rows[0]]), pixel_values=pv[:2]).logits,
        model(input_ids=torch.tensor([rows[1]])).logits,
        model(input_ids=torch.tensor([rows[2]]), pixel_values=pv[2:]).logits,
    ]
    for i, single in enumerate(singles):
        torch.testing.assert_close(batched[i, : len(rows[i])], single[0], atol=1e-5, rtol=1e-5)


def test_image_order_matters_across_images():
    model = tiny_model()
    ids = torch.tensor([prompt(n_images=2)])
    pv = pixels(2)
    a = model(input_ids=ids, pixel_values=pv).logits
    b = model(input_ids=ids, pixel_values=pv.flip(0)).logits
    assert (a[:, -1] - b[:, -1]).abs().max() > 1e-4


def test_inputs_embeds_path_equals_input_ids_path():
    model = tiny_model()
    ids = torch.tensor([prompt()])
    embeds = model.get_input_embeddings()(ids)
    a = model(input_ids=ids, pixel_values=pixels(1)).logits
    b = model(inputs_embeds=embeds, pixel_values=pixels(1)).logits
    torch.testing.assert_close(a, b)


def test_loss_ignores_masked_labels():
    model = tiny_model()
    ids = torch.tensor([prompt(n_images=1, n_text_after=8)])
    labels = ids.clone()
    labels[ids == IMG] = -100
    labels[:, :6] = -100
    out = model(input_ids=ids, pixel_values=pixels(1), labels=labels)
    shift_logits, shift_labels = out.logits[0, :-1], labels[0, 1:]
    expected = F.cross_entropy(shift_logits, shift_labels, ignore_index=-100)
    torch.testing.assert_close(out.loss, expected)
    unmasked = F.cross_entropy(shift_logits, ids[0, 1:])
    assert not torch.allclose(out.loss, unmasked)  # the masked positions really were left out


def test_logits_to_keep():
    model = tiny_model()
    ids = torch.tensor([prompt()])
    full = model(input_ids=ids, pixel_values=pixels(1)).logits
    last = model(input_ids=ids, pixel_values=pixels(1), logits_to_keep=1).logits
    assert last.shape == (1, 1, 1024)
    torch.testing.assert_close(last[:, 0], full[:, -1])


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_attention_implementations_agree_under_padding(impl):
    reference = tiny_model()
    model = tiny_model()
    model.set_attn_implementation(impl)
    ids, mask = pad_batch([prompt(seed=1), prompt(n_text_after=1, seed=2)], side="left")
    a = reference(input_ids=ids, attention_mask=mask, pixel_values=pixels(2)).logits
    b = model(input_ids=ids, attention_mask=mask, pixel_values=pixels(2)).logits
    torch.testing.assert_close(a[mask.bool()], b[mask.bool()], atol=1e-5, rtol=1e-5)


def test_gradient_checkpointing_same_loss_and_grads():
    ids = torch.tensor([prompt(n_images=1, n_text_after=6)])
    results = []
    for gc in (False, True):
        model = tiny_model().train()
        if gc:  # renamed activation_checkpointing_enable in newer transformers
            getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
        loss = model(input_ids=ids, pixel_values=pixels(1), labels=ids).loss
        loss.backward()
        results.append((loss.detach(), model.lm_head.weight.grad.clone()))
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])


def test_vision_tower_frozen_by_default():
    model = tiny_model().train()
    assert not any(p.requires_grad for p in model.model.vision_tower.parameters())
    ids = torch.tensor([prompt()])
    model(input_ids=ids, pixel_values=pixels(1), labels=ids).loss.backward()
    assert model.model.multi_modal_projector.linear_1.weight.grad is not None


@pytest.mark.parametrize("projector", ["linear", "mlp", "cross_attention"])
def test_projector_types_forward(projector):
    extra = {"projector_num_queries": 9, "projector_num_heads": 4} if projector == "cross_attention" else {}
    model = tiny_model(projector_type=projector, **extra)
    ids = torch.tensor([prompt()])
    out = model(input_ids=ids, pixel_values=pixels(1), labels=ids)
    assert out.image_hidden_states.shape == (1, 9, 64)
    assert torch.isfinite(out.loss)


def test_siglip_vision_tower():
    vision = {"model_type": "siglip_vision_model", "hidden_size": 32, "intermediate_size": 64,
              "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": 32, "patch_size": 8}
    model = tiny_model(vision_config=vision)
    assert model.config.image_seq_length == 16
    ids = torch.tensor([[1, 7] + [IMG] * 16 + [8, 9]])
    out = model(input_ids=ids, pixel_values=torch.randn(1, 3, 32, 32), labels=ids)
    assert torch.isfinite(out.loss)


# ----------------------------------------------------------------------------------------------- bad input


def test_image_token_count_mismatch_names_both_counts():
    model = tiny_model()
    ids = torch.tensor([[1, 7] + [IMG] * 8 + [9]])
    with pytest.raises(ValueError, match=r"8 image tokens.*1 image\(s\) x 9 features"):
        model(input_ids=ids, pixel_values=pixels(1))
    with pytest.raises(ValueError, match=r"9 image tokens.*2 image\(s\)"):
        model(input_ids=torch.tensor([prompt()]), pixel_values=pixels(2))


def test_image_tokens_without_pixel_values():
    with pytest.raises(ValueError, match="no pixel_values"):
        tiny_model()(input_ids=torch.tensor([prompt()]))


@pytest.mark.parametrize("shape", [(3, 48, 48), (1, 1, 3, 48, 48), (1, 1, 48, 48), (1, 4, 48, 48), (1, 3, 32, 32)])
def test_bad_pixel_values(shape):
    with pytest.raises(ValueError, match="pixel_values must have shape"):
        tiny_model()(input_ids=torch.tensor([prompt()]), pixel_values=torch.randn(*shape))


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"hidden_size": 60, "num_attention_heads": 7}, "num_attention_heads"),
        ({"num_key_value_heads": 3}, "num_key_value_heads"),
        ({"use_moe": True, "n_routed_experts": 2, "num_experts_per_tok": 3}, "num_experts_per_tok"),
        ({"projector_type": "conv"}, "projector_type"),
        ({"image_token_id": 5000}, "image_token_id"),
        ({"hidden_act": "nope"}, "hidden_act"),
        ({"image_seq_length": 10}, "image_seq_length"),
        ({"dropout": 1.5}, "dropout"),
        ({"vocab_size": 0}, "vocab_size"),
    ],
)
def test_invalid_config_names_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        tiny_config(**overrides)


def test_unknown_preset_lists_available():
    with pytest.raises(ValueError, match="tiny"):
        MiniMindVConfig.from_preset("no-such-preset")


# ----------------------------------------------------------------------------------------------- cache / generate


def test_incremental_decoding_matches_full_sequence():
    model = tiny_model()
    ids = torch.tensor([prompt(n_text_after=8)])
    full = model(input_ids=ids, pixel_values=pixels(1), use_cache=False).logits
    prefix = ids.shape[1] - 8
    out = model(input_ids=ids[:, :prefix], pixel_values=pixels(1), use_cache=True)
    steps = [out.logits]
    cache = out.past_key_values
    for t in range(prefix, ids.shape[1]):
        out = model(input_ids=ids[:, t : t + 1], past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


def test_generate_with_and_without_cache_identical():
    model = tiny_model()
    ids = torch.tensor([prompt()])
    kwargs = dict(input_ids=ids, pixel_values=pixels(1), max_new_tokens=12, do_sample=False, eos_token_id=None)
    with_cache = model.generate(**kwargs, use_cache=True)
    without = model.generate(**kwargs, use_cache=False)
    assert with_cache.shape[1] == ids.shape[1] + 12
    assert torch.equal(with_cache, without)


def test_static_cache_generation_equals_dynamic():
    model = tiny_model()
    rows = [prompt(n_text_after=2, seed=1), prompt(n_text_before=6, n_text_after=7, seed=2)]
    ids, mask = pad_batch(rows, side="left")
    kwargs = dict(input_ids=ids, attention_mask=mask, pixel_values=pixels(2), max_new_tokens=10, do_sample=False,
                  eos_token_id=None, pad_token_id=0)
    dynamic = model.generate(**kwargs)
    static = model.generate(**kwargs, cache_implementation="static")
    assert torch.equal(dynamic, static)


def test_left_padded_batch_generation_equals_single():
    model = tiny_model()
    rows = [prompt(n_text_after=2, seed=1), prompt(n_text_before=6, n_text_after=7, seed=2)]
    pv = pixels(2)
    ids, mask = pad_batch(rows, side="left")
    kwargs = dict(max_new_tokens=10, do_sample=False, eos_token_id=None, pad_token_id=0)
    batched = model.generate(input_ids=ids, attention_mask=mask, pixel_values=pv, **kwargs)
    for i, row in enumerate(rows):
        single = model.generate(input_ids=torch.tensor([row]), pixel_values=pv[i : i + 1], **kwargs)
        assert batched[i, ids.shape[1]:].tolist() == single[0, len(row):].tolist()


class Collect(BaseStreamer):
    def __init__(self):
        self.chunks = []

    def put(self, value):
        self.chunks.append(value.reshape(-1).tolist())

    def end(self):
        self.ended = True


def test_sampling_beam_search_and_streamer():
    model = tiny_model()
    ids = torch.tensor([prompt()])
    torch.manual_seed(0)
    sampled = model.generate(input_ids=ids, pixel_values=pixels(1), do_sample=True, top_k=20, top_p=0.9,
                             temperature=0.7, max_new_tokens=6, eos_token_id=None)
    assert sampled.shape == (1, ids.shape[1] + 6)
    beams = model.generate(input_ids=ids, pixel_values=pixels(1), num_beams=3, num_return_sequences=2,
                           max_new_tokens=5, do_sample=False, eos_token_id=None)
    assert beams.shape == (2, ids.shape[1] + 5)
    streamer = Collect()
    greedy = model.generate(input_ids=ids, pixel_values=pixels(1), max_new_tokens=5, do_sample=False,
                            eos_token_id=None, streamer=streamer)
    streamed = [t for chunk in streamer.chunks[1:] for t in chunk]  # the first put is the prompt
    assert streamed == greedy[0, ids.shape[1]:].tolist() and streamer.ended


# ----------------------------------------------------------------------------------------------- chunked loss


@pytest.mark.parametrize("tied", [True, False])
def test_chunked_training_loss_equals_plain_loss_and_gradients(tied, monkeypatch):
    import modeling_minimind_v.loss as loss_module

    monkeypatch.setattr(loss_module, "CHUNK_ELEMENTS", 1024 * 5)  # 5 rows per chunk: exercise chunking
    ids, mask = pad_batch([prompt(seed=1), prompt(n_images=2, n_text_after=7, seed=2)])
    labels = ids.masked_fill(mask == 0, -100).masked_fill(ids == IMG, -100)
    labels[:, :3] = -100
    grads = []
    for train_mode in (False, True):  # eval: full logits + transformers' loss; train: chunked, no logits
        model = tiny_model(tie_word_embeddings=tied).train(train_mode)
        out = model(input_ids=ids, attention_mask=mask, pixel_values=pixels(3), labels=labels)
        assert (out.logits is None) == train_mode
        out.loss.backward()
        grads.append((out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (plain_loss, plain_grads), (chunked_loss, chunked_grads) = grads
    torch.testing.assert_close(chunked_loss, plain_loss)
    assert plain_grads.keys() == chunked_grads.keys()
    for name in plain_grads:
        torch.testing.assert_close(chunked_grads[name], plain_grads[name], atol=1e-6, rtol=1e-4)


def test_chunked_loss_honours_num_items_in_batch():
    model = tiny_model().train()
    ids = torch.tensor([prompt()])
    mean = model(input_ids=ids, pixel_values=pixels(1), labels=ids).loss
    summed = model(input_ids=ids, pixel_values=pixels(1), labels=ids, num_items_in_batch=100).loss
    torch.testing.assert_close(summed, mean * (ids.shape[1] - 1) / 100)


# ----------------------------------------------------------------------------------------------- MoE


def moe_model(**overrides):
    return tiny_model(use_moe=True, n_routed_experts=4, n_shared_experts=1, num_experts_per_tok=2, **overrides)


def test_moe_routing_matches_per_token_reference():
    moe = moe_model().model.language_model.layers[0].mlp
    x = torch.randn(2, 7, 64)
    out, _ = moe(x)
    probs, weights, idx = moe.route(x.reshape(-1, 64))
    assert probs.shape == (14, 4) and weights.shape == (14, 2) and idx.shape == (14, 2)
    torch.testing.assert_close(weights.sum(-1), torch.ones(14))  # norm_topk_prob
    flat = x.reshape(-1, 64)
    reference = torch.stack([
        sum(weights[t, j] * moe.experts[idx[t, j]](flat[t]) for j in range(2)) + moe.shared_experts[0](flat[t])
        for t in range(14)
    ])
    torch.testing.assert_close(out.reshape(-1, 64), reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("seq_aux", [True, False])
def test_moe_aux_loss_positive_and_differentiable(seq_aux):
    model = moe_model(seq_aux=seq_aux).train()
    ids = torch.tensor([prompt(), prompt(seed=5)])
    out = model(input_ids=ids, pixel_values=pixels(2), labels=ids)
    assert out.aux_loss is not None and out.aux_loss > 0
    with torch.no_grad():
        logits = model.eval()(input_ids=ids, pixel_values=pixels(2)).logits
    model.train()
    plain = F.cross_entropy(logits[:, :-1].reshape(-1, 1024), ids[:, 1:].reshape(-1))
    torch.testing.assert_close(out.loss, plain + out.aux_loss)
    out.aux_loss.backward()
    gate = model.model.language_model.layers[0].mlp.gate.weight
    assert gate.grad is not None and gate.grad.abs().sum() > 0
    model.eval()
    assert model(input_ids=ids, pixel_values=pixels(2)).aux_loss is None  # no balance loss at inference


@pytest.mark.parametrize("use_moe", [False, True])
def test_training_steps_reduce_loss(use_moe):
    model = (moe_model() if use_moe else tiny_model()).train()
    ids = torch.tensor([prompt(seed=s) for s in range(4)])
    pv = pixels(4)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(15):
        loss = model(input_ids=ids, pixel_values=pv, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0], losses


# ----------------------------------------------------------------------------------------------- Qwen3 parity


def test_decoder_matches_transformers_qwen3():
    from transformers import Qwen3Config, Qwen3ForCausalLM

    qcfg = Qwen3Config(vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=32, rope_theta=10000.0,
                       rms_norm_eps=1e-6, tie_word_embeddings=False)
    torch.manual_seed(0)
    qwen = Qwen3ForCausalLM(qcfg).eval()
    model = tiny_model(head_dim=32, rms_norm_eps=1e-6, tie_word_embeddings=False, qk_norm=True)
    state = {k.removeprefix("model."): v for k, v in qwen.state_dict().items() if k.startswith("model.")}
    model.model.language_model.load_state_dict(state, strict=False)
    model.lm_head.load_state_dict(qwen.lm_head.state_dict())
    missing = set(model.model.language_model.state_dict()) - set(state)
    assert not missing, missing
    ids, mask = pad_batch([prompt(n_images=0, n_text_after=12, seed=1), prompt(n_images=0, seed=2)], side="left")
    expected = qwen(input_ids=ids, attention_mask=mask).logits
    actual = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(actual[mask.bool()], expected[mask.bool()], atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------- save / load


def _save_with_reference(model, folder: Path):
    ids, mask = pad_batch([prompt(seed=1), prompt(n_images=2, seed=2)], side="left")
    inputs = {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels(3)}
    model.save_pretrained(folder)
    with torch.no_grad():
        logits = model(**inputs).logits
        hidden = model.model(**inputs).last_hidden_state
    torch.save({"inputs": inputs, "logits": logits, "hidden": hidden}, folder.parent / "reference.pt")


def test_save_and_reload_in_process_without_project(tmp_path, isolated):
    model = tiny_model(seed=3)
    _save_with_reference(model, tmp_path / "ckpt")
    files = set(p.name for p in (tmp_path / "ckpt").iterdir())
    assert {"config.json", "model.safetensors", "modeling_minimind_v.py", "configuration_minimind_v.py",
            "language_model.py", "projector.py", "README.md"} <= files
    auto_map = json.loads((tmp_path / "ckpt" / "config.json").read_text())["auto_map"]
    assert set(auto_map) == {"AutoConfig", "AutoModel", "AutoModelForCausalLM", "AutoModelForImageTextToText"}
    isolated(
        """
        import torch
        from transformers import AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText
        ref = torch.load("reference.pt")
        model = AutoModelForImageTextToText.from_pretrained("ckpt", trust_remote_code=True).eval()
        assert type(model).__name__ == "MiniMindVForConditionalGeneration"
        assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()  # tied
        with torch.no_grad():
            assert torch.equal(model(**ref["inputs"]).logits, ref["logits"])
            base = AutoModel.from_pretrained("ckpt", trust_remote_code=True).eval()
            assert type(base).__name__ == "MiniMindVModel"
            assert torch.equal(base(**ref["inputs"]).last_hidden_state, ref["hidden"])
            causal = AutoModelForCausalLM.from_pretrained("ckpt", trust_remote_code=True).eval()
            assert torch.equal(causal(**ref["inputs"]).logits, ref["logits"])
        """
    )


def test_push_to_hub_uploads_a_loadable_folder(tmp_path, monkeypatch, isolated):
    import shutil

    from huggingface_hub import HfApi

    uploaded = tmp_path / "uploaded"

    class Repo:
        repo_id = "someone/minimind-v-tiny"

    def fake_upload_folder(self, repo_id, folder_path, **kwargs):
        shutil.copytree(folder_path, uploaded)
        return "commit-url"

    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: Repo())
    monkeypatch.setattr(HfApi, "upload_folder", fake_upload_folder)
    model = tiny_model(seed=4)
    assert model.push_to_hub("someone/minimind-v-tiny") == "commit-url"
    card = (uploaded / "README.md").read_text()
    assert "trust_remote_code=True" in card and "someone/minimind-v-tiny" in card and "pipeline_tag" in card
    shutil.move(uploaded, tmp_path / "ckpt")
    _save_with_reference(model, tmp_path / "unused")
    isolated(
        """
        import torch
        from transformers import AutoModelForImageTextToText
        ref = torch.load("reference.pt")
        model = AutoModelForImageTextToText.from_pretrained("ckpt", trust_remote_code=True).eval()
        with torch.no_grad():
            assert torch.equal(model(**ref["inputs"]).logits, ref["logits"])
        """
    )


def test_vision_tower_stays_frozen_after_reload(tmp_path):
    tiny_model().save_pretrained(tmp_path)
    for cls in (MiniMindVForConditionalGeneration, MiniMindVModel):
        reloaded = cls.from_pretrained(tmp_path)
        assert not any(p.requires_grad for n, p in reloaded.named_parameters() if "vision_tower" in n)
        assert all(p.requires_grad for n, p in reloaded.named_parameters() if "language_model" in n)


def test_inner_model_alone_saves_and_reloads(tmp_path):
    torch.manual_seed(0)
    inner = MiniMindVModel(tiny_config()).eval()
    inner.save_pretrained(tmp_path)
    again = MiniMindVModel.from_pretrained(tmp_path).eval()
    ids = torch.tensor([prompt()])
    torch.testing.assert_close(inner(input_ids=ids, pixel_values=pixels(1)).last_hidden_state,
                               again(input_ids=ids, pixel_values=pixels(1)).last_hidden_state, atol=0, rtol=0)
    full = MiniMindVForConditionalGeneration.from_pretrained(tmp_path)  # inner weights load under `model.`
    torch.testing.assert_close(full.model.language_model.embed_tokens.weight, inner.language_model.embed_tokens.weight)
    torch.testing.assert_close(full.lm_head.weight, inner.language_model.embed_tokens.weight)  # tied
