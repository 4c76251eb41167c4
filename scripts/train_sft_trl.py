"""Supervised fine-tuning of a saved MiniMind-V checkpoint with TRL's ``SFTTrainer``, optionally with LoRA.

    python scripts/train_sft_trl.py --model DIR --data FILE.jsonl --output OUT [--lora [--merge]]
    accelerate launch --num_processes N scripts/train_sft_trl.py ...       (data parallel, via Trainer)

Same task as ``scripts/train.py --stage sft`` (projector + decoder train, vision frozen, assistant-only loss), but
through the Hugging Face stack: model ``AutoModelForImageTextToText`` and processor ``AutoProcessor`` from DIR
(``trust_remote_code``), rows converted to TRL's multimodal ``messages`` + ``images`` format, labels on the assistant
replies and their ``<|im_end|>`` only (never on image, vision start/end or pad tokens).

Outputs:
* full fine-tuning: OUT is a ``save_pretrained`` folder (model + processor + remote code);
* ``--lora``: LoRA on the decoder's linear layers, projector trained in full, vision frozen; OUT holds the adapter
  (+ processor) for PEFT;
* ``--lora --merge``: the adapter goes to OUT/adapter and OUT holds the merged model + processor, which loads like any
  other checkpoint with the Auto classes.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, ProcessorMixin
from trl import SFTConfig

from processing.training import STAGE_PARTS, set_trainable
from processing.trl_data import (
    MiniMindVSFTTrainer, TRLChatDataset, build_collator, lora_config, parameter_counts,
)

logger = logging.getLogger("minimind_v.train_sft_trl")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="save_pretrained folder with model + processor")
    p.add_argument("--data", required=True, help="training rows (.jsonl or .parquet)")
    p.add_argument("--image-root", help="folder for relative image paths (default: the data file's folder)")
    p.add_argument("--output", required=True, help="output folder (final model or adapter, trainer checkpoints)")
    p.add_argument("--lora", action="store_true", help="train LoRA adapters on the decoder instead of all weights")
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--lora-alpha", type=int, default=16)
    p.add_argument("--lora-dropout", type=float, default=0.05)
    p.add_argument("--merge", action="store_true", help="with --lora: write the merged model to OUTPUT")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--max-steps", type=int, default=0, help="optimizer steps; > 0 overrides --epochs")
    p.add_argument("--batch-size", type=int, default=16, help="rows per micro-batch per process")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--warmup-ratio", type=float, default=0.03, help="fraction of steps of linear warmup, then cosine")
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--max-length", type=int, help="rows with more tokens are dropped, never truncated (default: keep all)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast (default: on when a CUDA GPU supports it, off on CPU)")
    p.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers (0: load in the main process)")
    p.add_argument("--logging-steps", type=int, default=10)
    p.add_argument("--save-steps", type=int, default=0, help="Trainer checkpoint every N steps (0: only the final save)")
    return p


def _check_args(parser: argparse.ArgumentParser, args) -> None:
    if args.merge and not args.lora:
        parser.error("--merge needs --lora (without --lora OUTPUT already is a full checkpoint)")
    for name in ("batch_size", "grad_accum", "lora_r", "lora_alpha", "logging_steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.epochs <= 0 and args.max_steps <= 0:
        parser.error("--epochs must be > 0 (or give --max-steps)")
    if not 0.0 <= args.warmup_ratio < 1.0:
        parser.error("--warmup-ratio must be in [0, 1)")
    if not Path(args.data).is_file():
        parser.error(f"--data {args.data}: no such file")
    if not (Path(args.model) / "config.json").is_file():
        parser.error(f"--model {args.model}: no config.json (expected a save_pretrained folder)")


def _use_bf16(requested: bool | None) -> bool:
    if requested is not None:
        return requested
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


_CHECKPOINTING_FIELD = (
    "activation_checkpointing" if "activation_checkpointing" in SFTConfig.__dataclass_fields__
    else "gradient_checkpointing"
)


def sft_config(args) -> SFTConfig:
    """Every SFTConfig default that differs from what this project wants is set here explicitly."""
    bf16 = _use_bf16(args.bf16)
    return SFTConfig(
        output_dir=str(args.output),
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=args.grad_accum,
        learning_rate=args.lr,  # TRL's default is 2e-5
        weight_decay=args.weight_decay,
        max_grad_norm=args.max_grad_norm,
        lr_scheduler_type="cosine",
        warmup_steps=args.warmup_ratio,  # a float < 1 is a ratio of the total steps
        num_train_epochs=args.epochs,
        max_steps=args.max_steps if args.max_steps > 0 else -1,
        seed=args.seed,
        data_seed=args.seed,
        bf16=bf16,  # TRL defaults to True, which CPUs run slowly
        # Trainer refuses bf16 without an accelerator unless told that CPU is intended.
        use_cpu=bf16 and not torch.accelerator.is_available(),
        # TRL defaults to True; transformers 5.2x renamed the field (the old name only warns).
        **{_CHECKPOINTING_FIELD: args.gradient_checkpointing},
        # The dataset drops rows longer than --max-length; truncating in the collator could split an image block.
        max_length=None,
        packing=False,
        padding_free=False,
        # Our collator masks labels itself; TRL uses this flag to check the template's generation markers.
        assistant_only_loss=True,
        # The collator needs the raw "messages"/"images"; there are no model-input columns to filter.
        remove_unused_columns=False,
        dataloader_num_workers=args.num_workers,
        dataloader_pin_memory=torch.cuda.is_available(),  # pinning needs an accelerator (else it only warns)
        report_to="none",
        logging_steps=args.logging_steps,
        save_strategy="steps" if args.save_steps > 0 else "no",
        save_steps=args.save_steps if args.save_steps > 0 else 500,
    )


def load_model_and_processor(model_dir):
    processor = AutoProcessor.from_pretrained(model_dir, trust_remote_code=True)
    if not isinstance(processor, ProcessorMixin):
        # AutoProcessor falls back to the bare tokenizer when the folder has no processor_config.json; TRL would then
        # treat the model as text-only.
        raise ValueError(f"{model_dir} has no MiniMind-V processor (AutoProcessor gave {type(processor).__name__})")
    # float32 master weights; --bf16 runs the forward under autocast.
    model = AutoModelForImageTextToText.from_pretrained(model_dir, trust_remote_code=True, dtype=torch.float32)
    return model, processor


def build_trainer(args) -> tuple[MiniMindVSFTTrainer, TRLChatDataset]:
    model, processor = load_model_and_processor(args.model)
    dataset = TRLChatDataset(args.data, image_root=args.image_root, processor=processor, max_length=args.max_length)
    if len(dataset) == 0:
        raise ValueError(f"no usable rows in {args.data}: {dataset.stats.summary()}")
    peft_config = None
    if args.lora:
        # PEFT freezes every base weight and unfreezes the adapters and the projector copy.
        peft_config = lora_config(args.lora_r, args.lora_alpha, args.lora_dropout)
    else:
        set_trainable(model, STAGE_PARTS["sft"])  # projector + decoder, as scripts/train.py --stage sft
    trainer = MiniMindVSFTTrainer(
        model=model, args=sft_config(args), train_dataset=dataset.to_hf_dataset(), processing_class=processor,
        data_collator=build_collator(processor), peft_config=peft_config,
    )
    return trainer, dataset


def _log_parameters(counts: dict) -> None:
    total = counts["all"]
    logger.info("trainable parameters: %d / %d (%.2f%%)", total["trainable"], total["total"],
                100.0 * total["trainable"] / max(total["total"], 1))
    for group in ("vision", "projector", "decoder", "lora"):
        if counts[group]["total"]:
            logger.info("  %-9s trainable %d / %d", group, counts[group]["trainable"], counts[group]["total"])


def save_outputs(trainer: MiniMindVSFTTrainer, args):
    """Write OUTPUT (see the module docstring); returns the final in-memory model (merged when --merge)."""
    output = Path(args.output)
    processor = trainer.processing_class
    if not args.merge:
        trainer.save_model(str(output))  # model or adapter, plus the processor
        return trainer.model
    trainer.save_model(str(output / "adapter"))
    merged = trainer.model.merge_and_unload()
    if trainer.is_world_process_zero():
        merged.save_pretrained(str(output))
        processor.save_pretrained(str(output))
    return merged


def train(args) -> dict:
    """Run the training; returns a summary (also written to OUTPUT/train_summary.json) and, under "model", the final
    in-memory model (merged under --merge)."""
    trainer, dataset = build_trainer(args)
    counts = parameter_counts(trainer.model)
    _log_parameters(counts)
    result = trainer.train()
    model = save_outputs(trainer, args)
    summary = {
        "train_loss": result.training_loss,
        "global_step": result.global_step,
        "log_history": trainer.state.log_history,
        "parameters": counts,
        "data": dataset.stats.as_dict(),
        "lora": bool(args.lora),
        "merged": bool(args.merge),
    }
    if trainer.is_world_process_zero():
        with open(Path(args.output) / "train_summary.json", "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2)
    return {**summary, "model": model}


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_args(parser, args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return train(args)


if __name__ == "__main__":
    main()
