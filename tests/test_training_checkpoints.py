"""Tests for processing/training/checkpoints.py: only complete checkpoints count, oldest step first; pruning
un-marks before deleting; a checkpoint is finalized atomically."""

import json

from processing.training.checkpoints import (
    COMPLETE_MARKER, TRAINER_STATE, checkpoint_tmp_dir, finalize_checkpoint, latest_checkpoint, list_checkpoints,
    load_trainer_state, prune_checkpoints, remove_stale_tmp_dirs,
)


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
        final = finalize_checkpoint(tmp_path, step, {"state": {"global_step": step}})
        assert final.name == f"checkpoint-{step}" and not tmp.exists()
        assert json.loads((final / COMPLETE_MARKER).read_text()) == {"step": step}
        assert load_trainer_state(final) == {"state": {"global_step": step}} and (final / TRAINER_STATE).is_file()
    prune_checkpoints(tmp_path, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-10", "checkpoint-15"]
    checkpoint_tmp_dir(tmp_path, 20).mkdir()
    remove_stale_tmp_dirs(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-10", "checkpoint-15"]
