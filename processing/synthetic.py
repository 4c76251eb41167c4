"""Synthetic image-text task: coloured shapes on a 3x3 grid.

A deterministic, exactly-evaluable task that shows whether the VLM learns to read images. Each image has 1..3 objects
(colour + shape) in distinct cells of a 3x3 grid on a white background. From the scene we derive

* caption rows (pretraining): "Describe the image." -> "a red circle at the top left and a blue square at the center."
* multi-turn QA rows (SFT) and single-turn QA rows (evaluation) with four question types (color, shape, position,
  count) whose answers are short canonical strings.

Rows are JSONL objects ``{"conversations": [...], "image": "images/x.png", "type": ..., "objects": [...]}``; the literal
``<image>`` in the first user turn marks where the image goes. All randomness flows through ``random.Random``
instances so the same seed gives byte-identical files.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from .rows import IMAGE_PLACEHOLDER, RowError, iter_jsonl

logger = logging.getLogger(__name__)

# Saturated and far apart in RGB so even a tiny vision encoder (and the tests) can tell them apart.
COLOR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 80, 220),
    "yellow": (240, 200, 20),
    "purple": (140, 50, 200),
    "orange": (250, 130, 20),
}
COLORS: tuple[str, ...] = tuple(COLOR_RGB)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
# Row-major order: index // 3 is the grid row, index % 3 the column. Also the order objects are captioned in.
POSITIONS: tuple[str, ...] = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)
QUESTION_TYPES: tuple[str, ...] = ("color", "shape", "position", "count")
BACKGROUND = (255, 255, 255)
MIN_IMAGE_SIZE = 18  # 6 px cells; smaller, and circles rasterise like squares or triangles
MAX_OBJECTS = 3

# How a cell is referred to inside a sentence ("the shape on the left", "a red circle at the top").
POSITION_PHRASES: dict[str, str] = {
    p: ("on the " + p if p in ("left", "right") else "at the " + p) for p in POSITIONS
}

# A few fixed phrasings per prompt kind: enough variety to not overfit one string, few enough for a tiny model.
CAPTION_PROMPTS: tuple[str, ...] = (
    "Describe the image.",
    "What is in the image?",
    "Describe what you see.",
    "Give a short description of the image.",
)
QUESTION_TEMPLATES: dict[str, tuple[str, ...]] = {
    "color": (
        "What color is the shape {where}?",
        "What is the color of the shape {where}?",
        "Which color does the shape {where} have?",
    ),
    "shape": (
        "What shape is {where}?",
        "Which shape is {where}?",
        "What kind of shape is {where}?",
    ),
    "position": (
        "Where is the {color} {shape}?",
        "What is the position of the {color} {shape}?",
        "In which cell is the {color} {shape}?",
    ),
    "count": (
        "How many shapes are there?",
        "How many shapes are in the image?",
        "Count the shapes in the image.",
    ),
}
# Role names the chat template writes after <|im_start|>; part of the text the tokenizer should know.
CHAT_ROLES: tuple[str, ...] = ("system", "user", "assistant")


# ----------------------------------------------------------------------------------------------------------------------
# Scenes and rendering
# ----------------------------------------------------------------------------------------------------------------------

def _check_image_size(image_size: int) -> None:
    if not isinstance(image_size, int) or image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be an int >= {MIN_IMAGE_SIZE}, got {image_size!r}")


def cell_box(cell: str, image_size: int) -> tuple[int, int, int, int]:
    """Pixel box ``(x0, y0, x1, y1)`` (end-exclusive) of a grid cell; cells tile the image even when size % 3 != 0."""
    _check_image_size(image_size)
    index = POSITIONS.index(cell)
    row, col = divmod(index, 3)
    bounds = [i * image_size // 3 for i in range(4)]
    return bounds[col], bounds[row], bounds[col + 1], bounds[row + 1]


def cell_center(cell: str, image_size: int) -> tuple[int, int]:
    """Integer pixel at the middle of a cell; every shape covers it (used by tests and sanity checks)."""
    x0, y0, x1, y1 = cell_box(cell, image_size)
    return (x0 + x1 - 1) // 2, (y0 + y1 - 1) // 2


def _validate_objects(objects: Sequence[dict]) -> None:
    cells = [o["cell"] for o in objects]
    pairs = [(o["color"], o["shape"]) for o in objects]
    if len(set(cells)) != len(cells):
        raise ValueError(f"objects must occupy distinct cells: {cells}")
    if len(set(pairs)) != len(pairs):
        raise ValueError(f"(color, shape) pairs must be unique within an image: {pairs}")
    for o in objects:
        if o["color"] not in COLOR_RGB or o["shape"] not in SHAPES or o["cell"] not in POSITIONS:
            raise ValueError(f"unknown color/shape/cell in {o}")


def render_image(objects: Sequence[dict], image_size: int = 224) -> Image.Image:
    """Draw the scene as an RGB image: each shape centred in its cell, filling most of it, on white."""
    _check_image_size(image_size)
    _validate_objects(objects)
    image = Image.new("RGB", (image_size, image_size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for obj in objects:
        x0, y0, x1, y1 = cell_box(obj["cell"], image_size)
        # Cells may differ by a pixel when size % 3 != 0: use a square of the smaller side so shapes keep their form.
        side = min(x1 - x0, y1 - y0)
        margin = max(1, round(side * 0.12))
        extent = side - 2 * margin  # shape width/height in pixels
        left = x0 + (x1 - x0 - extent) // 2
        top = y0 + (y1 - y0 - extent) // 2
        # PIL boxes are end-inclusive.
        right, bottom = left + extent - 1, top + extent - 1
        fill = COLOR_RGB[obj["color"]]
        if obj["shape"] == "circle":
            draw.ellipse((left, top, right, bottom), fill=fill)
        elif obj["shape"] == "square":
            draw.rectangle((left, top, right, bottom), fill=fill)
        else:  # triangle, apex up
            draw.polygon([((left + right) / 2, top), (left, bottom), (right, bottom)], fill=fill)
    return image


def sample_scene(rng: random.Random) -> list[dict]:
    """1..3 objects in distinct cells with unique (color, shape) pairs, sorted in reading order."""
    n_objects = rng.randint(1, MAX_OBJECTS)
    cells = rng.sample(POSITIONS, n_objects)
    pairs = rng.sample([(c, s) for c in COLORS for s in SHAPES], n_objects)
    objects = [{"color": c, "shape": s, "cell": cell} for (c, s), cell in zip(pairs, cells)]
    return sorted(objects, key=lambda o: POSITIONS.index(o["cell"]))


def scene_key(objects: Sequence[dict]) -> tuple:
    """Hashable identity of a scene (two scenes with the same key render to the same image)."""
    return tuple(sorted((o["cell"], o["color"], o["shape"]) for o in objects))


# ----------------------------------------------------------------------------------------------------------------------
# Text: captions, questions, answers
# ----------------------------------------------------------------------------------------------------------------------

def _noun_phrase(obj: dict) -> str:
    article = "an" if obj["color"][0] in "aeiou" else "a"
    return f"{article} {obj['color']} {obj['shape']}"


def caption(objects: Sequence[dict]) -> str:
    """Canonical caption, objects in reading order: "a red circle at the top left and a blue square at the center." """
    ordered = sorted(objects, key=lambda o: POSITIONS.index(o["cell"]))
    parts = [f"{_noun_phrase(o)} {POSITION_PHRASES[o['cell']]}" for o in ordered]
    if not parts:
        return "an empty image."
    text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return text + "."


def answer_question(qtype: str, objects: Sequence[dict], target: dict | None = None) -> str:
    """The canonical answer for a question of ``qtype`` about ``target`` (ignored for "count")."""
    if qtype == "count":
        return str(len(objects))
    if target is None:
        raise ValueError(f"question type {qtype!r} needs a target object")
    if qtype == "color":
        return target["color"]
    if qtype == "shape":
        return target["shape"]
    if qtype == "position":
        return target["cell"]
    raise ValueError(f"unknown question type {qtype!r}")


def make_question(
    qtype: str, objects: Sequence[dict], rng: random.Random, target: dict | None = None
) -> tuple[str, str, dict | None]:
    """Pick a phrasing (and a target object if none is given); return ``(question, answer, target)``."""
    if qtype not in QUESTION_TEMPLATES:
        raise ValueError(f"unknown question type {qtype!r}")
    template = rng.choice(QUESTION_TEMPLATES[qtype])
    if qtype == "count":
        target = None
    elif target is None:
        target = rng.choice(list(objects))
    fields = {}
    if target is not None:
        fields = {"where": POSITION_PHRASES[target["cell"]], "color": target["color"], "shape": target["shape"]}
    return template.format(**fields), answer_question(qtype, objects, target), target


def normalize_answer(text: str) -> str:
    """Loose canonical form for exact-match scoring of generated answers (case, outer spaces, final period)."""
    return " ".join(text.strip().lower().rstrip(".").split())


def _user(content: str) -> dict:
    return {"role": "user", "content": content}


def _assistant(content: str) -> dict:
    return {"role": "assistant", "content": content}


def caption_row(objects: Sequence[dict], image: str, rng: random.Random) -> dict:
    prompt = rng.choice(CAPTION_PROMPTS)
    return {
        "conversations": [_user(f"{IMAGE_PLACEHOLDER}\n{prompt}"), _assistant(caption(objects))],
        "image": image,
        "type": "caption",
        "objects": [dict(o) for o in objects],
    }


def qa_row(objects: Sequence[dict], image: str, rng: random.Random, qtypes: Sequence[str]) -> dict:
    """One QA conversation with a turn per entry of ``qtypes``; ``type`` is the question type when single-turn."""
    conversations = []
    for turn, qtype in enumerate(qtypes):
        question, answer, _ = make_question(qtype, objects, rng)
        if turn == 0:
            question = f"{IMAGE_PLACEHOLDER}\n{question}"
        conversations += [_user(question), _assistant(answer)]
    return {
        "conversations": conversations,
        "image": image,
        "type": qtypes[0] if len(qtypes) == 1 else "qa",
        "objects": [dict(o) for o in objects],
    }


def corpus_texts(n_captions: int = 2000, seed: int = 0) -> Iterator[str]:
    """Every kind of text the task produces (prompts, all questions, all answers, captions), for tokenizer training.

    Questions and answers are enumerated exhaustively; captions are all single-object ones plus ``n_captions``
    random multi-object ones (the full set is ~400k and adds no new words).
    """
    yield from CHAT_ROLES
    yield IMAGE_PLACEHOLDER
    yield from CAPTION_PROMPTS
    for qtype, templates in QUESTION_TEMPLATES.items():
        for template in templates:
            for cell in POSITIONS:
                for color in COLORS:
                    for shape in SHAPES:
                        # Mirror a chat turn (role name, question, role name, answer) so the role names the chat
                        # template writes and the answer words (which start a turn, with no leading space) are
                        # frequent enough to become single tokens.
                        yield "user"
                        yield template.format(where=POSITION_PHRASES[cell], color=color, shape=shape)
                        yield "assistant"
                        if qtype == "count":
                            yield str(1 + POSITIONS.index(cell) % MAX_OBJECTS)  # cycles through the possible counts
                        else:
                            target = {"color": color, "shape": shape, "cell": cell}
                            yield answer_question(qtype, [target], target)
    for cell in POSITIONS:
        for color in COLORS:
            for shape in SHAPES:
                yield caption([{"color": color, "shape": shape, "cell": cell}])
    rng = random.Random(f"minimind-v/corpus/{seed}")
    for _ in range(n_captions):
        yield caption(sample_scene(rng))


# ----------------------------------------------------------------------------------------------------------------------
# Dataset files
# ----------------------------------------------------------------------------------------------------------------------

def _write_jsonl(path: Path, rows: Iterable[dict]) -> int:
    count = 0
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count


def read_jsonl(path: str | Path) -> list[dict]:
    """Load a JSONL file written by :func:`make_dataset` (a line that is not JSON is an error here)."""
    rows = []
    for where, row in iter_jsonl(path):
        if isinstance(row, RowError):
            raise ValueError(f"{where}: {row}")
        rows.append(row)
    return rows


def make_dataset(
    output_dir: str | Path,
    n_train: int,
    n_eval: int,
    seed: int = 0,
    image_size: int = 224,
    min_turns: int = 2,
    max_turns: int = 4,
) -> dict:
    """Write images, ``pretrain.jsonl``, ``sft.jsonl``, ``eval.jsonl`` and ``meta.json`` under ``output_dir``.

    Train and eval scenes come from separate seeded streams, and eval scenes that coincide with any train scene (or
    an earlier eval scene) are re-drawn, so no eval image is seen in training. Eval question types cycle through
    ``QUESTION_TYPES`` so they are balanced. Returns the meta dict plus absolute ``paths``.
    """
    _check_image_size(image_size)
    if n_train < 0 or n_eval < 0:
        raise ValueError("n_train and n_eval must be >= 0")
    if not 1 <= min_turns <= max_turns <= len(QUESTION_TYPES):
        raise ValueError(f"need 1 <= min_turns <= max_turns <= {len(QUESTION_TYPES)}")
    out = Path(output_dir)
    image_dir = out / "images"
    image_dir.mkdir(parents=True, exist_ok=True)

    # Separate streams (string seeds hash deterministically) so changing n_train doesn't change the eval set's text rng.
    scene_rng = random.Random(f"minimind-v/train-scenes/{seed}")
    text_rng = random.Random(f"minimind-v/train-text/{seed}")
    eval_scene_rng = random.Random(f"minimind-v/eval-scenes/{seed}")
    eval_text_rng = random.Random(f"minimind-v/eval-text/{seed}")

    pretrain_rows, sft_rows, eval_rows = [], [], []
    seen: set[tuple] = set()
    for i in range(n_train):
        objects = sample_scene(scene_rng)
        seen.add(scene_key(objects))
        rel = f"images/train_{i:06d}.png"
        render_image(objects, image_size).save(out / rel)
        pretrain_rows.append(caption_row(objects, rel, text_rng))
        n_turns = text_rng.randint(min_turns, max_turns)
        # Distinct question types per conversation keeps the four types balanced across the SFT set.
        sft_rows.append(qa_row(objects, rel, text_rng, text_rng.sample(QUESTION_TYPES, n_turns)))

    max_attempts = 1000
    for i in range(n_eval):
        for _ in range(max_attempts):
            objects = sample_scene(eval_scene_rng)
            if scene_key(objects) not in seen:
                break
        else:
            raise ValueError("could not draw an eval scene disjoint from the train scenes; use fewer images")
        seen.add(scene_key(objects))
        rel = f"images/eval_{i:06d}.png"
        render_image(objects, image_size).save(out / rel)
        eval_rows.append(qa_row(objects, rel, eval_text_rng, [QUESTION_TYPES[i % len(QUESTION_TYPES)]]))

    files = {"pretrain": "pretrain.jsonl", "sft": "sft.jsonl", "eval": "eval.jsonl", "images": "images"}
    _write_jsonl(out / files["pretrain"], pretrain_rows)
    _write_jsonl(out / files["sft"], sft_rows)
    _write_jsonl(out / files["eval"], eval_rows)

    meta = {
        "task": "minimind-v synthetic shapes",
        "seed": seed,
        "image_size": image_size,
        "n_train": n_train,
        "n_eval": n_eval,
        "counts": {
            "train_images": n_train,
            "eval_images": n_eval,
            "pretrain_rows": len(pretrain_rows),
            "sft_rows": len(sft_rows),
            "sft_turns": sum(len(r["conversations"]) // 2 for r in sft_rows),
            "eval_rows": len(eval_rows),
            "eval_per_type": {t: sum(r["type"] == t for r in eval_rows) for t in QUESTION_TYPES},
        },
        "colors": {name: list(rgb) for name, rgb in COLOR_RGB.items()},
        "shapes": list(SHAPES),
        "positions": list(POSITIONS),
        "question_types": list(QUESTION_TYPES),
        "image_placeholder": IMAGE_PLACEHOLDER,
        "files": files,
    }
    with open(out / "meta.json", "w", encoding="utf-8", newline="\n") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    logger.info("wrote %d train / %d eval images (%d px) to %s", n_train, n_eval, image_size, out)
    return {**meta, "output_dir": str(out.resolve()), "paths": {k: str((out / v).resolve()) for k, v in files.items()}}
