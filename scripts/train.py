"""Train MiniMind-V (any stage) with Accelerate: ``python scripts/train.py ...`` or
``accelerate launch --num_processes N scripts/train.py ...``.

Stages differ only in what trains: ``--stage pretrain`` trains the projector, ``--stage sft`` the projector and the
decoder; ``--train vision,projector,decoder`` overrides either. The final OUTPUT folder is a ``save_pretrained``
model + processor that loads with ``AutoModelForImageTextToText`` / ``AutoProcessor`` (``trust_remote_code=True``).

Resumable: ``--save-steps N`` writes ``OUTPUT/checkpoint-STEP`` atomically (full Accelerate state plus the data
position); ``--resume`` continues from the latest complete one and reproduces the uninterrupted run, because the data
order is a function of (seed, epoch) and already-consumed batches are skipped.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import logging
import math
import os
import shutil
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs, PartialState
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from modeling_minimind_v import MiniMindVConfig, MiniMindVForConditionalGeneration
from processing.collator import VLMCollator
from processing.dataset import EpochSampler, VLMDataset
from modeling_minimind_v.processing_minimind_v import MiniMindVProcessor
from processing.processors import build_processor
from processing.tokenizers import load_default_tokenizer
from processing.training import (
    STAGE_PARTS, JsonlLog, build_optimizer, build_param_groups, checkpoint_tmp_dir, finalize_checkpoint,
    is_complete_checkpoint, latest_checkpoint, list_checkpoints, load_trainer_state, parameter_report, parse_parts,
    prune_checkpoints, remove_stale_tmp_dirs, set_trainable, warmup_cosine_schedule,
)

logger = logging.getLogger("minimind_v.train")

TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}
# Settings a resumed run must share with the run that wrote the checkpoint for the data position to mean the same.
RESUME_INVARIANTS = ("seed", "batch_size", "grad_accum", "packing", "num_processes", "data")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="preset name (tiny, small, base, moe, ...) or config JSON: a fresh model")
    source.add_argument("--model", help="save_pretrained folder to continue from (model + processor)")
    p.add_argument("--stage", choices=sorted(STAGE_PARTS), default="sft",
                   help="pretrain: projector only; sft: projector + decoder")
    p.add_argument("--train", help="comma-separated parts to train (vision,projector,decoder); overrides --stage")
    p.add_argument("--data", required=True, help="training rows (.jsonl or .parquet)")
    p.add_argument("--image-root", help="folder for relative image paths (default: the data file's folder)")
    p.add_argument("--eval-data", help="rows for an eval loss after every epoch")
    p.add_argument("--output", required=True, help="output folder: final model, checkpoints, train_log.jsonl")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--max-steps", type=int, default=0, help="optimizer steps; > 0 overrides --epochs")
    p.add_argument("--batch-size", type=int, default=16, help="rows per micro-batch per process")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--projector-lr", type=float, help="learning rate of the projector (default: --lr)")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--warmup-ratio", type=float, default=0.03, help="fraction of steps of linear warmup, then cosine")
    p.add_argument("--min-lr-ratio", type=float, default=0.0, help="cosine decays to this fraction of the lr")
    p.add_argument("--max-grad-norm", type=float, default=1.0, help="<= 0 disables clipping")
    p.add_argument("--max-length", type=int, help="rows with more tokens are dropped (default: the model's maximum)")
    p.add_argument("--mixed-precision", choices=("no", "bf16", "fp16"), default="no")
    p.add_argument("--save-steps", type=int, default=0, help="checkpoint every N optimizer steps (0: never)")
    p.add_argument("--save-total-limit", type=int, help="keep only the newest N checkpoints")
    p.add_argument("--resume", nargs="?", const="latest",
                   help="continue from the latest complete checkpoint in OUTPUT, or from the given checkpoint folder")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--log-with", choices=("none", "tensorboard", "wandb"), default="none")
    p.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--packing", action=argparse.BooleanOptionalAction, default=False,
                   help="padding-free batches: rows concatenated with per-row position_ids")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers (0: load in the main process)")
    p.add_argument("--num-threads", type=int,
                   help="torch CPU threads per process (tiny models on a busy CPU often run fastest with 1)")
    p.add_argument("--cache-images", action=argparse.BooleanOptionalAction, default=None,
                   help="keep decoded images in memory (default: when they fit 2 GiB)")
    return p


def _check_args(parser: argparse.ArgumentParser, args) -> None:
    if args.log_with != "none" and importlib.util.find_spec(TRACKER_PACKAGES[args.log_with]) is None:
        parser.error(f"--log-with {args.log_with} needs the '{TRACKER_PACKAGES[args.log_with]}' package "
                     f"(pip install {TRACKER_PACKAGES[args.log_with]}), or use --log-with none")
    if args.mixed_precision == "fp16" and not torch.cuda.is_available():
        parser.error("--mixed-precision fp16 needs a CUDA GPU; use bf16 (or no) on CPU")
    for name in ("epochs", "batch_size", "grad_accum"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if not 0.0 <= args.warmup_ratio < 1.0:
        parser.error("--warmup-ratio must be in [0, 1)")
    if args.train:
        try:
            parse_parts(args.train)
        except ValueError as error:
            parser.error(str(error))
    for name in ("data", "eval_data"):
        path = getattr(args, name)
        if path and not Path(path).is_file():
            parser.error(f"--{name.replace('_', '-')} {path}: no such file")


# ----------------------------------------------------------------------------------------------------------------------
# Setup
# ----------------------------------------------------------------------------------------------------------------------

def load_model_and_processor(args):
    if args.config:
        config = MiniMindVConfig.from_preset(args.config)
        model = MiniMindVForConditionalGeneration(config)
        processor = build_processor(load_default_tokenizer(), config.vision_config, config.image_seq_length)
    else:
        model = MiniMindVForConditionalGeneration.from_pretrained(args.model, dtype=torch.float32)
        try:
            # Our own class loads it; the flag only stops AutoTokenizer asking about the auto_map it finds there.
            processor = MiniMindVProcessor.from_pretrained(args.model, trust_remote_code=True)
        except (OSError, ValueError, TypeError) as error:
            logger.warning("no processor in %s (%s); using the shipped tokenizer", args.model, error)
            processor = build_processor(load_default_tokenizer(), model.config.vision_config,
                                        model.config.image_seq_length)
    config = model.config
    problems = []
    if processor.image_token_id != config.image_token_id:
        problems.append(f"processor image token id {processor.image_token_id} != config.image_token_id "
                        f"{config.image_token_id}")
    if processor.image_seq_length != config.image_seq_length:
        problems.append(f"processor image_seq_length {processor.image_seq_length} != config {config.image_seq_length}")
    if len(processor.tokenizer) > config.vocab_size:
        problems.append(f"tokenizer has {len(processor.tokenizer)} tokens > vocab_size {config.vocab_size}")
    if problems:
        raise ValueError("model and processor do not match: " + "; ".join(problems))
    return model, processor


def _cpu_multiprocess() -> bool:
    """Several processes but no GPU (torchrun, `accelerate launch --multi_gpu` on a CPU box): Accelerate needs
    cpu=True to use gloo; otherwise every process runs alone and they all write the same OUTPUT."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()


