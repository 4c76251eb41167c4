"""MiniMind-V training through TRL's ``SFTTrainer`` (what ``scripts/train_sft_trl.py`` runs), optionally with LoRA.

Same task as the Accelerate trainer's ``stage="sft"`` (projector + decoder train, vision frozen, assistant-only
loss), through the Hugging Face stack:

* :class:`TRLChatDataset` reads rows through the one row reader (:mod:`processing.rows`) and yields TRL's
  multimodal format: ``{"messages": [{"role", "content": [{"type": "image"}, {"type": "text", "text": ...}]}],
  "images": [PIL]}``. Each ``<image>`` is one ``{"type": "image"}`` item *where it stood*, so the number of image
  items always equals the number of images (TRL's own string-content path would instead put every image before the
  first user text).
* :class:`MiniMindVTRLCollator` is TRL's ``DataCollatorForVisionLanguageModeling`` with assistant-only labels (our
  chat template carries ``{% generation %}`` markers) plus a second mask for the pad, image and vision start/end ids:
  TRL leaves image placeholders in the labels, and we never want a prediction target there.
* :func:`lora_config` targets the decoder's linear layers only and fully trains the projector.
* MoE models need nothing here: they follow Mixtral's contract (`output_router_logits`, `router_aux_loss_coef`,
  `router_logits` from the inner model), so TRL's fused LM-head path adds the balance loss itself.

Outputs: full fine-tuning writes a ``save_pretrained`` folder (model + processor + remote code); ``lora=True`` the
adapter (+ processor) for PEFT; ``lora=True, merge=True`` the adapter to OUTPUT/adapter and the merged model +
processor to OUTPUT, loadable like any other checkpoint with the Auto classes.
"""

from __future__ import annotations

import copy
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import Dataset
from transformers import TrainerCallback
from trl import SFTConfig, SFTTrainer
from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

from ..labels import IGNORE_INDEX, never_labelled_ids
from ..layout import DECODER_PREFIX, PROJECTOR_MODULE
from ..rows import TOO_LONG, DataStats, RowError, decode_image, parse_rows
from ..templating import control_token_error, control_token_pattern, encode_rows
from .config import TRL, TrainConfig
from .loading import load_model_and_processor
from .parts import STAGE_PARTS, log_parameter_report, parameter_report, set_trainable
from .step import resolve_compile

logger = logging.getLogger(__name__)

# Decoder linear layers (attention and every MLP/expert projection, not the MoE router `mlp.gate`). PEFT fullmatches
# a string `target_modules` against full module names, so the vision tower's q/k/v/o projections stay untouched.
DECODER_LORA_TARGETS = (
    re.escape(DECODER_PREFIX) + r"layers\.\d+\."
    r"(self_attn\.(q_proj|k_proj|v_proj|o_proj)|mlp\.(.*\.)?(gate_proj|up_proj|down_proj))"
)
# How many following rows __getitem__ tries when a row's image fails to decode mid-training.
MAX_DECODE_FALLBACKS = 16


