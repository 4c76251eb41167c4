"""Tests for processing/training/config.py: both trainers' flags come from one TrainConfig, their names and defaults
are the contract they were, shared flags are defined once, and the config round-trips through JSON."""

import pytest

from processing.training.config import (
    ACCELERATE, TRL, TrainConfig, build_parser, parse_train_args, trainer_fields,
)

# flag -> default, exactly as scripts/train.py and scripts/train_sft_trl.py have always had them.
SHARED = {
    "--model": None, "--data": None, "--image-root": None, "--output": None, "--epochs": 1, "--max-steps": 0,
    "--batch-size": 16, "--grad-accum": 1, "--lr": 2e-4, "--weight-decay": 0.01, "--warmup-ratio": 0.03,
    "--max-grad-norm": 1.0, "--max-length": None, "--seed": 42, "--gradient-checkpointing": False,
    "--num-workers": 0, "--save-steps": 0, "--compile": None, "--allow-outside-image-root": False,
}
ACCELERATE_ONLY = {
    "--config": None, "--stage": "sft", "--train": None, "--eval-data": None, "--projector-lr": None,
    "--min-lr-ratio": 0.0, "--mixed-precision": "no", "--save-total-limit": None, "--resume": None,
    "--log-with": "none", "--packing": False, "--num-threads": None, "--cache-images": None, "--overwrite": False,
}
TRL_ONLY = {
    "--lora": False, "--lora-r": 8, "--lora-alpha": 16, "--lora-dropout": 0.05, "--merge": False, "--bf16": None,
    "--logging-steps": 10,
}


def _flags(trainer) -> dict:
    return {action.option_strings[0]: action for action in build_parser(trainer)._actions
            if action.option_strings and action.dest != "help"}


@pytest.mark.parametrize("trainer, expected", [(ACCELERATE, {**SHARED, **ACCELERATE_ONLY}),
                                               (TRL, {**SHARED, **TRL_ONLY})])
def test_flag_names_and_defaults_are_the_contract(trainer, expected):
    flags = _flags(trainer)
    assert {name: action.default for name, action in flags.items()} == expected
    assert {a.option_strings[0] for a in flags.values() if a.required} == (
        {"--data", "--output"} | ({"--model"} if trainer == TRL else set()))
    assert flags["--gradient-checkpointing"].option_strings == ["--gradient-checkpointing",
                                                               "--no-gradient-checkpointing"]
    assert flags["--compile"].option_strings == ["--compile", "--no-compile"]


def test_shared_flags_are_one_definition():
    accelerate, trl = _flags(ACCELERATE), _flags(TRL)
    assert set(accelerate) & set(trl) == set(SHARED)
    for name in SHARED:
        a, t = accelerate[name], trl[name]
        assert (a.help, a.default, a.type, type(a)) == (t.help, t.default, t.type, type(t)), name
    names = [f.name for f in trainer_fields(ACCELERATE)] + [f.name for f in trainer_fields(TRL)]
    assert len(set(names)) == len(set(SHARED) | set(ACCELERATE_ONLY) | set(TRL_ONLY))


def test_train_py_takes_exactly_one_model_source(tmp_path, capsys):
    data = tmp_path / "rows.jsonl"
    data.write_text("{}\n")
    base = ["--data", str(data), "--output", str(tmp_path / "out")]
    config = parse_train_args(["--config", "tiny", *base, "--no-cache-images", "--resume"], ACCELERATE)
    assert config.config == "tiny" and config.cache_images is False and config.resume == "latest"
    assert config.epochs == 1 and config.stage == "sft"
    for argv in ([*base], ["--config", "tiny", "--model", str(tmp_path), *base]):
        with pytest.raises(SystemExit) as error:
            parse_train_args(argv, ACCELERATE)
        assert error.value.code == 2
    with pytest.raises(SystemExit):
        parse_train_args(["--config", "tiny", *base, "--epochs", "1.5"], ACCELERATE)
    assert "--epochs must be a whole number" in capsys.readouterr().err


def test_trl_checks(tmp_path, capsys):
    data = tmp_path / "rows.jsonl"
    data.write_text("{}\n")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    base = ["--model", str(tmp_path / "model"), "--data", str(data), "--output", str(tmp_path / "out")]
    assert parse_train_args([*base, "--epochs", "0.5"], TRL).epochs == 0.5
    cases = {"--merge needs --lora": ["--merge"], "--lora-r must be >= 1": ["--lora", "--lora-r", "0"],
             "no config.json": ["--model", str(tmp_path)], "--data": ["--data", str(tmp_path / "missing.jsonl")]}
    for message, extra in cases.items():
        with pytest.raises(SystemExit) as error:
            parse_train_args([*base, *extra], TRL)
        assert error.value.code == 2 and message in capsys.readouterr().err, message


def test_json_round_trip(tmp_path):
    config = TrainConfig(model="m", data="d.jsonl", output="o", lora=True, lr=1e-3, cache_images=False)
    path = config.save(tmp_path)
    assert path.name == "train_config.json" and TrainConfig.load(tmp_path) == config
    with pytest.raises(ValueError, match="--merge needs --lora"):
        TrainConfig(model="m", data="d.jsonl", output="o", merge=True).check(TRL)
