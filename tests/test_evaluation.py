"""Tests for processing/evaluation/exact_match.py and scripts/evaluate.py on a tiny saved model and synthetic eval rows.

Scoring is checked exactly by wrapping the model's `generate`: the real batched generation runs, then each row's
new tokens are replaced by a known answer (gold for even rows, wrong for odd ones), so accuracy must be exactly 0.5.
"""

import copy
import json
import os
import re
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from conftest import REPO_ROOT, tiny_model
from processing.evaluation.exact_match import UNTYPED, evaluate_model, read_rows
from processing.processors import build_processor
from processing.synthetic import make_dataset
from processing.tokenizers import load_default_tokenizer

N_EVAL = 8
TAG = re.compile(r"\(row (\d+)\)")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(model folder, data folder): tiny model + processor saved together, and 8 synthetic eval rows (48 px)."""
    root = tmp_path_factory.mktemp("eval")
    model = tiny_model()
    # Default init makes a random model repeat one token whatever the input; wider weights make answers differ
    # between rows, so the batched-vs-single comparison below can catch rows mixed up by padding.
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim >= 2:
                parameter.normal_(0.0, 0.3)
    model.save_pretrained(root / "model")
    config = model.config
    build_processor(load_default_tokenizer(), config.vision_config, config.image_seq_length).save_pretrained(
        root / "model"
    )
    make_dataset(root / "data", n_train=0, n_eval=N_EVAL, seed=0, image_size=48)
    return root / "model", root / "data"


@pytest.fixture(scope="module")
def loaded(saved):
    folder, _ = saved
    model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True).eval()
    return model, AutoProcessor.from_pretrained(folder, trust_remote_code=True)


@pytest.fixture(scope="module")
def rows(saved):
    return read_rows(saved[1] / "eval.jsonl")


def test_schema_and_counts(loaded, rows, saved):
    model, processor = loaded
    result = evaluate_model(model, processor, rows, image_root=saved[1], batch_size=3, max_new_tokens=3)
    assert set(result) >= {"overall", "per_type", "counts", "correct", "n", "skipped", "skip_reasons", "examples"}
    assert result["n"] == N_EVAL and result["skipped"] == 0 and result["skip_reasons"] == {}
    # make_dataset cycles the four question types over the eval rows.
    assert result["counts"] == {"color": 2, "count": 2, "position": 2, "shape": 2}
    assert sum(result["counts"].values()) == result["n"]
    assert set(result["per_type"]) == set(result["counts"])
    assert 0.0 <= result["overall"] <= 1.0
    assert result["overall"] == sum(result["correct"].values()) / result["n"]
    assert len(result["examples"]) == 5
    first = result["examples"][0]
    assert first["index"] == 0 and first["answer"] == rows[0]["conversations"][-1]["content"]
    assert "<image>" not in first["question"] and isinstance(first["prediction"], str)
    json.dumps(result)  # the script prints it as JSON


def test_batched_generation_matches_one_at_a_time(loaded, rows, saved):
    model, processor = loaded
    kwargs = dict(image_root=saved[1], max_new_tokens=4, num_examples=N_EVAL)
    batched = evaluate_model(model, processor, rows, batch_size=N_EVAL, **kwargs)["examples"]
    single = evaluate_model(model, processor, rows, batch_size=1, **kwargs)["examples"]
    predictions = [e["prediction"] for e in batched]
    assert len(set(predictions)) > 1, "the random model answers every row alike; the comparison would prove little"
    assert predictions == [e["prediction"] for e in single]


def tagged_rows(rows):
    """Copies of `rows` whose question names the row, so a generate wrapper can tell which row it is answering."""
    tagged = copy.deepcopy(rows)
    for index, row in enumerate(tagged):
        row["conversations"][0]["content"] += f" (row {index})"
    return tagged


def scripted_generate(model, processor, answers: dict[int, str], calls: list[int]):
    """Wrap `model.generate`: run it for real, then replace each row's new tokens by `answers[row]` + <|im_end|> +
    junk (tokens after the stop token must be ignored)."""
    tokenizer = processor.tokenizer
    real_generate = model.generate
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")

    def generate(input_ids, **kwargs):
        real = real_generate(input_ids=input_ids, **kwargs)
        assert torch.equal(real[:, : input_ids.shape[1]], input_ids)
        assert im_end in kwargs["eos_token_id"] and kwargs["do_sample"] is False
        calls.append(input_ids.shape[0])
        new = []
        for prompt in tokenizer.batch_decode(input_ids, skip_special_tokens=False):
            row = int(TAG.search(prompt).group(1))
            new.append(tokenizer.encode(answers[row], add_special_tokens=False) + [im_end]
                       + tokenizer.encode(" junk", add_special_tokens=False))
        width = max(len(tokens) for tokens in new)
        new = [tokens + [tokenizer.pad_token_id] * (width - len(tokens)) for tokens in new]
        return torch.cat([input_ids, torch.tensor(new, dtype=input_ids.dtype)], dim=1)

    return generate


def test_accuracy_is_exact_for_scripted_answers(loaded, rows, saved, monkeypatch):
    model, processor = loaded
    rows = tagged_rows(rows)
    gold = [row["conversations"][-1]["content"] for row in rows]
    # Even rows: the gold answer in another case with a final period (normalize_answer must accept it).
    answers = {i: (g.upper() + "." if i % 2 == 0 else "definitely wrong") for i, g in enumerate(gold)}
    calls: list[int] = []
    monkeypatch.setattr(model, "generate", scripted_generate(model, processor, answers, calls))
    result = evaluate_model(model, processor, rows, image_root=saved[1], batch_size=3, max_new_tokens=2,
                            num_examples=N_EVAL)
    assert calls == [3, 3, 2]  # batched, not row by row
    assert result["overall"] == 0.5 and result["n"] == N_EVAL
    # Types cycle color, shape, position, count: even rows are color and position.
    assert result["per_type"] == {"color": 1.0, "count": 0.0, "position": 1.0, "shape": 0.0}
    assert result["correct"] == {"color": 2, "count": 0, "position": 2, "shape": 0}
    assert [e["prediction"] for e in result["examples"]] == [answers[i] for i in range(N_EVAL)]
    assert [e["correct"] for e in result["examples"]] == [i % 2 == 0 for i in range(N_EVAL)]


def test_bad_rows_are_skipped_and_counted(loaded, rows, saved):
    model, processor = loaded
    good = copy.deepcopy(rows[:3])
    untyped = copy.deepcopy(rows[3])
    del untyped["type"]
    missing = {**rows[4], "image": "images/does_not_exist.png"}
    no_assistant = {**rows[5], "conversations": rows[5]["conversations"][:1]}
    two_placeholders = copy.deepcopy(rows[6])
    two_placeholders["conversations"][0]["content"] = "<image><image> twice?"
    bad = good + [untyped, missing, None, no_assistant, two_placeholders]
    result = evaluate_model(model, processor, bad, image_root=saved[1], batch_size=4, max_new_tokens=2)
    assert result["n"] == 4 and result["skipped"] == 4
    assert result["skip_reasons"] == {"bad_row": 2, "image_count_mismatch": 1, "missing_image": 1}
    assert result["counts"][UNTYPED] == 1 and sum(result["counts"].values()) == 4

    nothing = evaluate_model(model, processor, [missing], image_root=saved[1])
    assert nothing["n"] == 0 and nothing["overall"] is None and nothing["skipped"] == 1


def test_read_rows_limit_and_invalid_lines(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\nnot json\n\n{"b": 2}\n{"c": 3}\n', encoding="utf-8")
    assert read_rows(path) == [{"a": 1}, None, {"b": 2}, {"c": 3}]
    assert read_rows(path, limit=2) == [{"a": 1}, None]


def test_cli_prints_json(saved, tmp_path):
    folder, data = saved
    output = tmp_path / "out" / "result.json"
    # Run from an unrelated folder: image paths resolve against the data file's folder, not the CWD.
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "evaluate.py"), "--model", str(folder),
         "--data", str(data / "eval.jsonl"), "--limit", "5", "--batch-size", "2", "--max-new-tokens", "2",
         "--output", str(output)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},  # this checkout's code, not an installed copy
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["n"] == 5 and result["skipped"] == 0
    assert sum(result["counts"].values()) == 5 and set(result["per_type"]) == set(result["counts"])
    assert json.loads(output.read_text()) == result


def test_list_content_rows_evaluate_like_string_rows(loaded, rows, saved):
    """Rows in the chat-template form (list content) go through the same reader and give the same prompts."""
    model, processor = loaded
    listed = copy.deepcopy(rows[:4])
    for row in listed:
        user, reply = row["conversations"]
        user["content"] = [{"type": "image"}, {"type": "text", "text": user["content"].replace("<image>", "")}]
        reply["content"] = [{"type": "text", "text": reply["content"]}]
    kwargs = dict(image_root=saved[1], max_new_tokens=3, num_examples=4)
    as_lists = evaluate_model(model, processor, listed, **kwargs)
    as_strings = evaluate_model(model, processor, rows[:4], **kwargs)
    assert as_lists["n"] == 4 and as_lists == as_strings


def test_rows_naming_images_outside_the_root_are_skipped_unless_allowed(saved, tmp_path):
    from processing.evaluation.exact_match import evaluate_model, load_for_inference

    folder, data = saved
    row = json.loads((data / "eval.jsonl").read_text().splitlines()[0])
    outside = dict(row, image=str((data / row["image"]).resolve()))
    model, processor = load_for_inference(folder, "cpu")
    elsewhere = tmp_path / "root"
    elsewhere.mkdir()
    result = evaluate_model(model, processor, [outside], image_root=elsewhere, max_new_tokens=1)
    assert result["n"] == 0 and result["skip_reasons"] == {"image_outside_root": 1}
    allowed = evaluate_model(model, processor, [outside], image_root=elsewhere, max_new_tokens=1,
                             allow_outside_root=True)
    assert allowed["n"] == 1
