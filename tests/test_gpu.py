"""GPU checks (skipped without CUDA): the paths users run on a GPU.

* scripts/train.py end to end in bf16 (fp32 master weights), compiled and eager, padded and packed: the loss falls,
  checkpoints are written, a run killed mid-way resumes to the same losses (within bf16 noise) and weights.
* FSDP2 through `accelerate launch` on one process: the plain run's losses, a loadable full save.
* packed batches (FlexAttention with a per-document block mask) give the padded batch's loss and gradients.
* scripts/train_sft_trl.py in bf16 with LoRA (when trl is installed).
* compiled static-cache decoding (the CUDA-graph decoder, dense and MoE, the modules' attention and the Triton decode
  kernels) against eager greedy decoding, the dense decoder's captured prefill replayed for another prompt and
  image; the decode kernels against the modules' QK-norm, RoPE, cache update and attention; the compiled training
  step against the eager one; the chunked loss in bf16; the trainer's step runs without a device-to-host sync.

Run on a GPU machine: `python -m pytest tests/test_gpu.py -q` (about 9 minutes in one process on an H200; the tests
are independent, so `-n 4` with pytest-xdist takes about 4).
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import REPO_ROOT, shipped_processor, tiny_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

TRAIN = [sys.executable, str(REPO_ROOT / "scripts" / "train.py")]


def small_model(**overrides):
    return tiny_model(seed=0, hidden_size=256, num_attention_heads=8, num_key_value_heads=2,
                      intermediate_size=512, num_hidden_layers=4, **overrides).cuda()


def inputs(batch=2, left_pad=0, seed=0):
    """`left_pad`: that many padding tokens at the start of row 0 (before its text)."""
    ids = torch.randint(6, 1024, (batch, 30), generator=torch.Generator().manual_seed(seed))
    ids[:, 1:10] = 5
    mask = torch.ones_like(ids)
    ids = torch.cat([torch.full((batch, left_pad), 6), ids], 1)
    mask = torch.cat([torch.ones(batch, left_pad, dtype=torch.long), mask], 1)
    mask[0, :left_pad], ids[0, :left_pad] = 0, 0
    return {"input_ids": ids.cuda(), "attention_mask": mask.cuda(),
            "pixel_values": torch.randn(batch, 3, 48, 48, generator=torch.Generator().manual_seed(seed + 1)).cuda()}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from processing.synthetic import make_dataset

    root = tmp_path_factory.mktemp("gpu-data")
    make_dataset(root, n_train=512, n_eval=16, seed=0, image_size=48)
    return root


def _losses(folder) -> list[float]:
    return [json.loads(line)["loss"] for line in (folder / "train_log.jsonl").read_text().splitlines()]


def _train_args(data, output, *extra, steps=40):
    return [*TRAIN, "--config", "tiny", "--stage", "sft", "--data", str(data / "sft.jsonl"), "--output", str(output),
            "--max-steps", str(steps), "--batch-size", "32", "--lr", "3e-3", "--warmup-ratio", "0.05",
            "--mixed-precision", "bf16", "--seed", "0", *extra]


@pytest.mark.parametrize("packing", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "eager"])
def test_train_script_bf16_loss_falls(data, tmp_path, packing, compiled):
    output = tmp_path / "run"
    extra = ["--packing" if packing else "--no-packing", "--compile" if compiled else "--no-compile"]
    result = subprocess.run(_train_args(data, output, *extra), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    losses = _losses(output)
    assert len(losses) == 40 and all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5, losses
    saved = json.loads((output / "config.json").read_text())
    assert saved["model_type"] == "minimind_v" and (output / "model.safetensors").is_file()


def test_train_script_kill_and_resume_bf16_compiled(data, tmp_path):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    args = ("--save-steps", "10", "--compile")
    subprocess.run(_train_args(data, reference, *args), check=True, capture_output=True, timeout=900)
    process = subprocess.Popen(_train_args(data, killed, *args), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 600
        while not (killed / "checkpoint-20").is_dir():
            assert process.poll() is None, "training ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    assert not (killed / "model.safetensors").exists()
    subprocess.run(_train_args(data, killed, *args, "--resume"), check=True, capture_output=True, timeout=900)
    resumed, expected = _losses(killed), _losses(reference)
    assert len(resumed) == len(expected) == 40
    # bf16 kernels with atomics are not bitwise repeatable; the resumed run must follow the reference closely.
    torch.testing.assert_close(torch.tensor(resumed), torch.tensor(expected), rtol=2e-2, atol=2e-2)


def test_fsdp2_one_process_trains_like_plain_run_and_saves_a_loadable_model(data, tmp_path):
    """`accelerate launch` with configs/accelerate/fsdp.yaml on one GPU (the multi-GPU kinds are not always lent):
    the plain run's losses and a full state dict that from_pretrained loads. Checkpoints under FSDP are refused
    with a named error (resume state is pickle-free and not yet gathered from shards)."""
    from transformers import AutoModelForImageTextToText

    accelerate = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                  str(REPO_ROOT / "configs" / "accelerate" / "fsdp.yaml"), "--num_processes", "1"]
    plain, fsdp = tmp_path / "plain", tmp_path / "fsdp"
    args = ("--no-compile", "--packing")
    for output, launcher in ((plain, [sys.executable]), (fsdp, accelerate)):
        result = subprocess.run(launcher + _train_args(data, output, *args, steps=20)[1:], capture_output=True,
                                text=True, timeout=900)
        assert result.returncode == 0, result.stderr[-4000:]
    torch.testing.assert_close(torch.tensor(_losses(fsdp)), torch.tensor(_losses(plain)), rtol=2e-2, atol=2e-2)
    model = AutoModelForImageTextToText.from_pretrained(fsdp, trust_remote_code=True)
    plain_model = AutoModelForImageTextToText.from_pretrained(plain, trust_remote_code=True)
    full, reference = model.state_dict(), plain_model.state_dict()
    assert full.keys() == reference.keys()  # a full state dict, not shards
    assert all(full[k].shape == reference[k].shape and torch.isfinite(full[k]).all() for k in full)
    refused = subprocess.run(accelerate + _train_args(data, tmp_path / "ckpt", *args, "--save-steps", "5")[1:],
                             capture_output=True, text=True, timeout=900)
    assert refused.returncode != 0 and "not supported under FSDP" in refused.stderr


def test_packed_and_padded_batches_agree_on_gpu(data):
    from processing.collator import VLMCollator
    from processing.dataset import VLMDataset

    dataset = VLMDataset(data / "sft.jsonl", shipped_processor())
    items = [dataset[i] for i in range(8)]
    results = {}
    for packing in (False, True):
        model = tiny_model(seed=1, initializer_range=0.3).cuda().train()
        if packing:
            model.model.language_model.set_attn_implementation("flex_attention")
        batch = VLMCollator(0, packing=packing)(items)
        batch = {k: v.cuda() for k, v in batch.items() if isinstance(v, torch.Tensor)}
        loss = model(**batch).loss
        loss.backward()
        results[packing] = (loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    (loss_pad, grads_pad), (loss_pack, grads_pack) = results[False], results[True]
    torch.testing.assert_close(loss_pack, loss_pad, rtol=1e-4, atol=1e-4)
    for name, grad in grads_pad.items():
        torch.testing.assert_close(grads_pack[name], grad, rtol=1e-3, atol=1e-4, msg=name)


def test_trl_script_bf16_lora(data, tmp_path):
    pytest.importorskip("trl")
    model_dir = tmp_path / "model"
    tiny_model(seed=2).save_pretrained(model_dir)
    shipped_processor().save_pretrained(model_dir)
    output = tmp_path / "lora"
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "train_sft_trl.py"), "--model", str(model_dir), "--data",
         str(data / "sft.jsonl"), "--output", str(output), "--lora", "--merge", "--bf16", "--max-steps", "20",
         "--batch-size", "16", "--lr", "3e-3", "--logging-steps", "1"],
        capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    summary = json.loads((output / "train_summary.json").read_text())
    losses = [entry["loss"] for entry in summary["log_history"] if "loss" in entry]
    assert len(losses) == 20 and losses[-1] < losses[0], losses
    assert (output / "model.safetensors").is_file() and (output / "adapter").is_dir()


MOE = {"num_experts": 4, "n_shared_experts": 1, "num_experts_per_tok": 2, "moe_intermediate_size": 256}


def assert_greedy_under_eager_forward(model, x, generated):
    """Every generated token is (within 1e-3) the argmax of the eager model's logits for its prefix."""
    prompt = x["input_ids"].shape[1]
    mask = torch.cat([x["attention_mask"], torch.ones_like(generated[:, prompt:])], 1)
    with torch.no_grad():
        logits = model(input_ids=generated, attention_mask=mask, pixel_values=x["pixel_values"]).logits.float()
    step_logits = logits[:, prompt - 1 : -1]  # predictions for each generated token
    chosen = step_logits.gather(-1, generated[:, prompt:, None]).squeeze(-1)
    assert (chosen >= step_logits.max(-1).values - 1e-3).all()


