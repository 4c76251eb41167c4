"""MiniMind-V (modeling_minimind_v/modeling_minimind_v.py): forward and image merge, loss, caches and generation,
bad input, save -> reload through every Auto class in a clean process.

Run: `python -m pytest tests/test_modeling_minimind_v.py -q` (CPU, about a minute). The decoder alone, MoE and
reference-model parity are in test_modeling_minimind.py; configs in test_configuration_minimind_v.py.
"""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config, tiny_model
from transformers.generation.streamers import BaseStreamer

from modeling_minimind_v import MiniMindVForConditionalGeneration, MiniMindVModel
from modeling_minimind_v.compat import cache_field, output_cache

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


def test_embeddings_merged_by_the_caller_go_straight_to_the_decoder():
    """A serving engine (vLLM) embeds the prompt and scatters the image features itself, then passes only
    `inputs_embeds`: the result equals the model's own merge, and placeholders still in the embeddings (the engine's
    profiling runs) are not an error."""
    model = tiny_model()
    ids = torch.tensor([prompt()])
    features = model.get_image_features(pixels(1)).pooler_output
    embeds = model.get_input_embeddings()(ids)
    merged = embeds.masked_scatter((ids == IMG).unsqueeze(-1).expand_as(embeds), features)
    torch.testing.assert_close(model(inputs_embeds=merged).logits,
                               model(input_ids=ids, pixel_values=pixels(1)).logits)
    text_only = model.lm_head(model.model.language_model(inputs_embeds=embeds).last_hidden_state)
    torch.testing.assert_close(model(inputs_embeds=embeds).logits, text_only)


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


# ----------------------------------------------------------------------------------------------- cache / generate


def test_incremental_decoding_matches_full_sequence():
    model = tiny_model()
    ids = torch.tensor([prompt(n_text_after=8)])
    full = model(input_ids=ids, pixel_values=pixels(1), use_cache=False).logits
    prefix = ids.shape[1] - 8
    out = model(input_ids=ids[:, :prefix], pixel_values=pixels(1), use_cache=True)
    steps = [out.logits]
    cache = output_cache(out)
    for t in range(prefix, ids.shape[1]):
        out = model(input_ids=ids[:, t : t + 1], past_key_values=cache, use_cache=True)
        cache = output_cache(out)
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
            "modeling_minimind.py", "configuration_minimind.py", "attention.py", "feed_forward.py", "compat.py",
            "projector.py", "vision.py", "fast_generate.py", "decode_attention.py", "decode_projections.py",
            "triton_support.py", "README.md"} <= files
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


