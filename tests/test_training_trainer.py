"""Tests for the Accelerate trainer (processing/training/trainer.py, run by scripts/train.py): loss falls per stage,
frozen parts stay bit-identical, kill -9 + --resume reproduces the uninterrupted run, a fresh run refuses old
checkpoints, lazily failing rows are skipped, the output reloads, accumulation / DDP / bf16 runs agree."""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import REPO_ROOT, tiny_model
from safetensors.torch import load_file

from processing.processors import build_processor
from processing.synthetic import make_dataset
from processing.tokenizers import load_default_tokenizer
from processing.training.checkpoints import COMPLETE_MARKER, latest_checkpoint, list_checkpoints
from processing.training.config import ACCELERATE, CONFIG_FILE, TrainConfig, parse_train_args
from processing.training.log import read_jsonl_log
from processing.training.parts import part_of
from processing.training.trainer import train

TRAIN_SCRIPT = REPO_ROOT / "scripts" / "train.py"
# One thread: the tiny model is fastest that way on a shared CPU, and runs compared bit-for-bit use the same kernels.
COMMON = ["--batch-size", "4", "--num-threads", "1", "--seed", "7"]
# Child processes import this checkout's code (not an installed copy of the project).
CHILD_ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}


def run(argv: list[str]) -> dict:
    """What scripts/train.py does with `argv`, in this process."""
    return train(parse_train_args(argv, ACCELERATE))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_dataset(root, n_train=24, n_eval=8, seed=0, image_size=48)
    return root


@pytest.fixture(scope="module")
def init_dir(tmp_path_factory):
    """A fresh tiny model + processor folder, so tests know the exact starting weights.

    A wider init than the default 0.02 stands in for a pretrained decoder: a near-silent random decoder leaves a
    projector-only (pretrain) run almost nothing to steer.
    """
    path = tmp_path_factory.mktemp("init")
    model = tiny_model(seed=3, initializer_range=0.1)
    model.save_pretrained(path)
    config = model.config
    build_processor(load_default_tokenizer(), config.vision_config, config.image_seq_length).save_pretrained(path)
    return path


def _weights_by_part(path) -> dict[str, dict[str, torch.Tensor]]:
    parts = {"vision": {}, "projector": {}, "decoder": {}}
    for name, tensor in load_file(str(path / "model.safetensors")).items():
        parts[part_of(name)][name] = tensor
    return parts


def _losses(output) -> list[float]:
    return [record["loss"] for record in read_jsonl_log(output / "train_log.jsonl")]


@pytest.mark.parametrize(
    "stage, lr, frozen, trained", [("pretrain", "1e-2", ("vision", "decoder"), ("projector",)),
                                   ("sft", "3e-3", ("vision",), ("projector", "decoder"))],
)
def test_stage_loss_falls_and_frozen_parts_stay_bit_identical(data, init_dir, tmp_path, stage, lr, frozen,
                                                              trained):
    output = tmp_path / stage
    rows = data / ("pretrain.jsonl" if stage == "pretrain" else "sft.jsonl")
    metrics = run(["--model", str(init_dir), "--stage", stage, "--data", str(rows), "--output", str(output),
                          "--max-steps", "30", "--lr", lr, "--warmup-ratio", "0.1", *COMMON])
    assert metrics["global_step"] == 30 and metrics["trained_parts"] == list(trained)
    losses = _losses(output)
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.3, losses
    report = metrics["parameters"]
    for part in frozen:
        assert report[part]["trainable"] == 0
    before, after = _weights_by_part(init_dir), _weights_by_part(output)
    for part in frozen:
        for name, tensor in before[part].items():
            assert torch.equal(tensor, after[part][name]), f"{stage} changed frozen {name}"
    for part in trained:
        assert any(not torch.equal(t, after[part][n]) for n, t in before[part].items()), f"{part} did not train"


def _run_args(data, output, steps):
    return ["--config", "tiny", "--stage", "sft", "--data", str(data / "sft.jsonl"), "--eval-data",
            str(data / "eval.jsonl"), "--output", str(output), "--max-steps", str(steps), "--grad-accum", "2",
            "--save-steps", "5", "--lr", "2e-3", *COMMON]


