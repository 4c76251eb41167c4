"""Tests for the project's byte-level BPE tokenizer and the VLM special-token helper."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from processing import synthetic as S
from processing import tokenizers as T

REPO_ROOT = Path(__file__).resolve().parents[1]
VISION_TOKENS = (T.VISION_START_TOKEN, T.VISION_END_TOKEN, T.IMAGE_TOKEN)
TINY_TEXTS = ["hello world, this is a tiny corpus.", "the cat sat on the mat.", "red green blue"] * 5


@pytest.fixture(scope="module")
def tok():
    return T.load_default_tokenizer()


def test_shipped_folder_is_small_and_templateless():
    path = T.default_tokenizer_path()
    assert path == REPO_ROOT / "processing" / "tokenizer"
    assert sorted(p.name for p in path.iterdir()) == ["tokenizer.json", "tokenizer_config.json"]
    assert "chat_template" not in (path / "tokenizer_config.json").read_text()


def test_special_tokens(tok):
    assert len(tok) <= 1024
    assert [tok.convert_tokens_to_ids(t) for t in T.SPECIAL_TOKENS] == list(range(6))
    assert tok.eos_token == T.IM_END_TOKEN and tok.eos_token_id == 2
    assert tok.pad_token == T.ENDOFTEXT_TOKEN and tok.pad_token_id == 0
    assert tok.bos_token is None and tok.unk_token is None
    assert set(T.SPECIAL_TOKENS) <= set(tok.all_special_tokens)
    assert tok.model_max_length >= 32768
    # Special tokens are never split, even when glued to text, and add no BOS/EOS of their own.
    text = f"{T.IM_START_TOKEN}user\n{T.VISION_START_TOKEN}{T.IMAGE_TOKEN * 3}{T.VISION_END_TOKEN}hi{T.IM_END_TOKEN}"
    ids = tok(text)["input_ids"]
    assert ids[0] == 1 and ids[-1] == 2 and ids.count(5) == 3 and 3 in ids and 4 in ids
    assert tok.decode(ids) == text


def test_skip_special_tokens_drops_vision_tokens(tok):
    text = f"{T.VISION_START_TOKEN}{T.IMAGE_TOKEN}{T.IMAGE_TOKEN}{T.VISION_END_TOKEN}\nWhat color?{T.IM_END_TOKEN}"
    decoded = tok.decode(tok(text)["input_ids"], skip_special_tokens=True)
    assert decoded == "\nWhat color?"


def test_task_text_round_trips_in_few_tokens(tok):
    single_token = [*S.COLORS, *S.SHAPES, "1", "2", "3", "user", "assistant"]
    for answer in single_token:
        assert tok.encode(answer) and len(tok.encode(answer)) == 1, answer
    for position in S.POSITIONS:
        assert len(tok.encode(position)) <= 2, position
    rng_texts = list(S.corpus_texts(n_captions=200))
    for text in rng_texts + [S.normalize_answer(" Top Left. ")]:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
    # Task sentences are mostly whole-word tokens.
    question = "What color is the shape at the top left?"
    assert len(tok.encode(question)) <= len(question.split()) + 1


@pytest.mark.parametrize("text", [
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "naïve café — Grüße aus Köln; 日本語のテキスト; Привет; 🙂🚀 emoji",
    "  leading and trailing spaces  \n\ttabs\r\nwindows newline  ",
    "code: def f(x):\n    return x ** 2  # 100% {ok} <not|special>",
    "",
])
def test_arbitrary_text_round_trips(tok, text):
    assert tok.decode(tok.encode(text)) == text


def test_ensure_vlm_special_tokens_noop_when_present(tok):
    before = len(tok)
    assert T.ensure_vlm_special_tokens(tok) == []
    assert len(tok) == before
    assert [tok.convert_tokens_to_ids(t) for t in T.SPECIAL_TOKENS] == list(range(6))


def _tiny_tokenizer(special_tokens):
    """A tokenizer that knows only some of the VLM tokens, like a foreign base LM's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=list(special_tokens),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(TINY_TEXTS, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=special_tokens[0])


