"""The MiniMind-V trainer (what ``scripts/train.py`` runs), plain or under ``accelerate launch``.

Stages differ only in what trains: ``stage="pretrain"`` trains the projector, ``"sft"`` the projector and the
decoder; ``train="vision,projector,decoder"`` overrides either. The final output folder is a ``save_pretrained``
model + processor that loads with ``AutoModelForImageTextToText`` / ``AutoProcessor`` (``trust_remote_code=True``),
plus ``train_log.jsonl`` (one record per optimizer step), ``eval_log.jsonl``, ``train_metrics.json`` and
``train_config.json``.

Resumable: ``save_steps=N`` writes ``OUTPUT/checkpoint-STEP`` atomically (weights, optimizer, schedule and RNG
states as safetensors + JSON, never pickle, plus the data position); ``resume`` continues from the latest complete
one and reproduces the uninterrupted run, because the data order is a function of (seed, epoch) and
already-consumed batches are skipped. A fresh run refuses an output folder holding a model or an earlier run's logs
unless ``overwrite`` (which keeps the old logs as ``*.previous-N.jsonl``).

Losses are token-weighted over an optimizer step: every micro-batch's loss is a sum over its prediction targets
divided by the whole window's target count, so gradient accumulation equals one larger batch and DDP equals
accumulation.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator, DataLoaderConfiguration, DistributedDataParallelKwargs, PartialState
from accelerate.utils import DistributedType, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..collator import VLMCollator
from ..dataset import EpochSampler, VLMDataset
from .checkpoints import (
    checkpoint_tmp_dir, finalize_checkpoint, is_complete_checkpoint, latest_checkpoint, list_checkpoints,
    load_checkpoint, prune_checkpoints, remove_stale_tmp_dirs,
)
from .config import ACCELERATE, TrainConfig
from .loading import load_model_and_processor
from .log import JsonlLog
from .optim import build_optimizer, build_param_groups, warmup_cosine_schedule
from .output import archive_logs, check_output, save_final
from .parts import STAGE_PARTS, log_parameter_report, parameter_report, parse_parts, set_trainable
from .resume_state import CheckpointError, save_training_state
from .step import StepResult, TrainStep, compile_for_training, eager_forward, resolve_compile, token_loss

logger = logging.getLogger(__name__)

# Settings a resumed run must share with the run that wrote the checkpoint for the data position to mean the same.
RESUME_INVARIANTS = ("seed", "batch_size", "grad_accum", "packing", "num_processes", "data")


# ----------------------------------------------------------------------------------------------------------------------
# Setup
# ----------------------------------------------------------------------------------------------------------------------

def cpu_multiprocess() -> bool:
    """Several processes but no GPU (torchrun, `accelerate launch --multi_gpu` on a CPU box): Accelerate needs
    cpu=True to use gloo; otherwise every process runs alone and they all write the same OUTPUT."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()


def local_main_process() -> bool:
    """Whether this process reports progress (the others speak up for warnings only)."""
    return PartialState(cpu=cpu_multiprocess()).is_local_main_process


@dataclass
class Plan:
    """How long the run is, in this process's micro-batches and in optimizer steps."""

    batches_per_epoch: int
    steps_per_epoch: int
    total_steps: int
    num_epochs: int
    warmup_steps: int

    @classmethod
    def of(cls, config: TrainConfig, batches_per_epoch: int) -> "Plan":
        steps_per_epoch = math.ceil(batches_per_epoch / config.grad_accum)
        total_steps = config.max_steps if config.max_steps > 0 else int(config.epochs) * steps_per_epoch
        return cls(batches_per_epoch, steps_per_epoch, total_steps, math.ceil(total_steps / steps_per_epoch),
                   int(config.warmup_ratio * total_steps))


@dataclass
class State:
    """Where the run is; saved in every checkpoint (trainer_state.json "state") and restored on resume."""

    global_step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    tokens_seen: int = 0
    runtime_skipped: dict = field(default_factory=dict)  # rows whose image failed to load during training