def test_kill_9_then_resume_reproduces_the_uninterrupted_run(data, tmp_path):
    # 24 rows / batch 4 = 6 micro-batches = 3 optimizer steps per epoch: checkpoints every 5 steps land mid-epoch.
    steps = 60
    reference = tmp_path / "reference"
    run(_run_args(data, reference, steps))

    output = tmp_path / "killed"
    env = {**CHILD_ENV, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, str(TRAIN_SCRIPT), *_run_args(data, output, steps)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        log = output / "train_log.jsonl"
        # Kill once a checkpoint exists and the run has moved past it, so the resume must also rewrite the log.
        while not (list_checkpoints(output) and log.is_file() and len(log.read_text().splitlines()) >= 7):
            assert process.poll() is None, "training ended before it could be killed"
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.005)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (output / "model.safetensors").exists(), "the run finished before it was killed"
    killed_at = int(latest_checkpoint(output).name.split("-")[1])
    assert killed_at < steps
    assert TrainConfig.load(latest_checkpoint(output)).save_steps == 5  # every checkpoint says how it was made

    # A half-written checkpoint (no completion marker) newer than the real ones must be ignored by --resume.
    fake = output / "checkpoint-55"
    fake.mkdir()
    (fake / "model.safetensors").write_bytes(b"garbage")
    assert latest_checkpoint(output).name != fake.name

    metrics = run([*_run_args(data, output, steps), "--resume"])
    assert metrics["global_step"] == steps
    resumed, expected = read_jsonl_log(output / "train_log.jsonl"), read_jsonl_log(reference / "train_log.jsonl")
    assert [r["step"] for r in resumed] == list(range(1, steps + 1))
    for got, want in zip(resumed, expected):
        assert got["loss"] == pytest.approx(want["loss"], abs=1e-6), f"step {got['step']}"
        assert got["lr"] == pytest.approx(want["lr"], rel=1e-9, abs=1e-12)
    eval_resumed = [r["eval_loss"] for r in read_jsonl_log(output / "eval_log.jsonl")]
    eval_expected = [r["eval_loss"] for r in read_jsonl_log(reference / "eval_log.jsonl")]
    assert len(eval_resumed) == len(eval_expected) == steps // 3
    assert eval_resumed == pytest.approx(eval_expected, abs=1e-6)
    final, want = load_file(str(output / "model.safetensors")), load_file(str(reference / "model.safetensors"))
    assert final.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(final[name], want[name], rtol=0, atol=1e-6, msg=name)


def test_fresh_run_refuses_an_output_with_old_checkpoints(data, tmp_path):
    old = tmp_path / "out" / "checkpoint-5"
    old.mkdir(parents=True)
    (old / COMPLETE_MARKER).write_text("{}")
    with pytest.raises(ValueError, match="pass --resume"):
        run(_run_args(data, tmp_path / "out", 10))


def test_resume_rejects_an_incomplete_checkpoint_path(data, tmp_path):
    incomplete = tmp_path / "out" / "checkpoint-5"
    incomplete.mkdir(parents=True)
    with pytest.raises(ValueError, match="completion marker"):
        run([*_run_args(data, tmp_path / "out", 10), "--resume", str(incomplete)])


