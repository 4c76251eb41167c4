"""The static-cache fast decoding path (`generate(cache_implementation="static")`) against transformers' own
`generate` with a dynamic cache: same tokens, same EOS/padding/min-length behaviour, same stopping point.

Run: `python -m pytest tests/test_fast_generate.py -q`. (tests/test_gpu.py repeats the check with CUDA graphs.)
"""

import pytest
import torch
from conftest import tiny_model

import modeling_minimind_v.fast_generate as fast


def batch():
    g = torch.Generator().manual_seed(0)
    rows = [[1, 3] + [5] * 9 + [4] + torch.randint(6, 1024, (n,), generator=g).tolist() for n in (3, 8)]
    width = max(map(len, rows))
    ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return {"input_ids": ids, "attention_mask": mask,
            "pixel_values": torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(1))}


@pytest.fixture(scope="module")
def model():
    m = tiny_model(seed=0)
    with torch.no_grad():  # larger weights: a random model that does not repeat one token, so EOS cases exist
        for p in m.model.language_model.parameters():
            if p.ndim > 1:
                p.mul_(8.0)
    return m


def test_fast_path_is_taken_and_matches_dynamic(model, monkeypatch):
    calls = []
    original = fast.fast_generate
    monkeypatch.setattr("modeling_minimind_v.modeling_minimind_v.fast_generate",
                        lambda m, s: calls.append(1) or original(m, s))
    kwargs = dict(**batch(), max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)
    static = model.generate(**kwargs, cache_implementation="static")
    dynamic = model.generate(**kwargs)
    assert calls == [1]
    assert torch.equal(static, dynamic)


def test_cache_layers_share_one_write_position(model):
    """One write counter for all layers, advanced once per forward: after the prefill and one run of
    STEPS_PER_GRAPH decode steps every layer reports the same length, the slots written."""
    model.__dict__.pop("_fast_decoders", None)
    inputs = batch()
    model.generate(**inputs, max_new_tokens=2, do_sample=False, eos_token_id=None, pad_token_id=0,
                   cache_implementation="static")
    cache = next(iter(model._fast_decoders.values())).cache
    assert len({id(layer.cumulative_length) for layer in cache.layers}) == 1
    written = inputs["input_ids"].shape[1] + fast.STEPS_PER_GRAPH
    assert int(cache.get_seq_length()) == written
    assert all(int(layer.get_seq_length()) == written for layer in cache.layers)


def test_eos_padding_and_stop_match_transformers(model):
    inputs = batch()
    free = model.generate(**inputs, max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)
    new = free[:, inputs["input_ids"].shape[1]:]
    eos = int(new[0, 2])  # row 0 emits this at step 2: it finishes there and is padded afterwards
    assert eos not in new[0, :2].tolist()
    prompt_len = inputs["input_ids"].shape[1]
    for extra in ({}, {"min_new_tokens": 5}):
        kwargs = dict(**inputs, max_new_tokens=12, do_sample=False, eos_token_id=eos, pad_token_id=0, **extra)
        reference = model.generate(**kwargs)
        assert torch.equal(model.generate(**kwargs, cache_implementation="static"), reference)
        if not extra:  # row 0 stopped at its EOS and was padded afterwards
            assert reference[0, prompt_len + 2] == eos and (reference[0, prompt_len + 3:] == 0).all()
        else:  # EOS held back for 5 tokens
            assert eos not in reference[0, prompt_len : prompt_len + 5].tolist()


def test_stops_replaying_once_every_row_finished(model, monkeypatch):
    """Steps run STEPS_PER_GRAPH at a time; once every row has emitted EOS the loop stops within one EOS check."""
    inputs = batch()
    free = model.generate(**inputs, max_new_tokens=4, do_sample=False, eos_token_id=None, pad_token_id=0)
    prompt_len = inputs["input_ids"].shape[1]
    eos = sorted({int(free[0, prompt_len + 1]), int(free[1, prompt_len + 1])})  # both rows finish by step 1
    kwargs = dict(**inputs, max_new_tokens=60, do_sample=False, eos_token_id=eos, pad_token_id=0)
    reference = model.generate(**kwargs)
    runs = []
    original = fast.FastDecoder._steps
    monkeypatch.setattr(fast.FastDecoder, "_steps", lambda self: runs.append(1) or original(self))
    assert torch.equal(model.generate(**kwargs, cache_implementation="static"), reference)
    assert reference.shape[1] <= prompt_len + 2
    assert len(runs) == fast.EOS_CHECK_EVERY // fast.STEPS_PER_GRAPH  # not the 8 runs 60 tokens would take


def test_moe_model_takes_the_fast_path_and_matches_transformers(monkeypatch):
    moe = tiny_model(seed=1, num_experts=4, n_shared_experts=1, num_experts_per_tok=2)
    with torch.no_grad():
        for p in moe.model.language_model.parameters():
            if p.ndim > 1:
                p.mul_(8.0)
    calls = []
    original = fast.fast_generate
    monkeypatch.setattr("modeling_minimind_v.modeling_minimind_v.fast_generate",
                        lambda m, s: calls.append(1) or original(m, s))
    kwargs = dict(**batch(), max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)
    static = moe.generate(**kwargs, cache_implementation="static")
    assert calls == [1]
    assert torch.equal(static, moe.generate(**kwargs))


