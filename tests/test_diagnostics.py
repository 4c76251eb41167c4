"""Tests for processing/diagnostics.py and scripts/diagnose.py (healthy, NaN-corrupted, mismatched and missing model
folders) and for the Accelerate launch configs in configs/accelerate/ (parsed and validated the way `accelerate
launch` does).
"""

import os
import re
import subprocess
import sys

import pytest
import torch
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from accelerate.utils.dataclasses import get_module_class_from_name
from accelerate.utils.launch import prepare_multi_gpu_env

from conftest import REPO_ROOT, tiny_model
from processing.diagnostics import LoadError, diagnose
from processing.processors import build_processor
from processing.tokenizers import load_default_tokenizer

DIAGNOSE = REPO_ROOT / "scripts" / "diagnose.py"
ACCELERATE_CONFIGS = REPO_ROOT / "configs" / "accelerate"


def save(folder, model, image_seq_length=None):
    """Save `model` with a processor built from the shipped tokenizer (optionally with a wrong image_seq_length)."""
    config = model.config
    model.save_pretrained(folder)
    build_processor(load_default_tokenizer(), config.vision_config,
                    image_seq_length or config.image_seq_length).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def healthy(tmp_path_factory):
    return save(tmp_path_factory.mktemp("healthy") / "model", tiny_model())


def test_healthy_model_passes(healthy):
    proc = subprocess.run([sys.executable, str(DIAGNOSE), "--model", str(healthy), "--device", "cpu"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    model = tiny_model()
    total = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())  # tied lm_head counted once
    vision = sum(p.numel() for p in model.model.vision_tower.parameters())
    assert f"total: {total:,}" in out and f"vision: {vision:,}" in out
    assert "trainable:" in out and "projector:" in out and "decoder:" in out and "lm_head: tied" in out
    assert "image_seq_length: 9" in out and "device: cpu" in out and "dtype: float32" in out
    assert "image tokens 9 (expected 9 x 1 = 9)" in out
    assert "OK: no problems found" in out and "PROBLEM" not in out


def test_nan_weights_fail(tmp_path):
    model = tiny_model()
    with torch.no_grad():
        model.model.language_model.layers[1].mlp.down_proj.weight.fill_(float("nan"))
    folder = save(tmp_path / "nan", model)
    diagnosis = diagnose(folder, device="cpu")
    assert not diagnosis.healthy
    out = diagnosis.report()
    assert "NaN/Inf in 1 weight tensor(s): model.language_model.layers.1.mlp.down_proj.weight" in out
    # Layer 1's hidden state is still finite; layer 2 and the logits are not.
    assert "PROBLEM: hidden state of layer 2:" in out and "PROBLEM: hidden state of layer 1" not in out
    assert re.search(r"PROBLEM: logits: \d+ NaN", out)


def test_image_token_mismatch_is_reported(tmp_path):
    # A processor that expands each image to 4 tokens for a model whose projector emits 9 features per image.
    folder = save(tmp_path / "mismatch", tiny_model(), image_seq_length=4)
    diagnosis = diagnose(folder)
    assert not diagnosis.healthy
    out = diagnosis.report()
    assert "processor image_seq_length 4 != config image_seq_length 9" in out
    assert "image-token mismatch: the prompt has 4 image tokens, expected image_seq_length 9 x 1 image(s) = 9" in out
    assert "PROBLEM: forward raised ValueError: Image features and image tokens do not match" in out


def test_model_without_processor_uses_raw_ids(tmp_path):
    tiny_model().save_pretrained(tmp_path / "bare")
    diagnosis = diagnose(tmp_path / "bare")
    assert diagnosis.healthy
    out = diagnosis.report()
    assert "using raw token ids" in out and "image tokens 9 (expected 9 x 1 = 9)" in out


@pytest.mark.parametrize("kind", ["missing", "empty", "file"])
def test_bad_folder_is_one_error_line(tmp_path, kind):
    target = tmp_path / "target"
    if kind == "empty":
        target.mkdir()
    elif kind == "file":
        target.write_text("not a model")
    with pytest.raises(LoadError) as error:
        diagnose(target)
    lines = str(error.value).strip().splitlines()
    assert len(lines) == 1 and str(target) in lines[0]
    if kind == "missing":  # the CLI: nothing on stdout, the one line on stderr, status 2
        proc = subprocess.run([sys.executable, str(DIAGNOSE), "--model", str(target)], capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 2 and proc.stdout == ""
        assert proc.stderr.strip().splitlines() == [f"error: {lines[0]}"]


# ---------------------------------------------------------------------------------------------- accelerate configs

def launch_env(name: str) -> dict:
    """The environment `accelerate launch --config_file <name>.yaml` would give the training processes."""
    args = launch_command_parser().parse_args(["--config_file", str(ACCELERATE_CONFIGS / f"{name}.yaml"), "x.py"])
    args, _, _ = _validate_launch_command(args)
    env = prepare_multi_gpu_env(args)
    return args, {k: v for k, v in env.items() if os.environ.get(k) != v}


def test_ddp_config():
    config = load_config_from_file(str(ACCELERATE_CONFIGS / "ddp.yaml"))
    assert isinstance(config, ClusterConfig)
    assert config.distributed_type == DistributedType.MULTI_GPU
    assert config.mixed_precision == "bf16" and config.num_processes == 2 and not config.use_cpu
    assert config.fsdp_config == {}
    args, env = launch_env("ddp")
    assert args.multi_gpu and not args.use_fsdp and args.num_processes == 2
    assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"


def test_fsdp_config(monkeypatch):
    config = load_config_from_file(str(ACCELERATE_CONFIGS / "fsdp.yaml"))
    assert config.distributed_type == DistributedType.FSDP
    assert config.mixed_precision == "bf16" and config.num_processes == 2
    fsdp = config.fsdp_config
    assert fsdp["fsdp_version"] == 2
    assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert fsdp["fsdp_transformer_layer_cls_to_wrap"] == "MiniMindDecoderLayer"
    assert fsdp["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    assert fsdp["fsdp_cpu_ram_efficient_loading"] is True

    # Build the FSDP plugin from the launch environment, as each launched process does: this validates the values.
    args, env = launch_env("fsdp")
    assert args.use_fsdp and env["FSDP_VERSION"] == "2"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2 and plugin.cpu_ram_efficient_loading
    assert plugin.transformer_cls_names_to_wrap == ["MiniMindDecoderLayer"]
    assert plugin.state_dict_type.name == "FULL_STATE_DICT"

    # The wrap class must exist in the model (accelerate raises at prepare time otherwise).
    model = tiny_model()
    assert "MiniMindDecoderLayer" in model._no_split_modules
    layer_cls = get_module_class_from_name(model, "MiniMindDecoderLayer")
    assert layer_cls is not None
    assert sum(isinstance(m, layer_cls) for m in model.modules()) == model.config.text_config.num_hidden_layers


def test_nan_pixel_values_from_the_processor_are_reported(tmp_path):
    import json

    folder = save(tmp_path / "zero_std", tiny_model())
    config_path = folder / "processor_config.json"
    config = json.loads(config_path.read_text())
    config["image_processor"]["image_std"] = [0.0, 0.0, 0.0]
    config_path.write_text(json.dumps(config))
    diagnosis = diagnose(folder, device="cpu")
    assert not diagnosis.healthy
    assert re.search(r"PROBLEM: pixel_values: the processor turned a plain RGB image into \d+ NaN/Inf values",
                     diagnosis.report())
