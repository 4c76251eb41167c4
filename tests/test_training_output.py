"""Tests for processing/training/output.py and how scripts/train.py uses it: a fresh run refuses a folder holding a
model or an earlier run's logs, --overwrite keeps the old logs and writes a fresh model card, the final save is atomic
and never touches the user's other files."""

import json

import pytest

from processing.training.config import ACCELERATE, parse_train_args
from processing.training.output import FINAL_TMP, archive_logs, check_output, save_final
from processing.training.trainer import train


def _args(shapes_data, output, *extra):
    return ["--config", "tiny", "--data", str(shapes_data / "sft.jsonl"), "--output", str(output), "--max-steps", "2",
            "--batch-size", "4", "--num-threads", "1", *extra]


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


@pytest.mark.parametrize("existing", [
    {"train_log.jsonl": '{"step": 1, "loss": 3.0}\n'},
    {"config.json": json.dumps({"model_type": "llama"}), "model.safetensors": "weights"},
    {"eval_log.jsonl": "{}\n", "notes.txt": "mine"},
])
def test_a_fresh_run_refuses_a_folder_of_an_earlier_run_and_changes_nothing(shapes_data, tmp_path, existing):
    output = tmp_path / "out"
    output.mkdir()
    for name, text in existing.items():
        (output / name).write_text(text)
    before = _snapshot(output)
    with pytest.raises(ValueError, match="already holds .*--overwrite"):
        train(parse_train_args(_args(shapes_data, output), ACCELERATE))
    assert _snapshot(output) == before and sorted(p.name for p in output.iterdir()) == sorted(existing)


def test_refusal_names_another_models_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen3"}))
    with pytest.raises(ValueError, match="a model \\(model_type 'qwen3'\\)"):
        check_output(tmp_path, fresh_run=True, overwrite=False)
    check_output(tmp_path, fresh_run=False, overwrite=False)  # resuming: the folder is the run's own
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        check_output(tmp_path / "file", fresh_run=True, overwrite=True)


def test_overwrite_keeps_old_logs_replaces_the_model_and_its_card(shapes_data, tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    old_log = '{"step": 1, "loss": 9.0}\n'
    (output / "train_log.jsonl").write_text(old_log)
    (output / "train_log.previous-1.jsonl").write_text("older\n")
    (output / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 4096}))
    (output / "README.md").write_text("# a 7B llama model card (stale)")
    (output / "model-00002-of-00002.safetensors").write_text("stale shard")
    (output / "notes.txt").write_text("the user's own file")
    train(parse_train_args(_args(shapes_data, output, "--overwrite"), ACCELERATE))
    assert (output / "train_log.previous-2.jsonl").read_text() == old_log  # kept, never deleted
    assert (output / "train_log.previous-1.jsonl").read_text() == "older\n"
    assert len((output / "train_log.jsonl").read_text().splitlines()) == 2  # the new run's log
    assert json.loads((output / "config.json").read_text())["model_type"] == "minimind_v"
    card = (output / "README.md").read_text()
    assert "stale" not in card and "MiniMind-V" in card
    assert not (output / "model-00002-of-00002.safetensors").exists()
    assert (output / "notes.txt").read_text() == "the user's own file"
    assert not (output / FINAL_TMP).exists()


def test_final_save_is_atomic_when_writing_fails(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "old"}')
    (tmp_path / "model.safetensors").write_text("old weights")
    before = _snapshot(tmp_path)

    def write(folder):
        (folder / "model.safetensors").write_text("new weights")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_final(tmp_path, write)
    assert _snapshot(tmp_path) == before

    def good(folder):
        (folder / "model.safetensors").write_text("new weights")
        (folder / "config.json").write_text('{"model_type": "new"}')

    save_final(tmp_path, good)
    assert _snapshot(tmp_path) == {"config.json": b'{"model_type": "new"}', "model.safetensors": b"new weights"}


def test_archive_logs_picks_the_first_free_number(tmp_path):
    (tmp_path / "eval_log.jsonl").write_text("e\n")
    assert [p.name for p in archive_logs(tmp_path)] == ["eval_log.previous-1.jsonl"]
    (tmp_path / "eval_log.jsonl").write_text("f\n")
    assert [p.name for p in archive_logs(tmp_path)] == ["eval_log.previous-2.jsonl"]
    assert (tmp_path / "eval_log.previous-1.jsonl").read_text() == "e\n"