@pytest.mark.parametrize("attention", ["module", "kernels"])
@pytest.mark.parametrize("overrides", [{}, MOE], ids=["dense", "moe"])
def test_compiled_static_cache_generation_is_greedy_under_eager_forward(overrides, attention, monkeypatch):
    """Compiled kernels may flip near-ties of a random model, so check what matters: every token the CUDA-graph
    decoder picked is (within 1e-3) the argmax of the eager model's logits for that prefix. `attention`: the
    step's attention as the modules run it, or as the Triton decode kernels (decode_attention.py). The dense
    decoder's prefill is captured on the first request of a (padded) prompt shape and replayed by the next ones,
    which must read their own prompt and image."""
    import modeling_minimind_v.fast_generate as fast

    if attention == "kernels":
        pytest.importorskip("triton")
    monkeypatch.setattr(fast, "USE_DECODE_KERNELS", attention == "kernels")
    monkeypatch.setattr(fast, "CAPTURE_PREFILL", True)
    model = small_model(**overrides).eval()
    kwargs = dict(max_new_tokens=24, min_new_tokens=24, do_sample=False, pad_token_id=0)
    for batch in (1, 4):
        x = inputs(batch, left_pad=3 if batch > 1 else 0)  # row 0 of the batch is left-padded
        static = model.generate(**x, **kwargs, cache_implementation="static")  # compiles + captures the step
        assert static.shape == (batch, x["input_ids"].shape[1] + 24)
        assert torch.equal(static[:, : x["input_ids"].shape[1]], x["input_ids"])
        assert_greedy_under_eager_forward(model, x, static)
        again = model.generate(**x, **kwargs, cache_implementation="static")  # replay of the captured graphs
        assert torch.equal(again, static)
        decoder = next(iter(model._fast_decoders.values()))
        assert (decoder.kernels is not None) == (attention == "kernels")
        # the dense decoder's projections run as the GEMV kernels too (batch 1 and 4 <= their MAX_BATCH)
        assert ("decode_projections" in decoder.attention_args) == (attention == "kernels" and not overrides)
        assert (decoder.prefills is not None and len(decoder.prefills) == 1) == (not overrides)  # dense: captured
        other = inputs(batch, left_pad=3 if batch > 1 else 0, seed=7)  # same shapes, another prompt and image
        replayed = model.generate(**other, **kwargs, cache_implementation="static")
        assert_greedy_under_eager_forward(model, other, replayed)
        fewer = model.generate(**x, **{**kwargs, "max_new_tokens": 10, "min_new_tokens": 10},
                               cache_implementation="static")  # fits the cache: the same captured graph serves it
        assert next(iter(model._fast_decoders.values())) is decoder
        assert torch.equal(fewer, static[:, : x["input_ids"].shape[1] + 10])


