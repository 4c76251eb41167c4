"""Fuzz test of the configuration and checkpoint surfaces: seeded random field values for MiniMindConfig /
MiniMindVConfig (zero, negative, float, string, NaN, huge, inconsistent) must give a clear error or a config whose
model builds and runs a finite forward pass; random damage to a saved training checkpoint (truncation, garbage, wrong
JSON types, missing or extra files, flipped bytes, planted pickles) must give a CheckpointError naming the file, or
restore exactly the saved state."""

import copy
import json
import math
import random
import shutil
import time
from pathlib import Path

import pytest
import torch

from helpers_fuzz import Tally
from modeling_minimind_v import MiniMindVConfig, MiniMindVForConditionalGeneration
from processing.training.checkpoints import (
    COMPLETE_MARKER, checkpoint_tmp_dir, finalize_checkpoint, load_checkpoint,
)
from processing.training.optim import build_optimizer, build_param_groups, warmup_cosine_schedule
from processing.training.resume_state import CheckpointError, save_training_state

BAD_VALUES = [0, -1, -7, 1.5, "8", None, True, float("nan"), float("inf"), 10**12, [], {}]
GOOD_VALUES = [1, 2, 4, 8, 16, 32, 64]
TEXT_FIELDS = ["hidden_size", "num_attention_heads", "num_key_value_heads", "num_hidden_layers", "intermediate_size",
               "vocab_size", "max_position_embeddings", "head_dim", "rope_theta", "rms_norm_eps", "dropout",
               "hidden_act", "eos_token_id", "pad_token_id", "bos_token_id", "num_experts", "num_experts_per_tok",
               "moe_intermediate_size", "router_aux_loss_coef"]
VISION_FIELDS = ["image_size", "patch_size", "hidden_size", "num_attention_heads", "num_hidden_layers",
                 "intermediate_size", "num_channels"]
TOP_FIELDS = ["image_token_id", "vision_feature_layer", "projector_type", "image_seq_length"]


def _tiny_fields() -> dict:
    fields = json.loads((MiniMindVConfig._presets_dir() / "tiny.json").read_text())
    fields.pop("_comment", None)
    return fields


def _value(rng, field):
    if field == "hidden_act":
        return rng.choice(["silu", "gelu", "nope", 3, None])
    if field == "projector_type":
        return rng.choice(["mlp", "linear", "nope", None, 5])
    if field in ("dropout", "rms_norm_eps", "router_aux_loss_coef"):
        return rng.choice([0.0, 0.1, 0.99, 1.0, -0.1, float("nan"), "0.1", None])
    if field in ("eos_token_id", "pad_token_id", "bos_token_id", "image_token_id"):
        return rng.choice([0, 1, 5, 1023, 1024, 6400, -7, None, 2.0])
    return rng.choice(BAD_VALUES + GOOD_VALUES * 2)


_BUILT = []  # accepted configs whose model was built and run (a few are enough; building is the slow part)


def _forward_ok(config):
    again = MiniMindVConfig.from_dict(config.to_dict())
    assert again.to_dict() == config.to_dict(), "config does not survive to_dict / from_dict"
    sizes = (config.text_config.hidden_size * config.text_config.num_hidden_layers
             * max(config.text_config.intermediate_size or 1, 1))
    if (len(_BUILT) >= 12 or sizes > 64 * 4 * 512 or config.text_config.vocab_size > 20000
            or config.vision_config.image_size > 64):
        return "correct"  # accepted and consistent; not built here to keep the test fast
    _BUILT.append(config)
    torch.manual_seed(0)
    model = MiniMindVForConditionalGeneration(config).eval()
    vision = config.vision_config
    block = torch.full((1, config.image_seq_length), config.image_token_id)
    ids = torch.cat([torch.tensor([[1, 2]]) % config.text_config.vocab_size, block], dim=1)
    ids[0, :2][ids[0, :2] == config.image_token_id] = (config.image_token_id + 1) % config.text_config.vocab_size
    with torch.no_grad():
        out = model(input_ids=ids, pixel_values=torch.randn(1, vision.num_channels, vision.image_size,
                                                            vision.image_size))
    assert out.logits.shape == (1, ids.shape[1], config.text_config.vocab_size)
    assert torch.isfinite(out.logits).all(), "non-finite logits from a config that was accepted"
    return "correct"


def test_fuzz_config_values():
    rng = random.Random(2024)
    tally = Tally("config")
    deadline = time.monotonic() + 20  # a bound for a slow machine; 120 trials take ~6 s on one busy core
    for trial in range(120):
        if time.monotonic() > deadline:
            break
        fields = _tiny_fields()
        changes = {}
        for _ in range(rng.choice([1, 1, 2, 3])):
            where = rng.choice(["text", "text", "vision", "top"])
            if where == "text":
                name = rng.choice(TEXT_FIELDS)
                changes[name] = fields[name] = _value(rng, name)  # flat decoder fields are accepted as overrides
            elif where == "vision":
                name = rng.choice(VISION_FIELDS)
                fields.setdefault("vision_config", {})
                fields["vision_config"] = {**fields["vision_config"], name: _value(rng, name)}
                changes[f"vision.{name}"] = fields["vision_config"][name]
            else:
                name = rng.choice(TOP_FIELDS)
                changes[name] = fields[name] = _value(rng, name)
        tally.run(f"config {trial}: {changes}", lambda: MiniMindVConfig(**copy.deepcopy(fields)), _forward_ok)
    tally.finish()