def _log_parameters(report: dict) -> None:
    for part, counts in report.items():
        logger.info("parameters %-9s trainable %12s / %12s", part, f"{counts['trainable']:,}", f"{counts['total']:,}")


def _windows(iterable, size: int):
    """Consecutive chunks of `size` micro-batches (the last may be shorter): one optimizer step each."""
    iterator = iter(iterable)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


@torch.no_grad()
def evaluate(accelerator, model, dataset, collator, batch_size: int) -> float:
    """Token-weighted mean loss over `dataset`; each process takes a disjoint stride, so nothing is counted twice."""
    indices = list(range(accelerator.process_index, len(dataset), accelerator.num_processes))
    loader = DataLoader(torch.utils.data.Subset(dataset, indices), batch_size=batch_size, collate_fn=collator)
    net = accelerator.unwrap_model(model)
    was_training = net.training
    net.eval()
    totals = torch.zeros(2, dtype=torch.float64, device=accelerator.device)
    for batch in loader:
        num_targets = batch.pop("num_targets")
        batch.pop("num_tokens"), batch.pop("skipped")
        if "input_ids" not in batch:
            continue
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        with accelerator.autocast():
            out = net(**batch, num_items_in_batch=1)  # reduction "sum" over target tokens
        loss = out.loss - out.aux_loss if out.aux_loss is not None else out.loss
        totals += torch.tensor([loss.item(), num_targets], dtype=torch.float64, device=accelerator.device)
    net.train(was_training)
    totals = accelerator.reduce(totals, "sum") if accelerator.num_processes > 1 else totals
    return (totals[0] / totals[1].clamp(min=1)).item()