def test_fsdp2_sharded_model_saves_its_own_code_and_reloads(tmp_path, isolated):
    """FSDP2's fully_shard swaps the model's class for one defined in torch. The full state dict saved from the
    sharded model must carry this package's code and Auto entries (not torch's FSDP files) and reload to the same
    logits. One CPU process (gloo), as FSDP2 runs under `accelerate launch` with configs/accelerate/fsdp.yaml."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, fully_shard

    model = tiny_model(seed=5).eval()
    _save_with_reference(model, tmp_path / "unsharded")  # reference.pt: the logits before sharding
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        for layer in model.model.language_model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        assert isinstance(model, FSDPModule) and type(model).__module__.startswith("torch.")
        runtime_class = type(model)
        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        model.save_pretrained(tmp_path / "ckpt", state_dict=state)
        assert type(model) is runtime_class  # still sharded after the save
    finally:
        dist.destroy_process_group()
    saved = {p.name for p in (tmp_path / "ckpt").iterdir()}
    assert {"modeling_minimind_v.py", "modeling_minimind.py", "configuration_minimind_v.py"} <= saved
    assert not any("fsdp" in name for name in saved), saved
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["architectures"] == ["MiniMindVForConditionalGeneration"]
    assert config["auto_map"]["AutoModelForImageTextToText"] == "modeling_minimind_v.MiniMindVForConditionalGeneration"
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


@pytest.mark.parametrize("projector", ["mlp", "cross_attention"])
def test_moe_vlm_training_steps_reduce_loss(projector):
    extra = {"projector_num_queries": 9, "projector_num_heads": 4} if projector == "cross_attention" else {}
    model = tiny_model(use_moe=True, n_routed_experts=4, n_shared_experts=1, num_experts_per_tok=2,
                       projector_type=projector, **extra).train()
    ids = torch.tensor([prompt(seed=s) for s in range(4)])
    pv = pixels(4)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(15):
        out = model(input_ids=ids, pixel_values=pv, labels=ids)
        assert out.aux_loss is not None and out.aux_loss > 0
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(out.loss.item())
    assert losses[-1] < 0.6 * losses[0], losses


# ----------------------------------------------------------------------------------------------- transformers contract


def wide_model(seed=0):
    """Wide random weights: generated tokens depend on the input, so decoding-path differences show."""
    model = tiny_model(seed=seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:
                p.normal_(0.0, 0.3)
    return model


def test_output_loading_info(tmp_path):
    tiny_model().save_pretrained(tmp_path)
    model, info = MiniMindVForConditionalGeneration.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert not any(p.requires_grad for p in model.model.vision_tower.parameters())


def test_return_dict_false_gives_tuples_in_output_order():
    model = tiny_model()
    ids = torch.tensor([prompt()])
    as_dict = model(input_ids=ids, pixel_values=pixels(1), use_cache=False)
    as_tuple = model(input_ids=ids, pixel_values=pixels(1), use_cache=False, return_dict=False)
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], as_dict.logits)
    base = model.model(input_ids=ids, pixel_values=pixels(1), use_cache=False, return_dict=False)
    assert isinstance(base, tuple) and torch.equal(base[0], model.model(input_ids=ids, pixel_values=pixels(1)).last_hidden_state)


def test_output_attentions_and_hidden_states_from_call_or_config():
    model = tiny_model()
    model.set_attn_implementation("eager")
    ids = torch.tensor([prompt()])
    out = model(input_ids=ids, pixel_values=pixels(1), output_attentions=True, output_hidden_states=True)
    n, layers = ids.shape[1], model.config.text_config.num_hidden_layers
    assert len(out.attentions) == layers and out.attentions[0].shape == (1, 4, n, n)
    assert len(out.hidden_states) == layers + 1
    image_outputs = out.image_outputs
    assert image_outputs.hidden_states is not None and len(image_outputs.hidden_states) == 3  # 2-layer tower + embeds
    assert image_outputs.attentions is not None and len(image_outputs.attentions) == 2
    selected = model(input_ids=ids, pixel_values=pixels(1), output_hidden_states=[-1])
    assert len(selected.hidden_states) == 1 and torch.equal(selected.hidden_states[0], out.hidden_states[-1])
    model.config.output_hidden_states = True
    assert len(model(input_ids=ids, pixel_values=pixels(1)).hidden_states) == layers + 1


def test_get_image_features_follows_the_transformers_contract():
    model = tiny_model()
    out = model.get_image_features(pixels(2), output_hidden_states=True)
    assert type(out).__name__ == "BaseModelOutputWithPooling"
    assert out.pooler_output.shape == (2, 9, 64)  # projected, one entry per image
    assert out.last_hidden_state.shape == (2, 10, 64)  # the tower's: class token + 9 patches
    assert len(out.hidden_states) == 3
    as_tuple = model.get_image_features(pixels(2), return_dict=False)
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[1], out.pooler_output)
    forward = model(input_ids=torch.tensor([prompt(n_images=2)]), pixel_values=pixels(2))
    assert torch.equal(forward.image_hidden_states, out.pooler_output)
    assert torch.equal(forward.image_outputs.pooler_output, out.pooler_output)


@pytest.mark.parametrize("mode", ["same_model", "other_assistant", "prompt_lookup"])
def test_assisted_decoding_with_an_image_prompt_equals_greedy(mode):
    import copy

    model = wide_model()
    ids = torch.tensor([prompt(n_text_after=3)])
    kwargs = dict(input_ids=ids, pixel_values=pixels(1), max_new_tokens=10, do_sample=False, eos_token_id=None)
    greedy = model.generate(**kwargs)
    extra = {"same_model": {"assistant_model": copy.deepcopy(model)},
             "other_assistant": {"assistant_model": tiny_model(seed=9)},
             "prompt_lookup": {"prompt_lookup_num_tokens": 3}}[mode]
    assert torch.equal(model.generate(**kwargs, **extra), greedy)


def test_generate_through_transformers_with_a_static_cache_and_continuing_from_its_past():
    from transformers import DynamicCache, StaticCache

    model = wide_model(seed=1)
    ids = torch.tensor([prompt(n_text_after=3)])
    kwargs = dict(pixel_values=pixels(1), do_sample=False, eos_token_id=None)
    reference = model.generate(input_ids=ids, max_new_tokens=12, **kwargs)
    # A StaticCache handed in explicitly goes through transformers' own loop (not the fast decoder).
    static = model.generate(input_ids=ids, max_new_tokens=12, **kwargs,
                            **cache_field(StaticCache(config=model.config, max_cache_len=64)))
    assert torch.equal(static, reference)
    # Continue from the cache of a first call, as the common tests do.
    cache = DynamicCache(config=model.config)
    first = model.generate(input_ids=ids, max_new_tokens=5, **cache_field(cache), **kwargs)
    second = model.generate(input_ids=first, max_new_tokens=7, **cache_field(cache), **kwargs)
    assert torch.equal(second, reference)


def test_generate_returns_scores_attentions_and_hidden_states():
    model = tiny_model()
    model.set_attn_implementation("eager")
    ids = torch.tensor([prompt()])
    out = model.generate(input_ids=ids, pixel_values=pixels(1), max_new_tokens=3, do_sample=False,
                         eos_token_id=None, return_dict_in_generate=True, output_scores=True,
                         output_attentions=True, output_hidden_states=True)
    assert len(out.scores) == 3 and len(out.attentions) == 3 and len(out.hidden_states) == 3
    assert out.attentions[0][0].shape[-1] == ids.shape[1] and out.attentions[1][0].shape[-2] == 1


def test_forward_compiles_as_one_graph():
    model = tiny_model()
    ids = torch.tensor([prompt()])
    compiled = torch.compile(model, fullgraph=True, backend="eager")  # tracing alone: graph breaks raise
    with torch.no_grad():
        torch.testing.assert_close(compiled(input_ids=ids, pixel_values=pixels(1)).logits,
                                   model(input_ids=ids, pixel_values=pixels(1)).logits)


@pytest.mark.parametrize("ids, message", [
    ([[1, 10**6]], "outside the vocabulary"), ([[1, -3]], "token id -3, outside the vocabulary"),
    (torch.zeros(1, 0, dtype=torch.long), "input_ids is empty"), ([3, 4], r"must be \[batch, length\]"),
    (torch.ones(1, 3), "integer token ids"),
])
def test_generate_refuses_bad_prompts_with_a_named_error(ids, message):
    from conftest import tiny_model

    model = tiny_model()
    ids = ids if isinstance(ids, torch.Tensor) else torch.tensor(ids)
    with pytest.raises((ValueError, TypeError), match=message):
        model.generate(input_ids=ids, max_new_tokens=2)
    with pytest.raises(ValueError, match="attention_mask has shape"):
        model.generate(input_ids=torch.tensor([[1, 2, 3]]), attention_mask=torch.ones(1, 5, dtype=torch.long),
                       max_new_tokens=2)
