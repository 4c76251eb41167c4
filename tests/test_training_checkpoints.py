"""Tests for processing/training/checkpoints.py and resume_state.py: only complete checkpoints count, oldest step
first; pruning un-marks before deleting; a checkpoint is finalized atomically with checksums; checkpoints hold no
pickle and a resume refuses one unopened; a damaged state file stops the resume naming it; a resumed run with dropout
equals the uninterrupted run."""

import json

import pytest
import torch
from safetensors.torch import load_file

from processing.training.checkpoints import (
    COMPLETE_MARKER, TRAINER_STATE, checkpoint_tmp_dir, finalize_checkpoint, latest_checkpoint, list_checkpoints,
    load_trainer_state, prune_checkpoints, remove_stale_tmp_dirs,
)
from processing.training.config import ACCELERATE, parse_train_args
from processing.training.log import read_jsonl_log
from processing.training.resume_state import (
    MODEL_FILE, OPTIMIZER_FILE, OPTIMIZER_TENSORS, SCHEDULER_FILE, CheckpointError, refuse_pickles, rng_files,
)
from processing.training.trainer import train


def test_checkpoints_without_marker_are_ignored(tmp_path):
    for step in (5, 10, 15):
        (tmp_path / f"checkpoint-{step}").mkdir()
    for step in (5, 10):
        (tmp_path / f"checkpoint-{step}" / COMPLETE_MARKER).write_text("{}")
    (tmp_path / ".tmp-checkpoint-20").mkdir()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-5", "checkpoint-10"]
    assert latest_checkpoint(tmp_path).name == "checkpoint-10"


