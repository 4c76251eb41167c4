"""Benchmark minimind-v against transformers' LLaVA with identical shapes, in one process (what
``scripts/benchmark.py`` runs; results in docs/benchmarks.md).

Both models are random-init, bf16 on GPU (fp32 on CPU), same vision tower (the preset's CLIP), same decoder shapes,
same projector. Measured per system: an SFT training step (vision frozen, decoder + projector trained, AdamW) in
tokens/s, MFU against the peak TFLOPS and peak memory; `generate` tokens/s at each generate batch size (prompt = one
image + text tokens, a fixed number of new tokens, greedy, EOS disabled) with time to first token (a one-token
`generate` call on the same path: vision tower + prefill + first token choice) and, on CUDA, a decode profile per
token: GPU time, kernels (the top ones by name), and the bytes a step must read (weights + KV cache) as a fraction of
the measured device-to-device copy rate. LLaVA runs as most users run it
(eager, dynamic cache) and in its best mode (torch.compile for training, static cache for generate, which compiles
the decode step). The e2e mode runs the trainer itself (`measure_end_to_end`).
"""

from __future__ import annotations

import gc
import itertools
import json
import logging
import time
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from pathlib import Path

import torch
import transformers

import modeling_minimind_v.fast_generate as fast_decoding
from modeling_minimind_v import MiniMindVConfig, MiniMindVForConditionalGeneration
from modeling_minimind_v.decode_attention import decode_kernels_available

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------ models


