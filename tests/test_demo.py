"""The demo (processing/demo.py, run by scripts/demo.py), end to end at toy size: data, tokenizer, model, training,
evaluation, Auto reload, pipeline, loss curve, and the CLI's threshold. (The full demo — thousands of steps — is not
a CI test; its numbers are in README.md.)

Run: `python -m pytest tests/test_demo.py -q`.
"""

import json
import subprocess
import sys

from conftest import REPO_ROOT
from safetensors.torch import load_file

from processing.demo import VISION_POSITION_STD, DemoConfig, accuracy_line, run_demo


def test_demo_runs_end_to_end_at_toy_size(tmp_path):
    out = tmp_path / "demo"
    summary = run_demo(DemoConfig(output=str(out), train_images=48, eval_images=16, steps=6, batch_size=8,
                                  min_accuracy=0))
    assert set(summary["per_type"]) == {"color", "shape", "position", "count"}
    assert summary["n_eval"] == 16 and 0.0 <= summary["accuracy"] <= 1.0
    assert isinstance(summary["new_image"]["answer"], str) and summary["new_image"]["expected"]
    log = [json.loads(line) for line in (out / "model" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 7))
    assert (out / "loss_curve.png").stat().st_size > 10_000
    assert (out / "tokenizer" / "tokenizer.json").exists()
    # The untrained model carries the demo's wider vision position embeddings (README: what the recipe needs).
    init = load_file(out / "init" / "model.safetensors")
    positions = init["model.vision_tower.embeddings.position_embedding.weight"]
    assert abs(positions.std().item() - VISION_POSITION_STD) < 0.1 * VISION_POSITION_STD
    assert json.loads((out / "demo_summary.json").read_text())["accuracy"] == summary["accuracy"]
    assert summary["passed"]
    assert accuracy_line(summary, 0).startswith("held-out exact match:") and "PASS" in accuracy_line(summary, 0)


def test_demo_fails_below_its_threshold(tmp_path):
    """The CLI exits non-zero when held-out accuracy misses --min-accuracy, and says so on its last line."""
    out = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "demo.py"), "--output", str(out), "--train-images", "24",
         "--eval-images", "8", "--steps", "2", "--batch-size", "8", "--min-accuracy", "1.01"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 1, result.stderr[-2000:]
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("held-out exact match:") and "FAIL" in last, last
