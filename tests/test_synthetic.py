"""Tests for the synthetic coloured-shapes task: determinism, held-out eval, answers consistent with the pixels."""

import json
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from processing import synthetic as S

REPO_ROOT = Path(__file__).resolve().parents[1]
N_TRAIN, N_EVAL = 60, 40
JSONL_FILES = ("pretrain.jsonl", "sft.jsonl", "eval.jsonl")


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """Same seed twice (48 px), another seed, and a size not divisible by 3."""
    root = tmp_path_factory.mktemp("synthetic")
    made = {}
    for name, seed, size in (("a", 0, 48), ("b", 0, 48), ("other_seed", 1, 48), ("size50", 3, 50)):
        S.make_dataset(root / name, N_TRAIN, N_EVAL, seed=seed, image_size=size)
        made[name] = root / name
    return made


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


# ---- decoding a scene back from pixels, independently of the stored "objects" --------------------------------------

def _nearest_color(rgb) -> str:
    return min(S.COLOR_RGB, key=lambda c: sum((int(a) - b) ** 2 for a, b in zip(rgb, S.COLOR_RGB[c])))


def _scene_from_pixels(img: np.ndarray) -> list[dict]:
    size = img.shape[0]
    objects = []
    for cell in S.POSITIONS:
        cx, cy = S.cell_center(cell, size)
        if tuple(img[cy, cx]) == S.BACKGROUND:
            continue
        color = _nearest_color(img[cy, cx])
        assert tuple(img[cy, cx]) == S.COLOR_RGB[color], "drawn colours must be exact (no antialiasing)"
        x0, y0, x1, y1 = S.cell_box(cell, size)
        mask = (img[y0:y1, x0:x1] != 255).any(-1)
        ys, xs = np.nonzero(mask)
        # Fill ratio of the bounding box: square ~1, circle ~0.78, triangle ~0.5.
        fill = mask.sum() / ((np.ptp(ys) + 1) * (np.ptp(xs) + 1))
        shape = "square" if fill > 0.9 else "circle" if fill > 0.65 else "triangle"
        objects.append({"color": color, "shape": shape, "cell": cell})
    return objects


def _question_index() -> dict[str, tuple[str, dict]]:
    """Every question the templates can produce -> (type, slots it names)."""
    index = {}
    for qtype, templates in S.QUESTION_TEMPLATES.items():
        for template in templates:
            for cell in S.POSITIONS:
                for color in S.COLORS:
                    for shape in S.SHAPES:
                        q = template.format(where=S.POSITION_PHRASES[cell], color=color, shape=shape)
                        slots = {"cell": cell} if qtype in ("color", "shape") else {}
                        if qtype == "position":
                            slots = {"color": color, "shape": shape}
                        index[q] = (qtype, slots)
    return index


QUESTIONS = _question_index()


def _answer_from_scene(qtype: str, slots: dict, scene: list[dict]) -> str:
    if qtype == "count":
        return str(len(scene))
    if qtype == "position":
        (match,) = [o for o in scene if o["color"] == slots["color"] and o["shape"] == slots["shape"]]
        return match["cell"]
    (match,) = [o for o in scene if o["cell"] == slots["cell"]]
    return match[qtype]


# ---- tests -----------------------------------------------------------------------------------------------------------

def test_render_known_scene_and_caption():
    objects = [{"color": "red", "shape": "circle", "cell": "top left"},
               {"color": "blue", "shape": "square", "cell": "center"}]
    assert S.caption(objects) == "a red circle at the top left and a blue square at the center."
    assert S.caption(objects[::-1]) == S.caption(objects)  # reading order, not list order
    three = objects + [{"color": "orange", "shape": "triangle", "cell": "left"}]
    assert S.caption(three) == ("a red circle at the top left, an orange triangle on the left "
                                "and a blue square at the center.")
    for size in (18, 48, 50, 224):
        img = np.asarray(S.render_image(three, size))
        assert img.shape == (size, size, 3)
        assert _scene_from_pixels(img) == sorted(three, key=lambda o: S.POSITIONS.index(o["cell"]))


def test_render_rejects_ambiguous_scenes():
    with pytest.raises(ValueError):
        S.render_image([{"color": "red", "shape": "circle", "cell": "top"}] * 2, 48)
    with pytest.raises(ValueError):
        S.render_image([{"color": "red", "shape": "circle", "cell": "top"},
                        {"color": "red", "shape": "circle", "cell": "left"}], 48)
    with pytest.raises(ValueError):
        S.render_image([], 10)


def test_sample_scene_invariants():
    rng = random.Random(123)
    sizes = Counter()
    for _ in range(2000):
        scene = S.sample_scene(rng)
        sizes[len(scene)] += 1
        assert len({o["cell"] for o in scene}) == len(scene)
        assert len({(o["color"], o["shape"]) for o in scene}) == len(scene)
        assert [o["cell"] for o in scene] == sorted((o["cell"] for o in scene), key=S.POSITIONS.index)
    assert set(sizes) == {1, 2, 3}