def llava_twin(config: MiniMindVConfig):
    """transformers' LLaVA with the same vision tower, projector (mlp) and Qwen3 decoder shapes."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration, Qwen3Config

    decoder = config.get_text_config()
    text = Qwen3Config(
        vocab_size=decoder.vocab_size, hidden_size=decoder.hidden_size, intermediate_size=decoder.intermediate_size,
        num_hidden_layers=decoder.num_hidden_layers, num_attention_heads=decoder.num_attention_heads,
        num_key_value_heads=decoder.num_key_value_heads, head_dim=decoder.head_dim,
        max_position_embeddings=decoder.max_position_embeddings, rope_theta=decoder.rope_theta,
        rms_norm_eps=decoder.rms_norm_eps, tie_word_embeddings=config.tie_word_embeddings,
        bos_token_id=decoder.bos_token_id, eos_token_id=decoder.eos_token_id, pad_token_id=decoder.pad_token_id,
    )
    llava_config = LlavaConfig(
        vision_config=config.vision_config.to_dict(), text_config=text, image_token_index=config.image_token_id,
        image_seq_length=config.image_seq_length, vision_feature_layer=-1, vision_feature_select_strategy="default",
        tie_word_embeddings=config.tie_word_embeddings,
    )
    return LlavaForConditionalGeneration(llava_config)


def build(system: str, config, device, dtype):
    torch.manual_seed(0)
    with torch.device(device):
        model = MiniMindVForConditionalGeneration(config) if system == "minimind" else llava_twin(config)
    model.to(dtype)
    vision = model.model.vision_tower
    vision.requires_grad_(False)
    return model


def count_params(module):
    return sum(p.numel() for p in module.parameters())


def train_flops_per_step(config, batch, seq_len):
    """Model FLOPs of one step, identical for both systems so MFU ratios equal throughput ratios:
    6 N T for the trained decoder (incl. LM head) and projector, causal attention, 2 N T for the frozen tower."""
    with torch.device("meta"):
        meta = MiniMindVForConditionalGeneration(config)
    layers = count_params(meta.model.language_model.layers)
    decoder = config.get_text_config()
    head = decoder.vocab_size * decoder.hidden_size
    projector = count_params(meta.model.multi_modal_projector)
    vision = count_params(meta.model.vision_tower)
    tokens = batch * seq_len
    attention = 6 * decoder.num_hidden_layers * tokens * seq_len * decoder.num_attention_heads * decoder.head_dim
    vision_tokens = batch * (config.num_patches + 1)
    return 6 * (layers + head) * tokens + attention + 6 * projector * batch * config.image_seq_length + \
        2 * vision * vision_tokens


# ------------------------------------------------------------------------------------------------ inputs


def train_batch(config, batch, seq_len, label_fraction, device, dtype):
    g = torch.Generator().manual_seed(0)
    n_img = config.image_seq_length
    text = seq_len - n_img - 1
    decoder = config.get_text_config()
    ids = torch.randint(10, decoder.vocab_size, (batch, seq_len), generator=g)
    ids[:, 0] = decoder.bos_token_id
    ids[:, 1 : 1 + n_img] = config.image_token_id
    labels = ids.clone()
    labels[:, : seq_len - int(text * label_fraction)] = -100  # prompt + image: no loss
    size = config.vision_config.image_size
    return {
        "input_ids": ids.to(device),
        "attention_mask": torch.ones_like(ids).to(device),
        "pixel_values": torch.randn(batch, 3, size, size, generator=g).to(device, dtype),
        "labels": labels.to(device),
    }


def generate_inputs(config, batch, text_tokens, device, dtype):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(10, config.get_text_config().vocab_size, (batch, 1 + config.image_seq_length + text_tokens),
                        generator=g)
    ids[:, 1 : 1 + config.image_seq_length] = config.image_token_id
    size = config.vision_config.image_size
    return {
        "input_ids": ids.to(device),
        "attention_mask": torch.ones_like(ids).to(device),
        "pixel_values": torch.randn(batch, 3, size, size, generator=g).to(device, dtype),
    }


# ------------------------------------------------------------------------------------------------ measurements


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure_training(model, batch, args, device, compile_model, fused, profile=False):
    """Time the trainer's own optimizer step (processing/training/step.py: TrainStep) on a fixed batch, set up as
    scripts/train.py sets it up: fp32 master weights under bf16 autocast (Accelerate) on GPU, the projector and the
    decoder trained, AdamW (fused where `fused`), a warmup-cosine schedule, gradient clipping at 1.0."""
    from accelerate import Accelerator

    from .training.optim import build_optimizer, build_param_groups, warmup_cosine_schedule
    from .training.step import TrainStep, compile_for_training
    from .training.trainer import cpu_multiprocess

    # As the trainer builds it (Accelerate's state is process-wide: a second, different Accelerator would be refused).
    accelerator = Accelerator(cpu=cpu_multiprocess(), mixed_precision="bf16" if device.type == "cuda" else "no")
    model.float().train()
    if compile_model:
        compile_for_training(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if fused:
        optimizer = build_optimizer(build_param_groups(model, 1e-5, 0.01), 1e-5)
    else:  # as most users run it: foreach AdamW over every trainable parameter
        optimizer = torch.optim.AdamW(trainable, lr=1e-5, foreach=True)
    model, optimizer = accelerator.prepare(model, optimizer)
    total = args.warmup_steps + args.train_steps
    scheduler = warmup_cosine_schedule(getattr(optimizer, "optimizer", optimizer), total, 1)
    step = TrainStep(accelerator, model, optimizer, scheduler, trainable, max_grad_norm=1.0)
    num_targets = int((batch["labels"][:, 1:] != -100).sum())
    num_tokens = batch["input_ids"].numel()

    def run_step():  # the batch carries its target count, as the trainer's collator gives it
        return step([dict(batch, num_targets=num_targets)], num_targets, num_tokens)

    start = time.perf_counter()
    for _ in range(args.warmup_steps):
        result = run_step()
    result.numbers()
    sync(device)
    warmup_s = time.perf_counter() - start
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    prof = None
    if profile:
        prof = torch.profiler.profile(activities=_profiler_activities(device))
        prof.__enter__()
    start = time.perf_counter()
    for _ in range(args.train_steps):
        result = run_step()
    loss, _ = result.numbers()
    sync(device)
    elapsed = time.perf_counter() - start
    if prof is not None:
        prof.__exit__(None, None, None)
    tokens = num_tokens * args.train_steps
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    del optimizer, step
    return {"tokens_per_s": tokens / elapsed, "step_s": elapsed / args.train_steps, "peak_mem_gib": peak,
            "warmup_s": warmup_s, "final_loss": loss}, prof


def _generate_kwargs(model, args, static: bool) -> dict:
    """Greedy, exactly args.new_tokens new tokens (EOS cannot stop it early); static cache on request."""
    kwargs = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False,
                  pad_token_id=model.config.get_text_config().pad_token_id)
    if static:
        kwargs["cache_implementation"] = "static"
    return kwargs


def _profiler_activities(device) -> list:
    return [torch.profiler.ProfilerActivity.CPU] + (
        [torch.profiler.ProfilerActivity.CUDA] if device.type == "cuda" else [])


def _write_top_ops(prof, device, path: Path) -> str:
    """The 25 most expensive ops of a profile, written to `path`; returns the table."""
    sort = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    table = prof.key_averages().table(sort_by=sort, row_limit=25, max_name_column_width=70)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(table)
    return table


@torch.no_grad()
def measure_generate(model, inputs, args, device, static):
    model.eval()
    kwargs = _generate_kwargs(model, args, static)
    start = time.perf_counter()
    model.generate(**inputs, **kwargs)  # warm-up (compiles the decode step for the static cache)
    sync(device)
    warmup_s = time.perf_counter() - start
    start = time.perf_counter()
    out = model.generate(**inputs, **kwargs)
    sync(device)
    elapsed = time.perf_counter() - start
    new = out.shape[1] - inputs["input_ids"].shape[1]
    result = {"tokens_per_s": inputs["input_ids"].shape[0] * new / elapsed, "new_tokens": new, "s": elapsed,
              "warmup_s": warmup_s, "ttft_ms": 1e3 * time_to_first_token(model, inputs, kwargs, device)}
    if device.type == "cuda":
        result.update(decode_profile(model, inputs, kwargs, new))
    return result


@torch.no_grad()
def _first_token(model, inputs, kwargs):
    """What a request costs before its first new token, through the same `generate` path as the timed call (for
    minimind-v's static cache: the fast decoder's prefill, vision tower included, and its token choice)."""
    return model.generate(**inputs, **{**kwargs, "max_new_tokens": 1, "min_new_tokens": 1})


def time_to_first_token(model, inputs, kwargs, device, repeats: int = 3) -> float:
    """Best of `repeats` one-token `generate` calls, in seconds (after one warm-up call)."""
    _first_token(model, inputs, kwargs)
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        _first_token(model, inputs, kwargs)
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def _kernels(prof) -> dict[str, list]:
    """{kernel name: [launches, summed GPU µs]} of the device kernels a profile saw (CUDA-graph replays included)."""
    kernels: dict[str, list] = {}
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            entry = kernels.setdefault(event.name, [0, 0.0])
            entry[0] += 1
            entry[1] += event.device_time
    return kernels


def busy_us(intervals) -> float:
    """Length (µs) of the union of [start, end] intervals: the time at least one kernel ran. Kernels launched with
    programmatic dependent launch (PDL) overlap their neighbours, so their summed durations count time twice."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def _busy(prof) -> float:
    """GPU busy µs of a profile's device kernels."""
    return busy_us((event.time_range.start, event.time_range.end) for event in prof.events()
                   if event.device_type == torch.autograd.DeviceType.CUDA)


