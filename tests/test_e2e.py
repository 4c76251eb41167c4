"""End to end on a model that has really learned something: a tiny MiniMind-V trained for ~250 steps on a synthetic
"what is in the image?" task (single shape; answer "<colour> <shape>", 18 answers, chance 5.6%), saved, and used
the way a Hub user uses it.

Random weights hide cache bugs (a model that ignores its past looks just as random), so these tests check the
answers themselves: held-out accuracy well above chance with cached `generate` in a process that cannot import the
project, and every path that answers questions (cached and static-cache `generate`, the pipeline, the evaluator,
scripts/chat.py, scripts/evaluate.py) equal to uncached greedy decoding, token for token.
"""

import json
import os
import random
import subprocess
import sys

import pytest
from conftest import REPO_ROOT, run_isolated
from helpers_shapes import QUESTION, save_untrained_model, write_shape_rows


TRAIN_ROWS, EVAL_ROWS, STEPS = 2000, 40, 250
MAX_NEW_TOKENS = 6


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(folder of the trained model, eval rows): trained through scripts/train.py, the path users run."""
    root = tmp_path_factory.mktemp("e2e")
    rng = random.Random(0)
    for split, n in (("train", TRAIN_ROWS), ("eval", EVAL_ROWS)):
        write_shape_rows(root, split, n, rng)
    save_untrained_model(root / "init")
    subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "train.py"), "--model", str(root / "init"), "--data",
         str(root / "train.jsonl"), "--output", str(root / "model"), "--train", "vision,projector,decoder",
         "--max-steps", str(STEPS), "--batch-size", "32", "--lr", "3e-3", "--warmup-ratio", "0.05",
         "--weight-decay", "0", "--seed", "0"],
        check=True, capture_output=True, timeout=600,
    )
    return root


# The child cannot import this project: it has only what the saved folder carries (remote code).
ANSWER_ALL = """
import json, sys
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, pipeline

root = sys.argv[1]
model = AutoModelForImageTextToText.from_pretrained(root + "/model", trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained(root + "/model", trust_remote_code=True)
pipe = pipeline("image-text-to-text", model=model, processor=processor)
rows = [json.loads(line) for line in open(root + "/eval.jsonl")]
results = []
for row in rows:
    image = Image.open(root + "/" + row["image"]).convert("RGB")
    messages = [{"role": "user", "content": [{"type": "image", "image": image},
                                             {"type": "text", "text": "What is in the image?"}]}]
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                           return_tensors="pt")
    n = inputs["input_ids"].shape[1]
    outs = {}
    with torch.inference_mode():
        for name, kwargs in {"uncached": {"use_cache": False}, "cached": {}, "static": {"cache_implementation": "static"}}.items():
            ids = model.generate(**inputs, max_new_tokens=MAX_NEW, do_sample=False, **kwargs)[0, n:]
            outs[name] = ids.tolist()
    outs["pipeline"] = pipe(text=messages, max_new_tokens=MAX_NEW, do_sample=False, return_full_text=False)[0]["generated_text"]
    outs["text"] = processor.decode(outs["uncached"], skip_special_tokens=True)
    outs["cached_text"] = processor.decode(outs["cached"], skip_special_tokens=True)
    outs["gold"] = row["conversations"][1]["content"]
    results.append(outs)
print(json.dumps(results))
""".replace("MAX_NEW", str(MAX_NEW_TOKENS))


@pytest.fixture(scope="module")
def answers(trained):
    result = run_isolated(f"import sys; sys.argv = ['x', {str(trained)!r}]\n" + ANSWER_ALL, trained, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_cached_generate_answers_held_out_questions_in_a_clean_process(answers):
    correct = sum(a["cached_text"].strip() == a["gold"] for a in answers)
    assert correct / len(answers) >= 0.5, [(a["cached_text"], a["gold"]) for a in answers[:10]]  # chance: 1/18


@pytest.mark.parametrize("path", ["cached", "static"])
def test_cached_and_static_generate_equal_uncached_token_for_token(answers, path):
    for a in answers:
        assert a[path] == a["uncached"], (path, a)


def test_pipeline_equals_uncached_greedy(answers):
    for a in answers:
        assert a["pipeline"].strip() == a["text"].strip(), a


def test_evaluator_and_evaluate_cli_equal_uncached_greedy(trained, answers):
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "evaluate.py"), "--model", str(trained / "model"), "--data",
         str(trained / "eval.jsonl"), "--examples", str(EVAL_ROWS), "--max-new-tokens", str(MAX_NEW_TOKENS),
         "--batch-size", "16"],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},  # this checkout's code, not an installed copy
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    predictions = {example["index"]: example["prediction"] for example in report["examples"]}
    assert len(predictions) == EVAL_ROWS
    for index, a in enumerate(answers):
        assert predictions[index].strip() == a["text"].strip(), (index, predictions[index], a)
    assert report["overall"] == pytest.approx(sum(a["text"].strip() == a["gold"] for a in answers) / EVAL_ROWS)


def test_chat_cli_equals_uncached_greedy(trained, answers):
    row = json.loads((trained / "eval.jsonl").read_text().splitlines()[0])
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "chat.py"), "--model", str(trained / "model"), "--image",
         str(trained / row["image"]), "--prompt", QUESTION, "--temperature", "0", "--max-new-tokens",
         str(MAX_NEW_TOKENS), "--device", "cpu"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == answers[0]["text"].strip()