def test_sampling_with_top_k_one_is_greedy_and_sampling_varies(model):
    inputs = batch()
    greedy = model.generate(**inputs, max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0,
                            cache_implementation="static")
    top1 = model.generate(**inputs, max_new_tokens=8, do_sample=True, top_k=1, eos_token_id=None, pad_token_id=0,
                          cache_implementation="static")
    assert torch.equal(greedy, top1)
    torch.manual_seed(0)
    draws = {tuple(model.generate(**inputs, max_new_tokens=8, do_sample=True, temperature=2.0, top_k=0, top_p=0.99,
                                  eos_token_id=None, pad_token_id=0, cache_implementation="static")[0].tolist())
             for _ in range(4)}
    assert len(draws) > 1


def test_unsupported_options_fall_back_to_transformers(model, monkeypatch):
    monkeypatch.setattr("modeling_minimind_v.modeling_minimind_v.fast_generate",
                        lambda m, s: pytest.fail("fast path used for beam search"))
    out = model.generate(**batch(), max_new_tokens=4, num_beams=2, eos_token_id=None, pad_token_id=0,
                         cache_implementation="static")
    assert out.shape[1] == batch()["input_ids"].shape[1] + 4


def test_one_decoder_serves_other_prompt_lengths_and_max_new_tokens(model, monkeypatch):
    """A decoder whose cache fits the request is reused (no new compile on a GPU); its outputs stay transformers'."""
    built = []
    original = fast.FastDecoder.__init__
    monkeypatch.setattr(fast.FastDecoder, "__init__",
                        lambda self, *a, **k: built.append(a[2]) or original(self, *a, **k))  # a[2]: the capacity
    model.__dict__.pop("_fast_decoders", None)
    inputs = batch()
    pad = torch.zeros(2, 3, dtype=torch.long)
    for extra, new in ((3, 12), (0, 5), (0, 1)):  # a shorter prompt (less left padding), fewer new tokens, one token
        x = {"input_ids": torch.cat([pad, inputs["input_ids"]], 1)[:, 3 - extra:],
             "attention_mask": torch.cat([pad, inputs["attention_mask"]], 1)[:, 3 - extra:],
             "pixel_values": inputs["pixel_values"]}
        kwargs = dict(**x, max_new_tokens=new, do_sample=False, eos_token_id=None, pad_token_id=0)
        assert torch.equal(model.generate(**kwargs, cache_implementation="static"), model.generate(**kwargs))
    assert built == [fast.CACHE_ROUND]  # one decoder, its capacity rounded up
    long_prompt = dict(max_new_tokens=fast.CACHE_ROUND, do_sample=False, eos_token_id=None, pad_token_id=0)
    model.generate(**inputs, **long_prompt, cache_implementation="static")
    assert built == [fast.CACHE_ROUND, 2 * fast.CACHE_ROUND]  # outgrew it: a larger one


def test_prompts_padded_to_the_prefill_round_match_transformers(model, monkeypatch):
    """With CAPTURE_PREFILL on CUDA a dense decoder left-pads prompts to a multiple of PREFILL_ROUND (one captured
    prefill per padded shape). The padding is masked: forced here on CPU, the tokens stay transformers', the returned
    rows start with the caller's prompt, and the padding takes cache slots."""
    monkeypatch.setattr(fast, "prompt_slots", lambda m, n: -(-n // 16) * 16)
    model.__dict__.pop("_fast_decoders", None)
    inputs = batch()
    assert inputs["input_ids"].shape[1] % 16
    for pad_id in (0, model.config.image_token_id):  # a pad id that is the image token must not add placeholders
        kwargs = dict(**inputs, max_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=pad_id)
        static = model.generate(**kwargs, cache_implementation="static")
        assert torch.equal(static, model.generate(**kwargs))
    decoder = next(iter(model._fast_decoders.values()))
    width = inputs["input_ids"].shape[1]
    slots = -(-width // 16) * 16
    assert int(decoder.cache.get_seq_length()) == slots + fast.STEPS_PER_GRAPH  # padded prompt, then the steps
    assert not decoder.valid[:, : slots - width].any() and decoder.valid[:, slots - width : slots].any(0).all()
    model.__dict__.pop("_fast_decoders", None)


def test_image_token_mismatch_is_a_clear_error_on_the_static_path(model):
    inputs = batch()
    ids = inputs["input_ids"].clone()
    ids[0, -1] = model.config.image_token_id  # one placeholder too many
    with pytest.raises(ValueError, match="Image features and image tokens do not match"):
        model.generate(**{**inputs, "input_ids": ids}, max_new_tokens=2, pad_token_id=0,
                       cache_implementation="static")
    with pytest.raises(ValueError, match="no pixel_values"):
        model.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], max_new_tokens=2,
                       pad_token_id=0, cache_implementation="static")


def test_greedy_token_is_argmax_first_maximum_included():
    """The two-stage argmax of the greedy step: vocabularies that do and do not divide into chunks, ties, -inf."""
    g = torch.Generator().manual_seed(0)
    for vocab in (5, 1024, 1500, 4099):
        for trial in range(6):
            logits = torch.randn(3, vocab, generator=g)
            if trial % 2:  # many exact ties: the first maximum must win, as in argmax
                logits = torch.randint(0, 3, (3, vocab), generator=g).float()
            logits[0, : vocab // 2] = float("-inf")
            assert torch.equal(fast.greedy_token(logits), logits.argmax(-1)), (vocab, trial)
        compiled = torch.compile(fast.greedy_token, backend="inductor", fullgraph=True)
        assert torch.equal(compiled(logits), logits.argmax(-1))