class _Accelerator:
    """What save/load_training_state use of Accelerate, for one process."""

    process_index = 0
    is_main_process = True
    scaler = None

    @staticmethod
    def unwrap_model(model):
        return model


def _training_objects(seed):
    torch.manual_seed(seed)
    model = MiniMindVForConditionalGeneration(MiniMindVConfig.from_preset("tiny", dropout=0.1)).train()
    optimizer = build_optimizer(build_param_groups(model, 1e-3, 0.01, None), 1e-3)
    scheduler = warmup_cosine_schedule(optimizer, 10, 2)
    return model, optimizer, scheduler


def _state(model, optimizer, scheduler):
    return ({k: v.clone() for k, v in model.state_dict().items()},
            {i: {k: v.clone() if torch.is_tensor(v) else v for k, v in s.items()}
             for i, s in optimizer.state_dict()["state"].items()},
            scheduler.state_dict()["last_epoch"], torch.get_rng_state().clone())


def _same(a, b) -> bool:
    models, opts, epochs, rngs = zip(a, b)
    return (all(torch.equal(models[0][k], models[1][k]) for k in models[0]) and epochs[0] == epochs[1]
            and torch.equal(rngs[0], rngs[1]) and opts[0].keys() == opts[1].keys()
            and all(torch.equal(torch.as_tensor(opts[0][i][k]), torch.as_tensor(opts[1][i][k]))
                    for i in opts[0] for k in opts[0][i]))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A real checkpoint after two optimizer steps, and the state it holds."""
    output = tmp_path_factory.mktemp("ckpt")
    model, optimizer, scheduler = _training_objects(0)
    for _ in range(2):
        loss = model(input_ids=torch.randint(0, 100, (1, 8)), labels=torch.randint(0, 100, (1, 8))).loss
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    save_training_state(checkpoint_tmp_dir(output, 2), _Accelerator(), model, optimizer, scheduler)
    saved = _state(model, optimizer, scheduler)
    folder = finalize_checkpoint(output, 2, {"state": {"global_step": 2}, "run": {}})
    return folder, saved


def _damage(rng, folder: Path) -> str:
    files = sorted(p for p in folder.iterdir() if p.is_file())
    path = rng.choice(files)
    kind = rng.choice(["truncate", "append", "flip", "json", "delete", "pickle", "extra", "empty", "json-field"])
    data = path.read_bytes()
    if kind == "truncate":
        path.write_bytes(data[: rng.randrange(len(data))])
    elif kind == "append":
        path.write_bytes(data + bytes(rng.randrange(256) for _ in range(rng.randrange(1, 20))))
    elif kind == "flip":
        buffer = bytearray(data)
        buffer[rng.randrange(len(buffer))] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(buffer))
    elif kind == "json":
        path.write_text(json.dumps(rng.choice([[], 5, "x", None, {"a": [1]}, {"state": 1, "run": []}])))
    elif kind == "delete":
        path.unlink()
    elif kind == "pickle":
        (folder / rng.choice(["custom_checkpoint_0.pkl", "optimizer.bin", "scheduler.pt"])).write_bytes(b"\x80\x04.")
    elif kind == "extra":
        (folder / "notes.txt").write_text("a harmless extra file")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "json-field" and path.suffix == ".json":
        try:
            value = json.loads(data)
        except ValueError:  # already damaged by an earlier change
            return f"{kind} (skipped) {path.name}"
        if isinstance(value, dict) and value:
            key = rng.choice(sorted(value))
            value[key] = rng.choice([None, -1, "x", [], {"z": 1}, math.inf])
            path.write_text(json.dumps(value))
    return f"{kind} {path.name}"


def test_fuzz_damaged_checkpoints(checkpoint, tmp_path):
    folder, saved = checkpoint
    rng = random.Random(11)
    tally = Tally("checkpoints")
    originals = {p.name: p.read_bytes() for p in folder.iterdir()}
    deadline = time.monotonic() + 20
    for trial in range(60):
        if time.monotonic() > deadline:
            break
        copy_dir = tmp_path / f"t{trial}" / "checkpoint-2"
        shutil.copytree(folder, copy_dir)
        what = " + ".join(_damage(rng, copy_dir) for _ in range(rng.choice([1, 1, 2])))
        objects = _training_objects(1)  # other weights and RNG: a load must replace every one of them

        def load(objects=objects, copy_dir=copy_dir):
            return load_checkpoint(copy_dir, _Accelerator(), *objects)

        def check(trainer_state, objects=objects):
            assert _same(_state(*objects), saved), "loaded a state that differs from the saved one"
            return "correct"

        try:
            tally.run(f"damage {trial}: {what}", load, check)
        finally:
            shutil.rmtree(copy_dir.parent)
    lost = sum(1 for name, data in originals.items() if (folder / name).read_bytes() != data)
    tally.finish(files_lost=lost)


def test_checkpoint_errors_name_the_file(checkpoint, tmp_path):
    folder, _ = checkpoint
    copy_dir = tmp_path / "checkpoint-2"
    shutil.copytree(folder, copy_dir)
    (copy_dir / COMPLETE_MARKER).write_text("{")
    with pytest.raises(CheckpointError, match=COMPLETE_MARKER):
        load_checkpoint(copy_dir, _Accelerator(), *_training_objects(1))