# ----------------------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------------------

def train(args) -> dict:
    output = Path(args.output).resolve()
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    accelerator = Accelerator(
        cpu=_cpu_multiprocess(),
        mixed_precision=args.mixed_precision,
        log_with=None if args.log_with == "none" else args.log_with,
        project_dir=str(output),
        # Text-only batches leave the projector (and a trained vision tower) without gradients; DDP must allow that.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    main_process = accelerator.is_main_process
    if main_process:
        output.mkdir(parents=True, exist_ok=True)
        remove_stale_tmp_dirs(output)
    accelerator.wait_for_everyone()

    resume_from = None
    if args.resume:
        resume_from = latest_checkpoint(output) if args.resume == "latest" else Path(args.resume).resolve()
        if args.resume != "latest" and not is_complete_checkpoint(resume_from):
            raise ValueError(f"--resume {args.resume}: not a complete checkpoint (no completion marker)")
        if resume_from is None:
            logger.warning("--resume: no complete checkpoint in %s; starting from scratch", output)
    if resume_from is None and list_checkpoints(output):
        # A fresh run would interleave its checkpoints with the old run's, and a later --resume could pick the old.
        raise ValueError(f"{output} already holds checkpoints of an earlier run "
                         f"({', '.join(p.name for p in list_checkpoints(output))}): pass --resume to continue it, "
                         "or use an empty --output")

    set_seed(args.seed)
    model, processor = load_model_and_processor(args)
    parts = parse_parts(args.train) if args.train else STAGE_PARTS[args.stage]
    set_trainable(model, parts)
    report = parameter_report(model)
    logger.info("training parts: %s", ", ".join(parts))
    _log_parameters(report)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()

    max_length = args.max_length or model.config.max_position_embeddings
    dataset = VLMDataset(args.data, processor, image_root=args.image_root, max_length=max_length,
                         cache_images=args.cache_images)
    eval_dataset = None
    if args.eval_data:
        eval_dataset = VLMDataset(args.eval_data, processor, image_root=args.image_root, max_length=max_length,
                                  cache_images=args.cache_images)
    if len(dataset) == 0:
        raise ValueError(f"no usable rows in {args.data}: {dataset.stats.summary()}")
    if eval_dataset is not None and len(eval_dataset) == 0:
        logger.warning("no usable rows in --eval-data %s; skipping evaluation", args.eval_data)
        eval_dataset = None
    collator = VLMCollator(dataset.pad_token_id, packing=args.packing)
    sampler = EpochSampler(len(dataset), seed=args.seed)
    loader = DataLoader(dataset, batch_size=args.batch_size, sampler=sampler, collate_fn=collator,
                        num_workers=args.num_workers, persistent_workers=args.num_workers > 0)

    groups = build_param_groups(model, args.lr, args.weight_decay, args.projector_lr)
    optimizer = build_optimizer(groups, args.lr)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)

    batches_per_epoch = len(loader)  # per process, after sharding
    steps_per_epoch = math.ceil(batches_per_epoch / args.grad_accum)
    total_steps = args.max_steps if args.max_steps > 0 else args.epochs * steps_per_epoch
    num_epochs = math.ceil(total_steps / steps_per_epoch)
    warmup_steps = int(args.warmup_ratio * total_steps)
    # Stepped once per optimizer step by us (not prepared: Accelerate would step it once per process).
    scheduler = warmup_cosine_schedule(optimizer.optimizer, total_steps, warmup_steps, args.min_lr_ratio)
    accelerator.register_for_checkpointing(scheduler)
    trainable = [p for group in groups for p in group["params"]]

    run_info = {"seed": args.seed, "batch_size": args.batch_size, "grad_accum": args.grad_accum,
                "packing": args.packing, "num_processes": accelerator.num_processes,
                "data": str(Path(args.data).resolve()), "total_steps": total_steps}
    state = {"global_step": 0, "epoch": 0, "batch_in_epoch": 0, "tokens_seen": 0, "runtime_skipped": {}}
    train_log = JsonlLog(output / "train_log.jsonl", enabled=main_process)
    eval_log = JsonlLog(output / "eval_log.jsonl", enabled=main_process)
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        saved = load_trainer_state(resume_from)
        for key in RESUME_INVARIANTS + ("total_steps",):
            if saved["run"].get(key) != run_info[key]:
                logger.warning("resuming with %s=%r but the checkpoint was written with %r: the run will differ",
                               key, run_info[key], saved["run"].get(key))
        state.update(saved["state"])
        logger.info("resumed from %s at step %d (epoch %d, batch %d)", resume_from, state["global_step"],
                    state["epoch"], state["batch_in_epoch"])
    elif main_process:
        for log in (train_log, eval_log):  # a fresh run starts fresh logs
            log.path.unlink(missing_ok=True)
    train_log.truncate_after(state["global_step"])
    eval_log.truncate_after(state["global_step"] - 1)  # an eval at the checkpoint's step ran after it was saved

    if accelerator.log_with:
        accelerator.init_trackers("minimind-v", config={k: v for k, v in vars(args).items()
                                                        if isinstance(v, (int, float, str, bool))})
    logger.info("%d rows, %d micro-batches/epoch/process, %d optimizer steps (%d warmup), %d epoch(s), %d process(es)",
                len(dataset), batches_per_epoch, total_steps, warmup_steps, num_epochs, accelerator.num_processes)

    def save_checkpoint(epoch: int, batch_in_epoch: int) -> None:
        step = state["global_step"]
        tmp = checkpoint_tmp_dir(output, step)
        if main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if main_process:
            snapshot = {**state, "epoch": epoch, "batch_in_epoch": batch_in_epoch}
            final = finalize_checkpoint(output, step, {"state": snapshot, "run": run_info})
            prune_checkpoints(output, args.save_total_limit)
            logger.info("saved %s", final)
        accelerator.wait_for_everyone()

    world = accelerator.num_processes
    progress = tqdm(total=total_steps, initial=state["global_step"], disable=not accelerator.is_local_main_process,
                    desc="train", dynamic_ncols=True)
    last_good_batch = None
    last_loss, eval_loss, last_eval_step = None, None, None
    train_start, steps_this_run, tokens_this_run = time.perf_counter(), 0, 0
    step_start = time.perf_counter()
    start_epoch, start_batch = state["epoch"], state["batch_in_epoch"]

    for epoch in range(start_epoch, num_epochs):
        if state["global_step"] >= total_steps and epoch > start_epoch:
            break
        loader.set_epoch(epoch)
        sampler.set_epoch(epoch)
        skip = start_batch if epoch == start_epoch else 0
        epoch_loader = accelerator.skip_first_batches(loader, skip) if skip else loader
        batch_in_epoch = skip
        for window in _windows(epoch_loader, args.grad_accum):
            if state["global_step"] >= total_steps:  # resumed from the final step's checkpoint
                break
            num_targets = sum(b.pop("num_targets") for b in window)
            num_tokens = sum(b.pop("num_tokens") for b in window)
            for b in window:
                for reason, count in b.pop("skipped").items():
                    state["runtime_skipped"][reason] = state["runtime_skipped"].get(reason, 0) + count
            if world > 1:
                counts = accelerator.reduce(torch.tensor([num_targets, num_tokens], device=accelerator.device), "sum")
                num_targets, num_tokens = (int(c) for c in counts.tolist())
            # Every micro-batch's loss is a sum over its targets divided by the window's target count, so a step's
            # gradient is the token mean over the whole window, whatever the split into micro-batches (x world: DDP
            # averages over processes).
            denominator = max(num_targets, 1) / world
            loss_sum = torch.zeros((), device=accelerator.device)
            for index, batch in enumerate(window):
                weight = 1.0
                if "input_ids" not in batch:  # every row of this micro-batch failed to load
                    if world == 1 or last_good_batch is None:
                        continue
                    batch, weight = last_good_batch, 0.0  # other processes wait for this one's gradients
                else:
                    last_good_batch = batch
                sync = index == len(window) - 1 or world == 1
                with nullcontext() if sync else accelerator.no_sync(model):
                    out = model(**batch, num_items_in_batch=denominator)
                    loss = out.loss
                    if out.aux_loss is not None:  # MoE balance loss: once per step, not once per micro-batch
                        loss = loss - out.aux_loss + out.aux_loss / len(window)
                    loss = loss * weight
                    accelerator.backward(loss)
                loss_sum += loss.detach()
            lr = optimizer.param_groups[0]["lr"]  # the lr this step uses (the scheduler moves it afterwards)
            grad_norm = None
            if args.max_grad_norm > 0:
                grad_norm = accelerator.clip_grad_norm_(trainable, args.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            batch_in_epoch += len(window)
            state["global_step"] += 1
            state["tokens_seen"] += num_tokens
            steps_this_run += 1
            tokens_this_run += num_tokens
            if world > 1:
                loss_sum = accelerator.reduce(loss_sum, "mean")
            last_loss = loss_sum.item()
            now = time.perf_counter()
            record = {
                "step": state["global_step"], "loss": last_loss, "lr": lr,
                "tokens_per_s": num_tokens / max(now - step_start, 1e-9),
                "epoch": round(epoch + batch_in_epoch / batches_per_epoch, 4),
            }
            step_start = now
            if grad_norm is not None:
                record["grad_norm"] = float(grad_norm)
            train_log.write(record)
            if accelerator.log_with:
                accelerator.log({k: v for k, v in record.items() if k != "step"}, step=state["global_step"])
            progress.set_postfix(loss=f"{last_loss:.4f}", lr=f"{record['lr']:.2e}",
                                 tok_s=f"{record['tokens_per_s']:.0f}", refresh=False)
            progress.update(1)

            if args.save_steps > 0 and state["global_step"] % args.save_steps == 0:
                save_checkpoint(epoch, batch_in_epoch)
            if state["global_step"] >= total_steps:
                break
        if batch_in_epoch >= batches_per_epoch:  # the epoch ran to its end
            state["epoch"], state["batch_in_epoch"] = epoch + 1, 0
            if eval_dataset is not None:
                eval_loss = evaluate(accelerator, model, eval_dataset, collator, args.batch_size)
                last_eval_step = state["global_step"]
                eval_log.write({"step": last_eval_step, "epoch": epoch + 1, "eval_loss": eval_loss})
                logger.info("epoch %d: eval loss %.4f", epoch + 1, eval_loss)
                if accelerator.log_with:
                    accelerator.log({"eval_loss": eval_loss}, step=last_eval_step)
    progress.close()

    if eval_dataset is not None and last_eval_step != state["global_step"]:
        eval_loss = evaluate(accelerator, model, eval_dataset, collator, args.batch_size)
        eval_log.write({"step": state["global_step"], "epoch": state["epoch"], "eval_loss": eval_loss})
        logger.info("final eval loss %.4f", eval_loss)
    train_log.close()
    eval_log.close()
    runtime = time.perf_counter() - train_start

    if state["runtime_skipped"]:
        logger.warning("rows skipped while training (image failed to load), by reason: %s", state["runtime_skipped"])
    accelerator.wait_for_everyone()
    data_stats = dataset.stats.as_dict()
    data_stats["skipped_during_training"] = dict(state["runtime_skipped"])
    metrics = {
        "global_step": state["global_step"], "final_loss": last_loss, "eval_loss": eval_loss,
        "train_runtime_s": runtime, "steps_per_s": steps_this_run / max(runtime, 1e-9),
        "tokens_per_s": tokens_this_run / max(runtime, 1e-9), "data": data_stats,
        "eval_data": eval_dataset.stats.as_dict() if eval_dataset is not None else None,
        "parameters": report, "trained_parts": list(parts), "output": str(output),
    }
    if main_process:
        unwrapped = accelerator.unwrap_model(model)
        if args.gradient_checkpointing:
            unwrapped.gradient_checkpointing_disable()
        unwrapped.save_pretrained(output)
        processor.save_pretrained(output)
        with open(output / "train_metrics.json", "w", encoding="utf-8") as f:
            json.dump(metrics, f, indent=2)
        logger.info("saved model and processor to %s (%d steps, %.1f steps/s)", output, state["global_step"],
                    metrics["steps_per_s"])
    accelerator.wait_for_everyone()
    if accelerator.log_with:
        accelerator.end_training()
    return metrics


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_args(parser, args)
    # Only the main process reports progress; the others speak up for warnings.
    level = logging.INFO if PartialState(cpu=_cpu_multiprocess()).is_local_main_process else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return train(args)


if __name__ == "__main__":
    main()