def test_compiled_training_step_matches_eager():
    x = inputs(4)
    x["labels"] = x["input_ids"].masked_fill(x["input_ids"] == 5, -100)
    results = []
    for compiled in (False, True):
        model = small_model().train()
        if compiled:
            model.compile()
        loss = model(**x).loss
        loss.backward()
        results.append((loss.detach(), model.lm_head.weight.grad.clone()))
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(results[0][1], results[1][1], atol=1e-4, rtol=1e-3)


# Run in a child process: Accelerate's state is process-wide, and this step needs its own (bf16) accelerator.
SYNC_FREE_STEP = """
import sys

import torch
from accelerate import Accelerator
from conftest import shipped_processor, tiny_model
from processing.collator import VLMCollator
from processing.dataset import VLMDataset
from processing.training.optim import build_optimizer, build_param_groups, warmup_cosine_schedule
from processing.training.step import TrainStep, compile_for_training

dataset = VLMDataset(sys.argv[1], shipped_processor())
accelerator = Accelerator(mixed_precision="bf16")
model = compile_for_training(tiny_model(seed=0).cuda().float().train())
groups = build_param_groups(model, 1e-3, 0.01)
optimizer = build_optimizer(groups, 1e-3)
model, optimizer = accelerator.prepare(model, optimizer)
scheduler = warmup_cosine_schedule(optimizer.optimizer, 10, 1)
step = TrainStep(accelerator, model, optimizer, scheduler, [p for g in groups for p in g["params"]], 1.0)
collator = VLMCollator(0, pad_to_multiple_of=64, pad_rows_to=8)

def window(start):
    batch = collator([dataset[i] for i in range(start, start + 8)])
    batch.pop("skipped")
    tokens = batch.pop("num_tokens")
    return [{k: v.cuda() if torch.is_tensor(v) else v for k, v in batch.items()}], batch["num_targets"], tokens

windows = [window(start) for start in (0, 8, 16, 24, 32)]  # copied to the GPU before the check starts
first = [step(*inputs) for inputs in windows[:2]]  # compiles
first[-1].numbers()
torch.cuda.synchronize()
torch.cuda.set_sync_debug_mode("error")  # any device-to-host wait inside the step now raises
results = [step(*inputs) for inputs in windows[2:]]
torch.cuda.set_sync_debug_mode(0)
print("losses", [r.numbers()[0] for r in first + results])
"""