def test_ensure_vlm_special_tokens_adds_all_missing():
    tok = _tiny_tokenizer(["<|endoftext|>"])
    before = len(tok)
    added = T.ensure_vlm_special_tokens(tok)
    assert added == list(T.VLM_TOKENS)
    assert len(tok) == before + len(T.VLM_TOKENS)
    ids = [tok.convert_tokens_to_ids(t) for t in T.VLM_TOKENS]
    assert sorted(ids) == list(range(before, before + len(T.VLM_TOKENS)))
    text = f"{T.VISION_START_TOKEN}{T.IMAGE_TOKEN}{T.VISION_END_TOKEN}the cat"
    assert tok(text)["input_ids"][:3] == [ids[2], ids[4], ids[3]]
    assert tok.decode(tok(text)["input_ids"], skip_special_tokens=True) == "the cat"
    assert tok.eos_token == "<|endoftext|>"  # existing special tokens untouched
    assert T.ensure_vlm_special_tokens(tok) == []  # idempotent
    assert len(tok) == before + len(T.VLM_TOKENS)


def test_ensure_vlm_special_tokens_adds_only_missing():
    tok = _tiny_tokenizer(["<|endoftext|>", T.IM_START_TOKEN, T.IM_END_TOKEN])
    im_ids = [tok.convert_tokens_to_ids(t) for t in (T.IM_START_TOKEN, T.IM_END_TOKEN)]
    before = len(tok)
    assert T.ensure_vlm_special_tokens(tok) == list(VISION_TOKENS)
    assert len(tok) == before + 3
    assert [tok.convert_tokens_to_ids(t) for t in (T.IM_START_TOKEN, T.IM_END_TOKEN)] == im_ids


def test_ensure_vlm_special_tokens_promotes_plain_vocab_entry():
    """A token present as an ordinary vocab entry keeps its id but becomes special (unsplit, skippable)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "hello": 1, T.IMAGE_TOKEN: 2}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
    added = T.ensure_vlm_special_tokens(tok)
    assert T.IMAGE_TOKEN not in added and len(added) == 4
    assert tok.convert_tokens_to_ids(T.IMAGE_TOKEN) == 2
    assert T.IMAGE_TOKEN in tok.all_special_tokens
    assert tok.decode([1, 2], skip_special_tokens=True) == "hello"


def test_train_rejects_tiny_vocab():
    with pytest.raises(ValueError):
        T.train_bpe_tokenizer(TINY_TEXTS, vocab_size=100)


def test_train_save_load_roundtrip(tmp_path):
    tok = T.train_bpe_tokenizer(TINY_TEXTS, vocab_size=300)
    T.save_tokenizer(tok, tmp_path / "tok")
    loaded = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    assert len(loaded) == len(tok) <= 300
    assert [loaded.convert_tokens_to_ids(t) for t in T.SPECIAL_TOKENS] == list(range(6))
    assert loaded.encode("the cat sat") == tok.encode("the cat sat")


def test_cli_trains_loadable_tokenizer(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(TINY_TEXTS) + "\nünïcödé line\n", encoding="utf-8")
    out = tmp_path / "cli_tok"
    env = dict(os.environ)
    # The package may not be pip-installed in the test environment; point the child at this checkout.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "train_tokenizer.py"), "--output", str(out),
         "--input", str(corpus), "--vocab-size", "320"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    loaded = AutoTokenizer.from_pretrained(str(out))
    assert len(loaded) <= 320
    assert [loaded.convert_tokens_to_ids(t) for t in T.SPECIAL_TOKENS] == list(range(6))
    assert loaded.eos_token == T.IM_END_TOKEN and loaded.pad_token == T.ENDOFTEXT_TOKEN
    text = "the cat sat on a mat with ünïcödé"
    assert loaded.decode(loaded.encode(text)) == text


@pytest.mark.parametrize("pad,specials,expected_new", [
    ("<|im_end|>", ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], []),  # SmolLM2: pads with the end of turn
    (None, ["<|im_start|>", "<|im_end|>"], ["<|endoftext|>"]),  # Llama 3 style: no pad token, no <|endoftext|>
])
def test_ensure_distinct_pad_token_replaces_end_of_turn_padding(pad, specials, expected_new):
    tok = _tiny_tokenizer(specials)
    tok.pad_token = pad
    before = len(tok)
    assert T.ensure_distinct_pad_token(tok) == expected_new
    assert tok.pad_token == T.ENDOFTEXT_TOKEN and tok.pad_token_id != tok.convert_tokens_to_ids(T.IM_END_TOKEN)
    assert len(tok) == before + len(expected_new)
    assert T.ensure_distinct_pad_token(tok) == []  # idempotent


def test_ensure_distinct_pad_token_keeps_a_good_pad_token():
    tok = _tiny_tokenizer(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"])
    tok.pad_token = "<pad>"
    assert T.ensure_distinct_pad_token(tok) == [] and tok.pad_token == "<pad>"