@dataclass
class Run:
    """Everything one training run holds."""

    config: TrainConfig
    accelerator: Accelerator
    output: Path
    model: torch.nn.Module
    processor: object
    parts: tuple[str, ...]
    parameters: dict
    dataset: VLMDataset
    eval_dataset: VLMDataset | None
    collator: VLMCollator
    sampler: EpochSampler
    loader: DataLoader
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    trainable: list
    plan: Plan
    run_info: dict
    state: State = field(default_factory=State)
    train_log: JsonlLog | None = None
    eval_log: JsonlLog | None = None
    loader_generator: torch.Generator | None = None  # reseeded per epoch: see _loader

    @property
    def main_process(self) -> bool:
        return self.accelerator.is_main_process


def _accelerator(config: TrainConfig, output: Path) -> Accelerator:
    return Accelerator(
        cpu=cpu_multiprocess(),
        mixed_precision=config.mixed_precision,
        log_with=None if config.log_with == "none" else config.log_with,
        project_dir=str(output),
        # Batches come from pinned memory (see _loader): copy them to the GPU without blocking the host.
        dataloader_config=DataLoaderConfiguration(non_blocking=torch.cuda.is_available()),
        # Text-only batches leave the projector (and a trained vision tower) without gradients; DDP must allow that.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )


def _resume_from(config: TrainConfig, output: Path) -> Path | None:
    """The checkpoint to resume from (None: a fresh run); refuses a fresh run into an output with checkpoints."""
    resume_from = None
    if config.resume:
        resume_from = latest_checkpoint(output) if config.resume == "latest" else Path(config.resume).resolve()
        if config.resume != "latest" and not is_complete_checkpoint(resume_from):
            raise ValueError(f"--resume {config.resume}: not a complete checkpoint (no completion marker)")
        if resume_from is None:
            logger.warning("--resume: no complete checkpoint in %s; starting from scratch", output)
    if resume_from is None and list_checkpoints(output):
        # A fresh run would interleave its checkpoints with the old run's, and a later --resume could pick the old.
        raise ValueError(f"{output} already holds checkpoints of an earlier run "
                         f"({', '.join(p.name for p in list_checkpoints(output))}): pass --resume to continue it, "
                         "or use an empty --output")
    return resume_from


def _datasets(config: TrainConfig, processor, max_length: int) -> tuple[VLMDataset, VLMDataset | None]:
    # Under bf16 autocast the tower's first op (the patch convolution) sees bfloat16 whatever it is given: pixels
    # kept in bfloat16 give the same numbers at half the bytes (cache, worker hand-over, host-to-device copy).
    pixel_dtype = torch.bfloat16 if config.mixed_precision == "bf16" else torch.float32

    def load(path):
        return VLMDataset(path, processor, image_root=config.image_root, max_length=max_length,
                          cache_images=config.cache_images, allow_outside_root=config.allow_outside_image_root,
                          pixel_dtype=pixel_dtype)

    dataset = load(config.data)
    if len(dataset) == 0:
        raise ValueError(f"no usable rows in {config.data}: {dataset.stats.summary()}")
    eval_dataset = load(config.eval_data) if config.eval_data else None
    if eval_dataset is not None and len(eval_dataset) == 0:
        logger.warning("no usable rows in --eval-data %s; skipping evaluation", config.eval_data)
        eval_dataset = None
    return dataset, eval_dataset


def _loader(config: TrainConfig, dataset, sampler, collator, generator: torch.Generator) -> DataLoader:
    """Batches in pinned memory on a GPU machine (asynchronous copies), prefetched by the workers when there are any.

    `generator` is the loader's own: creating an iterator draws the workers' base seed from it. Without one the draw
    comes from the global torch RNG, which dropout also uses, so a resumed run (which creates its iterator at another
    point) would see different dropout masks than the uninterrupted run.
    """
    workers = config.num_workers
    return DataLoader(dataset, batch_size=config.batch_size, sampler=sampler, collate_fn=collator,
                      num_workers=workers, persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None,
                      pin_memory=torch.cuda.is_available(), generator=generator)


def setup(config: TrainConfig) -> tuple[Run, Path | None]:
    """Build the run (output folder, model, data, optimizer, schedule) and find the checkpoint to resume from."""
    output = Path(config.output).resolve()
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    accelerator = _accelerator(config, output)
    if accelerator.distributed_type == DistributedType.FSDP and (config.save_steps > 0 or config.resume):
        # resume_state.py writes full tensors from the main process; FSDP's sharded parameters and optimizer state
        # would need a gather it does not do yet (Accelerate's own FSDP checkpoints are pickles, refused on resume).
        raise ValueError("--save-steps / --resume are not supported under FSDP yet (checkpoints are pickle-free "
                         "safetensors + JSON of unsharded state); use configs/accelerate/ddp.yaml to checkpoint")
    resume_from = _resume_from(config, output)
    check_output(output, fresh_run=resume_from is None, overwrite=config.overwrite)
    accelerator.wait_for_everyone()  # every process checked before the main one writes anything
    if accelerator.is_main_process:
        output.mkdir(parents=True, exist_ok=True)
        remove_stale_tmp_dirs(output)
    accelerator.wait_for_everyone()

    set_seed(config.seed)
    model, processor = load_model_and_processor(model_dir=config.model, preset=config.config)
    parts = parse_parts(config.train) if config.train else STAGE_PARTS[config.stage]
    set_trainable(model, parts)
    parameters = parameter_report(model)
    logger.info("training parts: %s", ", ".join(parts))
    log_parameter_report(parameters, logger)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if config.packing and torch.cuda.is_available():
        # Packed rows need a document mask: FlexAttention builds it as a block mask over the position resets and
        # skips the blocks across documents, where sdpa would get a dense [T, T] mask and a slower kernel.
        model.model.language_model.set_attn_implementation("flex_attention")
        logger.info("packing: the decoder attends through FlexAttention with a per-document block mask")
    compiled = resolve_compile(config.compile)
    if compiled:
        compile_for_training(model)
    model.train()

    max_length = config.max_length or model.config.get_text_config().max_position_embeddings
    dataset, eval_dataset = _datasets(config, processor, max_length)
    # Compiled: round lengths up and fill short batches up to the batch size, so the step sees few distinct shapes
    # (each new one recompiles: at SmolLM2 size an epoch's short last batch cost 2.5 minutes on an H200).
    collator = VLMCollator(dataset.pad_token_id, packing=config.packing, pad_to_multiple_of=64 if compiled else None,
                           pad_rows_to=config.batch_size if compiled else None)
    sampler = EpochSampler(len(dataset), seed=config.seed)
    loader_generator = torch.Generator()
    loader = _loader(config, dataset, sampler, collator, loader_generator)

    groups = build_param_groups(model, config.lr, config.weight_decay, config.projector_lr)
    optimizer = build_optimizer(groups, config.lr)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    plan = Plan.of(config, len(loader))  # len(loader): per process, after sharding
    # Stepped once per optimizer step by us (not prepared: Accelerate would step it once per process).
    scheduler = warmup_cosine_schedule(optimizer.optimizer, plan.total_steps, plan.warmup_steps, config.min_lr_ratio)
    # The schedule is saved and restored by resume_state (JSON), not registered with Accelerate (which pickles it).
    run_info = {"seed": config.seed, "batch_size": config.batch_size, "grad_accum": config.grad_accum,
                "packing": config.packing, "num_processes": accelerator.num_processes,
                "data": str(Path(config.data).resolve()), "total_steps": plan.total_steps}
    run = Run(config, accelerator, output, model, processor, parts, parameters, dataset, eval_dataset, collator,
              sampler, loader, optimizer, scheduler, [p for group in groups for p in group["params"]], plan, run_info,
              loader_generator=loader_generator)
    return run, resume_from


def _start_logs(run: Run, resume_from: Path | None) -> None:
    """Restore the state of `resume_from` (or start fresh logs) and cut the logs back to the restored step."""
    run.train_log = JsonlLog(run.output / "train_log.jsonl", enabled=run.main_process)
    run.eval_log = JsonlLog(run.output / "eval_log.jsonl", enabled=run.main_process)
    if resume_from is not None:
        saved = load_checkpoint(resume_from, run.accelerator, run.model, run.optimizer, run.scheduler)
        for key in RESUME_INVARIANTS + ("total_steps",):
            if saved["run"].get(key) != run.run_info[key]:
                logger.warning("resuming with %s=%r but the checkpoint was written with %r: the run will differ",
                               key, run.run_info[key], saved["run"].get(key))
        try:
            run.state = State(**saved["state"])
        except TypeError as error:
            raise CheckpointError(f"{resume_from / 'trainer_state.json'}: bad 'state' ({error})") from error
        logger.info("resumed from %s at step %d (epoch %d, batch %d)", resume_from, run.state.global_step,
                    run.state.epoch, run.state.batch_in_epoch)
    elif run.main_process:
        archive_logs(run.output)  # a fresh run starts fresh logs; an earlier run's (--overwrite) are kept aside
    run.train_log.truncate_after(run.state.global_step)
    run.eval_log.truncate_after(run.state.global_step - 1)  # an eval at the checkpoint's step ran after it was saved


def save_checkpoint(run: Run, epoch: int, batch_in_epoch: int) -> None:
    """Write checkpoint-STEP atomically: every process saves its RNG states, the main process the model, optimizer
    and schedule (pickle-free, resume_state.py) and finalizes."""
    step = run.state.global_step
    tmp = checkpoint_tmp_dir(run.output, step)
    accelerator = run.accelerator
    if run.main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    save_training_state(tmp, accelerator, run.model, run.optimizer, run.scheduler)
    accelerator.wait_for_everyone()
    if run.main_process:
        run.config.save(tmp)
        snapshot = {**asdict(run.state), "epoch": epoch, "batch_in_epoch": batch_in_epoch}
        final = finalize_checkpoint(run.output, step, {"state": snapshot, "run": run.run_info})
        prune_checkpoints(run.output, run.config.save_total_limit)
        logger.info("saved %s", final)
    accelerator.wait_for_everyone()


# ----------------------------------------------------------------------------------------------------------------------
# Steps
# ----------------------------------------------------------------------------------------------------------------------

def _windows(iterable, size: int):
    """Consecutive chunks of `size` micro-batches (the last may be shorter): one optimizer step each."""
    iterator = iter(iterable)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


class Stepper:
    """Counts a window's tokens and skipped rows, then runs the shared TrainStep on it (the trainer's loop and the
    benchmark's `step_alone` call this)."""

    def __init__(self, run: Run):
        self.run = run
        self.step = TrainStep(run.accelerator, run.model, run.optimizer, run.scheduler, run.trainable,
                              run.config.max_grad_norm)

    def _counts(self, window: list[dict]) -> tuple[int, int]:
        """(target tokens, real tokens) of the window over all processes; records lazily skipped rows."""
        run = self.run
        num_targets = sum(b["num_targets"] for b in window)  # left in each batch: TrainStep hands it to the loss
        num_tokens = sum(b.pop("num_tokens") for b in window)
        for b in window:
            for reason, count in b.pop("skipped").items():
                run.state.runtime_skipped[reason] = run.state.runtime_skipped.get(reason, 0) + count
        if run.accelerator.num_processes > 1:
            counts = run.accelerator.reduce(torch.tensor([num_targets, num_tokens], device=run.accelerator.device),
                                            "sum")
            num_targets, num_tokens = (int(c) for c in counts.tolist())
        return num_targets, num_tokens

    def __call__(self, window: list[dict]) -> StepResult:
        num_targets, num_tokens = self._counts(window)
        return self.step(window, num_targets, num_tokens)


@torch.no_grad()
def evaluate(accelerator, model, dataset, collator, batch_size: int) -> float:
    """Token-weighted mean loss over `dataset`; each process takes a disjoint stride, so nothing is counted twice.
    A compiled model runs eagerly here (see `eager_forward`)."""
    indices = list(range(accelerator.process_index, len(dataset), accelerator.num_processes))
    # Its own generator: creating the iterator must not draw from the global RNG that dropout uses (see _loader).
    loader = DataLoader(torch.utils.data.Subset(dataset, indices), batch_size=batch_size, collate_fn=collator,
                        generator=torch.Generator())
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
        with accelerator.autocast(), eager_forward():
            out = net(**batch, num_items_in_batch=1)  # reduction "sum" over target tokens
        totals += torch.tensor([token_loss(out).item(), num_targets], dtype=torch.float64, device=accelerator.device)
    net.train(was_training)
    totals = accelerator.reduce(totals, "sum") if accelerator.num_processes > 1 else totals
    return (totals[0] / totals[1].clamp(min=1)).item()


# ----------------------------------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------------------------------

@dataclass
class Progress:
    """What this process measured in this run (resumed steps excluded)."""

    last_loss: float | None = None
    eval_loss: float | None = None
    last_eval_step: int | None = None
    steps: int = 0
    tokens: int = 0
    start: float = field(default_factory=time.perf_counter)


@dataclass
class _PendingLog:
    """A finished step's record, written once the next step has been queued: reading its loss then costs no wait."""

    step: int
    result: StepResult
    epoch: int
    batch_in_epoch: int
    seconds: float


def _log_step(run: Run, pending: _PendingLog, progress: Progress, bar) -> None:
    result = pending.result
    loss, grad_norm = result.numbers()
    progress.last_loss = loss
    record = {
        "step": pending.step, "loss": loss, "lr": result.lr,
        "tokens": result.num_tokens, "tokens_per_s": result.num_tokens / max(pending.seconds, 1e-9),
        "epoch": round(pending.epoch + pending.batch_in_epoch / run.plan.batches_per_epoch, 4),
    }
    if grad_norm is not None:
        record["grad_norm"] = grad_norm
    run.train_log.write(record)
    if run.accelerator.log_with:
        run.accelerator.log({k: v for k, v in record.items() if k != "step"}, step=pending.step)
    bar.set_postfix(loss=f"{loss:.4f}", lr=f"{result.lr:.2e}", tok_s=f"{record['tokens_per_s']:.0f}",
                    refresh=False)
    bar.update(1)


def _evaluate_and_log(run: Run, progress: Progress, epoch: float) -> None:
    progress.eval_loss = evaluate(run.accelerator, run.model, run.eval_dataset, run.collator, run.config.batch_size)
    progress.last_eval_step = run.state.global_step
    run.eval_log.write({"step": run.state.global_step, "epoch": epoch, "eval_loss": progress.eval_loss})
    logger.info("epoch %s: eval loss %.4f", epoch, progress.eval_loss)
    if run.accelerator.log_with:
        run.accelerator.log({"eval_loss": progress.eval_loss}, step=run.state.global_step)


def _train_epochs(run: Run) -> Progress:
    """Run the optimizer steps from the restored state to the planned total; evaluate after every full epoch."""
    config, state, plan = run.config, run.state, run.plan
    stepper, progress = Stepper(run), Progress()
    bar = tqdm(total=plan.total_steps, initial=state.global_step, desc="train", dynamic_ncols=True,
               disable=not run.accelerator.is_local_main_process)
    step_start = time.perf_counter()
    pending: list[_PendingLog] = []  # at most one: the step whose numbers are read after the next one is queued

    def flush():
        while pending:
            _log_step(run, pending.pop(), progress, bar)

    start_epoch, start_batch = state.epoch, state.batch_in_epoch
    for epoch in range(start_epoch, plan.num_epochs):
        if state.global_step >= plan.total_steps and epoch > start_epoch:
            break
        run.loader.set_epoch(epoch)
        run.sampler.set_epoch(epoch)
        if run.loader_generator is not None:
            run.loader_generator.manual_seed(config.seed * 1_000_003 + epoch)
        skip = start_batch if epoch == start_epoch else 0
        epoch_loader = run.accelerator.skip_first_batches(run.loader, skip) if skip else run.loader
        batch_in_epoch = skip
        for window in _windows(epoch_loader, config.grad_accum):
            if state.global_step >= plan.total_steps:  # resumed from the final step's checkpoint
                break
            result = stepper(window)
            batch_in_epoch += len(window)
            state.global_step += 1
            state.tokens_seen += result.num_tokens
            progress.steps += 1
            progress.tokens += result.num_tokens
            now = time.perf_counter()
            flush()  # the previous step: finished on the device by now, this step's work is queued behind it
            pending.append(_PendingLog(state.global_step, result, epoch, batch_in_epoch, now - step_start))
            step_start = now
            if config.save_steps > 0 and state.global_step % config.save_steps == 0:
                flush()  # the log holds every step a checkpoint covers
                save_checkpoint(run, epoch, batch_in_epoch)
            if state.global_step >= plan.total_steps:
                break
        flush()
        if batch_in_epoch >= plan.batches_per_epoch:  # the epoch ran to its end
            state.epoch, state.batch_in_epoch = epoch + 1, 0
            if run.eval_dataset is not None:
                _evaluate_and_log(run, progress, epoch + 1)
    bar.close()
    if run.eval_dataset is not None and progress.last_eval_step != state.global_step:
        _evaluate_and_log(run, progress, state.epoch)
    return progress


def _finish(run: Run, progress: Progress) -> dict:
    """Save the final model + processor + metrics + config (main process) and return the metrics."""
    runtime = time.perf_counter() - progress.start
    state = run.state
    if state.runtime_skipped:
        logger.warning("rows skipped while training (image failed to load), by reason: %s", state.runtime_skipped)
    run.accelerator.wait_for_everyone()
    data_stats = run.dataset.stats.as_dict()
    data_stats["skipped_during_training"] = dict(state.runtime_skipped)
    metrics = {
        "global_step": state.global_step, "final_loss": progress.last_loss, "eval_loss": progress.eval_loss,
        "train_runtime_s": runtime, "steps_per_s": progress.steps / max(runtime, 1e-9),
        "tokens_per_s": progress.tokens / max(runtime, 1e-9), "data": data_stats,
        "eval_data": run.eval_dataset.stats.as_dict() if run.eval_dataset is not None else None,
        "parameters": run.parameters, "trained_parts": list(run.parts), "output": str(run.output),
    }
    # Under FSDP the parameters are shards: every rank joins in gathering the full state dict (on the CPU), and
    # only the main process writes it. Elsewhere the model's own state dict is already whole.
    full_state = None
    if run.accelerator.distributed_type == DistributedType.FSDP:
        full_state = run.accelerator.get_state_dict(run.model)
    if run.main_process:
        unwrapped = run.accelerator.unwrap_model(run.model)
        if run.config.gradient_checkpointing:
            unwrapped.gradient_checkpointing_disable()

        def write(folder: Path) -> None:
            if full_state is None:
                unwrapped.save_pretrained(folder)
            else:
                unwrapped.save_pretrained(folder, state_dict=full_state)
            run.processor.save_pretrained(folder)
            run.config.save(folder)
            with open(folder / "train_metrics.json", "w", encoding="utf-8") as f:
                json.dump(metrics, f, indent=2)

        save_final(run.output, write)  # atomic per file, config.json last, a fresh model card
        logger.info("saved model and processor to %s (%d steps, %.1f steps/s)", run.output, state.global_step,
                    metrics["steps_per_s"])
    run.accelerator.wait_for_everyone()
    if run.accelerator.log_with:
        run.accelerator.end_training()
    return metrics


def train(config: TrainConfig) -> dict:
    """Train as `config` says; returns the metrics (also written to OUTPUT/train_metrics.json)."""
    config.check(ACCELERATE)
    run, resume_from = setup(config)
    _start_logs(run, resume_from)
    if run.accelerator.log_with:
        run.accelerator.init_trackers("minimind-v", config={k: v for k, v in config.to_dict().items()
                                                            if isinstance(v, (int, float, str, bool))})
    plan = run.plan
    logger.info("%d rows, %d micro-batches/epoch/process, %d optimizer steps (%d warmup), %d epoch(s), %d process(es)",
                len(run.dataset), plan.batches_per_epoch, plan.total_steps, plan.warmup_steps, plan.num_epochs,
                run.accelerator.num_processes)
    progress = _train_epochs(run)
    run.train_log.close()
    run.eval_log.close()
    return _finish(run, progress)


__all__ = [
    "Plan", "RESUME_INVARIANTS", "Run", "State", "Stepper", "cpu_multiprocess", "evaluate", "local_main_process",
    "save_checkpoint", "setup", "train",
]
