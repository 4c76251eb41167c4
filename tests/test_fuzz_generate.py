"""Fuzz test of the generation surfaces: `generate` on the tiny model with seeded random malformed inputs (token ids
out of range or negative, empty or wrongly shaped input_ids, float ids, mismatched attention masks and pixel values,
bad generation arguments), the chat session's message and sampling helpers, and the chat CLI's flag checks. Each must
give a clear error or a correct result (new tokens inside the vocabulary, the prompt kept as the output's prefix)."""

import math
import random
import time

import pytest
import torch
from conftest import tiny_model

from helpers_fuzz import Tally
from processing.chat_session import ChatTurn, build_messages, generation_kwargs


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def _ids(rng, vocab):
    kind = rng.randrange(9)
    if kind == 0:
        return torch.tensor([[1, vocab + rng.randrange(1, 1000)]])
    if kind == 1:
        return torch.tensor([[rng.randrange(-100, 0), 2]])
    if kind == 2:
        return torch.zeros(rng.choice([(1, 0), (0, 3), (0, 0)]), dtype=torch.long)
    if kind == 3:
        return torch.rand(1, 4) * 10  # float ids
    if kind == 4:
        return torch.randint(0, vocab, (rng.randrange(1, 4),))  # 1-D
    if kind == 5:
        return torch.randint(0, vocab, (1, 2, 3))  # 3-D
    return torch.randint(0, vocab, (rng.randrange(1, 3), rng.randrange(1, 6)))


def test_fuzz_generate(model):
    rng = random.Random(5)
    torch.manual_seed(5)
    tally = Tally("generate")
    config = model.config
    vocab = config.text_config.vocab_size
    image_id = config.image_token_id
    vision = config.vision_config
    deadline = time.monotonic() + 20
    for trial in range(100):
        if time.monotonic() > deadline:
            break
        ids = _ids(rng, vocab)
        if ids.dtype == torch.long and ids.numel() and ids.ndim == 2:
            ids = torch.where(ids == image_id, (image_id + 1) % vocab, ids)
        kwargs = {"max_new_tokens": rng.choice([1, 2, 3, 1, 2, 0, -1]), "do_sample": rng.choice([False, True])}
        if rng.random() < 0.3:
            length = ids.shape[-1] if ids.ndim and rng.random() < 0.5 else rng.choice([1, 4, 7])
            kwargs["attention_mask"] = torch.ones(ids.shape[0] if ids.ndim else 1, length, dtype=torch.long)
        if rng.random() < 0.3 and ids.ndim == 2 and ids.dtype == torch.long and ids.numel():
            n = ids.shape[0] if rng.random() < 0.5 else rng.choice([0, 1, 2])
            block = torch.full((ids.shape[0], config.image_seq_length * rng.choice([1, 1, 1, 2])), image_id)
            ids = torch.cat([ids, block], dim=1)
            good = (n, vision.num_channels, vision.image_size, vision.image_size)
            shape = rng.choice([good, good, (n, 3, 5, 5), (3,)])
            pixels = torch.randn(shape)
            if rng.random() < 0.3 and pixels.numel():
                pixels.view(-1)[0] = float("nan")
            kwargs["pixel_values"] = pixels
        if kwargs["do_sample"]:
            kwargs["temperature"] = rng.choice([0.7, 0.7, 1.0, 0.0, -1.0, float("nan")])
            kwargs["top_p"] = rng.choice([0.9, 1.0, 0.9, 5.0, 0.0])

        def check(out, ids=ids):
            assert out.shape[0] == ids.shape[0] and torch.equal(out[:, : ids.shape[1]], ids), "prompt not kept"
            new = out[:, ids.shape[1]:]
            assert new.numel() and int(new.min()) >= 0 and int(new.max()) < vocab, "generated ids out of range"
            return "correct"

        with torch.no_grad():
            tally.run(f"generate {trial}: ids {tuple(ids.shape)} {ids.dtype} {sorted(kwargs)}",
                      lambda: model.generate(input_ids=ids, **kwargs), check)
    tally.finish()


def test_fuzz_chat_helpers():
    rng = random.Random(3)
    tally = Tally("chat")
    for trial in range(80):
        temperature = rng.choice([0, 0.7, 2.0, -1, float("nan"), math.inf, "0.7"])
        top_p = rng.choice([0.9, 1, 0, 5, -0.1, float("nan")])
        max_new = rng.choice([1, 16, 0, -3])

        def check_kwargs(kw, temperature=temperature, top_p=top_p, max_new=max_new):
            assert temperature >= 0 and 0 < top_p <= 1 and max_new >= 1, f"accepted {temperature}, {top_p}, {max_new}"
            assert kw["do_sample"] == (temperature > 0)
            return "correct"

        tally.run(f"generation_kwargs {temperature}, {top_p}, {max_new}",
                  lambda: generation_kwargs(temperature, top_p, max_new), check_kwargs)
        history = [ChatTurn(rng.choice(["", "hi", "<|im_start|>x"]), [], rng.choice([None, "ok", ""]))
                   for _ in range(rng.randrange(0, 4))]

        def check_messages(messages, history=history):
            assert all(isinstance(m["content"], list) for m in messages)  # never string content
            return "correct"

        tally.run(f"build_messages {trial}", lambda: build_messages(history, rng.choice([None, "sys"])), check_messages)
    tally.finish()