def test_finalize_writes_state_and_marker_then_renames_into_place(tmp_path):
    for step in (5, 10, 15):
        tmp = checkpoint_tmp_dir(tmp_path, step)
        tmp.mkdir()
        (tmp / "weights.bin").write_bytes(b"x")
        final = finalize_checkpoint(tmp_path, step, {"state": {"global_step": step}, "run": {}})
        assert final.name == f"checkpoint-{step}" and not tmp.exists()
        marker = json.loads((final / COMPLETE_MARKER).read_text())
        assert marker["step"] == step and set(marker["sha256"]) == {"weights.bin", TRAINER_STATE}
        assert load_trainer_state(final) == {"state": {"global_step": step}, "run": {}}
        assert (final / TRAINER_STATE).is_file()
    prune_checkpoints(tmp_path, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-10", "checkpoint-15"]
    checkpoint_tmp_dir(tmp_path, 20).mkdir()
    remove_stale_tmp_dirs(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-10", "checkpoint-15"]


# ---------------------------------------------------------------------------------------------------------------------
# Pickle-free resume state (processing/training/resume_state.py) and bad checkpoint files
# ---------------------------------------------------------------------------------------------------------------------


def _args(shapes_data, output, steps, *extra):
    # 16 rows / batch 4 = 4 steps per epoch; a checkpoint at step 3 lies mid-epoch, step 6 in the next epoch.
    return ["--config", "tiny", "--data", str(shapes_data / "sft.jsonl"), "--output", str(output), "--max-steps",
            str(steps), "--save-steps", "3", "--lr", "2e-3", "--batch-size", "4", "--num-threads", "1", "--seed", "5",
            *extra]


@pytest.fixture(scope="module")
def reference_run(shapes_data, tmp_path_factory):
    """An uninterrupted 6-step run of the tiny preset with dropout 0.2, checkpointing every 3 steps."""
    config = tmp_path_factory.mktemp("preset") / "tiny_dropout.json"
    from modeling_minimind_v import MiniMindVConfig

    fields = json.loads((MiniMindVConfig._presets_dir() / "tiny.json").read_text())
    fields.pop("_comment", None)
    fields.setdefault("text_config", {})["dropout"] = 0.2
    config.write_text(json.dumps(fields))
    assert MiniMindVConfig.from_preset(str(config)).text_config.dropout == 0.2
    output = tmp_path_factory.mktemp("reference")
    args = _args(shapes_data, output, 6)
    args[args.index("tiny")] = str(config)
    train(parse_train_args(args, ACCELERATE))
    return output, args


def test_checkpoints_hold_no_pickle(reference_run):
    output, _ = reference_run
    checkpoint = output / "checkpoint-3"
    names = {p.name for p in checkpoint.iterdir()}
    assert {MODEL_FILE, OPTIMIZER_TENSORS, OPTIMIZER_FILE, SCHEDULER_FILE, *rng_files(0), TRAINER_STATE,
            COMPLETE_MARKER} <= names
    assert not [n for n in names if n.endswith((".pkl", ".bin", ".pt", ".pth"))], names
    for name in names:  # every file is JSON or safetensors
        path = checkpoint / name
        if name.endswith(".safetensors"):
            load_file(str(path))
        elif name.endswith(".json"):
            json.loads(path.read_text())
    refuse_pickles(checkpoint)  # nothing to refuse


def _resume_copy(reference_run, tmp_path, step=3):
    """A folder holding only checkpoint-`step` of the reference run (as if the run had been killed after it)."""
    import shutil

    output, args = reference_run
    target = tmp_path / "resumed"
    target.mkdir()
    shutil.copytree(output / f"checkpoint-{step}", target / f"checkpoint-{step}")
    resumed_args = [target.as_posix() if a == str(output) else a for a in args]
    return target, resumed_args + ["--resume"]


def test_resume_with_dropout_reproduces_the_uninterrupted_run(reference_run, tmp_path):
    output, _ = reference_run
    target, args = _resume_copy(reference_run, tmp_path)
    train(parse_train_args(args, ACCELERATE))
    want = {r["step"]: r["loss"] for r in read_jsonl_log(output / "train_log.jsonl")}
    got = {r["step"]: r["loss"] for r in read_jsonl_log(target / "train_log.jsonl")}
    assert sorted(got) == [4, 5, 6]
    for step in got:
        assert got[step] == pytest.approx(want[step], abs=1e-6), step
    final, expected = load_file(str(target / "model.safetensors")), load_file(str(output / "model.safetensors"))
    for name in expected:
        torch.testing.assert_close(final[name], expected[name], rtol=0, atol=1e-6, msg=name)


@pytest.mark.parametrize("name", ["custom_checkpoint_0.pkl", "random_states_0.pkl", "optimizer.bin", "sub/x.pt"])
def test_resume_refuses_pickled_files_without_opening_them(reference_run, tmp_path, name):
    target, args = _resume_copy(reference_run, tmp_path)
    evil = target / "checkpoint-3" / name
    evil.parent.mkdir(exist_ok=True)
    # A pickle whose loading would create a file: it must never be loaded.
    marker = tmp_path / "pwned"
    import pickle

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(CheckpointError, match="pickle-format file.*" + name.split("/")[-1]):
        train(parse_train_args(args, ACCELERATE))
    assert not marker.exists()


@pytest.mark.parametrize("name, damage", [
    (MODEL_FILE, "truncate"), (OPTIMIZER_TENSORS, "truncate"), ("rng_state_0.safetensors", "truncate"),
    (TRAINER_STATE, "garbage"), (OPTIMIZER_FILE, "garbage"), (SCHEDULER_FILE, "garbage"),
    ("rng_state_0.json", "garbage"), ("rng_state_0.json", "wrong"), (TRAINER_STATE, "wrong"), (MODEL_FILE, "missing"),
    ("rng_state_0.safetensors", "missing"), (MODEL_FILE, "flip"), (OPTIMIZER_TENSORS, "flip"),
])
def test_a_damaged_state_file_stops_the_resume_naming_it(reference_run, tmp_path, name, damage):
    target, args = _resume_copy(reference_run, tmp_path)
    path = target / "checkpoint-3" / name
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "garbage":
        path.write_text('{"state": [1, 2')
    elif damage == "flip":  # one byte of tensor data: would load silently without the checksums
        data = bytearray(path.read_bytes())
        data[-5] ^= 0x01
        path.write_bytes(bytes(data))
    elif damage == "wrong":
        path.write_text('{"python": 1}' if name.startswith("rng") else '{"state": {"global_step": 3}, "run": 5}')
    else:
        path.unlink()
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
        train(parse_train_args(args, ACCELERATE))
    assert not (target / "model.safetensors").exists() and not (target / "train_log.jsonl").exists()


def test_trainer_state_errors_name_the_file(tmp_path):
    (tmp_path / TRAINER_STATE).write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="trainer_state.json.*JSON object"):
        load_trainer_state(tmp_path)
    (tmp_path / TRAINER_STATE).write_text("{")
    with pytest.raises(CheckpointError, match="trainer_state.json.*unreadable"):
        load_trainer_state(tmp_path)