class TRLChatDataset(Dataset):
    """Validated chat rows in TRL's conversational vision format; images are decoded on access.

    Hand ``to_hf_dataset()`` to ``SFTTrainer``.

    Args:
        path: .jsonl or .parquet file of project rows.
        image_root: folder that relative image paths resolve against (default: the data file's folder).
        processor: needed only with ``max_length``, to count tokens through the chat template.
        allow_outside_root: accept image paths that leave `image_root` (default: skipped as image_outside_root).
        max_length: rows with more tokens (images expanded) are dropped at load. Rows are never truncated: a cut
            could split an image block, which the model rejects, or drop a reply's ``<|im_end|>``.
    """

    def __init__(self, path, image_root=None, processor=None, max_length: int | None = None,
                 allow_outside_root: bool = False):
        self.path = Path(path)
        self.image_root = Path(image_root) if image_root is not None else self.path.resolve().parent
        self.stats = DataStats(source=str(self.path))
        rows = parse_rows(self.path, self.image_root, self.stats, allow_outside_root)
        if max_length is not None:
            if processor is None:
                raise ValueError("max_length needs the processor to count tokens")
            rows = self._drop_too_long(rows, processor, max_length)  # also skips rows with control tokens
        elif processor is not None:
            rows = self._drop_control_tokens(rows, control_token_pattern(processor.tokenizer))
        self.rows = rows
        self.stats.kept = len(self.rows)
        self.stats.log(logger)

    def _drop_control_tokens(self, rows, pattern):
        kept = []
        for row in rows:
            error = control_token_error(row, pattern)
            if error is None:
                kept.append(row)
            else:
                self.stats.skip(error.reason, row.where, str(error))
        return kept

    def _drop_too_long(self, rows, processor, max_length: int):
        kept = []
        for row, encoded in encode_rows(processor, rows):
            if isinstance(encoded, RowError):
                self.stats.skip(encoded.reason, row.where, str(encoded))
            elif len(encoded.input_ids) > max_length:
                self.stats.skip(TOO_LONG, row.where, f"{len(encoded.input_ids)} tokens > max_length={max_length}")
            else:
                kept.append(row)
        return kept

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self.rows):
            raise IndexError(index)  # also ends iter() over the dataset (TRL peeks at the first row that way)
        # A file can go bad after validation (or be truncated); one bad image must not end a long run, so fall back
        # to the following rows and count the skip.
        for attempt in range(min(MAX_DECODE_FALLBACKS, len(self.rows))):
            row = self.rows[(index + attempt) % len(self.rows)]
            try:
                images = [decode_image(ref) for ref in row.images]
            except RowError as error:
                self.stats.skip(error.reason, row.where, str(error))
                logger.warning("skipping %s: %s", row.where, error)
                continue
            # Fresh dicts every time: collators and TRL helpers add keys to what they get.
            return {"messages": copy.deepcopy(row.messages), "images": images}
        raise RuntimeError(f"{MAX_DECODE_FALLBACKS} consecutive rows from {index} have undecodable images")

    def to_hf_dataset(self):
        """A `datasets.Dataset` view for `SFTTrainer` (which accepts nothing else).

        It stores only row indices; a transform looks each row up here on access. So images stay lazy, the
        messages keep their exact Python structure (no Arrow schema merging of content items), and a bad image
        still falls back to the next row instead of failing the epoch.
        """
        import datasets

        return datasets.Dataset.from_dict({"row": list(range(len(self)))}).with_transform(_RowLookup(self))


class _RowLookup:
    """`with_transform` callable (a class, not a closure, so DataLoader workers can pickle it)."""

    def __init__(self, rows: TRLChatDataset):
        self.rows = rows

    def __call__(self, batch: dict) -> dict:
        items = [self.rows[index] for index in batch["row"]]
        return {"messages": [item["messages"] for item in items], "images": [item["images"] for item in items]}


@dataclass
class MiniMindVTRLCollator(DataCollatorForVisionLanguageModeling):
    """TRL's VLM collator with assistant-only labels and pad/image/vision-start/end ids never labelled.

    Build it with :func:`build_collator`. Rows are padded on the right and never truncated (``max_length`` stays None:
    :class:`TRLChatDataset` drops rows that are too long instead).
    """

    assistant_only_loss: bool = True
    unlabelled_ids: tuple[int, ...] = field(default_factory=tuple)

    def torch_call(self, examples: list[dict]) -> dict:
        batch = super().torch_call(examples)
        if self.unlabelled_ids:
            ids = torch.tensor(self.unlabelled_ids, device=batch["input_ids"].device)
            batch["labels"][torch.isin(batch["input_ids"], ids)] = IGNORE_INDEX
        return batch


def build_collator(processor, assistant_only_loss: bool = True) -> MiniMindVTRLCollator:
    return MiniMindVTRLCollator(processor=processor, max_length=None, assistant_only_loss=assistant_only_loss,
                                unlabelled_ids=never_labelled_ids(processor))


def lora_config(r: int = 8, alpha: int = 16, dropout: float = 0.05):
    """LoRA on the decoder's linear layers; the projector trains in full (saved with the adapter); vision frozen."""
    from peft import LoraConfig  # optional dependency, only for --lora

    return LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, bias="none", task_type="CAUSAL_LM",
        target_modules=DECODER_LORA_TARGETS, modules_to_save=[PROJECTOR_MODULE],
    )


class SaveTrainConfig(TrainerCallback):
    """Writes ``train_config.json`` into every checkpoint the Trainer saves."""

    def __init__(self, config: TrainConfig):
        self.config = config

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and folder.is_dir():
            self.config.save(folder)


# ----------------------------------------------------------------------------------------------------------------------
# Running it
# ----------------------------------------------------------------------------------------------------------------------

def _use_bf16(requested: bool | None) -> bool:
    if requested is not None:
        return requested
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


_CHECKPOINTING_FIELD = (
    "activation_checkpointing" if "activation_checkpointing" in SFTConfig.__dataclass_fields__
    else "gradient_checkpointing"
)