def per_step_kernels(whole: dict, prefill: dict, steps: int, top: int = 12) -> tuple[float, float, list]:
    """Kernels and GPU µs per decode step (whole call minus its prefill), and the `top` kernels by GPU time as
    [µs per step, launches per step, name]."""
    rows = [((us - prefill.get(name, [0, 0.0])[1]) / steps, (n - prefill.get(name, [0, 0.0])[0]) / steps, name)
            for name, (n, us) in whole.items()]
    rows.sort(reverse=True)
    return (sum(n for _, n, _ in rows), sum(us for us, _, _ in rows),
            [[round(us, 1), round(n, 2), name[:120]] for us, n, name in rows[:top]])


def copy_rate(device, gib: float = 1.0) -> float:
    """Device-to-device copy rate in bytes/s (read + write), the practical bandwidth ceiling of a decode step."""
    src = torch.empty(int(gib * 2**30), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    sync(device)
    start = time.perf_counter()
    for _ in range(5):
        dst.copy_(src)
    sync(device)
    rate = 2 * src.numel() * 5 / (time.perf_counter() - start)
    del src, dst
    return rate


@torch.no_grad()
def decode_profile(model, inputs, kwargs, new_tokens) -> dict:
    """Per decode step: GPU busy µs, summed kernel µs, kernels and the fraction of the copy rate its bytes need in
    the busy time, from a profile of a whole generate call minus a profile of a one-token call (its prefill)."""
    device = inputs["input_ids"].device
    activities = [torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as prefill:
        _first_token(model, inputs, kwargs)
        sync(device)
    with torch.profiler.profile(activities=activities) as whole:
        model.generate(**inputs, **kwargs)
        sync(device)
    steps = max(new_tokens - 1, 1)
    kernels, kernel_us, top = per_step_kernels(_kernels(whole), _kernels(prefill), steps)
    gpu_us = (_busy(whole) - _busy(prefill)) / steps
    text = model.config.get_text_config()
    head = model.lm_head.weight  # read whole every step (tied or not); the embedding is a one-row lookup
    weight_bytes = head.numel() * head.element_size() + sum(
        p.numel() * p.element_size() for name, p in model.model.language_model.named_parameters()
        if "embed_tokens" not in name)
    context = inputs["input_ids"].shape[1] + new_tokens / 2  # mean keys attended per step
    kv_bytes = (2 * text.num_hidden_layers * text.num_key_value_heads * text.head_dim * context
                * inputs["input_ids"].shape[0] * model.lm_head.weight.element_size())
    rate = copy_rate(device)
    # gpu_us_per_step: GPU busy time (kernels overlapping under PDL counted once); kernel_us_per_step: the
    # kernels' summed durations, which `top_kernels` splits up (a PDL kernel's includes its wait for the previous one).
    return {"gpu_us_per_step": gpu_us, "kernel_us_per_step": kernel_us, "kernels_per_step": kernels, "top_kernels": top,
            "bytes_per_step": weight_bytes + kv_bytes, "copy_rate_gbs": rate / 1e9,
            "bandwidth_fraction": (weight_bytes + kv_bytes) / (gpu_us * 1e-6) / rate if gpu_us > 0 else None}


@torch.no_grad()
def profile_generate(model, inputs, args, device, static, name):
    """Top kernels of one (already warmed-up) generate call, written to PROFILE_DIR/NAME_top_ops.txt."""
    with torch.profiler.profile(activities=_profiler_activities(device)) as prof:
        model.generate(**inputs, **_generate_kwargs(model, args, static))
        sync(device)
    _write_top_ops(prof, device, Path(args.profile_dir) / f"{name}_top_ops.txt")


def run_system(system, mode_name, config, args, device, dtype, compile_train, fused, static_gen, profile=False):
    result = {}
    modes = args.modes.split(",")
    if "train" in modes:
        model = build(system, config, device, dtype)  # measure_training moves it to fp32 master weights
        batch = train_batch(config, args.batch_size, args.seq_len, args.label_fraction, device, dtype)
        train, prof = measure_training(model, batch, args, device, compile_train, fused, profile)
        train["mfu"] = (train_flops_per_step(config, args.batch_size, args.seq_len) / train["step_s"]
                        / (args.peak_tflops * 1e12))
        result["train"] = train
        if prof is not None:
            table = _write_top_ops(prof, device, Path(args.profile_dir) / f"{system}_train_top_ops.txt")
            trace = str(Path(args.profile_dir) / f"{system}_train_trace.json")
            prof.export_chrome_trace(trace)
            logger.info("top ops of %s training:\n%s", system, table)
            result["profile_trace"] = trace
        del batch, model
        _release(device)
    if "generate" in modes:
        model = build(system, config, device, dtype)  # fresh: no compiled training forward, weights in `dtype`
        result["generate"] = {}
        for b in [int(x) for x in args.gen_batch.split(",")]:
            inputs = generate_inputs(config, b, args.prompt_text_tokens, device, dtype)
            result["generate"][f"batch{b}"] = measure_generate(model, inputs, args, device, static_gen)
            if profile:
                profile_generate(model, inputs, args, device, static_gen, f"{system}_generate_batch{b}")
        del model
        _release(device)
    logger.info("[%s] %s", mode_name, json.dumps(result))
    return result


def _release(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    torch.compiler.reset()


def step_alone(config, warmup_steps: int, timed_steps: int, device) -> dict:
    """The trainer's own step (its Stepper, set up by the trainer's `setup`: model, compile, collator, optimizer) on the
    trainer's own first batches, loaded onto the device beforehand: what the end-to-end run would reach if loading
    data and logging cost nothing. The batches are those the end-to-end run timed (same seed, same sampler)."""
    from .training.trainer import Stepper, setup

    run, _ = setup(config)

    def epochs():  # as the trainer runs them: a short dataset takes several epochs
        for epoch in itertools.count():
            run.sampler.set_epoch(epoch)
            yield from run.loader

    # grad_accum 1: one batch per step
    windows = [[batch] for batch in itertools.islice(epochs(), warmup_steps + timed_steps)]
    step = Stepper(run)  # what the trainer's loop calls: counts the window, then TrainStep
    for window in windows[:warmup_steps]:
        result = step(window)
    result.numbers()
    sync(device)
    start, tokens = time.perf_counter(), 0
    for window in windows[warmup_steps:]:
        result = step(window)
        tokens += result.num_tokens
    result.numbers()
    sync(device)
    return {"tokens_per_s": tokens / (time.perf_counter() - start), "steps_timed": timed_steps}


# Presets whose token ids are a real tokenizer's (the project's own tokenizer cannot train them from scratch): the e2e
# mode builds a random checkpoint of their shape with such a tokenizer, as scripts/make_random_checkpoint.py +
# scripts/import_qwen3.py would, so nothing is downloaded. (decoder family, decoder shape, vision shape)
E2E_RANDOM_CHECKPOINTS = {"qwen3-0.6b": ("qwen3", "qwen3-0.6b", "base")}


def _e2e_model_source(args, tmp: Path) -> dict:
    """TrainConfig's model source for the e2e runs: --e2e-model, a random checkpoint of the preset's shape, or the
    preset itself."""
    if args.e2e_model:
        return {"model": args.e2e_model}
    if args.preset not in E2E_RANDOM_CHECKPOINTS:
        return {"config": args.preset}
    from .conversion.assembly import convert_qwen3_to_minimind_v
    from .conversion.random_checkpoints import make_random_pair

    family, shape, vision_shape = E2E_RANDOM_CHECKPOINTS[args.preset]
    decoder, vision = make_random_pair(tmp / "random", family, shape, vision_shape=vision_shape)
    logger.info("e2e: a random %s checkpoint (%s decoder, ViT-B/16 tower) in %s", args.preset, family, tmp)
    return {"model": str(convert_qwen3_to_minimind_v(decoder, vision, tmp / "model"))}


def measure_end_to_end(args, device, report=None) -> dict:
    """scripts/train.py's own loop (`processing.training.trainer.train`) on synthetic shapes data, in each layout of
    --e2e-layouts (padded, packed): tokens/s of real tokens as its train_log.jsonl reports them, over the steps after
    the first `--warmup-steps` (which compile): `tokens_per_s` is their median, `mean_tokens_per_s` their total
    tokens over their total time. Beside each, the same step alone on the same batches (`step_alone`), and the ratio
    of the two. `report(results)` is called as each number arrives (the script writes its JSON then)."""
    import statistics
    import tempfile

    from .synthetic import make_dataset
    from .training.config import TrainConfig
    from .training.log import read_jsonl_log
    from .training.trainer import train

    layouts = [layout.strip() for layout in args.e2e_layouts.split(",") if layout.strip()]
    if not layouts or set(layouts) - {"padded", "packed"}:
        raise ValueError(f"--e2e-layouts takes padded and/or packed, got {args.e2e_layouts!r}")
    report = report or (lambda results: None)
    results = {}
    with tempfile.TemporaryDirectory(prefix="minimind-e2e-") as tmp:
        tmp = Path(tmp)
        source = _e2e_model_source(args, tmp)
        config_of = MiniMindVConfig.from_pretrained(source["model"]) if "model" in source else \
            MiniMindVConfig.from_preset(source["config"])  # the folder's own config, read without remote code
        make_dataset(tmp / "data", args.e2e_rows, 8, seed=0, image_size=config_of.vision_config.image_size)
        for layout in layouts:
            config = TrainConfig(
                **source, stage="sft", data=str(tmp / "data" / "sft.jsonl"), output=str(tmp / layout),
                max_steps=args.warmup_steps + args.train_steps, batch_size=args.e2e_batch_size, lr=1e-5,
                warmup_ratio=0.0, mixed_precision="bf16" if device.type == "cuda" else "no",
                packing=layout == "packed", num_workers=args.num_workers,
                compile=None if not args.no_compile else False, seed=0,
            )
            metrics = train(config)
            steps = read_jsonl_log(Path(config.output) / "train_log.jsonl")[args.warmup_steps:]
            seconds = sum(r["tokens"] / r["tokens_per_s"] for r in steps) if steps else 0.0
            entry = results[layout] = {
                "tokens_per_s": statistics.median(r["tokens_per_s"] for r in steps) if steps else None,
                "mean_tokens_per_s": sum(r["tokens"] for r in steps) / seconds if seconds else None,
                "steps_timed": len(steps), "final_loss": metrics["final_loss"],
                "run_tokens_per_s": metrics["tokens_per_s"],
            }
            report(results)
            _release(device)
            if steps:
                entry["step_alone"] = step_alone(replace(config, output=str(tmp / f"{layout}-step")),
                                                 args.warmup_steps, len(steps), device)
                entry["e2e_vs_step"] = entry["mean_tokens_per_s"] / entry["step_alone"]["tokens_per_s"]
                report(results)
                _release(device)
    if "padded" in results and "packed" in results:
        padded, packed = results["padded"]["tokens_per_s"], results["packed"]["tokens_per_s"]
        results["packing_speedup"] = packed / padded if padded and packed else None
    return results


def ratio(results, a, b, *path):
    try:
        x, y = results[a], results[b]
        for key in path:
            x, y = x[key], y[key]
        return x / y
    except (KeyError, TypeError, ZeroDivisionError):
        return None


def format_table(results, args) -> str:
    """The results as an aligned text table: one row per system."""
    rows = [("system", "train tok/s", "MFU", "peak GiB") + tuple(f"gen b{b} tok/s" for b in args.gen_batch.split(","))
            + tuple(f"TTFT b{b} ms" for b in args.gen_batch.split(","))]
    for name in ("minimind", "llava_eager", "llava_best"):
        if name not in results:
            continue
        r = results[name]
        t = r.get("train", {})
        g = r.get("generate", {})
        rows.append((name, f"{t.get('tokens_per_s', float('nan')):,.0f}", f"{t.get('mfu', float('nan')):.1%}",
                     f"{t['peak_mem_gib']:.1f}" if t.get("peak_mem_gib") is not None else "-")
                    + tuple(f"{g.get(f'batch{b}', {}).get('tokens_per_s', float('nan')):,.1f}"
                            for b in args.gen_batch.split(","))
                    + tuple(f"{g.get(f'batch{b}', {}).get('ttft_ms', float('nan')):,.1f}"
                            for b in args.gen_batch.split(",")))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in rows)


# name: (model family, compiled training step where torch.compile can run, fused loss, static-cache generate)
SYSTEMS = {"minimind": ("minimind", True, True, True), "llava_eager": ("llava", False, False, False),
           "llava_best": ("llava", True, True, True)}


def systems_to_run(args) -> list[str]:
    """`--systems` as a list. Unset: minimind, and both LLaVA modes with --compare-hf. "none": no system (e2e only)."""
    if args.systems is None:
        return list(SYSTEMS) if args.compare_hf else ["minimind"]
    wanted = [name.strip() for name in args.systems.split(",")]
    if wanted == ["none"]:
        return []
    unknown = [name for name in wanted if name not in SYSTEMS]
    if unknown:
        raise ValueError(f"--systems: unknown {', '.join(unknown)}; choose from {', '.join(SYSTEMS)} (or none)")
    llava = [name for name in wanted if name != "minimind"]
    if llava and not args.compare_hf:
        raise ValueError(f"--systems {', '.join(llava)} needs --compare-hf (it builds the LLaVA twin)")
    return wanted


def run_benchmark(args, partial=None) -> dict:
    """Run the benchmark `args` describes (the flags of scripts/benchmark.py); returns the results. `partial(results)`
    is called with the results so far as each measurement finishes (so a run cut short keeps what it measured)."""
    wanted = systems_to_run(args)  # a bad --systems fails before anything is built
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda but no CUDA device is available")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    config = MiniMindVConfig.from_preset(args.preset)
    can_compile = device.type == "cuda" and not args.no_compile
    torch.backends.cuda.matmul.allow_tf32 = True

    results = {"preset": args.preset, "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
               "torch": torch.__version__, "batch_size": args.batch_size, "seq_len": args.seq_len,
               "image_tokens": config.image_seq_length, "new_tokens": args.new_tokens}
    results["transformers"] = transformers.__version__
    # Unset flags: the library's own settings. The JSON records what runs on this device.
    kernels = (args.decode_attention == "kernels") if args.decode_attention else fast_decoding.USE_DECODE_KERNELS
    available = decode_kernels_available(config.get_text_config(), device)
    if args.decode_attention == "kernels" and not available:
        raise ValueError("--decode-attention kernels needs a CUDA device, Triton and a power-of-two head_dim")
    wanted_projections = getattr(args, "decode_projections", None)
    projections = (wanted_projections == "kernels") if wanted_projections else fast_decoding.USE_DECODE_PROJECTIONS
    results["decode_attention"] = "kernels" if kernels and available else "module"
    moe = bool(config.get_text_config().num_experts)
    results["decode_projections"] = "kernels (batch <= 4)" if kernels and available and projections and not moe \
        else "module"
    requested = getattr(args, "prefill", None)  # None: the library's own setting
    if requested == "graph" and moe:
        raise ValueError(f"--prefill graph: preset {args.preset!r} has an MoE decoder, whose prefill stays eager "
                         "(its routing counts tokens per expert on the host)")
    if requested == "graph" and device.type != "cuda":
        raise ValueError("--prefill graph needs a CUDA device (the prefill is captured as a CUDA graph)")
    capture = requested == "graph" if requested else fast_decoding.CAPTURE_PREFILL
    results["prefill"] = "graph" if capture and device.type == "cuda" and not moe else "eager"  # what runs
    with fast_decoding_switches(kernels, capture, projections):
        return _run(args, partial, results, config, device, dtype, can_compile, wanted)


@contextmanager
def fast_decoding_switches(decode_kernels: bool, capture_prefill: bool, decode_projections: bool = True):
    """fast_generate's switches set for one benchmark run and put back after it, so that the caller's process
    keeps its own."""
    names = ("USE_DECODE_KERNELS", "CAPTURE_PREFILL", "USE_DECODE_PROJECTIONS")
    saved = [getattr(fast_decoding, name) for name in names]
    for name, value in zip(names, (decode_kernels, capture_prefill, decode_projections)):
        setattr(fast_decoding, name, value)
    try:
        yield
    finally:
        for name, value in zip(names, saved):
            setattr(fast_decoding, name, value)


def _run(args, partial, results, config, device, dtype, can_compile, wanted) -> dict:
    """The measurements of `run_benchmark`, after its checks; `wanted`: the systems to run (`systems_to_run`)."""
    if "e2e" in args.modes.split(","):  # first: it runs the trainer, which builds its own model
        # batch_size / seq_len above are the train mode's shapes; the e2e loop runs its own settings
        results["e2e_settings"] = {"rows": args.e2e_rows, "batch_size": args.e2e_batch_size,
                                   "layouts": args.e2e_layouts, "num_workers": args.num_workers,
                                   "model": args.e2e_model}
        def report(e2e):
            results["minimind_e2e"] = e2e
            if partial is not None:
                partial(results)

        results["minimind_e2e"] = measure_end_to_end(args, device, report)
    with torch.autocast(device.type, enabled=False) if device.type == "cuda" else nullcontext():
        for name, (system, compile_train, fused, static_gen) in SYSTEMS.items():
            if name not in wanted:
                continue
            results[name] = run_system(system, name, config, args, device, dtype, compile_train and can_compile,
                                       fused, static_gen, profile=args.profile and name == "minimind")
            if partial is not None:
                partial(results)
    results["ratios"] = {
        "train_tokens_per_s_vs_llava_best": ratio(results, "minimind", "llava_best", "train", "tokens_per_s"),
        "train_tokens_per_s_vs_llava_eager": ratio(results, "minimind", "llava_eager", "train", "tokens_per_s"),
        "train_peak_mem_vs_llava_best": ratio(results, "minimind", "llava_best", "train", "peak_mem_gib"),
    }
    e2e, step = results.get("minimind_e2e", {}), results.get("minimind", {}).get("train", {})
    if e2e.get("padded", {}).get("tokens_per_s") and step.get("tokens_per_s"):
        results["ratios"]["e2e_padded_vs_step"] = e2e["padded"]["tokens_per_s"] / step["tokens_per_s"]
    for b in args.gen_batch.split(","):
        for ref in ("llava_best", "llava_eager"):
            results["ratios"][f"generate_batch{b}_vs_{ref}"] = ratio(
                results, "minimind", ref, "generate", f"batch{b}", "tokens_per_s")
    return results


__all__ = ["format_table", "llava_twin", "run_benchmark", "train_flops_per_step"]