def test_trainer_step_never_waits_for_the_gpu(data):
    """The whole optimizer step (compiled forward, chunked loss, backward, clipping, fused AdamW, schedule) queues
    its work without a device-to-host sync, so the host runs ahead and the GPU never idles between steps."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "tests"),
                                                       os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-c", SYNC_FREE_STEP, str(data / "sft.jsonl")], capture_output=True,
                            text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    losses = json.loads(result.stdout.split("losses", 1)[1].strip())
    assert len(losses) == 5 and all(loss == loss for loss in losses)


def test_bf16_autocast_chunked_loss_close_to_fp32():
    model = small_model().train()
    x = inputs(2)
    x["labels"] = x["input_ids"].masked_fill(x["input_ids"] == 5, -100)
    fp32 = model(**x).loss
    with torch.autocast("cuda", dtype=torch.bfloat16):
        autocast = model(**x).loss
    bf16 = model.to(torch.bfloat16)(**{k: v.to(torch.bfloat16) if v.is_floating_point() else v
                                       for k, v in x.items()}).loss
    torch.testing.assert_close(autocast.float(), fp32, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(bf16.float(), fp32, atol=2e-2, rtol=2e-2)


def decode_attention_matches_modules(device, dtype, qk_norm, heads, kv_heads, head_dim=64, cache_len=256):
    """The Triton decode kernels against the module's own path (QK-norm, RoPE, cache update, eager attention) for one
    new token per row, at write positions inside, at the end of and past a 64-slot block, rows left-padded."""
    from modeling_minimind_v.attention import (
        MiniMindAttention,
        MiniMindRotaryEmbedding,
        apply_rotary_pos_emb,
        eager_attention_forward,
    )
    from modeling_minimind_v.configuration_minimind import MiniMindConfig
    from modeling_minimind_v.decode_attention import DecodeAttention
    from modeling_minimind_v.fast_generate import MiniMindStaticCache

    config = MiniMindConfig(vocab_size=64, hidden_size=heads * head_dim, num_hidden_layers=1,
                            num_attention_heads=heads, num_key_value_heads=kv_heads, qk_norm=qk_norm)
    torch.manual_seed(0)
    module = MiniMindAttention(config, layer_idx=0).to(device, dtype)
    if qk_norm:  # not all ones, so a kernel that skips the weight fails
        module.q_norm.weight.data.uniform_(0.5, 1.5)
        module.k_norm.weight.data.uniform_(0.5, 1.5)
    rotary = MiniMindRotaryEmbedding(config).to(device)
    batch, pad = 3, torch.tensor([0, 5, 30])  # left padding per row (prompt slots)
    for pos in (37, 63, 64, 130):
        caches = []
        for _ in range(2):
            cache = MiniMindStaticCache(config=config, max_cache_len=cache_len)
            cache.early_initialization(batch, kv_heads, head_dim, dtype, torch.device(device))
            caches.append(cache)
        history = torch.randn(2, batch, kv_heads, pos, head_dim, generator=torch.Generator().manual_seed(pos))
        for cache in caches:
            cache.update(history[0].to(device, dtype), history[1].to(device, dtype), 0)
        valid = (torch.arange(cache_len)[None, :] >= pad[:, None]).to(device)
        query, key, value = (torch.randn(batch, 1, n * head_dim, device=device, dtype=dtype)
                             for n in (heads, kv_heads, kv_heads))
        positions = (pos - pad)[:, None].clamp(min=0).to(device)  # [b, 1]
        cos, sin = rotary(query, positions)

        kernels = DecodeAttention(caches[0], valid)
        got = kernels(module, torch.cat([query, key, value], -1), (cos, sin))

        shape = (batch, 1, -1, head_dim)
        q = module.q_norm(query.view(shape)).transpose(1, 2)
        k = module.k_norm(key.view(shape)).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        keys, values = caches[1].update(k, value.view(shape).transpose(1, 2), 0)
        allowed = (torch.arange(cache_len, device=device)[None, :] <= pos) & valid
        mask = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, torch.finfo(dtype).min)
        want, _ = eager_attention_forward(module, q, keys, values, mask[:, None, None], module.scaling)
        tol = 1e-5 if dtype == torch.float32 else 5e-2  # bf16: eager rounds scores and weights, the kernels do not
        torch.testing.assert_close(got.float(), want.reshape(batch, 1, -1).float(), atol=tol, rtol=tol)
        written = caches[0].layers[0]
        torch.testing.assert_close(written.keys[:, :, pos].float(), keys[:, :, pos].float(), atol=tol, rtol=tol)
        assert torch.equal(written.values[:, :, pos], values[:, :, pos])
        assert torch.equal(written.keys[:, :, :pos], keys[:, :, :pos])  # nothing else written
        assert not written.keys[:, :, pos + 1:].any()
        assert int(caches[0].position()) == pos  # the kernels do not advance the shared write position


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("qk_norm,heads,kv_heads", [(True, 16, 8), (False, 12, 4), (True, 6, 2)],
                         ids=["qwen3-group2", "llama-group3", "qwen3-group3"])
def test_decode_attention_kernels_match_the_modules(dtype, qk_norm, heads, kv_heads):
    pytest.importorskip("triton")
    decode_attention_matches_modules("cuda", dtype, qk_norm, heads, kv_heads)


def decode_projections_match_modules(device, dtype, hidden=256, intermediate=384, heads=4, kv_heads=2):
    """The GEMV kernels of decode_projections.py against the decoder layer's own modules, one token per row: the
    input RMSNorm + fused q/k/v projection, the o and down projections + residual, and the post-attention RMSNorm +
    fused gate/up + SwiGLU; then the layer's one-token path around a stand-in attention against its forward. An
    intermediate size that is not a power of two exercises the masked last block of the reduction."""
    import torch.nn.functional as F

    from modeling_minimind_v.configuration_minimind import MiniMindConfig
    from modeling_minimind_v.decode_projections import DecodeProjections
    from modeling_minimind_v.modeling_minimind import MiniMindDecoderLayer

    config = MiniMindConfig(vocab_size=64, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=1,
                            num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=hidden // heads)
    torch.manual_seed(0)
    layer = MiniMindDecoderLayer(config, layer_idx=0).to(device, dtype).eval()
    for norm in (layer.input_layernorm, layer.post_attention_layernorm):  # not all ones: a skipped weight fails
        norm.weight.data.uniform_(0.5, 1.5)
    layer.self_attn.fuse_projections()
    layer.mlp.fuse_projections()
    kernels = DecodeProjections()
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    x = torch.randn(3, 1, hidden, device=device, dtype=dtype)
    with torch.no_grad():
        qkv = kernels.norm_linear(x, layer.input_layernorm, layer.self_attn.fused_qkv)
        torch.testing.assert_close(qkv, F.linear(layer.input_layernorm(x), layer.self_attn.fused_qkv),
                                   atol=tol, rtol=tol)
        attn = qkv[..., : hidden].contiguous()  # stand-in attention output [b, 1, heads * d]
        h = kernels.linear_add(attn, layer.self_attn.o_proj.weight, x)
        torch.testing.assert_close(h, x + layer.self_attn.o_proj(attn), atol=tol, rtol=tol)
        act = kernels.norm_swiglu(h, layer.post_attention_layernorm, layer.mlp.fused_gate_up)
        gate, up = F.linear(layer.post_attention_layernorm(h), layer.mlp.fused_gate_up).chunk(2, -1)
        torch.testing.assert_close(act, F.silu(gate) * up, atol=tol, rtol=tol)
        out = kernels.linear_add(act, layer.mlp.down_proj.weight, h)
        torch.testing.assert_close(out, h + layer.mlp.down_proj(act), atol=tol, rtol=tol)

        def stand_in(module, joint, position_embeddings):  # what the decode attention returns, from q alone
            return joint[..., : hidden].contiguous()

        got = layer._decode_forward(x, None, kernels, stand_in)
        h_ref = x + layer.self_attn.o_proj(F.linear(layer.input_layernorm(x), layer.self_attn.fused_qkv)[..., :hidden])
        want = h_ref + layer.mlp(layer.post_attention_layernorm(h_ref))
        torch.testing.assert_close(got, want, atol=2 * tol, rtol=2 * tol)
        with pytest.raises(ValueError, match="one contiguous token per row"):
            kernels.norm_linear(torch.cat([x, x], 1), layer.input_layernorm, layer.self_attn.fused_qkv)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_decode_projections_match_the_modules(dtype):
    pytest.importorskip("triton")
    decode_projections_match_modules("cuda", dtype)