def sft_config(config: TrainConfig) -> SFTConfig:
    """Every SFTConfig default that differs from what this project wants is set here explicitly."""
    bf16 = _use_bf16(config.bf16)
    return SFTConfig(
        output_dir=str(config.output),
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.lr,  # TRL's default is 2e-5
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        lr_scheduler_type="cosine",
        warmup_steps=config.warmup_ratio,  # a float < 1 is a ratio of the total steps
        num_train_epochs=config.epochs,
        max_steps=config.max_steps if config.max_steps > 0 else -1,
        seed=config.seed,
        data_seed=config.seed,
        bf16=bf16,  # TRL defaults to True, which CPUs run slowly
        # Trainer refuses bf16 without an accelerator unless told that CPU is intended.
        use_cpu=bf16 and not torch.accelerator.is_available(),
        torch_compile=resolve_compile(config.compile),  # as scripts/train.py: on with a CUDA GPU unless --no-compile
        # TRL defaults to True; transformers 5.2x renamed the field (the old name only warns).
        **{_CHECKPOINTING_FIELD: config.gradient_checkpointing},
        # The dataset drops rows longer than --max-length; truncating in the collator could split an image block.
        max_length=None,
        packing=False,
        padding_free=False,
        # Our collator masks labels to the assistant replies itself (MiniMindVTRLCollator.assistant_only_loss). TRL
        # reads this flag only to configure its own collator, which we replace, and to check the chat template; it
        # refuses the flag for vision data before transformers 5.18, where our processor's assistant masks work fine.
        assistant_only_loss=False,
        # The collator needs the raw "messages"/"images"; there are no model-input columns to filter.
        remove_unused_columns=False,
        dataloader_num_workers=config.num_workers,
        dataloader_pin_memory=torch.cuda.is_available(),  # pinning needs an accelerator (else it only warns)
        report_to="none",
        logging_steps=config.logging_steps,
        save_strategy="steps" if config.save_steps > 0 else "no",
        save_steps=config.save_steps if config.save_steps > 0 else 500,
    )


def build_trainer(config: TrainConfig) -> tuple[SFTTrainer, TRLChatDataset]:
    """The SFT trainer for `config` and the dataset it trains on."""
    config.check(TRL)
    model, processor = load_model_and_processor(model_dir=config.model, require_processor=True)
    dataset = TRLChatDataset(config.data, image_root=config.image_root, processor=processor,
                             allow_outside_root=config.allow_outside_image_root,
                             max_length=config.max_length)
    if len(dataset) == 0:
        raise ValueError(f"no usable rows in {config.data}: {dataset.stats.summary()}")
    peft_config = None
    if config.lora:
        # PEFT freezes every base weight and unfreezes the adapters and the projector copy.
        peft_config = lora_config(config.lora_r, config.lora_alpha, config.lora_dropout)
    else:
        set_trainable(model, STAGE_PARTS["sft"])  # projector + decoder, as the Accelerate trainer's stage "sft"
    trainer = SFTTrainer(
        model=model, args=sft_config(config), train_dataset=dataset.to_hf_dataset(), processing_class=processor,
        data_collator=build_collator(processor), peft_config=peft_config, callbacks=[SaveTrainConfig(config)],
    )
    return trainer, dataset


def save_outputs(trainer: SFTTrainer, config: TrainConfig):
    """Write OUTPUT (see the module docstring); returns the final in-memory model (merged when `merge`)."""
    output = Path(config.output)
    processor = trainer.processing_class
    if not config.merge:
        trainer.save_model(str(output))  # model or adapter, plus the processor
        model = trainer.model
    else:
        trainer.save_model(str(output / "adapter"))
        model = trainer.model.merge_and_unload()
        if trainer.is_world_process_zero():
            model.save_pretrained(str(output))
            processor.save_pretrained(str(output))
    if trainer.is_world_process_zero():
        config.save(output)
    return model


def train_with_trl(config: TrainConfig) -> dict:
    """Run the training; returns a summary (also written to OUTPUT/train_summary.json) and, under "model", the final
    in-memory model (merged under `merge`)."""
    trainer, dataset = build_trainer(config)
    counts = parameter_report(trainer.model)
    log_parameter_report(counts, logger)
    result = trainer.train()
    model = save_outputs(trainer, config)
    summary = {
        "train_loss": result.training_loss,
        "global_step": result.global_step,
        "log_history": trainer.state.log_history,
        "parameters": counts,
        "data": dataset.stats.as_dict(),
        "lora": bool(config.lora),
        "merged": bool(config.merge),
    }
    if trainer.is_world_process_zero():
        with open(Path(config.output) / "train_summary.json", "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2)
    return {**summary, "model": model}


__all__ = [
    "DECODER_LORA_TARGETS", "MiniMindVTRLCollator", "SaveTrainConfig", "TRLChatDataset",
    "build_collator", "build_trainer", "lora_config", "save_outputs", "sft_config", "train_with_trl",
]