def test_lazily_failing_rows_are_skipped_and_the_output_reloads_with_auto_classes(data, tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    rows = [json.loads(line) for line in (data / "sft.jsonl").read_text().splitlines()][:8]
    (tmp_path / "corrupt.png").write_bytes(b"not an image")
    rows[3]["image"] = str(tmp_path / "corrupt.png")
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    output = tmp_path / "out"
    # The corrupt file lies outside --image-root: the flag lets the row through to the lazy decode.
    metrics = run(["--config", "tiny", "--data", str(path), "--allow-outside-image-root",
                   "--image-root", str(data), "--output", str(output), "--epochs", "2", "--no-cache-images",
                   "--packing", *COMMON])
    # 8 rows, one undecodable: found at access time in each of the 2 epochs, skipped, both epochs completed.
    assert metrics["data"]["kept"] == 8 and metrics["data"]["skipped_during_training"] == {"corrupt_image": 2}
    assert metrics["global_step"] == 4
    saved_config = TrainConfig.load(output)
    assert (output / CONFIG_FILE).is_file() and saved_config.packing and saved_config.cache_images is False

    model = AutoModelForImageTextToText.from_pretrained(output, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(output, trust_remote_code=True)
    assert type(model).__name__ == "MiniMindVForConditionalGeneration"
    assert type(processor).__name__ == "MiniMindVProcessor"
    from PIL import Image

    image = Image.open(data / rows[0]["image"])
    messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "Hi"}]}]
    inputs = processor.apply_chat_template(messages, tokenize=True, return_dict=True, add_generation_prompt=True,
                                           return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
    saved = load_file(str(output / "model.safetensors"))
    projector_weight = "model.multi_modal_projector.linear_1.weight"
    assert torch.equal(model.model.multi_modal_projector.linear_1.weight, saved[projector_weight])
    assert torch.isfinite(logits).all() and logits.shape[-1] == model.config.text_config.vocab_size


def test_missing_tracker_package_is_a_clear_error(data, tmp_path, capsys):
    if importlib.util.find_spec("tensorboard") is not None:
        pytest.skip("tensorboard is installed")
    with pytest.raises(SystemExit) as error:
        run(["--config", "tiny", "--data", str(data / "sft.jsonl"), "--output", str(tmp_path),
                    "--log-with", "tensorboard"])
    assert error.value.code == 2
    assert "pip install tensorboard" in capsys.readouterr().err


def _short_run(data, output, batch_size, grad_accum):
    return ["--config", "tiny", "--data", str(data / "sft.jsonl"), "--output", str(output), "--epochs", "2",
            "--batch-size", str(batch_size), "--grad-accum", str(grad_accum), "--lr", "2e-3", "--num-threads", "1",
            "--seed", "7"]


def _assert_same_run(a, b, atol):
    losses_a, losses_b = _losses(a), _losses(b)
    assert len(losses_a) == len(losses_b) == 6
    assert losses_a == pytest.approx(losses_b, abs=atol)
    weights_a, weights_b = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    for name in weights_a:
        torch.testing.assert_close(weights_a[name], weights_b[name], rtol=0, atol=atol, msg=name)


@pytest.fixture(scope="module")
def accumulated_run(data, tmp_path_factory):
    """Batch 4 x 2 accumulated micro-batches, 2 epochs of 24 rows = 6 optimizer steps."""
    output = tmp_path_factory.mktemp("accum")
    run(_short_run(data, output, batch_size=4, grad_accum=2))
    return output


def test_gradient_accumulation_matches_one_larger_batch(data, tmp_path, accumulated_run):
    # Losses are token-weighted over the whole accumulation window, so 4 x 2 equals one batch of the same 8 rows
    # (only padding widths differ: float noise).
    run(_short_run(data, tmp_path, batch_size=8, grad_accum=1))
    _assert_same_run(tmp_path, accumulated_run, atol=1e-5)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU (gloo) multi-process path")
def test_two_process_ddp_matches_single_process_accumulation(data, tmp_path, accumulated_run):
    # Two processes x batch 4 see the same two micro-batches per step as one process accumulating 2 x 4.
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(TRAIN_SCRIPT),
               *_short_run(data, tmp_path, batch_size=4, grad_accum=1)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=CHILD_ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 process(es)" in result.stderr
    _assert_same_run(tmp_path, accumulated_run, atol=1e-6)


@pytest.mark.parametrize("stage", ["pretrain", "sft"])
def test_bf16_mixed_precision_trains_with_fp32_master_weights(data, init_dir, tmp_path, stage):
    """bf16 autocast over fp32 weights, both stages (sft trains the LM head through the chunked loss)."""
    output = tmp_path / f"bf16-{stage}"
    rows = data / ("pretrain.jsonl" if stage == "pretrain" else "sft.jsonl")
    # Its own process: Accelerate's mixed-precision setting is process-wide.
    subprocess.run([sys.executable, str(TRAIN_SCRIPT), "--model", str(init_dir), "--stage", stage, "--data", str(rows),
                    "--output", str(output), "--max-steps", "20", "--lr", "1e-2" if stage == "pretrain" else "3e-3",
                    "--warmup-ratio", "0.1", "--mixed-precision", "bf16", *COMMON], check=True, capture_output=True,
                   env=CHILD_ENV)
    losses = _losses(output)
    assert all(torch.isfinite(torch.tensor(losses))), losses
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.2, losses
    saved = load_file(str(output / "model.safetensors"))
    assert {tensor.dtype for tensor in saved.values()} == {torch.float32}


def test_compiled_run_compiles_once_through_short_batches_epochs_and_evaluation(data, tmp_path):
    """scripts/train.py --compile over two epochs of 24 rows in batches of 16 (each epoch ends in a short batch of 8)
    with an eval pass per epoch: Dynamo logs no recompile. On an H200 the short batch alone had cost 2.5 minutes."""
    output = tmp_path / "compiled"
    done = subprocess.run([sys.executable, str(TRAIN_SCRIPT), "--config", "tiny", "--stage", "sft",
                           "--data", str(data / "sft.jsonl"), "--eval-data", str(data / "eval.jsonl"),
                           "--output", str(output), "--max-steps", "4", "--batch-size", "16", "--compile",
                           "--num-workers", "0", "--seed", "0"], capture_output=True, text=True,
                          env={**CHILD_ENV, "TORCH_LOGS": "recompiles"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Recompiling" not in done.stderr, done.stderr[-3000:]
    assert "torch.compile on the model's forward" in done.stderr  # compiled indeed
    assert len(_losses(output)) == 4 and (output / "eval_log.jsonl").read_text().count("\n") == 2


@pytest.mark.parametrize(("precision", "dtype"), [("bf16", "torch.bfloat16"), ("no", "torch.float32")])
def test_the_trainer_keeps_pixels_in_the_autocast_dtype(data, init_dir, tmp_path, precision, dtype):
    """Under bf16 the dataset caches and hands over bfloat16 pixels (same numbers under autocast, half the bytes;
    tests/test_dataset.py checks the equality); otherwise fp32. Its own process: Accelerate's state is process-wide."""
    code = (
        "from processing.training.config import TrainConfig\nfrom processing.training.trainer import setup\n"
        f"run, _ = setup(TrainConfig(model={str(init_dir)!r}, stage='sft', data={str(data / 'sft.jsonl')!r}, "
        f"output={str(tmp_path / 'out')!r}, mixed_precision={precision!r}, num_workers=0))\n"
        "batch = next(iter(run.loader))\n"
        "print(run.dataset.pixel_cache.dtype, batch['pixel_values'].dtype)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=CHILD_ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[-2:] == [dtype, dtype]