def test_deterministic(datasets):
    a, b, other = datasets["a"], datasets["b"], datasets["other_seed"]
    for name in JSONL_FILES + ("meta.json",):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    images = sorted(p.name for p in (a / "images").iterdir())
    assert images == sorted(p.name for p in (b / "images").iterdir())
    assert len(images) == N_TRAIN + N_EVAL
    for name in images:
        assert np.array_equal(_pixels(a / "images" / name), _pixels(b / "images" / name)), name
    for name in JSONL_FILES:
        assert (a / name).read_bytes() != (other / name).read_bytes(), name


def test_meta(datasets):
    meta = json.loads((datasets["size50"] / "meta.json").read_text())
    assert meta["seed"] == 3 and meta["image_size"] == 50
    assert meta["n_train"] == N_TRAIN and meta["n_eval"] == N_EVAL
    assert meta["shapes"] == list(S.SHAPES) and meta["positions"] == list(S.POSITIONS)
    assert list(meta["colors"]) == list(S.COLORS)
    assert meta["counts"]["eval_per_type"] == {t: N_EVAL // 4 for t in S.QUESTION_TYPES}


def test_eval_disjoint_from_train(datasets):
    for name in ("a", "size50"):
        root = datasets[name]
        train = S.read_jsonl(root / "sft.jsonl")
        evals = S.read_jsonl(root / "eval.jsonl")
        assert {r["image"] for r in train} == {r["image"] for r in S.read_jsonl(root / "pretrain.jsonl")}
        assert not {r["image"] for r in train} & {r["image"] for r in evals}
        train_pixels = {_pixels(root / r["image"]).tobytes() for r in train}
        eval_pixels = [_pixels(root / r["image"]).tobytes() for r in evals]
        assert not train_pixels & set(eval_pixels)
        assert len(set(eval_pixels)) == len(eval_pixels)


def test_eval_rows_single_turn_and_balanced(datasets):
    evals = S.read_jsonl(datasets["a"] / "eval.jsonl")
    assert len(evals) == N_EVAL
    assert Counter(r["type"] for r in evals) == {t: N_EVAL // 4 for t in S.QUESTION_TYPES}
    for row in evals:
        assert [m["role"] for m in row["conversations"]] == ["user", "assistant"]
        question = row["conversations"][0]["content"].removeprefix(S.IMAGE_PLACEHOLDER + "\n")
        assert QUESTIONS[question][0] == row["type"]


@pytest.mark.parametrize("name", ["a", "size50"])
def test_rows_consistent_with_pixels(datasets, name):
    root = datasets[name]
    for file in JSONL_FILES:
        for row in S.read_jsonl(root / file):
            conv = row["conversations"]
            assert [m["role"] for m in conv] == ["user", "assistant"] * (len(conv) // 2) and conv
            # Exactly one <image>, at the start of the first user turn.
            assert sum(m["content"].count(S.IMAGE_PLACEHOLDER) for m in conv) == 1
            assert conv[0]["content"].startswith(S.IMAGE_PLACEHOLDER + "\n")
            scene = _scene_from_pixels(_pixels(root / row["image"]))
            assert scene == row["objects"]
            if file == "pretrain.jsonl":
                assert row["type"] == "caption"
                assert conv[0]["content"].split("\n", 1)[1] in S.CAPTION_PROMPTS
                assert conv[1]["content"] == S.caption(scene)
                continue
            if file == "sft.jsonl":
                assert 2 <= len(conv) // 2 <= 4
            for user, assistant in zip(conv[::2], conv[1::2]):
                question = user["content"].removeprefix(S.IMAGE_PLACEHOLDER + "\n")
                qtype, slots = QUESTIONS[question]
                assert assistant["content"] == _answer_from_scene(qtype, slots, scene), question


def test_sft_covers_all_question_types(datasets):
    types = Counter()
    for row in S.read_jsonl(datasets["a"] / "sft.jsonl"):
        for user in row["conversations"][::2]:
            types[QUESTIONS[user["content"].removeprefix(S.IMAGE_PLACEHOLDER + "\n")][0]] += 1
    assert set(types) == set(S.QUESTION_TYPES)
    assert min(types.values()) > 0.15 * sum(types.values())


def test_corpus_covers_task_text():
    corpus = set(S.corpus_texts(n_captions=50))
    assert set(QUESTIONS) <= corpus
    assert set(S.CAPTION_PROMPTS) <= corpus
    assert {*S.COLORS, *S.SHAPES, *S.POSITIONS, "1", "2", "3"} <= corpus


def test_normalize_answer():
    assert S.normalize_answer("  Top  Left.\n") == "top left"


def test_cli(tmp_path):
    out = tmp_path / "cli"
    env = dict(os.environ)
    # The package may not be pip-installed in the test environment; point the child at this checkout.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "make_synthetic.py"), "--output", str(out),
         "--train", "8", "--eval", "4", "--seed", "5", "--image-size", "50"],
        capture_output=True, text=True, env=env, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    meta = json.loads((out / "meta.json").read_text())
    assert meta["image_size"] == 50 and meta["seed"] == 5
    assert len(S.read_jsonl(out / "pretrain.jsonl")) == 8 and len(S.read_jsonl(out / "eval.jsonl")) == 4
    assert Image.open(out / "images" / "eval_000003.png").size == (50, 50)
