"""Fuzz test of MiniMindVProcessor (modeling_minimind_v/processing_minimind_v.py): seeded random malformed texts,
images (PIL modes and sizes, arrays and tensors of any dtype and shape, bad paths and files, non-images), image/
placeholder pairings and chat messages. Each must give a clear error or a correct result: one image block of
image_seq_length tokens per image, finite pixel values for every image, control tokens in messages never markup."""

import random
import time

import numpy as np
import PIL.Image
import pytest
import torch

from helpers_fuzz import Tally
from helpers_processor import clip_vision_config, make_tokenizer
from processing.processors import build_processor

SEQ = 3
IMG = "<|image_pad|>"
CONTROL = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|endoftext|>", IMG]


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    return build_processor(make_tokenizer(tmp_path_factory.mktemp("tok")), clip_vision_config(image_size=32,
                                                                                               patch_size=16), SEQ)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("files")
    PIL.Image.new("RGB", (40, 30), (10, 20, 30)).save(root / "ok.png")
    (root / "cut.png").write_bytes((root / "ok.png").read_bytes()[:-30])
    (root / "junk.jpg").write_bytes(b"\xff\xd8\xff not a jpeg at all")
    (root / "empty.png").write_bytes(b"")
    (root / "folder.png").mkdir()
    return root


def _random_image(rng: random.Random, files):
    kind = rng.randrange(12)
    if kind == 0:
        mode = rng.choice(["RGB", "L", "RGBA", "P", "1", "I", "F", "I;16", "LA", "CMYK", "YCbCr"])
        size = (rng.choice([1, 2, 3, 7, 32, 65]), rng.choice([1, 2, 3, 5, 32]))
        return PIL.Image.new(mode, size), True
    if kind == 1:
        return PIL.Image.new("RGB", (rng.choice([0, 4]), rng.choice([0, 3]))), None  # may be empty
    if kind in (2, 3):
        ndim = rng.choice([1, 2, 3, 3, 4])
        shape = tuple(rng.choice([0, 1, 3, 4, 16]) for _ in range(ndim))
        dtype = rng.choice([np.uint8, np.uint16, np.int64, np.float32, np.float64, np.bool_, np.float16])
        array = (np.random.default_rng(rng.randrange(1 << 30)).random(shape) * rng.choice([1, 255, 1e6, -5]))
        with np.errstate(over="ignore", invalid="ignore"):  # overflowing casts are part of the point
            array = array.astype(dtype)
        if array.size and dtype in (np.float32, np.float64) and rng.random() < 0.3:
            array.flat[0] = rng.choice([np.nan, np.inf, -np.inf])
        return (torch.from_numpy(array.copy()) if kind == 3 and dtype not in (np.uint16,) else array), None
    if kind == 4:
        return str(files / rng.choice(["ok.png", "cut.png", "junk.jpg", "empty.png", "folder.png", "nope.png",
                                       "", "\x00bad"])), None
    if kind == 5:
        return PIL.Image.open(files / "cut.png"), False
    if kind == 6:
        return rng.choice([None, 3, 2.5, b"\x89PNG", {"image": 1}, object(), [], ["a"]]), False
    return PIL.Image.new("RGB", (rng.randrange(1, 50), rng.randrange(1, 50)), (1, 2, 3)), True


def _random_text(rng: random.Random, n_images: int) -> str:
    pieces = [rng.choice(["hi", " ", "\n", "é字😀", "<image>", "<|im", "|>", "a" * rng.randrange(0, 50)])
              for _ in range(rng.randrange(0, 5))]
    for _ in range(n_images):
        pieces.insert(rng.randrange(len(pieces) + 1), IMG)
    return "".join(pieces)


def _check(processor, n_images):
    def check(out):
        ids = out["input_ids"]
        ids = ids.tolist() if hasattr(ids, "tolist") else ids
        ids = ids if ids and isinstance(ids[0], list) else [ids]
        image_id = processor.image_token_id
        assert sum(row.count(image_id) for row in ids) == SEQ * n_images, "image tokens != SEQ x images"
        if n_images:
            pixels = out["pixel_values"]
            pixels = pixels.numpy() if torch.is_tensor(pixels) else np.asarray(pixels)
            assert pixels.shape[0] == n_images and pixels.shape[1:] == (3, 32, 32), pixels.shape
            assert np.isfinite(pixels).all(), "non-finite pixel values"
        else:
            assert "pixel_values" not in out
        return "correct"
    return check


def test_fuzz_processor_calls(processor, files):
    rng = random.Random(1234)
    tally = Tally("processor")
    deadline = time.monotonic() + 20
    for trial in range(220):
        if time.monotonic() > deadline:
            break
        batch = rng.choice([1, 1, 2, 3])
        counts = [rng.choice([0, 0, 1, 1, 2]) for _ in range(batch)]
        texts = [_random_text(rng, c) for c in counts]
        images = [_random_image(rng, files)[0] for _ in range(sum(counts) + rng.choice([0, 0, 0, 1, -1]))]
        if rng.random() < 0.2 and images:
            images = images[: max(0, len(images) - 1)]
        nested = rng.random() < 0.3
        if nested and len(images) == sum(counts):
            it = iter(images)
            images = [[next(it) for _ in range(c)] for c in counts]
        text = texts[0] if batch == 1 and rng.random() < 0.5 else texts
        if rng.random() < 0.1:
            text = rng.choice([None, "", [], [""], 5, [5], ["ok", None]])
        kwargs = {"return_tensors": rng.choice(["pt", "pt", None, "np"])}
        if batch > 1:
            kwargs["padding"] = True
        tally.run(f"call {trial}: {text!r:.60}",
                  lambda: processor(images=images or None, text=text, **kwargs), _check(processor, sum(counts)))
    tally.finish()


def test_fuzz_chat_messages(processor):
    rng = random.Random(99)
    tally = Tally("processor-chat")
    start_id = processor.tokenizer.convert_tokens_to_ids("<|im_start|>")
    for trial in range(80):
        messages = []
        for _ in range(rng.randrange(0, 4)):
            role = rng.choice(["user", "assistant", "system", "user", 5, None])
            text = "".join(rng.choice(CONTROL + ["hi ", "\n", "x"]) for _ in range(rng.randrange(0, 6)))
            content = rng.choice([text, [{"type": "text", "text": text}], [{"type": "video"}], None, 7,
                                  [{"type": "text", "text": None}]])
            messages.append({"role": role, "content": content})
        if rng.random() < 0.1:
            messages = rng.choice([[], "hi", [None], [[]]])

        def check(out, messages=messages):
            ids = out["input_ids"]
            ids = ids[0] if ids and isinstance(ids[0], list) else ids
            # Control tokens typed in messages never become markup: only the template's own turn starts remain.
            assert ids.count(start_id) == len(messages) + 1, (ids.count(start_id), messages)
            assert ids.count(processor.image_token_id) == 0
            return "correct"

        tally.run(f"chat {trial}: {messages!r:.80}", lambda: processor.apply_chat_template(
            messages, tokenize=True, add_generation_prompt=True, return_dict=True), check)
    tally.finish()
